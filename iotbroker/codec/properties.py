"""MQTT 5.0 properties: the table of MQTT 5.0 §2.2.2.2, decoding and encoding.

Rules of this room (all checks are syntactic; nothing here knows a connection):

* The property block is a Variable Byte Integer length then properties, each a
  Variable Byte Integer identifier and a value of the table's wire type (§2.2.2).
* An identifier not in the table, or one not valid for the packet it is in, makes a
  Malformed Packet (0x81): "A Control Packet which contains an Identifier which is not
  valid for its packet type, or contains a value not of the specified data type, is a
  Malformed Packet" (§2.2.2.2). A value running past the property length is malformed.
* Every property but User Property, and Subscription Identifier in PUBLISH, may appear
  at most once: "It is a Protocol Error to include ... more than once" (each property's
  section under §3) -> :class:`ProtocolViolation` (0x82).
* Value ranges the spec states per property: the 0/1 bytes (Payload Format Indicator,
  Request Problem/Response Information, Maximum QoS, Retain/Wildcard/Subscription
  Identifier/Shared Subscription Available), Receive Maximum 0, Maximum Packet Size 0,
  Subscription Identifier 0 -> Protocol Error (0x82). Topic Alias 0 -> 0x94 Topic Alias
  Invalid [MQTT-3.3.2-8]; the upper bound (Topic Alias Maximum) is connection state and
  is checked by ``protocol/`` (``topic_alias.py``).
* Direction rules (e.g. a Client must not send Subscription Identifier in PUBLISH
  [MQTT-3.3.4-6], a Server must not send Session Expiry Interval in DISCONNECT
  [MQTT-3.14.2-2]) belong to ``protocol/``.

Will Properties (§3.1.3.2) are a pseudo packet kind of their own, :data:`WILL`.
"""

from __future__ import annotations

from operator import attrgetter
from typing import NamedTuple

from iotbroker.codec.enums import PacketType, PropertyId, ReasonCode
from iotbroker.codec.packets import NO_PROPERTIES, Properties
from iotbroker.codec.primitives import (
    encode_binary,
    encode_string_pair,
    encode_u16,
    encode_u32,
    encode_utf8,
    encode_varint,
    read_binary,
    read_string_pair,
    read_u16,
    read_u32,
    read_utf8,
    read_varint,
)
from iotbroker.errors import MalformedPacket, ProtocolViolation

#: Pseudo packet kind for the Will Properties of CONNECT (MQTT 5.0 §3.1.3.2).
WILL = 16

# Wire types (MQTT 5.0 §1.5).
BYTE = 1
TWO_BYTE_INT = 2
FOUR_BYTE_INT = 3
VARIABLE_BYTE_INT = 4
UTF8_STRING = 5
BINARY_DATA = 6
UTF8_STRING_PAIR = 7

_P = PacketType
_CONNECT, _CONNACK, _PUBLISH = int(_P.CONNECT), int(_P.CONNACK), int(_P.PUBLISH)
_PUBACK, _PUBREC, _PUBREL, _PUBCOMP = (
    int(_P.PUBACK),
    int(_P.PUBREC),
    int(_P.PUBREL),
    int(_P.PUBCOMP),
)
_SUBSCRIBE, _SUBACK = int(_P.SUBSCRIBE), int(_P.SUBACK)
_UNSUBSCRIBE, _UNSUBACK = int(_P.UNSUBSCRIBE), int(_P.UNSUBACK)
_DISCONNECT, _AUTH = int(_P.DISCONNECT), int(_P.AUTH)
_TOPIC_ALIAS_INVALID = int(ReasonCode.TOPIC_ALIAS_INVALID)  # 0x94


class PropertySpec(NamedTuple):
    """One row of MQTT 5.0 §2.2.2.2."""

    id: int
    name: str  #: field of :class:`Properties`
    wire: int  #: one of the wire type constants above
    kinds: frozenset[int]  #: PacketType values (and :data:`WILL`) it may appear in
    section: str  #: where the spec defines it (for error text)
    boolean: bool = False  #: value must be 0 or 1
    nonzero: bool = False  #: value 0 is a Protocol Error


def _k(*kinds: int) -> frozenset[int]:
    return frozenset(kinds)


_ACKS = (_PUBACK, _PUBREC, _PUBREL, _PUBCOMP)
_I = PropertyId

