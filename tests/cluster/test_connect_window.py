"""No Clean Start 0 CONNECT is served with a node's own state before the node can look
for the session in the cluster (docs/cluster.md, "Sessions move": the connect gate).

A node that has just started (its listener accepts before its NATS connection and its
session records bucket are ready) makes such a CONNECT wait for them — bounded by
``RESUME_TIMEOUT`` — so the client gets its real session [MQTT-3.1.2-5] with Session
Present 1 [MQTT-3.2.2-2], its subscription and its queued QoS 1 message (MQTT 5.0 §4.1),
instead of a new one that would then replace its record cluster-wide.

The test connects in a tight loop from before the node's process starts, so its
CONNECT arrives as soon as the listener accepts: on main (before the gate waited) it
was served with a new session every time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from iotbroker.codec.packets import PubAck, Publish
from tests.cluster.conftest import node_config, wait_for_log
from tests.cluster.test_live_routing import Node
from tests.cluster.test_sessions import _connect, _persistent, _publish_acked, _wait_record
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster, free_port
from tests.helpers.rawclient import RawClient


def _node_on_port(workdir: Path, name: str, port: int, urls: list[str],
                  prefix: str) -> BrokerProcess:
    listeners = ("listeners:\n  - name: default\n    type: tcp\n    host: 127.0.0.1\n"
                 f"    port: {port}\n")
    return BrokerProcess(workdir / name, node_config(name, urls, prefix, listeners=listeners),
                         name=name)


def _session_with_a_queued_message(a: BrokerProcess, nats_cluster: NatsCluster,
                                   client_id: str, root: str) -> RawClient:
    """On node ``a`` (once its session records bucket is open): a persistent session of
    ``client_id`` subscribed to ``root/#`` at QoS 1, its record in the bucket, and a
    QoS 1 message ``queued`` on ``root/queued`` queued for it; returns the publisher
    (``pub-a``, connected to ``a``)."""
    wait_for_log(a, "session records bucket", timeout=30)
    sub, _ = _connect(a, client_id, clean_start=True)
    sub.subscribe(f"{root}/#", qos=1)
    sub.disconnect()
    sub.close()
    _wait_record(nats_cluster, a, client_id)
    pub_a, _ = _connect(a, "pub-a", clean_start=True, expiry=0)
    _publish_acked(pub_a, f"{root}/queued", [b"queued"], qos=1)
    return pub_a


def _prefix(node: BrokerProcess) -> str:
    """The node's ``cluster.subject_prefix`` (another node joins its cluster with it)."""
    return node.config_path.read_text().split("subject_prefix: ")[1].split()[0]


def _receive(client: RawClient, payload: bytes, timeout: float = 10) -> None:
    """The next packet is a QoS 1 PUBLISH of ``payload``: acknowledged."""
    packet = client.recv(timeout=timeout)
    assert isinstance(packet, Publish) and packet.payload == payload, packet
    client.send(PubAck(packet.packet_id or 0))


def _connect_from_the_first_moment(port: int, client_id: str, box: list[object],
                                   deadline: float) -> None:
    """Open a TCP connection to ``port`` in a tight loop until the listener accepts,
    then CONNECT at once (Clean Start 0); the CONNACK (or the error) goes in ``box``."""
    try:
        while True:
            try:
                client = RawClient("127.0.0.1", port, version=5, timeout=20)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
        box.append(time.monotonic())
        connack = client.connect(client_id, clean_start=False, properties=_persistent())
        box.append(client)
        box.append(connack)
    except BaseException as exc:  # reported by the test
        box.append(exc)


