"""All of NATS away and back (docs/cluster.md, "When NATS is away"): the nodes keep
serving their own clients and report "degraded"; when the nats-servers return, the
nodes reconnect, announce their interest again (a filter subscribed during the
outage too) and messages cross nodes again. This module starts a NATS cluster of its own."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable

from tests.cluster.conftest import wait_for_log
from tests.cluster.test_live_routing import Node, wait_until_routed
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster
from tests.interop.test_paho import Paho

METRICS = "metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n"


def health(node: BrokerProcess) -> bytes:
    port = int(re.findall(r"metrics listening on 127\.0\.0\.1:(\d+)", node.log_text())[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        return bytes(response.read())


def wait_health(node: BrokerProcess, prefix: bytes, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health(node).startswith(prefix):
            return
        time.sleep(0.05)
    raise AssertionError(f"/health of {node.config_path.stem} is {health(node)!r}")


def test_nats_down_and_back(make_node: Node, clients: Callable[..., Paho],
                            nats_cluster: NatsCluster) -> None:
    a = make_node("a", extra=METRICS)
    b = make_node("b", extra=METRICS)
    for node in (a, b):
        wait_for_log(node, "retained messages from bucket")
    assert health(a) == b"ok\n"
    remote = clients(b, "remote")
    remote.subscribe("o/#", qos=1)
    local = clients(a, "local")
    local.subscribe("o/#", qos=1)
    pub = clients(a, "pub")
    wait_until_routed(pub, remote, "o/probe")
    for server in nats_cluster.servers:
        server.kill()
    wait_health(a, b"degraded")
    wait_health(b, b"degraded")
    while not local.messages.empty():
        local.messages.get()
    pub.publish("o/local", b"still", qos=1)  # a serves its own clients meanwhile
    while (msg := local.receive()).payload.startswith(b"probe"):
        pass
    assert (msg.topic, msg.payload) == ("o/local", b"still")
    late = clients(b, "late")  # a subscription made while NATS is away
    late.subscribe("late/#", qos=1)
    for server in nats_cluster.servers:
        server.start()
    wait_health(a, b"ok")
    wait_health(b, b"ok")
    wait_until_routed(pub, remote, "o/probe", timeout=20)  # routing is back
    # b announced everything again once the interest bucket took writes (docs/cluster.md,
    # "NATS outage and resync"), the filter subscribed during the outage included
    wait_until_routed(pub, late, "late/probe", timeout=20)
