"""core/sessions.py: the session registry (new, resume, clean start, expiry change,
close with and without a will delay, timers, restore from a stored snapshot).
Plain objects and a fake ``now``."""

from __future__ import annotations

from iotbroker.codec.packets import Properties, PubRel, Will
from iotbroker.core.session import SessionLimits
from iotbroker.core.sessions import SessionRegistry
from iotbroker.core.subscriptions import SubscriptionEntry, SubscriptionTrie
from iotbroker.message import NEVER_EXPIRES
from iotbroker.metrics import Metrics
from iotbroker.storage.base import (
    ChangeBatch,
    Op,
    OutboundRecord,
    OutboundState,
    QueuedRecord,
    SessionRecord,
    StoreSnapshot,
    WillRecord,
)
from tests.core.fakes import FakeOutlet, attach, changes, delivery, ops


def registry() -> SessionRegistry:
    return SessionRegistry(SubscriptionTrie(), ChangeBatch(), SessionLimits(), Metrics())


def will(delay: int | None = None, topic: str = "will/c1") -> Will:
    return Will(topic, b"gone", 1, False, Properties(will_delay_interval=delay))


def subscribe(reg: SessionRegistry, client_id: str, topic_filter: str) -> None:
    session = reg.sessions[client_id]
    entry = SubscriptionEntry(client_id, topic_filter, 1)
    reg.trie.add(entry, session.remember_subscription(entry))


# ------------------------------------------------------------------- open


def test_open_creates_a_new_session_without_session_present() -> None:
    reg = registry()
    session, present = reg.open("c1", False, 0, 5, 0.0)
    assert present is False
    assert reg.get("c1") is session and len(reg) == 1
    assert session.protocol_version == 5 and not session.persistent
    assert not reg.batch  # expiry 0: nothing outlives the connection


def test_open_persistent_session_is_stored() -> None:
    reg = registry()
    session, _ = reg.open("c1", False, 300, 5, 0.0)
    ((rec, _),) = changes(reg.batch, Op.PUT_SESSION)
    assert isinstance(rec, SessionRecord)
    assert (rec.client_id, rec.expiry_interval, rec.protocol_version) == ("c1", 300, 5)
    assert session.persistent


def test_mqtt_3_1_2_5_clean_start_0_resumes_the_existing_session() -> None:
    """[MQTT-3.1.2-5]: Clean Start 0 with an existing session resumes it, with its
    subscriptions and queued messages, and CONNACK says the session is present."""
    reg = registry()
    session, _ = reg.open("c1", False, 300, 4, 0.0)
    subscribe(reg, "c1", "a/#")
    attach(session, FakeOutlet(), 10, 0.0)
    reg.close(session, 10.0)
    session.deliver(delivery(b"while away"), 11.0)
    again, present = reg.open("c1", False, 300, 5, 20.0)
    assert present is True and again is session
    assert again.protocol_version == 5
    assert set(again.subscriptions) == {"a/#"}
    assert reg.trie.match("a/b").direct.keys() == {"c1"}
    outlet = FakeOutlet()
    attach(again, outlet, 10, 20.0)
    assert outlet.payloads == [b"while away"]


def test_mqtt_3_1_2_4_clean_start_1_discards_the_existing_session() -> None:
    """[MQTT-3.1.2-4]: Clean Start 1 drops the old session (its subscriptions leave
    the trie and the store) and begins a new one without session present."""
    reg = registry()
    old, _ = reg.open("c1", False, 300, 5, 0.0)
    subscribe(reg, "c1", "a/#")
    attach(old, FakeOutlet(), 10, 0.0)
    reg.close(old, 1.0)
    old.deliver(delivery(b"queued"), 1.0)
    reg.batch.clear()
    new, present = reg.open("c1", True, 300, 5, 2.0)
    assert present is False and new is not old
    assert not new.subscriptions and new.queued_count == 0
    assert not reg.trie.match("a/b")
    assert ops(reg.batch) == [Op.DELETE_SESSION, Op.PUT_SESSION]


def test_mqtt_3_1_2_23_session_past_its_expiry_is_not_resumed() -> None:
    """[MQTT-3.1.2-23]: state is kept only for the Session Expiry Interval; a client
    coming back later (even before the timer ran) gets a new session."""
    reg = registry()
    old, _ = reg.open("c1", False, 60, 5, 0.0)
    reg.close(old, 10.0)
    new, present = reg.open("c1", False, 60, 5, 70.0)
    assert present is False and new is not old


