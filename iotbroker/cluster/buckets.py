"""Opening a replicated JetStream KV bucket, the one way every part of the cluster room
does it (docs/cluster.md): use it if it exists, create it otherwise, and retry every
2 s while NATS cannot do either (a node keeps serving its local clients meanwhile)."""

from __future__ import annotations

import asyncio
import logging

from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger("iotbroker.cluster")

#: Seconds between attempts to open a bucket NATS could not open or create.
RETRY = 2.0


async def open_bucket(js: JetStreamContext, bucket: str, replicas: int, description: str,
                      ttl: float | None = None) -> KeyValue:
    """The KV bucket ``bucket`` (one value per key kept, ``replicas`` copies, entries
    expiring after ``ttl`` seconds if given), opened or created; retried until it is."""
    while True:
        try:
            try:
                return await js.key_value(bucket)
            except BucketNotFoundError:
                return await js.create_key_value(
                    bucket=bucket, history=1, ttl=ttl, replicas=replicas,
                    description=description)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("cluster: cannot open the bucket %r (%s, replicas %d): %s; retrying",
                      bucket, description, replicas, exc)
            await asyncio.sleep(RETRY)
