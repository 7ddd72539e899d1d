"""core/session.py: one session's in-flight window, queue, packet ids, resend on
resume, QoS 0 offline, queue bounds, expiry while queued, hand-over and the ACL's
ReceiveGate. Plain objects and a fake ``now``: no sockets, no sleeps."""

from __future__ import annotations

from iotbroker.codec.packets import PubRel
from iotbroker.core.session import (
    OneSubscription,
    ReceiveGate,
    Session,
    SessionContext,
    SessionLimits,
)
from iotbroker.core.subscriptions import SubscriptionEntry
from iotbroker.message import Delivery
from iotbroker.metrics import Metrics
from iotbroker.storage.base import (
    ChangeBatch,
    Op,
    OutboundRecord,
    OutboundState,
    QueuedRecord,
)
from iotbroker.storage.memory import MemoryStore
from tests.core.fakes import FakeOutlet, attach, changes, delivery, ops


def make(
    expiry: int = 0,
    limits: SessionLimits | None = None,
    gate: ReceiveGate | None = None,
    version: int = 5,
) -> tuple[Session, ChangeBatch, Metrics]:
    batch, metrics = ChangeBatch(), Metrics()
    session = Session(
        "c1", version, expiry,
        SessionContext(batch, limits or SessionLimits(), metrics,
                       gate if gate is not None else ReceiveGate()),
    )
    return session, batch, metrics


def online(
    expiry: int = 0, receive_maximum: int = 65535, **kw: object
) -> tuple[Session, FakeOutlet, ChangeBatch, Metrics]:
    session, batch, metrics = make(expiry, **kw)  # type: ignore[arg-type]
    outlet = FakeOutlet()
    attach(session, outlet, receive_maximum, 0.0)
    return session, outlet, batch, metrics


# ------------------------------------------------------------------ delivery


def test_qos1_delivery_goes_in_flight_with_a_packet_id() -> None:
    session, outlet, _, metrics = online()
    assert session.deliver(delivery(b"a"), 1.0) is True
    assert outlet.published[0][1:] == (1, False, 1.0)
    assert set(session.inflight) == {1}
    assert session.inflight[1].state is OutboundState.PUBLISH_SENT
    assert metrics.publish_sent == 1 and metrics.publish_sent_qos == (0, 1, 0)


def test_qos0_delivery_online_is_sent_without_packet_id_and_not_kept() -> None:
    session, outlet, batch, metrics = online(expiry=60)
    session.deliver(delivery(b"a", qos=0), 0.0)
    assert outlet.published[0][1:3] == (None, False)
    assert not session.inflight and session.queued_count == 0
    assert metrics.publish_sent_qos == (1, 0, 0)
    assert not batch  # nothing to persist for QoS 0


def test_mqtt_3_3_4_9_inflight_window_is_the_receive_maximum() -> None:
    """[MQTT-3.3.4-9]: at most Receive Maximum QoS 1/2 PUBLISHes unacknowledged; the
    rest wait in the queue and go out as acknowledgements free the window."""
    session, outlet, _, _ = online(receive_maximum=2)
    for i in range(5):
        session.deliver(delivery(b"m%d" % i, qos=1 + i % 2), 0.0)
    assert outlet.payloads == [b"m0", b"m1"]
    assert len(session.inflight) == 2 and session.queued_count == 3
    assert session.on_puback(1, 0.0)
    assert outlet.payloads == [b"m0", b"m1", b"m2"]
    assert len(session.inflight) == 2
    # QoS 2: the window stays taken until PUBCOMP, not PUBREC
    assert session.on_pubrec(2, 0x00, 0.0)
    assert len(outlet.published) == 3
    assert session.on_pubcomp(2, 0.0)
    assert outlet.payloads == [b"m0", b"m1", b"m2", b"m3"]
    assert len(session.inflight) == 2 and session.queued_count == 1


def test_mqtt_3_3_4_9_qos0_is_not_held_by_a_full_window() -> None:
    """QoS 0 is not counted by Receive Maximum [MQTT-3.3.4-9]: it is sent at once."""
    session, outlet, _, _ = online(receive_maximum=1)
    session.deliver(delivery(b"q1", qos=1), 0.0)
    session.deliver(delivery(b"q0", qos=0), 0.0)
    assert outlet.payloads == [b"q1", b"q0"]


