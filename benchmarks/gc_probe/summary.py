"""Summary of ``GC_PROBE_LOG`` files (see sitecustomize.py here): per broker process,
the collections after the start-up's full one, split by gaps of more than 1 s; the first
group is the connect burst (e2e's connect scenario), the rest its clients' disconnects.

    python3 benchmarks/gc_probe/summary.py '/tmp/gc/run.*'
"""

from __future__ import annotations

import glob
import sys


def main() -> None:
    for path in sorted(glob.glob(sys.argv[1])):
        with open(path) as f:
            rows = [line.split() for line in f]
        events = [(float(r[0]), int(r[1]), float(r[2])) for r in rows]
        start = max((i for i, e in enumerate(events) if e[1] == 2), default=-1)
        events = events[start + 1:]  # after the start-up's gc.collect()
        if not events:
            print(f"{path}: no collection after the start-up")
            continue
        groups = [[events[0]]]
        for event in events[1:]:
            if event[0] - groups[-1][-1][0] > 1.0:
                groups.append([event])
            else:
                groups[-1].append(event)
        burst, rest = groups[0], [e for g in groups[1:] for e in g]
        print(f"{path}: burst {len(burst)} collections, longest {max(e[2] for e in burst):.2f} "
              f"ms, total {sum(e[2] for e in burst):.1f} ms; later {len(rest)} collections, "
              f"{sum(e[2] for e in rest):.1f} ms")


if __name__ == "__main__":
    main()
