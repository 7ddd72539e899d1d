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
from tests.helpers.rawclient import Closed, RawClient

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
