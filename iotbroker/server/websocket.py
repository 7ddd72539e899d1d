"""MQTT over WebSocket (MQTT 3.1.1 §6, MQTT 5.0 §6) without a WebSocket server: the
sans-I/O :class:`websockets.server.ServerProtocol` driven by an ``asyncio.Protocol``.

:class:`WebSocketConnection` sits between the socket and
:class:`~iotbroker.server.transport.ClientProtocol`:

* towards the socket it is the ``asyncio.Protocol`` of a plain (``ws``) or TLS
  (``wss``) transport: bytes go into ``ServerProtocol.receive_data``, what
  ``data_to_send`` returns goes straight to the transport (no queue of ours, no task);
* towards ``ClientProtocol`` it is the asyncio transport it expects: ``write`` sends one
  binary message; ``pause_reading``/``resume_reading`` and the write buffer limits are
  the socket transport's own, so backpressure works exactly as on ``tcp``
  (``pause_writing``/``resume_writing`` come from the socket transport through us);
  ``get_extra_info`` answers from the socket transport (``peername``, ``peercert``,
  ``socket``, ``sslcontext``...).

Rules of this room:

* The opening handshake: a ``GET`` to the listener's ``path`` (else HTTP 404),
  subprotocol ``mqtt`` or ``mqttv3.1`` [MQTT-6.0.0-3], [MQTT-6.0.0-4]; a client that
  offers none is accepted (as mosquitto does), one that offers only others gets HTTP
  400. No extension is negotiated (no compression). The handshake must end within the
  handshake timeout; ``ClientProtocol`` exists only once it has succeeded.
* MQTT travels in binary messages [MQTT-6.0.0-1]: a text frame fails the connection
  (close code 1003). A message is a chunk of the byte stream: a packet may span
  messages and a message may hold several packets [MQTT-6.0.0-2]; so each binary or
  continuation frame goes to ``data_received`` as it arrives. A message larger than the
  maximum packet size fails the connection (1009).
* What ``ClientProtocol`` writes at once (a loop turn's packets) is one binary
  message, cut between packets into messages of at most :data:`WS_MESSAGE_MAX` bytes
  when longer (a packet longer than that is a message of its own).
* Pings are answered by ``ServerProtocol``; we send no pings (MQTT keep alive detects
  dead peers).
* Between frames a connection holds no ``ServerProtocol`` (issue 19): after each read
  that ended on a frame boundary, outside a fragmented message, in the OPEN state,
  the connection's protocol is equivalent to a fresh ``ServerProtocol(state=OPEN)``
  and goes back to its listener's few spares; the next read or write takes one. "Ended
  on a frame boundary" is counted without looking inside the parser: bytes fed minus
  the wire size of each frame returned (header, mask and payload: a client frame's
  size follows from its payload length; a non-minimal length encoding is longer, which
  only ever keeps a protocol with its connection, never gives one back early). So an
  idle connection costs its socket transport, ``ClientProtocol`` and this adapter.
* ``close()``: the close frame after what is queued, then the client's close frame is
  awaited for at most :data:`WS_CLOSE_TIMEOUT` s; the TCP connection is aborted if it
  is still open :data:`WS_CLOSE_GRACE` s after ``close()``.

Per connection: this object (slotted); a ``ServerProtocol`` only during the opening
handshake, a read or write, a frame split across reads, a fragmented message or the
closing handshake; one timer handle while the opening or closing handshake lasts. No
task, no queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

from websockets.exceptions import NegotiationError
from websockets.frames import DATA_OPCODES, CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from iotbroker.server.linger import Linger

if TYPE_CHECKING:
    from iotbroker.server.transport import ClientProtocol

__all__ = [
    "WS_CLOSE_GRACE",
    "WS_CLOSE_TIMEOUT",
    "WS_SUBPROTOCOLS",
    "WebSocketConnection",
    "WebSocketEndpoint",
    "select_subprotocol",
]

log = logging.getLogger("iotbroker.listeners")
#: The logger ``ServerProtocol`` writes to (every frame at DEBUG, every connection at
#: INFO); set to WARNING unless configured (``logging.levels``).
ws_log = logging.getLogger("iotbroker.websocket")

#: WebSocket subprotocols we accept, preferred first ("mqttv3.1" is what MQTT 3.1
#: clients such as old paho versions send) [MQTT-6.0.0-3], [MQTT-6.0.0-4].
WS_SUBPROTOCOLS = (Subprotocol("mqtt"), Subprotocol("mqttv3.1"))
#: Seconds the client has to answer our close frame before we close the TCP connection.
WS_CLOSE_TIMEOUT = 3.0
#: Seconds a close() may take to flush and close before the connection is aborted.
WS_CLOSE_GRACE = 10.0

#: ``extra`` of every WebSocketConnection (``get_extra_info`` is answered by the socket
#: transport): shared, not a dict per connection.
_NO_EXTRA: dict[str, Any] = {}

_OPEN = State.OPEN
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_TEXT = Opcode.TEXT
#: Largest WebSocket message we send unless one MQTT packet is larger: a loop turn's
#: output for one client can be megabytes (a burst read in one turn), which clients
#: with a message size limit (``websockets``: 1 MiB by default) would refuse.
WS_MESSAGE_MAX = 1 << 16
#: Spare OPEN protocols a listener keeps (one is taken per read or write and given
#: back at its end: a handful covers the loop's reentrancy).
WS_SPARES = 8


def _wire_size(frame: Frame) -> int:
    """Bytes of a client (masked) frame on the wire, with the minimal length encoding
    (RFC 6455 §5.2): header, masking key, payload."""
    n = len(frame.data)
    return 6 + n + (0 if n < 126 else 2 if n < 65536 else 8)


def _after_packet(data: memoryview, at: int) -> int:
    """Where the MQTT packet starting at ``at`` ends (its fixed header's Remaining
    Length, MQTT 3.1.1 §2.2.3 / 5.0 §2.1.4); -1 if the header is cut or malformed."""
    size = len(data)
    length, shift, i = 0, 0, at + 1
    for _ in range(4):
        if i >= size:
            return -1
        byte = data[i]
        i += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return i + length
        shift += 7
    return -1


def packet_aligned(data: bytes | bytearray | memoryview, limit: int) -> list[memoryview]:
    """``data`` (whole MQTT packets) cut into messages of at most ``limit`` bytes at
    packet boundaries; a packet larger than ``limit`` is a message of its own. Not
    needed by the spec (a packet may span messages [MQTT-6.0.0-2]) but kinder to
    clients that expect whole packets."""
    view = memoryview(data).cast("B")
    size = len(view)
    parts: list[memoryview] = []
    start = pos = 0
    while pos < size:
        end = _after_packet(view, pos)
        if end < 0 or end > size:
            end = size  # not whole packets (never for our own output): cut as it is
        if end - start > limit and pos > start:
            parts.append(view[start:pos])
            start = pos
        pos = end
    parts.append(view[start:])
    return parts


def select_subprotocol(offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """``mqtt`` if offered (``mqttv3.1`` for MQTT 3.1 clients); None when the client
    offers no subprotocol (accepted, as mosquitto does); :class:`NegotiationError`
    (HTTP 400) when it offers only others."""
    for proto in WS_SUBPROTOCOLS:
        if proto in offered:
            return proto
    if not offered:
        return None
    raise NegotiationError(f"unsupported subprotocol {', '.join(offered)}; expected mqtt")


class _MqttServerProtocol(ServerProtocol):
    """``ServerProtocol`` with our subprotocol choice (a method, not a bound callable
    stored per connection)."""

    def select_subprotocol(self, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        return select_subprotocol(subprotocols)


class WebSocketEndpoint:
    """What the connections of one ``ws``/``wss`` listener share: the path, the limits,
    the ``ClientProtocol`` factory, and the count of open connections (for
    :meth:`wait_closed`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str,
                 factory: Callable[[], ClientProtocol], max_size: int,
                 handshake_timeout: float) -> None:
        self.loop = loop
        self.path = path
        self.factory = factory
        self.max_size = max_size
        self.handshake_timeout = handshake_timeout
        self.open = 0
        self._idle: asyncio.Future[None] | None = None
        #: OPEN protocols between frames, for the next connection that reads or writes.
        self._spares: list[_MqttServerProtocol] = []
        if ws_log.level == logging.NOTSET:
            ws_log.setLevel(logging.WARNING)

    def protocol(self) -> WebSocketConnection:
        """The protocol factory for ``create_server`` / ``connect_accepted_socket``."""
        return WebSocketConnection(self)

    def take(self, subprotocol: Subprotocol | None) -> _MqttServerProtocol:
        """An OPEN protocol holding nothing: a spare, else a new one."""
        ws = self._spares.pop() if self._spares else _MqttServerProtocol(
            state=State.OPEN, max_size=self.max_size, logger=ws_log)
        ws.subprotocol = subprotocol
        return ws

    def give(self, ws: _MqttServerProtocol) -> None:
        """Back to the spares (the caller checked it holds nothing)."""
        if len(self._spares) < WS_SPARES:
            self._spares.append(ws)

    def _ended(self) -> None:
        self.open -= 1
        if self.open == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def wait_closed(self, timeout: float) -> bool:
        """Wait until every connection has ended (closing handshakes included), at most
        ``timeout`` seconds; False if some are still open."""
        if self.open == 0:
            return True
        self._idle = self.loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        except TimeoutError:
            return False
        finally:
            self._idle = None
        return True


