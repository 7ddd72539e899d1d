"""Keep Alive and PINGREQ/PINGRESP (MQTT 3.1.1 §3.1.2.10, §3.12-3.13; MQTT 5.0 §3.1.2.10,
§3.2.2.3.14, §3.12-3.13)."""

from __future__ import annotations

import time

import pytest

from iotbroker.codec.packets import PingReq, PingResp
from tests.helpers.conformance import disconnect_reason, ping
from tests.helpers.rawclient import RawClient

VERSIONS = pytest.mark.parametrize("version", [4, 5])


@VERSIONS
def test_mqtt_3_12_4_1_pingreq_gets_pingresp(raw, uniq: str, version: int) -> None:
    """[MQTT-3.12.4-1] (both): every PINGREQ is answered with a PINGRESP."""
    client: RawClient = raw(version)
    client.connect(uniq)
    for _ in range(3):
        client.send(PingReq())
    for _ in range(3):
        client.expect(PingResp)
    client.nothing(0.1)


@VERSIONS
def test_mqtt_3_1_2_24_keepalive_1_5x_closes(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-24] (3.1.1) / [MQTT-3.1.2-22] (5.0): a client silent for 1.5 x a
    non-zero Keep Alive (1 s -> 1.5 s) is disconnected; 5.0 gets DISCONNECT 0x8D Keep Alive
    timeout first. Not much earlier either."""
    client: RawClient = raw(version)
    started = time.monotonic()
    client.connect(uniq, keepalive=1)
    got = client.expect_closed(3.5)
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed <= 3.0, elapsed
    if version == 5:
        assert disconnect_reason(got) == 0x8D, got
    else:
        assert got == [], got


@VERSIONS
def test_mqtt_3_1_2_24_activity_keeps_connection_alive(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-24] (3.1.1) / [MQTT-3.1.2-22] (5.0): the timer counts from the last
    packet received; a client that sends a PINGREQ or a PUBLISH every 0.5 s with Keep Alive
    1 s stays connected well past 1.5 s."""
    client: RawClient = raw(version)
    client.connect(uniq, keepalive=1)
    deadline = time.monotonic() + 2.1
    i = 0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if i % 2:
            ping(client)
        else:
            client.publish(f"{uniq}/alive", b"%d" % i, 0)
        i += 1
    ping(client)


@VERSIONS
def test_keepalive_0_never_times_out(raw, uniq: str, version: int) -> None:
    """MQTT 3.1.1 §3.1.2.10 / 5.0 §3.1.2.10: Keep Alive 0 turns the mechanism off; a silent
    client stays connected (bounded wait: 2 s)."""
    client: RawClient = raw(version)
    ack = client.connect(uniq, keepalive=0)
    if version == 5:
        assert ack.properties.server_keep_alive is None
    client.nothing(1.8)
    ping(client)


def test_mqtt_3_2_2_22_v5_server_keep_alive_enforced(make_broker, uniq: str) -> None:
    """MQTT 5.0 §3.2.2.3.14: a server with a lower maximum sends Server Keep Alive and
    uses it ([MQTT-3.1.2-21] / [MQTT-3.2.2-21] bind the client; the server closes after
    1.5 x its own value [MQTT-3.1.2-22]); without Server Keep Alive the client's value is
    used [MQTT-3.2.2-22] (see the tests above)."""
    b = make_broker(extra="mqtt:\n  max_keepalive: 1\n")
    clients = [RawClient(b.host, b.port, 5, timeout=3.0) for _ in range(2)]
    try:
        started = time.monotonic()
        for client, requested in zip(clients, (60, 0), strict=True):
            ack = client.connect(f"{uniq}-{requested}", keepalive=requested)
            assert ack.properties.server_keep_alive == 1
        for client in clients:
            got = client.expect_closed(3.5)
            assert 1.4 <= time.monotonic() - started <= 3.0
            assert disconnect_reason(got) == 0x8D
            # [MQTT-3.14.2-2] (5.0): no Session Expiry Interval on the server's DISCONNECT.
            assert all(
                p.properties.session_expiry_interval is None
                for p in got
                if hasattr(p, "properties")
            )
    finally:
        for client in clients:
            client.close()
