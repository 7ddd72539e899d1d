"""Waiting for the engine's connect gate on behalf of a host (server/broker.py for
socket connections, server/mqttsn_udp.py for MQTT-SN datagrams).

``engine/connect.py`` ``wait_before_accept`` may hand the host an awaitable (a room's
wait, e.g. the cluster's session read, docs/cluster.md "Sessions move"); the host holds
it until it is done and then accepts the CONNECT, or refuses it with the reason the
wait ended with (0x89 Server busy, MQTT 5.0 §3.2.2.2).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


def when_waited(wait: Awaitable[str | None], held: set[asyncio.Future[str | None]],
                then: Callable[[str | None], None]) -> None:
    """Run ``wait``, holding its future in ``held`` until it is done (the loop keeps
    only weak references to tasks), then call ``then`` with the reason it ended with:
    None to accept — also when the wait was cancelled or raised (the room logged why;
    the CONNECT is not lost to a bug of the wait)."""
    future = asyncio.ensure_future(wait)
    held.add(future)
    future.add_done_callback(held.discard)

    def done(finished: asyncio.Future[str | None]) -> None:
        then(None if finished.cancelled() or finished.exception() is not None
             else finished.result())

    future.add_done_callback(done)
