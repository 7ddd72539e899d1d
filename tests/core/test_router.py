"""core/router.py: publish and its acknowledgement code, retained set/clear, RETAIN
on live delivery, overlapping subscriptions, No Local, shared groups and their
strategies, SUBSCRIBE/UNSUBSCRIBE codes and retained deliveries, redistribution.
Plain objects and a fake ``now``."""

from __future__ import annotations

import random

from iotbroker.codec.packets import Subscription
from iotbroker.core.retained import RetainedStore
from iotbroker.core.router import Router
from iotbroker.core.session import Session, SessionLimits
from iotbroker.core.sessions import SessionRegistry
from iotbroker.core.subscriptions import SubscriptionTrie
from iotbroker.message import Delivery, Message
from iotbroker.metrics import Metrics
from iotbroker.storage.base import ChangeBatch, Op
from tests.core.fakes import FakeOutlet, attach, changes, message


class World:
    """A router with its registry, trie, retained store and batch; clients are
    sessions attached to fake outlets."""

    def __init__(self, *, shared_strategy: str = "round-robin", max_retained: int = 0) -> None:
        self.trie = SubscriptionTrie()
        self.batch = ChangeBatch()
        self.metrics = Metrics()
        self.registry = SessionRegistry(self.trie, self.batch, SessionLimits(), self.metrics)
        self.retained = RetainedStore()
        self.router = Router(
            self.registry, self.trie, self.retained, self.batch, self.metrics,
            shared_strategy=shared_strategy, max_retained=max_retained,
        )
        self.outlets: dict[str, FakeOutlet] = {}

    def client(
        self, client_id: str, *, version: int = 5, expiry: int = 0, receive_maximum: int = 100
    ) -> Session:
        session, _ = self.registry.open(client_id, True, expiry, version, 0.0)
        outlet = self.outlets[client_id] = FakeOutlet()
        attach(session, outlet, receive_maximum, 0.0)
        return session

    def subscribe(
        self, session: Session, *subs: Subscription, sub_id: int | None = None, limit: int = 2
    ) -> tuple[list[int], list[Delivery]]:
        return self.router.subscribe(session, list(subs), sub_id, limit, 0.0)

    def received(self, client_id: str) -> list[Delivery]:
        return [d for d, _, _, _ in self.outlets[client_id].published]

    def publish(self, msg: Message, now: float = 0.0) -> int:
        return self.router.publish(msg, now)


def sub(topic_filter: str, qos: int = 2, **options: object) -> Subscription:
    return Subscription(topic_filter, qos, **options)  # type: ignore[arg-type]


# ----------------------------------------------------------- publish codes


def test_publish_without_subscribers_returns_0x10_no_matching_subscribers() -> None:
    w = World()
    w.client("other")
    assert w.publish(message("a/b")) == 0x10


def test_publish_with_a_subscriber_returns_0x00_and_delivers() -> None:
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("a/+"))
    assert w.publish(message("a/b", b"hi")) == 0x00
    assert [d.message.payload for d in w.received("c1")] == [b"hi"]


def test_publish_only_to_sessions_the_gate_refuses_returns_0x10() -> None:
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("a/#"))
    w.registry.gate.check = lambda session, topic: False
    assert w.publish(message("a/b")) == 0x10
    assert w.received("c1") == []
    assert w.metrics.acl_denials == 1


def test_publish_returns_0x97_when_max_retained_is_reached_but_still_delivers() -> None:
    w = World(max_retained=1)
    s = w.client("c1")
    w.subscribe(s, sub("#"))
    assert w.publish(message("r/1", b"one", retain=True)) == 0x00
    assert w.publish(message("r/2", b"two", retain=True)) == 0x97
    assert w.metrics.retained_dropped == 1
    assert "r/2" not in w.retained
    assert [d.message.payload for d in w.received("c1")] == [b"one", b"two"]
    # replacing the topic already retained is not a new one: allowed at the limit
    assert w.publish(message("r/1", b"new", retain=True)) == 0x00
    assert w.retained.get("r/1").payload == b"new"  # type: ignore[union-attr]


