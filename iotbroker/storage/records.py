"""The record codec: storage records <-> the bytes of the on-disk format.

Rules of this room: pure functions over bytes, no I/O and no database (this module
imports only ``codec``, ``errors``, ``message`` and the record types of
``storage.base``; ``storage/rocksdb.py`` puts the bytes into RocksDB). The format is a
promise to every data directory already written: a change that moves one byte is a
new value version or schema version with a migration, never an edit here.
``tests/storage/test_records.py`` pins every record kind to hand-written bytes, and
``tests/storage/test_upgrade.py`` opens a store written by iotbroker 0.1.

On-disk format, schema version 1
================================

One RocksDB database (``storage.path``), opened in rocksdict raw mode (keys and values
are plain bytes; nothing is pickled). One column family per record kind::

    family        key                                      value
    ------------  ---------------------------------------  -------------------------
    meta          b"schema_version"                        u32 schema version (= 1)
                  b"created_by"                            UTF-8, e.g. b"iotbroker 0.1"
                  b"stream_position" 0x00 consumer         POSITION
    sessions      client_id                                SESSION
    subscriptions client_id 0x00 topic_filter              SUBSCRIPTION
    outbound      client_id 0x00 u16 packet_id             OUTBOUND
    queued        client_id 0x00 u64 seq                   QUEUED
    inbound_qos2  client_id 0x00 u16 packet_id             0x01, or PENDING
    retained      topic                                    RETAINED

Strings are UTF-8; integers are big-endian and unsigned, so a prefix scan over
``client_id 0x00`` returns a session's records in packet id / seq / topic filter order.
NUL cannot occur in an MQTT string [MQTT-1.5.4-2], so ``client_id 0x00`` is a prefix of
that client's keys only ("a\\0" is not a prefix of "ab\\0..."); deleting a session
deletes the range ``[client_id 0x00, client_id 0x01)`` in each family. The
``default`` family exists (RocksDB requires it) and is unused.

Every value starts with a one-byte *value encoding version* (1 everywhere today), so a
record kind can change its encoding without a new schema version; the schema
version changes when keys or families change. A database with a newer schema version
is refused; an older one would be migrated on open (there is none yet).

Value encodings (``str`` = u32 length + UTF-8 bytes, ``bin`` = u32 length + bytes)::

    SESSION       u8 1 | u8 protocol_version | u32 expiry_interval | u8 flags
                  | u16 next_packet_id | u64 next_seq | f64 disconnected_at
                  | [str username]                     if flags & 0x04
                  | [WILL]                             if flags & 0x02
                  flags: 0x01 disconnected_at is set (else the f64 is 0 and means None)
    WILL          u8 qos | u8 retain | u32 delay_interval | str topic | bin PROPS
                  | bin payload
    SUBSCRIPTION  u8 1 | u8 qos | u8 flags | u8 retain_handling | u32 subscription_identifier
                  flags: 0x01 no_local, 0x02 retain_as_published,
                         0x04 subscription_identifier is set (else the u32 is 0)
    OUTBOUND      u8 1 | u8 state (1 PUBLISH_SENT, 2 PUBREL_SENT) | u64 seq
                  | u8 has_delivery | [DELIVERY]
    QUEUED        u8 1 | DELIVERY
    PENDING       u8 2 | str write_id
                  an inbound QoS 2 id whose cluster stream write (``write_id``, its
                  Nats-Msg-Id) is not acknowledged: no PUBREC sent yet. Value
                  encoding 2 of the inbound record; ``0x01`` is a held id (PUBREC may
                  be sent). An iotbroker that knows only ``0x01`` reads any value as
                  held, as it always did.
    POSITION      u8 1 | u64 seq | f64 stream_created
                  a cluster node's last routed QoS stream sequence (issue 14); older
                  iotbrokers read only their two meta keys and ignore these.
    RETAINED      u8 1 | MESSAGE
    DELIVERY      u8 qos | u8 retain | u16 n | n * u32 subscription_identifier | MESSAGE
    MESSAGE       u8 qos | u8 flags | f64 created_at | f64 expires_at
                  | u32 len(topic) | u32 len(origin) | u32 len(PROPS) | u32 len(payload)
                  | topic | origin | PROPS | payload
                  flags: 0x01 retain, 0x02 expires_at is set (else the f64 is 0)
    PROPS         a sequence of (u8 tag, value); the tag is the MQTT 5.0 property
                  identifier (§2.2.2.2); the value is u32 for integer properties,
                  str for strings, bin for binary data; 0x0B (subscription identifier)
                  repeats per value; 0x26 (user property) repeats per pair and its
                  value is str name | str value. Zero length: no properties.
                  This is deliberately not the MQTT wire encoding of properties
                  (codec/properties.py): the disk format must not move with the codec.
                  Only the list of properties (identifier, field, wire type) comes
                  from the codec's table; ``test_records.py`` pins the result.

A MESSAGE is always the tail of its value, so a reader can share one decoded
:class:`~iotbroker.message.Message` among the deliveries whose stored MESSAGE bytes
are identical (:class:`RecordDecoder`).
"""

