"""The cluster's name dictionary (issue 14; iotbroker/cluster/wire.py, "The dictionary
on a lossy fabric"; docs/cluster.md, "The batch format"): a NAMED part names a topic
by an id once the receiving node confirmed it; core NATS may lose any batch, a node
may lose its table or restart, and a message is never delivered under a name it was
not defined with.

The first tests drive ``wire`` directly (sender tables, receiver books, lost batches
and lost confirmations); the last one runs two real nodes on a real 3-server NATS
cluster and takes the receiver's table away, then restarts each node.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from collections.abc import Callable

import nats
import pytest

from iotbroker.cluster import wire
from iotbroker.cluster.buckets import list_keys
from iotbroker.codec.packets import NO_PROPERTIES
from iotbroker.message import Message
from tests.cluster.conftest import log_tails
from tests.cluster.test_live_routing import _prefix
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster
from tests.interop.test_paho import Paho

Node = Callable[..., BrokerProcess]


def _msg(topic: str, payload: bytes, origin: str = "c", at: float = 1.0) -> Message:
    return Message(topic, payload, 0, False, NO_PROPERTIES, at, None, origin)


def _send(tables: wire.NameTables, token: str, messages: list[Message]) -> list[bytes]:
    box = tables.outbox(token)
    for m in messages:
        box.add_plain(m)
    return [data for data, _ in box.batches(b"snd/1")]


def _receive(books: dict[bytes, wire.NameBook], batches: list[bytes]) -> list[Message]:
    return [m for data in batches for _, ms, _ in wire.decode_batch(data, books)[1]
            for m in ms]


def _defs(data: bytes) -> int:
    """How many definitions the NAMED parts of a batch carry."""
    book = wire.NameBook()
    wire.decode_batch(data, {b"snd/1": book})
    return len(book.learned)


def _confirm(tables: wire.NameTables, token: str, book: wire.NameBook) -> None:
    """What the receiving node's KNOWN control message does on the sender."""
    sender, op, generation, ids = wire.decode_control(
        wire.encode_control(b"rcv/1", wire.KNOWN, book.generation, book.learned))
    assert (sender, op) == (b"rcv/1", wire.KNOWN)
    book.learned = []
    tables.tables[token].confirmed(generation, ids)


