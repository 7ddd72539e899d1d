"""The admin API's handlers: JSON over HTTP, paths close to EMQX's ``/api/v5``.

Every handler runs on the broker's event loop, between two of its turns: it reads
the engine's state as it is, and an action (kick, delete a session or a retained
message, publish) calls the engine and then has the broker apply the effects
(:meth:`~iotbroker.admin.host.BrokerHost.engine_changed`), exactly as after a packet.

Errors are JSON ``{"code": "BAD_REQUEST", "message": "..."}`` with the HTTP status;
lists are paged (``page`` from 1, ``limit`` up to ``admin.max_page_size``) and answer
``{"data": [...], "meta": {"page", "limit", "count", "hasnext"}}``. Every action is
logged with who did it (logger ``iotbroker.admin``) and counted
(``GET /api/v1/broker`` -> ``admin_actions``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from aiohttp import web

from iotbroker import __version__, build
from iotbroker.admin.bans import Ban, BanList, normalise
from iotbroker.admin.credentials import Identity
from iotbroker.admin.host import BrokerHost
from iotbroker.admin.live import Sampler
from iotbroker.admin.views import (
    ClientFilter,
    Json,
    ban,
    client_detail,
    client_page,
    client_summary,
    connected_client,
    retained_detail,
    retained_summary,
    subscription,
)
from iotbroker.codec.enums import ReasonCode
from iotbroker.codec.packets import NO_PROPERTIES, Properties
from iotbroker.core.topics import validate_topic_filter, validate_topic_name
from iotbroker.engine.engine import is_utf8
from iotbroker.errors import ProtocolViolation
from iotbroker.message import Message
from iotbroker.subscription import SubscriptionEntry

log = logging.getLogger("iotbroker.admin")

T = TypeVar("T")

#: Default ``limit`` of a paged list.
DEFAULT_LIMIT = 100
#: Request bodies larger than this are refused (413).
MAX_BODY = 1024 * 1024
#: Config keys whose values are secrets: shown as "******".
SECRET_KEYS = ("password", "keyfile_password", "secret")

IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity", Identity)


class ApiError(Exception):
    """An error answered as JSON: HTTP ``status``, a ``code`` word and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad(message: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", message)


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status,
                             headers=headers)


