"""One node's link to the NATS fabric: live routing by interest (docs/cluster.md).

* Every message a local client (or a will) publishes is published once on core NATS,
  on the subject of its topic (:mod:`iotbroker.cluster.subjects`), after the turn that
  accepted it (:meth:`ClusterNode.after_turn`, called from the server's flush).
* The node holds one NATS subscription per distinct MQTT filter of its sessions
  (:mod:`iotbroker.cluster.interest`), so NATS sends it only what someone here wants.
* A message from another node is decoded, routed once (overlapping filters bring it
  twice: :class:`~iotbroker.cluster.wire.Dedup`) through
  :meth:`Engine.route_remote <iotbroker.engine.engine.Engine.route_remote>` — every
  local delivery still goes through ``Session.deliver`` — and is never forwarded again.
  The connection is made with ``no_echo``: NATS does not hand a node its own messages.

Publishes, subscribes and unsubscribes go through one ordered queue drained by one
task, so a node's messages leave in the order its clients published them (MQTT 5.0
§4.6 ordered topics), and a SUB reaches NATS before a later PUB of the same turn.
While NATS is unreachable the node serves its own clients (local routing does not
wait for NATS), logs it, and keeps at most ``MAX_PENDING`` messages to forward;
beyond that, messages for other nodes are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from iotbroker.cluster import wire
from iotbroker.cluster.interest import Interest, Pair
from iotbroker.cluster.ownership import Ownership
from iotbroker.cluster.qos_stream import GRACE, QosStream
from iotbroker.cluster.sessions import Sessions
from iotbroker.cluster.subjects import (
    filter_to_subjects,
    key_to_topic,
    subject_to_topic,
    topic_to_key,
    topic_to_subject,
)
from iotbroker.cluster.wills import NODE_TTL, Wills
from iotbroker.config import ClusterConfig
from iotbroker.message import Message
from iotbroker.storage.records import decode_retained

if TYPE_CHECKING:
    from iotbroker.engine.engine import Engine, HeldAck

log = logging.getLogger("iotbroker.cluster")

#: Messages waiting to be handed to NATS at most (then dropped and counted).
MAX_PENDING = 100_000
#: NATS keeps a PUB's subject within its control line (4 KiB by default).
MAX_SUBJECT = 4000
#: Topics whose subject (and subjects whose topic) are kept at most, per direction.
NAME_CACHE = 100_000
#: How often pairs gone from the trie without an event (expired sessions) are dropped.
RECONCILE_SECONDS = 30.0

_PUB, _SUB, _UNSUB, _RETAIN = 0, 1, 2, 3
_DELETE_HEADERS = {KV_OP: KV_DEL}


class ClusterNode:
    """The cluster room of one broker process."""

    def __init__(self, config: ClusterConfig, engine: Engine,
                 schedule_flush: Callable[[], None]) -> None:
        """``schedule_flush``: the server's "this turn left effects" (writes,
        closes): called after each event that comes from NATS."""
        self.config = config
        self.engine = engine
        self.schedule_flush = schedule_flush
        self.prefix = config.subject_prefix
        #: This process among the cluster's: node name and a start-up nonce.
        self.sender = f"{config.node_name}/{secrets.token_hex(4)}".encode()
        self.seq = 0
        self.interest = Interest()
        self.dedup = wire.Dedup()
        self.nc: NatsClient | None = None
        self.connected = False
        self._warned = False
        self._subs: dict[str, list[Subscription]] = {}
        self._commands: deque[tuple[int, str, bytes, int]] = deque()
        self._pending_pubs = 0
        # IoT topics repeat: their subjects (and back) are computed once
        self._subject_of: dict[str, str] = {}
        self._topic_of: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._degrade_timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: The retained bucket (None until it is open) and the topics it holds, from
        #: the watch (the messages themselves are in the engine's retained store).
        self.bucket = f"{self.prefix.replace('.', '_')}_retained"
        self.kv: KeyValue | None = None
        self.retained_topics: set[str] = set()
        self.retained_synced = False
        self._watchers: list[KeyValue.KeyWatcher] = []
        self.ownership = Ownership(engine, self.sender,
                                   f"{self.prefix.replace('.', '_')}_sessions",
                                   config.replicas, schedule_flush)
        self.wills = Wills(engine, self.sender, self.prefix, config.replicas,
                           self.ownership, schedule_flush)
        self.wills.status_of = self._figures
        self.qos = QosStream(engine, self.sender, config.node_name, self.prefix,
                             config.replicas, self.dedup, schedule_flush)
        self.sessions = Sessions(engine, self.sender, self.prefix, config.replicas,
                                 self.qos, self._interest_changed,
                                 schedule_flush, self.ownership.owner,
                                 self.ownership.claim_now)
        # counters (status(): $SYS/broker/cluster/..., metrics)
        self.forwarded = 0
        self.received = 0
        self.duplicates = 0
        self.dropped = 0
        self.refused = 0
        self.undecodable = 0

    def status(self) -> dict[str, int]:
        """What the node reports ($SYS/broker/cluster/..., metrics, /health)."""
        return {
            "connected": int(self.connected),
            "messages_forwarded": self.forwarded,
            "messages_received": self.received,
            "messages_dropped": self.dropped,
            "messages_refused": self.refused,
            "messages_duplicate": self.duplicates,
            "messages_undecodable": self.undecodable,
            "filters": len(self.interest),
            "takeovers": self.ownership.takeovers,
            "claim_failures": self.ownership.claim_failures,
            "wills_published": self.wills.published,
            "qos_written": self.qos.written,
            "qos_unreplicated": self.qos.unreplicated,
            "qos_acked_unreplicated": self.qos.acked_unreplicated,
            "qos_received": self.qos.received,
            "qos_duplicate": self.qos.duplicates,
            "qos_replay_skipped": self.qos.replay_skipped,
            "sessions_resumed": self.sessions.resumed,
            "sessions_handed_over": self.sessions.handed_over,
            "sessions_replayed": self.sessions.replayed,
            "sessions_record_writes": self.sessions.writes,
            "sessions_record_failures": self.sessions.write_failures,
        }

    def _figures(self) -> bytes:
        """This node's figures for the cluster totals (JSON, with each heartbeat)."""
        engine = self.engine
        metrics = engine.metrics
        return json.dumps({
            "clients/connected": metrics.clients_connected,
            "sessions/count": len(engine.registry),
            "subscriptions/count": len(engine.trie),
            "publish/messages/received": metrics.publish_received,
            "publish/messages/sent": metrics.publish_sent,
        }, separators=(",", ":")).encode()

    def totals(self) -> dict[str, int]:
        """Cluster totals ($SYS/broker/cluster/total/...): the sum of the figures of
        every process whose heartbeat is fresh (:data:`~iotbroker.cluster.wills.NODE_TTL`),
        this one included; ``nodes`` counts them."""
        now = time.monotonic()
        totals: dict[str, int] = {"nodes": 0}
        for seen, value in list(self.wills.figures.values()):
            if now - seen > NODE_TTL:
                continue
            try:
                figures = json.loads(value)
            except ValueError:
                continue
            totals["nodes"] += 1
            for key, number in figures.items():
                if isinstance(number, int):
                    totals[key] = totals.get(key, 0) + number
        return totals

    # ----------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Ask the engine for its forwarding effects, subscribe for the restored
        sessions' filters, and connect in the background (the broker serves its own
        clients whether or not NATS is there)."""
        engine = self.engine
        engine.forwarding = []
        engine.interest_touched = []
        engine.accepted = []
        engine.ended = []
        engine.held_acks = []
        restored = [(s.client_id, f) for s in engine.registry.sessions.values()
                    for f in s.subscriptions]
        self._interest_changed(restored)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._run()))
        self._tasks.append(loop.create_task(self._reconcile_loop()))

    async def stop(self) -> None:
        engine = self.engine
        engine.forwarding = None
        engine.interest_touched = None
        engine.accepted = None
        engine.ended = None
        self.after_turn()
        engine.held_acks = None
        await self.qos.stop()
        with contextlib.suppress(Exception):  # a clean stop sends no will
            await asyncio.wait_for(self.wills.forget_own(), 3)
        with contextlib.suppress(Exception):  # the sessions' last state (sessions.py)
            await asyncio.wait_for(self.sessions.flush(), 3)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        nc = self.nc
        for watcher in self._watchers:  # ends nats-py's heartbeat tasks of the watch too
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.flush(timeout=1), 2)
            with contextlib.suppress(Exception):
                await nc.close()
        log.info("cluster: node %s left (forwarded %d, received %d, dropped %d)",
                 self.config.node_name, self.forwarded + self.qos.written,
                 self.received + self.qos.received, self.dropped)

    def before_accept(self, client_id: str, clean_start: bool) -> asyncio.Future[None] | None:
        """A CONNECT is about to be accepted; with Clean Start 0 its session may be on
        another node: a future the server waits for before accepting (None: now).
        docs/cluster.md, "Sessions move"."""
        return self.sessions.before_accept(client_id, clean_start)

    # --------------------------------------------------------- each turn
    def after_turn(self) -> None:
        """Drain the engine's forwarding effects into the ordered command queue."""
        engine = self.engine
        touched = engine.take_interest_touched()
        if touched:
            self._interest_changed(touched)
        accepted = engine.take_accepted()
        early = self.sessions.claimed_early
        for client in accepted:
            claimed = early.pop(client.client_id, None) if early else None
            if claimed is None or time.monotonic() - claimed > 10.0:
                self.ownership.claim(client.client_id)  # (else its resume claimed it)
            self.wills.connected(client)
        ended = engine.take_ended()
        for client in ended:
            self.wills.ended(client)
        self.sessions.after_turn(touched, accepted, ended)
        messages = engine.take_forwarding()
        held = engine.take_held_acks()
        if messages or held:  # QoS 2: through the stream only (qos_stream.py)
            held = self.qos.take_exactly_once(messages, held)
        if messages:
            if self.sessions.capturing:  # a session being resumed (sessions.py)
                self.sessions.capture(messages)
            self._forward(messages, held)
        if self._commands:
            self._wake.set()

    def _forward(self, messages: list[Message], held: list[HeldAck]) -> None:
        """This turn's messages, one NATS message per topic (in order within each
        topic, which is the order MQTT keeps [MQTT-4.6.0-5]); retained ones also go
        to the retained bucket. A topic's run of consecutive QoS 1/2 messages is a
        NATS message of its own, published live (the order with QoS 0 kept) and
        written to the QoS stream with the same (sender, seq), which carries the held
        acks (:mod:`iotbroker.cluster.qos_stream`); a receiving node routes the copy
        that comes first."""
        acks_of: dict[int, list[HeldAck]] = {}
        for h in held:
            acks_of.setdefault(id(h.message), []).append(h)
        live = self.nc is not None and self._pending_pubs < MAX_PENDING
        # topic -> runs of (reliable, [(record, acks)])
        by_topic: dict[str, list[tuple[bool, list[tuple[bytes, list[HeldAck]]]]]] = {}
        retained: list[tuple[str, bytes]] = []
        for message in messages:
            if message.qos == 2 and not message.retain:
                continue  # written to the stream on its own (qos_stream.take_exactly_once)
            rec = wire.record(message)
            if message.retain and live:
                retained.append((topic_to_key(message.topic), rec if message.payload else b""))
            if message.qos == 2:
                continue
            reliable = message.qos > 0
            runs = by_topic.get(message.topic)
            if runs is None:
                runs = by_topic[message.topic] = []
            if not runs or runs[-1][0] != reliable:
                runs.append((reliable, []))
            runs[-1][1].append((rec, acks_of.get(id(message), [])))
        commands = self._commands
        prefix = self.prefix
        subject_of = self._subject_of
        qos = self.qos
        for topic, runs in by_topic.items():
            subject = subject_of.get(topic)
            if subject is None:
                if len(subject_of) >= NAME_CACHE:
                    subject_of.clear()
                subject = subject_of[topic] = topic_to_subject(prefix, topic)
            if len(subject) > MAX_SUBJECT:
                for reliable, items in runs:
                    self.refused += len(items)
                    if reliable:
                        qos.unreplicated += len(items)
                        qos.release([a for _, acks in items for a in acks])
                continue
            for reliable, items in runs:
                start = 0
                while start < len(items):  # within NATS's max_payload (1 MiB by default)
                    end = start
                    size = 0
                    while end < len(items) and end - start < wire.MAX_BATCH and (
                            size < wire.MAX_BATCH_BYTES or end == start):
                        size += len(items[end][0])
                        end += 1
                    self.seq += 1
                    part = items[start:end]
                    payload = wire.encode(self.sender, self.seq, [rec for rec, _ in part])
                    if live:
                        commands.append((_PUB, subject, payload, end - start))
                        self._pending_pubs += end - start
                    else:
                        self.dropped += end - start
                    if reliable:
                        qos.write(qos.subject_prefix + subject[len(prefix):],
                                  f"{self.sender.decode()}:{self.seq}", payload,
                                  end - start, [a for _, acks in part for a in acks])
                    start = end
        for key, value in retained:
            commands.append((_RETAIN, key, value, 0))

    def _present(self, pair: Pair) -> bool:
        """Is (client id, filter as subscribed) a subscription now? (The session's
        subscriptions are the per-client index; the trie indexes by filter.)"""
        session = self.engine.registry.sessions.get(pair[0])
        return session is not None and pair[1] in session.subscriptions

    def _interest_changed(self, touched: list[Pair]) -> None:
        added, removed = self.interest.update(touched, self._present)
        commands = self._commands
        for topic_filter in removed:
            commands.append((_UNSUB, topic_filter, b"", 0))
        for topic_filter in added:
            commands.append((_SUB, topic_filter, b"", 0))
        if commands:
            self._wake.set()

    # --------------------------------------------------------------- I/O
    async def _connect(self) -> NatsClient:
        """Connect, retrying for ever (nats-py retries the first connection too when
        reconnects are unlimited; each failure comes to :meth:`_error`)."""
        config = self.config
        tls: ssl.SSLContext | None = None
        if config.nats_tls is not None:
            t = config.nats_tls
            tls = ssl.create_default_context(cafile=t.cafile)
            if t.certfile is not None:
                tls.load_cert_chain(t.certfile, t.keyfile)
        return await nats.connect(
            servers=list(self.config.nats),
            user=config.user,
            password=config.password,
            token=config.token,
            user_credentials=config.credentials_file,
            tls=tls,
            name=f"iotbroker {self.config.node_name}",
            no_echo=True,  # our own messages were routed here already
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            connect_timeout=2,
            skip_subject_validation=True,  # valid by construction (subjects.py)
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
        )

    async def _run(self) -> None:
        nc = await self._connect()
        self.nc = nc
        self.connected = True
        self._warned = False
        log.info("cluster: node %s connected to NATS %s", self.config.node_name,
                 nc.connected_url.netloc if nc.connected_url else "?")
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_retained(nc)))
        self._tasks.append(loop.create_task(self.ownership.run(nc)))
        self._tasks.append(loop.create_task(self.wills.run(nc.jetstream())))
        self._tasks.append(loop.create_task(self.qos.run(nc.jetstream())))
        self._tasks.append(loop.create_task(self.sessions.run(nc)))
        commands = self._commands
        wake = self._wake
        while True:
            if not commands:
                wake.clear()
                await wake.wait()
                continue
            kind, name, payload, count = commands.popleft()
            try:
                if kind == _PUB:
                    self._pending_pubs -= count
                    await nc.publish(name, payload)
                    self.forwarded += count
                elif kind == _SUB:
                    if name not in self._subs:
                        self._subs[name] = [
                            await nc.subscribe(subject, cb=self._on_message)
                            for subject in filter_to_subjects(self.prefix, name)
                        ]
                elif kind == _RETAIN:
                    # Straight into the bucket's stream, without waiting for its ack:
                    # the ordered queue keeps its pace (docs/cluster.md, "Retained").
                    subject = f"$KV.{self.bucket}.{name}"
                    if payload:
                        await nc.publish(subject, payload)
                    else:
                        await nc.publish(subject, b"", headers=_DELETE_HEADERS)
                else:
                    for sub in self._subs.pop(name, []):
                        await sub.unsubscribe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if kind == _PUB:
                    self.dropped += count
                log.warning("cluster: NATS %s %r failed: %s",
                            ("publish", "subscribe", "unsubscribe", "retain")[kind], name, exc)

    async def _open_bucket(self, nc: NatsClient) -> KeyValue:
        js = nc.jetstream()
        while True:
            try:
                try:
                    return await js.key_value(self.bucket)
                except BucketNotFoundError:
                    return await js.create_key_value(
                        bucket=self.bucket, history=1, replicas=self.config.replicas,
                        description="iotbroker retained messages (docs/cluster.md)",
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("cluster: cannot open the retained bucket %r (replicas %d): %s; "
                          "retrying", self.bucket, self.config.replicas, exc)
                await asyncio.sleep(2.0)

    async def _watch_retained(self, nc: NatsClient) -> None:
        """Index the retained bucket in memory (the engine's retained store) from a
        watch: the last value of every key first, then each change, in the bucket's
        order on every node. Once caught up, retained messages this node kept (on disk)
        that the bucket no longer has are dropped: the bucket is the truth."""
        kv = await self._open_bucket(nc)
        self.kv = kv
        watcher = await kv.watchall()
        self._watchers.append(watcher)
        engine = self.engine
        index = self.retained_topics
        async for entry in watcher:
            if entry is None:
                if not self.retained_synced:
                    self.retained_synced = True
                    stale = [m.topic for m in engine.retained.all()
                             if m.topic not in index and not m.topic.startswith("$SYS/")]
                    for topic in stale:
                        engine.replace_retained(topic, None)
                    log.info("cluster: %d retained messages from bucket %r (%d stale "
                             "dropped)", len(index), self.bucket, len(stale))
                    self.schedule_flush()
                continue
            try:
                topic = key_to_topic(entry.key)
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    index.discard(topic)
                    engine.replace_retained(topic, None)
                else:
                    message = decode_retained(topic.encode(), entry.value)
                    index.add(topic)
                    engine.replace_retained(topic, message)
            except Exception as exc:
                self.undecodable += 1
                log.warning("cluster: undecodable retained entry %r: %s", entry.key, exc)
                continue
            self.schedule_flush()

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_SECONDS)
            self.ownership.prune()
            for topic_filter in self.interest.reconcile(self._present):
                self._commands.append((_UNSUB, topic_filter, b"", 0))
            if self._commands:
                self._wake.set()

    async def _on_message(self, msg: Msg) -> None:
        """A message another node published, on a subject this node subscribed to."""
        try:
            subject = msg.subject
            topic = self._topic_of.get(subject)
            if topic is None:
                if len(self._topic_of) >= NAME_CACHE:
                    self._topic_of.clear()
                topic = self._topic_of[subject] = subject_to_topic(self.prefix, subject)
            sender, seq, messages = wire.decode(topic, msg.data)
        except Exception as exc:
            self.undecodable += 1
            log.warning("cluster: undecodable message on %r: %s", msg.subject, exc)
            return
        if not self.dedup.first(sender, seq):
            self.duplicates += 1
            return
        self.received += len(messages)
        # A retained one is kept here by routing too; the bucket's watch brings it
        # (or a later one) soon after: docs/cluster.md, "Retained messages".
        now = time.time()
        route = self.engine.route_remote
        for message in messages:
            route(message, now)
        if self.sessions.capturing:  # a session being resumed (sessions.py)
            self.sessions.capture(messages)
        self.schedule_flush()

    async def _disconnected(self) -> None:
        if self._degrade_timer is None:
            self._degrade_timer = asyncio.get_running_loop().call_later(
                GRACE, self.qos.degrade, True)
        if self.connected:
            self.connected = False
            log.warning("cluster: node %s lost NATS; serving local clients only",
                        self.config.node_name)

    async def _reconnected(self) -> None:
        if self._degrade_timer is not None:
            self._degrade_timer.cancel()
            self._degrade_timer = None
        self.qos.degrade(False)
        self.connected = True
        self._warned = False
        nc = self.nc
        log.info("cluster: node %s reconnected to NATS %s", self.config.node_name,
                 nc.connected_url.netloc if nc is not None and nc.connected_url else "?")

    async def _error(self, exc: Exception) -> None:
        if self.connected:
            log.warning("cluster: NATS error: %s", exc)
        elif not self._warned:  # once per outage, not once per retry
            self._warned = True
            log.warning("cluster: NATS %s unreachable (%s); node %s serves its local "
                        "clients only, retrying", ", ".join(self.config.nats), exc,
                        self.config.node_name)
