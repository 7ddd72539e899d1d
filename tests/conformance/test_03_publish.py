"""PUBLISH and its QoS handshakes (MQTT 3.1.1 §3.3-3.7, §4.3, §4.6; MQTT 5.0 same)."""

from __future__ import annotations

import pytest

from iotbroker.codec.packets import (
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
)
from tests.helpers.conformance import collect_publishes, disconnect_reason, ping
from tests.helpers.rawclient import RawClient

VERSIONS = pytest.mark.parametrize("version", [4, 5])


def _pair(raw, uniq: str, version: int, filt: str, qos: int) -> tuple[RawClient, RawClient]:
    sub: RawClient = raw(version)
    sub.connect(f"{uniq}-sub")
    assert sub.subscribe(filt, qos).reason_codes == [qos]
    pub: RawClient = raw(version)
    pub.connect(f"{uniq}-pub")
    return sub, pub


# ----------------------------------------------------------------- QoS 0


@VERSIONS
def test_mqtt_4_3_1_1_qos0_delivery(raw, uniq: str, version: int) -> None:
    """[MQTT-4.3.1-1]: QoS 0 goes out with QoS 0 and DUP 0; no Packet Identifier
    [MQTT-2.3.1-5] (3.1.1) / [MQTT-2.2.1-2] (5.0); no ack is sent for it."""
    sub, pub = _pair(raw, uniq, version, f"{uniq}/t", 0)
    pub.publish(f"{uniq}/t", b"q0", 0)
    got = sub.receive_publish()
    assert (got.topic, got.payload, got.qos, got.dup, got.packet_id) == (
        f"{uniq}/t",
        b"q0",
        0,
        False,
        None,
    )
    pub.nothing(0.2)


# ----------------------------------------------------------------- QoS 1


@VERSIONS
def test_mqtt_4_3_2_1_qos1_both_directions(raw, uniq: str, version: int) -> None:
    """Inbound: PUBACK with the PUBLISH's id [MQTT-3.3.4-1] [MQTT-2.3.1-6] (3.1.1) /
    [MQTT-2.2.1-5] [MQTT-4.3.2-4] (5.0). Outbound: QoS 1, DUP 0, a non-zero id
    [MQTT-4.3.2-1] (3.1.1) / [MQTT-4.3.2-1] [MQTT-4.3.2-2] (5.0), still in flight until
    PUBACK (no second copy meanwhile)."""
    sub, pub = _pair(raw, uniq, version, f"{uniq}/t", 1)
    pub.send(Publish(f"{uniq}/t", b"q1", 1, packet_id=4321))
    ack = pub.expect(PubAck)
    assert ack.packet_id == 4321
    assert ack.reason_code == 0
    got = sub.receive_publish(ack=False)
    assert (got.qos, got.dup, got.payload) == (1, False, b"q1")
    assert got.packet_id
    sub.nothing(0.3)
    sub.send(PubAck(got.packet_id))
    sub.nothing(0.2)


@VERSIONS
def test_mqtt_4_3_2_2_qos1_same_id_after_puback_is_new_message(
    raw, uniq: str, version: int
) -> None:
    """[MQTT-4.3.2-2] (3.1.1) / [MQTT-4.3.2-5] (5.0): after PUBACK, a PUBLISH with the same
    Packet Identifier is a new publication (whatever its DUP flag)."""
    sub, pub = _pair(raw, uniq, version, f"{uniq}/t", 1)
    for payload, dup in ((b"one", False), (b"two", True)):
        pub.send(Publish(f"{uniq}/t", payload, 1, dup=dup, packet_id=7))
        assert pub.expect(PubAck).packet_id == 7
    assert sub.receive_publish().payload == b"one"
    assert sub.receive_publish().payload == b"two"


@VERSIONS
def test_mqtt_3_3_1_3_outgoing_dup_not_copied_from_incoming(raw, uniq: str, version: int) -> None:
    """[MQTT-3.3.1-3]: the DUP flag of an incoming PUBLISH is not propagated; the
    outgoing DUP says only whether *that* PUBLISH is a retransmission."""
    sub, pub = _pair(raw, uniq, version, f"{uniq}/t", 1)
    pub.send(Publish(f"{uniq}/t", b"d", 1, dup=True, packet_id=9))
    assert pub.expect(PubAck).packet_id == 9
    got = sub.receive_publish()
    assert got.dup is False


