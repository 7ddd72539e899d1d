"""This node's interest, as it announces it to the others (docs/cluster.md, "Routing
by announced interest").

A node announces each *distinct* filter of its sessions once (never one entry per MQTT
subscription): the filter is reference-counted by the (client id, filter as
subscribed) pairs of the subscription trie, so a thousand devices on ``fleet/+/cmd``
are one announcement, and it goes when the last of them does. A shared subscription
``$share/g/f`` is announced as itself with its number of members here, so that a
sending node can give each message of the group to one node, weighted by members
(MQTT 5.0 §4.8.2).

Pure bookkeeping, no I/O: the node (:mod:`iotbroker.cluster.node`) asks
:meth:`Interest.update` after each turn what changed and announces it
(:mod:`iotbroker.cluster.remote` is the other side).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from iotbroker.core.topics import parse_shared

#: (client id, topic filter as subscribed, with any $share/{group}/ prefix)
Pair = tuple[str, str]


def announced_filter(topic_filter: str) -> tuple[str, bool]:
    """(what is announced for a filter as subscribed, is it shared): the plain filter,
    or ``$share/{group}/{filter}`` as it is."""
    group, plain = parse_shared(topic_filter)
    if group is None:
        return plain, False
    return topic_filter, True


class Interest:
    """Announced filters → the pairs that hold them."""

    __slots__ = ("refs",)

    def __init__(self) -> None:
        self.refs: dict[str, set[Pair]] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def __contains__(self, topic_filter: object) -> bool:
        return topic_filter in self.refs

    def count(self, announced: str) -> int:
        """What is announced for ``announced``: 0 (nothing), 1 for a plain filter
        held here, the number of members here for a shared one."""
        holders = self.refs.get(announced)
        if not holders:
            return 0
        return len(holders) if announced.startswith("$share/") else 1

    def items(self) -> list[tuple[str, int]]:
        """Everything announced (a re-announcement after a NATS outage)."""
        return [(f, self.count(f)) for f in self.refs]

    def update(self, touched: Iterable[Pair],
               present: Callable[[Pair], bool]) -> list[tuple[str, int]]:
        """Pairs that may have been added or removed this turn; ``present`` says
        whether a pair is in the trie now. Returns the announcements that changed,
        each filter once: (announced filter, count), count 0 = no longer."""
        refs = self.refs
        before: dict[str, int] = {}
        for pair in touched:
            key = announced_filter(pair[1])[0]
            if key not in before:
                before[key] = self.count(key)
            holders = refs.get(key)
            if present(pair):
                if holders is None:
                    refs[key] = {pair}
                else:
                    holders.add(pair)
            elif holders is not None and pair in holders:
                holders.discard(pair)
                if not holders:
                    del refs[key]
        changes = []
        for key, was in before.items():
            now = self.count(key)
            if now != was:
                changes.append((key, now))
        return changes

    def reconcile(self, present: Callable[[Pair], bool]) -> list[tuple[str, int]]:
        """Drop pairs no longer in the trie (sessions that expired or were replaced
        by a clean start, which the engine does not report); returns the changed
        announcements."""
        gone = [pair for holders in self.refs.values() for pair in holders
                if not present(pair)]
        return self.update(gone, present)
