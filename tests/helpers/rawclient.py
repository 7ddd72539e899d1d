"""A deliberately simple blocking MQTT client over a raw socket, for conformance tests.

It uses our codec to build and read packets but does nothing on its own: every
packet the test wants sent is sent explicitly, and everything the broker sends is
returned to the test, so the test can check exactly what is on the wire: decoded
(``recv``/``expect``) or as the raw frames themselves (``next_frame``, and ``frames``,
every frame received so far), for tests that read the broker's bytes as bytes.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import TypeVar

from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from iotbroker.codec.primitives import encode_varint

P = TypeVar("P")


class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    def __init__(self, host: str, port: int, version: int = 4, timeout: float = 5.0,
                 source: str | None = None) -> None:
        sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None)
        self._start(sock, version, timeout)

    @classmethod
    def over(cls, sock: socket.socket, version: int = 4, timeout: float = 5.0) -> RawClient:
        """A client over a socket the caller made and connected (its own options)."""
        client = cls.__new__(cls)
        client._start(sock, version, timeout)
        return client

    def _start(self, sock: socket.socket, version: int, timeout: float) -> None:
        self.version = version
        self.timeout = timeout
        self.sock = sock
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.framer = Framer(1 << 28)
        #: Frames received and not yet returned, as (first byte, body).
        self.pending: list[tuple[int, bytes]] = []
        #: Every frame received on this connection, in order, as (first byte, body).
        self.frames: list[tuple[int, bytes]] = []
        self._next_id = 1

    # ------------------------------------------------------------- low level
    def send(self, packet: Packet) -> None:
        self.sock.sendall(encode_packet(packet, self.version))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, first: int, body: bytes) -> None:
        """One packet from its first byte and body (the Remaining Length is computed)."""
        self.sock.sendall(bytes((first,)) + encode_varint(len(body)) + body)

    def recv(self, timeout: float | None = None) -> Packet:
        """Next packet from the broker, decoded; raises TimeoutError or Closed."""
        first, body = self.next_frame(timeout)
        return decode_packet(first, body, self.version)

    def next_frame(self, timeout: float | None = None) -> tuple[int, bytes]:
        """Next frame from the broker as (first byte, body), not decoded; raises
        TimeoutError or Closed."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet from the broker")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no packet from the broker") from None
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise Closed(str(exc)) from None
            if not data:
                raise Closed("EOF")
            frames = self.framer.feed(data)
            self.pending.extend(frames)
            self.frames.extend(frames)
        return self.pending.pop(0)

    def expect(self, cls: type[P], timeout: float | None = None) -> P:
        packet = self.recv(timeout)
        assert isinstance(packet, cls), f"expected {cls.__name__}, got {packet!r}"
        return packet

    def expect_closed(self, timeout: float = 5.0) -> list[Packet]:
        """Wait until the broker closes the connection; return what came before."""
        got: list[Packet] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s; got {got!r}")
            try:
                got.append(self.recv(left))
            except Closed:
                return got
            except TimeoutError:
                continue

    def nothing(self, wait: float = 0.3) -> None:
        """Assert that no packet arrives within ``wait`` seconds."""
        try:
            packet = self.recv(wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected packet {packet!r}")

    def packet_id(self) -> int:
        pid = self._next_id
        self._next_id = pid % 65535 + 1
        return pid

    # ------------------------------------------------------------ high level
    def connect(
        self,
        client_id: str = "",
        clean_start: bool = True,
        keepalive: int = 60,
        will: Will | None = None,
        username: str | None = None,
        password: bytes | None = None,
        properties: Properties | None = None,
    ) -> ConnAck:
        self.send(
            Connect(
                client_id=client_id,
                protocol_version=self.version,
                clean_start=clean_start,
                keepalive=keepalive,
                will=will,
                username=username,
                password=password,
                properties=properties or Properties(),
            )
        )
        return self.expect(ConnAck)

    def subscribe(
        self,
        topic_filter: str,
        qos: int = 0,
        properties: Properties | None = None,
        **options: object,
    ) -> SubAck:
        pid = self.packet_id()
        sub = Subscription(topic_filter, qos, **options)  # type: ignore[arg-type]
        self.send(Subscribe(pid, [sub], properties or Properties()))
        ack = self.expect(SubAck)
        assert ack.packet_id == pid
        return ack

    def unsubscribe(self, *topic_filters: str) -> UnsubAck:
        pid = self.packet_id()
        self.send(Unsubscribe(pid, list(topic_filters)))
        ack = self.expect(UnsubAck)
        assert ack.packet_id == pid
        return ack

    def publish(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> Packet | None:
        """Publish and complete the QoS handshake; returns the final ack (or None)."""
        pid = self.packet_id() if qos else None
        self.send(Publish(topic, payload, qos, retain, False, pid, properties or Properties()))
        if qos == 1:
            ack = self.expect(PubAck)
            assert ack.packet_id == pid
            return ack
        if qos == 2:
            rec = self.expect(PubRec)
            assert rec.packet_id == pid
            if rec.reason_code >= 0x80:
                return rec
            self.send(PubRel(pid or 0))
            comp = self.expect(PubComp)
            assert comp.packet_id == pid
            return comp
        return None

    def receive_publish(self, timeout: float | None = None, ack: bool = True) -> Publish:
        """Next PUBLISH; acknowledges QoS 1 and completes QoS 2 when ``ack``."""
        pub = self.expect(Publish, timeout)
        if ack and pub.qos == 1:
            self.send(PubAck(pub.packet_id or 0))
        elif ack and pub.qos == 2:
            self.send(PubRec(pub.packet_id or 0))
            rel = self.expect(PubRel)
            assert rel.packet_id == pub.packet_id
            self.send(PubComp(pub.packet_id or 0))
        return pub

    def disconnect(self, reason_code: int = 0, properties: Properties | None = None) -> None:
        try:
            self.send(Disconnect(reason_code, properties or Properties()))
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
