"""The MQTT-SN 1.2 gateway: MQTT-SN clients mapped onto engine sessions, without I/O.

An MQTT-SN client is a broker session like any other ("transparent" gateway, MQTT-SN
1.2 §4.1, but inside the broker: no MQTT connection per client, the engine is called
directly). Each client gets an :class:`SnClient` (an engine
:class:`~iotbroker.engine.client.Client`) whose protocol
:class:`~iotbroker.protocol.connection.Connection` speaks MQTT 5.0 to the engine:
requests are translated into MQTT packet objects passed to ``Engine.handle``, and what
the engine queues on the connection is decoded with our MQTT codec and translated back
into MQTT-SN datagrams when the server flushes (after the storage commit, so no
acknowledgement leaves before what it acknowledges is stored). MQTT 5.0 is used on the
inside because its reason codes carry what MQTT-SN return codes need (§5.3.10):
0x87 Not authorized -> "rejected: not supported", 0x97 Quota exceeded -> "congestion".

Rules of this room (MQTT-SN 1.2 §6):

* CONNECT (§6.2) with Will asks WILLTOPICREQ / WILLMSGREQ before the CONNACK;
  CleanSession (§6.3) maps to Clean Start and a session that expires at once, or a
  persistent one (``mqtt.persistent_session_expiry_v311``);
* topic ids (§3, §6.5, §6.7): normal ids are per client, assigned by REGISTER (client
  to gateway), by SUBSCRIBE to a name without wildcards, or by the gateway's own
  REGISTER before it delivers a message whose topic the client has no id for (§6.10:
  the PUBLISH waits for the REGACK); predefined ids come from the configuration;
  short names are the two characters themselves;
* an unknown topic id is answered with PUBACK "rejected: invalid topic ID" (§6.7);
* QoS −1 PUBLISH (§6.8) is accepted from any address, to predefined ids and short
  names only, and routed as QoS 0 under the listener's identity;
* keep alive (§6.11): silence for 1.5 × Duration ends the client (its will goes out);
* DISCONNECT with a Duration puts the client to sleep (§6.14): messages for it are
  buffered (QoS 1/2 within the session's in-flight window and queue, QoS 0 up to
  ``mqtt.max_queued_messages``), flushed when a PINGREQ with its client id wakes it,
  and the client is lost (will) when 1.5 × the sleep Duration passes in silence;
* the gateway's own requests (REGISTER, PUBLISH QoS 1/2, PUBREL) are resent after
  ``retry_interval`` with DUP, at most ``max_retries`` times, then the client is lost
  (§6.13);
* datagrams from a forwarder (§5.5) are unwrapped, and replies wrapped for the same
  Wireless Node Id;
* anything malformed, unknown or over the per-address rate is dropped and counted,
  with at most one log line per second; it never affects another client.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from iotbroker.codec import packets as mq
from iotbroker.codec.decode import decode_packet
from iotbroker.codec.framer import Framer
from iotbroker.config import BrokerConfig, ListenerConfig
from iotbroker.core.topics import (
    validate_subscription_filter,
    validate_topic_name,
)
from iotbroker.engine import connect as connect_rules
from iotbroker.engine.client import Client, Writable
from iotbroker.engine.engine import Engine
from iotbroker.errors import MqttError
from iotbroker.message import NEVER_EXPIRES, Message
from iotbroker.mqttsn import codec as sn
from iotbroker.protocol.connection import Connection

log = logging.getLogger("iotbroker.mqttsn")

RC = sn.ReturnCode
TID = sn.TopicIdType
#: Where a datagram goes: the UDP address, and the Wireless Node Id when it came
#: through a forwarder (§5.5), else None.
Key = tuple[Any, bytes | None]
#: The server's "broadcast" destination for ADVERTISE (§6.1).
BROADCAST: Key = ("<broadcast>", None)
#: Topic ids a client may have registered at once (normal ids, §6.5).
MAX_TOPIC_IDS = 10_000
#: How the host applies the engine's connect gate (engine/connect.py
#: ``wait_before_accept``): ``defer(wait, then)`` calls ``then`` with what ``wait``
#: ended with (None: accept; a reason: refuse) once it is done, on a later turn.
Defer = Callable[[Awaitable[str | None], Callable[[str | None], None]], None]


@dataclass(slots=True)
class Outstanding:
    """One of the gateway's requests waiting for its answer (§6.13)."""

    message: sn.SnMessage
    deadline: float
    tries: int = 0


@dataclass(slots=True)
class PendingWill:
    """The will dialogue in progress (§6.2): the CONNECT, and the will topic so far."""

    connect: sn.Connect
    topic: sn.WillTopic | None = None


