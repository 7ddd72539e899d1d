"""What durability costs (issue 19): QoS 1 for persistent sessions, acked how fast?

Targets, run interleaved (``--reps`` rounds, each target once per round, medians):

* ``iotbroker-os``: RocksDB, ``storage.durability: os`` (WAL written, no fsync: survives
  a crash of the process, not of the machine);
* ``iotbroker-fsync``: RocksDB, ``durability: fsync`` (group commit: every PUBACK waits
  for a sync of the WAL that covers its message; many publishers share one sync);
* ``mosquitto``: the Debian package with ``persistence true`` (its store is a snapshot
  written every ``autosave_interval`` seconds, 1800 by default, and at shutdown: a
  crash loses up to that interval of acknowledged messages);
* ``rocksdict-sync``: the physical limit of this design on the same disk: a plain
  rocksdict loop, one WriteBatch (a queued-message-sized put + a delete) per
  iteration with ``sync=True`` (one fsync per message: what ``fsync`` costs without
  group commit); ``rocksdict-nosync`` the same without sync.

Workload for the brokers: ``--publishers`` clean MQTT 3.1.1 publishers, each keeping
``--window`` QoS 1 PUBLISHes (``--payload`` bytes) unacknowledged, to ``dur/<n>``; one
persistent subscriber (Clean Session 0) of ``dur/#`` at QoS 1 acking everything, so
each message is stored for a persistent session (in flight, then deleted on PUBACK).
Measured over ``--duration`` s after ``--warmup`` s: PUBACKs per second, the latency
PUBLISH -> PUBACK per message (p50, p99), the broker's CPU seconds per 10,000
messages, and the load generator's CPU (a generator near 100% is the limit, not the
broker).

    .venv/bin/python benchmarks/durability.py                 # 3 reps, all targets
    .venv/bin/python benchmarks/durability.py --reps 1 --targets iotbroker-fsync
    # against another checkout of iotbroker (targets base-os, base-fsync), interleaved:
    .venv/bin/python benchmarks/durability.py --baseline /tmp/main-checkout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from e2e import Broker, free_port, iotbroker_python  # noqa: E402
from loadgen import proc_stat, raise_nofile  # noqa: E402

from iotbroker.codec import encode_packet  # noqa: E402
from iotbroker.codec.packets import Connect, Disconnect, Publish, Subscribe, Subscription  # noqa: E402

TARGETS = ("iotbroker-os", "iotbroker-fsync", "mosquitto", "rocksdict-sync", "rocksdict-nosync")


def make_broker(target: str, workdir: str, mosquitto: str) -> Broker:
    port = free_port()
    if target.startswith(("iotbroker", "base")):
        durability = target.split("-")[1]
        cfg = os.path.join(workdir, "iotbroker.yaml")
        with open(cfg, "w") as f:
            f.write(f"""listeners:
  - {{name: d, type: tcp, host: 127.0.0.1, port: {port}}}
storage: {{backend: rocksdb, path: {workdir}/data, durability: {durability}}}
sys_topics: {{enabled: false}}
logging: {{level: WARNING}}
mqtt: {{max_inflight: 100, max_queued_messages: 100000}}
""")
        return Broker("iotbroker", [iotbroker_python(), "-m", "iotbroker", "run",
                                    "--config", cfg], port, workdir)
    cfg = os.path.join(workdir, "mosquitto.conf")
    with open(cfg, "w") as f:
        f.write(f"""listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {workdir}/
