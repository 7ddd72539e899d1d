"""The broker's loop turn, compiled: a read's packets into the engine, and the flush.

What every QoS 1 message runs between the PUBLISH's read and the forward's write
(issue 19, the latency at 1,000 msg/s): a connected client's packets of one read go
through the engine's compiled loop (``Engine.handle_read``), the flush is scheduled
once per turn, and the flush commits the turn's storage batch and then writes each
connection's output once, the messages routed to subscribers before the turn's
answers (PUBACKs) (design.md, "A QoS 1 PUBLISH"; docs/performance.md, "Latency at
1,000 msg/s"). This state was read from the interpreted :class:`Broker` per packet;
here it is the native fields of one object per broker, which ``server/broker.py``
creates and delegates to, and ``ClientProtocol.data_received`` calls directly, so no
interpreted frame runs between ``data_received`` and the forward's ``transport.write``.

What is rare stays in the broker (:class:`TurnHost`): a packet before the session
exists (CONNECT, AUTH), a per-client publish rate limit, closes, an early commit.

A quiet loop flushes a one-packet read at once (issue 19, i19-lat4): when the last read
that left output came at least :data:`INLINE_GAP` before this one, this read is very
likely its loop turn's only one, and the flush runs at the end of its
``data_received`` instead of through ``loop.call_soon``: the same commit-then-write,
without the callback handle, the loop's idle round and a second entry into Python
before the forward's write. Reads closer together than that (a busy loop) schedule the
flush as before, so a turn's output is still written once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Sequence, Sized
from typing import TYPE_CHECKING, Final, Protocol, cast

from iotbroker.codec.packets import Auth, Packet
from iotbroker.engine.client import Client
from iotbroker.engine.engine import Engine
from iotbroker.errors import StorageError
from iotbroker.metrics import Metrics
from iotbroker.server import memtrim
from iotbroker.server.ratelimit import TokenBucket

if TYPE_CHECKING:
    from iotbroker.core.session import Session
    from iotbroker.engine.client import Writable
    from iotbroker.storage.base import Change

log = logging.getLogger("iotbroker.broker")

_TRIM_AFTER_CHANGES: Final = memtrim.TRIM_AFTER_CHANGES
#: A refused storage batch is kept and offered again with the next turn's changes
#: (the store reopens once the medium takes writes) up to this many changes; past it,
#: it is dropped (logged): the store then lacks those changes until a restart reloads
#: it (what memory held of them is lost then).
KEPT_CHANGES_MAX: Final = 1_000_000
#: During a storage failure, at most one error line per this many seconds.
_FAILURE_LOG_INTERVAL: Final = 1.0
#: ``time.time`` bound once: a ``Final`` is a C static in the compiled module, where
#: ``time.time()`` looks ``time`` up on the module object by name per call (issue 19,
#: the p50: look-ups by name are what a cold CPU pays most for on this path).
_wall_clock: Final = time.time
#: A one-packet read flushes at once when the last read that left output came at least
#: this long before it (seconds, by the reads' wall clock; i19-lat4): a loop that quiet
#: has one read per turn, and the flush's ``call_soon`` would only delay the forward.
#: Closer reads (more than ~5,000 a second) share one flush at the end of the turn. A
#: step of the wall clock makes one read choose either way: both are correct.
INLINE_GAP: Final = 0.0002


class LogFlags:
    """Switches the connection path reads once per read or write instead of asking
    ``logging`` per packet; ``server/logsetup.py`` ``setup_logging`` sets them (at
    start and on SIGHUP). Here, compiled, so that ``FLAGS.packets`` is a native field
    read from a C static (issue 19); ``server/logsetup.py`` re-exports both."""

    __slots__ = ("packets",)

    def __init__(self) -> None:
        #: ``iotbroker.packets`` is at DEBUG: log every packet (server/packetlog.py).
        self.packets = False


FLAGS: Final = LogFlags()


class Reader(Protocol):
    """What the turn reads of a socket connection beyond its engine
    :class:`~iotbroker.engine.client.Client` (``server/transport.py``
    ``ClientProtocol`` is both): a protocol, so that no server module refers back up
    (tests/test_architecture.py)."""

    session: Session | None
    publish_bucket: TokenBucket | None
    close_after_flush: bool
    deferred: bool
    published_this_turn: bool


class TurnHost(Protocol):
    """The broker as the turn sees it: the rare paths stay there (interpreted)."""

    def handle_rest(self, proto: Reader, packets: list[Packet], start: int,
                    now: float) -> int:
        """Handle ``packets[start:]`` one by one (CONNECT, AUTH, the rate-limited path);
        return how many of ``packets`` are handled in all."""

    def apply_closes(self) -> None: ...

    def commit_early(self) -> None: ...

    def throttle(self, readers: list[Client]) -> None:
        """A consumer is congested: pause the readers that published this turn."""


class AfterTurn(Protocol):
    """The cluster room: forwards this turn's messages to other nodes."""

    def after_turn(self) -> None: ...


