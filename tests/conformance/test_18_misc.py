"""Remaining server-side statements: BOM and long topics, QoS 2 sender and receiver
rules around expiry and PUBREL, optional ack properties against a small Maximum
Packet Size, defined CONNACK codes, unauthorised PUBLISH in MQTT 3.1.1."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from iotbroker.codec.packets import (
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
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import RawClient

VERSIONS = pytest.mark.parametrize("version", [4, 5])
# MQTT 5.0 §3.2.2.2: the Connect Reason Codes.
CONNECT_REASON_CODES = {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
                        0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F}


@VERSIONS
def test_mqtt_1_5_3_3_bom_in_topic_is_kept(raw: Callable[..., RawClient], uniq: str,
                                           version: int) -> None:
    """[MQTT-1.5.3-3] / [MQTT-1.5.4-3]: 0xEF 0xBB 0xBF is U+FEFF and is not stripped: a
    topic with a BOM is a different topic from the one without, and it is forwarded
    with the BOM."""
    topic = f"\ufeff{uniq}/bom"
    sub = raw(version)
    sub.connect(f"{uniq}-sub")
    sub.subscribe(topic, 1)
    sub.subscribe(f"{uniq}/bom", 1)  # the BOM-less topic: must not match
    pub = raw(version)
    pub.connect(f"{uniq}-pub")
    pub.publish(topic, b"with bom", 1)
    got = sub.receive_publish()
    assert got.topic == topic and got.topic.encode()[:3] == b"\xef\xbb\xbf"
    sub.nothing(0.3)


@VERSIONS
def test_mqtt_4_7_3_3_topic_of_65535_bytes_works(
    make_broker: Callable[..., BrokerProcess], version: int
) -> None:
    """[MQTT-4.7.3-3]: topic names and filters are limited to 65,535 bytes: one of exactly
    that length is subscribed to, published and delivered."""
    broker = make_broker(broker_config(extra="mqtt:\n  max_topic_levels: 32767\n"))
    topic = "t/" + "x" * (65535 - 2)
    sub = RawClient(broker.host, broker.port, version)
    sub.connect("long-sub")
    assert sub.subscribe(topic, 1).reason_codes == [1]
    pub = RawClient(broker.host, broker.port, version)
    pub.connect("long-pub")
    pub.publish(topic, b"long", 1)
    got = sub.receive_publish()
    assert len(got.topic.encode()) == 65535 and got.payload == b"long"
    sub.close()
    pub.close()


def test_mqtt_4_3_3_7_qos2_sent_publish_is_not_expired(raw: Callable[..., RawClient],
                                                      uniq: str) -> None:
    """[MQTT-4.3.3-7]: once a QoS 2 PUBLISH was sent, the sender does not expire it: the
    unacknowledged message is re-sent on resume even after its expiry interval."""
    expiry = Properties(session_expiry_interval=60)
    sub = raw(5)
    sub.connect(f"{uniq}-sub", clean_start=True, properties=expiry)
    sub.subscribe(f"{uniq}/t", 2)
    pub = raw(5)
    pub.connect(f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"short-lived", 2, properties=Properties(message_expiry_interval=1))
    first = sub.expect(Publish)  # not acknowledged
    sub.close()
    time.sleep(1.5)
    back = raw(5)
    assert back.connect(f"{uniq}-sub", clean_start=False, properties=expiry).session_present
    again = back.expect(Publish)
    assert (again.payload, again.packet_id, again.dup) == (b"short-lived", first.packet_id, True)


def test_mqtt_4_3_3_13_receiver_completes_qos2_after_expiry(raw: Callable[..., RawClient],
                                                            uniq: str) -> None:
    """[MQTT-4.3.3-13]: the receiver of a QoS 2 PUBLISH completes the exchange even when
    the message expired meanwhile: PUBREL after the expiry still gets PUBCOMP 0."""
    c = raw(5)
    c.connect(f"{uniq}-pub")
    c.send(Publish(f"{uniq}/t", b"x", 2, packet_id=5,
                   properties=Properties(message_expiry_interval=1)))
    assert c.expect(PubRec).packet_id == 5
    time.sleep(1.3)
    c.send(PubRel(5))
    comp = c.expect(PubComp)
    assert (comp.packet_id, comp.reason_code) == (5, 0)


@VERSIONS
def test_mqtt_4_3_3_5_pubrel_resent_until_pubcomp(raw: Callable[..., RawClient], uniq: str,
                                                 version: int) -> None:
    """[MQTT-4.3.3-5] (v5 numbering; 3.1.1 §4.3.3): the QoS 2 sender treats PUBREL as
    unacknowledged until PUBCOMP: after a reconnect it sends the PUBREL again."""
    props = Properties(session_expiry_interval=60) if version == 5 else None
    sub = raw(version)
    sub.connect(f"{uniq}-sub", clean_start=False, properties=props)
    sub.subscribe(f"{uniq}/t", 2)
    pub = raw(version)
    pub.connect(f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"q2", 2)
    got = sub.expect(Publish)
    sub.send(PubRec(got.packet_id or 0))
    assert sub.expect(PubRel).packet_id == got.packet_id
    sub.close()  # no PUBCOMP
    back = raw(version)
    assert back.connect(f"{uniq}-sub", clean_start=False, properties=props).session_present
    rel = back.expect(PubRel)
    assert rel.packet_id == got.packet_id
    back.send(PubComp(rel.packet_id))
    back.nothing(0.3)
    raw(version).connect(f"{uniq}-sub", clean_start=True)


def test_mqtt_3_4_2_2_acks_fit_a_small_maximum_packet_size(raw: Callable[..., RawClient],
                                                          uniq: str) -> None:
    """[MQTT-3.4.2-2], [MQTT-3.4.2-3], [MQTT-3.5.2-2], [MQTT-3.5.2-3], [MQTT-3.6.2-2],
    [MQTT-3.6.2-3], [MQTT-3.7.2-2], [MQTT-3.7.2-3], [MQTT-3.9.2-1], [MQTT-3.9.2-2],
    [MQTT-3.11.2-1], [MQTT-3.11.2-2], [MQTT-3.2.2-19], [MQTT-3.2.2-20]: a client with a
    tiny Maximum Packet Size still gets every acknowledgement (no Reason String or User
    Property that would exceed it), each within its limit."""
    limit = 16
    c = raw(5)
    ack = c.connect(f"{uniq}-small", properties=Properties(maximum_packet_size=limit))
    assert ack.reason_code == 0 and ack.properties.reason_string is None
    # A well-formed filter refused by policy (more than the default max_topic_levels
    # 128): a failure code in the SUBACK (malformed filters close the connection).
    too_deep = "/".join(["l"] * 130)
    c.send(Subscribe(1, [Subscription(f"{uniq}/a", 2), Subscription(too_deep, 1)]))
    suback = c.expect(SubAck)
    assert suback.reason_codes[0] == 2 and suback.reason_codes[1] >= 0x80
    assert suback.properties.reason_string is None and not suback.properties.user_properties
    c.send(Publish("x", b"", 1, packet_id=2))
    puback = c.expect(PubAck)
    assert puback.packet_id == 2 and puback.properties.reason_string is None
    c.send(Publish("x", b"", 2, packet_id=3))
    pubrec = c.expect(PubRec)
    assert pubrec.packet_id == 3 and not pubrec.properties.user_properties
    c.send(PubRel(3))
    assert c.expect(PubComp).packet_id == 3
    c.send(PubRel(77))  # unknown id: PUBCOMP 0x92, still no Reason String
    comp = c.expect(PubComp)
    assert comp.reason_code == 0x92 and comp.properties.reason_string is None
    c.send(Unsubscribe(4, ["never/subscribed"]))
    unsuback = c.expect(UnsubAck)
    assert unsuback.reason_codes == [0x11] and unsuback.properties.reason_string is None


def test_mqtt_3_2_2_8_connack_codes_are_defined_connect_reason_codes(
    raw: Callable[..., RawClient], uniq: str, tmp_path: Path
) -> None:
    """[MQTT-3.2.2-8]: every CONNACK uses a defined Connect Reason Code: accepted,
    unsupported authentication method, bad will topic."""
    cases = [
        {"client_id": f"{uniq}-ok"},
        {"client_id": f"{uniq}-am", "properties": Properties(authentication_method="NOPE")},
        {"client_id": f"{uniq}-wt", "will": Will("bad/+/will", b"x")},
    ]
    seen = []
    for kwargs in cases:
        c = raw(5)
        ack = c.connect(**kwargs)
        seen.append(ack.reason_code)
        assert ack.reason_code in CONNECT_REASON_CODES, hex(ack.reason_code)
    assert seen[0] == 0 and seen[1] == 0x8C and seen[2] >= 0x80


def test_mqtt_3_3_5_2_unauthorised_publish_is_acknowledged_v311(
    make_broker: Callable[..., BrokerProcess], tmp_path: Path
) -> None:
    """[MQTT-3.3.5-2] (3.1.1): a PUBLISH the client may not send is acknowledged
    normally (the documented choice; the alternative is to close) and not delivered."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite open/#\n")
    broker = make_broker(broker_config(extra=f"auth:\n  acl_file: {acl}\n"))
    sub = RawClient(broker.host, broker.port)
    sub.connect("acl-sub")
    sub.subscribe("open/#", 1)
    pub = RawClient(broker.host, broker.port)
    pub.connect("acl-pub")
    ack = pub.publish("closed/t", b"no", 1)
    assert isinstance(ack, PubAck)
    pub.publish("open/t", b"yes", 1)
    assert sub.receive_publish().payload == b"yes"
    sub.nothing(0.3)
    sub.close()
    pub.close()
