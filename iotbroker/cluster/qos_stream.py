"""QoS 1/2 messages through a replicated JetStream stream (docs/cluster.md, "QoS 1/2").

MQTT 5.0 §4.3.2 / §4.3.3: the receiver of a QoS 1/2 PUBLISH takes ownership of the
message when it sends PUBACK / PUBREC. In a cluster, "ownership" must survive the loss
of the node that accepted the message, so:

* Every QoS 1/2 message a local client (or a will) publishes is written to the stream
  ``<prefix>_qos`` (subjects ``<prefix>.q.>``, ``replicas`` copies, file storage), the
  messages of one turn on one topic as one stream message (:mod:`iotbroker.cluster.wire`).
* The publisher's PUBACK / PUBREC is held by the engine (:attr:`Engine.held_acks
  <iotbroker.engine.engine.Engine.held_acks>`) and released only when the stream
  acknowledged the write (it is then on a quorum of nats-servers). The engine never
  waits: the release is an effect applied from here, then the server's flush writes it.
* Every node reads the stream with one durable consumer of its own
  (``<prefix>_qos_<node>``), routes each message to its sessions
  (``Engine.route_remote``: ``Session.deliver`` for every delivery; a persistent
  session's queued copy goes into the store), commits the store, and only then
  acknowledges the stream message. A node that was down resumes at its ack floor: what
  was written meanwhile reaches its sessions when it is back.

QoS 2 exactly once (docs/cluster.md, "QoS 2 exactly once"; MQTT 5.0 [MQTT-4.3.3-8],
[MQTT-4.3.3-10], MQTT 3.1.1 [MQTT-4.3.3-2]):

* A QoS 2 message goes to other nodes **through the stream only** (no live copy on
  core NATS), one stream message per MQTT message (:meth:`QosStream.take_exactly_once`).
  A receiving node routes it, and commits the deliveries together with the stream
  sequence (a ``StreamPosition`` record in the same ChangeBatch) before it acks the
  stream message; after a crash it skips what is at or below the stored sequence, so
  a persistent subscriber gets it once even when the node died between its commit
  and its ack.
* On the accepting node the inbound packet id is *pending* (stored with the id of the
  stream write, its ``Nats-Msg-Id``: node, start-up nonce and a counter, unique per
  use of a packet id) until the stream acknowledged the write; only then it is held
  and PUBREC sent. The same packet id again meanwhile is not routed (local
  subscribers had it) and gets its PUBREC with that ack; after a crash and a restart
  on the node's RocksDB, the resent PUBLISH is written to the stream again under the
  stored id: JetStream drops it if the first write had made it (its duplicate
  window, ``cluster.qos_stream.duplicate_window``), else it reaches the other nodes now.
  A persistent publisher's PUBREC also waits until its session's record notes the
  write's stream sequence (:attr:`QosStream.mark`, sessions.py): a node the session
  moves to then writes a re-send of that id no more, however late it comes.

When the node has lost NATS for :data:`GRACE` seconds (longer than a failover to
another nats-server, ~1 s) it is *degraded*: the acks it holds, and those of every
QoS 1/2 message accepted until NATS is back, are released at once (counted:
``qos_acked_unreplicated``) — the node keeps serving its own clients — while the writes
go on being retried for ``cluster.qos_stream.patience`` seconds; a write that never
made it is counted (``qos_unreplicated``) and reached local subscribers only
(docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import NotFoundError

from iotbroker.cluster import wire
from iotbroker.cluster.buckets import SHORT_ATTEMPTS, attempt_timeout, backoff
from iotbroker.cluster.subjects import subject_to_topic, topic_to_subject
from iotbroker.config import QosStreamConfig
from iotbroker.errors import StorageError
from iotbroker.message import Message, write_key

if TYPE_CHECKING:
    from iotbroker.engine.engine import Engine, HeldAck

log = logging.getLogger("iotbroker.cluster")

#: Seconds a write may wait for the stream's ack (retrying) before its acks go anyway
#: (the default of ``cluster.qos_stream.patience``).
PATIENCE = QosStreamConfig().patience
#: One attempt's wait for the stream's ack.
ATTEMPT_TIMEOUT = 1.0
#: Seconds without NATS after which held acks are released unreplicated.
GRACE = 2.0
#: NATS keeps a PUB's subject within its control line (4 KiB by default).
MAX_SUBJECT = 4000
#: Stream messages a node's consumer has in flight (delivered, not yet acked) at most.
MAX_ACK_PENDING = 10_000
#: Seconds before the stream sends an unacknowledged message to a consumer again.
ACK_WAIT = 5.0
#: Seconds a gap in the stream's sequence is waited for (then skipped).
GAP_WAIT = 3 * ACK_WAIT
#: Writes waiting for the stream at most (then acks go at once, counted).
MAX_INFLIGHT = 100_000


def stream_key(msg: Msg) -> int:
    """The key of a stream message's write (:func:`~iotbroker.message.write_key` of
    its ``Nats-Msg-Id``), 0 without one."""
    headers = msg.headers
    msg_id = headers.get("Nats-Msg-Id") if headers else None
    return write_key(msg_id) if msg_id else 0


def answered_by_leader(info: StreamInfo) -> bool:
    """Did the stream's (or a KV bucket's stream's) leader give this ``stream info``?

    nats-server lets a replica answer with its *own* state in two cases: the group has
    no leader (elected for a while), and a replica that is the group's preferred peer
    while its Raft node is young (a nats-server that has just restarted). That state
    may lag behind (the replica is still catching up), so such an answer says nothing
    about the stream's end. The leader's answer names it and lists the *other* peers
    as replicas; a replica's names the leader among its replicas, or no leader at all
    (issue 14, i14-restart). Without a cluster (one nats-server) there is nothing to
    lag: always true."""
    cluster = info.cluster
    if cluster is None:
        return True
    leader = cluster.leader
    if not leader:
        return not cluster.replicas  # (a lone server names no leader nor replicas)
    return all(peer.name != leader for peer in cluster.replicas or ())


def _name_token(name: str) -> str:
    """A node name as a JetStream consumer name token."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


