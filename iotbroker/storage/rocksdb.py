"""RocksDB store (via rocksdict); the only module of iotbroker that imports rocksdict.

On-disk format, schema version 1
================================

One RocksDB database (``storage.path``), opened in rocksdict raw mode (keys and values
are plain bytes; nothing is pickled). One column family per record kind::

    family        key                                      value
    ------------  ---------------------------------------  -------------------------
    meta          b"schema_version"                        u32 schema version (= 1)
                  b"created_by"                            UTF-8, e.g. b"iotbroker 0.1"
    sessions      client_id                                SESSION
    subscriptions client_id 0x00 topic_filter              SUBSCRIPTION
    outbound      client_id 0x00 u16 packet_id             OUTBOUND
    queued        client_id 0x00 u64 seq                   QUEUED
    inbound_qos2  client_id 0x00 u16 packet_id             0x01
    retained      topic                                    RETAINED

Strings are UTF-8; integers are big-endian and unsigned, so a prefix scan over
``client_id 0x00`` returns a session's records in packet id / seq / topic filter order.
NUL cannot occur in an MQTT string [MQTT-1.5.4-2], so ``client_id 0x00`` is a prefix of
that client's keys only ("a\\0" is not a prefix of "ab\\0..."); deleting a session
deletes the range ``[client_id 0x00, client_id 0x01)`` in each family. The
``default`` family exists (RocksDB requires it) and is unused.

Every value starts with a one-byte *value encoding version* (1 everywhere today), so a
record kind can change its encoding without a new schema version; the schema
version changes when keys or families change. A database with a newer schema version
is refused; an older one would be migrated on open (there is none yet).

Value encodings (``str`` = u32 length + UTF-8 bytes, ``bin`` = u32 length + bytes)::

    SESSION       u8 1 | u8 protocol_version | u32 expiry_interval | u8 flags
                  | u16 next_packet_id | u64 next_seq | f64 disconnected_at
                  | [str username]                     if flags & 0x04
                  | [WILL]                             if flags & 0x02
                  flags: 0x01 disconnected_at is set (else the f64 is 0 and means None)
    WILL          u8 qos | u8 retain | u32 delay_interval | str topic | bin PROPS
                  | bin payload
    SUBSCRIPTION  u8 1 | u8 qos | u8 flags | u8 retain_handling | u32 subscription_identifier
                  flags: 0x01 no_local, 0x02 retain_as_published,
                         0x04 subscription_identifier is set (else the u32 is 0)
    OUTBOUND      u8 1 | u8 state (1 PUBLISH_SENT, 2 PUBREL_SENT) | u64 seq
                  | u8 has_delivery | [DELIVERY]
    QUEUED        u8 1 | DELIVERY
    RETAINED      u8 1 | MESSAGE
    DELIVERY      u8 qos | u8 retain | u16 n | n * u32 subscription_identifier | MESSAGE
    MESSAGE       u8 qos | u8 flags | f64 created_at | f64 expires_at
                  | u32 len(topic) | u32 len(origin) | u32 len(PROPS) | u32 len(payload)
                  | topic | origin | PROPS | payload
                  flags: 0x01 retain, 0x02 expires_at is set (else the f64 is 0)
    PROPS         a sequence of (u8 tag, value); the tag is the MQTT 5.0 property
                  identifier (§2.2.2.2); the value is u32 for integer properties,
                  str for strings, bin for binary data; 0x0B (subscription identifier)
                  repeats per value; 0x26 (user property) repeats per pair and its
                  value is str name | str value. Zero length: no properties.
                  This is deliberately not the MQTT wire encoding of properties
                  (codec/properties.py): the disk format must not move with the codec.

Outbound records come back sorted by ``seq`` (send order; key order, i.e. packet id,
breaks ties). Deliveries of one message are stored once per recipient; ``load``
decodes identical MESSAGE bytes once, so recipients share one :class:`Message` again.

Durability: each :meth:`RocksDBStore.apply` is one ``WriteBatch`` (atomic). With
``durability="os"`` it is written to the WAL without fsync (it survives a crash of the
process, not of the machine); with ``"fsync"`` the write is synced before ``apply``
returns, one sync per batch (the caller batches one loop turn: group commit).

Failures (all :class:`~iotbroker.errors.StorageError`, message names the path and the
remedy): another process holds the database's LOCK; the schema version is newer than
``SCHEMA_VERSION``; the database is corrupt or a value cannot be decoded (with
``on_corruption="move-aside"`` the directory is renamed to
``<path>.corrupt-<YYYYmmdd-HHMMSS>``, a warning is logged on ``iotbroker.storage`` and
the store starts empty); the disk is full on write.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import traceback
from collections.abc import Iterator
from typing import Any

from rocksdict import (
    AccessType,
    DBRecoveryMode,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from iotbroker.codec.packets import NO_PROPERTIES, Properties
from iotbroker.errors import StorageError
from iotbroker.message import Delivery, Message
from iotbroker.storage.base import (
    ChangeBatch,
    Durability,
    OnCorruption,
    Op,
    OutboundRecord,
    OutboundState,
    QueuedRecord,
    SessionRecord,
    StoreSnapshot,
    SubscriptionRecord,
    WillRecord,
    check_client_id,
    check_outbound,
    check_packet_id,
    check_seq,
)

__all__ = ["FAMILIES", "SCHEMA_VERSION", "Durability", "OnCorruption", "RocksDBStore"]

log = logging.getLogger("iotbroker.storage")

#: Version of the key layout and set of column families (see the module docstring).
SCHEMA_VERSION = 1
#: Version byte that starts every value written by this module.
VALUE_VERSION = 1

FAMILIES = ("meta", "sessions", "subscriptions", "outbound", "queued", "inbound_qos2", "retained")

_META_SCHEMA = b"schema_version"
_META_CREATED_BY = b"created_by"
_CREATED_BY = b"iotbroker 0.1"

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_SESSION = struct.Struct(">BBIBHQd")
_WILL = struct.Struct(">BBI")
_SUBSCRIPTION = struct.Struct(">BBBBI")
_OUTBOUND = struct.Struct(">BBQB")
_DELIVERY = struct.Struct(">BBH")
_MESSAGE = struct.Struct(">BBddIIII")
_V1 = bytes([VALUE_VERSION])
_INBOUND_VALUE = b"\x01"

# Property kinds.
_INT, _STR, _BIN, _INTS, _PAIRS = range(5)

#: (tag, Properties field, kind). The tags are the MQTT 5.0 property identifiers and
#: part of the on-disk format: never renumber them.
_PROPERTY_TABLE: tuple[tuple[int, str, int], ...] = (
    (0x01, "payload_format_indicator", _INT),
    (0x02, "message_expiry_interval", _INT),
    (0x03, "content_type", _STR),
    (0x08, "response_topic", _STR),
    (0x09, "correlation_data", _BIN),
    (0x0B, "subscription_identifiers", _INTS),
    (0x11, "session_expiry_interval", _INT),
    (0x12, "assigned_client_identifier", _STR),
    (0x13, "server_keep_alive", _INT),
    (0x15, "authentication_method", _STR),
    (0x16, "authentication_data", _BIN),
    (0x17, "request_problem_information", _INT),
    (0x18, "will_delay_interval", _INT),
    (0x19, "request_response_information", _INT),
    (0x1A, "response_information", _STR),
    (0x1C, "server_reference", _STR),
    (0x1F, "reason_string", _STR),
    (0x21, "receive_maximum", _INT),
    (0x22, "topic_alias_maximum", _INT),
    (0x23, "topic_alias", _INT),
    (0x24, "maximum_qos", _INT),
    (0x25, "retain_available", _INT),
    (0x26, "user_properties", _PAIRS),
    (0x27, "maximum_packet_size", _INT),
    (0x28, "wildcard_subscription_available", _INT),
    (0x29, "subscription_identifier_available", _INT),
    (0x2A, "shared_subscription_available", _INT),
)
_PROPERTY_BY_TAG = {tag: (name, kind) for tag, name, kind in _PROPERTY_TABLE}


class _CorruptError(Exception):
    """A stored value or key cannot be decoded."""


# --------------------------------------------------------------------------- encoding


def _str(value: str) -> bytes:
    raw = value.encode()
    return _U32.pack(len(raw)) + raw


def _bin(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def _encode_properties(props: Properties) -> bytes:
    if props is NO_PROPERTIES:
        return b""
    out: list[bytes] = []
    for tag, name, kind in _PROPERTY_TABLE:
        value = getattr(props, name)
        if value is None or value == ():
            continue
        if kind == _INT:
            out.append(bytes((tag,)) + _U32.pack(value))
        elif kind == _STR:
            out.append(bytes((tag,)) + _str(value))
        elif kind == _BIN:
            out.append(bytes((tag,)) + _bin(bytes(value)))
        elif kind == _INTS:
            out.extend(bytes((tag,)) + _U32.pack(v) for v in value)
        else:
            out.extend(bytes((tag,)) + _str(k) + _str(v) for k, v in value)
    return b"".join(out)


def _encode_message(m: Message) -> list[bytes]:
    topic = m.topic.encode()
    origin = m.origin.encode()
    props = _encode_properties(m.properties)
    payload = m.payload
    expires_at = m.expires_at
    flags = (1 if m.retain else 0) | (0 if expires_at is None else 2)
    head = _MESSAGE.pack(
        m.qos,
        flags,
        m.created_at,
        0.0 if expires_at is None else expires_at,
        len(topic),
        len(origin),
        len(props),
        len(payload),
    )
    return [head, topic, origin, props, bytes(payload)]


def _encode_delivery(d: Delivery, version: bytes = _V1) -> bytes:
    ids = d.subscription_identifiers
    head = _DELIVERY.pack(d.qos, 1 if d.retain else 0, len(ids))
    if ids:
        head += struct.pack(f">{len(ids)}I", *ids)
    return b"".join([version, head, *_encode_message(d.message)])


def _encode_session(rec: SessionRecord) -> bytes:
    flags = 0
    if rec.disconnected_at is not None:
        flags |= 1
    if rec.will is not None:
        flags |= 2
    if rec.username is not None:
        flags |= 4
    parts = [
        _SESSION.pack(
            VALUE_VERSION,
            rec.protocol_version,
            rec.expiry_interval,
            flags,
            rec.next_packet_id,
            rec.next_seq,
            0.0 if rec.disconnected_at is None else rec.disconnected_at,
        )
    ]
    if rec.username is not None:
        parts.append(_str(rec.username))
    will = rec.will
    if will is not None:
        parts.append(_WILL.pack(will.qos, 1 if will.retain else 0, will.delay_interval))
        parts.append(_str(will.topic))
        parts.append(_bin(_encode_properties(will.properties)))
        parts.append(_bin(bytes(will.payload)))
    return b"".join(parts)


def _encode_subscription(rec: SubscriptionRecord) -> bytes:
    sid = rec.subscription_identifier
    flags = (
        (1 if rec.no_local else 0)
        | (2 if rec.retain_as_published else 0)
        | (0 if sid is None else 4)
    )
    return _SUBSCRIPTION.pack(
        VALUE_VERSION, rec.qos, flags, rec.retain_handling, 0 if sid is None else sid
    )


def _encode_outbound(rec: OutboundRecord) -> bytes:
    d = rec.delivery
    head = _OUTBOUND.pack(VALUE_VERSION, rec.state, rec.seq, 0 if d is None else 1)
    return head if d is None else _encode_delivery(d, head)


def _prefix(client_id: str) -> bytes:
    """``client_id 0x00``: the key prefix of all of one client's records."""
    check_client_id(client_id)
    return client_id.encode() + b"\0"


