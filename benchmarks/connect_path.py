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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.inproc import (
    StandInTransport,
    cancel_timers,
    check_connacks,
    frozen_gc,
    make_broker,
    median_and_runs,
    repeat,
)
from iotbroker import build
from iotbroker.codec.encode import encode_packet
from iotbroker.codec.packets import Connect
from iotbroker.server.transport import ClientProtocol


async def one_run(clients: int, log_level: str) -> float:
    broker = make_broker(asyncio.get_running_loop(), "connect_path.py",
                         logging={"level": log_level})
    connects = [encode_packet(Connect(client_id=f"path-{i:06d}", keepalive=60), 4)
                for i in range(clients)]
    protos: list[ClientProtocol] = []
    with frozen_gc():
        started = time.perf_counter()
        for i in range(clients):
            proto = ClientProtocol(broker, "bench")
            proto.connection_made(StandInTransport())  # type: ignore[arg-type]
            proto.data_received(connects[i])
            if i % 64 == 63:
                await asyncio.sleep(0)  # a loop turn: the broker's flush, the log's write
            protos.append(proto)
        broker.flush()
        took = time.perf_counter() - started
    check_connacks(protos, clients)
    cancel_timers(broker, protos)
    return took / clients * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--log-level", default="WARNING",
                    help="INFO: one log line per connect, as the default config (redirect "
                         "stderr, e.g. 2>/dev/null)")
    args = ap.parse_args()
    runs = repeat(args.reps, lambda: one_run(args.clients, args.log_level))
    median, each = median_and_runs(runs, ", ")
    print(f"{build.describe()}, log level {args.log_level}: "
          f"{median:.2f} µs per connection (median of {args.reps}: {each}), "
          f"{args.clients} clients")


if __name__ == "__main__":
    main()
