"""Collector probe for a broker process, loaded through ``PYTHONPATH`` (issue 19,
i19-conn4: the CONNACK p99 and the collector's pauses). Not part of the broker.

Acts only in a process whose command line has ``--config`` (``iotbroker run --config``,
as ``e2e.py`` and ``callgrind_connect.py`` start it), never in the load generator:

* ``GC_PROBE_THRESHOLDS=a,b,c``: every ``gc.set_threshold`` call (``run_broker`` makes
  one after start-up) sets these values instead — another threshold on the same build;
* ``GC_PROBE_LOG=PREFIX``: one line per collection to ``PREFIX.<pid>``: wall-clock
  time, generation, pause in ms, the young generation's count when it began, objects
  collected. ``summary.py`` splits them into the connect burst and what follows.

    PYTHONPATH=benchmarks/gc_probe GC_PROBE_LOG=/tmp/gc/run GC_PROBE_THRESHOLDS=1000,0,4000 \\
        .venv/bin/python benchmarks/e2e.py --scenarios connect --procs 2 --reps 3 ...
    python3 benchmarks/gc_probe/summary.py '/tmp/gc/run.*'
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

if "--config" in sys.argv:
    _thresholds = os.environ.get("GC_PROBE_THRESHOLDS")
    if _thresholds:
        _values = tuple(int(x) for x in _thresholds.split(","))
        _set_threshold = gc.set_threshold

        def _fixed(*_args: int) -> None:
            _set_threshold(*_values)

        gc.set_threshold = _fixed

    _log = os.environ.get("GC_PROBE_LOG")
    if _log:
        _out = open(f"{_log}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115 (process-long)
        _began = [0.0, 0]

        def _hook(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                _began[0] = time.perf_counter()
                _began[1] = gc.get_count()[0]
                return
            ms = (time.perf_counter() - _began[0]) * 1e3
            _out.write(f"{time.time():.4f} {info['generation']} {ms:.3f} {_began[1]} "
                       f"{info['collected']}\n")

        gc.callbacks.append(_hook)
