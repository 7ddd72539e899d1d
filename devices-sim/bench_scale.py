"""Scale benchmark: N simulated devices publishing together against mosquitto and iotbroker.

Not a test: run it by hand (it takes about a minute per broker)::

    .venv/bin/python devices-sim/bench_scale.py --devices 10000 --interval 5s \\
        --duration 40s --brokers mosquitto,iotbroker --out docs/simulator-bench

Each broker is started here on a free loopback port with its open-files soft limit raised
(``ulimit -n``, at most the hard limit of 20,000), then ``iotsim sensors`` runs against it
in its own process (``--workers`` splits the fleet) with several source addresses. The
broker's CPU and RSS come from ``/proc``; the simulator's from its report. Prints one
table and writes ``OUT/<broker>/report.{json,html}`` and ``OUT/summary.json``.

``--nice -10`` starts both brokers and the simulator at that niceness, ``--fifo 10``
under the real-time policy SCHED_FIFO at that priority (``chrt``; the same for both
brokers), so other work on a shared machine delays them less (with ``--fifo``, not at
all: each of the three processes uses well under a core, the kernel keeps 5 % for the
rest in any case). ``--reps N`` runs each
broker N times, interleaved (the broker that goes first alternates per repetition), and
prints the medians; the reports of repetition k > 1 go to
``OUT/<broker>-k/``. ``--probe`` loads ``benchmarks/loop_probe`` into iotbroker and the
simulator (``PYTHONPATH``): every garbage collection and every event-loop stall of more
than 3 ms of each process, summarised per run (``broker_*`` and ``sim_*`` columns), so a
tail that comes from the simulator's own loop shows as such.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "benchmarks" / "loop_probe"
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu_rss(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and RSS bytes of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICK
    rss = int(fields[21]) * _PAGE
    return cpu, rss


def _nice(args: argparse.Namespace) -> str:
    """``nice -n N `` or ``chrt -f P `` for the commands that start the brokers and the
    simulator (the same for both brokers)."""
    if args.fifo:
        return f"chrt -f {args.fifo} "
    return f"nice -n {args.nice} " if args.nice else ""


def start_mosquitto(workdir: Path, nofile: int,
                    nice: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """mosquitto with ``ulimit -n`` raised in the command that starts it."""
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "max_queued_messages 100000\nmax_connections -1\n")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(["bash", "-c", f"ulimit -n {nofile} && exec {nice}{exe} -c {conf}"],
                            stdout=open(workdir / "mosquitto.log", "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def start_iotbroker(workdir: Path, nofile: int, env: dict[str, str] | None = None,
                    nice: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """``python -m iotbroker run`` (memory storage, INFO logs) with ``ulimit -n`` raised."""
    conf = workdir / "iotbroker.yaml"
    conf.write_text("listeners:\n  - name: default\n    type: tcp\n    host: 127.0.0.1\n"
                    "    port: 0\nstorage:\n  backend: memory\nlogging:\n  level: INFO\n"
                    "sys_topics:\n  enabled: false\nmqtt:\n  max_queued_messages: 100000\n")
    log = workdir / "iotbroker.log"
    cmd = f"ulimit -n {nofile} && exec {nice}{sys.executable} -m iotbroker run --config {conf}"
    proc = subprocess.Popen(["bash", "-c", cmd], stdout=open(log, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, cwd=workdir, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(r"listening on \S+:(\d+)", log.read_text(errors="replace"))
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"iotbroker did not start:\n{log.read_text(errors='replace')}")


def _idle_percent(seconds: float = 2.0) -> float:
    """The machine's idle CPU share (all cores) over ``seconds``, from /proc/stat."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total
    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return 100.0 * (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(least_idle: float, patience: float) -> float:
    """Wait (at most ``patience`` s) until the machine is at least ``least_idle`` %
    idle over 2 s; returns the last idle share seen (other work on a shared machine
    shows in every latency figure: the row says how quiet it was)."""
    deadline = time.monotonic() + patience
    while True:
        idle = _idle_percent()
        if idle >= least_idle or time.monotonic() >= deadline:
            return round(idle, 1)


def _probe_env(workdir: Path, who: str, phases: bool = False) -> dict[str, str]:
    """The environment that loads benchmarks/loop_probe into a process."""
    env = dict(os.environ)
    if phases:
        env["LOOP_PROBE_PHASES"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROBE), env.get("PYTHONPATH")) if p)
    env["LOOP_PROBE_OUT"] = str(workdir / f"probe-{who}")
    return env


