"""The sans-I/O connection state machine, fed bytes with a fake clock (no sockets)."""

from __future__ import annotations

import pytest

from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.packets import (
    Connect,
    Packet,
    PingReq,
    Properties,
    PubAck,
    Publish,
    PubRec,
    SubAck,
)
from iotbroker.errors import MalformedPacket, MqttError, ProtocolViolation
from iotbroker.message import Delivery, Message
from iotbroker.protocol.connection import Connection, ConnectionState


def _conn(receive_maximum: int = 3, topic_alias_maximum: int = 2) -> Connection:
    return Connection(max_packet_size=1024, receive_maximum=receive_maximum,
                      topic_alias_maximum=topic_alias_maximum, now=0.0)


def _connected(version: int = 5, **accept: object) -> Connection:
    conn = _conn()
    [packet] = conn.receive_data(encode_packet(Connect("c", protocol_version=version), 5), 0.0)
    assert isinstance(packet, Connect)
    options = {"keepalive": 10, "client_receive_maximum": None, "client_max_packet_size": None,
               "client_topic_alias_maximum": None, "outbound_aliases": True,
               "request_problem_information": True}
    options.update(accept)
    conn.accept(**options)  # type: ignore[arg-type]
    return conn


def _sent(conn: Connection) -> list[Packet]:
    framer = Framer(1 << 20)
    return [decode_packet(f, b, conn.protocol_version) for f, b in framer.feed(conn.data_to_send())]


def _fails(conn: Connection, data: bytes, now: float, kind: type[MqttError]) -> MqttError:
    """Feed ``data`` holding one bad packet: no packet comes out, nothing is raised, the
    violation is recorded in ``conn.failure`` and the connection reads nothing more."""
    assert conn.failure is None
    assert conn.receive_data(data, now) == []
    failure = conn.failure
    assert isinstance(failure, kind), failure
    assert conn.receive_data(encode_packet(PingReq(), conn.protocol_version), now) == []
    assert conn.failure is failure  # set once
    return failure


def _message(topic: str = "a/b", payload: bytes = b"x") -> Message:
    return Message(topic, payload, 1, False, Properties(), 0.0)


def test_mqtt_3_1_0_1_first_packet_must_be_connect() -> None:
    """[MQTT-3.1.0-1]: anything before CONNECT is a protocol violation."""
    conn = _conn()
    failure = _fails(conn, encode_packet(PingReq(), 4), 0.0, ProtocolViolation)
    assert failure.spec_ref == "MQTT-3.1.0-1"


def test_mqtt_3_1_0_2_second_connect_is_a_violation() -> None:
    conn = _connected(4)
    failure = _fails(conn, encode_packet(Connect("c"), 4), 1.0, ProtocolViolation)
    assert failure.spec_ref == "MQTT-3.1.0-2"


def test_connect_split_at_every_byte_is_one_packet() -> None:
    data = encode_packet(Connect("split", protocol_version=5, keepalive=30), 5)
    conn = _conn()
    got: list[Packet] = []
    for i in range(len(data)):
        got += conn.receive_data(data[i : i + 1], float(i))
    assert len(got) == 1 and isinstance(got[0], Connect) and got[0].client_id == "split"
    assert conn.protocol_version == 5
    assert conn.state is ConnectionState.AUTHENTICATING  # until the broker accepts it


def test_mqtt_3_1_2_24_keepalive_deadline_is_1_5x_after_last_packet() -> None:
    """[MQTT-3.1.2-24] (v5 [MQTT-3.1.2-22]): 1.5 x Keep Alive after the last packet."""
    conn = _connected(keepalive=10)
    conn.last_received = 100.0
    assert conn.keepalive_deadline() == 115.0
    conn.receive_data(encode_packet(PingReq(), 5), 112.0)
    assert conn.keepalive_deadline() == 127.0
    assert _connected(keepalive=0).keepalive_deadline() is None


def test_mqtt_3_3_4_9_inbound_receive_maximum_overrun_is_0x93() -> None:
    """Our Receive Maximum (3) bounds unacknowledged inbound QoS 1/2 PUBLISHes; the
    PUBACK we send releases one."""
    conn = _connected()
    for pid in (1, 2, 3):
        conn.receive_data(encode_packet(Publish("t", b"", 1, packet_id=pid), 5), 1.0)
    failure = _fails(conn, encode_packet(Publish("t", b"", 1, packet_id=4), 5), 1.0,
                     ProtocolViolation)
    assert failure.reason_code == 0x93
    conn2 = _connected()
    for pid in (1, 2, 3):
        conn2.receive_data(encode_packet(Publish("t", b"", 1, packet_id=pid), 5), 1.0)
    conn2.send_publish_ack(1, 2, 0)  # PUBACK releases packet id 2
    [packet] = conn2.receive_data(encode_packet(Publish("t", b"", 1, packet_id=4), 5), 1.0)
    assert isinstance(packet, Publish)
    assert [type(p) for p in _sent(conn2)] == [PubAck]


