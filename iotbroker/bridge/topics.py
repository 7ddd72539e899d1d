"""Topic rules of a bridge: mosquitto's ``topic`` line and its prefix semantics.

``topic PATTERN DIRECTION QOS LOCAL_PREFIX REMOTE_PREFIX`` (mosquitto.conf(5)):

* the broker subscribes to ``LOCAL_PREFIX + PATTERN`` locally (``out``) and to
  ``REMOTE_PREFIX + PATTERN`` on the remote (``in``);
* a topic crossing the bridge loses the prefix of the side it comes from, when it
  starts with it, and gains the prefix of the side it goes to (mosquitto strips "if
  present", then prepends: ``a`` matched by ``a/#`` with prefixes ``a/`` and ``b/``
  becomes ``b/a``);
* an empty pattern names exactly one topic: ``LOCAL_PREFIX`` locally and
  ``REMOTE_PREFIX`` remotely (``topic "" out 0 local/t remote/t``);
* the first rule of the bridge whose filter matches a topic maps it.
"""

from __future__ import annotations

from dataclasses import dataclass

from iotbroker.config import BridgeTopicConfig
from iotbroker.core.topics import filter_matches


@dataclass(frozen=True, slots=True)
class Rule:
    """One topic rule with its two filters computed once."""

    qos: int
    out: bool
    inbound: bool
    local_prefix: str
    remote_prefix: str
    local_filter: str
    remote_filter: str

    @classmethod
    def from_config(cls, rule: BridgeTopicConfig) -> Rule:
        return cls(
            qos=rule.qos,
            out=rule.direction in ("out", "both"),
            inbound=rule.direction in ("in", "both"),
            local_prefix=rule.local_prefix,
            remote_prefix=rule.remote_prefix,
            local_filter=rule.local_prefix + rule.pattern,
            remote_filter=rule.remote_prefix + rule.pattern,
        )

    def to_remote(self, topic: str) -> str:
        return _swap(topic, self.local_prefix, self.remote_prefix)

    def to_local(self, topic: str) -> str:
        return _swap(topic, self.remote_prefix, self.local_prefix)


def _swap(topic: str, strip: str, add: str) -> str:
    if strip and topic.startswith(strip):
        topic = topic[len(strip):]
    return add + topic


def map_out(rules: tuple[Rule, ...], topic: str) -> str | None:
    """The remote topic of a local message (first ``out`` rule that matches)."""
    for rule in rules:
        if rule.out and filter_matches(rule.local_filter, topic):
            return rule.to_remote(topic)
    return None


def map_in(rules: tuple[Rule, ...], topic: str) -> str | None:
    """The local topic of a remote message (first ``in`` rule that matches)."""
    for rule in rules:
        if rule.inbound and filter_matches(rule.remote_filter, topic):
            return rule.to_local(topic)
    return None
