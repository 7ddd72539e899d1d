"""Will messages (MQTT 3.1.1 §3.1.2.5-3.1.2.7, §3.14.4; MQTT 5.0 §3.1.2.5-3.1.2.7,
§3.1.3.2, §3.14.2.1)."""

from __future__ import annotations

import time

import pytest

from iotbroker.codec.packets import Disconnect, Properties, Will
from tests.helpers.rawclient import RawClient

VERSIONS = pytest.mark.parametrize("version", [4, 5])


def _watcher(raw, version: int, uniq: str, qos: int = 2) -> RawClient:
    w: RawClient = raw(version)
    w.connect(f"{uniq}-watch")
    assert w.subscribe(f"{uniq}/will", qos).reason_codes == [qos]
    return w


def _with_will(
    raw,
    version: int,
    uniq: str,
    qos: int = 0,
    retain: bool = False,
    keepalive: int = 60,
    props: Properties | None = None,
) -> RawClient:
    c: RawClient = raw(version)
    ack = c.connect(
        f"{uniq}-dies",
        keepalive=keepalive,
        will=Will(f"{uniq}/will", b"last words", qos, retain, props or Properties()),
    )
    assert ack.reason_code == 0
    return c


@VERSIONS
def test_mqtt_3_1_2_8_will_published_on_socket_close(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-8] (both): the connection closed without DISCONNECT -> the Will Message
    is published; [MQTT-3.1.2-10]: it is then deleted (not published twice)."""
    w = _watcher(raw, version, uniq)
    c = _with_will(raw, version, uniq)
    c.close()
    got = w.receive_publish(timeout=3.0)
    assert (got.topic, got.payload) == (f"{uniq}/will", b"last words")
    w.nothing(0.3)


@VERSIONS
def test_mqtt_3_1_2_8_will_published_on_protocol_error(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-8] (both) / MQTT 3.1.1 §3.1.2.5: a connection closed by the server for a
    protocol error publishes the Will Message."""
    w = _watcher(raw, version, uniq)
    c = _with_will(raw, version, uniq)
    c.send_raw(b"\x36\x05\x00\x01ax\x00")  # PUBLISH QoS 3: malformed
    c.expect_closed(3.0)
    got = w.receive_publish(timeout=3.0)
    assert got.payload == b"last words"


@VERSIONS
def test_mqtt_3_1_2_8_will_published_on_keepalive_expiry(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-8] with [MQTT-3.1.2-24] (3.1.1) / [MQTT-3.1.2-22] (5.0): a client silent
    for 1.5 x Keep Alive (1 s) is disconnected and its Will Message published."""
    w = _watcher(raw, version, uniq)
    c = _with_will(raw, version, uniq, keepalive=1)
    started = time.monotonic()
    got = w.receive_publish(timeout=3.5)
    elapsed = time.monotonic() - started
    assert got.payload == b"last words"
    assert 1.3 <= elapsed <= 3.0, elapsed
    c.expect_closed(1.0)


@VERSIONS
def test_mqtt_3_14_4_3_no_will_after_disconnect(raw, uniq: str, version: int) -> None:
    """[MQTT-3.14.4-3] [MQTT-3.1.2-10] (3.1.1) / [MQTT-3.14.4-3] [MQTT-3.1.2-10] (5.0):
    after a normal DISCONNECT (5.0: reason 0x00) the Will Message is discarded."""
    w = _watcher(raw, version, uniq)
    c = _with_will(raw, version, uniq)
    c.disconnect()
    w.nothing(0.5)


@VERSIONS
def test_mqtt_3_1_2_12_no_will_flag_no_will(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-12] (3.1.1): Will Flag 0 -> nothing is published when the connection
    ends abnormally."""
    w = _watcher(raw, version, uniq)
    c: RawClient = raw(version)
    c.connect(f"{uniq}-dies")
    c.close()
    w.nothing(0.5)


