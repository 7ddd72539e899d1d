"""A node that has just started gets a topic's QoS 1 messages in order (issue 14;
docs/cluster.md, "QoS 1/2 messages" and "What is guaranteed"), MQTT 5.0 §4.6
[MQTT-4.6.0-5] / MQTT 3.1.1 [MQTT-4.6.0-6].

Another node's QoS 1 messages reach a node through two copies: live (core NATS, sent
to every node process whose heartbeat the sender has seen) and the QoS stream (read
by the node's durable consumer, in stream order). Messages published while the node
was down, or before the sender saw the restarted node's new heartbeat, come through
the stream only, and the node's stream reader may still be behind them (a backlog to
route, each stream message committed to the store before it is acknowledged) when
the sender's first live copies arrive: those must not be routed ahead of them.

Real processes: three nats-servers, two iotbroker nodes, a raw MQTT 5 publisher and a
persistent subscriber.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from iotbroker.cluster import wire
from iotbroker.cluster.node import ClusterNode
from iotbroker.codec.packets import PubAck, Publish
from tests.cluster.conftest import connect_retrying_busy, log_tails, wait_for_log
from tests.cluster.test_live_routing import Node
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.rawclient import Closed, RawClient

TOPIC = "ord/t"


def _joined(*nodes: BrokerProcess) -> None:
    """The node's session bucket and its QoS stream consumer are there."""
    for node in nodes:
        wait_for_log(node, "session records bucket", timeout=30)
        wait_for_log(node, "joined (consumer", timeout=30)


class _Publisher(threading.Thread):
    """QoS 1 on TOPIC, one at a time (each its own turn, so its own stream message),
    numbered payloads; keeps the ones acknowledged (PUBACK: the stream has it)."""

    def __init__(self, node: BrokerProcess) -> None:
        super().__init__(daemon=True)
        self.client = RawClient(node.host, node.port, version=5, timeout=30)
        assert self.client.connect("ord-pub", clean_start=True).reason_code == 0
        self.acked: list[int] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        i = 0
        try:
            while not self.stopping.is_set():
                ack = self.client.publish(TOPIC, b"%06d" % i, qos=1)
                assert isinstance(ack, PubAck) and ack.reason_code < 0x80, ack
                self.acked.append(i)
                i += 1
                time.sleep(0.002)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stop(self) -> list[int]:
        self.stopping.set()
        self.join(30)
        self.client.close()
        assert self.error is None, self.error
        return self.acked


def _receive(client: RawClient, last: int, within: float = 40.0) -> list[int]:
    """The numbers of the PUBLISHes on TOPIC, acknowledged, in arrival order, until
    ``last`` arrived and nothing more came for 1 s."""
    got: list[int] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            packet = client.recv(timeout=1.0 if last in got else 10.0)
        except (TimeoutError, Closed, OSError):
            break
        if isinstance(packet, Publish):
            if packet.qos:
                client.send(PubAck(packet.packet_id or 0))
            if packet.topic == TOPIC:
                got.append(int(packet.payload))
    return got


def _out_of_order(got: list[int]) -> list[tuple[int, int]]:
    """(position, number) of each message that arrived after a later one of the
    publisher's (a QoS 1 duplicate of one already received is allowed:
    at least once, [MQTT-4.3.2-1]; its DUP copy is not an ordering error)."""
    seen: set[int] = set()
    high = -1
    late = []
    for pos, n in enumerate(got):
        if n in seen:
            continue
        seen.add(n)
        if n < high:
            late.append((pos, n))
        high = max(high, n)
    return late


def test_mqtt_4_6_0_5_a_restarted_node_gets_qos1_in_order_while_its_stream_reader_catches_up(
        make_node: Node) -> None:
    """A persistent QoS 1 subscriber on node b (RocksDB); a publisher on node a sends
    QoS 1 on one topic without pause; b is killed with -9 and started again (a new
    process: a new sender id for the others, a new LiveOrder for a's messages) while
    a keeps publishing. What a published while b was away comes to b through its
    durable consumer's backlog; what a publishes once it has seen b's new heartbeat
    also comes live. The subscriber, back on b, must get every acknowledged message
    and in the order published [MQTT-4.6.0-5]: on main the live copies of a's first
    messages after b's restart were routed at once, ahead of the backlog the stream
    reader had not routed yet."""
    b = make_node("b", servers=[1], storage="rocksdb")
    a = make_node("a", servers=[0])
    _joined(a, b)
    sub, _ = connect_retrying_busy(b, "ord-sub", True, a)
    sub.subscribe("ord/#", qos=1)
    sub.disconnect()  # the session stays on b (expiry 3600 s), offline: messages queue
    pub = _Publisher(a)
    pub.start()
    try:
        time.sleep(0.5)
        b.kill()
        time.sleep(2.0)  # a backlog in b's durable consumer
        b.start()
        _joined(b)
        time.sleep(1.5)  # a sees b's new heartbeat: its messages go live to b too
    finally:
        acked = pub.stop()
    assert len(acked) > 100, acked[-1:]
    sub, present = connect_retrying_busy(b, "ord-sub", False, a)
    assert present
    got = _receive(sub, acked[-1])
    sub.close()
    missing = sorted(set(acked) - set(got))
    late = _out_of_order(got)
    detail = (f"{len(acked)} acked, {len(got)} received; missing {missing[:20]}; "
              f"late (position, number) {late[:20]}\n" + log_tails(a, b, lines=60))
    assert not missing, detail
    assert not late, detail


def test_the_position_a_held_sender_waits_for_is_the_consumers_last_message_to_deliver(
        nats_cluster: NatsCluster) -> None:
    """The fallback of a sender's held first live parts (its writes below them never
    reached the stream): ``ClusterNode._stream_target`` asks the node's durable
    consumer (a real JetStream one here, read by a reader that acks late) for the last
    stream message it has to deliver now: 0 when everything delivered was acked and
    nothing is pending; else the stream sequence of the last message, whether
    delivered and not acked yet or not delivered yet (``max_ack_pending`` 1)."""

    async def scenario() -> list[int]:
        nc = await nats.connect(nats_cluster.urls[0])
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="lo_qos", subjects=["lo.q.>"], num_replicas=1))
        got: list[Any] = []

        async def reader(msg: Any) -> None:  # acks later, below
            got.append(msg)

        await js.subscribe("lo.q.>", durable="lo_qos_b", stream="lo_qos", manual_ack=True,
                           cb=reader,
                           config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                                 max_ack_pending=1))
        qos = SimpleNamespace(js_reader=js, js=js, stream="lo_qos", durable="lo_qos_b")
        node: Any = SimpleNamespace(qos=qos)
        targets = []

        async def target() -> int:
            order = wire.LiveOrder(wire.UNSYNCED)
            await ClusterNode._stream_target(node, order)
            return order.target

        targets.append(await target())  # nothing written yet
        for i in range(3):
            await js.publish(f"lo.q.t{i}", b"x", stream="lo_qos")
        while not got:
            await asyncio.sleep(0.01)
        targets.append(await target())  # 1 delivered (not acked), 2 pending: 3
        while len(got) < 3:
            await got[-1].ack()
            n = len(got)
            while len(got) == n:
                await asyncio.sleep(0.01)
        targets.append(await target())  # all delivered, the last one not acked
        await got[-1].ack()
        await asyncio.sleep(0.2)
        targets.append(await target())  # all acked: nothing left
        qos.js = None
        targets.append(await target())  # not joined: not known
        await js.delete_stream("lo_qos")
        await nc.close()
        return targets

    assert asyncio.run(scenario()) == [0, 3, 3, 0, -1]
