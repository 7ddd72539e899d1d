"""The receiving node's read path: a hook into nats-py's protocol parser (issue 14).

nats-py (2.16.0) hands a received ``MSG`` to a subscription with callback through
four copies of its payload and a round of Python per message: its parser appends each
socket read to a bytearray (``extend``), cuts the payload out of it as a bytearray
slice and copies that into ``bytes``; ``Client._process_msg`` then builds a ``Msg``,
puts it on the subscription's ``asyncio.Queue``, and the subscription's own task gets
it and awaits the callback. A node's batches (``ClusterNode._on_batch``) are 50-100
KB each, one NATS message for ~700-1,500 MQTT messages.

:class:`BatchParser` replaces the client's parser (``Client._ps``, made once per
client, :meth:`~nats.protocol.parser.Parser.reset` at each reconnect) before it
connects. It parses the same protocol with the same regular expressions, but

* works on the read's ``bytes`` in place (one slice is the payload: one copy, not
  three); a message split across reads is completed by joining the two pieces (one
  copy); only a partial control line or a message with headers goes through its
  bytearray as before;
* hands a plain ``MSG`` (no headers) for the subscription ``sid`` straight to
  ``deliver(payload, subject)`` (a plain function, called in the read task, in the
  order received): no ``Msg``, no queue, no task switch. Every other message
  (JetStream's ``HMSG``, other subscriptions, requests) goes to
  ``Client._process_msg`` as before; ``+OK``, ``-ERR``, ``PING``, ``PONG`` and
  ``INFO`` lines, one at a time, to nats-py's own :meth:`Parser.parse`.

It also takes the copies out of the socket's side (i14-ratio8): nats-py reads its
socket through an :class:`asyncio.StreamReader`, which appends each read to a
bytearray (``feed_data``: ``extend``) and hands it on as ``bytes(buffer[:n])`` (a
bytearray slice, then ``bytes`` of it): three copies of every batch before the parser
sees it. The first time :meth:`BatchParser.parse` runs on a connection (after its
handshake; again after each reconnect, which makes a new reader), it turns that
connection's plain ``StreamReader`` into a :class:`ChunkReader`, which keeps the
loop's reads as they came (``bytes``, in a deque) and hands each one on as it is:
no copy. Its pause/resume of the transport and end of stream are the
``StreamReader``'s; ``readline``/``readuntil``/``readexactly`` (nats-py uses them in
the connect handshake only, which is over by then) first fold it back into the
``StreamReader``'s buffer for good.

Everything else of nats-py is its own: connect, TLS, credentials, reconnect (the
subscription is sent again with the same sid), ping, flush, close. :func:`install`
puts the parser in only for nats-py versions it was tested with
(:data:`TESTED_VERSIONS`, tests/cluster/test_natsread.py) and when the parser module
looks as expected; otherwise the node subscribes with a callback as before (the
public path), and says so once in the log.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from nats.aio import client as nats_client
from nats.errors import ProtocolError
from nats.protocol import parser as nats_parser

log = logging.getLogger("iotbroker.cluster")

#: nats-py versions whose parser this one mirrors (tests/cluster/test_natsread.py).
TESTED_VERSIONS = frozenset({"2.16.0"})

_AWAITING_CONTROL_LINE: int = getattr(nats_parser, "AWAITING_CONTROL_LINE", 1)
_AWAITING_MSG_PAYLOAD: int = getattr(nats_parser, "AWAITING_MSG_PAYLOAD", 2)
_CRLF = b"\r\n"


def _unanchored(name: str) -> re.Pattern[bytes] | None:
    """nats-py's regular expression ``name`` without its leading ``\\A`` (which never
    matches past the start of the string: ``pattern.match(data, pos)`` anchors at
    ``pos`` by itself)."""
    pattern = getattr(nats_parser, name, None)
    if not isinstance(pattern, re.Pattern) or not isinstance(pattern.pattern, bytes):
        return None
    if not pattern.pattern.startswith(b"\\A"):
        return None
    return re.compile(pattern.pattern[2:])


_MSG_RE = _unanchored("MSG_RE")
_HMSG_RE = _unanchored("HMSG_RE")


def usable() -> bool:
    """The parser can stand in for nats-py's (tested version, expected module)."""
    return (getattr(nats_client, "__version__", "") in TESTED_VERSIONS
            and _MSG_RE is not None and _HMSG_RE is not None
            and hasattr(nats_parser, "Parser")
            and hasattr(nats_parser.Parser, "reset"))


