"""MQTT 5.0 Topic Aliases (§3.3.2.3.4), flow control (§4.9) and the client's Maximum
Packet Size (§3.1.2.11.4).

Inbound limits are checked on a broker of this module's own with a Topic Alias Maximum
of 2 and a Receive Maximum of 3; client-side limits on the shared broker.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iotbroker.codec.packets import Properties, PubAck, PubComp, Publish, PubRec, PubRel
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.conformance import disconnect_reason, ping
from tests.helpers.rawclient import RawClient


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    extra = "mqtt:\n  topic_alias_maximum: 2\n  receive_maximum: 3\n"
    proc = BrokerProcess(tmp_path_factory.mktemp("alias-broker"), broker_config(extra=extra))
    proc.start()
    yield proc
    proc.stop()


def _on(b: BrokerProcess, client_id: str, **kwargs: object) -> RawClient:
    c = RawClient(b.host, b.port, 5, timeout=3.0)
    assert c.connect(client_id, **kwargs).reason_code == 0  # type: ignore[arg-type]
    return c


def _alias(n: int) -> Properties:
    return Properties(topic_alias=n)


def _resolve(got: Publish, aliases: dict[int, str], maximum: int) -> str:
    """The topic a received PUBLISH stands for, checking the alias rules on the way."""
    alias = got.properties.topic_alias
    if alias is None:
        assert got.topic, "PUBLISH with neither topic nor alias"
        return got.topic
    assert 1 <= alias <= maximum, f"alias {alias} outside 1..{maximum} [MQTT-3.3.2-11]"
    if got.topic:
        aliases[alias] = got.topic
        return got.topic
    assert alias in aliases, f"alias {alias} used before the server set it"
    return aliases[alias]


# ----------------------------------------------------------------- inbound aliases


def test_mqtt_3_3_2_12_inbound_alias_set_used_and_remapped(small: BrokerProcess, uniq: str) -> None:
    """[MQTT-3.3.2-12]: the server accepts aliases 1..its Topic Alias Maximum; an alias
    alone stands for the topic it was last set to, and a client may map an alias to a
    new topic at any time (MQTT 5.0 §3.3.2.3.4). Subscribers get the real topic name."""
    sub = _on(small, f"{uniq}-sub")
    pub = _on(small, f"{uniq}-pub")
    with sub, pub:
        sub.subscribe(f"{uniq}/#", 1)
        pub.publish(f"{uniq}/a", b"1", 1, properties=_alias(1))
        pub.publish("", b"2", 1, properties=_alias(1))
        pub.publish(f"{uniq}/b", b"3", 1, properties=_alias(2))
        pub.publish(f"{uniq}/c", b"4", 1, properties=_alias(1))  # remap 1
        pub.publish("", b"5", 1, properties=_alias(1))
        pub.publish("", b"6", 1, properties=_alias(2))
        got = [sub.receive_publish() for _ in range(6)]
        assert [(p.topic, p.payload) for p in got] == [
            (f"{uniq}/a", b"1"),
            (f"{uniq}/a", b"2"),
            (f"{uniq}/b", b"3"),
            (f"{uniq}/c", b"4"),
            (f"{uniq}/c", b"5"),
            (f"{uniq}/b", b"6"),
        ]
        assert all(p.properties.topic_alias is None for p in got)


def test_inbound_alias_retained_message_stored_under_topic(small: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.3.2.3.4: an alias is only a stand-in for the topic on one connection: a
    retained message published as alias alone is stored under the real topic name, so a
    later subscriber (another connection) gets the topic name and no alias."""
    with _on(small, f"{uniq}-pub") as pub:
        pub.publish(f"{uniq}/r", b"set", 1, properties=_alias(2))
        pub.publish("", b"kept", 1, retain=True, properties=_alias(2))
        with _on(small, f"{uniq}-late") as late:
            late.subscribe(f"{uniq}/#", 1)
            got = late.receive_publish()
            assert (got.topic, got.payload, got.retain) == (f"{uniq}/r", b"kept", True)
            assert got.properties.topic_alias is None
        pub.publish(f"{uniq}/r", b"", 0, retain=True)


@pytest.mark.parametrize("alias", [3, 0xFFFF, 0])
def test_mqtt_3_3_2_9_inbound_alias_out_of_range_0x94(
    small: BrokerProcess, uniq: str, alias: int
) -> None:
    """[MQTT-3.3.2-9] (client rule) / [MQTT-3.3.2-8]: an alias above our Topic Alias
    Maximum (2), or 0, is answered with DISCONNECT 0x94 Topic Alias invalid and the
    connection is closed; nothing is delivered."""
    sub = _on(small, f"{uniq}-sub")
    pub = _on(small, f"{uniq}-pub")
    with sub, pub:
        sub.subscribe(f"{uniq}/#", 0)
        pub.send(Publish(f"{uniq}/t", b"x", 0, properties=_alias(alias)))
        assert disconnect_reason(pub.expect_closed(3.0)) == 0x94
        sub.nothing(0.2)


