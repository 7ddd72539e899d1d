"""The cluster room's pure parts: interest ref-counting (one NATS subscription per
distinct filter) and the inter-node message format with de-duplication."""

from __future__ import annotations

import pytest

from iotbroker.cluster import wire
from iotbroker.cluster.interest import Interest, Pair
from iotbroker.cluster.ownership import Ownership
from iotbroker.codec.packets import Properties
from iotbroker.message import Message


def test_distinct_filters_are_reference_counted() -> None:
    trie: set[Pair] = set()
    interest = Interest()

    def change(*pairs: Pair, add: bool = True) -> tuple[list[str], list[str]]:
        for pair in pairs:
            (trie.add if add else trie.discard)(pair)
        return interest.update(pairs, trie.__contains__)

    assert change(("c1", "a/+"), ("c2", "a/+")) == (["a/+"], [])
    assert change(("c3", "$share/g/a/+")) == ([], [])  # counts for its plain filter
    assert change(("c1", "a/+"), add=False) == ([], [])
    assert change(("c2", "a/+"), ("c3", "$share/g/a/+"), add=False) == ([], ["a/+"])
    assert len(interest) == 0
    # a touched pair that did not change (resubscribe) changes nothing
    assert change(("c1", "b")) == (["b"], [])
    assert interest.update([("c1", "b")], trie.__contains__) == ([], [])


def test_gone_and_back_in_one_turn_is_no_change() -> None:
    interest = Interest()
    present = {("c1", "x")}
    interest.update([("c1", "x")], present.__contains__)
    # c1 leaves and c2 arrives on the same filter within one turn
    now = {("c2", "x")}
    assert interest.update([("c1", "x"), ("c2", "x")], now.__contains__) == ([], [])


def test_reconcile_drops_pairs_that_left_without_an_event() -> None:
    interest = Interest()
    trie = {("c1", "x"), ("c2", "y")}
    interest.update(list(trie), trie.__contains__)
    trie.discard(("c2", "y"))  # an expired session: the engine reports nothing
    assert interest.reconcile(trie.__contains__) == ["y"]
    assert "x" in interest and "y" not in interest


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
