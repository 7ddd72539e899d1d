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
disk) that costs more than it saves (measured here with 1.2 ms syncs: 12% fewer
acks per second and 17% more CPU per message than on the loop), so the sync is done on the loop
thread, at the end of the turn, as long as syncs stay below :data:`INLINE_SYNC_MAX`
(a moving average); slower syncs move to the thread, and a sync on the loop is tried
again every :data:`PROBE_INTERVAL` seconds. Either way one sync covers every batch
written before it, and no output waits for a sync that does not cover it. On the
loop thread the sync is RocksDB's own, inside each commit's write (what the broker
did before group commit); in the worker thread the commits only write the log.

The rule the flush keeps (design.md, "A QoS 1 PUBLISH") is unchanged, only stronger:
no byte of a turn reaches a socket before that turn's changes, and every change
written before them, are synced. While any output is held, every later turn's output
waits behind it, so a connection's bytes keep their order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from iotbroker.errors import StorageError
from iotbroker.metrics import Metrics
from iotbroker.server import packetlog
from iotbroker.server.logsetup import FLAGS
from iotbroker.server.parked import NOT_PARKED
from iotbroker.server.transport import ClientProtocol
from iotbroker.storage.base import Store

if TYPE_CHECKING:
    from iotbroker.engine.client import Writable

log = logging.getLogger("iotbroker.storage")

#: Syncs faster than this (moving average, seconds) are done on the loop thread: the
#: GIL handoff back from a worker thread costs up to CPython's switch interval (5 ms),
#: and a loop blocked in a sync batches what arrives meanwhile into its next turn.
INLINE_SYNC_MAX = 0.005
#: In thread mode, how often (seconds) a sync on the loop is measured again.
PROBE_INTERVAL = 5.0

#: Output held until a sync: (writes it needs synced, connection, bytes, close after).
#: For a socket connection the bytes are taken out of it when its turn ends; another
#: room's client is held as it is (``None``) and written by its own ``write_pending``
#: on release, with whatever it has queued by then.
Held = tuple[int, "Writable", bytes | None, bool]


class Committer(Protocol):
    """What group commit needs of the engine: whether its commits sync the store
    themselves (``sync_commits``), and the time they took (``storage_write_seconds``)."""

    sync_commits: bool
    storage_write_seconds: float


class GroupCommit:
    """Holds each turn's output until the sync that covers its writes has returned.

    ``metrics.storage_batches`` (one per committed batch) numbers the writes: output
    held with number ``n`` needs a sync started after batch ``n`` was written.

    On the loop thread (``inline``) the engine's commits are synced writes (RocksDB's
    own per-write sync, exactly as without group commit) and nothing is held; their
    average time decides when to move the syncs to the worker thread, where the
    commits only write the log and output waits.
    """

    def __init__(self, store: Store, metrics: Metrics, loop: asyncio.AbstractEventLoop,
                 engine: Committer) -> None:
        self.store = store
        self.metrics = metrics
        self.loop = loop
        self.engine = engine
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="iotbroker-sync")
        #: Batches written and synced so far (a count of ``storage_batches``).
        self._synced = metrics.storage_batches
        #: What the running sync covers (None: no sync running), and its future.
        self._syncing: int | None = None
        self._future: asyncio.Future[None] | None = None
        self._held: deque[Held] = deque()
        self._closed = False
        #: Syncs done in the worker thread or at a switch (for tests and the metrics).
        self.syncs = 0
        #: Syncs on the loop thread (fast disk) or in the worker thread.
        self.inline = True
        engine.sync_commits = True
        #: Moving average of a synced commit on the loop thread, seconds.
        self.sync_seconds = 0.0
        self._seen_seconds = engine.storage_write_seconds
        self._probe_at = 0.0

    @property
    def pending(self) -> int:
        """Connections' outputs waiting for a sync."""
        return len(self._held)

    def output(self, dirty: Sequence[Writable]) -> None:
        """This turn's output (its batch already written): write it now if every write
        so far is synced and nothing waits, else hold it for the next sync."""
        written = self.metrics.storage_batches
        if self.inline:
            # Every commit was a synced write: the turn is durable.
            if written != self._synced:
                self._measure(written)
            self._synced = written
        if written == self._synced and not self._held:
            for proto in dirty:
                proto.write_pending()
                if proto.close_after_flush:
                    proto.finish_close()
            return
        held = self._held
        for proto in dirty:
            data = proto.conn.data_to_send() if isinstance(proto, ClientProtocol) else None
            held.append((written, proto, data, proto.close_after_flush))
        self._start()

    def _measure(self, written: int) -> None:
        """Average time of the synced commits since the last turn; above
        :data:`INLINE_SYNC_MAX`, later commits only write and a thread syncs."""
        seconds = self.engine.storage_write_seconds
        took = (seconds - self._seen_seconds) / (written - self._synced)
        self._seen_seconds = seconds
        average = self.sync_seconds = (
            took if not self.sync_seconds else 0.9 * self.sync_seconds + 0.1 * took
        )
        if average > INLINE_SYNC_MAX:
            self.inline = False  # a slow disk: overlap the syncs with the loop's work
            self.engine.sync_commits = False
            self._probe_at = self.loop.time() + PROBE_INTERVAL
            log.info("storage syncs take %.2f ms: syncing in a worker thread", average * 1e3)

    def _to_inline(self) -> None:
        """Back to synced commits on the loop (re-measured): one sync here covers what
        was written meanwhile, and what waited for it goes out."""
        try:
            self.store.sync()
        except StorageError as exc:
            self._failed(exc)
            return
        self.syncs += 1
        self._synced = self.metrics.storage_batches
        self._release(self._synced)
        self.inline = True
        self.engine.sync_commits = True
        self.sync_seconds = 0.0
        self._seen_seconds = self.engine.storage_write_seconds

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
            self._to_inline()  # measure synced commits on the loop again
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
            if not isinstance(proto, ClientProtocol):
                proto.write_pending()  # another room's client (MQTT-SN): its own path
                if close:
                    proto.finish_close()
                continue
            transport = proto.transport
            if transport is None:
                if data and proto.parked_fd != NOT_PARKED:
                    proto.send_parked(data)  # no transport (server/parking.py)
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
                proto.finish_close()

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
