"""One bridge: an engine session on the local side, an MQTT client link on the remote.

Local side (MQTT 5.0 §4.1 session state, held by :class:`~iotbroker.core.session.Session`):
the session ``$bridge/<name>`` is persistent (it never expires) and subscribed to the
local filter of every ``out`` rule with No Local and Retain As Published (MQTT 5.0
§3.8.3.1). Messages reach it through ``Session.deliver`` like any subscriber's, are
queued on disk while the remote is away (bounded by ``outbox``; its policy is the
session's queue policy) and are sent through the session's in-flight window of
``max_inflight`` packet identifiers. The packet identifiers of that window *are* the
ones on the remote connection: the remote's PUBACK / PUBREC / PUBCOMP complete the
session's deliveries one for one (MQTT 5.0 §4.3), and after a reconnect the session
re-sends what is unacknowledged, in order, with DUP=1 [MQTT-4.4.0-1].

Remote side: PUBLISH packets of ``in`` rules are published into the engine with the
session as origin, so the session's No Local keeps them from going back out (loop
safety). QoS 2 packet ids are held in the session's inbound QoS 2 set (method B of
§4.3.3) so a re-sent PUBLISH is not routed twice. Acknowledgements go to the remote
after the engine's storage commit of the same turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iotbroker.bridge.manager import Bridges

from iotbroker.bridge.connecting import (
    address_order,
    backoff,
    connack_text,
    encode_connect,
    os_error_text,
)
from iotbroker.bridge.link import Link
from iotbroker.bridge.origin import crossed, stamp
from iotbroker.bridge.peers import hello, remote_id
from iotbroker.bridge.tls import client_context
from iotbroker.bridge.topics import Rule, map_in, map_out
from iotbroker.codec import encode_packet, encode_properties, encode_publish
from iotbroker.codec.enums import ReasonCode
from iotbroker.codec.framer import PROTOCOL_MAX_PACKET_SIZE
from iotbroker.codec.packets import (
    NO_PROPERTIES,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
)
from iotbroker.config import BridgeConfig
from iotbroker.core.session import OutboxEntry, Session, SessionContext, SessionLimits
from iotbroker.core.topics import is_broker_topic
from iotbroker.engine.client import Client
from iotbroker.engine.engine import Engine
from iotbroker.message import NEVER_EXPIRES, Delivery, Message, Sending
from iotbroker.protocol.connection import Connection, ConnectionState

log = logging.getLogger("iotbroker.bridge")

#: Client ids of bridge sessions: ``$`` cannot start a network client's id here
#: (``engine/connect.py`` refuses it), so no client can take the session over.
SESSION_PREFIX = "$bridge/"

_FAILURE = int(ReasonCode.UNSPECIFIED_ERROR)
#: Property block kind of PUBLISH (codec/properties.py: the packet type).
_PUBLISH_PROPS = 3
#: Remote topics cached per local topic (cleared when it grows past this many).
_TOPIC_CACHE = 4096
_UNMAPPED = "\0unmapped"


def session_id(name: str) -> str:
    return SESSION_PREFIX + name


def state_topic(name: str) -> str:
    """mosquitto's notification topic: ``1`` connected, ``0`` not."""
    return f"$SYS/broker/connection/{name}/state"


class Outlet(Connection):
    """The bridge session's "connection" as the engine sees it: what the session
    sends (``Engine.send_ready`` calls ``send_outbox``) goes to the remote link instead
    of a socket. A :class:`~iotbroker.protocol.connection.Connection` (compiled, it
    allows interpreted subclasses): the compiled engine checks ``Client.conn``'s type."""

    __slots__ = ("bridge",)

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(max_packet_size=PROTOCOL_MAX_PACKET_SIZE, receive_maximum=65535,
                         topic_alias_maximum=0, now=0.0)
        self.state = ConnectionState.CONNECTED
        self.protocol_version = 5
        self.bridge = bridge

    def send_outbox(self, entries: list[OutboxEntry],
                    now: float) -> list[tuple[int, Delivery, bool]]:
        return self.bridge.send_entries(entries, now)

    def close(self) -> None:
        """Nothing to close: the bridge owns its link."""


