"""Refusals an operator can see (issue 12), against the real broker over real sockets:

* connect, disconnect and refused-CONNECT lines name the username and the TLS client
  certificate's subject, in text and as JSON fields;
* a failed TLS handshake (plaintext on a TLS port, no client certificate where one is
  required, a certificate from an unknown CA, a TLS version below ``min_version``) is
  one line naming the peer and the reason, and counts in
  ``iotbroker_tls_handshake_failures_total{reason=...}``; on uvloop and asyncio's loop;
* ``logging.level: DEBUG`` logs every packet with its direction; INFO logs none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from iotbroker.codec.encode import encode_packet
from iotbroker.codec.packets import Connect, Properties, PubAck
from iotbroker.metrics import Metrics
from iotbroker.server import tlsfailures
from iotbroker.server.listeners import cert_subject
from iotbroker.server.tlsfailures import HandshakeFailures, classify
from tests.helpers.broker_process import QUIET_PACKETS, BrokerProcess
from tests.helpers.rawclient import RawClient
from tests.server.clients import (
    WAIT,
    TlsRawClient,
    client_context,
    config,
    listener,
    tls_block,
)
from tests.server.pki import Pki, make_pki
from tests.server.test_metrics_http import scrape, value

METRICS = "metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n"


def _wait_for(broker: BrokerProcess, pattern: str, timeout: float = WAIT) -> re.Match[str]:
    """The first match of ``pattern`` in the broker's log, waiting for it (bounded)."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        found = regex.search(broker.log_text())
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in the log:\n{broker.log_text()[-3000:]}")


def _passwd(workdir: Path, user: str, password: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "iotbroker", "passwd", str(workdir / "passwd"), user,
         "-b", password, "--iterations", "1000"],
        check=True, capture_output=True, timeout=30,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), client_cn="dev-17")


