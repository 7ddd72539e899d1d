"""The node's NATS socket path without copies (issue 14, i14-ratio8):
``natsread.ChunkReader`` (the receiving node's reader hands on the loop's reads as they
came) and ``natswrite.publish`` (the sending node's PUB as three pieces on nats-py's
pending list). Both must keep the byte stream exactly: the reader over a real loopback
socket (flow control included: a small limit pauses and resumes the transport), the
publish against nats-py's own framing. Real nodes route through both in
tests/cluster/test_natsread.py (``test_nodes_route_through_the_hook``)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from nats.protocol.command import pub_cmd

from iotbroker.cluster import natswrite
from iotbroker.cluster.natsread import BatchParser, ChunkReader, chunked


async def _serve_and_read(data: bytes, seed: int, limit: int) -> tuple[bytes, bool]:
    rng = random.Random(seed)

    async def serve(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        pos = 0
        while pos < len(data):
            n = rng.choice([1, 5, 100, 4096, 70_000])
            w.write(data[pos : pos + n])
            pos += n
            await w.drain()
        w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=limit)
    got = [await reader.readexactly(10)]  # the StreamReader's own way first
    await asyncio.sleep(0)
    assert chunked(reader) and type(reader) is ChunkReader
    while True:
        piece = await reader.read(rng.choice([-1, 1, 7, 1 << 20]))
        if not piece:
            break
        got.append(piece)
    writer.close()
    server.close()
    await server.wait_closed()
    return b"".join(got), reader.at_eof()


def test_chunk_reader_keeps_the_stream_over_a_real_socket() -> None:
    """Whatever the writes' and reads' sizes, the reads hand on the stream in order,
    whole, and end with EOF; the transport paused above 2 x limit is resumed (else
    this would stall)."""
    for seed in range(4):
        data = random.Random(seed).randbytes(600_000)
        got, eof = asyncio.run(asyncio.wait_for(_serve_and_read(data, seed, 4096), 60))
        assert got == data and eof


def test_chunk_reader_folds_back_for_readline() -> None:
    """readline (nats-py's handshake) after the swap: what was held comes first, and
    the reader stays a plain StreamReader for the rest."""
    async def run() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"ab")
        assert chunked(reader)
        reader.feed_data(b"c\nde")
        assert await reader.readline() == b"abc\n"
        reader.feed_data(b"f\n")
        reader.feed_eof()
        assert await reader.readline() == b"def\n"
        assert await reader.read(10) == b"" and reader.at_eof()
    asyncio.run(run())


def test_only_a_plain_stream_reader_is_swapped() -> None:
    class Own(asyncio.StreamReader):
        pass

    async def run() -> None:
        assert not chunked(object()) and not chunked(None) and not chunked(Own())
    asyncio.run(run())


class _Transport:
    def __init__(self, reader: object) -> None:
        self._io_reader = reader


class _Client:
    def __init__(self, reader: object) -> None:
        self._transport = _Transport(reader)
        self._subs: dict[int, Any] = {}
        self.stats = {"in_msgs": 0, "in_bytes": 0}


def test_parser_swaps_each_connection_reader_once() -> None:
    """BatchParser makes the connection's reader a ChunkReader at its first parse, and
    the new reader of a reconnect at the first parse after it."""
    async def run() -> None:
        nc = _Client(asyncio.StreamReader())
        p = BatchParser(nc, lambda d, s: None)
        await p.parse(b"PING")
        await p.parse(b"")
        assert p.chunked == 1 and type(nc._transport._io_reader) is ChunkReader
        nc._transport = _Transport(asyncio.StreamReader())
        await p.parse(b"")
        assert p.chunked == 2 and type(nc._transport._io_reader) is ChunkReader
    asyncio.run(run())


class _Queue:
    def empty(self) -> bool:
        return True


class _Pub:
    """What natswrite.publish touches of nats-py's client."""

    def __init__(self, connected: bool = True) -> None:
        self.is_connected = connected
        self.is_closed = False
        self.is_draining_pubs = False
        self._max_payload = 1 << 20
        self._pending: list[bytes] = []
        self._pending_data_size = 0
        self._max_pending_size = 2 << 20
        self._flush_queue = _Queue()
        self.stats = {"out_msgs": 0, "out_bytes": 0}
        self.calls: list[tuple[Any, ...]] = []

    async def _flush_pending(self, force_flush: bool = False) -> None:
        self.calls.append(("flush", force_flush))

    async def publish(self, subject: str, payload: bytes) -> None:
        self.calls.append(("publish", subject, payload))


def test_publish_writes_what_nats_py_frames() -> None:
    """The pending list holds exactly nats-py's own PUB command (same bytes), its
    counters and pending size as nats-py's, and the flusher is kicked."""
    assert natswrite.usable()
    payload = random.Random(1).randbytes(70_000) + b"\r\nPUB x 1\r\n"
    nc = _Pub()
    asyncio.run(natswrite.publish(nc, "iot.node.abc", payload))
    assert b"".join(nc._pending) == pub_cmd("iot.node.abc", "", payload)
    assert nc._pending_data_size == len(pub_cmd("iot.node.abc", "", payload))
    assert nc.stats == {"out_msgs": 1, "out_bytes": len(payload)}
    assert nc.calls == [("flush", False)]


def test_publish_leaves_the_rest_to_nats_py() -> None:
    """Not connected (nats-py buffers or refuses), or a payload over max_payload
    (nats-py raises): Client.publish itself."""
    nc = _Pub(connected=False)
    asyncio.run(natswrite.publish(nc, "s", b"x"))
    big = _Pub()
    big._max_payload = 1
    asyncio.run(natswrite.publish(big, "s", b"xy"))
    assert nc.calls == [("publish", "s", b"x")] and big.calls == [("publish", "s", b"xy")]
    assert nc._pending == [] and big._pending == []