def test_publish_returns_0x97_even_without_subscribers() -> None:
    w = World(max_retained=1)
    w.publish(message("r/1", b"one", retain=True))
    assert w.publish(message("r/2", b"two", retain=True)) == 0x97


def test_expired_message_is_not_delivered_and_counted() -> None:
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("a"))
    assert w.publish(message("a", expires_at=5.0), now=5.0) == 0x10
    assert w.received("c1") == [] and w.metrics.messages_expired == 1


# ---------------------------------------------------------------- retained


def test_mqtt_3_3_1_5_retained_publish_replaces_and_stores_the_message() -> None:
    """[MQTT-3.3.1-5]: RETAIN=1 replaces the topic's retained message and persists it."""
    w = World()
    first = message("r", b"1", retain=True)
    second = message("r", b"2", retain=True)
    w.publish(first)
    w.publish(second)
    assert w.retained.get("r") is second and len(w.retained) == 1
    assert [m for m, _ in changes(w.batch, Op.PUT_RETAINED)] == [first, second]


def test_mqtt_3_3_1_10_retained_empty_payload_removes_the_retained_message() -> None:
    """[MQTT-3.3.1-10] (3.1.1), [MQTT-3.3.1-6] (5.0) and [MQTT-3.3.1-11] (3.1.1):
    an empty retained payload deletes the retained message and is not stored."""
    w = World()
    w.publish(message("r", b"1", retain=True))
    w.batch.clear()
    w.publish(message("r", b"", retain=True))
    assert "r" not in w.retained
    assert changes(w.batch, Op.DELETE_RETAINED) == [("r", None)]
    assert not changes(w.batch, Op.PUT_RETAINED)
    w.batch.clear()
    w.publish(message("r", b"", retain=True))  # nothing to delete: nothing written
    assert not w.batch


def test_mqtt_3_3_1_12_retain_0_publish_leaves_the_retained_message_alone() -> None:
    """[MQTT-3.3.1-12] (3.1.1): a RETAIN=0 PUBLISH is not stored as retained."""
    w = World()
    kept = message("r", b"kept", retain=True)
    w.publish(kept)
    w.publish(message("r", b"live"))
    w.publish(message("r", b""))
    assert w.retained.get("r") is kept


def test_sys_retained_messages_are_kept_but_not_persisted() -> None:
    w = World()
    w.publish(message("$SYS/broker/uptime", b"1", retain=True))
    w.publish(message("$SYS/broker/load", b"1", retain=True))
    w.publish(message("$SYS/broker/load", b"", retain=True))
    assert "$SYS/broker/uptime" in w.retained and "$SYS/broker/load" not in w.retained
    assert not w.batch


def test_mqtt_3_3_1_9_live_delivery_carries_retain_0() -> None:
    """[MQTT-3.3.1-9] (3.1.1) / [MQTT-3.3.1-12] (5.0, Retain As Published 0): a
    retained PUBLISH is forwarded to existing subscriptions with RETAIN=0."""
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("r"))
    w.publish(message("r", b"x", retain=True))
    (d,) = w.received("c1")
    assert d.retain is False


def test_mqtt_3_3_1_13_retain_as_published_keeps_the_retain_flag() -> None:
    """[MQTT-3.3.1-13]: Retain As Published 1 forwards the RETAIN flag as received."""
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("r", retain_as_published=True))
    w.publish(message("r", b"x", retain=True))
    w.publish(message("r", b"y", retain=False))
    assert [d.retain for d in w.received("c1")] == [True, False]


# ---------------------------------------------------------- QoS and overlap


def test_mqtt_3_8_4_8_delivered_qos_is_min_of_publish_and_granted() -> None:
    """[MQTT-3.8.4-8] (5.0), [MQTT-3.8.4-6] (3.1.1): delivered QoS = min(published,
    granted)."""
    w = World()
    low, high = w.client("low"), w.client("high")
    w.subscribe(low, sub("t", 1))
    w.subscribe(high, sub("t", 2))
    w.publish(message("t", qos=2))
    w.publish(message("t", qos=0))
    assert [d.qos for d in w.received("low")] == [1, 0]
    assert [d.qos for d in w.received("high")] == [2, 0]


