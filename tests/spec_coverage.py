"""Count which normative statements of MQTT 3.1.1 and 5.0 our tests cite.

A test cites a statement by its name (``test_mqtt_3_1_2_24_...``) or by the id in
its text (``[MQTT-3.1.2-24]``); the golden packet catalogue (``tests/codec/golden.py``)
counts too, since every error case in it is asserted by ``test_golden.py``. Statements
come from ``shared/spec/mqtt-normative-statements.csv`` beside the checkout (or
``--csv``). Only statements
that bind the Server (``Server`` or ``both``) are counted as ours to test.

An id that exists in both versions counts for a version when a test cites it; where
the two versions give one rule different ids, tests cite both.

    python tests/spec_coverage.py            # summary per version
    python tests/spec_coverage.py --missing  # and the uncited server statements
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT.parent / "shared" / "spec" / "mqtt-normative-statements.csv"
_ID_TEXT = re.compile(r"MQTT-(\d+)\.(\d+)\.(\d+)-(\d+)")
_ID_NAME = re.compile(r"test_mqtt_(\d+)_(\d+)_(\d+)_(\d+)")


def cited_ids(tests_dir: Path) -> dict[str, set[str]]:
    """Statement id -> test files citing it."""
    found: dict[str, set[str]] = {}
    paths = [*sorted(tests_dir.rglob("test_*.py")), tests_dir / "codec" / "golden.py"]
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = str(path.relative_to(tests_dir.parent))
        for pattern in (_ID_TEXT, _ID_NAME):
            for m in pattern.finditer(text):
                found.setdefault("MQTT-{}.{}.{}-{}".format(*m.groups()), set()).add(rel)
    return found


def load_statements(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--missing", action="store_true", help="list uncited statements")
    parser.add_argument("--all-binds", action="store_true",
                        help="count Client-only statements too")
    args = parser.parse_args(argv)
    if not args.csv.exists():
        print(f"spec list not found: {args.csv}", file=sys.stderr)
        return 2
    statements = load_statements(args.csv)
    cited = cited_ids(ROOT / "tests")
    for version in ("3.1.1", "5.0"):
        rows = [
            r for r in statements
            if r["version"] == version and (args.all_binds or r["binds"] in ("Server", "both"))
        ]
        covered = [r for r in rows if r["id"] in cited]
        pct = 100.0 * len(covered) / len(rows) if rows else 0.0
        print(f"MQTT {version}: {len(covered)}/{len(rows)} server-side statements cited "
              f"by a test ({pct:.0f}%)")
        if args.missing:
            for r in rows:
                if r["id"] not in cited:
                    print(f"  missing {r['id']:<16} {r['binds']:<6} {r['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
