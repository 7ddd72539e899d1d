"""Where does one QoS 1 message spend its time inside the broker? (issue 19, latency)

Runs the broker (``storage: memory`` or ``--storage rocksdb``) in a child process with
``perf_counter_ns`` probes patched in, under ``loadgen.py --scenario latency`` (1
publisher at ``--rate`` msg/s, QoS 1, 1 subscriber), and prints per message the time
of each stage from the PUBLISH's ``data_received`` to the forward's ``transport.write``,
in microseconds (p50 / p99), for every rate given (default 1,000 and 20,000 msg/s:
what costs more at the low rate is the cold path, caches and the interpreter's inline
caches evicted between messages):

* ``parse``: ``data_received`` start -> ``Connection.receive_data`` returned;
* ``pre``: -> ``Engine.on_publish`` entered (``handle_packets``, dispatch);
* ``check``: -> ``Router.publish`` entered (limits, ACL, the Message);
* ``route``: -> ``Router.publish`` returned (trie match, ``Session.deliver``);
* ``ack``: -> ``on_publish`` returned (the PUBACK queued);
* ``post``: -> ``data_received`` returned;
* ``gap``: -> ``Broker.flush`` entered (the loop pass);
* ``encode``: -> ``Engine.send_ready`` returned (the forward encoded);
* ``commit``: -> the forward's ``write_pending`` entered (the storage commit);
* ``write``: -> its ``transport.write`` returned (the syscall);
* ``total``: ``data_received`` start -> forward written.

Only messages that came alone in their read count (at 20,000 msg/s some reads carry
several). The probes cost ~0.1-0.2 us each (10 of them).

    .venv/bin/python benchmarks/latency_stages.py [--rates 1000,20000] [--fifo 10]
    .venv/bin/python benchmarks/latency_stages.py --baseline /tmp/base   # A/B "base"

``--baseline DIR`` also runs the broker from another source tree (``PYTHONPATH=DIR``),
interleaved; the broker runs in a temporary directory so that the current one does not
shadow it. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADGEN = os.path.join(ROOT, "benchmarks", "loadgen.py")
STAGES = ("parse", "pre", "check", "route", "ack", "post", "gap", "encode", "commit",
          "write", "total")

#: Run in the broker's process: patch the probes in, then start the broker.
PROBE = r'''
import atexit, json, os, sys, time
from iotbroker.server import transport as T
from iotbroker.server import broker as B
try:  # the loop calls the turn's flush (server/turn.py); a baseline may predate it
    from iotbroker.server.turn import Turn as FLUSHER
except ImportError:
    FLUSHER = B.Broker
from iotbroker.engine import engine as E
from iotbroker.core import router as R
from iotbroker.protocol import connection as C
pc = time.perf_counter_ns
OUT = os.environ["STAGES_OUT"]
cur = None          # time stamps of the message in flight, or None
samples = []
def dump():
    with open(OUT, "w") as f:
        json.dump(samples[-20000:], f)
atexit.register(dump)
orig_dr = T.ClientProtocol.data_received
def data_received(self, data):
    global cur
    if data[:1] == b"2" and len(data) == (data[1] + 2 if data[1] < 128 else -1):
        cur = [pc(), self]  # a lone QoS 1 PUBLISH
    r = orig_dr(self, data)
    if cur is not None and cur[1] is self and len(cur) == 7:
        cur.append(pc())
    return r
T.ClientProtocol.data_received = data_received
orig_rd = C.Connection.receive_data
def receive_data(self, data, now):
    r = orig_rd(self, data, now)
    if cur is not None and len(cur) == 2 and cur[1].conn is self:
        cur.append(pc())
    return r
C.Connection.receive_data = receive_data
orig_op = E.Engine.on_publish
def on_publish(self, client, packet, now):
    if cur is not None and len(cur) == 3:
        cur.append(pc())
    r = orig_op(self, client, packet, now)
    if cur is not None and len(cur) == 6:
        cur.append(pc())
    return r
E.Engine.on_publish = on_publish
orig_rp = R.Router.publish
def publish(self, message, now, shared=None):
    if cur is not None and len(cur) == 4:
        cur.append(pc())
    r = orig_rp(self, message, now, shared)
    if cur is not None and len(cur) == 5:
        cur.append(pc())
    return r
R.Router.publish = publish
orig_flush = FLUSHER.flush
def flush(self):
    if cur is not None and len(cur) == 8:
        cur.append(pc())
    return orig_flush(self)
FLUSHER.flush = flush
orig_sr = E.Engine.send_ready
def send_ready(self, now):
    r = orig_sr(self, now)
    if cur is not None and len(cur) == 9:
        cur.append(pc())
    return r
E.Engine.send_ready = send_ready
orig_wp = T.ClientProtocol.write_pending
def write_pending(self):
    global cur
    c = cur
    if c is None or len(c) != 10 or self is c[1]:
        return orig_wp(self)
    c.append(pc())
    r = orig_wp(self)
    c.append(pc())
    t = [c[0]] + c[2:]
    samples.append([t[i + 1] - t[i] for i in range(len(t) - 1)] + [t[-1] - t[0]])
    cur = None
    if len(samples) % 2000 == 0:
        dump()
    return r
T.ClientProtocol.write_pending = write_pending
from iotbroker.cli import console_main
sys.argv = ["iotbroker", *sys.argv[1:]]
console_main()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] / 1e3


def run_one(rate: float, baseline: str | None, args: argparse.Namespace) -> dict[str, object]:
    python = os.path.join(ROOT, ".venv", "bin", "python")
    if not os.path.exists(python):
        python = sys.executable
    fifo = ["chrt", "-f", str(args.fifo)] if args.fifo else []
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        cfg = os.path.join(workdir, "iotbroker.yaml")
        storage = ("{backend: memory}" if args.storage == "memory"
                   else f"{{backend: rocksdb, path: {workdir}/db}}")
        with open(cfg, "w") as f:
            f.write(f"listeners:\n  - {{name: bench, type: tcp, host: 127.0.0.1, port: {port}}}\n"
                    f"storage: {storage}\nsys_topics: {{enabled: false}}\n"
                    f"logging: {{level: WARNING}}\n{args.extra_config}\n")
        env = dict(os.environ, STAGES_OUT=os.path.join(workdir, "stages.json"))
        if baseline:
            env["PYTHONPATH"] = baseline
        with open(os.path.join(workdir, "err"), "w+") as err:
            broker = subprocess.Popen([*fifo, python, "-c", PROBE, "run", "--config", cfg],
                                      stderr=err, env=env, cwd=workdir)
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    with socket.socket() as s:
                        if s.connect_ex(("127.0.0.1", port)) == 0:
                            break
                    time.sleep(0.05)
                out = subprocess.run([*fifo, sys.executable, LOADGEN, "run", "--port", str(port),
                                      "--scenario", "latency", "--rate", str(rate),
                                      "--warmup", "0.5", "--duration", str(args.duration),
                                      "--broker-pid", str(broker.pid)],
                                     capture_output=True, text=True, timeout=120, check=True)
            finally:
                broker.terminate()
                broker.wait(timeout=10)
            with open(env["STAGES_OUT"]) as f:
                samples: list[list[int]] = json.load(f)
        lat = json.loads(out.stdout)["latency_ms"]
    cols = list(zip(*samples, strict=True)) if samples else []
    stages = {name: (pct(list(col), 0.5), pct(list(col), 0.99))
              for name, col in zip(STAGES, cols, strict=True)}
    return {"n": len(samples), "stages": stages, "e2e_ms": (lat.get("p50"), lat.get("p99"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="1000,20000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--fifo", type=int, default=0, metavar="PRIORITY",
                    help="broker and generator under SCHED_FIFO (chrt -f; root)")
    ap.add_argument("--storage", choices=("memory", "rocksdb"), default="memory")
    ap.add_argument("--extra-config", default="", help="YAML appended to the broker's")
    ap.add_argument("--baseline", default=None, help="also run iotbroker from this tree")
    args = ap.parse_args()
    builds: list[tuple[str, str | None]] = [("iotbroker", None)]
    if args.baseline:
        builds.append(("base", args.baseline))
    print(f"{'':22}" + "".join(f"{s:>12}" for s in STAGES) + "   e2e p50/p99 ms")
    for _rep in range(args.reps):
        for rate in (float(r) for r in args.rates.split(",")):
            for name, tree in builds:
                r = run_one(rate, tree, args)
                stages = r["stages"]
                assert isinstance(stages, dict)
                print(f"{name:9} {rate:>6.0f}/s p50 " + "".join(
                    f"{stages[s][0]:12.1f}" for s in STAGES) + f"   {r['e2e_ms']}")
                print(f"{'':9} n={r['n']:<6} p99 " + "".join(
                    f"{stages[s][1]:12.1f}" for s in STAGES), flush=True)


if __name__ == "__main__":
    main()
