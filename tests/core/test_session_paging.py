"""Offline persistent sessions keep an index of their queue, not the messages
(issue 7: bounded memory); the messages come back from the store on reconnect."""

from __future__ import annotations

from iotbroker.codec.packets import Properties
from iotbroker.core.session import Session, SessionContext, SessionLimits
from iotbroker.core.sessions import SessionRegistry
from iotbroker.core.subscriptions import SubscriptionTrie
from iotbroker.message import Delivery, Message
from iotbroker.metrics import Metrics
from iotbroker.storage.base import ChangeBatch, QueuedRecord
from iotbroker.storage.memory import MemoryStore
from tests.core.fakes import FakeOutlet, attach


class Pager:
    """Commits the batch, then reads from the store (what the server does)."""

    def __init__(self, store: MemoryStore, batch: ChangeBatch) -> None:
        self.store, self.batch, self.reads = store, batch, 0

    def load_queued(self, client_id: str):  # type: ignore[no-untyped-def]
        self.reads += 1
        self.store.apply(self.batch)
        self.batch.clear()
        return self.store.load_queued(client_id)


class Outlet(FakeOutlet):
    @property
    def sent(self) -> list[tuple[bytes, int | None, bool]]:
        return [(d.message.payload, pid, dup) for d, pid, dup, _ in self.published]


def _message(i: int) -> Message:
    return Message(f"t/{i}", f"m{i}".encode(), 1, False, Properties(), 0.0)


def _session(limits: SessionLimits | None = None) -> tuple[Session, Pager]:
    store, batch = MemoryStore(), ChangeBatch()
    pager = Pager(store, batch)
    session = Session(
        "dev-1", 4, 3600, SessionContext(batch, limits or SessionLimits(), Metrics(), pager=pager)
    )
    return session, pager


def test_offline_queue_holds_no_messages_in_memory_and_pages_back_in_order() -> None:
    session, pager = _session()
    session.detach(0.0)
    for i in range(50):
        session.deliver(Delivery(_message(i), 1), 0.0)
    assert len(session.queue) == 0
    assert session.queued_count == 50
    outlet = Outlet()
    attach(session, outlet, 100, 0.0)
    assert pager.reads == 1
    assert [p for p, _, _ in outlet.sent] == [f"m{i}".encode() for i in range(50)]
    assert session.queued_count == 0


def test_messages_queued_while_online_are_offloaded_at_disconnect() -> None:
    session, _ = _session()
    outlet = Outlet()
    attach(session, outlet, 2, 0.0)
    for i in range(10):
        session.deliver(Delivery(_message(i), 1), 0.0)
    assert len(session.inflight) == 2 and len(session.queue) == 8
    session.detach(0.0)
    assert len(session.queue) == 0 and session.queued_count == 8
    again = Outlet()
    attach(session, again, 100, 0.0)
    # the two in flight are re-sent first (DUP), then the eight queued, in order
    assert [(p, d) for p, _, d in again.sent] == (
        [(b"m0", True), (b"m1", True)] + [(f"m{i}".encode(), False) for i in range(2, 10)]
    )


def test_offloaded_queue_limit_drops_oldest_from_the_store() -> None:
    session, _ = _session(SessionLimits(max_queued_messages=5, drop_oldest=True))
    session.detach(0.0)
    for i in range(8):
        session.deliver(Delivery(_message(i), 1), 0.0)
    assert session.queued_count == 5
    assert session.context.metrics.messages_dropped_queue_full == 3
    outlet = Outlet()
    attach(session, outlet, 100, 0.0)
    assert [p for p, _, _ in outlet.sent] == [f"m{i}".encode() for i in range(3, 8)]


def test_resume_with_expiry_0_pages_in_before_the_stored_session_is_deleted() -> None:
    """Resuming an offloaded session with Session Expiry 0 (it will end with this
    connection) must still deliver what it queued: read back before the store drops it."""
    store, batch = MemoryStore(), ChangeBatch()
    registry = SessionRegistry(SubscriptionTrie(), batch, SessionLimits(), Metrics())
    registry.pager = Pager(store, batch)
    session, present = registry.open("dev-9", False, 3600, 5, 0.0)
    assert not present
    registry.close(session, 0.0)
    for i in range(3):
        session.deliver(Delivery(_message(i), 1), 0.0)
    assert session.queued_count == 3 and len(session.queue) == 0
    resumed, present = registry.open("dev-9", False, 0, 5, 1.0)
    assert present and resumed is session
    outlet = Outlet()
    attach(resumed, outlet, 10, 1.0)
    assert [p for p, _, _ in outlet.sent] == [b"m0", b"m1", b"m2"]


