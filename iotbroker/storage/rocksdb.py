"""RocksDB store (via rocksdict); the only module of iotbroker that imports rocksdict.

Three parts, three modules:

* ``storage/records.py``: the on-disk format (keys, values, families, schema
  version): pure functions, golden-bytes tested, the same bytes across releases.
* ``storage/recovery.py``: what a corrupt or unreadable store leads to (fail, or move
  it aside and start empty): one path for every place corruption is found.
* this module: the database itself: open, schema check, batches, scans, errors.

Durability: each :meth:`RocksDBStore.apply` is one ``WriteBatch`` (atomic). With
``durability="os"`` it is written to the WAL without fsync (it survives a crash of the
process, not of the machine); with ``"fsync"`` the write is synced before ``apply``
returns, one sync per batch, or, with ``apply(batch, sync=False)``, by the next
:meth:`RocksDBStore.sync` (``FlushWAL(sync=true)``, which RocksDB allows from another
thread while batches are written): the server's group commit, one sync for all the
batches written while the previous sync ran.

Outbound records come back sorted by ``seq`` (send order; key order, i.e. packet id,
breaks ties). Deliveries of one message are stored once per recipient; ``load``
decodes identical MESSAGE bytes once, so recipients share one :class:`Message` again.

Failures (all :class:`~iotbroker.errors.StorageError`, message names the path and the
remedy): another process holds the database's LOCK; the schema version is newer than
``SCHEMA_VERSION``; the database is corrupt or a value cannot be decoded (with
``on_corruption="move-aside"`` the directory is renamed to
``<path>.corrupt-<YYYYmmdd-HHMMSS>``, a warning is logged on ``iotbroker.storage`` and
the store starts empty: :mod:`iotbroker.storage.recovery`); the disk is full on write.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    DBRecoveryMode,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from iotbroker.errors import StorageError
from iotbroker.storage import records
from iotbroker.storage.base import (
    ChangeBatch,
    Durability,
    OnCorruption,
    Op,
    QueuedRecord,
    QueueSummaries,
    StoreSnapshot,
    check_outbound,
    check_packet_id,
    check_position,
    check_seq,
    check_write_id,
)
from iotbroker.storage.records import (
    CREATED_BY,
    FAMILIES,
    INBOUND_VALUE,
    META_CREATED_BY,
    META_SCHEMA,
    META_STREAM_POSITION,
    SCHEMA_VERSION,
    CorruptData,
    RecordDecoder,
)
from iotbroker.storage.recovery import corrupt_error, recover

__all__ = ["FAMILIES", "SCHEMA_VERSION", "Durability", "OnCorruption", "RocksDBStore"]

log = logging.getLogger("iotbroker.storage")

# --------------------------------------------------------------------------- the store


def _release(exc: BaseException) -> None:
    """Clear the locals of the frames that ``exc`` (and its context chain) hold.

    A rocksdict column family, handle or iterator keeps the database, and its LOCK,
    open until the last reference is gone, even after ``close()``. A traceback kept by
    a caller (or a handled exception during move-aside) would otherwise keep the
    database locked for this process.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        e = e.__context__


def _classify(exc: BaseException) -> str:
    """Which expected failure a rocksdict exception (plain ``Exception``) reports."""
    text = str(exc)
    if "LOCK" in text and ("lock" in text.lower()):
        return "locked"
    if "No space left on device" in text or "ENOSPC" in text:
        return "full"
    if "Corruption" in text or ("No such file" in text and ("MANIFEST" in text or ".sst" in text)):
        return "corrupt"
    return "other"


#: One block cache for all column families (RocksDB otherwise gives each family its
#: own 8 MiB cache), holding index and filter blocks too, so that table readers stay
#: inside it as the store grows (issue 19: memory must not grow with what is on disk).
BLOCK_CACHE_BYTES = 4 << 20
#: Memtables of all families together. A queued message is in a memtable until it is
#: flushed to an SST file: this bounds what an offline fleet's queue costs in memory.
WRITE_BUFFER_BYTES = 8 << 20

