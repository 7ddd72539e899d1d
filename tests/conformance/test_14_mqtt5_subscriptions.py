"""MQTT 5.0 subscription options and Subscription Identifiers (§3.8.3.1, §3.8.2.1.2,
§3.3.4)."""

from __future__ import annotations

from iotbroker.codec.packets import Properties, Publish, Subscribe, Subscription
from tests.helpers.conformance import collect_publishes, disconnect_reason
from tests.helpers.rawclient import RawClient


def _c(raw, client_id: str) -> RawClient:
    c: RawClient = raw(5)
    assert c.connect(client_id).reason_code == 0
    return c


def _sid(n: int) -> Properties:
    return Properties(subscription_identifiers=(n,))


# ----------------------------------------------------------------- No Local


def test_mqtt_3_8_3_3_no_local_with_overlapping_subscription(raw, uniq: str) -> None:
    """[MQTT-3.8.3-3]: No Local applies per subscription: the client's own message is not
    sent for its No Local subscription, but an overlapping subscription without No Local
    still delivers it -- once, carrying only that subscription's identifier
    [MQTT-3.3.4-3]."""
    me = _c(raw, f"{uniq}-me")
    me.subscribe(f"{uniq}/t", 1, properties=_sid(1), no_local=True)
    me.publish(f"{uniq}/t", b"own-1", 0)
    me.nothing(0.3)
    me.subscribe(f"{uniq}/#", 1, properties=_sid(2))
    me.publish(f"{uniq}/t", b"own-2", 0)
    got = me.receive_publish()
    assert (got.payload, got.qos) == (b"own-2", 0)
    assert got.properties.subscription_identifiers == (2,)
    me.nothing(0.3)


# ----------------------------------------------------------------- Retain As Published


def test_mqtt_3_3_1_13_retain_as_published(raw, uniq: str) -> None:
    """[MQTT-3.3.1-12] [MQTT-3.3.1-13]: a live retained PUBLISH is forwarded with RETAIN 0
    to a subscription with Retain As Published 0 and RETAIN 1 to one with 1; messages
    sent because of a new subscription have RETAIN 1 either way [MQTT-3.3.1-9]."""
    rap0 = _c(raw, f"{uniq}-rap0")
    rap1 = _c(raw, f"{uniq}-rap1")
    rap0.subscribe(f"{uniq}/t", 1, retain_as_published=False)
    rap1.subscribe(f"{uniq}/t", 1, retain_as_published=True)
    pub = _c(raw, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"r", 1, retain=True)
    pub.publish(f"{uniq}/t", b"n", 1, retain=False)
    assert [(p.payload, p.retain) for p in collect_publishes(rap0, 2)] == [
        (b"r", False),
        (b"n", False),
    ]
    assert [(p.payload, p.retain) for p in collect_publishes(rap1, 2)] == [
        (b"r", True),
        (b"n", False),
    ]
    late = _c(raw, f"{uniq}-late")
    late.subscribe(f"{uniq}/t", 1, retain_as_published=False)
    assert late.receive_publish().retain is True
    pub.publish(f"{uniq}/t", b"", 0, retain=True)


# ----------------------------------------------------------------- Retain Handling


def test_mqtt_3_3_1_10_retain_handling_0_1_2(raw, uniq: str) -> None:
    """MQTT 5.0 §3.8.3.1: Retain Handling 0 sends retained messages at every subscribe,
    including a re-subscribe [MQTT-3.3.1-9] [MQTT-3.8.4-4]; 1 only when the
    subscription did not exist [MQTT-3.3.1-10]; 2 never [MQTT-3.3.1-11]."""
    pub = _c(raw, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"kept", 1, retain=True)
    expected = {0: [True, True], 1: [True, False], 2: [False, False]}
    for rh, outcome in expected.items():
        c = _c(raw, f"{uniq}-rh{rh}")
        for sent in outcome:
            c.subscribe(f"{uniq}/t", 1, retain_handling=rh)
            if sent:
                got = c.receive_publish()
                assert (got.payload, got.retain) == (b"kept", True), rh
            else:
                c.nothing(0.25)
    pub.publish(f"{uniq}/t", b"", 0, retain=True)


# ----------------------------------------------------------------- Subscription Identifiers