def test_duplicate_qos2_publish_with_held_id_does_not_count_twice() -> None:
    conn = _connected()
    for _ in range(5):  # the same id re-sent (DUP): still one slot of the quota
        conn.receive_data(encode_packet(Publish("t", b"", 2, dup=True, packet_id=9), 5), 1.0)
    conn.send_publish_ack(2, 9, 0)
    assert [type(p) for p in _sent(conn)] == [PubRec]


def test_mqtt_3_3_2_9_inbound_topic_alias_beyond_maximum_is_0x94() -> None:
    conn = _connected()
    props = Properties(topic_alias=3)  # our maximum is 2
    failure = _fails(conn, encode_packet(Publish("t", b"", 0, properties=props), 5), 1.0,
                     ProtocolViolation)
    assert failure.reason_code == 0x94


def test_inbound_topic_alias_maps_then_stands_in_for_the_topic() -> None:
    """MQTT 5.0 §3.3.2.3.4: topic + alias sets the mapping; alias alone uses it."""
    conn = _connected()
    [first] = conn.receive_data(
        encode_packet(Publish("room/1", b"a", 0, properties=Properties(topic_alias=1)), 5), 1.0)
    [second] = conn.receive_data(
        encode_packet(Publish("", b"b", 0, properties=Properties(topic_alias=1)), 5), 1.0)
    assert isinstance(first, Publish) and isinstance(second, Publish)
    assert (first.topic, second.topic) == ("room/1", "room/1")
    assert second.properties.topic_alias is None  # resolved, not forwarded


def test_mqtt_3_3_2_2_wildcard_in_topic_name_is_0x90() -> None:
    conn = _connected(4)
    failure = _fails(conn, encode_packet(Publish("a/+", b"", 0), 4), 1.0, ProtocolViolation)
    assert failure.reason_code == 0x90


def test_server_only_packet_from_client_is_a_violation() -> None:
    conn = _connected(4)
    _fails(conn, encode_packet(SubAck(1, [0]), 4), 1.0, ProtocolViolation)


def test_input_after_close_is_ignored() -> None:
    """[MQTT-3.1.4-5]: after the server decided to close, further input is ignored."""
    conn = _connected(4)
    conn.close()
    assert conn.receive_data(b"\xff\xff\xff\xff\xff", 1.0) == []


def test_packet_over_our_maximum_is_refused_from_the_header() -> None:
    conn = _conn()
    # declares ~2 MB, limit 1024
    failure = _fails(conn, b"\x10\xff\xff\x7f", 0.0, MalformedPacket)
    assert failure.reason_code == 0x95


def test_mqtt_3_3_2_11_outbound_aliases_never_exceed_the_clients_maximum() -> None:
    """[MQTT-3.3.2-11]: at most the client's Topic Alias Maximum (2) aliases; a known
    topic goes out as its alias alone; the least recently used alias is reused."""
    conn = _connected(client_topic_alias_maximum=2)
    for topic in ("t/1", "t/2", "t/1", "t/3"):
        assert conn.send_publish(Delivery(_message(topic), 0), None, False, 0.0)
    sent = [p for p in _sent(conn) if isinstance(p, Publish)]
    assert [(p.topic, p.properties.topic_alias) for p in sent] == [
        ("t/1", 1), ("t/2", 2), ("", 1), ("t/3", 2)]


def test_mqtt_3_1_2_25_too_large_publish_is_not_sent() -> None:
    """[MQTT-3.1.2-25]: a PUBLISH over the client's Maximum Packet Size is dropped."""
    conn = _connected(client_max_packet_size=32)
    assert not conn.send_publish(Delivery(_message(payload=b"x" * 64), 1), 1, False, 0.0)
    assert conn.send_publish(Delivery(_message(payload=b"x"), 1), 2, False, 0.0)
    [packet] = _sent(conn)
    assert isinstance(packet, Publish) and packet.packet_id == 2


