"""Group commit for ``durability: fsync`` (issue 19): output waits for the sync that
covers its turn's writes; many turns share one sync; bytes keep their order.

Driven on a real event loop with a store whose sync is slow (so the worker thread is
used) and connection stand-ins that record what is written to their transport.
"""

from __future__ import annotations

import asyncio
import threading
import time

from iotbroker.metrics import Metrics
from iotbroker.server.group_commit import GroupCommit
from iotbroker.storage.memory import MemoryStore


class SlowStore(MemoryStore):
    """Each sync takes 10 ms (a slow disk) and can be held back by a test."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.syncs = 0

    def sync(self) -> None:
        self.gate.wait(5)
        time.sleep(0.01)
        self.syncs += 1


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class Conn:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.packets_queued = 0

    def data_to_send(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data


class Proto:
    """What GroupCommit uses of a ClientProtocol."""

    def __init__(self) -> None:
        self.conn = Conn()
        self.transport = Transport()
        self.close_after_flush = False
        self.packets_counted = 0

    def write_pending(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def abort(self) -> None:
        self.transport.closed = True


def _turn(group: GroupCommit, metrics: Metrics, protos: list[Proto], data: bytes) -> None:
    """One loop turn: a batch written, then output for each connection."""
    metrics.storage_batches += 1
    for p in protos:
        p.conn.out.append(data)
    group.output(protos)  # type: ignore[arg-type]


def test_acks_wait_for_the_sync_and_turns_share_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        store, metrics = SlowStore(), Metrics()
        group = GroupCommit(store, metrics, loop)
        a, b = Proto(), Proto()
        _turn(group, metrics, [a], b"A1")  # inline, measured slow: thread from now on
        assert a.transport.written == [b"A1"] and not group.inline
        store.gate.clear()  # the next sync cannot finish yet
        _turn(group, metrics, [a, b], b"x2")
        _turn(group, metrics, [b], b"B3")
        _turn(group, metrics, [a], b"A4")
        await asyncio.sleep(0.02)
        assert a.transport.written == [b"A1"] and b.transport.written == []
        store.gate.set()
        for _ in range(200):
            await asyncio.sleep(0.005)
            if not group.pending:
                break
        assert a.transport.written == [b"A1", b"x2", b"A4"]
        assert b.transport.written == [b"x2", b"B3"]
        # one inline sync, then the held turns needed at most two syncs, not three
        assert store.syncs <= 3
        group.close()

    asyncio.run(main())


def test_nothing_written_since_the_last_sync_goes_out_at_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        metrics = Metrics()
        group = GroupCommit(SlowStore(), metrics, loop)
        p = Proto()
        p.conn.out.append(b"PINGRESP")
        group.output([p])  # type: ignore[list-item]
        assert p.transport.written == [b"PINGRESP"]
        group.close()

    asyncio.run(main())


def test_fast_syncs_stay_on_the_loop_thread() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        metrics = Metrics()
        group = GroupCommit(MemoryStore(), metrics, loop)
        p = Proto()
        for i in range(5):
            _turn(group, metrics, [p], b"%d" % i)
        assert group.inline and group.syncs == 5
        assert p.transport.written == [b"0", b"1", b"2", b"3", b"4"]
        group.close()

    asyncio.run(main())


def test_close_drains_what_is_held() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        store, metrics = SlowStore(), Metrics()
        group = GroupCommit(store, metrics, loop)
        group.inline = False
        p = Proto()
        p.close_after_flush = True
        _turn(group, metrics, [p], b"DISCONNECT")
        group.close()
        assert p.transport.written == [b"DISCONNECT"] and p.transport.closed

    asyncio.run(main())

