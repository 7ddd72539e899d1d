"""The broker's own Python cost of one QoS 1 message, without sockets (issue 19).

Builds a real :class:`~iotbroker.server.broker.Broker` (memory store, the config of
``e2e.py``) on a uvloop loop with two in-process clients on stand-in transports (MQTT
3.1.1): a subscriber of ``bench/one/to/one`` at QoS 1 and a publisher. Per message, as
in loadgen's ``latency`` scenario: the publisher's QoS 1 PUBLISH (64-byte payload) into
``data_received``, the broker's flush (the forward, then the PUBACK, written), then the
subscriber's PUBACK into ``data_received`` and its flush. Prints µs per message:

* ``forward``: PUBLISH ``data_received`` -> the forward's ``transport.write`` (the
  path whose cost is on every message's latency);
* ``after``: the rest of that flush (the PUBACK to the publisher);
* ``puback``: the subscriber's PUBACK (off the latency path: it comes later).

``--cold MIB`` evicts CPU caches between messages by writing a buffer of that size
(4: more than this machine's L2 of 2 MiB, within its L3 of 32 MiB; 48: all of them),
as a process idle for 1 ms on a busy machine finds them; the difference to the warm
figure is the cold-path cost of the 1,000 msg/s scenario.
``--idle US`` sleeps US µs (``time.sleep``) before each message, as the live broker
sleeps in ``epoll_wait`` between messages at 1,000 msg/s (its CPU idles or runs
something else); ``--spin`` busy-waits the same time instead (the CPU stays with this
process): the difference is what an idle gap costs the next message on this machine.
``--profile`` prints the cProfile of the warm run instead (calls per message).
``--allocs`` counts instead what one message allocates (``benchmarks/alloccount.py``:
the allocator's calls, including blocks freed at once) per phase, the blocks still
alive per message (``sys.getallocatedblocks``), the GC-tracked objects alive at the
forward's write by type, and ``tracemalloc``'s sites of what is alive then (the
compiled build's allocations are attributed to the nearest interpreted line).
``--rocksdb`` uses a RocksDB store (a temporary directory; ``storage.durability`` os)
instead of memory, ``--persistent`` a subscriber with a persistent session
(``clean_session`` 0); the line then also gives the store's write batches and changes
per message (none for clean sessions on either store).

    .venv/bin/python benchmarks/publish_path.py [--messages 20000 --reps 5] [--cold 4]

Compare builds with ``IOTBROKER_PURE=1 .venv/bin/pip install -e .`` and back.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import statistics
import struct
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.inproc import (
    StandInTransport,
    cancel_timers,
    frozen_gc,
    make_broker,
    median_and_runs,
    repeat,
)
from iotbroker import build
from iotbroker.codec.encode import encode_packet
from iotbroker.codec.packets import Connect, Publish, Subscribe, Subscription
from iotbroker.server.broker import Broker
from iotbroker.server.transport import ClientProtocol

TOPIC = "bench/one/to/one"
pc = time.perf_counter_ns


class StampingTransport(StandInTransport):
    """A stand-in transport: each write is time-stamped and kept (the last one)."""

    __slots__ = ("last", "stamp")

    def __init__(self) -> None:
        super().__init__()
        self.stamp = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.stamp = pc()
        self.last = data


class HookedTransport(StampingTransport):
    """A stamping transport that runs ``hook`` (if set) at each write."""

    __slots__ = ("hook",)

    def __init__(self) -> None:
        super().__init__()
        self.hook: object = None

    def write(self, data: bytes) -> None:
        self.last = data
        if self.hook is not None:
            self.hook()  # type: ignore[operator]


def client(broker: Broker, client_id: str, clean: bool = True,
           transport: StampingTransport | None = None,
           ) -> tuple[ClientProtocol, StampingTransport]:
    proto = ClientProtocol(broker, "bench")
    transport = transport or StampingTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    proto.data_received(encode_packet(Connect(client_id=client_id, keepalive=60,
                                              clean_start=clean), 4))
    broker.flush()
    return proto, transport


def subscribed_pair(broker: Broker, messages: int, clean: bool = True,
                    transport: StampingTransport | None = None,
                    ) -> tuple[ClientProtocol, StampingTransport, ClientProtocol, list[bytes]]:
    """A subscriber to TOPIC at QoS 1 and a publisher, connected; ``messages`` QoS 1
    PUBLISH packets for it, encoded (a sequence number and 56 bytes each)."""
    sub, sub_t = client(broker, "path-sub", clean=clean, transport=transport)
    sub.data_received(encode_packet(Subscribe(1, [Subscription(TOPIC, qos=1)]), 4))
    broker.flush()
    pub, _ = client(broker, "path-pub")
    publishes = [encode_packet(Publish(topic=TOPIC, payload=struct.pack(">Q", i) + b"\xa5" * 56,
                                       qos=1, packet_id=i % 65535 + 1), 4)
                 for i in range(messages)]
    return sub, sub_t, pub, publishes


async def one_run(messages: int, cold: int, profile: cProfile.Profile | None,
                  rocksdb: str | None = None, persistent: bool = False,
                  idle_us: int = 0, spin: bool = False,
                  ) -> tuple[float, float, float, float, float]:
    store = {} if rocksdb is None else {
        "storage": {"backend": "rocksdb", "path": rocksdb, "durability": "os"}}
    broker = make_broker(asyncio.get_running_loop(), "publish_path.py", **store)
    sub, sub_t, pub, publishes = subscribed_pair(broker, messages, clean=not persistent)
    evict = bytearray(cold << 20) if cold else None
    idle_s, idle_ns = idle_us / 1e6, idle_us * 1000
    with frozen_gc():
        forward, after, puback = [], [], []
        metrics = broker.metrics
        batches0, changes0 = metrics.storage_batches, metrics.storage_changes
        if profile is not None:
            profile.enable()
        for i in range(messages):
            if evict is not None:
                evict[::64] = b"\x01" * (len(evict) // 64)
            if idle_us:
                if spin:
                    until = pc() + idle_ns
                    while pc() < until:
                        pass
                else:
                    time.sleep(idle_s)
            t0 = pc()
            pub.data_received(publishes[i])
            broker.flush()
            t1 = pc()
            out = sub_t.last
            if out[0] != 0x32:
                raise SystemExit(f"no forward for message {i}: {out!r}")
            packet_id = struct.unpack_from(">H", out, 2 + 2 + len(TOPIC))[0]
            t2 = pc()
            sub.data_received(bytes((0x40, 2, packet_id >> 8, packet_id & 0xFF)))
            broker.flush()
            t3 = pc()
            forward.append(sub_t.stamp - t0)
            after.append(t1 - sub_t.stamp)
            puback.append(t3 - t2)
        if profile is not None:
            profile.disable()
    cancel_timers(broker, (sub, pub))
    if rocksdb is not None:
        broker.store.close()
    return (statistics.median(forward) / 1e3, statistics.median(after) / 1e3,
            statistics.median(puback) / 1e3,
            (metrics.storage_batches - batches0) / messages,
            (metrics.storage_changes - changes0) / messages)


async def alloc_run(messages: int) -> None:
    """Prints what one QoS 1 message allocates, per phase (see the module's doc)."""
    from benchmarks.alloccount import Counter as AllocCounter  # noqa: PLC0415 (cc)

    counter = AllocCounter()
    broker = make_broker(asyncio.get_running_loop(), "publish_path.py")
    sub_t = HookedTransport()
    sub, _, pub, publishes = subscribed_pair(broker, messages, transport=sub_t)
    pubacks = [[bytes((0x40, 2, hi, lo)) for lo in range(256)] for hi in range(256)]
    at = 2 + 2 + len(TOPIC)
    counts = counter.counts
    a0 = counts()
    a1 = counts()
    cost = (a1[0] - a0[0], a1[1] - a0[1])  # what reading the counters allocates
    stamps: list[tuple[int, int]] = []

    def at_write() -> None:
        stamps.append(counts())

    phases = [[0, 0] for _ in range(3)]  # forward, after, puback: [obj, mem]
    with frozen_gc():
        blocks0 = sys.getallocatedblocks()
        for data in publishes:
            sub_t.hook = at_write
            c0 = counts()
            pub.data_received(data)
            broker.flush()
            c1 = counts()
            sub_t.hook = None
            out = sub_t.last
            if out[0] != 0x32:
                raise SystemExit(f"no forward: {out!r}")
            ack = pubacks[out[at]][out[at + 1]]
            c2 = counts()
            sub.data_received(ack)
            broker.flush()
            c3 = counts()
            cw = stamps.pop()
            for d in range(2):
                phases[0][d] += cw[d] - c0[d] - cost[d]
                phases[1][d] += c1[d] - cw[d] - cost[d]
                phases[2][d] += c3[d] - c2[d] - cost[d]
        blocks1 = sys.getallocatedblocks()
    names = ("PUBLISH read -> forward written", "rest of the flush (PUBACK written)",
             "subscriber's PUBACK")
    print(f"{build.describe()}: allocations per QoS 1 message ({messages} messages; "
          "object allocator + PyMem allocator)")
    for name, (obj, mem) in zip(names, phases, strict=True):
        print(f"  {name:40s} {obj / messages:6.2f} + {mem / messages:5.2f}")
    total_obj = sum(p[0] for p in phases) / messages
    total_mem = sum(p[1] for p in phases) / messages
    print(f"  {'total':40s} {total_obj:6.2f} + {total_mem:5.2f}")
    print(f"  blocks still alive per message: {(blocks1 - blocks0) / messages:.3f}")

    # What exists at the forward's write: GC-tracked objects by type, then tracemalloc.
    seen: dict[str, Counter[str]] = {}

    def types_now(key: str) -> None:
        seen[key] = Counter(type(o).__qualname__ for o in gc.get_objects())

    def live(data: bytes, hook: object) -> None:
        sub_t.hook = hook
        pub.data_received(data)
        broker.flush()
        sub_t.hook = None
        out = sub_t.last
        sub.data_received(pubacks[out[at]][out[at + 1]])
        broker.flush()

    with frozen_gc():
        types_now("before")
        live(publishes[0], lambda: types_now("write"))
    diff = seen["write"] - seen["before"]
    diff.pop("Counter", None)
    print("GC-tracked objects alive at the forward's write, new in this message: "
          + (", ".join(f"{n} x{k}" for n, k in diff.most_common()) or "none"))
    snaps: list[tracemalloc.Snapshot] = []
    tracemalloc.start(4)
    with frozen_gc():
        before = tracemalloc.take_snapshot()
        live(publishes[1], lambda: snaps.append(tracemalloc.take_snapshot()))
    tracemalloc.stop()
    print("tracemalloc, alive at the forward's write, new in this message (top sites):")
    for stat in snaps[0].compare_to(before, "lineno")[:12]:
        if stat.count_diff > 0:
            frame = stat.traceback[0]
            print(f"  +{stat.count_diff} blocks {stat.size_diff:+d} B  "
                  f"{frame.filename.split('/')[-1]}:{frame.lineno}")
    cancel_timers(broker, (sub, pub))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cold", type=int, default=0, metavar="MIB",
                    help="evict the caches between messages (write MIB MiB)")
    ap.add_argument("--idle", type=int, default=0, metavar="US",
                    help="sleep US µs before each message (the CPU idles)")
    ap.add_argument("--spin", action="store_true",
                    help="with --idle: busy-wait instead of sleeping")
    ap.add_argument("--profile", action="store_true", help="cProfile of one warm run")
    ap.add_argument("--rocksdb", action="store_true", help="a RocksDB store, not memory")
    ap.add_argument("--persistent", action="store_true",
                    help="the subscriber's session is persistent (clean_session 0)")
    ap.add_argument("--allocs", action="store_true",
                    help="count what one message allocates (see the module's doc)")
    args = ap.parse_args()
    if args.allocs:
        uvloop.run(alloc_run(args.messages))
        return
    if args.profile:
        prof = cProfile.Profile()
        uvloop.run(one_run(args.messages, False, prof))
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)
        return
    messages = min(args.messages, 3000) if args.cold or args.idle else args.messages

    async def run_once() -> tuple[float, float, float, float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            return await one_run(messages, args.cold, None, tmp if args.rocksdb else None,
                                 args.persistent, args.idle, args.spin)

    cols = list(zip(*repeat(args.reps, run_once), strict=True))
    parts = []
    for name, col in zip(("forward", "after", "puback"), cols[:3], strict=True):
        median, each = median_and_runs(col, "/")
        parts.append(f"{name} {median:.2f} ({each})")
    cold = f", caches evicted ({args.cold} MiB)" if args.cold else ""
    if args.idle:
        cold += f", {'spinning' if args.spin else 'asleep'} {args.idle} µs before each"
    store = (", RocksDB" if args.rocksdb else "") + (", persistent" if args.persistent else "")
    print(f"{build.describe()}{cold}{store}: µs per message, "
          f"median of {args.reps} runs of each run's median ({messages} messages): "
          + ", ".join(parts)
          + f"; store writes per message: {statistics.median(cols[3]):.2f} batches, "
            f"{statistics.median(cols[4]):.2f} changes")


if __name__ == "__main__":
    main()
