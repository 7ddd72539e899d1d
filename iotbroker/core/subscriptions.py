"""The subscription trie: which subscriptions match a topic name.

Rules of this room (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7 and §4.8.2):

* One node per filter level; ``+`` and ``#`` are child slots of their own, literal
  levels are dict children. Empty levels are real levels (``a//b``, ``/a``).
* ``+`` matches exactly one level, empty included; ``#`` matches its parent level
  and everything below (``sport/#`` matches ``sport``) — MQTT 5.0 §4.7.1.2 and
  §4.7.1.3 (MQTT 3.1.1 §4.7.1.2, §4.7.1.3).
* A filter whose first level is ``+`` or ``#`` never matches a topic whose name
  starts with ``$`` [MQTT-4.7.2-1].
* A client has at most one subscription per Topic Filter as subscribed (for a
  shared subscription that includes the ShareName): subscribing again replaces it
  [MQTT-3.8.4-3].
* Topics are matched exactly, never normalised [MQTT-4.7.3-4].

The trie does not validate filters: callers pass filters already checked by
:func:`iotbroker.core.topics.validate_subscription_filter`.

``match()`` results are cached per topic in a bounded two-generation cache and
shared between callers: **a returned** :class:`Matches` **must not be mutated**.
Adding or removing a literal (wildcard-free) filter drops only that topic's cache
entry; a wildcard filter clears the cache. :attr:`SubscriptionTrie.version` counts the
changes, so that a caller keeping results of its own (per topic, per name id) sees in
O(1) that they may be stale.
"""

from __future__ import annotations

from typing import Final

from iotbroker.subscription import SHARE_PREFIX, SubscriptionEntry

__all__ = ["EMPTY_MATCHES", "Matches", "SharedMatch", "SubscriptionEntry", "SubscriptionTrie"]


#: ``(share_group, filter without the $share prefix, members)``
SharedMatch = tuple[str, str, list[SubscriptionEntry]]


class Matches:
    """Subscriptions matching one topic. Never mutate it, nor its dicts and lists:
    the cache hands the same object to every caller, and the lists may be shared
    with other topics' results.

    ``direct`` maps each client id to its matching non-shared subscriptions (one
    client may have several overlapping ones; the router merges them
    [MQTT-3.3.5-1]). ``shared`` lists ``(share_group, filter, members)`` once per
    matching shared subscription group and filter; the router picks one member
    (MQTT 5.0 §4.8.2).
    """

    __slots__ = ("direct", "shared")

    def __init__(
        self,
        direct: dict[str, list[SubscriptionEntry]],
        shared: list[SharedMatch],
    ) -> None:
        self.direct = direct
        self.shared = shared

    def __bool__(self) -> bool:
        """True if at least one subscription matched."""
        return bool(self.direct) or bool(self.shared)

    def __repr__(self) -> str:
        return f"Matches(direct={self.direct!r}, shared={self.shared!r})"


_NO_DIRECT: Final[dict[str, list[SubscriptionEntry]]] = {}
_NO_SHARED: Final[list[SharedMatch]] = []

#: The result for a topic nobody subscribes to. Never mutate it.
EMPTY_MATCHES: Final = Matches(_NO_DIRECT, _NO_SHARED)

#: Shared empty mapping for nodes without children or subscribers; a node swaps in
#: its own dict before the first insert, so this one is never written.
_EMPTY: Final[dict[str, object]] = {}


class _Node:
    __slots__ = ("children", "dview", "hash", "plus", "shared", "subs", "sview")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = _EMPTY  # type: ignore[assignment]
        self.plus: _Node | None = None
        self.hash: _Node | None = None
        # client id -> entry, for non-shared subscriptions ending at this node
        self.subs: dict[str, SubscriptionEntry] = _EMPTY  # type: ignore[assignment]
        # share group -> client id -> entry
        self.shared: dict[str, dict[str, SubscriptionEntry]] = _EMPTY  # type: ignore[assignment]
        # This node's ready-made parts of a Matches, built on first match and
        # dropped (never mutated) when ``subs`` / ``shared`` change.
        self.dview: dict[str, list[SubscriptionEntry]] | None = None
        self.sview: list[SharedMatch] | None = None

    def child(self, level: str) -> _Node | None:
        """The node under this one for one filter level (``+``, ``#`` or a name)."""
        if level == "+":
            return self.plus
        if level == "#":
            return self.hash
        return self.children.get(level)

    def is_empty(self) -> bool:
        return (
            not self.children
            and self.plus is None
            and self.hash is None
            and not self.subs
            and not self.shared
        )


