"""How messages travel between nodes on core NATS (docs/cluster.md, "On the wire").

The NATS subject is the MQTT topic (:mod:`iotbroker.cluster.subjects`). The messages
one turn accepted on one topic travel together, as one NATS message::

    0x01 | seq: u64 big-endian | len: u8 | sender: len bytes
         | count: u16 | (size: u32 | message record) * count

``sender`` names the sending process (node name and a start-up nonce) and ``seq``
counts its NATS messages: a node whose MQTT filters overlap (``a/#`` and ``a/b``)
holds two NATS subscriptions that both match ``a/b`` and gets the NATS message twice;
the pair (sender, seq) lets it route the messages once (:class:`Dedup`). A message
record is the store's versioned RETAINED record
(:func:`iotbroker.storage.records.encode_retained`: QoS, retain, created/expiry times,
origin client id, MQTT 5.0 properties, payload), one encoding with golden bytes for
disk and wire. Batching per topic and turn is what makes a fan-in of one busy topic
cheap: NATS's per-message cost (parsing in nats-py, one callback) is paid once per
batch (benchmarks/cluster_routing.py).
"""

from __future__ import annotations

import struct
from collections import deque

from iotbroker.message import Message
from iotbroker.storage.records import decode_retained, encode_retained

VERSION = 1
#: Records in one NATS message at most (and about this many bytes, below).
MAX_BATCH = 1000
MAX_BATCH_BYTES = 256 * 1024
_HEAD = struct.Struct(">BQB")
_COUNT = struct.Struct(">H")
_SIZE = struct.Struct(">I")


def encode(sender: bytes, seq: int, records: list[bytes]) -> bytes:
    """One NATS payload; ``records`` are :func:`record` bytes of one topic."""
    parts = [_HEAD.pack(VERSION, seq, len(sender)), sender, _COUNT.pack(len(records))]
    for rec in records:
        parts.append(_SIZE.pack(len(rec)))
        parts.append(rec)
    return b"".join(parts)


def record(message: Message) -> bytes:
    return encode_retained(message)


def decode(topic: str, data: bytes) -> tuple[bytes, int, list[Message]]:
    """(sender, seq, messages); ValueError (or CorruptData) for what we did not write."""
    if len(data) < _HEAD.size:
        raise ValueError("cluster message too short")
    version, seq, n = _HEAD.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"cluster message version {version}")
    pos = _HEAD.size
    sender = data[pos : pos + n]
    pos += n
    (count,) = _COUNT.unpack_from(data, pos)
    pos += _COUNT.size
    key = topic.encode()
    messages = []
    for _ in range(count):
        (size,) = _SIZE.unpack_from(data, pos)
        pos += _SIZE.size
        end = pos + size
        if end > len(data):
            raise ValueError("cluster message truncated")
        messages.append(decode_retained(key, data[pos:end]))
        pos = end
    if pos != len(data):
        raise ValueError("cluster message has trailing bytes")
    return sender, seq, messages


class Dedup:
    """Recently seen (sender, seq) pairs, ``window`` per sender: a set for the
    question, a deque for the order they leave in (O(1) each; a dict emptied from its
    front would slow down as its deleted slots pile up)."""

    __slots__ = ("_seen", "window")

    def __init__(self, window: int = 65_536) -> None:
        self.window = window
        self._seen: dict[bytes, tuple[set[int], deque[int]]] = {}

    def first(self, sender: bytes, seq: int) -> bool:
        """True the first time (sender, seq) is seen within the window."""
        seen = self._seen.get(sender)
        if seen is None:
            seen = self._seen[sender] = (set(), deque())
        members, order = seen
        if seq in members:
            return False
        members.add(seq)
        order.append(seq)
        if len(order) > self.window:
            members.discard(order.popleft())
        return True
