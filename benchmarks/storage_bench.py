"""Storage benchmark: apply() throughput and load() time.

apply: a QoS 1 queue in steady state. Each batch puts B new queued deliveries for one
session and deletes the B put by the previous batch (they were acknowledged), so a
batch holds 2*B changes; "msgs/s" counts B per batch. Run for the memory store and
RocksDB with durability "os" (WAL, no fsync) and "fsync" (one sync per batch), for
B in 1, 10, 100.

load: N sessions (each with a subscription and a 3-record in-flight window) and M
queued deliveries spread over them, then close, reopen and time load(); prints the
size on disk and the RSS before and after.

    .venv/bin/python benchmarks/storage_bench.py                       # small, < 60 s
    .venv/bin/python benchmarks/storage_bench.py --sessions 10000 --queued 1000000
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

from iotbroker.codec.packets import NO_PROPERTIES, Properties
from iotbroker.message import Delivery, Message
from iotbroker.storage.base import (
    ChangeBatch,
    OutboundRecord,
    OutboundState,
    QueuedRecord,
    SessionRecord,
    Store,
    SubscriptionEntry,
)
from iotbroker.storage.memory import MemoryStore
from iotbroker.storage.rocksdb import RocksDBStore


def rss_mb() -> float:
    """Current resident set size in MiB (Linux), else the peak."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def message(i: int, payload: int) -> Message:
    return Message(
        topic=f"fleet/dev{i % 1000}/telemetry",
        payload=os.urandom(payload),
        qos=1,
        retain=False,
        properties=NO_PROPERTIES if i % 4 else Properties(content_type="application/json"),
        created_at=1_700_000_000.0 + i,
        origin=f"dev{i % 1000}",
    )


def bench_apply(store: Store, batch_size: int, seconds: float, payload: int) -> tuple[int, float]:
    msgs = [message(i, payload) for i in range(256)]
    seq = 0
    batches = 0
    prev: list[int] = []
    start = time.perf_counter()
    deadline = start + seconds
    batch = ChangeBatch()
    while True:
        batch.clear()
        for s in prev:
            batch.delete_queued("bench-client", s)
        prev = []
        for _ in range(batch_size):
            batch.put_queued(QueuedRecord("bench-client", seq, Delivery(msgs[seq & 255], 1)))
            prev.append(seq)
            seq += 1
        store.apply(batch)
        batches += 1
        if batches % 16 == 0 and time.perf_counter() >= deadline:
            break
    return batches, time.perf_counter() - start


def fill(store: Store, sessions: int, queued: int, payload: int) -> float:
    start = time.perf_counter()
    msgs = [message(i, payload) for i in range(1024)]
    batch = ChangeBatch()
    per_session = max(1, queued // sessions)
    seq = 0
    done = 0
    for n in range(sessions):
        cid = f"device-{n:07d}"
        batch.put_session(
            SessionRecord(cid, 5, 86400, disconnected_at=1_700_000_000.0, next_seq=per_session + 3)
        )
        batch.put_subscription(SubscriptionEntry(cid, f"fleet/{cid}/cmd/#", 1))
        for k in range(3):
            d = Delivery(msgs[(n + k) & 1023], 1)
            batch.put_outbound(OutboundRecord(cid, k + 1, OutboundState.PUBLISH_SENT, d, k))
        take = min(per_session, queued - done) if n < sessions - 1 else queued - done
        for k in range(take):
            batch.put_queued(QueuedRecord(cid, 3 + k, Delivery(msgs[seq & 1023], 1)))
            seq += 1
        done += take
        if len(batch) >= 5000:
            store.apply(batch)
            batch.clear()
    store.apply(batch)
    return time.perf_counter() - start


def timed(label: str, fn: Callable[[], object]) -> object:
    t = time.perf_counter()
    out = fn()
    print(f"  {label}: {time.perf_counter() - t:.2f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="per apply() configuration")
    ap.add_argument("--payload", type=int, default=100, help="payload bytes per message")
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--queued", type=int, default=100_000)
    ap.add_argument("--dir", default=None, help="where to put the databases (default: a temp dir)")
    ap.add_argument("--skip-apply", action="store_true")
    ap.add_argument("--skip-load", action="store_true")
    args = ap.parse_args()

    base = tempfile.mkdtemp(prefix="iotbroker-storage-bench-", dir=args.dir)
    fs = subprocess.run(["df", "-T", base], capture_output=True, text=True, check=False)
    fstype = fs.stdout.splitlines()[-1].split()[1] if fs.returncode == 0 else "?"
    print(f"python {platform.python_version()}, {platform.machine()}, dir {base} ({fstype})")
    try:
        if not args.skip_apply:
            print(f"\napply(): steady-state QoS 1 queue, payload {args.payload} B")
            print(f"{'store':<16}{'B':>5}{'batches/s':>12}{'msgs/s':>12}{'changes/s':>12}")
            for kind in ("memory", "rocksdb os", "rocksdb fsync"):
                for size in (1, 10, 100):
                    path = os.path.join(base, f"apply-{kind.replace(' ', '-')}-{size}")
                    store: Store
                    if kind == "memory":
                        store = MemoryStore()
                    else:
                        store = RocksDBStore(path, durability=kind.split()[1])  # type: ignore[arg-type]
                    try:
                        n, dt = bench_apply(store, size, args.seconds, args.payload)
                    finally:
                        store.close()
                    shutil.rmtree(path, ignore_errors=True)
                    print(
                        f"{kind:<16}{size:>5}{n / dt:>12,.0f}{n * size / dt:>12,.0f}"
                        f"{n * size * 2 / dt:>12,.0f}"
                    )

        if not args.skip_load:
            path = os.path.join(base, "load")
            print(
                f"\nload(): {args.sessions:,} sessions (1 subscription, 3 in flight each), "
                f"{args.queued:,} queued, payload {args.payload} B"
            )
            store = RocksDBStore(path)
            dt = fill(store, args.sessions, args.queued, args.payload)
            records = args.sessions * 5 + args.queued
            print(f"  fill: {dt:.2f} s ({records / dt:,.0f} records/s)")
            store.close()
            gc.collect()
            rss0 = rss_mb()
            t = time.perf_counter()
            store = RocksDBStore(path)
            opened = time.perf_counter() - t
            t = time.perf_counter()
            snap = store.load()
            loaded = time.perf_counter() - t
            n_q = sum(len(v) for v in snap.queued.values())
            n_o = sum(len(v) for v in snap.outbound.values())
            stats = store.stats()
            print(f"  open: {opened:.2f} s")
            print(
                f"  load: {loaded:.2f} s ({len(snap.sessions):,} sessions, {n_o:,} outbound, "
                f"{n_q:,} queued; {(records) / loaded:,.0f} records/s)"
            )
            print(
                f"  disk: {stats['disk_bytes'] / 2**20:.1f} MiB"
                f" (sst {stats['sst_bytes'] / 2**20:.1f} MiB,"
                f" memtables {stats['memtable_bytes'] / 2**20:.1f} MiB)"
            )
            print(
                f"  RSS: {rss0:.0f} MiB before load, {rss_mb():.0f} MiB after, "
                f"peak {peak_rss_mb():.0f} MiB"
            )
            del snap
            store.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
