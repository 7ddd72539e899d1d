"""Connections that hold a socket and do nothing useful (issue 7).

* never sending CONNECT (or only part of it): closed after ``mqtt.connect_timeout``;
* half-open (the client vanished without FIN: it simply stops sending and reading):
  closed when its keep alive expires (1.5 x Keep Alive [MQTT-3.1.2-24]);
* Keep Alive 0 and vanished: the spec gives the server no timer. The connection is
  kept at the MQTT level, but the broker turns on TCP keepalive for it so a vanished
  peer is found; ``mqtt.max_keepalive`` lowers the keep alive, which
  configuration.md says applies to a request of 0 too.

A healthy client is served during and after; the broker's fds come back.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from iotbroker.codec.packets import Disconnect
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.conformance import closed_with, connected, disconnect_reason, ping
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


def _closed_at(sock: socket.socket, deadline: float) -> float | None:
    """When the broker closed ``sock`` (EOF or reset), or None if not by ``deadline``."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return None
        except OSError:
            return time.monotonic()
        if not data:
            return time.monotonic()
    return None


def test_sockets_without_connect_are_closed_after_connect_timeout(make_broker: Factory) -> None:
    broker = make_broker(config_text=config(mqtt="connect_timeout: 1s"))
    base_fds = fd_count(broker)
    connect = raw_connect_bytes("partial", 4)
    with sockets() as held:
        opened = time.monotonic()
        for i in range(300):
            s = socket.create_connection((broker.host, broker.port), timeout=3.0)
            held.append(s)
            if i % 10 == 0:
                s.sendall(connect[:5])  # part of a CONNECT, then nothing
            elif i % 10 == 1:
                s.sendall(connect[:-1])  # all of it but the last byte
        # DURING: 300 silent sockets do not stop a real client.
        assert probe(broker) < 1.0
        assert fd_count(broker) >= base_fds + 300
        deadline = opened + 4.0
        closed = [_closed_at(s, deadline) for s in held]
        assert all(t is not None for t in closed), (
            f"{sum(t is None for t in closed)} of 300 sockets still open 4 s after a 1 s "
            "connect_timeout"
        )
        earliest = min(t for t in closed if t is not None) - opened
        assert earliest >= 0.8, f"closed after {earliest:.2f}s, before connect_timeout"
    assert broker.log_text().count("no CONNECT within") >= 300
    # AFTER: fds back, broker healthy.
    assert wait_fds(broker, base_fds) <= base_fds
    healthy(broker)


def test_trickled_connect_is_still_closed_at_connect_timeout(make_broker: Factory) -> None:
    """Slowloris: one CONNECT byte every 0.2 s; the timeout counts from the accept."""
    broker = make_broker(config_text=config(mqtt="connect_timeout: 1s"))
    connect = raw_connect_bytes("slowloris", 4)
    with socket.create_connection((broker.host, broker.port), timeout=3.0) as s:
        opened = time.monotonic()
        closed_at = None
        for byte in connect[:-1]:
            try:
                s.sendall(bytes((byte,)))
            except OSError:
                closed_at = time.monotonic()
                break
            time.sleep(0.2)
            if time.monotonic() - opened > 3.0:
                break
        if closed_at is None:
            closed_at = _closed_at(s, opened + 3.5)
        assert closed_at is not None, "a trickled CONNECT kept the socket open past 3.5 s"
        assert closed_at - opened < 2.0, closed_at - opened
    healthy(broker)


