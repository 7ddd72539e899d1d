"""Ending a connection so that its last packet reaches the client.

When the server ends a connection with a CONNACK or DISCONNECT that carries a reason
code (MQTT 5.0 §4.13, §3.14.4 [MQTT-3.14.4-1]; MQTT 3.1.1 §3.2.2.3, §4.8) while the
client is still sending, closing the socket with unread input makes the kernel send a
TCP reset; a reset discards what the client had not yet read, so it sees "connection
reset by peer" instead of the reason code. A :class:`Linger` does what RFC 7230
§6.6 ("lingering close") describes instead:

1. shut down the write side once the output is flushed (a FIN after the last packet;
   transports that cannot half-close, TLS, simply keep the socket open);
2. read and discard input until the client's EOF, for at most :data:`LINGER_SECONDS`
   and :data:`LINGER_MAX_BYTES`;
3. close (abort if our output is still not flushed by then: the client does not read).

The caller stops interpreting input (MQTT 3.1.1 §4.8, MQTT 5.0 [MQTT-4.13.1-1]): the
bytes are only counted here.
"""

from __future__ import annotations

import asyncio

#: How long a closed connection keeps reading (and discarding) the client's input.
LINGER_SECONDS = 2.0
#: How much input a closed connection discards before it gives up and closes.
LINGER_MAX_BYTES = 1 << 20


class Linger:
    """The lingering close of one transport (see the module docstring)."""

    __slots__ = ("_left", "_timer", "_transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        seconds: float = LINGER_SECONDS,
        max_bytes: int = LINGER_MAX_BYTES,
    ) -> None:
        self._transport = transport
        self._left = max_bytes
        self._timer: asyncio.TimerHandle | None = None
        if transport.can_write_eof():
            try:
                transport.write_eof()  # after the buffered output: the client reads EOF
            except OSError:  # the peer reset the connection already (ENOTCONN)
                transport.abort()
                return
        if not transport.is_reading():
            transport.resume_reading()  # unread input is what turns a close into a reset
        self._timer = loop.call_later(seconds, self.end)

    def discard(self, size: int) -> None:
        """``size`` bytes arrived and were dropped; past the byte bound, close."""
        self._left -= size
        if self._left < 0:
            self.end()

    def end(self) -> None:
        """Close now (the linger is over, or its bound was reached)."""
        self.cancel()
        transport = self._transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size():
            transport.abort()  # the client does not read what we sent: do not wait
        else:
            transport.close()

    def cancel(self) -> None:
        """The connection is gone (EOF or lost): stop the timer."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
