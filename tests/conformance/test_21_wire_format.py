"""The bytes the broker writes, read as bytes: fixed-header flags, Property Length,
the PUBLISH variable header, AUTH, and session state held for the whole connection.

The other conformance modules decode what the broker sends with our codec, which
would accept (or silently repair) a few wire details the text fixes exactly; these
tests read the raw frames (``RawClient.next_frame``: first byte, body) and look at the
bytes themselves.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import pytest

from iotbroker.codec.packets import (
    ConnAck,
    Disconnect,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    Publish,
)
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.conformance import connect_bytes, connected, utf8_raw
from tests.helpers.rawclient import RawClient

VERSIONS = pytest.mark.parametrize("version", [4, 5])

#: MQTT 3.1.1 / 5.0 §2.2.2 Table 2-2: the fixed header's first byte of each packet a
#: Server sends, with the flag bits that are reserved (everything but PUBLISH).
SERVER_FIRST_BYTES = {
    "CONNACK": 0x20, "PUBACK": 0x40, "PUBREC": 0x50, "PUBREL": 0x62, "PUBCOMP": 0x70,
    "SUBACK": 0x90, "UNSUBACK": 0xB0, "PINGRESP": 0xD0,
}


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("wire-broker"), broker_config())
    proc.start()
    yield proc
    proc.stop()


def _raw_connect(broker: BrokerProcess, version: int, client_id: str) -> RawClient:
    """A raw client that has sent its CONNECT and reads the broker's frames as bytes."""
    client = RawClient(broker.host, broker.port, version=version, timeout=3.0)
    client.send_raw(connect_bytes(version, client_id))
    return client


def _props(version: int) -> bytes:
    return b"\x00" if version == 5 else b""


@VERSIONS
def test_mqtt_2_2_2_1_reserved_flags_and_property_length_zero_in_what_the_broker_sends(
    wire: BrokerProcess, version: int
) -> None:
    """[MQTT-2.2.2-1]. MQTT 3.1.1: the reserved flag bits of every packet the Server
    sends carry the values of Table 2.2 (CONNACK 0x20 … PUBREL 0x62 … PINGRESP 0xD0).
    MQTT 5.0 (same id): a packet with no properties still carries a Property Length of
    0 — SUBACK, UNSUBACK and a forwarded PUBLISH that had none. Each packet of a QoS 2
    round trip with the broker (both directions), a subscribe and an unsubscribe."""
    c = _raw_connect(wire, version, f"flags-{version}")
    try:
        first, body = c.next_frame()
        assert first == SERVER_FIRST_BYTES["CONNACK"], hex(first)
        topic = f"wire/flags/{version}".encode()
        c.send_frame(0x82, struct.pack(">H", 1) + _props(version) + utf8_raw(topic) + b"\x02")
        first, body = c.next_frame()
        assert first == SERVER_FIRST_BYTES["SUBACK"], hex(first)
        # Packet Identifier, then (5.0) Property Length 0, then the reason code.
        assert body == struct.pack(">H", 1) + _props(version) + b"\x02", body.hex()
        # A QoS 2 PUBLISH without properties to its own subscription.
        c.send_frame(0x34, utf8_raw(topic) + struct.pack(">H", 7) + _props(version) + b"payload")
        got: dict[str, tuple[int, bytes]] = {}
        for _ in range(2):  # PUBREC for ours, and the forward (either order)
            first, body = c.next_frame()
            got["PUBLISH" if first >> 4 == 3 else f"{first:#x}"] = (first, body)
        assert f"{SERVER_FIRST_BYTES['PUBREC']:#x}" in got, got
        assert got[f"{SERVER_FIRST_BYTES['PUBREC']:#x}"][1][:2] == struct.pack(">H", 7)
        pub_first, pub_body = got["PUBLISH"]
        assert pub_first == 0x34, hex(pub_first)  # QoS 2, DUP 0, RETAIN 0
        (out_id,) = struct.unpack(">H", pub_body[2 + len(topic):4 + len(topic)])
        # [MQTT-3.3.2-1] Topic Name first; (5.0) Property Length 0 after the packet id.
        assert pub_body == (utf8_raw(topic) + struct.pack(">H", out_id) + _props(version)
                            + b"payload"), pub_body.hex()
        c.send_frame(0x62, struct.pack(">H", 7))  # our PUBREL
        c.send_frame(0x50, struct.pack(">H", out_id))  # our PUBREC for the forward
        seen = {c.next_frame()[0] for _ in range(2)}  # PUBCOMP for ours, PUBREL for the forward
        assert seen == {SERVER_FIRST_BYTES["PUBCOMP"], SERVER_FIRST_BYTES["PUBREL"]}, seen
        c.send_frame(0x70, struct.pack(">H", out_id))
        c.send_frame(0xA2, struct.pack(">H", 2) + _props(version) + utf8_raw(topic))
        first, body = c.next_frame()
        assert first == SERVER_FIRST_BYTES["UNSUBACK"], hex(first)
        # 3.1.1: only the Packet Identifier; 5.0: Property Length 0, then 0x00 Success.
        assert body == struct.pack(">H", 2) + (b"\x00\x00" if version == 5 else b""), body
        c.send_frame(0xC0, b"")
        assert c.next_frame() == (SERVER_FIRST_BYTES["PINGRESP"], b"")
        # The QoS 1 acknowledgement: 0x40 and the id (5.0 may stop after it, §3.4.2.1).
        c.send_frame(0x32, utf8_raw(b"wire/other") + struct.pack(">H", 9) + _props(version) + b"x")
        first, body = c.next_frame()
        assert first == SERVER_FIRST_BYTES["PUBACK"] and body[:2] == struct.pack(">H", 9)
        assert len(body) in ((2,) if version == 4 else (2, 3, 4)) and body[3:] in (b"", b"\x00")
    finally:
        c.close()


