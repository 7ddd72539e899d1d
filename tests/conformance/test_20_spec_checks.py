"""Edge cases checked against the MQTT 5.0 and 3.1.1 text (issue 18, "check each of
these"); the decision and its section are in each docstring and in
NOTES-issue18-proto.md."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iotbroker.codec.packets import (
    ConnAck,
    Disconnect,
    Properties,
    PubAck,
    Publish,
    PubRec,
    Will,
)
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.conformance import connect_bytes, connected, disconnect_reason, frame, utf8_raw
from tests.helpers.rawclient import RawClient

VERSIONS = pytest.mark.parametrize("version", [4, 5])


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    workdir = tmp_path_factory.mktemp("checks-broker")
    proc = BrokerProcess(workdir, broker_config(extra="mqtt:\n  topic_alias_maximum: 2\n"))
    proc.start()
    yield proc
    proc.stop()


def _on(b: BrokerProcess, client_id: str, version: int = 5, **kw: object) -> RawClient:
    return connected(b.host, b.port, version, client_id, **kw)


def _closed(c: RawClient, version: int, code: int = 0x82) -> None:
    """v5: DISCONNECT ``code`` then close [MQTT-4.13.1-1]; 3.1.1: close [MQTT-4.8.0-1]."""
    packets = c.expect_closed(3.0)
    if version == 5:
        assert disconnect_reason(packets) == code, packets
    else:
        assert packets == [], packets


def _props(version: int) -> bytes:
    return b"\x00" if version == 5 else b""


# ------------------------------------------------------ SUBSCRIBE / UNSUBSCRIBE


@VERSIONS
@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
def test_mqtt_3_10_3_2_no_topic_filter_is_a_protocol_error(checks: BrokerProcess, uniq: str,
                                                            version: int, kind: str) -> None:
    """UNSUBSCRIBE without a Topic Filter: [MQTT-3.10.3-2] (both versions); MQTT 5.0
    §3.10.3 says "An UNSUBSCRIBE packet with no Payload is a Protocol Error", so the
    reason is 0x82 Protocol Error, not 0x81 Malformed Packet (the packet parses).
    SUBSCRIBE likewise: 3.1.1 [MQTT-3.8.3-3], 5.0 [MQTT-3.8.3-2] and §3.8.3 ("a SUBSCRIBE
    packet with no Payload is a Protocol Error")."""
    with _on(checks, uniq, version) as c:
        c.send_raw(frame(0x82 if kind == "subscribe" else 0xA2, b"\x00\x07" + _props(version)))
        _closed(c, version, 0x82)


@VERSIONS
@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
def test_mqtt_2_2_1_3_packet_identifier_0_is_a_protocol_error(
    checks: BrokerProcess, uniq: str, version: int, kind: str
) -> None:
    """SUBSCRIBE / UNSUBSCRIBE with Packet Identifier 0: they MUST carry a non-zero one
    (5.0 [MQTT-2.2.1-3], 3.1.1 [MQTT-2.3.1-1]). The packet is well-formed, the rule is
    broken: 5.0 DISCONNECT 0x82 Protocol Error (§4.13), 3.1.1 close [MQTT-4.8.0-1]; no
    SUBACK / UNSUBACK."""
    body = b"\x00\x00" + _props(version) + utf8_raw(f"{uniq}/t".encode())
    with _on(checks, uniq, version) as c:
        c.send_raw(frame(0x82, body + b"\x00") if kind == "subscribe" else frame(0xA2, body))
        _closed(c, version, 0x82)


# ------------------------------------------------------------------ wills


@VERSIONS
def test_mqtt_4_7_3_1_will_with_empty_topic_is_refused(checks: BrokerProcess, uniq: str,
                                                      version: int) -> None:
    """A Will Topic of zero length breaks [MQTT-4.7.3-1] (a Topic Name is at least one
    character). MQTT 5.0: CONNACK 0x82 Protocol Error then close (as an empty PUBLISH
    topic gets DISCONNECT 0x82; 0x90 is for a name that is "not malformed, but not
    accepted"); MQTT 3.1.1 has no return code for it: close without CONNACK
    [MQTT-3.2.2-6] / [MQTT-4.8.0-1]."""
    c = RawClient(checks.host, checks.port, version, timeout=3.0)
    with c:
        c.send_raw(connect_bytes(version, uniq, will=Will("", b"gone", 0, False)))
        packets = c.expect_closed(3.0)
        if version == 5:
            assert len(packets) == 1 and isinstance(packets[0], ConnAck), packets
            assert packets[0].reason_code == 0x82
        else:
            assert packets == []


def test_invalid_session_expiry_on_disconnect_is_0x82_and_the_will_goes_out(
    checks: BrokerProcess, uniq: str
) -> None:
    """MQTT 5.0 §3.14.2.2.2: after CONNECT with Session Expiry 0, a DISCONNECT with a
    non-zero Session Expiry Interval is a Protocol Error: the server "does not treat it
    as a valid DISCONNECT" -- it sends DISCONNECT 0x82 [MQTT-4.13.1-1] (without a
    Session Expiry Interval, [MQTT-3.14.2-2]) and, since the DISCONNECT was not a
    normal one, publishes the will ([MQTT-3.1.2-8] (5.0): the will is deleted only on
    a valid DISCONNECT 0x00 [MQTT-3.14.4-3])."""
    with _on(checks, f"{uniq}-w") as watcher:
        watcher.subscribe(f"{uniq}/will", 1)
        c = _on(checks, uniq, will=Will(f"{uniq}/will", b"gone", 1, False))
        with c:
            c.send(Disconnect(0, Properties(session_expiry_interval=30)))
            packets = c.expect_closed(3.0)
            assert disconnect_reason(packets) == 0x82, packets
            assert packets[-1].properties.session_expiry_interval is None  # type: ignore[attr-defined]
        will = watcher.receive_publish()
        assert (will.topic, will.payload) == (f"{uniq}/will", b"gone")


# ------------------------------------------------------------------ topic alias


@pytest.mark.parametrize("alias", [0, 3, 65535])
def test_mqtt_3_3_2_9_topic_alias_0_or_above_maximum_is_0x94(checks: BrokerProcess, uniq: str,
                                                              alias: int) -> None:
    """MQTT 5.0 §3.3.2.3.4: a Topic Alias of 0 [MQTT-3.3.2-8] or greater than the
    server's Topic Alias Maximum (2 here) [MQTT-3.3.2-9] is a Protocol Error; the
    receiver uses DISCONNECT 0x94 Topic Alias invalid (a more specific code than
    0x82, as the section says). Nothing is routed."""
    with _on(checks, f"{uniq}-w") as watcher:
        watcher.subscribe(f"{uniq}/#", 0)
        with _on(checks, uniq) as c:
            c.send(Publish(f"{uniq}/t", b"x", 1, packet_id=1,
                           properties=Properties(topic_alias=alias)))
            _closed(c, 5, 0x94)
        watcher.nothing(0.3)


# --------------------------------------------------- client's Maximum Packet Size


@pytest.mark.parametrize("qos", [1, 2])
def test_mqtt_3_1_2_25_too_large_publish_not_sent_and_flow_goes_on(
    checks: BrokerProcess, uniq: str, qos: int
) -> None:
    """[MQTT-3.1.2-24] [MQTT-3.1.2-25]: a QoS 1/2 message larger than the subscriber's
    Maximum Packet Size (200) is not sent, and the server behaves as if it had completed
    sending it: with the subscriber's Receive Maximum 1, the next messages still flow
    (the discarded one does not hold the only in-flight place)."""
    props = Properties(maximum_packet_size=200, receive_maximum=1)
    with _on(checks, f"{uniq}-s", properties=props) as sub, _on(checks, f"{uniq}-p") as pub:
        sub.subscribe(f"{uniq}/t", qos)
        pub.publish(f"{uniq}/t", b"B" * 500, qos)
        for n in range(3):
            pub.publish(f"{uniq}/t", f"small {n}".encode(), qos)
        got = [sub.receive_publish().payload for _ in range(3)]
        assert got == [b"small 0", b"small 1", b"small 2"]
        sub.nothing(0.3)


def test_mqtt_3_1_2_25_resend_too_large_after_reconnect_does_not_block(
    checks: BrokerProcess, uniq: str
) -> None:
    """[MQTT-3.1.2-25] on resend [MQTT-4.4.0-1]: a QoS 1 message sent but not
    acknowledged, when the client comes back (session resumed) with a smaller Maximum
    Packet Size that the message no longer fits, is discarded as if completed -- it
    does not stay in flight for ever, and with Receive Maximum 1 the next message is
    delivered."""
    cid = f"{uniq}-s"
    first = Properties(session_expiry_interval=60)
    with _on(checks, cid, properties=first) as sub:
        sub.subscribe(f"{uniq}/t", 1)
        with _on(checks, f"{uniq}-p") as pub:
            pub.publish(f"{uniq}/t", b"B" * 500, 1)
            assert sub.receive_publish(ack=False).payload == b"B" * 500
    again = Properties(session_expiry_interval=60, maximum_packet_size=200, receive_maximum=1)
    sub = RawClient(checks.host, checks.port, 5, timeout=3.0)
    with sub:
        ack = sub.connect(cid, clean_start=False, properties=again)
        assert ack.reason_code == 0 and ack.session_present
        with _on(checks, f"{uniq}-p") as pub:
            pub.publish(f"{uniq}/t", b"after", 1)
        assert sub.receive_publish().payload == b"after"
        sub.disconnect(0, Properties(session_expiry_interval=0))


# ---------------------------------------------------------- payload format


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_payload_format_indicator_1_with_invalid_utf8_is_0x99(checks: BrokerProcess,
                                                              uniq: str, qos: int) -> None:
    """MQTT 5.0 §3.3.2.3.2: the receiver MAY validate that a payload with Payload Format
    Indicator 1 is UTF-8, and if it is not send PUBACK / PUBREC / DISCONNECT 0x99
    Payload format invalid. iotbroker checks: QoS 1/2 get PUBACK / PUBREC 0x99 and the
    message is not routed; QoS 0 (no ack) gets DISCONNECT 0x99. A valid UTF-8 payload
    passes, its indicator forwarded [MQTT-3.3.2-4]."""
    pfi = Properties(payload_format_indicator=1)
    with _on(checks, f"{uniq}-w") as watcher:
        watcher.subscribe(f"{uniq}/t", 2)
        with _on(checks, uniq) as c:
            c.publish(f"{uniq}/t", "grüße".encode(), qos, properties=pfi)
            got = watcher.receive_publish()
            assert got.payload == "grüße".encode()
            assert got.properties.payload_format_indicator == 1
            c.send(Publish(f"{uniq}/t", b"\xff\xfe bad", qos, packet_id=77 if qos else None,
                           properties=pfi))
            if qos == 0:
                _closed(c, 5, 0x99)
            else:
                ack = c.expect(PubAck if qos == 1 else PubRec)
                assert (ack.packet_id, ack.reason_code) == (77, 0x99)
        watcher.nothing(0.3)


def test_will_payload_format_invalid_is_connack_0x99(checks: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.1.3.2.3 (Will Properties, Payload Format Indicator): the Server MAY
    validate the Will Payload and, if it does not match, send CONNACK 0x99 Payload format
    invalid. iotbroker does, then closes."""
    will = Will(f"{uniq}/will", b"\xc3\x28", 0, False, Properties(payload_format_indicator=1))
    with RawClient(checks.host, checks.port, 5, timeout=3.0) as c:
        c.send_raw(connect_bytes(5, uniq, will=will))
        packets = c.expect_closed(3.0)
        assert len(packets) == 1 and isinstance(packets[0], ConnAck), packets
        assert packets[0].reason_code == 0x99
