"""Soak run: iotbroker on RocksDB under a faulty device fleet for minutes; is it stable?

Starts iotbroker as a subprocess (RocksDB storage in a temp dir, the Prometheus endpoint
on, ``logging: WARNING``), drives it with the device simulator (``iotsim run`` on a
scenario this script writes: persistent-session QoS 1/2 telemetry, QoS 0 telemetry,
QoS 0 wildcard dashboards, random disconnects, abrupt closes that fire wills, clients
that stop reading for a while, a reconnect storm), and every ``--interval`` seconds
samples the broker's RSS, open fds, CPU (``/proc/PID``) and a few Prometheus values.

At the end it prints a summary and writes ``OUT/soak.json``: memory over time and the
RSS slope over the second half (MiB/min; on RocksDB the memtables make RSS a sawtooth
that drops at each WAL flush, so read the slope together with ``wal_flushes_at_s`` and
compare with ``--storage memory``), the simulator's accounting per QoS (nothing
acknowledged may be lost at QoS 1/2), latency percentiles, drops counted by the broker
by reason, and the broker's WARNING/ERROR log lines. ``OUT`` also holds the scenario,
the simulator's ``report.json``/``report.html``, the broker's config and log, and
``memory.svg`` (RSS and fds over time).

    .venv/bin/python benchmarks/soak.py                          # 10 min, 3,000 devices
    .venv/bin/python benchmarks/soak.py --duration 300 --out /tmp/soak
    .venv/bin/python benchmarks/soak.py --duration 60 --devices 500     # quick check
    .venv/bin/python benchmarks/soak.py --chart rss.svg "rocksdb=A/soak.json" "memory=B/soak.json"

Everything is bounded: the simulator ends itself after ``--duration`` (plus its ack and
drain timeouts) and is killed if it overruns by ``--grace`` seconds; the broker is
always stopped (SIGTERM, then SIGKILL) in a ``finally``. Exit status 0 when the
accounting is clean (no acknowledged QoS 1/2 message lost, no duplicate QoS 2), the
broker survived and logged no ERROR; 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from html import escape
from itertools import pairwise
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1 << 20

#: Prometheus samples recorded at every tick (name as exposed, labels sorted).
TRACKED = (
    "iotbroker_clients_connected",
    "iotbroker_connections_open",
    "iotbroker_sessions",
    "iotbroker_queued_messages",
    "iotbroker_inflight_messages",
    "iotbroker_subscriptions",
    "iotbroker_retained_messages",
    "iotbroker_event_loop_lag_max_seconds",
    "iotbroker_publish_received_total",
    "iotbroker_publish_sent_total",
    "iotbroker_wills_published_total",
    "iotbroker_slow_consumers_disconnected_total",
    "iotbroker_keepalive_timeouts_total",
    "iotbroker_session_takeovers_total",
    "iotbroker_storage_batches_total",
)
_LOG_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+(\S+): (.*)$")


# ----------------------------------------------------------------------- scenario
def scenario_yaml(devices: int, duration: float, interval: float, seed: int) -> str:
    """The soak scenario for ``devices`` telemetry devices over ``duration`` seconds.

    Groups: 50 % ``meters`` (MQTT 5, persistent session, QoS 1/2 half and half, will),
    35 % ``legacy`` (MQTT 3.1.1, CleanSession=0, QoS 1, will), 15 % ``sensors`` (MQTT 5,
    clean, QoS 0); four QoS 0 dashboards with wildcards (two see the whole fleet with
    ``+/+``, two the meters); two persistent QoS 1 ``archive`` subscribers of the legacy
    devices (MQTT 5, session expiry), so that messages queue for offline sessions; one
    QoS 2 accounting monitor.

    Timeline: the subscribers connect first, then the telemetry devices at 300 connects/s,
    steady, a reconnect storm (half the telemetry
    devices closed abruptly, back at 500/s) at 35 % of the run, steady to the end. Faults
    from 5 % to 90 % of the run: clean disconnects (2/s), abrupt closes (one per 5 s;
    wills fire), dashboards that stop reading for 20 s (one per minute) and meters that
    stop reading for 30 s (two per minute); archive subscribers disconnect for 10 s and
    stop reading for 20 s (one of each per minute). The memory slope is taken over the second
    half, after the storm.
    """
    meters = max(1, devices * 50 // 100)
    legacy = max(1, devices * 35 // 100)
    sensors = max(1, devices - meters - legacy)
    ramp_rate = 300
    storm_at = 0.35 * duration
    steady1 = max(1.0, storm_at - 2.0 - (devices + 6) / ramp_rate)
    f0, f1 = 0.05 * duration, 0.90 * duration
    abrupt = max(1, int(duration / 5))
    stuck_dash = max(1, int(duration / 60))
    stuck_meters = max(1, int(duration / 30))
    session_expiry = int(max(600, 2 * duration))
    return f"""\
