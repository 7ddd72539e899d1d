"""RocksDBStore under expected failures: newer schema, locked, corrupt, full disk, kill -9.

Each failure must surface as one StorageError whose message names the path and says
what to do, never as a rocksdict traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from iotbroker.codec.packets import NO_PROPERTIES
from iotbroker.errors import StorageError
from iotbroker.message import Delivery, Message
from iotbroker.storage.base import ChangeBatch, QueuedRecord, SessionRecord
from iotbroker.storage.rocksdb import FAMILIES, SCHEMA_VERSION, RocksDBStore


def _fill(store: RocksDBStore, n: int = 500) -> None:
    batch = ChangeBatch()
    m = Message("t/x", os.urandom(200), 1, False, NO_PROPERTIES, 1.0)
    for i in range(n):
        batch.put_queued(QueuedRecord("dev", i, Delivery(m, 1)))
    batch.put_session(SessionRecord("dev", 5, 60, next_seq=n))
    store.apply(batch)


def _raw_open(path: Path, extra: tuple[str, ...] = ()) -> Rdict:
    opts = Options(raw_mode=True)
    opts.create_missing_column_families(True)
    cfs = {n: Options(raw_mode=True) for n in (*FAMILIES, *extra)}
    return Rdict(str(path), opts, column_families=cfs)


def _garble(path: Path, start: int = 0, length: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    end = len(data) if length is None else start + length
    data[start:end] = os.urandom(end - start)
    path.write_bytes(bytes(data))


def _assert_clean(err: pytest.ExceptionInfo[StorageError]) -> None:
    """The rocksdict exception does not ride along as a chained traceback."""
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


# ------------------------------------------------------------------ schema version


def test_new_store_writes_schema_version(tmp_path: Path) -> None:
    RocksDBStore(tmp_path / "db").close()
    db = _raw_open(tmp_path / "db")
    try:
        raw = db.get_column_family("meta").get(b"schema_version")
        assert raw == SCHEMA_VERSION.to_bytes(4, "big")
    finally:
        db.close()


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = RocksDBStore(path)
    _fill(store, 10)
    store.close()
    # A future version added a column family and bumped the schema version.
    db = _raw_open(path, extra=("messages",))
    db.get_column_family("meta").put(b"schema_version", (SCHEMA_VERSION + 1).to_bytes(4, "big"))
    db.close()

    with pytest.raises(StorageError) as err:
        RocksDBStore(path)
    text = str(err.value)
    assert str(path) in text
    assert f"schema version {SCHEMA_VERSION + 1}" in text
    assert f"schema version {SCHEMA_VERSION} at most" in text
    assert "newer iotbroker" in text
    _assert_clean(err)
    # The failed open released the database (no lock left behind in this process).
    db = _raw_open(path, extra=("messages",))
    db.close()


def test_foreign_rocksdb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    opts = Options(raw_mode=True)
    db = Rdict(str(path), opts)
    db[b"someone else's"] = b"data"
    db.close()
    with pytest.raises(StorageError, match="without an iotbroker schema version"):
        RocksDBStore(path)


# ------------------------------------------------------------------ locking

IN_USE = "is in use by another process (is another iotbroker running with the same storage.path?)"


def test_open_twice_in_one_process(tmp_path: Path) -> None:
    store = RocksDBStore(tmp_path / "db")
    try:
        with pytest.raises(StorageError) as err:
            RocksDBStore(tmp_path / "db")
        assert str(err.value) == f"the store at {tmp_path / 'db'} {IN_USE}"
        _assert_clean(err)
    finally:
        store.close()
    RocksDBStore(tmp_path / "db").close()  # free again after close


def test_open_while_another_process_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "db"
    holder = textwrap.dedent(
        """
        import sys
        from iotbroker.storage.rocksdb import RocksDBStore
        store = RocksDBStore(sys.argv[1])
        print("ready", flush=True)
        sys.stdin.read()
        store.close()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(StorageError) as err:
            RocksDBStore(path)
        assert IN_USE in str(err.value)
        assert str(path) in str(err.value)
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    RocksDBStore(path).close()


# ------------------------------------------------------------------ corruption


def _corrupt_current(path: Path) -> None:
    (path / "CURRENT").write_bytes(b"\xde\xad garbage without newline")


def _corrupt_manifest(path: Path) -> None:
    for f in path.glob("MANIFEST-*"):
        _garble(f)


def _corrupt_sst_footer(path: Path) -> None:
    ssts = list(path.glob("*.sst"))
    assert ssts
    for f in ssts:
        _garble(f)


def _remove_sst(path: Path) -> None:
    for f in path.glob("*.sst"):
        f.unlink()


@pytest.mark.parametrize(
    "corrupt", [_corrupt_current, _corrupt_manifest, _corrupt_sst_footer, _remove_sst]
)
def test_corrupt_at_open_fails_with_path(tmp_path: Path, corrupt: object) -> None:
    path = tmp_path / "db"
    store = RocksDBStore(path)
    _fill(store)
    store.flush()
    store.close()
    corrupt(path)  # type: ignore[operator]
    with pytest.raises(StorageError) as err:
        RocksDBStore(path)
    text = str(err.value)
    assert f"the store at {path} is corrupt or unreadable" in text
    assert "on_corruption: move-aside" in text
    _assert_clean(err)


