"""MQTT 5.0 reason codes on every acknowledgement and on the server's DISCONNECT (§2.4,
§3.4.2.1, §3.5.2.1, §3.6.2.1, §3.7.2.1, §3.9.3, §3.11.3, §3.14.2.1, §4.13).

Limits and an ACL live on a broker of this module's own (``strict``); the takeover,
keepalive and shutdown cases use the shared broker or a broker of the test's own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from iotbroker.codec.packets import (
    Disconnect,
    Packet,
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
)
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.conformance import connected, publish_bytes
from tests.helpers.rawclient import RawClient

VERSIONS = pytest.mark.parametrize("version", [4, 5])

# MQTT 5.0 §3.14.2.1: the DISCONNECT reason codes a server may send.
SERVER_DISCONNECT_CODES = set(
    bytes.fromhex(
        "00 80 81 82 83 87 89 8B 8D 8E 8F 90 93 94 95 96 97 98 99 9A 9B 9C 9D 9E 9F A0 A1 A2"
    )
)
SUBACK_CODES = {0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2}
UNSUBACK_CODES = {0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91}

ACL = "topic readwrite #\ntopic deny +/denied/#\n"


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    workdir = tmp_path_factory.mktemp("strict-broker")
    (workdir / "acl").write_text(ACL)
    extra = (
        "mqtt:\n  max_packet_size: 256\n  receive_maximum: 2\n  topic_alias_maximum: 1\n"
        "  max_subscriptions_per_client: 2\n  max_topic_levels: 6\n"
        "auth:\n  acl_file: acl\n"
    )
    proc = BrokerProcess(workdir, broker_config(extra=extra)).start()
    yield proc
    proc.stop()


def _on(b: BrokerProcess, client_id: str, version: int = 5, **kw: object) -> RawClient:
    return connected(b.host, b.port, version, client_id, **kw)


def _closed_by_server(c: RawClient, code: int, timeout: float = 3.0) -> Disconnect:
    """The server sent DISCONNECT ``code`` as its last packet [MQTT-3.14.4-1] and closed
    the connection [MQTT-3.14.4-2] [MQTT-4.13.2-1]; the code is a defined one
    [MQTT-3.14.2-1] and no Session Expiry Interval is attached [MQTT-3.14.2-2]."""
    packets: list[Packet] = c.expect_closed(timeout)
    assert packets and isinstance(packets[-1], Disconnect), packets
    disc = packets[-1]
    assert disc.reason_code == code, packets
    assert disc.reason_code in SERVER_DISCONNECT_CODES
    assert disc.properties.session_expiry_interval is None
    assert sum(isinstance(p, Disconnect) for p in packets) == 1
    return disc


# ----------------------------------------------------------------- PUBACK / PUBREC


@pytest.mark.parametrize("qos", [1, 2])
def test_puback_pubrec_0x10_no_matching_subscribers(raw, uniq: str, qos: int) -> None:
    """MQTT 5.0 §3.4.2.1 / §3.5.2.1 [MQTT-3.4.2-1] [MQTT-3.5.2-1]: 0x10 No matching
    subscribers when nobody matched, 0x00 once somebody does."""
    c: RawClient = raw(5)
    c.connect(uniq)
    ack_cls = PubAck if qos == 1 else PubRec
    c.send(Publish(f"{uniq}/nobody", b"x", qos, packet_id=10))
    assert c.expect(ack_cls).reason_code == 0x10
    if qos == 2:
        c.send(PubRel(10))
        assert c.expect(PubComp).reason_code == 0
    c.subscribe(f"{uniq}/nobody", 0)
    c.send(Publish(f"{uniq}/nobody", b"x", qos, packet_id=11))
    got = [c.recv(), c.recv()]
    acks = [p for p in got if isinstance(p, ack_cls)]
    assert [a.reason_code for a in acks] == [0]


@pytest.mark.parametrize("qos", [1, 2])
def test_puback_pubrec_0x87_not_authorised(strict: BrokerProcess, uniq: str, qos: int) -> None:
    """MQTT 5.0 §3.4.2.1 / §3.5.2.1: a PUBLISH the ACL forbids is answered 0x87 Not
    authorized and not delivered; after PUBREC 0x87 the QoS 2 exchange is over, so the
    same packet id starts a new message [MQTT-4.3.3-9]."""
    with _on(strict, f"{uniq}-sub") as sub, _on(strict, uniq) as c:
        sub.subscribe("#", 0)
        ack_cls = PubAck if qos == 1 else PubRec
        c.send(Publish(f"{uniq}/denied/t", b"x", qos, packet_id=1))
        assert c.expect(ack_cls).reason_code == 0x87
        c.send(Publish(f"{uniq}/ok", b"y", qos, packet_id=1))
        ack = c.expect(ack_cls)
        assert (ack.packet_id, ack.reason_code) == (1, 0)
        got = sub.receive_publish()
        assert got.topic == f"{uniq}/ok"
        sub.nothing(0.2)


@VERSIONS
def test_pubrel_for_unknown_pubrec_0x92(raw, uniq: str, version: int) -> None:
    """MQTT 5.0 §3.6.2.1 [MQTT-3.6.2-1]: a PUBREC for a packet id the server has not sent
    is answered with PUBREL 0x92 Packet Identifier not found (MQTT 3.1.1: a plain
    PUBREL [MQTT-4.3.3-1] keeps the peer's handshake going); the connection stays up."""
    c: RawClient = raw(version)
    c.connect(uniq)
    c.send(PubRec(4242))
    rel = c.expect(PubRel)
    assert (rel.packet_id, rel.reason_code) == (4242, 0x92 if version == 5 else 0)
    c.subscribe(f"{uniq}/alive", 0)


@VERSIONS
def test_pubcomp_for_unknown_pubrel_0x92(raw, uniq: str, version: int) -> None:
    """MQTT 5.0 §3.7.2.1 [MQTT-3.7.2-1]: a PUBREL for a packet id the server does not hold
    is answered PUBCOMP 0x92 (MQTT 3.1.1: PUBCOMP [MQTT-4.3.3-11]); a held one gets
    0x00."""
    c: RawClient = raw(version)
    c.connect(uniq)
    c.send(PubRel(999))
    comp = c.expect(PubComp)
    assert (comp.packet_id, comp.reason_code) == (999, 0x92 if version == 5 else 0)
    c.send(Publish(f"{uniq}/t", b"x", 2, packet_id=7))
    c.expect(PubRec)
    c.send(PubRel(7))
    assert c.expect(PubComp).reason_code == 0


def test_pubrec_failure_then_same_id_is_new_message(raw, uniq: str) -> None:
    """[MQTT-4.3.3-9] (receiver side seen from the server as sender): after the client
    answers a QoS 2 PUBLISH with PUBREC 0x80, that delivery is over -- no PUBREL comes,
    and the next message may reuse the packet id."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub", properties=Properties(receive_maximum=1))
    sub.subscribe(f"{uniq}/t", 2)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"1", 2)
    pub.publish(f"{uniq}/t", b"2", 2)
    first = sub.expect(Publish)
    sub.send(PubRec(first.packet_id or 0, 0x80))
    second = sub.expect(Publish)
    assert second.payload == b"2"
    sub.send(PubRec(second.packet_id or 0))
    assert sub.expect(PubRel).packet_id == second.packet_id
    sub.send(PubComp(second.packet_id or 0))
    sub.nothing(0.2)


# ----------------------------------------------------------------- SUBACK / UNSUBACK


def test_suback_reason_codes(strict: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.9.3 [MQTT-3.8.4-7]: one code per filter, in order: granted QoS,
    0x8F Topic Filter invalid (well-formed, but more levels than ``max_topic_levels`` 6;
    malformed filters close the connection instead, see test_04), 0x87 Not authorized
    (ACL), 0x97 Quota exceeded (beyond ``max_subscriptions_per_client`` 2) -- all
    defined SUBACK codes."""
    with _on(strict, uniq) as c:
        c.send(
            Subscribe(
                1,
                [
                    Subscription(f"{uniq}/a", 2),
                    Subscription(f"{uniq}/a/b/c/d/e/f", 0),
                    Subscription(f"{uniq}/denied/#", 1),
                    Subscription(f"{uniq}/b", 1),
                    Subscription(f"{uniq}/c", 0),
                ],
            )
        )
        codes = c.expect(SubAck).reason_codes
        assert codes == [2, 0x8F, 0x87, 1, 0x97]
        assert set(codes) <= SUBACK_CODES


@VERSIONS
def test_mqtt_3_11_3_2_unsuback_reason_codes(raw, uniq: str, version: int) -> None:
    """[MQTT-3.11.3-2] (5.0): UNSUBACK has one defined code per filter, in order: 0x00
    Success for a removed subscription, 0x11 No subscription existed otherwise (MQTT
    3.1.1's UNSUBACK has no payload)."""
    c: RawClient = raw(version)
    c.connect(uniq)
    c.subscribe(f"{uniq}/a", 0)
    c.send(Unsubscribe(3, [f"{uniq}/a", f"{uniq}/never", f"{uniq}/a"]))
    ack = c.expect(UnsubAck)
    if version == 5:
        assert ack.reason_codes == [0x00, 0x11, 0x11]
        assert set(ack.reason_codes) <= UNSUBACK_CODES
    else:
        assert ack.reason_codes == []


# ----------------------------------------------------------------- server DISCONNECT


def test_disconnect_0x8e_session_taken_over(raw, uniq: str) -> None:
    """[MQTT-3.1.4-3]: a second connection with the same Client Identifier makes the
    server send DISCONNECT 0x8E Session taken over to the first and close it."""
    old: RawClient = raw(5)
    old.connect(uniq)
    new: RawClient = raw(5)
    assert new.connect(uniq).reason_code == 0
    _closed_by_server(old, 0x8E)


def test_disconnect_0x8d_keep_alive_timeout(raw, uniq: str) -> None:
    """[MQTT-3.1.2-22]: no packet for 1.5 × Keep Alive (1 s) -> DISCONNECT 0x8D Keep Alive
    timeout, then the connection is closed."""
    c: RawClient = raw(5)
    c.connect(uniq, keepalive=1)
    started = time.monotonic()
    _closed_by_server(c, 0x8D, timeout=4.0)
    assert time.monotonic() - started >= 1.0


def test_disconnect_0x8b_server_shutting_down(make_broker, uniq: str) -> None:
    """MQTT 5.0 §3.14.2.1: on SIGTERM the server sends connected MQTT 5.0 clients
    DISCONNECT 0x8B Server shutting down and closes; MQTT 3.1.1 clients are just closed;
    the process exits 0."""
    b = make_broker(extra="limits:\n  drain_timeout: 1s\n")
    v5 = _on(b, f"{uniq}-5")
    v4 = _on(b, f"{uniq}-4", version=4)
    with v5, v4:
        assert b.stop() == 0
        _closed_by_server(v5, 0x8B)
        assert v4.expect_closed(3.0) == []


def test_disconnect_0x93_receive_maximum_exceeded(strict: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.3.4: more unacknowledged QoS 2 PUBLISHes than our Receive Maximum (2)
    -> DISCONNECT 0x93 Receive Maximum exceeded."""
    with _on(strict, uniq) as c:
        for pid in (1, 2):
            c.send(Publish(f"{uniq}/t", b"x", 2, packet_id=pid))
            c.expect(PubRec)
        c.send(Publish(f"{uniq}/t", b"x", 2, packet_id=3))
        _closed_by_server(c, 0x93)


def test_disconnect_0x94_topic_alias_invalid(strict: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.3.2.3.4: a Topic Alias above our maximum (1) -> DISCONNECT 0x94."""
    with _on(strict, uniq) as c:
        c.send(Publish(f"{uniq}/t", b"x", 0, properties=Properties(topic_alias=2)))
        _closed_by_server(c, 0x94)


def test_disconnect_0x95_packet_too_large(strict: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.2.2.3.6 / §4.13: a packet above our Maximum Packet Size (256) ->
    DISCONNECT 0x95 Packet too large; the same content in a small packet is fine."""
    with _on(strict, uniq) as c:
        c.publish(f"{uniq}/t", b"s" * 100, 1)
        c.send_raw(publish_bytes(f"{uniq}/t".encode(), b"L" * 300, 1, 2, version=5))
        _closed_by_server(c, 0x95)


def test_disconnect_0x95_announced_limit_in_header_only(strict: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.2.2.3.6 with design.md principle 4: the size is judged on the fixed
    header; a client that announces a 1 MiB PUBLISH and sends only its first bytes is
    disconnected with 0x95 without the server waiting for the rest."""
    with _on(strict, uniq) as c:
        c.send_raw(b"\x30\x80\x80\x40" + b"\x00\x01t")
        _closed_by_server(c, 0x95)
