"""What the other nodes want: their announced interest, indexed for matching
(docs/cluster.md, "Routing by announced interest").

Each node puts its distinct filters into the replicated KV bucket
``<prefix>_interest`` (:mod:`iotbroker.cluster.interest` decides what), one key per
filter: ``<process token>.<digest of the filter>``, value ``version | count: u32 |
filter``. Every node watches the bucket into a :class:`RemoteInterest`: the core's
:class:`~iotbroker.core.subscriptions.SubscriptionTrie` whose "clients" are node
processes, so a sending node finds the nodes a topic must reach with the same
matching rules as its own clients' (MQTT 5.0 §4.7: ``+``, ``#`` matching its parent,
``$`` topics [MQTT-4.7.2-1]), and, per shared group, the nodes with members and how
many (MQTT 5.0 §4.8.2).

A node is in the trie while it shows signs of life (a heartbeat in the nodes bucket,
or an announcement) within ``ttl`` seconds; one silent longer is taken out (its
entries kept, put back when it is heard again); one silent for ``forget`` seconds is
forgotten and its keys are deleted from the bucket by whoever notices.

Pure bookkeeping, no I/O (:mod:`iotbroker.cluster.node` does the watching).
"""

from __future__ import annotations

import hashlib
import struct

from iotbroker.core.subscriptions import Matches, SubscriptionTrie
from iotbroker.core.topics import parse_shared
from iotbroker.subscription import SubscriptionEntry

_VALUE = struct.Struct(">BI")
VERSION = 1

#: (share group, filter without the $share prefix)
GroupKey = tuple[str, str]


def interest_key(token: str, announced: str) -> str:
    """The KV key of one announced filter of the process ``token`` (a digest: KV keys
    are a narrow alphabet and a filter may be long)."""
    digest = hashlib.blake2b(announced.encode(), digest_size=12).hexdigest()
    return f"{token}.{digest}"


def encode_value(announced: str, count: int) -> bytes:
    return _VALUE.pack(VERSION, count) + announced.encode()


def decode_value(data: bytes) -> tuple[str, int]:
    version, count = _VALUE.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"interest entry version {version}")
    return data[_VALUE.size:].decode(), count


class RemoteInterest:
    """The other node processes' announced filters, matched like subscriptions."""

    __slots__ = ("_entries", "active", "groups", "own", "seen", "trie")

    def __init__(self, own_token: str) -> None:
        self.own = own_token
        #: token -> key -> (announced filter, count, trie entry)
        self._entries: dict[str, dict[str, tuple[str, int, SubscriptionEntry]]] = {}
        #: tokens whose entries are in the trie (alive)
        self.active: set[str] = set()
        #: token -> when it was last heard of (monotonic seconds)
        self.seen: dict[str, float] = {}
        self.trie = SubscriptionTrie()
        #: (group, filter) -> token -> members there (active tokens only)
        self.groups: dict[GroupKey, dict[str, int]] = {}

    def __len__(self) -> int:
        """Announced filters indexed (all processes, active or not)."""
        return sum(len(e) for e in self._entries.values())

    def filters(self, token: str) -> dict[str, int]:
        """What ``token`` announced: filter -> count."""
        return {f: c for f, c, _ in self._entries.get(token, {}).values()}

    # ------------------------------------------------------------ changes
    def heard(self, token: str, now: float) -> None:
        """A sign of life of ``token`` (a heartbeat)."""
        if token != self.own:
            last = self.seen.get(token)
            if last is None or now > last:
                self.seen[token] = now

    def put(self, key: str, value: bytes, now: float) -> None:
        token = key.partition(".")[0]
        if token == self.own:
            return
        announced, count = decode_value(value)
        group, plain = parse_shared(announced)
        entry = SubscriptionEntry(client_id=token, topic_filter=announced, qos=0,
                                  share_group=group)
        entries = self._entries.setdefault(token, {})
        old = entries.get(key)
        entries[key] = (announced, count, entry)
        self.heard(token, now)
        if token not in self.active:
            self._activate(token)  # puts everything of it in, this one included
            return
        self.trie.add(entry, None if old is None else old[2])
        if group is not None:
            self.groups.setdefault((group, plain), {})[token] = count

    def delete(self, key: str) -> None:
        token = key.partition(".")[0]
        entries = self._entries.get(token)
        if entries is None:
            return
        old = entries.pop(key, None)
        if old is None:
            return
        if not entries:
            del self._entries[token]
        if token in self.active:
            self._unindex(token, old[2])
            if token not in self._entries:
                self.active.discard(token)

    def _unindex(self, token: str, entry: SubscriptionEntry) -> None:
        self.trie.remove(entry)
        if entry.share_group is not None:
            key = (entry.share_group, entry.match_filter)
            members = self.groups.get(key)
            if members is not None:
                members.pop(token, None)
                if not members:
                    del self.groups[key]

    def _activate(self, token: str) -> None:
        self.active.add(token)
        for _, count, entry in self._entries.get(token, {}).values():
            self.trie.add(entry)
            if entry.share_group is not None:
                self.groups.setdefault((entry.share_group, entry.match_filter),
                                       {})[token] = count

    def _deactivate(self, token: str) -> None:
        self.active.discard(token)
        for _, _, entry in self._entries.get(token, {}).values():
            self._unindex(token, entry)

    def sweep(self, now: float, ttl: float, forget: float) -> tuple[list[str], list[str]]:
        """Take out processes silent for ``ttl`` seconds, put back those heard again;
        returns (tokens whose state changed, the keys of processes silent for
        ``forget`` seconds, which are forgotten here: the caller deletes them from
        the bucket)."""
        gone: list[str] = []
        changed: list[str] = []
        for token in list(self._entries):
            quiet = now - self.seen.get(token, now)
            if quiet > forget:
                if token in self.active:
                    self._deactivate(token)
                gone.extend(self._entries.pop(token))
                self.seen.pop(token, None)
                changed.append(token)
            elif quiet > ttl:
                if token in self.active:
                    self._deactivate(token)
                    changed.append(token)
            elif token not in self.active:
                self._activate(token)
                changed.append(token)
        return changed, gone

    # ------------------------------------------------------------ queries
    def match(self, topic: str) -> Matches:
        """The live node processes a message on ``topic`` must reach: ``direct`` maps
        each to its matching plain filters; ``shared`` lists (group, filter, one entry
        per process with members). Cached per topic: do not mutate."""
        return self.trie.match(topic)

    def members(self, key: GroupKey) -> dict[str, int] | None:
        """Live processes with members of a shared group, and how many each."""
        return self.groups.get(key)