def test_mqtt_2_3_1_2_packet_id_still_in_flight_is_never_reused() -> None:
    """[MQTT-2.3.1-2]: a new PUBLISH never takes an identifier still in flight, also
    when the counter wraps around past 65535."""
    session, outlet, _, _ = online()
    session.deliver(delivery(b"first"), 0.0)  # packet id 1, never acknowledged
    session.restore_counters(0xFFFF, session.next_seq)
    session.deliver(delivery(b"a"), 0.0)
    session.deliver(delivery(b"b"), 0.0)
    assert outlet.packet_ids == [1, 0xFFFF, 2]  # wrapped, skipped 1
    assert len(set(session.inflight)) == 3


def test_mqtt_2_3_1_2_ids_are_unique_across_many_acknowledged_rounds() -> None:
    """[MQTT-2.3.1-2] over a long run: ids cycle 1..65535 (never 0) and never collide."""
    session, outlet, _, _ = online(receive_maximum=100)
    held = set()
    for i in range(70_000):
        before = set(session.inflight)
        session.deliver(delivery(b"x"), 0.0)
        pid = outlet.published[-1][1]
        assert pid is not None and 0 < pid <= 0xFFFF and pid not in before
        if i % 2000 == 0:
            held.add(pid)  # a few are never acknowledged
        else:
            session.on_puback(pid, 0.0)
        assert len(session.inflight) == len(held)


def test_mqtt_4_6_0_5_messages_leave_in_the_order_they_were_accepted() -> None:
    """[MQTT-4.6.0-5]: same-QoS messages are sent in arrival order, also when some
    wait in the queue: a new message never overtakes queued ones."""
    session, outlet, _, _ = online(receive_maximum=1)
    for i in range(4):
        session.deliver(delivery(b"m%d" % i), 0.0)
    outlet.writable = False
    session.deliver(delivery(b"m4"), 0.0)
    outlet.writable = True
    for _ in range(5):
        (pid,) = session.inflight
        session.on_puback(pid, 0.0)
    assert outlet.payloads == [b"m0", b"m1", b"m2", b"m3", b"m4"]


def test_mqtt_4_6_0_5_new_message_waits_behind_queue_even_with_window_room() -> None:
    """[MQTT-4.6.0-5]: queued messages go first even if the window has room now."""
    session, outlet, _, _ = online(receive_maximum=10)
    outlet.writable = False
    session.deliver(delivery(b"old"), 0.0)
    assert session.queued_count == 1 and not outlet.published
    outlet.writable = True
    session.deliver(delivery(b"new"), 0.0)
    assert outlet.payloads == []  # queued behind "old" until the next pump
    session.pump(0.0)
    assert outlet.payloads == [b"old", b"new"]


def test_not_writable_outlet_queues_qos1_and_drops_qos0_counting_it() -> None:
    session, outlet, _, metrics = online()
    outlet.writable = False
    session.deliver(delivery(b"one", qos=1), 0.0)
    session.deliver(delivery(b"zero", qos=0), 0.0)
    assert not outlet.calls
    assert session.queued_count == 1
    assert metrics.messages_dropped_slow_consumer == 1
    outlet.writable = True
    session.pump(0.0)
    assert outlet.payloads == [b"one"]


def test_mqtt_3_1_2_25_too_large_publish_is_dropped_as_if_delivered() -> None:
    """[MQTT-3.1.2-25]: a PUBLISH over the client's Maximum Packet Size is discarded,
    counted, and does not take the window."""
    session, batch, metrics = make(expiry=60)
    outlet = FakeOutlet(max_payload=3)
    attach(session, outlet, 1, 0.0)
    session.deliver(delivery(b"too large"), 0.0)
    session.deliver(delivery(b"ok"), 0.0)
    assert outlet.payloads == [b"ok"]
    assert metrics.messages_dropped_too_large == 1
    assert len(session.inflight) == 1
    # What the turn leaves in the store: the in-flight "ok", nothing of "too large"
    # (the connection refuses it after the session put it in flight, so the batch
    # holds its put and its delete; they are committed together).
    store = MemoryStore()
    store.apply(batch)
    snapshot = store.load()
    outbound = snapshot.outbound.get("c1", [])
    assert [rec.delivery.message.payload for rec in outbound if rec.delivery] == [b"ok"]
    assert not snapshot.queued.get("c1")