class SnClient(Client):
    """One MQTT-SN client: an engine client, its topic ids and its sleep state."""

    __slots__ = (
        "asleep",
        "close_after_flush",
        "gateway",
        "held",
        "ids",
        "inbound_topic",
        "keepalive",
        "key",
        "last_seen",
        "next_msg_id",
        "next_topic_id",
        "outstanding",
        "pending_will",
        "registering",
        "sleep_buffer",
        "sleep_duration",
        "sub_topic",
        "topics",
        "transport",
        "waiting",
        "waking",
        "will_topic_update",
    )

    def __init__(self, gateway: Gateway, key: Key, listener: str, now: float) -> None:
        conn = Connection(
            max_packet_size=sn.MAX_LENGTH, receive_maximum=65535, topic_alias_maximum=0,
            now=now, ready=gateway.ready, owner=self,
        )
        conn.protocol_version = 5
        super().__init__(conn, listener)
        self.gateway = gateway
        self.key = key
        #: Normal topic ids (§6.5): id -> name and name -> id.
        self.topics: dict[int, str] = {}
        self.ids: dict[str, int] = {}
        self.next_topic_id = 1
        self.next_msg_id = 1
        #: Topic id of each inbound QoS 1 PUBLISH awaiting the engine's PUBACK.
        self.inbound_topic: dict[int, int] = {}
        #: Topic id to report in the SUBACK of each SUBSCRIBE in progress.
        self.sub_topic: dict[int, int] = {}
        #: The gateway's requests awaiting an answer, by (MsgType, MsgId).
        self.outstanding: dict[tuple[int, int], Outstanding] = {}
        #: Outbound PUBLISHes waiting for the REGACK of their topic's REGISTER (§6.10).
        self.held: deque[mq.Publish] = deque()
        #: Topic ids of the gateway's REGISTERs still waiting for their REGACK.
        self.registering: set[int] = set()
        self.pending_will: PendingWill | None = None
        self.will_topic_update: sn.WillTopicUpd | None = None
        self.keepalive = 0
        self.last_seen = now
        self.asleep = False
        self.sleep_duration = 0
        self.sleep_buffer: deque[sn.SnMessage] = deque()
        #: Woken by a PINGREQ: PINGRESP goes when nothing is left to deliver (§6.14).
        self.waking = False
        #: The client id whose CONNECT waits for the engine's connect gate (the
        #: cluster brings its session here first), else None.
        self.waiting: str | None = None
        #: The broker's flush reads these (a ``Writable``, like its socket connections).
        self.close_after_flush = False
        self.transport = None

    @property
    def peer(self) -> str:
        addr, node = self.key
        where = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        return f"udp://{where}" + (f" node {node.hex()}" if node else "")

    @property
    def username(self) -> str | None:
        """The identity the ACL sees (the listener's ``mqttsn_username``), for logs."""
        return self.gateway.listener.mqttsn_username

    def log_extra(self) -> dict[str, object]:
        return {"conn_id": self.conn_id, "client_id": self.client_id or None,
                "peer": self.peer, "username": self.username, "cert": None}

    # The broker's flush and close effects call these (as on its socket connections).
    def write_pending(self) -> None:
        self.gateway.write_client(self)

    def close(self) -> None:
        self.gateway.client_closed(self)

    def finish_close(self) -> None:
        """After the flush wrote its last datagram: nothing lingers over UDP (a socket
        connection half-closes and drains here, server/linger.py)."""

    def abort(self) -> None:
        self.gateway.client_closed(self)

    def new_msg_id(self) -> int:
        msg_id = self.next_msg_id
        self.next_msg_id = msg_id % 0xFFFF + 1
        return msg_id