@VERSIONS
def test_mqtt_2_3_1_4_outbound_packet_ids_unused(raw, uniq: str, version: int) -> None:
    """[MQTT-2.3.1-4] (3.1.1) / [MQTT-2.2.1-4] (5.0): each new QoS>0 PUBLISH the server
    sends has a non-zero Packet Identifier not in use by another in-flight message."""
    sub, pub = _pair(raw, uniq, version, f"{uniq}/t", 1)
    for i in range(8):
        pub.send(Publish(f"{uniq}/t", str(i).encode(), 1 + i % 2, packet_id=100 + i))
    got = [sub.receive_publish(ack=False) for _ in range(8)]
    ids = [p.packet_id for p in got]
    assert all(ids) and len(set(ids)) == 8, ids


# ----------------------------------------------------------------- QoS 2


@VERSIONS
def test_mqtt_4_3_3_2_qos2_inbound_handshake(raw, uniq: str, version: int) -> None:
    """[MQTT-4.3.3-2] (3.1.1) / [MQTT-4.3.3-8] [MQTT-4.3.3-11] (5.0): PUBREC with the
    PUBLISH's id, PUBCOMP with the PUBREL's id [MQTT-2.3.1-6] / [MQTT-2.2.1-5]."""
    sub, pub = _pair(raw, uniq, version, f"{uniq}/t", 2)
    pub.send(Publish(f"{uniq}/t", b"q2", 2, packet_id=300))
    rec = pub.expect(PubRec)
    assert (rec.packet_id, rec.reason_code) == (300, 0)
    pub.send(PubRel(300))
    comp = pub.expect(PubComp)
    assert (comp.packet_id, comp.reason_code) == (300, 0)
    assert sub.receive_publish().payload == b"q2"


@VERSIONS
def test_mqtt_4_3_3_1_qos2_outbound_handshake(raw, uniq: str, version: int) -> None:
    """[MQTT-4.3.3-1] (3.1.1) / [MQTT-4.3.3-2] [MQTT-4.3.3-4] [MQTT-4.3.3-6] (5.0): the
    server sends QoS 2 PUBLISH with DUP 0, answers PUBREC with PUBREL of the same id and
    never re-sends the PUBLISH after PUBREL."""
    sub, pub = _pair(raw, uniq, version, f"{uniq}/t", 2)
    pub.publish(f"{uniq}/t", b"out2", 2)
    got = sub.expect(Publish)
    assert (got.qos, got.dup, got.payload) == (2, False, b"out2")
    assert got.packet_id
    sub.send(PubRec(got.packet_id))
    rel = sub.expect(PubRel)
    assert rel.packet_id == got.packet_id
    sub.nothing(0.3)
    sub.send(PubComp(got.packet_id))
    sub.nothing(0.2)


@VERSIONS
def test_mqtt_4_3_3_2_qos2_duplicate_publish_not_delivered_twice(
    raw, uniq: str, version: int
) -> None:
    """[MQTT-4.3.3-2] (3.1.1) / [MQTT-4.3.3-10] (5.0): until PUBREL, a PUBLISH with the
    same id (DUP=1) is answered with PUBREC but not delivered onward again; after PUBCOMP
    the id starts a new message [MQTT-4.3.3-12] (5.0)."""
    sub, pub = _pair(raw, uniq, version, f"{uniq}/t", 2)
    pub.send(Publish(f"{uniq}/t", b"once", 2, packet_id=55))
    assert pub.expect(PubRec).packet_id == 55
    pub.send(Publish(f"{uniq}/t", b"once", 2, dup=True, packet_id=55))
    assert pub.expect(PubRec).packet_id == 55
    pub.send(PubRel(55))
    assert pub.expect(PubComp).packet_id == 55
    assert sub.receive_publish().payload == b"once"
    sub.nothing(0.3)
    # After PUBCOMP the same id is a new message.
    pub.send(Publish(f"{uniq}/t", b"again", 2, packet_id=55))
    assert pub.expect(PubRec).packet_id == 55
    pub.send(PubRel(55))
    assert pub.expect(PubComp).packet_id == 55
    assert sub.receive_publish().payload == b"again"


@VERSIONS
def test_mqtt_4_3_3_11_pubrel_unknown_id_gets_pubcomp(raw, uniq: str, version: int) -> None:
    """[MQTT-4.3.3-2] (3.1.1) / [MQTT-4.3.3-11] (5.0): a PUBREL is answered with PUBCOMP
    with the same id, even for an id the server does not hold (5.0: 0x92 Packet Identifier
    not found is allowed); the connection stays up."""
    client: RawClient = raw(version)
    client.connect(uniq)
    client.send(PubRel(4242))
    comp = client.expect(PubComp)
    assert comp.packet_id == 4242
    assert comp.reason_code in ((0, 0x92) if version == 5 else (0,))
    client.publish(f"{uniq}/still-up", b"", 1)


