"""One client's subscription to one Topic Filter: the type the core matches and the
store keeps.

This module sits below both ``core/`` and ``storage/`` (it imports nothing of ours):
the subscription trie (``core/subscriptions.py``) holds these objects, a session
remembers them, and ``storage/`` persists them as they are, so nothing converts one
kind of subscription into another on the way to the disk and back.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SHARE_PREFIX", "SubscriptionEntry"]

#: Prefix of a shared subscription's Topic Filter (MQTT 5.0 §4.8.2).
SHARE_PREFIX = "$share/"


@dataclass(slots=True, frozen=True)
class SubscriptionEntry:
    """One client's subscription to one Topic Filter (MQTT 5.0 §3.8.3.1 options),
    keyed by ``(client_id, topic_filter)``.

    ``topic_filter`` is the filter as subscribed, including any ``$share/{group}/``
    prefix (MQTT 5.0 §4.8.2). ``share_group`` is how the core reads it: that group, or
    ``None`` for an ordinary subscription (also for a ``$share/`` filter where the
    broker does not offer shared subscriptions). It is the core's reading, not what
    the client sent, so the stores do not keep it: :meth:`Store.load
    <iotbroker.storage.base.Store.load>` returns ``share_group=None`` and the core
    reads the filter again on restore.
    """

    client_id: str
    topic_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_identifier: int | None = None
    share_group: str | None = None

    @property
    def match_filter(self) -> str:
        """The filter the trie matches: ``topic_filter`` without the share prefix."""
        if self.share_group is None:
            return self.topic_filter
        return self.topic_filter[len(SHARE_PREFIX) + len(self.share_group) + 1 :]
