"""Prometheus exposition over a tiny asyncio HTTP/1.1 server (no thread).

``GET /metrics`` answers ``prometheus_client.generate_latest`` of a registry holding
one custom collector, :class:`BrokerCollector`, which reads the broker's
:class:`~iotbroker.metrics.Metrics` and registries *at scrape time*: nothing is added
to the per-message path. ``GET /health`` answers ``200 ok``. Every request gets one
response and the connection is closed; a request must arrive within a few seconds and
fit in a few KiB.

The event-loop lag is measured by :class:`LoopLagProbe`, a ``loop.call_later`` chain
that notes how late each call runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, Sized
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.process_collector import ProcessCollector

from iotbroker import __version__
from iotbroker.config import BrokerConfig
from iotbroker.engine.engine import Engine
from iotbroker.metrics import AUTH_FAILURE_REASONS, Metrics
from iotbroker.server.auth_service import AuthService
from iotbroker.server.tlsfailures import REASONS as TLS_REASONS
from iotbroker.storage.base import Store

__all__ = ["BrokerCollector", "LoopLagProbe", "MetricsHost", "MetricsServer"]

log = logging.getLogger("iotbroker.metrics")

#: Seconds between two event-loop lag probes.
LAG_PROBE_INTERVAL = 0.25
#: The "max" lag gauge covers the last one to two of these windows (seconds).
LAG_WINDOW = 60.0
#: A request (line and headers) must arrive within this many seconds...
REQUEST_TIMEOUT = 5.0
#: ...and be at most this long.
MAX_REQUEST = 8192

_PREFIX = "iotbroker_"

#: Metrics fields exported as counters: field -> help text.
_COUNTERS = {
    "connections_accepted": "Network connections accepted.",
    "connections_rejected": "Connections refused: at accept (connection limits, connect "
                            "rate) or with a CONNACK error.",
    "messages_received": "MQTT packets received (any type).",
    "messages_sent": "MQTT packets sent (any type).",
    "bytes_received": "Bytes received from clients (MQTT layer).",
    "bytes_sent": "Bytes sent to clients (MQTT layer).",
    "messages_expired": "Messages discarded because their Message Expiry Interval passed.",
    "slow_consumers_disconnected": "Clients disconnected for not reading within drain_timeout.",
    "malformed_packets": "Connections closed for a malformed packet.",
    "protocol_errors": "Connections closed for a protocol violation.",
    "keepalive_timeouts": "Connections closed because the keep alive expired.",
    "session_takeovers": "Connections closed because the same client id connected again.",
    "sessions_expired": "Sessions removed after their expiry interval.",
    "wills_published": "Will messages published.",
    "wills_denied": "Will messages not published: the ACL (or the $SYS rule) refused their "
                    "topic at CONNECT (MQTT 3.1.1) or when they fired.",
    "sys_publish_refused": "Client PUBLISHes to $SYS topics refused (the broker's own).",
    "password_checks_inline": "Password checks decided on the event loop (generated "
                              "secrets, passwords verified before).",
    "password_checks_hashed": "Password checks that ran PBKDF2 in a worker thread.",
    "acl_denials": "Publishes, subscriptions and deliveries denied by the ACL.",
    "storage_batches": "Storage batches committed.",
    "storage_changes": "Storage changes committed.",
    "limit_hits": "Times any configured limit was hit (connections, rates, retained).",
    "retained_dropped": "Retained PUBLISHes not retained: mqtt.max_retained_messages reached.",
    "connect_timeouts": "Sockets closed for not sending CONNECT within connect_timeout.",
    "topic_limit_refusals": "PUBLISH/SUBSCRIBE/will topics refused for max_topic_levels/_length.",
    "subscription_limit_refusals": "Subscriptions refused: max_subscriptions_per_client.",
    "payload_format_refusals": "PUBLISH/will refused: Payload Format Indicator 1, not UTF-8.",
    "publish_bytes_received": "Payload bytes of the PUBLISH packets received.",
    "publish_bytes_sent": "Payload bytes of the PUBLISH packets sent.",
    "connects_received": "CONNECT packets received.",
}
#: Metrics fields exported as gauges.
_GAUGES = {
    "clients_connected": "Clients connected now (CONNACK sent).",
    "clients_maximum": "Most clients connected at once since the start.",
}
#: Drop counters, exported as one counter labelled by reason.
_DROPS = {
    "messages_dropped_queue_full": "queue_full",
    "messages_dropped_qos0_offline": "qos0_offline",
    "messages_dropped_slow_consumer": "slow_consumer",
    "messages_dropped_too_large": "too_large",
}
#: Per-QoS lists, exported as one counter labelled by qos.
_BY_QOS = {
    "publish_received_qos": ("publish_received", "PUBLISH packets received, by QoS."),
    "publish_sent_qos": ("publish_sent", "PUBLISH packets sent, by QoS."),
}
#: Refused logins, exported as one counter labelled by reason (sums to ``auth_failures``).
_AUTH_FAILURES_HELP = ("Logins refused, by reason: anonymous, unknown_user, wrong_password, "
                       "certificate, enhanced_auth, rate_limited, busy.")
#: Failed TLS handshakes, exported as one counter labelled by reason.
_TLS_FAILURES = {f"tls_handshake_failures_{reason}": reason for reason in TLS_REASONS}
_HANDLED = {*_COUNTERS, *_GAUGES, *_DROPS, *_BY_QOS, *_TLS_FAILURES, "publish_received",
            "publish_sent", "auth_failures",
            *(f"auth_failures_reason_{r}" for r in AUTH_FAILURE_REASONS)}


class LoopLagProbe:
    """How late the event loop runs a timer: the last lag and the worst recent one."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 interval: float = LAG_PROBE_INTERVAL) -> None:
        self.loop = loop
        self.interval = interval
        self.last = 0.0
        self._max_current = 0.0
        self._max_previous = 0.0
        self._window_end = 0.0
        self._expected = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        now = self.loop.time()
        self._window_end = now + LAG_WINDOW
        self._schedule(now)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def max(self) -> float:
        return max(self._max_current, self._max_previous)

    def _schedule(self, now: float) -> None:
        self._expected = now + self.interval
        self._handle = self.loop.call_at(self._expected, self._fire)

    def _fire(self) -> None:
        now = self.loop.time()
        lag = max(0.0, now - self._expected)
        self.last = lag
        if now >= self._window_end:
            self._max_previous = self._max_current
            self._max_current = 0.0
            self._window_end = now + LAG_WINDOW
        self._max_current = max(self._max_current, lag)
        self._schedule(now)


