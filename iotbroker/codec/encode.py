"""Packet -> bytes: :func:`encode_packet` and the PUBLISH fast path :func:`encode_publish`.

Rules of this room:

* Every packet type is encoded for both protocol levels (the broker sends CONNACK,
  PUBLISH, acks, SUBACK, UNSUBACK, PINGRESP, DISCONNECT, AUTH; the test client and the
  device simulator send the rest).
* For protocol level 4 the MQTT 5.0-only fields (reason codes on acks, properties, the
  UNSUBACK payload) are left out; AUTH does not exist in MQTT 3.1.1 (``ValueError``).
* MQTT 5.0 acks use the short forms when they can (§3.4.2.1, §3.14.2.1, §3.15.2.1), as
  mosquitto does: reason 0 and no properties -> Remaining Length 2 (PUBACK..PUBCOMP) or 0
  (DISCONNECT, AUTH); reason only -> Remaining Length 3 (acks) or 1 (DISCONNECT).
* CONNECT is written for its own ``protocol_version`` and ``protocol_name`` (so tests can
  build unsupported ones); the ``protocol_version`` argument is ignored for it.
* The encoder trusts its caller: values that cannot be represented raise ``ValueError``
  (our bug, never a peer's), but no protocol rule is checked (tests need to be able to
  write wrong packets). Properties not valid for a packet kind raise ``ValueError``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

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
    UnsubAck,
    Unsubscribe,
)
from iotbroker.codec.primitives import (
    VARINT_MAX,
    encode_binary,
    encode_utf8,
    encode_varint,
)
from iotbroker.codec.properties import WILL, encode_properties, encode_properties_body

_pack_u16: Final = struct.Struct(">H").pack
#: Every one-byte ``bytes``, by value, made once: a header byte without making an
#: object per packet (issue 19).
BYTE: Final = tuple(bytes((i,)) for i in range(256))
_pack_fh_pid: Final = struct.Struct(">BBH").pack  # first byte, 1-byte Remaining Length, packet id


def _frame(first: int, body: bytes) -> bytes:
    """Fixed header (first byte, Remaining Length) + body (MQTT 5.0 §2.1.1)."""
    n = len(body)
    if n < 0x80:
        return bytes((first, n)) + body
    if n > VARINT_MAX:
        raise ValueError(f"packet body of {n} bytes exceeds the Remaining Length maximum")
    return bytes((first,)) + encode_varint(n) + body


# ----------------------------------------------------------------------------- PUBLISH


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    properties_bytes: bytes | None,
    topic_bytes: bytes = b"",
) -> bytes:
    """One PUBLISH packet (MQTT 3.1.1 §3.3, MQTT 5.0 §3.3).

    ``properties_bytes`` is an already encoded property block (length prefix included,
    ``b"\\x00"`` for none) for MQTT 5.0, or ``None`` for MQTT 3.1.1. Encode it once per
    message and recipient kind with :func:`~iotbroker.codec.properties.encode_properties`.
    ``packet_id`` is required for QoS 1 and 2 and ignored for QoS 0 [MQTT-2.3.1-5].
    ``topic_bytes``: ``topic`` already encoded (UTF-8), e.g. the bytes it came in with
    (``Message.topic_raw``); ``b""``: ``topic`` is encoded here.
    """
    t = topic_bytes
    if not len(t):  # (``len``: read natively; a truth test of bytes is a call)
        t = topic.encode("utf-8")
    tl = len(t)
    if tl > 0xFFFF:
        raise ValueError(f"topic of {tl} bytes is longer than 65535")
    first = 0x30 | (qos << 1)
    if retain:
        first |= 1
    if dup:
        first |= 8
    length = 2 + tl + len(payload)
    if properties_bytes is not None:
        length += len(properties_bytes)
    else:
        properties_bytes = b""
    if qos:
        if not packet_id or packet_id > 0xFFFF or qos > 2:
            raise ValueError(f"PUBLISH QoS {qos} needs a Packet Identifier in 1..65535")
        length += 2
        if length < 0x80:
            # The common case in as few objects as it takes (issue 19: every object
            # made per message is on the latency path): one build of the packet from
            # its parts, each header byte a shared one-byte object. Compiled, the
            # ``%b`` format is one native build: no struct call by name, no tuple,
            # no temporary int or bytes.
            return b"%b%b%b%b%b%b%b%b%b" % (
                BYTE[first], BYTE[length], BYTE[tl >> 8], BYTE[tl & 0xFF], t,
                BYTE[packet_id >> 8], BYTE[packet_id & 0xFF], properties_bytes, payload)
        var = _pack_u16(tl) + t + _pack_u16(packet_id)
    else:
        if length < 0x80:
            return b"%b%b%b%b%b%b%b" % (BYTE[first], BYTE[length], BYTE[tl >> 8],
                                        BYTE[tl & 0xFF], t, properties_bytes, payload)
        var = _pack_u16(tl) + t
    if length > VARINT_MAX:
        raise ValueError(f"PUBLISH of {length} bytes exceeds the Remaining Length maximum")
    return b"".join((bytes((first,)), encode_varint(length), var, properties_bytes, payload))


def _publish(p: Publish, v5: bool) -> bytes:
    props = encode_properties(p.properties, 3) if v5 else None
    return encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id, props)


# ----------------------------------------------------------------------------- CONNECT


def _connect(p: Connect, _v5: bool) -> bytes:
    """CONNECT (§3.1), for ``p.protocol_version``."""
    v5 = p.protocol_version == 5
    flags = 0
    if p.clean_start:
        flags |= 0x02
    will = p.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.password is not None:
        flags |= 0x40
    if p.username is not None:
        flags |= 0x80
    parts = [
        encode_utf8(p.protocol_name),
        bytes((p.protocol_version, flags)),
        _pack_u16(p.keepalive),
    ]
    if v5:
        parts.append(encode_properties(p.properties, 1))
    parts.append(encode_utf8(p.client_id))
    if will is not None:
        if v5:
            parts.append(encode_properties(will.properties, WILL))
        parts.append(encode_utf8(will.topic))
        parts.append(encode_binary(will.payload))
    if p.username is not None:
        parts.append(encode_utf8(p.username))
    if p.password is not None:
        parts.append(encode_binary(p.password))
    return _frame(0x10, b"".join(parts))


def _connack(p: ConnAck, v5: bool) -> bytes:
    """CONNACK (§3.2): v3.1.1 return code or v5 reason code, v5 properties."""
    head = bytes((1 if p.session_present else 0, p.reason_code))
    if not v5:
        return b"\x20\x02" + head
    return _frame(0x20, head + encode_properties(p.properties, 2))


# ----------------------------------------------------------------------------- acks


def _ack(first: int, kind: int) -> Callable[[Any, bool], bytes]:
    def encode(p: PubAck | PubRec | PubRel | PubComp, v5: bool) -> bytes:
        """PUBACK/PUBREC/PUBREL/PUBCOMP (§3.4-3.7), MQTT 5.0 short forms (§3.4.2.1)."""
        if not v5:
            return _pack_fh_pid(first, 2, p.packet_id)
        props = p.properties
        body = b"" if props is NO_PROPERTIES else encode_properties_body(props, kind)
        if not body:
            if p.reason_code == 0:
                return _pack_fh_pid(first, 2, p.packet_id)
            return _pack_fh_pid(first, 3, p.packet_id) + bytes((p.reason_code,))
        return _frame(
            first,
            _pack_u16(p.packet_id) + bytes((p.reason_code,)) + encode_varint(len(body)) + body,
        )

    return encode


# ----------------------------------------------------------------------------- SUBSCRIBE


def _subscribe(p: Subscribe, v5: bool) -> bytes:
    """SUBSCRIBE (§3.8); MQTT 3.1.1 options carry only the QoS."""
    parts = [_pack_u16(p.packet_id)]
    if v5:
        parts.append(encode_properties(p.properties, 8))
    for s in p.subscriptions:
        parts.append(encode_utf8(s.topic_filter))
        opts = s.qos
        if v5:
            opts |= (4 if s.no_local else 0) | (8 if s.retain_as_published else 0)
            opts |= s.retain_handling << 4
        parts.append(bytes((opts,)))
    return _frame(0x82, b"".join(parts))


def _suback(p: SubAck, v5: bool) -> bytes:
    """SUBACK (§3.9)."""
    props = encode_properties(p.properties, 9) if v5 else b""
    return _frame(0x90, _pack_u16(p.packet_id) + props + bytes(p.reason_codes))


def _unsubscribe(p: Unsubscribe, v5: bool) -> bytes:
    """UNSUBSCRIBE (§3.10)."""
    parts = [_pack_u16(p.packet_id)]
    if v5:
        parts.append(encode_properties(p.properties, 10))
    parts.extend(encode_utf8(f) for f in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _unsuback(p: UnsubAck, v5: bool) -> bytes:
    """UNSUBACK (§3.11); MQTT 3.1.1 carries the Packet Identifier only."""
    if not v5:
        return _pack_fh_pid(0xB0, 2, p.packet_id)
    return _frame(
        0xB0, _pack_u16(p.packet_id) + encode_properties(p.properties, 11) + bytes(p.reason_codes)
    )


# ----------------------------------------------------------------------------- the rest


def _pingreq(_p: PingReq, _v5: bool) -> bytes:
    return b"\xc0\x00"


def _pingresp(_p: PingResp, _v5: bool) -> bytes:
    return b"\xd0\x00"


def _reason_props(
    first: int, kind: int, reason: int, props: Properties, short_reason: bool
) -> bytes:
    body = b"" if props is NO_PROPERTIES else encode_properties_body(props, kind)
    if not body:
        if reason == 0:
            return bytes((first, 0))
        if short_reason:
            return bytes((first, 1, reason))
    return _frame(first, bytes((reason,)) + encode_varint(len(body)) + body)


def _disconnect(p: Disconnect, v5: bool) -> bytes:
    """DISCONNECT (§3.14); MQTT 5.0 short forms per §3.14.2.1."""
    if not v5:
        return b"\xe0\x00"
    return _reason_props(0xE0, 14, p.reason_code, p.properties, True)


def _auth(p: Auth, v5: bool) -> bytes:
    """AUTH (MQTT 5.0 §3.15); Remaining Length 0 for Success without properties."""
    if not v5:
        raise ValueError("AUTH does not exist in MQTT 3.1.1")
    return _reason_props(0xF0, 15, p.reason_code, p.properties, False)


_ENCODERS: dict[type, Callable[[Any, bool], bytes]] = {
    Connect: _connect,
    ConnAck: _connack,
    Publish: _publish,
    PubAck: _ack(0x40, 4),
    PubRec: _ack(0x50, 5),
    PubRel: _ack(0x62, 6),
    PubComp: _ack(0x70, 7),
    Subscribe: _subscribe,
    SubAck: _suback,
    Unsubscribe: _unsubscribe,
    UnsubAck: _unsuback,
    PingReq: _pingreq,
    PingResp: _pingresp,
    Disconnect: _disconnect,
    Auth: _auth,
}


def encode_packet(packet: Packet, protocol_version: int) -> bytes:
    """The wire bytes of ``packet`` for protocol level 4 (MQTT 3.1.1) or 5 (MQTT 5.0)."""
    return _ENCODERS[type(packet)](packet, protocol_version == 5)