class SubscriptionTrie:
    """All subscriptions of the broker, indexed for ``match(topic)``.

    ``cache_size`` bounds the match cache: when the young generation reaches it,
    it becomes the old generation (the previous old one is dropped); a hit in the
    old generation is promoted. So at most ``2 * cache_size`` topics are cached and
    recently used topics survive.
    """

    __slots__ = ("_cache", "_cache_size", "_count", "_old", "_root", "version")

    def __init__(self, cache_size: int = 100_000) -> None:
        self._root = _Node()
        #: Counts every change (add, remove, cache cleared): a result of :meth:`match`
        #: kept by a caller with the version it was taken at is current while the
        #: version is the same (the cluster's routes per topic, wire.py).
        self.version = 0
        self._count = 0
        self._cache: dict[str, Matches] = {}
        self._old: dict[str, Matches] = {}
        self._cache_size = max(1, cache_size)

    # -- changes ---------------------------------------------------------------

    def add(self, entry: SubscriptionEntry, replaced: SubscriptionEntry | None = None) -> None:
        """Add a subscription, or replace ``replaced``: the subscription the same
        client had on the same Topic Filter as subscribed (for a shared one, same
        ShareName too) [MQTT-3.8.4-3]. The caller knows it from the session's own
        index (:attr:`Session.subscriptions <iotbroker.core.session.Session>`, the
        only per-client index of subscriptions); the trie indexes by filter only.
        """
        group = entry.share_group
        if group is not None and not entry.topic_filter.startswith(f"{SHARE_PREFIX}{group}/"):
            raise ValueError(
                f"share_group {group!r} does not match topic_filter {entry.topic_filter!r}"
            )
        if replaced is not None and replaced.share_group != group:
            # Same string, other reading ("$share/g/x" plain vs shared): a
            # different trie node, so take the old one out first.
            self._unlink(replaced)
            self._invalidate(replaced.match_filter)

        match_filter = entry.match_filter
        node = self._root
        for level in match_filter.split("/"):
            if level == "+":
                nxt = node.plus
                if nxt is None:
                    nxt = node.plus = _Node()
            elif level == "#":
                nxt = node.hash
                if nxt is None:
                    nxt = node.hash = _Node()
            else:
                if node.children is _EMPTY:
                    node.children = {}
                nxt = node.children.get(level)
                if nxt is None:
                    nxt = node.children[level] = _Node()
            node = nxt
        if group is None:
            if node.subs is _EMPTY:
                node.subs = {}
            node.subs[entry.client_id] = entry
            node.dview = None
        else:
            if node.shared is _EMPTY:
                node.shared = {}
            members = node.shared.get(group)
            if members is None:
                members = node.shared[group] = {}
            members[entry.client_id] = entry
            node.sview = None
        if replaced is None:
            self._count += 1
        self._invalidate(match_filter)

    def held_filter(self, topic_filter: str) -> str:
        """The string object a subscription in the trie already holds for the
        non-shared Topic Filter ``topic_filter`` (equal to it), else ``topic_filter``
        itself: the subscriptions of a fleet to one filter share one string, not one
        copy per client (issue 19: memory of an offline session)."""
        node = self._root
        for level in topic_filter.split("/"):
            nxt = node.child(level)
            if nxt is None:
                return topic_filter
            node = nxt
        for entry in node.subs.values():
            return entry.topic_filter
        return topic_filter

    def remove(self, entry: SubscriptionEntry) -> None:
        """Remove one subscription, as the session's index holds it (MQTT 5.0
        §3.10.4)."""
        self._unlink(entry)
        self._count -= 1
        self._invalidate(entry.match_filter)

    def _unlink(self, entry: SubscriptionEntry) -> None:
        """Take ``entry`` out of its node and prune nodes left empty."""
        path: list[tuple[_Node, str]] = []
        node = self._root
        for level in entry.match_filter.split("/"):
            path.append((node, level))
            nxt = node.child(level)
            if nxt is None:  # pragma: no cover - the index and the trie disagree
                return
            node = nxt
        if entry.share_group is None:
            node.subs.pop(entry.client_id, None)
            node.dview = None
            if not node.subs:
                node.subs = _EMPTY  # type: ignore[assignment]
        else:
            members = node.shared.get(entry.share_group)
            if members is not None:
                members.pop(entry.client_id, None)
                node.sview = None
                if not members:
                    del node.shared[entry.share_group]
                    if not node.shared:
                        node.shared = _EMPTY  # type: ignore[assignment]
        # Prune from the leaf upwards while nodes are empty.
        while path and node.is_empty():
            parent, level = path.pop()
            if level == "+":
                parent.plus = None
            elif level == "#":
                parent.hash = None
            else:
                del parent.children[level]
                if not parent.children:
                    parent.children = _EMPTY  # type: ignore[assignment]
            node = parent

    def _invalidate(self, match_filter: str) -> None:
        self.version += 1
        if "+" in match_filter or "#" in match_filter:
            if self._cache:
                self._cache = {}
            if self._old:
                self._old = {}
        else:
            # A literal filter matches only the topic with exactly its name.
            self._cache.pop(match_filter, None)
            self._old.pop(match_filter, None)

    def clear_cache(self) -> None:
        """Drop every cached match result."""
        self.version += 1
        self._cache = {}
        self._old = {}

    # -- queries -----------------------------------------------------------------

    def __len__(self) -> int:
        """Number of subscriptions (client, filter as subscribed)."""
        return self._count

    def match(self, topic: str) -> Matches:
        """Subscriptions matching the Topic Name ``topic`` (MQTT 5.0 §4.7).

        The result is cached and shared: do not mutate it.
        """
        m = self._cache.get(topic)
        if m is not None:
            return m
        m = self._old.get(topic)
        if m is None:
            m = self._match(topic)
        cache = self._cache
        if len(cache) >= self._cache_size:
            self._old = cache
            cache = self._cache = {}
        cache[topic] = m
        return m

    def match_uncached(self, topic: str) -> Matches:
        """Like :meth:`match` but always walks the trie and caches nothing: the tests
        compare it with cached results, ``benchmarks/routing_bench.py`` measures it."""
        return self._match(topic)

    def _match(self, topic: str) -> Matches:
        levels = topic.split("/")
        n = len(levels)
        hits: list[_Node] = []
        # Depth-first along the literal child; '+' branches wait on a stack.
        # ``node`` has consumed ``i`` levels of the topic.
        stack: list[tuple[_Node, int]] = []
        node: _Node | None = self._root
        i = 0
        if topic[:1] == "$":
            # [MQTT-4.7.2-1] a '+' or '#' first level never matches a '$' topic:
            # skip the root's wildcard slots.
            node = self._root.children.get(levels[0])
            i = 1
        while True:
            if node is not None:
                h = node.hash
                if h is not None:
                    # '#' matches the rest, or the parent level itself when the topic
                    # ends here (MQTT 5.0 §4.7.1.2: "sport/#" matches "sport").
                    hits.append(h)
                if i == n:
                    hits.append(node)
                else:
                    p = node.plus
                    if p is not None:
                        stack.append((p, i + 1))
                    node = node.children.get(levels[i])
                    i += 1
                    continue
            if not stack:
                break
            node, i = stack.pop()

        # A node keeps its part of a result ready (``dview``/``sview``, dropped on
        # change and never mutated): a topic whose direct subscribers all sit on one
        # node reuses it without copying. Several nodes are merged into new lists.
        direct: dict[str, list[SubscriptionEntry]] | None = None
        shared: list[SharedMatch] | None = None
        first: _Node | None = None
        for node in hits:
            if node.subs:
                if first is None:
                    first = node
                elif direct is None:
                    direct = {cid: [entry] for cid, entry in first.subs.items()}
                    self._merge(direct, node)
                else:
                    self._merge(direct, node)
            if node.shared:
                sv = node.sview
                if sv is None:
                    sv = node.sview = [
                        (group, next(iter(members.values())).match_filter, list(members.values()))
                        for group, members in node.shared.items()
                    ]
                shared = sv if shared is None else shared + sv
        if direct is None and first is not None:
            direct = first.dview
            if direct is None:
                direct = first.dview = {cid: [entry] for cid, entry in first.subs.items()}
        if direct is None:
            if shared is None:
                return EMPTY_MATCHES
            return Matches(_NO_DIRECT, shared)
        return Matches(direct, _NO_SHARED if shared is None else shared)

    @staticmethod
    def _merge(direct: dict[str, list[SubscriptionEntry]], node: _Node) -> None:
        for cid, entry in node.subs.items():
            lst = direct.get(cid)
            if lst is None:
                direct[cid] = [entry]
            else:
                lst.append(entry)
