"""The asyncio side of one client connection: an :class:`asyncio.Protocol`.

Compiled with mypyc (issue 19: the per-connection and per-packet path of the server).
:class:`ClientProtocol` is a native class: it does *not* subclass
``asyncio.Protocol`` (mypyc cannot compile a native subclass of a Python class), it has
the protocol's methods instead (``connection_made``, ``data_received``,
``eof_received``, ``connection_lost``, ``pause_writing``, ``resume_writing``); asyncio
and uvloop call a protocol's methods and never check its class (they only look for
``BufferedProtocol``). Where typing asks for an ``asyncio.BaseProtocol`` (a protocol
factory, the re-adoption of a parked socket), a ``cast`` says so.

Inbound packets of one connection are handled in order, synchronously, in
``data_received`` (no task per packet). Output is buffered in the sans-I/O
:class:`~iotbroker.protocol.connection.Connection` and written once per loop turn by
the broker's flush, after the storage batch of that turn is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from mypy_extensions import mypyc_attr

from iotbroker.codec.packets import Connect, Packet
from iotbroker.config import BrokerConfig
from iotbroker.engine.client import Client, Writable
from iotbroker.errors import MqttError
from iotbroker.metrics import Metrics
from iotbroker.protocol.connection import Connection, ConnectionState
from iotbroker.server import packetlog
from iotbroker.server.linger import Linger
from iotbroker.server.logsetup import connection_fields
from iotbroker.server.parked import ABORT_ON_ADOPT, ADOPTING, NOT_PARKED, peername
from iotbroker.server.ratelimit import TokenBucket
from iotbroker.server.timerwheel import TimerWheel
from iotbroker.server.turn import FLAGS, Turn


def _uvloop_tcp_transport() -> type:
    """uvloop's TCP transport class (a class never instantiated without uvloop)."""
    try:
        import uvloop  # noqa: PLC0415 (optional: asyncio's own loop without it)
    except ImportError:  # pragma: no cover
        return _NoTransport
    cls: type = getattr(getattr(uvloop, "loop", None), "TCPTransport", _NoTransport)
    return cls


class _NoTransport:
    """Stands for uvloop's transport when there is none: never instantiated."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def is_closing(self) -> bool:
        raise NotImplementedError


#: uvloop's TCP transport and its ``write`` / ``is_closing``, taken from the class once:
#: the flush writes a plain TCP connection's output through them, a call with the
#: transport as argument instead of two look-ups by name on it per write (issue 19,
#: the forward's footprint). Any other transport (TLS, WebSocket, asyncio's) by name.
_UV_TCP: Final = _uvloop_tcp_transport()
_uv_write: Final[Callable[[object, bytes], object]] = _UV_TCP.write  # type: ignore[attr-defined]
_uv_is_closing: Final[Callable[[object], object]] = _UV_TCP.is_closing  # type: ignore[attr-defined]

if TYPE_CHECKING:
    from iotbroker.server.auth_service import Refusal

log = logging.getLogger("iotbroker.connection")

class _Counter:
    """A native counter (issue 19): ``next()`` on an ``itertools.count`` held in a
    module global was a global look-up, a look-up of ``next`` and a call per
    connection."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0


#: Connection ids for logs: unique within one broker process (1, 2, ...).
_CONNECTION_IDS: Final = _Counter()

#: TCP keepalive for MQTT Keep Alive 0 clients: first probe after 60 s idle, then
#: every 15 s, dead after 4 unanswered probes.
TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT = 60, 15, 4

#: Transport write buffer high-water mark: past it the client is a slow consumer
#: (QoS 0 dropped and counted, QoS 1/2 wait in the session, publishers paused).
WRITE_BUFFER_HIGH = 1 << 20

class NotChecked:
    """``ClientProtocol.password_decision`` before an off-loop password check answered."""

    __slots__ = ()


NOT_CHECKED: Final = NotChecked()

#: The backlog of a connection with none (never appended to: see ``_hold``).
_NO_BACKLOG: list[Packet] = []


