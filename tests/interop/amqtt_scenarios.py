"""amqtt client scenarios, run by ``test_amqtt_client.py`` inside ``.venv-amqtt``.

amqtt pins its own dependency versions, so it lives in a venv of its own and this
script is its only user: ``python amqtt_scenarios.py SCENARIO HOST PORT PREFIX``.
It prints one JSON object (what the clients saw) on its last stdout line; the test
makes the assertions. Every wait is bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from amqtt.client import MQTTClient

WAIT = 5.0


def make_client(client_id: str) -> MQTTClient:
    return MQTTClient(
        client_id=client_id,
        config={"auto_reconnect": False, "keep_alive": 30, "plugins": {}},
    )


async def connect(url: str, client_id: str, clean: bool = True) -> MQTTClient:
    client = make_client(client_id)
    async with asyncio.timeout(WAIT):
        code = await client.connect(url, cleansession=clean)
    assert code == 0, f"CONNACK {code}"
    return client


async def receive(client: MQTTClient, n: int) -> list[dict[str, Any]]:
    got = []
    async with asyncio.timeout(WAIT):
        for _ in range(n):
            msg = await client.deliver_message()
            assert msg is not None
            got.append(
                {
                    "topic": msg.topic,
                    "payload": bytes(msg.data).decode(),
                    "qos": msg.qos,
                    "retain": bool(msg.publish_packet.retain_flag) if msg.publish_packet else None,
                }
            )
    return got


async def pub_sub(url: str, prefix: str) -> dict[str, Any]:
    sub = await connect(url, f"{prefix}-sub")
    codes = await sub.subscribe([(f"{prefix}/#", 2)])
    pub = await connect(url, f"{prefix}-pub")
    for qos in (0, 1, 2):
        async with asyncio.timeout(WAIT):
            await pub.publish(f"{prefix}/q{qos}", f"qos {qos}".encode(), qos=qos)
    got = await receive(sub, 3)
    await pub.disconnect()
    await sub.disconnect()
    return {"suback": codes, "messages": got}


async def suback_codes(url: str, prefix: str) -> dict[str, Any]:
    sub = await connect(url, f"{prefix}-sub")
    codes = await sub.subscribe([(f"{prefix}/a", 0), (f"{prefix}/b", 1), (f"{prefix}/c", 2)])
    await sub.disconnect()
    return {"suback": codes}


async def retained(url: str, prefix: str) -> dict[str, Any]:
    pub = await connect(url, f"{prefix}-pub")
    await pub.publish(f"{prefix}/r", b"kept", qos=1, retain=True)
    late = await connect(url, f"{prefix}-late")
    await late.subscribe([(f"{prefix}/r", 1)])
    first = await receive(late, 1)
    await late.disconnect()
    await pub.publish(f"{prefix}/r", b"", qos=1, retain=True)
    after = await connect(url, f"{prefix}-after")
    await after.subscribe([(f"{prefix}/r", 1), (f"{prefix}/marker", 1)])
    await pub.publish(f"{prefix}/marker", b"m", qos=1)
    second = await receive(after, 1)
    await after.disconnect()
    await pub.disconnect()
    return {"first": first, "after_clear": second}


async def persistent(url: str, prefix: str) -> dict[str, Any]:
    sub = await connect(url, f"{prefix}-sub", clean=False)
    await sub.subscribe([(f"{prefix}/q", 1)])
    await sub.disconnect()
    pub = await connect(url, f"{prefix}-pub")
    for i in range(3):
        await pub.publish(f"{prefix}/q", f"offline-{i}".encode(), qos=1)
    await pub.disconnect()
    back = await connect(url, f"{prefix}-sub", clean=False)
    got = await receive(back, 3)
    await back.disconnect()
    return {"messages": got}


async def publish_only(url: str, prefix: str) -> dict[str, Any]:
    """amqtt publishes; the test's paho client is the subscriber."""
    pub = await connect(url, f"{prefix}-amqtt-pub")
    for qos in (0, 1, 2):
        await pub.publish(f"{prefix}/from-amqtt", f"amqtt {qos}".encode(), qos=qos)
    await pub.disconnect()
    return {}


async def receive_from_others(url: str, prefix: str) -> dict[str, Any]:
    """amqtt subscribes, says ``ready`` on stdout, then takes 3 messages from the test."""
    sub = await connect(url, f"{prefix}-amqtt-sub")
    codes = await sub.subscribe([(f"{prefix}/to-amqtt", 2)])
    print("ready", flush=True)
    got = await receive(sub, 3)
    await sub.disconnect()
    return {"suback": codes, "messages": got}


SCENARIOS: dict[str, Callable[[str, str], Awaitable[dict[str, Any]]]] = {
    "pub_sub": pub_sub,
    "suback_codes": suback_codes,
    "retained": retained,
    "persistent": persistent,
    "publish_only": publish_only,
    "receive_from_others": receive_from_others,
}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    scenario, host, port, prefix = sys.argv[1:5]
    url = f"mqtt://{host}:{port}/"
    result = asyncio.run(asyncio.wait_for(SCENARIOS[scenario](url, prefix), 20))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
