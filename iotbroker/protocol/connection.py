"""One network connection's MQTT state machine, without I/O.

Bytes go in with :meth:`Connection.receive_data`; validated packets come out. Packets
to send go in with :meth:`send_packet` / :meth:`send_publish`; bytes come out with
:meth:`data_to_send`. Time is an argument. The server owns the socket and the timer.

Rules of this room:

* a peer's violation is returned as a value, not raised: :meth:`receive_data` returns
  the packets before it and records it in :attr:`Connection.failure`; nothing after it
  is read, and the caller closes the connection with its reason code [MQTT-4.8.0-1]
  (v5 [MQTT-4.13.1-1]);
* the first packet must be CONNECT [MQTT-3.1.0-1]; a second CONNECT is a protocol
  violation [MQTT-3.1.0-2]; nothing but AUTH is read after a refused CONNECT
  [MQTT-3.1.4-5] (the server closes the connection);
* packets only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP) are protocol
  errors from a client; AUTH does not exist in MQTT 3.1.1 (§2.2.1);
* a PUBLISH topic has no wildcards [MQTT-3.3.2-2] and is not empty unless a topic
  alias stands in (MQTT 5.0) [MQTT-4.7.3-1]; aliases are resolved here;
* our Receive Maximum bounds the client's unacknowledged QoS 1/2 PUBLISHes; one more
  is 0x93 Receive Maximum exceeded [MQTT-3.3.4-9] (MQTT 5.0 §3.3.4);
* a client must not send a Subscription Identifier in PUBLISH [MQTT-3.3.4-6];
* keepalive: silence for 1.5 × Keep Alive closes the connection [MQTT-3.1.2-24]
  (v5 [MQTT-3.1.2-22]);
* we never send a packet larger than the client's Maximum Packet Size
  [MQTT-3.1.2-24] (v5): a too-large PUBLISH is dropped [MQTT-3.1.2-25].
"""

from __future__ import annotations

from dataclasses import replace
from enum import Enum
from typing import Any, Final

from mypy_extensions import mypyc_attr

from iotbroker.codec.decode import decode_packet, decode_whole
from iotbroker.codec.encode import BYTE, encode_packet, encode_publish
from iotbroker.codec.enums import PacketType, ReasonCode
from iotbroker.codec.framer import Framer
from iotbroker.codec.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    UnsubAck,
)
from iotbroker.codec.properties import encode_properties
from iotbroker.errors import MalformedPacket, MqttError, ProtocolViolation
from iotbroker.message import Delivery, Sending
from iotbroker.protocol.topic_alias import InboundAliases, OutboundAliases

_WILDCARDS: Final = frozenset("+#")
_PUBLISH_KIND: Final = int(PacketType.PUBLISH)
_CONNECT_KIND: Final = int(PacketType.CONNECT)
#: An encoded Property Length of 0: a v5 packet with no properties.
_EMPTY_PROPERTY_BLOCK: Final = b"\x00"
_PROTOCOL_ERROR: Final = int(ReasonCode.PROTOCOL_ERROR)
_TOPIC_NAME_INVALID: Final = int(ReasonCode.TOPIC_NAME_INVALID)
_RECEIVE_MAXIMUM_EXCEEDED: Final = int(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED)
#: Reason codes from 0x80 up report a failure (MQTT 5.0 §2.4).
_FAILURE: Final = int(ReasonCode.UNSPECIFIED_ERROR)
_NO_ALIASES: Final = OutboundAliases(0)  # shared: aliases off (it is never written to)
_NO_IDS: Final[frozenset[int]] = frozenset()


class ConnectionState(Enum):
    """Where a connection is in its life (MQTT 3.1.1 §3.1.4, MQTT 5.0 §3.1.4, §4.12)."""

    AWAIT_CONNECT = 1  # socket open, no CONNECT yet
    AUTHENTICATING = 2  # MQTT 5.0 enhanced authentication in progress
    CONNECTED = 3  # CONNACK 0 sent
    CLOSING = 4  # we decided to close; input is ignored


#: Largest packet read before a CONNECT is accepted (a CONNECT with its will): an
#: unauthenticated socket cannot make the broker buffer the full Maximum Packet Size.
PRE_CONNECT_MAX_PACKET = 256 * 1024

