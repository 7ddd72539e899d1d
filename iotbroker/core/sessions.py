"""The registry of sessions: new, resume, take over, end, expire, restore.

MQTT 3.1.1 §3.1.2.4 / MQTT 5.0 §3.1.2.4 (Clean Session / Clean Start): a clean
start discards any existing session [MQTT-3.1.2-4] (v5: [MQTT-3.1.2-4]); otherwise an
existing session is resumed [MQTT-3.1.2-5] and CONNACK says so [MQTT-3.2.2-2].
MQTT 5.0 §3.1.2.11.2: a session ends when its Session Expiry Interval has passed
since the network connection closed [MQTT-3.1.2-23]; 0 ends it with the connection.
The Will Delay Interval (§3.1.3.2.2) delays the will; resuming in time cancels it
[MQTT-3.1.3-9]; a session that ends first sends it then.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import replace

from iotbroker.codec.packets import NO_PROPERTIES, Will
from iotbroker.core.session import (
    InflightEntry,
    Pager,
    ReceiveGate,
    Session,
    SessionContext,
    SessionLimits,
)
from iotbroker.core.subscriptions import SubscriptionTrie
from iotbroker.core.topics import parse_shared
from iotbroker.message import NEVER_EXPIRES, Delivery, Message
from iotbroker.metrics import Metrics
from iotbroker.storage.base import ChangeBatch, SessionRecord, StoreSnapshot, WillRecord

log = logging.getLogger("iotbroker.sessions")

#: A will that is due: (client id, username, will). The username is the owner's at the
#: time it connected: the ACL decides on it when the will fires (issue 12).
DueWill = tuple[str, str | None, Will]

#: Stand-in for a QoS 2 message whose PUBREC arrived and whose body was not kept.
_RELEASED = Delivery(Message("", b"", 2, False, NO_PROPERTIES, 0.0), 2)


class SessionRegistry:
    """All sessions by client id, and the timers of the disconnected ones."""

    def __init__(
        self,
        trie: SubscriptionTrie,
        batch: ChangeBatch,
        limits: SessionLimits,
        metrics: Metrics,
    ) -> None:
        self.trie = trie
        self.batch = batch
        self.limits = limits
        self.metrics = metrics
        #: The ACL read decision every session asks before a delivery (see Session).
        self.gate = ReceiveGate()
        #: What all sessions share (the batch, limits, metrics, gate, ready list and
        #: pager above, held once).
        self.context = SessionContext(batch, limits, metrics, self.gate)
        #: Sessions with something in their outbox (the engine sends them on).
        self.ready: list[Session] = self.context.ready
        self.sessions: dict[str, Session] = {}
        # (deadline, client_id) for disconnected sessions with a finite expiry and
        # for pending delayed wills; stale entries are skipped when popped.
        self._timers: list[tuple[float, str]] = []
        #: client id -> (due, will, owner's username)
        self.pending_wills: dict[str, tuple[float, Will, str | None]] = {}

    @property
    def pager(self) -> Pager | None:
        """Given to every session: reads offloaded queued messages back."""
        return self.context.pager

    @pager.setter
    def pager(self, pager: Pager | None) -> None:
        self.context.pager = pager

    def get(self, client_id: str) -> Session | None:
        return self.sessions.get(client_id)

    def __len__(self) -> int:
        return len(self.sessions)

    # --------------------------------------------------------------- connect
    def open(
        self,
        client_id: str,
        clean_start: bool,
        expiry_interval: int,
        protocol_version: int,
        now: float,
    ) -> tuple[Session, bool]:
        """Find or create the session of a connecting client.

        Returns ``(session, session_present)``. A clean start discards the old session
        [MQTT-3.1.2-4]; otherwise it is resumed [MQTT-3.1.2-5]. A pending delayed
        will of the resumed session is cancelled [MQTT-3.1.3-9].
        """
        self.pending_wills.pop(client_id, None)
        old = self.sessions.get(client_id)
        if old is not None and (clean_start or self._expired(old, now)):
            self.destroy(old)
            old = None
        if old is not None:
            # Read offloaded messages back while the store still has them (a resume
            # with expiry 0 deletes the stored session below).
            old.page_in()
            old.protocol_version = protocol_version
            self.change_expiry(old, expiry_interval)
            if old.persistent:
                self.batch.put_session(self.record(old))
            return old, True
        session = Session(client_id, protocol_version, expiry_interval, self.context)
        self.sessions[client_id] = session
        if session.persistent:
            self.batch.put_session(self.record(session))
        return session, False

    def change_expiry(self, session: Session, expiry_interval: int) -> None:
        """Set the Session Expiry Interval (at CONNECT or DISCONNECT); a session that
        stops being persistent is removed from the store."""
        was_persistent = session.persistent
        session.expiry_interval = expiry_interval
        if was_persistent and not session.persistent:
            self.batch.delete_session(session.client_id)

    def record(self, session: Session) -> SessionRecord:
        will = None
        pending = self.pending_wills.get(session.client_id)
        if pending is not None:
            w = pending[1]
            will = WillRecord(w.topic, w.payload, w.qos, w.retain, w.properties,
                              w.properties.will_delay_interval or 0)
        return SessionRecord(
            client_id=session.client_id,
            protocol_version=session.protocol_version,
            expiry_interval=session.expiry_interval,
            disconnected_at=session.disconnected_at,
            will=will,
            next_packet_id=session.next_packet_id,
            next_seq=session.next_seq,
            username=session.username,
        )

    # ------------------------------------------------------------ disconnect
    def close(self, session: Session, now: float, will: Will | None = None) -> Will | None:
        """The network connection of ``session`` closed.

        Returns a will to publish now, if any. A will with a Will Delay Interval on a
        session that outlives the connection is held until the delay or the session
        end, whichever is first (MQTT 5.0 §3.1.3.2.2).
        """
        session.detach(now)
        will_delay = (will.properties.will_delay_interval or 0) if will else 0
        if not session.persistent:
            self.destroy(session)
            return will
        if will is not None and will_delay > 0:
            due = now + min(will_delay, session.expiry_interval)
            self.pending_wills[session.client_id] = (due, will, session.username)
            heapq.heappush(self._timers, (due, session.client_id))
            will = None
        if session.expiry_interval != NEVER_EXPIRES:
            heapq.heappush(self._timers, (now + session.expiry_interval, session.client_id))
        self.batch.put_session(self.record(session))
        return will

    def destroy(self, session: Session) -> None:
        """End a session: drop its subscriptions from the trie and from storage."""
        for entry in session.subscriptions.values():
            self.trie.remove(entry)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        if session.persistent:
            self.batch.delete_session(session.client_id)
        session.clear_state()

    def _expired(self, session: Session, now: float) -> bool:
        return (
            session.attached_to is None
            and session.disconnected_at is not None
            and session.expiry_interval != NEVER_EXPIRES
            and session.disconnected_at + session.expiry_interval <= now
        )

    # ----------------------------------------------------------------- timers
    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def run_timers(self, now: float) -> list[DueWill]:
        """Expire sessions whose time has come and return the wills now due."""
        due_wills: list[DueWill] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, client_id = heapq.heappop(timers)
            pending = self.pending_wills.get(client_id)
            if pending is not None and pending[0] <= now:
                del self.pending_wills[client_id]
                due_wills.append((client_id, pending[2], pending[1]))
            session = self.sessions.get(client_id)
            if session is not None and self._expired(session, now):
                log.info("session %r expired", client_id)
                self.metrics.sessions_expired += 1
                self.destroy(session)
        return due_wills

    # ---------------------------------------------------------------- restore
    def restore(self, snapshot: StoreSnapshot, now: float) -> None:
        """Rebuild sessions, subscriptions (into the trie), in-flight and queued
        messages and inbound QoS 2 ids from storage. Time the broker was down counts
        towards session expiry."""
        for client_id, rec in snapshot.sessions.items():
            session = Session(client_id, rec.protocol_version, rec.expiry_interval, self.context)
            session.username = rec.username
            # A session that was connected when the broker stopped was disconnected then.
            session.disconnected_at = rec.disconnected_at if rec.disconnected_at else now
            session.restore_counters(rec.next_packet_id, rec.next_seq)
            self.sessions[client_id] = session
            for stored in snapshot.subscriptions.get(client_id, ()):
                # The store keeps the filter as subscribed; read its share group again.
                # The client id and (non-shared) filter strings are the ones already
                # held, not one more copy of each per subscription (issue 19).
                group, _ = parse_shared(stored.topic_filter)
                if group is None:
                    entry = replace(stored, client_id=client_id,
                                    topic_filter=self.trie.held_filter(stored.topic_filter))
                else:
                    entry = replace(stored, client_id=client_id, share_group=group)
                session.restore_subscription(entry)
                self.trie.add(entry)
            for out in snapshot.outbound.get(client_id, ()):
                # After PUBREC only the packet id matters (PUBREL is re-sent).
                delivery = out.delivery if out.delivery is not None else _RELEASED
                session.restore_inflight(
                    out.packet_id, InflightEntry(delivery, out.state, out.seq)
                )
            for q in snapshot.queued.get(client_id, ()):
                session.restore_queued(q.seq, q.delivery)
            summary = snapshot.queued_summary.get(client_id)
            if summary is not None:
                session.restore_offloaded(*summary)
            else:
                index = snapshot.queued_index.get(client_id)
                if index:  # a store loaded with the index (older callers)
                    consecutive = all(s == index[0][0] + i for i, (s, _) in enumerate(index))
                    session.restore_offloaded(
                        index[0][0], len(index), sum(n for _, n in index), consecutive
                    )
            held = snapshot.inbound_qos2.get(client_id)
            if held:
                session.inbound_qos2 = set(held)
            if rec.will is not None:
                w = rec.will
                props = w.properties
                if (props.will_delay_interval or 0) != w.delay_interval:
                    # the pending will carries its delay (``record`` reads it there)
                    props = replace(props, will_delay_interval=w.delay_interval or None)
                will = Will(w.topic, w.payload, w.qos, w.retain, props)
                due = session.disconnected_at + min(w.delay_interval, rec.expiry_interval)
                self.pending_wills[client_id] = (due, will, rec.username)
                heapq.heappush(self._timers, (due, client_id))
            if rec.expiry_interval != NEVER_EXPIRES:
                heapq.heappush(
                    self._timers, (session.disconnected_at + rec.expiry_interval, client_id)
                )

    def deliveries_pending(self) -> int:
        return sum(s.queued_count + len(s.inflight) for s in self.sessions.values())


__all__ = ["Delivery", "SessionRegistry"]
