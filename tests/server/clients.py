"""Clients and config snippets shared by the listener, $SYS and metrics tests.

Every wait is bounded (``WAIT``); a broker that does not answer fails the test.
"""

from __future__ import annotations

import queue
import re
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.broker_process import QUIET_PACKETS, BrokerProcess
from tests.helpers.rawclient import Closed, RawClient
from tests.server.pki import Pki

WAIT = 5.0

_METRICS = re.compile(r"metrics listening on (\S+):(\d+)")


def config(listeners: str, extra: str = "") -> str:
    """A broker config: the given listeners YAML, memory storage, no $SYS unless asked."""
    sys_topics = "" if "sys_topics:" in extra else "sys_topics:\n  enabled: false\n"
    return (f"listeners:\n{listeners}storage:\n  backend: memory\nlogging:\n  level: DEBUG\n"
            f"{QUIET_PACKETS}{sys_topics}{extra}")


def listener(name: str, kind: str, tls: str = "", path: str = "") -> str:
    """One ``listeners`` entry on 127.0.0.1, port 0."""
    text = f"  - name: {name}\n    type: {kind}\n    host: 127.0.0.1\n    port: 0\n"
    if path:
        text += f"    path: {path}\n"
    if tls:
        text += "    tls:\n" + "".join(f"      {line}\n" for line in tls.strip().splitlines())
    return text


def tls_block(pki: Pki, **options: object) -> str:
    lines = [f"certfile: {pki.server_cert}", f"keyfile: {pki.server_key}"]
    for key, value in options.items():
        text = ("true" if value else "false") if isinstance(value, bool) else value
        lines.append(f"{key}: {text}")
    return "\n".join(lines)


def metrics_address(proc: BrokerProcess, timeout: float = WAIT) -> tuple[str, int]:
    """The metrics endpoint from the ``metrics listening on HOST:PORT`` log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _METRICS.search(proc.log_text())
        if found:
            return found.group(1), int(found.group(2))
        time.sleep(0.02)
    raise AssertionError(f"no metrics line in the log:\n{proc.log_text()}")


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None,
                   max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


class TlsRawClient(RawClient):
    """:class:`RawClient` over TLS."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, version: int = 4,
                 timeout: float = WAIT) -> None:
        super().__init__(host, port, version, timeout)
        self.sock = context.wrap_socket(self.sock, server_hostname=host)


class Paho:
    """A paho-mqtt 2.x client (callback API v2) with its callbacks put on queues."""

    def __init__(self, host: str, port: int, client_id: str, *,
                 protocol: int = mqtt.MQTTv311, transport: str = "tcp",
                 path: str | None = None, tls: dict[str, Any] | None = None) -> None:
        self.host, self.port = host, port
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, transport=transport)  # type: ignore[arg-type]
        if path is not None:
            self.client.ws_set_options(path=path)
        if tls is not None:
            self.client.tls_set(**tls)
        self.connacks: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[tuple[int, list[Any]]] = queue.Queue()
        self.pubacks: queue.Queue[tuple[int, Any]] = queue.Queue()
        self.disconnects: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connacks.put(rc)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put((mid, rcs))
        self.client.on_publish = lambda c, u, mid, rc, props: self.pubacks.put((mid, rc))
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.started = False

    def connect(self, username: str | None = None, password: str | None = None) -> Paho:
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self.started = True
        rc = self.connacks.get(timeout=WAIT)
        assert not rc.is_failure, f"CONNACK refused: {rc}"
        return self

    def subscribe(self, topic: str, qos: int = 0) -> list[Any]:
        result, mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        got_mid, rcs = self.subacks.get(timeout=WAIT)
        assert got_mid == mid
        return rcs

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
        """Publish; for QoS > 0 wait for the handshake and return its reason code."""
        info = self.client.publish(topic, payload, qos, retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        while True:
            mid, rc = self.pubacks.get(timeout=WAIT)
            if mid == info.mid:
                return rc

    def receive(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None

    def stop(self) -> None:
        if self.started:
            self.started = False
            self.client.disconnect()
            self.client.loop_stop()


def paho_factory(clients: list[Paho]) -> Callable[..., Paho]:
    def factory(*args: Any, **kwargs: Any) -> Paho:
        client = Paho(*args, **kwargs)
        clients.append(client)
        return client

    return factory


def tls_refused(host: str, port: int, context: ssl.SSLContext) -> str:
    """Try an MQTT CONNECT over TLS; return how it failed (AssertionError on CONNACK)."""
    try:
        client = TlsRawClient(host, port, context)
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        return f"handshake: {exc}"
    try:
        client.connect("should-not-connect")
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        return f"after handshake: {exc}"
    except Closed:
        return "closed"
    finally:
        client.close()
    raise AssertionError("the broker accepted a client it should have refused")


def run_tool(args: list[str], timeout: float = WAIT + 5) -> subprocess.CompletedProcess[str]:
    """Run mosquitto_pub/sub (bounded) and return its result."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)

