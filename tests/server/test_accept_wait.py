"""The engine's wait before accepting a CONNECT (engine/connect.py
``wait_before_accept``; the cluster room sets it: docs/cluster.md "Sessions move"),
applied by the server as I/O: the CONNACK, and every packet the client sent after its
CONNECT, wait until the room's awaitable is done [MQTT-3.2.2-2] (the Session Present
flag must be true cluster-wide); a client that goes away meanwhile is simply dropped.

The real broker in-process (its Broker class on a loopback port, memory store), real
sockets, a raw MQTT 5.0 client written with the codec."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.packets import ConnAck, Connect, Packet, SubAck, Subscribe, Subscription
from iotbroker.server.broker import Broker
from tests.helpers.inproc_broker import memory_broker

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def broker() -> AsyncIterator[Broker]:
    async for b in memory_broker():
        yield b


async def _packets(reader: asyncio.StreamReader, framer: Framer, count: int,
                   timeout: float) -> list[Packet]:
    got: list[Packet] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            data = await reader.read(65536)
            if not data:
                break
            got += [decode_packet(first, body, 5) for first, body in framer.feed(data)]
    return got


async def test_connack_and_what_follows_the_connect_wait_for_the_room(broker: Broker) -> None:
    """Clean Start 0: the hook is asked with (client id, False); nothing is answered
    until its future is done; then CONNACK, then the SUBACK of the SUBSCRIBE that was
    pipelined behind the CONNECT, in order. Clean Start 1 (hook answers None): at once."""
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asked: list[tuple[str, bool]] = []

    def hook(client_id: str, clean_start: bool) -> asyncio.Future[None] | None:
        asked.append((client_id, clean_start))
        return None if clean_start else gate

    broker.engine.accept_wait = hook
    host, port = broker.bound[0][:2]
    reader, writer = await asyncio.open_connection(host, port)
    framer = Framer(1 << 20)
    writer.write(encode_packet(Connect(client_id="waits", protocol_version=5,
                                       clean_start=False), 5)
                 + encode_packet(Subscribe(1, [Subscription("w/#", 1)]), 5))
    with pytest.raises(TimeoutError):
        await _packets(reader, framer, 1, timeout=0.3)
    assert asked == [("waits", False)]
    gate.set_result(None)
    ack, sub = await _packets(reader, framer, 2, timeout=5)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    assert isinstance(sub, SubAck) and sub.packet_id == 1
    writer.close()

    reader, writer = await asyncio.open_connection(host, port)
    framer = Framer(1 << 20)
    writer.write(encode_packet(Connect(client_id="now", protocol_version=5,
                                       clean_start=True), 5))
    (ack,) = await _packets(reader, framer, 1, timeout=5)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    assert asked[-1] == ("now", True)
    writer.close()


async def test_a_client_gone_while_its_connect_waits_is_not_accepted(broker: Broker) -> None:
    """The socket closes while the room's wait runs: when it is done, nothing is
    accepted for that client id (no session attached, no connection counted)."""
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    broker.engine.accept_wait = lambda client_id, clean_start: gate
    host, port = broker.bound[0][:2]
    _reader, writer = await asyncio.open_connection(host, port)
    writer.write(encode_packet(Connect(client_id="gone", protocol_version=5,
                                       clean_start=False), 5))
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await writer.wait_closed()
    for _ in range(50):  # the broker sees the close
        if not broker.connections:
            break
        await asyncio.sleep(0.02)
    gate.set_result(None)
    await asyncio.sleep(0.1)
    assert "gone" not in broker.engine.clients
    assert broker.metrics.clients_connected == 0


async def test_a_wait_that_ends_with_a_reason_refuses_with_server_busy(
        broker: Broker) -> None:
    """The room could not make the session ready in time: CONNACK 0x89 Server busy
    (MQTT 5.0 §3.2.2.2, "try again later") and the connection closes [MQTT-3.2.2-5];
    nothing is accepted for the client id."""
    gate: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    broker.engine.accept_wait = lambda client_id, clean_start: gate
    host, port = broker.bound[0][:2]
    reader, writer = await asyncio.open_connection(host, port)
    framer = Framer(1 << 20)
    writer.write(encode_packet(Connect(client_id="busy", protocol_version=5,
                                       clean_start=False), 5))
    await writer.drain()
    await asyncio.sleep(0.05)
    gate.set_result("session not ready")
    (ack,) = await _packets(reader, framer, 1, timeout=5)
    assert isinstance(ack, ConnAck) and ack.reason_code == 0x89
    assert await asyncio.wait_for(reader.read(1), 5) == b""  # closed
    assert "busy" not in broker.engine.clients
    writer.close()
