"""The receiving node's read path (issue 14, i14-ratio6: iotbroker/cluster/natsread.py).

``BatchParser`` stands in for nats-py's protocol parser: it must hand on exactly what
nats-py's own ``Parser`` hands on, in the same order, however the byte stream is cut
into reads — the node's subscription's plain ``MSG``\\ s to ``deliver``, everything
else to the client's ``_process_msg``/``_process_ping``/... as before. Differential
tests against the installed nats-py's parser (a fake client records the calls), and
integration tests with real nodes on a real NATS cluster: routed with the hook, and
with nats-py's own path (another nats-py version, or asked for)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio import client as nats_client
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from iotbroker.cluster import natsread
from iotbroker.cluster.natsread import BatchParser
from iotbroker.cluster.node import NATS_READ_ENV
from tests.cluster.conftest import log_tails
from tests.cluster.test_live_routing import wait_until_routed
from tests.helpers.broker_process import BrokerProcess
from tests.interop.test_paho import Paho

OURS = 7  # the node's subscription sid


class _Queue:
    def __init__(self) -> None:
        self.items = 0

    def empty(self) -> bool:
        return self.items == 0


class _Sub:
    def __init__(self) -> None:
        self._pending_queue = _Queue()


class FakeClient:
    """What the parsers call on nats-py's client, recorded in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._subs: dict[int, _Sub] = {OURS: _Sub(), 3: _Sub()}
        self.stats = {"in_msgs": 0, "in_bytes": 0}
        self.ps: Parser | None = None
        self.reset_on_ping = False

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                           headers: bytes | None) -> None:
        assert isinstance(data, bytes)
        # the stock parser's messages of our sid are what deliver must get
        kind = "ours" if sid == OURS and not reply and headers is None else "msg"
        self.events.append((kind, sid, bytes(subject), bytes(reply), data, headers))

    def deliver(self, data: bytes, subject: bytes) -> None:
        assert type(data) is bytes
        self.events.append(("ours", OURS, bytes(subject), b"", data, None))

    async def _process_ping(self) -> None:
        self.events.append(("ping",))
        if self.reset_on_ping and self.ps is not None:
            self.ps.reset()  # as a reconnect does (Client._process_op_err)

    async def _process_pong(self) -> None:
        self.events.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.events.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.events.append(("err", err))

    async def _error_cb(self, exc: Exception) -> None:
        self.events.append(("error", repr(exc)))


def _stream(rng: random.Random, n: int = 60) -> bytes:
    """A server's byte stream: our batches (large and small), other subscriptions'
    messages, with reply subjects, JetStream's HMSGs with headers, PING, PONG, +OK,
    INFO; payloads holding CRLF and protocol words."""
    out = bytearray()
    for i in range(n):
        kind = rng.randrange(10)
        size = rng.choice([0, 1, 2, 5, 100, 4000, 70_000])
        body = bytes(rng.randrange(256) for _ in range(min(size, 64))) * (size // 64 or 1)
        body = body[:size]
        if i % 7 == 3:
            body = (b"\r\nMSG x 7 3\r\nPING\r\n" + body)[:max(size, 20)]
        if kind < 5:
            out += b"MSG t1.node.b_1 %d %d\r\n%s\r\n" % (OURS, len(body), body)
        elif kind == 5:
            out += b"MSG other.subject 3 _INBOX.abc %d\r\n%s\r\n" % (len(body), body)
        elif kind == 6:
            hdr = b"NATS/1.0\r\nKV-Operation: DEL\r\n\r\n"
            out += b"HMSG $KV.b.k 3 %d %d\r\n%s%s\r\n" % (len(hdr), len(hdr) + len(body),
                                                         hdr, body)
        elif kind == 7:
            out += b"PING\r\n"
        elif kind == 8:
            out += rng.choice([b"PONG\r\n", b"+OK\r\n"])
        else:
            out += b"INFO " + json.dumps({"server_id": "x", "n": i}).encode() + b"\r\n"
    return bytes(out)


def _cuts(rng: random.Random, data: bytes, mode: str) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    reads = []
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 2, 3, 7, 13, 100, 4096, 32768, 1 << 20]) if mode == "mixed" else (
            rng.randrange(1, 70_000))
        reads.append(data[pos : pos + n])
        pos += n
    return reads


