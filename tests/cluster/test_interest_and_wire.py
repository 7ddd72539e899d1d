"""The cluster room's pure parts: interest ref-counting (one announcement per
distinct filter), the index of other nodes' announcements, the shared-group
pick, and the inter-node message formats with de-duplication."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from iotbroker.cluster import shared, wire
from iotbroker.cluster.interest import Interest, Pair
from iotbroker.cluster.ownership import Ownership
from iotbroker.cluster.remote import RemoteInterest, encode_value, interest_key
from iotbroker.codec.packets import NO_PROPERTIES, Properties
from iotbroker.core.subscriptions import SubscriptionTrie
from iotbroker.message import Message
from iotbroker.subscription import SubscriptionEntry


def test_distinct_filters_are_reference_counted() -> None:
    """One announcement per distinct plain filter; a shared subscription is announced
    as itself with its number of members here (MQTT 5.0 §4.8.2)."""
    trie: set[Pair] = set()
    interest = Interest()

    def change(*pairs: Pair, add: bool = True) -> list[tuple[str, int]]:
        for pair in pairs:
            (trie.add if add else trie.discard)(pair)
        return interest.update(pairs, trie.__contains__)

    assert change(("c1", "a/+"), ("c2", "a/+")) == [("a/+", 1)]
    assert change(("c3", "$share/g/a/+")) == [("$share/g/a/+", 1)]
    assert change(("c4", "$share/g/a/+")) == [("$share/g/a/+", 2)]  # members counted
    assert change(("c1", "a/+"), add=False) == []  # c2 still holds it
    assert change(("c2", "a/+"), ("c3", "$share/g/a/+"), add=False) == [
        ("a/+", 0), ("$share/g/a/+", 1)]
    assert change(("c4", "$share/g/a/+"), add=False) == [("$share/g/a/+", 0)]
    assert len(interest) == 0
    # a touched pair that did not change (resubscribe) changes nothing
    assert change(("c1", "b")) == [("b", 1)]
    assert interest.update([("c1", "b")], trie.__contains__) == []
    assert interest.items() == [("b", 1)]


def test_gone_and_back_in_one_turn_is_no_change() -> None:
    interest = Interest()
    present = {("c1", "x")}
    interest.update([("c1", "x")], present.__contains__)
    # c1 leaves and c2 arrives on the same filter within one turn
    now = {("c2", "x")}
    assert interest.update([("c1", "x"), ("c2", "x")], now.__contains__) == []


def test_reconcile_drops_pairs_that_left_without_an_event() -> None:
    interest = Interest()
    trie = {("c1", "x"), ("c2", "y")}
    interest.update(list(trie), trie.__contains__)
    trie.discard(("c2", "y"))  # an expired session: the engine reports nothing
    assert interest.reconcile(trie.__contains__) == [("y", 0)]
    assert "x" in interest and "y" not in interest


def _put(remote: RemoteInterest, token: str, announced: str, count: int = 1,
         now: float = 0.0) -> str:
    key = interest_key(token, announced)
    remote.put(key, encode_value(announced, count), now)
    return key


def test_remote_interest_matches_like_subscriptions() -> None:
    """The index of other nodes' filters matches with MQTT's rules ('#' matches its
    parent [MQTT-4.7.1-2], '+' one level, no wildcard-first match of '$' topics
    [MQTT-4.7.2-1]); shared groups list the nodes with members and how many; this
    node's own entries are not indexed."""
    remote = RemoteInterest("me_1")
    _put(remote, "a_1", "s/#")
    _put(remote, "b_1", "s/+/t")
    _put(remote, "b_1", "#")
    _put(remote, "me_1", "s/#")
    _put(remote, "a_1", "$share/g/s/+/t", 3)
    _put(remote, "b_1", "$share/g/s/+/t", 1)
    assert set(remote.match("s/x/t").direct) == {"a_1", "b_1"}
    assert set(remote.match("s").direct) == {"a_1", "b_1"}
    assert set(remote.match("$SYS/x").direct) == set()
    [(group, flt, members)] = remote.match("s/x/t").shared
    assert (group, flt) == ("g", "s/+/t")
    assert {m.client_id for m in members} == {"a_1", "b_1"}
    assert remote.members(("g", "s/+/t")) == {"a_1": 3, "b_1": 1}
    # a member count changes; a filter goes
    _put(remote, "b_1", "$share/g/s/+/t", 2)
    assert remote.members(("g", "s/+/t")) == {"a_1": 3, "b_1": 2}
    remote.delete(interest_key("b_1", "#"))
    remote.delete(interest_key("b_1", "s/+/t"))
    assert set(remote.match("s/x/t").direct) == {"a_1"}
    assert len(remote) == 3


def test_a_silent_node_leaves_the_index_and_comes_back_or_is_forgotten() -> None:
    remote = RemoteInterest("me_1")
    key = _put(remote, "a_1", "x", now=0.0)
    assert remote.sweep(2.0, ttl=3.0, forget=60.0) == ([], [])
    assert set(remote.match("x").direct) == {"a_1"}
    assert remote.sweep(4.0, ttl=3.0, forget=60.0) == (["a_1"], [])  # silent 4 s: out
    assert remote.match("x").direct == {}
    remote.heard("a_1", 5.0)  # its heartbeat again: back in
    assert remote.sweep(5.5, ttl=3.0, forget=60.0) == (["a_1"], [])
    assert set(remote.match("x").direct) == {"a_1"}
    assert remote.sweep(70.0, ttl=3.0, forget=60.0) == (["a_1"], [key])  # forgotten
    assert remote.match("x").direct == {} and len(remote) == 0


