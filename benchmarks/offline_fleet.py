"""Offline fleet memory (issue 19): many persistent sessions offline, messages queued.

For each broker (iotbroker with RocksDB storage in a fresh data dir, then mosquitto
from the Debian package, all in memory), started fresh on a free port of 127.0.0.1:

1. ``--sessions`` MQTT 3.1.1 clients (ids ``fleet-<n>``) connect with Clean Session 0,
   subscribe to ``fleet/all`` at QoS 1 and DISCONNECT (asyncio, raw sockets, at most
   ``--concurrency`` at once, source addresses 127.0.0.2..9): RSS after the sessions.
2. One clean publisher sends ``--messages`` QoS 1 PUBLISHes of ``--payload`` bytes to
   ``fleet/all``, all at once, and waits for every PUBACK: each is queued for every
   offline session (sessions x messages queued). Fan-out time = first PUBLISH to last
   PUBACK, with the broker's CPU seconds over it; RSS after.
3. iotbroker only: SIGTERM, start again on the same data dir, RSS after the restore
   (and after ``--settle`` seconds); then ``--check`` sessions reconnect and must get
   all their messages back, in order (the memory saving must not lose anything).

    .venv/bin/python benchmarks/offline_fleet.py                        # 15,000 x 20
    .venv/bin/python benchmarks/offline_fleet.py --sessions 50000 --brokers iotbroker
    .venv/bin/python benchmarks/offline_fleet.py --json /tmp/fleet.json
    .venv/bin/python benchmarks/offline_fleet.py --baseline /tmp/main-checkout \
        --brokers base,iotbroker,mosquitto          # "base": another checkout's iotbroker

Not a test: nothing is asserted but the reconnect check; numbers are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from e2e import Broker, free_port, iotbroker_python, make_mosquitto  # noqa: E402
from loadgen import proc_stat, raise_nofile  # noqa: E402

from iotbroker.codec import encode_packet  # noqa: E402
from iotbroker.codec.packets import (  # noqa: E402
    Connect,
    Disconnect,
    Publish,
    Subscribe,
    Subscription,
)

TOPIC = "fleet/all"


def make_iotbroker(workdir: str, durability: str) -> Broker:
    port = free_port()
    cfg = os.path.join(workdir, "iotbroker-fleet.yaml")
    with open(cfg, "w") as f:
        f.write(f"""listeners:
  - name: fleet
    type: tcp
    host: 127.0.0.1
    port: {port}
