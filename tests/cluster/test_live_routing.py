"""Live routing by interest across nodes (docs/cluster.md, "Live routing"): two
iotbroker processes joined to a real 3-server NATS cluster, real paho clients on each.

Each node knows a different nats-server, so every message crosses a NATS route too.
A subscription on one node receives messages published on another once the other
node has seen its announcement (not from the SUBACK on: docs/cluster.md says so);
tests wait for that by publishing a probe until one arrives, then check exact delivery
with an end marker (one publisher's messages keep their order [MQTT-4.6.0-5]), so no
test sleeps to prove an absence.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.js.errors import BucketNotFoundError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iotbroker.cluster.buckets import list_keys, transient
from iotbroker.cluster.remote import decode_value
from iotbroker.codec import encode_packet
from iotbroker.codec.packets import Properties as Properties5
from iotbroker.codec.packets import Publish
from tests.cluster.conftest import log_tails, node_config, wait_for_log
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.rawclient import RawClient
from tests.interop.test_paho import VERSIONS, Paho

Node = Callable[..., BrokerProcess]


def wait_until_routed(pub: Paho, sub: Paho, topic: str, timeout: float = 10.0,
                      qos: int = 1, nodes: tuple[BrokerProcess, ...] = ()) -> None:
    """Publish probes on ``topic`` until ``sub`` gets one (NATS has the interest),
    then drain the probes that were still on their way (and anything before them).
    A QoS 1 probe goes live to every node, whatever the interest the sender knows
    (docs/cluster.md, "QoS 1/2 go live to every node"): only a QoS 0 probe (``qos=0``)
    shows that the publisher's node has seen the subscriber's announcement, which
    its QoS 0 messages need.
    Probes published before the sender saw the receiving node's heartbeat (likely) went
    to the QoS stream only; they still come before ``probe-end`` [MQTT-4.6.0-5]: the
    receiving node holds the sender's first live parts until its stream reader has
    routed them (docs/cluster.md, "What is guaranteed"; ``test_live_order.py``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.publish(topic, b"probe", qos=qos)
        try:
            msg = sub.messages.get(timeout=0.1)
        except Exception:
            continue
        if msg.payload != b"probe":
            continue
        pub.publish(topic, b"probe-end", qos=qos)
        while sub.receive().payload != b"probe-end":
            pass
        return
    raise AssertionError(f"no probe on {topic!r} reached the other node within {timeout}s\n"
                         + log_tails(*nodes, lines=60))


@pytest.mark.parametrize("version", VERSIONS)
def test_message_published_on_one_node_reaches_a_subscriber_on_another(
    make_node: Node, clients: Callable[..., Paho], version: str
) -> None:
    """Overlapping filters on the receiving node ([MQTT-3.3.4-2]: one copy per
    client), topics with '.', spaces, empty levels, '*', '>', '$' that the subject
    mapping must carry, and [MQTT-4.7.2-1] ('#' does not match '$' topics) kept
    across nodes."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    protocol = VERSIONS[version]
    sub = clients(b, f"sub-{version}", protocol)
    sub.subscribe([("sensors/+/temp", 1), ("#", 1), ("$dev/#", 1)])
    pub = clients(a, f"pub-{version}", protocol)
    wait_until_routed(pub, sub, "sensors/x/temp", nodes=(a, b))
    # the QoS 0 messages below need a to have seen b's '#' and '$dev/#'
    wait_until_routed(pub, sub, "probe/x", qos=0, nodes=(a, b))
    wait_until_routed(pub, sub, "$dev/probe", qos=0, nodes=(a, b))
    topics = ["sensors/1/temp", "odd topic/with.dots/and*star>", "/leading", "a//b/",
              "$dev/x.y", "sensors/2/temp", "~tilde/é中"]
    for i, topic in enumerate(topics):
        pub.publish(topic, f"m{i}".encode(), qos=i % 2)
    pub.publish("end", b"end", qos=1)
    got = [(m.topic, m.payload) for m in sub.receive_until("end")]  # no late probe
    # Each message once, none lost, no probe after its ``probe-end``; one topic each,
    # so their relative order is not an MQTT rule (each topic's is: [MQTT-4.6.0-5]),
    # and across nodes a publisher's QoS 0 and QoS 1 messages are not kept in order
    # with each other (docs/cluster.md, "Not yet"): m1 (QoS 1, routed from the QoS
    # stream before its live copy came) was seen ahead of m0 (QoS 0) under load.
    assert sorted(got) == sorted((t, f"m{i}".encode()) for i, t in enumerate(topics))


def test_mqtt5_properties_and_qos_cross_nodes(make_node: Node,
                                              clients: Callable[..., Paho]) -> None:
    """What a PUBLISH carries (MQTT 5.0 §3.3.2.3: user properties, content type,
    response topic, correlation data) reaches the other node's subscriber unchanged,
    at min(publish QoS, granted QoS) [MQTT-3.8.4-6]."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[2])
    sub = clients(b, "sub")
    sub.subscribe("cmd/#", qos=2)
    low = clients(b, "low")
    low.subscribe("cmd/#", qos=0)
    pub = clients(a, "pub")
    wait_until_routed(pub, sub, "cmd/probe")
    while not low.messages.empty():
        low.messages.get()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "v"), ("k", "w")]
    props.ContentType = "text/plain"
    props.ResponseTopic = "reply/here"
    props.CorrelationData = b"\x00\x01"
    pub.publish("cmd/go", b"payload", qos=2, properties=props)
    for client, qos in ((sub, 2), (low, 0)):
        msg = client.receive()
        while msg.payload.startswith(b"probe"):
            msg = client.receive()
        assert (msg.topic, msg.payload, msg.qos) == ("cmd/go", b"payload", qos)
        got = msg.properties
        assert got.UserProperty == [("k", "v"), ("k", "w")]
        assert got.ContentType == "text/plain"
        assert got.ResponseTopic == "reply/here"
        assert got.CorrelationData == b"\x00\x01"


