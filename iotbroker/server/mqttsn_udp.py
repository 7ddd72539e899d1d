"""The asyncio side of an ``mqtt-sn`` listener: one UDP socket and a one-second tick.

The gateway (:mod:`iotbroker.mqttsn.gateway`) is sans-I/O; this module gives it
datagrams and the time, sends what it writes (wrapping replies for a forwarder's
Wireless Node Id, MQTT-SN 1.2 §5.5), and after each event applies the engine's
effects the way the broker does for its socket connections (closes, the core timer,
the end-of-turn flush, where the storage batch is committed before any answer leaves).
A CONNECT that must wait for the engine's connect gate (the cluster brings the
client's session here first: engine/connect.py ``wait_before_accept``) waits here, as
a socket connection's does in ``server/broker.py``, and is accepted or refused when
the wait is done.

ADVERTISE (§6.1) is broadcast to ``255.255.255.255`` on the listener's port when the
listener binds a wildcard address; a listener bound to one address (loopback in
tests) cannot broadcast and does not advertise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from iotbroker.config import BrokerConfig, ListenerConfig
from iotbroker.engine.client import Writable
from iotbroker.engine.engine import Engine
from iotbroker.mqttsn import codec as sn
from iotbroker.mqttsn.gateway import BROADCAST, Gateway, Key
from iotbroker.server.connect_wait import when_waited
from iotbroker.server.exposure import listening_note
from iotbroker.server.listeners import Listener

log = logging.getLogger("iotbroker.mqttsn")

#: Seconds between two runs of the gateway's timers (keep alive, retries, ADVERTISE):
#: one second, or a quarter of ``mqttsn.retry_interval`` when that is shorter.
TICK = 1.0
#: Socket buffer asked for (bytes), each way.
SOCKET_BUFFER = 4 * 1024 * 1024


class GatewayHost(Protocol):
    """The broker as the MQTT-SN listener sees it (``server/broker.py`` is one): the
    engine the gateway drives, and how the effects of its events are applied, as for a
    socket connection. A protocol, so this module never refers back to broker.py."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def config(self) -> BrokerConfig: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def ready_to_write(self) -> list[Writable]:
        """The turn's connections to write; the gateway's clients join it."""

    def now(self) -> float:
        """Wall-clock time (expiry)."""

    def apply_closes(self) -> None:
        """Close the clients the engine decided to close."""

    def reschedule_core_timer(self) -> None: ...

    def schedule_flush(self) -> None: ...

    def flush(self) -> None:
        """Commit the turn's storage batch, then write each connection's output."""


class MqttSnEndpoint(asyncio.DatagramProtocol):
    """The UDP socket of one ``mqtt-sn`` listener."""

    def __init__(self, broker: GatewayHost, config: ListenerConfig) -> None:
        self.broker = broker
        self.config = config
        self.transport: asyncio.DatagramTransport | None = None
        self.gateway = Gateway(broker.engine, broker.config, config, broker.ready_to_write,
                               self._sendto, broker.now(), defer=self._defer)
        #: CONNECTs waiting for the engine's connect gate (held: the loop keeps weak
        #: references to tasks).
        self._waits: set[asyncio.Future[str | None]] = set()
        self._broadcast = config.host in ("0.0.0.0", "::", "")
        self._tick: asyncio.TimerHandle | None = None
        self._interval = max(0.05, min(TICK, broker.config.mqttsn.retry_interval / 4))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not an asyncio.DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # One socket takes every device's datagrams: a burst must not overflow the
            # default receive buffer (~208 KiB) while the loop is busy; the kernel caps
            # this at net.core.rmem_max.
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):  # refused: the default stays
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            if self._broadcast:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self._tick = self.broker.loop.call_later(self._interval, self._on_tick)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.gateway.datagram_received(data, addr, self.broker.now())
        except Exception:  # a bug of ours: one datagram lost, the listener goes on
            log.exception("mqtt-sn %r: error handling a datagram from %s", self.config.name,
                          addr)
        self._after_event()

    def error_received(self, exc: Exception) -> None:
        log.debug("mqtt-sn %r: socket error %s", self.config.name, exc)

    def _sendto(self, data: bytes, key: Key) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        addr, node = key
        if key == BROADCAST:
            if not self._broadcast:
                return
            addr = ("255.255.255.255", self.config.port)
        elif node is not None:
            data = sn.encode(sn.Encapsulated(0, node, data))  # §5.5, back to the forwarder
        try:
            transport.sendto(data, addr)
        except OSError as exc:  # e.g. no route for the broadcast
            log.debug("mqtt-sn %r: sendto %s failed: %s", self.config.name, addr, exc)

    def _defer(self, wait: Awaitable[str | None], then: Callable[[str | None], None]
               ) -> None:
        """The gateway's CONNECT waits for ``wait`` (the engine's connect gate);
        ``then`` gets what it ended with — None (accept) also when it failed, as for
        a socket connection (server/broker.py ``accept_after``) — and the effects are
        applied as after a datagram."""
        def done(why: str | None) -> None:
            self.gateway.set_time(self.broker.now())
            try:
                then(why)
            except Exception:  # a bug of ours: this CONNECT is lost, the listener goes on
                log.exception("mqtt-sn %r: error accepting a CONNECT after its wait",
                              self.config.name)
            self._after_event()

        when_waited(wait, self._waits, done)

    def _after_event(self) -> None:
        """The engine's effects of one event, applied as for a socket connection."""
        broker = self.broker
        broker.apply_closes()
        broker.reschedule_core_timer()
        broker.schedule_flush()

    def _on_tick(self) -> None:
        self.gateway.run_timers(self.broker.now())
        self._after_event()
        self._tick = self.broker.loop.call_later(self._interval, self._on_tick)

    def shutting_down(self) -> None:
        self.gateway.shutting_down()
        self._after_event()

    def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self.transport is not None:
            self.transport.close()


class MqttSnListener(Listener):
    """A started ``mqtt-sn`` listener."""

    def __init__(self, config: ListenerConfig, endpoint: MqttSnEndpoint,
                 addresses: list[tuple[str, int]]) -> None:
        super().__init__(config, addresses)
        self.endpoint = endpoint

    def close(self) -> None:
        # Clients end cleanly (no will), told DISCONNECT, before the socket closes.
        self.endpoint.shutting_down()
        self.endpoint.broker.flush()
        self.endpoint.close()

    async def wait_closed(self) -> None:
        return


async def start_mqttsn_listener(broker: GatewayHost, config: ListenerConfig) -> MqttSnListener:
    """Bind the UDP socket of an ``mqtt-sn`` listener."""
    loop = broker.loop
    transport, endpoint = await loop.create_datagram_endpoint(
        lambda: MqttSnEndpoint(broker, config), local_addr=(config.host, config.port),
        reuse_port=False,
    )
    sock = transport.get_extra_info("sockname")
    addresses = [(str(sock[0]), int(sock[1]))]
    for host, port in addresses:
        log.info("listening on %s:%s (udp, listener %r)%s", host, port, config.name,
                 listening_note(config, host, port))
    return MqttSnListener(config, endpoint, addresses)
