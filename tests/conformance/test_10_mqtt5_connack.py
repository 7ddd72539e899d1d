"""MQTT 5.0 CONNACK properties tell the truth (MQTT 5.0 §3.2.2.3, §3.1.2.11).

Every property the server announces is checked twice: that it is in the CONNACK, and
that the server then behaves as announced. A server with every limit turned on
(``LIMITED``) is shared by the tests of this module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from iotbroker.codec.packets import (
    ConnAck,
    Disconnect,
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
    UnsubAck,
    Unsubscribe,
    Will,
)
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.conformance import assert_broker_healthy, disconnect_reason, publish_bytes
from tests.helpers.rawclient import RawClient

LIMITED_MQTT = (
    "mqtt:\n"
    "  maximum_qos: 1\n"
    "  retain_available: false\n"
    "  receive_maximum: 7\n"
    "  topic_alias_maximum: 3\n"
    "  max_packet_size: 4096\n"
    "  wildcard_subscriptions: false\n"
    "  subscription_identifiers: false\n"
    "  shared_subscriptions: false\n"
    "  max_keepalive: 30\n"
    "  response_information_prefix: 'resp/'\n"
)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(
        tmp_path_factory.mktemp("limited-broker"), broker_config(extra=LIMITED_MQTT)
    ).start()
    yield proc
    proc.stop()


def _client(b: BrokerProcess, client_id: str, **kwargs: object) -> tuple[RawClient, ConnAck]:
    c = RawClient(b.host, b.port, 5, timeout=3.0)
    ack = c.connect(client_id, **kwargs)  # type: ignore[arg-type]
    return c, ack


# ----------------------------------------------------------------- defaults


def test_mqtt_3_2_2_22_default_connack_properties(raw, uniq: str) -> None:
    """MQTT 5.0 §3.2.2.3: with the default configuration the CONNACK announces our
    Receive Maximum (1024), Maximum Packet Size (16 MiB) and Topic Alias Maximum (100);
    Maximum QoS, Retain Available, Wildcard / Subscription Identifier / Shared
    Subscription Available are absent (absent = supported, QoS 2); no Server Keep
    Alive, so the client's Keep Alive is used [MQTT-3.2.2-22]; no Assigned Client
    Identifier for a client that sent one; no Response Information unasked
    [MQTT-3.1.2-28]; no Session Expiry Interval when the request was granted as is."""
    c: RawClient = raw(5)
    ack = c.connect(uniq, keepalive=60, properties=Properties(session_expiry_interval=10))
    p = ack.properties
    assert ack.reason_code == 0
    assert p.receive_maximum == 1024
    assert p.maximum_packet_size == 16 * 1024 * 1024
    assert p.topic_alias_maximum == 100
    assert p.maximum_qos is None
    assert p.retain_available is None
    assert p.wildcard_subscription_available is None
    assert p.subscription_identifier_available is None
    assert p.shared_subscription_available is None
    assert p.server_keep_alive is None
    assert p.assigned_client_identifier is None
    assert p.response_information is None
    assert p.session_expiry_interval is None
    c.disconnect(properties=Properties(session_expiry_interval=0))


def test_mqtt_3_1_2_28_no_response_information_without_prefix(raw, uniq: str) -> None:
    """[MQTT-3.1.2-28] and §3.2.2.3.15: Response Information is optional; a server with
    no ``response_information_prefix`` sends none even when asked."""
    c: RawClient = raw(5)
    ack = c.connect(uniq, properties=Properties(request_response_information=1))
    assert ack.reason_code == 0
    assert ack.properties.response_information is None


# ----------------------------------------------------------------- limited server


def test_mqtt_3_2_2_9_limited_connack_properties(limited: BrokerProcess, uniq: str) -> None:
    """[MQTT-3.2.2-9]: a server without QoS 2 announces Maximum QoS 1; MQTT 5.0
    §3.2.2.3: Retain Available 0, our Receive Maximum, Maximum Packet Size and Topic
    Alias Maximum as configured, Wildcard / Subscription Identifier / Shared
    Subscription Available 0."""
    c, ack = _client(limited, uniq)
    with c:
        p = ack.properties
        assert ack.reason_code == 0
        assert p.maximum_qos == 1
        assert p.retain_available == 0
        assert p.receive_maximum == 7
        assert p.maximum_packet_size == 4096
        assert p.topic_alias_maximum == 3
        assert p.wildcard_subscription_available == 0
        assert p.subscription_identifier_available == 0
        assert p.shared_subscription_available == 0


def test_mqtt_3_2_2_10_subscribe_qos2_granted_maximum_qos(
    limited: BrokerProcess, uniq: str
) -> None:
    """[MQTT-3.2.2-10]: a server with Maximum QoS 1 still accepts SUBSCRIBE asking for
    QoS 0, 1 or 2 and grants at most 1; deliveries then come at QoS 1 at most
    [MQTT-3.8.4-8]."""
    sub, _ = _client(limited, f"{uniq}-sub")
    pub, _ = _client(limited, f"{uniq}-pub")
    with sub, pub:
        sub.send(
            Subscribe(
                1,
                [
                    Subscription(f"{uniq}/0", 0),
                    Subscription(f"{uniq}/1", 1),
                    Subscription(f"{uniq}/2", 2),
                ],
            )
        )
        assert sub.expect(SubAck).reason_codes == [0, 1, 1]
        pub.publish(f"{uniq}/2", b"x", 1)
        got = sub.receive_publish()
        assert (got.topic, got.qos) == (f"{uniq}/2", 1)


def test_mqtt_3_2_2_11_publish_above_maximum_qos_disconnect_0x9b(
    limited: BrokerProcess, uniq: str
) -> None:
    """MQTT 5.0 §3.2.2.3.4: a PUBLISH at QoS 2 to a server that announced Maximum QoS 1
    ([MQTT-3.2.2-11] binds the client) is a protocol error: DISCONNECT 0x9B QoS not
    supported, then the connection is closed [MQTT-3.14.4-2]; QoS 1 is accepted."""
    c, _ = _client(limited, uniq)
    with c:
        assert isinstance(c.publish(f"{uniq}/t", b"ok", 1), PubAck)
        c.send(Publish(f"{uniq}/t", b"x", 2, packet_id=9))
        assert disconnect_reason(c.expect_closed(3.0)) == 0x9B


def test_mqtt_3_2_2_12_will_qos_above_maximum_refused(limited: BrokerProcess, uniq: str) -> None:
    """[MQTT-3.2.2-12]: a Will QoS the server does not support refuses the CONNECT with
    0x9B and closes; Session Present 0 [MQTT-3.2.2-6], [MQTT-3.2.2-7]."""
    c, ack = _client(limited, uniq, will=Will(f"{uniq}/w", b"w", 2))
    with c:
        assert (ack.reason_code, ack.session_present) == (0x9B, False)
        c.expect_closed(3.0)


def test_mqtt_3_2_2_14_retain_unavailable_publish_disconnect_0x9a(
    limited: BrokerProcess, uniq: str
) -> None:
    """MQTT 5.0 §3.2.2.3.5: with Retain Available 0, a PUBLISH with RETAIN=1
    ([MQTT-3.2.2-14] binds the client) gets DISCONNECT 0x9A Retain not supported; a
    non-retained PUBLISH is fine."""
    c, _ = _client(limited, uniq)
    with c:
        assert isinstance(c.publish(f"{uniq}/t", b"ok", 1), PubAck)
        c.send(Publish(f"{uniq}/t", b"x", 1, True, packet_id=3))
        assert disconnect_reason(c.expect_closed(3.0)) == 0x9A


def test_mqtt_3_2_2_13_will_retain_unavailable_refused_0x9a(
    limited: BrokerProcess, uniq: str
) -> None:
    """[MQTT-3.2.2-13]: Will Retain 1 on a server without retained messages refuses the
    CONNECT (0x9A) and closes the connection."""
    c, ack = _client(limited, uniq, will=Will(f"{uniq}/w", b"w", 0, True))
    with c:
        assert (ack.reason_code, ack.session_present) == (0x9A, False)
        c.expect_closed(3.0)


def test_maximum_packet_size_enforced_as_announced(limited: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.2.2.3.6: a packet exactly at the announced Maximum Packet Size (4096)
    is accepted; one byte more ([MQTT-3.2.2-15] binds the client) is DISCONNECT 0x95
    Packet too large."""
    c, _ = _client(limited, uniq)
    with c:
        topic = f"{uniq}/t".encode()
        overhead = len(publish_bytes(topic, b"", 1, 1, version=5))
        # 4096 bytes in all: Remaining Length takes 2 bytes for these sizes.
        exact = publish_bytes(topic, b"p" * (4096 - overhead - 1), 1, 1, version=5)
        assert len(exact) == 4096
        c.send_raw(exact)
        assert c.expect(PubAck).packet_id == 1
        c.send_raw(publish_bytes(topic, b"p" * (4096 - overhead), 1, 2, version=5))
        assert disconnect_reason(c.expect_closed(3.0)) == 0x95


