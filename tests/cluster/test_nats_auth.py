"""Credentials and TLS towards NATS (``cluster.user``/``password``, ``cluster.token``,
``cluster.credentials_file``, ``cluster.nats_tls``; docs/configuration.md): a node
joins a nats-server that requires TLS with a client certificate and a password, a
token, or (operator mode) a user's .creds file; with wrong credentials it is refused,
says so (a log line naming the keys NATS refused) and serves its local clients only
(degraded)."""

from __future__ import annotations

import contextlib
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
from tests.helpers.nats_creds import NatsOperator
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
    text = node_config("secure", [url], "sec", replicas=1, extra=extra)
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
                token: str | None, line: str | None = None) -> BrokerProcess:
    if line is None:
        line = f"  token: {token}\n" if token is not None else ""
    text = node_config(name, cluster.urls, "tok", replicas=1, extra=line)
    proc = BrokerProcess(tmp_path / name, text, name=name)
    proc.config_path.chmod(0o600)  # it holds a secret
    return proc


@contextlib.contextmanager
def _refused_and_said(node: BrokerProcess, keys: str, client_id: str
                      ) -> Iterator[RawClient]:
    """Credentials the servers refuse: ``check-config`` accepts the node's file (only
    the servers can judge them), the node starts, logs at ERROR that NATS refused the
    credentials of ``keys`` (authorization violation) and serves its local clients:
    yields one connected as ``client_id``; the node is stopped at the end."""
    check = subprocess.run(
        [sys.executable, "-m", "iotbroker", "check-config", str(node.config_path)],
        capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    node.start()
    try:
        wait_for_log(node, f"refused the credentials of node {node.config_path.stem} "
                     f"({keys})")
        line = next(x for x in node.log_text().splitlines() if "refused the credentials" in x)
        assert "ERROR" in line and "authorization violation" in line.lower(), line
        with RawClient(node.host, node.port, version=5) as local:  # serves locally
            assert local.connect(client_id).reason_code == 0
            yield local
    finally:
        node.stop()


def test_cluster_token_the_right_one_serves_and_routes(
    tmp_path: Path, token_server: NatsCluster
) -> None:
    """``cluster.token`` against nats-server's ``authorization { token }``: two nodes
    with the right token connect, open their JetStream buckets, and a message
    published on one reaches a subscriber on the other (QoS 1: through the QoS
    stream too). The token appears in no log line."""
    a = _token_node(tmp_path, token_server, "a", TOKEN).start()
    b = _token_node(tmp_path, token_server, "b", TOKEN).start()
    _serves_and_routes(a, b, secret=TOKEN)


def _serves_and_routes(a: BrokerProcess, b: BrokerProcess, secret: str) -> None:
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
            assert secret not in node.log_text()
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
    keys = "cluster.token" if token else "none configured: the servers ask for some"
    with _refused_and_said(node, keys, "tok-local") as local:
        text = node.log_text()
        assert "unreachable" not in text  # reachable: it said no
        assert "connected to NATS" not in text
        if token:
            assert token not in text
        local.subscribe("tok/local", qos=1)
        local.publish("tok/local", b"here", qos=0)
        assert local.receive_publish().payload == b"here"
        time.sleep(1.5)  # retries (1 s apart) are not logged again
        assert node.log_text().count("refused the credentials") == 1


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


@pytest.fixture
def operator_server(tmp_path: Path) -> Iterator[tuple[NatsCluster, NatsOperator]]:
    """One nats-server in operator mode (decentralised JWT authentication, JetStream
    for the operator's account ``iotb``)."""
    operator = NatsOperator()
    cluster = NatsCluster(tmp_path / "nats", size=1, extra=operator.server_config()).start()
    yield cluster, operator
    cluster.stop()


def test_cluster_credentials_file_the_right_one_serves_and_routes(
    tmp_path: Path, operator_server: tuple[NatsCluster, NatsOperator]
) -> None:
    """``cluster.credentials_file``: two nodes, each with a .creds file of its own user
    of the operator's account, connect (nats-py signs the server's nonce with the
    seed), open their JetStream buckets and route a message between them; the seed
    appears in no log line."""
    cluster, operator = operator_server
    nodes = []
    for name in ("a", "b"):
        creds = operator.user_creds(tmp_path / f"{name}.creds", name=f"node-{name}")
        nodes.append(_token_node(tmp_path, cluster, name, None,
                                 line=f"  credentials_file: {creds}\n").start())
    seed = (tmp_path / "a.creds").read_text().split("SEED-----\n")[1].split("\n")[0]
    _serves_and_routes(nodes[0], nodes[1], secret=seed)


def test_cluster_credentials_file_of_an_unknown_account_is_refused_and_said(
    tmp_path: Path, operator_server: tuple[NatsCluster, NatsOperator]
) -> None:
    """A well-formed .creds file whose user belongs to an account the servers do not
    know: ``check-config`` accepts it (only the servers can judge it), the node starts,
    serves locally and logs once at ERROR that NATS refused cluster.credentials_file."""
    cluster, operator = operator_server
    creds = operator.user_creds(tmp_path / "x.creds", account=operator.foreign_account())
    node = _token_node(tmp_path, cluster, "x", None, line=f"  credentials_file: {creds}\n")
    with _refused_and_said(node, "cluster.credentials_file", "creds-local"):
        pass


def test_check_config_and_start_refuse_a_credentials_file_that_cannot_be_used(
    tmp_path: Path
) -> None:
    """A missing file, or one that is not a .creds file: ``check-config`` names
    ``cluster.credentials_file``, the file and what is wrong, and the broker does not
    start (``cannot start: ...``, exit 1, before it creates its data directory: as
    for a missing TLS file); a .creds file readable by others is a warning (its seed
    is a secret)."""
    missing = tmp_path / "missing.creds"
    not_creds = tmp_path / "not.creds"
    not_creds.write_text("just text\n")
    good = NatsOperator().user_creds(tmp_path / "good.creds")
    for path, text in ((missing, "cannot be used: the file does not exist"),
                       (not_creds, "is not a NATS .creds file: no user JWT")):
        config = tmp_path / f"{path.stem}.yaml"
        config.write_text(f"cluster:\n  node_name: a\n  replicas: 1\n"
                          f"  credentials_file: {path}\n")
        result = subprocess.run(
            [sys.executable, "-m", "iotbroker", "check-config", str(config)],
            capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode != 0
        assert f"cluster.credentials_file: '{path}' {text}" in result.stderr, result.stderr
        proc = BrokerProcess(tmp_path / f"run-{path.stem}", node_config(
            "a", ["nats://127.0.0.1:1"], "cr", replicas=1,
            extra=f"  credentials_file: {path}\n"))
        with pytest.raises(RuntimeError, match="credentials_file"):
            proc.start(timeout=20)
        assert proc.proc is not None and proc.proc.returncode == 1
        assert f"cannot start: cluster.credentials_file: '{path}' {text}" in proc.log_text()
    good.chmod(0o644)
    config = tmp_path / "good.yaml"
    config.write_text(f"cluster:\n  node_name: a\n  credentials_file: {good}\n")
    result = subprocess.run(
        [sys.executable, "-m", "iotbroker", "check-config", str(config)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "warning: cluster.credentials_file: NATS credentials" in result.stderr
    assert "chmod 600" in result.stderr


def test_a_credentials_file_without_the_nkeys_package_is_said(tmp_path: Path) -> None:
    """nats-py signs with ``nkeys`` (the ``cluster`` extra brings it): where it is
    missing, check-config (and start) say so, naming the key, instead of a node that
    fails each connect with an ImportError."""
    good = NatsOperator().user_creds(tmp_path / "good.creds")
    config = tmp_path / "c.yaml"
    config.write_text(f"cluster:\n  node_name: a\n  credentials_file: {good}\n")
    hide = ("import sys; sys.modules['nkeys'] = None; from iotbroker.cli import main; "
            f"sys.exit(main(['check-config', {str(config)!r}]))")
    result = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode != 0
    assert (f"cluster.credentials_file: '{good}' cannot be used without the Python "
            "package nkeys") in result.stderr, result.stderr
