"""Golden bytes of the record codec (``storage/records.py``), both directions.

Every expected value below is written out by hand from the format in the module
docstring of ``iotbroker/storage/records.py``, field by field (never produced by the
encoder): if one of these tests fails, the on-disk format moved and existing data
directories would no longer read back. Do not "fix" the bytes; fix the code, or add a
new value version with a migration.
"""

from __future__ import annotations

import pytest

from iotbroker.codec.packets import NO_PROPERTIES, Properties
from iotbroker.message import Delivery, Message
from iotbroker.storage import records
from iotbroker.storage.base import (
    OutboundRecord,
    OutboundState,
    QueuedRecord,
    SessionRecord,
    StreamPosition,
    SubscriptionEntry,
    WillRecord,
)
from iotbroker.storage.records import CorruptData


def h(text: str) -> bytes:
    """Hex with spaces and ``|`` separators for reading (``"01 | 00 0a"``)."""
    return bytes.fromhex(text.replace("|", " "))


# f64 big-endian constants used below
F0 = "0000000000000000"  # 0.0 (and "not set")
F1_5 = "3FF8000000000000"  # 1.5
F2 = "4000000000000000"  # 2.0
F10 = "4024000000000000"  # 10.0
F100 = "4059000000000000"  # 100.0

# --------------------------------------------------------------------------- property table

#: The on-disk property tags as iotbroker 0.1 wrote them (the literal table it had):
#: (tag, field, kind) with kinds 0 u32, 1 str, 2 bin, 3 repeated u32, 4 repeated pair.
V1_PROPERTY_TABLE = (
    (0x01, "payload_format_indicator", 0),
    (0x02, "message_expiry_interval", 0),
    (0x03, "content_type", 1),
    (0x08, "response_topic", 1),
    (0x09, "correlation_data", 2),
    (0x0B, "subscription_identifiers", 3),
    (0x11, "session_expiry_interval", 0),
    (0x12, "assigned_client_identifier", 1),
    (0x13, "server_keep_alive", 0),
    (0x15, "authentication_method", 1),
    (0x16, "authentication_data", 2),
    (0x17, "request_problem_information", 0),
    (0x18, "will_delay_interval", 0),
    (0x19, "request_response_information", 0),
    (0x1A, "response_information", 1),
    (0x1C, "server_reference", 1),
    (0x1F, "reason_string", 1),
    (0x21, "receive_maximum", 0),
    (0x22, "topic_alias_maximum", 0),
    (0x23, "topic_alias", 0),
    (0x24, "maximum_qos", 0),
    (0x25, "retain_available", 0),
    (0x26, "user_properties", 4),
    (0x27, "maximum_packet_size", 0),
    (0x28, "wildcard_subscription_available", 0),
    (0x29, "subscription_identifier_available", 0),
    (0x2A, "shared_subscription_available", 0),
)


def test_property_table_derived_from_codec_is_the_v1_table() -> None:
    """The record codec takes its property list from ``codec/properties.py``; the
    result must stay the table the disk format was written with (tags, order, kinds)."""
    assert records.STORED_PROPERTIES == V1_PROPERTY_TABLE


PROPS_CASES = [
    (NO_PROPERTIES, ""),
    (Properties(), ""),  # an empty Properties that is not the shared one
    (Properties(payload_format_indicator=1), "01 00000001"),
    (Properties(server_keep_alive=300), "13 0000012C"),  # a two-byte integer: u32 on disk
    (Properties(subscription_identifiers=(1, 300)), "0B 00000001 | 0B 0000012C"),
    (Properties(content_type="json"), "03 00000004 6A736F6E"),
    (Properties(correlation_data=b"\x00\xff"), "09 00000002 00FF"),
    (Properties(user_properties=(("a", "b"), ("a", "c"))),
     "26 00000001 61 00000001 62 | 26 00000001 61 00000001 63"),
    # several properties: always in tag order
    (Properties(user_properties=(("k", "v"),), content_type="t", message_expiry_interval=60),
     "02 0000003C | 03 00000001 74 | 26 00000001 6B 00000001 76"),
]  # fmt: skip


@pytest.mark.parametrize(("props", "raw"), PROPS_CASES)
def test_properties_golden(props: Properties, raw: str) -> None:
    assert records.encode_properties(props) == h(raw)
    assert records.decode_properties(h(raw)) == props


def test_no_properties_decode_to_the_shared_value() -> None:
    assert records.decode_properties(b"") is NO_PROPERTIES


# --------------------------------------------------------------------------- sessions