from __future__ import annotations

import struct
from typing import Any

from iotbroker.codec.packets import NO_PROPERTIES, Properties
from iotbroker.codec.properties import (
    BINARY_DATA,
    BYTE,
    FOUR_BYTE_INT,
    PROPERTY_TABLE,
    TWO_BYTE_INT,
    UTF8_STRING,
    UTF8_STRING_PAIR,
    VARIABLE_BYTE_INT,
)
from iotbroker.message import Delivery, Message
from iotbroker.storage.base import (
    OutboundRecord,
    OutboundState,
    QueuedRecord,
    SessionRecord,
    StreamPosition,
    SubscriptionEntry,
    WillRecord,
    check_client_id,
)

__all__ = [
    "CREATED_BY",
    "FAMILIES",
    "INBOUND_PENDING_VERSION",
    "INBOUND_VALUE",
    "META_CREATED_BY",
    "META_SCHEMA",
    "META_STREAM_POSITION",
    "SCHEMA_VERSION",
    "STORED_PROPERTIES",
    "VALUE_VERSION",
    "CorruptData",
    "RecordDecoder",
    "client_prefix",
    "client_range",
    "decode_inbound_key",
    "decode_inbound_value",
    "decode_outbound",
    "decode_properties",
    "decode_queued",
    "decode_queued_index",
    "decode_queued_summary",
    "decode_retained",
    "decode_schema_version",
    "decode_session",
    "decode_stream_position",
    "decode_subscription",
    "encode_inbound_pending",
    "encode_outbound",
    "encode_properties",
    "encode_queued",
    "encode_retained",
    "encode_schema_version",
    "encode_session",
    "encode_stream_position",
    "encode_subscription",
    "inbound_key",
    "outbound_key",
    "queued_key",
    "retained_key",
    "session_key",
    "stream_position_key",
    "subscription_key",
]

#: Version of the key layout and set of column families (see the module docstring).
SCHEMA_VERSION = 1
#: Version byte that starts every value written by this module.
VALUE_VERSION = 1

FAMILIES = ("meta", "sessions", "subscriptions", "outbound", "queued", "inbound_qos2", "retained")

META_SCHEMA = b"schema_version"
META_CREATED_BY = b"created_by"
CREATED_BY = b"iotbroker 0.1"
#: The value of an inbound QoS 2 record (the key is all there is to it).
INBOUND_VALUE = b"\x01"
#: Value encoding of a pending inbound QoS 2 record (PENDING).
INBOUND_PENDING_VERSION = 2
#: Prefix of the ``meta`` keys of POSITION records.
META_STREAM_POSITION = b"stream_position\x00"

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_SESSION = struct.Struct(">BBIBHQd")
_WILL = struct.Struct(">BBI")
_SUBSCRIPTION = struct.Struct(">BBBBI")
_OUTBOUND = struct.Struct(">BBQB")
_DELIVERY = struct.Struct(">BBH")
_MESSAGE = struct.Struct(">BBddIIII")
_V1_MESSAGE = struct.Struct(">BBBddIIII")  # VALUE_VERSION, then _MESSAGE
_POSITION = struct.Struct(">BQd")
_V1 = bytes([VALUE_VERSION])

#: What a decoder may raise on bad bytes; the public decoders turn it into CorruptData.
_DECODE_ERRORS = (struct.error, UnicodeError, ValueError, IndexError, TypeError, KeyError)