# ---------------------------------------------------------------- acks


def test_puback_completes_qos1_and_persists_the_delete() -> None:
    session, _, batch, _ = online(expiry=60)
    session.deliver(delivery(b"a"), 0.0)
    (rec, _), = changes(batch, Op.PUT_OUTBOUND)
    assert isinstance(rec, OutboundRecord)
    assert (rec.client_id, rec.packet_id, rec.state) == ("c1", 1, OutboundState.PUBLISH_SENT)
    assert rec.delivery is not None and rec.delivery.message.payload == b"a"
    assert session.on_puback(1, 0.0)
    assert changes(batch, Op.DELETE_OUTBOUND) == [("c1", 1)]
    assert not session.inflight


def test_acks_for_unknown_or_wrong_kind_of_packet_id_are_refused() -> None:
    session, _, _, _ = online()
    session.deliver(delivery(b"one", qos=1), 0.0)  # id 1
    session.deliver(delivery(b"two", qos=2), 0.0)  # id 2
    assert not session.on_puback(99, 0.0)
    assert not session.on_puback(2, 0.0)  # QoS 2 is not completed by PUBACK
    assert not session.on_pubrec(1, 0, 0.0)  # QoS 1 has no PUBREC
    assert not session.on_pubcomp(2, 0.0)  # PUBCOMP before PUBREC
    assert set(session.inflight) == {1, 2}


def test_qos2_pubrec_answers_pubrel_and_persists_the_new_state() -> None:
    session, outlet, batch, _ = online(expiry=60)
    session.deliver(delivery(b"q2", qos=2), 0.0)
    batch.clear()
    assert session.on_pubrec(1, 0x00, 0.0)
    assert outlet.packets == [PubRel(1)]
    assert session.inflight[1].state is OutboundState.PUBREL_SENT
    (rec, _), = changes(batch, Op.PUT_OUTBOUND)
    assert isinstance(rec, OutboundRecord) and rec.state is OutboundState.PUBREL_SENT
    # a repeated PUBREC is answered again, without a second store write
    assert session.on_pubrec(1, 0x00, 0.0)
    assert outlet.packets == [PubRel(1), PubRel(1)]
    assert len(batch) == 1
    assert session.on_pubcomp(1, 0.0)
    assert not session.inflight
    assert ops(batch)[-1] is Op.DELETE_OUTBOUND


def test_mqtt_4_4_0_2_pubrec_with_failure_code_ends_the_delivery() -> None:
    """A PUBREC with a reason code >= 0x80 ends the QoS 2 delivery: no PUBREL, the
    window is freed for the next message, and it is never re-sent [MQTT-4.4.0-2]."""
    session, outlet, batch, _ = online(expiry=60, receive_maximum=1)
    session.deliver(delivery(b"refused", qos=2), 0.0)
    session.deliver(delivery(b"next", qos=2), 0.0)
    assert session.on_pubrec(1, 0x87, 0.0)
    assert outlet.packets == []
    assert ("c1", 1) in changes(batch, Op.DELETE_OUTBOUND)
    assert outlet.payloads == [b"refused", b"next"]
    session.detach(1.0)
    again = FakeOutlet()
    attach(session, again, 10, 2.0)
    assert again.payloads == [b"next"]  # only the one still in flight


# ------------------------------------------------------------ resume / resend