SESSION_PLAIN = SessionRecord("c1", 4, 0, None, None, next_packet_id=1, next_seq=0)
SESSION_PLAIN_RAW = (
    "01 | 04 | 00000000 | 00 | 0001 | 0000000000000000 | " + F0
)  # version | protocol | expiry | flags | next_packet_id | next_seq | disconnected_at

WILL_PROPS = Properties(content_type="t", user_properties=(("k", "v"),))
SESSION_WILL = SessionRecord(
    "dev", 5, 3600, 1.5,
    WillRecord("w/t", b"bye", 1, True, WILL_PROPS, 30),
    next_packet_id=258, next_seq=65536, username="u",
)  # fmt: skip
SESSION_WILL_RAW = (
    "01 | 05 | 00000E10 | 07 | 0102 | 0000000000010000 | " + F1_5
    + " | 00000001 75"  # username "u"
    + " | 01 01 0000001E"  # will qos 1, retain, delay 30
    + " | 00000003 772F74"  # will topic "w/t"
    + " | 00000011 | 03 00000001 74 | 26 00000001 6B 00000001 76"  # bin PROPS (17 bytes)
    + " | 00000003 627965"  # will payload "bye"
)
# connected (no disconnect time), will without properties and empty payload, username ""
SESSION_EMPTY_WILL = SessionRecord("x", 5, 0xFFFFFFFF, None,
                                   WillRecord("w", b"", 0, False, NO_PROPERTIES, 0),
                                   next_packet_id=65535, next_seq=2**64 - 1, username="")
SESSION_EMPTY_WILL_RAW = (
    "01 | 05 | FFFFFFFF | 06 | FFFF | FFFFFFFFFFFFFFFF | " + F0
    + " | 00000000"  # username ""
    + " | 00 00 00000000 | 00000001 77 | 00000000 | 00000000"
)


@pytest.mark.parametrize(
    ("rec", "raw"),
    [(SESSION_PLAIN, SESSION_PLAIN_RAW), (SESSION_WILL, SESSION_WILL_RAW),
     (SESSION_EMPTY_WILL, SESSION_EMPTY_WILL_RAW)],
    ids=["no-will", "will-username-disconnected", "empty-will-connected"],
)  # fmt: skip
def test_session_golden(rec: SessionRecord, raw: str) -> None:
    assert records.session_key(rec.client_id) == rec.client_id.encode()
    assert records.encode_session(rec) == h(raw)
    assert records.decode_session(rec.client_id.encode(), h(raw)) == rec


# --------------------------------------------------------------------------- subscriptions

SUBSCRIPTION_CASES = [
    (SubscriptionEntry("c1", "a/+", 0), b"c1\x00a/+", "01 | 00 | 00 | 00 | 00000000"),
    (SubscriptionEntry("c1", "$share/g/#", 2, True, True, 2, 268_435_455),
     b"c1\x00$share/g/#", "01 | 02 | 07 | 02 | 0FFFFFFF"),
    (SubscriptionEntry("c1", "x", 1, retain_as_published=True), b"c1\x00x",
     "01 | 01 | 02 | 00 | 00000000"),
    (SubscriptionEntry("ü", "y", 1, subscription_identifier=1), b"\xc3\xbc\x00y",
     "01 | 01 | 04 | 00 | 00000001"),
]  # fmt: skip


@pytest.mark.parametrize(("rec", "key", "raw"), SUBSCRIPTION_CASES)
def test_subscription_golden(rec: SubscriptionEntry, key: bytes, raw: str) -> None:
    assert records.subscription_key(rec.client_id, rec.topic_filter) == key
    assert records.encode_subscription(rec) == h(raw)
    assert records.decode_subscription(key, h(raw)) == rec


# --------------------------------------------------------------------------- messages

# MESSAGE of Message("t", b"hi", qos 1, no retain, no properties, created 2.0, no
# expiry, origin "p")
M = Message("t", b"hi", 1, False, NO_PROPERTIES, 2.0, None, origin="p")
M_RAW = (
    "01 | 00 | " + F2 + " | " + F0
    + " | 00000001 | 00000001 | 00000000 | 00000002"  # len topic, origin, PROPS, payload
    + " | 74 | 70 | | 6869"
)