def test_corrupt_at_open_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "db"
    store = RocksDBStore(path)
    _fill(store)
    store.close()
    _corrupt_current(path)
    with caplog.at_level(logging.WARNING, logger="iotbroker.storage"):
        store = RocksDBStore(path, on_corruption="move-aside")
    try:
        snap = store.load()
        assert not snap.sessions and not snap.queued
        _fill(store, 3)  # usable
        assert len(store.load().queued["dev"]) == 3
    finally:
        store.close()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("db.corrupt-")]
    assert len(aside) == 1
    assert (aside[0] / "CURRENT").read_bytes().startswith(b"\xde\xad")
    assert any(str(aside[0]) in r.getMessage() for r in caplog.records)


def _corrupt_sst_blocks(path: Path) -> None:
    """Data blocks of the queued family (the largest SST file) garbled, footer and index
    intact: open succeeds (meta is readable), reading the queue fails."""
    largest = max(path.glob("*.sst"), key=lambda f: f.stat().st_size)
    _garble(largest, 0, 300)


def test_corrupt_data_found_by_load(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = RocksDBStore(path)
    _fill(store)
    store.flush()
    store.close()
    _corrupt_sst_blocks(path)
    store = RocksDBStore(path)
    try:
        with pytest.raises(StorageError) as err:
            store.load()
        assert f"the store at {path} is corrupt" in str(err.value)
        _assert_clean(err)
    finally:
        store.close()


def test_corrupt_data_found_by_load_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = RocksDBStore(path)
    _fill(store)
    store.flush()
    store.close()
    _corrupt_sst_blocks(path)
    store = RocksDBStore(path, on_corruption="move-aside")
    try:
        assert store.load().queued == {}
        _fill(store, 2)
        assert len(store.load().queued["dev"]) == 2
    finally:
        store.close()
    assert len(list(tmp_path.glob("db.corrupt-*"))) == 1


def test_undecodable_value_names_family_and_key(tmp_path: Path) -> None:
    path = tmp_path / "db"
    RocksDBStore(path).close()
    db = _raw_open(path)
    db.get_column_family("queued").put(b"dev\x00" + (7).to_bytes(8, "big"), b"\x63future")
    db.close()
    store = RocksDBStore(path)
    try:
        with pytest.raises(StorageError) as err:
            store.load()
        text = str(err.value)
        assert str(path) in text and "queued record" in text and "dev" in text
    finally:
        store.close()


# ------------------------------------------------------------------ other failures


class _FullDisk:
    def write(self, *args: object) -> None:
        raise Exception(  # what rocksdict raises: a plain Exception with RocksDB's status
            "IO error: No space left on device: While appending to file: /x/000012.log"
        )


def test_full_disk_on_write(tmp_path: Path) -> None:
    store = RocksDBStore(tmp_path / "db")
    real = store._db
    store._db = _FullDisk()  # type: ignore[assignment]
    try:
        batch = ChangeBatch()
        batch.put_session(SessionRecord("c", 5, 0))
        with pytest.raises(StorageError) as err:
            store.apply(batch)
        text = str(err.value)
        assert f"cannot write to the store at {tmp_path / 'db'}: the disk is full" in text
        assert "Free space" in text
        _assert_clean(err)
    finally:
        store._db = real
        store.close()


def test_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "db").write_text("not a database")
    with pytest.raises(StorageError, match="is not a directory"):
        RocksDBStore(tmp_path / "db")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="durability"):
        RocksDBStore("/nonexistent", durability="always")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_corruption"):
        RocksDBStore("/nonexistent", on_corruption="ignore")  # type: ignore[arg-type]


# ------------------------------------------------------------------ kill -9

WRITER = textwrap.dedent(
    """
    import sys
    from iotbroker.codec.packets import NO_PROPERTIES
    from iotbroker.message import Delivery, Message
    from iotbroker.storage.base import ChangeBatch, OutboundRecord, OutboundState
    from iotbroker.storage.base import QueuedRecord, SessionRecord
    from iotbroker.storage.rocksdb import RocksDBStore

    store = RocksDBStore(sys.argv[1], durability=sys.argv[2])
    m = Message("t", b"x" * 100, 1, False, NO_PROPERTIES, 0.0)
    i = 0
    while True:
        b = ChangeBatch()
        for j in range(10):
            b.put_queued(QueuedRecord("k", i * 10 + j, Delivery(m, 1)))
        b.put_outbound(OutboundRecord("k", i % 65535 + 1, OutboundState.PUBLISH_SENT,
                                      Delivery(m, 1), i))
        b.put_session(SessionRecord("k", 5, 100, next_seq=(i + 1) * 10))
        store.apply(b)
        print(i, flush=True)  # only after apply() returned
        i += 1
    """
)


@pytest.mark.parametrize(("durability", "batches"), [("os", 3000), ("fsync", 30)])
def test_kill_9_keeps_every_applied_batch(tmp_path: Path, durability: str, batches: int) -> None:
    path = tmp_path / "db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), durability],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    last = -1
    deadline = time.monotonic() + 60
    try:
        while last < batches and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            last = int(line)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for line in proc.stdout:  # acknowledged before the kill landed
            last = int(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert last >= batches, "the writer did not get far enough"

    store = RocksDBStore(path)
    try:
        snap = store.load()
    finally:
        store.close()
    applied = snap.sessions["k"].next_seq // 10  # batches found on disk
    assert applied >= last + 1  # every acknowledged batch survived
    # ...and every batch is all there or not at all: queue, outbound and session agree.
    assert [r.seq for r in snap.queued["k"]] == list(range(applied * 10))
    assert [r.seq for r in snap.outbound["k"]] == list(range(applied))
