"""Opening a replicated JetStream KV bucket, the one way every part of the cluster room
does it (docs/cluster.md): use it if it exists, create it otherwise, and retry while
NATS cannot do either (a node keeps serving its local clients meanwhile).

Each attempt is bounded by :data:`ATTEMPT_TIMEOUT` and the next comes after a short,
growing pause (:func:`backoff`): right after a nats-server restart JetStream does not
answer until its meta leader is elected, and a request sent then waits out nats-py's
5 s default timeout, then the retry's pause — ~7 s in all, close to the connect gate's
8 s bound (``RESUME_TIMEOUT``); with short attempts the bucket is open within a few
tenths of a second of JetStream answering (issue 14, i14-faults)."""

from __future__ import annotations

import asyncio
import logging

from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger("iotbroker.cluster")

#: Longest pause (seconds) between attempts to open a bucket NATS could not open or
#: create.
RETRY = 2.0
#: Bound (seconds) of one attempt: JetStream answers a bucket lookup in milliseconds
#: when it is up; no answer within this means "not yet", and the next attempt follows.
ATTEMPT_TIMEOUT = 1.0
#: First pause (seconds) between attempts; doubled each time up to :data:`RETRY`.
FIRST_PAUSE = 0.1


def backoff(failures: int) -> float:
    """The pause after ``failures`` failed attempts in a row (1, 2, ...)."""
    return float(min(RETRY, FIRST_PAUSE * 2.0 ** max(0, failures - 1)))


async def open_bucket(js: JetStreamContext, bucket: str, replicas: int, description: str,
                      ttl: float | None = None) -> KeyValue:
    """The KV bucket ``bucket`` (one value per key kept, ``replicas`` copies, entries
    expiring after ``ttl`` seconds if given), opened or created; retried until it is
    (each attempt bounded by :data:`ATTEMPT_TIMEOUT`, pauses by :func:`backoff`)."""

    async def attempt() -> KeyValue:
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:
            return await js.create_key_value(
                bucket=bucket, history=1, ttl=ttl, replicas=replicas,
                description=description)

    failures = 0
    while True:
        try:
            return await asyncio.wait_for(attempt(), ATTEMPT_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures += 1
            log.error("cluster: cannot open the bucket %r (%s, replicas %d): %s; retrying",
                      bucket, description, replicas, exc or type(exc).__name__)
            await asyncio.sleep(backoff(failures))
