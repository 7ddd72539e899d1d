"""End-to-end benchmark: iotbroker against mosquitto, same load generator, same run.

For each repetition both brokers are started fresh (each on its own free port on
127.0.0.1), every scenario of ``benchmarks/loadgen.py`` is run against both
(interleaved: the broker that goes first alternates per repetition), then both are
stopped by PID. Prints a table of medians with the iotbroker/mosquitto ratio and each
broker's CPU% (from /proc/PID/stat over the measurement window) and RSS.

    .venv/bin/python benchmarks/e2e.py                              # all, 3 reps, 5 s
    .venv/bin/python benchmarks/e2e.py --scenarios qos0,qos1 --reps 5 --duration 3
    .venv/bin/python benchmarks/e2e.py --persistence os --json /tmp/e2e.json
    .venv/bin/python benchmarks/e2e.py --mqtt5
    .venv/bin/python benchmarks/e2e.py --scenarios qos1,fanin --persistent-subscribers \
        --persistence fsync                                  # RocksDB really written
    .venv/bin/python benchmarks/e2e.py --scenarios latency --pin 0:1  # taskset
    .venv/bin/python benchmarks/e2e.py --scenarios connect --concurrency 1,8,64 \
        --iotbroker-python .venv-c/bin/python        # bounded-concurrency connect regimes

``--concurrency``: CONNECTs in flight in the connect scenario (the load generator's
default 64); several values run the scenario once per value, each against both brokers
(rows "connect cN"). ``--connect-rate N``: at most N new connections per second (the
broker idles between them, as with a fleet connecting at a fixed rate). Beside conn/s
the connect rows give CONNECT written -> CONNACK read p50/p99 in µs as the generator
saw it (with concurrency 1 the round trip; with more in flight it includes the
generator's own poll wait: read the generator CPU%), and the broker's CPU µs per
connection, split into user and system time.

``--persistent-subscribers``: the subscribers connect with Clean Session 0 (MQTT 5:
Clean Start 0 + Session Expiry 3600 s), so their in-flight and queued QoS 1 messages
are session state that iotbroker writes to RocksDB (with clean sessions nothing is
persisted and ``--persistence`` measures nothing but an idle store). Publishers stay
clean: a QoS 1 publisher has no persistent state. The sessions are discarded after
each scenario.

Broker settings (stated so the two are comparable):

* iotbroker: ``storage: memory`` (or rocksdb with ``--persistence os|fsync`` in a temp
  dir), ``sys_topics`` off, ``logging: WARNING``, ``mqtt.max_inflight`` 20,
  ``mqtt.max_queued_messages`` 10000.
* mosquitto: ``persistence false``, ``log_type none``, ``max_inflight_messages`` 20,
  ``max_queued_messages`` 10000, ``allow_anonymous true``, ``set_tcp_nodelay true``
  (uvloop, like asyncio, sets TCP_NODELAY on every TCP socket; ``--mosquitto-nagle``
  keeps mosquitto's default, Nagle on, which coalesces its one-write-per-packet output).

Both are started with RLIMIT_NOFILE raised to the hard limit (10,000 idle clients).

``--awake`` (a diagnostic, not a figure of the issue): one ``SCHED_IDLE`` busy loop
pinned to each CPU for the whole run, so that no CPU goes idle. On a virtual machine
whose idle vCPUs halt to the host (no guest halt polling), every message of the
``latency`` scenario otherwise arrives at a CPU that was given up for ~1 ms and
resumes with cold caches and TLB; the busy loops take none of the brokers' or the
generator's time (``SCHED_IDLE`` runs only when nothing else can) but keep the vCPUs
running. The difference between a run with and one without is what the idle wake-ups
cost each broker (docs/performance.md, "The 40 µs at the p50").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOADGEN = os.path.join(HERE, "loadgen.py")
ALL = ("connect", "qos0", "qos1", "fanout", "fanin", "latency")
INFLIGHT = 20
QUEUED = 10000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"broker did not listen on {port} within {timeout}s")


def taskset(cpus: str | None) -> list[str]:
    """argv prefix pinning a process to ``cpus`` (``--pin``), or nothing."""
    return ["taskset", "-c", cpus] if cpus else []


class Broker:
    def __init__(self, name: str, argv: list[str], port: int, workdir: str) -> None:
        self.name, self.argv, self.port, self.workdir = name, argv, port, workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = os.path.join(workdir, f"{name}.log")

    def start(self, timeout: float = 15.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_raise_nofile,  # noqa: PLW1509 (no threads)
                                         cwd=self.workdir)
        wait_port(self.port, self.proc, timeout)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_iotbroker(workdir: str, persistence: str | None,
                   park_idle_after: float | None = None,
                   park_on_accept: bool | None = None) -> Broker:
    """iotbroker for the scenarios; ``park_idle_after`` None keeps its default (30 s),
    ``park_on_accept`` None its default (on)."""
    port = free_port()
    if persistence:
        storage = (f"storage: {{backend: rocksdb, path: {workdir}/ibdata, "
                   f"durability: {persistence}}}")
    else:
        storage = "storage: {backend: memory}"
    items = [] if park_idle_after is None else [f"park_idle_after: {park_idle_after}"]
    if park_on_accept is not None:
        items.append(f"park_on_accept: {str(park_on_accept).lower()}")
    limits = f"limits: {{{', '.join(items)}}}" if items else ""
    cfg = os.path.join(workdir, "iotbroker.yaml")
    with open(cfg, "w") as f:
        f.write(f"""listeners:
  - name: bench
    type: tcp
    host: 127.0.0.1
    port: {port}
{storage}
sys_topics: {{enabled: false}}
logging: {{level: WARNING}}
mqtt: {{max_inflight: {INFLIGHT}, max_queued_messages: {QUEUED}}}
{limits}
""")
    return Broker("iotbroker", [iotbroker_python(), "-m", "iotbroker", "run", "--config", cfg],
                  port, workdir)


def make_shipped(workdir: str, binary: str) -> tuple[Broker, Broker]:
    """``--as-shipped``: each broker as a user first starts it. iotbroker on its embedded
    defaults (RocksDB in a fresh data dir, INFO logs with a line per connect and
    disconnect, $SYS topics, uvloop); mosquitto with a config holding only a listener
    and ``allow_anonymous true`` (its default logging, which also logs every connect
    and disconnect, to stderr; persistence off; Nagle on; max_queued_messages 1000)."""
    ib_port, mq_port = free_port(), free_port()
    ib = Broker("iotbroker", [iotbroker_python(), "-m", "iotbroker", "--listen",
                              f"127.0.0.1:{ib_port}", "--data-dir",
                              os.path.join(workdir, f"ibdata-{ib_port}")], ib_port, workdir)
    cfg = os.path.join(workdir, f"mosquitto-{mq_port}.conf")
    with open(cfg, "w") as f:
        f.write(f"listener {mq_port} 127.0.0.1\nallow_anonymous true\n")
    return ib, Broker("mosquitto", [binary, "-c", cfg], mq_port, workdir)


#: Environment variable naming the interpreter that runs iotbroker
#: (``--iotbroker-python`` sets it; the other benchmarks that import this module read it).
PYTHON_ENV = "IOTBROKER_BENCH_PYTHON"


def iotbroker_python() -> str:
    """The interpreter that runs iotbroker: ``$IOTBROKER_BENCH_PYTHON``
    (``--iotbroker-python``), the project's .venv, else this one."""
    if os.environ.get(PYTHON_ENV):
        return os.environ[PYTHON_ENV]
    py = os.path.join(ROOT, ".venv", "bin", "python")
    return py if os.path.exists(py) else sys.executable


