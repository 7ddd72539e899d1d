"""Retained messages (MQTT 3.1.1 §3.3.1.3, MQTT 5.0 §3.3.1.3 and §3.8.3.1)."""

from __future__ import annotations

import time

import pytest

from iotbroker.codec.packets import Properties, Publish
from tests.helpers.conformance import drain
from tests.helpers.rawclient import RawClient

VERSIONS = pytest.mark.parametrize("version", [4, 5])


def _client(raw, version: int, client_id: str) -> RawClient:
    client: RawClient = raw(version)
    assert client.connect(client_id).reason_code == 0
    return client


def _clear(pub: RawClient, *topics: str) -> None:
    for topic in topics:
        pub.publish(topic, b"", 0, retain=True)


@VERSIONS
def test_mqtt_3_3_1_6_retained_delivered_on_subscribe(raw, uniq: str, version: int) -> None:
    """[MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-8] (3.1.1) / [MQTT-3.3.1-5] [MQTT-3.3.1-9]
    (5.0): a RETAIN=1 message is stored and sent, with RETAIN=1, to each new matching
    subscription (wildcards included)."""
    pub = _client(raw, version, f"{uniq}-pub")
    pub.publish(f"{uniq}/a", b"A", 1, retain=True)
    pub.publish(f"{uniq}/b", b"B", 1, retain=True)
    sub = _client(raw, version, f"{uniq}-sub")
    sub.subscribe(f"{uniq}/+", 1)
    got = sorted(
        (p.topic, p.payload, p.retain) for p in (sub.receive_publish(), sub.receive_publish())
    )
    assert got == [(f"{uniq}/a", b"A", True), (f"{uniq}/b", b"B", True)]
    sub.nothing(0.2)
    _clear(pub, f"{uniq}/a", f"{uniq}/b")


@VERSIONS
@pytest.mark.parametrize("second_qos", [0, 1])
def test_mqtt_3_3_1_7_retained_replaced(raw, uniq: str, version: int, second_qos: int) -> None:
    """[MQTT-3.3.1-5] [MQTT-3.3.1-7] (3.1.1) / [MQTT-3.3.1-5] (5.0): a new retained message
    replaces the previous one for the topic (a QoS 0 one too)."""
    pub = _client(raw, version, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"old", 2, retain=True)
    pub.publish(f"{uniq}/t", b"new", second_qos, retain=True)
    sub = _client(raw, version, f"{uniq}-sub")
    sub.subscribe(f"{uniq}/t", 2)
    got = sub.receive_publish()
    assert (got.payload, got.qos, got.retain) == (b"new", second_qos, True)
    sub.nothing(0.2)
    _clear(pub, f"{uniq}/t")


@VERSIONS
def test_mqtt_3_3_1_10_zero_length_retained_deletes(raw, uniq: str, version: int) -> None:
    """[MQTT-3.3.1-10] [MQTT-3.3.1-11] (3.1.1) / [MQTT-3.3.1-6] [MQTT-3.3.1-7] (5.0): a
    retained PUBLISH with an empty payload removes the retained message and is not itself
    stored; it is still forwarded to current subscribers as normal (3.1.1 §3.3.1.3)."""
    pub = _client(raw, version, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"doomed", 1, retain=True)
    live = _client(raw, version, f"{uniq}-live")
    live.subscribe(f"{uniq}/t", 1)
    assert live.receive_publish().payload == b"doomed"
    pub.publish(f"{uniq}/t", b"", 1, retain=True)
    assert live.receive_publish().payload == b""
    late = _client(raw, version, f"{uniq}-late")
    late.subscribe(f"{uniq}/t", 1)
    late.nothing(0.3)


@VERSIONS
def test_mqtt_3_3_1_12_non_retained_publish_leaves_retained(raw, uniq: str, version: int) -> None:
    """[MQTT-3.3.1-12] (3.1.1) / [MQTT-3.3.1-8] (5.0): a RETAIN=0 PUBLISH is not stored and
    does not replace or remove the retained message."""
    pub = _client(raw, version, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"kept", 1, retain=True)
    pub.publish(f"{uniq}/t", b"transient", 1, retain=False)
    pub.publish(f"{uniq}/t", b"", 1, retain=False)
    sub = _client(raw, version, f"{uniq}-sub")
    sub.subscribe(f"{uniq}/t", 1)
    got = sub.receive_publish()
    assert (got.payload, got.retain) == (b"kept", True)
    sub.nothing(0.2)
    _clear(pub, f"{uniq}/t")


@VERSIONS
@pytest.mark.parametrize(("stored_qos", "sub_qos"), [(2, 1), (2, 0), (1, 2), (0, 2)])
def test_mqtt_3_8_4_6_retained_delivered_at_minimum_qos(
    raw, uniq: str, version: int, stored_qos: int, sub_qos: int
) -> None:
    """[MQTT-3.3.1-5] stores the QoS; [MQTT-3.8.4-6] (3.1.1) / [MQTT-3.8.4-8] (5.0): the
    retained message goes out at min(its QoS, granted QoS)."""
    pub = _client(raw, version, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"r", stored_qos, retain=True)
    sub = _client(raw, version, f"{uniq}-sub")
    sub.subscribe(f"{uniq}/t", sub_qos)
    got = sub.receive_publish()
    assert (got.qos, got.retain) == (min(stored_qos, sub_qos), True)
    _clear(pub, f"{uniq}/t")


