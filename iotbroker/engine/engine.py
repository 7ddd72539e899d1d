"""The MQTT engine: what each event does to sessions, as synchronous code with no I/O.

Events come in as calls (a validated packet from a connection, a connection that
ended, a timer, a will that is due); what they cause comes out as data the server
applies (design.md, "an engine that returns effects"):

* packets to send are queued on the client's protocol
  :class:`~iotbroker.protocol.connection.Connection`, whose bytes the server pulls;
* connections to close are in :attr:`Engine.closing` (and ``client.close_requested``);
* storage changes are in :attr:`Engine.batch`, committed by the server before it
  writes any packet of the same turn (:meth:`Engine.commit`);
* the next timer is :meth:`Engine.next_deadline`; the server calls
  :meth:`Engine.run_timers` then;
* for a room that spreads messages beyond this process (the cluster), the messages
  accepted this turn are in :attr:`Engine.forwarding` and the subscriptions that may
  have changed in :attr:`Engine.interest_touched` (both ``None`` unless the room asked
  for them); a message from elsewhere comes back in through :meth:`Engine.route_remote`.

Acknowledgement codes are return values (``Router.publish``), a peer's violation is
turned into its reason code here (:meth:`Engine.fail`), and nothing here awaits,
reads a socket or knows the event loop: a test drives the whole broker with plain
:class:`~iotbroker.engine.client.Client` objects and a fake clock.

MQTT 3.1.1 §3 / MQTT 5.0 §3 (per-packet behaviour) and §4 (operational behaviour);
CONNECT negotiation is :mod:`iotbroker.engine.connect`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, replace
from typing import Any, Protocol

from iotbroker.codec.enums import ConnectReturnCode, PacketType, ReasonCode
from iotbroker.codec.packets import (
    NO_PROPERTIES,
    Auth,
    ConnAck,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from iotbroker.config import BrokerConfig, MqttConfig
from iotbroker.core.retained import RetainedStore
from iotbroker.core.router import EVERY_GROUP, Router
from iotbroker.core.session import ReceiveCheck, Session, SessionLimits
from iotbroker.core.sessions import SessionRegistry
from iotbroker.core.subscriptions import Matches, SubscriptionTrie
from iotbroker.core.topics import (
    is_broker_topic,
    parse_shared,
    topic_limit_problem,
    validate_subscription_filter,
    validate_topic_filter,
)
from iotbroker.engine.client import Client
from iotbroker.errors import MalformedPacket, MqttError, ProtocolViolation
from iotbroker.message import Message, write_key
from iotbroker.metrics import Metrics
from iotbroker.protocol.connection import ConnectionState
from iotbroker.storage.base import ChangeBatch, QueuedRecord, Store, StreamPosition, WillRecord

log = logging.getLogger("iotbroker.broker")

R = ReasonCode

# MQTT 3.1.1 CONNACK return codes (§3.2.2.3) for the v5 reason codes we refuse with.
V3 = ConnectReturnCode
V3_CONNACK: dict[int, int] = {
    R.UNSUPPORTED_PROTOCOL_VERSION: V3.UNACCEPTABLE_PROTOCOL_VERSION,
    R.CLIENT_IDENTIFIER_NOT_VALID: V3.IDENTIFIER_REJECTED,
    R.BAD_USER_NAME_OR_PASSWORD: V3.BAD_USERNAME_OR_PASSWORD,
    R.NOT_AUTHORIZED: V3.NOT_AUTHORIZED,
    R.SERVER_UNAVAILABLE: V3.SERVER_UNAVAILABLE,
    R.SERVER_BUSY: V3.SERVER_UNAVAILABLE,
    R.BAD_AUTHENTICATION_METHOD: V3.BAD_USERNAME_OR_PASSWORD,
    R.USE_ANOTHER_SERVER: V3.SERVER_UNAVAILABLE,
    R.SERVER_MOVED: V3.SERVER_UNAVAILABLE,
    R.BANNED: V3.NOT_AUTHORIZED,
}
#: Reason codes from 0x80 up report a failure (MQTT 5.0 §2.4).
FAILURE = R.UNSPECIFIED_ERROR


#: The ACL's decision on a PUBLISH: ``(client id, username, topic) -> allowed``.
PublishCheck = Callable[[str, str | None, str], bool]


class Authorization(Protocol):
    """The questions the engine asks the auth room (``server/auth_service.py`` answers)."""

    def may_publish(self, client_id: str, username: str | None, topic: str) -> bool: ...

    def may_subscribe(self, session: Session, topic_filter: str) -> bool: ...

    def receive_check(self) -> ReceiveCheck | None: ...

    def publish_check(self) -> PublishCheck | None:
        """:meth:`may_publish` as a callable, or None when every PUBLISH is allowed
        (no ACL): the PUBLISH path then makes no call (issue 19)."""


#: How the engine writes a per-connection log line (connected, disconnected, lost,
#: taken over): ``(logger, level, client, message, *args)``. The server passes its
#: fast path (``server/logsetup.py``); the default is plain logging.
ConnectionLog = Callable[..., None]

#: A room's admission rule at CONNECT (the admin room's bans): ``(client id, username,
#: peer address) -> why it is refused``, or None to let it in.
ConnectGate = Callable[[str, str | None, str], str | None]

#: A room's wait before a CONNECT is accepted (the cluster: the client's session may be
#: on another node, docs/cluster.md "Sessions move"): ``(client id, Clean Start) ->``
#: None to accept now, or an awaitable the acceptance waits for; it ends with None
#: (accept) or why the session could not be made ready (refused: 0x89 Server busy)
#: (:func:`iotbroker.engine.connect.wait_before_accept`).
AcceptWait = Callable[[str, bool], Awaitable[str | None] | None]


def _plain_connection_log(logger: logging.Logger, level: int, client: Client, message: str,
                          *args: object) -> None:
    logger.log(level, message, *args, extra=client.log_extra())


@dataclass(slots=True)
class HeldAck:
    """A QoS 1/2 PUBLISH accepted this turn whose PUBACK / PUBREC (``code``) waits
    for the cluster's replicated stream (:attr:`Engine.held_acks`). A QoS 2 one
    carries the id of its stream write (``write_id``); ``resend``: the same packet id
    again while that write is unacknowledged (not routed again)."""

    message: Message
    client: Client
    packet_id: int
    code: int
    write_id: str | None = None
    resend: bool = False


class ConnectLimits:
    """The ``config.mqtt`` values a CONNECT is checked and accepted with
    (engine/connect.py ``admit`` / ``accept``), read once into native fields (issue 19:
    they were ~8 look-ups by name per connection on the pydantic configuration). The
    engine's configuration is frozen and never replaced (``mqtt`` changes need a
    restart, ``Broker.reload`` says so), so a copy made at start stays right."""

    __slots__ = (
        "allow_zero_length_client_id",
        "max_client_id_length",
        "max_inflight",
        "max_keepalive",
        "max_session_expiry",
        "outbound_topic_aliases",
        "persistent_session_expiry_v311",
        "server_reference",
    )

    def __init__(self, mqtt: MqttConfig) -> None:
        self.max_client_id_length: int = mqtt.max_client_id_length
        self.allow_zero_length_client_id: bool = mqtt.allow_zero_length_client_id
        self.server_reference: str | None = mqtt.server_reference
        self.max_session_expiry: int = mqtt.max_session_expiry
        self.persistent_session_expiry_v311: int | None = mqtt.persistent_session_expiry_v311
        self.max_keepalive: int = mqtt.max_keepalive
        self.outbound_topic_aliases: bool = mqtt.outbound_topic_aliases
        self.max_inflight: int = mqtt.max_inflight


class Engine:
    """Sessions, subscriptions, retained messages and the MQTT rules that change them."""

    def __init__(
        self,
        config: BrokerConfig,
        store: Store,
        auth: Authorization,
        metrics: Metrics,
        *,
        connection_log: ConnectionLog = _plain_connection_log,
    ) -> None:
        self.config = config
        self.store = store
        self.auth = auth
        self.metrics = metrics
        self.connection_log = connection_log
        self.batch = ChangeBatch()
        self.trie = SubscriptionTrie()
        self.retained = RetainedStore()
        mqtt = config.mqtt
        #: ``config.mqtt``'s values that every PUBLISH (and a SUBSCRIBE's filters, a
        #: will's topic) is checked against, read once
        #: (the configuration is frozen, and the engine's is never replaced): native
        #: fields, not four look-ups by name per message on the interpreted
        #: configuration (issue 19, the per-message footprint).
        self._maximum_qos: int = mqtt.maximum_qos
        self._retain_available: bool = mqtt.retain_available
        self._max_topic_levels: int = mqtt.max_topic_levels
        self._max_topic_length: int = mqtt.max_topic_length
        #: What a CONNECT reads of ``config.mqtt`` (engine/connect.py), native.
        self.connect_limits = ConnectLimits(mqtt)
        limits = SessionLimits(
            max_queued_messages=mqtt.max_queued_messages,
            max_queued_bytes=mqtt.max_queued_bytes,
            drop_oldest=mqtt.queue_overflow == "drop-oldest",
        )
        self.registry = SessionRegistry(self.trie, self.batch, limits, metrics)
        self.registry.pager = self
        self.router = Router(
            self.registry,
            self.trie,
            self.retained,
            self.batch,
            metrics,
            shared_strategy=mqtt.shared_subscription_strategy,
            max_retained=mqtt.max_retained_messages,
        )
        # Every delivery to a session asks this one decision (issue 12).
        self.registry.gate.check = auth.receive_check()
        #: The ACL's decision on a client's PUBLISH, or None when there is no ACL.
        self.publish_check: PublishCheck | None = auth.publish_check()
        #: Connected clients by client id.
        self.clients: dict[str, Client] = {}
        #: Checked when a CONNECT is accepted (None: nobody refused; admin bans set it).
        self.connect_gate: ConnectGate | None = None
        #: Asked before a CONNECT is accepted (None: nobody waits; the cluster sets it).
        self.accept_wait: AcceptWait | None = None
        #: Effect: connections the server closes after this turn's writes.
        self.closing: list[Client] = []
        #: Client ids whose stored session record holds the will of a live connection
        #: (:meth:`store_live_will`): a restart after a crash publishes it.
        self.live_wills: set[str] = set()
        #: Effect (cluster, docs/cluster.md): messages accepted this turn from this
        #: process's clients and wills, to forward to other nodes; None: nobody asks.
        self.forwarding: list[Message] | None = None
        #: Effect (cluster): (client id, filter as subscribed) pairs whose presence in
        #: the trie may have changed this turn; None: nobody asks.
        self.interest_touched: list[tuple[str, str]] | None = None
        #: Effect (cluster): connections accepted this turn (their client ids are
        #: claimed cluster-wide); None: nobody asks.
        self.accepted: list[Client] | None = None
        #: Hook (bridges, docs/bridge.md "Loops"): called with the publisher's client
        #: id and the properties of an MQTT 5.0 PUBLISH that carries User Properties;
        #: True = the message has been in this broker already (a cycle of bridges):
        #: acknowledged, not routed. None: nobody asks.
        self.seen_before: Callable[[str, Properties], bool] | None = None
        #: Hook (bridges, bridge/peers.py): called with the client id and properties
        #: of an MQTT 5.0 CONNECT that carries User Properties, before its CONNACK;
        #: returns the User Properties of the CONNACK. None: nobody asks.
        self.bridge_hello: Callable[[str, Properties], tuple[tuple[str, str], ...]] | None = (
            None)
        #: Effect (cluster): connections that ended this turn (after their CONNACK);
        #: None: nobody asks.
        self.ended: list[Client] | None = None
        #: Effect (cluster): acknowledgements (PUBACK / PUBREC) of QoS 1/2 messages
        #: in :attr:`forwarding`, held until the cluster's replicated stream has the
        #: message (then :meth:`release_ack`); None: acks go out with the turn.
        self.held_acks: list[HeldAck] | None = None
        #: Hook (cluster, docs/cluster.md "QoS 2 exactly once"): makes the id of a
        #: QoS 2 message's stream write; None: not clustered.
        self.qos2_write_id: Callable[[], str] | None = None
        #: (client id, packet id) of QoS 2 PUBLISHes routed here whose stream write
        #: (its id) is not acknowledged yet: a PUBLISH with that id again gets its
        #: PUBREC when the write is acknowledged. Restored from the store.
        self.qos2_unreplicated: dict[tuple[str, int], str] = {}
        #: Effect (cluster, docs/cluster.md "QoS 2 across a move"): PUBCOMPs of a
        #: persistent session's released inbound QoS 2 ids, held until the release is
        #: in the session's replicated record (then :meth:`release_pubcomp`); None:
        #: PUBCOMP goes with the turn.
        self.held_pubcomps: list[tuple[Client, int]] | None = None
        #: The cluster QoS stream consumers' positions, as stored (restore).
        self.stream_positions: dict[str, StreamPosition] = {}
        #: Storage commit timing, for metrics.
        self.storage_write_seconds = 0.0
        self.storage_write_max = 0.0
        self.storage_batch_max = 0
        #: False when the server syncs the store itself after the writes (group
        #: commit for ``durability: fsync``): commits then only write the log.
        self.sync_commits = True
        self._handlers: dict[PacketType, Callable[[Client, Any, float], None]] = {
            PacketType.PUBLISH: self.on_publish,
            PacketType.PUBACK: self.on_puback,
            PacketType.PUBREC: self.on_pubrec,
            PacketType.PUBREL: self.on_pubrel,
            PacketType.PUBCOMP: self.on_pubcomp,
            PacketType.SUBSCRIBE: self.on_subscribe,
            PacketType.UNSUBSCRIBE: self.on_unsubscribe,
            PacketType.PINGREQ: self.on_pingreq,
            PacketType.DISCONNECT: self.on_disconnect,
        }

    # ---------------------------------------------------------------- storage
    def restore(self, now: float, *, wills_elsewhere: bool = False) -> None:
        """Rebuild retained messages and sessions from the store (at start-up).

        ``wills_elsewhere`` (a cluster node): the QoS 1/2 wills of connections a crash
        left open are not published here; a surviving node published them
        (cluster/wills.py) and the cluster's QoS stream brings them to this node's
        sessions (docs/cluster.md, "Wills of a dead node")."""
        # Queued messages stay on disk (an index in memory) until their session comes
        # back: offline sessions cost bounded memory (issue 7).
        snapshot = self.store.load(queued_bodies=False, queued_summary=True)
        self.stream_positions = snapshot.stream_positions
        self.qos2_unreplicated = {(cid, pid): write_id
                                  for cid, ids in snapshot.inbound_pending.items()
                                  for pid, write_id in ids.items()}
        for message in snapshot.retained:
            if message.expired(now):
                self.batch.delete_retained(message.topic)
            else:
                self.retained.set(message)
        self.registry.restore(snapshot, now)
        if wills_elsewhere:
            pending = self.registry.pending_wills
            for client_id in [c for c, (_, will, _) in pending.items() if will.qos]:
                del pending[client_id]
        # Wills of connections that were open when the broker stopped without closing
        # them (a crash: kill -9, power loss) are stored with their session record; the
        # registry holds each one as pending from ``now`` (its Will Delay Interval runs
        # from the restart; a client that resumes in time cancels it [MQTT-3.1.3-9]).
        # A session without expiry ended with its connection: its will is due at once,
        # and its record (kept only for the will) goes in the same batch.
        for client_id, rec in snapshot.sessions.items():
            if rec.expiry_interval == 0:
                self.batch.delete_session(client_id)
        self.run_timers(now)
        if self.batch:
            self.commit()  # published once: a second crash does not publish them again

    def commit(self) -> None:
        """Apply the turn's storage batch (one WriteBatch) and clear it; timed for
        metrics. Raises StorageError, leaving the batch as it was."""
        batch = self.batch
        started = time.perf_counter()
        self.store.apply(batch, self.sync_commits)
        took = time.perf_counter() - started
        self.metrics.storage_batches += 1
        self.metrics.storage_changes += len(batch)
        self.storage_write_seconds += took
        self.storage_write_max = max(self.storage_write_max, took)
        self.storage_batch_max = max(self.storage_batch_max, len(batch))
        batch.clear()

    def load_queued(self, client_id: str) -> list[QueuedRecord]:
        """The :class:`~iotbroker.core.session.Pager` of every session: commit what
        this turn changed, then read the session's queued messages from the store."""
        if self.batch:
            self.commit()
        return self.store.load_queued(client_id)

    def get_queued(self, client_id: str, seq: int) -> QueuedRecord | None:
        """One queued message (the Pager's point read), after committing this turn."""
        if self.batch:
            self.commit()
        return self.store.get_queued(client_id, seq)

    def auth_changed(self) -> None:
        """The ACL was reloaded: queued, in-flight and retained deliveries follow the
        new rules from now on."""
        self.registry.gate.check = self.auth.receive_check()
        self.publish_check = self.auth.publish_check()

    def send_ready(self, now: float) -> None:
        """Move what sessions decided to send into their connections (the server calls
        this before it commits and writes, once per loop turn). A session detached
        meanwhile keeps its in-flight messages for the resend on resume."""
        ready = self.registry.ready
        while ready:
            if len(ready) == 1:
                # One session (the 1→1 case): no copy of the list (issue 19, objects
                # per message); what sending it makes ready comes round again. Taken
                # by clear(), not pop(): a pop to empty reallocates the item array to
                # 0 bytes (the C allocator, not pymalloc), and the next append back.
                session = ready[0]
                ready.clear()
                self._send_outbox(session, now)
                continue
            sessions = ready[:]
            ready.clear()
            for session in sessions:
                self._send_outbox(session, now)

    def _send_outbox(self, session: Session, now: float) -> None:
        """One ready session's outbox into its connection (:meth:`send_ready`)."""
        entries = session.outbox  # take_outbox(), inlined: the QoS 1 path
        session.outbox = None
        client = session.attached_to
        if not entries or not isinstance(client, Client):
            return
        for packet_id, delivery, dup in client.conn.send_outbox(entries, now):
            session.refused(packet_id, delivery, dup, now)

    def set_writable(self, client: Client, writable: bool, now: float) -> None:
        """The connection's write buffer crossed its high-water mark (False) or drained
        (True): QoS 0 is dropped and QoS 1/2 wait while it is full (slow consumer)."""
        session = client.session
        if session is not None and session.attached_to is client:
            session.writable = writable
            if writable:
                session.pump(now)

    def take_closing(self) -> list[Client]:
        """The connections to close (the server applies this effect once per event)."""
        closing, self.closing = self.closing, []
        return closing

    def take_forwarding(self) -> list[Message]:
        """The messages to forward to other nodes (the cluster room drains this once
        per turn, like :meth:`take_closing`)."""
        forwarding = self.forwarding
        if not forwarding:
            return []
        self.forwarding = []
        return forwarding

    def take_held_acks(self) -> list[HeldAck]:
        held = self.held_acks
        if not held:
            return []
        self.held_acks = []
        return held

    def release_ack(self, held: HeldAck) -> bool:
        """The replicated stream acknowledged the write of ``held``'s message: its
        PUBACK / PUBREC goes out now (MQTT 5.0 §4.3.2/§4.3.3: the receiver acks once it
        has taken ownership of the message). False when the connection is gone (the
        client sends the PUBLISH again when it reconnects)."""
        client = held.client
        if held.write_id is not None:
            self._qos2_replicated(client.client_id, held.packet_id, held.write_id)
        if client.close_requested or client.session is None:
            return False
        client.conn.send_publish_ack(held.message.qos, held.packet_id, held.code)
        return True

    def release_pubcomp(self, client: Client, packet_id: int) -> None:
        """The cluster made the release of an inbound QoS 2 id durable (held in
        :attr:`held_pubcomps`): its PUBCOMP goes now [MQTT-4.3.3-11], unless the
        connection is gone (a PUBREL re-sent later finds the id released: 0x92)."""
        if not client.close_requested and client.session is not None:
            client.conn.send_packet(PubComp(packet_id, R.SUCCESS))

    def _qos2_replicated(self, client_id: str, packet_id: int, write_id: str) -> None:
        """The stream has the QoS 2 message (or gave up on it): its id is plainly held
        from now on, in the store too, in the batch of the PUBREC's turn — a PUBLISH
        with that id again is a duplicate to acknowledge at once [MQTT-4.3.3-10]."""
        key = (client_id, packet_id)
        if self.qos2_unreplicated.get(key) != write_id:
            return  # released already (a resend's ack), or the id was reused since
        del self.qos2_unreplicated[key]
        session = self.registry.sessions.get(client_id)
        if session is not None and session.persistent and packet_id in session.inbound_qos2:
            self.batch.put_inbound_qos2(client_id, packet_id)

    def take_interest_touched(self) -> list[tuple[str, str]]:
        touched = self.interest_touched
        if not touched:
            return []
        self.interest_touched = []
        return touched

    def take_accepted(self) -> list[Client]:
        accepted = self.accepted
        if not accepted:
            return []
        self.accepted = []
        return accepted

    def take_ended(self) -> list[Client]:
        ended = self.ended
        if not ended:
            return []
        self.ended = []
        return ended

    def taken_over_elsewhere(self, client_id: str) -> bool:
        """Another node accepted a connection with this client id after this one did
        (the cluster's session owner changed): the connection here is told 0x8E
        Session taken over (v5) and closed [MQTT-3.1.4-3], as in a local takeover; it
        ends like a lost connection (its will goes out, its session stays here by its
        expiry). False when no such connection is here."""
        client = self.clients.get(client_id)
        if client is None or client.close_requested:
            return False
        self.metrics.session_takeovers += 1
        log.info("client %r (%s) taken over on another node", client_id, client.peer,
                 extra=client.log_extra())
        if client.conn.protocol_version == 5 and client.conn.connected:
            client.conn.send_packet(Disconnect(R.SESSION_TAKEN_OVER))
        self.close(client)
        return True

    def route_remote(self, message: Message, now: float,
                     shared: Container[tuple[str, str]] | None = None) -> int:
        """A message another node accepted: routed to this process's sessions (each
        delivery through ``Session.deliver``, so the read ACL applies) and never
        forwarded again. A retained one is kept here too. ``shared``: the shared
        groups (group, filter) the sending node gave it to here (MQTT 5.0 §4.8.2);
        None: the router's ``share_pick`` decides, as for a message published here."""
        return self.router.publish(message, now, shared)

    def route_remote_many(self, messages: list[Message], now: float,
                          shared: Container[tuple[str, str]] | None = None) -> None:
        """:meth:`route_remote` for each of ``messages`` in order, all with the same
        ``shared`` groups (a part of another node's batch)."""
        self.router.publish_many(messages, now, shared)

    def route_remote_matched(self, messages: list[Message], matches: list[Matches],
                             now: float,
                             shared: Container[tuple[str, str]] | None = None) -> None:
        """:meth:`route_remote_many` given each message's match of :attr:`trie`,
        taken at its current ``version`` (the cluster keeps them per name id)."""
        self.router.publish_matched(messages, matches, now, shared)

    def replace_retained(self, topic: str, message: Message | None) -> None:
        """The cluster's retained message of ``topic`` (its replicated copy) is
        ``message``, or none: kept here and on disk, delivered to nobody (it went out
        live when it was published). MQTT 5.0 §3.3.1.3."""
        if message is not None and message.payload:
            self.retained.set(message)
            self.batch.put_retained(message)
        elif self.retained.delete(topic):
            self.batch.delete_retained(topic)

    def close(self, client: Client) -> None:
        """Stop reading ``client`` and have the server close it after the writes."""
        if not client.close_requested:
            client.request_close()
            self.closing.append(client)

    # ----------------------------------------------------------------- events
    def handle(self, client: Client, packet: Packet, now: float) -> None:
        """One validated packet of a connected client (CONNECT and AUTH are the
        server's connect path: authentication may wait off the loop). A peer's
        violation becomes its reason code and a close (:meth:`fail`)."""
        try:
            # The two packets of every QoS 1 message are called directly: compiled
            # (mypyc), a direct call is native, a call through the table is not.
            if isinstance(packet, Publish):
                self.on_publish(client, packet, now)
            elif isinstance(packet, PubAck):
                self.on_puback(client, packet, now)
            else:
                self._handlers[packet.TYPE](client, packet, now)
        except MqttError as exc:
            self.fail(client, exc)

    def handle_read(self, client: Client, packets: list[Packet], now: float,
                    commit_after: int) -> int:
        """The packets of one read of a connected client, each through :meth:`handle`,
        in one compiled loop (the server's per-packet loop is interpreted; issue 19).
        Stops before a packet the server takes (AUTH, MQTT 5.0 §4.12, or any packet
        once the client has no session) and after one that leaves it something to do:
        a close (:attr:`closing`) or ``commit_after`` changes or more in the batch (an
        early commit). Returns how many packets were handled."""
        handled = 0
        for packet in packets:
            if client.session is None or isinstance(packet, Auth):
                break
            self.handle(client, packet, now)
            handled += 1
            if self.closing or len(self.batch.changes) >= commit_after:
                break
        return handled

    def fail(self, client: Client, exc: MqttError) -> None:
        """A client broke a rule: one log line, the right reason code, close."""
        if isinstance(exc, MalformedPacket):
            self.metrics.malformed_packets += 1
        else:
            self.metrics.protocol_errors += 1
        log.warning(
            "closing %s (%r): %s", client.peer, client.client_id or "-", exc,
            extra=client.log_extra(),
        )
        conn = client.conn
        if conn.connected:
            if conn.protocol_version == 5:
                reason = Properties(reason_string=exc.message[:200])
                conn.send_packet(Disconnect(exc.reason_code, reason))
        elif conn.state is ConnectionState.AUTHENTICATING or isinstance(exc, MalformedPacket):
            requested = getattr(exc, "protocol_level", None)
            if exc.reason_code == R.UNSUPPORTED_PROTOCOL_VERSION:
                # [MQTT-3.1.2-2]: CONNACK 0x01 (3.1.1) / 0x84 (5.0), then close.
                # "MQIsdp" is MQTT 3.1 whatever its level: the 3.1 / 3.1.1 form (3.1 §3.2).
                mqtt_name = getattr(exc, "protocol_name", "MQTT") == "MQTT"
                version = 5 if requested == 5 and mqtt_name else 4
                conn.protocol_version = version
                code = (R.UNSUPPORTED_PROTOCOL_VERSION if version == 5
                        else V3.UNACCEPTABLE_PROTOCOL_VERSION)
                conn.send_packet(ConnAck(False, code))
            elif conn.protocol_version == 5 and client.session is None:
                conn.send_packet(ConnAck(False, exc.reason_code))
        self.close(client)

    def store_live_will(self, session: Session, will: Will | None) -> None:
        """A connection was accepted with ``will`` (None: without one). The will is
        session state (MQTT 5.0 §4.1, MQTT 3.1.1 §3.1.2.4): it is stored with the
        session record while the connection is open, so that when the broker itself
        dies (kill -9, power loss) the restart publishes it (:meth:`restore`; issue
        18). A session without expiry gets a record for its will only."""
        client_id = session.client_id
        if will is None:
            if client_id in self.live_wills:
                self._forget_live_will(session)
            return
        rec = self.registry.record(session)
        props = will.properties
        self.batch.put_session(replace(rec, will=WillRecord(
            will.topic, will.payload, will.qos, will.retain, props,
            props.will_delay_interval or 0,
        )))
        self.live_wills.add(client_id)

    def _forget_live_will(self, session: Session) -> None:
        """The will stored by :meth:`store_live_will` is no longer a live connection's:
        a session that outlives the connection has had its record rewritten (with a
        pending delayed will, or none); the record of one without expiry is deleted."""
        client_id = session.client_id
        if client_id not in self.live_wills:
            return
        self.live_wills.discard(client_id)
        if session.persistent:
            if session.attached_to is not None:
                self.batch.put_session(self.registry.record(session))
        else:
            self.batch.delete_session(client_id)

    def keepalive_expired(self, client: Client) -> None:
        """No packet for 1.5 × Keep Alive [MQTT-3.1.2-24]: close; the will goes out."""
        self.metrics.keepalive_timeouts += 1
        log.info(
            "client %r (%s) keepalive timeout (%ss)", client.client_id, client.peer,
            client.conn.keepalive, extra=client.log_extra(),
        )
        if client.conn.protocol_version == 5:
            client.conn.send_packet(Disconnect(R.KEEP_ALIVE_TIMEOUT))
        self.close(client)

    def shutting_down(self, clients: list[Client]) -> None:
        """The broker stops: v5 clients are told 0x8B; no will goes out (a shutdown is
        not the client's fault)."""
        for client in clients:
            if client.conn.connected and client.conn.protocol_version == 5:
                client.conn.send_packet(Disconnect(R.SERVER_SHUTTING_DOWN))
            client.clean_disconnect = True
            self.close(client)
            session = client.session
            if session is not None and session.attached_to is client:
                self._forget_live_will(session)  # not published after a restart either

    # ------------------------------------------------------- admin actions
    def kick(self, client_id: str, reason_code: int = R.ADMINISTRATIVE_ACTION,
             reason: str = "") -> bool:
        """Disconnect a connected client on an operator's word: MQTT 5.0 clients get
        DISCONNECT with ``reason_code`` (0x98 Administrative action, MQTT 5.0
        §3.14.2.1); the will goes out, as for any close the client did not ask for
        (§3.1.2.5). False when no client of that id is connected."""
        client = self.clients.get(client_id)
        if client is None or client.close_requested:
            return False
        log.info("disconnecting client %r (%s) by administrative action%s", client_id,
                 client.peer, f": {reason}" if reason else "", extra=client.log_extra())
        if client.conn.connected and client.conn.protocol_version == 5:
            props = Properties(reason_string=reason[:200]) if reason else NO_PROPERTIES
            client.conn.send_packet(Disconnect(reason_code, props))
        self.close(client)
        return True

    def end_session(self, client_id: str, now: float) -> bool:
        """Delete a session on an operator's word: a connected client is disconnected
        (:meth:`kick`) and its session ends with the connection (expiry set to 0);
        an offline one ends now, with its subscriptions, queue and stored state, and a
        will it still holds goes out (a session's end sends it, MQTT 5.0 §3.1.3.2.2).
        False when there is no such session."""
        session = self.registry.get(client_id)
        if session is None:
            return False
        if session.attached_to is not None:
            self.registry.change_expiry(session, 0)
            self.kick(client_id)
            return True
        pending = self.registry.pending_wills.pop(client_id, None)
        self.registry.destroy(session)
        if pending is not None:
            self.publish_will(pending[1], client_id, pending[2], now)
        return True

    def delete_retained(self, topic: str) -> bool:
        """Remove the retained message on ``topic`` (memory and store) without
        publishing anything; False when there was none."""
        if not self.retained.delete(topic):
            return False
        self.batch.delete_retained(topic)
        return True

    def connection_closed(self, client: Client, reason: str, now: float) -> None:
        """The network connection of ``client`` is gone (any cause). Its will goes out
        unless it ended cleanly; its session is kept or ended by its expiry."""
        session = client.session
        if session is None:
            return
        client.session = None
        self.metrics.clients_connected -= 1
        if self.ended is not None:
            self.ended.append(client)
        will = None if client.clean_disconnect else client.will
        if client.taken_over:
            # This connection's will goes out now unless it has a Will Delay and the new
            # connection resumed the session (that cancels it [MQTT-3.1.3-9]); a Clean
            # Start ended the session, which sends a delayed will at once (§3.1.3.2.2).
            self.connection_log(log, logging.INFO, client,
                                "client %r (%s) closed after takeover",
                                client.client_id, client.peer)
            if will is not None and (
                not will.properties.will_delay_interval or client.session_ended_by_takeover
            ):
                self.publish_will(will, session.client_id, session.username, now)
            return
        if self.clients.get(client.client_id) is client:
            del self.clients[client.client_id]
        if not client.clean_disconnect and log.isEnabledFor(logging.INFO):
            self.connection_log(log, logging.INFO, client, "client %r (%s) connection lost%s",
                                client.client_id, client.peer, f": {reason}" if reason else "")
        self.router.redistribute(session, now)
        if self.interest_touched is not None:  # a clean session takes its filters along
            self.interest_touched.extend((session.client_id, f) for f in session.subscriptions)
        due = self.registry.close(session, now, will)
        self._forget_live_will(session)
        if due is not None:
            self.publish_will(due, session.client_id, session.username, now)

    # ---------------------------------------------------------------- timers
    def run_timers(self, now: float) -> None:
        """Session expiry, delayed wills and retained-message expiry due by ``now``."""
        registry = self.registry
        for client_id, username, will in registry.run_timers(now):
            self.publish_will(will, client_id, username, now)
            session = registry.get(client_id)
            if session is not None and session.persistent and session.attached_to is None:
                # The stored record must not hold a will already published: a restart
                # would publish it again (exactly once, issue 18).
                self.batch.put_session(registry.record(session))
        for topic in self.retained.drop_expired(now):
            self.batch.delete_retained(topic)

    def next_deadline(self) -> float | None:
        """When :meth:`run_timers` has something to do next (None: nothing pending)."""
        deadline = self.registry.next_deadline()
        retained_deadline = self.retained.next_expiry()
        if retained_deadline is not None and (deadline is None or retained_deadline < deadline):
            deadline = retained_deadline
        return deadline

    # --------------------------------------------------------------- PUBLISH
    def on_publish(self, client: Client, packet: Publish, now: float) -> None:
        session = client.session
        if session is None:
            raise ProtocolViolation("packet before CONNACK", spec_ref="MQTT-3.1.0-1")
        conn = client.conn
        v5 = conn.protocol_version == 5
        qos = packet.qos
        metrics = self.metrics
        metrics.count_received(qos)
        metrics.publish_bytes_received += len(packet.payload)
        if qos > self._maximum_qos:
            raise ProtocolViolation(
                f"QoS {qos} above Maximum QoS {self._maximum_qos}",
                reason_code=R.QOS_NOT_SUPPORTED,
                spec_ref="MQTT-3.2.2-11",
            )
        if packet.retain and not self._retain_available:
            raise ProtocolViolation(
                "RETAIN not supported", reason_code=R.RETAIN_NOT_SUPPORTED,
                spec_ref="MQTT-3.2.2-14",
            )
        topic = packet.topic
        if topic_limit_problem(topic, self._max_topic_levels,
                               self._max_topic_length) is not None:
            metrics.topic_limit_refusals += 1
            _ack(client, packet, R.TOPIC_NAME_INVALID)
            return
        if is_broker_topic(topic):
            # $SYS is the broker's own, whatever the ACL says: v5 0x87, 3.1.1 acked and
            # dropped (it has no way to refuse a PUBLISH) [MQTT-3.3.5-2].
            metrics.sys_publish_refused += 1
            log.info("client %r (user %r) may not publish to the broker's topic %r",
                     session.client_id, session.username, topic, extra=client.log_extra())
            _ack(client, packet, R.NOT_AUTHORIZED)
            return
        check = self.publish_check  # None: no ACL, no call (issue 19)
        if check is not None and not check(session.client_id, session.username, topic):
            metrics.acl_denials += 1
            log.info("client %r (user %r) not authorised to publish to %r",
                     session.client_id, session.username, topic, extra=client.log_extra())
            _ack(client, packet, R.NOT_AUTHORIZED)
            return
        if v5 and packet.properties.payload_format_indicator == 1 and not is_utf8(
            packet.payload
        ):
            # MQTT 5.0 §3.3.2.3.2: the receiver MAY check that a payload said to be UTF-8
            # is; we do, so subscribers can trust the indicator: PUBACK / PUBREC 0x99,
            # not routed; QoS 0 has no ack, so DISCONNECT 0x99.
            metrics.payload_format_refusals += 1
            if not qos:
                raise ProtocolViolation(
                    "Payload Format Indicator 1 with a payload that is not UTF-8",
                    reason_code=R.PAYLOAD_FORMAT_INVALID, spec_ref="MQTT 5.0 §3.3.2.3.2",
                )
            _ack(client, packet, R.PAYLOAD_FORMAT_INVALID)
            return
        packet_id = packet.packet_id or 0
        if qos == 2 and not session.hold_inbound_qos2(packet_id):
            # Duplicate of a held QoS 2 message: acknowledge, do not route again
            # [MQTT-4.3.3-2] (method B of MQTT 3.1.1 §4.3.3, MQTT 5.0 §4.3.3).
            held = self.held_acks
            write_id = self.qos2_unreplicated.get((session.client_id, packet_id))
            if held is not None and write_id is not None:
                # ... but in a cluster its PUBREC waits until the stream has the
                # message (MQTT 5.0 [MQTT-4.3.3-8]: PUBREC once the receiver owns it;
                # [MQTT-4.3.3-10]: no duplicate onward delivery): the cluster room
                # joins this one to the pending write, or, after a restart, writes the
                # message again under the same id (docs/cluster.md).
                held.append(HeldAck(self._message(packet, session, now, v5), client,
                                    packet_id, R.SUCCESS, write_id, resend=True))
                return
            conn.send_packet(PubRec(packet_id))
            return
        props = packet.properties
        if v5 and props.user_properties and self.seen_before is not None and (
                self.seen_before(session.client_id, props)):
            _ack(client, packet, R.SUCCESS)
            return
        expiry = props.message_expiry_interval  # the Message, as _message makes it
        message = Message(
            topic=topic,
            payload=packet.payload,
            qos=qos,
            retain=packet.retain,
            properties=props if v5 else NO_PROPERTIES,
            created_at=now,
            expires_at=None if expiry is None else now + expiry,
            origin=session.client_id,
            topic_raw=packet.topic_raw,
        )
        client.published_this_turn = True
        write_id = None
        if qos == 2 and self.qos2_write_id is not None and self.held_acks is not None:
            # The id of its stream write, known before routing: persistent sessions
            # derive its packet id from it (docs/cluster.md, "QoS 2 across a move").
            write_id = self.qos2_write_id()
            message.stream_key = write_key(write_id)
        code = self.router.publish(message, now)
        if self.forwarding is not None:
            self.forwarding.append(message)
            if qos and self.held_acks is not None:
                # The ack waits for the cluster's stream (docs/cluster.md, "QoS 1/2")
                # (this node cannot know whether another node's clients match:
                # 0x10 No matching subscribers is not said in a cluster)
                if not v5 or code == R.NO_MATCHING_SUBSCRIBERS:
                    code = R.SUCCESS
                if write_id is not None:
                    # Held as pending until the stream acknowledges the write
                    # (docs/cluster.md, "QoS 2 exactly once").
                    self.qos2_unreplicated[(session.client_id, packet_id)] = write_id
                    if session.persistent:
                        self.batch.put_inbound_pending(session.client_id, packet_id, write_id)
                self.held_acks.append(HeldAck(message, client, packet_id, code, write_id))
                return
        if qos and packet_id:  # _ack, inlined
            conn.send_publish_ack(qos, packet_id, code if v5 else 0)

    @staticmethod
    def _message(packet: Publish, session: Session, now: float, v5: bool) -> Message:
        """The application message of an accepted PUBLISH (MQTT 5.0 §3.3; the Message
        Expiry Interval as a deadline, §3.3.2.3.3). Positional: one per message, and
        a keyword call of the compiled Message costs more."""
        props = packet.properties
        if props is NO_PROPERTIES or not v5:  # 3.1.1, or a 5.0 PUBLISH without any
            return Message(packet.topic, packet.payload, packet.qos, packet.retain,
                           NO_PROPERTIES, now, None, session.client_id, 0, 0,
                           packet.topic_raw)
        expiry = props.message_expiry_interval
        return Message(packet.topic, packet.payload, packet.qos, packet.retain, props, now,
                       None if expiry is None else now + expiry, session.client_id, 0, 0,
                       packet.topic_raw)

    def publish_own(self, message: Message, now: float) -> int:
        """A message of the broker's own (``$SYS`` statistics): routed like any other,
        through the one delivery path; returns the routing reason code."""
        return self.router.publish(message, now, EVERY_GROUP)

    def may_write(self, client_id: str, username: str | None, topic: str) -> bool:
        """The write decision every way into the broker asks (a will, an admin's
        publish, an MQTT-SN QoS -1 publish): ``$SYS`` is the broker's whatever the ACL
        says [MQTT-3.3.5-2] (issue 12), then the ACL's write decision. The caller counts
        a refusal in its own terms."""
        return not is_broker_topic(topic) and self.auth.may_publish(client_id, username, topic)

    def will_topic_over_limits(self, topic: str) -> str | None:
        """What of ``mqtt.max_topic_levels`` / ``max_topic_length`` a will topic breaks
        (as a PUBLISH to it would: 0x90), or None; counted when it breaks one. For every
        room that sets a will: CONNECT (engine/connect.py), MQTT-SN's WILLTOPICUPD."""
        problem = topic_limit_problem(topic, self._max_topic_levels, self._max_topic_length)
        if problem is not None:
            self.metrics.topic_limit_refusals += 1
        return problem

    def may_publish_will(self, will: Will, client_id: str, username: str | None) -> bool:
        """A will is published as its owner: the ACL's write decision and the $SYS rule
        apply as to a PUBLISH (issue 12). Counted when refused."""
        if self.may_write(client_id, username, will.topic):
            return True
        self.metrics.wills_denied += 1
        return False

    def publish_will(self, will: Will, client_id: str, username: str | None,
                     now: float) -> None:
        """Publish a Will Message (MQTT 3.1.1 §3.1.2.5, MQTT 5.0 §3.1.3.2), if its owner
        may still publish to its topic: the ACL may have been reloaded since CONNECT."""
        if not self.may_publish_will(will, client_id, username):
            log.warning("will of %r (user %r) to %r not published: not authorised",
                        client_id, username, will.topic)
            return
        self.metrics.wills_published += 1
        props = will.properties
        expiry = props.message_expiry_interval
        message = Message(
            topic=will.topic,
            payload=will.payload,
            qos=will.qos,
            retain=will.retain,
            properties=replace(props, will_delay_interval=None),
            created_at=now,
            expires_at=None if expiry is None else now + expiry,
            origin=client_id,
        )
        log.info("publishing will of %r to %r", client_id, will.topic)
        self.router.publish(message, now)
        if self.forwarding is not None:
            self.forwarding.append(message)

    # ------------------------------------------------------------------- acks
    def on_puback(self, client: Client, packet: PubAck, now: float) -> None:
        _session(client).on_puback(packet.packet_id, now)

    def on_pubrec(self, client: Client, packet: PubRec, now: float) -> None:
        if not _session(client).on_pubrec(packet.packet_id, packet.reason_code, now):
            # Unknown id: v5 0x92 Packet Identifier not found; 3.1.1 PUBREL anyway.
            v5 = client.conn.protocol_version == 5
            code = R.PACKET_IDENTIFIER_NOT_FOUND if v5 else R.SUCCESS
            if packet.reason_code < FAILURE:
                client.conn.send_packet(PubRel(packet.packet_id, code))

    def on_pubrel(self, client: Client, packet: PubRel, now: float) -> None:
        session = _session(client)
        held = session.release_inbound_qos2(packet.packet_id)
        if held:
            self.qos2_unreplicated.pop((session.client_id, packet.packet_id), None)
            hold = self.held_pubcomps
            if hold is not None and session.persistent:
                # Cluster: the PUBCOMP waits until the release is durable, so that no
                # node holds the id after the client may use it again [MQTT-4.3.3-12].
                hold.append((client, packet.packet_id))
                return
        # PUBCOMP even for an unknown id (MQTT 3.1.1 §4.3.3); v5 says 0x92.
        v5 = client.conn.protocol_version == 5
        code = R.PACKET_IDENTIFIER_NOT_FOUND if not held and v5 else R.SUCCESS
        client.conn.send_packet(PubComp(packet.packet_id, code))

    def on_pubcomp(self, client: Client, packet: PubComp, now: float) -> None:
        _session(client).on_pubcomp(packet.packet_id, now)

    def on_pingreq(self, client: Client, packet: PingReq, now: float) -> None:
        client.conn.send_packet(PingResp())  # [MQTT-3.12.4-1]

    # ------------------------------------------------------ SUBSCRIBE / UNSUB
    def on_subscribe(self, client: Client, packet: Subscribe, now: float) -> None:
        session = _session(client)
        cfg = self.config.mqtt
        v5 = client.conn.protocol_version == 5
        sub_ids = packet.properties.subscription_identifiers
        sub_id = sub_ids[0] if sub_ids else None
        if sub_id is not None and not cfg.subscription_identifiers:
            raise ProtocolViolation("subscription identifiers are not supported",
                                    reason_code=R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED)
        version = client.conn.protocol_version
        for sub in packet.subscriptions:
            _check_filter_syntax(sub.topic_filter, version)
        limit = cfg.max_subscriptions_per_client
        failure = R.UNSPECIFIED_ERROR

        def check(sub: Subscription) -> int | None:
            group, plain = parse_shared(sub.topic_filter)
            if group is not None:
                if sub.no_local:
                    raise ProtocolViolation(
                        "No Local on a shared subscription", spec_ref="MQTT-3.8.3-4"
                    )
                if not cfg.shared_subscriptions:
                    return R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED if v5 else failure
            if not cfg.wildcard_subscriptions and ("+" in plain or "#" in plain):
                return R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED if v5 else failure
            if topic_limit_problem(plain, self._max_topic_levels,
                                   self._max_topic_length) is not None:
                self.metrics.topic_limit_refusals += 1
                return R.TOPIC_FILTER_INVALID if v5 else failure
            if (
                limit
                and sub.topic_filter not in session.subscriptions
                and len(session.subscriptions) >= limit
            ):
                self.metrics.subscription_limit_refusals += 1
                return R.QUOTA_EXCEEDED if v5 else failure
            if not self.auth.may_subscribe(session, sub.topic_filter):
                self.metrics.acl_denials += 1
                log.info(
                    "client %r (user %r) not authorised to subscribe to %r",
                    session.client_id, session.username, sub.topic_filter,
                    extra=client.log_extra(),
                )
                return R.NOT_AUTHORIZED if v5 else failure
            return None

        codes, retained = self.router.subscribe(
            session, packet.subscriptions, sub_id, cfg.maximum_qos, now, check
        )
        client.conn.send_packet(SubAck(packet.packet_id, codes))
        if self.interest_touched is not None:
            self.interest_touched.extend(
                (session.client_id, sub.topic_filter) for sub in packet.subscriptions
            )
        for delivery in retained:  # through the one delivery path (read ACL applies)
            session.deliver(delivery, now)

    def on_unsubscribe(self, client: Client, packet: Unsubscribe, now: float) -> None:
        session = _session(client)
        for topic_filter in packet.topic_filters:
            _check_filter_syntax(topic_filter, client.conn.protocol_version)
        codes = self.router.unsubscribe(session, packet.topic_filters)
        if self.interest_touched is not None:
            self.interest_touched.extend((session.client_id, f) for f in packet.topic_filters)
        v5 = client.conn.protocol_version == 5
        client.conn.send_packet(UnsubAck(packet.packet_id, codes if v5 else []))

    # ------------------------------------------------------------ DISCONNECT
    def on_disconnect(self, client: Client, packet: Disconnect, now: float) -> None:
        session = _session(client)
        expiry = packet.properties.session_expiry_interval
        if expiry is not None:
            if session.expiry_interval == 0 and expiry != 0:
                # 0 at CONNECT cannot become non-zero at DISCONNECT (§3.14.2.2.2).
                raise ProtocolViolation(
                    "Session Expiry Interval changed from 0 at DISCONNECT (MQTT 5.0 §3.14.2.2.2)"
                )
            self.registry.change_expiry(session, min(expiry, self.config.mqtt.max_session_expiry))
        # Normal disconnection discards the will [MQTT-3.14.4-3]; 0x04 keeps it.
        client.clean_disconnect = packet.reason_code != R.DISCONNECT_WITH_WILL_MESSAGE
        self.connection_log(log, logging.INFO, client, "client %r disconnected (reason 0x%02x)",
                            client.client_id, packet.reason_code)
        self.close(client)


