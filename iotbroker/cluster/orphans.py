"""Session records whose owner died (docs/cluster.md, "Sessions move", "Expiry").

A persistent session's record (:mod:`iotbroker.cluster.sessions`) is deleted by the
process that owns it when the session expires there [MQTT-3.1.2-23]. When that
process itself died (kill -9, power loss) and the client never came back, nobody did:
the record stayed in the bucket. So one live process sweeps them — the one whose token
sorts first among the processes with a fresh heartbeat (:mod:`iotbroker.cluster.wills`),
so that the work is not repeated on every node:

* when it takes the role, and whenever a process's heartbeat goes (for
  :data:`~iotbroker.cluster.wills.NODE_TTL`), it reads the records once and notes those
  owned by a process without a heartbeat, with the time they expire: the disconnect
  time + the expiry interval, or — a record written while the client was connected —
  the time the owner was first found dead + the expiry interval (the connection ended
  with the process; a later start of that time only delays the sweep);
* when that time comes it checks once more that the owner is gone, then deletes the
  record with a compare-and-set on the revision it read: a client that resumed the
  session elsewhere meanwhile changed the record, which is then kept.

Sessions that never expire (MQTT 3.1.1 with ``persistent_session_expiry_v311`` unset)
are not noted. Reading every record costs one KV get each, only on a death or a change
of sweeper, and memory for the noted records only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from iotbroker.cluster.buckets import list_keys
from iotbroker.cluster.ownership import key_client
from iotbroker.cluster.sessions import Record
from iotbroker.cluster.wills import NODE_TTL
from iotbroker.message import NEVER_EXPIRES

if TYPE_CHECKING:
    from iotbroker.cluster.sessions import Sessions
    from iotbroker.cluster.wills import Wills

log = logging.getLogger("iotbroker.cluster")

#: Seconds between two looks at the heartbeats and the noted records.
CHECK_SECONDS = 1.0
#: Records read at once during a scan.
BATCH = 256


def owner_token(owner: bytes) -> str:
    """A sender id (a record's owner, a batch's sender) as its process token: its
    heartbeat key (wills.py) and the last part of its ``<prefix>.node.`` subject."""
    return owner.decode(errors="replace").replace("/", "_")


class OrphanSweep:
    """Deletes the records of expired sessions whose owner died (module docstring)."""

    def __init__(self, sessions: Sessions, wills: Wills) -> None:
        self.sessions = sessions
        self.wills = wills
        self.token = wills.token
        self.started = time.monotonic()
        #: record key -> (when it expires, wall clock; its revision; its owner's token)
        self.noted: dict[str, tuple[float, int, str]] = {}
        #: owner token -> when it was first found without a heartbeat (wall clock)
        self.dead_since: dict[str, float] = {}
        self._live_before: set[str] = set()
        self._sweeping = False
        self.swept = 0

    def live(self) -> set[str]:
        """Process tokens with a heartbeat younger than NODE_TTL (this one's too)."""
        now = time.monotonic()
        return {t for t, (seen, _) in list(self.wills.figures.items())
                if now - seen <= NODE_TTL}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster: sweep of dead nodes' session records failed: %s", exc)

    async def check(self) -> None:
        kv = self.sessions.kv
        if kv is None or time.monotonic() - self.started < 2 * NODE_TTL:
            return  # every live process's heartbeat has been seen first
        live = self.live()
        gone = self._live_before - live
        self._live_before = live
        if not live or min(live) != self.token:
            self._sweeping = False  # another process sweeps
            self.noted.clear()
            self.dead_since.clear()
            return
        for token in live:
            self.dead_since.pop(token, None)
        if gone or not self._sweeping:
            self._sweeping = True
            await self.scan(kv, live)
        await self.expire(kv)

    async def scan(self, kv: KeyValue, live: set[str]) -> None:
        """Note the records whose owner has no heartbeat, with when they expire."""
        js = self.sessions.js
        assert js is not None  # set with kv
        keys = await list_keys(js, self.sessions.bucket)  # not kv.keys(): racy
        now = time.time()

        async def one(key: str) -> None:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                return
            if not entry.value:
                return
            record = Record.decode(key_client(key), entry.value)
            owner = owner_token(record.owner)
            if owner in live:
                return
            session = record.session
            if session.expiry_interval == NEVER_EXPIRES:
                return
            since = session.disconnected_at
            if since is None:  # connected when its owner died
                since = self.dead_since.setdefault(owner, now)
            self.noted[key] = (since + session.expiry_interval, entry.revision or 0, owner)

        for start in range(0, len(keys), BATCH):
            await asyncio.gather(*(one(k) for k in keys[start:start + BATCH]
                                   if k.startswith("c.")), return_exceptions=True)
        if self.noted:
            log.info("cluster: %d session records of dead processes noted for expiry",
                     len(self.noted))

    async def expire(self, kv: KeyValue) -> None:
        """Delete the noted records whose time came (their owner still gone)."""
        now = time.time()
        due = [(k, v) for k, v in self.noted.items() if v[0] <= now]
        alive: dict[str, bool] = {}
        for key, (_, revision, owner) in due:
            del self.noted[key]
            if owner not in alive:
                alive[owner] = await self.wills.alive(owner)
            if alive[owner]:
                continue
            try:
                await kv.delete(key, last=revision)
            except asyncio.CancelledError:
                raise
            except Exception:
                continue  # changed since (resumed elsewhere): kept
            self.swept += 1
            log.info("cluster: session record of %r deleted: expired after its node %s "
                     "died [MQTT-3.1.2-23]", key_client(key), owner)
