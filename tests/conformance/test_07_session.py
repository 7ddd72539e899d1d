"""Session state across connections (MQTT 3.1.1 §3.1.2.4, §4.1, §4.4; MQTT 5.0 §3.1.2.4,
§3.1.2.11.2, §4.1, §4.4)."""

from __future__ import annotations

import time

import pytest

from iotbroker.codec.packets import (
    Disconnect,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
)
from tests.helpers.conformance import collect_publishes, disconnect_reason
from tests.helpers.rawclient import RawClient

VERSIONS = pytest.mark.parametrize("version", [4, 5])


def _persistent(version: int, expiry: int = 300) -> Properties | None:
    """CONNECT properties asking for a session that outlives the connection."""
    return Properties(session_expiry_interval=expiry) if version == 5 else None


def _connect(raw, version: int, client_id: str, clean: bool, expiry: int | None = 300):
    client: RawClient = raw(version)
    props = Properties(session_expiry_interval=expiry) if version == 5 and expiry else None
    ack = client.connect(client_id, clean_start=clean, properties=props)
    assert ack.reason_code == 0
    return client, ack


def _publisher(raw, version: int, uniq: str) -> RawClient:
    pub: RawClient = raw(version)
    pub.connect(f"{uniq}-pub")
    return pub


def _gone(client: RawClient) -> None:
    """Drop the socket without DISCONNECT and give the broker a moment to notice."""
    client.close()
    time.sleep(0.1)


@VERSIONS
def test_mqtt_3_1_2_4_subscriptions_survive_reconnect(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-4] (3.1.1) / [MQTT-3.1.2-5] [MQTT-3.1.2-23] (5.0): with Clean Session 0
    (5.0: Clean Start 0 and Session Expiry > 0) the subscriptions are kept after the
    connection ends and apply when the client comes back [MQTT-3.1.3-2]."""
    sub, _ = _connect(raw, version, uniq, clean=False)
    assert sub.subscribe(f"{uniq}/t", 1).reason_codes == [1]
    sub.disconnect()
    again, ack = _connect(raw, version, uniq, clean=False)
    assert ack.session_present is True
    _publisher(raw, version, uniq).publish(f"{uniq}/t", b"still subscribed", 1)
    got = again.receive_publish()
    assert (got.payload, got.qos) == (b"still subscribed", 1)
    again.disconnect()
    _connect(raw, version, uniq, clean=True, expiry=None)


@VERSIONS
def test_mqtt_3_1_2_5_offline_messages_queued_and_delivered(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-5] (3.1.1) / [MQTT-3.1.2-23] [MQTT-4.5.0-1] (5.0): QoS 1 and 2 messages
    matching a disconnected persistent session are stored and delivered, in order
    [MQTT-4.6.0-6] (3.1.1) / [MQTT-4.6.0-5] (5.0), on reconnect, after the CONNACK
    [MQTT-3.2.0-1]."""
    sub, _ = _connect(raw, version, uniq, clean=False)
    sub.subscribe(f"{uniq}/t", 2)
    sub.disconnect()
    pub = _publisher(raw, version, uniq)
    for i, qos in enumerate((1, 2, 1, 2)):
        pub.publish(f"{uniq}/t", b"offline-%d" % i, qos)
    again, ack = _connect(raw, version, uniq, clean=False)
    assert ack.session_present is True
    got = collect_publishes(again, 4)
    assert [(p.payload, p.qos) for p in got] == [
        (b"offline-0", 1),
        (b"offline-1", 2),
        (b"offline-2", 1),
        (b"offline-3", 2),
    ]
    again.nothing(0.3)
    again.disconnect()
    _connect(raw, version, uniq, clean=True, expiry=None)


@VERSIONS
def test_mqtt_4_4_0_1_unacked_publish_resent_with_dup(raw, uniq: str, version: int) -> None:
    """[MQTT-4.4.0-1]: on reconnect with a kept session the server re-sends unacknowledged
    PUBLISH packets with their original Packet Identifiers, DUP=1 [MQTT-3.3.1-1], in
    their original order [MQTT-4.6.0-6] (3.1.1) / [MQTT-4.6.0-5] (5.0); messages queued
    while offline follow, DUP=0."""
    sub, _ = _connect(raw, version, uniq, clean=False)
    sub.subscribe(f"{uniq}/t", 2)
    pub = _publisher(raw, version, uniq)
    for i, qos in enumerate((1, 2, 1)):
        pub.publish(f"{uniq}/t", b"inflight-%d" % i, qos)
    first = [sub.receive_publish(ack=False) for _ in range(3)]
    assert [p.dup for p in first] == [False] * 3
    _gone(sub)
    pub.publish(f"{uniq}/t", b"queued", 1)
    again, ack = _connect(raw, version, uniq, clean=False)
    assert ack.session_present is True
    resent = [again.expect(Publish) for _ in range(3)]
    assert [(p.payload, p.packet_id, p.qos, p.dup) for p in resent] == [
        (p.payload, p.packet_id, p.qos, True) for p in first
    ]
    qos2 = set()
    for p in resent:
        if p.qos == 1:
            again.send(PubAck(p.packet_id or 0))
        else:
            again.send(PubRec(p.packet_id or 0))
            qos2.add(p.packet_id or 0)
    queued = collect_publishes(again, 1, awaiting_pubrel=qos2)
    assert [(q.payload, q.dup) for q in queued] == [(b"queued", False)]
    again.nothing(0.3)
    again.disconnect()
    _connect(raw, version, uniq, clean=True, expiry=None)


