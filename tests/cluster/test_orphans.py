"""Session records of a node that died are swept once the sessions expire
(docs/cluster.md, "Sessions move"; iotbroker/cluster/orphans.py): [MQTT-3.1.2-23]
a session ends when its Session Expiry Interval has passed since the disconnect —
also when the node that had it is gone, and nobody else would delete its record."""

from __future__ import annotations

import asyncio
import time

import nats
from nats.js.errors import KeyNotFoundError

from iotbroker.cluster.ownership import client_key
from tests.cluster.conftest import wait_for_log
from tests.cluster.test_live_routing import Node
from tests.cluster.test_sessions import _connect, _ready
from tests.helpers.nats_cluster import NatsCluster


async def _present(urls: list[str], bucket: str, client_ids: list[str]) -> set[str]:
    nc = await nats.connect(urls)
    try:
        kv = await nc.jetstream().key_value(bucket)
        found = set()
        for client_id in client_ids:
            try:
                await kv.get(client_key(client_id))
                found.add(client_id)
            except KeyNotFoundError:
                pass
        return found
    finally:
        await nc.close()


def test_mqtt_3_1_2_23_records_of_a_dead_nodes_expired_sessions_are_swept(
        make_node: Node, nats_cluster: NatsCluster) -> None:
    """Node a has three persistent sessions: one disconnected (expiry 2 s), one still
    connected (expiry 2 s: its connection ends with the node), one disconnected with
    expiry 3600 s; a is killed with -9. The live node b deletes the two records once
    the node's heartbeat is gone and their expiry passed; the third is kept (it can
    still be resumed)."""
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    _ready(a, b)
    prefix = a.config_path.read_text().split("subject_prefix: ")[1].split()[0]
    bucket = f"{prefix}_sessrec"
    ids = ["orphan-off", "orphan-on", "orphan-keep"]
    off, _ = _connect(a, "orphan-off", clean_start=True, expiry=2)
    off.subscribe("orphan/off", qos=1)
    off.disconnect()
    off.close()
    on, _ = _connect(a, "orphan-on", clean_start=True, expiry=2)
    on.subscribe("orphan/on", qos=1)
    keep, _ = _connect(a, "orphan-keep", clean_start=True, expiry=3600)
    keep.subscribe("orphan/keep", qos=1)
    keep.disconnect()
    keep.close()
    deadline = time.monotonic() + 10
    while asyncio.run(_present(nats_cluster.urls, bucket, ids)) != set(ids):
        assert time.monotonic() < deadline, "the records were not written"
        time.sleep(0.1)
    a.kill()
    on.close()
    killed = time.monotonic()
    deadline = killed + 30
    left = set(ids)
    while left != {"orphan-keep"}:
        assert time.monotonic() < deadline, f"records left: {left}"
        time.sleep(0.5)
        left = asyncio.run(_present(nats_cluster.urls, bucket, ids))
    wait_for_log(b, "session record of 'orphan-on' deleted")
    print(f"\nswept {time.monotonic() - killed:.1f} s after the kill "
          f"(heartbeat TTL 3 s, expiry 2 s)")
