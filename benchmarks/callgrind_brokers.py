"""User-space instructions per forwarded QoS 1 message, whole broker process, iotbroker
against mosquitto, counted by valgrind's callgrind (issue 19: what the latency gap is
made of; no clock, so a noisy machine does not move the figure).

Each broker runs under ``valgrind --tool=callgrind`` on a free loopback port (iotbroker
with memory storage and its other defaults; mosquitto with an anonymous listener). A
subscriber (QoS 1, ``t/x``) and a publisher connect, and the publisher sends N QoS 1
PUBLISHes of 64 bytes one at a time, each waited for: its PUBACK, the forward, the
subscriber's PUBACK, then 0.5 ms asleep, so every message is its own loop turn, as at
1,000 msg/s in ``e2e.py --scenarios latency``. Two runs per broker with different N;
(total(N2) - total(N1)) / (N2 - N1) is the per-message count, start-up and shut-down
cancelling out. ``--by-object`` splits it by shared object (the interpreter, the
compiled modules, uvloop, libc, ...) with ``callgrind_annotate``.

    flock /tmp/bench.lock .venv/bin/python benchmarks/callgrind_brokers.py \\
        --iotbroker-python .venv/bin/python --by-object

Kernel time (system calls, TCP on loopback, wake-ups) is not counted: it is about the
same for both brokers (docs/performance.md, "Latency at 1,000 msg/s").
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.packets import (
    Connect,
    Packet,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
)

TOPIC = "t/x"
PAYLOAD = b"x" * 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    """A blocking MQTT 3.1.1 client over our codec: just what the run needs."""

    def __init__(self, port: int, client_id: str, deadline: float) -> None:
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.framer = Framer(1 << 20)
        self.pending: list[Packet] = []
        self.send(Connect(client_id=client_id, protocol_version=4, clean_start=True))
        self.recv()  # CONNACK

    def send(self, packet: Packet) -> None:
        self.sock.sendall(encode_packet(packet, 4))

    def recv(self) -> Packet:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the connection")
            self.pending += [decode_packet(f, b, 4) for f, b in self.framer.feed(data)]
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


def drive(port: int, count: int) -> None:
    deadline = time.monotonic() + 120  # a broker under valgrind starts slowly
    sub = Client(port, "sub", deadline)
    sub.send(Subscribe(1, [Subscription(TOPIC, 1)]))
    assert isinstance(sub.recv(), SubAck)
    pub = Client(port, "pub", deadline)
    for i in range(count):
        pid = i % 65535 + 1
        pub.send(Publish(TOPIC, PAYLOAD, 1, False, False, pid))
        forward = sub.recv()
        assert isinstance(forward, Publish) and forward.payload == PAYLOAD, forward
        sub.send(PubAck(forward.packet_id or 0))
        ack = pub.recv()
        assert isinstance(ack, PubAck) and ack.packet_id == pid, ack
        time.sleep(0.0005)
    sub.close()
    pub.close()


def broker_command(name: str, port: int, work: Path, args: argparse.Namespace) -> list[str]:
    if name == "mosquitto":
        conf = work / "mosquitto.conf"
        # (user root: as root mosquitto would switch to its own user, which may not
        # write callgrind's output file here)
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
        return [args.mosquitto, "-c", str(conf)]
    conf = work / "iotbroker.yaml"
    conf.write_text("storage:\n  backend: memory\n")
    # (absolute, not resolved: a venv's python is a link that must keep its path)
    return [os.path.abspath(args.iotbroker_python), "-m", "iotbroker", "--config", str(conf),
            "--listen", f"127.0.0.1:{port}"]


def measure(name: str, count: int, args: argparse.Namespace) -> tuple[int, Path]:
    """Total instructions of one run with ``count`` messages, and the output file."""
    work = Path(tempfile.mkdtemp(prefix=f"cg-{name}-{count}-", dir=args.out_dir))
    out = work / "callgrind.out"
    port = free_port()
    env = dict(os.environ, PYTHONHASHSEED="0")
    with open(work / "broker.log", "wb") as log:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             *broker_command(name, port, work, args)],
            stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env)
    try:
        drive(port, count)
        time.sleep(0.5)
    finally:
        stop(proc)
    return totals(out, work / "broker.log"), out


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a broker under valgrind by its PID: SIGTERM (callgrind writes its counts on
    the way out), then SIGKILL if it has not exited within two minutes."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def totals(path: Path, log: Path) -> int:
    """The run's total instructions (the dump's ``summary:``/``totals:`` line)."""
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path} (see {log})")


def by_function(path: Path) -> dict[str, int]:
    """Exclusive instructions per function (``object:function``), from
    ``callgrind_annotate``'s function list."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", str(path)],
                          capture_output=True, text=True, check=True).stdout
    funcs: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)", line)
        if m is None or "PROGRAM TOTALS" in line:
            continue
        funcs[m.group(2).strip()] += int(m.group(1).replace(",", ""))
    return funcs


def by_object(path: Path) -> dict[str, int]:
    """Instructions per shared object (:func:`by_function`'s, summed)."""
    objects: collections.Counter[str] = collections.Counter()
    for func, count in by_function(path).items():
        obj = re.search(r"\[([^\]]*)\]\s*$", func)
        name = os.path.basename(obj.group(1)) if obj else "(object not named by callgrind_annotate)"
        if "__mypyc" in name or name.startswith(("engine.", "framer.")):
            name = "iotbroker (mypyc-compiled modules)"
        objects[name] += count
    return objects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default="iotbroker,mosquitto")
    ap.add_argument("--counts", default="1000,3000", help="N1,N2 (messages per run)")
    ap.add_argument("--iotbroker-python", default=sys.executable)
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--out-dir", default=None, help="where the runs' files go (kept)")
    ap.add_argument("--by-object", action="store_true")
    ap.add_argument("--top", type=int, default=8, help="objects listed with --by-object")
    args = ap.parse_args()
    n1, n2 = (int(n) for n in args.counts.split(","))
    per_message: dict[str, float] = {}
    for name in args.brokers.split(","):
        total1, out1 = measure(name, n1, args)
        total2, out2 = measure(name, n2, args)
        per_message[name] = (total2 - total1) / (n2 - n1)
        print(f"{name}: {per_message[name]:,.0f} instructions per message "
              f"(totals {total1:,} at N={n1}, {total2:,} at N={n2})", flush=True)
        if args.by_object:
            o1, o2 = by_object(out1), by_object(out2)
            split = {k: (o2.get(k, 0) - o1.get(k, 0)) / (n2 - n1) for k in set(o1) | set(o2)}
            for obj, value in sorted(split.items(), key=lambda kv: -kv[1])[:args.top]:
                print(f"    {value:9,.0f}  {obj}")
    if "iotbroker" in per_message and "mosquitto" in per_message:
        print(f"ratio iotbroker / mosquitto: "
              f"{per_message['iotbroker'] / per_message['mosquitto']:.2f}")


if __name__ == "__main__":
    main()