class WebSocketConnection(asyncio.Transport, asyncio.Protocol):
    """One WebSocket connection: the socket transport's protocol and ``ClientProtocol``'s
    transport (see the module docstring)."""

    __slots__ = ("_client", "_closing", "_endpoint", "_error", "_fragmented", "_held",
                 "_linger", "_peer", "_pending", "_subprotocol", "_tail", "_timer",
                 "_transport", "_we_closed", "_ws")

    #: ``close()`` runs the WebSocket closing handshake and then the lingering TCP
    #: close itself: ``ClientProtocol`` must not linger on top (server/linger.py).
    closes_gracefully = True

    def __init__(self, endpoint: WebSocketEndpoint) -> None:
        super().__init__(_NO_EXTRA)
        self._endpoint = endpoint
        #: The handshake's protocol, then one from the endpoint while needed (None
        #: between frames).
        self._ws: _MqttServerProtocol | None = _MqttServerProtocol(
            max_size=endpoint.max_size, logger=ws_log)
        self._subprotocol: Subprotocol | None = None
        #: Bytes fed to ``_ws`` minus the wire size of the frames it returned, from the
        #: end of the request head: 0 when it holds no partial frame.
        self._pending = 0
        #: Inside a fragmented message (a data frame without FIN, until the last one).
        self._fragmented = False
        self._transport: asyncio.Transport | None = None
        self._client: ClientProtocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Frames that arrived after ``pause_reading``, delivered on resume.
        self._held: list[bytes] | None = None
        self._closing = False
        self._we_closed = False
        self._error: Exception | None = None
        self._peer: str | None = None
        #: While the request head is read: its last 3 bytes (to find its end across
        #: reads); None afterwards.
        self._tail: bytes | None = b""
        #: The lingering close of the TCP connection once the WebSocket stream ended.
        self._linger: Linger | None = None

    # ------------------------------------------------ socket side (asyncio.Protocol)
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        endpoint = self._endpoint
        endpoint.open += 1
        self._timer = endpoint.loop.call_later(endpoint.handshake_timeout,
                                               self._handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:  # the stream has ended: read, count, discard
            self._linger.discard(len(data))
            return
        if self._tail is not None:  # the opening handshake
            end = self._end_of_head(data)
            if end < 0 or end == len(data):
                self._receive(data)
                return
            self._receive(data[:end])  # the request: 101 or refused
            if self._client is None:
                return  # refused: the rest is not read
            data = data[end:]  # frames sent without waiting for the 101
        self._receive(data)

    def _end_of_head(self, data: bytes) -> int:
        """Where the request head (up to its blank line) ends in ``data``; -1 if not
        in it."""
        tail = self._tail or b""
        buf = tail + data
        at = buf.find(b"\r\n\r\n")
        if at < 0:
            self._tail = buf[-3:]
            return -1
        return at + 4 - len(tail)

    def _receive(self, data: bytes) -> None:
        ws = self._protocol()
        try:
            ws.receive_data(data)
        except EOFError:  # after the end of the stream: nothing more to read
            return
        events = ws.events_received()
        opened = self._tail is None  # frames, not the request head: count them
        if opened:
            pending = self._pending + len(data)
            for event in events:
                if type(event) is Frame:
                    pending -= _wire_size(event)
                    if event.opcode in DATA_OPCODES:
                        self._fragmented = not event.fin
            self._pending = pending
        for index, event in enumerate(events):
            if type(event) is Frame:
                opcode = event.opcode
                if opcode is _BINARY or opcode is _CONT:
                    if self._closing:
                        continue  # closed on our side: the rest is not read
                    if self._held is not None:
                        self._held.append(cast(bytes, event.data))
                    else:
                        self._deliver(cast(bytes, event.data))
                        if self._held is not None:  # paused while delivering
                            self._hold_rest(events, index + 1)
                            break
                elif opcode is _TEXT:
                    # [MQTT-6.0.0-1]: MQTT travels in binary frames; anything else closes.
                    self._error = ConnectionError(
                        "text frame received (MQTT needs binary frames)")
                    self._closing = True
                    ws.fail(CloseCode.UNSUPPORTED_DATA, "MQTT needs binary frames")
                    break
                # PING: ServerProtocol queued the PONG; PONG, CLOSE: nothing to do here.
            elif isinstance(event, Request):
                self._open(event)
        self._flush()
        if opened:
            self._rest()

    def eof_received(self) -> bool | None:
        self._protocol().receive_eof()
        self._flush()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._linger is not None:
            self._linger.cancel()
        self._endpoint._ended()
        client, self._client = self._client, None
        if client is None:
            return  # the opening handshake never completed: no MQTT connection
        ws, self._ws = self._ws, None  # never back to the spares: it saw the end
        error = self._error
        if ws is not None and error is None:
            if not self._we_closed and ws.close_rcvd is not None:
                code = ws.close_rcvd.code
                if code not in (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY):
                    error = ConnectionError(
                        f"closed by the client with WebSocket code {code}")
            if error is None and ws.parser_exc is not None and not isinstance(
                    ws.parser_exc, EOFError):
                error = ConnectionError(f"WebSocket protocol error: {ws.parser_exc}")
        client.connection_lost(error if error is not None else exc)

    def pause_writing(self) -> None:
        if self._client is not None:
            self._client.pause_writing()

    def resume_writing(self) -> None:
        if self._client is not None:
            self._client.resume_writing()

    # ---------------------------------------------------------- handshake, I/O
    def _protocol(self) -> _MqttServerProtocol:
        """The connection's protocol; between frames, one taken from the endpoint."""
        ws = self._ws
        if ws is None:
            ws = self._ws = self._endpoint.take(self._subprotocol)
        return ws

    def _rest(self) -> None:
        """Give the protocol back if it holds nothing a fresh OPEN one would not: no
        partial frame, no fragmented message, no closing handshake."""
        ws = self._ws
        if (ws is not None and self._pending == 0 and not self._fragmented
                and ws.state is _OPEN and ws.close_sent is None and ws.close_rcvd is None
                and not self._closing):
            self._ws = None
            self._endpoint.give(ws)

    def _open(self, request: Request) -> None:
        """The opening handshake: 404 for another path, 400 for another subprotocol,
        else 101 and the MQTT side starts."""
        ws = self._protocol()
        endpoint = self._endpoint
        path = endpoint.path
        if request.path.split("?", 1)[0] != path:
            log.info("refusing WebSocket handshake from %s: path %r is not %r",
                     self.peer, request.path, path)
            ws.send_response(ws.reject(HTTPStatus.NOT_FOUND, f"MQTT is served at {path}\n"))
            return
        response = ws.accept(request)
        ws.send_response(response)
        if response.status_code != 101:
            log.info("refusing WebSocket handshake from %s: %s (HTTP %d)", self.peer,
                     ws.handshake_exc, response.status_code)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush()  # the 101 before anything the MQTT side writes
        # The handshake's ServerProtocol keeps the request (its headers, some KiB) in
        # its parser for as long as it lives: it is dropped, and the frames go to an
        # OPEN one from the endpoint (issue 19), fed only the bytes after the head.
        self._tail = None
        self._subprotocol = ws.subprotocol
        self._ws = None
        client = endpoint.factory()
        self._client = client
        client.connection_made(self)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        log.debug("closing WebSocket connection from %s: no handshake within %ss",
                  self.peer, self._endpoint.handshake_timeout)
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def _deliver(self, data: bytes) -> None:
        client = self._client
        if client is not None and data:
            client.data_received(data)

    def _hold_rest(self, events: Sequence[object], start: int) -> None:
        held = self._held
        assert held is not None
        for event in events[start:]:
            if type(event) is Frame and event.opcode in (_BINARY, _CONT):
                held.append(cast(bytes, event.data))

    def _release_held(self) -> None:
        """After ``resume_reading``: what arrived while paused, in order."""
        while self._held and self._transport is not None:
            if not self._transport.is_reading() or self._closing:
                return
            data = self._held.pop(0)
            if not self._held:
                self._held = None
            self._deliver(data)
        if self._held is not None and not self._held:
            self._held = None

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        ws = self._ws
        if ws is None:
            return
        for data in ws.data_to_send():
            if data:
                transport.write(data)
            else:  # end of stream: a server closes the TCP connection (RFC 6455 §7.1.1)
                self._closing = True
                self._end_tcp()

    def _end_tcp(self) -> None:
        """Close the TCP connection so that what we sent last (the MQTT DISCONNECT or
        CONNACK, our close frame) reaches a client that is still sending: a lingering
        close (server/linger.py), not a close with unread input (a reset)."""
        transport = self._transport
        if transport is None or self._linger is not None or transport.is_closing():
            return
        self._linger = Linger(transport, self._endpoint.loop)

    def _close_timed_out(self) -> None:
        """The client did not answer our close frame: end the TCP connection (what is
        buffered is still sent), and abort it if that does not finish either."""
        transport = self._transport
        if transport is None:
            return
        self._end_tcp()
        self._timer = self._endpoint.loop.call_later(WS_CLOSE_GRACE - WS_CLOSE_TIMEOUT,
                                                     transport.abort)

    @property
    def peer(self) -> str:
        """``host:port`` of the client, for log lines."""
        if self._peer is None:
            info = self.get_extra_info("peername")
            if isinstance(info, tuple) and len(info) >= 2:
                self._peer = f"{info[0]}:{info[1]}"
            else:
                self._peer = str(info) if info else "?"
        return self._peer

    # ------------------------------------------- MQTT side (asyncio.Transport API)
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as one binary message (several of at most
        :data:`WS_MESSAGE_MAX` bytes, cut between packets, if it is longer)."""
        if self._closing or not data:
            return
        borrowed = self._ws is None  # else held by a read in progress, or needed
        ws = self._protocol()
        if ws.state is not _OPEN:
            return
        if len(data) <= WS_MESSAGE_MAX:
            ws.send_binary(data)
        else:
            for part in packet_aligned(data, WS_MESSAGE_MAX):
                ws.send_binary(part)
        self._flush()
        if borrowed:
            self._rest()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("WebSocket transports cannot half-close")

    def close(self) -> None:
        """Send what is queued, then the WebSocket closing handshake."""
        if self._closing:
            return
        self._closing = True
        self._we_closed = True
        self._held = None
        transport = self._transport
        if transport is None:
            return
        if not transport.is_reading() and not transport.is_closing():
            transport.resume_reading()  # the client's close frame must be read
        ws = self._protocol()
        if ws.state is _OPEN:
            ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._flush()
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._endpoint.loop.call_later(WS_CLOSE_TIMEOUT,
                                                         self._close_timed_out)
        else:
            self._end_tcp()

    def abort(self) -> None:
        self._closing = True
        self._we_closed = True
        self._held = None
        if self._transport is not None:
            self._transport.abort()

    def is_closing(self) -> bool:
        return self._closing or self._transport is None or self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "subprotocol":
            return self._subprotocol
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        if self._held is None:
            self._held = []
        if self._transport is not None and self._transport.is_reading():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        if not transport.is_reading():
            transport.resume_reading()
        if self._held is not None:
            if self._held:
                self._endpoint.loop.call_soon(self._release_held)
            else:
                self._held = None

    def is_reading(self) -> bool:
        return self._held is None

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._transport is not None:
            self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits() if self._transport else (0, 0)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise NotImplementedError("the MQTT protocol of a WebSocket connection is fixed")

    def get_protocol(self) -> asyncio.BaseProtocol:
        return cast(asyncio.BaseProtocol, self._client)
