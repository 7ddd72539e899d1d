"""One live connection per client id across nodes (docs/cluster.md, "Session
ownership"): a client id that connects to another node closes its connection on the
first with DISCONNECT 0x8E Session taken over [MQTT-3.1.4-2], [MQTT-3.1.4-3]; two
connections at once end with exactly one."""

from __future__ import annotations

import asyncio
import select
import statistics
import threading
import time

import nats
from nats.js.errors import KeyNotFoundError

from iotbroker.cluster.ownership import client_key
from iotbroker.codec.enums import ReasonCode
from iotbroker.codec.packets import ConnAck, Connect, Disconnect
from tests.cluster.conftest import wait_for_log
from tests.cluster.test_live_routing import Node
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.rawclient import Closed, RawClient


def _ready(*nodes: object) -> None:
    """Both buckets open on every node (creating a 3-replica bucket takes a while
    on a loaded machine)."""
    for node in nodes:
        wait_for_log(node, "retained messages from bucket", timeout=20)  # type: ignore[arg-type]
        wait_for_log(node, "session bucket", timeout=20)  # type: ignore[arg-type]


def _wait_claimed(nats_cluster: NatsCluster, node: BrokerProcess, client_id: str) -> None:
    """Until the bucket holds a claim of ``client_id``: a CONNECT is "later" than
    another only once the first one's claim is in the stream (docs/cluster.md)."""
    prefix = node.config_path.read_text().split("subject_prefix: ")[1].split()[0]

    async def poll() -> None:
        nc = await nats.connect(nats_cluster.urls)
        try:
            kv = await nc.jetstream().key_value(f"{prefix}_sessions")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    await kv.get(client_key(client_id))
                    return
                except KeyNotFoundError:
                    await asyncio.sleep(0.01)
            raise AssertionError(f"no claim of {client_id!r}")
        finally:
            await nc.close()

    asyncio.run(poll())


def test_connecting_on_another_node_takes_the_client_id_over(
    make_node: Node, nats_cluster: NatsCluster
) -> None:
    """[MQTT-3.1.4-3]: the old connection gets DISCONNECT 0x8E and is closed; prints
    the takeover latency over 30 rounds (a benchmark figure, not an assertion)."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    _ready(a, b)
    took: list[float] = []
    nodes = [a, b]
    old = RawClient(a.host, a.port, version=5)
    assert old.connect("dup", clean_start=False).reason_code == 0
    _wait_claimed(nats_cluster, a, "dup")  # later rounds wait for the takeover itself
    for i in range(30):
        node = nodes[(i + 1) % 2]
        new = RawClient(node.host, node.port, version=5)
        started = time.monotonic()
        assert new.connect("dup", clean_start=False).reason_code == 0
        got = old.expect_closed(timeout=10)
        took.append(time.monotonic() - started)
        assert got and isinstance(got[-1], Disconnect), got
        assert got[-1].reason_code == ReasonCode.SESSION_TAKEN_OVER
        old.close()
        old = new
    # the last one is still connected
    old.send(Disconnect(0))
    old.close()
    took.sort()
    print(f"cross-node takeover: median {statistics.median(took) * 1000:.1f} ms, "
          f"p99 {took[int(len(took) * 0.99) - 1] * 1000:.1f} ms, max {took[-1] * 1000:.1f} ms")


def test_one_client_id_on_two_nodes_at_once_ends_with_one_connection(make_node: Node) -> None:
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[2])
    _ready(a, b)
    for round_ in range(3):
        cid = f"twin-{round_}"
        clients = [RawClient(n.host, n.port, version=5) for n in (a, b)]
        barrier = threading.Barrier(2)

        def go(c: RawClient, cid: str = cid, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            c.connect(cid)

        threads = [threading.Thread(target=go, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # within a few seconds exactly one of the two is closed; the other stays
        deadline = time.monotonic() + 10
        alive = [True, True]
        while time.monotonic() < deadline and all(alive):
            for i, c in enumerate(clients):
                try:
                    c.recv(0.05)
                except TimeoutError:
                    pass
                except Closed:
                    alive[i] = False
        assert alive.count(True) == 1, alive
        survivor = clients[alive.index(True)]
        survivor.nothing(0.3)  # it is not closed later either
        for c in clients:
            c.close()


def test_reconnect_storm_settles_with_one_connection_per_client_id(make_node: Node) -> None:
    """300 client ids, each connecting to both nodes back to back (600 CONNECTs, claims
    batched): every client id ends with exactly one open connection, and the closed
    one was told 0x8E [MQTT-3.1.4-3]."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    _ready(a, b)
    pairs: list[tuple[RawClient, RawClient]] = []
    try:
        for i in range(300):
            first, second = (a, b) if i % 2 else (b, a)
            one = RawClient(first.host, first.port, version=5)
            one.send(Connect(client_id=f"storm-{i}", protocol_version=5, clean_start=True,
                             keepalive=60))
            two = RawClient(second.host, second.port, version=5)
            two.send(Connect(client_id=f"storm-{i}", protocol_version=5, clean_start=True,
                             keepalive=60))
            pairs.append((one, two))
        for one, two in pairs:
            assert one.expect(ConnAck).reason_code == 0
            assert two.expect(ConnAck).reason_code == 0
        open_ = {c.sock: c for pair in pairs for c in pair}
        received: dict[RawClient, list[object]] = {}
        closed: set[RawClient] = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(closed) < len(pairs):
            readable, _, _ = select.select(list(open_), [], [], 0.2)
            for sock in readable:
                client = open_[sock]
                try:
                    packet = client.recv(0.1)
                except Closed:
                    del open_[sock]
                    closed.add(client)
                except TimeoutError:
                    continue
                else:
                    received.setdefault(client, []).append(packet)
        still_open = [(one in open_.values(), two in open_.values()) for one, two in pairs]
        assert all(x != y for x, y in still_open), [
            i for i, (x, y) in enumerate(still_open) if x == y]
        for client in closed:
            packets = received.get(client, [])
            assert packets and isinstance(packets[-1], Disconnect), packets
            assert packets[-1].reason_code == ReasonCode.SESSION_TAKEN_OVER
        time.sleep(0.5)  # no late takeover closes a survivor
        survivors = list(open_.values())
        readable, _, _ = select.select([c.sock for c in survivors], [], [], 0)
        assert not readable
    finally:
        for one, two in pairs:
            one.close()
            two.close()