_AWAIT_CONNECT: Final = ConnectionState.AWAIT_CONNECT
_CONNECTED: Final = ConnectionState.CONNECTED
_CLOSING: Final = ConnectionState.CLOSING
# Module constants are ``Final`` (issue 19): a C static in the compiled module, where
# a plain module name is a dict look-up per read. The packet kinds in ``_check`` are
# ``isinstance`` tests, not ``PacketType`` members (on Python 3.11 an Enum class has a
# metaclass ``__getattr__``: each ``PacketType.X`` read in compiled code makes a
# method-wrapper object).


#: The output of a connection with nothing queued. Every packet is at least 2 bytes,
#: so an empty ``_out`` always means nothing queued.
_NO_OUT: Final = b""


@mypyc_attr(allow_interpreted_subclasses=True)  # the bridge's Outlet (bridge/bridge.py)
class Connection(Framer):
    """The protocol state of one client connection.

    It frames its own inbound bytes: a :class:`~iotbroker.codec.framer.Framer` itself
    rather than holding one (one object per connection instead of two: 48 bytes per
    idle connection, issue 19). Only :meth:`receive_data` feeds it.
    """

    __slots__ = (
        "_inbound_aliases",
        "_inbound_unacked",
        "_max_packet_size",
        "_out",
        "_outbound_aliases",
        "_topic_alias_maximum",
        "client_max_packet_size",
        "client_receive_maximum",
        "failure",
        "keepalive",
        "last_received",
        "owner",
        "packets_queued",
        "protocol_version",
        "ready",
        "receive_maximum",
        "request_problem_information",
        "state",
    )

    def __init__(
        self,
        *,
        max_packet_size: int,
        receive_maximum: int,
        topic_alias_maximum: int,
        now: float,
        ready: list[Any] | None = None,
        owner: object = None,
    ) -> None:
        # Until CONNECT is accepted the peer is unauthenticated: it may make us buffer
        # at most PRE_CONNECT_MAX_PACKET bytes, not the full Maximum Packet Size.
        Framer.__init__(self, min(max_packet_size, PRE_CONNECT_MAX_PACKET))
        self._max_packet_size = max_packet_size
        self._inbound_aliases: InboundAliases | None = None
        self._topic_alias_maximum = topic_alias_maximum
        self._outbound_aliases = _NO_ALIASES
        self._inbound_unacked: set[int] | frozenset[int] = _NO_IDS
        #: Bytes queued this turn: empty while there are none, the one packet's bytes
        #: while there is one (the usual turn: no list per connection and turn, issue
        #: 19), a list of them from the second on.
        self._out: bytes | list[bytes] = _NO_OUT
        #: Packets queued for sending since the connection opened (for metrics).
        self.packets_queued = 0
        self.state = ConnectionState.AWAIT_CONNECT
        self.protocol_version = 4
        self.keepalive = 0
        self.last_received = now
        self.receive_maximum = receive_maximum
        self.client_receive_maximum = 65535
        self.client_max_packet_size = 0  # 0 = no limit (beyond the protocol's)
        self.request_problem_information = True
        #: The peer's first violation, recorded by :meth:`receive_data` (never cleared):
        #: the connection reads nothing after it and must be closed with its reason code.
        self.failure: MqttError | None = None
        #: Where ``owner`` is put when this connection gets bytes to send (once until
        #: :meth:`data_to_send` takes them): the server's list of connections to write.
        #: Data, not a call: the protocol layer never calls up into the server.
        self.ready = ready
        self.owner = owner

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes, now: float) -> list[Packet]:
        """Frame, decode and check ``data``; return the complete packets in order.

        A peer's violation is a value, not an exception: the packets decoded before the
        bad one are returned, the :class:`~iotbroker.errors.MqttError` is recorded in
        :attr:`failure` (once), and nothing more is read from this connection. The
        caller handles the packets, then closes the connection with the failure's
        reason code (the engine's ``fail``) [MQTT-4.8.0-1] (v5 [MQTT-4.13.1-1]).
        """
        self.last_received = now
        if self.state is _CLOSING or self.failure is not None:
            return []
        if data and self.state is _AWAIT_CONNECT and not self.bytes_received:
            early = _first_byte_problem(data[0])
            if early is not None:
                # Judged on the first byte: the body is never waited for.
                self.failure = early
                return []
        header = self.whole_frame(data) if type(data) is bytes else 0
        if header:
            # One whole packet, the usual read (issue 19): decoded from ``data`` itself.
            self.bytes_received += len(data)
            try:
                packet = self._check(decode_whole(data, header, self.protocol_version, self))
            except MqttError as exc:
                self.failure = exc
                return []
            if isinstance(packet, Connect):
                self.protocol_version = packet.protocol_version
            return [packet]
        frames: list[tuple[int, bytes]] = []
        failure: MqttError | None = self.feed_into(data, frames)
        packets: list[Packet] = []
        version = self.protocol_version
        try:
            for first_byte, body in frames:
                packet = self._check(decode_packet(first_byte, body, version))
                packets.append(packet)
                if isinstance(packet, Connect):
                    version = self.protocol_version = packet.protocol_version
        except MqttError as exc:
            failure = exc  # comes before any framing error further on in ``data``
        if failure is not None:
            self.failure = failure
        return packets

    def receive_one(self, data: bytes, now: float) -> Packet | None:
        """:meth:`receive_data` for the usual read of a connected client, exactly one
        whole packet: that packet, without a list (issue 19: one list per read on the
        QoS 1 path). None when the read is anything else (nothing is done: call
        :meth:`receive_data`), or when the packet is a violation (recorded in
        :attr:`failure`, as :meth:`receive_data` does; it then returns no packets)."""
        if self.state is not _CONNECTED or self.failure is not None or type(data) is not bytes:
            return None
        header = self.whole_frame(data)
        if not header:
            return None
        self.last_received = now
        self.bytes_received += len(data)
        try:
            return self._check(decode_whole(data, header, self.protocol_version, self))
        except MqttError as exc:
            self.failure = exc
            return None

    def _check(self, packet: Packet) -> Packet:
        """Check ``packet`` against the connection's state; returns it, or for a
        PUBLISH with a topic alias a new PUBLISH with the topic it stands for (a
        decoded packet is never changed).

        The packet's kind is told by ``isinstance`` (a type pointer compared, compiled),
        not by its ``TYPE`` (a class variable read by name on the instance, issue 19:
        look-ups by name per packet); ``TYPE`` is read only to name a refused one."""
        state = self.state
        if isinstance(packet, Publish) and state is not _AWAIT_CONNECT:
            return self._check_publish(packet)
        if state is _AWAIT_CONNECT:
            if not isinstance(packet, Connect):
                raise ProtocolViolation(
                    f"first packet must be CONNECT, got {packet.TYPE.name}",
                    spec_ref="MQTT-3.1.0-1",
                )
            # CONNECT is accepted once; anything after it waits for the CONNACK decision.
            self.state = ConnectionState.AUTHENTICATING
            return packet
        if isinstance(packet, Connect):
            raise ProtocolViolation("second CONNECT on one connection", spec_ref="MQTT-3.1.0-2")
        elif isinstance(packet, (ConnAck, SubAck, UnsubAck, PingResp)):  # server only
            raise ProtocolViolation(f"a client must not send {packet.TYPE.name}")
        elif isinstance(packet, Auth) and self.protocol_version != 5:
            raise MalformedPacket("AUTH does not exist in MQTT 3.1.1", spec_ref="MQTT-2.2.2-2")
        return packet

    def _check_publish(self, packet: Publish) -> Publish:
        props = packet.properties
        if self.protocol_version == 5:
            if props.topic_alias is not None:
                aliases = self._inbound_aliases
                if aliases is None:
                    aliases = self._inbound_aliases = InboundAliases(self._topic_alias_maximum)
                topic = aliases.resolve(packet.topic, props.topic_alias)
                # The alias is this connection's; the message carries the topic.
                props = replace(props, topic_alias=None)
                packet = replace(packet, topic=topic, properties=props, topic_raw=b"")
            if props.subscription_identifiers:
                raise ProtocolViolation(
                    "a client must not send a Subscription Identifier in PUBLISH",
                    spec_ref="MQTT-3.3.4-6",
                )
            response_topic = props.response_topic
            if response_topic is not None and ("+" in response_topic or "#" in response_topic):
                raise ProtocolViolation(
                    f"Response Topic {response_topic!r} contains a wildcard",
                    spec_ref="MQTT-3.3.2-14",
                )
        topic = packet.topic
        if not topic:
            raise ProtocolViolation(
                "PUBLISH topic name is empty", reason_code=_PROTOCOL_ERROR,
                spec_ref="MQTT-4.7.3-1",
            )
        # The framer's remembered topic has no wildcard (codec/decode.py): not scanned.
        if topic is not self.last_topic and ("+" in topic or "#" in topic):
            raise ProtocolViolation(
                f"PUBLISH topic name {topic!r} contains a wildcard",
                reason_code=_TOPIC_NAME_INVALID,
                spec_ref="MQTT-3.3.2-2",
            )
        if packet.qos and packet.packet_id is not None and self.protocol_version == 5:
            unacked = self._inbound_unacked
            if packet.packet_id not in unacked:
                if len(unacked) >= self.receive_maximum:
                    raise ProtocolViolation(
                        f"more than Receive Maximum ({self.receive_maximum}) unacknowledged "
                        "QoS 1/2 PUBLISH packets",
                        reason_code=_RECEIVE_MAXIMUM_EXCEEDED,
                        spec_ref="MQTT-3.3.4-9",
                    )
                if isinstance(unacked, frozenset):
                    unacked = self._inbound_unacked = set()
                unacked.add(packet.packet_id)
        return packet

    # ------------------------------------------------------------- life cycle
    def accept(
        self,
        keepalive: int,
        client_receive_maximum: int | None,
        client_max_packet_size: int | None,
        client_topic_alias_maximum: int | None,
        outbound_aliases: bool,
        request_problem_information: bool,
    ) -> None:
        """The CONNECT was accepted: record what the client told us about itself."""
        self.state = ConnectionState.CONNECTED
        self.max_packet_size = self._max_packet_size
        self.keepalive = keepalive
        self.client_receive_maximum = client_receive_maximum or 65535
        self.client_max_packet_size = client_max_packet_size or 0
        if outbound_aliases and client_topic_alias_maximum:
            self._outbound_aliases = OutboundAliases(client_topic_alias_maximum)
        self.request_problem_information = request_problem_information

    def close(self) -> None:
        """Stop reading: everything received from now on is ignored [MQTT-3.1.4-5]."""
        self.state = ConnectionState.CLOSING

    @property
    def connected(self) -> bool:
        return self.state is _CONNECTED

    def keepalive_deadline(self) -> float | None:
        """When the client will have been silent for 1.5 × Keep Alive [MQTT-3.1.2-24]."""
        if self.keepalive <= 0:
            return None
        return self.last_received + self.keepalive * 1.5

    # ----------------------------------------------------------------- output
    def send_packet(self, packet: Packet) -> None:
        """Encode and queue one packet; releases inbound quota on final acks."""
        unacked = self._inbound_unacked
        if (
            unacked
            and isinstance(unacked, set)
            and isinstance(packet, (PubAck, PubComp, PubRec))
            and (not isinstance(packet, PubRec) or packet.reason_code >= _FAILURE)
        ):
            unacked.discard(packet.packet_id)
        if not self.request_problem_information and self.protocol_version == 5:
            packet = _strip_problem_information(packet)
        data = encode_packet(packet, self.protocol_version)
        limit = self.client_max_packet_size
        if limit and len(data) > limit:
            # Drop the optional text first [MQTT-3.2.2-19], [MQTT-3.1.2-25].
            packet = _strip_problem_information(packet, force=True)
            data = encode_packet(packet, self.protocol_version)
            if len(data) > limit:
                return
        self._queue(data)

    def send_publish_ack(self, qos: int, packet_id: int, reason_code: int) -> None:
        """PUBACK (QoS 1) or PUBREC (QoS 2) for a received PUBLISH. The common case
        (reason 0, no properties: 4 bytes in both versions, MQTT 5.0 §3.4.2.1) is
        built directly; anything else goes through :meth:`send_packet`."""
        if reason_code:
            self.send_packet(PubAck(packet_id, reason_code) if qos == 1
                             else PubRec(packet_id, reason_code))
            return
        if qos == 1:
            unacked = self._inbound_unacked
            # (3.1.1 never leaves the shared empty set: one pointer compared)
            if unacked is not _NO_IDS and isinstance(unacked, set) and len(unacked):
                unacked.discard(packet_id)
            # 0x40 0x02 and the packet id's two bytes, shared one-byte objects: one
            # native build, compiled (no tuple, no ``bytes()`` call by name, no
            # temporary object; issue 19).
            self._queue(b"\x40\x02%b%b" % (BYTE[packet_id >> 8], BYTE[packet_id & 0xFF]))
        else:
            self._queue(b"\x50\x02%b%b" % (BYTE[packet_id >> 8], BYTE[packet_id & 0xFF]))

    def send_publish(
        self, delivery: Delivery, packet_id: int | None, dup: bool, now: float
    ) -> bool:
        """Encode one PUBLISH for this client; False if it is larger than the client's
        Maximum Packet Size and was therefore not sent [MQTT-3.1.2-25]."""
        message = delivery.message
        topic = message.topic
        # The topic's bytes: the PUBLISH's own, or encoded once per message by its
        # first forward (a message from elsewhere: cluster, bridge, $SYS, will, store).
        raw = message.topic_raw
        if not len(raw):  # (``len``: read natively; a truth test of bytes is a call)
            raw = message.topic_raw = topic.encode("utf-8")
        version = self.protocol_version
        alias, with_topic = 0, True
        if version == 5:
            alias, with_topic = self._outbound_aliases.choose(topic)
            props = _publish_properties(delivery, now, alias)
            if props is None and delivery.qos == 0:
                data = delivery.wire5
                if not data:
                    data = delivery.wire5 = encode_publish(
                        topic, message.payload, 0, delivery.retain, False, None,
                        _EMPTY_PROPERTY_BLOCK, raw,
                    )
            else:
                if props is None:
                    props_bytes = _EMPTY_PROPERTY_BLOCK
                else:
                    props_bytes = encode_properties(props, _PUBLISH_KIND)
                if with_topic:
                    data = encode_publish(
                        topic, message.payload, delivery.qos, delivery.retain, dup,
                        packet_id, props_bytes, raw,
                    )
                else:  # the alias alone (MQTT 5.0 §3.3.2.3.4)
                    data = encode_publish(
                        "", message.payload, delivery.qos, delivery.retain, dup,
                        packet_id, props_bytes,
                    )
        elif delivery.qos == 0:
            data = delivery.wire4
            if not data:
                data = delivery.wire4 = encode_publish(
                    topic, message.payload, 0, delivery.retain, False, None, None, raw
                )
        else:
            data = encode_publish(
                topic, message.payload, delivery.qos, delivery.retain, dup, packet_id, None,
                raw,
            )
        limit = self.client_max_packet_size
        if limit and len(data) > limit:
            return False
        if version == 5 and alias and with_topic:
            self._outbound_aliases.commit(topic, alias)
        self._queue(data)
        return True

    def send_outbox(
        self, entries: list[Delivery | Sending | tuple[Delivery | None, int, bool, float]],
        now: float,
    ) -> list[tuple[int, Delivery, bool]]:
        """Send a session's outbox in order: a QoS 0 PUBLISH as a bare delivery (sent
        at ``now``), a new QoS 1/2 PUBLISH as a :class:`~iotbroker.message.Sending`
        (its in-flight entry), a PUBLISH ``(delivery, packet id, dup, when)`` or a
        PUBREL ``(None, packet id, ...)``. Returns ``(packet id, delivery, dup)`` of the PUBLISHes
        larger than the client's Maximum Packet Size, which were not sent
        [MQTT-3.1.2-25] (the session discards them as if completed). A resend (DUP)
        is among them too: a client may come back with a smaller Maximum Packet Size
        than the one the message was first sent under, and a message that can never
        be resent must not hold a place in the in-flight window for ever."""
        refused: list[tuple[int, Delivery, bool]] | None = None  # made when needed
        for entry in entries:
            if isinstance(entry, Delivery):
                if not self.send_publish(entry, None, False, now):
                    if refused is None:
                        refused = []
                    refused.append((0, entry, False))
                continue
            if isinstance(entry, Sending):  # a new QoS 1/2 PUBLISH: the QoS 1 path
                if not self.send_publish(entry.delivery, entry.packet_id or None, entry.dup,
                                         entry.sent_at):
                    if refused is None:
                        refused = []
                    refused.append((entry.packet_id, entry.delivery, entry.dup))
                continue
            delivery, packet_id, dup, when = entry
            if delivery is None:
                self.send_packet(PubRel(packet_id))
            elif not self.send_publish(delivery, packet_id or None, dup, when):
                if refused is None:
                    refused = []
                refused.append((packet_id, delivery, dup))
        # None refused (always, but for a client's Maximum Packet Size): the shared
        # empty list, which nobody changes (issue 19: no list per message).
        return _NOTHING_REFUSED if refused is None else refused

    def _queue(self, data: bytes) -> None:
        self.packets_queued += 1
        out = self._out
        if isinstance(out, bytes):
            if len(out):  # (``len``: read natively; a truth test of bytes is a call)
                self._out = [out, data]
            else:
                self._out = data
                ready = self.ready
                if ready is not None:
                    ready.append(self.owner)
        else:
            out.append(data)

    def data_to_send(self) -> bytes:
        """All bytes queued since the last call, as one buffer (one write per turn)."""
        out = self._out
        if isinstance(out, bytes):
            if len(out):
                self._out = _NO_OUT
            return out
        self._out = _NO_OUT
        return b"".join(out)



