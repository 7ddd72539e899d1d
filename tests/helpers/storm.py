"""A reconnect storm of persistent sessions over a cluster's nodes (issue 14,
docs/cluster.md "Session ownership" and "Sessions move"); used by
tests/cluster/test_storm.py and benchmarks/cluster_storm.py.

``count`` MQTT 5.0 clients (``storm-<i>``, Session Expiry 3600) each subscribe
``storm/<i>`` at QoS 1 on a random node and disconnect; one QoS 1 message is published
to each while it is offline. Then, ``rounds`` times, **all of them reconnect at once**
(Clean Start 0) to random nodes, a fraction of the ids twice at once on two different
nodes; the connections of the previous round are left open (the new ones take them
over, on the same node or across nodes). At the end:

* exactly one live connection per client id (the others got DISCONNECT 0x8E Session
  taken over [MQTT-3.1.4-3] and were closed; a PINGREQ is answered on the live one);
* the live one's CONNACK said Session Present 1 [MQTT-3.2.2-2] (the session was found
  wherever it was, [MQTT-3.1.2-5]);
* its subscription delivers: a message published to each ``storm/<i>`` afterwards
  arrives on the live connection;
* none lost: the message queued while offline reached one of the id's connections.

A CONNECT refused with 0x89 Server busy (the node could not make the session ready
within its RESUME_TIMEOUT) is tried again 0.5–1.5 s later, as a device would.

One asyncio client per connection, written with the broker's codec (real sockets).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field

from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
)

V5 = 5


@dataclass(eq=False)
class Conn:
    """One MQTT 5.0 connection of the storm (a reader task acknowledges PUBLISHes)."""

    client_id: str
    node: int
    round: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    connack: ConnAck | None = None
    connect_seconds: float = 0.0
    closed: bool = False
    disconnect_reason: int | None = None
    payloads: list[bytes] = field(default_factory=list)
    control: asyncio.Queue[Packet] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        return self.connack is not None and self.connack.reason_code == 0 and not self.closed

    def send(self, packet: Packet) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode_packet(packet, V5))

    async def read_loop(self, framer: Framer) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for first, body in framer.feed(data):
                    packet = decode_packet(first, body, V5)
                    if isinstance(packet, Publish):
                        self.payloads.append(bytes(packet.payload))
                        if packet.qos == 1:
                            self.send(PubAck(packet.packet_id or 0))
                        elif packet.qos == 2:
                            self.send(PubRec(packet.packet_id or 0))
                    elif isinstance(packet, PubRel):
                        self.send(PubComp(packet.packet_id))
                    elif isinstance(packet, Disconnect):
                        self.disconnect_reason = packet.reason_code
                    else:
                        self.control.put_nowait(packet)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed = True
            self.control.put_nowait(Disconnect(0))  # wakes a waiter

    async def expect(self, kind: type[Packet], timeout: float) -> Packet:
        async with asyncio.timeout(timeout):
            while True:
                packet = await self.control.get()
                if isinstance(packet, kind):
                    return packet
                if self.closed:
                    raise ConnectionError(f"{self.client_id}: closed waiting for {kind}")

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.writer.close()


async def open_conn(address: tuple[str, int], node: int, client_id: str, *, clean: bool,
                    expiry: int, round_: int, timeout: float) -> Conn:
    """Connect, send CONNECT, wait for the CONNACK (raises on a refusal or timeout)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout)
    conn = Conn(client_id, node, round_, reader, writer)
    conn.task = asyncio.get_running_loop().create_task(conn.read_loop(Framer(1 << 20)))
    conn.send(Connect(client_id=client_id, protocol_version=V5, clean_start=clean,
                      keepalive=600, properties=Properties(session_expiry_interval=expiry)))
    ack = await conn.expect(ConnAck, timeout)
    assert isinstance(ack, ConnAck)
    conn.connack = ack
    conn.connect_seconds = time.perf_counter() - t0
    if ack.reason_code:
        conn.close()
        if ack.reason_code == 0x89:
            raise BusyError(client_id)
        raise ConnectionError(f"{client_id}: CONNACK 0x{ack.reason_code:02x}")
    return conn


