"""Faults of the fabric (docs/cluster.md, "When NATS is away"): kill -9 of the
nats-server a node is connected to. The node fails over to another server of its
list, NATS gets its interest again, and messages and retained messages flow again.
This module starts a NATS cluster of its own (it kills one of its servers)."""

from __future__ import annotations

from collections.abc import Callable

from tests.cluster.conftest import wait_for_log
from tests.cluster.test_live_routing import Node, wait_until_routed
from tests.cluster.test_retained import wait_retained
from tests.helpers.nats_cluster import NatsCluster
from tests.interop.test_paho import Paho


def _server_of(nats_cluster: NatsCluster, connection_name: str) -> int:
    for i, server in enumerate(nats_cluster.servers):
        if not server.alive():
            continue
        names = [c.get("name") for c in server.monitor("connz").get("connections", [])]
        if connection_name in names:
            return i
    raise AssertionError(f"{connection_name!r} is connected to no server")


def test_kill_9_of_a_nats_server_keeps_the_cluster_serving(
    make_node: Node, clients: Callable[..., Paho], nats_cluster: NatsCluster
) -> None:
    a = make_node("a")
    b = make_node("b")
    for node in (a, b):
        wait_for_log(node, "retained messages from bucket")
    sub = clients(b, "sub")
    sub.subscribe("f/#", qos=1)
    pub = clients(a, "pub")
    wait_until_routed(pub, sub, "f/probe")
    pub.publish("f/kept", b"r", qos=1, retain=True)
    assert sub.receive().payload == b"r"  # live, to the existing subscription
    victim = _server_of(nats_cluster, "iotbroker a")
    nats_cluster.servers[victim].kill()
    wait_for_log(a, "lost NATS")
    wait_until_routed(pub, sub, "f/probe", timeout=20)  # a reconnected elsewhere
    for i in range(20):
        pub.publish("f/after", f"{i}".encode(), qos=1)
    pub.publish("f/end", b"end", qos=1)
    got = [m.payload for m in sub.receive_until("f/end") if m.topic == "f/after"]
    assert got == [f"{i}".encode() for i in range(20)]
    # the retained bucket (3 replicas) lost one server and still answers
    pub.publish("f/later", b"L", qos=1, retain=True)
    ids = iter(range(100))
    wait_retained(lambda: clients(b, f"r{next(ids)}"), "f/#",
                  [("f/kept", b"r"), ("f/later", b"L")], timeout=10)
