"""A stream outbox (a bridge's session, issue 15): each QoS 1 message is stored once,
as its queued record, from when it is accepted until the remote acknowledges it; going
in flight writes nothing (the packet id is derived from the seq) and the PUBACK deletes
that one record. After a restart the messages that may have been in flight are re-sent
first with DUP=1 and their original packet ids [MQTT-4.4.0-1]; nothing acknowledged
is lost or sent again."""

from __future__ import annotations

from iotbroker.codec.packets import Properties
from iotbroker.core.session import (
    Session,
    SessionContext,
    SessionLimits,
    stream_packet_id,
)
from iotbroker.core.sessions import SessionRegistry
from iotbroker.core.subscriptions import SubscriptionTrie
from iotbroker.message import Delivery, Message
from iotbroker.metrics import Metrics
from iotbroker.storage.base import ChangeBatch, Op, QueuedRecord
from iotbroker.storage.memory import MemoryStore
from tests.core.fakes import FakeOutlet, attach

CID = "$bridge/cloud"


class Pager:
    """Commits the batch, then reads from the store (what the server does)."""

    def __init__(self, store: MemoryStore, batch: ChangeBatch) -> None:
        self.store, self.batch = store, batch

    def commit(self) -> None:
        self.store.apply(self.batch)
        self.batch.clear()

    def load_queued(self, client_id: str) -> list[QueuedRecord]:
        self.commit()
        return self.store.load_queued(client_id)

    def get_queued(self, client_id: str, seq: int) -> QueuedRecord | None:
        self.commit()
        return self.store.get_queued(client_id, seq)


def _message(i: int, qos: int = 1) -> Message:
    return Message(f"t/{i}", f"m{i}".encode(), qos, False, Properties(), 0.0)


def _open(store: MemoryStore, restore: bool = False) -> tuple[Session, Pager]:
    batch = ChangeBatch()
    pager = Pager(store, batch)
    registry = SessionRegistry(SubscriptionTrie(), batch, SessionLimits(), Metrics())
    registry.pager = pager
    if restore:
        registry.restore(store.load(queued_bodies=False, queued_summary=True), 1.0)
        found = registry.get(CID)
        assert found is not None
        session = found
    else:
        session, _ = registry.open(CID, False, 0xFFFFFFFF, 5, 0.0)
        registry.close(session, 0.0)
    shared = session.context
    session.context = SessionContext(batch, SessionLimits(max_queued_messages=1000),
                                     shared.metrics, pager=pager, stream_outbox=True)
    return session, pager


def _ops(batch: ChangeBatch) -> list[Op]:
    return [op for op, _, _ in batch.changes]


def test_each_message_is_stored_once_and_its_puback_deletes_it() -> None:
    store = MemoryStore()
    session, pager = _open(store)
    outlet = FakeOutlet()
    attach(session, outlet, 2, 0.0)
    pager.commit()
    for i in range(6):
        session.deliver(Delivery(_message(i), 1), 0.0)
    outlet.drain()
    # two sent at once, four waiting: six puts, nothing else
    assert _ops(pager.batch) == [Op.PUT_QUEUED] * 6
    pager.commit()
    first = outlet.published
    assert [pid for _, pid, _, _ in first] == [stream_packet_id(1), stream_packet_id(2)]
    assert session.on_puback(stream_packet_id(1), 0.0)
    outlet.drain()
    # the acknowledged one's record goes; the next one goes in flight without a write
    assert pager.batch.changes == [(Op.DELETE_QUEUED, CID, 1)]
    assert [d.message.payload for d, _, _, _ in outlet.published] == [b"m0", b"m1", b"m2"]
    for pid in list(session.inflight):
        session.on_puback(pid, 0.0)
    outlet.drain()
    while session.inflight:
        for pid in list(session.inflight):
            session.on_puback(pid, 0.0)
        outlet.drain()
    # the later acknowledgements came in order: their deletions became ranges
    assert Op.DELETE_QUEUED_RANGE in _ops(pager.batch)
    pager.commit()
    assert store.load_queued(CID) == [] and store.load().outbound == {}


def test_after_a_restart_what_may_have_been_in_flight_goes_first_with_dup_and_its_id(
) -> None:
    """[MQTT-4.4.0-1]: kill -9 with 2 in flight and 3 waiting; the restarted session
    re-sends the 2 with DUP=1 and the same packet ids, then the 3 as new ones."""
    store = MemoryStore()
    session, pager = _open(store)
    outlet = FakeOutlet()
    attach(session, outlet, 2, 0.0)
    for i in range(5):
        session.deliver(Delivery(_message(i), 1), 0.0)
    outlet.drain()
    sent = [(d.message.payload, pid) for d, pid, _, _ in outlet.published]
    pager.commit()  # the last commit before the crash: nothing else survives

    again, _ = _open(store, restore=True)
    assert again.adopt_stored_in_flight(2) == 2
    resumed = FakeOutlet()
    attach(again, resumed, 2, 1.0)
    resumed.drain()
    assert [(d.message.payload, pid, dup) for d, pid, dup, _ in resumed.published] == [
        (payload, pid, True) for payload, pid in sent]
    for pid in list(again.inflight):
        again.on_puback(pid, 1.0)
    resumed.drain()
    assert [(d.message.payload, dup) for d, _, dup, _ in resumed.published[2:]] == [
        (b"m2", False), (b"m3", False)]


def test_qos2_keeps_its_outbound_record_through_pubrel() -> None:
    """QoS 2 is not streamed: after PUBREC only the PUBREL may be re-sent, never the
    PUBLISH [MQTT-4.3.3], so its state is stored as before (an outbound record)."""
    store = MemoryStore()
    session, pager = _open(store)
    outlet = FakeOutlet()
    attach(session, outlet, 5, 0.0)
    pager.commit()
    session.deliver(Delivery(_message(1, 2), 2), 0.0)
    outlet.drain()
    assert _ops(pager.batch) == [Op.PUT_OUTBOUND]
    pager.commit()
    pid = outlet.published[0][1]
    assert pid is not None and session.on_pubrec(pid, 0, 0.0)
    assert session.on_pubcomp(pid, 0.0)
    assert _ops(pager.batch) == [Op.PUT_OUTBOUND, Op.DELETE_OUTBOUND]
