"""How the server ends a connection (issue 18): a first packet that is not CONNECT is
refused on its first byte [MQTT-3.1.0-1], and the last packet before a close (CONNACK
or DISCONNECT with a reason code) reaches a client that is still writing (MQTT 5.0
§4.13, §3.14.4; MQTT 3.1.1 §4.8)."""

from __future__ import annotations

import socket
import time

import pytest

from iotbroker.codec.packets import ConnAck
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.conformance import (
    assert_broker_healthy,
    connect_bytes,
    raw_reply,
)
from tests.helpers.rawclient import RawClient

VERSIONS = pytest.mark.parametrize("version", [4, 5])


# ------------------------------------------------------------- first byte [MQTT-3.1.0-1]


@pytest.mark.parametrize(
    "first",
    [
        b"\xbd\xb8\x71",  # type 11 (UNSUBACK) with flags, declaring 14 KB: issue 18
        b"\x30\xff\xff\x7f",  # PUBLISH announcing 2 MB
        b"\xc0",  # PINGREQ's first byte only
        b"\x00\x10",  # reserved type 0
        b"\x12\xff\x7f",  # CONNECT with fixed-header flags 0b0010 [MQTT-2.2.2-2]
        b"\x1f",  # CONNECT with all flags set, first byte only
    ],
    ids=["0xBD-14KB", "publish-2MB", "pingreq-1-byte", "type-0", "connect-flags-2",
         "connect-flags-f"],
)
def test_mqtt_3_1_0_1_non_connect_first_byte_closes_at_once(
    broker: BrokerProcess, first: bytes
) -> None:
    """[MQTT-3.1.0-1]: the first packet must be CONNECT, and a CONNECT's reserved
    fixed-header flags must be 0 ([MQTT-2.2.2-2] (3.1.1), [MQTT-2.1.3-1] (5.0)): the
    server closes the connection as soon as the first byte says otherwise, without
    waiting for the body its Remaining Length announces (3.1.1 [MQTT-4.8.0-1], 5.0
    [MQTT-4.13.1-1]), and sends nothing (no CONNACK: there was no CONNECT)."""
    sock = socket.create_connection((broker.host, broker.port), timeout=3.0)
    try:
        sock.sendall(first)
        started = time.monotonic()
        assert raw_reply(sock, timeout=3.0) == b""
        assert time.monotonic() - started < 1.0  # not the 10 s connect timeout
    finally:
        sock.close()
    assert_broker_healthy(broker)


@VERSIONS
def test_connect_split_at_first_byte_still_works(broker: BrokerProcess, uniq: str,
                                                 version: int) -> None:
    """The first-byte check looks at the first byte only: a correct CONNECT that arrives
    one byte at a time is accepted (MQTT 3.1.1 §3.1, MQTT 5.0 §3.1)."""
    data = connect_bytes(version, uniq)
    with RawClient(broker.host, broker.port, version, timeout=3.0) as c:
        for i in range(len(data)):
            c.send_raw(data[i : i + 1])
            if i < 3:
                time.sleep(0.02)
        assert c.expect(ConnAck).reason_code == 0
