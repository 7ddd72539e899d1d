"""Parked idle connections (limits.park_idle_after, server/parking.py; issue 19).

An idle plain-TCP connection is parked: its socket leaves the event loop's transports
and waits in one epoll set. Everything MQTT promises about an idle connection must hold
as before: it answers a PINGREQ, receives what is published to it, its Keep Alive
deadline closes it and publishes its will, a takeover closes it, its own close publishes
its will, and the broker stops cleanly with parked connections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from iotbroker.codec.packets import Disconnect, PingReq, PingResp, Publish, Will
from iotbroker.config import parse_config
from iotbroker.engine.client import Client
from iotbroker.errors import ConfigError
from iotbroker.protocol.connection import Connection
from iotbroker.server.parked import NOT_PARKED
from iotbroker.server.parking import FIRST_PARK_AFTER, PRUNE_AFTER, TIMER_SLACK, Parking
from iotbroker.server.transport import ClientProtocol
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import RawClient
from tests.server.test_metrics_http import scrape, value

#: Sweeps every 0.1 s; a connection idle for two sweeps is parked.
#: park_on_accept off: these tests are about parking an idle connection that has a
#: transport (tests/server/test_park_on_accept.py: accepted without one).
PARK = "limits:\n  park_idle_after: 0.1\n  park_on_accept: false\n"


@pytest.fixture
def broker(make_broker: Callable[..., BrokerProcess]) -> BrokerProcess:
    return make_broker(broker_config(extra=PARK))


def _wait_parked(broker: BrokerProcess, client_id: str, times: int = 1,
                 timeout: float = 5.0) -> None:
    needle = f"parked idle connection {client_id!r}"
    deadline = time.monotonic() + timeout
    while broker.log_text().count(needle) < times:
        assert time.monotonic() < deadline, f"{client_id} was not parked {times}x"
        time.sleep(0.05)


def test_parking_metrics(make_broker: Callable[..., BrokerProcess]) -> None:
    """/metrics counts the parked connections, the parks and the wakes."""
    metrics = "metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n"
    broker = make_broker(broker_config(extra=PARK + metrics))
    with RawClient(broker.host, broker.port) as client:
        assert client.connect("park-metrics").reason_code == 0
        _wait_parked(broker, "park-metrics")
        samples = scrape(broker)
        assert value(samples, "iotbroker_connections_parked") == 1
        assert value(samples, "iotbroker_connections_parks_total") >= 1
        client.send(PingReq())
        client.expect(PingResp)
        assert value(scrape(broker), "iotbroker_connections_wakes_total") >= 1


def test_parked_connection_answers_pingreq(broker: BrokerProcess) -> None:
    """[MQTT-3.12.4-1]: the server sends PINGRESP to a PINGREQ, parked or not."""
    with RawClient(broker.host, broker.port) as client:
        assert client.connect("park-ping").reason_code == 0
        for round_ in range(1, 3):  # parked, woken by the ping, parked again
            _wait_parked(broker, "park-ping", times=round_)
            client.send(PingReq())
            client.expect(PingResp)
    assert "re-adopting parked connection 'park-ping'" in broker.log_text()


def test_parked_subscriber_receives(broker: BrokerProcess) -> None:
    """A message for a parked subscriber wakes its socket; QoS 1 is delivered and
    acknowledged [MQTT-4.3.2-1], in order [MQTT-4.6.0-6]."""
    with RawClient(broker.host, broker.port) as sub, \
            RawClient(broker.host, broker.port) as pub:
        assert sub.connect("park-sub", clean_start=False).reason_code == 0
        sub.subscribe("park/t", qos=1)
        assert pub.connect("park-pub").reason_code == 0
        _wait_parked(broker, "park-sub")
        for i in range(3):
            pub.publish("park/t", f"m{i}".encode(), qos=1)
        got = [sub.receive_publish().payload for _ in range(3)]
        assert got == [b"m0", b"m1", b"m2"]
        _wait_parked(broker, "park-sub", times=2)  # idle again after the burst
        pub.publish("park/t", b"again", qos=0)
        assert sub.receive_publish().payload == b"again"


def test_parked_keepalive_expiry_publishes_will(broker: BrokerProcess) -> None:
    """[MQTT-3.1.2-24]: no packet within 1.5 × Keep Alive closes the connection, and
    [MQTT-3.1.2-8] its will is published, though it was parked."""
    with RawClient(broker.host, broker.port) as watcher, \
            RawClient(broker.host, broker.port) as idle:
        assert watcher.connect("park-watch").reason_code == 0
        watcher.subscribe("park/will")
        assert idle.connect("park-ka", keepalive=1,
                            will=Will("park/will", b"gone", 0, False)).reason_code == 0
        _wait_parked(broker, "park-ka")
        started = time.monotonic()
        assert watcher.receive_publish(timeout=5).payload == b"gone"
        assert time.monotonic() - started < 3
        idle.expect_closed()
    assert "client 'park-ka' (127.0.0.1:" in broker.log_text()  # the timeout line


def test_parked_connection_taken_over(make_broker: Callable[..., BrokerProcess]) -> None:
    """[MQTT-3.1.4-3]: a CONNECT with the same client id closes the existing connection;
    MQTT 5 sends it DISCONNECT 0x8E (Session taken over) first, parked or not."""
    broker = make_broker(broker_config(extra=PARK))
    with RawClient(broker.host, broker.port, version=5) as first:
        assert first.connect("park-take").reason_code == 0
        _wait_parked(broker, "park-take")
        with RawClient(broker.host, broker.port, version=5) as second:
            assert second.connect("park-take").reason_code == 0
            packets = first.expect_closed()
            assert any(isinstance(p, Disconnect) and p.reason_code == 0x8E for p in packets)
            second.send(PingReq())
            second.expect(PingResp)


def test_parked_client_vanishing_publishes_will(broker: BrokerProcess) -> None:
    """[MQTT-3.1.2-8]: a parked client that closes its socket without DISCONNECT has its
    will published; one that sends DISCONNECT first has not [MQTT-3.1.2-10]."""
    with RawClient(broker.host, broker.port) as watcher:
        assert watcher.connect("park-watch2").reason_code == 0
        watcher.subscribe("park/will2/#")
        quiet = RawClient(broker.host, broker.port)
        assert quiet.connect("park-quiet",
                             will=Will("park/will2/quiet", b"q", 0, False)).reason_code == 0
        polite = RawClient(broker.host, broker.port)
        assert polite.connect("park-polite",
                              will=Will("park/will2/polite", b"p", 0, False)).reason_code == 0
        _wait_parked(broker, "park-quiet")
        _wait_parked(broker, "park-polite")
        polite.disconnect()
        quiet.close()
        pub = watcher.expect(Publish, timeout=5)
        assert (pub.topic, pub.payload) == ("park/will2/quiet", b"q")
        watcher.nothing(0.3)


def test_broker_stops_with_parked_connections(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    broker = make_broker(broker_config(extra=PARK))
    clients = [RawClient(broker.host, broker.port) for _ in range(5)]
    for i, client in enumerate(clients):
        assert client.connect(f"park-stop-{i}").reason_code == 0
    _wait_parked(broker, "park-stop-4")
    assert broker.stop() == 0
    for client in clients:
        client.expect_closed()
        client.close()


def test_parked_v5_client_told_server_shutting_down(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """MQTT 5.0 §3.14.2.1: on SIGTERM parked MQTT 5.0 clients get DISCONNECT 0x8B
    Server shutting down [MQTT-3.14.4-1] like the others, then the close."""
    broker = make_broker(broker_config(extra=PARK))
    clients = [RawClient(broker.host, broker.port, version=5) for _ in range(20)]
    for i, client in enumerate(clients):
        assert client.connect(f"park-down-{i}").reason_code == 0
    _wait_parked(broker, "park-down-19")
    assert broker.stop() == 0
    for client in clients:
        packets = client.expect_closed()
        assert packets and isinstance(packets[-1], Disconnect), packets
        assert packets[-1].reason_code == 0x8B
        client.close()


def test_parking_off_with_zero(make_broker: Callable[..., BrokerProcess],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``park_idle_after: 0`` never parks (the default is 30 s)."""
    monkeypatch.delenv("IOTBROKER_TEST_PARK_IDLE_AFTER", raising=False)
    broker = make_broker(broker_config(extra="limits:\n  park_idle_after: 0\n"))
    with RawClient(broker.host, broker.port) as client:
        assert client.connect("park-zero").reason_code == 0
        time.sleep(0.5)
        client.send(PingReq())
        client.expect(PingResp)
    assert "parked idle connection" not in broker.log_text()


