"""One node's link to the NATS fabric: routing by announced interest (docs/cluster.md).

* The node announces the distinct filters of its sessions in the replicated KV bucket
  ``<prefix>_interest`` (:mod:`iotbroker.cluster.interest`), and watches the bucket
  into an index of every other node's filters (:mod:`iotbroker.cluster.remote`).
* After each turn (:meth:`ClusterNode.after_turn`, called from the server's flush) it
  matches the turn's messages against that index and sends **one NATS message per
  destination node** on ``<prefix>.node.<process token>`` — a batch across topics
  (:func:`iotbroker.cluster.wire.encode_batch`); nothing goes out for a topic no other
  node wants. A shared subscription group's message goes to exactly one node with
  members, this one included (:mod:`iotbroker.cluster.shared`, MQTT 5.0 §4.8.2).
* The node holds **one NATS subscription**, on its own subject. A batch from another
  node is decoded and routed through :meth:`Engine.route_remote
  <iotbroker.engine.engine.Engine.route_remote>` — every local delivery still goes
  through ``Session.deliver`` — and is never forwarded again.

Publishes and announcements go through one ordered queue drained by one task, so a
node's messages to another leave in the order its clients published them (one subject
per pair of nodes: MQTT 5.0 §4.6 ordered topics). While NATS is unreachable the node
serves its own clients (local routing does not wait for NATS), logs it, and keeps at
most ``MAX_PENDING`` messages to forward; beyond that, messages for other nodes are
dropped and counted. On reconnect it announces its filters again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import nats
import nats.aio.client
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import AuthorizationError as NatsAuthorizationError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from iotbroker.cluster import shared as share
from iotbroker.cluster import wire
from iotbroker.cluster.buckets import open_bucket
from iotbroker.cluster.interest import Interest, Pair
from iotbroker.cluster.natsread import TESTED_VERSIONS as TESTED_NATS
from iotbroker.cluster.natsread import BatchParser, usable
from iotbroker.cluster.natswrite import publish as raw_publish
from iotbroker.cluster.natswrite import usable as raw_publish_usable
from iotbroker.cluster.orphans import OrphanSweep, owner_token
from iotbroker.cluster.ownership import Ownership
from iotbroker.cluster.qos_stream import GAP_WAIT, GRACE, QosStream
from iotbroker.cluster.remote import (
    GroupKey,
    RemoteInterest,
    encode_value,
    interest_key,
)
from iotbroker.cluster.sessions import Sessions
from iotbroker.cluster.subjects import (
    key_to_topic,
    topic_to_key,
    topic_to_subject,
)
from iotbroker.cluster.wills import NODE_TTL, Wills
from iotbroker.config import ClusterConfig
from iotbroker.message import Message
from iotbroker.storage.records import decode_retained
from iotbroker.subscription import SubscriptionEntry

if TYPE_CHECKING:
    from iotbroker.engine.client import Client
    from iotbroker.engine.engine import Engine, HeldAck

log = logging.getLogger("iotbroker.cluster")

#: Messages waiting to be handed to NATS at most (then dropped and counted).
MAX_PENDING = 100_000
#: Seconds between checks of live QoS 1 parts held behind a gap (wire.LiveOrder).
REORDER_CHECK = 0.02
#: Seconds a sender's first live QoS 1 parts wait for the stream reader to route the
#: write below them (or their own copy: normally a few ms) before the consumer's
#: position is asked for (wire.LiveOrder.synced). The ask is exact: a sender sends
#: its first live part to a node only once every write below it is resolved (stored
#: or given up: :meth:`ClusterNode._gate_live`), so the position asked after that part
#: arrived covers every stored write below it. The wait only spares the request when
#: the reader routes the write below anyway (2 s in session 9 as a mitigation, before
#: the sender's gate; 0.25 s again since).
SYNC_ASK = 0.25
#: NATS keeps a PUB's subject within its control line (4 KiB by default).
MAX_SUBJECT = 4000
#: Topics whose subject (and subjects whose topic) are kept at most, per direction.
NAME_CACHE = 100_000
#: How often pairs gone from the trie without an event (expired sessions) are dropped.
RECONCILE_SECONDS = 30.0
#: How often other processes' liveness is checked for the interest index.
SWEEP_SECONDS = 1.0
#: Seconds without a sign of life after which a process's announcements are deleted
#: from the bucket (after NODE_TTL it is already out of the index).
FORGET_SECONDS = 60.0
#: Replaces FORGET_SECONDS when set (seconds, at least NODE_TTL): a test/ops knob, read
#: once when a node starts (docs/cluster.md, "Forgetting dead senders").
FORGET_ENV = "IOTBROKER_CLUSTER_FORGET_SECONDS"
#: Seconds one request for the QoS stream's end may take (else asked on a later sweep).
END_TIMEOUT = 2.0
#: nats-py's socket read size and StreamReader limit, at least (its default: 32 KiB).
NATS_READ_SIZE = 1 << 20
#: "nats": batches are read by nats-py's own path (a subscription with callback), not
#: :mod:`iotbroker.cluster.natsread`; read at each connect (docs/cluster.md).
NATS_READ_ENV = "IOTBROKER_CLUSTER_NATS_READ"

_PUB, _ANNOUNCE, _RETAIN = wire.PUB, 1, 3
_CONTROL = bytes([wire.CONTROL])
#: (message, its record, its held acks)
_Item = tuple[Message, bytes, list["HeldAck"]]
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
        #: This process in subjects and KV keys: "<node>_<nonce>"
        self.token = self.sender.decode().replace("/", "_")
        self.node_subject = f"{self.prefix}.node.{self.token}"
        self._node_prefix = f"{self.prefix}.node."  # + a process token: its subject
        self.interest = Interest()
        self.remote = RemoteInterest(self.token)
        #: This process's announcements: KV key -> announced filter
        self._own_keys: dict[str, str] = {}
        self.interest_bucket = f"{self.prefix.replace('.', '_')}_interest"
        self.interest_synced = False
        self.interest_kv: KeyValue | None = None
        self._resync: asyncio.Task[None] | None = None
        self.dedup = wire.Dedup()
        #: name dictionaries (wire.py, NAMED parts): this node's per destination
        #: process, and other nodes' per sender
        self.names_out = wire.NameTables()
        self.names_in: dict[bytes, wire.NameBook] = {}
        self.nc: NatsClient | None = None
        self.connected = False
        self._warned = False
        self._told_parser = False
        self._sub: Subscription | None = None
        self._commands: deque[tuple[int, str, bytes, int]] = deque()
        self._pending_pubs = 0
        # IoT topics repeat: their subjects are computed once
        self._subject_of: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._degrade_timer: asyncio.TimerHandle | None = None
        #: per sending node: its live QoS 1 parts kept in sequence order (wire.LiveOrder)
        self._live_order: dict[bytes, wire.LiveOrder] = {}
        #: Destination processes this node has sent a live QoS 1 part to since it last
        #: (re)connected and since they last entered the routing index (the gate of a
        #: first live part: :meth:`_gate_live`).
        self._live_started: set[str] = set()
        self._reorder_timer: asyncio.TimerHandle | None = None
        #: consumer position requests for unsynced senders (LiveOrder.synced)
        self._asks: set[asyncio.Task[None]] = set()
        #: Silent senders' receive state (Dedup window, LiveOrder) goes after this long
        #: (_forget_senders): FORGET_SECONDS, at least the stream's duplicate window.
        self.forget_seconds = forget_seconds(os.environ)
        #: silent sender -> the QoS stream's last sequence when it was found silent (its
        #: state goes once this node's reader has routed past it); senders never heard
        #: here (no heartbeat: dead before this node started) -> when first noticed
        self._forget_at: dict[bytes, int] = {}
        self._unheard: dict[bytes, float] = {}
        self._end_ask: asyncio.Task[None] | None = None
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
                                 schedule_flush, self.ownership)
        #: the records of expired sessions of dead processes (one live node sweeps)
        self.orphans = OrphanSweep(self.sessions, self.wills)
        # counters (status(): $SYS/broker/cluster/..., metrics)
        self.forwarded = 0
        self.received = 0
        self.duplicates = 0
        self.dropped = 0
        self.refused = 0
        self.undecodable = 0
        self.unnamed = 0  # messages dropped: a name id this node did not hold
        self.name_resets = 0  # name tables renewed because a destination asked
        self.senders_forgotten = 0  # silent sending processes' state dropped

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
            "messages_unnamed": self.unnamed,
            "names_resets": self.name_resets,
            "senders_forgotten": self.senders_forgotten,
            "filters": len(self.interest),
            "remote_filters": len(self.remote),
            "remote_nodes": len(self.remote.active),
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
            # CONNECTs that waited for NATS or the buckets (sessions.py, the gate)
            "sessions_waited": self.sessions.waited_ready,
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
        engine.router.share_pick = self._share_pick
        engine.accept_wait = self.before_accept  # the engine's connect gate
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
        engine.router.share_pick = None
        engine.accept_wait = None
        if self._reorder_timer is not None:
            self._reorder_timer.cancel()
            self._reorder_timer = None
        for task in list(self._asks):
            task.cancel()
        if self._end_ask is not None:
            self._end_ask.cancel()
        self.after_turn()
        engine.held_acks = None
        await self.qos.stop()
        with contextlib.suppress(Exception):  # a clean stop sends no will
            await asyncio.wait_for(self.wills.forget_own(), 3)
        with contextlib.suppress(Exception):  # the sessions' last state (sessions.py)
            await asyncio.wait_for(self.sessions.flush(), 3)
        self.sessions.nats_lost()  # (ends the gate's probe after a reconnect, if any)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        nc = self.nc
        for watcher in self._watchers:  # ends nats-py's heartbeat tasks of the watch too
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        if nc is not None and not nc.is_closed and self.connected:
            # A clean stop takes its announcements along: the others stop sending here
            # at once, not NODE_TTL later (the flush below sends them).
            for key in list(self._own_keys):
                with contextlib.suppress(Exception):
                    await nc.publish(f"$KV.{self.interest_bucket}.{key}", b"",
                                     headers=_DELETE_HEADERS)
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.flush(timeout=1), 2)
            with contextlib.suppress(Exception):
                await nc.close()
        log.info("cluster: node %s left (forwarded %d, received %d, dropped %d)",
                 self.config.node_name, self.forwarded + self.qos.written,
                 self.received + self.qos.received, self.dropped)

    def before_accept(self, client_id: str, clean_start: bool
                      ) -> asyncio.Future[str | None] | None:
        """The engine's ``accept_wait`` (engine/connect.py ``wait_before_accept``): a
        CONNECT is about to be accepted; with Clean Start 0 its session may be on
        another node: a future the acceptance waits for (None: now).
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
        lost: list[Client] = []
        ownership = self.ownership
        for client in accepted:
            self.wills.connected(client)
            if not ownership.accepted(client.client_id):
                # Its resume's claim was replaced by another process's while the
                # CONNECT waited: that later connection has the client id
                # [MQTT-3.1.4-2]; this one is told 0x8E Session taken over [MQTT-3.1.4-3].
                lost.append(client)
                if engine.taken_over_elsewhere(client.client_id):
                    ownership.takeovers += 1
        if lost:
            accepted = [c for c in accepted if c not in lost]
            self.schedule_flush()  # the closes
        ended = engine.take_ended()
        for client in ended:
            self.wills.ended(client)
        self.sessions.after_turn(touched, accepted, ended, lost)
        messages = engine.take_forwarding()
        # QoS 0 alone, none retained (the common case, checked compiled): no stream
        # floors, QoS 2 writes, runs or retained records to look for
        qos0 = wire.qos0_only(messages)
        if not qos0:
            self.sessions.routed_here(messages)
        held = engine.take_held_acks()
        if held or not qos0:  # QoS 2: through the stream only (qos_stream.py)
            held = self.qos.take_exactly_once(messages, held)
        if messages:
            if self.sessions.capturing:  # a session being resumed (sessions.py)
                self.sessions.capture(messages)
            self._forward(messages, held, qos0)
        if self._commands:
            self._wake.set()

    def _share_pick(self, message: Message, group: str, topic_filter: str,
                    members: list[SubscriptionEntry]) -> bool:
        """The router asks, for a message published here or routed from the QoS
        stream, whether this node's members of ``$share/group/topic_filter`` take it:
        one node among those with members does, by :func:`shared.pick
        <iotbroker.cluster.shared.pick>` (MQTT 5.0 §4.8.2); :meth:`_forward` makes the
        same choice. Without NATS, this node's members do."""
        remote = self.remote.groups.get((group, topic_filter))
        if not remote or not self.connected:
            return True
        candidates = [(self.token, len(members)), *remote.items()]
        return share.pick(message, group, topic_filter, candidates) == self.token

    def _forward(self, messages: list[Message], held: list[HeldAck],
                 qos0: bool = False) -> None:
        """This turn's messages to the nodes that want them: one NATS message per
        destination node, its messages in the order they were published, a run at its
        first message (which keeps each topic's order, [MQTT-4.6.0-5]; QoS 1 messages
        of different topics may change order); retained ones also go to the retained
        bucket. A topic's run of QoS 1/2 messages is written to the QoS stream with a
        (sender, seq), which carries the held acks (:mod:`iotbroker.cluster.qos_stream`),
        and sent live, as a part with the same (sender, seq), to every node with
        interest in the topic; a receiving node routes the copy that comes first.
        ``qos0``: :func:`wire.qos0_only` holds for ``messages`` (no runs, nothing
        retained: step 1 has nothing to do and is skipped)."""
        live = self.nc is not None and self._pending_pubs < MAX_PENDING
        if qos0 and live:  # the common case, one compiled call (wire.send_qos0)
            queued = wire.send_qos0(messages, self.remote.trie, self.names_out,
                                    self.sender, self._node_prefix, self._commands)
            if queued >= 0:
                self._pending_pubs += queued
                return
        acks_of: dict[int, list[HeldAck]] = {}
        for h in held:
            acks_of.setdefault(id(h.message), []).append(h)
        prefix = self.prefix
        remote = self.remote
        own = self.token
        # 1. The QoS stream: one topic's QoS 1/2 messages of this turn, up to the next
        # QoS 0 message on that topic, are one stream message (a run).
        runs: dict[str, list[Message]] = {}
        run_of: dict[int, list[Message]] = {}
        retained: list[tuple[str, bytes]] = []
        all_runs: list[list[Message]] = []
        for message in () if qos0 else messages:
            topic = message.topic
            if message.qos == 2:  # the stream only, on its own (qos_stream.take_exactly_once)
                if message.retain and live:
                    retained.append((topic_to_key(topic),
                                     wire.record(message) if message.payload else b""))
                continue
            if message.qos:
                run = runs.get(topic)
                if run is None:
                    run = runs[topic] = []
                    all_runs.append(run)
                run.append(message)
                run_of[id(message)] = run
            else:
                runs.pop(topic, None)
            if message.retain and live:
                retained.append((topic_to_key(topic),
                                 wire.record(message) if message.payload else b""))
        records: dict[int, bytes] = {}
        seq_of: dict[int, int] = {}  # id(first message of a run) -> its seq (0: none)
        for run in all_runs:
            self._write_run(run, acks_of, records, seq_of)
        # 2. Live: each message to the nodes that want it, in order
        local_trie = self.engine.trie
        connected = self.connected
        out: dict[str, wire.Outbox] = {}
        names: dict[str, bytes] = {}  # topics and origins encoded (wire.record_pieces)
        # A QoS 1/2 run goes live to every live node process, whatever this node
        # knows of its interest: each node reads it from the QoS stream anyway, and
        # the live copies keep its order with later runs on a node whose
        # announcement is not here yet (its stream copy would come after them).
        everyone: dict[str, Any] = {}
        floor = 0
        if all_runs:
            figures = self.wills.figures
            now = time.monotonic()
            everyone = {t: None for t, (seen, _) in list(figures.items())
                        if t != own and now - seen <= NODE_TTL}
            started = self._live_started
            if started:  # a process that went silent starts again at its gate
                for token in [t for t in started if t not in everyone]:
                    started.discard(token)
            floor = self.qos.resolved_floor
        add_qos0 = wire.add_qos0
        tables = self.names_out
        interest = remote.trie
        count = len(messages)
        i = 0
        while i < count:
            if live:  # the common case, compiled: QoS 0 without shared groups
                i = add_qos0(messages, i, interest, out, names, tables)
                if i == count:
                    break
            message = messages[i]
            i += 1
            qos = message.qos
            if qos == 2:
                continue  # not live: exactly once rests on the stream (qos_stream.py)
            matches = remote.match(message.topic)
            direct = matches.direct
            shared = matches.shared
            if not qos:
                if not direct and not shared:
                    continue
                if not live:
                    self.dropped += 1
                    continue
                reliable = False
                batch = [message]
            else:
                reliable = True
                if everyone:
                    direct = {**everyone, **direct}
                run = run_of[id(message)]
                if run[0] is not message:
                    continue  # sent with the first message of its run
                batch = run
                if not live:
                    self.dropped += len(batch)
                    continue
            dests: dict[str, list[bytes]] = {}
            if not shared:
                for m in batch:
                    entry = wire.item(records.get(id(m)) or wire.record(m), [])
                    for token in direct:
                        lst = dests.get(token)
                        if lst is None:
                            lst = dests[token] = []
                        lst.append(entry)
            else:
                here = {(g, f): len(ms) for g, f, ms in local_trie.match(message.topic).shared}
                for m in batch:
                    rec = records.get(id(m)) or wire.record(m)
                    groups_of: dict[str, list[GroupKey]] = {token: [] for token in direct}
                    for group, topic_filter, members in shared:
                        key = (group, topic_filter)
                        mine = here.get(key)
                        if mine is not None and not connected:
                            chosen = own  # _share_pick kept it here
                        else:
                            weights = remote.groups.get(key) or {}
                            candidates = [(e.client_id, weights.get(e.client_id, 1))
                                          for e in members]
                            if mine is not None:
                                candidates.append((own, mine))
                            chosen = share.pick(m, group, topic_filter, candidates)
                        if chosen != own:
                            groups = groups_of.get(chosen)
                            if groups is None:
                                groups = groups_of[chosen] = []
                            groups.append(key)
                        if reliable:  # they see the live copy, not only the stream's
                            for e in members:
                                if e.client_id not in groups_of:
                                    groups_of[e.client_id] = []
                    for token, groups in groups_of.items():
                        lst = dests.get(token)
                        if lst is None:
                            lst = dests[token] = []
                        lst.append(wire.item(rec, groups))
            seq = seq_of.get(id(batch[0]), 0) if reliable else 0
            if reliable:
                self._gate_live(dests, seq, floor)
            for token, items in dests.items():
                box = out.get(token)
                if box is None:
                    box = out[token] = tables.outbox(token)
                if reliable:
                    box.part(seq, items)
                else:
                    box.add(items[0])
        commands = self._commands
        for token, box in out.items():
            subject = f"{prefix}.node.{token}"
            for payload, count in box.batches(self.sender):
                commands.append((_PUB, subject, payload, count))
                self._pending_pubs += count
        for name, value in retained:
            commands.append((_RETAIN, name, value, 0))

    def _gate_live(self, dests: dict[str, list[bytes]], seq: int, floor: int) -> None:
        """The gate of a sender's first live QoS 1 part on a node (docs/cluster.md, "A
        sender's first live part seen on a node"; [MQTT-4.6.0-5]): a run with ``seq``
        goes live to a destination this node has not sent a live part to yet (since it
        last connected to NATS and since the destination last entered the routing
        index) only when every write below it is resolved (``floor``:
        :attr:`QosStream.resolved_floor` once this turn's writes are numbered), so that
        the consumer position the receiver asks for after that part covers every
        stored write below it. Otherwise the destination gets the run through the
        stream only (its reader routes it, in the stream's order). A run sent live
        with seq 0 (longer than one chunk, or live only: a subject NATS refuses) is
        neither gated nor opens the gate: it goes live as before (not ordered with
        the stream's copies)."""
        if not seq:
            return
        started = self._live_started
        for token in [t for t in dests if t not in started]:
            if floor >= seq - 1:
                started.add(token)
                log.debug("cluster: first live QoS 1 part to %s: seq %d (writes up to "
                          "%d resolved)", token, seq, floor)
            else:
                del dests[token]

    def _write_run(self, run: list[Message], acks_of: dict[int, list[HeldAck]],
                   records: dict[int, bytes], seq_of: dict[int, int]) -> None:
        """Write one topic's run of QoS 1/2 messages to the QoS stream (in chunks
        within NATS's max_payload), remembering each message's record and the run's
        seq (a run longer than one chunk goes live with seq 0: it is not deduplicated
        against its stream copies, only ever in a huge burst)."""
        qos = self.qos
        topic = run[0].topic
        recs = []
        for m in run:
            rec = records[id(m)] = wire.record(m)
            recs.append(rec)
        subject_of = self._subject_of
        subject = subject_of.get(topic)
        if subject is None:
            if len(subject_of) >= NAME_CACHE:
                subject_of.clear()
            subject = subject_of[topic] = topic_to_subject(self.prefix, topic)
        acks = [acks_of.get(id(m), []) for m in run]
        if len(subject) > MAX_SUBJECT:  # NATS would refuse it: live copies only, counted
            self.refused += len(run)
            qos.unreplicated += len(run)
            qos.release([a for lst in acks for a in lst])
            return
        stream_subject = qos.subject_prefix + subject[len(self.prefix):]
        start = 0
        chunks = 0
        while start < len(recs):
            end = start
            size = 0
            while end < len(recs) and end - start < wire.MAX_BATCH and (
                    size < wire.MAX_BATCH_BYTES or end == start):
                size += len(recs[end])
                end += 1
            self.seq += 1
            chunks += 1
            qos.write(stream_subject, f"{self.sender.decode()}:{self.seq}",
                      wire.encode(self.sender, self.seq, recs[start:end]),
                      end - start, [a for lst in acks[start:end] for a in lst],
                      seq=self.seq)
            start = end
        seq_of[id(run[0])] = self.seq if chunks == 1 else 0

    def _present(self, pair: Pair) -> bool:
        """Is (client id, filter as subscribed) a subscription now? (The session's
        subscriptions are the per-client index; the trie indexes by filter only.)"""
        session = self.engine.registry.sessions.get(pair[0])
        return session is not None and pair[1] in session.subscriptions

    def _interest_changed(self, touched: list[Pair]) -> None:
        self._announce(self.interest.update(touched, self._present))

    def _announce(self, changes: list[tuple[str, int]]) -> None:
        """Put (count > 0) or delete this node's announcements of these filters."""
        commands = self._commands
        own = self._own_keys
        for announced, count in changes:
            key = interest_key(self.token, announced)
            if count:
                own[key] = announced
                commands.append((_ANNOUNCE, key, encode_value(announced, count), 0))
            else:
                own.pop(key, None)
                commands.append((_ANNOUNCE, key, b"", 0))
        if commands:
            self._wake.set()

    # --------------------------------------------------------------- I/O
    async def _connect(self) -> NatsClient:
        """Connect, retrying for ever (nats-py retries the first connection too when
        reconnects are unlimited; each failure comes to :meth:`_error`)."""
        config = self.config
        # nats-py reads its socket DEFAULT_BUFFER_SIZE (32 KB) at a time, with its
        # StreamReader's limit the same (reading paused above 64 KB buffered); it reads
        # the module global at each connect and each read. A batch from another node
        # is ~50-100 KB (700-1,500 QoS 0 messages of 64 B): 2-4 reads, parses and
        # buffer regrowths each, and pauses of the transport. 1 MiB: one of each.
        nats.aio.client.DEFAULT_BUFFER_SIZE = max(nats.aio.client.DEFAULT_BUFFER_SIZE,
                                                  NATS_READ_SIZE)
        tls: ssl.SSLContext | None = None
        if config.nats_tls is not None:
            t = config.nats_tls
            tls = ssl.create_default_context(cafile=t.cafile)
            if t.certfile is not None:
                tls.load_cert_chain(t.certfile, t.keyfile)
        nc = NatsClient()
        # the batches' read path (natsread.py), else nats-py's own: the version
        # natsread.py was not tested with, or asked for (NATS_READ_ENV)
        own = os.environ.get(NATS_READ_ENV, "") == "nats"
        if not own and usable():
            nc._ps = BatchParser(nc, self._batch)
        if not self._told_parser:
            self._told_parser = True
            log.info("cluster: batches read by %s (nats-py %s; natsread.py tested with "
                     "%s)", "natsread.py" if isinstance(nc._ps, BatchParser) else
                     "nats-py's own path", nats.aio.client.__version__,
                     ", ".join(sorted(TESTED_NATS)))
        await nc.connect(
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
        return nc

    async def _run(self) -> None:
        nc = await self._connect()
        self.nc = nc
        self.connected = True
        self.sessions.nats_connected(nc)  # the connect gate waits for the buckets now
        self._warned = False
        log.info("cluster: node %s connected to NATS %s", self.config.node_name,
                 nc.connected_url.netloc if nc.connected_url else "?")
        self._sub = await nc.subscribe(self.node_subject, cb=self._on_batch)
        parser = nc._ps
        if isinstance(parser, BatchParser):  # its messages straight to _batch
            parser.sid = self._sub._id
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_retained(nc)))
        self._tasks.append(loop.create_task(self.ownership.run(nc)))
        self._tasks.append(loop.create_task(self.wills.run(nc.jetstream())))
        self._tasks.append(loop.create_task(self.qos.run(nc.jetstream())))
        self._tasks.append(loop.create_task(self.sessions.run(nc)))
        self._tasks.append(loop.create_task(self.orphans.run()))
        # announcements go into the bucket's stream: it must exist first
        interest = await self._open_bucket(nc, self.interest_bucket,
                                           "iotbroker announced interest (docs/cluster.md)")
        self.interest_kv = interest
        self._tasks.append(loop.create_task(self._watch_interest(interest)))
        self._tasks.append(loop.create_task(self._sweep_loop()))
        commands = self._commands
        wake = self._wake
        # batches framed by natswrite.py (no copies), else nats-py's publish
        fast = isinstance(parser, BatchParser) and raw_publish_usable()
        while True:
            if not commands:
                wake.clear()
                await wake.wait()
                continue
            kind, name, payload, count = commands.popleft()
            try:
                if kind == _PUB:
                    self._pending_pubs -= count
                    if fast:
                        await raw_publish(nc, name, payload)
                    else:
                        await nc.publish(name, payload)
                    self.forwarded += count
                else:
                    # Straight into the bucket's stream, without waiting for its ack:
                    # the ordered queue keeps its pace (docs/cluster.md, "Retained",
                    # "Routing by announced interest").
                    bucket = self.bucket if kind == _RETAIN else self.interest_bucket
                    subject = f"$KV.{bucket}.{name}"
                    if payload:
                        await nc.publish(subject, payload)
                    else:
                        await nc.publish(subject, b"", headers=_DELETE_HEADERS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if kind == _PUB:
                    self.dropped += count
                log.warning("cluster: NATS %s %r failed: %s",
                            "publish" if kind == _PUB else "KV put", name, exc)

    async def _open_bucket(self, nc: NatsClient, bucket: str, description: str) -> KeyValue:
        return await open_bucket(nc.jetstream(), bucket, self.config.replicas, description)

    async def _watch_interest(self, kv: KeyValue) -> None:
        """Index the other nodes' announcements (:class:`RemoteInterest`) from a watch
        of the interest bucket: every key's last value first, then each change. A
        deletion of one of this node's own keys that it still holds (another node took
        it for dead during a NATS outage) is answered by announcing it again."""
        watcher = await kv.watchall()
        self._watchers.append(watcher)
        remote = self.remote
        own = self.token
        async for entry in watcher:
            if entry is None:
                if not self.interest_synced:
                    self.interest_synced = True
                    log.info("cluster: %d filters of %d other nodes from bucket %r",
                             len(remote), len(remote.active), self.interest_bucket)
                continue
            key = entry.key
            deleted = entry.operation in (KV_DEL, KV_PURGE) or not entry.value
            try:
                if key.partition(".")[0] == own:
                    announced = self._own_keys.get(key)
                    if deleted and announced is not None:
                        self._announce([(announced, self.interest.count(announced))])
                elif deleted:
                    remote.delete(key)
                else:
                    remote.put(key, entry.value, time.monotonic())
            except Exception as exc:
                self.undecodable += 1
                log.warning("cluster: undecodable interest entry %r: %s", key, exc)

    async def _sweep_loop(self) -> None:
        """Other processes' liveness for the interest index: heartbeats (the nodes
        bucket, :mod:`iotbroker.cluster.wills`) or announcements within NODE_TTL keep
        a process in; one silent for FORGET_SECONDS has its announcements deleted."""
        remote = self.remote
        figures = self.wills.figures
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            for token, (seen, _) in list(figures.items()):
                remote.heard(token, seen)
            own = figures.get(self.token)
            if own is None or now - own[0] > NODE_TTL:
                # This node does not hear its own heartbeat (NATS or the watch is not
                # back yet): it cannot tell who is silent.
                continue
            changed, gone = remote.sweep(now, NODE_TTL, self.forget_seconds)
            self._forget_names(now)
            self._forget_senders(now)
            self._forget_processes(now)
            for token in changed:
                log.info("cluster: node process %s %s the routing index", token,
                         "back in" if token in remote.active else "silent: out of")
                self._live_started.discard(token)  # its next first live part: gated
            if gone and self.connected:
                for key in gone:
                    self._commands.append((_ANNOUNCE, key, b"", 0))
                self._wake.set()

    def _forget_names(self, now: float) -> None:
        """Drop the name dictionaries of processes silent for FORGET_SECONDS (a
        restarted node is a new process: its old ones would never be used again)."""
        figures = self.wills.figures
        names_out = self.names_out
        forget = self.forget_seconds
        for token in list(names_out.tables):
            seen = figures.get(token)
            if seen is not None and now - seen[0] > forget:
                names_out.forget(token)
        for sender in list(self.names_in):
            seen = figures.get(owner_token(sender))
            if seen is not None and now - seen[0] > forget:
                del self.names_in[sender]

    def _forget_senders(self, now: float) -> None:
        """Drop the receive state (the Dedup window: up to 65,536 seqs; the LiveOrder)
        of sending processes silent for longer than the bound — FORGET_SECONDS, at
        least the QoS stream's duplicate window (docs/cluster.md, "Forgetting dead
        senders"): a restarted node is a new sender, its old state would be kept for
        ever. Only once it is safe: the sender's writes may still have stream copies
        this node's reader has not routed (forgetting then would route them twice), so
        the stream's last sequence is asked for (its leader's answer, from
        :meth:`_ask_stream_end`) once the sender is found silent, and the state goes
        when the reader (which routes every subject in stream order) has passed it."""
        bound = max(self.forget_seconds, float(self.qos.limits.duplicate_window))
        figures = self.wills.figures
        dedup = self.dedup
        silent: list[bytes] = []
        senders = set(dedup.senders())
        senders.update(self._live_order)
        for sender in senders:
            seen = figures.get(owner_token(sender))
            if seen is not None:
                self._unheard.pop(sender, None)
                quiet = now - seen[0]
            else:  # never heard here: counted from when it was first noticed
                quiet = now - self._unheard.setdefault(sender, now)
            if quiet <= bound:
                self._forget_at.pop(sender, None)  # heard again: it was not dead
                continue
            order = self._live_order.get(sender)
            if order is not None and order.held:
                continue  # (routed within GAP_WAIT: _check_reorder)
            last = self._forget_at.get(sender)
            if last is None:
                silent.append(sender)
                continue
            reader_next = self.qos.next_to_route
            if reader_next is None or reader_next <= last:
                continue
            seqs = dedup.forget(sender)
            self._live_order.pop(sender, None)
            del self._forget_at[sender]
            self._unheard.pop(sender, None)
            self.senders_forgotten += 1
            log.info("cluster: forgot sending process %s, silent for %.0fs (bound "
                     "%.0fs): its dedup window of %d seqs and its live order dropped "
                     "(the QoS stream reader has routed past sequence %d)",
                     sender.decode(errors="replace"), quiet, bound, seqs, last)
        if silent and (self._end_ask is None or self._end_ask.done()):
            self._end_ask = asyncio.get_running_loop().create_task(
                self._ask_stream_end(silent))

    def _forget_processes(self, now: float) -> None:
        """Drop the last heartbeat figures (``wills.figures``) of processes silent for
        longer than the senders' bound (:meth:`_forget_senders`) once nothing else of
        them is kept here (their senders' dedup windows and live orders, their name
        tables): one small entry per dead process otherwise, kept for ever (issue 14,
        i14-robust). A process heard again has its entry again at its heartbeat."""
        figures = self.wills.figures
        bound = max(self.forget_seconds, float(self.qos.limits.duplicate_window))
        silent = [(t, seen) for t, (seen, _) in list(figures.items())
                  if now - seen > bound and t != self.token]
        if not silent:
            return
        held = set(self.names_out.tables)
        for senders in (self.dedup.senders(), self._live_order, self._forget_at,
                        self.names_in):
            held.update(owner_token(sender) for sender in senders)
        for token, seen in silent:
            if token not in held:
                self.wills.forget(token)
                log.info("cluster: forgot node process %s, silent for %.0fs (bound "
                         "%.0fs): its last figures dropped", token, now - seen, bound)

    async def _ask_stream_end(self, senders: list[bytes]) -> None:
        """The QoS stream's last sequence, from its leader (a replica that has just
        restarted may answer with a state behind it: :meth:`QosStream.leader_info`),
        into ``_forget_at`` for ``senders``; on no answer within :data:`END_TIMEOUT`,
        asked again on a later sweep."""
        qos = self.qos
        js = qos.js
        if js is None:  # the reader has not joined the stream yet
            return
        try:
            info = await asyncio.wait_for(qos.leader_info(js), END_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("cluster: QoS stream %r info (to forget silent senders): %s",
                      qos.stream, exc)
            return
        if info is None:
            log.debug("cluster: QoS stream %r info answered by a replica; asked again",
                      qos.stream)
            return
        last = int(info.state.last_seq or 0)
        for sender in senders:
            self._forget_at.setdefault(sender, last)

    async def _watch_retained(self, nc: NatsClient) -> None:
        """Index the retained bucket in memory (the engine's retained store) from a
        watch: the last value of every key first, then each change, in the bucket's
        order on every node. Once caught up, retained messages this node kept (on disk)
        that the bucket no longer has are dropped: the bucket is the truth."""
        kv = await self._open_bucket(nc, self.bucket,
                                     "iotbroker retained messages (docs/cluster.md)")
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
            self._announce(self.interest.reconcile(self._present))

    async def _on_batch(self, msg: Msg) -> None:
        """nats-py's callback of the node's subscription (when :mod:`natsread
        <iotbroker.cluster.natsread>` is not in use, or for a message its queue
        held first): :meth:`_batch`."""
        self._batch(msg.data, msg.subject)

    def _batch(self, data: bytes, subject: bytes | str) -> None:
        """A batch another node sent to this one (:func:`wire.decode_batch`): each
        message routed here once, to the shared groups the sender gave it to here.
        A name dictionary control message (wire.py) from a node this one sends to is
        handled here too (same subject). Called by nats-py's parser
        (:class:`~iotbroker.cluster.natsread.BatchParser`) in its read task, or by
        :meth:`_on_batch`."""
        if data[:1] == _CONTROL:
            self._on_control(data)
            return
        books = self.names_in
        trie = self.engine.trie
        capturing = self.sessions.capturing  # a session being resumed (sessions.py)
        try:
            # The common case, compiled: NAMED parts only (plain QoS 0), each
            # message routed as it is decoded (wire.scan_named, wire.route_named)
            fast = None if capturing else wire.scan_named(data, books)
            if fast is None:
                sender, parts = wire.decode_batch(data, books, trie)
        except Exception as exc:
            self.undecodable += 1
            n = self.undecodable
            if not n & (n - 1):  # the 1st, 2nd, 4th, 8th...: a node of another
                # version (a rolling upgrade) sends one per turn
                log.warning("cluster: undecodable batch on %r (%d so far; a node of "
                            "another version?): %s",
                            subject if isinstance(subject, str) else subject.decode(
                                errors="replace"), n, exc)
            return
        if fast is not None:
            self.received += wire.route_named(fast, trie, self.engine.router, time.time())
            if fast.book.learned or fast.book.unknown:
                self._answer(fast.sender, fast.book)
            self.schedule_flush()
            return
        # A retained one is kept here by routing too; the bucket's watch brings it
        # (or a later one) soon after: docs/cluster.md, "Retained messages".
        now = time.time()
        route = self.engine.route_remote
        dedup = self.dedup
        received = 0
        routed: list[Message] = []
        order: wire.LiveOrder | None = None
        floor = self.sessions.floor()  # its stream copy comes after (sessions.py)
        no_groups = wire.NO_GROUPS
        route_many = self.engine.route_remote_many
        route_matched = self.engine.route_remote_matched
        book = books[sender]
        found = book.found  # trie.match of each NAMED part's messages, in order
        version = trie.version
        named = 0
        for seq, messages, groups_of in parts:
            if seq:
                for message in messages:
                    message.stream_seq = floor
                order = self._live_order.get(sender)
                if order is None:
                    order = self._live_order[sender] = wire.LiveOrder.first(
                        dedup, sender, seq)
                    log.debug("cluster: first live QoS 1 part of %s here: seq %d (seq %d "
                              "routed from the stream: %s; stream reader at %s)%s",
                              sender.decode(errors="replace"), seq, seq - 1,
                              dedup.seen(sender, seq - 1), self.qos.next_to_route,
                              "; held until the stream reader has passed its writes "
                              "below it" if order.contig == wire.UNSYNCED else "")
                if seq > order.advance(dedup, sender) + 1:
                    # a live copy before it was lost: wait for the stream's (LiveOrder)
                    order.held[seq] = (messages, groups_of)
                    if not order.since:
                        order.since = time.monotonic()
                    self._arm_reorder()
                    continue
                if not dedup.first(sender, seq):  # the QoS stream's copy came first
                    self.duplicates += 1
                    continue
                order.contig = max(order.contig, seq)
            if groups_of is None:  # a NAMED part: no shared groups
                if trie.version == version:  # (a delivery may end a session)
                    route_matched(messages, found[named], now, no_groups)
                else:
                    route_many(messages, now, no_groups)
                named += 1
            else:
                for message, groups in zip(messages, groups_of, strict=True):
                    route(message, now, groups)
            if capturing:
                routed += messages
            received += len(messages)
        self.received += received
        book.found = []
        if book.learned or book.unknown:
            self._answer(sender, book)
        if order is not None and order.held:
            self._route_held(sender, order, False, routed if capturing else None)
        if routed:
            self.sessions.capture(routed)
        self.schedule_flush()

    def _answer(self, sender: bytes, book: wire.NameBook) -> None:
        """Tell ``sender`` which name ids of its NAMED parts this node now holds (it
        names them by id alone from then on), or that it met ids it does not hold
        (counted in ``messages/unnamed``; asked again at most once a second per
        generation): wire.py, "The dictionary on a lossy fabric"."""
        subject = f"{self.prefix}.node.{owner_token(sender)}"
        commands = self._commands
        if book.learned:
            ids = list(dict.fromkeys(book.learned))
            book.learned = []
            commands.append((_PUB, subject, wire.encode_control(
                self.sender, wire.KNOWN, book.generation, ids), 0))
        if book.unknown:
            self.unnamed += book.unknown
            book.unknown = 0
            now = time.monotonic()
            if book.asked != book.generation or now - book.asked_at > 1.0:
                book.asked = book.generation
                book.asked_at = now
                log.warning("cluster: messages from %s name ids this node does not hold "
                            "(%d dropped so far); asking it for a new name table",
                            sender.decode(errors="replace"), self.unnamed)
                commands.append((_PUB, subject, wire.encode_control(
                    self.sender, wire.RESET, book.generation, []), 0))
        self._wake.set()

    def _on_control(self, data: bytes) -> None:
        """A destination confirms name ids, or asks for a new generation."""
        try:
            sender, op, generation, ids = wire.decode_control(data)
        except ValueError as exc:
            self.undecodable += 1
            log.warning("cluster: undecodable name control message: %s", exc)
            return
        table = self.names_out.tables.get(owner_token(sender))
        if table is None:
            return
        if op == wire.KNOWN:
            table.confirmed(generation, ids)
        elif table.reset(generation):
            self.name_resets += 1
            log.info("cluster: %s lost its names of generation %d; new name table",
                     sender.decode(errors="replace"), generation)

    def _route_held(self, sender: bytes, order: wire.LiveOrder, force: bool,
                    routed: list[Message] | None) -> None:
        """Route the live parts of ``sender`` whose gap has been filled (or, with
        ``force``, waited for long enough), in sequence order."""
        dedup = self.dedup
        if order.contig == wire.UNSYNCED and not self._synced(sender, order):
            if not force:
                return
            log.warning("cluster: the QoS stream reader did not pass the writes of %s "
                        "below seq %d within %.0fs: its %d live QoS 1 parts held meanwhile "
                        "are routed now (not in order with those writes)",
                        sender.decode(errors="replace"), order.start, GAP_WAIT,
                        len(order.held))
        now = time.time()
        route = self.engine.route_remote
        floor = self.sessions.floor()
        for seq, (messages, groups_of) in order.ready(dedup, sender, force):
            if not dedup.first(sender, seq):
                self.duplicates += 1
                continue
            for message, groups in zip(messages, groups_of, strict=True):
                message.stream_seq = floor
                route(message, now, groups)
            if routed is not None:
                routed += messages
            self.received += len(messages)
        self.schedule_flush()

    def _synced(self, sender: bytes, order: wire.LiveOrder) -> bool:
        """A sender's first live parts seen here wait for the stream reader to pass
        its writes below them (:meth:`wire.LiveOrder.synced`). When neither the write
        below the first part nor that part's own stream copy has been routed within
        :data:`SYNC_ASK` seconds (writes that never reached the stream: the sender had
        not joined it yet, or gave up), the consumer's position is asked for (again
        every SYNC_ASK until answered)."""
        if order.synced(self.dedup, sender, self.qos.next_to_route):
            log.debug("cluster: live QoS 1 parts of %s from seq %d routed in order after "
                      "the stream reader's (held %.0f ms)", sender.decode(errors="replace"),
                      order.start, (time.monotonic() - order.since) * 1000)
            return True
        now = time.monotonic()
        if (order.target == -1 and now - order.since > SYNC_ASK
                and now - order.asked > SYNC_ASK):
            order.target = -2
            order.asked = now
            task = asyncio.get_running_loop().create_task(self._stream_target(order))
            self._asks.add(task)
            task.add_done_callback(self._asks.discard)
        return False

    async def _stream_target(self, order: wire.LiveOrder) -> None:
        """The last stream message this node's consumer has to route as of now (0:
        nothing left to route) into ``order.target``; -1 when not known (the reader has
        not joined the stream, NATS did not answer): asked again later."""
        qos = self.qos
        js = qos.js_reader
        target = -1
        try:
            if js is not None and qos.js is not None:
                info = await js.consumer_info(qos.stream, qos.durable, timeout=2.0)
                pending = int(info.num_pending or 0)
                delivered = info.delivered.stream_seq if info.delivered is not None else 0
                target = 0 if not pending and not info.num_ack_pending else (
                    int(delivered or 0) + pending)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("cluster: consumer %r info: %s", qos.durable, exc)
        if order.contig == wire.UNSYNCED:
            order.target = target

    def _arm_reorder(self) -> None:
        if self._reorder_timer is None:
            self._reorder_timer = asyncio.get_running_loop().call_later(
                REORDER_CHECK, self._check_reorder)

    def _check_reorder(self) -> None:
        """Held live parts: routed once the stream reader filled their gap, or after
        :data:`GAP_WAIT` anyway (the write that left the gap never reached the stream)."""
        self._reorder_timer = None
        now = time.monotonic()
        waiting = False
        capturing = self.sessions.capturing
        for sender, order in list(self._live_order.items()):
            if not order.held:
                continue
            routed: list[Message] | None = [] if capturing else None
            self._route_held(sender, order, now - order.since > GAP_WAIT, routed)
            if routed:
                self.sessions.capture(routed)
            waiting = waiting or bool(order.held)
        if waiting:
            self._arm_reorder()

    async def _announce_again(self) -> None:
        """After a reconnect: when the interest bucket answers (within a minute),
        announce every filter of this node again."""
        kv = self.interest_kv
        deadline = time.monotonic() + 60.0
        while kv is not None and time.monotonic() < deadline:
            try:
                await kv.status()
                break
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.5)
        self._announce(self.interest.items())

    async def _disconnected(self) -> None:
        self.sessions.nats_lost()  # the connect gate: this node's state (sessions.py)
        self._live_started.clear()  # receivers may forget this sender meanwhile
        if self._degrade_timer is None:
            self._degrade_timer = asyncio.get_running_loop().call_later(
                GRACE, self.qos.degrade, True)
        if self.connected:
            self.connected = False
            log.warning("cluster: node %s lost NATS; serving local clients only",
                        self.config.node_name)

    async def _reconnected(self) -> None:
        self._live_started.clear()  # first live parts gated again (_gate_live)
        if self._degrade_timer is not None:
            self._degrade_timer.cancel()
            self._degrade_timer = None
        self.qos.degrade(False)
        self.connected = True
        self.sessions.nats_back()  # the connect gate waits for the buckets to answer
        self._warned = False
        # Others may have taken this node for dead meanwhile, and what was announced
        # during the outage went nowhere: announce everything again, once the bucket
        # takes writes (a restarted NATS cluster elects the stream's leader later)
        if self._resync is None or self._resync.done():
            self._resync = asyncio.get_running_loop().create_task(self._announce_again())
            self._tasks.append(self._resync)
        nc = self.nc
        log.info("cluster: node %s reconnected to NATS %s", self.config.node_name,
                 nc.connected_url.netloc if nc is not None and nc.connected_url else "?")

    async def _error(self, exc: Exception) -> None:
        if self.connected:
            log.warning("cluster: NATS error: %s", exc)
            return
        self.sessions.nats_lost()  # (the first connection failed: the gate stops waiting)
        if not self._warned:  # once per outage, not once per retry
            self._warned = True
            if _refused_credentials(exc):
                # Reachable, but it says no: a configuration mistake, named as such.
                log.error("cluster: NATS %s refused the credentials of node %s (%s): %s; "
                          "the node serves its local clients only, retrying",
                          ", ".join(self.config.nats), self.config.node_name,
                          _credentials_in_use(self.config), exc)
                return
            log.warning("cluster: NATS %s unreachable (%s); node %s serves its local "
                        "clients only, retrying", ", ".join(self.config.nats), exc,
                        self.config.node_name)


def forget_seconds(environ: Mapping[str, str]) -> float:
    """FORGET_SECONDS, or :data:`FORGET_ENV` from ``environ`` (at least NODE_TTL: a
    process must be out of the routing index before it is forgotten)."""
    raw = environ.get(FORGET_ENV)
    if raw is None:
        return FORGET_SECONDS
    try:
        value = float(raw)
    except ValueError:
        log.warning("cluster: %s=%r is not a number of seconds; %.0f used",
                    FORGET_ENV, raw, FORGET_SECONDS)
        return FORGET_SECONDS
    return value if value >= NODE_TTL else NODE_TTL  # (NaN too)


def _refused_credentials(exc: Exception) -> bool:
    """nats-server answered the CONNECT with ``-ERR 'Authorization Violation'`` (a
    wrong or missing token, user/password or .creds): nats-py raises
    ``AuthorizationError`` on a running connection, a plain ``Error`` naming it at
    the first CONNECT."""
    return isinstance(exc, NatsAuthorizationError) or (
        "authorization violation" in str(exc).lower())


def _credentials_in_use(config: ClusterConfig) -> str:
    """Which configuration keys gave the credentials NATS refused (never their values)."""
    keys = [key for key, value in (("cluster.token", config.token),
                                   ("cluster.user/cluster.password", config.user),
                                   ("cluster.credentials_file", config.credentials_file))
            if value is not None]
    return ", ".join(keys) if keys else "none configured: the servers ask for some"
