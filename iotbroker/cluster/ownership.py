"""Which node holds the live connection of a client id (docs/cluster.md, "Session
ownership"): MQTT allows one connection per client id [MQTT-3.1.4-2]; the cluster
keeps that rule across nodes with a replicated JetStream KV bucket.

* When a node accepts a connection it *claims* the client id: ``key(client id) =
  this node's sender id``, written with compare-and-set so that the claim learns the
  owner it replaces (create; if the key exists, read it and update it with
  ``last=revision``; a lost race reads again). The bucket's stream puts all claims in
  one order and each one names its predecessor: the claim with the highest revision
  owns the client id.
* Only that predecessor is told, on its own subject (one NATS subscription per
  node): "client id, claimed again at revision R". A node holding the client id with
  a claim below R closes the connection with DISCONNECT 0x8E Session taken over
  [MQTT-3.1.4-3] (:meth:`Engine.taken_over_elsewhere`); while its own claim is not
  yet acknowledged the decision waits for its revision. Nobody watches the whole
  bucket: a connect costs one KV write (create) and nothing in the other nodes,
  whatever their number; a takeover one more read, write and message.
* Two nodes claiming at once: one create or update wins, the other learns the
  winner, updates after it and tells it — exactly one live connection remains, the
  later claim in the stream's order. A chain of claims tells each owner in turn.
* Claims are sent concurrently (a reconnect storm is one round trip per batch, not
  per client) on their own queue, apart from the ordered message queue.

The session's state (subscriptions, expiry, the QoS 1/2 messages it has not received)
moves with its own record and compare-and-set: :mod:`iotbroker.cluster.sessions`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from iotbroker.cluster.buckets import open_bucket, retried
from iotbroker.cluster.subjects import decode_level, encode_level

if TYPE_CHECKING:
    from iotbroker.engine.engine import Engine

log = logging.getLogger("iotbroker.cluster")

#: Claims sent to NATS at once at most.
BATCH = 256
#: A claim that keeps losing its compare-and-set race gives up after this many tries.
CAS_TRIES = 20
#: A takeover notice is acknowledged by the previous owner; tries and timeout each.
NOTICE_TRIES = 3
NOTICE_TIMEOUT = 1.0
#: Seconds a handover request waits for this process's own claim in flight before it
#: answers "ask again" (below the asker's HANDOVER_TIMEOUT).
IN_FLIGHT_WAIT = 0.4
#: Seconds a claim made for a CONNECT that waits (a session moving here) is kept for
#: that CONNECT's acceptance (after that, its acceptance claims again).
EARLY_SECONDS = 10.0

_REV = struct.Struct(">Q")
#: In a takeover notice, the revision's top bit: the claimant's connection had ended
#: already when its claim came back — a process that holds the id claims it again.
_GONE = 1 << 63


def client_key(client_id: str) -> str:
    """A client id as a KV key (``c.`` and its encoded level, ``~`` written ``=``)."""
    return "c." + encode_level(client_id).replace("~", "=")


def key_client(key: str) -> str:
    if not key.startswith("c.") or "~" in key:
        raise ValueError(f"not a session key: {key!r}")
    return decode_level(key[2:].replace("=", "~"))


class Ownership:
    """This node's claims, and the notices of claims that replaced them."""

    def __init__(self, engine: Engine, sender: bytes, bucket: str, replicas: int,
                 on_event: Callable[[], None]) -> None:
        self.engine = engine
        self.sender = sender
        self.bucket = bucket
        self.replicas = replicas
        self.on_event = on_event
        #: client id -> revision of our last claim (None: not acknowledged yet)
        self.claims: dict[str, int | None] = {}
        #: newest foreign claim told while our claim was pending: client id -> revision
        self._waiting: dict[str, int] = {}
        #: claims sent and not acknowledged yet, and the highest revision acknowledged
        #: meanwhile (two local connections of one id in quick succession)
        self._outstanding: dict[str, int] = {}
        self._best: dict[str, int] = {}
        self._queue: list[str] = []
        #: CONNECTs that wait here before their acceptance (a resume: docs/cluster.md
        #: "Sessions move"), by client id, since when; those whose resume claimed the
        #: id already (:meth:`claim_now`); those that lost meanwhile to another
        #: process's later claim or to its handover request (closed with 0x8E as soon
        #: as they are accepted: :meth:`accepted`)
        self.connects_waiting: dict[str, float] = {}
        self.early: set[str] = set()
        self.superseded: set[str] = set()
        #: per client id with claims in flight: whether each of them created the key
        #: (no process had claimed the id before); set once they all came back
        #: (:meth:`fresh`)
        self._created: dict[str, bool] = {}
        self._settled: dict[str, asyncio.Event] = {}
        self._fresh: dict[str, bool] = {}
        self._wake = asyncio.Event()
        self.kv: KeyValue | None = None
        #: set once :attr:`kv` is open (sessions.py waits for it: claims need it)
        self.opened = asyncio.Event()
        self.nc: NatsClient | None = None
        self._notices: set[asyncio.Task[None]] = set()
        self.takeovers = 0
        self.claim_failures = 0
        #: takeover notices sent to a previous owner, and those that found nobody
        self.notices_sent = 0
        self.notices_lost = 0

    def subject(self, sender: bytes) -> str:
        """Where the process ``sender`` is told its claims were replaced (outside
        ``<prefix>.``, which is the MQTT interest)."""
        name = sender.decode().replace("/", "_").replace(".", "_").replace(" ", "_")
        return f"_iotb_own.{self.bucket}.{name}"

    def claim(self, client_id: str) -> None:
        """A connection with ``client_id`` was accepted here (after the turn)."""
        settled = self._settled.get(client_id)
        if settled is None or settled.is_set():
            self._settled[client_id] = asyncio.Event()
            self._fresh.pop(client_id, None)
        self.claims[client_id] = None
        self._outstanding[client_id] = self._outstanding.get(client_id, 0) + 1
        self._queue.append(client_id)
        self._wake.set()

    def connect_waits(self, client_id: str) -> None:
        """A CONNECT of ``client_id`` waits here before its acceptance (its session
        is looked for in the cluster)."""
        self.connects_waiting[client_id] = time.monotonic()
        self.early.discard(client_id)
        self.superseded.discard(client_id)

    async def claim_now(self, client_id: str, deadline: float | None = None) -> int | None:
        """Claim ``client_id`` before its connection is accepted, and wait for the
        claim's revision (a session moving here: docs/cluster.md, "Sessions move").
        The previous owner is told (and closes its connection) with a revision below
        any later connection's claim. None: the claim failed, or a later claim of
        another process replaced it already (:attr:`superseded`). With ``deadline``
        (monotonic), its requests are short attempts made again until then while
        JetStream does not answer (buckets.py :func:`retried`)."""
        kv = self.kv
        if kv is None:
            return None
        self.early.add(client_id)
        self.claims[client_id] = None
        self._outstanding[client_id] = self._outstanding.get(client_id, 0) + 1
        result = await self._claim(kv, client_id, deadline)
        self._acknowledged(client_id, result)
        return self.claims.get(client_id)

    def accepted(self, client_id: str) -> bool:
        """A connection of ``client_id`` was accepted here (after the turn): claimed
        now, unless its resume claimed it already (:meth:`claim_now`). False: while
        it waited, another process claimed the id later or took the session over —
        that connection has the client id [MQTT-3.1.4-2]; this one is to be closed."""
        waited = self.connects_waiting.pop(client_id, None)
        early = client_id in self.early
        self.early.discard(client_id)
        if waited is not None and client_id in self.superseded:
            self.superseded.discard(client_id)
            return False
        if not early or waited is None or time.monotonic() - waited > EARLY_SECONDS:
            self.claim(client_id)
        return True

    async def fresh(self, client_id: str) -> bool:
        """Whether the claims of ``client_id`` made at its acceptance here
        (:meth:`claim`) created its key: no process had ever claimed it, so no other
        node can hold a session or a record of it (a record is written only by the
        process that claimed the id — docs/cluster.md). Waits for those claims
        (bounded); False when not known."""
        settled = self._settled.get(client_id)
        if settled is None:
            return False
        try:
            await asyncio.wait_for(settled.wait(), NOTICE_TIMEOUT * NOTICE_TRIES)
        except TimeoutError:
            return False
        if self._settled.get(client_id) is settled:
            del self._settled[client_id]
        return self._fresh.pop(client_id, False)

    async def later_than(self, client_id: str, revision: int) -> bool | None:
        """This process's claim of ``client_id`` is later than ``revision`` (another
        process's): its connection here keeps the id. A claim of ours still in flight
        is waited for (its revision decides) at most :data:`IN_FLIGHT_WAIT`; None: it
        is still in flight (not known yet)."""
        deadline = time.monotonic() + IN_FLIGHT_WAIT
        while client_id in self._outstanding:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.005)
        ours = self.claims.get(client_id)
        return ours is not None and ours > revision and self.holds(client_id)

    def holds(self, client_id: str) -> bool:
        """A connection of ``client_id`` is here, or a CONNECT of it waits here."""
        return client_id in self.engine.clients or client_id in self.connects_waiting

    def abandon(self, client_id: str) -> None:
        """The waiting CONNECT of ``client_id`` is refused (never accepted here)."""
        self.connects_waiting.pop(client_id, None)
        self.early.discard(client_id)
        self.superseded.discard(client_id)

    def lost(self, client_id: str) -> None:
        """Another process with a later claim has the session (a handover it asked
        for, or one refused to us): a CONNECT waiting here for ``client_id`` loses."""
        if client_id in self.connects_waiting:
            self.claims.pop(client_id, None)
            self.superseded.add(client_id)

    def prune(self) -> None:
        """Forget claims of client ids no longer connected here (bounded memory); a
        claim of a CONNECT that still waits is kept (its notices count)."""
        now = time.monotonic()
        waiting = self.connects_waiting
        for client_id in [c for c, t in waiting.items() if now - t > EARLY_SECONDS]:
            del waiting[client_id]
            self.early.discard(client_id)
            self.superseded.discard(client_id)
        clients = self.engine.clients
        for client_id in [c for c in self.claims if c not in clients and c not in waiting]:
            del self.claims[client_id]
            self._waiting.pop(client_id, None)
        for client_id in [c for c, e in self._settled.items() if e.is_set()]:
            del self._settled[client_id]  # nobody asked (fresh() then reads: "unknown")
            self._fresh.pop(client_id, None)

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

    async def run(self, nc: NatsClient) -> None:
        self.nc = nc
        kv = await self._open(nc.jetstream())
        await nc.subscribe(self.subject(self.sender), cb=self._on_notice)
        self.kv = kv
        self.opened.set()
        log.info("cluster: session bucket %r open", self.bucket)
        try:
            while True:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                results = await asyncio.gather(*(self._claim(kv, c) for c in batch))
                for client_id, result in zip(batch, results, strict=True):
                    self._acknowledged(client_id, result)
        finally:
            for task in list(self._notices):
                task.cancel()

    async def _claim(self, kv: KeyValue, client_id: str, deadline: float | None = None
                     ) -> int | BaseException:
        """Compare-and-set ``client_id`` to this node; its revision (or the error).
        The previous owner, if another process, is told in the background. With
        ``deadline``: each request in short attempts until then (:meth:`claim_now`)."""
        key = client_key(client_id)
        last = 0  # first try: create (one write for a client id never seen)
        previous: bytes | None = None
        created = True
        #: an attempt of ours timed out: it may have been written all the same
        unsure = False

        async def update() -> int:
            if deadline is None:
                return await kv.update(key, self.sender, last=last)

            async def attempt() -> int:
                nonlocal unsure
                try:
                    return await kv.update(key, self.sender, last=last)
                except BaseException as exc:
                    unsure = unsure or isinstance(exc, (TimeoutError, asyncio.CancelledError))
                    raise

            return await retried(attempt, deadline, f"claim of {client_id!r}")

        async def get() -> KeyValue.Entry:
            if deadline is None:
                return await kv.get(key)
            return await retried(lambda: kv.get(key), deadline, f"owner of {client_id!r}")

        try:
            for _ in range(CAS_TRIES):
                try:
                    revision = await update()
                except KeyWrongLastSequenceError:
                    created = False
                    try:
                        entry = await get()
                    except KeyNotFoundError as exc:  # deleted: its tombstone is last
                        tomb = getattr(exc, "entry", None)
                        last = (tomb.revision or 0) if tomb is not None else 0
                        previous = None
                        continue
                    # Written again even when the entry is ours: a read may come
                    # from a replica that lags (direct get); only the update's
                    # compare-and-set proves that ``previous`` is the latest owner.
                    # (Ours after an attempt that timed out: that attempt was
                    # written, and ``previous`` is still the owner it replaced.)
                    if not (unsure and entry.value == self.sender):
                        previous = entry.value
                    last = entry.revision or 0
                    continue
                if last and previous is not None and previous != self.sender:
                    self._tell(previous, client_id, revision, not self.holds(client_id))
                log.debug("cluster: client %r claimed at %d (after %s)", client_id,
                          revision, previous)
                if not created:
                    self._created[client_id] = False
                else:
                    self._created.setdefault(client_id, True)
                return revision
            raise RuntimeError(f"lost the compare-and-set race {CAS_TRIES} times")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._created[client_id] = False
            return exc

    def _tell(self, previous: bytes, client_id: str, revision: int, gone: bool) -> None:
        task = asyncio.get_running_loop().create_task(
            self._notice(previous, client_id, revision | (_GONE if gone else 0)))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _notice(self, previous: bytes, client_id: str, revision: int) -> None:
        """Tell ``previous`` that ``client_id`` was claimed at ``revision`` (acknowledged;
        a process that is gone has no responder and needs no notice)."""
        nc = self.nc
        if nc is None:
            return
        payload = _REV.pack(revision) + client_id.encode()
        self.notices_sent += 1
        for _ in range(NOTICE_TRIES):
            try:
                await nc.request(self.subject(previous), payload, timeout=NOTICE_TIMEOUT)
                return
            except NoRespondersError:
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("cluster: takeover notice of %r to %r: %s", client_id,
                          previous, exc)
        self.notices_lost += 1
        log.warning("cluster: takeover notice of client %r to %s not acknowledged",
                    client_id, previous.decode(errors="replace"))

    async def _on_notice(self, msg: Msg) -> None:
        data = msg.data
        if len(data) >= _REV.size:
            try:
                client_id = data[_REV.size:].decode()
            except UnicodeDecodeError:
                client_id = None
            if client_id is not None:
                (revision,) = _REV.unpack_from(data)
                if revision & _GONE:
                    self.reclaim(client_id)
                else:
                    self.foreign(client_id, revision)
        if msg.reply:
            await msg.respond(b"")

    def _acknowledged(self, client_id: str, result: int | BaseException) -> None:
        """One claim came back; when the last outstanding one has, our claim's
        revision is the highest of them, and a foreign claim told meanwhile decides."""
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
        created = self._created.pop(client_id, False)
        settled = self._settled.get(client_id)
        if settled is not None and not settled.is_set():
            self._fresh[client_id] = created
            settled.set()
        best = self._best.pop(client_id, None)
        if best is None or client_id not in self.claims:
            return  # every claim failed (the id stays unclaimed here), or it is gone
        self.claims[client_id] = best
        seen = self._waiting.pop(client_id, None)
        if seen is not None and seen > best:
            self._kick(client_id)

    async def _open(self, js: JetStreamContext) -> KeyValue:
        return await open_bucket(js, self.bucket, self.replicas,
                                 "iotbroker client id owners (docs/cluster.md)")

    def reclaim(self, client_id: str) -> None:
        """Another process's claim of ``client_id`` came back after the connection it
        was made for had ended there: if this process holds the id, it claims it
        again, so that the newest claim names the process that has the connection
        (a later connection elsewhere then tells this one)."""
        if self.holds(client_id):
            log.debug("cluster: client %r: a claim of an ended connection came back "
                      "elsewhere; claimed again", client_id)
            self.claim(client_id)
            self._wake.set()

    def foreign(self, client_id: str, revision: int) -> None:
        """Another process claimed ``client_id`` at ``revision``."""
        if client_id not in self.claims:
            return  # not connected here (since the last prune)
        ours = self.claims[client_id]
        log.debug("cluster: client %r claimed elsewhere at %d (ours: %s)", client_id,
                  revision, ours)
        if ours is None:
            self._waiting[client_id] = max(revision, self._waiting.get(client_id, 0))
        elif revision > ours:
            self._kick(client_id)

    def _kick(self, client_id: str) -> None:
        self.claims.pop(client_id, None)
        if client_id in self.connects_waiting:
            # A CONNECT here still waits for its resume: it lost (closed once accepted).
            self.superseded.add(client_id)
        if self.engine.taken_over_elsewhere(client_id):
            self.takeovers += 1
            self.on_event()
