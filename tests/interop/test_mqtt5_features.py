"""Interop: MQTT 5.0 features with paho-mqtt (2.x, v5) and aiomqtt (2.x, v5).

Topic aliases, shared subscriptions, subscription identifiers, message expiry and
request / response, as real client libraries use them. Waits are bounded.

Note: paho-mqtt 2.x does not resolve *incoming* topic aliases itself (a message sent
as alias alone reaches ``on_message`` with an empty topic), so the paho subscriber that
allows aliases resolves them here, as an application would have to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.interop.test_paho import Paho

WAIT = 5.0


def _props(kind: int, **values: Any) -> Properties:
    p = Properties(kind)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def _pub_props(**values: Any) -> Properties:
    return _props(PacketTypes.PUBLISH, **values)


def _sub_id(n: int) -> Properties:
    return _props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=n)


def _prop(msg: Any, name: str, default: Any = None) -> Any:
    props = getattr(msg, "properties", None)
    return getattr(props, name, default) if props is not None else default


# ======================================================================= paho


@pytest.fixture
def paho5(broker) -> Iterator[Callable[..., Paho]]:
    clients: list[Paho] = []

    def factory(client_id: str, connect: bool = True, **kw: Any) -> Paho:
        c = Paho(broker.host, broker.port, client_id, mqtt.MQTTv5, **kw)
        clients.append(c)
        if connect:
            c.connect()
        return c

    yield factory
    for c in clients:
        if c.started:
            c.client.disconnect()
            c.client.loop_stop()


def test_paho_sends_topic_aliases(paho5, uniq: str) -> None:
    """paho publishes with Topic Alias (topic + alias, then alias alone with an empty
    topic); the broker resolves them [MQTT-3.3.2-12] and the subscriber sees the topic."""
    sub = paho5(f"{uniq}-sub")
    sub.subscribe(f"{uniq}/#", 1)
    pub = paho5(f"{uniq}-pub")
    pub.publish(f"{uniq}/a", b"1", 1, properties=_pub_props(TopicAlias=1))
    pub.publish("", b"2", 1, properties=_pub_props(TopicAlias=1))
    pub.publish(f"{uniq}/b", b"3", 1, properties=_pub_props(TopicAlias=1))
    pub.publish("", b"4", 1, properties=_pub_props(TopicAlias=1))
    got = [sub.receive() for _ in range(4)]
    assert [(m.topic, m.payload) for m in got] == [
        (f"{uniq}/a", b"1"),
        (f"{uniq}/a", b"2"),
        (f"{uniq}/b", b"3"),
        (f"{uniq}/b", b"4"),
    ]


def test_paho_receives_topic_aliases_within_its_maximum(broker, uniq: str) -> None:
    """A paho subscriber announcing Topic Alias Maximum 2 gets aliases 1..2 only
    [MQTT-3.3.2-11]; a repeated topic comes as alias alone; resolving them gives back
    every topic in order."""
    sub = Paho(broker.host, broker.port, f"{uniq}-sub", mqtt.MQTTv5)
    sub.client.connect(
        broker.host, broker.port, 30, properties=_props(PacketTypes.CONNECT, TopicAliasMaximum=2)
    )
    sub.client.loop_start()
    sub.started = True
    pub = Paho(broker.host, broker.port, f"{uniq}-pub", mqtt.MQTTv5)
    try:
        _flags, rc, _p = sub.connacks.get(timeout=WAIT)
        assert not rc.is_failure
        sub.subscribe(f"{uniq}/#", 1)
        pub.connect()
        topics = [f"{uniq}/{c}" for c in "aabcab"]
        for t in topics:
            pub.publish(t, t.encode(), 1)
        aliases: dict[int, str] = {}
        seen_alias_only = False
        for t in topics:
            m = sub.receive()
            alias = _prop(m, "TopicAlias")
            topic = m.topic
            if alias is not None:
                assert 1 <= alias <= 2
                if topic:
                    aliases[alias] = topic
                else:
                    seen_alias_only = True
                    topic = aliases[alias]
            assert (topic, m.payload) == (t, t.encode())
        assert seen_alias_only
    finally:
        pub.disconnect()
        sub.disconnect()


def test_paho_shared_subscription_splits_messages(paho5, uniq: str) -> None:
    """Two paho members of ``$share/{group}/topic`` share the messages: each message once
    over the group, both members get some; an ordinary subscriber gets all."""
    a = paho5(f"{uniq}-a")
    b = paho5(f"{uniq}-b")
    plain = paho5(f"{uniq}-plain")
    for m in (a, b):
        m.subscribe(f"$share/{uniq}/{uniq}/t", 1)
    plain.subscribe(f"{uniq}/t", 1)
    pub = paho5(f"{uniq}-pub")
    for i in range(6):
        pub.publish(f"{uniq}/t", b"%d" % i, 1)
    everything = [plain.receive().payload for _ in range(6)]
    assert everything == [b"%d" % i for i in range(6)]
    got: list[bytes] = []
    per: dict[str, int] = {}
    deadline = time.monotonic() + WAIT
    while len(got) < 6 and time.monotonic() < deadline:
        for name, m in (("a", a), ("b", b)):
            if not m.messages.empty():
                got.append(m.messages.get_nowait().payload)
                per[name] = per.get(name, 0) + 1
        time.sleep(0.01)
    assert sorted(got) == everything
    assert per.get("a", 0) > 0 and per.get("b", 0) > 0
    time.sleep(0.2)
    assert a.messages.empty() and b.messages.empty()


def test_paho_subscription_identifiers(paho5, uniq: str) -> None:
    """paho subscribing with Subscription Identifiers gets them back on messages
    [MQTT-3.3.4-3]; overlapping subscriptions -> one message with both [MQTT-3.3.4-4]."""
    sub = paho5(f"{uniq}-sub")
    sub.subscribe(f"{uniq}/#", 1, properties=_sub_id(3))
    sub.subscribe(f"{uniq}/+", 1, properties=_sub_id(4))
    pub = paho5(f"{uniq}-pub")
    pub.publish(f"{uniq}/x", b"both", 1)
    pub.publish(f"{uniq}/x/y", b"one", 1)
    first, second = sub.receive(), sub.receive()
    assert sorted(_prop(first, "SubscriptionIdentifier")) == [3, 4]
    assert _prop(second, "SubscriptionIdentifier") == [3]
    time.sleep(0.2)
    assert sub.messages.empty()


def test_paho_message_expiry_of_queued_messages(paho5, uniq: str) -> None:
    """A paho persistent session (Session Expiry 60) offline: a queued message with
    Message Expiry 1 s is gone after 1.3 s [MQTT-3.3.2-5]; one with 60 s arrives with the
    interval reduced [MQTT-3.3.2-6]."""
    sub = paho5(f"{uniq}-sub", clean=True, session_expiry=60)
    sub.subscribe(f"{uniq}/t", 1)
    sub.disconnect()
    pub = paho5(f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"short", 1, properties=_pub_props(MessageExpiryInterval=1))
    pub.publish(f"{uniq}/t", b"long", 1, properties=_pub_props(MessageExpiryInterval=60))
    time.sleep(1.3)
    again = paho5(f"{uniq}-sub", clean=False, session_expiry=0)
    m = again.receive()
    assert m.payload == b"long"
    assert _prop(m, "MessageExpiryInterval") <= 59
    time.sleep(0.2)
    assert again.messages.empty()


def test_paho_request_response(paho5, uniq: str) -> None:
    """paho request/response: Response Topic and Correlation Data are forwarded unchanged
    [MQTT-3.3.2-15] [MQTT-3.3.2-16], user properties in order [MQTT-3.3.2-18]; the
    responder replies on the Response Topic."""
    requester = paho5(f"{uniq}-req")
    requester.subscribe(f"{uniq}/reply", 1)
    responder = paho5(f"{uniq}-resp")
    responder.subscribe(f"{uniq}/svc", 1)
    users = [("z", "1"), ("a", "2"), ("z", "3")]
    requester.publish(
        f"{uniq}/svc",
        b"q",
        1,
        properties=_pub_props(
            ResponseTopic=f"{uniq}/reply", CorrelationData=b"\x00\x01c", UserProperty=users
        ),
    )
    req = responder.receive()
    assert _prop(req, "ResponseTopic") == f"{uniq}/reply"
    assert _prop(req, "CorrelationData") == b"\x00\x01c"
    assert _prop(req, "UserProperty") == users
    responder.publish(
        _prop(req, "ResponseTopic"),
        b"a",
        1,
        properties=_pub_props(CorrelationData=_prop(req, "CorrelationData")),
    )
    answer = requester.receive()
    assert (answer.topic, answer.payload, _prop(answer, "CorrelationData")) == (
        f"{uniq}/reply",
        b"a",
        b"\x00\x01c",
    )


def test_paho_no_local_and_retain_handling(paho5, uniq: str) -> None:
    """paho subscription options: No Local [MQTT-3.8.3-3] and Retain Handling 2
    [MQTT-3.3.1-11] are honoured."""
    me = paho5(f"{uniq}-me")
    me.publish(f"{uniq}/r", b"kept", 1, retain=True)
    me.subscribe(f"{uniq}/r", options=SubscribeOptions(qos=1, retainHandling=2))
    me.subscribe(f"{uniq}/n", options=SubscribeOptions(qos=1, noLocal=True))
    me.publish(f"{uniq}/n", b"mine", 1)
    other = paho5(f"{uniq}-other")
    other.publish(f"{uniq}/n", b"theirs", 1)
    assert me.receive().payload == b"theirs"
    time.sleep(0.2)
    assert me.messages.empty()
    me.publish(f"{uniq}/r", b"", 0, retain=True)


# ======================================================================= aiomqtt


@asynccontextmanager
async def _aio(broker, identifier: str, **kw: Any) -> AsyncIterator[aiomqtt.Client]:
    c = aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=WAIT,
        **kw,
    )
    async with asyncio.timeout(WAIT):
        await c.__aenter__()
    try:
        yield c
    finally:
        await c.__aexit__(None, None, None)


async def _next(c: aiomqtt.Client, timeout: float = WAIT) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        return await anext(c.messages)


async def _nothing(c: aiomqtt.Client, wait: float = 0.3) -> None:
    try:
        msg = await _next(c, wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message {msg.topic} {msg.payload!r}")


@pytest.mark.asyncio
async def test_aiomqtt_subscription_identifiers_and_shared(broker, uniq: str) -> None:
    """aiomqtt v5: a shared subscription and an ordinary one with different
    Subscription Identifiers give two copies, each with its own identifier
    [MQTT-3.3.4-5]; a second shared member takes its turn."""
    async with (
        _aio(broker, f"{uniq}-a") as a,
        _aio(broker, f"{uniq}-b") as b,
        _aio(broker, f"{uniq}-pub") as pub,
    ):
        await a.subscribe(f"{uniq}/t", qos=1, properties=_sub_id(10))
        await a.subscribe(f"$share/{uniq}/{uniq}/t", qos=1, properties=_sub_id(20))
        await b.subscribe(f"$share/{uniq}/{uniq}/t", qos=1, properties=_sub_id(30))
        await pub.publish(f"{uniq}/t", b"1", qos=1)
        await pub.publish(f"{uniq}/t", b"2", qos=1)
        got_a = [await _next(a) for _ in range(3)]
        got_b = [await _next(b)]
        ids_a = sorted((m.payload, tuple(_prop(m, "SubscriptionIdentifier"))) for m in got_a)
        ids_b = [(m.payload, tuple(_prop(m, "SubscriptionIdentifier"))) for m in got_b]
        plain = [x for x in ids_a if x[1] == (10,)]
        shared = [x for x in ids_a if x[1] == (20,)] + ids_b
        assert sorted(p for p, _ in plain) == [b"1", b"2"]
        assert sorted(p for p, _ in shared) == [b"1", b"2"]
        assert {i for _, i in ids_b} == {(30,)}
        await _nothing(a)
        await _nothing(b)


@pytest.mark.asyncio
async def test_aiomqtt_topic_alias_publish(broker, uniq: str) -> None:
    """aiomqtt v5 publishing with a Topic Alias, then alias alone: resolved by the
    broker [MQTT-3.3.2-12]."""
    async with _aio(broker, f"{uniq}-sub") as sub, _aio(broker, f"{uniq}-pub") as pub:
        await sub.subscribe(f"{uniq}/t", qos=1)
        await pub.publish(f"{uniq}/t", b"1", qos=1, properties=_pub_props(TopicAlias=1))
        await pub.publish("", b"2", qos=1, properties=_pub_props(TopicAlias=1))
        got = [await _next(sub) for _ in range(2)]
        assert [(m.topic.value, m.payload) for m in got] == [
            (f"{uniq}/t", b"1"),
            (f"{uniq}/t", b"2"),
        ]


@pytest.mark.asyncio
async def test_aiomqtt_request_response_and_retained_expiry(broker, uniq: str) -> None:
    """aiomqtt v5 request/response (Response Topic, Correlation Data, Content Type,
    user properties forwarded [MQTT-3.3.2-15..20]) and a retained message whose Message
    Expiry passes is not sent to later subscribers."""
    async with _aio(broker, f"{uniq}-req") as req, _aio(broker, f"{uniq}-svc") as svc:
        await req.subscribe(f"{uniq}/reply", qos=1)
        await svc.subscribe(f"{uniq}/svc", qos=1)
        users = [("k", "v1"), ("k", "v0")]
        await req.publish(
            f"{uniq}/svc",
            b"q",
            qos=1,
            properties=_pub_props(
                ResponseTopic=f"{uniq}/reply",
                CorrelationData=b"id-1",
                ContentType="text/x",
                UserProperty=users,
            ),
        )
        r = await _next(svc)
        assert (
            _prop(r, "ResponseTopic"),
            _prop(r, "CorrelationData"),
            _prop(r, "ContentType"),
            _prop(r, "UserProperty"),
        ) == (f"{uniq}/reply", b"id-1", "text/x", users)
        await svc.publish(
            _prop(r, "ResponseTopic"),
            b"a",
            qos=1,
            properties=_pub_props(CorrelationData=_prop(r, "CorrelationData")),
        )
        answer = await _next(req)
        assert (answer.payload, _prop(answer, "CorrelationData")) == (b"a", b"id-1")

        await svc.publish(
            f"{uniq}/ret",
            b"soon gone",
            qos=1,
            retain=True,
            properties=_pub_props(MessageExpiryInterval=1),
        )
    await asyncio.sleep(1.3)
    async with _aio(broker, f"{uniq}-late") as late:
        await late.subscribe(f"{uniq}/ret", qos=1)
        await _nothing(late, 0.4)