def test_mqtt_3_3_4_2_overlapping_subscriptions_give_one_message_at_highest_qos() -> None:
    """[MQTT-3.3.4-2], [MQTT-3.3.4-3]: overlapping subscriptions of one client give
    one PUBLISH at the highest granted QoS, carrying every Subscription Identifier."""
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("a/+", 0), sub_id=1)
    w.subscribe(s, sub("a/#", 1), sub_id=2)
    w.subscribe(s, sub("a/b", 2))  # no identifier
    w.publish(message("a/b", qos=2))
    (d,) = w.received("c1")
    assert d.qos == 2
    assert sorted(d.subscription_identifiers) == [1, 2]


def test_mqtt_3_3_4_3_single_subscription_identifier_is_carried() -> None:
    """[MQTT-3.3.4-3]: the matching subscription's identifier is in the PUBLISH."""
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("a/#"), sub_id=77)
    w.subscribe(w.client("c2"), sub("a/#"))
    w.publish(message("a/b"))
    assert w.received("c1")[0].subscription_identifiers == (77,)
    assert w.received("c2")[0].subscription_identifiers == ()


def test_overlapping_subscriptions_qos_is_still_capped_by_the_publish() -> None:
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("a/+", 2))
    w.subscribe(s, sub("a/#", 1))
    w.publish(message("a/b", qos=1))
    assert [d.qos for d in w.received("c1")] == [1]


def test_overlapping_subscriptions_retain_as_published_if_any_asks_for_it() -> None:
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("a/+"))
    w.subscribe(s, sub("a/#", retain_as_published=True))
    w.publish(message("a/b", b"x", retain=True))
    assert [d.retain for d in w.received("c1")] == [True]


def test_mqtt_3_8_3_3_no_local_does_not_send_back_to_the_publisher() -> None:
    """[MQTT-3.8.3-3]: No Local 1: messages of this client id are not sent to it."""
    w = World()
    me, other = w.client("me"), w.client("other")
    w.subscribe(me, sub("t", no_local=True))
    w.subscribe(other, sub("t", no_local=True))
    assert w.publish(message("t", b"mine", origin="me")) == 0x00
    assert w.received("me") == []
    assert [d.message.payload for d in w.received("other")] == [b"mine"]
    assert w.publish(message("t", b"theirs", origin="other")) == 0x00
    assert [d.message.payload for d in w.received("me")] == [b"theirs"]


def test_mqtt_3_8_3_3_no_local_with_overlap_uses_only_the_other_subscriptions() -> None:
    """[MQTT-3.8.3-3] with overlap: only subscriptions without No Local count."""
    w = World()
    me = w.client("me")
    w.subscribe(me, sub("t/#", 2, no_local=True), sub_id=1)
    w.subscribe(me, sub("t/+", 1), sub_id=2)
    w.publish(message("t/x", qos=2, origin="me"))
    (d,) = w.received("me")
    assert (d.qos, d.subscription_identifiers) == (1, (2,))
    w.router.unsubscribe(me, ["t/+"])
    assert w.publish(message("t/x", qos=2, origin="me")) == 0x10
    assert len(w.received("me")) == 1


def test_publish_to_offline_persistent_session_queues_it() -> None:
    w = World()
    s = w.client("c1", expiry=60)
    w.subscribe(s, sub("t"))
    w.registry.close(s, 1.0)
    assert w.publish(message("t", qos=1)) == 0x00
    assert s.queued_count == 1


# ------------------------------------------------------------------ shared


def shared_group(w: World, n: int = 3, topic_filter: str = "$share/g/t/#") -> list[Session]:
    members = [w.client(f"m{i}") for i in range(n)]
    for member in members:
        w.subscribe(member, sub(topic_filter, 1))
    return members


def who_got(w: World, payload: bytes) -> list[str]:
    return [
        cid for cid in w.outlets
        for d in w.received(cid) if d.message.payload == payload
    ]


def test_shared_group_delivers_each_message_to_exactly_one_member() -> None:
    """MQTT 5.0 §4.8.2: each message goes to one member of each matching group;
    a plain subscriber receives it as well."""
    w = World()
    shared_group(w, 3)
    other = w.client("other-group")
    w.subscribe(other, sub("$share/h/t/+", 1))
    plain = w.client("plain")
    w.subscribe(plain, sub("t/#"))
    for i in range(6):
        assert w.publish(message("t/x", b"%d" % i)) == 0x00
        got = who_got(w, b"%d" % i)
        assert len([cid for cid in got if cid.startswith("m")]) == 1
        assert sorted(cid for cid in got if not cid.startswith("m")) == [
            "other-group", "plain"]