def test_mqtt_4_4_0_1_resume_resends_publish_with_dup_and_pubrel_in_order() -> None:
    """[MQTT-4.4.0-1]: on resume, unacknowledged PUBLISHes are re-sent with DUP=1 and
    their original packet ids, and PUBRELs re-sent, in their original order."""
    session, _, _, _ = online(expiry=60)
    session.deliver(delivery(b"a", qos=1), 0.0)  # 1
    session.deliver(delivery(b"b", qos=2), 0.0)  # 2
    session.deliver(delivery(b"c", qos=1), 0.0)  # 3
    session.on_pubrec(2, 0x00, 0.0)
    session.detach(5.0)
    assert session.disconnected_at == 5.0
    again = FakeOutlet()
    attach(session, again, 65535, 10.0)
    assert again.log == [
        ("PUBLISH", b"a", 1, True),
        ("PUBREL", 2),
        ("PUBLISH", b"c", 3, True),
    ]
    assert session.disconnected_at is None


def test_mqtt_3_3_4_9_resend_on_resume_respects_the_new_receive_maximum() -> None:
    """[MQTT-3.3.4-9] with [MQTT-4.4.0-1]: re-sent messages count against the new
    Receive Maximum; the rest are re-sent as acks arrive, before anything queued."""
    session, _, _, _ = online(expiry=60)
    for name in (b"a", b"b", b"c"):
        session.deliver(delivery(name), 0.0)
    session.detach(1.0)
    session.deliver(delivery(b"queued"), 1.0)
    again = FakeOutlet()
    attach(session, again, 1, 2.0)
    assert again.log == [("PUBLISH", b"a", 1, True)]
    session.on_puback(1, 2.0)
    assert again.log[-1] == ("PUBLISH", b"b", 2, True)
    session.on_puback(2, 2.0)
    session.on_puback(3, 2.0)
    assert [entry[1] for entry in again.log] == [b"a", b"b", b"c", b"queued"]
    assert again.log[-1][3] is False  # a first send: DUP=0


def test_resend_keeps_the_original_order_after_packet_ids_wrapped() -> None:
    """Original order is the acceptance order (seq), not packet id order [MQTT-4.4.0-1]."""
    session, _, _, _ = online(expiry=60)
    session.restore_counters(0xFFFF, 1)
    session.deliver(delivery(b"first"), 0.0)   # 65535
    session.deliver(delivery(b"second"), 0.0)  # 1
    session.detach(0.0)
    again = FakeOutlet()
    attach(session, again, 10, 0.0)
    assert [(p, i) for _, p, i, _ in again.log] == [(b"first", 0xFFFF), (b"second", 1)]


# -------------------------------------------------------- QoS 0 and queues


def test_qos0_to_offline_session_is_dropped_and_counted() -> None:
    for expiry in (0, 60):  # not queued by default, persistent or not
        session, batch, metrics = make(expiry=expiry)
        assert session.deliver(delivery(b"z", qos=0), 0.0) is True
        assert session.queued_count == 0
        assert metrics.messages_dropped_qos0_offline == 1
        assert not batch


def test_qos0_offline_is_queued_for_persistent_sessions_when_configured() -> None:
    session, batch, metrics = make(expiry=60, limits=SessionLimits(queue_qos0_offline=True))
    session.deliver(delivery(b"z", qos=0), 0.0)
    assert session.queued_count == 1 and metrics.messages_dropped_qos0_offline == 0
    assert ops(batch) == [Op.PUT_QUEUED]
    outlet = FakeOutlet()
    attach(session, outlet, 10, 1.0)
    assert outlet.published[0][1:3] == (None, False)
    assert not session.inflight


def test_mqtt_3_1_2_5_offline_persistent_session_queues_qos1_and_qos2() -> None:
    """[MQTT-3.1.2-5] (3.1.1): a disconnected session with state kept queues QoS 1/2."""
    session, batch, _ = make(expiry=60)
    session.deliver(delivery(b"one", qos=1), 0.0)
    session.deliver(delivery(b"two", qos=2), 0.0)
    assert session.queued_count == 2
    recs = [rec for rec, _ in changes(batch, Op.PUT_QUEUED)]
    assert all(isinstance(r, QueuedRecord) for r in recs)
    assert [r.seq for r in recs] == [1, 2]  # type: ignore[attr-defined]
    outlet = FakeOutlet()
    attach(session, outlet, 10, 1.0)
    assert outlet.payloads == [b"one", b"two"]
    assert changes(batch, Op.DELETE_QUEUED) == [("c1", 1), ("c1", 2)]


