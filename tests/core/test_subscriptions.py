"""The subscription trie (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7 and §4.8.2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotbroker.core.subscriptions import (
    EMPTY_MATCHES,
    Matches,
    SubscriptionEntry,
    SubscriptionTrie,
)
from iotbroker.core.topics import filter_matches, parse_shared


def sub(client_id: str, topic_filter: str, qos: int = 0, **kw: object) -> SubscriptionEntry:
    group, _ = parse_shared(topic_filter)
    return SubscriptionEntry(client_id, topic_filter, qos, share_group=group, **kw)  # type: ignore[arg-type]


class Subscriptions:
    """The trie plus the per-client index the sessions keep
    (``Session.subscriptions``, the only one in the broker): what the router and the
    session registry do around ``SubscriptionTrie.add`` / ``remove``, so these tests
    drive the trie through the same sequences of subscribe, replace and unsubscribe."""

    def __init__(self, cache_size: int = 100_000) -> None:
        self.trie = SubscriptionTrie(cache_size)
        self.by_client: dict[str, dict[str, SubscriptionEntry]] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self.trie, name)

    def __len__(self) -> int:
        return len(self.trie)

    def add(self, entry: SubscriptionEntry) -> bool:
        mine = self.by_client.setdefault(entry.client_id, {})
        replaced = mine.get(entry.topic_filter)
        mine[entry.topic_filter] = entry
        self.trie.add(entry, replaced)
        return replaced is None

    def remove(self, client_id: str, topic_filter: str) -> bool:
        mine = self.by_client.get(client_id, {})
        entry = mine.pop(topic_filter, None)
        if entry is None:
            return False
        if not mine:
            del self.by_client[client_id]
        self.trie.remove(entry)
        return True

    def get(self, client_id: str, topic_filter: str) -> SubscriptionEntry | None:
        return self.by_client.get(client_id, {}).get(topic_filter)

    def clients(self) -> set[str]:
        return set(self.by_client)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return self.get(*key) is not None


def clients(m: Matches) -> set[str]:
    return set(m.direct)


def filters(m: Matches) -> set[tuple[str, str]]:
    return {(cid, e.topic_filter) for cid, entries in m.direct.items() for e in entries}


def trie_with(*filters_: str) -> Subscriptions:
    trie = Subscriptions()
    for i, f in enumerate(filters_):
        trie.add(sub(f"c{i}", f))
    return trie


def matching(trie: SubscriptionTrie, topic: str) -> set[str]:
    m = trie.match(topic)
    assert trie.match_uncached(topic).direct == m.direct
    return {e.topic_filter for entries in m.direct.values() for e in entries}


# -- matching rules ---------------------------------------------------------------


def test_literal_match() -> None:
    trie = trie_with("a/b", "a/c", "a/b/c")
    assert matching(trie, "a/b") == {"a/b"}
    assert matching(trie, "a/b/c") == {"a/b/c"}
    assert matching(trie, "a") == set()
    assert matching(trie, "x") == set()


def test_plus_matches_exactly_one_level() -> None:
    # MQTT 5.0 §4.7.1.3 examples
    trie = trie_with("sport/tennis/+", "sport/+", "+/+", "/+", "+")
    assert matching(trie, "sport/tennis/player1") == {"sport/tennis/+"}
    assert matching(trie, "sport/tennis/player2") == {"sport/tennis/+"}
    assert matching(trie, "sport/tennis/player1/ranking") == set()
    assert matching(trie, "sport") == {"+"}
    assert matching(trie, "sport/") == {"sport/+", "+/+"}
    assert matching(trie, "/finance") == {"+/+", "/+"}


def test_hash_matches_parent_and_children() -> None:
    # MQTT 5.0 §4.7.1.2 examples
    trie = trie_with("sport/tennis/player1/#", "sport/#", "#")
    assert matching(trie, "sport/tennis/player1") == {"sport/tennis/player1/#", "sport/#", "#"}
    assert matching(trie, "sport/tennis/player1/ranking") == {
        "sport/tennis/player1/#",
        "sport/#",
        "#",
    }
    assert matching(trie, "sport/tennis/player1/score/wimbledon") == {
        "sport/tennis/player1/#",
        "sport/#",
        "#",
    }
    assert matching(trie, "sport") == {"sport/#", "#"}
    assert matching(trie, "sports") == {"#"}


def test_plus_then_hash() -> None:
    trie = trie_with("+/#", "a/+/#", "+/b/#")
    assert matching(trie, "a") == {"+/#"}
    assert matching(trie, "a/b") == {"+/#", "a/+/#", "+/b/#"}
    assert matching(trie, "a/x/y/z") == {"+/#", "a/+/#"}


def test_empty_levels_are_real_levels() -> None:
    trie = trie_with("a//b", "a/+/b", "/a", "+/a", "/", "+/+", "a/", "a/+", "//#")
    assert matching(trie, "a//b") == {"a//b", "a/+/b"}
    assert matching(trie, "/a") == {"/a", "+/a", "+/+"}
    # "//#" matches its parent level, the two empty levels of "/".
    assert matching(trie, "/") == {"/", "+/+", "//#"}
    assert matching(trie, "a/") == {"a/", "a/+", "+/+"}
    assert matching(trie, "//x") == {"//#"}
    assert matching(trie, "x") == set()


def test_mqtt_4_7_3_4_no_normalisation() -> None:
    trie = trie_with("a/b", "A/B", "a/b/")
    assert matching(trie, "a/b") == {"a/b"}
    assert matching(trie, "a/b/") == {"a/b/"}
    assert matching(trie, "A/B") == {"A/B"}


def test_mqtt_4_7_2_1_dollar_topics_not_matched_by_leading_wildcard() -> None:
    trie = trie_with("#", "+/monitor/Clients", "+", "+/#", "$SYS/#", "$SYS/monitor/+", "$")
    assert matching(trie, "$SYS/monitor/Clients") == {"$SYS/#", "$SYS/monitor/+"}
    assert matching(trie, "$SYS") == {"$SYS/#"}
    assert matching(trie, "$") == {"$"}
    assert matching(trie, "$share/g/x") == set()
    # Only the first character counts: a '$' deeper down is an ordinary level.
    assert matching(trie, "a/$b") == {"#", "+/#"}
    assert matching(trie, "SYS") == {"#", "+", "+/#"}


def test_mqtt_4_7_2_1_shared_leading_wildcard_not_matching_dollar() -> None:
    trie = Subscriptions()
    trie.add(sub("a", "$share/g/#"))
    trie.add(sub("b", "$share/g/$SYS/#"))
    assert [(g, f) for g, f, _ in trie.match("$SYS/x").shared] == [("g", "$SYS/#")]


def test_no_match_returns_empty_singleton() -> None:
    trie = trie_with("a/b")
    m = trie.match("x/y")
    assert m is EMPTY_MATCHES
    assert not m
    assert trie.match("a/b")


# -- overlapping and shared -----------------------------------------------------------


def test_overlapping_subscriptions_of_one_client_are_grouped() -> None:
    # The router merges these [MQTT-3.3.5-1]; the trie reports all of them per client.
    trie = Subscriptions()
    trie.add(sub("c", "a/+", 0))
    trie.add(sub("c", "a/#", 2))
    trie.add(sub("c", "a/b", 1, subscription_identifier=7))
    trie.add(sub("d", "a/b", 1))
    m = trie.match("a/b")
    assert set(m.direct) == {"c", "d"}
    assert sorted(e.qos for e in m.direct["c"]) == [0, 1, 2]
    assert {e.subscription_identifier for e in m.direct["c"]} == {None, 7}
    assert filters(m) == {("c", "a/+"), ("c", "a/#"), ("c", "a/b"), ("d", "a/b")}


def test_shared_subscriptions_grouped_by_share_name_and_filter() -> None:
    trie = Subscriptions()
    trie.add(sub("c1", "$share/g1/a/+"))
    trie.add(sub("c2", "$share/g1/a/+"))
    trie.add(sub("c3", "$share/g2/a/+"))
    trie.add(sub("c1", "$share/g1/a/#"))
    trie.add(sub("c4", "a/+"))
    m = trie.match("a/b")
    assert set(m.direct) == {"c4"}
    got = {(g, f): sorted(e.client_id for e in members) for g, f, members in m.shared}
    assert got == {("g1", "a/+"): ["c1", "c2"], ("g2", "a/+"): ["c3"], ("g1", "a/#"): ["c1"]}
    assert len(m.shared) == 3
    # A shared subscription does not match the literal "$share/..." topic.
    assert not trie.match("$share/g1/a/b")


def test_shared_and_non_shared_on_same_filter_are_distinct() -> None:
    trie = Subscriptions()
    assert trie.add(sub("c", "a/b"))
    assert trie.add(sub("c", "$share/g/a/b"))
    assert trie.add(sub("c", "$share/h/a/b"))
    assert len(trie) == 3
    assert trie.remove("c", "$share/g/a/b")
    m = trie.match("a/b")
    assert set(m.direct) == {"c"}
    assert [(g, f) for g, f, _ in m.shared] == [("h", "a/b")]


def test_share_group_must_agree_with_filter() -> None:
    trie = Subscriptions()
    with pytest.raises(ValueError, match="share_group"):
        trie.add(SubscriptionEntry("c", "$share/g/a", 0, share_group="x"))
    with pytest.raises(ValueError, match="share_group"):
        trie.add(SubscriptionEntry("c", "a/b", 0, share_group="g"))


def test_share_prefix_without_group_is_a_plain_filter() -> None:
    # E.g. an MQTT 3.1.1 session where the broker does not offer shared subscriptions.
    trie = Subscriptions()
    trie.add(SubscriptionEntry("c", "$share/g/a", 0))
    assert set(trie.match("$share/g/a").direct) == {"c"}
    assert not trie.match("a")


# -- add / replace / remove -------------------------------------------------------------


def test_mqtt_3_8_4_3_identical_filter_replaces_subscription() -> None:
    trie = Subscriptions()
    assert trie.add(sub("c", "a/+", 0)) is True
    assert trie.match("a/b").direct["c"][0].qos == 0
    assert trie.add(sub("c", "a/+", 2, no_local=True)) is False
    assert len(trie) == 1
    entries = trie.match("a/b").direct["c"]
    assert len(entries) == 1
    assert entries[0].qos == 2
    assert entries[0].no_local
    assert trie.get("c", "a/+") == sub("c", "a/+", 2, no_local=True)


def test_mqtt_3_8_4_3_identical_shared_filter_replaces_subscription() -> None:
    trie = Subscriptions()
    assert trie.add(sub("c", "$share/g/a", 0))
    assert not trie.add(sub("c", "$share/g/a", 1))
    ((_g, _f, members),) = trie.match("a").shared
    assert [e.qos for e in members] == [1]


def test_replacing_plain_with_shared_reading_of_same_filter() -> None:
    trie = Subscriptions()
    trie.add(SubscriptionEntry("c", "$share/g/a", 0))
    assert not trie.add(SubscriptionEntry("c", "$share/g/a", 1, share_group="g"))
    assert len(trie) == 1
    assert not trie.match("$share/g/a")
    assert trie.match("a").shared
    assert trie.remove("c", "$share/g/a")
    assert trie._root.is_empty()


def test_results_share_per_node_parts_but_stay_correct() -> None:
    trie = Subscriptions()
    trie.add(sub("c", "a/+"))
    m1 = trie.match_uncached("a/b")
    m2 = trie.match_uncached("a/c")
    assert m1.direct is m2.direct  # one node: its ready-made part is reused
    trie.add(sub("d", "a/b"))
    m3 = trie.match_uncached("a/b")
    assert set(m3.direct) == {"c", "d"}
    assert set(m1.direct) == {"c"}  # never mutated by a merge
    trie.add(sub("c", "a/b"))
    assert len(trie.match_uncached("a/b").direct["c"]) == 2
    assert len(m1.direct["c"]) == 1
    trie.add(sub("e", "a/+"))
    assert set(trie.match_uncached("a/c").direct) == {"c", "e"}
    assert set(m2.direct) == {"c"}


def test_remove() -> None:
    trie = trie_with("a/b", "a/+")
    assert trie.remove("c0", "a/b") is True
    assert trie.remove("c0", "a/b") is False
    assert trie.remove("nobody", "a/b") is False
    assert trie.remove("c1", "a/b") is False
    assert len(trie) == 1
    assert matching(trie, "a/b") == {"a/+"}
    assert ("c0", "a/b") not in trie


def test_remove_every_filter_of_a_client() -> None:
    # What the session registry does when a session ends: remove() per filter.
    trie = Subscriptions()
    filters_ = ("a", "a/+", "#", "$share/g/a")
    for f in filters_:
        trie.add(sub("c", f))
    trie.add(sub("d", "a"))
    trie.match("a")  # warm the cache
    assert [trie.remove("c", f) for f in filters_] == [True] * 4
    assert [trie.remove("c", f) for f in filters_] == [False] * 4
    assert "c" not in set(trie.clients())
    assert len(trie) == 1
    m = trie.match("a")
    assert set(m.direct) == {"d"}
    assert not m.shared
    assert ("c", "a") not in trie
    assert ("d", "a") in trie


def test_remove_prunes_empty_nodes() -> None:
    trie = Subscriptions()
    filters_ = ["a/b/c/d", "a/+/c", "a/#", "+/+/#", "$share/g/x/y", "x//y/"]
    for f in filters_:
        trie.add(sub("c", f))
    for f in filters_:
        assert trie.remove("c", f)
    root = trie._root
    assert root.is_empty()
    assert len(trie) == 0


def test_remove_keeps_siblings() -> None:
    trie = Subscriptions()
    trie.add(sub("c", "a/b/c"))
    trie.add(sub("d", "a/b"))
    trie.add(sub("e", "a/b/c"))
    trie.remove("c", "a/b/c")
    assert set(trie.match("a/b/c").direct) == {"e"}
    trie.remove("e", "a/b/c")
    assert set(trie.match("a/b").direct) == {"d"}
    assert not trie.match("a/b/c")


def test_get_and_clients() -> None:
    trie = Subscriptions()
    trie.add(sub("c", "a", 1))
    trie.add(sub("c", "$share/g/b", 2))
    assert trie.get("c", "a") == sub("c", "a", 1)
    assert trie.get("c", "$share/g/b") == sub("c", "$share/g/b", 2)
    assert trie.get("c", "b") is None
    assert trie.get("x", "a") is None
    assert set(trie.clients()) == {"c"}
    assert ("nobody", "a") not in trie


# -- cache ------------------------------------------------------------------------------------


def test_cache_returns_same_object_and_is_invalidated() -> None:
    trie = trie_with("a/+")
    m1 = trie.match("a/b")
    assert trie.match("a/b") is m1
    trie.add(sub("z", "a/#"))  # wildcard: whole cache dropped
    m2 = trie.match("a/b")
    assert m2 is not m1
    assert set(m2.direct) == {"c0", "z"}
    assert set(m1.direct) == {"c0"}  # an old result is never mutated


def test_cache_literal_filter_invalidates_only_its_topic() -> None:
    trie = trie_with("a/+")
    m_ab = trie.match("a/b")
    m_ac = trie.match("a/c")
    trie.add(sub("z", "a/b"))
    assert trie.match("a/c") is m_ac
    assert trie.match("a/b") is not m_ab
    assert set(trie.match("a/b").direct) == {"c0", "z"}
    trie.remove("z", "a/b")
    assert trie.match("a/c") is m_ac
    assert set(trie.match("a/b").direct) == {"c0"}
    trie.remove("c0", "a/+")
    assert not trie.match("a/c")


def test_cache_remembers_misses_and_invalidates_them() -> None:
    trie = Subscriptions()
    assert not trie.match("a/b")
    trie.add(sub("c", "a/b"))
    assert set(trie.match("a/b").direct) == {"c"}
    trie.add(sub("d", "$share/g/x"))
    assert trie.match("x").shared


def test_cache_is_bounded_with_two_generations() -> None:
    trie = Subscriptions(cache_size=10)
    trie.add(sub("c", "#"))
    hot = trie.match("hot")
    for i in range(25):
        trie.match(f"t{i}")
        assert trie.match("hot") is hot  # promoted each time it is used
    assert len(trie._cache) <= 10
    assert len(trie._old) <= 10
    trie.clear_cache()
    assert trie.match("hot") is not hot


# -- property test against a brute-force reference ---------------------------------------------

LEVELS = ["a", "b", "", "$x", "$", "c"]
level_st = st.sampled_from(LEVELS)
topic_st = st.lists(level_st, min_size=1, max_size=5).map("/".join).filter(bool)


@st.composite
def filter_st(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from([*LEVELS, "+"]), min_size=1, max_size=5))
    if draw(st.booleans()):
        levels.append("#")
    f = "/".join(levels)
    if not f:
        f = "#"
    if draw(st.integers(0, 4)) == 0:
        f = f"$share/{draw(st.sampled_from(['g', 'h']))}/{f}"
    return f


@settings(max_examples=300, deadline=None)
@given(
    subs=st.lists(st.tuples(st.sampled_from(["c1", "c2", "c3", "c4"]), filter_st()), max_size=25),
    removals=st.lists(st.integers(0, 30), max_size=5),
    topics=st.lists(topic_st, min_size=1, max_size=10),
)
def test_trie_matches_brute_force_reference(
    subs: list[tuple[str, str]], removals: list[int], topics: list[str]
) -> None:
    trie = Subscriptions(cache_size=4)
    model: dict[tuple[str, str], SubscriptionEntry] = {}
    for cid, f in subs:
        e = sub(cid, f)
        assert trie.add(e) == ((cid, f) not in model)
        model[(cid, f)] = e
        trie.match(topics[0])  # interleave cached lookups with changes
        trie.match_uncached(topics[-1])  # and per-node result parts
    keys = list(model)
    for r in removals:
        if r < len(keys) and keys[r] in model:
            cid, f = keys[r]
            assert trie.remove(cid, f)
            del model[(cid, f)]
            trie.match_uncached(topics[-1])
    assert len(trie) == len(model)
    for topic in topics:
        expected_direct: set[tuple[str, str]] = set()
        expected_shared: dict[tuple[str, str], set[str]] = {}
        for cid, f in model:
            group, inner = parse_shared(f)
            if not filter_matches(inner, topic):
                continue
            if group is None:
                expected_direct.add((cid, f))
            else:
                expected_shared.setdefault((group, inner), set()).add(cid)
        for m in (trie.match(topic), trie.match(topic), trie.match_uncached(topic)):
            assert filters(m) == expected_direct
            got_shared = {(g, f): {e.client_id for e in members} for g, f, members in m.shared}
            assert got_shared == expected_shared
            assert len(m.shared) == len(expected_shared)
            assert bool(m) == bool(expected_direct or expected_shared)
    # The per-client index holds exactly the model: each subscription comes out once
    # through remove(), and then nothing is left.
    assert set(trie.clients()) == {c for c, _ in model}
    for (cid, f), e in model.items():
        assert trie.get(cid, f) == e
        assert trie.remove(cid, f)
        assert not trie.remove(cid, f)
    assert len(trie) == 0
    assert not set(trie.clients())
    assert trie._root.is_empty()
