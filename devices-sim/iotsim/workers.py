"""``--workers N``: the fleet split across N processes, statistics merged at the end.

Protocol over one pipe per worker (the parent mostly sleeps in ``connection.wait``):

1. the worker builds its share of the fleet (devices ``i % N == w``, monitors
   ``m % N == w``), connects its monitors and sends ``("ready", ok)``;
2. when every worker is ready the parent sends ``("go", t0)``: one start time for all;
3. every second the worker sends ``("snap", snapshot)`` for the live view;
4. at the end it sends ``("result", Stats.export())``; the parent merges them.

The parent's Ctrl-C sends ``("stop", None)``: the workers (which ignore SIGINT) end their
run early and still report. Processes are started with ``spawn`` (no forked event loop).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from iotsim.live import LiveView
from iotsim.scenario import Scenario
from iotsim.stats import Stats
from iotsim.sysinfo import cpu_seconds, raise_fd_limit, rss_bytes

_RESULT_TIMEOUT = 60.0


def _worker_main(conn: Connection, scenario: Scenario, host: str, port: int, token: str,
                 run_id: int, worker: int, workers: int) -> None:
    """Entry point of a worker process."""
    from iotsim.runner import run_fleet, run_loop  # noqa: PLC0415 (after spawn)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_fd_limit(scenario.device_count // workers + scenario.monitors.count + 512)

    async def main() -> Stats:
        loop = asyncio.get_running_loop()
        interrupted = asyncio.Event()
        go: asyncio.Future[float] = loop.create_future()

        def on_message() -> None:
            try:
                kind, value = conn.recv()
            except EOFError:
                loop.remove_reader(conn.fileno())
                interrupted.set()
                return
            if kind == "go" and not go.done():
                go.set_result(float(value))
            elif kind == "stop":
                interrupted.set()
                if not go.done():
                    go.set_result(time.monotonic())

        loop.add_reader(conn.fileno(), on_message)
        # uvloop makes a watched fd non-blocking; a pickled message must go out whole
        os.set_blocking(conn.fileno(), True)

        async def ready(ok: bool) -> float:
            conn.send(("ready", ok))
            return await go

        def ticker(stats: Stats) -> None:
            conn.send(("snap", stats.snapshot()))

        try:
            return await run_fleet(scenario, host, port, token, run_id, worker, workers,
                                   ready=ready, ticker=ticker, interrupted=interrupted)
        finally:
            loop.remove_reader(conn.fileno())

    cpu0 = cpu_seconds()
    stats = run_loop(main())
    stats.cpu_seconds = cpu_seconds() - cpu0
    stats.rss_bytes = rss_bytes()
    os.set_blocking(conn.fileno(), True)
    conn.send(("result", stats.export()))
    conn.close()


def run_workers(scenario: Scenario, host: str, port: int, token: str, run_id: int,
                workers: int, view: LiveView | None) -> tuple[Stats, bool]:
    """Run the fleet in ``workers`` processes; the merged stats and whether interrupted."""
    ctx = multiprocessing.get_context("spawn")
    cpu0 = cpu_seconds()
    conns: list[Connection] = []
    procs = []
    for w in range(workers):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker_main, name=f"iotsim-worker-{w}",
                        args=(child, scenario, host, port, token, run_id, w, workers))
        p.start()
        child.close()
        conns.append(parent)
        procs.append(p)
    stats = Stats(run_id, time.monotonic())
    stats.processes = workers + 1
    snaps: dict[int, dict[str, Any]] = {}
    results: dict[int, dict[str, Any]] = {}
    ready: set[int] = set()
    interrupted = False
    stop_sent = False
    deadline = time.monotonic() + scenario.duration + scenario.drain_timeout \
        + scenario.ack_timeout + 120.0
    try:
        while len(results) < workers and time.monotonic() < deadline:
            try:
                live = [c for i, c in enumerate(conns) if i not in results]
                for ready_conn in wait(live, timeout=0.5):
                    c = cast(Connection, ready_conn)
                    i = conns.index(c)
                    try:
                        kind, value = c.recv()
                    except EOFError:
                        results[i] = {}
                        stats.error("worker_died")
                        continue
                    if kind == "ready":
                        ready.add(i)
                        if len(ready) == workers:
                            t0 = time.monotonic() + 0.2
                            stats.t0 = t0
                            for cc in conns:
                                cc.send(("go", t0))
                    elif kind == "snap":
                        snaps[i] = value
                        if view is not None and len(snaps) == workers:
                            view.update(list(snaps.values()))
                    elif kind == "result":
                        results[i] = value
            except KeyboardInterrupt:
                if stop_sent:  # second Ctrl-C: give up on the workers
                    raise
                interrupted = stop_sent = True
                deadline = time.monotonic() + _RESULT_TIMEOUT
                for i, c in enumerate(conns):
                    if i not in results:
                        c.send(("stop", None))
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()
    for i in range(workers):
        if results.get(i):
            stats.merge_export(results[i])
        else:
            stats.error("worker_without_result")
    stats.cpu_seconds += cpu_seconds() - cpu0
    stats.rss_bytes += rss_bytes()
    return stats, interrupted