#: id -> spec, MQTT 5.0 §2.2.2.2, in identifier order (encoding follows this order).
PROPERTY_TABLE: dict[int, PropertySpec] = {
    s.id: s
    for s in (
        PropertySpec(_I.PAYLOAD_FORMAT_INDICATOR, "payload_format_indicator", BYTE,
                     _k(_PUBLISH, WILL), "3.3.2.3.2", boolean=True),
        PropertySpec(_I.MESSAGE_EXPIRY_INTERVAL, "message_expiry_interval", FOUR_BYTE_INT,
                     _k(_PUBLISH, WILL), "3.3.2.3.3"),
        PropertySpec(_I.CONTENT_TYPE, "content_type", UTF8_STRING,
                     _k(_PUBLISH, WILL), "3.3.2.3.9"),
        PropertySpec(_I.RESPONSE_TOPIC, "response_topic", UTF8_STRING,
                     _k(_PUBLISH, WILL), "3.3.2.3.5"),
        PropertySpec(_I.CORRELATION_DATA, "correlation_data", BINARY_DATA,
                     _k(_PUBLISH, WILL), "3.3.2.3.6"),
        PropertySpec(_I.SUBSCRIPTION_IDENTIFIER, "subscription_identifiers", VARIABLE_BYTE_INT,
                     _k(_PUBLISH, _SUBSCRIBE), "3.8.2.1.2", nonzero=True),
        PropertySpec(_I.SESSION_EXPIRY_INTERVAL, "session_expiry_interval", FOUR_BYTE_INT,
                     _k(_CONNECT, _CONNACK, _DISCONNECT), "3.1.2.11.2"),
        PropertySpec(_I.ASSIGNED_CLIENT_IDENTIFIER, "assigned_client_identifier", UTF8_STRING,
                     _k(_CONNACK), "3.2.2.3.7"),
        PropertySpec(_I.SERVER_KEEP_ALIVE, "server_keep_alive", TWO_BYTE_INT,
                     _k(_CONNACK), "3.2.2.3.14"),
        PropertySpec(_I.AUTHENTICATION_METHOD, "authentication_method", UTF8_STRING,
                     _k(_CONNECT, _CONNACK, _AUTH), "3.1.2.11.9"),
        PropertySpec(_I.AUTHENTICATION_DATA, "authentication_data", BINARY_DATA,
                     _k(_CONNECT, _CONNACK, _AUTH), "3.1.2.11.10"),
        PropertySpec(_I.REQUEST_PROBLEM_INFORMATION, "request_problem_information", BYTE,
                     _k(_CONNECT), "3.1.2.11.7", boolean=True),
        PropertySpec(_I.WILL_DELAY_INTERVAL, "will_delay_interval", FOUR_BYTE_INT,
                     _k(WILL), "3.1.3.2.2"),
        PropertySpec(_I.REQUEST_RESPONSE_INFORMATION, "request_response_information", BYTE,
                     _k(_CONNECT), "3.1.2.11.6", boolean=True),
        PropertySpec(_I.RESPONSE_INFORMATION, "response_information", UTF8_STRING,
                     _k(_CONNACK), "3.2.2.3.15"),
        PropertySpec(_I.SERVER_REFERENCE, "server_reference", UTF8_STRING,
                     _k(_CONNACK, _DISCONNECT), "3.2.2.3.16"),
        PropertySpec(_I.REASON_STRING, "reason_string", UTF8_STRING,
                     _k(_CONNACK, *_ACKS, _SUBACK, _UNSUBACK, _DISCONNECT, _AUTH), "3.2.2.3.9"),
        PropertySpec(_I.RECEIVE_MAXIMUM, "receive_maximum", TWO_BYTE_INT,
                     _k(_CONNECT, _CONNACK), "3.1.2.11.3", nonzero=True),
        PropertySpec(_I.TOPIC_ALIAS_MAXIMUM, "topic_alias_maximum", TWO_BYTE_INT,
                     _k(_CONNECT, _CONNACK), "3.1.2.11.5"),
        PropertySpec(_I.TOPIC_ALIAS, "topic_alias", TWO_BYTE_INT,
                     _k(_PUBLISH), "3.3.2.3.4", nonzero=True),
        PropertySpec(_I.MAXIMUM_QOS, "maximum_qos", BYTE,
                     _k(_CONNACK), "3.2.2.3.4", boolean=True),
        PropertySpec(_I.RETAIN_AVAILABLE, "retain_available", BYTE,
                     _k(_CONNACK), "3.2.2.3.5", boolean=True),
        PropertySpec(_I.USER_PROPERTY, "user_properties", UTF8_STRING_PAIR,
                     _k(_CONNECT, _CONNACK, _PUBLISH, WILL, *_ACKS, _SUBSCRIBE, _SUBACK,
                        _UNSUBSCRIBE, _UNSUBACK, _DISCONNECT, _AUTH), "3.1.2.11.8"),
        PropertySpec(_I.MAXIMUM_PACKET_SIZE, "maximum_packet_size", FOUR_BYTE_INT,
                     _k(_CONNECT, _CONNACK), "3.1.2.11.4", nonzero=True),
        PropertySpec(_I.WILDCARD_SUBSCRIPTION_AVAILABLE, "wildcard_subscription_available",
                     BYTE, _k(_CONNACK), "3.2.2.3.11", boolean=True),
        PropertySpec(_I.SUBSCRIPTION_IDENTIFIER_AVAILABLE, "subscription_identifier_available",
                     BYTE, _k(_CONNACK), "3.2.2.3.12", boolean=True),
        PropertySpec(_I.SHARED_SUBSCRIPTION_AVAILABLE, "shared_subscription_available",
                     BYTE, _k(_CONNACK), "3.2.2.3.13", boolean=True),
    )
}  # fmt: skip