storage: {{backend: rocksdb, path: {workdir}/fleetdata, durability: {durability}}}
sys_topics: {{enabled: false}}
logging: {{level: WARNING}}
""")
    return Broker("iotbroker", [iotbroker_python(), "-m", "iotbroker", "run", "--config", cfg],
                  port, workdir)


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, mult = 0, 1
    while True:
        b = (await reader.readexactly(1))[0]
        length += (b & 0x7F) * mult
        mult *= 128
        if b < 128:
            break
    return first, await reader.readexactly(length) if length else b""


async def _open(port: int, index: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    src = f"127.0.0.{2 + index % 8}"
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))


async def _make_session(port: int, index: int, sem: asyncio.Semaphore) -> None:
    async with sem:
        reader, writer = await _open(port, index)
        try:
            cid = f"fleet-{index}"
            writer.write(encode_packet(Connect(client_id=cid, clean_start=False, keepalive=600), 4)
                         + encode_packet(Subscribe(1, [Subscription(TOPIC, 1)]), 4))
            kind, body = await _read_packet(reader)
            if kind != 0x20 or body[1] != 0:
                raise RuntimeError(f"{cid}: CONNACK {body!r}")
            kind, body = await _read_packet(reader)
            if kind != 0x90 or body[-1] != 1:
                raise RuntimeError(f"{cid}: SUBACK {body!r}")
            writer.write(encode_packet(Disconnect(), 4))
            await writer.drain()
            # Let the broker close first: TIME_WAIT stays on its side.
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()


async def make_sessions(port: int, n: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    t0 = time.perf_counter()
    await asyncio.gather(*(_make_session(port, i, sem) for i in range(n)))
    return time.perf_counter() - t0


async def publish(port: int, messages: int, payload: int) -> float:
    """Send ``messages`` QoS 1 PUBLISHes at once; seconds until the last PUBACK."""
    reader, writer = await _open(port, 0)
    writer.write(encode_packet(Connect(client_id="fleet-publisher", keepalive=600), 4))
    kind, _ = await _read_packet(reader)
    assert kind == 0x20
    body = b"x" * payload
    t0 = time.perf_counter()
    writer.write(b"".join(encode_packet(Publish(TOPIC, body[:-4] + i.to_bytes(4, "big"), 1,
                                                packet_id=i + 1), 4)
                          for i in range(messages)))
    acked = 0
    while acked < messages:
        kind, _ = await _read_packet(reader)
        if kind & 0xF0 == 0x40:
            acked += 1
    took = time.perf_counter() - t0
    writer.write(encode_packet(Disconnect(), 4))
    writer.close()
    return took


async def check(port: int, indexes: list[int], messages: int) -> int:
    """Reconnect these sessions; each must get ``messages`` PUBLISHes numbered 0.. in
    order. Returns how many sessions did."""
    good = 0
    for index in indexes:
        reader, writer = await _open(port, index)
        writer.write(encode_packet(Connect(client_id=f"fleet-{index}", clean_start=False,
                                           keepalive=600), 4))
        kind, body = await _read_packet(reader)
        if kind != 0x20 or body[0] != 1:
            raise RuntimeError(f"fleet-{index}: CONNACK {body!r} (session not present?)")
        got: list[int] = []
        with contextlib.suppress(asyncio.TimeoutError):
            while len(got) < messages:
                kind, body = await asyncio.wait_for(_read_packet(reader), 5)
                if kind & 0xF0 != 0x30:
                    continue
                tl = body[0] << 8 | body[1]
                pid = body[2 + tl:4 + tl]
                got.append(int.from_bytes(body[-4:], "big"))
                writer.write(b"\x40\x02" + pid)
        if got == list(range(messages)):
            good += 1
        else:
            print(f"fleet-{index}: got {got}", file=sys.stderr)
        writer.write(encode_packet(Disconnect(), 4))
        await writer.drain()
        writer.close()
    return good


def settle(pid: int, quiet: float = 0.5, limit: float = 30.0) -> float:
    """Wait until the broker used no CPU for ``quiet`` seconds; its CPU seconds then."""
    end = time.monotonic() + limit
    cpu, _ = proc_stat(pid)
    while time.monotonic() < end:
        time.sleep(quiet)
        now, _ = proc_stat(pid)
        if now - cpu < 0.01:
            return now
        cpu = now
    return cpu


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def run_one(name: str, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    saved = os.environ.get("PYTHONPATH")
    if name == "base":  # the same broker from another checkout (--baseline)
        if not args.baseline:
            raise SystemExit("--brokers base needs --baseline DIR")
        os.environ["PYTHONPATH"] = args.baseline
    try:
        return _run_one(name, args, workdir)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _run_one(name: str, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    if name in ("iotbroker", "base"):
        broker = make_iotbroker(workdir, args.durability)
    else:
        broker = make_mosquitto(workdir, args.mosquitto)
        # queues must hold the run's messages (mosquitto's default is 1000; ours 10,000)
    broker.start()
    out: dict[str, Any] = {"broker": name, "sessions": args.sessions,
                           "messages": args.messages, "payload": args.payload}
    try:
        pid = broker.pid
        settle(pid)
        _, rss0 = proc_stat(pid)
        cpu0, _ = proc_stat(pid)
        out["connect_seconds"] = round(asyncio.run(
            make_sessions(broker.port, args.sessions, args.concurrency)), 2)
        cpu1 = settle(pid)
        _, rss1 = proc_stat(pid)
        out["sessions_cpu_s"] = round(cpu1 - cpu0, 2)
        fan = asyncio.run(publish(broker.port, args.messages, args.payload))
        cpu2, _ = proc_stat(pid)
        cpu3 = settle(pid)
        _, rss2 = proc_stat(pid)
        queued = args.sessions * args.messages
        out.update({
            "rss_start_mib": mib(rss0),
            "rss_sessions_mib": mib(rss1),
            "rss_queued_mib": mib(rss2),
            "bytes_per_session": round((rss1 - rss0) / args.sessions),
            "bytes_per_queued_msg": round((rss2 - rss1) / queued),
            "fanout_seconds": round(fan, 3),
            "fanout_cpu_s": round(cpu2 - cpu1, 2),
            "fanout_cpu_s_incl_tail": round(cpu3 - cpu1, 2),
        })
        if name != "mosquitto":
            broker.stop()
            t0 = time.perf_counter()
            broker.start(timeout=300)  # the restore of a large store on a busy machine
            out["restart_seconds"] = round(time.perf_counter() - t0, 2)
            _, rss3 = proc_stat(broker.pid)
            settle(broker.pid, limit=args.settle)
            _, rss4 = proc_stat(broker.pid)
            out["rss_restart_mib"] = mib(rss3)
            out["rss_restart_settled_mib"] = mib(rss4)
            sample = sorted({0, args.sessions - 1, *range(0, args.sessions, max(1, args.sessions
                                                                              // args.check))})
            sample = sample[: args.check]
            out["check_ok"] = f"{asyncio.run(check(broker.port, sample, args.messages))}" \
                              f"/{len(sample)}"
        return out
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default="iotbroker,mosquitto")
    ap.add_argument("--sessions", type=int, default=15_000)
    ap.add_argument("--messages", type=int, default=20, help="queued per session")
    ap.add_argument("--payload", type=int, default=100, help="bytes per message")
    ap.add_argument("--concurrency", type=int, default=200, help="clients connecting at once")
    ap.add_argument("--durability", choices=("os", "fsync"), default="os")
    ap.add_argument("--settle", type=float, default=10.0, help="max s to wait after restart")
    ap.add_argument("--check", type=int, default=20, help="sessions to reconnect and check")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="checkout whose iotbroker runs as broker 'base' (PYTHONPATH)")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    raise_nofile()
    results = []
    for rep in range(args.reps):
        for name in args.brokers.split(","):
            workdir = tempfile.mkdtemp(prefix="iotbroker-fleet-")
            try:
                r = run_one(name.strip(), args, workdir)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            r["rep"] = rep
            results.append(r)
            print(json.dumps(r), flush=True)
    print("\n| broker | sessions x msgs | RSS start -> sessions -> queued MiB | B/session "
          "| B/queued msg | fan-out s (CPU s) | restart RSS MiB (settled) | check |")
    print("|---|---|---|---:|---:|---|---|---|")
    for r in results:
        print(f"| {r['broker']} | {r['sessions']:,} x {r['messages']} "
              f"| {r['rss_start_mib']} -> {r['rss_sessions_mib']} -> {r['rss_queued_mib']} "
              f"| {r['bytes_per_session']} | {r['bytes_per_queued_msg']} "
              f"| {r['fanout_seconds']} ({r['fanout_cpu_s']}) "
              f"| {r.get('rss_restart_mib', '-')} ({r.get('rss_restart_settled_mib', '-')}) "
              f"| {r.get('check_ok', '-')} |")
    keys = ("bytes_per_session", "bytes_per_queued_msg", "rss_queued_mib", "fanout_seconds",
            "fanout_cpu_s", "rss_restart_mib")
    print(f"\nmedians of {args.reps} rep(s):")
    for name in dict.fromkeys(r["broker"] for r in results):
        mine = [r for r in results if r["broker"] == name]
        print(f"  {name}: " + ", ".join(
            f"{k} {statistics.median(r[k] for r in mine)}" for k in keys if k in mine[0]))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
