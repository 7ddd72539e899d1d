"""Frame -> packet: :func:`decode_packet` (MQTT 3.1.1 §2-3, MQTT 5.0 §2-3).

Rules of this room: everything *syntactic* is enforced here, nothing that needs
connection state or another client.

Enforced here (error class, reason code, statement):

* fixed-header flags: PUBREL/SUBSCRIBE/UNSUBSCRIBE 0b0010 [MQTT-3.6.1-1] [MQTT-3.8.1-1]
  [MQTT-3.10.1-1]; DISCONNECT [MQTT-3.14.1-1] and AUTH [MQTT-3.15.1-1] 0; all others 0
  [MQTT-2.2.2-2] (3.1.1) / [MQTT-2.1.3-1] (5.0) -> MalformedPacket 0x81; packet type 0,
  and 15 (AUTH) in 3.1.1, are reserved -> MalformedPacket.
* PUBLISH QoS 3 -> MalformedPacket [MQTT-3.3.1-4]; DUP with QoS 0 -> ProtocolViolation
  [MQTT-3.3.1-2]; Packet Identifier 0 -> ProtocolViolation [MQTT-2.3.1-1] (3.1.1) /
  [MQTT-2.2.1-3] (5.0) wherever a Packet Identifier is carried.
* UTF-8 strings (topic, client id, user name, will topic, filters, property strings):
  [MQTT-1.5.3-1/2] (3.1.1) / [MQTT-1.5.4-1/2] (5.0) -> MalformedPacket.
* CONNECT: protocol name "MQTT" with level 4/5, or "MQIsdp" with version 3 (MQTT 3.1,
  §3.1; otherwise decoded as 3.1.1); another level ->
  :class:`UnsupportedProtocolVersion` (0x84, [MQTT-3.1.2-2], carries the level; the broker
  answers CONNACK 0x01 / 0x84); any other name -> MalformedPacket [MQTT-3.1.2-1];
  reserved flag [MQTT-3.1.2-3]; Will QoS/Retain with Will Flag 0 and Will QoS 3 (ids per
  version, see ``_REFS``); 3.1.1 password without user name [MQTT-3.1.2-22].
* SUBSCRIBE: at least one filter -> ProtocolViolation [MQTT-3.8.3-3] (3.1.1) /
  [MQTT-3.8.3-2] (5.0); 3.1.1 reserved option bits or QoS 3 -> MalformedPacket
  [MQTT-3.8.3-4]; 5.0 reserved bits -> MalformedPacket [MQTT-3.8.3-5]; 5.0 QoS 3 or
  Retain Handling 3 -> ProtocolViolation (§3.8.3.1); several Subscription Identifiers ->
  ProtocolViolation (§3.8.2.1.2, in ``properties``).
* UNSUBSCRIBE: at least one filter -> ProtocolViolation [MQTT-3.10.3-2].
* 3.1.1 SUBACK return codes 0/1/2/0x80 only [MQTT-3.9.3-2].
* Fields running past the body, or bytes left after the last field -> MalformedPacket.
* MQTT 5.0 properties: see :mod:`iotbroker.codec.properties`.

Left to ``protocol/`` (connection state or semantics): empty topic without a Topic
Alias, Topic Alias above the maximum, wildcards in topic names [MQTT-3.3.2-2], topic
filter syntax [MQTT-4.7.1-*], empty client id rules, direction rules (which side may
send which packet or property), whether a v5 reason code is defined for that packet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from iotbroker.codec.framer import Framer
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
from iotbroker.codec.primitives import read_binary, read_u16, read_utf8
from iotbroker.codec.properties import WILL, decode_properties
from iotbroker.errors import (
    MalformedPacket,
    MqttError,
    ProtocolViolation,
    UnsupportedProtocolVersion,
)

# Statement ids that differ between MQTT 3.1.1 (index 0) and MQTT 5.0 (index 1).
_REFS: dict[str, tuple[str, str]] = {
    "flags": ("MQTT-2.2.2-2", "MQTT-2.1.3-1"),
    "packet_id": ("MQTT-2.3.1-1", "MQTT-2.2.1-3"),
    "will_qos_no_will": ("MQTT-3.1.2-13", "MQTT-3.1.2-11"),
    "will_retain_no_will": ("MQTT-3.1.2-15", "MQTT-3.1.2-13"),
    "will_qos_3": ("MQTT-3.1.2-14", "MQTT-3.1.2-12"),
    "no_filters": ("MQTT-3.8.3-3", "MQTT-3.8.3-2"),
}
_FLAGS_REF: Final = _REFS["flags"]
_PID_REF: Final = _REFS["packet_id"]

# Required low nibble of the first byte per packet type; None: PUBLISH (flags carry data).
_FLAGS: Final[tuple[int | None, ...]] = (None, 0, 0, None, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)
_FLAG_REF_BY_TYPE: Final = {6: "MQTT-3.6.1-1", 8: "MQTT-3.8.1-1", 10: "MQTT-3.10.1-1",
                              14: "MQTT-3.14.1-1", 15: "MQTT-3.15.1-1"}  # fmt: skip
_NAMES: Final = ("reserved", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL",
                 "PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ",
                 "PINGRESP", "DISCONNECT", "AUTH")  # fmt: skip


def _malformed(text: str, ref: str = "") -> MalformedPacket:
    return MalformedPacket(text, spec_ref=ref)


def _trailing(name: str, v5: bool) -> MalformedPacket:
    ref = "MQTT 5.0 §2.1.4" if v5 else "MQTT 3.1.1 §2.2.3"  # Remaining Length
    return MalformedPacket(f"{name}: bytes left over after the last field", spec_ref=ref)


def _packet_id(body: bytes, pos: int, v5: bool) -> tuple[int, int]:
    if pos + 2 > len(body):
        raise _malformed("Packet Identifier runs past the end of the packet")
    pid = (body[pos] << 8) | body[pos + 1]
    if pid == 0:
        raise ProtocolViolation("Packet Identifier must be non-zero", spec_ref=_PID_REF[v5])
    return pid, pos + 2


# ----------------------------------------------------------------------------- PUBLISH


def _publish(flags: int, body: bytes, start: int, v5: bool, memo: Framer | None) -> Publish:
    """PUBLISH (MQTT 3.1.1 §3.3, MQTT 5.0 §3.3), its body ``body[start:]``. The payload
    is the rest of the body (a read holding just this packet is decoded in place: the
    payload is the one copy of its bytes, issue 19).

    ``memo``: the stream's framer, whose ``last_topic_raw``/``last_topic`` hold its last
    well-formed, wildcard-free topic: the same bytes give that ``str`` without decoding
    or scanning them again (issue 19). Same packet, same errors, with or without it."""
    qos = (flags >> 1) & 3
    if qos == 3:
        raise _malformed("PUBLISH with QoS 3", "MQTT-3.3.1-4")
    dup = flags & 8 != 0
    if dup and qos == 0:
        raise ProtocolViolation("PUBLISH QoS 0 with DUP set", spec_ref="MQTT-3.3.1-2")
    n = len(body)
    if n - start < 2:
        raise _malformed("PUBLISH topic length runs past the end of the packet", "MQTT-3.3.2-1")
    pos = start + 2 + ((body[start] << 8) | body[start + 1])
    if pos > n:
        raise _malformed("PUBLISH topic runs past the end of the packet", "MQTT-3.3.2-1")
    raw = body[start + 2 : pos]
    if memo is not None and raw == memo.last_topic_raw:
        topic = memo.last_topic  # decoded and checked before: the same str
    else:
        try:
            topic = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed(
                "PUBLISH topic is not well-formed UTF-8", "MQTT-1.5.4-1" if v5 else "MQTT-1.5.3-1"
            ) from None
        if "\x00" in topic:
            raise _malformed(
                "PUBLISH topic contains U+0000", "MQTT-1.5.4-2" if v5 else "MQTT-1.5.3-2"
            )
        if memo is not None and "+" not in topic and "#" not in topic:
            # Wildcards are refused later, by protocol/ (connection state decides
            # first); a topic without any is remembered, and protocol/ knows the
            # remembered one needs no wildcard scan.
            memo.last_topic_raw = raw
            memo.last_topic = topic
    packet_id: int | None = None
    if qos:
        if pos + 2 > n:
            raise _malformed("PUBLISH Packet Identifier runs past the end of the packet")
        packet_id = (body[pos] << 8) | body[pos + 1]
        if packet_id == 0:
            raise ProtocolViolation(
                "PUBLISH QoS > 0 with Packet Identifier 0", spec_ref=_PID_REF[v5]
            )
        pos += 2
    props = NO_PROPERTIES
    if v5:
        if pos < n and body[pos] == 0:  # common: no properties
            pos += 1
        else:
            props, pos = decode_properties(body, pos, 3)
    return Publish(topic, body[pos:], qos, flags & 1 == 1, dup, packet_id, props, raw)


# ----------------------------------------------------------------------------- CONNECT


def _connect(body: bytes, _v5: bool) -> Connect:
    """CONNECT (MQTT 3.1.1 §3.1, MQTT 5.0 §3.1); the version comes from the packet itself."""
    name, pos = read_utf8(body, 0)
    if pos >= len(body):
        raise _malformed("CONNECT protocol level runs past the end of the packet")
    level = body[pos]
    pos += 1
    if name == "MQTT":
        if level not in (4, 5):
            raise UnsupportedProtocolVersion(
                f"protocol level {level} is not supported", protocol_level=level, protocol_name=name
            )
    elif name == "MQIsdp":
        # MQTT 3.1 (MQTT 3.1 §3.1: protocol name "MQIsdp", version 3); read as 3.1.1
        # from here on (its CONNECT has the same layout), with its own CONNECT rules
        # applied by the engine (client id 1-23 characters, CONNACK without flags).
        if level != 3:
            raise UnsupportedProtocolVersion(
                f"MQTT 3.1 (MQIsdp) with protocol version {level} is not supported",
                protocol_level=level,
                protocol_name=name,
            )
    else:
        raise _malformed(f"protocol name {name!r} is not 'MQTT'", "MQTT-3.1.2-1")
    v5 = level == 5
    if pos >= len(body):
        raise _malformed("CONNECT flags run past the end of the packet")
    cflags = body[pos]
    pos += 1
    if cflags & 0x01:
        raise _malformed("CONNECT reserved flag is not 0", "MQTT-3.1.2-3")
    will_flag = cflags & 0x04
    will_qos = (cflags >> 3) & 3
    will_retain = cflags & 0x20 != 0
    password_flag = cflags & 0x40
    username_flag = cflags & 0x80
    if not will_flag:
        if will_qos:
            raise _malformed(
                "Will QoS is not 0 while Will Flag is 0", _REFS["will_qos_no_will"][v5]
            )
        if will_retain:
            raise _malformed(
                "Will Retain is set while Will Flag is 0", _REFS["will_retain_no_will"][v5]
            )
    elif will_qos == 3:
        raise _malformed("Will QoS 3", _REFS["will_qos_3"][v5])
    if password_flag and not username_flag and not v5:
        raise _malformed("Password Flag set without User Name Flag", "MQTT-3.1.2-22")
    keepalive, pos = read_u16(body, pos)
    props = NO_PROPERTIES
    if v5:
        props, pos = decode_properties(body, pos, 1)
    client_id, pos = read_utf8(body, pos, v5)
    will: Will | None = None
    if will_flag:
        will_props = NO_PROPERTIES
        if v5:
            will_props, pos = decode_properties(body, pos, WILL)
        will_topic, pos = read_utf8(body, pos, v5)
        will_payload, pos = read_binary(body, pos)
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    username: str | None = None
    password: bytes | None = None
    if username_flag:
        username, pos = read_utf8(body, pos, v5)
    if password_flag:
        password, pos = read_binary(body, pos)
    if pos != len(body):
        raise _trailing("CONNECT", v5)
    return Connect(
        client_id, level, name, cflags & 0x02 != 0, keepalive, will, username, password, props
    )


def _connack(body: bytes, v5: bool) -> ConnAck:
    """CONNACK (MQTT 3.1.1 §3.2, MQTT 5.0 §3.2)."""
    if len(body) < 2:
        raise _malformed("CONNACK is shorter than 2 bytes")
    if body[0] & 0xFE:
        raise _malformed(
            "CONNACK acknowledge flags bits 7-1 are not 0",
            "MQTT-3.2.2-1" if v5 else "MQTT 3.1.1 §3.2.2.1",
        )
    pos = 2
    props = NO_PROPERTIES
    if v5:
        props, pos = decode_properties(body, pos, 2)
    if pos != len(body):
        raise _trailing("CONNACK", v5)
    return ConnAck(body[0] == 1, body[1], props)


# ----------------------------------------------------------------------------- acks


def _ack(
    cls: type[PubAck | PubRec | PubRel | PubComp], kind: int
) -> Callable[[bytes, bool], Packet]:
    name = _NAMES[kind]

    def decode(body: bytes, v5: bool) -> Packet:
        """PUBACK/PUBREC/PUBREL/PUBCOMP (§3.4-3.7); MQTT 5.0 short forms per §3.4.2.1."""
        n = len(body)
        if n < 2:
            raise _malformed(f"{name} is shorter than 2 bytes")
        pid, pos = _packet_id(body, 0, v5)
        if n == 2:  # the shared empty properties: no Properties() per ack
            return cls(pid, 0, NO_PROPERTIES)
        if not v5:
            raise _trailing(name, v5)
        reason = body[2]
        if n == 3:
            return cls(pid, reason, NO_PROPERTIES)
        props, pos = decode_properties(body, 3, kind)
        if pos != n:
            raise _trailing(name, v5)
        return cls(pid, reason, props)

    return decode


def _packet_id_and_properties(body: bytes, v5: bool, kind: int) -> tuple[int, Properties, int]:
    """Packet Identifier, then (MQTT 5.0) the properties of packet type ``kind``: the
    head of SUBSCRIBE, SUBACK and UNSUBSCRIBE. Returns (id, properties, next offset)."""
    pid, pos = _packet_id(body, 0, v5)
    if not v5:
        return pid, NO_PROPERTIES, pos
    props, pos = decode_properties(body, pos, kind)
    return pid, props, pos


# ----------------------------------------------------------------------------- SUBSCRIBE


def _subscribe(body: bytes, v5: bool) -> Subscribe:
    """SUBSCRIBE (MQTT 3.1.1 §3.8, MQTT 5.0 §3.8)."""
    pid, props, pos = _packet_id_and_properties(body, v5, 8)
    subs: list[Subscription] = []
    n = len(body)
    while pos < n:
        topic_filter, pos = read_utf8(body, pos, v5)
        if pos >= n:
            raise _malformed("SUBSCRIBE options byte missing")
        opts = body[pos]
        pos += 1
        qos = opts & 3
        if v5:
            if opts & 0xC0:
                raise _malformed("SUBSCRIBE reserved option bits are not 0", "MQTT-3.8.3-5")
            if qos == 3:
                raise ProtocolViolation("SUBSCRIBE Maximum QoS 3", spec_ref="MQTT 5.0 §3.8.3.1")
            rh = (opts >> 4) & 3
            if rh == 3:
                raise ProtocolViolation("SUBSCRIBE Retain Handling 3", spec_ref="MQTT 5.0 §3.8.3.1")
            subs.append(Subscription(topic_filter, qos, opts & 4 != 0, opts & 8 != 0, rh))
        else:
            if opts & 0xFC or qos == 3:
                raise _malformed("SUBSCRIBE reserved bits are not 0 or QoS is 3", "MQTT-3.8.3-4")
            subs.append(Subscription(topic_filter, qos))
    if not subs:
        raise ProtocolViolation(
            "SUBSCRIBE without a Topic Filter", spec_ref=_REFS["no_filters"][v5]
        )
    return Subscribe(pid, subs, props)


def _suback(body: bytes, v5: bool) -> SubAck:
    """SUBACK (MQTT 3.1.1 §3.9, MQTT 5.0 §3.9)."""
    pid, props, pos = _packet_id_and_properties(body, v5, 9)
    codes = list(body[pos:])
    if not v5:
        for code in codes:
            if code not in (0, 1, 2, 0x80):
                raise _malformed(f"SUBACK return code 0x{code:02X}", "MQTT-3.9.3-2")
    return SubAck(pid, codes, props)


def _unsubscribe(body: bytes, v5: bool) -> Unsubscribe:
    """UNSUBSCRIBE (MQTT 3.1.1 §3.10, MQTT 5.0 §3.10)."""
    pid, props, pos = _packet_id_and_properties(body, v5, 10)
    filters: list[str] = []
    n = len(body)
    while pos < n:
        topic_filter, pos = read_utf8(body, pos, v5)
        filters.append(topic_filter)
    if not filters:
        raise ProtocolViolation("UNSUBSCRIBE without a Topic Filter", spec_ref="MQTT-3.10.3-2")
    return Unsubscribe(pid, filters, props)


def _unsuback(body: bytes, v5: bool) -> UnsubAck:
    """UNSUBACK (MQTT 3.1.1 §3.11: Packet Identifier only; MQTT 5.0 §3.11)."""
    pid, pos = _packet_id(body, 0, v5)
    if not v5:
        if len(body) != 2:
            raise _trailing("UNSUBACK", v5)
        return UnsubAck(pid)
    props, pos = decode_properties(body, pos, 11)
    return UnsubAck(pid, list(body[pos:]), props)


# ----------------------------------------------------------------------------- the rest


def _pingreq(body: bytes, v5: bool) -> PingReq:
    """PINGREQ (§3.12): no body."""
    if body:
        raise _trailing("PINGREQ", v5)
    return PingReq()


def _pingresp(body: bytes, v5: bool) -> PingResp:
    """PINGRESP (§3.13): no body."""
    if body:
        raise _trailing("PINGRESP", v5)
    return PingResp()


def _reason_and_props(name: str, kind: int, body: bytes) -> tuple[int, Properties]:
    """MQTT 5.0 DISCONNECT/AUTH: reason 0 when absent, no properties when absent."""
    n = len(body)
    if n == 0:
        return 0, NO_PROPERTIES
    if n == 1:
        return body[0], NO_PROPERTIES
    props, pos = decode_properties(body, 1, kind)
    if pos != n:
        raise _trailing(name, True)
    return body[0], props


def _disconnect(body: bytes, v5: bool) -> Disconnect:
    """DISCONNECT (MQTT 3.1.1 §3.14: no body; MQTT 5.0 §3.14.2.1 short forms)."""
    if not v5:
        if body:
            raise _trailing("DISCONNECT", v5)
        return Disconnect()
    reason, props = _reason_and_props("DISCONNECT", 14, body)
    return Disconnect(reason, props)


def _auth(body: bytes, v5: bool) -> Auth:
    """AUTH (MQTT 5.0 §3.15); packet type 15 is reserved in MQTT 3.1.1 (§2.2.1)."""
    if not v5:
        raise _malformed("packet type 15 is reserved in MQTT 3.1.1", "MQTT 3.1.1 §2.2.1")
    reason, props = _reason_and_props("AUTH", 15, body)
    return Auth(reason, props)


def _reserved(body: bytes, v5: bool) -> Packet:
    raise _malformed("packet type 0 is reserved", "MQTT 5.0 §2.1.2" if v5 else "MQTT 3.1.1 §2.2.1")


_DECODERS: tuple[Callable[[bytes, bool], Packet], ...] = (
    _reserved,
    _connect,
    _connack,
    _reserved,  # PUBLISH is handled before the table
    _ack(PubAck, 4),
    _ack(PubRec, 5),
    _ack(PubRel, 6),
    _ack(PubComp, 7),
    _subscribe,
    _suback,
    _unsubscribe,
    _unsuback,
    _pingreq,
    _pingresp,
    _disconnect,
    _auth,
)


def decode_packet(first_byte: int, body: bytes, protocol_version: int) -> Packet:
    """Decode one frame from :class:`~iotbroker.codec.framer.Framer`.

    ``protocol_version`` is 4 (MQTT 3.1.1) or 5 (MQTT 5.0); CONNECT ignores it and uses
    its own Protocol Level. Raises :class:`MalformedPacket` (including
    :class:`UnsupportedProtocolVersion`) or :class:`ProtocolViolation`; never another
    exception for any input bytes.
    """
    ptype = first_byte >> 4
    flags = first_byte & 0x0F
    v5 = protocol_version == 5
    try:
        if ptype == 3:
            return _publish(flags, body, 0, v5, None)
        if flags != _FLAGS[ptype] and ptype:
            raise _malformed(
                f"{_NAMES[ptype]} fixed-header flags 0b{flags:04b} are invalid",
                _FLAG_REF_BY_TYPE.get(ptype) or _FLAGS_REF[v5],
            )
        return _DECODERS[ptype](body, v5)
    except MqttError:
        raise
    except (IndexError, ValueError) as exc:  # defensive: a read past the end
        raise _malformed(f"{_NAMES[ptype]}: {exc}") from exc


def decode_whole(buf: bytes, start: int, protocol_version: int,
                 memo: Framer | None = None) -> Packet:
    """Decode a read that is exactly one packet: its first byte at 0, its body
    ``buf[start:]`` (``Framer.whole_frame`` gave ``start``, the fixed header's length).

    The same packet, or the same error, as ``decode_packet(buf[0], buf[start:], ...)``,
    without copying the body out of the read first: a PUBLISH is decoded in place (its
    payload is the one copy), a PUBACK without reason code straight from its two bytes
    (issue 19: the QoS 1 path's objects per message). ``memo``: the stream's framer,
    whose last topic a PUBLISH to the same topic reuses (see ``_publish``).
    """
    first_byte = buf[0]
    ptype = first_byte >> 4
    if ptype == 3:
        try:
            return _publish(first_byte & 0x0F, buf, start, protocol_version == 5, memo)
        except MqttError:
            raise
        except (IndexError, ValueError) as exc:  # defensive: a read past the end
            raise _malformed(f"{_NAMES[ptype]}: {exc}") from exc
    if first_byte == 0x40 and len(buf) - start == 2:  # PUBACK, flags 0, as _ack decodes it
        pid = (buf[start] << 8) | buf[start + 1]
        if pid == 0:
            raise ProtocolViolation(
                "Packet Identifier must be non-zero", spec_ref=_PID_REF[protocol_version == 5]
            )
        return PubAck(pid, 0, NO_PROPERTIES)
    return decode_packet(first_byte, buf[start:], protocol_version)
