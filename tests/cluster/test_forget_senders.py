"""A receiving node forgets the per-sender state of dead sending processes (issue 14,
i14-forget; docs/cluster.md, "Forgetting dead senders").

Every node keeps, per sending *process* (``<node_name>/<random>``: a restarted node is
a new sender), a ``wire.Dedup`` window (up to 65,536 seqs) and a ``wire.LiveOrder``.
Once a sender has been silent (no heartbeat) for longer than max(FORGET_SECONDS, the
QoS stream's duplicate window) and this node's stream reader has routed past the
stream's last sequence (so no stream copy of its writes is left to route), both go.

Real processes: three nats-servers, two iotbroker nodes, a raw MQTT 5 publisher and a
persistent subscriber. FORGET_SECONDS is lowered through its environment override
(``IOTBROKER_CLUSTER_FORGET_SECONDS``) and ``cluster.qos_stream.duplicate_window`` to
1 s, so the bound is NODE_TTL (3 s) and the test does not wait a minute.
"""

from __future__ import annotations

import asyncio
import re
import time
from types import SimpleNamespace
from typing import Any

import pytest

from iotbroker.cluster import wire
from iotbroker.cluster.node import FORGET_ENV, FORGET_SECONDS, ClusterNode, forget_seconds
from iotbroker.cluster.wills import NODE_TTL, Wills
from iotbroker.codec.packets import PubAck
from tests.cluster.conftest import connect_retrying_busy, log_tails, wait_for_log
from tests.cluster.test_live_order import _joined, _receive
from tests.cluster.test_live_routing import Node
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient

TOPIC = "ord/t"  # (test_live_order._receive reads this topic)
_EXTRA = "  qos_stream:\n    duplicate_window: 1\n"
_FIRST_LIVE = re.compile(r"first live QoS 1 part of (\S+) here")


def _publish(node: BrokerProcess, numbers: range) -> None:
    """QoS 1 on TOPIC, one at a time (each its own turn: its own stream write and
    sender seq), each acknowledged (the stream has it)."""
    pub = RawClient(node.host, node.port, version=5, timeout=30)
    assert pub.connect("fg-pub", clean_start=True).reason_code == 0
    for i in numbers:
        ack = pub.publish(TOPIC, b"%06d" % i, qos=1)
        assert isinstance(ack, PubAck) and ack.reason_code < 0x80, ack
        time.sleep(0.05)
    pub.disconnect()


