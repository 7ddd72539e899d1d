"""Logs say who connected and who was disconnected and why; JSON logs carry the
connection id, client id and remote address as fields."""

from __future__ import annotations

import datetime
import io
import json
import logging
import re
import time
from collections.abc import Callable

from iotbroker.config import LoggingConfig
from iotbroker.server.logsetup import (
    TEXT_FORMAT,
    JsonFormatter,
    TextFormatter,
    identity_fields,
    log_connection,
    set_worker,
    setup_logging,
)
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
    # Issue 18: milliseconds and the UTC offset, on the record path and the fast path.
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")
    assert all(iso.match(r["time"]) for r in records), [r["time"] for r in records]
    for r in records:
        parsed = datetime.datetime.fromisoformat(r["time"])
        assert parsed.tzinfo is not None
        assert abs(parsed.timestamp() - time.time()) < 60
    mine = [r for r in records if r.get("client_id") == "log-json-client"]
    assert {r["peer"] for r in mine} == {f"127.0.0.1:{port}"}
    assert len({r["conn_id"] for r in mine}) == 1
    assert any("connected from" in r["message"] for r in mine)
    assert any("connection lost" in r["message"] for r in mine)



class _Conn:
    """The fields log_connection reads (ClientProtocol has them)."""

    conn_id = 7
    client_id = "fast-client"
    peer = "127.0.0.1:4242"
    username: str | None = None
    cert_subject: str | None = None


class _TlsConn(_Conn):
    """A client with a username and a TLS client certificate (issue 12)."""

    username = "alice"
    cert_subject = "CN=dev-17,O=Fleet"


def _one_line_each_way(json_format: bool, conn: _Conn | None = None) -> tuple[str, str]:
    """The same connection line through the fast path and through a LogRecord (a
    filter on the handler forces the record path), as the broker's handler writes
    them; time stamps are replaced by ``<length>``."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    make_record = logging.getLogRecordFactory()
    records: list[logging.LogRecord] = []

    def counting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        records.append(record)
        return record

    logging.setLogRecordFactory(counting_factory)
    conn = conn or _Conn()
    try:
        setup_logging(LoggingConfig(level="INFO", format="json" if json_format else "text"))
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        logger = logging.getLogger("iotbroker.broker")
        log_connection(logger, logging.INFO, conn, "client %r connected from %s",
                       "fast-client", "127.0.0.1:4242")
        assert records == [], "the fast path made a LogRecord"
        handler.addFilter(lambda record: True)
        log_connection(logger, logging.INFO, conn, "client %r connected from %s",
                       "fast-client", "127.0.0.1:4242")
        assert len(records) == 1, "a handler filter must get a real record"
    finally:
        logging.setLogRecordFactory(make_record)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    fast, stdlib = stream.getvalue().splitlines()
    stamp = re.compile(r'"time": "[^"]*"' if json_format else r"^\S+ \S+")
    return (stamp.sub(lambda m: f"<{len(m.group())}>", fast),
            stamp.sub(lambda m: f"<{len(m.group())}>", stdlib))


def test_connection_lines_fast_path_writes_what_a_record_would_text() -> None:
    """Connect/disconnect lines skip LogRecord when only the broker's handler sees
    them; the text line must be the formatter's, byte for byte (time aside)."""
    fast, stdlib = _one_line_each_way(json_format=False)
    assert fast == stdlib
    assert fast == ("<23> INFO    iotbroker.broker: client 'fast-client' connected from "
                    "127.0.0.1:4242 [conn 7]")


def test_connection_lines_fast_path_writes_what_a_record_would_json() -> None:
    """The same for JSON lines: same keys in the same order, same values."""
    fast, stdlib = _one_line_each_way(json_format=True)
    assert fast == stdlib
    assert json.loads(fast.replace("<39>", '"time": "t"')) == {
        "time": "t", "level": "INFO", "logger": "iotbroker.broker",
        "message": "client 'fast-client' connected from 127.0.0.1:4242",
        "conn_id": 7, "client_id": "fast-client", "peer": "127.0.0.1:4242"}


def test_identity_fields_fast_path_and_record_agree_text() -> None:
    """Issue 12: the username and certificate subject are on the line, quoted."""
    fast, stdlib = _one_line_each_way(json_format=False, conn=_TlsConn())
    assert fast == stdlib
    assert fast.endswith("127.0.0.1:4242 [conn 7 username='alice' cert='CN=dev-17,O=Fleet']")


def test_identity_fields_fast_path_and_record_agree_json() -> None:
    fast, stdlib = _one_line_each_way(json_format=True, conn=_TlsConn())
    assert fast == stdlib
    entry = json.loads(fast.replace("<39>", '"time": "t"'))
    assert entry["username"] == "alice"
    assert entry["cert"] == "CN=dev-17,O=Fleet"


def test_a_worker_names_itself_on_every_line_text() -> None:
    """Issue 14: a worker of ``--workers`` puts ``[wN]`` on each line, fast path and
    LogRecord alike, so the supervisor's interleaved output says who wrote what."""
    set_worker(3)
    try:
        fast, stdlib = _one_line_each_way(json_format=False)
    finally:
        set_worker(None)
    assert fast == stdlib
    assert fast == ("<23> INFO    [w3] iotbroker.broker: client 'fast-client' connected "
                    "from 127.0.0.1:4242 [conn 7]")
    plain, _ = _one_line_each_way(json_format=False)  # not a worker: no tag
    assert "[w" not in plain


def test_a_worker_names_itself_on_every_line_json() -> None:
    set_worker(0)
    try:
        fast, stdlib = _one_line_each_way(json_format=True)
    finally:
        set_worker(None)
    assert fast == stdlib
    assert json.loads(fast.replace("<39>", '"time": "t"'))["worker"] == 0
    plain, _ = _one_line_each_way(json_format=True)
    assert "worker" not in json.loads(plain.replace("<39>", '"time": "t"'))


def test_a_username_cannot_forge_a_log_line() -> None:
    class Evil(_Conn):
        username = "bob']\nINFO forged"

    fast, stdlib = _one_line_each_way(json_format=False, conn=Evil())
    assert fast == stdlib
    assert "\n" not in fast and "username=\"bob']\\nINFO forged\"" in fast


def test_identity_fields_without_a_connection() -> None:
    """A line about a client whose connection is gone (e.g. its will) still says who."""
    formatter = TextFormatter(TEXT_FORMAT)
    record = logging.LogRecord("iotbroker.broker", logging.INFO, "", 0, "will denied", (),
                               None)
    record.__dict__.update(identity_fields("dev-17", "alice", "CN=dev-17"))
    assert formatter.format(record).endswith("will denied [username='alice' cert='CN=dev-17']")
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["client_id"], entry["username"], entry["cert"]) == ("dev-17", "alice",
                                                                       "CN=dev-17")
    assert "conn_id" not in entry
    plain = logging.LogRecord("iotbroker.broker", logging.INFO, "", 0, "plain", (), None)
    assert formatter.format(plain).endswith("plain")
