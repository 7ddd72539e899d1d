"""core/session.py in a cluster node (docs/cluster.md, "QoS 2 across a move"): a
persistent session sends a QoS 2 message that has a stream key with the packet id
derived from that key (0x8000-0xFFFF), allocates its other ids in 1-0x7FFF, holds the
PUBREL of a derived id until the cluster room releases it, reports completions, and
takes back a moved session's QoS 2 messages in flight under their derived ids
[MQTT-4.3.3-10], [MQTT-4.4.0-1], [MQTT-2.3.1-4]."""

from __future__ import annotations

from iotbroker.codec.packets import PubRel
from iotbroker.core.session import Session, SessionContext, SessionLimits
from iotbroker.message import Delivery, derived_packet_id, write_key
from iotbroker.metrics import Metrics
from iotbroker.storage.base import ChangeBatch, OutboundState, QueuedRecord
from iotbroker.storage.records import RecordDecoder, encode_queued, queued_key
from tests.core.fakes import FakeOutlet, attach, message


def _cluster_session(expiry: int = 3600) -> tuple[Session, SessionContext]:
    context = SessionContext(ChangeBatch(), SessionLimits(), Metrics())
    context.derived_ids = True
    context.held_pubrels = []
    context.qos2_done = []
    return Session("c1", 5, expiry, context), context


def _keyed(payload: bytes, write_id: str, qos: int = 2) -> Delivery:
    m = message("t", payload, qos)
    m.stream_key = write_key(write_id)
    return Delivery(m, qos)


def test_derived_packet_id_is_in_the_upper_half_and_the_same_everywhere() -> None:
    key = write_key("node-a/x1q:7")
    assert key == write_key("node-a/x1q:7") != write_key("node-a/x1q:8")
    assert 0x8000 <= derived_packet_id(key) <= 0xFFFF


def test_mqtt_4_3_3_10_a_keyed_qos2_delivery_uses_its_derived_id_others_the_lower_half(
        ) -> None:
    session, _ = _cluster_session()
    outlet = FakeOutlet()
    attach(session, outlet, 100, 0.0)
    two = _keyed(b"two", "w:1")
    session.deliver(two, 0.0)
    session.deliver(Delivery(message("t", b"one", 1), 1), 0.0)
    session.deliver(Delivery(message("t", b"plain2", 2), 2), 0.0)  # no key: allocated
    ids = outlet.packet_ids
    assert ids[0] == derived_packet_id(two.message.stream_key)
    assert ids[1] is not None and ids[1] <= 0x7FFF
    assert ids[2] is not None and ids[2] <= 0x7FFF


def test_a_clean_session_does_not_derive_ids() -> None:
    session, _ = _cluster_session(expiry=0)
    outlet = FakeOutlet()
    attach(session, outlet, 100, 0.0)
    session.deliver(_keyed(b"two", "w:1"), 0.0)
    assert outlet.packet_ids == [1]


def test_mqtt_2_3_1_4_a_derived_id_in_flight_makes_the_next_one_with_it_wait() -> None:
    """Two messages whose keys give the same id: the second waits for the first's
    PUBCOMP (an id is never reused while in flight), and keeps its order."""
    session, context = _cluster_session()
    outlet = FakeOutlet()
    attach(session, outlet, 100, 0.0)
    first = _keyed(b"a", "w:1")
    second = _keyed(b"b", "w:2")
    second.message.stream_key = first.message.stream_key + 0x10000  # same low 15 bits
    after = _keyed(b"c", "w:3")
    for d in (first, second, after):
        session.deliver(d, 0.0)
    pid = derived_packet_id(first.message.stream_key)
    assert outlet.payloads == [b"a"]
    assert session.on_pubrec(pid, 0, 0.0)
    assert context.held_pubrels == [(session, pid, first.message.stream_key)]
    assert not [p for p in outlet.packets if isinstance(p, PubRel)]  # held
    session.release_pubrel(pid, 0.0)
    assert [p.packet_id for p in outlet.packets if isinstance(p, PubRel)] == [pid]
    assert session.on_pubcomp(pid, 0.0)
    assert context.qos2_done == [(session, first.message.stream_key)]
    assert outlet.payloads == [b"a", b"b", b"c"]
    assert outlet.packet_ids[1] == pid


def test_allocated_ids_wrap_below_0x8000() -> None:
    session, _ = _cluster_session()
    outlet = FakeOutlet()
    attach(session, outlet, 100, 0.0)
    session.restore_counters(0x7FFF, 1)
    session.deliver(Delivery(message("t", b"x", 1), 1), 0.0)
    session.deliver(Delivery(message("t", b"y", 1), 1), 0.0)
    assert outlet.packet_ids == [0x7FFF, 1]


def test_mqtt_4_4_0_1_a_moved_sessions_qos2_messages_are_resent_as_they_were() -> None:
    """restore_derived: not released -> PUBLISH again with DUP=1 and its derived id;
    released -> PUBREL only; both stored as outbound records."""
    session, context = _cluster_session()
    unreleased = _keyed(b"u", "w:1")
    released = _keyed(b"r", "w:2")
    assert session.restore_derived(unreleased, OutboundState.PUBLISH_SENT, 0.0)
    assert session.restore_derived(released, OutboundState.PUBREL_SENT, 0.0)
    assert not session.restore_derived(unreleased, OutboundState.PUBLISH_SENT, 0.0)  # id taken
    assert len(context.batch) == 2
    outlet = FakeOutlet()
    attach(session, outlet, 100, 0.0)
    rel = derived_packet_id(released.message.stream_key)
    # the PUBREL again once the cluster room has the release durable (here: now)
    assert context.held_pubrels == [(session, rel, released.message.stream_key)]
    session.release_pubrel(rel, 0.0)
    assert outlet.log == [
        ("PUBLISH", b"u", derived_packet_id(unreleased.message.stream_key), True),
        ("PUBREL", rel),
    ]


def test_a_queued_messages_stream_key_survives_the_store() -> None:
    """The key (and stream sequence) of a keyed delivery's message is stored with it
    (flag 4), so it keeps its derived id after paging or a restart; records of
    messages without a key are unchanged."""
    d = _keyed(b"k", "w:9")
    d.message.stream_seq = 77
    value = encode_queued(QueuedRecord("c1", 5, d))
    rec = RecordDecoder().queued(queued_key("c1", 5), value)
    assert rec.delivery.message.stream_key == d.message.stream_key
    assert rec.delivery.message.stream_seq == 77
    assert rec.delivery.message == d.message
    plain = Delivery(message("t", b"p", 2), 2)
    plain_value = encode_queued(QueuedRecord("c1", 6, plain))
    assert len(plain_value) == len(value) - 16  # no trailer without a key
    assert RecordDecoder().queued(queued_key("c1", 6), plain_value).delivery.message.stream_key == 0