# ----------------------------------------------------------------- QoS downgrade


@VERSIONS
@pytest.mark.parametrize(("pub_qos", "sub_qos"), [(2, 0), (2, 1), (1, 0), (0, 2), (1, 2)])
def test_mqtt_3_8_4_6_delivered_qos_is_minimum(
    raw, uniq: str, version: int, pub_qos: int, sub_qos: int
) -> None:
    """[MQTT-3.8.4-6] (3.1.1) / [MQTT-3.8.4-8] (5.0): delivered QoS is the minimum of the
    published QoS and the granted QoS."""
    sub, pub = _pair(raw, uniq, version, f"{uniq}/t", sub_qos)
    pub.publish(f"{uniq}/t", b"m", pub_qos)
    got = sub.receive_publish()
    assert got.qos == min(pub_qos, sub_qos)
    assert (got.packet_id is None) == (got.qos == 0)


# ----------------------------------------------------------------- topic names


@VERSIONS
@pytest.mark.parametrize("topic", ["a/+/b", "a/#", "+", "#", "a+b", "x/y#"])
def test_mqtt_3_3_2_2_wildcard_in_topic_name_closes(
    raw, uniq: str, version: int, topic: str
) -> None:
    """[MQTT-3.3.2-2] / [MQTT-4.7.1-1] (3.1.1) / [MQTT-4.7.0-1] (5.0): a Topic Name with a
    wildcard is a protocol violation: the connection is closed (5.0: DISCONNECT with a
    reason code >= 0x80, e.g. 0x90 Topic Name invalid), nothing is delivered."""
    watcher: RawClient = raw(version)
    watcher.connect(f"{uniq}-w")
    watcher.subscribe(f"{uniq}/#", 0)
    client: RawClient = raw(version)
    client.connect(uniq)
    client.send(Publish(f"{uniq}/{topic}", b"bad", 1, packet_id=1))
    got = client.expect_closed(3.0)
    assert not any(isinstance(p, PubAck) for p in got), got
    if version == 5:
        code = disconnect_reason(got)
        assert code is not None and code >= 0x80, got


@VERSIONS
def test_mqtt_3_3_2_3_topic_matches_filter_not_normalised(raw, uniq: str, version: int) -> None:
    """[MQTT-3.3.2-3]: the Topic Name delivered is the published one, matching the filter;
    [MQTT-4.7.3-4]: topics are not normalised (case, trailing slash, spaces differ)."""
    sub, pub = _pair(raw, uniq, version, f"{uniq}/Room/+", 0)
    for topic in (f"{uniq}/room/x", f"{uniq}/Room/x/", f"{uniq}/Room /x"):
        pub.publish(topic, b"no", 0)
    pub.publish(f"{uniq}/Room/ x ", b"yes", 0)
    got = sub.receive_publish()
    assert (got.topic, got.payload) == (f"{uniq}/Room/ x ", b"yes")
    sub.nothing(0.2)


# ----------------------------------------------------------------- RETAIN on live forwarding


def test_mqtt_3_3_1_9_retain_cleared_for_existing_subscription_v311(raw, uniq: str) -> None:
    """[MQTT-3.3.1-9] (3.1.1): a retained PUBLISH forwarded to an already established
    subscription goes out with RETAIN=0."""
    sub, pub = _pair(raw, uniq, 4, f"{uniq}/t", 1)
    pub.publish(f"{uniq}/t", b"r", 1, retain=True)
    got = sub.receive_publish()
    assert got.retain is False
    pub.publish(f"{uniq}/t", b"", 0, retain=True)  # clear the retained message


