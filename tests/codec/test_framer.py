"""Framer: split at every byte boundary, size limit from the fixed header, varint caps.

MQTT 3.1.1 §2.2.3 / MQTT 5.0 §2.1.4 (Remaining Length), §1.5.5 (Variable Byte Integer),
MQTT 5.0 §3.1.2.11.4 (Maximum Packet Size).
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotbroker.codec import Framer, decode_packet
from iotbroker.codec.decode import decode_whole
from iotbroker.errors import MalformedPacket, MqttError, PacketTooLarge
from tests.codec import golden

STREAM_CASES = [c for c in golden.VALID if c.version == 5]
STREAM = b"".join(c.raw for c in STREAM_CASES)
EXPECTED = [c.packet for c in STREAM_CASES]


def _frames_of(chunks: list[bytes], max_packet_size: int = 1 << 20) -> list[tuple[int, bytes]]:
    framer = Framer(max_packet_size)
    frames: list[tuple[int, bytes]] = []
    for chunk in chunks:
        frames.extend(framer.feed(chunk))
    assert framer.buffered == 0
    return frames


def test_one_read_holding_several_packets() -> None:
    frames = _frames_of([STREAM])
    assert [decode_packet(f, b, 5) for f, b in frames] == EXPECTED


def test_split_at_every_byte_boundary() -> None:
    whole = _frames_of([STREAM])
    for i in range(len(STREAM) + 1):
        assert _frames_of([STREAM[:i], STREAM[i:]]) == whole, i


def test_split_at_every_pair_of_boundaries_in_a_short_stream() -> None:
    data = golden.h("30 cb 01 00 01 74") + b"\xaa" * 200 + golden.h("40 02 00 01 c0 00")
    whole = _frames_of([data])
    assert len(whole) == 3
    for i in range(0, len(data) + 1, 3):
        for j in range(i, len(data) + 1, 5):
            assert _frames_of([data[:i], data[i:j], data[j:]]) == whole


def test_one_byte_at_a_time() -> None:
    assert _frames_of([bytes((b,)) for b in STREAM]) == _frames_of([STREAM])


def test_tail_of_a_packet_with_first_byte_of_the_next() -> None:
    """The remembered body length of a finished packet must not delay the next one."""
    framer = Framer()
    big = golden.h("30 cb 01 00 01 74") + b"\xaa" * 200
    assert framer.feed(big[:10]) == []
    frames = framer.feed(big[10:] + b"\xc0")
    assert len(frames) == 1
    assert framer.feed(b"\x00") == [(0xC0, b"")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_random_splits(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert _frames_of(chunks) == _frames_of([STREAM])


def test_bodies_are_bytes_even_from_bytearray_or_memoryview_input() -> None:
    framer = Framer()
    (frame,) = framer.feed(bytearray(golden.h("40 02 00 01")))
    assert type(frame[1]) is bytes
    (frame,) = framer.feed(memoryview(golden.h("40 02 00 01")))
    assert type(frame[1]) is bytes


def test_bytes_received_counts_every_byte() -> None:
    framer = Framer()
    framer.feed(STREAM[:7])
    framer.feed(STREAM[7:])
    assert framer.bytes_received == len(STREAM)


# ----------------------------------------------------------------------------- size limit


def test_packet_too_large_raised_from_the_fixed_header_before_the_body() -> None:
    """MQTT 5.0 §3.1.2.11.4: 0x95 decided on the fixed header alone (limits before allocation)."""
    framer = Framer(max_packet_size=100)
    # PUBLISH with Remaining Length 1000 (0xe8 0x07): only the 3 header bytes arrive.
    with pytest.raises(PacketTooLarge) as info:
        framer.feed(b"\x30\xe8\x07")
    assert info.value.reason_code == 0x95
    assert framer.buffered == 0


def test_packet_too_large_counts_the_fixed_header() -> None:
    """The limit is on the whole packet: 2 header bytes + 98 body bytes = 100."""
    ok = b"\x30\x62" + b"\x00\x01t" + b"x" * 95
    assert len(ok) == 100
    assert len(Framer(max_packet_size=100).feed(ok)) == 1
    with pytest.raises(PacketTooLarge):
        Framer(max_packet_size=99).feed(ok[:2])


def test_max_packet_size_is_settable_between_feeds() -> None:
    framer = Framer()
    assert len(framer.feed(b"\x30\x62" + b"\x00\x01t" + b"x" * 95)) == 1
    framer.max_packet_size = 50
    with pytest.raises(PacketTooLarge):
        framer.feed(b"\x30\x62")


def test_packet_too_large_split_header() -> None:
    framer = Framer(max_packet_size=100)
    assert framer.feed(b"\x30\xe8") == []
    with pytest.raises(PacketTooLarge):
        framer.feed(b"\x07")


# ----------------------------------------------------------------------------- varint


def test_mqtt_1_5_5_1_remaining_length_of_five_bytes_is_malformed() -> None:
    """A fifth Remaining Length byte is malformed (0x81), even fed one byte at a time."""
    framer = Framer()
    for byte in b"\x30\xff\xff\xff":
        assert framer.feed(bytes((byte,))) == []
    with pytest.raises(MalformedPacket) as info:
        framer.feed(b"\xff")
    assert info.value.reason_code == 0x81
    assert info.value.spec_ref == "MQTT-1.5.5-1"


def test_mqtt_1_5_5_1_overlong_remaining_length_is_malformed() -> None:
    with pytest.raises(MalformedPacket) as info:
        Framer().feed(b"\xc0\x80\x80\x00")
    assert info.value.spec_ref == "MQTT-1.5.5-1"


def test_largest_four_byte_remaining_length_is_accepted_in_the_header() -> None:
    """268,435,455 in 4 bytes (0xff 0xff 0xff 0x7f) is the protocol maximum."""
    framer = Framer()
    assert framer.feed(b"\x30\xff\xff\xff\x7f") == []
    assert framer.buffered == 5


def test_framer_feed_into_keeps_the_frames_before_a_bad_header() -> None:
    """``Framer.feed_into`` returns a bad header as a value; the frames before it are
    kept. ``feed`` raises it, as before."""
    data = b"\xc0\x00\xc0\x00\x30\xff\xff\xff\xff\x7f"
    frames: list[tuple[int, bytes]] = []
    error = Framer(1024).feed_into(data, frames)
    assert frames == [(0xC0, b""), (0xC0, b"")]
    assert isinstance(error, MalformedPacket) and error.spec_ref == "MQTT-1.5.5-1"
    with pytest.raises(MalformedPacket):
        Framer(1024).feed(data)


def test_whole_frame_is_the_fixed_header_of_a_read_of_exactly_one_packet() -> None:
    """``whole_frame``: the header length (2..5 bytes, MQTT 5.0 §2.1.4) when the read is
    one whole packet within the limit and nothing is held back; 0 otherwise, and the
    read is then framed by ``feed_into`` (which reports any error)."""
    short = golden.h("40 02 00 01")
    long = golden.h("30 cb 01 00 01 74") + b"\xaa" * 200
    assert Framer().whole_frame(short) == 2
    assert Framer().whole_frame(long) == 3
    assert Framer().whole_frame(short + short) == 0  # two packets
    assert Framer().whole_frame(short[:3]) == 0  # incomplete body
    assert Framer().whole_frame(long[:2]) == 0  # incomplete header
    assert Framer().whole_frame(golden.h("30 80 00")) == 0  # not shortest [MQTT-1.5.5-1]
    assert Framer().whole_frame(golden.h("30 ff ff ff ff 01")) == 0  # 5-byte length
    assert Framer(len(long) - 1).whole_frame(long) == 0  # over max_packet_size
    assert Framer(len(long)).whole_frame(long) == 3
    held = Framer()
    held.feed(short[:1])
    assert held.whole_frame(short) == 0  # a partial packet is held back


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, 255) | st.sampled_from([0x30, 0x32, 0x34, 0x3B, 0x40]),
    st.binary(max_size=60),
    st.sampled_from([4, 5]),
)
def test_whole_frame_and_decode_whole_agree_with_feed_and_decode_packet(
    first: int, body: bytes, version: int
) -> None:
    """Any one packet's bytes: the in-place path gives the same packet or the same error."""
    raw = bytes((first, len(body))) + body
    header = Framer().whole_frame(raw)
    assert header == 2
    frames = Framer().feed(raw)
    assert frames == [(raw[0], raw[header:])]
    try:
        expected = decode_packet(raw[0], raw[header:], version)
    except MqttError as exc:
        with pytest.raises(type(exc)) as info:
            decode_whole(raw, header, version)
        assert (info.value.reason_code, info.value.spec_ref) == (exc.reason_code, exc.spec_ref)
        assert str(info.value) == str(exc)
        return
    assert decode_whole(raw, header, version) == expected
