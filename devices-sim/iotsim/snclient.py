"""A lean MQTT-SN 1.2 client for simulated devices (``protocol: mqtt-sn`` groups).

The same face as :class:`iotsim.client.Client` (``connect``, ``wait_closed``,
``disconnect``, ``abort``, ``can_publish``, ``send_publish``, ``subscribe``,
``on_message``), so devices and the accounting do not care which protocol a group
speaks. One UDP socket per device (a gateway tells clients apart by address), built on
:mod:`iotbroker.mqttsn.codec` (pure, like :mod:`iotbroker.codec`).

MQTT-SN 1.2 as a device does it: CONNECT (with the will dialogue, §6.2); a topic is
REGISTERed before its first PUBLISH (§6.5; the PUBLISH waits for the REGACK);
SUBSCRIBE one filter at a time (§6.9); the gateway's REGISTERs are answered (§6.10);
QoS 1/2 PUBLISH resent with DUP after ``retry`` seconds, up to 3 times (§6.13); QoS −1
(§6.8) needs no connection; ``sleep(duration)`` sends DISCONNECT with a duration
(§6.14) and ``wake()`` a PINGREQ with the client id, which makes the gateway deliver
what it buffered. A lost link (no answer to PINGREQ, or DISCONNECT from the gateway)
ends the "connection" like a closed socket.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from iotbroker.codec.packets import Properties, Will
from iotbroker.mqttsn import codec as c
from iotsim.client import MessageHandler, Target
from iotsim.stats import Stats

TID = c.TopicIdType
RETRIES = 3


class _Out:
    """One of our QoS 1/2 PUBLISHes in flight (or waiting for its topic's REGACK)."""

    __slots__ = ("key", "msg", "qos", "sent_ns", "seq", "state", "tries")

    def __init__(self, msg: c.Publish, key: int, seq: int) -> None:
        self.msg = msg
        self.qos = msg.qos
        self.key = key
        self.seq = seq
        self.sent_ns = time.monotonic_ns()
        self.state = 1  # 1: PUBLISH sent, 2: PUBREC received (QoS 2)
        self.tries = 0


class _Link(asyncio.DatagramProtocol):
    def __init__(self, client: SnClient) -> None:
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client._datagram(data)

    def error_received(self, exc: Exception) -> None:
        self.client.stats.error("udp_error")


class SnClient:
    """One simulated MQTT-SN device."""

    def __init__(self, target: Target, stats: Stats, client_id: str, keepalive: int = 60,
                 clean_start: bool = True, will: Will | None = None,
                 will_source: int | None = None, max_inflight: int = 20,
                 source_address: str | None = None, qos_minus_one: bool = False,
                 retry: float = 5.0) -> None:
        self.target = target
        self.stats = stats
        self.client_id = client_id
        self.keepalive = keepalive
        self.clean_start = clean_start
        self.will = will
        self.will_source = will_source
        self.max_inflight = max_inflight
        self.window = max_inflight
        self.source_address = source_address
        self.qos_minus_one = qos_minus_one
        self.retry = retry
        self.persistent = not clean_start
        self.on_message: MessageHandler | None = None
        self.counted = True
        self.want_properties = False
        self.suback_ns = 0
        self.connected = False
        self.asleep = False
        self.session_present = False
        self.link: _Link | None = None
        self.inflight: dict[int, _Out] = {}
        self.inbound_qos2: set[int] = set()
        self._ids: dict[str, int] = {}  # topic -> id (ours and the gateway's)
        self._names: dict[int, str] = {}  # id -> topic
        self._registering: dict[int, str] = {}  # REGISTER msg id -> topic
        self._waiting: dict[str, list[tuple[c.Publish, int, int, bool]]] = {}
        self._acks: dict[int, asyncio.Future[c.SnMessage]] = {}
        self._closed: asyncio.Future[None] | None = None
        self._next_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._last_heard = 0.0
        self._ping_sent = 0.0
        self._reading = True
        self._clean_close = False

    # ---------------------------------------------------------------- the socket
    async def _open(self) -> _Link:
        if self.link is not None and self.link.transport is not None:
            return self.link
        loop = asyncio.get_running_loop()
        local = (self.source_address, 0) if self.source_address else None
        _, proto = await loop.create_datagram_endpoint(
            lambda: _Link(self), remote_addr=(self.target.host, self.target.mqttsn_port),
            local_addr=local)
        self.link = proto
        return proto

    def _send(self, msg: c.SnMessage) -> None:
        link = self.link
        if link is not None and link.transport is not None:
            link.transport.sendto(c.encode(msg))

    def _new_id(self) -> int:
        while True:
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self.inflight and self._next_id not in self._acks \
                    and self._next_id not in self._registering:
                return self._next_id

    # ---------------------------------------------------------------- connect / close
    async def connect(self) -> bool:
        """CONNECT (and the will dialogue); False (and counted) on failure."""
        stats = self.stats
        stats.count("connect_attempts")
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            await self._open()
        except OSError:
            stats.count("connect_failed")
            stats.error("connect_udp_error")
            return False
        self._closed = loop.create_future()
        self._clean_close = False
        self._ids.clear()
        self._names.clear()
        self._registering.clear()
        self._waiting.clear()
        fut: asyncio.Future[c.SnMessage] = loop.create_future()
        self._acks[0] = fut  # CONNACK
        self._send(c.Connect(self.client_id, self.keepalive, will=self.will is not None,
                             clean_session=self.clean_start))
        try:
            async with asyncio.timeout(self.target.connect_timeout):
                ack = await fut
        except TimeoutError:
            self._acks.pop(0, None)
            stats.count("connect_failed")
            stats.error("connect_timeout")
            return False
        assert isinstance(ack, c.ConnAck)
        if ack.return_code != 0:
            stats.count("connect_failed")
            stats.error(f"connack_refused_0x{ack.return_code:02x}")
            return False
        stats.connect_latency.record(int((time.monotonic() - started) * 1e6))
        stats.count("connect_ok")
        if self.counted:
            stats.set_connected(1)
        self.connected = True
        self.asleep = False
        if not self.persistent:
            self.inflight.clear()
            self.inbound_qos2.clear()
        else:
            for entry in list(self.inflight.values()):  # resend after REGISTER (new ids)
                if entry.state == 1:
                    self.inflight.pop(entry.msg.msg_id)
        self._last_heard = time.monotonic()
        self._ping_sent = 0.0
        self._arm()
        return True

    async def wait_closed(self) -> None:
        if self._closed is not None:
            await asyncio.shield(self._closed)

    def disconnect(self) -> None:
        """DISCONNECT (no will); the socket stays for the next connect."""
        if not self.connected:
            return
        self._clean_close = True
        self._send(c.Disconnect())
        self._lost("")

    def abort(self) -> None:
        """Go silent: the gateway finds out by keep alive and publishes the will."""
        if self.connected:
            self._lost("")

    def stop_reading(self, seconds: float) -> None:
        self._reading = False
        asyncio.get_running_loop().call_later(seconds, self._resume)

    def _resume(self) -> None:
        self._reading = True

    def _lost(self, why: str) -> None:
        if not self.connected:
            return
        self.connected = False
        self.asleep = False
        stats = self.stats
        if self.counted:
            stats.set_connected(-1)
        stats.count("disconnects")
        if not self._clean_close and self.will is not None and self.will_source is not None:
            stats.wills_expected[self.will_source] += 1
        if why:
            stats.error(why)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        self._acks.clear()
        if not self.persistent:
            self.inflight.clear()
            self.inbound_qos2.clear()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    # ---------------------------------------------------------------- sleep (§6.14)
    def sleep(self, duration: int) -> None:
        """DISCONNECT with a duration: the gateway buffers our messages meanwhile."""
        if self.connected and not self.asleep:
            self.asleep = True
            self._send(c.Disconnect(duration))

    def wake(self) -> None:
        """PINGREQ with our client id: the gateway sends what it kept, then PINGRESP."""
        if self.connected and self.asleep:
            self._ping_sent = time.monotonic()
            self._send(c.PingReq(self.client_id))

    # ---------------------------------------------------------------- keep alive, retries
    def _arm(self) -> None:
        period = max(0.5, min(self.keepalive / 2 if self.keepalive else self.retry,
                              self.retry))
        self._timer = asyncio.get_running_loop().call_later(period, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self.connected:
            return
        now = time.monotonic()
        if self._ping_sent and now - self._ping_sent > max(self.keepalive, self.retry) \
                and self._reading:
            self._lost("pingresp_timeout")
            return
        if not self.asleep and self.keepalive and now - self._last_heard >= self.keepalive / 2 \
                and not self._ping_sent:
            self._ping_sent = now
            self._send(c.PingReq())
        limit = self.retry * 1e9
        now_ns = time.monotonic_ns()
        for entry in list(self.inflight.values()):
            if entry.state == 1 and now_ns - entry.sent_ns > limit * (entry.tries + 1):
                if entry.tries >= RETRIES:
                    self._lost("publish_retries_exhausted")
                    return
                entry.tries += 1
                m = entry.msg
                self._send(c.Publish(m.topic_id_type, m.topic_id, m.msg_id, m.data, qos=m.qos,
                                     retain=m.retain, dup=True))
                self.stats.count("publish_resent")
        self._arm()

    # ---------------------------------------------------------------- publish
    def can_publish(self, qos: int) -> bool:
        return self.connected and (qos == 0 or len(self.inflight) < self.window)

    def _topic(self, topic: str) -> tuple[int, int] | None:
        if len(topic) == 2 and len(topic.encode()) == 2:
            return TID.SHORT, c.encode_short_name(topic)
        topic_id = self._ids.get(topic)
        return None if topic_id is None else (TID.NORMAL, topic_id)

    def send_publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                     key: int = -1, seq: int = 0, properties: bytes | None = None) -> None:
        """PUBLISH (REGISTER first when the topic has no id yet)."""
        sn_qos = -1 if qos == 0 and self.qos_minus_one else qos
        msg_id = self._new_id() if qos else 0
        msg = c.Publish(TID.NORMAL, 0, msg_id, payload, qos=sn_qos, retain=retain)
        if qos:
            self.inflight[msg_id] = _Out(msg, key, seq)
        found = self._topic(topic)
        if found is None:
            waiting = self._waiting.get(topic)
            if waiting is None:
                self._waiting[topic] = [(msg, key, seq, retain)]
                reg_id = self._new_id()
                self._registering[reg_id] = topic
                self._send(c.Register(0, reg_id, topic))
            else:
                waiting.append((msg, key, seq, retain))
            return
        self._publish(msg, *found)

    def _publish(self, msg: c.Publish, tid_type: int, topic_id: int) -> None:
        out = c.Publish(tid_type, topic_id, msg.msg_id, msg.data, qos=msg.qos, retain=msg.retain)
        entry = self.inflight.get(msg.msg_id) if msg.qos > 0 else None
        if entry is not None:
            entry.msg = out
            entry.sent_ns = time.monotonic_ns()
        self._send(out)

    # ---------------------------------------------------------------- subscribe
    async def subscribe(self, filters: list[tuple[str, int]], timeout: float = 10.0,
                        properties: Properties | None = None) -> list[int]:
        """One SUBSCRIBE per filter (§6.9); the granted QoS or 0x80 for each."""
        codes = []
        loop = asyncio.get_running_loop()
        for topic_filter, qos in filters:
            if not self.connected:
                raise ConnectionError("not connected")
            msg_id = self._new_id()
            fut: asyncio.Future[c.SnMessage] = loop.create_future()
            self._acks[msg_id] = fut
            if len(topic_filter) == 2 and len(topic_filter.encode()) == 2:
                self._send(c.Subscribe(msg_id, TID.SHORT, topic_filter, qos=qos))
            else:
                self._send(c.Subscribe(msg_id, TID.NORMAL, topic_filter, qos=qos))
            async with asyncio.timeout(timeout):
                ack = await fut
            assert isinstance(ack, c.SubAck)
            if ack.return_code != 0:
                codes.append(0x80)
                continue
            if ack.topic_id and "+" not in topic_filter and "#" not in topic_filter:
                self._ids[topic_filter] = ack.topic_id
                self._names[ack.topic_id] = topic_filter
            codes.append(ack.qos)
            self.suback_ns = time.monotonic_ns()
        return codes

    # ---------------------------------------------------------------- inbound
    def _datagram(self, data: bytes) -> None:
        if not self._reading:
            return
        try:
            msg = c.decode(data)
        except c.SnMalformed:
            self.stats.error("malformed_from_gateway")
            return
        self._last_heard = time.monotonic()
        match msg:
            case c.Publish():
                self._on_publish(msg)
            case c.PubAck():
                self._on_puback(msg)
            case c.PubRec():
                entry = self.inflight.get(msg.msg_id)
                if entry is not None and entry.state == 1:
                    entry.state = 2
                    self._confirmed(entry)
                self._send(c.PubRel(msg.msg_id))
            case c.PubComp():
                self.inflight.pop(msg.msg_id, None)
            case c.PubRel():
                self.inbound_qos2.discard(msg.msg_id)
                self._send(c.PubComp(msg.msg_id))
            case c.Register():
                self._ids[msg.topic_name] = msg.topic_id
                self._names[msg.topic_id] = msg.topic_name
                self._send(c.RegAck(msg.topic_id, msg.msg_id, 0))
            case c.RegAck():
                self._on_regack(msg)
            case c.PingResp():
                self._ping_sent = 0.0
            case c.WillTopicReq():
                will = self.will
                if will is not None:
                    self._send(c.WillTopic(will.topic, qos=min(will.qos, 2), retain=will.retain))
            case c.WillMsgReq():
                if self.will is not None:
                    self._send(c.WillMsg(self.will.payload))
            case c.ConnAck():
                fut = self._acks.pop(0, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            case c.SubAck() | c.UnsubAck():
                fut = self._acks.pop(msg.msg_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            case c.Disconnect():
                if self.connected and not self.asleep:
                    self._lost("disconnect_from_gateway")
            case _:
                self.stats.error(f"unexpected_{type(msg).__name__.lower()}")

    def _on_publish(self, msg: c.Publish) -> None:
        if msg.topic_id_type == TID.SHORT:
            topic = msg.topic_id.to_bytes(2, "big").decode(errors="replace")
        else:
            name = self._names.get(msg.topic_id)
            if name is None:
                if msg.qos > 0:
                    self._send(c.PubAck(msg.topic_id, msg.msg_id, c.ReturnCode.INVALID_TOPIC_ID))
                self.stats.error("publish_unknown_topic_id")
                return
            topic = name
        if msg.qos == 1:
            self._send(c.PubAck(msg.topic_id, msg.msg_id, 0))
        elif msg.qos == 2:
            self._send(c.PubRec(msg.msg_id))
            if msg.msg_id in self.inbound_qos2:
                self.stats.count("qos2_duplicate_publish_received")
                return
            self.inbound_qos2.add(msg.msg_id)
        handler = self.on_message
        if handler is not None:
            handler(topic.encode(), msg.data, max(msg.qos, 0), None)

    def _confirmed(self, entry: _Out) -> None:
        if entry.key >= 0:
            self.stats.on_confirmed(entry.key, entry.seq,
                                    (time.monotonic_ns() - entry.sent_ns) // 1000)

    def _on_puback(self, msg: c.PubAck) -> None:
        entry = self.inflight.get(msg.msg_id)
        if entry is None or entry.qos != 1:
            self.stats.error("puback_unknown_msg_id")
            return
        if msg.return_code == c.ReturnCode.CONGESTION:
            entry.sent_ns = time.monotonic_ns()  # §6.7: retry later (the retry timer)
            self.stats.count("puback_congestion")
            return
        del self.inflight[msg.msg_id]
        if msg.return_code != 0:
            self.stats.error(f"puback_return_code_{msg.return_code}")
            return
        self._confirmed(entry)

    def _on_regack(self, msg: c.RegAck) -> None:
        topic = self._registering.pop(msg.msg_id, None)
        if topic is None:
            return
        waiting = self._waiting.pop(topic, [])
        if msg.return_code != 0:
            self.stats.error(f"regack_return_code_{msg.return_code}")
            for pub, _key, _seq, _retain in waiting:
                self.inflight.pop(pub.msg_id, None)
            return
        self._ids[topic] = msg.topic_id
        self._names[msg.topic_id] = topic
        for pub, _key, _seq, _retain in waiting:
            self._publish(pub, TID.NORMAL, msg.topic_id)