@pytest.mark.parametrize("rap", [False, True])
def test_mqtt_3_3_1_12_retain_as_published_v5(raw, uniq: str, rap: bool) -> None:
    """[MQTT-3.3.1-12] (5.0): Retain As Published 0 -> forwarded with RETAIN 0;
    [MQTT-3.3.1-13]: Retain As Published 1 -> RETAIN as received."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub")
    assert sub.subscribe(f"{uniq}/t", 1, retain_as_published=rap).reason_codes == [1]
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"r", 1, retain=True)
    assert sub.receive_publish().retain is rap
    pub.publish(f"{uniq}/t", b"n", 1, retain=False)
    assert sub.receive_publish().retain is False
    pub.publish(f"{uniq}/t", b"", 0, retain=True)


# ----------------------------------------------------------------- ordering


@VERSIONS
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mqtt_4_6_0_6_ordered_topic(raw, uniq: str, version: int, qos: int) -> None:
    """[MQTT-4.6.0-5] [MQTT-4.6.0-6] (3.1.1) / [MQTT-4.6.0-5] [MQTT-4.6.0-6] (5.0): messages
    of one topic and QoS from one client are forwarded in the order they arrived."""
    sub, pub = _pair(raw, uniq, version, f"{uniq}/t", 2)
    n = 30
    for i in range(n):
        pub.send(Publish(f"{uniq}/t", b"%d" % i, qos, packet_id=(i + 1) if qos else None))
    if qos == 2:
        for i in range(n):
            assert pub.expect(PubRec).packet_id == i + 1
            pub.send(PubRel(i + 1))
        for i in range(n):
            assert pub.expect(PubComp).packet_id == i + 1
    elif qos == 1:
        assert [pub.expect(PubAck).packet_id for _ in range(n)] == list(range(1, n + 1))
    got = [p.payload for p in collect_publishes(sub, n)]
    assert got == [b"%d" % i for i in range(n)]


# ----------------------------------------------------------------- overlapping subscriptions


@VERSIONS
def test_mqtt_3_3_5_1_overlapping_subscriptions_once_at_highest_qos(
    raw, uniq: str, version: int
) -> None:
    """[MQTT-3.3.5-1] (3.1.1) / [MQTT-3.3.4-2] (5.0): a client with several matching
    subscriptions gets the message respecting the highest granted QoS (this broker:
    exactly one copy)."""
    sub: RawClient = raw(version)
    sub.connect(f"{uniq}-sub")
    assert sub.subscribe(f"{uniq}/#", 0).reason_codes == [0]
    assert sub.subscribe(f"{uniq}/+/c", 2).reason_codes == [2]
    assert sub.subscribe(f"{uniq}/b/c", 1).reason_codes == [1]
    pub: RawClient = raw(version)
    pub.connect(f"{uniq}-pub")
    pub.publish(f"{uniq}/b/c", b"x", 2)
    got = sub.receive_publish()
    assert got.qos == 2
    sub.nothing(0.3)


def test_mqtt_3_3_4_3_overlapping_subscription_identifiers_v5(raw, uniq: str) -> None:
    """[MQTT-3.3.4-3] [MQTT-3.3.4-4] (5.0): the single delivered copy carries the
    Subscription Identifiers of all matching subscriptions."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub")
    sub.subscribe(f"{uniq}/#", 1, properties=Properties(subscription_identifiers=(11,)))
    sub.subscribe(f"{uniq}/+", 1, properties=Properties(subscription_identifiers=(22,)))
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    pub.publish(f"{uniq}/a", b"x", 1)
    got = sub.receive_publish()
    assert sorted(got.properties.subscription_identifiers) == [11, 22]
    sub.nothing(0.3)


# ----------------------------------------------------------------- v5 specifics


@pytest.mark.parametrize("qos", [1, 2])
def test_v5_puback_0x10_no_matching_subscribers(raw, uniq: str, qos: int) -> None:
    """MQTT 5.0 §3.4.2.1 / §3.5.2.1: a PUBLISH with no matching subscribers is acknowledged
    with 0x10 No matching subscribers (a success code, [MQTT-3.4.2-1] / [MQTT-3.5.2-1])."""
    pub: RawClient = raw(5)
    pub.connect(uniq)
    ack = pub.publish(f"{uniq}/nobody-listens", b"x", qos)
    if qos == 1:
        assert isinstance(ack, PubAck) and ack.reason_code == 0x10
    else:
        assert isinstance(ack, PubComp)
    # The PUBREC of the QoS 2 exchange carried the code; check it explicitly.
    if qos == 2:
        pub.send(Publish(f"{uniq}/nobody-listens", b"y", 2, packet_id=77))
        assert pub.expect(PubRec).reason_code == 0x10
        pub.send(PubRel(77))
        pub.expect(PubComp)


def test_v5_puback_0_when_matched(raw, uniq: str) -> None:
    """[MQTT-3.4.2-1] (5.0): PUBACK 0x00 Success when at least one subscriber matched."""
    sub, pub = _pair(raw, uniq, 5, f"{uniq}/t", 1)
    ack = pub.publish(f"{uniq}/t", b"x", 1)
    assert isinstance(ack, PubAck) and ack.reason_code == 0
    sub.receive_publish()


