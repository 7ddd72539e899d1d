"""``report.html``: the summary and hand-written inline SVG charts (no plotting library).

Charts: messages per second (published, delivered), connected devices, end-to-end
latency per second (p50, p99, max), and the latency percentile distribution (the
HdrHistogram-style plot with a logarithmic "nines" axis).
"""

from __future__ import annotations

import html
import math
from typing import Any

_W, _H = 760, 260
_ML, _MR, _MT, _MB = 64, 16, 28, 40
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def line_chart(title: str, xs: list[float], series: list[tuple[str, list[float | None]]],
               x_label: str, y_label: str, x_ticks: list[tuple[float, str]] | None = None
               ) -> str:
    """An SVG line chart; ``None`` values leave gaps."""
    values: list[float] = [v for _n, ys in series for v in ys if v is not None]
    if not xs or not values:
        return f"<p><em>{html.escape(title)}: no data</em></p>"
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x1 = x0 + 1
    y1 = max(values) * 1.08 or 1.0
    yt = _nice_ticks(0, y1)
    y1 = max(y1, yt[-1])
    pw, ph = _W - _ML - _MR, _H - _MT - _MB

    def sx(x: float) -> float:
        return _ML + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return _MT + ph - y / y1 * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
           f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="11">',
           f'<text x="{_W / 2}" y="16" text-anchor="middle" font-size="13" '
           f'font-weight="bold">{html.escape(title)}</text>',
           f'<rect x="{_ML}" y="{_MT}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in yt:
        y = sy(t)
        out.append(f'<line x1="{_ML}" x2="{_ML + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#eee"/><text x="{_ML - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{_fmt(t)}</text>')
    ticks = x_ticks or [(t, _fmt(t)) for t in _nice_ticks(x0, x1, 8)]
    for t, label in ticks:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_MT}" y2="{_MT + ph}" stroke="#eee"/>'
                   f'<text x="{x:.1f}" y="{_MT + ph + 14}" text-anchor="middle">'
                   f'{html.escape(label)}</text>')
    out.append(f'<text x="{_ML + pw / 2}" y="{_H - 6}" text-anchor="middle">'
               f'{html.escape(x_label)}</text>')
    out.append(f'<text x="14" y="{_MT + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {_MT + ph / 2})">{html.escape(y_label)}</text>')
    for k, (name, ys) in enumerate(series):
        color = _COLORS[k % len(_COLORS)]
        path: list[str] = []
        pen = "M"
        for x, yv in zip(xs, ys, strict=True):
            if yv is None:
                pen = "M"
                continue
            path.append(f"{pen}{sx(x):.1f},{sy(yv):.1f}")
            pen = "L"
        out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" '
                   f'stroke-width="1.6"/>')
        lx = _ML + 10 + k * 130
        out.append(f'<rect x="{lx}" y="{_MT + 6}" width="12" height="3" fill="{color}"/>'
                   f'<text x="{lx + 16}" y="{_MT + 11}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def percentile_chart(summary: dict[str, Any]) -> str:
    """Latency by percentile on a 'nines' axis (50, 90, 99, 99.9, max)."""
    if not summary.get("count"):
        return "<p><em>latency distribution: no data</em></p>"
    points = [(50, summary["p50"]), (90, summary["p90"]), (99, summary["p99"]),
              (99.9, summary["p999"]), (99.99, summary["max"])]
    xs = [math.log10(100 / (100 - p)) for p, _v in points]
    labels = ["50%", "90%", "99%", "99.9%", "max"]
    return line_chart("end-to-end latency by percentile", xs,
                      [("latency", [float(v) for _p, v in points])], "percentile", "ms",
                      x_ticks=list(zip(xs, labels, strict=True)))


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


def _grid(header: list[str], rows: list[list[str]], bad: set[tuple[int, int]] | None = None
          ) -> str:
    """A table with a header row; cells in ``bad`` (row, column) are marked."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(
            f"<td class='bad'>{html.escape(c)}</td>" if bad and (i, j) in bad
            else f"<td>{html.escape(c)}</td>" for j, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _lat(s: dict[str, Any]) -> str:
    if not s.get("count"):
        return "-"
    return (f"p50 {s['p50']} / p90 {s['p90']} / p99 {s['p99']} / p99.9 {s['p999']} / "
            f"max {s['max']} ms (n={s['count']})")


#: What each delivery QoS allows (MQTT 5.0 §4.3; 3.1.1 §4.3).
QOS_ALLOWS = {
    "0": "at most once: loss allowed, no duplicates",
    "1": "at least once: no loss of acknowledged messages, duplicates allowed",
    "2": "exactly once: no loss of acknowledged messages, no duplicates",
}
#: What each violation counter means.
VIOLATIONS = {
    "lost_confirmed": "QoS 1/2 messages the broker acknowledged and a present subscriber "
                      "never received",
    "duplicated_violation": "duplicates where the QoS forbids them (QoS 0 and QoS 2)",
    "wills_missing": "wills a spec-following broker must have delivered and did not",
    "wills_unexpected": "wills received more often than connections ended without "
                        "DISCONNECT",
    "unknown_sequence_numbers": "messages with sequence numbers never published",
}
#: Why an expected will was excused (iotsim.accounting).
WILL_EXCUSES = {
    "not_subscribed": "the subscriber never got a SUBACK granting its filters",
    "before_subscribe": "the subscriber had not subscribed yet",
    "subscriber_away": "the subscriber was itself disconnected when the will was due",
    "broker_outage": "the broker went away (subscribers lost their connections at the "
                     "same moment): a crashed broker cannot have published it",
}


def _verdict(report: dict[str, Any]) -> str:
    verdict = report.get("verdict") or {"ok": report["ok"], "reasons": []}
    if verdict["ok"]:
        return "<p class='ok'>OK: the accounting matches what each QoS allows</p>"
    items = "".join(f"<li>{html.escape(r)}</li>" for r in verdict["reasons"]) or \
        "<li>violations</li>"
    return f"<p class='bad'>FAILED</p><ul>{items}</ul>"


def _by_qos(m: dict[str, Any]) -> str:
    header = ["delivery QoS", "what it allows", "published", "expected", "delivered", "lost",
              "lost: QoS 0", "lost: unacknowledged", "lost: excused",
              "lost: acknowledged (violation)", "duplicated", "duplicated (violation)",
              "out of order", "backlog"]
    rows: list[list[str]] = []
    bad: set[tuple[int, int]] = set()
    for q in ("0", "1", "2"):
        b = m["by_qos"][q]
        rows.append([q, QOS_ALLOWS[q], f"{m['published_by_qos'].get(q, 0):,}",
                     f"{b['expected']:,}", f"{b['delivered']:,}", f"{b['lost']:,}",
                     f"{b['lost_allowed_qos0']:,}", f"{b['lost_unconfirmed']:,}",
                     f"{b['lost_excused']:,}", f"{b['lost_confirmed']:,}",
                     f"{b['duplicated']:,}", f"{b['duplicated_violation']:,}",
                     f"{b['out_of_order']:,}", f"{b['backlog']:,}"])
        if b["lost_confirmed"]:
            bad.add((len(rows) - 1, 9))
        if b["duplicated_violation"]:
            bad.add((len(rows) - 1, 11))
    note = ("<p class='note'>published: by the QoS it was published with; the other "
            "columns by delivery QoS, min(published, granted) (MQTT 5.0 §3.8.4).</p>")
    return _grid(header, rows, bad) + note


def _wills(w: dict[str, Any]) -> str:
    if not w.get("expected") and not w.get("received"):
        return "<p>no will-bearing connection ended without DISCONNECT</p>"
    rows = [["expected", f"{w['expected']:,}",
             "connections ended without DISCONNECT, times matching subscribers"],
            ["owed", f"{w.get('owed', w['expected']):,}",
             "of those, wills a spec-following broker must deliver"],
            ["received", f"{w['received']:,}", ""],
            ["missing", f"{w['missing']:,}", "owed and not received (violation)"],
            ["unexpected", f"{w['unexpected']:,}", "received beyond expected (violation)"]]
    bad = {(3, 1)} if w["missing"] else set()
    if w["unexpected"]:
        bad.add((4, 1))
    for reason, count in w.get("excused", {}).items():
        rows.append([f"excused: {reason}", f"{count:,}", WILL_EXCUSES.get(reason, "")])
    out = _grid(["wills", "count", "meaning"], rows, bad)
    listed = w.get("excused_list") or []
    if listed:
        out += "<h3>Excused wills</h3>" + _grid(
            ["will topic", "subscriber", "connection end", "reason"],
            [[e["topic"], e["subscriber"], e["connection_end"],
              f"{e['reason']}: {WILL_EXCUSES.get(e['reason'], '')}"] for e in listed])
    return out


def _violations(v: dict[str, int]) -> str:
    rows = [[name, f"{count:,}", VIOLATIONS.get(name, "")] for name, count in v.items()]
    bad = {(i, 1) for i, (_n, count) in enumerate(v.items()) if count}
    return _grid(["violation", "count", "meaning"], rows, bad)


def _connect_errors(report: dict[str, Any]) -> str:
    ce = report.get("connect_errors") or {"errors": []}
    if not ce["errors"]:
        return "<p>none</p>"
    return _grid(["error", "kind", "count", "why"],
                 [[e["error"], e["kind"], f"{e['count']:,}", e["why"]] for e in ce["errors"]])


def render_html(report: dict[str, Any]) -> str:
    """The whole page."""
    rows = report["timeseries"]
    ts = [float(r["t"]) for r in rows]
    d, m = report["devices"], report["messages"]
    run = report["run"]
    summary = _table([
        ("scenario", f"{report['scenario']['name']}: {report['scenario']['description']}"),
        ("broker", f"{run.get('host')}:{run.get('port')}"),
        ("started / finished (UTC)", f"{run.get('started_at', '-')} / "
                                     f"{run.get('finished_at', '-')}"),
        ("wall time", f"{run['wall_s']} s, {run['processes']} process(es)"),
        ("devices", f"{d['connected']} connected of {d['target']}, {d['failed']} failed, "
                    f"peak {d['peak_connected']}"),
        ("messages", f"published {m['published']}, delivered {m['delivered']} of "
                     f"{m['expected']} expected, lost {m['lost']}, duplicated "
                     f"{m['duplicated']}, out of order {m['out_of_order']}"),
        ("throughput", f"{m['published_per_s']}/s published, {m['delivered_per_s']}/s "
                       f"delivered"),
        ("end-to-end latency", _lat(report["latency_ms"])),
        ("publish to ack", _lat(report["publish_ack_latency_ms"])),
        ("connect latency", _lat(report["connect_latency_ms"])),
        ("simulator", f"cpu {report['cpu_percent']}%, rss {report['rss_mb']} MB, "
                      f"{report['per_device']['rss_kb']} KB/device"),
    ])
    charts = [
        line_chart("messages per second", ts,
                   [("published", [float(r["published"]) for r in rows]),
                    ("delivered", [float(r["delivered"]) for r in rows])],
                   "seconds", "msg/s"),
        line_chart("connected devices", ts, [("connected", [float(r["connected"])
                                                              for r in rows])],
                   "seconds", "devices"),
        line_chart("end-to-end latency per second", ts,
                   [("p50", [r["p50_ms"] for r in rows]), ("p99", [r["p99_ms"] for r in rows]),
                    ("max", [r["max_ms"] for r in rows])], "seconds", "ms"),
        percentile_chart(report["latency_ms"]),
    ]
    errors = _grid(["error", "count"], [[k, f"{v:,}"] for k, v in report["errors"].items()]) \
        if report["errors"] else "<p>none</p>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>iotsim report: {html.escape(report['scenario']['name'])}</title>"
        "<style>body{font-family:sans-serif;margin:24px;max-width:1100px}"
        "table{border-collapse:collapse;margin:6px 0}th,td{text-align:left;padding:3px 10px;"
        "border-bottom:1px solid #ddd;font-size:13px;vertical-align:top}"
        "td.bad,p.bad{color:#b00;font-weight:bold}p.ok{color:#070;font-weight:bold}"
        "p.note{font-size:12px;color:#555}svg{margin:10px 0}</style></head><body>"
        f"<h1>iotsim report: {html.escape(report['scenario']['name'])}</h1>"
        f"<h2>Verdict</h2>{_verdict(report)}"
        f"{summary}"
        f"<h2>Delivery by QoS</h2>{_by_qos(m)}"
        f"<h2>Violations</h2>{_violations(report['violations'])}"
        f"<h2>Wills</h2>{_wills(report['wills'])}"
        f"<h2>Connect errors</h2>{_connect_errors(report)}"
        f"<h2>Charts</h2>{''.join(charts)}<h2>Errors</h2>{errors}"
        "</body></html>\n"
    )