@VERSIONS
def test_mqtt_3_1_2_7_retained_survives_session_end(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-7] (3.1.1): retained messages are not session state; they survive the
    end of the publisher's (clean) session."""
    pub: RawClient = raw(version)
    pub.connect(f"{uniq}-pub", clean_start=True)
    pub.publish(f"{uniq}/t", b"outlives", 1, retain=True)
    pub.disconnect()
    sub = _client(raw, version, f"{uniq}-sub")
    sub.subscribe(f"{uniq}/t", 1)
    assert sub.receive_publish().payload == b"outlives"
    _clear(sub, f"{uniq}/t")


@VERSIONS
def test_mqtt_4_7_2_1_retained_dollar_topics_not_sent_to_leading_wildcards(
    raw, uniq: str, version: int
) -> None:
    """[MQTT-4.7.2-1]: retained messages on ``$...`` topics are not sent for ``#`` or
    ``+/...`` subscriptions, but are for a filter naming the ``$`` level. (Clients may not
    publish to ``$SYS``, issue 12: the broker's own ``$SYS`` topics are checked below.)"""
    pub = _client(raw, version, f"{uniq}-pub")
    topics = [f"$dev{uniq}/load", f"$x{uniq}/load"]
    for topic in topics:
        pub.publish(topic, b"$", 1, retain=True)
    hash_sub = _client(raw, version, f"{uniq}-hash")
    hash_sub.subscribe("#", 0)
    plus_sub = _client(raw, version, f"{uniq}-plus")
    plus_sub.subscribe(f"+/{uniq}/load", 0)
    for client in (hash_sub, plus_sub):
        seen = [p.topic for p in drain(client, 0.4) if isinstance(p, Publish)]
        assert not [t for t in seen if t.startswith("$")], seen
    sys_sub = _client(raw, version, f"{uniq}-sys")
    sys_sub.subscribe(f"$dev{uniq}/#", 0)
    assert sys_sub.receive_publish().topic == f"$dev{uniq}/load"
    _clear(pub, *topics)


# ----------------------------------------------------------------- v5 Retain Handling


def test_mqtt_3_3_1_9_v5_retain_handling(raw, uniq: str) -> None:
    """[MQTT-3.3.1-9] (0: send on every subscribe, re-subscribe included),
    [MQTT-3.3.1-10] (1: only if the subscription did not exist), [MQTT-3.3.1-11]
    (2: never) (5.0)."""
    pub = _client(raw, 5, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"r", 1, retain=True)
    for rh, first, again in ((0, True, True), (1, True, False), (2, False, False)):
        sub = _client(raw, 5, f"{uniq}-rh{rh}")
        for expected in (first, again):
            assert sub.subscribe(f"{uniq}/t", 1, retain_handling=rh).reason_codes == [1]
            if expected:
                got = sub.receive_publish()
                assert (got.payload, got.retain) == (b"r", True), rh
            sub.nothing(0.2)
        sub.close()
    _clear(pub, f"{uniq}/t")


def test_mqtt_3_3_4_3_v5_retained_carries_subscription_identifier(raw, uniq: str) -> None:
    """[MQTT-3.3.4-3] (5.0): a retained message sent because of a subscription carries that
    subscription's Subscription Identifier."""
    pub = _client(raw, 5, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"r", 1, retain=True)
    sub = _client(raw, 5, f"{uniq}-sub")
    sub.subscribe(f"{uniq}/#", 1, properties=Properties(subscription_identifiers=(42,)))
    got = sub.receive_publish()
    assert (got.payload, got.properties.subscription_identifiers) == (b"r", (42,))
    _clear(pub, f"{uniq}/t")


@pytest.mark.parametrize("version", [4, 5])
def test_mqtt_4_7_2_1_broker_sys_topics_not_sent_for_hash(
    make_broker, uniq: str, version: int
) -> None:
    """[MQTT-4.7.2-1] with the broker's own ``$SYS/broker/...`` retained statistics: a
    ``#`` subscription gets none of them (neither retained nor live), ``$SYS/#`` does."""
    b = make_broker(extra="sys_topics:\n  enabled: true\n  interval: 0.2\n")
    with (
        RawClient(b.host, b.port, version, timeout=3.0) as hash_sub,
        RawClient(b.host, b.port, version, timeout=3.0) as sys_sub,
    ):
        hash_sub.connect(f"{uniq}-hash")
        sys_sub.connect(f"{uniq}-sys")
        time.sleep(0.5)  # let a first round of $SYS retained messages exist
        hash_sub.subscribe("#", 0)
        sys_sub.subscribe("$SYS/#", 0)
        seen = [p.topic for p in drain(hash_sub, 0.6, limit=1.0) if isinstance(p, Publish)]
        assert not [t for t in seen if t.startswith("$")], seen
        sys_seen = [p.topic for p in drain(sys_sub, 0.3, limit=0.6) if isinstance(p, Publish)]
        assert sys_seen and all(t.startswith("$SYS/") for t in sys_seen)
