"""Cut a byte stream into MQTT control packets (MQTT 3.1.1 §2.2, MQTT 5.0 §2.1).

Rules of this room:

* A frame is the first fixed-header byte and the body (the Remaining Length bytes).
  The framer does not look inside: flags, packet types and bodies are ``decode``'s job.
* The Remaining Length is a Variable Byte Integer of at most 4 bytes; a fifth
  continuation byte, or an over-long encoding [MQTT-1.5.5-1], is :class:`MalformedPacket`
  (0x81). It is decoded incrementally, so input may be split at any byte boundary.
* Limits before allocation: the whole packet size (fixed header + body) is compared with
  ``max_packet_size`` as soon as the fixed header is complete, before any body byte is
  buffered -> :class:`PacketTooLarge` (0x95; the Server's limit MQTT 5.0 §3.2.2.3.6, the
  Client's §3.1.2.11.4). In MQTT 3.1.1 the broker simply closes the connection.
* After an error the framer's state is undefined: the connection must be closed.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import mypyc_attr

from iotbroker.errors import MalformedPacket, PacketTooLarge

#: The largest packet the protocol can express: 1 + 4 + 268,435,455 bytes.
PROTOCOL_MAX_PACKET_SIZE = 268_435_460

#: ``Framer._buf`` with nothing held back (never written to: see ``feed_into``).
_EMPTY: Final = b""


@mypyc_attr(allow_interpreted_subclasses=True)  # via Connection: the bridge's Outlet
class Framer:
    """Incremental splitter of one connection's inbound bytes.

    ``max_packet_size`` (whole packet, bytes) may be changed at any time, e.g. once the
    CONNECT has been read. ``bytes_received`` counts every byte fed.
    """

    __slots__ = (
        "_buf", "_need", "bytes_received", "last_topic", "last_topic_raw", "max_packet_size",
    )

    def __init__(self, max_packet_size: int = PROTOCOL_MAX_PACKET_SIZE) -> None:
        self.max_packet_size = max_packet_size
        self.bytes_received = 0
        #: The incomplete packet held back; the shared empty ``bytes`` while there is
        #: none (an idle connection holds no buffer of its own: 56 bytes, issue 19).
        self._buf: bytearray | bytes = _EMPTY
        # Bytes _buf must hold before the next frame can complete (0: header incomplete).
        self._need = 0
        #: The last PUBLISH topic decoded from this stream that is well-formed (UTF-8,
        #: no U+0000) and free of wildcards, as its raw bytes and as the ``str``
        #: ``decode.decode_whole`` gave it; both empty until then. A client publishing
        #: to the same topic again gets the same ``str``: no UTF-8 decode, no character
        #: scans, its hash already computed (issue 19). A cache, not protocol state.
        self.last_topic_raw = _EMPTY
        self.last_topic = ""

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a packet."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
        """Add ``data``; return the packets it completes as ``(first_byte, body)``.

        Bodies are always ``bytes``. Raises :class:`MalformedPacket` for a bad Remaining
        Length and :class:`PacketTooLarge` for a packet over ``max_packet_size``.
        """
        frames: list[tuple[int, bytes]] = []
        error = self.feed_into(data, frames)
        if error is not None:
            raise error
        return frames

    def whole_frame(self, data: bytes) -> int:
        """The length of the fixed header (2 to 5) if ``data`` is exactly one whole
        packet within ``max_packet_size`` and nothing is held back; otherwise 0, and
        ``feed_into`` frames ``data`` (and reports what is wrong with it). Counts
        nothing: the caller adds ``len(data)`` to ``bytes_received`` when it takes it.

        The usual read at 1,000 msg/s holds one packet: decoded from the read itself
        (``decode.decode_whole``), no frame list, tuple or body copy (issue 19).
        """
        n = len(data)
        if n < 2 or self._buf is not _EMPTY:  # (held back: a non-empty bytearray)
            return 0
        byte = data[1]
        if byte < 0x80:
            header = 2
            length = byte
        else:
            length = byte & 0x7F
            header = 0
            for i in range(2, 5):
                if i >= n:
                    return 0
                byte = data[i]
                length |= (byte & 0x7F) << (7 * (i - 1))
                if byte < 0x80:
                    if byte == 0:
                        return 0  # not the shortest form: feed_into says so
                    header = i + 1
                    break
            if header == 0:
                return 0
        if header + length != n or n > self.max_packet_size:
            return 0
        return header

    def feed_into(
        self, data: bytes | bytearray | memoryview, frames: list[tuple[int, bytes]]
    ) -> MalformedPacket | None:
        """Add ``data``; append the packets it completes to ``frames``, in order.

        Failures come back as values: the :class:`MalformedPacket` (or
        :class:`PacketTooLarge`) of the first bad fixed header, or None. The frames
        completed before it are appended all the same, so a connection can handle them
        before it closes; after an error the framer must not be fed again.
        """
        self.bytes_received += len(data)
        buf = self._buf
        if buf:
            assert isinstance(buf, bytearray)
            buf += data
            if len(buf) < self._need:
                return None  # still inside a known-length body: no re-parse, no copy
            data = bytes(buf)
            self._buf = _EMPTY
        elif type(data) is not bytes:
            data = bytes(data)
        self._need = 0
        n = len(data)
        pos = 0
        max_size = self.max_packet_size
        while n - pos >= 2:
            byte = data[pos + 1]
            if byte < 0x80:  # common case: Remaining Length < 128, one byte
                length = byte
                header = 2
            else:
                length = byte & 0x7F
                header = 0
                for i in range(2, 5):
                    if pos + i >= n:
                        break  # header incomplete
                    byte = data[pos + i]
                    length |= (byte & 0x7F) << (7 * (i - 1))
                    if byte < 0x80:
                        if byte == 0:
                            return MalformedPacket(
                                "Remaining Length is not in its shortest form",
                                spec_ref="MQTT-1.5.5-1",
                            )
                        header = i + 1
                        break
                else:
                    return MalformedPacket(
                        "Remaining Length is longer than 4 bytes", spec_ref="MQTT-1.5.5-1"
                    )
                if header == 0:
                    break  # wait for the rest of the fixed header
            total = header + length
            if total > max_size:
                return PacketTooLarge(
                    f"packet of {total} bytes exceeds the maximum packet size {max_size}",
                    spec_ref="MQTT 5.0 §3.2.2.3.6",
                )
            end = pos + total
            if end > n:
                self._need = total
                break
            frames.append((data[pos], data[pos + header : end]))
            pos = end
        if pos < n:
            self._buf = bytearray(memoryview(data)[pos:])
        return None