def test_inbound_unknown_alias_is_protocol_error(small: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.3.2.3.4: an alias-only PUBLISH (empty topic) with an alias that was
    never set on this connection is a Protocol Error (DISCONNECT 0x82)."""
    pub = _on(small, uniq)
    with pub:
        pub.send(Publish("", b"x", 0, properties=_alias(2)))
        assert disconnect_reason(pub.expect_closed(3.0)) == 0x82


def test_mqtt_3_3_2_7_inbound_aliases_do_not_survive_reconnect(
    small: BrokerProcess, uniq: str
) -> None:
    """[MQTT-3.3.2-7]: alias mappings belong to one network connection: after a reconnect
    (even resuming the session) alias 1 means nothing, so using it alone is a Protocol
    Error."""
    props = Properties(session_expiry_interval=30)
    first = _on(small, uniq, properties=props)
    with first:
        first.publish(f"{uniq}/t", b"x", 1, properties=_alias(1))
        first.disconnect()
    second = RawClient(small.host, small.port, 5, timeout=3.0)
    with second:
        ack = second.connect(uniq, clean_start=False, properties=props)
        assert ack.session_present is True
        second.send(Publish("", b"y", 1, packet_id=5, properties=_alias(1)))
        assert disconnect_reason(second.expect_closed(3.0)) == 0x82


# ----------------------------------------------------------------- outbound aliases


def test_mqtt_3_3_2_11_outbound_aliases_within_client_maximum(raw, uniq: str) -> None:
    """[MQTT-3.3.2-11] [MQTT-3.1.2-26]: with the client's Topic Alias Maximum 2 the server
    uses aliases 1 and 2 only, never 0 [MQTT-3.3.2-8], even cycling over three topics;
    every PUBLISH resolves to the right topic."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub", properties=Properties(topic_alias_maximum=2))
    sub.subscribe(f"{uniq}/#", 0)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    topics = [f"{uniq}/{c}" for c in "abcabcaabbcc"]
    for i, t in enumerate(topics):
        pub.publish(t, b"%d" % i, 0)
    aliases: dict[int, str] = {}
    for i, t in enumerate(topics):
        got = sub.receive_publish()
        assert (_resolve(got, aliases, 2), got.payload) == (t, b"%d" % i)


def test_outbound_repeated_topic_sent_as_alias_alone(raw, uniq: str) -> None:
    """MQTT 5.0 §3.3.2.3.4 (what Topic Alias is for): with an alias available, the first
    PUBLISH on a topic carries topic and alias; later ones on that topic carry the alias
    with a zero-length topic."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub", properties=Properties(topic_alias_maximum=10))
    sub.subscribe(f"{uniq}/t", 1)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    for i in range(3):
        pub.publish(f"{uniq}/t", b"%d" % i, 1)
    got = [sub.receive_publish() for _ in range(3)]
    alias = got[0].properties.topic_alias
    assert alias is not None and 1 <= alias <= 10
    assert got[0].topic == f"{uniq}/t"
    assert [(p.topic, p.properties.topic_alias) for p in got[1:]] == [("", alias)] * 2


def test_mqtt_3_1_2_25_dropped_large_message_does_not_leave_alias_unset(raw, uniq: str) -> None:
    """[MQTT-3.1.2-25] with §3.3.2.3.4: a message dropped because it exceeds the client's
    Maximum Packet Size never reached the client, so it cannot have set an alias: the
    next (small) message on the same topic must still carry the topic name (or an alias
    the client has actually received)."""
    sub: RawClient = raw(5)
    sub.connect(
        f"{uniq}-sub", properties=Properties(topic_alias_maximum=5, maximum_packet_size=200)
    )
    sub.subscribe(f"{uniq}/t", 1)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"L" * 400, 1)
    pub.publish(f"{uniq}/t", b"small", 1)
    got = sub.receive_publish()
    assert got.payload == b"small"
    assert _resolve(got, {}, 5) == f"{uniq}/t"


# ----------------------------------------------------------------- receive maximum


def test_mqtt_3_3_4_9_client_receive_maximum_qos2_until_pubcomp(raw, uniq: str) -> None:
    """[MQTT-3.3.4-9] [MQTT-4.9.0-2]: with the client's Receive Maximum 1, a QoS 2
    delivery holds the send quota until its PUBCOMP (not its PUBREC, MQTT 5.0 §4.9);
    other packets still flow meanwhile [MQTT-4.9.0-3]."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub", properties=Properties(receive_maximum=1))
    sub.subscribe(f"{uniq}/t", 2)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    for i in range(3):
        pub.publish(f"{uniq}/t", b"%d" % i, 2)
    first = sub.expect(Publish)
    sub.nothing(0.3)
    sub.send(PubRec(first.packet_id or 0))
    assert sub.expect(PubRel).packet_id == first.packet_id
    sub.nothing(0.3)
    ping(sub)
    sub.send(PubComp(first.packet_id or 0))
    second = sub.receive_publish()
    third = sub.receive_publish()
    assert [first.payload, second.payload, third.payload] == [b"0", b"1", b"2"]


