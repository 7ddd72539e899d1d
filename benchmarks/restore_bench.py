"""Broker restart with a large RocksDB store: restore time and memory.

Writes a store directly (N persistent sessions, each with a subscription and
M/N queued QoS 1 messages, plus R retained messages), then starts the real broker
on it (``python -m iotbroker run``) and reports:

* the restore time the broker logs ("restored ... in X s"),
* the time from process start until it listens,
* the broker's RSS after the restore, and RSS per queued message,
* the size of the store on disk.

    .venv/bin/python benchmarks/restore_bench.py                 # 10k sessions, 100k queued
    .venv/bin/python benchmarks/restore_bench.py --queued 1000000  # the issue's 1M case

Not a test: nothing is asserted; numbers are printed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iotbroker.codec.packets import Properties  # noqa: E402
from iotbroker.message import Delivery, Message  # noqa: E402
from iotbroker.storage.base import (  # noqa: E402
    ChangeBatch,
    QueuedRecord,
    SessionRecord,
    SubscriptionEntry,
)
from iotbroker.storage.rocksdb import RocksDBStore  # noqa: E402

_RESTORED = re.compile(r"restored (\d+) sessions, (\d+) subscriptions, (\d+) queued.*in ([\d.]+)s")
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def populate(path: str, sessions: int, queued: int, retained: int, payload: int) -> float:
    started = time.perf_counter()
    store = RocksDBStore(path, durability="os")
    props = Properties()
    body = b"x" * payload
    per_session = queued // sessions if sessions else 0
    now = time.time()
    batch = ChangeBatch()
    for s in range(sessions):
        cid = f"device-{s:06d}"
        batch.put_session(SessionRecord(cid, 4, 0xFFFFFFFF, now, None, 1, per_session + 1))
        batch.put_subscription(SubscriptionEntry(cid, f"fleet/{s}/cmd/#", 1))
        for q in range(per_session):
            msg = Message(f"fleet/{s}/cmd/set", body, 1, False, props, now)
            batch.put_queued(QueuedRecord(cid, q + 1, Delivery(msg, 1)))
        if len(batch) >= 20_000:
            store.apply(batch)
            batch.clear()
    for r in range(retained):
        batch.put_retained(Message(f"fleet/{r}/status", body, 1, True, props, now))
        if len(batch) >= 20_000:
            store.apply(batch)
            batch.clear()
    store.apply(batch)
    store.close()
    return time.perf_counter() - started


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def du(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--retained", type=int, default=10_000)
    parser.add_argument("--payload", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iotbroker-restore-") as tmp:
        data = os.path.join(tmp, "data")
        took = populate(data, args.sessions, args.queued, args.retained, args.payload)
        print(f"store written: {args.sessions} sessions, {args.queued} queued, "
              f"{args.retained} retained in {took:.1f}s; {du(data) / 2**20:.1f} MiB on disk")
        config = Path(tmp, "broker.yaml")
        config.write_text(
            "listeners:\n  - {name: default, type: tcp, host: 127.0.0.1, port: 0}\n"
            f"storage: {{backend: rocksdb, path: {data}}}\n"
            "sys_topics: {enabled: false}\n"
            f"mqtt: {{max_queued_messages: {max(10_000, args.queued)}}}\n"
        )
        log_path = Path(tmp, "broker.log")
        with open(log_path, "wb") as log:
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "iotbroker", "run", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )
        try:
            listening = None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and proc.poll() is None:
                text = log_path.read_text(errors="replace")
                if _LISTENING.search(text):
                    listening = time.perf_counter() - started
                    break
                time.sleep(0.05)
            text = log_path.read_text(errors="replace")
            m = _RESTORED.search(text)
            if listening is None or m is None:
                print("broker did not come up:\n" + text[-2000:])
                return 1
            time.sleep(0.5)
            rss = rss_kib(proc.pid)
            print(f"restore (logged): {float(m.group(4)):.2f}s for {m.group(1)} sessions, "
                  f"{m.group(2)} subscriptions, {m.group(3)} queued/in-flight")
            print(f"process start -> listening: {listening:.2f}s")
            print(f"broker RSS after restore: {rss / 1024:.1f} MiB "
                  f"({rss * 1024 / max(1, args.queued):.0f} bytes per queued message, "
                  "including everything else)")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
