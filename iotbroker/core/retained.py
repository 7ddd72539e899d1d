"""Retained messages, one per Topic Name, in a trie keyed by topic level.

Rules of this room (MQTT 3.1.1 §3.3.1.3, MQTT 5.0 §3.3.1.3 and §4.7):

* At most one retained message per topic; a new one replaces it. A retained
  PUBLISH with a zero-byte payload removes it and is never stored
  (MQTT 3.1.1 [MQTT-3.3.1-10], [MQTT-3.3.1-11]; MQTT 5.0 [MQTT-3.3.1-6],
  [MQTT-3.3.1-7]): :meth:`RetainedStore.set` applies that rule itself.
* ``match(filter)`` walks the trie along the filter, so a wildcard filter visits
  only the subtrees it can match, not every retained topic. ``+`` matches one
  level (empty ones too), ``#`` the parent level and everything below; a filter
  whose first level is a wildcard never matches a ``$`` topic [MQTT-4.7.2-1], so
  ``#`` alone does not return ``$SYS/...``.
* A message past its Message Expiry Interval is not delivered (MQTT 5.0
  §3.3.2.3.3); :meth:`RetainedStore.drop_expired` removes those, and
  :meth:`RetainedStore.match` skips them when given ``now``.

Filters are passed without any ``$share/`` prefix (retained messages are not sent
for shared subscriptions, MQTT 5.0 §4.8.2) and already validated.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from iotbroker.message import Message

__all__ = ["RetainedStore"]


def _is_empty(node: _Node) -> bool:
    """Neither a message nor children: prunable. (A function, not an inline test, so
    that no type narrowing of ``node.message`` outlives ``node`` being reassigned: the
    mypyc build checks narrowed types at run time.)"""
    return node.message is None and not node.children


class _Node:
    __slots__ = ("children", "message")

    def __init__(self) -> None:
        self.children: dict[str, _Node] | None = None
        self.message: Message | None = None


class RetainedStore:
    """The broker's retained messages.

    Holds :class:`~iotbroker.message.Message` objects by reference (they are
    immutable and shared with queues).
    """

    __slots__ = ("_by_topic", "_expiry_heap", "_root")

    def __init__(self) -> None:
        self._root = _Node()
        self._by_topic: dict[str, Message] = {}
        # (expires_at, topic); stale entries are skipped lazily.
        self._expiry_heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._by_topic)

    def __contains__(self, topic: object) -> bool:
        return topic in self._by_topic

    def get(self, topic: str) -> Message | None:
        """The retained message on exactly ``topic``, if any."""
        return self._by_topic.get(topic)

    def all(self) -> Iterator[Message]:
        """Every retained message (for persistence and ``$SYS``), in insertion order."""
        return iter(list(self._by_topic.values()))

    def set(self, message: Message) -> None:
        """Retain ``message`` on ``message.topic``, replacing any previous one.

        A zero-byte payload deletes instead (MQTT 5.0 [MQTT-3.3.1-6]/[MQTT-3.3.1-7],
        MQTT 3.1.1 [MQTT-3.3.1-10]/[MQTT-3.3.1-11]).
        """
        topic = message.topic
        if not message.payload:
            self.delete(topic)
            return
        if topic in self._by_topic:
            self._leaf(topic).message = message
        else:
            node = self._root
            for level in topic.split("/"):
                children = node.children
                if children is None:
                    children = node.children = {}
                nxt = children.get(level)
                if nxt is None:
                    nxt = children[level] = _Node()
                node = nxt
            node.message = message
        self._by_topic[topic] = message
        if message.expires_at is not None:
            heapq.heappush(self._expiry_heap, (message.expires_at, topic))
            self._maybe_compact_heap()

    def delete(self, topic: str) -> bool:
        """Remove the retained message on ``topic``; True if there was one.

        Trie nodes left with neither a message nor children are pruned.
        """
        if self._by_topic.pop(topic, None) is None:
            return False
        path: list[tuple[_Node, str]] = []
        node = self._root
        for level in topic.split("/"):
            path.append((node, level))
            assert node.children is not None
            node = node.children[level]
        node.message = None
        while path and _is_empty(node):
            parent, level = path.pop()
            assert parent.children is not None
            del parent.children[level]
            if not parent.children:
                parent.children = None
            node = parent
        return True

    def _leaf(self, topic: str) -> _Node:
        node = self._root
        for level in topic.split("/"):
            assert node.children is not None
            node = node.children[level]
        return node

    # -- matching ----------------------------------------------------------------

    def match(self, topic_filter: str, now: float | None = None) -> list[Message]:
        """Retained messages whose topic matches ``topic_filter`` (MQTT 5.0 §4.7).

        With ``now``, messages already expired at ``now`` are left out (MQTT 5.0
        §3.3.2.3.3); they stay stored until :meth:`drop_expired`.
        """
        if "+" not in topic_filter and "#" not in topic_filter:
            msg = self._by_topic.get(topic_filter)
            out = [] if msg is None else [msg]
        else:
            out = []
            self._walk(topic_filter.split("/"), out)
        if now is not None and out:
            out = [m for m in out if not m.expired(now)]
        return out

    def _walk(self, levels: list[str], out: list[Message]) -> None:
        # Iterative depth-first walk along the filter: no recursion limit on
        # filters with many levels.
        n_levels = len(levels)
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == n_levels:
                if node.message is not None:
                    out.append(node.message)
                continue
            level = levels[i]
            children = node.children
            if level == "#":
                # The parent level ("sport/#" matches "sport"), then all below it.
                if i > 0 and node.message is not None:
                    out.append(node.message)
                if children:
                    for key, child in children.items():
                        if i == 0 and key[:1] == "$":  # [MQTT-4.7.2-1]
                            continue
                        self._collect(child, out)
                continue
            if not children:
                continue
            if level == "+":
                for key, child in children.items():
                    if i == 0 and key[:1] == "$":  # [MQTT-4.7.2-1]
                        continue
                    stack.append((child, i + 1))
            else:
                found = children.get(level)
                if found is not None:
                    stack.append((found, i + 1))

    @staticmethod
    def _collect(node: _Node, out: list[Message]) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            if n.message is not None:
                out.append(n.message)
            if n.children:
                stack.extend(n.children.values())

    # -- expiry ------------------------------------------------------------------

    def drop_expired(self, now: float) -> list[str]:
        """Delete retained messages whose Message Expiry Interval has passed at
        ``now`` (MQTT 5.0 §3.3.2.3.3); returns their topics."""
        heap = self._expiry_heap
        dropped: list[str] = []
        while heap and heap[0][0] <= now:
            expires_at, topic = heapq.heappop(heap)
            msg = self._by_topic.get(topic)
            if msg is not None and msg.expires_at == expires_at and msg.expired(now):
                self.delete(topic)
                dropped.append(topic)
        return dropped

    def next_expiry(self) -> float | None:
        """The earliest ``expires_at`` among retained messages, or ``None``
        (for the server's single deadline timer)."""
        heap = self._expiry_heap
        while heap:
            expires_at, topic = heap[0]
            msg = self._by_topic.get(topic)
            if msg is not None and msg.expires_at == expires_at:
                return expires_at
            heapq.heappop(heap)
        return None

    def _maybe_compact_heap(self) -> None:
        # Replacing a message leaves its old heap entry behind; rebuild the heap
        # when stale entries outnumber live ones so it stays O(retained).
        heap = self._expiry_heap
        if len(heap) > 64 and len(heap) > 2 * len(self._by_topic):
            live = [
                (m.expires_at, t) for t, m in self._by_topic.items() if m.expires_at is not None
            ]
            heapq.heapify(live)
            self._expiry_heap = live