def test_three_nodes_at_once_and_in_a_chain_end_with_one_connection(
    make_node: Node, nats_cluster: NatsCluster
) -> None:
    """Claims are compare-and-set and tell only the owner they replace
    (docs/cluster.md, "Session ownership"). Three CONNECTs of one client id on three
    nodes at once (two lose the race and claim again after the winner): exactly one
    stays [MQTT-3.1.4-2]. Then a chain a → b → c → a: every previous owner is told,
    each closed with 0x8E [MQTT-3.1.4-3]."""
    nodes = [make_node(name, servers=[i]) for i, name in enumerate("abc")]
    _ready(*nodes)
    for round_ in range(3):
        cid = f"triple-{round_}"
        clients = [RawClient(n.host, n.port, version=5) for n in nodes]
        barrier = threading.Barrier(3)

        def go(c: RawClient, cid: str = cid, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            c.connect(cid)

        threads = [threading.Thread(target=go, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        alive = [True, True, True]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and alive.count(True) > 1:
            for i, c in enumerate(clients):
                if not alive[i]:
                    continue
                try:
                    c.recv(0.05)
                except TimeoutError:
                    pass
                except Closed:
                    alive[i] = False
        assert alive.count(True) == 1, (round_, alive)
        clients[alive.index(True)].nothing(0.3)  # not closed later either
        for c in clients:
            c.close()
    old: RawClient | None = None
    for node in [*nodes, nodes[0]]:  # a → b → c → a: each owner is told in turn
        c = RawClient(node.host, node.port, version=5)
        assert c.connect("chain", clean_start=False).reason_code == 0
        if old is None:
            _wait_claimed(nats_cluster, node, "chain")
        else:
            got = old.expect_closed(timeout=10)
            assert got and isinstance(got[-1], Disconnect), got
            assert got[-1].reason_code == ReasonCode.SESSION_TAKEN_OVER
            old.close()
        old = c
    assert old is not None
    old.nothing(0.3)
    old.send(Disconnect(0))
    old.close()