_BLOCK_CACHE: Cache | None = None

#: After a refused write, how often (seconds) :meth:`RocksDBStore.apply` tries to
#: reopen the database: a full disk is usually freed by an operator, not in ms.
REOPEN_INTERVAL = 1.0


def _table_options() -> BlockBasedOptions:
    global _BLOCK_CACHE  # noqa: PLW0603 (one cache per process, created on first open)
    if _BLOCK_CACHE is None:
        _BLOCK_CACHE = Cache(BLOCK_CACHE_BYTES)
    table = BlockBasedOptions()
    table.set_block_cache(_BLOCK_CACHE)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    return table


def _family_options() -> Options:
    opts = Options(raw_mode=True)
    opts.set_block_based_table_factory(_table_options())
    # A small memtable per family, so that one busy family (queued) is flushed
    # before it holds the whole write buffer.
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES // 2)
    return opts


def _options() -> Options:
    opts = _family_options()
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
    # Memtables of all families together; with many families a small one would
    # otherwise pin old WAL files, hence also a cap on the WAL. These bound the
    # store's share of the broker's memory: RSS rises by about the WAL cap between
    # flushes (docs/reliability.md), so they are kept modest for small devices.
    opts.set_db_write_buffer_size(WRITE_BUFFER_BYTES)
    opts.set_max_total_wal_size(16 << 20)
    opts.set_keep_log_file_num(3)
    return opts


