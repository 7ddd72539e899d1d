"""``server/websocket.py`` in process: the sans-I/O WebSocket adapter between a fake
socket transport and a fake MQTT protocol. Bytes in (client frames, masked, built with
``websockets``' own ``Frame``), bytes out (server frames, parsed back here); no socket,
no sleep (timers are fired by hand)."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.protocol import State

from iotbroker.codec import encode_packet
from iotbroker.codec.packets import Publish
from iotbroker.server import websocket as wsmod
from iotbroker.server.websocket import (
    WS_MESSAGE_MAX,
    WebSocketConnection,
    WebSocketEndpoint,
    packet_aligned,
    select_subprotocol,
)

PEER = ("127.0.0.1", 40001)


class FakeSocketTransport(asyncio.Transport):
    """What the loop gives ``WebSocketConnection``: records writes and state."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.eof = False
        self.aborted = False
        self.reading = True
        self.limits: tuple[int | None, int | None] | None = None

    def write(self, data: Any) -> None:
        assert not self.ended and not self.aborted, "write after close"
        self.out += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    @property
    def ended(self) -> bool:
        """We ended the TCP connection: closed it, or half-closed it (the lingering
        close of server/linger.py reads on until the client's EOF)."""
        return self.closed or self.eof

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return len(self.out)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": PEER, "peercert": {"subject": ()}}.get(name, default)


class FakeClient:
    """Stands for ``ClientProtocol``: records what the adapter calls."""

    def __init__(self) -> None:
        self.transport: WebSocketConnection | None = None
        self.received: list[bytes] = []
        self.lost: list[Exception | None] = []
        self.pause_on: bytes | None = None
        self.writes_paused = 0

    def connection_made(self, transport: WebSocketConnection) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received.append(bytes(data))
        if self.pause_on is not None and data == self.pause_on and self.transport:
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        self.writes_paused += 1

    def resume_writing(self) -> None:
        self.writes_paused -= 1


