"""Connection and rate limits (limits.*, listeners[].max_connections, mqtt.server_reference)."""

from __future__ import annotations

import time
from collections.abc import Callable

from iotbroker.codec.packets import Properties
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import Closed, RawClient


def _closed_without_answer(client: RawClient) -> bool:
    try:
        client.connect("refused")
    except (Closed, ConnectionResetError, BrokenPipeError):
        return True
    return False


def test_global_max_connections_closes_extra_sockets(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    broker = make_broker(broker_config(extra="limits:\n  max_connections: 3\n"))
    held = [RawClient(broker.host, broker.port) for _ in range(3)]
    for i, c in enumerate(held):
        assert c.connect(f"held-{i}").reason_code == 0
    extra = RawClient(broker.host, broker.port)
    assert _closed_without_answer(extra)
    assert "limits.max_connections (3) reached" in broker.log_text()
    held[0].disconnect()
    time.sleep(0.2)
    again = RawClient(broker.host, broker.port)
    assert again.connect("after-one-left").reason_code == 0
    for c in [*held[1:], again]:
        c.close()


def test_listener_max_connections(make_broker: Callable[..., BrokerProcess]) -> None:
    listeners = (
        "listeners:\n  - name: small\n    type: tcp\n    host: 127.0.0.1\n    port: 0\n"
        "    max_connections: 1\n"
    )
    broker = make_broker(broker_config(listeners=listeners))
    first = RawClient(broker.host, broker.port)
    assert first.connect("only-one").reason_code == 0
    assert _closed_without_answer(RawClient(broker.host, broker.port))
    assert "listener 'small' max_connections reached" in broker.log_text()
    first.close()


def test_connect_rate_refuses_excess(make_broker: Callable[..., BrokerProcess]) -> None:
    broker = make_broker(broker_config(extra="limits:\n  connect_rate: 5\n"))
    accepted = refused = 0
    clients = []
    for i in range(20):
        c = RawClient(broker.host, broker.port)
        clients.append(c)
        try:
            c.connect(f"rate-{i}")
            accepted += 1
        except (Closed, ConnectionResetError, BrokenPipeError):
            refused += 1
    assert 1 <= accepted <= 10 and refused >= 10, (accepted, refused)
    for c in clients:
        c.close()


def test_publish_rate_per_client_slows_without_loss(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """Over the rate the broker stops reading the client: slower, nothing dropped."""
    broker = make_broker(broker_config(extra="limits:\n  publish_rate_per_client: 40\n"))
    sub = RawClient(broker.host, broker.port)
    sub.connect("rate-sub")
    sub.subscribe("rate/#", 1)
    pub = RawClient(broker.host, broker.port)
    pub.connect("rate-pub")
    started = time.monotonic()
    for i in range(120):
        pub.publish("rate/t", str(i).encode(), 1)
    elapsed = time.monotonic() - started
    got = [int(sub.receive_publish().payload) for _ in range(120)]
    assert got == list(range(120))
    # 120 messages at 40/s with a one-second burst cannot take less than ~2 s.
    assert elapsed >= 1.8, elapsed
    for c in (sub, pub):
        c.close()


def test_server_reference_redirects(make_broker: Callable[..., BrokerProcess]) -> None:
    """MQTT 5.0 §4.11: a moved server answers CONNACK 0x9D with a Server Reference."""
    broker = make_broker(broker_config(extra="mqtt:\n  server_reference: other.example:1883\n"))
    v5 = RawClient(broker.host, broker.port, version=5)
    ack = v5.connect("moved", properties=Properties())
    assert ack.reason_code == 0x9D
    assert ack.properties.server_reference == "other.example:1883"
    v5.expect_closed()
    v3 = RawClient(broker.host, broker.port, version=4)
    assert v3.connect("moved-v3").reason_code == 0x03


def test_max_retained_messages_caps_distinct_topics(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """mqtt.max_retained_messages: at the limit a new retained topic is delivered live
    but not retained (v5 PUBACK 0x97); replacing an existing one still works."""
    broker = make_broker(broker_config(extra="mqtt:\n  max_retained_messages: 3\n"))
    live = RawClient(broker.host, broker.port, version=5)
    live.connect("retained-live")
    live.subscribe("cap/#", 1)
    pub = RawClient(broker.host, broker.port, version=5)
    pub.connect("retained-pub")
    codes = [pub.publish(f"cap/{i}", f"v{i}".encode(), 1, retain=True).reason_code  # type: ignore[union-attr]
             for i in range(4)]
    assert codes == [0, 0, 0, 0x97]
    assert sorted(live.receive_publish().payload for _ in range(4)) == [b"v0", b"v1", b"v2", b"v3"]
    assert pub.publish("cap/0", b"replaced", 1, retain=True).reason_code == 0  # type: ignore[union-attr]
    live.receive_publish()
    late = RawClient(broker.host, broker.port, version=5)
    late.connect("retained-late")
    late.subscribe("cap/#", 1)
    got = sorted(late.receive_publish().payload for _ in range(3))
    assert got == [b"replaced", b"v1", b"v2"]
    late.nothing(0.3)
    for c in (live, pub, late):
        c.close()
