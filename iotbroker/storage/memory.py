"""Dict-backed :class:`~iotbroker.storage.base.Store`: tests and ``backend: memory``.

It keeps the record objects themselves (they are immutable) and follows the same
contract as the RocksDB store, checked by the same test suite: changes apply in
order and atomically, ``delete_session`` removes everything of that client id only,
``load`` returns records in the documented order. Nothing survives the process.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

from iotbroker.errors import StorageError
from iotbroker.message import Message
from iotbroker.storage.base import (
    ChangeBatch,
    Op,
    OutboundRecord,
    QueuedRecord,
    QueueSummaries,
    SessionRecord,
    StoreSnapshot,
    StreamPosition,
    SubscriptionEntry,
    check_client_id,
    check_outbound,
    check_packet_id,
    check_position,
    check_seq,
    check_write_id,
)

__all__ = ["MemoryStore"]

_K = TypeVar("_K")
_V = TypeVar("_V")


class MemoryStore:
    """A :class:`~iotbroker.storage.base.Store` in dictionaries."""

    def __init__(self) -> None:
        self._sessions: dict[str, SessionRecord] = {}
        self._subscriptions: dict[str, dict[str, SubscriptionEntry]] = {}
        self._outbound: dict[str, dict[int, OutboundRecord]] = {}
        self._queued: dict[str, dict[int, QueuedRecord]] = {}
        self._inbound: dict[str, set[int]] = {}
        self._pending: dict[str, dict[int, str]] = {}
        self._positions: dict[str, StreamPosition] = {}
        self._retained: dict[str, Message] = {}
        self._closed = False
        self.write_failures = 0  # memory does not refuse writes
        self.last_failure: str | None = None

    def sync(self) -> None:
        """Nothing to sync: memory only."""

    def apply(self, batch: ChangeBatch, sync: bool = True) -> None:
        self._check_open()
        changes = batch.changes
        # First pass: everything that could fail. The second pass cannot fail, so a
        # batch is applied entirely or not at all.
        for op, a, b in changes:
            _validate(op, a, b)
        for op, a, b in changes:
            if op == Op.PUT_QUEUED:
                self._queued.setdefault(a.client_id, {})[a.seq] = a
            elif op == Op.DELETE_QUEUED:
                _discard(self._queued, a, b)
            elif op == Op.DELETE_QUEUED_RANGE:
                for seq in range(*b):
                    _discard(self._queued, a, seq)
            elif op == Op.PUT_OUTBOUND:
                self._outbound.setdefault(a.client_id, {})[a.packet_id] = a
            elif op == Op.DELETE_OUTBOUND:
                _discard(self._outbound, a, b)
            elif op == Op.PUT_INBOUND_QOS2:
                self._inbound.setdefault(a, set()).add(b)
                _discard(self._pending, a, b)
            elif op == Op.PUT_INBOUND_PENDING:
                self._inbound.setdefault(a, set()).add(b[0])
                self._pending.setdefault(a, {})[b[0]] = b[1]
            elif op == Op.DELETE_INBOUND_QOS2:
                ids = self._inbound.get(a)
                if ids is not None:
                    ids.discard(b)
                    if not ids:
                        del self._inbound[a]
                _discard(self._pending, a, b)
            elif op == Op.PUT_STREAM_POSITION:
                self._positions[a.consumer] = a
            elif op == Op.PUT_SESSION:
                self._sessions[a.client_id] = a
            elif op == Op.DELETE_SESSION:
                self._sessions.pop(a, None)
                self._subscriptions.pop(a, None)
                self._outbound.pop(a, None)
                self._queued.pop(a, None)
                self._inbound.pop(a, None)
                self._pending.pop(a, None)
            elif op == Op.PUT_SUBSCRIPTION:
                # share_group is the core's reading of the filter: not stored (base.py)
                sub = a if a.share_group is None else replace(a, share_group=None)
                self._subscriptions.setdefault(a.client_id, {})[a.topic_filter] = sub
            elif op == Op.DELETE_SUBSCRIPTION:
                _discard(self._subscriptions, a, b)
            elif op == Op.PUT_RETAINED:
                self._retained[a.topic] = a
            elif op == Op.DELETE_RETAINED:
                self._retained.pop(a, None)

    def load_queued(self, client_id: str) -> list[QueuedRecord]:
        self._check_open()
        recs = self._queued.get(client_id, {})
        return [recs[s] for s in sorted(recs)]

    def get_queued(self, client_id: str, seq: int) -> QueuedRecord | None:
        self._check_open()
        return self._queued.get(client_id, {}).get(seq)

    def load(self, queued_bodies: bool = True, queued_summary: bool = False) -> StoreSnapshot:
        self._check_open()
        if not queued_bodies:
            snap = self.load()
            if queued_summary:
                summaries = QueueSummaries(snap.queued_summary)
                for cid, recs in snap.queued.items():
                    for r in recs:
                        summaries.add(cid, r.seq, len(r.delivery.message.payload))
            else:
                snap.queued_index = {
                    cid: [(r.seq, len(r.delivery.message.payload)) for r in recs]
                    for cid, recs in snap.queued.items()
                }
            snap.queued = {}
            return snap
        return StoreSnapshot(
            sessions={k: self._sessions[k] for k in sorted(self._sessions)},
            subscriptions={
                cid: [subs[f] for f in sorted(subs)]
                for cid, subs in sorted(self._subscriptions.items())
            },
            outbound={
                cid: sorted(recs.values(), key=lambda r: (r.seq, r.packet_id))
                for cid, recs in sorted(self._outbound.items())
            },
            queued={
                cid: [recs[s] for s in sorted(recs)] for cid, recs in sorted(self._queued.items())
            },
            inbound_qos2={cid: set(ids) for cid, ids in sorted(self._inbound.items())},
            retained=[self._retained[t] for t in sorted(self._retained)],
            inbound_pending={cid: dict(ids) for cid, ids in sorted(self._pending.items())},
            stream_positions=dict(self._positions),
        )

    def stats(self) -> dict[str, int]:
        return {
            "disk_bytes": 0,
            "keys_sessions": len(self._sessions),
            "keys_subscriptions": sum(len(v) for v in self._subscriptions.values()),
            "keys_outbound": sum(len(v) for v in self._outbound.values()),
            "keys_queued": sum(len(v) for v in self._queued.values()),
            "keys_inbound_qos2": sum(len(v) for v in self._inbound.values()),
            "keys_retained": len(self._retained),
        }

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the memory store is closed")


def _discard(table: dict[str, dict[_K, _V]], client_id: str, key: _K) -> None:
    recs = table.get(client_id)
    if recs is not None:
        recs.pop(key, None)
        if not recs:
            del table[client_id]


def _validate(op: Op, a: Any, b: Any) -> None:
    """The checks the RocksDB store makes while encoding, so both fail alike."""
    if op == Op.PUT_QUEUED:
        check_client_id(a.client_id)
        check_seq(a.seq)
    elif op == Op.PUT_OUTBOUND:
        check_outbound(a)
    elif op in (Op.DELETE_OUTBOUND, Op.PUT_INBOUND_QOS2, Op.DELETE_INBOUND_QOS2):
        check_client_id(a)
        check_packet_id(b)
    elif op == Op.DELETE_QUEUED:
        check_client_id(a)
        check_seq(b)
    elif op == Op.DELETE_QUEUED_RANGE:
        check_client_id(a)
        check_seq(b[0])
        check_seq(b[1])
    elif op == Op.PUT_SESSION:
        check_client_id(a.client_id)
        check_seq(a.next_seq)
    elif op == Op.PUT_SUBSCRIPTION:
        check_client_id(a.client_id)
    elif op in (Op.DELETE_SESSION, Op.DELETE_SUBSCRIPTION):
        check_client_id(a)
    elif op == Op.PUT_INBOUND_PENDING:
        check_client_id(a)
        check_packet_id(b[0])
        check_write_id(b[1])
    elif op == Op.PUT_STREAM_POSITION:
        check_position(a)
    elif op not in (Op.PUT_RETAINED, Op.DELETE_RETAINED):
        raise ValueError(f"unknown change {op!r}")