class BusyError(ConnectionError):
    """CONNACK 0x89 Server busy: try again later (MQTT 5.0 §3.2.2.2)."""


async def publish_all(conn: Conn, messages: list[tuple[str, bytes]], timeout: float,
                      window: int = 500) -> None:
    """QoS 1, pipelined ``window`` at a time (within the broker's Receive Maximum);
    returns once every PUBACK came (reason < 0x80)."""
    for start in range(0, len(messages), window):
        chunk = messages[start:start + window]
        for k, (topic, payload) in enumerate(chunk, start):
            conn.send(Publish(topic, payload, 1, False, False, k % 65535 + 1))
        for _ in chunk:
            ack = await conn.expect(PubAck, timeout)
            assert isinstance(ack, PubAck) and ack.reason_code < 0x80, ack


def _describe(conns: list[Conn]) -> list[tuple[int, int, int]]:
    return [(c.node, c.round, int(c.connack is not None and c.connack.session_present))
            for c in conns]


@dataclass
class StormResult:
    count: int
    rounds: int
    connects: int = 0
    #: per round: CONNECT -> CONNACK seconds of every connection of the round
    connect_times: list[list[float]] = field(default_factory=list)
    #: per round: seconds from its first CONNECT to its last CONNACK
    round_seconds: list[float] = field(default_factory=list)
    settle_seconds: float = 0.0
    deliver_seconds: float = 0.0
    total_seconds: float = 0.0
    #: connections whose CONNACK said Session Present 0 (any round)
    not_present: int = 0
    #: CONNECTs refused with 0x89 Server busy (and tried again)
    busy: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"storm: {self.count} persistent sessions on 3 nodes, {self.rounds} rounds, "
                 f"{self.connects} CONNECTs, total {self.total_seconds:.1f} s"]
        for r, (times, spent) in enumerate(zip(self.connect_times, self.round_seconds,
                                               strict=True)):
            t = sorted(times)
            if t:
                lines.append(
                    f"  round {r + 1}: {len(t)} CONNECTs at once, all CONNACKed in "
                    f"{spent:.2f} s; CONNECT->CONNACK p50 {statistics.median(t) * 1000:.0f} ms "
                    f"p99 {t[min(len(t) - 1, int(len(t) * 0.99))] * 1000:.0f} ms "
                    f"max {t[-1] * 1000:.0f} ms")
        lines.append(f"  settled to one live connection per id in {self.settle_seconds:.2f} s;"
                     f" a message to each of the {self.count} delivered in "
                     f"{self.deliver_seconds:.2f} s; Session Present 0: {self.not_present};"
                     f" refused 0x89 and tried again: {self.busy}; errors: {len(self.errors)}")
        return "\n".join(lines)


