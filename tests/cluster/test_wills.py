"""Wills of a node that died (docs/cluster.md, "Wills of a dead node"): kill -9 of the
node a client with a will is connected to publishes its will once, on another node,
to subscribers everywhere (MQTT 5.0 §3.1.2.5: the network connection closed without
DISCONNECT); a node that stops cleanly sends none (a shutdown is not the client's
fault), and a client that disconnected normally leaves no will behind [MQTT-3.1.2-10]."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats

from iotbroker.cluster.buckets import list_keys
from iotbroker.codec.packets import Properties, Will
from tests.cluster.conftest import wait_for_log
from tests.cluster.test_live_routing import Node, wait_until_routed
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.rawclient import RawClient
from tests.interop.test_paho import Paho


def _ready(*nodes: BrokerProcess) -> None:
    for node in nodes:
        wait_for_log(node, "wills bucket", timeout=20)
        wait_for_log(node, "session bucket", timeout=20)


def _will_keys(nats_cluster: NatsCluster, node: BrokerProcess) -> list[str]:
    prefix = node.config_path.read_text().split("subject_prefix: ")[1].split()[0]

    async def keys() -> list[str]:
        nc = await nats.connect(nats_cluster.urls)
        try:
            return await list_keys(nc.jetstream(), f"{prefix}_wills")
        finally:
            await nc.close()

    return asyncio.run(keys())


def _wait_keys(nats_cluster: NatsCluster, node: BrokerProcess, count: int) -> None:
    deadline = time.monotonic() + 10
    keys: list[str] = []
    while time.monotonic() < deadline:
        keys = _will_keys(nats_cluster, node)
        if len(keys) == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"wills in the bucket: {keys}, expected {count}")


def test_kill_9_of_a_node_publishes_its_clients_wills_once(
    make_node: Node, clients: Callable[..., Paho], nats_cluster: NatsCluster
) -> None:
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    c = make_node("c", servers=[2])
    _ready(a, b, c)
    on_b = clients(b, "watch-b")
    on_b.subscribe("wills/#", qos=1)
    on_c = clients(c, "watch-c")
    on_c.subscribe("wills/#", qos=1)
    probe = clients(a, "probe")
    wait_until_routed(probe, on_b, "wills/probe")
    wait_until_routed(probe, on_c, "wills/probe")
    probe.disconnect()
    device = RawClient(a.host, a.port, version=5)
    device.connect("device-1", will=Will("wills/device-1", b"gone", 1, False, Properties()))
    polite = RawClient(a.host, a.port, version=5)
    polite.connect("device-2", will=Will("wills/device-2", b"no", 1, False, Properties()))
    _wait_keys(nats_cluster, a, 2)
    polite.disconnect()  # a normal DISCONNECT: its will is discarded [MQTT-3.1.2-10]
    _wait_keys(nats_cluster, a, 1)
    a.kill()
    for watcher in (on_b, on_c):
        msg = watcher.receive(timeout=15)
        while msg.payload.startswith(b"probe"):  # left over from wait_until_routed
            msg = watcher.receive(timeout=15)
        assert (msg.topic, msg.payload, msg.qos) == ("wills/device-1", b"gone", 1)
    _wait_keys(nats_cluster, b, 0)
    # exactly once: a marker published after the will arrives next on both
    marker = clients(b, "marker")
    marker.publish("wills/end", b"end", qos=1)
    for watcher in (on_b, on_c):
        assert [m.topic for m in watcher.receive_until("wills/end")] == []
    device.close()
    polite.close()


def test_kill_9_of_two_nodes_at_once_publishes_the_wills_of_both_once(
    make_node: Node, clients: Callable[..., Paho], nats_cluster: NatsCluster
) -> None:
    """Two dead processes in one sweep (the bucket is listed once per sweep and each
    dead process's wills are taken from that one listing): the survivor publishes
    every will of both, each once [MQTT-3.1.2-8]."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    c = make_node("c", servers=[2])
    _ready(a, b, c)
    on_c = clients(c, "watch-c2")
    on_c.subscribe("wills2/#", qos=1)
    for name, node in (("a", a), ("b", b)):
        probe = clients(node, f"probe-{name}")
        wait_until_routed(probe, on_c, f"wills2/probe-{name}")
        probe.disconnect()
    devices = []
    for name, node in (("a", a), ("b", b)):
        for i in range(2):
            device = RawClient(node.host, node.port, version=5)
            device.connect(f"dev-{name}-{i}", will=Will(
                f"wills2/dev-{name}-{i}", b"gone", 1, False, Properties()))
            devices.append(device)
    _wait_keys(nats_cluster, a, 4)  # one bucket for the cluster: both nodes' wills
    a.kill()
    b.kill()
    got = []
    while len(got) < 4:
        msg = on_c.receive(timeout=15)
        if not msg.payload.startswith(b"probe"):
            got.append((msg.topic, msg.payload, msg.qos))
    assert sorted(got) == sorted(
        (f"wills2/dev-{n}-{i}", b"gone", 1) for n in ("a", "b") for i in range(2))
    _wait_keys(nats_cluster, c, 0)
    marker = clients(c, "marker2")
    marker.publish("wills2/end", b"end", qos=1)
    assert [m.topic for m in on_c.receive_until("wills2/end")] == []  # each once
    for device in devices:
        device.close()


def test_a_clean_stop_sends_no_will(
    make_node: Node, nats_cluster: NatsCluster
) -> None:
    """SIGTERM: the node's wills leave the bucket before it goes, so no other node
    publishes them."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    _ready(a, b)
    device = RawClient(a.host, a.port, version=5)
    device.connect("device-3", will=Will("wills/device-3", b"x", 0, False, Properties()))
    _wait_keys(nats_cluster, a, 1)
    a.stop()
    assert _will_keys(nats_cluster, b) == []
    device.close()


def test_a_crashed_node_that_restarts_gives_the_will_to_its_own_sessions_only(
    make_node: Node, clients: Callable[..., Paho], nats_cluster: NatsCluster
) -> None:
    """A node on RocksDB keeps the will of a live connection with its session, and
    publishes it after a crash (issue 18) before it rejoins the cluster: its own
    persistent subscriber gets it then (the survivors' copy could not reach a dead
    node), the subscribers elsewhere got it from the survivors — once each."""
    a = make_node("a", servers=[0], storage="rocksdb")
    b = make_node("b", servers=[1])
    _ready(a, b)
    watch = clients(b, "watch")
    watch.subscribe("wills/#", qos=1)
    local = clients(a, "local", clean=False, session_expiry=3600)
    local.subscribe("wills/#", qos=1)
    probe = clients(a, "probe")
    wait_until_routed(probe, watch, "wills/probe")
    probe.disconnect()
    device = RawClient(a.host, a.port, version=5)
    device.connect("device-9", clean_start=False,
                   will=Will("wills/device-9", b"gone", 1, False, Properties()),
                   properties=Properties(session_expiry_interval=3600))
    _wait_keys(nats_cluster, a, 1)
    local.client.loop_stop()  # no automatic reconnect: "back" below resumes the session
    local.started = False
    a.kill()
    msg = watch.receive(timeout=15)
    while msg.payload.startswith(b"probe"):
        msg = watch.receive(timeout=15)
    assert (msg.topic, msg.payload) == ("wills/device-9", b"gone")
    a.start()
    _ready(a)
    probe = clients(a, "probe2")
    wait_until_routed(probe, watch, "wills/probe")  # a routes to b again
    probe.publish("wills/end", b"end", qos=1)
    assert [m.topic for m in watch.receive_until("wills/end")
            if not m.payload.startswith(b"probe")] == []
    back = clients(a, "local", clean=False, session_expiry=3600)
    got = [(m.topic, m.payload) for m in back.receive_until("wills/end")
           if not m.payload.startswith(b"probe")]
    assert got == [("wills/device-9", b"gone")]
    device.close()
