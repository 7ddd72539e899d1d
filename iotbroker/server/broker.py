"""The composition root: the only module that knows every package.

It owns the event-loop side of the broker and no MQTT rule: listeners, the per-turn
flush (the engine's storage batch committed, then one write per connection), the
timers, backpressure and admission limits, the authentication steps that may wait
(a password hash in a worker thread, an MQTT 5.0 enhanced-authentication exchange),
and start-up. What each packet, connection loss or timer does to sessions is the
engine's (:mod:`iotbroker.engine`): this module hands it events and applies the
effects it returns (design.md, "an engine that returns effects").
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Final, cast

from iotbroker import __version__, build
from iotbroker.bridge.manager import Bridges
from iotbroker.codec.enums import PacketType, ReasonCode
from iotbroker.codec.packets import Auth, Connect, Packet
from iotbroker.config import BrokerConfig
from iotbroker.engine import connect as connect_rules
from iotbroker.engine.client import Client, Writable
from iotbroker.engine.engine import Engine
from iotbroker.engine.enhanced_auth import EnhancedAuth
from iotbroker.errors import ConfigError, MqttError, StorageError
from iotbroker.metrics import Metrics
from iotbroker.server import connecting, fdtable, memtrim
from iotbroker.server.admission import Admission
from iotbroker.server.auth_service import AuthService, Refusal
from iotbroker.server.connect_wait import when_waited
from iotbroker.server.exposure import warn_open_anonymous
from iotbroker.server.group_commit import GroupCommit
from iotbroker.server.listeners import Listener, make_ssl_context, start_listener
from iotbroker.server.logsetup import bind_loop, log_connection, setup_logging
from iotbroker.server.metrics_http import MetricsServer
from iotbroker.server.mqttsn_udp import start_mqttsn_listener
from iotbroker.server.parking import Parking
from iotbroker.server.preflight import check_listeners
from iotbroker.server.ratelimit import FailureLimiter
from iotbroker.server.sys_topics import SysTopics
from iotbroker.server.timerwheel import TimerWheel
from iotbroker.server.transport import ClientProtocol, ConnectContext
from iotbroker.server.turn import Reader, Turn
from iotbroker.storage.base import Store

if TYPE_CHECKING:
    from iotbroker.admin.server import AdminServer
    from iotbroker.auth.passwords import PasswordFile
    from iotbroker.cluster.node import ClusterNode

log = logging.getLogger("iotbroker.broker")

#: The cyclic collector's thresholds (``gc.set_threshold``; CPython's default is 700, 10,
#: 10), set after the start-up's state is frozen (``run_broker``): a young collection
#: every 20,000 net allocations. Compiled Message objects are untracked
#: (``core/message.py``, acyclic) and a connection keeps 3 tracked objects, so a burst of
#: 10,000 connects meets one young collection of 3-4 ms. Short ones, (1,000, 0, 4,000),
#: cut that pause to 0.3-0.8 ms but cost 30 collections and ~2 ms more per 10,000
#: connects (+2,400 instructions per connection under callgrind) and moved neither the
#: CONNACK p99 nor the connect rate in live pairs: docs/performance.md, i19-conn4's
#: section and the lead's note after it (issue 19).
GC_THRESHOLDS: Final = (20_000, 20, 20)

_PUBLISH = PacketType.PUBLISH
_TRIM_AFTER_CHANGES = memtrim.TRIM_AFTER_CHANGES
_CONNECT = PacketType.CONNECT
_AUTH = PacketType.AUTH


class Broker:
    """One broker process: the engine, its connections, storage and timers."""

    def __init__(self, config: BrokerConfig, store: Store, loop: asyncio.AbstractEventLoop,
                 *, reuse_port: bool = False) -> None:
        self.config = config
        #: Listeners share their ports with sibling workers (SO_REUSEPORT).
        self.reuse_port = reuse_port
        self.loop = loop
        self.store = store
        self.metrics = Metrics()
        self.auth = AuthService(config.auth, self.metrics)
        self.engine = Engine(config, store, self.auth, self.metrics,
                             connection_log=log_connection)
        self.enhanced_auth = EnhancedAuth(lambda: self.auth.setup.passwords, self.metrics,
                                          self.engine.close)
        #: The connection limits and the open connections (server/admission.py,
        #: compiled): ``connection_made`` is its ``admit``, a bound method of a
        #: native class, so that the compiled ``ClientProtocol`` calls it without an
        #: interpreted frame (issue 19).
        self.admission = Admission(config.limits, config.listeners, self.metrics, loop)
        self.connection_made: Callable[[ClientProtocol], bool] = self.admission.admit
        #: Whether a CONNACK may be written before the turn's flush
        #: (server/connecting.py ``may_answer_now``, compiled; bound here so that the
        #: compiled ``ClientProtocol.first_data`` calls it without an interpreted frame).
        self.may_answer_now: Callable[[], bool] = partial(connecting.may_answer_now, self)
        #: Every open connection (a dict used as an ordered set; the admission's).
        self.connections: dict[ClientProtocol, None] = self.admission.connections
        #: Slow consumer -> the publishers paused because of it.
        self._throttled: dict[ClientProtocol, set[ClientProtocol]] = {}
        self._drain_timers: dict[ClientProtocol, asyncio.TimerHandle] = {}
        #: A congested consumer's transport write buffer when its drain period began:
        #: smaller at the period's end means it reads (slowly), not stuck.
        self._drain_marks: dict[ClientProtocol, int] = {}
        #: Every connection's CONNECT-timeout / keep-alive deadline, on one loop timer.
        self.timers = TimerWheel(self.loop)
        #: Idle plain-TCP sockets parked outside the loop's transports (server/parking.py;
        #: limits.park_idle_after), or None when that is off.
        self.parking = (Parking(self.loop, config.limits.park_idle_after)
                        if config.limits.park_idle_after > 0 else None)
        self._servers: list[Listener] = []
        self.sys_topics: SysTopics | None = None
        #: The cluster room (``cluster:`` configured; docs/cluster.md), else None.
        self.cluster: ClusterNode | None = None
        #: CONNECTs waiting for the engine's ``accept_wait`` (engine/connect.py)
        self._accept_waits: set[asyncio.Future[str | None]] = set()
        self.metrics_server: MetricsServer | None = None
        #: The admin room (admin.enabled): its HTTP API and dashboard (docs/admin.md).
        self.admin: AdminServer | None = None
        #: Listeners whose connections may be parked: plain TCP (no TLS, no WebSocket;
        #: read by server/connecting.py).
        self.parkable_listeners = frozenset(lc.name for lc in config.listeners if lc.type == "tcp")
        #: Sockets admitted per listener name since the start (metrics label
        #: ``listener``; the names are those of docs/configuration.md ``listeners.name``).
        self.listener_accepted: dict[str, int] = self.admission.listener_accepted
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.started_at = time.time()
        self.bound: list[tuple[str, int]] = []
        #: ``durability: fsync``: group commit (server/group_commit.py): output waits
        #: for the sync that covers its turn; many turns share one sync.
        self.group_commit: GroupCommit | None = None
        if config.storage.backend == "rocksdb" and config.storage.durability == "fsync":
            self.group_commit = GroupCommit(store, self.metrics, loop, self.engine)
        #: Connections to other brokers (issue 15): a room of its own, wired in here.
        #: The loop turn (server/turn.py, compiled): the read's packets into the
        #: engine, the flush scheduled once per turn, the flush itself.
        self.turn = Turn(self, self.engine, loop, self.metrics, self._throttled,
                         self.group_commit)
        #: Connections with bytes to write this turn (the turn's list, shared with the
        #: connections and the MQTT-SN gateway's clients: ``Writable``).
        self.ready_to_write: list[Writable] = self.turn.ready_to_write
        self.bridges = Bridges(self.engine, loop, self.flush)
        self._bridge_reload: asyncio.Task[None] | None = None
        #: What a CONNECT's authentication and acceptance read of the broker
        #: (server/connecting.py, compiled), in native fields (issue 19).
        self.connecting = connecting.Connecting(self)
        #: A connection's first read when it is one CONNECT (server/connecting.py
        #: ``first_connect``, compiled, bound here so that the compiled
        #: ``ClientProtocol.first_data`` calls it without an interpreted frame).
        self.first_connect: Callable[[ClientProtocol, Connect], None] = partial(
            connecting.first_connect, self.connecting)
        #: What a socket connection reads of the broker from its accept to its CONNACK
        #: (server/transport.py, compiled), in native fields: read by
        #: ``ClientProtocol`` instead of a look-up by name here each (issue 19). What
        #: it holds needs a restart to change (``mqtt``); the reloadable auth is read
        #: through ``self.connecting``.
        self.connect_context = ConnectContext(self)

    # ------------------------------------------------------------------ time
    @staticmethod
    def now() -> float:
        """Wall-clock time used for expiry (it must mean the same after a restart)."""
        return time.time()

    # ------------------------------------------------------------- lifecycle
    def restore(self) -> None:
        started = time.perf_counter()
        engine = self.engine
        engine.restore(self.now(), wills_elsewhere=self.config.cluster is not None)
        self.flush()
        memtrim.trim()  # what the restore read and freed goes back (issue 19)
        log.info(
            "restored %d sessions, %d subscriptions, %d queued/in-flight messages, "
            "%d retained messages in %.3fs",
            len(engine.registry),
            len(engine.trie),
            engine.registry.deliveries_pending(),
            len(engine.retained),
            time.perf_counter() - started,
        )

    async def start(self) -> None:
        if self.config.admin.enabled:
            self._prepare_admin()  # its bans apply from the first CONNECT
        # Before the cluster room starts: QoS 0 wills a crash left in the store go to
        # this node's own sessions only (the other nodes had them from
        # cluster/wills.py; QoS 1/2 ones come back through the QoS stream).
        self.restore()
        if self.parking is not None:
            self.parking.start()
        # Bridges first: their sessions collect what clients publish from the start.
        self.bridges.start(self.config.bridges)
        if self.config.cluster is not None:
            try:
                from iotbroker.cluster.node import ClusterNode  # noqa: PLC0415 (an extra)
            except ImportError as exc:
                raise RuntimeError(f"the cluster section needs nats-py (pip install "
                                   f"'iotbroker[cluster]'): {exc}") from exc

            self.cluster = ClusterNode(self.config.cluster, self.engine, self._after_remote)
            self.turn.cluster = self.cluster
            await self.cluster.start()
        for listener in self.config.listeners:
            server: Listener
            if listener.type == "mqtt-sn":  # the MQTT-SN gateway room (UDP)
                server = await start_mqttsn_listener(self, listener)
            else:
                # logs "listening on ..."
                server = await start_listener(self, listener, reuse_port=self.reuse_port)
            self._servers.append(server)
            self.bound.extend(server.addresses)
        warn_open_anonymous(self.config, [(s.config, s.addresses) for s in self._servers])
        if self.config.metrics.enabled:
            self.metrics_server = MetricsServer(self)
            await self.metrics_server.start()
        if self.config.sys_topics.enabled:
            self.sys_topics = SysTopics(self)
            self.sys_topics.start()
        if self.admin is not None:
            await self.admin.start()
        self._reschedule_core_timer()

    def _prepare_admin(self) -> None:
        """Wire the admin room in (loaded only when enabled: it needs aiohttp); its
        HTTP listener starts after the MQTT listeners."""
        try:
            from iotbroker.admin.server import AdminServer  # noqa: PLC0415 (optional extra)
        except ImportError as exc:
            raise ConfigError("admin.enabled", True, f"needs the admin extra "
                              f"(pip install 'iotbroker[admin]'): {exc}") from None
        tls = self.config.admin.tls
        try:
            auth = self.config.auth
            # failed logins per client address and per username, as for MQTT logins
            by_address = FailureLimiter(auth.failed_login_limit, auth.failed_login_window,
                                        auth.failed_login_backoff, max_keys=10_000)
            by_user = FailureLimiter(auth.failed_login_limit, auth.failed_login_window,
                                     auth.failed_login_backoff, max_keys=10_000)
            self.admin = AdminServer(self, make_ssl_context(tls) if tls is not None else None,
                                     by_address, by_user)
        except ValueError as exc:  # a damaged bans file, a bad API keys file
            raise ConfigError("admin", "...", str(exc)) from None

    def password_file(self) -> PasswordFile | None:
        """The password file in force (the admin room's users log in with it)."""
        return self.auth.setup.passwords

    def bridges_status(self) -> list[dict[str, object]]:
        """Each bridge's state, for the admin API (the metrics read the same)."""
        return self.bridges.status()

    def bridges_looped(self) -> int:
        """Messages refused by all bridges because they had been here already."""
        return self.bridges.looped

    def cluster_status(self) -> dict[str, int] | None:
        """This node's cluster link, for the admin API; None without a cluster."""
        return None if self.cluster is None else self.cluster.status()

    def engine_changed(self) -> None:
        """Another room acted on the engine (an admin action): apply its effects as
        after a packet: closes, timers, then the turn's commit and writes."""
        self.apply_closes()
        self._reschedule_core_timer()
        self.turn.call_flush()

    async def stop(self) -> None:
        """Shut down: stop listening, tell v5 clients 0x8B, flush storage."""
        if self.sys_topics is not None:
            self.sys_topics.stop()
        if self.admin is not None:
            await self.admin.stop()
        if self.metrics_server is not None:
            self.metrics_server.close()
        for server in self._servers:
            server.close()
        await self.bridges.stop()
        if self.parking is not None:
            await self.parking.wake_all()
        self.engine.shutting_down(list(self.connections))
        self.apply_closes()
        self.flush()
        if self.group_commit is not None:
            self.group_commit.drain()  # the DISCONNECTs (0x8B) go out before the aborts
        for server in self._servers:
            await server.wait_closed()
        if self.metrics_server is not None:
            await self.metrics_server.wait_closed()
        await asyncio.sleep(0)
        for proto in list(self.connections):
            proto.abort()
        self.flush()
        if self.group_commit is not None:
            self.group_commit.close()
        if self.cluster is not None:
            await self.cluster.stop()
        self.timers.close()
        if self.parking is not None:
            self.parking.close()
        self.auth.close()
        self.store.close()
        log.info("stopped")

    def reload(self, read_config: Callable[[], BrokerConfig]) -> None:
        """SIGHUP: re-read the configuration; apply what can change live (password file,
        ACL, log levels), log the rest as needing a restart. Connected clients stay."""
        try:
            new = read_config()
            self.auth.config = new.auth
            self.auth.reload()
            if self.admin is not None:
                self.admin.reload_api_keys()
        except Exception as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        self.engine.auth_changed()  # queued, in-flight and retained follow the new rules
        setup_logging(new.logging)
        applied = ["auth (password file, ACL)", "logging", "bridges"]
        self._bridge_reload = self.loop.create_task(self.bridges.reload(new.bridges))
        if self.admin is not None:
            applied.append("admin API keys")
        pending = [
            name
            for name in ("listeners", "mqtt", "storage", "sys_topics", "metrics", "admin",
                         "limits", "mqttsn", "loop")
            if getattr(new, name) != getattr(self.config, name)
        ]
        self.config = replace(self.config, auth=new.auth, logging=new.logging,
                              bridges=new.bridges)
        # Every CONNECT from now on reads the new auth settings (server/connecting.py).
        self.connecting.reload()
        log.info("configuration reloaded from %s: applied %s", new.source, ", ".join(applied))
        if pending:
            log.warning("changed settings that need a restart: %s", ", ".join(pending))

    def take_storage_write_max(self) -> float:
        """Slowest commit since the last call (for the metrics endpoint)."""
        engine = self.engine
        value, engine.storage_write_max = engine.storage_write_max, 0.0
        return value

    def take_storage_batch_max(self) -> int:
        engine = self.engine
        value, engine.storage_batch_max = engine.storage_batch_max, 0
        return value

    # ------------------------------------------------------------ the flush
    # The turn's state and the flush are compiled (server/turn.py): these delegate.
    @property
    def active_readers(self) -> list[Client]:
        """Connections that delivered input since the last flush (backpressure)."""
        return self.turn.active_readers

    def throttle(self, readers: list[Client]) -> None:
        """A consumer is congested: slow down the clients that published this turn
        (not bystanders that only pinged, acknowledged or connected)."""
        for reader in readers:
            if not reader.published_this_turn:
                continue
            reader.published_this_turn = False
            proto = cast(ClientProtocol, reader)
            if proto in self._throttled or proto.close_after_flush:
                continue
            for waiting in self._throttled.values():
                waiting.add(proto)
            proto.pause_reading()

    def output_pending(self, proto: ClientProtocol) -> None:
        """``proto`` must be written (or closed) at the end of this loop turn."""
        self.turn.output_pending(proto)

    def schedule_flush(self) -> None:
        """Flush at the end of this loop turn if an event left something to send or
        to store (``Turn.schedule_flush``)."""
        self.turn.schedule_flush()

    def flush(self) -> None:
        """Commit the turn's storage changes, then write each connection's output once
        (``Turn.flush``; design.md, "A QoS 1 PUBLISH")."""
        self.turn.flush()

    # ---------------------------------------------------------- backpressure
    def writer_paused(self, proto: ClientProtocol) -> None:
        """``proto`` stopped draining; a drain timeout bounds how long it may stall
        (how long its write buffer may stay above the low-water mark without shrinking)."""
        self.engine.set_writable(proto, False, self.now())
        if proto in self._throttled or proto in self._drain_timers:
            return
        self._throttled[proto] = set()
        timeout = self.config.limits.drain_timeout
        if timeout > 0:
            self._drain_marks[proto] = _buffered(proto)
            self._drain_timers[proto] = self.loop.call_later(timeout, self._drain_expired, proto)

    def writer_resumed(self, proto: ClientProtocol) -> None:
        self.engine.set_writable(proto, True, self.now())
        self.schedule_flush()
        timer = self._drain_timers.pop(proto, None)
        if timer is not None:
            timer.cancel()
        self._drain_marks.pop(proto, None)
        self._release_publishers(proto)

    def _release_publishers(self, proto: ClientProtocol) -> None:
        """``proto`` no longer holds back publishers: read those it alone paused."""
        waiting = self._throttled.pop(proto, None)
        if not waiting:
            return
        still = set().union(*self._throttled.values()) if self._throttled else set()
        for reader in waiting:
            if reader not in still:
                reader.resume_reading()

    def _drain_expired(self, proto: ClientProtocol) -> None:
        """A drain period ended with ``proto`` still congested. If its write buffer
        shrank meanwhile it reads, only slower than it is sent to (a large delivery
        over a slow link): a new period begins, and the publishers it paused are
        read again (they wait for a slow reader at most ``drain_timeout``; it stays
        congested: QoS 0 for it dropped, QoS 1/2 in its session). Otherwise it is
        stuck: disconnected."""
        self._drain_timers.pop(proto, None)
        mark = self._drain_marks.pop(proto, None)
        if mark is None:
            return  # drained meanwhile
        left = _buffered(proto)
        if left < mark:
            self._drain_marks[proto] = left
            self._drain_timers[proto] = self.loop.call_later(
                self.config.limits.drain_timeout, self._drain_expired, proto
            )
            self._release_publishers(proto)
            return
        self.metrics.slow_consumers_disconnected += 1
        log.warning(
            "client %r (%s) did not read for %ss: disconnecting a stuck consumer",
            proto.client_id,
            proto.peer,
            self.config.limits.drain_timeout,
            extra=proto.log_extra(),
        )
        proto.abort()

    # ---------------------------------------------------------- connections
    def connection_count(self, listener: str) -> int:
        """Connections open now on the listener of that name."""
        return self.admission.per_listener.get(listener, 0)

    def connection_lost(self, proto: ClientProtocol, exc: Exception | None) -> None:
        self.admission.ended(proto)
        if proto in self._throttled or proto in self._drain_timers:
            self.writer_resumed(proto)
        for waiting in self._throttled.values():
            waiting.discard(proto)
        self.enhanced_auth.forget(proto)
        if proto.session is None:
            return
        self.engine.connection_closed(proto, str(exc) if exc else "", self.now())
        self.apply_closes()
        self._reschedule_core_timer()
        self.flush()

    def _after_remote(self) -> None:
        """An event from another node (a message, a takeover) left effects."""
        if self.engine.closing:
            self.apply_closes()
        self.schedule_flush()

    # Rooms beside the socket connections (the MQTT-SN gateway) apply the effects of
    # their events with these, as the socket path does.
    def apply_closes(self) -> None:
        """The engine's close effects: each closes after this turn's writes (a socket
        connection, or a client of another room such as the MQTT-SN gateway)."""
        for client in self.engine.take_closing():
            client.close()

    def reschedule_core_timer(self) -> None:
        self._reschedule_core_timer()

    def peer_error(self, proto: ClientProtocol, exc: MqttError) -> None:
        """A client broke a rule: the engine answers with its reason code and closes."""
        self.engine.fail(proto, exc)
        self.apply_closes()

    def keepalive_expired(self, proto: ClientProtocol) -> None:
        """No packet for 1.5 × Keep Alive [MQTT-3.1.2-24]: close; the will goes out."""
        self.engine.keepalive_expired(proto)
        self.apply_closes()

    # ------------------------------------------------------------- packets
    def handle_packets(self, proto: ClientProtocol, packets: list[Packet]) -> int:
        """Validated packets of one read, in order (``Turn.handle_packets``, compiled:
        a connected client's through the engine's loop, the rest through
        :meth:`handle_rest`). Returns how many were handled."""
        return self.turn.handle_packets(proto, packets)

    def handle_rest(self, reader: Reader, packets: list[Packet], start: int,
                    now: float) -> int:
        """``packets[start:]``, one by one: the engine's once the CONNECT is accepted;
        CONNECT and AUTH go through the authentication steps here first. Stops after a
        packet that defers (a password check in a thread) or closes the connection;
        returns how many of ``packets`` were handled in all (``start`` included)."""
        proto = cast(ClientProtocol, reader)
        engine = self.engine
        handled = start
        rest: Sequence[Packet] = packets[start:] if start else packets
        for packet in rest:
            handled += 1
            ptype = packet.TYPE
            try:
                if proto.session is not None and ptype is not _AUTH:
                    engine.handle(proto, packet, now)
                    if ptype is _PUBLISH and proto.publish_bucket is not None:
                        self._limit_publish_rate(proto)
                elif ptype is _CONNECT:
                    assert isinstance(packet, Connect)
                    self.metrics.connects_received += 1
                    self.on_connect(proto, packet)
                elif ptype is _AUTH:
                    assert isinstance(packet, Auth)
                    pending = self.enhanced_auth.on_auth(proto, packet)  # MQTT 5.0 §4.12
                    if pending is not None:  # the exchange ended: accept or refuse
                        self.on_connect(proto, pending)
                else:
                    self.enhanced_auth.before_connack(proto, packet)  # [MQTT-3.1.2-30]
            except MqttError as exc:
                self.peer_error(proto, exc)
                break
            if engine.closing:
                self.apply_closes()
            if len(engine.batch.changes) >= _TRIM_AFTER_CHANGES:
                self.commit_early()
            if proto.close_after_flush or proto.deferred:
                break
        return handled

    def commit_early(self) -> None:
        """A packet left a large batch (a fan-out to many offline sessions): write it
        now, between two packets, where the state is whole, as if the next packets had
        come in another read. Acks still wait for the turn's flush; the memory of the
        batch is freed per packet, not per read (issue 19). A failure is left to the
        flush, which retries and closes the turn's connections."""
        changes = len(self.engine.batch)
        try:
            self.engine.commit()
        except StorageError:
            return
        if changes >= memtrim.TRIM_AFTER_CHANGES:
            memtrim.trim()

    def _limit_publish_rate(self, proto: ClientProtocol) -> None:
        """Over limits.publish_rate_per_client: what follows waits (unread), no loss."""
        bucket = proto.publish_bucket
        assert bucket is not None
        wait = bucket.take(self.loop.time())
        if wait > 0:
            self.metrics.limit_hits += 1
            proto.deferred = True
            self.loop.call_later(wait, proto.resume_deferred)

    # --------------------------------------------------------------- CONNECT
    def on_connect(self, proto: ClientProtocol, packet: Connect) -> None:
        """Authenticate the CONNECT, between the engine's checks before
        (:func:`~iotbroker.engine.connect.admit`) and its acceptance: compiled, in
        server/connecting.py (issue 19)."""
        connecting.on_connect(self.connecting, proto, packet)

    def accept_after(self, wait: Awaitable[str | None], proto: ClientProtocol,
                     packet: Connect, admitted: connect_rules.Admitted,
                     username: str | None, auth_data: bytes | None) -> None:
        """Accept the CONNECT once the engine's ``wait`` is done, or refuse it when the
        wait ended with a reason (what follows it on the connection waits too)."""
        proto.deferred = True

        def resumed(why: str | None) -> None:
            if proto not in self.connections or proto.close_after_flush:
                return
            proto.deferred = False
            try:
                if why is not None:
                    connect_rules.refuse_busy(self.engine, proto, packet, why)
                else:
                    connecting.accept(self.connecting, proto, packet, admitted, username,
                                      auth_data)
            except MqttError as exc:
                self.peer_error(proto, exc)
                return
            finally:
                self.apply_closes()
                self.schedule_flush()
            proto.resume_deferred()

        when_waited(wait, self._accept_waits, resumed)

    def check_password_off_loop(
        self, proto: ClientProtocol, packet: Connect, client_id: str
    ) -> None:
        """Hash the password in a worker thread (PBKDF2 takes ~0.1 s; the loop must
        not stall); the CONNECT and what follows it wait, then resume."""
        proto.deferred = True
        future = self.auth.authenticate_in_thread(client_id, packet.username, packet.password)

        def decided(_: object) -> None:
            decision: Refusal | None
            try:  # counted even when the client has gone meanwhile
                decision = self.auth.conclude(
                    future.result(), packet.username, packet.password, proto.peer, hashed=True
                )
            except Exception:
                log.exception("password check failed for %s", proto.peer)
                decision = Refusal(ReasonCode.UNSPECIFIED_ERROR, "error", "password check failed")
            if proto not in self.connections or proto.close_after_flush:
                return
            proto.password_decision = decision
            proto.deferred = False
            try:
                self.on_connect(proto, packet)
            except MqttError as exc:
                self.peer_error(proto, exc)
                return
            finally:
                self.apply_closes()
                self.schedule_flush()  # the CONNACK (or refusal) goes out this turn
            proto.resume_deferred()

        def hand_back(f: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self.loop.call_soon_threadsafe(decided, f)

        future.add_done_callback(hand_back)

    # ---------------------------------------------------------------- timers
    def _reschedule_core_timer(self) -> None:
        deadline = self.engine.next_deadline()
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, deadline - self.now())
        self._timer_at = deadline
        self._timer = self.loop.call_later(delay, self._on_core_timer)

    def _on_core_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.engine.run_timers(self.now())
        self._reschedule_core_timer()
        if self.engine.batch:
            self.turn.call_flush()
        self.schedule_flush()


# ---------------------------------------------------------------------------
def open_store(config: BrokerConfig) -> Store:
    """The configured store: RocksDB under ``storage.path`` or in memory."""
    storage = config.storage
    if storage.backend == "memory":
        from iotbroker.storage.memory import MemoryStore  # noqa: PLC0415

        return MemoryStore()
    from iotbroker.storage.rocksdb import RocksDBStore  # noqa: PLC0415 (imports rocksdict)

    return RocksDBStore(
        storage.path, durability=storage.durability, on_corruption=storage.on_corruption
    )


def _buffered(proto: ClientProtocol) -> int:
    """Bytes waiting in ``proto``'s transport write buffer (0 without a transport)."""
    transport = proto.transport
    if transport is None:
        return 0
    return int(transport.get_write_buffer_size())  # type: ignore[attr-defined]


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop  # noqa: PLC0415 (optional)

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
        except ImportError:
            if kind == "uvloop":
                raise
    return asyncio.new_event_loop()


def run_broker(config: BrokerConfig, reload: Callable[[], BrokerConfig] | None = None,
               *, reuse_port: bool = False) -> int:
    """Run until SIGINT/SIGTERM; SIGHUP reloads (``reload`` re-reads the configuration).
    ``reuse_port``: a worker of ``--workers`` (server/workers.py). Returns the process
    exit code."""
    setup_logging(config.logging)
    # Listeners first: a missing TLS key or a taken port must not create or lock the
    # data directory (issue 18).
    problems = check_listeners(config, reuse_port)
    for problem in problems:
        log.error("cannot start: %s", problem)
    if problems:
        return 1
    memtrim.limit_arenas()  # before RocksDB starts its threads
    fdtable.reserve()  # likewise: no accept waits for the descriptor table to grow
    try:
        store = open_store(config)
    except StorageError as exc:
        log.error("%s", exc)
        return 1
    loop = _new_loop(config.loop)
    asyncio.set_event_loop(loop)
    bind_loop(loop)
    broker = Broker(config, store, loop, reuse_port=reuse_port)
    stop_event = asyncio.Event()

    def request_stop(signame: str) -> None:
        log.info("received %s, shutting down", signame)
        stop_event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop, sig.name)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, broker.reload, reload)

    async def main() -> int:
        try:
            await broker.start()
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            store.close()
            return 1
        except (StorageError, ConfigError, RuntimeError) as exc:  # RuntimeError: an extra
            log.error("%s", exc)
            store.close()
            return 1
        # The restored state (sessions, tries, retained messages) lives as long as the
        # process: keep it out of the cyclic GC's scans, and collect the young
        # generation less often (GC_THRESHOLDS).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        log.info("iotbroker %s running (storage: %s, %s; %s)", __version__,
                 config.storage.backend, build.describe(), build.interpreter())
        stale = build.stale_modules()
        if stale:
            log.warning("compiled modules differ from their source, changed since the build "
                        "(re-run `pip install -e .` "
                        "or install with IOTBROKER_PURE=1): %s", ", ".join(stale))
        await stop_event.wait()
        await broker.stop()
        return 0

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()
