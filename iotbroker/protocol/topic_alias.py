"""Topic aliases of one connection (MQTT 5.0 §3.3.2.3.4).

Inbound (client → server): the client maps an alias to a topic by sending both; an
alias alone then stands for the topic. Aliases above our Topic Alias Maximum, or 0,
are a protocol error 0x94 [MQTT-3.3.2-9], [MQTT-3.3.2-8]; an alias never mapped is a
protocol error too (§3.3.2.3.4). Aliases are per connection and start empty
[MQTT-3.3.2-7].

Outbound (server → client): at most the client's Topic Alias Maximum aliases
[MQTT-3.3.2-11], [MQTT-3.1.2-26]; none when it sent none or 0 [MQTT-3.1.2-27]. The policy is least
recently used: a topic already aliased is sent as the alias alone; a new topic takes
a free alias or the one of the least recently used topic, and is sent with the topic.
"""

from __future__ import annotations

from collections import OrderedDict

from iotbroker.codec.enums import ReasonCode
from iotbroker.errors import ProtocolViolation

_ALIAS_INVALID = int(ReasonCode.TOPIC_ALIAS_INVALID)  # 0x94
_PROTOCOL_ERROR = int(ReasonCode.PROTOCOL_ERROR)  # 0x82


class InboundAliases:
    """Client → server alias map, bounded by our Topic Alias Maximum."""

    __slots__ = ("_topics", "maximum")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._topics: dict[int, str] = {}

    def resolve(self, topic: str, alias: int | None) -> str:
        """Return the topic a PUBLISH refers to, recording a new mapping if given."""
        if alias is None:
            return topic
        if alias == 0 or alias > self.maximum:
            raise ProtocolViolation(
                f"topic alias {alias} outside 1..{self.maximum}",
                reason_code=_ALIAS_INVALID,
                spec_ref="MQTT-3.3.2-9" if alias else "MQTT-3.3.2-8",
            )
        if topic:
            self._topics[alias] = topic
            return topic
        known = self._topics.get(alias)
        if known is None:
            raise ProtocolViolation(
                f"topic alias {alias} used before it was set (MQTT 5.0 §3.3.2.3.4)",
                reason_code=_PROTOCOL_ERROR,
            )
        return known


class OutboundAliases:
    """Server → client alias choice: least recently used topics keep their aliases."""

    __slots__ = ("_by_topic", "maximum")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._by_topic: OrderedDict[str, int] = OrderedDict()

    def choose(self, topic: str) -> tuple[int, bool]:
        """Alias for ``topic`` and whether the topic must be sent with it (a new
        mapping, recorded only by :meth:`commit` once the packet is really sent: a
        PUBLISH dropped for its size must not leave the client an unknown alias
        [MQTT-3.1.2-25]). Returns ``(0, True)`` when aliases are off for this client.
        """
        if self.maximum <= 0:
            return 0, True
        by_topic = self._by_topic
        alias = by_topic.get(topic)
        if alias is not None:
            by_topic.move_to_end(topic)
            return alias, False
        if len(by_topic) < self.maximum:
            return len(by_topic) + 1, True
        return next(iter(by_topic.values())), True

    def commit(self, topic: str, alias: int) -> None:
        """Record a new mapping chosen by :meth:`choose`, evicting the least recently
        used topic when all aliases are taken."""
        by_topic = self._by_topic
        if len(by_topic) >= self.maximum:
            by_topic.popitem(last=False)
        by_topic[topic] = alias
