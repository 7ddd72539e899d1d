"""MQTT-SN v1.2 codec: golden bytes both ways, round trips, and malformed datagrams.

Golden bytes are written from the tables of the v1.2 specification (§5.4.x), byte by
byte, not produced by the encoder under test.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotbroker.mqttsn import codec as c

GOLDEN: list[tuple[str, bytes, c.SnMessage]] = [
    # §5.4.1 ADVERTISE: Length 5, 0x00, GwId, Duration
    ("5.4.1 ADVERTISE", bytes.fromhex("05 00 01 03 84"), c.Advertise(1, 900)),
    ("5.4.2 SEARCHGW", bytes.fromhex("03 01 02"), c.SearchGw(2)),
    ("5.4.3 GWINFO (from gateway)", bytes.fromhex("03 02 07"), c.GwInfo(7)),
    ("5.4.3 GWINFO (from client)", bytes.fromhex("05 02 07 c0 a8"), c.GwInfo(7, b"\xc0\xa8")),
    # §5.4.4 CONNECT: flags Will|CleanSession = 0x0c, ProtocolId 1, Duration 60, "ab"
    ("5.4.4 CONNECT", bytes.fromhex("08 04 0c 01 00 3c 61 62"),
     c.Connect("ab", 60, will=True, clean_session=True)),
    ("5.4.5 CONNACK", bytes.fromhex("03 05 00"), c.ConnAck(0)),
    ("5.4.6 WILLTOPICREQ", bytes.fromhex("02 06"), c.WillTopicReq()),
    # §5.4.7 WILLTOPIC: flags QoS 1 (0x20) | Retain (0x10)
    ("5.4.7 WILLTOPIC", bytes.fromhex("05 07 30 77 2f"), c.WillTopic("w/", qos=1, retain=True)),
    ("5.4.7 WILLTOPIC empty", bytes.fromhex("02 07"), c.WillTopic("", empty=True)),
    ("5.4.8 WILLMSGREQ", bytes.fromhex("02 08"), c.WillMsgReq()),
    ("5.4.9 WILLMSG", bytes.fromhex("04 09 6f 6b"), c.WillMsg(b"ok")),
    ("5.4.10 REGISTER", bytes.fromhex("09 0a 00 00 00 05 61 2f 62"), c.Register(0, 5, "a/b")),
    ("5.4.11 REGACK", bytes.fromhex("07 0b 00 01 00 05 00"), c.RegAck(1, 5, 0)),
    # §5.4.12 PUBLISH: QoS 1 normal id 1, MsgId 2, "hi"
    ("5.4.12 PUBLISH QoS 1", bytes.fromhex("09 0c 20 00 01 00 02 68 69"),
     c.Publish(c.TopicIdType.NORMAL, 1, 2, b"hi", qos=1)),
    # QoS -1 (0x60) to predefined id 7 (0x01)
    ("5.4.12 PUBLISH QoS -1 predefined", bytes.fromhex("08 0c 61 00 07 00 00 78"),
     c.Publish(c.TopicIdType.PREDEFINED, 7, 0, b"x", qos=-1)),
    # QoS 2, DUP, retain, short name "ab" (0x6162)
    ("5.4.12 PUBLISH QoS 2 short dup retain", bytes.fromhex("07 0c d2 61 62 00 09"),
     c.Publish(c.TopicIdType.SHORT, 0x6162, 9, b"", qos=2, retain=True, dup=True)),
    ("5.4.13 PUBACK invalid topic id", bytes.fromhex("07 0d 00 03 00 04 02"),
     c.PubAck(3, 4, c.ReturnCode.INVALID_TOPIC_ID)),
    ("5.4.14 PUBREC", bytes.fromhex("04 0f 00 09"), c.PubRec(9)),
    ("5.4.14 PUBREL", bytes.fromhex("04 10 00 09"), c.PubRel(9)),
    ("5.4.14 PUBCOMP", bytes.fromhex("04 0e 00 09"), c.PubComp(9)),
    ("5.4.15 SUBSCRIBE name", bytes.fromhex("08 12 20 00 01 61 2f 23"),
     c.Subscribe(1, c.TopicIdType.NORMAL, "a/#", qos=1)),
    ("5.4.15 SUBSCRIBE predefined", bytes.fromhex("07 12 41 00 02 00 07"),
     c.Subscribe(2, c.TopicIdType.PREDEFINED, topic_id=7, qos=2)),
    ("5.4.15 SUBSCRIBE short", bytes.fromhex("07 12 02 00 03 61 62"),
     c.Subscribe(3, c.TopicIdType.SHORT, "ab")),
    ("5.4.16 SUBACK", bytes.fromhex("08 13 20 00 05 00 01 00"), c.SubAck(1, 5, 1, 0)),
    ("5.4.17 UNSUBSCRIBE", bytes.fromhex("06 14 00 00 04 78"),
     c.Unsubscribe(4, c.TopicIdType.NORMAL, "x")),
    ("5.4.18 UNSUBACK", bytes.fromhex("04 15 00 04"), c.UnsubAck(4)),
    ("5.4.19 PINGREQ", bytes.fromhex("02 16"), c.PingReq()),
    ("5.4.19 PINGREQ with ClientId", bytes.fromhex("04 16 61 62"), c.PingReq("ab")),
    ("5.4.20 PINGRESP", bytes.fromhex("02 17"), c.PingResp()),
    ("5.4.21 DISCONNECT", bytes.fromhex("02 18"), c.Disconnect()),
    ("5.4.21 DISCONNECT sleep", bytes.fromhex("04 18 00 3c"), c.Disconnect(60)),
    ("5.4.22 WILLTOPICUPD", bytes.fromhex("04 1a 40 74"), c.WillTopicUpd("t", qos=2)),
    ("5.4.23 WILLMSGUPD", bytes.fromhex("03 1c 7a"), c.WillMsgUpd(b"z")),
    ("5.4.24 WILLTOPICRESP", bytes.fromhex("03 1b 00"), c.WillTopicResp(0)),
    ("5.4.25 WILLMSGRESP", bytes.fromhex("03 1d 03"), c.WillMsgResp(3)),
    # §5.5 encapsulation: Length 5 (up to the node id), 0xfe, Ctrl radius 1, node id 2
    # octets, then a PINGREQ.
    ("5.5 encapsulated", bytes.fromhex("05 fe 01 aa bb 02 16"),
     c.Encapsulated(1, b"\xaa\xbb", bytes.fromhex("02 16"))),
]


@pytest.mark.parametrize(("name", "wire", "msg"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_bytes_both_ways(name: str, wire: bytes, msg: c.SnMessage) -> None:
    """MQTT-SN 1.2 §5.4.x: each table's layout, encoded and decoded."""
    assert c.decode(wire) == msg
    assert c.encode(msg) == wire


