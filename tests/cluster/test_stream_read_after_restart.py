"""A resume right after a nats-server restart reads every queued message from the QoS
stream (docs/cluster.md, "Sessions move"; issue 14, i14-restart).

MQTT 5.0 §4.1: the session holds the QoS 1 messages that matched it while it was
away; a Clean Start 0 CONNECT resumes it [MQTT-3.1.2-5] with Session Present 1
[MQTT-3.2.2-2] — in a cluster, on any node, with those messages.

The resume reads them with an ephemeral consumer, which nats-server places on one
replica of the stream. A nats-server that has just restarted is such a replica, and
until it has caught up with the stream's leader its view lacks the messages written
while it was down: a consumer placed there reported 0 pending, and the session was
resumed without its queued message. Each round here queues a message while one
nats-server is down, restarts it, and resumes the session on another node at once;
the consumer lands on the restarted server in about one round of three.

This module starts a NATS cluster of its own (it kills and restarts a nats-server).
"""

from __future__ import annotations

import socket
import time

from iotbroker.codec.packets import PubAck, Publish
from tests.cluster.conftest import connect_retrying_busy, log_tails
from tests.cluster.test_live_routing import Node
from tests.cluster.test_sessions import _connect, _publish_acked, _ready, _wait_record
from tests.helpers.nats_cluster import NatsCluster, NatsServer

#: Rounds (each: a nats-server killed and restarted, a session resumed).
ROUNDS = 6


def _accepting(server: NatsServer, timeout: float = 10.0) -> None:
    """Until the restarted nats-server accepts connections again."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", server.port)) == 0:
                return
        assert time.monotonic() < deadline, "the nats-server did not come back"
        time.sleep(0.01)


def test_mqtt_3_1_2_5_a_resume_right_after_a_nats_server_restart_gets_its_queued_message(
        make_node: Node, nats_cluster: NatsCluster) -> None:
    """[MQTT-3.1.2-5], [MQTT-3.2.2-2]: a persistent session on node a, subscribed at
    QoS 1, offline; one nats-server (neither node's, not the meta leader) is killed,
    a QoS 1 message is published and acknowledged for the session, the server is
    restarted; the client's Clean Start 0 CONNECT to node b at once resumes the
    session with Session Present 1 and the queued message — in every round."""
    # The restarted server is not JetStream's meta leader (restarting that one makes
    # JetStream elect another for seconds, every round: each resume then waits and
    # is refused 0x89 once — slow, and not this test's case); the nodes are connected
    # to the other two.
    servers = nats_cluster.servers
    leader = servers[0].monitor("jsz").get("meta_cluster", {}).get("leader")
    kept = [i for i, s in enumerate(servers) if s.name == leader][:1] or [0]
    kept.append(next(i for i in range(len(servers)) if i not in kept))
    victim = servers[next(i for i in range(len(servers)) if i not in kept)]
    a = make_node("a", servers=[kept[0]])
    b = make_node("b", servers=[kept[1]])
    _ready(a, b)
    pub, _ = _connect(a, "pub", clean_start=True, expiry=0)
    missing: list[str] = []
    for i in range(ROUNDS):
        client_id = f"rr{i}"
        sub, _ = _connect(a, client_id, clean_start=True)
        sub.subscribe(f"rr{i}/#", qos=1)
        sub.disconnect()
        sub.close()
        _wait_record(nats_cluster, a, client_id)
        victim.kill()
        payload = f"queued-{i}".encode()
        _publish_acked(pub, f"rr{i}/m", [payload], qos=1)  # the restarted server lacks it
        victim.start()
        _accepting(victim)
        back, present = connect_retrying_busy(b, client_id, False, a)
        assert present, log_tails(a, b)
        try:
            packet = back.recv(timeout=5)
        except TimeoutError:
            missing.append(client_id)
        else:
            assert isinstance(packet, Publish) and packet.payload == payload, packet
            back.send(PubAck(packet.packet_id or 0))
        back.disconnect()
        back.close()
    pub.close()
    assert not missing, (f"resumed without the queued message: {missing}\n"
                         + log_tails(b, lines=80))