RETAINED_PROPS = Properties(
    payload_format_indicator=1,
    content_type="json",
    response_topic="r",
    correlation_data=b"\x00\xff",
    user_properties=(("a", "b"), ("a", "c")),
)
RETAINED = Message("s/1", b"on", 1, True, RETAINED_PROPS, 10.0, 100.0, origin="")
RETAINED_RAW = (
    "01"  # value version
    + " | 01 | 03 | " + F10 + " | " + F100  # qos 1, flags retain + expires_at set
    + " | 00000003 | 00000000 | 00000031 | 00000002"
    + " | 732F31"  # topic "s/1"; origin ""
    + " | 01 00000001"
    + " | 03 00000004 6A736F6E"
    + " | 08 00000001 72"
    + " | 09 00000002 00FF"
    + " | 26 00000001 61 00000001 62"
    + " | 26 00000001 61 00000001 63"
    + " | 6F6E"  # payload "on"
)


def test_retained_golden() -> None:
    assert records.retained_key("s/1") == b"s/1"
    assert records.encode_retained(RETAINED) == h(RETAINED_RAW)
    assert records.decode_retained(b"s/1", h(RETAINED_RAW)) == RETAINED


def test_retained_plain_golden() -> None:
    msg = Message("t", b"hi", 1, False, NO_PROPERTIES, 2.0, None, origin="p")
    assert records.encode_retained(msg) == h("01 | " + M_RAW)
    assert records.decode_retained(b"t", h("01 | " + M_RAW)) == msg


# --------------------------------------------------------------------------- outbound

OUTBOUND_CASES = [
    (OutboundRecord("c1", 7, OutboundState.PUBLISH_SENT, Delivery(M, 1, False, (5, 6)), 3),
     b"c1\x00\x00\x07",
     "01 | 01 | 0000000000000003 | 01"  # version, PUBLISH_SENT, seq 3, has delivery
     + " | 01 | 00 | 0002 | 00000005 00000006 | " + M_RAW),  # qos, retain, 2 ids
    (OutboundRecord("c1", 65535, OutboundState.PUBREL_SENT, None, 4),
     b"c1\x00\xff\xff",
     "01 | 02 | 0000000000000004 | 00"),
    (OutboundRecord("c1", 8, OutboundState.PUBREL_SENT, Delivery(M, 2), 2**40),
     b"c1\x00\x00\x08",
     "01 | 02 | 0000010000000000 | 01 | 02 | 00 | 0000 | " + M_RAW),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rec", "key", "raw"), OUTBOUND_CASES,
    ids=["publish-sent", "pubrel-sent-no-message", "pubrel-sent-with-message"],
)  # fmt: skip
def test_outbound_golden(rec: OutboundRecord, key: bytes, raw: str) -> None:
    assert records.outbound_key(rec.client_id, rec.packet_id) == key
    assert records.encode_outbound(rec) == h(raw)
    assert records.decode_outbound(key, h(raw)) == rec


# --------------------------------------------------------------------------- queued

QUEUED = QueuedRecord("c1", 2**32, Delivery(M, 0, True, ()))
QUEUED_KEY = b"c1\x00\x00\x00\x00\x01\x00\x00\x00\x00"
QUEUED_RAW = "01 | 00 | 01 | 0000 | " + M_RAW


def test_queued_golden() -> None:
    assert records.queued_key("c1", 2**32) == QUEUED_KEY
    assert records.encode_queued(QUEUED) == h(QUEUED_RAW)
    assert records.decode_queued(QUEUED_KEY, h(QUEUED_RAW)) == QUEUED
    assert records.decode_queued_index(QUEUED_KEY, h(QUEUED_RAW)) == (
        "c1", 2**32, len(h(QUEUED_RAW)))


def test_queued_with_subscription_identifiers_golden() -> None:
    rec = QueuedRecord("c1", 1, Delivery(M, 1, False, (268_435_455,)))
    raw = "01 | 01 | 00 | 0001 | 0FFFFFFF | " + M_RAW
    assert records.encode_queued(rec) == h(raw)
    assert records.decode_queued(b"c1\x00" + bytes(7) + b"\x01", h(raw)) == rec


def test_shared_message_decoded_once() -> None:
    """Deliveries whose MESSAGE bytes are equal share one Message after a restore."""
    dec = records.RecordDecoder()
    a = dec.queued(b"a\x00" + bytes(8), h(QUEUED_RAW))
    b = dec.outbound(b"b\x00\x00\x07", h(OUTBOUND_CASES[0][2]))
    assert b.delivery is not None
    assert a.delivery.message is b.delivery.message


# --------------------------------------------------------------------------- inbound, meta

