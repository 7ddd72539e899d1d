"""Wills of a node that died (docs/cluster.md, "Wills of a dead node").

A node publishes the will of its own clients itself when their connections end
without DISCONNECT (MQTT 3.1.1 §3.1.2.5, MQTT 5.0 §3.1.2.5). When the node itself
dies (kill -9, power loss) nobody is left to do it; so:

* each node writes the will of every connection it accepts into a replicated KV
  bucket ``<prefix>_wills`` (key: this process's token, a serial, the client id) and
  deletes it when the connection ends (the node then handled the will itself, or the
  client disconnected cleanly);
* each node keeps a heartbeat key in a bucket ``<prefix>_nodes`` whose entries live
  ``NODE_TTL`` seconds;
* every node sweeps the wills bucket every ``SWEEP_SECONDS``: a will whose node has no
  heartbeat any more is due (after its Will Delay Interval, unless the client id was
  claimed by a live node since: the session was resumed elsewhere [MQTT-3.1.3-9]); the
  node that deletes it with a compare-and-set on its revision publishes it — exactly
  one node does;
* a node that stops cleanly (SIGTERM) deletes its own wills first: a shutdown sends no
  will.

The will is published as its client (:meth:`Engine.publish_will`: the ACL's write
decision and the ``$SYS`` rule apply) by the node that won it, and reaches every node
through live routing. If that node dies between the delete and the publish, the will
is lost: at most once, by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from iotbroker.cluster.buckets import list_keys, open_bucket
from iotbroker.cluster.subjects import decode_level, encode_level
from iotbroker.codec.packets import Will
from iotbroker.storage.records import decode_properties, encode_properties

if TYPE_CHECKING:
    from iotbroker.cluster.ownership import Ownership
    from iotbroker.engine.client import Client
    from iotbroker.engine.engine import Engine

log = logging.getLogger("iotbroker.cluster")

#: A node without a heartbeat for this long is dead.
NODE_TTL = 3.0
HEARTBEAT_SECONDS = 1.0
SWEEP_SECONDS = 1.0

_HEAD = struct.Struct(">BBBBIII")  # version, qos, retain, has user, len topic/user/props


def encode_will(will: Will, username: str | None) -> bytes:
    topic = will.topic.encode()
    user = (username or "").encode()
    props = encode_properties(will.properties)
    head = _HEAD.pack(1, will.qos, int(will.retain), int(username is not None),
                      len(topic), len(user), len(props))
    return b"".join([head, topic, user, props, bytes(will.payload)])


def decode_will(data: bytes) -> tuple[Will, str | None]:
    version, qos, retain, has_user, lt, lu, lp = _HEAD.unpack_from(data)
    if version != 1:
        raise ValueError(f"will record version {version}")
    pos = _HEAD.size
    topic = data[pos : pos + lt].decode()
    pos += lt
    user = data[pos : pos + lu].decode()
    pos += lu
    props = decode_properties(data[pos : pos + lp])
    pos += lp
    will = Will(topic, data[pos:], qos, bool(retain), props)
    return will, user if has_user else None


class Wills:
    """This node's wills in the bucket, its heartbeat, and the sweep of others'."""

    def __init__(self, engine: Engine, sender: bytes, prefix: str, replicas: int,
                 ownership: Ownership, on_event: Callable[[], None]) -> None:
        self.engine = engine
        self.sender = sender
        #: This process in KV keys: "<node>_<nonce>" (node names have no '.')
        self.token = sender.decode().replace("/", "_")
        base = prefix.replace(".", "_")
        self.bucket = f"{base}_wills"
        self.nodes_bucket = f"{base}_nodes"
        self.replicas = replicas
        self.ownership = ownership
        self.on_event = on_event
        self.kv: KeyValue | None = None
        self.nodes: KeyValue | None = None
        self.js: JetStreamContext | None = None
        self._serial = 0
        self._keys: dict[int, str] = {}  # id(client) -> its will key
        self._queue: deque[tuple[str, bytes | None]] = deque()  # (key, value or delete)
        self._wake = asyncio.Event()
        self._due: dict[str, float] = {}  # key -> when it was first seen orphaned
        #: Other processes' tokens seen (heartbeats, or wills at start-up): the sweep
        #: checks these few, and lists the wills of a dead one only.
        self._known: set[str] = set()
        self.published = 0
        #: This node's figures for the cluster totals (put with each heartbeat), and
        #: every process's last ones with when they came (docs/cluster.md, "$SYS").
        self.status_of: Callable[[], bytes] | None = None
        self.figures: dict[str, tuple[float, bytes]] = {}

    # ---------------------------------------------------------- each turn
    def connected(self, client: Client) -> None:
        will = client.will
        session = client.session
        if will is None or session is None:
            return
        self._serial += 1
        key = f"{self.token}.{self._serial}.{encode_level(client.client_id).replace('~', '=')}"
        self._keys[id(client)] = key
        self._queue.append((key, encode_will(will, session.username)))
        self._wake.set()

    def ended(self, client: Client) -> None:
        key = self._keys.pop(id(client), None)
        if key is not None:
            self._queue.append((key, None))
            self._wake.set()

    # --------------------------------------------------------------- I/O
    async def _open(self, js: JetStreamContext, bucket: str, ttl: float | None) -> KeyValue:
        return await open_bucket(js, bucket, self.replicas,
                                 "iotbroker wills and node heartbeats (docs/cluster.md)", ttl)

    async def run(self, js: JetStreamContext) -> None:
        self.js = js
        self.nodes = await self._open(js, self.nodes_bucket, NODE_TTL)
        self.kv = await self._open(js, self.bucket, None)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):  # nodes that died before this one started
            self._known.update(key.partition(".")[0]
                               for key in await list_keys(js, self.bucket))
        tasks = [loop.create_task(self._heartbeat()), loop.create_task(self._sweep()),
                 loop.create_task(self._watch_nodes())]
        log.info("cluster: wills bucket %r open", self.bucket)
        try:
            await self._write()
        finally:
            for task in tasks:
                task.cancel()

    async def _write(self) -> None:
        kv = self.kv
        assert kv is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            key, value = self._queue.popleft()
            try:
                if value is None:
                    await kv.purge(key)
                else:
                    await kv.put(key, value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster: will %r not %s: %s", key,
                            "removed" if value is None else "stored", exc)

    async def _heartbeat(self) -> None:
        nodes = self.nodes
        assert nodes is not None
        while True:
            status_of = self.status_of
            with contextlib.suppress(Exception):
                await nodes.put(self.token, b"" if status_of is None else status_of())
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _watch_nodes(self) -> None:
        nodes = self.nodes
        assert nodes is not None
        watcher = await nodes.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                if entry.value:
                    self.figures[entry.key] = (time.monotonic(), entry.value)
                if entry.key != self.token:
                    self._known.add(entry.key)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def forget(self, token: str) -> None:
        """The process ``token`` is forgotten (silent for long: node.py
        ``_forget_processes``): its last figures go (one entry per process ever heard
        otherwise). A heartbeat of it brings them back."""
        self.figures.pop(token, None)

    async def alive(self, token: str) -> bool:
        """Whether the process ``token`` has a heartbeat in the nodes bucket now."""
        nodes = self.nodes
        assert nodes is not None
        try:
            await nodes.get(token)
        except KeyNotFoundError:
            return False
        return True

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self._sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster: wills sweep failed: %s", exc)

    async def _sweep_once(self) -> None:
        """The wills of known processes without a heartbeat."""
        kv, js = self.kv, self.js
        assert kv is not None and js is not None
        alive: dict[str, bool] = {}
        now = time.monotonic()
        listed: list[str] | None = None  # the bucket's keys, listed once per sweep
        for dead in [t for t in self._known if t != self.token]:
            alive[dead] = await self.alive(dead)
            if alive[dead]:
                continue
            # All keys, filtered here (nats-py 2.16's keys(filters=...) finds none, and
            # its keys() may miss some: list_keys). Only while a known process is dead,
            # and once for all the dead processes of this sweep.
            if listed is None:
                listed = await list_keys(js, self.bucket)
            keys = [k for k in listed if k.startswith(f"{dead}.")]
            if not keys:
                self._known.discard(dead)  # nothing of it left
                continue
            for key in keys:
                await self._orphan(kv, key, dead, alive, now)

    async def _orphan(self, kv: KeyValue, key: str, token: str, alive: dict[str, bool],
                      now: float) -> None:
        """One will of a dead process: publish it once it is due, if this node wins it."""
        entry = await kv.get(key)
        if entry.value is None:
            return
        will, username = decode_will(entry.value)
        client_id = decode_level(key.split(".", 2)[2].replace("=", "~"))
        first = self._due.setdefault(key, now)
        delay = will.properties.will_delay_interval or 0
        if now - first < delay:
            return  # [MQTT-3.1.3-9]: the Will Delay Interval runs first
        resumed = False
        if delay > 0:  # resumed on a live node meanwhile?
            owner = await self.ownership.owner(client_id)
            if owner is not None:
                owner_token = owner.decode().replace("/", "_")
                if owner_token != token:
                    if owner_token not in alive:
                        alive[owner_token] = await self.alive(owner_token)
                    resumed = alive[owner_token]
        self._due.pop(key, None)
        try:
            await kv.delete(key, last=entry.revision)  # exactly one node wins it
        except Exception:
            return
        if resumed:
            return  # the session went on elsewhere: no will
        self.published += 1
        log.info("cluster: publishing the will of %r (node %s is gone)", client_id, token)
        self.engine.publish_will(will, client_id, username, time.time())
        self.on_event()

    async def forget_own(self) -> None:
        """A clean stop: this node's wills go (a shutdown sends none): the keys of
        its open connections and those whose removal was not sent yet."""
        keys = set(self._keys.values())
        keys.update(key for key, _ in self._queue)
        self._queue.clear()
        self._keys.clear()
        kv = self.kv
        if kv is None or not keys:
            return
        with contextlib.suppress(Exception):
            await asyncio.gather(*(kv.purge(key) for key in keys))