class CorruptData(Exception):
    """Stored bytes cannot be decoded: a key or value here, or (raised by the store)
    a RocksDB file. The message says what is wrong; the store adds where."""


# --------------------------------------------------------------------------- properties

# Property kinds on disk: u32, str, bin, repeated u32, repeated (str, str).
_INT, _STR, _BIN, _INTS, _PAIRS = range(5)
_KIND_OF_WIRE = {
    BYTE: _INT,
    TWO_BYTE_INT: _INT,
    FOUR_BYTE_INT: _INT,
    VARIABLE_BYTE_INT: _INTS,  # the subscription identifier, one tag per value
    UTF8_STRING: _STR,
    BINARY_DATA: _BIN,
    UTF8_STRING_PAIR: _PAIRS,
}

#: (tag, Properties field, kind), in tag order: the codec's property table
#: (MQTT 5.0 §2.2.2.2), whose identifiers are the on-disk tags. Part of the on-disk
#: format: ``tests/storage/test_records.py`` pins it, so a change to the codec's table
#: that would move the disk format fails there first.
STORED_PROPERTIES: tuple[tuple[int, str, int], ...] = tuple(
    (int(spec.id), spec.name, _KIND_OF_WIRE[spec.wire])
    for spec in sorted(PROPERTY_TABLE.values(), key=lambda spec: int(spec.id))
)
_PROPERTY_BY_TAG = {tag: (name, kind) for tag, name, kind in STORED_PROPERTIES}


def _str(value: str) -> bytes:
    raw = value.encode()
    return _U32.pack(len(raw)) + raw