@VERSIONS
@pytest.mark.parametrize("will_qos", [0, 1, 2])
def test_will_qos_honoured(raw, uniq: str, version: int, will_qos: int) -> None:
    """MQTT 3.1.1 §3.1.2.6 / 5.0 §3.1.2.6: the Will Message is published with the Will QoS
    (then min(Will QoS, granted) per [MQTT-3.8.4-6] / [MQTT-3.8.4-8])."""
    w = _watcher(raw, version, uniq, qos=2)
    c = _with_will(raw, version, uniq, qos=will_qos)
    c.close()
    got = w.receive_publish(timeout=3.0)
    assert got.qos == will_qos


@VERSIONS
def test_mqtt_3_1_2_17_will_retain_honoured(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-17] (3.1.1) / [MQTT-3.1.2-15] (5.0): Will Retain 1 -> the Will Message is
    published as retained (a later subscriber gets it with RETAIN=1)."""
    c = _with_will(raw, version, uniq, qos=1, retain=True)
    c.close()
    time.sleep(0.2)
    late: RawClient = raw(version)
    late.connect(f"{uniq}-late")
    late.subscribe(f"{uniq}/will", 1)
    got = late.receive_publish(timeout=3.0)
    assert (got.payload, got.retain) == (b"last words", True)
    late.publish(f"{uniq}/will", b"", 0, retain=True)


@VERSIONS
def test_mqtt_3_1_2_16_will_not_retained_when_retain_0(raw, uniq: str, version: int) -> None:
    """[MQTT-3.1.2-16] (3.1.1) / [MQTT-3.1.2-14] (5.0): Will Retain 0 -> published as a
    non-retained message (nothing for a later subscriber)."""
    w = _watcher(raw, version, uniq)
    c = _with_will(raw, version, uniq, qos=1, retain=False)
    c.close()
    assert w.receive_publish(timeout=3.0).payload == b"last words"
    late: RawClient = raw(version)
    late.connect(f"{uniq}-late")
    late.subscribe(f"{uniq}/will", 1)
    late.nothing(0.3)


def test_v5_disconnect_0x04_publishes_will(raw, uniq: str) -> None:
    """MQTT 5.0 §3.14.2.1: DISCONNECT with 0x04 (Disconnect with Will Message) closes
    normally but publishes the Will; [MQTT-3.14.4-3] applies only to 0x00."""
    w = _watcher(raw, 5, uniq)
    c = _with_will(raw, 5, uniq)
    c.send(Disconnect(0x04))
    c.close()
    got = w.receive_publish(timeout=3.0)
    assert got.payload == b"last words"


def test_mqtt_3_1_3_10_v5_will_properties_forwarded(raw, uniq: str) -> None:
    """[MQTT-3.1.3-10] (5.0): the Will's User Properties keep their order; other will
    properties (Content Type, Response Topic, Correlation Data) are sent on."""
    w = _watcher(raw, 5, uniq)
    props = Properties(
        content_type="text/plain",
        response_topic=f"{uniq}/r",
        correlation_data=b"cd",
        user_properties=(("b", "1"), ("a", "2")),
    )
    c = _with_will(raw, 5, uniq, props=props)
    c.close()
    got = w.receive_publish(timeout=3.0).properties
    assert got.user_properties == (("b", "1"), ("a", "2"))
    assert (got.content_type, got.response_topic, got.correlation_data) == (
        "text/plain",
        f"{uniq}/r",
        b"cd",
    )


def test_mqtt_3_1_3_9_v5_will_delay_suppressed_by_reconnect(raw, uniq: str) -> None:
    """[MQTT-3.1.3-9] (5.0): a client that reconnects within the Will Delay Interval
    prevents the Will; [MQTT-3.1.2-8]: otherwise it is published once the delay passed."""
    w = _watcher(raw, 5, uniq)
    expiry = Properties(session_expiry_interval=60)
    will = Will(f"{uniq}/will", b"delayed", 0, False, Properties(will_delay_interval=1))
    c: RawClient = raw(5)
    c.connect(f"{uniq}-dies", clean_start=False, properties=expiry, will=will)
    c.close()
    time.sleep(0.2)
    back: RawClient = raw(5)
    ack = back.connect(f"{uniq}-dies", clean_start=False, properties=expiry, will=will)
    assert ack.session_present is True
    w.nothing(1.2)
    back.close()
    started = time.monotonic()
    got = w.receive_publish(timeout=3.0)
    assert got.payload == b"delayed"
    assert time.monotonic() - started >= 0.7
    raw(5).connect(f"{uniq}-dies", clean_start=True)


def test_mqtt_3_1_4_3_v5_takeover_publishes_old_will(raw, uniq: str) -> None:
    """[MQTT-3.1.4-3] (5.0) and §3.1.4: the taken-over connection's Will Message (Will
    Delay 0) is published [MQTT-3.1.2-8] -- the old will, not the new connection's."""
    w = _watcher(raw, 5, uniq)
    expiry = Properties(session_expiry_interval=60)
    old: RawClient = raw(5)
    old.connect(
        f"{uniq}-dies", clean_start=False, properties=expiry, will=Will(f"{uniq}/will", b"old will")
    )
    new: RawClient = raw(5)
    assert new.connect(f"{uniq}-dies", clean_start=False, properties=expiry).reason_code == 0
    old.expect_closed(3.0)
    got = w.receive_publish(timeout=3.0)
    assert got.payload == b"old will"
    w.nothing(0.3)
    new.disconnect()
    raw(5).connect(f"{uniq}-dies", clean_start=True)


