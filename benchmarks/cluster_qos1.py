"""Issue 14: QoS 1 across nodes through the replicated stream (docs/cluster.md,
"QoS 1/2 messages"). A QoS 1 publisher on node a, a QoS 1 persistent subscriber on
node b (it acknowledges every message); against the same on one broker without a
cluster.

Reports, median of ``--reps``:

* throughput: ``--messages`` QoS 1 messages of 64 B with at most ``--window`` of them
  not yet both acknowledged and delivered, delivered messages/s and messages per
  broker CPU-second (both nodes' CPU added up in the cluster case);
* ack latency: ``--latency`` messages one at a time, PUBLISH written → PUBACK read,
  p50 / p99 (with the cluster this includes the stream's replicated write).

    .venv/bin/python benchmarks/cluster_qos1.py [--nats 3 --messages 20000 --window 200]

``--qos 2``: the same with QoS 2 both ways (the latency is PUBLISH → PUBREC; a message
counts as done at PUBCOMP), plus the subscriber's PUBREC → PUBREL time (in a cluster
the node holds a persistent session's PUBREL until the release is in the session's
record: docs/cluster.md, "QoS 2 across a move"); ``--no-single`` skips the one-broker
case. ``--persistent-pub``: the publisher has a persistent session (Clean Session 0),
whose QoS 2 packet ids go into its session record in a cluster before the stream write
and out of it before the PUBCOMP (same section); the publisher's PUBREL -> PUBCOMP
time is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cluster_routing import _frame, _str, cpu_seconds
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.nats_cluster import NatsCluster


def _packets(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete packets at the front of ``buf`` (removed from it)."""
    out = []
    pos, n = 0, len(buf)
    while pos < n:
        length, mult, i = 0, 1, pos + 1
        while i < n:
            b = buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        else:
            break
        if i + length > n:
            break
        out.append((buf[pos], bytes(buf[i:i + length])))
        pos = i + length
    del buf[:pos]
    return out


