"""Live progress while a run goes: connected devices, msg/s out and in, latency, errors.

On a terminal a ``rich`` live table (on stderr) is redrawn every second; otherwise one
plain line goes to stderr every 5 seconds (logs of CI runs stay short).
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from iotsim.histogram import Histogram


def merge_snapshots(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the per-worker snapshots of :meth:`iotsim.stats.Stats.snapshot`."""
    out: dict[str, Any] = {"connected": 0, "target": 0, "ever": 0, "failed": 0,
                           "published": 0, "delivered": 0, "errors": 0,
                           "stage": snaps[0]["stage"] if snaps else "",
                           "last_published": 0, "last_delivered": 0}
    lat = Histogram()
    for s in snaps:
        for k in ("connected", "target", "ever", "failed", "published", "delivered", "errors"):
            out[k] += s[k]
        out["last_published"] += s["last"]["published"]
        out["last_delivered"] += s["last"]["delivered"]
        lat.merge(Histogram.from_dict(s["last"]["latency"]))
    out["p50"] = lat.percentile(50) / 1000
    out["p99"] = lat.percentile(99) / 1000
    out["max"] = lat.max / 1000
    return out


class LiveView:
    """Shows merged snapshots; ``close`` leaves the last frame on screen."""

    def __init__(self, duration: float, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.duration = duration
        self.started = time.monotonic()
        self._last_line = 0.0
        self._live: Live | None = None
        if self.console.is_terminal:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()

    def update(self, snaps: list[dict[str, Any]]) -> None:
        """Redraw with the latest snapshot of every process."""
        s = merge_snapshots(snaps)
        elapsed = time.monotonic() - self.started
        if self._live is not None:
            table = Table(title=f"iotsim  {elapsed:5.1f}s / {self.duration:g}s  "
                                f"stage {s['stage']}", title_justify="left")
            for col in ("connected", "failed", "msg/s out", "msg/s in", "p50 ms", "p99 ms",
                        "max ms", "published", "delivered", "errors"):
                table.add_column(col, justify="right")
            table.add_row(f"{s['connected']:,}/{s['target']:,}", f"{s['failed']:,}",
                          f"{s['last_published']:,}", f"{s['last_delivered']:,}",
                          f"{s['p50']:.2f}", f"{s['p99']:.2f}", f"{s['max']:.2f}",
                          f"{s['published']:,}", f"{s['delivered']:,}", f"{s['errors']:,}")
            self._live.update(table, refresh=True)
        elif elapsed - self._last_line >= 5.0:
            self._last_line = elapsed
            self.console.print(
                f"[{elapsed:6.1f}s] {s['stage']}: connected {s['connected']}/{s['target']}, "
                f"out {s['last_published']}/s, in {s['last_delivered']}/s, p50 "
                f"{s['p50']:.2f} ms, p99 {s['p99']:.2f} ms, errors {s['errors']}",
                highlight=False)

    def close(self) -> None:
        """Stop redrawing."""
        if self._live is not None:
            self._live.stop()
            self._live = None