def test_shared_groups_given_elsewhere_or_named_by_the_sender() -> None:
    """The cluster (docs/cluster.md, "Shared subscriptions across nodes"): for a
    message published here ``share_pick`` may give a group's message to another
    process (none of the members here gets it; plain subscribers still do); for a
    message from another process only the groups it names take it (MQTT 5.0 §4.8.2:
    one member of the group cluster-wide); EVERY_GROUP asks nobody."""
    from iotbroker.core.router import EVERY_GROUP  # noqa: PLC0415

    w = World()
    shared_group(w, 2)
    other = w.client("o0")
    w.subscribe(other, sub("$share/h/t/+", 1))
    plain = w.client("plain")
    w.subscribe(plain, sub("t/#"))
    asked = []

    def pick(msg: Message, group: str, topic_filter: str, members: list[object]) -> bool:
        asked.append((group, topic_filter, len(members)))
        return group == "h"

    w.router.share_pick = pick
    assert w.publish(message("t/x", b"1")) == 0x00
    assert sorted(who_got(w, b"1")) == ["o0", "plain"]
    assert sorted(asked) == [("g", "t/#", 2), ("h", "t/+", 1)]
    w.router.publish(message("t/x", b"2"), 0.0, [("g", "t/#")])
    assert sorted(who_got(w, b"2"))[1:] == ["plain"] and len(who_got(w, b"2")) == 2
    assert who_got(w, b"2")[0].startswith("m")
    w.router.publish(message("t/x", b"3"), 0.0, [])
    assert who_got(w, b"3") == ["plain"]
    w.router.publish(message("t/x", b"4"), 0.0, EVERY_GROUP)
    assert len(who_got(w, b"4")) == 3 and len(asked) == 2


def test_shared_round_robin_cycles_through_the_members() -> None:
    w = World(shared_strategy="round-robin")
    shared_group(w, 3)
    order = []
    for i in range(6):
        w.publish(message("t/x", b"%d" % i))
        (cid,) = who_got(w, b"%d" % i)
        order.append(cid)
    assert order[:3] == order[3:]
    assert sorted(order[:3]) == ["m0", "m1", "m2"]


def test_shared_random_picks_a_member_and_follows_the_seeded_generator() -> None:
    picks = []
    saved = random.getstate()
    for _ in range(2):
        random.seed(1234)
        w = World(shared_strategy="random")
        shared_group(w, 3)
        run = []
        for i in range(30):
            w.publish(message("t/x", b"%d" % i))
            (cid,) = who_got(w, b"%d" % i)
            run.append(cid)
        picks.append(run)
    random.setstate(saved)
    assert picks[0] == picks[1]
    assert set(picks[0]) <= {"m0", "m1", "m2"}
    assert len(set(picks[0])) > 1  # not stuck on one member


def test_shared_least_inflight_picks_the_least_busy_member() -> None:
    w = World(shared_strategy="least-inflight")
    m0, m1, m2 = shared_group(w, 3)
    for member, busy in ((m0, 3), (m1, 1), (m2, 2)):
        for _ in range(busy):
            member.deliver(Delivery(message("busy"), 1), 0.0)
    w.publish(message("t/x", b"first"))
    assert who_got(w, b"first") == ["m1"]  # 1 in flight
    w.publish(message("t/x", b"second"))
    assert who_got(w, b"second") in (["m1"], ["m2"])  # both have 2 now
    assert len(m0.inflight) == 3  # the busiest is never chosen here


def test_shared_sticky_keeps_one_member_until_it_goes_offline() -> None:
    w = World(shared_strategy="sticky")
    members = shared_group(w, 3)
    for i in range(4):
        w.publish(message("t/x", b"%d" % i))
    owners = {cid for i in range(4) for cid in who_got(w, b"%d" % i)}
    assert len(owners) == 1
    (first,) = owners
    w.registry.close(w.registry.sessions[first], 1.0)
    for i in range(4, 8):
        w.publish(message("t/x", b"%d" % i))
    owners = {cid for i in range(4, 8) for cid in who_got(w, b"%d" % i)}
    assert len(owners) == 1 and first not in owners
    assert len(members) == 3


