"""iotbroker bridged to the real mosquitto (Debian package), both directions.

Prefixes follow mosquitto's ``topic`` line (docs/bridge.md); QoS is kept (the lower of
the message's and the rule's, as for a subscription, MQTT 5.0 §3.8.4); MQTT 5.0
properties are forwarded unaltered [MQTT-3.3.2-4] [MQTT-3.3.2-17] [MQTT-3.3.2-20]; a
QoS 2 message arrives once [MQTT-4.3.3-2]; and mosquitto's own bridge can use
iotbroker as its remote.
"""

from __future__ import annotations

from collections.abc import Callable

from iotbroker.codec.packets import Properties, Publish
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

CONNECTED = "bridge 'cloud': connected to"
MakeBroker = Callable[..., BrokerProcess]
MakeMosquitto = Callable[..., Mosquitto]


def _started(make_broker: MakeBroker, mosq: Mosquitto, topics: list[str],
             **kw: object) -> BrokerProcess:
    proc = make_broker(config_with_bridges(bridge_yaml("cloud", mosq.port, topics, **kw)))  # type: ignore[arg-type]
    wait_for_log(proc, CONNECTED)
    return proc


def test_out_to_mosquitto_prefix_qos_and_properties(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto) -> None:
    """``sensors/#`` out with remote_prefix ``site1/``: [MQTT-3.3.2-4] properties kept."""
    mosq = make_mosquitto()
    proc = _started(make_broker, mosq,
                    ['{pattern: "sensors/#", direction: out, qos: 2, remote_prefix: "site1/"}'])
    with RawClient("127.0.0.1", mosq.port, version=5) as remote, \
            RawClient(proc.host, proc.port, version=5) as local:
        remote.connect("remote-sub")
        remote.subscribe("#", qos=2)
        local.connect("local-pub")
        props = Properties(user_properties=(("site", "1"), ("k", "v")), content_type="text/x",
                           response_topic="reply/here", correlation_data=b"\x01\x02",
                           payload_format_indicator=1)
        local.publish("sensors/a", b"one", qos=1, properties=props)
        local.publish("sensors/b", b"two", qos=2)
        local.publish("sensors/c", b"three", qos=0)
        local.publish("other/x", b"not bridged", qos=1)
        # mosquitto routes a QoS 2 message at PUBREL: order holds per QoS only (§4.6).
        got = sorted(collect(remote, 3), key=lambda p: p.topic)
        quiet(remote, 0.5)
    assert [(p.topic, p.payload, p.qos) for p in got] == [
        ("site1/sensors/a", b"one", 1), ("site1/sensors/b", b"two", 2),
        ("site1/sensors/c", b"three", 0)]
    first = got[0].properties
    # Kept in order, followed by the bridge-origin mark (docs/bridge.md "Loops").
    assert first.user_properties[:2] == (("site", "1"), ("k", "v"))
    assert [n for n, _ in first.user_properties[2:]] == ["iotbroker-bridged"]
    assert (first.content_type, first.response_topic, first.correlation_data,
            first.payload_format_indicator) == ("text/x", "reply/here", b"\x01\x02", 1)


def test_rule_qos_caps_the_forwarded_qos(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto) -> None:
    """The rule's QoS works as a subscription's: min(message, rule) (MQTT 5.0 §3.8.4)."""
    mosq = make_mosquitto()
    proc = _started(make_broker, mosq, ['{pattern: "s/#", direction: out, qos: 1}'])
    with RawClient("127.0.0.1", mosq.port, version=5) as remote, \
            RawClient(proc.host, proc.port, version=5) as local:
        remote.connect("remote-sub")
        remote.subscribe("s/#", qos=2)
        local.connect("local-pub")
        local.publish("s/2", b"x", qos=2)
        assert remote.receive_publish(timeout=5).qos == 1


def test_in_from_mosquitto_prefix_retain_and_qos2_once(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto) -> None:
    """``cmd/#`` in with remote_prefix ``site1/``: the prefix is removed, the retain flag
    kept (retain-as-published), a QoS 2 message routed once [MQTT-4.3.3-2].
    [MQTT-7.0.0-1]: the broker, when it connects out to another Server (mosquitto), acts
    as a conformant Client: mosquitto delivers to the bridge's QoS 2 subscription through
    the whole PUBREC/PUBREL/PUBCOMP exchange and the message arrives once."""
    mosq = make_mosquitto()
    proc = _started(make_broker, mosq,
                    ['{pattern: "cmd/#", direction: in, qos: 2, local_prefix: "from-cloud/", '
                     'remote_prefix: "site1/"}'])
    with RawClient("127.0.0.1", mosq.port, version=5) as remote, \
            RawClient(proc.host, proc.port, version=5) as local:
        local.connect("local-sub")
        local.subscribe("from-cloud/#", qos=2, retain_as_published=True)
        remote.connect("remote-pub")
        remote.publish("site1/cmd/open", b"door", qos=2,
                       properties=Properties(user_properties=(("who", "ops"),)))
        remote.publish("site1/cmd/state", b"on", qos=1, retain=True)
        remote.publish("elsewhere/cmd/x", b"no", qos=1)
        got = sorted(collect(local, 2), key=lambda p: p.topic)
        quiet(local, 0.5)
    assert [(p.topic, p.payload, p.qos) for p in got] == [
        ("from-cloud/cmd/open", b"door", 2), ("from-cloud/cmd/state", b"on", 1)]
    # Kept, followed by this broker's bridge-origin mark (docs/bridge.md "Loops").
    assert got[0].properties.user_properties[0] == ("who", "ops")
    assert [n for n, _ in got[0].properties.user_properties[1:]] == ["iotbroker-bridged"]
    assert got[1].retain


