"""Where does the latency scenario's time go: in the broker or in the load generator?

Runs ``loadgen.py --scenario latency`` (1 publisher at a fixed 1,000 msg/s, QoS 1,
1 subscriber, MQTT 3.1.1) against iotbroker and mosquitto (fresh broker per run,
alternating, ``--reps`` times) while ``tcpdump`` captures the broker's port on the
loopback interface. Every PUBLISH carries its send time (CLOCK_MONOTONIC) in the
payload, so from the capture each message gets

* ``gen->wire``: send timestamp -> the PUBLISH segment towards the broker on ``lo``
  (the publisher's Python send path and the kernel's transmit; the monotonic clock is
  mapped to the capture's realtime clock with an offset taken at start),
* ``broker``: that segment -> the first segment from the broker carrying the same
  message to the subscriber (wakeup, parse, route, encode, write: the broker's share),
* ``end-to-end``: loadgen's own figure (send -> the subscriber's ``data_received``),
  so ``end-to-end - gen->wire - broker`` is the subscriber side.

    .venv/bin/python benchmarks/latency_split.py                    # 3 reps, 5 s each
    .venv/bin/python benchmarks/latency_split.py --pin 0:1           # taskset broker:gen
    .venv/bin/python benchmarks/latency_split.py --fifo 10           # chrt -f 10: both
    .venv/bin/python benchmarks/latency_split.py --brokers iotbroker,base,mosquitto \
        --baseline /tmp/main-src     # "base": iotbroker from another source tree

``--fifo P`` runs the broker and the load generator under SCHED_FIFO priority ``P``
(``chrt``; root), so that other work on a shared machine does not queue their wake-ups
(each uses a fraction of a core). ``base`` is iotbroker run with ``PYTHONPATH`` set to
``--baseline`` (a directory holding an ``iotbroker`` package, e.g. ``git archive REV
iotbroker | tar -x -C DIR``): an A/B of two versions in one interleaved run.

Needs ``tcpdump`` (Debian package) and root (or CAP_NET_RAW). Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from e2e import make_iotbroker, make_mosquitto, taskset  # noqa: E402

LOADGEN = os.path.join(HERE, "loadgen.py")
PAD = b"\xa5" * 56  # loadgen's payload: 8-byte timestamp + 56 bytes of 0xa5


def read_pcap(path: str, port: int) -> tuple[dict[int, int], dict[int, int]]:
    """Map message timestamp -> first capture time (ns, realtime) of a segment carrying
    it towards ``port`` (into the broker) and from ``port`` (out of the broker)."""
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic not in (0xA1B23C4D, 0xA1B2C3D4):
        raise RuntimeError(f"unexpected pcap magic {magic:#x}")
    nano = magic == 0xA1B23C4D
    linktype = struct.unpack_from("<I", data, 20)[0]
    l2 = {1: 14, 113: 16, 276: 20}.get(linktype)
    if l2 is None:
        raise RuntimeError(f"unsupported link type {linktype}")
    inbound: dict[int, int] = {}
    outbound: dict[int, int] = {}
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from("<IIII", data, pos)
        pkt = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        t = sec * 1_000_000_000 + (frac if nano else frac * 1000)
        ip = pkt[l2:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        tcp = ip[ihl:]
        sport, dport = struct.unpack_from(">HH", tcp, 0)
        payload = tcp[(tcp[12] >> 4) * 4:]
        if not payload:
            continue
        target = inbound if dport == port else outbound if sport == port else None
        if target is None:
            continue
        i = payload.find(PAD)
        while i >= 8:
            ts = struct.unpack_from(">Q", payload, i - 8)[0]
            target.setdefault(ts, t)
            i = payload.find(PAD, i + 56)
    return inbound, outbound


def fifo(priority: int) -> list[str]:
    """argv prefix running a process under SCHED_FIFO (``--fifo``), or nothing."""
    return ["chrt", "-f", str(priority)] if priority else []


def pct(vals: list[float], q: float) -> float:
    if not vals:
        return float("nan")
    return vals[min(len(vals) - 1, max(0, round(q * (len(vals) - 1))))]


def summary(vals_ns: list[int]) -> dict[str, float]:
    v = sorted(x / 1e6 for x in vals_ns)
    return {"n": len(v), "p50": pct(v, 0.5), "p99": pct(v, 0.99), "p999": pct(v, 0.999),
            "max": pct(v, 1.0)}


def run_one(name: str, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    broker = (make_iotbroker(workdir, None) if name in ("iotbroker", "base")
              else make_mosquitto(workdir, args.mosquitto))
    if name == "base":
        broker.argv = ["env", f"PYTHONPATH={args.baseline}", *broker.argv]
    broker.argv = [*fifo(args.fifo), *taskset(args.broker_cpus), *broker.argv]
    broker.start()
    cap = os.path.join(workdir, f"{name}.pcap")
    dump = None
    try:
        time.sleep(0.3)
        dump = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-s", "256", "-B", "16384", "-U", "-w", cap,
             "--time-stamp-precision", "nano", f"tcp port {broker.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # tcpdump writes the pcap header once it is capturing; then a little margin.
        end = time.monotonic() + 10
        while time.monotonic() < end and (not os.path.exists(cap) or os.path.getsize(cap) < 24):
            time.sleep(0.05)
        time.sleep(0.5)
        offset = time.time_ns() - time.monotonic_ns()  # realtime - monotonic
        argv = [*fifo(args.fifo), *taskset(args.gen_cpus), sys.executable, LOADGEN, "run",
                "--port",
                str(broker.port), "--scenario", "latency", "--warmup", str(args.warmup),
                "--duration", str(args.duration), "--rate", str(args.rate),
                "--broker-pid", str(broker.pid)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
        res = json.loads(out.stdout)
        offset = (offset + time.time_ns() - time.monotonic_ns()) // 2
        time.sleep(0.3)
    finally:
        if dump is not None:
            dump.send_signal(signal.SIGINT)
            try:
                dump.wait(timeout=10)
            except subprocess.TimeoutExpired:
                dump.kill()
                dump.wait()
        broker.stop()
    inbound, outbound = read_pcap(cap, broker.port)
    os.unlink(cap)
    # Only messages sent inside loadgen's measured window (skip warm-up and drain).
    ts_all = sorted(inbound)
    lo = ts_all[0] + int(args.warmup * 1e9) if ts_all else 0
    hi = lo + int(args.duration * 1e9)
    gen, brk = [], []
    for ts in ts_all:
        if not lo <= ts < hi or ts not in outbound:
            continue
        gen.append(inbound[ts] - offset - ts)
        brk.append(outbound[ts] - inbound[ts])
    return {"broker": name, "end_to_end_ms": res["latency_ms"], "gen_to_wire_ms": summary(gen),
            "broker_ms": summary(brk), "broker_cpu_pct": res["broker_cpu_pct"],
            "gen_cpu_pct": res["gen_cpu_pct"], "msg_rate": res["msg_rate"],
            "matched": len(brk), "captured_in": len(inbound)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default="iotbroker,mosquitto")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--pin", default=None, metavar="BROKER_CPUS:GEN_CPUS")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--fifo", type=int, default=0, metavar="PRIORITY",
                    help="run broker and generator under SCHED_FIFO (chrt -f; root)")
    ap.add_argument("--baseline", default=None,
                    help="source directory of the iotbroker run as broker 'base'")
    args = ap.parse_args()
    args.broker_cpus, args.gen_cpus = args.pin.split(":") if args.pin else (None, None)
    if shutil.which("tcpdump") is None:
        sys.exit("needs tcpdump (apt-get install tcpdump)")
    names = [n.strip() for n in args.brokers.split(",")]
    if "base" in names and not args.baseline:
        sys.exit("broker 'base' needs --baseline DIR")
    workdir = tempfile.mkdtemp(prefix="iotbroker-lat-")
    results: list[dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                r = run_one(name, args, workdir)
                r["rep"] = rep + 1
                results.append(r)
                e, g, b = r["end_to_end_ms"], r["gen_to_wire_ms"], r["broker_ms"]
                print(f"rep {rep + 1} {name:9} e2e p50/p99/p99.9 {e['p50']:.3f}/{e['p99']:.3f}/"
                      f"{e['p999']:.3f} ms | gen->wire {g['p50']:.3f}/{g['p99']:.3f}/"
                      f"{g['p999']:.3f} | broker {b['p50']:.3f}/{b['p99']:.3f}/{b['p999']:.3f}"
                      f" (n={b['n']}) | broker CPU {r['broker_cpu_pct']:.0f}% gen CPU "
                      f"{r['gen_cpu_pct']:.0f}%", flush=True)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
    print("\nmedians over reps (ms):")
    for name in names:
        rs = [r for r in results if r["broker"] == name and r["matched"]]
        if not rs:
            continue
        line = []
        for part in ("end_to_end_ms", "gen_to_wire_ms", "broker_ms"):
            vals = {q: sorted(r[part][q] for r in rs)[len(rs) // 2] for q in ("p50", "p99", "p999")}
            line.append(f"{part[:-3]} {vals['p50']:.3f}/{vals['p99']:.3f}/{vals['p999']:.3f}")
        print(f"  {name:9} " + " | ".join(line))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