autosave_interval 1800
max_inflight_messages 100
max_queued_messages 100000
log_type none
""")
    return Broker("mosquitto", [mosquitto, "-c", cfg], port, workdir)


class _Reader(asyncio.Protocol):
    """Splits MQTT frames; calls ``on_packet(first_byte, body)``."""

    def __init__(self, on_packet: Any) -> None:
        self.buf = bytearray()
        self.on_packet = on_packet
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        while n - pos >= 2:
            length, mult, i = 0, 1, pos + 1
            while i < n:
                b = buf[i]
                length += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if b < 128:
                    break
            else:
                break
            if n - i < length:
                break
            self.on_packet(buf[pos], bytes(buf[i:i + length]))
            pos = i + length
        del buf[:pos]


async def _client(port: int, on_packet: Any) -> _Reader:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: _Reader(on_packet), "127.0.0.1", port)
    return proto


async def run_broker_load(port: int, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    state = {"measuring": False, "acks": 0}
    latencies: list[float] = []
    connacks: list[asyncio.Future[None]] = []

    def connack_waiter() -> asyncio.Future[None]:
        fut = loop.create_future()
        connacks.append(fut)
        return fut

    # the persistent subscriber
    sub_ready = connack_waiter()
    sub_box: list[_Reader] = []

    def on_sub(first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == 0x30 and first & 0x06:
            tl = body[0] << 8 | body[1]
            sub_box[0].transport.write(b"\x40\x02" + body[2 + tl:4 + tl])  # type: ignore[union-attr]
        elif kind == 0x90 and not sub_ready.done():
            sub_ready.set_result(None)

    sub = await _client(port, on_sub)
    sub_box.append(sub)
    assert sub.transport is not None
    sub.transport.write(encode_packet(Connect(client_id="dur-sub", clean_start=False,
                                              keepalive=600), 4)
                        + encode_packet(Subscribe(1, [Subscription("dur/#", 1)]), 4))
    await asyncio.wait_for(sub_ready, 10)

    payload = b"p" * args.payload

    async def publisher(n: int) -> None:
        sent_at: dict[int, float] = {}
        topic = f"dur/{n}"
        heads = {pid_: encode_packet(Publish(topic, payload, 1, packet_id=pid_), 4)
                 for pid_ in range(1, args.window + 1)}
        ready = loop.create_future()
        box: list[_Reader] = []

        def on_pub(first: int, body: bytes) -> None:
            kind = first & 0xF0
            if kind == 0x20:
                if not ready.done():
                    ready.set_result(None)
                return
            if kind != 0x40:
                return
            pid_ = body[0] << 8 | body[1]
            now = time.perf_counter()
            t0 = sent_at.pop(pid_, None)
            if t0 is not None and state["measuring"]:
                latencies.append(now - t0)
                state["acks"] += 1
            if not state["stop"]:
                sent_at[pid_] = time.perf_counter()
                box[0].transport.write(heads[pid_])  # type: ignore[union-attr]

        proto = await _client(port, on_pub)
        box.append(proto)
        assert proto.transport is not None
        proto.transport.write(encode_packet(Connect(client_id=f"dur-pub-{n}", keepalive=600), 4))
        await asyncio.wait_for(ready, 10)
        await started
        for pid_, head in heads.items():
            sent_at[pid_] = time.perf_counter()
            proto.transport.write(head)
        await done
        proto.transport.write(encode_packet(Disconnect(), 4))
        proto.transport.close()

    state["stop"] = False
    started = loop.create_future()
    done = loop.create_future()
    tasks = [asyncio.ensure_future(publisher(n)) for n in range(args.publishers)]
    await asyncio.sleep(0.2)
    started.set_result(None)
    await asyncio.sleep(args.warmup)
    cpu_gen0 = time.process_time()
    cpu_b0, _ = proc_stat(pid)
    state["measuring"] = True
    t0 = time.perf_counter()
    await asyncio.sleep(args.duration)
    state["measuring"] = False
    span = time.perf_counter() - t0
    cpu_b1, rss = proc_stat(pid)
    cpu_gen = time.process_time() - cpu_gen0
    state["stop"] = True
    done.set_result(None)
    await asyncio.gather(*tasks)
    # the subscriber session is discarded
    assert sub.transport is not None
    sub.transport.close()
    acks = state["acks"]
    lat = sorted(latencies)
    return {
        "msgs_per_s": round(acks / span),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 3) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 3) if lat else None,
        "broker_cpu_s_per_10k": round((cpu_b1 - cpu_b0) / max(1, acks) * 10_000, 3),
        "gen_cpu_pct": round(cpu_gen / span * 100),
        "broker_rss_mib": round(rss / 2**20, 1),
    }


def run_rocksdict(sync: bool, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    from rocksdict import Options, Rdict, WriteBatch, WriteOptions  # noqa: PLC0415

    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    db = Rdict(os.path.join(workdir, "plain"), opts)
    wo = WriteOptions()
    wo.sync = sync
    value = b"v" * (args.payload + 60)  # about a queued record: delivery head + topic
    lat: list[float] = []
    cpu0 = time.process_time()
    t_end = time.perf_counter() + args.duration
    i = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= t_end:
            break
        wb = WriteBatch(raw_mode=True)
        wb.put(b"dur-sub\0" + i.to_bytes(8, "big"), value)
        if i:
            wb.delete(b"dur-sub\0" + (i - 1).to_bytes(8, "big"))
        db.write(wb, wo)
        lat.append(time.perf_counter() - t0)
        i += 1
    cpu = time.process_time() - cpu0
    db.close()
    lat.sort()
    return {
        "msgs_per_s": round(i / args.duration),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 3),
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 3),
        "broker_cpu_s_per_10k": round(cpu / max(1, i) * 10_000, 3),
        "gen_cpu_pct": None,
        "broker_rss_mib": None,
    }


def run_target(target: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="iotbroker-dur-", dir=args.dir)
    try:
        if target.startswith("rocksdict"):
            return run_rocksdict(target == "rocksdict-sync", args, workdir)
        broker = make_broker(target, workdir, args.mosquitto)
        env = os.environ.get("PYTHONPATH")
        if target.startswith("base"):  # the other checkout's iotbroker package
            os.environ["PYTHONPATH"] = args.baseline
        try:
            broker.start()
        finally:
            if env is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = env
        try:
            time.sleep(0.3)
            return asyncio.run(run_broker_load(broker.port, args, broker.pid))
        finally:
            broker.stop()
            if os.environ.get("DUR_LOG"):  # the broker's log (sync mode lines)
                with open(broker.log) as f:
                    print(f.read()[-3000:], file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--publishers", type=int, default=10)
    ap.add_argument("--window", type=int, default=10, help="unacked QoS 1 per publisher")
    ap.add_argument("--payload", type=int, default=100)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--dir", default=None, help="where the data dirs go (the disk measured)")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--baseline", default=None,
                    help="another iotbroker checkout: adds targets base-os and base-fsync")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    raise_nofile()
    targets = [t.strip() for t in args.targets.split(",")]
    if args.baseline:
        targets += ["base-os", "base-fsync"]
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    for rep in range(args.reps):
        for target in targets:
            r = run_target(target, args)
            r.update(target=target, rep=rep)
            runs[target].append(r)
            print(json.dumps(r), flush=True)
    print(f"\nmedians of {args.reps} reps; {args.publishers} publishers x window {args.window}, "
          f"{args.payload}-byte payloads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| target | msg/s | ack p50 ms | ack p99 ms | CPU s / 10k msgs | generator CPU % |")
    print("|---|---:|---:|---:|---:|---:|")
    med: dict[str, dict[str, Any]] = {}
    for target, rs in runs.items():
        m = {k: statistics.median([r[k] for r in rs]) if rs[0][k] is not None else None
             for k in ("msgs_per_s", "p50_ms", "p99_ms", "broker_cpu_s_per_10k", "gen_cpu_pct")}
        med[target] = m
        gen = "-" if m["gen_cpu_pct"] is None else m["gen_cpu_pct"]
        print(f"| {target} | {m['msgs_per_s']:,.0f} | {m['p50_ms']} | {m['p99_ms']} "
              f"| {m['broker_cpu_s_per_10k']} | {gen} |")
    if "iotbroker-fsync" in med and "rocksdict-sync" in med:
        print(f"fsync group commit / one-sync-per-message rocksdict loop: "
              f"{med['iotbroker-fsync']['msgs_per_s'] / med['rocksdict-sync']['msgs_per_s']:.2f}x")
    if "iotbroker-fsync" in med and "iotbroker-os" in med:
        print(f"fsync / os throughput: "
              f"{med['iotbroker-fsync']['msgs_per_s'] / med['iotbroker-os']['msgs_per_s']:.2f}")
    if "base-fsync" in med and "iotbroker-fsync" in med:
        print(f"fsync throughput, this checkout / baseline: "
              f"{med['iotbroker-fsync']['msgs_per_s'] / med['base-fsync']['msgs_per_s']:.2f}"
              f"; os: {med['iotbroker-os']['msgs_per_s'] / med['base-os']['msgs_per_s']:.2f}")
    if "iotbroker-fsync" in med and "mosquitto" in med:
        print(f"iotbroker fsync / mosquitto (persistence, autosave 1800 s) throughput: "
              f"{med['iotbroker-fsync']['msgs_per_s'] / med['mosquitto']['msgs_per_s']:.2f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "medians": med}, f, indent=1)


if __name__ == "__main__":
    main()
