"""The configuration contract of issue 16, as users write it."""

from __future__ import annotations

from pathlib import Path

from iotbroker.config import load_config, parse_config

CONTRACT = """\
listeners:
  - {name: sensors-udp, type: mqtt-sn, host: 0.0.0.0, port: 1884}
mqttsn:
  gateway_id: 1
  advertise_interval: 15m             # 0 = do not advertise
  predefined_topics: {1: "sensors/predefined"}
  allowed_clients: null               # null = any client id; else a list
"""


def test_issue_contract_loads(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(CONTRACT)
    config = load_config(str(path))
    (listener,) = config.listeners
    assert (listener.name, listener.type, listener.port) == ("sensors-udp", "mqtt-sn", 1884)
    sn = config.mqttsn
    assert sn.gateway_id == 1 and sn.advertise_interval == 900.0
    assert dict(sn.predefined_topics) == {1: "sensors/predefined"}
    assert sn.allowed_clients is None


def test_mqtt_sn_listener_default_port_and_name() -> None:
    config = parse_config({"listeners": [{"type": "mqtt-sn"}],
                           "mqttsn": {"allowed_clients": ["a", "b"], "advertise_interval": 0}})
    (listener,) = config.listeners
    assert (listener.port, listener.name) == (1884, "mqtt-sn://0.0.0.0:1884")
    assert config.mqttsn.allowed_clients == ("a", "b")
    assert config.mqttsn.advertise_interval == 0


def test_mqttsn_username_is_a_way_in_without_anonymous() -> None:
    """auth.allow_anonymous: false needs some identity; an mqtt-sn listener's
    mqttsn_username is one (MQTT-SN 1.2 CONNECT carries no credentials)."""
    config = parse_config({"listeners": [{"type": "mqtt-sn", "mqttsn_username": "sensors"}],
                           "auth": {"allow_anonymous": False}})
    assert config.listeners[0].mqttsn_username == "sensors"
