"""One slotted dataclass per MQTT control packet, shared by MQTT 3.1.1 and 5.0.

Fields that exist only in MQTT 5.0 (reason codes on acks, properties) keep their
defaults when a packet is read from or written for an MQTT 3.1.1 peer; the encoder
leaves them out for protocol level 4. Packets are plain data: no behaviour, no I/O.

The classes are slotted but not frozen: constructing a frozen dataclass costs an
``object.__setattr__`` per field, and PUBLISH is on the hot path. Treat a packet as
immutable once built; use :func:`dataclasses.replace` to derive a changed copy.

Compiled by mypyc (issue 19): ``TYPE`` is a ``ClassVar`` (an unannotated class
attribute in front of fields without defaults is read by mypyc as a field with a
default), and the packets of every QoS 1/2 message (PUBLISH and the four acks) and of
every connection (CONNECT, CONNACK) write their ``__init__`` out: the one the dataclass
would generate stays interpreted under mypyc. A decoded ack without properties shares
:data:`NO_PROPERTIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from iotbroker.codec.enums import PacketType

UserProperties = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Properties:
    """MQTT 5.0 properties (§2.2.2). ``None`` / empty means absent.

    ``subscription_identifiers`` may hold several values in PUBLISH (§3.3.2.3.8) and
    at most one in SUBSCRIBE (§3.8.2.1.2). ``user_properties`` keeps order and
    duplicates (§3.3.2.3.7).
    """

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: UserProperties = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None


#: Shared "no properties" value; never mutate it.
NO_PROPERTIES: Final = Properties()


@dataclass(slots=True)
class Will:
    """The Will part of CONNECT (MQTT 3.1.1 §3.1.2.5, MQTT 5.0 §3.1.2.5 and §3.1.3.2)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class Connect:
    """CONNECT (§3.1). ``clean_start`` is Clean Session in MQTT 3.1.1."""

    TYPE: ClassVar[PacketType] = PacketType.CONNECT
    client_id: str = ""
    protocol_version: int = 4
    protocol_name: str = "MQTT"
    clean_start: bool = True
    keepalive: int = 60
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    properties: Properties = field(default_factory=Properties)

    def __init__(self, client_id: str = "", protocol_version: int = 4,
                 protocol_name: str = "MQTT", clean_start: bool = True, keepalive: int = 60,
                 will: Will | None = None, username: str | None = None,
                 password: bytes | None = None, properties: Properties | None = None) -> None:
        # Written out, as Publish's (issue 19: one CONNECT decoded per connection; the
        # dataclass's generated __init__ stays interpreted under mypyc).
        self.client_id = client_id
        self.protocol_version = protocol_version
        self.protocol_name = protocol_name
        self.clean_start = clean_start
        self.keepalive = keepalive
        self.will = will
        self.username = username
        self.password = password
        self.properties = Properties() if properties is None else properties


@dataclass(slots=True)
class ConnAck:
    """CONNACK (§3.2). ``reason_code`` is the v3.1.1 return code or the v5 reason code."""

    TYPE: ClassVar[PacketType] = PacketType.CONNACK
    session_present: bool = False
    reason_code: int = 0
    properties: Properties = field(default_factory=Properties)

    def __init__(self, session_present: bool = False, reason_code: int = 0,
                 properties: Properties | None = None) -> None:
        # Written out (one CONNACK per connection; see Connect).
        self.session_present = session_present
        self.reason_code = reason_code
        self.properties = Properties() if properties is None else properties


@dataclass(slots=True)
class Publish:
    """PUBLISH (§3.3). ``packet_id`` is ``None`` for QoS 0.

    In MQTT 5.0 ``topic`` may be empty when ``properties.topic_alias`` is set.

    ``topic_raw``: the topic's UTF-8 bytes as they came on the wire, when the decoder
    has them (``b""``: not known; encode ``topic``). Not part of the packet's identity;
    whoever changes ``topic`` drops it.
    """

    TYPE: ClassVar[PacketType] = PacketType.PUBLISH
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = field(default_factory=Properties)
    topic_raw: bytes = field(default=b"", compare=False, repr=False)

    def __init__(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                 dup: bool = False, packet_id: int | None = None,
                 properties: Properties | None = None, topic_raw: bytes = b"") -> None:
        # Written out (the dataclass keeps it; eq, repr and replace are still its own):
        # compiled by mypyc, the generated one would stay interpreted (one per message).
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.properties = Properties() if properties is None else properties
        self.topic_raw = topic_raw


