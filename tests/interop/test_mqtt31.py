"""MQTT 3.1 (protocol name ``MQIsdp``, version 3) on the same port as 3.1.1 and 5.0
(issue 18), with real 3.1 clients: ``mosquitto_pub/sub -V mqttv31`` and paho-mqtt's
``MQTTv31`` mode, plus raw bytes where the exact CONNACK matters.

MQTT 3.1 (IBM/Eurotech, 2010) has no numbered normative statements; tests cite its
sections: §3.1 CONNECT (protocol name and version, Client Identifier 1-23 characters),
§3.2 CONNACK (a reserved first byte, return codes 0-5), §3.3 PUBLISH, §3.8 SUBSCRIBE,
§3.9 SUBACK, §3.14 DISCONNECT, §4 flows (QoS 1 and 2).
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest

from iotbroker.codec.packets import Connect, Will
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.conformance import frame, raw_reply, utf8_raw
from tests.helpers.rawclient import RawClient
from tests.interop.test_mosquitto_clients import MosqSub
from tests.server.clients import Paho, paho_factory

WAIT = 5.0


def _cid(uniq: str, tag: str) -> str:
    """A client id of at most 23 characters, unique per test and ``tag`` (MQTT 3.1 §3.1)."""
    return f"{tag}-{hashlib.sha1(uniq.encode()).hexdigest()[:16]}"


def _connect31(client_id: bytes, flags: int = 0x02, keepalive: int = 60) -> bytes:
    """A MQTT 3.1 CONNECT (§3.1): "MQIsdp", version 3, Connect Flags, Keep Alive, id."""
    return frame(0x10, utf8_raw(b"MQIsdp") + bytes((3, flags)) + keepalive.to_bytes(2, "big")
                 + utf8_raw(client_id))


def _connack_bytes(broker: BrokerProcess, data: bytes) -> bytes:
    sock = socket.create_connection((broker.host, broker.port), timeout=3.0)
    try:
        sock.sendall(data)
        sock.settimeout(3.0)
        return sock.recv(4)
    finally:
        sock.close()


def _pub(broker: BrokerProcess, *args: str) -> None:
    result = subprocess.run(
        ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), *args],
        capture_output=True, check=False, timeout=WAIT, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"mosquitto_pub {args} exited {result.returncode}: {result}"


@pytest.fixture
def paho(broker: BrokerProcess) -> Iterator[Callable[..., Paho]]:
    clients: list[Paho] = []
    yield paho_factory(clients)
    for client in clients:
        client.stop()


# ------------------------------------------------------------------ real 3.1 clients


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("sub_v", ["mqttv31", "mqttv5"])
def test_mqtt31_mosquitto_pub_sub_each_qos(broker: BrokerProcess, uniq: str, qos: int,
                                          sub_v: str) -> None:
    """MQTT 3.1 §3.1 (CONNECT "MQIsdp" 3 accepted, CONNACK 0), §3.3 and §4 (PUBLISH at
    each QoS with its flow), §3.8/§3.9 (SUBSCRIBE granted QoS 2): ``mosquitto_pub -V
    mqttv31`` reaches a ``mosquitto_sub -V mqttv31`` subscriber, and a 5.0 one."""
    sub = MosqSub(broker.host, broker.port, "-V", sub_v, "-i", _cid(uniq, "s"), "-q", "2",
                  "-t", f"{uniq}/t", "-C", "1", "-W", "5")
    try:
        assert sub.subscribed() == [2]
        _pub(broker, "-V", "mqttv31", "-i", _cid(uniq, "p"), "-q", str(qos),
             "-t", f"{uniq}/t", "-m", "from 3.1")
        assert sub.messages(1) == [(f"{uniq}/t", str(qos), "0", "from 3.1")]
        assert sub.wait() == 0
    finally:
        sub.stop()


def test_mqtt31_paho_subscribe_publish_and_will(broker: BrokerProcess,
                                               paho: Callable[..., Paho], uniq: str) -> None:
    """paho-mqtt in ``MQTTv31`` mode: CONNECT (MQTT 3.1 §3.1) accepted, SUBSCRIBE QoS 1
    granted (§3.9), a QoS 2 PUBLISH flow completes (§4) and is delivered; the will of
    a 3.1 client whose connection breaks is published (§3.1, Will flag)."""
    sub = paho(broker.host, broker.port, _cid(uniq, "s"), protocol=mqtt.MQTTv31).connect()
    assert [int(getattr(rc, "value", rc)) for rc in sub.subscribe(f"{uniq}/#", 1)] == [1]
    pub = paho(broker.host, broker.port, _cid(uniq, "p"), protocol=mqtt.MQTTv31).connect()
    assert not pub.publish(f"{uniq}/t", b"qos2 from 3.1", 2).is_failure
    msg = sub.receive()
    assert (msg.topic, msg.payload, msg.qos) == (f"{uniq}/t", b"qos2 from 3.1", 1)
    # A raw 3.1 client with a will, whose socket just closes: the will goes out.
    c = RawClient(broker.host, broker.port, version=3, timeout=3.0)
    c.send(Connect(_cid(uniq, "w"), 3, "MQIsdp",
                   will=Will(f"{uniq}/will", b"gone", 1, False)))
    assert c.recv().reason_code == 0  # type: ignore[attr-defined]
    c.sock.close()
    msg = sub.receive()
    assert (msg.topic, msg.payload) == (f"{uniq}/will", b"gone")


# ------------------------------------------------------------------ 3.1 CONNECT rules


@pytest.mark.parametrize("length", [1, 23])
def test_mqtt31_client_id_of_1_to_23_characters_accepted(broker: BrokerProcess, uniq: str,
                                                         length: int) -> None:
    """MQTT 3.1 §3.1 (Payload, Client Identifier: "between 1 and 23 characters") and
    §3.2 (CONNACK: first byte reserved, return code 0 Connection Accepted)."""
    client_id = (uniq.replace("_", "") * 23)[:length].encode()
    assert _connack_bytes(broker, _connect31(client_id)) == b"\x20\x02\x00\x00"


@pytest.mark.parametrize("client_id", [b"", b"x" * 24, b"\xc3\xa9" * 24],
                         ids=["empty", "24-chars", "24-two-byte-chars"])
def test_mqtt31_client_id_outside_1_to_23_is_identifier_rejected(
    broker: BrokerProcess, client_id: bytes
) -> None:
    """MQTT 3.1 §3.1: a Client Identifier longer than 23 characters is answered with
    CONNACK return code 2 (Identifier Rejected, §3.2); 3.1 has no zero-length
    (server-assigned) identifier, so an empty one gets 2 as well, even with Clean
    Session set. Then the server closes."""
    sock = socket.create_connection((broker.host, broker.port), timeout=3.0)
    try:
        sock.sendall(_connect31(client_id))
        assert raw_reply(sock, timeout=3.0) == b"\x20\x02\x00\x02"
    finally:
        sock.close()


def test_mqtt31_connack_has_no_session_present_flag(broker: BrokerProcess, uniq: str) -> None:
    """MQTT 3.1 §3.2: the CONNACK's first byte is reserved -- a 3.1 client that resumes
    a stored session (Clean Session 0, §3.1) gets ``20 02 00 00``, not the 3.1.1
    Session Present flag; its subscription was kept (3.1.1 rules otherwise)."""
    cid = _cid(uniq, "ps").encode()
    sub = _connect31(cid, flags=0x00)
    subscribe = frame(0x82, b"\x00\x01" + utf8_raw(f"{uniq}/keep".encode()) + b"\x01")
    sock = socket.create_connection((broker.host, broker.port), timeout=3.0)
    try:
        sock.sendall(sub + subscribe)
        sock.settimeout(3.0)
        got = b""
        while len(got) < 9:
            chunk = sock.recv(64)
            assert chunk
            got += chunk
        assert got == b"\x20\x02\x00\x00" + b"\x90\x03\x00\x01\x01"
    finally:
        sock.close()
    time.sleep(0.2)
    assert _connack_bytes(broker, sub) == b"\x20\x02\x00\x00"  # session resumed, flag 0
    _pub(broker, "-V", "mqttv311", "-q", "1", "-t", f"{uniq}/keep", "-m", "kept")
    sock = socket.create_connection((broker.host, broker.port), timeout=3.0)
    try:
        sock.sendall(sub)
        sock.settimeout(3.0)
        got = b""
        deadline = time.monotonic() + 3.0
        while b"kept" not in got and time.monotonic() < deadline:
            chunk = sock.recv(256)
            assert chunk
            got += chunk
        assert got.startswith(b"\x20\x02\x00\x00") and b"kept" in got
    finally:
        sock.close()


@pytest.mark.parametrize("level", [4, 5])
def test_mqisdp_with_another_version_is_refused_with_connack_1(broker: BrokerProcess,
                                                               uniq: str, level: int) -> None:
    """MQTT 3.1 §3.2 return code 1 (Connection Refused: unacceptable protocol version):
    "MQIsdp" only goes with version 3 (3.1.1 [MQTT-3.1.2-2] likewise answers 1)."""
    data = frame(0x10, utf8_raw(b"MQIsdp") + bytes((level, 0x02, 0, 60))
                 + utf8_raw(uniq[:20].encode()))
    assert _connack_bytes(broker, data) == b"\x20\x02\x00\x01"
