"""MQTT 5.0 Will Delay Interval (§3.1.3.2.2) and request / response (§4.10, §3.3.2.3.5-6,
§3.3.2.3.7)."""

from __future__ import annotations

import time

from iotbroker.codec.packets import Disconnect, Properties, Publish, Will
from tests.helpers.conformance import disconnect_reason, frame, utf8_raw
from tests.helpers.rawclient import RawClient


def _watcher(raw, uniq: str) -> RawClient:
    w: RawClient = raw(5)
    w.connect(f"{uniq}-watch")
    w.subscribe(f"{uniq}/will", 1)
    return w


def _will(uniq: str, delay: int | None, payload: bytes = b"gone") -> Will:
    return Will(f"{uniq}/will", payload, 1, False, Properties(will_delay_interval=delay))


def _dies(raw, uniq: str, delay: int | None, expiry: int | None, **kw: object) -> RawClient:
    c: RawClient = raw(5)
    props = Properties(session_expiry_interval=expiry) if expiry is not None else None
    ack = c.connect(f"{uniq}-dies", will=_will(uniq, delay), properties=props, **kw)  # type: ignore[arg-type]
    assert ack.reason_code == 0
    return c


# ----------------------------------------------------------------- will delay


def test_will_delay_interval_delays_the_will(raw, uniq: str) -> None:
    """MQTT 5.0 §3.1.3.2.2: the Will is published once the Will Delay Interval (1 s) has
    passed after the connection broke (the session lasting longer), not before."""
    w = _watcher(raw, uniq)
    c = _dies(raw, uniq, delay=1, expiry=30)
    c.close()
    started = time.monotonic()
    w.nothing(0.6)
    got = w.receive_publish(timeout=2.0)
    assert got.payload == b"gone"
    assert time.monotonic() - started >= 0.9
    assert got.properties.will_delay_interval is None
    raw(5).connect(f"{uniq}-dies", clean_start=True)


def test_mqtt_3_1_3_9_will_cancelled_by_resuming_in_time(raw, uniq: str) -> None:
    """[MQTT-3.1.3-9]: a client that reconnects (resuming the session) before the Will
    Delay Interval ends does not have its Will published."""
    w = _watcher(raw, uniq)
    c = _dies(raw, uniq, delay=1, expiry=30)
    c.close()
    time.sleep(0.2)
    back: RawClient = raw(5)
    ack = back.connect(
        f"{uniq}-dies", clean_start=False, properties=Properties(session_expiry_interval=30)
    )
    assert ack.session_present is True
    w.nothing(1.2)
    back.disconnect(properties=Properties(session_expiry_interval=0))
    w.nothing(0.2)


def test_will_sent_at_session_end_when_earlier_than_delay(raw, uniq: str) -> None:
    """MQTT 5.0 §3.1.3.2.2: the Will goes out when the Will Delay Interval passes *or the
    session ends*, whichever is first: delay 60 s, Session Expiry 1 s -> about 1 s."""
    w = _watcher(raw, uniq)
    c = _dies(raw, uniq, delay=60, expiry=1)
    c.close()
    started = time.monotonic()
    got = w.receive_publish(timeout=3.0)
    assert got.payload == b"gone"
    assert 0.8 <= time.monotonic() - started < 2.5


def test_will_delay_with_session_expiry_0_sent_at_close(raw, uniq: str) -> None:
    """MQTT 5.0 §3.1.3.2.2: with Session Expiry 0 the session ends with the connection,
    so a delayed Will is published at once."""
    w = _watcher(raw, uniq)
    c = _dies(raw, uniq, delay=60, expiry=None)
    c.close()
    assert w.receive_publish(timeout=1.0).payload == b"gone"


def test_takeover_with_clean_start_ends_session_and_sends_delayed_will(raw, uniq: str) -> None:
    """MQTT 5.0 §3.1.3.2.2 (non-normative note) and §3.1.4: a new connection with the same
    Client Identifier and Clean Start 1 ends the old session, so the old connection's
    Will is published even though it has a Will Delay Interval; the old connection gets
    DISCONNECT 0x8E [MQTT-3.1.4-3]."""
    w = _watcher(raw, uniq)
    old = _dies(raw, uniq, delay=30, expiry=60)
    new: RawClient = raw(5)
    assert new.connect(f"{uniq}-dies", clean_start=True).reason_code == 0
    assert disconnect_reason(old.expect_closed(3.0)) == 0x8E
    assert w.receive_publish(timeout=2.0).payload == b"gone"


def test_takeover_resuming_session_keeps_delayed_will_pending(raw, uniq: str) -> None:
    """MQTT 5.0 §3.1.3.2.2 / [MQTT-3.1.3-9]: a new connection with Clean Start 0 resumes the
    session within the Will Delay Interval: the old connection's delayed Will is not
    published."""
    w = _watcher(raw, uniq)
    _dies(raw, uniq, delay=1, expiry=60)
    new: RawClient = raw(5)
    ack = new.connect(
        f"{uniq}-dies", clean_start=False, properties=Properties(session_expiry_interval=60)
    )
    assert ack.session_present is True
    w.nothing(1.3)
    new.disconnect(properties=Properties(session_expiry_interval=0))


# ----------------------------------------------------------------- request / response


