"""Bridge benchmark (issue 15): forwarding rate of an edge broker's bridge to a central
mosquitto, iotbroker's bridge against mosquitto's own bridge in the same run; and the
outbox during an outage (edge RSS and disk while N messages wait, then the drain time).

    .venv/bin/python benchmarks/bridge_bench.py [--messages 20000] [--reps 3] [--outage]
        [--profile FILE]   # cProfile of one iotbroker edge run (pstats file), no comparison

Per rep and edge broker: a fresh central mosquitto and a fresh edge; a subscriber on the
central broker (QoS 1); a publisher on the edge sends N QoS 1 messages of 64 bytes,
100 in flight; the rate is N / (time from the first PUBLISH to the N-th arrival at the
central subscriber); and the edge broker's CPU time over the same span (user + system,
from /proc), reported as messages per edge CPU-second (less sensitive to a shared
machine than msg/s). Both edges: QoS 1 forwarding, 100 in flight towards the remote;
iotbroker on RocksDB (durability os: every accepted message is in the WAL before its
PUBACK), mosquitto with persistence off (its bridge queue is in memory). Processes are
started by this script and stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iotbroker.codec import Framer, decode_packet, encode_packet  # noqa: E402
from iotbroker.codec.packets import (  # noqa: E402
    ConnAck,
    Connect,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
)

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PAYLOAD = b"x" * 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Conn:
    """A minimal blocking MQTT 3.1.1 client on our codec."""

    def __init__(self, port: int, client_id: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.framer = Framer()
        self.pending: list[object] = []
        self.sock.sendall(encode_packet(Connect(client_id=client_id, keepalive=600), 4))
        assert isinstance(self.recv(), ConnAck)

    def recv(self) -> object:
        while not self.pending:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("closed")
            self.pending.extend(decode_packet(f, b, 4) for f, b in self.framer.feed(data))
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


def subscriber(port: int, count: int, done: list[float], ready: threading.Event) -> None:
    c = Conn(port, "bench-sub")
    c.sock.sendall(encode_packet(Subscribe(1, [Subscription("#", 1)]), 4))
    assert isinstance(c.recv(), SubAck)
    ready.set()
    got = 0
    acks: list[bytes] = []
    while got < count:
        p = c.recv()
        if isinstance(p, Publish):
            got += 1
            if p.qos:
                acks.append(encode_packet(PubAck(p.packet_id or 0), 4))
            if not c.pending and acks:
                c.sock.sendall(b"".join(acks))
                acks.clear()
    if acks:
        c.sock.sendall(b"".join(acks))
    done.append(time.perf_counter())
    c.close()


def publish(port: int, count: int, window: int = 100) -> float:
    c = Conn(port, "bench-pub")
    started = time.perf_counter()
    sent = acked = 0
    pid = 0
    while acked < count:
        batch = []
        while sent < count and sent - acked < window:
            pid = pid % 65535 + 1
            batch.append(encode_packet(Publish("bench/t", PAYLOAD, 1, False, False, pid), 4))
            sent += 1
        if batch:
            c.sock.sendall(b"".join(batch))
        p = c.recv()
        if isinstance(p, PubAck):
            acked += 1
    c.close()
    return started


def start_mosquitto(workdir: Path, port: int, extra: str = "") -> subprocess.Popen[bytes]:
    conf = workdir / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    f"log_type none\nmax_queued_messages 1000000\nmax_inflight_messages 100\n"
                    f"{extra}")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


#: cProfile output file of the iotbroker edge (``--profile``); empty: not profiled.
PROFILE: list[str] = []
#: py-spy output file (collapsed stacks) of the iotbroker edge (``--py-spy``).
PYSPY: list[str] = []
#: MQTT version of both edges' bridges (``--protocol``): 4 (3.1.1) or 5.
PROTOCOL: list[int] = [4]


def start_iotbroker(workdir: Path, port: int, central: int) -> subprocess.Popen[bytes]:
    cfg = workdir / f"iotbroker-{port}.yaml"
    cfg.write_text(
        f"listeners: [{{host: 127.0.0.1, port: {port}}}]\n"
        f"storage: {{backend: rocksdb, path: {workdir}/data-{port}, durability: os}}\n"
        "logging: {level: WARNING}\nsys_topics: {enabled: false}\n"
        f"bridges:\n  - name: central\n    address: 127.0.0.1:{central}\n"
        f"    protocol: {PROTOCOL[0]}\n"
        "    max_inflight: 100\n    reconnect_delay: 100ms\n    reconnect_delay_max: 500ms\n"
        "    outbox: {max_messages: 1000000, max_bytes: 0}\n"
        "    topics: [{pattern: 'bench/#', direction: out, qos: 1}]\n")
    # Profiled: cli.main under cProfile (console_main ends with os._exit, before
    # cProfile would write its file).
    run = (["-c", "import cProfile, sys; from iotbroker.cli import main; "
            f"cProfile.run('main(sys.argv[1:])', {PROFILE[0]!r})"] if PROFILE
           else ["-m", "iotbroker"])
    spy = ([str(Path(sys.executable).parent / "py-spy"), "record", "-r", "250", "-f", "raw",
            "-o", PYSPY[0], "--"] if PYSPY else [])
    proc = subprocess.Popen([*spy, sys.executable, *run, "run", "--config",
                             str(cfg)], cwd=workdir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def start_edge(kind: str, workdir: Path, port: int, central: int) -> subprocess.Popen[bytes]:
    if kind == "iotbroker":
        return start_iotbroker(workdir, port, central)
    return start_mosquitto(workdir, port, (
        f"connection central\naddress 127.0.0.1:{central}\nbridge_protocol_version "
        f"{'mqttv50' if PROTOCOL[0] == 5 else 'mqttv311'}\n"
        "restart_timeout 1\ncleansession false\ntopic bench/# out 1\n"))


def stop(proc: subprocess.Popen[bytes]) -> None:
    if PYSPY and proc.poll() is None and "py-spy" in str(proc.args):
        # py-spy writes its file when the broker it runs ends: stop the broker first.
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                os.kill(int(child), 15)
        proc.wait(30)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run_rate(kind: str, count: int, workdir: Path) -> tuple[float, float, float]:
    """(msg/s, messages per edge CPU-second, the load generator's CPU-seconds: this
    process, publisher and subscriber threads, over the same span)."""
    central, edge_port = free_port(), free_port()
    central_proc = start_mosquitto(workdir, central)
    edge = start_edge(kind, workdir, edge_port, central)
    try:
        ready = threading.Event()
        done: list[float] = []
        sub = threading.Thread(target=subscriber, args=(central, count, done, ready))
        sub.start()
        ready.wait(10)
        time.sleep(1.5)  # the edge's bridge is connected and subscribed
        cpu_before = cpu_seconds(edge.pid)
        gen_before = time.process_time()
        started = publish(edge_port, count)
        sub.join(300)
        cpu = cpu_seconds(edge.pid) - cpu_before
        gen_cpu = time.process_time() - gen_before
        if not done:
            raise RuntimeError(f"{kind}: the subscriber did not get {count} messages")
        return count / (done[0] - started), count / cpu if cpu else float("inf"), gen_cpu
    finally:
        stop(edge)
        stop(central_proc)


def run_outage(count: int, workdir: Path) -> dict[str, float]:
    """iotbroker edge, central down: publish ``count``, sample RSS and disk, then start
    the central broker and time the drain."""
    central, edge_port = free_port(), free_port()
    edge = start_iotbroker(workdir, edge_port, central)
    try:
        time.sleep(0.5)
        rss_before = rss_kib(edge.pid)
        peak = rss_before
        step = max(1, count // 10)
        for first in range(0, count, step):
            publish(edge_port, min(step, count - first))
            peak = max(peak, rss_kib(edge.pid))
        disk = disk_bytes(workdir / f"data-{edge_port}")
        rss_after = rss_kib(edge.pid)
        ready = threading.Event()
        done: list[float] = []
        central_proc = start_mosquitto(workdir, central)
        try:
            sub = threading.Thread(target=subscriber, args=(central, count, done, ready))
            sub.start()
            ready.wait(10)
            started = time.perf_counter()
            sub.join(600)
            drain = done[0] - started if done else float("nan")
        finally:
            stop(central_proc)
        return {"rss_before_kib": rss_before, "rss_peak_kib": peak,
                "rss_after_kib": rss_after, "disk_bytes": disk, "drain_s": drain}
    finally:
        stop(edge)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--outage", action="store_true", help="also run the outage measurement")
    ap.add_argument("--outage-messages", type=int, default=0,
                    help="messages queued during the outage (default: --messages)")
    ap.add_argument("--profile", metavar="FILE",
                    help="run one iotbroker edge under cProfile, write pstats to FILE")
    ap.add_argument("--tree", metavar="NAME=PATH", action="append", default=[],
                    help="also run an iotbroker edge from another source tree (e.g. "
                         "`git archive main | tar -x -C /tmp/main`; PYTHONPATH=PATH), "
                         "interleaved with the others in every rep")
    ap.add_argument("--py-spy", metavar="FILE",
                    help="run one iotbroker edge under py-spy (pip install py-spy), write "
                         "collapsed stacks to FILE, no comparison")
    ap.add_argument("--protocol", type=int, choices=(4, 5), default=4,
                    help="MQTT version of the bridges (5: iotbroker adds its origin mark)")
    args = ap.parse_args()
    PROTOCOL[0] = args.protocol
    with tempfile.TemporaryDirectory(prefix="bridge-bench-") as tmp:
        workdir = Path(tmp)
        if args.py_spy:
            PYSPY.append(str(Path(args.py_spy).resolve()))
            rate, per_cpu, _ = run_rate("iotbroker", args.messages, workdir)
            print(f"iotbroker edge under py-spy: {rate:.0f} msg/s; stacks in {PYSPY[0]}")
            return
        if args.profile:
            PROFILE.append(str(Path(args.profile).resolve()))
            rate, per_cpu, _ = run_rate("iotbroker", args.messages, workdir)
            print(f"profiled iotbroker edge: {rate:.0f} msg/s, {per_cpu:.0f} msg/CPU-s; "
                  f"profile in {PROFILE[0]}")
            return
        trees = dict(t.split("=", 1) for t in args.tree)
        kinds = ["iotbroker", *trees, "mosquitto"]
        rates: dict[str, list[float]] = {k: [] for k in kinds}
        per_cpu: dict[str, list[float]] = {k: [] for k in kinds}
        gen: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.reps):
            for kind, values in rates.items():
                if kind in trees:
                    os.environ["PYTHONPATH"] = trees[kind]
                try:
                    rate, cpu_rate, gen_cpu = run_rate(
                        "mosquitto" if kind == "mosquitto" else "iotbroker", args.messages,
                        workdir)
                finally:
                    os.environ.pop("PYTHONPATH", None)
                values.append(rate)
                per_cpu[kind].append(cpu_rate)
                gen[kind].append(gen_cpu)
        if args.reps:
            ib = statistics.median(rates["iotbroker"])
            mq = statistics.median(rates["mosquitto"])
            ibc = statistics.median(per_cpu["iotbroker"])
            mqc = statistics.median(per_cpu["mosquitto"])
            print(f"QoS 1 forwarding edge -> central mosquitto, {args.messages} msgs, "
                  f"median of {args.reps}:")
            for kind in kinds:
                rate = statistics.median(rates[kind])
                cpu_rate = statistics.median(per_cpu[kind])
                print(f"  {kind} bridge  {rate:10.0f} msg/s  "
                      f"{[round(r) for r in rates[kind]]}   {cpu_rate:10.0f} msg/edge-CPU-s  "
                      f"{[round(r) for r in per_cpu[kind]]}   generator "
                      f"{statistics.median(gen[kind]):.2f} CPU-s")
            print(f"  ratio iotbroker/mosquitto: {ib / mq:.2f} (msg/s), "
                  f"{ibc / mqc:.2f} (msg per edge CPU-second)")
        if args.outage:
            queued = args.outage_messages or args.messages
            out = run_outage(queued, workdir)
            print(f"outage, {queued} msgs queued by iotbroker: RSS "
                  f"{out['rss_before_kib'] / 1024:.1f} -> peak {out['rss_peak_kib'] / 1024:.1f}"
                  f" -> {out['rss_after_kib'] / 1024:.1f} MiB, store on disk "
                  f"{out['disk_bytes'] / 1e6:.1f} MB, drain {out['drain_s']:.2f}s")



if __name__ == "__main__":
    main()