@VERSIONS
def test_mqtt_4_4_0_1_unacked_pubrel_resent(raw, uniq: str, version: int) -> None:
    """[MQTT-4.4.0-1]: a QoS 2 delivery that reached PUBREC is resumed with PUBREL (same
    id), not with the PUBLISH again [MQTT-4.3.3-1] (3.1.1) / [MQTT-4.3.3-6] (5.0)."""
    sub, _ = _connect(raw, version, uniq, clean=False)
    sub.subscribe(f"{uniq}/t", 2)
    _publisher(raw, version, uniq).publish(f"{uniq}/t", b"two", 2)
    got = sub.expect(Publish)
    sub.send(PubRec(got.packet_id or 0))
    assert sub.expect(PubRel).packet_id == got.packet_id
    _gone(sub)
    again, ack = _connect(raw, version, uniq, clean=False)
    assert ack.session_present is True
    rel = again.expect(PubRel)
    assert rel.packet_id == got.packet_id
    again.send(PubComp(rel.packet_id))
    again.nothing(0.3)
    again.disconnect()
    _connect(raw, version, uniq, clean=True, expiry=None)


@VERSIONS
def test_mqtt_4_4_0_1_takeover_resumes_session_on_new_connection(
    raw, uniq: str, version: int
) -> None:
    """[MQTT-3.1.4-2] (3.1.1) / [MQTT-3.1.4-3] (5.0) with [MQTT-4.4.0-1]: a takeover with
    Clean Session 0 keeps the session: unacknowledged messages go to the new connection."""
    sub, _ = _connect(raw, version, uniq, clean=False)
    sub.subscribe(f"{uniq}/t", 1)
    _publisher(raw, version, uniq).publish(f"{uniq}/t", b"m", 1)
    first = sub.receive_publish(ack=False)
    new, ack = _connect(raw, version, uniq, clean=False)
    assert ack.session_present is True
    sub.expect_closed(3.0)
    got = new.expect(Publish)
    assert (got.payload, got.packet_id, got.dup) == (b"m", first.packet_id, True)
    new.send(PubAck(got.packet_id or 0))
    new.disconnect()
    _connect(raw, version, uniq, clean=True, expiry=None)


