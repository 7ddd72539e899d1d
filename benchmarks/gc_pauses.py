"""How long the broker's garbage collections pause its loop under the ``latency``
scenario (1 publisher at 1,000 msg/s QoS 1 → 1 subscriber), next to the latency
percentiles the generator measured (issue 19: what adds to the latency tail).

Starts the broker (the config of ``e2e.py``) through this file with ``--broker``, which
appends a ``gc.callbacks`` hook timing every collection (start → stop, by generation)
before running ``iotbroker run``, and writes them to a JSON file when the broker exits
(SIGTERM) and has stopped. Then runs ``loadgen.py run --scenario latency`` against it.

    .venv/bin/python benchmarks/gc_pauses.py [--duration 10] [--reps 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import e2e  # noqa: E402  (benchmarks/ is not a package)


def _hooked_broker(out_path: str, argv: list[str]) -> None:
    """In the broker process: time each collection, dump them at exit, run the broker."""
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]
    ready = time.perf_counter() + 2.0  # the start-up's own collections are left out

    def hook(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif started[0] > ready:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    def dump() -> None:
        with open(out_path, "w") as f:
            json.dump(pauses, f)

    gc.callbacks.append(hook)
    from iotbroker.cli import main as cli_main  # noqa: PLC0415

    code = cli_main(argv)  # not console_main: it ends with os._exit
    dump()
    os._exit(code)


def one(duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gc-pauses-") as workdir:
        broker = e2e.make_iotbroker(workdir, None)
        out_path = os.path.join(workdir, "gc.json")
        # Same config, started through the hook.
        broker.argv = [sys.executable, os.path.abspath(__file__), "--broker", out_path,
                       *broker.argv[3:]]
        broker.start()
        try:
            time.sleep(2.5)  # past the start-up (see _hooked_broker)
            out = subprocess.run(
                [sys.executable, e2e.LOADGEN, "run", "--port", str(broker.port),
                 "--scenario", "latency", "--warmup", "1", "--duration", str(duration),
                 "--broker-pid", str(broker.pid)],
                capture_output=True, text=True, timeout=300, check=True)
        finally:
            broker.stop()
        with open(out_path) as f:
            pauses = {int(k): v for k, v in json.load(f).items()}
    res = json.loads(out.stdout)
    return {"latency_ms": res.get("latency_ms"), "pauses": pauses}


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--broker":
        _hooked_broker(sys.argv[2], sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    args = ap.parse_args()
    for rep in range(args.reps):
        res = one(args.duration)
        lat = res["latency_ms"] or {}
        parts = []
        for gen, values in sorted(res["pauses"].items()):
            if values:
                ms = sorted(v * 1000 for v in values)
                parts.append(f"gen{gen}: {len(ms)}× median {statistics.median(ms):.3f} ms "
                             f"max {ms[-1]:.3f} ms")
            else:
                parts.append(f"gen{gen}: 0")
        print(f"rep {rep + 1}/{args.reps}: latency p50 {lat.get('p50', float('nan')):.3f} ms "
              f"p99 {lat.get('p99', float('nan')):.3f} ms over {args.duration:.0f} s; "
              f"collections {'; '.join(parts)}", flush=True)


if __name__ == "__main__":
    main()