def test_shared_prefers_online_members_and_falls_back_to_offline_ones() -> None:
    w = World()
    on = w.client("on")
    off = w.client("off", expiry=60)
    w.subscribe(on, sub("$share/g/t", 1))
    w.subscribe(off, sub("$share/g/t", 1))
    w.registry.close(off, 1.0)
    for i in range(4):
        w.publish(message("t", b"%d" % i))
    assert len(w.received("on")) == 4 and off.queued_count == 0
    w.registry.close(on, 2.0)  # not persistent: gone
    assert w.publish(message("t", b"late")) == 0x00
    assert off.queued_count == 1


def test_shared_skips_members_the_gate_refuses_and_no_local_members() -> None:
    w = World()
    shared_group(w, 2)
    w.subscribe(w.client("nl"), sub("$share/g/t/#", 1, no_local=True))
    w.registry.gate.check = lambda session, topic: session.client_id != "m0"
    for i in range(6):
        w.publish(message("t/x", b"%d" % i, origin="nl"))
    assert w.received("m0") == [] and w.received("nl") == []
    assert len(w.received("m1")) == 6
    w.registry.gate.check = lambda session, topic: False
    assert w.publish(message("t/x", b"none")) == 0x10


def test_mqtt_3_3_1_13_shared_delivery_keeps_retain_as_published_and_the_member_sub_id() -> None:
    """[MQTT-3.3.1-12], [MQTT-3.3.1-13] hold for a shared subscription's copy too (the
    spec makes no exception for §4.8.2); it carries the member's own Subscription
    Identifier [MQTT-3.3.4-3]."""
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("$share/g/t", 1, retain_as_published=True), sub_id=9)
    w.publish(message("t", b"x", qos=2, retain=True))
    (d,) = w.received("c1")
    assert (d.qos, d.retain, d.subscription_identifiers) == (1, True, (9,))
    s2 = w.client("c2")
    w.subscribe(s2, sub("$share/h/u", 1), sub_id=4)
    w.publish(message("u", b"y", qos=1, retain=True))
    (d2,) = w.received("c2")
    assert (d2.qos, d2.retain, d2.subscription_identifiers) == (1, False, (4,))


# --------------------------------------------------------------- subscribe


def test_subscribe_returns_granted_qos_capped_by_the_limit() -> None:
    """[MQTT-3.8.4-7]: one code per filter, in order: the granted QoS."""
    w = World()
    s = w.client("c1")
    codes, retained = w.subscribe(s, sub("a", 0), sub("b", 1), sub("c", 2), limit=1)
    assert codes == [0, 1, 1] and retained == []
    assert s.subscriptions["c"].qos == 1
    assert set(w.trie.match("c").direct) == {"c1"}


def test_subscribe_refuses_invalid_filters_with_version_specific_codes() -> None:
    w = World()
    v5, v4 = w.client("v5"), w.client("v4", version=4)
    bad = [sub("a/#/b"), sub("a+"), sub("$share/g"), sub("$share//t"), sub("ok")]
    assert w.subscribe(v5, *bad)[0] == [0x8F, 0x8F, 0x8F, 0x8F, 2]
    assert w.subscribe(v4, *bad)[0] == [0x80, 0x80, 0x80, 0x80, 2]
    assert set(v5.subscriptions) == {"ok"}


def test_subscribe_check_may_refuse_a_filter() -> None:
    w = World()
    s = w.client("c1")
    codes, _ = w.router.subscribe(
        s, [sub("secret/#"), sub("public/#", 1)], None, 2, 0.0,
        check=lambda s_: 0x87 if s_.topic_filter.startswith("secret") else None,
    )
    assert codes == [0x87, 1]
    assert set(s.subscriptions) == {"public/#"}