class ClusterView(Protocol):
    """What the metrics and ``/health`` read of the cluster room (``ClusterNode``)."""

    @property
    def connected(self) -> bool: ...

    def status(self) -> dict[str, int]: ...

    def totals(self) -> dict[str, int]: ...


class ParkingCounts(Protocol):
    """The parking of idle sockets as the metrics read it (``server/parking.py``)."""

    @property
    def parks(self) -> int: ...

    @property
    def unparks(self) -> int: ...

    def __len__(self) -> int: ...


class MetricsHost(Protocol):
    """The broker as the metrics endpoint sees it (``server/broker.py`` is one): what a
    scrape reads. A protocol, so this module never refers back to broker.py."""

    @property
    def parking(self) -> ParkingCounts | None: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def config(self) -> BrokerConfig: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def store(self) -> Store: ...

    @property
    def auth(self) -> AuthService: ...

    @property
    def started_at(self) -> float: ...

    @property
    def connections(self) -> Sized:
        """The network connections open now."""

    @property
    def listener_accepted(self) -> Mapping[str, int]:
        """Sockets admitted per listener name since the start."""

    @property
    def cluster(self) -> ClusterView | None: ...

    def connection_count(self, listener: str) -> int:
        """Connections open now on the listener of that name."""

    def take_storage_write_max(self) -> float:
        """Slowest commit since the last call."""

    def take_storage_batch_max(self) -> int:
        """Largest storage batch since the last call."""

    def bridges_status(self) -> list[dict[str, object]]: ...

    def bridges_looped(self) -> int: ...