def test_retained_messages_go_out_after_connect(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto) -> None:
    """``out`` rules forward the retained messages once after (re)connect (once even
    when two rules match)."""
    mosq = make_mosquitto(start=False)
    proc = make_broker(config_with_bridges(bridge_yaml(
        "cloud", mosq.port, ['{pattern: "cfg/#", direction: out, qos: 1}',
                             '{pattern: "cfg/a", direction: out, qos: 0}'])))
    with RawClient(proc.host, proc.port, version=5) as local:
        local.connect("local-pub")
        local.publish("cfg/a", b"retained-a", qos=1, retain=True)
    mosq.start()
    wait_for_log(proc, CONNECTED)
    with RawClient("127.0.0.1", mosq.port, version=5) as remote:
        remote.connect("remote-sub")
        remote.subscribe("cfg/#", qos=1)
        pub = remote.receive_publish(timeout=5)
        quiet(remote, 0.5)
    assert (pub.topic, pub.payload, pub.retain) == ("cfg/a", b"retained-a", True)


def test_mosquitto_bridge_into_iotbroker(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto) -> None:
    """mosquitto's own bridge (MQTT 3.1.1) with iotbroker as its remote (try_private off:
    iotbroker refuses protocol level 0x84 with 0x01 [MQTT-3.1.2-2], after which
    mosquitto retries plain 3.1.1 only after its restart_timeout)."""
    proc = make_broker(config_with_bridges("[]\n").replace("bridges:\n[]", "bridges: []"))
    mosq = make_mosquitto(
        f"connection edge\naddress 127.0.0.1:{proc.port}\nbridge_protocol_version mqttv311\n"
        "try_private false\ntopic up/# out 1 \"\" edge/\ntopic down/# in 1 \"\" edge/\n")
    wait_for_log(mosq, "Received CONNACK on connection", timeout=10)
    with RawClient("127.0.0.1", mosq.port, version=4) as m, \
            RawClient(proc.host, proc.port, version=5) as i:
        i.connect("iot-sub")
        i.subscribe("edge/#", qos=1, no_local=True)
        m.connect("mosq-client")
        m.subscribe("down/#", qos=1)
        deadline_sub = "Received SUBACK"
        wait_for_log(mosq, deadline_sub)
        m.publish("up/t", b"hello", qos=1)
        pub = i.receive_publish(timeout=5)
        assert (pub.topic, pub.payload) == ("edge/up/t", b"hello")
        i.publish("edge/down/x", b"cmd", qos=1)
        got: Publish = m.receive_publish(timeout=5)
        assert (got.topic, got.payload) == ("down/x", b"cmd")
        quiet(i, 0.5)  # the command did not come back as edge/up/... or again


def test_origin_marker_off_keeps_user_properties_exactly(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto) -> None:
    """``origin_marker: false``: User Properties cross both ways exactly as published
    [MQTT-3.3.2-18] (and cycles of bridges are no longer detected)."""
    mosq = make_mosquitto()
    proc = _started(make_broker, mosq, ['{pattern: "up/#", direction: out, qos: 1}',
                                        '{pattern: "down/#", direction: in, qos: 1}'],
                    extra="    origin_marker: false\n")
    props = Properties(user_properties=(("k", "v"),))
    with RawClient("127.0.0.1", mosq.port, version=5) as remote, \
            RawClient(proc.host, proc.port, version=5) as local:
        remote.connect("remote-sub")
        remote.subscribe("up/#", qos=1)
        local.connect("local-sub")
        local.subscribe("down/#", qos=1)
        local.publish("up/x", b"1", qos=1, properties=props)
        up = collect(remote, 1)
        remote.publish("down/x", b"2", qos=1, properties=props)
        down = collect(local, 1)
    assert up[0].properties.user_properties == (("k", "v"),)
    assert down[0].properties.user_properties == (("k", "v"),)
