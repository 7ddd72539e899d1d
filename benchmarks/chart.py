"""Draw the iotbroker/mosquitto ratios of an ``e2e.py --json`` file as an SVG bar chart.

No plotting library: the SVG is written by hand, so the benchmarks need nothing beyond
the broker's own dependencies.

    .venv/bin/python benchmarks/chart.py /tmp/e2e.json docs/performance.svg
"""

from __future__ import annotations

import json
import sys
from html import escape


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        rows = json.load(f)["rows"]
    # Goal direction: for throughput the ratio should be >= 0.5; for latency and memory
    # (lower is better) we plot mosquitto/iotbroker so that "higher is better" everywhere.
    bars = []
    for r in rows:
        if r["iotbroker"] is None or not r["mosquitto"]:
            continue
        if r["higher_is_better"]:
            ratio, per_core = r["ratio"], r["ratio_per_core"]
            label = r["label"]
        else:
            ratio, per_core = r["mosquitto"] / r["iotbroker"], None
            label = r["label"] + " [mosquitto/iotbroker]"
        bars.append((label, ratio, per_core))
    width, row_h, left, top = 1000, 46, 410, 50
    scale_max = max(2.5, max(max(b[1], b[2] or 0) for b in bars) * 1.1)
    plot_w = width - left - 40
    height = top + row_h * len(bars) + 60

    def x(v: float) -> float:
        return left + plot_w * min(v, scale_max) / scale_max

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">'
        "iotbroker relative to mosquitto (1.0 = equal, higher is better for iotbroker)</text>",
    ]
    for t in [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6]:
        if t > scale_max:
            break
        out.append(f'<line x1="{x(t)}" y1="{top - 6}" x2="{x(t)}" '
                   f'y2="{top + row_h * len(bars)}" stroke="#ddd"/>')
        out.append(f'<text x="{x(t)}" y="{top + row_h * len(bars) + 16}" '
                   f'text-anchor="middle" fill="#555">{t:g}</text>')
    gx = x(0.5)
    out.append(f'<line x1="{gx}" y1="{top - 10}" x2="{gx}" y2="{top + row_h * len(bars)}" '
               'stroke="#c00" stroke-width="2" stroke-dasharray="6,4"/>')
    out.append(f'<text x="{gx + 4}" y="{top - 14}" fill="#c00">goal 0.5 (throughput)</text>')
    for i, (label, ratio, per_core) in enumerate(bars):
        y = top + i * row_h
        out.append(f'<text x="{left - 8}" y="{y + 18}" text-anchor="end">{escape(label)}</text>')
        color = "#2b7bb9" if ratio >= 0.5 else "#d9822b"
        out.append(f'<rect x="{left}" y="{y + 4}" width="{x(ratio) - left:.1f}" height="16" '
                   f'fill="{color}"/>')
        out.append(f'<text x="{x(ratio) + 4:.1f}" y="{y + 17}">{ratio:.2f}</text>')
        if per_core is not None:
            out.append(f'<rect x="{left}" y="{y + 22}" width="{x(per_core) - left:.1f}" '
                       'height="10" fill="#8fb9d9"/>')
            out.append(f'<text x="{x(per_core) + 4:.1f}" y="{y + 32}" font-size="11" '
                       f'fill="#555">{per_core:.2f} per core</text>')
    ly = top + row_h * len(bars) + 36
    out.append(f'<rect x="{left}" y="{ly}" width="14" height="10" fill="#2b7bb9"/>'
               f'<text x="{left + 20}" y="{ly + 10}">ratio of medians</text>'
               f'<rect x="{left + 160}" y="{ly}" width="14" height="10" fill="#8fb9d9"/>'
               f'<text x="{left + 180}" y="{ly + 10}">ratio of throughput per broker '
               "CPU-second</text>")
    out.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
