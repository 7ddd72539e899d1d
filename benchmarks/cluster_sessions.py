"""Issue 14: persistent sessions that move between nodes (docs/cluster.md, "Sessions
move"). Two nodes (a, b) on a 3-server NATS cluster (replicas 3).

* **Resume time**: ``--sessions`` persistent sessions (MQTT 5.0, expiry 3600, one
  QoS 1 subscription each) are made on node a and disconnected; each then reconnects
  with Clean Start 0, interleaved: once to node a (its own node: the record is read
  and found to be a's), then — after one QoS 1 message was published to it while
  offline — to node b (the session moves: handover from a, record compare-and-set,
  stream read; the queued message must arrive). CONNECT written → CONNACK read,
  p50 / p99, one at a time. A plain resume on one broker without a cluster is the
  baseline.
* **Cost per SUBSCRIBE of the record write**: clients send ``--subscribes``
  SUBSCRIBEs, ``--per-client`` each (a new filter each, one at a time, waiting for
  each SUBACK; the record holds all of a client's filters, so its size grows with
  them: ``--per-client 2000`` is the worst case of one big client); node a's
  CPU per SUBSCRIBE with a persistent session (a record write after each) against a
  session with expiry 0 (no record), interleaved, median of ``--reps``. Both pay the
  NATS interest (one NATS SUB per new filter). SUBACK latency is reported too (the
  write is not awaited).

    .venv/bin/python benchmarks/cluster_sessions.py [--sessions 200 --subscribes 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cluster_routing import cpu_seconds
from iotbroker.codec.packets import Properties
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.rawclient import RawClient

QUIET = ("logging:\n  level: DEBUG\n", "logging:\n  level: INFO\n")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


def _connect(port: int, client_id: str, clean: bool, expiry: int) -> tuple[RawClient, float, bool]:
    client = RawClient("127.0.0.1", port, version=5, timeout=20)
    t0 = time.perf_counter()
    ack = client.connect(client_id, clean_start=clean,
                         properties=Properties(session_expiry_interval=expiry))
    return client, time.perf_counter() - t0, ack.session_present


def resume_times(a: int, b: int, sessions: int, tag: str) -> tuple[list[float], list[float]]:
    for i in range(sessions):
        c, _, _ = _connect(a, f"{tag}-{i}", True, 3600)
        c.subscribe(f"bench/{tag}/{i}", qos=1)
        c.disconnect()
        c.close()
    time.sleep(0.5)
    pub, _, _ = _connect(a, f"{tag}-pub", True, 0)
    same: list[float] = []
    moved: list[float] = []
    for i in range(sessions):
        c, spent, present = _connect(a, f"{tag}-{i}", False, 3600)
        assert present
        same.append(spent)
        c.disconnect()
        c.close()
        pub.publish(f"bench/{tag}/{i}", b"queued", qos=1)  # while it is offline
        c, spent, present = _connect(b, f"{tag}-{i}", False, 3600)
        assert present, f"{tag}-{i} not resumed on b"
        moved.append(spent)
        assert c.receive_publish(timeout=10).payload == b"queued"
        c.disconnect()
        c.close()
    pub.close()
    return same, moved


def subscribe_cost(pid: int, port: int, count: int, per_client: int, expiry: int,
                   tag: str) -> tuple[float, list[float], float]:
    """(node CPU per SUBSCRIBE, SUBACK latencies, this generator's CPU per SUBSCRIBE):
    ``count`` SUBSCRIBEs, ``per_client`` by each of ``count / per_client`` clients
    (connected before the measurement), one at a time."""
    clients = [_connect(port, f"{tag}-{k}", True, expiry)[0]
               for k in range(max(1, count // per_client))]
    time.sleep(0.5)
    lat = []
    cpu0 = cpu_seconds(pid)
    gen0 = time.process_time()
    for i in range(count):
        t0 = time.perf_counter()
        clients[i % len(clients)].subscribe(f"cost/{tag}/{i}", qos=1)
        lat.append(time.perf_counter() - t0)
    gen = time.process_time() - gen0
    time.sleep(0.5)  # the writes after the last SUBACK
    cpu = cpu_seconds(pid) - cpu0
    for c in clients:
        c.disconnect()
        c.close()
    return cpu / count, lat, gen / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--subscribes", type=int, default=2000)
    parser.add_argument("--per-client", type=int, default=5,
                        help="SUBSCRIBEs per client (the record holds all of them)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        single = BrokerProcess(work / "single", broker_config().replace(*QUIET),
                               name="single").start()
        try:
            base: list[float] = []
            for i in range(args.sessions):
                c, _, _ = _connect(single.port, f"s-{i}", True, 3600)
                c.subscribe(f"bench/s/{i}", qos=1)
                c.disconnect()
                c.close()
                c, spent, present = _connect(single.port, f"s-{i}", False, 3600)
                assert present
                base.append(spent)
                c.disconnect()
                c.close()
        finally:
            single.stop()
        cluster = NatsCluster(work / "nats", size=3).start()
        nodes: list[BrokerProcess] = []
        try:
            for i, name in enumerate(("a", "b")):
                urls = cluster.urls[i:] + cluster.urls[:i]
                text = broker_config(extra=(
                    f"cluster:\n  node_name: {name}\n  nats: [{', '.join(urls)}]\n"
                    f"  replicas: 3\n")).replace(*QUIET)
                nodes.append(BrokerProcess(work / name, text, name=name).start())
            for node in nodes:
                deadline = time.monotonic() + 30
                while "session records bucket" not in node.log_text():
                    if time.monotonic() > deadline:
                        raise RuntimeError(node.log_text())
                    time.sleep(0.05)
            a, b = nodes
            assert a.proc is not None
            same: list[float] = []
            moved: list[float] = []
            for rep in range(args.reps):
                s, m = resume_times(a.port, b.port, args.sessions // args.reps, f"r{rep}")
                same += s
                moved += m
            persistent: list[float] = []
            plain: list[float] = []
            lat_p: list[float] = []
            lat_0: list[float] = []
            gens: list[float] = []
            for rep in range(args.reps):  # interleaved
                cost, lat, gen = subscribe_cost(a.proc.pid, a.port, args.subscribes,
                                                args.per_client, 3600, f"p{rep}")
                persistent.append(cost)
                lat_p += lat
                gens.append(gen)
                cost, lat, gen = subscribe_cost(a.proc.pid, a.port, args.subscribes,
                                                args.per_client, 0, f"z{rep}")
                plain.append(cost)
                lat_0 += lat
                gens.append(gen)
        finally:
            for node in nodes:
                node.stop()
            cluster.stop()
    print(f"Resume with Clean Start 0, CONNECT -> CONNACK, {len(moved)} sessions one at a "
          f"time (2 nodes, 3 nats-servers, replicas 3):")
    for label, values in (("one broker, no cluster", base), ("cluster, same node", same),
                          ("cluster, moved to the other node", moved)):
        print(f"  {label:34s} p50 {_pct(values, 0.5):6.2f} ms  p99 {_pct(values, 0.99):6.2f} ms")
    print(f"SUBSCRIBE ({args.subscribes} new filters, {args.per_client} per client, one at a "
          f"time), node CPU per SUBSCRIBE, median of {args.reps}:")
    for label, costs, lat in (("persistent (record write)", persistent, lat_p),
                              ("expiry 0 (no record)", plain, lat_0)):
        print(f"  {label:28s} {statistics.median(costs) * 1e6:7.0f} us CPU  SUBACK p50 "
              f"{_pct(lat, 0.5):.2f} ms p99 {_pct(lat, 0.99):.2f} ms")
    print(f"  record write: {(statistics.median(persistent) - statistics.median(plain)) * 1e6:.0f}"
          f" us of node CPU per SUBSCRIBE (generator: {statistics.median(gens) * 1e6:.0f} us "
          f"CPU per SUBSCRIBE; nats-servers not counted)")


if __name__ == "__main__":
    main()
