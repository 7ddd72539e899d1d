"""One client's session state: the spec's list, held as data.

MQTT 3.1.1 §3.1.2.4 and MQTT 5.0 §4.1 list what a server keeps for a session:
the subscriptions, QoS 1 and QoS 2 messages sent to the client and not yet completely
acknowledged (the in-flight window), QoS 1 and 2 messages waiting to be sent (the
queue), the packet identifiers of QoS 2 messages received and not yet released, the
Will Message and the Session Expiry Interval. :class:`Session` holds exactly that,
and every change to it that must outlive a crash goes into the shared
:class:`~iotbroker.storage.base.ChangeBatch` when the session is persistent.

Delivery rules implemented here:

* outbound packet identifiers are never reused while in flight [MQTT-2.3.1-2];
* the in-flight window is the client's Receive Maximum [MQTT-3.3.4-7], [MQTT-3.3.4-9];
* messages leave in the order they were accepted [MQTT-4.6.0-5]: a message waits in
  the queue while older ones wait;
* on resume, unacknowledged PUBLISH packets are re-sent with DUP=1 and PUBRELs
  re-sent, in their original order [MQTT-4.4.0-1], [MQTT-4.4.0-2];
* a PUBREC with a failure reason code (MQTT 5.0) ends that delivery [MQTT-4.3.3];
* in a cluster node (:attr:`SessionContext.derived_ids`), a persistent session sends
  a QoS 2 message that went through the cluster's stream with a packet id derived
  from its stream key, the same on every node, and its PUBREL waits until the cluster
  room has made the release durable (docs/cluster.md, "QoS 2 across a move";
  [MQTT-4.3.3-10], [MQTT-4.4.0-1]).

Authorisation (issue 12): every message reaches a session through :meth:`Session.deliver`
(live, retained on subscribe, shared group, will, and later bridged or clustered
messages), and leaves it for the network through :meth:`Session.pump` or a re-send on
resume (queued while offline, restored from storage, queued behind a full window).
Both ends ask the broker's one :class:`ReceiveGate`, so a message the ACL does not let
this client read is never queued and never sent, also when the ACL changed (SIGHUP)
while it waited.

Sending is data, not a call (issue 13): what the session decides to send goes into its
:attr:`Session.outbox` as ``(delivery, packet id, dup, now)`` entries (``delivery`` None
is a PUBREL; a new QoS 1/2 PUBLISH is its in-flight entry, which holds the same), and
the session puts itself once on the broker's ``ready`` list. The engine moves each
ready session's outbox into the protocol connection it is attached to, and tells the
session about a PUBLISH too large for the client (:meth:`Session.refused`). Core never
calls into protocol or server.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from iotbroker.codec.enums import ReasonCode
from iotbroker.core import placeholders
from iotbroker.core.subscriptions import SubscriptionEntry
from iotbroker.message import Delivery, Sending, derived_packet_id
from iotbroker.metrics import Metrics
from iotbroker.storage.base import (
    ChangeBatch,
    OutboundRecord,
    OutboundState,
    QueuedRecord,
)

_NO_QUEUE: Final[deque[Any]] = placeholders.NO_QUEUE
_NO_RESEND: Final[deque[Any]] = placeholders.NO_RESEND
#: Reason codes from 0x80 up report a failure (MQTT 5.0 §2.4).
_FAILURE = int(ReasonCode.UNSPECIFIED_ERROR)
_NO_IDS: Final[frozenset[int]] = placeholders.NO_IDS
_NO_SUBSCRIPTIONS: Final[dict[str, SubscriptionEntry]] = placeholders.NO_SUBSCRIPTIONS
#: Not ``OutboundState.PUBLISH_SENT`` in the methods (issue 19): on Python 3.11 reading
#: an Enum class's attribute in compiled code makes a method-wrapper object (the
#: metaclass has ``__getattr__``), one per QoS 1/2 forward.
_PUBLISH_SENT: Final = OutboundState.PUBLISH_SENT


class OneSubscription(Mapping[str, SubscriptionEntry]):
    """The subscriptions of a session that has exactly one (most devices), as a
    read-only mapping of its filter to its entry: made when asked for
    (:attr:`Session.subscriptions`). The session itself holds just the entry, where a
    one-entry dict costs 184 bytes (issue 19: an offline session must cost at most
    0.8 KiB); from the second subscription on it holds a dict."""

    __slots__ = ("entry",)

    def __init__(self, entry: SubscriptionEntry) -> None:
        self.entry = entry

    def __getitem__(self, topic_filter: str) -> SubscriptionEntry:
        entry = self.entry
        if entry.topic_filter == topic_filter:
            return entry
        raise KeyError(topic_filter)

    def get(self, topic_filter: str, default: Any = None) -> Any:
        entry = self.entry
        return entry if entry.topic_filter == topic_filter else default

    def __contains__(self, topic_filter: object) -> bool:
        return self.entry.topic_filter == topic_filter

    def __iter__(self) -> Iterator[str]:
        return iter((self.entry.topic_filter,))

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"{{{self.entry.topic_filter!r}: {self.entry!r}}}"
_NO_INFLIGHT: Final[dict[int, InflightEntry]] = placeholders.NO_INFLIGHT


#: The ACL's read decision: may ``session`` receive a message published to ``topic``?
ReceiveCheck = Callable[["Session", str], bool]


class ReceiveGate:
    """The one authorisation decision every delivery to a session passes.

    One instance is shared by all sessions of a broker; the server sets :attr:`check`
    from its ACL (``None`` when nothing is restricted: the fast path) and replaces it
    when the ACL is reloaded. Core never imports auth: the decision is a plain callable.
    """

    __slots__ = ("check",)

    def __init__(self, check: ReceiveCheck | None = None) -> None:
        self.check = check


#: For sessions built without a broker (tests): never give it a check.
OPEN_GATE = ReceiveGate()


#: One thing for the connection to send: a QoS 0 PUBLISH as the bare delivery (the
#: common case of a fan-out, without a tuple), a new QoS 1/2 PUBLISH as its in-flight
#: entry (a :class:`~iotbroker.message.Sending`), else ``(delivery, packet id, dup,
#: now)`` (a re-send) with ``delivery`` None for a PUBREL of that packet id.
OutboxEntry = Delivery | Sending | tuple[Delivery | None, int, bool, float]


class Pager(Protocol):
    """Reads a session's queued messages back from the store (storage/ implements it
    through the server, which commits pending changes first)."""

    def load_queued(self, client_id: str) -> list[QueuedRecord]: ...

    def get_queued(self, client_id: str, seq: int) -> QueuedRecord | None:
        """One queued message (its size is needed when the oldest offloaded message
        is dropped under ``max_queued_bytes``)."""
        ...


@dataclass(slots=True)
class SessionLimits:
    """Bounds on one session's queue (from configuration)."""

    max_queued_messages: int = 10_000
    max_queued_bytes: int = 0  # 0 = no byte limit
    drop_oldest: bool = True
    queue_qos0_offline: bool = False
    #: Messages dropped under these limits (a bridge's own limits count its outbox's).
    dropped: int = 0


