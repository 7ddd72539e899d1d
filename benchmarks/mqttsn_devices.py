"""MQTT-SN at scale (issue 16): N simulated MQTT-SN devices (default 10,000, one UDP
socket each) against the broker's ``mqtt-sn`` listener, publishing QoS 0 and QoS 1.

The broker runs as a subprocess (in-memory storage, loopback). This process holds the
devices (plain non-blocking sockets + epoll, no asyncio): each device CONNECTs,
REGISTERs its topic ``bench/<i>``, then

* QoS 0 phase: every device publishes at ``--rate / N`` messages per second (open
  loop, offered ``--rate`` in total) for ``--seconds``; a ``mosquitto_sub`` on
  ``bench/#`` counts what reached MQTT;
* QoS 1 phase: every device keeps one PUBLISH outstanding (closed loop: the next one
  goes when the PUBACK arrives), for ``--seconds``; PUBACK latency is measured.

Reported: connect time, datagram rates (in and out of the gateway), messages
delivered, loss, PUBACK latency percentiles, and the broker's CPU seconds per message
(utime + stime from /proc over the phase).

    .venv/bin/python benchmarks/mqttsn_devices.py                 # 10,000 devices
    .venv/bin/python benchmarks/mqttsn_devices.py --devices 2000 --seconds 5

Not a test: nothing is asserted; numbers are printed (and written with --json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from iotbroker.mqttsn import codec as c  # noqa: E402
from tests.helpers.broker_process import BrokerProcess, broker_config  # noqa: E402

TID = c.TopicIdType


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def udp_rcvbuf_errors() -> int:
    """The machine's UDP datagrams dropped for a full socket receive buffer."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()
             if ln.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