def test_mqtt_3_1_2_5_a_connect_at_a_starting_nodes_first_moment_gets_its_session(
        make_node: Node, nats_cluster: NatsCluster, tmp_path: Path) -> None:
    """[MQTT-3.1.2-5], [MQTT-3.2.2-2]: a persistent session (a subscription and a
    queued QoS 1 message) on node a; node b starts and the client's CONNECT (Clean
    Start 0) reaches b as soon as b's listener accepts: Session Present 1, the queued
    message arrives, the subscription delivers messages published on a and on b."""
    a = make_node("a", servers=[0])
    pub_a = _session_with_a_queued_message(a, nats_cluster, "early", "win")

    port = free_port()
    b = _node_on_port(tmp_path, "b", port, [nats_cluster.urls[1]], _prefix(a))
    box: list[object] = []
    thread = threading.Thread(target=_connect_from_the_first_moment,
                              args=(port, "early", box, time.monotonic() + 30), daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        b.start()
        thread.join(30)
        assert len(box) == 3, box
        accepted_at, back, connack = box
        assert isinstance(back, RawClient)
        log = b.log_text()
        assert isinstance(accepted_at, float) and accepted_at - started < 30
        assert connack.reason_code == 0, connack  # type: ignore[attr-defined]
        assert connack.session_present, (  # type: ignore[attr-defined]
            f"b served a new session:\n{log}")
        # The CONNECT did come before b could look for the session (the window the
        # test is about), and waited for it.
        assert "session 'early': CONNECT waited" in log, log
        _receive(back, b"queued")
        pub_b, _ = _connect(b, "pub-b", clean_start=True, expiry=0)
        _publish_acked(pub_a, "win/a", [b"from-a"], qos=1)
        _publish_acked(pub_b, "win/b", [b"from-b"], qos=1)
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            packet = back.recv(timeout=10)
            if isinstance(packet, Publish):
                got.append(packet.payload)
                back.send(PubAck(packet.packet_id or 0))
        assert sorted(got) == [b"from-a", b"from-b"]
        for client in (back, pub_a, pub_b):
            client.close()
    finally:
        b.stop()


def _connect_after_waiting(node: BrokerProcess, client_id: str) -> RawClient:
    """CONNECT (Clean Start 0) to ``node``: it must have waited at the gate (the
    test's window), then resumed the session (Session Present 1). JetStream may take
    longer than RESUME_TIMEOUT (8 s) to answer after its servers restarted (5-7.7 s
    here): then the bound holds — 0x89 Server busy, not a new session — and one retry
    must resume it."""
    client = RawClient(node.host, node.port, version=5, timeout=20)
    connack = client.connect(client_id, clean_start=False, properties=_persistent())
    log = node.log_text()
    waited = f"session {client_id!r}: CONNECT waited"
    if connack.reason_code == 0x89:
        assert waited in log and "within 8s" in log, log
        client.close()
        client = RawClient(node.host, node.port, version=5, timeout=20)
        connack = client.connect(client_id, clean_start=False, properties=_persistent())
        log = node.log_text()
    assert connack.reason_code == 0, f"{connack}\n{log}"
    assert connack.session_present, f"{node.config_path.stem} served a new session:\n{log}"
    # It came in the window and waited (on main it was served at once, or its resume
    # ran at once and failed).
    assert waited in log, log
    return client


def _wait_for_log_tightly(proc: BrokerProcess, text: str, timeout: float) -> None:
    """As wait_for_log, polling the log every 2 ms (the window is ~0.1-0.3 s)."""
    deadline = time.monotonic() + timeout
    with open(proc.log_path, "rb") as f:
        seen = b""
        while time.monotonic() < deadline:
            seen += f.read()
            if text.encode() in seen:
                return
            time.sleep(0.002)
    raise AssertionError(f"{text!r} not in the log within {timeout}s:\n{proc.log_text()}")


def test_mqtt_3_1_2_5_a_connect_just_after_nats_comes_to_a_node_gets_its_session(
        make_node: Node, nats_cluster: NatsCluster, tmp_path: Path) -> None:
    """[MQTT-3.1.2-5], [MQTT-3.2.2-2]: node b starts while its nats-server is down (it
    serves its local clients meanwhile); the server returns, b connects to it, and a
    CONNECT (Clean Start 0) sent the moment b says "connected to NATS" — before its
    session records bucket is open — waits (the rejoining server makes b's buckets
    take ~0.1 s or ~7 s to open, from run to run) and gets the session from node a:
    Session Present 1, the queued message, the subscription delivers (past the 8 s
    bound: 0x89, and the retry resumes it)."""
    a = make_node("a", servers=[0])
    pub_a = _session_with_a_queued_message(a, nats_cluster, "late", "late")

    server = nats_cluster.servers[2]
    server.kill()
    b = BrokerProcess(tmp_path / "b", node_config("b", [server.url], _prefix(a)), name="b")
    try:
        b.start()
        wait_for_log(b, "unreachable", timeout=10)  # it serves its local clients
        server.start()
        _wait_for_log_tightly(b, "cluster: node b connected to NATS", timeout=20)
        back = _connect_after_waiting(b, "late")
        _receive(back, b"queued")
        _publish_acked(pub_a, "late/a", [b"from-a"], qos=1)
        _receive(back, b"from-a")
        for client in (back, pub_a):
            client.close()
    finally:
        b.stop()
        if not server.alive():
            server.start()


def test_mqtt_3_1_2_5_a_connect_just_after_nats_returns_waits_for_the_buckets(
        make_node: Node, nats_cluster: NatsCluster) -> None:
    """[MQTT-3.1.2-5], [MQTT-3.2.2-2]: every nats-server is killed and restarted
    (JetStream elects its leaders again: for a moment after the nodes reconnect, the
    buckets do not answer); a CONNECT (Clean Start 0) sent to node b the moment it
    logs "reconnected to NATS" waits until its buckets answer, then resumes the
    session from node a: Session Present 1, the queued message, the subscription
    delivers — not a new session (0x89 Server busy only past the 8 s bound, and the
    retry resumes it)."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[2])
    wait_for_log(b, "session records bucket", timeout=30)
    _session_with_a_queued_message(a, nats_cluster, "back", "back").close()

    for server in nats_cluster.servers:
        server.kill()
    wait_for_log(b, "lost NATS", timeout=10)
    for server in nats_cluster.servers:
        server.start()
    _wait_for_log_tightly(b, "cluster: node b reconnected to NATS", timeout=30)
    client = _connect_after_waiting(b, "back")
    _receive(client, b"queued")
    pub_a, _ = _connect(a, "pub-a", clean_start=True, expiry=0)
    _publish_acked(pub_a, "back/a", [b"from-a"], qos=1)
    _receive(client, b"from-a", timeout=15)
    for c in (client, pub_a):
        c.close()
