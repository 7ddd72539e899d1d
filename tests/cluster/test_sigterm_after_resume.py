"""SIGTERM of a node while its session records are being written (docs/cluster.md,
"Sessions move", item 23; issue 14, i14-faults): the stop's final write of each record
waits for the record writer's write of it still in flight, so it carries the latest
state, and the next node delivers nothing the client acknowledged again
[MQTT-4.3.2-1] (a PUBACKed QoS 1 message is done; at-least-once allows a repeat only
of an unacknowledged one).

Before the fix the stop's ``flush`` and the writer's in-flight write of the same record
raced on the record's compare-and-set ("nats: wrong last sequence"): the node took the
record for "owned elsewhere now" and dropped its copy, and the record kept the earlier
write — an older position, from which the next node may repeat QoS 1 messages. Seen
once (NOTES-i14-window.md) after a resume on a node whose nats-server had just
restarted; reproduced here by many records written at once while the QoS stream moves
(the stop then rewrites every record whose position is behind it)."""

from __future__ import annotations

import signal
import threading
import time

from iotbroker.codec.packets import PubAck, Publish
from tests.cluster.test_live_routing import Node
from tests.cluster.test_sessions import _connect, _publish_acked, _ready, _wait_record
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster

CLIENTS = 60


def test_mqtt_4_3_2_1_sigterm_while_records_are_written_keeps_what_was_acknowledged(
        make_node: Node, nats_cluster: NatsCluster) -> None:
    """CLIENTS persistent sessions on node b, each with a QoS 1 message it PUBACKed;
    their connections all end, and b gets SIGTERM at once (its record writer is then
    writing their records while the stop writes them too); on node a each resumes
    (Session Present 1) and gets none of the acknowledged messages again."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    _ready(a, b)
    pub, _ = _connect(a, "wave-pub", clean_start=True, expiry=0)
    clients = []
    for n in range(CLIENTS):
        client, _ = _connect(b, f"wave-{n}", clean_start=True)
        client.subscribe(f"wave/{n}", qos=1)
        clients.append(client)
    _wait_record(nats_cluster, b, f"wave-{CLIENTS - 1}")
    time.sleep(0.5)  # a's route to b's interest
    for n in range(CLIENTS):
        _publish_acked(pub, f"wave/{n}", [f"w-{n}".encode()], qos=1)
    for n, client in enumerate(clients):
        packet = client.recv(timeout=10)
        assert isinstance(packet, Publish) and packet.payload == f"w-{n}".encode(), packet
        client.send(PubAck(packet.packet_id or 0))
    time.sleep(0.2)  # the PUBACKs are read
    # The QoS stream moves meanwhile (another persistent session's messages): the
    # stop then rewrites every record whose position is behind it.
    other, _ = _connect(a, "wave-other", clean_start=True)
    other.subscribe("bg/#", qos=1)
    other.disconnect()
    other.close()
    stop = threading.Event()
    bg = threading.Thread(target=_publish_until, args=(a, stop), daemon=True)
    bg.start()
    time.sleep(0.3)
    for client in clients:
        client.close()
    assert b.proc is not None
    b.proc.send_signal(signal.SIGTERM)
    b.stop()
    stop.set()
    bg.join(10)
    log_b = b.log_text()
    repeats = []
    for n in range(CLIENTS):
        back, present = _connect(a, f"wave-{n}")
        assert present, a.log_text()
        try:
            again = back.recv(timeout=0.2)
        except (TimeoutError, OSError):
            again = None
        if again is not None:
            repeats.append(n)
        back.close()
    pub.close()
    clashes = log_b.count("wrong last sequence")
    assert not repeats and not clashes, (repeats, clashes)


def _publish_until(node: BrokerProcess, stop: threading.Event, limit: int = 3000) -> None:
    """QoS 1 messages to ``bg/x`` on ``node`` until ``stop`` (at most ``limit``)."""
    pub, _ = _connect(node, "bg-pub", clean_start=True, expiry=0)
    try:
        for i in range(limit):
            if stop.is_set():
                break
            pub.publish("bg/x", f"bg-{i}".encode(), qos=1)
    finally:
        pub.close()