def make_mosquitto(workdir: str, binary: str, nodelay: bool = True) -> Broker:
    port = free_port()
    cfg = os.path.join(workdir, "mosquitto.conf")
    with open(cfg, "w") as f:
        f.write(f"""listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages {INFLIGHT}
max_queued_messages {QUEUED}
log_type none
set_tcp_nodelay {"true" if nodelay else "false"}
""")
    return Broker("mosquitto", [binary, "-c", cfg], port, workdir)


def connect_variant(scenario: str) -> tuple[str, int | None]:
    """``connect c8`` -> ("connect", 8); other scenarios -> (name, None)."""
    if scenario.startswith("connect c"):
        return "connect", int(scenario.rsplit("c", maxsplit=1)[-1])
    return scenario, None


#: ``--awake``: a busy loop with a deadline (seconds), run at SCHED_IDLE on one CPU.
SPIN = "import time\nend = time.monotonic() + {0}\nwhile time.monotonic() < end:\n    pass\n"


def start_spinners(seconds: float) -> list[subprocess.Popen[bytes]]:
    """``--awake``: one SCHED_IDLE busy loop pinned to each CPU this process may use,
    each ending by itself after ``seconds`` (and stopped by PID at the end of the run)."""
    procs = []
    for cpu in sorted(os.sched_getaffinity(0)):
        def idle(cpu: int = cpu) -> None:
            os.sched_setaffinity(0, {cpu})
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        procs.append(subprocess.Popen([sys.executable, "-c", SPIN.format(seconds)],
                                      preexec_fn=idle))  # noqa: PLW1509 (no threads)
    return procs