def test_queue_bound_drop_oldest_counts_and_deletes_the_oldest() -> None:
    session, batch, metrics = make(expiry=60, limits=SessionLimits(max_queued_messages=2))
    for name in (b"a", b"b", b"c"):
        session.deliver(delivery(name), 0.0)
    assert [d.message.payload for _, d in session.queue] == [b"b", b"c"]
    assert metrics.messages_dropped_queue_full == 1
    assert changes(batch, Op.DELETE_QUEUED) == [("c1", 1)]


def test_queue_bound_drop_new_keeps_the_queue_and_counts() -> None:
    limits = SessionLimits(max_queued_messages=2, drop_oldest=False)
    session, batch, metrics = make(expiry=60, limits=limits)
    for name in (b"a", b"b", b"c"):
        session.deliver(delivery(name), 0.0)
    assert [d.message.payload for _, d in session.queue] == [b"a", b"b"]
    assert metrics.messages_dropped_queue_full == 1
    assert len(changes(batch, Op.PUT_QUEUED)) == 2
    assert not changes(batch, Op.DELETE_QUEUED)


def test_queue_byte_bound_drops_oldest_until_the_new_message_fits() -> None:
    limits = SessionLimits(max_queued_bytes=10)
    session, _, metrics = make(expiry=60, limits=limits)
    session.deliver(delivery(b"1234"), 0.0)
    session.deliver(delivery(b"5678"), 0.0)
    session.deliver(delivery(b"abcdef"), 0.0)  # 14 bytes > 10: the oldest goes
    assert [d.message.payload for _, d in session.queue] == [b"5678", b"abcdef"]
    assert metrics.messages_dropped_queue_full == 1


def test_queue_full_window_full_online_session_also_bounded() -> None:
    limits = SessionLimits(max_queued_messages=1, drop_oldest=False)
    session, _, _, metrics = online(receive_maximum=1, limits=limits)
    for name in (b"a", b"b", b"c"):
        session.deliver(delivery(name), 0.0)
    assert len(session.inflight) == 1 and session.queued_count == 1
    assert metrics.messages_dropped_queue_full == 1


def test_message_expiring_while_queued_is_not_sent() -> None:
    """A message whose Message Expiry Interval passed while it waited is dropped at
    send time, counted and deleted from the store (MQTT 5.0 §3.3.2.3.3)."""
    session, batch, metrics = make(expiry=60)
    session.deliver(delivery(b"stale", expires_at=10.0), 0.0)
    session.deliver(delivery(b"fresh", expires_at=100.0), 0.0)
    session.deliver(delivery(b"forever"), 0.0)
    outlet = FakeOutlet()
    attach(session, outlet, 10, 20.0)
    assert outlet.payloads == [b"fresh", b"forever"]
    assert metrics.messages_expired == 1
    assert ("c1", 1) in changes(batch, Op.DELETE_QUEUED)  # removed from the store too


# ------------------------------------------------------------ persistence


def test_non_persistent_session_writes_nothing_to_the_batch() -> None:
    session, outlet, batch, _ = online(expiry=0, receive_maximum=1)
    session.remember_subscription(SubscriptionEntry("c1", "a/#", 1))
    session.deliver(delivery(b"a", qos=2), 0.0)
    session.deliver(delivery(b"b", qos=1), 0.0)
    session.on_pubrec(1, 0, 0.0)
    session.on_pubcomp(1, 0.0)
    session.hold_inbound_qos2(7)
    session.release_inbound_qos2(7)
    session.forget_subscription("a/#")
    assert not batch
    assert outlet.payloads == [b"a", b"b"]


def test_subscriptions_are_persisted_with_their_options() -> None:
    session, batch, _ = make(expiry=60)
    entry = SubscriptionEntry("c1", "a/+", 2, True, True, 1, 42)
    session.remember_subscription(entry)
    assert changes(batch, Op.PUT_SUBSCRIPTION) == [
        (SubscriptionEntry("c1", "a/+", 2, True, True, 1, 42), None)
    ]
    assert session.forget_subscription("a/+") == entry
    assert session.forget_subscription("a/+") is None
    assert changes(batch, Op.DELETE_SUBSCRIPTION) == [("c1", "a/+")]


