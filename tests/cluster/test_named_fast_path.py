"""The receiving node's compiled common case (issue 14, i14-ratio): a batch of NAMED
parts only is checked whole (``wire.scan_named``) and each message routed as it is
decoded (``wire.route_named``), instead of ``wire.decode_batch`` building every
part's lists first. What it delivers, and to whom, must be what decoding the batch and
routing each message through ``Router.publish`` gives; anything else (ITEMS parts,
two generations, a malformed batch) is left to ``decode_batch``, untouched.
Plain objects: a real router (tests/core/test_router.py's World), no NATS."""

from __future__ import annotations

import pytest

from iotbroker.cluster import wire
from iotbroker.codec.encode import encode_publish
from iotbroker.codec.packets import NO_PROPERTIES
from iotbroker.message import Message
from tests.core.test_router import World, sub

SENDER = b"snd/1"


def _msg(topic: str, payload: bytes, origin: str = "pub", at: float = 1.0) -> Message:
    return Message(topic, payload, 0, False, NO_PROPERTIES, at, None, origin)


def _batches(tables: wire.NameTables, messages: list[Message]) -> list[bytes]:
    box = tables.outbox("rcv_1")
    for m in messages:
        box.add_plain(m)
    return [data for data, _ in box.batches(SENDER)]


def _seen(w: World, client_id: str) -> list[tuple[str, bytes, str, float]]:
    return [(d.message.topic, d.message.payload, d.message.origin, d.message.created_at)
            for d in w.received(client_id)]


def _route(w: World, books: dict[bytes, wire.NameBook], data: bytes) -> int:
    batch = wire.scan_named(data, books)
    assert batch is not None
    return wire.route_named(batch, w.trie, w.router, 0.0)


def _route_both(fast: World, slow: World, tables: wire.NameTables,
                sent: list[Message]) -> None:
    """``sent`` to ``fast`` through scan_named/route_named and to ``slow`` through
    decode_batch and ``Router.publish``, twice: with the names defined, then
    confirmed (the sender's ids alone)."""
    books: dict[bytes, wire.NameBook] = {}
    slow_books: dict[bytes, wire.NameBook] = {}
    for _ in range(2):  # defined, then confirmed
        for data in _batches(tables, sent):
            assert _route(fast, books, data) == len(sent)
            for _, messages, _ in wire.decode_batch(data, slow_books)[1]:
                for m in messages:
                    slow.router.publish(m, 0.0, wire.NO_GROUPS)
        tables.tables["rcv_1"].confirmed(books[SENDER].generation, books[SENDER].learned)
        books[SENDER].learned = []


