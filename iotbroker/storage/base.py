"""The storage contract: record types, a batch of named changes, the Store protocol.

Rules of this room:

* Storage is synchronous and knows nothing of sockets or the event loop. The core
  collects one loop turn's changes in a :class:`ChangeBatch`; the server applies it
  with :meth:`Store.apply` before any acknowledgement from that turn reaches a socket.
* What is persisted is exactly the spec's *session state* (MQTT 3.1.1 §3.1.2.4,
  MQTT 5.0 §4.1) plus retained messages (MQTT 5.0 §3.3.1.3):

  ==================  ========================================  ========================
  record              key                                       one per
  ==================  ========================================  ========================
  SessionRecord       client_id                                 session
  SubscriptionEntry   (client_id, topic_filter)                 subscription
  OutboundRecord      (client_id, packet_id)                    in-flight QoS 1/2 PUBLISH
  QueuedRecord        (client_id, seq)                          queued (not yet sent) msg
  inbound QoS 2 id    (client_id, packet_id)                    PUBLISH received, no PUBREL
  retained Message    topic                                     retained message
  StreamPosition      consumer                                  cluster stream consumer
  ==================  ========================================  ========================

  An inbound QoS 2 id may be *pending* (``put_inbound_pending``): received and routed
  here, but the cluster's replicated stream has not acknowledged it yet, so no PUBREC
  was sent; it carries the id of that stream write (docs/cluster.md, "QoS 2 exactly
  once"). ``put_inbound_qos2`` on the same key makes it plainly held. A
  :class:`StreamPosition` is where a cluster node's reading of the QoS stream stands,
  committed in the batch of the deliveries it caused.

* ``seq`` is a per-session counter (:attr:`SessionRecord.next_seq`) that the core hands
  out when it accepts a delivery for a session, whether the delivery goes in flight at
  once or waits in the queue. A queued delivery keeps its ``seq`` when it is promoted
  to in flight, so :meth:`Store.load` returns in-flight messages in their original send
  order even after packet identifiers wrapped around (MQTT 5.0 §4.6: resend in order).
* A put replaces any record with the same key. Deleting a missing record is not an
  error. ``delete_session`` removes the session and *every* record keyed by its
  client id (subscriptions, outbound, queued, inbound QoS 2 ids), and nothing of any
  other client id, even one that has it as a prefix ("a" vs "ab").
* Changes of one batch take effect in order (put then delete of one key leaves
  nothing; ``delete_session`` then ``put_session`` leaves a fresh session) and
  atomically: all of them or none. A change that cannot be stored (a client id
  containing NUL, a packet id outside 1..65535) is our own bug: ``apply`` raises
  :class:`ValueError` and stores nothing of that batch.
* The store does not interpret: expired messages and records without a session come
  back from :meth:`Store.load` as they were written; the core decides what they mean.
  A subscription is the core's own :class:`~iotbroker.subscription.SubscriptionEntry`
  (one type, no conversion); its ``share_group`` is the core's reading of the filter,
  not stored: it comes back as ``None`` from every store.
* Failures of the medium (database in use, corrupt, newer format, disk full) raise
  :class:`iotbroker.errors.StorageError` whose message says what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal, Protocol

from iotbroker.codec.packets import Properties
from iotbroker.message import Delivery, Message
from iotbroker.subscription import SubscriptionEntry

__all__ = [
    "MAX_SEQ",
    "Change",
    "ChangeBatch",
    "Durability",
    "OnCorruption",
    "Op",
    "OutboundRecord",
    "OutboundState",
    "QueueSummaries",
    "QueueSummary",
    "QueuedRecord",
    "SessionRecord",
    "Store",
    "StoreSnapshot",
    "StreamPosition",
    "SubscriptionEntry",
    "WillRecord",
    "check_client_id",
    "check_outbound",
    "check_packet_id",
    "check_position",
    "check_seq",
    "check_write_id",
]

#: Largest per-session sequence number (stored as an unsigned 64-bit integer).
MAX_SEQ = 0xFFFF_FFFF_FFFF_FFFF

#: ``storage.durability``: ``"os"`` writes each batch to the log without fsync (it
#: survives a crash of the process, not of the machine); ``"fsync"`` syncs every batch.
#: The one definition: ``config.py`` imports it.
Durability = Literal["os", "fsync"]
#: ``storage.on_corruption``: ``"fail"`` refuses to start; ``"move-aside"`` renames the
#: corrupt store and starts empty (``storage/recovery.py``).
OnCorruption = Literal["fail", "move-aside"]


class OutboundState(IntEnum):
    """Where an in-flight outbound QoS 1/2 PUBLISH stands (MQTT 5.0 §4.3.2, §4.3.3)."""

    #: PUBLISH sent; awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    PUBLISH_SENT = 1
    #: PUBREC received and PUBREL sent; awaiting PUBCOMP (QoS 2).
    PUBREL_SENT = 2


@dataclass(slots=True, frozen=True)
class WillRecord:
    """A Will Message still pending for a disconnected session (MQTT 5.0 §3.1.3.2).

    Persisted while its connection is open (``disconnected_at`` is None: a restart
    after a crash publishes it, issue 18) and while a Will Delay Interval runs:
    ``delay_interval`` is in seconds, counted from :attr:`SessionRecord.disconnected_at`
    (from the restart for a will stored while connected). ``properties`` are the Will
    Properties (payload format, message expiry, content type, response topic,
    correlation data, user properties).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties
    delay_interval: int = 0