def test_confirmed_names_go_by_id_alone_and_a_lost_batch_loses_only_itself() -> None:
    """Until the receiver confirms an id, every part that uses it defines it again: a
    batch lost on the way (core NATS, at most once) takes only its own messages with
    it, never later ones [MQTT-4.6.0-5]: the rest arrive in order. Confirmed, a name
    costs its id alone (the wire shrinks)."""
    tables = wire.NameTables()
    books: dict[bytes, wire.NameBook] = {}
    first = [_msg(f"dev/{i % 7}/t", b"%d" % i, origin=f"c{i % 2}", at=float(i // 10))
             for i in range(50)]
    lost = _send(tables, "rcv_1", first[:10])  # never arrives
    assert lost and _defs(lost[0]) == 9  # 7 topics, 2 origins
    kept = _send(tables, "rcv_1", first[10:])
    assert _receive(books, kept) == first[10:]
    book = books[b"snd/1"]
    assert book.unknown == 0 and sorted(set(book.learned)) == list(range(9))
    _confirm(tables, "rcv_1", book)
    again = [_msg(f"dev/{i % 7}/t", b"again%d" % i, origin=f"c{i % 2}") for i in range(20)]
    batches = _send(tables, "rcv_1", again)
    assert [_defs(b) for b in batches] == [0]  # ids alone
    assert sum(map(len, batches)) < sum(map(len, _send(wire.NameTables(), "x", again)))
    assert _receive(books, batches) == again
    assert books[b"snd/1"].unknown == 0


def test_a_lost_confirmation_only_repeats_definitions() -> None:
    """A KNOWN message lost on the way: the sender keeps defining those names (a few
    bytes more), the receiver takes the same definition again, nothing is lost."""
    tables = wire.NameTables()
    books: dict[bytes, wire.NameBook] = {}
    msgs = [_msg(f"a/{i}", b"x") for i in range(5)]
    assert _receive(books, _send(tables, "r", msgs)) == msgs
    books[b"snd/1"].learned = []  # its confirmation is lost
    batches = _send(tables, "r", msgs)
    assert _defs(batches[0]) == 6
    assert _receive(books, batches) == msgs
    _confirm(tables, "r", books[b"snd/1"])
    assert _defs(_send(tables, "r", msgs)[0]) == 0


def test_a_receiver_that_lost_its_table_drops_counts_and_asks_for_a_new_one() -> None:
    """The receiver no longer holds a sender's names (its book was dropped): the
    messages that name confirmed ids are left out and counted, never given another
    name; its RESET makes the sender start a new generation, which defines every name
    again, and messages flow. A RESET of an older generation changes nothing."""
    tables = wire.NameTables()
    books: dict[bytes, wire.NameBook] = {}
    msgs = [_msg(f"a/{i}", b"%d" % i) for i in range(5)]
    _receive(books, _send(tables, "r", msgs))
    _confirm(tables, "r", books[b"snd/1"])
    old_generation = tables.tables["r"].generation
    books.clear()  # the receiver lost it
    assert _receive(books, _send(tables, "r", msgs)) == []
    book = books[b"snd/1"]
    assert book.unknown == 5
    sender, op, generation, ids = wire.decode_control(
        wire.encode_control(b"rcv/1", wire.RESET, book.generation, []))
    assert (sender, op, generation, ids) == (b"rcv/1", wire.RESET, old_generation, [])
    assert tables.tables["r"].reset(generation)
    assert not tables.tables["r"].reset(generation)  # asked twice: one new generation
    assert tables.tables["r"].generation > old_generation
    assert _receive(books, _send(tables, "r", msgs)) == msgs
    assert books[b"snd/1"].generation == tables.tables["r"].generation
    # a late confirmation of the old generation confirms nothing in the new one
    assert tables.tables["r"].confirmed(old_generation, [0, 1]) == 0


def test_a_new_generation_never_reuses_a_name_and_a_full_table_starts_one() -> None:
    """Generations are one counter per sending process: a table made anew (its
    destination forgotten and heard again) does not start again at the same
    generation, so an old confirmation or book cannot give its ids another name. A
    table that is full starts a new generation between two parts."""
    tables = wire.NameTables()
    first = tables.of("r").generation
    del tables.tables["r"]
    assert tables.of("r").generation > first
    books: dict[bytes, wire.NameBook] = {}
    table = tables.of("r")
    for i in range(wire.MAX_NAMES - 3):  # nearly full
        table.add(f"filler/{i}")
    generation = table.generation
    msgs = [_msg(f"new/{i}", b"%d" % i, origin="o") for i in range(4)]
    batches = _send(tables, "r", msgs)
    assert table.generation > generation and len(table.raw) < 10
    assert _receive(books, batches) == msgs  # the part of each generation resolves


def test_a_redefinition_with_another_name_is_refused_and_the_book_dropped() -> None:
    """An id defined again with another name within a generation cannot come from a
    sender (ids are never reused in one): the batch is refused (undecodable) and the
    receiver drops that sender's book, so nothing is delivered under either name until
    the sender defines its names again."""
    books: dict[bytes, wire.NameBook] = {}
    one = wire.encode_batch(b"snd/1", [wire.encode_named(1.0, 3, [0], [b"x"], [0, 0, 1],
                                                         [b"p"])])
    other = wire.encode_batch(b"snd/1", [wire.encode_named(1.0, 3, [0], [b"y"], [0, 0, 1],
                                                           [b"p"])])
    assert [m.topic for m in _receive(books, [one])] == ["x"]
    with pytest.raises(ValueError, match="redefines"):
        wire.decode_batch(other, books)
    assert b"snd/1" not in books
    with pytest.raises(ValueError, match="truncated"):
        wire.decode_batch(one[:-3], books)
    assert b"snd/1" not in books


# ----------------------------------------------------------------- real nodes
METRICS = "metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n"


def _metric(node: BrokerProcess, name: str) -> float:
    port = int(re.findall(r"metrics listening on 127\.0\.0\.1:(\d+)", node.log_text())[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return float(re.findall(rf"^iotbroker_cluster_{name}_total (\S+)$", text, re.M)[0])


def _tokens(nats_cluster: NatsCluster, prefix: str) -> list[str]:
    """The node processes with a heartbeat (keys of the nodes bucket)."""

    async def read() -> list[str]:
        nc = await nats.connect(nats_cluster.urls)
        try:
            return await list_keys(nc.jetstream(), f"{prefix}_nodes")
        finally:
            await nc.close()

    return asyncio.run(read())


def _publish_raw(nats_cluster: NatsCluster, subject: str, data: bytes) -> None:
    async def send() -> None:
        nc = await nats.connect(nats_cluster.urls)
        try:
            await nc.publish(subject, data)
            await nc.flush()
        finally:
            await nc.close()

    asyncio.run(send())


class _Tap:
    """What NATS carries on one subject (a node's batches), read by a thread of its
    own while the test drives MQTT clients."""

    def __init__(self, nats_cluster: NatsCluster, subject: str) -> None:
        self.data: list[bytes] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(
            nats_cluster.urls, subject),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _run(self, urls: list[str], subject: str) -> None:
        nc = await nats.connect(urls)

        async def took(msg: nats.aio.msg.Msg) -> None:
            self.data.append(msg.data)

        await nc.subscribe(subject, cb=took)
        await nc.flush()
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        await nc.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _wait_qos0_routed(pub: Paho, sub: Paho, *nodes: BrokerProcess,
                      timeout: float = 20.0) -> None:
    """QoS 0 probes on ``n/probe`` until ``sub`` gets one. A QoS 1 probe
    (``wait_until_routed``) proves less here: it goes live to every node process
    whatever the sender knows of their interest, and through the QoS stream, while
    a QoS 0 message goes only where the sending node's index of announced interest
    (a KV watch, late under load) has a filter for it. The bursts are QoS 0."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.publish("n/probe", b"probe0", qos=0)
        try:
            msg = sub.messages.get(timeout=0.1)
        except Exception:
            continue
        if msg.topic == "n/probe" and msg.payload == b"probe0":
            return
    raise AssertionError(f"no QoS 0 probe crossed within {timeout}s\n"
                         + log_tails(*nodes, lines=60))


TOPICS = [f"n/{i}/v" for i in range(30)]


def _burst(pub: Paho, sub: Paho, tag: str, wait: float = 3.0) -> list[tuple[str, bytes]]:
    """Each topic twice (QoS 0), then an end marker; what ``sub`` got of this burst
    (until the marker, or ``wait`` seconds). Every message must carry its own topic."""
    for k in range(2):
        for topic in TOPICS:
            pub.publish(topic, f"{tag}|{topic}|{k}".encode(), qos=0)
    pub.publish("n/end", tag.encode(), qos=0)
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            msg = sub.messages.get(timeout=0.1)
        except Exception:
            continue
        if msg.topic == "n/probe":
            continue
        if msg.topic == "n/end":
            if msg.payload == tag.encode():
                break
            continue
        mtag, topic, _ = msg.payload.decode().split("|")
        assert topic == msg.topic  # never under another name
        if mtag == tag:
            got.append((msg.topic, msg.payload))
    return got


def _complete(tag: str) -> list[tuple[str, bytes]]:
    return [(t, f"{tag}|{t}|{k}".encode()) for k in range(2) for t in TOPICS]


def _per_topic(got: list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for topic, payload in got:
        out.setdefault(topic, []).append(payload)
    return out


def test_mqtt_4_6_0_5_names_recover_when_a_node_loses_its_table_or_restarts(
        make_node: Node, clients: Callable[..., Paho], nats_cluster: NatsCluster) -> None:
    """Two real nodes on real NATS. QoS 0 messages on 30 topics cross from a to b, each
    topic's in order [MQTT-4.6.0-5]. Then b loses its table of a's names (a corrupt
    batch in a's name on b's subject: b drops a's book, as after any fault): the next
    messages name ids b does not hold: b leaves them out and counts them
    (``messages_unnamed``), asks a for a new table (a counts ``names_resets``), and the
    messages flow again by themselves, none under a wrong topic. Then each node
    restarts (a new process: new tables on both sides) and messages still cross."""
    a = make_node("a", servers=[0], extra=METRICS)
    b = make_node("b", servers=[1], extra=METRICS)
    prefix = _prefix(b)
    sub = clients(b, "sub")
    sub.subscribe("n/#", qos=0)
    pub = clients(a, "pub")
    _wait_qos0_routed(pub, sub, a, b)
    sender = next(t for t in _tokens(nats_cluster, prefix) if t.startswith("a_"))
    receiver = next(t for t in _tokens(nats_cluster, prefix) if t.startswith("b_"))
    name = sender.replace("_", "/", 1).encode()
    # Bursts until a names them by id alone (b's confirmations came back: under load
    # they may take a while), seen on the wire; each burst complete and in order.
    tap = _Tap(nats_cluster, f"{prefix}.node.{receiver}")
    try:
        for k in range(20):
            tag = f"r{k}"
            got = _burst(pub, sub, tag)
            assert _per_topic(got) == _per_topic(_complete(tag))
            sent = [data for data in tap.data if data[0] != wire.CONTROL]
            if sent and not any(_defs(data) for data in sent):
                break
            tap.data.clear()
            time.sleep(0.2)
        else:
            raise AssertionError("a never named the topics by id alone")
    finally:
        tap.close()
    _publish_raw(nats_cluster, f"{prefix}.node.{receiver}",
                 bytes([wire.BATCH_VERSION, len(name)]) + name + b"\x02\x00")  # truncated
    recovered = None
    for attempt in range(20):
        tag = f"lost{attempt}"
        got = _burst(pub, sub, tag, wait=0.5)
        if _per_topic(got) == _per_topic(_complete(tag)):
            recovered = attempt
            break
    assert recovered is not None and recovered >= 1  # the first burst was left out
    assert _metric(b, "messages_unnamed") >= 1
    assert _metric(b, "messages_undecodable") == 1
    assert _metric(a, "names_resets") == 1
    # a restarted receiver, then a restarted sender: new processes, new tables
    sub.disconnect()
    b.stop()
    b.start()
    sub = clients(b, "sub2")
    sub.subscribe("n/#", qos=0)
    _wait_qos0_routed(pub, sub, a, b)  # a knows the new b's interest
    assert _per_topic(_burst(pub, sub, "after-b")) == _per_topic(_complete("after-b"))
    pub.disconnect()
    a.stop()
    a.start()
    pub = clients(a, "pub2")
    _wait_qos0_routed(pub, sub, a, b)  # the new a knows b's interest
    assert _per_topic(_burst(pub, sub, "after-a")) == _per_topic(_complete("after-a"))
    assert _metric(b, "messages_unnamed") == 0  # b's counters began again



def test_an_outbox_never_names_an_origin_by_an_id_of_a_past_generation() -> None:
    """The Outbox keeps the last confirmed origin id (one publisher's messages share
    their client id str) while the table's confirmed ids are the same: after a new
    generation (here a full table, mid-turn) the origin is looked up again, so a
    message never names it by an id of the old generation (the receiver would drop
    it, or give it another name)."""
    tables = wire.NameTables()
    books: dict[bytes, wire.NameBook] = {}
    first = [_msg("x/0", b"0", "q"), _msg("a/1", b"1", "pub")]  # G1: pub is id 3
    _receive(books, _send(tables, "r", first))
    _confirm(tables, "r", books[b"snd/1"])
    table = tables.tables["r"]
    for i in range(wire.MAX_NAMES - 5):  # nearly full
        table.add(f"filler/{i}")
    box = tables.outbox("r")
    sent = [_msg("a/1", b"2", "pub"),  # by confirmed ids alone: origin id kept
            _msg("new/0", b"3", "pub")]  # full: a new generation, new/0 0, pub 1
    for m in sent:
        box.add_plain(m)
    assert table.names == ["new/0", "pub"]
    table.confirmed(table.generation, [0, 1])  # (as if confirmed meanwhile)
    sent.append(_msg("new/0", b"4", "pub"))  # by ids alone, of the new generation
    box.add_plain(sent[-1])
    assert _receive(books, [data for data, _ in box.batches(b"snd/1")]) == sent
    assert books[b"snd/1"].unknown == 0