def test_mqtt_3_3_2_6_forwarded_expiry_is_reduced_by_time_in_the_broker() -> None:
    """[MQTT-3.3.2-6]: the Message Expiry Interval sent is what is left of it."""
    conn = _connected()
    message = Message("t", b"x", 1, False, Properties(), 100.0, expires_at=160.0)
    conn.send_publish(Delivery(message, 1), 1, False, 130.5)
    [packet] = _sent(conn)
    assert isinstance(packet, Publish)
    assert packet.properties.message_expiry_interval == 30


def test_unauthenticated_socket_cannot_claim_the_full_packet_size() -> None:
    """Before CONNECT is accepted a packet may be at most 256 KiB (a CONNECT with its
    will); the configured Maximum Packet Size applies once the client is accepted."""
    conn = Connection(max_packet_size=16 << 20, receive_maximum=10, topic_alias_maximum=0,
                      now=0.0)
    # declares 512 KiB before CONNECT
    failure = _fails(conn, b"\x10\x80\x80\x20", 0.0, MalformedPacket)
    assert failure.reason_code == 0x95
    accepted = Connection(max_packet_size=16 << 20, receive_maximum=10,
                          topic_alias_maximum=0, now=0.0)
    accepted.receive_data(encode_packet(Connect("big"), 4), 0.0)
    accepted.accept(keepalive=0, client_receive_maximum=None, client_max_packet_size=None,
                    client_topic_alias_maximum=None, outbound_aliases=False,
                    request_problem_information=True)
    big = encode_packet(Publish("t", b"x" * (300 * 1024), 0), 4)
    [packet] = accepted.receive_data(big, 1.0)
    assert isinstance(packet, Publish) and len(packet.payload) == 300 * 1024


@pytest.mark.parametrize(
    ("bad", "kind", "reason_code"),
    [
        (b"\x36\x03\x00\x01t", MalformedPacket, 0x81),  # PUBLISH QoS 3 [MQTT-3.3.1-4]
        (encode_packet(SubAck(1, [0]), 5), ProtocolViolation, 0x82),  # server-only packet
        (b"\x30\xff\xff\xff\xff\x7f", MalformedPacket, 0x81),  # 5-byte Remaining Length
        (b"\x30\xff\xff\x7f", MalformedPacket, 0x95),  # over our maximum, from the header
    ],
    ids=["decode", "check", "framer", "too-large"],
)
def test_packets_before_a_violation_in_the_same_read_are_returned(
    bad: bytes, kind: type[MqttError], reason_code: int
) -> None:
    """Packet by packet, as a stream is read: the PUBLISHes before the bad packet in the
    same read come out, then the violation is recorded ([MQTT-4.13.1-1]: the caller
    closes with its reason code) and what follows it is never read."""
    conn = _connected()
    good = [Publish("a/1", b"1", 0), Publish("a/2", b"2", 1, packet_id=7)]
    data = b"".join(encode_packet(p, 5) for p in good) + bad + encode_packet(PingReq(), 5)
    got = conn.receive_data(data, 1.0)
    assert [(p.topic, p.payload) for p in got if isinstance(p, Publish)] == [
        ("a/1", b"1"), ("a/2", b"2")]
    assert len(got) == 2
    assert isinstance(conn.failure, kind) and conn.failure.reason_code == reason_code
    assert conn.state is ConnectionState.CONNECTED  # the engine's fail decides the close
    assert conn.receive_data(encode_packet(PingReq(), 5), 2.0) == []



@pytest.mark.parametrize("version", [4, 5])
def test_one_packet_reads_and_one_read_of_all_give_the_same_packets(version: int) -> None:
    """A read that is exactly one packet is decoded from the read itself; the packets,
    ``bytes_received`` and the answers are those of the same bytes in one read, or split
    inside a packet (MQTT 3.1.1 §2.2.3 / MQTT 5.0 §2.1.4: Remaining Length framing)."""
    wires = [
        encode_packet(Publish("a/b", b"x" * 200, 1, packet_id=7), version),  # 2-byte length
        encode_packet(Publish("a/b", b"y", 0), version),
        encode_packet(PubAck(9), version),
        encode_packet(PingReq(), version),
    ]

    def run(reads: list[bytes]) -> tuple[list[Packet], int, bytes]:
        conn = _connected(version)
        conn.data_to_send()
        before = conn.bytes_received
        packets = [p for data in reads for p in conn.receive_data(data, 1.0)]
        for p in packets:
            if isinstance(p, Publish) and p.qos == 1:
                assert p.packet_id is not None
                conn.send_publish_ack(1, p.packet_id, 0)
        return packets, conn.bytes_received - before, conn.data_to_send()

    whole = b"".join(wires)
    one_each = run(wires)
    assert one_each == run([whole])
    assert one_each == run([whole[:3], whole[3:]])
    assert one_each[1] == len(whole)
    assert [type(p) for p in one_each[0]] == [Publish, Publish, PubAck, PingReq]