def test_mqtt_4_3_3_2_inbound_qos2_id_is_held_until_pubrel() -> None:
    """[MQTT-4.3.3-2] (3.1.1): a QoS 2 id is stored until PUBREL; a duplicate PUBLISH
    with a held id is not delivered again."""
    session, batch, _ = make(expiry=60)
    assert session.hold_inbound_qos2(5) is True
    assert session.hold_inbound_qos2(5) is False
    assert session.release_inbound_qos2(5) is True
    assert session.release_inbound_qos2(5) is False
    assert session.hold_inbound_qos2(5) is True
    assert ops(batch) == [Op.PUT_INBOUND_QOS2, Op.DELETE_INBOUND_QOS2, Op.PUT_INBOUND_QOS2]


def test_clear_state_forgets_everything_and_restarts_packet_ids() -> None:
    session, outlet, _, _ = online(expiry=60, receive_maximum=1)
    session.remember_subscription(SubscriptionEntry("c1", "a", 1))
    session.deliver(delivery(b"a"), 0.0)
    session.deliver(delivery(b"b"), 0.0)
    session.hold_inbound_qos2(3)
    session.clear_state()
    assert not session.subscriptions and not session.inflight
    assert session.queued_count == 0 and not session.inbound_qos2
    assert session.next_packet_id == 1
    session.deliver(delivery(b"c"), 0.0)
    assert outlet.packet_ids[-1] == 1


# --------------------------------------------------------------- hand over


def test_hand_over_moves_unacked_qos1_and_queued_but_keeps_pubrel_sent() -> None:
    session, _, batch, _ = online(expiry=60, receive_maximum=3)
    session.deliver(delivery(b"q1", qos=1), 0.0)   # id 1, PUBLISH_SENT
    session.deliver(delivery(b"q2", qos=2), 0.0)   # id 2
    session.deliver(delivery(b"q2b", qos=2), 0.0)  # id 3, PUBLISH_SENT QoS 2: stays
    session.on_pubrec(2, 0, 0.0)                   # PUBREL_SENT: received, stays
    session.deliver(delivery(b"queued-a"), 0.0)
    session.deliver(delivery(b"queued-b"), 0.0)
    batch.clear()
    taken: list[Delivery] = []

    def new_home(d: Delivery) -> bool:
        if d.message.payload == b"queued-b":
            return False
        taken.append(d)
        return True

    assert session.hand_over(new_home) == 2
    assert [d.message.payload for d in taken] == [b"q1", b"queued-a"]
    assert set(session.inflight) == {2, 3}
    assert [d.message.payload for _, d in session.queue] == [b"queued-b"]
    assert ops(batch) == [Op.DELETE_OUTBOUND, Op.DELETE_QUEUED]


def test_hand_over_taking_nothing_changes_nothing() -> None:
    session, _, batch, _ = online(expiry=60, receive_maximum=1)
    session.deliver(delivery(b"a"), 0.0)
    session.deliver(delivery(b"b"), 0.0)
    batch.clear()
    assert session.hand_over(lambda d: False) == 0
    assert set(session.inflight) == {1} and session.queued_count == 1
    assert not batch


# -------------------------------------------------------------- ReceiveGate


def _refuse_secret(session: Session, topic: str) -> bool:
    return not topic.startswith("secret/")


def test_gate_refusing_a_topic_neither_queues_nor_sends_and_counts() -> None:
    gate = ReceiveGate(_refuse_secret)
    session, outlet, batch, metrics = online(expiry=60, gate=gate)
    for qos in (0, 1, 2):
        assert session.deliver(delivery(b"x", qos=qos, topic="secret/a"), 0.0) is False
    assert not outlet.calls and not session.inflight and session.queued_count == 0
    assert metrics.acl_denials == 3
    assert not batch
    assert session.deliver(delivery(b"ok", topic="public/a"), 0.0) is True
    assert outlet.payloads == [b"ok"]


