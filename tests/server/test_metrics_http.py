"""The Prometheus endpoint: scraped over HTTP, parsed with ``prometheus_client``'s
parser, and compared with what raw clients did (they count their own packets/bytes)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from iotbroker.codec.packets import PingReq, PingResp, Properties
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient
from tests.server.clients import WAIT, config, listener, metrics_address
from tests.server.test_sys_topics import CountingClient

EXTRA = """\
metrics:
  enabled: true
  host: 127.0.0.1
  port: 0
mqtt:
  max_queued_messages: 1
"""


@pytest.fixture(scope="module")
def metrics_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("metrics-broker"),
                         config(listener("tcp", "tcp"), EXTRA)).start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log_text()


def _get(proc: BrokerProcess, path: str, method: str = "GET") -> tuple[int, str, str]:
    host, port = metrics_address(proc)
    request = urllib.request.Request(f"http://{host}:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return (response.status, response.headers.get("Content-Type", ""),
                    response.read().decode())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def scrape(proc: BrokerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Sample name + sorted labels -> value."""
    status, ctype, body = _get(proc, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_health_and_errors(metrics_broker: BrokerProcess) -> None:
    assert _get(metrics_broker, "/health")[::2] == (200, "ok\n")
    assert _get(metrics_broker, "/nope")[0] == 404
    assert _get(metrics_broker, "/metrics", method="POST")[0] == 405
    host, port = metrics_address(metrics_broker)
    with socket.create_connection((host, port), timeout=WAIT) as sock:
        sock.sendall(b"garbage\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")


def test_metrics_match_what_clients_did(metrics_broker: BrokerProcess) -> None:
    before = scrape(metrics_broker)
    assert value(before, "iotbroker_clients_connected") == 0
    assert value(before, "iotbroker_build_info", version=_version()) == 1
    host, port = metrics_broker.host, metrics_broker.port

    sub = CountingClient(host, port, version=5)
    pub = CountingClient(host, port)
    offline = CountingClient(host, port, version=5)
    try:
        # A persistent session that goes offline with a queue of one message.
        offline.connect("m-offline", clean_start=False,
                        properties=Properties(session_expiry_interval=300))
        offline.subscribe("m/queue", 1)
        offline.disconnect()
        _wait_for(metrics_broker, "iotbroker_clients_connected", 0)  # before it is offline
        sub.connect("m-sub")
        sub.subscribe("m/#", 1)  # QoS 1 acks only: no interleaved QoS 2 flows
        pub.connect("m-pub")
        for _ in range(3):
            pub.publish("m/q0", b"zero")
        for _ in range(2):
            pub.publish("m/q1", b"one", qos=1)
        pub.publish("m/q2", b"two", qos=2)
        pub.publish("m/retained", b"kept", qos=1, retain=True)
        for _ in range(3):  # 1 queued for m-offline, 2 dropped (max_queued_messages: 1)
            pub.publish("m/queue", b"q", qos=1)
        for _ in range(3 + 2 + 1 + 1 + 3):
            sub.receive_publish()
        sub.send(PingReq())  # the broker has handled every PUBACK before this PINGREQ
        sub.expect(PingResp)

        samples = scrape(metrics_broker)
        everyone = (sub, pub, offline)
        assert value(samples, "iotbroker_clients_connected") == 2
        assert value(samples, "iotbroker_clients_maximum") == 2
        assert value(samples, "iotbroker_connections_accepted_total") == 3
        assert value(samples, "iotbroker_connections_open") == 2
        assert value(samples, "iotbroker_sessions") == 3
        assert value(samples, "iotbroker_subscriptions") == 2
        assert value(samples, "iotbroker_retained_messages") == 1
        assert value(samples, "iotbroker_queued_messages") == 1
        assert value(samples, "iotbroker_inflight_messages") == 0
        assert value(samples, "iotbroker_publish_received_total", qos="0") == 3
        assert value(samples, "iotbroker_publish_received_total", qos="1") == 2 + 1 + 3
        assert value(samples, "iotbroker_publish_received_total", qos="2") == 1
        assert value(samples, "iotbroker_messages_dropped_total", reason="queue_full") == 2
        assert value(samples, "iotbroker_messages_dropped_total", reason="slow_consumer") == 0
        assert value(samples, "iotbroker_messages_received_total") == sum(
            c.packets_sent for c in everyone)
        assert value(samples, "iotbroker_bytes_received_total") == sum(
            c.bytes_sent for c in everyone)
        assert value(samples, "iotbroker_bytes_sent_total") > 0
        assert value(samples, "iotbroker_storage_batches_total") >= 1
        assert value(samples, "iotbroker_storage_changes_total") >= 1
        assert value(samples, "iotbroker_event_loop_lag_seconds") >= 0
        assert value(samples, "iotbroker_event_loop_lag_max_seconds") >= 0
        assert value(samples, "iotbroker_uptime_seconds") > 0
        assert value(samples, "process_resident_memory_bytes") > 0
    finally:
        for client in (sub, pub, offline):
            client.close()


def _wait_for(proc: BrokerProcess, name: str, expected: float) -> None:
    deadline = time.monotonic() + WAIT
    while value(scrape(proc), name) != expected:
        assert time.monotonic() < deadline, f"{name} never became {expected}"
        time.sleep(0.02)


def _version() -> str:
    from iotbroker import __version__  # noqa: PLC0415

    return __version__


def test_storage_size_and_write_timing_on_rocksdb(tmp_path: Path) -> None:
    """Issue 3: the store's size and its commit timing are exposed in metrics."""
    extra = EXTRA.replace("  max_queued_messages: 1\n", "  max_queued_messages: 100\n")
    text = config(listener("tcp", "tcp"), extra).replace(
        "storage:\n  backend: memory\n", f"storage:\n  backend: rocksdb\n  path: {tmp_path}/db\n")
    proc = BrokerProcess(tmp_path, text).start()
    try:
        sub = RawClient(proc.host, proc.port)
        sub.connect("store-sub", clean_start=False)
        sub.subscribe("store/#", 1)
        sub.close()
        pub = RawClient(proc.host, proc.port)
        pub.connect("store-pub")
        for i in range(5):
            pub.publish("store/t", f"m{i}".encode(), 1)
        pub.close()
        samples = scrape(proc)
        assert value(samples, "iotbroker_storage_disk_bytes") > 0
        assert value(samples, "iotbroker_storage_keys", kind="sessions") >= 1
        batches = value(samples, "iotbroker_storage_batches_total")
        assert batches >= 1
        assert value(samples, "iotbroker_storage_write_seconds_count") == batches
        assert value(samples, "iotbroker_storage_write_seconds_sum") > 0
        assert value(samples, "iotbroker_storage_write_max_seconds") > 0
        assert value(samples, "iotbroker_storage_batch_max_changes") >= 1
    finally:
        proc.stop()


def test_connections_labelled_by_listener_name(tmp_path: Path) -> None:
    """docs/configuration.md: ``listeners.name`` is the name used in metrics. Each
    configured listener has its samples (zero included); they sum to the totals."""
    proc = BrokerProcess(tmp_path, config(listener("alpha", "tcp") + listener("beta", "tcp")
                                          + listener("idle", "tcp"), EXTRA)).start()
    clients: list[RawClient] = []
    try:
        for name, count in (("alpha", 2), ("beta", 1)):
            for i in range(count):
                client = RawClient("127.0.0.1", proc.ports[name])
                client.connect(f"{name}-{i}")
                clients.append(client)
        clients.pop().close()  # beta's client leaves: accepted 1, open 0
        deadline = time.monotonic() + WAIT
        while True:
            samples = scrape(proc)
            if value(samples, "iotbroker_listener_connections_open", listener="beta") == 0 \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        expected = {"alpha": (2, 2), "beta": (0, 1), "idle": (0, 0)}
        for name, (open_now, accepted) in expected.items():
            assert value(samples, "iotbroker_listener_connections_open",
                         listener=name) == open_now, name
            assert value(samples, "iotbroker_listener_connections_accepted_total",
                         listener=name) == accepted, name
        assert value(samples, "iotbroker_connections_open") == 2
        assert value(samples, "iotbroker_connections_accepted_total") == 3
    finally:
        for client in clients:
            client.close()
        proc.stop()
