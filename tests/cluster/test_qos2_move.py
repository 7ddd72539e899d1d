"""QoS 2 exactly once when a persistent session moves between nodes (docs/cluster.md,
"QoS 2 across a move"; issue 14).

The subscriber is a raw client that follows the spec's receiver rules for QoS 2,
MQTT 5.0 §4.3.3 method B ([MQTT-4.3.3-8] .. [MQTT-4.3.3-12]; MQTT 3.1.1
[MQTT-4.3.3-2]): on a PUBLISH it stores the packet id and delivers the message to its
application unless it holds that id already (then it only answers PUBREC); on PUBREL
it discards the id and answers PUBCOMP. The test decides exactly which stage each
message is at when the node that has the session goes away (kill -9, or a clean
move while it is alive), then the client continues on another node with the state it
keeps (its held packet ids, MQTT 5.0 §4.1): its application must have every message
exactly once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from iotbroker.codec.packets import Properties, PubComp, Publish, PubRec, PubRel
from tests.cluster.conftest import connect_retrying_busy, log_tails, wait_for_log
from tests.cluster.test_live_routing import Node
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import Closed, RawClient

TOPIC = "mv/x"


@dataclass
class MethodB:
    """A QoS 2 receiver's state, kept across its connections (MQTT 5.0 §4.1)."""

    held: set[int] = field(default_factory=set)
    delivered: list[bytes] = field(default_factory=list)
    #: payload -> packet id of its first PUBLISH
    first_pid: dict[bytes, int] = field(default_factory=dict)
    #: PUBLISHes of a payload seen before: (payload, packet id, dup)
    resent: list[tuple[bytes, int, bool]] = field(default_factory=list)
    pubrels: list[int] = field(default_factory=list)

    def on_publish(self, client: RawClient, packet: Publish, answer: bool = True) -> None:
        assert packet.qos == 2, packet
        pid = packet.packet_id or 0
        if packet.payload in self.first_pid:
            self.resent.append((packet.payload, pid, packet.dup))
        else:
            self.first_pid[packet.payload] = pid
        if pid not in self.held:  # [MQTT-4.3.3-10]: a held id is not delivered again
            self.held.add(pid)
            self.delivered.append(packet.payload)
        if answer:
            client.send(PubRec(pid))

    def on_pubrel(self, client: RawClient, packet: PubRel, answer: bool = True) -> None:
        self.pubrels.append(packet.packet_id)
        self.held.discard(packet.packet_id)  # [MQTT-4.3.3-11], -12: PUBCOMP, id discarded
        if answer:
            client.send(PubComp(packet.packet_id))

    def drain(self, client: RawClient, quiet: float = 1.5, timeout: float = 20.0) -> None:
        """Everything the broker sends until ``quiet`` seconds without a packet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                packet = client.recv(timeout=quiet)
            except (TimeoutError, Closed, OSError):
                return
            if isinstance(packet, Publish):
                self.on_publish(client, packet)
            elif isinstance(packet, PubRel):
                self.on_pubrel(client, packet)
        raise AssertionError("the broker kept sending")


def _ready(*nodes: BrokerProcess) -> None:
    for node in nodes:
        wait_for_log(node, "session records bucket", timeout=30)


def _connect(node: BrokerProcess, client_id: str, clean_start: bool) -> tuple[RawClient, bool]:
    client = RawClient(node.host, node.port, version=5, timeout=20)
    connack = client.connect(client_id, clean_start=clean_start, properties=Properties(
        session_expiry_interval=3600, receive_maximum=100))
    assert connack.reason_code == 0, connack
    return client, connack.session_present


def _wait_routed(pub: RawClient, sub: RawClient, within: float = 20.0) -> None:
    """QoS 0 probes from ``pub`` on mv/probe until one reaches ``sub`` (the
    subscriber's node has announced its interest to the publisher's node: a fixed
    sleep is too short on a loaded machine), then the probes still on their way."""
    deadline = time.monotonic() + within
    while True:
        assert time.monotonic() < deadline, f"no probe reached the subscriber in {within}s"
        pub.publish("mv/probe", b"probe")
        try:
            packet = sub.recv(timeout=0.2)
        except TimeoutError:
            continue
        assert isinstance(packet, Publish) and packet.payload == b"probe", packet
        break
    pub.publish("mv/probe", b"probe-end")
    while True:
        packet = sub.recv(timeout=15)
        assert isinstance(packet, Publish) and packet.qos == 0, packet
        if packet.payload == b"probe-end":
            return


def _publish(pub: RawClient, payloads: list[bytes]) -> None:
    for payload in payloads:
        ack = pub.publish(TOPIC, payload, qos=2)  # PUBCOMP: the broker owns it
        assert isinstance(ack, PubComp) and ack.reason_code < 0x80, ack


def _stage(pub: RawClient, sub: RawClient, rx: MethodB, *nodes: BrokerProcess
           ) -> list[bytes]:
    """:func:`_stage_packets`; a packet that does not come fails with the nodes' logs
    (a CI failure shows what the nodes did)."""
    try:
        return _stage_packets(pub, sub, rx)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{log_tails(*nodes)}") from exc


def _stage_packets(pub: RawClient, sub: RawClient, rx: MethodB) -> list[bytes]:
    """12 QoS 2 messages published and PUBCOMP'd; the subscriber leaves them at four
    stages, 3 each: completed (PUBCOMP sent); PUBREL received, id discarded, no
    PUBCOMP sent; PUBREC sent, PUBREL not read; PUBLISH received (delivered, id held),
    no PUBREC sent. Returns the payloads."""
    sent = [f"m{i:02d}".encode() for i in range(12)]
    _publish(pub, sent)
    publishes: list[Publish] = []
    while len(publishes) < 12:
        packet = sub.recv(timeout=15)
        assert isinstance(packet, Publish), packet
        publishes.append(packet)
    assert [p.payload for p in publishes] == sent
    for i, packet in enumerate(publishes):
        rx.on_publish(sub, packet, answer=i < 9)
    pubrels: dict[int, PubRel] = {}
    pid_of = {p.payload: p.packet_id for p in publishes}
    wanted = {pid_of[sent[i]] for i in range(9)}
    while not wanted <= set(pubrels):  # held until the release is durable
        packet = sub.recv(timeout=15)
        assert isinstance(packet, PubRel), packet
        pubrels[packet.packet_id] = packet
    for i in range(6):  # 0-2 completed; 3-5 released, PUBCOMP not sent
        rx.on_pubrel(sub, pubrels[pid_of[sent[i]] or 0], answer=i < 3)
    # 6-8: PUBREL arrived but is not read (the client still holds the ids); 9-11: no
    # PUBREC. The packet ids of these are derived (0x8000-0xFFFF): the same on any node.
    assert all((p.packet_id or 0) >= 0x8000 for p in publishes), pid_of
    time.sleep(0.3)  # the PUBCOMPs reach the node
    return sent


def _check(rx: MethodB, expected: list[bytes]) -> None:
    assert rx.delivered == expected, rx.delivered  # each once, in order
    for payload, pid, dup in rx.resent:  # same packet id, DUP=1 [MQTT-4.4.0-1]
        assert pid == rx.first_pid[payload] and dup, (payload, pid, dup)
    assert not [r for r in rx.resent if r[0] in expected[:6]], rx.resent  # never again


@pytest.mark.parametrize("publisher", ["remote", "local"])
def test_mqtt_4_3_3_10_qos2_exactly_once_after_kill_9_of_the_sessions_node(
        make_node: Node, publisher: str) -> None:
    """kill -9 of the node that has a QoS 2 subscriber's session with messages at
    every stage of the QoS 2 flow (published on another node, or on the killed node
    itself); the client reconnects to another node: its application gets every
    message exactly once — released ones get PUBREL only, unreleased ones come again
    with the same packet id and DUP=1, so a held id is not delivered twice
    [MQTT-4.3.3-10] — and the messages published after the kill once."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    c = make_node("c", servers=[2])
    _ready(a, b, c)
    rx = MethodB()
    sub, _ = _connect(a, "sub", clean_start=True)
    sub.subscribe("mv/#", qos=2)
    pub, _ = _connect(c if publisher == "remote" else a, "pub", clean_start=True)
    _wait_routed(pub, sub)  # a's interest is announced
    sent = _stage(pub, sub, rx, a, b, c)
    a.kill()
    sub.close()
    pub.close()
    pub, _ = _connect(c, "pub2", clean_start=True)
    later = [b"n00", b"n01", b"n02"]
    _publish(pub, later)

    back, present = connect_retrying_busy(b, "sub", False, a, c, receive_maximum=100)
    assert present, log_tails(a, b, c)
    rx.drain(back)
    _check(rx, sent + later)
    assert not rx.held, rx.held
    back.close()
    pub.close()