def test_shared_pick_is_the_same_everywhere_and_weighted_by_members() -> None:
    """Every node that sees the same candidates picks the same node for a message and
    group (the sender and a node routing the QoS stream copy agree); over many
    messages each node's share follows its members; a node leaving moves only the
    messages it had."""
    msgs = [Message(topic=f"job/{i}", payload=b"%d" % i, qos=1, retain=False,
                    properties=Properties(), created_at=1000.0 + i, origin="pub")
            for i in range(3000)]
    three = [("a", 1), ("b", 2), ("c", 1)]
    picks = [shared.pick(m, "g", "job/+", three) for m in msgs]
    assert picks == [shared.pick(m, "g", "job/+", list(reversed(three))) for m in msgs]
    share_b = picks.count("b") / len(picks)
    assert 0.45 < share_b < 0.55, share_b
    assert 0.2 < picks.count("a") / len(picks) < 0.3
    without_c = [shared.pick(m, "g", "job/+", three[:2]) for m in msgs]
    assert all(w == p for w, p in zip(without_c, picks, strict=True) if p != "c")
    assert shared.pick(msgs[0], "g", "job/+", [("x", 5)]) == "x"


def test_batches_round_trip_on_the_wire() -> None:
    """One NATS message per destination node carries parts: ITEMS parts (messages of
    any topics, each record names its topic, each with the shared groups given to that
    node) and NAMED parts (plain QoS 0 messages, topics and origins by name id, defined
    in the part)."""
    one = Message(topic="a.b/c d", payload=b"\x00\xff", qos=1, retain=True,
                  properties=Properties(content_type="t", user_properties=(("k", "v"),)),
                  created_at=12.5, expires_at=99.0, origin="client-1")
    two = Message(topic="x/é", payload=b"", qos=0, retain=False,
                  properties=Properties(), created_at=13.0)
    plain = [Message("x/é", b"", 0, False, NO_PROPERTIES, 14.0, None, "c"),
             Message("y", b"a", 0, False, NO_PROPERTIES, 14.0, None, "c"),
             Message("x/é", b"bc", 0, False, NO_PROPERTIES, 14.0, None, "")]
    parts = [
        wire.encode_part(7, [wire.item(wire.record(one), [("g", "a.b/+")])]),
        wire.encode_part(0, [wire.item(wire.record(two), []),
                             wire.item(wire.record(one), [])]),
        wire.encode_named(14.0, 5, [0, 1, 2, 3], ["x/é".encode(), b"c", b"y", b""],
                          [0, 1, 0, 2, 1, 1, 0, 3, 2], [b"", b"a", b"bc"]),
    ]
    data = wire.encode_batch(b"node-a/1234", parts)
    sender, decoded = wire.decode_batch(data)
    assert (sender, decoded) == (b"node-a/1234", [
        (7, [one], [[("g", "a.b/+")]]), (0, [two, one], [[], []]), (0, plain, None)])
    assert decoded[2][1][0].topic is decoded[2][1][2].topic  # one str per name
    with pytest.raises(ValueError, match="batch"):
        wire.decode_batch(b"\x03" + data[1:])  # the previous version: not decoded
    for cut in (1, 2, 5, 9, len(parts[-1]) - 1):
        with pytest.raises(ValueError, match="truncated"):
            wire.decode_batch(data[:-cut])


def test_batch_golden_bytes() -> None:
    """Batch version 4, byte for byte (docs/cluster.md "On the wire"): a NAMED part is
    kind 2, count, created time, the name generation, the definitions (ids, lengths,
    then the names), per message its topic's and origin's id and its size (as three
    arrays), then the payloads;
    an ITEMS part is kind 0, seq, count and version 2's items."""
    plain = wire.encode_named(1.5, 1, [0, 1], [b"t/1", b"c"], [0, 1, 2, 0, 1, 1],
                              [b"ab", b"c"])
    assert plain == bytes.fromhex(
        "02" "0002" "3ff8000000000000" "00000001" "0002" "0000" "0001" "0003" "0001"
    ) + b"t/1" + b"c" + bytes.fromhex(
        "0000" "0000" "0001" "0001" "00000002" "00000001") + b"abc"
    message = Message("t/1", b"x", 1, False, NO_PROPERTIES, 2.0, None, "")
    rec = wire.record(message)
    assert rec == bytes.fromhex(
        "01" "01" "00" "4000000000000000" "0000000000000000"
        "00000003" "00000000" "00000000" "00000001") + b"t/1" + b"x"
    items = wire.encode_part(9, [wire.item(rec, [("g", "t/+")])])
    assert items == bytes.fromhex("00" "0000000000000009" "0001" "00000027") + rec + \
        bytes.fromhex("0001" "0001") + b"g" + bytes.fromhex("0003") + b"t/+"
    assert wire.encode_batch(b"n/1", [plain, items]) == b"\x04\x03n/1" + plain + items
    box = wire.Outbox()  # the Outbox writes these same bytes
    for payload in (b"ab", b"c"):
        box.add_plain(Message("t/1", payload, 0, False, NO_PROPERTIES, 1.5, None, "c"))
    box.add(wire.item(rec, [("g", "t/+")]))
    items0 = wire.encode_part(0, [wire.item(rec, [("g", "t/+")])])  # QoS 0: seq 0
    assert box.batches(b"n/1") == [(b"\x04\x03n/1" + plain + items0, 3)]
    # once the destination confirmed the ids, a part names them by id alone
    box.names.confirmed(1, [0, 1])
    box.add_plain(Message("t/1", b"ab", 0, False, NO_PROPERTIES, 1.5, None, "c"))
    assert box.batches(b"n/1")[-1][0].endswith(bytes.fromhex(
        "02" "0001" "3ff8000000000000" "00000001" "0000" "0000" "0001" "00000002") + b"ab")
    # name dictionary control messages (receiver -> sender): known ids, reset
    assert wire.encode_control(b"n/2", wire.KNOWN, 7, [0, 5]) == b"\x84\x03n/2" + \
        bytes.fromhex("01" "00000007" "0002" "0000" "0005")
    assert wire.encode_control(b"n/2", wire.RESET, 7, []) == b"\x84\x03n/2" + \
        bytes.fromhex("02" "00000007" "0000")
    assert wire.decode_control(b"\x84\x03n/2" + bytes.fromhex(
        "01" "00000007" "0002" "0000" "0005")) == (b"n/2", wire.KNOWN, 7, [0, 5])