def test_default_parks_a_silent_new_connection_early_and_a_talking_one_not_before_30s(
        make_broker: Callable[..., BrokerProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    """With the default configuration parking is on (30 s): a connection that says
    nothing after its CONNACK is parked FIRST_PARK_AFTER (0.2 s) later, once; one that
    has spoken since is not parked before 30 s of silence. (Waiting 30 s for that park
    is left to ``benchmarks/e2e.py --scenarios connect --settle 40``; the parking
    mechanism is the one the tests above drive with a short value.) With
    ``park_on_accept`` (default on) a new connection has no transport to park:
    tests/server/test_park_on_accept.py; this is the default parking without it."""
    monkeypatch.delenv("IOTBROKER_TEST_PARK_IDLE_AFTER", raising=False)
    broker = make_broker(broker_config(extra="limits:\n  park_on_accept: false\n"))
    with RawClient(broker.host, broker.port) as talking, \
            RawClient(broker.host, broker.port) as silent:
        assert talking.connect("park-talking").reason_code == 0
        talking.send(PingReq())
        talking.expect(PingResp)
        assert silent.connect("park-silent").reason_code == 0
        _wait_parked(broker, "park-silent", timeout=5.0)
        time.sleep(1.0)
        talking.send(PingReq())
        talking.expect(PingResp)
        silent.send(PingReq())  # wakes it
        silent.expect(PingResp)
    assert "parked idle connection 'park-talking'" not in broker.log_text()


def test_park_idle_after_config() -> None:
    """A duration ≥ 0; errors name the key path and the expectation."""
    assert parse_config({"limits": {"park_idle_after": "30s"}}, "t.yaml").limits.park_idle_after \
        == 30.0
    assert parse_config({}, "t.yaml").limits.park_idle_after == 30.0  # on by default
    assert parse_config({"limits": {"park_idle_after": 0}}, "t.yaml").limits \
        .park_idle_after == 0.0
    with pytest.raises(ConfigError, match=r"limits\.park_idle_after: -1 is not a duration"):
        parse_config({"limits": {"park_idle_after": -1}}, "t.yaml")


class _Proto(ClientProtocol):
    """A ClientProtocol with only what the parking's sweeps read: no broker, no socket
    (a real one: the compiled build's parking reads its fields natively)."""

    def __init__(self, *, queued: int = 0, received: float = 0.0,
                 transport: asyncio.BaseTransport | None = None) -> None:
        Client.__init__(self, Connection(max_packet_size=1 << 20, receive_maximum=10,
                                         topic_alias_maximum=0, now=received))
        self.conn.packets_queued = queued
        self.ended = False
        self.parked_fd = NOT_PARKED
        self.transport = transport
        self.packets_counted = queued
        self.park_mark = 0
        self.park_quiet = 0


def test_ended_connections_do_not_wait_for_the_next_sweep() -> None:
    """Issue 19: a connection is a parking candidate from its CONNACK to the next sweep
    (``park_idle_after`` / 4 later: 7.5 s by default); ended ones are pruned as they
    end (amortised), so a fleet that connects and leaves between two sweeps does not
    keep every closed connection (its transport, buffers, MQTT state) until then."""
    loop = asyncio.new_event_loop()
    try:
        parking = Parking(loop, 30.0)
        live = [_Proto() for _ in range(10)]
        gone = [_Proto() for _ in range(PRUNE_AFTER * 3)]
        for proto in live + gone:
            parking.watch(proto)
        for proto in gone:  # they end one after the other, as connections do
            proto.ended = True
            parking.ended()
        assert len(parking._candidates) < len(live) + PRUNE_AFTER
        assert all(proto in parking._candidates for proto in live)
    finally:
        loop.close()


class _RecordingParking(Parking):
    """Parking that records when it would park (no sockets)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, after: float) -> None:
        super().__init__(loop, after)
        self.parked_at: dict[int, float] = {}

    def _park(self, proto: object) -> bool:
        self.parked_at[id(proto)] = self._loop.time()
        return True


def test_fresh_connections_are_parked_no_sooner_than_first_park_after() -> None:
    """Issue 19: connections silent since their CONNACK are parked in batches (no
    per-connection record), each no sooner than FIRST_PARK_AFTER after its CONNACK and
    all of them soon after; one that spoke meanwhile is left to the regular sweep."""
    loop = asyncio.new_event_loop()
    parking = _RecordingParking(loop, 30.0)
    watched: dict[int, float] = {}
    protos = []

    def connect(talks: bool) -> None:
        now = loop.time()
        proto = _Proto(queued=1, received=now, transport=asyncio.BaseTransport())
        protos.append((proto, talks))
        watched[id(proto)] = now
        parking.watch(proto, connected=True)
        if talks:  # a packet 30 ms after its CONNACK that needs no answer (QoS 0)
            loop.call_later(0.03, setattr, proto.conn, "last_received", now + 0.03)

    try:
        parking.start()
        for i in range(16):
            loop.call_later(i * 0.02, connect, i % 5 == 0)
        loop.run_until_complete(asyncio.sleep(0.32 + FIRST_PARK_AFTER * 2.5))
    finally:
        parking.close()
        loop.close()
    for proto, talks in protos:
        if talks:
            assert id(proto) not in parking.parked_at
            continue
        waited = parking.parked_at[id(proto)] - watched[id(proto)]
        assert FIRST_PARK_AFTER - TIMER_SLACK <= waited <= FIRST_PARK_AFTER * 2.5
