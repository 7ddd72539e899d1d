"""MQTT-SN v1.2 messages: bytes <-> frozen dataclasses, pure and synchronous.

References are to "MQTT For Sensor Networks (MQTT-SN) Protocol Specification Version
1.2" (Stanford-Clark, Truong; the Paho project's published text):

* §5.2 general format: ``Length`` is one octet when the whole message is shorter than
  256 octets, else ``0x01`` followed by two octets (§5.2.1); then ``MsgType`` (§5.2.2,
  Table 3); then the variable part.
* §5.3.4 ``Flags``: DUP (bit 7), QoS (bits 6-5: ``00`` 0, ``01`` 1, ``10`` 2, ``11``
  −1), Retain (bit 4), Will (bit 3), CleanSession (bit 2), TopicIdType (bits 1-0:
  ``00`` normal id, ``01`` predefined id, ``10`` short name, ``11`` reserved).
* §5.3.10 return codes: 0 accepted, 1 congestion, 2 invalid topic id, 3 not supported.
* §5.4.1-§5.4.25 one table per message; §5.5 the forwarder encapsulation.

A datagram that is not a well-formed message raises :class:`SnMalformed` (its text
says why); nothing else is raised. Strings (client id, topic names) are UTF-8.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from iotbroker.errors import MalformedPacket


class SnMalformed(MalformedPacket):
    """A datagram that is not a well-formed MQTT-SN v1.2 message (§5)."""


class MsgType(IntEnum):
    """§5.2.2, Table 3."""

    ADVERTISE = 0x00
    SEARCHGW = 0x01
    GWINFO = 0x02
    CONNECT = 0x04
    CONNACK = 0x05
    WILLTOPICREQ = 0x06
    WILLTOPIC = 0x07
    WILLMSGREQ = 0x08
    WILLMSG = 0x09
    REGISTER = 0x0A
    REGACK = 0x0B
    PUBLISH = 0x0C
    PUBACK = 0x0D
    PUBCOMP = 0x0E
    PUBREC = 0x0F
    PUBREL = 0x10
    SUBSCRIBE = 0x12
    SUBACK = 0x13
    UNSUBSCRIBE = 0x14
    UNSUBACK = 0x15
    PINGREQ = 0x16
    PINGRESP = 0x17
    DISCONNECT = 0x18
    WILLTOPICUPD = 0x1A
    WILLTOPICRESP = 0x1B
    WILLMSGUPD = 0x1C
    WILLMSGRESP = 0x1D
    ENCAPSULATED = 0xFE


class ReturnCode(IntEnum):
    """§5.3.10, Table 5."""

    ACCEPTED = 0x00
    CONGESTION = 0x01
    INVALID_TOPIC_ID = 0x02
    NOT_SUPPORTED = 0x03


class TopicIdType(IntEnum):
    """§5.3.4 TopicIdType (bits 1-0 of Flags)."""

    NORMAL = 0b00
    PREDEFINED = 0b01
    SHORT = 0b10


#: ProtocolId of CONNECT: 0x01 for MQTT-SN v1.2 (§5.3.8).
PROTOCOL_ID = 0x01
#: QoS −1 ("QoS level 3" in some texts): both QoS bits set (§5.3.4, §6.8).
QOS_MINUS_ONE = -1


# ------------------------------------------------------------------------- flags
@dataclass(frozen=True, slots=True)
class Flags:
    """§5.3.4: the Flags octet, field by field."""

    dup: bool = False
    qos: int = 0  # -1, 0, 1 or 2
    retain: bool = False
    will: bool = False
    clean_session: bool = False
    topic_id_type: int = TopicIdType.NORMAL

    def encode(self) -> int:
        qos_bits = 0b11 if self.qos == QOS_MINUS_ONE else self.qos
        return ((self.dup << 7) | (qos_bits << 5) | (self.retain << 4) | (self.will << 3)
                | (self.clean_session << 2) | self.topic_id_type)

    @staticmethod
    def decode(octet: int) -> Flags:
        qos_bits = (octet >> 5) & 0b11
        tid_type = octet & 0b11
        if tid_type == 0b11:
            raise SnMalformed("TopicIdType 0b11 is reserved (MQTT-SN 1.2 §5.3.4)")
        return Flags(
            dup=bool(octet & 0x80),
            qos=QOS_MINUS_ONE if qos_bits == 0b11 else qos_bits,
            retain=bool(octet & 0x10),
            will=bool(octet & 0x08),
            clean_session=bool(octet & 0x04),
            topic_id_type=tid_type,
        )


# ---------------------------------------------------------------------- messages
@dataclass(frozen=True, slots=True)
class Advertise:
    """§5.4.1: GwId, Duration (seconds until the next ADVERTISE)."""

    gw_id: int
    duration: int


@dataclass(frozen=True, slots=True)
class SearchGw:
    """§5.4.2: Radius (broadcast radius, hops)."""

    radius: int


@dataclass(frozen=True, slots=True)
class GwInfo:
    """§5.4.3: GwId, and GwAdd when a client answers for a gateway."""

    gw_id: int
    gw_add: bytes = b""


@dataclass(frozen=True, slots=True)
class Connect:
    """§5.4.4: Flags (Will, CleanSession), ProtocolId, Duration (keep alive), ClientId."""

    client_id: str
    duration: int
    will: bool = False
    clean_session: bool = True
    protocol_id: int = PROTOCOL_ID


@dataclass(frozen=True, slots=True)
class ConnAck:
    """§5.4.5."""

    return_code: int


@dataclass(frozen=True, slots=True)
class WillTopicReq:
    """§5.4.6."""


@dataclass(frozen=True, slots=True)
class WillTopic:
    """§5.4.7: Flags (QoS, Retain), WillTopic. Empty (no flags, no topic) deletes the
    will (§5.4.7, §6.4)."""

    topic: str
    qos: int = 0
    retain: bool = False
    empty: bool = False


@dataclass(frozen=True, slots=True)
class WillMsgReq:
    """§5.4.8."""


@dataclass(frozen=True, slots=True)
class WillMsg:
    """§5.4.9."""

    message: bytes


@dataclass(frozen=True, slots=True)
class Register:
    """§5.4.10: TopicId (0 from a client), MsgId, TopicName."""

    topic_id: int
    msg_id: int
    topic_name: str


@dataclass(frozen=True, slots=True)
class RegAck:
    """§5.4.11."""

    topic_id: int
    msg_id: int
    return_code: int


@dataclass(frozen=True, slots=True)
class Publish:
    """§5.4.12: Flags, TopicId (an id, or a short name's two octets), MsgId, Data."""

    topic_id_type: int
    topic_id: int
    msg_id: int
    data: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False


@dataclass(frozen=True, slots=True)
class PubAck:
    """§5.4.13."""

    topic_id: int
    msg_id: int
    return_code: int


@dataclass(frozen=True, slots=True)
class PubRec:
    """§5.4.14."""

    msg_id: int


@dataclass(frozen=True, slots=True)
class PubRel:
    """§5.4.14."""

    msg_id: int


@dataclass(frozen=True, slots=True)
class PubComp:
    """§5.4.14."""

    msg_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    """§5.4.15: Flags (DUP, QoS, TopicIdType), MsgId, TopicName or TopicId. A short
    name is its two octets as ``topic_name``; a predefined id is ``topic_id``."""

    msg_id: int
    topic_id_type: int
    topic_name: str = ""
    topic_id: int = 0
    qos: int = 0
    dup: bool = False


@dataclass(frozen=True, slots=True)
class SubAck:
    """§5.4.16: Flags (granted QoS), TopicId, MsgId, ReturnCode."""

    qos: int
    topic_id: int
    msg_id: int
    return_code: int


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """§5.4.17."""

    msg_id: int
    topic_id_type: int
    topic_name: str = ""
    topic_id: int = 0


@dataclass(frozen=True, slots=True)
class UnsubAck:
    """§5.4.18."""

    msg_id: int


@dataclass(frozen=True, slots=True)
class PingReq:
    """§5.4.19: ClientId only from a sleeping client waking up (§6.14)."""

    client_id: str = ""


@dataclass(frozen=True, slots=True)
class PingResp:
    """§5.4.20."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """§5.4.21: Duration only from a client going to sleep (§6.14)."""

    duration: int | None = None


@dataclass(frozen=True, slots=True)
class WillTopicUpd:
    """§5.4.22: empty (no flags, no topic) deletes the will."""

    topic: str
    qos: int = 0
    retain: bool = False
    empty: bool = False


@dataclass(frozen=True, slots=True)
class WillMsgUpd:
    """§5.4.23."""

    message: bytes


@dataclass(frozen=True, slots=True)
class WillTopicResp:
    """§5.4.24."""

    return_code: int


@dataclass(frozen=True, slots=True)
class WillMsgResp:
    """§5.4.25."""

    return_code: int


@dataclass(frozen=True, slots=True)
class Encapsulated:
    """§5.5: Ctrl (Radius in bits 1-0), Wireless Node Id, then one whole MQTT-SN
    message (kept as bytes: the gateway decodes it as if it came from the node)."""

    radius: int
    node_id: bytes
    message: bytes


SnMessage = (
    Advertise | SearchGw | GwInfo | Connect | ConnAck | WillTopicReq | WillTopic
    | WillMsgReq | WillMsg | Register | RegAck | Publish | PubAck | PubRec | PubRel
    | PubComp | Subscribe | SubAck | Unsubscribe | UnsubAck | PingReq | PingResp
    | Disconnect | WillTopicUpd | WillMsgUpd | WillTopicResp | WillMsgResp | Encapsulated
)

#: Longest message: the 3-octet Length field holds up to 65535 (§5.2.1).
MAX_LENGTH = 0xFFFF


# ------------------------------------------------------------------------ encode
def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _short(name: str) -> int:
    raw = name.encode()
    if len(raw) != 2:
        raise ValueError(f"a short topic name is two octets, not {raw!r}")
    return int.from_bytes(raw, "big")


def _body(msg: SnMessage) -> tuple[int, bytes]:
    match msg:
        case Publish():
            flags = Flags(dup=msg.dup, qos=msg.qos, retain=msg.retain,
                          topic_id_type=msg.topic_id_type).encode()
            return MsgType.PUBLISH, (bytes((flags,)) + _u16(msg.topic_id) + _u16(msg.msg_id)
                                     + msg.data)
        case PubAck():
            return MsgType.PUBACK, (_u16(msg.topic_id) + _u16(msg.msg_id)
                                    + bytes((msg.return_code,)))
        case Connect():
            flags = Flags(will=msg.will, clean_session=msg.clean_session).encode()
            return MsgType.CONNECT, (bytes((flags, msg.protocol_id)) + _u16(msg.duration)
                                     + msg.client_id.encode())
        case ConnAck():
            return MsgType.CONNACK, bytes((msg.return_code,))
        case Register():
            return MsgType.REGISTER, (_u16(msg.topic_id) + _u16(msg.msg_id)
                                      + msg.topic_name.encode())
        case RegAck():
            return MsgType.REGACK, (_u16(msg.topic_id) + _u16(msg.msg_id)
                                    + bytes((msg.return_code,)))
        case PubRec():
            return MsgType.PUBREC, _u16(msg.msg_id)
        case PubRel():
            return MsgType.PUBREL, _u16(msg.msg_id)
        case PubComp():
            return MsgType.PUBCOMP, _u16(msg.msg_id)
        case Subscribe() | Unsubscribe():
            qos = msg.qos if isinstance(msg, Subscribe) else 0
            dup = msg.dup if isinstance(msg, Subscribe) else False
            flags = Flags(dup=dup, qos=qos, topic_id_type=msg.topic_id_type).encode()
            if msg.topic_id_type == TopicIdType.PREDEFINED:
                topic = _u16(msg.topic_id)
            else:
                topic = msg.topic_name.encode()
            kind = MsgType.SUBSCRIBE if isinstance(msg, Subscribe) else MsgType.UNSUBSCRIBE
            return kind, bytes((flags,)) + _u16(msg.msg_id) + topic
        case SubAck():
            return MsgType.SUBACK, (bytes((Flags(qos=msg.qos).encode(),)) + _u16(msg.topic_id)
                                    + _u16(msg.msg_id) + bytes((msg.return_code,)))
        case UnsubAck():
            return MsgType.UNSUBACK, _u16(msg.msg_id)
        case PingReq():
            return MsgType.PINGREQ, msg.client_id.encode()
        case PingResp():
            return MsgType.PINGRESP, b""
        case Disconnect():
            return MsgType.DISCONNECT, b"" if msg.duration is None else _u16(msg.duration)
        case Advertise():
            return MsgType.ADVERTISE, bytes((msg.gw_id,)) + _u16(msg.duration)
        case SearchGw():
            return MsgType.SEARCHGW, bytes((msg.radius,))
        case GwInfo():
            return MsgType.GWINFO, bytes((msg.gw_id,)) + msg.gw_add
        case WillTopicReq():
            return MsgType.WILLTOPICREQ, b""
        case WillMsgReq():
            return MsgType.WILLMSGREQ, b""
        case WillTopic() | WillTopicUpd():
            kind = MsgType.WILLTOPIC if isinstance(msg, WillTopic) else MsgType.WILLTOPICUPD
            if msg.empty:
                return kind, b""
            flags = Flags(qos=msg.qos, retain=msg.retain).encode()
            return kind, bytes((flags,)) + msg.topic.encode()
        case WillMsg():
            return MsgType.WILLMSG, msg.message
        case WillMsgUpd():
            return MsgType.WILLMSGUPD, msg.message
        case WillTopicResp():
            return MsgType.WILLTOPICRESP, bytes((msg.return_code,))
        case WillMsgResp():
            return MsgType.WILLMSGRESP, bytes((msg.return_code,))
        case Encapsulated():
            return MsgType.ENCAPSULATED, bytes((msg.radius & 0b11,)) + msg.node_id + msg.message
    raise TypeError(f"not an MQTT-SN message: {msg!r}")  # pragma: no cover


def encode(msg: SnMessage) -> bytes:
    """The datagram for ``msg`` (§5.2: Length, MsgType, variable part). The
    encapsulation (§5.5) has no Length of its own: the Ctrl octet counts it."""
    kind, body = _body(msg)
    if kind == MsgType.ENCAPSULATED:
        assert isinstance(msg, Encapsulated)
        return bytes((3 + len(msg.node_id), kind)) + body
    length = len(body) + 2
    if length < 256:
        return bytes((length, kind)) + body
    length += 2
    if length > MAX_LENGTH:
        raise ValueError(f"MQTT-SN message of {length} octets exceeds 65535 (§5.2.1)")
    return b"\x01" + _u16(length) + bytes((kind,)) + body


def encode_short_name(name: str) -> int:
    """A short topic name's two octets as the TopicId value (§3, §6.7)."""
    return _short(name)


# ------------------------------------------------------------------------ decode
def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise SnMalformed(f"{what} is not UTF-8") from None


def _need(body: bytes, size: int, what: str, exact: bool = True) -> None:
    if len(body) < size or (exact and len(body) != size):
        raise SnMalformed(f"{what}: variable part of {len(body)} octets, expected "
                          f"{'' if exact else 'at least '}{size}")


def _be(body: bytes, at: int) -> int:
    return (body[at] << 8) | body[at + 1]


def split_header(data: bytes) -> tuple[int, bytes]:
    """(MsgType, variable part) of one datagram, checking the Length field (§5.2.1):
    a datagram is one message; its Length must be exactly the datagram's size."""
    size = len(data)
    if size < 2:
        raise SnMalformed(f"datagram of {size} octets is shorter than a header")
    if data[0] == 0x01:
        if size < 4:
            raise SnMalformed("3-octet Length field truncated")
        length, start = _be(data, 1), 3
        if length < 256:
            # §5.2.1: the 3-octet form is for messages of 256 octets or more.
            raise SnMalformed(f"3-octet Length {length} for a message shorter than 256")
    else:
        length, start = data[0], 1
    if data[start] == MsgType.ENCAPSULATED:
        # §5.5: Length counts Length, MsgType, Ctrl and the node id only.
        if length < 3 or length > size:
            raise SnMalformed(f"encapsulation Length {length} for {size} octets")
        return MsgType.ENCAPSULATED, data[start + 1:]
    if length != size:
        raise SnMalformed(f"Length field says {length} octets, datagram has {size}")
    return data[start], data[start + 1:]


def decode(data: bytes) -> SnMessage:
    """Decode one datagram (§5). Raises :class:`SnMalformed` for anything else,
    including an unknown MsgType (§5.2.2: reserved values)."""
    kind, body = split_header(data)
    if kind == MsgType.PUBLISH:
        _need(body, 5, "PUBLISH", exact=False)
        f = Flags.decode(body[0])
        return Publish(f.topic_id_type, _be(body, 1), _be(body, 3), bytes(body[5:]),
                       qos=f.qos, retain=f.retain, dup=f.dup)
    if kind in (MsgType.PUBACK, MsgType.REGACK):
        _need(body, 5, MsgType(kind).name)
        cls = PubAck if kind == MsgType.PUBACK else RegAck
        return cls(_be(body, 0), _be(body, 2), body[4])
    if kind in (MsgType.PUBREC, MsgType.PUBREL, MsgType.PUBCOMP, MsgType.UNSUBACK):
        _need(body, 2, MsgType(kind).name)
        msg_id = _be(body, 0)
        if kind == MsgType.PUBREC:
            return PubRec(msg_id)
        if kind == MsgType.PUBREL:
            return PubRel(msg_id)
        return PubComp(msg_id) if kind == MsgType.PUBCOMP else UnsubAck(msg_id)
    if kind == MsgType.CONNECT:
        _need(body, 4, "CONNECT", exact=False)
        f = Flags.decode(body[0])
        client_id = _text(bytes(body[4:]), "CONNECT ClientId")
        return Connect(client_id, _be(body, 2), will=f.will, clean_session=f.clean_session,
                       protocol_id=body[1])
    if kind == MsgType.REGISTER:
        _need(body, 5, "REGISTER", exact=False)
        return Register(_be(body, 0), _be(body, 2), _text(bytes(body[4:]), "REGISTER TopicName"))
    if kind in (MsgType.SUBSCRIBE, MsgType.UNSUBSCRIBE):
        name = MsgType(kind).name
        _need(body, 4, name, exact=False)
        f = Flags.decode(body[0])
        msg_id, rest = _be(body, 1), bytes(body[3:])
        topic_name, topic_id = "", 0
        if f.topic_id_type == TopicIdType.PREDEFINED:
            _need(rest, 2, f"{name} predefined TopicId")
            topic_id = _be(rest, 0)
        elif f.topic_id_type == TopicIdType.SHORT:
            _need(rest, 2, f"{name} short topic name")
            topic_name = _text(rest, f"{name} short topic name")
        else:
            topic_name = _text(rest, f"{name} TopicName")
        if kind == MsgType.SUBSCRIBE:
            if f.qos == QOS_MINUS_ONE:
                raise SnMalformed("SUBSCRIBE with QoS -1 (MQTT-SN 1.2 §5.4.15)")
            return Subscribe(msg_id, f.topic_id_type, topic_name, topic_id, qos=f.qos, dup=f.dup)
        return Unsubscribe(msg_id, f.topic_id_type, topic_name, topic_id)
    if kind == MsgType.SUBACK:
        _need(body, 6, "SUBACK")
        return SubAck(Flags.decode(body[0]).qos, _be(body, 1), _be(body, 3), body[5])
    if kind == MsgType.PINGREQ:
        return PingReq(_text(bytes(body), "PINGREQ ClientId"))
    if kind == MsgType.PINGRESP:
        _need(body, 0, "PINGRESP")
        return PingResp()
    if kind == MsgType.DISCONNECT:
        if not body:
            return Disconnect()
        _need(body, 2, "DISCONNECT")
        return Disconnect(_be(body, 0))
    if kind in (MsgType.WILLTOPIC, MsgType.WILLTOPICUPD):
        cls2 = WillTopic if kind == MsgType.WILLTOPIC else WillTopicUpd
        if not body:
            return cls2("", empty=True)
        f = Flags.decode(body[0])
        if f.qos == QOS_MINUS_ONE:
            raise SnMalformed("will QoS -1 (MQTT-SN 1.2 §5.4.7)")
        return cls2(_text(bytes(body[1:]), "WillTopic"), qos=f.qos, retain=f.retain)
    if kind == MsgType.WILLMSG:
        return WillMsg(bytes(body))
    if kind == MsgType.WILLMSGUPD:
        return WillMsgUpd(bytes(body))
    if kind in (MsgType.WILLTOPICREQ, MsgType.WILLMSGREQ):
        _need(body, 0, MsgType(kind).name)
        return WillTopicReq() if kind == MsgType.WILLTOPICREQ else WillMsgReq()
    if kind in (MsgType.CONNACK, MsgType.WILLTOPICRESP, MsgType.WILLMSGRESP):
        _need(body, 1, MsgType(kind).name)
        code = body[0]
        if kind == MsgType.CONNACK:
            return ConnAck(code)
        return WillTopicResp(code) if kind == MsgType.WILLTOPICRESP else WillMsgResp(code)
    if kind == MsgType.ADVERTISE:
        _need(body, 3, "ADVERTISE")
        return Advertise(body[0], _be(body, 1))
    if kind == MsgType.SEARCHGW:
        _need(body, 1, "SEARCHGW")
        return SearchGw(body[0])
    if kind == MsgType.GWINFO:
        _need(body, 1, "GWINFO", exact=False)
        return GwInfo(body[0], bytes(body[1:]))
    if kind == MsgType.ENCAPSULATED:
        length = data[0] if data[0] != 0x01 else _be(data, 1)
        header = 2 if data[0] != 0x01 else 4
        node_len = length - header - 1
        _need(body, 1 + node_len + 2, "encapsulation", exact=False)
        return Encapsulated(body[0] & 0b11, bytes(body[1:1 + node_len]),
                            bytes(body[1 + node_len:]))
    raise SnMalformed(f"unknown MsgType 0x{kind:02x} (MQTT-SN 1.2 §5.2.2)")