# Written by benchmarks/soak.py (devices={devices}, duration={duration:g}s).
name: soak
description: persistent QoS 1/2 telemetry, QoS 0 dashboards, faults and a reconnect storm
duration: {duration:g}s
seed: {seed}
connect_rate: 300/s
ack_timeout: 10s
drain_timeout: 20s

defaults:
  keepalive: 60
  interval: {interval:g}s
  jitter: 20%

groups:
  - name: meters
    count: {meters}
    version: 5
    clean_start: false
    session_expiry: {session_expiry}s
    topic: "iotsim/{{run}}/meters/{{id}}"
    qos: {{1: 1, 2: 1}}
    max_inflight: 10
    payload: {{kind: random, size: 64}}
    will: {{topic: "iotsim/{{run}}/meters/{{id}}/will", payload: gone, qos: 1}}
  - name: legacy
    count: {legacy}
    version: 3.1.1
    clean_start: false
    topic: "iotsim/{{run}}/legacy/{{id}}"
    qos: 1
    payload:
      kind: json
      fields:
        temperature: {{random: [18.0, 26.0], decimals: 1}}
        reading: counter
    will: {{topic: "iotsim/{{run}}/legacy/{{id}}/will", qos: 1}}
  - name: sensors
    count: {sensors}
    version: 5
    topic: "iotsim/{{run}}/sensors/{{id}}"
    qos: 0
  - name: dash-all
    count: 2
    behaviour: dashboard
    version: 5
    subscribe: ["iotsim/{{run}}/+/+"]
    subscribe_qos: 0
  - name: dash-meters
    count: 2
    behaviour: dashboard
    version: 3.1.1
    subscribe: ["iotsim/{{run}}/meters/+"]
    subscribe_qos: 0
  - name: archive
    count: 2
    behaviour: dashboard
    version: 5
    clean_start: false
    session_expiry: {session_expiry}s
    subscribe: ["iotsim/{{run}}/legacy/+"]
    subscribe_qos: 1

monitors: {{count: 1, qos: 2, version: 5}}

# Subscribers first: iotsim expects every subscriber to get every message of a stream
# from sequence number 1, so one that subscribed after its publishers started would
# count their first messages as lost.
stages:
  - {{stage: ramp_up, rate: {ramp_rate}/s, groups: [dash-all, dash-meters, archive]}}
  - {{stage: steady, duration: 2s}}
  - {{stage: ramp_up, rate: {ramp_rate}/s, groups: [meters, legacy, sensors]}}
  - {{stage: steady, duration: {steady1:g}s}}
  - {{stage: reconnect_storm, fraction: 0.5, rate: 500/s, abrupt: true,
     groups: [meters, legacy, sensors]}}
  - {{stage: steady}}

faults:
  - {{kind: disconnect, rate: 2/s, start: {f0:g}s, end: {f1:g}s, downtime: 1s,
     groups: [meters, legacy, sensors]}}
  - {{kind: abrupt_close, count: {abrupt}, start: {f0:g}s, end: {f1:g}s, downtime: 1s,
     groups: [meters, legacy]}}
  - {{kind: stop_reading, count: {stuck_dash}, start: {f0:g}s, end: {f1:g}s, duration: 20s,
     groups: [dash-all, dash-meters]}}
  - {{kind: stop_reading, count: {stuck_meters}, start: {f0:g}s, end: {f1:g}s, duration: 30s,
     groups: [meters]}}
  - {{kind: disconnect, count: {stuck_dash}, start: {f0:g}s, end: {f1:g}s, downtime: 10s,
     groups: [archive]}}
  - {{kind: stop_reading, count: {stuck_dash}, start: {f0 + 15:g}s, end: {f1:g}s, duration: 20s,
     groups: [archive]}}
"""


def broker_yaml(data_dir: Path, durability: str, backend: str = "rocksdb") -> str:
    storage = (f"{{backend: rocksdb, path: {data_dir}, durability: {durability}}}"
               if backend == "rocksdb" else "{backend: memory}")
    return f"""\
listeners:
  - name: soak
    type: tcp
    host: 127.0.0.1
    port: 0
storage: {storage}
sys_topics: {{enabled: false}}
metrics: {{enabled: true, host: 127.0.0.1, port: 0}}
# WARNING for everything, except the two start-up lines we need to find the ports.
logging:
  level: WARNING
  levels: {{iotbroker.metrics: INFO, iotbroker.listeners: INFO}}
