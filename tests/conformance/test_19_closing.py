"""How the server ends a connection (issue 18): a first packet that is not CONNECT is
refused on its first byte [MQTT-3.1.0-1], and the last packet before a close (CONNACK
or DISCONNECT with a reason code) reaches a client that is still writing (MQTT 5.0
§4.13, §3.14.4; MQTT 3.1.1 §4.8)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from iotbroker.codec import Framer, decode_packet
from iotbroker.codec.packets import ConnAck, Disconnect, Packet, PubRec
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.conformance import (
    assert_broker_healthy,
    connect_bytes,
    publish_bytes,
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


# ------------------------------------------------- the last packet reaches the client


class _Writer(threading.Thread):
    """Keeps sending ``filler`` (about 100 KB/s: below the broker's 1 MiB linger bound)
    until told to stop; records the first send error (a reset shows up here)."""

    def __init__(self, sock: socket.socket, filler: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.filler = filler
        self.stop = threading.Event()
        self.error: OSError | None = None
        self.sent = 0

    def run(self) -> None:
        deadline = time.monotonic() + 5.0  # bounded whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                self.sock.sendall(self.filler)
            except OSError as exc:
                self.error = exc
                return
            self.sent += len(self.filler)
            time.sleep(0.005)


def _read_until_eof(sock: socket.socket, version: int, timeout: float = 4.0) -> list[Packet]:
    """Every packet until the server's EOF; a reset fails the test (the reason code
    would be lost to a client that reads after it)."""
    framer = Framer(1 << 20)
    packets: list[Packet] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no EOF within {timeout}s; got {packets!r}"
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except ConnectionResetError as exc:
            raise AssertionError(f"connection reset after {packets!r}") from exc
        if not data:
            return packets
        for first, body in framer.feed(data):
            packets.append(decode_packet(first, body, version))


def _ended_while_writing(host: str, port: int, version: int, start: bytes, filler: bytes,
                         before: bytes = b"") -> list[Packet]:
    """Send ``start`` (and ``before``), then keep writing ``filler`` while reading: the
    server's last packets arrive, then its EOF (a half-close), and our writes still
    succeed for a while after it (it reads and discards: no reset)."""
    sock = socket.create_connection((host, port), timeout=4.0)
    try:
        sock.sendall(start)
        writer = _Writer(sock, filler)
        if before:
            sock.sendall(before)
        writer.start()
        packets = _read_until_eof(sock, version)
        time.sleep(0.3)  # still writing after the EOF: the server lingers
        writer.stop.set()
        writer.join(2.0)
        assert writer.error is None, f"write failed after the server's EOF: {writer.error!r}"
        assert writer.sent > 0
        return packets
    finally:
        sock.close()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    workdir = tmp_path_factory.mktemp("limited-broker")
    extra = "mqtt:\n  max_packet_size: 2048\n  receive_maximum: 2\n"
    proc = BrokerProcess(workdir, broker_config(extra=extra)).start()
    yield proc
    proc.stop()


def _qos2_publishes(topic: bytes, first_id: int, count: int) -> bytes:
    return b"".join(publish_bytes(topic, b"p" * 200, 2, pid, version=5)
                    for pid in range(first_id, first_id + count))


def test_disconnect_0x93_reaches_a_client_that_keeps_writing(limited: BrokerProcess,
                                                             uniq: str) -> None:
    """MQTT 5.0 §3.3.4 [MQTT-3.3.4-9] with §4.13 [MQTT-4.13.1-1] and [MQTT-3.14.4-1]: a
    client that exceeds Receive Maximum (2) with QoS 2 and goes on sending gets
    DISCONNECT 0x93 as the server's last packet, then EOF -- not a connection reset
    (issue 18: shut down the write side, read and discard for a bounded time)."""
    start = connect_bytes(5, uniq) + _qos2_publishes(f"{uniq}/t".encode(), 1, 3)
    filler = _qos2_publishes(f"{uniq}/t".encode(), 10, 4)
    packets = _ended_while_writing(limited.host, limited.port, 5, start, filler)
    assert isinstance(packets[0], ConnAck) and packets[0].reason_code == 0
    assert [type(p) for p in packets[1:-1]] == [PubRec, PubRec], packets
    assert isinstance(packets[-1], Disconnect) and packets[-1].reason_code == 0x93, packets


def test_disconnect_0x95_reaches_a_client_that_keeps_writing(limited: BrokerProcess,
                                                             uniq: str) -> None:
    """MQTT 5.0 §3.2.2.3.6, §4.13 [MQTT-4.13.1-1]: a packet above the server's Maximum
    Packet Size (2048) -> DISCONNECT 0x95, read by a client still writing, then EOF."""
    start = connect_bytes(5, uniq)
    filler = publish_bytes(f"{uniq}/t".encode(), b"L" * 4000, 0, version=5)
    packets = _ended_while_writing(limited.host, limited.port, 5, start, filler)
    assert isinstance(packets[0], ConnAck) and packets[0].reason_code == 0
    assert isinstance(packets[-1], Disconnect) and packets[-1].reason_code == 0x95, packets


@VERSIONS
def test_refusing_connack_reaches_a_client_that_keeps_writing(broker: BrokerProcess,
                                                              uniq: str, version: int) -> None:
    """[MQTT-3.1.2-2]: a CONNECT with an unsupported protocol level gets CONNACK 0x01
    (3.1.1) / 0x84 (5.0) and the server closes [MQTT-3.2.2-5] (3.1.1) / [MQTT-3.2.2-7]
    (5.0); a client that pipelines packets behind its CONNECT still reads the CONNACK,
    then EOF (no reset)."""
    data = bytearray(connect_bytes(version, uniq))
    data[2 + 6] = 9  # protocol level 9
    filler = publish_bytes(f"{uniq}/t".encode(), b"x" * 500, 0, version=version)
    packets = _ended_while_writing(broker.host, broker.port, 4, bytes(data), filler)
    assert len(packets) == 1 and isinstance(packets[0], ConnAck), packets
    assert packets[0].reason_code == 0x01 or (version == 5 and packets[0].reason_code == 0x84)
    assert_broker_healthy(broker)


@pytest.mark.parametrize("pace", [0.005, 0.0], ids=["slow-writer", "fast-writer"])
def test_linger_is_bounded_in_time_and_bytes(limited: BrokerProcess, uniq: str,
                                             pace: float) -> None:
    """The lingering close is bounded (issue 18: "about 2 s, bounded in bytes"): a
    client that never stops writing after the server's DISCONNECT 0x95 is cut off --
    a slow writer after about 2 s, a fast one as soon as it has sent more than the
    1 MiB the server discards, well before the 2 s."""
    sock = socket.create_connection((limited.host, limited.port), timeout=4.0)
    try:
        sock.sendall(connect_bytes(5, uniq)
                     + publish_bytes(f"{uniq}/t".encode(), b"L" * 4000, 0, version=5))
        packets = _read_until_eof(sock, 5)
        assert isinstance(packets[-1], Disconnect) and packets[-1].reason_code == 0x95
        eof_at = time.monotonic()
        chunk = b"\x00" * (1024 if pace else 65536)
        failed_at = None
        while time.monotonic() - eof_at < 6.0:
            try:
                sock.sendall(chunk)
            except OSError:
                failed_at = time.monotonic()
                break
            if pace:
                time.sleep(pace)
        assert failed_at is not None, "the server kept reading for 6 s"
        took = failed_at - eof_at
        if pace:
            assert 1.5 <= took < 4.0, took
        else:
            assert took < 1.5, took
    finally:
        sock.close()
