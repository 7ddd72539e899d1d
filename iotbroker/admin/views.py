"""Broker state as JSON objects (field names close to EMQX's ``/api/v5``).

Read-only functions over the engine's public state: the session registry
(``engine.registry.sessions``), the connected clients (``engine.clients``), a session's
``subscriptions`` (topic filter -> :class:`~iotbroker.subscription.SubscriptionEntry`),
``inflight`` and ``queued_count``, and the retained-message store. Nothing here
changes state.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
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

    def accepts(self, session: Session, client: Client | None) -> bool:
        if self.clientid is not None and session.client_id != self.clientid:
            return False
        if self.like_clientid is not None and self.like_clientid not in session.client_id:
            return False
        if self.username is not None and session.username != self.username:
            return False
        if self.like_username is not None and (
            session.username is None or self.like_username not in session.username
        ):
            return False
        if self.connected is not None and (client is not None) != self.connected:
            return False
        if self.ip_address is not None:
            ip = peer_ip(client.peer) if client is not None else None
            if ip is None or str(ip) != self.ip_address:
                return False
        return True


def connected_client(engine: Engine, session: Session) -> Client | None:
    client = session.attached_to
    return client if isinstance(client, Client) and not client.close_requested else None


def sessions(engine: Engine, flt: ClientFilter) -> Iterator[tuple[Session, Client | None]]:
    """Sessions (connected or offline) the filter accepts, in registry order."""
    if flt.clientid is not None:
        found = engine.registry.get(flt.clientid)
        candidates: Iterable[Session] = () if found is None else (found,)
    else:
        candidates = list(engine.registry.sessions.values())
    for session in candidates:
        client = connected_client(engine, session)
        if flt.accepts(session, client):
            yield session, client


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
