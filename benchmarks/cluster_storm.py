"""Issue 14: a reconnect storm of persistent sessions over three nodes
(tests/helpers/storm.py says what is done and checked; tests/cluster/test_storm.py
runs it with 1,000 clients). Three nodes (a, b, c), each on its own nats-server of a
3-server NATS cluster (replicas 3), INFO logs.

Prints, per round, how long the whole storm took to be CONNACKed and CONNECT ->
CONNACK p50/p99/max; the time to settle to one live connection per client id; the
time for a message to reach every session; the CPU the three nodes and the
nats-servers spent in the storm rounds (per CONNECT); and every error (a session lost,
two live connections, ...). Exit status 1 when there were errors.

    .venv/bin/python benchmarks/cluster_storm.py [--clients 3000 --rounds 3 --twice 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cluster_routing import cpu_seconds
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.storm import run_storm

QUIET = ("logging:\n  level: DEBUG\n", "logging:\n  level: INFO\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--twice", type=float, default=0.1,
                        help="fraction of the ids that connect twice at once per round")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--debug", action="store_true", help="the nodes log at DEBUG")
    parser.add_argument("--keep", default=None,
                        help="a directory for the nodes' and nats-servers' files (kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        cluster = NatsCluster(work / "nats", size=3).start()
        nodes: list[BrokerProcess] = []
        try:
            for i, name in enumerate(("a", "b", "c")):
                text = broker_config(extra=(
                    f"cluster:\n  node_name: {name}\n  nats: [{cluster.urls[i]}]\n"
                    f"  replicas: 3\n"))
                if not args.debug:
                    text = text.replace(*QUIET)
                nodes.append(BrokerProcess(work / name, text, name=name).start())
            for node in nodes:
                deadline = time.monotonic() + 30
                while "session records bucket" not in node.log_text():
                    if time.monotonic() > deadline:
                        raise RuntimeError(node.log_text())
                    time.sleep(0.05)
            pids = [n.proc.pid for n in nodes if n.proc is not None]
            nats_pids = [s.proc.pid for s in cluster.servers if s.proc is not None]
            cpu0 = sum(cpu_seconds(p) for p in pids)
            nats0 = sum(cpu_seconds(p) for p in nats_pids)
            gen0 = time.process_time()
            result = asyncio.run(run_storm([(n.host, n.port) for n in nodes], args.clients,
                                           rounds=args.rounds, twice=args.twice,
                                           timeout=args.timeout))
            cpu = sum(cpu_seconds(p) for p in pids) - cpu0
            nats_cpu = sum(cpu_seconds(p) for p in nats_pids) - nats0
            gen = time.process_time() - gen0
        finally:
            for node in nodes:
                node.stop()
            cluster.stop()
    print(result.summary())
    connects = result.connects + args.clients  # the storm rounds and the set-up
    print(f"  CPU of the whole run (set-up, {args.rounds} rounds, checks): nodes {cpu:.1f} s, "
          f"nats-servers {nats_cpu:.1f} s, this generator {gen:.1f} s; per CONNECT "
          f"({connects}): nodes {cpu / connects * 1e6:.0f} us, nats-servers "
          f"{nats_cpu / connects * 1e6:.0f} us")
    for error in result.errors:
        print("  error:", error)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
