"""User-space instructions per connection, whole broker process, iotbroker against
mosquitto, counted by valgrind's callgrind (issue 19: what the connect rate's CPU is
made of, with no clock, so a noisy machine does not move the figure).

Each broker runs under ``valgrind --tool=callgrind`` with the configuration of
``e2e.py`` (iotbroker: memory storage, ``sys_topics`` off, logging WARNING, one TCP
listener; mosquitto: persistence off, ``log_type none``, ``set_tcp_nodelay true``).
N clients connect in waves of ``--wave`` (64, the load generator's default in flight):
each wave's sockets are opened, each sends an MQTT 3.1.1 CONNECT (clean session,
keep-alive 60), then each wave's CONNACKs are read; the clients stay connected, idle,
until the broker is stopped. Two runs per broker with different N;
(total(N2) - total(N1)) / (N2 - N1) is the per-connection count, start-up and
shut-down left out (``callgrind_control --dump`` once the clients are connected; the
counts of that dump are the run's). ``--by-object`` splits it by shared object, ``--by-function``
lists the functions whose own (exclusive) count per connection is largest.

    flock /tmp/bench.lock .venv-c/bin/python benchmarks/callgrind_connect.py \\
        --iotbroker-python .venv-c/bin/python --by-object --by-function

Kernel time (the system calls) is not counted: see ``strace -c -f`` in
docs/performance.md for that side.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.callgrind_brokers import by_function, by_object, free_port, stop, totals
from iotbroker.codec import encode_packet
from iotbroker.codec.packets import Connect

CONNACK = bytes([0x20, 0x02, 0x00, 0x00])


def connect_all(port: int, count: int, wave: int) -> list[socket.socket]:
    """``count`` clients connected and answered, in waves of ``wave``."""
    deadline = time.monotonic() + 120  # a broker under valgrind starts slowly
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    time.sleep(1.0)  # the probe's disconnect handled before the counted part
    socks: list[socket.socket] = []
    for start in range(0, count, wave):
        batch = []
        for i in range(start, min(start + wave, count)):
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            s.sendall(encode_packet(Connect(client_id=f"cg-{i:06d}", keepalive=60), 4))
            batch.append(s)
        for s in batch:
            got = b""
            while len(got) < 4:
                data = s.recv(4 - len(got))
                if not data:
                    raise ConnectionError("the broker closed a connection")
                got += data
            if got != CONNACK:
                raise AssertionError(f"unexpected CONNACK {got!r}")
        socks += batch
    return socks


def broker_command(name: str, port: int, work: Path, args: argparse.Namespace) -> list[str]:
    if name == "mosquitto":
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n"
                        "persistence false\nlog_type none\nset_tcp_nodelay true\n")
        return [args.mosquitto, "-c", str(conf)]
    conf = work / "iotbroker.yaml"
    conf.write_text(f"""listeners:
  - name: bench
    type: tcp
    host: 127.0.0.1
    port: {port}
storage: {{backend: memory}}
sys_topics: {{enabled: false}}
logging: {{level: WARNING}}
mqtt: {{max_inflight: 20, max_queued_messages: 10000}}
""")
    return [os.path.abspath(args.iotbroker_python), "-m", "iotbroker", "run",
            "--config", str(conf)]


def measure(name: str, count: int, args: argparse.Namespace) -> tuple[int, Path]:
    """Total instructions of one run with ``count`` connections, and the output file."""
    work = Path(tempfile.mkdtemp(prefix=f"cgc-{name}-{count}-", dir=args.out_dir))
    out = work / "callgrind.out"
    port = free_port()
    env = dict(os.environ, PYTHONHASHSEED="0")
    with open(work / "broker.log", "wb") as log:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             *broker_command(name, port, work, args)],
            stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env)
    socks: list[socket.socket] = []
    try:
        socks = connect_all(port, count, args.wave)
        time.sleep(0.5)
        # The counted part ends here: a dump of the counts so far (start-up and the
        # connects), so that the shut-down, which closes every connection, is left out.
        subprocess.run(["callgrind_control", "--dump=connected", str(proc.pid)],
                       check=True, capture_output=True, timeout=120)
    finally:
        stop(proc)
        for s in socks:
            s.close()
    dumps = sorted(work.glob("callgrind.out.*"))
    if len(dumps) != 1:
        raise RuntimeError(f"expected one dump in {work}, found {dumps}")
    return totals(dumps[0], work / "broker.log"), dumps[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default="iotbroker,mosquitto")
    ap.add_argument("--counts", default="1000,3000", help="N1,N2 (connections per run)")
    ap.add_argument("--wave", type=int, default=64, help="CONNECTs sent before reading")
    ap.add_argument("--iotbroker-python", default=sys.executable)
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--out-dir", default=None, help="where the runs' files go (kept)")
    ap.add_argument("--by-object", action="store_true")
    ap.add_argument("--by-function", action="store_true")
    ap.add_argument("--top", type=int, default=8, help="objects listed with --by-object")
    ap.add_argument("--top-functions", type=int, default=30)
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
    n1, n2 = (int(n) for n in args.counts.split(","))
    per_conn: dict[str, float] = {}
    for name in args.brokers.split(","):
        total1, out1 = measure(name, n1, args)
        total2, out2 = measure(name, n2, args)
        per_conn[name] = (total2 - total1) / (n2 - n1)
        print(f"{name}: {per_conn[name]:,.0f} instructions per connection "
              f"(totals {total1:,} at N={n1}, {total2:,} at N={n2}; {out1}, {out2})",
              flush=True)
        if args.by_object:
            o1, o2 = by_object(out1), by_object(out2)
            split = {k: (o2.get(k, 0) - o1.get(k, 0)) / (n2 - n1) for k in set(o1) | set(o2)}
            for obj, value in sorted(split.items(), key=lambda kv: -kv[1])[:args.top]:
                print(f"    {value:9,.0f}  {obj}")
        if args.by_function:
            f1, f2 = by_function(out1), by_function(out2)
            fsplit = {k: (f2.get(k, 0) - f1.get(k, 0)) / (n2 - n1) for k in set(f1) | set(f2)}
            print("  by function (exclusive):")
            for fn, value in sorted(fsplit.items(), key=lambda kv: -kv[1])[:args.top_functions]:
                print(f"    {value:9,.0f}  {fn[:150]}")
    if "iotbroker" in per_conn and "mosquitto" in per_conn:
        print(f"ratio iotbroker / mosquitto: "
              f"{per_conn['iotbroker'] / per_conn['mosquitto']:.2f}")


if __name__ == "__main__":
    main()