async def _feed(parser: Parser, reads: list[bytes]) -> None:
    for read in reads:
        await parser.parse(read)


def _both(reads: list[bytes]) -> tuple[FakeClient, FakeClient, BatchParser]:
    stock_nc, ours_nc = FakeClient(), FakeClient()
    stock = Parser(stock_nc)
    ours = BatchParser(ours_nc, ours_nc.deliver)
    ours.sid = OURS
    stock_nc.ps, ours_nc.ps = stock, ours
    asyncio.run(_feed(stock, reads))
    asyncio.run(_feed(ours, reads))
    return stock_nc, ours_nc, ours


def test_the_tested_nats_py_is_installed() -> None:
    """The hook is in use with the nats-py the project installs (a new nats-py: test
    this file's parser against it, then add it to TESTED_VERSIONS)."""
    assert natsread.usable(), nats_client.__version__


@pytest.mark.parametrize("mode", ["whole", "mixed", "random"])
@pytest.mark.parametrize("seed", range(6))
def test_hands_on_what_nats_py_parser_does_in_order(seed: int, mode: str) -> None:
    """Every message, header and control line nats-py's parser hands its client, this
    one hands on too, in the same order (our subscription's plain MSGs to
    ``deliver``), however the stream is cut into reads; nothing is left buffered at
    the end of the stream, as with nats-py's."""
    rng = random.Random(seed)
    data = _stream(rng)
    stock_nc, ours_nc, ours = _both(_cuts(rng, data, mode))
    assert ours_nc.events == stock_nc.events
    assert sum(1 for e in ours_nc.events if e[0] == "ours") == ours.delivered > 0
    assert ours.buf == bytearray() and ours.state == 1
    # in_msgs/in_bytes as nats-py's _process_msg counts them (ours only, here)
    assert ours_nc.stats["in_msgs"] == ours.delivered
    assert ours_nc.stats["in_bytes"] == sum(len(e[4]) for e in ours_nc.events
                                            if e[0] == "ours")


def test_byte_by_byte() -> None:
    """The stream one byte per read (each control line and payload completed across
    reads): the same as nats-py's parser."""
    rng = random.Random(99)
    data = _stream(rng, 25)
    stock_nc, ours_nc, _ = _both(_cuts(rng, data, "bytes"))
    assert ours_nc.events == stock_nc.events


def test_other_subscription_or_queued_first_goes_to_the_client() -> None:
    """A MSG of our sid while the subscription's queue still holds one (it came the
    public way: before the sid was known) goes the public way too, so the callback
    keeps the order; a sid the client no longer holds (unsubscribed) is left to the
    client (which drops it)."""
    nc = FakeClient()
    p = BatchParser(nc, nc.deliver)
    p.sid = OURS
    nc._subs[OURS]._pending_queue.items = 1
    asyncio.run(p.parse(b"MSG s 7 2\r\nab\r\n"))
    assert nc.events == [("ours", OURS, b"s", b"", b"ab", None)] and p.delivered == 0
    nc._subs[OURS]._pending_queue.items = 0
    del nc._subs[OURS]
    asyncio.run(p.parse(b"MSG s 7 2\r\ncd\r\n"))
    assert p.delivered == 0 and nc.stats["in_msgs"] == 0