# Dense lookup by identifier for the decoder (ids are all below 0x2B).
_BY_ID: list[PropertySpec | None] = [PROPERTY_TABLE.get(i) for i in range(0x80)]
_ORDERED: tuple[PropertySpec, ...] = tuple(PROPERTY_TABLE[i] for i in sorted(PROPERTY_TABLE))
# All fields in table order in one C call, and their "absent" values, for a fast empty test.
_get_all = attrgetter(*(spec.name for spec in _ORDERED))
_ABSENT = _get_all(NO_PROPERTIES)
_SUB_ID = int(_I.SUBSCRIPTION_IDENTIFIER)
_USER = int(_I.USER_PROPERTY)
_TOPIC_ALIAS = int(_I.TOPIC_ALIAS)

_KIND_NAMES = {int(t): t.name for t in PacketType} | {WILL: "Will Properties"}


def decode_properties(buf: bytes, pos: int, kind: int) -> tuple[Properties, int]:
    """Read a property block (length prefix included) at ``pos`` for packet ``kind``.

    Returns the shared :data:`NO_PROPERTIES` when the block is empty (Property Length 0,
    [MQTT-2.2.2-1]); never mutate a decoded ``Properties``. Errors: see the module doc.
    """
    length, pos = read_varint(buf, pos)
    if length == 0:
        return NO_PROPERTIES, pos
    end = pos + length
    if end > len(buf):
        raise MalformedPacket(
            "property length runs past the end of the packet", spec_ref="MQTT 5.0 §2.2.2.1"
        )
    props = Properties()
    seen = 0
    user: list[tuple[str, str]] | None = None
    sub_ids: list[int] | None = None
    while pos < end:
        pid, pos = read_varint(buf, pos)
        spec = _BY_ID[pid] if pid < 0x80 else None
        if spec is None:
            raise MalformedPacket(
                f"unknown property identifier 0x{pid:02X}", spec_ref="MQTT 5.0 §2.2.2.2"
            )
        if kind not in spec.kinds:
            raise MalformedPacket(
                f"property {spec.name} (0x{pid:02X}) is not valid in {_KIND_NAMES.get(kind)}",
                spec_ref="MQTT 5.0 §2.2.2.2",
            )
        wire = spec.wire
        value: object
        if wire == UTF8_STRING_PAIR:
            pair, pos = read_string_pair(buf, pos, True)
            if user is None:
                user = []
            user.append(pair)
            continue
        if wire == BYTE:
            if pos >= end:
                raise MalformedPacket(
                    "property value runs past the property length", spec_ref="MQTT 5.0 §2.2.2.1"
                )
            ival = buf[pos]
            pos += 1
            value = ival
        elif wire == TWO_BYTE_INT:
            ival, pos = read_u16(buf, pos)
            value = ival
        elif wire == FOUR_BYTE_INT:
            ival, pos = read_u32(buf, pos)
            value = ival
        elif wire == VARIABLE_BYTE_INT:
            ival, pos = read_varint(buf, pos)
            value = ival
        elif wire == UTF8_STRING:
            value, pos = read_utf8(buf, pos, True)
            ival = -1
        else:  # BINARY_DATA
            value, pos = read_binary(buf, pos)
            ival = -1
        if spec.boolean and ival > 1:
            raise ProtocolViolation(
                f"property {spec.name} must be 0 or 1, got {ival}",
                spec_ref=f"MQTT 5.0 §{spec.section}",
            )
        if spec.nonzero and ival == 0:
            if pid == _TOPIC_ALIAS:
                raise ProtocolViolation("Topic Alias 0 is not permitted", _TOPIC_ALIAS_INVALID,
                                        "MQTT-3.3.2-8")
            raise ProtocolViolation(
                f"property {spec.name} must not be 0", spec_ref=f"MQTT 5.0 §{spec.section}"
            )
        if pid == _SUB_ID:
            if sub_ids is None:
                sub_ids = [ival]
                continue
            if kind == _PUBLISH:  # several in PUBLISH (§3.3.2.3.8)
                sub_ids.append(ival)
                continue
            raise ProtocolViolation(
                "Subscription Identifier included more than once", spec_ref="MQTT 5.0 §3.8.2.1.2"
            )
        bit = 1 << pid
        if seen & bit:
            raise ProtocolViolation(
                f"property {spec.name} included more than once",
                spec_ref=f"MQTT 5.0 §{spec.section}",
            )
        seen |= bit
        setattr(props, spec.name, value)
    if pos != end:
        raise MalformedPacket(
            "property value runs past the property length", spec_ref="MQTT 5.0 §2.2.2.1"
        )
    if user is not None:
        props.user_properties = tuple(user)
    if sub_ids is not None:
        props.subscription_identifiers = tuple(sub_ids)
    return props, pos


