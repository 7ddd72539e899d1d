"""The admin API's OpenAPI 3.1 document, served at ``/api/v1/openapi.json``.

Written by hand next to the routes (``server.py``); ``tests/admin`` checks that the two
name the same paths and methods and that the document is valid OpenAPI.
"""

from __future__ import annotations

from typing import Any

from iotbroker import __version__

Json = dict[str, Any]


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Json, description: str = "OK") -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _param(name: str, where: str, schema: Json, description: str,
           required: bool = False) -> Json:
    return {"name": name, "in": where, "required": required or where == "path",
            "schema": schema, "description": description}


_ERRORS: Json = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/Forbidden"},
    "429": {"$ref": "#/components/responses/TooManyRequests"},
}
_PAGING = [
    _param("page", "query", {"type": "integer", "minimum": 1, "default": 1}, "Page, from 1."),
    _param("limit", "query", {"type": "integer", "minimum": 1, "default": 100},
           "Items per page, at most admin.max_page_size."),
]
_STR = {"type": "string"}
_NO_CONTENT = {"description": "Done (no content)."}
_NOT_FOUND = {"$ref": "#/components/responses/NotFound"}


def _paged(item: str) -> Json:
    return {"type": "object", "required": ["data", "meta"],
            "properties": {"data": {"type": "array", "items": _ref(item)},
                           "meta": _ref("Meta")}}


def _op(summary: str, responses: Json, params: list[Json] | None = None,
        body: Json | None = None, public: bool = False) -> Json:
    op: Json = {"summary": summary, "responses": {**responses, **({} if public else _ERRORS)}}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    if public:
        op["security"] = []
    return op


