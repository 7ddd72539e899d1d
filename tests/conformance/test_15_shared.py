"""MQTT 5.0 shared subscriptions ``$share/{ShareName}/{filter}`` (§4.8.2).

The shared broker uses the default strategy, round-robin.
"""

from __future__ import annotations

import time

import pytest

from iotbroker.codec.packets import (
    Properties,
    PubAck,
    Publish,
    PubRec,
    SubAck,
    Subscribe,
    Subscription,
)
from tests.helpers.conformance import collect_publishes, disconnect_reason, drain
from tests.helpers.rawclient import RawClient


def _c(raw, client_id: str, **kwargs: object) -> RawClient:
    c: RawClient = raw(5)
    assert c.connect(client_id, **kwargs).reason_code == 0  # type: ignore[arg-type]
    return c


def _members(raw, uniq: str, n: int, qos: int = 1, filt: str | None = None) -> list[RawClient]:
    out = []
    for i in range(n):
        m = _c(raw, f"{uniq}-m{i}")
        share = f"$share/{uniq}/{filt or uniq + '/t'}"
        assert m.subscribe(share, qos).reason_codes == [qos]
        out.append(m)
    return out


def _who_got(members: list[RawClient]) -> tuple[RawClient, Publish]:
    """The member that received the next PUBLISH (without acknowledging it)."""
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        for m in members:
            try:
                return m, m.expect(Publish, 0.05)
            except TimeoutError:
                continue
    raise AssertionError("no member received the message")


def _payloads(client: RawClient) -> list[bytes]:
    got = []
    for p in drain(client, 0.3, 2.0):
        if isinstance(p, Publish):
            got.append(p.payload)
            if p.qos == 1:
                client.send(PubAck(p.packet_id or 0))
    return got


def test_shared_each_message_to_one_member_round_robin(raw, uniq: str) -> None:
    """MQTT 5.0 §4.8.2: each message matching a shared subscription goes to exactly one
    member of the group; with the round-robin strategy members take turns, so 6 messages
    over 3 members are 2 each, and together they are all 6, in order per member."""
    members = _members(raw, uniq, 3)
    pub = _c(raw, f"{uniq}-pub")
    for i in range(6):
        pub.publish(f"{uniq}/t", b"%d" % i, 1)
    per_member = [_payloads(m) for m in members]
    assert [len(p) for p in per_member] == [2, 2, 2]
    assert sorted(p for got in per_member for p in got) == [b"%d" % i for i in range(6)]
    for got in per_member:
        assert got == sorted(got)
        assert int(got[1]) - int(got[0]) == 3  # strict turns


def test_shared_groups_and_plain_subscriptions_each_get_a_copy(raw, uniq: str) -> None:
    """MQTT 5.0 §4.8.2: every share group gets its own copy (one member each), and an
    ordinary subscription on the same topic gets it as usual; a wildcard shared filter
    works like a wildcard filter."""
    g1 = _c(raw, f"{uniq}-g1")
    g1.subscribe(f"$share/{uniq}-one/{uniq}/+", 1)
    g2 = _c(raw, f"{uniq}-g2")
    g2.subscribe(f"$share/{uniq}-two/{uniq}/#", 1)
    plain = _c(raw, f"{uniq}-plain")
    plain.subscribe(f"{uniq}/t", 1)
    _c(raw, f"{uniq}-pub").publish(f"{uniq}/t", b"m", 1)
    for c in (g1, g2, plain):
        assert c.receive_publish().payload == b"m"
        c.nothing(0.2)


def test_mqtt_4_8_2_3_shared_delivery_respects_granted_qos(raw, uniq: str) -> None:
    """[MQTT-4.8.2-3]: a member is sent the message at min(published QoS, the QoS granted
    to that member): QoS 0 to the member subscribed at 0, QoS 2 to the one at 2."""
    m0 = _c(raw, f"{uniq}-m0")
    m0.subscribe(f"$share/{uniq}/{uniq}/t", 0)
    m2 = _c(raw, f"{uniq}-m2")
    m2.subscribe(f"$share/{uniq}/{uniq}/t", 2)
    pub = _c(raw, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"a", 2)
    pub.publish(f"{uniq}/t", b"b", 2)
    got = {c: collect_publishes(c, 1)[0].qos for c in (m0, m2)}
    assert got == {m0: 0, m2: 2}


def test_shared_subscription_gets_no_retained_messages(raw, uniq: str) -> None:
    """MQTT 5.0 §3.8.4 / §4.8.2: retained messages are not sent to a shared subscription
    when it is made; live retained messages still reach one member."""
    pub = _c(raw, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"old", 1, retain=True)
    (m,) = _members(raw, uniq, 1)
    m.nothing(0.3)
    pub.publish(f"{uniq}/t", b"live", 1)
    assert m.receive_publish().payload == b"live"
    pub.publish(f"{uniq}/t", b"", 0, retain=True)


def test_mqtt_3_8_3_4_no_local_on_shared_is_protocol_error(raw, uniq: str) -> None:
    """[MQTT-3.8.3-4]: No Local 1 on a shared subscription is a Protocol Error: DISCONNECT
    0x82, no SUBACK, connection closed."""
    c = _c(raw, uniq)
    c.send(Subscribe(1, [Subscription(f"$share/{uniq}/{uniq}/t", 1, no_local=True)]))
    packets = c.expect_closed(3.0)
    assert disconnect_reason(packets) == 0x82
    assert not any(isinstance(p, SubAck) for p in packets)


