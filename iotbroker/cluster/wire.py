"""How a message travels between nodes on core NATS (docs/cluster.md, "On the wire").

The NATS subject is the MQTT topic (:mod:`iotbroker.cluster.subjects`); the payload is::

    0x01 | seq: u64 big-endian | len: u8 | sender: len bytes | message record

``sender`` names the sending process (node name and a start-up nonce) and ``seq``
counts its messages: a node whose MQTT filters overlap (``a/#`` and ``a/b``) holds two
NATS subscriptions that both match ``a/b`` and gets the message twice; the pair
(sender, seq) lets it route the message once (:class:`Dedup`). The message record is
the store's versioned RETAINED record (:func:`iotbroker.storage.records.encode_retained`:
QoS, retain, created/expiry times, origin client id, MQTT 5.0 properties, payload),
one encoding with golden bytes for disk and wire.
"""

from __future__ import annotations

import struct

from iotbroker.message import Message
from iotbroker.storage.records import decode_retained, encode_retained

VERSION = 1
_HEAD = struct.Struct(">BQB")


def encode(sender: bytes, seq: int, message: Message) -> bytes:
    return b"".join([_HEAD.pack(VERSION, seq, len(sender)), sender, encode_retained(message)])


def decode(topic: str, data: bytes) -> tuple[bytes, int, Message]:
    """(sender, seq, message); ValueError (or CorruptData) for what we did not write."""
    if len(data) < _HEAD.size:
        raise ValueError("cluster message too short")
    version, seq, n = _HEAD.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"cluster message version {version}")
    start = _HEAD.size
    sender = data[start : start + n]
    return sender, seq, decode_retained(topic.encode(), data[start + n :])


class Dedup:
    """Recently seen (sender, seq) pairs, ``window`` per sender."""

    __slots__ = ("_seen", "window")

    def __init__(self, window: int = 65_536) -> None:
        self.window = window
        self._seen: dict[bytes, dict[int, None]] = {}

    def first(self, sender: bytes, seq: int) -> bool:
        """True the first time (sender, seq) is seen within the window."""
        seen = self._seen.get(sender)
        if seen is None:
            seen = self._seen[sender] = {}
        elif seq in seen:
            return False
        seen[seq] = None
        if len(seen) > self.window:
            del seen[next(iter(seen))]
        return True
