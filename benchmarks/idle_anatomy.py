"""Where an idle connection's memory goes (issue 19): the ``connect`` scenario of
``benchmarks/e2e.py`` (10,000 MQTT 3.1.1 clients connecting at once through
``loadgen.py``, then idle) against one iotbroker on its defaults (memory storage,
WARNING logs, no ``$SYS``, as e2e.py), with ``idle_probe/sitecustomize.py`` in the
broker: a snapshot before the connects and one ``--settle`` seconds after the last, then
the difference per connection: RSS, glibc heap (in use / free), pymalloc (arenas,
blocks in use, free), gc-tracked objects per type and, with ``--trace``, Python
allocations per source line (tracemalloc from start-up: slower, and its own memory
shows in the RSS).

    .venv/bin/python benchmarks/idle_anatomy.py                 # 10,000 clients, settle 3 s
    .venv/bin/python benchmarks/idle_anatomy.py --trace --top 25
    PYTHONPATH=/tmp/other-tree .venv/bin/python benchmarks/idle_anatomy.py   # another version

Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from e2e import make_iotbroker  # noqa: E402

LOADGEN = os.path.join(HERE, "loadgen.py")


def snapshot(pid: int, out: str, n: int) -> dict[str, Any]:
    os.kill(pid, signal.SIGUSR1)
    path = f"{out}.{n}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                return json.load(f)  # type: ignore[no-any-return]
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.1)
    raise RuntimeError("no snapshot from the broker")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--park-idle-after", type=float, default=None)
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--peak", action="store_true",
                    help="with --trace: also a snapshot as soon as all are connected, and "
                         "what was freed from then to the sample (per unparked connection)")
    ap.add_argument("--trim", action="store_true",
                    help="also report the RSS after a malloc_trim(0) at the second sample")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="idle-anatomy-")
    out = os.path.join(work, "snap")
    env_extra = {"IDLEPROBE_OUT": out, "IDLEPROBE_TRACE": "1" if args.trace else "0",
                 "IDLEPROBE_TRIM": "1" if args.trim else "0"}
    old = {k: os.environ.get(k)
           for k in ("IDLEPROBE_OUT", "IDLEPROBE_TRACE", "IDLEPROBE_TRIM", "PYTHONPATH")}
    os.environ.update(env_extra)
    probe = os.path.join(HERE, "idle_probe")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (old["PYTHONPATH"], probe) if p)
    broker = make_iotbroker(work, None, args.park_idle_after)
    broker.start()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        time.sleep(1.0)
        base_fds = fd_count(broker.pid)
        before = snapshot(broker.pid, out, 1)
        gen = subprocess.Popen(
            [sys.executable, LOADGEN, "run", "--port", str(broker.port), "--scenario",
             "connect", "--clients", str(args.clients), "--settle", str(args.settle + 30),
             "--broker-pid", str(broker.pid)], stdout=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while fd_count(broker.pid) < base_fds + args.clients:
            if time.monotonic() - t0 > 120 or gen.poll() is not None:
                raise RuntimeError("clients did not connect")
            time.sleep(0.01)
        connected_in = time.monotonic() - t0
        peak = snapshot(broker.pid, out, 2) if args.peak else None
        time.sleep(args.settle)
        after = snapshot(broker.pid, out, 3 if args.peak else 2)
        gen.terminate()
        gen.wait(timeout=60)
    finally:
        broker.stop()
    n = args.clients
    print(f"{n} clients connected in ~{connected_in:.1f} s (incl. generator start-up); "
          f"sampled {args.settle:g} s later; per connection, bytes:")
    print(f"  RSS                 {(after['rss'] - before['rss']) / n:8.0f}")
    if "rss_trimmed" in after:
        print(f"  RSS after a trim    {(after['rss_trimmed'] - before['rss']) / n:8.0f}")
    mi0, mi1 = before["mallinfo"], after["mallinfo"]
    if mi0:
        for key, label in (("arena", "glibc heap (sbrk)"), ("hblkhd", "glibc mmap"),
                           ("uordblks", "glibc in use"), ("fordblks", "glibc free"),
                           ("keepcost", "glibc top pad")):
            print(f"  {label:20}{(mi1[key] - mi0[key]) / n:8.0f}")
    pm0, pm1 = before["pymalloc"], after["pymalloc"]
    arenas = "arenas allocated current"
    if arenas in pm1 and arenas in pm0:
        print(f"  pymalloc arenas       {(pm1[arenas] - pm0[arenas]) * 2**20 / n:6.0f}"
              "  (1 MiB each; untouched pools are not resident)")
    for key, label in (("bytes in allocated blocks", "pymalloc in use"),
                       ("bytes in available blocks", "pymalloc free blocks"),
                       ("bytes in unused pools", "pymalloc empty pools")):
        if key in pm1 and key in pm0:
            print(f"  {label:20}{(pm1[key] - pm0[key]) / n:8.0f}")
    t0_, t1_ = before["types"], after["types"]
    rows = []
    for name, (count, size) in t1_.items():
        c0, s0 = t0_.get(name, [0, 0])
        if count - c0 > 0.05 * n or size - s0 > 8 * n:
            rows.append((size - s0, count - c0, name))
    rows.sort(reverse=True)
    print("  gc-tracked objects (per connection: count, getsizeof bytes):")
    for size, count, name in rows[: args.top]:
        print(f"    {name:40} {count / n:6.2f} {size / n:8.1f}")
    if "traced" in after:
        tr0, tr1 = before.get("traced", {}), after["traced"]
        lines = []
        for key, (count, size) in tr1.items():
            c0, s0 = tr0.get(key, [0, 0])
            if size - s0 > 0:
                lines.append((size - s0, count - c0, key))
        lines.sort(reverse=True)
        total = sum(x[0] for x in lines)
        print(f"  tracemalloc: {total / n:.0f} B per connection still allocated; top lines:")
        for size, count, key in lines[: args.top]:
            print(f"    {size / n:8.1f} B {count / n:6.2f} blocks  {key}")
    if peak is not None and "traced" in peak:
        print(f"  at the peak (all connected): RSS {(peak['rss'] - before['rss']) / n:.0f} B "
              "per connection; freed from then to the sample, per connection:")
        freed = []
        for key, (count, size) in peak["traced"].items():
            c1, s1 = after["traced"].get(key, [0, 0])
            if size - s1 > 0:
                freed.append((size - s1, count - c1, key))
        freed.sort(reverse=True)
        for size, count, key in freed[: args.top]:
            print(f"    {size / n:8.1f} B {count / n:6.2f} blocks  {key}")


if __name__ == "__main__":
    main()