def test_long_message_uses_three_octet_length_5_2_1() -> None:
    """§5.2.1: a message of 256 octets or more: 0x01 then the length on two octets."""
    msg = c.Publish(c.TopicIdType.NORMAL, 1, 1, b"x" * 300, qos=1)
    wire = c.encode(msg)
    assert wire[:3] == b"\x01" + (len(wire)).to_bytes(2, "big")
    assert len(wire) == 300 + 7 + 2
    assert c.decode(wire) == msg
    # 255 octets still fits the one-octet form.
    short = c.Publish(c.TopicIdType.NORMAL, 1, 1, b"x" * (255 - 7), qos=1)
    assert c.encode(short)[0] == 255


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (b"", "shorter than a header"),
        (b"\x05", "shorter than a header"),
        (bytes.fromhex("05 0c 00 00"), "Length field says 5"),  # truncated
        (bytes.fromhex("03 0c 00 00"), "Length field says 3"),  # too long for its Length
        (bytes.fromhex("02 03"), "unknown MsgType 0x03"),
        (bytes.fromhex("02 11"), "unknown MsgType 0x11"),
        (bytes.fromhex("04 0c 00 00"), "PUBLISH"),  # too short for its fields
        (bytes.fromhex("07 0c 03 00 01 00 01"), "reserved"),  # TopicIdType 0b11
        (bytes.fromhex("01 00 05 16 00"), "3-octet Length 5"),
        (bytes.fromhex("05 0a 00 01"), "Length field says 5"),
        (bytes.fromhex("05 04 04 01 00"), "CONNECT"),
        (bytes.fromhex("07 04 04 01 00 3c ff"), "not UTF-8"),
        (bytes.fromhex("05 12 60 00 01"), "SUBSCRIBE"),
        (bytes.fromhex("06 12 61 00 01 00"), "predefined"),
        (bytes.fromhex("03 18 00"), "DISCONNECT"),
    ],
)
def test_malformed_datagrams_are_refused_with_a_reason(wire: bytes, why: str) -> None:
    """§5.2: Length must match the datagram; §5.2.2: reserved MsgTypes are refused."""
    with pytest.raises(c.SnMalformed, match=why):
        c.decode(wire)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_sn_malformed(data: bytes) -> None:
    try:
        msg = c.decode(data)
    except c.SnMalformed:
        return
    # What decodes re-encodes to the same datagram (encapsulation keeps its body).
    assert c.decode(c.encode(msg)) == msg


_topic_ids = st.integers(0, 0xFFFF)
_qos = st.sampled_from([-1, 0, 1, 2])


@given(st.sampled_from(list(c.TopicIdType)), _topic_ids, _topic_ids, st.binary(max_size=600),
       _qos, st.booleans(), st.booleans())
def test_publish_round_trip(tid_type: int, topic_id: int, msg_id: int, data: bytes, qos: int,
                            retain: bool, dup: bool) -> None:
    msg = c.Publish(tid_type, topic_id, msg_id, data, qos=qos, retain=retain, dup=dup)
    assert c.decode(c.encode(msg)) == msg


@given(st.text(min_size=1, max_size=300), _topic_ids, _topic_ids)
def test_register_round_trip(name: str, topic_id: int, msg_id: int) -> None:
    msg = c.Register(topic_id, msg_id, name)
    assert c.decode(c.encode(msg)) == msg
