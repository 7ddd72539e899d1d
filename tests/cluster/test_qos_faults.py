"""kill -9 of a nats-server while QoS 1 messages cross nodes (docs/cluster.md,
"QoS 1/2 messages"): the publishing node fails over to another server; its PUBACKs
wait for the stream (3 replicas), so every acknowledged message reaches the
persistent subscriber on the other node (MQTT 5.0 §4.3.2: PUBACK means the broker
owns the message). This module starts a NATS cluster of its own (it kills a server)."""

from __future__ import annotations

import time

from iotbroker.codec.packets import PubAck
from tests.cluster.conftest import wait_for_log
from tests.cluster.test_live_routing import Node
from tests.cluster.test_nats_faults import _server_of
from tests.cluster.test_qos_stream import PERSISTENT, _joined, _receive_all
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.rawclient import RawClient


def test_kill_9_of_a_nats_server_loses_no_acknowledged_qos1_message(
    make_node: Node, nats_cluster: NatsCluster
) -> None:
    a = make_node("a")
    b = make_node("b")
    _joined(a, b)
    sub = RawClient(b.host, b.port, version=5)
    sub.connect("sub", clean_start=False, properties=PERSISTENT)
    sub.subscribe("k/#", qos=1)
    pub = RawClient(a.host, a.port, version=5, timeout=15)
    pub.connect("pub")
    victim = _server_of(nats_cluster, "iotbroker a")
    acked = []
    slowest = 0.0
    for i in range(60):
        if i == 20:
            nats_cluster.servers[victim].kill()
        started = time.monotonic()
        ack = pub.publish("k/x", f"{i}".encode(), qos=1)
        slowest = max(slowest, time.monotonic() - started)
        assert isinstance(ack, PubAck) and ack.reason_code == 0, ack
        acked.append(f"{i}".encode())
    wait_for_log(a, "lost NATS")
    got = [m.payload for m in _receive_all(sub, len(acked), timeout=30)]
    assert got == acked
    print(f"slowest PUBACK across the failover: {slowest * 1000:.0f} ms")
    assert "acknowledged unreplicated" not in a.log_text()
    assert "held QoS 1/2 acks released" not in a.log_text()
    nats_cluster.servers[victim].start()
    sub.close()
    pub.close()