class BrokerCollector:
    """A ``prometheus_client`` collector reading the broker at scrape time."""

    def __init__(self, broker: MetricsHost, lag: LoopLagProbe) -> None:
        self.broker = broker
        self.lag = lag

    def _per_listener(self) -> Iterator[Metric]:
        """Connections by listener name (``listeners.name``, docs/configuration.md): one
        sample per configured listener, zero included; they sum to the unlabelled totals."""
        broker = self.broker
        names = [listener.name for listener in broker.config.listeners]
        opened = GaugeMetricFamily(_PREFIX + "listener_connections_open",
                                   "Network connections open now, by listener.",
                                   labels=["listener"])
        accepted = CounterMetricFamily(_PREFIX + "listener_connections_accepted",
                                       "Network connections accepted, by listener.",
                                       labels=["listener"])
        for name in names:
            opened.add_metric([name], broker.connection_count(name))
            accepted.add_metric([name], broker.listener_accepted.get(name, 0))
        yield opened
        yield accepted

    def collect(self) -> Iterator[Metric]:
        broker = self.broker
        values = broker.metrics.as_dict()
        m = broker.metrics
        yield InfoMetricFamily(_PREFIX + "build", "Broker version.",
                               value={"version": __version__})
        yield GaugeMetricFamily(_PREFIX + "uptime_seconds", "Seconds since the broker started.",
                                value=time.time() - broker.started_at)
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(_PREFIX + name, doc, value=values[name])
        for name, doc in _GAUGES.items():
            yield GaugeMetricFamily(_PREFIX + name, doc, value=values[name])
        for attr, (name, doc) in _BY_QOS.items():
            per_qos = getattr(m, attr) or [0, 0, 0]
            family = CounterMetricFamily(_PREFIX + name, doc, labels=["qos"])
            for qos, count in enumerate(per_qos):
                family.add_metric([str(qos)], count)
            yield family
        drops = CounterMetricFamily(_PREFIX + "messages_dropped",
                                    "Messages dropped, by reason.", labels=["reason"])
        for name, reason in _DROPS.items():
            drops.add_metric([reason], values[name])
        yield drops
        failures = CounterMetricFamily(_PREFIX + "auth_failures", _AUTH_FAILURES_HELP,
                                       labels=["reason"])
        for reason, count in m.auth_failures_reason.items():
            failures.add_metric([reason], count)
        yield failures
        yield GaugeMetricFamily(_PREFIX + "password_checks_pending",
                                "PBKDF2 password checks queued or running now.",
                                value=broker.auth.pending)
        tls = CounterMetricFamily(_PREFIX + "tls_handshake_failures",
                                  "TLS handshakes that failed, by reason.", labels=["reason"])
        for name, reason in _TLS_FAILURES.items():
            tls.add_metric([reason], values[name])
        yield tls
        # Counters added to Metrics later show up without a change here.
        for name, value in values.items():
            base = name.rstrip("0123456789") if name[-1:].isdigit() else name
            if name not in _HANDLED and base not in _HANDLED:
                yield UnknownMetricFamily(_PREFIX + name, name.replace("_", " ") + ".",
                                          value=value)

        sessions = broker.engine.registry.sessions.values()
        queued = inflight = 0
        for session in sessions:
            queued += session.queued_count
            inflight += len(session.inflight)
        yield GaugeMetricFamily(_PREFIX + "sessions",
                                "Sessions (connected and persistent disconnected).",
                                value=len(broker.engine.registry))
        yield GaugeMetricFamily(_PREFIX + "connections_open", "Network connections open now.",
                                value=len(broker.connections))
        parking = broker.parking
        yield GaugeMetricFamily(_PREFIX + "connections_parked",
                                "Idle connections parked now (limits.park_idle_after).",
                                value=len(parking) if parking is not None else 0)
        yield CounterMetricFamily(_PREFIX + "connections_parks",
                                  "Times an idle connection was parked.",
                                  value=parking.parks if parking is not None else 0)
        yield CounterMetricFamily(_PREFIX + "connections_wakes",
                                  "Times a parked connection was given a transport again.",
                                  value=parking.unparks if parking is not None else 0)
        yield from self._per_listener()
        yield GaugeMetricFamily(_PREFIX + "queued_messages",
                                "Messages waiting in session queues.", value=queued)
        yield GaugeMetricFamily(_PREFIX + "inflight_messages",
                                "QoS 1/2 messages sent and not yet acknowledged.",
                                value=inflight)
        yield GaugeMetricFamily(_PREFIX + "retained_messages", "Retained messages stored.",
                                value=len(broker.engine.retained))
        yield GaugeMetricFamily(_PREFIX + "subscriptions", "Subscriptions of all sessions.",
                                value=len(broker.engine.trie))
        # Storage: size on disk and keys per record kind (the store's own figures),
        # write time and batch sizes (measured around each commit in Broker.flush).
        try:
            stats = broker.store.stats()
        except Exception:  # a closed store during shutdown
            stats = {}
        yield GaugeMetricFamily(_PREFIX + "storage_disk_bytes",
                                "Size of the store on disk (0 for the memory store).",
                                value=stats.get("disk_bytes", 0))
        keys = GaugeMetricFamily(_PREFIX + "storage_keys",
                                 "Records in the store, by kind (approximate for RocksDB).",
                                 labels=["kind"])
        for name, value in stats.items():
            if name.startswith("keys_"):
                keys.add_metric([name[5:]], value)
        yield keys
        yield CounterMetricFamily(_PREFIX + "storage_write_failures",
                                  "Storage writes and syncs the medium refused (disk full, "
                                  "I/O error); /health fails until one succeeds.",
                                  value=broker.store.write_failures)
        yield SummaryMetricFamily(_PREFIX + "storage_write_seconds",
                                  "Time spent committing storage batches.",
                                  count_value=m.storage_batches,
                                  sum_value=broker.engine.storage_write_seconds)
        yield GaugeMetricFamily(_PREFIX + "storage_write_max_seconds",
                                "Slowest storage commit since the last scrape.",
                                value=broker.take_storage_write_max())
        yield GaugeMetricFamily(_PREFIX + "storage_batch_max_changes",
                                "Largest storage batch since the last scrape.",
                                value=broker.take_storage_batch_max())
        bridges = broker.bridges_status()
        yield from _bridge_families(bridges)
        if bridges:
            yield CounterMetricFamily(_PREFIX + "bridges_looped",
                                      "Messages refused because they had been in this broker "
                                      "already (cycles of bridges), all bridges.",
                                      value=broker.bridges_looped())
        cluster = broker.cluster
        if cluster is not None:  # this node's link to the cluster (docs/cluster.md)
            for name, value in cluster.status().items():
                if name in ("connected", "filters", "remote_filters", "remote_nodes"):
                    yield GaugeMetricFamily(_PREFIX + "cluster_" + name,
                                            f"Cluster: {name.replace('_', ' ')} (this node).",
                                            value=value)
                else:
                    yield CounterMetricFamily(_PREFIX + "cluster_" + name,
                                              f"Cluster: {name.replace('_', ' ')}.",
                                              value=value)
            for name, value in cluster.totals().items():  # sums: gauges (nodes leave)
                metric = name.replace("/", "_")
                yield GaugeMetricFamily(_PREFIX + "cluster_total_" + metric,
                                        f"Cluster total: {name} (all live nodes).",
                                        value=value)
        yield GaugeMetricFamily(_PREFIX + "event_loop_lag_seconds",
                                "How late the last event-loop probe timer ran.",
                                value=self.lag.last)
        yield GaugeMetricFamily(_PREFIX + "event_loop_lag_max_seconds",
                                f"Worst event-loop probe lag of the last {LAG_WINDOW:.0f}–"
                                f"{2 * LAG_WINDOW:.0f} s.", value=self.lag.max)


