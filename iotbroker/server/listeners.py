"""Listeners: the sockets clients connect to, one per ``listeners[]`` entry.

* ``tcp``: ``loop.create_server`` with :class:`~iotbroker.server.transport.ClientProtocol`.
* ``tls``: an :class:`ssl.SSLContext` built from ``TlsConfig`` (TLS ≥ 1.2, no
  compression; client certificates verified against ``cafile``); the listener accepts
  sockets itself and runs each handshake with ``loop.connect_accepted_socket`` so that
  a failed handshake is logged with its peer and reason and counted
  (:class:`_TlsListener`, issue 12); then the same ``ClientProtocol``.
* ``ws`` / ``wss``: the ``websockets`` server (MQTT 3.1.1 §6, MQTT 5.0 §6: binary frames,
  subprotocol ``mqtt``). :class:`WebSocketTransport` adapts one WebSocket connection to
  the asyncio transport methods ``ClientProtocol`` uses, so the MQTT side does not know
  the difference. A WebSocket message is a chunk of the byte stream: an MQTT packet may
  span messages and a message may hold several packets [MQTT-6.0.0-2].

Every listener logs ``listening on HOST:PORT (TYPE, listener 'NAME')`` once per bound
socket (the test harness and operators parse that line); a loopback address adds
`` — loopback only`` after it (:func:`iotbroker.server.exposure.listening_note`). A TLS
private key that group or others may read is warned about before it is loaded.

Rules of this room: no task per packet. A WebSocket connection has exactly two tasks,
the reader (the ``websockets`` handler task) and the sender; plain and TLS connections
have none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, NegotiationError
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from iotbroker.config import ListenerConfig, TlsConfig
from iotbroker.file_modes import warn_if_exposed
from iotbroker.server.exposure import listening_note
from iotbroker.server.tlsfailures import HandshakeFailures
from iotbroker.server.transport import ClientProtocol

if TYPE_CHECKING:
    from iotbroker.server.broker import Broker

__all__ = [
    "Listener",
    "WebSocketTransport",
    "cert_common_name",
    "cert_subject",
    "make_ssl_context",
    "start_listener",
]

log = logging.getLogger("iotbroker.listeners")
ws_log = logging.getLogger("iotbroker.websocket")

#: WebSocket subprotocols we accept, preferred first ("mqttv3.1" is what MQTT 3.1
#: clients such as old paho versions send) [MQTT-6.0.0-3], [MQTT-6.0.0-4].
WS_SUBPROTOCOLS = (Subprotocol("mqtt"), Subprotocol("mqttv3.1"))
#: Seconds a WebSocket closing handshake may take before the TCP connection is dropped.
WS_CLOSE_TIMEOUT = 3.0
#: Seconds a close() may take to flush and close before the connection is aborted.
WS_CLOSE_GRACE = 10.0
#: Default high-water mark of a WebSocket transport's send queue (ClientProtocol sets
#: its own with ``set_write_buffer_limits``).
WS_WRITE_HIGH = 1 << 16


# --------------------------------------------------------------------------- Listener
class Listener:
    """A started listener: its bound ``addresses``; ``close()`` then ``wait_closed()``."""

    def __init__(self, config: ListenerConfig, addresses: list[tuple[str, int]]) -> None:
        self.config = config
        self.name = config.name
        self.addresses = addresses

    def close(self) -> None:
        """Stop accepting connections (open ones are closed by the broker)."""
        raise NotImplementedError

    async def wait_closed(self) -> None:
        raise NotImplementedError


class _SocketListener(Listener):
    """``tcp``: an :class:`asyncio.Server` of ``ClientProtocol`` (``tls``: see
    :class:`_TlsListener`)."""

    def __init__(self, config: ListenerConfig, server: asyncio.AbstractServer,
                 addresses: list[tuple[str, int]]) -> None:
        super().__init__(config, addresses)
        self.server = server

    def close(self) -> None:
        self.server.close()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()


class _WebSocketListener(Listener):
    """``ws`` and ``wss``: a ``websockets`` server whose handler drives ``ClientProtocol``."""

    def __init__(self, config: ListenerConfig, server: Server,
                 addresses: list[tuple[str, int]]) -> None:
        super().__init__(config, addresses)
        self.server = server

    def close(self) -> None:
        # Do not let websockets close the open connections (1001): the broker closes
        # them itself so that v5 clients get their DISCONNECT 0x8B first.
        self.server.close(close_connections=False)

    async def wait_closed(self) -> None:
        # Handlers return once their closing handshake ends (bounded by close_timeout);
        # whatever is left after that is aborted by the broker.
        try:
            await asyncio.wait_for(self.server.wait_closed(), WS_CLOSE_TIMEOUT + 1.0)
        except TimeoutError:
            log.warning("listener %r: WebSocket connections still closing", self.name)


# -------------------------------------------------------------------------------- TLS
_TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def make_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The server-side context of a ``tls``/``wss`` listener.

    Raises :class:`OSError` (``ssl.SSLError`` or ``FileNotFoundError``) naming what
    could not be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_SINGLE_DH_USE | ssl.OP_SINGLE_ECDH_USE
    assert tls.certfile is not None and tls.keyfile is not None  # checked by config
    ctx.load_cert_chain(tls.certfile, tls.keyfile, tls.keyfile_password)
    if tls.ciphers:
        ctx.set_ciphers(tls.ciphers)
    if tls.cafile is not None:
        ctx.load_verify_locations(cafile=tls.cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def cert_common_name(peercert: object) -> str | None:
    """The subject Common Name of a verified peer certificate (``getpeercert()``)."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str) and value:
                return value
    return None


