"""Small helpers shared by the conformance tests (raw bytes, health checks, log checks).

Everything here is deliberately dumb: tests write the exact bytes they mean to send, and
every wait is bounded.
"""

from __future__ import annotations

import socket
import struct
import time

from iotbroker.codec import encode_packet
from iotbroker.codec.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Will,
)
from iotbroker.codec.primitives import encode_varint
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import Closed, RawClient

VERSIONS = (4, 5)


def frame(first_byte: int, body: bytes) -> bytes:
    """Fixed header + body, with a correct Remaining Length."""
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def utf8_raw(data: bytes) -> bytes:
    """A length-prefixed string field holding exactly ``data`` (not validated)."""
    return struct.pack(">H", len(data)) + data


def publish_bytes(
    topic: bytes,
    payload: bytes = b"x",
    qos: int = 0,
    packet_id: int | None = None,
    version: int = 4,
    flags: int | None = None,
) -> bytes:
    """A PUBLISH with a raw topic; ``flags`` overrides the low nibble of the first byte."""
    body = utf8_raw(topic)
    if qos:
        body += struct.pack(">H", packet_id or 1)
    if version == 5:
        body += b"\x00"  # property length 0
    body += payload
    low = (qos << 1) if flags is None else flags
    return frame(0x30 | low, body)


def connect_bytes(version: int, client_id: str, **kwargs: object) -> bytes:
    return encode_packet(Connect(client_id=client_id, protocol_version=version, **kwargs), version)  # type: ignore[arg-type]


def connect_flags_offset(version: int, client_id: str) -> int:
    """Index of the Connect Flags byte in ``connect_bytes(version, client_id)``."""
    data = connect_bytes(version, client_id)
    # first byte, 1-byte Remaining Length (small packets), "\x00\x04MQTT", level
    assert data[1] < 0x80
    return 2 + 6 + 1


def connected(
    host: str,
    port: int,
    version: int,
    client_id: str,
    timeout: float = 3.0,
    **kwargs: object,
) -> RawClient:
    """A RawClient that has connected (CONNACK 0 checked)."""
    client = RawClient(host, port, version=version, timeout=timeout)
    ack = client.connect(client_id, **kwargs)  # type: ignore[arg-type]
    assert ack.reason_code == 0, ack
    return client


def ping(client: RawClient, timeout: float = 2.0) -> None:
    """PINGREQ -> PINGRESP: the connection is alive."""
    client.send(PingReq())
    client.expect(PingResp, timeout)


def assert_broker_healthy(broker: BrokerProcess, version: int = 4) -> None:
    """A fresh client can still connect and get a PINGRESP."""
    assert broker.alive, broker.log_text()[-2000:]
    with RawClient(broker.host, broker.port, version=version, timeout=3.0) as client:
        ack = client.connect(f"healthcheck-{time.monotonic_ns()}")
        assert ack.reason_code == 0
        ping(client)
        client.disconnect()


def local_peer(client: RawClient) -> str:
    """How the broker's log names this client's connection ("127.0.0.1:PORT")."""
    host, port = client.sock.getsockname()[:2]
    return f"{host}:{port}"


def wait_log(broker: BrokerProcess, needle: str, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in broker.log_text():
            return True
        time.sleep(0.02)
    return needle in broker.log_text()


def closed_with(client: RawClient, timeout: float = 3.0) -> list[Packet]:
    """Wait for the close; return the packets the broker sent before closing."""
    return client.expect_closed(timeout)


def disconnect_reason(packets: list[Packet]) -> int | None:
    """Reason code of the DISCONNECT among ``packets`` (None if there was none)."""
    for packet in packets:
        if isinstance(packet, Disconnect):
            return packet.reason_code
    return None


def raw_reply(sock: socket.socket, timeout: float = 3.0) -> bytes:
    """Everything the server sends until it closes (bounded)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, BrokenPipeError):
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"connection still open after {timeout}s; got {data!r}")


def collect_publishes(
    client: RawClient, n: int, timeout: float = 3.0, awaiting_pubrel: set[int] | None = None
) -> list[Publish]:
    """Receive ``n`` PUBLISHes, acknowledging each (QoS 1 and 2) as packets interleave;
    returns once every QoS 2 exchange (including ids in ``awaiting_pubrel``) is complete."""
    got: list[Publish] = []
    open_qos2: set[int] = set(awaiting_pubrel or ())
    deadline = time.monotonic() + timeout
    while len(got) < n or open_qos2:
        packet = client.recv(max(0.01, deadline - time.monotonic()))
        if isinstance(packet, Publish):
            got.append(packet)
            if packet.qos == 1:
                client.send(PubAck(packet.packet_id or 0))
            elif packet.qos == 2:
                open_qos2.add(packet.packet_id or 0)
                client.send(PubRec(packet.packet_id or 0))
        elif isinstance(packet, PubRel):
            assert packet.packet_id in open_qos2, f"PUBREL for unknown id {packet!r}"
            open_qos2.discard(packet.packet_id)
            client.send(PubComp(packet.packet_id))
        else:
            raise AssertionError(f"unexpected {packet!r}")
    return got


def no_publish(client: RawClient, wait: float = 0.3) -> None:
    """Nothing (in particular no PUBLISH) arrives within ``wait``."""
    client.nothing(wait)


def drain(client: RawClient, wait: float = 0.4, limit: float = 2.0) -> list[Packet]:
    """Everything that arrives until ``wait`` seconds of silence (at most ``limit`` s)."""
    got: list[Packet] = []
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return got
        try:
            got.append(client.recv(min(wait, left)))
        except TimeoutError:
            return got
        except Closed:
            return got


__all__ = [
    "VERSIONS",
    "ConnAck",
    "Properties",
    "Publish",
    "Will",
    "assert_broker_healthy",
    "closed_with",
    "collect_publishes",
    "connect_bytes",
    "connect_flags_offset",
    "connected",
    "disconnect_reason",
    "drain",
    "frame",
    "local_peer",
    "no_publish",
    "ping",
    "publish_bytes",
    "raw_reply",
    "utf8_raw",
    "wait_log",
]
