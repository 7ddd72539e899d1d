"""Which node holds the live connection of a client id (docs/cluster.md, "Session
ownership"): MQTT allows one connection per client id [MQTT-3.1.4-2]; the cluster
keeps that rule across nodes with a replicated JetStream KV bucket.

* When a node accepts a connection it writes ``key(client id) = this node's sender
  id`` (a *claim*). The bucket's stream puts all claims in one order: the claim with
  the highest revision owns the client id.
* Every node watches the bucket. An entry for a client id connected here, written by
  another node with a revision above this node's own claim, means the client
  connected there later: the connection here is told 0x8E Session taken over and
  closed (:meth:`Engine.taken_over_elsewhere`). An entry below our claim is older
  news and is ignored; while our claim is not yet acknowledged, the decision waits
  for its revision. Two nodes claiming at once therefore end with exactly one live
  connection: the later claim in the stream's order.
* Claims are sent concurrently (a reconnect storm is one round trip per batch, not
  per client) on their own queue, apart from the ordered message queue.

The session's state (subscriptions, expiry, the QoS 1/2 messages it has not received)
moves with its own record and compare-and-set: :mod:`iotbroker.cluster.sessions`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from iotbroker.cluster.subjects import decode_level, encode_level

if TYPE_CHECKING:
    from iotbroker.engine.engine import Engine

log = logging.getLogger("iotbroker.cluster")

#: Claims sent to NATS at once at most.
BATCH = 256


def client_key(client_id: str) -> str:
    """A client id as a KV key (``c.`` and its encoded level, ``~`` written ``=``)."""
    return "c." + encode_level(client_id).replace("~", "=")


def key_client(key: str) -> str:
    if not key.startswith("c.") or "~" in key:
        raise ValueError(f"not a session key: {key!r}")
    return decode_level(key[2:].replace("=", "~"))


class Ownership:
    """This node's claims and its watch of everyone's."""

    def __init__(self, engine: Engine, sender: bytes, bucket: str, replicas: int,
                 on_event: Callable[[], None]) -> None:
        self.engine = engine
        self.sender = sender
        self.bucket = bucket
        self.replicas = replicas
        self.on_event = on_event
        #: client id -> revision of our last claim (None: not acknowledged yet)
        self.claims: dict[str, int | None] = {}
        #: newest foreign entry seen while our claim was pending: client id -> revision
        self._waiting: dict[str, int] = {}
        #: claims sent and not acknowledged yet, and the highest revision acknowledged
        #: meanwhile (two local connections of one id in quick succession)
        self._outstanding: dict[str, int] = {}
        self._best: dict[str, int] = {}
        self._queue: list[str] = []
        self._wake = asyncio.Event()
        self.kv: KeyValue | None = None
        self.watchers: list[KeyValue.KeyWatcher] = []
        self.takeovers = 0
        self.claim_failures = 0

    def claim(self, client_id: str) -> None:
        """A connection with ``client_id`` was accepted here (after the turn)."""
        self.claims[client_id] = None
        self._outstanding[client_id] = self._outstanding.get(client_id, 0) + 1
        self._queue.append(client_id)
        self._wake.set()

    async def claim_now(self, client_id: str) -> None:
        """Claim ``client_id`` before its connection is accepted, and wait for the
        claim's revision (a session moving here: docs/cluster.md, "Sessions move").
        The old connection elsewhere is then closed by a claim that is in the stream
        before this CONNACK, so a later connection's claim comes after it."""
        kv = self.kv
        if kv is None:
            return
        self.claims[client_id] = None
        self._outstanding[client_id] = self._outstanding.get(client_id, 0) + 1
        try:
            result: int | BaseException = await kv.put(client_key(client_id), self.sender)
        except Exception as exc:
            result = exc
        self._acknowledged(client_id, result)

    def prune(self) -> None:
        """Forget claims of client ids no longer connected here (bounded memory)."""
        clients = self.engine.clients
        for client_id in [c for c in self.claims if c not in clients]:
            del self.claims[client_id]
            self._waiting.pop(client_id, None)

    async def owner(self, client_id: str) -> bytes | None:
        """The sender id of the last claim of ``client_id`` (None: none, or no bucket)."""
        kv = self.kv
        if kv is None:
            return None
        try:
            entry = await kv.get(client_key(client_id))
        except KeyNotFoundError:
            return None
        return entry.value

    async def run(self, js: JetStreamContext) -> None:
        kv = await self._open(js)
        self.kv = kv
        loop = asyncio.get_running_loop()
        watch = loop.create_task(self._watch(kv))
        log.info("cluster: session bucket %r open", self.bucket)
        try:
            while True:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                results = await asyncio.gather(
                    *(kv.put(client_key(c), self.sender) for c in batch),
                    return_exceptions=True,
                )
                for client_id, result in zip(batch, results, strict=True):
                    self._acknowledged(client_id, result)
        finally:
            watch.cancel()

    def _acknowledged(self, client_id: str, result: int | BaseException) -> None:
        """One claim came back; when the last outstanding one has, our claim's
        revision is the highest of them, and a foreign entry seen meanwhile decides."""
        left = self._outstanding.get(client_id, 1) - 1
        if isinstance(result, BaseException):
            self.claim_failures += 1
            log.warning("cluster: claim of client %r failed: %s", client_id, result)
        else:
            self._best[client_id] = max(result, self._best.get(client_id, 0))
        if left > 0:
            self._outstanding[client_id] = left
            return
        self._outstanding.pop(client_id, None)
        best = self._best.pop(client_id, None)
        if best is None or client_id not in self.claims:
            return  # every claim failed (the id stays unclaimed here), or it is gone
        self.claims[client_id] = best
        seen = self._waiting.pop(client_id, None)
        if seen is not None and seen > best:
            self._kick(client_id)

    async def _open(self, js: JetStreamContext) -> KeyValue:
        while True:
            try:
                try:
                    return await js.key_value(self.bucket)
                except BucketNotFoundError:
                    return await js.create_key_value(
                        bucket=self.bucket, history=1, replicas=self.replicas,
                        description="iotbroker client id owners (docs/cluster.md)",
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("cluster: cannot open the session bucket %r: %s; retrying",
                          self.bucket, exc)
                await asyncio.sleep(2.0)

    async def _watch(self, kv: KeyValue) -> None:
        watcher = await kv.watchall()
        self.watchers.append(watcher)
        async for entry in watcher:
            if entry is None or entry.operation in (KV_DEL, KV_PURGE):
                continue
            if entry.value == self.sender:
                continue
            try:
                client_id = key_client(entry.key)
            except ValueError:
                continue
            self.foreign(client_id, entry.revision or 0)

    def foreign(self, client_id: str, revision: int) -> None:
        """Another process claimed ``client_id`` at ``revision``."""
        if client_id not in self.claims:
            return  # not connected here (since the last prune)
        ours = self.claims[client_id]
        if ours is None:
            self._waiting[client_id] = max(revision, self._waiting.get(client_id, 0))
        elif revision > ours:
            self._kick(client_id)

    def _kick(self, client_id: str) -> None:
        self.claims.pop(client_id, None)
        if self.engine.taken_over_elsewhere(client_id):
            self.takeovers += 1
            self.on_event()
