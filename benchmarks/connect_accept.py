"""The broker's cost per connection from the accept to the CONNACK's write, in process,
with real loopback sockets (issue 19).

``connect_path.py`` times the broker's Python with a stand-in transport; this times
what a plain-TCP listener does with ``limits.park_on_accept`` (the default): a real
:class:`~iotbroker.server.broker.Broker` (memory store, the config of ``e2e.py``), its
parking started, and its listener (server/listeners.py ``_ParkedListener``) bound to
127.0.0.1. Each batch of ``--batch`` clients connects with blocking sockets and sends
its MQTT 3.1.1 CONNECT (keepalive 60) *before* the clock starts; then the listener's
accept runs until the batch is accepted (``accept``, the CONNECT read at the accept,
the connection admitted, the CONNECT handled, the CONNACK written with one ``write``)
and a loop turn runs (the flush). Timed: the thread's CPU time (the figure; wall
clock and the user/system split of ``os.times`` beside it) for the accepts and that
turn; every client's CONNACK is checked afterwards; the connections are closed,
untimed, between batches. What it does not
time: the loop's epoll wake-up for the listening socket, and the generator.

    .venv-c/bin/python benchmarks/connect_accept.py [--clients 10000] [--batch 1000] [--reps 5]

Run it on another build with that build's Python from a directory that holds this file
and ``inproc.py`` under ``benchmarks/`` (it imports ``iotbroker`` from the repository
root above it, else from the Python's installed package). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.inproc import frozen_gc, make_broker, repeat
from iotbroker import build
from iotbroker.codec.encode import encode_packet
from iotbroker.codec.packets import Connect
from iotbroker.server import listeners as listeners_module
from iotbroker.server.transport import ClientProtocol


async def one_run(clients: int, batch: int) -> tuple[float, float, float, float]:
    """(CPU, wall, user, system) µs per connection over ``clients`` connections."""
    loop = asyncio.get_running_loop()
    broker = make_broker(loop, "connect_accept.py")
    parking = broker.parking
    assert parking is not None
    parking.start()
    config = dataclasses.replace(broker.config.listeners[0], port=0)
    factory = listeners_module._protocol_factory(broker, config)
    listener = listeners_module._ParkedListener(config, broker, factory, parking)
    await listener.start()
    lsock = listener.sockets[0]
    loop.remove_reader(lsock.fileno())  # accepted here, batch by batch
    address = lsock.getsockname()
    wall = cpu = user = system = 0.0
    done = 0
    serial = 0
    try:
        while done < clients:
            n = min(batch, clients - done)
            socks = []
            for _ in range(n):
                s = socket.create_connection(address)
                s.sendall(encode_packet(Connect(client_id=f"acc-{serial:07d}", keepalive=60),
                                        4))
                serial += 1
                socks.append(s)
            before = set(broker.connections)
            with frozen_gc():
                t0 = os.times()
                c0 = time.thread_time()
                w0 = time.perf_counter()
                while len(broker.connections) - len(before) < n:
                    listener._accept(lsock)
                await asyncio.sleep(0)  # the turn's flush
                w1 = time.perf_counter()
                c1 = time.thread_time()
                t1 = os.times()
            wall += w1 - w0
            cpu += c1 - c0
            user += t1.user - t0.user
            system += t1.system - t0.system
            for s in socks:
                s.settimeout(5)
                got = s.recv(16)
                if got[:1] != b"\x20":
                    raise SystemExit(f"no CONNACK: {got!r}")
            protos: list[Any] = [p for p in broker.connections if p not in before]
            for s in socks:
                s.close()
            for proto in protos:
                assert isinstance(proto, ClientProtocol)
                proto.abort()
            for _ in range(3):
                await asyncio.sleep(0)
            done += n
    finally:
        listener.close()
        parking.close()
    per = 1e6 / clients
    return cpu * per, wall * per, user * per, system * per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    runs = repeat(args.reps, lambda: one_run(args.clients, args.batch))
    cpus = [r[0] for r in runs]
    print(f"{build.describe()}: {statistics.median(cpus):.2f} µs of CPU per connection "
          f"accepted and answered (median of {args.reps}: "
          f"{', '.join(f'{c:.2f}' for c in cpus)}; thread CPU time); wall "
          f"{statistics.median(r[1] for r in runs):.2f}; user "
          f"{statistics.median(r[2] for r in runs):.1f}, system "
          f"{statistics.median(r[3] for r in runs):.1f} µs (os.times, 10 ms ticks); "
          f"{args.clients} clients in batches of {args.batch}")


if __name__ == "__main__":
    main()
