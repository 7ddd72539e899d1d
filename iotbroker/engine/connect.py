"""CONNECT negotiation: the rules before and after authentication.

Authentication itself may wait (a password hash runs in a worker thread, an MQTT 5.0
enhanced-authentication exchange takes several packets), so the server orchestrates
it between the two synchronous halves here:

1. :func:`admit` — the client identifier (MQTT 3.1.1 §3.1.3.1, MQTT 5.0 §3.1.3.1:
   zero-length ids are assigned when allowed [MQTT-3.1.3-6], need Clean Session in
   3.1.1 [MQTT-3.1.3-8]; the configured maximum length; MQTT 3.1 §3.1: 1 to 23
   characters, else CONNACK 2) and a moved server (MQTT 5.0 §4.11: CONNACK 0x9D with a
   Server Reference);
2. :func:`wait_before_accept` — whether the acceptance must wait for a room (the
   cluster reads where the client's session is, MQTT 5.0 §4.1: it may be on another
   node); the server defers the connection until the awaitable is done;
3. :func:`accept` — with the identity the client proved: the will (QoS, retain, topic,
   and the publish ACL for its owner, issue 12), session takeover [MQTT-3.1.4-2]
   (v5 [MQTT-3.1.4-3]: DISCONNECT 0x8E to the old connection), session open or resume
   [MQTT-3.1.2-4], [MQTT-3.1.2-5], keep alive (the server may lower it, MQTT 5.0 Server
   Keep Alive), the CONNACK and its properties (MQTT 5.0 §3.2.2.3), and the session's
   attachment to the connection (resend of what was in flight, [MQTT-4.4.0-1]).

A refusal is a CONNACK with a reason code and a close [MQTT-3.2.2-5] (:func:`refuse`);
3.1.1 has fewer codes (§3.2.2.3) and none for some refusals: then it closes without
CONNACK [MQTT-3.2.2-6].
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable
from typing import Final

from iotbroker.codec.enums import ProtocolVersion, ReasonCode
from iotbroker.codec.packets import NO_PROPERTIES, ConnAck, Connect, Disconnect, Properties
from iotbroker.core.topics import has_wildcard, validate_topic_name
from iotbroker.engine.client import Client
from iotbroker.engine.engine import V3_CONNACK, Engine, is_utf8
from iotbroker.errors import ProtocolViolation
from iotbroker.message import NEVER_EXPIRES

log = logging.getLogger("iotbroker.broker")

R = ReasonCode

#: MQTT 3.1's protocol version ("MQIsdp", MQTT 3.1 §3.1); everything not said otherwise
#: here is handled as MQTT 3.1.1 (protocol level 4).
MQTT31: Final = int(ProtocolVersion.MQTT_3_1)
#: MQTT 3.1 §3.1: "The Client Identifier (Client ID) is between 1 and 23 characters long".
MQTT31_MAX_CLIENT_ID: Final = 23


class Admitted:
    """A CONNECT that passed :func:`admit`: the client id to use, and whether the
    broker assigned it (MQTT 5.0 tells the client in CONNACK). A plain class, not a
    dataclass: compiled, its constructor is native (a dataclass's ``__init__`` stays
    interpreted under mypyc; one per CONNECT, issue 19). Read-only by convention."""

    __slots__ = ("assigned", "client_id")

    def __init__(self, client_id: str, assigned: str | None) -> None:
        self.client_id = client_id
        self.assigned = assigned


class Accepted:
    """What :func:`accept` decided (the server arms the keep-alive timer and logs).
    A plain class for the reason :class:`Admitted` is one. Read-only by convention."""

    __slots__ = ("keepalive", "session_expiry", "session_present")

    def __init__(self, session_present: bool, keepalive: int, session_expiry: int) -> None:
        self.session_present = session_present
        self.keepalive = keepalive
        self.session_expiry = session_expiry


def refuse(engine: Engine, client: Client, packet: Connect, reason: int, why: str,
           properties: Properties = NO_PROPERTIES) -> None:
    """Refuse a CONNECT with a CONNACK code, then close [MQTT-3.2.2-5] (v5 -7)."""
    engine.metrics.connections_rejected += 1
    log.info("refused CONNECT from %s (client id %r): %s", client.peer, packet.client_id, why,
             extra=client.log_extra())
    conn = client.conn
    if packet.protocol_version == 5:
        conn.send_packet(ConnAck(False, reason, properties))
    elif reason in V3_CONNACK:
        conn.send_packet(ConnAck(False, V3_CONNACK[reason]))
    # else: no 3.1.1 return code fits: close without CONNACK [MQTT-3.2.2-6].
    engine.close(client)


def admit(engine: Engine, client: Client, packet: Connect) -> Admitted | None:
    """The checks before authentication; None when refused (CONNACK queued, closing)."""
    cfg = engine.connect_limits  # config.mqtt's values, native (issue 19)
    client_id = packet.client_id
    assigned: str | None = None
    # MQTT 3.1 §3.1 (Payload, Client Identifier): 1 to 23 characters, else CONNACK 2
    # Identifier Rejected; 3.1 has no zero-length (server-assigned) id.
    if packet.protocol_version == MQTT31 and not 1 <= len(client_id) <= MQTT31_MAX_CLIENT_ID:
        refuse(engine, client, packet, R.CLIENT_IDENTIFIER_NOT_VALID,
               "MQTT 3.1 client id must be 1 to 23 characters")
        return None
    if not client_id:
        if not cfg.allow_zero_length_client_id or (
            packet.protocol_version != 5 and not packet.clean_start
        ):
            # [MQTT-3.1.3-8] (3.1.1): zero-length id needs Clean Session = 1.
            refuse(engine, client, packet, R.CLIENT_IDENTIFIER_NOT_VALID,
                   "zero-length client id not allowed")
            return None
        client_id = assigned = f"auto-{uuid.uuid4().hex}"  # [MQTT-3.1.3-6]
    elif client_id.startswith("$bridge/"):
        # The broker's own bridge sessions (iotbroker/bridge/): never from the network.
        refuse(engine, client, packet, R.CLIENT_IDENTIFIER_NOT_VALID,
               "client ids starting with $bridge/ are reserved for bridges")
        return None
    elif len(client_id) > cfg.max_client_id_length:
        refuse(engine, client, packet, R.CLIENT_IDENTIFIER_NOT_VALID, "client id too long")
        return None
    if cfg.server_reference:
        # This server has moved: MQTT 5.0 CONNACK 0x9D with Server Reference (§4.11).
        refuse(engine, client, packet, R.SERVER_MOVED, f"redirected to {cfg.server_reference}",
               Properties(server_reference=cfg.server_reference))
        return None
    return Admitted(client_id, assigned)


def wait_before_accept(engine: Engine, admitted: Admitted, packet: Connect
                       ) -> Awaitable[str | None] | None:
    """After authentication, before :func:`accept`: None to accept now, or what the
    acceptance waits for (a room's :attr:`Engine.accept_wait`: the cluster brings a
    session from another node here first, so that CONNACK's Session Present is true
    cluster-wide [MQTT-3.2.2-2], [MQTT-3.1.2-5]). The caller applies the wait as I/O,
    then calls :func:`accept` — or :func:`refuse_busy` when the wait ended with a
    reason (the session could not be made ready in time)."""
    hook = engine.accept_wait
    if hook is None:
        return None
    return hook(admitted.client_id, packet.clean_start)


def refuse_busy(engine: Engine, client: Client, packet: Connect, why: str) -> None:
    """The session could not be made ready in time (a room's wait): CONNACK 0x89
    Server busy, "try again later" (MQTT 5.0 §3.2.2.2; 3.1.1: 3 Server unavailable)
    — rather than a new, empty session that would replace the client's [MQTT-3.1.2-5]."""
    refuse(engine, client, packet, R.SERVER_BUSY, why)


def accept(
    engine: Engine,
    client: Client,
    packet: Connect,
    admitted: Admitted,
    username: str | None,
    now: float,
    auth_data: bytes | None = None,
) -> Accepted | None:
    """The client proved ``username`` (None: anonymous): check its will, take over an
    existing connection of the same client id, open or resume its session, CONNACK.
    None when refused. ``auth_data`` is the enhanced authentication's last data for
    the CONNACK [MQTT-4.12.0-5] (only when the CONNECT had a method)."""
    limits = engine.connect_limits  # config.mqtt's values, native (issue 19)
    conn = client.conn
    v5 = packet.protocol_version == 5
    props = packet.properties
    client_id = admitted.client_id
    will = packet.will
    if will is not None:
        cfg = engine.config.mqtt
        if will.qos > cfg.maximum_qos:  # [MQTT-3.2.2-12]
            refuse(engine, client, packet, R.QOS_NOT_SUPPORTED, "will QoS not supported")
            return None
        if will.retain and not cfg.retain_available:
            refuse(engine, client, packet, R.RETAIN_NOT_SUPPORTED, "retained will not supported")
            return None
        if not will.topic:
            # [MQTT-4.7.3-1]: a Topic Name is at least one character; an empty Will Topic
            # breaks a MUST of the protocol: 5.0 CONNACK 0x82 Protocol Error (as an empty
            # PUBLISH topic is DISCONNECT 0x82), 3.1.1 closes without CONNACK (no return
            # code fits, [MQTT-3.2.2-6]).
            refuse(engine, client, packet, R.PROTOCOL_ERROR,
                   "will topic is empty [MQTT-4.7.3-1]")
            return None
        if v5 and will.properties.payload_format_indicator == 1 and not is_utf8(will.payload):
            # MQTT 5.0 §3.1.3.2.3: the Server MAY check the Will Payload against its
            # Payload Format Indicator: CONNACK 0x99 Payload format invalid.
            engine.metrics.payload_format_refusals += 1
            refuse(engine, client, packet, R.PAYLOAD_FORMAT_INVALID,
                   "will payload is not UTF-8 but its Payload Format Indicator is 1")
            return None
        try:
            validate_topic_name(will.topic, packet.protocol_version)
            response_topic = will.properties.response_topic
            if response_topic is not None and has_wildcard(response_topic):
                raise ProtocolViolation(
                    "will Response Topic contains a wildcard", spec_ref="MQTT-3.3.2-14"
                )
        except ProtocolViolation as exc:
            refuse(engine, client, packet, exc.reason_code, f"will topic: {exc}")
            return None
        problem = engine.will_topic_over_limits(will.topic)
        if problem is not None:
            # The broker's own limits (mqtt.max_topic_levels / max_topic_length), which a
            # PUBLISH to the same topic would meet (PUBACK 0x90): a will that could never
            # be published is refused now, not dropped at the disconnect. MQTT 5.0
            # §3.2.2.2: CONNACK 0x90 "The Will Topic Name is not malformed, but is not
            # accepted by this Server"; 3.1.1 has no return code for it: closed without
            # CONNACK [MQTT-3.2.2-6], as for any other will topic refused.
            refuse(engine, client, packet, R.TOPIC_NAME_INVALID, f"will topic {problem}")
            return None
        if not engine.may_publish_will(will, client_id, username):
            if v5:  # MQTT 5.0 can say why: CONNACK 0x87 Not authorized
                refuse(engine, client, packet, R.NOT_AUTHORIZED,
                       f"will topic {will.topic!r} not authorised")
                return None
            # MQTT 3.1.1: accepted, without its will (docs/auth.md, "Wills").
            log.warning(
                "client %r (user %r): will topic %r not authorised; connected without "
                "its will (MQTT 3.1.1 cannot be told)",
                client_id, username, will.topic, extra=client.log_extra(),
            )
            will = None
    gate = engine.connect_gate
    if gate is not None:
        banned = gate(client_id, username, client.peer)
        if banned is not None:  # MQTT 5.0 CONNACK 0x8A Banned (3.1.1: 0x05)
            refuse(engine, client, packet, R.BANNED, banned)
            return None
    _take_over(engine, client, client_id, packet.clean_start, now)
    # Session expiry: v5 from the property; 3.1.1 from Clean Session.
    if v5:
        expiry = props.session_expiry_interval or 0
    elif packet.clean_start:
        expiry = 0
    else:
        v3 = limits.persistent_session_expiry_v311
        expiry = NEVER_EXPIRES if v3 is None else v3
    granted_expiry = min(expiry, limits.max_session_expiry)
    session, present = engine.registry.open(
        client_id, packet.clean_start, granted_expiry, packet.protocol_version, now
    )
    session.username = username
    # Keep alive: the server may impose a lower one (v5 Server Keep Alive).
    keepalive = packet.keepalive
    server_keepalive: int | None = None
    max_keepalive = limits.max_keepalive
    if (keepalive == 0 or keepalive > max_keepalive) and max_keepalive < 65535:
        # Lowered to max_keepalive; MQTT 5.0 clients are told (Server Keep Alive),
        # MQTT 3.1.1 has no way to say it.
        keepalive = max_keepalive
        if v5:
            server_keepalive = keepalive
    conn.accept(
        keepalive=keepalive,
        client_receive_maximum=props.receive_maximum if v5 else None,
        client_max_packet_size=props.maximum_packet_size if v5 else None,
        client_topic_alias_maximum=props.topic_alias_maximum if v5 else None,
        outbound_aliases=limits.outbound_topic_aliases,
        request_problem_information=props.request_problem_information != 0,
    )
    connack_props = NO_PROPERTIES  # MQTT 3.1.1 CONNACK has none
    if v5:
        connack_props = _connack_properties(
            engine, packet, admitted.assigned, granted_expiry, expiry, server_keepalive
        )
        if props.authentication_method is not None:  # [MQTT-4.12.0-5]
            connack_props.authentication_method = props.authentication_method
            connack_props.authentication_data = auth_data
        hello = engine.bridge_hello
        if hello is not None and props.user_properties:
            # Another iotbroker's bridge says who it is (bridge/peers.py): answered in
            # the CONNACK's User Properties (MQTT 5.0 §3.2.2.3.16).
            connack_props.user_properties = hello(client_id, props)
    # MQTT 3.1 §3.2: the CONNACK's first byte is reserved (no Session Present flag).
    conn.send_packet(ConnAck(present and packet.protocol_version != MQTT31, 0, connack_props))
    client.session = session
    client.client_id = client_id
    client.will = will
    client.connected_at = now
    engine.store_live_will(session, will)  # survives a crash of the broker (issue 18)
    engine.clients[client_id] = client
    metrics = engine.metrics
    metrics.clients_connected += 1
    metrics.clients_maximum = max(metrics.clients_maximum, metrics.clients_connected)
    max_inflight = limits.max_inflight
    window = min(props.receive_maximum or 65535, max_inflight) if v5 else max_inflight
    session.attach(client, window, now)
    if engine.accepted is not None:  # the cluster claims the client id (docs/cluster.md)
        engine.accepted.append(client)
    return Accepted(present, keepalive, granted_expiry)


def _take_over(engine: Engine, client: Client, client_id: str, clean_start: bool,
               now: float) -> None:
    """Session takeover [MQTT-3.1.4-2] (v5 [MQTT-3.1.4-3]: DISCONNECT 0x8E)."""
    clients = engine.clients
    old = clients.get(client_id)  # a native look-up, where pop(k, None) is a call
    if old is None:
        return
    del clients[client_id]
    if old is client:
        return
    engine.metrics.session_takeovers += 1
    log.info("client %r taken over: new connection from %s closes %s", client_id, client.peer,
             old.peer, extra=old.log_extra())
    old.taken_over = True
    old.session_ended_by_takeover = clean_start
    old_session = old.session
    if old_session is not None and old_session.attached_to is old:
        old_session.detach(now)
    if old.conn.protocol_version == 5 and old.conn.connected:
        old.conn.send_packet(Disconnect(R.SESSION_TAKEN_OVER))
    engine.close(old)


def _connack_properties(
    engine: Engine,
    packet: Connect,
    assigned: str | None,
    granted_expiry: int,
    requested_expiry: int,
    server_keepalive: int | None,
) -> Properties:
    """CONNACK properties tell the truth about this server (MQTT 5.0 §3.2.2.3)."""
    cfg = engine.config.mqtt
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