class TurnOutput(Protocol):
    """Group commit (``durability: fsync``): takes the turn's output to write it once
    its changes are synced (server/group_commit.py)."""

    def output(self, dirty: Sequence[Writable]) -> None: ...


class Turn:
    """One broker's per-turn state: the connections with output (``ready_to_write``),
    those that read this turn (``active_readers``), whether the flush is scheduled."""

    __slots__ = (
        "_call_soon",
        "_context",
        "_failure_logged_at",
        "_failures_unlogged",
        "_flush",
        "active_readers",
        "changes",
        "cluster",
        "engine",
        "group_commit",
        "host",
        "last_output_read",
        "loop",
        "loop_time",
        "metrics",
        "ready_to_write",
        "scheduled",
        "throttled",
    )

    def __init__(self, host: TurnHost, engine: Engine, loop: asyncio.AbstractEventLoop,
                 metrics: Metrics, throttled: Sized, group_commit: TurnOutput | None) -> None:
        self.host = host
        self.engine = engine
        self.loop = loop
        #: ``loop.time`` bound once (``ClientProtocol.data_received`` reads the clock per
        #: read: a native field, not a method looked up by name on the loop; issue 19).
        self.loop_time: Callable[[], float] = loop.time
        self.metrics = metrics
        #: The engine's storage batch's list of changes (the same list: a batch is
        #: cleared in place, never given another list), read per read and per flush as
        #: a native field, not by name on the interpreted ``ChangeBatch`` (issue 19).
        self.changes: list[Change] = engine.batch.changes
        #: Connections with bytes to write this turn: each connection puts itself here
        #: (data, not a callback) when it gets its first bytes, and close() too. Socket
        #: connections and the MQTT-SN gateway's clients alike (``Writable``). The list
        #: is shared with the connections: never replaced.
        self.ready_to_write: list[Writable] = []
        #: Connections that delivered input since the last flush (backpressure).
        self.active_readers: list[Client] = []
        #: Slow consumer -> the publishers paused because of it (the broker's dict:
        #: the turn only tests whether it is empty).
        self.throttled = throttled
        self.group_commit = group_commit
        #: The cluster room, set when it starts (``Broker.start``).
        self.cluster: AfterTurn | None = None
        self.scheduled = False
        #: The wall-clock time of the last read that left something to flush (a read
        #: that comes at least ``INLINE_GAP`` after it flushes at once, ``handle_one``).
        self.last_output_read = 0.0
        #: The bound flush, made once (call_soon takes it per turn).
        self._flush: Callable[[], None] = self.flush
        #: ``loop.call_soon`` bound once: a native field, not a method looked up by name
        #: on the loop per turn (issue 19).
        self._call_soon: Callable[..., object] = loop.call_soon
        #: The context the flush runs in, copied once: ``call_soon`` without one copies
        #: the current context per call, an object per turn (issue 19, objects per
        #: message). iotbroker sets no context variables.
        self._context = contextvars.copy_context()
        #: Storage failures: when the last error line went out, and turns closed since.
        self._failure_logged_at = 0.0
        self._failures_unlogged = 0

    def _write_failed(self, dirty: list[Writable], exc: StorageError) -> None:
        """The turn's storage batch was refused (disk full, I/O error): nothing of the
        turn is acknowledged — its connections close without their output (their
        clients send again, MQTT 3.1.1 §4.8 [MQTT-4.8.0-2]) — and the batch is kept,
        so the next turn's write carries it too: once the store takes writes again it
        holds what memory holds. Closed first, logged after (the log may be on the same
        full disk; it cannot raise, server/logsetup.py)."""
        for proto in dirty:
            proto.conn.data_to_send()
            proto.abort()
        batch = self.engine.batch
        kept = len(batch.changes)
        if kept > KEPT_CHANGES_MAX:
            batch.clear()
            log.error("storage: dropped %d refused changes (more than %d kept); the store "
                      "lacks them until a restart", kept, KEPT_CHANGES_MAX)
            kept = 0
        batch.refused = kept
        now = time.monotonic()
        if now - self._failure_logged_at < _FAILURE_LOG_INTERVAL:
            self._failures_unlogged += 1
            return
        log.error("storage write failed, closing %d connections without acks (%d turns "
                  "more since the last line; %d changes kept for the next write): %s",
                  len(dirty), self._failures_unlogged, kept, exc)
        self._failure_logged_at = now
        self._failures_unlogged = 0

    # ------------------------------------------------------------- scheduling
    def call_flush(self) -> None:
        """Flush at the end of this loop turn (once)."""
        if not self.scheduled:
            self.scheduled = True
            self._call_soon(self._flush, context=self._context)

    def output_pending(self, proto: Writable) -> None:
        """``proto`` must be written (or closed) at the end of this loop turn."""
        self.ready_to_write.append(proto)
        self.call_flush()

    def schedule_flush(self) -> None:
        """Flush at the end of this loop turn if an event left something to send
        (bytes queued on connections, sessions' outboxes, the cluster's forwarding) or
        to store (a PUBACK that completes a persistent delivery sends nothing, but its
        deletion must be committed: after a crash the message would be sent again)."""
        if not self.scheduled and (self.ready_to_write or self._has_output()):
            self.call_flush()

    # ---------------------------------------------------------------- packets
    def handle_packets(self, proto: Reader, packets: list[Packet]) -> int:
        """Validated packets of one read, in order: a connected client's through the
        engine's compiled loop (``Engine.handle_read``) as far as it takes them; the
        rest, and what that loop stopped for, through the broker
        (``TurnHost.handle_rest``). One clock reading per read: they arrived together.
        Returns how many were handled (a packet that defers or closes stops the read)."""
        if proto.publish_bucket is None and not proto.close_after_flush:
            return self.handle_read(cast(Client, proto), packets)
        now = _wall_clock()
        handled = self.host.handle_rest(proto, packets, 0, now)
        self._after_read(now)
        return handled

    def handle_read(self, client: Client, packets: list[Packet]) -> int:
        """:meth:`handle_packets` for a socket connection without a publish rate limit
        and not closing (``ClientProtocol.data_received`` checks that natively)."""
        engine = self.engine
        now = _wall_clock()  # Broker.now(), inlined: hot path
        handled = 0
        if client.session is not None:
            handled = engine.handle_read(client, packets, now, _TRIM_AFTER_CHANGES)
        if handled:  # what the loop stopped for
            if engine.closing:
                self.host.apply_closes()
            if len(self.changes) >= _TRIM_AFTER_CHANGES:
                self.host.commit_early()
            if handled < len(packets):
                proto = cast(Reader, client)
                if not proto.close_after_flush and not proto.deferred:
                    handled = self.host.handle_rest(proto, packets, handled, now)
        else:  # not connected yet, or the engine's loop took none of them
            handled = self.host.handle_rest(cast(Reader, client), packets, 0, now)
        self._after_read(now)
        return handled

    def handle_one(self, client: Client, packet: Packet) -> int:
        """:meth:`handle_read` for a read of one packet (``Connection.receive_one``),
        without a list (issue 19); the same steps, except that in a quiet loop the
        flush runs here, at once (:data:`INLINE_GAP`). Returns 1 if it was handled,
        else 0 (deferred)."""
        engine = self.engine
        now = _wall_clock()  # Broker.now(), inlined: hot path
        if client.session is not None and not isinstance(packet, Auth):
            engine.handle(client, packet, now)  # Engine.handle_read's loop, for one
            if engine.closing:
                self.host.apply_closes()
            if len(self.changes) >= _TRIM_AFTER_CHANGES:
                self.host.commit_early()
            handled = 1
        else:  # not connected yet, or a packet the server takes
            handled = self.host.handle_rest(cast(Reader, client), [packet], 0, now)
            self._after_read(now)
            return handled
        if self.scheduled or not (self.ready_to_write or self._has_output()):
            return handled  # a flush is due this turn already, or nothing to flush
        quiet = now - self.last_output_read >= INLINE_GAP
        self.last_output_read = now
        if quiet and self.group_commit is None and self.cluster is None:
            # Very likely the turn's only read: flush now, not after a round of the
            # loop. (Group commit and the cluster batch a turn's output themselves.)
            self.flush(now)
        else:
            self.call_flush()
        return handled

    def _after_read(self, now: float) -> None:
        """Schedule the flush if the read left something to write or store."""
        # (an ack or a CONNACK to write, the QoS 1 path, or other output)
        if self.ready_to_write or (not self.scheduled and self._has_output()):
            self.last_output_read = now
            self.call_flush()

    def _has_output(self) -> bool:
        """Something besides ``ready_to_write`` waits for a flush: sessions' outboxes,
        storage changes, the cluster's forwarding, subscription interest, held acks."""
        engine = self.engine
        return bool(self.changes or engine.registry.ready or engine.forwarding
                    or engine.interest_touched or engine.held_acks)

    # ------------------------------------------------------------------ flush
    def flush(self, now: float = -1.0) -> None:
        """Commit the turn's storage changes, then write each connection's output once.

        No acknowledgement leaves before the changes it acknowledges are in the store
        (design.md, "A QoS 1 PUBLISH"). ``now``: the wall-clock time of the read that
        flushes at once (``handle_one``); the flush at the end of a turn reads the clock.
        """
        # Sessions' output into their connections first (they join ready_to_write; no
        # second flush is scheduled while this one has not started writing).
        self.scheduled = True
        cluster = self.cluster
        if cluster is not None:
            cluster.after_turn()  # forward this turn's messages to other nodes
        # What the turn's packets answered (PUBACKs, CONNACKs, ...) is written after
        # the messages routed to subscribers: a PUBACK written first delays the
        # forward by a send that wakes the publisher (issue 19, latency tail).
        # Connections are independent: MQTT promises no order between them.
        ready = self.ready_to_write
        answers = len(ready)  # the first ones: the turn's answers
        engine = self.engine
        if engine.registry.ready:
            # Sessions' output joins the list after the answers; on an error nothing
            # has left the list (nothing forgotten).
            engine.send_ready(now if now >= 0.0 else _wall_clock())  # Broker.now()
        self.scheduled = False
        # Written from the shared list itself, not from a copy, and the entries written
        # taken out after (issue 19: no list per turn). A connection that gets output
        # during the writes (a close) joins after ``count`` and stays for the next flush,
        # as it did in the emptied list before.
        count = len(ready)
        readers = self.active_readers
        if self.changes:
            batch = engine.batch
            changes = len(self.changes)
            try:
                engine.commit()
            except StorageError as exc:
                if changes > batch.refused:
                    dirty = _take(ready, count)
                    readers.clear()
                    self._write_failed(dirty, exc)
                    return
                # Only changes refused before: nothing of this turn waits on the store
                # (clean sessions' QoS 0, pings), so its output goes out.
            else:
                if changes >= _TRIM_AFTER_CHANGES:
                    memtrim.trim()  # a large fan-out's batch is freed: give it back
        group_commit = self.group_commit
        if group_commit is not None:
            dirty = _take(ready, count)
            if answers and answers < count:
                dirty = dirty[answers:] + dirty[:answers]
            group_commit.output(dirty)
        else:
            # The routed messages (after the answers in the list), then the answers.
            try:
                for i in range(answers, count):
                    write_one(ready[i])
                for i in range(min(answers, count)):
                    write_one(ready[i])
            finally:
                _drop(ready, count)
        # The readers' list is kept and emptied in place (no new list per turn);
        # ``throttle`` only reads it, and no read runs during the flush.
        if readers and self.throttled:  # (the list's length first: read natively)
            self.host.throttle(readers)  # a consumer is congested
        else:
            for reader in readers:
                reader.published_this_turn = False
        readers.clear()


def _take(ready: list[Writable], count: int) -> list[Writable]:
    """The first ``count`` entries of ``ready``, removed from it (those the flush
    hands on)."""
    taken = ready[:count]
    _drop(ready, count)
    return taken

def _drop(ready: list[Writable], count: int) -> None:
    """Remove the first ``count`` entries of ``ready`` (those the flush wrote)."""
    if count == len(ready):
        ready.clear()
    else:
        del ready[:count]

def write_one(proto: Writable) -> None:
    """Write one connection's output of the turn; close it if it must close: its
    :class:`Client`'s compiled ``write_turn_output`` (every connection in the list is
    one: a socket connection, an MQTT-SN client, a bridge's; the cast makes it a native
    call, not the protocol's calls by name; issue 19)."""
    cast(Client, proto).write_turn_output()