def test_inbound_qos2_golden() -> None:
    assert records.inbound_key("c1", 258) == b"c1\x00\x01\x02"
    assert records.INBOUND_VALUE == b"\x01"
    assert records.decode_inbound_key(b"c1\x00\x01\x02") == ("c1", 258)


def test_inbound_pending_golden() -> None:
    """PENDING: value encoding 2 of the inbound record, u8 2 | str write_id."""
    raw = h("02 | 00000003 | 77 3A 31")  # "w:1"
    assert records.encode_inbound_pending("w:1") == raw
    assert records.decode_inbound_value(raw) == "w:1"
    assert records.decode_inbound_value(h("01")) is None  # held


def test_stream_position_golden() -> None:
    """POSITION in ``meta``: key b"stream_position" 0x00 consumer, value u8 1 | u64 seq
    | f64 stream_created."""
    key = b"stream_position\x00iotb_qos_a"
    raw = h("01 | 0000000000000102 | " + F1_5)
    pos = StreamPosition("iotb_qos_a", 258, 1.5)
    assert records.stream_position_key("iotb_qos_a") == key
    assert records.encode_stream_position(pos) == raw
    assert records.decode_stream_position(key, raw) == pos


def test_meta_golden() -> None:
    assert records.META_SCHEMA == b"schema_version"
    assert records.META_CREATED_BY == b"created_by"
    assert records.encode_schema_version() == h("00000001")
    assert records.decode_schema_version(h("00000001")) == 1
    assert records.FAMILIES == (
        "meta", "sessions", "subscriptions", "outbound", "queued", "inbound_qos2", "retained")


def test_client_range_excludes_longer_client_ids() -> None:
    assert records.client_range("a") == (b"a\x00", b"a\x01")
    with pytest.raises(ValueError, match="NUL"):
        records.client_prefix("a\0b")


# --------------------------------------------------------------------------- corrupt input

CORRUPT_CASES = [
    ("session: unknown value version",
     lambda: records.decode_session(b"c1", h("02" + SESSION_PLAIN_RAW[2:])), "value encoding"),
    ("session: empty value", lambda: records.decode_session(b"c1", b""), "value encoding"),
    ("session: truncated", lambda: records.decode_session(b"c1", h(SESSION_PLAIN_RAW)[:-1]), ""),
    ("session: trailing bytes",
     lambda: records.decode_session(b"c1", h(SESSION_PLAIN_RAW) + b"\0"), "trailing"),
    ("session: will payload truncated",
     lambda: records.decode_session(b"dev", h(SESSION_WILL_RAW)[:-1]), "truncated"),
    ("properties: unknown tag", lambda: records.decode_properties(h("04 00000001")), "0x04"),
    ("properties: truncated", lambda: records.decode_properties(h("03 00000004 6A73")), ""),
    ("subscription: no NUL in key",
     lambda: records.decode_subscription(b"c1", h("01 00 00 00 00000000")), ""),
    ("outbound: short key",
     lambda: records.decode_outbound(b"\x00\x07", h("01 02 0000000000000004 00")), "key"),
    ("outbound: unknown state",
     lambda: records.decode_outbound(b"c\x00\x00\x01", h("01 03 0000000000000004 00")), ""),
    ("queued: message length mismatch",
     lambda: records.decode_queued(QUEUED_KEY, h(QUEUED_RAW) + b"x"), "length"),
    ("retained: topic is not the key",
     lambda: records.decode_retained(b"other", h(RETAINED_RAW)), "key"),
    ("retained: bad UTF-8 topic",
     lambda: records.decode_retained(b"t", h("01 | " + M_RAW.replace("| 74 |", "| FF |"))), ""),
    ("inbound: key too short", lambda: records.decode_inbound_key(b"c1\x00\x01"), ""),
    ("inbound: unknown value encoding", lambda: records.decode_inbound_value(h("03")),
     "value encoding"),
    ("inbound: pending write id truncated",
     lambda: records.decode_inbound_value(h("02 00000003 77")), "length"),
    ("meta: stream position truncated",
     lambda: records.decode_stream_position(b"stream_position\x00c", h("01 00")), "length"),
    ("meta: schema version not 4 bytes",
     lambda: records.decode_schema_version(b"\x01"), "schema_version"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "decode", "text"), CORRUPT_CASES,
                         ids=[c[0] for c in CORRUPT_CASES])
def test_corrupt_bytes_raise_corrupt_data(name: str, decode: object, text: str) -> None:
    """Bad bytes raise CorruptData (the store names family and key), nothing else."""
    assert callable(decode)
    with pytest.raises(CorruptData, match=text or None):
        decode()