def _broker(pki: Pki, workdir: Path, loop: str = "auto", log_format: str = "text",
            level: str = "INFO") -> BrokerProcess:
    _passwd(workdir, "alice", "alice-pw")
    listeners = (
        listener("plain", "tcp")
        + listener("mutual", "tls", tls_block(pki, cafile=pki.ca, require_client_cert=True))
        + listener("tls13", "tls", tls_block(pki, min_version="TLSv1.3"))
        + listener("wss", "wss", tls_block(pki, cafile=pki.ca, require_client_cert=True),
                   path="/mqtt")
    )
    extra = (f"loop: {loop}\nauth:\n  allow_anonymous: true\n  password_file: passwd\n"
             f"{METRICS}")
    text = config(listeners, extra).replace(
        "logging:\n  level: DEBUG\n" + QUIET_PACKETS,
        f"logging:\n  level: {level}\n  format: {log_format}\n")
    return BrokerProcess(workdir, text).start()


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def broker(request: pytest.FixtureRequest, pki: Pki,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = _broker(pki, tmp_path_factory.mktemp(f"vis-{request.param}"), loop=request.param)
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log_text()


# ------------------------------------------------------------- identity fields
def test_lines_name_the_username(broker: BrokerProcess) -> None:
    c = RawClient(broker.host, broker.ports["plain"])
    assert c.connect("vis-alice", username="alice", password=b"alice-pw").reason_code == 0
    c.disconnect()
    line = _wait_for(broker, r".*client 'vis-alice' connected from .*").group()
    assert "username='alice']" in line
    assert "username='alice']" in _wait_for(broker, r".*client 'vis-alice' disconnected.*").group()
    bad = RawClient(broker.host, broker.ports["plain"])
    assert bad.connect("vis-mallory", username="alice", password=b"wrong").reason_code != 0
    bad.close()
    refused = _wait_for(broker, r".*refused CONNECT .*'vis-mallory'.*").group()
    assert "username='alice']" in refused
    lost = RawClient(broker.host, broker.ports["plain"])
    lost.connect("vis-lost", username="alice", password=b"alice-pw")
    lost.close()  # no DISCONNECT: the "connection lost" line, after the session is gone
    assert "username='alice']" in _wait_for(broker, r".*'vis-lost'.*connection lost.*").group()


def test_lines_name_the_certificate_subject(broker: BrokerProcess, pki: Pki) -> None:
    ctx = client_context(pki, pki.client_cert, pki.client_key)
    c = TlsRawClient("127.0.0.1", broker.ports["mutual"], ctx)
    assert c.connect("vis-cert", username="alice", password=b"alice-pw").reason_code == 0
    c.disconnect()
    line = _wait_for(broker, r".*client 'vis-cert' disconnected.*").group()
    assert line.endswith("username='alice' cert='CN=dev-17,O=iotbroker tests']")


def test_wss_lines_name_the_peer_and_certificate_subject(broker: BrokerProcess,
                                                         pki: Pki) -> None:
    """wss: the MQTT side sees the TLS transport under the WebSocket adapter: the
    client's address and its certificate subject are on its lines, as on ``tls``."""
    ctx = client_context(pki, pki.client_cert, pki.client_key)
    url = f"wss://127.0.0.1:{broker.ports['wss']}/mqtt"
    with ws_connect(url, subprotocols=[Subprotocol("mqtt")], ssl=ctx,
                    open_timeout=WAIT) as ws:
        local_port = ws.local_address[1]
        ws.send(encode_packet(Connect(client_id="vis-wss", username="alice",
                                      password=b"alice-pw"), 4))
        assert ws.recv(timeout=WAIT) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        ws.send(b"\xe0\x00")  # DISCONNECT
    line = _wait_for(broker, r".*client 'vis-wss' connected from .*").group()
    assert f"127.0.0.1:{local_port}" in line
    line = _wait_for(broker, r".*client 'vis-wss' disconnected.*").group()
    assert line.endswith("username='alice' cert='CN=dev-17,O=iotbroker tests']")


def test_json_lines_carry_username_and_cert(pki: Pki, tmp_path: Path) -> None:
    proc = _broker(pki, tmp_path, log_format="json")
    try:
        ctx = client_context(pki, pki.client_cert, pki.client_key)
        c = TlsRawClient("127.0.0.1", proc.ports["mutual"], ctx)
        c.connect("vis-json", username="alice", password=b"alice-pw")
        c.disconnect()
        _wait_for(proc, "vis-json' disconnected")
    finally:
        proc.stop()
    mine = [json.loads(line) for line in proc.log_text().splitlines()
            if line.startswith("{") and "vis-json" in line]
    assert len(mine) == 2
    for entry in mine:
        assert entry["username"] == "alice"
        assert entry["cert"] == "CN=dev-17,O=iotbroker tests"


def test_cert_subject_is_rfc4514() -> None:
    peercert = {"subject": ((("organizationName", "Fleet, Inc."),), (("commonName", "dev-17"),))}
    assert cert_subject(peercert) == "CN=dev-17,O=Fleet\\, Inc."
    assert cert_subject({}) is None
    assert cert_subject(None) is None


# -------------------------------------------------------------- TLS handshakes
def _failure_line(broker: BrokerProcess, port: int, listener_name: str, reason: str) -> str:
    line = _wait_for(broker, rf".*TLS handshake from 127\.0\.0\.1:{port} failed .*").group()
    assert f"(listener '{listener_name}')" in line
    assert line.endswith(f"reason={reason}")
    time.sleep(0.2)
    assert broker.log_text().count(f"127.0.0.1:{port} failed") == 1
    return line


def _handshake(port: int, ctx: ssl.SSLContext) -> int:
    """Try a TLS handshake (and a read: TLS 1.3 reports a refused client certificate
    after the client's side of the handshake); returns the client's port."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    local_port: int = raw.getsockname()[1]
    try:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(encode_packet(Connect(client_id="x", properties=Properties()), 4))
            tls.recv(10)
    except (ssl.SSLError, OSError):
        pass
    finally:
        raw.close()
    return local_port


def _counter(broker: BrokerProcess, reason: str) -> float:
    return value(scrape(broker), "iotbroker_tls_handshake_failures_total", reason=reason)


def test_plaintext_on_a_tls_port(broker: BrokerProcess) -> None:
    before = _counter(broker, "not_tls")
    sock = socket.create_connection(("127.0.0.1", broker.ports["mutual"]), timeout=WAIT)
    sock.sendall(encode_packet(Connect(client_id="plain", properties=Properties()), 4))
    line = _failure_line(broker, sock.getsockname()[1], "mutual", "not_tls")
    assert "not TLS" in line
    sock.close()
    assert _counter(broker, "not_tls") == before + 1


def test_no_client_certificate(broker: BrokerProcess, pki: Pki) -> None:
    before = _counter(broker, "no_client_cert")
    raw = _handshake(broker.ports["mutual"], client_context(pki))
    _failure_line(broker, raw, "mutual", "no_client_cert")
    assert _counter(broker, "no_client_cert") == before + 1


def test_untrusted_client_certificate(broker: BrokerProcess, pki: Pki) -> None:
    before = _counter(broker, "untrusted_cert")
    raw = _handshake(broker.ports["mutual"],
                     client_context(pki, pki.rogue_cert, pki.rogue_key))
    line = _failure_line(broker, raw, "mutual", "untrusted_cert")
    assert "CERTIFICATE_VERIFY_FAILED" in line
    assert _counter(broker, "untrusted_cert") == before + 1


def test_old_protocol_version(broker: BrokerProcess, pki: Pki) -> None:
    before = _counter(broker, "protocol_version")
    raw = _handshake(broker.ports["tls13"],
                     client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))
    _failure_line(broker, raw, "tls13", "protocol_version")
    assert _counter(broker, "protocol_version") == before + 1


def test_wss_handshake_failures_are_counted(broker: BrokerProcess, pki: Pki) -> None:
    """wss: the TLS handshake runs in the listener's own accept loop, as on ``tls``:
    refusals are logged with the peer address and the reason, and counted."""
    before = _counter(broker, "no_client_cert"), _counter(broker, "not_tls")
    raw = _handshake(broker.ports["wss"], client_context(pki))
    _failure_line(broker, raw, "wss", "no_client_cert")
    sock = socket.create_connection(("127.0.0.1", broker.ports["wss"]), timeout=WAIT)
    sock.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
    line = _failure_line(broker, sock.getsockname()[1], "wss", "not_tls")
    assert "not TLS" in line
    sock.close()
    assert (_counter(broker, "no_client_cert"), _counter(broker, "not_tls")) == (
        before[0] + 1, before[1] + 1)


def test_wss_client_that_leaves_mid_handshake_is_seen(broker: BrokerProcess) -> None:
    """wss: a client that closes during the TLS handshake is logged with its peer
    (``closed``), which the websockets server did not see."""
    before = _counter(broker, "closed")
    sock = socket.create_connection(("127.0.0.1", broker.ports["wss"]), timeout=WAIT)
    port = sock.getsockname()[1]
    sock.close()
    _failure_line(broker, port, "wss", "closed")
    assert _counter(broker, "closed") == before + 1


def test_a_good_client_still_connects(broker: BrokerProcess, pki: Pki) -> None:
    ctx = client_context(pki, pki.client_cert, pki.client_key)
    c = TlsRawClient("127.0.0.1", broker.ports["mutual"], ctx)
    assert c.connect("vis-good").reason_code == 0
    c.publish("vis/good", b"x", qos=1)
    c.disconnect()


def test_failure_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        metrics = Metrics()
        failures = HandshakeFailures("l", metrics, loop)
        with caplog.at_level(logging.INFO, logger="iotbroker.tls"):
            for n in range(tlsfailures.LINES_PER_WINDOW + 5):
                failures.report(f"10.0.0.1:{n}", ssl.SSLError(1, "x"))
            failures.close()
        lines = [r.getMessage() for r in caplog.records if r.name == "iotbroker.tls"]
        assert len(lines) == tlsfailures.LINES_PER_WINDOW + 1
        assert lines[-1].startswith("5 more failed TLS handshakes on listener 'l'")
        assert metrics.tls_handshake_failures_other == tlsfailures.LINES_PER_WINDOW + 5
    finally:
        loop.close()


def test_classify() -> None:
    assert classify(ConnectionResetError())[0] == "closed"
    assert classify(ConnectionAbortedError("SSL handshake is taking longer"))[0] == "timeout"
    assert classify(ValueError("?"))[0] == "other"


# ----------------------------------------------------------------- DEBUG lines
def _exchange(broker: BrokerProcess) -> None:
    c = RawClient(broker.host, broker.ports["plain"])
    c.connect("vis-debug")
    ack = c.publish("vis/debug/t", b"12345", qos=1)
    assert isinstance(ack, PubAck)
    c.disconnect()
    _wait_for(broker, "'vis-debug' disconnected")


def test_debug_logs_every_packet_with_its_direction(pki: Pki, tmp_path: Path) -> None:
    proc = _broker(pki, tmp_path, level="DEBUG")
    try:
        _exchange(proc)
        time.sleep(0.2)
    finally:
        proc.stop()
    lines = [line for line in proc.log_text().splitlines() if "iotbroker.packets" in line]
    inbound = next(line for line in lines if "< PUBLISH" in line)
    assert "client 'vis-debug'" in inbound
    assert "qos=1" in inbound and "topic='vis/debug/t'" in inbound
    assert "payload=5" in inbound and re.search(r"id=\d+", inbound)
    outbound = next(line for line in lines if "> PUBACK" in line)
    assert "client 'vis-debug'" in outbound and re.search(r"id=\d+", outbound)
    assert any("< CONNECT" in line for line in lines)
    assert any("> CONNACK" in line for line in lines)
    assert any("< DISCONNECT" in line for line in lines)


def test_info_logs_no_packet_lines(broker: BrokerProcess) -> None:
    _exchange(broker)
    assert "iotbroker.packets" not in broker.log_text()


def test_sighup_turns_packet_lines_on(pki: Pki, tmp_path: Path) -> None:
    proc = _broker(pki, tmp_path)
    try:
        _exchange(proc)
        assert "iotbroker.packets" not in proc.log_text()
        proc.config_path.write_text(proc.config_path.read_text().replace(
            "level: INFO", "level: DEBUG"))
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        _wait_for(proc, "configuration reloaded")
        _exchange(proc)
        _wait_for(proc, r"iotbroker\.packets: > PUBACK client 'vis-debug'")
    finally:
        proc.stop()