async def run_storm(addresses: list[tuple[str, int]], count: int, rounds: int = 3,
                    twice: float = 0.1, seed: int = 14, timeout: float = 30.0,
                    setup_concurrency: int = 100) -> StormResult:
    """The storm of the module docstring; what went wrong is in ``errors``."""
    rng = random.Random(seed)
    n = len(addresses)
    result = StormResult(count, rounds)
    started = time.perf_counter()
    ids = [f"storm-{i}" for i in range(count)]
    every: dict[str, list[Conn]] = {c: [] for c in ids}
    errors = result.errors

    async def setup(i: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            node = rng.randrange(n)
            conn = await open_conn(addresses[node], node, ids[i], clean=True, expiry=3600,
                                   round_=0, timeout=timeout)
            conn.send(Subscribe(1, [Subscription(f"storm/{i}", 1)]))
            ack = await conn.expect(SubAck, timeout)
            assert isinstance(ack, SubAck) and ack.reason_codes == [1], ack
            conn.send(Disconnect(0))
            await conn.writer.drain()
            conn.close()

    gate = asyncio.Semaphore(setup_concurrency)
    await asyncio.gather(*(setup(i, gate) for i in range(count)))
    await asyncio.sleep(1.0)  # the records are written after the turn (ms)
    pub = await open_conn(addresses[0], 0, "storm-pub", clean=True, expiry=0, round_=0,
                          timeout=timeout)
    await publish_all(pub, [(f"storm/{i}", f"offline-{i}".encode()) for i in range(count)],
                      timeout)

    async def one(client_id: str, node: int, round_: int) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await open_conn(addresses[node], node, client_id, clean=False,
                                       expiry=3600, round_=round_, timeout=timeout)
                break
            except BusyError:
                # 0x89 Server busy: the session was not ready in time; as a device
                # would, try again a little later (the session must still be there).
                result.busy += 1
                if time.monotonic() > deadline:
                    errors.append(f"round {round_}: {client_id} on node {node}: still "
                                  f"busy after {timeout:.0f} s")
                    return
                await asyncio.sleep(0.5 + rng.random())
            except Exception as exc:
                errors.append(f"round {round_}: {client_id} on node {node}: {exc!r}")
                return
        every[client_id].append(conn)
        if conn.connack is not None and not conn.connack.session_present:
            result.not_present += 1

    for round_ in range(1, rounds + 1):
        plan: list[tuple[str, int]] = []
        for client_id in ids:
            plan.append((client_id, rng.randrange(n)))
        for client_id in rng.sample(ids, int(count * twice)):
            first = next(node for c, node in plan if c == client_id)
            plan.append((client_id, (first + 1 + rng.randrange(n - 1)) % n))
        rng.shuffle(plan)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(c, node, round_) for c, node in plan))
        result.round_seconds.append(time.perf_counter() - t0)
        result.connects += len(plan)
        result.connect_times.append([c.connect_seconds for conns in every.values()
                                     for c in conns if c.round == round_])

    # Settle: takeovers across nodes are told after the claims (a few ms each).
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(sum(c.live for c in every[cid]) == 1 for cid in ids):
            break
        await asyncio.sleep(0.1)
    result.settle_seconds = time.perf_counter() - t0
    live: dict[str, Conn] = {}
    for cid in ids:
        alive = [c for c in every[cid] if c.live]
        if len(alive) != 1:
            errors.append(f"{cid}: {len(alive)} live connections "
                          f"(node, round, present: {_describe(alive)}; all: "
                          f"{_describe(every[cid])}) [MQTT-3.1.4-2]")
            continue
        live[cid] = alive[0]
        assert alive[0].connack is not None
        if not alive[0].connack.session_present:
            errors.append(f"{cid}: its live connection got Session Present 0 [MQTT-3.2.2-2]")
    # The live ones answer (PINGREQ -> PINGRESP).
    for conn in live.values():
        conn.send(PingReq())

    async def pong(conn: Conn) -> None:
        try:
            await conn.expect(PingResp, timeout)
        except Exception as exc:
            errors.append(f"{conn.client_id}: no PINGRESP on its live connection: {exc!r}")

    await asyncio.gather(*(pong(c) for c in live.values()))

    # Each session's subscription delivers on its live connection.
    t0 = time.perf_counter()
    await publish_all(pub, [(f"storm/{i}", f"final-{i}".encode()) for i in range(count)],
                      timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(f"final-{cid.removeprefix('storm-')}".encode() in conn.payloads
               for cid, conn in live.items()):
            break
        await asyncio.sleep(0.1)
    result.deliver_seconds = time.perf_counter() - t0
    for i, cid in enumerate(ids):
        conn = live.get(cid)
        if conn is not None and f"final-{i}".encode() not in conn.payloads:
            errors.append(f"{cid}: the message published after the storm did not arrive "
                          f"on its live connection (node {conn.node}; all: "
                          f"{_describe(every[cid])})")
        if not any(f"offline-{i}".encode() in c.payloads for c in every[cid]):
            errors.append(f"{cid}: the message queued while it was offline never arrived")
    for conns in every.values():
        for c in conns:
            c.close()
    pub.close()
    result.total_seconds = time.perf_counter() - started
    return result
