"""Property-based tests: encode -> frame -> decode is the identity, for every packet type
in both protocol levels; arbitrary or corrupted bytes give a packet or an MqttError.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotbroker.codec import Framer, decode_packet, encode_packet, encode_publish
from iotbroker.codec.decode import decode_whole
from iotbroker.codec.packets import (
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
from iotbroker.codec.primitives import (
    encode_binary,
    encode_utf8,
    encode_varint,
    read_binary,
    read_utf8,
    read_varint,
    validate_utf8,
)
from iotbroker.codec.properties import (
    BINARY_DATA,
    BYTE,
    FOUR_BYTE_INT,
    PROPERTY_TABLE,
    TWO_BYTE_INT,
    UTF8_STRING,
    UTF8_STRING_PAIR,
    VARIABLE_BYTE_INT,
    WILL,
    decode_properties,
    encode_properties,
)
from iotbroker.errors import MalformedPacket, MqttError, ProtocolViolation

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# MQTT strings: no surrogates [MQTT-1.5.4-1], no U+0000 [MQTT-1.5.4-2].
text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
blob = st.binary(max_size=40)
packet_id = st.integers(1, 0xFFFF)
qos = st.integers(0, 2)
versions = st.sampled_from([4, 5])


def _value(wire: int, boolean: bool, nonzero: bool) -> st.SearchStrategy[Any]:
    low = 1 if nonzero else 0
    if wire == BYTE:
        return st.integers(0, 1) if boolean else st.integers(low, 0xFF)
    if wire == TWO_BYTE_INT:
        return st.integers(low, 0xFFFF)
    if wire == FOUR_BYTE_INT:
        return st.integers(low, 0xFFFF_FFFF)
    if wire == VARIABLE_BYTE_INT:
        return st.integers(1, 268_435_455)
    if wire == UTF8_STRING:
        return text
    if wire == BINARY_DATA:
        return blob
    assert wire == UTF8_STRING_PAIR
    return st.tuples(text, text)


@st.composite
def properties(draw: st.DrawFn, kind: int) -> Properties:
    """Any valid property set for packet ``kind`` (MQTT 5.0 §2.2.2.2)."""
    props = Properties()
    for spec in PROPERTY_TABLE.values():
        if kind not in spec.kinds or not draw(st.booleans()):
            continue
        value = _value(spec.wire, spec.boolean, spec.nonzero)
        if spec.wire == UTF8_STRING_PAIR:
            setattr(props, spec.name, tuple(draw(st.lists(value, min_size=1, max_size=3))))
        elif spec.wire == VARIABLE_BYTE_INT:
            most = 3 if kind == 3 else 1
            setattr(props, spec.name, tuple(draw(st.lists(value, min_size=1, max_size=most))))
        else:
            setattr(props, spec.name, draw(value))
    return props


def _props(draw: st.DrawFn, v: int, kind: int) -> Properties:
    return draw(properties(kind)) if v == 5 else Properties()


@st.composite
def packets(draw: st.DrawFn, v: int) -> Packet:
    """Any syntactically valid packet of any type for protocol level ``v``."""
    kind = draw(st.integers(1, 15 if v == 5 else 14))
    reason = draw(st.integers(0, 255)) if v == 5 else 0
    if kind == 1:
        will = None
        if draw(st.booleans()):
            will = Will(
                draw(text), draw(blob), draw(qos), draw(st.booleans()), _props(draw, v, WILL)
            )
        username = draw(st.none() | text)
        password = draw(st.none() | blob)
        if v == 4 and username is None:
            password = None  # [MQTT-3.1.2-22]
        return Connect(
            draw(text),
            v,
            "MQTT",
            draw(st.booleans()),
            draw(st.integers(0, 0xFFFF)),
            will,
            username,
            password,
            _props(draw, v, 1),
        )
    if kind == 2:
        return ConnAck(draw(st.booleans()), draw(st.integers(0, 255)), _props(draw, v, 2))
    if kind == 3:
        q = draw(qos)
        return Publish(
            draw(text),
            draw(blob),
            q,
            draw(st.booleans()),
            draw(st.booleans()) if q else False,
            draw(packet_id) if q else None,
            _props(draw, v, 3),
        )
    if kind in (4, 5, 6, 7):
        cls = (PubAck, PubRec, PubRel, PubComp)[kind - 4]
        return cls(draw(packet_id), reason, _props(draw, v, kind))
    if kind == 8:
        subs = draw(
            st.lists(
                st.builds(Subscription, text, qos, st.booleans(), st.booleans(), st.integers(0, 2))
                if v == 5
                else st.builds(Subscription, text, qos),
                min_size=1,
                max_size=4,
            )
        )
        return Subscribe(draw(packet_id), subs, _props(draw, v, 8))
    if kind == 9:
        codes = st.integers(0, 255) if v == 5 else st.sampled_from([0, 1, 2, 0x80])
        return SubAck(draw(packet_id), draw(st.lists(codes, max_size=4)), _props(draw, v, 9))
    if kind == 10:
        return Unsubscribe(
            draw(packet_id), draw(st.lists(text, min_size=1, max_size=4)), _props(draw, v, 10)
        )
    if kind == 11:
        codes_v5 = draw(st.lists(st.integers(0, 255), max_size=4)) if v == 5 else []
        return UnsubAck(draw(packet_id), codes_v5, _props(draw, v, 11))
    if kind == 12:
        return PingReq()
    if kind == 13:
        return PingResp()
    if kind == 14:
        return Disconnect(reason, _props(draw, v, 14))
    return Auth(reason, _props(draw, v, 15))


@st.composite
def versioned_packets(draw: st.DrawFn) -> tuple[int, Packet]:
    v = draw(versions)
    return v, draw(packets(v))


def _decode_all(data: bytes, version: int) -> list[Packet]:
    framer = Framer()
    return [decode_packet(first, body, version) for first, body in framer.feed(data)]


@SETTINGS
@given(versioned_packets())
def test_encode_frame_decode_round_trip(vp: tuple[int, Packet]) -> None:
    version, packet = vp
    assert _decode_all(encode_packet(packet, version), version) == [packet]


@SETTINGS
@given(versions.flatmap(lambda v: st.tuples(st.just(v), st.lists(packets(v), max_size=5))))
def test_a_stream_of_packets_round_trips(vp: tuple[int, list[Packet]]) -> None:
    version, pkts = vp
    data = b"".join(encode_packet(p, version) for p in pkts)
    assert _decode_all(data, version) == pkts


def _packet_or_mqtt_error(data: bytes, version: int) -> None:
    framer = Framer(4096)
    try:
        for first, body in framer.feed(data):
            decode_packet(first, body, version)
    except MqttError:
        pass


@SETTINGS
@given(st.binary(max_size=64), versions)
def test_arbitrary_bytes_give_a_packet_or_an_mqtt_error(data: bytes, version: int) -> None:
    _packet_or_mqtt_error(data, version)


@SETTINGS
@given(st.integers(0, 255), st.binary(max_size=64), versions)
def test_arbitrary_bodies_of_every_type_give_a_packet_or_an_mqtt_error(
    first: int, body: bytes, version: int
) -> None:
    with contextlib.suppress(MqttError):
        decode_packet(first, body, version)


@SETTINGS
@given(versioned_packets(), st.data())
def test_corrupted_packets_give_a_packet_or_an_mqtt_error(
    vp: tuple[int, Packet], data: st.DataObject
) -> None:
    version, packet = vp
    raw = bytearray(encode_packet(packet, version))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _packet_or_mqtt_error(bytes(raw), version)
    # The body alone, whatever the (possibly corrupted) Remaining Length says.
    if len(raw) >= 2:
        with contextlib.suppress(MqttError):
            decode_packet(raw[0], bytes(raw[2:]), version)


# ----------------------------------------------------------------------------- primitives


@SETTINGS
@given(st.integers(0, 268_435_455))
def test_mqtt_1_5_5_1_varint_round_trip_in_shortest_form(value: int) -> None:
    raw = encode_varint(value)
    assert read_varint(raw, 0) == (value, len(raw))
    assert len(raw) == 1 + (value > 127) + (value > 16_383) + (value > 2_097_151)


def test_varint_boundaries_and_limits() -> None:
    """MQTT 5.0 §1.5.5 table: 1 to 4 bytes; larger values cannot be written."""
    for value, raw in [
        (0, "00"),
        (127, "7f"),
        (128, "80 01"),
        (16_383, "ff 7f"),
        (16_384, "80 80 01"),
        (2_097_151, "ff ff 7f"),
        (2_097_152, "80 80 80 01"),
        (268_435_455, "ff ff ff 7f"),
    ]:
        assert encode_varint(value) == bytes.fromhex(raw)
        assert read_varint(bytes.fromhex(raw), 0) == (value, len(bytes.fromhex(raw)))
    with pytest.raises(ValueError):
        encode_varint(268_435_456)
    with pytest.raises(MalformedPacket):
        read_varint(b"\xff\xff\xff\xff\x01", 0)
    with pytest.raises(MalformedPacket):
        read_varint(b"\x80", 0)  # truncated


def test_mqtt_1_5_3_3_and_1_5_4_3_bom_is_kept() -> None:
    assert validate_utf8(b"\xef\xbb\xbfabc") == "\ufeffabc"
    assert validate_utf8(b"\xef\xbb\xbfabc", v5=True) == "\ufeffabc"


@pytest.mark.parametrize(
    "raw", [b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\xaf", b"\xff", b"a\xc3", b"\xf4\x90\x80\x80"]
)
def test_mqtt_1_5_3_1_and_1_5_4_1_ill_formed_utf8_is_malformed(raw: bytes) -> None:
    """Surrogates, over-long forms, invalid bytes, truncated sequences, > U+10FFFF."""
    with pytest.raises(MalformedPacket) as info:
        validate_utf8(raw)
    assert info.value.spec_ref == "MQTT-1.5.3-1"
    with pytest.raises(MalformedPacket) as info:
        validate_utf8(raw, v5=True)
    assert info.value.spec_ref == "MQTT-1.5.4-1"


def test_mqtt_1_5_3_2_and_1_5_4_2_nul_is_malformed() -> None:
    with pytest.raises(MalformedPacket) as info:
        read_utf8(b"\x00\x02a\x00", 0)
    assert info.value.spec_ref == "MQTT-1.5.3-2"
    with pytest.raises(MalformedPacket) as info:
        read_utf8(b"\x00\x02a\x00", 0, v5=True)
    assert info.value.spec_ref == "MQTT-1.5.4-2"


def test_strings_running_past_the_buffer_are_malformed() -> None:
    for reader in (read_utf8, read_binary):
        with pytest.raises(MalformedPacket):
            reader(b"\x00\x05abc", 0)
        with pytest.raises(MalformedPacket):
            reader(b"\x00", 0)


def test_encoders_refuse_what_cannot_be_written() -> None:
    with pytest.raises(ValueError):
        encode_utf8("x" * 65_536)
    with pytest.raises(ValueError):
        encode_binary(b"x" * 65_536)
    with pytest.raises(ValueError):
        encode_utf8("\ud800")  # lone surrogate


# ----------------------------------------------------------------------------- properties

KINDS = sorted({k for spec in PROPERTY_TABLE.values() for k in spec.kinds})


@SETTINGS
@given(st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), properties(k))))
def test_properties_round_trip_for_every_kind(kp: tuple[int, Properties]) -> None:
    """MQTT 5.0 §2.2.2: length prefix + properties; every valid set comes back equal."""
    kind, props = kp
    raw = encode_properties(props, kind)
    assert decode_properties(raw, 0, kind) == (props, len(raw))


def test_mqtt_2_2_2_1_no_properties_is_a_zero_length() -> None:
    """[MQTT-2.2.2-1] (5.0): a packet without properties still carries Property Length 0."""
    assert encode_properties(Properties(), 3) == b"\x00"
    assert encode_packet(Publish("t", b""), 5) == bytes.fromhex("30 04 00 01 74 00")


def test_every_property_not_allowed_in_a_kind_is_malformed_there() -> None:
    """MQTT 5.0 §2.2.2.2: an identifier not valid for the packet type is malformed."""
    sample = {
        BYTE: b"\x00",
        TWO_BYTE_INT: b"\x00\x01",
        FOUR_BYTE_INT: b"\x00\x00\x00\x01",
        VARIABLE_BYTE_INT: b"\x01",
        UTF8_STRING: b"\x00\x00",
        BINARY_DATA: b"\x00\x00",
        UTF8_STRING_PAIR: b"\x00\x00\x00\x00",
    }
    for spec in PROPERTY_TABLE.values():
        block = bytes((spec.id,)) + sample[spec.wire]
        raw = encode_varint(len(block)) + block
        for kind in KINDS:
            if kind in spec.kinds:
                props, end = decode_properties(raw, 0, kind)
                assert end == len(raw)
                assert props != Properties()
            else:
                with pytest.raises(MalformedPacket):
                    decode_properties(raw, 0, kind)


def test_every_single_valued_property_twice_is_a_protocol_error() -> None:
    """Each property section of MQTT 5.0 §3: "a Protocol Error to include ... more than once"."""
    sample = {
        BYTE: b"\x00",
        TWO_BYTE_INT: b"\x00\x01",
        FOUR_BYTE_INT: b"\x00\x00\x00\x01",
        VARIABLE_BYTE_INT: b"\x01",
        UTF8_STRING: b"\x00\x00",
        BINARY_DATA: b"\x00\x00",
    }
    for spec in PROPERTY_TABLE.values():
        if spec.wire == UTF8_STRING_PAIR:
            continue
        block = (bytes((spec.id,)) + sample[spec.wire]) * 2
        raw = encode_varint(len(block)) + block
        for kind in spec.kinds:
            if kind == 3 and spec.wire == VARIABLE_BYTE_INT:
                assert decode_properties(raw, 0, kind)[0].subscription_identifiers == (1, 1)
                continue
            with pytest.raises(ProtocolViolation):
                decode_properties(raw, 0, kind)


def test_encoding_a_property_on_the_wrong_packet_is_our_bug() -> None:
    with pytest.raises(ValueError):
        encode_properties(Properties(topic_alias=1), 4)
    with pytest.raises(ValueError):
        encode_properties(Properties(subscription_identifiers=(1, 2)), 8)


@SETTINGS
@given(versions.flatmap(lambda v: st.tuples(st.just(v), packets(v))))
def test_encode_publish_fast_path_matches_encode_packet(vp: tuple[int, Packet]) -> None:
    version, packet = vp
    if not isinstance(packet, Publish):
        return
    props = encode_properties(packet.properties, 3) if version == 5 else None
    fast = encode_publish(
        packet.topic, packet.payload, packet.qos, packet.retain, packet.dup, packet.packet_id, props
    )
    assert fast == encode_packet(packet, version)


def test_encode_publish_topic_bytes_follow_each_topic() -> None:
    """Given its topic's bytes (``topic_bytes``, as the broker passes a message's
    ``topic_raw``) or not, every PUBLISH carries its own topic as a UTF-8 string with
    its two-byte length [MQTT-1.5.3-1] (MQTT 3.1.1 §3.3.2.1), whatever came before."""
    def wire(topic: str, pid: int) -> bytes:
        t = topic.encode("utf-8")
        body = len(t).to_bytes(2, "big") + t + pid.to_bytes(2, "big") + b"p"
        return bytes((0x32, len(body))) + body

    a = "a/b"
    b = "".join(["a", "/", "b"])  # equal, another object
    c = "t/\u00e9"  # two UTF-8 bytes for one character
    for topic, pid in ((a, 1), (a, 2), (b, 3), (c, 4), (a, 5), (c, 6), (c, 7), ("", 8)):
        assert encode_publish(topic, b"p", 1, False, False, pid, None) == wire(topic, pid)
        assert encode_publish(
            topic, b"p", 1, False, False, pid, None, topic.encode("utf-8")
        ) == wire(topic, pid)


def test_decoded_publish_carries_its_topic_bytes() -> None:
    """A decoded PUBLISH keeps its Topic Name's bytes as received (``topic_raw``), the
    UTF-8 encoding of its ``topic`` [MQTT-1.5.4-1] (MQTT 5.0 §3.3.2.1), whether the
    framer's remembered topic was used or not (alternating topics miss it); the bytes
    are not part of the packet's identity."""
    framer = Framer()
    topics = ["a/b", "t/\u00e9", "a/b", "a/b", "t/\u00e9", "a/b", "a/", "a/", "a/bc", "a/b", "a/c"]
    wires = [encode_packet(Publish(t, b"x", 1, packet_id=i + 1), 5) for i, t in enumerate(topics)]
    got = [decode_whole(w, 2, 5, framer) for w in wires]  # (each one read, as the broker)
    got += [decode_packet(w[0], w[2:], 5) for w in wires]
    assert [p.topic for p in got if isinstance(p, Publish)] == topics + topics
    for p in got:
        assert isinstance(p, Publish)
        assert p.topic_raw == p.topic.encode("utf-8")
        assert p == Publish(p.topic, b"x", 1, packet_id=p.packet_id)
