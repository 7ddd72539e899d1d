"""The sender's gate of its first live QoS 1 part on a node (issue 14, i14-gate;
docs/cluster.md, "A sender's first live part seen on a node").

A receiving node whose first live part of a sender is seq k holds the sender's live
parts until its stream reader has passed the writes below k; when neither the write
just below nor k's own stream copy has been routed, it asks its consumer's position.
That position covers only what is stored when asked, so the sender sends its first
live part to a node only once every write below it is *resolved* (acknowledged by the
stream, or given up): [MQTT-4.6.0-5] "the Server MUST send PUBLISH packets to
consumers (for the same Topic and QoS) in the order that they were received from any
given Client" (MQTT 5.0 §4.6, as the protocol's ordering rule is applied to the
cluster's copies).

Driven deterministically here: a real ``ClusterNode`` (and its ``QosStream``) of a
real engine, without NATS: the stream's ``publish`` is a stand-in whose acks the test
gives, one write at a time, and ``_forward`` is called as ``after_turn`` calls it. The
live parts go to the node's command queue, read back with ``wire.decode_batch``.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from iotbroker.cluster import wire
from iotbroker.cluster.node import ClusterNode
from iotbroker.cluster.wills import NODE_TTL
from iotbroker.codec.packets import Properties
from iotbroker.config import parse_config
from iotbroker.engine.engine import Engine
from iotbroker.message import Message
from iotbroker.metrics import Metrics
from iotbroker.server.auth_service import AuthService
from iotbroker.storage.memory import MemoryStore

B = "b_00000001"  # another node process (its token)
C = "c_00000002"
D = "d_00000003"


class _Stream:
    """A stand-in for JetStream's ``publish``: each write waits until the test acks
    it (by its Nats-Msg-Id's number) or fails it."""

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[int]] = {}
        self.stored = 0

    async def publish(self, subject: str, payload: bytes, timeout: float, stream: str,
                      headers: dict[str, str]) -> Any:
        number = int(headers["Nats-Msg-Id"].rpartition(":")[2])
        future = self.waiting[number] = asyncio.get_running_loop().create_future()
        await future
        self.stored += 1
        return SimpleNamespace(seq=self.stored)

    async def ack(self, number: int) -> None:
        for _ in range(3):  # the write's task reaches publish
            if number in self.waiting:
                break
            await asyncio.sleep(0)
        self.waiting.pop(number).set_result(number)
        for _ in range(3):  # the write's task finishes
            await asyncio.sleep(0)


def _node() -> ClusterNode:
    config = parse_config({"storage": {"backend": "memory"},
                           "cluster": {"node_name": "a"}}, "test")
    assert config.cluster is not None
    metrics = Metrics()
    engine = Engine(config, MemoryStore(), AuthService(config.auth, metrics), metrics)
    node = ClusterNode(config.cluster, engine, lambda: None)
    node.nc = SimpleNamespace()  # type: ignore[assignment]  # (live: commands queue up)
    node.connected = True
    return node


def _heard(node: ClusterNode, *tokens: str, ago: float = 0.0) -> None:
    for token in tokens:
        node.wills.figures[token] = (time.monotonic() - ago, b"{}")


def _turn(node: ClusterNode, number: int, topic: str = "gate/t") -> dict[str, list[int]]:
    """One turn with one QoS 1 message: its live parts' seqs per destination."""
    message = Message(topic, b"%d" % number, 1, False, Properties(), 1000.0 + number)
    node._forward([message], [])
    sent: dict[str, list[int]] = {}
    while node._commands:
        _, subject, payload, _ = node._commands.popleft()
        sender, parts = wire.decode_batch(payload, {})
        assert sender == node.sender
        sent.setdefault(subject.rpartition(".")[2], []).extend(seq for seq, _, _ in parts)
    node._pending_pubs = 0
    return sent


def test_mqtt_4_6_0_5_a_first_live_part_goes_to_a_node_only_once_every_write_below_is_resolved(
        ) -> None:
    """Write 1 is in flight when node b appears: runs 2 and 3 reach b through the stream
    only (no live part), also while 3 is acked before 2; once 1 and 2 are acked, run 4
    is b's first live part (writes up to 3 resolved), and later runs go live to b
    whether or not the writes below them are (the receiver's gap logic covers those).
    A node that joins later (c) is gated on its own; b is gated again once it was out
    of the liveness index, and every node after NATS was lost. A write given up (not
    joined to the stream) is resolved at once. A run live with seq 0 is not gated."""

    async def scenario() -> None:
        node = _node()
        qos = node.qos
        stream = _Stream()
        qos.js = stream  # type: ignore[assignment]
        _heard(node, node.token)
        assert _turn(node, 1) == {}  # nobody else yet
        assert qos.resolved_floor == 0
        _heard(node, B)
        assert _turn(node, 2) == {}  # write 1 unresolved: b gets 2 from the stream only
        await stream.ack(1)
        assert qos.resolved_floor == 1
        assert _turn(node, 3) == {}  # write 2 unresolved
        await stream.ack(3)
        assert qos.resolved_floor == 1  # 3 resolved before 2: the floor waits for 2
        await stream.ack(2)
        assert qos.resolved_floor == 3
        assert _turn(node, 4) == {B: [4]}  # every write below 4 resolved: b's first
        assert _turn(node, 5) == {B: [5]}  # 4 in flight: b has started, live as before
        _heard(node, C)
        assert _turn(node, 6) == {B: [6]}  # c is gated: 4 and 5 unresolved
        for number in (4, 5, 6):
            await stream.ack(number)
        assert _turn(node, 7) == {B: [7], C: [7]}

        _heard(node, B, ago=NODE_TTL + 1)  # b silent: out of the index, gated again
        assert _turn(node, 8) == {C: [8]}
        _heard(node, B)
        assert _turn(node, 9) == {C: [9]}  # 7 and 8 in flight
        for number in (7, 8, 9):
            await stream.ack(number)
        assert _turn(node, 10) == {B: [10], C: [10]}

        await node._disconnected()  # NATS lost: every node gated again
        assert node._degrade_timer is not None
        node._degrade_timer.cancel()
        node._degrade_timer = None
        assert not node._live_started
        assert _turn(node, 11) == {}  # 10 in flight
        await stream.ack(10)
        await stream.ack(11)
        qos.js = None  # not joined to the stream: the write is given up at once
        assert _turn(node, 12) == {B: [12], C: [12]}
        assert qos.resolved_floor == 12

        # A run that goes live with seq 0 (here: a subject NATS would refuse, live
        # only) is neither gated nor opens the gate, as before.
        _heard(node, D)
        assert _turn(node, 13, "gate/" + "x" * 4100) == {B: [0], C: [0], D: [0]}
        assert D not in node._live_started and node.refused == 1
        await qos.stop()

    asyncio.run(scenario())