def test_half_open_client_is_closed_by_keepalive(make_broker: Factory) -> None:
    """Clients that vanish without FIN (they stop sending and reading) are closed at
    1.5 x Keep Alive; MQTT 5.0 ones get DISCONNECT 0x8D first; counted."""
    broker = make_broker(config_text=config())
    base_fds = fd_count(broker)
    ghosts = [connected(broker.host, broker.port, v, f"ghost-{v}-{i}", keepalive=1)
              for v in (4, 5) for i in range(5)]
    started = time.monotonic()
    try:
        assert probe(broker) < 1.0  # DURING
        for ghost in ghosts:
            got = closed_with(ghost, timeout=4.0)
            if ghost.version == 5:
                assert disconnect_reason(got) == 0x8D, got
            else:
                assert not any(isinstance(p, Disconnect) for p in got), got
        elapsed = time.monotonic() - started
        assert 1.2 <= elapsed < 4.0, elapsed
    finally:
        for ghost in ghosts:
            ghost.close()
    assert metric(broker, "iotbroker_keepalive_timeouts_total") == len(ghosts)
    assert wait_fds(broker, base_fds) <= base_fds
    healthy(broker)


def test_keepalive_0_client_is_kept_by_mqtt_and_probed_by_tcp(make_broker: Factory) -> None:
    """Keep Alive 0 means "no keep alive" [MQTT-3.1.2-10 area]: MQTT gives the broker no
    timer, so a silent Keep Alive 0 client stays connected; but one that vanished
    without a FIN must not hold its fd and session forever, so the broker turns on TCP
    keepalive for such connections (timer 2 in /proc/net/tcp), and only for them."""
    broker = make_broker(config_text=config())
    clients = [connected(broker.host, broker.port, v, f"ka0-{v}", keepalive=0) for v in (4, 5)]
    with_keepalive = connected(broker.host, broker.port, 4, "ka60", keepalive=60)
    try:
        time.sleep(2.5)
        for client in clients:
            ping(client)  # still open after 2.5 s of silence
        assert broker.proc is not None
        for client in clients:
            port = client.sock.getsockname()[1]
            assert _has_tcp_keepalive(broker.proc.pid, port)
        port = with_keepalive.sock.getsockname()[1]
        assert not _has_tcp_keepalive(broker.proc.pid, port, wait=0.5)
    finally:
        for client in [*clients, with_keepalive]:
            client.close()
    healthy(broker)


def _has_tcp_keepalive(pid: int, peer_port: int, wait: float = 2.0) -> bool:
    """Whether the broker's end of the connection to ``peer_port`` has SO_KEEPALIVE
    (the timer column of /proc/net/tcp is 2 for a keepalive timer). While data just
    sent is unacknowledged the column shows the retransmit timer (1) instead, so it
    is read again until it shows 2 or ``wait`` seconds pass; a socket without
    SO_KEEPALIVE never shows 2."""
    from pathlib import Path  # noqa: PLC0415

    deadline = time.monotonic() + wait
    while True:
        timer = None
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[2].split(":")[1], 16) == peer_port:
                timer = int(cols[5].split(":")[0], 16)
                break
        if timer == 2:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def test_keepalive_0_is_lowered_to_max_keepalive_for_both_versions(make_broker: Factory) -> None:
    """configuration.md: "A larger request (or 0, "no keep alive") is lowered to this
    [mqtt.max_keepalive]; MQTT 5.0 clients are told with Server Keep Alive." So a
    vanished Keep Alive 0 client, of either version, is closed at 1.5 x max_keepalive."""
    broker = make_broker(config_text=config(mqtt="max_keepalive: 1"))
    v5 = connected(broker.host, broker.port, 5, "ka0-v5", keepalive=0)
    v4 = connected(broker.host, broker.port, 4, "ka0-v4", keepalive=0)
    try:
        got5 = closed_with(v5, timeout=4.0)
        assert disconnect_reason(got5) == 0x8D, got5
        try:
            closed_with(v4, timeout=2.0)
        except AssertionError as exc:
            raise AssertionError(
                "MQTT 3.1.1 client with Keep Alive 0 was not closed after 3+ s of silence "
                "although mqtt.max_keepalive is 1 s (configuration.md says 0 is lowered to "
                "max_keepalive)"
            ) from exc
    finally:
        v4.close()
        v5.close()
    healthy(broker)
