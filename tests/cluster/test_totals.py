"""Cluster totals in $SYS and the metrics (docs/cluster.md, "$SYS and metrics"): every
node publishes ``$SYS/broker/cluster/total/...``, the sums over the live nodes (each
node's figures travel with its heartbeat); a node killed with -9 leaves the totals
within seconds."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable

from tests.cluster.test_live_routing import Node
from tests.interop.test_paho import Paho

EXTRA = ("sys_topics:\n  enabled: true\n  interval: 0.2\n"
         "metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n")
TOTAL = "$SYS/broker/cluster/total/"


def _wait_totals(watch: Paho, expected: dict[str, bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    got: dict[str, bytes] = {}
    while time.monotonic() < deadline:
        try:
            msg = watch.receive(timeout=0.5)
        except Exception:
            continue
        got[msg.topic.removeprefix(TOTAL)] = msg.payload
        if all(got.get(k) == v for k, v in expected.items()):
            return
    raise AssertionError(f"totals {got}, expected {expected}")


def test_sys_cluster_totals_sum_the_live_nodes(make_node: Node,
                                               clients: Callable[..., Paho]) -> None:
    a = make_node("a", servers=[0], extra=EXTRA)
    b = make_node("b", servers=[1], extra=EXTRA)
    watch = clients(a, "watch")
    watch.subscribe(f"{TOTAL}#", qos=0)
    for i in range(2):
        clients(a, f"on-a-{i}").subscribe("t/a", qos=0)
    for i in range(3):
        clients(b, f"on-b-{i}").subscribe("t/b", qos=0)
    # 3 on a (with the watcher), 3 on b; 1 + 2 + 3 subscriptions
    _wait_totals(watch, {"nodes": b"2", "clients/connected": b"6",
                         "sessions/count": b"6", "subscriptions/count": b"6"})
    port = int(re.findall(r"metrics listening on 127\.0\.0\.1:(\d+)", b.log_text())[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "iotbroker_cluster_total_nodes 2.0" in text
    assert "iotbroker_cluster_total_clients_connected 6.0" in text
    b.kill()  # its heartbeat stops: it leaves the totals after NODE_TTL (3 s)
    _wait_totals(watch, {"nodes": b"1", "clients/connected": b"3"})