def _session(client: Client) -> Session:
    session = client.session
    if session is None:
        raise ProtocolViolation("packet before CONNACK", spec_ref="MQTT-3.1.0-1")
    return session


def is_utf8(payload: bytes) -> bool:
    """True if ``payload`` is well-formed UTF-8 (MQTT 5.0 §3.3.2.3.2, Payload Format
    Indicator 1: "UTF-8 Encoded Character Data")."""
    if payload.isascii():
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_filter_syntax(topic_filter: str, version: int) -> None:
    """A SUBSCRIBE / UNSUBSCRIBE Topic Filter that breaks the filter syntax is a
    protocol violation that ends the connection, not a refused subscription:
    ``#`` only as the whole last level (5.0 [MQTT-4.7.1-1], 3.1.1 [MQTT-4.7.1-2]),
    ``+`` only as a whole level (5.0 [MQTT-4.7.1-2], 3.1.1 [MQTT-4.7.1-3]), not empty
    [MQTT-4.7.3-1], no U+0000 [MQTT-4.7.3-2], and a ``$share/`` filter with a
    ShareName and a filter after it [MQTT-4.8.2-1], [MQTT-4.8.2-2]. The caller
    closes: v5 DISCONNECT 0x82 [MQTT-4.13.1-1], 3.1.1 close [MQTT-4.8.0-1].
    (Well-formed filters refused by policy keep SUBACK 0x8F / 0x80.)"""
    try:
        if version == 5:
            validate_subscription_filter(topic_filter, 5)
        else:
            # 3.1.1 has no shared subscriptions in its text: a ``$share/`` string whose
            # ShareName part is off is still a well-formed 3.1.1 filter (refused by
            # the router with 0x80), but its wildcard syntax is checked as a whole.
            validate_topic_filter(topic_filter, 4)
    except ProtocolViolation as exc:
        raise ProtocolViolation(
            f"malformed Topic Filter: {exc.message}", spec_ref=exc.spec_ref
        ) from None


def _ack(client: Client, packet: Publish, code: int) -> None:
    """PUBACK / PUBREC with a reason code (v5); 3.1.1 acks carry none."""
    if packet.qos == 0 or packet.packet_id is None:
        return
    if client.conn.protocol_version != 5:
        code = 0
    client.conn.send_publish_ack(packet.qos, packet.packet_id, code)
