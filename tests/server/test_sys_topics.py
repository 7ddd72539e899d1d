"""``$SYS/broker/...`` topics (mosquitto names), published every 0.2 s here.

Raw clients count exactly what they send (packets and bytes), so the broker's
statistics can be compared with what the test did.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest

from iotbroker.codec import encode_packet
from iotbroker.codec.packets import Packet, Properties, Publish, SubAck, Subscribe, Subscription
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient
from tests.server.clients import WAIT, config, listener

SYS = "$SYS/broker/"


class CountingClient(RawClient):
    """A raw client that counts the packets and bytes it sends."""

    def __init__(self, host: str, port: int, version: int = 4) -> None:
        super().__init__(host, port, version=version)
        self.packets_sent = 0
        self.bytes_sent = 0

    def send(self, packet: Packet) -> None:
        data = encode_packet(packet, self.version)
        self.packets_sent += 1
        self.bytes_sent += len(data)
        self.sock.sendall(data)


class SysWatcher:
    """A client subscribed to ``$SYS/#`` keeping the latest value of every topic."""

    def __init__(self, client: CountingClient) -> None:
        self.client = client
        self.values: dict[str, str] = {}

    def poll(self, timeout: float) -> None:
        try:
            pub = self.client.expect(Publish, timeout)
        except TimeoutError:
            return
        assert pub.topic.startswith("$SYS/"), pub.topic
        self.values[pub.topic.removeprefix(SYS)] = pub.payload.decode()

    def wait_for(self, topic: str, expected: str | Callable[[str], bool],
                 timeout: float = WAIT) -> str:
        check = expected if callable(expected) else (lambda v: v == expected)
        deadline = time.monotonic() + timeout
        while True:
            value = self.values.get(topic)
            if value is not None and check(value):
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{SYS}{topic} is {value!r}, expected {expected!r}")
            self.poll(left)


@pytest.fixture(scope="module")
def sys_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    text = config(listener("tcp", "tcp"), "sys_topics:\n  enabled: true\n  interval: 0.2\n")
    proc = BrokerProcess(tmp_path_factory.mktemp("sys-broker"), text).start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log_text()


@pytest.fixture
def clients(sys_broker: BrokerProcess) -> Iterator[Callable[..., CountingClient]]:
    made: list[CountingClient] = []

    def factory(version: int = 4) -> CountingClient:
        client = CountingClient(sys_broker.host, sys_broker.port, version)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


def test_sys_topics_count_what_clients_did(clients: Callable[..., CountingClient]) -> None:
    watcher_client = clients()
    watcher_client.connect("sys-watcher")
    watcher_client.subscribe("$SYS/#")
    watcher = SysWatcher(watcher_client)
    assert watcher.wait_for("version", lambda v: v.startswith("iotbroker version "))
    assert re.fullmatch(r"\d+ seconds", watcher.wait_for("uptime", lambda v: True))
    watcher.wait_for("clients/connected", "1")
    watcher.wait_for("clients/total", "1")

    # A persistent v5 session with one subscription, left connected for now.
    persistent = clients(version=5)
    persistent.connect("sys-persistent", clean_start=False,
                       properties=Properties(session_expiry_interval=300))
    persistent.subscribe("sys-test/a")
    publisher = clients()
    publisher.connect("sys-publisher")
    watcher.wait_for("clients/connected", "3")
    for i in range(3):
        publisher.publish(f"sys-test/q0/{i}", b"x")
    publisher.publish("sys-test/q1", b"y", qos=1)
    publisher.publish("sys-test/retained/1", b"r1", retain=True)
    publisher.publish("sys-test/retained/2", b"r2", qos=1, retain=True)
    publisher.disconnect()
    persistent.disconnect()

    everyone = [watcher_client, persistent, publisher]
    watcher.wait_for("clients/connected", "1")
    watcher.wait_for("clients/maximum", "3")
    watcher.wait_for("clients/total", "2")  # the watcher + the disconnected persistent one
    watcher.wait_for("clients/disconnected", "1")
    watcher.wait_for("subscriptions/count", "2")
    watcher.wait_for("publish/messages/received", "6")
    watcher.wait_for("messages/received", str(sum(c.packets_sent for c in everyone)))
    watcher.wait_for("bytes/received", str(sum(c.bytes_sent for c in everyone)))
    # Retained: our two plus the $SYS topics themselves (all retained; mosquitto counts
    # them too). Every $SYS topic has been seen by now (retained at SUBSCRIBE).
    sys_count = len(watcher.values)
    watcher.wait_for("retained messages/count", str(sys_count + 2))
    watcher.wait_for("store/messages/count", lambda v: int(v) >= sys_count + 2)
    watcher.wait_for("load/publish/received/1min", lambda v: float(v) > 0)
    for name in ("messages/received", "messages/sent", "bytes/received", "bytes/sent",
                 "publish/received", "publish/sent", "connections"):
        for window in ("1min", "5min", "15min"):
            value = watcher.wait_for(f"load/{name}/{window}", lambda v: True)
            assert re.fullmatch(r"\d+\.\d\d", value), (name, window, value)
    assert set(watcher.values) >= {
        "publish/messages/sent", "messages/sent", "bytes/sent", "clients/expired",
        "publish/messages/dropped", "messages/stored",
    }


def test_only_changed_values_are_published(clients: Callable[..., CountingClient]) -> None:
    watcher_client = clients()
    watcher_client.connect("sys-changes")
    watcher_client.subscribe("$SYS/broker/version")
    first = watcher_client.expect(Publish)
    assert first.retain  # the retained copy at SUBSCRIBE
    # Several intervals pass: the unchanged version is not published again.
    watcher_client.nothing(wait=0.7)


def test_wildcards_at_the_first_level_do_not_match_sys(
        clients: Callable[..., CountingClient]) -> None:
    """[MQTT-4.7.2-1]: ``#`` and ``+/...`` never match topics beginning with ``$``."""
    watcher_client = clients()
    watcher_client.connect("sys-watcher-2")
    watcher_client.subscribe("$SYS/broker/clients/connected")
    watcher = SysWatcher(watcher_client)
    watcher.wait_for("clients/connected", lambda v: True)

    plain = clients()
    plain.connect("sys-plain")
    plain.send(Subscribe(1, [Subscription("#", 0), Subscription("+/broker/#", 0)]))
    assert plain.expect(SubAck).reason_codes == [0, 0]
    # clients/connected changes after the plain client subscribed (a third client
    # connects): had it matched, the plain client would get it before the marker
    # published afterwards. (The first value the watcher reads may be the retained one
    # from before its own connect, so no exact count is expected.)
    watcher.values.pop("clients/connected", None)
    clients().connect("sys-poke")
    watcher.wait_for("clients/connected", lambda v: int(v) >= 3)
    plain.publish("sys-marker", b"m")
    topics: list[str] = []
    while not topics or topics[-1] != "sys-marker":
        topics.append(plain.expect(Publish).topic)  # retained ones of other tests, then ours
    leaked = [t for t in topics if t.startswith("$")]
    assert not leaked, f"{leaked} reached a wildcard subscription"