class Peer:
    """One adapter, its socket transport and its MQTT client; builds requests and reads
    back what the adapter sends."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_size: int = 1 << 16,
                 listener: Peer | None = None) -> None:
        """A connection to a new listener, or to the one of ``listener``."""
        if listener is None:
            self.clients: list[FakeClient] = []
            self.endpoint = WebSocketEndpoint(loop, "/mqtt", self._factory, max_size, 10.0)
        else:
            self.clients = listener.clients
            self.endpoint = listener.endpoint
        self.conn = self.endpoint.protocol()
        self.transport = FakeSocketTransport()
        self.conn.connection_made(self.transport)
        self.seen = 0

    def _factory(self) -> Any:
        client = FakeClient()
        self.clients.append(client)
        return client

    @property
    def client(self) -> FakeClient:
        [client] = [c for c in self.clients if c.transport is self.conn]
        return client

    def request(self, path: str = "/mqtt", protocols: str | None = "mqtt") -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        if protocols is not None:
            lines.append(f"Sec-WebSocket-Protocol: {protocols}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def response(self) -> bytes:
        head, _, _ = bytes(self.transport.out).partition(b"\r\n\r\n")
        return head

    def open(self, protocols: str | None = "mqtt") -> None:
        self.conn.data_received(self.request(protocols=protocols))
        assert self.response().startswith(b"HTTP/1.1 101"), self.response()
        self.seen = len(self.response()) + 4

    def frames(self) -> list[Frame]:
        """Frames the adapter wrote since the last call (server frames, unmasked)."""
        data = bytes(self.transport.out[self.seen:])
        self.seen = len(self.transport.out)
        out: list[Frame] = []
        while data:
            n = data[1] & 0x7F
            at = 2
            if n == 126:
                n, at = int.from_bytes(data[2:4], "big"), 4
            elif n == 127:
                n, at = int.from_bytes(data[2:10], "big"), 10
            out.append(Frame(Opcode(data[0] & 0x0F), data[at:at + n], bool(data[0] & 0x80)))
            data = data[at + n:]
        return out


def frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=True, extensions=[])


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run_soon(loop: asyncio.AbstractEventLoop) -> None:
    """Run what ``call_soon`` scheduled (one loop iteration)."""
    loop.run_until_complete(asyncio.sleep(0))


# ----------------------------------------------------------------- handshake
def test_subprotocol_choice() -> None:
    assert select_subprotocol(["mqttv3.1", "mqtt"]) == "mqtt"  # type: ignore[list-item]
    assert select_subprotocol(["mqttv3.1"]) == "mqttv3.1"  # type: ignore[list-item]
    assert select_subprotocol([]) is None
    with pytest.raises(Exception, match="expected mqtt"):
        select_subprotocol(["chat"])  # type: ignore[list-item]


def test_handshake_101_then_the_mqtt_side_starts(loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    assert peer.clients == []  # no MQTT connection before the handshake
    peer.open()
    head = peer.response()
    assert b"Sec-WebSocket-Protocol: mqtt" in head
    assert b"Sec-WebSocket-Extensions" not in head  # no compression
    assert peer.client.transport is peer.conn
    assert peer.conn.get_extra_info("peername") == PEER
    assert peer.conn.get_extra_info("subprotocol") == "mqtt"
    assert peer.conn.get_extra_info("peercert") == {"subject": ()}
    assert peer.endpoint.open == 1
    assert peer.clients == [peer.client]


@pytest.mark.parametrize(("path", "protocols", "status"),
                         [("/other", "mqtt", b"404"), ("/mqtt", "chat", b"400")])
def test_refused_handshakes(loop: asyncio.AbstractEventLoop, path: str, protocols: str,
                            status: bytes, caplog: pytest.LogCaptureFixture) -> None:
    peer = Peer(loop)
    with caplog.at_level("INFO", "iotbroker.listeners"):
        peer.conn.data_received(peer.request(path, protocols) + frame(Opcode.BINARY, b"x"))
    assert peer.response().startswith(b"HTTP/1.1 " + status)
    assert peer.transport.ended and not peer.clients
    assert "refusing WebSocket handshake from 127.0.0.1:40001" in caplog.text


def test_no_subprotocol_offered_is_accepted(loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    peer.open(protocols=None)
    assert b"Sec-WebSocket-Protocol" not in peer.response()
    assert peer.conn.get_extra_info("subprotocol") is None


def test_request_split_at_every_byte_and_frames_in_the_same_read(
        loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    data = peer.request() + frame(Opcode.BINARY, b"\x10\x01") + frame(Opcode.BINARY, b"\x02")
    head_len = data.index(b"\r\n\r\n") + 4
    for i in range(head_len - 1):
        peer.conn.data_received(data[i:i + 1])
    assert peer.clients == []
    peer.conn.data_received(data[head_len - 1:])  # the last byte of the head and frames
    assert peer.client.received == [b"\x10\x01", b"\x02"]


def test_handshake_timeout_aborts(loop: asyncio.AbstractEventLoop,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    peer = Peer(loop)
    peer.conn.data_received(b"GET /mqtt HTTP/1.1\r\n")
    timer = peer.conn._timer
    assert timer is not None
    timer._run()  # type: ignore[attr-defined]  # as the loop would, handshake_timeout later
    assert peer.transport.aborted and peer.clients == []
    peer.conn.connection_lost(None)
    assert peer.endpoint.open == 0


# -------------------------------------------------------------------- frames
def test_binary_frames_and_fragments_reach_mqtt_as_they_come(
        loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    peer.open()
    peer.conn.data_received(frame(Opcode.BINARY, b"ab", fin=False)
                            + frame(Opcode.PING, b"hi")  # a ping between fragments
                            + frame(Opcode.CONT, b"cd", fin=False))
    peer.conn.data_received(frame(Opcode.CONT, b"ef"))
    assert peer.client.received == [b"ab", b"cd", b"ef"]
    assert [(f.opcode, f.data) for f in peer.frames()] == [(Opcode.PONG, b"hi")]


def test_text_frame_closes_with_1003(loop: asyncio.AbstractEventLoop) -> None:
    """[MQTT-6.0.0-1]"""
    peer = Peer(loop)
    peer.open()
    peer.conn.data_received(frame(Opcode.TEXT, b"hello") + frame(Opcode.BINARY, b"x"))
    assert peer.client.received == []
    [close] = peer.frames()
    assert close.opcode is Opcode.CLOSE
    assert Close.parse(close.data).code == CloseCode.UNSUPPORTED_DATA
    assert peer.transport.ended
    peer.conn.connection_lost(None)
    [exc] = peer.client.lost
    assert isinstance(exc, ConnectionError) and "binary" in str(exc)


def test_message_over_max_size_closes_with_1009(loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop, max_size=1000)
    peer.open()
    peer.conn.data_received(frame(Opcode.BINARY, b"x" * 600, fin=False)
                            + frame(Opcode.CONT, b"x" * 600))
    assert peer.client.received == [b"x" * 600]
    [close] = peer.frames()
    assert Close.parse(close.data).code == CloseCode.MESSAGE_TOO_BIG
    peer.conn.connection_lost(None)
    assert isinstance(peer.client.lost[0], ConnectionError)


def test_write_is_one_binary_message(loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    peer.open()
    peer.conn.write(b"\x20\x02\x00\x00")
    peer.conn.writelines([b"\xd0", b"\x00"])
    assert [(f.opcode, f.data, f.fin) for f in peer.frames()] == [
        (Opcode.BINARY, b"\x20\x02\x00\x00", True), (Opcode.BINARY, b"\xd0\x00", True)]


def _publish(payload_size: int, index: int = 0) -> bytes:
    return encode_packet(Publish(f"t/{index}", b"p" * payload_size, 0, False, False, None), 4)


def test_a_long_write_is_cut_between_packets(loop: asyncio.AbstractEventLoop) -> None:
    """A loop turn's output for one client can be megabytes: it goes out as messages
    of at most WS_MESSAGE_MAX bytes, each holding whole packets; a larger packet is a
    message of its own."""
    peer = Peer(loop)
    peer.open()
    packets = [_publish(1000, i) for i in range(300)]
    packets.insert(100, _publish(3 * WS_MESSAGE_MAX))  # 4-byte Remaining Length
    data = b"".join(packets)
    peer.conn.write(data)
    messages = [bytes(f.data) for f in peer.frames()]
    assert b"".join(messages) == data
    assert len(messages) > 3
    boundaries = set()
    at = 0
    for packet in packets:
        at += len(packet)
        boundaries.add(at)
    at = 0
    for message in messages:
        at += len(message)
        assert at in boundaries  # whole packets only
        assert len(message) <= WS_MESSAGE_MAX or message == packets[100]


def test_packet_aligned_edges() -> None:
    assert [bytes(m) for m in packet_aligned(b"", 10)] == [b""]
    two = _publish(5) + _publish(5)
    assert [bytes(m) for m in packet_aligned(two, 100)] == [two]
    assert [bytes(m) for m in packet_aligned(two, len(two) - 1)] == [two[:len(two) // 2],
                                                                     two[len(two) // 2:]]
    cut = two[:-3]  # not whole packets: the tail goes as it is
    assert b"".join(packet_aligned(cut, 10)) == cut


# -------------------------------------------------------------- backpressure
def test_write_limits_and_pause_writing_are_the_socket_transports(
        loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    peer.open()
    peer.conn.set_write_buffer_limits(high=1 << 20)
    assert peer.transport.limits == (1 << 20, None)
    assert peer.conn.get_write_buffer_size() == len(peer.transport.out)
    peer.conn.pause_writing()  # as the socket transport calls it
    assert peer.client.writes_paused == 1
    peer.conn.resume_writing()
    assert peer.client.writes_paused == 0


def test_pause_reading_holds_the_rest_of_a_read(loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    peer.open()
    peer.client.pause_on = b"1"
    peer.conn.data_received(b"".join(frame(Opcode.BINARY, d) for d in (b"0", b"1", b"2")))
    assert peer.client.received == [b"0", b"1"]
    assert not peer.transport.reading and not peer.conn.is_reading()
    peer.conn.data_received(frame(Opcode.BINARY, b"3"))  # was already on its way
    assert peer.client.received == [b"0", b"1"]
    peer.conn.resume_reading()
    assert peer.transport.reading
    run_soon(loop)
    assert peer.client.received == [b"0", b"1", b"2", b"3"]
    assert peer.conn.is_reading()


# ------------------------------------------------------------------- closing
def test_close_sends_close_frame_and_waits_for_the_clients(
        loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    peer.open()
    peer.conn.write(b"\xe0\x00")  # DISCONNECT, then the close frame
    peer.conn.close()
    assert peer.conn.is_closing()
    assert [f.opcode for f in peer.frames()] == [Opcode.BINARY, Opcode.CLOSE]
    assert not peer.transport.ended  # waiting for the client's close frame
    peer.conn.write(b"late")  # ignored once closing
    peer.conn.data_received(frame(Opcode.CLOSE, Close(1000, "").serialize()))
    assert peer.transport.ended
    peer.conn.connection_lost(None)
    assert peer.client.lost == [None]
    assert peer.endpoint.open == 0


def test_close_without_answer_times_out(loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    peer.open()
    peer.conn.close()
    timer = peer.conn._timer
    assert timer is not None and timer.when() - loop.time() == pytest.approx(
        wsmod.WS_CLOSE_TIMEOUT, abs=0.5)
    timer._run()  # type: ignore[attr-defined]
    assert peer.transport.ended and not peer.transport.aborted
    grace = peer.conn._timer
    assert grace is not None
    grace._run()  # type: ignore[attr-defined]  # still not gone: aborted
    assert peer.transport.aborted


def test_client_close_frame_is_echoed_and_is_a_clean_end(
        loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    peer.open()
    peer.conn.data_received(frame(Opcode.CLOSE, Close(1001, "bye").serialize()))
    [echo] = peer.frames()
    assert echo.opcode is Opcode.CLOSE and Close.parse(echo.data).code == 1001
    assert peer.transport.ended
    peer.conn.connection_lost(None)
    assert peer.client.lost == [None]


def test_abnormal_client_close_code_is_reported(loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    peer.open()
    peer.conn.data_received(frame(Opcode.CLOSE, Close(1011, "oops").serialize()))
    peer.conn.connection_lost(None)
    [exc] = peer.client.lost
    assert isinstance(exc, ConnectionError) and "1011" in str(exc)


def test_abort_and_eof(loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    peer.open()
    peer.conn.abort()
    assert peer.transport.aborted and peer.conn.is_closing()
    other = Peer(loop)
    other.open()
    assert other.conn.eof_received() is None  # the transport closes itself
    other.conn.connection_lost(None)
    assert other.client.lost == [None]


def test_wait_closed_counts_open_connections(loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    peer.open()
    assert not loop.run_until_complete(peer.endpoint.wait_closed(0.01))
    loop.call_soon(peer.conn.connection_lost, None)
    assert loop.run_until_complete(peer.endpoint.wait_closed(1.0))


def test_between_frames_a_connection_holds_no_protocol(
        loop: asyncio.AbstractEventLoop) -> None:
    """Issue 19: after the 101 the handshake's protocol (which keeps the request) is
    dropped; after each read that ends on a frame boundary the OPEN protocol goes back
    to the endpoint's spares."""
    peer = Peer(loop)
    peer.open()
    assert peer.conn._ws is None
    peer.conn.data_received(frame(Opcode.BINARY, b"\x10\x00"))
    assert peer.conn._ws is None and len(peer.endpoint._spares) == 1
    spare = peer.endpoint._spares[0]
    assert spare.state is State.OPEN and spare.subprotocol == "mqtt"
    assert spare.events_received() == [] and spare.data_to_send() == []
    peer.conn.write(b"\x20\x02\x00\x00")  # a write borrows one and gives it back
    assert peer.conn._ws is None and peer.endpoint._spares == [spare]
    assert [f.data for f in peer.frames()] == [b"\x20\x02\x00\x00"]


