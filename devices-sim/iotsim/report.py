"""The run report: one dict (``report.json``), a terminal table and an HTML page.

``report.json`` schema (``"schema": "iotsim-report/1"``), documented in
``docs/simulator.md``. Top-level keys:

* ``devices``: ``target``, ``connected`` (devices that connected at least once),
  ``failed`` (never connected), ``peak_connected``, ``connect_attempts``,
  ``connect_failures``, ``disconnects``;
* ``messages``: ``published``, ``confirmed``, ``unconfirmed``, ``expected``,
  ``delivered`` (unique), ``received`` (with duplicates and foreign), ``lost``,
  ``duplicated``, ``out_of_order``, ``before_subscribe`` (not expected: sent before a
  subscriber's first SUBACK), ``backlog`` (expected: sent while a persistent-session
  subscriber was away), ``by_qos`` (per delivery QoS) ...;
* ``connect_phases_ms``: the MQTT-over-TCP connect latency split into ``tcp`` (to the
  connection made), ``connack`` (CONNECT written -> CONNACK read) and ``resume``
  (CONNACK read -> the device running again: the simulator's own loop);
* ``latency_ms`` (end to end), ``publish_ack_latency_ms``, ``connect_latency_ms``,
  ``request_response.latency_ms``: ``count``, ``min``, ``mean``, ``p50``, ``p90``,
  ``p99``, ``p999``, ``max``;
* ``wills``, ``violations``, ``ok``, ``errors``, ``counters``;
* ``throughput``: averages per second; ``timeseries``: one entry per second;
* ``cpu_percent`` (the simulator's processes, 100 = one core), ``rss_mb``, ``per_device``.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from iotsim.accounting import analyse
from iotsim.connect_errors import connect_errors, verdict
from iotsim.html import QOS_ALLOWS, WILL_EXCUSES, render_html
from iotsim.scenario import Scenario
from iotsim.stats import Stats

SCHEMA = "iotsim-report/1"


def timeseries(stats: Stats) -> list[dict[str, Any]]:
    """One entry per second of the run (index 0 = the first second)."""
    if not stats.series:
        return []
    last = max(stats.series)
    rows: list[dict[str, Any]] = []
    for i in range(0, last + 1):
        s = stats.series.get(i)
        if s is None:
            rows.append({"t": i, "published": 0, "delivered": 0, "acked": 0, "connected": 0,
                         "connects": 0, "connect_failures": 0, "disconnects": 0, "errors": 0,
                         "p50_ms": None, "p99_ms": None, "max_ms": None})
            continue
        lat = s.latency
        rows.append({
            "t": i, "published": s.published, "delivered": s.delivered, "acked": s.acked,
            "connected": s.connected, "connects": s.connects,
            "connect_failures": s.connect_failures, "disconnects": s.disconnects,
            "errors": s.errors,
            "p50_ms": round(lat.percentile(50) / 1000, 3) if lat.count else None,
            "p99_ms": round(lat.percentile(99) / 1000, 3) if lat.count else None,
            "max_ms": round(lat.max / 1000, 3) if lat.count else None,
        })
    return rows


def build_report(stats: Stats, scenario: Scenario, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything a run measured, as one JSON-able dict."""
    acc = analyse(stats)
    rows = timeseries(stats)
    wall = max(stats.wall_seconds, 1e-9)
    c = stats.counters
    target = stats.devices_target
    ever = stats.devices_connected_ever
    peak = stats.peak_connected
    if stats.processes > 1 and rows:
        peak = max(r["connected"] for r in rows)
    rss = stats.rss_bytes
    per_device_rss = (rss - stats.rss_baseline) / ever / 1024 if ever else 0.0
    cpu_percent = stats.cpu_seconds / wall * 100
    messages = acc["messages"]
    messages["published_per_s"] = round(stats.published / wall, 1)
    messages["delivered_per_s"] = round(messages["delivered"] / wall, 1)
    devices = {
        "target": target, "connected": ever, "failed": target - ever,
        "peak_connected": peak, "connect_attempts": c["connect_attempts"],
        "connect_failures": c["connect_failed"], "disconnects": c["disconnects"],
    }
    connect = connect_errors(dict(stats.errors), stats.details)
    judged = verdict(acc["ok"], devices, connect, acc["violations"])
    return {
        "schema": SCHEMA,
        "scenario": {
            "name": scenario.name, "description": scenario.description,
            "duration_s": scenario.duration,
            "groups": [{"name": g.name, "count": g.count, "behaviour": g.behaviour,
                        "version": "5" if g.version == 5 else "3.1.1",
                        "interval_s": g.interval, "qos_mix": list(g.qos_mix),
                        "children": g.children} for g in scenario.groups],
            "monitors": scenario.monitors.count,
            "stages": [s.kind for s in scenario.stages],
            "faults": [f.kind for f in scenario.faults],
        },
        "run": {**meta, "wall_s": round(wall, 3), "processes": stats.processes,
                "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
        "devices": devices,
        "connect_errors": connect,
        "connect_latency_ms": stats.connect_latency.summary_ms(),
        "connect_phases_ms": stats.connect_phases.summary_ms(),
        "messages": messages,
        "latency_ms": stats.latency.summary_ms(),
        "publish_ack_latency_ms": stats.ack_latency.summary_ms(),
        "request_response": {
            "sent": c["requests_sent"], "received_by_actuators": c["requests_received"],
            "responses_sent": c["responses_sent"], "responses_received": c["responses_received"],
            "latency_ms": stats.rr_latency.summary_ms(),
        },
        "wills": acc["wills"],
        "violations": acc["violations"],
        "ok": judged["ok"],
        "verdict": judged,
        "errors": dict(sorted(stats.errors.items())),
        "counters": dict(sorted(c.items())),
        "throughput": {"published_per_s": messages["published_per_s"],
                       "delivered_per_s": messages["delivered_per_s"],
                       "peak_published_per_s": max((r["published"] for r in rows), default=0),
                       "peak_delivered_per_s": max((r["delivered"] for r in rows), default=0)},
        "cpu_percent": round(cpu_percent, 1),
        "rss_mb": round(rss / 1024 / 1024, 1),
        "per_device": {
            "rss_kb": round(per_device_rss, 2),
            "cpu_percent_per_1k_devices": round(cpu_percent / ever * 1000, 2) if ever else 0.0,
        },
        "timeseries": rows,
    }


def write_reports(report: dict[str, Any], directory: str | Path) -> dict[str, Path]:
    """Write ``report.json`` and ``report.html`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    json_path = d / "report.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    html_path = d / "report.html"
    html_path.write_text(render_html(report))
    return {"json": json_path, "html": html_path}


def _lat(row: dict[str, Any]) -> str:
    if not row["count"]:
        return "-"
    return (f"p50 {row['p50']:.2f}  p90 {row['p90']:.2f}  p99 {row['p99']:.2f}  "
            f"p99.9 {row['p999']:.2f}  max {row['max']:.2f} ms  (n={row['count']:,})")


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """The end-of-run table."""
    console = console or Console()
    d = report["devices"]
    m = report["messages"]
    table = Table(title=f"iotsim: {report['scenario']['name']}"
                        f"{'  (interrupted)' if report['run'].get('interrupted') else ''}",
                  show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("devices", f"{d['connected']:,} connected / {d['target']:,} "
                             f"({d['failed']:,} failed), peak {d['peak_connected']:,}, "
                             f"{d['connect_attempts']:,} attempts (with monitors)")
    table.add_row("connect latency", _lat(report["connect_latency_ms"]))
    table.add_row("published", f"{m['published']:,} ({m['published_per_s']:,}/s), "
                               f"confirmed {m['confirmed']:,}, unconfirmed {m['unconfirmed']:,}")
    table.add_row("delivered", f"{m['delivered']:,} of {m['expected']:,} expected "
                               f"({m['delivered_per_s']:,}/s) to {m['subscribers']} subscribers"
                               + (f" ({m['before_subscribe']:,} sent before a SUBACK: not "
                                  "expected)" if m["before_subscribe"] else ""))
    table.add_row("lost / dup / ooo", f"{m['lost']:,} / {m['duplicated']:,} / "
                                      f"{m['out_of_order']:,}")
    for q, b in m["by_qos"].items():
        if b["expected"]:
            table.add_row(f"  QoS {q}", f"({QOS_ALLOWS[q]}) expected {b['expected']:,}, delivered "
                                        f"{b['delivered']:,}, lost {b['lost']:,} (unconfirmed "
                                        f"{b['lost_unconfirmed']:,}, excused "
                                        f"{b['lost_excused']:,}, confirmed "
                                        f"{b['lost_confirmed']:,}), dup {b['duplicated']:,}"
                                        + (f", backlog {b['backlog']:,}" if b["backlog"]
                                           else ""))
    table.add_row("e2e latency", _lat(report["latency_ms"]))
    table.add_row("publish->ack", _lat(report["publish_ack_latency_ms"]))
    rr = report["request_response"]
    if rr["sent"]:
        table.add_row("request/response", f"{rr['responses_received']:,} of {rr['sent']:,}; "
                                          + _lat(rr["latency_ms"]))
    w = report["wills"]
    if w["expected"] or w["received"]:
        excused = w.get("excused", {})
        why = "; ".join(f"{n:,} {reason} ({WILL_EXCUSES.get(reason, '')})"
                        for reason, n in excused.items())
        table.add_row("wills", f"{w['received']:,} received of {w['expected']:,} expected: "
                               f"{w.get('owed', w['expected']):,} owed, missing "
                               f"{w['missing']:,}, unexpected {w['unexpected']:,}"
                               + (f"; excused {why}" if why else ""))
    ce = report.get("connect_errors", {"errors": []})
    for e in ce["errors"][:8]:
        table.add_row("connect error", f"{e['error']} x{e['count']:,} ({e['kind']}): "
                                       f"{e['why']}")
    others = {k: v for k, v in report["errors"].items()
              if k not in {e["error"] for e in ce["errors"]}}
    if others:
        table.add_row("errors", ", ".join(f"{k}={v:,}" for k, v in others.items()))
    table.add_row("simulator", f"cpu {report['cpu_percent']}% (100 = one core), rss "
                               f"{report['rss_mb']} MB, {report['per_device']['rss_kb']} "
                               f"KB/device")
    verdict = report.get("verdict") or {"ok": report["ok"], "reasons": []}
    table.add_row("verdict", "[green]OK: accounting matches what QoS allows[/green]"
                  if verdict["ok"] else
                  "[red]FAILED: " + escape("; ".join(verdict["reasons"])) + "[/red]")
    console.print(table)