#: What :meth:`Connection.send_outbox` returns when it sent everything: shared, never
#: changed (the engine only iterates it).
_NOTHING_REFUSED: Final[list[tuple[int, Delivery, bool]]] = []


def _first_byte_problem(first: int) -> MqttError | None:
    """The first byte a client sends must open a CONNECT (type 1) [MQTT-3.1.0-1] with
    its reserved flags 0 (MQTT 3.1.1 [MQTT-2.2.2-2], MQTT 5.0 [MQTT-2.1.3-1], §3.1.1).
    Anything else is decided on this one byte, without waiting for the body its
    Remaining Length announces (mosquitto does the same)."""
    # (an int constant: ``PacketType.CONNECT`` read here cost ~1,200 instructions per
    # connection, the Enum metaclass's look-up and an int/IntEnum comparison, issue 19)
    if first >> 4 != _CONNECT_KIND:
        kind = first >> 4
        name = PacketType(kind).name if kind else "reserved type 0"
        return ProtocolViolation(
            f"first packet must be CONNECT, got {name} (first byte 0x{first:02X})",
            spec_ref="MQTT-3.1.0-1",
        )
    if first & 0x0F:
        return MalformedPacket(
            f"CONNECT fixed-header flags are 0x{first & 0x0F:X}, must be 0",
            spec_ref="MQTT-2.2.2-2",
        )
    return None