def test_mqtt_3_3_2_17_v5_properties_forwarded_unchanged(raw, uniq: str) -> None:
    """[MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18]
    [MQTT-3.3.2-20] (5.0): Payload Format Indicator, Response Topic, Correlation Data,
    User Properties (order kept, duplicates kept) and Content Type are forwarded."""
    sub, pub = _pair(raw, uniq, 5, f"{uniq}/t", 1)
    props = Properties(
        payload_format_indicator=1,
        content_type="text/plain",
        response_topic=f"{uniq}/reply",
        correlation_data=b"\x00\x01corr",
        user_properties=(("z", "1"), ("a", "2"), ("z", "3")),
    )
    pub.publish(f"{uniq}/t", b"hello", 1, properties=props)
    got = sub.receive_publish().properties
    assert got.payload_format_indicator == 1
    assert got.content_type == "text/plain"
    assert got.response_topic == f"{uniq}/reply"
    assert got.correlation_data == b"\x00\x01corr"
    assert got.user_properties == (("z", "1"), ("a", "2"), ("z", "3"))


# ----------------------------------------------------------------- v5 client limits


def test_mqtt_3_3_4_9_v5_client_receive_maximum_respected(raw, uniq: str) -> None:
    """[MQTT-3.3.4-9] [MQTT-4.9.0-2] (5.0): the server keeps at most the client's Receive
    Maximum (2) unacknowledged QoS 1/2 PUBLISHes in flight; [MQTT-3.3.4-10] [MQTT-4.9.0-3]:
    other packets (PINGRESP, SUBACK) are not held back meanwhile."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub", properties=Properties(receive_maximum=2))
    sub.subscribe(f"{uniq}/t", 1)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    for i in range(5):
        pub.publish(f"{uniq}/t", b"%d" % i, 1)
    first = [sub.expect(Publish) for _ in range(2)]
    sub.nothing(0.3)
    ping(sub)
    assert sub.subscribe(f"{uniq}/other", 0).reason_codes == [0]
    sub.send(PubAck(first[0].packet_id or 0))
    third = sub.expect(Publish)
    sub.nothing(0.2)
    rest = [first[1], third]
    for p in rest:
        sub.send(PubAck(p.packet_id or 0))
    rest += [sub.receive_publish() for _ in range(2)]
    assert [p.payload for p in first[:1] + rest] == [b"0", b"1", b"2", b"3", b"4"]


def test_mqtt_3_1_2_25_v5_too_large_for_client_dropped(raw, uniq: str) -> None:
    """[MQTT-3.1.2-24] (5.0): the server never sends a packet larger than the client's
    Maximum Packet Size; [MQTT-3.1.2-25]: it drops such a message and carries on as if it
    had been delivered (later messages still flow, QoS 1 ones included)."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub", properties=Properties(maximum_packet_size=128))
    sub.subscribe(f"{uniq}/t", 1)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"L" * 300, 1)
    pub.publish(f"{uniq}/t", b"small", 1)
    got = sub.receive_publish()
    assert got.payload == b"small"
    sub.nothing(0.3)


def test_mqtt_3_1_2_27_v5_no_topic_alias_without_client_maximum(raw, uniq: str) -> None:
    """[MQTT-3.1.2-27] (5.0): a client that sent no Topic Alias Maximum gets no Topic
    Aliases: every PUBLISH carries the full topic."""
    sub, pub = _pair(raw, uniq, 5, f"{uniq}/t", 0)
    for _ in range(3):
        pub.publish(f"{uniq}/t", b"x", 0)
    for _ in range(3):
        got = sub.receive_publish()
        assert (got.topic, got.properties.topic_alias) == (f"{uniq}/t", None)


def test_mqtt_3_1_2_26_v5_topic_alias_within_client_maximum(raw, uniq: str) -> None:
    """[MQTT-3.1.2-26] [MQTT-3.3.2-8] (5.0): Topic Aliases the server sends are between 1
    and the client's Topic Alias Maximum; an alias-only PUBLISH refers to an alias the
    server set earlier on this connection."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub", properties=Properties(topic_alias_maximum=2))
    sub.subscribe(f"{uniq}/#", 0)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    topics = [f"{uniq}/{c}" for c in "abcab"] * 2
    for t in topics:
        pub.publish(t, t.encode(), 0)
    aliases: dict[int, str] = {}
    for t in topics:
        got = sub.receive_publish()
        alias = got.properties.topic_alias
        if alias is not None:
            assert 1 <= alias <= 2
            if got.topic:
                aliases[alias] = got.topic
            else:
                assert alias in aliases
                got.topic = aliases[alias]
        assert got.topic == t and got.payload == t.encode()
