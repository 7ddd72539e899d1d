"""Plain-TCP connections accepted without a transport (limits.park_on_accept, on by
default; server/listeners.py ``_ParkedListener``, server/parking.py ``Parking.accept``;
issue 19, the connect cost).

A new socket is parked at once: its CONNECT is read with one read, the CONNACK written
with one send, and it gets a transport only when more arrives. Everything MQTT promises
about a connection must hold as before: CONNACK [MQTT-3.2.0-1], Keep Alive and the will,
the CONNECT timeout, takeover, pipelined packets after the CONNECT, the limits, the
SIGTERM DISCONNECT 0x8B.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from iotbroker.codec.encode import encode_packet
from iotbroker.codec.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    Subscribe,
    Subscription,
    Will,
)
from iotbroker.config import parse_config
from iotbroker.errors import ConfigError
from iotbroker.server.parking import FIRST_READ_SIZE
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import RawClient
from tests.server.test_metrics_http import scrape, value

METRICS = "metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n"


def _wait_log(broker: BrokerProcess, needle: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in broker.log_text():
        assert time.monotonic() < deadline, f"not logged: {needle!r}"
        time.sleep(0.05)


def test_connack_without_a_transport(make_broker: Callable[..., BrokerProcess]) -> None:
    """[MQTT-3.2.0-1] CONNACK is the first packet the server sends, written while the
    socket has no transport (parked from its accept: the gauge counts it at once);
    a PINGREQ then gives it one and is answered [MQTT-3.12.4-1]."""
    broker = make_broker(broker_config(extra=METRICS))
    with RawClient(broker.host, broker.port) as client:
        assert client.connect("poa-ping").reason_code == 0
        samples = scrape(broker)
        assert value(samples, "iotbroker_connections_parked") == 1
        assert value(samples, "iotbroker_connections_wakes_total") == 0
        client.send(PingReq())
        client.expect(PingResp)
        samples = scrape(broker)
        assert value(samples, "iotbroker_connections_parked") == 0
        assert value(samples, "iotbroker_connections_wakes_total") == 1
    log = broker.log_text()
    assert "re-adopting parked connection 'poa-ping'" in log
    assert "client 'poa-ping' connected from 127.0.0.1:" in log  # the same log line


@pytest.mark.parametrize("size", [FIRST_READ_SIZE, 2_000])
def test_connect_longer_than_the_first_read(make_broker: Callable[..., BrokerProcess],
                                            size: int) -> None:
    """A CONNECT of exactly ``FIRST_READ_SIZE`` bytes, and one longer (a will of
    ~2 KB), sent in one segment, is answered [MQTT-3.2.0-1] from the first read: the
    socket stays without a transport (no wake; server/parking.py reads the rest of a
    first read that filled ``FIRST_READ_SIZE`` at once, where a CONNECT cut at that
    size would wait for the socket's readiness and wake it)."""
    broker = make_broker(broker_config(extra=METRICS))
    base = encode_packet(Connect(client_id="poa-long", keepalive=60,
                                 will=Will("poa/will", b"", 0, False)), 4)
    pad = size - len(base)
    connect = encode_packet(Connect(client_id="poa-long", keepalive=60,
                                    will=Will("poa/will", b"x" * pad, 0, False)), 4)
    if len(connect) != size:  # the remaining length took one more byte
        connect = encode_packet(Connect(client_id="poa-long", keepalive=60,
                                        will=Will("poa/will", b"x" * (pad - 1), 0, False)), 4)
    assert len(connect) == size
    sock = socket.create_connection((broker.host, broker.port), timeout=5)
    try:
        sock.sendall(connect)
        assert _read(sock, 4) == b"\x20\x02\x00\x00"
        time.sleep(0.1)  # a CONNECT cut short would be read (and woken) by now
        samples = scrape(broker)
        assert value(samples, "iotbroker_connections_parked") == 1
        assert value(samples, "iotbroker_connections_wakes_total") == 0
    finally:
        sock.close()


def test_switch_off_accepts_with_a_transport(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """``park_on_accept: false``: accepted with the loop's server, as before."""
    extra = METRICS + "limits:\n  park_on_accept: false\n"
    broker = make_broker(broker_config(extra=extra))
    with RawClient(broker.host, broker.port) as client:
        assert client.connect("poa-off").reason_code == 0
        assert value(scrape(broker), "iotbroker_connections_parked") == 0
        client.send(PingReq())
        client.expect(PingResp)
    assert "re-adopting parked connection" not in broker.log_text()


def test_pipelined_packets_after_connect(make_broker: Callable[..., BrokerProcess]) -> None:
    """CONNECT and SUBSCRIBE in one segment (the client need not wait for CONNACK,
    MQTT 3.1.1 §3.1.4): both are handled from the first read, in order
    [MQTT-4.6.0-6]; the SUBACK [MQTT-3.8.4-1] follows the CONNACK."""
    broker = make_broker(broker_config())
    sock = socket.create_connection((broker.host, broker.port), timeout=5)
    try:
        sock.sendall(encode_packet(Connect(client_id="poa-pipe"), 4)
                     + encode_packet(Subscribe(1, [Subscription("poa/t", 0)]), 4))
        data = b""
        deadline = time.monotonic() + 5
        while len(data) < 4 + 5 and time.monotonic() < deadline:
            data += sock.recv(64)
        assert data[:4] == b"\x20\x02\x00\x00"
        assert data[4:9] == b"\x90\x03\x00\x01\x00"
    finally:
        sock.close()


def test_connect_arriving_after_the_accept(make_broker: Callable[..., BrokerProcess]) -> None:
    """The CONNECT is read right at the accept when it is there; a client that sends
    it later, and in two pieces, is read on the socket's readiness as before:
    [MQTT-3.2.0-1] CONNACK, then a PINGREQ answered [MQTT-3.12.4-1]."""
    broker = make_broker(broker_config())
    packet = encode_packet(Connect(client_id="poa-late", keepalive=60), 4)
    sock = socket.create_connection((broker.host, broker.port), timeout=5)
    try:
        time.sleep(0.3)  # accepted (and its first read tried) long before this
        sock.sendall(packet[:5])
        time.sleep(0.1)
        sock.sendall(packet[5:])
        assert _read(sock, 4) == b"\x20\x02\x00\x00"
        sock.sendall(encode_packet(PingReq(), 4))
        assert _read(sock, 2) == b"\xd0\x00"
    finally:
        sock.close()


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    deadline = time.monotonic() + 5
    while len(data) < size and time.monotonic() < deadline:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("storage", ["memory", "rocksdb"])
def test_pipelined_retained_publish_acknowledged_after_connack(
    make_broker: Callable[..., BrokerProcess], storage: str,
) -> None:
    """CONNECT and a retained QoS 1 PUBLISH in one segment: the CONNACK first
    [MQTT-3.2.0-1], then the PUBACK [MQTT-3.3.4-1] (the CONNACK of a socket accepted
    without a transport is written at once only when nothing of the turn waits for
    the store: here the retained message does); the message is retained for a later
    subscriber [MQTT-3.3.1-6]."""
    broker = make_broker(broker_config(storage=storage))
    with RawClient(broker.host, broker.port) as pub:
        pub.send_raw(encode_packet(Connect(client_id="poa-ret"), 4)
                     + encode_packet(Publish("poa/ret", b"kept", 1, True, False, 7), 4))
        assert pub.expect(ConnAck).reason_code == 0
        assert pub.expect(PubAck).packet_id == 7
    with RawClient(broker.host, broker.port) as sub:
        assert sub.connect("poa-ret-sub").reason_code == 0
        sub.subscribe("poa/ret", qos=1)
        got = sub.receive_publish()
        assert (got.topic, got.payload, got.retain) == ("poa/ret", b"kept", True)


def test_keepalive_expiry_publishes_will(make_broker: Callable[..., BrokerProcess]) -> None:
    """[MQTT-3.1.2-24]: a client that never sends after its CONNECT (so never had a
    transport) is closed 1.5 × Keep Alive later and [MQTT-3.1.2-8] its will published."""
    broker = make_broker(broker_config())
    with RawClient(broker.host, broker.port) as watcher, \
            RawClient(broker.host, broker.port) as idle:
        assert watcher.connect("poa-watch").reason_code == 0
        watcher.subscribe("poa/will")
        assert idle.connect("poa-ka", keepalive=1,
                            will=Will("poa/will", b"gone", 0, False)).reason_code == 0
        started = time.monotonic()
        assert watcher.receive_publish(timeout=5).payload == b"gone"
        assert time.monotonic() - started < 3
        idle.expect_closed()


def test_connect_timeout_closes_a_silent_socket(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """A socket that never sends CONNECT is closed after mqtt.connect_timeout
    (MQTT 3.1.1 §3.1.4 / MQTT 5.0 §4.2: the server may close it)."""
    broker = make_broker(broker_config(extra="mqtt:\n  connect_timeout: 0.5\n"))
    sock = socket.create_connection((broker.host, broker.port), timeout=5)
    try:
        started = time.monotonic()
        assert sock.recv(16) == b""
        assert time.monotonic() - started < 3
    finally:
        sock.close()
    _wait_log(broker, "no CONNECT within")


def test_takeover_of_a_connection_without_transport(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """[MQTT-3.1.4-3]: the same client id again closes the first connection; MQTT 5
    tells it DISCONNECT 0x8E first, though it never had a transport."""
    broker = make_broker(broker_config())
    with RawClient(broker.host, broker.port, version=5) as first:
        assert first.connect("poa-take").reason_code == 0
        with RawClient(broker.host, broker.port, version=5) as second:
            assert second.connect("poa-take").reason_code == 0
            packets = first.expect_closed()
            assert any(isinstance(p, Disconnect) and p.reason_code == 0x8E for p in packets)
            second.send(PingReq())
            second.expect(PingResp)


def test_max_connections_refuses_before_connect(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """limits.max_connections still refuses the socket at its accept."""
    broker = make_broker(broker_config(extra="limits:\n  max_connections: 1\n"))
    with RawClient(broker.host, broker.port) as first:
        assert first.connect("poa-max-1").reason_code == 0
        sock = socket.create_connection((broker.host, broker.port), timeout=5)
        try:
            assert sock.recv(16) == b""
        finally:
            sock.close()
    _wait_log(broker, "limits.max_connections (1) reached")


def test_delivery_to_parked_subscriber_needs_no_wake(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """A QoS 0 message for a parked subscriber is written with one send, without
    giving the socket a transport (no wake); its order holds [MQTT-4.6.0-6]."""
    broker = make_broker(broker_config(extra="limits:\n  park_idle_after: 0.1\n"))
    with RawClient(broker.host, broker.port) as sub, \
            RawClient(broker.host, broker.port) as pub:
        assert sub.connect("poa-sub").reason_code == 0
        sub.subscribe("poa/d")
        assert pub.connect("poa-pub").reason_code == 0
        _wait_log(broker, "parked idle connection 'poa-sub'")
        woken = "re-adopting parked connection 'poa-sub'"
        wakes = broker.log_text().count(woken)  # once: its SUBSCRIBE after the CONNECT
        for i in range(3):
            pub.publish("poa/d", f"m{i}".encode(), qos=0)
        assert [sub.receive_publish().payload for _ in range(3)] == [b"m0", b"m1", b"m2"]
        assert broker.log_text().count(woken) == wakes


def test_v5_clients_told_server_shutting_down(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """MQTT 5.0 §3.14.2.1: on SIGTERM clients that never had a transport get
    DISCONNECT 0x8B [MQTT-3.14.4-1], then the close."""
    broker = make_broker(broker_config())
    clients = [RawClient(broker.host, broker.port, version=5) for _ in range(10)]
    for i, client in enumerate(clients):
        assert client.connect(f"poa-down-{i}").reason_code == 0
    assert broker.stop() == 0
    for client in clients:
        packets = client.expect_closed()
        assert packets and isinstance(packets[-1], Disconnect), packets
        assert packets[-1].reason_code == 0x8B
        client.close()


def test_park_on_accept_config() -> None:
    """A bool, on by default; errors name the key path and the value."""
    assert parse_config({}, "t.yaml").limits.park_on_accept is True
    assert parse_config({"limits": {"park_on_accept": False}}, "t.yaml").limits \
        .park_on_accept is False
    with pytest.raises(ConfigError, match=r"limits\.park_on_accept"):
        parse_config({"limits": {"park_on_accept": "sometimes"}}, "t.yaml")

