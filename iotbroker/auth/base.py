"""What the broker asks the auth room: "may this client connect / publish / subscribe / receive?"

Rules of this room: synchronous, no I/O after loading, no asyncio. Answers are plain
booleans; the server maps a refusal to the reason code of the packet in hand (CONNACK
0x86/0x87 or v3.1.1 0x04/0x05, PUBACK/PUBREC 0x87, SUBACK 0x87 or v3.1.1 0x80).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["AllowAll", "Authenticator", "Authorizer"]


@runtime_checkable
class Authenticator(Protocol):
    """Decides whether a CONNECT's credentials are accepted (MQTT 5.0 §3.1.3.5, §3.1.3.6)."""

    def authenticate(self, client_id: str, username: str | None,
                     password: bytes | None) -> bool:
        """True to accept the connection. ``username``/``password`` are None when absent."""
        ...


@runtime_checkable
class Authorizer(Protocol):
    """Decides what an authenticated client may do with a topic."""

    def can_publish(self, client_id: str, username: str | None, topic: str) -> bool:
        """May the client PUBLISH to the topic name ``topic`` (also: set a will there)?"""
        ...

    def can_subscribe(self, client_id: str, username: str | None, topic_filter: str) -> bool:
        """May the client SUBSCRIBE to ``topic_filter`` (``$share/G/`` is stripped first)?"""
        ...

    def can_receive(self, client_id: str, username: str | None, topic: str) -> bool:
        """May a message published to ``topic`` be delivered to the client?"""
        ...


class AllowAll:
    """Accepts every client and allows everything (no auth configured)."""

    def authenticate(self, client_id: str, username: str | None,
                     password: bytes | None) -> bool:
        return True

    def can_publish(self, client_id: str, username: str | None, topic: str) -> bool:
        return True

    def can_subscribe(self, client_id: str, username: str | None, topic_filter: str) -> bool:
        return True

    def can_receive(self, client_id: str, username: str | None, topic: str) -> bool:
        return True