def test_output_of_one_packet_then_several_in_one_turn() -> None:
    """One queued packet is handed over as is; several are joined, in order."""
    conn = _connected(4)
    conn.data_to_send()
    assert conn.data_to_send() == b""
    conn.send_publish_ack(1, 1, 0)
    assert conn.data_to_send() == encode_packet(PubAck(1), 4)
    assert conn.data_to_send() == b""
    for pid in (2, 3, 4):
        conn.send_publish_ack(1, pid, 0)
    assert conn.data_to_send() == b"".join(encode_packet(PubAck(i), 4) for i in (2, 3, 4))
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("version", [4, 5])
def test_receive_one_gives_what_receive_data_gives_for_one_whole_packet(version: int) -> None:
    """``receive_one`` (the server's read of one whole packet, without a list) gives the
    packet ``receive_data`` gives for the same read, counts the same bytes, and declines
    (None, nothing read) anything else: a split packet, two packets, a connection not
    yet connected. A violation is recorded the same way: [MQTT-3.1.0-2] a second
    CONNECT is a Protocol Error."""
    wires = [
        encode_packet(Publish("a/b", b"x" * 200, 1, packet_id=7), version),
        encode_packet(Publish("a/b", b"y", 0), version),
        encode_packet(PubAck(9), version),
        encode_packet(PingReq(), version),
    ]
    for data in wires:
        one, many = _connected(version), _connected(version)
        before = one.bytes_received
        assert [one.receive_one(data, 1.0)] == many.receive_data(data, 1.0)
        assert one.bytes_received - before == many.bytes_received - before == len(data)
        assert one.last_received == 1.0
    conn = _connected(version)
    before = conn.bytes_received
    assert conn.receive_one(wires[0][:3], 1.0) is None  # split: for receive_data
    assert conn.receive_one(wires[2] + wires[3], 1.0) is None  # two packets
    assert conn.bytes_received == before
    assert _conn().receive_one(encode_packet(Connect(client_id="c"), version), 1.0) is None
    conn = _connected(version)
    assert conn.receive_one(encode_packet(Connect(client_id="c"), version), 1.0) is None
    assert isinstance(conn.failure, ProtocolViolation)
    assert conn.failure.spec_ref == "MQTT-3.1.0-2"
    assert conn.receive_data(wires[3], 2.0) == []  # nothing read after it


@pytest.mark.parametrize("version", [4, 5])
def test_a_repeated_topic_is_the_same_str_and_still_checked_for_wildcards(version: int) -> None:
    """A connection remembers its last well-formed topic without wildcards: the same
    bytes again give the same ``str`` (issue 19: no decode, no scans). Nothing else
    changes: a topic with a wildcard after it is refused [MQTT-3.3.2-2] (0x90), one
    with U+0000 is malformed (3.1.1 [MQTT-1.5.3-2] / 5.0 [MQTT-1.5.4-2])."""
    conn = _connected(version)
    first, again, other = (
        conn.receive_one(encode_packet(Publish(t, b"x", 1, packet_id=i), version), 1.0)
        for i, t in enumerate(("sensors/1/t", "sensors/1/t", "sensors/2/t"), 1))
    assert isinstance(first, Publish) and isinstance(again, Publish)
    assert isinstance(other, Publish) and other.topic == "sensors/2/t"
    assert again.topic == first.topic == "sensors/1/t" and again.topic is first.topic
    for topic in ("sensors/+/t", "sensors/#"):  # never remembered: refused each time
        conn = _connected(version)
        assert conn.receive_one(encode_packet(Publish("sensors/1/t", b"", 0), version), 1.0)
        assert conn.receive_one(encode_packet(Publish(topic, b"", 0), version), 1.0) is None
        assert isinstance(conn.failure, ProtocolViolation)
        assert (conn.failure.reason_code, conn.failure.spec_ref) == (0x90, "MQTT-3.3.2-2")
    conn = _connected(version)
    assert conn.receive_one(encode_packet(Publish("a/b", b"", 0), version), 1.0)
    bad = encode_packet(Publish("a/b", b"", 0), version).replace(b"a/b", b"a\x00b")
    assert conn.receive_one(bad, 1.0) is None
    assert isinstance(conn.failure, MalformedPacket)
    assert conn.failure.spec_ref == ("MQTT-1.5.4-2" if version == 5 else "MQTT-1.5.3-2")