@dataclass(slots=True, frozen=True)
class SessionRecord:
    """One session (MQTT 5.0 §4.1), keyed by ``client_id``.

    ``expiry_interval`` is the Session Expiry Interval in seconds (``0xFFFFFFFF``: never
    expires). ``disconnected_at`` is the wall-clock time of the disconnect, ``None``
    while a client is connected. ``next_packet_id`` and ``next_seq`` are the counters
    the core continues from after a restart.
    """

    client_id: str
    protocol_version: int
    expiry_interval: int
    disconnected_at: float | None = None
    will: WillRecord | None = None
    next_packet_id: int = 1
    next_seq: int = 0
    username: str | None = None


@dataclass(slots=True, frozen=True)
class OutboundRecord:
    """An in-flight outbound QoS 1/2 PUBLISH, keyed by ``(client_id, packet_id)``.

    ``seq`` is the delivery's per-session sequence number (see the module docstring);
    :meth:`Store.load` returns a session's outbound records sorted by it. ``delivery``
    may be ``None`` in state :attr:`OutboundState.PUBREL_SENT`: after PUBREC the
    message itself need not be kept (MQTT 5.0 §4.3.3), only the packet id.
    """

    client_id: str
    packet_id: int
    state: OutboundState
    delivery: Delivery | None
    seq: int


@dataclass(slots=True, frozen=True)
class StreamPosition:
    """The last sequence of a replicated stream that a cluster node's consumer
    (``consumer``) routed into this store, keyed by ``consumer``; written in the same
    batch as the deliveries of that stream message, so after a crash the node skips
    what it had already stored (docs/cluster.md, "QoS 2 exactly once").
    ``stream_created`` (POSIX time, 0: unknown) tells one incarnation of the stream
    from the next: a stream deleted and created again starts its sequences at 1."""

    consumer: str
    seq: int
    stream_created: float = 0.0


@dataclass(slots=True, frozen=True)
class QueuedRecord:
    """A delivery waiting for the in-flight window, keyed by ``(client_id, seq)``."""

    client_id: str
    seq: int
    delivery: Delivery


#: One session's stored queue in brief: ``(first seq, count, total payload bytes,
#: consecutive)``; ``consecutive`` is True when the seqs are ``first .. first+count-1``.
QueueSummary = tuple[int, int, int, bool]


class QueueSummaries:
    """Builds :data:`QueueSummary` values from queued records seen in key order
    (client id, then seq), one record at a time: no list per session."""

    __slots__ = ("out",)

    def __init__(self, out: dict[str, QueueSummary]) -> None:
        self.out = out

    def add(self, client_id: str, seq: int, size: int) -> None:
        cur = self.out.get(client_id)
        if cur is None:
            self.out[client_id] = (seq, 1, size, True)
        else:
            first, count, total, consecutive = cur
            self.out[client_id] = (
                first, count + 1, total + size, consecutive and seq == first + count
            )


