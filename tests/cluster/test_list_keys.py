"""``buckets.list_keys``: the keys of a replicated KV bucket, exactly, on a real 3-server
NATS cluster (docs/cluster.md, "Wills": a sweep that lists no keys of a dead process
forgets it, and its wills never fire).

nats-py 2.16's ``KeyValue.keys()`` decides "nothing left" from a push consumer's
pending count while deliveries may still be on their way: it was seen to raise
``NoKeysError`` on a heartbeat bucket whose keys are always there, and to return one of
two live keys; and each call leaves an ordered consumer for 5 minutes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
from nats.js.errors import BadRequestError, NoStreamResponseError, ServiceUnavailableError

from iotbroker.cluster.buckets import list_keys
from tests.helpers.nats_cluster import NatsCluster

CALLS = 200


async def _placed(js: Any, **config: Any) -> Any:
    """``create_key_value``, again while JetStream has not counted all three servers
    as peers yet (just after the cluster started: 400 "no suitable peers for
    placement", err_code 10005), or with no answer in nats-py's 5 s (the R3 stream's
    creation on a loaded machine: seen in 2 of 10 runs while two mypyc builds ran,
    2026-12-07; creating it again with the same configuration is allowed), for at
    most 20 s. The broker does the same: ``buckets.open_bucket``."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return await js.create_key_value(**config)
        except BadRequestError as exc:
            if exc.err_code != 10005 or time.monotonic() > deadline:
                raise
        except nats.errors.TimeoutError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.25)


async def _first_put(kv: Any, key: str, value: bytes) -> None:
    """A bucket's first write, again while its R3 stream has no leader yet ("no
    response from stream", or 503, just after it was made; seen once in CI on 0e7ad6b
    under load), for at most 20 s."""
    deadline = time.monotonic() + 20
    while True:
        try:
            await kv.put(key, value)
            return
        except (NoStreamResponseError, ServiceUnavailableError, nats.errors.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


def test_list_keys_gives_every_live_key_and_no_deleted_purged_or_expired_one(
        nats_cluster: NatsCluster) -> None:
    """Live keys (dots and dashes in them, values rewritten meanwhile as heartbeats
    are), a deleted, a purged and an expired key: every one of ``CALLS`` listings is
    exactly the live keys, an empty bucket lists none, and no consumer is left."""

    async def run() -> tuple[list[list[str]], list[str], list[str], int]:
        nc = await nats.connect(nats_cluster.urls)
        try:
            js = nc.jetstream()
            kv = await _placed(js, bucket="lk_live", replicas=3, ttl=3.0)
            empty = await _placed(js, bucket="lk_empty", replicas=3)
            await _first_put(empty, "only", b"x")
            await empty.delete("only")
            await _first_put(kv, "short-lived", b"x")  # expires (ttl 3 s) before the listings
            live = ["a_1", "b_2.3", "c-4"]
            for key in live:
                await kv.put(key, b"v")
            await kv.put("deleted", b"x")
            await kv.delete("deleted")
            await kv.put("purged", b"x")
            await kv.purge("purged")

            async def beat() -> None:  # the live keys rewritten while they are listed
                while True:
                    for key in live:
                        await kv.put(key, b"v")
                    await asyncio.sleep(0.5)

            task = asyncio.get_running_loop().create_task(beat())
            try:
                await asyncio.sleep(3.5)  # "short-lived" has expired
                listings = [sorted(await list_keys(js, "lk_live")) for _ in range(CALLS)]
            finally:
                task.cancel()
            consumers = (await js.stream_info("KV_lk_live")).state.consumer_count
            return listings, live, await list_keys(js, "lk_empty"), consumers
        finally:
            await nc.close()

    listings, live, empty, consumers = asyncio.run(run())
    wrong = [keys for keys in listings if keys != sorted(live)]
    assert wrong == [], f"{len(wrong)} of {CALLS} listings wrong, e.g. {wrong[0]}"
    assert empty == []
    assert consumers == 0