def test_offline_queue_is_a_cursor_and_a_count_not_an_index() -> None:
    """Issue 19: an offline session's queue costs O(1) memory, whatever its length."""
    session, pager = _session()
    session.detach(0.0)
    for i in range(200):
        session.deliver(Delivery(_message(i), 1), 0.0)
    pager.load_queued("nobody")  # commit the batch, as a turn's flush does
    # Its attributes: ``__slots__`` in the pure build, ``__mypyc_attrs__`` compiled.
    names: tuple[str, ...] = (getattr(type(session), "__slots__", ())
                              or getattr(type(session), "__mypyc_attrs__", ()))
    assert "queue" in names and "inflight" in names
    slots = {name: getattr(session, name) for name in names}
    containers = [v for v in slots.values() if isinstance(v, (list, dict, set, tuple))
                  and len(v) >= 200]
    assert containers == [] and len(session.queue) == 0
    assert session.queued_count == 200


def test_gaps_between_queued_seqs_are_closed_at_offload_keeping_order() -> None:
    """Messages queued behind a full window have gaps between their seqs (a message
    promoted to in flight takes a new seq); offloading stores them again under
    consecutive seqs, in order, and the store holds nothing else."""
    session, pager = _session()
    outlet = Outlet()
    attach(session, outlet, 1, 0.0)
    for i in range(4):
        session.deliver(Delivery(_message(i), 1), 0.0)  # m0 in flight, m1..m3 queued
    assert session.on_puback(outlet.sent[0][1], 0.0)  # m1 goes in flight: new seq
    session.deliver(Delivery(_message(4), 1), 0.0)
    session.detach(0.0)
    session.deliver(Delivery(_message(5), 1), 0.0)  # queued offline, after the others
    pager.load_queued("nobody")  # commit the batch, as a turn's flush does
    seqs = [r.seq for r in pager.store.load_queued("dev-1")]
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    assert [r.delivery.message.payload for r in pager.store.load_queued("dev-1")] == [
        b"m2", b"m3", b"m4", b"m5"]
    again = Outlet()
    attach(session, again, 100, 0.0)
    assert [p for p, _, _ in again.sent] == [b"m1", b"m2", b"m3", b"m4", b"m5"]


def test_byte_limit_drop_oldest_on_offloaded_queue_reads_the_size_back() -> None:
    session, _ = _session(SessionLimits(max_queued_bytes=10, drop_oldest=True))
    session.context.pager.get_queued = lambda cid, seq: _get(session, cid, seq)  # type: ignore[union-attr]
    session.detach(0.0)
    for i in range(8):  # 2 bytes each ("m0".."m7"): 5 fit
        session.deliver(Delivery(_message(i), 1), 0.0)
    assert session.queued_count == 5
    outlet = Outlet()
    attach(session, outlet, 100, 0.0)
    assert [p for p, _, _ in outlet.sent] == [f"m{i}".encode() for i in range(3, 8)]


def _get(session: Session, client_id: str, seq: int):  # type: ignore[no-untyped-def]
    pager = session.context.pager
    assert isinstance(pager, Pager)
    pager.store.apply(pager.batch)
    pager.batch.clear()
    return pager.store.get_queued(client_id, seq)


def test_restore_reads_a_gapped_stored_queue_once_and_renumbers_it() -> None:
    """A store written with gaps between queued seqs (older version, or a broker that
    stopped with messages queued behind a full window) comes back in order."""
    store = MemoryStore()
    first = ChangeBatch()
    registry = SessionRegistry(SubscriptionTrie(), first, SessionLimits(), Metrics())
    registry.pager = Pager(store, first)
    session, _ = registry.open("dev-7", False, 3600, 4, 0.0)
    registry.close(session, 0.0)
    for seq in (3, 7, 8, 20):
        first.put_queued(QueuedRecord("dev-7", seq, Delivery(_message(seq), 1)))
    store.apply(first)
    first.clear()
    batch = ChangeBatch()
    again = SessionRegistry(SubscriptionTrie(), batch, SessionLimits(), Metrics())
    again.pager = Pager(store, batch)
    again.restore(store.load(queued_bodies=False, queued_summary=True), 1.0)
    restored = again.get("dev-7")
    assert restored is not None and restored.queued_count == 4 and not restored.queue
    restored.deliver(Delivery(_message(99), 1), 1.0)
    store.apply(batch)
    batch.clear()
    assert [r.seq for r in store.load_queued("dev-7")] == [3, 4, 5, 6, 7]
    outlet = Outlet()
    attach(restored, outlet, 100, 1.0)
    assert [p for p, _, _ in outlet.sent] == [b"m3", b"m7", b"m8", b"m20", b"m99"]
