"""The cross-node path's own Python cost, without sockets or NATS (issue 14).

Builds three real :class:`~iotbroker.server.broker.Broker` objects on one uvloop loop
(memory store, the config of ``e2e.py``), with in-process clients on stand-in
transports (MQTT 3.1.1): a *single* broker with a publisher and a subscriber of
``bench/#``, and two cluster nodes *a* (the publisher) and *b* (the subscriber), whose
:class:`~iotbroker.cluster.node.ClusterNode` rooms are wired to their engines as
``ClusterNode.start`` does but never connect: a's interest index holds b's
``bench/#``, a's queued NATS payloads are handed to b's ``_on_batch`` (and b's name
confirmations to a's ``_on_control``) directly. Per turn: ``--per-turn`` QoS 0
PUBLISHes of 64 B cycling over ``--topics`` topics into the publisher's
``data_received``, then the broker's flush (on b: each batch into ``_on_batch``, then
b's flush). Prints µs of process CPU per message for the single broker, node a
(the publisher's half and the send path) and node b (the receive path and the
subscriber's half), and the ratio single / (a + b): what ``cluster_routing.py``
measures, less NATS (nats-py's publish and parse, the sockets).

    .venv/bin/python benchmarks/cluster_path.py [--topics 1000 --turns 300 --reps 5]
    .venv/bin/python benchmarks/cluster_path.py --profile b   # cProfile of b's side
    perf record -o b.data .venv/bin/python benchmarks/cluster_path.py --reps 1 --only b

Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.inproc import StandInTransport, cancel_timers, frozen_gc, make_broker
from iotbroker import build
from iotbroker.cluster.node import ClusterNode
from iotbroker.cluster.remote import encode_value, interest_key
from iotbroker.codec.encode import encode_packet
from iotbroker.codec.packets import Connect, Publish, Subscribe, Subscription
from iotbroker.server.broker import Broker
from iotbroker.server.transport import ClientProtocol

cpu = time.process_time


class CountingTransport(StandInTransport):
    """A stand-in transport that counts the bytes written too."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.written += len(data)


class FakeMsg:
    """What ``ClusterNode._on_batch`` reads of a nats-py ``Msg``."""

    __slots__ = ("data", "subject")

    def __init__(self, subject: str, data: bytes) -> None:
        self.subject = subject
        self.data = data


def client(broker: Broker, client_id: str) -> tuple[ClientProtocol, CountingTransport]:
    proto = ClientProtocol(broker, "bench")
    transport = CountingTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    proto.data_received(encode_packet(Connect(client_id=client_id, keepalive=60), 4))
    broker.flush()
    return proto, transport


def subscriber(broker: Broker) -> tuple[ClientProtocol, CountingTransport]:
    sub, sub_t = client(broker, "path-sub")
    sub.data_received(encode_packet(Subscribe(1, [Subscription("bench/#", qos=0)]), 4))
    broker.flush()
    return sub, sub_t


def cluster_node(broker: Broker) -> ClusterNode:
    """``broker``'s cluster room, wired to its engine as ``ClusterNode.start`` does,
    "connected" (a stand-in client: nothing is ever sent through it)."""
    assert broker.config.cluster is not None
    node = ClusterNode(broker.config.cluster, broker.engine, broker._after_remote)
    engine = broker.engine
    engine.forwarding = []
    engine.interest_touched = []
    engine.accepted = []
    engine.ended = []
    engine.held_acks = []
    engine.router.share_pick = node._share_pick
    node.nc = object()  # type: ignore[assignment]
    node.connected = True
    broker.cluster = node
    broker.turn.cluster = node  # as Broker.start does (the turn's flush calls the room)
    return node


def drive(coro: Any) -> None:
    """Run a coroutine that never awaits (``_on_batch``) to its end."""
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("the coroutine waited")


def packets_of(topics: int, per_turn: int, turns: int) -> list[bytes]:
    packets = [encode_packet(Publish(topic=f"bench/t{i}", payload=b"x" * 64), 4)
               for i in range(topics)]
    return [b"".join(packets[(t * per_turn + i) % topics] for i in range(per_turn))
            for t in range(turns)]


