"""All bridges of one broker: start, stop and SIGHUP changes (issue 15).

A bridge that leaves the configuration has its session (and outbox) ended; one that
changes is reconnected with its new settings and keeps its outbox; the others are not
touched. At start-up, sessions of bridges no longer configured are ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from iotbroker.bridge.bridge import SESSION_PREFIX, Bridge
from iotbroker.bridge.origin import MARKER, broker_id, crossed
from iotbroker.bridge.peers import Peers
from iotbroker.codec.packets import Properties
from iotbroker.config import BridgeConfig
from iotbroker.engine.engine import Engine

log = logging.getLogger("iotbroker.bridge")


class Bridges:
    """The broker's bridges by name."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop,
                 flush: Callable[[], None]) -> None:
        self.engine = engine
        self.loop = loop
        self.flush = flush
        self.bridges: dict[str, Bridge] = {}
        #: One reload at a time (two SIGHUPs in a row apply one after the other).
        self._lock = asyncio.Lock()
        #: This broker's id in bridge-origin marks (bridge/origin.py).
        self.broker_id = broker_id(engine.config.storage.backend,
                                   engine.config.storage.path)
        #: Messages refused because they had been in this broker already (a cycle of
        #: bridges), from clients (remote bridges) and over our own ``in`` rules; each
        #: bridge counts those it can be named for (:meth:`Bridge.status` ``looped``).
        self.looped = 0
        #: What other iotbrokers' bridges told us they push here (bridge/peers.py).
        self.peers = Peers()

    def _hook(self) -> None:
        """The engine asks about marks and bridge hellos only while bridges are
        configured (a broker without bridges forwards nothing, so it can neither close
        a cycle nor carry a message twice)."""
        self.engine.seen_before = self._seen_before if self.bridges else None
        self.engine.bridge_hello = self._hello if self.bridges else None

    def _hello(self, client_id: str, props: Properties) -> tuple[tuple[str, str], ...]:
        """Engine hook: an MQTT 5.0 CONNECT with User Properties. Another iotbroker's
        bridge is told this broker's id in the CONNACK, and its ``out`` rules are kept
        (bridge/peers.py); any other client gets a CONNACK without User Properties."""
        if not self.peers.said_hello(client_id, props):
            return ()
        return ((MARKER, self.broker_id),)

    def _seen_before(self, client_id: str, props: Properties) -> bool:
        """Engine hook: a client's PUBLISH (a remote bridge's ``out``) that carries
        this broker's mark has been here already: acknowledged and not routed. Counted
        for our bridge to the broker that sent it back, when that is known."""
        if not crossed(props, self.broker_id):
            return False
        self.count_looped(self.peers.broker_of.get(client_id, ""))
        return True

    def count_looped(self, sender: str, bridge: Bridge | None = None) -> None:
        """One message refused because it had been here already; ``sender`` is the
        broker id that sent it back ("" unknown), ``bridge`` the bridge it came in on
        (None: from a client on a listener)."""
        self.looped += 1
        if bridge is None and sender:
            bridge = next((b for b in self.bridges.values() if b.remote_id == sender), None)
        if bridge is not None:
            bridge.looped += 1
        if self.looped == 1:
            log.info("bridges: a message that had been in this broker already came back "
                     "(cycle of bridges): not routed again (counted as looped)")

    def start(self, configs: tuple[BridgeConfig, ...]) -> None:
        names = {c.name for c in configs}
        registry = self.engine.registry
        for client_id in [c for c in registry.sessions if c.startswith(SESSION_PREFIX)]:
            if client_id[len(SESSION_PREFIX):] not in names:
                session = registry.get(client_id)
                if session is not None:
                    log.info("bridge %r is no longer configured: its outbox (%d messages) "
                             "is dropped", client_id[len(SESSION_PREFIX):],
                             session.queued_count + len(session.inflight))
                    registry.destroy(session)
        for cfg in configs:
            self._add(cfg, after_restart=True)
        self._hook()
        self.flush()

    def _add(self, cfg: BridgeConfig, after_restart: bool = False) -> None:
        bridge = Bridge(cfg, self.engine, self.loop, self.flush, self)
        self.bridges[cfg.name] = bridge
        bridge.start(after_restart)

    async def stop(self) -> None:
        for bridge in list(self.bridges.values()):
            await bridge.stop()
        self.flush()

    async def reload(self, configs: tuple[BridgeConfig, ...]) -> None:
        """Apply a new list of bridges; unchanged ones keep their connection."""
        async with self._lock:
            await self._reload(configs)

    async def _reload(self, configs: tuple[BridgeConfig, ...]) -> None:
        new = {c.name: c for c in configs}
        for name, bridge in list(self.bridges.items()):
            if name not in new:
                await bridge.stop(end_remote_session=True)
                bridge.remove()
                del self.bridges[name]
                log.info("bridge %r removed", name)
            elif new[name] != bridge.config:
                # A new client id leaves the old session on the remote behind: ended.
                await bridge.stop(
                    end_remote_session=new[name].client_id != bridge.config.client_id)
                del self.bridges[name]
                self._add(new[name])
                log.info("bridge %r changed: reconnecting with the new settings", name)
        for name, cfg in new.items():
            if name not in self.bridges:
                self._add(cfg)
                log.info("bridge %r added", name)
        self._hook()
        self.flush()

    def status(self) -> list[dict[str, object]]:
        return [b.status() for b in self.bridges.values()]