def test_a_node_forgets_a_dead_sending_process_and_its_restart_still_delivers_in_order_once(
        make_node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """Node a publishes QoS 1 to a persistent subscriber on node b (through the stream
    and live); a is killed with -9: b logs one line that it forgot a's process (its
    dedup window of 20 seqs), no sooner than the bound after the kill, and then that
    it dropped the process's last heartbeat figures. a restarted on
    the same name (a new sender) still delivers to b's subscriber in order
    [MQTT-4.6.0-5] and once."""
    monkeypatch.setenv(FORGET_ENV, "1")  # (at least NODE_TTL: 3 s)
    bound = max(NODE_TTL, 1.0)
    b = make_node("b", servers=[1], extra=_EXTRA)
    a = make_node("a", servers=[0], extra=_EXTRA)
    _joined(a, b)
    sub, _ = connect_retrying_busy(b, "fg-sub", True, a)
    sub.subscribe("ord/#", qos=1)
    time.sleep(1.5)  # a has seen b's heartbeat: its QoS 1 messages go live to b too
    _publish(a, range(20))
    got = _receive(sub, 19, within=20)
    assert got == list(range(20)), (got, log_tails(a, b))
    first_live = _FIRST_LIVE.findall(b.log_text())
    assert first_live, ("no live QoS 1 part of a reached b", log_tails(a, b))
    sender = first_live[0]
    assert sender.startswith("a/"), first_live

    a.kill()
    killed = time.monotonic()
    line = f"forgot sending process {sender},"
    wait_for_log(b, line, timeout=bound + 15)
    waited = time.monotonic() - killed
    assert waited >= bound, (waited, log_tails(b))
    print(f"b forgot {sender} {waited:.1f} s after the kill (bound {bound:.0f} s)")
    forgot = [x for x in b.log_text().splitlines() if line in x]
    assert len(forgot) == 1, forgot
    assert "dedup window of 20 seqs" in forgot[0], forgot
    # ... and then the process itself: its last heartbeat figures (wills.figures) go
    # too, once nothing else of it is kept (else one entry per dead process, for ever).
    wait_for_log(b, f"forgot node process {sender.replace('/', '_')},", timeout=5)

    a.start()  # the same node name: a new sending process
    wait_for_log(a, "cluster: node a connected to NATS")
    _joined(a)
    time.sleep(1.5)
    _publish(a, range(20, 40))
    got = _receive(sub, 39, within=20)
    sub.close()
    assert got == list(range(20, 40)), (got, log_tails(a, b))
    assert b.alive and a.alive


def test_a_forgotten_sender_that_comes_back_starts_a_fresh_order() -> None:
    """A sender cut from NATS (not dead) and forgotten meanwhile starts a fresh order
    when its live parts come again: its first one is held until this node's stream
    reader has passed the writes below it (``LiveOrder.first``: unsynced), not routed
    ahead of them; a new Dedup window takes its seqs as new."""
    dedup = wire.Dedup()
    sender = b"a/1234"
    for seq in range(1, 11):
        assert dedup.first(sender, seq)
    assert wire.LiveOrder.first(dedup, sender, 11).contig == 10  # in sync
    assert dedup.forget(sender) == 10
    assert dedup.forget(sender) == 0
    assert not dedup.seen(sender, 10)
    order = wire.LiveOrder.first(dedup, sender, 11)
    assert order.contig == wire.UNSYNCED and order.start == 11
    assert not order.synced(dedup, sender, None)
    assert dedup.first(sender, 10)  # the reader routes the write below it
    assert order.synced(dedup, sender, None) and order.contig == 10


def test_the_forget_bound_override_is_read_from_the_environment() -> None:
    """``IOTBROKER_CLUSTER_FORGET_SECONDS``: a number of seconds, at least NODE_TTL (a
    process is out of the routing index before it is forgotten); unset or not a
    number: FORGET_SECONDS."""
    assert forget_seconds({}) == FORGET_SECONDS
    assert forget_seconds({FORGET_ENV: "10"}) == 10.0
    assert forget_seconds({FORGET_ENV: "0"}) == NODE_TTL
    assert forget_seconds({FORGET_ENV: "nan"}) == NODE_TTL
    assert forget_seconds({FORGET_ENV: "soon"}) == FORGET_SECONDS


def test_a_silent_senders_state_stays_until_the_stream_reader_has_passed_the_streams_end(
        ) -> None:
    """The safety rule of ``ClusterNode._forget_senders`` (on the node's own objects,
    the NATS side replaced by a stub that answers the stream's last sequence): a
    sender silent past the bound is not forgotten until the stream's end has been
    asked for and this node's stream reader has routed past it (its writes may still
    have stream copies to route: forgetting before would route them twice), nor while
    live parts of it are held; one heard again meanwhile is not forgotten."""
    dead, back = b"a/dead", b"c/back"
    asked: list[list[bytes]] = []

    async def scenario() -> list[int]:
        node: Any = SimpleNamespace(
            forget_seconds=FORGET_SECONDS, qos=SimpleNamespace(
                limits=SimpleNamespace(duplicate_window=120.0), next_to_route=None),
            wills=SimpleNamespace(figures={"a_dead": (0.0, b""), "c_back": (0.0, b"")}),
            dedup=wire.Dedup(), _live_order={}, _forget_at={}, _unheard={},
            _end_ask=None, senders_forgotten=0)

        async def ask(senders: list[bytes]) -> None:  # the stream's leader: end 50
            asked.append(senders)
            for sender in senders:
                node._forget_at.setdefault(sender, 50)

        node._ask_stream_end = ask
        for seq in range(1, 6):
            node.dedup.first(dead, seq)
            node.dedup.first(back, seq)
        node._live_order[dead] = order = wire.LiveOrder(5)
        order.held[7] = ([], [])
        counts = []

        async def sweep(now: float) -> None:
            ClusterNode._forget_senders(node, now)
            await asyncio.sleep(0)  # the ask task runs
            counts.append(node.senders_forgotten)

        await sweep(100.0)  # silent 100 s < 120 s: kept, nothing asked
        await sweep(121.0)  # past the bound: c's end asked; a's live part is held
        order.held.clear()
        await sweep(122.0)  # asked (end 50); the reader has routed nothing
        node.wills.figures["c_back"] = (122.5, b"")  # c heard again
        node.qos.next_to_route = 50  # the reader has not routed 50 yet
        await sweep(123.0)
        assert back not in node._forget_at
        node.qos.next_to_route = 51  # it has: a goes, c stays
        await sweep(124.0)
        assert node.dedup.senders() == [back] and dead not in node._live_order
        return counts

    counts = asyncio.run(scenario())
    assert counts == [0, 0, 0, 0, 1], counts
    assert asked == [[back], [dead]], asked  # c at 121 s; a once nothing of it was held


def test_a_dead_processs_figures_go_once_nothing_else_of_it_is_kept() -> None:
    """``ClusterNode._forget_processes`` (on the node's own objects, issue 14,
    i14-robust): the last heartbeat figures of a process silent past the bound
    (``wills.figures``: one entry per process ever heard) are dropped — not while
    its sender's dedup window (or name tables) is still kept, not those of a process
    heard within the bound, never this node's own."""
    figures = {"a_dead": (0.0, b"{}"), "c_live": (0.0, b"{}"), "b_own": (0.0, b"{}")}
    wills: Any = SimpleNamespace(figures=figures)
    wills.forget = lambda token: Wills.forget(wills, token)
    node: Any = SimpleNamespace(
        forget_seconds=FORGET_SECONDS, token="b_own",
        qos=SimpleNamespace(limits=SimpleNamespace(duplicate_window=120.0)),
        wills=wills, dedup=wire.Dedup(), _live_order={}, _forget_at={},
        names_in={}, names_out=wire.NameTables())
    node.dedup.first(b"a/dead", 1)
    ClusterNode._forget_processes(node, 100.0)  # within the bound: all kept
    assert set(figures) == {"a_dead", "c_live", "b_own"}
    figures["c_live"] = (100.0, b"{}")  # c heard again
    ClusterNode._forget_processes(node, 130.0)  # a past the bound, its dedup kept
    assert set(figures) == {"a_dead", "c_live", "b_own"}
    node.dedup.forget(b"a/dead")  # (_forget_senders)
    ClusterNode._forget_processes(node, 131.0)
    assert set(figures) == {"c_live", "b_own"}
