"""Group commit for ``durability: fsync`` (issue 19): output waits for the sync that
covers its turn's writes; many turns share one sync; bytes keep their order.

Driven on a real event loop with a store whose sync is slow (so the worker thread is
used), an engine stand-in whose synced commits take as long, and connection stand-ins
that record what is written to their transport.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from iotbroker.metrics import Metrics
from iotbroker.protocol.connection import Connection
from iotbroker.server import group_commit
from iotbroker.server.group_commit import GroupCommit
from iotbroker.server.transport import ClientProtocol
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


class Engine:
    """The engine's commit flag and timing (what GroupCommit reads and sets)."""

    def __init__(self, commit_seconds: float) -> None:
        self.sync_commits = False
        self.storage_write_seconds = 0.0
        self.commit_seconds = commit_seconds


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


def _conn() -> Connection:
    """A real protocol state machine (a compiled :class:`Client` checks the type of
    its ``conn``): the test queues bytes into it as a turn's packets would."""
    return Connection(max_packet_size=1 << 20, receive_maximum=10, topic_alias_maximum=0,
                      now=0.0)


class Proto(ClientProtocol):
    """A ClientProtocol without a broker or socket: what GroupCommit uses of it."""

    def __init__(self) -> None:  # no super().__init__: no broker, no socket here
        self.conn = _conn()
        self.transport = Transport()
        self.close_after_flush = False
        self.packets_counted = 0

    def write_pending(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def abort(self) -> None:
        self.transport.closed = True

    def finish_close(self) -> None:
        self.transport.close()


def _turn(group: GroupCommit, metrics: Metrics, protos: list[Proto], data: bytes) -> None:
    """One loop turn: a batch written (a synced write takes the disk's sync time),
    then output for each connection."""
    engine = group.engine
    assert isinstance(engine, Engine)
    metrics.storage_batches += 1
    if engine.sync_commits:
        engine.storage_write_seconds += engine.commit_seconds
    for p in protos:
        p.conn._queue(data)
    group.output(protos)  # type: ignore[arg-type]


def test_acks_wait_for_the_sync_and_turns_share_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        store, metrics = SlowStore(), Metrics()
        group = GroupCommit(store, metrics, loop, Engine(0.01))
        a, b = Proto(), Proto()
        _turn(group, metrics, [a], b"A1")  # synced write, measured slow: thread from now
        assert a.transport.written == [b"A1"] and not group.inline
        assert not group.engine.sync_commits
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
        # the three held turns needed at most two syncs
        assert store.syncs <= 2
        group.close()

    asyncio.run(main())


def test_nothing_written_since_the_last_sync_goes_out_at_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        metrics = Metrics()
        group = GroupCommit(SlowStore(), metrics, loop, Engine(0.01))
        group.inline = False
        p = Proto()
        p.conn._queue(b"PINGRESP")
        group.output([p])  # type: ignore[list-item]
        assert p.transport.written == [b"PINGRESP"]
        group.close()

    asyncio.run(main())


def test_fast_syncs_stay_on_the_loop_thread() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        metrics = Metrics()
        group = GroupCommit(MemoryStore(), metrics, loop, Engine(0.0002))
        p = Proto()
        for i in range(5):
            _turn(group, metrics, [p], b"%d" % i)
        assert group.inline and group.engine.sync_commits and group.syncs == 0
        assert p.transport.written == [b"0", b"1", b"2", b"3", b"4"]
        group.close()

    asyncio.run(main())


def test_close_drains_what_is_held() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        store, metrics = SlowStore(), Metrics()
        group = GroupCommit(store, metrics, loop, Engine(0.01))
        group.inline = group.engine.sync_commits = False
        p = Proto()
        p.close_after_flush = True
        _turn(group, metrics, [p], b"DISCONNECT")
        group.close()
        assert p.transport.written == [b"DISCONNECT"] and p.transport.closed

    asyncio.run(main())



def test_back_on_the_loop_after_the_probe_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """In thread mode the loop is tried again: one sync there covers what waited,
    and commits are synced writes again."""
    monkeypatch.setattr(group_commit, "PROBE_INTERVAL", 0.0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        store, metrics = SlowStore(), Metrics()
        engine = Engine(0.01)
        group = GroupCommit(store, metrics, loop, engine)
        p = Proto()
        _turn(group, metrics, [p], b"1")  # slow: thread mode
        engine.commit_seconds = 0.0001  # the disk got fast
        _turn(group, metrics, [p], b"2")  # held for the thread's sync
        assert p.transport.written == [b"1"]
        for _ in range(200):
            await asyncio.sleep(0.005)
            if group.inline:
                break
        assert group.inline and engine.sync_commits
        assert p.transport.written == [b"1", b"2"] and not group.pending
        _turn(group, metrics, [p], b"3")
        assert p.transport.written == [b"1", b"2", b"3"] and group.inline
        group.close()

    asyncio.run(main())
