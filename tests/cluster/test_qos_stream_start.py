"""Where a node's QoS stream reader starts routing (docs/cluster.md, "Each node reads
the stream with one durable consumer of its own"; issue 14).

The reader routes the stream in sequence order and takes a sequence below the next one
it expects for a redelivery of something already routed. So its first expected
sequence must be where its consumer starts, not the first sequence that happens to be
delivered to it: if the first delivery is lost in transit (a nats-server failover, a
route that has not seen the subscription's interest yet) and the stream's redelivery of
it comes after the next message, taking the next one as the start would drop the
redelivery as a duplicate, and an acknowledged QoS 1/2 message would never reach this
node's subscribers.

nats-server sets a new consumer's ack floor to the sequence before its start, also
when that is 0 (a stream that was empty), so the reader starts at the ack floor + 1.

Real nats-server (JetStream) and nats-py; the engine without sockets
(``tests/engine``), whose sessions get what the reader routes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from iotbroker.cluster import wire
from iotbroker.cluster.qos_stream import ACK_WAIT, QosStream
from iotbroker.cluster.subjects import topic_to_subject
from iotbroker.codec.packets import Properties, Publish, SubAck, Subscribe, Subscription
from iotbroker.message import Message
from tests.engine.test_engine import World
from tests.helpers.nats_cluster import NatsCluster


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[str]:
    """One nats-server with JetStream; its URL."""
    cluster = NatsCluster(tmp_path, size=1).start()
    yield cluster.urls[0]
    cluster.stop()


def _stream_payload(topic: str, payload: bytes, seq: int) -> bytes:
    """A QoS 1 message as another node (sender ``b/1``) writes it to the stream."""
    message = Message(topic, payload, 1, False, Properties(), time.time())
    return wire.encode(b"b/1", seq, [wire.record(message)])


async def _first_delivery_lost(url: str) -> tuple[list[bytes], QosStream]:
    world = World.make()
    sub, _ = world.connect("sub", properties=Properties(session_expiry_interval=3600))
    world.send(sub, Subscribe(1, [Subscription("qs/#", 1)]))
    assert world.received(sub) == [SubAck(1, [1])]
    reader = QosStream(world.engine, b"a/1", "a", "tq", replicas=1, dedup=wire.Dedup(),
                       schedule_flush=lambda: None)
    nc = await nats.connect(url)
    thief_nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await reader._ensure_stream(js)
        # The node's durable consumer as the reader makes it, delivering to a subject
        # that another connection reads first: the first delivery goes there (lost for
        # the node) and is not acknowledged.
        deliver = nc.new_inbox()
        thief_got: asyncio.Queue[int] = asyncio.Queue()

        async def thief(msg: nats.aio.msg.Msg) -> None:
            await thief_got.put(msg.metadata.sequence.stream)

        thief_sub = await thief_nc.subscribe(deliver, cb=thief)
        await thief_nc.flush()
        await js.add_consumer(reader.stream, ConsumerConfig(
            durable_name=reader.durable, deliver_subject=deliver,
            filter_subject=f"{reader.subject_prefix}.>",
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.fromtimestamp(reader.started_at, UTC),
            ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT))
        subject = topic_to_subject(reader.subject_prefix, "qs/x")
        await js.publish(subject, _stream_payload("qs/x", b"first", 1), stream=reader.stream)
        assert await asyncio.wait_for(thief_got.get(), 10) == 1
        await thief_sub.unsubscribe()
        await thief_nc.flush()
        # The node binds to its consumer; the next message is delivered to it first,
        # the lost one only when the stream redelivers it (after ACK_WAIT).
        await asyncio.sleep(0.2)
        await reader.run(js)
        await js.publish(subject, _stream_payload("qs/x", b"second", 2), stream=reader.stream)
        payloads: list[bytes] = []
        deadline = time.monotonic() + ACK_WAIT * 3
        while len(payloads) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            for packet in world.received(sub):
                assert isinstance(packet, Publish), packet
                payloads.append(packet.payload)
        await asyncio.sleep(0.3)  # nothing more comes
        payloads += [p.payload for p in world.received(sub) if isinstance(p, Publish)]
        await reader.stop()
        return payloads, reader
    finally:
        await thief_nc.close()
        await nc.close()


def test_mqtt_4_6_0_5_a_lost_first_delivery_is_routed_when_redelivered(
        nats_server: str, caplog: pytest.LogCaptureFixture) -> None:
    """The node's first delivery (stream sequence 1) is lost; sequence 2 reaches it
    first: the reader holds 2 until the stream redelivers 1, then routes both, in
    order [MQTT-4.6.0-5] — none taken for a duplicate, none lost."""
    caplog.set_level(logging.INFO, logger="iotbroker.cluster")
    payloads, reader = asyncio.run(_first_delivery_lost(nats_server))
    assert payloads == [b"first", b"second"], (payloads, reader.duplicates)
    held = [r.getMessage() for r in caplog.records if "came before" in r.getMessage()]
    assert held and "sequence 2 came before 1" in held[0], held  # the case happened
    assert reader.duplicates == 0
    assert reader.received == 2
