"""The MQTT-SN gateway behind the cluster's connect gate (issue 14; docs/cluster.md,
"Session ownership", "Sessions move"; docs/mqtt-sn.md, "In a cluster").

Two real nodes (subprocesses) on a real 3-server NATS cluster, each with a TCP and an
``mqtt-sn`` (UDP) listener; MQTT-SN clients are our own UDP client
(tests/mqttsn/snclient.py), MQTT clients raw sockets. An MQTT-SN client id is one
client id of the cluster like an MQTT one: exactly one live connection per id
[MQTT-3.1.4-2] (the other told: MQTT 5.0 DISCONNECT 0x8E [MQTT-3.1.4-3], MQTT-SN
DISCONNECT, MQTT-SN 1.2 §6.12), and a persistent session (CleanSession 0, §6.3) is
resumed on the other node [MQTT-3.1.2-5] whichever kind of client connects there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from iotbroker.codec.enums import ReasonCode
from iotbroker.codec.packets import ConnAck, Disconnect, PingReq, PingResp, Properties
from iotbroker.mqttsn import codec as c
from tests.cluster.conftest import wait_for_log
from tests.cluster.test_ownership import _wait_claimed
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.rawclient import Closed, RawClient
from tests.mqttsn.snclient import SnTestClient

LISTENERS = (
    "listeners:\n"
    "  - {name: default, type: tcp, host: 127.0.0.1, port: 0}\n"
    "  - {name: sn, type: mqtt-sn, host: 127.0.0.1, port: 0}\n"
)
SN = "mqttsn:\n  advertise_interval: 0\n"

Node = Callable[[str, int], BrokerProcess]


@pytest.fixture
def sn_node(make_node: Callable[..., BrokerProcess]) -> Node:
    """A cluster node with a TCP and an MQTT-SN listener, on nats-server ``server``
    (conftest's ``make_node``, which waits for the UDP listener too)."""

    def factory(name: str, server: int) -> BrokerProcess:
        return make_node(name, servers=[server], extra=SN, listeners=LISTENERS,
                         wait_for=("(udp, listener 'sn')",))  # start() may return before it

    return factory


@pytest.fixture
def sn_clients() -> Iterator[Callable[[BrokerProcess], SnTestClient]]:
    made: list[SnTestClient] = []

    def factory(node: BrokerProcess) -> SnTestClient:
        client = SnTestClient("127.0.0.1", node.ports["sn"], timeout=5.0)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


def _ready(*nodes: BrokerProcess) -> None:
    """Every bucket open on every node: until its session records bucket is open a
    node does not look for a session elsewhere (it serves its own, as without NATS)."""
    for node in nodes:
        wait_for_log(node, "retained messages from bucket", timeout=20)
        wait_for_log(node, "session bucket", timeout=20)
        wait_for_log(node, "session records bucket", timeout=30)


def _mqtt(node: BrokerProcess) -> RawClient:
    return RawClient(node.host, node.ports["default"], version=5, timeout=10.0)


def _sn_told_to_go(sn: SnTestClient, timeout: float) -> bool:
    """True when the gateway sent DISCONNECT within ``timeout`` (MQTT-SN §6.12: the
    gateway ended the client; here, taken over)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = sn.recv(left)
        except TimeoutError:
            return False
        if isinstance(msg, c.Disconnect):
            return True
    return False


def _sn_alive(sn: SnTestClient) -> bool:
    """PINGREQ answered with PINGRESP (§6.11); a client the gateway no longer knows is
    answered DISCONNECT ("connect again")."""
    sn.send(c.PingReq())
    while True:
        msg = sn.recv(5.0)
        if isinstance(msg, c.PingResp):
            return True
        if isinstance(msg, c.Disconnect):
            return False


def _mqtt_alive(client: RawClient, got: list[object] | None = None) -> bool:
    """PINGREQ answered (what came before it is put in ``got``); False once closed."""
    try:
        client.send(PingReq())
        while True:
            packet = client.recv(5.0)
            if isinstance(packet, PingResp):
                return True
            if got is not None:
                got.append(packet)
    except (Closed, OSError):
        return False


def _sn_receive(sn: SnTestClient, timeout: float = 10.0) -> c.Publish:
    """The next PUBLISH, answering the gateway's REGISTER of its topic first (§6.10:
    topic ids are per connection; a resumed session's topics are registered again)
    and acknowledging QoS 1."""
    deadline = time.monotonic() + timeout
    while True:
        msg = sn.recv(max(0.01, deadline - time.monotonic()))
        if isinstance(msg, c.Register):
            sn.send(c.RegAck(msg.topic_id, msg.msg_id, c.ReturnCode.ACCEPTED))
            continue
        assert isinstance(msg, c.Publish), msg
        if msg.qos == 1:
            sn.send(c.PubAck(msg.topic_id, msg.msg_id, c.ReturnCode.ACCEPTED))
        return msg


def _sn_expect(sn: SnTestClient, want: bytes, seen: list[bytes]) -> None:
    """The next new message is ``want``. QoS 1 is at least once across a move
    (docs/cluster.md, "Not yet": acknowledged messages after the session's stream
    position may come again): repeats of earlier ones are allowed before it."""
    while (data := _sn_receive(sn).data) != want:
        assert data in seen, (data, want, seen)
    seen.append(want)


def _mqtt_expect(client: RawClient, topic: str, want: bytes, seen: list[bytes]) -> None:
    while True:
        pub = client.receive_publish(timeout=10)
        assert pub.topic == topic, pub
        if pub.payload == want:
            seen.append(want)
            return
        assert pub.payload in seen, (pub.payload, want, seen)


def _publish(node: BrokerProcess, topic: str, payload: bytes) -> None:
    pub = _mqtt(node)
    assert pub.connect("pub-" + payload.decode()).reason_code == 0
    pub.publish(topic, payload, qos=1)
    pub.disconnect()


def test_mqtt_3_1_4_3_an_mqtt_client_on_another_node_takes_an_mqttsn_client_id_over(
    sn_node: Node, sn_clients: Callable[[BrokerProcess], SnTestClient],
    nats_cluster: NatsCluster,
) -> None:
    """MQTT-SN client on node a's gateway, then an MQTT client with the same id on node
    b: the MQTT-SN client is told DISCONNECT and is gone; the MQTT one stays
    [MQTT-3.1.4-2]. Then the other way: MQTT on b, MQTT-SN on a: the MQTT client gets
    DISCONNECT 0x8E [MQTT-3.1.4-3], the MQTT-SN client stays. With CleanSession 1 and
    0 (a resume through the gate)."""
    a, b = sn_node("a", 0), sn_node("b", 1)
    _ready(a, b)
    for clean in (True, False):
        cid = f"sn-first-{clean}"
        sn = sn_clients(a)
        sn.connect(cid, clean=clean)
        _wait_claimed(nats_cluster, a, cid)
        mq = _mqtt(b)
        assert mq.connect(cid, clean_start=clean).reason_code == 0
        assert _sn_told_to_go(sn, 10), "the MQTT-SN client was not told DISCONNECT"
        assert not _sn_alive(sn)
        assert _mqtt_alive(mq)
        mq.disconnect()

        cid = f"mqtt-first-{clean}"
        mq = _mqtt(b)
        assert mq.connect(cid, clean_start=clean,
                          properties=Properties(session_expiry_interval=600)
                          ).reason_code == 0
        _wait_claimed(nats_cluster, b, cid)
        sn = sn_clients(a)
        sn.connect(cid, clean=clean)
        got = mq.expect_closed(timeout=10)
        assert got and isinstance(got[-1], Disconnect), got
        assert got[-1].reason_code == ReasonCode.SESSION_TAKEN_OVER
        assert _sn_alive(sn)
        sn.nothing(0.3)
        sn.send(c.Disconnect())
        sn.expect(c.Disconnect)


def test_mqtt_3_1_4_2_mqttsn_and_mqtt_connects_of_one_id_at_once_end_with_one(
    sn_node: Node, sn_clients: Callable[[BrokerProcess], SnTestClient],
) -> None:
    """An MQTT-SN CONNECT (CleanSession 0) on node a and an MQTT CONNECT (Clean Start
    0) of the same client id on node b at the same moment, 4 rounds (the id's session
    exists after the first): exactly one of the two is live a few seconds later; the
    other was told (DISCONNECT 0x8E / MQTT-SN DISCONNECT) [MQTT-3.1.4-2]."""
    a, b = sn_node("a", 0), sn_node("b", 2)
    _ready(a, b)
    cid = "twin-sn"
    for round_ in range(4):
        sn = sn_clients(a)
        mq = _mqtt(b)
        barrier = threading.Barrier(2)
        acks: list[object] = []

        def go_sn(sn: SnTestClient = sn, barrier: threading.Barrier = barrier,
                  acks: list[object] = acks) -> None:
            barrier.wait()
            sn.send(c.Connect(cid, 60, clean_session=False))
            acks.append(sn.expect(c.ConnAck, timeout=10))

        def go_mqtt(mq: RawClient = mq, barrier: threading.Barrier = barrier,
                    acks: list[object] = acks) -> None:
            barrier.wait()
            acks.append(mq.connect(cid, clean_start=False,
                                   properties=Properties(session_expiry_interval=600)))

        threads = [threading.Thread(target=go_sn), threading.Thread(target=go_mqtt)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(acks) == 2, acks
        assert all(getattr(ack, "reason_code", getattr(ack, "return_code", 1)) == 0
                   for ack in acks), acks
        time.sleep(1.0)  # claims, notices, handovers settle (ms; generous on 2 cores)
        sn_told = _sn_told_to_go(sn, 0.2)
        sn_live = _sn_alive(sn)
        got: list[object] = []
        mq_live = _mqtt_alive(mq, got)
        assert (sn_live, mq_live).count(True) == 1, (round_, acks, sn_live, mq_live)
        # the one that lost was told: MQTT-SN DISCONNECT, MQTT DISCONNECT 0x8E
        assert sn_told != sn_live, (round_, sn_told, sn_live)
        if not mq_live:
            assert got and isinstance(got[-1], Disconnect), got
            assert got[-1].reason_code == ReasonCode.SESSION_TAKEN_OVER
        time.sleep(0.3)  # and no late notice closes the survivor
        assert _sn_alive(sn) == sn_live and _mqtt_alive(mq) == mq_live, round_
        if sn_live:
            sn.send(c.Disconnect())
            sn.expect(c.Disconnect)
        mq.close()


def test_mqtt_3_1_2_5_a_persistent_mqttsn_session_is_resumed_on_the_other_node(
    sn_node: Node, sn_clients: Callable[[BrokerProcess], SnTestClient],
) -> None:
    """MQTT-SN client, CleanSession 0 (§6.3), subscribes on node a's gateway and
    disconnects; a QoS 1 message is published for it while it is offline. It connects
    to node b's gateway with CleanSession 0: its subscription was resumed there
    [MQTT-3.1.2-5] — the queued message arrives, and a new one published on either
    node too (QoS 1: at least once; a repeat of one delivered before a move is
    allowed, never a loss). Then an MQTT client with its client id on node a (Clean Start 0):
    Session Present 1 [MQTT-3.2.2-2] and the subscription delivers; and back to an
    MQTT-SN client on node b. Fails when the gateway accepts without the engine's
    connect gate (node b serves a new, empty session)."""
    a, b = sn_node("a", 0), sn_node("b", 1)
    _ready(a, b)
    cid = "sn-moves"
    topic = "sn/moves/cmd"
    sn = sn_clients(a)
    sn.connect(cid, clean=False)
    ack = sn.subscribe(topic, qos=1)
    assert ack.return_code == 0
    sn.send(c.Disconnect())
    sn.expect(c.Disconnect)
    time.sleep(0.3)  # the record's write after the turn
    _publish(a, topic, b"queued")

    seen: list[bytes] = []
    sn = sn_clients(b)
    sn.connect(cid, clean=False)
    _sn_expect(sn, b"queued", seen)
    _publish(a, topic, b"live-from-a")
    _sn_expect(sn, b"live-from-a", seen)
    _publish(b, topic, b"live-from-b")
    _sn_expect(sn, b"live-from-b", seen)

    # the same session, taken by an MQTT client on the other node
    mq = _mqtt(a)
    connack = mq.connect(cid, clean_start=False,
                         properties=Properties(session_expiry_interval=600))
    assert isinstance(connack, ConnAck) and connack.session_present, connack
    assert _sn_told_to_go(sn, 10)
    _publish(b, topic, b"to-mqtt")
    _mqtt_expect(mq, topic, b"to-mqtt", seen)
    mq.disconnect()
    time.sleep(0.3)

    # and back to MQTT-SN on node b
    sn = sn_clients(b)
    sn.connect(cid, clean=False)
    _publish(a, topic, b"back")
    _sn_expect(sn, b"back", seen)
    sn.send(c.Disconnect())
    sn.expect(c.Disconnect)
