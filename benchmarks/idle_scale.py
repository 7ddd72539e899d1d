"""Connection scale (issue 8): one broker process holding 19,000 idle MQTT connections.

For each broker (iotbroker, then mosquitto; each started fresh on a free port of
127.0.0.1 with RLIMIT_NOFILE raised to the hard limit, 20,000 here: ``ulimit -n 20000``
for mosquitto), the load generator (``loadgen.py worker``, ``--procs`` separate
processes, plain sockets + epoll) opens ``--clients`` idle MQTT 3.1.1 connections
(keepalive ``--keepalive``, default 600 s) from 127.0.0.2..127.0.0.9, at most 64
handshakes in flight. The connections are then held ``--hold`` seconds while a probe
client (a separate connection from this process) subscribes to a topic and publishes
a QoS 1 message to it once per second: the round trip PUBLISH -> own PUBLISH back
shows the broker stays responsive. Then the generator DISCONNECTs and closes all of
them, and the script waits until the broker's fd count is back to where it started.

Reported per broker: connect rate (clients / (last CONNACK - first connect)),
errors, broker RSS before / after / per connection, broker fds, broker CPU while
connecting and while idle, kernel TCP memory (``/proc/net/sockstat`` "mem", pages, for
the whole machine), probe round trips, connections lost while idle, close time.

    .venv/bin/python benchmarks/idle_scale.py                          # both, 19,000
    .venv/bin/python benchmarks/idle_scale.py --brokers iotbroker --clients 5000
    .venv/bin/python benchmarks/idle_scale.py --json /tmp/idle.json

Not a test: nothing is asserted; numbers are printed (and written as JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from e2e import make_iotbroker, make_mosquitto  # noqa: E402
from loadgen import proc_stat, raise_nofile  # noqa: E402

from iotbroker.codec import encode_packet  # noqa: E402
from iotbroker.codec.packets import Connect, Disconnect, Publish, Subscribe, Subscription  # noqa: E402

LOADGEN = os.path.join(HERE, "loadgen.py")


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def nofile_limit(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return "/".join(line.split()[3:5])
    return "?"


def tcp_mem_pages() -> int:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1])
    return 0


class Probe:
    """A blocking MQTT 3.1.1 client: SUBSCRIBE probe/<n> QoS 1, then PUBLISH to it and
    time the round trip until the broker delivers it back."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.topic = f"probe/{os.getpid()}"
        self.sock.sendall(encode_packet(Connect(client_id=f"probe-{os.getpid()}",
                                                keepalive=600), 4))
        self._expect(0x20)
        self.sock.sendall(encode_packet(Subscribe(1, [Subscription(self.topic, 1)]), 4))
        self._expect(0x90)
        self.pid = 1

    def _packet(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 2:
                rl, mult, i = 0, 1, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    rl += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if b < 128:
                        break
                else:
                    i = -1
                if i > 0 and len(self.buf) >= i + rl:
                    first, body = self.buf[0], self.buf[i:i + rl]
                    self.buf = self.buf[i + rl:]
                    return first, body
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("probe: broker closed the connection")
            self.buf += data

    def _expect(self, kind: int) -> bytes:
        first, body = self._packet()
        if first & 0xF0 != kind:
            raise RuntimeError(f"probe: expected {kind:#x}, got {first:#x}")
        return body

    def round_trip(self) -> float:
        """Seconds from PUBLISH (QoS 1) to receiving it back (PUBACK seen too)."""
        self.pid = self.pid % 65535 + 1
        marker = str(time.monotonic_ns()).encode()
        t0 = time.perf_counter()
        self.sock.sendall(encode_packet(Publish(self.topic, marker, 1, packet_id=self.pid), 4))
        got_ack = got_msg = False
        t_msg = 0.0
        while not (got_ack and got_msg):
            first, body = self._packet()
            if first & 0xF0 == 0x40:
                got_ack = True
            elif first & 0xF0 == 0x30:
                if marker in body:
                    got_msg, t_msg = True, time.perf_counter()
                if first & 0x06:  # QoS 1 delivery: ack it
                    tl = body[0] << 8 | body[1]
                    pid = body[2 + tl:4 + tl]
                    self.sock.sendall(b"\x40\x02" + pid)
        return t_msg - t0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(encode_packet(Disconnect(), 4))
        self.sock.close()


def run_one(name: str, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    broker = (make_iotbroker(workdir, None) if name == "iotbroker"
              else make_mosquitto(workdir, args.mosquitto))
    broker.start()
    workers: list[subprocess.Popen[str]] = []
    probe: Probe | None = None
    try:
        pid = broker.pid
        time.sleep(0.5)
        out: dict[str, Any] = {"broker": name, "clients": args.clients,
                               "nofile_limit": nofile_limit(pid), "gen_procs": args.procs,
                               "keepalive": args.keepalive}
        n = args.clients
        for i in range(args.procs):
            spec = {"scenario": "connect", "host": "127.0.0.1", "port": broker.port,
                    "v5": False, "index": i, "nprocs": args.procs, "keepalive": args.keepalive,
                    "idle": n // args.procs + (1 if i < n % args.procs else 0),
                    "src_addrs": [f"127.0.0.{2 + k}" for k in range(args.src_addrs)],
                    "concurrency": max(1, args.concurrency // args.procs)}
            workers.append(subprocess.Popen(
                [sys.executable, LOADGEN, "worker", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for w in workers:
            line = w.stdout.readline().strip()  # type: ignore[union-attr]
            if line != "READY":
                raise RuntimeError(f"worker failed to start: {line!r}")
        cpu0, rss0 = proc_stat(pid)
        fds0, mem0 = fd_count(pid), tcp_mem_pages()
        t_go = time.monotonic() + 0.05
        for w in workers:
            w.stdin.write(f"GO {t_go}\n")  # type: ignore[union-attr]
            w.stdin.flush()  # type: ignore[union-attr]
        res = [json.loads(w.stdout.readline()) for w in workers]  # type: ignore[union-attr]
        cpu1, _ = proc_stat(pid)
        connected = sum(r["connected"] for r in res)
        span = max(r["t_end"] for r in res) - min(r["t_start"] for r in res)
        time.sleep(1.0)
        cpu2, rss1 = proc_stat(pid)
        fds1, mem1 = fd_count(pid), tcp_mem_pages()
        # Hold: the probe publishes once per second; measure the broker's idle CPU.
        t_hold = time.monotonic()
        probe = Probe(broker.port)
        rtts = []
        while time.monotonic() - t_hold < args.hold:
            rtts.append(probe.round_trip() * 1000)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t_hold) % 1.0))
        probe.close()
        probe = None
        cpu3, rss2 = proc_stat(pid)
        hold = time.monotonic() - t_hold
        # Release: DISCONNECT + close, wait until the broker's fds are back.
        t_rel = time.monotonic()
        for w in workers:
            w.stdin.write("RELEASE\n")  # type: ignore[union-attr]
            w.stdin.flush()  # type: ignore[union-attr]
        tail = [json.loads(w.stdout.readline()) for w in workers]  # type: ignore[union-attr]
        t_sent = time.monotonic() - t_rel
        while fd_count(pid) > fds0 + 1 and time.monotonic() - t_rel < 60:
            time.sleep(0.02)
        t_closed = time.monotonic() - t_rel
        time.sleep(1.0)
        _, rss3 = proc_stat(pid)
        out.update({
            "connected": connected,
            "errors": sum(r["errors"] for r in res),
            "connect_seconds": span,
            "connect_rate": connected / span,
            "gen_cpu_pct": sum(r["cpu"] for r in res) / span * 100,
            "broker_cpu_pct_connecting": (cpu1 - cpu0) / span * 100,
            "broker_cpu_pct_idle": (cpu3 - cpu2) / hold * 100,
            "rss_before_mib": rss0 / 2**20,
            "rss_after_connect_mib": rss1 / 2**20,
            "rss_after_hold_mib": rss2 / 2**20,
            "rss_after_close_mib": rss3 / 2**20,
            "kib_per_conn": (rss1 - rss0) / 1024 / max(1, connected),
            "fds_before": fds0,
            "fds_connected": fds1,
            "kernel_tcp_mem_kib_per_conn": (mem1 - mem0) * os.sysconf("SC_PAGE_SIZE")
            / 1024 / max(1, connected),
            "probe_rtt_ms": {"n": len(rtts), "median": statistics.median(rtts),
                             "max": max(rtts)},
            "lost_while_idle": sum(t["lost_while_idle"] for t in tail),
            "close_seconds": t_closed,
            "close_gen_seconds": t_sent,
        })
        return out
    finally:
        if probe is not None:
            probe.close()
        for w in workers:
            with contextlib.suppress(Exception):
                w.stdin.close()  # type: ignore[union-attr]
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default="iotbroker,mosquitto")
    ap.add_argument("--clients", type=int, default=19_000)
    ap.add_argument("--keepalive", type=int, default=600)
    ap.add_argument("--hold", type=float, default=10.0, help="seconds to hold them")
    ap.add_argument("--procs", type=int, default=2, help="generator processes")
    ap.add_argument("--concurrency", type=int, default=64, help="handshakes in flight")
    ap.add_argument("--src-addrs", type=int, default=8, help="127.0.0.2.. source addresses")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    limit = raise_nofile()
    print(f"RLIMIT_NOFILE here and for the brokers: {limit}", file=sys.stderr)
    workdir = tempfile.mkdtemp(prefix="iotbroker-idle-")
    results = []
    try:
        for name in args.brokers.split(","):
            r = run_one(name.strip(), args, workdir)
            results.append(r)
            print(json.dumps(r, indent=1), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n| broker | connected | errors | conn/s | RSS before -> after MiB | KiB/conn "
          "| fds | broker CPU% connecting / idle | probe RTT median / max ms | lost | "
          "close s |")
    print("|---|---:|---:|---:|---|---:|---:|---|---|---:|---:|")
    for r in results:
        print(f"| {r['broker']} | {r['connected']:,} | {r['errors']} | {r['connect_rate']:,.0f} "
              f"| {r['rss_before_mib']:.1f} -> {r['rss_after_connect_mib']:.1f} "
              f"| {r['kib_per_conn']:.2f} | {r['fds_connected']:,} "
              f"| {r['broker_cpu_pct_connecting']:.0f} / {r['broker_cpu_pct_idle']:.1f} "
              f"| {r['probe_rtt_ms']['median']:.2f} / {r['probe_rtt_ms']['max']:.2f} "
              f"| {r['lost_while_idle']} | {r['close_seconds']:.2f} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