@dataclass(slots=True)
class StoreSnapshot:
    """Everything :meth:`Store.load` found.

    * ``sessions``: by client id, in client id order.
    * ``subscriptions``: per client id, in topic filter order.
    * ``outbound``: per client id, in send order (``seq``).
    * ``queued``: per client id, in ``seq`` order.
    * ``inbound_qos2``: per client id, the packet ids of QoS 2 PUBLISHes received and
      not yet released by PUBREL (pending ones included).
    * ``inbound_pending``: per client id, the pending ones among them (packet id ->
      the id of their unacknowledged stream write).
    * ``stream_positions``: by consumer name.
    * ``retained``: in topic order.
    * ``queued_index``: filled instead of ``queued`` by ``load(queued_bodies=False)``:
      per client id, ``(seq, stored size in bytes)`` in ``seq`` order, so that offline
      sessions keep only an index in memory; :meth:`Store.load_queued` reads one
      session's messages when it comes back.
    * ``queued_summary``: filled instead by ``load(queued_bodies=False,
      queued_summary=True)``: per client id, a :data:`QueueSummary` (first seq, count,
      total payload bytes, whether the seqs are consecutive): what an offline session
      keeps of its queue (issue 19), without a list per session even during restore.
    """

    sessions: dict[str, SessionRecord] = field(default_factory=dict)
    subscriptions: dict[str, list[SubscriptionEntry]] = field(default_factory=dict)
    outbound: dict[str, list[OutboundRecord]] = field(default_factory=dict)
    queued: dict[str, list[QueuedRecord]] = field(default_factory=dict)
    inbound_qos2: dict[str, set[int]] = field(default_factory=dict)
    retained: list[Message] = field(default_factory=list)
    queued_index: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    queued_summary: dict[str, QueueSummary] = field(default_factory=dict)
    inbound_pending: dict[str, dict[int, str]] = field(default_factory=dict)
    stream_positions: dict[str, StreamPosition] = field(default_factory=dict)


class Op(IntEnum):
    """The code of one named change in a :class:`ChangeBatch`."""

    PUT_SESSION = 1
    DELETE_SESSION = 2
    PUT_SUBSCRIPTION = 3
    DELETE_SUBSCRIPTION = 4
    PUT_OUTBOUND = 5
    DELETE_OUTBOUND = 6
    PUT_QUEUED = 7
    DELETE_QUEUED = 8
    PUT_INBOUND_QOS2 = 9
    DELETE_INBOUND_QOS2 = 10
    PUT_RETAINED = 11
    DELETE_RETAINED = 12
    #: Queued records ``first <= seq < end`` of one client: ``(client_id, (first, end))``.
    DELETE_QUEUED_RANGE = 13
    PUT_INBOUND_PENDING = 14
    PUT_STREAM_POSITION = 15


#: One change: ``(op, a, b)``. Puts carry the record (or retained Message) in ``a``
#: and ``None`` in ``b``; deletes carry the key: ``(client_id, None)`` for
#: DELETE_SESSION, ``(topic, None)`` for DELETE_RETAINED, ``(client_id, (first, end))``
#: for DELETE_QUEUED_RANGE, ``(client_id, topic_filter | packet_id | seq)`` otherwise;
#: PUT_INBOUND_QOS2 is ``(client_id, packet_id)``, PUT_INBOUND_PENDING
#: ``(client_id, (packet_id, write_id))``.
Change = tuple[Op, Any, Any]

# Module-level aliases: a global lookup is cheaper than an enum attribute lookup.
_PUT_SESSION = Op.PUT_SESSION
_DELETE_SESSION = Op.DELETE_SESSION
_PUT_SUBSCRIPTION = Op.PUT_SUBSCRIPTION
_DELETE_SUBSCRIPTION = Op.DELETE_SUBSCRIPTION
_PUT_OUTBOUND = Op.PUT_OUTBOUND
_DELETE_OUTBOUND = Op.DELETE_OUTBOUND
_PUT_QUEUED = Op.PUT_QUEUED
_DELETE_QUEUED = Op.DELETE_QUEUED
_PUT_INBOUND_QOS2 = Op.PUT_INBOUND_QOS2
_DELETE_INBOUND_QOS2 = Op.DELETE_INBOUND_QOS2
_PUT_RETAINED = Op.PUT_RETAINED
_DELETE_RETAINED = Op.DELETE_RETAINED
_DELETE_QUEUED_RANGE = Op.DELETE_QUEUED_RANGE
_PUT_INBOUND_PENDING = Op.PUT_INBOUND_PENDING
_PUT_STREAM_POSITION = Op.PUT_STREAM_POSITION


