"""A lean MQTT load generator for end-to-end broker benchmarks.

Runs against any MQTT broker on 127.0.0.1 (iotbroker, mosquitto, ...). One ``run``
invocation is one scenario: a coordinator process (this one, mostly asleep) starts
``--procs`` worker processes, waits until every client is connected and subscribed,
gives them a common start time, samples the broker's CPU and RSS (``--broker-pid``)
at the edges of the measurement window, and prints one JSON object.

Scenarios (64-byte payloads, MQTT 3.1.1 unless ``--mqtt5``):

* ``qos0``     1 publisher -> 1 subscriber, QoS 0; msg/s received.
* ``qos1``     1 publisher -> 1 subscriber, QoS 1 both ways; msg/s received.
* ``fanout``   1 publisher -> 100 subscribers of one topic, QoS 0; deliveries/s.
* ``fanin``    100 publishers (one topic each) -> 1 subscriber of ``#``, QoS 1; msg/s.
* ``latency``  1 publisher at a fixed 1,000 msg/s -> 1 subscriber, QoS 1; every
               message's latency from the send timestamp in its payload.
* ``connect``  10,000 idle clients connect as fast as possible (bounded concurrency,
               several source addresses); conn/s, then broker RSS growth per client.

How it stays cheap (and lossless):

* asyncio.Protocol on uvloop (the fixed-rate ``latency`` worker on the stdlib loop,
  whose timers sleep instead of spinning; see ``main``), no streams, no packet objects
  on the hot path. PUBLISH packets are pre-encoded: a QoS 0 burst is ``packet * k``
  with one timestamp per burst; a QoS 1 PUBLISH is ``head + packet_id + payload``
  (three ready ``bytes``).
* QoS 0 subscribers count bytes (every PUBLISH of a run has the same size) and read
  one latency sample per ``data_received`` from the last whole packet in the chunk.
  QoS 1 subscribers walk the frames, pick packet ids and answer with one joined
  write of PUBACKs per chunk; they also sample one latency per chunk.
* Publishers keep at most ``--window`` (default 100) unacknowledged QoS 1 PUBLISHes
  each (fewer if an MQTT 5 broker's Receive Maximum is lower), and all publishers
  together keep at most ``--flow`` messages (default 1,000) sent but not yet
  received by the subscribers (counted in messages; a fan-out message counts as
  received when all its deliveries arrived). The end-to-end window is what keeps
  either broker's per-client queue (``max_queued_messages``) from overflowing and
  dropping, for QoS 0 as for QoS 1: throughput here is the lossless rate. Across
  processes the counters live in a shared mmap; a blocked publisher polls it every
  millisecond (and is woken at once by a subscriber in its own process). If the
  window makes no progress for 200 ms (a broker dropped messages) the outstanding
  messages are written off, counted as ``stalls`` and the run goes on.
* Loss = sent x fanout - received, after the publishers stop and the subscribers
  have drained (no data for 0.5 s, at most 5 s).
* ``--persistent``: subscribers connect with Clean Session 0 (MQTT 5: Clean Start 0 and
  Session Expiry 3600 s), so a broker with persistence really stores their in-flight
  and queued messages; after the run each such session is discarded (reconnect with a
  clean session). ``broker_write_mib_s`` in the JSON is the broker's storage writes
  over the window (``write_bytes`` of /proc/PID/io).

Usage::

    .venv/bin/python benchmarks/loadgen.py run --port 1883 --scenario qos1 \
        --warmup 1 --duration 5 [--procs 2] [--mqtt5] [--broker-pid PID]

Only ``iotbroker.codec`` is imported from iotbroker (to encode CONNECT/SUBSCRIBE and
decode CONNACK/SUBACK, off the hot path).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import mmap
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

# Import the codec without importing benchmarks from a different checkout by accident.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from iotbroker.codec import decode_packet, encode_packet
from iotbroker.codec.packets import (
    Connect,
    Disconnect,
    Properties,
    Subscribe,
    Subscription,
)

PAYLOAD_SIZE = 64
#: ``--persistent``: subscribers' MQTT 5 Session Expiry Interval (s); v3.1.1 uses
#: Clean Session 0, whose session never expires.
SESSION_EXPIRY = 3600
PAD = b"\xa5" * (PAYLOAD_SIZE - 8)
_ts = struct.Struct(">Q")
PID_BYTES = [i.to_bytes(2, "big") for i in range(65536)]
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

#: End-to-end window (deliveries) per scenario. mosquitto 2.0.11 drops QoS 1 messages in
#: fan-in once a few hundred wait for the subscriber (inflight-quota bugs fixed in
#: 2.0.13), so QoS 1 windows stay at 500, where neither broker lost a message.
DEFAULT_FLOW = {"qos0": 1000, "qos1": 500, "fanout": 2000, "fanin": 500, "latency": 500}
SCENARIOS = ("qos0", "qos1", "fanout", "fanin", "latency", "connect")
UNITS = {
    "qos0": "msg/s",
    "qos1": "msg/s",
    "fanout": "deliveries/s",
    "fanin": "msg/s",
    "latency": "ms p99",
    "connect": "conn/s",
}


def now_ns() -> int:
    return time.monotonic_ns()  # CLOCK_MONOTONIC: one clock for all processes


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def publish_head(topic: str, qos: int, v5: bool) -> tuple[bytes, int]:
    """Fixed header + topic of a PUBLISH with a 64-byte payload; (head, packet size).

    For QoS 1 the packet id and (v5) the empty property block follow ``head``."""
    t = topic.encode()
    props = b"\x00" if v5 else b""
    rl = 2 + len(t) + (2 if qos else 0) + len(props) + PAYLOAD_SIZE
    assert rl < 128, "keep PUBLISH under 128 bytes (one-byte Remaining Length)"
    head = bytes((0x30 | (qos << 1), rl)) + len(t).to_bytes(2, "big") + t
    return head, 2 + rl


# --------------------------------------------------------------------------- flow window


class Flow:
    """End-to-end window: messages sent by this run's publishers and not yet received.

    ``slots``: per process, [sent, received-deliveries] as int64 in a shared mmap
    (or a private bytearray with one process)."""

    def __init__(self, limit: int, fanout: int, index: int, nprocs: int, shm: str | None):
        self.limit = limit
        self.fanout = fanout
        self.index = index
        self.nprocs = nprocs
        if shm:
            fd = os.open(shm, os.O_RDWR)
            self.buf: Any = mmap.mmap(fd, 16 * nprocs)
            os.close(fd)
        else:
            self.buf = bytearray(16 * nprocs)
        self.sent = 0
        self.recv = 0
        self.written_off = 0
        self.stalls = 0
        self.waiters: dict[Any, None] = {}
        self.shared = nprocs > 1
        self.poll_handle: Any = None
        self.progress_t = 0.0
        self.progress_recv = 0

    def add_sent(self, n: int) -> None:
        self.sent += n
        if self.shared:
            struct.pack_into("<q", self.buf, 16 * self.index, self.sent)

    def add_recv(self, n: int) -> None:
        self.recv += n
        if self.shared:
            struct.pack_into("<q", self.buf, 16 * self.index + 8, self.recv)
        if self.waiters and self.outstanding() < self.limit // 2:
            self._wake()

    def outstanding(self) -> int:
        """Deliveries sent (messages x fanout) and not yet received, minus write-offs."""
        if not self.shared:
            return self.sent * self.fanout - self.recv - self.written_off
        vals = struct.unpack_from(f"<{2 * self.nprocs}q", self.buf, 0)
        return sum(vals[0::2]) * self.fanout - sum(vals[1::2]) - self.written_off

    def total_recv(self) -> int:
        if not self.shared:
            return self.recv
        return sum(struct.unpack_from(f"<{2 * self.nprocs}q", self.buf, 0)[1::2])

    def credit(self) -> int:
        """Messages a publisher may send now."""
        return (self.limit - self.outstanding()) // self.fanout

    def wait(self, callback: Any) -> None:
        """Call ``callback`` once there is credit again (one 1 ms poll for all waiters)."""
        if not self.waiters:
            self.progress_t = time.monotonic()
            self.progress_recv = self.total_recv()
        self.waiters[callback] = None
        if self.poll_handle is None:
            self.poll_handle = asyncio.get_running_loop().call_later(0.001, self._poll)

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, {}
        for w in waiters:
            w()

    def _poll(self) -> None:
        self.poll_handle = None
        if not self.waiters:
            return
        t = time.monotonic()
        recv = self.total_recv()
        if recv != self.progress_recv:
            self.progress_t, self.progress_recv = t, recv
        if self.credit() > 0:
            self._wake()
        elif t - self.progress_t > self.STALL:
            # A broker dropped messages: write the window off, count it, go on.
            self.written_off += self.outstanding()
            self.stalls += 1
            self._wake()
        else:
            self.poll_handle = asyncio.get_running_loop().call_later(0.001, self._poll)

    STALL = 0.5  # s without any delivery while the window is full


# --------------------------------------------------------------------------- clients


class Client(asyncio.Protocol):
    """Connection setup shared by all roles: CONNECT/CONNACK, SUBSCRIBE/SUBACK."""

    def __init__(self, client_id: str, v5: bool, keepalive: int = 0,
                 persistent: bool = False) -> None:
        self.client_id = client_id
        self.v5 = v5
        self.keepalive = keepalive
        self.persistent = persistent  # clean session 0 (v5: Clean Start 0 + expiry)
        self.transport: Any = None
        self.buf = b""
        self.ready: asyncio.Future[Any] | None = None
        self.receive_maximum = 65535
        self.lost = False
        self.paused = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_connect(self) -> asyncio.Future[Any]:
        self.ready = asyncio.get_running_loop().create_future()
        self.transport.write(
            encode_packet(
                Connect(client_id=self.client_id, protocol_version=5 if self.v5 else 4,
                        keepalive=self.keepalive, clean_start=not self.persistent,
                        properties=Properties(session_expiry_interval=SESSION_EXPIRY)
                        if self.persistent and self.v5 else Properties()),
                5 if self.v5 else 4,
            )
        )
        return self.ready

    def send_subscribe(self, topic_filter: str, qos: int) -> asyncio.Future[Any]:
        self.ready = asyncio.get_running_loop().create_future()
        self.transport.write(
            encode_packet(Subscribe(1, [Subscription(topic_filter, qos)]), 5 if self.v5 else 4)
        )
        return self.ready

    def control_received(self, data: bytes) -> bytes:
        """Before the run: collect CONNACK / SUBACK; return unparsed bytes."""
        buf = self.buf + data
        while len(buf) >= 2 and len(buf) >= 2 + buf[1] and buf[1] < 128:
            first, body = buf[0], buf[2 : 2 + buf[1]]
            buf = buf[2 + buf[1] :]
            pkt = decode_packet(first, body, 5 if self.v5 else 4)
            name = type(pkt).__name__
            if name == "ConnAck":
                if pkt.reason_code != 0:
                    self._fail(f"CONNACK {pkt.reason_code:#x}")
                rm = pkt.properties.receive_maximum
                if rm:
                    self.receive_maximum = rm
                self._done(pkt)
            elif name == "SubAck":
                if any(rc >= 0x80 for rc in pkt.reason_codes):
                    self._fail(f"SUBACK {pkt.reason_codes}")
                self._done(pkt)
            else:
                self._fail(f"unexpected {name} before the run")
        return buf

    def _done(self, v: Any) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(v)

    def _fail(self, why: str) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(RuntimeError(f"{self.client_id}: {why}"))

    def data_received(self, data: bytes) -> None:
        self.buf = self.control_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(f"connection lost: {exc}")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def disconnect(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_packet(Disconnect(), 5 if self.v5 else 4))
            self.transport.close()


class Subscriber(Client):
    """Counts received PUBLISHes; acks QoS 1; samples latency once per chunk."""

    def __init__(self, client_id: str, v5: bool, flow: Flow, pkt_size: int,
                 parse_all: bool = False, persistent: bool = False) -> None:
        super().__init__(client_id, v5, persistent=persistent)
        self.flow = flow
        self.pkt_size = pkt_size
        self.running = False
        self.parse_all = parse_all  # latency scenario: a sample from every message
        self.count = 0
        self.bytes = 0
        self.samples: list[int] = []
        self.last_rx = 0.0
        self.rest = b""

    def data_received(self, data: bytes) -> None:
        if not self.running:
            self.buf = self.control_received(data)
            return
        self.last_rx = time.monotonic()
        if self.qos0_fast:
            # Every PUBLISH has the same size: count bytes, sample the last whole packet.
            before = self.bytes
            self.bytes = total = before + len(data)
            size = self.pkt_size
            n = total // size - before // size
            if n:
                start = (total // size - 1) * size - before  # last whole packet's start
                if start >= 0:
                    off = start + size - PAYLOAD_SIZE
                    self.samples.append(now_ns() - _ts.unpack_from(data, off)[0])
                self.count += n
                self.flow.add_recv(n)
            return
        buf = self.rest + data if self.rest else data
        n = len(buf)
        pos = 0
        pids = []
        count = 0
        last = -1
        samples = self.samples
        parse_all = self.parse_all
        while n - pos >= 2:
            rl = buf[pos + 1]
            hdr = 2
            if rl >= 128:  # multi-byte Remaining Length (not expected with 64 B payloads)
                rl &= 0x7F
                shift = 7
                hdr = 0
                for i in range(2, 5):
                    if pos + i >= n:
                        break
                    b = buf[pos + i]
                    rl |= (b & 0x7F) << shift
                    shift += 7
                    if b < 128:
                        hdr = i + 1
                        break
                if hdr == 0:
                    break
            end = pos + hdr + rl
            if end > n:
                break
            first = buf[pos]
            if first >> 4 == 3:
                p = pos + hdr + 2 + (buf[pos + hdr] << 8 | buf[pos + hdr + 1])
                if first & 0x06:
                    pids.append(buf[p : p + 2])
                count += 1
                last = end - PAYLOAD_SIZE
                if parse_all:
                    samples.append(now_ns() - _ts.unpack_from(buf, last)[0])
            pos = end
        self.rest = buf[pos:] if pos < n else b""
        if pids:
            self.transport.write(b"\x40\x02" + b"\x40\x02".join(pids))
        if count:
            if last >= 0 and not parse_all:
                samples.append(now_ns() - _ts.unpack_from(buf, last)[0])
            self.count += count
            self.flow.add_recv(count)

    qos0_fast = False


class Publisher(Client):
    """Sends pre-encoded PUBLISHes as fast as the windows allow, or at a fixed rate."""

    BURST = 64

    def __init__(self, client_id: str, v5: bool, flow: Flow, topic: str, qos: int,
                 window: int, rate: float = 0.0) -> None:
        super().__init__(client_id, v5)
        self.flow = flow
        self.qos = qos
        self.head, self.pkt_size = publish_head(topic, qos, v5)
        self.props = b"\x00" if v5 else b""
        self.window = window
        self.rate = rate
        self.running = False
        self.stopped = False
        self.sent = 0
        self.acked = 0
        self.inflight = 0
        self.next_pid = 1
        self.busy = bytearray(65536)
        self.rest = b""
        self.pump_scheduled = False
        self.loop = asyncio.get_event_loop()

    def start(self) -> None:
        self.window = min(self.window, self.receive_maximum)
        self.running = True
        self.t_start = time.monotonic()
        if self.rate:
            self.loop.call_soon(self.tick)
        else:
            self.loop.call_soon(self.pump)

    def stop(self) -> None:
        self.stopped = True

    def resume_writing(self) -> None:
        self.paused = False
        self.schedule()

    def schedule(self) -> None:
        if not self.pump_scheduled and not self.rate:
            self.pump_scheduled = True
            self.loop.call_soon(self.pump)

    def pump(self) -> None:
        self.pump_scheduled = False
        if self.stopped or self.paused or self.lost:
            return
        flow = self.flow
        credit = flow.credit()
        if credit <= 0:
            flow.wait(self.schedule)  # window full: woken in-process or by the 1 ms poll
            return
        k = min(credit, self.BURST)
        payload = _ts.pack(now_ns()) + PAD
        if self.qos == 0:
            self.transport.write((self.head + self.props + payload) * k)
        else:
            k = min(k, self.window - self.inflight)
            if k <= 0:
                return  # woken by PUBACKs
            head, props, busy, pids = self.head, self.props, self.busy, PID_BYTES
            parts = []
            pid = self.next_pid
            for _ in range(k):
                while busy[pid]:
                    pid = pid + 1 if pid < 65535 else 1
                busy[pid] = 1
                parts.append(head + pids[pid] + props + payload)
                pid = pid + 1 if pid < 65535 else 1
            self.next_pid = pid
            self.inflight += k
            self.transport.write(b"".join(parts))
        self.sent += k
        flow.add_sent(k)
        self.schedule()

    def tick(self) -> None:
        """Fixed-rate mode: send what is due, one PUBLISH per write."""
        if self.stopped or self.lost:
            return
        due = int((time.monotonic() - self.t_start) * self.rate) + 1 - self.sent
        for _ in range(min(due, 100)):
            if self.qos and self.inflight >= self.window:
                break
            payload = _ts.pack(now_ns()) + PAD
            if self.qos == 0:
                self.transport.write(self.head + self.props + payload)
            else:
                pid = self.next_pid
                while self.busy[pid]:
                    pid = pid + 1 if pid < 65535 else 1
                self.busy[pid] = 1
                self.next_pid = pid + 1 if pid < 65535 else 1
                self.inflight += 1
                self.transport.write(self.head + PID_BYTES[pid] + self.props + payload)
            self.sent += 1
            self.flow.add_sent(1)
        nxt = self.t_start + (self.sent) / self.rate
        self.loop.call_later(max(0.0, nxt - time.monotonic()), self.tick)

    def data_received(self, data: bytes) -> None:
        if not self.running:
            self.buf = self.control_received(data)
            return
        buf = self.rest + data if self.rest else data
        n = len(buf)
        pos = 0
        busy = self.busy
        acked = 0
        while n - pos >= 2:
            end = pos + 2 + buf[pos + 1]  # PUBACK: Remaining Length 2..(v5) small
            if end > n:
                break
            if buf[pos] == 0x40:
                busy[buf[pos + 2] << 8 | buf[pos + 3]] = 0
                acked += 1
            pos = end
        self.rest = buf[pos:] if pos < n else b""
        if acked:
            self.acked += acked
            self.inflight -= acked
            if not self.rate:
                self.schedule()


# --------------------------------------------------------------------------- worker


async def open_client(proto: Client, host: str, port: int, src: str | None = None) -> Client:
    loop = asyncio.get_running_loop()
    if src is None:
        await loop.create_connection(lambda: proto, host, port)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((src, 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        await loop.create_connection(lambda: proto, sock=sock)
    await asyncio.wait_for(proto.send_connect(), 30)
    return proto


async def read_line(reader: asyncio.StreamReader) -> str:
    line = await reader.readline()
    if not line:
        raise SystemExit("coordinator went away")
    return line.decode().strip()


def emit(obj: dict[str, Any] | str) -> None:
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    sys.stdout.flush()


async def worker(spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    host, port, v5 = spec["host"], spec["port"], spec["v5"]
    tag = f"lg{os.getpid()}"
    if spec["scenario"] == "connect":
        await idle_worker(spec, reader, tag)
        return
    flow = Flow(spec["flow"], spec["fanout"], spec["index"], spec["nprocs"], spec["shm"])
    pkt_size = publish_head(spec["topic_example"], spec["sub_qos"], v5)[1]
    subs: list[Subscriber] = []
    for i, (flt, qos) in enumerate(spec["subs"]):
        s = Subscriber(f"{tag}-s{i}", v5, flow, pkt_size, parse_all=spec["rate"] > 0,
                       persistent=spec.get("persistent", False))
        await open_client(s, host, port)
        if s.persistent and s.ready is not None and s.ready.result().session_present:
            raise RuntimeError(f"{s.client_id}: a session of this id already exists")
        await asyncio.wait_for(s.send_subscribe(flt, qos), 30)
        s.qos0_fast = qos == 0 and not s.parse_all
        subs.append(s)
    pubs: list[Publisher] = []
    for i, topic in enumerate(spec["pubs"]):
        p = Publisher(f"{tag}-p{i}", v5, flow, topic, spec["pub_qos"], spec["window"],
                      spec["rate"])
        await open_client(p, host, port)
        pubs.append(p)
    for c in (*subs, *pubs):
        if c.buf:
            raise RuntimeError(f"{c.client_id}: unexpected bytes before the run")
    emit("READY")
    t_go = float((await read_line(reader)).split()[1])
    for s in subs:
        s.running = True
    await asyncio.sleep(max(0.0, t_go - time.monotonic()))
    for p in pubs:
        p.start()
    t0 = t_go + spec["warmup"]
    t1 = t0 + spec["duration"]
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))
    snap0 = (time.monotonic(), time.process_time(), sum(s.count for s in subs),
             sum(p.sent for p in pubs), [len(s.samples) for s in subs])
    await asyncio.sleep(max(0.0, t1 - time.monotonic()))
    snap1 = (time.monotonic(), time.process_time(), sum(s.count for s in subs),
             sum(p.sent for p in pubs), [len(s.samples) for s in subs])
    for p in pubs:
        p.stop()
    # Drain: until nothing arrived for 0.5 s (at most 5 s).
    t_end = time.monotonic() + 5.0
    while time.monotonic() < t_end:
        await asyncio.sleep(0.1)
        last = max((s.last_rx for s in subs), default=0.0)
        if time.monotonic() - max(last, snap1[0]) > 0.5:
            break
    lat = []
    for s, a, b in zip(subs, snap0[4], snap1[4], strict=True):
        lat.extend(s.samples[a:b])
    result = {
        "index": spec["index"],
        "elapsed": snap1[0] - snap0[0],
        "cpu": snap1[1] - snap0[1],
        "received": snap1[2] - snap0[2],
        "sent": snap1[3] - snap0[3],
        "total_sent": sum(p.sent for p in pubs),
        "total_received": sum(s.count for s in subs),
        "unacked": sum(p.sent - p.acked for p in pubs) if spec["pub_qos"] else 0,
        "stalls": flow.stalls,
        "lost_connections": sum(c.lost for c in (*subs, *pubs)),
        "unaligned": sum(1 for s in subs if s.qos0_fast and s.bytes % s.pkt_size),
        "latency_ns": lat,
    }
    for c in (*pubs, *subs):
        c.disconnect()
    await asyncio.sleep(0.05)
    if spec.get("persistent"):
        # Persistent subscribers leave a session (and its subscription) behind: discard
        # it (reconnect with a clean session, then DISCONNECT) so that a later scenario
        # against the same broker does not queue messages for it.
        for s in subs:
            c = Client(s.client_id, v5)
            with contextlib.suppress(Exception):
                await open_client(c, host, port)
                c.disconnect()
        await asyncio.sleep(0.05)
    emit(result)


def connect_idle(spec: dict[str, Any], tag: str) -> tuple[list[socket.socket], int, list[int],
                                                         list[int]]:
    """Open ``spec['idle']`` MQTT connections with plain non-blocking sockets and epoll
    (no asyncio: about 3x cheaper per connection), at most ``concurrency`` handshakes
    (TCP + CONNECT/CONNACK) in flight, started at most ``pace`` per second when given
    (a fleet connecting at a fixed rate); source addresses rotate over ``src_addrs``.
    Returns (connected sockets, errors, CONNECT sent -> CONNACK read in ns, TCP connect
    started -> CONNACK read in ns), the times of each connection that got its CONNACK
    (as this process saw them: with many handshakes in flight they include the wait
    for this process's own poll; with ``concurrency`` 1 they are the round trip)."""
    n, srcs, conc = spec["idle"], spec["src_addrs"], spec["concurrency"]
    version = 5 if spec["v5"] else 4
    # One CONNECT template; the client id has a fixed width, so only its digits change.
    template = encode_packet(
        Connect(client_id=f"{tag}-idle-000000", protocol_version=version,
                keepalive=spec["keepalive"]), version)
    cut = template.rindex(b"000000")
    pre, post = template[:cut], template[cut + 6 :]
    ep = select.epoll()
    # fd -> (sock, i, CONNECT sent at (ns; 0: not yet), connect started at (ns))
    pending: dict[int, tuple[socket.socket, int, int, int]] = {}
    done: list[socket.socket] = []
    connack_ns: list[int] = []
    handshake_ns: list[int] = []
    errors = 0
    nxt = 0
    addr = (spec["host"], spec["port"])
    epollin, epollout, epollerr = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR
    clock = time.perf_counter_ns

    def fail(fd: int) -> None:
        nonlocal errors
        sock = pending.pop(fd)[0]
        ep.unregister(fd)
        sock.close()
        errors += 1

    pace = spec.get("pace", 0.0)  # connections started per second (0: as fast as possible)
    interval_ns = int(1e9 / pace) if pace > 0 else 0
    t_first = clock()
    while nxt < n or pending:
        while nxt < n and len(pending) < conc:
            if interval_ns and clock() < t_first + nxt * interval_ns:
                break  # not yet this connection's turn
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((srcs[nxt % len(srcs)], 0))
            sock.setblocking(False)
            t_start = clock()
            rc = sock.connect_ex(addr)
            if rc not in (0, errno.EINPROGRESS):
                sock.close()
                errors += 1
            else:
                pending[sock.fileno()] = (sock, nxt, 0, t_start)
                ep.register(sock.fileno(), epollout)
            nxt += 1
        timeout = 1.0
        if interval_ns and nxt < n and len(pending) < conc:
            timeout = max(0.0, (t_first + nxt * interval_ns - clock()) / 1e9)
        for fd, ev in ep.poll(timeout):
            sock, i, sent, t_start = pending[fd]
            if ev & epollerr:
                fail(fd)
            elif not sent:
                sock.send(pre + b"%06d" % i + post)
                pending[fd] = (sock, i, clock(), t_start)
                ep.modify(fd, epollin)
            else:
                data = sock.recv(64)
                if data[:1] == b"\x20" and len(data) >= 4 and data[3] == 0:
                    t_end = clock()
                    connack_ns.append(t_end - sent)
                    handshake_ns.append(t_end - t_start)
                    ep.unregister(fd)
                    del pending[fd]
                    done.append(sock)
                else:
                    fail(fd)
    ep.close()
    return done, errors, connack_ns, handshake_ns


async def idle_worker(spec: dict[str, Any], reader: asyncio.StreamReader, tag: str) -> None:
    """``connect``: open ``spec['idle']`` idle clients, report, hold them until told to
    release; then DISCONNECT and close them."""
    raise_nofile()
    emit("READY")
    t_go = float((await read_line(reader)).split()[1])
    await asyncio.sleep(max(0.0, t_go - time.monotonic()))
    t_start = time.monotonic()
    c0 = time.process_time()
    socks, errors, connack_ns, handshake_ns = connect_idle(spec, tag)
    t_end = time.monotonic()
    emit({"index": spec["index"], "t_start": t_start, "t_end": t_end, "connected": len(socks),
          "errors": errors, "cpu": time.process_time() - c0,
          "connack_us": [round(x / 1000, 1) for x in connack_ns],
          "handshake_us": [round(x / 1000, 1) for x in handshake_ns]})
    await read_line(reader)  # RELEASE
    # Still connected? A closed peer shows up as a readable socket with b"".
    lost = 0
    disconnect = encode_packet(Disconnect(), 5 if spec["v5"] else 4)
    for s in socks:
        try:
            if s.recv(64) == b"":
                lost += 1
        except BlockingIOError:
            pass
        except OSError:
            lost += 1
        with contextlib.suppress(OSError):
            s.send(disconnect)
        s.close()
    emit({"lost_while_idle": lost})


# --------------------------------------------------------------------------- coordinator


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds user+system, RSS bytes) of ``pid`` from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    try:
        # Nanoseconds on CPU of every live thread (schedstat): /proc/PID/stat counts
        # clock ticks (10 ms), 1 µs per connection over a 10,000-client connect run.
        cpu = 0.0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                cpu += int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
    return cpu, rss


