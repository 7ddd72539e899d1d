"""The ``$SYS`` topics issue 18 found missing, with mosquitto's meaning (its
``src/sys_tree.c``), checked on a broker of the test's own over a socket:

* ``heap/current`` / ``heap/maximum``: bytes the broker holds now / the most it held
  (mosquitto: its allocator's count; here the process's resident set size and its peak);
* ``load/sockets/{1,5,15}min``: rate of network connections accepted; ``load/connections``
  the rate of CONNECT packets;
* ``publish/bytes/received``: payload bytes of the PUBLISH packets received;
* ``shared_subscriptions/count``: ``$share/...`` subscriptions;
* ``store/messages/bytes``: payload bytes of the stored messages (retained, queued,
  in flight).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotbroker.codec.packets import Properties
from tests.helpers.broker_process import BrokerProcess
from tests.server.clients import config, listener
from tests.server.test_sys_topics import CountingClient, SysWatcher


@pytest.fixture
def sys_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    text = config(listener("tcp", "tcp"), "sys_topics:\n  enabled: true\n  interval: 0.2\n")
    proc = BrokerProcess(tmp_path, text).start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log_text()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_missing_mosquitto_sys_topics_are_published(sys_broker: BrokerProcess) -> None:
    host, port = sys_broker.host, sys_broker.port
    made: list[CountingClient] = []
    try:
        def client(version: int = 4) -> CountingClient:
            made.append(CountingClient(host, port, version))
            return made[-1]

        watcher_client = client()
        watcher_client.connect("w")
        watcher_client.subscribe("$SYS/#")
        watcher = SysWatcher(watcher_client)
        watcher.wait_for("shared_subscriptions/count", "0")

        # Two shared subscriptions and an ordinary one (MQTT 5.0 §4.8.2).
        sharer = client(version=5)
        sharer.connect("sharer")
        for topic_filter in ("$share/g1/s/a", "$share/g2/s/#", "s/plain"):
            assert sharer.subscribe(topic_filter, 1).reason_codes == [1]
        # A persistent session that goes offline and queues two 50,000-byte messages.
        offline = client(version=5)
        offline.connect("offline", clean_start=False,
                        properties=Properties(session_expiry_interval=300))
        offline.subscribe("q/#", 1)
        offline.disconnect()

        publisher = client()
        publisher.connect("pub")
        payloads = [b"abc", b"hello", b"x" * 100_000, b"q" * 50_000, b"r" * 50_000]
        publisher.publish("s/a", payloads[0])
        publisher.publish("s/plain", payloads[1], qos=1)
        publisher.publish("big/retained", payloads[2], qos=1, retain=True)
        publisher.publish("q/1", payloads[3], qos=1)
        publisher.publish("q/2", payloads[4], qos=1)
        publisher.disconnect()

        watcher.wait_for("shared_subscriptions/count", "2")
        watcher.wait_for("subscriptions/count", "5")  # + $SYS/# and q/#
        watcher.wait_for("publish/bytes/received", str(sum(map(len, payloads))))
        # Retained 100,000 + queued 2 x 50,000, plus the small retained $SYS payloads.
        stored = int(watcher.wait_for("store/messages/bytes", lambda v: int(v) >= 200_000))
        assert stored < 200_000 + 8_000, stored

        for window in ("1min", "5min", "15min"):
            watcher.wait_for(f"load/sockets/{window}", lambda v: float(v) > 0)
            watcher.wait_for(f"load/connections/{window}", lambda v: float(v) > 0)

        assert sys_broker.proc is not None
        rss = _rss(sys_broker.proc.pid)
        current = int(watcher.wait_for("heap/current", lambda v: int(v) > 0))
        maximum = int(watcher.wait_for("heap/maximum", lambda v: int(v) >= current))
        assert 0.5 * rss < current < 2 * rss, (current, rss)
        assert maximum >= current
    finally:
        for c in made:
            c.close()


def test_heap_maximum_never_decreases(sys_broker: BrokerProcess) -> None:
    """``heap/maximum`` is a high-water mark (mosquitto's ``is_max`` metric)."""
    watcher_client = CountingClient(sys_broker.host, sys_broker.port)
    try:
        watcher_client.connect("w2")
        watcher_client.subscribe("$SYS/broker/heap/maximum")
        watcher = SysWatcher(watcher_client)
        seen = [int(watcher.wait_for("heap/maximum", lambda v: True))]
        for _ in range(5):
            watcher.poll(0.3)
            seen.append(int(watcher.values["heap/maximum"]))
        assert seen == sorted(seen)
        assert os.sysconf("SC_PAGE_SIZE") > 0
    finally:
        watcher_client.close()
