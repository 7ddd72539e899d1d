"""Credentials and TLS towards NATS (``cluster.user``/``password``, ``cluster.nats_tls``;
docs/configuration.md): a node joins a nats-server that requires TLS with a client
certificate and a password; with a wrong password it is refused, says so and serves
its local clients only (degraded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import node_config, wait_for_log
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.nats_cluster import NatsCluster
from tests.server.pki import Pki, make_pki


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
        wait_for_log(node, "unreachable")
        assert "authorization violation" in node.log_text().lower()
        assert "connected to NATS" not in node.log_text()
    finally:
        node.stop()
