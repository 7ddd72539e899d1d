"""Shared subscriptions across nodes: which node's members get a message (MQTT 5.0
§4.8.2: each message of a shared subscription goes to one session of the group).

The node that accepted a message picks, per matching group, exactly one node process
among those with members (itself included), by smooth weighted round-robin with each
node weighted by its number of members (docs/cluster.md, "Shared subscriptions across
nodes"): over any run of messages each node gets its share within one message, in an
even interleaving (a, b, a, b... for 1:1; a, a, b, a, a, b... for 2:1). That node then
gives it to one of its members by ``mqtt.shared_subscription_strategy``.

Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Groups whose round-robin state is kept at most (then it starts afresh).
MAX_GROUPS = 100_000


class Balancer:
    """Smooth weighted round-robin per (group, filter)."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[tuple[str, str], dict[str, int]] = {}

    def pick(self, key: tuple[str, str], candidates: Iterable[tuple[str, int]]) -> str:
        """One of ``candidates`` ((node token, members), at least one, weights >= 1)."""
        current = self._current.get(key)
        if current is None:
            if len(self._current) >= MAX_GROUPS:
                self._current.clear()
            current = {}
        state: dict[str, int] = {}
        total = 0
        best = ""
        best_value = 0
        for token, members in candidates:
            weight = max(1, members)
            value = current.get(token, 0) + weight
            state[token] = value
            total += weight
            if not best or value > best_value:
                best, best_value = token, value
        state[best] -= total
        self._current[key] = state
        return best