def announced(nats_cluster: NatsCluster, prefix: str, node: str) -> dict[str, int]:
    """What node ``node`` announces in the interest bucket: filter -> count."""

    async def read() -> dict[str, int]:
        nc = await nats.connect(nats_cluster.urls)
        try:
            got: dict[str, int] = {}
            try:
                kv = await nc.jetstream().key_value(f"{prefix}_interest")
            except BucketNotFoundError:
                return got  # the node has not created it yet (wait_announced retries)
            for key in await list_keys(nc.jetstream(), f"{prefix}_interest"):
                if key.startswith(f"{node}_"):
                    entry = await kv.get(key)
                    if entry.value:
                        announced_filter, count = decode_value(entry.value)
                        got[announced_filter] = count
            return got
        finally:
            await nc.close()

    return asyncio.run(read())


def wait_announced(nats_cluster: NatsCluster, prefix: str, node: str,
                   expected: dict[str, int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    got: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            got = announced(nats_cluster, prefix, node)
        except Exception as exc:  # a JetStream request unanswered in time: read again
            if not transient(exc):  # (seen in CI under load, 2026-12-07: 'nats: timeout')
                raise
            continue
        if got == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"{node!r} announces {got}, expected {expected}")


def _prefix(node: BrokerProcess) -> str:
    return node.config_path.read_text().split("subject_prefix: ")[1].split()[0]


def test_one_nats_subscription_per_node_and_one_announcement_per_distinct_filter(
    make_node: Node, clients: Callable[..., Paho], nats_cluster: NatsCluster
) -> None:
    """A node holds one NATS subscription for messages from other nodes, its own
    subject, whatever its clients subscribe to. It announces each distinct filter
    once, reference-counted (many MQTT subscriptions on one filter are one
    announcement), a shared subscription with its member count (MQTT 5.0 §4.8.2), and
    takes an announcement back with the filter's last subscriber (unsubscribe, end of
    a clean session) and all of them when it stops."""
    b = make_node("b", servers=[1])
    prefix = _prefix(b)
    one = clients(b, "one")
    two = clients(b, "two")
    one.subscribe("fleet/+/cmd", qos=1)
    two.subscribe([("fleet/+/cmd", 1), ("fleet/#", 0), ("$share/g/fleet/+/cmd", 1)])
    one.subscribe("$share/g/fleet/+/cmd", qos=1)
    wait_announced(nats_cluster, prefix, "b", {
        "fleet/+/cmd": 1, "fleet/#": 1, "$share/g/fleet/+/cmd": 2})
    subs = [s for s in nats_cluster.subscriptions("iotbroker b") if s.startswith(f"{prefix}.")]
    assert len(subs) == 1 and re.fullmatch(rf"{prefix}\.node\.b_[0-9a-f]{{8}}", subs[0]), subs
    two.unsubscribe("fleet/#")
    wait_announced(nats_cluster, prefix, "b", {"fleet/+/cmd": 1, "$share/g/fleet/+/cmd": 2})
    two.unsubscribe(["fleet/+/cmd"])
    one.disconnect()  # a clean session: its subscriptions end with it
    wait_announced(nats_cluster, prefix, "b", {"$share/g/fleet/+/cmd": 1})
    two.unsubscribe("$share/g/fleet/+/cmd")
    wait_announced(nats_cluster, prefix, "b", {})
    two.subscribe("again/#", qos=0)
    wait_announced(nats_cluster, prefix, "b", {"again/#": 1})
    b.stop()
    wait_announced(nats_cluster, prefix, "b", {})
    assert [s for s in nats_cluster.subscriptions("iotbroker b")
            if s.startswith(f"{prefix}.")] == []


def test_a_node_without_nats_serves_its_own_clients(
    tmp_path: Path, clients: Callable[..., Paho]
) -> None:
    """NATS unreachable at start: the node says so in its log, in $SYS
    (``$SYS/broker/cluster/connected`` 0), in its metrics and on /health
    ("degraded"), and still routes between its own clients (docs/cluster.md,
    "When NATS is away")."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed when the block ends: nobody listens there
    extra = ("sys_topics:\n  enabled: true\n  interval: 0.1\n"
             "metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n")
    node = BrokerProcess(tmp_path / "lonely",
                         node_config("lonely", [f"nats://127.0.0.1:{dead}"], "lone",
                                     extra=extra),
                         name="lonely").start()
    try:
        wait_for_log(node, "unreachable")
        sub = clients(node, "sub")
        sub.subscribe([("local/#", 1), ("$SYS/broker/cluster/#", 0)])
        pub = clients(node, "pub")
        pub.publish("local/x", b"here", qos=1)
        got: dict[str, bytes] = {}
        while "local/x" not in got or "$SYS/broker/cluster/connected" not in got:
            msg = sub.receive()
            got[msg.topic] = msg.payload
        assert got["local/x"] == b"here"
        assert got["$SYS/broker/cluster/connected"] == b"0"
        port = int(re.findall(r"metrics listening on 127\.0\.0\.1:(\d+)", node.log_text())[0])
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert response.read().startswith(b"degraded")
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            assert "iotbroker_cluster_connected 0.0" in response.read().decode()
        sub.disconnect()
        pub.disconnect()
    finally:
        node.stop()


def test_a_restarted_node_keeps_the_interest_of_its_persistent_sessions(
    make_node: Node, clients: Callable[..., Paho], nats_cluster: NatsCluster
) -> None:
    """A persistent session's subscriptions come back from RocksDB with its node, and
    so does the node's announced interest (no client of b is online): a QoS 1 message
    published on another node while the subscriber is offline is queued for it and
    delivered when it reconnects (MQTT 5.0 §4.1: the session keeps its
    subscriptions)."""
    a = make_node("a", servers=[1])
    b = make_node("b", servers=[0], storage="rocksdb")
    prefix = _prefix(b)
    sub = clients(b, "keeper", clean=False, session_expiry=3600)
    sub.subscribe("p/#", qos=1)
    pub = clients(a, "pub")
    wait_until_routed(pub, sub, "p/probe")
    sub.disconnect()
    b.stop()
    wait_announced(nats_cluster, prefix, "b", {})  # a clean stop takes them back
    b.start()
    wait_for_log(b, "connected to NATS")
    wait_announced(nats_cluster, prefix, "b", {"p/#": 1})  # from RocksDB, nobody online
    # b announced p/# before the probe's filter: once a routes the probe, a knows both
    # (the bucket's watch keeps the bucket's order)
    probe = clients(b, "probe")
    probe.subscribe("probe/#", qos=1)
    wait_until_routed(pub, probe, "probe/x")
    pub.publish("p/while-offline", b"queued", qos=1)
    pub.publish("p/end", b"end", qos=1)
    back = clients(b, "keeper", clean=False, session_expiry=3600)
    got = [m for m in back.receive_until("p/end") if not m.payload.startswith(b"probe")]
    assert [(m.topic, m.payload, m.qos) for m in got] == [("p/while-offline", b"queued", 1)]


def test_mqtt_4_6_0_5_a_burst_of_mixed_qos0_messages_crosses_in_order(
        make_node: Node, clients: Callable[..., Paho]) -> None:
    """Two publishers each write a burst of QoS 0 messages at once (so a turn holds
    many, and they cross in few batches): plain ones, which travel in NAMED parts,
    interleaved with retained ones and ones with properties or an expiry, which travel
    as items (docs/cluster.md, "The batch format"). The subscriber on the other node
    gets every one, each publisher's messages on a topic in the order published
    [MQTT-4.6.0-5], each with what it carried (MQTT 5.0 §3.3.2.3; RETAIN 0 on a live
    delivery [MQTT-3.3.1-9])."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    sub = clients(b, "sub")
    sub.subscribe("burst/#", qos=0)
    wait_until_routed(clients(a, "probe"), sub, "burst/probe")
    n = 300
    sent: dict[str, list[tuple[str, bytes, str | None, bool]]] = {}
    publishers = []
    for name in ("p1", "p2"):
        raw = RawClient(a.host, a.port, version=5)
        raw.connect(name)
        publishers.append(raw)
        frames = []
        for i in range(n):
            kind = i % 10
            props = Properties5()
            if kind == 3:
                props = Properties5(content_type=f"t{i}")
            elif kind == 7:
                props = Properties5(message_expiry_interval=60)
            topic = f"burst/{i % 3}"
            payload = f"{name}:{i}".encode()
            frames.append(encode_packet(
                Publish(topic, payload, 0, kind == 5, False, None, props), 5))
            sent.setdefault(name, []).append(
                (topic, payload, props.content_type, kind == 7))
        raw.send_raw(b"".join(frames))
    got: dict[str, list[tuple[str, bytes, str | None, bool]]] = {}
    for _ in range(2 * n):
        msg = sub.receive()
        assert not msg.retain  # [MQTT-3.3.1-9]
        props = getattr(msg, "properties", None)
        content_type = getattr(props, "ContentType", None)
        expiry = getattr(props, "MessageExpiryInterval", None)
        got.setdefault(msg.payload.split(b":")[0].decode(), []).append(
            (msg.topic, msg.payload, content_type, expiry is not None and 0 < expiry <= 60))
    for raw in publishers:
        raw.close()

    def per_topic(msgs: list[tuple[str, bytes, str | None, bool]]
                  ) -> dict[str, list[tuple[str, bytes, str | None, bool]]]:
        out: dict[str, list[tuple[str, bytes, str | None, bool]]] = {}
        for m in msgs:
            out.setdefault(m[0], []).append(m)
        return out

    assert {k: per_topic(v) for k, v in got.items()} == {
        k: per_topic(v) for k, v in sent.items()}
