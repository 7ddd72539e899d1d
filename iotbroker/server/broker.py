"""The composition root: the only module that knows every package.

It owns the event loop side of the broker: listeners, the per-turn flush (storage
batch committed, then one write per connection), timers, and the handling of each
validated packet, which it hands to ``core`` (routing, sessions) after asking
``auth``. MQTT 3.1.1 §3 / MQTT 5.0 §3 (per-packet behaviour), §4 (operational
behaviour).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from iotbroker import __version__, build
from iotbroker.codec.enums import PacketType
from iotbroker.codec.packets import (
    NO_PROPERTIES,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from iotbroker.config import BrokerConfig
from iotbroker.core.retained import RetainedStore
from iotbroker.core.router import Router
from iotbroker.core.session import Session, SessionLimits
from iotbroker.core.sessions import SessionRegistry
from iotbroker.core.subscriptions import SubscriptionTrie
from iotbroker.core.topics import (
    has_wildcard,
    is_broker_topic,
    parse_shared,
    validate_topic_name,
)
from iotbroker.errors import MalformedPacket, MqttError, ProtocolViolation, StorageError
from iotbroker.message import NEVER_EXPIRES, Message
from iotbroker.metrics import Metrics
from iotbroker.protocol.connection import ConnectionState
from iotbroker.server.auth_service import AuthService
from iotbroker.server.enhanced_auth import EnhancedAuth
from iotbroker.server.exposure import warn_open_anonymous
from iotbroker.server.listeners import Listener, start_listener
from iotbroker.server.logsetup import bind_loop, log_connection, setup_logging
from iotbroker.server.metrics_http import MetricsServer
from iotbroker.server.ratelimit import TokenBucket
from iotbroker.server.sys_topics import SysTopics
from iotbroker.server.transport import ClientProtocol
from iotbroker.storage.base import ChangeBatch, QueuedRecord, Store

log = logging.getLogger("iotbroker.broker")

#: Allocations between young-generation collections (CPython's default is 700).
GC_GEN0_THRESHOLD = 20_000

# MQTT 3.1.1 CONNACK return codes (§3.2.2.3) for the v5 reason codes we refuse with.
_V3_CONNACK = {
    0x84: 0x01,  # unsupported protocol version
    0x85: 0x02,  # client identifier not valid
    0x86: 0x04,  # bad user name or password
    0x87: 0x05,  # not authorized
    0x88: 0x03,  # server unavailable
    0x89: 0x03,  # server busy
    0x8C: 0x04,  # bad authentication method
    0x9C: 0x03,  # use another server
    0x9D: 0x03,  # server moved
}

#: What a connection may send before its CONNACK (AUTH only with enhanced auth).
_BEFORE_CONNACK = frozenset({PacketType.CONNECT, PacketType.AUTH})


class Broker:
    """One broker process: sessions, routing, storage and the connections."""

    def __init__(self, config: BrokerConfig, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.store = store
        self.metrics = Metrics()
        self.batch = ChangeBatch()
        self.trie = SubscriptionTrie()
        self.retained = RetainedStore()
        mqtt = config.mqtt
        limits = SessionLimits(
            max_queued_messages=mqtt.max_queued_messages,
            max_queued_bytes=mqtt.max_queued_bytes,
            drop_oldest=mqtt.queue_overflow == "drop-oldest",
        )
        self.registry = SessionRegistry(self.trie, self.batch, limits, self.metrics)
        self.registry.pager = self
        self.auth = AuthService(config.auth)
        self.enhanced_auth = EnhancedAuth(self.auth, self.metrics)
        self.router = Router(
            self.registry,
            self.trie,
            self.retained,
            self.batch,
            self.metrics,
            shared_strategy=mqtt.shared_subscription_strategy,
            max_retained=mqtt.max_retained_messages,
        )
        # Every delivery to a session asks this one decision (issue 12).
        self.registry.gate.check = self.auth.receive_check()
        self._handlers = self._build_handlers()
        self.clients: dict[str, ClientProtocol] = {}
        self.connections: set[ClientProtocol] = set()
        self._dirty: list[ClientProtocol] = []
        #: Storage commit timing, for metrics.
        self.storage_write_seconds = 0.0
        self._storage_write_max = 0.0
        self._storage_batch_max = 0
        #: Connections that delivered input since the last flush (backpressure).
        self.active_readers: list[ClientProtocol] = []
        #: Slow consumer -> the publishers paused because of it.
        self._throttled: dict[ClientProtocol, set[ClientProtocol]] = {}
        self._drain_timers: dict[ClientProtocol, asyncio.TimerHandle] = {}
        self._flush_scheduled = False
        self._servers: list[Listener] = []
        self.sys_topics: SysTopics | None = None
        self.metrics_server: MetricsServer | None = None
        self._listener_configs = {lc.name: lc for lc in config.listeners}
        self._per_listener: dict[str, int] = {}
        rate = config.limits.connect_rate
        self._connect_bucket = TokenBucket(rate, loop.time()) if rate else None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.started_at = time.time()
        self.bound: list[tuple[str, int]] = []

    # ------------------------------------------------------------------ time
    @staticmethod
    def now() -> float:
        """Wall-clock time used for expiry (it must mean the same after a restart)."""
        return time.time()

    # ------------------------------------------------------------- lifecycle
    def restore(self) -> None:
        started = time.perf_counter()
        # Queued messages stay on disk (an index in memory) until their session
        # comes back: offline sessions cost bounded memory (issue 7).
        snapshot = self.store.load(queued_bodies=False)
        now = self.now()
        for message in snapshot.retained:
            if message.expired(now):
                self.batch.delete_retained(message.topic)
            else:
                self.retained.set(message)
        self.registry.restore(snapshot, now)
        self._run_core_timers()
        self.flush()
        log.info(
            "restored %d sessions, %d subscriptions, %d queued/in-flight messages, "
            "%d retained messages in %.3fs",
            len(self.registry),
            len(self.trie),
            self.registry.deliveries_pending(),
            len(self.retained),
            time.perf_counter() - started,
        )

    async def start(self) -> None:
        self.restore()
        for listener in self.config.listeners:
            server = await start_listener(self, listener)  # logs "listening on ..."
            self._servers.append(server)
            self.bound.extend(server.addresses)
        warn_open_anonymous(self.config, [(s.config, s.addresses) for s in self._servers])
        if self.config.metrics.enabled:
            self.metrics_server = MetricsServer(self)
            await self.metrics_server.start()
        if self.config.sys_topics.enabled:
            self.sys_topics = SysTopics(self)
            self.sys_topics.start()
        self._reschedule_core_timer()

    async def stop(self) -> None:
        """Shut down: stop listening, tell v5 clients 0x8B, flush storage."""
        if self.sys_topics is not None:
            self.sys_topics.stop()
        if self.metrics_server is not None:
            self.metrics_server.close()
        for server in self._servers:
            server.close()
        for proto in list(self.connections):
            if proto.conn.connected and proto.conn.protocol_version == 5:
                proto.conn.send_packet(Disconnect(reason_code=0x8B))
            proto.clean_disconnect = True  # a shutdown is not the client's fault: no will
            proto.close()
        self.flush()
        for server in self._servers:
            await server.wait_closed()
        if self.metrics_server is not None:
            await self.metrics_server.wait_closed()
        await asyncio.sleep(0)
        for proto in list(self.connections):
            proto.abort()
        self.flush()
        self.auth.close()
        self.store.close()
        log.info("stopped")

    def reload(self, read_config: Callable[[], BrokerConfig]) -> None:
        """SIGHUP: re-read the configuration; apply what can change live (password file,
        ACL, log levels), log the rest as needing a restart. Connected clients stay."""
        try:
            new = read_config()
            self.auth.config = new.auth
            self.auth.reload()
        except Exception as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        # Queued, in-flight and retained deliveries follow the new rules from now on.
        self.registry.gate.check = self.auth.receive_check()
        setup_logging(new.logging)
        applied = ["auth (password file, ACL)", "logging"]
        pending = [
            name
            for name in ("listeners", "mqtt", "storage", "sys_topics", "metrics", "limits", "loop")
            if getattr(new, name) != getattr(self.config, name)
        ]
        self.config = replace(self.config, auth=new.auth, logging=new.logging)
        log.info("configuration reloaded from %s: applied %s", new.source, ", ".join(applied))
        if pending:
            log.warning("changed settings that need a restart: %s", ", ".join(pending))

    def take_storage_write_max(self) -> float:
        """Slowest commit since the last call (for the metrics endpoint)."""
        value, self._storage_write_max = self._storage_write_max, 0.0
        return value

    def take_storage_batch_max(self) -> int:
        value, self._storage_batch_max = self._storage_batch_max, 0
        return value

    def load_queued(self, client_id: str) -> list[QueuedRecord]:
        """The :class:`~iotbroker.core.session.Pager` of every session: commit what
        this turn changed, then read the session's queued messages from the store."""
        if self.batch:
            self._commit()
        return self.store.load_queued(client_id)

    def _commit(self) -> None:
        """Apply the turn's storage batch (one WriteBatch) and clear it; timed for
        metrics. Raises StorageError, leaving the batch as it was."""
        batch = self.batch
        started = time.perf_counter()
        self.store.apply(batch)
        took = time.perf_counter() - started
        self.metrics.storage_batches += 1
        self.metrics.storage_changes += len(batch)
        self.storage_write_seconds += took
        self._storage_write_max = max(self._storage_write_max, took)
        self._storage_batch_max = max(self._storage_batch_max, len(batch))
        batch.clear()

    # ------------------------------------------------------------ the flush
    def output_pending(self, proto: ClientProtocol) -> None:
        self._dirty.append(proto)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Commit the turn's storage changes, then write each connection's output once.

        No acknowledgement leaves before the changes it acknowledges are in the store
        (design.md, "A QoS 1 PUBLISH").
        """
        self._flush_scheduled = False
        batch = self.batch
        dirty = self._dirty
        self._dirty = []
        readers = self.active_readers
        if readers:
            self.active_readers = []
        if batch:
            try:
                self._commit()
            except StorageError as exc:
                log.error(
                    "storage write failed, closing %d connections without acks: %s", len(dirty), exc
                )
                batch.clear()
                for proto in dirty:
                    proto.conn.data_to_send()
                    proto.abort()
                return
        for proto in dirty:
            proto.write_pending()
            if proto.close_after_flush and proto.transport is not None:
                proto.transport.close()
        if self._throttled and readers:
            # A consumer is congested: slow down the clients that published this turn
            # (not bystanders that only pinged, acknowledged or connected).
            for reader in readers:
                if not reader.published_this_turn:
                    continue
                reader.published_this_turn = False
                if reader in self._throttled or reader.close_after_flush:
                    continue
                for waiting in self._throttled.values():
                    waiting.add(reader)
                reader.pause_reading()
        else:
            for reader in readers:
                reader.published_this_turn = False

    # ---------------------------------------------------------- backpressure
    def writer_paused(self, proto: ClientProtocol) -> None:
        """``proto`` stopped draining; a drain timeout bounds how long it may stall."""
        if proto in self._throttled:
            return
        self._throttled[proto] = set()
        timeout = self.config.limits.drain_timeout
        if timeout > 0:
            self._drain_timers[proto] = self.loop.call_later(timeout, self._drain_expired, proto)

    def writer_resumed(self, proto: ClientProtocol) -> None:
        waiting = self._throttled.pop(proto, None)
        timer = self._drain_timers.pop(proto, None)
        if timer is not None:
            timer.cancel()
        if not waiting:
            return
        still = set().union(*self._throttled.values()) if self._throttled else set()
        for reader in waiting:
            if reader not in still:
                reader.resume_reading()

    def _drain_expired(self, proto: ClientProtocol) -> None:
        self._drain_timers.pop(proto, None)
        if proto not in self._throttled:
            return
        self.metrics.slow_consumers_disconnected += 1
        log.warning(
            "client %r (%s) did not read for %ss: disconnecting a stuck consumer",
            proto.client_id,
            proto.peer,
            self.config.limits.drain_timeout,
            extra=proto.log_extra(),
        )
        proto.abort()

    # ---------------------------------------------------------- connections
    def connection_made(self, proto: ClientProtocol) -> bool:
        """Admit a new socket, or close it at once when a connection limit is hit."""
        limits = self.config.limits
        why = None
        if limits.max_connections and len(self.connections) >= limits.max_connections:
            why = f"limits.max_connections ({limits.max_connections}) reached"
        else:
            listener = self._listener_configs.get(proto.listener)
            count = self._per_listener.get(proto.listener, 0)
            if (
                listener is not None
                and listener.max_connections
                and count >= listener.max_connections
            ):
                why = f"listener {proto.listener!r} max_connections reached"
            elif self._connect_bucket is not None and not self._connect_bucket.try_take(
                self.loop.time()
            ):
                why = f"limits.connect_rate ({limits.connect_rate}/s) exceeded"
        if why is not None:
            self.metrics.connections_rejected += 1
            self.metrics.limit_hits += 1
            log.warning("refusing connection from %s: %s", proto.peer, why, extra=proto.log_extra())
            return False
        self.connections.add(proto)
        self._per_listener[proto.listener] = self._per_listener.get(proto.listener, 0) + 1
        self.metrics.connections_accepted += 1
        if limits.publish_rate_per_client:
            proto.publish_bucket = TokenBucket(limits.publish_rate_per_client, self.loop.time())
        return True

    def connection_lost(self, proto: ClientProtocol, exc: Exception | None) -> None:
        if proto in self.connections:
            self.connections.discard(proto)
            self._per_listener[proto.listener] -= 1
        if proto in self._throttled:
            self.writer_resumed(proto)
        for waiting in self._throttled.values():
            waiting.discard(proto)
        self.enhanced_auth.forget(proto)
        session = proto.session
        if session is None:
            return
        proto.session = None
        self.metrics.clients_connected -= 1
        now = self.now()
        will = None if proto.clean_disconnect else proto.will
        if proto.taken_over:
            # This connection's will goes out now unless it has a Will Delay and the new
            # connection resumed the session (that cancels it [MQTT-3.1.3-9]); a Clean
            # Start ended the session, which sends a delayed will at once (§3.1.3.2.2).
            log_connection(log, logging.INFO, proto, "client %r (%s) closed after takeover",
                           proto.client_id, proto.peer)
            if will is not None and (
                not will.properties.will_delay_interval or proto.session_ended_by_takeover
            ):
                self._publish_will(will, session.client_id, session.username, now)
            return
        if self.clients.get(proto.client_id) is proto:
            del self.clients[proto.client_id]
        if not proto.clean_disconnect and log.isEnabledFor(logging.INFO):
            log_connection(log, logging.INFO, proto, "client %r (%s) connection lost%s",
                           proto.client_id, proto.peer, f": {exc}" if exc else "")
        self.router.redistribute(session, now)
        due = self.registry.close(session, now, will)
        if due is not None:
            self._publish_will(due, session.client_id, session.username, now)
        self._reschedule_core_timer()
        self.flush()

    def peer_error(self, proto: ClientProtocol, exc: MqttError) -> None:
        """A client broke a rule: one log line, the right reason code, close."""
        if isinstance(exc, MalformedPacket):
            self.metrics.malformed_packets += 1
        else:
            self.metrics.protocol_errors += 1
        log.warning(
            "closing %s (%r): %s", proto.peer, proto.client_id or "-", exc, extra=proto.log_extra()
        )
        conn = proto.conn
        if conn.connected:
            if conn.protocol_version == 5:
                reason = Properties(reason_string=exc.message[:200])
                conn.send_packet(Disconnect(exc.reason_code, reason))
        elif conn.state is ConnectionState.AUTHENTICATING or isinstance(exc, MalformedPacket):
            requested = getattr(exc, "protocol_level", None)
            if exc.reason_code == 0x84:
                # [MQTT-3.1.2-2]: CONNACK 0x01 (3.1.1) / 0x84 (5.0), then close.
                version = 5 if requested == 5 else 4
                conn.protocol_version = version
                code = 0x84 if version == 5 else 0x01
                conn.send_packet(ConnAck(False, code))
            elif conn.protocol_version == 5 and proto.session is None:
                conn.send_packet(ConnAck(False, exc.reason_code))
        proto.close()

    def keepalive_expired(self, proto: ClientProtocol) -> None:
        """No packet for 1.5 × Keep Alive [MQTT-3.1.2-24]: close; the will goes out."""
        self.metrics.keepalive_timeouts += 1
        log.info(
            "client %r (%s) keepalive timeout (%ss)",
            proto.client_id,
            proto.peer,
            proto.conn.keepalive,
            extra=proto.log_extra(),
        )
        if proto.conn.protocol_version == 5:
            proto.conn.send_packet(Disconnect(0x8D))
        proto.close()

    # ------------------------------------------------------------- packets
    def handle_packet(self, proto: ClientProtocol, packet: Packet) -> None:
        """Dispatch one validated packet to its handler (a table, not an if-chain)."""
        if proto.session is None and packet.TYPE not in _BEFORE_CONNACK:
            self.enhanced_auth.before_connack(proto, packet)  # [MQTT-3.1.2-30]
            return
        self._handlers[packet.TYPE](proto, packet)

    def _build_handlers(self) -> dict[PacketType, Callable[[ClientProtocol, Any], None]]:
        return {
            PacketType.PUBLISH: self.on_publish,
            PacketType.PUBACK: self.on_puback,
            PacketType.PUBREC: self.on_pubrec,
            PacketType.PUBREL: self.on_pubrel,
            PacketType.PUBCOMP: self.on_pubcomp,
            PacketType.SUBSCRIBE: self.on_subscribe,
            PacketType.UNSUBSCRIBE: self.on_unsubscribe,
            PacketType.PINGREQ: self.on_pingreq,
            PacketType.DISCONNECT: self.on_disconnect,
            PacketType.CONNECT: self.on_connect,
            PacketType.AUTH: self.on_auth,
        }

    def on_puback(self, proto: ClientProtocol, packet: PubAck) -> None:
        self._session(proto).on_puback(packet.packet_id, self.now())

    def on_pubrec(self, proto: ClientProtocol, packet: PubRec) -> None:
        if not self._session(proto).on_pubrec(packet.packet_id, packet.reason_code, self.now()):
            # Unknown id: v5 0x92 Packet Identifier not found; 3.1.1 PUBREL anyway.
            code = 0x92 if proto.conn.protocol_version == 5 else 0
            if packet.reason_code < 0x80:
                proto.conn.send_packet(PubRel(packet.packet_id, code))

    def on_pubrel(self, proto: ClientProtocol, packet: PubRel) -> None:
        held = self._session(proto).release_inbound_qos2(packet.packet_id)
        # PUBCOMP even for an unknown id (MQTT 3.1.1 §4.3.3); v5 says 0x92.
        code = 0x92 if not held and proto.conn.protocol_version == 5 else 0
        proto.conn.send_packet(PubComp(packet.packet_id, code))

    def on_pubcomp(self, proto: ClientProtocol, packet: PubComp) -> None:
        self._session(proto).on_pubcomp(packet.packet_id, self.now())

    def on_pingreq(self, proto: ClientProtocol, packet: PingReq) -> None:
        proto.conn.send_packet(PingResp())  # [MQTT-3.12.4-1]

    def on_auth(self, proto: ClientProtocol, packet: Auth) -> None:
        pending = self.enhanced_auth.on_auth(proto, packet)  # MQTT 5.0 §4.12
        if pending is not None:  # the exchange ended: accept or refuse the CONNECT
            self.on_connect(proto, pending)

    def _session(self, proto: ClientProtocol) -> Session:
        session = proto.session
        if session is None:
            raise ProtocolViolation("packet before CONNACK", spec_ref="MQTT-3.1.0-1")
        return session

    # --------------------------------------------------------------- CONNECT
    def _refuse(
        self,
        proto: ClientProtocol,
        packet: Connect,
        reason: int,
        why: str,
        properties: Properties = NO_PROPERTIES,
    ) -> None:
        """Refuse a CONNECT with a CONNACK code, then close [MQTT-3.2.2-5] (v5 -7)."""
        self.metrics.connections_rejected += 1
        log.info(
            "refused CONNECT from %s (client id %r): %s",
            proto.peer,
            packet.client_id,
            why,
            extra=proto.log_extra(),
        )
        conn = proto.conn
        if packet.protocol_version == 5:
            conn.send_packet(ConnAck(False, reason, properties))
        elif reason in _V3_CONNACK:
            conn.send_packet(ConnAck(False, _V3_CONNACK[reason]))
        # else: no 3.1.1 return code fits: close without CONNACK [MQTT-3.2.2-6].
        proto.close()

    def on_connect(self, proto: ClientProtocol, packet: Connect) -> None:
        cfg = self.config.mqtt
        conn = proto.conn
        v5 = packet.protocol_version == 5
        props = packet.properties
        client_id = packet.client_id
        assigned: str | None = None
        if not client_id:
            if not cfg.allow_zero_length_client_id or (not v5 and not packet.clean_start):
                # [MQTT-3.1.3-8] (3.1.1): zero-length id needs Clean Session = 1.
                self._refuse(proto, packet, 0x85, "zero-length client id not allowed")
                return
            client_id = assigned = f"auto-{uuid.uuid4().hex}"  # [MQTT-3.1.3-6]
        elif len(client_id) > cfg.max_client_id_length:
            self._refuse(proto, packet, 0x85, "client id too long")
            return
        enhanced = None
        if cfg.server_reference:
            # This server has moved: MQTT 5.0 CONNACK 0x9D with Server Reference (§4.11).
            self._refuse(
                proto,
                packet,
                0x9D,
                f"redirected to {cfg.server_reference}",
                Properties(server_reference=cfg.server_reference),
            )
            return
        if v5 and props.authentication_method is not None:  # §4.12
            enhanced = self.enhanced_auth.on_connect(proto, packet, client_id)
            if enhanced is None:
                return  # AUTH 0x18 sent; on_auth resumes this CONNECT when it ends
            if enhanced.reason_code:
                self._refuse(proto, packet, enhanced.reason_code, enhanced.reason)
                return
        if proto.cert_username is not None or enhanced is not None:
            decision = None
        elif proto.password_checked:
            decision = proto.password_decision
            proto.password_checked = False
        elif self.auth.is_slow(packet.username):
            self._check_password_off_loop(proto, packet, client_id)
            return
        else:
            decision = self.auth.authenticate(client_id, packet.username, packet.password)
        if decision is not None:
            self.metrics.auth_failures += 1
            self._refuse(proto, packet, decision, "authentication failed")
            return
        username = (
            enhanced.username
            if enhanced is not None
            else packet.username
            if proto.cert_username is None
            else proto.cert_username
        )
        will = packet.will
        if will is not None:
            if will.qos > cfg.maximum_qos:
                self._refuse(proto, packet, 0x9B, "will QoS not supported")  # [MQTT-3.2.2-12]
                return
            if will.retain and not cfg.retain_available:
                self._refuse(proto, packet, 0x9A, "retained will not supported")
                return
            try:
                validate_topic_name(will.topic, packet.protocol_version)
                response_topic = will.properties.response_topic
                if response_topic is not None and has_wildcard(response_topic):
                    raise ProtocolViolation(
                        "will Response Topic contains a wildcard", spec_ref="MQTT-3.3.2-14"
                    )
            except ProtocolViolation as exc:
                self._refuse(proto, packet, exc.reason_code, f"will topic: {exc}")
                return
            if not self._may_publish_will(will, client_id, username):
                if v5:  # MQTT 5.0 can say why: CONNACK 0x87 Not authorized
                    self._refuse(proto, packet, 0x87, f"will topic {will.topic!r} not authorised")
                    return
                # MQTT 3.1.1: accepted, without its will (docs/auth.md, "Wills").
                log.warning(
                    "client %r (user %r): will topic %r not authorised; connected without "
                    "its will (MQTT 3.1.1 cannot be told)",
                    client_id, username, will.topic, extra=proto.log_extra(),
                )
                will = None
        now = self.now()
        # Session takeover [MQTT-3.1.4-2] (v5 [MQTT-3.1.4-3]: DISCONNECT 0x8E).
        old = self.clients.pop(client_id, None)
        if old is not None and old is not proto:
            self.metrics.session_takeovers += 1
            log.info(
                "client %r taken over: new connection from %s closes %s",
                client_id,
                proto.peer,
                old.peer,
                extra=old.log_extra(),
            )
            old.taken_over = True
            old.session_ended_by_takeover = packet.clean_start
            old_session = old.session
            if old_session is not None and old_session.outlet is old.conn:
                old_session.detach(now)
            if old.conn.protocol_version == 5 and old.conn.connected:
                old.conn.send_packet(Disconnect(0x8E))
            old.close()
        # Session expiry: v5 from the property; 3.1.1 from Clean Session.
        if v5:
            expiry = props.session_expiry_interval or 0
        elif packet.clean_start:
            expiry = 0
        else:
            v3 = cfg.persistent_session_expiry_v311
            expiry = NEVER_EXPIRES if v3 is None else v3
        granted_expiry = min(expiry, cfg.max_session_expiry)
        session, present = self.registry.open(
            client_id, packet.clean_start, granted_expiry, packet.protocol_version, now
        )
        session.username = username
        # Keep alive: the server may impose a lower one (v5 Server Keep Alive).
        keepalive = packet.keepalive
        server_keepalive: int | None = None
        if (keepalive == 0 or keepalive > cfg.max_keepalive) and cfg.max_keepalive < 65535:
            # Lowered to max_keepalive; MQTT 5.0 clients are told (Server Keep Alive),
            # MQTT 3.1.1 has no way to say it.
            keepalive = cfg.max_keepalive
            if v5:
                server_keepalive = keepalive
        conn.accept(
            keepalive=keepalive,
            client_receive_maximum=props.receive_maximum if v5 else None,
            client_max_packet_size=props.maximum_packet_size if v5 else None,
            client_topic_alias_maximum=props.topic_alias_maximum if v5 else None,
            outbound_aliases=cfg.outbound_topic_aliases,
            request_problem_information=props.request_problem_information != 0,
        )
        connack_props = NO_PROPERTIES  # MQTT 3.1.1 CONNACK has none
        if v5:
            connack_props = self._connack_properties(
                packet, assigned, granted_expiry, expiry, server_keepalive
            )
            if enhanced is not None:  # [MQTT-4.12.0-5]
                connack_props.authentication_method = props.authentication_method
                connack_props.authentication_data = enhanced.data
        conn.send_packet(ConnAck(present, 0, connack_props))
        proto.session = session
        proto.client_id = client_id
        self.clients[client_id] = proto
        self.metrics.clients_connected += 1
        self.metrics.clients_maximum = max(
            self.metrics.clients_maximum, self.metrics.clients_connected
        )
        proto.will = will
        window = min(props.receive_maximum or 65535, cfg.max_inflight) if v5 else cfg.max_inflight
        session.attach(conn, window, now)
        proto.start_keepalive()
        if not log.isEnabledFor(logging.INFO):
            return  # the arguments below cost a peer-name lookup per connect
        log_connection(
            log,
            logging.INFO,
            proto,
            "client %r connected from %s (MQTT %s, clean_start=%s, keepalive=%s, "
            "session_present=%s, expiry=%s, listener %r)",
            client_id,
            proto.peer,
            "5.0" if v5 else "3.1.1",
            packet.clean_start,
            keepalive,
            present,
            granted_expiry,
            proto.listener,
        )

    def _check_password_off_loop(
        self, proto: ClientProtocol, packet: Connect, client_id: str
    ) -> None:
        """Hash the password in a worker thread (PBKDF2 takes ~0.1 s; the loop must
        not stall); the CONNECT and what follows it wait, then resume."""
        proto.deferred = True
        future = self.auth.authenticate_in_thread(client_id, packet.username, packet.password)

        def decided(_: object) -> None:
            if proto not in self.connections or proto.close_after_flush:
                return
            try:
                decision = future.result()
            except Exception:
                log.exception("password check failed for %s", proto.peer)
                decision = 0x80
            proto.password_checked = True
            proto.password_decision = decision
            proto.deferred = False
            try:
                self.on_connect(proto, packet)
            except MqttError as exc:
                self.peer_error(proto, exc)
                return
            proto.resume_deferred()

        def hand_back(f: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self.loop.call_soon_threadsafe(decided, f)

        future.add_done_callback(hand_back)

    def _connack_properties(
        self,
        packet: Connect,
        assigned: str | None,
        granted_expiry: int,
        requested_expiry: int,
        server_keepalive: int | None,
    ) -> Properties:
        """CONNACK properties tell the truth about this server (MQTT 5.0 §3.2.2.3)."""
        cfg = self.config.mqtt
        props = Properties(
            receive_maximum=cfg.receive_maximum if cfg.receive_maximum < 65535 else None,
            maximum_qos=cfg.maximum_qos if cfg.maximum_qos < 2 else None,
            retain_available=None if cfg.retain_available else 0,
            maximum_packet_size=cfg.max_packet_size,
            topic_alias_maximum=cfg.topic_alias_maximum or None,
            wildcard_subscription_available=None if cfg.wildcard_subscriptions else 0,
            subscription_identifier_available=None if cfg.subscription_identifiers else 0,
            shared_subscription_available=None if cfg.shared_subscriptions else 0,
            server_keep_alive=server_keepalive,
            assigned_client_identifier=assigned,
            session_expiry_interval=granted_expiry if granted_expiry != requested_expiry else None,
        )
        if packet.properties.request_response_information and cfg.response_information_prefix:
            client = assigned or packet.client_id
            props.response_information = f"{cfg.response_information_prefix}{client}"
        return props

    # --------------------------------------------------------------- PUBLISH
    def on_publish(self, proto: ClientProtocol, packet: Publish) -> None:
        session = self._session(proto)
        cfg = self.config.mqtt
        conn = proto.conn
        v5 = conn.protocol_version == 5
        qos = packet.qos
        metrics = self.metrics
        metrics.publish_received += 1
        metrics.publish_received_qos[qos] += 1
        if qos > cfg.maximum_qos:
            raise ProtocolViolation(
                f"QoS {qos} above Maximum QoS {cfg.maximum_qos}",
                reason_code=0x9B,
                spec_ref="MQTT-3.2.2-11",
            )
        if packet.retain and not cfg.retain_available:
            raise ProtocolViolation(
                "RETAIN not supported", reason_code=0x9A, spec_ref="MQTT-3.2.2-14"
            )
        topic = packet.topic
        if topic.count("/") >= cfg.max_topic_levels or (
            cfg.max_topic_length < 65535 and len(topic.encode()) > cfg.max_topic_length
        ):
            self.metrics.topic_limit_refusals += 1
            self._ack(proto, packet, 0x90)
            return
        if is_broker_topic(topic):
            # $SYS is the broker's own, whatever the ACL says: v5 0x87, 3.1.1 acked and
            # dropped (it has no way to refuse a PUBLISH).
            metrics.sys_publish_refused += 1
            log.info("client %r (user %r) may not publish to the broker's topic %r",
                     session.client_id, session.username, topic)
            self._ack(proto, packet, 0x87)
            return
        if not self.auth.may_publish(session.client_id, session.username, topic):
            metrics.acl_denials += 1
            log.info("client %r (user %r) not authorised to publish to %r",
                     session.client_id, session.username, topic)
            self._ack(proto, packet, 0x87)
            return
        if qos == 2 and not session.hold_inbound_qos2(packet.packet_id or 0):
            # Duplicate of a held QoS 2 message: acknowledge, do not route again
            # [MQTT-4.3.3-2] (method B of MQTT 3.1.1 §4.3.3, MQTT 5.0 §4.3.3).
            conn.send_packet(PubRec(packet.packet_id or 0))
            return
        now = self.now()
        props = packet.properties
        expiry = props.message_expiry_interval
        message = Message(
            topic=topic,
            payload=packet.payload,
            qos=qos,
            retain=packet.retain,
            properties=props if v5 else _NO_PROPS,
            created_at=now,
            expires_at=None if expiry is None else now + expiry,
            origin=session.client_id,
        )
        proto.published_this_turn = True
        matched = self.router.publish(message, now)
        if qos:
            if self.router.retained_refused:
                code = 0x97  # quota exceeded: mqtt.max_retained_messages
            else:
                code = 0x10 if v5 and not matched else 0
            self._ack(proto, packet, code)
        bucket = proto.publish_bucket
        if bucket is not None:
            wait = bucket.take(self.loop.time())
            if wait > 0:
                # Over limits.publish_rate_per_client: what follows waits (unread), no loss.
                self.metrics.limit_hits += 1
                proto.deferred = True
                self.loop.call_later(wait, proto.resume_deferred)

    def _ack(self, proto: ClientProtocol, packet: Publish, code: int) -> None:
        """PUBACK / PUBREC with a reason code (v5); 3.1.1 acks carry none."""
        if packet.qos == 0 or packet.packet_id is None:
            return
        if proto.conn.protocol_version != 5:
            code = 0
        proto.conn.send_publish_ack(packet.qos, packet.packet_id, code)

    def _may_publish_will(self, will: Will, client_id: str, username: str | None) -> bool:
        """A will is published as its owner: the ACL's write decision and the $SYS rule
        apply as to a PUBLISH (issue 12). Counted when refused."""
        if not is_broker_topic(will.topic) and self.auth.may_publish(
            client_id, username, will.topic
        ):
            return True
        self.metrics.wills_denied += 1
        return False

    def _publish_will(self, will: Will, client_id: str, username: str | None,
                      now: float) -> None:
        """Publish a Will Message (MQTT 3.1.1 §3.1.2.5, MQTT 5.0 §3.1.3.2), if its owner
        may still publish to its topic: the ACL may have been reloaded since CONNECT."""
        if not self._may_publish_will(will, client_id, username):
            log.warning("will of %r (user %r) to %r not published: not authorised",
                        client_id, username, will.topic)
            return
        self.metrics.wills_published += 1
        props = will.properties
        expiry = props.message_expiry_interval
        message = Message(
            topic=will.topic,
            payload=will.payload,
            qos=will.qos,
            retain=will.retain,
            properties=replace(props, will_delay_interval=None),
            created_at=now,
            expires_at=None if expiry is None else now + expiry,
            origin=client_id,
        )
        log.info("publishing will of %r to %r", client_id, will.topic)
        self.router.publish(message, now)

    # ------------------------------------------------------ SUBSCRIBE / UNSUB
    def on_subscribe(self, proto: ClientProtocol, packet: Subscribe) -> None:
        session = self._session(proto)
        cfg = self.config.mqtt
        v5 = proto.conn.protocol_version == 5
        sub_ids = packet.properties.subscription_identifiers
        sub_id = sub_ids[0] if sub_ids else None
        if sub_id is not None and not cfg.subscription_identifiers:
            raise ProtocolViolation("subscription identifiers are not supported", reason_code=0xA1)
        limit = cfg.max_subscriptions_per_client

        def check(sub: Subscription) -> int | None:
            group, plain = parse_shared(sub.topic_filter)
            if group is not None:
                if sub.no_local:
                    raise ProtocolViolation(
                        "No Local on a shared subscription", spec_ref="MQTT-3.8.3-4"
                    )
                if not cfg.shared_subscriptions:
                    return 0x9E if v5 else 0x80
            if not cfg.wildcard_subscriptions and ("+" in plain or "#" in plain):
                return 0xA2 if v5 else 0x80
            if (
                plain.count("/") >= cfg.max_topic_levels
                or len(plain.encode()) > cfg.max_topic_length
            ):
                self.metrics.topic_limit_refusals += 1
                return 0x8F if v5 else 0x80
            if (
                limit
                and sub.topic_filter not in session.subscriptions
                and len(session.subscriptions) >= limit
            ):
                self.metrics.subscription_limit_refusals += 1
                return 0x97 if v5 else 0x80
            if not self.auth.may_subscribe(session, sub.topic_filter):
                self.metrics.acl_denials += 1
                log.info(
                    "client %r not authorised to subscribe to %r",
                    session.client_id,
                    sub.topic_filter,
                )
                return 0x87 if v5 else 0x80
            return None

        now = self.now()
        codes, retained = self.router.subscribe(
            session, packet.subscriptions, sub_id, cfg.maximum_qos, now, check
        )
        proto.conn.send_packet(SubAck(packet.packet_id, codes))
        for delivery in retained:
            session.deliver(delivery, now)

    def on_unsubscribe(self, proto: ClientProtocol, packet: Unsubscribe) -> None:
        session = self._session(proto)
        codes = self.router.unsubscribe(session, packet.topic_filters)
        v5 = proto.conn.protocol_version == 5
        proto.conn.send_packet(UnsubAck(packet.packet_id, codes if v5 else []))

    # ------------------------------------------------------------ DISCONNECT
    def on_disconnect(self, proto: ClientProtocol, packet: Disconnect) -> None:
        session = self._session(proto)
        expiry = packet.properties.session_expiry_interval
        if expiry is not None:
            if session.expiry_interval == 0 and expiry != 0:
                # 0 at CONNECT cannot become non-zero at DISCONNECT (§3.14.2.2.2).
                raise ProtocolViolation(
                    "Session Expiry Interval changed from 0 at DISCONNECT (MQTT 5.0 §3.14.2.2.2)"
                )
            self.registry.change_expiry(session, min(expiry, self.config.mqtt.max_session_expiry))
        # Normal disconnection discards the will [MQTT-3.14.4-3]; 0x04 keeps it.
        proto.clean_disconnect = packet.reason_code != 0x04
        log_connection(log, logging.INFO, proto, "client %r disconnected (reason 0x%02x)",
                       proto.client_id, packet.reason_code)
        proto.close()

    # ---------------------------------------------------------------- timers
    def _run_core_timers(self) -> None:
        now = self.now()
        for client_id, username, will in self.registry.run_timers(now):
            self._publish_will(will, client_id, username, now)
        for topic in self.retained.drop_expired(now):
            self.batch.delete_retained(topic)

    def _reschedule_core_timer(self) -> None:
        deadline = self.registry.next_deadline()
        retained_deadline = self.retained.next_expiry()
        if retained_deadline is not None and (deadline is None or retained_deadline < deadline):
            deadline = retained_deadline
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, deadline - self.now())
        self._timer_at = deadline
        self._timer = self.loop.call_later(delay, self._on_core_timer)

    def _on_core_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._run_core_timers()
        self._reschedule_core_timer()
        if self.batch and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)


_NO_PROPS = NO_PROPERTIES  # the shared empty value: storage and codec fast paths test identity


# ---------------------------------------------------------------------------
def open_store(config: BrokerConfig) -> Store:
    """The configured store: RocksDB under ``storage.path`` or in memory."""
    storage = config.storage
    if storage.backend == "memory":
        from iotbroker.storage.memory import MemoryStore  # noqa: PLC0415

        return MemoryStore()
    from iotbroker.storage.rocksdb import RocksDBStore  # noqa: PLC0415 (imports rocksdict)

    return RocksDBStore(
        storage.path, durability=storage.durability, on_corruption=storage.on_corruption
    )


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop  # noqa: PLC0415 (optional)

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
        except ImportError:
            if kind == "uvloop":
                raise
    return asyncio.new_event_loop()


def run_broker(config: BrokerConfig, reload: Callable[[], BrokerConfig] | None = None) -> int:
    """Run until SIGINT/SIGTERM; SIGHUP reloads (``reload`` re-reads the configuration).
    Returns the process exit code."""
    setup_logging(config.logging)
    try:
        store = open_store(config)
    except StorageError as exc:
        log.error("%s", exc)
        return 1
    loop = _new_loop(config.loop)
    asyncio.set_event_loop(loop)
    bind_loop(loop)
    broker = Broker(config, store, loop)
    stop_event = asyncio.Event()

    def request_stop(signame: str) -> None:
        log.info("received %s, shutting down", signame)
        stop_event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop, sig.name)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, broker.reload, reload)

    async def main() -> int:
        try:
            await broker.start()
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            store.close()
            return 1
        except StorageError as exc:
            log.error("%s", exc)
            store.close()
            return 1
        # The restored state (sessions, tries, retained messages) lives as long as the
        # process: keep it out of the cyclic GC's scans, and collect the young
        # generation less often (message objects are not cyclic). Fewer, shorter
        # pauses on the delivery path.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        log.info("iotbroker %s running (storage: %s, %s)", __version__,
                 config.storage.backend, build.describe())
        stale = build.stale_modules()
        if stale:
            log.warning("compiled modules older than their source (re-run `pip install -e .` "
                        "or install with IOTBROKER_PURE=1): %s", ", ".join(stale))
        await stop_event.wait()
        await broker.stop()
        return 0

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()
