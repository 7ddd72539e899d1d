"""CONNECT -> CONNACK time, one connection at a time (issue 19).

For each repetition, fresh servers in turn: iotbroker with ``limits.park_on_accept``
on (its default: the socket is accepted without a transport, the CONNECT read and the
CONNACK written with plain calls), iotbroker with it off (a uvloop transport per
connection, as before), and mosquitto (configured as in ``e2e.py``). A blocking client
opens ``--clients`` connections one after the other and keeps them open (a fleet that
connects and idles); per connection it times the TCP connect and the CONNECT write ->
CONNACK read. Prints p50/p90/p99 in µs per server (medians over the repetitions) and
the server's CPU µs per connection.

    .venv/bin/python benchmarks/connack_time.py [--reps 3] [--clients 2000] [--fifo 10]

``--fifo N`` runs the servers and this client under SCHED_FIFO priority N (``chrt``),
as the latency harnesses do, so that other load on the machine does not decide the tail.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import e2e  # noqa: E402  (benchmarks/ is not a package)
from loadgen import proc_stat  # noqa: E402

from iotbroker.codec.encode import encode_packet  # noqa: E402
from iotbroker.codec.packets import Connect  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def run_client(port: int, clients: int, pid: int) -> dict[str, float]:
    """Connect ``clients`` times in sequence; per connection the TCP connect time and
    the CONNECT -> CONNACK time, in µs; the server's CPU µs per connection."""
    socks: list[socket.socket] = []
    tcp: list[float] = []
    connack: list[float] = []
    cpu0 = proc_stat(pid)[0]
    try:
        for i in range(clients):
            packet = encode_packet(Connect(client_id=f"ct-{i:06d}", keepalive=60), 4)
            t0 = time.perf_counter()
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t1 = time.perf_counter()
            sock.sendall(packet)
            data = sock.recv(16)
            t2 = time.perf_counter()
            if data[:1] != b"\x20" or len(data) < 4 or data[3] != 0:
                raise RuntimeError(f"connection {i}: no CONNACK 0 but {data!r}")
            socks.append(sock)
            tcp.append((t1 - t0) * 1e6)
            connack.append((t2 - t1) * 1e6)
        cpu = (proc_stat(pid)[0] - cpu0) / clients * 1e6
    finally:
        for sock in socks:
            sock.close()
    return {"tcp_p50": pct(tcp, 0.5), "p50": pct(connack, 0.5), "p90": pct(connack, 0.9),
            "p99": pct(connack, 0.99), "cpu_us": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--fifo", type=int, default=0, metavar="PRIO",
                    help="SCHED_FIFO priority for the servers and this client (0 = off)")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    args = ap.parse_args()
    if args.fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.fifo))
    names = ("park_on_accept", "transport", "mosquitto")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="connack-time-") as workdir:
        for rep in range(args.reps):
            for name in names:
                if name == "mosquitto":
                    server = e2e.make_mosquitto(workdir, args.mosquitto)
                else:
                    server = e2e.make_iotbroker(workdir, None, None,
                                                park_on_accept=name == "park_on_accept")
                if args.fifo:
                    server.argv = ["chrt", "-f", str(args.fifo), *server.argv]
                server.start()
                try:
                    time.sleep(0.3)
                    res = run_client(server.port, args.clients, server.pid)
                finally:
                    server.stop()
                results[name].append(res)
                print(f"rep {rep + 1}/{args.reps} {name:15s} CONNECT->CONNACK p50 "
                      f"{res['p50']:6.0f} p90 {res['p90']:6.0f} p99 {res['p99']:6.0f} µs  "
                      f"(TCP connect p50 {res['tcp_p50']:4.0f} µs)  "
                      f"server CPU {res['cpu_us']:5.1f} µs/conn", flush=True)
    print(f"\nmedians of {args.reps} reps, {args.clients} sequential connections:")
    for name, runs in results.items():
        m = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"  {name:15s} p50 {m['p50']:6.0f}  p90 {m['p90']:6.0f}  p99 {m['p99']:6.0f} µs"
              f"  server CPU {m['cpu_us']:5.1f} µs/conn")


if __name__ == "__main__":
    main()