_BRIDGE_FAMILIES = {
    "state": (GaugeMetricFamily, "bridge_connected", "1 while the bridge is connected."),
    "queued_messages": (GaugeMetricFamily, "bridge_queued_messages",
                        "Messages in the bridge's outbox."),
    "queued_bytes": (GaugeMetricFamily, "bridge_queued_bytes",
                     "Payload bytes in the bridge's outbox."),
    "forwarded_out": (CounterMetricFamily, "bridge_forwarded_out",
                      "Messages forwarded to the remote broker (acknowledged)."),
    "forwarded_in": (CounterMetricFamily, "bridge_forwarded_in",
                     "Messages received from the remote broker."),
    "dropped": (CounterMetricFamily, "bridge_dropped",
                "Messages dropped because the outbox was full."),
    "connects": (CounterMetricFamily, "bridge_connects", "Successful connections."),
    "looped": (CounterMetricFamily, "bridge_looped",
               "Messages refused because they had been in this broker already (a cycle of "
               "bridges), over this bridge or sent back by its remote."),
    "duplicates": (CounterMetricFamily, "bridge_duplicates",
                   "Messages pulled from the remote and not routed because the remote's "
                   "own bridge pushes them here."),
}


def _bridge_families(status: list[dict[str, object]]) -> Iterator[Metric]:
    """Per-bridge figures (issue 15), labelled by bridge name."""
    for key, (kind, name, doc) in _BRIDGE_FAMILIES.items():
        family = kind(_PREFIX + name, doc, labels=["bridge"])
        for bridge in status:
            value = bridge[key]
            assert isinstance(value, int)
            family.add_metric([str(bridge["name"])], value)
        yield family