def _lone_connect(data: bytes) -> bool:
    """``data`` is one whole packet whose first byte is CONNECT's (0x10): its remaining
    length (MQTT 3.1.1 §2.2.3, MQTT 5.0 §2.1.4) ends exactly at the end of ``data``."""
    size = len(data)
    if size < 2 or data[0] != 0x10:
        return False
    length = 0
    shift = 0
    pos = 1
    while pos < size and pos <= 4:
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return pos + length == size
        shift += 7
    return False


def _format_peer(info: object) -> str:
    if isinstance(info, tuple) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info) if info else "?"


class _Rare:
    """The fields of a :class:`ClientProtocol` that few connections ever set."""

    __slots__ = ("backlog", "linger", "password_decision", "peer", "username")

    def __init__(self) -> None:
        self.backlog: list[Packet] = _NO_BACKLOG
        self.password_decision: Refusal | NotChecked | None = NOT_CHECKED
        self.linger: Linger | None = None
        self.peer: str | None = None
        self.username: str | None = None


def _set_tcp_keepalive(sock: socket.socket) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, TCP_KEEPIDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, TCP_KEEPINTVL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, TCP_KEEPCNT)


class ParkingView(Protocol):
    """What a connection asks of the broker's parking of idle sockets
    (``server/parking.py``, ``limits.park_idle_after``)."""

    def watch(self, proto: ClientProtocol) -> None: ...

    def unpark(self, proto: ClientProtocol) -> object: ...

    def drop(self, proto: ClientProtocol) -> None: ...

    def ended(self) -> None: ...

    @property
    def active(self) -> bool: ...

    def accept(self, proto: ClientProtocol, fd: int, peer: str | None = None) -> bool: ...

    def accept_ready(self, accept: Callable[[], tuple[int, object]], host: ConnectionHost,
                     listener: str, note_peer: bool) -> OSError | None: ...

    def noted_peer(self, fd: int) -> str | None: ...

    def write(self, proto: ClientProtocol, data: bytes) -> None: ...

    def take_unsent(self, proto: ClientProtocol) -> bytes: ...

    def keep(self, proto: ClientProtocol, data: bytes) -> None: ...


class ConnectionHost(Protocol):
    """The broker as a socket connection sees it (``server/broker.py`` is one): where
    the connection reports its events and finds its loop, timers and limits. A
    protocol, so that this module never refers back to the composition root."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def parking(self) -> ParkingView | None: ...

    @property
    def config(self) -> BrokerConfig: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def timers(self) -> TimerWheel:
        """Every connection's CONNECT-timeout / keep-alive deadline."""

    @property
    def ready_to_write(self) -> list[Writable]:
        """Connections to write at the end of the turn (the connection's
        :class:`~iotbroker.protocol.connection.Connection` appends itself)."""

    @property
    def turn(self) -> Turn:
        """The loop turn (server/turn.py, compiled): a read's packets go there."""

    def connection_made(self, proto: ClientProtocol) -> bool:
        """Admit a new socket (False: a connection limit refuses it)."""

    def may_answer_now(self) -> bool:
        """Nothing of this turn so far waits for the flush (no storage change to commit
        first, no group commit, no routed output, no cluster): an answer that concerns
        one connection only may be written before the turn's flush."""

    def first_connect(self, proto: ClientProtocol, packet: Connect) -> None:
        """``handle_packets`` for a connection's first read when it is one CONNECT
        (``ClientProtocol.first_data``), except that no flush is scheduled: the caller
        writes the CONNACK at once or schedules it (``schedule_flush``)."""

    def schedule_flush(self) -> None:
        """Flush at the end of this loop turn if anything is to be written or stored."""

    def handle_packets(self, proto: ClientProtocol, packets: list[Packet]) -> int:
        """Handle packets in order; how many were handled (the rest wait)."""

    def peer_error(self, proto: ClientProtocol, exc: MqttError) -> None:
        """The peer broke a rule: close with its reason code."""

    def keepalive_expired(self, proto: ClientProtocol) -> None: ...

    def output_pending(self, proto: ClientProtocol) -> None:
        """``proto`` must be written (or closed) at the end of this loop turn."""

    def writer_paused(self, proto: ClientProtocol) -> None: ...

    def writer_resumed(self, proto: ClientProtocol) -> None: ...

    def connection_lost(self, proto: ClientProtocol, exc: Exception | None) -> None: ...

    @property
    def connect_context(self) -> ConnectContext:
        """What a connection reads of the broker from its accept to its CONNACK."""