def _bin(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def encode_properties(props: Properties) -> bytes:
    """PROPS of the module docstring (``b""`` for no properties)."""
    if props is NO_PROPERTIES:
        return b""
    out: list[bytes] = []
    for tag, name, kind in STORED_PROPERTIES:
        value = getattr(props, name)
        if value is None or value == ():
            continue
        if kind == _INT:
            out.append(bytes((tag,)) + _U32.pack(value))
        elif kind == _STR:
            out.append(bytes((tag,)) + _str(value))
        elif kind == _BIN:
            out.append(bytes((tag,)) + _bin(bytes(value)))
        elif kind == _INTS:
            out.extend(bytes((tag,)) + _U32.pack(v) for v in value)
        else:
            out.extend(bytes((tag,)) + _str(k) + _str(v) for k, v in value)
    return b"".join(out)


class _Reader:
    """Cursor over one stored value."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def u32(self) -> int:
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def raw(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise CorruptData("value truncated")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def bin(self) -> bytes:
        return self.raw(self.u32())

    def str(self) -> str:
        return self.raw(self.u32()).decode()


def _decode_properties(buf: bytes) -> Properties:
    if not buf:
        return NO_PROPERTIES
    r = _Reader(buf)
    fields: dict[str, Any] = {}
    ids: list[int] = []
    pairs: list[tuple[str, str]] = []
    n = len(buf)
    while r.pos < n:
        tag = buf[r.pos]
        r.pos += 1
        try:
            name, kind = _PROPERTY_BY_TAG[tag]
        except KeyError:
            raise CorruptData(f"unknown property tag 0x{tag:02X}") from None
        if kind == _INT:
            fields[name] = r.u32()
        elif kind == _STR:
            fields[name] = r.str()
        elif kind == _BIN:
            fields[name] = r.bin()
        elif kind == _INTS:
            ids.append(r.u32())
        else:
            pairs.append((r.str(), r.str()))
    if ids:
        fields["subscription_identifiers"] = tuple(ids)
    if pairs:
        fields["user_properties"] = tuple(pairs)
    return Properties(**fields)


def decode_properties(buf: bytes) -> Properties:
    """PROPS -> :class:`Properties` (:data:`NO_PROPERTIES` for ``b""``)."""
    try:
        return _decode_properties(buf)
    except _DECODE_ERRORS as exc:
        raise CorruptData(f"properties: {exc}") from None


# --------------------------------------------------------------------------- keys


def client_prefix(client_id: str) -> bytes:
    """``client_id 0x00``: the key prefix of all of one client's records.

    Raises :class:`ValueError` for a client id that cannot be a key (contains NUL).
    """
    check_client_id(client_id)
    return client_id.encode() + b"\0"


def client_range(client_id: str) -> tuple[bytes, bytes]:
    """``[client_id 0x00, client_id 0x01)``: every key of one client's records in the
    per-client families (and of no other client, even one it is a prefix of)."""
    start = client_prefix(client_id)
    return start, start[:-1] + b"\x01"


def session_key(client_id: str) -> bytes:
    check_client_id(client_id)
    return client_id.encode()


def subscription_key(client_id: str, topic_filter: str) -> bytes:
    return client_prefix(client_id) + topic_filter.encode()


def outbound_key(client_id: str, packet_id: int) -> bytes:
    return client_prefix(client_id) + _U16.pack(packet_id)


def queued_key(client_id: str, seq: int) -> bytes:
    return client_prefix(client_id) + _U64.pack(seq)


def inbound_key(client_id: str, packet_id: int) -> bytes:
    return client_prefix(client_id) + _U16.pack(packet_id)


def retained_key(topic: str) -> bytes:
    return topic.encode()


def _split(key: bytes, suffix: int) -> tuple[str, bytes]:
    """``client_id 0x00 rest`` -> (client_id, rest); ``suffix`` = len(rest) or -1."""
    if suffix < 0:
        i = key.index(b"\0")
    else:
        i = len(key) - suffix - 1
        if i < 0 or key[i] != 0:
            raise CorruptData("bad key")
    return key[:i].decode(), key[i + 1 :]


def decode_inbound_key(key: bytes) -> tuple[str, int]:
    """An ``inbound_qos2`` key -> (client_id, packet_id)."""
    try:
        cid, rest = _split(key, 2)
        return cid, _U16.unpack(rest)[0]
    except _DECODE_ERRORS as exc:
        raise CorruptData(str(exc)) from None


def encode_inbound_pending(write_id: str) -> bytes:
    """PENDING: the value of an inbound QoS 2 record whose stream write is unacknowledged."""
    return bytes([INBOUND_PENDING_VERSION]) + _str(write_id)


def decode_inbound_value(value: bytes) -> str | None:
    """An ``inbound_qos2`` value -> None (held, ``0x01``) or the pending write id."""
    if value == INBOUND_VALUE:
        return None
    try:
        if value[0] != INBOUND_PENDING_VERSION:
            raise CorruptData(f"unknown value encoding {value[:1]!r}")
        (n,) = _U32.unpack_from(value, 1)
        if len(value) != 5 + n or n == 0:
            raise CorruptData("bad PENDING length")
        return value[5:].decode()
    except _DECODE_ERRORS as exc:
        raise CorruptData(str(exc)) from None


# --------------------------------------------------------------------------- meta


def stream_position_key(consumer: str) -> bytes:
    """The ``meta`` key of a consumer's POSITION."""
    return META_STREAM_POSITION + consumer.encode()


def encode_stream_position(pos: StreamPosition) -> bytes:
    return _POSITION.pack(VALUE_VERSION, pos.seq, pos.stream_created)


def decode_stream_position(key: bytes, value: bytes) -> StreamPosition:
    """A POSITION (its ``meta`` key starts with :data:`META_STREAM_POSITION`)."""
    try:
        if not key.startswith(META_STREAM_POSITION):
            raise CorruptData("not a stream position key")
        _version(value)
        if len(value) != _POSITION.size:
            raise CorruptData("bad POSITION length")
        _, seq, created = _POSITION.unpack(value)
        return StreamPosition(key[len(META_STREAM_POSITION):].decode(), seq, created)
    except _DECODE_ERRORS as exc:
        raise CorruptData(str(exc)) from None


def encode_schema_version(version: int = SCHEMA_VERSION) -> bytes:
    return _U32.pack(version)


def decode_schema_version(raw: bytes) -> int:
    """The ``meta`` schema version (any u32: the store decides what it accepts)."""
    if len(raw) != 4:
        raise CorruptData(f"meta schema_version is {raw!r}")
    return int(_U32.unpack(raw)[0])


# --------------------------------------------------------------------------- encoding


def _encode_message(m: Message) -> list[bytes]:
    topic = m.topic.encode()
    origin = m.origin.encode()
    props = encode_properties(m.properties)
    payload = m.payload
    expires_at = m.expires_at
    flags = (1 if m.retain else 0) | (0 if expires_at is None else 2)
    head = _MESSAGE.pack(
        m.qos,
        flags,
        m.created_at,
        0.0 if expires_at is None else expires_at,
        len(topic),
        len(origin),
        len(props),
        len(payload),
    )
    return [head, topic, origin, props, bytes(payload)]


def _encode_delivery(d: Delivery, version: bytes = _V1) -> bytes:
    ids = d.subscription_identifiers
    head = _DELIVERY.pack(d.qos, 1 if d.retain else 0, len(ids))
    if ids:
        head += struct.pack(f">{len(ids)}I", *ids)
    return b"".join([version, head, *_encode_message(d.message)])


def encode_session(rec: SessionRecord) -> bytes:
    """SESSION (the key is :func:`session_key`)."""
    flags = 0
    if rec.disconnected_at is not None:
        flags |= 1
    if rec.will is not None:
        flags |= 2
    if rec.username is not None:
        flags |= 4
    parts = [
        _SESSION.pack(
            VALUE_VERSION,
            rec.protocol_version,
            rec.expiry_interval,
            flags,
            rec.next_packet_id,
            rec.next_seq,
            0.0 if rec.disconnected_at is None else rec.disconnected_at,
        )
    ]
    if rec.username is not None:
        parts.append(_str(rec.username))
    will = rec.will
    if will is not None:
        parts.append(_WILL.pack(will.qos, 1 if will.retain else 0, will.delay_interval))
        parts.append(_str(will.topic))
        parts.append(_bin(encode_properties(will.properties)))
        parts.append(_bin(bytes(will.payload)))
    return b"".join(parts)


def encode_subscription(rec: SubscriptionEntry) -> bytes:
    """SUBSCRIPTION (the key is :func:`subscription_key`)."""
    sid = rec.subscription_identifier
    flags = (
        (1 if rec.no_local else 0)
        | (2 if rec.retain_as_published else 0)
        | (0 if sid is None else 4)
    )
    return _SUBSCRIPTION.pack(
        VALUE_VERSION, rec.qos, flags, rec.retain_handling, 0 if sid is None else sid
    )


def encode_outbound(rec: OutboundRecord) -> bytes:
    """OUTBOUND (the key is :func:`outbound_key`)."""
    d = rec.delivery
    head = _OUTBOUND.pack(VALUE_VERSION, rec.state, rec.seq, 0 if d is None else 1)
    return head if d is None else _encode_delivery(d, head)


def encode_queued(rec: QueuedRecord) -> bytes:
    """QUEUED (the key is :func:`queued_key`)."""
    return _encode_delivery(rec.delivery)


def encode_retained(message: Message) -> bytes:
    """RETAINED (the key is :func:`retained_key` of ``message.topic``)."""
    return b"".join([_V1, *_encode_message(message)])


def retained_pieces(message: Message, topic: bytes, origin: bytes) -> tuple[int, list[bytes]]:
    """:func:`encode_retained` as (its length, its pieces) for a caller that joins
    many records into one buffer (the cluster's batches): no join per record.
    ``topic`` and ``origin`` are ``message.topic`` and ``message.origin`` encoded
    (the caller may have them already)."""
    props = message.properties
    payload = message.payload
    if type(payload) is not bytes:
        payload = bytes(payload)
    expires_at = message.expires_at
    lt = len(topic)
    lo = len(origin)
    lpl = len(payload)
    if props is NO_PROPERTIES:
        head = _V1_MESSAGE.pack(
            VALUE_VERSION, message.qos,
            (1 if message.retain else 0) | (0 if expires_at is None else 2),
            message.created_at, 0.0 if expires_at is None else expires_at,
            lt, lo, 0, lpl)
        return _V1_MESSAGE.size + lt + lo + lpl, [head, topic, origin, payload]
    raw = encode_properties(props)
    head = _V1_MESSAGE.pack(
        VALUE_VERSION, message.qos,
        (1 if message.retain else 0) | (0 if expires_at is None else 2),
        message.created_at, 0.0 if expires_at is None else expires_at,
        lt, lo, len(raw), lpl)
    return _V1_MESSAGE.size + lt + lo + len(raw) + lpl, [head, topic, origin, raw, payload]


# --------------------------------------------------------------------------- decoding


def _version(value: bytes) -> None:
    if not value or value[0] != VALUE_VERSION:
        raise CorruptData(f"unknown value encoding {value[:1]!r}")


def _decode_message(buf: bytes, pos: int) -> Message:
    qos, flags, created_at, expires_at, lt, lo, lp, lpl = _MESSAGE.unpack_from(buf, pos)
    pos += _MESSAGE.size
    end = pos + lt + lo + lp + lpl
    if end != len(buf):
        raise CorruptData("message length mismatch")
    topic = buf[pos : pos + lt].decode()
    pos += lt
    origin = buf[pos : pos + lo].decode()
    pos += lo
    props = _decode_properties(buf[pos : pos + lp])
    pos += lp
    return Message(
        topic=topic,
        payload=buf[pos:end],
        qos=qos,
        retain=bool(flags & 1),
        properties=props,
        created_at=created_at,
        expires_at=expires_at if flags & 2 else None,
        origin=origin,
    )


class RecordDecoder:
    """Decodes the values of one restore; messages that several deliveries share on
    disk (identical MESSAGE bytes) become one shared :class:`Message` again."""

    __slots__ = ("messages",)

    def __init__(self) -> None:
        self.messages: dict[bytes, Message] = {}

    def _message(self, buf: bytes, pos: int) -> Message:
        raw = buf[pos:]
        m = self.messages.get(raw)
        if m is None:
            m = _decode_message(raw, 0)
            self.messages[raw] = m
        return m

    def _delivery(self, buf: bytes, pos: int) -> Delivery:
        qos, retain, n = _DELIVERY.unpack_from(buf, pos)
        pos += _DELIVERY.size
        ids: tuple[int, ...] = ()
        if n:
            ids = struct.unpack_from(f">{n}I", buf, pos)
            pos += 4 * n
        return Delivery(self._message(buf, pos), qos, bool(retain), ids)

    def outbound(self, key: bytes, value: bytes) -> OutboundRecord:
        try:
            cid, rest = _split(key, 2)
            _version(value)
            _, state, seq, has = _OUTBOUND.unpack_from(value, 0)
            delivery = self._delivery(value, _OUTBOUND.size) if has else None
            return OutboundRecord(cid, _U16.unpack(rest)[0], OutboundState(state), delivery, seq)
        except _DECODE_ERRORS as exc:
            raise CorruptData(str(exc)) from None

    def queued(self, key: bytes, value: bytes) -> QueuedRecord:
        try:
            cid, rest = _split(key, 8)
            _version(value)
            return QueuedRecord(cid, _U64.unpack(rest)[0], self._delivery(value, 1))
        except _DECODE_ERRORS as exc:
            raise CorruptData(str(exc)) from None

    def retained(self, key: bytes, value: bytes) -> Message:
        try:
            _version(value)
            m = self._message(value, 1)
        except _DECODE_ERRORS as exc:
            raise CorruptData(str(exc)) from None
        if m.topic.encode() != key:
            raise CorruptData("retained topic does not match its key")
        return m


def decode_session(key: bytes, value: bytes) -> SessionRecord:
    try:
        return _decode_session(key, value)
    except _DECODE_ERRORS as exc:
        raise CorruptData(str(exc)) from None


def _decode_session(key: bytes, value: bytes) -> SessionRecord:
    _version(value)
    _, proto, expiry, flags, next_pid, next_seq, disc = _SESSION.unpack_from(value, 0)
    r = _Reader(value, _SESSION.size)
    username = r.str() if flags & 4 else None
    will = None
    if flags & 2:
        qos, retain, delay = _WILL.unpack_from(value, r.pos)
        r.pos += _WILL.size
        topic = r.str()
        props = _decode_properties(r.bin())
        payload = r.bin()
        will = WillRecord(topic, payload, qos, bool(retain), props, delay)
    if r.pos != len(value):
        raise CorruptData("trailing bytes")
    return SessionRecord(
        client_id=key.decode(),
        protocol_version=proto,
        expiry_interval=expiry,
        disconnected_at=disc if flags & 1 else None,
        will=will,
        next_packet_id=next_pid,
        next_seq=next_seq,
        username=username,
    )


def decode_subscription(key: bytes, value: bytes) -> SubscriptionEntry:
    try:
        cid, rest = _split(key, -1)
        _version(value)
        _, qos, flags, rh, sid = _SUBSCRIPTION.unpack(value)
        return SubscriptionEntry(
            cid, rest.decode(), qos, bool(flags & 1), bool(flags & 2), rh,
            sid if flags & 4 else None,
        )  # fmt: skip
    except _DECODE_ERRORS as exc:
        raise CorruptData(str(exc)) from None


def decode_outbound(key: bytes, value: bytes) -> OutboundRecord:
    """One OUTBOUND record on its own (a restore uses :class:`RecordDecoder`)."""
    return RecordDecoder().outbound(key, value)


def decode_queued(key: bytes, value: bytes) -> QueuedRecord:
    """One QUEUED record on its own (a restore uses :class:`RecordDecoder`)."""
    return RecordDecoder().queued(key, value)


def decode_retained(key: bytes, value: bytes) -> Message:
    """One RETAINED record on its own (a restore uses :class:`RecordDecoder`)."""
    return RecordDecoder().retained(key, value)


def decode_message_at(buf: bytes, pos: int, end: int, names: dict[bytes, str]) -> Message:
    """The RETAINED value at ``buf[pos:end]`` (as :func:`decode_message_value`) without
    copying it out first; ``names`` caches decoded topics and origins across the
    records of one buffer (one str object per topic: its hash is computed once)."""
    try:
        if buf[pos] != VALUE_VERSION:
            raise CorruptData(f"unknown value encoding {buf[pos:pos + 1]!r}")
        qos, flags, created_at, expires_at, lt, lo, lp, lpl = _MESSAGE.unpack_from(buf, pos + 1)
        pos += 1 + _MESSAGE.size
        if pos + lt + lo + lp + lpl != end:
            raise CorruptData("message length mismatch")
        raw = buf[pos : pos + lt]
        topic = names.get(raw)
        if topic is None:
            topic = names[raw] = raw.decode()
        pos += lt
        if lo:
            raw = buf[pos : pos + lo]
            origin = names.get(raw)
            if origin is None:
                origin = names[raw] = raw.decode()
            pos += lo
        else:
            origin = ""
        if lp:
            props = _decode_properties(buf[pos : pos + lp])
            pos += lp
        else:
            props = NO_PROPERTIES
        return Message(topic, buf[pos:end], qos, bool(flags & 1), props, created_at,
                       expires_at if flags & 2 else None, origin)
    except _DECODE_ERRORS as exc:
        raise CorruptData(str(exc)) from None


def decode_message_value(value: bytes) -> Message:
    """A RETAINED value without its key (the message names its topic): the cluster's
    wire format carries these (:mod:`iotbroker.cluster.wire`)."""
    try:
        _version(value)
        return _decode_message(value, 1)
    except _DECODE_ERRORS as exc:
        raise CorruptData(str(exc)) from None


def decode_queued_index(key: bytes, value: bytes) -> tuple[str, int, int]:
    """A QUEUED record without decoding its message: (client_id, seq, stored size)."""
    try:
        cid, rest = _split(key, 8)
        _version(value)
        return cid, _U64.unpack(rest)[0], len(value)
    except _DECODE_ERRORS as exc:
        raise CorruptData(str(exc)) from None


#: Offset of the delivery head in a QUEUED value (after the version byte).
_DELIVERY_AT = len(_V1)


def decode_queued_summary(key: bytes, value: bytes) -> tuple[str, int, int]:
    """A QUEUED record without decoding its message: (client_id, seq, payload size).

    Reads two fixed heads only (the delivery's, then the message's length fields), so
    a restore counts a session's queue without building a message per record."""
    try:
        cid, rest = _split(key, 8)
        _version(value)
        n_ids = _DELIVERY.unpack_from(value, _DELIVERY_AT)[2]
        head = _MESSAGE.unpack_from(value, _DELIVERY_AT + _DELIVERY.size + 4 * n_ids)
        return cid, _U64.unpack(rest)[0], head[7]
    except _DECODE_ERRORS as exc:
        raise CorruptData(str(exc)) from None