def test_mqtt_3_3_2_15_request_response_round_trip(raw, uniq: str) -> None:
    """[MQTT-3.3.2-15] [MQTT-3.3.2-16]: Response Topic and Correlation Data are forwarded
    unchanged to the responder, which answers on the Response Topic with the Correlation
    Data; the requester gets that answer with the Correlation Data intact (binary,
    including NUL and non-UTF-8 bytes)."""
    requester: RawClient = raw(5)
    requester.connect(f"{uniq}-req")
    requester.subscribe(f"{uniq}/reply/#", 1)
    responder: RawClient = raw(5)
    responder.connect(f"{uniq}-resp")
    responder.subscribe(f"{uniq}/service", 1)
    corr = b"\x00\xff\xfe id-42"
    requester.publish(
        f"{uniq}/service",
        b"ping?",
        1,
        properties=Properties(response_topic=f"{uniq}/reply/ü", correlation_data=corr),
    )
    req = responder.receive_publish()
    assert req.properties.response_topic == f"{uniq}/reply/ü"
    assert req.properties.correlation_data == corr
    responder.publish(
        req.properties.response_topic,
        b"pong!",
        1,
        properties=Properties(correlation_data=req.properties.correlation_data),
    )
    answer = requester.receive_publish()
    assert (answer.topic, answer.payload, answer.properties.correlation_data) == (
        f"{uniq}/reply/ü",
        b"pong!",
        corr,
    )
    assert answer.properties.response_topic is None


def test_response_information_usable_as_response_topic_prefix(make_broker, uniq: str) -> None:
    """MQTT 5.0 §4.10.1: the Response Information from CONNACK is a topic the client can
    build Response Topics on; a request/response through it works."""
    b = make_broker(extra="mqtt:\n  response_information_prefix: 'rr/'\n")
    with (
        RawClient(b.host, b.port, 5, timeout=3.0) as requester,
        RawClient(b.host, b.port, 5, timeout=3.0) as responder,
    ):
        ack = requester.connect(uniq, properties=Properties(request_response_information=1))
        prefix = ack.properties.response_information
        assert prefix == f"rr/{uniq}"
        requester.subscribe(f"{prefix}/#", 1)
        responder.connect(f"{uniq}-responder")
        responder.subscribe("svc", 1)
        requester.publish(
            "svc",
            b"q",
            1,
            properties=Properties(response_topic=f"{prefix}/1", correlation_data=b"c1"),
        )
        req = responder.receive_publish()
        responder.publish(
            req.properties.response_topic or "",
            b"a",
            1,
            properties=Properties(correlation_data=req.properties.correlation_data),
        )
        got = requester.receive_publish()
        assert (got.topic, got.payload, got.properties.correlation_data) == (
            f"{prefix}/1",
            b"a",
            b"c1",
        )


def test_mqtt_3_3_2_18_user_properties_order_and_duplicates(raw, uniq: str) -> None:
    """[MQTT-3.3.2-17] [MQTT-3.3.2-18]: every User Property is forwarded, in order, with
    duplicates and empty values kept; Content Type [MQTT-3.3.2-20] and Payload Format
    Indicator [MQTT-3.3.2-4] unchanged -- to QoS 0, 1 and 2 subscribers alike."""
    subs = []
    for q in (0, 1, 2):
        s: RawClient = raw(5)
        s.connect(f"{uniq}-sub{q}")
        s.subscribe(f"{uniq}/t", q)
        subs.append(s)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    users = (("b", "2"), ("a", "1"), ("b", "1"), ("", ""), ("ключ", "значение"), ("a", "1"))
    pub.publish(
        f"{uniq}/t",
        "δ".encode(),
        2,
        properties=Properties(
            user_properties=users,
            content_type="text/plain; charset=utf-8",
            payload_format_indicator=1,
        ),
    )
    for s in subs:
        got = s.receive_publish().properties
        assert got.user_properties == users
        assert got.content_type == "text/plain; charset=utf-8"
        assert got.payload_format_indicator == 1


def test_mqtt_3_3_2_14_wildcard_response_topic_not_forwarded(raw, uniq: str) -> None:
    """[MQTT-3.3.2-14]: a Response Topic must not contain wildcards. The server must not
    forward such a PUBLISH (it would itself send a non-conforming packet): it treats it
    as a protocol error (DISCONNECT 0x82, §4.13) and the subscriber gets nothing."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub")
    sub.subscribe(f"{uniq}/t", 1)
    pub: RawClient = raw(5)
    pub.connect(f"{uniq}-pub")
    pub.send(
        Publish(
            f"{uniq}/t",
            b"x",
            1,
            packet_id=1,
            properties=Properties(response_topic=f"{uniq}/reply/+"),
        )
    )
    assert disconnect_reason(pub.expect_closed(1.5)) in (0x81, 0x82)
    sub.nothing(0.3)


def test_mqtt_3_3_2_19_content_type_must_be_utf8(raw, uniq: str) -> None:
    """[MQTT-3.3.2-19] [MQTT-3.3.2-13]: Content Type and Response Topic are UTF-8 strings;
    ill-formed UTF-8 in either is a Malformed Packet: DISCONNECT 0x81, nothing forwarded."""
    sub: RawClient = raw(5)
    sub.connect(f"{uniq}-sub")
    sub.subscribe(f"{uniq}/t", 0)
    for prop_id in (0x03, 0x08):  # Content Type, Response Topic
        pub: RawClient = raw(5)
        pub.connect(f"{uniq}-pub{prop_id}")
        props = bytes((prop_id,)) + utf8_raw(b"\xc3\x28")
        body = utf8_raw(f"{uniq}/t".encode()) + bytes((len(props),)) + props + b"x"
        pub.send_raw(frame(0x30, body))
        packets = pub.expect_closed(3.0)
        assert disconnect_reason(packets) == 0x81
        assert not any(isinstance(p, Disconnect) and p.reason_code != 0x81 for p in packets)
    sub.nothing(0.3)
