"""A bridge over TLS with client certificates made by the openssl command line, to
mosquitto requiring them (MQTT 5.0 §5.4.9, TLS); a wrong CA fails with a clear log line."""

from __future__ import annotations

import getpass
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bridge.conftest import (
    Mosquitto,
    bridge_yaml,
    collect,
    config_with_bridges,
    free_port,
    wait_for_log,
)
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient

MakeBroker = Callable[..., BrokerProcess]
MakeMosquitto = Callable[..., Mosquitto]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", cwd=d)


def _signed(d: Path, ca: str, name: str, san: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
             f"{name}.ext", cwd=d)
    (d / f"{name}.key").chmod(0o600)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (scripts/test.sh installs it)")
    d = tmp_path / "pki"
    d.mkdir()
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _signed(d, "ca", "server", "IP:127.0.0.1,DNS:localhost")
    _signed(d, "ca", "gateway", "DNS:gateway")
    return d


def _tls_mosquitto(make_mosquitto: MakeMosquitto, pki: Path, plain: int = 0) -> Mosquitto:
    """mosquitto whose first listener requires TLS client certificates signed by ``ca``;
    ``plain``: a second, plain listener for the test's own clients."""
    second = f"listener {plain} 127.0.0.1\n" if plain else ""
    return make_mosquitto(f"cafile {pki}/ca.pem\ncertfile {pki}/server.pem\n"
                          f"keyfile {pki}/server.key\nrequire_certificate true\n"
                          f"user {getpass.getuser()}\n{second}")


def test_bridge_over_mutual_tls(make_broker: MakeBroker, make_mosquitto: MakeMosquitto,
                                pki: Path) -> None:
    """Both directions cross a TLS link with a client certificate."""
    plain = free_port()
    mosq = _tls_mosquitto(make_mosquitto, pki, plain)
    tls = (f"    tls: {{cafile: {pki}/ca.pem, certfile: {pki}/gateway.pem, "
           f"keyfile: {pki}/gateway.key}}\n")
    gw = make_broker(config_with_bridges(bridge_yaml(
        "cloud", mosq.port, ['{pattern: "t/#", direction: both, qos: 1, remote_prefix: "gw/"}'],
        extra=tls)))
    wait_for_log(gw, "bridge 'cloud': connected to")
    with RawClient(gw.host, gw.port, version=5) as local, \
            RawClient("127.0.0.1", plain, version=5) as remote:
        local.connect("local")
        local.subscribe("t/#", qos=1, no_local=True)
        remote.connect("remote")
        remote.subscribe("gw/#", qos=1, no_local=True)
        local.publish("t/up", b"over tls", qos=1)
        assert [(p.topic, p.payload) for p in collect(remote, 1)] == [("gw/t/up", b"over tls")]
        remote.publish("gw/t/down", b"back", qos=1)
        assert [(p.topic, p.payload) for p in collect(local, 1)] == [("t/down", b"back")]


def test_wrong_ca_fails_with_a_clear_log_line(make_broker: MakeBroker,
                                              make_mosquitto: MakeMosquitto,
                                              pki: Path) -> None:
    mosq = _tls_mosquitto(make_mosquitto, pki)
    tls = (f"    tls: {{cafile: {pki}/rogue-ca.pem, certfile: {pki}/gateway.pem, "
           f"keyfile: {pki}/gateway.key}}\n")
    gw = make_broker(config_with_bridges(bridge_yaml(
        "cloud", mosq.port, ['{pattern: "t/#", direction: out}'], extra=tls)))
    wait_for_log(gw, f"TLS: certificate of 127.0.0.1:{mosq.port} not accepted: ")
    assert "(CERTIFICATE_VERIFY_FAILED)" in gw.log_text()
    assert "connected to" not in gw.log_text()


def test_without_client_certificate_the_remote_refuses(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto, pki: Path) -> None:
    mosq = _tls_mosquitto(make_mosquitto, pki)
    gw = make_broker(config_with_bridges(bridge_yaml(
        "cloud", mosq.port, ['{pattern: "t/#", direction: out}'],
        extra=f"    tls: {{cafile: {pki}/ca.pem}}\n")))
    wait_for_log(gw, "TLS: the remote ended the session: TLSV13_ALERT_CERTIFICATE_REQUIRED")
    assert "connected to" not in gw.log_text()
