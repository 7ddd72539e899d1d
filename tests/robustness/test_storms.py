"""Session takeover loops and reconnect storms (issue 7).

* 200 takeovers of one client id in a bounded loop: every old connection is closed
  (MQTT 5.0: DISCONNECT 0x8E [MQTT-3.1.4-3]), the session survives, the broker stays
  responsive and its fds come back (no leak).
* 1,000 clients connecting at once, then all vanishing, then 1,000 again with the same
  ids while the first ones are still open (1,000 simultaneous takeovers).
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable

from iotbroker.codec import Framer, decode_packet
from iotbroker.codec.packets import ConnAck, Disconnect, Properties, Publish
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.conformance import closed_with, connected, disconnect_reason
from tests.helpers.rawclient import RawClient
from tests.robustness.helpers import (
    config,
    fd_count,
    healthy,
    metric,
    probe,
    raw_connect_bytes,
    sockets,
    wait_fds,
)

Factory = Callable[..., BrokerProcess]


def test_200_takeovers_of_one_client_id(make_broker: Factory) -> None:
    broker = make_broker(config_text=config())
    base_fds = fd_count(broker)
    client_id = "takeover-loop"
    props = Properties(session_expiry_interval=300)
    current = RawClient(broker.host, broker.port, version=5, timeout=3.0)
    assert current.connect(client_id, properties=props).reason_code == 0
    current.subscribe("takeover/t", 1)
    started = time.monotonic()
    try:
        for i in range(200):
            version = 5 if i % 2 else 4
            new = RawClient(broker.host, broker.port, version=version, timeout=3.0)
            ack = new.connect(client_id, clean_start=False, keepalive=30,
                              properties=props if version == 5 else None)
            assert ack.reason_code == 0 and ack.session_present, (i, ack)
            got = closed_with(current, timeout=3.0)
            if current.version == 5:
                assert disconnect_reason(got) == 0x8E, (i, got)
            else:
                assert not any(isinstance(p, Disconnect) for p in got), (i, got)
            current.close()
            current = new
            if i % 50 == 0:
                assert probe(broker) < 1.0, f"broker slow during takeover {i}"
            assert time.monotonic() - started < 12.0, f"only {i} takeovers in 12 s"
        # The session (and its subscription) survived all of them.
        with connected(broker.host, broker.port, 4, "takeover-pub") as pub:
            pub.publish("takeover/t", b"still here", qos=1)
        pub_packet = current.expect(Publish, timeout=3.0)
        assert pub_packet.payload == b"still here"
    finally:
        current.close()
    assert metric(broker, "iotbroker_session_takeovers_total") == 200
    fds = wait_fds(broker, base_fds)
    assert fds <= base_fds, f"broker holds {fds - base_fds} more fds after 200 takeovers"
    healthy(broker)


def _storm(broker: BrokerProcess, ids: list[str], held: list[socket.socket],
           timeout: float) -> tuple[int, float]:
    """Open one socket per id at once, send every CONNECT, then collect CONNACKs with a
    selector. Returns (CONNACK 0 count, seconds)."""
    started = time.monotonic()
    new: list[socket.socket] = []
    for _ in ids:
        s = socket.create_connection((broker.host, broker.port), timeout=5.0)
        held.append(s)
        new.append(s)
    for s, client_id in zip(new, ids, strict=True):
        s.sendall(raw_connect_bytes(client_id, 4, keepalive=60))
        s.setblocking(False)
    sel = selectors.DefaultSelector()
    framers = {}
    for s in new:
        sel.register(s, selectors.EVENT_READ)
        framers[s] = Framer(1 << 16)
    ok = 0
    deadline = started + timeout
    try:
        while framers and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.01, deadline - time.monotonic())):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                done = not data
                for first, body in framers[sock].feed(data):
                    packet = decode_packet(first, body, 4)
                    if isinstance(packet, ConnAck):
                        ok += packet.reason_code == 0
                        done = True
                if done:
                    sel.unregister(sock)
                    del framers[sock]
    finally:
        sel.close()
    return ok, time.monotonic() - started


def test_reconnect_storm_of_1000_clients(make_broker: Factory) -> None:
    broker = make_broker(config_text=config())
    base_fds = fd_count(broker)
    ids = [f"storm-{i}" for i in range(1000)]
    with sockets() as first:
        ok, took = _storm(broker, ids, first, timeout=10.0)
        assert ok == 1000, f"{ok} of 1000 CONNACKs in {took:.1f}s"
        assert probe(broker) < 1.0  # DURING: 1,000 connected
        assert metric(broker, "iotbroker_clients_connected") == 1000
        # Same 1,000 ids again while the first are open: 1,000 takeovers at once.
        with sockets() as second:
            ok2, took2 = _storm(broker, ids, second, timeout=10.0)
            assert ok2 == 1000, f"{ok2} of 1000 CONNACKs in {took2:.1f}s (takeover storm)"
            assert probe(broker) < 1.0
            # Every first-generation socket was closed by the broker.
            open_first = 0
            for s in first:
                s.setblocking(True)
                s.settimeout(0.5)
                try:
                    while s.recv(4096):
                        pass
                except TimeoutError:
                    open_first += 1
                except OSError:
                    pass
            assert open_first == 0, f"{open_first} taken-over connections still open"
            assert metric(broker, "iotbroker_session_takeovers_total") == 1000
        # The second generation vanished (closed by us, no DISCONNECT).
    fds = wait_fds(broker, base_fds, timeout=8.0)
    assert fds <= base_fds, f"broker holds {fds - base_fds} more fds after the storm"
    deadline = time.monotonic() + 5.0
    while metric(broker, "iotbroker_clients_connected") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(broker, "iotbroker_clients_connected") == 0
    healthy(broker)
