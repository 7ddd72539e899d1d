"""The cold footprint of one QoS 1 message: the cache lines it touches when every cache is
cold, counted by valgrind's cache simulation (issue 19, i19-p50g; no clock).

On today's VM every message at 1,000 msg/s arrives at a vCPU that halted to the host,
so its cost is set by the code and data lines it must fetch again (docs/performance.md,
"The 40 µs at the p50"). Instructions (``callgrind_brokers.py``) are only a proxy for
that. Here each run is ``valgrind --tool=callgrind --cache-sim=yes`` with fixed
simulated caches (I1 and D1 32 KiB 8-way, LL 2 MiB 16-way, 64-byte lines) and
``benchmarks/cold_sweep.c`` (built here with gcc) emptying all three before each
message:

* ``brokers`` (default): the whole broker process, iotbroker or mosquitto, as in
  ``callgrind_brokers.py`` (same clients, same 0.5 ms between messages), with the
  sweep ``LD_PRELOAD``ed after every blocking ``epoll_wait``/``epoll_pwait`` that
  returned events: where the live broker's vCPU halts.
* ``path``: ``callgrind_path.py``'s in-process broker (the build in the current
  directory), a sweep before the PUBLISH's ``data_received`` and before the
  subscriber's PUBACK (``COLD_SWEEP`` set to the library).

``--to-forward`` (issue 19, i19-lat4) counts only the latency path of a message: from
the wake-up that reads the PUBLISH to the forward's ``write`` (the sweep switches
callgrind's collection on and off, ``COLD_SWEEP_TO_FORWARD``; what the broker does after
the forward and the wake-up for the subscriber's PUBACK, past its first ``read``, are
left out: nothing waits for them at 1,000 msg/s).

Two runs with N1 and N2 messages; (run(N2) - run(N1)) / (N2 - N1) per message, the
sweep's own functions (``cold_sweep.so``; ctypes' call into it is named as libffi by
callgrind) left out. Reported per message: instructions (Ir), L1 misses (I1mr, D1mr +
D1mw) and LL misses (ILmr, DLmr + DLmw). With the caches emptied before each message an
LL miss is a line the message touches for the first time: ILmr + DLmr + DLmw is the
number of distinct 64-byte lines it fetches from memory, the cold footprint; the L1
misses add lines it fetches again within the message. ``--by-object`` splits them by
shared object.

    flock /tmp/bench.lock .venv-c/bin/python benchmarks/cold_footprint.py \\
        --iotbroker-python .venv-c/bin/python --by-object --out-dir D
    flock /tmp/bench.lock .venv-c/bin/python benchmarks/cold_footprint.py --mode path \\
        --by-object --out-dir D      # in the checkout to measure
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.callgrind_brokers import broker_command, drive, free_port, stop

EVENTS = ("Ir", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")
CACHES = ["--I1=32768,8,64", "--D1=32768,8,64", "--LL=2097152,16,64"]
SWEEP_BYTES = 4 << 20  # twice the simulated LL
HERE = Path(__file__).resolve().parent


def build_sweep(work: Path) -> Path:
    lib = work / "cold_sweep.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib),
                    str(HERE / "cold_sweep.c"), "-ldl"], check=True)
    return lib


def is_sweep(func: str) -> bool:
    return "cold_sweep.so" in func or "libffi.so" in func


def by_function(path: Path) -> dict[str, collections.Counter[str]]:
    """Exclusive event counts per function (``file:function [object]``)."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", f"--show={','.join(EVENTS)}",
                           str(path)], capture_output=True, text=True, check=True).stdout
    number = re.compile(r"\s*(?:([\d,]+)(?:\s*\(\s*[\d.]+%\))?|\.)(?=\s)")
    funcs: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in text.splitlines():
        pos, values = 0, []
        for _ in EVENTS:
            m = number.match(line, pos)
            if m is None:
                break
            values.append(int(m.group(1).replace(",", "")) if m.group(1) else 0)
            pos = m.end()
        if len(values) != len(EVENTS) or "PROGRAM TOTALS" in line:
            continue
        name = line[pos:].strip()
        if not name:
            continue
        funcs[name].update(dict(zip(EVENTS, values, strict=True)))
    return funcs


def object_of(func: str) -> str:
    obj = re.search(r"\[([^\]]*)\]\s*$", func)
    name = os.path.basename(obj.group(1)) if obj else "(object not named)"
    if "__mypyc" in name or name.startswith(("engine.", "framer.")):
        name = "iotbroker (mypyc-compiled modules)"
    return name