async def connect(port: int, client_id: str, clean: bool = True
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    flags = 2 if clean else 0
    writer.write(_frame(0x10, _str("MQTT") + bytes([4, flags, 0, 60]) + _str(client_id)))
    await reader.readexactly(4)
    return reader, writer


async def subscriber(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     total: int, progress: list[int], buf: bytearray,
                     rel_lat: list[float] | None = None) -> None:
    """``rel_lat``: the subscriber's PUBREC written -> PUBREL read, per QoS 2 message
    (the broker holds the PUBREL until the release is durable in a cluster)."""
    recs: dict[bytes, float] = {}
    while progress[0] < total or recs:
        chunk = await reader.read(1 << 16)
        if not chunk:
            raise RuntimeError("subscriber closed")
        now = time.perf_counter()
        buf += chunk
        acks = []
        for first, body in _packets(buf):
            if first >> 4 == 3:
                progress[0] += 1
                if first & 0x06:
                    tlen = int.from_bytes(body[:2], "big")
                    kind = b"\x50\x02" if first & 0x04 else b"\x40\x02"  # PUBREC / PUBACK
                    acks.append(kind + body[2 + tlen:4 + tlen])
                    if first & 0x04:
                        recs[body[2 + tlen:4 + tlen]] = now
            elif first >> 4 == 6:  # PUBREL -> PUBCOMP
                acks.append(b"\x70\x02" + body[:2])
                sent = recs.pop(body[:2], None)
                if sent is not None and rel_lat is not None:
                    rel_lat.append(now - sent)
        if acks:
            writer.write(b"".join(acks))


async def run_once(pub_port: int, sub_port: int, messages: int, window: int,
                   latency_n: int, qos: int = 1, rel_lat: list[float] | None = None,
                   persistent_pub: bool = False, comp_lat: list[float] | None = None
                   ) -> tuple[float, list[float]]:
    sreader, swriter = await connect(sub_port, f"bench-sub{time.monotonic_ns()}", clean=False)
    swriter.write(_frame(0x82, (1).to_bytes(2, "big") + _str("bench/#") + bytes([qos])))
    await sreader.readexactly(5)
    preader, pwriter = await connect(pub_port, f"bench-pub{time.monotonic_ns()}",
                                     clean=not persistent_pub)

    def publish(pid: int, payload: bytes, qos: int = qos) -> bytes:
        return _frame(0x30 | qos << 1, _str("bench/t") + pid.to_bytes(2, "big") + payload)

    # the subscriber's interest/consumer is in place when a probe comes through
    progress = [0]
    sbuf = bytearray()

    def ack_probes() -> int:
        packets = [body for first, body in _packets(sbuf) if first >> 4 == 3]
        swriter.write(b"".join(b"\x40\x02" + body[2 + int.from_bytes(body[:2], "big"):][:2]
                               for body in packets))
        return len(packets)

    while True:
        pwriter.write(publish(1, b"probe", 1))
        await preader.readexactly(4)
        try:
            sbuf += await asyncio.wait_for(sreader.read(1 << 16), 0.2)
        except TimeoutError:
            continue
        if ack_probes():
            break
    await asyncio.sleep(0.5)
    while True:  # drain late probes (acking them)
        try:
            sbuf += await asyncio.wait_for(sreader.read(1 << 16), 0.3)
        except TimeoutError:
            break
        ack_probes()

    # ack latency, one message at a time
    latencies = []
    counter = asyncio.get_running_loop().create_task(
        subscriber(sreader, swriter, latency_n + messages, progress, sbuf, rel_lat))
    for i in range(latency_n):
        pid = i % 65535 + 1
        started = time.perf_counter()
        pwriter.write(publish(pid, b"x" * 64))
        await preader.readexactly(4)
        latencies.append(time.perf_counter() - started)
        if qos == 2:  # PUBREL, PUBCOMP
            started = time.perf_counter()
            pwriter.write(b"\x62\x02" + pid.to_bytes(2, "big"))
            await preader.readexactly(4)
            if comp_lat is not None:
                comp_lat.append(time.perf_counter() - started)

    # throughput with a window of unacked PUBLISHes
    acked = [0]

    async def read_acks() -> None:
        buf = bytearray()
        while acked[0] < messages:
            chunk = await preader.read(1 << 16)
            if not chunk:
                raise RuntimeError("publisher closed")
            buf += chunk
            rels = []
            for first, body in _packets(buf):
                if first >> 4 == 5:  # PUBREC -> PUBREL
                    rels.append(b"\x62\x02" + body[:2])
                else:
                    acked[0] += 1
            if rels:
                pwriter.write(b"".join(rels))

    acks_task = asyncio.get_running_loop().create_task(read_acks())
    started = time.perf_counter()
    sent = 0
    payload = b"x" * 64
    while sent < messages:
        # bounded by what the subscriber got too (its session queue is bounded)
        done = min(acked[0], progress[0] - latency_n)
        room = min(window - (sent - done), messages - sent)
        if room <= 0:
            await asyncio.sleep(0.0005)
            continue
        pwriter.write(b"".join(publish((sent + i) % 65535 + 1, payload) for i in range(room)))
        sent += room
        await pwriter.drain()
    await asyncio.wait_for(acks_task, 120)
    await asyncio.wait_for(counter, 120)
    took = time.perf_counter() - started
    pwriter.close()
    swriter.close()
    return took, latencies


def measure(pids: list[int], pub_port: int, sub_port: int,
            args: argparse.Namespace, others: tuple[int, ...] = ()) -> dict[str, float]:
    """``others``: processes whose CPU is reported apart (the nats-servers)."""
    rates, per_cpu, p50, p99, gen, nats, rel50, rel99 = [], [], [], [], [], [], [], []
    comp50: list[float] = []
    for _ in range(args.reps):
        before = sum(cpu_seconds(p) for p in pids)
        before_nats = sum(cpu_seconds(p) for p in others)
        before_gen = sum(os.times()[:2])
        rel: list[float] = []
        comp: list[float] = []
        took, lat = asyncio.run(run_once(pub_port, sub_port, args.messages, args.window,
                                         args.latency, args.qos, rel,
                                         args.persistent_pub, comp))
        if comp:
            comp.sort()
            comp50.append(comp[len(comp) // 2] * 1000)
        if rel:
            rel.sort()
            rel50.append(rel[len(rel) // 2] * 1000)
            rel99.append(rel[int(len(rel) * 0.99)] * 1000)
        cpu = sum(cpu_seconds(p) for p in pids) - before
        gen.append(sum(os.times()[:2]) - before_gen)
        nats.append(sum(cpu_seconds(p) for p in others) - before_nats)
        rates.append(args.messages / took)
        per_cpu.append((args.messages + args.latency) / cpu)
        lat.sort()
        p50.append(lat[len(lat) // 2] * 1000)
        p99.append(lat[int(len(lat) * 0.99)] * 1000)
    return {"rate": statistics.median(rates), "per_cpu": statistics.median(per_cpu),
            "p50": statistics.median(p50), "p99": statistics.median(p99),
            "gen_cpu": statistics.median(gen), "nats_cpu": statistics.median(nats),
            "rel50": statistics.median(rel50) if rel50 else 0.0,
            "rel99": statistics.median(rel99) if rel99 else 0.0,
            "comp50": statistics.median(comp50) if comp50 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--latency", type=int, default=1000)
    parser.add_argument("--nats", type=int, default=3, help="nats-servers (1 or 3)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--qos", type=int, choices=(1, 2), default=1)
    parser.add_argument("--no-single", action="store_true", help="skip the one-broker case")
    parser.add_argument("--persistent-pub", action="store_true",
                        help="the publisher has a persistent session (Clean Session 0)")
    args = parser.parse_args()
    quiet = ("logging:\n  level: DEBUG\n", "logging:\n  level: INFO\n")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        one = None
        if not args.no_single:
            single = BrokerProcess(work / "single", broker_config().replace(*quiet),
                                   name="single").start()
            assert single.proc is not None
            try:
                one = measure([single.proc.pid], single.port, single.port, args)
            except Exception:
                print(single.log_text()[-3000:])
                raise
            finally:
                single.stop()
        cluster = NatsCluster(work / "nats", size=args.nats).start()
        nodes = []
        try:
            for i, name in enumerate(("a", "b")):
                urls = cluster.urls[i % args.nats:] + cluster.urls[:i % args.nats]
                text = broker_config(extra=(
                    f"cluster:\n  node_name: {name}\n  nats: [{', '.join(urls)}]\n"
                    f"  replicas: {min(3, args.nats)}\n"
                )).replace(*quiet)
                nodes.append(BrokerProcess(work / name, text, name=name).start())
            for node in nodes:
                deadline = time.monotonic() + 20
                while "QoS 1/2 stream" not in node.log_text():
                    if time.monotonic() > deadline:
                        raise RuntimeError(node.log_text())
                    time.sleep(0.05)
            pids = [n.proc.pid for n in nodes if n.proc is not None]
            servers = tuple(s.proc.pid for s in cluster.servers if s.proc is not None)
            two = measure(pids, nodes[0].port, nodes[1].port, args, servers)
        finally:
            for node in nodes:
                node.stop()
            cluster.stop()
    print(f"QoS {args.qos}, 64 B: {args.messages} messages with window {args.window}, "
          f"{args.latency} one at a time for the ack latency; median of {args.reps}; "
          f"{args.nats} nats-server(s), replicas {min(3, args.nats)}")
    ack = "PUBACK" if args.qos == 1 else "PUBREC"
    for label, r in (("one broker, no cluster", one), ("two nodes, pub a -> sub b", two)):
        if r is None:
            continue
        print(f"  {label:28s} {r['rate']:>8,.0f} msg/s  {r['per_cpu']:>8,.0f} msg per "
              f"broker CPU-s  {ack} latency p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms  "
              f"(generator {r['gen_cpu']:.2f} CPU-s, nats-servers {r['nats_cpu']:.2f} CPU-s)")
        if args.qos == 2:
            print(f"  {'':28s} subscriber's PUBREC -> PUBREL p50 {r['rel50']:.2f} ms  "
                  f"p99 {r['rel99']:.2f} ms (all messages); publisher's PUBREL -> "
                  f"PUBCOMP p50 {r['comp50']:.2f} ms"
                  + (" (persistent publisher)" if args.persistent_pub else ""))


if __name__ == "__main__":
    main()
