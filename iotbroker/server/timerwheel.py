"""Connection deadlines on one loop timer: a hashed timing wheel.

Every connection has a deadline (the CONNECT timeout, then 1.5 × Keep Alive
[MQTT-3.1.2-24]). One ``asyncio.TimerHandle`` per connection costs about 440 bytes
(the handle, its libuv timer, its arguments; measured with tracemalloc, issue 19), more
than the connection's own MQTT state. Here a connection is one entry in the set of its
slot (``resolution`` seconds wide), and one loop timer is armed for the earliest
non-empty slot.

A connection is called (``on_deadline(now)``) at the end of its slot: at most
``resolution`` after its deadline, never before it. It decides itself whether the
deadline passed (its last packet may have moved it) and schedules itself again. Each
connection is in at most one slot: scheduling an earlier deadline moves it; a later one
is kept for when the earlier slot fires (the connection then asks for its real
deadline), so activity costs nothing here.

Compiled with mypyc (issue 19: two ``schedule`` calls per connection on the connect
path, the CONNECT timeout and the keep-alive). The items are duck-typed
(:class:`Deadline`); a compiled ``ClientProtocol`` keeps ``wheel_slot`` as a native
integer, so no int object per connection there either.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

__all__ = ["Deadline", "TimerWheel"]


class Deadline(Protocol):
    """What the wheel holds: a connection that knows its own deadline."""

    #: The slot it is in (0: none); owned by the wheel.
    wheel_slot: int

    def on_deadline(self, now: float) -> None: ...


class _Slot:
    """The members of one slot, and its number (one int object for all of them in
    the pure build). Not a ``set`` subclass: mypyc compiles no subclass of a builtin."""

    __slots__ = ("members", "number")

    def __init__(self, number: int) -> None:
        self.members: set[Deadline] = set()
        self.number = number


class TimerWheel:
    """Deadlines of many connections, ``resolution`` seconds apart at worst."""

    __slots__ = ("_armed_slot", "_handle", "_loop", "_resolution", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = 0.1) -> None:
        self._loop = loop
        self._resolution = resolution
        self._slots: dict[int, _Slot] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed_slot = 0

    def __len__(self) -> int:
        """Connections waiting for a deadline."""
        return sum(len(slot.members) for slot in self._slots.values())

    def schedule(self, when: float, item: Deadline) -> None:
        """Call ``item.on_deadline`` at the end of the slot holding ``when`` (or of
        the earlier slot it is already in)."""
        item.wheel_slot = self.place(when, item, item.wheel_slot)

    def place(self, when: float, item: Deadline, current: int) -> int:
        """:meth:`schedule` for a caller that keeps ``item.wheel_slot`` itself:
        ``current`` is its slot (0: none), the slot it is in afterwards is returned
        and must be stored there. A compiled ``ClientProtocol`` reads and writes its
        own native ``wheel_slot``, where the wheel reaching it through
        :class:`Deadline` would look the attribute up by name (issue 19: two calls per
        connection on the connect path)."""
        slot = math.ceil(when / self._resolution)
        if current:
            if current <= slot:
                return current
            self._remove(current, item)
        entry = self._slots.get(slot)
        if entry is None:
            entry = self._slots[slot] = _Slot(slot)
        entry.members.add(item)
        if self._handle is None or slot < self._armed_slot:
            self._arm(slot)
        # The slot's own int, shared by its members: a slot number (~10**5 and up) is
        # an int object of its own, 32 bytes per connection otherwise (issue 19).
        return entry.number

    def cancel(self, item: Deadline) -> None:
        """Forget ``item`` (its connection closed)."""
        if item.wheel_slot:
            self._remove(item.wheel_slot, item)
            item.wheel_slot = 0

    def close(self) -> None:
        """Stop the loop timer (the broker is stopping)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._slots.clear()

    def _remove(self, slot: int, item: Deadline) -> None:
        entry = self._slots.get(slot)
        if entry is not None:
            entry.members.discard(item)
            if not entry.members:
                del self._slots[slot]

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_slot = slot
        self._handle = self._loop.call_at(slot * self._resolution, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        last = math.floor(now / self._resolution + 1e-9)
        due = sorted(slot for slot in self._slots if slot <= last)
        for slot in due:
            entry = self._slots.pop(slot, None)
            if entry is None:
                continue
            for item in entry.members:
                if item.wheel_slot == slot:
                    item.wheel_slot = 0
                    item.on_deadline(now)
        # Asked through a method, not ``self._handle is None``: after the assignment
        # above mypy narrows the attribute to None for the rest of this function, and
        # mypyc then checks it at run time — but an ``on_deadline`` (a keep-alive that
        # is not due yet) schedules again and arms the wheel meanwhile, and the
        # compiled build raised "TypeError: None object expected; got TimerHandle"
        # here, an ERROR with a traceback in the log per keep-alive period.
        if self._slots and not self._armed():
            self._arm(min(self._slots))

    def _armed(self) -> bool:
        """Whether a loop timer is set for the earliest slot."""
        return self._handle is not None