def _int_arg(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad(f"{name} must be an integer, not {raw!r}") from None
    if not lo <= value <= hi:
        raise bad(f"{name} must be between {lo} and {hi}, not {value}")
    return value


def _bool_arg(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise bad(f"{name} must be true or false, not {raw!r}")


def redact(value: Any) -> Any:
    """The configuration as JSON with secrets replaced by ``******``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: ("******" if f.name in SECRET_KEYS and getattr(value, f.name)
                         else redact(getattr(value, f.name)))
                for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): redact(v) for k, v in value.items()}
    return value


class AdminApi:
    """The handlers, over the broker host, the bans and the live sampler."""

    def __init__(self, host: BrokerHost, bans: BanList, sampler: Sampler) -> None:
        self.host = host
        self.bans = bans
        self.sampler = sampler
        self.actions: Counter[str] = Counter()

    # ------------------------------------------------------------- helpers
    def window(self, request: web.Request) -> tuple[int, int]:
        """``(page, limit)`` of a list request (``limit`` at most admin.max_page_size)."""
        limit_max = self.host.config.admin.max_page_size
        page = _int_arg(request, "page", 1, 1, 10**9)
        limit = _int_arg(request, "limit", min(DEFAULT_LIMIT, limit_max), 1, limit_max)
        return page, limit

    @staticmethod
    def paged(page: int, limit: int, data: list[Json], count: int) -> web.Response:
        """One page of a list and its ``meta`` (EMQX's shape)."""
        meta = {"page": page, "limit": limit, "count": count,
                "hasnext": count > page * limit}
        return web.json_response({"data": data, "meta": meta})

    def page(self, request: web.Request, items: Iterable[T],
             render: Callable[[T], Json]) -> web.Response:
        """One page of ``items``: all are counted, only the page's are ``render``-ed."""
        page, limit = self.window(request)
        start = (page - 1) * limit
        data: list[Json] = []
        count = 0
        for item in items:
            if start <= count < start + limit:
                data.append(render(item))
            count += 1
        return self.paged(page, limit, data, count)

    def action(self, request: web.Request, what: str, detail: str) -> None:
        who = request[IDENTITY]
        self.actions[what] += 1
        log.info("admin %s (%s) from %s: %s %s", who.name, who.kind, request.remote, what,
                 detail)

    @staticmethod
    async def body(request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", f"body over {MAX_BODY} bytes")
        try:
            data = await request.json()
        except ValueError as exc:
            raise bad(f"body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise bad("body must be a JSON object")
        return data

    # -------------------------------------------------------------- health
    async def health(self, request: web.Request) -> web.Response:
        """Liveness: the event loop answers."""
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        """Readiness: restored, listening, and the store takes writes (503 otherwise:
        after a refused write, until the store takes writes again)."""
        if not self.host.bound:
            return error_response(503, "NOT_READY", "not listening yet")
        failure = self.host.engine.store.last_failure
        if failure is not None:
            return error_response(503, "STORAGE_FAILING", f"storage: {failure}")
        return web.json_response({"status": "ready"})

    # -------------------------------------------------------------- broker
    async def broker(self, request: web.Request) -> web.Response:
        host = self.host
        engine = host.engine
        now = time.time()
        config = host.config
        return web.json_response({
            "version": __version__,
            "build": build.describe(),
            "uptime": round(now - host.started_at, 3),
            "started_at": host.started_at,
            "listeners": [
                {"name": lc.name, "type": lc.type, "host": lc.host, "port": lc.port}
                for lc in config.listeners
            ],
            "bound": [{"host": h, "port": p} for h, p in host.bound],
            "connections": len(engine.clients),
            "sessions": len(engine.registry),
            "subscriptions": len(engine.trie),
            "retained": len(engine.retained),
            "bans": len(self.bans),
            "metrics": engine.metrics.as_dict(),
            "admin_actions": dict(self.actions),
            "bridges": host.bridges_status(),
            "cluster": host.cluster_status(),
            "config": redact(config),
        })

    # ------------------------------------------------------------- clients
    async def clients(self, request: web.Request) -> web.Response:
        q = request.query
        flt = ClientFilter(
            clientid=q.get("clientid"), like_clientid=q.get("like_clientid"),
            username=q.get("username"), like_username=q.get("like_username"),
            ip_address=q.get("ip_address"), connected=_bool_arg(request, "connected"),
        )
        page, limit = self.window(request)
        found, count = client_page(self.host.engine, flt, (page - 1) * limit, limit)
        return self.paged(page, limit, [client_summary(s, c) for s, c in found], count)

    def _session(self, request: web.Request) -> tuple[str, Any]:
        client_id = request.match_info["clientid"]
        session = self.host.engine.registry.get(client_id)
        if session is None:
            raise not_found(f"no session with client id {client_id!r}")
        return client_id, session

    async def client(self, request: web.Request) -> web.Response:
        _, session = self._session(request)
        return web.json_response(client_detail(session, connected_client(self.host.engine,
                                                                         session)))

    async def kick(self, request: web.Request) -> web.Response:
        """Disconnect (MQTT 5.0: DISCONNECT 0x98); ``?session=true`` also ends the
        session. 204 when done, 404 with no such client or session."""
        client_id = request.match_info["clientid"]
        end_session = _bool_arg(request, "session") or False
        engine = self.host.engine
        if end_session:
            done = engine.end_session(client_id, time.time())
        else:
            done = engine.kick(client_id)
        if not done:
            what = "session" if end_session else "connected client"
            raise not_found(f"no {what} with client id {client_id!r}")
        self.host.engine_changed()
        self.action(request, "delete_session" if end_session else "kick", repr(client_id))
        return web.Response(status=204)

    async def client_subscriptions(self, request: web.Request) -> web.Response:
        _, session = self._session(request)
        return web.json_response([subscription(e) for e in session.subscriptions.values()])

    # ------------------------------------------------------- subscriptions
    async def subscriptions(self, request: web.Request) -> web.Response:
        q = request.query
        client_id = q.get("clientid")
        topic = q.get("topic")
        qos = _int_arg(request, "qos", -1, 0, 2) if "qos" in q else None
        share_group = q.get("share_group")
        engine = self.host.engine

        def items() -> Iterable[SubscriptionEntry]:
            if client_id is not None:
                found = engine.registry.get(client_id)
                candidates = [] if found is None else [found]
            else:
                candidates = list(engine.registry.sessions.values())
            for session in candidates:
                for entry in list(session.subscriptions.values()):
                    if topic is not None and entry.topic_filter != topic:
                        continue
                    if qos is not None and entry.qos != qos:
                        continue
                    if share_group is not None and entry.share_group != share_group:
                        continue
                    yield entry

        return self.page(request, items(), subscription)

    # ------------------------------------------------------------ retained
    async def retained_list(self, request: web.Request) -> web.Response:
        topic_filter = request.query.get("topic", "#")
        try:
            validate_topic_filter(topic_filter)
        except ProtocolViolation as exc:
            raise bad(f"topic {topic_filter!r} is not a topic filter: {exc}") from None
        messages = self.host.engine.retained.match(topic_filter, time.time())
        messages.sort(key=lambda m: m.topic)
        return self.page(request, messages, retained_summary)

    async def retained_get(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        message = self.host.engine.retained.get(topic)
        if message is None or message.expired(time.time()):
            raise not_found(f"no retained message on {topic!r}")
        return web.json_response(retained_detail(message))

    async def retained_delete(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        if not self.host.engine.delete_retained(topic):
            raise not_found(f"no retained message on {topic!r}")
        self.host.engine_changed()
        self.action(request, "delete_retained", repr(topic))
        return web.Response(status=204)

    # ------------------------------------------------------------- publish
    async def publish(self, request: web.Request) -> web.Response:
        """Publish as the admin: the broker's ACL decides for the admin's name
        (client id ``$admin/NAME``), and ``$SYS`` stays the broker's."""
        data = await self.body(request)
        who = request[IDENTITY]
        message = self._message(data, who)
        client_id = f"$admin/{who.name}"
        if not self.host.engine.may_write(client_id, who.name, message.topic):
            self.action(request, "publish_denied", repr(message.topic))
            raise ApiError(403, "NOT_AUTHORIZED",
                           f"{who.name!r} may not publish to {message.topic!r}")
        code = self.host.engine.publish_own(message, time.time())
        self.host.engine_changed()
        self.action(request, "publish", f"{message.topic!r} qos {message.qos} "
                    f"retain {message.retain} ({len(message.payload)} bytes)")
        return web.json_response({"reason_code": code,
                                  "matched": code != ReasonCode.NO_MATCHING_SUBSCRIBERS})

    def _message(self, data: dict[str, Any], who: Identity) -> Message:
        known = {"topic", "payload", "payload_encoding", "qos", "retain", "properties"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise bad(f"unknown field(s) {', '.join(unknown)}; expected {sorted(known)}")
        topic = data.get("topic")
        if not isinstance(topic, str) or not topic:
            raise bad("topic must be a non-empty string")
        try:
            validate_topic_name(topic)
        except ProtocolViolation as exc:
            raise bad(f"topic {topic!r} is not a topic name: {exc.message}") from None
        payload = data.get("payload", "")
        encoding = data.get("payload_encoding", "plain")
        if not isinstance(payload, str):
            raise bad("payload must be a string")
        if encoding == "plain":
            body = payload.encode("utf-8")
        elif encoding == "base64":
            try:
                body = base64.b64decode(payload, validate=True)
            except binascii.Error:
                raise bad("payload is not valid base64") from None
        else:
            raise bad(f"payload_encoding must be plain or base64, not {encoding!r}")
        qos = data.get("qos", 0)
        if qos not in (0, 1, 2) or isinstance(qos, bool):
            raise bad(f"qos must be 0, 1 or 2, not {qos!r}")
        retain = data.get("retain", False)
        if not isinstance(retain, bool):
            raise bad("retain must be true or false")
        if len(body) > self.host.config.mqtt.max_packet_size:
            raise bad("payload larger than mqtt.max_packet_size")
        props = self._properties(data.get("properties") or {})
        if props.payload_format_indicator == 1 and not is_utf8(body):
            # The rule an MQTT PUBLISH meets (engine.on_publish, 0x99): subscribers may
            # trust the indicator whatever way the message came in (MQTT 5.0 §3.3.2.3.2).
            raise bad("payload_format_indicator 1 with a payload that is not UTF-8")
        now = time.time()
        expiry = props.message_expiry_interval
        return Message(topic=topic, payload=body, qos=qos, retain=retain, properties=props,
                       created_at=now, expires_at=None if expiry is None else now + expiry,
                       origin=f"$admin/{who.name}")

    @staticmethod
    def _properties(raw: Any) -> Properties:
        """MQTT 5.0 PUBLISH properties (§3.3.2.3) from JSON."""
        if not isinstance(raw, dict):
            raise bad("properties must be an object")
        if not raw:
            return NO_PROPERTIES
        fields: dict[str, Any] = {}
        for key, value in raw.items():
            if key in ("message_expiry_interval", "payload_format_indicator"):
                hi = 1 if key == "payload_format_indicator" else 2**32 - 1
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
                    raise bad(f"properties.{key} must be an integer 0–{hi}")
                fields[key] = value
            elif key in ("content_type", "response_topic"):
                if not isinstance(value, str):
                    raise bad(f"properties.{key} must be a string")
                if key == "response_topic":
                    try:
                        validate_topic_name(value)
                    except ProtocolViolation as exc:
                        raise bad(f"properties.response_topic: {exc.message}") from None
                fields[key] = value
            elif key == "correlation_data":
                if not isinstance(value, str):
                    raise bad("properties.correlation_data must be a string")
                fields[key] = value.encode("utf-8")
            elif key == "user_properties":
                pairs = value.items() if isinstance(value, dict) else value
                try:
                    fields[key] = tuple((str(k), str(v)) for k, v in pairs)
                except (TypeError, ValueError):
                    raise bad("properties.user_properties must be an object or a list of "
                              "[name, value] pairs") from None
            else:
                raise bad(f"unknown property {key!r}")
        return Properties(**fields)

    # ---------------------------------------------------------------- bans
    async def bans_list(self, request: web.Request) -> web.Response:
        return self.page(request, self.bans.all(time.time()), ban)

    async def bans_create(self, request: web.Request) -> web.Response:
        """Ban by client id, username or address (CIDR); connected matches are
        disconnected at once (MQTT 5.0: DISCONNECT 0x98)."""
        data = await self.body(request)
        known = {"kind", "value", "reason", "until", "duration"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise bad(f"unknown field(s) {', '.join(unknown)}; expected {sorted(known)}")
        try:
            kind, value = normalise(str(data.get("kind", "")), str(data.get("value", "")))
        except ValueError as exc:
            raise bad(str(exc)) from None
        now = time.time()
        until = data.get("until")
        duration = data.get("duration")
        if until is not None and duration is not None:
            raise bad("give until or duration, not both")
        if duration is not None:
            if not isinstance(duration, (int, float)) or isinstance(duration, bool) \
                    or duration <= 0:
                raise bad("duration must be a positive number of seconds")
            until = now + duration
        elif until is not None and (not isinstance(until, (int, float))
                                    or isinstance(until, bool) or until <= now):
            raise bad("until must be a Unix time in the future")
        reason = data.get("reason", "")
        if not isinstance(reason, str):
            raise bad("reason must be a string")
        who = request[IDENTITY]
        entry = Ban(kind, value, reason, who.name, now,
                    None if until is None else float(until))
        self.bans.add(entry)
        engine = self.host.engine
        kicked = [
            client_id for client_id, client in list(engine.clients.items())
            if self.bans.matches(entry, client_id, client.session.username
                                 if client.session else None, client.peer)
        ]
        for client_id in kicked:
            engine.kick(client_id, reason=f"banned: {reason}" if reason else "banned")
        if kicked:
            self.host.engine_changed()
        self.action(request, "ban", f"{kind} {value!r} until {until} ({len(kicked)} kicked)")
        body = ban(entry)
        body["disconnected"] = kicked
        return web.json_response(body, status=201)

    async def bans_delete(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        value = request.match_info["value"]
        if not self.bans.remove(kind, value):
            raise not_found(f"no ban on {kind} {value!r}")
        self.action(request, "unban", f"{kind} {value!r}")
        return web.Response(status=204)