def _publish_properties(delivery: Delivery, now: float, alias: int) -> Properties | None:
    """Properties of an outgoing PUBLISH: the message's forwarded ones [MQTT-3.3.2-4],
    [MQTT-3.3.2-15..20], the remaining expiry [MQTT-3.3.2-6], the subscription
    identifiers [MQTT-3.3.4-3] and the topic alias."""
    message = delivery.message
    base = message.properties
    expiry = message.remaining_expiry(now)
    if expiry is None and not delivery.subscription_identifiers and not alias:
        return None if base == _EMPTY else base
    return Properties(
        payload_format_indicator=base.payload_format_indicator,
        message_expiry_interval=expiry,
        content_type=base.content_type,
        response_topic=base.response_topic,
        correlation_data=base.correlation_data,
        subscription_identifiers=delivery.subscription_identifiers,
        user_properties=base.user_properties,
        topic_alias=alias or None,
    )


_EMPTY: Final = Properties()


def _strip_problem_information(packet: Packet, force: bool = False) -> Packet:
    """Remove Reason String and User Properties where the client asked us not to send
    them: only PUBLISH, CONNACK and DISCONNECT may carry them then [MQTT-3.1.2-29].
    With ``force`` (the packet would exceed the client's Maximum Packet Size) they go
    from every packet but PUBLISH [MQTT-3.2.2-19], [MQTT-3.2.2-20]."""
    if isinstance(packet, Publish):
        return packet
    if not force and isinstance(packet, (ConnAck, Disconnect)):
        return packet
    props = getattr(packet, "properties", None)
    if props is None or (props.reason_string is None and not props.user_properties):
        return packet
    new_props = replace(props, reason_string=None, user_properties=())
    return replace(packet, properties=new_props)
