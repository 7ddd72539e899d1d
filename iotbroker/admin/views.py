"""Broker state as JSON objects (field names close to EMQX's ``/api/v5``).

Read-only functions over the engine's public state: the session registry
(``engine.registry.sessions``), the connected clients (``engine.clients``), a session's
``subscriptions`` (topic filter -> :class:`~iotbroker.subscription.SubscriptionEntry`),
``inflight`` and ``queued_count``, and the retained-message store. Nothing here
changes state.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from iotbroker.admin.bans import Ban, peer_ip
from iotbroker.core.session import Session
from iotbroker.engine.client import Client
from iotbroker.engine.engine import Engine
from iotbroker.message import Message
from iotbroker.subscription import SubscriptionEntry

Json = dict[str, Any]


def rfc3339(t: float | None) -> str | None:
    """Unix time as RFC 3339 (UTC, milliseconds); None stays None."""
    if t is None or t == 0.0:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ClientFilter:
    """The query of ``GET /api/v1/clients``: exact ``clientid``/``username``, substring
    ``like_clientid``/``like_username``, ``ip_address`` and ``connected``."""

    clientid: str | None = None
    like_clientid: str | None = None
    username: str | None = None
    like_username: str | None = None
    ip_address: str | None = None
    connected: bool | None = None

    @property
    def empty(self) -> bool:
        """No condition: every session."""
        return (self.clientid is None and self.like_clientid is None
                and self.username is None and self.like_username is None
                and self.ip_address is None and self.connected is None)


def connected_client(engine: Engine, session: Session) -> Client | None:
    client = session.attached_to
    return client if isinstance(client, Client) and not client.close_requested else None


def client_page(engine: Engine, flt: ClientFilter, start: int,
                limit: int) -> tuple[list[tuple[Session, Client | None]], int]:
    """The sessions (connected or offline) of one page of ``GET /api/v1/clients``, in
    registry order, each with its connected client, and how many match in all.

    No filter: the page is sliced out of the registry and the count is its size, so a
    page costs its own ``limit`` sessions, not a pass over all of them (issue 17). A
    filter costs one pass: each condition narrows a list in one comprehension, the
    cheapest first (``clientid`` is a lookup; ``like_clientid`` tests the registry's
    keys), and JSON is built only for the page.
    """
    registry = engine.registry.sessions
    if flt.empty:
        window = list(islice(registry.values(), start, start + limit))
        return [(s, connected_client(engine, s)) for s in window], len(registry)
    found: list[Session]
    if flt.clientid is not None:
        one = registry.get(flt.clientid)
        found = [] if one is None else [one]
        if flt.like_clientid is not None:
            found = [s for s in found if flt.like_clientid in s.client_id]
    elif flt.like_clientid is not None:
        like = flt.like_clientid
        found = [s for cid, s in registry.items() if like in cid]
    else:
        found = list(registry.values())
    if flt.username is not None:
        username = flt.username
        found = [s for s in found if s.username == username]
    if flt.like_username is not None:
        like = flt.like_username
        found = [s for s in found if s.username is not None and like in s.username]
    if flt.connected is False:
        found = [s for s in found
                 if s.attached_to is None or connected_client(engine, s) is None]
    elif flt.connected is True or flt.ip_address is not None:  # an address: connected
        found = [s for s in found
                 if s.attached_to is not None and connected_client(engine, s) is not None]
    if flt.ip_address is not None:
        address = flt.ip_address
        pairs: list[tuple[Session, Client | None]] = [
            (s, c) for s in found
            if (c := connected_client(engine, s)) is not None
            and (ip := peer_ip(c.peer)) is not None and str(ip) == address]
        return pairs[start:start + limit], len(pairs)
    window = found[start:start + limit]
    return [(s, connected_client(engine, s)) for s in window], len(found)


def client_summary(session: Session, client: Client | None) -> Json:
    ip = peer_ip(client.peer) if client is not None else None
    port = None
    if client is not None and ":" in client.peer:
        tail = client.peer.rsplit(":", 1)[1]
        port = int(tail) if tail.isdigit() else None
    conn = client.conn if client is not None else None
    return {
        "clientid": session.client_id,
        "username": session.username,
        "connected": client is not None,
        "proto_ver": session.protocol_version,
        "keepalive": conn.keepalive if conn is not None else None,
        "ip_address": None if ip is None else str(ip),
        "port": port,
        "listener": client.listener if client is not None else None,
        "connected_at": rfc3339(client.connected_at) if client is not None else None,
        "disconnected_at": rfc3339(session.disconnected_at) if client is None else None,
        "expiry_interval": session.expiry_interval,
        "inflight_cnt": len(session.inflight),
        "mqueue_len": session.queued_count,
        "subscriptions_cnt": len(session.subscriptions),
    }


def client_detail(session: Session, client: Client | None) -> Json:
    out = client_summary(session, client)
    out["cert_subject"] = client.cert_subject if client is not None else None
    out["receive_maximum"] = session.receive_maximum
    out["subscriptions"] = [subscription(e) for e in session.subscriptions.values()]
    return out


def subscription(entry: SubscriptionEntry) -> Json:
    return {
        "clientid": entry.client_id,
        "topic": entry.topic_filter,
        "qos": entry.qos,
        "nl": int(entry.no_local),
        "rap": int(entry.retain_as_published),
        "rh": entry.retain_handling,
        "share_group": entry.share_group,
        "subscription_identifier": entry.subscription_identifier,
    }


def payload_json(payload: bytes) -> Json:
    """A payload as text when it is UTF-8, else base64 (``payload_encoding`` says which)."""
    try:
        return {"payload": payload.decode("utf-8"), "payload_encoding": "plain"}
    except UnicodeDecodeError:
        return {"payload": base64.b64encode(payload).decode(), "payload_encoding": "base64"}


def retained_summary(message: Message) -> Json:
    return {
        "topic": message.topic,
        "qos": message.qos,
        "payload_size": len(message.payload),
        "publish_at": rfc3339(message.created_at),
        "expires_at": rfc3339(message.expires_at),
        "from_clientid": message.origin or None,
    }


def retained_detail(message: Message) -> Json:
    out = retained_summary(message)
    out.update(payload_json(message.payload))
    props = message.properties
    out["properties"] = {
        k: v for k, v in {
            "content_type": props.content_type,
            "payload_format_indicator": props.payload_format_indicator,
            "response_topic": props.response_topic,
            "user_properties": [list(p) for p in props.user_properties] or None,
        }.items() if v is not None
    }
    return out


def ban(b: Ban) -> Json:
    return {"kind": b.kind, "value": b.value, "reason": b.reason, "by": b.by,
            "at": rfc3339(b.at), "until": rfc3339(b.until)}