def test_reset_mid_read_drops_the_rest_as_nats_py_does() -> None:
    """A reconnect resets the parser while it hands a line on (here: at a PING): the
    rest of that read is dropped, as nats-py's parser drops it, and the next read
    (the new connection's) is parsed from a clean state."""
    stream = (b"MSG s 7 1\r\na\r\nPING\r\nMSG s 7 1\r\nb\r\n")
    for make in (Parser, lambda nc: BatchParser(nc, nc.deliver)):
        nc = FakeClient()
        nc.reset_on_ping = True
        p = make(nc)
        if isinstance(p, BatchParser):
            p.sid = OURS
        nc.ps = p
        asyncio.run(p.parse(stream))
        asyncio.run(p.parse(b"MSG s 7 1\r\nc\r\n"))
        assert [e[4] if e[0] == "ours" else e[0] for e in nc.events] == [
            b"a", "ping", b"c"], type(p)


def test_deliver_errors_go_to_the_error_callback() -> None:
    """An exception out of ``deliver`` goes to the client's error callback (as nats-py
    does with a subscription callback's), and the next message is read."""
    nc = FakeClient()
    seen: list[bytes] = []

    def deliver(data: bytes, subject: bytes) -> None:
        seen.append(data)
        if data == b"x":
            raise ValueError("boom")

    p = BatchParser(nc, deliver)
    p.sid = OURS
    asyncio.run(p.parse(b"MSG s 7 1\r\nx\r\nMSG s 7 1\r\ny\r\n"))
    assert seen == [b"x", b"y"]
    assert nc.events == [("error", repr(ValueError("boom")))]


@pytest.mark.parametrize("stream", [b"FOO bar\r\n", b"MSG s 7 x\r\n"])
def test_protocol_errors_as_nats_py(stream: bytes) -> None:
    """What nats-py's parser refuses (an unknown or malformed line), this one refuses
    with the same ProtocolError."""
    for p in (Parser(FakeClient()), BatchParser(FakeClient(), lambda d, s: None)):
        with pytest.raises(ProtocolError):
            asyncio.run(p.parse(stream))


def test_not_used_with_another_nats_py(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another nats-py version: not used (the node subscribes with a callback)."""
    monkeypatch.setattr(nats_client, "__version__", "99.0.0")
    assert not natsread.usable()


# ---------------------------------------------------------------- real nodes
def _route_across(make_node: Callable[..., BrokerProcess], clients: Callable[..., Paho]
                  ) -> tuple[BrokerProcess, BrokerProcess]:
    a, b = make_node("a", servers=[0]), make_node("b", servers=[1])
    sub = clients(b, "sub")
    sub.subscribe("dev/#", qos=0)
    pub = clients(a, "pub")
    wait_until_routed(pub, sub, "dev/probe", qos=0, nodes=(a, b))
    sent = [(f"dev/{i % 50}/t", b"%d" % i + b"\r\nMSG x 7 2\r\n" * (i % 3))
            for i in range(500)]
    for topic, payload in sent:
        pub.publish(topic, payload, qos=0)
    pub.publish("dev/end", b"", qos=0)
    # [MQTT-4.6.0-5]: one publisher's messages arrive in the order published
    got = [(m.topic, m.payload) for m in sub.receive_until("dev/end")]
    assert got == sent, log_tails(a, b)
    return a, b


def test_nodes_route_through_the_hook(make_node: Callable[..., BrokerProcess],
                                      clients: Callable[..., Paho]) -> None:
    """Two real nodes: b reads a's batches through natsread.py (its log says so) and
    delivers every message, in order [MQTT-4.6.0-5]."""
    _, b = _route_across(make_node, clients)
    assert "cluster: batches read by natsread.py" in b.log_text()


def test_nodes_route_through_nats_py_own_path(monkeypatch: pytest.MonkeyPatch,
                                             make_node: Callable[..., BrokerProcess],
                                             clients: Callable[..., Paho]) -> None:
    """The same with nats-py's own read path (IOTBROKER_CLUSTER_NATS_READ=nats)."""
    monkeypatch.setenv(NATS_READ_ENV, "nats")
    _, b = _route_across(make_node, clients)
    assert "cluster: batches read by nats-py's own path" in b.log_text()
