"""Loop safety: a message that came in over a bridge never goes back over it.

MQTT 5.0 remotes: the bridge subscribes there with No Local [MQTT-3.8.3-3] and its local
session subscribes with No Local too, with the messages it brings in published as that
session. MQTT 3.1.1 remotes: mosquitto's ``try_private`` bridge flag (protocol level
0x84) asks the remote not to send our own messages back.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.bridge.conftest import (
    Mosquitto,
    bridge_yaml,
    collect,
    config_with_bridges,
    quiet,
    wait_for_log,
)
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient

MakeBroker = Callable[..., BrokerProcess]


def _cross(a: tuple[str, int], b: tuple[str, int], version: int) -> None:
    """Publish once on each side; each side's subscriber sees both messages once."""
    with RawClient(*a, version=version) as sa, RawClient(*b, version=version) as sb, \
            RawClient(*a, version=version) as pa, RawClient(*b, version=version) as pb:
        sa.connect("sub-a")
        sa.subscribe("#", qos=2)
        sb.connect("sub-b")
        sb.subscribe("#", qos=2)
        pa.connect("pub-a")
        pb.connect("pub-b")
        pa.publish("t/from-a", b"A", qos=2)
        pb.publish("t/from-b", b"B", qos=2)
        pa.publish("t/from-a1", b"A1", qos=1)
        got_a = collect(sa, 3)
        got_b = collect(sb, 3)
        quiet(sa, 1.0)
        quiet(sb, 0.2)
    want = [("t/from-a", b"A"), ("t/from-a1", b"A1"), ("t/from-b", b"B")]
    assert sorted((p.topic, p.payload) for p in got_a) == want
    assert sorted((p.topic, p.payload) for p in got_b) == want


def test_hash_both_between_two_iotbrokers_does_not_loop(make_broker: MakeBroker) -> None:
    """``topic # both 2`` from A to B (MQTT 5.0): no loop, no duplicate [MQTT-3.8.3-3]."""
    b = make_broker(config_with_bridges("[]\n").replace("bridges:\n[]", "bridges: []"),
                    name="b")
    a = make_broker(config_with_bridges(bridge_yaml(
        "cloud", b.port, ['{pattern: "#", direction: both, qos: 2}'])), name="a")
    wait_for_log(a, "bridge 'cloud': connected to")
    _cross((a.host, a.port), (b.host, b.port), 5)


def test_hash_both_to_mosquitto_v311_try_private_does_not_loop(
        make_broker: MakeBroker, make_mosquitto: Callable[..., Mosquitto]) -> None:
    """MQTT 3.1.1 to mosquitto with ``try_private`` (the bridge flag): no echo, no loop."""
    mosq = make_mosquitto()
    a = make_broker(config_with_bridges(bridge_yaml(
        "cloud", mosq.port, ['{pattern: "#", direction: both, qos: 2}'], protocol=4)))
    wait_for_log(a, "bridge 'cloud': connected to")
    assert "protocol level 0x84" not in a.log_text()
    _cross((a.host, a.port), ("127.0.0.1", mosq.port), 4)


def test_hash_both_v311_to_a_remote_without_try_private_echoes_once(
        make_broker: MakeBroker) -> None:
    """MQTT 3.1.1 to a remote that refuses the bridge flag (iotbroker as the remote: it
    answers protocol level 0x84 with CONNACK 0x01, the bridge retries without it) and
    has no No Local in 3.1.1: a ``# both`` rule brings A's own message back once, A's
    subscriber sees it twice; it is never forwarded again (A's bridge session has No
    Local), so there is no loop, and the remote's side sees each message once."""
    b = make_broker(config_with_bridges("[]\n").replace("bridges:\n[]", "bridges: []"),
                    name="b")
    a = make_broker(config_with_bridges(bridge_yaml(
        "cloud", b.port, ['{pattern: "#", direction: both, qos: 1}'], protocol=4)), name="a")
    wait_for_log(a, "try_private); retrying without it")
    wait_for_log(a, "bridge 'cloud': connected to")
    with RawClient(a.host, a.port, version=4) as sa, RawClient(b.host, b.port, version=4) as sb, \
            RawClient(a.host, a.port, version=4) as pa, \
            RawClient(b.host, b.port, version=4) as pb:
        sa.connect("sub-a")
        sa.subscribe("#", qos=1)
        sb.connect("sub-b")
        sb.subscribe("#", qos=1)
        pa.connect("pub-a")
        pb.connect("pub-b")
        pa.publish("t/from-a", b"A", qos=1)
        pb.publish("t/from-b", b"B", qos=1)
        got_a = collect(sa, 3)
        got_b = collect(sb, 2)
        quiet(sa, 1.0)
        quiet(sb, 0.2)
    assert sorted((p.topic, p.payload) for p in got_a) == [
        ("t/from-a", b"A"), ("t/from-a", b"A"), ("t/from-b", b"B")]
    assert sorted((p.topic, p.payload) for p in got_b) == [("t/from-a", b"A"),
                                                          ("t/from-b", b"B")]
