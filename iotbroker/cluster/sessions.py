"""Persistent sessions that move between nodes (docs/cluster.md, "Sessions move").

MQTT 5.0 §4.1 / MQTT 3.1.1 §3.1.2.4: a session is the client's subscriptions, its
queued and in-flight QoS 1/2 messages and its expiry; a client that connects with
Clean Start 0 resumes it [MQTT-3.1.2-5] and CONNACK says Session Present 1
[MQTT-3.2.2-2] — in a cluster, on whichever node it connects to.

* **The record.** A replicated KV bucket ``<prefix>_sessrec`` holds, per client id,
  the session's durable state: the owning process (sender id), the store's SESSION
  record (protocol, expiry, disconnected at, username), its subscriptions, and its
  *position* in the QoS stream (``<prefix>_qos``, :mod:`iotbroker.cluster.qos_stream`):
  every stream message up to that sequence that matched the session was delivered
  and acknowledged by the client. Written when the session changes (CONNECT,
  SUBSCRIBE, UNSUBSCRIBE, DISCONNECT / connection lost), coalesced per client id,
  never per message; the position also advances every :data:`CHECKPOINT_SECONDS` for
  sessions that were drained (nothing queued or in flight) meanwhile. Every write of
  an owner is a compare-and-set on the revision of its previous one: a node that lost
  the session (another node took it) cannot overwrite it, and drops its copy.
* **Resume elsewhere.** A CONNECT with Clean Start 0 waits (the server defers it,
  :meth:`Sessions.before_accept`) while the node reads the record: owned by this
  process, or none — the local session is the truth; owned by a live process — it is
  asked to hand the session over (it closes the client's connection there with 0x8E,
  drops its copy and answers with its final record); owned by a dead process — the
  record is taken by compare-and-set. The session is then rebuilt here: its
  subscriptions go into the trie (and the node's NATS interest) and the QoS 1/2
  messages that matched it after its position are read back from the stream
  (server-side filtered by its filters) and delivered through ``Session.deliver``.
* **Expiry** is the record's: a record whose session expired (disconnected at +
  expiry interval) is not resumed anywhere; its owner deletes it when its timer ends
  the session.

* **QoS 2 across a move** (docs/cluster.md): a persistent session's QoS 2 messages
  from the stream carry packet ids derived from their stream keys (core/session.py);
  the record also lists the QoS 2 messages released to the client after the position
  (a PUBREL waits until that is written), so the node a session moves to sends PUBREL
  for those, nothing for completed ones, and the others again with their ids and
  DUP=1 [MQTT-4.3.3-10], [MQTT-4.4.0-1]; a derived id is used again only once its
  previous use's completion is in the record [MQTT-4.3.3-12]. The publisher's side:
  the record holds the inbound QoS 2 ids the session holds with their stream write
  ids — written before the stream write goes, removed before the PUBCOMP goes — so
  the node it moves to (also after kill -9) writes a re-sent PUBLISH again under
  the same write id, which the stream drops if the first write made it. Once the
  stream acknowledged the write, the record marks the id (the write's stream
  sequence) before the PUBREC goes (the second mark): the node it moves to answers a
  re-send of a marked id with PUBREC and writes nothing, however late it comes (the
  stream drops a duplicate only within its ``duplicate_window``).

What a move guarantees (QoS 1 duplicates allowed) and what it does not is listed in
docs/cluster.md, "What is guaranteed" and "Not yet".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from iotbroker.cluster import wire
from iotbroker.cluster.buckets import open_bucket, retried
from iotbroker.cluster.ownership import client_key
from iotbroker.cluster.qos_stream import answered_by_leader, stream_key
from iotbroker.cluster.subjects import filter_to_subjects, subject_to_topic
from iotbroker.core.router import copy_for
from iotbroker.core.session import Session
from iotbroker.core.subscriptions import SubscriptionEntry
from iotbroker.core.topics import filter_matches, parse_shared
from iotbroker.message import NEVER_EXPIRES, Message
from iotbroker.storage.base import OutboundState, SessionRecord
from iotbroker.storage.records import (
    decode_session,
    decode_subscription,
    encode_session,
    encode_subscription,
    subscription_key,
)

if TYPE_CHECKING:
    from iotbroker.cluster.ownership import Ownership
    from iotbroker.cluster.qos_stream import QosStream
    from iotbroker.engine.client import Client
    from iotbroker.engine.engine import Engine, HeldAck

log = logging.getLogger("iotbroker.cluster")

#: How often the stream position of drained sessions is written (seconds).
CHECKPOINT_SECONDS = 2.0
#: Record writes sent to NATS at once at most.
BATCH = 256
#: Seconds a CONNECT waits for the record, a handover or the stream at most; then the
#: client is served with what this node has (logged).
RESUME_TIMEOUT = 8.0
#: Seconds a live owner has to answer a handover request.
HANDOVER_TIMEOUT = 1.0
#: Seconds before the failed first record write of a session accepted here is tried
#: again (:meth:`Sessions._write_record`).
FIRST_WRITE_RETRY = 0.5
#: Stream messages fetched per request when a resumed session is replayed.
FETCH_BATCH = 500
#: Seconds the stream read of one resume may take (retrying a slow server); then the
#: session is resumed without what was not read (logged; its position is kept).
FETCH_PATIENCE = 3.0
#: Seconds before a resumed session's stream read is made again when the stream's
#: leader shows the first one was short (:meth:`Sessions._fetch`).
REREAD_PAUSE = 0.2
#: Messages routed here during one resume kept for it at most.
MAX_CAPTURED = 100_000

_HEAD = struct.Struct(">BQB")  # version, position + 1 (0: unknown), len(owner)
_LEN32 = struct.Struct(">I")
_LEN16 = struct.Struct(">H")
_QOS2 = struct.Struct(">QQB")  # stream key, stream sequence (0: unknown), state
_MARK = struct.Struct(">HQ")  # inbound packet id, stream sequence of its write
_VERSION = 1
#: Version 2: version 1 and the QoS 2 messages released after the position.
_VERSION_QOS2 = 2
#: Version 3: version 2 and the inbound QoS 2 ids whose stream write was acknowledged
#: (:attr:`Record.marks`); written only while there are any.
_VERSION_MARKS = 3
_HANDOVER, _DROP = b"h", b"d"
#: States of a QoS 2 message after the position (:attr:`Record.qos2`): PUBREL sent
#: (or about to be: held until this is durable), PUBCOMP received.
RELEASED, COMPLETED = 1, 2
#: QoS 2 entries a record keeps at most (the oldest completed ones go first).
MAX_QOS2_ENTRIES = 20_000
#: A session that does not drain has its position moved (a scan of its
#: unacknowledged messages) at a record write once it has more QoS 2 entries.
ADVANCE_AT = 64
#: The same requests with the asker's claim revision (8 bytes) before the client id:
#: answered ``_LATER`` (nothing released) when this process's claim of the id is later.
_HANDOVER_AT, _DROP_AT = b"H", b"D"
_LATER = b"L"
#: The owner's own claim of the id is still in flight: the asker asks again.
_AGAIN = b"W"
#: Seconds between two asks answered ``_AGAIN``.
AGAIN_SECONDS = 0.1
_REV = struct.Struct(">Q")


def _conflict(exc: Exception) -> bool:
    """A record write refused by its compare-and-set (another process wrote the
    record since this one's last write: JetStream's "wrong last sequence", 10071) —
    not a timeout or NATS away, after which the record is still this process's."""
    return isinstance(exc, KeyWrongLastSequenceError) or (
        getattr(exc, "err_code", None) == 10071)


class ResumeFailed(Exception):
    """A resume that could not complete (its CONNECT is refused, 0x89)."""


