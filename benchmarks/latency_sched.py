"""The broker's side of one QoS 1 message, from the kernel's view (issue 19, latency).

Runs ``loadgen.py --scenario latency`` (1 publisher at 1,000 msg/s, QoS 1, 1
subscriber, MQTT 3.1.1) against iotbroker and mosquitto (fresh broker per run,
alternating) while ``perf record`` takes the scheduler and system-call tracepoints of
the broker's process only, and splits each message's way through the broker:

* ``sched``: the broker is woken (``sched_wakeup``, done by the publisher's send on
  loopback) -> it runs (``sched_switch``);
* ``ret``: -> its ``epoll_wait`` returns;
* ``to-read``: -> the ``read`` of the PUBLISH enters; ``read``: its duration;
* ``user``: ``read`` returned -> the first ``write``/``sendto`` enters (all the
  broker's own work for the message: for iotbroker, Python; for mosquitto, C) and the
  system calls between them (``calls``: how many, median);
* ``write``: the first write's duration (loopback: it runs the receiver's TCP input
  and wakes the subscriber, the same for both brokers);
* ``wake->write``: ``sched_wakeup`` -> the first write returned.

Messages are the broker's wake-ups from a sleep that end in a read and a write. Needs
``perf`` and root. ``--fifo P``: broker and generator under SCHED_FIFO (``chrt``).

A second line per run counts what the broker does per message over the whole run
(publisher's messages: rate x (warm-up + duration)): ``cpu`` µs of CPU
(``/proc/PID/schedstat``: user and kernel, the writes that run the receivers' TCP
input included), ``wakes`` (switches to the broker), and system calls: ``epoll``,
``read``, ``write`` (write/sendto/writev/sendmsg) and ``other``.

    .venv/bin/python benchmarks/latency_sched.py [--reps 3 --duration 3 --fifo 10]
    .venv/bin/python benchmarks/latency_sched.py --brokers iotbroker,base --baseline DIR

Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from e2e import make_iotbroker, make_mosquitto  # noqa: E402

LOADGEN = os.path.join(HERE, "loadgen.py")
PARTS = ("sched", "ret", "to-read", "read", "user", "write", "wake->write")
# x86-64 system call numbers
SYS_READ, SYS_WRITE, SYS_SENDTO, SYS_WRITEV, SYS_SENDMSG = 0, 1, 44, 20, 46
SYS_EPOLL_WAIT, SYS_EPOLL_PWAIT = 232, 281
WRITES = {SYS_WRITE, SYS_SENDTO, SYS_WRITEV, SYS_SENDMSG}
LINE = re.compile(r"^\s*(\S+)\s+(\d+)\s+\[\d+\]\s+(\d+\.\d+):\s+(\S+):\s*(.*)$")


def fifo(priority: int) -> list[str]:
    return ["chrt", "-f", str(priority)] if priority else []


COUNTS = ("wakes", "epoll", "read", "write", "other")


def parse(script: str, pid: int,
          counts: dict[str, int] | None = None) -> tuple[dict[str, list[float]], list[int]]:
    """Per message, the parts in microseconds, and the syscalls between read and write;
    ``counts`` (if given) gets the run's totals of :data:`COUNTS`."""
    parts: dict[str, list[float]] = {p: [] for p in PARTS}
    calls: list[int] = []
    state: dict[str, float] = {}
    between = 0
    totals = counts if counts is not None else {}
    for c in COUNTS:
        totals[c] = 0
    for line in script.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        tid, t, event, rest = int(m.group(2)), float(m.group(3)) * 1e6, m.group(4), m.group(5)
        if event == "sched:sched_wakeup":
            if f"pid={pid} " in rest + " ":
                state = {"wake": t}
            continue
        if event == "sched:sched_switch":
            if f"next_pid={pid} " in rest:
                totals["wakes"] += 1
                if "wake" in state and "run" not in state:
                    state["run"] = t
            continue
        nr = int(re.search(r"NR (\d+)", rest).group(1))  # type: ignore[union-attr]
        if tid == pid and event == "raw_syscalls:sys_enter":
            kind = ("epoll" if nr in (SYS_EPOLL_WAIT, SYS_EPOLL_PWAIT) else "read"
                    if nr == SYS_READ else "write" if nr in WRITES else "other")
            totals[kind] += 1
        if tid != pid or "run" not in state:
            continue
        if event == "raw_syscalls:sys_exit":
            if nr in (SYS_EPOLL_WAIT, SYS_EPOLL_PWAIT) and "ret" not in state:
                state["ret"] = t
            elif nr == SYS_READ and "read0" in state and "read1" not in state:
                state["read1"] = t
                between = 0
            elif nr in WRITES and "write0" in state:
                s = state
                parts["sched"].append(s["run"] - s["wake"])
                parts["ret"].append(s["ret"] - s["run"])
                parts["to-read"].append(s["read0"] - s["ret"])
                parts["read"].append(s["read1"] - s["read0"])
                parts["user"].append(s["write0"] - s["read1"])
                parts["write"].append(t - s["write0"])
                parts["wake->write"].append(t - s["wake"])
                calls.append(between)
                state = {}
        elif event == "raw_syscalls:sys_enter" and "ret" in state:
            if nr == SYS_READ and "read0" not in state:
                state["read0"] = t
            elif nr in WRITES and "read1" in state:
                state["write0"] = t
            elif "read1" in state:
                between += 1
    return parts, calls


