"""Interop: the asyncio client aiomqtt (2.x) against the real broker.

Tests are coroutines run by pytest-asyncio; every wait is bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

pytestmark = pytest.mark.asyncio

WAIT = 5.0

VERSIONS = {"v311": aiomqtt.ProtocolVersion.V311, "v5": aiomqtt.ProtocolVersion.V5}


@pytest.fixture(params=list(VERSIONS), ids=list(VERSIONS))
def version(request: pytest.FixtureRequest) -> aiomqtt.ProtocolVersion:
    return VERSIONS[request.param]


@pytest.fixture
def client(broker) -> Callable[..., Any]:
    """``async with client(id, version, ...)``: a connected aiomqtt client."""

    @asynccontextmanager
    async def factory(
        identifier: str,
        version: aiomqtt.ProtocolVersion,
        persistent: bool = False,
        clean: bool = True,
    ) -> AsyncIterator[aiomqtt.Client]:
        kw: dict[str, Any] = {}
        if version == aiomqtt.ProtocolVersion.V5:
            kw["clean_start"] = clean
            if persistent:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 300
                kw["properties"] = props
        else:
            kw["clean_session"] = not persistent  # 3.1.1: Clean Session = 0 is the persistence
        c = aiomqtt.Client(
            broker.host,
            broker.port,
            identifier=identifier,
            protocol=version,
            timeout=WAIT,
            **kw,
        )
        async with asyncio.timeout(WAIT):
            await c.__aenter__()
        try:
            yield c
        finally:
            await c.__aexit__(None, None, None)

    return factory


async def next_message(c: aiomqtt.Client, timeout: float = WAIT) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        return await anext(c.messages)


async def messages_until(c: aiomqtt.Client, marker: str) -> list[aiomqtt.Message]:
    """Messages received before the first one on the topic ``marker``."""
    got: list[aiomqtt.Message] = []
    while True:
        msg = await next_message(c)
        if msg.topic.value == marker:
            return got
        got.append(msg)


def codes(result: Any) -> list[int]:
    return [int(getattr(rc, "value", rc)) for rc in result]


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_publish_subscribe_each_qos(client, uniq: str, version, qos: int) -> None:
    async with client(f"{uniq}-sub", version) as sub, client(f"{uniq}-pub", version) as pub:
        assert codes(await sub.subscribe(f"{uniq}/t", qos=2)) == [2]
        await pub.publish(f"{uniq}/t", f"q{qos}".encode(), qos=qos)
        msg = await next_message(sub)
        assert (msg.topic.value, msg.payload, msg.qos, msg.retain) == (
            f"{uniq}/t",
            f"q{qos}".encode(),
            qos,
            False,
        )


async def test_concurrent_publishers_keep_their_order(client, uniq: str, version) -> None:
    """Three publishers at once, QoS 1 and 2: every message once, each publisher's in order
    ([MQTT-4.6.0-5])."""
    n = 30
    async with client(f"{uniq}-sub", version) as sub:
        await sub.subscribe(f"{uniq}/#", qos=2)

        async def publisher(k: int) -> None:
            async with client(f"{uniq}-pub{k}", version) as pub:
                for i in range(n):
                    await pub.publish(f"{uniq}/p{k}", f"{k}:{i}".encode(), qos=1 + k % 2)

        async with asyncio.timeout(WAIT * 2):
            await asyncio.gather(*(publisher(k) for k in range(3)))
        got: dict[str, list[int]] = {}
        for _ in range(3 * n):
            msg = await next_message(sub)
            got.setdefault(msg.topic.value, []).append(int(msg.payload.split(b":")[1]))
        assert got == {f"{uniq}/p{k}": list(range(n)) for k in range(3)}


async def test_retained_set_received_cleared(client, uniq: str, version) -> None:
    topic, marker = f"{uniq}/r", f"{uniq}/marker"
    async with client(f"{uniq}-pub", version) as pub:
        await pub.publish(topic, b"kept", qos=1, retain=True)
        async with client(f"{uniq}-late", version) as late:
            await late.subscribe(topic, qos=1)
            msg = await next_message(late)
            assert (msg.topic.value, msg.payload, msg.retain, msg.qos) == (topic, b"kept", True, 1)
        await pub.publish(topic, b"", qos=1, retain=True)
        async with client(f"{uniq}-after", version) as after:
            await after.subscribe(topic, qos=1)
            await after.subscribe(marker, qos=1)
            await pub.publish(marker, b"m", qos=1)
            assert await messages_until(after, marker) == []


async def test_wildcards(client, uniq: str, version) -> None:
    async with client(f"{uniq}-sub", version) as sub, client(f"{uniq}-pub", version) as pub:
        await sub.subscribe(f"{uniq}/+/temp", qos=1)
        await sub.subscribe(f"{uniq}/log/#", qos=1)
        await sub.subscribe(f"{uniq}/end", qos=1)
        for t in ("a/temp", "a/hum", "a/b/temp", "log", "log/x/y", "logs/x"):
            await pub.publish(f"{uniq}/{t}", t.encode(), qos=1)
        await pub.publish(f"{uniq}/end", b"", qos=1)
        got = [m.topic.value for m in await messages_until(sub, f"{uniq}/end")]
        assert got == [f"{uniq}/a/temp", f"{uniq}/log", f"{uniq}/log/x/y"]


async def test_persistent_session_across_reconnect(client, uniq: str, version) -> None:
    cid = f"{uniq}-sub"
    async with client(cid, version, persistent=True, clean=True) as sub:
        await sub.subscribe(f"{uniq}/q", qos=1)
    # 3.1.1 asks for the persistent session with Clean Session = 0 from the start
    async with client(f"{uniq}-pub", version) as pub:
        for i in range(5):
            await pub.publish(f"{uniq}/q", f"offline-{i}".encode(), qos=1)
    async with client(cid, version, persistent=True, clean=False) as back:
        got = [await next_message(back) for _ in range(5)]
        assert [(m.topic.value, m.payload, m.qos) for m in got] == [
            (f"{uniq}/q", f"offline-{i}".encode(), 1) for i in range(5)
        ]


async def test_v5_properties_forwarded(client, uniq: str) -> None:
    v5 = aiomqtt.ProtocolVersion.V5
    async with client(f"{uniq}-sub", v5) as sub, client(f"{uniq}-pub", v5) as pub:
        await sub.subscribe(f"{uniq}/t", qos=1)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("trace", "abc"), ("trace", "def")]
        props.ContentType = "text/csv"
        props.ResponseTopic = f"{uniq}/resp"
        props.CorrelationData = b"\x01\x02"
        await pub.publish(f"{uniq}/t", b"1,2,3", qos=1, properties=props)
        msg = await next_message(sub)
        assert msg.payload == b"1,2,3"
        assert msg.properties.UserProperty == [("trace", "abc"), ("trace", "def")]
        assert msg.properties.ContentType == "text/csv"
        assert msg.properties.ResponseTopic == f"{uniq}/resp"
        assert msg.properties.CorrelationData == b"\x01\x02"


async def test_v5_suback_reason_codes(client, uniq: str) -> None:
    async with client(f"{uniq}-sub", aiomqtt.ProtocolVersion.V5) as sub:
        result = await sub.subscribe([(f"{uniq}/a", 0), (f"{uniq}/b", 1), (f"{uniq}/c", 2)])
        assert codes(result) == [0, 1, 2]
