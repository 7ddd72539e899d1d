"""Fixtures of the cluster tests: a real 3-server NATS cluster with JetStream, and
iotbroker nodes (subprocesses, as a user runs them) joined to it."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from iotbroker.cluster.qos_stream import PATIENCE
from iotbroker.codec.packets import Properties
from tests.helpers.broker_process import _LISTENING, BrokerProcess, broker_config
from tests.helpers.nats_cluster import NatsCluster
from tests.helpers.rawclient import RawClient
from tests.interop.test_paho import Paho

_prefixes = itertools.count(1)


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three nats-servers routed to each other, JetStream on, shared by a module's tests
    (each test uses subjects of its own: ``cluster.subject_prefix``)."""
    for attempt in range(3):  # a free port picked may be taken meanwhile: new ports
        try:
            cluster = NatsCluster(tmp_path_factory.mktemp("nats"), size=3).start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
    yield cluster
    cluster.stop()


def node_config(node_name: str, urls: list[str], prefix: str, replicas: int = 3,
                extra: str = "", storage: str = "memory", listeners: str | None = None) -> str:
    """A node's YAML: ``extra`` follows the ``cluster:`` keys (more of them, indented,
    or other sections); ``listeners`` replaces the one TCP listener (broker_config)."""
    servers = ", ".join(urls)
    return broker_config(storage=storage, listeners=listeners, extra=(
        f"cluster:\n  node_name: {node_name}\n  nats: [{servers}]\n"
        f"  replicas: {replicas}\n  subject_prefix: {prefix}\n{extra}"
    ))


def wait_for_log(proc: BrokerProcess, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.log_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in the log within {timeout}s:\n{proc.log_text()}")


@pytest.fixture
def make_node(tmp_path: Path, nats_cluster: NatsCluster
              ) -> Iterator[Callable[..., BrokerProcess]]:
    """Start an iotbroker node joined to the NATS cluster; waits until it is connected.
    ``servers`` picks which nats-servers it knows (indexes), default all; ``listeners``
    replaces the one TCP listener, and the node's ``ports`` are read again once the
    log has each line of ``wait_for`` (a listener that ``start()`` may return before,
    e.g. ``"(udp, listener 'sn')"``)."""
    prefix = f"t{next(_prefixes)}"
    started: list[BrokerProcess] = []

    def factory(name: str, servers: list[int] | None = None,
                extra: str = "", storage: str = "memory", listeners: str | None = None,
                wait_for: tuple[str, ...] = ()) -> BrokerProcess:
        urls = [nats_cluster.urls[i] for i in (servers if servers is not None else [0, 1, 2])]
        proc = BrokerProcess(tmp_path / name,
                             node_config(name, urls, prefix, extra=extra, storage=storage,
                                         listeners=listeners),
                             name=name)
        proc.start()
        started.append(proc)
        if wait_for:
            for line in wait_for:
                wait_for_log(proc, line)
            proc.ports.update((n, int(port)) for _, port, _, n in
                              _LISTENING.findall(proc.log_text()))
        wait_for_log(proc, f"cluster: node {name} connected to NATS")
        return proc

    yield factory
    for proc in started:
        proc.stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Paho]]:
    """Factory of connected paho clients (MQTT 5.0 unless asked), disconnected at the end."""
    made: list[Paho] = []

    def factory(node: BrokerProcess, client_id: str, protocol: int = mqtt.MQTTv5,
                **kw: object) -> Paho:
        client = Paho(node.host, node.port, client_id, protocol, **kw)  # type: ignore[arg-type]
        # A node holds a QoS 1/2 PUBACK until its stream has the message, at most
        # qos_stream.PATIENCE (then releases it unreplicated, counted): during a
        # nats-server failover that is longer than the default wait.
        client.ack_wait = PATIENCE + 5.0
        client.connect()
        made.append(client)
        return client

    yield factory
    for client in made:
        client.disconnect()


def log_tails(*nodes: BrokerProcess, lines: int = 40) -> str:
    """The last ``lines`` of each node's log: kept in an assertion's message, so a
    failure in CI shows what the nodes did (issue 14, fix-qos2move)."""
    out = []
    for node in nodes:
        tail = node.log_text().splitlines()[-lines:]
        out.append(f"--- {node.log_path} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(out)


def connect_retrying_busy(node: BrokerProcess, client_id: str, clean_start: bool,
                          *others: BrokerProcess, within: float = 40.0,
                          receive_maximum: int | None = None) -> tuple[RawClient, bool]:
    """A persistent-session CONNECT (MQTT 5.0) the way a client does it: a 0x89 Server
    busy (a resume the node could not complete in time: a loaded machine, JetStream
    electing leaders) is retried 0.5 s apart until ``within`` s (docs/cluster.md,
    "Sessions move"). Returns the client and Session Present."""
    deadline = time.monotonic() + within
    while True:
        client = RawClient(node.host, node.port, version=5, timeout=20)
        connack = client.connect(client_id, clean_start=clean_start, properties=Properties(
            session_expiry_interval=3600, receive_maximum=receive_maximum))
        if connack.reason_code == 0:
            return client, connack.session_present
        client.close()
        assert connack.reason_code == 0x89 and time.monotonic() < deadline, (
            connack, log_tails(node, *others))
        time.sleep(0.5)
