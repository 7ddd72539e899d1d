"""Live routing by interest: which MQTT filters this node subscribes to on NATS.

One NATS subscription per *distinct* MQTT filter of this node (never one per MQTT
subscription, and never a JetStream consumer per subscription): the filter is
reference-counted by the (client id, filter as subscribed) pairs of the subscription
trie, so a thousand devices on ``fleet/+/cmd`` cost one NATS subscription, and it
goes when the last of them does. A shared subscription ``$share/g/f`` counts for its
plain filter ``f`` (MQTT 5.0 §4.8.2; balancing across nodes is not done yet, see
docs/cluster.md).

Pure bookkeeping, no I/O: the node (:mod:`iotbroker.cluster.node`) asks
:meth:`Interest.update` after each turn which filters to subscribe and unsubscribe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from iotbroker.core.topics import parse_shared

#: (client id, topic filter as subscribed, with any $share/{group}/ prefix)
Pair = tuple[str, str]


class Interest:
    """Distinct plain filters → the pairs that hold them."""

    __slots__ = ("refs",)

    def __init__(self) -> None:
        self.refs: dict[str, set[Pair]] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def __contains__(self, topic_filter: object) -> bool:
        return topic_filter in self.refs

    def update(self, touched: Iterable[Pair],
               present: Callable[[Pair], bool]) -> tuple[list[str], list[str]]:
        """Pairs that may have been added or removed this turn; ``present`` says
        whether a pair is in the trie now. Returns (filters to subscribe, filters to
        unsubscribe), each filter once."""
        added: list[str] = []
        removed: list[str] = []
        refs = self.refs
        for pair in touched:
            plain = parse_shared(pair[1])[1]
            holders = refs.get(plain)
            if present(pair):
                if holders is None:
                    refs[plain] = {pair}
                    if plain in removed:
                        removed.remove(plain)  # gone and back in one turn: keep it
                    else:
                        added.append(plain)
                else:
                    holders.add(pair)
            elif holders is not None and pair in holders:
                holders.discard(pair)
                if not holders:
                    del refs[plain]
                    if plain in added:
                        added.remove(plain)
                    else:
                        removed.append(plain)
        return added, removed

    def reconcile(self, present: Callable[[Pair], bool]) -> list[str]:
        """Drop pairs no longer in the trie (sessions that expired or were replaced
        by a clean start, which the engine does not report); returns the filters
        left without holders, to unsubscribe."""
        gone = [pair for holders in self.refs.values() for pair in holders
                if not present(pair)]
        return self.update(gone, present)[1]
