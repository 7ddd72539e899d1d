"""QoS 1/2 through the replicated stream (docs/cluster.md, "QoS 1/2 messages"): the
PUBACK / PUBREC to the publisher leaves only once the stream has the message, so an
acknowledged message survives kill -9 of the node that accepted it — MQTT 5.0 §4.3.2
(the receiver takes ownership of a QoS 1 message when it sends PUBACK), §4.3.3 /
[MQTT-4.3.3-2] (QoS 2: exactly once), [MQTT-4.6.0-5] (ordered per topic)."""

from __future__ import annotations

import time

from iotbroker.codec.packets import Properties, PubAck, PubComp, Publish, PubRec, PubRel
from tests.cluster.conftest import wait_for_log
from tests.cluster.test_live_routing import Node
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient

PERSISTENT = Properties(session_expiry_interval=3600)


def _joined(*nodes: BrokerProcess) -> None:
    for node in nodes:
        wait_for_log(node, "QoS 1/2 stream", timeout=20)


def _receive_all(client: RawClient, count: int, timeout: float = 15.0) -> list[Publish]:
    """``count`` PUBLISHes, each acknowledged (QoS 2: PUBREC, then PUBCOMP for each
    PUBREL, the broker may interleave them), then 0.3 s without another PUBLISH: no
    duplicate after them [MQTT-4.3.3-2]."""
    got: list[Publish] = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    while True:
        now = time.monotonic()
        if len(got) >= count:
            quiet_until = quiet_until or now + 0.3
            if now >= quiet_until:
                return got
            wait = quiet_until - now
        else:
            assert now < deadline, f"{len(got)} of {count} arrived"
            wait = deadline - now
        try:
            packet = client.recv(timeout=wait)
        except (TimeoutError, OSError):
            if len(got) >= count:
                return got
            raise
        if isinstance(packet, Publish):
            assert len(got) < count, f"one more than expected: {packet}"
            got.append(packet)
            if packet.qos == 1:
                client.send(PubAck(packet.packet_id or 0))
            elif packet.qos == 2:
                client.send(PubRec(packet.packet_id or 0))
        elif isinstance(packet, PubRel):
            client.send(PubComp(packet.packet_id))
        else:
            raise AssertionError(f"unexpected {packet}")


def test_acked_qos1_and_qos2_survive_kill_9_of_the_accepting_node(make_node: Node) -> None:
    """kill -9 of the node that accepted the messages, right after their last
    PUBACK / PUBREC: every acknowledged message still reaches the persistent
    subscriber online on another node and the one offline on a third (when it
    resumes its session there), QoS 2 exactly once, each topic in order."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    c = make_node("c", servers=[2])
    _joined(a, b, c)
    online = RawClient(b.host, b.port, version=5)
    online.connect("sub-b", clean_start=False, properties=PERSISTENT)
    online.subscribe("js/#", qos=2)
    offline = RawClient(c.host, c.port, version=5)
    offline.connect("sub-c", clean_start=False, properties=PERSISTENT)
    offline.subscribe("js/#", qos=2)
    offline.disconnect()
    offline.close()

    pub = RawClient(a.host, a.port, version=5)
    pub.connect("pub")
    count = 40
    for i in range(count):  # pipelined: 40 QoS 1 then 40 QoS 2, one connection
        pub.send(Publish("js/q1", f"one-{i}".encode(), 1, False, False, i + 1, Properties()))
    for i in range(count):
        pub.send(Publish("js/q2", f"two-{i}".encode(), 2, False, False, count + i + 1,
                         Properties()))
    acked = set()
    while len(acked) < 2 * count:
        ack = pub.recv(timeout=10)
        assert isinstance(ack, PubAck | PubRec), ack
        assert ack.reason_code < 0x80, ack
        acked.add(ack.packet_id)
    a.kill()  # at once: nothing of a's survives but what the stream acknowledged
    pub.close()

    got = _receive_all(online, 2 * count)
    q1 = [m.payload for m in got if m.topic == "js/q1"]
    q2 = [m.payload for m in got if m.topic == "js/q2"]
    assert q1 == [f"one-{i}".encode() for i in range(count)]
    assert q2 == [f"two-{i}".encode() for i in range(count)]

    back = RawClient(c.host, c.port, version=5)
    connack = back.connect("sub-c", clean_start=False, properties=PERSISTENT)
    assert connack.session_present
    got = _receive_all(back, 2 * count)
    assert [m.payload for m in got if m.topic == "js/q1"] == q1
    assert [m.payload for m in got if m.topic == "js/q2"] == q2
    back.close()
    online.close()


def test_qos2_handshake_completes_across_nodes(make_node: Node) -> None:
    """QoS 2 from a publisher on one node to a subscriber on another: PUBREC after the
    stream's ack, PUBREL/PUBCOMP as usual, one delivery [MQTT-4.3.3-2]; a 3.1.1
    publisher's PUBACK carries no reason code (held the same way)."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    _joined(a, b)
    sub = RawClient(b.host, b.port, version=5)
    sub.connect("sub")
    sub.subscribe("x/#", qos=2)
    pub = RawClient(a.host, a.port, version=5)
    pub.connect("pub5")
    assert isinstance(pub.publish("x/2", b"exactly-once", qos=2), PubComp)
    old = RawClient(a.host, a.port, version=4)
    old.connect("pub4")
    assert isinstance(old.publish("x/1", b"v311", qos=1), PubAck)
    got = _receive_all(sub, 2)
    assert sorted((m.topic, m.payload) for m in got) == [
        ("x/1", b"v311"), ("x/2", b"exactly-once")]
    for client in (sub, pub, old):
        client.close()

