"""QoS 2 exactly once for a publisher's PUBLISH re-sent on another node later than the
QoS stream's duplicate window (docs/cluster.md, "QoS 2 across a move", the second
mark; issue 14).

MQTT 5.0 §4.3.3 (3.1.1 §4.3.3): the receiver of a QoS 2 PUBLISH keeps its packet id
until the PUBREL and does not deliver a PUBLISH with that id onward again meanwhile
[MQTT-4.3.3-10] (3.1.1 [MQTT-4.3.3-2]), however late the sender re-sends it after a
reconnect [MQTT-4.4.0-1]. The stream drops a write again under the same id only
within ``cluster.qos_stream.duplicate_window``; the session's record must say the
stream has the message, so the node the session moves to writes nothing.
"""

from __future__ import annotations

import asyncio
import re
import time

import nats

from iotbroker.codec.packets import PubComp, Publish, PubRec, PubRel
from tests.cluster.conftest import log_tails
from tests.cluster.test_live_routing import Node
from tests.cluster.test_qos2_move import MethodB, _connect, _ready
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.rawclient import RawClient

TOPIC = "mv/mark"
#: The stream's duplicate window in this test (the default is 2 min). nats-server
#: forgets a write id between one and two windows after the write.
WINDOW = 1.0


async def _last_seq(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.last_seq)
    finally:
        await nc.close()


def _wait_routed(pub: RawClient, *subs: RawClient, within: float = 20.0) -> None:
    """QoS 0 probes from ``pub`` until each of ``subs`` got one (its node's interest
    reached the publisher's node), then the probes still on their way."""
    deadline = time.monotonic() + within
    waiting = list(subs)
    while waiting:
        assert time.monotonic() < deadline, f"no probe reached a subscriber in {within}s"
        pub.publish("mv/probe", b"probe")
        for sub in list(waiting):
            try:
                packet = sub.recv(timeout=0.2)
            except TimeoutError:
                continue
            assert isinstance(packet, Publish) and packet.qos == 0, packet
            waiting.remove(sub)
    pub.publish("mv/probe", b"probe-end")
    for sub in subs:
        while True:
            packet = sub.recv(timeout=15)
            assert isinstance(packet, Publish) and packet.qos == 0, packet
            if packet.payload == b"probe-end":
                break


def _stream_of(node: BrokerProcess) -> str:
    prefix = re.search(r"subject_prefix: (\S+)", node.config_path.read_text())
    assert prefix is not None
    return f"{prefix[1]}_qos"


def test_mqtt_4_3_3_10_a_qos2_publish_resent_after_the_duplicate_window_is_not_routed_again(
        make_node: Node, nats_cluster: NatsCluster) -> None:
    """A persistent publisher on node a sends QoS 2 id 7 and loses its PUBREC; a is
    killed with -9. Node c (a persistent subscriber's node) restarts meanwhile, so it
    no longer remembers which messages it routed (as any node that did not route the
    first write). Longer than the stream's duplicate window later the publisher
    resumes on b and re-sends the PUBLISH with DUP=1 [MQTT-4.4.0-1]: b answers PUBREC
    and writes nothing to the stream — the session's record says the stream has it —
    and no subscriber (on b, and on c) gets it again [MQTT-4.3.3-10]; PUBREL gets
    PUBCOMP 0x00 [MQTT-4.3.3-11]. (On main the re-send was stored by the stream again
    and c delivered it twice.)"""
    extra = f"  qos_stream: {{duplicate_window: {WINDOW:g}s}}\n"
    a = make_node("a", servers=[0], extra=extra)
    b = make_node("b", servers=[1], extra=extra)
    c = make_node("c", servers=[2], extra=extra, storage="rocksdb")
    _ready(a, b, c)
    rxb, rxc = MethodB(), MethodB()
    subb, _ = _connect(b, "subb", clean_start=True)
    subb.subscribe("mv/#", qos=2)
    subc, _ = _connect(c, "subc", clean_start=True)
    subc.subscribe("mv/#", qos=2)
    pub, _ = _connect(a, "pubm", clean_start=True)
    _wait_routed(pub, subb, subc)

    pub.send(Publish(TOPIC, b"once", 2, False, False, 7))
    assert pub.expect(PubRec, timeout=15).packet_id == 7  # ... and this PUBREC "lost"
    written = time.monotonic()
    a.kill()
    pub.close()
    rxb.drain(subb)
    rxc.drain(subc)
    assert (rxb.delivered, rxc.delivered) == ([b"once"], [b"once"])
    subc.close()
    c.restart()  # its memory of routed writes goes (its store and consumer stay)
    _ready(c)
    subc, present = _connect(c, "subc", clean_start=False)
    assert present
    url = nats_cluster.urls[1]
    stream = _stream_of(b)
    before = asyncio.run(_last_seq(url, stream))
    time.sleep(max(0.0, written + 3 * WINDOW + 0.5 - time.monotonic()))

    back, present = _connect(b, "pubm", clean_start=False)
    assert present
    back.send(Publish(TOPIC, b"once", 2, False, True, 7))  # DUP=1, same id
    rec = back.expect(PubRec, timeout=15)
    assert (rec.packet_id, rec.reason_code) == (7, 0), rec
    back.send(PubRel(7))
    comp = back.expect(PubComp, timeout=15)
    assert (comp.packet_id, comp.reason_code) == (7, 0), comp
    after = asyncio.run(_last_seq(url, stream))
    rxb.drain(subb)
    rxc.drain(subc)
    assert (rxb.delivered, rxc.delivered) == ([b"once"], [b"once"]), log_tails(b, c)
    assert after == before, f"the re-send was written to the stream: {before} -> {after}"
    for client in (back, subb, subc):
        client.close()
