"""MQTT 5.0 Session Expiry (§3.1.2.11.2, §3.14.2.2.2) and Message Expiry (§3.3.2.3.3).

Intervals are 1 s so that "expired on time" costs about a second per test.
"""

from __future__ import annotations

import time

from iotbroker.codec.packets import Disconnect, Properties, PubAck, Publish, Will
from tests.helpers.conformance import collect_publishes, disconnect_reason
from tests.helpers.rawclient import RawClient


def _session(raw, client_id: str, expiry: int | None, clean: bool = False):
    c: RawClient = raw(5)
    props = Properties(session_expiry_interval=expiry) if expiry is not None else None
    ack = c.connect(client_id, clean_start=clean, properties=props)
    assert ack.reason_code == 0
    return c, ack


def _pub(raw, uniq: str) -> RawClient:
    p: RawClient = raw(5)
    p.connect(f"{uniq}-pub")
    return p


# ----------------------------------------------------------------- session expiry


def test_mqtt_3_1_2_23_session_kept_within_expiry(raw, uniq: str) -> None:
    """[MQTT-3.1.2-23]: with Session Expiry Interval > 0 the session outlives the
    connection: reconnecting within the interval finds it (Session Present 1
    [MQTT-3.2.2-3]) with its subscriptions and the QoS 1 messages queued meanwhile."""
    c, _ = _session(raw, uniq, 5, clean=True)
    c.subscribe(f"{uniq}/t", 1)
    c.close()
    time.sleep(0.1)
    _pub(raw, uniq).publish(f"{uniq}/t", b"while away", 1)
    again, ack = _session(raw, uniq, 5)
    assert ack.session_present is True
    assert again.receive_publish().payload == b"while away"
    again.disconnect(properties=Properties(session_expiry_interval=0))


def test_session_expires_on_time(raw, uniq: str) -> None:
    """MQTT 5.0 §3.1.2.11.2: the session ends once its Session Expiry Interval (1 s) has
    passed since the connection closed: a later Clean Start 0 gets Session Present 0 and
    no subscriptions, no queued messages [MQTT-3.2.2-3]."""
    c, _ = _session(raw, uniq, 1, clean=True)
    c.subscribe(f"{uniq}/t", 1)
    c.disconnect()
    pub = _pub(raw, uniq)
    pub.publish(f"{uniq}/t", b"queued", 1)
    time.sleep(1.4)
    again, ack = _session(raw, uniq, 0)
    assert ack.session_present is False
    pub.publish(f"{uniq}/t", b"after", 1)
    again.nothing(0.3)


def test_session_expiry_0_ends_with_connection(raw, uniq: str) -> None:
    """MQTT 5.0 §3.1.2.11.2: Session Expiry Interval absent (0) -> the session ends when
    the network connection closes, even with Clean Start 0."""
    c, _ = _session(raw, uniq, None)
    c.subscribe(f"{uniq}/t", 1)
    c.close()
    time.sleep(0.1)
    _again, ack = _session(raw, uniq, None)
    assert ack.session_present is False


def test_disconnect_changes_expiry_from_0_is_protocol_error(raw, uniq: str) -> None:
    """MQTT 5.0 §3.14.2.2.2: a DISCONNECT setting a non-zero Session Expiry Interval when
    the CONNECT had 0 is a Protocol Error: the server answers DISCONNECT 0x82 (without a
    Session Expiry Interval of its own [MQTT-3.14.2-2]) and closes the connection
    [MQTT-3.14.4-2]; the session is not kept."""
    c, _ = _session(raw, uniq, None)
    c.subscribe(f"{uniq}/t", 1)
    c.send(Disconnect(0, Properties(session_expiry_interval=60)))
    packets = c.expect_closed(3.0)
    assert disconnect_reason(packets) == 0x82
    disc = [p for p in packets if isinstance(p, Disconnect)]
    assert disc[0].properties.session_expiry_interval is None
    _again, ack = _session(raw, uniq, None)
    assert ack.session_present is False


def test_disconnect_sets_expiry_0_ends_session(raw, uniq: str) -> None:
    """MQTT 5.0 §3.14.2.2.2: a DISCONNECT with Session Expiry Interval 0 (CONNECT had
    300) ends the session with the connection."""
    c, _ = _session(raw, uniq, 300, clean=True)
    c.subscribe(f"{uniq}/t", 1)
    c.disconnect(properties=Properties(session_expiry_interval=0))
    time.sleep(0.1)
    _again, ack = _session(raw, uniq, None)
    assert ack.session_present is False


def test_disconnect_extends_expiry(raw, uniq: str) -> None:
    """MQTT 5.0 §3.14.2.2.2: a DISCONNECT may change a non-zero Session Expiry Interval:
    raised from 1 s to 60 s, the session is still there after 1.4 s."""
    c, _ = _session(raw, uniq, 1, clean=True)
    c.subscribe(f"{uniq}/t", 1)
    c.disconnect(properties=Properties(session_expiry_interval=60))
    time.sleep(1.4)
    again, ack = _session(raw, uniq, 60)
    assert ack.session_present is True
    again.disconnect(properties=Properties(session_expiry_interval=0))


def test_session_expiry_capped_and_told(make_broker, uniq: str) -> None:
    """MQTT 5.0 §3.2.2.3.2: a server that grants a Session Expiry Interval other than the
    one asked for (``max_session_expiry`` 10) says so in CONNACK; one that grants the
    request sends none."""
    b = make_broker(extra="mqtt:\n  max_session_expiry: 10\n")
    for asked, told in ((100, 10), (0xFFFFFFFF, 10), (5, None)):
        with RawClient(b.host, b.port, 5, timeout=3.0) as c:
            ack = c.connect(uniq, properties=Properties(session_expiry_interval=asked))
            assert ack.properties.session_expiry_interval == told, asked


