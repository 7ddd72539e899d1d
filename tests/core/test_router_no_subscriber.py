"""core/router.py ``Router.publish``'s early returns when nobody on this process can
take a message (issue 14: a cluster node whose publishers' subscribers are on other
nodes): with no subscription at all the trie is not asked, and a topic nobody
matches allocates nothing. The acknowledgement code (MQTT 5.0 §3.4.2.1: 0x10 No
Matching Subscribers, 0x97 Quota Exceeded), retained messages [MQTT-3.3.1-5],
[MQTT-3.3.1-10], expiry and shared-group picks (MQTT 5.0 §4.8.2) are as without them.
Plain objects and a fake ``now``."""

from __future__ import annotations

from iotbroker.core.subscriptions import EMPTY_MATCHES, Matches
from iotbroker.message import Message
from iotbroker.storage.base import Op
from tests.core.fakes import changes, message
from tests.core.test_router import World, sub


def test_no_subscription_at_all_gives_0x10_and_the_trie_is_not_asked() -> None:
    """MQTT 5.0 §3.4.2.1: 0x10 when no subscriber took it; with no subscription on
    this process the match is not looked up (nothing cached)."""
    w = World()
    w.client("publisher")
    assert len(w.trie) == 0
    assert w.publish(message("a/b")) == 0x10
    assert w.publish(message("a/b", qos=0)) == 0x10
    assert not w.trie._cache  # the early return took it


def test_mqtt_3_3_1_5_no_subscription_at_all_still_stores_retained_messages() -> None:
    """[MQTT-3.3.1-5] stored (and persisted) with nobody subscribed; [MQTT-3.3.1-10]
    an empty one deletes it; 0x97 when the store is full, 0x10 otherwise."""
    w = World(max_retained=1)
    kept = message("r/1", b"one", retain=True)
    assert w.publish(kept) == 0x10
    assert w.retained.get("r/1") is kept
    assert [m for m, _ in changes(w.batch, Op.PUT_RETAINED)] == [kept]
    assert w.publish(message("r/2", b"two", retain=True)) == 0x97
    assert "r/2" not in w.retained and w.metrics.retained_dropped == 1
    assert w.publish(message("r/1", b"", retain=True)) == 0x10
    assert "r/1" not in w.retained
    assert changes(w.batch, Op.DELETE_RETAINED) == [("r/1", None)]


def test_no_subscription_at_all_still_counts_expired_messages() -> None:
    w = World()
    assert w.publish(message("a", expires_at=5.0), now=5.0) == 0x10
    assert w.metrics.messages_expired == 1


def test_the_first_subscription_and_the_last_unsubscription_are_seen_at_once() -> None:
    """The early return is taken only while the trie holds no subscription: a
    subscription made after publishes gets the next message, and after the last one
    goes the publisher hears 0x10 again [MQTT-3.3.4-1] (the Server delivers to every
    matching subscription)."""
    w = World()
    s = w.client("c1")
    assert w.publish(message("t/x", b"before")) == 0x10
    w.subscribe(s, sub("t/+"))
    assert w.publish(message("t/x", b"during")) == 0x00
    assert w.router.unsubscribe(s, ["t/+"]) == [0x00]
    assert w.publish(message("t/x", b"after")) == 0x10
    assert [d.message.payload for d in w.received("c1")] == [b"during"]


def test_a_topic_nobody_matches_among_other_subscriptions_gives_0x10() -> None:
    """Other topics' subscribers do not take it (the shared empty match result)."""
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("other/#"))
    assert w.trie.match("t/x") is EMPTY_MATCHES
    assert w.publish(message("t/x", b"1")) == 0x10
    assert w.router.publish(message("t/x", b"2"), 0.0, None, EMPTY_MATCHES) == 0x10
    assert w.received("c1") == []


def test_a_match_with_shared_groups_only_still_asks_share_pick() -> None:
    """MQTT 5.0 §4.8.2: a topic whose only matches are a shared group's is not
    taken for unmatched: ``share_pick`` is asked, and the member here gets it when
    picked; when another process takes it the publisher hears 0x00 (a member took
    it)."""
    w = World()
    member = w.client("m0")
    w.subscribe(member, sub("$share/g/t/#", 1))
    matches = w.trie.match("t/x")
    assert not matches.direct and matches.shared
    asked: list[tuple[str, str]] = []
    here = [True]

    def pick(msg: Message, group: str, topic_filter: str, members: list[object]) -> bool:
        asked.append((group, topic_filter))
        return here[0]

    w.router.share_pick = pick
    assert w.publish(message("t/x", b"1")) == 0x00
    here[0] = False
    assert w.publish(message("t/x", b"2")) == 0x00
    assert asked == [("g", "t/#"), ("g", "t/#")]
    assert [d.message.payload for d in w.received("m0")] == [b"1"]


def test_an_empty_match_given_by_the_caller_is_not_looked_up_again() -> None:
    """``matches`` from the caller (another node's batch, cluster/wire.py) is used as
    given: an empty one means nobody here, whatever the trie holds now."""
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("t/x"))
    empty = Matches({}, [])
    assert w.router.publish(message("t/x", b"1"), 0.0, None, empty) == 0x10
    assert w.received("c1") == []


def test_the_router_s_reason_code_literals_are_the_enum_s() -> None:
    """MQTT 5.0 §2.4: the codes ``Router.publish`` / ``unsubscribe`` return, kept as
    literals for the compiled build, are the Reason Code table's."""
    from iotbroker.codec.enums import ReasonCode  # noqa: PLC0415
    from iotbroker.core import router  # noqa: PLC0415

    assert router._SUCCESS == ReasonCode.SUCCESS
    assert router._NO_MATCHING_SUBSCRIBERS == ReasonCode.NO_MATCHING_SUBSCRIBERS
    assert router._QUOTA_EXCEEDED == ReasonCode.QUOTA_EXCEEDED
    assert router._NO_SUBSCRIPTION_EXISTED == ReasonCode.NO_SUBSCRIPTION_EXISTED