class FirstConnect:
    """The broker's compiled CONNECT handling (server/connecting.py ``Connecting``
    derives from this): ``first_data`` calls :meth:`first_connect` natively, where a
    bound ``functools.partial`` was a call by name per connection (issue 19)."""

    def first_connect(self, proto: ClientProtocol, packet: Connect) -> None:
        """server/connecting.py ``first_connect`` with this broker's ``Connecting``."""
        raise NotImplementedError


class ContextHost(Protocol):
    """What :class:`ConnectContext` takes from the broker when it is built."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def config(self) -> BrokerConfig: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def timers(self) -> TimerWheel: ...

    @property
    def turn(self) -> Turn: ...

    @property
    def parking(self) -> ParkingView | None: ...

    @property
    def connecting(self) -> FirstConnect: ...

    def connection_made(self, proto: ClientProtocol) -> bool: ...


class ConnectContext:
    """What a socket connection reads of its broker from the accept to the CONNACK
    (``ClientProtocol.__init__``, ``accepted_parked``, ``connection_made``,
    ``first_data``), held in native fields (issue 19): each was a look-up by name on
    the interpreted ``Broker`` or its pydantic configuration, ~45 per connection.
    One per broker, built once by ``Broker`` at start: its ``mqtt`` values are the
    configuration's, which need a restart to change (``Broker.reload`` says so), and
    the rest are the broker's own objects."""

    def __init__(self, broker: ContextHost) -> None:
        turn = broker.turn
        #: The broker's loop turn (compiled, server/turn.py).
        self.turn: Turn = turn
        self.ready_to_write: list[Writable] = turn.ready_to_write
        self.metrics: Metrics = broker.metrics
        self.loop_time: Callable[[], float] = broker.loop.time
        self.timers: TimerWheel = broker.timers
        #: The broker's parking (server/parking.py), or None when it is off.
        self.parking: ParkingView | None = broker.parking
        mqtt = broker.config.mqtt
        self.max_packet_size: int = mqtt.max_packet_size
        self.receive_maximum: int = mqtt.receive_maximum
        self.topic_alias_maximum: int = mqtt.topic_alias_maximum
        self.connect_timeout: float = mqtt.connect_timeout
        #: The admission (server/admission.py ``Admission.admit``, compiled).
        self.admit: Callable[[ClientProtocol], bool] = broker.connection_made
        #: server/connecting.py's ``Connecting`` (its ``first_connect``, native).
        self.connecting: FirstConnect = broker.connecting

    def may_answer_now(self) -> bool:
        """``Broker.may_answer_now`` (server/connecting.py ``may_answer_now``) read
        from the turn's native fields: nothing of this turn so far waits for the
        flush (no group commit, no cluster, no storage change to commit, no sessions'
        output to route, no forwarding, no held acknowledgement)."""
        turn = self.turn
        if turn.group_commit is not None or turn.cluster is not None:
            return False
        engine = turn.engine
        return (not engine.batch.changes and not engine.registry.ready
                and not engine.forwarding and not engine.held_acks)