def _encode_value(spec: PropertySpec, value: object) -> bytes:
    wire = spec.wire
    if wire == BYTE:
        assert isinstance(value, int)
        if not 0 <= value <= 0xFF:
            raise ValueError(f"property {spec.name}={value} does not fit in a byte")
        return bytes((spec.id, value))
    head = bytes((spec.id,))
    if wire == TWO_BYTE_INT:
        assert isinstance(value, int)
        return head + encode_u16(value)
    if wire == FOUR_BYTE_INT:
        assert isinstance(value, int)
        return head + encode_u32(value)
    if wire == UTF8_STRING:
        assert isinstance(value, str)
        return head + encode_utf8(value)
    assert isinstance(value, bytes)  # BINARY_DATA
    return head + encode_binary(value)


def encode_properties_body(props: Properties, kind: int) -> bytes:
    """The properties of ``props`` valid for ``kind``, without the length prefix.

    Raises ``ValueError`` for a property set on a packet kind that may not carry it
    (our own misuse, not a peer's) or a value that does not fit its wire type.
    """
    if props is NO_PROPERTIES:
        return b""
    values = _get_all(props)
    if values == _ABSENT:
        return b""
    parts: list[bytes] = []
    for spec, value in zip(_ORDERED, values, strict=True):
        if value is None or value == ():
            continue
        if kind not in spec.kinds:
            raise ValueError(f"property {spec.name} is not valid in {_KIND_NAMES.get(kind, kind)}")
        if spec.id == _SUB_ID:
            assert isinstance(value, tuple)
            if kind != _PUBLISH and len(value) > 1:
                raise ValueError("only PUBLISH may carry several Subscription Identifiers")
            parts.extend(b"\x0b" + encode_varint(v) for v in value)
        elif spec.id == _USER:
            assert isinstance(value, tuple)
            parts.extend(b"\x26" + encode_string_pair(p) for p in value)
        else:
            parts.append(_encode_value(spec, value))
    return b"".join(parts)


def encode_properties(props: Properties, kind: int) -> bytes:
    """A property block for ``kind``: Variable Byte Integer length, then the properties.

    An empty ``props`` encodes as ``b"\\x00"`` (Property Length 0, [MQTT-2.2.2-1]).
    """
    body = encode_properties_body(props, kind)
    if not body:
        return b"\x00"
    return encode_varint(len(body)) + body
