"""Issue 14: what routing by announced interest costs besides messages.

1. Memory per distinct filter: one client subscribes ``--filters`` filters
   ``dev/<i>/cmd`` (100 per SUBSCRIBE) on node b; RSS of node b (the announcing node)
   and of node a (which indexes b's announcements) before and after, against the
   same on one broker without a cluster.
2. The window before an announcement is seen: a client on node b subscribes to a
   fresh topic; from its SUBACK on, a publisher on node a sends a message on it every
   0.5 ms; the time from the SUBACK to the first one that arrives is how long a new
   subscription misses messages from other nodes (``--rounds`` times; median, p99).

    .venv/bin/python benchmarks/cluster_interest.py [--filters 10000 --rounds 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_routing import _frame, _str, open_client

from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.nats_cluster import NatsCluster


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def subscribe_packet(packet_id: int, filters: list[str]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(_str(f) + b"\x00" for f in filters)
    return _frame(0x82, body)


async def subscribe_many(port: int, n: int) -> tuple[asyncio.StreamReader,
                                                       asyncio.StreamWriter]:
    reader, writer = await open_client(port, f"many{time.monotonic_ns()}")
    filters = [f"dev/{i}/cmd" for i in range(n)]
    per = 100
    for k in range(0, n, per):
        chunk = filters[k : k + per]
        writer.write(subscribe_packet(k // per + 1, chunk))
        await reader.readexactly(2 + 2 + len(chunk) + (1 if 2 + len(chunk) > 127 else 0))
    return reader, writer


async def wait_routed(pub_port: int, reader: asyncio.StreamReader, topic: str) -> None:
    """Publish on ``topic`` at node a until the subscriber on b gets one."""
    _r, w = await open_client(pub_port, f"probe{time.monotonic_ns()}")
    packet = _frame(0x30, _str(topic) + b"p")
    while True:
        w.write(packet)
        try:
            await asyncio.wait_for(reader.read(1 << 16), 0.05)
            break
        except TimeoutError:
            continue
    w.close()
    await asyncio.sleep(0.3)
    while True:
        try:
            await asyncio.wait_for(reader.read(1 << 16), 0.2)
        except TimeoutError:
            break


async def memory(nodes: list[BrokerProcess], n: int) -> dict[str, float]:
    pids = [p.proc.pid for p in nodes if p.proc is not None]
    await asyncio.sleep(1.0)
    before = [rss(p) for p in pids]
    reader, writer = await subscribe_many(nodes[-1].port, n)
    if len(nodes) > 1:  # the last filter is routed: node a has seen them all
        await wait_routed(nodes[0].port, reader, f"dev/{n - 1}/cmd")
    await asyncio.sleep(1.0)
    after = [rss(p) for p in pids]
    writer.close()
    return {name: (a - b) / n for name, a, b in zip("ab" if len(nodes) > 1 else "s",
                                                     after, before, strict=True)}


async def window(pub_port: int, sub_port: int, rounds: int) -> list[float]:
    sreader, swriter = await open_client(sub_port, f"w{time.monotonic_ns()}")
    _pr, pwriter = await open_client(pub_port, f"wp{time.monotonic_ns()}")
    out = []
    for k in range(rounds):
        topic = f"win/{time.monotonic_ns()}/{k}"
        swriter.write(subscribe_packet(1, [topic]))
        await sreader.readexactly(5)  # SUBACK
        subacked = time.perf_counter()
        packet = _frame(0x30, _str(topic) + b"w")

        async def pump(packet: bytes = packet) -> None:
            while True:
                pwriter.write(packet)
                await asyncio.sleep(0.0005)

        task = asyncio.get_running_loop().create_task(pump())
        await sreader.read(1 << 16)
        out.append(time.perf_counter() - subacked)
        task.cancel()
        await asyncio.sleep(0.05)
        while True:  # drain what was still on its way
            try:
                await asyncio.wait_for(sreader.read(1 << 16), 0.05)
            except TimeoutError:
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filters", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--nats", type=int, default=1)
    parser.add_argument("--window-only", action="store_true",
                        help="skip the memory measurement")
    args = parser.parse_args()
    info = "logging:\n  level: INFO\n"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        one: dict[str, float] = {}
        if not args.window_only:
            single = BrokerProcess(work / "single", broker_config().replace(
                "logging:\n  level: DEBUG\n", info), name="single").start()
            try:
                one = asyncio.run(memory([single], args.filters))
            finally:
                single.stop()
        cluster = NatsCluster(work / "nats", size=args.nats).start()
        nodes = []
        try:
            for name in ("a", "b"):
                text = broker_config(extra=(
                    f"cluster:\n  node_name: {name}\n  nats: [{', '.join(cluster.urls)}]\n"
                    f"  replicas: {min(3, args.nats)}\n"
                )).replace("logging:\n  level: DEBUG\n", info)
                nodes.append(BrokerProcess(work / name, text, name=name).start())
            for node in nodes:
                deadline = time.monotonic() + 10
                while "connected to NATS" not in node.log_text():
                    if time.monotonic() > deadline:
                        raise RuntimeError(node.log_text())
                    time.sleep(0.05)
            time.sleep(1.0)  # buckets, streams, watches
            two = {} if args.window_only else asyncio.run(memory(nodes, args.filters))
            gaps = asyncio.run(window(nodes[0].port, nodes[1].port, args.rounds))
        finally:
            for node in nodes:
                node.stop()
            cluster.stop()
    if one:
        print(f"memory per distinct filter ({args.filters} filters dev/<i>/cmd, RSS):")
        print(f"  one broker, no cluster         {one['s']:8.0f} B")
        print(f"  cluster node b (subscribed)    {two['b']:8.0f} B")
        print(f"  cluster node a (indexes b's)   {two['a']:8.0f} B")
    gaps.sort()
    p99 = gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))]
    print(f"window from SUBACK on b to the first message from a ({args.rounds} rounds): "
          f"median {statistics.median(gaps) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"max {gaps[-1] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