@dataclass(slots=True)
class Record:
    """One session's durable state in the bucket. ``qos2``: stream key -> (stream
    sequence, state) of the QoS 2 messages released to the client (PUBREL) after the
    position (docs/cluster.md, "QoS 2 across a move")."""

    owner: bytes
    position: int | None
    session: SessionRecord
    subscriptions: list[SubscriptionEntry]
    qos2: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: The inbound QoS 2 packet ids the session holds (PUBLISH accepted, PUBREL not
    #: received) with the id of their stream write ("": the stream has it; a write
    #: id: it may be pending) — in the bucket before that write goes, out of it
    #: before the PUBCOMP goes (docs/cluster.md, "QoS 2 across a move").
    inbound: dict[int, str] = field(default_factory=dict)
    #: The second mark: inbound QoS 2 ids (of :attr:`inbound`) whose stream write was
    #: acknowledged, with its stream sequence — written before their PUBREC goes, so
    #: the node the session moves to answers a PUBLISH re-sent with such an id with
    #: PUBREC and no stream write, however late it comes (docs/cluster.md, "QoS 2
    #: across a move", the publisher's side).
    marks: dict[int, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        sess = encode_session(self.session)
        version = (_VERSION_MARKS if self.marks else
                   _VERSION_QOS2 if self.qos2 or self.inbound else _VERSION)
        parts = [_HEAD.pack(version, 0 if self.position is None else self.position + 1,
                            len(self.owner)),
                 self.owner, _LEN32.pack(len(sess)), sess,
                 _LEN32.pack(len(self.subscriptions))]
        for entry in self.subscriptions:
            name = entry.topic_filter.encode()
            body = encode_subscription(entry)
            parts += [_LEN16.pack(len(name)), name, _LEN16.pack(len(body)), body]
        if version >= _VERSION_QOS2:
            parts.append(_LEN32.pack(len(self.qos2)))
            parts += [_QOS2.pack(key, seq, state)
                      for key, (seq, state) in self.qos2.items()]
            parts.append(_LEN32.pack(len(self.inbound)))
            for pid, write_id in self.inbound.items():
                raw = write_id.encode()
                parts += [_LEN16.pack(pid), _LEN16.pack(len(raw)), raw]
        if version == _VERSION_MARKS:
            parts.append(_LEN32.pack(len(self.marks)))
            parts += [_MARK.pack(pid, seq) for pid, seq in self.marks.items()]
        return b"".join(parts)

    @classmethod
    def decode(cls, client_id: str, data: bytes) -> Record:
        version, position, n = _HEAD.unpack_from(data)
        if version not in (_VERSION, _VERSION_QOS2, _VERSION_MARKS):
            raise ValueError(f"session record version {version}")
        pos = _HEAD.size
        owner = data[pos:pos + n]
        pos += n
        (size,) = _LEN32.unpack_from(data, pos)
        pos += _LEN32.size
        session = decode_session(client_id.encode(), data[pos:pos + size])
        pos += size
        (count,) = _LEN32.unpack_from(data, pos)
        pos += _LEN32.size
        subs = []
        for _ in range(count):
            (ln,) = _LEN16.unpack_from(data, pos)
            pos += _LEN16.size
            name = data[pos:pos + ln].decode()
            pos += ln
            (lb,) = _LEN16.unpack_from(data, pos)
            pos += _LEN16.size
            entry = decode_subscription(subscription_key(client_id, name), data[pos:pos + lb])
            pos += lb
            group, _ = parse_shared(entry.topic_filter)
            subs.append(entry if group is None else replace(entry, share_group=group))
        qos2: dict[int, tuple[int, int]] = {}
        inbound: dict[int, str] = {}
        marks: dict[int, int] = {}
        if version >= _VERSION_QOS2:
            (count,) = _LEN32.unpack_from(data, pos)
            pos += _LEN32.size
            for _ in range(count):
                key, seq, state = _QOS2.unpack_from(data, pos)
                pos += _QOS2.size
                qos2[key] = (seq, state)
            (count,) = _LEN32.unpack_from(data, pos)
            pos += _LEN32.size
            for _ in range(count):
                (pid,) = _LEN16.unpack_from(data, pos)
                (ln,) = _LEN16.unpack_from(data, pos + _LEN16.size)
                pos += 2 * _LEN16.size
                inbound[pid] = data[pos:pos + ln].decode()
                pos += ln
        if version == _VERSION_MARKS:
            (count,) = _LEN32.unpack_from(data, pos)
            pos += _LEN32.size
            for _ in range(count):
                pid, seq = _MARK.unpack_from(data, pos)
                pos += _MARK.size
                marks[pid] = seq
        if pos != len(data):
            raise ValueError("session record has trailing bytes")
        return cls(owner, position - 1 if position else None, session, subs, qos2, inbound,
                   marks)

    def expired(self, now: float) -> bool:
        """[MQTT-3.1.2-23]: over once its expiry interval passed since the disconnect
        (a record written while connected, of a dead owner, is not over yet)."""
        s = self.session
        return (s.expiry_interval == 0 or (
            s.disconnected_at is not None and s.expiry_interval != NEVER_EXPIRES
            and s.disconnected_at + s.expiry_interval <= now))


class _Q2:
    """A QoS 2 message released to a session's client after its position."""

    __slots__ = ("message", "seq", "state")

    def __init__(self, seq: int, state: int, message: Message | None) -> None:
        self.seq = seq
        self.state = state
        self.message = message

    def stream_seq(self) -> int:
        if not self.seq and self.message is not None and self.message.stream_seq > 0:
            self.seq = self.message.stream_seq  # its stream write was acknowledged since
        return self.seq


class IncompleteReplay(Exception):
    """The stream did not give a resumed session's messages in time."""


def _identity(message: Message) -> tuple[str, str, float, bytes]:
    """One message, whether decoded from the stream or routed live (no sequence
    number travels with a local one)."""
    return message.topic, message.origin, message.created_at, bytes(message.payload)


class Sessions:
    """This node's side of moving sessions: its records, handovers, resumes."""

    def __init__(self, engine: Engine, sender: bytes, prefix: str, replicas: int,
                 qos: QosStream,
                 interest_changed: Callable[[list[tuple[str, str]]], None],
                 schedule_flush: Callable[[], None], ownership: Ownership) -> None:
        self.engine = engine
        self.sender = sender
        self.token = sender.decode().replace("/", "_")
        self.node = sender.rsplit(b"/", 1)[0]
        self.prefix = prefix
        base = prefix.replace(".", "_")
        self.bucket = f"{base}_sessrec"
        self.replicas = replicas
        self.qos = qos
        self.interest_changed = interest_changed
        self.schedule_flush = schedule_flush
        #: Which process holds each client id's connection (ownership.py): a resume
        #: claims the id before its CONNACK, and the claims' order decides between
        #: two CONNECTs of one id on two nodes at once.
        self.ownership = ownership
        self.kv: KeyValue | None = None
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        #: client id -> revision of this process's last write (present: owned here)
        self.revs: dict[str, int] = {}
        #: client id -> stream position last written
        self.positions: dict[str, int | None] = {}
        #: the stream's last sequence when this node joined it (positions before the
        #: consumer's first message)
        self.joined_at: int | None = None
        self._dirty: dict[str, None] = {}
        #: client ids accepted here that were not owned here: their record is taken
        #: (and a copy elsewhere dropped) at the next write
        self._claims: set[str] = set()
        #: client ids whose claim (first write) is in flight
        self._claiming: set[str] = set()
        #: owned client ids whose last record write failed (not a compare-and-set
        #: refusal): written again when the buckets answer after a reconnect
        self._write_again: set[str] = set()
        self._wake = asyncio.Event()
        #: client id -> lock held while its record is written: one write of a record at
        #: a time, so a write reads the revision (and state) the previous one left —
        #: the stop's :meth:`flush` and the writer loop's in-flight write of the same
        #: record otherwise race on the compare-and-set ("wrong last sequence"), and
        #: the record keeps the older state (issue 14, i14-faults)
        self._record_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._resuming: set[str] = set()
        #: client ids of connections closed at their acceptance (a later claim
        #: elsewhere): their local session goes when they end (:meth:`after_turn`)
        self._lost: set[str] = set()
        self._cleanup: set[asyncio.Task[None]] = set()
        #: sessions resumed without all their stream messages: position not moved
        self._pinned: set[str] = set()
        #: per client id being resumed: the messages routed here meanwhile (live from
        #: other nodes, or published here) — given to the session when it is rebuilt
        #: unless the stream read has them (their stream copy may come too late)
        self._captured: dict[str, list[Message]] = {}
        #: position_now() at the previous turn
        self._turn_position: int | None = None
        #: per owned client id: the QoS 2 messages released to it after its position,
        #: by stream key (written in its record: docs/cluster.md, "QoS 2 across a move")
        self.qos2: dict[str, dict[int, _Q2]] = {}
        #: per client id: packet ids whose PUBREL waits for the record's next write
        self._pubrels: dict[str, list[int]] = {}
        #: per owned client id: the inbound QoS 2 packet ids its session holds (from
        #: the PUBLISH to the PUBREL) with the id of their stream write, written in its
        #: record before that write goes and removed before the PUBCOMP goes
        #: (docs/cluster.md, "QoS 2 across a move", the publisher's side)
        self.inbound: dict[str, dict[int, str]] = {}
        #: per owned client id: those of its inbound ids whose stream write was
        #: acknowledged, with its stream sequence (the record's second mark: their
        #: PUBRECs wait until it is written, ``_marks_waiting``)
        self.marks: dict[str, dict[int, int]] = {}
        #: per client id: write ids whose PUBREC waits for the record's next write
        self._marks_waiting: dict[str, list[str]] = {}
        #: per client id: stream writes (their write ids) waiting for the record's next
        #: write, and PUBCOMPs waiting for it
        self._writes_waiting: dict[str, list[str]] = {}
        self._pubcomps: dict[str, list[tuple[Client, int]]] = {}
        #: per client id: since when (monotonic) something waits for its record write
        #: (it waits ``cluster.qos_stream.patience`` at most, then goes unrecorded)
        self._waiting_since: dict[str, float] = {}
        qos.defer = self._defer_write
        qos.mark = self._mark
        engine.held_pubcomps = []
        context = engine.registry.context
        context.derived_ids = True
        context.held_pubrels = []
        context.qos2_done = []
        context.unrecorded = {}
        context.id_wait = self._id_wait
        # counters (ClusterNode.status())
        self.resumed = 0
        self.handed_over = 0
        self.replayed = 0
        self.writes = 0
        self.write_failures = 0
        self.lost = 0
        #: resumes' stream reads made again (the first was not whole: :meth:`_fetch`)
        self.rereads = 0
        #: CONNECTs refused because the session was not ready in time (0x89)
        self.refused = 0
        # The connect gate's view of NATS (:meth:`before_accept`): ``ready`` — this
        # process can look for a session in the cluster (both buckets open and
        # answering since the last (re)connect); ``away`` — NATS is known to be away
        # (lost, or the first connection failed): a CONNECT is served with this node's
        # state. Neither: NATS is being connected to, or the buckets are being opened
        # (or answer again after a reconnect): a Clean Start 0 CONNECT waits.
        self.ready = False
        self.away = False
        self._gate_changed = asyncio.Event()
        self._probe: asyncio.Task[None] | None = None
        #: CONNECTs that waited for the gate (NATS or the buckets not ready yet)
        self.waited_ready = 0

    # ------------------------------------------------------------ positions
    def position_now(self) -> int | None:
        """Every QoS stream message up to this sequence has been routed here."""
        nxt = self.qos.next_to_route
        if nxt is not None:
            return nxt - 1
        return self.joined_at

    def floor(self) -> int:
        """For a QoS 1/2 message routed here now whose stream copy this node has not
        routed (a live copy, or published here): its stream sequence is above this.
        Kept in ``Message.stream_seq`` as its negative (a positive one is exact)."""
        pos = self.position_now()
        return -pos if pos else 0

    def routed_here(self, messages: list[Message]) -> None:
        """This turn's messages published here: their stream copies are written after
        this (:meth:`floor`); a QoS 2 one's exact sequence comes with its write's ack."""
        floor = self.floor()
        for message in messages:
            if message.qos and not message.stream_seq:
                message.stream_seq = floor

    def _advance(self, client_id: str, session: Session) -> None:
        """A connected session that is not drained: its position may move up to just
        before its oldest unacknowledged QoS 1/2 message (whose stream sequence, or a
        bound below it, each message carries: :meth:`floor`), so that its record's
        QoS 2 entries do not pile up while it never drains. A message of unknown
        sequence (restored from the store, or published by the broker itself) keeps
        the position where it is."""
        if session.queued_count != len(session.queue) or client_id in self._pinned:
            return  # messages offloaded to the store: not known here
        low = self.position_now()
        if low is None:
            return
        # (a QoS 2 message whose PUBREL was sent holds it too: its entry must stay
        # until its PUBCOMP, or the next node would not release its packet id)
        waiting = [e.delivery for e in session.inflight.values()]
        waiting.extend(d for _, d in session.queue)
        for delivery in waiting:
            if not delivery.qos:
                continue
            seq = delivery.message.stream_seq
            if not seq:
                return
            bound = seq - 1 if seq > 0 else -seq
            low = min(low, bound)
        old = self.positions.get(client_id)
        if old is None or low > old:
            self.positions[client_id] = low

    @staticmethod
    def _drained(session: Session) -> bool:
        return not session.queue and not session.inflight and not session.queued_count

    # ---------------------------------------------------------- each turn
    def after_turn(self, touched: list[tuple[str, str]], accepted: list[Client],
                   ended: list[Client], lost: list[Client] | None = None) -> None:
        """Sessions whose record changed this turn (SUBSCRIBE / UNSUBSCRIBE,
        CONNECT, DISCONNECT or connection lost): written once, soon. ``lost``:
        connections accepted this turn whose client id another process claimed later
        while they waited (ownership.py ``accepted``): closed, never written; the
        session they opened here is dropped when they end, unless this process owns
        its record."""
        dirty = self._dirty
        if lost:
            self._lost.update(c.client_id for c in lost)
        if self._lost:
            for client in ended:
                client_id = client.client_id
                if client_id in self._lost:
                    self._lost.discard(client_id)
                    if client_id not in self.revs and client_id not in self._claims:
                        self._drop_local(client_id)
        # A session whose connection ended with nothing in flight had every message
        # routed to it before the previous turn acknowledged: that turn's position
        # holds (what came after the disconnect is queued; a later check of "drained"
        # would take those for delivered).
        registry = self.engine.registry
        before = self._turn_position
        for client in ended:
            session = registry.get(client.client_id)
            if (before is not None and session is not None and not session.inflight
                    and client.client_id in self.revs
                    and client.client_id not in self._pinned):
                old = self.positions.get(client.client_id)
                # (never back: QoS 2 entries up to the position may be gone)
                self.positions[client.client_id] = before if old is None else max(old, before)
        self._turn_position = self.position_now()
        self._qos2_turn()
        self._pubcomp_turn()
        for client_id, _ in touched:
            dirty[client_id] = None
        for client in accepted:
            if client.client_id not in self.revs:
                self._claims.add(client.client_id)
            dirty[client.client_id] = None
        for client in ended:
            dirty[client.client_id] = None
        if dirty:
            self._wake.set()

    def _qos2_turn(self) -> None:
        """PUBRECs and PUBCOMPs of derived packet ids this turn (core/session.py):
        a released message goes into its session's record, and its PUBREL waits until
        that record is written (so a node the session moves to after a crash sends
        PUBREL, not the message again); a completed one is noted at the next write.
        Without NATS, or for a session whose record is not this node's, the PUBREL
        goes at once."""
        context = self.engine.registry.context
        held = context.held_pubrels
        done = context.qos2_done
        if held:
            context.held_pubrels = []
            now = time.time()
            up = self._up()
            for session, pid, key in held:
                client_id = session.client_id
                if not up or not self._ours(client_id):
                    session.release_pubrel(pid, now)
                    continue
                entry = session.inflight.get(pid)
                message = entry.delivery.message if entry is not None else None
                entries = self.qos2.get(client_id)
                if entries is None:
                    entries = self.qos2[client_id] = {}
                entries[key] = _Q2(message.stream_seq if message is not None
                                   and message.stream_seq > 0 else 0, RELEASED, message)
                self._pubrels.setdefault(client_id, []).append(pid)
                self._dirty[client_id] = None
            if not up:
                self.schedule_flush()
        if done:
            context.qos2_done = []
            up = self._up()
            for session, key in done:
                client_id = session.client_id
                q = self.qos2.get(client_id, {}).get(key)
                if q is not None:
                    q.state = COMPLETED  # written with the next change (not waited for)
                if not up or not self._ours(client_id):
                    self._free_ids(client_id, self._recorded(client_id))

    def _id_wait(self, session: Session) -> None:
        """A message of ``session`` waits for a derived id whose completion is not in
        its record yet (core/session.py): the record is written soon."""
        client_id = session.client_id
        if client_id not in self._dirty:
            self._dirty[client_id] = None
            self._wake.set()

    def _recorded(self, client_id: str) -> dict[int, int]:
        """Take the derived ids of ``client_id`` completed but not recorded whose
        completion the record as it is now carries (or that it no longer lists)."""
        unrecorded = self.engine.registry.context.unrecorded
        pids = unrecorded.get(client_id) if unrecorded else None
        if not pids:
            return {}
        entries = self.qos2.get(client_id, {})
        out = {}
        for pid, key in list(pids.items()):
            q = entries.get(key)
            if q is None or q.state == COMPLETED:
                out[pid] = key
                del pids[pid]
        if not pids:
            del unrecorded[client_id]  # type: ignore[union-attr]
        return out

    def _free_ids(self, client_id: str, freed: dict[int, int]) -> None:
        """The completions of ``freed`` are durable (or need not be): a message that
        waits for one of those ids goes now."""
        if not freed:
            return
        session = self.engine.registry.get(client_id)
        if session is not None:
            session.pump(time.time())
            self.schedule_flush()

    def _ours(self, client_id: str) -> bool:
        """Is the record of ``client_id`` this process's (written, to be claimed at
        the next write, or being claimed now)?"""
        return (client_id in self.revs or client_id in self._claims
                or client_id in self._claiming)

    def _up(self) -> bool:
        nc = self.nc
        return self.kv is not None and nc is not None and nc.is_connected

    def _defer_write(self, ack: HeldAck, write_id: str) -> bool:
        """A persistent publisher's QoS 2 message accepted here (qos_stream.py): its
        packet id and write id go into the session's record first, and its stream
        write waits for that record write (True). So a node the session moves to after
        kill -9 knows every id whose message may be in the stream: a PUBLISH re-sent
        there with DUP=1 [MQTT-4.4.0-1] is written again under the same write id, and
        the stream drops it if the first write had made it [MQTT-4.3.3-10]. False
        (written at once): not a persistent session of this node's, or NATS away."""
        client_id = ack.client.client_id
        if not self._up() or not self._ours(client_id):
            return False
        session = self.engine.registry.get(client_id)
        if session is None or not session.persistent:
            return False
        entries = self.inbound.get(client_id)
        if entries is None:
            entries = self.inbound[client_id] = {}
        entries[ack.packet_id] = write_id
        self._writes_waiting.setdefault(client_id, []).append(write_id)
        self._dirty[client_id] = None
        self._wake.set()
        return True

    def _mark(self, client_id: str, pid: int, write_id: str, seq: int) -> bool:
        """The stream acknowledged the write ``write_id`` (stream sequence ``seq``) of
        the inbound QoS 2 id ``pid`` of ``client_id`` (qos_stream.py): when it is one
        of the ids in the session's record, the record notes it (the second mark) and
        the PUBREC waits for that write (True; then ``QosStream.release_marked``). A
        node the session moves to then answers a PUBLISH re-sent with that id with
        PUBREC and writes nothing [MQTT-4.3.3-10] — a write again could be stored
        twice once the stream's ``duplicate_window`` has passed. False (PUBREC at
        once): not such an id (a publisher without a persistent session), not this
        node's record, or NATS away."""
        entries = self.inbound.get(client_id)
        if entries is None or entries.get(pid) != write_id:
            return False
        if not self._up() or not self._ours(client_id):
            return False
        marks = self.marks.get(client_id)
        if marks is None:
            marks = self.marks[client_id] = {}
        marks[pid] = seq
        self._marks_waiting.setdefault(client_id, []).append(write_id)
        self._dirty[client_id] = None
        self._wake.set()
        return True

    def _pubcomp_turn(self) -> None:
        """PUBRELs of inbound QoS 2 ids of persistent sessions this turn (the
        engine's ``held_pubcomps``): the id leaves the session's record, and the
        PUBCOMP waits until that record is written — the client may use the id for a
        new message once it has the PUBCOMP [MQTT-4.3.3-12], and a node that took the
        session over must not take that message for a re-sent one. Without NATS, or
        for a session whose record is not this node's, the PUBCOMP goes at once."""
        engine = self.engine
        comps = engine.held_pubcomps
        if not comps:
            return
        engine.held_pubcomps = []
        up = self._up()
        now_out = False
        for client, pid in comps:
            client_id = client.client_id
            entries = self.inbound.get(client_id)
            if entries is not None:
                entries.pop(pid, None)
                if not entries:
                    del self.inbound[client_id]
            marks = self.marks.get(client_id)
            if marks is not None:
                marks.pop(pid, None)
                if not marks:
                    del self.marks[client_id]
            if not up or not self._ours(client_id):
                engine.release_pubcomp(client, pid)
                now_out = True
                continue
            self._pubcomps.setdefault(client_id, []).append((client, pid))
            self._dirty[client_id] = None
        if now_out:
            self.schedule_flush()
        if self._dirty:
            self._wake.set()

    def _inbound_here(self, client_id: str) -> dict[int, str]:
        """The inbound QoS 2 ids this node's session of ``client_id`` holds, with the
        write id of those whose stream write is pending ("" once the stream has it)."""
        session = self.engine.registry.get(client_id)
        if session is None or not session.inbound_qos2:
            return {}
        known = self.inbound.get(client_id, {})
        pending = self.engine.qos2_unreplicated
        return {pid: known.get(pid) or pending.get((client_id, pid), "")
                for pid in session.inbound_qos2}

    def _release_pubrels(self, client_id: str, pids: list[int]) -> None:
        session = self.engine.registry.get(client_id)
        if session is None or not pids:
            return
        now = time.time()
        for pid in pids:
            session.release_pubrel(pid, now)
        self.schedule_flush()

    def _qos2_of(self, client_id: str, position: int | None) -> dict[int, tuple[int, int]]:
        """The record's QoS 2 entries: those after ``position`` (kept in memory too)."""
        entries = self.qos2.get(client_id)
        if not entries:
            return {}
        out: dict[int, tuple[int, int]] = {}
        for key, q in list(entries.items()):
            seq = q.stream_seq()
            if position is not None and 0 < seq <= position:
                del entries[key]  # the position covers it
                continue
            out[key] = (seq, q.state)
        if len(out) > MAX_QOS2_ENTRIES:
            for key in [k for k, (_, st) in out.items() if st == COMPLETED][
                    :len(out) - MAX_QOS2_ENTRIES]:
                del out[key]
                entries.pop(key, None)
        if not entries:
            del self.qos2[client_id]
        return out

    @property
    def capturing(self) -> bool:
        return bool(self._captured)

    def capture(self, messages: list[Message]) -> None:
        """Messages routed here while a session is being resumed (before it is in
        the trie): kept for it (bounded)."""
        for client_id, kept in list(self._captured.items()):
            if len(kept) + len(messages) > MAX_CAPTURED:
                del self._captured[client_id]
                log.warning("cluster: session %r: more than %d messages during its resume; "
                            "those routed live meanwhile come from the stream only",
                            client_id, MAX_CAPTURED)
                continue
            kept.extend(messages)

    # ---------------------------------------------------------- the record
    def _record_of(self, client_id: str) -> Record | None:
        """This node's session of ``client_id`` as a record (None: no persistent one).
        Drained now (nothing queued or in flight, connected or not: a message routed
        to an offline session is queued) means every stream message routed here so
        far was delivered: the position moves to now."""
        engine = self.engine
        session = engine.registry.get(client_id)
        if session is None or not session.persistent:
            return None
        if self._drained(session) and client_id not in self._pinned:
            pos = self.position_now()
            if pos is not None:
                self.positions[client_id] = pos
        elif session.attached_to is not None and len(
                self.qos2.get(client_id, ())) > ADVANCE_AT:
            self._advance(client_id, session)
        rec = engine.registry.record(session)
        rec = replace(rec, will=None)  # a dead node's wills are wills.py's
        position = self.positions.get(client_id)
        inbound = self._inbound_of(client_id, session)
        return Record(self.sender, position, rec, list(session.subscriptions.values()),
                      self._qos2_of(client_id, position), inbound,
                      self._marks_of(client_id, inbound))

    def _inbound_of(self, client_id: str, session: Session) -> dict[int, str]:
        """The record's inbound QoS 2 ids: those the session still holds (a clean
        start, or a PUBREL, forgets them)."""
        entries = self.inbound.get(client_id)
        if not entries:
            return {}
        held = session.inbound_qos2
        for pid in [p for p in entries if p not in held]:
            del entries[pid]
        if not entries:
            del self.inbound[client_id]
        return dict(entries)

    def _marks_of(self, client_id: str, inbound: dict[int, str]) -> dict[int, int]:
        """The record's marks: those of its inbound ids ``inbound``."""
        marks = self.marks.get(client_id)
        if not marks:
            return {}
        for pid in [p for p in marks if p not in inbound]:
            del marks[pid]
        if not marks:
            del self.marks[client_id]
        return dict(marks)

    async def _write_one(self, kv: KeyValue, client_id: str) -> None:
        # PUBRELs that wait for this write (their messages are in ``rec.qos2``), stream
        # writes and PUBCOMPs of a publisher (its inbound ids are in ``rec.inbound``)
        pids = self._pubrels.pop(client_id, [])
        writes = self._writes_waiting.pop(client_id, [])
        comps = self._pubcomps.pop(client_id, [])
        marked = self._marks_waiting.pop(client_id, [])
        since = self._waiting_since.pop(client_id, None)
        # derived ids completed whose completion this write carries (the record is
        # made at once, in _write_record, before anything else runs)
        freed = self._recorded(client_id)
        written = False
        try:
            written = await self._write_serialised(kv, client_id)
        finally:
            if pids or writes or comps or freed or marked:
                nc = self.nc
                now = time.monotonic()
                if since is None:
                    since = now
                late = now - since >= self.qos.patience
                if late and not written:
                    log.warning("cluster: session record %r not written for %.0fs: its "
                                "held QoS 2 acknowledgements and stream writes go without "
                                "it", client_id, now - since)
                if written or late or not self._ours(client_id) or nc is None or (
                        not nc.is_connected):
                    # durable, or the session is not ours (any more), or NATS is away
                    # (the node serves its clients: the PUBREL goes, not guaranteed)
                    self._release_pubrels(client_id, pids)
                    self.qos.write_deferred(writes)
                    self.qos.release_marked(marked)
                    self._release_pubcomps(comps)
                    self._free_ids(client_id, freed)
                else:  # not written: again soon, still held
                    unrecorded = self.engine.registry.context.unrecorded
                    if freed and unrecorded is not None:
                        unrecorded.setdefault(client_id, {}).update(freed)
                    if pids:
                        self._pubrels.setdefault(client_id, [])[:0] = pids
                    if writes:
                        self._writes_waiting.setdefault(client_id, [])[:0] = writes
                    if comps:
                        self._pubcomps.setdefault(client_id, [])[:0] = comps
                    if marked:
                        self._marks_waiting.setdefault(client_id, [])[:0] = marked
                    self._waiting_since[client_id] = since
                    asyncio.get_running_loop().call_later(0.2, self._redirty, client_id)

    def _release_pubcomps(self, comps: list[tuple[Client, int]]) -> None:
        if comps:
            release = self.engine.release_pubcomp
            for client, pid in comps:
                release(client, pid)
            self.schedule_flush()

    def _redirty(self, client_id: str) -> None:
        self._dirty[client_id] = None
        self._wake.set()

    async def _write_serialised(self, kv: KeyValue, client_id: str) -> bool:
        """:meth:`_write_record` after any write of the same record still in flight
        (its revision is then the one this write's compare-and-set expects)."""
        locks = self._record_locks
        held = locks.get(client_id)
        if held is None:
            held = locks[client_id] = (asyncio.Lock(), [0])
        lock, users = held
        users[0] += 1
        try:
            async with lock:
                return await self._write_record(kv, client_id)
        finally:
            users[0] -= 1
            if not users[0] and locks.get(client_id) is held:
                del locks[client_id]

    async def _write_record(self, kv: KeyValue, client_id: str) -> bool:
        """Write the record of ``client_id``; True when it is written."""
        key = client_key(client_id)
        rec = self._record_of(client_id)
        rev = self.revs.get(client_id)
        try:
            if rev is None:
                if client_id not in self._claims:
                    return False  # not ours (handed over, or never written: a local session)
                self._claims.discard(client_id)
                self._claiming.add(client_id)  # (until this write is done)
                # Accepted here, not owned here yet (a new session, a clean start):
                # whoever had it drops its copy; last writer wins. A client id that
                # no process had claimed before (this connection's claim created it)
                # has no record anywhere: nothing to read, drop or delete.
                entry = None
                if not await self.ownership.fresh(client_id):
                    try:
                        entry = await kv.get(key)
                    except KeyNotFoundError:
                        entry = None
                if entry is not None and entry.value:
                    answer = None
                    with contextlib.suppress(Exception):
                        old = Record.decode(client_id, entry.value)
                        if old.owner != self.sender:
                            answer = await self._ask(old.owner, _DROP, client_id,
                                                     self.ownership.claims.get(client_id))
                    if answer == _LATER:
                        return False  # its connection was claimed after this one: it keeps it
                if rec is None:
                    if entry is not None and entry.value:
                        await kv.delete(key)
                    return False
                if client_id not in self.engine.registry.sessions:
                    return False
                rev = await kv.put(key, rec.encode())
                if client_id in self.engine.registry.sessions:  # not handed over meanwhile
                    self.revs[client_id] = rev
            elif rec is None:
                self.revs.pop(client_id, None)
                self.positions.pop(client_id, None)
                self.qos2.pop(client_id, None)
                self.inbound.pop(client_id, None)
                self.marks.pop(client_id, None)
                await kv.delete(key, last=rev)
            else:
                rev = await kv.update(key, rec.encode(), last=rev)
                if client_id in self.revs:  # not handed over meanwhile
                    self.revs[client_id] = rev
            self.writes += 1
            self._write_again.discard(client_id)
            log.debug("cluster: session record %r written (position %s)", client_id,
                      None if rec is None else rec.position)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if rev is not None and self.revs.get(client_id) == rev and _conflict(exc):
                # Another process wrote the record since ours: it has the session.
                self.lost += 1
                self.revs.pop(client_id, None)
                self.positions.pop(client_id, None)
                log.info("cluster: session %r is owned elsewhere now (%s); local copy "
                         "dropped", client_id, exc)
                self._drop_local(client_id)
            else:
                self.write_failures += 1
                log.warning("cluster: session record %r not written: %s", client_id, exc)
                if rev is None and client_id in self.engine.registry.sessions:
                    # The first write of a session accepted here failed (a loaded
                    # JetStream: a timeout, 503): still this process's to claim, written
                    # again soon — what waits for it (PUBRELs, PUBCOMPs, stream writes)
                    # keeps waiting. Else the record was never written and the session
                    # moved after kill -9 came back empty (Session Present 0; issue 14).
                    self._claims.add(client_id)
                    self._write_soon(client_id)
                elif rev is not None and self.revs.get(client_id) == rev:
                    # Not written (NATS away, a timeout), not taken by another process
                    # (that is a compare-and-set refusal, above): still ours, written
                    # again soon, or when the buckets answer again after a reconnect
                    # (:meth:`_first_writes_again`) — the local session is kept (a
                    # client reconnecting while NATS is away gets it, issue 14).
                    self._write_again.add(client_id)
                    self._write_soon(client_id)
            return False
        finally:
            self._claiming.discard(client_id)

    def _write_soon(self, client_id: str) -> None:
        """A record of ours whose write failed (not refused by its compare-and-set):
        written again after :data:`FIRST_WRITE_RETRY` while NATS is up; else when the
        buckets answer again after a reconnect (:meth:`_first_writes_again`)."""
        if self._up():
            asyncio.get_running_loop().call_later(FIRST_WRITE_RETRY, self._redirty,
                                                  client_id)

    async def run(self, nc: NatsClient) -> None:
        """Open the bucket, answer handovers, write records, checkpoint positions."""
        self.nc = nc
        js = self.js = nc.jetstream()
        self._set_away(False)  # (:meth:`nats_connected`)
        kv = await self._open(js)
        await nc.subscribe(self._subject(self.sender), cb=self._on_request)
        while self.qos.js is None:  # the stream and its consumer first
            await asyncio.sleep(0.1)
        with contextlib.suppress(Exception):
            info = await js.stream_info(self.qos.stream)
            self.joined_at = info.state.last_seq
        self.kv = kv
        await self._adopt_restored(kv)
        log.info("cluster: session records bucket %r open", self.bucket)
        await self.ownership.opened.wait()  # (opened at the same time: claims need it)
        if self._probe is None or self._probe.done():
            # Ready once the buckets' and the stream's leaders answer (an open bucket
            # may have been found through a replica's answer: :meth:`_probe_buckets`).
            self._start_probe()
        loop = asyncio.get_running_loop()
        checkpoint = loop.create_task(self._checkpoint_loop())
        try:
            while True:
                if not self._dirty:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = list(self._dirty)[:BATCH]
                for client_id in batch:
                    del self._dirty[client_id]
                    if client_id in self._resuming and (
                            client_id in self._writes_waiting or client_id in self._pubcomps
                            or client_id in self._marks_waiting):
                        # (an older connection's messages, the id resumed here
                        # meanwhile): after the resume
                        asyncio.get_running_loop().call_later(0.2, self._redirty, client_id)
                await asyncio.gather(*(self._write_one(kv, c) for c in batch
                                       if c not in self._resuming))
        finally:
            checkpoint.cancel()

    async def flush(self) -> None:
        """A clean stop: the records that changed since their last write go now
        (the sessions' connections were closed by the shutdown: their positions are
        current), so that their clients resume on other nodes from here."""
        kv = self.kv
        if kv is None:
            return
        pos = self.position_now()
        sessions = self.engine.registry.sessions
        for client_id in list(self.revs):
            session = sessions.get(client_id)
            if session is not None and (pos is None or self.positions.get(client_id) != pos):
                self._dirty[client_id] = None
        while self._dirty:
            batch = list(self._dirty)[:BATCH]
            for client_id in batch:
                del self._dirty[client_id]
            await asyncio.gather(*(self._write_one(kv, c) for c in batch
                                   if c not in self._resuming))

    async def _adopt_restored(self, kv: KeyValue) -> None:
        """Persistent sessions this node restored from its store (a restart): the
        record says whose they are. Written by this node before (same node name) or
        by nobody: taken (this store has the session, and the node's durable QoS
        consumer brings what came meanwhile); owned by another node since: the copy
        here is stale and dropped (its subscriptions, interest and queue go)."""
        restored = [c for c, s in self.engine.registry.sessions.items()
                    if s.persistent and c not in self.revs]

        async def adopt(client_id: str) -> None:
            key = client_key(client_id)
            try:
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError:
                    entry = None
                if entry is None or not entry.value:
                    self._claims.add(client_id)
                    self._dirty[client_id] = None
                    return
                rec = Record.decode(client_id, entry.value)
                if rec.owner.rsplit(b"/", 1)[0] == self.node:
                    self.positions[client_id] = rec.position
                    self._load_qos2(client_id, rec.qos2)
                    self._load_inbound(client_id, self._inbound_here(client_id), rec.marks)
                    inbound = dict(self.inbound.get(client_id, ()))
                    mine = Record(self.sender, rec.position, rec.session, rec.subscriptions,
                                  rec.qos2, inbound, self._marks_of(client_id, inbound))
                    self.revs[client_id] = await kv.update(key, mine.encode(),
                                                           last=entry.revision)
                    self._dirty[client_id] = None
                else:
                    log.info("cluster: restored session %r belongs to another node now; "
                             "local copy dropped", client_id)
                    self._drop_local(client_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster: restored session %r not adopted: %s", client_id, exc)

        for start in range(0, len(restored), BATCH):
            await asyncio.gather(*(adopt(c) for c in restored[start:start + BATCH]))
        if self._dirty:
            self._wake.set()

    async def _checkpoint_loop(self) -> None:
        """Advance the position of owned sessions that are drained (no KV write per
        message: one per session per :data:`CHECKPOINT_SECONDS` at most, and only
        when it moved); forget records of sessions that ended here (expiry)."""
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            pos = self.position_now()
            sessions = self.engine.registry.sessions
            for client_id in list(self.revs):
                session = sessions.get(client_id)
                if session is None:
                    self._dirty[client_id] = None  # ended here: record deleted
                elif (pos is not None and self.positions.get(client_id) != pos
                      and self._drained(session)):
                    self._dirty[client_id] = None
            if self._dirty:
                self._wake.set()

    async def _open(self, js: JetStreamContext) -> KeyValue:
        return await open_bucket(js, self.bucket, self.replicas,
                                 "iotbroker persistent sessions (docs/cluster.md)")

    # ------------------------------------------------------------ handover
    def _subject(self, sender: bytes) -> str:
        """Where a process answers handover requests (outside ``<prefix>.``, which is
        the MQTT interest)."""
        return f"_iotb_sess.{self.prefix}.{sender.decode().replace('/', '_').replace('.', '_')}"

    async def _ask(self, owner: bytes, op: bytes, client_id: str,
                   revision: int | None = None) -> bytes | None:
        """Ask ``owner`` to hand the session over (or drop it); with ``revision``, this
        process's claim of the client id: an owner whose own claim is later answers
        :data:`_LATER` and keeps it."""
        nc = self.nc
        if nc is None:
            return None
        if revision is None:
            payload = op + client_id.encode()
        else:
            op = _HANDOVER_AT if op == _HANDOVER else _DROP_AT
            payload = op + _REV.pack(revision) + client_id.encode()
        while True:
            try:
                reply = await nc.request(self._subject(owner), payload,
                                         timeout=HANDOVER_TIMEOUT)
            except Exception:
                return None
            if reply.data != _AGAIN:
                return reply.data
            await asyncio.sleep(AGAIN_SECONDS)  # (a resume is bounded by RESUME_TIMEOUT)

    async def _on_request(self, msg: Msg) -> None:
        """Another node asks for a session of ours: hand it over (its final record,
        the local copy dropped) or just drop it (a clean start elsewhere)."""
        data = msg.data
        op = data[:1]
        if op in (_HANDOVER_AT, _DROP_AT) and len(data) >= 1 + _REV.size:
            (revision,) = _REV.unpack_from(data, 1)
            client_id = data[1 + _REV.size:].decode()
            ownership = self.ownership
            later = await ownership.later_than(client_id, revision)
            if later is None:  # ours in flight: its revision decides, ask again
                if msg.reply:
                    await msg.respond(_AGAIN)
                return
            if later:
                # The connection here was claimed after the asker's: it keeps the
                # client id and the session [MQTT-3.1.4-2]; the asker's CONNECT lost.
                log.debug("cluster: session %r not released: claim here later than %d",
                          client_id, revision)
                if msg.reply:
                    await msg.respond(_LATER)
                return
            # The asker's claim is later: a CONNECT waiting here lost (the session
            # goes to the asker; this node's old connection is closed below).
            ownership.lost(client_id)
            handover = op == _HANDOVER_AT
        else:
            client_id = data[1:].decode()
            handover = op == _HANDOVER
        rec = self._release(client_id)
        if msg.reply:
            await msg.respond(rec.encode() if rec is not None and handover else b"")

    def _release(self, client_id: str) -> Record | None:
        """Close the client's connection here (0x8E), take its final record, drop
        the session. Synchronous: nothing is routed to it in between."""
        engine = self.engine
        self._dirty.pop(client_id, None)
        owned = self.revs.pop(client_id, None) is not None
        client = engine.clients.get(client_id)
        now = time.time()
        session = engine.registry.get(client_id)
        self._claims.discard(client_id)
        # A session opened here by a CONNECT that lost to a later claim (accepted only
        # to be closed: ownership.py ``accepted``) is not the client's: the record is.
        stand_in = not owned and (client_id in self._lost
                                  or client_id in self.ownership.superseded)
        if client is not None:
            # As a local takeover (engine/connect.py _take_over): the connection ends
            # (0x8E) without ending the session here; its will follows the takeover
            # rules (a Will Delay is cancelled by the resume [MQTT-3.1.3-9]).
            client.taken_over = True
            client.session_ended_by_takeover = False
            if session is not None and session.attached_to is client:
                session.detach(now)
            engine.taken_over_elsewhere(client_id)
            if engine.clients.get(client_id) is client:
                del engine.clients[client_id]
        if session is None or stand_in:
            self.positions.pop(client_id, None)
            if session is not None:
                self._drop_local(client_id)
            return None
        # Its stream writes that wait for a record write go now (the new node has
        # their write ids: whichever write comes second is dropped by the stream).
        self.qos.write_deferred(self._writes_waiting.pop(client_id, []))
        self._pubcomps.pop(client_id, None)  # its connection is closed (0x8E)
        self.qos.release_marked(self._marks_waiting.pop(client_id, []))  # (the same)
        rec = self._record_of(client_id)
        if rec is not None:
            # Every inbound QoS 2 id it holds, with the write id of a pending one: a
            # PUBREL to the new node completes, and a PUBLISH re-sent there with such
            # an id is not routed again [MQTT-4.3.3-10] (written again under the same
            # write id if it was pending; not written at all if marked).
            rec.inbound = self._inbound_here(client_id)
            rec.marks = self._marks_of(client_id, rec.inbound)
        self.positions.pop(client_id, None)
        self._drop_local(client_id)
        self.handed_over += 1
        self.schedule_flush()
        return rec

    def _drop_local(self, client_id: str) -> None:
        engine = self.engine
        self._pinned.discard(client_id)
        session = engine.registry.get(client_id)
        if session is None or session.attached_to is not None:
            return
        self.qos2.pop(client_id, None)
        self._pubrels.pop(client_id, None)
        self.inbound.pop(client_id, None)
        self.marks.pop(client_id, None)
        self._pubcomps.pop(client_id, None)
        self._waiting_since.pop(client_id, None)
        unrecorded = engine.registry.context.unrecorded
        if unrecorded:
            unrecorded.pop(client_id, None)
        # (accepted and routed here: their stream writes go, whoever has the session)
        self.qos.write_deferred(self._writes_waiting.pop(client_id, []))
        self.qos.release_marked(self._marks_waiting.pop(client_id, []))
        pairs = [(client_id, f) for f in session.subscriptions]
        engine.registry.pending_wills.pop(client_id, None)
        engine.registry.destroy(session)
        if pairs:
            self.interest_changed(pairs)
        self.schedule_flush()

    # ------------------------------------------------------------ the gate
    def _pulse(self) -> None:
        """Wake the CONNECTs waiting for the gate (:meth:`_wait_ready`)."""
        changed = self._gate_changed
        self._gate_changed = asyncio.Event()
        changed.set()

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            if ready:
                log.info("cluster: sessions are looked for in the cluster "
                         "(buckets %r, %r and stream %r answer)", self.bucket,
                         self.ownership.bucket, self.qos.stream)
            self._pulse()

    def _set_away(self, away: bool) -> None:
        if away != self.away:
            self.away = away
            self._pulse()

    def nats_connected(self, nc: NatsClient) -> None:
        """The first connection to NATS is made: a Clean Start 0 CONNECT waits for the
        buckets (opened by :meth:`run`) from now on."""
        self.nc = nc
        self._set_away(False)

    def nats_lost(self) -> None:
        """NATS is away (the connection was lost, or the first one failed): CONNECTs
        are served with this node's state, none waits (docs/cluster.md)."""
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        self._set_ready(False)
        self._set_away(True)

    def nats_back(self) -> None:
        """NATS returned (a reconnect): a Clean Start 0 CONNECT waits until both
        buckets answer again — right after a reconnect JetStream may not (a restarted
        server rejoining its cluster, a leader being elected) — bounded by
        RESUME_TIMEOUT, instead of being served with this node's state."""
        self._set_ready(False)
        self._set_away(False)
        if self.kv is not None:  # (else :meth:`run` is still opening it: probed then)
            self._start_probe()

    def _start_probe(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        self._probe = asyncio.get_running_loop().create_task(self._probe_buckets())

    async def _probe_buckets(self) -> None:
        """Until both buckets and the QoS stream (a resume reads it) answer a status
        request from their leaders (a replica's answer may lag behind:
        :func:`~iotbroker.cluster.qos_stream.answered_by_leader`), each try bounded to
        1 s, 0.1 s apart; then ready, and the first record writes that failed while
        NATS was away are made now (:meth:`_first_writes_again`)."""
        while True:
            kv, own, js = self.kv, self.ownership.kv, self.js
            nc = self.nc
            if (kv is not None and own is not None and js is not None and nc is not None
                    and nc.is_connected):
                try:
                    answers = await asyncio.wait_for(asyncio.gather(
                        kv.status(), own.status(), js.stream_info(self.qos.stream)), 1.0)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.debug("cluster: buckets not answering yet: %s",
                              str(exc) or type(exc).__name__)
                else:
                    kv_status, own_status, info = answers
                    if all(answered_by_leader(i) for i in (
                            kv_status.stream_info, own_status.stream_info, info)):
                        self._probe = None
                        self._set_ready(True)
                        self._first_writes_again()
                        return
                    log.debug("cluster: buckets answered by a replica, no leader yet")
            await asyncio.sleep(0.1)

    def _first_writes_again(self) -> None:
        """Sessions accepted here whose first record write failed while NATS was away
        (their retry is scheduled only while it is up: :meth:`_write_record`), and
        owned ones whose last write failed: written now that the buckets answer
        again, not at the session's next change."""
        sessions = self.engine.registry.sessions
        waiting = [c for c in self._claims if c in sessions and c not in self.revs]
        waiting += [c for c in self._write_again if c in self.revs]
        self._write_again.clear()
        if waiting:
            for client_id in waiting:
                self._dirty[client_id] = None
            self._wake.set()
            log.info("cluster: %d session records not written while NATS was away: "
                     "written now", len(waiting))

    def _nats_away(self) -> bool:
        """Before the first connection: whether it failed; then: not connected."""
        nc = self.nc
        return self.away if nc is None else not nc.is_connected

    def _gate_open(self) -> bool:
        return self.ready and self.ownership.kv is not None and self._up()

    async def _wait_ready(self, deadline: float) -> bool | None:
        """Until the gate is open (True), NATS is away (False: this node's state), or
        ``deadline`` (monotonic) passes (None)."""
        while not self._gate_open():
            if self._nats_away():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gate_changed.wait(), min(left, 0.25))
        return True

    # -------------------------------------------------------------- resume
    def before_accept(self, client_id: str, clean_start: bool
                      ) -> asyncio.Future[str | None] | None:
        """A CONNECT of ``client_id`` is about to be accepted: with Clean Start 0,
        the session may be elsewhere — a future the CONNECT waits for (None: go on
        now); it ends with why the CONNECT is refused, or None. While NATS is being
        connected to, or this process's buckets are not open (or, after a reconnect,
        do not answer) yet, it waits for them too: served with this node's state in
        that window, the client would get a new or stale session that then replaces
        its record cluster-wide (docs/cluster.md, "Sessions move")."""
        if clean_start or client_id in self._resuming:
            return None
        if not self._gate_open() and self._nats_away():
            return None  # without NATS: this node's copy (docs/cluster.md)
        self._resuming.add(client_id)
        self.ownership.connect_waits(client_id)
        self._captured[client_id] = []
        task = asyncio.get_running_loop().create_task(self._resume_bounded(client_id))
        return task

    async def _resume_bounded(self, client_id: str) -> str | None:
        """:meth:`_resume` within RESUME_TIMEOUT. Not done in time, or failed on a
        NATS error, while NATS is connected (a storm on a loaded cluster): the CONNECT
        is refused, 0x89 Server busy — the client retries, and its session stays where
        it is (served with this node's state instead, a new empty session would
        replace it cluster-wide). Without NATS: this node's state (docs/cluster.md)."""
        started = time.monotonic()
        had_record = client_id in self.revs
        try:
            if not self._gate_open():
                # NATS is being connected to, or the buckets are not ready yet
                self.waited_ready += 1
                ready = await self._wait_ready(started + RESUME_TIMEOUT)
                log.debug("cluster: session %r: CONNECT waited %.3fs for the buckets "
                          "(%s)", client_id, time.monotonic() - started,
                          {True: "ready", False: "NATS away", None: "not ready"}[ready])
                if ready is None:
                    raise TimeoutError(f"buckets not ready within {RESUME_TIMEOUT:.0f}s")
                if not ready:
                    log.info("cluster: session %r: NATS away; served with this node's "
                             "state", client_id)
                    return None
            deadline = started + RESUME_TIMEOUT
            left = deadline - time.monotonic()
            await asyncio.wait_for(self._resume(client_id, deadline), max(left, 0.001))
        except Exception as exc:
            # Not done in time, JetStream did not answer (a loaded cluster: "503
            # service unavailable"), or any other failure (the record kept changing, a
            # KV error of another class): the session is somewhere, not here — never
            # served as a new empty one while NATS is connected (issue 14).
            if isinstance(exc, TimeoutError) and not str(exc):
                why = f"not resumed within {RESUME_TIMEOUT:.0f}s"
            elif isinstance(exc, (TimeoutError, NatsError)):
                why = str(exc) or f"not resumed ({type(exc).__name__})"
            else:
                why = f"not resumed ({type(exc).__name__}: {exc})"
            if not had_record and self.engine.registry.get(client_id) is None:
                # Stopped after taking the record, before rebuilding the session: the
                # record keeps it (a later resume takes it from there), not deleted.
                self.revs.pop(client_id, None)
                self.positions.pop(client_id, None)
            nc = self.nc
            if nc is not None and nc.is_connected:
                self.ownership.abandon(client_id)
                self.refused += 1
                log.warning("cluster: session %r: %s; CONNECT refused (0x89 Server busy: "
                            "the client retries, its session is kept)", client_id, why)
                return f"session {why}"
            log.warning("cluster: session %r: %s; served with this node's state",
                        client_id, why)
        finally:
            self._resuming.discard(client_id)
            self._captured.pop(client_id, None)
            self.last_resume_seconds = time.monotonic() - started
        return None

    last_resume_seconds = 0.0

    async def _resume(self, client_id: str, deadline: float) -> None:
        """Find the session of ``client_id`` in the cluster and make it this node's
        (module docstring). A previous owner's late writes may race the
        compare-and-set: read again (the record it handed over is kept: it is the
        final one). Its JetStream requests are short attempts made again until
        ``deadline`` (monotonic: the resume's bound) while JetStream does not answer
        (:func:`~iotbroker.cluster.buckets.retried`: a leader being elected)."""
        kv = self.kv
        assert kv is not None
        key = client_key(client_id)
        ownership = self.ownership
        superseded = ownership.superseded
        handed: Record | None = None
        mine: int | None = None
        for attempt in range(4):
            entry, claimant = await asyncio.gather(
                retried(lambda: self._get(kv, key), deadline, f"record of {client_id!r}"),
                retried(lambda: ownership.owner(client_id), deadline,
                        f"owner of {client_id!r}"))
            found = None
            if entry is not None and entry.value:
                found = Record.decode(client_id, entry.value)
            if client_id in superseded:
                # Another process with a later claim took the session meanwhile (its
                # handover request): its connection has the client id.
                log.debug("cluster: session %r: CONNECT here lost to a later claim",
                          client_id)
                return
            if attempt == 0 and ((found is not None and (
                    found.owner != self.sender
                    or self.engine.registry.get(client_id) is None)) or (
                    claimant is not None and claimant != self.sender)):
                # Moving here: the client id is this node's from now on (its claim is
                # in the stream before the CONNACK, so a later connection elsewhere
                # claims after it).
                mine = await ownership.claim_now(client_id, deadline)
                log.debug("cluster: session %r claimed at %s before its CONNACK",
                          client_id, mine)
            if client_id in superseded:
                log.debug("cluster: session %r: CONNECT here lost to a later claim",
                          client_id)
                return  # claimed again elsewhere meanwhile: that connection has it
            if found is None:
                # No record (yet: it is written just after a CONNECT): the process
                # that accepted the client's last connection may have the session.
                if handed is None:
                    if claimant is None or claimant == self.sender:
                        return  # this node's session (or none) is the truth
                    data = await self._ask(claimant, _HANDOVER, client_id, mine)
                    if data == _LATER:
                        ownership.lost(client_id)
                        return
                    if not data:
                        return
                    handed = Record.decode(client_id, data)
                if handed.expired(time.time()):
                    return
                claimed = Record(self.sender, handed.position, handed.session,
                                 handed.subscriptions, handed.qos2, handed.inbound,
                                 handed.marks)
                try:
                    self.revs[client_id] = await self._write_checked(
                        kv, key, claimed.encode(), None, deadline)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not _conflict(exc):
                        raise  # not answered (it may be written: the retry reads it)
                    continue  # written meanwhile: read again
                await self._install(client_id, handed, deadline)
                self.resumed += 1
                return
            assert entry is not None
            revision = entry.revision or 0
            if found.owner == self.sender and (
                    handed is not None or self.engine.registry.get(client_id) is not None):
                self.revs.setdefault(client_id, revision)
                return  # ours: the local session is the truth
            # (Ours without a local copy: handed over since the record was written, and
            # this CONNECT's claim is later: taken back from the record below.)
            if handed is None and found.owner != self.sender and (
                    found.owner.rsplit(b"/", 1)[0] == self.node) and (
                    self.engine.registry.get(client_id) is not None):
                # This node before a restart: its store has the session (and its
                # durable consumer brought what came meanwhile); take the record.
                self.positions.setdefault(client_id, found.position)
                if client_id not in self.qos2:
                    self._load_qos2(client_id, found.qos2)
                if client_id not in self.inbound:  # this store's view
                    self._load_inbound(client_id, self._inbound_here(client_id),
                                       found.marks)
                inbound = dict(self.inbound.get(client_id, ()))
                taken = Record(self.sender, found.position, found.session,
                               found.subscriptions, found.qos2, inbound,
                               self._marks_of(client_id, inbound))
                self.revs[client_id] = await self._write_checked(
                    kv, key, taken.encode(), revision, deadline)
                self._dirty[client_id] = None
                return
            if handed is None and found.owner != self.sender:
                # A live owner answers (a dead one has no subscription left: NATS says
                # "no responders" at once; a hung one is waited for HANDOVER_TIMEOUT).
                data = await self._ask(found.owner, _HANDOVER, client_id, mine)
                if data == _LATER:  # its connection was claimed after ours: it keeps it
                    log.debug("cluster: session %r: %s has a later claim; CONNECT here "
                              "lost", client_id, found.owner.decode(errors="replace"))
                    ownership.lost(client_id)
                    return
                if data:
                    handed = Record.decode(client_id, data)
            if client_id in superseded:
                return
            rec = handed if handed is not None else found
            if rec.expired(time.time()):
                with contextlib.suppress(Exception):
                    await kv.delete(key, last=revision)
                self._drop_local(client_id)
                return  # [MQTT-3.1.2-23]: over; a new session starts
            claimed = Record(self.sender, rec.position, rec.session, rec.subscriptions,
                             rec.qos2, rec.inbound, rec.marks)
            try:
                rev = await self._write_checked(kv, key, claimed.encode(), revision,
                                                deadline)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not _conflict(exc):
                    raise  # not answered (it may be written: the retry reads it)
                continue  # someone else wrote meanwhile: read again
            self.revs[client_id] = rev
            await self._install(client_id, rec, deadline)
            self.resumed += 1
            return
        # Not resumed: served with this node's state, a new empty session would replace
        # the record cluster-wide; the caller refuses the CONNECT (0x89) instead.
        raise ResumeFailed("the session record kept changing")

    @staticmethod
    async def _get(kv: KeyValue, key: str) -> KeyValue.Entry | None:
        try:
            return await kv.get(key)
        except KeyNotFoundError:
            return None

    async def _write_checked(self, kv: KeyValue, key: str, data: bytes, last: int | None,
                             deadline: float) -> int:
        """Write ``data`` under ``key`` if its last revision is ``last`` (None: create
        it), in short attempts until ``deadline`` (:func:`retried`); its revision. An
        attempt that timed out may have been written all the same: a later attempt
        refused by the compare-and-set then reads the record, and when it holds
        ``data`` that was this write (else the refusal is raised: written by another)."""
        tried = False

        async def attempt() -> int:
            nonlocal tried
            again, tried = tried, True
            try:
                if last is None:
                    return await kv.create(key, data)
                return await kv.update(key, data, last=last)
            except Exception as exc:
                if not again or not _conflict(exc):
                    raise
                entry = await self._get(kv, key)
                if entry is not None and entry.value == data and entry.revision:
                    return entry.revision
                raise

        return await retried(attempt, deadline, f"record write of {key!r}")

    async def _install(self, client_id: str, rec: Record, deadline: float) -> None:
        """Rebuild the session here from ``rec`` and deliver what the QoS stream has
        for it after its position. The stream's reader waits meanwhile (its lock), so
        each stream message reaches the session exactly once from here: those the
        node had not seen yet are first routed to its other sessions as the reader
        would (the reader then drops them), then every message read goes to this
        session. A QoS 2 message released to the client before the move (``rec.qos2``)
        is not sent again: completed, nothing; released, its PUBREL; any other QoS 2
        message goes in flight under its derived packet id, re-sent with DUP=1, so a
        client that holds that id does not deliver it twice [MQTT-4.3.3-10]
        (docs/cluster.md, "QoS 2 across a move")."""
        qos = self.qos
        js = self.js
        assert js is not None
        filters = [e.topic_filter for e in rec.subscriptions if e.share_group is None]
        async with qos.reader_paused() as nxt:
            fetched: list[tuple[int, bytes, int, list[Message]]] = []
            incomplete = False
            if rec.position is not None and filters:
                try:
                    fetched = await self._fetch(js, rec.position, filters, deadline)
                except IncompleteReplay as exc:
                    # The session comes here all the same (its subscriptions); its
                    # position stays where it was, so a later move reads it all again.
                    incomplete = True
                    log.error("cluster: session %r: the QoS stream read after position "
                              "%s failed (%s); resumed without those messages, position "
                              "kept", client_id, rec.position, exc)
            # From here on, synchronous: nothing else is routed in between.
            if client_id in self.ownership.superseded:
                # Claimed again elsewhere while the stream was read: the later claim's
                # connection takes the session (from the record, which says so).
                log.debug("cluster: session %r not installed: a later claim elsewhere",
                          client_id)
                self.revs.pop(client_id, None)
                self.positions.pop(client_id, None)
                return
            engine = self.engine
            registry = engine.registry
            old = registry.get(client_id)
            if old is not None:
                if old.attached_to is not None:
                    return  # connected here meanwhile: keep it
                self._drop_local(client_id)
            now = time.time()
            dedup = qos.dedup
            own = self.sender
            replayed: set[tuple[str, str, float, bytes]] = set()
            for stream_seq, sender, seq, messages in fetched:
                replayed.update(_identity(m) for m in messages)
                if sender != own and (nxt is None or stream_seq >= nxt) and dedup.first(
                        sender, seq):
                    for message in messages:  # as the reader would (not to this session)
                        engine.route_remote(message, now)
            s = rec.session
            session = Session(client_id, s.protocol_version, s.expiry_interval,
                              registry.context)
            session.username = s.username
            session.disconnected_at = s.disconnected_at or now
            registry.sessions[client_id] = session
            batch = engine.batch
            for entry in rec.subscriptions:
                session.restore_subscription(entry)
                engine.trie.add(entry)
                batch.put_subscription(entry)
            batch.put_session(registry.record(session))
            marks = rec.marks
            for pid, write_id in rec.inbound.items():
                # Its inbound QoS 2 ids: held; one with a write id may be pending (its
                # node died or handed it over before the stream's ack): a PUBLISH
                # re-sent with it is written again under that id (qos_stream.py) and
                # the stream drops it if the first write made it [MQTT-4.3.3-10]. A
                # marked one is in the stream: PUBREC and no write, however late.
                session.hold_inbound_qos2(pid)
                if write_id and pid not in marks:
                    engine.qos2_unreplicated[(client_id, pid)] = write_id
                    batch.put_inbound_pending(client_id, pid, write_id)
            self._load_inbound(client_id, rec.inbound, marks)
            self.positions[client_id] = rec.position
            self._load_qos2(client_id, rec.qos2)
            if incomplete:
                self._pinned.add(client_id)
            pairs = [(client_id, e.topic_filter) for e in rec.subscriptions]
            if pairs:
                self.interest_changed(pairs)
            count = 0
            released = rec.qos2
            queued2 = False  # a QoS 2 message waits in the queue: the later ones too

            def to_session(message: Message) -> int:
                nonlocal queued2
                if message.expired(now):
                    return 0
                entries = [e for e in session.subscriptions.values()
                           if e.share_group is None
                           and filter_matches(e.topic_filter, message.topic)]
                if not entries:
                    return 0
                delivery = copy_for(message, entries, client_id)
                if delivery is None:
                    return 0
                key = message.stream_key
                if delivery.qos == 2 and key:
                    state = released.get(key, (0, 0))[1]
                    if state == COMPLETED or not session.may_receive(message.topic):
                        return 0  # the client had it and forgot its id: not again
                    if state == RELEASED:
                        # PUBREL again, never the message [MQTT-4.3.3-10]; a message
                        # holding the same id before it was completed (it could not
                        # have been sent otherwise): replaced.
                        session.restore_derived(delivery, OutboundState.PUBREL_SENT, now,
                                                replace=True)
                        return 1
                    if not queued2 and session.restore_derived(
                            delivery, OutboundState.PUBLISH_SENT, now):
                        return 1  # re-sent with its id and DUP=1 on attach
                    queued2 = True
                return 1 if session.deliver(delivery, now) else 0

            for _, _, _, messages in fetched:
                for message in messages:
                    count += to_session(message)
            # Routed here during the resume, before the session was: those whose stream
            # copy was not in the read above (written after it) come now.
            for message in self._captured.pop(client_id, []):
                if message.qos and _identity(message) not in replayed:
                    count += to_session(message)
            self.replayed += count
            log.info("cluster: session %r resumed here (%d subscriptions, %d QoS 1/2 "
                     "messages from the stream after position %s, %d QoS 2 released "
                     "before, %d inbound QoS 2 ids held, %d of them in the stream)",
                     client_id, len(rec.subscriptions), count, rec.position, len(released),
                     len(rec.inbound), len(marks))
            self.schedule_flush()

    def _load_inbound(self, client_id: str, entries: dict[int, str],
                      marks: dict[int, int] | None = None) -> None:
        """The inbound QoS 2 ids of a record this node takes, and the marks of those
        among them that the stream has (kept in its next writes). A marked id that
        this node's store has as pending (a restart: killed between the record's
        mark and the PUBREC's commit) is held plainly: its write made it."""
        if entries:
            self.inbound[client_id] = dict(entries)
        else:
            self.inbound.pop(client_id, None)
        marks = {pid: seq for pid, seq in (marks or {}).items() if pid in entries}
        if not marks:
            self.marks.pop(client_id, None)
            return
        self.marks[client_id] = marks
        pending = self.engine.qos2_unreplicated
        session = self.engine.registry.get(client_id)
        for pid in marks:
            if pending.pop((client_id, pid), None) is not None and session is not None:
                self.engine.batch.put_inbound_qos2(client_id, pid)

    def _load_qos2(self, client_id: str, entries: dict[int, tuple[int, int]]) -> None:
        """The QoS 2 entries of a record this node takes (kept in its next writes)."""
        if entries:
            self.qos2[client_id] = {key: _Q2(seq, state, None)
                                    for key, (seq, state) in entries.items()}
        else:
            self.qos2.pop(client_id, None)

    async def _fetch(self, js: JetStreamContext, position: int, filters: list[str],
                     deadline: float) -> list[tuple[int, bytes, int, list[Message]]]:
        """The stream messages after ``position`` on the subjects of ``filters``, up
        to the stream's end now (an ephemeral pull consumer, filtered by the server).

        Never short (issue 14, i14-restart): the end is the one the stream's *leader*
        gives (a replica's answer is not taken: :func:`answered_by_leader`), and a read
        is checked against the leader before it is taken — the ephemeral consumer
        lives on one replica of the stream, chosen by nats-server, and a replica that
        has just restarted may not have caught up yet: it then reports fewer messages
        pending than there are (0 in the case seen) and delivers only what it has. A
        read that the leader shows to be short is made again (a new consumer) after
        :data:`REREAD_PAUSE`, until it is whole: bounded by the resume's own bound
        (RESUME_TIMEOUT: past it the CONNECT is refused 0x89 and the session stays
        where it is; the client retries). Its requests are short attempts made again
        until ``deadline`` while JetStream does not answer (:func:`retried`)."""
        qos = self.qos
        subjects: list[str] = []
        for topic_filter in filters:
            for subject in filter_to_subjects(qos.subject_prefix, topic_filter):
                if subject not in subjects:
                    subjects.append(subject)
        while True:
            info = await retried(lambda: qos.leader_info(js), deadline,
                                 f"stream info of {qos.stream!r}")
            if info is not None:
                last = info.state.last_seq
                if last <= position:
                    return []
                out = await self._read(js, subjects, position, last, info.state.first_seq,
                                       deadline)
                missed = await self._missed(js, subjects,
                                            out[-1][0] if out else position, last, deadline)
                if missed is None:
                    return out
                why = (f"read up to sequence {out[-1][0] if out else position} of {last}, "
                       f"the leader has {missed} (a replica catching up)")
            else:
                why = "answered by a replica, not the stream's leader"
            self.rereads += 1
            log.info("cluster: QoS stream %r read after position %d not whole (%s); "
                     "read again in %.1fs", qos.stream, position, why, REREAD_PAUSE)
            await asyncio.sleep(REREAD_PAUSE)

    async def _read(self, js: JetStreamContext, subjects: list[str], position: int,
                    last: int, first: int, deadline: float
                    ) -> list[tuple[int, bytes, int, list[Message]]]:
        """One read of the stream messages after ``position`` up to ``last`` on
        ``subjects``: as many as the consumer says match (its replica's view)."""
        qos = self.qos
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(position + 1, first),
            ack_policy=AckPolicy.NONE,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=30.0,
        )
        if len(subjects) > 1:
            config.filter_subjects = subjects
        # (an attempt whose consumer was made although its answer did not come leaves
        # that consumer to the server: gone after ``inactive_threshold``)
        sub = await retried(
            lambda: js.pull_subscribe(subjects[0], stream=qos.stream, config=config),
            deadline, f"consumer on {qos.stream!r}")
        out: list[tuple[int, bytes, int, list[Message]]] = []
        try:
            # How many match from the start on: fetched until then (or the end seen
            # now), never waiting for messages that do not exist.
            remaining = (await retried(sub.consumer_info, deadline,
                                       f"consumer info on {qos.stream!r}")).num_pending or 0
            deadline = time.monotonic() + FETCH_PATIENCE
            while remaining > 0:
                try:
                    msgs = await sub.fetch(min(FETCH_BATCH, remaining), timeout=1.0)
                except TimeoutError:
                    if time.monotonic() < deadline:
                        continue  # a loaded server: ask again
                    raise IncompleteReplay(
                        f"{remaining} stream messages not read within "
                        f"{FETCH_PATIENCE:.0f}s") from None
                remaining -= len(msgs)
                done = False
                for msg in msgs:
                    meta = msg.metadata
                    stream_seq = meta.sequence.stream
                    if stream_seq > last:
                        done = True
                        break
                    try:
                        topic = subject_to_topic(qos.subject_prefix, msg.subject)
                        sender, seq, messages = wire.decode(topic, msg.data)
                    except Exception as exc:
                        log.warning("cluster: undecodable QoS stream message: %s", exc)
                        continue
                    key = stream_key(msg)
                    for message in messages:
                        message.stream_seq = stream_seq
                        if key and message.qos == 2:  # its derived packet id (_install)
                            message.stream_key = key
                    out.append((stream_seq, sender, seq, messages))
                    if stream_seq >= last:
                        done = True
                if done or not msgs:
                    break
        finally:  # not waited for (the consumer also goes by itself when inactive)
            task = asyncio.get_running_loop().create_task(self._forget(js, sub))
            self._cleanup.add(task)
            task.add_done_callback(self._cleanup.discard)
        return out

    async def _missed(self, js: JetStreamContext, subjects: list[str], after: int,
                      last: int, deadline: float) -> int | None:
        """The first stream sequence in ``after`` + 1 .. ``last`` of a message on
        ``subjects`` that the stream's leader has (None: none) — a read that ended at
        ``after`` missed it. A replica applies the stream in order, so what a lagging
        one lacks is the end: one "next message on this subject" request per subject
        (served by the leader only, ``$JS.API.STREAM.MSG.GET``) tells."""
        if after >= last:
            return None
        stream = self.qos.stream

        async def next_on(subject: str) -> int | None:
            try:
                msg = await retried(
                    lambda: js.get_msg(stream, seq=after + 1, subject=subject, next=True),
                    deadline, f"next message on {subject!r}")
            except NotFoundError:
                return None
            return msg.seq

        found = [seq for seq in await asyncio.gather(*(next_on(s) for s in subjects))
                 if seq is not None and seq <= last]
        return min(found) if found else None

    async def _forget(self, js: JetStreamContext, sub: JetStreamContext.PullSubscription
                      ) -> None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(self.qos.stream, sub._consumer)