class QosStream:
    """The stream side of one node: writes with held acks, and the node's consumer."""

    def __init__(self, engine: Engine, sender: bytes, node_name: str, prefix: str,
                 replicas: int, dedup: wire.Dedup,
                 schedule_flush: Callable[[], None]) -> None:
        self.engine = engine
        self.sender = sender
        self.node = node_name.encode()
        self.subject_prefix = f"{prefix}.q"
        base = prefix.replace(".", "_")
        self.stream = f"{base}_qos"
        self.durable = f"{base}_qos_{_name_token(node_name)}"
        self.replicas = replicas
        self.dedup = dedup
        self.schedule_flush = schedule_flush
        cluster = engine.config.cluster
        self.limits = cluster.qos_stream if cluster is not None else QosStreamConfig()
        self.patience = self.limits.patience
        self.js: JetStreamContext | None = None
        self._inflight = 0
        #: Acks held per write (released when the write is done, or on degrade()).
        self._held: dict[int, list[HeldAck]] = {}
        self._writes = 0
        #: The sender's numbered writes (QoS 1 runs, :meth:`ClusterNode._write_run`):
        #: the last seq written, the seqs not resolved yet in seq order, and those of
        #: them resolved out of order (:attr:`resolved_floor`).
        self._last_seq = 0
        self._open: deque[int] = deque()
        self._done: set[int] = set()
        #: QoS 2 writes in progress by stream write id (Nats-Msg-Id) -> write number.
        self._writing: dict[str, int] = {}
        #: QoS 2 messages travel as wire messages of their own sender (the same node
        #: name, so this node's consumer skips them too), numbered by their write ids
        #: (:meth:`_sender_of`).
        self.sender_q = sender + b"q"
        self._write_ids = 0
        engine.qos2_write_id = self._new_write_id
        #: sessions.py: a persistent publisher's QoS 2 write waits until its packet id
        #: and write id are in the session's record (True: deferred, then
        #: :meth:`write_deferred`); docs/cluster.md, "QoS 2 across a move".
        self.defer: Callable[[HeldAck, str], bool] | None = None
        #: Deferred writes by write id: the message and the acks waiting for it.
        self._deferred: dict[str, tuple[Message, list[HeldAck]]] = {}
        #: sessions.py: the stream acknowledged the QoS 2 write of a publisher's packet
        #: id (client id, packet id, write id, stream sequence): True when its session's
        #: record notes that first (the second mark), then :meth:`release_marked`
        #: releases the PUBREC; docs/cluster.md, "QoS 2 across a move".
        self.mark: Callable[[str, int, str, int], bool] | None = None
        #: QoS 2 writes of persistent publishers (deferred) and re-sends written again,
        #: in progress, by write id -> (client id, packet id) of the PUBLISH they
        #: carry (for :attr:`mark`).
        self._mark_of: dict[str, tuple[str, int]] = {}
        #: Acks of written QoS 2 messages that wait for the record's mark, by write id.
        self._marking: dict[str, list[HeldAck]] = {}
        #: The stream's creation time (0: unknown) and the position stored at the
        #: last commit of this node (restore), for :meth:`_start_seq`.
        self.stream_created = 0.0
        self._stored_seq = 0
        self.started_at = time.time()
        self.degraded = False
        #: Reading: the next stream sequence to route, messages that came after a
        #: gap (by stream sequence), one reader at a time.
        self.js_reader: JetStreamContext | None = None
        self._next: int | None = None
        self._waiting: dict[int, Msg] = {}
        self._gap_timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # counters (ClusterNode.status())
        self.written = 0
        self.unreplicated = 0
        self.acked_unreplicated = 0
        self.received = 0
        self.duplicates = 0
        self.skipped = 0
        self.replay_skipped = 0

    # ------------------------------------------------------------ writing
    def _new_write_id(self) -> str:
        """The id of a QoS 2 message's stream write (its Nats-Msg-Id): this process
        (node name, start-up nonce) and a counter, so unique per use of a packet id;
        stored with the pending packet id, so a resend after a restart reuses it."""
        self._write_ids += 1
        return f"{self.sender_q.decode()}:{self._write_ids}"

    def take_exactly_once(self, messages: list[Message], held: list[HeldAck]
                          ) -> list[HeldAck]:
        """Write this turn's QoS 2 messages to the stream, one stream message each and
        no live copy (the receivers' exactly once rests on the stream sequence), and
        the QoS 2 resends of pending packet ids; return the other held acks (QoS 1).
        :meth:`ClusterNode._forward` leaves QoS 2 messages out of the live path (a
        retained one still goes to the retained bucket there, in turn order)."""
        twos = [m for m in messages if m.qos == 2]
        resends = [h for h in held if h.resend]
        if not twos and not resends:
            return held
        ack_of = {id(h.message): h for h in held if h.message.qos == 2 and not h.resend}
        defer = self.defer
        for message in twos:
            ack = ack_of.get(id(message))
            write_id = ack.write_id if ack is not None else None
            if write_id and ack is not None and defer is not None and defer(ack, write_id):
                # (a persistent publisher's: its PUBREC waits for the record's mark too)
                self._deferred[write_id] = (message, [ack])
                self._mark_of[write_id] = (ack.client.client_id, ack.packet_id)
                continue
            self._write_message(message, write_id or self._new_write_id(),
                                [ack] if ack is not None else [])
        for h in resends:
            write_id = h.write_id or self._new_write_id()
            deferred = self._deferred.get(write_id)
            if deferred is not None:
                deferred[1].append(h)  # with the write that waits for the record
                continue
            marking = self._marking.get(write_id)
            if marking is not None:
                marking.append(h)  # written; with the PUBREC that waits for its mark
                continue
            write = self._writing.get(write_id)
            if write is None:
                # After a restart: write it again under the stored id (JetStream drops
                # it if the first write made it, within its duplicate window).
                self._mark_of[write_id] = (h.client.client_id, h.packet_id)
                self._write_message(h.message, write_id, [h])
            elif self.degraded:
                self.acked_unreplicated += 1
                self.release([h])
            else:
                self._held.setdefault(write, []).append(h)  # with the pending write
        return [h for h in held if h.message.qos != 2]

    def write_deferred(self, write_ids: list[str]) -> None:
        """The session's record has these writes' packet ids (or will not get them):
        written now, in the order they were accepted."""
        for write_id in write_ids:
            deferred = self._deferred.pop(write_id, None)
            if deferred is not None:
                self._write_message(deferred[0], write_id, deferred[1])

    def release_marked(self, write_ids: list[str]) -> None:
        """The session's record notes these writes as in the stream (or will not):
        their PUBRECs go now."""
        marking = self._marking
        for write_id in write_ids:
            acks = marking.pop(write_id, None)
            if acks:
                self.release(acks)

    def _sender_of(self, write_id: str) -> tuple[bytes, int]:
        """The wire sender and sequence number of a QoS 2 write: those of the process
        that made the write id (``<sender>q:<n>``), whichever node writes it. A resend
        written again by another node (the publisher's session moved there after a
        kill -9, sessions.py) is then, for every reader, the same message as the first
        write: their (sender, seq) dedup drops it if they routed that, and the first
        node's reader (its node name) skips it as its own after a restart."""
        sender, _, number = write_id.rpartition(":")
        if sender and number.isdigit():
            return sender.encode(), int(number)
        # (not one of ours: a number of this process's write ids, which no id it made
        # has, so that the dedup cannot take it for another write)
        self._write_ids += 1
        return self.sender_q, self._write_ids

    def _write_message(self, message: Message, write_id: str, acks: list[HeldAck]) -> None:
        subject = topic_to_subject(self.subject_prefix, message.topic)
        if len(subject) > MAX_SUBJECT:
            self.unreplicated += 1
            self._mark_of.pop(write_id, None)
            self.release(acks)
            return
        sender, seq = self._sender_of(write_id)
        payload = wire.encode(sender, seq, [wire.record(message)])
        self.write(subject, write_id, payload, 1, acks, wait=True, message=message)

    @property
    def resolved_floor(self) -> int:
        """The highest seq s such that every numbered write (``seq`` of :meth:`write`)
        up to s is resolved: acknowledged by the stream, or given up (docs/cluster.md,
        "A sender's first live part seen on a node"). Writes run concurrently, so a
        later one may be resolved before an earlier one."""
        pending = self._open
        return pending[0] - 1 if pending else self._last_seq

    def _resolved(self, seq: int) -> None:
        """The numbered write ``seq`` is resolved."""
        pending = self._open
        if pending and pending[0] == seq:
            pending.popleft()
            done = self._done
            while pending and pending[0] in done:
                done.discard(pending.popleft())
        else:
            self._done.add(seq)

    def write(self, subject: str, msg_id: str, payload: bytes, count: int,
              acks: list[HeldAck], wait: bool = False, message: Message | None = None,
              seq: int = 0) -> None:
        """Write one stream message (``count`` MQTT messages of one topic); the
        ``acks`` of its messages are released once the stream has it. ``wait``
        (QoS 2): before the node joined the stream, wait for it (at most
        ``patience``) rather than acknowledging at once. ``seq``: the sender's number
        of the write (QoS 1 runs, increasing; 0: not numbered), tracked until it is
        resolved (:attr:`resolved_floor`)."""
        if seq:
            self._last_seq = seq
            self._open.append(seq)
        js = self.js
        if (js is None and not wait) or self._inflight >= MAX_INFLIGHT:
            # Not joined to the stream (yet): local delivery only, counted.
            self.unreplicated += count
            self._mark_of.pop(msg_id, None)
            if seq:
                self._resolved(seq)
            self.release(acks)
            return
        if self.degraded:
            self.acked_unreplicated += len(acks)
            self.release(acks)
            acks = []
        self._inflight += count
        self._writes += 1
        write = self._writes
        if acks:
            self._held[write] = acks
        if wait:
            self._writing[msg_id] = write
        task = asyncio.get_running_loop().create_task(
            self._write(subject, msg_id, payload, count, write, message, seq))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, subject: str, msg_id: str, payload: bytes, count: int,
                     write: int, message: Message | None = None, seq: int = 0) -> None:
        # Nats-Msg-Id: a retry after a lost ack is not stored twice (the stream's
        # duplicate window); receivers also drop a (sender, seq) seen before.
        headers = {"Nats-Msg-Id": msg_id}
        deadline = time.monotonic() + self.patience
        delay = 0.05
        stored = 0
        try:
            while True:
                try:
                    js = self.js
                    if js is None:
                        raise ConnectionError("not joined to the stream yet")
                    ack = await js.publish(subject, payload, timeout=ATTEMPT_TIMEOUT,
                                           stream=self.stream, headers=dict(headers))
                    if message is not None:  # its stream sequence (sessions.py)
                        message.stream_seq = ack.seq
                    stored = ack.seq
                    self.written += count
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if time.monotonic() + delay >= deadline:
                        self.unreplicated += count
                        log.warning("cluster: stream %r did not take %d QoS 1/2 messages "
                                    "within %.0fs (%s); acknowledged unreplicated",
                                    self.stream, count, self.patience, exc)
                        break
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
        finally:
            self._inflight -= count
            if self._writing.get(msg_id) == write:
                del self._writing[msg_id]
            if seq:
                self._resolved(seq)
        acks = self._held.pop(write, [])
        owner = self._mark_of.pop(msg_id, None) if self._mark_of else None
        if owner is not None and stored and acks and not self.degraded:
            mark = self.mark
            if mark is not None and mark(owner[0], owner[1], msg_id, stored):
                # A persistent publisher's PUBREC waits until its session's record
                # says the stream has the message (sessions.py :meth:`release_marked`).
                self._marking[msg_id] = acks
                return
        self.release(acks)

    def degrade(self, degraded: bool) -> None:
        """NATS has been away for :data:`GRACE` seconds (True) or is back (False)."""
        self.degraded = degraded
        if degraded and self._marking:
            # In the stream; their sessions' records cannot note it now: PUBREC goes.
            marked = [a for acks in self._marking.values() for a in acks]
            self._marking.clear()
            self.release(marked)
        if degraded and self._held:
            held = [a for acks in self._held.values() for a in acks]
            self._held.clear()
            self.acked_unreplicated += len(held)
            log.warning("cluster: NATS away for %.0fs: %d held QoS 1/2 acks released "
                        "before the stream has their messages", GRACE, len(held))
            self.release(held)

    def release(self, acks: list[HeldAck]) -> None:
        if not acks:
            return
        release = self.engine.release_ack
        for held in acks:
            release(held)
        self.schedule_flush()

    # ------------------------------------------------------------ reading
    async def run(self, js: JetStreamContext) -> None:
        """Create (or find) the stream and this node's durable consumer, then read."""
        self.js_reader = js
        failures = 0
        while True:
            try:
                # (each step bounded, retried soon: right after a nats-server restart
                # JetStream does not answer at once; buckets.py)
                await asyncio.wait_for(self._ensure_stream(js), attempt_timeout(failures))
                await asyncio.wait_for(js.subscribe(
                    f"{self.subject_prefix}.>", durable=self.durable, stream=self.stream,
                    cb=self._on_message, manual_ack=True,
                    config=ConsumerConfig(
                        # created (first start of this node): from the node's start on,
                        # so a QoS 2 message (stream only) written while this node was
                        # joining is not missed here (an existing one resumes at its
                        # ack floor)
                        deliver_policy=DeliverPolicy.BY_START_TIME,
                        opt_start_time=datetime.fromtimestamp(self.started_at, UTC),
                        ack_policy=AckPolicy.EXPLICIT,
                        ack_wait=ACK_WAIT,
                        max_ack_pending=MAX_ACK_PENDING,
                    ),
                ), attempt_timeout(failures))
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                # as buckets.open_bucket: a warning first, an error once it lasts
                if failures in (1, SHORT_ATTEMPTS) or failures % 20 == 0:
                    log.log(logging.WARNING if failures < SHORT_ATTEMPTS else logging.ERROR,
                            "cluster: cannot open the QoS stream %r / consumer %r "
                            "(replicas %d): %s; retrying", self.stream, self.durable,
                            self.replicas, str(exc) or type(exc).__name__)
                await asyncio.sleep(backoff(failures))
        self.js = js
        log.info("cluster: QoS 1/2 stream %r joined (consumer %r)", self.stream,
                 self.durable)

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """Find or create the stream; its limits follow ``cluster.qos_stream`` (an
        existing stream whose limits differ is updated)."""
        limits = self.limits
        max_age = float(limits.max_age)
        max_bytes = limits.max_bytes or -1  # 0: unlimited (NATS: -1)
        window = float(limits.duplicate_window)
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            try:
                info = await js.add_stream(StreamConfig(
                    name=self.stream,
                    subjects=[f"{self.subject_prefix}.>"],
                    description="iotbroker QoS 1/2 messages (docs/cluster.md)",
                    storage=StorageType.FILE,
                    num_replicas=self.replicas,
                    max_age=max_age,
                    max_bytes=max_bytes,
                    duplicate_window=window,
                ))
            except Exception:
                info = await js.stream_info(self.stream)  # another node created it
        config = info.config
        if ((config.max_age or 0.0), (config.max_bytes or -1),
                (config.duplicate_window or 0.0)) != (max_age, max_bytes, window):
            try:
                info = await js.update_stream(replace(
                    config, max_age=max_age, max_bytes=max_bytes, duplicate_window=window))
                log.info("cluster: QoS stream %r limits set to max_age %.0fs, max_bytes "
                         "%d, duplicate_window %.0fs", self.stream, max_age, max_bytes,
                         window)
            except Exception as exc:
                log.warning("cluster: QoS stream %r limits not updated: %s",
                            self.stream, exc)
        created = info.created
        self.stream_created = created.timestamp() if created is not None else 0.0

    @property
    def next_to_route(self) -> int | None:
        """The next stream sequence this node's reader routes: every message below it
        was routed here (None: the reader has not started)."""
        return self._next

    async def leader_info(self, js: JetStreamContext) -> StreamInfo | None:
        """The stream's ``stream info`` as its leader gives it; None when a replica
        answered (its state may lag behind the leader's: :func:`answered_by_leader`)."""
        info = await js.stream_info(self.stream)
        return info if answered_by_leader(info) else None

    @contextlib.asynccontextmanager
    async def reader_paused(self) -> AsyncIterator[int | None]:
        """The reader routes nothing while the body runs (a session resumed here reads
        its messages from the stream meanwhile: docs/cluster.md, "Sessions move");
        yields :attr:`next_to_route` as it stands once the reader has paused."""
        async with self._lock:
            yield self._next

    async def _on_message(self, msg: Msg) -> None:
        """A stream message, in stream order: the consumer reads every subject of the
        stream, so its stream sequences are contiguous. One delivered after a gap (the
        one before it was lost in transit, in a failover between nats-servers) waits
        for the stream's redelivery of the missing one (after :data:`ACK_WAIT`), so
        each topic keeps its order [MQTT-4.6.0-5]; a sequence already routed is a
        redelivery (acked, not routed again). A gap still open after :data:`GAP_WAIT`
        (messages removed by the stream's limits) is skipped."""
        try:
            stream_seq = msg.metadata.sequence.stream
        except Exception as exc:
            log.warning("cluster: QoS stream message without metadata: %s", exc)
            return
        async with self._lock:
            if self._next is None:
                self._next = await self._start_seq(stream_seq)
            if stream_seq < self._next:
                if stream_seq <= self._stored_seq:
                    self.replay_skipped += 1  # routed and stored before a restart
                    if self.replay_skipped == 1:
                        log.info("cluster: QoS stream %r: sequence %d was stored here "
                                 "before the restart: acknowledged, not routed again "
                                 "(counted: qos_replay_skipped)", self.stream, stream_seq)
                else:
                    self.duplicates += 1
                await msg.ack()
                return
            if stream_seq > self._next:
                self._waiting[stream_seq] = msg
                if self._gap_timer is None:
                    log.info("cluster: QoS stream %r: sequence %d came before %d; held "
                             "until the missing ones come (redelivery after %.0fs), at "
                             "most %.0fs", self.stream, stream_seq, self._next, ACK_WAIT,
                             GAP_WAIT)
                    self._gap_timer = asyncio.get_running_loop().call_later(
                        GAP_WAIT, self._gap_expired)
                return
            await self._route(msg, stream_seq)
            await self._drain()

    async def _start_seq(self, first: int) -> int:
        """The first stream sequence to route after a (re)start: after the position
        this node stored with its last deliveries (a sequence routed and committed but
        not acknowledged before a crash comes again: it is skipped, not routed twice),
        else the consumer's ack floor + 1, so that a redelivery is not taken for a
        duplicate."""
        start = first
        js = self.js_reader
        if js is not None:
            try:
                info = await js.consumer_info(self.stream, self.durable)
                floor = info.ack_floor.stream_seq if info.ack_floor is not None else None
                # nats-server sets a new consumer's ack floor to the sequence before its
                # start, 0 too (an empty stream): the floor + 1 is where it starts even
                # when the first delivery here was lost in transit and comes again after
                # this one (then taken for a duplicate, an acknowledged message would
                # never be routed here; test_qos_stream_start.py)
                if floor is not None:
                    start = min(first, int(floor) + 1)
                if start < first:
                    start = await self._first_after_start_time(js, info, start, first)
            except Exception as exc:
                log.warning("cluster: consumer %r info: %s", self.durable, exc)
        log.debug("cluster: QoS stream %r: first delivery here is sequence %d; routing "
                  "from %d", self.stream, first, start)
        stored = self.engine.stream_positions.get(self.durable)
        if stored is not None:
            if stored.stream_created != self.stream_created:
                log.info("cluster: QoS stream %r is not the one of the stored position "
                         "(%d); ignored", self.stream, stored.seq)
            elif stored.seq >= start:
                self._stored_seq = stored.seq
                log.info("cluster: QoS stream %r: resuming after sequence %d (stored with "
                         "its deliveries)", self.stream, stored.seq)
                start = stored.seq + 1
        return start

    async def _first_after_start_time(self, js: JetStreamContext, info: ConsumerInfo,
                                      start: int, first: int) -> int:
        """``start`` (the ack floor + 1) is before ``first`` (the first delivery here):
        either deliveries before ``first`` were lost in transit (they come again: keep
        ``start``), or they precede the consumer's start time and never come. A
        consumer created by start time on a stream whose servers have just restarted
        can report an ack floor of 0 whatever its start (seen in
        test_connect_window.py: a gap held for ``GAP_WAIT``, 15 s without any QoS 1/2
        delivery here). The stream's message just before ``first`` decides, by the
        same comparison nats-server makes to pick the start (its time against the
        consumer's ``opt_start_time``): before it, ``first`` is where the consumer
        starts; a message removed by the stream's limits is not waited for either."""
        config = info.config
        begin = config.opt_start_time if config is not None else None
        if begin is None or config.deliver_policy != DeliverPolicy.BY_START_TIME:
            return start
        try:
            before = await js.get_msg(self.stream, first - 1)
        except NotFoundError:
            return first
        if before.time is not None and before.time < begin:
            log.info("cluster: QoS stream %r: sequence %d is before consumer %r's start "
                     "time: routing from %d, not from %d (its ack floor + 1)", self.stream,
                     first - 1, self.durable, first, start)
            return first
        return start

    async def _drain(self) -> None:
        waiting = self._waiting
        while self._next in waiting:
            seq = self._next
            await self._route(waiting.pop(seq), seq)
        if not waiting and self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None

    def _gap_expired(self) -> None:
        self._gap_timer = None
        task = asyncio.get_running_loop().create_task(self._skip_gap())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _skip_gap(self) -> None:
        async with self._lock:
            if not self._waiting or self._next is None or self._next in self._waiting:
                return
            first = min(self._waiting)
            self.skipped += first - self._next
            log.warning("cluster: QoS stream %r: sequences %d-%d never came (stream "
                        "limits?); skipped", self.stream, self._next, first - 1)
            self._next = first
            await self._drain()

    async def _route(self, msg: Msg, stream_seq: int) -> None:
        """Route one stream message here, commit the store, then ack the stream."""
        self._next = stream_seq + 1
        subject = msg.subject
        try:
            topic = subject_to_topic(self.subject_prefix, subject)
            sender, seq, messages = wire.decode(topic, msg.data)
        except Exception as exc:
            log.warning("cluster: undecodable QoS stream message on %r: %s", subject, exc)
            await msg.term()
            return
        if sender.rsplit(b"/", 1)[0] == self.node:
            await msg.ack()  # routed here when it was published
            return
        if not self.dedup.first(sender, seq):
            self.duplicates += 1
            await msg.ack()
            return
        engine = self.engine
        now = time.time()
        key = stream_key(msg)
        for message in messages:
            message.stream_seq = stream_seq  # a session's position (sessions.py)
            if key and message.qos == 2:  # its packet id in persistent sessions
                message.stream_key = key
            engine.route_remote(message, now)
        self.received += len(messages)
        if engine.batch:
            # Stored with the deliveries: after a crash before the ack below, this
            # sequence is not routed again (docs/cluster.md, "QoS 2 exactly once").
            engine.batch.put_stream_position(self.durable, stream_seq, self.stream_created)
            try:
                engine.commit()  # the queued copies are on disk before the stream forgets
            except StorageError as exc:
                log.error("cluster: storage write failed; QoS stream message left "
                          "unacknowledged: %s", exc)
                self.schedule_flush()
                return
        self.schedule_flush()
        await msg.ack()

    async def stop(self) -> None:
        if self._gap_timer is not None:
            self._gap_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

