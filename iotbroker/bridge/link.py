"""The remote side of a bridge: one MQTT client connection over asyncio, on our codec.

This is the client half of MQTT (3.1.1 §3.1 / 5.0 §3.1: the bridge sends CONNECT,
SUBSCRIBE, PUBLISH and the client's acknowledgements). Bytes are framed by
:class:`~iotbroker.codec.Framer` and decoded by :func:`~iotbroker.codec.decode_packet`;
what the packets mean to the broker is the bridge's (:mod:`iotbroker.bridge.bridge`).
Output is buffered and written after the engine's storage commit of the same turn, so
no acknowledgement leaves before what it acknowledges is on disk.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.packets import Packet
from iotbroker.errors import MqttError


class Link(asyncio.Protocol):
    """One TCP/TLS connection to the remote broker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, version: int,
                 on_packets: Callable[[list[Packet]], None],
                 on_lost: Callable[[str], None], max_packet_size: int) -> None:
        self.loop = loop
        self.version = version
        self.on_packets = on_packets
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        #: Larger packets from the remote are refused before they are buffered (this
        #: broker's own mqtt.max_packet_size; told to an MQTT 5.0 remote in CONNECT).
        self.framer = Framer(max_packet_size)
        self.out: list[bytes] = []
        self._write_scheduled = False
        self.closed = False
        self.last_sent = loop.time()
        self.last_received = loop.time()
        #: Called with False/True when the socket's write buffer fills/drains.
        self.on_writable: Callable[[bool], None] | None = None

    # --------------------------------------------------------------- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        transport.set_write_buffer_limits(high=1 << 20)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        frames: list[tuple[int, bytes]] = []
        error: MqttError | None = self.framer.feed_into(data, frames)
        packets: list[Packet] = []
        try:
            for first, body in frames:
                packets.append(decode_packet(first, body, self.version))
        except MqttError as exc:
            error = exc
        if packets:
            self.on_packets(packets)
        if error is not None:
            self.fail(f"remote sent a malformed packet: {error}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if isinstance(exc, ssl.SSLError):
            why = f"TLS: the remote ended the session: {exc.reason or exc}"
        else:
            why = str(exc) if exc else "connection closed by the remote"
        self.on_lost(why)

    def pause_writing(self) -> None:
        if self.on_writable is not None:
            self.on_writable(False)

    def resume_writing(self) -> None:
        if self.on_writable is not None:
            self.on_writable(True)

    # ---------------------------------------------------------------- output
    def send(self, packet: Packet) -> None:
        """Queue one packet; written at the end of the loop turn (after the commit)."""
        self.queue(encode_packet(packet, self.version))

    def queue(self, data: bytes) -> None:
        self.out.append(data)
        if not self._write_scheduled:
            self._write_scheduled = True
            self.loop.call_soon(self.write)

    def schedule_write(self) -> None:
        """Write :attr:`out` at the end of the loop turn (after appending to it)."""
        if not self._write_scheduled:
            self._write_scheduled = True
            self.loop.call_soon(self.write)

    def write(self) -> None:
        """Write what is queued (the bridge calls it right after a commit, too)."""
        self._write_scheduled = False
        out = self.out
        if not out or self.transport is None or self.transport.is_closing():
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.last_sent = self.loop.time()
        self.transport.write(data)

    def fail(self, why: str) -> None:
        """Abort the connection (``connection_lost`` reports it)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
            self.on_lost(why)

    def close(self) -> None:
        """Write what is queued, then close."""
        self.write()
        if self.transport is not None:
            self.transport.close()
