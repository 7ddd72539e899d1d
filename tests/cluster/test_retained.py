"""Retained messages in a replicated JetStream KV bucket, indexed on every node from a
watch (docs/cluster.md, "Retained messages"): a retained message set on one node is
seen by a new subscriber on another ([MQTT-3.3.1-6]), also by a node that starts
later, and clearing it ([MQTT-3.3.1-10], [MQTT-3.3.1-11]) clears it everywhere.
The issue's "within 1 s" is a benchmark figure (printed with -s), not a timed assert."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.cluster.conftest import wait_for_log
from tests.cluster.test_live_routing import Node
from tests.interop.test_paho import Paho


def wait_retained(factory: Callable[[], Paho], topic_filter: str,
                  expected: list[tuple[str, bytes]], timeout: float = 5.0) -> float:
    """Subscribe anew until the retained messages are ``expected``; returns the time."""
    started = time.monotonic()
    got: list[tuple[str, bytes]] = []
    while time.monotonic() - started < timeout:
        sub = factory()
        sub.subscribe(topic_filter, qos=1)
        got = []
        # retained messages come right after the SUBACK; a short quiet period ends them
        while True:
            try:
                msg = sub.messages.get(timeout=0.05)
            except Exception:
                break
            got.append((msg.topic, msg.payload))
        sub.disconnect()
        if sorted(got) == sorted(expected):
            return time.monotonic() - started
    raise AssertionError(f"retained on {topic_filter!r}: {got}, expected {expected} "
                         f"within {timeout}s")


def test_retained_set_on_one_node_reaches_new_subscribers_on_others(
    make_node: Node, clients: Callable[..., Paho]
) -> None:
    a = make_node("a", servers=[0])
    b = make_node("b", servers=[1])
    for node in (a, b):
        wait_for_log(node, "retained messages from bucket")
    pub = clients(a, "pub")
    # QoS 2 crosses nodes through the QoS stream only; its retained copy still goes
    # to the bucket (node c below, started later, has only the bucket)
    pub.publish("r/one", b"1", qos=2, retain=True)
    pub.publish("r/two", b"2", qos=0, retain=True)
    ids = iter(range(1000))
    on_b = lambda: clients(b, f"s{next(ids)}")  # noqa: E731
    took = wait_retained(on_b, "r/#", [("r/one", b"1"), ("r/two", b"2")])
    print(f"retained visible on another node after {took * 1000:.0f} ms")
    # a node that starts later finds them in the bucket
    c = make_node("c", servers=[2])
    wait_for_log(c, "retained messages from bucket")
    on_c = lambda: clients(c, f"s{next(ids)}")  # noqa: E731
    wait_retained(on_c, "r/#", [("r/one", b"1"), ("r/two", b"2")])
    # cleared on b (empty retained payload): gone on a and c too; replaced on c
    clear = clients(b, "clear")
    clear.publish("r/one", b"", qos=1, retain=True)
    clients(c, "replace").publish("r/two", b"2b", qos=1, retain=True)
    on_a = lambda: clients(a, f"s{next(ids)}")  # noqa: E731
    wait_retained(on_a, "r/#", [("r/two", b"2b")])
    wait_retained(on_c, "r/#", [("r/two", b"2b")])
    wait_retained(on_b, "r/#", [("r/two", b"2b")])


def test_the_bucket_wins_over_what_a_node_kept_on_disk(
    make_node: Node, clients: Callable[..., Paho]
) -> None:
    """A node on RocksDB that was down while a retained message was cleared and
    another set elsewhere comes back with the bucket's state, not its disk's."""
    a = make_node("a", servers=[0])
    c = make_node("c", servers=[2], storage="rocksdb")
    for node in (a, c):
        wait_for_log(node, "retained messages from bucket")
    pub = clients(a, "pub")
    pub.publish("d/old", b"1", qos=1, retain=True)
    pub.publish("d/kept", b"2", qos=1, retain=True)
    ids = iter(range(1000))
    on_c = lambda: clients(c, f"s{next(ids)}")  # noqa: E731
    wait_retained(on_c, "d/#", [("d/old", b"1"), ("d/kept", b"2")])
    c.stop()  # both are in c's RocksDB now
    pub.publish("d/old", b"", qos=1, retain=True)
    pub.publish("d/new", b"3", qos=1, retain=True)
    c.start()
    wait_for_log(c, "retained messages from bucket")  # the clear: a delete marker
    wait_retained(on_c, "d/#", [("d/kept", b"2"), ("d/new", b"3")])
