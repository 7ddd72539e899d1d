"""What the engine knows of one network connection: its MQTT state, as data.

A :class:`Client` is the engine's handle on a connection. It holds the protocol state
machine (:class:`~iotbroker.protocol.connection.Connection`, pull-based: bytes in,
packets out, bytes to send pulled by the server) and what MQTT says about the
connection beyond it: the session it is attached to, the identity it authenticated
as, its Will Message and how it ended. The engine writes packets into ``conn`` and
records what the server must do as data on the client (``close_requested``); it never
calls the server.

``server/transport.py``'s ``ClientProtocol`` is a ``Client`` (the asyncio side adds
the socket, timers and backpressure), so a connection is one object, as before the
engine existed (memory per idle connection is a tracked figure, issue 19). Tests and
other rooms (a gateway, an admin action) can drive the engine with a plain ``Client``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast

from mypy_extensions import mypyc_attr

from iotbroker.codec.packets import Will
from iotbroker.protocol.connection import Connection

if TYPE_CHECKING:
    from iotbroker.core.session import Session


@mypyc_attr(allow_interpreted_subclasses=True)  # server, bridge and MQTT-SN subclass it
class Client:
    """One network connection as the engine sees it."""

    __slots__ = (
        "cert_subject",
        "cert_username",
        "clean_disconnect",
        "client_id",
        "close_requested",
        "conn",
        "conn_id",
        "connected_at",
        "listener",
        "published_this_turn",
        "session",
        "session_ended_by_takeover",
        "taken_over",
        "will",
    )

    def __init__(self, conn: Connection, listener: str = "") -> None:
        self.conn = conn
        #: Number of the connection in logs (the server numbers them).
        self.conn_id = 0
        #: Name of the listener it came in on (for limits and logs).
        self.listener = listener
        #: The session it is attached to, once the CONNECT is accepted.
        self.session: Session | None = None
        self.client_id = ""
        #: TLS ``use_identity_as_username``: the client certificate's subject CN.
        self.cert_username: str | None = None
        #: The TLS client certificate's subject, for logs (None without one).
        self.cert_subject: str | None = None
        #: The Will Message of its accepted CONNECT (MQTT 3.1.1 §3.1.2.5).
        self.will: Will | None = None
        #: A DISCONNECT (or our own shutdown) ended it: no will [MQTT-3.14.4-3].
        self.clean_disconnect = False
        #: Another connection took its client id over [MQTT-3.1.4-2].
        self.taken_over = False
        #: ...with Clean Start, which ended the session (a delayed will goes at once).
        self.session_ended_by_takeover = False
        #: The engine decided to close it: the server closes after this turn's writes.
        self.close_requested = False
        #: When its CONNECT was accepted (wall clock; 0.0 before).
        self.connected_at = 0.0
        #: It published this turn (the server throttles publishers of a slow consumer).
        self.published_this_turn = False

    @property
    def peer(self) -> str:
        """The remote address for logs (the server knows it; "?" without a socket)."""
        return "?"

    def log_extra(self) -> dict[str, object]:
        """Structured fields for log records about this connection."""
        return {}

    def close(self) -> None:
        """The server's effect of :meth:`request_close`: the server side of each kind of
        connection (a socket, an MQTT-SN client) closes it after this turn's writes."""

    def request_close(self) -> None:
        """Stop reading it, and have the server close it after this turn's writes."""
        self.conn.close()
        self.close_requested = True

    def write_turn_output(self) -> None:
        """The server's flush, for this connection: write what ``conn`` queued this
        turn, then close if it must (:class:`Writable`'s ``write_pending`` and
        ``finish_close``). A method of the compiled class, so that the flush calls it
        natively (issue 19); ``server/transport.py`` ``ClientProtocol`` overrides it
        with its own fields; the other clients (MQTT-SN, bridge) go through the
        protocol here."""
        writable = cast(Writable, self)
        writable.write_pending()
        if writable.close_after_flush:
            writable.finish_close()


class Writable(Protocol):
    """A connection the server writes at the end of a loop turn: what the broker's flush
    (``server/broker.py``) uses of each entry of its ready-to-write list. A socket
    connection (``server/transport.py`` ``ClientProtocol``) and an MQTT-SN client
    (``mqttsn/gateway.py`` ``SnClient``) both are one, and each is a :class:`Client`
    (the flush calls :meth:`Client.write_turn_output`); their
    :class:`~iotbroker.protocol.connection.Connection` puts them in the list when it
    gets bytes to send, and :meth:`Client.close` when it must close."""

    @property
    def conn(self) -> Connection:
        """Its protocol state: the bytes queued this turn (``data_to_send``)."""

    @property
    def close_after_flush(self) -> bool:
        """It must close once this turn's bytes are written (then :meth:`finish_close`)."""

    def write_pending(self) -> None:
        """Send what ``conn`` queued this turn (after the turn's storage commit)."""

    def finish_close(self) -> None:
        """The last bytes are written: close (a socket lingers; a datagram client
        has nothing to do)."""

    def abort(self) -> None:
        """Close at once, unwritten bytes dropped (the storage commit failed)."""
