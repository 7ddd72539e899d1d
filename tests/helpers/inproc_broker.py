"""The real broker in-process for tests that need its objects as well as its sockets:
its :class:`Broker` on a free loopback port, memory store, ``$SYS`` off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from iotbroker.config import parse_config
from iotbroker.server.broker import Broker
from iotbroker.storage.memory import MemoryStore


async def memory_broker() -> AsyncIterator[Broker]:
    """Start the broker on the running loop, yield it, stop it (a fixture's body)."""
    config = parse_config({
        "listeners": [{"name": "default", "type": "tcp", "host": "127.0.0.1", "port": 0}],
        "storage": {"backend": "memory"},
        "sys_topics": {"enabled": False},
    }, "test")
    b = Broker(config, MemoryStore(), asyncio.get_running_loop())
    await b.start()
    yield b
    await b.stop()