# ----------------------------------------------------------------- message expiry


def test_mqtt_3_3_2_5_queued_messages_expire(raw, uniq: str) -> None:
    """[MQTT-3.3.2-5]: a message queued for an offline session whose Message Expiry
    Interval (1 s) passes before delivery starts is not delivered; the others are,
    in order, [MQTT-3.3.2-6] with the interval reduced by the time they waited."""
    c, _ = _session(raw, uniq, 60, clean=True)
    c.subscribe(f"{uniq}/t", 1)
    c.disconnect()
    pub = _pub(raw, uniq)
    pub.publish(f"{uniq}/t", b"short", 1, properties=Properties(message_expiry_interval=1))
    pub.publish(f"{uniq}/t", b"long", 1, properties=Properties(message_expiry_interval=60))
    pub.publish(f"{uniq}/t", b"forever", 1)
    time.sleep(1.3)
    again, ack = _session(raw, uniq, 60)
    assert ack.session_present is True
    got = collect_publishes(again, 2)
    assert [p.payload for p in got] == [b"long", b"forever"]
    assert got[0].properties.message_expiry_interval is not None
    assert got[0].properties.message_expiry_interval <= 59
    assert got[1].properties.message_expiry_interval is None
    again.nothing(0.3)
    again.disconnect(properties=Properties(session_expiry_interval=0))


def test_mqtt_3_3_2_6_forwarded_expiry_reduced(raw, uniq: str) -> None:
    """[MQTT-3.3.2-6]: the Message Expiry Interval sent to a subscriber is the received
    one minus the time the message waited in the server: sent at once it is (about) the
    original; held back 1.2 s behind the client's Receive Maximum it is at least 1 s
    lower."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub", properties=Properties(receive_maximum=1))
    sub.subscribe(f"{uniq}/t", 1)
    pub = _pub(raw, uniq)
    pub.publish(f"{uniq}/t", b"first", 1, properties=Properties(message_expiry_interval=30))
    pub.publish(f"{uniq}/t", b"second", 1, properties=Properties(message_expiry_interval=30))
    first = sub.expect(Publish)
    assert first.payload == b"first"
    assert first.properties.message_expiry_interval in (29, 30)
    sub.nothing(1.2)
    sub.send(PubAck(first.packet_id or 0))
    second = sub.receive_publish()
    assert second.payload == b"second"
    assert second.properties.message_expiry_interval is not None
    assert 1 <= second.properties.message_expiry_interval <= 29


def test_mqtt_3_3_2_5_message_expiring_in_window_queue_not_sent(raw, uniq: str) -> None:
    """[MQTT-3.3.2-5]: a message held behind the client's Receive Maximum for longer than
    its Message Expiry Interval is dropped, not sent late."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub", properties=Properties(receive_maximum=1))
    sub.subscribe(f"{uniq}/t", 1)
    pub = _pub(raw, uniq)
    pub.publish(f"{uniq}/t", b"first", 1)
    pub.publish(f"{uniq}/t", b"stale", 1, properties=Properties(message_expiry_interval=1))
    pub.publish(f"{uniq}/t", b"last", 1)
    first = sub.expect(Publish)
    sub.nothing(1.3)
    sub.send(PubAck(first.packet_id or 0))
    assert sub.receive_publish().payload == b"last"
    sub.nothing(0.3)


def test_retained_message_expires(raw, uniq: str) -> None:
    """MQTT 5.0 §3.3.2.3.3: a retained message is not sent to new subscribers once its
    Message Expiry Interval has passed; before that it is sent with the interval reduced
    [MQTT-3.3.2-6]."""
    pub = _pub(raw, uniq)
    pub.publish(f"{uniq}/short", b"s", 1, True, Properties(message_expiry_interval=1))
    pub.publish(f"{uniq}/long", b"l", 1, True, Properties(message_expiry_interval=30))
    first: RawClient = raw(5)
    first.connect(f"{uniq}-early")
    first.subscribe(f"{uniq}/+", 1)
    early = collect_publishes(first, 2)
    assert sorted(p.payload for p in early) == [b"l", b"s"]
    assert all(p.retain for p in early)
    time.sleep(1.3)
    late: RawClient = raw(5)
    late.connect(f"{uniq}-late")
    late.subscribe(f"{uniq}/+", 1)
    got = late.receive_publish()
    assert got.payload == b"l"
    assert got.properties.message_expiry_interval is not None
    assert got.properties.message_expiry_interval <= 29
    late.nothing(0.3)
    pub.publish(f"{uniq}/long", b"", 0, True)  # clean up


def test_will_message_expiry_forwarded(raw, uniq: str) -> None:
    """MQTT 5.0 §3.1.3.2.4: the Will's Message Expiry Interval becomes the Publication
    Expiry Interval of the will [MQTT-3.3.2-6 applies when forwarding]."""
    w: RawClient = raw(5)
    w.connect(f"{uniq}-watch")
    w.subscribe(f"{uniq}/will", 1)
    c: RawClient = raw(5)
    c.connect(
        f"{uniq}-dies",
        will=Will(f"{uniq}/will", b"bye", 1, False, Properties(message_expiry_interval=20)),
    )
    c.close()
    got = w.receive_publish()
    assert got.payload == b"bye"
    assert got.properties.message_expiry_interval in (19, 20)
