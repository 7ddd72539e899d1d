"""The broker's own Python cost per connection, without sockets or a load generator.

Builds a real :class:`~iotbroker.server.broker.Broker` (memory store, the config of
``e2e.py``) on a uvloop loop and pushes N clients through its connect path in-process:
``ClientProtocol`` creation, ``connection_made`` on a stand-in transport that only
counts writes, ``data_received`` with an MQTT 3.1.1 CONNECT (keepalive 60), and a loop turn every
64 clients (the broker's flush; with ``--log-level INFO`` the "connected" lines are
written as in the broker, in batches). The GC is set up as
``run_broker`` does. Prints µs per connection, median of ``--reps``; it is the part of
``connect_floor.py``'s "above the floor" figure that is the broker's Python code
(what is left there is kernel, uvloop and cache effects of a live process).

    .venv/bin/python benchmarks/connect_path.py [--clients 20000] [--reps 5]

Compare builds with ``IOTBROKER_PURE=1 .venv/bin/pip install -e .`` and back.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time

import uvloop

from iotbroker import build
from iotbroker.codec.encode import encode_packet
from iotbroker.codec.packets import Connect
from iotbroker.config import parse_config
from iotbroker.server.broker import GC_GEN0_THRESHOLD, Broker
from iotbroker.server.logsetup import bind_loop, setup_logging
from iotbroker.server.transport import ClientProtocol
from iotbroker.storage.memory import MemoryStore

CONFIG = {
    "listeners": [{"name": "bench", "type": "tcp", "host": "127.0.0.1", "port": 1883}],
    "storage": {"backend": "memory"},
    "sys_topics": {"enabled": False},
    "logging": {"level": "WARNING"},
    "mqtt": {"max_inflight": 20, "max_queued_messages": 10000},
}


class CountingTransport:
    """What ClientProtocol and the broker call on a transport; writes are counted."""

    __slots__ = ("writes",)

    def __init__(self) -> None:
        self.writes = 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def one_run(clients: int, log_level: str) -> float:
    loop = asyncio.get_running_loop()
    config = parse_config({**CONFIG, "logging": {"level": log_level}}, "connect_path.py")
    setup_logging(config.logging)
    bind_loop(loop)
    broker = Broker(config, MemoryStore(), loop)
    connects = [encode_packet(Connect(client_id=f"path-{i:06d}", keepalive=60), 4)
                for i in range(clients)]
    protos: list[ClientProtocol] = []
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
    started = time.perf_counter()
    for i in range(clients):
        proto = ClientProtocol(broker, "bench")
        proto.connection_made(CountingTransport())  # type: ignore[arg-type]
        proto.data_received(connects[i])
        if i % 64 == 63:
            await asyncio.sleep(0)  # a loop turn: the broker's flush, the log's write
        protos.append(proto)
    broker.flush()
    took = time.perf_counter() - started
    gc.unfreeze()
    answered = sum(p.transport.writes for p in protos if p.transport)  # type: ignore[attr-defined]
    if answered != clients:
        raise SystemExit(f"{answered} CONNACKs written for {clients} CONNECTs")
    for proto in protos:
        broker.timers.cancel(proto)
    return took / clients * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--log-level", default="WARNING",
                    help="INFO: one log line per connect, as the default config (redirect "
                         "stderr, e.g. 2>/dev/null)")
    args = ap.parse_args()
    runs = [uvloop.run(one_run(args.clients, args.log_level)) for _ in range(args.reps)]
    print(f"{build.describe()}, log level {args.log_level}: "
          f"{statistics.median(runs):.2f} µs per connection "
          f"(median of {args.reps}: {', '.join(f'{r:.2f}' for r in runs)}), "
          f"{args.clients} clients")


if __name__ == "__main__":
    main()
