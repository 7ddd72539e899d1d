"""A socket accepted without a transport whose first read is one whole CONNECT goes
through the compiled ``first_connect`` (server/connecting.py) from
``ClientProtocol.first_data`` rather than ``Broker.handle_packets`` (issue 19, the
connect cost). Its answers must be those of the general path: accepted, refused with a
CONNACK code then closed [MQTT-3.2.2-5], malformed closed without CONNACK, anonymous
logins refused when ``auth.allow_anonymous`` is false.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from iotbroker.codec.encode import encode_packet
from iotbroker.codec.packets import Connect, Publish
from iotbroker.server.transport import _lone_connect
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import RawClient


def _read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the broker sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = sock.recv(64)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"not closed within {timeout}s; got {data!r}")


def _send_first(broker: BrokerProcess, first: bytes) -> bytes:
    sock = socket.create_connection((broker.host, broker.port), timeout=5)
    try:
        sock.sendall(first)
        return _read_until_closed(sock)
    finally:
        sock.close()


def test_refused_client_id_gets_connack_2_then_close(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """[MQTT-3.2.2-5] a CONNACK with a non-zero return code, then the close: a client id
    the broker reserves ($bridge/) is Identifier Rejected (3.1.1 return code 2)."""
    broker = make_broker(broker_config())
    got = _send_first(broker, encode_packet(Connect(client_id="$bridge/x"), 4))
    assert got == b"\x20\x02\x00\x02"


def test_malformed_lone_connect_closed_without_connack(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """[MQTT-3.1.2-3] a CONNECT whose reserved flag is set is malformed: the connection
    is closed, nothing is sent [MQTT-3.2.2-6 does not apply: no CONNACK for it]."""
    broker = make_broker(broker_config())
    good = bytearray(encode_packet(Connect(client_id="fc-bad"), 4))
    good[9] |= 0x01  # the Connect Flags byte (fixed header 2, "MQTT" 6, level 1)
    assert _send_first(broker, bytes(good)) == b""


def test_anonymous_refused_when_not_allowed(
    make_broker: Callable[..., BrokerProcess], tmp_path: Path,
) -> None:
    """auth.allow_anonymous false: a CONNECT without a username is refused (3.1.1
    CONNACK 5, Not authorized) and closed [MQTT-3.2.2-5]; with the right password it is
    accepted."""
    passwd = tmp_path / "passwd"
    subprocess.run([sys.executable, "-m", "iotbroker", "passwd", str(passwd), "fc-user",
                    "-b", "fc-secret", "--iterations", "1000"],
                   check=True, capture_output=True)
    broker = make_broker(broker_config(
        extra=f"auth:\n  allow_anonymous: false\n  password_file: {passwd}\n"))
    assert _send_first(broker, encode_packet(Connect(client_id="fc-anon"), 4)) \
        == b"\x20\x02\x00\x05"
    with RawClient(broker.host, broker.port) as client:
        assert client.connect("fc-named", username="fc-user",
                              password=b"fc-secret").reason_code == 0


def test_lone_connect_accepted_then_publishes(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """[MQTT-3.2.0-1] the CONNACK first; the connection then works as any other: a QoS
    1 PUBLISH is acknowledged [MQTT-4.3.2-2] and reaches a subscriber."""
    broker = make_broker(broker_config())
    with RawClient(broker.host, broker.port) as sub, \
            RawClient(broker.host, broker.port) as pub:
        assert sub.connect("fc-sub").reason_code == 0
        sub.subscribe("fc/t", 1)
        assert pub.connect("fc-pub").reason_code == 0
        pub.publish("fc/t", b"hello", 1)
        got = sub.receive_publish()
        assert isinstance(got, Publish) and got.payload == b"hello"


@pytest.mark.parametrize(("data", "lone"), [
    (encode_packet(Connect(client_id="x"), 4), True),
    (encode_packet(Connect(client_id="y" * 200), 4), True),  # two-byte remaining length
    (encode_packet(Connect(client_id="x"), 4)[:-1], False),  # truncated
    (encode_packet(Connect(client_id="x"), 4) * 2, False),  # two packets
    (b"\x10", False),
    (b"\x30\x02\x00\x00", False),  # not a CONNECT
    (b"\x10\xff\xff\xff\xff\x01", False),  # a remaining length of five bytes
])
def test_lone_connect_detection(data: bytes, lone: bool) -> None:
    """Only one whole packet with CONNECT's first byte takes the compiled path; the
    remaining length is the variable byte integer of MQTT 3.1.1 §2.2.3."""
    assert _lone_connect(data) is lone