def test_mqtt_4_3_3_10_qos2_exactly_once_across_a_clean_move(make_node: Node) -> None:
    """The same stages, and the client connects to another node while its node is
    alive: the old node closes its connection (0x8E) and hands the session over with
    its QoS 2 state; the application gets every message exactly once
    [MQTT-4.3.3-10]."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    _ready(a, b)
    rx = MethodB()
    sub, _ = _connect(a, "sub", clean_start=True)
    sub.subscribe("mv/#", qos=2)
    pub, _ = _connect(b, "pub", clean_start=True)
    _wait_routed(pub, sub)
    sent = _stage(pub, sub, rx, a, b)

    back, present = _connect(b, "sub", clean_start=False)
    assert present, log_tails(a, b)
    sub.close()
    later = [b"n00", b"n01"]
    _publish(pub, later)
    rx.drain(back)
    _check(rx, sent + later)
    assert not rx.held, rx.held
    back.close()
    pub.close()


def test_mqtt_4_3_3_10_qos2_exactly_once_after_kill_9_and_restart_on_rocksdb(
        make_node: Node) -> None:
    """The same four stages; the node is killed with -9 and restarted on its RocksDB,
    and the client reconnects to it: the session's in-flight QoS 2 messages come back
    from the store with their derived packet ids (the stream key is stored with them),
    and the application gets every message exactly once [MQTT-4.3.3-10]."""
    a = make_node("a", servers=[0], storage="rocksdb")
    c = make_node("c", servers=[2])
    _ready(a, c)
    rx = MethodB()
    sub, _ = _connect(a, "sub", clean_start=True)
    sub.subscribe("mv/#", qos=2)
    pub, _ = _connect(c, "pub", clean_start=True)
    _wait_routed(pub, sub)
    sent = _stage(pub, sub, rx, a, c)
    a.kill()
    sub.close()
    later = [b"n00", b"n01"]
    _publish(pub, later)
    a.start()
    _ready(a)
    back, present = _connect(a, "sub", clean_start=False)
    assert present
    rx.drain(back)
    _check(rx, sent + later)
    assert not rx.held, rx.held
    back.close()
    pub.close()


def test_mqtt_4_3_3_10_a_publishers_held_qos2_ids_move_with_a_clean_move(
        make_node: Node) -> None:
    """Publisher side: a QoS 2 PUBLISH accepted on node a (PUBREC sent: the id is held
    there); the publisher moves to node b while a is alive and, having lost that PUBREC
    with its connection, sends the PUBLISH again with DUP=1 [MQTT-4.4.0-1]: b holds
    the id (handed over), answers PUBREC and does not route the message again
    [MQTT-4.3.3-10]; the PUBREL gets PUBCOMP 0x00, not 0x92 Packet Identifier not
    found [MQTT-4.3.3-11]; the subscriber gets the message once."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    _ready(a, b)
    rx = MethodB()
    sub, _ = _connect(b, "sub", clean_start=True)
    sub.subscribe("mv/#", qos=2)
    time.sleep(0.3)
    pub, _ = _connect(a, "mover", clean_start=True)
    pub.send(Publish(TOPIC, b"once", 2, False, False, 7))
    assert pub.expect(PubRec, timeout=15).packet_id == 7  # in the stream, id held on a

    back, present = _connect(b, "mover", clean_start=False)
    assert present
    pub.close()
    back.send(Publish(TOPIC, b"once", 2, False, True, 7))
    rec = back.expect(PubRec, timeout=15)
    assert (rec.packet_id, rec.reason_code) == (7, 0)
    back.send(PubRel(7))
    comp = back.expect(PubComp, timeout=15)
    assert (comp.packet_id, comp.reason_code) == (7, 0)
    rx.drain(sub)
    assert rx.delivered == [b"once"]
    sub.close()
    back.close()
