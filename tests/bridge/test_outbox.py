"""The bridge's outbox: on disk, bounded, in order, and kept across ``kill -9``.

Messages for the remote are queued by the bridge's engine session in RocksDB, in the
same commit as the PUBACK's other changes (design.md, "A QoS 1 PUBLISH"), so what the
gateway acknowledged survives a crash [MQTT-4.3.2-1]... and it leaves in the order it
was accepted [MQTT-4.6.0-5]. Set IOTBROKER_BRIDGE_FULL=1 for the issue's 10,000.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from iotbroker.codec.packets import Properties, PubAck, Publish
from tests.bridge.conftest import (
    Mosquitto,
    bridge_yaml,
    collect,
    config_with_bridges,
    quiet,
    wait_for_log,
)
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient

MakeBroker = Callable[..., BrokerProcess]
MakeMosquitto = Callable[..., Mosquitto]
FULL = os.environ.get("IOTBROKER_BRIDGE_FULL") == "1"
N = 10_000 if FULL else 2_000
#: The bound test: published, outbox bound (the issue's 10,000 / 5,000 when FULL).
PUBLISHED, BOUND = (10_000, 5_000) if FULL else (500, 300)


def _publish_acked(proc: BrokerProcess, start: int, stop: int) -> None:
    """QoS 1 messages ``start..stop-1`` (payload = number), 100 in flight at a time;
    returns when each one is acknowledged."""
    with RawClient(proc.host, proc.port, version=5, timeout=30) as c:
        c.connect("publisher")
        for first in range(start, stop, 100):
            ids = []
            for i in range(first, min(first + 100, stop)):
                pid = c.packet_id()
                ids.append(pid)
                c.send(Publish("data/x", str(i).encode(), 1, False, False, pid, Properties()))
            for pid in ids:
                ack = c.expect(PubAck, 30)
                assert ack.packet_id == pid


def _remote_subscriber(mosq: Mosquitto) -> None:
    """A persistent session on mosquitto that keeps what arrives while it is away."""
    with RawClient("127.0.0.1", mosq.port, version=5) as s:
        s.connect("collector", clean_start=False,
                  properties=Properties(session_expiry_interval=3600))
        s.subscribe("site/#", qos=1)
        s.disconnect()


def _drain(mosq: Mosquitto, count: int) -> list[int]:
    with RawClient("127.0.0.1", mosq.port, version=5, timeout=30) as s:
        s.connect("collector", clean_start=False,
                  properties=Properties(session_expiry_interval=3600))
        got = collect(s, count, timeout=60)
        quiet(s, 1.0)
    assert all(p.topic == "site/data/x" for p in got)
    return [int(p.payload) for p in got]


def _persistent_mosquitto(make_mosquitto: MakeMosquitto, tmp: Path) -> Mosquitto:
    # ``user``: mosquitto started as root would switch to user mosquitto, which may
    # not write the test's directory.
    return make_mosquitto(f"persistence true\npersistence_location {tmp}/\n"
                          f"autosave_interval 0\nuser {getpass.getuser()}\n")


def test_outage_and_kill9_lose_nothing_acknowledged(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto, tmp_path: Path) -> None:
    """Remote down; N QoS 1 messages published, the gateway killed with SIGKILL half-way
    and restarted; then the remote comes back: all N arrive, once each, in order."""
    mosq = _persistent_mosquitto(make_mosquitto, tmp_path)
    _remote_subscriber(mosq)
    mosq.stop()
    gw = make_broker(config_with_bridges(bridge_yaml(
        "cloud", mosq.port, ['{pattern: "data/#", direction: out, qos: 1, '
                             'remote_prefix: "site/"}']), storage="rocksdb"))
    started = time.monotonic()
    _publish_acked(gw, 0, N // 2)
    gw.kill()  # SIGKILL: only what was committed survives
    gw.start()
    wait_for_log(gw, "restored")
    assert f"{N // 2} queued/in-flight" in gw.log_text()
    _publish_acked(gw, N // 2, N)
    mosq.start()
    wait_for_log(gw, "bridge 'cloud': connected to", timeout=20)
    assert _drain(mosq, N) == list(range(N))
    print(f"{N} messages through outage + kill -9 in {time.monotonic() - started:.1f}s")


@pytest.mark.parametrize("policy", ["drop-oldest", "drop-new"])
def test_outbox_bound_drops_exactly_the_excess(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto, tmp_path: Path,
        policy: str) -> None:
    """``outbox.max_messages`` BOUND, PUBLISHED messages during the outage: the policy
    drops exactly the excess (the oldest or the newest), counted in $SYS, logged once."""
    mosq = _persistent_mosquitto(make_mosquitto, tmp_path)
    _remote_subscriber(mosq)
    mosq.stop()
    extra = f"    outbox: {{max_messages: {BOUND}, policy: {policy}}}\n"
    gw = make_broker(config_with_bridges(bridge_yaml(
        "cloud", mosq.port, ['{pattern: "data/#", direction: out, qos: 1, '
                             'remote_prefix: "site/"}'], extra=extra),
        storage="rocksdb", sys_interval="200ms"))
    _publish_acked(gw, 0, PUBLISHED)
    excess = str(PUBLISHED - BOUND).encode()
    with RawClient(gw.host, gw.port, version=5) as c:
        c.connect("sys-reader")
        c.subscribe("$SYS/broker/connection/cloud/dropped")
        deadline = time.monotonic() + 5
        while (value := c.receive_publish(timeout=5).payload) != excess:
            assert time.monotonic() < deadline, value
    wait_for_log(gw, "messages dropped (policy")
    wait_for_log(gw, "outbox drops stopped")
    assert gw.log_text().count("outbox full") == 1
    mosq.start()
    wait_for_log(gw, "bridge 'cloud': connected to", timeout=20)
    got = _drain(mosq, BOUND)
    assert got == (list(range(PUBLISHED - BOUND, PUBLISHED)) if policy == "drop-oldest"
                   else list(range(BOUND)))