def test_resume_with_expiry_0_removes_the_stored_session() -> None:
    reg = registry()
    session, _ = reg.open("c1", False, 300, 5, 0.0)
    reg.close(session, 1.0)
    reg.batch.clear()
    again, present = reg.open("c1", False, 0, 5, 2.0)
    assert present is True and again is session and not again.persistent
    assert changes(reg.batch, Op.DELETE_SESSION) == [("c1", None)]
    assert not changes(reg.batch, Op.PUT_SESSION)


# ----------------------------------------------------------- change_expiry


def test_change_expiry_to_zero_deletes_the_stored_session() -> None:
    reg = registry()
    session, _ = reg.open("c1", False, 300, 5, 0.0)
    reg.batch.clear()
    reg.change_expiry(session, 0)
    assert session.expiry_interval == 0 and not session.persistent
    assert ops(reg.batch) == [Op.DELETE_SESSION]


def test_change_expiry_between_non_zero_values_or_from_zero_deletes_nothing() -> None:
    reg = registry()
    session, _ = reg.open("c1", False, 0, 5, 0.0)
    reg.change_expiry(session, 60)
    reg.change_expiry(session, 120)
    assert session.expiry_interval == 120
    assert not changes(reg.batch, Op.DELETE_SESSION)


# -------------------------------------------------------------------- close


def test_close_non_persistent_session_ends_it_and_returns_the_will_now() -> None:
    reg = registry()
    session, _ = reg.open("c1", False, 0, 5, 0.0)
    subscribe(reg, "c1", "x")
    w = will(delay=30)  # the session ends now, so the delay ends now (§3.1.3.2.2)
    assert reg.close(session, 5.0, w) is w
    assert reg.get("c1") is None
    assert not reg.trie.match("x")
    assert reg.next_deadline() is None


def test_close_persistent_session_without_delay_returns_the_will_now() -> None:
    reg = registry()
    session, _ = reg.open("c1", False, 300, 5, 0.0)
    w = will()
    assert reg.close(session, 5.0, w) is w
    assert reg.get("c1") is session
    assert session.disconnected_at == 5.0
    assert not reg.pending_wills
    rec = changes(reg.batch, Op.PUT_SESSION)[-1][0]
    assert isinstance(rec, SessionRecord)
    assert rec.disconnected_at == 5.0 and rec.will is None


def test_close_with_will_delay_holds_the_will_until_it_is_due() -> None:
    """The Will Delay Interval (§3.1.3.2.2): the will is held, stored with the session,
    and returned by run_timers as (client id, username, will) once due."""
    reg = registry()
    session, _ = reg.open("c1", False, 300, 5, 0.0)
    session.username = "alice"
    w = will(delay=10)
    assert reg.close(session, 100.0, w) is None
    assert reg.next_deadline() == 110.0
    rec = changes(reg.batch, Op.PUT_SESSION)[-1][0]
    assert isinstance(rec, SessionRecord)
    assert rec.will == WillRecord(w.topic, w.payload, w.qos, w.retain, w.properties, 10)
    assert reg.run_timers(109.9) == []
    assert reg.run_timers(110.0) == [("c1", "alice", w)]
    assert reg.run_timers(111.0) == []  # only once
    assert reg.get("c1") is session  # the session itself lives on


def test_will_delay_longer_than_session_expiry_fires_when_the_session_ends() -> None:
    reg = registry()
    session, _ = reg.open("c1", False, 20, 5, 0.0)
    w = will(delay=60)
    assert reg.close(session, 0.0, w) is None
    assert reg.run_timers(19.0) == []
    assert reg.run_timers(20.0) == [("c1", None, w)]
    assert reg.get("c1") is None
    assert reg.metrics.sessions_expired == 1