@pytest.mark.parametrize("column", ["topic", "origin", "size", "all"])
@pytest.mark.parametrize("change_at", [None, 1, 5, 9])
def test_named_part_columns_of_one_value_are_the_same_bytes(
        column: str, change_at: int | None) -> None:
    """A NAMED part's column (topic ids, origin ids, sizes) whose messages so far all
    had one value is kept as that value and written as it times the count; the first
    other value (at ``change_at`` of 10 messages; None: never) makes it a list from
    there. Either way the part is the bytes :func:`wire.encode_named` writes for the
    same messages, before and after the destination confirmed the names (ids then
    taken from the Route's and the table's bytes), and decodes back to them."""
    def msgs() -> list[Message]:
        out = []
        for i in range(10):
            other = change_at is not None and i >= change_at and i % 2 == change_at % 2
            topic = "t/b" if other and column in ("topic", "all") else "t/a"
            origin = "d" if other and column in ("origin", "all") else "c"
            size = 3 if other and column in ("size", "all") else 7
            out.append(Message(topic, bytes([65 + i]) * size, 0, False, NO_PROPERTIES,
                               2.5, None, origin))
        return out

    tables = wire.NameTables()
    table = tables.of("b_1")
    books: dict[bytes, wire.NameBook] = {}
    for confirmed in (False, True):
        box = tables.outbox("b_1")
        messages = msgs()
        for m in messages:
            tid = table.ids.get(m.topic, -1)
            box.add_plain(m, tid, table.codes[tid] if tid >= 0 else b"")
        [(data, n)] = box.batches(b"a/1")
        assert n == 10
        ids = {**table.ids, **table.pending}
        heads = [x for m in messages for x in (ids[m.topic], ids[m.origin], len(m.payload))]
        defs = [] if confirmed else sorted({ids[m.topic] for m in messages}
                                           | {ids[m.origin] for m in messages})
        assert data == wire.encode_batch(b"a/1", [wire.encode_named(
            2.5, table.generation, defs, [table.raw[i] for i in defs], heads,
            [m.payload for m in messages])])
        _, parts = wire.decode_batch(data, books)  # (the receiver's book kept)
        assert [m for _, ms, _ in parts for m in ms] == messages
        table.confirmed(table.generation, list(range(len(table.raw))))


