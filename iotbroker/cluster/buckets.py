"""Opening a replicated JetStream KV bucket, the one way every part of the cluster room
does it (docs/cluster.md): use it if it exists, create it otherwise, and retry while
NATS cannot do either (a node keeps serving its local clients meanwhile).

Each attempt is bounded (1 s at first: :func:`attempt_timeout`), the next comes after a short pause
growing to :data:`RETRY` (:func:`backoff`): right after a nats-server restart JetStream
does not answer at once (the server's routes and its view of the cluster come back
first), and a request sent then used to wait out nats-py's 5 s default timeout, then a
2 s pause — ~7 s in all, close to the connect gate's 8 s bound (issue 14, i14-faults,
i14-restart). The pause stays short: a bucket that answers again is open within about
half a second."""

from __future__ import annotations

import asyncio
import logging

from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger("iotbroker.cluster")

#: Longest pause (seconds) between attempts to open a bucket NATS could not open or
#: create.
RETRY = 0.5
#: Bound (seconds) of a first attempt: JetStream answers a bucket lookup in
#: milliseconds when it is up; no answer within this means "not yet", and the next
#: attempt follows (:func:`attempt_timeout`).
ATTEMPT_TIMEOUT = 1.0
#: Longest bound (seconds) of an attempt (nats-py's own default): a JetStream that is
#: only slow (a loaded machine, a large bucket created) still gets to answer.
MAX_ATTEMPT_TIMEOUT = 5.0
#: First pause (seconds) between attempts; doubled each time up to :data:`RETRY`.
FIRST_PAUSE = 0.1


def backoff(failures: int) -> float:
    """The pause after ``failures`` failed attempts in a row (1, 2, ...)."""
    return float(min(RETRY, FIRST_PAUSE * 2.0 ** max(0, failures - 1)))


#: Failed attempts in a row after which each attempt is given longer.
SHORT_ATTEMPTS = 10


def attempt_timeout(failures: int) -> float:
    """The bound of the attempt after ``failures`` failed ones: 1 s for the first
    :data:`SHORT_ATTEMPTS` (a request sent before JetStream answers is lost, and its
    attempt's bound is how late the next one comes), then growing by 0.5 s each time
    up to :data:`MAX_ATTEMPT_TIMEOUT`."""
    return min(MAX_ATTEMPT_TIMEOUT,
               ATTEMPT_TIMEOUT + 0.5 * max(0, failures - SHORT_ATTEMPTS + 1))


async def open_bucket(js: JetStreamContext, bucket: str, replicas: int, description: str,
                      ttl: float | None = None) -> KeyValue:
    """The KV bucket ``bucket`` (one value per key kept, ``replicas`` copies, entries
    expiring after ``ttl`` seconds if given), opened or created; retried until it is
    (each attempt bounded by :func:`attempt_timeout`, pauses by :func:`backoff`)."""

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
            return await asyncio.wait_for(attempt(), attempt_timeout(failures))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures += 1
            # (every attempt after a restart times out for a while: logged once)
            if failures == 1 or failures % 20 == 0:
                log.error("cluster: cannot open the bucket %r (%s, replicas %d): %s; "
                          "retrying", bucket, description, replicas,
                          str(exc) or type(exc).__name__)
            await asyncio.sleep(backoff(failures))
