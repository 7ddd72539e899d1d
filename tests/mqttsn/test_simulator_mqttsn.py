"""The simulator (iotsim) drives MQTT-SN devices beside MQTT devices against the real
broker: the same accounting of loss, duplicates and latency (monitors subscribe over
MQTT), QoS -1/0/1/2 publishing, subscribing MQTT-SN dashboards, sleep cycles (§6.14)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from iotsim.runner import run
from iotsim.scenario import ScenarioError, parse_scenario

from tests.helpers.broker_process import BrokerProcess, broker_config

LISTENERS = (
    "listeners:\n"
    "  - {name: default, type: tcp, host: 127.0.0.1, port: 0}\n"
    "  - {name: sn, type: mqtt-sn, host: 127.0.0.1, port: 0}\n"
)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("sn-sim"), broker_config(
        listeners=LISTENERS, extra="mqttsn:\n  advertise_interval: 0\n")).start()
    yield proc
    proc.stop()


def _scenario(port: int) -> dict[str, Any]:
    return {
        "name": "mixed-sn",
        "duration": "3s",
        "connect_rate": "400/s",
        "mqttsn_port": port,
        "groups": [
            {"name": "mqtt", "count": 20, "interval": "200ms", "qos": {0: 1, 1: 1, 2: 1}},
            {"name": "sn", "count": 30, "protocol": "mqtt-sn", "interval": "200ms",
             "qos": {0: 1, 1: 1, 2: 1}},
            {"name": "snm1", "count": 10, "protocol": "mqtt-sn", "interval": "200ms",
             "qos": 0, "qos_minus_one": True},
            {"name": "sleepy", "count": 10, "protocol": "mqtt-sn", "interval": "300ms",
             "qos": 1, "sleep": 2},
            {"name": "sndash", "count": 2, "protocol": "mqtt-sn", "behaviour": "dashboard",
             "subscribe": ["iotsim/{run}/sn/#"], "subscribe_qos": 1},
        ],
        "monitors": {"count": 1, "qos": 2},
    }


def test_iotsim_mixes_mqtt_and_mqtt_sn_devices(broker: BrokerProcess) -> None:
    report = run(parse_scenario(_scenario(broker.ports["sn"])), broker.host,
                 broker.ports["default"])
    m = report["messages"]
    assert report["devices"]["failed"] == 0, report["errors"]
    assert report["devices"]["connected"] == 72
    assert m["published"] > 0
    for q in ("1", "2"):
        b = m["by_qos"][q]
        assert b["lost"] == 0 and b["duplicated"] == 0, (q, b)
    assert m["by_qos"]["0"]["duplicated"] == 0
    assert m["unconfirmed"] == 0
    assert m["subscribers"] == 3  # the MQTT monitor and the two MQTT-SN dashboards
    for q in ("1", "2"):  # QoS 0 over UDP may lose a datagram under load; 1/2 may not
        assert m["by_qos"][q]["delivered"] == m["by_qos"][q]["expected"] > 0
    assert report["ok"], (report["violations"], report["errors"])


def test_mqtt_sn_keys_are_checked() -> None:
    bad = _scenario(1884)
    bad["groups"][0]["sleep"] = 5
    with pytest.raises(ScenarioError, match="only for protocol: mqtt-sn"):
        parse_scenario(bad)
    bad = _scenario(1884)
    bad["groups"][3]["interval"] = "5s"  # sleeps 2 s: would be lost between ticks
    with pytest.raises(ScenarioError, match="at least the interval"):
        parse_scenario(bad)