def probe_summary(workdir: Path, who: str, t0: float, t1: float) -> dict[str, Any]:
    """GC pauses and loop stalls (> 3 ms) of one process between ``t0`` and ``t1``."""
    gcs: list[tuple[int, float]] = []
    lags: list[float] = []
    to_made: list[float] = []
    to_connect: list[float] = []
    to_connack: list[float] = []
    for path in workdir.glob(f"probe-{who}.*"):
        for line in path.read_text().splitlines():
            e = json.loads(line)
            if not t0 <= e["t"] <= t1:
                continue
            if e["k"] == "gc":
                gcs.append((e["gen"], e["ms"]))
            elif e["k"] == "lag":
                lags.append(e["ms"])
            elif e["k"] == "conn":
                if e.get("accepted"):
                    to_made.append((e["made"] - e["accepted"]) * 1000)
                to_connect.append((e["connect"] - e["made"]) * 1000)
                to_connack.append((e["connack"] - e["connect"]) * 1000)
    lags.sort()
    phases: dict[str, Any] = {}
    for label, values in (("accept_to_made", to_made), ("made_to_connect", to_connect),
                          ("connect_to_connack", to_connack)):
        if values:
            values.sort()
            phases[f"{who}_{label}_ms"] = [round(values[int(q * (len(values) - 1))], 3)
                                           for q in (0.5, 0.9, 0.99, 0.999, 1.0)]
    gc_ms = sorted(ms for _g, ms in gcs)
    return {
        f"{who}_stalls": len(lags),
        f"{who}_stall_max_ms": lags[-1] if lags else 0.0,
        f"{who}_stall_total_ms": round(sum(lags), 1),
        f"{who}_stalls_over_20ms": sum(1 for v in lags if v > 20),
        f"{who}_gc": [sum(1 for g, _ in gcs if g == k) for k in (0, 1, 2)],
        f"{who}_gc_max_ms": gc_ms[-1] if gc_ms else 0.0,
        f"{who}_gc_total_ms": round(sum(gc_ms), 1),
        **phases,
    }


def connect_on_the_wire(path: Path, port: int) -> dict[str, Any]:
    """From a capture of the broker's port: per connection, the client's SYN -> its
    CONNECT on the wire (the client's side) and the CONNECT on the wire -> the broker's
    CONNACK on the wire (the broker's whole share: accept queue, accept, read, handling,
    write), as p50/p90/p99/p99.9/max in ms."""
    import struct  # noqa: PLC0415

    data = path.read_bytes()
    nano = struct.unpack_from("<I", data, 0)[0] == 0xA1B23C4D
    l2 = {1: 14, 113: 16, 276: 20}[struct.unpack_from("<I", data, 20)[0]]
    syn: dict[int, int] = {}
    connect: dict[int, int] = {}
    connack: dict[int, int] = {}
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from("<IIII", data, pos)
        pkt = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        t = sec * 1_000_000_000 + (frac if nano else frac * 1000)
        ip = pkt[l2:]
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        tcp = ip[(ip[0] & 0x0F) * 4:]
        sport, dport = struct.unpack_from(">HH", tcp, 0)
        payload = tcp[(tcp[12] >> 4) * 4:]
        if dport == port:
            key = (int.from_bytes(ip[12:16], "big") << 16) | sport
            if tcp[13] & 0x02 and not tcp[13] & 0x10:
                syn.setdefault(key, t)
            elif payload[:1] == b"\x10":
                connect.setdefault(key, t)
        elif sport == port and payload[:2] == b"\x20\x02":
            connack.setdefault((int.from_bytes(ip[16:20], "big") << 16) | dport, t)

    def quantiles(values: list[float]) -> list[float]:
        values.sort()
        return [round(values[int(q * (len(values) - 1))], 3)
                for q in (0.5, 0.9, 0.99, 0.999, 1.0)] if values else []

    return {
        "wire_syn_to_connect_ms": quantiles([(connect[k] - syn[k]) / 1e6
                                             for k in connect if k in syn]),
        "wire_connect_to_connack_ms": quantiles([(connack[k] - connect[k]) / 1e6
                                                 for k in connack if k in connect]),
    }