async def one_run(args: argparse.Namespace, profile: dict[str, cProfile.Profile]
                  ) -> tuple[float, float, float, int]:
    loop = asyncio.get_running_loop()
    turns = packets_of(args.topics, args.per_turn, args.turns)
    messages = args.per_turn * args.turns
    # the single broker
    single = make_broker(loop, "cluster_path.py")
    s_sub, s_sub_t = subscriber(single)
    s_pub, _ = client(single, "path-pub")
    # the two nodes
    nodes = []
    for name in ("a", "b"):
        broker = make_broker(loop, "cluster_path.py", cluster={
            "node_name": name, "nats": ["nats://127.0.0.1:1"], "replicas": 1})
        nodes.append((broker, cluster_node(broker)))
    (a, node_a), (b, node_b) = nodes
    b_sub, b_sub_t = subscriber(b)
    a_pub, _ = client(a, "path-pub")
    node_a.remote.put(interest_key(node_b.token, "bench/#"),
                      encode_value("bench/#", 1), time.monotonic())
    for node in (node_a, node_b):
        node.sessions.after_turn([], [], [], [])
        node._commands.clear()

    def exchange() -> None:
        """a's queued batches to b; b's name confirmations to a."""
        commands = node_a._commands
        while commands:
            _, subject, payload, count = commands.popleft()
            node_a._pending_pubs -= count  # as ClusterNode._run does
            drive(node_b._on_batch(FakeMsg(subject, payload)))  # type: ignore[arg-type]
        back = node_b._commands
        while back:
            _, _, payload, _ = back.popleft()
            node_a._on_control(payload)

    # warm-up: names defined and confirmed, caches filled
    for data in turns[: min(len(turns), 20)]:
        s_pub.data_received(data)
        single.flush()
        a_pub.data_received(data)
        a.flush()
        exchange()
        b.flush()
    s0, b0 = s_sub_t.written, b_sub_t.written

    def timed(name: str, fn: Callable[[bytes], None], inputs: list[bytes]) -> float:
        prof = profile.get(name)
        rounds = args.only_rounds if args.only == name else 1
        with frozen_gc():
            if prof is not None:
                prof.enable()
            t0 = cpu()
            for _ in range(rounds):
                for data in inputs:
                    fn(data)
            took = cpu() - t0
            if prof is not None:
                prof.disable()
        return 1e6 * took / messages / rounds

    def single_turn(data: bytes) -> None:
        s_pub.data_received(data)
        single.flush()

    pending: list[bytes] = []

    def a_turn(data: bytes) -> None:
        a_pub.data_received(data)
        a.flush()
        commands = node_a._commands
        while commands:
            _, _, payload, count = commands.popleft()
            node_a._pending_pubs -= count  # as ClusterNode._run does
            pending.append(payload)

    def b_turn(data: bytes) -> None:
        drive(node_b._on_batch(FakeMsg(node_b.node_subject, data)))  # type: ignore[arg-type]
        b.flush()
        back = node_b._commands
        while back:
            node_a._on_control(back.popleft()[2])

    us_single = timed("single", single_turn, turns)
    us_a = timed("a", a_turn, turns)
    batches = list(pending)
    us_b = timed("b", b_turn, batches)
    if not args.only and s_sub_t.written - s0 != b_sub_t.written - b0:
        raise SystemExit(f"the subscribers got different output: single "
                         f"{s_sub_t.written - s0} B, b {b_sub_t.written - b0} B")
    for broker, protos in ((single, (s_sub, s_pub)), (a, (a_pub,)), (b, (b_sub,))):
        cancel_timers(broker, protos)
    return us_single, us_a, us_b, len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--per-turn", type=int, default=1000,
                    help="PUBLISHes per read of the publisher (one turn)")
    ap.add_argument("--turns", type=int, default=300)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--profile", choices=("single", "a", "b"),
                    help="cProfile of that side in one run instead")
    ap.add_argument("--only", choices=("single", "a", "b"),
                    help="time that side --only-rounds times over (for perf record)")
    ap.add_argument("--only-rounds", type=int, default=10)
    args = ap.parse_args()
    if args.profile:
        prof = cProfile.Profile()
        uvloop.run(one_run(args, {args.profile: prof}))
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)
        return
    runs = [uvloop.run(one_run(args, {})) for _ in range(args.reps)]
    single, a, b, batches = (list(c) for c in zip(*runs, strict=True))
    ratios = [s / (x + y) for s, x, y in zip(single, a, b, strict=True)]
    fmt = "/".join
    print(f"{build.describe()}: {args.per_turn} QoS 0 PUBLISHes per turn on "
          f"{args.topics} topic(s), {args.turns} turns, {batches[0]} batches a -> b; "
          f"µs of CPU per message, median of {args.reps} (each run):")
    print(f"  single {statistics.median(single):.3f} ({fmt(f'{v:.3f}' for v in single)})")
    print(f"  a      {statistics.median(a):.3f} ({fmt(f'{v:.3f}' for v in a)})")
    print(f"  b      {statistics.median(b):.3f} ({fmt(f'{v:.3f}' for v in b)})")
    print(f"  ratio single / (a + b): {statistics.median(ratios):.2f} "
          f"({fmt(f'{v:.2f}' for v in ratios)})")


if __name__ == "__main__":
    main()
