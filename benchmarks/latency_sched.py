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
    .venv/bin/python benchmarks/latency_sched.py --fifo 10 --evict 64 --json F --records

Per phase the p50, p90, p99 and max; then the slowest 1 % of messages by wake->write
(after the connects and loadgen's 0.5 s warm-up): each phase's median there and in the
rest, and how often each was preempted, page-faulted (``exceptions:page_fault_user``),
moved to another CPU, made other system calls, was woken by something other than the
generator, got more than one event from ``epoll_wait`` or had one return none (a timer)
before, and how long the broker had slept. Then the slow-CPU windows
(:func:`episodes`): 100 ms windows in which the kernel's own ``write`` is 1.5x its
median or more, and each phase there against the other windows. ``--evict MIB``
runs a noisy neighbour copying MIB MiB in a loop (nice 19) during each run,
``--evict-procs N`` N of them.

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
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from e2e import make_iotbroker, make_mosquitto  # noqa: E402

LOADGEN = os.path.join(HERE, "loadgen.py")
PARTS = ("sched", "ret", "to-read", "read", "user", "write", "wake->write")
# x86-64 system call numbers
SYS_READ, SYS_WRITE, SYS_SENDTO, SYS_WRITEV, SYS_SENDMSG = 0, 1, 44, 20, 46
SYS_EPOLL_WAIT, SYS_EPOLL_PWAIT = 232, 281
WRITES = {SYS_WRITE, SYS_SENDTO, SYS_WRITEV, SYS_SENDMSG}
LINE = re.compile(r"^\s*(\S+)\s+(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+(\S+):\s*(.*)$")


def fifo(priority: int) -> list[str]:
    return ["chrt", "-f", str(priority)] if priority else []


COUNTS = ("wakes", "epoll", "read", "write", "other", "faults")


def parse(script: str, pid: int,
          counts: dict[str, int] | None = None,
          records: list[dict[str, object]] | None = None,
          ) -> tuple[dict[str, list[float]], list[int]]:
    """Per message, the parts in microseconds, and the syscalls between read and write;
    ``counts`` (if given) gets the run's totals of :data:`COUNTS`; ``records`` (if given)
    gets one dict per message: its parts and what came with it (see :func:`slowest`)."""
    parts: dict[str, list[float]] = {p: [] for p in PARTS}
    calls: list[int] = []
    state: dict[str, float] = {}
    between = 0
    totals = counts if counts is not None else {}
    for c in COUNTS:
        totals[c] = 0
    # context of the message being built, and of what the broker did since the last one
    ctx: dict[str, object] = {}
    since: dict[str, float] = {"reads": 0, "wakes": 0, "other": 0, "faults": 0}
    last_write_end = 0.0
    last_sleep = 0.0  # the broker's last switch away in state S (sleep) - its time
    last_epoll_ret = -1
    last_cpu = -1
    for line in script.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        tid, cpu, t = int(m.group(2)), int(m.group(3)), float(m.group(4)) * 1e6
        event, rest = m.group(5), m.group(6)
        if event == "sched:sched_wakeup":
            if f"pid={pid} " in rest + " ":
                state = {"wake": t}
                ctx = {"waker": m.group(1), "slept_us": t - last_sleep if last_sleep else -1.0,
                       "since_last_us": t - last_write_end if last_write_end else -1.0,
                       "before": dict(since), "prev_epoll_ret": last_epoll_ret,
                       "preempted": 0, "faults": 0, "extra_reads": 0, "other_calls": []}
                since["wakes"] += 1
            continue
        if event == "sched:sched_switch":
            if f"next_pid={pid} " in rest:
                totals["wakes"] += 1
                if "wake" in state and "run" not in state:
                    state["run"] = t
                    ctx["cpu"] = cpu
                    ctx["migrated"] = int(last_cpu >= 0 and cpu != last_cpu)
                last_cpu = cpu
            elif f"prev_pid={pid} " in rest:
                st = re.search(r"prev_state=(\S+)", rest)
                if st and st.group(1).startswith("S"):
                    last_sleep = t
                elif "run" in state:
                    ctx["preempted"] = int(ctx.get("preempted", 0)) + 1  # type: ignore[call-overload]
            continue
        if event.startswith("exceptions:page_fault"):
            if tid == pid:
                totals["faults"] += 1
                since["faults"] += 1
                if "run" in state:
                    ctx["faults"] = int(ctx.get("faults", 0)) + 1  # type: ignore[call-overload]
            continue
        nrm = re.search(r"NR (\d+)", rest)
        if nrm is None:
            continue
        nr = int(nrm.group(1))
        if tid == pid and event == "raw_syscalls:sys_enter":
            kind = ("epoll" if nr in (SYS_EPOLL_WAIT, SYS_EPOLL_PWAIT) else "read"
                    if nr == SYS_READ else "write" if nr in WRITES else "other")
            totals[kind] += 1
            if kind in ("read", "other"):
                since[kind + "s" if kind == "read" else kind] += 1
        if tid == pid and event == "raw_syscalls:sys_exit" and nr in (
                SYS_EPOLL_WAIT, SYS_EPOLL_PWAIT):
            rv = re.search(r"= (-?\d+)", rest)
            last_epoll_ret = int(rv.group(1)) if rv else -1
        if tid != pid or "run" not in state:
            continue
        if event == "raw_syscalls:sys_exit":
            if nr in (SYS_EPOLL_WAIT, SYS_EPOLL_PWAIT) and "ret" not in state:
                state["ret"] = t
                ctx["epoll_ret"] = last_epoll_ret
            elif nr == SYS_READ and "read0" in state and "read1" not in state:
                state["read1"] = t
                rv = re.search(r"= (-?\d+)", rest)
                ctx["read_bytes"] = int(rv.group(1)) if rv else -1
                between = 0
            elif nr in WRITES and "write0" in state:
                rv = re.search(r"= (-?\d+)", rest)
                ctx["write_bytes"] = int(rv.group(1)) if rv else -1  # 4: a PUBACK first
                s = state
                rec = {"sched": s["run"] - s["wake"], "ret": s["ret"] - s["run"],
                       "to-read": s["read0"] - s["ret"], "read": s["read1"] - s["read0"],
                       "user": s["write0"] - s["read1"], "write": t - s["write0"],
                       "wake->write": t - s["wake"]}
                for k, v in rec.items():
                    parts[k].append(v)
                calls.append(between)
                if records is not None:
                    records.append({**rec, **ctx, "calls": between, "t": s["wake"]})
                state = {}
                last_write_end = t
                since = {"reads": 0, "wakes": 0, "other": 0, "faults": 0}
        elif event == "raw_syscalls:sys_enter" and "ret" in state:
            if nr == SYS_READ and "read0" not in state:
                state["read0"] = t
            elif nr == SYS_READ and "read1" in state:
                ctx["extra_reads"] = int(ctx.get("extra_reads", 0)) + 1  # type: ignore[call-overload]
                between += 1
            elif nr in WRITES and "read1" in state:
                state["write0"] = t
            elif "read1" in state:
                between += 1
                oc = ctx.get("other_calls")
                if isinstance(oc, list):
                    oc.append(nr)
            elif "read0" not in state and nr not in (SYS_EPOLL_WAIT, SYS_EPOLL_PWAIT):
                oc = ctx.get("other_calls")
                if isinstance(oc, list):
                    oc.append(nr)
    return parts, calls


def pctl(v: list[float], q: float) -> float:
    """The ``q`` quantile of ``v`` (nearest rank), NaN when empty."""
    if not v:
        return float("nan")
    s = sorted(v)
    return s[min(len(s) - 1, int(len(s) * q))]


def episodes(records: list[dict[str, object]], window_us: float = 100_000,
             factor: float = 1.5) -> dict[str, object]:
    """Slow-CPU windows: the run cut in ``window_us`` windows, a window is slow when its
    median ``write`` (the kernel's loopback send, the same code for both brokers) is
    ``factor`` x the run's median or more. Per part the median in normal and in slow
    windows, the share of messages in slow windows, and the share of the slowest 1 %
    (by wake->write) that lie in them."""
    if not records:
        return {}
    t0 = float(records[0]["t"])  # type: ignore[arg-type]
    wins: dict[int, list[dict[str, object]]] = {}
    for r in records:
        wins.setdefault(int((float(r["t"]) - t0) // window_us), []).append(r)  # type: ignore[arg-type]
    wmed = statistics.median(float(r["write"]) for r in records)  # type: ignore[arg-type]
    slow: list[dict[str, object]] = []
    norm: list[dict[str, object]] = []
    for rs in wins.values():
        (slow if statistics.median(float(r["write"]) for r in rs)  # type: ignore[arg-type]
         >= factor * wmed else norm).extend(rs)
    ordered = sorted(records, key=lambda r: float(r["wake->write"]))  # type: ignore[arg-type]
    top = ordered[-max(1, len(ordered) // 100):]
    ids = {id(r) for r in slow}

    def med(rs: list[dict[str, object]], k: str) -> float:
        return statistics.median(float(r[k]) for r in rs) if rs else float("nan")  # type: ignore[arg-type]

    return {"share": len(slow) / len(records),
            "top_in_slow": sum(1 for r in top if id(r) in ids) / len(top),
            "normal": {p: med(norm, p) for p in PARTS},
            "slow": {p: med(slow, p) for p in PARTS}}


def slowest(records: list[dict[str, object]], share: float = 0.01) -> dict[str, object]:
    """The slowest ``share`` of messages by wake->write: each part's median there against
    all messages' median (which part is long), and what came with them: how often the
    broker was preempted, page-faulted, migrated to the other CPU, made other system
    calls, had been woken by something other than the publisher, or had an ``epoll_wait``
    return more than one event or none (a timer) just before; and what it did between
    the previous message's write and this wake-up (reads, wake-ups, faults)."""
    if not records:
        return {}
    recs = sorted(records, key=lambda r: float(r["wake->write"]))  # type: ignore[arg-type]
    n = max(1, int(len(recs) * share))
    slow, rest = recs[-n:], recs[:-n]

    def med(rs: list[dict[str, object]], k: str) -> float:
        return statistics.median(float(r[k]) for r in rs) if rs else float("nan")  # type: ignore[arg-type]

    def frac(rs: list[dict[str, object]], test: object) -> float:
        return sum(1 for r in rs if test(r)) / len(rs) if rs else float("nan")  # type: ignore[operator]

    flags = {
        "preempted": lambda r: int(r.get("preempted", 0)) > 0,
        "faulted": lambda r: int(r.get("faults", 0)) > 0,
        "migrated": lambda r: int(r.get("migrated", 0)) > 0,
        "other_calls": lambda r: bool(r.get("other_calls")),
        "waker_not_gen": lambda r: not str(r.get("waker", "")).startswith("python"),
        "epoll>1": lambda r: int(r.get("epoll_ret", 1)) > 1,
        "prev_epoll0": lambda r: int(r.get("prev_epoll_ret", 1)) == 0,
        "faults_before": lambda r: int(r["before"]["faults"]) > 0,  # type: ignore[index]
        "reads_before>1": lambda r: int(r["before"]["reads"]) > 1,  # type: ignore[index]
        "slept<200us": lambda r: 0 <= float(r.get("slept_us", -1)) < 200,
    }
    return {
        "n": n, "threshold_us": float(slow[0]["wake->write"]),  # type: ignore[arg-type]
        "parts_slow": {p: med(slow, p) for p in PARTS},
        "parts_rest": {p: med(rest, p) for p in PARTS},
        "slept_us": (med(slow, "slept_us"), med(rest, "slept_us")),
        "flags": {k: (frac(slow, f), frac(rest, f)) for k, f in flags.items()},
        "examples": [{k: v for k, v in r.items()} for r in slow[-5:]],
    }


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
    sweepers: list[subprocess.Popen[bytes]] = []
    for _ in range(args.evict_procs if args.evict else 0):
        # a noisy neighbour: copies --evict MiB over and over (memcpy: the last-level
        # cache and the TLBs refilled with its data), at nice 19 so that it only takes
        # the CPU time the FIFO broker and generator leave
        sweepers.append(subprocess.Popen(
            ["nice", "-n", "19", sys.executable, "-c",
             f"a = bytearray({args.evict} << 20); b = bytes(a)\n"
             "while True:\n    a[:] = b"]))
    try:
        time.sleep(0.5)
        pid = broker.pid  # chrt and env exec: the broker's own
        flt = f"common_pid == {pid}"
        rec = subprocess.Popen(
            ["perf", "record", "-q", "-a", "-o", data,
             "-e", "sched:sched_wakeup", "--filter", f"pid == {pid}",
             "-e", "sched:sched_switch",
             "--filter", f"next_pid == {pid} || prev_pid == {pid}",
             *(["-e", "exceptions:page_fault_user", "--filter", flt] if args.faults else []),
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
        for sw in sweepers:
            sw.kill()
            sw.wait()
        broker.stop()
    script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,tid,cpu,time,event,trace"],
                            capture_output=True, text=True, check=True).stdout
    os.unlink(data)
    counts: dict[str, int] = {}
    records: list[dict[str, object]] = []
    parts, calls = parse(script, pid, counts, records)
    # the slowest-1 % view leaves out the connects and loadgen's warm-up (0.5 s), as
    # loadgen's own figures do: the first messages are the CONNECTs and SUBSCRIBE
    if records:
        t0 = float(records[0]["t"])  # type: ignore[arg-type]
        records = [r for r in records if float(r["t"]) - t0 >= 0.6e6]  # type: ignore[arg-type]
    messages = args.rate * (0.5 + args.duration)  # loadgen's warm-up + duration
    per = {"cpu": cpu_ns / 1000 / messages, **{c: counts[c] / messages for c in COUNTS}}
    return {"broker": name, "n": len(calls), "e2e_ms": res["latency_ms"], "per_message": per,
            "p50": {k: statistics.median(v) if v else float("nan") for k, v in parts.items()},
            **{name: {k: pctl(v, q) for k, v in parts.items()}
               for name, q in (("p90", 0.9), ("p99", 0.99), ("max", 1.0))},
            "calls": statistics.median(calls) if calls else float("nan"),
            "faults_per_message": counts.get("faults", 0) / messages,
            "slowest": slowest(records),
            "episodes": episodes(records),
            # which of the broker's answers went out first after a PUBLISH's read: the
            # forward (86 bytes) or the publisher's PUBACK (4 bytes)
            "first_write_bytes": dict(sorted(Counter(
                int(r.get("write_bytes", -1)) for r in records).items())),  # type: ignore[call-overload]
            **({"records": records} if args.json and args.records else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default="iotbroker,mosquitto")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--fifo", type=int, default=0, metavar="PRIORITY")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--no-faults", dest="faults", action="store_false",
                    help="do not trace exceptions:page_fault_user")
    ap.add_argument("--json", default=None, metavar="FILE",
                    help="write every run's result (with the slowest 1 %% summary) here")
    ap.add_argument("--evict", type=int, default=0, metavar="MIB",
                    help="run a process copying MIB MiB in a loop beside (nice 19)")
    ap.add_argument("--evict-procs", type=int, default=1, metavar="N",
                    help="with --evict: N such processes (2: both CPUs of this machine)")
    ap.add_argument("--records", action="store_true",
                    help="with --json: every message's record too")
    args = ap.parse_args()
    results: list[dict[str, object]] = []
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
            for q in ("p90", "p99", "max"):
                qd = r[q]
                assert isinstance(qd, dict)
                print(f"{'':21}{q:3} " + "".join(f"{qd[p]:12.1f}" for p in PARTS), flush=True)
            sl = r["slowest"]
            assert isinstance(sl, dict)
            if sl:
                ps, pr = sl["parts_slow"], sl["parts_rest"]
                print(f"{'':8}slowest {sl['n']} (>= {sl['threshold_us']:.0f} us) p50 "
                      + "".join(f"{ps[p]:12.1f}" for p in PARTS))
                print(f"{'':21}rest p50 " + "".join(f"{pr[p]:12.1f}" for p in PARTS))
                print(f"{'':21}slowest vs rest: slept {sl['slept_us'][0]:.0f}/"
                      f"{sl['slept_us'][1]:.0f} us; " + ", ".join(
                          f"{k} {a:.0%}/{b:.0%}" for k, (a, b) in sl["flags"].items()),
                      flush=True)
            ep = r["episodes"]
            if isinstance(ep, dict) and ep:
                en, es = ep["normal"], ep["slow"]
                print(f"{'':21}slow-CPU windows (100 ms, write >= 1.5x median): "
                      f"{ep['share']:.0%} of messages, {ep['top_in_slow']:.0%} of the "
                      f"slowest 1 %; normal -> slow p50: " + ", ".join(
                          f"{p} {en[p]:.0f}->{es[p]:.0f}" for p in ("sched", "user", "write")),
                      flush=True)
            fw = r["first_write_bytes"]
            assert isinstance(fw, dict)
            print(f"{'':21}first write after the read, bytes: messages "
                  + ", ".join(f"{b}: {n}" for b, n in fw.items()))
            results.append(r)
            per = r["per_message"]
            assert isinstance(per, dict)
            print(f"{'':21}per message: " + ", ".join(
                f"{k} {v:.1f}" if k == "cpu" else f"{k} {v:.2f}" for k, v in per.items()),
                flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
