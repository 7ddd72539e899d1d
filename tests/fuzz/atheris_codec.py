#!/usr/bin/env python
"""Coverage-guided fuzzing of the codec and the sans-I/O connection with atheris.

Run by hand, for as long as you like (see ``tests/fuzz/README.md``)::

    python tests/fuzz/make_corpus.py                      # (re)writes tests/fuzz/corpus/
    python tests/fuzz/atheris_codec.py -atheris_runs=100000 tests/fuzz/corpus/

Input layout (so that corpus seeds are readable packets):

* byte 0, the control byte: bit 0 = protocol level (0: 3.1.1, 1: 5.0); bit 1 = feed a
  :class:`Connection` that has accepted a valid CONNECT (1) or a fresh one (0); bits 2..7
  = chunk size for cutting the stream (0 = in one piece);
* bytes 1..: the byte stream a client sends.

The stream goes to ``Framer`` + ``decode_packet`` (max packet size 1024) and to the
connection. Allowed outcomes: packets, or an ``MqttError`` whose reason code is an error
code of the MQTT 5.0 table (raised by the codec; returned as ``conn.failure`` by the
connection, which then reads nothing more); the framer never holds back more than its maximum packet
size. Anything else raises, and atheris reports the input as a crash.

:func:`TestOneInput` needs no atheris; ``tests/fuzz/test_atheris_smoke.py`` replays the
corpus through it in the normal test run.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    import atheris  # type: ignore[import-untyped]
except ImportError:  # the replay in the normal test run works without it
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["iotbroker"]):
        from iotbroker.codec import Framer, decode_packet, encode_packet
        from iotbroker.codec.enums import ReasonCode
        from iotbroker.codec.packets import Connect
        from iotbroker.errors import MqttError
        from iotbroker.protocol.connection import Connection
else:
    from iotbroker.codec import Framer, decode_packet, encode_packet
    from iotbroker.codec.enums import ReasonCode
    from iotbroker.codec.packets import Connect
    from iotbroker.errors import MqttError
    from iotbroker.protocol.connection import Connection

MAX_PACKET_SIZE = 1024
ERROR_CODES = frozenset(int(code) for code in ReasonCode if code >= 0x80)
CONNECT = {v: encode_packet(Connect(client_id="fuzz", protocol_version=v), v) for v in (4, 5)}


class UnexpectedOutcome(AssertionError):
    """The code under test broke its contract (atheris reports it as a crash)."""


def _check_error(exc: MqttError) -> None:
    if exc.reason_code not in ERROR_CODES:
        raise UnexpectedOutcome(
            f"{type(exc).__name__} with reason code 0x{exc.reason_code:02x}: {exc}"
        ) from exc


def _pieces(stream: bytes, size: int) -> list[bytes]:
    if size == 0 or not stream:
        return [stream]
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def _codec(pieces: list[bytes], version: int) -> None:
    framer = Framer(MAX_PACKET_SIZE)
    try:
        for piece in pieces:
            frames = framer.feed(piece)
            if framer.buffered > MAX_PACKET_SIZE:
                raise UnexpectedOutcome(f"framer holds {framer.buffered} bytes")
            for first, body in frames:
                decode_packet(first, body, version)
    except MqttError as exc:
        _check_error(exc)


def _connection(pieces: list[bytes], version: int, accepted: bool) -> None:
    conn = Connection(
        max_packet_size=MAX_PACKET_SIZE, receive_maximum=4, topic_alias_maximum=3, now=0.0
    )
    if accepted:
        conn.receive_data(CONNECT[version], 0.0)
        conn.accept(
            keepalive=60,
            client_receive_maximum=None,
            client_max_packet_size=None,
            client_topic_alias_maximum=None,
            outbound_aliases=False,
            request_problem_information=True,
        )
    for piece in pieces:  # receive_data never raises: a violation is conn.failure
        failed_before = conn.failure
        got = conn.receive_data(piece, 1.0)
        if not isinstance(got, list):
            raise UnexpectedOutcome(f"receive_data returned {got!r}")
        if failed_before is not None and (got or conn.failure is not failed_before):
            raise UnexpectedOutcome("the connection read on after its failure")
        if conn.buffered > MAX_PACKET_SIZE:
            raise UnexpectedOutcome(f"connection framer holds {conn.buffered}")
    if conn.failure is not None:
        _check_error(conn.failure)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    control, stream = data[0], bytes(data[1:])
    version = 5 if control & 1 else 4
    accepted = bool(control & 2)
    pieces = _pieces(stream, control >> 2)
    _codec(pieces, version)
    _connection(pieces, version, accepted)


def main() -> None:
    if atheris is None:
        sys.exit(
            "atheris is not installed: `pip install atheris` (needs a wheel for this Python "
            "or clang/libFuzzer to build)"
        )
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
