"""``GET /api/v1/clients`` over many sessions (issue 17): pages sliced out of the session
registry, filters narrowed in one pass, JSON built only for the page.

The broker starts on a RocksDB store written beforehand with 2,500 offline sessions
(as after a restart), and one real MQTT client is connected; every request goes over
real HTTP. The time per page is measured by ``benchmarks/admin_clients_page.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotbroker.storage.base import ChangeBatch, SessionRecord
from iotbroker.storage.rocksdb import RocksDBStore
from tests.admin.helpers import Http, Mqtt, admin_config, admin_url, make_passwords
from tests.helpers.broker_process import BrokerProcess

OFFLINE = 2_500


def _populate(path: Path) -> list[str]:
    """Offline persistent sessions ``dev-00000``...; every 10th has username fleet-a."""
    store = RocksDBStore(str(path), durability="os")
    batch = ChangeBatch()
    ids = []
    now = time.time()
    for i in range(OFFLINE):
        cid = f"dev-{i:05d}"
        ids.append(cid)
        batch.put_session(SessionRecord(cid, 5, 0xFFFFFFFF, now, None, 1, 0,
                                        "fleet-a" if i % 10 == 0 else None))
    store.apply(batch)
    store.close()
    return ids


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Http, list[str]]]:
    workdir = tmp_path_factory.mktemp("paging")
    make_passwords(workdir)
    ids = _populate(workdir / "data")
    proc = BrokerProcess(workdir, admin_config(workdir, storage="rocksdb")).start()
    live = Mqtt(proc, "live-1")
    live.connect()
    try:
        yield Http(admin_url(proc)), ids
    finally:
        live.close()
        proc.stop()
    assert "Traceback" not in proc.log_text()


def _get(http: Http, query: str) -> dict[str, Any]:
    reply = http.get("/api/v1/clients?" + query)
    assert reply.status == 200, (reply.status, reply.body)
    body: dict[str, Any] = reply.json()
    return body


def test_pages_cover_every_session_once(env: tuple[Http, list[str]]) -> None:
    """Paging through the unfiltered list yields each session once, the same order on
    every request, with the total count and ``hasnext`` of EMQX's ``meta``."""
    http, ids = env
    total = OFFLINE + 1
    seen: list[str] = []
    page = 1
    while True:
        body = _get(http, f"limit=300&page={page}")
        meta = body["meta"]
        assert meta["count"] == total and meta["limit"] == 300 and meta["page"] == page
        seen += [c["clientid"] for c in body["data"]]
        assert meta["hasnext"] == (len(seen) < total)
        if not meta["hasnext"]:
            break
        page += 1
        assert page <= 20, "paging does not end"
    assert len(seen) == total and set(seen) == {*ids, "live-1"}
    assert page == (total + 299) // 300
    # the same order again (registry order), and a page past the end is empty
    again = [c["clientid"] for c in _get(http, "limit=1000&page=1")["data"]]
    assert again == seen[:1000]
    past = _get(http, f"limit=300&page={page + 1}")
    assert past["data"] == [] and past["meta"]["count"] == total
    assert not past["meta"]["hasnext"]
    offline = next(c for c in _get(http, "limit=5")["data"] if c["clientid"] != "live-1")
    assert offline["connected"] is False and offline["disconnected_at"] is not None


@pytest.mark.parametrize(("query", "count"), [
    ("connected=true", 1),
    ("connected=false", OFFLINE),
    ("like_clientid=dev-0012", 10),
    ("like_clientid=live", 1),
    ("username=fleet-a", OFFLINE // 10),
    ("username=fleet-a&connected=false", OFFLINE // 10),
    ("username=fleet-a&connected=true", 0),
    ("like_username=leet", OFFLINE // 10),
    ("like_username=leet&like_clientid=dev-001", 10),
    ("clientid=dev-00007", 1),
    ("clientid=dev-00007&like_clientid=zzz", 0),
    ("clientid=nobody", 0),
    ("ip_address=127.0.0.1", 1),
    ("ip_address=127.0.0.1&connected=false", 0),
    ("ip_address=10.1.2.3", 0),
])
def test_filters_count_and_page(env: tuple[Http, list[str]], query: str, count: int) -> None:
    """Each filter and their combinations: the count of all matches, a page of at
    most ``limit`` of them, each one matching."""
    http, _ = env
    body = _get(http, query + "&limit=7")
    assert body["meta"]["count"] == count, body["meta"]
    data = body["data"]
    assert len(data) == min(7, count)
    assert body["meta"]["hasnext"] == (count > 7)
    for client in data:
        if "connected=true" in query or "ip_address=127" in query:
            assert client["connected"] is True and client["clientid"] == "live-1"
            assert client["ip_address"] == "127.0.0.1"
        if "connected=false" in query:
            assert client["connected"] is False
        if "username=fleet-a" in query or "like_username" in query:
            assert client["username"] == "fleet-a"
    if count > 7:  # the second page follows on
        second = _get(http, query + "&limit=7&page=2")["data"]
        assert {c["clientid"] for c in second}.isdisjoint(c["clientid"] for c in data)
