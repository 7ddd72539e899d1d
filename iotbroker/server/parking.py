"""Parking idle plain-TCP connections outside the event loop's transports (issue 19).

An idle MQTT connection costs the broker its MQTT state (session, connection, about
1 KB) plus the event loop's transport: with uvloop about 1.4 KB of RSS per connection
(the transport object, its libuv handle, a weak reference; measured with a do-nothing
server), more than all the MQTT state. A device fleet is mostly idle connections.

``limits.park_idle_after`` (seconds, default 30, 0 = off) parks a plain-TCP connection that has
neither received nor been sent a packet for that long: its socket is duplicated, the
duplicate joins one ``epoll`` set that the loop watches through a single reader, and
the transport is aborted (no FIN or RST: the duplicate keeps the socket open). What
stays is the :class:`~iotbroker.server.transport.ClientProtocol` with its MQTT state
and one integer. The socket is re-adopted with ``loop.connect_accepted_socket`` (a new
transport, the same protocol object) when it becomes readable (a packet, EOF or an
error), when output is queued for it (a delivery to an idle subscriber, a takeover's
DISCONNECT, a keep-alive close), or when the broker closes it. While a socket is parked
the kernel buffers what arrives; nothing is read or lost, and the keep-alive deadline
stays on the broker's timer wheel as before (MQTT 3.1.1 §3.1.2.10, MQTT 5.0 §3.1.2.10).

TLS and WebSocket connections are never parked: their state (the TLS session, the
WebSocket framing) lives in the transport.

Compiled with mypyc (issue 19): a socket accepted without a transport goes through
``accept_ready`` (the listener's accept loop), ``accept``, ``_hold``, ``_read_first``
and ``write`` on the connect path, and this module reads the (compiled)
``ClientProtocol``'s fields natively.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import select
import socket
from collections.abc import Callable
from typing import Final, cast

from mypy_extensions import mypyc_attr

from iotbroker.server.parked import ADOPTING, NOT_PARKED
from iotbroker.server.transport import ClientProtocol, ConnectionHost

log = logging.getLogger("iotbroker.connection")


#: Sweeps per ``park_idle_after``: an idle connection is parked 1 to 1.25 × that late.
SWEEPS = 4

#: A connection that has neither sent nor been sent anything since its CONNACK is
#: parked this many seconds after it, once (when ``park_idle_after`` is longer): a
#: fleet that connects at once and then idles never holds all its transports at the
#: same time, which would leave their memory scattered over the heap after parking
#: (measured: 1.74 KiB per idle connection parked after 30 s, 1.3 after 0.2 s). A
#: device that publishes later pays one wake (~35 µs, its first packet ~0.15 ms later).
#: 10,000 clients connecting at ~30,000/s (``benchmarks/e2e.py --scenarios connect
#: --settle 3``, compiled): 1.78 KiB per idle connection with 0.5 s, 1.43 with 0.2 s.
FIRST_PARK_AFTER = 0.2

#: Fresh sweeps per FIRST_PARK_AFTER: a silent new connection is parked 1 to 1.25 ×
#: that after its CONNACK (with 2: 1 to 1.5 ×, which left ~75 bytes more per idle
#: connection of a fleet connecting at ~30,000/s: more transports alive at once).
FRESH_SWEEPS = 4

#: Timers fire on whole milliseconds (uvloop): ``since + 0.2`` may come back as
#: 0.19999... after it; without this slack such a batch would wait one more sweep.
TIMER_SLACK = 0.001

#: Bytes read at once from a socket accepted without a transport (its CONNECT).
READ_SIZE: Final = 65536

#: The first read asks for this much, the size of bytes object CPython's small-object
#: allocator serves (512 bytes with the header): a CONNECT is usually shorter, and a
#: 64 KiB buffer cut down to a few dozen bytes costs a malloc and a realloc in the C
#: library per connection (~1,500 instructions; issue 19). A first read that fills it
#: is followed at once by one of READ_SIZE, so the connection sees the same bytes.
FIRST_READ_SIZE: Final = 479

#: ``os.read`` / ``os.write`` held in C statics (issue 19): ``os.read`` is a look-up
#: by name on the module per call (one each per connection: its CONNECT, its CONNACK).
_os_read: Final = os.read
_os_write: Final = os.write

#: Sockets accepted per readiness of a listening socket (then the loop turns).
ACCEPT_BATCH = 128

#: Ended connections after which the candidates are pruned (``Parking.ended``).
PRUNE_AFTER = 64

#: A sweep that parked this many connections returns free heap memory to the system
#: (glibc ``malloc_trim``): the transports' memory is freed to malloc, which would
#: otherwise keep it (RSS) after a fleet connected at once.
TRIM_AFTER = 256
#: Seconds from such a sweep to the trim (the aborted transports are freed by then).
TRIM_DELAY = 0.5


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc


_malloc_trim = _find_malloc_trim()

#: What wakes a parked socket: data, the peer's FIN, an error (0 where there is no
#: epoll: parking is Linux-only and is then left off, see ``start``).
_EVENTS: Final = (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP
           if hasattr(select, "epoll") else 0)

#: Receives the aborted transport's ``connection_lost``: the MQTT connection goes on.
_DISCARD = asyncio.Protocol()


class _Fresh:
    """Connections that got their CONNACK between two fresh sweeps, the second at
    ``since`` (``closed`` from then on), with the ``last_received`` and
    ``packets_queued`` each had then (parallel lists: no tuple or float per
    connection, issue 19)."""

    __slots__ = ("closed", "protos", "queued", "received", "since")

    def __init__(self) -> None:
        self.since = 0.0
        self.closed = False
        self.protos: list[ClientProtocol] = []
        self.received: list[float] = []
        self.queued: list[int] = []


@mypyc_attr(allow_interpreted_subclasses=True)  # tests record the sweeps' decisions
class Parking:
    """The parked sockets of one broker, and the sweep that parks idle connections."""

    __slots__ = ("_after", "_candidates", "_dead", "_epoll", "_fresh", "_fresh_handle",
                 "_handle", "_loop", "_parked", "_parked_count", "_peers", "_unread",
                 "_unsent", "direct_writes", "parks", "unparks")

    def __init__(self, loop: asyncio.AbstractEventLoop, after: float) -> None:
        self._loop = loop
        self._after = after
        self._epoll: select.epoll | None = None
        #: Its connection by parked descriptor (None: not parked). Descriptors are
        #: small and dense: a list is 8 bytes per slot, a dict ~30 per entry (issue 19).
        self._parked: list[ClientProtocol | None] = []
        self._parked_count = 0
        #: Connected, unparked connections to look at in the next sweep.
        self._candidates: list[ClientProtocol] = []
        #: Connections ended since the candidates were last pruned (see ``ended``).
        self._dead = 0
        self._handle: asyncio.TimerHandle | None = None
        #: Connections just accepted, in batches (one per fresh sweep interval),
        #: parked after FIRST_PARK_AFTER if still silent.
        self._fresh: list[_Fresh] = []
        self._fresh_handle: asyncio.TimerHandle | None = None
        #: Accepted without a transport (``accept``): descriptors whose first read is
        #: ours, and what a direct write left unsent (written first when adopted).
        self._unread: set[int] = set()
        #: ``host:port`` of sockets accepted without a transport, until their first
        #: read is done (the "connected from" log line, INFO): not kept per idle
        #: connection (~130 bytes, issue 19), not asked of the socket (4 system calls).
        self._peers: dict[int, str] = {}
        self._unsent: dict[ClientProtocol, bytes] = {}
        self.direct_writes = 0
        self.parks = 0
        self.unparks = 0

    def __len__(self) -> int:
        """Connections parked now."""
        return self._parked_count

    @property
    def active(self) -> bool:
        """Sockets can be parked (epoll exists and ``start`` ran)."""
        return self._epoll is not None

    def start(self) -> None:
        if not hasattr(select, "epoll"):
            # On by default (30 s): not worth a warning on every start elsewhere.
            log.info("limits.park_idle_after needs epoll (Linux): idle connections "
                     "are not parked")
            return
        self._epoll = select.epoll()
        self._loop.add_reader(self._epoll.fileno(), self._ready)
        self._handle = self._loop.call_later(self._after / SWEEPS, self._sweep)

    def close(self) -> None:
        """Stop sweeping; parked connections are closed by ``ClientProtocol.abort``."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fresh_handle is not None:
            self._fresh_handle.cancel()
            self._fresh_handle = None
        self._fresh.clear()
        if self._epoll is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None

    def watch(self, proto: ClientProtocol, connected: bool = False) -> None:
        """``proto`` is connected (``connected``: its CONNACK queued) or re-adopted: a
        candidate, parked by the first sweep that finds it idle for ``after`` seconds
        with nothing queued since now; a new connection that stays silent is parked
        :data:`FIRST_PARK_AFTER` after its CONNACK (so a fleet connecting at once never
        holds many transports)."""
        if proto.parked_fd >= 0:
            return  # accepted without a transport: watched once it has one
        conn = proto.conn
        proto.park_mark = conn.packets_queued
        proto.park_quiet = 0
        self._candidates.append(proto)
        if connected and self._after > FIRST_PARK_AFTER and self._epoll is not None:
            fresh = self._fresh
            if not fresh or fresh[-1].closed:
                fresh.append(_Fresh())
            batch = fresh[-1]
            batch.protos.append(proto)
            batch.received.append(conn.last_received)  # the same float object: no copy
            batch.queued.append(conn.packets_queued)
            if self._fresh_handle is None:
                self._fresh_handle = self._loop.call_later(FIRST_PARK_AFTER / FRESH_SWEEPS,
                                                           self._sweep_fresh)

    def ended(self) -> None:
        """A connection ended; it may still be a candidate, which would keep it and
        everything it holds (its transport, buffers, MQTT state) until the next sweep,
        ``after`` / 4 later. Ended candidates are dropped once that many connections
        ended, at least :data:`PRUNE_AFTER` and half the candidates (amortised O(1)
        per connection): a fleet that connects and leaves between two sweeps must
        not keep its closed connections' memory (issue 19)."""
        self._dead += 1
        if self._dead >= PRUNE_AFTER and self._dead * 2 >= len(self._candidates):
            self._candidates = [proto for proto in self._candidates if not proto.ended]
            self._dead = 0

    # ------------------------------------------------------------ parking
    def _sweep(self) -> None:
        """Park the candidates that stayed idle for ``after`` seconds: no packet
        received, and none queued for them in the last ``SWEEPS`` sweeps."""
        self._handle = self._loop.call_later(self._after / SWEEPS, self._sweep)
        now = self._loop.time()
        candidates, self._candidates = self._candidates, []
        self._dead = 0
        keep = self._candidates
        parks = self.parks
        for proto in candidates:
            if proto.ended or proto.parked_fd != NOT_PARKED or proto.transport is None:
                continue  # gone, or parked meanwhile (re-watched when re-adopted)
            conn = proto.conn
            queued = conn.packets_queued
            if queued == proto.park_mark and proto.packets_counted == queued:
                proto.park_quiet += 1  # nothing queued since the last sweep, all written
            else:
                proto.park_mark = queued
                proto.park_quiet = 0
            if (
                proto.park_quiet >= SWEEPS
                and now - conn.last_received >= self._after
                and self._park(proto)
            ):
                continue
            keep.append(proto)
        if self.parks - parks >= TRIM_AFTER and _malloc_trim is not None:
            # Give the transports' freed memory back to the system once it is freed:
            # an aborted transport is released by its handle's close callback, in a
            # later loop iteration, not by ``abort()`` itself.
            self._loop.call_later(TRIM_DELAY, _malloc_trim, 0)

    def _sweep_fresh(self) -> None:
        """Park the connections still silent :data:`FIRST_PARK_AFTER` after their
        CONNACK: nothing received, nothing queued for them since, all written. The
        others stay candidates of the regular sweep."""
        self._fresh_handle = None
        now = self._loop.time()
        fresh = self._fresh
        parks = self.parks
        while (fresh and fresh[0].closed
               and now - fresh[0].since >= FIRST_PARK_AFTER - TIMER_SLACK):
            batch = fresh.pop(0)
            for proto, received, queued in zip(batch.protos, batch.received, batch.queued,
                                               strict=True):
                if proto.ended or proto.parked_fd != NOT_PARKED or proto.transport is None:
                    continue
                conn = proto.conn
                if (conn.last_received != received or conn.packets_queued != queued
                        or proto.packets_counted != queued):
                    continue  # it spoke or was spoken to: the regular sweep decides
                self._park(proto)  # still a candidate: the regular sweep skips it parked
        if fresh and not fresh[-1].closed:
            # Its connections got their CONNACK before now: parked from now + 0.2 s on
            # (never sooner after their CONNACK); later ones start a new batch.
            fresh[-1].closed = True
            fresh[-1].since = now
        keep = fresh
        if keep:
            self._fresh_handle = self._loop.call_later(FIRST_PARK_AFTER / FRESH_SWEEPS,
                                                       self._sweep_fresh)
        if self.parks - parks >= TRIM_AFTER and _malloc_trim is not None:
            self._loop.call_later(TRIM_DELAY, _malloc_trim, 0)

    def _park(self, proto: ClientProtocol) -> bool:
        transport = proto.transport
        if (
            self._epoll is None
            or transport is None
            or transport.is_closing()
            or proto.close_after_flush
            or proto.deferred
            or proto.reading_paused
            or proto.linger is not None
            or proto.session is None
            or transport.get_write_buffer_size() != 0  # type: ignore[attr-defined]
        ):
            return False
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            fd = os.dup(sock.fileno())
        except OSError:
            return False
        if not self._hold(proto, fd):
            return False
        proto.parked_fd = fd
        proto.transport = None
        transport.set_protocol(_DISCARD)
        transport.abort()  # type: ignore[attr-defined]
        self.parks += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("parked idle connection %r (%s)", proto.client_id, proto.peer)
        return True

    def _hold(self, proto: ClientProtocol, fd: int) -> bool:
        """Watch ``fd`` in the parked set for ``proto`` (False: ``fd`` is closed)."""
        if self._epoll is None:
            os.close(fd)
            return False
        try:
            self._epoll.register(fd, _EVENTS)
        except OSError:
            os.close(fd)
            return False
        parked = self._parked
        if fd >= len(parked):
            parked.extend([None] * (fd + 1 - len(parked)))
        parked[fd] = proto
        self._parked_count += 1
        return True

    # ------------------------------------------- accepting without a transport
    def accept_ready(self, accept: Callable[[], tuple[int, object]], host: ConnectionHost,
                     listener: str, note_peer: bool) -> OSError | None:
        """Accept what waits on a plain-TCP listening socket (at most
        :data:`ACCEPT_BATCH`; server/listeners.py ``_ParkedListener``): each socket made
        non-blocking and handed to ``accept`` with a new ``ClientProtocol`` of
        ``host`` and ``listener``. ``accept`` is the listening socket's ``_accept``
        (the descriptor and the address, no socket object per connection). Compiled
        (issue 19): the loop, the protocol's construction and ``accept`` run without
        an interpreted frame. ``note_peer``: keep ``HOST:PORT`` for the "connected
        from" line (INFO). Returns the error that should make the listener back off
        (out of descriptors and the like), else None."""
        set_blocking = os.set_blocking
        ctx = host.connect_context  # once per batch, not per connection
        for _ in range(ACCEPT_BATCH):
            try:
                fd, address = accept()
            except (BlockingIOError, InterruptedError):
                return None
            except ConnectionAbortedError:
                continue  # the peer reset it while it waited
            except OSError as exc:
                return exc
            try:
                set_blocking(fd, False)
            except OSError:
                os.close(fd)
                continue
            peer: str | None = None
            if note_peer and isinstance(address, tuple) and len(address) >= 2:
                peer = f"{address[0]}:{address[1]}"
            self.accept(ClientProtocol(host, listener, ctx), fd, peer)
        return None

    def accept(self, proto: ClientProtocol, fd: int, peer: str | None = None) -> bool:
        """A plain-TCP socket just accepted (server/listeners.py; non-blocking):
        parked from the start, with no transport. Its CONNECT is read at once
        (``_read_first``; if it has not arrived yet, on its first readiness) and the
        answer written with one ``send`` (``write``); it gets a transport when more
        arrives or the answer does not fit.
        False: not admitted (a connection limit) or not registered; ``fd`` is closed."""
        if not self._hold(proto, fd):
            return False
        if peer is not None:
            self._peers[fd] = peer
        if not proto.accepted_parked(fd):
            self._release(proto)
            proto.parked_fd = NOT_PARKED
            os.close(fd)
            return False
        # Read the CONNECT now rather than on the socket's first readiness: a client
        # sends it right after its connect completes, so it is usually here already
        # (issue 19: one loop round and an epoll_wait less per connection; when it is
        # not, the read finds nothing and the readiness reads it as before).
        self._read_first(proto, fd)
        return True

    def _read_first(self, proto: ClientProtocol, fd: int) -> None:
        """The first bytes of a socket accepted without a transport: read them as the
        transport would have (``ClientProtocol.first_data``); EOF or an error ends it.
        Nothing there yet: its first readiness reads it."""
        try:
            data = _os_read(fd, FIRST_READ_SIZE)
        except BlockingIOError:
            self._unread.add(fd)  # not yet: still ours to read
            return
        except OSError as exc:
            self.drop(proto)
            proto.connection_lost(exc)
            return
        if not data:
            self.drop(proto)
            proto.connection_lost(None)
            return
        if len(data) == FIRST_READ_SIZE:
            data += self._read_more(fd)
        proto.first_data(data)
        if self._peers:
            self._peers.pop(fd, None)

    @staticmethod
    def _read_more(fd: int) -> bytes:
        """What follows a first read that filled ``FIRST_READ_SIZE`` (one read of up to
        ``READ_SIZE``, as the first read used to be). Nothing there, or an error or
        EOF: b"" — the socket's readiness (EPOLLERR, EPOLLRDHUP) reports the latter
        after the bytes already read are handled, as when they came in one read."""
        try:
            return _os_read(fd, READ_SIZE)
        except OSError:
            return b""

    def write(self, proto: ClientProtocol, data: bytes) -> None:
        """Write a parked connection's output with one ``send`` (a CONNACK, a
        delivery to an idle subscriber) and leave it parked; what does not fit is
        kept (``take_unsent``) and the socket adopted. The socket is non-blocking."""
        fd = proto.parked_fd
        try:
            sent = _os_write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # the peer is gone (EPIPE, ECONNRESET)
            self.drop(proto)
            self._loop.call_soon(proto.connection_lost, exc)
            return
        self.direct_writes += 1
        if sent < len(data):
            self._unsent[proto] = data[sent:]
            self.unpark(proto)

    def keep(self, proto: ClientProtocol, data: bytes) -> None:
        """Output for a socket without a transport that is not to be sent from here
        (it is closing, or being adopted): written first once it is adopted."""
        self._unsent[proto] = self._unsent.get(proto, b"") + data
        if proto.parked_fd >= 0:
            self.unpark(proto)

    def noted_peer(self, fd: int) -> str | None:
        """The address ``accept`` noted for ``fd`` while its first read is pending."""
        return self._peers.get(fd) if self._peers else None

    def take_unsent(self, proto: ClientProtocol) -> bytes:
        """What ``write`` could not send before ``proto`` was adopted (or b"")."""
        return self._unsent.pop(proto, b"") if self._unsent else b""

    # ---------------------------------------------------------- unparking
    def _ready(self) -> None:
        """A parked socket is readable (a packet, EOF, an error): re-adopt it, or read
        it if it was accepted without a transport and this is its first read."""
        if self._epoll is None:
            return
        unread = self._unread
        for fd, _events in self._epoll.poll(0):
            proto = self._parked[fd] if fd < len(self._parked) else None
            if proto is None:
                continue
            if fd in unread:
                unread.discard(fd)
                self._read_first(proto, fd)
            else:
                self.unpark(proto)

    def _release(self, proto: ClientProtocol) -> int:
        fd = proto.parked_fd
        self._parked[fd] = None
        self._parked_count -= 1
        self._unread.discard(fd)
        if self._peers:
            peer = self._peers.pop(fd, None)
            if peer is not None:  # adopted or closed before its first read was done
                proto.keep_peer(peer)
        if self._epoll is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
        return fd

    async def wake_all(self) -> None:
        """Before a shutdown: stop parking, give every parked socket its transport back
        and wait for them (so that MQTT 5.0 clients are told 0x8B like the others)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        tasks = [task for proto in [p for p in self._parked if p is not None]
                 if (task := self.unpark(proto)) is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def unpark(self, proto: ClientProtocol) -> asyncio.Task[object] | None:
        """Give the parked socket a transport again (``connection_made`` follows)."""
        if proto.parked_fd < 0:
            return None
        fd = self._release(proto)
        proto.parked_fd = ADOPTING
        self.unparks += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("re-adopting parked connection %r (%s)", proto.client_id, proto.peer)
        sock = socket.socket(fileno=fd)
        task = self._loop.create_task(self._loop.connect_accepted_socket(
            lambda: cast(asyncio.BaseProtocol, proto), sock))  # a protocol by its methods
        task.add_done_callback(lambda t: self._adopted(proto, sock, t))
        return task

    def _adopted(self, proto: ClientProtocol, sock: socket.socket,
                 task: asyncio.Task[object]) -> None:
        exc = None if task.cancelled() else task.exception()
        if task.cancelled() or exc is not None:
            log.warning("re-adopting parked connection %s failed: %s", proto.peer, exc)
            self._unsent.pop(proto, None)
            sock.close()
            proto.parked_fd = NOT_PARKED
            proto.connection_lost(exc if isinstance(exc, Exception) else None)

    def drop(self, proto: ClientProtocol) -> None:
        """Close a parked socket (an abort): no transport needed for that."""
        if proto.parked_fd < 0:
            return
        fd = self._release(proto)
        proto.parked_fd = NOT_PARKED
        self._unsent.pop(proto, None)
        os.close(fd)