@mypyc_attr(allow_interpreted_subclasses=True)  # the TLS listeners' classes, tests
class ClientProtocol(Client):
    """One TCP (or TLS / WebSocket-adapted) client: the engine's
    :class:`~iotbroker.engine.client.Client` (its MQTT state) with the socket, timers
    and backpressure state of the asyncio side. An asyncio protocol by its methods
    (see the module's docstring)."""

    __slots__ = (
        "_rare",
        "broker",
        "close_after_flush",
        "ctx",
        "deferred",
        "ended",
        "packets_counted",
        "park_mark",
        "park_quiet",
        "parked_fd",
        "publish_bucket",
        "reading_paused",
        "transport",
        "wheel_slot",
    )

    def __init__(self, broker: ConnectionHost, listener: str,
                 ctx: ConnectContext | None = None) -> None:
        self.broker = broker
        #: What the connection reads of the broker from the accept to the CONNACK,
        #: and the loop turn (``ctx.turn``, read per read and per write), held
        #: natively: one look-up by name on the interpreted broker, not ~10 (issue 19).
        #: The object stays 240 bytes with it (the allocator's size class: 224 bytes
        #: of fields).
        if ctx is None:  # ``ctx``: the broker's, passed by the compiled accept loop
            ctx = broker.connect_context
        self.ctx: ConnectContext = ctx
        Client.__init__(
            self,
            Connection(
                max_packet_size=ctx.max_packet_size,
                receive_maximum=ctx.receive_maximum,
                topic_alias_maximum=ctx.topic_alias_maximum,
                now=ctx.loop_time(),
                ready=ctx.ready_to_write,
                owner=self,
            ),
            listener,
        )
        self.transport: asyncio.BaseTransport | None = None
        #: What few connections ever use (a password check in a thread, packets held
        #: behind it, a lingering close, the peer's address and username kept for log
        #: lines): made when first needed, so that an idle connection holds one slot
        #: for them, not five (32 bytes, issue 19).
        self._rare: _Rare | None = None
        ids = _CONNECTION_IDS
        ids.last += 1
        self.conn_id = ids.last
        self.close_after_flush = False
        self.reading_paused = False
        self.publish_bucket: TokenBucket | None = None
        self.packets_counted = 0
        #: True while a packet's handling waits for something off the loop.
        self.deferred = False
        #: Its slot in the broker's timer wheel (0: none; see server/timerwheel.py).
        self.wheel_slot = 0
        #: The parked socket's descriptor, or NOT_PARKED / ADOPTING / ABORT_ON_ADOPT
        #: (server/parking.py); what the parking sweep last saw queued, and for how
        #: many sweeps nothing more was.
        self.parked_fd = NOT_PARKED
        self.park_mark = -1
        self.park_quiet = 0
        #: The MQTT connection is over for the broker (``broker.connection_lost`` ran),
        #: possibly before the socket is (during the linger).
        self.ended = False

    def _extras(self) -> _Rare:
        rare = self._rare
        if rare is None:
            rare = self._rare = _Rare()
        return rare

    @property
    def backlog(self) -> list[Packet]:
        """Packets that arrived while one was deferred (the shared empty list while
        there are none: never appended to, see ``_hold``)."""
        rare = self._rare
        return _NO_BACKLOG if rare is None else rare.backlog

    @backlog.setter
    def backlog(self, packets: list[Packet]) -> None:
        if packets is not _NO_BACKLOG or self._rare is not None:
            self._extras().backlog = packets

    @property
    def password_decision(self) -> Refusal | NotChecked | None:
        """The off-loop password check's answer for the pending CONNECT (None =
        accepted), or NOT_CHECKED."""
        rare = self._rare
        return NOT_CHECKED if rare is None else rare.password_decision

    @password_decision.setter
    def password_decision(self, decision: Refusal | NotChecked | None) -> None:
        if decision is not NOT_CHECKED or self._rare is not None:
            self._extras().password_decision = decision

    @property
    def linger(self) -> Linger | None:
        """The lingering close after our last packet (server/linger.py), once begun."""
        rare = self._rare
        return None if rare is None else rare.linger

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The broker's event loop (not a slot of its own: 8 bytes per connection)."""
        return self.broker.loop

    def log_extra(self) -> dict[str, object]:
        """Structured fields for log records about this connection (JSON logs)."""
        return connection_fields(self)

    @property
    def username(self) -> str | None:
        """Who the client authenticated as, for log lines: the session's username
        (password, certificate identity or enhanced auth, as ``on_connect`` decided);
        before and after the session, what was recorded (``note_username``)."""
        session = self.session
        if session is not None:
            return session.username
        rare = self._rare
        return None if rare is None else rare.username

    def note_username(self, username: str | None) -> None:
        """Record the username a log line should name when there is no session (the
        refused CONNECT's, or the session's when the connection ends)."""
        if username is not None or self._rare is not None:
            self._extras().username = username

    @property
    def peer(self) -> str:
        """``host:port`` of the client, formatted when asked (logging only). Not kept
        while the transport keeps the address (it does after closing too): with INFO
        logs every connection would hold its string (~64 bytes, issue 19); kept only
        when read from a parked socket, which closes."""
        rare = self._rare
        if rare is not None and rare.peer is not None:
            return rare.peer
        transport = self.transport
        if transport is not None:
            return _format_peer(transport.get_extra_info("peername"))
        if self.parked_fd >= 0:  # parked (server/parking.py)
            parking = self.broker.parking
            noted = parking.noted_peer(self.parked_fd) if parking is not None else None
            if noted is not None:  # accepted without a transport, first read
                return noted
            peer = self._extras().peer = _format_peer(peername(self.parked_fd))  # ask
            return peer
        return "?"  # not connected yet, or being re-adopted

    def keep_peer(self, peer: str) -> None:
        """Keep ``host:port`` noted at accept (server/parking.py), for the log lines
        after the socket is adopted or closed."""
        self._extras().peer = peer

    def peer_name(self) -> str:
        """:attr:`peer` as a call, for who needs it only sometimes (a refused login)."""
        return self.peer

    # ----------------------------------------------------------- asyncio API
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)  # type: ignore[attr-defined]
        if self.parked_fd != NOT_PARKED:
            self._readopted(transport)
            return
        ctx = self.ctx
        if not ctx.admit(self):
            self.conn.close()
            transport.abort()  # type: ignore[attr-defined]
            return
        # Sockets that never send CONNECT are closed after connect_timeout.
        self.wheel_slot = ctx.timers.place(ctx.loop_time() + ctx.connect_timeout, self,
                                           self.wheel_slot)

    def accepted_parked(self, fd: int) -> bool:
        """Accepted without a transport (server/listeners.py): the socket ``fd``
        is parked from the start (server/parking.py ``Parking.accept``). Admitted as
        ``connection_made`` admits (False: a connection limit refuses it), with the
        same CONNECT timeout."""
        self.parked_fd = fd
        ctx = self.ctx
        if not ctx.admit(self):
            self.conn.close()
            return False
        self.wheel_slot = ctx.timers.place(ctx.loop_time() + ctx.connect_timeout, self,
                                           self.wheel_slot)
        return True

    def _readopted(self, transport: asyncio.BaseTransport) -> None:
        """A parked socket has a transport again (server/parking.py): write what a
        direct write left unsent and what was queued meanwhile (or close as was
        asked), and become a parking candidate."""
        aborted = self.parked_fd == ABORT_ON_ADOPT
        self.parked_fd = NOT_PARKED
        broker = self.broker
        unsent = broker.parking.take_unsent(self) if broker.parking is not None else b""
        if aborted:
            transport.abort()  # type: ignore[attr-defined]
            return
        if unsent:
            transport.write(unsent)  # type: ignore[attr-defined]
        if self.close_after_flush or self.conn.packets_queued != self.packets_counted:
            broker.output_pending(self)
        if broker.parking is not None:
            broker.parking.watch(self)

    def data_received(self, data: bytes) -> None:
        rare = self._rare
        if rare is not None and rare.linger is not None:
            # Closed on our side: read, count, discard.
            rare.linger.discard(len(data))
            return
        # Native fields of the compiled turn (server/turn.py; the PUBLISH -> forward
        # path, issue 19): no look-up by name on the broker.
        turn = self.ctx.turn
        turn.active_readers.append(self)
        metrics = turn.metrics
        metrics.bytes_received += len(data)
        conn = self.conn
        now = turn.loop_time()
        packet = conn.receive_one(data, now)
        if packet is not None:
            # One whole packet of a connected client, the usual read (issue 19): no list
            # unless something below needs one.
            if (not FLAGS.packets and not self.deferred and self.publish_bucket is None
                    and not self.close_after_flush):
                metrics.messages_received += 1
                handled = turn.handle_one(self, packet)
                if self.deferred and not self.close_after_flush:
                    if not handled:
                        self._hold([packet])
                    self.pause_reading()
                if self.conn.failure is not None:
                    self.apply_failure()
                return
            packets = [packet]
        else:
            packets = conn.receive_data(data, now)
        if packets:
            metrics.messages_received += len(packets)
            if FLAGS.packets:  # --log-level DEBUG: a line per packet (one test per read)
                packetlog.log_inbound(self, packets)
            if self.deferred:
                self._hold(packets)
                return  # a failure waits for the backlog: resume_deferred applies it
            if self.publish_bucket is None and not self.close_after_flush:
                handled = turn.handle_read(self, packets)  # native fields, checked here
            else:
                handled = turn.handle_packets(self, packets)
            if self.deferred and not self.close_after_flush:
                self._hold(packets[handled:])
                self.pause_reading()
        if self.conn.failure is not None:
            self.apply_failure()

    def first_data(self, data: bytes) -> None:
        """The first bytes of a socket accepted without a transport (server/parking.py
        ``_read_first``, usually right at the accept): handled as ``data_received``.
        If that left output for this connection only (its CONNACK, and what answers
        packets that came with it) and nothing of the turn waits for the store
        (``may_answer_now``), the output is written now, not at the end of the turn:
        a client waiting for its CONNACK does not wait for the loop's round, nor for
        the other connections accepted in the same batch (issue 19). Otherwise the
        flush writes it, as for any connection.

        When the bytes are one whole CONNECT (the usual first read), it goes to the
        broker's compiled ``first_connect`` (server/connecting.py) rather than
        through ``Broker.handle_packets``, and a CONNACK written here leaves nothing
        for the turn's flush (issue 19: no interpreted frame per connection)."""
        if (
            FLAGS.packets
            or self.session is not None
            or self.deferred
            or self._rare is not None
            or not _lone_connect(data)
        ):
            self._first_read(data)
            return
        ctx = self.ctx
        ready = ctx.ready_to_write
        before = len(ready)
        metrics = ctx.metrics
        metrics.bytes_received += len(data)
        conn = self.conn
        packets = conn.receive_data(data, ctx.loop_time())
        packet = packets[0] if len(packets) == 1 else None
        if not isinstance(packet, Connect):  # not read as one CONNECT: as data_received
            if packets:
                ctx.turn.active_readers.append(self)
                metrics.messages_received += len(packets)
                self.handle_packets(packets)
            if conn.failure is not None:
                self.apply_failure()
            return
        metrics.messages_received += 1
        # Not among the turn's active readers: a CONNECT publishes nothing, and
        # backpressure only looks at readers that published.
        ctx.connecting.first_connect(self, packet)
        if self.deferred and not self.close_after_flush:
            self._hold([])
            self.pause_reading()
        if self._answers_alone(ready, before):
            ready.pop()  # answered here: nothing of this connection for the flush
            output = conn.data_to_send()
            if output:
                self.send_parked(output)
        else:
            ctx.turn.schedule_flush()
        if conn.failure is not None:
            self.apply_failure()

    def _answers_alone(self, ready: list[Writable], before: int) -> bool:
        """This read queued output for this connection only (it is the one entry
        added to ``ready`` since ``before``), the socket is still parked, nothing
        closes or defers it, and nothing of the turn waits for the store
        (``may_answer_now``): its output may be written now, not at the turn's end."""
        return (
            len(ready) == before + 1
            and ready[-1] is self
            and self.parked_fd >= 0
            and not self.close_after_flush
            and not self.deferred
            and self.ctx.may_answer_now()
        )

    def _first_read(self, data: bytes) -> None:
        """``first_data`` for anything but one lone CONNECT: ``data_received``, and
        the output written at once when only this connection has some."""
        ready = self.ctx.ready_to_write
        before = len(ready)
        self.data_received(data)
        if self._answers_alone(ready, before):
            output = self.conn.data_to_send()
            if output:
                self.send_parked(output)

    def apply_failure(self) -> None:
        """If the peer broke a rule (``conn.failure``, recorded by ``receive_data``),
        close with its reason code, once: after the packets that came before it have
        been handled, so never while some of them wait in ``backlog``."""
        conn = self.conn
        failure = conn.failure
        if failure is None or self.deferred or conn.state is ConnectionState.CLOSING:
            return  # no failure, packets still waiting, or closed already (or failed)
        self.broker.peer_error(self, failure)

    def handle_packets(self, packets: list[Packet]) -> None:
        """Handle packets in order; if one defers (a CONNECT waiting for a password
        check in a thread), the rest wait in ``backlog`` until it is decided."""
        handled = self.ctx.turn.handle_packets(self, packets)
        if self.deferred and not self.close_after_flush:
            self._hold(packets[handled:])
            self.pause_reading()

    def _hold(self, packets: list[Packet]) -> None:
        if self.backlog is _NO_BACKLOG:
            self.backlog = []
        self.backlog.extend(packets)

    def resume_deferred(self) -> None:
        """The deferred packet was decided: handle what arrived meanwhile, read on."""
        self.deferred = False
        backlog, self.backlog = self.backlog, _NO_BACKLOG
        if self.close_after_flush:
            return
        self.handle_packets(backlog)
        if not self.deferred:
            self.apply_failure()
            self.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.broker.timers.cancel(self)
        if self.linger is not None:
            self.linger.cancel()
        self._ended(exc)

    def _ended(self, exc: Exception | None = None) -> None:
        """The MQTT connection is over: the broker detaches the session (its will, its
        expiry) once, at the close or at the start of the linger, whichever is first."""
        if self.ended:
            return
        self.ended = True
        session = self.session
        if session is not None:  # the "connection lost" line comes after it is detached
            self.note_username(session.username)
        self.broker.connection_lost(self, exc)
        parking = self.broker.parking
        if parking is not None:
            parking.ended()

    def finish_close(self) -> None:
        """The flush wrote this connection's last packet: close so that it reaches a
        client that is still sending (server/linger.py; MQTT 5.0 §4.13, [MQTT-3.14.4-1],
        MQTT 3.1.1 §4.8): half-close, read and discard for a bounded time, then close.
        The broker is done with the connection at once; only the socket lingers. A
        WebSocket transport runs its own closing handshake (and lingers itself)."""
        transport = self.transport
        if transport is None or self.linger is not None or transport.is_closing():
            return
        if getattr(transport, "closes_gracefully", False):
            transport.close()
            return
        self.broker.timers.cancel(self)
        self.reading_paused = False
        self._extras().linger = Linger(transport, self.loop)  # type: ignore[arg-type]
        self.loop.call_soon(self._ended)

    def pause_writing(self) -> None:
        """The transport buffer passed its high-water mark: a slow consumer."""
        self.broker.writer_paused(self)

    def resume_writing(self) -> None:
        self.broker.writer_resumed(self)

    def pause_reading(self) -> None:
        """Backpressure: stop reading this client until the congestion it feeds clears."""
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return None  # close the transport

    # -------------------------------------------------------------- helpers
    def write_pending(self) -> None:
        """Write what the connection has queued (called by the broker's flush)."""
        if self.parked_fd != NOT_PARKED:
            parking = self.broker.parking
            if self.parked_fd >= 0 and parking is not None:
                if self.close_after_flush or self.deferred:
                    parking.unpark(self)  # the output waits in conn for a transport
                elif data := self.conn.data_to_send():
                    self.send_parked(data)
            return
        transport = self.transport
        conn = self.conn
        data = conn.data_to_send()
        if transport is None or not len(data):
            return
        if type(transport) is _UV_TCP:  # the common case: no method looked up by name
            if _uv_is_closing(transport):
                return
            if FLAGS.packets:  # --log-level DEBUG: a line per packet (one test per write)
                packetlog.log_outbound(self, data)
            _uv_write(transport, data)
        else:
            if transport.is_closing():
                return
            if FLAGS.packets:
                packetlog.log_outbound(self, data)
            transport.write(data)  # type: ignore[attr-defined]
        self._count_sent(data)  # after the write: a forward's latency ends there (issue 19)

    def write_turn_output(self) -> None:
        """The flush's step for this connection (``Client.write_turn_output``, called
        natively by server/turn.py): write, then close if it must."""
        self.write_pending()
        if self.close_after_flush:
            self.finish_close()

    def _count_sent(self, data: bytes) -> None:
        """Count ``data``, taken from ``conn``, as sent: bytes and packets."""
        conn = self.conn
        metrics = self.ctx.metrics  # the broker's, held natively
        metrics.bytes_sent += len(data)
        metrics.messages_sent += conn.packets_queued - self.packets_counted
        self.packets_counted = conn.packets_queued

    def send_parked(self, data: bytes) -> None:
        """Write output taken from ``conn`` while the socket has no transport (parked,
        or accepted without one; server/parking.py): one send, what does not fit
        (or all of it when closing) is written first once a transport is adopted."""
        parking = self.ctx.parking
        if parking is None:
            return
        if FLAGS.packets:
            packetlog.log_outbound(self, data)
        self._count_sent(data)
        if self.parked_fd >= 0 and not self.close_after_flush and not self.deferred:
            parking.write(self, data)
        else:
            parking.keep(self, data)

    def close(self) -> None:
        """Close after the pending output of this turn has been written."""
        self.conn.close()
        if not self.close_after_flush:
            self.close_after_flush = True
            self.broker.output_pending(self)

    def abort(self) -> None:
        self.conn.close()
        if self.parked_fd != NOT_PARKED:
            if self.parked_fd == ADOPTING:
                self.parked_fd = ABORT_ON_ADOPT
            elif self.parked_fd >= 0 and self.broker.parking is not None:
                if log.isEnabledFor(logging.INFO):
                    _ = self.peer  # kept for the lines after the socket is closed
                self.broker.parking.drop(self)
                self.loop.call_soon(self.connection_lost, None)
            return
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    def on_deadline(self, now: float) -> None:
        """The timer wheel's call: the CONNECT timeout or the keep-alive deadline may
        have passed (its slot ended at ``now``)."""
        conn = self.conn
        if not conn.connected:
            if not self.close_after_flush:
                self.broker.metrics.connect_timeouts += 1
                log.info("closing %s: no CONNECT within %ss", self.peer,
                         self.broker.config.mqtt.connect_timeout, extra=self.log_extra())
                self.abort()
            return
        deadline = conn.keepalive_deadline()
        if deadline is None:
            return
        if now >= deadline:
            if self.reading_paused or self.deferred:
                # We stopped reading this client (backpressure, rate limit): its
                # silence is ours, not its own. Count it as alive.
                conn.last_received = now
                self.wheel_slot = self.broker.timers.place(now + conn.keepalive * 1.5, self,
                                                           self.wheel_slot)
                return
            self.broker.keepalive_expired(self)
            return
        self.wheel_slot = self.broker.timers.place(deadline, self, self.wheel_slot)

    def _enable_tcp_keepalive(self) -> None:
        """Keep Alive 0 means MQTT will never notice a client that vanished without a
        FIN (power loss, a dropped link): let TCP probe it instead, so the half-open
        connection is closed (and its will published) within about two minutes."""
        if self.parked_fd >= 0:  # no transport (parked, or accepted without one)
            own = socket.socket(fileno=self.parked_fd)
            try:
                _set_tcp_keepalive(own)
            finally:
                own.detach()
            return
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is None:
            return  # WebSocket adapters and tests without a real socket
        _set_tcp_keepalive(sock)

    def start_keepalive(self) -> None:
        """Arm the keep-alive deadline. If the CONNECT timeout comes first, the wheel
        keeps that slot: on it the connection finds itself accepted and moves on to
        the keep-alive deadline (one wheel entry per connection, not two)."""
        deadline = self.conn.keepalive_deadline()
        if deadline is None:
            self._enable_tcp_keepalive()
            self.ctx.timers.cancel(self)
            return
        self.wheel_slot = self.ctx.timers.place(deadline, self, self.wheel_slot)