# --------------------------------------------------------------------------- decoding


class _Reader:
    """Cursor over one stored value."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def u32(self) -> int:
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def raw(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise _CorruptError("value truncated")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def bin(self) -> bytes:
        return self.raw(self.u32())

    def str(self) -> str:
        return self.raw(self.u32()).decode()


def _decode_properties(buf: bytes) -> Properties:
    if not buf:
        return NO_PROPERTIES
    r = _Reader(buf)
    fields: dict[str, Any] = {}
    ids: list[int] = []
    pairs: list[tuple[str, str]] = []
    n = len(buf)
    while r.pos < n:
        tag = buf[r.pos]
        r.pos += 1
        try:
            name, kind = _PROPERTY_BY_TAG[tag]
        except KeyError:
            raise _CorruptError(f"unknown property tag 0x{tag:02X}") from None
        if kind == _INT:
            fields[name] = r.u32()
        elif kind == _STR:
            fields[name] = r.str()
        elif kind == _BIN:
            fields[name] = r.bin()
        elif kind == _INTS:
            ids.append(r.u32())
        else:
            pairs.append((r.str(), r.str()))
    if ids:
        fields["subscription_identifiers"] = tuple(ids)
    if pairs:
        fields["user_properties"] = tuple(pairs)
    return Properties(**fields)


def _decode_message(buf: bytes, pos: int) -> Message:
    qos, flags, created_at, expires_at, lt, lo, lp, lpl = _MESSAGE.unpack_from(buf, pos)
    pos += _MESSAGE.size
    end = pos + lt + lo + lp + lpl
    if end != len(buf):
        raise _CorruptError("message length mismatch")
    topic = buf[pos : pos + lt].decode()
    pos += lt
    origin = buf[pos : pos + lo].decode()
    pos += lo
    props = _decode_properties(buf[pos : pos + lp])
    pos += lp
    return Message(
        topic=topic,
        payload=buf[pos:end],
        qos=qos,
        retain=bool(flags & 1),
        properties=props,
        created_at=created_at,
        expires_at=expires_at if flags & 2 else None,
        origin=origin,
    )


class _Decoder:
    """Decodes values during one :meth:`RocksDBStore.load`; messages that several
    deliveries share on disk become one shared :class:`Message` again."""

    def __init__(self) -> None:
        self.messages: dict[bytes, Message] = {}

    def message(self, buf: bytes, pos: int) -> Message:
        raw = buf[pos:]
        m = self.messages.get(raw)
        if m is None:
            m = _decode_message(raw, 0)
            self.messages[raw] = m
        return m

    def delivery(self, buf: bytes, pos: int) -> Delivery:
        qos, retain, n = _DELIVERY.unpack_from(buf, pos)
        pos += _DELIVERY.size
        ids: tuple[int, ...] = ()
        if n:
            ids = struct.unpack_from(f">{n}I", buf, pos)
            pos += 4 * n
        return Delivery(self.message(buf, pos), qos, bool(retain), ids)


def _version(value: bytes) -> None:
    if not value or value[0] != VALUE_VERSION:
        raise _CorruptError(f"unknown value encoding {value[:1]!r}")


def _decode_session(key: bytes, value: bytes) -> SessionRecord:
    _version(value)
    _, proto, expiry, flags, next_pid, next_seq, disc = _SESSION.unpack_from(value, 0)
    r = _Reader(value, _SESSION.size)
    username = r.str() if flags & 4 else None
    will = None
    if flags & 2:
        qos, retain, delay = _WILL.unpack_from(value, r.pos)
        r.pos += _WILL.size
        topic = r.str()
        props = _decode_properties(r.bin())
        payload = r.bin()
        will = WillRecord(topic, payload, qos, bool(retain), props, delay)
    if r.pos != len(value):
        raise _CorruptError("trailing bytes")
    return SessionRecord(
        client_id=key.decode(),
        protocol_version=proto,
        expiry_interval=expiry,
        disconnected_at=disc if flags & 1 else None,
        will=will,
        next_packet_id=next_pid,
        next_seq=next_seq,
        username=username,
    )


def _split(key: bytes, suffix: int) -> tuple[str, bytes]:
    """``client_id 0x00 rest`` -> (client_id, rest); ``suffix`` = len(rest) or -1."""
    if suffix < 0:
        i = key.index(b"\0")
    else:
        i = len(key) - suffix - 1
        if i < 0 or key[i] != 0:
            raise _CorruptError("bad key")
    return key[:i].decode(), key[i + 1 :]


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


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
    # Memtables of all families together; with many families a small one would
    # otherwise pin old WAL files, hence also a cap on the WAL. These bound the
    # store's share of the broker's memory: RSS rises by about the WAL cap between
    # flushes (docs/reliability.md), so they are kept modest for small devices.
    opts.set_db_write_buffer_size(32 << 20)
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
        self._db: Rdict | None = None
        self._families: dict[str, Rdict] = {}
        self._handles: tuple[Any, ...] = ()
        self._open()

    # ----------------------------------------------------------------- open / close

    @property
    def sync(self) -> bool:
        return self.durability == "fsync"

    def _open(self) -> None:
        try:
            self._open_once()
            return
        except _CorruptError as exc:
            _release(exc)
            reason = str(exc)
        except BaseException as exc:
            _release(exc)
            raise
        if self.on_corruption != "move-aside":
            raise self._corrupt_error(reason)
        self._move_aside(reason)
        try:
            self._open_once()
        except _CorruptError as exc:
            _release(exc)
            raise self._corrupt_error(str(exc)) from None
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
                column_families={n: Options(raw_mode=True) for n in names if n != "default"},
                access_type=AccessType.read_write(),
            )
        except Exception as exc:
            kind = _classify(exc)
            if kind == "corrupt":
                raise _CorruptError(str(exc)) from None
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
            raw = meta.get(_META_SCHEMA)
        except Exception as exc:
            if _classify(exc) == "corrupt":
                raise _CorruptError(str(exc)) from None
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
            batch.put(_META_SCHEMA, _U32.pack(SCHEMA_VERSION), self._handles[0])
            batch.put(_META_CREATED_BY, _CREATED_BY, self._handles[0])
            opts = WriteOptions()
            opts.sync = True
            self._write(batch, opts)
            return
        if len(raw) != 4:
            raise _CorruptError(f"meta schema_version is {raw!r}")
        version = _U32.unpack(raw)[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"the store at {self.path} has schema version {version}, but this iotbroker "
                f"reads schema version {SCHEMA_VERSION} at most: it was written by a newer "
                "iotbroker. Run that newer version, or point storage.path at another "
                "directory (moving this one aside) to start with an empty store."
            )
        if version < 1:
            raise _CorruptError(f"meta schema_version is {version}")

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

    def _move_aside(self, reason: str) -> None:
        self._close_db()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = f"{self.path}.corrupt-{stamp}"
        n = 1
        while os.path.exists(target):
            target = f"{self.path}.corrupt-{stamp}-{n}"
            n += 1
        try:
            os.rename(self.path, target)
        except OSError as exc:
            raise StorageError(
                f"the store at {self.path} is corrupt ({reason}) and could not be moved "
                f"aside to {target}: {exc}"
            ) from None
        log.warning(
            "the store at %s is corrupt (%s); moved it to %s and starting with an empty store",
            self.path,
            reason,
            target,
        )

    # ----------------------------------------------------------------- errors

    def _corrupt_error(self, reason: str) -> StorageError:
        return StorageError(
            f"the store at {self.path} is corrupt or unreadable ({reason}). Restore it from "
            "a backup, move it aside to start empty, or set storage.on_corruption: "
            "move-aside to do that automatically."
        )

    def _error(self, kind: str, exc: BaseException, doing: str) -> StorageError:
        if kind == "locked":
            return StorageError(
                f"the store at {self.path} is in use by another process (is another "
                "iotbroker running with the same storage.path?)"
            )
        if kind == "full":
            return StorageError(
                f"cannot {doing} the store at {self.path}: the disk is full ({exc}). "
                "Free space on that disk and restart iotbroker."
            )
        if kind == "corrupt":
            return self._corrupt_error(str(exc))
        return StorageError(f"cannot {doing} the store at {self.path}: {exc}")

    def _require(self) -> Rdict:
        db = self._db
        if db is None:
            raise StorageError(f"the store at {self.path} is closed")
        return db

    def _write(self, batch: WriteBatch, opts: WriteOptions) -> None:
        db = self._require()
        try:
            db.write(batch, opts)
        except Exception as exc:
            raise self._error(_classify(exc), exc, "write to") from None

    # ----------------------------------------------------------------- apply

    def apply(self, batch: ChangeBatch) -> None:
        try:
            self._apply(batch)
        except BaseException as exc:
            _release(exc)
            raise

    def _apply(self, batch: ChangeBatch) -> None:
        self._require()
        changes = batch.changes
        if not changes:
            return
        _h_meta, h_sessions, h_subs, h_out, h_queued, h_inbound, h_retained = self._handles
        wb = WriteBatch(raw_mode=True)
        put = wb.put
        delete = wb.delete
        u16 = _U16.pack
        u64 = _U64.pack
        op: Op = changes[0][0]
        try:
            for op, a, b in changes:
                if op == Op.PUT_QUEUED:
                    check_seq(a.seq)
                    put(_prefix(a.client_id) + u64(a.seq), _encode_delivery(a.delivery), h_queued)
                elif op == Op.DELETE_QUEUED:
                    check_seq(b)
                    delete(_prefix(a) + u64(b), h_queued)
                elif op == Op.PUT_OUTBOUND:
                    check_outbound(a)
                    put(_prefix(a.client_id) + u16(a.packet_id), _encode_outbound(a), h_out)
                elif op == Op.DELETE_OUTBOUND:
                    check_packet_id(b)
                    delete(_prefix(a) + u16(b), h_out)
                elif op == Op.PUT_INBOUND_QOS2:
                    check_packet_id(b)
                    put(_prefix(a) + u16(b), _INBOUND_VALUE, h_inbound)
                elif op == Op.DELETE_INBOUND_QOS2:
                    check_packet_id(b)
                    delete(_prefix(a) + u16(b), h_inbound)
                elif op == Op.PUT_SESSION:
                    check_client_id(a.client_id)
                    check_seq(a.next_seq)
                    put(a.client_id.encode(), _encode_session(a), h_sessions)
                elif op == Op.DELETE_SESSION:
                    start = _prefix(a)
                    end = start[:-1] + b"\x01"
                    delete(start[:-1], h_sessions)
                    for h in (h_subs, h_out, h_queued, h_inbound):
                        wb.delete_range(start, end, h)
                elif op == Op.PUT_SUBSCRIPTION:
                    key = _prefix(a.client_id) + a.topic_filter.encode()
                    put(key, _encode_subscription(a), h_subs)
                elif op == Op.DELETE_SUBSCRIPTION:
                    delete(_prefix(a) + b.encode(), h_subs)
                elif op == Op.PUT_RETAINED:
                    value = b"".join([_V1, *_encode_message(a)])
                    put(a.topic.encode(), value, h_retained)
                elif op == Op.DELETE_RETAINED:
                    delete(a.encode(), h_retained)
                else:
                    raise ValueError(f"unknown change {op!r}")
        except (struct.error, UnicodeError, OverflowError, TypeError, AttributeError) as exc:
            raise ValueError(f"cannot store {Op(op).name}: {exc}") from exc
        self._write(wb, self._write_opts)

    # ----------------------------------------------------------------- load

    def load_queued(self, client_id: str) -> list[QueuedRecord]:
        """One session's queued messages (a prefix scan), in ``seq`` order."""
        self._require()
        prefix = _prefix(client_id)
        dec = _Decoder()
        out: list[QueuedRecord] = []
        opts = ReadOptions()
        opts.set_verify_checksums(True)
        try:
            it = self._families["queued"].iter(opts)
            it.seek(prefix)
            while it.valid():
                key = it.key()
                if not key.startswith(prefix):
                    break
                value = it.value()
                _version(value)
                out.append(QueuedRecord(client_id, _U64.unpack(key[len(prefix):])[0],
                                        dec.delivery(value, 1)))
                it.next()
            it.status()
        except _CorruptError as exc:
            raise self._corrupt_error(f"queued records of {client_id!r}: {exc}") from None
        except (struct.error, UnicodeError, ValueError, IndexError, TypeError) as exc:
            raise self._corrupt_error(f"queued records of {client_id!r}: {exc}") from None
        except Exception as exc:
            _release(exc)
            raise self._error(_classify(exc), exc, "read") from None
        return out

    def load(self, queued_bodies: bool = True) -> StoreSnapshot:
        self._require()
        try:
            return self._load(queued_bodies)
        except _CorruptError as exc:
            _release(exc)
            reason = str(exc)
        except BaseException as exc:
            _release(exc)
            raise
        if self.on_corruption != "move-aside":
            raise self._corrupt_error(reason)
        self._move_aside(reason)
        self._open()
        return StoreSnapshot()

    def _scan(self, family: str) -> Iterator[tuple[bytes, bytes]]:
        """All (key, value) pairs of one family in key order; a read error, including
        one found only at the end (``status()``), raises."""
        opts = ReadOptions()
        opts.set_verify_checksums(True)
        opts.set_readahead_size(2 << 20)
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
                raise _CorruptError(f"{family}: {exc}") from None
            raise self._error(kind, exc, "read") from None

    def _load(self, queued_bodies: bool = True) -> StoreSnapshot:
        snap = StoreSnapshot()
        dec = _Decoder()
        family = ""
        key = b""
        try:
            family = "sessions"
            for key, value in self._scan(family):
                rec = _decode_session(key, value)
                snap.sessions[rec.client_id] = rec

            family = "subscriptions"
            subs = snap.subscriptions
            for key, value in self._scan(family):
                cid, rest = _split(key, -1)
                _version(value)
                _, qos, flags, rh, sid = _SUBSCRIPTION.unpack(value)
                sub = SubscriptionRecord(
                    cid, rest.decode(), qos, bool(flags & 1), bool(flags & 2), rh,
                    sid if flags & 4 else None,
                )  # fmt: skip
                lst = subs.get(cid)
                if lst is None:
                    subs[cid] = [sub]
                else:
                    lst.append(sub)

            family = "outbound"
            outbound = snap.outbound
            for key, value in self._scan(family):
                cid, rest = _split(key, 2)
                _version(value)
                _, state, seq, has = _OUTBOUND.unpack_from(value, 0)
                delivery = dec.delivery(value, _OUTBOUND.size) if has else None
                out = OutboundRecord(cid, _U16.unpack(rest)[0], OutboundState(state), delivery, seq)
                lst2 = outbound.get(cid)
                if lst2 is None:
                    outbound[cid] = [out]
                else:
                    lst2.append(out)
            for lst2 in outbound.values():
                lst2.sort(key=lambda r: r.seq)

            family = "queued"
            queued = snap.queued
            if not queued_bodies:
                index = snap.queued_index
                for key, value in self._scan(family):
                    cid, rest = _split(key, 8)
                    _version(value)
                    index.setdefault(cid, []).append((_U64.unpack(rest)[0], len(value)))
            for key, value in self._scan(family) if queued_bodies else ():
                cid, rest = _split(key, 8)
                _version(value)
                q = QueuedRecord(cid, _U64.unpack(rest)[0], dec.delivery(value, 1))
                lst3 = queued.get(cid)
                if lst3 is None:
                    queued[cid] = [q]
                else:
                    lst3.append(q)

            family = "inbound_qos2"
            for key, _value in self._scan(family):
                cid, rest = _split(key, 2)
                snap.inbound_qos2.setdefault(cid, set()).add(_U16.unpack(rest)[0])

            family = "retained"
            for key, value in self._scan(family):
                _version(value)
                m = dec.message(value, 1)
                if m.topic.encode() != key:
                    raise _CorruptError("retained topic does not match its key")
                snap.retained.append(m)
        except _CorruptError as exc:
            raise _CorruptError(f"{family} record {key!r}: {exc}") from None
        except (struct.error, UnicodeError, ValueError, IndexError, TypeError) as exc:
            raise _CorruptError(f"{family} record {key!r}: {exc}") from None
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
