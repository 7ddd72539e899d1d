"""Admitting a new socket: the connection limits (``limits.max_connections``, a
listener's ``max_connections``, ``limits.connect_rate``), the open connections and the
per-listener counts (docs/configuration.md, "limits").

Compiled with mypyc (issue 19: it runs once per connection, called by the compiled
``ClientProtocol``; as an interpreted ``Broker.connection_made`` it was an interpreted
frame with a dozen attribute lookups per connection). The broker owns one
:class:`Admission` and shares its dicts (``Broker.connections``,
``Broker.listener_accepted``); limits need a restart to change (``Broker.reload``), so
they are read once here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from iotbroker.config import LimitsConfig, ListenerConfig
from iotbroker.metrics import Metrics
from iotbroker.server.ratelimit import TokenBucket
from iotbroker.server.transport import ClientProtocol

#: The broker's logger: the "refusing connection" line is the broker's, as before.
log = logging.getLogger("iotbroker.broker")


class Admission:
    """The open socket connections of one broker and the limits on new ones."""

    __slots__ = ("_bucket", "_listener_max", "_loop", "_max_connections", "_metrics",
                 "_publish_rate", "connect_rate", "connections", "listener_accepted",
                 "per_listener")

    def __init__(self, limits: LimitsConfig, listeners: Sequence[ListenerConfig],
                 metrics: Metrics, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._metrics = metrics
        #: Every open connection (a dict used as an ordered set: about 30 bytes per
        #: entry at 10,000 against 52 for a set, issue 19).
        self.connections: dict[ClientProtocol, None] = {}
        #: Connections open now, per listener name.
        self.per_listener: dict[str, int] = {}
        #: Sockets admitted per listener name since the start (metrics label
        #: ``listener``; the names are those of docs/configuration.md ``listeners.name``).
        self.listener_accepted: dict[str, int] = {}
        self._max_connections: int = limits.max_connections or 0
        self._listener_max: dict[str, int] = {
            lc.name: lc.max_connections for lc in listeners if lc.max_connections
        }
        self.connect_rate = limits.connect_rate
        rate = limits.connect_rate
        self._bucket: TokenBucket | None = TokenBucket(rate, loop.time()) if rate else None
        self._publish_rate = limits.publish_rate_per_client

    def admit(self, proto: ClientProtocol) -> bool:
        """Admit a new socket, or say no (False) when a connection limit is hit: the
        caller closes it at once."""
        why: str | None = None
        connections = self.connections
        listener = proto.listener
        if self._max_connections and len(connections) >= self._max_connections:
            why = f"limits.max_connections ({self._max_connections}) reached"
        else:
            per_listener = self.per_listener
            if self._listener_max:
                most = self._listener_max.get(listener, 0)
                if most and per_listener.get(listener, 0) >= most:
                    why = f"listener {listener!r} max_connections reached"
            bucket = self._bucket
            if why is None and bucket is not None and not bucket.try_take(self._loop.time()):
                why = f"limits.connect_rate ({self.connect_rate}/s) exceeded"
        metrics = self._metrics
        if why is not None:
            metrics.connections_rejected += 1
            metrics.limit_hits += 1
            log.warning("refusing connection from %s: %s", proto.peer, why,
                        extra=proto.log_extra())
            return False
        connections[proto] = None
        per_listener = self.per_listener
        per_listener[listener] = per_listener.get(listener, 0) + 1
        accepted = self.listener_accepted
        accepted[listener] = accepted.get(listener, 0) + 1
        metrics.connections_accepted += 1
        if self._publish_rate:
            proto.publish_bucket = TokenBucket(self._publish_rate, self._loop.time())
        return True

    def ended(self, proto: ClientProtocol) -> None:
        """``proto`` is closed: no longer open, nor counted on its listener."""
        connections = self.connections
        if proto in connections:
            del connections[proto]
            self.per_listener[proto.listener] -= 1
