"""Shared subscriptions across nodes: which node's members get a message (MQTT 5.0
§4.8.2: each message of a shared subscription goes to one session of the group).

Among the node processes with members of a group (``$share/{group}/{filter}``), one
takes each message: the one with the highest weighted rendezvous score (highest random
weight hashing) of the message and the group, weighted by its number of members
(docs/cluster.md, "Shared subscriptions across nodes"). The choice depends only on the
message (origin, creation time, topic, payload), the group and the candidates, so every
node that sees the same candidates makes the same choice: the sending node names it
on the live copy, and a node that routes a QoS 1/2 message from the QoS stream copy
alone (the live copy was lost) computes the same one instead of giving it to its own
members regardless. Over many messages each node's share is its members' share
(a node with 2 members of 3 gets ~2/3); a node leaving moves only its own share.
That node then gives the message to one of its members by
``mqtt.shared_subscription_strategy``.

Pure, no I/O.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable

from iotbroker.message import Message

_CREATED = struct.Struct(">d")
_SCALE = 1.0 / 2.0**53


def _base(message: Message, group: str, topic_filter: str) -> hashlib.blake2b:
    h = hashlib.blake2b(digest_size=8)
    h.update(message.origin.encode())
    h.update(_CREATED.pack(message.created_at))
    h.update(message.topic.encode())
    h.update(b"\x00")
    h.update(bytes(message.payload))
    h.update(b"\x00")
    h.update(group.encode())
    h.update(b"\x00")
    h.update(topic_filter.encode())
    return h


def pick(message: Message, group: str, topic_filter: str,
         candidates: Iterable[tuple[str, int]]) -> str:
    """The node process (token) among ``candidates`` ((token, members), at least one)
    whose members get ``message`` for the group."""
    base = _base(message, group, topic_filter)
    best = ""
    best_score = -1.0
    for token, members in candidates:
        h = base.copy()
        h.update(token.encode())
        u = ((int.from_bytes(h.digest(), "big") >> 11) + 0.5) * _SCALE  # in (0, 1)
        score = -max(1, members) / math.log(u)
        if score > best_score or (score == best_score and token < best):
            best, best_score = token, score
    return best