def test_mqtt_3_1_3_9_resume_within_the_will_delay_cancels_the_will() -> None:
    """[MQTT-3.1.3-9]: a client reconnecting within the Will Delay Interval: no will."""
    reg = registry()
    session, _ = reg.open("c1", False, 300, 5, 0.0)
    reg.close(session, 0.0, will(delay=10))
    again, present = reg.open("c1", False, 300, 5, 5.0)
    attach(again, FakeOutlet(), 10, 5.0)
    assert present is True
    assert reg.run_timers(10.0) == []
    assert reg.run_timers(400.0) == []  # connected: the expiry timer does not end it
    assert reg.get("c1") is again


# ------------------------------------------------------------------- timers


def test_mqtt_3_1_2_23_session_expires_after_its_interval_since_disconnect() -> None:
    """[MQTT-3.1.2-23]: state is kept for Session Expiry Interval seconds after the
    connection closed, then the session ends (subscriptions gone, store deleted)."""
    reg = registry()
    session, _ = reg.open("c1", False, 60, 5, 0.0)
    subscribe(reg, "c1", "a/#")
    reg.close(session, 100.0)
    assert reg.next_deadline() == 160.0
    assert reg.run_timers(159.0) == []
    assert reg.get("c1") is session
    reg.batch.clear()
    assert reg.run_timers(160.0) == []
    assert reg.get("c1") is None
    assert not reg.trie.match("a/b")
    assert ops(reg.batch) == [Op.DELETE_SESSION]
    assert reg.metrics.sessions_expired == 1
    assert reg.next_deadline() is None


def test_session_that_never_expires_has_no_timer() -> None:
    reg = registry()
    session, _ = reg.open("c1", False, NEVER_EXPIRES, 5, 0.0)
    reg.close(session, 0.0)
    assert reg.next_deadline() is None
    assert reg.run_timers(1e12) == []
    assert reg.get("c1") is session


def test_stale_timer_of_an_earlier_disconnect_does_not_end_a_later_one() -> None:
    reg = registry()
    session, _ = reg.open("c1", False, 60, 5, 0.0)
    reg.close(session, 0.0)  # timer at 60
    again, _ = reg.open("c1", False, 60, 5, 30.0)
    attach(again, FakeOutlet(), 10, 30.0)
    reg.close(again, 50.0)  # timer at 110
    reg.run_timers(60.0)
    assert reg.get("c1") is again
    reg.run_timers(110.0)
    assert reg.get("c1") is None


def test_due_wills_of_several_sessions_come_back_in_deadline_order() -> None:
    reg = registry()
    wills = {}
    for client_id, delay in (("late", 30), ("early", 10)):
        session, _ = reg.open(client_id, False, 300, 5, 0.0)
        wills[client_id] = will(delay=delay, topic=f"will/{client_id}")
        reg.close(session, 0.0, wills[client_id])
    assert [cid for cid, _, _ in reg.run_timers(100.0)] == ["early", "late"]


# ------------------------------------------------------------------ restore


def _snapshot() -> StoreSnapshot:
    d1 = delivery(b"inflight-1", qos=1, topic="a/1")
    d3 = delivery(b"queued", qos=1, topic="a/2")
    props = Properties(will_delay_interval=30)
    return StoreSnapshot(
        sessions={
            "c1": SessionRecord(
                "c1", 5, 600, disconnected_at=1000.0,
                will=WillRecord("will/c1", b"bye", 1, True, props, 30),
                next_packet_id=9, next_seq=20, username="alice",
            ),
            "c2": SessionRecord("c2", 4, 60, disconnected_at=None),
        },
        subscriptions={
            "c1": [
                SubscriptionEntry("c1", "a/#", 1, subscription_identifier=7),
                SubscriptionEntry("c1", "$share/g/b/+", 2),
            ],
        },
        outbound={
            "c1": [
                OutboundRecord("c1", 8, OutboundState.PUBREL_SENT, None, 11),
                OutboundRecord("c1", 3, OutboundState.PUBLISH_SENT, d1, 12),
            ],
        },
        queued={"c1": [QueuedRecord("c1", 15, d3)]},
        inbound_qos2={"c1": {4, 5}},
    )


