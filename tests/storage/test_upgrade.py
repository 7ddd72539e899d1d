"""Upgrade: a store written by iotbroker 0.1 opens and restores unchanged.

``tests/storage/data/v0.1-store`` was written by the code on main before the storage
split of issue 13 (see ``upgrade_fixture.py``). Each test opens a copy (opening writes
to the directory) with today's code and checks what comes back, record by record,
and that today's encoder still writes the very bytes that are on disk.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from rocksdict import AccessType, Options, Rdict

from iotbroker.codec.packets import NO_PROPERTIES
from iotbroker.message import Delivery, Message
from iotbroker.storage import records
from iotbroker.storage.base import ChangeBatch, QueuedRecord, SessionRecord
from iotbroker.storage.rocksdb import RocksDBStore
from tests.storage import upgrade_fixture

DATA = Path(__file__).with_name("data") / "v0.1-store"


@pytest.fixture
def old_store(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "store"
    shutil.copytree(DATA, path)
    yield path


def test_every_record_restores(old_store: Path) -> None:
    expected = upgrade_fixture.expected()
    store = RocksDBStore(str(old_store))
    try:
        snap = store.load()
    finally:
        store.close()
    assert list(snap.sessions) == list(expected.sessions)
    for cid, rec in expected.sessions.items():
        assert snap.sessions[cid] == rec, cid
    assert list(snap.subscriptions) == list(expected.subscriptions)
    for cid, subs in expected.subscriptions.items():
        assert snap.subscriptions[cid] == subs, cid
    assert list(snap.outbound) == list(expected.outbound)
    for cid, outs in expected.outbound.items():
        assert [(o.packet_id, o.seq) for o in snap.outbound[cid]] == [
            (o.packet_id, o.seq) for o in outs], cid  # send order, not packet id order
        for got, want in zip(snap.outbound[cid], outs, strict=True):
            assert got == want, (cid, want.packet_id)
    assert list(snap.queued) == list(expected.queued)
    for cid, queued in expected.queued.items():
        assert snap.queued[cid] == queued, cid
    assert snap.inbound_qos2 == expected.inbound_qos2
    assert [m.topic for m in snap.retained] == [m.topic for m in expected.retained]
    for got_m, want_m in zip(snap.retained, expected.retained, strict=True):
        assert got_m == want_m, want_m.topic
    # one message stored per recipient comes back as one shared object
    shared = snap.queued["dev-v5"][0].delivery.message
    first = snap.outbound["dev-v5"][0].delivery
    assert first is not None and first.message is shared
    assert snap.queued["dev-311"][0].delivery.message is shared


def test_queued_index_and_lazy_queued_load(old_store: Path) -> None:
    expected = upgrade_fixture.expected()
    store = RocksDBStore(str(old_store))
    try:
        snap = store.load(queued_bodies=False)
        assert snap.queued == {}
        assert {cid: [seq for seq, _size in idx] for cid, idx in snap.queued_index.items()} == {
            cid: [q.seq for q in qs] for cid, qs in expected.queued.items()}
        for cid, queued in expected.queued.items():
            assert store.load_queued(cid) == queued
        assert store.load_queued("dev") == []
    finally:
        store.close()


def _raw(path: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    opts = Options(raw_mode=True)
    cfs = {n: Options(raw_mode=True) for n in records.FAMILIES}
    db = Rdict(str(path), opts, column_families=cfs, access_type=AccessType.read_only())
    try:
        out: dict[str, list[tuple[bytes, bytes]]] = {}
        for name in records.FAMILIES:
            fam = db.get_column_family(name)
            out[name] = list(fam.items())
            del fam
        return out
    finally:
        db.close()


def test_encoder_writes_the_bytes_on_disk(old_store: Path) -> None:
    """Byte for byte: every record of the old store, decoded and encoded again by
    today's code, gives the same key and value."""
    raw = _raw(old_store)
    assert dict(raw["meta"]) == {b"created_by": b"iotbroker 0.1",
                                 b"schema_version": b"\x00\x00\x00\x01"}
    dec = records.RecordDecoder()
    count = 0
    for key, value in raw["sessions"]:
        rec = records.decode_session(key, value)
        assert (records.session_key(rec.client_id), records.encode_session(rec)) == (key, value)
        count += 1
    for key, value in raw["subscriptions"]:
        sub = records.decode_subscription(key, value)
        assert records.subscription_key(sub.client_id, sub.topic_filter) == key
        assert records.encode_subscription(sub) == value
        count += 1
    for key, value in raw["outbound"]:
        out = dec.outbound(key, value)
        assert records.outbound_key(out.client_id, out.packet_id) == key
        assert records.encode_outbound(out) == value
        count += 1
    for key, value in raw["queued"]:
        q = dec.queued(key, value)
        assert records.queued_key(q.client_id, q.seq) == key
        assert records.encode_queued(q) == value
        count += 1
    for key, value in raw["inbound_qos2"]:
        cid, packet_id = records.decode_inbound_key(key)
        assert (records.inbound_key(cid, packet_id), records.INBOUND_VALUE) == (key, value)
        count += 1
    for key, value in raw["retained"]:
        m = dec.retained(key, value)
        assert (records.retained_key(m.topic), records.encode_retained(m)) == (key, value)
        count += 1
    # 4 sessions, 6 subscriptions, 5 outbound, 3 queued, 3 inbound ids, 3 retained
    assert count == 24


def test_old_store_takes_new_writes(old_store: Path) -> None:
    """After the upgrade the store is used as before: new batches, reopen, restore."""
    store = RocksDBStore(str(old_store))
    batch = ChangeBatch()
    batch.put_session(SessionRecord("new", 5, 60))
    m = Message("n/t", b"p", 1, False, NO_PROPERTIES, 3.0)
    batch.put_queued(QueuedRecord("dev-v5", 8, Delivery(m, 1)))
    batch.delete_session("dev-311")
    store.apply(batch)
    store.close()
    store = RocksDBStore(str(old_store))
    try:
        snap = store.load()
    finally:
        store.close()
    expected = upgrade_fixture.expected()
    assert list(snap.sessions) == ["dashboard", "dev", "dev-v5", "new"]
    assert snap.sessions["dev-v5"] == expected.sessions["dev-v5"]
    assert [q.seq for q in snap.queued["dev-v5"]] == [6, 7, 8]
    assert "dev-311" not in snap.outbound and "dev-311" not in snap.subscriptions
    assert snap.retained == expected.retained