class InflightEntry(Sending):
    """One outbound QoS 1/2 message between PUBLISH and its final ack.

    A :class:`~iotbroker.message.Sending` too: a new PUBLISH's entry, made with its
    ``packet_id`` and ``sent_at``, is what goes into the outbox (issue 19: one object
    per forward instead of the entry and a tuple). Only its ``delivery``,
    ``packet_id``, ``dup`` (False) and ``sent_at`` are read there; an entry restored
    from the store has packet id 0 and ``sent_at`` 0.0 (its re-send is a tuple)."""

    __slots__ = ("queued_record", "seq", "state")

    def __init__(self, delivery: Delivery, state: OutboundState, seq: int,
                 queued_record: bool = False, packet_id: int = 0,
                 sent_at: float = 0.0) -> None:
        # Written out, as Message's (one per QoS 1/2 forward): compiled, not interpreted.
        self.delivery = delivery
        self.packet_id = packet_id
        self.dup = False
        self.sent_at = sent_at
        self.state = state
        self.seq = seq
        #: Stored as the queued record ``seq`` (a stream outbox, :attr:`SessionContext.
        #: stream_outbox`), not as an outbound record: completing it deletes that record.
        self.queued_record = queued_record

    def __repr__(self) -> str:
        return (f"InflightEntry(state={self.state!r}, seq={self.seq}, "
                f"queued_record={self.queued_record}, delivery={self.delivery!r})")


def stream_packet_id(seq: int) -> int:
    """The packet identifier of the message ``seq`` of a stream outbox: derived from
    the sequence number, so it need not be stored to be re-sent after a restart with
    its original id [MQTT-4.4.0-1]."""
    return (seq - 1) % 0xFFFF + 1


class SessionContext:
    """What every session of one broker shares, held once: the change batch of the
    turn, the queue limits, the metrics, the ACL read gate, the list of sessions with
    something to send, the pager, and what a room switches on for all of them (the
    bridge's stream outbox; the cluster's derived QoS 2 ids and its lists of held and
    completed ones). One reference per session instead of one per field keeps an idle
    connection small (issue 19)."""

    __slots__ = ("batch", "derived_ids", "gate", "held_pubrels", "id_wait", "limits", "metrics",
                 "pager", "qos2_done", "ready", "stream_outbox", "unrecorded")

    def __init__(
        self,
        batch: ChangeBatch,
        limits: SessionLimits,
        metrics: Metrics,
        gate: ReceiveGate = OPEN_GATE,
        ready: list[Session] | None = None,
        pager: Pager | None = None,
        stream_outbox: bool = False,
    ) -> None:
        self.batch = batch
        self.limits = limits
        self.metrics = metrics
        self.gate = gate
        #: Sessions with something in their outbox (the engine sends them on).
        self.ready: list[Session] = [] if ready is None else ready
        #: Where offloaded messages are read back from; None keeps them in memory.
        self.pager = pager
        #: A stream outbox (a bridge's session, issue 15): a QoS 1 message is stored
        #: once, as a queued record, from when it is accepted until it is acknowledged;
        #: it goes in flight without a store write (its packet id is derived from its
        #: seq, :func:`stream_packet_id`) and its PUBACK deletes that one record. Two
        #: writes per message instead of four, one encoding instead of two.
        self.stream_outbox = stream_outbox
        #: Cluster (docs/cluster.md, "QoS 2 across a move"): a persistent session sends
        #: a QoS 2 message that has a stream key with the packet id derived from it
        #: (0x8000-0xFFFF, :func:`~iotbroker.message.derived_packet_id`) and allocates
        #: its other packet ids in 1-0x7FFF.
        self.derived_ids = False
        #: Cluster: PUBRELs of derived ids held until the cluster room has made the
        #: release durable ``(session, packet id, stream key)``; it then calls
        #: :meth:`Session.release_pubrel`. None: PUBREL goes at once.
        self.held_pubrels: list[tuple[Session, int, int]] | None = None
        #: Cluster: QoS 2 deliveries with a derived id completed (PUBCOMP) this turn,
        #: ``(session, stream key)``; None: nobody asks.
        self.qos2_done: list[tuple[Session, int]] | None = None
        #: Cluster: per client id, derived ids completed (PUBCOMP) whose completion is
        #: not in the session's record yet (packet id -> stream key): not used again
        #: until it is, or a node the session moves to would send the old message's
        #: PUBREL on it and release the client's id of the new one [MQTT-4.3.3-12].
        #: None: ids are free at PUBCOMP.
        self.unrecorded: dict[str, dict[int, int]] | None = None
        #: Cluster: told when a session's message waits for such an id (the room
        #: writes that record soon).
        self.id_wait: Callable[[Session], None] | None = None