"""


# ------------------------------------------------------------------------- broker
def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_broker(workdir: Path, durability: str,
                 backend: str = "rocksdb") -> tuple[subprocess.Popen[bytes], int, str]:
    """Start iotbroker; return the process, the MQTT port and the metrics URL."""
    conf = workdir / "iotbroker.yaml"
    conf.write_text(broker_yaml(workdir / "data", durability, backend))
    log = workdir / "iotbroker.log"
    py = ROOT / ".venv" / "bin" / "python"
    exe = str(py) if py.exists() else sys.executable
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "-m", "iotbroker", "run", "--config", str(conf)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                preexec_fn=_raise_nofile)  # noqa: PLW1509 (no threads here)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text(errors="replace")
        m_url = re.search(r"metrics listening on (\S+):(\d+)", text)
        m_port = re.search(r"iotbroker\.listeners: listening on \S+:(\d+) ", text)
        if m_url and m_port:
            url = f"http://{m_url.group(1)}:{m_url.group(2)}/metrics"
            return proc, int(m_port.group(1)), url
        time.sleep(0.1)
    stop_broker(proc)
    raise RuntimeError(f"iotbroker did not start:\n{log.read_text(errors='replace')[-3000:]}")


def stop_broker(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then SIGKILL after 15 s; the exit status (None if it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


# ------------------------------------------------------------------------ samples
def proc_sample(pid: int) -> dict[str, float]:
    """CPU seconds, RSS, peak RSS, threads and open fds of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    return {
        "cpu_s": (int(fields[11]) + int(fields[12])) / _TICK,
        "rss_mib": int(fields[21]) * _PAGE / MiB,
        "hwm_mib": int(status["VmHWM"].split()[0]) / 1024,
        "threads": int(status["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def dir_sizes(path: Path) -> tuple[float, float]:
    """Total size and size of the RocksDB write-ahead logs (``*.log``) under ``path``, MiB.

    The WAL is what the memtables hold in memory until a flush, so its growth explains
    RSS growth of the broker on RocksDB (flushed at ``max_total_wal_size``)."""
    total = wal = 0
    for entry in path.rglob("*") if path.exists() else ():
        with contextlib.suppress(OSError):
            if entry.is_file():
                size = entry.stat().st_size
                total += size
                if entry.suffix == ".log" and entry.name != "LOG":
                    wal += size
    return total / MiB, wal / MiB


def scrape(url: str, timeout: float = 4.0) -> dict[str, float]:
    """Prometheus samples: ``name`` or ``name{k=v,...}`` -> value."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def tracked(values: dict[str, float]) -> dict[str, float]:
    keep = {}
    for key, value in values.items():
        base = key.split("{", 1)[0]
        if base in TRACKED or base == "iotbroker_messages_dropped_total":
            keep[key] = value
    return keep


def slope_mib_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return None
    sxy = sum((p[0] - mx) * (p[1] - my) for p in points)
    return sxy / sxx * 60


# -------------------------------------------------------------------------- logs
def log_summary(path: Path) -> dict[str, Any]:
    """WARNING/ERROR/CRITICAL lines of the broker log, grouped by message shape."""
    levels: Counter[str] = Counter()
    shapes: Counter[str] = Counter()
    examples: dict[str, str] = {}
    tracebacks = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("Traceback"):
            tracebacks += 1
        m = _LOG_LINE.match(line)
        if not m or m.group(1) in ("DEBUG", "INFO"):
            continue
        levels[m.group(1)] += 1
        shape = re.sub(r"\d+", "N", f"{m.group(1)} {m.group(2)}: {m.group(3)}")
        shape = re.sub(r"'[^']*'", "'…'", shape)[:160]
        shapes[shape] += 1
        examples.setdefault(shape, line[:300])
    return {
        "warning": levels["WARNING"], "error": levels["ERROR"],
        "critical": levels["CRITICAL"], "tracebacks": tracebacks,
        "top": [{"count": c, "shape": s, "example": examples[s]}
                for s, c in shapes.most_common(15)],
    }


# ------------------------------------------------------------------------- chart
def memory_svg(samples: list[dict[str, Any]], duration: float, slope: float | None) -> str:
    """RSS (MiB, left axis) and open fds (right axis) over time, hand-written SVG."""
    width, height, left, right, top, bottom = 760, 300, 60, 60, 40, 45
    pw, ph = width - left - right, height - top - bottom
    t_max = max([float(s["t"]) for s in samples] + [1.0])
    rss_max, _ = _axis(max([float(s["rss_mib"]) for s in samples] + [1.0]) * 1.1)
    fd_max, _ = _axis(max([float(s["fds"]) for s in samples] + [1.0]) * 1.1)

    def x(t: float) -> float:
        return left + pw * t / t_max

    def y(v: float, vmax: float) -> float:
        return top + ph * (1 - v / vmax)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" '
           'font-weight="bold">iotbroker soak: RSS (MiB) and open fds over time</text>']
    half = x(duration / 2)
    out.append(f'<rect x="{half}" y="{top}" width="{max(0.0, x(duration) - half)}" '
               f'height="{ph}" fill="#f3f7ff"/>')
    out.append(f'<text x="{half + 4}" y="{top + 14}" fill="#5577aa">second half: slope '
               f'{"-" if slope is None else f"{slope:+.3f}"} MiB/min</text>')
    for k in range(6):
        v = rss_max * k / 5
        out.append(f'<line x1="{left}" y1="{y(v, rss_max):.1f}" x2="{left + pw}" '
                   f'y2="{y(v, rss_max):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{y(v, rss_max) + 4:.1f}" text-anchor="end" '
                   f'fill="#1f5fbf">{v:.0f}</text>')
        fv = fd_max * k / 5
        out.append(f'<text x="{left + pw + 6}" y="{y(fv, fd_max) + 4:.1f}" fill="#c05000">'
                   f'{fv:.0f}</text>')
    step = 60 if t_max > 240 else 30 if t_max > 90 else 10
    t = 0.0
    while t <= t_max:
        out.append(f'<line x1="{x(t):.1f}" y1="{top + ph}" x2="{x(t):.1f}" '
                   f'y2="{top + ph + 4}" stroke="#555"/>')
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 17}" text-anchor="middle">'
                   f'{t:.0f}</text>')
        t += step
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">'
               'seconds since the simulator started</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
               'stroke="#999"/>')
    for key, vmax, color in (("rss_mib", rss_max, "#1f5fbf"), ("fds", fd_max, "#c05000")):
        pts = " ".join(f"{x(s['t']):.1f},{y(s[key], vmax):.1f}" for s in samples)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" '
                   'stroke-width="2"/>')
    out.append(f'<text x="{left + 8}" y="{top + ph - 8}" fill="#1f5fbf">RSS MiB (left)</text>')
    out.append(f'<text x="{left + 120}" y="{top + ph - 8}" fill="#c05000">'
               'open fds (right)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _axis(v: float) -> tuple[float, float]:
    """Axis maximum and tick step for values up to ``v`` (step 1/2/2.5/5 x 10^k)."""
    raw = max(v, 1e-9) / 7
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if step * mult >= raw:
            step *= mult
            break
    return float(math.ceil(v / step) * step), float(step)


def _ticks(vmax: float, step: float) -> list[float]:
    return [k * step for k in range(round(vmax / step) + 1)]


def compare_svg(runs: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """RSS over time of several soak runs (``--chart``), hand-written SVG."""
    colors = ("#1f5fbf", "#c05000", "#2a9d3a", "#8a2be2")
    width, height, left, right, top, bottom = 760, 300, 60, 20, 40, 45
    pw, ph = width - left - right, height - top - bottom
    pts = [s for _label, samples in runs for s in samples if not s.get("after_run")]
    t_max, t_step = _axis(max([float(s["t"]) for s in pts] + [1.0]))
    v_max, v_step = _axis(max([float(s["rss_mib"]) for s in pts] + [1.0]) * 1.05)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" '
           'font-weight="bold">iotbroker soak: broker RSS (MiB) over time</text>']
    for v in _ticks(v_max, v_step):
        yv = top + ph * (1 - v / v_max)
        out.append(f'<line x1="{left}" y1="{yv:.1f}" x2="{left + pw}" y2="{yv:.1f}" '
                   'stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{yv + 4:.1f}" text-anchor="end">{v:g}</text>')
    for t in _ticks(t_max, t_step):
        xv = left + pw * t / t_max
        out.append(f'<line x1="{xv:.1f}" y1="{top + ph}" x2="{xv:.1f}" y2="{top + ph + 4}" '
                   'stroke="#555"/>')
        out.append(f'<text x="{xv:.1f}" y="{top + ph + 17}" text-anchor="middle">{t:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">'
               'seconds since the simulator started</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
               'stroke="#999"/>')
    for i, (label, samples) in enumerate(runs):
        color = colors[i % len(colors)]
        line = " ".join(f"{left + pw * s['t'] / t_max:.1f},"
                        f"{top + ph * (1 - s['rss_mib'] / v_max):.1f}"
                        for s in samples if not s.get("after_run"))
        out.append(f'<polyline points="{line}" fill="none" stroke="{color}" '
                   'stroke-width="2"/>')
        out.append(f'<text x="{left + 10}" y="{top + 16 + 16 * i}" fill="{color}">'
                   f'{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    out = Path(args.out or tempfile.mkdtemp(prefix="iotbroker-soak-out-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="iotbroker-soak-"))
    scenario = out / "scenario.yaml"
    if args.scenario:
        shutil.copy(args.scenario, scenario)
    else:
        scenario.write_text(scenario_yaml(args.devices, args.duration, args.publish_interval,
                                          args.seed))
    samples: list[dict[str, Any]] = []
    final_metrics: dict[str, float] = {}
    sim_rc: int | None = None
    sim_killed = False
    broker_rc: int | None = None
    broker_alive = False
    started = datetime.datetime.now(datetime.UTC)
    proc, port, url = start_broker(workdir, args.durability, args.storage)
    print(f"iotbroker pid {proc.pid} on 127.0.0.1:{port}, metrics {url}, data {workdir}",
          file=sys.stderr, flush=True)
    try:
        time.sleep(0.5)
        base = proc_sample(proc.pid)
        sim_cmd = [sys.executable, "-m", "iotsim", "run", str(scenario),
                   "--host", "127.0.0.1", "--port", str(port),
                   "--duration", f"{args.duration:g}s", "--workers", str(args.workers),
                   "--report", str(out / "sim"), "--quiet", "--seed", str(args.seed)]
        t0 = time.monotonic()
        with open(out / "iotsim.log", "wb") as sim_log:
            sim = subprocess.Popen(sim_cmd, cwd=ROOT, stdout=sim_log, stderr=subprocess.STDOUT)
        try:
            prev_cpu, prev_t = base["cpu_s"], t0
            next_tick = t0
            hard_end = t0 + args.duration + args.grace
            while True:
                sim_rc = sim.poll()
                if sim_rc is not None:
                    break
                if time.monotonic() > hard_end:
                    sim.kill()
                    sim_killed = True
                    sim_rc = sim.wait()
                    break
                if proc.poll() is not None:
                    print(f"broker exited with {proc.returncode} during the run",
                          file=sys.stderr)
                    break
                now = time.monotonic()
                if now >= next_tick:
                    next_tick += args.interval
                    s = proc_sample(proc.pid)
                    db_mib, wal_mib = dir_sizes(workdir / "data")
                    row: dict[str, Any] = {
                        "t": round(now - t0, 1),
                        "rss_mib": round(s["rss_mib"], 2), "hwm_mib": round(s["hwm_mib"], 2),
                        "fds": s["fds"], "threads": s["threads"],
                        "db_mib": round(db_mib, 2), "wal_mib": round(wal_mib, 2),
                        "cpu_pct": round((s["cpu_s"] - prev_cpu) / max(now - prev_t, 1e-3)
                                         * 100, 1),
                    }
                    prev_cpu, prev_t = s["cpu_s"], now
                    try:
                        row["metrics"] = tracked(scrape(url))
                    except OSError as exc:
                        row["metrics_error"] = str(exc)
                    samples.append(row)
                    if not args.quiet:
                        m = row.get("metrics", {})
                        print(f"t={row['t']:6.0f}s rss {row['rss_mib']:7.1f} MiB "
                              f"fds {row['fds']:5d} cpu {row['cpu_pct']:5.1f}% clients "
                              f"{m.get('iotbroker_clients_connected', 0):5.0f} queued "
                              f"{m.get('iotbroker_queued_messages', 0):6.0f} lag_max "
                              f"{m.get('iotbroker_event_loop_lag_max_seconds', 0) * 1000:6.0f}"
                              " ms", file=sys.stderr, flush=True)
                time.sleep(min(0.5, max(0.05, next_tick - time.monotonic())))
        finally:
            if sim.poll() is None:
                sim.kill()
                sim_killed = True
                sim.wait()
        broker_alive = proc.poll() is None
        if broker_alive:
            # After the simulator has disconnected everyone: what is left behind?
            time.sleep(2.0)
            s = proc_sample(proc.pid)
            samples.append({"t": round(time.monotonic() - t0, 1), "after_run": True,
                            "rss_mib": round(s["rss_mib"], 2),
                            "hwm_mib": round(s["hwm_mib"], 2), "fds": s["fds"],
                            "threads": s["threads"], "cpu_pct": None})
            with contextlib.suppress(OSError):
                final_metrics = scrape(url)
    finally:
        broker_rc = stop_broker(proc)
    shutil.copy(workdir / "iotbroker.log", out / "iotbroker.log")
    shutil.copy(workdir / "iotbroker.yaml", out / "iotbroker.yaml")
    shutil.rmtree(workdir, ignore_errors=True)
    result = summarize(args, samples, final_metrics, out, base, started, sim_rc, sim_killed,
                       broker_alive, broker_rc)
    (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    chart = memory_svg([s for s in samples if not s.get("after_run")], args.duration,
                       result["memory"]["slope_second_half_mib_per_min"])
    (out / "memory.svg").write_text(chart)
    print_summary(result)
    print(f"\nwritten: {out}/soak.json, memory.svg, sim/report.html, iotbroker.log")
    return 0 if result["ok"] else 1


def summarize(args: argparse.Namespace, samples: list[dict[str, Any]],
              final_metrics: dict[str, float], out: Path, base: dict[str, float],
              started: datetime.datetime, sim_rc: int | None, sim_killed: bool,
              broker_alive: bool, broker_rc: int | None) -> dict[str, Any]:
    report_path = out / "sim" / "report.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {}
    during = [s for s in samples if not s.get("after_run")]
    second_half = [(s["t"], s["rss_mib"]) for s in during if s["t"] >= args.duration / 2
                   and s["t"] <= args.duration]
    slope = slope_mib_per_min(second_half)
    fd_half = [(s["t"], float(s["fds"])) for s in during if s["t"] >= args.duration / 2
               and s["t"] <= args.duration]
    fd_slope = slope_mib_per_min(fd_half)
    cpu = [s["cpu_pct"] for s in during if s.get("cpu_pct") is not None]
    lag = [s.get("metrics", {}).get("iotbroker_event_loop_lag_max_seconds", 0.0)
           for s in during]
    msgs = report.get("messages", {})
    by_qos = msgs.get("by_qos", {})
    lost_confirmed = sum(by_qos.get(q, {}).get("lost_confirmed", 0) for q in ("1", "2"))
    dup_violation = sum(by_qos.get(q, {}).get("duplicated_violation", 0) for q in ("0", "1", "2"))
    drops = {k.split("reason=", 1)[1].rstrip("}"): v for k, v in final_metrics.items()
             if k.startswith("iotbroker_messages_dropped_total{")}
    logs = log_summary(out / "iotbroker.log")
    interesting = ("connections_accepted_total", "connections_rejected_total",
                   "publish_received_total", "publish_sent_total", "wills_published_total",
                   "slow_consumers_disconnected_total", "keepalive_timeouts_total",
                   "session_takeovers_total", "malformed_packets_total", "protocol_errors_total",
                   "messages_expired_total", "storage_batches_total", "storage_changes_total",
                   "limit_hits", "sessions", "clients_connected", "clients_maximum",
                   "queued_messages", "inflight_messages", "subscriptions", "connections_open")
    broker_counters = {k.removeprefix("iotbroker_"): v for k, v in final_metrics.items()
                       if k.removeprefix("iotbroker_").split("{")[0] in interesting}
    rss_points = [s["rss_mib"] for s in during]
    minute_rows: list[dict[str, Any]] = []
    for s in during:
        if not minute_rows or s["t"] - minute_rows[-1]["t"] >= 59.5:
            minute_rows.append({k: s.get(k) for k in ("t", "rss_mib", "hwm_mib", "fds",
                                                       "cpu_pct", "wal_mib")}
                               | {"clients": s.get("metrics", {}).get(
                                   "iotbroker_clients_connected"),
                                  "queued": s.get("metrics", {}).get(
                                      "iotbroker_queued_messages")})
    if during and minute_rows[-1]["t"] != during[-1]["t"]:
        last = during[-1]
        minute_rows.append({k: last.get(k) for k in ("t", "rss_mib", "hwm_mib", "fds",
                                                      "cpu_pct", "wal_mib")}
                           | {"clients": last.get("metrics", {}).get(
                               "iotbroker_clients_connected"),
                              "queued": last.get("metrics", {}).get(
                                  "iotbroker_queued_messages")})
    after = [s for s in samples if s.get("after_run")]
    ok = (bool(report) and lost_confirmed == 0 and dup_violation == 0 and broker_alive
          and logs["error"] == 0 and logs["critical"] == 0 and not sim_killed)
    return {
        "schema": "iotbroker-soak/1",
        "ok": ok,
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {"host": platform.node(), "cpus": os.cpu_count(),
                    "kernel": platform.release(), "python": platform.python_version(),
                    "mem_total_mib": _mem_total_mib()},
        "args": {k: v for k, v in vars(args).items()},
        "simulator": {"exit_status": sim_rc, "killed": sim_killed,
                      "report_ok": report.get("ok"), "violations": report.get("violations"),
                      "errors": report.get("errors"), "counters": report.get("counters"),
                      "wall_s": report.get("run", {}).get("wall_s"),
                      "cpu_percent": report.get("cpu_percent"), "rss_mb": report.get("rss_mb")},
        "broker": {"alive_at_end": broker_alive, "exit_status_after_sigterm": broker_rc,
                   "rss_at_start_mib": round(base["rss_mib"], 2),
                   "cpu_percent_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
                   "cpu_percent_max": max(cpu) if cpu else None,
                   "event_loop_lag_max_s": max(lag) if lag else None,
                   "counters": broker_counters},
        "memory": {
            "rss_start_mib": round(base["rss_mib"], 2),
            "rss_peak_mib": max(rss_points) if rss_points else None,
            "hwm_mib": max((s["hwm_mib"] for s in samples), default=None),
            "rss_end_mib": rss_points[-1] if rss_points else None,
            "rss_after_disconnect_mib": after[0]["rss_mib"] if after else None,
            "fds_after_disconnect": after[0]["fds"] if after else None,
            "fds_peak": max((s["fds"] for s in during), default=None),
            "slope_second_half_mib_per_min": None if slope is None else round(slope, 4),
            "fd_slope_second_half_per_min": None if fd_slope is None else round(fd_slope, 3),
            # RocksDB memtable flushes: the WAL shrinks and RSS drops with it.
            "wal_flushes_at_s": [b["t"] for a, b in pairwise(during)
                                 if (b.get("wal_mib") or 0) < (a.get("wal_mib") or 0) - 1],
            "second_half_samples": len(second_half),
            "per_minute": minute_rows,
        },
        "devices": report.get("devices"),
        "messages": {
            "published": msgs.get("published"), "published_by_qos": msgs.get("published_by_qos"),
            "confirmed": msgs.get("confirmed"), "unconfirmed": msgs.get("unconfirmed"),
            "expected": msgs.get("expected"), "delivered": msgs.get("delivered"),
            "received": msgs.get("received"), "lost": msgs.get("lost"),
            "duplicated": msgs.get("duplicated"), "out_of_order": msgs.get("out_of_order"),
            "by_qos": by_qos,
            "lost_confirmed_qos12": lost_confirmed, "duplicate_violations": dup_violation,
        },
        "wills": report.get("wills"),
        "latency_ms": report.get("latency_ms"),
        "latency_per_second": per_second_latency(report),
        "publish_ack_latency_ms": report.get("publish_ack_latency_ms"),
        "connect_latency_ms": report.get("connect_latency_ms"),
        "drops_by_reason": drops,
        "log": logs,
        "samples": samples,
    }


def per_second_latency(report: dict[str, Any]) -> dict[str, Any]:
    """The simulator's per-second end-to-end latency rows, summarised.

    The whole-run percentiles mix steady state with what the faults cause on purpose
    (a dashboard that stops reading for 20 s gets its messages up to 20 s late); the
    distribution of the per-second p99 shows how often that happens.
    """
    rows = [r for r in report.get("timeseries", []) if r.get("p99_ms") is not None]
    if not rows:
        return {}
    p99 = sorted(r["p99_ms"] for r in rows)
    p50 = sorted(r["p50_ms"] for r in rows)

    def pick(values: list[float], q: float) -> float:
        return float(values[min(len(values) - 1, int(q * len(values)))])

    worst = max(rows, key=lambda r: r["max_ms"] or 0.0)
    return {
        "seconds": len(rows),
        "median_of_p50_ms": pick(p50, 0.5),
        "median_of_p99_ms": pick(p99, 0.5),
        "p90_of_p99_ms": pick(p99, 0.9),
        "seconds_with_max_over_100ms": sum(1 for r in rows if (r["max_ms"] or 0) > 100),
        "seconds_with_max_over_1s": sum(1 for r in rows if (r["max_ms"] or 0) > 1000),
        "worst_second": {"t": worst["t"], "max_ms": worst["max_ms"],
                         "delivered": worst["delivered"]},
    }


def _mem_total_mib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024)
    return None


def print_summary(r: dict[str, Any]) -> None:
    mem, msgs, b = r["memory"], r["messages"], r["broker"]
    what = (f"scenario {r['args']['scenario']}" if r["args"]["scenario"]
            else f"{r['args']['devices']} devices")
    print(f"\nsoak {'OK' if r['ok'] else 'NOT OK'}: {what}, "
          f"{r['args']['duration']:g} s, started {r['started_at']}")
    print("\nmemory (broker)")
    print("| t (s) | RSS MiB | peak RSS MiB | fds | CPU % | clients | queued | WAL MiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in mem["per_minute"]:
        print(f"| {row['t']:.0f} | {row['rss_mib']:.1f} | {row['hwm_mib']:.1f} | {row['fds']} "
              f"| {row['cpu_pct']} | {_n(row['clients'])} | {_n(row['queued'])} "
              f"| {row.get('wal_mib')} |")
    print(f"RSS start {mem['rss_start_mib']} MiB, peak {mem['rss_peak_mib']}, end "
          f"{mem['rss_end_mib']}, after disconnect {mem['rss_after_disconnect_mib']}; "
          f"slope over the second half {mem['slope_second_half_mib_per_min']} MiB/min "
          f"({mem['second_half_samples']} samples); fds peak {mem['fds_peak']}, after "
          f"disconnect {mem['fds_after_disconnect']}; WAL flushes (RSS drops) at "
          f"{mem['wal_flushes_at_s'] or 'none'} s")
    print(f"broker CPU mean {b['cpu_percent_mean']} %, max {b['cpu_percent_max']} %; "
          f"event-loop lag max {b['event_loop_lag_max_s']} s")
    print("\nmessages (simulator accounting)")
    print(f"published {msgs['published']} {msgs['published_by_qos']}, confirmed "
          f"{msgs['confirmed']}, delivered {msgs['delivered']} of {msgs['expected']} expected, "
          f"lost {msgs['lost']}, duplicated {msgs['duplicated']}, out of order "
          f"{msgs['out_of_order']}")
    print("| delivery QoS | expected | delivered | lost | lost (QoS 0 allowed) | "
          "lost unconfirmed | lost excused | LOST CONFIRMED | duplicated | dup violation |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for q, row in sorted((msgs["by_qos"] or {}).items()):
        print(f"| {q} | {row.get('expected')} | {row.get('delivered')} | {row.get('lost')} | "
              f"{row.get('lost_allowed_qos0')} | {row.get('lost_unconfirmed')} | "
              f"{row.get('lost_excused')} | {row.get('lost_confirmed')} | "
              f"{row.get('duplicated')} | {row.get('duplicated_violation')} |")
    print(f"wills {r['wills']}")
    for key in ("latency_ms", "publish_ack_latency_ms", "connect_latency_ms"):
        lat = r[key] or {}
        print(f"{key}: p50 {lat.get('p50')} p90 {lat.get('p90')} p99 {lat.get('p99')} "
              f"p99.9 {lat.get('p999')} max {lat.get('max')} (n={lat.get('count')})")
    print(f"per-second end-to-end latency: {r['latency_per_second']}")
    print(f"\ndrops counted by the broker: {r['drops_by_reason']}")
    print(f"broker counters: {b['counters']}")
    sim = r["simulator"]
    print(f"simulator: exit {sim['exit_status']}, ok {sim['report_ok']}, violations "
          f"{sim['violations']}, errors {sim['errors']}")
    lg = r["log"]
    print(f"\nbroker log: {lg['warning']} WARNING, {lg['error']} ERROR, {lg['critical']} "
          f"CRITICAL, {lg['tracebacks']} tracebacks")
    for row in lg["top"][:10]:
        print(f"  {row['count']:6d}  {row['example']}")


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    ap.add_argument("--devices", type=int, default=3000, help="telemetry devices (default 3000)")
    ap.add_argument("--publish-interval", type=float, default=5.0,
                    help="seconds between two messages of one device (default 5)")
    ap.add_argument("--interval", type=float, default=5.0, help="sampling period, s (default 5)")
    ap.add_argument("--grace", type=float, default=120.0,
                    help="kill the simulator this long after --duration (default 120)")
    ap.add_argument("--workers", type=int, default=1, help="simulator processes (default 1)")
    ap.add_argument("--durability", choices=("os", "fsync"), default="os")
    ap.add_argument("--storage", choices=("rocksdb", "memory"), default="rocksdb",
                    help="broker storage backend (default rocksdb; memory for comparison)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--scenario", help="use this scenario file instead of the generated one")
    ap.add_argument("--out", help="output directory (default: a new temp dir)")
    ap.add_argument("--quiet", action="store_true", help="no line per sample on stderr")
    ap.add_argument("--chart", nargs="+", metavar=("OUT.svg", "LABEL=SOAK.json"),
                    help="only draw the RSS of earlier runs into OUT.svg and exit")
    args = ap.parse_args()
    if args.chart:
        runs = []
        for spec in args.chart[1:]:
            label, _, path = spec.rpartition("=")
            runs.append((label or path, json.loads(Path(path).read_text())["samples"]))
        Path(args.chart[0]).write_text(compare_svg(runs))
        return
    if args.duration < 30:
        ap.error("--duration: at least 30 s")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