def run_loadgen(broker: Broker, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    scenario, concurrency = connect_variant(scenario)
    argv = [*taskset(args.gen_cpus), sys.executable, LOADGEN, "run",
            "--port", str(broker.port), "--scenario", scenario,
            "--warmup", str(args.warmup), "--duration", str(args.duration),
            "--broker-pid", str(broker.pid), "--procs", str(args.procs)]
    if scenario == "connect":
        argv += ["--clients", str(args.clients), "--settle", str(args.settle)]
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        if args.connect_rate:
            argv += ["--connect-rate", str(args.connect_rate)]
    if args.mqtt5:
        argv.append("--mqtt5")
    if args.persistent_subscribers:
        argv.append("--persistent")
    if args.window:
        argv += ["--window", str(args.window)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {scenario} vs {broker.name} failed:\n{out.stderr[-2000:]}")
    res = json.loads(out.stdout)
    if scenario == "connect":  # flat keys for the table
        res["connack_p50_us"] = res["connack_us"]["p50"]
        res["connack_p99_us"] = res["connack_us"]["p99"]
    res.pop("latency_ms", None) if scenario != "latency" and not args.keep_latency else None
    return res


# Rows of the table: (label, scenario, key in the result, higher is better)
ROWS = [
    ("1->1 QoS 0 (msg/s)", "qos0", "rate", True),
    ("1->1 QoS 1 (msg/s)", "qos1", "rate", True),
    ("1->100 fan-out QoS 0 (deliveries/s)", "fanout", "rate", True),
    ("100->1 fan-in QoS 1 (msg/s)", "fanin", "rate", True),
    ("latency p99 @1000 msg/s QoS 1 (ms)", "latency", "rate", False),
    ("connect 10k idle clients (conn/s)", "connect", "rate", True),
    ("memory per idle connection (KiB)", "connect", "kib_per_conn", False),
    ("  CONNECT -> CONNACK p50 (µs)", "connect", "connack_p50_us", False),
    ("  CONNECT -> CONNACK p99 (µs)", "connect", "connack_p99_us", False),
    ("  broker CPU per connection (µs)", "connect", "broker_cpu_us_per_conn", False),
    ("  of which user (µs, ticks)", "connect", "broker_user_us_per_conn", False),
    ("  of which system (µs, ticks)", "connect", "broker_sys_us_per_conn", False),
]


def rows_for(scenarios: list[str]) -> list[tuple[str, str, str, bool]]:
    """ROWS, the connect rows once per ``connect cN`` variant."""
    out = []
    for label, sc, key, higher in ROWS:
        if sc != "connect":
            out.append((label, sc, key, higher))
    for sc in scenarios:
        if connect_variant(sc)[0] != "connect":
            continue
        for label, row_sc, key, higher in ROWS:
            if row_sc == "connect":
                name = label if sc == "connect" else label.replace(
                    "connect 10k idle clients", f"{sc} (10k clients,").replace(
                    "(conn/s)", "conn/s)").replace("memory per", f"{sc}: memory per")
                out.append((name, sc, key, higher))
    return out


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}" if digits else (f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}")


