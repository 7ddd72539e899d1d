"""Group commit for ``storage.durability: fsync``: many turns, one sync.

Without it each loop turn's batch is written with a sync on the event loop thread: the
loop stands still for every fsync, and throughput is one turn per sync. Here a turn's
batch is only written to the log (``Store.apply(batch, sync=False)``: no wait) and the
turn's output (PUBACK, PUBREC, CONNACK with session state, and everything else the
turn produced for each connection) is taken out of the connections and held; one
worker thread syncs the log (``Store.sync``), and when a sync returns, the output of
every turn whose writes it covers is written, in order. The turns that come meanwhile
write their batches too and are covered by the next sync: one sync per batch of
turns, however many publishers they hold.

A sync in another thread has a price of its own: the thread must take the GIL back
from a busy event loop to report (up to CPython's switch interval, 5 ms) and wake the
loop. On a disk whose sync takes a few milliseconds or less (an SSD, a virtual
disk) that costs more than it saves (measured here: a 1.2 ms sync in the thread
gave 15% fewer acks per second than on the loop), so the sync is done on the loop
thread, at the end of the turn, as long as syncs stay below :data:`INLINE_SYNC_MAX`
(a moving average); slower syncs move to the thread, and a sync on the loop is tried
again every :data:`PROBE_INTERVAL` seconds. Either way one sync covers every batch
written before it, and no output waits for a sync that does not cover it.

The rule the flush keeps (design.md, "A QoS 1 PUBLISH") is unchanged, only stronger:
no byte of a turn reaches a socket before that turn's changes, and every change
written before them, are synced. While any output is held, every later turn's output
waits behind it, so a connection's bytes keep their order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from iotbroker.errors import StorageError
from iotbroker.metrics import Metrics
from iotbroker.server import packetlog
from iotbroker.server.logsetup import FLAGS
from iotbroker.storage.base import Store

if TYPE_CHECKING:
    from iotbroker.server.transport import ClientProtocol

log = logging.getLogger("iotbroker.storage")

#: Syncs faster than this (moving average, seconds) are done on the loop thread: the
#: GIL handoff back from a worker thread costs up to CPython's switch interval (5 ms),
#: and a loop blocked in a sync batches what arrives meanwhile into its next turn.
INLINE_SYNC_MAX = 0.005
#: In thread mode, how often (seconds) a sync on the loop is measured again.
PROBE_INTERVAL = 5.0

#: Output held until a sync: (writes it needs synced, connection, bytes, close after).
Held = tuple[int, "ClientProtocol", bytes, bool]


class GroupCommit:
    """Holds each turn's output until the sync that covers its writes has returned.

    ``metrics.storage_batches`` (one per committed batch) numbers the writes: output
    held with number ``n`` needs a sync started after batch ``n`` was written.
    """

    def __init__(self, store: Store, metrics: Metrics, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.metrics = metrics
        self.loop = loop
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="iotbroker-sync")
        #: Batches written and synced so far (a count of ``storage_batches``).
        self._synced = metrics.storage_batches
        #: What the running sync covers (None: no sync running), and its future.
        self._syncing: int | None = None
        self._future: asyncio.Future[None] | None = None
        self._held: deque[Held] = deque()
        self._closed = False
        #: Syncs done (for the benchmark and the metrics).
        self.syncs = 0
        #: Sync on the loop thread (fast disk) or in the worker thread.
        self.inline = True
        #: Moving average of a sync on the loop thread, seconds.
        self.sync_seconds = 0.0
        self._probe_at = 0.0

    @property
    def pending(self) -> int:
        """Connections' outputs waiting for a sync."""
        return len(self._held)

    def output(self, dirty: list[ClientProtocol]) -> None:
        """This turn's output (its batch already written): write it now if every write
        so far is synced and nothing waits, else hold it for the next sync."""
        written = self.metrics.storage_batches
        if written == self._synced and not self._held:
            for proto in dirty:
                proto.write_pending()
                if proto.close_after_flush and proto.transport is not None:
                    proto.transport.close()
            return
        held = self._held
        if self.inline and self._syncing is None:
            if not self._sync_inline(written, dirty):
                return
            self._release(written)  # what waited is covered too, and goes first
            for proto in dirty:
                proto.write_pending()
                if proto.close_after_flush and proto.transport is not None:
                    proto.transport.close()
            return
        for proto in dirty:
            held.append((written, proto, proto.conn.data_to_send(), proto.close_after_flush))
        self._start()

    def _sync_inline(self, written: int, dirty: list[ClientProtocol]) -> bool:
        """Sync on the loop thread, timed; False (connections closed) if it failed."""
        started = time.perf_counter()
        try:
            self.store.sync()
        except StorageError as exc:
            log.error("storage sync failed, closing %d connections without acks: %s",
                      len(dirty), exc)
            for proto in dirty:
                proto.conn.data_to_send()
                proto.abort()
            self._failed(exc)
            return False
        took = time.perf_counter() - started
        self.syncs += 1
        self._synced = written
        average = self.sync_seconds = (
            took if not self.sync_seconds else 0.9 * self.sync_seconds + 0.1 * took
        )
        if average > INLINE_SYNC_MAX:
            self.inline = False  # a slow disk: overlap the syncs with the loop's work
            self._probe_at = self.loop.time() + PROBE_INTERVAL
            log.info("storage syncs take %.2f ms: syncing in a worker thread", average * 1e3)
        return True

    def _start(self) -> None:
        if self._syncing is not None or self._closed:
            return  # the running sync's end starts the next one
        self._syncing = self.metrics.storage_batches
        future = self._future = self.loop.run_in_executor(self._executor, self.store.sync)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[None]) -> None:
        if future is not self._future:
            return  # drain() waited for it already
        target, self._syncing, self._future = self._syncing, None, None
        if self._closed or target is None:
            return
        exc = None if future.cancelled() else future.exception()
        if future.cancelled() or exc is not None:
            self._failed(exc)
            return
        self.syncs += 1
        self._synced = target
        self._release(target)
        if self.loop.time() >= self._probe_at:
            self.inline = True  # the next turn measures a sync on the loop again
            self.sync_seconds = 0.0
        elif self._held:
            self._start()

    def _failed(self, exc: BaseException | None) -> None:
        """The sync failed (disk full, I/O error): nothing it covered is acknowledged;
        those connections are closed (their clients send again)."""
        held = self._held
        log.error("storage sync failed, closing %d connections without acks: %s",
                  len({id(h[1]) for h in held}), exc)
        self._held = deque()
        for _, proto, _, _ in held:
            proto.abort()

    def _release(self, synced: int) -> None:
        held = self._held
        metrics = self.metrics
        while held and held[0][0] <= synced:
            _, proto, data, close = held.popleft()
            transport = proto.transport
            if transport is None:
                continue
            if data and not transport.is_closing():
                if FLAGS.packets:  # --log-level DEBUG: a line per packet
                    packetlog.log_outbound(proto, data)
                conn = proto.conn
                metrics.bytes_sent += len(data)
                metrics.messages_sent += conn.packets_queued - proto.packets_counted
                proto.packets_counted = conn.packets_queued
                transport.write(data)  # type: ignore[attr-defined]
            if close:
                transport.close()

    def drain(self) -> None:
        """Sync now, on this thread, and write everything held (at shutdown)."""
        if self._syncing is not None:
            self._executor.submit(lambda: None).result()  # the running sync has ended
            self._syncing = self._future = None
        try:
            self.store.sync()
        except StorageError as exc:
            self._failed(exc)
            return
        self._synced = self.metrics.storage_batches
        self._release(self._synced)

    def close(self) -> None:
        self.drain()
        self._closed = True
        self._executor.shutdown(wait=True)