def _cpu_ns(pid: int) -> int:
    """CPU time of ``pid``'s main thread so far (ns, user + kernel)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def run_one(name: str, args: argparse.Namespace, workdir: str) -> dict[str, object]:
    broker = (make_iotbroker(workdir, None) if name in ("iotbroker", "base")
              else make_mosquitto(workdir, args.mosquitto))
    if name == "base":
        broker.argv = ["env", f"PYTHONPATH={args.baseline}", *broker.argv]
    broker.argv = [*fifo(args.fifo), *broker.argv]
    broker.start()
    data = os.path.join(workdir, f"{name}.perf")
    rec = None
    try:
        time.sleep(0.5)
        pid = broker.pid  # chrt and env exec: the broker's own
        flt = f"common_pid == {pid}"
        rec = subprocess.Popen(
            ["perf", "record", "-q", "-a", "-o", data,
             "-e", "sched:sched_wakeup", "--filter", f"pid == {pid}",
             "-e", "sched:sched_switch", "--filter", f"next_pid == {pid}",
             "-e", "raw_syscalls:sys_enter", "--filter", flt,
             "-e", "raw_syscalls:sys_exit", "--filter", flt],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        cpu0 = _cpu_ns(pid)
        out = subprocess.run([*fifo(args.fifo), sys.executable, LOADGEN, "run", "--port",
                              str(broker.port), "--scenario", "latency", "--warmup", "0.5",
                              "--duration", str(args.duration), "--rate", str(args.rate),
                              "--broker-pid", str(pid)],
                             capture_output=True, text=True, timeout=120, check=True)
        res = json.loads(out.stdout)
        cpu_ns = _cpu_ns(pid) - cpu0
    finally:
        if rec is not None:
            rec.send_signal(signal.SIGINT)
            rec.wait(timeout=30)
        broker.stop()
    script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,tid,cpu,time,event,trace"],
                            capture_output=True, text=True, check=True).stdout
    os.unlink(data)
    counts: dict[str, int] = {}
    parts, calls = parse(script, pid, counts)
    messages = args.rate * (0.5 + args.duration)  # loadgen's warm-up + duration
    per = {"cpu": cpu_ns / 1000 / messages, **{c: counts[c] / messages for c in COUNTS}}
    return {"broker": name, "n": len(calls), "e2e_ms": res["latency_ms"], "per_message": per,
            "p50": {k: statistics.median(v) if v else float("nan") for k, v in parts.items()},
            "p99": {k: sorted(v)[int(len(v) * 0.99)] if v else float("nan")
                    for k, v in parts.items()},
            "calls": statistics.median(calls) if calls else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default="iotbroker,mosquitto")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--fifo", type=int, default=0, metavar="PRIORITY")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--baseline", default=None)
    args = ap.parse_args()
    names = args.brokers.split(",")
    print(f"{'':24}" + "".join(f"{p:>12}" for p in PARTS) + "  calls  e2e p50/p99 ms")
    for rep in range(args.reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            with tempfile.TemporaryDirectory() as workdir:
                r = run_one(name, args, workdir)
            p50, p99 = r["p50"], r["p99"]
            assert isinstance(p50, dict) and isinstance(p99, dict)
            e2e = r["e2e_ms"]
            assert isinstance(e2e, dict)
            print(f"{name:10} n={r['n']:<6} p50 " + "".join(f"{p50[p]:12.1f}" for p in PARTS)
                  + f"  {r['calls']:5}  {e2e['p50']:.3f}/{e2e['p99']:.3f}")
            print(f"{'':21}p99 " + "".join(f"{p99[p]:12.1f}" for p in PARTS), flush=True)
            per = r["per_message"]
            assert isinstance(per, dict)
            print(f"{'':21}per message: " + ", ".join(
                f"{k} {v:.1f}" if k == "cpu" else f"{k} {v:.2f}" for k, v in per.items()),
                flush=True)


if __name__ == "__main__":
    main()
