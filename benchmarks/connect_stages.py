"""The broker's Python cost per connection, split by stage (issue 19).

Like ``connect_path.py`` (a real :class:`~iotbroker.server.broker.Broker`, memory store,
the config of ``e2e.py``, a stand-in transport that only counts writes, no sockets), but
each connection is timed stage by stage with ``perf_counter_ns`` and the broker flushed
after every connection (one connection per loop turn: the regime of a client that waits
for its CONNACK). Stages:

* ``protocol``  ``ClientProtocol(...)``: the listener's factory (Client, Connection).
* ``admit``     ``connection_made``: limits, counters, the CONNECT timeout on the wheel.
* ``parse``     ``Connection.receive_data``: the CONNECT decoded and validated.
* ``handle``    ``Broker.handle_packets`` without the timed parts below (the packet
                loop, ``on_connect``'s own work, metrics, keep-alive start, parking watch,
                the "connected" line when INFO is on).
* ``engine admit`` ``engine/connect.py admit``: client id rules, assigned id.
* ``auth``      ``Auth.gate`` + ``Auth.authenticate`` (anonymous allowed: a decision).
* ``engine accept`` ``engine/connect.py accept``: will checks, take-over, the session
                (registry), ``Connection.accept``, the CONNACK encoded and queued.
* ``keepalive`` ``ClientProtocol.start_keepalive``: the CONNECT timeout's wheel entry
                moved to the keep-alive deadline.
* ``flush``     ``Broker.flush``: the CONNACK taken from the connection and written.

The timers around the inner parts cost a little each (``wrapper`` line: an empty call
timed the same way, subtracted). What this cannot show is the kernel's part (accept,
epoll, read, write: the broker's system time, ``e2e.py --scenarios connect``) and the
event loop's dispatch.

    .venv/bin/python benchmarks/connect_stages.py [--clients 20000] [--reps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from iotbroker.engine import connect as connect_rules
from iotbroker.server import broker as broker_module
from iotbroker.server.transport import ClientProtocol

STAGES = ("protocol", "admit", "parse", "handle", "engine admit", "auth", "engine accept",
          "keepalive", "flush")
INNER = ("engine admit", "auth", "engine accept", "keepalive")


class Timed:
    """Nanoseconds spent in wrapped calls, per stage."""

    def __init__(self) -> None:
        self.ns = dict.fromkeys(INNER, 0)

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock, ns = time.perf_counter_ns, self.ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                ns[stage] += clock() - t0

        return timed


class _Rules:
    """``engine/connect.py`` as broker.py sees it, with admit and accept timed."""

    def __init__(self, timed: Timed) -> None:
        for name in dir(connect_rules):
            if not name.startswith("__"):
                setattr(self, name, getattr(connect_rules, name))
        self.admit = timed.wrap("engine admit", connect_rules.admit)
        self.accept = timed.wrap("engine accept", connect_rules.accept)


def wrapper_cost(timed: Timed, n: int = 200_000) -> float:
    """ns one timed empty call costs beyond the call itself."""
    def empty() -> None:
        return None

    wrapped = timed.wrap("auth", empty)
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(n):
        empty()
    plain = clock() - t0
    t0 = clock()
    for _ in range(n):
        wrapped()
    inner = clock() - t0
    timed.ns["auth"] = 0
    return (inner - plain) / n


async def one_run(clients: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    broker = make_broker(loop, "connect_stages.py")
    timed = Timed()
    broker_module.connect_rules = _Rules(timed)  # type: ignore[assignment]
    auth = broker.auth
    auth.gate = timed.wrap("auth", auth.gate)  # type: ignore[method-assign]
    auth.authenticate = timed.wrap("auth", auth.authenticate)  # type: ignore[method-assign]
    keepalive = ClientProtocol.start_keepalive
    ClientProtocol.start_keepalive = timed.wrap(  # type: ignore[method-assign]
        "keepalive", keepalive)
    cost = wrapper_cost(timed)
    connects = [encode_packet(Connect(client_id=f"stage-{i:06d}", keepalive=60), 4)
                for i in range(clients)]
    outer = dict.fromkeys(("protocol", "admit", "parse", "handle", "flush"), 0)
    calls = dict.fromkeys(INNER, 0)
    protos: list[ClientProtocol] = []
    clock = time.perf_counter_ns
    try:
        with frozen_gc():
            started = clock()
            for i in range(clients):
                t0 = clock()
                proto = ClientProtocol(broker, "bench")
                t1 = clock()
                proto.connection_made(StandInTransport())  # type: ignore[arg-type]
                t2 = clock()
                packets = proto.conn.receive_data(connects[i], loop.time())
                t3 = clock()
                broker.active_readers.append(proto)  # what data_received does around it
                broker.metrics.bytes_received += len(connects[i])
                broker.metrics.messages_received += len(packets)
                broker.handle_packets(proto, packets)
                t4 = clock()
                broker.flush()
                t5 = clock()
                outer["protocol"] += t1 - t0
                outer["admit"] += t2 - t1
                outer["parse"] += t3 - t2
                outer["handle"] += t4 - t3
                outer["flush"] += t5 - t4
                protos.append(proto)
                if i % 64 == 63:
                    await asyncio.sleep(0)
            took = clock() - started
    finally:
        broker_module.connect_rules = connect_rules
        ClientProtocol.start_keepalive = keepalive  # type: ignore[method-assign]
    check_connacks(protos, clients)
    cancel_timers(broker, protos)
    calls.update({"engine admit": clients, "engine accept": clients, "auth": clients * 2,
                  "keepalive": clients})
    out: dict[str, float] = {}
    inner_total = 0.0
    for stage in INNER:
        spent = (timed.ns[stage] - calls[stage] * cost) / clients / 1000
        out[stage] = spent
        inner_total += timed.ns[stage] / clients / 1000  # with the timers' cost
    for stage, ns in outer.items():
        out[stage] = ns / clients / 1000
    out["handle"] -= inner_total
    out["total"] = took / clients / 1000
    out["wrapper"] = cost / 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    runs = repeat(args.reps, lambda: one_run(args.clients))
    print(f"{build.describe()}: µs per connection, medians of {args.reps} runs of "
          f"{args.clients} clients (one connection per flush)")
    print(f"| {'stage':14} | {'µs':>6} | runs |")
    print(f"|{'-' * 16}|{'-' * 8}|------|")
    for stage in (*STAGES, "total", "wrapper"):
        median, each = median_and_runs([r[stage] for r in runs], " ")
        print(f"| {stage:14} | {median:6.2f} | {each} |")


if __name__ == "__main__":
    main()
