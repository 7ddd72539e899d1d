"""A session's first record write fails (JetStream does not answer in time, as on a
loaded machine): the node writes it again, so the session still moves after kill -9
of its node (docs/cluster.md, "Sessions move"; issue 14, fix-qos2move).

MQTT 5.0 [MQTT-3.1.2-5]: a Clean Start 0 CONNECT resumes the session and CONNACK says
Session Present 1 [MQTT-3.2.2-2] — in a cluster, on any node. Before the fix a failed
first write was never tried again: the record was never in the bucket, the PUBRELs
went without it, and the node the client moved to after kill -9 served a new, empty
session with Session Present 0 (the CI failure of test_qos2_move's kill -9 test).

This module starts a NATS cluster of its own (it stops a nats-server with SIGSTOP).
"""

from __future__ import annotations

import time

from iotbroker.codec.packets import Publish
from tests.cluster.conftest import connect_retrying_busy, log_tails, wait_for_log
from tests.cluster.test_live_routing import Node
from tests.cluster.test_qos2_exactly_once import stopped
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.rawclient import RawClient


def _resumes_after_kill_9(client: RawClient, client_id: str, dead: BrokerProcess,
                          alive: BrokerProcess) -> None:
    """``dead`` is killed with -9; the client's Clean Start 0 CONNECT to ``alive``
    resumes its session: Session Present 1 [MQTT-3.2.2-2]."""
    dead.kill()
    client.close()
    back, present = connect_retrying_busy(alive, client_id, False, dead)
    assert present, log_tails(dead, alive)
    back.close()


def test_mqtt_3_1_2_5_a_session_whose_first_record_write_failed_moves_after_kill_9(
        make_node: Node, nats_cluster: NatsCluster) -> None:
    """Node a's nats-server is stopped (SIGSTOP) while a persistent session is opened
    there: its first record write times out. Once NATS answers again, a writes the
    record; after kill -9 of a, the client's Clean Start 0 CONNECT to b resumes it
    with Session Present 1 [MQTT-3.1.2-5], [MQTT-3.2.2-2] and its subscription."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    for node in (a, b):
        wait_for_log(node, "session records bucket", timeout=30)
    with stopped(nats_cluster.servers[0]):
        sub, _ = connect_retrying_busy(a, "sub", True)
        sub.subscribe("fw/#", qos=1)
        wait_for_log(a, "session record 'sub' not written", timeout=30)
    wait_for_log(a, "session record 'sub' written", timeout=15)  # once NATS answers (the fix)
    _resumes_after_kill_9(sub, "sub", a, b)


def test_mqtt_3_1_2_5_a_session_opened_while_nats_is_away_is_written_when_it_returns(
        make_node: Node, nats_cluster: NatsCluster) -> None:
    """Every nats-server is killed (the nodes have lost NATS: they serve their local
    clients); a persistent session is opened on node b meanwhile — its first record
    write fails (no write is in flight when NATS returns). When the servers are back
    (restarted) and b's buckets answer, b writes the record at once (issue 14,
    i14-restart: it used to wait for the session's next change, and this connected,
    idle client has none); after kill -9 of b, the client's Clean Start 0 CONNECT to
    a resumes it with Session Present 1
    [MQTT-3.1.2-5], [MQTT-3.2.2-2]."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    for node in (a, b):
        wait_for_log(node, "session records bucket", timeout=30)
    for server in nats_cluster.servers:
        server.kill()
    try:
        wait_for_log(b, "lost NATS", timeout=10)
        sub, present = connect_retrying_busy(b, "away", True)  # b's own state
        assert not present
        # (its one write fails before NATS returns: nothing else writes it again)
        wait_for_log(b, "session record 'away' not written", timeout=30)
    finally:
        for server in nats_cluster.servers:
            server.start()
    wait_for_log(b, "reconnected to NATS", timeout=30)
    wait_for_log(b, "session record 'away' written", timeout=30)  # buckets answer (the fix)
    _resumes_after_kill_9(sub, "away", b, a)


def test_mqtt_3_1_2_5_a_session_that_ends_its_connection_while_nats_is_away_is_kept(
        make_node: Node, nats_cluster: NatsCluster) -> None:
    """A persistent session on node b, subscribed, its record written; every
    nats-server is killed; the client disconnects (b's record write fails: NATS is
    away, not another owner) and reconnects to b with Clean Start 0 while NATS is
    still away: b serves it with its own copy — Session Present 1 [MQTT-3.1.2-5],
    [MQTT-3.2.2-2], its subscription delivers — not a new session (a failed write
    used to be taken for "owned elsewhere now" and b dropped its copy; issue 14,
    i14-restart). Once NATS is back the record is written again."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    for node in (a, b):
        wait_for_log(node, "session records bucket", timeout=30)
    sub, _ = connect_retrying_busy(b, "keep", True)
    sub.subscribe("keep/#", qos=1)
    wait_for_log(b, "session record 'keep' written", timeout=15)
    for server in nats_cluster.servers:
        server.kill()
    try:
        wait_for_log(b, "lost NATS", timeout=10)
        sub.disconnect()
        sub.close()
        deadline = time.monotonic() + 30  # its record write after the disconnect failed
        while not any(line in b.log_text() for line in (
                "session record 'keep' not written", "session 'keep' is owned elsewhere")):
            assert time.monotonic() < deadline, log_tails(b)
            time.sleep(0.05)
        back, present = connect_retrying_busy(b, "keep", False)  # NATS still away
        assert present, log_tails(b, lines=60)
        pub, _ = connect_retrying_busy(b, "pub-keep", True)
        pub.publish("keep/x", b"local", qos=0)
        packet = back.recv(timeout=10)
        assert isinstance(packet, Publish) and packet.payload == b"local", packet
    finally:
        for server in nats_cluster.servers:
            server.start()
    written = b.log_text().count("session record 'keep' written")
    deadline = time.monotonic() + 30  # written again once the buckets answer
    while b.log_text().count("session record 'keep' written") == written:
        assert time.monotonic() < deadline, log_tails(b, lines=60)
        time.sleep(0.05)
    for client in (back, pub):
        client.close()
