"""Opening a replicated JetStream KV bucket, the one way every part of the cluster room
does it (docs/cluster.md): use it if it exists, create it otherwise, and retry while
NATS cannot do either (a node keeps serving its local clients meanwhile).

Each attempt is bounded (1 s at first: :func:`attempt_timeout`), the next comes after a short pause
growing to :data:`RETRY` (:func:`backoff`): right after a nats-server restart JetStream
does not answer at once (the server's routes and its view of the cluster come back
first), and a request sent then used to wait out nats-py's 5 s default timeout, then a
2 s pause — ~7 s in all, close to the connect gate's 8 s bound (issue 14, i14-faults,
i14-restart). The pause stays short: a bucket that answers again is open within about
half a second.

The same short attempts serve the JetStream requests a waiting CONNECT makes
(:func:`retried`: a session's resume, sessions.py): while JetStream elects a leader (of
a stream, or its meta leader after that nats-server died: 3.8–5.6 s here) a request
gets no answer, or "no responders"/503 at once; made once with nats-py's 5 s timeout
it spent most of the resume's 8 s on one wait (issue 14, i14-robust)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.errors import NoRespondersError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    NoStreamResponseError,
    ServiceUnavailableError,
)
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

log = logging.getLogger("iotbroker.cluster")

T = TypeVar("T")

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
            # Every attempt after a restart times out for a while, and a first attempt
            # may while several nodes create the buckets of a new NATS cluster at once:
            # the first failure is a warning, an error only once it lasts
            # (SHORT_ATTEMPTS failures, 10 s or more), then every 20th.
            if failures in (1, SHORT_ATTEMPTS) or failures % 20 == 0:
                log.log(logging.WARNING if failures < SHORT_ATTEMPTS else logging.ERROR,
                        "cluster: cannot open the bucket %r (%s, replicas %d): %s; "
                        "retrying", bucket, description, replicas,
                        str(exc) or type(exc).__name__)
            await asyncio.sleep(backoff(failures))


#: Bound (seconds) of one attempt of a request a waiting CONNECT makes (:func:`retried`):
#: JetStream answers in milliseconds when it has its leaders.
REQUEST_ATTEMPT = 1.0


def transient(exc: BaseException) -> bool:
    """A JetStream request's failure that a new attempt soon may not have: no answer in
    time, no responders (nobody serves the subject: a stream's leader or JetStream's
    meta leader being elected), 503 (JetStream temporarily unavailable)."""
    if isinstance(exc, (TimeoutError, NoRespondersError, NoStreamResponseError,
                        ServiceUnavailableError)):
        return True
    return isinstance(exc, APIError) and getattr(exc, "code", None) == 503


async def retried(call: Callable[[], Awaitable[T]], deadline: float, what: str) -> T:
    """``call()`` (a JetStream request, made anew each time) in attempts of at most
    :data:`REQUEST_ATTEMPT` s, made again while it fails :func:`transient`-ly, until
    ``deadline`` (monotonic: no attempt runs past it); then its last error. Any other
    error at once. An attempt that got no answer is made again at once (it waited its
    bound: a request sent while a leader is being elected is dropped, and the next
    one should go as soon as possible); one that failed at once ("no responders",
    503) after a :func:`backoff` pause. For a request that may have been carried out
    although its attempt timed out (a write), the caller checks what a later attempt
    finds (sessions.py ``_write_checked``)."""
    failures = 0
    while True:
        left = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(call(), max(0.001, min(REQUEST_ATTEMPT, left)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not transient(exc):
                raise
            failures += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            pause = 0.0 if isinstance(exc, TimeoutError) else min(backoff(failures), left)
            log.debug("cluster: %s: %s; again in %.1fs (attempt %d)", what,
                      str(exc) or type(exc).__name__, pause, failures + 1)
            await asyncio.sleep(pause)


#: Keys fetched per request by :func:`list_keys`.
KEYS_BATCH = 256


async def list_keys(js: JetStreamContext, bucket: str, timeout: float = 5.0) -> list[str]:
    """The keys of KV ``bucket`` that hold a value (not deleted, purged or expired).

    What ``KeyValue.keys()`` is meant to give, without its race (nats-py 2.16): it
    watches through a *push* consumer and decides "nothing to list" when the consumer's
    ``num_pending`` is 0 and its subscription has counted no delivery yet; a delivery
    still on its way (a loaded process, a replicated bucket) then makes it end at once,
    with no keys (``NoKeysError``) or some of them. Seen as ``NoKeysError`` from a
    heartbeat bucket whose keys are rewritten every second (tests/cluster/test_names.py,
    CI of 2026-12-06) and as a list missing one of two live keys (1 in 900 calls on
    an idle nats-server). Here a *pull* consumer is asked for what it has pending
    before anything is delivered, so its count is exact, and fetched until the message
    that says nothing is left; each key's last message, headers only, so no value is
    read. The consumer is ephemeral, in memory, and deleted at the end. A pull that
    finds no responder yet (status 503: the consumer just created, its server not
    answering pulls for it yet; seen once in 200 calls on a 3-server cluster, CI of
    2026-12-07) is made again until ``timeout``.

    A key written while it is listed comes twice (its last message, then the new one,
    which the consumer counts as pending too; seen in 1 of 6 runs of
    tests/cluster/test_list_keys.py on a loaded machine, 2026-12-07): each key is
    listed once, by the latest of its messages that the listing saw."""
    prefix = f"$KV.{bucket}."
    config = ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                            ack_policy=AckPolicy.NONE, headers_only=True,
                            mem_storage=True, num_replicas=1, inactive_threshold=timeout)
    sub = await js.pull_subscribe(f"{prefix}>", stream=f"KV_{bucket}", config=config)
    live: dict[str, bool] = {}  # key -> whether its latest message seen holds a value
    name = None
    try:
        info = await sub.consumer_info()
        name = info.name
        left = info.num_pending or 0
        deadline = time.monotonic() + timeout
        while left > 0:
            try:
                batch = await sub.fetch(min(left, KEYS_BATCH), timeout=timeout)
            except ServiceUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            for msg in batch:
                left = msg.metadata.num_pending or 0
                headers = msg.headers or {}
                # deleted, purged, or the server's marker of an expiry: no value
                live[msg.subject[len(prefix):]] = not (
                    headers.get(KV_OP) in (KV_DEL, KV_PURGE) or KV_MARKER_REASON in headers)
    finally:
        await sub.unsubscribe()
        if name is not None:
            with contextlib.suppress(Exception):  # else it goes when inactive
                await js.delete_consumer(f"KV_{bucket}", name)
    return [key for key, has_value in live.items() if has_value]