def test_subscribe_persists_for_persistent_sessions() -> None:
    w = World()
    s = w.client("c1", expiry=60)
    w.batch.clear()
    w.subscribe(s, sub("a/#", 1), sub_id=3)
    ((rec, _),) = changes(w.batch, Op.PUT_SUBSCRIPTION)
    assert (rec.topic_filter, rec.qos, rec.subscription_identifier) == (  # type: ignore[attr-defined]
        "a/#", 1, 3)


def test_mqtt_3_3_1_6_new_subscription_gets_matching_retained_messages() -> None:
    """[MQTT-3.3.1-6] (3.1.1), [MQTT-3.3.1-9] (5.0, Retain Handling 0): the retained
    messages of matching topics come back, RETAIN=1, QoS min, with the identifier."""
    w = World()
    w.publish(message("r/1", b"one", qos=2, retain=True))
    w.publish(message("r/2", b"two", qos=0, retain=True))
    w.publish(message("other", b"no", retain=True))
    s = w.client("c1")
    codes, retained = w.subscribe(s, sub("r/+", 1), sub_id=5)
    assert codes == [1]
    by_topic = {d.message.topic: d for d in retained}
    assert set(by_topic) == {"r/1", "r/2"}
    assert all(d.retain and d.subscription_identifiers == (5,) for d in retained)
    assert (by_topic["r/1"].qos, by_topic["r/2"].qos) == (1, 0)
    assert w.received("c1") == []  # returned, not sent: they follow the SUBACK


def test_mqtt_3_3_1_9_retain_handling_0_sends_retained_on_every_subscribe() -> None:
    """[MQTT-3.3.1-9] (5.0), [MQTT-3.8.4-3]: also when the subscription is replaced."""
    w = World()
    w.publish(message("r", b"x", retain=True))
    s = w.client("c1")
    assert len(w.subscribe(s, sub("r", retain_handling=0))[1]) == 1
    assert len(w.subscribe(s, sub("r", retain_handling=0))[1]) == 1


def test_mqtt_3_3_1_10_retain_handling_1_sends_retained_only_if_new() -> None:
    """[MQTT-3.3.1-10] (5.0): Retain Handling 1: only for a new subscription."""
    w = World()
    w.publish(message("r", b"x", retain=True))
    s = w.client("c1")
    assert len(w.subscribe(s, sub("r", retain_handling=1))[1]) == 1
    assert w.subscribe(s, sub("r", retain_handling=1))[1] == []


def test_mqtt_3_3_1_11_retain_handling_2_sends_no_retained() -> None:
    """[MQTT-3.3.1-11] (5.0): Retain Handling 2: no retained messages on subscribe."""
    w = World()
    w.publish(message("r", b"x", retain=True))
    s = w.client("c1")
    assert w.subscribe(s, sub("r", retain_handling=2)) == ([2], [])


def test_shared_subscription_gets_no_retained_messages() -> None:
    w = World()
    w.publish(message("r", b"x", retain=True))
    assert w.subscribe(w.client("c1"), sub("$share/g/r")) == ([2], [])


def test_expired_retained_messages_are_not_sent_on_subscribe() -> None:
    w = World()
    w.publish(message("r", b"x", retain=True, expires_at=10.0), now=0.0)
    s = w.client("c1")
    assert w.router.subscribe(s, [sub("r")], None, 2, 10.0)[1] == []


def test_mqtt_3_8_4_3_resubscribe_replaces_the_subscription() -> None:
    """[MQTT-3.8.4-3]: the same filter again replaces the subscription (one delivery,
    the new options)."""
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("t", 2))
    w.subscribe(s, sub("t", 0))
    w.publish(message("t", qos=2))
    assert [d.qos for d in w.received("c1")] == [0]


# ------------------------------------------------------------- unsubscribe


def test_mqtt_3_10_4_5_unsubscribe_codes_0x00_and_0x11() -> None:
    """[MQTT-3.10.4-5], [MQTT-3.10.4-6]: one code per filter, also when nothing was
    removed (5.0: 0x11 No Subscription Existed); [MQTT-3.10.4-1] exact match only."""
    w = World()
    s = w.client("c1", expiry=60)
    w.subscribe(s, sub("a/+"), sub("b"))
    w.batch.clear()
    assert w.router.unsubscribe(s, ["a/+", "a/x", "b", "b"]) == [0x00, 0x11, 0x00, 0x11]
    assert not s.subscriptions
    assert changes(w.batch, Op.DELETE_SUBSCRIPTION) == [("c1", "a/+"), ("c1", "b")]