class Fleet:
    def __init__(self, n: int, port: int) -> None:
        self.addr = ("127.0.0.1", port)
        self.socks: list[socket.socket] = []
        self.by_fd: dict[int, int] = {}
        self.ep = select.epoll()
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.bind(("127.0.0.1", 0))
            s.connect(self.addr)
            self.socks.append(s)
            self.by_fd[s.fileno()] = i
            self.ep.register(s.fileno(), select.EPOLLIN)
        self.topic_ids = [0] * n
        self.received = 0

    def drain(self, timeout: float, on_msg: object) -> int:
        got = 0
        for fd, _ in self.ep.poll(timeout):
            i = self.by_fd[fd]
            s = self.socks[i]
            while True:
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                got += 1
                on_msg(i, c.decode(data))  # type: ignore[operator]
        self.received += got
        return got

    def handshake(self, make: object, expect: type, window: int = 500,
                  timeout: float = 60.0) -> float:
        """Send ``make(i)`` from every device (``window`` outstanding), until each got
        an ``expect``; returns the seconds it took."""
        n = len(self.socks)
        done = [False] * n
        pending: set[int] = set()
        nxt = 0
        started = time.perf_counter()
        sent_at = [0.0] * n

        def on_msg(i: int, msg: c.SnMessage) -> None:
            if isinstance(msg, expect) and not done[i]:
                done[i] = True
                pending.discard(i)
                if isinstance(msg, c.RegAck):
                    self.topic_ids[i] = msg.topic_id

        while not all(done):
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"{expect.__name__}: {done.count(False)} missing")
            while nxt < n and len(pending) < window:
                self.socks[nxt].send(c.encode(make(nxt)))  # type: ignore[operator]
                sent_at[nxt] = time.perf_counter()
                pending.add(nxt)
                nxt += 1
            now = time.perf_counter()
            for i in [i for i in pending if now - sent_at[i] > 2.0]:  # lost: resend
                self.socks[i].send(c.encode(make(i)))  # type: ignore[operator]
                sent_at[i] = now
            self.drain(0.01, on_msg)
        return time.perf_counter() - started

    def qos0(self, rate: float, seconds: float) -> int:
        n = len(self.socks)
        interval = 1.0 / rate
        sent = 0
        started = time.perf_counter()
        datagrams = [c.encode(c.Publish(TID.NORMAL, self.topic_ids[i], 0, b"t=21.5", qos=0))
                     for i in range(n)]
        while True:
            now = time.perf_counter()
            if now - started >= seconds:
                break
            due = int((now - started) / interval)
            while sent < due:
                i = sent % n
                with contextlib.suppress(BlockingIOError):
                    self.socks[i].send(datagrams[i])
                sent += 1
            self.drain(0, lambda i, m: None)
            time.sleep(0.0005)
        return sent

    def qos1(self, seconds: float) -> tuple[int, list[float]]:
        n = len(self.socks)
        msg_id = [1] * n
        sent_at = [0.0] * n
        latencies: list[float] = []
        acked = 0

        def send(i: int) -> None:
            self.socks[i].send(c.encode(c.Publish(TID.NORMAL, self.topic_ids[i], msg_id[i],
                                                  b"t=21.5", qos=1)))
            sent_at[i] = time.perf_counter()

        def on_msg(i: int, msg: c.SnMessage) -> None:
            nonlocal acked
            if isinstance(msg, c.PubAck) and msg.msg_id == msg_id[i]:
                latencies.append(time.perf_counter() - sent_at[i])
                acked += 1
                msg_id[i] = msg_id[i] % 0xFFFF + 1
                if time.perf_counter() < end:
                    send(i)

        started = time.perf_counter()
        end = started + seconds
        for i in range(n):
            send(i)
            if i % 500 == 499:
                self.drain(0, on_msg)
        while time.perf_counter() < end + 2.0:
            self.drain(0.05, on_msg)
            now = time.perf_counter()
            if now < end:
                for i in range(n):  # lost datagram (socket buffers): resend after 3 s
                    if now - sent_at[i] > 3.0:
                        send(i)
        return acked, latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=10_000.0, help="QoS 0 messages/s offered")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000), hard))
    listeners = ("listeners:\n  - {name: default, type: tcp, host: 127.0.0.1, port: 0}\n"
                 "  - {name: sn, type: mqtt-sn, host: 127.0.0.1, port: 0}\n")
    extra = "mqttsn:\n  advertise_interval: 0\n  rate_per_address: 0\n"
    work = Path(tempfile.mkdtemp(prefix="sn-bench-"))
    config = broker_config(listeners=listeners, extra=extra).replace("level: DEBUG",
                                                                      "level: INFO")
    broker = BrokerProcess(work, config).start()
    results: dict[str, object] = {"devices": args.devices}
    sub = None
    try:
        assert broker.proc is not None
        pid = broker.proc.pid
        fleet = Fleet(args.devices, broker.ports["sn"])
        results["connect_s"] = round(fleet.handshake(
            lambda i: c.Connect(f"dev{i}", 600), c.ConnAck), 2)
        results["register_s"] = round(fleet.handshake(
            lambda i: c.Register(0, 1, f"bench/{i}"), c.RegAck), 2)
        out = open(work / "sub.txt", "wb")  # noqa: SIM115
        sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p",
                                str(broker.ports["default"]), "-t", "bench/#", "-q", "0"],
                               stdout=out)
        time.sleep(1.0)
        cpu0, rx0, rcvbuf0 = cpu_seconds(pid), fleet.received, udp_rcvbuf_errors()
        sent = fleet.qos0(args.rate, args.seconds)
        time.sleep(1.5)
        cpu = cpu_seconds(pid) - cpu0
        delivered = (work / "sub.txt").read_bytes().count(b"\n")
        results["qos0"] = {
            "offered_per_s": args.rate, "sent": sent, "seconds": args.seconds,
            "delivered_to_mosquitto_sub": delivered,
            "loss_pct": round(100 * (1 - delivered / sent), 2) if sent else None,
            "broker_cpu_s": round(cpu, 2),
            "broker_cpu_us_per_msg": round(1e6 * cpu / max(1, delivered), 1),
            "datagrams_in_per_s": round(sent / args.seconds),
            "datagrams_out": fleet.received - rx0,
            "udp_rcvbuf_drops_machine": udp_rcvbuf_errors() - rcvbuf0,
        }
        base = (work / "sub.txt").read_bytes().count(b"\n")
        cpu0 = cpu_seconds(pid)
        acked, lat = fleet.qos1(args.seconds)
        cpu = cpu_seconds(pid) - cpu0
        time.sleep(1.0)
        delivered = (work / "sub.txt").read_bytes().count(b"\n") - base
        lat.sort()
        results["qos1"] = {
            "seconds": args.seconds, "acked": acked,
            "acked_per_s": round(acked / args.seconds),
            "datagrams_in_out_per_s": round(2 * acked / args.seconds),
            "delivered_to_mosquitto_sub": delivered,
            "puback_latency_ms_p50": round(1e3 * statistics.median(lat), 2) if lat else None,
            "puback_latency_ms_p99": round(1e3 * lat[int(len(lat) * 0.99)], 2) if lat else None,
            "broker_cpu_s": round(cpu, 2),
            "broker_cpu_us_per_msg": round(1e6 * cpu / max(1, acked), 1),
        }
        results["broker_rss_mb"] = round(int(
            next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
             if ln.startswith("VmRSS")).split()[1]) / 1024, 1)
    finally:
        if sub is not None:
            sub.terminate()
            sub.wait(5)
        broker.stop()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