#: ``getpeercert()`` attribute names -> RFC 4514 short names (others are kept long).
_RDN_SHORT = {
    "commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
    "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
    "streetAddress": "STREET", "domainComponent": "DC", "userId": "UID",
}
_RDN_SPECIAL = frozenset(',+"\\<>;=')


def _rdn_value(value: str) -> str:
    """Escape an attribute value as RFC 4514 §2.4 says."""
    out = "".join("\\" + ch if ch in _RDN_SPECIAL else ch for ch in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out


def cert_subject(peercert: object) -> str | None:
    """A verified peer certificate's subject as an RFC 4514 string, most specific
    first (``CN=dev-17,O=Fleet``, as ``openssl x509 -nameopt RFC2253`` prints it);
    None without a certificate. For log lines (issue 12)."""
    if not isinstance(peercert, dict):
        return None
    subject = peercert.get("subject")
    if not subject:
        return None
    rdns = []
    for rdn in reversed(subject):
        rdns.append("+".join(f"{_RDN_SHORT.get(key, key)}={_rdn_value(str(value))}"
                             for key, value in rdn))
    return ",".join(rdns)


class TlsClientProtocol(ClientProtocol):
    """A client of a ``tls`` or ``wss`` listener: its certificate's subject, if it sent
    one, goes on its log lines (:attr:`ClientProtocol.cert_subject`)."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.cert_subject = cert_subject(transport.get_extra_info("peercert"))
        super().connection_made(transport)


class CertIdentityProtocol(TlsClientProtocol):
    """A client of a ``use_identity_as_username`` listener: the certificate's subject CN
    is its username (read by ``Broker.on_connect``); no CN, no connection."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.cert_username = cert_common_name(transport.get_extra_info("peercert"))
        super().connection_made(transport)
        if self.cert_username is None:
            self.broker.metrics.count_auth_failure("certificate")
            log.warning("closing %s: authentication failed (certificate): its client "
                        "certificate has no subject CN (listener %r uses the identity as "
                        "username)", self.peer, self.listener)
            self.abort()


def _protocol_factory(broker: Broker, listener: ListenerConfig) -> Callable[[], ClientProtocol]:
    tls = listener.tls
    cls: type[ClientProtocol] = ClientProtocol
    if tls is not None:
        cls = CertIdentityProtocol if tls.use_identity_as_username else TlsClientProtocol
    name = listener.name

    def factory() -> ClientProtocol:
        return cls(broker, name)

    return factory


# ------------------------------------------------------------------ TLS listeners
class _TlsListener(Listener):
    """``tls``: accepts sockets itself and runs each handshake in a task, so that a
    failed handshake is seen, with its peer (issue 12).

    asyncio's ``create_server(ssl=...)`` swallows failed handshakes (uvloop's loop and
    the standard one alike log them only in the loop's debug mode, without the peer),
    and ``start_tls`` on an accepted transport races with the first bytes on uvloop
    (it starts reading after ``connection_made``). So the listening sockets are ours
    and each accepted socket goes through ``loop.connect_accepted_socket(ssl=...)``,
    which raises when the handshake fails: the failure goes to
    :class:`~iotbroker.server.tlsfailures.HandshakeFailures` (a reason, a counter, a
    rate-limited line). One task per listening socket (the accept loop) and one per
    connection while its handshake lasts (bounded by ``ssl_handshake_timeout``); none
    afterwards: the MQTT side is the same ``ClientProtocol`` as on ``tcp``.
    """

    def __init__(self, config: ListenerConfig, broker: Broker, ctx: ssl.SSLContext,
                 factory: Callable[[], ClientProtocol], timeout: float) -> None:
        super().__init__(config, [])
        self.loop = broker.loop
        self.ctx = ctx
        self.factory = factory
        self.timeout = timeout
        self.failures = HandshakeFailures(config.name, broker.metrics, broker.loop)
        self.sockets: list[socket.socket] = []
        self.accepting: list[asyncio.Task[None]] = []
        self.handshakes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind every address of ``host`` (as ``create_server`` does) and accept."""
        config = self.config
        infos = await self.loop.getaddrinfo(config.host or None, config.port,
                                            type=socket.SOCK_STREAM,
                                            flags=socket.AI_PASSIVE)
        seen: set[tuple[int, object]] = set()
        try:
            for family, kind, proto, _name, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(4096)
                sock.setblocking(False)
        except OSError:
            for sock in self.sockets:
                sock.close()
            raise
        self.addresses = _bound(self.sockets)
        for sock in self.sockets:
            self.accepting.append(self.loop.create_task(self._accept(sock)))

    async def _accept(self, sock: socket.socket) -> None:
        loop = self.loop
        while True:  # until close() cancels it
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and the like: back off, as asyncio does
                log.error("listener %r: accept failed: %s (retrying in %ss)", self.name, exc,
                          ACCEPT_BACKOFF)
                await asyncio.sleep(ACCEPT_BACKOFF)
                continue
            except Exception:  # a bug must not stop the listener for good
                log.exception("listener %r: accept failed", self.name)
                await asyncio.sleep(ACCEPT_BACKOFF)
                continue
            task = loop.create_task(self._handshake(conn, address))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, conn: socket.socket, address: object) -> None:
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self.loop.connect_accepted_socket(
                self.factory, conn, ssl=self.ctx, ssl_handshake_timeout=self.timeout)
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as exc:
            conn.close()
            self.failures.report(_peer_text(address), exc)

    def close(self) -> None:
        for task in self.accepting:
            task.cancel()
        for sock in self.sockets:
            sock.close()
        for task in list(self.handshakes):
            task.cancel()
        self.failures.close()

    async def wait_closed(self) -> None:
        tasks = [*self.accepting, *self.handshakes]
        if tasks:
            await asyncio.wait(tasks, timeout=WS_CLOSE_TIMEOUT)


def watch_handshakes(ctx: ssl.SSLContext, failures: HandshakeFailures) -> None:
    """``wss``: report handshakes that OpenSSL refuses, through the context's
    ``sslobject_class`` (public since Python 3.7; uvloop and asyncio's loop both make
    their TLS objects with ``wrap_bio``). The ``websockets`` server runs the handshake
    inside asyncio, where the peer is out of reach: its lines say ``peer ?``, and
    clients that close or time out during the handshake are not seen (``tls``
    listeners see both, :class:`_TlsListener`)."""

    class WatchedSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                failures.report("?", exc)
                raise

    ctx.sslobject_class = WatchedSSLObject


#: Seconds a TLS listener waits after a failed accept (out of file descriptors...),
#: as asyncio's own accept loop does.
ACCEPT_BACKOFF = 1.0


def _peer_text(info: object) -> str:
    if isinstance(info, tuple) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info) if info else "?"


# -------------------------------------------------------------------------- WebSocket
class WebSocketTransport(asyncio.Transport):
    """One WebSocket connection seen as an asyncio transport by ``ClientProtocol``.

    ``write`` queues bytes; the sender task sends what is queued as one binary message
    and awaits the socket's drain. Bytes queued and not yet taken by the socket count
    against the high-water mark: past it the protocol gets ``pause_writing``, back
    under the low-water mark ``resume_writing`` (as a socket transport does).
    ``pause_reading`` makes the reader stop taking messages, so ``websockets`` stops
    reading the socket once its own small queue is full: TCP backpressure reaches the
    client.
    """

    def __init__(self, ws: ServerConnection, protocol: ClientProtocol) -> None:
        super().__init__()
        self._ws = ws
        self._protocol = protocol
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._high = WS_WRITE_HIGH
        self._low = WS_WRITE_HIGH // 4
        self._write_paused = False
        self._closing = False
        self._close_requested = False
        self._wakeup = asyncio.Event()
        self._can_read = asyncio.Event()
        self._can_read.set()
        self._sender: asyncio.Task[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    # -------------------------------------------------------- transport API
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._wakeup.set()
        if not self._write_paused and self._buffered > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("WebSocket transports cannot half-close")

    def close(self) -> None:
        """Send what is queued, then the WebSocket closing handshake."""
        if self._closing:
            return
        self._closing = True
        self._close_requested = True
        self._can_read.set()  # take the peer's remaining frames, up to its close frame
        self._wakeup.set()
        # A peer that reads nothing must not keep a closed connection alive.
        self._close_timer = asyncio.get_running_loop().call_later(WS_CLOSE_GRACE, self.abort)

    def abort(self) -> None:
        self._closing = True
        self._chunks.clear()
        self._can_read.set()
        self._ws.transport.abort()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._ws.remote_address
        if name == "websocket":
            return self._ws
        return self._ws.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._can_read.clear()

    def resume_reading(self) -> None:
        self._can_read.set()

    def is_reading(self) -> bool:
        return self._can_read.is_set()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = WS_WRITE_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # ------------------------------------------------------------ the tasks
    async def run(self) -> None:
        """Drive the connection until it ends; the protocol's ``connection_lost`` last."""
        protocol = self._protocol
        exc: Exception | None = None
        try:
            protocol.connection_made(self)
            self._sender = asyncio.get_running_loop().create_task(self._send_loop())
            exc = await self._read_loop()
        except ConnectionClosedOK:
            pass
        except ConnectionClosed as closed:
            exc = None if self._closing else closed  # we closed it: no error
        finally:
            self._closing = True
            if self._close_timer is not None:
                self._close_timer.cancel()
            sender = self._sender
            if sender is not None and not sender.done():
                sender.cancel()
            protocol.connection_lost(exc)

    async def _read_loop(self) -> Exception | None:
        ws = self._ws
        protocol = self._protocol
        can_read = self._can_read
        while True:
            if not can_read.is_set():
                await can_read.wait()
            message = await ws.recv()
            if not can_read.is_set():  # paused while this message was on its way
                await can_read.wait()
            if isinstance(message, str):
                # [MQTT-6.0.0-1]: MQTT travels in binary frames; anything else closes.
                self._closing = True
                await ws.close(CloseCode.UNSUPPORTED_DATA, "MQTT needs binary frames")
                return ConnectionError("text frame received (MQTT needs binary frames)")
            protocol.data_received(message)

    async def _send_loop(self) -> None:
        ws = self._ws
        try:
            while True:
                chunks = self._chunks
                if not chunks:
                    if self._close_requested:
                        break
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                self._chunks = []
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                await ws.send(data)  # bytes: one binary message; awaits the drain
                self._buffered -= len(data)
                if self._write_paused and self._buffered <= self._low:
                    self._write_paused = False
                    if not ws.transport.is_closing():
                        self._protocol.resume_writing()
            await ws.close()
        except ConnectionClosed:
            pass
        except Exception:  # a bug here must not leave the connection half alive
            ws_log.exception("WebSocket sender of %s failed", self._protocol.peer)
            ws.transport.abort()


def _select_subprotocol(ws: ServerConnection,
                        offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """``mqtt`` if offered (``mqttv3.1`` for MQTT 3.1 clients); clients offering no
    subprotocol at all are accepted as mosquitto does; others get HTTP 400."""
    for proto in WS_SUBPROTOCOLS:
        if proto in offered:
            return proto
    if not offered:
        return None
    log.info("refusing WebSocket handshake from %s: subprotocols %s, not mqtt",
             _peer(ws), ", ".join(offered))
    raise NegotiationError(f"unsupported subprotocol {', '.join(offered)}; expected mqtt")


def _peer(ws: ServerConnection) -> str:
    peer = ws.remote_address
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"


# ------------------------------------------------------------------------------ start
async def start_listener(broker: Broker, listener: ListenerConfig) -> Listener:
    """Bind ``listener`` and start accepting; raises :class:`OSError` if it cannot."""
    ctx: ssl.SSLContext | None = None
    if listener.type in ("tls", "wss"):
        assert listener.tls is not None  # checked by config
        if listener.tls.keyfile is not None:
            warn_if_exposed(listener.tls.keyfile,
                            f"TLS private key of listener {listener.name!r}")
        try:
            ctx = make_ssl_context(listener.tls)
        except OSError as exc:
            raise OSError(f"listener {listener.name!r}: cannot set up TLS: {exc}") from exc
    factory = _protocol_factory(broker, listener)
    handshake_timeout = max(1.0, broker.config.mqtt.connect_timeout)
    result: Listener
    if listener.type == "tls":
        assert ctx is not None
        tls_listener = _TlsListener(listener, broker, ctx, factory, handshake_timeout)
        await tls_listener.start()
        result = tls_listener
    elif listener.type == "tcp":
        server = await broker.loop.create_server(
            factory, host=listener.host, port=listener.port, reuse_address=True,
            backlog=4096,
        )
        result = _SocketListener(listener, server, _bound(server.sockets))
    else:
        result = await _start_websocket(broker, listener, factory, ctx, handshake_timeout)
    for host, port in result.addresses:
        log.info("listening on %s:%s (%s, listener %r)%s", host, port, listener.type,
                 listener.name, listening_note(listener, host, port))
    return result


async def _start_websocket(
    broker: Broker,
    listener: ListenerConfig,
    factory: Callable[[], ClientProtocol],
    ctx: ssl.SSLContext | None,
    handshake_timeout: float,
) -> Listener:
    path = listener.path

    def process_request(ws: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] != path:
            log.info("refusing WebSocket handshake from %s: path %r is not %r", _peer(ws),
                     request.path, path)
            return ws.respond(HTTPStatus.NOT_FOUND, f"MQTT is served at {path}\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        await WebSocketTransport(ws, factory()).run()

    if ws_log.level == logging.NOTSET:
        # websockets logs every frame at DEBUG and every connection at INFO; the broker
        # logs connections itself. ``logging.levels: {iotbroker.websocket: DEBUG}``
        # brings them back.
        ws_log.setLevel(logging.WARNING)
    kwargs: dict[str, Any] = {}
    if ctx is not None:
        watch_handshakes(ctx, HandshakeFailures(listener.name, broker.metrics, broker.loop))
        kwargs = {"ssl": ctx, "ssl_handshake_timeout": handshake_timeout}
    mqtt_cfg = broker.config.mqtt
    server = await serve(
        handler,
        listener.host,
        listener.port,
        select_subprotocol=_select_subprotocol,
        process_request=process_request,
        compression=None,  # MQTT payloads are often compressed or tiny; save the CPU
        open_timeout=handshake_timeout,
        ping_interval=None,  # MQTT keep alive detects dead peers
        close_timeout=WS_CLOSE_TIMEOUT,
        # One message may hold a whole packet (or several): allow the packet limit.
        max_size=max(mqtt_cfg.max_packet_size, 1 << 16),
        max_queue=4,
        logger=ws_log,
        reuse_address=True,
        backlog=4096,
        **kwargs,
    )
    return _WebSocketListener(listener, server, _bound(server.sockets))


def _bound(sockets: Sequence[Any]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for sock in sockets:
        addr = sock.getsockname()
        out.append((addr[0], addr[1]))
    return out
