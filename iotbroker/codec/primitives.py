"""Data representations of the MQTT wire format (MQTT 3.1.1 §1.5, MQTT 5.0 §1.5).

Rules of this room:

* Readers take ``(buf, pos)`` and return ``(value, new_pos)``. They never read past
  ``len(buf)``: a field that runs past the end raises :class:`MalformedPacket` (0x81).
* UTF-8 strings are validated on the way in: ill-formed sequences and surrogates are
  malformed [MQTT-1.5.3-1] / [MQTT-1.5.4-1], U+0000 is malformed [MQTT-1.5.3-2] /
  [MQTT-1.5.4-2], a BOM (U+FEFF) is kept as it is [MQTT-1.5.3-3] / [MQTT-1.5.4-3].
  ``v5`` selects which version's statement id the error cites.
* Variable Byte Integers are at most 4 bytes (a fifth continuation byte is malformed,
  MQTT 5.0 §1.5.5) and must use the fewest bytes [MQTT-1.5.5-1]; an over-long encoding
  is rejected as malformed.
* Writers raise :class:`ValueError` for values that cannot be represented: that is our
  own misuse, never a peer's fault.
"""

from __future__ import annotations

import struct
from typing import Final

from iotbroker.errors import MalformedPacket

#: Largest value a Variable Byte Integer can hold (MQTT 5.0 §1.5.5).
VARINT_MAX: Final = 268_435_455
#: Largest length-prefixed field (two-byte length).
U16_MAX = 0xFFFF

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

_UTF8_ILL_FORMED = ("MQTT-1.5.3-1", "MQTT-1.5.4-1")
_UTF8_NUL = ("MQTT-1.5.3-2", "MQTT-1.5.4-2")


def _truncated(what: str) -> MalformedPacket:
    return MalformedPacket(f"{what} runs past the end of the packet")


# --------------------------------------------------------------------------- integers


def read_u16(buf: bytes, pos: int) -> tuple[int, int]:
    """Two Byte Integer, big-endian (MQTT 3.1.1 §1.5.2, MQTT 5.0 §1.5.2)."""
    if pos + 2 > len(buf):
        raise _truncated("two byte integer")
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def read_u32(buf: bytes, pos: int) -> tuple[int, int]:
    """Four Byte Integer, big-endian (MQTT 5.0 §1.5.3)."""
    if pos + 4 > len(buf):
        raise _truncated("four byte integer")
    return _U32.unpack_from(buf, pos)[0], pos + 4


def encode_u16(value: int) -> bytes:
    """Two Byte Integer; ``ValueError`` outside 0..65535."""
    if not 0 <= value <= U16_MAX:
        raise ValueError(f"{value} does not fit in a Two Byte Integer")
    return _U16.pack(value)


def encode_u32(value: int) -> bytes:
    """Four Byte Integer; ``ValueError`` outside 0..2**32-1."""
    if not 0 <= value <= 0xFFFF_FFFF:
        raise ValueError(f"{value} does not fit in a Four Byte Integer")
    return _U32.pack(value)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Variable Byte Integer (MQTT 3.1.1 §2.2.3, MQTT 5.0 §1.5.5).

    At most 4 bytes; a continuation bit on the 4th byte is malformed. An over-long
    encoding (a final byte of 0 after a continuation) is malformed [MQTT-1.5.5-1].
    """
    n = len(buf)
    if pos >= n:
        raise _truncated("variable byte integer")
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    shift = 7
    for i in range(1, 4):
        if pos + i >= n:
            raise _truncated("variable byte integer")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0:
                raise MalformedPacket(
                    "variable byte integer is not in its shortest form", spec_ref="MQTT-1.5.5-1"
                )
            return value, pos + i + 1
        shift += 7
    raise MalformedPacket("variable byte integer longer than 4 bytes", spec_ref="MQTT-1.5.5-1")


def encode_varint(value: int) -> bytes:
    """Variable Byte Integer in its shortest form [MQTT-1.5.5-1]."""
    if value < 0x80:
        if value < 0:
            raise ValueError(f"{value} is negative")
        return bytes((value,))
    if value > VARINT_MAX:
        raise ValueError(f"{value} does not fit in a Variable Byte Integer")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# --------------------------------------------------------------------------- strings


def validate_utf8(raw: bytes, v5: bool = False) -> str:
    """Decode and check a UTF-8 Encoded String's bytes (MQTT 3.1.1 §1.5.3, MQTT 5.0 §1.5.4).

    Python's strict UTF-8 codec rejects ill-formed sequences, over-long forms and
    encoded surrogates (U+D800..U+DFFF) [MQTT-1.5.3-1] / [MQTT-1.5.4-1]; U+0000 is
    rejected here [MQTT-1.5.3-2] / [MQTT-1.5.4-2]; a leading BOM is kept, never
    stripped [MQTT-1.5.3-3] / [MQTT-1.5.4-3]. The "SHOULD NOT" code points (controls,
    non-characters) are accepted.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket(
            "string is not well-formed UTF-8", spec_ref=_UTF8_ILL_FORMED[v5]
        ) from None
    if "\x00" in text:
        raise MalformedPacket("string contains U+0000", spec_ref=_UTF8_NUL[v5])
    return text


def read_utf8(buf: bytes, pos: int, v5: bool = False) -> tuple[str, int]:
    """UTF-8 Encoded String: two-byte length then validated UTF-8 (see :func:`validate_utf8`)."""
    if pos + 2 > len(buf):
        raise _truncated("string length")
    end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if end > len(buf):
        raise _truncated("string")
    return validate_utf8(buf[pos + 2 : end], v5), end


def read_binary(buf: bytes, pos: int) -> tuple[bytes, int]:
    """Binary Data: two-byte length then that many bytes (MQTT 5.0 §1.5.6)."""
    if pos + 2 > len(buf):
        raise _truncated("binary data length")
    end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if end > len(buf):
        raise _truncated("binary data")
    return bytes(buf[pos + 2 : end]), end


def read_string_pair(buf: bytes, pos: int, v5: bool = True) -> tuple[tuple[str, str], int]:
    """UTF-8 String Pair: name then value, both valid strings [MQTT-1.5.7-1]."""
    name, pos = read_utf8(buf, pos, v5)
    value, pos = read_utf8(buf, pos, v5)
    return (name, value), pos


def encode_utf8(text: str) -> bytes:
    """UTF-8 Encoded String with its two-byte length; ``ValueError`` when over 65535 bytes.

    Lone surrogates in ``text`` raise ``UnicodeEncodeError`` (a ``ValueError``).
    """
    raw = text.encode("utf-8")
    if len(raw) > U16_MAX:
        raise ValueError(f"string of {len(raw)} bytes is longer than 65535")
    return _U16.pack(len(raw)) + raw


def encode_binary(data: bytes) -> bytes:
    """Binary Data with its two-byte length; ``ValueError`` when over 65535 bytes."""
    if len(data) > U16_MAX:
        raise ValueError(f"binary data of {len(data)} bytes is longer than 65535")
    return _U16.pack(len(data)) + bytes(data)


def encode_string_pair(pair: tuple[str, str]) -> bytes:
    """UTF-8 String Pair (MQTT 5.0 §1.5.7)."""
    return encode_utf8(pair[0]) + encode_utf8(pair[1])