@pytest.mark.parametrize(
    "bad", ["$share//t", "$share/g", "$share/g/", "$share/g+/t", "$share/g#/t", "$share/g/a#"]
)
def test_mqtt_4_8_2_2_invalid_share_names_close(raw, uniq: str, bad: str) -> None:
    """[MQTT-4.8.2-1] [MQTT-4.8.2-2]: a ShareName must be non-empty, without ``+`` or ``#``
    and followed by ``/`` and a valid Topic Filter. A filter that breaks this is a
    Protocol Error, not a refused subscription: DISCONNECT 0x82 [MQTT-4.13.1-1], no
    SUBACK (issue 18)."""
    c = _c(raw, uniq)
    c.send(Subscribe(1, [Subscription(bad, 1), Subscription(f"{uniq}/ok", 1)]))
    packets = c.expect_closed(3.0)
    assert disconnect_reason(packets) == 0x82
    assert not any(isinstance(p, SubAck) for p in packets)


def test_shared_unacked_qos1_redelivered_to_another_member(raw, uniq: str) -> None:
    """MQTT 5.0 §4.8.2: when a member's connection breaks with a QoS 1 message
    unacknowledged and its session ends, the server should send the message to another
    member of the group; the message then arrives there once."""
    a, b = _members(raw, uniq, 2)
    pub = _c(raw, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"for-a", 1)
    got_a = a.expect(Publish)
    assert got_a.payload == b"for-a"
    a.close()
    got = b.receive_publish(timeout=3.0)
    assert got.payload == b"for-a"
    b.nothing(0.3)


def test_mqtt_4_8_2_6_rejected_shared_message_not_redistributed(raw, uniq: str) -> None:
    """[MQTT-4.8.2-6]: a member that rejects a shared message with PUBACK 0x80 (or above)
    has finished with it: it is discarded, not sent to another member -- not even when
    the rejecting member then goes away."""
    a, b = _members(raw, uniq, 2)
    pub = _c(raw, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"rejected", 1)
    got = a.expect(Publish)
    a.send(PubAck(got.packet_id or 0, 0x80))
    time.sleep(0.1)
    a.close()
    b.nothing(0.5)


def test_mqtt_4_8_2_5_interrupted_shared_qos2_not_sent_to_another_member(raw, uniq: str) -> None:
    """[MQTT-4.8.2-4] [MQTT-4.8.2-5]: a shared QoS 2 delivery interrupted by the member's
    disconnect is completed with that member when it reconnects (its session kept);
    it is not redelivered to another member."""
    props = Properties(session_expiry_interval=30)
    a = _c(raw, f"{uniq}-a", properties=props, clean_start=True)
    a.subscribe(f"$share/{uniq}/{uniq}/t", 2)
    (b,) = _members(raw, uniq, 1, qos=2)
    pub = _c(raw, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"decoy", 2)  # round-robin: one of a/b
    pub.publish(f"{uniq}/t", b"other", 2)
    first_a = a.expect(Publish)
    a.close()
    # b gets its own message, and not a's.
    got_b = collect_publishes(b, 1)
    assert got_b[0].payload != first_a.payload
    b.nothing(0.4)
    again = _c(raw, f"{uniq}-a", properties=props, clean_start=False)
    resent = again.expect(Publish)
    assert (resent.payload, resent.packet_id, resent.dup) == (
        first_a.payload,
        first_a.packet_id,
        True,
    )
    again.send(PubRec(resent.packet_id or 0))
    again.disconnect(properties=Properties(session_expiry_interval=0))


def test_mqtt_4_8_2_5_shared_qos2_session_ended_not_redelivered(raw, uniq: str) -> None:
    """[MQTT-4.8.2-5]: if the member's session ends before it reconnects, an interrupted
    shared QoS 2 message is not sent to another subscriber."""
    a, b = _members(raw, uniq, 2, qos=2)
    pub = _c(raw, f"{uniq}-pub")
    pub.publish(f"{uniq}/t", b"qos2", 2)
    holder, got = _who_got([a, b])
    other = b if holder is a else a
    assert got.payload == b"qos2"
    holder.close()
    other.nothing(0.5)


def test_unsubscribe_shared_subscription(raw, uniq: str) -> None:
    """MQTT 5.0 §4.8.2 / [MQTT-3.10.4-1]: UNSUBSCRIBE with the full ``$share/...`` filter
    removes the member (0x00); the remaining member then gets every message."""
    a, b = _members(raw, uniq, 2)
    assert a.unsubscribe(f"$share/{uniq}/{uniq}/t").reason_codes == [0]
    assert a.unsubscribe(f"{uniq}/t").reason_codes == [0x11]
    pub = _c(raw, f"{uniq}-pub")
    for i in range(3):
        pub.publish(f"{uniq}/t", b"%d" % i, 1)
    assert [p.payload for p in collect_publishes(b, 3)] == [b"0", b"1", b"2"]
    a.nothing(0.2)
