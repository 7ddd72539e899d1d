"""How long does a read's output wait for the flush? (issue 19, "the flush turn")

Runs the broker (``storage: memory``, the ``loop:`` given) in a child process with two
probes patched in, under ``loadgen.py --scenario latency`` (1 publisher at 1,000 msg/s,
QoS 1, 1 subscriber), and prints per message, in microseconds (p50 / p90 / p99):

* ``gap``: the end of a ``data_received`` that left output unwritten -> the start of
  the ``Broker.flush`` that writes it (the price of flushing in a later loop pass;
  none when the read wrote its output itself);
* ``read->write``: the start of the ``data_received`` of a PUBLISH -> the forward's
  ``write_pending`` to the subscriber (parse, route, encode, and the gap).

    .venv/bin/python benchmarks/flush_gap.py                        # uvloop and asyncio
    .venv/bin/python benchmarks/flush_gap.py --loops uvloop --reps 3
    .venv/bin/python benchmarks/flush_gap.py --baseline /tmp/main-src   # A/B: "base"

``--baseline DIR`` also runs the broker from another source tree (``PYTHONPATH=DIR``,
e.g. ``git archive REV iotbroker | tar -x -C DIR``), interleaved; the broker runs in
a temporary directory so that the current one does not shadow it. The probes cost a
few microseconds of their own. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADGEN = os.path.join(ROOT, "benchmarks", "loadgen.py")

#: Run in the broker's process: patch the probes in, then start the broker.
PROBE = r'''
import sys, time
from iotbroker.server import transport as T
from iotbroker.server import broker as B
try:  # the loop calls the turn's flush (server/turn.py); a baseline may predate it
    from iotbroker.server.turn import Turn as FLUSHER
except ImportError:
    FLUSHER = B.Broker
pc = time.perf_counter_ns
st = {"end": None, "start": None, "proto": None}
gap, rw = [], []
def report():
    for name, d in (("gap", gap), ("read->write", rw)):
        s = sorted(d[-5000:])
        if s:
            print(f"PROBE {name} {len(s)} {s[len(s)//2]/1e3:.2f} {s[int(len(s)*.9)]/1e3:.2f} "
                  f"{s[int(len(s)*.99)]/1e3:.2f}", file=sys.stderr, flush=True)
orig_dr = T.ClientProtocol.data_received
def data_received(self, data):
    if data[:1] in (b"0", b"2"):  # a PUBLISH, QoS 0 or 1
        st["start"], st["proto"] = pc(), self
    r = orig_dr(self, data)
    broker = self.broker
    if broker.ready_to_write or broker.engine.registry.ready:  # output left for later
        st["end"] = pc()
    return r
T.ClientProtocol.data_received = data_received
orig_wp = T.ClientProtocol.write_pending
def write_pending(self):
    before = self.packets_counted
    r = orig_wp(self)
    t = st["start"]
    if t is not None and self is not st["proto"] and self.packets_counted != before:
        rw.append(pc() - t)
        st["start"] = None
        if len(rw) % 500 == 0:
            report()
    return r
T.ClientProtocol.write_pending = write_pending
orig_flush = FLUSHER.flush
def flush(self):
    e = st["end"]
    if e is not None and (self.ready_to_write or self.engine.registry.ready):
        gap.append(pc() - e)
        st["end"] = None
    return orig_flush(self)
FLUSHER.flush = flush
from iotbroker.cli import console_main
sys.argv = ["iotbroker", *sys.argv[1:]]
console_main()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_one(loop: str, baseline: str | None, duration: float) -> dict[str, object]:
    python = os.path.join(ROOT, ".venv", "bin", "python")
    if not os.path.exists(python):
        python = sys.executable
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        cfg = os.path.join(workdir, "iotbroker.yaml")
        with open(cfg, "w") as f:
            f.write(f"listeners:\n  - {{name: bench, type: tcp, host: 127.0.0.1, port: {port}}}\n"
                    "storage: {backend: memory}\nsys_topics: {enabled: false}\n"
                    f"logging: {{level: WARNING}}\nloop: {loop}\n")
        env = dict(os.environ)
        if baseline:
            env["PYTHONPATH"] = baseline
        with open(os.path.join(workdir, "err"), "w+") as err:
            broker = subprocess.Popen([python, "-c", PROBE, "run", "--config", cfg],
                                      stderr=err, env=env, cwd=workdir)
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    with socket.socket() as s:
                        if s.connect_ex(("127.0.0.1", port)) == 0:
                            break
                    time.sleep(0.05)
                out = subprocess.run([sys.executable, LOADGEN, "run", "--port", str(port),
                                      "--scenario", "latency", "--warmup", "0.5",
                                      "--duration", str(duration), "--broker-pid", str(broker.pid)],
                                     capture_output=True, text=True, timeout=120, check=True)
            finally:
                broker.terminate()
                broker.wait(timeout=10)
            err.seek(0)
            probes: dict[str, list[float]] = {}
            for line in err:
                m = re.match(r"PROBE (\S+) \d+ (\S+) (\S+) (\S+)", line)
                if m:
                    probes[m.group(1)] = [float(m.group(i)) for i in (2, 3, 4)]
            lat = json.loads(out.stdout)["latency_ms"]
        return {"probes": probes, "e2e_ms": [lat.get("p50"), lat.get("p99")]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loops", default="uvloop,asyncio")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--baseline", default=None, help="also run iotbroker from this tree")
    args = ap.parse_args()
    builds: list[tuple[str, str | None]] = [("iotbroker", None)]
    if args.baseline:
        builds.append(("base", args.baseline))
    for rep in range(1, args.reps + 1):
        for loop in args.loops.split(","):
            for name, tree in builds:
                r = run_one(loop, tree, args.duration)
                probes = r["probes"]
                assert isinstance(probes, dict)
                cols = " | ".join(f"{k} p50/p90/p99 us " + "/".join(f"{v:.1f}" for v in vals)
                                  for k, vals in probes.items())
                print(f"rep {rep} {name:9} {loop:7} {cols} | e2e p50/p99 ms {r['e2e_ms']}",
                      flush=True)


if __name__ == "__main__":
    main()
