"""Interoperability with an existing MQTT-SN 1.2 client from PyPI (``mqtt-sn-12``, its
``mqtt_sn_pub`` / ``mqtt_sn_sub`` tools), both directions, with mosquitto's MQTT
clients on the other side of the broker."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.helpers.broker_process import BrokerProcess, broker_config

LISTENERS = (
    "listeners:\n"
    "  - {name: default, type: tcp, host: 127.0.0.1, port: 0}\n"
    "  - {name: sn, type: mqtt-sn, host: 127.0.0.1, port: 0}\n"
)
EXTRA = "mqttsn:\n  advertise_interval: 0\n  predefined_topics: {5: interop/predefined}\n"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("sn-interop"),
                         broker_config(listeners=LISTENERS, extra=EXTRA)).start()
    yield proc
    proc.stop()


def _tool(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"mqttsn12.{name}", *args]


@pytest.mark.parametrize(("qos", "topic"), [("0", "interop/pub0"), ("1", "interop/pub1"),
                                            ("-1", "ip")])
def test_mqtt_sn_pub_reaches_mosquitto_sub(broker: BrokerProcess, qos: str,
                                           topic: str) -> None:
    """§6.5/§6.7 (REGISTER then PUBLISH) and §6.8 (QoS −1 to a short topic name, no
    connection) as an independent client does them."""
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.ports["default"]), "-t", topic,
         "-C", "1", "-W", "15"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        out = ""
        for _ in range(8):  # again until mosquitto_sub (subscribing) has one
            subprocess.run(_tool("mqtt_sn_pub", "-p", str(broker.ports["sn"]), "-t", topic,
                                 "-m", f"hello{qos}", "-q", qos, "--timeout", "5"),
                           check=True, timeout=30, capture_output=True)
            try:
                out, _ = sub.communicate(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if sub.poll() is None:
            sub.kill()
    assert out.strip() == f"hello{qos}"


@pytest.mark.parametrize("how", [["-t", "interop/wild/#"], ["-T", "5"]],
                         ids=["wildcard", "predefined"])
def test_mosquitto_pub_reaches_mqtt_sn_sub(broker: BrokerProcess, how: list[str]) -> None:
    """§6.9/§6.10: a wildcard subscription (the gateway REGISTERs the topic before the
    PUBLISH) and a predefined topic id."""
    topic = "interop/wild/x" if how[0] == "-t" else "interop/predefined"
    sub = subprocess.Popen(
        _tool("mqtt_sn_sub", "-p", str(broker.ports["sn"]), *how, "-q", "1", "-1",
              "--timeout", "10"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        out, err = "", ""
        for _ in range(10):  # again until mqtt_sn_sub (connecting, subscribing) has one
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p",
                            str(broker.ports["default"]), "-t", topic, "-m", "from-mqtt",
                            "-q", "1"], check=True, timeout=10)
            try:
                out, err = sub.communicate(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if sub.poll() is None:
            sub.kill()
    assert out.strip() == "from-mqtt", err
