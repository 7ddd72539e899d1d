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
``--profile`` prints the cProfile of the warm run instead (calls per message).
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
import pstats
import statistics
import struct
import sys
import tempfile
import time
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


def client(broker: Broker, client_id: str,
           clean: bool = True) -> tuple[ClientProtocol, StampingTransport]:
    proto = ClientProtocol(broker, "bench")
    transport = StampingTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    proto.data_received(encode_packet(Connect(client_id=client_id, keepalive=60,
                                              clean_start=clean), 4))
    broker.flush()
    return proto, transport


async def one_run(messages: int, cold: int, profile: cProfile.Profile | None,
                  rocksdb: str | None = None,
                  persistent: bool = False) -> tuple[float, float, float, float, float]:
    store = {} if rocksdb is None else {
        "storage": {"backend": "rocksdb", "path": rocksdb, "durability": "os"}}
    broker = make_broker(asyncio.get_running_loop(), "publish_path.py", **store)
    sub, sub_t = client(broker, "path-sub", clean=not persistent)
    sub.data_received(encode_packet(Subscribe(1, [Subscription(TOPIC, qos=1)]), 4))
    broker.flush()
    pub, _ = client(broker, "path-pub")
    publishes = [encode_packet(Publish(topic=TOPIC, payload=struct.pack(">Q", i) + b"\xa5" * 56,
                                       qos=1, packet_id=i % 65535 + 1), 4)
                 for i in range(messages)]
    evict = bytearray(cold << 20) if cold else None
    with frozen_gc():
        forward, after, puback = [], [], []
        metrics = broker.metrics
        batches0, changes0 = metrics.storage_batches, metrics.storage_changes
        if profile is not None:
            profile.enable()
        for i in range(messages):
            if evict is not None:
                evict[::64] = b"\x01" * (len(evict) // 64)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cold", type=int, default=0, metavar="MIB",
                    help="evict the caches between messages (write MIB MiB)")
    ap.add_argument("--profile", action="store_true", help="cProfile of one warm run")
    ap.add_argument("--rocksdb", action="store_true", help="a RocksDB store, not memory")
    ap.add_argument("--persistent", action="store_true",
                    help="the subscriber's session is persistent (clean_session 0)")
    args = ap.parse_args()
    if args.profile:
        prof = cProfile.Profile()
        uvloop.run(one_run(args.messages, False, prof))
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)
        return
    messages = min(args.messages, 3000) if args.cold else args.messages

    async def run_once() -> tuple[float, float, float, float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            return await one_run(messages, args.cold, None, tmp if args.rocksdb else None,
                                 args.persistent)

    cols = list(zip(*repeat(args.reps, run_once), strict=True))
    parts = []
    for name, col in zip(("forward", "after", "puback"), cols[:3], strict=True):
        median, each = median_and_runs(col, "/")
        parts.append(f"{name} {median:.2f} ({each})")
    cold = f", caches evicted ({args.cold} MiB)" if args.cold else ""
    store = (", RocksDB" if args.rocksdb else "") + (", persistent" if args.persistent else "")
    print(f"{build.describe()}{cold}{store}: µs per message, "
          f"median of {args.reps} runs of each run's median ({messages} messages): "
          + ", ".join(parts)
          + f"; store writes per message: {statistics.median(cols[3]):.2f} batches, "
            f"{statistics.median(cols[4]):.2f} changes")


if __name__ == "__main__":
    main()