def test_mqtt_3_3_2_12_topic_alias_maximum_as_announced(limited: BrokerProcess, uniq: str) -> None:
    """[MQTT-3.3.2-12]: every alias from 1 to the announced Topic Alias Maximum (3) is
    accepted; 4 is a protocol error, DISCONNECT 0x94 Topic Alias invalid."""
    sub, _ = _client(limited, f"{uniq}-sub")
    pub, _ = _client(limited, f"{uniq}-pub")
    with sub, pub:
        for i in (1, 2, 3):
            sub.subscribe(f"{uniq}/{i}", 0)
        for i in (1, 2, 3):
            pub.publish(f"{uniq}/{i}", b"set", 0, properties=Properties(topic_alias=i))
            pub.publish("", b"alias", 0, properties=Properties(topic_alias=i))
        got = [sub.receive_publish() for _ in range(6)]
        assert [(p.topic, p.payload) for p in got] == [
            (f"{uniq}/{i}", pl) for i in (1, 2, 3) for pl in (b"set", b"alias")
        ]
        pub.publish(f"{uniq}/4", b"x", 0, properties=Properties(topic_alias=4))
        assert disconnect_reason(pub.expect_closed(3.0)) == 0x94
        sub.nothing(0.2)


def test_mqtt_3_8_3_2_wildcard_unavailable_suback_0xa2(limited: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.2.2.3.11 / §3.9.3: Wildcard Subscription Available 0 -> a filter with
    ``+`` or ``#`` gets SUBACK 0xA2; a plain filter in the same SUBSCRIBE is granted."""
    c, _ = _client(limited, uniq)
    with c:
        c.send(
            Subscribe(
                5,
                [
                    Subscription(f"{uniq}/+", 0),
                    Subscription(f"{uniq}/#", 1),
                    Subscription(f"{uniq}/t", 1),
                ],
            )
        )
        assert c.expect(SubAck).reason_codes == [0xA2, 0xA2, 1]


def test_subscription_identifiers_unavailable_disconnect_0xa1(
    limited: BrokerProcess, uniq: str
) -> None:
    """MQTT 5.0 §3.2.2.3.12: Subscription Identifier Available 0 -> a SUBSCRIBE carrying
    one is a protocol error, DISCONNECT 0xA1 Subscription Identifiers not supported."""
    c, _ = _client(limited, uniq)
    with c:
        c.send(
            Subscribe(5, [Subscription(f"{uniq}/t", 0)], Properties(subscription_identifiers=(7,)))
        )
        packets = c.expect_closed(3.0)
        assert disconnect_reason(packets) == 0xA1
        assert not any(isinstance(p, SubAck) for p in packets)


def test_shared_subscriptions_unavailable_suback_0x9e(limited: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.2.2.3.13: Shared Subscription Available 0 -> ``$share/...`` filters get
    SUBACK 0x9E Shared Subscriptions not supported; others are granted."""
    c, _ = _client(limited, uniq)
    with c:
        c.send(Subscribe(5, [Subscription(f"$share/g/{uniq}/t", 0), Subscription(f"{uniq}/t", 0)]))
        assert c.expect(SubAck).reason_codes == [0x9E, 0]


@pytest.mark.parametrize(("asked", "told"), [(60, 30), (0, 30), (10, None), (30, None)])
def test_mqtt_3_2_2_21_server_keep_alive(
    limited: BrokerProcess, uniq: str, asked: int, told: int | None
) -> None:
    """MQTT 5.0 §3.2.2.3.14: a Keep Alive above ``max_keepalive`` (30), or 0, is lowered
    and the client is told with Server Keep Alive (which it must then use
    [MQTT-3.2.2-21]); a Keep Alive within the limit is kept and no Server Keep Alive
    is sent [MQTT-3.2.2-22]."""
    c, ack = _client(limited, uniq, keepalive=asked)
    with c:
        assert ack.properties.server_keep_alive == told


def test_server_keep_alive_is_enforced(make_broker, uniq: str) -> None:
    """[MQTT-3.1.2-22] with [MQTT-3.2.2-21]: the server applies the Server Keep Alive it
    announced (1 s): a client that asked for 60 s and stays silent is disconnected
    after 1.5 s with DISCONNECT 0x8D Keep Alive timeout."""
    b = make_broker(extra="mqtt:\n  max_keepalive: 1\n")
    c, ack = _client(b, uniq, keepalive=60)
    with c:
        assert ack.properties.server_keep_alive == 1
        started = time.monotonic()
        assert disconnect_reason(c.expect_closed(4.0)) == 0x8D
        assert 1.0 <= time.monotonic() - started < 3.5


def test_mqtt_3_2_2_16_assigned_client_identifier(limited: BrokerProcess) -> None:
    """[MQTT-3.2.2-16]: a zero-length Client Identifier is answered with an Assigned
    Client Identifier, unique per connection, which then names the session (a
    reconnect with it and Clean Start 0 finds the session)."""
    expiry = Properties(session_expiry_interval=30)
    a, ack_a = _client(limited, "", properties=expiry)
    b, ack_b = _client(limited, "")
    with a, b:
        ida = ack_a.properties.assigned_client_identifier
        idb = ack_b.properties.assigned_client_identifier
        assert ida and idb and ida != idb
        a.subscribe("assigned/t", 1)
        a.disconnect()
        again, ack = _client(limited, ida, clean_start=False, properties=expiry)
        with again:
            assert ack.session_present is True
            assert ack.properties.assigned_client_identifier is None
            again.disconnect(properties=Properties(session_expiry_interval=0))


def test_response_information_when_requested(limited: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.2.2.3.15: with ``response_information_prefix`` set, a client asking
    (Request Response Information 1) gets Response Information; [MQTT-3.1.2-28]: one
    that asks 0 or does not ask gets none."""
    c, ack = _client(limited, uniq, properties=Properties(request_response_information=1))
    with c:
        assert ack.properties.response_information == f"resp/{uniq}"
    for props in (Properties(request_response_information=0), Properties()):
        c, ack = _client(limited, uniq, properties=props)
        with c:
            assert ack.properties.response_information is None


# ----------------------------------------------------------------- problem information


def test_mqtt_3_1_2_29_request_problem_information_0(make_broker, tmp_path, uniq: str) -> None:
    """[MQTT-3.1.2-29]: with Request Problem Information 0 the server sends no Reason
    String or User Property on anything but PUBLISH, CONNACK and DISCONNECT -- checked
    on every failing acknowledgement the server can make (PUBACK 0x87, PUBREC 0x87,
    PUBREL 0x92, PUBCOMP 0x92, SUBACK 0x87, UNSUBACK 0x11); the DISCONNECT for a
    protocol error may still carry a Reason String."""
    (tmp_path / "acl").write_text(f"topic readwrite {uniq}/ok/#\n")
    b = make_broker(extra="auth:\n  acl_file: acl\n")
    c, ack = _client(b, uniq, properties=Properties(request_problem_information=0))
    with c:
        assert ack.reason_code == 0
        got = []
        c.send(Publish(f"{uniq}/denied", b"x", 1, packet_id=1))
        got.append(c.expect(PubAck))
        c.send(Publish(f"{uniq}/denied", b"x", 2, packet_id=2))
        got.append(c.expect(PubRec))
        c.send(PubRec(300))
        got.append(c.expect(PubRel))
        c.send(PubRel(301))
        got.append(c.expect(PubComp))
        c.send(Subscribe(3, [Subscription(f"{uniq}/no", 0)]))
        got.append(c.expect(SubAck))
        c.send(Unsubscribe(4, [f"{uniq}/ok/none"]))
        got.append(c.expect(UnsubAck))
        assert [getattr(p, "reason_code", None) for p in got[:4]] == [0x87, 0x87, 0x92, 0x92]
        assert got[4].reason_codes == [0x87]
        assert got[5].reason_codes == [0x11]
        for p in got:
            assert p.properties.reason_string is None, p
            assert p.properties.user_properties == (), p
        c.send(PingReq())
        c.expect(PingResp)
        c.send_raw(publish_bytes(b"a/+", b"x", 0, version=5))
        packets = c.expect_closed(3.0)
        assert disconnect_reason(packets) == 0x90


def test_mqtt_3_14_2_3_disconnect_reason_string_dropped_for_small_client(raw, uniq: str) -> None:
    """[MQTT-3.14.2-3] [MQTT-3.14.2-4]: the server omits the Reason String (and User
    Properties) of its DISCONNECT when they would make it larger than the client's
    Maximum Packet Size -- the DISCONNECT itself, with its reason code, still goes
    out [MQTT-3.1.2-24]."""
    c: RawClient = raw(5)
    ack = c.connect(uniq, properties=Properties(maximum_packet_size=40))
    assert ack.reason_code == 0
    c.send_raw(publish_bytes(f"{uniq}/+".encode(), b"x", 0, version=5))
    packets = c.expect_closed(3.0)
    disc = [p for p in packets if isinstance(p, Disconnect)]
    assert [d.reason_code for d in disc] == [0x90]
    assert disc[0].properties.reason_string is None


def test_limited_broker_still_healthy(limited: BrokerProcess) -> None:
    assert_broker_healthy(limited, 5)