class Gateway:
    """All MQTT-SN clients of one ``mqtt-sn`` listener, driven by datagrams and time.

    ``send(datagram, key)`` is how it writes (the server's socket); ``ready`` is the
    server's list of connections to write at the end of the turn (the engine's
    connections put themselves there); ``defer`` is how a CONNECT waits for the
    engine's connect gate (None: a host without waits accepts at once).
    """

    def __init__(self, engine: Engine, config: BrokerConfig, listener: ListenerConfig,
                 ready: list[Writable], send: Callable[[bytes, Key], None],
                 now: float, defer: Defer | None = None) -> None:
        self.engine = engine
        self._defer = defer
        self.config = config
        self.cfg = config.mqttsn
        self.listener = listener
        self.ready = ready
        self._send = send
        self.metrics = engine.metrics
        self.clients: dict[Key, SnClient] = {}
        #: Sleeping clients by client id: a PINGREQ with the id wakes them (§6.14).
        self.by_id: dict[str, SnClient] = {}
        self.predefined: dict[int, str] = dict(self.cfg.predefined_topics)
        self.predefined_ids: dict[str, int] = {t: i for i, t in self.predefined.items()}
        self._buckets: dict[Any, tuple[float, float]] = {}
        self._framer = Framer(sn.MAX_LENGTH + 16)
        self._next_advertise = now if self.cfg.advertise_interval else None
        self._last_log = 0.0
        self._log_suppressed = 0
        self._now = now

    # ------------------------------------------------------------------ output
    def send(self, msg: sn.SnMessage, key: Key) -> None:
        self.metrics.mqttsn_datagrams_sent += 1
        self._send(sn.encode(msg), key)

    def _drop(self, reason: str, now: float, text: str, *args: object) -> None:
        """Count a dropped datagram; log at most one line per second (rate-limited)."""
        self.metrics.mqttsn_dropped[reason] += 1
        if now - self._last_log >= 1.0:
            more = f" ({self._log_suppressed} more dropped since the last line)" \
                if self._log_suppressed else ""
            log.warning("mqtt-sn %r: dropped datagram: " + text + more, self.listener.name,
                        *args)
            self._last_log = now
            self._log_suppressed = 0
        else:
            self._log_suppressed += 1

    # ------------------------------------------------------------------- input
    def _admit(self, addr: Any, now: float) -> bool:
        """Per-address token bucket (``mqttsn.rate_per_address``; burst = 1 s)."""
        rate = self.cfg.rate_per_address
        if not rate:
            return True
        tokens, stamp = self._buckets.get(addr, (rate, now))
        tokens = min(rate, tokens + (now - stamp) * rate)
        if tokens < 1.0:
            self._buckets[addr] = (tokens, now)
            return False
        self._buckets[addr] = (tokens - 1.0, now)
        return True

    def datagram_received(self, data: bytes, addr: Any, now: float) -> None:
        """One UDP datagram from ``addr`` (MQTT-SN 1.2 §5; §5.5 when encapsulated)."""
        self._now = now
        self.metrics.mqttsn_datagrams_received += 1
        if not self._admit(addr, now):
            self._drop("rate_limited", now, "%s over mqttsn.rate_per_address", addr)
            self._congestion(data, addr)
            return
        try:
            msg = sn.decode(data)
            node: bytes | None = None
            if isinstance(msg, sn.Encapsulated):
                node = msg.node_id
                msg = sn.decode(msg.message)
                if isinstance(msg, sn.Encapsulated):
                    raise sn.SnMalformed("encapsulation inside an encapsulation (§5.5)")
        except sn.SnMalformed as exc:
            self._drop("malformed", now, "%s from %s", exc, addr)
            return
        self.handle(msg, (addr, node), now)

    def _congestion(self, data: bytes, addr: Any) -> None:
        """A connected client's QoS 1/2 PUBLISH over the rate is refused with PUBACK
        "rejected: congestion" (§5.3.10, §6.7) so it backs off and retries; anything
        else over the rate is dropped silently (no answer to a flood)."""
        if len(data) < 7 or data[1] != sn.MsgType.PUBLISH or (data[2] >> 5) & 0b11 not in (1, 2):
            return
        client = self.clients.get((addr, None))
        if client is None or client.session is None:
            return
        topic_id, msg_id = (data[3] << 8) | data[4], (data[5] << 8) | data[6]
        self.send(sn.PubAck(topic_id, msg_id, RC.CONGESTION), client.key)

    def handle(self, msg: sn.SnMessage, key: Key, now: float) -> None:
        """One decoded message from ``key``."""
        client = self.clients.get(key)
        match msg:
            case sn.SearchGw():
                self.send(sn.GwInfo(self.cfg.gateway_id), key)  # §6.1
                return
            case sn.Advertise() | sn.GwInfo():
                return  # another gateway's, or a client answering SEARCHGW: not for us
            case sn.Connect():
                self.on_connect(msg, key, now)
                return
            case sn.Publish() if msg.qos == sn.QOS_MINUS_ONE:
                self.on_publish_minus_one(msg, client, key, now)
                return
            case sn.PingReq() if msg.client_id and (client is None or client.asleep):
                self.on_wake(msg.client_id, key, now)
                return
        if client is None:
            self._drop("unknown_client", now, "%s from %s, which is not connected",
                       type(msg).__name__, key[0])
            if not isinstance(msg, sn.Disconnect):
                self.send(sn.Disconnect(), key)  # tell it to connect again
            return
        client.last_seen = now
        if client.pending_will is not None:
            self.on_will_dialogue(client, msg, now)
            return
        if client.session is None:
            self._drop("not_connected", now, "%s before CONNACK from %s", type(msg).__name__,
                       key[0])
            return
        if _needs_msg_id(msg):
            # The engine's MQTT needs a non-zero Packet Identifier [MQTT-2.2.1-3].
            self._drop("malformed", now, "%s with MsgId 0 from %s", type(msg).__name__, key[0])
            return
        try:
            self.dispatch(client, msg, now)
        except MqttError as exc:
            self.engine.fail(client, exc)
        if client.waking:
            self.ready.append(client)  # the flush decides whether PINGRESP can go

    def dispatch(self, client: SnClient, msg: sn.SnMessage, now: float) -> None:
        engine = self.engine
        match msg:
            case sn.Publish():
                self.on_publish(client, msg, now)
            case sn.PubAck():
                self._answered(client, sn.MsgType.PUBLISH, msg.msg_id)
                if msg.return_code == RC.INVALID_TOPIC_ID:
                    # The client lost the registration (§6.10): forget it; the next
                    # message to that topic registers it again.
                    name = client.topics.pop(msg.topic_id, None)
                    if name is not None:
                        client.ids.pop(name, None)
                engine.handle(client, mq.PubAck(msg.msg_id), now)
            case sn.PubRec():
                self._answered(client, sn.MsgType.PUBLISH, msg.msg_id)
                engine.handle(client, mq.PubRec(msg.msg_id), now)
            case sn.PubComp():
                self._answered(client, sn.MsgType.PUBREL, msg.msg_id)
                engine.handle(client, mq.PubComp(msg.msg_id), now)
            case sn.PubRel():
                engine.handle(client, mq.PubRel(msg.msg_id), now)
            case sn.Register():
                self.on_register(client, msg)
            case sn.RegAck():
                self.on_regack(client, msg, now)
            case sn.Subscribe():
                self.on_subscribe(client, msg, now)
            case sn.Unsubscribe():
                self.on_unsubscribe(client, msg, now)
            case sn.PingReq():
                engine.handle(client, mq.PingReq(), now)  # §6.11: PINGRESP via the engine
            case sn.Disconnect():
                self.on_disconnect(client, msg, now)
            case sn.WillTopicUpd():
                self.on_willtopicupd(client, msg)
            case sn.WillMsgUpd():
                self.on_willmsgupd(client, msg)
            case _:
                self._drop("unexpected", now, "%s from client %r", type(msg).__name__,
                           client.client_id)

    # ----------------------------------------------------------- CONNECT (§6.2)
    def on_connect(self, msg: sn.Connect, key: Key, now: float) -> None:
        cfg = self.cfg
        if msg.protocol_id != sn.PROTOCOL_ID or not msg.client_id:
            self.send(sn.ConnAck(RC.NOT_SUPPORTED), key)
            return
        if cfg.allowed_clients is not None and msg.client_id not in cfg.allowed_clients:
            self.engine.metrics.connections_rejected += 1
            log.info("mqtt-sn %r: refused CONNECT of %r from %s: not in mqttsn.allowed_clients",
                     self.listener.name, msg.client_id, key[0])
            self.send(sn.ConnAck(RC.NOT_SUPPORTED), key)
            return
        username = self.listener.mqttsn_username
        if username is None and not self.config.auth.allow_anonymous:
            self.engine.metrics.count_auth_failure("anonymous")
            self.engine.metrics.connections_rejected += 1
            self.send(sn.ConnAck(RC.NOT_SUPPORTED), key)
            return
        old = self.clients.get(key)
        if old is not None and old.waiting == msg.client_id:
            # A retry of a CONNECT that still waits for its session (the engine's
            # connect gate): the first one's CONNACK answers it.
            self._drop("not_connected", now, "CONNECT of %r from %s again while the first "
                       "waits for its session", msg.client_id, key[0])
            return
        if old is not None:
            # The same address connects again (a restarted device): the old client
            # ends here; its session is taken over (or ended) by the new CONNECT.
            self._forget(old)
        elif len(self.clients) >= cfg.max_clients:
            self.engine.metrics.limit_hits += 1
            self.engine.metrics.connections_rejected += 1
            self.send(sn.ConnAck(RC.CONGESTION), key)
            return
        client = SnClient(self, key, self.listener.name, now)
        self.clients[key] = client
        if msg.will:
            client.pending_will = PendingWill(msg)
            self.send(sn.WillTopicReq(), key)
            return
        self._accept(client, msg, None, now)

    def on_will_dialogue(self, client: SnClient, msg: sn.SnMessage, now: float) -> None:
        """WILLTOPIC / WILLMSG answering our requests (§6.2)."""
        pending = client.pending_will
        assert pending is not None
        if isinstance(msg, sn.WillTopic) and pending.topic is None:
            if msg.empty:
                client.pending_will = None
                self._accept(client, pending.connect, None, now)
                return
            pending.topic = msg
            self.send(sn.WillMsgReq(), client.key)
        elif isinstance(msg, sn.WillMsg) and pending.topic is not None:
            topic = pending.topic
            client.pending_will = None
            will = mq.Will(topic.topic, msg.message, qos=topic.qos, retain=topic.retain)
            self._accept(client, pending.connect, will, now)
        else:
            self._drop("unexpected", now, "%s during the will dialogue of %r",
                       type(msg).__name__, pending.connect.client_id)

    def _accept(self, client: SnClient, msg: sn.Connect, will: mq.Will | None,
                now: float) -> None:
        """The CONNECT (and its will) as an MQTT 5.0 CONNECT through the engine's
        connect rules, in their order (engine/connect.py): admit, the connect gate
        (in a cluster the session may be on another node: the acceptance waits until
        it is here, or is refused "busy", MQTT 5.0 §4.1, docs/cluster.md "Sessions
        move"), then accept — the same path as an MQTT client's, so a client id is
        claimed and resumed cluster-wide whichever protocol it speaks."""
        engine = self.engine
        if msg.clean_session:
            expiry = 0
        else:
            v3 = self.config.mqtt.persistent_session_expiry_v311
            expiry = NEVER_EXPIRES if v3 is None else v3
        packet = mq.Connect(
            client_id=msg.client_id, protocol_version=5, clean_start=msg.clean_session,
            keepalive=msg.duration, will=will, username=self.listener.mqttsn_username,
            properties=mq.Properties(session_expiry_interval=expiry or None),
        )
        admitted = connect_rules.admit(engine, client, packet)
        if admitted is None:
            return
        wait = connect_rules.wait_before_accept(engine, admitted, packet)
        if wait is not None and self._defer is not None:
            client.waiting = admitted.client_id

            def then(why: str | None) -> None:
                self._after_wait(client, msg, packet, admitted, why)

            self._defer(wait, then)
            return
        self._accept_now(client, msg, packet, admitted, now)

    def _after_wait(self, client: SnClient, msg: sn.Connect, packet: mq.Connect,
                    admitted: connect_rules.Admitted, why: str | None) -> None:
        """The connect gate is done: accept, or refuse with CONNACK "congestion"
        (MQTT 5.0 0x89 Server busy, §5.3.10: the client retries later) when the
        session could not be made ready. Nothing when the client went meanwhile (its
        address connected again, or the wait outlasted ``mqtt.connect_timeout``)."""
        client.waiting = None
        if self.clients.get(client.key) is not client or client.close_after_flush:
            return
        if why is not None:
            connect_rules.refuse_busy(self.engine, client, packet, why)
            return
        self._accept_now(client, msg, packet, admitted, self._now)

    def _accept_now(self, client: SnClient, msg: sn.Connect, packet: mq.Connect,
                    admitted: connect_rules.Admitted, now: float) -> None:
        accepted = connect_rules.accept(self.engine, client, packet, admitted,
                                        self.listener.mqttsn_username, now)
        if accepted is None:
            return
        client.keepalive = accepted.keepalive if msg.duration else 0
        log.info("mqtt-sn client %r connected from %s (clean_session=%s, duration=%s, "
                 "session_present=%s, will=%s)", client.client_id, client.peer,
                 msg.clean_session, msg.duration, accepted.session_present,
                 packet.will is not None)

    # -------------------------------------------------------- PUBLISH (§6.7)
    def _topic_name(self, client: SnClient | None, tid_type: int, topic_id: int) -> str | None:
        if tid_type == TID.PREDEFINED:
            return self.predefined.get(topic_id)
        if tid_type == TID.SHORT:
            try:
                name = topic_id.to_bytes(2, "big").decode()
            except UnicodeDecodeError:
                return None
            return name if _valid_name(name) else None
        return None if client is None else client.topics.get(topic_id)

    def on_publish(self, client: SnClient, msg: sn.Publish, now: float) -> None:
        topic = self._topic_name(client, msg.topic_id_type, msg.topic_id)
        if topic is None:
            # §6.7: PUBACK "rejected: invalid topic ID".
            self.send(sn.PubAck(msg.topic_id, msg.msg_id, RC.INVALID_TOPIC_ID), client.key)
            return
        if msg.qos > self.config.mqtt.maximum_qos:
            # MQTT ends the connection [MQTT-3.2.2-11]; MQTT-SN can say "not supported".
            self.send(sn.PubAck(msg.topic_id, msg.msg_id, RC.NOT_SUPPORTED), client.key)
            return
        if msg.qos == 1:
            client.inbound_topic[msg.msg_id] = msg.topic_id
        packet = mq.Publish(topic, msg.data, qos=msg.qos, retain=msg.retain, dup=msg.dup,
                             packet_id=msg.msg_id if msg.qos else None)
        self.engine.handle(client, packet, now)

    def on_publish_minus_one(self, msg: sn.Publish, client: SnClient | None, key: Key,
                             now: float) -> None:
        """§6.8: QoS −1 needs no connection; predefined ids and short names only (a
        connected client may also use its normal ids). Routed as QoS 0 under the
        listener's identity (client id of the connected client, if any)."""
        topic = self._topic_name(client, msg.topic_id_type, msg.topic_id)
        if topic is None:
            self._drop("unexpected", now, "QoS -1 PUBLISH to unknown topic id %d from %s",
                       msg.topic_id, key[0])
            return
        engine = self.engine
        client_id = client.client_id if client is not None else ""
        username = self.listener.mqttsn_username
        if username is None and not self.config.auth.allow_anonymous:
            engine.metrics.count_auth_failure("anonymous")
            return
        if not engine.may_write(client_id, username, topic):
            engine.metrics.acl_denials += 1
            return
        engine.metrics.count_received(0)
        self.metrics.mqttsn_qos_minus_one_published += 1
        message = Message(topic=topic, payload=msg.data, qos=0, retain=msg.retain,
                          properties=mq.NO_PROPERTIES, created_at=now, origin=client_id)
        engine.publish_own(message, now)

    # ----------------------------------------------------- REGISTER (§6.5, §6.10)
    def _assign(self, client: SnClient, topic: str) -> int | None:
        topic_id = client.ids.get(topic)
        if topic_id is not None:
            return topic_id
        if len(client.ids) >= MAX_TOPIC_IDS:
            return None
        topic_id = client.next_topic_id
        while topic_id in client.topics or topic_id in (0, 0xFFFF):
            topic_id = topic_id % 0xFFFE + 1
        client.next_topic_id = topic_id % 0xFFFE + 1
        client.topics[topic_id] = topic
        client.ids[topic] = topic_id
        return topic_id

    def on_register(self, client: SnClient, msg: sn.Register) -> None:
        name = msg.topic_name
        if not _valid_name(name):  # §6.5; MQTT's topic name rules [MQTT-4.7.3-1..2]
            self.send(sn.RegAck(0, msg.msg_id, RC.NOT_SUPPORTED), client.key)
            return
        topic_id = self._assign(client, name)
        if topic_id is None:
            self.send(sn.RegAck(0, msg.msg_id, RC.CONGESTION), client.key)
            return
        self.send(sn.RegAck(topic_id, msg.msg_id, RC.ACCEPTED), client.key)

    def on_regack(self, client: SnClient, msg: sn.RegAck, now: float) -> None:
        if self._answered(client, sn.MsgType.REGISTER, msg.msg_id) is None:
            return
        client.registering.discard(msg.topic_id)
        if msg.return_code != RC.ACCEPTED:
            # Refused: the messages waiting for this topic id are dropped, acknowledged
            # to the session as if delivered (the client will not take them).
            name = client.topics.pop(msg.topic_id, None)
            if name is not None:
                client.ids.pop(name, None)
                kept: deque[mq.Publish] = deque()
                for pub in client.held:
                    if pub.topic == name:
                        self._give_up(client, pub, now)
                    else:
                        kept.append(pub)
                client.held = kept
        self._release_held(client, now)

    def _give_up(self, client: SnClient, pub: mq.Publish, now: float) -> None:
        if pub.qos == 1 and pub.packet_id is not None:
            self.engine.handle(client, mq.PubAck(pub.packet_id), now)
        elif pub.qos == 2 and pub.packet_id is not None:
            self.engine.handle(client, mq.PubRec(pub.packet_id, 0x80), now)

    def _release_held(self, client: SnClient, now: float) -> None:
        held = client.held
        while held:
            pub = held[0]
            out = self._outbound_publish(client, pub, now)
            if out is None:
                return  # waits for another REGACK
            held.popleft()
            self._deliver(client, out, now)

    # ------------------------------------------------- SUBSCRIBE (§6.9)
    def _filter(self, client: SnClient, msg: sn.Subscribe | sn.Unsubscribe) -> str | None:
        if msg.topic_id_type == TID.PREDEFINED:
            return self.predefined.get(msg.topic_id)
        return msg.topic_name or None

    def on_subscribe(self, client: SnClient, msg: sn.Subscribe, now: float) -> None:
        topic_filter = self._filter(client, msg)
        if topic_filter is None:
            self.send(sn.SubAck(0, msg.topic_id, msg.msg_id, RC.INVALID_TOPIC_ID), client.key)
            return
        try:
            validate_subscription_filter(topic_filter)  # MQTT 5.0 §4.7.1, §4.8.2
        except MqttError:
            self.send(sn.SubAck(0, 0, msg.msg_id, RC.NOT_SUPPORTED), client.key)
            return
        topic_id = 0
        if msg.topic_id_type == TID.PREDEFINED:
            topic_id = msg.topic_id
        elif msg.topic_id_type == TID.NORMAL and "+" not in topic_filter \
                and "#" not in topic_filter:
            # §6.9: a name without wildcards gets its topic id in the SUBACK.
            assigned = self._assign(client, topic_filter)
            if assigned is None:
                self.send(sn.SubAck(0, 0, msg.msg_id, RC.CONGESTION), client.key)
                return
            topic_id = assigned
        client.sub_topic[msg.msg_id] = topic_id
        packet = mq.Subscribe(msg.msg_id, [mq.Subscription(topic_filter, max(msg.qos, 0))])
        self.engine.handle(client, packet, now)

    def on_unsubscribe(self, client: SnClient, msg: sn.Unsubscribe, now: float) -> None:
        topic_filter = self._filter(client, msg)
        if topic_filter is None:
            self.send(sn.UnsubAck(msg.msg_id), client.key)  # nothing to remove
            return
        self.engine.handle(client, mq.Unsubscribe(msg.msg_id, [topic_filter]), now)

    # ------------------------------------------------ DISCONNECT, sleep (§6.12, §6.14)
    def on_disconnect(self, client: SnClient, msg: sn.Disconnect, now: float) -> None:
        if msg.duration:
            # §6.14: asleep for ``duration`` seconds; acknowledged with DISCONNECT.
            client.asleep = True
            client.sleep_duration = msg.duration
            self.by_id[client.client_id] = client
            self.send(sn.Disconnect(), client.key)
            log.info("mqtt-sn client %r asleep for %ss", client.client_id, msg.duration)
            return
        self.send(sn.Disconnect(), client.key)  # §6.12: the gateway answers DISCONNECT
        self.engine.handle(client, mq.Disconnect(0), now)

    def on_wake(self, client_id: str, key: Key, now: float) -> None:
        """§6.14: PINGREQ with the client id: send what was buffered, then PINGRESP."""
        client = self.by_id.get(client_id)
        if client is None or not client.asleep:
            self._drop("unknown_client", now, "PINGREQ of %r, which is not asleep", client_id)
            self.send(sn.Disconnect(), key)
            return
        if client.key != key:
            # It woke up on another address (or through another forwarder).
            if self.clients.get(client.key) is client:
                del self.clients[client.key]
            client.key = key
            old = self.clients.get(key)
            if old is not None and old is not client:
                self._forget(old)
            self.clients[key] = client
        client.last_seen = now
        client.asleep = False
        client.waking = True
        buffered = client.sleep_buffer
        while buffered:
            self._send_tracked(client, buffered.popleft(), now)
        self.ready.append(client)  # PINGRESP once nothing is left to deliver

    def _maybe_back_to_sleep(self, client: SnClient) -> None:
        """§6.14: the woken client gets PINGRESP, and sleeps again, once everything
        buffered for it was delivered and acknowledged."""
        if client.outstanding or client.held or client.close_after_flush:
            return
        client.waking = False
        client.asleep = True
        self.send(sn.PingResp(), client.key)

    # ------------------------------------------------ will update (§6.4)
    def on_willtopicupd(self, client: SnClient, msg: sn.WillTopicUpd) -> None:
        if msg.empty:
            client.will = None
            client.will_topic_update = None
        elif (not _valid_name(msg.topic)
              or self.engine.will_topic_over_limits(msg.topic) is not None
              or not self.engine.may_publish_will(
                  mq.Will(msg.topic, b"", qos=msg.qos, retain=msg.retain), client.client_id,
                  client.session.username if client.session else None)):
            self.send(sn.WillTopicResp(RC.NOT_SUPPORTED), client.key)
            return
        else:
            payload = client.will.payload if client.will is not None else b""
            client.will = mq.Will(msg.topic, payload, qos=msg.qos, retain=msg.retain)
        self.send(sn.WillTopicResp(RC.ACCEPTED), client.key)

    def on_willmsgupd(self, client: SnClient, msg: sn.WillMsgUpd) -> None:
        if client.will is None:
            self.send(sn.WillMsgResp(RC.NOT_SUPPORTED), client.key)  # no will topic yet
            return
        will = client.will
        client.will = mq.Will(will.topic, msg.message, qos=will.qos, retain=will.retain)
        self.send(sn.WillMsgResp(RC.ACCEPTED), client.key)

    # ------------------------------------- what the engine sends, translated (§6.10)
    def write_client(self, client: SnClient) -> None:
        """The broker's flush: the engine's MQTT 5.0 output for ``client``, decoded
        and sent as MQTT-SN (after the turn's storage commit)."""
        data = client.conn.data_to_send()
        if data:
            owner = self.clients.get(client.key)
            if owner is not None and owner is not client:
                return  # replaced on its address: what was left for it is not sent
            frames: list[tuple[int, bytes]] = []
            self._framer.feed_into(data, frames)
            now = self._now
            for first_byte, body in frames:
                try:
                    packet = decode_packet(first_byte, body, 5)
                except MqttError as exc:  # our own bug: never let it break the flush
                    log.error("mqtt-sn: cannot translate the engine's output for %r: %s",
                              client.client_id, exc)
                    continue
                self.translate(client, packet, now)
        if client.waking:
            self._maybe_back_to_sleep(client)

    def translate(self, client: SnClient, packet: mq.Packet, now: float) -> None:
        match packet:
            case mq.Publish():
                if client.held:
                    self._hold(client, packet)  # order: behind the registration
                    return
                out = self._outbound_publish(client, packet, now)
                if out is None:
                    self._hold(client, packet)
                    return
                self._deliver(client, out, now)
            case mq.PubAck():
                topic_id = client.inbound_topic.pop(packet.packet_id, 0)
                self._reply(client, sn.PubAck(topic_id, packet.packet_id,
                                              _return_code(packet.reason_code)))
            case mq.PubRec():
                self._reply(client, sn.PubRec(packet.packet_id))
            case mq.PubComp():
                self._reply(client, sn.PubComp(packet.packet_id))
            case mq.PubRel():
                self._deliver(client, sn.PubRel(packet.packet_id), now)
            case mq.ConnAck():
                code = packet.reason_code
                if code < 0x80:
                    self._reply(client, sn.ConnAck(RC.ACCEPTED))
                else:
                    self._reply(client, sn.ConnAck(RC.CONGESTION if code in (0x89, 0x88, 0x97)
                                                   else RC.NOT_SUPPORTED))
            case mq.SubAck():
                code = packet.reason_codes[0] if packet.reason_codes else 0x80
                topic_id = client.sub_topic.pop(packet.packet_id, 0)
                if code < 0x80:
                    self._reply(client, sn.SubAck(code, topic_id, packet.packet_id,
                                                  RC.ACCEPTED))
                else:
                    self._reply(client, sn.SubAck(0, 0, packet.packet_id, _return_code(code)))
            case mq.UnsubAck():
                self._reply(client, sn.UnsubAck(packet.packet_id))
            case mq.Disconnect():
                self._reply(client, sn.Disconnect())  # taken over, or the broker stops
            case mq.PingResp():
                self._reply(client, sn.PingResp())

    def _hold(self, client: SnClient, pub: mq.Publish) -> None:
        """Keep ``pub`` until its topic's REGACK; QoS 1/2 are bounded by the session's
        in-flight window, QoS 0 by ``mqtt.max_queued_messages`` (then dropped)."""
        if pub.qos == 0 and len(client.held) >= self.config.mqtt.max_queued_messages:
            self.metrics.mqttsn_dropped["sleep_buffer_full"] += 1
            self.metrics.messages_dropped_queue_full += 1
            return
        client.held.append(pub)

    def _reply(self, client: SnClient, msg: sn.SnMessage) -> None:
        """An answer to the client's request: sent even while asleep (the client is
        awake when it asks)."""
        self.send(msg, client.key)

    def _outbound_publish(self, client: SnClient, pub: mq.Publish,
                          now: float) -> sn.Publish | None:
        """The MQTT-SN PUBLISH for ``pub``, or None after sending a REGISTER for its
        topic (the PUBLISH waits for the REGACK, §6.10)."""
        topic = pub.topic
        msg_id = pub.packet_id or 0
        predefined = self.predefined_ids.get(topic)
        if predefined is not None:
            tid_type, topic_id = TID.PREDEFINED, predefined
        elif len(topic) == 2 and len(topic.encode()) == 2:
            tid_type, topic_id = TID.SHORT, sn.encode_short_name(topic)
        else:
            known = client.ids.get(topic)
            if known is None:
                assigned = self._assign(client, topic)
                if assigned is None:
                    self._give_up(client, pub, now)
                    return None
                client.registering.add(assigned)
                self.metrics.mqttsn_registrations_sent += 1
                self._deliver(client, sn.Register(assigned, client.new_msg_id(), topic), now)
                return None
            if known in client.registering:
                return None
            tid_type, topic_id = TID.NORMAL, known
        return sn.Publish(tid_type, topic_id, msg_id, pub.payload, qos=pub.qos,
                          retain=pub.retain, dup=pub.dup)

    def _deliver(self, client: SnClient, msg: sn.SnMessage, now: float) -> None:
        """A message of the gateway's own to the client: buffered while it sleeps
        (§6.14), else sent and, if it needs an answer, tracked for resending (§6.13)."""
        if client.asleep:
            if isinstance(msg, sn.Publish) and msg.qos == 0 \
                    and len(client.sleep_buffer) >= self.config.mqtt.max_queued_messages:
                self.metrics.mqttsn_dropped["sleep_buffer_full"] += 1
                self.engine.metrics.messages_dropped_queue_full += 1
                return
            client.sleep_buffer.append(msg)
            return
        self._send_tracked(client, msg, now)

    def _send_tracked(self, client: SnClient, msg: sn.SnMessage, now: float) -> None:
        self.send(msg, client.key)
        if isinstance(msg, sn.Publish) and msg.qos > 0:
            client.outstanding[(sn.MsgType.PUBLISH, msg.msg_id)] = Outstanding(
                msg, now + self.cfg.retry_interval)
        elif isinstance(msg, sn.PubRel):
            client.outstanding[(sn.MsgType.PUBREL, msg.msg_id)] = Outstanding(
                msg, now + self.cfg.retry_interval)
        elif isinstance(msg, sn.Register):
            client.outstanding[(sn.MsgType.REGISTER, msg.msg_id)] = Outstanding(
                msg, now + self.cfg.retry_interval)

    def _answered(self, client: SnClient, kind: int, msg_id: int) -> Outstanding | None:
        return client.outstanding.pop((kind, msg_id), None)

    # --------------------------------------------------------------- closing
    def _forget(self, client: SnClient) -> None:
        """Stop knowing ``client`` by its address and id (it is being replaced)."""
        if self.clients.get(client.key) is client:
            del self.clients[client.key]
        if self.by_id.get(client.client_id) is client:
            del self.by_id[client.client_id]

    def client_closed(self, client: SnClient) -> None:
        """The engine (or the broker) closed ``client``: the "connection" is gone."""
        if client.close_after_flush:
            return
        client.close_after_flush = True
        self._forget(client)
        client.outstanding.clear()
        if client.session is not None:
            self.engine.connection_closed(client, "", self._now)

    def client_lost(self, client: SnClient, why: str) -> None:
        """Keep alive, sleep or retries ran out: lost, its will goes out."""
        log.info("mqtt-sn client %r (%s) lost: %s", client.client_id, client.peer, why)
        if client.session is None:
            self._forget(client)
            client.close_after_flush = True
            return
        self.engine.keepalive_expired(client)

    def shutting_down(self) -> None:
        """The broker stops: every client ends cleanly (no will), told DISCONNECT."""
        clients = list(self.clients.values())
        self.engine.shutting_down([c for c in clients if c.session is not None])
        for client in clients:
            if client.session is None:
                self._forget(client)

    # ---------------------------------------------------------------- timers
    def run_timers(self, now: float) -> None:
        """Keep alive and sleep supervision, retransmissions, ADVERTISE (§6.1, §6.11,
        §6.13, §6.14). Called about once a second."""
        self._now = now
        cfg = self.cfg
        if self._next_advertise is not None and now >= self._next_advertise:
            duration = int(cfg.advertise_interval)
            self.send(sn.Advertise(cfg.gateway_id, duration), BROADCAST)
            self._next_advertise = now + cfg.advertise_interval
        for client in list(self.clients.values()):
            if client.close_after_flush:
                continue
            if client.asleep:
                if now > client.last_seen + client.sleep_duration * 1.5:
                    self.client_lost(client, f"did not wake within {client.sleep_duration}s")
                continue
            if client.session is None:
                if now > client.last_seen + self.config.mqtt.connect_timeout:
                    self._forget(client)  # the will dialogue was never finished
                continue
            if client.keepalive and now > client.last_seen + client.keepalive * 1.5:
                self.client_lost(client, f"keep alive {client.keepalive}s expired")
                continue
            for out in list(client.outstanding.values()):
                if now < out.deadline:
                    continue
                if out.tries >= cfg.max_retries:
                    self.client_lost(client, f"no answer to {type(out.message).__name__} "
                                     f"after {out.tries} retries")
                    break
                out.tries += 1
                out.deadline = now + cfg.retry_interval
                self.metrics.mqttsn_retransmissions += 1
                msg = out.message
                if isinstance(msg, sn.Publish):
                    msg = sn.Publish(msg.topic_id_type, msg.topic_id, msg.msg_id, msg.data,
                                     qos=msg.qos, retain=msg.retain, dup=True)
                    out.message = msg
                self.send(msg, client.key)
        if len(self._buckets) > 4 * max(1, len(self.clients)) + 1024:
            self._buckets.clear()  # bounded: forget idle addresses' rate state

    def set_time(self, now: float) -> None:
        """The server's clock for this turn (flush callbacks carry no time)."""
        self._now = now


def _needs_msg_id(msg: sn.SnMessage) -> bool:
    """A message whose MsgId becomes an MQTT Packet Identifier, with MsgId 0."""
    if isinstance(msg, sn.Publish):
        return msg.qos > 0 and msg.msg_id == 0
    if isinstance(msg, sn.PubAck | sn.PubRec | sn.PubRel | sn.PubComp | sn.Subscribe
                  | sn.Unsubscribe):
        return msg.msg_id == 0
    return False


def _valid_name(name: str) -> bool:
    """A topic name MQTT accepts (not empty, no wildcard, no U+0000)."""
    try:
        validate_topic_name(name)
    except MqttError:
        return False
    return True


def _return_code(reason_code: int) -> int:
    """An MQTT 5.0 reason code as an MQTT-SN return code (§5.3.10)."""
    if reason_code < 0x80:
        return RC.ACCEPTED
    if reason_code in (0x89, 0x97, 0x93):  # server busy, quota exceeded, receive max
        return RC.CONGESTION
    return RC.NOT_SUPPORTED
