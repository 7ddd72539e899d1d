"""Cycles of bridges (issue 15): two iotbrokers each with a bridge to the other.

No Local [MQTT-3.8.3-3] only keeps a message off the bridge it came in on. Around a
cycle (A's bridge to B and B's bridge to A) a message enters each broker as an ordinary
client's PUBLISH, so MQTT 5.0 links carry a bridge-origin mark, the User Property
``iotbroker-bridged`` (one per broker the message has been in; forwarded unaltered by
any MQTT 5.0 broker, [MQTT-3.3.2-18]); a broker refuses a message carrying its own mark.
With ``both`` rules on both bridges each message would cross the pair twice (pushed by
one bridge, pulled by the other): the bridges say who they are and what they push in
CONNECT / CONNACK User Properties, and the pulled copy gives way (bridge/peers.py).
MQTT 3.1.1 has no properties: the same cycle loops, as with mosquitto's own bridges.
The refusals and skipped copies are counted in ``$SYS/broker/connection/<name>/looped``
and ``.../duplicates``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from iotbroker.codec.packets import Publish
from tests.bridge.conftest import (
    Mosquitto,
    bridge_yaml,
    collect,
    config_with_bridges,
    free_port,
    quiet,
    wait_for_log,
)
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient

MakeBroker = Callable[..., BrokerProcess]

MARKER = "iotbroker-bridged"
CAME_BACK = "had been in this broker already came back"


def _on_port(config: str, port: int) -> str:
    return config.replace("port: 0", f"port: {port}", 1)


def _pair(make_broker: MakeBroker, direction: str, protocol: int = 5,
          extra: str = "", protocol_b: int | None = None) -> tuple[BrokerProcess, BrokerProcess]:
    """A with a bridge to B and B with a bridge to A, both ``# <direction>`` at QoS 2
    (B's bridge over ``protocol_b`` when given); $SYS published every 200 ms."""
    port_a, port_b = free_port(), free_port()
    rule = [f'{{pattern: "#", direction: {direction}, qos: 2}}']
    b = make_broker(_on_port(config_with_bridges(bridge_yaml(
        "to-a", port_a, rule, protocol=protocol_b or protocol, extra=extra),
        sys_interval="200ms"), port_b), name="b")
    a = make_broker(_on_port(config_with_bridges(bridge_yaml(
        "to-b", port_b, rule, protocol=protocol, extra=extra), sys_interval="200ms"),
        port_a), name="a")
    wait_for_log(a, "bridge 'to-b': connected to")
    wait_for_log(b, "bridge 'to-a': connected to")
    return a, b


def _publish_both_sides(a: BrokerProcess, b: BrokerProcess, version: int,
                        per_side: int) -> tuple[list[Publish], list[Publish]]:
    """Subscribe ``#`` on each side, publish on each side (QoS 2, 1, 0 in turn), collect
    ``per_side`` messages on each, then nothing more for a second."""
    with RawClient(a.host, a.port, version=version) as sa, \
            RawClient(b.host, b.port, version=version) as sb, \
            RawClient(a.host, a.port, version=version) as pa, \
            RawClient(b.host, b.port, version=version) as pb:
        sa.connect("sub-a")
        sa.subscribe("#", qos=2)
        sb.connect("sub-b")
        sb.subscribe("#", qos=2)
        pa.connect("pub-a")
        pb.connect("pub-b")
        for qos in (2, 1, 0):
            pa.publish(f"t/a{qos}", f"A{qos}".encode(), qos=qos)
            pb.publish(f"t/b{qos}", f"B{qos}".encode(), qos=qos)
        got_a = collect(sa, per_side)
        got_b = collect(sb, per_side)
        quiet(sa, 1.0)
        quiet(sb, 0.2)
    return got_a, got_b


def _sys_value(broker: BrokerProcess, topic: str, want: bytes, timeout: float = 10.0) -> None:
    """The $SYS topic reaches ``want`` (retained, published when it changes)."""
    with RawClient(broker.host, broker.port, version=5) as c:
        c.connect("sys-watch")
        c.subscribe(topic)
        last = None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                packet = c.recv(left)
            except TimeoutError:
                break
            if isinstance(packet, Publish) and packet.topic == topic:
                last = packet.payload
                if last == want:
                    return
    raise AssertionError(f"{topic} is {last!r}, {want!r} expected")


WANT = sorted([("t/a0", b"A0"), ("t/a1", b"A1"), ("t/a2", b"A2"),
               ("t/b0", b"B0"), ("t/b1", b"B1"), ("t/b2", b"B2")])


def test_two_bridges_out_out_v5_no_loop_no_duplicate(make_broker: MakeBroker) -> None:
    """A→B ``# out`` and B→A ``# out`` (MQTT 5.0): each message reaches each side once
    (QoS 2 included, [MQTT-4.3.3-2] end to end); the copy that comes back to the broker
    it left carries that broker's mark and is refused there."""
    a, b = _pair(make_broker, "out")
    got_a, got_b = _publish_both_sides(a, b, 5, 6)
    assert sorted((p.topic, p.payload) for p in got_a) == WANT
    assert sorted((p.topic, p.payload) for p in got_b) == WANT
    # Normal forwarding keeps the QoS and carries the marks of the brokers crossed.
    from_b = {p.topic: p for p in got_a if p.topic.startswith("t/b")}
    assert from_b["t/b2"].qos == 2 and from_b["t/b1"].qos == 1
    assert [n for n, _ in from_b["t/b2"].properties.user_properties] == [MARKER]
    own = {p.topic: p for p in got_a if p.topic.startswith("t/a")}
    assert own["t/a2"].properties.user_properties == ()
    wait_for_log(a, CAME_BACK)
    wait_for_log(b, CAME_BACK)
    # Each side refused its own 3 messages when they came back, counted for its bridge
    # to the broker that sent them back (not only logged).
    _sys_value(a, "$SYS/broker/connection/to-b/looped", b"3")
    _sys_value(b, "$SYS/broker/connection/to-a/looped", b"3")
    _sys_value(a, "$SYS/broker/bridges/looped", b"3")
    _sys_value(a, "$SYS/broker/connection/to-b/duplicates", b"0")


def test_two_bridges_both_both_v5_each_message_once(make_broker: MakeBroker) -> None:
    """A↔B ``# both`` on both bridges (MQTT 5.0): no loop, and each subscriber gets each
    message exactly once, QoS 0, 1 and 2, its own side's and the other's
    ([MQTT-4.3.3-2] end to end for QoS 2). Without the peers' hello each message would
    cross twice (A's bridge pushes it, B's bridge pulls it): the pulled copy is
    skipped (``duplicates``) and the copy pushed back to where it came from is refused
    (``looped``), 3 of each per side."""
    a, b = _pair(make_broker, "both")
    got_a, got_b = _publish_both_sides(a, b, 5, 6)
    for got in (got_a, got_b):
        assert sorted((p.topic, p.payload) for p in got) == WANT
    from_b = {p.topic: p for p in got_a if p.topic.startswith("t/b")}
    assert from_b["t/b2"].qos == 2 and from_b["t/b1"].qos == 1
    for broker, name in ((a, "to-b"), (b, "to-a")):
        _sys_value(broker, f"$SYS/broker/connection/{name}/duplicates", b"3")
        _sys_value(broker, f"$SYS/broker/connection/{name}/looped", b"3")


def test_cycle_through_mosquitto_v5(make_broker: MakeBroker,
                                    make_mosquitto: Callable[..., Mosquitto]) -> None:
    """A → mosquitto (``# out``), mosquitto → B (``# in``), B → A (``# out``), all MQTT
    5.0: the mark crosses mosquitto (User Properties are forwarded unaltered
    [MQTT-3.3.2-18]) and A refuses its own message when it comes back; each side gets
    each message once."""
    mosq = make_mosquitto()
    port_a = free_port()
    b = make_broker(config_with_bridges(
        bridge_yaml("m", mosq.port, ['{pattern: "#", direction: in, qos: 2}'],
                    client_id="gw-b-m")
        + bridge_yaml("to-a", port_a, ['{pattern: "#", direction: out, qos: 2}'])), name="b")
    a = make_broker(_on_port(config_with_bridges(bridge_yaml(
        "m", mosq.port, ['{pattern: "#", direction: out, qos: 2}']), sys_interval="200ms"),
        port_a), name="a")
    wait_for_log(a, "bridge 'm': connected to")
    wait_for_log(b, "bridge 'to-a': connected to")
    wait_for_log(b, "bridge 'm': connected to")
    with RawClient(a.host, a.port, version=5) as sa, \
            RawClient(b.host, b.port, version=5) as sb, \
            RawClient(a.host, a.port, version=5) as pa:
        sa.connect("sub-a")
        sa.subscribe("#", qos=2)
        sb.connect("sub-b")
        sb.subscribe("#", qos=2)
        pa.connect("pub-a")
        pa.publish("t/x", b"X", qos=2)
        got_b = collect(sb, 1)
        got_a = collect(sa, 1)
        quiet(sa, 1.0)
        quiet(sb, 0.2)
    assert [(p.topic, p.payload) for p in got_a] == [("t/x", b"X")]
    assert [(p.topic, p.payload, p.qos) for p in got_b] == [("t/x", b"X", 2)]
    wait_for_log(a, CAME_BACK)
    # Sent back by B, which A has no bridge to: counted in the broker's total only.
    _sys_value(a, "$SYS/broker/bridges/looped", b"1")
    _sys_value(a, "$SYS/broker/connection/m/looped", b"0")


def test_two_bridges_out_out_v311_loops(make_broker: MakeBroker) -> None:
    """What is NOT prevented: MQTT 3.1.1 has no properties to carry a mark (and
    iotbroker refuses mosquitto's 0x84 bridge flag, which only stops echo on one
    bridge anyway), so A→B and B→A ``# out`` over 3.1.1 loop, as mosquitto's bridges
    do. One QoS 0 message comes back again and again (bounded here: 2 s)."""
    a, b = _pair(make_broker, "out", protocol=4)
    with RawClient(a.host, a.port, version=4) as sa, \
            RawClient(a.host, a.port, version=4) as pa:
        sa.connect("sub-a")
        sa.subscribe("t/#", qos=0)
        pa.connect("pub-a")
        pa.publish("t/x", b"X", qos=0)
        copies = 0
        deadline = time.monotonic() + 2.0
        while copies < 5 and time.monotonic() < deadline:
            if isinstance(sa.recv(deadline - time.monotonic()), Publish):
                copies += 1
    b.stop()  # break the loop before the brokers are stopped
    assert copies >= 5


def test_cycle_with_one_v311_link_loops(make_broker: MakeBroker) -> None:
    """What is NOT prevented either: a cycle with one MQTT 3.1.1 link (A→B over MQTT 5.0
    ``# out``, B→A over 3.1.1 ``# out``). The mark A adds is lost on B's 3.1.1 link (no
    properties), so A cannot recognise its own message: it loops (bounded here: 2 s)."""
    a, b = _pair(make_broker, "out", protocol=5, protocol_b=4)
    with RawClient(a.host, a.port, version=5) as sa, \
            RawClient(a.host, a.port, version=5) as pa:
        sa.connect("sub-a")
        sa.subscribe("t/#", qos=0)
        pa.connect("pub-a")
        pa.publish("t/x", b"X", qos=0)
        copies = 0
        deadline = time.monotonic() + 2.0
        while copies < 5 and time.monotonic() < deadline:
            if isinstance(sa.recv(deadline - time.monotonic()), Publish):
                copies += 1
    b.stop()  # break the loop before the brokers are stopped
    assert copies >= 5
