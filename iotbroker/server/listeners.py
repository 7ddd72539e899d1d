"""Listeners: the sockets clients connect to, one per ``listeners[]`` entry.

* ``tcp``: ``loop.create_server`` with :class:`~iotbroker.server.transport.ClientProtocol`.
* ``tls`` and ``wss``: an :class:`ssl.SSLContext` built from ``TlsConfig`` (TLS ≥ 1.2,
  no compression; client certificates verified against ``cafile``); the listener
  accepts sockets itself and runs each handshake with ``loop.connect_accepted_socket``
  so that a failed handshake is logged with its peer and reason and counted
  (:class:`_TlsListener`, issue 12); then the same ``ClientProtocol`` (``tls``) or a
  :class:`~iotbroker.server.websocket.WebSocketConnection` in front of it (``wss``).
* ``ws``: ``loop.create_server`` with a
  :class:`~iotbroker.server.websocket.WebSocketConnection` per connection: the
  sans-I/O ``websockets`` protocol adapted to the transport API ``ClientProtocol``
  uses (MQTT 3.1.1 §6, MQTT 5.0 §6; see :mod:`iotbroker.server.websocket`), so the MQTT
  side does not know the difference.

Every listener logs ``listening on HOST:PORT (TYPE, listener 'NAME')`` once per bound
socket (the test harness and operators parse that line); a loopback address adds
`` — loopback only`` after it (:func:`iotbroker.server.exposure.listening_note`). A TLS
private key that group or others may read is warned about before it is loaded.

Rules of this room: no task per packet, none per established connection (plain, TLS
or WebSocket); a ``tls``/``wss`` connection has one task while its TLS handshake lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any, cast

from iotbroker.config import ListenerConfig, TlsConfig
from iotbroker.file_modes import warn_if_exposed
from iotbroker.server.exposure import listening_note
from iotbroker.server.tlsfailures import HandshakeFailures
from iotbroker.server.transport import ClientProtocol, ConnectionHost, ParkingView
from iotbroker.server.websocket import WS_CLOSE_TIMEOUT, WebSocketEndpoint

__all__ = [
    "Listener",
    "cert_common_name",
    "cert_subject",
    "make_ssl_context",
    "start_listener",
]

log = logging.getLogger("iotbroker.listeners")
#: The logger of the broker's "client ... connected from HOST:PORT" line.
_BROKER_LOG = logging.getLogger("iotbroker.broker")
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
    """``tcp``: an :class:`asyncio.Server` of ``ClientProtocol``; ``ws``: of
    ``WebSocketConnection`` (``tls``, ``wss``: see :class:`_TlsListener`)."""

    def __init__(self, config: ListenerConfig, server: asyncio.AbstractServer,
                 addresses: list[tuple[str, int]],
                 websockets: WebSocketEndpoint | None = None) -> None:
        super().__init__(config, addresses)
        self.server = server
        self.websockets = websockets

    def close(self) -> None:
        self.server.close()

    async def wait_closed(self) -> None:
        if self.websockets is None:
            await self.server.wait_closed()
            return
        # The broker closed the open connections; their closing handshakes are bounded
        # (WS_CLOSE_TIMEOUT); what is left after that the broker aborts.
        await _wait_websockets(self, self.websockets)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), 1.0)


async def _wait_websockets(listener: Listener, endpoint: WebSocketEndpoint) -> None:
    if not await endpoint.wait_closed(WS_CLOSE_TIMEOUT + 1.0):
        log.warning("listener %r: %d WebSocket connections still closing", listener.name,
                    endpoint.open)


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


def _protocol_factory(broker: ConnectionHost,
                      listener: ListenerConfig) -> Callable[[], ClientProtocol]:
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
    """``tls`` and ``wss``: accepts sockets itself and runs each TLS handshake in a
    task, so that a failed handshake is seen, with its peer (issue 12).

    asyncio's ``create_server(ssl=...)`` swallows failed handshakes (uvloop's loop and
    the standard one alike log them only in the loop's debug mode, without the peer),
    and ``start_tls`` on an accepted transport races with the first bytes on uvloop
    (it starts reading after ``connection_made``). So the listening sockets are ours
    and each accepted socket goes through ``loop.connect_accepted_socket(ssl=...)``,
    which raises when the handshake fails: the failure goes to
    :class:`~iotbroker.server.tlsfailures.HandshakeFailures` (a reason, a counter, a
    rate-limited line). One task per listening socket (the accept loop) and one per
    connection while its handshake lasts (bounded by ``ssl_handshake_timeout``); none
    afterwards: the protocol is the same ``ClientProtocol`` as on ``tcp`` (``tls``) or
    the same ``WebSocketConnection`` as on ``ws`` (``wss``, with ``websockets`` set).
    """

    def __init__(self, config: ListenerConfig, broker: ConnectionHost, ctx: ssl.SSLContext,
                 factory: Callable[[], asyncio.BaseProtocol], timeout: float,
                 websockets: WebSocketEndpoint | None = None) -> None:
        super().__init__(config, [])
        self.websockets = websockets
        self.loop = broker.loop
        self.ctx = ctx
        self.factory = factory
        self.timeout = timeout
        self.failures = HandshakeFailures(config.name, broker.metrics, broker.loop)
        self.sockets: list[socket.socket] = []
        self.accepting: list[asyncio.Task[None]] = []
        self.handshakes: set[asyncio.Task[None]] = set()
        self.reuse_port = False

    async def start(self) -> None:
        """Bind every address of ``host`` (as ``create_server`` does) and accept."""
        self.sockets = await _bind(self.loop, self.config, self.reuse_port)
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
        if self.websockets is not None:
            await _wait_websockets(self, self.websockets)


async def _bind(loop: asyncio.AbstractEventLoop, config: ListenerConfig,
                reuse_port: bool) -> list[socket.socket]:
    """Non-blocking listening sockets on every address of ``host``, as
    ``create_server`` binds them (SO_REUSEADDR, IPv6 only on AF_INET6, backlog 4096)."""
    infos = await loop.getaddrinfo(config.host or None, config.port,
                                   type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: set[tuple[int, object]] = set()
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(4096)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


# ------------------------------------------------- plain TCP without a transport
class _ParkedListener(Listener):
    """``tcp`` with ``limits.park_on_accept`` (on by default; needs parking, i.e.
    ``limits.park_idle_after`` > 0 and epoll): accepts sockets itself and hands each
    to the broker's parking (server/parking.py ``Parking.accept``) without a
    transport. Its CONNECT is read with one read and the CONNACK written with one
    send; the connection gets a transport when more arrives (issue 19: the connect
    cost, and no transport for a device that idles after connecting). The accept
    loop itself is the parking's (``Parking.accept_ready``, compiled), which makes
    each connection a plain ``ClientProtocol`` (what ``factory`` makes for ``tcp``)."""

    def __init__(self, config: ListenerConfig, broker: ConnectionHost,
                 factory: Callable[[], ClientProtocol], parking: ParkingView) -> None:
        super().__init__(config, [])
        self.loop = broker.loop
        self.broker = broker
        self.factory = factory
        self.parking = parking
        self.sockets: list[socket.socket] = []
        self.reuse_port = False
        self._backoff: dict[socket.socket, asyncio.TimerHandle] = {}

    async def start(self) -> None:
        self.sockets = await _bind(self.loop, self.config, self.reuse_port)
        self.addresses = _bound(self.sockets)
        for sock in self.sockets:
            # Linux gives accepted sockets the listener's TCP_NODELAY: one call, not
            # one per connection.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        """Accept what is waiting (at most ``parking.ACCEPT_BATCH``), each socket
        non-blocking; back off after an error such as EMFILE, as asyncio does."""
        # A "connected from HOST:PORT" line per connect (INFO, the default) needs the
        # peer: format the address accept() gave rather than ask the socket later.
        exc = self.parking.accept_ready(
            sock._accept,  # type: ignore[attr-defined]  # (fd, address), no socket object
            self.broker, self.name, _BROKER_LOG.isEnabledFor(logging.INFO))
        if exc is not None:
            log.error("listener %r: accept failed: %s (retrying in %ss)", self.name,
                      exc, ACCEPT_BACKOFF)
            self.loop.remove_reader(sock.fileno())
            self._backoff[sock] = self.loop.call_later(ACCEPT_BACKOFF, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        del self._backoff[sock]
        self.loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        for handle in self._backoff.values():
            handle.cancel()
        self._backoff.clear()
        for sock in self.sockets:
            if sock.fileno() >= 0:
                self.loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        return


#: Seconds a TLS listener waits after a failed accept (out of file descriptors...),
#: as asyncio's own accept loop does.
ACCEPT_BACKOFF = 1.0


def _peer_text(info: object) -> str:
    if isinstance(info, tuple) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info) if info else "?"


# ------------------------------------------------------------------------------ start
async def start_listener(broker: ConnectionHost, listener: ListenerConfig,
                         reuse_port: bool = False) -> Listener:
    """Bind ``listener`` and start accepting; raises :class:`OSError` if it cannot.
    ``broker`` is what each accepted connection reports to (the broker, typed by
    what a connection uses of it: this module never refers back to broker.py).
    ``reuse_port``: SO_REUSEPORT, so that worker processes share the port (the kernel
    spreads new connections over them; docs/cluster.md, "Workers")."""
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
    loop = broker.loop
    websockets: WebSocketEndpoint | None = None
    # ClientProtocol is an asyncio protocol by its methods (server/transport.py).
    protocol_factory = cast(Callable[[], asyncio.BaseProtocol], factory)
    if listener.type in ("ws", "wss"):
        websockets = WebSocketEndpoint(
            loop, listener.path, factory,
            # One message may hold a whole packet (or several): allow the packet limit.
            max_size=max(broker.config.mqtt.max_packet_size, 1 << 16),
            handshake_timeout=handshake_timeout,
        )
        protocol_factory = websockets.protocol
    result: Listener
    if ctx is not None:
        tls_listener = _TlsListener(listener, broker, ctx, protocol_factory,
                                    handshake_timeout, websockets)
        tls_listener.reuse_port = reuse_port
        await tls_listener.start()
        result = tls_listener
    elif (listener.type == "tcp" and broker.config.limits.park_on_accept
          and broker.parking is not None and broker.parking.active):
        parked = _ParkedListener(listener, broker, factory, broker.parking)
        parked.reuse_port = reuse_port
        await parked.start()
        result = parked
    else:
        server = await loop.create_server(
            protocol_factory, host=listener.host, port=listener.port, reuse_address=True,
            reuse_port=reuse_port or None, backlog=4096,
        )
        result = _SocketListener(listener, server, _bound(server.sockets), websockets)
    for host, port in result.addresses:
        log.info("listening on %s:%s (%s, listener %r)%s", host, port, listener.type,
                 listener.name, listening_note(listener, host, port))
    return result


def _bound(sockets: Sequence[Any]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for sock in sockets:
        addr = sock.getsockname()
        out.append((addr[0], addr[1]))
    return out
