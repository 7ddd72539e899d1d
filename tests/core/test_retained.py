"""Retained message store (MQTT 3.1.1 §3.3.1.3, MQTT 5.0 §3.3.1.3 and §4.7)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from iotbroker.codec.packets import NO_PROPERTIES
from iotbroker.core.retained import RetainedStore
from iotbroker.core.topics import filter_matches
from iotbroker.message import Message


def msg(topic: str, payload: bytes = b"x", expires_at: float | None = None) -> Message:
    return Message(topic, payload, 1, True, NO_PROPERTIES, created_at=0.0, expires_at=expires_at)


def store_with(*topics: str) -> RetainedStore:
    store = RetainedStore()
    for t in topics:
        store.set(msg(t, t.encode() or b"-"))
    return store


def topics_of(messages: list[Message]) -> set[str]:
    return {m.topic for m in messages}


def test_set_get_replace_and_len() -> None:
    store = RetainedStore()
    store.set(msg("a/b", b"123"))
    store.set(msg("a/c", b"45"))
    assert len(store) == 2
    assert store.get("a/b") == msg("a/b", b"123")
    new = msg("a/b", b"9")
    store.set(new)
    assert store.get("a/b") is new
    assert len(store) == 2
    assert store.match("a/b") == [new]
    assert "a/b" in store
    assert store.get("a") is None
    assert [m.topic for m in store.all()] == ["a/b", "a/c"]


def test_mqtt_3_3_1_6_v5_empty_payload_removes_retained_message() -> None:
    # MQTT 5.0 [MQTT-3.3.1-6] / MQTT 3.1.1 [MQTT-3.3.1-10]
    store = store_with("a/b")
    store.set(msg("a/b", b""))
    assert store.get("a/b") is None
    assert len(store) == 0


def test_mqtt_3_3_1_7_v5_zero_byte_message_never_stored() -> None:
    # MQTT 5.0 [MQTT-3.3.1-7] / MQTT 3.1.1 [MQTT-3.3.1-11]
    store = RetainedStore()
    store.set(msg("a", b""))
    assert len(store) == 0
    assert store.match("#") == []


def test_delete_and_prune() -> None:
    store = store_with("a/b/c", "a/b", "x//y")
    assert store.delete("a/b/c") is True
    assert store.delete("a/b/c") is False
    assert store.delete("nothing") is False
    assert topics_of(store.match("#")) == {"a/b", "x//y"}
    assert store.delete("a/b")
    assert store.delete("x//y")
    assert store._root.children is None
    assert len(store) == 0


def test_delete_keeps_parent_message() -> None:
    store = store_with("a", "a/b")
    store.delete("a/b")
    assert store.match("a/#") == [store.get("a")]


def test_match_literal_plus_and_hash() -> None:
    store = store_with(
        "sport",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player2",
        "sport/",
        "/finance",
        "a//b",
    )
    assert topics_of(store.match("sport/tennis/player1")) == {"sport/tennis/player1"}
    assert topics_of(store.match("sport/tennis/+")) == {
        "sport/tennis/player1",
        "sport/tennis/player2",
    }
    assert topics_of(store.match("sport/+")) == {"sport/"}
    assert topics_of(store.match("sport/#")) == {
        "sport",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player2",
        "sport/",
    }
    assert topics_of(store.match("sport/tennis/player1/#")) == {
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
    }
    assert topics_of(store.match("+/+")) == {"sport/", "/finance"}
    assert topics_of(store.match("+")) == {"sport"}
    assert topics_of(store.match("a/+/b")) == {"a//b"}
    assert topics_of(store.match("+/tennis/#")) == {
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player2",
    }
    assert store.match("nothing/#") == []
    assert store.match("sport/tennis") == []


def test_mqtt_4_7_2_1_dollar_topics_not_matched_by_leading_wildcard() -> None:
    store = store_with("$SYS/broker/uptime", "$SYS", "$", "a", "a/$b")
    assert topics_of(store.match("#")) == {"a", "a/$b"}
    assert topics_of(store.match("+")) == {"a"}
    assert topics_of(store.match("+/broker/uptime")) == set()
    assert topics_of(store.match("+/#")) == {"a", "a/$b"}
    assert topics_of(store.match("$SYS/#")) == {"$SYS", "$SYS/broker/uptime"}
    assert topics_of(store.match("$SYS/+/uptime")) == {"$SYS/broker/uptime"}
    assert topics_of(store.match("$")) == {"$"}
    assert topics_of(store.match("a/+")) == {"a/$b"}


def test_mqtt_4_7_3_4_no_normalisation() -> None:
    store = store_with("a/b", "a/b/", "A/b")
    assert topics_of(store.match("a/b")) == {"a/b"}
    assert topics_of(store.match("a/+")) == {"a/b"}
    assert topics_of(store.match("a/b/+")) == {"a/b/"}


def test_match_many_levels_without_recursion_limit() -> None:
    deep = "/".join(["x"] * 5000)
    store = store_with(deep)
    assert topics_of(store.match("/".join(["+"] * 5000))) == {deep}
    assert topics_of(store.match("x/#")) == {deep}
    assert store.delete(deep)


def test_drop_expired_and_next_expiry() -> None:
    store = RetainedStore()
    store.set(msg("a", expires_at=10.0))
    store.set(msg("b", expires_at=20.0))
    store.set(msg("c"))
    assert store.next_expiry() == 10.0
    assert store.drop_expired(5.0) == []
    assert topics_of(store.match("#", now=15.0)) == {"b", "c"}  # filtered, still stored
    assert len(store) == 3
    assert store.drop_expired(10.0) == ["a"]
    assert store.next_expiry() == 20.0
    # Replacing "b" with a message without expiry makes its old deadline stale.
    store.set(msg("b"))
    assert store.next_expiry() is None
    assert store.drop_expired(100.0) == []
    assert topics_of(store.match("#")) == {"b", "c"}


def test_replaced_message_keeps_new_expiry() -> None:
    store = RetainedStore()
    store.set(msg("a", expires_at=10.0))
    store.set(msg("a", expires_at=30.0))
    assert store.drop_expired(20.0) == []
    assert store.next_expiry() == 30.0
    assert store.drop_expired(30.0) == ["a"]
    assert len(store) == 0


def test_expiry_heap_stays_bounded_under_churn() -> None:
    store = RetainedStore()
    for i in range(10_000):
        store.set(msg(f"t/{i % 10}", expires_at=float(i)))
    assert len(store._expiry_heap) <= 2 * len(store) + 65
    assert sorted(store.drop_expired(1e9)) == sorted(f"t/{i}" for i in range(10))


# -- property test against a brute-force reference ---------------------------------------

LEVELS = ["a", "b", "", "$x", "$"]
topic_st = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def filter_st(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from([*LEVELS, "+"]), min_size=0, max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


@settings(max_examples=300, deadline=None)
@given(
    topics=st.lists(topic_st, max_size=20),
    deletions=st.lists(topic_st, max_size=5),
    filters=st.lists(filter_st(), min_size=1, max_size=8),
)
def test_retained_match_equals_brute_force(
    topics: list[str], deletions: list[str], filters: list[str]
) -> None:
    store = RetainedStore()
    model: dict[str, Message] = {}
    for t in topics:
        m = msg(t, t.encode() or b"-")
        store.set(m)
        model[t] = m
    for t in deletions:
        assert store.delete(t) == (model.pop(t, None) is not None)
    assert len(store) == len(model)
    for f in filters:
        got = store.match(f)
        assert len(got) == len({m.topic for m in got})
        assert topics_of(got) == {t for t in model if filter_matches(f, t)}