class ChunkReader(asyncio.StreamReader):
    """An :class:`asyncio.StreamReader` whose ``read`` hands on the transport's reads
    as they came (module docstring). Made by :func:`chunked` from a plain one (its
    class is swapped: the protocol and nats-py keep their references)."""

    _chunks: deque[bytes]
    _size: int
    _chunked: bool
    # the StreamReader's own (private; set by its __init__)
    _eof: bool
    _paused: bool
    _limit: int
    _transport: Any
    _exception: BaseException | None
    _buffer: bytearray

    def feed_data(self, data: Any) -> None:
        if not self._chunked:
            super().feed_data(data)
            return
        assert not self._eof, "feed_data after feed_eof"
        if not data:
            return
        self._chunks.append(data if type(data) is bytes else bytes(data))
        self._size += len(data)
        self._wakeup_waiter()  # type: ignore[attr-defined]
        transport = self._transport
        if (transport is not None and not self._paused
                and self._size > 2 * self._limit):
            try:
                transport.pause_reading()
            except NotImplementedError:
                self._transport = None
            else:
                self._paused = True

    def _maybe_resume_transport(self) -> None:
        if not self._chunked:
            super()._maybe_resume_transport()  # type: ignore[misc]
        elif self._paused and self._size <= self._limit:
            self._paused = False
            self._transport.resume_reading()

    def at_eof(self) -> bool:
        if not self._chunked:
            return super().at_eof()
        return bool(self._eof) and not self._size

    async def read(self, n: int = -1) -> bytes:
        if not self._chunked:
            return await super().read(n)
        if self._exception is not None:
            raise self._exception
        if n == 0:
            return b""
        if not self._size and not self._eof:
            await self._wait_for_data("read")  # type: ignore[attr-defined]
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks.popleft()
        if 0 < n < len(data):
            chunks.appendleft(data[n:])
            data = data[:n]
        self._size -= len(data)
        self._maybe_resume_transport()
        return data

    def _unchunk(self) -> None:
        """Back to the ``StreamReader``'s own buffer, for good."""
        if self._chunked:
            self._chunked = False
            self._buffer.extend(b"".join(self._chunks))
            self._chunks.clear()
            self._size = 0

    async def readline(self) -> bytes:
        self._unchunk()
        return await super().readline()

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        self._unchunk()
        return await super().readuntil(separator)

    async def readexactly(self, n: int) -> bytes:
        self._unchunk()
        return await super().readexactly(n)


def chunked(reader: object) -> bool:
    """Turn a plain :class:`asyncio.StreamReader` into a :class:`ChunkReader` (what it
    holds already is kept, in order); False (and nothing done) for anything else."""
    if type(reader) is not asyncio.StreamReader or not hasattr(reader, "_buffer"):
        return False
    held = bytes(reader._buffer)
    reader._buffer.clear()
    reader.__class__ = ChunkReader
    assert isinstance(reader, ChunkReader)
    reader._chunks = deque([held] if held else [])
    reader._size = len(held)
    reader._chunked = True
    return True


