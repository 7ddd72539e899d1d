"""SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK and topic matching (MQTT 3.1.1 §3.8-3.11,
§4.7; MQTT 5.0 same)."""

from __future__ import annotations

import pytest

from iotbroker.codec.packets import (
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
from tests.helpers.conformance import collect_publishes, disconnect_reason, drain
from tests.helpers.rawclient import RawClient

VERSIONS = pytest.mark.parametrize("version", [4, 5])


def _client(raw, version: int, client_id: str) -> RawClient:
    client: RawClient = raw(version)
    assert client.connect(client_id).reason_code == 0
    return client


def _subscribe_many(client: RawClient, pid: int, subs: list[tuple[str, int]]) -> SubAck:
    client.send(Subscribe(pid, [Subscription(f, q) for f, q in subs]))
    ack = client.expect(SubAck)
    assert ack.packet_id == pid
    return ack


@VERSIONS
def test_mqtt_3_9_3_1_suback_codes_in_order(raw, uniq: str, version: int) -> None:
    """[MQTT-3.8.4-1] [MQTT-3.8.4-2] [MQTT-3.8.4-4] [MQTT-3.8.4-5] [MQTT-3.9.3-1]
    [MQTT-2.3.1-7] (3.1.1) / [MQTT-3.8.4-1] [MQTT-3.8.4-2] [MQTT-3.8.4-5] [MQTT-3.8.4-6]
    [MQTT-3.8.4-7] [MQTT-3.9.3-1] [MQTT-2.2.1-6] (5.0): one SUBACK with the SUBSCRIBE's id
    and one code per filter, in order, each the granted QoS; every filter is active."""
    sub = _client(raw, version, f"{uniq}-sub")
    ack = _subscribe_many(sub, 4711, [(f"{uniq}/a", 2), (f"{uniq}/b", 0), (f"{uniq}/c", 1)])
    assert ack.reason_codes == [2, 0, 1]
    pub = _client(raw, version, f"{uniq}-pub")
    for t in "abc":
        pub.publish(f"{uniq}/{t}", t.encode(), 2)
    got = collect_publishes(sub, 3)
    assert sorted((p.payload, p.qos) for p in got) == [(b"a", 2), (b"b", 0), (b"c", 1)]


@VERSIONS
@pytest.mark.parametrize("bad", ["a/#/b", "a+", "#/x", "x/b#", "x/+y", "##", "", "#/test/topic"])
@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
def test_mqtt_4_7_1_1_malformed_filter_closes_connection(
    raw, uniq: str, version: int, bad: str, kind: str
) -> None:
    """A filter that breaks the wildcard rules (3.1.1 [MQTT-4.7.1-2] [MQTT-4.7.1-3], 5.0
    [MQTT-4.7.1-1] [MQTT-4.7.1-2]) or is empty [MQTT-4.7.3-1] is a protocol violation,
    not a refused subscription: in SUBSCRIBE and in UNSUBSCRIBE the server closes the
    connection (3.1.1 [MQTT-4.8.0-1]; 5.0 DISCONNECT 0x82 first [MQTT-4.13.1-1]),
    with no SUBACK / UNSUBACK, and none of the packet's filters is subscribed."""
    filt = "" if bad == "" else f"{uniq}/{bad}" if not bad.startswith("#") else bad
    sub = _client(raw, version, f"{uniq}-sub")
    if kind == "subscribe":
        sub.send(Subscribe(9, [Subscription(f"{uniq}/ok1", 1), Subscription(filt, 1)]))
    else:
        sub.subscribe(f"{uniq}/ok1", 1)
        sub.send(Unsubscribe(9, [f"{uniq}/ok1", filt]))
    packets = sub.expect_closed(3.0)
    assert not any(isinstance(p, (SubAck, UnsubAck)) for p in packets), packets
    if version == 5:
        assert disconnect_reason(packets) == 0x82
    else:
        assert packets == []


@VERSIONS
def test_mqtt_3_8_4_5_refused_filter_fails_alone(make_broker, uniq: str, version: int) -> None:
    """[MQTT-3.8.4-5] [MQTT-3.9.3-2] (3.1.1) / [MQTT-3.8.4-7] [MQTT-3.9.3-2] (5.0): a
    well-formed filter refused by policy (here: more levels than ``mqtt.max_topic_levels``)
    gets a failure code (0x80 / 0x8F Topic Filter invalid) in its own position, the
    other filters of the same SUBSCRIBE succeed and the connection stays open."""
    b = make_broker(extra="mqtt:\n  max_topic_levels: 4\n")
    sub = RawClient(b.host, b.port, version, timeout=3.0)
    pub = RawClient(b.host, b.port, version, timeout=3.0)
    with sub, pub:
        sub.connect(f"{uniq}-sub")
        pub.connect(f"{uniq}-pub")
        ack = _subscribe_many(sub, 9, [(f"{uniq}/ok1", 1), (f"{uniq}/a/b/c/d", 1),
                                       (f"{uniq}/ok2", 2)])
        assert ack.reason_codes == [1, 0x8F if version == 5 else 0x80, 2]
        pub.publish(f"{uniq}/ok2", b"x", 2)
        assert sub.receive_publish().topic == f"{uniq}/ok2"


@VERSIONS
def test_mqtt_3_8_4_3_identical_filter_replaces_subscription(raw, uniq: str, version: int) -> None:
    """[MQTT-3.8.4-3] (3.1.1) / [MQTT-3.8.4-3] [MQTT-3.8.4-4] (5.0): subscribing again to
    an identical filter replaces the subscription (new QoS, one copy per message) and
    re-sends the retained message."""
    pub = _client(raw, version, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"kept", 1, retain=True)
    sub = _client(raw, version, f"{uniq}-sub")
    assert sub.subscribe(f"{uniq}/t", 0).reason_codes == [0]
    first = sub.receive_publish()
    assert (first.payload, first.retain, first.qos) == (b"kept", True, 0)
    assert sub.subscribe(f"{uniq}/t", 2).reason_codes == [2]
    again = sub.receive_publish()
    assert (again.payload, again.retain, again.qos) == (b"kept", True, 1)
    pub.publish(f"{uniq}/t", b"live", 2)
    got = sub.receive_publish()
    assert (got.payload, got.qos) == (b"live", 2)
    sub.nothing(0.3)
    pub.publish(f"{uniq}/t", b"", 0, retain=True)


@VERSIONS
def test_mqtt_3_10_4_1_unsubscribe_exact_match(raw, uniq: str, version: int) -> None:
    """[MQTT-3.10.4-1] [MQTT-3.10.4-2] [MQTT-3.10.4-4] (both): UNSUBSCRIBE compares filters
    character by character; only the identical filter is removed (``+`` does not remove
    ``b``) and no new messages flow for it; UNSUBACK carries the request's id."""
    sub = _client(raw, version, f"{uniq}-sub")
    sub.subscribe(f"{uniq}/b", 1)
    sub.subscribe(f"{uniq}/+/x", 1)
    pub = _client(raw, version, f"{uniq}-pub")
    ack = sub.unsubscribe(f"{uniq}/+")
    if version == 5:
        assert ack.reason_codes == [0x11]
    pub.publish(f"{uniq}/b", b"still", 1)
    assert sub.receive_publish().payload == b"still"
    ack = sub.unsubscribe(f"{uniq}/b")
    if version == 5:
        assert ack.reason_codes == [0]
    pub.publish(f"{uniq}/b", b"gone", 1)
    pub.publish(f"{uniq}/q/x", b"other", 1)
    assert sub.receive_publish().payload == b"other"
    sub.nothing(0.3)


@VERSIONS
def test_mqtt_3_10_4_5_unsuback_even_if_nothing_removed(raw, uniq: str, version: int) -> None:
    """[MQTT-3.10.4-5] [MQTT-3.10.4-6] (both) / [MQTT-3.11.3-1] (5.0): one UNSUBACK for a
    multi-filter UNSUBSCRIBE, sent even when nothing was removed; 5.0 gives one code per
    filter in order: 0x00 Success, 0x11 No subscription existed."""
    sub = _client(raw, version, f"{uniq}-sub")
    sub.subscribe(f"{uniq}/a", 0)
    sub.subscribe(f"{uniq}/c", 0)
    sub.send(Unsubscribe(321, [f"{uniq}/a", f"{uniq}/b", f"{uniq}/c"]))
    ack = sub.expect(UnsubAck)
    assert ack.packet_id == 321
    assert ack.reason_codes == ([0, 0x11, 0] if version == 5 else [])
    sub.nothing(0.2)
    ack = sub.unsubscribe(f"{uniq}/never")
    assert ack.reason_codes == ([0x11] if version == 5 else [])


# ----------------------------------------------------------------- matching


MATCHES = [
    # (filter, topic, matches)  MQTT 3.1.1 §4.7.1.2-3 / 5.0 §4.7.1.2-3 examples
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("a/+/c", "a//c", True),
    ("a//c", "a//c", True),
    ("a//c", "a/b/c", False),
    ("a/+", "a/b/c", False),
    ("+/b/#", "x/b", True),
    ("A/b", "a/b", False),
]


@VERSIONS
def test_mqtt_4_7_1_wildcard_matching(raw, uniq: str, version: int) -> None:
    """MQTT 3.1.1 §4.7.1.2-4.7.1.3 / 5.0 same: ``#`` matches the parent level and any
    number of levels, ``+`` exactly one (possibly empty) level; empty levels are levels
    ([MQTT-4.7.3-1] allows them); case matters [MQTT-4.7.3-4]."""
    pub = _client(raw, version, f"{uniq}-pub")
    for i, (filt, topic, matches) in enumerate(MATCHES):
        prefix = f"{uniq}-{i}"
        sub = _client(raw, version, f"{prefix}-sub")
        assert sub.subscribe(f"{prefix}/{filt}", 0).reason_codes == [0]
        pub.publish(f"{prefix}/{topic}", b"m", 0)
        if matches:
            got = sub.receive_publish(timeout=2.0)
            assert got.topic == f"{prefix}/{topic}", (filt, topic)
        sub.nothing(0.05 if matches else 0.2)
        sub.close()


@VERSIONS
def test_mqtt_4_7_2_1_dollar_topics_not_matched_by_leading_wildcard(
    raw, uniq: str, version: int
) -> None:
    """[MQTT-4.7.2-1]: filters starting with ``#`` or ``+`` do not match topics starting
    with ``$``; a filter naming the ``$`` level does."""
    topic = f"$x{uniq}/status"
    opts = {"retain_handling": 2} if version == 5 else {}
    hash_sub = _client(raw, version, f"{uniq}-hash")
    hash_sub.subscribe("#", 0, **opts)
    plus_sub = _client(raw, version, f"{uniq}-plus")
    plus_sub.subscribe("+/status", 0, **opts)
    dollar_sub = _client(raw, version, f"{uniq}-dollar")
    dollar_sub.subscribe(f"$x{uniq}/+", 0)
    drain(hash_sub, 0.3)  # retained messages left by other tests
    drain(plus_sub, 0.1)
    pub = _client(raw, version, f"{uniq}-pub")
    pub.publish(topic, b"$", 1)
    assert dollar_sub.receive_publish().topic == topic
    for client in (hash_sub, plus_sub):
        assert all(
            not (isinstance(p, Publish) and p.topic.startswith("$")) for p in drain(client, 0.3)
        )


def test_v5_no_local(raw, uniq: str) -> None:
    """[MQTT-3.8.3-3] (5.0): No Local 1 -> the server does not send the client's own
    messages back to it; other clients' messages still arrive."""
    me = _client(raw, 5, f"{uniq}-me")
    assert me.subscribe(f"{uniq}/t", 1, no_local=True).reason_codes == [1]
    me.publish(f"{uniq}/t", b"mine", 1)
    me.nothing(0.3)
    _client(raw, 5, f"{uniq}-other").publish(f"{uniq}/t", b"theirs", 1)
    assert me.receive_publish().payload == b"theirs"


# ----------------------------------------------------------------- limited servers


@VERSIONS
def test_mqtt_3_8_3_2_wildcards_refused_when_unsupported(
    make_broker, uniq: str, version: int
) -> None:
    """[MQTT-3.8.3-2] (3.1.1): a server without wildcard support rejects wildcard filters
    (0x80; 5.0: 0xA2 Wildcard Subscriptions not supported) and still serves the others;
    [MQTT-3.2.2-10] (5.0): a server with Maximum QoS 1 still accepts SUBSCRIBE asking
    QoS 2 and grants 1 [MQTT-3.2.2-9] advertised in CONNACK."""
    b = make_broker(extra="mqtt:\n  wildcard_subscriptions: false\n  maximum_qos: 1\n")
    with RawClient(b.host, b.port, version, timeout=3.0) as client:
        ack = client.connect(uniq)
        if version == 5:
            assert ack.properties.maximum_qos == 1
            assert ack.properties.wildcard_subscription_available == 0
        got = _subscribe_many(client, 5, [("a/+", 0), ("a/#", 1), ("a/b", 2)])
        fail = 0xA2 if version == 5 else 0x80
        assert got.reason_codes == [fail, fail, 1]


@VERSIONS
def test_mqtt_3_10_4_3_unsubscribe_completes_inflight(raw, uniq: str, version: int) -> None:
    """[MQTT-3.10.4-3] (both): deliveries already started when the subscription is
    deleted are completed: a QoS 2 PUBLISH received before UNSUBSCRIBE still gets its
    PUBREL after PUBREC, a QoS 1 PUBACK is accepted; [MQTT-3.10.4-2]: nothing new flows."""
    sub = _client(raw, version, f"{uniq}-sub")
    sub.subscribe(f"{uniq}/t", 2)
    pub = _client(raw, version, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"two", 2)
    pub.publish(f"{uniq}/t", b"one", 1)
    two = sub.expect(Publish)
    one = sub.expect(Publish)
    sub.unsubscribe(f"{uniq}/t")
    sub.send(PubRec(two.packet_id or 0))
    assert sub.expect(PubRel).packet_id == two.packet_id
    sub.send(PubComp(two.packet_id or 0))
    sub.send(PubAck(one.packet_id or 0))
    pub.publish(f"{uniq}/t", b"after", 1)
    sub.nothing(0.3)


def test_mqtt_3_2_2_11_v5_publish_above_maximum_qos(make_broker, uniq: str) -> None:
    """MQTT 5.0 §3.2.2.3.4: a PUBLISH above the advertised Maximum QoS ([MQTT-3.2.2-11]
    binds the client) is answered with DISCONNECT 0x9B QoS not supported; and a Will QoS
    above it refuses the CONNECT with 0x9B [MQTT-3.2.2-12]."""
    b = make_broker(extra="mqtt:\n  maximum_qos: 1\n")
    with RawClient(b.host, b.port, 5, timeout=3.0) as client:
        client.connect(uniq)
        client.send(Publish(f"{uniq}/t", b"x", 2, packet_id=1))
        assert disconnect_reason(client.expect_closed(3.0)) == 0x9B
    with RawClient(b.host, b.port, 5, timeout=3.0) as client:
        ack = client.connect(uniq, will=Will(f"{uniq}/w", b"w", 2))
        assert (ack.reason_code, ack.session_present) == (0x9B, False)
        client.expect_closed(3.0)