class ChangeBatch:
    """An append-only list of named changes, applied in order and atomically.

    Appending is one tuple and one ``list.append``: the core calls these on the hot
    path. ``changes`` is public for the stores; treat it as read-only elsewhere.
    """

    __slots__ = ("changes", "refused")

    def __init__(self) -> None:
        self.changes: list[Change] = []
        #: How many of the first ``changes`` a store already refused (the broker keeps
        #: a refused batch and offers it again, server/turn.py): changes past them are
        #: this turn's own. Reset by :meth:`clear`.
        self.refused = 0

    def put_session(self, rec: SessionRecord) -> None:
        self.changes.append((_PUT_SESSION, rec, None))

    def delete_session(self, client_id: str) -> None:
        """Remove the session and all its subscriptions, outbound, queued and inbound ids."""
        self.changes.append((_DELETE_SESSION, client_id, None))

    def put_subscription(self, rec: SubscriptionEntry) -> None:
        self.changes.append((_PUT_SUBSCRIPTION, rec, None))

    def delete_subscription(self, client_id: str, topic_filter: str) -> None:
        self.changes.append((_DELETE_SUBSCRIPTION, client_id, topic_filter))

    def put_outbound(self, rec: OutboundRecord) -> None:
        self.changes.append((_PUT_OUTBOUND, rec, None))

    def delete_outbound(self, client_id: str, packet_id: int) -> None:
        self.changes.append((_DELETE_OUTBOUND, client_id, packet_id))

    def put_queued(self, rec: QueuedRecord) -> None:
        self.changes.append((_PUT_QUEUED, rec, None))

    def delete_queued(self, client_id: str, seq: int) -> None:
        self.changes.append((_DELETE_QUEUED, client_id, seq))

    def delete_queued_in_order(self, client_id: str, seq: int) -> None:
        """Delete the queued record ``seq``; when the change before it deleted ``seq -
        1`` of the same client (acknowledgements arrive in order, a stream outbox's
        PUBACKs [MQTT-4.6.0-2]), the two become one range: one RocksDB range deletion
        per turn instead of one deletion per message."""
        changes = self.changes
        if changes:
            op, a, b = changes[-1]
            if a == client_id:
                if op is _DELETE_QUEUED and b == seq - 1:
                    changes[-1] = (_DELETE_QUEUED_RANGE, client_id, (b, seq + 1))
                    return
                if op is _DELETE_QUEUED_RANGE and b[1] == seq:
                    changes[-1] = (_DELETE_QUEUED_RANGE, client_id, (b[0], seq + 1))
                    return
        changes.append((_DELETE_QUEUED, client_id, seq))

    def put_inbound_qos2(self, client_id: str, packet_id: int) -> None:
        self.changes.append((_PUT_INBOUND_QOS2, client_id, packet_id))

    def delete_inbound_qos2(self, client_id: str, packet_id: int) -> None:
        self.changes.append((_DELETE_INBOUND_QOS2, client_id, packet_id))

    def put_inbound_pending(self, client_id: str, packet_id: int, write_id: str) -> None:
        """A QoS 2 id received whose cluster stream write (``write_id``) is not
        acknowledged yet (replaces a held one; ``put_inbound_qos2`` replaces it)."""
        self.changes.append((_PUT_INBOUND_PENDING, client_id, (packet_id, write_id)))

    def put_stream_position(self, consumer: str, seq: int, stream_created: float) -> None:
        self.changes.append(
            (_PUT_STREAM_POSITION, StreamPosition(consumer, seq, stream_created), None))

    def put_retained(self, message: Message) -> None:
        self.changes.append((_PUT_RETAINED, message, None))

    def delete_retained(self, topic: str) -> None:
        self.changes.append((_DELETE_RETAINED, topic, None))

    def extend(self, other: ChangeBatch) -> None:
        """Append all changes of ``other`` (after this batch's own)."""
        self.changes.extend(other.changes)

    def clear(self) -> None:
        self.changes.clear()
        self.refused = 0

    def __len__(self) -> int:
        return len(self.changes)

    def __bool__(self) -> bool:
        return bool(self.changes)

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    def __repr__(self) -> str:
        names = ", ".join(Op(op).name for op, _, _ in self.changes[:8])
        more = f", ... ({len(self.changes)} changes)" if len(self.changes) > 8 else ""
        return f"ChangeBatch([{names}{more}])"


