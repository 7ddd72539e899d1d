"""A broker with the admin API on, its credentials, an HTTP client and MQTT clients.

The broker is the real one (a subprocess, ``tests/helpers/broker_process.py``); HTTP
goes over loopback with the standard library's client; MQTT clients are paho-mqtt
(threads of their own, callbacks put on queues). Every wait is bounded (``WAIT``).
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import queue
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers.broker_process import BrokerProcess, broker_config

WAIT = 5.0
_ADMIN = re.compile(r"admin listening on (https?)://(\S+):(\d+)")

ALICE = ("alice", "alice-secret")  # in admin.users
BOB = ("bob", "bob-secret")        # in the password file, not an admin


def make_passwords(workdir: Path) -> str:
    """A password file with alice and bob (few PBKDF2 iterations: fast tests) and an
    API keys file with the key ``ci``; returns the key's secret."""
    exe = [sys.executable, "-m", "iotbroker", "passwd"]
    for user, password in (ALICE, BOB):
        subprocess.run([*exe, str(workdir / "passwords"), user, "-b", password,
                        "--iterations", "1000"], check=True, capture_output=True)
    out = subprocess.run([*exe, str(workdir / "api-keys"), "ci", "--generate"], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def admin_config(workdir: Path, extra: str = "", admin_extra: str = "",
                 storage: str = "memory", acl: Path | None = None) -> str:
    acl_line = f"  acl_file: {acl}\n" if acl is not None else ""
    return broker_config(storage=storage, extra=(
        f"auth:\n  password_file: {workdir / 'passwords'}\n  allow_anonymous: true\n"
        f"{acl_line}"
        f"admin:\n  enabled: true\n  port: 0\n  users: [alice]\n"
        f"  api_keys_file: {workdir / 'api-keys'}\n{admin_extra}{extra}"))


def admin_url(proc: BrokerProcess) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = _ADMIN.search(proc.log_text())
        if found:
            return f"{found.group(1)}://{found.group(2)}:{found.group(3)}"
        time.sleep(0.02)
    raise AssertionError(f"no admin line in the log:\n{proc.log_text()}")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _FromSource(urllib.request.HTTPHandler):
    """Plain HTTP from a chosen local address (any of 127.0.0.0/8 on loopback)."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(  # type: ignore[arg-type]
            http.client.HTTPConnection, source_address=(self.source, 0)), req)


class Http:
    """A tiny JSON client over urllib (a real HTTP/1.1 client on loopback); ``source``:
    the local address to connect from (e.g. ``127.0.0.2``: another client address)."""

    def __init__(self, base: str, auth: tuple[str, str] | None = ALICE,
                 bearer: str | None = None, source: str | None = None) -> None:
        self.base = base
        self.auth = auth
        self.bearer = bearer
        self._open = (urllib.request.urlopen if source is None
                      else urllib.request.build_opener(_FromSource(source)).open)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None, raw: bytes | None = None) -> Reply:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.bearer is not None:
            req.add_header("Authorization", f"Bearer {self.bearer}")
        elif self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with self._open(req, timeout=WAIT) as resp:
                return Reply(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers), exc.read())

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.request("POST", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Reply:
        return self.request("DELETE", path, **kw)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        reply = self.request(method, path, body)
        assert reply.status == status, (reply.status, reply.body)
        return reply.json() if reply.body else None


class Mqtt:
    """A paho-mqtt client (no automatic reconnect) with its callbacks on queues."""

    def __init__(self, proc: BrokerProcess, client_id: str, v5: bool = True,
                 username: str | None = None, password: str | None = None,
                 session_expiry: int | None = None, clean: bool = True,
                 will: tuple[str, bytes] | None = None) -> None:
        self.proc = proc
        self.v5 = v5
        self.clean = clean
        self.session_expiry = session_expiry
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                                  clean_session=None if v5 else clean,
                                  reconnect_on_failure=False)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1])
        self.connacks: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.disconnects: queue.Queue[Any] = queue.Queue()
        self.subacks: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: self.connacks.put(rc)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)

    def connect(self, expect_ok: bool = True) -> Any:
        kw: dict[str, Any] = {}
        if self.v5:
            props = None
            if self.session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
            kw = {"clean_start": self.clean, "properties": props}
        self.client.connect(self.proc.host, self.proc.port, keepalive=30, **kw)
        self.client.loop_start()
        rc = self.connacks.get(timeout=WAIT)
        if expect_ok:
            assert not rc.is_failure, f"CONNACK refused: {rc}"
        return rc

    def subscribe(self, topic: str, qos: int = 0) -> None:
        self.client.subscribe(topic, qos)
        self.subacks.get(timeout=WAIT)

    def close(self) -> None:
        if self.client.is_connected():
            self.client.disconnect()
        self.client.loop_stop()