def proc_user_sys(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` (utime, stime of /proc/PID/stat: clock
    ticks, 10 ms; over a 10,000-client connect run about ±4 % each)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def proc_write_bytes(pid: int) -> int:
    """Bytes ``pid`` caused to be written to storage (``write_bytes`` of /proc/PID/io)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Split the scenario's clients over ``args.procs`` worker processes."""
    sc = args.scenario
    nprocs = max(1, args.procs)
    base = {
        "scenario": sc, "host": args.host, "port": args.port, "v5": args.mqtt5,
        "warmup": args.warmup, "duration": args.duration, "window": args.window,
        "flow": args.flow or DEFAULT_FLOW.get(sc, 1000), "nprocs": nprocs, "rate": 0.0, "fanout": 1,
        "persistent": args.persistent,
    }
    specs = [dict(base, index=i, pubs=[], subs=[]) for i in range(nprocs)]
    if sc == "connect":
        n = args.clients
        for i, s in enumerate(specs):
            s["idle"] = n // nprocs + (1 if i < n % nprocs else 0)
            s["src_addrs"] = [f"127.0.0.{2 + k}" for k in range(args.src_addrs)]
            s["concurrency"] = max(1, args.concurrency // nprocs)
            s["keepalive"] = args.keepalive
            s["pace"] = args.connect_rate / nprocs
        return specs
    if sc in ("qos0", "qos1", "latency"):
        qos = 0 if sc == "qos0" else 1
        topic = "bench/one/to/one"
        specs[0]["subs"] = [(topic, qos)]
        specs[min(1, nprocs - 1)]["pubs"] = [topic]
        for s in specs:
            s.update(pub_qos=qos, sub_qos=qos, topic_example=topic)
            if sc == "latency":
                s["rate"] = args.rate
    elif sc == "fanout":
        topic = "bench/fan/out"
        specs[0]["pubs"] = [topic]
        for i in range(args.fanout):
            specs[i % nprocs]["subs"].append((topic, 0))
        for s in specs:
            s.update(pub_qos=0, sub_qos=0, topic_example=topic, fanout=args.fanout)
    elif sc == "fanin":
        specs[0]["subs"] = [("#", 1)]
        for i in range(args.fanin):
            specs[i % nprocs]["pubs"].append(f"bench/in/{i:05d}")
        for s in specs:
            s.update(pub_qos=1, sub_qos=1, topic_example="bench/in/00000")
    return specs


def pct(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[i] / 1e6  # ms


def run(args: argparse.Namespace) -> dict[str, Any]:
    specs = plan(args)
    shm = None
    if len(specs) > 1:
        fd, shm = tempfile.mkstemp(prefix="loadgen-", suffix=".shm")
        os.write(fd, b"\0" * 16 * len(specs))
        os.close(fd)
    procs: list[subprocess.Popen[str]] = []
    try:
        for spec in specs:
            spec["shm"] = shm
            procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "worker", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            ))
        for p in procs:
            line = p.stdout.readline().strip()  # type: ignore[union-attr]
            if line != "READY":
                raise RuntimeError(f"worker failed to start: {line!r}")
        pid = args.broker_pid
        stat = (lambda: proc_stat(pid)) if pid else (lambda: (0.0, 0))
        t_go = time.monotonic() + 0.05
        if args.scenario == "connect":
            return run_connect(args, procs, t_go, stat)
        for p in procs:
            p.stdin.write(f"GO {t_go}\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        t0 = t_go + args.warmup
        time.sleep(max(0.0, t0 - time.monotonic()))
        b0, m0, w0 = time.monotonic(), stat(), proc_write_bytes(pid) if pid else 0
        time.sleep(max(0.0, t0 + args.duration - time.monotonic()))
        b1, m1, w1 = time.monotonic(), stat(), proc_write_bytes(pid) if pid else 0
        results = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stdin.close()  # type: ignore[union-attr]
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if shm:
            os.unlink(shm)
    elapsed = max(r["elapsed"] for r in results)
    fanout = specs[0]["fanout"]
    received = sum(r["received"] for r in results)
    sent = sum(r["sent"] for r in results)
    lat = sorted(x for r in results for x in r["latency_ns"])
    total_sent = sum(r["total_sent"] for r in results)
    total_recv = sum(r["total_received"] for r in results)
    broker_cpu = (m1[0] - m0[0]) / (b1 - b0) * 100 if args.broker_pid else None
    out = {
        "scenario": args.scenario,
        "mqtt": 5 if args.mqtt5 else 4,
        "rate": received / elapsed,
        "sent_rate": sent / elapsed * fanout,
        "unit": UNITS[args.scenario],
        "loss": total_sent * fanout - total_recv,
        "loss_pct": 100.0 * (total_sent * fanout - total_recv) / max(1, total_sent * fanout),
        "stalls": sum(r["stalls"] for r in results),
        "unacked": sum(r["unacked"] for r in results),
        "lost_connections": sum(r["lost_connections"] for r in results),
        "unaligned": sum(r["unaligned"] for r in results),
        "latency_ms": {"n": len(lat), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                       "p999": pct(lat, 0.999), "max": pct(lat, 1.0)},
        "gen_cpu_pct": sum(r["cpu"] for r in results) / elapsed * 100,
        "gen_procs": len(specs),
        "broker_cpu_pct": broker_cpu,
        "broker_rss_kib": m1[1] // 1024 if args.broker_pid else None,
        # storage writes (RocksDB WAL + flushes) over the window, MiB/s
        "broker_write_mib_s": (w1 - w0) / (b1 - b0) / 2**20 if args.broker_pid else None,
        "persistent_subscribers": args.persistent,
    }
    if args.scenario == "latency":
        out["rate"] = out["latency_ms"]["p99"]
        out["msg_rate"] = received / elapsed
    return out


def run_connect(args: argparse.Namespace, procs: list[subprocess.Popen[str]], t_go: float,
                stat: Any) -> dict[str, Any]:
    time.sleep(0.2)
    pid = args.broker_pid
    c0, rss0 = stat()
    us0 = proc_user_sys(pid) if pid else (0.0, 0.0)
    for p in procs:
        p.stdin.write(f"GO {t_go}\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    res = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    c1, _ = stat()
    us1 = proc_user_sys(pid) if pid else (0.0, 0.0)
    time.sleep(args.settle)
    _, rss1 = stat()
    for p in procs:
        p.stdin.write("RELEASE\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    tail = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    connected = sum(r["connected"] for r in res)
    span = max(r["t_end"] for r in res) - min(r["t_start"] for r in res)
    connack = sorted(x for r in res for x in r["connack_us"])
    handshake = sorted(x for r in res for x in r["handshake_us"])
    per_conn = 1e6 / max(1, connected)
    return {
        "scenario": "connect",
        "mqtt": 5 if args.mqtt5 else 4,
        "rate": connected / span,
        "unit": "conn/s",
        "connected": connected,
        "errors": sum(r["errors"] for r in res),
        "seconds": span,
        "lost_while_idle": sum(t["lost_while_idle"] for t in tail),
        "concurrency": args.concurrency,
        "gen_cpu_pct": sum(r["cpu"] for r in res) / span * 100,
        "gen_procs": len(procs),
        "broker_cpu_pct": (c1 - c0) / span * 100 if args.broker_pid else None,
        "broker_rss_before_kib": rss0 // 1024 if args.broker_pid else None,
        "broker_rss_after_kib": rss1 // 1024 if args.broker_pid else None,
        "kib_per_conn": (rss1 - rss0) / 1024 / max(1, connected) if args.broker_pid else None,
        # broker CPU per connection: all of it (schedstat), and user / system (ticks)
        "broker_cpu_us_per_conn": (c1 - c0) * per_conn if pid else None,
        "broker_user_us_per_conn": (us1[0] - us0[0]) * per_conn if pid else None,
        "broker_sys_us_per_conn": (us1[1] - us0[1]) * per_conn if pid else None,
        # CONNECT written -> CONNACK read, and TCP connect started -> CONNACK read (µs)
        "connack_us": {"p50": _pct_us(connack, 0.5), "p90": _pct_us(connack, 0.9),
                       "p99": _pct_us(connack, 0.99), "max": _pct_us(connack, 1.0)},
        "handshake_us": {"p50": _pct_us(handshake, 0.5), "p99": _pct_us(handshake, 0.99)},
    }


def _pct_us(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))]


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "worker":
        spec = json.loads(sys.argv[2])
        if spec.get("rate", 0) > 0:
            # Fixed-rate (latency) workers run on the stdlib loop: uvloop rounds
            # call_later delays to whole milliseconds and runs a delay under 0.5 ms as
            # call_soon (uvloop/loop.pyx, call_later), so the 1 ms sender spun for the
            # last half millisecond before every send and took a vCPU from the broker
            # (mosquitto's p99 read ~0.5 ms instead of ~0.15 ms; see docs/performance.md).
            asyncio.run(worker(spec))
            return
        try:
            import uvloop  # noqa: PLC0415
            uvloop.run(worker(spec))
        except ImportError:
            asyncio.run(worker(spec))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one scenario and print a JSON result")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=1883)
    r.add_argument("--scenario", choices=SCENARIOS, required=True)
    r.add_argument("--mqtt5", action="store_true")
    r.add_argument("--procs", type=int, default=1, help="worker processes (default 1)")
    r.add_argument("--warmup", type=float, default=1.0)
    r.add_argument("--duration", type=float, default=5.0)
    r.add_argument("--window", type=int, default=100,
                   help="unacknowledged QoS 1 PUBLISHes per publisher (default 100)")
    r.add_argument("--flow", type=int, default=0,
                   help="deliveries in flight end to end, all publishers together "
                        f"(default per scenario: {DEFAULT_FLOW})")
    r.add_argument("--fanout", type=int, default=100)
    r.add_argument("--fanin", type=int, default=100)
    r.add_argument("--rate", type=float, default=1000.0, help="latency scenario msg/s")
    r.add_argument("--clients", type=int, default=10000, help="connect scenario")
    r.add_argument("--concurrency", type=int, default=64, help="CONNECTs in flight")
    r.add_argument("--connect-rate", type=float, default=0.0,
                   help="connect: new connections per second (default 0: as fast as the "
                        "concurrency allows)")
    r.add_argument("--src-addrs", type=int, default=8, help="source addresses 127.0.0.2..")
    r.add_argument("--keepalive", type=int, default=60, help="idle clients' keepalive")
    r.add_argument("--settle", type=float, default=1.0, help="s before the RSS sample")
    r.add_argument("--broker-pid", type=int, default=0, help="sample its CPU and RSS")
    r.add_argument("--persistent", action="store_true",
                   help="subscribers keep a session: Clean Session 0 (v3.1.1) or Clean Start 0 "
                        f"+ Session Expiry {SESSION_EXPIRY} s (v5), discarded after the run")
    args = ap.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