def test_mqtt_3_10_4_2_no_new_messages_after_unsubscribe() -> None:
    """[MQTT-3.10.4-2]: after UNSUBSCRIBE no new message matches the filter."""
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("t"))
    w.router.unsubscribe(s, ["t"])
    assert w.publish(message("t")) == 0x10
    assert w.received("c1") == []


def test_unsubscribe_shared_filter_leaves_the_group() -> None:
    w = World()
    m0, _m1 = shared_group(w, 2, "$share/g/t")
    assert w.router.unsubscribe(m0, ["$share/g/t", "t"]) == [0x00, 0x11]
    for i in range(3):
        w.publish(message("t", b"%d" % i))
    assert w.received("m0") == [] and len(w.received("m1")) == 3


# -------------------------------------------------------------- redistribute


def test_redistribute_hands_unacked_shared_messages_to_another_member() -> None:
    """MQTT 5.0 §4.8.2: a departing member's unacknowledged QoS 1 messages of the
    group go to another online member, once, and leave the departing session."""
    w = World(shared_strategy="sticky")
    m0, m1 = shared_group(w, 2, "$share/g/t")
    for i in range(3):
        w.publish(message("t", b"%d" % i))
    owner, other = (m0, m1) if w.received("m0") else (m1, m0)
    assert len(owner.inflight) == 3
    assert w.router.redistribute(owner, 1.0) == 3
    assert not owner.inflight
    assert [d.message.payload for d in w.received(other.client_id)] == [b"0", b"1", b"2"]


def test_redistribute_without_shared_subscriptions_moves_nothing() -> None:
    w = World()
    s = w.client("c1")
    w.subscribe(s, sub("t", 1))
    w.publish(message("t"))
    assert w.router.redistribute(s, 1.0) == 0
    assert len(s.inflight) == 1


def test_redistribute_with_no_other_online_member_keeps_the_messages() -> None:
    w = World()
    m0, m1 = shared_group(w, 2, "$share/g/t")
    w.registry.close(m1, 0.5)
    w.publish(message("t", b"x"))
    assert w.router.redistribute(m0, 1.0) == 0
    assert len(m0.inflight) == 1


def test_redistribute_keeps_the_copy_of_a_non_shared_subscription() -> None:
    """A client subscribed both directly and through a group: on redistribution only
    the group's copy may move. The direct subscription's copy is the client's own
    (re-sent on resume [MQTT-4.4.0-1]); giving it to the group would deliver the
    group's message twice (MQTT 5.0 §4.8.2: once per group)."""
    w = World()
    a = w.client("a", expiry=60)
    b = w.client("b")
    w.subscribe(a, sub("t", 1))
    w.subscribe(a, sub("$share/g/t", 1))
    w.subscribe(b, sub("$share/g/t", 1))
    w.publish(message("t", b"x"))
    w.router.redistribute(a, 1.0)
    assert len(w.received("b")) == 1, "the group's message reached member b twice"
    assert len(a.inflight) == 1, "a's own (non-shared) copy was taken away"


def test_subscribers_to_one_filter_share_its_string() -> None:
    """Issue 19 (an offline session's memory): the entries of several clients on one
    (non-shared) Topic Filter hold one string object, not a copy each; a shared
    subscription keeps its own filter as subscribed."""
    w = World()
    sessions = [w.client(f"c{i}") for i in range(3)]
    for s in sessions:
        w.subscribe(s, sub("".join(["fleet/", "all"])))  # a new string object each time
        w.subscribe(s, sub("".join(["$share/g/", "x"])))
    filters = [s.subscriptions["fleet/all"].topic_filter for s in sessions]
    assert filters[0] == "fleet/all" and all(f is filters[0] for f in filters)
    assert sessions[2].subscriptions["$share/g/x"].share_group == "g"
    assert set(w.trie.match("fleet/all").direct) == {"c0", "c1", "c2"}
    assert w.trie.held_filter("fleet/other") == "fleet/other"