def run_valgrind(cmd: list[str], out: Path, env: dict[str, str], log: Path,
                 cwd: Path, drive_port: int | None, count: int) -> None:
    # (COLD_SWEEP_TO_FORWARD: the sweep switches collection on at each wake-up)
    atstart = ["--collect-atstart=no"] if env.get("COLD_SWEEP_TO_FORWARD") else []
    with open(log, "wb") as f:
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--cache-sim=yes", *CACHES,
                                 *atstart, f"--callgrind-out-file={out}", *cmd],
                                stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    if drive_port is None:
        if proc.wait(600) != 0:
            raise RuntimeError(f"run failed (see {log})")
        return
    try:
        drive(drive_port, count)
        time.sleep(0.5)
    finally:
        stop(proc)


def measure(name: str, count: int, lib: Path, args: argparse.Namespace) -> Path:
    work = Path(tempfile.mkdtemp(prefix=f"cold-{name}-{count}-", dir=args.out_dir))
    out = work / "callgrind.out"
    env = dict(os.environ, PYTHONHASHSEED="0", COLD_SWEEP_BYTES=str(SWEEP_BYTES),
               COLD_SWEEP_REPORT="1")
    if args.to_forward:
        env["COLD_SWEEP_TO_FORWARD"] = "16"  # a PUBACK is 4 bytes, the forward 86
    if args.sweep:
        if name == "path":
            env["COLD_SWEEP"] = str(lib)
        else:
            env["LD_PRELOAD"] = str(lib)
    if name == "path":
        cmd = [os.path.abspath(args.iotbroker_python), str(HERE / "callgrind_path.py"), str(count)]
        run_valgrind(cmd, out, env, work / "run.log", Path.cwd(), None, count)
    else:
        port = free_port()
        run_valgrind(broker_command(name, port, work, args), out, env, work / "broker.log",
                     work, port, count)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("brokers", "path"), default="brokers")
    ap.add_argument("--brokers", default="iotbroker,mosquitto")
    ap.add_argument("--counts", default="200,600", help="N1,N2 (messages per run)")
    ap.add_argument("--iotbroker-python", default=sys.executable)
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--out-dir", default=None, help="where the runs' files go (kept)")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false",
                    help="warm: the same runs without emptying the caches")
    ap.add_argument("--to-forward", action="store_true",
                    help="count only from the PUBLISH's wake-up to the forward's write")
    ap.add_argument("--by-object", action="store_true")
    ap.add_argument("--top", type=int, default=0, help="also list the top functions by LL misses")
    args = ap.parse_args()
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
    lib = build_sweep(Path(tempfile.mkdtemp(prefix="cold-sweep-", dir=args.out_dir)))
    n1, n2 = (int(n) for n in args.counts.split(","))
    names = ["path"] if args.mode == "path" else args.brokers.split(",")
    for name in names:
        f1 = by_function(measure(name, n1, lib, args))
        f2 = by_function(measure(name, n2, lib, args))
        per: dict[str, dict[str, float]] = {}
        for func in set(f1) | set(f2):
            if is_sweep(func):
                continue
            per[func] = {e: (f2.get(func, {}).get(e, 0) - f1.get(func, {}).get(e, 0)) / (n2 - n1)
                         for e in EVENTS}
        total = {e: sum(v[e] for v in per.values()) for e in EVENTS}

        def line(label: str, v: dict[str, float]) -> str:
            cold = v["ILmr"] + v["DLmr"] + v["DLmw"]
            return (f"{v['Ir']:9,.0f} {v['I1mr']:7,.0f} {v['D1mr'] + v['D1mw']:7,.0f} "
                    f"{v['ILmr']:7,.0f} {v['DLmr'] + v['DLmw']:7,.0f} {cold:7,.0f}  {label}")

        span = ", wake-up to the forward's write" if args.to_forward else ""
        print(f"{name} ({'cold' if args.sweep else 'warm'}{span}), per message, N={n1},{n2}:")
        print(f"{'Ir':>9} {'I1mr':>7} {'D1m':>7} {'ILmr':>7} {'DLm':>7} {'lines':>7}")
        print(line("total", total), flush=True)
        if args.by_object:
            objs: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
            for func, v in per.items():
                objs[object_of(func)].update(v)
            for obj, v in sorted(objs.items(), key=lambda kv: -(kv[1]["ILmr"] + kv[1]["DLmr"]
                                                                  + kv[1]["DLmw"]))[:8]:
                print(line(obj, dict(v)))
        if args.top:
            print("  top functions by LL misses:")
            for func, v in sorted(per.items(), key=lambda kv: -(kv[1]["ILmr"] + kv[1]["DLmr"]
                                                                 + kv[1]["DLmw"]))[:args.top]:
                label = re.sub(r"^.*?([^/:]*:[^/]*?) \[.*/([^/\]]*)\]$", r"\1 [\2]", func)
                print(line(label, v))


if __name__ == "__main__":
    main()