def test_mqtt_4_6_0_5_outbox_keeps_the_order_of_mixed_messages() -> None:
    """[MQTT-4.6.0-5] / [MQTT-4.6.0-6] (Ordered Topic): the Outbox gathers plain QoS 0
    messages into NAMED parts and others into ITEMS parts; decoded, all messages come
    back equal and in the order they were added, across parts and batches
    (MAX_BATCH, MAX_BATCH_BYTES), several created times (reads) and origins."""
    props = Properties(content_type="t", user_properties=(("k", "v"),))
    messages = []
    for i in range(5000):
        at = float(i // 700)  # one created time per read
        if i % 97 in (3, 4, 50):  # not plain: properties, retain, expiry
            m = Message(f"t/{i % 5}é", b"p%d" % i, 0, bool(i % 2),
                        props if i % 3 else NO_PROPERTIES, at,
                        None if i % 2 else 99.0, f"c{i % 2}")
        else:
            m = Message(f"t/{i % 5}é", b"x%d" % i * (i % 3 * 20), 0, False, NO_PROPERTIES,
                        at, None, "" if i % 11 == 0 else f"c{i % 2}")
        messages.append(m)
    box = wire.Outbox()
    for m in messages:
        if wire.is_plain(m):
            box.add_plain(m)
        else:
            box.add(wire.item(wire.record(m), []))
    payloads = box.batches(b"node-a/1")
    assert len(payloads) > 1
    assert sum(n for _, n in payloads) == len(messages)
    decoded: list[Message] = []
    plain_parts = 0
    for data, n in payloads:
        sender, parts = wire.decode_batch(data)
        assert sender == b"node-a/1"
        assert sum(len(ms) for _, ms, _ in parts) == n
        for seq, ms, groups_of in parts:
            assert seq == 0
            assert groups_of is None or groups_of == [[]] * len(ms)
            plain_parts += groups_of is None
            decoded += ms
    assert decoded == messages
    assert plain_parts < len(messages) // 20  # not one part per message
    first = decoded[0]  # one str per topic within a batch
    assert first.topic is next(m for m in decoded[1:] if m.topic == first.topic).topic


def test_items_added_as_pieces_are_the_same_bytes() -> None:
    """The path for QoS 0 messages that are not plain (record pieces, no join per
    record; topics and origins encoded once per turn) writes exactly what
    :func:`wire.item` of :func:`wire.record` would, between NAMED parts too, and a
    batch decodes back to the same messages."""
    props = Properties(content_type="t", user_properties=(("k", "v"),))
    messages = [
        Message(topic=f"t/{i % 3}é", payload=b"x" * (i % 5), qos=0, retain=bool(i % 2),
                properties=props if i % 4 == 0 else (Properties() if i % 4 == 1
                                                      else NO_PROPERTIES),
                created_at=10.0 + i // 100, expires_at=None if i % 3 else 50.0 + i,
                origin="" if i % 5 == 0 else f"client-{i % 2}")
        for i in range(2500)  # more than one part (wire.MAX_BATCH)
    ]
    joined, pieces = wire.Outbox(), wire.Outbox()
    names: dict[str, bytes] = {}
    for m in messages:
        if wire.is_plain(m):
            joined.add_plain(m)
            pieces.add_plain(m)
        else:
            joined.add(wire.item(wire.record(m), []))
            pieces.add_message(*wire.record_pieces(m, names))
    payloads = pieces.batches(b"node-a/1")
    assert payloads == joined.batches(b"node-a/1")
    decoded = [m for data, _ in payloads for _, ms, _ in wire.decode_batch(data)[1]
               for m in ms]
    assert decoded == messages


def test_add_qos0_fills_each_interested_nodes_outbox_and_stops_where_it_must() -> None:
    """The sending node's compiled common case: QoS 0 messages go, in order, to the
    Outbox of each node whose announced filters match (none for a topic nobody
    wants); it stops at a QoS 1/2 message and at one a shared group matches (the
    caller handles those), and goes on from where it is told."""
    remote = RemoteInterest("me_1")
    _put(remote, "a_1", "s/#")
    _put(remote, "b_1", "s/1")
    _put(remote, "b_1", "$share/g/q/#", 1)
    props = Properties(content_type="t")
    msgs = [
        Message("s/1", b"0", 0, False, NO_PROPERTIES, 1.0, None, "c"),  # a, b
        Message("s/2", b"1", 0, False, props, 1.0, None, "c"),  # a (not plain)
        Message("x", b"2", 0, False, NO_PROPERTIES, 1.0, None, "c"),  # nobody
        Message("s/1", b"3", 1, False, NO_PROPERTIES, 1.0, None, "c"),  # QoS 1: stop
        Message("s/2", b"4", 0, True, NO_PROPERTIES, 1.0, None, "c"),  # a (retained)
        Message("q/1", b"5", 0, False, NO_PROPERTIES, 1.0, None, "c"),  # shared: stop
        Message("s/1", b"6", 0, False, NO_PROPERTIES, 1.0, None, "c"),  # a, b
    ]
    out: dict[str, wire.Outbox] = {}
    names: dict[str, bytes] = {}
    tables = wire.NameTables()
    assert wire.add_qos0(msgs, 0, remote.trie, out, names, tables) == 3
    assert wire.add_qos0(msgs, 4, remote.trie, out, names, tables) == 5
    assert wire.add_qos0(msgs, 6, remote.trie, out, names, tables) == 7
    assert set(tables.tables) == {"a_1", "b_1"}  # one name table per destination

    def got(token: str) -> list[Message]:
        return [m for data, _ in out[token].batches(b"me/1")
                for _, ms, _ in wire.decode_batch(data)[1] for m in ms]

    assert got("a_1") == [msgs[0], msgs[1], msgs[4], msgs[6]]
    assert got("b_1") == [msgs[0], msgs[6]]
    assert set(out) == {"a_1", "b_1"}


def test_messages_round_trip_on_the_wire() -> None:
    message = Message(
        topic="a.b/c d", payload=b"\x00\xff", qos=2, retain=True,
        properties=Properties(content_type="t", user_properties=(("k", "v"),)),
        created_at=12.5, expires_at=99.0, origin="client-1",
    )
    other = Message(topic="a.b/c d", payload=b"", qos=0, retain=False,
                    properties=Properties(), created_at=13.0)
    data = wire.encode(b"node-a/1234", 7, [wire.record(message), wire.record(other)])
    assert wire.decode("a.b/c d", data) == (b"node-a/1234", 7, [message, other])
    with pytest.raises(Exception, match=r"."):
        wire.decode("other/topic", data)  # the record names its topic
    with pytest.raises(ValueError, match="version"):
        wire.decode("a.b/c d", b"\x02" + data[1:])
    with pytest.raises(ValueError, match=r"truncated|trailing"):
        wire.decode("a.b/c d", data[:-1])


def test_dedup_window() -> None:
    dedup = wire.Dedup(window=3)
    assert dedup.first(b"a", 1) and not dedup.first(b"a", 1)
    assert dedup.first(b"b", 1)  # per sender
    for seq in (2, 3, 4):
        assert dedup.first(b"a", seq)
    assert dedup.first(b"a", 1)  # fell out of the window of 3


class _Engine:
    """What Ownership asks of the engine: who is connected, and the takeover."""

    def __init__(self) -> None:
        self.clients: dict[str, object] = {}
        self.kicked: list[str] = []

    def taken_over_elsewhere(self, client_id: str) -> bool:
        self.kicked.append(client_id)
        return True


def _ownership() -> tuple[Ownership, _Engine]:
    engine = _Engine()
    return Ownership(engine, b"me", "b", 1, lambda: None), engine  # type: ignore[arg-type]


def test_mqtt_4_6_0_5_live_parts_behind_a_lost_one_wait_for_the_streams_copy() -> None:
    """[MQTT-4.6.0-5] across nodes: a sender's live QoS 1 parts 1, 3, 4 arrive (2's
    live copy was lost in a failover); 3 and 4 are held until the stream reader has
    routed 2 (marking the Dedup), then come out in order; a gap that never fills is
    given up on only when forced (after GAP_WAIT)."""
    dedup = wire.Dedup()
    order = wire.LiveOrder(0)
    assert dedup.first(b"n", 1)
    order.contig = 1
    order.held[3] = "three"
    order.held[4] = "four"
    assert order.ready(dedup, b"n", force=False) == []  # 2 not routed yet
    assert order.held and order.contig == 1
    assert dedup.first(b"n", 2)  # the stream's copy of 2 is routed
    assert order.ready(dedup, b"n", force=False) == [(3, "three"), (4, "four")]
    assert order.contig == 4 and not order.held and order.since == 0.0
    order.held[7] = "seven"  # 5 and 6 never reach the stream
    assert order.ready(dedup, b"n", force=False) == []
    assert order.ready(dedup, b"n", force=True) == [(7, "seven")]
    assert order.contig == 7


def test_mqtt_4_6_0_5_a_senders_first_live_parts_wait_for_its_earlier_stream_writes() -> None:
    """[MQTT-4.6.0-5] on a node that has just started (issue 14): the first live part
    seen from a sender is seq 5; its writes 3 and 4 (sent before it saw this node's
    heartbeat) come through the stream reader, which has not routed them: 5 and 6 are
    held (unsynced) until the reader routed 4, then come out in order; a sender whose
    first part is seq 1, or whose write below it was routed, starts in sync; a write
    that never reached the stream is passed once the reader passed the consumer's
    position (``target``), and a forced release ends the hold too."""
    dedup = wire.Dedup()
    assert wire.LiveOrder.first(dedup, b"n", 1).contig == 0
    assert dedup.first(b"n", 2)
    assert wire.LiveOrder.first(dedup, b"n", 3).contig == 2
    order = wire.LiveOrder.first(dedup, b"n", 5)
    assert order.contig == wire.UNSYNCED and order.start == 5
    assert order.advance(dedup, b"n") + 1 < 5  # held, as every part while unsynced
    order.held[5] = "five"
    order.held[6] = "six"
    assert order.ready(dedup, b"n", force=False) == []
    assert dedup.first(b"n", 3)  # the reader routes 3: not yet
    assert not order.synced(dedup, b"n", reader_next=10)
    assert order.ready(dedup, b"n", force=False) == []
    assert dedup.first(b"n", 4)  # ... and 4: the writes below 5 are through
    assert order.synced(dedup, b"n", reader_next=11)
    assert order.contig == 4
    assert order.ready(dedup, b"n", force=False) == [(5, "five"), (6, "six")]
    assert order.contig == 6 and not order.held

    lost = wire.LiveOrder.first(dedup, b"m", 9)  # 8 never reached the stream
    lost.held[9] = "nine"
    assert not lost.synced(dedup, b"m", reader_next=None)
    lost.target = 40  # the consumer had to deliver up to 40 when asked
    assert not lost.synced(dedup, b"m", reader_next=40)
    assert lost.synced(dedup, b"m", reader_next=41)
    assert lost.ready(dedup, b"m", force=False) == [(9, "nine")]
    idle = wire.LiveOrder.first(dedup, b"k", 7)  # nothing was left to route
    idle.target = 0
    assert idle.synced(dedup, b"k", reader_next=None) and idle.contig == 6
    forced = wire.LiveOrder.first(dedup, b"j", 4)
    forced.held[4] = "four"
    assert forced.ready(dedup, b"j", force=True) == [(4, "four")]
    assert forced.contig == 4


def test_ownership_later_foreign_claim_kicks_older_does_not() -> None:
    own, engine = _ownership()
    own.claim("x")
    own._acknowledged("x", 5)
    own.foreign("x", 4)  # older news
    assert engine.kicked == []
    own.foreign("x", 6)  # connected elsewhere later [MQTT-3.1.4-3]
    assert engine.kicked == ["x"]


def test_ownership_decides_after_our_claim_is_acknowledged() -> None:
    own, engine = _ownership()
    own.claim("x")
    own.foreign("x", 7)  # seen while ours is in flight
    assert engine.kicked == []
    own._acknowledged("x", 6)  # ours is older: the other one wins
    assert engine.kicked == ["x"]


def test_ownership_two_local_claims_in_a_row_count_the_last() -> None:
    """A reconnect to this node right after a foreign claim: our second claim is the
    newest, so the foreign one (between our two) must not close the new connection."""
    own, engine = _ownership()
    own.claim("x")
    own.claim("x")
    own._acknowledged("x", 5)
    own.foreign("x", 6)  # between our two claims
    own._acknowledged("x", 7)
    assert engine.kicked == []
    assert own.claims["x"] == 7


def test_ownership_a_waiting_connect_claimed_again_elsewhere_loses_at_acceptance() -> None:
    """[MQTT-3.1.4-2] across nodes: a resume claimed the id before its CONNECT was
    accepted (claim_now); a later claim of another process is told meanwhile, when no
    connection of the id is here to close. The CONNECT, once accepted, must not keep
    the id (accepted() is False: the node closes it with 0x8E); a prune meanwhile does
    not forget the waiting claim (its notices must count)."""
    own, _engine = _ownership()
    own.connect_waits("x")
    own.early.add("x")
    own.claims["x"] = None
    own._outstanding["x"] = 1
    own._acknowledged("x", 5)  # what claim_now does once its claim is acknowledged
    own.prune()  # not connected here yet: kept while the CONNECT waits
    assert own.claims == {"x": 5}
    own.foreign("x", 6)  # the later claim of another node
    assert "x" in own.superseded
    assert own.accepted("x") is False  # the waiting CONNECT lost
    assert own.accepted("x") is True and own._queue == ["x"]  # a later one claims anew


def test_ownership_a_waiting_connect_with_the_later_claim_keeps_the_id() -> None:
    """The other order: the foreign claim is older than ours (told late): the waiting
    CONNECT keeps the id, its resume's claim stands (no second claim at acceptance);
    a handover request naming an older claim is refused (later_than)."""
    own, engine = _ownership()
    own.connect_waits("x")
    own.early.add("x")
    own.claims["x"] = None
    own._outstanding["x"] = 1
    own.foreign("x", 4)  # seen while ours was in flight
    own._acknowledged("x", 7)
    assert not own.superseded and engine.kicked == []
    assert asyncio.run(own.later_than("x", 4)) and not asyncio.run(own.later_than("x", 8))
    assert own.accepted("x") is True and own._queue == []


class _Kv:
    """A compare-and-set KV as nats-py's (update with ``last``; 0 = create)."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[int, bytes]] = {}
        self.seq = 0

    async def update(self, key: str, value: bytes, last: int) -> int:
        from nats.js.errors import KeyWrongLastSequenceError  # noqa: PLC0415

        current = self.data.get(key, (0, b""))[0]
        if current != last:
            raise KeyWrongLastSequenceError()
        self.seq += 1
        self.data[key] = (self.seq, value)
        return self.seq

    async def get(self, key: str) -> object:
        from types import SimpleNamespace  # noqa: PLC0415

        from nats.js.errors import KeyNotFoundError  # noqa: PLC0415

        if key not in self.data:
            raise KeyNotFoundError()
        revision, value = self.data[key]
        return SimpleNamespace(revision=revision, value=value)


def test_ownership_fresh_tells_whether_the_claim_created_the_client_id() -> None:
    """Issue 14, per-connect cost: a claim that creates the key proves no process had
    the id (no record to read at this CONNECT); a claim that replaced one does not."""

    async def scenario() -> tuple[bool, bool, bool]:
        own, _engine = _ownership()
        kv = _Kv()
        own.claim("new")
        own._acknowledged("new", await own._claim(kv, "new"))  # type: ignore[arg-type]
        first = await own.fresh("new")
        own.claim("new")  # again, here: the key exists now
        own._acknowledged("new", await own._claim(kv, "new"))  # type: ignore[arg-type]
        second = await own.fresh("new")
        unknown = await own.fresh("never-claimed-here")
        return first, second, unknown

    assert asyncio.run(scenario()) == (True, False, False)


def test_ownership_a_claim_back_after_its_connection_ended_tells_gone() -> None:
    """A claim that comes back when its connection here has ended already (a client
    that moved on within a claim's round trip) tells the previous owner so (the
    revision's top bit), and that owner, holding the id, claims again instead of
    closing its connection: the newest claim names the process with the connection."""
    told: list[tuple[bytes, str, int, bool]] = []

    async def claim_gone() -> None:
        own, _engine = _ownership()
        kv = _Kv()
        await kv.update("c.x", b"other", 0)  # the other process claimed x first
        own._tell = lambda p, c, r, g: told.append((p, c, r, g))  # type: ignore[method-assign]
        own.claim("x")  # accepted here, then gone before the claim came back
        own._acknowledged("x", await own._claim(kv, "x"))  # type: ignore[arg-type]

    asyncio.run(claim_gone())
    assert told == [(b"other", "x", 2, True)]

    own, engine = _ownership()
    engine.clients["x"] = object()  # the other process: x is connected there
    own.claim("x")
    own._acknowledged("x", 1)
    own._queue.clear()
    own.reclaim("x")  # told "claimed at 2, gone"
    assert engine.kicked == [] and own._queue == ["x"]  # claims again, keeps it
    own._acknowledged("x", 3)
    assert asyncio.run(own.later_than("x", 2))
    del engine.clients["x"]
    own.reclaim("y")  # not held here: nothing
    assert own._queue == ["x"]
    assert not asyncio.run(own.later_than("x", 2))  # a claim without a connection


def test_a_kept_route_follows_interest_and_name_table_changes() -> None:
    """The sender keeps each topic's destinations and confirmed ids (``wire.Route``,
    one lookup per message); every change is seen at the next message, as a fresh
    match would: a node that announces or withdraws a filter, a shared group that
    appears, a confirmation (ids alone from then on), a new generation after a
    RESET (names defined again) and a forgotten table."""
    remote = RemoteInterest("me_1")
    tables = wire.NameTables()
    names: dict[str, bytes] = {}
    books: dict[bytes, wire.NameBook] = {}  # b_1's (a_1's are apart)
    books_a: dict[bytes, wire.NameBook] = {}

    def send(topic: str, payload: bytes) -> dict[str, list[Message]]:
        out: dict[str, wire.Outbox] = {}
        msg = Message(topic, payload, 0, False, NO_PROPERTIES, 1.0, None, "c")
        assert wire.add_qos0([msg], 0, remote.trie, out, names, tables) == 1
        got: dict[str, list[Message]] = {}
        for token, box in out.items():
            for data, _ in box.batches(b"me/1"):
                _, parts = wire.decode_batch(data, books if token == "b_1" else books_a)
                got.setdefault(token, []).extend(m for _, ms, _ in parts for m in ms)
        return got

    assert send("s/1", b"0") == {}  # nobody: a route with no destination is kept
    key_a = _put(remote, "a_1", "s/#")
    assert list(send("s/1", b"1")) == ["a_1"]
    _put(remote, "b_1", "s/+")
    assert sorted(send("s/1", b"2")) == ["a_1", "b_1"]
    remote.delete(key_a)
    assert list(send("s/1", b"3")) == ["b_1"]
    shared_key = _put(remote, "a_1", "$share/g/s/1")
    msg = Message("s/1", b"4", 0, False, NO_PROPERTIES, 1.0, None, "c")
    assert wire.add_qos0([msg], 0, remote.trie, {}, names, tables) == 0  # caller's
    remote.delete(shared_key)
    # b confirms what it learned: the next message names s/1 by id alone
    book = books[b"me/1"]
    table = tables.tables["b_1"]
    assert table.confirmed(book.generation, book.learned) == 2
    book.learned = []
    assert send("s/1", b"5") == {"b_1": [Message("s/1", b"5", 0, False, NO_PROPERTIES,
                                                 1.0, None, "c")]}
    assert book.learned == []  # no definitions: the kept id was used
    # b lost its table and asked for a new one: the kept id of s/1 (0) is not used
    # any more; in the new generation 0 is s/2, confirmed: s/1 must not go as 0
    books.clear()
    assert table.reset(table.generation)
    assert [m.topic for m in send("s/2", b"6")["b_1"]] == ["s/2"]
    book = books[b"me/1"]
    assert table.confirmed(book.generation, book.learned) == 2
    book.learned = []
    assert [(m.topic, m.payload) for m in send("s/1", b"6")["b_1"]] == [("s/1", b"6")]
    assert book.learned == [2]  # defined in the new generation
    # a table forgotten and made anew starts without confirmed ids
    assert table.confirmed(book.generation, book.learned) == 1
    tables.forget("b_1")
    books.clear()
    assert [m.payload for m in send("s/1", b"7")["b_1"]] == [b"7"]
    assert books[b"me/1"].unknown == 0


def test_the_receivers_match_per_name_id_follows_subscription_changes() -> None:
    """The receiving node keeps the trie's match of each name id (``NameBook.matches``)
    while the trie's ``version`` is the same: a subscription added or removed after
    a topic was matched, by id, changes what the next part's messages match, like
    ``trie.match`` of their topic."""
    trie = SubscriptionTrie()
    tables = wire.NameTables()
    books: dict[bytes, wire.NameBook] = {}

    def receive(*topics: str) -> list[list[str]]:
        box = tables.outbox("me_1")
        for i, topic in enumerate(topics):
            box.add_plain(Message(topic, b"%d" % i, 0, False, NO_PROPERTIES, 1.0, None, "c"))
        out: list[list[str]] = []
        for data, _ in box.batches(b"snd/1"):
            wire.decode_batch(data, books, trie)
            book = books[b"snd/1"]
            tables.tables["me_1"].confirmed(book.generation, book.learned)
            book.learned = []
            out += [sorted(m.direct) for part in book.found for m in part]
        return out

    first = SubscriptionEntry(client_id="x", topic_filter="a/+", qos=0)
    trie.add(first)
    assert receive("a/1", "b/1") == [["x"], []]
    assert receive("a/1", "b/1") == [["x"], []]  # by id alone now
    version = trie.version
    trie.add(SubscriptionEntry(client_id="y", topic_filter="b/1", qos=0))
    assert trie.version != version
    assert receive("a/1", "b/1") == [["x"], ["y"]]
    trie.remove(first)
    assert receive("a/1", "b/1") == [[], ["y"]]
    trie.add(SubscriptionEntry(client_id="z", topic_filter="#", qos=0))
    assert receive("b/1", "a/1", "c") == [["y", "z"], ["z"], ["z"]]


def test_qos0_only_tells_a_turn_with_nothing_for_the_stream_or_the_bucket() -> None:
    """``wire.qos0_only``: the sending node skips its per-message stream and retained
    work for a turn of QoS 0 messages none of which is retained, and only then."""
    def msg(qos: int, retain: bool) -> Message:
        return Message("t", b"", qos, retain, NO_PROPERTIES, 1.0, None, "c")

    assert wire.qos0_only([])
    assert wire.qos0_only([msg(0, False)] * 3)
    assert not wire.qos0_only([msg(0, False), msg(1, False)])
    assert not wire.qos0_only([msg(0, False), msg(2, False)])
    assert not wire.qos0_only([msg(0, True), msg(0, False)])


def _plain(topic: str, payload: bytes, origin: str = "c") -> Message:
    return Message(topic, payload, 0, False, NO_PROPERTIES, 1.0, None, origin)


def test_send_qos0_queues_each_destinations_batches_or_hands_the_turn_back() -> None:
    """``ClusterNode._forward``'s QoS 0 turn in one compiled call: per destination
    node, in the order first met, the same batches as the Outboxes of
    :func:`wire.add_qos0` (each node's messages in publication order,
    [MQTT-4.6.0-5]); a turn with a message another node's shared group matches is
    handed back (-1) with nothing queued."""
    remote = RemoteInterest("me_1")
    remote.put(interest_key("b_1", "s/#"), encode_value("s/#", 1), 0.0)
    remote.put(interest_key("a_1", "s/2"), encode_value("s/2", 1), 0.0)
    remote.put(interest_key("a_1", "$share/g/q/#"), encode_value("$share/g/q/#", 1), 0.0)
    msgs = [_plain(f"s/{i % 3}", b"%d" % i, "pub") for i in range(2500)]  # > one part
    commands: deque[tuple[int, str, bytes, int]] = deque()
    tables = wire.NameTables()
    assert wire.send_qos0(msgs, remote.trie, tables, b"me/1", "p.node.", commands) == (
        2500 + 833)
    assert [(kind, subject) for kind, subject, _, _ in commands] == [
        (wire.PUB, "p.node.b_1"), (wire.PUB, "p.node.a_1")]
    for _, subject, payload, count in commands:
        books: dict[bytes, wire.NameBook] = {}
        sender, parts = wire.decode_batch(payload, books)
        got = [m for _, ms, _ in parts for m in ms]
        assert sender == b"me/1" and len(got) == count
        want = msgs if subject.endswith("b_1") else [m for m in msgs if m.topic == "s/2"]
        assert got == want
    commands.clear()
    assert wire.send_qos0([*msgs[:5], _plain("q/1", b"x")], remote.trie, tables,
                          b"me/1", "p.node.", commands) == -1
    assert not commands
    assert wire.send_qos0([_plain("x/1", b"nobody")], remote.trie, tables, b"me/1",
                          "p.node.", commands) == 0
    assert not commands


def test_send_qos0_to_one_node_names_a_topic_by_its_id_alone_once_confirmed() -> None:
    """One destination (a Route's ``one_token``/``one_id``/``one_raw``): the first turn
    defines its names, a confirmation (a new ``NameTables.epoch``) makes the next
    turn send each topic by its id alone, and a new generation defines them again;
    every turn decodes to the messages sent, in order [MQTT-4.6.0-5]."""
    remote = RemoteInterest("me_1")
    remote.put(interest_key("b_1", "s/#"), encode_value("s/#", 1), 0.0)
    tables = wire.NameTables()
    books: dict[bytes, wire.NameBook] = {}
    msgs = [_plain(f"s/{i % 7}", b"%d" % i, "pub") for i in range(50)]
    sizes = []
    for turn in range(4):
        commands: deque[tuple[int, str, bytes, int]] = deque()
        assert wire.send_qos0(msgs, remote.trie, tables, b"me/1", "p.", commands) == 50
        [(_, subject, payload, count)] = commands
        _, parts = wire.decode_batch(payload, books)
        assert subject == "p.b_1" and count == 50
        assert [m for _, ms, _ in parts for m in ms] == msgs
        sizes.append(len(payload))
        table = tables.of("b_1")
        if turn == 0:
            table.confirmed(table.generation, list(table.pending.values()))
        elif turn == 1:
            table.renew()
    # turns: defined; by id alone; a new generation, defined again; not confirmed
    # in it yet, so defined again (a stale one_id would name another generation's id)
    assert sizes[1] < sizes[0] and sizes[2] == sizes[0] and sizes[3] == sizes[0]


def _reference_batches(tables: wire.NameTables, msgs: list[Message]) -> list[bytes]:
    """The batches one Outbox gives ``msgs`` message by message (add_plain,
    add_message): what add_qos0 gave before its runs (i14-ratio11)."""
    box = tables.outbox("b_1")
    for m in msgs:
        if wire.is_plain(m):
            box.add_plain(m)
        else:
            box.add_message(*wire.record_pieces(m, {}))
    return [data for data, _ in box.batches(b"me/1")]


@pytest.mark.parametrize("turn", ["one read", "mixed"])
def test_add_qos0_runs_of_one_part_give_the_same_bytes(turn: str) -> None:
    """i14-ratio11: after a plain message into the one destination's Outbox, add_qos0
    adds the messages that continue its NAMED part in one loop (Outbox.add_run). The
    batches are byte for byte those of adding each message on its own, names defined
    and then confirmed, and decode to the messages sent, in order [MQTT-4.6.0-5]:
    one read's messages (one origin, one time) on many topics, more than a part holds
    (MAX_BATCH, MAX_BATCH_BYTES); and a turn where the run is broken at every kind
    of message that does not continue it (another created time, origin, payload
    size, a retained message or one with properties, a topic not yet confirmed or
    no node wants, a payload that fills the part)."""
    remote = RemoteInterest("me_1")
    remote.put(interest_key("b_1", "s/#"), encode_value("s/#", 1), 0.0)
    if turn == "one read":
        msgs = [_plain(f"s/{i % 300}", b"x" * 64, "pub") for i in range(2600)]
        msgs += [_plain(f"s/{i % 3}", b"%d" % i, "pub") for i in range(5000)]
    else:
        msgs = []
        for i in range(900):
            m = _plain(f"s/{i % 40}", b"%03d" % i, "pub")
            k = i % 50
            if k == 7:
                m.created_at = 2.0 + i  # another read
            elif k == 11:
                m.origin = "other"
            elif k == 13:
                m.payload = b"longer payload %d" % i
            elif k == 17:
                m.retain = True
            elif k == 19:
                m.properties = Properties(content_type="t")
            elif k == 23:
                m.topic = f"s/new/{i}"  # defined in the part, not yet confirmed
            elif k == 29:
                m.topic = f"nobody/{i}"
            elif k == 31:
                m.payload = b"y" * 70_000  # the part reaches MAX_BATCH_BYTES
            msgs.append(m)
    tables, ref = wire.NameTables(), wire.NameTables()
    books: dict[bytes, wire.NameBook] = {}
    for _ in range(3):  # defined; confirmed (by id alone); once more
        commands: deque[tuple[int, str, bytes, int]] = deque()
        wanted = [m for m in msgs if m.topic.startswith("s/")]
        assert wire.send_qos0(msgs, remote.trie, tables, b"me/1", "p.",
                              commands) == len(wanted)
        got = [payload for _, _, payload, _ in commands]
        assert got == _reference_batches(ref, wanted)
        decoded = [m for payload in got for _, ms, _ in wire.decode_batch(payload, books)[1]
                   for m in ms]
        assert decoded == wanted
        for t in (tables.of("b_1"), ref.of("b_1")):
            t.confirmed(t.generation, list(t.pending.values()))