def test_restore_rebuilds_sessions_subscriptions_and_counters() -> None:
    reg = registry()
    reg.restore(_snapshot(), 1010.0)
    c1 = reg.sessions["c1"]
    assert (c1.protocol_version, c1.expiry_interval, c1.username) == (5, 600, "alice")
    assert c1.disconnected_at == 1000.0
    assert c1.next_packet_id == 9 and c1.next_seq == 20
    assert set(c1.subscriptions) == {"a/#", "$share/g/b/+"}
    assert c1.subscriptions["$share/g/b/+"].share_group == "g"
    assert c1.subscriptions["a/#"].subscription_identifier == 7
    assert reg.trie.match("a/x").direct["c1"][0].subscription_identifier == 7
    (group, _, members), = reg.trie.match("b/x").shared
    assert group == "g" and [m.client_id for m in members] == ["c1"]
    assert c1.inbound_qos2 == {4, 5}
    assert c1.hold_inbound_qos2(4) is False  # a duplicate after restart is not routed again
    assert not reg.batch  # restoring writes nothing back


def test_restore_then_resume_resends_in_flight_in_seq_order_then_queue() -> None:
    """[MQTT-4.4.0-1] across a restart: PUBREL for the id past PUBREC, the PUBLISH
    with DUP=1, then the queued message; new ids continue from the stored counter."""
    reg = registry()
    reg.restore(_snapshot(), 1010.0)
    session, present = reg.open("c1", False, 600, 5, 1020.0)
    assert present is True
    outlet = FakeOutlet()
    attach(session, outlet, 10, 1020.0)
    assert outlet.packets == [PubRel(8)]
    assert outlet.log == [
        ("PUBREL", 8),
        ("PUBLISH", b"inflight-1", 3, True),
        ("PUBLISH", b"queued", 9, False),
    ]
    session.on_pubcomp(8, 1020.0)
    session.on_puback(3, 1020.0)
    session.on_puback(9, 1020.0)
    assert not session.inflight


def test_restore_pending_will_counts_time_the_broker_was_down() -> None:
    reg = registry()
    reg.restore(_snapshot(), 1010.0)
    assert reg.run_timers(1029.0) == []
    ((client_id, username, w),) = reg.run_timers(1030.0)  # 1000 + 30
    assert (client_id, username) == ("c1", "alice")
    assert (w.topic, w.payload, w.qos, w.retain) == ("will/c1", b"bye", 1, True)
    assert w.properties.will_delay_interval == 30


def test_mqtt_3_1_2_23_restored_sessions_expire_counting_downtime() -> None:
    """[MQTT-3.1.2-23] across a restart: a session disconnected before the stop
    expires at disconnect + interval; one connected at the stop counts from restore."""
    reg = registry()
    reg.restore(_snapshot(), 1010.0)
    assert reg.sessions["c2"].disconnected_at == 1010.0
    reg.run_timers(1070.0)  # c2: 1010 + 60
    assert "c2" not in reg.sessions and "c1" in reg.sessions
    reg.run_timers(1600.0)  # c1: 1000 + 600
    assert "c1" not in reg.sessions
    assert reg.metrics.sessions_expired == 2
    assert not reg.trie.match("a/x")


def test_deliveries_pending_counts_queued_and_in_flight() -> None:
    reg = registry()
    reg.restore(_snapshot(), 1010.0)
    assert reg.deliveries_pending() == 3


def test_restored_subscriptions_share_the_client_id_and_filter_strings() -> None:
    """Issue 19: a restored entry holds its session's client id string and the one
    string of its (non-shared) filter, not copies decoded from the store."""
    def fresh(text: str) -> str:
        return "".join(list(text))  # equal, but another object

    reg = registry()
    reg.restore(StoreSnapshot(
        sessions={cid: SessionRecord(cid, 4, NEVER_EXPIRES, disconnected_at=1.0)
                  for cid in ("d1", "d2")},
        subscriptions={cid: [SubscriptionEntry(fresh(cid), fresh("fleet/all"), 1),
                             SubscriptionEntry(fresh(cid), fresh("$share/g/t"), 1)]
                       for cid in ("d1", "d2")},
    ), 2.0)
    d1, d2 = reg.sessions["d1"], reg.sessions["d2"]
    for s in (d1, d2):
        assert all(e.client_id is s.client_id for e in s.subscriptions.values())
    assert d1.subscriptions["fleet/all"].topic_filter is d2.subscriptions["fleet/all"].topic_filter
    assert d2.subscriptions["$share/g/t"].share_group == "g"
    assert set(reg.trie.match("fleet/all").direct) == {"d1", "d2"}
