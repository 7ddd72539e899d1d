"""Malformed packets and protocol errors close *that* connection only (MQTT 3.1.1 §4.8,
MQTT 5.0 §4.13): 5.0 clients get a DISCONNECT with the reason code, the broker keeps
serving everyone else, and the close is logged."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from iotbroker.auth.passwords import set_password
from iotbroker.codec.packets import ConnAck, Disconnect, PubAck, Publish, PubRec, Will
from tests.helpers.conformance import (
    assert_broker_healthy,
    connect_bytes,
    connected,
    disconnect_reason,
    frame,
    local_peer,
    ping,
    publish_bytes,
    utf8_raw,
    wait_log,
)
from tests.helpers.rawclient import RawClient

MALFORMED = frozenset({0x81})
PROTOCOL = frozenset({0x82})
EITHER = frozenset({0x81, 0x82})


@dataclass(frozen=True)
class Case:
    """One bad input: the bytes (per version), whether CONNECT comes first, the accepted
    v5 DISCONNECT reason codes and the statements it checks."""

    build: Callable[[int, str], bytes]
    connect_first: bool = True
    reasons: frozenset[int] = MALFORMED
    versions: tuple[int, ...] = (4, 5)
    refs: str = ""


def _props(version: int) -> bytes:
    return b"\x00" if version == 5 else b""


def _subscribe(version: int, filt: bytes, opts: int = 0, first: int = 0x82) -> bytes:
    return frame(first, b"\x00\x01" + _props(version) + utf8_raw(filt) + bytes((opts,)))


CASES: dict[str, Case] = {
    # Remaining Length with a fifth continuation byte (MQTT 3.1.1 §2.2.3, 5.0 §1.5.5).
    "remaining-length-5-bytes": Case(lambda v, u: b"\x30\xff\xff\xff\xff\x7f", refs="MQTT-1.5.5-1"),
    # Non-minimal Variable Byte Integer: 0 encoded in two bytes [MQTT-1.5.5-1] (5.0).
    "remaining-length-not-minimal": Case(
        lambda v, u: b"\xc0\x80\x00", versions=(5,), refs="MQTT-1.5.5-1"
    ),
    "publish-qos-3": Case(
        lambda v, u: publish_bytes(f"{u}/t".encode(), flags=0x06, packet_id=1, qos=3, version=v),
        refs="MQTT-3.3.1-4",
    ),
    "topic-invalid-utf8": Case(
        lambda v, u: publish_bytes(b"bad/\xc3\x28", version=v), refs="MQTT-1.5.3-1 / MQTT-1.5.4-1"
    ),
    "topic-utf16-surrogate": Case(
        lambda v, u: publish_bytes(b"bad/\xed\xa0\x80", version=v),
        refs="MQTT-1.5.3-1 / MQTT-1.5.4-1",
    ),
    "topic-u0000": Case(
        lambda v, u: publish_bytes(b"bad/a\x00b", version=v),
        refs="MQTT-1.5.3-2 / MQTT-1.5.4-2, MQTT-4.7.3-2",
    ),
    "topic-wildcard": Case(
        lambda v, u: publish_bytes(f"{u}/+/x".encode(), version=v),
        reasons=frozenset({0x82, 0x90}),
        refs="MQTT-3.3.2-2",
    ),
    "topic-empty": Case(
        lambda v, u: publish_bytes(b"", version=v),
        reasons=frozenset({0x82, 0x90}),
        refs="MQTT-4.7.3-1",
    ),
    "publish-dup-with-qos0": Case(
        lambda v, u: publish_bytes(f"{u}/t".encode(), flags=0x08, version=v),
        reasons=EITHER,
        refs="MQTT-3.3.1-2",
    ),
    "publish-packet-id-0": Case(
        lambda v, u: frame(0x32, utf8_raw(f"{u}/t".encode()) + b"\x00\x00" + _props(v) + b"x"),
        reasons=EITHER,
        refs="MQTT-2.3.1-1 / MQTT-2.2.1-3",
    ),
    "subscribe-flags-0": Case(
        lambda v, u: _subscribe(v, f"{u}/t".encode(), first=0x80),
        refs="MQTT-3.8.1-1, MQTT-2.2.2-2 / MQTT-2.1.3-1",
    ),
    "unsubscribe-flags-0": Case(
        lambda v, u: frame(0xA0, b"\x00\x01" + _props(v) + utf8_raw(f"{u}/t".encode())),
        refs="MQTT-3.10.1-1",
    ),
    "pubrel-flags-0": Case(lambda v, u: b"\x60\x02\x00\x01", refs="MQTT-3.6.1-1"),
    "pingreq-flags-1": Case(lambda v, u: b"\xc1\x00", refs="MQTT-2.2.2-2 / MQTT-2.1.3-1"),
    "disconnect-flags-1": Case(lambda v, u: b"\xe1\x00", refs="MQTT-3.14.1-1"),
    "packet-type-0": Case(lambda v, u: b"\x00\x00", refs="MQTT-2.2.2-2 / MQTT-2.1.3-1"),
    "auth-in-3.1.1": Case(lambda v, u: b"\xf0\x00", versions=(4,), refs="MQTT 3.1.1 §2.2.1"),
    "server-only-connack": Case(
        lambda v, u: b"\x20\x02\x00\x00" if v == 4 else b"\x20\x03\x00\x00\x00",
        reasons=EITHER,
        refs="MQTT-4.8.0-1 / MQTT-4.13.1-1",
    ),
    "server-only-suback": Case(
        lambda v, u: b"\x90\x03\x00\x01\x00" if v == 4 else b"\x90\x04\x00\x01\x00\x00",
        reasons=EITHER,
        refs="MQTT-4.8.0-1 / MQTT-4.13.1-1",
    ),
    "subscribe-no-filter": Case(
        lambda v, u: frame(0x82, b"\x00\x01" + _props(v)),
        reasons=EITHER,
        refs="MQTT-3.8.3-3 / MQTT-3.8.3-2",
    ),
    "subscribe-reserved-option-bits": Case(
        lambda v, u: _subscribe(v, f"{u}/t".encode(), 0xC0), refs="MQTT-3.8.3-4 / MQTT-3.8.3-5"
    ),
    "subscribe-qos-3": Case(
        lambda v, u: _subscribe(v, f"{u}/t".encode(), 0x03),
        reasons=EITHER,
        refs="MQTT-3.8.3-4 / MQTT 5.0 §3.8.3.1",
    ),
    "subscribe-filter-invalid-utf8": Case(
        lambda v, u: _subscribe(v, b"a/\xff"), refs="MQTT-1.5.3-1 / MQTT-1.5.4-1"
    ),
    "puback-too-long-3.1.1": Case(
        lambda v, u: b"\x40\x03\x00\x01\x00",
        versions=(4,),
        refs="MQTT 3.1.1 §3.4.1 (Remaining Length 2)",
    ),
    "second-connect": Case(
        lambda v, u: connect_bytes(v, f"{u}-bad"), reasons=PROTOCOL, refs="MQTT-3.1.0-2"
    ),
    "publish-before-connect": Case(
        lambda v, u: publish_bytes(f"{u}/t".encode(), version=v),
        connect_first=False,
        refs="MQTT-3.1.0-1, MQTT-4.8.0-1",
    ),
    "subscribe-before-connect": Case(
        lambda v, u: _subscribe(v, f"{u}/t".encode()), connect_first=False, refs="MQTT-3.1.0-1"
    ),
}

PARAMS = [
    pytest.param(version, name, id=f"{name}-v{version}")
    for name, case in CASES.items()
    for version in case.versions
]


@pytest.mark.parametrize(("version", "name"), PARAMS)
def test_mqtt_4_8_0_1_malformed_input_closes_only_that_connection(
    broker, uniq: str, version: int, name: str
) -> None:
    """[MQTT-4.8.0-1] (3.1.1) / [MQTT-4.13.1-1] (5.0): a malformed packet or protocol
    error closes the connection it arrived on; a 5.0 client that got a CONNACK first is
    sent a DISCONNECT with the reason code (0x81 malformed, 0x82 protocol error, ...);
    before a CONNACK no DISCONNECT may be sent [MQTT-3.14.0-1] (5.0). The broker keeps
    serving other clients, and logs one line for the close. Statement per case in CASES."""
    case = CASES[name]
    healthy = connected(broker.host, broker.port, version, f"{uniq}-healthy")
    try:
        with RawClient(broker.host, broker.port, version, timeout=3.0) as bad:
            if case.connect_first:
                assert bad.connect(f"{uniq}-bad").reason_code == 0
            peer = local_peer(bad)
            bad.send_raw(case.build(version, uniq))
            got = bad.expect_closed(3.0)
        if version == 5 and case.connect_first:
            code = disconnect_reason(got)
            assert code in case.reasons, f"{name}: DISCONNECT {code!r}, packets {got!r}"
        else:
            # 3.1.1 has no DISCONNECT from the server; 5.0 sends none before CONNACK.
            assert got == [], got
        ping(healthy)
        assert_broker_healthy(broker, version)
        assert wait_log(broker, f"closing {peer}"), f"no log line for {peer}"
    finally:
        healthy.close()


# ----------------------------------------------------------------- packet too large


@pytest.mark.parametrize("version", [4, 5])
def test_packet_too_large_rejected_from_fixed_header(make_broker, uniq: str, version: int) -> None:
    """MQTT 5.0 §3.1.2.11.4 / §4.13 (Maximum Packet Size; [MQTT-3.2.2-15] binds the client,
    the server closes with DISCONNECT 0x95 Packet too large): a PUBLISH announcing more
    than ``mqtt.max_packet_size`` is refused from its fixed header alone, before any body
    byte arrives. 3.1.1: the connection is closed ([MQTT-4.8.0-1])."""
    b = make_broker(extra="mqtt:\n  max_packet_size: 1024\n")
    healthy = connected(b.host, b.port, version, f"{uniq}-healthy")
    with RawClient(b.host, b.port, version, timeout=3.0) as bad:
        ack = bad.connect(f"{uniq}-bad")
        assert ack.reason_code == 0
        if version == 5:
            assert ack.properties.maximum_packet_size == 1024
        peer = local_peer(bad)
        # Fixed header only: PUBLISH with Remaining Length 100000 (no body follows).
        bad.send_raw(b"\x30\xa0\x8d\x06")
        got = bad.expect_closed(2.0)
    if version == 5:
        assert disconnect_reason(got) == 0x95, got
    else:
        assert got == [], got
    ping(healthy)
    healthy.close()
    assert_broker_healthy(b, version)
    assert wait_log(b, f"closing {peer}")


@pytest.mark.parametrize("version", [4, 5])
def test_packet_at_max_size_accepted(make_broker, uniq: str, version: int) -> None:
    """The limit is inclusive: a PUBLISH of exactly ``max_packet_size`` bytes is accepted
    (MQTT 5.0 §3.2.2.3.6, the size is the whole packet)."""
    b = make_broker(extra="mqtt:\n  max_packet_size: 1024\n")
    with (
        RawClient(b.host, b.port, version, timeout=3.0) as sub,
        RawClient(b.host, b.port, version, timeout=3.0) as pub,
    ):
        sub.connect(f"{uniq}-sub")
        sub.subscribe(f"{uniq}/t", 0)
        pub.connect(f"{uniq}-pub")
        topic = f"{uniq}/t".encode()
        overhead = 1 + 2 + 2 + len(topic) + (1 if version == 5 else 0)  # 2-byte RL
        data = publish_bytes(topic, b"p" * (1024 - overhead), version=version)
        assert len(data) == 1024
        pub.send_raw(data)
        got = sub.receive_publish()
        assert len(got.payload) == 1024 - overhead
        ping(pub)


# ----------------------------------------------------------------- truncated then close


@pytest.mark.parametrize("version", [4, 5])
def test_truncated_packet_then_close(broker, raw, uniq: str, version: int) -> None:
    """A connection closed in the middle of a packet is an abnormal close
    ([MQTT-3.1.2-8] (3.1.1) / [MQTT-3.1.2-8] (5.0)): the partial packet is discarded (not
    delivered), the will goes out, the broker logs the close and keeps serving."""
    watcher: RawClient = raw(version)
    watcher.connect(f"{uniq}-w")
    watcher.subscribe(f"{uniq}/#", 0)
    bad = RawClient(broker.host, broker.port, version, timeout=3.0)
    bad.connect(f"{uniq}-bad", will=Will(f"{uniq}/will", b"gone"))
    full = publish_bytes(f"{uniq}/t".encode(), b"x" * 50, version=version)
    bad.send_raw(full[:20])
    bad.sock.shutdown(socket.SHUT_WR)
    assert bad.expect_closed(3.0) == []
    bad.close()
    got = watcher.receive_publish()
    assert (got.topic, got.payload) == (f"{uniq}/will", b"gone")
    watcher.nothing(0.2)
    assert wait_log(broker, f"client '{uniq}-bad'")
    assert_broker_healthy(broker, version)


@pytest.mark.parametrize("version", [4, 5])
def test_split_packet_across_segments_is_fine(raw, uniq: str, version: int) -> None:
    """Control: a packet split at every byte boundary is reassembled (MQTT 3.1.1 §4.2 /
    5.0 §4.2 ordered byte stream [MQTT-4.2.0-1]); it is not malformed."""
    sub: RawClient = raw(version)
    sub.connect(f"{uniq}-sub")
    sub.subscribe(f"{uniq}/t", 0)
    pub: RawClient = raw(version)
    pub.connect(f"{uniq}-pub")
    pub.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = publish_bytes(f"{uniq}/t".encode(), b"split" * 40, version=version)
    for i in range(0, len(data), 7):
        pub.send_raw(data[i : i + 7])
        time.sleep(0.002)
    assert sub.receive_publish().payload == b"split" * 40
    ping(pub)


# ----------------------------------------------------------------- v5 inbound limits


def _v5_publish(topic: bytes, props: bytes, qos: int = 0, packet_id: int = 1) -> bytes:
    body = utf8_raw(topic) + (packet_id.to_bytes(2, "big") if qos else b"")
    return frame(0x30 | qos << 1, body + bytes((len(props),)) + props + b"x")


@pytest.mark.parametrize(
    ("name", "data", "reasons"),
    [
        # Topic Alias 0 [MQTT-3.3.2-8] -> 0x94 Topic Alias invalid.
        ("alias-0", lambda u: _v5_publish(f"{u}/t".encode(), b"\x23\x00\x00"), {0x94}),
        # Topic Alias above our Topic Alias Maximum (100) [MQTT-3.2.2-17] -> 0x94.
        ("alias-above-maximum", lambda u: _v5_publish(f"{u}/t".encode(), b"\x23\x03\xe8"), {0x94}),
        # Empty topic with an alias never set on this connection [MQTT-3.3.2-7] -> 0x82.
        ("alias-unknown", lambda u: _v5_publish(b"", b"\x23\x00\x05"), {0x82, 0x94}),
        # Subscription Identifier in a client PUBLISH [MQTT-3.3.4-6] -> 0x82.
        ("publish-subscription-id", lambda u: _v5_publish(f"{u}/t".encode(), b"\x0b\x05"), {0x82}),
        # A property not allowed in PUBLISH (Session Expiry Interval) -> malformed 0x81.
        (
            "publish-wrong-property",
            lambda u: _v5_publish(f"{u}/t".encode(), b"\x11\x00\x00\x00\x05"),
            {0x81},
        ),
        # User Property with invalid UTF-8 [MQTT-1.5.7-1] -> 0x81.
        (
            "user-property-bad-utf8",
            lambda u: _v5_publish(f"{u}/t".encode(), b"\x26" + utf8_raw(b"k") + utf8_raw(b"\xff")),
            {0x81},
        ),
    ],
)
def test_v5_publish_property_errors_close_with_reason(
    broker, uniq: str, name: str, data, reasons: set[int]
) -> None:
    """[MQTT-4.13.1-1] (5.0): PUBLISH property errors close the connection with the
    DISCONNECT reason code of §3.3.2.3 (Topic Alias 0x94, Protocol Error 0x82, Malformed
    0x81); the broker keeps serving."""
    with RawClient(broker.host, broker.port, 5, timeout=3.0) as bad:
        bad.connect(f"{uniq}-bad")
        bad.send_raw(data(uniq))
        got = bad.expect_closed(3.0)
    assert disconnect_reason(got) in reasons, got
    assert_broker_healthy(broker, 5)


def test_v5_receive_maximum_exceeded_0x93(make_broker, uniq: str) -> None:
    """MQTT 5.0 §3.3.4 ([MQTT-3.3.4-7] binds the client): more unacknowledged QoS 2
    PUBLISHes than our Receive Maximum (2) -> DISCONNECT 0x93 Receive Maximum exceeded."""
    b = make_broker(extra="mqtt:\n  receive_maximum: 2\n")
    with RawClient(b.host, b.port, 5, timeout=3.0) as client:
        ack = client.connect(uniq)
        assert ack.properties.receive_maximum == 2
        for pid in (1, 2):
            client.send(Publish(f"{uniq}/t", b"x", 2, packet_id=pid))
            client.expect(PubRec)
        client.send(Publish(f"{uniq}/t", b"x", 2, packet_id=3))
        assert disconnect_reason(client.expect_closed(3.0)) == 0x93


# ----------------------------------------------------------- packet by packet


def _before_bad_after(uniq: str, version: int) -> bytes:
    """One write: a valid QoS 1 PUBLISH, a malformed PUBLISH (QoS 3 [MQTT-3.3.1-4]), and
    a valid PUBLISH that must never be read."""
    return (
        publish_bytes(f"{uniq}/t".encode(), b"before", qos=1, packet_id=5, version=version)
        + publish_bytes(f"{uniq}/t".encode(), flags=0x06, packet_id=6, qos=3, version=version)
        + publish_bytes(f"{uniq}/t".encode(), b"after", version=version)
    )


@pytest.mark.parametrize("version", [4, 5])
def test_mqtt_4_13_1_1_packets_before_a_malformed_one_in_the_same_segment_are_handled(
    raw, uniq: str, version: int
) -> None:
    """[MQTT-4.13.1-1] (5.0) / [MQTT-4.8.0-1] (3.1.1): the connection is closed at the
    malformed packet, with DISCONNECT 0x81 Malformed Packet for a 5.0 client. A stream is
    read packet by packet (as mosquitto does): the valid PUBLISH before it in the same
    TCP segment is routed and acknowledged; what follows it is not read; the will goes
    out (the close is not a normal disconnect, [MQTT-3.1.2-8])."""
    watcher: RawClient = raw(version)
    watcher.connect(f"{uniq}-w")
    watcher.subscribe(f"{uniq}/#", 0)
    bad: RawClient = raw(version)
    bad.connect(f"{uniq}-bad", will=Will(f"{uniq}/will", b"gone"))
    bad.send_raw(_before_bad_after(uniq, version))
    got = bad.expect_closed(3.0)
    acks = [p for p in got if isinstance(p, PubAck)]
    assert [a.packet_id for a in acks] == [5], got
    if version == 5:
        assert disconnect_reason(got) == 0x81, got
        assert isinstance(got[-1], Disconnect)
    else:
        assert disconnect_reason(got) is None, got
    first, second = watcher.receive_publish(), watcher.receive_publish()
    assert [(first.topic, first.payload), (second.topic, second.payload)] == [
        (f"{uniq}/t", b"before"), (f"{uniq}/will", b"gone")]
    watcher.nothing(0.3)  # "after" was never read


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("password", [b"right", b"wrong"])
def test_failure_waits_for_a_connect_deferred_to_the_password_thread(
    make_broker, tmp_path, uniq: str, version: int, password: bytes
) -> None:
    """CONNECT, a valid PUBLISH and a malformed packet in one segment, while the CONNECT
    waits for its PBKDF2 check in a worker thread: the failure is applied after the
    CONNECT is decided and the packets before it are handled, as if the check had been
    instant. Accepted: CONNACK 0, the PUBLISH is routed, then the close at the malformed
    packet (5.0: DISCONNECT 0x81, [MQTT-4.13.1-1]). Refused: only the CONNACK refusal
    and the close ([MQTT-3.2.2-5] / 5.0 [MQTT-3.2.2-7]); nothing of what followed is read."""
    pwfile = tmp_path / "passwd"
    set_password(str(pwfile), "watcher", "w", 20_000)
    set_password(str(pwfile), "dev", "right", 20_000)  # PBKDF2, never checked: a thread
    b = make_broker(extra=f"auth:\n  allow_anonymous: false\n  password_file: {pwfile}\n")
    watcher = connected(b.host, b.port, version, f"{uniq}-w", username="watcher",
                        password=b"w")
    try:
        watcher.subscribe(f"{uniq}/#", 0)
        with RawClient(b.host, b.port, version, timeout=3.0) as bad:
            bad.send_raw(connect_bytes(version, f"{uniq}-bad", username="dev",
                                       password=password) + _before_bad_after(uniq, version))
            got = bad.expect_closed(5.0)
        ack = got[0]
        assert isinstance(ack, ConnAck), got
        if password == b"wrong":
            assert ack.reason_code == (0x86 if version == 5 else 0x04), got
            assert got == [ack], got
            watcher.nothing(0.3)
            return
        assert ack.reason_code == 0, got
        assert [p.packet_id for p in got if isinstance(p, PubAck)] == [5], got
        if version == 5:
            assert disconnect_reason(got) == 0x81 and isinstance(got[-1], Disconnect), got
        else:
            assert disconnect_reason(got) is None, got
        routed = watcher.receive_publish()
        assert (routed.topic, routed.payload) == (f"{uniq}/t", b"before")
        watcher.nothing(0.3)
    finally:
        watcher.close()