def document() -> Json:
    """The document (a new dict each call)."""
    clientid = _param("clientid", "path", _STR, "Client identifier (URL-encoded).")
    topic = _param("topic", "path", _STR, "Topic name (URL-encoded, '/' as %2F or plain).")
    paths: Json = {
        "/api/v1/health": {"get": _op("Liveness: the broker's event loop answers.",
                                      {"200": _json({"type": "object"})}, public=True)},
        "/api/v1/health/ready": {"get": _op(
            "Readiness: restored, listening, and the store takes writes (503 otherwise).",
            {"200": _json({"type": "object"}),
             "503": {"$ref": "#/components/responses/Error"}}, public=True)},
        "/api/v1/openapi.json": {"get": _op("This document.", {"200": _json({"type": "object"})},
                                            public=True)},
        "/api/v1/login": {"post": _op(
            "Dashboard login: sets an HttpOnly session cookie.",
            {"200": _json(_ref("Identity")), "400": {"$ref": "#/components/responses/BadRequest"},
             "401": {"$ref": "#/components/responses/Unauthorized"},
             "403": {"$ref": "#/components/responses/Forbidden"}},
            body={"type": "object", "required": ["username", "password"],
                  "properties": {"username": _STR, "password": _STR}}, public=True)},
        "/api/v1/logout": {"post": _op("End the dashboard session.", {"204": _NO_CONTENT})},
        "/api/v1/whoami": {"get": _op("The caller's identity (name null: none).",
                                      {"200": _json(_ref("Identity"))}, public=True)},
        "/api/v1/broker": {"get": _op("Version, uptime, listeners, counts, metrics and the "
                                      "configuration (secrets redacted).",
                                      {"200": _json(_ref("Broker"))})},
        "/api/v1/stream": {"get": _op(
            "Live figures as Server-Sent Events: `history` then one `sample` a second.",
            {"200": {"description": "text/event-stream",
                     "content": {"text/event-stream": {"schema": _STR}}}})},
        "/api/v1/clients": {"get": _op(
            "Sessions, connected or offline (paged, filtered).",
            {"200": _json(_paged("Client"))},
            [_param("clientid", "query", _STR, "Exact client id."),
             _param("like_clientid", "query", _STR, "Substring of the client id."),
             _param("username", "query", _STR, "Exact username."),
             _param("like_username", "query", _STR, "Substring of the username."),
             _param("ip_address", "query", _STR, "The client's IP address."),
             _param("connected", "query", {"type": "boolean"}, "Connected or offline only."),
             *_PAGING])},
        "/api/v1/clients/{clientid}": {
            "get": _op("One client's details.", {"200": _json(_ref("ClientDetail")),
                                                 "404": _NOT_FOUND}, [clientid]),
            "delete": _op(
                "Disconnect the client (MQTT 5.0: DISCONNECT 0x98 Administrative action); "
                "with session=true also end its session (connected or offline).",
                {"204": _NO_CONTENT, "404": _NOT_FOUND},
                [clientid, _param("session", "query", {"type": "boolean"},
                                  "Also delete the session.")]),
        },
        "/api/v1/clients/{clientid}/subscriptions": {"get": _op(
            "One client's subscriptions.",
            {"200": _json({"type": "array", "items": _ref("Subscription")}),
             "404": _NOT_FOUND}, [clientid])},
        "/api/v1/subscriptions": {"get": _op(
            "Subscriptions (paged, filtered).", {"200": _json(_paged("Subscription"))},
            [_param("clientid", "query", _STR, "Client id."),
             _param("topic", "query", _STR, "Exact topic filter."),
             _param("qos", "query", {"type": "integer", "minimum": 0, "maximum": 2}, "QoS."),
             _param("share_group", "query", _STR, "Shared subscription group."),
             *_PAGING])},
        "/api/v1/retained": {"get": _op(
            "Retained messages whose topic matches a filter (paged, by topic).",
            {"200": _json(_paged("Retained"))},
            [_param("topic", "query", {"type": "string", "default": "#"}, "Topic filter."),
             *_PAGING])},
        "/api/v1/retained/{topic}": {
            "get": _op("One retained message with its payload.",
                       {"200": _json(_ref("RetainedDetail")), "404": _NOT_FOUND}, [topic]),
            "delete": _op("Delete one retained message (nothing is published).",
                          {"204": _NO_CONTENT, "404": _NOT_FOUND}, [topic]),
        },
        "/api/v1/publish": {"post": _op(
            "Publish a message as the admin (the ACL applies to client id $admin/NAME).",
            {"200": _json({"type": "object", "properties": {
                "reason_code": {"type": "integer"}, "matched": {"type": "boolean"}}})},
            body=_ref("Publish"))},
        "/api/v1/bans": {
            "get": _op("Bans in force (paged).", {"200": _json(_paged("Ban"))}, _PAGING),
            "post": _op("Ban a client id, username or address (CIDR); connected matches "
                        "are disconnected at once.",
                        {"201": _json(_ref("Ban"))}, body=_ref("BanCreate")),
        },
        "/api/v1/bans/{kind}/{value}": {"delete": _op(
            "Lift a ban.", {"204": _NO_CONTENT, "404": _NOT_FOUND},
            [_param("kind", "path", {"type": "string",
                                     "enum": ["clientid", "username", "address"]}, "Kind."),
             _param("value", "path", _STR, "Value (a CIDR's '/' as %2F or plain).")])},
    }
    nullable_str = {"type": ["string", "null"]}
    nullable_int = {"type": ["integer", "null"]}
    schemas: Json = {
        "Error": {"type": "object", "required": ["code", "message"],
                  "properties": {"code": _STR, "message": _STR}},
        "Meta": {"type": "object", "required": ["page", "limit", "count", "hasnext"],
                 "properties": {"page": {"type": "integer"}, "limit": {"type": "integer"},
                                "count": {"type": "integer"}, "hasnext": {"type": "boolean"}}},
        "Identity": {"type": "object", "properties": {"name": nullable_str,
                                                      "kind": nullable_str}},
        "Broker": {"type": "object", "properties": {
            "version": _STR, "uptime": {"type": "number"}, "listeners": {"type": "array"},
            "connections": {"type": "integer"}, "sessions": {"type": "integer"},
            "metrics": {"type": "object"}, "config": {"type": "object"}}},
        "Client": {"type": "object", "required": ["clientid", "connected"], "properties": {
            "clientid": _STR, "username": nullable_str, "connected": {"type": "boolean"},
            "proto_ver": {"type": "integer"}, "keepalive": nullable_int,
            "ip_address": nullable_str, "port": nullable_int, "listener": nullable_str,
            "connected_at": nullable_str, "disconnected_at": nullable_str,
            "expiry_interval": {"type": "integer"}, "inflight_cnt": {"type": "integer"},
            "mqueue_len": {"type": "integer"}, "subscriptions_cnt": {"type": "integer"}}},
        "ClientDetail": {"allOf": [_ref("Client"), {"type": "object", "properties": {
            "cert_subject": nullable_str, "receive_maximum": {"type": "integer"},
            "subscriptions": {"type": "array", "items": _ref("Subscription")}}}]},
        "Subscription": {"type": "object", "properties": {
            "clientid": _STR, "topic": _STR, "qos": {"type": "integer"},
            "nl": {"type": "integer"}, "rap": {"type": "integer"}, "rh": {"type": "integer"},
            "share_group": nullable_str, "subscription_identifier": nullable_int}},
        "Retained": {"type": "object", "properties": {
            "topic": _STR, "qos": {"type": "integer"}, "payload_size": {"type": "integer"},
            "publish_at": nullable_str, "expires_at": nullable_str,
            "from_clientid": nullable_str}},
        "RetainedDetail": {"allOf": [_ref("Retained"), {"type": "object", "properties": {
            "payload": _STR, "payload_encoding": {"enum": ["plain", "base64"]},
            "properties": {"type": "object"}}}]},
        "Publish": {"type": "object", "required": ["topic"], "properties": {
            "topic": _STR, "payload": _STR,
            "payload_encoding": {"enum": ["plain", "base64"], "default": "plain"},
            "qos": {"enum": [0, 1, 2], "default": 0},
            "retain": {"type": "boolean", "default": False},
            "properties": {"type": "object", "properties": {
                "message_expiry_interval": {"type": "integer"},
                "payload_format_indicator": {"enum": [0, 1]},
                "content_type": _STR, "response_topic": _STR, "correlation_data": _STR,
                "user_properties": {"type": "object",
                                    "additionalProperties": _STR}}}}},
        "Ban": {"type": "object", "properties": {
            "kind": {"enum": ["clientid", "username", "address"]}, "value": _STR,
            "reason": _STR, "by": _STR, "at": nullable_str, "until": nullable_str}},
        "BanCreate": {"type": "object", "required": ["kind", "value"], "properties": {
            "kind": {"enum": ["clientid", "username", "address"]}, "value": _STR,
            "reason": _STR, "until": {"type": "number", "description": "Unix time"},
            "duration": {"type": "number", "description": "Seconds from now"}}},
    }

    def response(description: str) -> Json:
        return {"description": description,
                "content": {"application/json": {"schema": _ref("Error")}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "iotbroker admin API", "version": __version__,
                 "description": "Clients, subscriptions, retained messages, publish, bans "
                                "and broker state (docs/admin.md)."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {"BadRequest": response("Bad input (code BAD_REQUEST)."),
                          "Unauthorized": response("No or wrong credentials."),
                          "Forbidden": response("Not an admin, or not allowed."),
                          "NotFound": response("No such object."),
                          "TooManyRequests": response("Too many failed logins from this "
                                                      "address or for this user "
                                                      "(auth.failed_login_*)."),
                          "Error": response("Error.")},
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An API key as NAME:KEY."},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "iotbroker_admin"},
            },
        },
        "security": [{"basic": []}, {"bearer": []}, {"cookie": []}],
    }
