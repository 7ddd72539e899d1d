"""The application message and one client's copy of it.

This module sits below both ``core/`` and ``storage/`` (it imports only ``codec``):
the core builds and routes these objects, the stores persist them, and no import
runs from storage back up into the core.

An application message (MQTT 5.0 §1.2 "Application Message") is built once when a
PUBLISH is accepted and shared by reference by every recipient, every queue and the
retained store. What differs per recipient (granted QoS, retain flag as delivered,
subscription identifiers) is a :class:`Delivery`.

Both are slotted but not frozen: a frozen dataclass costs about four times as much to
build (``object.__setattr__`` per field), and one of each is built per message and per
recipient. Treat them as immutable once built.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from mypy_extensions import mypyc_attr

from iotbroker.codec.packets import Properties

#: Session Expiry Interval meaning "never expires" (MQTT 5.0 §3.1.2.11.2).
NEVER_EXPIRES = 0xFFFFFFFF


@mypyc_attr(acyclic=True)  # what it holds never refers back to it: see below
@dataclass(slots=True)
class Message:
    """An accepted application message.

    ``properties`` holds what is forwarded unchanged (MQTT 5.0 §3.3.2.3): payload
    format, content type, response topic, correlation data, user properties. The
    Message Expiry Interval is kept as an absolute wall-clock deadline ``expires_at``
    so that time spent in the broker (and while it was down) counts [MQTT-3.3.2-6];
    topic aliases and subscription identifiers are never part of it.

    Compiled, it is *acyclic* (``@mypyc_attr(acyclic=True)``): its fields are strings,
    bytes, numbers, None and a frozen :class:`~iotbroker.codec.packets.Properties`
    (strings, bytes, numbers and tuples of them), none of which can refer back to a
    Message, so it can never be part of a reference cycle and is not tracked by the
    cyclic garbage collector: no GC header to link and unlink per message, and the
    messages no longer count towards generation 0's threshold (issue 14: a message
    that crosses nodes is built twice, once on each node).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties
    created_at: float
    expires_at: float | None = None
    origin: str = ""
    #: Cluster (docs/cluster.md, "QoS 2 across a move"): the key of a QoS 2 message's
    #: stream write (:func:`write_key` of its ``Nats-Msg-Id``), 0: none. A persistent
    #: session derives the message's packet id from it, so another node that reads
    #: the message back from the stream sends it with the same id.
    stream_key: int = field(default=0, compare=False)
    #: Its sequence in the cluster's QoS stream once known (0: not known / none).
    stream_seq: int = field(default=0, compare=False)
    #: ``topic``'s UTF-8 bytes (``b""``: not known yet): the PUBLISH's own topic bytes
    #: when the message came from one (codec ``Publish.topic_raw``), else filled by the
    #: first connection that encodes the message, so that its forwards write them
    #: without encoding the topic again (issue 19). A cache of ``topic``: whoever
    #: builds a message with another topic builds a new one.
    topic_raw: bytes = field(default=b"", compare=False, repr=False)

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool,
                 properties: Properties, created_at: float,
                 expires_at: float | None = None, origin: str = "",
                 stream_key: int = 0, stream_seq: int = 0, topic_raw: bytes = b"") -> None:
        # Written out (the dataclass keeps it): under mypyc the generated __init__
        # would stay interpreted, about half of building one (one per message).
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        self.created_at = created_at
        self.expires_at = expires_at
        self.origin = origin
        self.stream_key = stream_key
        self.stream_seq = stream_seq
        self.topic_raw = topic_raw

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def remaining_expiry(self, now: float) -> int | None:
        """Seconds left of the Message Expiry Interval, rounded up, or ``None``."""
        if self.expires_at is None:
            return None
        left = self.expires_at - now
        return max(0, int(left) + (1 if left > int(left) else 0))


def write_key(write_id: str) -> int:
    """The 64-bit key of a cluster stream write id (``Nats-Msg-Id``): the same on every
    node, never 0 (docs/cluster.md, "QoS 2 across a move")."""
    key = int.from_bytes(hashlib.blake2b(write_id.encode(), digest_size=8).digest(), "big")
    return key or 1


def derived_packet_id(key: int) -> int:
    """The packet identifier of a QoS 2 message with stream key ``key`` in a
    persistent session of a cluster node: 0x8000-0xFFFF, the same on every node, so
    that a session that moves re-sends an unacknowledged message with the packet id
    the client may hold [MQTT-4.3.3-10] (MQTT 5.0 §4.4). Other packet ids of such a
    session are 1-0x7FFF."""
    return 0x8000 | (key & 0x7FFF)


@dataclass(slots=True)
class Delivery:
    """One client's copy: the message with the QoS granted to it, the retain flag it
    sees and the subscription identifiers of its matching subscriptions
    [MQTT-3.3.4-3]. ``share_group`` names the shared subscription group it was given
    to the client for (MQTT 5.0 §4.8.2), None for the client's own subscriptions: only
    a group's copies may move to another member when the client leaves. It is not
    stored (after a restart an unacknowledged group copy stays with its client)."""

    message: Message
    qos: int
    retain: bool = False
    subscription_identifiers: tuple[int, ...] = ()
    share_group: str | None = None
    #: The encoded QoS 0 PUBLISH for MQTT 3.1.1 / 5.0 clients, filled by the first
    #: connection that sends this copy: recipients of a fan-out share one Delivery
    #: (the router builds one per QoS and RETAIN), so the bytes are encoded once per
    #: message, not once per subscriber. Not part of the copy's identity.
    wire4: bytes = field(default=b"", compare=False, repr=False)
    wire5: bytes = field(default=b"", compare=False, repr=False)

    def __init__(self, message: Message, qos: int, retain: bool = False,
                 subscription_identifiers: tuple[int, ...] = (),
                 share_group: str | None = None, wire4: bytes = b"",
                 wire5: bytes = b"") -> None:
        # Written out, as Message's (one per recipient): compiled, not interpreted.
        self.message = message
        self.qos = qos
        self.retain = retain
        self.subscription_identifiers = subscription_identifiers
        self.share_group = share_group
        self.wire4 = wire4
        self.wire5 = wire5


class Sending:
    """A QoS 1/2 PUBLISH for a connection to send: the copy, its packet identifier,
    DUP, and ``sent_at``, when the session decided to send it (a Message Expiry
    Interval counts down to then). A session's in-flight entry
    (``core.session.InflightEntry``) is one and goes into the session's outbox as it
    is: one object per QoS 1/2 forward, not the entry plus a ``(delivery, packet id,
    dup, now)`` tuple with its boxed packet id and time (issue 19, objects per
    message). Here, not in core: the connection (``protocol``) reads it and imports
    no ``core``."""

    __slots__ = ("delivery", "dup", "packet_id", "sent_at")

    def __init__(self, delivery: Delivery, packet_id: int, dup: bool = False,
                 sent_at: float = 0.0) -> None:
        self.delivery = delivery
        self.packet_id = packet_id
        self.dup = dup
        self.sent_at = sent_at

    def __repr__(self) -> str:
        return (f"Sending(packet_id={self.packet_id}, dup={self.dup}, "
                f"sent_at={self.sent_at}, delivery={self.delivery!r})")