def bench_one(name: str, args: argparse.Namespace, out: Path, rep: int = 1) -> dict[str, Any]:
    """Start one broker, run the fleet against it, stop it; the summary row."""
    idle = wait_quiet(args.quiet, args.quiet_patience) if args.quiet else None
    workdir = Path(tempfile.mkdtemp(prefix=f"iotsim-bench-{name}-"))
    if name == "mosquitto":
        proc, port = start_mosquitto(workdir, args.broker_nofile, _nice(args))
    else:
        proc, port = start_iotbroker(workdir, args.broker_nofile,
                                     _probe_env(workdir, "broker", args.phases)
                                     if args.probe else None,
                                     _nice(args))
    report_dir = out / (name if rep == 1 else f"{name}-{rep}")
    try:
        time.sleep(0.5)
        cpu0, rss0 = _proc_cpu_rss(proc.pid)
        t0 = time.monotonic()
        cmd = [*_nice(args).split(), sys.executable, "-m", "iotsim", "sensors",
               "--devices", str(args.devices),
               "--rate", f"1/{args.interval}", "--qos", str(args.qos), "--mqtt", args.mqtt,
               "--host", "127.0.0.1", "--port", str(port), "--duration", args.duration,
               "--connect-rate", args.connect_rate, "--workers", str(args.workers),
               "--source-addresses", str(args.source_addresses), "--keepalive", "120",
               "--report", str(report_dir), "--quiet"]
        peak_rss = rss0
        dump = None
        if args.pcap:
            dump = subprocess.Popen(
                ["tcpdump", "-i", "lo", "-s", "96", "-B", "65536", "-w",
                 str(workdir / "fleet.pcap"), "--time-stamp-precision", "nano",
                 f"tcp port {port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        mono0 = time.monotonic()
        sim = subprocess.Popen(cmd, cwd=ROOT,
                               env=_probe_env(workdir, "sim") if args.probe else None)
        while sim.poll() is None:
            time.sleep(1.0)
            if proc.poll() is None:
                peak_rss = max(peak_rss, _proc_cpu_rss(proc.pid)[1])
        wall = time.monotonic() - t0
        mono1 = time.monotonic()
        if dump is not None:
            dump.send_signal(signal.SIGINT)
            dump.wait(30)
        alive = proc.poll() is None
        cpu1 = _proc_cpu_rss(proc.pid)[0] if alive else cpu0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    report = json.loads((report_dir / "report.json").read_text())
    if rep == 1:
        _export_charts(report, out / name)
    d, m, lat = report["devices"], report["messages"], report["latency_ms"]
    probes: dict[str, Any] = {}
    if args.pcap:
        probes.update(connect_on_the_wire(workdir / "fleet.pcap", port))
    if args.probe:
        probes.update(probe_summary(workdir, "sim", mono0, mono1))
        if name != "mosquitto":
            probes.update(probe_summary(workdir, "broker", mono0, mono1))
    return {
        "broker": name, "rep": rep, "idle_before": idle,
        "load_after": round(os.getloadavg()[0], 2), "devices": args.devices,
        "connected": d["connected"],
        "failed": d["failed"], "peak_connected": d["peak_connected"],
        "published": m["published"], "delivered": m["delivered"], "lost": m["lost"],
        "duplicated": m["duplicated"], "published_per_s": m["published_per_s"],
        "p50_ms": lat["p50"], "p99_ms": lat["p99"], "max_ms": lat["max"],
        "connect_p99_ms": report["connect_latency_ms"]["p99"],
        # the simulator's split of a connect (iotsim report "connect_phases_ms")
        "connect_tcp_p99_ms": report["connect_phases_ms"]["tcp"]["p99"],
        "connect_connack_p99_ms": report["connect_phases_ms"]["connack"]["p99"],
        "connect_resume_p99_ms": report["connect_phases_ms"]["resume"]["p99"],
        "ok": report["ok"], "errors": report["errors"],
        "sim_cpu_percent": report["cpu_percent"], "sim_rss_mb": report["rss_mb"],
        "sim_kb_per_device": report["per_device"]["rss_kb"],
        "sim_cpu_percent_per_1k": report["per_device"]["cpu_percent_per_1k_devices"],
        "broker_alive_at_end": alive,
        "broker_cpu_percent": round((cpu1 - cpu0) / wall * 100, 1),
        "broker_peak_rss_mb": round(peak_rss / 2**20, 1),
        "broker_log": str(workdir / ("mosquitto.log" if name == "mosquitto"
                                     else "iotbroker.log")),
        **probes,
    }


def _export_charts(report: dict[str, Any], prefix: Path) -> None:
    """``PREFIX-throughput.svg`` and ``PREFIX-latency.svg`` for the docs."""
    from iotsim.html import line_chart  # noqa: PLC0415

    rows = report["timeseries"]
    ts = [float(r["t"]) for r in rows]
    throughput = line_chart(
        f"{prefix.name}: messages per second", ts,
        [("published", [float(r["published"]) for r in rows]),
         ("delivered", [float(r["delivered"]) for r in rows]),
         ("connected/10", [r["connected"] / 10 for r in rows])], "seconds", "msg/s")
    latency = line_chart(
        f"{prefix.name}: end-to-end latency per second", ts,
        [("p50", [r["p50_ms"] for r in rows]), ("p99", [r["p99_ms"] for r in rows]),
         ("max", [r["max_ms"] for r in rows])], "seconds", "ms")
    Path(f"{prefix}-throughput.svg").write_text(throughput + "\n")
    Path(f"{prefix}-latency.svg").write_text(latency + "\n")


def main() -> int:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--interval", default="5s", help="publish interval per device")
    p.add_argument("--qos", type=int, default=1)
    p.add_argument("--mqtt", default="3.1.1", choices=("3.1.1", "5"))
    p.add_argument("--duration", default="40s")
    p.add_argument("--connect-rate", default="1000/s")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--source-addresses", type=int, default=4)
    p.add_argument("--broker-nofile", type=int, default=20_000)
    p.add_argument("--brokers", default="mosquitto,iotbroker")
    p.add_argument("--out", default=str(ROOT / "docs" / "simulator-bench"))
    p.add_argument("--reps", type=int, default=1,
                   help="repetitions per broker, interleaved; medians printed")
    p.add_argument("--quiet", type=float, default=0.0, metavar="IDLE_PERCENT",
                   help="before each run wait until the machine is this idle (over 2 s)")
    p.add_argument("--quiet-patience", type=float, default=120.0, metavar="SECONDS",
                   help="longest wait for --quiet")
    p.add_argument("--nice", type=int, default=0,
                   help="run the brokers and the simulator at this niceness (-10: other "
                        "work on a shared machine delays them less; root only)")
    p.add_argument("--fifo", type=int, default=0, metavar="PRIORITY",
                   help="run the brokers and the simulator under SCHED_FIFO at this "
                        "priority (chrt -f; root only): on a machine shared with other "
                        "work, their wake-ups are not queued behind it")
    p.add_argument("--pcap", action="store_true",
                   help="capture the broker's port (tcpdump) and report each connect's "
                        "CONNECT -> CONNACK on the wire (p50/p90/p99/p99.9/max)")
    p.add_argument("--probe", action="store_true",
                   help="record GC pauses and loop stalls of iotbroker and the simulator")
    p.add_argument("--phases", action="store_true",
                   help="with --probe: iotbroker's accept -> connection_made -> CONNECT "
                        "-> CONNACK times "
                        "(p50/p90/p99/p99.9/max; pure build only)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.brokers.split(",")
    cols = ["broker", "rep", "idle_before", "load_after", "connected", "failed", "published",
            "delivered", "lost", "duplicated", "p50_ms", "p99_ms", "max_ms", "connect_p99_ms",
            "connect_tcp_p99_ms", "connect_connack_p99_ms", "connect_resume_p99_ms",
            "sim_cpu_percent", "broker_cpu_percent", "broker_peak_rss_mb", "ok"]
    if args.probe:
        cols += ["sim_stalls", "sim_stall_max_ms", "sim_stalls_over_20ms", "sim_gc",
                 "sim_gc_max_ms", "broker_stalls", "broker_stall_max_ms",
                 "broker_stalls_over_20ms", "broker_gc", "broker_gc_max_ms"]
    if args.phases:
        cols += ["broker_accept_to_made_ms", "broker_made_to_connect_ms",
                 "broker_connect_to_connack_ms"]
    if args.pcap:
        cols += ["wire_syn_to_connect_ms", "wire_connect_to_connack_ms"]
    print(" | ".join(cols), flush=True)
    rows: list[dict[str, Any]] = []
    for rep in range(1, args.reps + 1):
        for name in names if rep % 2 else names[::-1]:
            r = bench_one(name, args, out, rep)
            rows.append(r)
            print(" | ".join(str(r.get(c, "-")) for c in cols), flush=True)
            if r["errors"]:
                print(f"  errors: {r['errors']}", flush=True)
    medians: dict[str, dict[str, float]] = {}
    for name in names:
        mine = [r for r in rows if r["broker"] == name]
        medians[name] = {c: statistics.median(float(r[c]) for r in mine)
                         for c in ("p50_ms", "p99_ms", "max_ms", "connect_p99_ms",
                                   "connect_tcp_p99_ms", "connect_connack_p99_ms",
                                   "connect_resume_p99_ms", "sim_cpu_percent",
                                   "broker_cpu_percent")}
        print(f"median of {len(mine)} {name}: " + ", ".join(
            f"{k} {v:g}" for k, v in medians[name].items()), flush=True)
    (out / "summary.json").write_text(json.dumps(
        {"args": vars(args), "results": rows, "medians": medians}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