def summarize(results: dict[str, dict[str, list[dict[str, Any]]]]) -> tuple[str, list[dict]]:
    lines = []
    rows = []
    hdr = (f"| {'scenario':38} | {'iotbroker':>10} | {'mosquitto':>10} | {'ratio':>6} "
           f"| {'ratio/core':>10} | {'ib CPU%':>7} | {'mq CPU%':>7} | {'ib RSS MiB':>10} "
           f"| {'mq RSS MiB':>10} | {'loss ib/mq':>10} | {'gen CPU% ib/mq':>14} |")
    lines.append(hdr)
    lines.append("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for label, sc, key, higher in rows_for(list(results)):
        if sc not in results:
            continue
        ib, mq = results[sc].get("iotbroker", []), results[sc].get("mosquitto", [])
        v_ib, v_mq = med([r.get(key) for r in ib]), med([r.get(key) for r in mq])
        c_ib = med([r.get("broker_cpu_pct") for r in ib])
        c_mq = med([r.get("broker_cpu_pct") for r in mq])
        ratio = v_ib / v_mq if v_ib is not None and v_mq else None
        # Per core: throughput per broker CPU-second (only for rates).
        per_core = None
        if higher and key == "rate" and ratio is not None and c_ib and c_mq:
            pc_ib = statistics.median([r["rate"] / (r["broker_cpu_pct"] / 100) for r in ib
                                       if r.get("broker_cpu_pct")])
            pc_mq = statistics.median([r["rate"] / (r["broker_cpu_pct"] / 100) for r in mq
                                       if r.get("broker_cpu_pct")])
            per_core = pc_ib / pc_mq
        is_connect = connect_variant(sc)[0] == "connect"
        rss_key = "broker_rss_after_kib" if is_connect else "broker_rss_kib"
        rss_ib = med([r.get(rss_key) for r in ib])
        rss_mq = med([r.get(rss_key) for r in mq])
        loss = "-"
        if not is_connect:
            loss = f"{sum(r.get('loss', 0) for r in ib)}/{sum(r.get('loss', 0) for r in mq)}"
        else:
            loss = f"{sum(r.get('errors', 0) for r in ib)}/{sum(r.get('errors', 0) for r in mq)}"
        g_ib = med([r.get("gen_cpu_pct") for r in ib])
        g_mq = med([r.get("gen_cpu_pct") for r in mq])
        lines.append(
            f"| {label:38} | {fmt(v_ib):>10} | {fmt(v_mq):>10} | {fmt(ratio, 2):>6} "
            f"| {fmt(per_core, 2):>10} | {fmt(c_ib, 0):>7} | {fmt(c_mq, 0):>7} "
            f"| {fmt(rss_ib / 1024 if rss_ib else None, 1):>10} "
            f"| {fmt(rss_mq / 1024 if rss_mq else None, 1):>10} | {loss:>10} "
            f"| {fmt(g_ib, 0) + '/' + fmt(g_mq, 0):>14} |")
        rows.append({"label": label, "scenario": sc, "key": key, "higher_is_better": higher,
                     "iotbroker": v_ib, "mosquitto": v_mq, "ratio": ratio,
                     "ratio_per_core": per_core, "iotbroker_cpu_pct": c_ib,
                     "mosquitto_cpu_pct": c_mq, "n": (len(ib), len(mq)),
                     "iotbroker_write_mib_s": med([r.get("broker_write_mib_s") for r in ib]),
                     "gen_cpu_pct": (g_ib, g_mq)})
    return "\n".join(lines), rows


def main() -> None:
    ap = argparse.ArgumentParser(description="iotbroker vs mosquitto, end to end")
    ap.add_argument("--scenarios", default=",".join(ALL),
                    help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--procs", type=int, default=1, help="load generator processes")
    ap.add_argument("--clients", type=int, default=10000, help="connect scenario")
    ap.add_argument("--concurrency", default=None, metavar="N[,N...]",
                    help="connect scenario: CONNECTs in flight (loadgen default 64); several "
                         "values run the scenario once per value (rows 'connect cN')")
    ap.add_argument("--connect-rate", type=float, default=0.0, metavar="PER_SECOND",
                    help="connect scenario: start at most this many connections per second "
                         "(a fleet connecting at a fixed rate, e.g. 1000; default: as fast "
                         "as the concurrency allows)")
    ap.add_argument("--iotbroker-python", default=None, metavar="PYTHON",
                    help="interpreter that runs iotbroker (default: the project's .venv), "
                         "e.g. .venv-c/bin/python for a compiled build")
    ap.add_argument("--persistence", choices=("os", "fsync"), default=None,
                    help="iotbroker on rocksdb with this durability (default: memory)")
    ap.add_argument("--mqtt5", action="store_true", help="clients speak MQTT 5.0")
    ap.add_argument("--window", type=int, default=0,
                    help="unacknowledged QoS 1 PUBLISHes per publisher (loadgen default 100; "
                         "under MQTT 5 further capped by each broker's Receive Maximum: "
                         "mosquitto sends max_inflight_messages = 20, iotbroker 1024)")
    ap.add_argument("--persistent-subscribers", action="store_true",
                    help="subscribers keep their session (Clean Session 0 / v5 expiry 3600 s)")
    ap.add_argument("--pin", default=None, metavar="BROKER_CPUS:GEN_CPUS",
                    help="taskset both brokers to BROKER_CPUS and the load generator to "
                         "GEN_CPUS, e.g. 0:1")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--mosquitto-nagle", action="store_true",
                    help="leave mosquitto's set_tcp_nodelay at its default (false)")
    ap.add_argument("--as-shipped", action="store_true",
                    help="both brokers on their defaults, logging included (see make_shipped);"
                         " --persistence and --mosquitto-nagle do not apply")
    ap.add_argument("--park-idle-after", type=float, default=None, metavar="SECONDS",
                    help="iotbroker's limits.park_idle_after (server/parking.py; 0 = off; "
                         "default: the broker's default, 30 s)")
    ap.add_argument("--settle", type=float, default=1.0, metavar="SECONDS",
                    help="connect scenario: seconds idle before the RSS sample (> 37.5 to "
                         "see the default parking: parked 30 to 37.5 s after the last packet)")
    ap.add_argument("--awake", action="store_true",
                    help="diagnostic: a SCHED_IDLE busy loop on each CPU, so that no CPU "
                         "idles between messages (see the module's doc)")
    ap.add_argument("--json", dest="json_out", default=None, help="write raw results here")
    ap.add_argument("--keep-latency", action="store_true",
                    help="keep throughput scenarios' latency percentiles in the JSON")
    args = ap.parse_args()
    args.broker_cpus, args.gen_cpus = (args.pin.split(":") if args.pin else (None, None))
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in ALL:
            ap.error(f"unknown scenario {s!r}")
    if args.iotbroker_python:
        os.environ[PYTHON_ENV] = os.path.abspath(args.iotbroker_python)
    if args.concurrency and "connect" in scenarios:
        at = scenarios.index("connect")
        scenarios[at:at + 1] = [f"connect c{int(c)}" for c in args.concurrency.split(",")]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in scenarios}
    workdir = tempfile.mkdtemp(prefix="iotbroker-e2e-")
    brokers: list[Broker] = []
    t_start = time.time()
    spinners: list[subprocess.Popen[bytes]] = []
    if args.awake:
        bound = args.reps * len(scenarios) * 2 * (args.warmup + args.duration + 30) + 60
        spinners = start_spinners(bound)
    try:
        for rep in range(args.reps):
            if args.as_shipped:
                ib, mq = make_shipped(workdir, args.mosquitto)
            else:
                ib = make_iotbroker(workdir, args.persistence, args.park_idle_after)
                mq = make_mosquitto(workdir, args.mosquitto, not args.mosquitto_nagle)
            for b in (ib, mq):
                b.argv = [*taskset(args.broker_cpus), *b.argv]
            brokers = [ib, mq]
            for b in brokers:
                b.start()
            time.sleep(0.5)
            order = brokers if rep % 2 == 0 else brokers[::-1]
            for n_sc, sc in enumerate(scenarios):
                if n_sc and connect_variant(sc)[1] is not None:
                    # each connect variant on fresh brokers: its RSS growth and CPU are
                    # not those of a heap the previous variant's clients left behind
                    for b in brokers:
                        b.stop()
                    for b in brokers:
                        b.start()
                    time.sleep(0.5)
                for b in order:
                    res = run_loadgen(b, sc, args)
                    results[sc].setdefault(b.name, []).append(res)
                    extra = ""
                    if connect_variant(sc)[0] == "connect":
                        extra = (f" {res['kib_per_conn']:.2f} KiB/conn, CONNACK p50/p99 "
                                 f"{res['connack_p50_us']:.0f}/{res['connack_p99_us']:.0f} µs,"
                                 f" {res['broker_cpu_us_per_conn']:.1f} µs/conn (user "
                                 f"{res['broker_user_us_per_conn']:.1f}, sys "
                                 f"{res['broker_sys_us_per_conn']:.1f})")
                    print(f"rep {rep + 1}/{args.reps} {sc:8} {b.name:9} {res['rate']:>12,.2f} "
                          f"{res['unit']:12}{extra} broker CPU {res['broker_cpu_pct']:.0f}% "
                          f"gen CPU {res['gen_cpu_pct']:.0f}% loss {res.get('loss', 0)}",
                          file=sys.stderr, flush=True)
            for b in brokers:
                b.stop()
            if args.persistence:
                shutil.rmtree(os.path.join(workdir, "ibdata"), ignore_errors=True)
    finally:
        for b in brokers:
            with contextlib.suppress(Exception):
                b.stop()
        for sp in spinners:
            sp.kill()
            sp.wait()
    table, rows = summarize(results)
    build = subprocess.run([iotbroker_python(), "-m", "iotbroker", "--version"],
                           capture_output=True, text=True, check=False).stdout.strip()
    storage = "rocksdb/" + args.persistence if args.persistence else "memory"
    if args.as_shipped:
        storage = "defaults (iotbroker rocksdb), logging on"
    mode = f"{build}, storage={storage}, " \
           f"MQTT {'5.0' if args.mqtt5 else '3.1.1'}, subscribers " \
           f"{'persistent' if args.persistent_subscribers else 'clean'}" \
           + (f", pinned broker:{args.broker_cpus} gen:{args.gen_cpus}" if args.pin else "") \
           + (", CPUs kept awake (SCHED_IDLE busy loops)" if args.awake else "")
    print(f"\nmedians of {args.reps} reps, {args.duration:g} s after {args.warmup:g} s warm-up, "
          f"{mode}, mosquitto "
          f"{'Nagle' if args.mosquitto_nagle or args.as_shipped else 'TCP_NODELAY'}, "
          f"{args.procs} generator process(es), {time.time() - t_start:.0f} s total")
    print(table)
    for r in rows:
        if r.get("iotbroker_write_mib_s"):
            print(f"iotbroker storage writes during {r['scenario']}: "
                  f"{r['iotbroker_write_mib_s']:.1f} MiB/s (median, /proc/PID/io write_bytes)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "build": build, "rows": rows, "raw": results}, f,
                      indent=1)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
