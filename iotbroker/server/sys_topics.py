"""``$SYS/broker/...`` statistics topics, mosquitto-compatible names and formats.

Every ``sys_topics.interval`` seconds the values are read from the broker's
:class:`~iotbroker.metrics.Metrics` and registries, and each topic whose value changed
since it was last published is published as a retained QoS 0 message through the
router (so ACLs, retained handling and the rule that wildcards at the first level never
match ``$`` topics [MQTT-4.7.2-1] apply as to any message). One ``loop.call_later``
timer, no task.

The ``load/.../1min|5min|15min`` topics are exponential moving averages of the rate
per minute, computed as mosquitto does: ``load = rate + exp(-dt/window) * (load - rate)``
with ``rate = delta * 60 / dt`` over the last interval ``dt``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import sys
from typing import Protocol

from iotbroker import __version__
from iotbroker.codec.packets import NO_PROPERTIES
from iotbroker.config import BrokerConfig, ClusterConfig
from iotbroker.engine.engine import Engine
from iotbroker.message import Message
from iotbroker.metrics import Metrics

__all__ = ["SYS_PREFIX", "SysTopics", "SysTopicsHost"]

log = logging.getLogger("iotbroker.sys")

SYS_PREFIX = "$SYS/broker/"

#: load/<name>/... topic part -> the Metrics counter it is the rate of.
_LOADS = (
    ("messages/received", "messages_received"),
    ("messages/sent", "messages_sent"),
    ("publish/received", "publish_received"),
    ("publish/sent", "publish_sent"),
    ("publish/dropped", "_dropped"),
    ("bytes/received", "bytes_received"),
    ("bytes/sent", "bytes_sent"),
    # mosquitto: load/connections is the rate of CONNECT packets, load/sockets the rate
    # of network connections accepted (before any CONNECT).
    ("connections", "connects_received"),
    ("sockets", "connections_accepted"),
)
_WINDOWS = (("1min", 60.0), ("5min", 300.0), ("15min", 900.0))


def process_memory() -> tuple[int, int]:
    """(resident set size now, peak resident set size) of this process, in bytes.

    Linux: ``/proc/self/statm`` (resident pages) and ``getrusage`` ``ru_maxrss`` (KiB);
    elsewhere the peak stands for both (macOS reports ``ru_maxrss`` in bytes).
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak if sys.platform == "darwin" else peak * 1024
    try:
        with open("/proc/self/statm", "rb") as statm:
            current = int(statm.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        current = peak
    return current, peak


class ClusterView(Protocol):
    """What ``$SYS/broker/cluster/...`` reads of the cluster room (``ClusterNode``)."""

    @property
    def config(self) -> ClusterConfig: ...

    def status(self) -> dict[str, int]: ...

    def totals(self) -> dict[str, int]: ...


class SysTopicsHost(Protocol):
    """The broker as ``$SYS`` sees it (``server/broker.py`` is one): what it reads, and
    where it publishes. A protocol, so this module never refers back to broker.py."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def config(self) -> BrokerConfig: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def started_at(self) -> float: ...

    @property
    def cluster(self) -> ClusterView | None: ...

    def now(self) -> float:
        """Wall-clock time (message expiry)."""

    def bridges_status(self) -> list[dict[str, object]]:
        """Each bridge's state (mosquitto's ``connection/<name>/...``)."""

    def bridges_looped(self) -> int:
        """Messages refused because they had been in this broker already (all bridges)."""

    def flush(self) -> None:
        """Commit the turn's storage batch, then write each connection's output."""


class SysTopics:
    """Publishes the ``$SYS`` tree of one broker; :meth:`start` / :meth:`stop`."""

    def __init__(self, broker: SysTopicsHost) -> None:
        self.broker = broker
        self.interval = broker.config.sys_topics.interval
        self._timer: asyncio.TimerHandle | None = None
        self._last: dict[str, str] = {}
        self._loads: dict[str, float] = {}
        self._prev_counts: dict[str, int] = {}
        self._prev_time: float | None = None
        self._heap_max = 0

    def start(self) -> None:
        self._tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---------------------------------------------------------------- values
    def _dropped(self) -> int:
        m = self.broker.metrics
        return (m.messages_dropped_queue_full + m.messages_dropped_qos0_offline
                + m.messages_dropped_slow_consumer + m.messages_dropped_too_large)

    def _store_figures(self) -> tuple[int, int]:
        """(shared subscriptions, payload bytes of the stored messages).

        ``store/messages/bytes`` covers what ``store/messages/count`` counts: retained
        messages plus the deliveries waiting in session queues (also those the pager
        moved to disk: the session keeps their sizes) or in flight. mosquitto's figure
        is the payload bytes of its message store.
        """
        engine = self.broker.engine
        shared = 0
        stored = sum(len(message.payload) for message in engine.retained.all())
        for session in engine.registry.sessions.values():
            for entry in session.subscriptions.values():
                if entry.share_group is not None:
                    shared += 1
            stored += session.queued_bytes
            for inflight in session.inflight.values():
                stored += len(inflight.delivery.message.payload)
        return shared, stored

    def values(self, now: float) -> dict[str, str]:
        """Topic (without the ``$SYS/broker/`` prefix) -> payload text."""
        broker = self.broker
        m = broker.metrics
        sessions = len(broker.engine.registry)
        pending = broker.engine.registry.deliveries_pending()
        retained = len(broker.engine.retained)
        dropped = self._dropped()
        shared, stored_bytes = self._store_figures()
        heap, heap_peak = process_memory()
        self._heap_max = max(self._heap_max, heap_peak, heap)
        out = {
            "version": f"iotbroker version {__version__}",
            "uptime": f"{int(now - broker.started_at)} seconds",
            "clients/connected": str(m.clients_connected),
            "clients/active": str(m.clients_connected),  # deprecated mosquitto alias
            "clients/disconnected": str(max(0, sessions - m.clients_connected)),
            "clients/inactive": str(max(0, sessions - m.clients_connected)),  # alias
            "clients/maximum": str(m.clients_maximum),
            "clients/total": str(sessions),
            "clients/expired": str(m.sessions_expired),
            "messages/received": str(m.messages_received),
            "messages/sent": str(m.messages_sent),
            "messages/stored": str(retained + pending),  # deprecated mosquitto alias
            "store/messages/count": str(retained + pending),
            "store/messages/bytes": str(stored_bytes),
            "publish/messages/received": str(m.publish_received),
            "publish/messages/sent": str(m.publish_sent),
            "publish/messages/dropped": str(dropped),
            "bytes/received": str(m.bytes_received),
            "bytes/sent": str(m.bytes_sent),
            "publish/bytes/received": str(m.publish_bytes_received),
            "publish/bytes/sent": str(m.publish_bytes_sent),
            "retained messages/count": str(retained),
            "subscriptions/count": str(len(broker.engine.trie)),
            "shared_subscriptions/count": str(shared),
            # mosquitto (built with memory tracking): bytes its allocator holds now, and
            # the most it held. Python has no such cheap figure: the resident set size
            # of the process now, and its peak.
            "heap/current": str(heap),
            "heap/maximum": str(self._heap_max),
        }
        for bridge in broker.bridges_status():  # mosquitto's connection/<name>/state
            base = f"connection/{bridge['name']}/"
            for key in ("state", "queued_messages", "queued_bytes", "forwarded_out",
                        "forwarded_in", "dropped", "looped", "duplicates", "last_error"):
                out[base + key] = str(bridge[key])
            out["bridges/looped"] = str(broker.bridges_looped())
        out.update(self._load_values())
        cluster = broker.cluster
        if cluster is not None:  # this node's view, and the totals (docs/cluster.md)
            out["cluster/node"] = cluster.config.node_name
            for name, value in cluster.status().items():
                out[f"cluster/{name.replace('_', '/', 1)}"] = str(value)
            for name, value in cluster.totals().items():
                out[f"cluster/total/{name}"] = str(value)
        return out

    def _load_values(self) -> dict[str, str]:
        m = self.broker.metrics
        now = self.broker.loop.time()
        counts = {
            name: self._dropped() if attr == "_dropped" else int(getattr(m, attr))
            for name, attr in _LOADS
        }
        prev_time = self._prev_time
        self._prev_time = now
        out: dict[str, str] = {}
        for name, count in counts.items():
            prev = self._prev_counts.get(name)
            self._prev_counts[name] = count
            for window_name, window in _WINDOWS:
                key = f"load/{name}/{window_name}"
                load = self._loads.get(key, 0.0)
                if prev is not None and prev_time is not None and now > prev_time:
                    dt = now - prev_time
                    rate = (count - prev) * 60.0 / dt
                    load = rate + math.exp(-dt / window) * (load - rate)
                self._loads[key] = load
                out[key] = f"{load:.2f}"
        return out

    # ---------------------------------------------------------------- publish
    def _tick(self) -> None:
        self._timer = None
        broker = self.broker
        try:
            self.publish_changed(broker.now())
        except Exception:  # never let statistics take the broker down
            log.exception("publishing $SYS topics failed")
        self._timer = broker.loop.call_later(self.interval, self._tick)

    def publish_changed(self, now: float) -> int:
        """Publish every topic whose value changed; returns how many were published."""
        broker = self.broker
        last = self._last
        published = 0
        for name, value in self.values(now).items():
            if last.get(name) == value:
                continue
            last[name] = value
            broker.engine.publish_own(
                Message(
                    topic=SYS_PREFIX + name,
                    payload=value.encode(),
                    qos=0,
                    retain=True,
                    properties=NO_PROPERTIES,  # shared: the codec and storage test identity
                    created_at=now,
                ),
                now,
            )
            published += 1
        if published:
            broker.flush()  # storage batch, then one write per connection
        return published