def test_partial_frames_and_fragments_keep_their_protocol(
        loop: asyncio.AbstractEventLoop) -> None:
    """Two connections of one listener, one with a frame split across reads and a
    fragmented message, the other reading whole frames in between: no byte goes to the
    wrong connection, and a protocol goes back only when it holds nothing."""
    a = Peer(loop)
    b = Peer(loop, listener=a)
    a.open()
    b.open(protocols=None)
    data = frame(Opcode.BINARY, b"A" * 300)
    a.conn.data_received(data[:7])
    assert a.conn._ws is not None  # a partial frame: kept
    b.conn.data_received(frame(Opcode.BINARY, b"B1") + frame(Opcode.BINARY, b"B2"))
    a.conn.data_received(data[7:] + frame(Opcode.BINARY, b"A2", fin=False))
    assert a.conn._ws is not None  # inside a fragmented message: kept
    b3 = frame(Opcode.BINARY, b"B3")  # one random mask for both halves
    b.conn.data_received(b3[:3])
    b.conn.data_received(b3[3:])
    a.conn.data_received(frame(Opcode.CONT, b"A3"))
    assert a.conn._ws is None and b.conn._ws is None
    assert a.client.received == [b"A" * 300, b"A2", b"A3"]
    assert b.client.received == [b"B1", b"B2", b"B3"]
    assert b.conn.get_extra_info("subprotocol") is None
    assert a.conn.get_extra_info("subprotocol") == "mqtt"


def test_non_minimal_length_keeps_the_protocol(loop: asyncio.AbstractEventLoop) -> None:
    """A frame with a longer length encoding than needed is read correctly; the byte
    count then never returns to 0, so the connection keeps its protocol (safe side)."""
    peer = Peer(loop)
    peer.open()
    mask = b"\x01\x02\x03\x04"
    payload = b"\x10\x00"
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    peer.conn.data_received(b"\x82" + bytes([0x80 | 126]) + b"\x00\x02" + mask + masked)
    assert peer.client.received == [payload]
    assert peer.conn._ws is not None
    peer.conn.data_received(frame(Opcode.BINARY, b"next"))
    assert peer.client.received == [payload, b"next"]


def test_closing_keeps_its_protocol(loop: asyncio.AbstractEventLoop) -> None:
    peer = Peer(loop)
    peer.open()
    peer.conn.close()
    ws = peer.conn._ws
    assert ws is not None and ws.state is State.CLOSING
    peer.conn.data_received(frame(Opcode.BINARY, b"ignored"))
    assert peer.conn._ws is ws and peer.endpoint._spares == []