def test_gate_refusing_offline_session_does_not_queue() -> None:
    gate = ReceiveGate(_refuse_secret)
    session, batch, metrics = make(expiry=60, gate=gate)
    assert session.deliver(delivery(b"x", topic="secret/a"), 0.0) is False
    assert session.queued_count == 0 and not batch and metrics.acl_denials == 1


def test_queued_message_is_dropped_at_pump_if_the_gate_changed_meanwhile() -> None:
    gate = ReceiveGate()
    session, batch, metrics = make(expiry=60, gate=gate)
    session.deliver(delivery(b"secret", topic="secret/a"), 0.0)
    session.deliver(delivery(b"public", topic="public/a"), 0.0)
    assert session.queued_count == 2
    gate.check = _refuse_secret  # the ACL was reloaded (SIGHUP)
    outlet = FakeOutlet()
    attach(session, outlet, 10, 1.0)
    assert outlet.payloads == [b"public"]
    assert metrics.acl_denials == 1
    assert session.queued_count == 0
    assert ("c1", 1) in changes(batch, Op.DELETE_QUEUED)


def test_in_flight_message_is_not_resent_if_the_gate_changed_meanwhile() -> None:
    gate = ReceiveGate()
    session, _, batch, metrics = online(expiry=60, gate=gate)
    session.deliver(delivery(b"secret", topic="secret/a"), 0.0)
    session.deliver(delivery(b"public", topic="public/a"), 0.0)
    session.detach(1.0)
    gate.check = _refuse_secret
    again = FakeOutlet()
    attach(session, again, 10, 2.0)
    assert again.log == [("PUBLISH", b"public", 2, True)]
    assert set(session.inflight) == {2}
    assert ("c1", 1) in changes(batch, Op.DELETE_OUTBOUND)
    assert metrics.acl_denials == 1


def test_may_receive_counts_refusals_only() -> None:
    session, _, metrics = make(gate=ReceiveGate(_refuse_secret))
    assert session.may_receive("public/a") is True
    assert session.may_receive("secret/a") is False
    assert metrics.acl_denials == 1


# ------------------------------------------- subscriptions held small (issue 19)


def test_mqtt_3_8_4_3_one_subscription_is_held_without_a_dict_and_replaced() -> None:
    """A session with one subscription holds just its entry (no 184-byte dict) and shows
    it as a :class:`OneSubscription` mapping; subscribing again to the same filter replaces it
    [MQTT-3.8.4-3] and returns the replaced entry; a second filter makes it a dict;
    every change is still stored for a persistent session."""
    session, batch, _ = make(expiry=60)
    first = SubscriptionEntry("c1", "a/b", 1)
    assert session.remember_subscription(first) is None
    assert isinstance(session.subscriptions, OneSubscription)
    assert dict(session.subscriptions) == {"a/b": first} and len(session.subscriptions) == 1
    assert "a/b" in session.subscriptions and "a/c" not in session.subscriptions
    assert session.subscriptions.get("a/c") is None and list(session.subscriptions) == ["a/b"]
    again = SubscriptionEntry("c1", "a/b", 2)
    assert session.remember_subscription(again) is first
    assert session.subscriptions["a/b"] is again and len(session.subscriptions) == 1
    other = SubscriptionEntry("c1", "x/#", 0)
    assert session.remember_subscription(other) is None
    assert type(session.subscriptions) is dict
    assert session.subscriptions == {"a/b": again, "x/#": other}
    assert ops(batch).count(Op.PUT_SUBSCRIPTION) == 3


def test_forgetting_the_only_subscription_leaves_none() -> None:
    session, batch, _ = make(expiry=60)
    entry = SubscriptionEntry("c1", "a/b", 1)
    session.remember_subscription(entry)
    assert session.forget_subscription("a/c") is None
    assert session.forget_subscription("a/b") is entry
    assert not session.subscriptions and session.forget_subscription("a/b") is None
    assert Op.DELETE_SUBSCRIPTION in ops(batch)
    session.restore_subscription(entry)  # and one can come back (restore path)
    assert session.subscriptions == {"a/b": entry}