@dataclass(slots=True)
class PubAck:
    """PUBACK (§3.4)."""

    TYPE: ClassVar[PacketType] = PacketType.PUBACK
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=Properties)

    def __init__(self, packet_id: int, reason_code: int = 0,
                 properties: Properties | None = None) -> None:
        # Written out, as Publish's: compiled, not interpreted (QoS 1/2 acks).
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = Properties() if properties is None else properties


@dataclass(slots=True)
class PubRec:
    """PUBREC (§3.5)."""

    TYPE: ClassVar[PacketType] = PacketType.PUBREC
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=Properties)

    def __init__(self, packet_id: int, reason_code: int = 0,
                 properties: Properties | None = None) -> None:
        # Written out, as Publish's: compiled, not interpreted (QoS 1/2 acks).
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = Properties() if properties is None else properties


@dataclass(slots=True)
class PubRel:
    """PUBREL (§3.6). Fixed-header flags are 0b0010 [MQTT-3.6.1-1]."""

    TYPE: ClassVar[PacketType] = PacketType.PUBREL
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=Properties)

    def __init__(self, packet_id: int, reason_code: int = 0,
                 properties: Properties | None = None) -> None:
        # Written out, as Publish's: compiled, not interpreted (QoS 1/2 acks).
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = Properties() if properties is None else properties


@dataclass(slots=True)
class PubComp:
    """PUBCOMP (§3.7)."""

    TYPE: ClassVar[PacketType] = PacketType.PUBCOMP
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=Properties)

    def __init__(self, packet_id: int, reason_code: int = 0,
                 properties: Properties | None = None) -> None:
        # Written out, as Publish's: compiled, not interpreted (QoS 1/2 acks).
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = Properties() if properties is None else properties


@dataclass(slots=True)
class Subscription:
    """One Topic Filter of SUBSCRIBE with its options (MQTT 5.0 §3.8.3.1).

    MQTT 3.1.1 carries only ``qos``; the other options keep their defaults.
    """

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(slots=True)
class Subscribe:
    """SUBSCRIBE (§3.8). Fixed-header flags are 0b0010 [MQTT-3.8.1-1]."""

    TYPE: ClassVar[PacketType] = PacketType.SUBSCRIBE
    packet_id: int
    subscriptions: list[Subscription] = field(default_factory=list)
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class SubAck:
    """SUBACK (§3.9): one return/reason code per filter, in order."""

    TYPE: ClassVar[PacketType] = PacketType.SUBACK
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class Unsubscribe:
    """UNSUBSCRIBE (§3.10). Fixed-header flags are 0b0010 [MQTT-3.10.1-1]."""

    TYPE: ClassVar[PacketType] = PacketType.UNSUBSCRIBE
    packet_id: int
    topic_filters: list[str] = field(default_factory=list)
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class UnsubAck:
    """UNSUBACK (§3.11). ``reason_codes`` is empty for MQTT 3.1.1."""

    TYPE: ClassVar[PacketType] = PacketType.UNSUBACK
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class PingReq:
    """PINGREQ (§3.12)."""

    TYPE: ClassVar[PacketType] = PacketType.PINGREQ


@dataclass(slots=True)
class PingResp:
    """PINGRESP (§3.13)."""

    TYPE: ClassVar[PacketType] = PacketType.PINGRESP


@dataclass(slots=True)
class Disconnect:
    """DISCONNECT (§3.14). MQTT 3.1.1 has no reason code or properties."""

    TYPE: ClassVar[PacketType] = PacketType.DISCONNECT
    reason_code: int = 0
    properties: Properties = field(default_factory=Properties)


@dataclass(slots=True)
class Auth:
    """AUTH (MQTT 5.0 §3.15)."""

    TYPE: ClassVar[PacketType] = PacketType.AUTH
    reason_code: int = 0
    properties: Properties = field(default_factory=Properties)


Packet = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
    | Auth
)
