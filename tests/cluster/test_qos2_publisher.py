"""QoS 2 exactly once on the publisher's side across kill -9 of the node it is
connected to, and the PUBCOMP window of derived packet ids (docs/cluster.md, "QoS 2
across a move"; issue 14).

MQTT 5.0 §4.3.3 (3.1.1 §4.3.3): the receiver of a QoS 2 PUBLISH keeps its packet id
until the PUBREL and does not deliver a PUBLISH with that id onward again meanwhile
[MQTT-4.3.3-10] (3.1.1 [MQTT-4.3.3-2]); after a reconnect the sender re-sends every
PUBLISH it has no PUBREC for with its packet id and DUP=1, and PUBREL for the others
[MQTT-4.4.0-1]. A persistent session may reconnect to any node: the node it reaches
must know the ids the dead node held.
"""

from __future__ import annotations

import time

from iotbroker.codec.packets import Properties, PubComp, Publish, PubRec, PubRel
from tests.cluster.test_live_routing import Node
from tests.cluster.test_qos2_move import MethodB, _connect, _ready
from tests.helpers.rawclient import RawClient

TOPIC = "px/t"


def _complete(pub: RawClient, pid: int, payload: bytes) -> None:
    """PUBLISH → PUBREC → PUBREL → PUBCOMP with packet id ``pid``."""
    pub.send(Publish(TOPIC, payload, 2, False, False, pid))
    rec = pub.expect(PubRec, timeout=15)
    assert (rec.packet_id, rec.reason_code) == (pid, 0), rec
    pub.send(PubRel(pid))
    comp = pub.expect(PubComp, timeout=15)
    assert (comp.packet_id, comp.reason_code) == (pid, 0), comp


def test_mqtt_4_3_3_10_a_qos2_publish_resent_after_kill_9_of_its_node_is_not_routed_again(
        make_node: Node) -> None:
    """Publisher on node a (persistent session), subscribers on b and c. Packet id 7 is
    used once to completion, then again for a second message whose PUBREC the client
    loses (it reads it but acts as if the connection had died first); id 8's PUBREC
    arrives, its PUBREL is not sent yet. a is killed with -9; the publisher resumes its
    session on b and, as the spec's sender does [MQTT-4.4.0-1], re-sends the PUBLISH of
    id 7 with DUP=1 and sends PUBREL for 8. b knows both ids from the session's record:
    the PUBLISH gets PUBREC and is not routed again [MQTT-4.3.3-10]; both PUBRELs get
    PUBCOMP 0x00 [MQTT-4.3.3-11] (the id was held: not 0x92). Each subscriber gets
    each message exactly once. (On main: the re-sent PUBLISH was routed as new —
    delivered twice — and PUBREL 8 got 0x92.)"""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    c = make_node("c", servers=[2])
    _ready(a, b, c)
    rxb, rxc = MethodB(), MethodB()
    subb, _ = _connect(b, "subb", clean_start=True)
    subb.subscribe("px/#", qos=2)
    subc, _ = _connect(c, "subc", clean_start=True)
    subc.subscribe("px/#", qos=2)
    time.sleep(0.3)  # the interest is announced
    pub, _ = _connect(a, "pubx", clean_start=True)
    _complete(pub, 7, b"p1")
    pub.send(Publish(TOPIC, b"p2", 2, False, False, 7))  # the id used again
    assert pub.expect(PubRec, timeout=15).packet_id == 7  # ... and this PUBREC "lost"
    pub.send(Publish(TOPIC, b"p3", 2, False, False, 8))
    assert pub.expect(PubRec, timeout=15).packet_id == 8  # PUBREL not sent yet
    a.kill()
    pub.close()

    back, present = _connect(b, "pubx", clean_start=False)
    assert present
    back.send(Publish(TOPIC, b"p2", 2, False, True, 7))  # DUP=1, same id
    rec = back.expect(PubRec, timeout=15)
    assert (rec.packet_id, rec.reason_code) == (7, 0), rec
    back.send(PubRel(7))
    comp = back.expect(PubComp, timeout=15)
    assert (comp.packet_id, comp.reason_code) == (7, 0), comp
    back.send(PubRel(8))
    comp8 = back.expect(PubComp, timeout=15)
    _complete(back, 7, b"p4")  # a new message on the released id is new
    rxb.drain(subb)
    rxc.drain(subc)
    expected = [b"p1", b"p2", b"p3", b"p4"]
    assert (rxb.delivered, rxc.delivered) == (expected, expected)
    assert (comp8.packet_id, comp8.reason_code) == (8, 0), comp8
    for client in (back, subb, subc):
        client.close()