class Session:
    """State of one client id, connected or not."""

    __slots__ = (
        "_next_packet_id",
        "_next_seq",
        "_off_count",
        "_off_head",
        "_queued_bytes",
        "_resend",
        "_subs",
        "attached_to",
        "client_id",
        "context",
        "disconnected_at",
        "expiry_interval",
        "inbound_qos2",
        "inflight",
        "outbox",
        "protocol_version",
        "queue",
        "receive_maximum",
        "username",
        "writable",
    )

    def __init__(
        self,
        client_id: str,
        protocol_version: int,
        expiry_interval: int,
        context: SessionContext,
    ) -> None:
        self.client_id = client_id
        self.context = context
        self.protocol_version = protocol_version
        self.expiry_interval = expiry_interval
        self.username: str | None = None
        #: Its subscriptions (see :attr:`subscriptions`): a shared empty dict, the one
        #: entry, or a dict by Topic Filter from the second subscription on.
        self._subs: dict[str, SubscriptionEntry] | SubscriptionEntry = _NO_SUBSCRIPTIONS
        #: Created on first use.
        self.inflight = _NO_INFLIGHT
        # Created on first use: an idle connection's session must stay small (issue 8:
        # an empty deque is 760 bytes, an empty set 216).
        self.queue: deque[tuple[int, Delivery]] = _NO_QUEUE
        self.inbound_qos2: set[int] | frozenset[int] = _NO_IDS
        #: The connection it is attached to (opaque to core: the engine's client).
        self.attached_to: object | None = None
        #: False while that connection's write buffer is above its high-water mark.
        self.writable = True
        #: What to send, in order, until the engine moves it to the connection.
        self.outbox: list[OutboxEntry] | None = None
        self.receive_maximum = 65535
        self.disconnected_at: float | None = None
        self._next_packet_id = 1
        self._next_seq = 1
        self._queued_bytes = 0
        #: In-flight packet ids of a resumed session still to be re-sent, in order.
        self._resend: deque[int] = _NO_RESEND
        #: Queued messages that live only in the store while the session is offline
        #: (issue 19: a cursor and a count, not an index): their seqs are exactly
        #: ``_off_head .. _off_head + _off_count - 1``, oldest first.
        self._off_head = 0
        self._off_count = 0

    # ------------------------------------------------------------------ state
    @property
    def persistent(self) -> bool:
        """True when the session outlives its network connection (expiry > 0)."""
        return self.expiry_interval > 0

    @property
    def has_backlog(self) -> bool:
        """True when queued messages or resends wait for :meth:`pump` (the shared
        placeholders by pointer first: no call for a session that never queued)."""
        return ((self.queue is not _NO_QUEUE and bool(self.queue))
                or (self._resend is not _NO_RESEND and bool(self._resend)))

    @property
    def next_packet_id(self) -> int:
        return self._next_packet_id

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def restore_counters(self, next_packet_id: int, next_seq: int) -> None:
        """Set the packet-id and sequence counters from a stored session."""
        self._next_packet_id = next_packet_id if 0 < next_packet_id <= 0xFFFF else 1
        self._next_seq = max(1, next_seq)

    def restore_inflight(self, packet_id: int, entry: InflightEntry) -> None:
        if self.inflight is _NO_INFLIGHT:
            self.inflight = {}
        self.inflight[packet_id] = entry
        self._next_seq = max(self._next_seq, entry.seq + 1)

    def restore_queued(self, seq: int, delivery: Delivery) -> None:
        if self.queue is _NO_QUEUE:
            self.queue = deque()
        self.queue.append((seq, delivery))
        self._queued_bytes += len(delivery.message.payload)
        self._next_seq = max(self._next_seq, seq + 1)

    # ---------------------------------------------------------- subscriptions
    @property
    def subscriptions(self) -> Mapping[str, SubscriptionEntry]:
        """Its subscriptions by Topic Filter as subscribed: the only per-client index
        (the trie indexes by filter). Read-only: change them through
        :meth:`remember_subscription` and :meth:`forget_subscription`."""
        subs = self._subs
        if isinstance(subs, SubscriptionEntry):
            return OneSubscription(subs)
        return subs

    def remember_subscription(self, entry: SubscriptionEntry) -> SubscriptionEntry | None:
        """Add or replace the subscription on ``entry.topic_filter`` (as subscribed)
        [MQTT-3.8.4-3]; returns the one it replaced. ``subscriptions`` is the only
        per-client index of subscriptions; the trie indexes them by filter."""
        replaced = self._add_subscription(entry)
        if self.persistent:
            self.context.batch.put_subscription(entry)  # stored as it is (share_group is not)
        return replaced

    def restore_subscription(self, entry: SubscriptionEntry) -> None:
        """A stored subscription, read back at start-up (not written again)."""
        self._add_subscription(entry)

    def _add_subscription(self, entry: SubscriptionEntry) -> SubscriptionEntry | None:
        """Put ``entry`` in :attr:`subscriptions`; returns the one it replaced."""
        subs = self._subs
        topic_filter = entry.topic_filter
        if isinstance(subs, SubscriptionEntry):
            if subs.topic_filter == topic_filter:
                self._subs = entry
                return subs
            self._subs = {subs.topic_filter: subs, topic_filter: entry}
            return None
        if subs is _NO_SUBSCRIPTIONS:
            self._subs = entry
            return None
        old = subs.get(topic_filter)
        subs[topic_filter] = entry
        return old

    def forget_subscription(self, topic_filter: str) -> SubscriptionEntry | None:
        """Remove the subscription on ``topic_filter``; returns it (None if there
        was none, MQTT 5.0 §3.11.3 0x11)."""
        subs = self._subs
        if isinstance(subs, SubscriptionEntry):
            if subs.topic_filter != topic_filter:
                return None
            entry: SubscriptionEntry | None = subs
            self._subs = _NO_SUBSCRIPTIONS
        else:
            entry = subs.pop(topic_filter, None)
            if entry is None:
                return None
        if self.persistent:
            self.context.batch.delete_subscription(self.client_id, topic_filter)
        return entry

    # --------------------------------------------------------------- delivery
    def may_receive(self, topic: str) -> bool:
        """The ACL read decision for this client (counted when it refuses)."""
        check = self.context.gate.check
        if check is None or check(self, topic):
            return True
        self.context.metrics.acl_denials += 1
        return False

    def deliver(self, delivery: Delivery, now: float) -> bool:
        """The one way into a session: send ``delivery`` now if the window allows,
        else queue it (bounded). False when the ACL does not let this client read the
        message's topic: then nothing is sent or queued."""
        context = self.context
        check = context.gate.check
        if check is not None and not check(self, delivery.message.topic):
            context.metrics.acl_denials += 1
            return False
        if delivery.qos == 0:
            if self.attached_to is not None:
                if self.writable:
                    out = self.outbox
                    if out is None:
                        out = self.outbox = []
                        context.ready.append(self)
                    out.append(delivery)
                    metrics = context.metrics
                    metrics.count_sent(0)
                    metrics.publish_bytes_sent += len(delivery.message.payload)
                else:
                    context.metrics.messages_dropped_slow_consumer += 1
            elif context.limits.queue_qos0_offline and self.persistent:
                self._enqueue(delivery)
            else:
                context.metrics.messages_dropped_qos0_offline += 1
            return True
        if (
            self.attached_to is not None
            and not self.has_backlog
            and len(self.inflight) < self.receive_maximum
            and self.writable
        ):
            if context.stream_outbox and delivery.qos == 1 and self.persistent:
                seq = self._next_seq
                if stream_packet_id(seq) in self.inflight:
                    self._enqueue(delivery)  # its id is still taken: it waits its turn
                    return True
                self._next_seq = seq + 1
                context.batch.put_queued(QueuedRecord(self.client_id, seq, delivery))
                self._send_stream(delivery, seq, now)
            elif delivery.qos == 2 and context.derived_ids and self.persistent and (
                    delivery.message.stream_key):
                pid = derived_packet_id(delivery.message.stream_key)
                if self._derived_taken(pid):
                    self._enqueue(delivery)  # its id is still taken: it waits its turn
                else:
                    self._send_new(delivery, now, pid)
            else:
                self._send_new(delivery, now)
        else:
            self._enqueue(delivery)
        return True

    def _derived_taken(self, pid: int) -> bool:
        """Is the derived packet id ``pid`` not free for a new message: in flight, or
        completed but not recorded yet (:attr:`SessionContext.unrecorded`)?"""
        if pid in self.inflight:
            return True
        unrecorded = self.context.unrecorded
        if not unrecorded:
            return False
        pids = unrecorded.get(self.client_id)
        if pids is None or pid not in pids:
            return False
        wait = self.context.id_wait
        if wait is not None:
            wait(self)
        return True

    def _allocate_packet_id(self) -> int:
        """Next free packet identifier, never one still in flight [MQTT-2.3.1-2]
        (1-0x7FFF in a session with derived ids: :attr:`SessionContext.derived_ids`)."""
        top = 0x7FFF if self.context.derived_ids and self.persistent else 0xFFFF
        pid = self._next_packet_id
        if pid > top:
            pid = 1
        inflight = self.inflight
        while pid in inflight:
            pid = pid + 1 if pid < top else 1
        self._next_packet_id = pid + 1 if pid < top else 1
        return pid

    def _emit(self, delivery: Delivery | None, packet_id: int, dup: bool, now: float) -> None:
        """Put one PUBLISH (or, ``delivery`` None, a PUBREL) in the outbox; a new
        PUBLISH counts as sent (:meth:`refused` takes it back)."""
        out = self.outbox
        if out is None:
            out = self.outbox = []
            self.context.ready.append(self)
        out.append((delivery, packet_id, dup, now))
        if delivery is not None and not dup:
            metrics = self.context.metrics
            metrics.count_sent(delivery.qos)
            metrics.publish_bytes_sent += len(delivery.message.payload)

    def take_outbox(self) -> list[OutboxEntry]:
        """What to send now, in order (the engine hands it to the connection)."""
        out = self.outbox
        self.outbox = None
        return out if out is not None else []

    def refused(self, packet_id: int, delivery: Delivery, dup: bool, now: float) -> None:
        """The connection did not send a PUBLISH: larger than the client's Maximum
        Packet Size. It is discarded as if completed [MQTT-3.1.2-25]; the window
        moves on. A new one was counted as sent when it entered the outbox (a resend,
        ``dup``, was not): that is taken back."""
        metrics = self.context.metrics
        if not dup:
            metrics.count_sent(delivery.qos, -1)
            metrics.publish_bytes_sent -= len(delivery.message.payload)
        if not packet_id:
            return  # QoS 0: nothing to complete
        metrics.messages_dropped_too_large += 1
        entry = self.inflight.pop(packet_id, None)
        if entry is not None:
            self._forget_stored(packet_id, entry)
            self.pump(now)

    def _send_new(self, delivery: Delivery, now: float, pid: int = 0) -> None:
        inflight = self.inflight
        # The packet id as a Python int once: the test and the store take the same
        # object (compiled, each use of the native int made one; issue 19). By
        # ``cast(object, ...)``: a plain ``key: object = pid`` is narrowed to int by
        # mypy, and mypyc then unboxes it and boxes it again at each use.
        if not pid:
            pid = self._next_packet_id
            key = cast(object, pid)
            if pid >= 0x7FFF or key in inflight:
                pid = self._allocate_packet_id()
                key = cast(object, pid)
            else:  # _allocate_packet_id's common case, inlined (the QoS 1 path, issue 19)
                self._next_packet_id = pid + 1
        else:
            key = cast(object, pid)
        seq = self._next_seq
        self._next_seq = seq + 1
        if inflight is _NO_INFLIGHT:
            inflight = self.inflight = {}
        entry = InflightEntry(delivery, _PUBLISH_SENT, seq, False, pid, now)
        cast("dict[object, InflightEntry]", inflight)[key] = entry
        if self.expiry_interval > 0:  # persistent (inlined: the QoS 1 path)
            self.context.batch.put_outbound(
                OutboundRecord(self.client_id, pid, _PUBLISH_SENT, delivery, seq)
            )
        out = self.outbox
        if out is None:
            # Made holding the entry (one allocation of its item array, no append's
            # resize: the usual turn's outbox holds one)
            self.outbox = [entry]  # the entry is the outbox's (delivery, pid, False, now)
            self.context.ready.append(self)
        else:
            out.append(entry)
        metrics = self.context.metrics
        metrics.count_sent(delivery.qos)
        metrics.publish_bytes_sent += len(delivery.message.payload)

    def _send_stream(self, delivery: Delivery, seq: int, now: float) -> None:
        """In flight without a store write: the queued record ``seq`` is its stored
        form (stream outbox)."""
        pid = stream_packet_id(seq)
        inflight = self.inflight
        if inflight is _NO_INFLIGHT:
            inflight = self.inflight = {}
        entry = InflightEntry(delivery, _PUBLISH_SENT, seq, True, pid, now)
        inflight[pid] = entry
        out = self.outbox
        if out is None:
            out = self.outbox = []
            self.context.ready.append(self)
        out.append(entry)
        metrics = self.context.metrics
        metrics.count_sent(1)
        metrics.publish_bytes_sent += len(delivery.message.payload)

    def _forget_stored(self, packet_id: int, entry: InflightEntry) -> None:
        """The delivery ``packet_id`` is complete: delete what stores it."""
        if not self.persistent:
            return
        if entry.queued_record:
            self.context.batch.delete_queued(self.client_id, entry.seq)
        else:
            self.context.batch.delete_outbound(self.client_id, packet_id)

    def adopt_stored_in_flight(self, window: int) -> int:
        """After a restart (stream outbox): the first ``window`` stored QoS 1 messages
        may have been sent before the broker stopped (their packet ids are derived from
        their seqs); they go back in flight, to be re-sent with DUP=1 and the same ids
        on resume [MQTT-4.4.0-1]. Returns how many."""
        if not self.context.stream_outbox or any(
                not e.queued_record and e.state is _PUBLISH_SENT
                for e in self.inflight.values()):
            return 0  # (a store written by an older version: its in-flight list holds)
        pager = self.context.pager
        adopted = 0
        while adopted < window:
            # The oldest waiting message: offloaded (read by its seq, the rest stays
            # on disk) or in memory.
            if self._off_count and pager is not None:
                seq = self._off_head
                rec = pager.get_queued(self.client_id, seq)
                if rec is None:
                    break
                delivery = rec.delivery
            elif self.queue:
                seq, delivery = self.queue[0]
            else:
                break
            pid = stream_packet_id(seq)
            if delivery.qos != 1 or pid in self.inflight:
                break
            if self._off_count and pager is not None:
                self._off_head = seq + 1
                self._off_count -= 1
                if not self._off_count:
                    self._off_head = 0
            else:
                self.queue.popleft()
            self._queued_bytes = max(0, self._queued_bytes - len(delivery.message.payload))
            if self.inflight is _NO_INFLIGHT:
                self.inflight = {}
            self.inflight[pid] = InflightEntry(delivery, _PUBLISH_SENT, seq, True)
            adopted += 1
        return adopted

    @property
    def queued_bytes(self) -> int:
        """Payload bytes of the messages waiting (``limits.max_queued_bytes``; a bridge
        reports its outbox's)."""
        return self._queued_bytes


    @property
    def queued_count(self) -> int:
        """Messages waiting (in memory or offloaded to the store)."""
        return len(self.queue) + self._off_count

    def _enqueue(self, delivery: Delivery) -> None:
        limits = self.context.limits
        size = len(delivery.message.payload)
        while self.queued_count >= limits.max_queued_messages or (
            limits.max_queued_bytes and self._queued_bytes + size > limits.max_queued_bytes
        ):
            limits.dropped += 1
            if not limits.drop_oldest or not self.queued_count:
                self.context.metrics.messages_dropped_queue_full += 1
                return
            if self._off_count:
                old_seq = self._drop_offloaded_head()
            else:
                old_seq, old = self.queue.popleft()
                self._queued_bytes -= len(old.message.payload)
            self.context.metrics.messages_dropped_queue_full += 1
            if self.persistent:
                self.context.batch.delete_queued(self.client_id, old_seq)
        if self.attached_to is None and self.context.pager is not None and self.persistent:
            # Offline: the message goes to the store only, right after the others.
            count = self._off_count
            if count:
                seq = self._off_head + count
                if seq >= self._next_seq:
                    self._next_seq = seq + 1
            else:
                seq = self._off_head = self._next_seq
                self._next_seq = seq + 1
            self._off_count = count + 1
            self._queued_bytes += size
            self.context.batch.put_queued(QueuedRecord(self.client_id, seq, delivery))
            return
        seq = self._next_seq
        self._next_seq = seq + 1
        if self.queue is _NO_QUEUE:
            self.queue = deque()
        self.queue.append((seq, delivery))
        self._queued_bytes += size
        if self.persistent:
            self.context.batch.put_queued(QueuedRecord(self.client_id, seq, delivery))

    def _drop_offloaded_head(self) -> int:
        """Forget the oldest offloaded message (drop-oldest); returns its seq. Its size
        is read from the store only when a byte limit needs it."""
        seq = self._off_head
        self._off_head = seq + 1
        self._off_count -= 1
        if self.context.limits.max_queued_bytes and self.context.pager is not None:
            rec = self.context.pager.get_queued(self.client_id, seq)
            if rec is not None:
                self._queued_bytes -= len(rec.delivery.message.payload)
        if not self._off_count:
            self._off_head = 0
            if not self.queue:
                self._queued_bytes = 0
        return seq

    def pump(self, now: float) -> None:
        """Move queued messages into the in-flight window while it has room."""
        if self.attached_to is None:
            return
        if self._resend and not self._resend_waiting(now):
            return
        queue = self.queue
        stream = self.context.stream_outbox and self.persistent
        while queue and self.writable:
            seq, delivery = queue[0]
            if delivery.qos > 0 and len(self.inflight) >= self.receive_maximum:
                return
            keep = stream and delivery.qos == 1
            if keep and stream_packet_id(seq) in self.inflight:
                return  # its derived id is still in flight: wait for that one
            derived = 0
            if delivery.qos == 2 and delivery.message.stream_key and (
                    self.context.derived_ids and self.persistent):
                derived = derived_packet_id(delivery.message.stream_key)
                if self._derived_taken(derived):
                    return  # its derived id is still taken: wait for that one
            queue.popleft()
            self._queued_bytes -= len(delivery.message.payload)
            if self.persistent and not keep:
                self.context.batch.delete_queued(self.client_id, seq)
            if delivery.message.expired(now):
                self.context.metrics.messages_expired += 1
                if keep:
                    self.context.batch.delete_queued(self.client_id, seq)
                continue
            if not self.may_receive(delivery.message.topic):
                if keep:
                    self.context.batch.delete_queued(self.client_id, seq)
                continue  # the ACL changed while it waited (SIGHUP): dropped, counted
            if delivery.qos == 0:
                self._emit(delivery, 0, False, now)
            elif keep:
                self._send_stream(delivery, seq, now)  # stored already: no write
            else:
                self._send_new(delivery, now, derived)

    # ------------------------------------------------------------ acks in
    def on_puback(self, packet_id: int, now: float) -> bool:
        """PUBACK completes a QoS 1 delivery; False for an unknown packet id."""
        # The packet id as a Python int once for the look-up and the deletion (issue 19).
        inflight = cast("dict[object, InflightEntry]", self.inflight)
        key = cast(object, packet_id)  # (not ``key: object = ...``: narrowed to int)
        entry = inflight.get(key)
        if entry is None or entry.delivery.qos != 1:
            return False
        del inflight[key]
        if self.expiry_interval > 0:  # persistent (inlined: the QoS 1 path, issue 19)
            if entry.queued_record:  # in order: consecutive ones become one range
                self.context.batch.delete_queued_in_order(self.client_id, entry.seq)
            else:
                self.context.batch.delete_outbound(self.client_id, packet_id)
        if self.has_backlog:  # pump() has nothing to do otherwise
            self.pump(now)
        return True

    def on_pubrec(self, packet_id: int, reason_code: int, now: float) -> bool:
        """PUBREC: answer PUBREL and wait for PUBCOMP [MQTT-4.3.3-3]; a failure
        reason code (MQTT 5.0) ends the delivery instead."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.delivery.qos != 2:
            return False
        if reason_code >= _FAILURE:
            del self.inflight[packet_id]
            if self.persistent:
                self.context.batch.delete_outbound(self.client_id, packet_id)
            self.pump(now)
            return True
        if entry.state is not OutboundState.PUBREL_SENT:
            entry.state = OutboundState.PUBREL_SENT
            if self.persistent:
                self.context.batch.put_outbound(
                    OutboundRecord(
                        self.client_id, packet_id, OutboundState.PUBREL_SENT, entry.delivery,
                        entry.seq,
                    )
                )
        held = self.context.held_pubrels
        key = entry.delivery.message.stream_key
        if held is not None and key and packet_id >= 0x8000 and self.persistent:
            # Cluster: the release is made durable first (docs/cluster.md, "QoS 2
            # across a move"), then :meth:`release_pubrel` (also for a PUBREC again).
            held.append((self, packet_id, key))
            return True
        if self.attached_to is not None:
            self._emit(None, packet_id, False, now)
        return True

    def release_pubrel(self, packet_id: int, now: float) -> None:
        """The cluster made the release of ``packet_id`` durable: its PUBREL goes now
        (if the delivery is still waiting for it) [MQTT-4.3.3-3]."""
        entry = self.inflight.get(packet_id)
        if (entry is not None and entry.state is OutboundState.PUBREL_SENT
                and self.attached_to is not None):
            self._emit(None, packet_id, False, now)

    def on_pubcomp(self, packet_id: int, now: float) -> bool:
        """PUBCOMP completes a QoS 2 delivery; False for an unknown packet id."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.state is not OutboundState.PUBREL_SENT:
            return False
        del self.inflight[packet_id]
        if self.persistent:
            self.context.batch.delete_outbound(self.client_id, packet_id)
            done = self.context.qos2_done
            key = entry.delivery.message.stream_key
            if done is not None and key and packet_id >= 0x8000:
                done.append((self, key))
                unrecorded = self.context.unrecorded
                if unrecorded is not None:
                    pids = unrecorded.get(self.client_id)
                    if pids is None:
                        pids = unrecorded[self.client_id] = {}
                    pids[packet_id] = key
        self.pump(now)
        return True

    def restore_derived(self, delivery: Delivery, state: OutboundState, now: float,
                        replace: bool = False) -> bool:
        """A QoS 2 message a session that moved here may have in flight at the client
        (replayed from the cluster's stream): in flight again under its derived packet
        id, stored, re-sent on attach as it was — PUBLISH with DUP=1, or PUBREL
        [MQTT-4.4.0-1]. False when its id is taken (it is then delivered as usual),
        unless ``replace``: the message that holds it is forgotten."""
        key = delivery.message.stream_key
        if not key or not self.persistent:
            return False
        pid = derived_packet_id(key)
        if pid in self.inflight and not replace:
            return False
        seq = self._next_seq
        self._next_seq = seq + 1
        if self.inflight is _NO_INFLIGHT:
            self.inflight = {}
        self.inflight[pid] = InflightEntry(delivery, state, seq)
        self.context.batch.put_outbound(
            OutboundRecord(self.client_id, pid, state, delivery, seq))
        return True

    # ------------------------------------------------------------ QoS 2 in
    def hold_inbound_qos2(self, packet_id: int) -> bool:
        """Store a received QoS 2 packet id; False if it was already held (a duplicate
        that must not be delivered again) [MQTT-4.3.3-2] (method B of §4.3.3)."""
        ids = self.inbound_qos2
        if packet_id in ids:
            return False
        if not isinstance(ids, set):  # the shared empty placeholder
            ids = self.inbound_qos2 = set()
        ids.add(packet_id)
        if self.persistent:
            self.context.batch.put_inbound_qos2(self.client_id, packet_id)
        return True

    def release_inbound_qos2(self, packet_id: int) -> bool:
        """PUBREL received: forget the id; False if it was not held."""
        ids = self.inbound_qos2
        if packet_id not in ids or not isinstance(ids, set):  # not held
            return False
        ids.discard(packet_id)
        if self.persistent:
            self.context.batch.delete_inbound_qos2(self.client_id, packet_id)
        return True

    def hand_over(self, new_home: Callable[[Delivery], bool]) -> int:
        """Give unacknowledged QoS 1 PUBLISHes and queued messages to ``new_home``;
        those it takes leave this session. Returns how many were taken. Messages
        whose PUBREC already arrived (PUBREL sent) stay: they were received."""
        moved = 0
        for pid, entry in list(self.inflight.items()):
            if (
                entry.state is _PUBLISH_SENT
                and entry.delivery.qos == 1
                and new_home(entry.delivery)
            ):
                del self.inflight[pid]
                self._forget_stored(pid, entry)
                moved += 1
        kept: deque[tuple[int, Delivery]] = deque()
        for seq, delivery in self.queue:
            if new_home(delivery):
                self._queued_bytes -= len(delivery.message.payload)
                if self.persistent:
                    self.context.batch.delete_queued(self.client_id, seq)
                moved += 1
            else:
                kept.append((seq, delivery))
        self.queue = kept
        return moved

    # ---------------------------------------------------------------- paging
    def offload(self) -> None:
        """Drop the bodies of queued messages from memory (they are in the store): an
        offline session costs a cursor and a count, not its queue (issue 19).

        The offloaded seqs must be consecutive; messages queued behind a full window
        may have gaps between them (a message sent in the meantime took the next seq),
        so the ones after the first gap are stored again under consecutive seqs, in
        the same order, in this turn's batch."""
        queue = self.queue
        if self.context.pager is None or not self.persistent or not queue:
            return
        batch = self.context.batch
        client_id = self.client_id
        if self._off_count:  # not expected: an offloaded session queues in the store
            head = self._off_head
            expected = head + self._off_count
        else:
            head = expected = queue[0][0]
        for seq, delivery in queue:
            if seq != expected:
                # put before delete: ``expected`` < ``seq``, and no later entry uses it
                batch.put_queued(QueuedRecord(client_id, expected, delivery))
                batch.delete_queued(client_id, seq)
            expected += 1
        self._off_head = head
        self._off_count = expected - head
        self._next_seq = max(self._next_seq, expected)
        self.queue = _NO_QUEUE

    def restore_offloaded(self, first: int, count: int, size: int, consecutive: bool) -> None:
        """Queued messages known by their first seq, count and total payload size only
        (restore at start-up). A stored queue with gaps between its seqs (written by an
        older version, or queued behind a full window when the broker stopped) is read
        once and stored again under consecutive seqs (:meth:`offload`)."""
        if not count:
            return
        if self._next_seq <= first + count - 1:
            self._next_seq = first + count
        if consecutive or self.context.pager is None:
            self._off_head = first
            self._off_count = count
            self._queued_bytes += size
            return
        for rec in self.context.pager.load_queued(self.client_id):
            self.restore_queued(rec.seq, rec.delivery)
        self.offload()

    def page_in(self) -> None:
        """Read offloaded messages back (the session is coming online)."""
        count = self._off_count
        if not count or self.context.pager is None:
            return
        head = self._off_head
        end = head + count
        records = self.context.pager.load_queued(self.client_id)
        queue: deque[tuple[int, Delivery]] = deque()
        for rec in records:
            if head <= rec.seq < end:
                queue.append((rec.seq, rec.delivery))
        queue.extend(self.queue)  # none expected: a session offline has no in-memory queue
        self.queue = queue
        self._off_head = self._off_count = 0
        self._queued_bytes = sum(len(d.message.payload) for _, d in queue)

    # ----------------------------------------------------- connect/disconnect
    def attach(self, connection: object, receive_maximum: int, now: float) -> None:
        """Connect the session to a network connection and resend what is in flight,
        in order, PUBLISH with DUP=1 and PUBREL as they were [MQTT-4.4.0-1]. At most
        Receive Maximum of them are outstanding at once [MQTT-3.3.4-9]: the rest wait
        for acknowledgements, ahead of anything queued."""
        self.attached_to = connection
        self.writable = True
        self.outbox = None
        if self.context.derived_ids and self.persistent:
            receive_maximum = min(receive_maximum, 0x7FFF)  # allocated ids: 1-0x7FFF
        self.receive_maximum = receive_maximum
        self.disconnected_at = None
        self.page_in()
        if self.inflight:
            self._resend = deque(
                pid for pid, _ in sorted(self.inflight.items(), key=lambda item: item[1].seq)
            )
        self.pump(now)

    def _resend_waiting(self, now: float) -> bool:
        """Re-send in-flight messages of a resumed session while the window allows;
        True when all of them have been re-sent."""
        resend = self._resend
        inflight = self.inflight
        while resend:
            if len(inflight) - len(resend) >= self.receive_maximum or not self.writable:
                return False
            pid = resend.popleft()
            entry = inflight.get(pid)
            if entry is None:
                continue  # acknowledged or handed over meanwhile
            if entry.state is OutboundState.PUBREL_SENT:
                held = self.context.held_pubrels
                key = entry.delivery.message.stream_key
                if held is not None and key and pid >= 0x8000 and self.persistent:
                    held.append((self, pid, key))  # once its release is durable
                else:
                    self._emit(None, pid, False, now)
            elif self.may_receive(entry.delivery.message.topic):
                self._emit(entry.delivery, pid, True, now)
            else:
                # Not readable any more (ACL reloaded while it was in flight): ended.
                del inflight[pid]
                self._forget_stored(pid, entry)
        return True

    def detach(self, now: float) -> None:
        self.attached_to = None
        self.outbox = None  # what was in flight is re-sent on resume [MQTT-4.4.0-1]
        self._resend = _NO_RESEND
        if not self.inflight:
            self.inflight = _NO_INFLIGHT
        self.offload()
        self.disconnected_at = now

    def clear_state(self) -> None:
        """Forget everything (Clean Start / Clean Session)."""
        self._subs = _NO_SUBSCRIPTIONS
        self.inflight = _NO_INFLIGHT
        self.queue = _NO_QUEUE
        self._off_head = self._off_count = 0
        self.inbound_qos2 = _NO_IDS
        self._queued_bytes = 0
        self._next_packet_id = 1
