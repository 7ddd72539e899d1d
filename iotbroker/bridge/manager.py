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
from iotbroker.bridge.origin import broker_id, crossed
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
        #: bridges), from clients (remote bridges) and over our own ``in`` rules.
        self.looped = 0

    def _hook(self) -> None:
        """The engine asks about marks only while bridges are configured (a broker
        without bridges forwards nothing, so it cannot close a cycle)."""
        self.engine.seen_before = self._seen_before if self.bridges else None

    def _seen_before(self, props: Properties) -> bool:
        """Engine hook: a client's PUBLISH (a remote bridge's ``out``) that carries
        this broker's mark has been here already: acknowledged and not routed."""
        if not crossed(props, self.broker_id):
            return False
        self.looped += 1
        if self.looped == 1:
            log.info("bridges: a message that had been in this broker already came back "
                     "(cycle of bridges): not routed again (counted as looped)")
        return True

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
            self._add(cfg)
        self._hook()
        self.flush()

    def _add(self, cfg: BridgeConfig) -> None:
        bridge = Bridge(cfg, self.engine, self.loop, self.flush, self)
        self.bridges[cfg.name] = bridge
        bridge.start()

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
                await bridge.stop()
                bridge.remove()
                del self.bridges[name]
                log.info("bridge %r removed", name)
            elif new[name] != bridge.config:
                await bridge.stop()
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