def _publish_many(pub: RawClient, topic: str, payloads: list[bytes]) -> None:
    """QoS 2, pipelined: every PUBLISH (packet ids 1..n), then the PUBRELs."""
    pids = list(range(1, len(payloads) + 1))
    for pid, payload in zip(pids, payloads, strict=True):
        pub.send(Publish(topic, payload, 2, False, False, pid))
    completed = 0
    while completed < len(pids):
        packet = pub.recv(timeout=30)
        if isinstance(packet, PubRec):
            assert packet.reason_code == 0, packet
            pub.send(PubRel(packet.packet_id))
        else:
            assert isinstance(packet, PubComp) and packet.reason_code == 0, packet
            completed += 1


def test_mqtt_4_3_3_12_a_derived_id_is_used_again_only_once_its_completion_is_recorded(
        make_node: Node) -> None:
    """Forces two QoS 2 messages onto the same derived packet id (1 in 32,768 per
    pair: 1,000 messages in flight at once make it certain) and kills the node right
    after the second one's PUBLISH. The subscriber (method B, window 2,000) answers
    PUBREC to each PUBLISH and holds its PUBCOMPs: the session's queue stops at the
    first message whose derived id is in flight. Then it sends all the PUBCOMPs; the
    next PUBLISH is that message on the id of an earlier one, which the client holds
    (delivered, no PUBREC) when node a dies. On node b the application must get every
    message exactly once: b must not send the earlier message's PUBREL on that id —
    which would release the client's id of the later one [MQTT-4.3.3-12] and make its
    re-send a new message — so the earlier one's completion must be in the session's
    record before the id is used again (on main it was written lazily: the later
    message was delivered twice)."""
    n = 1000
    a = make_node("a", servers=[0], extra="mqtt:\n  max_inflight: 2000\n")
    b = make_node("b", servers=[1])
    c = make_node("c", servers=[2])
    _ready(a, b, c)
    props = Properties(session_expiry_interval=3600, receive_maximum=2000)
    sub = RawClient(a.host, a.port, version=5, timeout=20)
    assert sub.connect("sub", clean_start=True, properties=props).reason_code == 0
    sub.subscribe("px/#", qos=2)
    time.sleep(0.3)  # the interest is announced
    pub, _ = _connect(c, "pub", clean_start=True)
    payloads = [f"m{i:04d}".encode() for i in range(n)]
    _publish_many(pub, TOPIC, payloads)

    rx = MethodB()
    comps: list[int] = []
    used: set[int] = set()
    while True:  # until the queue stops behind a taken id
        try:
            packet = sub.recv(timeout=2.0)
        except TimeoutError:
            break
        if isinstance(packet, Publish):
            used.add(packet.packet_id or 0)
            rx.on_publish(sub, packet)
        elif isinstance(packet, PubRel):
            rx.on_pubrel(sub, packet, answer=False)
            comps.append(packet.packet_id)
    assert 0 < len(rx.delivered) < n, len(rx.delivered)
    assert len(comps) == len(rx.delivered)
    for pid in comps:
        sub.send(PubComp(pid))
    packet = sub.recv(timeout=15)
    assert isinstance(packet, Publish), packet
    assert packet.payload == payloads[len(rx.delivered)]
    assert packet.packet_id in used  # the derived id of an earlier message
    rx.on_publish(sub, packet, answer=False)  # delivered, id held, no PUBREC
    a.kill()
    sub.close()

    back = RawClient(b.host, b.port, version=5, timeout=20)
    connack = back.connect("sub", clean_start=False, properties=props)
    assert connack.reason_code == 0 and connack.session_present
    rx.drain(back, timeout=60)
    assert rx.delivered == payloads, [p for p in rx.delivered if rx.delivered.count(p) > 1]
    assert not rx.held, rx.held
    back.close()
    pub.close()