class RocksDBStore:
    """A :class:`~iotbroker.storage.base.Store` in a RocksDB database at ``path``.

    ``durability``: ``"os"`` (write the WAL, no fsync; survives a process crash) or
    ``"fsync"`` (sync every :meth:`apply`). ``on_corruption``: ``"fail"`` raises
    :class:`StorageError`; ``"move-aside"`` renames the database directory to
    ``<path>.corrupt-<timestamp>``, logs a warning and starts empty. Corruption found
    while reading in :meth:`load` is handled the same way (``load`` then returns an
    empty snapshot).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        durability: Durability = "os",
        on_corruption: OnCorruption = "fail",
    ) -> None:
        if durability not in ("os", "fsync"):
            raise ValueError(f"durability {durability!r}: 'os' or 'fsync' expected")
        if on_corruption not in ("fail", "move-aside"):
            raise ValueError(f"on_corruption {on_corruption!r}: 'fail' or 'move-aside' expected")
        self.path = os.path.abspath(os.fspath(path))
        self.durability: Durability = durability
        self.on_corruption: OnCorruption = on_corruption
        self._write_opts = WriteOptions()
        self._write_opts.sync = durability == "fsync"
        self._unsynced_opts = WriteOptions()
        self._unsynced_opts.sync = False
        self._db: Rdict | None = None
        self._families: dict[str, Rdict] = {}
        self._handles: tuple[Any, ...] = ()
        #: See :class:`~iotbroker.storage.base.Store`: refused writes and syncs.
        self.write_failures = 0
        self.last_failure: str | None = None
        #: After a failure: when (``time.monotonic()``) the next reopen may be tried.
        self._reopen_at = 0.0
        #: Held by :meth:`sync` (a group commit's worker thread) and by the reopen (the
        #: loop), so that a database is never closed under a sync.
        self._reopen_lock = threading.Lock()
        self._open()

    # ----------------------------------------------------------------- open / close

    def _open(self) -> None:
        try:
            self._open_once()
            return
        except CorruptData as exc:
            _release(exc)
            reason = str(exc)
        except BaseException as exc:
            _release(exc)
            raise
        self._recover(reason)

    def _recover(self, reason: str) -> None:
        """Corruption found on open or on load: the one path through
        :func:`~iotbroker.storage.recovery.recover` (raise, or move the directory aside),
        then an empty store at :attr:`path`."""
        recover(self.path, reason, self.on_corruption, self._close_db)
        try:
            self._open_once()
        except CorruptData as exc:
            _release(exc)
            raise corrupt_error(self.path, str(exc)) from None
        except BaseException as exc:
            _release(exc)
            raise

    def _open_once(self) -> None:
        path = self.path
        if os.path.exists(path) and not os.path.isdir(path):
            raise StorageError(
                f"storage path {path} is not a directory; point storage.path at a directory"
            )
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the storage directory {path}: {exc}") from None
        names = list(FAMILIES)
        try:
            if os.path.exists(os.path.join(path, "CURRENT")):
                # Open families we do not know too (a newer schema may have added
                # some), so the schema version check below can name the versions.
                names += [n for n in Rdict.list_cf(path, _options()) if n not in names]
            db = Rdict(
                path,
                _options(),
                column_families={n: _family_options() for n in names if n != "default"},
                access_type=AccessType.read_write(),
            )
        except Exception as exc:
            kind = _classify(exc)
            if kind == "corrupt":
                raise CorruptData(str(exc)) from None
            raise self._error(kind, exc, "open") from None
        try:
            self._db = db
            self._families = {n: db.get_column_family(n) for n in FAMILIES}
            self._handles = tuple(db.get_column_family_handle(n) for n in FAMILIES)
            self._check_schema()
        except BaseException:
            self._close_db()
            raise

    def _check_schema(self) -> None:
        meta = self._families["meta"]
        try:
            raw = meta.get(META_SCHEMA)
        except Exception as exc:
            if _classify(exc) == "corrupt":
                raise CorruptData(str(exc)) from None
            raise self._error(_classify(exc), exc, "read") from None
        if raw is None:
            for fam in (self._require(), *self._families.values()):
                it = fam.iter()
                it.seek_to_first()
                if it.valid():
                    raise StorageError(
                        f"{self.path} holds a RocksDB database without an iotbroker schema "
                        "version (not an iotbroker store?); point storage.path at another "
                        "directory"
                    )
            batch = WriteBatch(raw_mode=True)
            batch.put(META_SCHEMA, records.encode_schema_version(), self._handles[0])
            batch.put(META_CREATED_BY, CREATED_BY, self._handles[0])
            opts = WriteOptions()
            opts.sync = True
            self._write(batch, opts)
            return
        version = records.decode_schema_version(raw)
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"the store at {self.path} has schema version {version}, but this iotbroker "
                f"reads schema version {SCHEMA_VERSION} at most: it was written by a newer "
                "iotbroker. Run that newer version, or point storage.path at another "
                "directory (moving this one aside) to start with an empty store."
            )
        if version < 1:
            raise CorruptData(f"meta schema_version is {version}")

    def close(self) -> None:
        self._close_db()

    def flush(self) -> None:
        """Write all memtables to SST files (and so shrink the WAL): before a backup,
        and in tests that need data in SST files. Not needed for durability."""
        self._require()
        try:
            for fam in self._families.values():
                fam.flush(True)
        except Exception as exc:
            raise self._error(_classify(exc), exc, "flush") from None

    def _close_db(self) -> None:
        db, self._db = self._db, None
        self._families = {}
        self._handles = ()
        if db is not None:
            try:
                db.close()
            except Exception as exc:  # closing a failed database must not mask the cause
                log.warning("closing the store at %s: %s", self.path, exc)

    # ----------------------------------------------------------------- errors

    def _error(self, kind: str, exc: BaseException, doing: str) -> StorageError:
        if kind == "locked":
            return StorageError(
                f"the store at {self.path} is in use by another process (is another "
                "iotbroker running with the same storage.path?)"
            )
        if kind == "full":
            remedy = ("Free space on that disk and start iotbroker again." if doing == "open"
                      else "Free space on that disk: writes resume within a second.")
            return StorageError(
                f"cannot {doing} the store at {self.path}: the disk is full ({exc}). {remedy}"
            )
        if kind == "corrupt":
            return corrupt_error(self.path, str(exc))
        return StorageError(f"cannot {doing} the store at {self.path}: {exc}")

    def _require(self) -> Rdict:
        db = self._db
        if db is None:
            if self.last_failure is not None:  # a reopen after a failure failed too
                raise StorageError(f"the store at {self.path} refuses writes since "
                                   f"{self.last_failure}")
            raise StorageError(f"the store at {self.path} is closed")
        return db

    def _write(self, batch: WriteBatch, opts: WriteOptions) -> None:
        db = self._require()
        try:
            db.write(batch, opts)
        except Exception as exc:
            raise self._failed(self._error(_classify(exc), exc, "write to")) from None

    def _failed(self, error: StorageError) -> StorageError:
        """Count a refused write or sync and keep its words for ``/health``. After one,
        RocksDB refuses every later write until the database is reopened, which the
        next :meth:`apply` tries (:meth:`_reopen_after_failure`)."""
        self.write_failures += 1
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        self.last_failure = f"{stamp}: {error}"
        return error

    # ----------------------------------------------------------------- apply

    def sync(self) -> None:
        """Sync the WAL (``durability: fsync``; a no-op with ``os``): every batch
        written before this call is on disk when it returns."""
        if self.durability != "fsync":
            return
        with self._reopen_lock:
            db = self._require()
            try:
                db.flush_wal(True)
            except Exception as exc:
                _release(exc)
                raise self._failed(self._error(_classify(exc), exc, "sync")) from None

    def apply(self, batch: ChangeBatch, sync: bool = True) -> None:
        failed = self.last_failure is not None
        try:
            if failed:
                self._reopen_after_failure()
            self._apply(batch, sync)
        except BaseException as exc:
            _release(exc)
            raise
        if failed:
            log.warning("the store at %s takes writes again (it refused them since %s)",
                        self.path, self.last_failure)
            self.last_failure = None

    def _reopen_after_failure(self) -> None:
        """After a refused write RocksDB refuses every write until the database is
        opened again: reopen it (replaying its log) at most every
        :data:`REOPEN_INTERVAL` seconds; in between, refuse at once. The caller keeps
        the refused batch and offers it again, so once the medium takes writes (space
        freed) the store holds what memory holds."""
        now = time.monotonic()
        if now < self._reopen_at:
            self.write_failures += 1
            raise StorageError(f"the store at {self.path} refuses writes since "
                               f"{self.last_failure}; reopening it at most every "
                               f"{REOPEN_INTERVAL:g} s")
        self._reopen_at = now + REOPEN_INTERVAL
        with self._reopen_lock:
            self._close_db()
            try:
                self._open_once()
            except CorruptData as exc:
                _release(exc)
                raise self._failed(corrupt_error(self.path, str(exc))) from None
            except StorageError as exc:
                _release(exc)
                raise self._failed(exc) from None

    def _apply(self, batch: ChangeBatch, sync: bool = True) -> None:
        self._require()
        changes = batch.changes
        if not changes:
            return
        h_meta, h_sessions, h_subs, h_out, h_queued, h_inbound, h_retained = self._handles
        wb = WriteBatch(raw_mode=True)
        put = wb.put
        delete = wb.delete
        r = records
        op: Op = changes[0][0]
        try:
            for op, a, b in changes:
                if op == Op.PUT_QUEUED:
                    check_seq(a.seq)
                    put(r.queued_key(a.client_id, a.seq), r.encode_queued(a), h_queued)
                elif op == Op.DELETE_QUEUED:
                    check_seq(b)
                    delete(r.queued_key(a, b), h_queued)
                elif op == Op.DELETE_QUEUED_RANGE:
                    first, end = b
                    check_seq(first)
                    check_seq(end)
                    wb.delete_range(r.queued_key(a, first), r.queued_key(a, end), h_queued)
                elif op == Op.PUT_OUTBOUND:
                    check_outbound(a)
                    put(r.outbound_key(a.client_id, a.packet_id), r.encode_outbound(a), h_out)
                elif op == Op.DELETE_OUTBOUND:
                    check_packet_id(b)
                    delete(r.outbound_key(a, b), h_out)
                elif op == Op.PUT_INBOUND_QOS2:
                    check_packet_id(b)
                    put(r.inbound_key(a, b), INBOUND_VALUE, h_inbound)
                elif op == Op.DELETE_INBOUND_QOS2:
                    check_packet_id(b)
                    delete(r.inbound_key(a, b), h_inbound)
                elif op == Op.PUT_SESSION:
                    check_seq(a.next_seq)
                    put(r.session_key(a.client_id), r.encode_session(a), h_sessions)
                elif op == Op.DELETE_SESSION:
                    start, end = r.client_range(a)
                    delete(r.session_key(a), h_sessions)
                    for h in (h_subs, h_out, h_queued, h_inbound):
                        wb.delete_range(start, end, h)
                elif op == Op.PUT_SUBSCRIPTION:
                    key = r.subscription_key(a.client_id, a.topic_filter)
                    put(key, r.encode_subscription(a), h_subs)
                elif op == Op.DELETE_SUBSCRIPTION:
                    delete(r.subscription_key(a, b), h_subs)
                elif op == Op.PUT_RETAINED:
                    put(r.retained_key(a.topic), r.encode_retained(a), h_retained)
                elif op == Op.DELETE_RETAINED:
                    delete(r.retained_key(a), h_retained)
                elif op == Op.PUT_INBOUND_PENDING:
                    check_packet_id(b[0])
                    check_write_id(b[1])
                    put(r.inbound_key(a, b[0]), r.encode_inbound_pending(b[1]), h_inbound)
                elif op == Op.PUT_STREAM_POSITION:
                    check_position(a)
                    put(r.stream_position_key(a.consumer), r.encode_stream_position(a), h_meta)
                else:
                    raise ValueError(f"unknown change {op!r}")
        except (struct.error, UnicodeError, OverflowError, TypeError, AttributeError) as exc:
            raise ValueError(f"cannot store {Op(op).name}: {exc}") from exc
        self._write(wb, self._write_opts if sync else self._unsynced_opts)

    # ----------------------------------------------------------------- load

    def load_queued(self, client_id: str) -> list[QueuedRecord]:
        """One session's queued messages (a prefix scan), in ``seq`` order."""
        self._require()
        prefix = records.client_prefix(client_id)
        decode = RecordDecoder().queued
        out: list[QueuedRecord] = []
        opts = ReadOptions()
        opts.set_verify_checksums(True)
        opts.fill_cache(False)  # type: ignore[call-arg]  # (stub lacks the bool) read once
        try:
            it = self._families["queued"].iter(opts)
            it.seek(prefix)
            while it.valid():
                key = it.key()
                if not key.startswith(prefix):
                    break
                out.append(decode(key, it.value()))
                it.next()
            it.status()
        except CorruptData as exc:
            # found while running: never moved aside under the broker (recovery.py)
            raise corrupt_error(self.path, f"queued records of {client_id!r}: {exc}") from None
        except Exception as exc:
            _release(exc)
            raise self._error(_classify(exc), exc, "read") from None
        return out

    def get_queued(self, client_id: str, seq: int) -> QueuedRecord | None:
        """One queued message (a point read), or None."""
        self._require()
        check_seq(seq)
        key = records.queued_key(client_id, seq)
        try:
            value = self._families["queued"].get(key)
            return None if value is None else RecordDecoder().queued(key, value)
        except CorruptData as exc:
            raise corrupt_error(self.path, f"queued record of {client_id!r}: {exc}") from None
        except Exception as exc:
            _release(exc)
            raise self._error(_classify(exc), exc, "read") from None

    def load(self, queued_bodies: bool = True, queued_summary: bool = False) -> StoreSnapshot:
        self._require()
        try:
            return self._load(queued_bodies, queued_summary)
        except CorruptData as exc:
            _release(exc)
            reason = str(exc)
        except BaseException as exc:
            _release(exc)
            raise
        self._recover(reason)
        return StoreSnapshot()

    def _scan(self, family: str) -> Iterator[tuple[bytes, bytes]]:
        """All (key, value) pairs of one family in key order; a read error, including
        one found only at the end (``status()``), raises."""
        opts = ReadOptions()
        opts.set_verify_checksums(True)
        opts.set_readahead_size(2 << 20)
        opts.fill_cache(False)  # type: ignore[call-arg]  # a restore reads everything once
        try:
            it = self._families[family].iter(opts)
            it.seek_to_first()
            while it.valid():
                yield it.key(), it.value()
                it.next()
            it.status()
        except Exception as exc:
            kind = _classify(exc)
            if kind == "corrupt":
                raise CorruptData(f"{family}: {exc}") from None
            raise self._error(kind, exc, "read") from None

    def _load(self, queued_bodies: bool = True, queued_summary: bool = False) -> StoreSnapshot:
        snap = StoreSnapshot()
        dec = RecordDecoder()
        family = ""
        key = b""
        try:
            family = "sessions"
            decode_session = records.decode_session
            for key, value in self._scan(family):
                rec = decode_session(key, value)
                snap.sessions[rec.client_id] = rec

            family = "subscriptions"
            subs = snap.subscriptions
            decode_subscription = records.decode_subscription
            for key, value in self._scan(family):
                sub = decode_subscription(key, value)
                lst = subs.get(sub.client_id)
                if lst is None:
                    subs[sub.client_id] = [sub]
                else:
                    lst.append(sub)

            family = "outbound"
            outbound = snap.outbound
            decode_outbound = dec.outbound
            for key, value in self._scan(family):
                out = decode_outbound(key, value)
                lst2 = outbound.get(out.client_id)
                if lst2 is None:
                    outbound[out.client_id] = [out]
                else:
                    lst2.append(out)
            for lst2 in outbound.values():
                lst2.sort(key=lambda r: r.seq)

            family = "queued"
            queued = snap.queued
            if not queued_bodies and queued_summary:
                add = QueueSummaries(snap.queued_summary).add
                decode_summary = records.decode_queued_summary
                for key, value in self._scan(family):
                    add(*decode_summary(key, value))
            elif not queued_bodies:
                index = snap.queued_index
                decode_index = records.decode_queued_index
                for key, value in self._scan(family):
                    cid, seq, size = decode_index(key, value)
                    index.setdefault(cid, []).append((seq, size))
            decode_queued = dec.queued
            for key, value in self._scan(family) if queued_bodies else ():
                q = decode_queued(key, value)
                lst3 = queued.get(q.client_id)
                if lst3 is None:
                    queued[q.client_id] = [q]
                else:
                    lst3.append(q)

            family = "inbound_qos2"
            decode_inbound_key = records.decode_inbound_key
            for key, value in self._scan(family):
                cid, packet_id = decode_inbound_key(key)
                snap.inbound_qos2.setdefault(cid, set()).add(packet_id)
                if value != INBOUND_VALUE:  # pending: its cluster stream write unacked
                    write_id = records.decode_inbound_value(value)
                    if write_id is not None:
                        snap.inbound_pending.setdefault(cid, {})[packet_id] = write_id

            family = "meta"
            for key, value in self._scan(family):
                if key.startswith(META_STREAM_POSITION):
                    pos = records.decode_stream_position(key, value)
                    snap.stream_positions[pos.consumer] = pos

            family = "retained"
            decode_retained = dec.retained
            for key, value in self._scan(family):
                snap.retained.append(decode_retained(key, value))
        except CorruptData as exc:
            raise CorruptData(f"{family} record {key!r}: {exc}") from None
        return snap

    # ----------------------------------------------------------------- stats

    def stats(self) -> dict[str, int]:
        """``disk_bytes``: all files in the database directory (SST, WAL, manifest);
        ``sst_bytes``, ``memtable_bytes``; ``keys_<family>``: RocksDB's estimate."""
        self._require()
        out = {"disk_bytes": _dir_size(self.path), "sst_bytes": 0, "memtable_bytes": 0}
        for name, fam in self._families.items():
            out["sst_bytes"] += fam.property_int_value("rocksdb.total-sst-files-size") or 0
            out["memtable_bytes"] += fam.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
            if name != "meta":
                out[f"keys_{name}"] = fam.property_int_value("rocksdb.estimate-num-keys") or 0
        return out


def _dir_size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue  # removed by a background compaction meanwhile
    return total
