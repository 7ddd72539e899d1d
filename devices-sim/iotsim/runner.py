"""Run a scenario: in this process, or split across worker processes; then report.

:func:`run` is the one entry point (the CLI and the tests use it). It returns the
report dict and, given ``report_dir``, writes ``report.json`` and ``report.html``.
Ctrl-C (SIGINT) ends the run early: the simulator stops publishing, drains, and the
report covers what happened so far (``run.interrupted: true``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import secrets
import signal
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from iotsim.client import Target
from iotsim.engine import Fleet
from iotsim.live import LiveView
from iotsim.report import build_report, print_report, write_reports
from iotsim.scenario import Scenario
from iotsim.stats import Stats
from iotsim.sysinfo import cpu_seconds, raise_fd_limit, rss_bytes

T = TypeVar("T")


def new_run_ids() -> tuple[str, int]:
    """A short token for topics and client ids, and the 32-bit id in every payload."""
    run_id = secrets.randbits(32)
    return f"{run_id:08x}"[:6], run_id


def make_target(scenario: Scenario, host: str, port: int) -> Target:
    """The broker address with the scenario's TLS settings and source addresses."""
    tls = scenario.tls
    context: ssl.SSLContext | None = None
    if tls.enabled:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return Target(host, port, context, tls.server_hostname, scenario.connect_timeout,
                  scenario.source_addresses if len(scenario.source_addresses) > 1 else (),
                  scenario.mqttsn_port)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def run_fleet(scenario: Scenario, host: str, port: int, token: str, run_id: int,
                    worker: int, workers: int,
                    ready: Callable[[bool], Coroutine[Any, Any, float]] | None = None,
                    ticker: Callable[[Stats], None] | None = None,
                    interrupted: asyncio.Event | None = None) -> Stats:
    """One process's share: monitors first, then (at the shared ``t0``) the timeline."""
    stats = Stats(run_id, time.monotonic())
    stats.rss_baseline = rss_bytes()
    fleet = Fleet(scenario, make_target(scenario, host, port), stats, token, run_id, worker,
                  workers)
    if interrupted is not None:
        fleet.interrupted = interrupted
    fleet.ticker = ticker
    ok = await fleet.start_monitors()
    if not ok:
        stats.error("monitors_not_ready")
    t0 = await ready(ok) if ready is not None else time.monotonic() + 0.05
    await fleet.run(t0)
    return stats


def run(scenario: Scenario, host: str, port: int, *, workers: int = 1,
        report_dir: str | Path | None = None, live: bool = False, table: bool = False,
        console: Console | None = None) -> dict[str, Any]:
    """Run ``scenario`` against ``host:port``; return (and maybe write) the report."""
    token, run_id = new_run_ids()
    per_process = scenario.device_count // max(1, workers) + scenario.monitors.count + 64
    raise_fd_limit(per_process + 256)
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    view = LiveView(scenario.duration, console) if live else None
    meta: dict[str, Any] = {"host": host, "port": port, "workers": workers, "token": token,
                            "run_id": run_id, "started_at": started_at,
                            "tls": scenario.tls.enabled, "pid": os.getpid()}
    try:
        if workers > 1:
            from iotsim.workers import run_workers  # noqa: PLC0415 (only when asked)

            stats, interrupted = run_workers(scenario, host, port, token, run_id, workers,
                                             view)
        else:
            stats, interrupted = run_loop(_single(scenario, host, port, token, run_id, view))
    finally:
        if view is not None:
            view.close()
    meta["interrupted"] = interrupted
    report = build_report(stats, scenario, meta)
    if report_dir is not None:
        paths = write_reports(report, report_dir)
        report["run"]["files"] = {k: str(v) for k, v in paths.items()}
    if table:
        print_report(report, console or Console())
    return report


async def _single(scenario: Scenario, host: str, port: int, token: str, run_id: int,
                  view: LiveView | None) -> tuple[Stats, bool]:
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = False

    def on_sigint() -> None:
        if interrupted.is_set():  # second Ctrl-C: stop at once
            loop.remove_signal_handler(signal.SIGINT)
            raise KeyboardInterrupt
        interrupted.set()

    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        installed = True
    ticker = (lambda st: view.update([st.snapshot()])) if view is not None else None
    cpu0 = cpu_seconds()
    try:
        stats = await run_fleet(scenario, host, port, token, run_id, 0, 1, ticker=ticker,
                                interrupted=interrupted)
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)
    stats.cpu_seconds = cpu_seconds() - cpu0
    stats.rss_bytes = rss_bytes()
    return stats, interrupted.is_set()
