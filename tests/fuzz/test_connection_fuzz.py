"""Hostile input for the codec and the sans-I/O connection (issue 7).

Arbitrary bytes, and valid packets (the golden catalogue and randomly encoded packets of
every type, both protocol levels) MUTATED by bit flips, byte changes, truncation,
Remaining Length rewrites, first-byte (type/flags) changes, insertion, deletion,
duplication and splicing, are fed

* to :class:`~iotbroker.codec.Framer` + :func:`~iotbroker.codec.decode_packet`, and
* to a fresh :class:`~iotbroker.protocol.connection.Connection`, before and after a valid
  CONNECT was accepted,

cut at random boundaries. The only allowed outcomes are packets, or an
:class:`~iotbroker.errors.MqttError` subclass whose reason code is an error code of the
MQTT 5.0 table (§2.4, >= 0x80); never another exception. A Connection never raises:
it returns the packets before a violation and records the error in ``conn.failure``.
The bytes a framer holds back never exceed its maximum packet size ("limits before
allocation", design.md).
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.enums import ReasonCode
from iotbroker.codec.packets import Connect, Packet
from iotbroker.codec.primitives import encode_varint
from iotbroker.errors import MqttError
from iotbroker.protocol.connection import Connection
from tests.codec import golden
from tests.codec.test_roundtrip import packets

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VERSIONS = (4, 5)
ERROR_CODES = frozenset(int(code) for code in ReasonCode if code >= 0x80)
#: Maximum packet sizes the framers are built with: tiny, small, the broker default.
MAX_SIZES = (64, 1024, 16 * 1024 * 1024)

GOLDEN_RAW = {v: [g.raw for g in golden.ALL if g.version == v] for v in VERSIONS}


def _check_error(exc: MqttError) -> None:
    """An error a peer caused: closes the connection with a defined MQTT 5.0 reason code."""
    assert isinstance(exc, MqttError)
    assert exc.reason_code in ERROR_CODES, (
        f"{type(exc).__name__} carries reason code 0x{exc.reason_code:02x}, "
        f"not an error code of the MQTT 5.0 table: {exc}"
    )
    assert isinstance(exc.spec_ref, str)
    assert isinstance(exc.message, str)


# ------------------------------------------------------------------------ strategies


def seeds(version: int) -> st.SearchStrategy[bytes]:
    """One valid-or-golden packet on the wire for ``version``."""
    return st.one_of(
        st.sampled_from(GOLDEN_RAW[version]),
        packets(version).map(lambda p: encode_packet(p, version)),
    )


def _remaining_length_span(data: bytes | bytearray) -> tuple[int, int] | None:
    """Where the Remaining Length of the first packet is: (start, end), or None."""
    for end in range(2, min(len(data), 5) + 1):
        if data[end - 1] < 0x80:
            return 1, end
    return None


@st.composite
def mutated(draw: st.DrawFn, version: int) -> bytes:
    """A valid packet put through 1..4 random mutations."""
    data = bytearray(draw(seeds(version)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(
                (
                    "bitflip",
                    "setbyte",
                    "truncate",
                    "length",
                    "first",
                    "insert",
                    "delete",
                    "duplicate",
                    "splice",
                )
            )
        )
        n = len(data)
        if op == "bitflip" and n:
            i = draw(st.integers(0, n - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "setbyte" and n:
            data[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
        elif op == "truncate" and n:
            data = data[: draw(st.integers(0, n - 1))]
        elif op == "length":
            span = _remaining_length_span(data)
            start, end = span if span else (1, min(n, 2))
            body_len = max(0, n - end)
            new = draw(
                st.one_of(
                    st.sampled_from([0, 1, 127, 128, 16_383, 16_384, 268_435_455])
                    .map(encode_varint),
                    st.integers(max(0, body_len - 3), body_len + 3).map(encode_varint),
                    st.integers(0, 268_435_455).map(encode_varint),
                    # over-long and too-long encodings [MQTT-1.5.5-1]
                    st.sampled_from(
                        [b"\x80\x00", b"\xff\x80\x00", b"\xff\xff\xff\xff\x7f", b"\x80",
                         b"\xff\xff\xff\xff"]
                    ),
                )
            )
            data = data[:start] + new + data[end:]
        elif op == "first":
            if n:
                data[0] = draw(st.integers(0, 255))
        elif op == "insert":
            i = draw(st.integers(0, n))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "duplicate":
            data = data + data
        elif op == "splice":
            other = draw(seeds(version))
            data = data[: draw(st.integers(0, n))] + other[draw(st.integers(0, len(other))) :]
    return bytes(data)


def hostile(version: int) -> st.SearchStrategy[bytes]:
    """A hostile packet: arbitrary bytes, a mutated packet, or (sometimes) a valid one."""
    return st.one_of(
        st.binary(max_size=64),
        mutated(version),
        mutated(version),
        seeds(version),
    )


@st.composite
def hostile_stream(draw: st.DrawFn, version: int) -> bytes:
    """Several hostile packets back to back, valid ones interleaved."""
    parts = draw(st.lists(hostile(version), min_size=1, max_size=6))
    return b"".join(parts)


def chunks(data_object: st.DataObject, data: bytes) -> list[bytes]:
    """``data`` cut at random boundaries (possibly every byte, possibly not at all)."""
    draw = data_object.draw
    if not data:
        return [b""]
    how = draw(st.sampled_from(("whole", "random", "bytewise")))
    if how == "whole":
        return [data]
    if how == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=8))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# ------------------------------------------------------------------- framer + decode


def feed_codec(pieces: list[bytes], version: int, max_size: int) -> list[Packet]:
    """Frame and decode ``pieces``; an MqttError ends the stream (as it ends a connection)."""
    framer = Framer(max_size)
    out: list[Packet] = []
    try:
        for piece in pieces:
            frames = framer.feed(piece)
            assert framer.buffered <= max_size, (framer.buffered, max_size)
            for first, body in frames:
                assert len(body) + 2 <= max_size
                out.append(decode_packet(first, body, version))
    except MqttError as exc:
        _check_error(exc)
    return out


@SETTINGS
@given(st.sampled_from(VERSIONS), st.sampled_from(MAX_SIZES), st.binary(max_size=256), st.data())
def test_arbitrary_bytes_give_packets_or_an_mqtt_error(
    version: int, max_size: int, data: bytes, draw: st.DataObject
) -> None:
    feed_codec(chunks(draw, data), version, max_size)


@SETTINGS
@given(
    st.sampled_from(VERSIONS).flatmap(lambda v: st.tuples(st.just(v), hostile_stream(v))),
    st.sampled_from(MAX_SIZES),
    st.data(),
)
def test_mutated_packets_give_packets_or_an_mqtt_error(
    vd: tuple[int, bytes], max_size: int, draw: st.DataObject
) -> None:
    version, data = vd
    feed_codec(chunks(draw, data), version, max_size)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_bit_flip_and_truncation_of_every_golden_packet(version: int) -> None:
    """Deterministic sweep: each golden packet with each single bit flipped, each
    truncation, and each first byte (every packet type and flag combination)."""
    for raw in GOLDEN_RAW[version]:
        for i in range(len(raw)):
            for bit in range(8):
                mutant = bytearray(raw)
                mutant[i] ^= 1 << bit
                feed_codec([bytes(mutant)], version, 1024)
            feed_codec([raw[:i]], version, 1024)
        for first in range(256):
            feed_codec([bytes((first,)) + raw[1:]], version, 1024)


@pytest.mark.parametrize("version", VERSIONS)
def test_declared_huge_packet_is_refused_from_its_header(version: int) -> None:
    """A 256 MiB Remaining Length is refused on the fixed header: nothing is buffered."""
    framer = Framer(1024)
    header = b"\x30" + encode_varint(268_435_455)
    with pytest.raises(MqttError) as info:
        framer.feed(header + b"\x00" * 100)
    assert info.value.reason_code == 0x95
    # Byte by byte: refused as soon as the 4-byte length is complete.
    framer = Framer(1024)
    with pytest.raises(MqttError):
        for i in range(len(header)):
            framer.feed(header[i : i + 1])
            assert framer.buffered <= 5


def test_a_partial_body_is_held_back_but_bounded() -> None:
    framer = Framer(1024)
    body = struct.pack(">H", 1) + b"t" + b"x" * 900
    raw = b"\x30" + encode_varint(len(body)) + body
    for i in range(0, len(raw) - 1, 7):
        assert framer.feed(raw[i : i + 7]) == [] or i + 7 >= len(raw)
        assert framer.buffered <= 1024


# ------------------------------------------------------------------------ Connection


def _connect_bytes(version: int) -> bytes:
    return encode_packet(Connect(client_id="fuzz", protocol_version=version), version)


def new_connection(version: int, max_size: int, accept: bool) -> Connection:
    """A Connection; with ``accept`` a valid CONNECT was read and accepted."""
    conn = Connection(max_packet_size=max_size, receive_maximum=4, topic_alias_maximum=3, now=0.0)
    if accept:
        got = conn.receive_data(_connect_bytes(version), 0.0)
        assert len(got) == 1 and isinstance(got[0], Connect)
        conn.accept(
            keepalive=60,
            client_receive_maximum=None,
            client_max_packet_size=None,
            client_topic_alias_maximum=None,
            outbound_aliases=False,
            request_problem_information=True,
        )
        assert conn.connected
    return conn


def feed_connection(conn: Connection, pieces: list[bytes], max_size: int) -> list[Packet]:
    """Feed ``pieces``: ``receive_data`` never raises; a violation is recorded once in
    ``conn.failure`` (an MQTT error with a defined reason code), and after it the
    connection reads nothing more."""
    out: list[Packet] = []
    now = 1.0
    for piece in pieces:
        failed_before = conn.failure
        got = conn.receive_data(piece, now)
        assert isinstance(got, list)
        for packet in got:
            assert hasattr(packet, "TYPE"), packet
        if failed_before is not None:
            assert got == [] and conn.failure is failed_before  # set once, reads nothing
        out.extend(got)
        assert conn.buffered <= max_size
        now += 0.01
    if conn.failure is not None:
        _check_error(conn.failure)
        assert conn.receive_data(_connect_bytes(conn.protocol_version), now) == []
    return out


def check_same_outcome_unsplit(
    conn: Connection, got: list[Packet], data: bytes, version: int, max_size: int,
    accept: bool,
) -> None:
    """Where the stream is cut changes nothing: fed in one piece, a fresh connection
    returns the same packets (those before a violation included) and the same failure."""
    whole = new_connection(version, max_size, accept=accept)
    assert feed_connection(whole, [data], max_size) == got
    if conn.failure is None:
        assert whole.failure is None
    else:
        assert whole.failure is not None
        assert (type(whole.failure), whole.failure.reason_code) == (
            type(conn.failure), conn.failure.reason_code)


@SETTINGS
@given(
    st.sampled_from(VERSIONS).flatmap(lambda v: st.tuples(st.just(v), hostile_stream(v))),
    st.sampled_from(MAX_SIZES),
    st.data(),
)
def test_connection_after_connect_gives_packets_or_an_mqtt_error(
    vd: tuple[int, bytes], max_size: int, draw: st.DataObject
) -> None:
    version, data = vd
    conn = new_connection(version, max_size, accept=True)
    got = feed_connection(conn, chunks(draw, data), max_size)
    check_same_outcome_unsplit(conn, got, data, version, max_size, accept=True)


@SETTINGS
@given(
    st.sampled_from(VERSIONS).flatmap(lambda v: st.tuples(st.just(v), hostile_stream(v))),
    st.sampled_from(MAX_SIZES),
    st.booleans(),
    st.data(),
)
def test_connection_before_connect_gives_packets_or_an_mqtt_error(
    vd: tuple[int, bytes], max_size: int, lead_with_connect: bool, draw: st.DataObject
) -> None:
    """A fresh connection: hostile bytes first, or a valid CONNECT (not yet accepted:
    the AUTHENTICATING state) followed by hostile bytes in the same stream."""
    version, data = vd
    conn = new_connection(version, max_size, accept=False)
    if lead_with_connect:
        data = _connect_bytes(version) + data
    got = feed_connection(conn, chunks(draw, data), max_size)
    check_same_outcome_unsplit(conn, got, data, version, max_size, accept=False)


@SETTINGS
@given(st.sampled_from(VERSIONS), st.binary(max_size=256), st.data())
def test_connection_arbitrary_bytes_after_connect(
    version: int, data: bytes, draw: st.DataObject
) -> None:
    conn = new_connection(version, 1024, accept=True)
    feed_connection(conn, chunks(draw, data), 1024)
