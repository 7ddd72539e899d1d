"""The measurement header and payload builders.

Every simulated PUBLISH payload starts with a 24-byte header (big-endian)::

    magic  2   b"\\xa5T" telemetry, b"\\xa5W" will
    run    u32 the run's id: messages of other runs (retained, other tests) are foreign
    source u32 who published it (a device, or one child of a gateway)
    qos    u8  the QoS it was published with
    flags  u8  reserved (0)
    seq    u32 1, 2, 3, ... per (source, QoS) stream
    ts     u64 time.monotonic_ns() at send (one clock for every process of the machine)

JSON payloads carry the same 24 bytes as 48 hex digits in their first member,
``{"_sim":"a554...", ...}``, so they stay valid JSON.
"""

from __future__ import annotations

import json
import random
import struct
import time

from iotsim.scenario import HEADER_SIZE, FieldSpec, PayloadSpec

MAGIC_TELEMETRY = b"\xa5T"
MAGIC_WILL = b"\xa5W"
HEADER = struct.Struct(">2sIIBBIQ")
assert HEADER.size == HEADER_SIZE
_JSON_PREFIX = b'{"_sim":"'
_JSON_HEX = 2 * HEADER_SIZE


def stream_key(source: int, qos: int) -> int:
    """One accounting stream per (source, QoS): ordering is per QoS (MQTT 5.0 §4.6)."""
    return (source << 2) | qos


def parse_header(payload: bytes) -> tuple[bytes, int, int, int, int, int] | None:
    """``(magic, run, source, qos, seq, ts_ns)`` of a simulated payload, else ``None``."""
    if payload[:1] == b"\xa5" and len(payload) >= HEADER_SIZE:
        magic, run, source, qos, _flags, seq, ts = HEADER.unpack_from(payload)
        return magic, run, source, qos, seq, ts
    if payload.startswith(_JSON_PREFIX) and len(payload) >= len(_JSON_PREFIX) + _JSON_HEX:
        try:
            raw = bytes.fromhex(payload[9 : 9 + _JSON_HEX].decode("ascii"))
        except ValueError:
            return None
        magic, run, source, qos, _flags, seq, ts = HEADER.unpack(raw)
        return magic, run, source, qos, seq, ts
    return None


class PayloadBuilder:
    """Builds the payloads of one group: header + body per its :class:`PayloadSpec`."""

    __slots__ = ("_counter", "_fields", "_kind", "_pad", "_pool", "_rng", "_size")

    def __init__(self, spec: PayloadSpec, rng: random.Random) -> None:
        self._kind = spec.kind
        self._size = spec.size
        self._rng = rng
        self._fields: tuple[FieldSpec, ...] = spec.fields
        self._pad = bytes(max(0, spec.size - HEADER_SIZE))
        pool_size = max(4096, 4 * spec.size)
        self._pool = rng.randbytes(pool_size) if spec.kind == "random" else b""
        self._counter = 0

    def build(self, run: int, source: int, qos: int, seq: int) -> bytes:
        """A payload stamped now."""
        header = HEADER.pack(MAGIC_TELEMETRY, run, source, qos, 0, seq, time.monotonic_ns())
        kind = self._kind
        if kind == "fixed":
            return header + self._pad
        if kind == "random":
            n = len(self._pad)
            start = self._rng.randrange(0, len(self._pool) - n + 1)
            return header + self._pool[start : start + n]
        return self._json(header)

    def _json(self, header: bytes) -> bytes:
        self._counter += 1
        doc: dict[str, object] = {"_sim": header.hex()}
        rng = self._rng
        for f in self._fields:
            if f.kind == "random":
                if f.integer:
                    doc[f.name] = rng.randint(int(f.low), int(f.high))
                else:
                    doc[f.name] = round(rng.uniform(f.low, f.high), f.decimals)
            elif f.kind == "choice":
                doc[f.name] = rng.choice(f.choices)
            elif f.kind == "counter":
                doc[f.name] = self._counter
            elif f.kind == "timestamp":
                doc[f.name] = round(time.time(), 3)
            else:
                doc[f.name] = f.value
        return json.dumps(doc, separators=(",", ":")).encode()


def will_payload(run: int, source: int, qos: int, text: str) -> bytes:
    """A will payload: the header (magic ``W``, seq 0) then the configured text."""
    return HEADER.pack(MAGIC_WILL, run, source, qos, 0, 0, 0) + text.encode()
