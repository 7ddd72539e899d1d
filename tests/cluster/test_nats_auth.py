"""Credentials and TLS towards NATS (``cluster.user``/``password``, ``cluster.token``,
``cluster.nats_tls``; docs/configuration.md): a node joins a nats-server that requires
TLS with a client certificate and a password, or a token; with a wrong password or
token it is refused, says so (a log line naming the keys NATS refused) and serves its
local clients only (degraded)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import node_config, wait_for_log
from tests.cluster.test_live_routing import wait_until_routed
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.rawclient import RawClient
from tests.interop.test_paho import Paho
from tests.server.pki import Pki, make_pki

TOKEN = "t0ken-for-the-nodes"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[NatsCluster, Pki]]:
    pki = make_pki(tmp_path / "pki")
    extra = (
        f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", '
        f'ca_file: "{pki.ca}", verify: true }}\n'
        'authorization { user: "node", password: "s3cret" }\n'
    )
    cluster = NatsCluster(tmp_path / "nats", size=1, extra=extra).start()
    yield cluster, pki
    cluster.stop()


def _node(tmp_path: Path, cluster: NatsCluster, pki: Pki, password: str) -> BrokerProcess:
    url = f"tls://127.0.0.1:{cluster.servers[0].port}"
    extra = (f"  user: node\n  password: {password}\n  nats_tls:\n"
             f"    cafile: {pki.ca}\n    certfile: {pki.client_cert}\n"
             f"    keyfile: {pki.client_key}\n")
    text = node_config("secure", [url], "sec", replicas=1).replace(
        "  subject_prefix: sec\n", "  subject_prefix: sec\n" + extra)
    return BrokerProcess(tmp_path / f"node-{password}", text, name="secure").start()


def test_tls_client_certificate_and_password(
    tmp_path: Path, secured: tuple[NatsCluster, Pki]
) -> None:
    cluster, pki = secured
    node = _node(tmp_path, cluster, pki, "s3cret")
    try:
        wait_for_log(node, "cluster: node secure connected to NATS")
        wait_for_log(node, "retained messages from bucket")  # JetStream over TLS too
    finally:
        node.stop()


def test_a_wrong_password_is_refused_and_said(
    tmp_path: Path, secured: tuple[NatsCluster, Pki]
) -> None:
    cluster, pki = secured
    node = _node(tmp_path, cluster, pki, "wrong")
    try:
        wait_for_log(node, "refused the credentials of node secure "
                     "(cluster.user/cluster.password)")
        assert "authorization violation" in node.log_text().lower()
        assert "connected to NATS" not in node.log_text()
    finally:
        node.stop()


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[NatsCluster]:
    """One nats-server (JetStream) that asks every client for a token."""
    cluster = NatsCluster(tmp_path / "nats", size=1,
                          extra=f'authorization {{ token: "{TOKEN}" }}\n').start()
    yield cluster
    cluster.stop()


def _token_node(tmp_path: Path, cluster: NatsCluster, name: str,
                token: str | None) -> BrokerProcess:
    line = f"  token: {token}\n" if token is not None else ""
    text = node_config(name, cluster.urls, "tok", replicas=1).replace(
        "  subject_prefix: tok\n", "  subject_prefix: tok\n" + line)
    proc = BrokerProcess(tmp_path / name, text, name=name)
    proc.config_path.chmod(0o600)  # it holds a secret
    return proc


def test_cluster_token_the_right_one_serves_and_routes(
    tmp_path: Path, token_server: NatsCluster
) -> None:
    """``cluster.token`` against nats-server's ``authorization { token }``: two nodes
    with the right token connect, open their JetStream buckets, and a message
    published on one reaches a subscriber on the other (QoS 1: through the QoS
    stream too). The token appears in no log line."""
    a = _token_node(tmp_path, token_server, "a", TOKEN).start()
    b = _token_node(tmp_path, token_server, "b", TOKEN).start()
    made: list[Paho] = []
    try:
        for node in (a, b):
            wait_for_log(node, f"cluster: node {node.config_path.stem} connected to NATS")
            wait_for_log(node, "retained messages from bucket", timeout=20)
        sub = Paho(b.host, b.port, "tok-sub", 5)
        pub = Paho(a.host, a.port, "tok-pub", 5)
        made += [sub, pub]
        sub.connect()
        pub.connect()
        sub.subscribe("tok/t", qos=1)
        wait_until_routed(pub, sub, "tok/t")
        pub.publish("tok/t", b"across", qos=1)
        assert sub.receive().payload == b"across"
        for node in (a, b):
            assert TOKEN not in node.log_text()
    finally:
        for client in made:
            client.disconnect()
        a.stop()
        b.stop()


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_cluster_token_wrong_or_missing_is_refused_and_said(
    tmp_path: Path, token_server: NatsCluster, token: str | None
) -> None:
    """A wrong token (or none, where the server asks for one): the node starts and
    serves its local clients (docs/cluster.md, "When NATS is away"), logs once — at
    ERROR — that NATS refused its credentials, naming the key (never the value), and
    keeps retrying; ``/health`` would say degraded. ``check-config`` accepts the file:
    whether a token is right only the servers can say."""
    node = _token_node(tmp_path, token_server, "w", token)
    check = subprocess.run(
        [sys.executable, "-m", "iotbroker", "check-config", str(node.config_path)],
        capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    node.start()
    try:
        keys = "cluster.token" if token else "none configured: the servers ask for some"
        wait_for_log(node, f"refused the credentials of node w ({keys})")
        text = node.log_text()
        line = next(x for x in text.splitlines() if "refused the credentials" in x)
        assert "ERROR" in line and "authorization violation" in line.lower(), line
        assert "unreachable" not in text  # reachable: it said no
        assert "connected to NATS" not in text
        if token:
            assert token not in text
        with RawClient(node.host, node.port, version=5) as local:  # serves locally
            assert local.connect("tok-local").reason_code == 0
            local.subscribe("tok/local", qos=1)
            local.publish("tok/local", b"here", qos=0)
            assert local.receive_publish().payload == b"here"
        time.sleep(1.5)  # retries (1 s apart) are not logged again
        assert node.log_text().count("refused the credentials") == 1
    finally:
        node.stop()


def test_check_config_refuses_a_token_with_a_user(tmp_path: Path) -> None:
    """NATS takes a token or a user and password (nats-py would send the user and drop
    the token without a word): both given is a configuration error, named with its
    file:line, and the token's value is not printed."""
    path = tmp_path / "both.yaml"
    path.write_text("cluster:\n  node_name: a\n  token: s3cr3t-tok\n  user: node\n"
                    "  password: pw\n")
    result = subprocess.run(
        [sys.executable, "-m", "iotbroker", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "cluster.user: 'node' is given with cluster.token" in result.stderr
    assert f"{path}:4" in result.stderr
    assert "s3cr3t-tok" not in result.stderr