def test_mqtt_3_3_2_1_topic_name_first_in_a_forwarded_publish_with_properties(
    wire: BrokerProcess,
) -> None:
    """[MQTT-3.3.2-1]: the Topic Name is the first field of the PUBLISH variable header
    and a UTF-8 string (a multi-byte one here), before the Packet Identifier and (5.0)
    the properties — a forward that carries properties (Message Expiry, a User
    Property) and a subscription identifier, read as bytes."""
    topic = "wire/é/温度"
    pub = RawClient(wire.host, wire.port, version=5, timeout=3.0)
    assert pub.connect("topic-first-pub").reason_code == 0
    raw = _raw_connect(wire, 5, "topic-first-raw")
    try:
        assert raw.next_frame()[0] == 0x20
        # SUBSCRIBE with Subscription Identifier 5 (property 0x0B, varint).
        raw.send_frame(0x82, struct.pack(">H", 1) + b"\x02\x0b\x05" + utf8_raw(topic.encode())
                 + b"\x01")
        assert raw.next_frame()[0] == 0x90
        pub.publish(topic, b"hi", qos=1, properties=Properties(
            message_expiry_interval=60, user_properties=(("k", "v"),)))
        first, body = raw.next_frame()
        assert first == 0x32, hex(first)
        encoded = topic.encode()
        assert body[:2 + len(encoded)] == utf8_raw(encoded), body.hex()
        assert body[2 + len(encoded):].endswith(b"hi")
        props_at = 2 + len(encoded) + 2  # after the Packet Identifier
        assert body[props_at] > 0 and b"\x0b\x05" in body[props_at:-2], body.hex()
    finally:
        raw.close()
        pub.close()


def test_mqtt_3_15_1_1_auth_with_reserved_flags_set_is_malformed(wire: BrokerProcess) -> None:
    """[MQTT-3.15.1-1]: the AUTH fixed header's bits 3–0 are reserved, 0; any other
    value is a Malformed Packet: DISCONNECT 0x81 and close (§4.13), the broker stays."""
    for flags in (0x1, 0x8, 0xF):
        c = RawClient(wire.host, wire.port, version=5, timeout=3.0)
        assert c.connect(f"auth-flags-{flags}").reason_code == 0
        c.send_raw(bytes((0xF0 | flags, 0x00)))
        packets = c.expect_closed(3.0)
        assert [type(p) for p in packets] == [Disconnect], packets
        assert packets[0].reason_code == 0x81, packets  # type: ignore[union-attr]
    healthy = connected(wire.host, wire.port, 5, "auth-flags-after")
    healthy.send(PingReq())
    healthy.expect(PingResp)
    healthy.close()


def test_mqtt_4_1_0_1_session_state_kept_while_the_connection_lasts_past_its_expiry(
    wire: BrokerProcess,
) -> None:
    """[MQTT-4.1.0-1]: neither side may drop the session state while the Network
    Connection is open. MQTT 5.0 §3.1.2.11.2: the Session Expiry Interval counts from
    when the connection closes. A client with Session Expiry 1 s stays connected for 2.5
    s (pinging) holding an unacknowledged QoS 1 message: its subscription still routes,
    and when it reconnects at once (within the 1 s) the session is present and the
    in-flight message comes again with DUP [MQTT-4.4.0-1]."""
    expiry = Properties(session_expiry_interval=1)
    sub = connected(wire.host, wire.port, 5, "held-state", clean_start=True,
                    properties=expiry)
    pub = connected(wire.host, wire.port, 5, "held-state-pub")
    try:
        assert sub.subscribe("wire/held/#", 1).reason_codes == [1]
        assert isinstance(pub.publish("wire/held/a", b"first", qos=1), PubAck)
        first = sub.receive_publish(ack=False)
        assert first.payload == b"first"
        for _ in range(5):  # 2.5 s connected: more than twice the expiry interval
            time.sleep(0.5)
            sub.send(PingReq())
            sub.expect(PingResp)
        assert isinstance(pub.publish("wire/held/b", b"second", qos=1), PubAck)
        assert sub.receive_publish().payload == b"second"
        sub.sock.close()
        again = RawClient(wire.host, wire.port, version=5, timeout=3.0)
        ack = again.connect("held-state", clean_start=False, properties=expiry)
        assert isinstance(ack, ConnAck) and ack.reason_code == 0 and ack.session_present
        resent = again.expect(Publish)
        assert (resent.payload, resent.dup, resent.packet_id) == (b"first", True,
                                                                   first.packet_id)
        again.send(PubAck(resent.packet_id or 0))
        again.close()
    finally:
        pub.close()
