"""When the turn's flush runs (server/turn.py ``Turn.handle_one``, ``INLINE_GAP``; issue
19, i19-lat4): a one-packet read in a quiet loop is flushed at the end of its own
``data_received``, without ``loop.call_soon``; a read that comes less than
``INLINE_GAP`` after the last read with output (a busy loop) leaves the flush to the end
of the turn, so that the turn's reads share it. Either way the subscriber gets the
forward and the publisher its PUBACK (MQTT 3.1.1 §4.3.2), the forward first.

The real broker in-process (its Broker class on a loopback port, memory store), real
sockets, raw MQTT 3.1.1 clients written with the codec."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.packets import (
    ConnAck,
    Connect,
    Packet,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
)
from iotbroker.server.broker import Broker
from iotbroker.server.turn import INLINE_GAP
from tests.helpers.inproc_broker import memory_broker

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def broker() -> AsyncIterator[Broker]:
    async for b in memory_broker():
        yield b


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.framer = reader, writer, Framer(1 << 20)
        self.got: list[Packet] = []

    async def next(self) -> Packet:
        async with asyncio.timeout(5):
            while not self.got:
                data = await self.reader.read(65536)
                assert data, "the broker closed the connection"
                self.got += [decode_packet(first, body, 4)
                             for first, body in self.framer.feed(data)]
        return self.got.pop(0)


async def _connect(broker: Broker, client_id: str) -> _Client:
    host, port = broker.bound[0][:2]
    client = _Client(*await asyncio.open_connection(host, port))
    client.writer.write(encode_packet(Connect(client_id=client_id, protocol_version=4), 4))
    ack = await client.next()
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    return client


async def _pair(broker: Broker) -> tuple[_Client, _Client]:
    sub = await _connect(broker, "fa-sub")
    sub.writer.write(encode_packet(Subscribe(1, [Subscription("fa/#", 1)]), 4))
    assert isinstance(await sub.next(), SubAck)
    return sub, await _connect(broker, "fa-pub")


def _spy_call_soon(broker: Broker) -> list[object]:
    """Record what the turn schedules with ``loop.call_soon`` (and still schedule it)."""
    turn = broker.turn
    calls: list[object] = []
    real: Callable[..., object] = turn._call_soon

    def call_soon(callback: object, *args: object, **kwargs: object) -> object:
        calls.append(callback)
        return real(callback, *args, **kwargs)

    turn._call_soon = call_soon
    return calls


async def _publish_and_check(sub: _Client, pub: _Client, packet_id: int) -> None:
    pub.writer.write(encode_packet(Publish("fa/t", b"m", 1, packet_id=packet_id), 4))
    forward = await sub.next()
    assert isinstance(forward, Publish) and forward.payload == b"m" and forward.qos == 1
    ack = await pub.next()
    assert isinstance(ack, PubAck) and ack.packet_id == packet_id
    sub.writer.write(encode_packet(PubAck(forward.packet_id or 0), 4))


async def test_a_quiet_loop_flushes_a_one_packet_read_at_once(broker: Broker) -> None:
    """The last read with output was long ago: the PUBLISH's read writes the forward
    and the PUBACK itself; nothing is scheduled with ``call_soon``."""
    sub, pub = await _pair(broker)
    calls = _spy_call_soon(broker)
    for packet_id in (1, 2, 3):
        broker.turn.last_output_read = 0.0  # the loop has been quiet
        await _publish_and_check(sub, pub, packet_id)
    await asyncio.sleep(0.05)  # the subscriber's PUBACKs: nothing to flush
    assert calls == []
    sub.writer.close()
    pub.writer.close()


async def test_a_read_right_after_another_leaves_the_flush_to_the_turn(
    broker: Broker,
) -> None:
    """A read with output came less than ``INLINE_GAP`` ago (a busy loop): the flush is
    scheduled once with ``call_soon``, and it writes the forward and the PUBACK."""
    sub, pub = await _pair(broker)
    calls = _spy_call_soon(broker)
    # (far in the future: every read of this test is "right after" it, whatever the
    # machine's speed; the wall clock is what the turn compares)
    broker.turn.last_output_read = time.time() + 3600
    await _publish_and_check(sub, pub, 1)
    assert calls == [broker.turn._flush]
    assert INLINE_GAP > 0
    sub.writer.close()
    pub.writer.close()