@VERSIONS
def test_mqtt_3_1_2_6_clean_session_discards_state(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-6] (3.1.1) / [MQTT-3.1.2-4] (5.0): Clean Session / Clean Start 1 discards
    the stored session: no Session Present, no queued messages, no subscriptions."""
    sub, _ = _connect(raw, version, uniq, clean=False)
    sub.subscribe(f"{uniq}/t", 1)
    sub.disconnect()
    pub = _publisher(raw, version, uniq)
    pub.publish(f"{uniq}/t", b"queued", 1)
    fresh, ack = _connect(raw, version, uniq, clean=True)
    assert ack.session_present is False
    fresh.nothing(0.3)
    pub.publish(f"{uniq}/t", b"after", 1)
    fresh.nothing(0.3)


def test_mqtt_3_1_2_6_clean_session_not_reused_v311(raw, uniq: str) -> None:
    """[MQTT-3.1.2-6] (3.1.1): a Clean Session 1 session ends with its connection and is
    never reused: a later Clean Session 0 connect gets Session Present 0 and no
    subscriptions."""
    sub, _ = _connect(raw, 4, uniq, clean=True)
    sub.subscribe(f"{uniq}/t", 1)
    sub.disconnect()
    again, ack = _connect(raw, 4, uniq, clean=False)
    assert ack.session_present is False
    _publisher(raw, 4, uniq).publish(f"{uniq}/t", b"x", 1)
    again.nothing(0.3)
    again.disconnect()
    _connect(raw, 4, uniq, clean=True)


def test_mqtt_4_1_0_2_v5_session_expiry_0_ends_at_disconnect(raw, uniq: str) -> None:
    """MQTT 5.0 §3.1.2.11.2 / [MQTT-4.1.0-2]: Session Expiry Interval absent (0) ends the
    session when the connection closes, even with Clean Start 0."""
    sub, _ = _connect(raw, 5, uniq, clean=False, expiry=None)
    sub.subscribe(f"{uniq}/t", 1)
    _gone(sub)
    pub = _publisher(raw, 5, uniq)
    pub.publish(f"{uniq}/t", b"lost", 1)
    again, ack = _connect(raw, 5, uniq, clean=False, expiry=None)
    assert ack.session_present is False
    again.nothing(0.3)


def test_mqtt_4_1_0_2_v5_session_expires_after_interval(raw, uniq: str) -> None:
    """[MQTT-4.1.0-2] (5.0): the server deletes the session once the Session Expiry
    Interval (1 s) has passed since the disconnect; before that it is kept
    [MQTT-3.1.2-23]."""
    kept, _ = _connect(raw, 5, f"{uniq}-kept", clean=False, expiry=1)
    kept.subscribe(f"{uniq}/k", 1)
    kept.disconnect()
    sub, _ = _connect(raw, 5, uniq, clean=False, expiry=1)
    sub.subscribe(f"{uniq}/t", 1)
    sub.disconnect()
    back, ack = _connect(raw, 5, f"{uniq}-kept", clean=False, expiry=1)
    assert ack.session_present is True
    back.disconnect()
    time.sleep(1.6)
    again, ack = _connect(raw, 5, uniq, clean=False, expiry=1)
    assert ack.session_present is False
    _publisher(raw, 5, uniq).publish(f"{uniq}/t", b"x", 1)
    again.nothing(0.3)


def test_v5_disconnect_sets_session_expiry_to_zero(raw, uniq: str) -> None:
    """MQTT 5.0 §3.14.2.2.2: the Session Expiry Interval sent on DISCONNECT replaces the
    one from CONNECT; 0 ends the session at the close [MQTT-4.1.0-2]."""
    sub, _ = _connect(raw, 5, uniq, clean=False, expiry=300)
    sub.subscribe(f"{uniq}/t", 1)
    sub.disconnect(properties=Properties(session_expiry_interval=0))
    time.sleep(0.1)
    _again, ack = _connect(raw, 5, uniq, clean=False, expiry=None)
    assert ack.session_present is False


def test_v5_disconnect_nonzero_expiry_after_zero_is_protocol_error(raw, uniq: str) -> None:
    """MQTT 5.0 §3.14.2.2.2: Session Expiry 0 at CONNECT and non-zero at DISCONNECT is a
    Protocol Error; the server may answer DISCONNECT 0x82 [MQTT-4.13.1-1] and must not
    keep the session."""
    client, _ = _connect(raw, 5, uniq, clean=False, expiry=None)
    client.subscribe(f"{uniq}/t", 1)
    client.send(Disconnect(0, Properties(session_expiry_interval=300)))
    got = client.expect_closed(3.0)
    code = disconnect_reason(got)
    assert code in (None, 0x82), got
    _again, ack = _connect(raw, 5, uniq, clean=False, expiry=None)
    assert ack.session_present is False


def test_mqtt_3_3_2_5_v5_expired_message_not_delivered_from_queue(raw, uniq: str) -> None:
    """[MQTT-3.3.2-5] (5.0): a queued message whose Message Expiry Interval passed before
    onward delivery started is not delivered; [MQTT-3.3.2-6]: a message still alive is
    delivered with its remaining expiry interval (reduced by the time waited)."""
    sub, _ = _connect(raw, 5, uniq, clean=False)
    sub.subscribe(f"{uniq}/t", 1)
    sub.disconnect()
    pub = _publisher(raw, 5, uniq)
    pub.publish(f"{uniq}/t", b"short", 1, properties=Properties(message_expiry_interval=1))
    pub.publish(f"{uniq}/t", b"long", 1, properties=Properties(message_expiry_interval=60))
    time.sleep(1.6)
    again, _ = _connect(raw, 5, uniq, clean=False)
    got = again.receive_publish()
    assert got.payload == b"long"
    assert got.properties.message_expiry_interval is not None
    assert got.properties.message_expiry_interval < 60
    again.nothing(0.3)
    again.disconnect()
    _connect(raw, 5, uniq, clean=True, expiry=None)


def test_mqtt_4_4_0_2_v5_failed_ack_not_retransmitted(raw, uniq: str) -> None:
    """[MQTT-4.4.0-2] (5.0): a PUBLISH answered by PUBACK or PUBREC with a reason code
    >= 0x80 is finished: no PUBREL follows, and it is not re-sent on reconnect."""
    sub, _ = _connect(raw, 5, uniq, clean=False)
    sub.subscribe(f"{uniq}/t", 2)
    pub = _publisher(raw, 5, uniq)
    pub.publish(f"{uniq}/t", b"q1", 1)
    pub.publish(f"{uniq}/t", b"q2", 2)
    got = {p.payload: p for p in (sub.expect(Publish), sub.expect(Publish))}
    sub.send(PubAck(got[b"q1"].packet_id or 0, 0x80))
    sub.send(PubRec(got[b"q2"].packet_id or 0, 0x80))
    sub.nothing(0.3)
    _gone(sub)
    again, ack = _connect(raw, 5, uniq, clean=False)
    assert ack.session_present is True
    again.nothing(0.4)
    again.disconnect()
    _connect(raw, 5, uniq, clean=True, expiry=None)


@VERSIONS
def test_mqtt_4_3_3_2_inbound_qos2_id_kept_across_reconnect(raw, uniq: str, version: int) -> None:
    """[MQTT-4.3.3-2] (3.1.1) / [MQTT-4.3.3-10] (5.0) with [MQTT-4.4.0-1]: a QoS 2 PUBLISH
    whose PUBREL never came is part of the session; when the client reconnects and
    re-sends it (DUP=1, same id) it is not delivered a second time; the PUBREL gets its
    PUBCOMP."""
    watcher: RawClient = raw(version)
    watcher.connect(f"{uniq}-w")
    watcher.subscribe(f"{uniq}/t", 2)
    pub, _ = _connect(raw, version, f"{uniq}-pub", clean=False)
    pub.send(Publish(f"{uniq}/t", b"exactly once", 2, packet_id=17))
    assert pub.expect(PubRec).packet_id == 17
    _gone(pub)
    again, ack = _connect(raw, version, f"{uniq}-pub", clean=False)
    assert ack.session_present is True
    again.send(Publish(f"{uniq}/t", b"exactly once", 2, dup=True, packet_id=17))
    assert again.expect(PubRec).packet_id == 17
    again.send(PubRel(17))
    assert again.expect(PubComp).packet_id == 17
    assert watcher.receive_publish().payload == b"exactly once"
    watcher.nothing(0.3)
    again.disconnect()
    _connect(raw, version, f"{uniq}-pub", clean=True, expiry=None)


@VERSIONS
def test_mqtt_4_6_0_6_offline_queue_longer_than_inflight_window_in_order(
    raw, uniq: str, version: int
) -> None:
    """[MQTT-4.6.0-6] (3.1.1) / [MQTT-4.6.0-5] (5.0): 40 QoS 1 messages queued while
    offline (more than the in-flight window) arrive in publication order; each packet id
    is unused when sent [MQTT-2.3.1-4] / [MQTT-2.2.1-4]."""
    sub, _ = _connect(raw, version, uniq, clean=False)
    sub.subscribe(f"{uniq}/t", 1)
    sub.disconnect()
    pub = _publisher(raw, version, uniq)
    n = 40
    for i in range(n):
        pub.send(Publish(f"{uniq}/t", b"%d" % i, 1, packet_id=i + 1))
    for _ in range(n):
        pub.expect(PubAck)
    again, _ = _connect(raw, version, uniq, clean=False)
    got = collect_publishes(again, n)
    assert [p.payload for p in got] == [b"%d" % i for i in range(n)]
    again.disconnect()
    _connect(raw, version, uniq, clean=True, expiry=None)


def test_mqtt_3_3_1_9_queued_message_has_retain_0_v311(raw, uniq: str) -> None:
    """[MQTT-3.3.1-9] (3.1.1): a retained PUBLISH matched by an existing subscription of an
    offline session is forwarded with RETAIN=0 when the client comes back."""
    sub, _ = _connect(raw, 4, uniq, clean=False)
    sub.subscribe(f"{uniq}/t", 1)
    sub.disconnect()
    pub = _publisher(raw, 4, uniq)
    pub.publish(f"{uniq}/t", b"r", 1, retain=True)
    again, _ = _connect(raw, 4, uniq, clean=False)
    got = again.receive_publish()
    assert (got.payload, got.retain) == (b"r", False)
    again.disconnect()
    _connect(raw, 4, uniq, clean=True)
    pub.publish(f"{uniq}/t", b"", 0, retain=True)


@VERSIONS
def test_unknown_acks_are_harmless(raw, uniq: str, version: int) -> None:
    """[MQTT-4.3.2-3] / [MQTT-4.3.3-3] (5.0) side note: PUBACK or PUBCOMP for an id that is
    not in flight change nothing and do not break the connection; a PUBREC for an unknown id
    is answered with PUBREL (5.0: 0x92 Packet Identifier not found)."""
    client: RawClient = raw(version)
    client.connect(uniq)
    client.send(PubAck(999))
    client.send(PubComp(998))
    client.send(PubRec(997))
    rel = client.expect(PubRel)
    assert rel.packet_id == 997
    assert rel.reason_code in ((0, 0x92) if version == 5 else (0,))
    client.publish(f"{uniq}/alive", b"", 1)