def test_mqtt_4_9_0_1_receive_maximum_default_allows_many(raw, uniq: str) -> None:
    """[MQTT-4.9.0-1]: the server's send quota starts at the client's Receive Maximum
    (default 65535 when absent, bounded by our ``max_inflight`` 20): 20 QoS 1 messages
    arrive without any PUBACK, the 21st waits for one."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub")
    sub.subscribe(f"{uniq}/t", 1)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    for i in range(21):
        pub.publish(f"{uniq}/t", b"%d" % i, 1)
    got = [sub.expect(Publish) for _ in range(20)]
    sub.nothing(0.3)
    sub.send(PubAck(got[0].packet_id or 0))
    assert sub.receive_publish().payload == b"20"


def test_mqtt_3_3_4_9_inbound_receive_maximum_overrun_0x93(small: BrokerProcess, uniq: str) -> None:
    """MQTT 5.0 §3.3.4 (our Receive Maximum 3; [MQTT-3.3.4-7] binds the client): a fourth
    unacknowledged QoS 2 PUBLISH is DISCONNECT 0x93 Receive Maximum exceeded. Completing
    one exchange (PUBREL -> PUBCOMP) frees a slot first."""
    c = _on(small, uniq)
    with c:
        for pid in (1, 2, 3):
            c.send(Publish(f"{uniq}/t", b"x", 2, packet_id=pid))
            assert c.expect(PubRec).packet_id == pid
        c.send(PubRel(1))
        assert c.expect(PubComp).packet_id == 1
        c.send(Publish(f"{uniq}/t", b"x", 2, packet_id=4))
        assert c.expect(PubRec).packet_id == 4
        c.send(Publish(f"{uniq}/t", b"x", 2, packet_id=5))
        assert disconnect_reason(c.expect_closed(3.0)) == 0x93


# ----------------------------------------------------------------- maximum packet size


def test_mqtt_3_1_2_25_too_large_for_one_client_others_still_get_it(raw, uniq: str) -> None:
    """[MQTT-3.1.2-24] [MQTT-3.1.2-25]: a message larger than one subscriber's Maximum
    Packet Size is not sent to it (and counts as delivered: its Receive Maximum 1 is not
    used up); another subscriber without that limit receives it."""
    small: RawClient = raw(5)
    small.connect(
        f"{uniq}-small", properties=Properties(maximum_packet_size=100, receive_maximum=1)
    )
    small.subscribe(f"{uniq}/t", 1)
    big: RawClient = raw(5)
    big.connect(f"{uniq}-big")
    big.subscribe(f"{uniq}/t", 1)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"L" * 500, 1)
    pub.publish(f"{uniq}/t", b"s", 1)
    assert [big.receive_publish().payload for _ in range(2)] == [b"L" * 500, b"s"]
    got = small.receive_publish()
    assert got.payload == b"s"
    small.nothing(0.3)


def test_mqtt_3_3_4_9_receive_maximum_applies_to_resent_messages(raw, uniq: str) -> None:
    """[MQTT-3.3.4-9] with [MQTT-4.4.0-1]: the unacknowledged messages re-sent when a
    session resumes count against the Receive Maximum of the *new* connection: a client
    that left 3 QoS 1 messages unacknowledged and comes back with Receive Maximum 1 gets
    one re-sent PUBLISH, and the next only after its PUBACK."""
    expiry = Properties(session_expiry_interval=30)
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub", clean_start=True, properties=expiry)
    sub.subscribe(f"{uniq}/t", 1)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    for i in range(3):
        pub.publish(f"{uniq}/t", b"%d" % i, 1)
    first = [sub.expect(Publish) for _ in range(3)]
    sub.close()
    again: RawClient = raw(5)
    props = Properties(session_expiry_interval=0, receive_maximum=1)
    assert again.connect(f"{uniq}-sub", clean_start=False, properties=props).session_present
    got = [again.expect(Publish)]
    again.nothing(0.3)
    for _ in range(2):
        again.send(PubAck(got[-1].packet_id or 0))
        got.append(again.expect(Publish))
    again.send(PubAck(got[-1].packet_id or 0))
    assert [(p.payload, p.dup) for p in got] == [(p.payload, True) for p in first]
