"""A lean MQTT 3.1.1 / 5.0 client for simulated devices, built on :mod:`iotbroker.codec`.

One :class:`Client` is one simulated device's *session*: its in-flight QoS 1/2
messages and inbound QoS 2 packet ids outlive a connection when the session is
persistent (Clean Session 0, or MQTT 5 Session Expiry > 0), and are re-sent with DUP
after a reconnect that finds the session present (MQTT 3.1.1 §4.4, MQTT 5.0 §4.4).
Each TCP (or TLS) connection is a tiny :class:`Link` protocol object, so late callbacks
of a closed connection can never be taken for the current one.

Cheap on purpose: no task per client (the caller's lifecycle coroutine awaits
``connect`` and ``wait_closed``), one ``loop.call_later`` keepalive timer per
connection, inbound acks and PUBLISH parsed inline (the codec's ``Framer`` cuts the
stream; ``decode_packet`` handles the rarer packets), and the packets answered in one
chunk are written with a single ``transport.write``.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from iotbroker.codec import Framer, decode_packet, decode_properties, encode_packet, encode_publish
from iotbroker.codec.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Properties,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Will,
)
from iotsim.stats import Stats

#: ``on_message(topic, payload, qos, properties)``; properties only when ``want_properties``.
MessageHandler = Callable[[bytes, bytes, int, Properties | None], None]

_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to connect: broker address, TLS, timeouts, source addresses."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    connect_timeout: float = 10.0
    source_addresses: tuple[str, ...] = ()
    #: UDP port of the broker's MQTT-SN gateway (``protocol: mqtt-sn`` groups).
    mqttsn_port: int = 1884


class _Inflight:
    """One outgoing QoS 1/2 message: state 1 = PUBLISH sent, 2 = PUBREL sent (QoS 2)."""

    __slots__ = ("key", "packet", "qos", "sent_ns", "seq", "state")

    def __init__(self, qos: int, packet: bytes, key: int, seq: int, sent_ns: int) -> None:
        self.qos = qos
        self.packet = packet
        self.key = key
        self.seq = seq
        self.sent_ns = sent_ns
        self.state = 1


class Link(asyncio.Protocol):
    """One network connection of a :class:`Client` (forwards every callback)."""

    __slots__ = ("client", "transport")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.client._made(self)

    def data_received(self, data: bytes) -> None:
        self.client._data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(self, exc)

    def pause_writing(self) -> None:
        if self.client.link is self:
            self.client.write_paused = True

    def resume_writing(self) -> None:
        if self.client.link is self:
            self.client.write_paused = False


class Client:
    """One simulated MQTT client (a device, gateway, actuator, dashboard or monitor)."""

    def __init__(
        self,
        target: Target,
        stats: Stats,
        client_id: str,
        version: int = 4,
        keepalive: int = 60,
        clean_start: bool = True,
        session_expiry: int = 0,
        will: Will | None = None,
        will_source: int | None = None,
        username: str | None = None,
        password: bytes | None = None,
        max_inflight: int = 20,
        source_address: str | None = None,
    ) -> None:
        self.target = target
        self.stats = stats
        self.client_id = client_id
        self.version = version
        self.v5 = version == 5
        self.keepalive = keepalive
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.will = will
        self.will_source = will_source
        self.username = username
        self.password = password
        self.max_inflight = max_inflight
        self.source_address = source_address
        self.persistent = (not clean_start) if version == 4 else session_expiry > 0
        self.props_bytes: bytes | None = b"\x00" if self.v5 else None
        self.on_message: MessageHandler | None = None
        self.counted = True  # in the connected-devices gauge (monitors are not)
        self.want_properties = False
        # connection state
        self.link: Link | None = None
        self.connected = False
        self.write_paused = False
        self.reading_paused = False
        self.session_present = False
        self.window = max_inflight
        self._framer = Framer()
        self._connack: asyncio.Future[ConnAck] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._clean_close = False
        self._ours = False
        #: An accounting subscriber's connection (its unprovoked losses are recorded).
        self.accounting = False
        self._out: list[bytes] = []
        self._in_data = False
        self._last_write = 0.0
        self._ping_sent = 0.0
        self._ka_timer: asyncio.TimerHandle | None = None
        self._keepalive_s = keepalive
        #: time.monotonic() when the connection was made (CONNECT written) and when the
        #: CONNACK was read: the connect latency's phases (Stats.connect_phases)
        self._made_at = 0.0
        self._connack_at = 0.0
        # session state
        self.inflight: dict[int, _Inflight] = {}
        self.inbound_qos2: set[int] = set()
        self._pending: dict[int, asyncio.Future[SubAck | UnsubAck]] = {}
        self._next_pid = 0
        self.suback_ns = 0  # time.monotonic_ns() when the last SUBACK was read

    # -------------------------------------------------------------- connect / close

    async def connect(self) -> bool:
        """Open a connection and complete CONNECT/CONNACK; False (and counted) on failure."""
        loop = asyncio.get_running_loop()
        stats = self.stats
        stats.count("connect_attempts")
        started = time.monotonic()
        link = Link(self)
        self.link = link
        self._made_at = self._connack_at = 0.0
        self._framer = Framer()
        self._connack = loop.create_future()
        self._closed = loop.create_future()
        self._clean_close = False
        self._ours = False
        t = self.target
        try:
            async with asyncio.timeout(t.connect_timeout):
                await loop.create_connection(
                    lambda: link, t.host, t.port, ssl=t.ssl_context,
                    server_hostname=(t.server_hostname or t.host) if t.ssl_context else None,
                    local_addr=(self.source_address, 0) if self.source_address else None,
                )
                connack = await self._connack
        except TimeoutError:
            return self._connect_failed(link, "connect_timeout")
        except ssl.SSLCertVerificationError as exc:
            return self._connect_failed(link, "connect_tls_certificate_verify_failed",
                                        exc.verify_message or str(exc))
        except ssl.SSLError as exc:
            return self._connect_failed(link, f"connect_tls_{exc.reason or 'error'}".lower(),
                                        str(exc))
        except ConnectionError as exc:
            if t.ssl_context is not None and link.transport is None:
                return self._connect_failed(link, "connect_tls_closed_during_handshake",
                                            str(exc))
            if exc.errno is None:  # ours: the connection closed before CONNACK
                return self._connect_failed(link, "connect_closed_before_connack", str(exc))
            name = errno.errorcode.get(exc.errno, "oserror").lower()
            return self._connect_failed(link, f"connect_{name}", exc.strerror or str(exc))
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "oserror").lower()
            return self._connect_failed(link, f"connect_{name}", exc.strerror or str(exc))
        if connack.reason_code != 0:
            return self._connect_failed(link, f"connack_refused_0x{connack.reason_code:02x}")
        resumed = time.monotonic()
        stats.connect_latency.record(int((resumed - started) * 1e6))
        if self._made_at and self._connack_at:
            stats.connect_phases.record(started, self._made_at, self._connack_at, resumed)
        stats.count("connect_ok")
        if self.counted:
            stats.set_connected(1)
        self.connected = True
        self.session_present = connack.session_present
        props = connack.properties
        self.window = self.max_inflight
        if self.v5:
            if props.receive_maximum:
                self.window = min(self.max_inflight, props.receive_maximum)
            if props.server_keep_alive is not None:
                self._keepalive_s = props.server_keep_alive
            if props.assigned_client_identifier:
                self.client_id = props.assigned_client_identifier
        if not connack.session_present:
            self.inflight.clear()  # the broker forgot them: they stay unconfirmed
            self.inbound_qos2.clear()
        elif self.inflight:
            self._resend()
        self._last_write = time.monotonic()
        self._ping_sent = 0.0
        if self._keepalive_s:
            self._ka_timer = loop.call_later(self._keepalive_s / 2, self._keepalive_tick)
        return True

    def _connect_failed(self, link: Link, reason: str, detail: str = "") -> bool:
        self.stats.count("connect_failed")
        self.stats.error(reason)
        self.stats.error_detail(reason, detail)
        if link.transport is not None:
            link.transport.abort()
        if self.link is link:
            self.link = None
        return False

    def _resend(self) -> None:
        """Session present: re-send unacknowledged PUBLISH (DUP) and PUBREL, in order."""
        assert self.link is not None and self.link.transport is not None
        out = []
        for pid in sorted(self.inflight, key=lambda p: self.inflight[p].sent_ns):
            entry = self.inflight[pid]
            if entry.state == 1:
                pkt = entry.packet
                out.append(bytes((pkt[0] | 0x08,)) + pkt[1:])  # DUP [MQTT-3.3.1-1]
                self.stats.count("publish_resent")
            else:
                out.append(bytes((0x62, 2, pid >> 8, pid & 0xFF)))
                self.stats.count("pubrel_resent")
        self.link.transport.write(b"".join(out))

    def _made(self, link: Link) -> None:
        if link is not self.link or link.transport is None:
            return
        self._made_at = time.monotonic()
        will = self.will
        props = Properties()
        if self.v5 and self.session_expiry:
            props.session_expiry_interval = self.session_expiry
        packet = Connect(
            client_id=self.client_id, protocol_version=self.version,
            clean_start=self.clean_start, keepalive=self.keepalive, will=will,
            username=self.username, password=self.password, properties=props,
        )
        link.transport.write(encode_packet(packet, self.version))

    async def wait_closed(self) -> None:
        """Return when the current connection is gone."""
        if self._closed is not None:
            await asyncio.shield(self._closed)

    def disconnect(self) -> None:
        """Clean close: DISCONNECT then close the socket (no will)."""
        link = self.link
        if link is None or link.transport is None:
            return
        self._ours = True
        self._clean_close = True
        link.transport.write(encode_packet(Disconnect(), self.version)
                             if self.v5 else _DISCONNECT)
        link.transport.close()

    def abort(self) -> None:
        """Abrupt close: the socket goes without DISCONNECT, so the broker sends the will."""
        link = self.link
        if link is None or link.transport is None:
            return
        self._ours = True
        link.transport.abort()

    def stop_reading(self, seconds: float) -> None:
        """Stop reading from the socket for a while (a stuck device)."""
        link = self.link
        if link is None or link.transport is None or self.reading_paused:
            return
        link.transport.pause_reading()
        self.reading_paused = True
        asyncio.get_running_loop().call_later(seconds, self._resume_reading, link)

    def _resume_reading(self, link: Link) -> None:
        self.reading_paused = False
        if link is self.link and link.transport is not None and not link.transport.is_closing():
            link.transport.resume_reading()
            self._ping_sent = 0.0

    def _lost(self, link: Link, exc: Exception | None) -> None:
        if link is not self.link:
            return
        self.link = None
        if self._ka_timer is not None:
            self._ka_timer.cancel()
            self._ka_timer = None
        stats = self.stats
        if self.connected:
            self.connected = False
            if self.counted:
                stats.set_connected(-1)
            stats.count("disconnects")
            if not self._clean_close and self.will is not None and self.will_source is not None:
                stats.wills_expected[self.will_source] += 1
                cause = ("client_abort" if self._ours
                         else "broker_closed" if exc is None else "connection_lost")
                stats.will_ends.append((self.will_source, time.monotonic_ns(), cause))
            if self.accounting and not self._ours and not self.reading_paused:
                stats.subscriber_drops.append(time.monotonic_ns())
            if not self._ours:
                stats.error("closed_by_broker" if exc is None else "connection_lost")
        self.write_paused = False
        self.reading_paused = False
        if self._connack is not None and not self._connack.done():
            # A TLS alert after the handshake (TLS 1.3: "certificate required") is the
            # reason: keep it, the report explains it.
            self._connack.set_exception(exc if isinstance(exc, ssl.SSLError)
                                        else ConnectionError("closed before CONNACK"))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        self._pending.clear()
        if not self.persistent:
            self.inflight.clear()
            self.inbound_qos2.clear()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    # -------------------------------------------------------------- keepalive

    def _keepalive_tick(self) -> None:
        link = self.link
        if not self.connected or link is None or link.transport is None:
            return
        now = time.monotonic()
        ka = self._keepalive_s
        if self._ping_sent and not self.reading_paused and now - self._ping_sent > ka:
            self.stats.error("pingresp_timeout")
            self.abort()
            return
        if now - self._last_write >= ka / 2 and not self._ping_sent:
            link.transport.write(_PINGREQ)
            self._last_write = now
            self._ping_sent = now
        self._ka_timer = asyncio.get_running_loop().call_later(ka / 2, self._keepalive_tick)

    # -------------------------------------------------------------- publish / subscribe

    def can_publish(self, qos: int) -> bool:
        """Connected, writable, and (QoS > 0) a free slot in the in-flight window."""
        return (self.connected and not self.write_paused
                and (qos == 0 or len(self.inflight) < self.window))

    def _alloc_pid(self) -> int:
        pid = self._next_pid
        inflight = self.inflight
        pending = self._pending
        while True:
            pid = pid + 1 if pid < 0xFFFF else 1
            if pid not in inflight and pid not in pending:
                self._next_pid = pid
                return pid

    def send_publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                     key: int = -1, seq: int = 0, properties: bytes | None = None) -> None:
        """Send a PUBLISH (call :meth:`can_publish` first). ``key``/``seq`` for accounting."""
        link = self.link
        assert link is not None and link.transport is not None
        props = properties if (properties is not None and self.v5) else self.props_bytes
        if qos:
            pid = self._alloc_pid()
            packet = encode_publish(topic, payload, qos, retain, False, pid, props)
            self.inflight[pid] = _Inflight(qos, packet, key, seq, time.monotonic_ns())
        else:
            packet = encode_publish(topic, payload, 0, retain, False, None, props)
        self._write(packet)

    async def subscribe(self, filters: list[tuple[str, int]], timeout: float = 10.0,
                        properties: Properties | None = None) -> list[int]:
        """SUBSCRIBE and wait for the SUBACK's return/reason codes."""
        link = self.link
        if link is None or link.transport is None:
            raise ConnectionError("not connected")
        pid = self._alloc_pid()
        fut: asyncio.Future[SubAck | UnsubAck] = asyncio.get_running_loop().create_future()
        self._pending[pid] = fut
        packet = Subscribe(pid, [Subscription(f, q) for f, q in filters],
                           properties or Properties())
        self._write(encode_packet(packet, self.version))
        async with asyncio.timeout(timeout):
            ack = await fut
        return list(ack.reason_codes)

    def _write(self, data: bytes) -> None:
        if self._in_data:
            self._out.append(data)
        else:
            link = self.link
            if link is not None and link.transport is not None:
                link.transport.write(data)
        self._last_write = time.monotonic()

    # -------------------------------------------------------------- inbound

    def _data(self, link: Link, data: bytes) -> None:
        if link is not self.link:
            return
        try:
            frames = self._framer.feed(data)
        except Exception:  # the codec's MalformedPacket / PacketTooLarge
            self.stats.error("malformed_from_broker")
            self.abort()
            return
        self._in_data = True
        out = self._out
        try:
            for first, body in frames:
                kind = first >> 4
                if kind == 3:
                    self._on_publish(first, body)
                elif kind == 4:
                    self._on_puback((body[0] << 8) | body[1], body[2] if len(body) > 2 else 0)
                elif kind == 5:
                    self._on_pubrec((body[0] << 8) | body[1], body[2] if len(body) > 2 else 0)
                elif kind == 7:
                    self.inflight.pop((body[0] << 8) | body[1], None)
                elif kind == 6:
                    pid = (body[0] << 8) | body[1]
                    self.inbound_qos2.discard(pid)
                    out.append(bytes((0x70, 2, body[0], body[1])))
                elif kind == 13:
                    self._ping_sent = 0.0
                else:
                    self._on_other(first, body)
        except Exception as exc:  # a broker bug or a codec error: count it, drop the link
            self.stats.error(f"bad_packet_from_broker_{type(exc).__name__}")
            self.abort()
        finally:
            self._in_data = False
            if out:
                if link.transport is not None and self.link is link:
                    link.transport.write(b"".join(out))
                out.clear()

    def _on_publish(self, first: int, body: bytes) -> None:
        qos = (first >> 1) & 3
        tl = (body[0] << 8) | body[1]
        pos = 2 + tl
        pid = 0
        if qos:
            pid = (body[pos] << 8) | body[pos + 1]
            pos += 2
        props: Properties | None = None
        if self.v5:
            if body[pos] == 0:
                pos += 1
            elif self.want_properties:
                props, pos = decode_properties(body, pos, 3)
            else:
                length = 0
                shift = 0
                while True:
                    b = body[pos]
                    pos += 1
                    length |= (b & 0x7F) << shift
                    shift += 7
                    if b < 0x80:
                        break
                pos += length
        if qos == 1:
            self._out.append(bytes((0x40, 2, pid >> 8, pid & 0xFF)))
        elif qos == 2:
            self._out.append(bytes((0x50, 2, pid >> 8, pid & 0xFF)))
            if pid in self.inbound_qos2:
                self.stats.count("qos2_duplicate_publish_received")
                return  # already delivered to the application: not again
            self.inbound_qos2.add(pid)
        handler = self.on_message
        if handler is not None:
            handler(body[2 : 2 + tl], body[pos:], qos, props)

    def _on_puback(self, pid: int, reason: int) -> None:
        entry = self.inflight.pop(pid, None)
        if entry is None or entry.qos != 1:
            self.stats.error("puback_unknown_packet_id")
            return
        if reason >= 0x80:
            self.stats.error(f"puback_reason_0x{reason:02x}")
            return
        if entry.key >= 0:
            self.stats.on_confirmed(entry.key, entry.seq,
                                    (time.monotonic_ns() - entry.sent_ns) // 1000)

    def _on_pubrec(self, pid: int, reason: int) -> None:
        entry = self.inflight.get(pid)
        if entry is None or entry.qos != 2:
            self.stats.error("pubrec_unknown_packet_id")
            self._out.append(bytes((0x62, 2, pid >> 8, pid & 0xFF)))
            return
        if reason >= 0x80:
            del self.inflight[pid]
            self.stats.error(f"pubrec_reason_0x{reason:02x}")
            return
        if entry.state == 1:
            entry.state = 2
            entry.packet = b""
            if entry.key >= 0:
                self.stats.on_confirmed(entry.key, entry.seq,
                                        (time.monotonic_ns() - entry.sent_ns) // 1000)
        self._out.append(bytes((0x62, 2, pid >> 8, pid & 0xFF)))

    def _on_other(self, first: int, body: bytes) -> None:
        packet = decode_packet(first, body, self.version)
        if isinstance(packet, ConnAck):
            if self._connack is not None and not self._connack.done():
                self._connack_at = time.monotonic()
                self._connack.set_result(packet)
        elif isinstance(packet, SubAck | UnsubAck):
            if isinstance(packet, SubAck):
                # read after the broker sent it: whatever is published from now on is
                # routed to the new subscription (the accounting relies on this order)
                self.suback_ns = time.monotonic_ns()
            fut = self._pending.pop(packet.packet_id, None)
            if fut is not None and not fut.done():
                fut.set_result(packet)
        elif isinstance(packet, Disconnect):
            self.stats.error(f"disconnect_from_broker_0x{packet.reason_code:02x}")
        else:
            self.stats.error(f"unexpected_{type(packet).__name__.lower()}")