def test_mqtt_3_3_4_3_subscription_identifier_delivered(raw, uniq: str) -> None:
    """[MQTT-3.3.4-3]: a message matching a subscription made with a Subscription
    Identifier carries it (the largest value, 268435455, included); one made without
    carries none."""
    c = _c(raw, f"{uniq}-sub")
    c.subscribe(f"{uniq}/with", 1, properties=_sid(268435455))
    c.subscribe(f"{uniq}/without", 1)
    pub = _c(raw, f"{uniq}-pub")
    pub.publish(f"{uniq}/with", b"a", 1)
    pub.publish(f"{uniq}/without", b"b", 1)
    got = collect_publishes(c, 2)
    assert [(p.payload, p.properties.subscription_identifiers) for p in got] == [
        (b"a", (268435455,)),
        (b"b", ()),
    ]


def test_mqtt_3_3_4_4_one_copy_carries_every_identifier(raw, uniq: str) -> None:
    """[MQTT-3.3.4-3] [MQTT-3.3.4-4] [MQTT-3.3.4-2]: three overlapping subscriptions (two
    with identifiers, one without) give one copy at the highest granted QoS carrying both
    identifiers."""
    c = _c(raw, f"{uniq}-sub")
    c.subscribe(f"{uniq}/#", 0, properties=_sid(5))
    c.subscribe(f"{uniq}/+/x", 1, properties=_sid(6))
    c.subscribe(f"{uniq}/a/x", 2)
    _c(raw, f"{uniq}-pub").publish(f"{uniq}/a/x", b"m", 2)
    got = c.receive_publish()
    assert got.qos == 2
    assert sorted(got.properties.subscription_identifiers) == [5, 6]
    c.nothing(0.3)


def test_mqtt_3_3_4_5_separate_copies_carry_their_own_identifier(raw, uniq: str) -> None:
    """[MQTT-3.3.4-5]: when a client gets separate copies of one message (an ordinary and
    a shared subscription), each copy carries the identifier of its own subscription."""
    c = _c(raw, f"{uniq}-sub")
    c.subscribe(f"{uniq}/t", 1, properties=_sid(31))
    c.subscribe(f"$share/{uniq}/{uniq}/t", 1, properties=_sid(32))
    _c(raw, f"{uniq}-pub").publish(f"{uniq}/t", b"m", 1)
    got = collect_publishes(c, 2)
    assert sorted(p.properties.subscription_identifiers for p in got) == [(31,), (32,)]
    c.nothing(0.3)


def test_subscription_identifier_replaced_and_removed_on_resubscribe(raw, uniq: str) -> None:
    """MQTT 5.0 §3.8.2.1.2 / [MQTT-3.8.4-3]: re-subscribing to the same filter replaces
    the subscription, its identifier included: a new identifier replaces the old one,
    and a SUBSCRIBE without one removes it."""
    c = _c(raw, f"{uniq}-sub")
    pub = _c(raw, f"{uniq}-pub")
    c.subscribe(f"{uniq}/t", 1, properties=_sid(1))
    pub.publish(f"{uniq}/t", b"1", 1)
    assert c.receive_publish().properties.subscription_identifiers == (1,)
    c.subscribe(f"{uniq}/t", 1, properties=_sid(2))
    pub.publish(f"{uniq}/t", b"2", 1)
    assert c.receive_publish().properties.subscription_identifiers == (2,)
    c.subscribe(f"{uniq}/t", 1)
    pub.publish(f"{uniq}/t", b"3", 1)
    assert c.receive_publish().properties.subscription_identifiers == ()


def test_subscription_identifier_survives_session_resume(raw, uniq: str) -> None:
    """MQTT 5.0 §4.1: the Subscription Identifier is part of the subscription, which is
    session state: after a resume messages still carry it."""
    props = Properties(session_expiry_interval=30)
    c: RawClient = raw(5)
    c.connect(f"{uniq}-sub", clean_start=True, properties=props)
    c.subscribe(f"{uniq}/t", 1, properties=_sid(77))
    c.disconnect()
    _c(raw, f"{uniq}-pub").publish(f"{uniq}/t", b"queued", 1)
    again: RawClient = raw(5)
    assert again.connect(f"{uniq}-sub", clean_start=False, properties=props).session_present
    got = again.receive_publish()
    assert (got.payload, got.properties.subscription_identifiers) == (b"queued", (77,))
    again.disconnect(properties=Properties(session_expiry_interval=0))


def test_subscription_identifier_0_is_protocol_error(raw, uniq: str) -> None:
    """MQTT 5.0 §3.8.2.1.2: a Subscription Identifier of 0 is a Protocol Error: the
    server closes with a DISCONNECT of 0x81/0x82 and sends no SUBACK."""
    c = _c(raw, uniq)
    c.send(Subscribe(1, [Subscription(f"{uniq}/t", 0)], _sid(0)))
    packets = c.expect_closed(3.0)
    assert disconnect_reason(packets) in (0x81, 0x82)
    assert not any(isinstance(p, Publish) for p in packets)