def test_mqtt_4_6_0_5_routes_what_decode_batch_decodes_in_order() -> None:
    """Several NAMED parts (created times differ), names defined then confirmed, 300
    topics: each subscriber gets exactly the messages that decoding the batch and
    publishing each one gives it, in the order sent [MQTT-4.6.0-5], and the book
    learns the same ids; No Local holds for the publisher's own subscription
    [MQTT-3.8.3-3]."""
    fast, slow = World(), World()
    for w in (fast, slow):
        w.subscribe(w.client("all"), sub("#", qos=0))
        w.subscribe(w.client("some"), sub("dev/+/7", qos=0))
        w.subscribe(w.client("pub"), sub("#", qos=0, no_local=True))
    tables = wire.NameTables()
    books: dict[bytes, wire.NameBook] = {}
    slow_books: dict[bytes, wire.NameBook] = {}
    sent = [_msg(f"dev/{i % 300}/{i % 9}", b"%d" % i, origin=f"pub{'' if i % 3 else 'x'}",
                 at=float(i // 250)) for i in range(1200)]
    for round_ in range(2):  # defined, then (confirmed) by id alone
        batches = _batches(tables, sent)
        assert len(batches) == 1 and batches[0].count(b"\x02") >= 5  # several parts
        routed = 0
        for data in batches:
            routed += _route(fast, books, data)
            for _, messages, _ in wire.decode_batch(data, slow_books)[1]:
                for m in messages:
                    slow.router.publish(m, 0.0, wire.NO_GROUPS)
        assert routed == len(sent)
        book, slow_book = books[SENDER], slow_books[SENDER]
        assert book.learned == slow_book.learned
        assert book.names == slow_book.names and book.unknown == slow_book.unknown == 0
        if round_ == 0:
            assert book.learned
            tables.tables["rcv_1"].confirmed(book.generation, book.learned)
        book.learned = []
        slow_book.learned = []
    for client_id in ("all", "some", "pub"):
        assert _seen(fast, client_id) == _seen(slow, client_id)
    assert len(_seen(fast, "all")) == 2 * len(sent)
    assert _seen(fast, "all")[:len(sent)] == [
        (m.topic, m.payload, m.origin, m.created_at) for m in sent]
    assert {t for t, _, _, _ in _seen(fast, "some")} == {f"dev/{i}/7" for i in range(300)
                                                        if f"dev/{i}/7" in
                                                        {m.topic for m in sent}}
    assert all(o == "pubx" for _, _, o, _ in _seen(fast, "pub"))  # its own: none


def test_other_batches_are_left_to_decode_batch_untouched() -> None:
    """ITEMS parts, parts of two generations, a batch of another version and every
    truncation of a NAMED batch that decode_batch refuses: None, and the books are
    as they were (a truncation at a part's end is a batch of the parts before)."""
    tables = wire.NameTables()
    named = _batches(tables, [_msg("a/b", b"1"), _msg("a/c", b"2", at=2.0)])[0]
    items = wire.encode_batch(SENDER, [wire.encode_part(0, [wire.item(
        wire.record(_msg("a/b", b"r")), [])])])
    mixed = wire.encode_batch(SENDER, [
        wire.encode_named(1.0, 5, [0, 1], [b"a", b"o"], [0, 1, 1], [b"x"]),
        wire.encode_named(1.0, 6, [0, 1], [b"a", b"o"], [0, 1, 1], [b"y"])])
    other_version = bytes([3]) + named[1:]
    books: dict[bytes, wire.NameBook] = {}
    for data in (items, mixed, other_version):
        assert wire.scan_named(data, books) is None
        assert books == {}
    refused = 0
    for n in range(len(named)):
        try:
            wire.decode_batch(named[:n], {})
        except ValueError:
            refused += 1
            assert wire.scan_named(named[:n], books) is None
            assert books == {}
        else:  # a batch without parts goes to decode_batch too
            assert (wire.scan_named(named[:n], {}) is None) == (n == 2 + len(SENDER))
    assert refused >= len(named) - 2
    assert wire.scan_named(named, books) is not None


def test_ids_it_does_not_hold_are_left_out_and_counted() -> None:
    """A receiver that lost a sender's book meets confirmed ids it was never given:
    those messages are not delivered under any name, only counted (``unknown``), as
    decode_batch does; the sender's RESET follows (node.py)."""
    w = World()
    w.subscribe(w.client("all"), sub("#", qos=0))
    tables = wire.NameTables()
    books: dict[bytes, wire.NameBook] = {}
    msgs = [_msg(f"t/{i}", b"%d" % i) for i in range(5)]
    for data in _batches(tables, msgs):
        assert _route(w, books, data) == 5
    tables.tables["rcv_1"].confirmed(books[SENDER].generation, books[SENDER].learned)
    books.clear()  # the receiver lost it
    for data in _batches(tables, msgs):
        assert _route(w, books, data) == 0
    assert books[SENDER].unknown == 5
    assert len(w.received("all")) == 5


def test_a_redefinition_is_refused_and_the_book_dropped() -> None:
    """An id defined again with another name in one generation: ValueError (the node
    counts the batch undecodable) and the sender's book is dropped, before any of the
    batch's messages is routed."""
    w = World()
    w.subscribe(w.client("all"), sub("#", qos=0))
    books: dict[bytes, wire.NameBook] = {}
    one = wire.encode_batch(SENDER, [wire.encode_named(1.0, 3, [0, 1], [b"x", b"o"],
                                                       [0, 1, 1], [b"p"])])
    assert _route(w, books, one) == 1
    two = wire.encode_batch(SENDER, [
        wire.encode_named(1.0, 3, [], [], [0, 1, 1], [b"q"]),
        wire.encode_named(2.0, 3, [0], [b"y"], [0, 1, 1], [b"r"])])
    with pytest.raises(ValueError, match="redefines"):
        wire.scan_named(two, books)
    assert SENDER not in books
    assert [d.message.payload for d in w.received("all")] == [b"p"]


def test_the_kept_match_follows_subscription_changes() -> None:
    """The match kept per name id is taken again after the trie changed (its
    ``version``): a subscription added or removed between batches is seen."""
    w = World()
    a = w.client("a")
    w.subscribe(a, sub("x/1", qos=0))
    tables = wire.NameTables()
    books: dict[bytes, wire.NameBook] = {}
    msgs = [_msg("x/1", b"1"), _msg("x/2", b"2")]
    for data in _batches(tables, msgs):
        _route(w, books, data)
    assert [d.message.payload for d in w.received("a")] == [b"1"]
    w.subscribe(a, sub("x/2", qos=0))
    for data in _batches(tables, msgs):
        _route(w, books, data)
    assert [d.message.payload for d in w.received("a")] == [b"1", b"1", b"2"]
    w.router.unsubscribe(a, ["x/1"])
    for data in _batches(tables, msgs):
        _route(w, books, data)
    assert [d.message.payload for d in w.received("a")] == [b"1", b"1", b"2", b"2"]


@pytest.mark.parametrize("odd", [None, 0, 5, 63])
def test_mqtt_4_6_0_5_columns_of_one_value_read_once_per_part(odd: int | None) -> None:
    """A part whose origin column (one MQTT read: one client's messages) or size
    column has one value is read once per part (i14-ratio9): what each subscriber
    gets, in order [MQTT-4.6.0-5], is still what decoding the batch gives, also when
    one message (first, middle, last: ``odd``) has another origin and size."""
    fast, slow = World(), World()
    for w in (fast, slow):
        w.subscribe(w.client("all"), sub("#", qos=0))
    tables = wire.NameTables()
    sent = [_msg(f"d/{i % 7}", b"%02d" % i, origin="pub") for i in range(64)]
    if odd is not None:
        sent[odd] = _msg("d/x", b"longer", origin="other")
    _route_both(fast, slow, tables, sent)
    assert _seen(fast, "all") == _seen(slow, "all")
    assert _seen(fast, "all")[:len(sent)] == [
        (m.topic, m.payload, m.origin, m.created_at) for m in sent]


def test_an_unknown_origin_of_a_whole_part_leaves_it_out() -> None:
    """A part whose every message names one origin id the book does not hold: none is
    delivered, all are counted (``unknown``), as decode_batch does."""
    w = World()
    w.subscribe(w.client("all"), sub("#", qos=0))
    books: dict[bytes, wire.NameBook] = {}
    data = wire.encode_batch(SENDER, [wire.encode_named(
        1.0, 3, [0], [b"t"], [0, 9, 1, 0, 9, 1, 0, 9, 1], [b"a", b"b", b"c"])])
    assert _route(w, books, data) == 0
    assert books[SENDER].unknown == 3
    assert w.received("all") == []


def _copies(w: World, client_id: str) -> list[tuple[object, ...]]:
    return [(d.message.topic, d.message.payload, d.message.origin, d.message.created_at,
             d.qos, d.retain, d.subscription_identifiers, d.share_group)
            for d in w.received(client_id)]


@pytest.mark.parametrize("odd", [None, 0, 17, 39])
def test_publish_remote_gives_each_subscriber_what_publish_gives(odd: int | None) -> None:
    """i14-ratio10: ``route_named`` routes through ``Router.publish_remote`` (the
    match per name id as ``RemoteTargets``) instead of building the match's
    ``Router.publish`` call. Every client gets the same copies, in the same order
    [MQTT-4.6.0-5], as decoding the batch and ``Router.publish`` with no shared
    groups: QoS the minimum of the publish's 0 and the subscription's
    [MQTT-3.8.4-6], RETAIN 0 on a live delivery also under Retain As Published (the
    message's is 0) [MQTT-3.3.1-9], [MQTT-3.3.1-13], one copy for overlapping
    subscriptions carrying every matching Subscription Identifier [MQTT-3.3.4-2],
    [MQTT-3.3.4-3], none of its own messages to a No Local subscriber
    [MQTT-3.8.3-3] (also where another of its subscriptions overlaps); a shared
    group gets none of another node's NAMED messages (their groups were picked on
    the sender's node, MQTT 5.0 §4.8.2); recipients with the same copy share one
    ``Delivery`` as with ``publish``. ``odd``: one message of another origin (the
    No Local client's) and size, first, in the middle, last, or none."""
    fast, slow = World(), World()
    clients = ("plain", "ids", "overlap", "nolocal", "rap", "q2", "m1", "m2", "solo", "nlsolo",
               "off")
    for w in (fast, slow):
        w.subscribe(w.client("plain"), sub("s/#", qos=0))
        w.subscribe(w.client("ids"), sub("s/+/1", qos=1), sub_id=7)
        ov = w.client("overlap")
        w.subscribe(ov, sub("s/#", qos=1), sub_id=3)
        w.subscribe(ov, sub("s/a/+", qos=2), sub_id=4)
        w.subscribe(ov, sub("s/b/1", qos=0))
        nl = w.client("nolocal")
        w.subscribe(nl, sub("s/#", qos=0, no_local=True))
        w.subscribe(nl, sub("s/a/1", qos=1), sub_id=9)
        w.subscribe(w.client("rap"), sub("s/b/+", qos=1, retain_as_published=True))
        w.subscribe(w.client("q2"), sub("s/+/2", qos=2))
        w.subscribe(w.client("m1"), sub("$share/g/s/#", qos=0))
        w.subscribe(w.client("m2"), sub("$share/g/s/#", qos=1))
        w.subscribe(w.client("off", expiry=600), sub("s/a/#", qos=0))
        w.registry.sessions["off"].detach(0.0)
        w.subscribe(w.client("nlsolo"), sub("v/#", qos=1, no_local=True))  # alone on v/
        solo = w.client("solo")  # the only subscriber of u/...: two overlapping
        w.subscribe(solo, sub("u/#", qos=1), sub_id=5)
        w.subscribe(solo, sub("u/+", qos=0), sub_id=6)
    tables = wire.NameTables()
    sent = [_msg(f"s/{'ab'[i % 2]}/{i % 3}", b"%02d" % i, origin="pub") for i in range(40)]
    sent.append(_msg("t/none", b"nobody here", origin="pub"))
    sent += [_msg("u/1", b"solo 1", origin="pub"), _msg("u/2/3", b"solo 2", origin="pub"),
             _msg("v/1", b"not its own"), _msg("v/1", b"its own", origin="nlsolo"),
             _msg("v/2", b"not its own either")]
    if odd is not None:
        sent[odd] = _msg("s/a/1", b"from the no-local client", origin="nolocal")
    _route_both(fast, slow, tables, sent)
    for client_id in clients[:-1]:
        assert _copies(fast, client_id) == _copies(slow, client_id), client_id
    assert _copies(fast, "plain") and _copies(fast, "overlap")
    assert _copies(fast, "m1") == _copies(fast, "m2") == []
    assert next(c[6] for c in _copies(fast, "overlap") if c[0] == "s/a/1") == (3, 4)
    assert [c[6] for c in _copies(fast, "solo")] == [(5, 6), (5,)] * 2
    assert [c[1] for c in _copies(fast, "nlsolo")] == [b"not its own",
                                                       b"not its own either"] * 2
    assert all(c[2] != "nolocal" or c[0] == "s/a/1" for c in _copies(fast, "nolocal"))
    assert fast.metrics.messages_dropped_qos0_offline == \
        slow.metrics.messages_dropped_qos0_offline > 0
    # the same Delivery objects shared between recipients as publish's copies
    for w in (fast, slow):
        first = w.received("plain")
        assert any(d is e for d in first for e in w.received("nolocal"))
    pairs = [(i, j) for i, d in enumerate(fast.received("plain"))
             for j, e in enumerate(fast.received("nolocal")) if d is e]
    assert pairs == [(i, j) for i, d in enumerate(slow.received("plain"))
                     for j, e in enumerate(slow.received("nolocal")) if d is e]


def test_publish_remote_skips_a_session_the_registry_no_longer_holds() -> None:
    """A subscriber the trie still names but the registry no longer holds gets
    nothing, and the others still do (as ``Router.publish``)."""
    fast, slow = World(), World()
    for w in (fast, slow):
        w.subscribe(w.client("gone"), sub("g/#", qos=0))
        w.subscribe(w.client("here"), sub("g/#", qos=0))
        del w.registry.sessions["gone"]
    tables = wire.NameTables()
    books: dict[bytes, wire.NameBook] = {}
    msgs = [_msg("g/1", b"1"), _msg("g/2", b"2")]
    for data in _batches(tables, msgs):
        assert _route(fast, books, data) == 2
    for m in msgs:
        slow.router.publish(m, 0.0, wire.NO_GROUPS)
    assert _copies(fast, "here") == _copies(slow, "here")
    assert [c[1] for c in _copies(fast, "here")] == [b"1", b"2"]
    assert fast.received("gone") == slow.received("gone") == []


@pytest.mark.parametrize("odd", [None, 0, 13, 29])
def test_a_named_message_carries_its_topic_bytes_as_defined(odd: int | None) -> None:
    """i14-ratio11: a NAMED message built on the receiving node carries its topic's
    bytes as the part defined them (``Message.topic_raw``, kept per name id in the
    book), by ``route_named`` and ``decode_batch`` alike: exactly the topic's UTF-8
    encoding (non-ASCII topics too, MQTT strings are UTF-8 [MQTT-1.5.4-1]), with the
    names defined and then by id alone, also when one message (``odd``) has another
    origin and size; so the PUBLISH a subscriber gets, MQTT 3.1.1 or 5.0, is the same
    as from the topic string [MQTT-3.3.2-1] (the Topic Name a UTF-8 string)."""
    fast, slow = World(), World()
    for w in (fast, slow):
        w.subscribe(w.client("all"), sub("#", qos=0))
    tables = wire.NameTables()
    topics = ["d/1", "dév/ü/中", "~tilde/é中", "a//b/", "/x"]
    sent = [_msg(topics[i % len(topics)], b"%02d" % i, origin="pub") for i in range(30)]
    if odd is not None:
        sent[odd] = _msg("d/é", b"another size", origin="other")
    _route_both(fast, slow, tables, sent)
    for w in (fast, slow):
        got = w.received("all")
        assert [(d.message.topic, d.message.payload) for d in got] == [
            (m.topic, m.payload) for m in sent] * 2
        for d in got:
            assert d.message.topic_raw == d.message.topic.encode("utf-8")
            for props in (None, b"\x00"):  # MQTT 3.1.1, 5.0 (no properties)
                assert encode_publish(d.message.topic, d.message.payload, 0, False,
                                      False, None, props, d.message.topic_raw) == \
                    encode_publish(d.message.topic, d.message.payload, 0, False, False,
                                   None, props)
    # one bytes object per name id (not a copy per message)
    raws = {id(d.message.topic_raw) for d in fast.received("all")}
    assert len(raws) == len({m.topic for m in sent})
