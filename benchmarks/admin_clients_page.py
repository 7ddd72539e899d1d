"""How long one page of the admin API's clients list takes with many offline sessions
(issue 17: the list must not cost a scan of every session per request).

Writes a RocksDB store with ``--sessions`` persistent offline sessions (one
subscription each), starts the real broker on it with the admin API on loopback (no
credentials: loopback only), and times ``GET /api/v1/clients?limit=100`` (first page,
a middle page, the last page, a filtered page) over real HTTP, ``--repeat`` times each.

    .venv/bin/python benchmarks/admin_clients_page.py               # 50,000 sessions
    .venv/bin/python benchmarks/admin_clients_page.py --sessions 200000

Not a test: nothing is asserted; it prints the median and worst time of each request.
Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iotbroker.storage.base import (  # noqa: E402
    ChangeBatch,
    SessionRecord,
    SubscriptionEntry,
)
from iotbroker.storage.rocksdb import RocksDBStore  # noqa: E402

_ADMIN = re.compile(r"admin listening on (http://\S+)")


def populate(path: str, sessions: int) -> None:
    store = RocksDBStore(path, durability="os")
    now = time.time()
    batch = ChangeBatch()
    for s in range(sessions):
        cid = f"device-{s:06d}"
        batch.put_session(SessionRecord(cid, 4, 0xFFFFFFFF, now, None, 1, 1))
        batch.put_subscription(SubscriptionEntry(cid, f"fleet/{s}/cmd/#", 1))
        if len(batch) >= 20_000:
            store.apply(batch)
            batch.clear()
    store.apply(batch)
    store.close()


def timed_get(url: str) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = json.loads(resp.read())
    return time.perf_counter() - started, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iotbroker-admin-page-") as tmp:
        data = str(Path(tmp, "data"))
        populate(data, args.sessions)
        config = Path(tmp, "broker.yaml")
        config.write_text(
            "listeners:\n  - {name: default, type: tcp, host: 127.0.0.1, port: 0}\n"
            f"storage: {{backend: rocksdb, path: {data}}}\n"
            "sys_topics: {enabled: false}\n"
            "logging: {level: WARNING, levels: {iotbroker.admin: INFO}}\n"
            "admin: {enabled: true, host: 127.0.0.1, port: 0}\n"
        )
        log_path = Path(tmp, "broker.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "iotbroker", "run", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )
        try:
            base = ""
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                found = _ADMIN.search(log_path.read_text(errors="replace"))
                if found:
                    base = found.group(1)
                    break
                time.sleep(0.1)
            if not base:
                print(log_path.read_text(errors="replace"), file=sys.stderr)
                return 1
            took, _ = timed_get(base + "/api/v1/clients?limit=100")
            print(f"first request    {took * 1000:8.1f} ms (not counted below)")
            last = (args.sessions + 99) // 100
            cases = {
                "first page": "/api/v1/clients?limit=100",
                "middle page": f"/api/v1/clients?limit=100&page={max(1, last // 2)}",
                "last page": f"/api/v1/clients?limit=100&page={last}",
                "connected=false": "/api/v1/clients?limit=100&connected=false",
                "like_clientid": "/api/v1/clients?limit=100&like_clientid=device-0",
                "username": "/api/v1/clients?limit=100&username=nobody",
            }
            for name, path in cases.items():
                times = []
                body: dict[str, object] = {}
                for _ in range(args.repeat):
                    took, body = timed_get(base + path)
                    times.append(took)
                meta = body.get("meta")
                print(f"{name:16} {statistics.median(times) * 1000:8.1f} ms median "
                      f"{max(times) * 1000:8.1f} ms worst  meta={meta}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
