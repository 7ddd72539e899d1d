"""Logs say who connected and who was disconnected and why; JSON logs carry the
connection id, client id and remote address as fields."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import RawClient


def _wait_for(broker: BrokerProcess, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = broker.log_text()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{broker.log_text()[-2000:]}")


def test_text_log_names_client_peer_and_reason(make_broker: Callable[..., BrokerProcess]) -> None:
    broker = make_broker(broker_config())
    c = RawClient(broker.host, broker.port)
    c.connect("log-text-client")
    port = c.sock.getsockname()[1]
    c.disconnect()
    log = _wait_for(broker, "client 'log-text-client' disconnected")
    assert f"client 'log-text-client' connected from 127.0.0.1:{port}" in log
    assert "[conn " in log


def test_json_log_lines_carry_connection_fields(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    text = broker_config().replace("logging:\n  level: DEBUG\n",
                                   "logging:\n  level: INFO\n  format: json\n")
    broker = make_broker(text)
    c = RawClient(broker.host, broker.port)
    c.connect("log-json-client")
    port = c.sock.getsockname()[1]
    c.close()  # no DISCONNECT: "connection lost"
    _wait_for(broker, "connection lost")
    records = [json.loads(line) for line in broker.log_text().splitlines()
               if line.startswith("{")]
    assert records, "no JSON log lines"
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    mine = [r for r in records if r.get("client_id") == "log-json-client"]
    assert {r["peer"] for r in mine} == {f"127.0.0.1:{port}"}
    assert len({r["conn_id"] for r in mine}) == 1
    assert any("connected from" in r["message"] for r in mine)
    assert any("connection lost" in r["message"] for r in mine)
