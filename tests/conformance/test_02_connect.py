"""CONNECT / CONNACK (MQTT 3.1.1 §3.1-3.2, MQTT 5.0 §3.1-3.2), on the wire."""

from __future__ import annotations

import socket
import time

import pytest

from iotbroker.codec import encode_packet
from iotbroker.codec.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    Properties,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    Will,
)
from tests.helpers.conformance import (
    assert_broker_healthy,
    connect_bytes,
    connect_flags_offset,
    disconnect_reason,
    frame,
    ping,
    raw_reply,
    utf8_raw,
)
from tests.helpers.rawclient import RawClient

VERSIONS = pytest.mark.parametrize("version", [4, 5])


def _open(broker) -> socket.socket:
    sock = socket.create_connection((broker.host, broker.port), timeout=3.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _no_success_connack(packets: list, version: int) -> None:
    """Nothing, or only a failing CONNACK (v5 may explain a refusal), before the close."""
    for packet in packets:
        assert isinstance(packet, ConnAck), f"unexpected {packet!r} before close"
        assert packet.reason_code >= (0x80 if version == 5 else 1), packet
        assert packet.session_present is False


# ----------------------------------------------------------------- protocol name / level


@VERSIONS
def test_mqtt_3_1_2_1_wrong_protocol_name_closes(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-1]: a protocol name other than "MQTT" is not accepted under MQTT rules;
    the server closes (5.0: after an optional CONNACK 0x84)."""
    client: RawClient = raw(version)
    client.send(Connect(client_id=uniq, protocol_version=version, protocol_name="MQTX"))
    _no_success_connack(client.expect_closed(3.0), version)


@pytest.mark.parametrize(("name", "level"), [("MQTT", 3), ("MQIsdp", 4), ("MQIsdp", 5)])
def test_mqtt_3_1_2_2_unsupported_level_connack_0x01(
    broker, uniq: str, name: str, level: int
) -> None:
    """[MQTT-3.1.2-2] (3.1.1): an unsupported protocol level gets CONNACK return code 0x01
    (3.1.1 format) and the connection is closed. ("MQIsdp" with version 3 is MQTT 3.1,
    accepted: tests/interop/test_mqtt31.py.)"""
    sock = _open(broker)
    try:
        sock.sendall(
            frame(
                0x10,
                utf8_raw(name.encode()) + bytes((level, 0x02, 0, 60)) + utf8_raw(uniq.encode()),
            )
        )
        assert raw_reply(sock) == b"\x20\x02\x00\x01"
    finally:
        sock.close()


def test_mqtt_3_1_2_2_v5_unknown_level_refused_then_closed(broker, uniq: str) -> None:
    """[MQTT-3.1.2-2] (5.0): a protocol version the server does not accept may get
    CONNACK 0x84 (or the 3.1.1 form, 0x01), then the server MUST close."""
    sock = _open(broker)
    try:
        sock.sendall(
            frame(0x10, utf8_raw(b"MQTT") + bytes((6, 0x02, 0, 60)) + utf8_raw(uniq.encode()))
        )
        reply = raw_reply(sock)
        assert reply in (b"", b"\x20\x02\x00\x01", b"\x20\x03\x00\x84\x00"), reply
    finally:
        sock.close()


@VERSIONS
def test_mqtt_3_1_2_3_reserved_connect_flag_closes(broker, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-3]: the CONNECT reserved flag must be 0; otherwise the server closes
    (3.1.1: malformed, no CONNACK [MQTT-3.1.4-1]; 5.0: malformed, at most a CONNACK 0x81)."""
    data = bytearray(connect_bytes(version, uniq))
    data[connect_flags_offset(version, uniq)] |= 0x01
    with RawClient(broker.host, broker.port, version) as client:
        client.send_raw(bytes(data))
        _no_success_connack(client.expect_closed(3.0), version)
    assert_broker_healthy(broker, version)


# ----------------------------------------------------------------- first / second CONNECT


@VERSIONS
@pytest.mark.parametrize("first", ["pingreq", "subscribe", "publish"])
def test_mqtt_3_1_0_1_first_packet_must_be_connect(
    raw, uniq: str, version: int, first: str
) -> None:
    """[MQTT-3.1.0-1] (client rule) / [MQTT-4.8.0-1] (3.1.1) / [MQTT-4.13.1-1] (5.0): a
    packet other than CONNECT first is a protocol violation: the server closes the
    connection without answering it, and a PUBLISH sent that way is not routed."""
    watcher: RawClient = raw(version)
    watcher.connect(f"{uniq}-w")
    watcher.subscribe(f"{uniq}/t", 0)
    client: RawClient = raw(version)
    if first == "pingreq":
        client.send(PingReq())
    elif first == "subscribe":
        client.send(Subscribe(1, [Subscription(f"{uniq}/t", 0)]))
    else:
        client.send(Publish(f"{uniq}/t", b"before-connect"))
    got = client.expect_closed(3.0)
    assert got == [] or all(isinstance(p, Disconnect) for p in got), got
    watcher.nothing(0.3)


@VERSIONS
def test_mqtt_3_1_0_2_second_connect_closes(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.0-2]: a second CONNECT is a protocol violation; the server closes the
    connection (5.0: DISCONNECT 0x82 Protocol Error) and sends no second CONNACK
    [MQTT-3.2.0-2] (5.0)."""
    client: RawClient = raw(version)
    assert client.connect(uniq).reason_code == 0
    client.send(Connect(client_id=uniq, protocol_version=version))
    got = client.expect_closed(3.0)
    assert not any(isinstance(p, ConnAck) for p in got), got
    if version == 5:
        assert disconnect_reason(got) == 0x82, got


# ----------------------------------------------------------------- client identifier


@VERSIONS
def test_mqtt_3_1_3_5_short_alphanumeric_client_id_accepted(raw, version: int) -> None:
    """[MQTT-3.1.3-5]: client ids of 1..23 letters and digits must be accepted."""
    for client_id in ("a", f"Z9{time.monotonic_ns()}"[:23]):
        client: RawClient = raw(version)
        ack = client.connect(client_id)
        assert ack.reason_code == 0
        client.disconnect()


def test_mqtt_3_1_3_6_zero_length_client_id_clean_session_accepted_v311(raw) -> None:
    """[MQTT-3.1.3-6] (3.1.1): a zero-length client id with Clean Session 1 is accepted
    and given a unique id; the connection works."""
    client: RawClient = raw(4)
    ack = client.connect("", clean_start=True)
    assert ack.reason_code == 0
    assert ack.session_present is False
    ping(client)


def test_mqtt_3_1_3_8_zero_length_client_id_without_clean_session_v311(raw, uniq: str) -> None:
    """[MQTT-3.1.3-8] (3.1.1): zero-length client id with Clean Session 0 gets CONNACK 0x02
    (identifier rejected) and the connection is closed [MQTT-3.2.2-5]; Session Present
    is 0 [MQTT-3.2.2-4]."""
    client: RawClient = raw(4)
    ack = client.connect("", clean_start=False)
    assert ack.reason_code == 0x02
    assert ack.session_present is False
    client.expect_closed(3.0)


def test_mqtt_3_1_3_7_v5_assigned_client_identifier(raw) -> None:
    """[MQTT-3.1.3-6] / [MQTT-3.1.3-7] / [MQTT-3.2.2-16] (5.0): an empty ClientID is
    replaced by a unique id returned as Assigned Client Identifier."""
    ids = []
    for _ in range(2):
        client: RawClient = raw(5)
        ack = client.connect("", clean_start=True)
        assert ack.reason_code == 0
        assigned = ack.properties.assigned_client_identifier
        assert assigned, ack
        ids.append(assigned)
        ping(client)
    assert ids[0] != ids[1]


def test_mqtt_3_1_4_5_refused_connect_ignores_following_data_v311(raw, uniq: str) -> None:
    """[MQTT-3.1.4-5] (3.1.1) / [MQTT-3.1.4-6] (5.0): after refusing a CONNECT the server
    ignores the rest of the client's data: a PUBLISH in the same segment is not routed."""
    watcher: RawClient = raw(4)
    watcher.connect(f"{uniq}-w")
    watcher.subscribe(f"{uniq}/t", 0)
    client: RawClient = raw(4)
    client.send_raw(
        connect_bytes(4, "", clean_start=False)
        + frame(0x30, utf8_raw(f"{uniq}/t".encode()) + b"sneaky")
    )
    ack = client.expect(ConnAck)
    assert ack.reason_code == 0x02
    client.expect_closed(3.0)
    watcher.nothing(0.3)


def test_mqtt_3_1_4_6_refused_connect_ignores_following_data_v5(raw, uniq: str) -> None:
    """[MQTT-3.1.4-6] (5.0) / [MQTT-3.2.2-7]: a CONNECT refused with CONNACK >= 0x80
    (unsupported Authentication Method -> 0x8C [MQTT-4.12.0-1]) is followed by a close;
    a PUBLISH sent right after it is ignored; Session Present is 0 [MQTT-3.2.2-6]."""
    watcher: RawClient = raw(5)
    watcher.connect(f"{uniq}-w")
    watcher.subscribe(f"{uniq}/t", 0)
    client: RawClient = raw(5)
    client.send_raw(
        connect_bytes(5, uniq, properties=Properties(authentication_method="NOPE-METHOD"))
        + frame(0x30, utf8_raw(f"{uniq}/t".encode()) + b"\x00" + b"sneaky")
    )
    ack = client.expect(ConnAck)
    assert ack.reason_code >= 0x80
    assert ack.session_present is False
    client.expect_closed(3.0)
    watcher.nothing(0.3)


# ----------------------------------------------------------------- CONNACK contents


@VERSIONS
def test_mqtt_3_2_2_1_connack_reserved_bits_zero(broker, uniq: str, version: int) -> None:
    """[MQTT-3.2.2-1] (5.0; 3.1.1 §3.2.2.1): CONNACK acknowledge flags bits 7-1 are 0, and
    CONNACK is the server's first packet [MQTT-3.2.0-1]."""
    sock = _open(broker)
    try:
        sock.sendall(connect_bytes(version, uniq, clean_start=False))
        data = b""
        deadline = time.monotonic() + 3
        while len(data) < 4 and time.monotonic() < deadline:
            data += sock.recv(100)
        assert data[0] == 0x20
        assert data[2] & 0xFE == 0
        assert data[3] == 0
    finally:
        sock.close()


@VERSIONS
def test_mqtt_3_2_2_1_clean_session_gives_session_present_0(raw, uniq: str, version: int) -> None:
    """[MQTT-3.2.2-1] (3.1.1) / [MQTT-3.2.2-2] (5.0): Clean Session / Clean Start 1 gets
    Session Present 0 even if a stored session existed."""
    props = Properties(session_expiry_interval=300) if version == 5 else None
    first: RawClient = raw(version)
    first.connect(uniq, clean_start=False, properties=props)
    first.subscribe(f"{uniq}/t", 1)
    first.disconnect()
    again: RawClient = raw(version)
    ack = again.connect(uniq, clean_start=True)
    assert (ack.reason_code, ack.session_present) == (0, False)


@VERSIONS
def test_mqtt_3_2_2_2_stored_session_present_1(raw, uniq: str, version: int) -> None:
    """[MQTT-3.2.2-2] (3.1.1) / [MQTT-3.2.2-3] (5.0): Clean Session 0 with a stored session
    gets Session Present 1; without one, Session Present 0 [MQTT-3.2.2-3] (3.1.1)."""
    props = Properties(session_expiry_interval=300) if version == 5 else None
    first: RawClient = raw(version)
    ack = first.connect(uniq, clean_start=False, properties=props)
    assert (ack.reason_code, ack.session_present) == (0, False)
    first.subscribe(f"{uniq}/t", 1)
    first.disconnect()
    again: RawClient = raw(version)
    ack = again.connect(uniq, clean_start=False, properties=props)
    assert (ack.reason_code, ack.session_present) == (0, True)
    again.disconnect()
    # Clean up the stored session.
    raw(version).connect(uniq, clean_start=True)


# ----------------------------------------------------------------- takeover


@VERSIONS
def test_mqtt_3_1_4_2_takeover_closes_old_connection(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.4-2] (3.1.1) / [MQTT-3.1.4-3] (5.0): a second connection with the same
    ClientID closes the first (5.0: DISCONNECT 0x8E Session taken over first); the new one
    works."""
    old: RawClient = raw(version)
    old.connect(uniq)
    new: RawClient = raw(version)
    assert new.connect(uniq).reason_code == 0
    got = old.expect_closed(3.0)
    if version == 5:
        assert disconnect_reason(got) == 0x8E, got
    else:
        assert got == [], got
    ping(new)


# ----------------------------------------------------------------- malformed CONNECT


def _connect_with_flags(
    version: int, client_id: str, flags_or: int, flags_and: int = 0xFF
) -> bytes:
    data = bytearray(connect_bytes(version, client_id))
    off = connect_flags_offset(version, client_id)
    data[off] = (data[off] | flags_or) & flags_and
    return bytes(data)


def _malformed_connects(version: int, cid: str) -> dict[str, bytes]:
    props = b"\x00" if version == 5 else b""
    head = utf8_raw(b"MQTT") + bytes((version,))
    return {
        "client-id-runs-past-end": frame(0x10, head + b"\x02\x00\x3c" + props + b"\x00\x20ab"),
        "client-id-invalid-utf8": frame(
            0x10, head + b"\x02\x00\x3c" + props + utf8_raw(b"ab\xff\xfe")
        ),
        "client-id-u0000": frame(0x10, head + b"\x02\x00\x3c" + props + utf8_raw(b"a\x00b")),
        "trailing-bytes": connect_bytes(version, cid)[:1]
        + bytes((connect_bytes(version, cid)[1] + 2,))
        + connect_bytes(version, cid)[2:]
        + b"\x00\x00",
        # Will QoS 1 with Will Flag 0 ([MQTT-3.1.2-13] 3.1.1 / [MQTT-3.1.2-11] 5.0).
        "will-qos-without-will": _connect_with_flags(version, cid, 0x08),
        # Will Retain with Will Flag 0 ([MQTT-3.1.2-15] 3.1.1 / [MQTT-3.1.2-13] 5.0).
        "will-retain-without-will": _connect_with_flags(version, cid, 0x20),
        # User Name Flag set but no user name in the payload ([MQTT-3.1.2-19] / -17).
        "username-flag-without-username": _connect_with_flags(version, cid, 0x80),
        # Password Flag set but no password ([MQTT-3.1.2-21] / -19).
        "password-flag-without-password": _connect_with_flags(version, cid, 0x40),
    }


@VERSIONS
@pytest.mark.parametrize(
    "case",
    [
        "client-id-runs-past-end",
        "client-id-invalid-utf8",
        "client-id-u0000",
        "trailing-bytes",
        "will-qos-without-will",
        "will-retain-without-will",
        "username-flag-without-username",
        "password-flag-without-password",
    ],
)
def test_mqtt_3_1_4_1_malformed_connect_closes_without_connack(
    broker, uniq: str, version: int, case: str
) -> None:
    """[MQTT-3.1.4-1]: a CONNECT that does not match the format closes the connection
    without a (successful) CONNACK (3.1.1: no CONNACK at all; 5.0 may send one >= 0x80).
    Client-side rules checked by the server this way: [MQTT-3.1.2-13] [MQTT-3.1.2-15]
    [MQTT-3.1.2-19] [MQTT-3.1.2-21] (3.1.1), [MQTT-3.1.2-11] [MQTT-3.1.2-13]
    [MQTT-3.1.2-17] [MQTT-3.1.2-19] (5.0), [MQTT-1.5.3-1/2] / [MQTT-1.5.4-1/2]."""
    data = _malformed_connects(version, uniq)[case]
    with RawClient(broker.host, broker.port, version) as client:
        client.send_raw(data)
        got = client.expect_closed(3.0)
    if version == 4:
        assert got == [], got
    else:
        _no_success_connack(got, version)
    assert_broker_healthy(broker, version)


@VERSIONS
def test_mqtt_3_1_2_14_will_qos_3_closes(broker, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-14] (3.1.1) / [MQTT-3.1.2-12] (5.0): Will QoS 3 is malformed; the
    server closes without a successful CONNACK [MQTT-3.1.4-1]."""
    data = connect_bytes(version, uniq, will=Will(f"{uniq}/will", b"w", qos=2))
    data = bytearray(data)
    data[connect_flags_offset(version, uniq)] |= 0x18
    with RawClient(broker.host, broker.port, version) as client:
        client.send_raw(bytes(data))
        got = client.expect_closed(3.0)
    if version == 4:
        assert got == []
    else:
        _no_success_connack(got, version)


def test_mqtt_3_1_2_22_password_without_username_v311_closes(broker, uniq: str) -> None:
    """[MQTT-3.1.2-22] (3.1.1): Password Flag 1 with User Name Flag 0 is invalid; the
    server closes without CONNACK [MQTT-3.1.4-1]."""
    data = connect_bytes(4, uniq, password=b"secret")
    with RawClient(broker.host, broker.port, 4) as client:
        client.send_raw(data)
        assert client.expect_closed(3.0) == []


def test_v5_password_without_username_is_allowed(raw, uniq: str) -> None:
    """MQTT 5.0 §3.1.2.9: a Password without a User Name is allowed (unlike 3.1.1)."""
    client: RawClient = raw(5)
    ack = client.connect(uniq, password=b"secret")
    assert ack.reason_code == 0


@VERSIONS
def test_username_and_password_accepted_with_anonymous_auth(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-19]/[MQTT-3.1.2-21] (3.1.1) / [MQTT-3.1.2-17]/[MQTT-3.1.2-19] (5.0):
    User Name and Password present with their flags are read, and the client accepted."""
    client: RawClient = raw(version)
    ack = client.connect(uniq, username="user", password=b"pw")
    assert ack.reason_code == 0
    ping(client)


# ----------------------------------------------------------------- CONNECT timeout


@pytest.mark.parametrize("partial", [b"", b"\x10\x20\x00\x04MQ"])
def test_socket_without_connect_is_closed_after_connect_timeout(
    make_broker, partial: bytes
) -> None:
    """MQTT 3.1.1 §3.1 / MQTT 5.0 §3.1 (non-normative, "reasonable amount of time"): a
    socket that never completes a CONNECT is closed after ``mqtt.connect_timeout``."""
    b = make_broker(extra="mqtt:\n  connect_timeout: 0.5\n")
    sock = socket.create_connection((b.host, b.port), timeout=3.0)
    try:
        if partial:
            sock.sendall(partial)
        started = time.monotonic()
        assert raw_reply(sock, timeout=3.0) == b""
        assert time.monotonic() - started < 2.5
    finally:
        sock.close()
    assert_broker_healthy(b)


@VERSIONS
def test_mqtt_3_2_0_1_pipelined_packets_after_connect(raw, uniq: str, version: int) -> None:
    """[MQTT-3.2.0-1] (both): packets sent right behind CONNECT (same segment, before the
    CONNACK arrived, as clients may do) are processed after it: CONNACK first, then the
    SUBACK and PINGRESP, in order."""
    client: RawClient = raw(version)
    client.send_raw(
        connect_bytes(version, uniq)
        + encode_packet(Subscribe(5, [Subscription(f"{uniq}/t", 1)]), version)
        + encode_packet(PingReq(), version)
    )
    assert client.expect(ConnAck).reason_code == 0
    assert client.expect(SubAck).reason_codes == [1]
    client.expect(PingResp)


@VERSIONS
@pytest.mark.parametrize("topic", ["w/+", "w/#", ""])
def test_will_topic_must_be_a_valid_topic_name(raw, uniq: str, version: int, topic: str) -> None:
    """[MQTT-3.3.2-2] / [MQTT-4.7.3-1] applied to the Will Topic (MQTT 3.1.1 §3.1.3.2,
    5.0 §3.1.3.3): a will topic with wildcards, or empty, cannot be accepted; the server
    closes (3.1.1: without CONNACK or with a refusal code; 5.0: CONNACK >= 0x80)."""
    client: RawClient = raw(version)
    client.send(
        Connect(
            client_id=uniq,
            protocol_version=version,
            will=Will(f"{uniq}/{topic}" if topic else "", b"w"),
        )
    )
    _no_success_connack(client.expect_closed(3.0), version)