def check_client_id(client_id: str) -> None:
    """A client id is a key prefix ended by NUL: it must be a str without NUL.

    MQTT strings cannot contain U+0000 [MQTT-1.5.4-2], so a validated client id
    always passes.
    """
    if not isinstance(client_id, str) or "\0" in client_id:
        raise ValueError(f"client id {client_id!r} cannot be stored: a str without NUL expected")


def check_packet_id(packet_id: int) -> None:
    """Packet identifiers are 1..65535 (MQTT 5.0 §2.2.1)."""
    if not isinstance(packet_id, int) or not 0 < packet_id <= 0xFFFF:
        raise ValueError(f"packet id {packet_id!r} cannot be stored: 1..65535 expected")


def check_seq(seq: int) -> None:
    """Sequence numbers are unsigned 64-bit integers."""
    if not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"sequence number {seq!r} cannot be stored: 0..2**64-1 expected")


def check_write_id(write_id: str) -> None:
    """A stream write id is a non-empty str."""
    if not isinstance(write_id, str) or not write_id:
        raise ValueError(f"write id {write_id!r} cannot be stored: a non-empty str expected")


def check_position(pos: StreamPosition) -> None:
    """A consumer name (non-empty str without NUL) and a sequence in range."""
    if not isinstance(pos.consumer, str) or not pos.consumer or "\0" in pos.consumer:
        raise ValueError(f"consumer {pos.consumer!r} cannot be stored: a str without NUL expected")
    check_seq(pos.seq)


def check_outbound(rec: OutboundRecord) -> None:
    """Client id, packet id and seq in range; no delivery only in state PUBREL_SENT."""
    check_client_id(rec.client_id)
    check_packet_id(rec.packet_id)
    check_seq(rec.seq)
    if rec.delivery is None and rec.state != OutboundState.PUBREL_SENT:
        raise ValueError(
            f"outbound record {rec.client_id!r}/{rec.packet_id} has no delivery: "
            "only allowed in state PUBREL_SENT"
        )


class Store(Protocol):
    """A persistent (or in-memory) home for session state and retained messages."""

    #: Writes (and syncs) the medium refused since the store was opened: a full disk,
    #: an I/O error. Each also raised :class:`iotbroker.errors.StorageError`.
    write_failures: int
    #: The last such failure, in words with its UTC time; None while there was none.
    #: The metrics endpoint's ``/health`` reports it (docs/reliability.md).
    last_failure: str | None

    def apply(self, batch: ChangeBatch, sync: bool = True) -> None:
        """Apply all changes of ``batch`` in order, atomically (all or nothing).

        With ``durability: fsync`` the write is synced before this returns, unless
        ``sync`` is False: then it is durable only after the next :meth:`sync`
        (group commit: the caller holds the acknowledgements until then).
        Raises :class:`ValueError` for a change that cannot be stored (our bug) and
        :class:`iotbroker.errors.StorageError` when the medium fails (disk full).
        The batch is left as it was; the caller clears it.
        """
        ...

    def sync(self) -> None:
        """Make every write applied so far durable as ``durability`` promises (with
        ``fsync``: one sync of the log for all of them). Safe to call from another
        thread than the one applying batches; a no-op for stores without a log."""
        ...

    def load(self, queued_bodies: bool = True, queued_summary: bool = False) -> StoreSnapshot:
        """Read everything back, for restore at start-up. With ``queued_bodies=False``
        queued messages are not decoded: ``queued_index`` lists them instead, or with
        ``queued_summary=True`` only ``queued_summary`` counts them per session."""
        ...

    def load_queued(self, client_id: str) -> list[QueuedRecord]:
        """One session's queued messages, in ``seq`` order."""
        ...

    def get_queued(self, client_id: str, seq: int) -> QueuedRecord | None:
        """One queued message, or None."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters for monitoring: ``disk_bytes`` (approximate size on disk) and
        ``keys_<kind>`` per record kind (approximate for on-disk stores)."""
        ...

    def close(self) -> None:
        """Release the store (and its lock); idempotent. Later calls raise StorageError."""
        ...