class BatchParser(nats_parser.Parser):
    """nats-py's :class:`~nats.protocol.parser.Parser` with a direct path for one
    subscription's plain ``MSG``\\ s (module docstring)."""

    def __init__(self, nc: Any, deliver: Callable[[bytes, bytes], None]) -> None:
        super().__init__(nc)
        #: the subscription whose messages go to ``deliver`` (0: none yet)
        self.sid = 0
        self.deliver = deliver
        #: messages that went to ``deliver`` (tests; docs/cluster.md)
        self.delivered = 0
        #: the connection's reader made a ChunkReader (or found not to be one to make)
        self._reader: object = None
        #: readers made ChunkReaders (tests)
        self.chunked = 0

    async def parse(self, data: bytes = b"") -> None:
        reader = getattr(getattr(self.nc, "_transport", None), "_io_reader", None)
        if reader is not self._reader:  # a new connection: its reader, once
            self._reader = reader
            if chunked(reader):
                self.chunked += 1
        buf: bytearray = self.buf
        state = self.state
        pos = 0
        src: bytes | bytearray = data
        if buf:
            if (state == _AWAITING_MSG_PAYLOAD and not self.header_needed
                    and len(buf) < self.needed):
                # a payload split across reads: joined, the rest read in place
                total = self.needed + 2
                if len(buf) + len(data) < total:
                    buf.extend(data)
                    return
                rest = self.needed - len(buf)
                with memoryview(data) as view:
                    payload = b"".join((buf, view[:rest]))
                del buf[:]
                pos = rest + 2
                self.state = _AWAITING_CONTROL_LINE
                if not await self._message(payload, buf):
                    return
            else:
                buf.extend(data)
                src = buf
        if not await self._parse(src, pos, buf):
            return

    async def _message(self, payload: bytes, buf: bytearray) -> bool:
        """Hand one complete payload (``self.msg_arg``, no headers) on; False when
        the client reset the parser meanwhile (a reconnect: the rest is dropped, as
        nats-py's own parser does)."""
        arg = self.msg_arg
        sid = arg["sid"]
        nc = self.nc
        sub = nc._subs.get(sid) if sid == self.sid else None
        # (one the subscription's queue still holds goes first: its callback)
        if sub is not None and not arg["reply"] and sub._pending_queue.empty():
            stats = nc.stats
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(payload)
            self.delivered += 1
            try:
                self.deliver(payload, arg["subject"])
            except Exception as exc:  # as nats-py does with its callbacks' errors
                await nc._error_cb(exc)
        else:
            await nc._process_msg(sid, arg["subject"], arg["reply"], payload, None)
        return self.buf is buf

    async def _parse(self, src: bytes | bytearray, pos: int, buf: bytearray) -> bool:
        """Parse ``src`` from ``pos``; what is left incomplete stays in ``buf``
        (``self.buf``). False when the client reset the parser meanwhile."""
        end = len(src)
        msg_re = _MSG_RE
        assert msg_re is not None and _HMSG_RE is not None
        in_place = src is not buf
        while pos < end:
            if self.state == _AWAITING_MSG_PAYLOAD:
                needed = self.needed
                if end - pos < needed + 2:
                    break
                header = self.header_needed
                if header:
                    # (JetStream): headers and payload, to the client as before
                    with memoryview(src) as view:
                        hdr = view[pos : pos + header].tobytes()
                        payload = view[pos + header : pos + needed].tobytes()
                    self.header_needed = 0
                    self.state = _AWAITING_CONTROL_LINE
                    pos += needed + 2
                    arg = self.msg_arg
                    if in_place:
                        await self.nc._process_msg(arg["sid"], arg["subject"],
                                                   arg["reply"], payload, hdr)
                        if self.buf is not buf:
                            return False
                        continue
                    del buf[:pos]
                    end -= pos
                    pos = 0
                    await self.nc._process_msg(arg["sid"], arg["subject"], arg["reply"],
                                               payload, hdr)
                    if self.buf is not buf:
                        return False
                    continue
                if in_place:
                    payload = src[pos : pos + needed]  # type: ignore[assignment]
                else:
                    with memoryview(src) as view:
                        payload = view[pos : pos + needed].tobytes()
                pos += needed + 2
                self.state = _AWAITING_CONTROL_LINE
                if not in_place:  # (deliver may not touch buf; the client's reset may)
                    del buf[:pos]
                    end -= pos
                    pos = 0
                if not await self._message(payload, buf):
                    return False
                continue
            m = msg_re.match(src, pos)
            if m is not None:
                try:
                    subject, sid, _, reply, needed_bytes = m.groups()
                    self.msg_arg["subject"] = subject
                    self.msg_arg["sid"] = int(sid)
                    self.msg_arg["reply"] = reply or b""
                    self.needed = int(needed_bytes)
                except Exception:
                    raise ProtocolError("nats: malformed MSG") from None
                self.header_needed = 0
                pos = m.end()
                self.state = _AWAITING_MSG_PAYLOAD
                continue
            m = _HMSG_RE.match(src, pos)
            if m is not None:
                try:
                    subject, sid, _, reply, header_size, needed_bytes = m.groups()
                    self.msg_arg["subject"] = subject
                    self.msg_arg["sid"] = int(sid)
                    self.msg_arg["reply"] = reply or b""
                    self.needed = int(needed_bytes)
                    self.header_needed = int(header_size)
                except Exception:
                    raise ProtocolError("nats: malformed MSG") from None
                pos = m.end()
                self.state = _AWAITING_MSG_PAYLOAD
                continue
            line_end = src.find(_CRLF, pos)
            if line_end < 0:
                break  # a control line not read whole yet
            # +OK, -ERR, PING, PONG, INFO (or what nats-py calls unknown): one line,
            # by nats-py's own parser
            line = bytearray(src[pos : line_end + 2])
            pos = line_end + 2
            if not in_place:
                del buf[:pos]
                end -= pos
                pos = 0
            self.buf = line
            try:
                await super().parse()
            finally:
                reset = self.buf is not line
                if not reset:
                    self.buf = buf
            if reset:
                return False
        # what is left: a partial control line or payload
        if in_place:
            if pos < end:
                with memoryview(src) as view:
                    buf.extend(view[pos:])
        elif pos:
            del buf[:pos]
        return True