class BridgeClient(Client):
    """The engine's handle on the bridge's local side."""

    __slots__ = ("name",)

    def __init__(self, outlet: Outlet, name: str) -> None:
        # Its connection is the Outlet: what the engine sends it goes to ``send_outbox``.
        super().__init__(outlet, listener=f"bridge:{name}")
        self.name = name

    @property
    def peer(self) -> str:
        return f"bridge {self.name}"


class ConnectFailed(Exception):
    """A connection attempt failed; the text says why (logged once per attempt)."""


class Bridge:
    """One configured bridge: its session, its link, its reconnect loop and counters."""

    def __init__(self, config: BridgeConfig, engine: Engine, loop: asyncio.AbstractEventLoop,
                 flush: Callable[[], None], manager: Bridges | None = None) -> None:
        self.config = config
        self.manager = manager
        #: Our broker id in bridge-origin marks (MQTT 5.0 links; "" = not marked).
        self.origin = (manager.broker_id if manager is not None and config.origin_marker
                       and config.protocol == 5 else "")
        #: The property block of a message without properties of its own (MQTT 5.0).
        self._empty_props_bytes = encode_properties(
            stamp(NO_PROPERTIES, self.origin) if self.origin else NO_PROPERTIES,
            _PUBLISH_PROPS)
        #: Remote topic (None: no rule) per local topic; the rules never change for
        #: a Bridge (a changed bridge is a new one).
        self._out_topics: dict[str, str | None] = {}
        self.name = config.name
        self.engine = engine
        self.loop = loop
        self.flush = flush
        self.rules = tuple(Rule.from_config(r) for r in config.topics)
        self.client_id = config.client_id or f"{socket.gethostname()}.{config.name}"
        self.client = BridgeClient(Outlet(self), config.name)
        self.client.client_id = session_id(self.name)
        self.session: Session | None = None
        self.limits = SessionLimits(
            max_queued_messages=config.outbox.max_messages,
            max_queued_bytes=config.outbox.max_bytes,
            drop_oldest=config.outbox.policy == "drop-oldest",
            queue_qos0_offline=config.outbox.queue_qos0,
        )
        self.link: Link | None = None
        self.connected = False
        self.task: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[str] | None = None
        self._connack: asyncio.Future[ConnAck] | None = None
        self._suback: asyncio.Future[SubAck] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._private_refused = False
        self._remote_kept_session = False
        #: The remote's Maximum QoS (MQTT 5.0 CONNACK, §3.2.2.3.4): higher ones go down.
        self._remote_max_qos = 2
        #: The remote's Maximum Packet Size (MQTT 5.0 CONNACK); 0 = the protocol's.
        self._remote_max_packet = 0
        self._next_address = 0
        self._drops_logged = 0
        self._drops_seen = 0
        self._burst_logged_at: float | None = None
        self._drop_timer: asyncio.TimerHandle | None = None
        # counters (metrics, $SYS)
        self.forwarded_out = 0
        self.forwarded_in = 0
        self.connects = 0
        self.last_error = ""
        #: Messages refused because they had been in this broker already (a cycle of
        #: bridges): over this bridge's ``in`` rules, or sent back by its remote.
        self.looped = 0
        #: Messages pulled from the remote and not routed because the remote's own
        #: bridge pushes them here (bridge/peers.py).
        self.duplicates = 0
        #: The remote's broker id from its CONNACK ("" unless it is an iotbroker with
        #: bridges, MQTT 5.0).
        self.remote_id = ""

    # ------------------------------------------------------------ lifecycle
    @property
    def dropped(self) -> int:
        return self.limits.dropped

    def start(self, after_restart: bool = False) -> None:
        """Open (or resume) the local session and start connecting. ``after_restart``:
        the broker has just started; what may have been in flight to the remote when it
        stopped goes back in flight (re-sent with DUP=1 and the same packet ids)."""
        self.open_session(time.time(), after_restart)
        self._publish_state()
        self.flush()
        self.task = self.loop.create_task(self._run(), name=f"bridge {self.name}")
        self._drop_timer = self.loop.call_later(1.0, self._check_drops)

    def _check_drops(self) -> None:
        """Outbox drops are logged once per burst: a WARNING when they start (then at
        most once a minute while they go on), an INFO line with the total when a second
        passes without one. Checked every second."""
        self._drop_timer = self.loop.call_later(1.0, self._check_drops)
        dropped = self.limits.dropped
        now = self.loop.time()
        if dropped > self._drops_seen:
            self._drops_seen = dropped
            if self._burst_logged_at is None or now - self._burst_logged_at >= 60.0:
                log.warning("bridge %r: outbox full (%d messages, %d bytes max): %d messages "
                            "dropped (policy %s; %d in all)", self.name,
                            self.config.outbox.max_messages, self.config.outbox.max_bytes,
                            dropped - self._drops_logged, self.config.outbox.policy, dropped)
                self._drops_logged = dropped
                self._burst_logged_at = now
        elif self._burst_logged_at is not None:
            log.info("bridge %r: outbox drops stopped: %d more since the last line "
                     "(%d in all)", self.name, dropped - self._drops_logged, dropped)
            self._drops_logged = dropped
            self._burst_logged_at = None

    def open_session(self, now: float, after_restart: bool = False) -> None:
        engine = self.engine
        cid = session_id(self.name)
        session = engine.registry.get(cid)
        if session is None:
            session, _ = engine.registry.open(cid, False, NEVER_EXPIRES, 5, now)
        # Its own queue limits (the outbox bounds), the rest shared with every session.
        # A stream outbox: each message stored once until the remote acknowledges it
        # (core/session.py, SessionContext.stream_outbox).
        shared = session.context
        if shared.limits is not self.limits:
            session.context = SessionContext(shared.batch, self.limits, shared.metrics,
                                             shared.gate, shared.ready, shared.pager,
                                             stream_outbox=True)
        if after_restart:
            session.adopt_stored_in_flight(self.config.max_inflight)
        # What the bridge may read is the ACL's decision like any subscriber's (it goes
        # through Session.deliver): an ACL file grants it as user ``$bridge/<name>``.
        session.username = cid
        self.session = session
        wanted: dict[str, int] = {}
        for rule in self.rules:
            if rule.out:
                wanted[rule.local_filter] = max(rule.qos, wanted.get(rule.local_filter, 0))
        stale = [f for f in session.subscriptions if f not in wanted]
        if stale:
            engine.router.unsubscribe(session, stale)
        subs = [
            # No Local: what came in over this bridge never goes back out over it;
            # Retain As Published keeps the flag; no retained at subscribe (they are
            # sent after each connect instead).
            Subscription(f, qos, no_local=True, retain_as_published=True, retain_handling=2)
            for f, qos in wanted.items()
            if (entry := session.subscriptions.get(f)) is None or entry.qos != qos
            or not entry.no_local
        ]
        if subs:
            engine.router.subscribe(session, subs, None, 2, now)

    async def stop(self, end_remote_session: bool = False) -> None:
        """Disconnect (the session and its outbox stay). ``end_remote_session``: the
        bridge leaves the configuration; an MQTT 5.0 remote is asked to end our session
        there too (DISCONNECT with Session Expiry Interval 0, MQTT 5.0 §3.14.2.2.2), so
        a peer iotbroker stops counting on what this bridge pushed (bridge/peers.py)."""
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        link = self.link
        self._disconnected("bridge stopped", log_it=False)
        if link is not None and not link.closed:
            # Normal disconnection: the remote keeps our session, unless asked not to.
            link.send(Disconnect(properties=Properties(session_expiry_interval=0))
                      if end_remote_session and self.config.protocol == 5 else Disconnect())
            link.close()

    def remove(self) -> None:
        """The bridge left the configuration: end its session and outbox."""
        session = self.engine.registry.get(session_id(self.name))
        if session is not None:
            self.engine.registry.destroy(session)
        self.engine.retained.delete(state_topic(self.name))

    # ------------------------------------------------------------ reconnect
    async def _run(self) -> None:
        cfg = self.config
        failures = 0
        while True:
            started = self.loop.time()
            try:
                await self._connect_once()
                failures = 0
                assert self._lost is not None
                why = await self._lost
                self.last_error = why
                log.warning("bridge %r: connection lost: %s", self.name, why)
                if self.loop.time() - started < cfg.reconnect_delay:
                    failures = 1
            except ConnectFailed as exc:
                self.last_error = str(exc)  # each address's failure is logged already
                failures += 1
            except OSError as exc:
                self.last_error = os_error_text(exc)
                log.warning("bridge %r: %s", self.name, self.last_error)
                failures += 1
            self._disconnected(self.last_error, log_it=False)
            await asyncio.sleep(backoff(failures, cfg.reconnect_delay,
                                        cfg.reconnect_delay_max))

    def _addresses(self) -> list[tuple[str, int]]:
        order = address_order(self.config.address, self.config.round_robin,
                              self._next_address)
        self._next_address += 1
        return order

    async def _connect_once(self) -> None:
        """Try each address in order (fail-over); each failure is logged with its cause.
        On success the link is up and subscribed."""
        errors: list[str] = []
        for host, port in self._addresses():
            try:
                await self._connect_to(host, port)
                return
            except ConnectFailed as exc:
                why = str(exc)
            except OSError as exc:
                why = os_error_text(exc)
            except TimeoutError:
                why = f"timed out after {self.config.connect_timeout}s"
            why = why if why.startswith(f"{host}:{port}") else f"{host}:{port}: {why}"
            log.warning("bridge %r: %s", self.name, why)
            errors.append(why)
        raise ConnectFailed("; ".join(errors) or "no address")

    async def _connect_to(self, host: str, port: int) -> None:
        cfg = self.config
        loop = self.loop
        try:
            ctx = client_context(cfg.tls) if cfg.tls is not None else None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"TLS settings cannot be used: {exc}") from None
        private = cfg.protocol == 4 and cfg.try_private and not self._private_refused
        link = Link(loop, cfg.protocol, self._on_packets, lambda why: None,
                    self.engine.config.mqtt.max_packet_size)
        self._lost = loop.create_future()
        self._connack = loop.create_future()

        def lost(why: str) -> None:
            if self.link is link:
                self._link_lost(link, why)
            if self._connack is not None and not self._connack.done():
                self._connack.set_exception(ConnectFailed(f"closed before CONNACK: {why}"))
            if self._suback is not None and not self._suback.done():
                self._suback.set_exception(ConnectFailed(f"closed before SUBACK: {why}"))

        link.on_lost = lost
        link.on_writable = self._set_writable
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                await loop.create_connection(
                    lambda: link, host, port, ssl=ctx,
                    server_hostname=(cfg.tls.server_name or host)
                    if ctx is not None and cfg.tls is not None else None,
                )
        except ssl.SSLCertVerificationError as exc:
            raise ConnectFailed(f"TLS: certificate of {host}:{port} not accepted: "
                                f"{exc.verify_message} ({exc.reason})") from None
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS handshake with {host}:{port} failed: "
                                f"{exc.reason or exc}") from None
        self.link = link
        try:
            await self._handshake(link, host, port, private)
        except BaseException:
            # Failed, timed out or cancelled half-way: this link must not linger.
            if not link.closed:
                link.fail("connect attempt abandoned")
            raise

    async def _handshake(self, link: Link, host: str, port: int, private: bool) -> None:
        """CONNECT / CONNACK, SUBSCRIBE / SUBACK, then the session is attached."""
        cfg = self.config
        props = NO_PROPERTIES
        if cfg.protocol == 5:
            # Maximum Packet Size: what this broker accepts at all (MQTT 5.0 §3.1.2.11.4).
            props = Properties(session_expiry_interval=cfg.session_expiry or None,
                               maximum_packet_size=self.engine.config.mqtt.max_packet_size,
                               # Who we are and what we push (bridge/peers.py).
                               user_properties=hello(self.origin, self.rules)
                               if self.origin else ())
        data = encode_connect(Connect(
            client_id=self.client_id, protocol_version=cfg.protocol, clean_start=cfg.clean_start,
            keepalive=cfg.keepalive, username=cfg.username,
            password=cfg.password.encode() if cfg.password is not None else None,
            properties=props,
        ), private)
        link.queue(data)
        waiting = self._connack
        assert waiting is not None
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                connack = await waiting
        except TimeoutError:
            link.fail("no CONNACK")
            raise ConnectFailed(f"{host}:{port}: no CONNACK within "
                                f"{cfg.connect_timeout}s") from None
        except ConnectFailed:
            if private:
                # A broker that does not know mosquitto's bridge flag closes at once.
                self._private_refused = True
            raise
        if connack.reason_code:
            link.fail("refused")
            if private and connack.reason_code == 1:
                self._private_refused = True
                raise ConnectFailed(f"{host}:{port}: CONNACK 0x01 to the bridge protocol "
                                    "flag (try_private); retrying without it")
            raise ConnectFailed(f"{host}:{port}: CONNACK refused: "
                                f"{connack_text(connack.reason_code, cfg.protocol)}")
        await self._subscribe_remote(link, connack)
        self._up(link, connack, host, port)

    async def _subscribe_remote(self, link: Link, connack: ConnAck) -> None:
        v5 = self.config.protocol == 5
        filters: dict[str, int] = {}
        for rule in self.rules:
            if rule.inbound:
                filters[rule.remote_filter] = max(rule.qos, filters.get(rule.remote_filter, 0))
        if not filters:
            return
        if connack.session_present and not self.config.clean_start and v5:
            pass  # resubscribe anyway: the rules may have changed (idempotent)
        subs = [Subscription(f, q, no_local=v5, retain_as_published=v5) for f, q in
                filters.items()]
        self._suback = self.loop.create_future()
        pid = 1
        assert self.session is not None
        while pid in self.session.inflight:
            pid += 1
        link.send(Subscribe(pid, subs))
        async with asyncio.timeout(self.config.connect_timeout):
            suback = await self._suback
        refused = [s.topic_filter for s, code in zip(subs, suback.reason_codes, strict=False)
                   if code >= 0x80]
        if refused:
            log.warning("bridge %r: remote refused subscriptions %s", self.name, refused)

    def _up(self, link: Link, connack: ConnAck, host: str, port: int) -> None:
        """Connected and subscribed: attach the session (re-send what is in flight,
        then the outbox) and forward retained messages of the ``out`` rules once."""
        session = self.session
        assert session is not None
        if link.closed or self.link is not link:
            raise ConnectFailed(f"{host}:{port}: connection lost while subscribing")
        now = time.time()
        self.connected = True
        self.connects += 1
        self.last_error = ""
        if not connack.session_present:
            for pid in list(session.inbound_qos2):  # a new remote session: ids start over
                session.release_inbound_qos2(pid)
        # A remote that lost our session gets the unacknowledged messages as new ones:
        # a re-send with DUP=1 is only for a session it kept [MQTT-4.4.0-1].
        self._remote_kept_session = connack.session_present
        max_qos = connack.properties.maximum_qos
        self._remote_max_qos = 2 if max_qos is None else max_qos
        self._remote_max_packet = connack.properties.maximum_packet_size or 0
        self.remote_id = remote_id(connack.properties) if self.origin else ""
        window = min(self.config.max_inflight, connack.properties.receive_maximum or 65535)
        log.info("bridge %r: connected to %s:%d as %r (MQTT %s, session_present=%s, "
                 "%d queued, %d in flight)", self.name, host, port, self.client_id,
                 "5.0" if self.config.protocol == 5 else "3.1.1", connack.session_present,
                 session.queued_count, len(session.inflight))
        session.attach(self.client, window, now)
        # Retained messages of the out rules, once each (not those that came in here).
        retained: dict[str, Delivery] = {}
        for rule in self.rules:
            if not rule.out:
                continue
            for msg in self.engine.retained.match(rule.local_filter, now):
                if msg.origin == session.client_id or msg.topic.startswith("$"):
                    continue
                qos = min(rule.qos, msg.qos)
                seen = retained.get(msg.topic)
                if seen is None or seen.qos < qos:
                    retained[msg.topic] = Delivery(msg, qos, True)
        for delivery in retained.values():
            session.deliver(delivery, now)
        self._publish_state()
        # MQTT 5.0: the remote's Server Keep Alive replaces ours [MQTT-3.1.2-21].
        self._arm_keepalive(connack.properties.server_keep_alive or self.config.keepalive)
        self.flush()
        link.write()

    def _link_lost(self, link: Link, why: str) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(why)
        self._disconnected(why, log_it=False)

    def _disconnected(self, why: str, log_it: bool) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        self.link = None
        session = self.session
        if session is not None and session.attached_to is self.client:
            session.detach(time.time())
        if self.connected:
            self.connected = False
            self._publish_state()
            self.flush()
            if log_it:
                log.warning("bridge %r: disconnected: %s", self.name, why)

    def _set_writable(self, writable: bool) -> None:
        session = self.session
        if session is not None and session.attached_to is self.client:
            session.writable = writable
            if writable:
                session.pump(time.time())
                self.flush()

    def _arm_keepalive(self, keepalive: int) -> None:
        """PINGREQ when idle for Keep Alive (MQTT 3.1.1 [MQTT-3.1.2-23], 5.0
        [MQTT-3.1.2-20]); a remote silent for 1.5 × Keep Alive is dropped."""
        link = self.link

        def check() -> None:
            if self.link is not link or link is None or link.closed:
                return
            now = self.loop.time()
            if now - link.last_received > keepalive * 1.5:
                link.fail(f"no packet from the remote for {keepalive * 1.5:.0f}s (keepalive)")
                return
            # Checked every Keep Alive / 4: a PINGREQ after 3/4 of it without sending
            # keeps every gap below Keep Alive.
            if now - link.last_sent >= keepalive * 0.75:
                link.send(PingReq())
            self._keepalive = self.loop.call_later(keepalive / 4, check)

        self._keepalive = self.loop.call_later(keepalive / 4, check)

    def _publish_state(self) -> None:
        """``$SYS/broker/connection/<name>/state`` (retained, mosquitto's convention)."""
        now = time.time()
        self.engine.publish_own(Message(
            topic=state_topic(self.name), payload=b"1" if self.connected else b"0", qos=0,
            retain=True, properties=NO_PROPERTIES, created_at=now,
        ), now)

    # ------------------------------------------------------------- outbound
    def send_entries(self, entries: list[OutboxEntry],
                     now: float) -> list[tuple[int, Delivery, bool]]:
        """The session's outbox, onto the remote connection (``Outlet.send_outbox``).
        Returns ``(packet id, delivery, dup)`` of the PUBLISHes not sent (no rule maps them
        any more, or larger than the remote accepts): the session completes them.

        The forwarding hot path (issue 15, benchmarks/bridge_bench.py): PUBLISH bytes are
        encoded straight from the message (no ``Publish`` object), remote topics are
        cached per local topic, and a message without properties of its own gets the one
        pre-encoded property block (the bridge-origin mark, or none)."""
        link = self.link
        refused: list[tuple[int, Delivery, bool]] = []
        unacked: list[int] = []
        v5 = self.config.protocol == 5
        max_qos = self._remote_max_qos
        max_packet = self._remote_max_packet
        origin = self.origin
        empty_props = self._empty_props_bytes if v5 else None
        kept_session = self._remote_kept_session
        topics = self._out_topics
        out = link.out if link is not None else []
        queued = len(out)
        forwarded_qos0 = 0
        for entry in entries:
            if type(entry) is Delivery:
                delivery, pid, dup = entry, 0, False
            elif isinstance(entry, Sending):  # a new QoS 1/2 PUBLISH (its in-flight entry)
                delivery, pid, dup = entry.delivery, entry.packet_id, entry.dup
            else:
                maybe, pid, dup, _ = entry  # type: ignore[misc]
                if maybe is None:
                    if link is not None:
                        out.append(encode_packet(PubRel(pid), self.config.protocol))
                    continue
                delivery = maybe
            if link is None:
                continue  # in flight: re-sent after the next connect [MQTT-4.4.0-1]
            message = delivery.message
            local_topic = message.topic
            topic = topics.get(local_topic, _UNMAPPED)
            if topic is _UNMAPPED:
                topic = map_out(self.rules, local_topic)
                if len(topics) >= _TOPIC_CACHE:
                    topics.clear()
                topics[local_topic] = topic
            if topic is None:
                # No rule maps it any more (rules changed by SIGHUP): completed unsent
                # (a re-sent one too, or it would hold a slot of the window for ever).
                refused.append((pid, delivery, dup))
                continue
            props_bytes = empty_props
            if v5:
                props = message.properties
                remaining = message.remaining_expiry(now) if message.expires_at else None
                if remaining is not None or props is not NO_PROPERTIES:
                    if remaining is not None or props.subscription_identifiers or (
                            props.topic_alias):
                        props = replace(props, message_expiry_interval=remaining,
                                        subscription_identifiers=(), topic_alias=None)
                    if origin:  # bridge-origin mark: this broker has had it (origin.py)
                        props = stamp(props, origin)
                    props_bytes = encode_properties(props, _PUBLISH_PROPS)
            qos = delivery.qos
            if qos > max_qos:
                # Above the remote's Maximum QoS [MQTT-3.2.2-11]: sent at its maximum;
                # at QoS 0 nothing will acknowledge it, so it is complete once sent.
                qos = max_qos
                if qos == 0 and pid:
                    unacked.append(pid)
            data = encode_publish(topic, message.payload, qos, delivery.retain,
                                  dup and kept_session, pid if pid and qos else None,
                                  props_bytes)
            if max_packet and len(data) > max_packet:
                # Larger than the remote accepts: not sent, completed and counted as too
                # large (the rule a server applies to its clients, [MQTT-3.1.2-24]).
                log.warning("bridge %r: message on %r (%d bytes) is larger than the "
                            "remote's Maximum Packet Size %d: dropped", self.name,
                            message.topic, len(data), max_packet)
                refused.append((pid, delivery, dup))
                if pid in unacked:
                    unacked.remove(pid)
                continue
            out.append(data)
            if not pid:
                forwarded_qos0 += 1
        self.forwarded_out += forwarded_qos0
        if link is not None and len(out) > queued:
            link.schedule_write()
        for pid in unacked:
            self._complete(pid, now)
        return refused

    def _complete(self, packet_id: int, now: float) -> bool:
        """End the delivery ``packet_id`` whatever its QoS (the remote acknowledged a
        message we sent below its QoS, or nothing will acknowledge it)."""
        session = self.session
        if session is None:
            return False
        entry = session.inflight.get(packet_id)
        if entry is None:
            return False
        done = (session.on_puback(packet_id, now) if entry.delivery.qos == 1
                else session.on_pubrec(packet_id, _FAILURE, now))  # failure code: ended
        if done:
            self.forwarded_out += 1
        return done

    # -------------------------------------------------------------- inbound
    def _on_packets(self, packets: list[Packet]) -> None:
        now = time.time()
        session = self.session
        link = self.link
        forwarded = 0
        for packet in packets:
            if type(packet) is PubAck and session is not None and link is not None:
                # The common case first: the remote acknowledged a QoS 1 forward.
                if session.on_puback(packet.packet_id, now):
                    forwarded += 1
                else:  # a QoS 2 message sent at the remote's Maximum QoS 1
                    self._complete(packet.packet_id, now)
            elif isinstance(packet, ConnAck):
                if self._connack is not None and not self._connack.done():
                    self._connack.set_result(packet)
            elif session is None or link is None:
                continue
            elif isinstance(packet, Publish):
                self._on_publish(session, link, packet, now)
            elif isinstance(packet, PubRec):
                if packet.reason_code >= _FAILURE:
                    log.info("bridge %r: remote refused message %d: PUBREC 0x%02x",
                             self.name, packet.packet_id, packet.reason_code)
                if not session.on_pubrec(packet.packet_id, packet.reason_code, now) and (
                        packet.reason_code < _FAILURE):
                    link.send(PubRel(packet.packet_id))
            elif isinstance(packet, PubComp):
                if session.on_pubcomp(packet.packet_id, now):
                    self.forwarded_out += 1
            elif isinstance(packet, PubRel):
                session.release_inbound_qos2(packet.packet_id)
                link.send(PubComp(packet.packet_id))
            elif isinstance(packet, SubAck):
                if self._suback is not None and not self._suback.done():
                    self._suback.set_result(packet)
            elif isinstance(packet, Disconnect):
                link.fail(f"remote sent DISCONNECT 0x{packet.reason_code:02x}"
                          + (f" ({packet.properties.reason_string})"
                             if packet.properties.reason_string else ""))
                return
        self.forwarded_out += forwarded
        # Commit what this turn changed, then the acknowledgements may leave.
        self.flush()
        if link is not None:
            link.write()

    def _on_publish(self, session: Session, link: Link, packet: Publish, now: float) -> None:
        qos = packet.qos
        pid = packet.packet_id or 0
        topic = map_in(self.rules, packet.topic)
        if qos == 2 and not session.hold_inbound_qos2(pid):
            link.send(PubRec(pid))  # a re-sent QoS 2 PUBLISH: not routed again
            return
        origin = self.origin
        if origin and crossed(packet.properties, origin):
            # It has been in this broker already (a cycle of bridges): not routed again.
            topic = None
            if self.manager is not None:
                self.manager.count_looped(self.remote_id, self)
        elif topic is not None and self.remote_id and self.manager is not None and (
                self.manager.peers.pushes(self.remote_id, packet.topic, topic,
                                          self._peer_session_exists)):
            # The remote's own bridge pushes this message here (its outbox, durable):
            # this pulled copy would be the second one (bridge/peers.py).
            topic = None
            self.duplicates += 1
        if topic is not None and not is_broker_topic(topic):
            props = packet.properties
            if origin:
                props = stamp(props, origin)
            expiry = props.message_expiry_interval
            if self.config.protocol == 5 and (props.topic_alias or props.subscription_identifiers):
                props = replace(props, topic_alias=None, subscription_identifiers=())
            self.engine.publish_own(Message(
                topic=topic, payload=packet.payload, qos=qos, retain=packet.retain,
                properties=props if self.config.protocol == 5 else NO_PROPERTIES,
                created_at=now, expires_at=None if expiry is None else now + expiry,
                origin=session.client_id,
            ), now)
            self.forwarded_in += 1
        if qos == 1:
            link.send(PubAck(pid))
        elif qos == 2:
            link.send(PubRec(pid))

    def _peer_session_exists(self, client_id: str) -> bool:
        """The session of a peer's bridge on this broker still exists (it ends when
        the peer removes its bridge)."""
        return self.engine.registry.get(client_id) is not None

    # --------------------------------------------------------------- status
    def status(self) -> dict[str, object]:
        session = self.session
        return {
            "name": self.name,
            "state": 1 if self.connected else 0,
            "queued_messages": 0 if session is None else session.queued_count,
            "queued_bytes": 0 if session is None else session.queued_bytes,
            "inflight": 0 if session is None else len(session.inflight),
            "forwarded_out": self.forwarded_out,
            "forwarded_in": self.forwarded_in,
            "dropped": self.dropped,
            "looped": self.looped,
            "duplicates": self.duplicates,
            "connects": self.connects,
            "last_error": self.last_error,
        }
