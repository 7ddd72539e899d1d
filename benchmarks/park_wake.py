"""What waking a parked connection costs (limits.park_idle_after, server/parking.py).

Starts the broker (memory store, WARNING logs) with ``park_idle_after`` and one MQTT
3.1.1 client, then ``--rounds`` times: waits until the connection is parked (longer
than 1.25 × park_idle_after without a packet), sends PINGREQ and times the PINGRESP
(the wake: epoll, a new transport, the read); then sends a second PINGREQ at once (the
connection is awake: the ordinary round trip). Prints the medians and p99s of both,
and the broker's CPU per park + wake cycle (its CPU time over the rounds, minus the
same run without parking, divided by the rounds).

    .venv/bin/python benchmarks/park_wake.py [--rounds 200] [--after 0.02]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import e2e  # noqa: E402  (benchmarks/ is not a package)

CONNECT = bytes([0x10, 0x12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 6]) + b"wake-1"
PINGREQ = b"\xc0\x00"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ping(sock: socket.socket) -> float:
    started = time.perf_counter()
    sock.sendall(PINGREQ)
    got = b""
    while len(got) < 2:
        got += sock.recv(2 - len(got))
    assert got == b"\xd0\x00", got
    return (time.perf_counter() - started) * 1e6


def run(after: float, rounds: int, wait: float) -> tuple[list[float], list[float], float]:
    with tempfile.TemporaryDirectory(prefix="park-wake-") as workdir:
        broker = e2e.make_iotbroker(workdir, None, after)
        broker.start()
        try:
            sock = socket.create_connection(("127.0.0.1", broker.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(CONNECT)
            assert sock.recv(4) == b"\x20\x02\x00\x00"
            woken, awake = [], []
            cpu0 = cpu_seconds(broker.pid)
            for _ in range(rounds):
                time.sleep(wait)
                woken.append(ping(sock))
                awake.append(ping(sock))
            cpu = cpu_seconds(broker.pid) - cpu0
            sock.close()
        finally:
            broker.stop()
    return woken, awake, cpu


def p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--after", type=float, default=0.02, help="park_idle_after (s)")
    args = ap.parse_args()
    wait = args.after * 1.25 + 0.03
    parked = run(args.after, args.rounds, wait)
    plain = run(0.0, args.rounds, wait)
    for name, (woken, awake, _cpu) in (("parking on", parked), ("parking off", plain)):
        print(f"{name:11s}: first ping after {wait * 1000:.0f} ms idle: median "
              f"{statistics.median(woken):6.0f} µs, p99 {p99(woken):6.0f} µs; "
              f"next ping: median {statistics.median(awake):5.0f} µs, p99 {p99(awake):6.0f} µs")
    extra = (parked[2] - plain[2]) / args.rounds * 1e6
    print(f"broker CPU per park + wake cycle: {extra:.0f} µs "
          f"({parked[2]:.2f} s vs {plain[2]:.2f} s over {args.rounds} rounds; "
          f"includes the sweeps, every {args.after / 4 * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
