"""The broker's CPU for the whole life of 10,000 idle connections, with and without
parking (limits.park_idle_after, server/parking.py), and their RSS per connection.

For each repetition and setting a fresh broker (memory store, WARNING logs, the config
of ``e2e.py``) is started; its CPU time is read from ``/proc`` before and after
``loadgen.py run --scenario connect --settle S``, which connects the clients, holds
them idle ``S`` seconds (parked when ``S`` > 1.25 × park_idle_after), samples the RSS,
and closes them all (each parked socket is woken to read its EOF). The difference of
the two settings per connection is what a park and a wake cost.

    .venv/bin/python benchmarks/park_cost.py [--reps 3] [--clients 10000] [--after 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import e2e  # noqa: E402  (benchmarks/ is not a package)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(after: float, clients: int, settle: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="park-cost-") as workdir:
        broker = e2e.make_iotbroker(workdir, None, after)
        broker.start()
        try:
            time.sleep(0.5)
            cpu0 = cpu_seconds(broker.pid)
            out = subprocess.run(
                [sys.executable, e2e.LOADGEN, "run", "--port", str(broker.port),
                 "--scenario", "connect", "--clients", str(clients), "--settle", str(settle),
                 "--broker-pid", str(broker.pid)],
                capture_output=True, text=True, timeout=300, check=True)
            time.sleep(1.0)  # the closes are handled
            cpu = cpu_seconds(broker.pid) - cpu0
        finally:
            broker.stop()
    res = json.loads(out.stdout)
    return cpu / res["connected"] * 1e6, res["kib_per_conn"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--after", type=float, default=0.2, help="park_idle_after (s)")
    ap.add_argument("--settle", type=float, default=1.0, help="idle seconds")
    args = ap.parse_args()
    runs: dict[float, list[tuple[float, float]]] = {0.0: [], args.after: []}
    for rep in range(args.reps):
        for after, results in runs.items():
            us, kib = one(after, args.clients, args.settle)
            results.append((us, kib))
            print(f"rep {rep + 1}/{args.reps} park_idle_after {after:4}: {us:5.1f} µs CPU "
                  f"per connection's life, {kib:.2f} KiB/conn", flush=True)
    for after, results in runs.items():
        print(f"median park_idle_after {after:4}: "
              f"{statistics.median(r[0] for r in results):5.1f} µs CPU/conn, "
              f"{statistics.median(r[1] for r in results):.2f} KiB/conn")


if __name__ == "__main__":
    main()
