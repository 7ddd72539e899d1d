"""Issue 18: a run where no device could connect fails and says why; ``iotsim sensors``
takes credentials and TLS files like mosquitto_pub, and explains TLS and auth failures.

Each run is short (3 sensors, 1 s) against a real broker: iotbroker (the project's
fixtures) and, for credentials, mosquitto with a password file as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from iotsim.cli import main

from tests.helpers.broker_process import BrokerProcess
from tests.server.clients import config, listener, tls_block
from tests.server.pki import make_pki
from tests.sim.conftest import Mosquitto, free_port

SHORT = ["--devices", "3", "--rate", "10/s", "--duration", "0.5s", "--quiet"]


def _sensors(capsys: pytest.CaptureFixture[str], tmp_path: Path, port: int,
             *extra: str) -> tuple[int, str, dict[str, Any], str]:
    """Run ``iotsim sensors`` in-process; (exit code, console text, report, html)."""
    out = tmp_path / f"rep-{len(list(tmp_path.glob('rep-*')))}"
    code = main(["sensors", *SHORT, "--host", "127.0.0.1", "--port", str(port),
                 "--report", str(out), *extra])
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    return code, text, report, (out / "report.html").read_text()


def test_no_device_connected_is_a_failure_naming_the_errors(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, text, report, page = _sensors(capsys, tmp_path, free_port())
    assert code == 1
    assert report["ok"] is False
    assert report["devices"]["connected"] == 0
    ce = report["connect_errors"]
    assert ce["by_kind"]["refused"] == ce["total"] >= 3
    assert ce["errors"][0]["error"] == "connect_econnrefused"
    reason = report["verdict"]["reasons"][0]
    assert reason.startswith("no device connected (3 tried; connect errors: refused ")
    assert "verdict" in text and "FAILED: no device connected" in text
    assert "OK" not in text.split("verdict", 1)[1]
    assert "FAILED" in page and "connect_econnrefused" in page and "verdict OK" not in page


# ----------------------------------------------------------------------- credentials
def _iotbroker_with_passwords(make_broker: Callable[..., BrokerProcess],
                              tmp_path: Path) -> int:
    passwd = tmp_path / "passwd"
    subprocess.run([sys.executable, "-m", "iotbroker", "passwd", str(passwd), "alice",
                    "-b", "secret", "--iterations", "1000"], check=True, capture_output=True)
    extra = f"auth:\n  password_file: {passwd}\n  allow_anonymous: false\n"
    return make_broker(config(listener("tcp", "tcp"), extra)).port


def _mosquitto_with_passwords(make_mosquitto: Callable[..., Mosquitto],
                              tmp_path: Path) -> int:
    passwd = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "alice", "secret"],
                   check=True, capture_output=True)
    # As root, mosquitto drops to its own user, which cannot read pytest's 0700 tmp dir.
    user = "user root\n" if os.geteuid() == 0 else ""
    return make_mosquitto(f"{user}allow_anonymous false\npassword_file {passwd}\n").port


@pytest.mark.parametrize("broker_kind", ["iotbroker", "mosquitto"])
def test_username_and_password(broker_kind: str, request: pytest.FixtureRequest,
                               capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if broker_kind == "iotbroker":
        port = _iotbroker_with_passwords(request.getfixturevalue("make_broker"), tmp_path)
    else:
        port = _mosquitto_with_passwords(request.getfixturevalue("make_mosquitto"), tmp_path)
    code, text, report, _ = _sensors(capsys, tmp_path, port, "--username", "alice",
                                     "--password", "secret")
    assert code == 0, text
    assert report["devices"]["connected"] == 3 and report["ok"]
    assert report["messages"]["delivered"] > 0

    code, text, report, page = _sensors(capsys, tmp_path, port, "--username", "alice",
                                        "--password", "wrong")
    assert code == 1
    ce = report["connect_errors"]
    # iotbroker answers repeated failures with "server unavailable" (its failed-login
    # limit): auth is still the first and most frequent kind.
    assert ce["errors"][0]["kind"] == "auth" and set(ce["by_kind"]) <= {
        "auth", "refused_by_broker"}, ce
    why = ce["errors"][0]["why"]
    assert ("bad user name or password" in why or "not authorized" in why), why
    assert "--username" in why or "credentials" in why
    assert "auth" in report["verdict"]["reasons"][0]
    assert "auth" in text and "FAILED" in text
    assert ce["errors"][0]["error"] in page


# ------------------------------------------------------------------------------- TLS
def test_tls_options_and_why_tls_failed(make_broker: Callable[..., BrokerProcess],
                                        capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    mutual = tls_block(pki, cafile=str(pki.ca), require_client_cert=True)
    b = make_broker(config(listener("tls", "tls", tls_block(pki))
                           + listener("mtls", "tls", mutual) + listener("plain", "tcp")))
    tls, mtls, plain = b.ports["tls"], b.ports["mtls"], b.ports["plain"]

    code, text, report, _ = _sensors(capsys, tmp_path, tls, "--cafile", str(pki.ca))
    assert code == 0 and report["run"]["tls"], text
    code, text, report, _ = _sensors(capsys, tmp_path, tls, "--tls-insecure")
    assert code == 0, text

    # The broker's certificate is not trusted by the system CAs.
    code, text, report, _ = _sensors(capsys, tmp_path, tls, "--tls")
    assert code == 1
    error = report["connect_errors"]["errors"][0]
    assert error["error"] == "connect_tls_certificate_verify_failed"
    assert "--cafile" in error["why"] and "certificate" in error["why"]

    # A client certificate is required: without one, then with one.
    code, text, report, _ = _sensors(capsys, tmp_path, mtls, "--cafile", str(pki.ca))
    assert code == 1
    assert report["connect_errors"]["by_kind"].keys() <= {"tls", "closed"}
    assert any("client certificate" in e["why"] for e in report["connect_errors"]["errors"])
    code, text, report, _ = _sensors(capsys, tmp_path, mtls, "--cafile", str(pki.ca),
                                     "--cert", str(pki.client_cert), "--key",
                                     str(pki.client_key))
    assert code == 0, text

    # TLS spoken to a plain MQTT port.
    code, text, report, _ = _sensors(capsys, tmp_path, plain, "--tls-insecure")
    assert code == 1
    assert "does not speak TLS" in report["connect_errors"]["errors"][0]["why"]


def test_cert_without_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sensors", "--cert", "x.pem"]) == 2
    assert "--cert/--key" in capsys.readouterr().err