@VERSIONS
def test_mqtt_3_1_2_8_takeover_does_not_publish_new_connections_will(
    raw, uniq: str, version: int
) -> None:
    """[MQTT-3.1.2-8] (both): a Will Message is published only after *its* network
    connection closes. After a takeover (Clean Session / Clean Start 0) the new, still open
    connection's will must not go out; (5.0: the old connection's will does)."""
    w = _watcher(raw, version, uniq)
    expiry = Properties(session_expiry_interval=60) if version == 5 else None
    old: RawClient = raw(version)
    old.connect(
        f"{uniq}-dies", clean_start=False, properties=expiry, will=Will(f"{uniq}/will", b"old will")
    )
    new: RawClient = raw(version)
    ack = new.connect(
        f"{uniq}-dies", clean_start=False, properties=expiry, will=Will(f"{uniq}/will", b"new will")
    )
    assert ack.reason_code == 0
    old.expect_closed(3.0)
    payloads = []
    try:
        while True:
            payloads.append(w.receive_publish(timeout=0.5).payload)
    except TimeoutError:
        pass
    assert b"new will" not in payloads, payloads
    ping_ok = new.publish(f"{uniq}/still-here", b"", 1)
    assert ping_ok is not None
    new.disconnect()
    w.nothing(0.3)  # normal DISCONNECT: the new will is discarded too
    raw(version).connect(f"{uniq}-dies", clean_start=True)


@pytest.mark.parametrize("session_expiry", [0, 1])
def test_mqtt_3_1_2_8_v5_will_published_when_session_ends_before_delay(
    raw, uniq: str, session_expiry: int
) -> None:
    """[MQTT-3.1.2-8] (5.0): the Will goes out when the Will Delay Interval has passed *or*
    the session ends, whichever is first: Will Delay 30 s with Session Expiry 0 -> at the
    close; with Session Expiry 1 s -> after about 1 s."""
    w = _watcher(raw, 5, uniq)
    c: RawClient = raw(5)
    props = Properties(session_expiry_interval=session_expiry or None)
    c.connect(
        f"{uniq}-dies",
        clean_start=False,
        properties=props,
        will=Will(f"{uniq}/will", b"session over", 0, False, Properties(will_delay_interval=30)),
    )
    c.close()
    started = time.monotonic()
    got = w.receive_publish(timeout=3.0)
    assert got.payload == b"session over"
    elapsed = time.monotonic() - started
    if session_expiry:
        assert 0.7 <= elapsed <= 2.5, elapsed
    else:
        assert elapsed <= 1.0, elapsed