class MetricsServer:
    """``GET /metrics`` and ``GET /health`` on ``metrics.host:metrics.port``."""

    def __init__(self, broker: MetricsHost) -> None:
        self.broker = broker
        self.lag = LoopLagProbe(broker.loop)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BrokerCollector(broker, self.lag))
        ProcessCollector(registry=self.registry)
        self._server: asyncio.AbstractServer | None = None
        self.addresses: list[tuple[str, int]] = []

    async def start(self) -> None:
        cfg = self.broker.config.metrics
        self._server = await asyncio.start_server(
            self._handle, cfg.host, cfg.port, reuse_address=True, limit=MAX_REQUEST,
        )
        for sock in self._server.sockets:
            addr = sock.getsockname()
            self.addresses.append((addr[0], addr[1]))
            log.info("metrics listening on %s:%s", addr[0], addr[1])
        self.lag.start()

    def close(self) -> None:
        self.lag.stop()
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request_line = await reader.readuntil(b"\n")
                for _ in range(100):  # headers: read and ignore
                    if (await reader.readuntil(b"\n")).strip() == b"":
                        break
                else:
                    raise ValueError("too many header lines")
            status, ctype, body, head = self._respond(request_line)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
                + (b"" if head else body)
            )
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.drain()
        except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()

    def _respond(self, request_line: bytes) -> tuple[str, str, bytes, bool]:
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", "text/plain", b"bad request\n", False
        method, target = parts[0], parts[1].split("?", 1)[0]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n", False
        if target == "/metrics":
            return "200 OK", CONTENT_TYPE_PLAIN_0_0_4, self.render(), head
        if target == "/health":
            failure = self.broker.store.last_failure
            if failure is not None:
                # Acknowledgements for persistent state stopped: RocksDB refuses writes
                # until the store reopens once the medium has room (docs/reliability.md).
                return ("503 Service Unavailable", "text/plain",
                        f"failing: storage: {failure}\n".encode(), head)
            cluster = self.broker.cluster
            if cluster is not None and not cluster.connected:
                # still serving its own clients: up, but not sharing with the cluster
                return "200 OK", "text/plain", b"degraded: cluster: no NATS connection\n", head
            return "200 OK", "text/plain", b"ok\n", head
        return "404 Not Found", "text/plain", b"not found: try /metrics or /health\n", head
