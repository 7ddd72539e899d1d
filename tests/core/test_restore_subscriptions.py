"""Subscriptions go to the store and come back as the one SubscriptionEntry type:
the session puts its own entries, restore reads the share group from the filter
again (it is the core's reading, not stored) and fills the trie."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotbroker.core.session import SessionLimits
from iotbroker.core.sessions import SessionRegistry
from iotbroker.core.subscriptions import SubscriptionTrie
from iotbroker.metrics import Metrics
from iotbroker.storage.base import ChangeBatch, Store
from iotbroker.storage.memory import MemoryStore
from iotbroker.subscription import SubscriptionEntry


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    from iotbroker.storage.rocksdb import RocksDBStore  # noqa: PLC0415

    rdb = RocksDBStore(str(tmp_path / "db"))
    request.addfinalizer(rdb.close)
    return rdb


def test_subscriptions_restore_with_their_share_group(store: Store) -> None:
    batch = ChangeBatch()
    trie = SubscriptionTrie()
    registry = SessionRegistry(trie, batch, SessionLimits(), Metrics())
    session, _ = registry.open("c", False, 3600, 5, 0.0)
    shared = SubscriptionEntry("c", "$share/g/a/+", 1, subscription_identifier=7,
                               share_group="g")
    plain = SubscriptionEntry("c", "a/#", 2, no_local=True, retain_as_published=True,
                              retain_handling=1)
    for entry in (shared, plain):
        trie.add(entry, session.remember_subscription(entry))
    store.apply(batch)

    trie2 = SubscriptionTrie()
    registry2 = SessionRegistry(trie2, ChangeBatch(), SessionLimits(), Metrics())
    registry2.restore(store.load(), 10.0)
    restored = registry2.sessions["c"].subscriptions
    assert restored == {"$share/g/a/+": shared, "a/#": plain}
    m = trie2.match("a/b")
    assert m.direct == {"c": [plain]}
    assert [(g, f, members) for g, f, members in m.shared] == [("g", "a/+", [shared])]
