"""First checks that the broker accepts a connection and routes a message."""

from __future__ import annotations

import pytest

from tests.helpers.rawclient import RawClient


@pytest.mark.parametrize("version", [4, 5])
def test_mqtt_3_1_4_4_connect_accepted_with_code_0(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.4-4] (3.1.1) / [MQTT-3.1.4-5] (5.0): a valid CONNECT gets CONNACK 0."""
    client: RawClient = raw(version)
    ack = client.connect(f"{uniq}-{version}")
    assert ack.reason_code == 0
    assert ack.session_present is False


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_reaches_subscriber(raw, uniq: str, version: int, qos: int) -> None:
    sub: RawClient = raw(version)
    sub.connect(f"{uniq}-sub")
    assert sub.subscribe(f"{uniq}/#", qos).reason_codes == [qos]
    pub: RawClient = raw(version)
    pub.connect(f"{uniq}-pub")
    pub.publish(f"{uniq}/a", b"hello", qos)
    got = sub.receive_publish()
    assert (got.topic, got.payload, got.qos) == (f"{uniq}/a", b"hello", qos)
