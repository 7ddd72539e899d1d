"""Interop: the Eclipse paho-mqtt client (2.x, callback API v2) against the real broker.

Every test runs for MQTT 3.1.1 and MQTT 5.0 unless the feature exists only in 5.0.
Waits are bounded: a message that does not come within a few seconds fails the test.
"Nothing else arrived" is checked with a marker message published after the one that
must not arrive: the subscriber must see the marker first (the broker keeps the order
of one publisher's messages, [MQTT-4.6.0-5]), so no test sleeps to prove an absence.
"""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

WAIT = 5.0

VERSIONS = {"v311": mqtt.MQTTv311, "v5": mqtt.MQTTv5}


class Paho:
    """A paho client run by its own network thread, with every callback put on a queue."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        protocol: int,
        clean: bool = True,
        session_expiry: int | None = None,
    ) -> None:
        #: How long ``publish`` waits for its acknowledgement (a cluster node may hold
        #: a QoS 1/2 ack while its replicated stream fails over: tests/cluster).
        self.ack_wait = WAIT
        self.host, self.port = host, port
        self.protocol = protocol
        self.v5 = protocol == mqtt.MQTTv5
        self.clean = clean
        self.session_expiry = session_expiry
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if self.v5 else clean,
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connacks: queue.Queue[tuple[Any, Any, Any]] = queue.Queue()
        self.subacks: queue.Queue[tuple[int, list[Any], Any]] = queue.Queue()
        self.unsubacks: queue.Queue[tuple[int, list[Any], Any]] = queue.Queue()
        self.pubacks: queue.Queue[tuple[int, Any]] = queue.Queue()
        self.disconnects: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connacks.put(
            (flags, rc, props)
        )
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put((mid, rcs, props))
        self.client.on_unsubscribe = lambda c, u, mid, rcs, props: self.unsubacks.put(
            (mid, rcs, props)
        )
        self.client.on_publish = lambda c, u, mid, rc, props: self.pubacks.put((mid, rc))
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.started = False

    # --------------------------------------------------------------- connection
    def _connect_args(self) -> dict[str, Any]:
        if not self.v5:
            return {}
        props = None
        if self.session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry
        return {"clean_start": self.clean, "properties": props}

    def connect(self) -> tuple[Any, Any, Any]:
        """Connect, start the network thread, return (flags, reason_code, properties)."""
        self.client.connect(self.host, self.port, keepalive=30, **self._connect_args())
        self.client.loop_start()
        self.started = True
        flags, rc, props = self.connacks.get(timeout=WAIT)
        assert not rc.is_failure, f"CONNACK refused: {rc}"
        return flags, rc, props

    def connect_manual(self) -> None:
        """Connect without a network thread (driven by ``loop``), for abrupt closes."""
        self.client.connect(self.host, self.port, keepalive=30, **self._connect_args())
        for _ in range(100):
            self.client.loop(0.05)
            if not self.connacks.empty():
                break
        _flags, rc, _props = self.connacks.get_nowait()
        assert not rc.is_failure, f"CONNACK refused: {rc}"

    def drop(self) -> None:
        """Close the TCP connection without a DISCONNECT packet (a network failure)."""
        sock = self.client.socket()
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()

    def disconnect(self) -> None:
        """A normal DISCONNECT, then stop the network thread."""
        if self.started:
            self.client.disconnect()
            self.disconnects.get(timeout=WAIT)
            self.client.loop_stop()
            self.started = False

    # --------------------------------------------------------------- operations
    def subscribe(self, topic: str | list[tuple[str, Any]], qos: int = 0, **kw: Any) -> list[Any]:
        result, mid = self.client.subscribe(topic, qos, **kw)
        assert result == mqtt.MQTT_ERR_SUCCESS
        got_mid, rcs, _props = self.subacks.get(timeout=WAIT)
        assert got_mid == mid
        return rcs

    def unsubscribe(self, topic: str | list[str]) -> list[Any]:
        result, mid = self.client.unsubscribe(topic)
        assert result == mqtt.MQTT_ERR_SUCCESS
        got_mid, rcs, _props = self.unsubacks.get(timeout=WAIT)
        assert got_mid == mid
        return rcs

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> Any:
        """Publish and wait until the handshake for ``qos`` is complete; return its reason code."""
        info = self.client.publish(topic, payload, qos, retain, properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        while True:  # acks of earlier publishes made straight on self.client come first
            mid, rc = self.pubacks.get(timeout=self.ack_wait)
            if mid == info.mid:
                return rc

    def receive(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None

    def receive_until(self, marker_topic: str) -> list[mqtt.MQTTMessage]:
        """Every message up to (not including) the first one on ``marker_topic``."""
        got: list[mqtt.MQTTMessage] = []
        while True:
            msg = self.receive()
            if msg.topic == marker_topic:
                return got
            got.append(msg)


@pytest.fixture(params=list(VERSIONS), ids=list(VERSIONS))
def protocol(request: pytest.FixtureRequest) -> int:
    return VERSIONS[request.param]


@pytest.fixture
def paho(broker) -> Iterator[Callable[..., Paho]]:
    """Factory of paho clients on the shared broker; disconnected at the end of the test."""
    clients: list[Paho] = []

    def factory(client_id: str, protocol: int, **kw: Any) -> Paho:
        client = Paho(broker.host, broker.port, client_id, protocol, **kw)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        if client.started:
            client.client.disconnect()
            client.client.loop_stop()


def connected(paho: Callable[..., Paho], client_id: str, protocol: int, **kw: Any) -> Paho:
    client = paho(client_id, protocol, **kw)
    client.connect()
    return client


# ------------------------------------------------------------------------- QoS


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_subscribe_each_qos(paho, uniq: str, protocol: int, qos: int) -> None:
    sub = connected(paho, f"{uniq}-sub", protocol)
    assert [int(_rc_value(rc)) for rc in sub.subscribe(f"{uniq}/t", 2)] == [2]
    pub = connected(paho, f"{uniq}-pub", protocol)
    pub.publish(f"{uniq}/t", b"payload-" + str(qos).encode(), qos)
    msg = sub.receive()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (
        f"{uniq}/t",
        b"payload-" + str(qos).encode(),
        qos,
        False,
    )


def test_qos_downgraded_to_granted(paho, uniq: str, protocol: int) -> None:
    """A QoS 2 message to a QoS 1 subscription arrives at QoS 1 ([MQTT-3.8.4-6] 3.1.1)."""
    sub = connected(paho, f"{uniq}-sub", protocol)
    sub.subscribe(f"{uniq}/t", 1)
    pub = connected(paho, f"{uniq}-pub", protocol)
    pub.publish(f"{uniq}/t", b"two", 2)
    msg = sub.receive()
    assert (msg.payload, msg.qos) == (b"two", 1)


@pytest.mark.parametrize("qos", [1, 2])
def test_many_messages_arrive_once_and_in_order(paho, uniq: str, protocol: int, qos: int) -> None:
    sub = connected(paho, f"{uniq}-sub", protocol)
    sub.subscribe(f"{uniq}/t", qos)
    pub = connected(paho, f"{uniq}-pub", protocol)
    n = 50
    infos = [pub.client.publish(f"{uniq}/t", f"m{i}".encode(), qos) for i in range(n)]
    for info in infos:
        info.wait_for_publish(WAIT)
        assert info.is_published()
    msgs = [sub.receive() for _ in range(n)]
    assert [m.payload for m in msgs] == [f"m{i}".encode() for i in range(n)]
    # paho never asked for topic aliases, so every PUBLISH carries the full name
    assert {m.topic for m in msgs} == {f"{uniq}/t"}
    # and no duplicate follows
    pub.publish(f"{uniq}/t", b"end", 0)
    assert sub.receive().payload == b"end"


# ---------------------------------------------------------------------- retain


def test_retained_set_received_and_cleared(paho, uniq: str, protocol: int) -> None:
    topic, marker = f"{uniq}/r", f"{uniq}/marker"
    pub = connected(paho, f"{uniq}-pub", protocol)
    pub.publish(topic, b"kept", 1, retain=True)

    late = connected(paho, f"{uniq}-late", protocol)
    late.subscribe(topic, 1)
    msg = late.receive()
    assert (msg.topic, msg.payload, msg.retain, msg.qos) == (topic, b"kept", True, 1)

    # a live subscriber gets a later retained publish with retain=0 (3.1.1 [MQTT-3.3.1-9];
    # 5.0 Retain As Published = 0, the default, [MQTT-3.3.1-12])
    pub.publish(topic, b"kept2", 1, retain=True)
    msg = late.receive()
    assert (msg.payload, msg.retain) == (b"kept2", False)

    # a zero-length retained payload clears it ([MQTT-3.3.1-10])
    pub.publish(topic, b"", 1, retain=True)
    cleared = late.receive()
    assert cleared.payload == b""

    after = connected(paho, f"{uniq}-after", protocol)
    after.subscribe([(topic, 1), (marker, 1)])
    pub.publish(marker, b"m", 1)
    assert after.receive_until(marker) == []


def test_retained_replaced_by_newer(paho, uniq: str, protocol: int) -> None:
    topic = f"{uniq}/r"
    pub = connected(paho, f"{uniq}-pub", protocol)
    pub.publish(topic, b"old", 1, retain=True)
    pub.publish(topic, b"new", 1, retain=True)
    sub = connected(paho, f"{uniq}-sub", protocol)
    sub.subscribe(f"{uniq}/#", 1)
    msg = sub.receive()
    assert (msg.topic, msg.payload, msg.retain) == (topic, b"new", True)
    pub.publish(f"{uniq}/marker", b"m", 0)
    assert sub.receive_until(f"{uniq}/marker") == []
    pub.publish(topic, b"", 0, retain=True)  # leave the shared broker clean


def test_retained_delivered_through_wildcards(paho, uniq: str, protocol: int) -> None:
    pub = connected(paho, f"{uniq}-pub", protocol)
    pub.publish(f"{uniq}/a/x", b"ax", 1, retain=True)
    pub.publish(f"{uniq}/b/x", b"bx", 1, retain=True)
    pub.publish(f"{uniq}/a/y", b"ay", 1, retain=True)
    sub = connected(paho, f"{uniq}-sub", protocol)
    sub.subscribe(f"{uniq}/+/x", 1)
    got = sorted((m.topic, m.payload, m.retain) for m in (sub.receive(), sub.receive()))
    assert got == [(f"{uniq}/a/x", b"ax", True), (f"{uniq}/b/x", b"bx", True)]
    sub.subscribe(f"{uniq}/marker", 0)
    pub.publish(f"{uniq}/marker", b"m", 0)
    assert sub.receive_until(f"{uniq}/marker") == []
    for t in ("a/x", "b/x", "a/y"):
        pub.publish(f"{uniq}/{t}", b"", 1, retain=True)


# ------------------------------------------------------------------- wildcards


def test_single_level_wildcard(paho, uniq: str, protocol: int) -> None:
    sub = connected(paho, f"{uniq}-sub", protocol)
    sub.subscribe(f"{uniq}/+/temp", 1)
    sub.subscribe(f"{uniq}/end", 1)
    pub = connected(paho, f"{uniq}-pub", protocol)
    for t in ("a/temp", "b/hum", "a/b/temp", "temp", "c/temp", "/temp"):
        pub.publish(f"{uniq}/{t}", t.encode(), 1)
    pub.publish(f"{uniq}/end", b"", 1)
    got = [m.topic for m in sub.receive_until(f"{uniq}/end")]
    # "uniq//temp" has an empty level, which "+" matches
    assert got == [f"{uniq}/a/temp", f"{uniq}/c/temp", f"{uniq}//temp"]


def test_multi_level_wildcard(paho, uniq: str, protocol: int) -> None:
    sub = connected(paho, f"{uniq}-sub", protocol)
    sub.subscribe(f"{uniq}/home/#", 1)
    sub.subscribe(f"{uniq}/end", 1)
    pub = connected(paho, f"{uniq}-pub", protocol)
    for t in ("home", "home/x", "home/x/y/z", "homes/x", "other/home", "home/"):
        pub.publish(f"{uniq}/{t}", t.encode(), 1)
    pub.publish(f"{uniq}/end", b"", 1)
    got = [m.topic for m in sub.receive_until(f"{uniq}/end")]
    # "#" also matches the parent level ([MQTT-4.7.1-2])
    assert got == [f"{uniq}/home", f"{uniq}/home/x", f"{uniq}/home/x/y/z", f"{uniq}/home/"]


def test_overlapping_subscriptions_deliver_once_at_max_qos(paho, uniq: str, protocol: int) -> None:
    """Overlapping filters of one client: one copy, at the highest granted QoS
    (3.1.1 §3.3.5 allows one copy; this broker merges, see design.md step 4)."""
    sub = connected(paho, f"{uniq}-sub", protocol)
    sub.subscribe(f"{uniq}/#", 0)
    sub.subscribe(f"{uniq}/+/t", 2)
    sub.subscribe(f"{uniq}/a/t", 1)
    pub = connected(paho, f"{uniq}-pub", protocol)
    pub.publish(f"{uniq}/a/t", b"x", 2)
    # paho hands a QoS 2 message over at PUBREL, so a later QoS 0 marker may overtake
    # it: take the message first, then the marker shows nothing else followed.
    first = sub.receive()
    assert (first.topic, first.payload, first.qos) == (f"{uniq}/a/t", b"x", 2)
    pub.publish(f"{uniq}/end", b"", 0)
    assert sub.receive_until(f"{uniq}/end") == []


# ------------------------------------------------------------------ unsubscribe


def test_unsubscribe_stops_delivery(paho, uniq: str, protocol: int) -> None:
    sub = connected(paho, f"{uniq}-sub", protocol)
    sub.subscribe(f"{uniq}/t", 1)
    sub.subscribe(f"{uniq}/end", 1)
    pub = connected(paho, f"{uniq}-pub", protocol)
    pub.publish(f"{uniq}/t", b"before", 1)
    assert sub.receive().payload == b"before"
    rcs = sub.unsubscribe(f"{uniq}/t")
    if protocol == mqtt.MQTTv5:
        assert [_rc_value(rc) for rc in rcs] == [0x00]
    pub.publish(f"{uniq}/t", b"after", 1)
    pub.publish(f"{uniq}/end", b"", 1)
    assert sub.receive_until(f"{uniq}/end") == []


def test_v5_unsuback_no_subscription_existed(paho, uniq: str) -> None:
    """MQTT 5 §3.11.2.1: 0x11 No subscription existed, per filter, in order."""
    sub = connected(paho, f"{uniq}-sub", mqtt.MQTTv5)
    sub.subscribe(f"{uniq}/a", 1)
    rcs = sub.unsubscribe([f"{uniq}/a", f"{uniq}/never"])
    assert [_rc_value(rc) for rc in rcs] == [0x00, 0x11]


# ------------------------------------------------------------------------- will


@pytest.mark.parametrize("will_qos", [0, 1])
def test_will_published_on_abrupt_close(paho, uniq: str, protocol: int, will_qos: int) -> None:
    watcher = connected(paho, f"{uniq}-watch", protocol)
    watcher.subscribe(f"{uniq}/will", 1)

    dying = paho(f"{uniq}-dying", protocol)
    dying.client.will_set(f"{uniq}/will", b"gone", will_qos, retain=False)
    dying.connect_manual()
    dying.drop()

    msg = watcher.receive()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (
        f"{uniq}/will",
        b"gone",
        will_qos,
        False,
    )


def test_will_retained_on_abrupt_close(paho, uniq: str, protocol: int) -> None:
    dying = paho(f"{uniq}-dying", protocol)
    dying.client.will_set(f"{uniq}/status", b"offline", 1, retain=True)
    dying.connect_manual()
    live = connected(paho, f"{uniq}-watch", protocol)
    live.subscribe(f"{uniq}/status", 1)
    dying.drop()
    assert live.receive().payload == b"offline"

    late = connected(paho, f"{uniq}-late", protocol)
    late.subscribe(f"{uniq}/status", 1)
    msg = late.receive()
    assert (msg.payload, msg.retain) == (b"offline", True)
    late.publish(f"{uniq}/status", b"", 1, retain=True)


def test_no_will_on_normal_disconnect(paho, uniq: str, protocol: int) -> None:
    """[MQTT-3.14.4-3] (3.1.1) / [MQTT-3.1.2-10] (5.0): DISCONNECT discards the will."""
    watcher = connected(paho, f"{uniq}-watch", protocol)
    watcher.subscribe(f"{uniq}/will", 1)
    watcher.subscribe(f"{uniq}/end", 1)

    leaving = paho(f"{uniq}-leaving", protocol)
    leaving.client.will_set(f"{uniq}/will", b"gone", 1)
    leaving.connect()
    leaving.disconnect()

    pub = connected(paho, f"{uniq}-pub", protocol)
    pub.publish(f"{uniq}/end", b"", 1)
    assert watcher.receive_until(f"{uniq}/end") == []


def test_v5_will_properties_forwarded(paho, uniq: str) -> None:
    watcher = connected(paho, f"{uniq}-watch", mqtt.MQTTv5)
    watcher.subscribe(f"{uniq}/will", 1)

    dying = paho(f"{uniq}-dying", mqtt.MQTTv5)
    will_props = Properties(PacketTypes.WILLMESSAGE)
    will_props.ContentType = "text/plain"
    will_props.UserProperty = [("device", "d1"), ("reason", "lost")]
    dying.client.will_set(f"{uniq}/will", b"gone", 1, properties=will_props)
    dying.connect_manual()
    dying.drop()

    msg = watcher.receive()
    assert msg.payload == b"gone"
    assert msg.properties.ContentType == "text/plain"
    assert msg.properties.UserProperty == [("device", "d1"), ("reason", "lost")]


# ----------------------------------------------------------- persistent session


def _persistent(paho, client_id: str, protocol: int, clean: bool) -> Paho:
    if protocol == mqtt.MQTTv5:
        return paho(client_id, protocol, clean=clean, session_expiry=300)
    return paho(client_id, protocol, clean=clean)


def test_persistent_session_queues_qos1_while_offline(paho, uniq: str, protocol: int) -> None:
    first = _persistent(paho, f"{uniq}-sub", protocol, clean=True)
    first.connect()
    first.disconnect()
    # 5.0: Clean Start with an expiry interval leaves a session behind;
    # 3.1.1: a Clean Session = 1 session ends with its connection [MQTT-3.1.2-6]
    sub = _persistent(paho, f"{uniq}-sub", protocol, clean=False)
    flags, _rc, _props = sub.connect()
    assert flags.session_present is (protocol == mqtt.MQTTv5)
    sub.subscribe(f"{uniq}/q", 1)
    sub.disconnect()

    pub = connected(paho, f"{uniq}-pub", protocol)
    for i in range(5):
        pub.publish(f"{uniq}/q", f"offline-{i}".encode(), 1)

    back = _persistent(paho, f"{uniq}-sub", protocol, clean=False)
    flags, _rc, _props = back.connect()
    assert flags.session_present is True
    got = [back.receive() for _ in range(5)]
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (f"{uniq}/q", f"offline-{i}".encode(), 1) for i in range(5)
    ]
    # the subscription itself survived: a new message still arrives
    pub.publish(f"{uniq}/q", b"online", 1)
    assert back.receive().payload == b"online"
    back.disconnect()

    # a clean start throws the session away
    fresh = _persistent(paho, f"{uniq}-sub", protocol, clean=True)
    flags, _rc, _props = fresh.connect()
    assert flags.session_present is False
    fresh.subscribe(f"{uniq}/end", 1)
    pub.publish(f"{uniq}/q", b"not-subscribed-any-more", 1)
    pub.publish(f"{uniq}/end", b"", 1)
    assert fresh.receive_until(f"{uniq}/end") == []


def test_persistent_session_qos2_while_offline(paho, uniq: str, protocol: int) -> None:
    sub = _persistent(paho, f"{uniq}-sub", protocol, clean=False)
    sub.connect()
    sub.subscribe(f"{uniq}/q", 2)
    sub.disconnect()
    pub = connected(paho, f"{uniq}-pub", protocol)
    pub.publish(f"{uniq}/q", b"a", 2)
    pub.publish(f"{uniq}/q", b"b", 1)
    back = _persistent(paho, f"{uniq}-sub", protocol, clean=False)
    flags, _rc, _props = back.connect()
    assert flags.session_present is True
    got = [back.receive() for _ in range(2)]
    # sorted: paho hands a QoS 2 message to on_message only at PUBREL, so a QoS 1
    # message sent after it on the wire can reach the callback first
    assert sorted((m.payload, m.qos) for m in got) == [(b"a", 2), (b"b", 1)]


def test_v5_session_expiry_zero_discards_session(paho, uniq: str) -> None:
    """MQTT 5 §3.1.2.11.2: no Session Expiry Interval means the session ends with the
    connection, even with Clean Start = 0."""
    sub = paho(f"{uniq}-sub", mqtt.MQTTv5, clean=False)
    sub.connect()
    sub.subscribe(f"{uniq}/q", 1)
    sub.disconnect()
    back = paho(f"{uniq}-sub", mqtt.MQTTv5, clean=False)
    flags, _rc, _props = back.connect()
    assert flags.session_present is False


# -------------------------------------------------------------- v5 properties


def test_v5_publish_properties_forwarded_unchanged(paho, uniq: str) -> None:
    sub = connected(paho, f"{uniq}-sub", mqtt.MQTTv5)
    sub.subscribe(f"{uniq}/req", 1)
    pub = connected(paho, f"{uniq}-pub", mqtt.MQTTv5)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "v1"), ("k", "v2"), ("unicode-ключ", "значение ✓"), ("", "")]
    props.ContentType = "application/json; charset=utf-8"
    props.ResponseTopic = f"{uniq}/reply/42"
    props.CorrelationData = b"\x00\x01\xffcorr"
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 3600
    pub.publish(f"{uniq}/req", b'{"a": 1}', 1, properties=props)
    msg = sub.receive()
    assert msg.payload == b'{"a": 1}'
    got = msg.properties
    # user properties keep their order and duplicates ([MQTT-3.3.2-17], [MQTT-3.3.2-18])
    assert got.UserProperty == [
        ("k", "v1"),
        ("k", "v2"),
        ("unicode-ключ", "значение ✓"),
        ("", ""),
    ]
    assert got.ContentType == "application/json; charset=utf-8"  # [MQTT-3.3.2-20]
    assert got.ResponseTopic == f"{uniq}/reply/42"  # [MQTT-3.3.2-15]
    assert got.CorrelationData == b"\x00\x01\xffcorr"  # [MQTT-3.3.2-16]
    assert got.PayloadFormatIndicator == 1  # [MQTT-3.3.2-4]
    # the expiry is forwarded, less the time spent waiting in the server ([MQTT-3.3.2-6])
    assert 3590 <= got.MessageExpiryInterval <= 3600


def test_v5_request_response_round_trip(paho, uniq: str) -> None:
    """A responder answers on the Response Topic with the Correlation Data it was given."""
    responder = connected(paho, f"{uniq}-responder", mqtt.MQTTv5)
    responder.subscribe(f"{uniq}/svc", 1)
    requester = connected(paho, f"{uniq}-requester", mqtt.MQTTv5)
    requester.subscribe(f"{uniq}/reply", 1)

    req = Properties(PacketTypes.PUBLISH)
    req.ResponseTopic = f"{uniq}/reply"
    req.CorrelationData = b"req-7"
    requester.publish(f"{uniq}/svc", b"ping", 1, properties=req)

    got = responder.receive()
    resp = Properties(PacketTypes.PUBLISH)
    resp.CorrelationData = got.properties.CorrelationData
    responder.publish(got.properties.ResponseTopic, b"pong", 1, properties=resp)

    answer = requester.receive()
    assert (answer.topic, answer.payload, answer.properties.CorrelationData) == (
        f"{uniq}/reply",
        b"pong",
        b"req-7",
    )


def test_v5_no_properties_when_none_sent(paho, uniq: str) -> None:
    sub = connected(paho, f"{uniq}-sub", mqtt.MQTTv5)
    sub.subscribe(f"{uniq}/t", 1)
    pub = connected(paho, f"{uniq}-pub", mqtt.MQTTv5)
    pub.publish(f"{uniq}/t", b"plain", 1)
    msg = sub.receive()
    names = {n for n in ("UserProperty", "ContentType", "ResponseTopic", "CorrelationData")
             if hasattr(msg.properties, n)}
    assert names == set()


# ---------------------------------------------------------- v5 reason codes


def test_v5_suback_reason_codes_are_granted_qos(paho, uniq: str) -> None:
    sub = connected(paho, f"{uniq}-sub", mqtt.MQTTv5)
    rcs = sub.subscribe(
        [
            (f"{uniq}/q0", SubscribeOptions(qos=0)),
            (f"{uniq}/q1", SubscribeOptions(qos=1)),
            (f"{uniq}/q2", SubscribeOptions(qos=2)),
            (f"{uniq}/+/x/#", SubscribeOptions(qos=2, noLocal=True, retainAsPublished=True)),
        ]
    )
    assert [_rc_value(rc) for rc in rcs] == [0x00, 0x01, 0x02, 0x02]
    assert [rc.getName() for rc in rcs] == [
        "Granted QoS 0",
        "Granted QoS 1",
        "Granted QoS 2",
        "Granted QoS 2",
    ]


def test_v311_suback_return_codes_are_granted_qos(paho, uniq: str) -> None:
    sub = connected(paho, f"{uniq}-sub", mqtt.MQTTv311)
    rcs = sub.subscribe([(f"{uniq}/q0", 0), (f"{uniq}/q1", 1), (f"{uniq}/q2", 2)])
    assert [_rc_value(rc) for rc in rcs] == [0, 1, 2]


def test_v5_puback_no_matching_subscribers(paho, uniq: str) -> None:
    """design.md step 6: v5 PUBACK 0x10 when nobody matched; 0x00 when someone did."""
    pub = connected(paho, f"{uniq}-pub", mqtt.MQTTv5)
    rc = pub.publish(f"{uniq}/nobody", b"x", 1)
    assert _rc_value(rc) == 0x10
    sub = connected(paho, f"{uniq}-sub", mqtt.MQTTv5)
    sub.subscribe(f"{uniq}/somebody", 1)
    rc = pub.publish(f"{uniq}/somebody", b"x", 1)
    assert _rc_value(rc) == 0x00


def test_v5_no_local_not_echoed(paho, uniq: str) -> None:
    """[MQTT-3.8.3-3]: No Local = 1, the client's own messages are not sent back."""
    c = connected(paho, f"{uniq}-c", mqtt.MQTTv5)
    c.subscribe(f"{uniq}/t", options=SubscribeOptions(qos=1, noLocal=True))
    c.subscribe(f"{uniq}/end", options=SubscribeOptions(qos=1))
    c.publish(f"{uniq}/t", b"own", 1)
    other = connected(paho, f"{uniq}-other", mqtt.MQTTv5)
    other.publish(f"{uniq}/t", b"foreign", 1)
    other.publish(f"{uniq}/end", b"", 1)
    assert [m.payload for m in c.receive_until(f"{uniq}/end")] == [b"foreign"]


def test_v5_retain_as_published(paho, uniq: str) -> None:
    """[MQTT-3.3.1-13]: Retain As Published = 1 keeps the retain flag on live delivery."""
    sub = connected(paho, f"{uniq}-sub", mqtt.MQTTv5)
    sub.subscribe(f"{uniq}/rap", options=SubscribeOptions(qos=1, retainAsPublished=True))
    pub = connected(paho, f"{uniq}-pub", mqtt.MQTTv5)
    pub.publish(f"{uniq}/rap", b"r", 1, retain=True)
    msg = sub.receive()
    assert (msg.payload, msg.retain) == (b"r", True)
    pub.publish(f"{uniq}/rap", b"", 1, retain=True)


def test_v5_topic_alias_from_publisher(paho, uniq: str) -> None:
    """MQTT 5 §3.3.2.3.4: the publisher sets alias 1 once, then sends an empty topic name."""
    pub = paho(f"{uniq}-pub", mqtt.MQTTv5)
    _flags, _rc, connack = pub.connect()
    assert getattr(connack, "TopicAliasMaximum", 0) >= 1
    sub = connected(paho, f"{uniq}-sub", mqtt.MQTTv5)
    sub.subscribe(f"{uniq}/aliased", 1)
    first = Properties(PacketTypes.PUBLISH)
    first.TopicAlias = 1
    pub.publish(f"{uniq}/aliased", b"one", 1, properties=first)
    again = Properties(PacketTypes.PUBLISH)
    again.TopicAlias = 1
    pub.publish("", b"two", 1, properties=again)
    got = [sub.receive() for _ in range(2)]
    assert [(m.topic, m.payload) for m in got] == [
        (f"{uniq}/aliased", b"one"),
        (f"{uniq}/aliased", b"two"),
    ]
    # the alias is the publisher's, never forwarded to a subscriber that did not ask
    assert not any(hasattr(m.properties, "TopicAlias") for m in got)


def test_session_takeover_closes_older_connection(paho, uniq: str, protocol: int) -> None:
    """[MQTT-3.1.4-2] (3.1.1) / [MQTT-3.1.4-3] (5.0: DISCONNECT 0x8E Session taken over)."""
    old = paho(f"{uniq}-dup", protocol)
    old.connect_manual()
    new = connected(paho, f"{uniq}-dup", protocol)
    for _ in range(100):
        old.client.loop(0.05)
        if not old.disconnects.empty():
            break
    rc = old.disconnects.get_nowait()
    if protocol == mqtt.MQTTv5:
        assert _rc_value(rc) == 0x8E
    # the new connection works
    new.subscribe(f"{uniq}/t", 1)
    new.publish(f"{uniq}/t", b"still here", 1)
    assert new.receive().payload == b"still here"


def test_v5_will_delay_interval(paho, uniq: str) -> None:
    """MQTT 5 §3.1.3.2.2: the will is published Will Delay Interval seconds after the loss."""
    watcher = connected(paho, f"{uniq}-watch", mqtt.MQTTv5)
    watcher.subscribe(f"{uniq}/will", 1)
    dying = paho(f"{uniq}-dying", mqtt.MQTTv5, session_expiry=60)
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = 2
    dying.client.will_set(f"{uniq}/will", b"late", 1, properties=props)
    dying.connect_manual()
    dropped = time.monotonic()
    dying.drop()
    msg = watcher.receive(timeout=6)
    waited = time.monotonic() - dropped
    assert msg.payload == b"late"
    assert 1.5 <= waited <= 5, f"will came after {waited:.2f}s, expected about 2s"


def test_v5_will_delay_cancelled_by_reconnect(paho, uniq: str) -> None:
    """[MQTT-3.1.3-9]: a reconnect within the Will Delay Interval cancels the will."""
    watcher = connected(paho, f"{uniq}-watch", mqtt.MQTTv5)
    watcher.subscribe(f"{uniq}/will", 1)
    watcher.subscribe(f"{uniq}/end", 1)
    dying = paho(f"{uniq}-dev", mqtt.MQTTv5, session_expiry=60)
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = 2
    dying.client.will_set(f"{uniq}/will", b"late", 1, properties=props)
    dying.connect_manual()
    dying.drop()
    back = paho(f"{uniq}-dev", mqtt.MQTTv5, clean=False, session_expiry=60)
    flags, _rc, _props = back.connect()
    assert flags.session_present is True
    time.sleep(3)  # past the will delay
    back.publish(f"{uniq}/end", b"", 1)
    assert watcher.receive_until(f"{uniq}/end") == []


def test_v5_message_expiry_while_queued(paho, uniq: str) -> None:
    """[MQTT-3.3.2-5]: an expired message is not delivered; [MQTT-3.3.2-6]: a queued one
    is forwarded with the interval less the time it waited."""
    sub = paho(f"{uniq}-sub", mqtt.MQTTv5, clean=True, session_expiry=60)
    sub.connect()
    sub.subscribe(f"{uniq}/q", 1)
    sub.disconnect()
    pub = connected(paho, f"{uniq}-pub", mqtt.MQTTv5)
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 1
    pub.publish(f"{uniq}/q", b"short-lived", 1, properties=short)
    long = Properties(PacketTypes.PUBLISH)
    long.MessageExpiryInterval = 60
    pub.publish(f"{uniq}/q", b"long-lived", 1, properties=long)
    time.sleep(2.2)
    back = paho(f"{uniq}-sub", mqtt.MQTTv5, clean=False, session_expiry=60)
    flags, _rc, _props = back.connect()
    assert flags.session_present is True
    msg = back.receive()
    assert msg.payload == b"long-lived"
    assert 50 <= msg.properties.MessageExpiryInterval <= 58


def _rc_value(rc: Any) -> int:
    """paho returns ReasonCode objects (v5, and v3.1.1 in paho 2.x) or ints."""
    return int(rc.value) if hasattr(rc, "value") else int(rc)


def test_persistent_session_survives_broker_restart(make_broker, uniq: str, protocol: int) -> None:
    """With RocksDB storage, the session, its subscription, the QoS 1 messages queued for
    it and retained messages come back after a clean broker restart (design.md,
    Persistence)."""
    b = make_broker(storage="rocksdb")
    expiry = 300 if protocol == mqtt.MQTTv5 else None

    sub = Paho(b.host, b.port, f"{uniq}-sub", protocol, clean=False, session_expiry=expiry)
    sub.connect()
    sub.subscribe(f"{uniq}/q", 1)
    sub.disconnect()
    pub = Paho(b.host, b.port, f"{uniq}-pub", protocol)
    pub.connect()
    for i in range(3):
        pub.publish(f"{uniq}/q", f"m{i}".encode(), 1)
    pub.publish(f"{uniq}/r", b"retained", 1, retain=True)
    pub.disconnect()

    b.restart()

    back = Paho(b.host, b.port, f"{uniq}-sub", protocol, clean=False, session_expiry=expiry)
    flags, _rc, _props = back.connect()
    try:
        assert flags.session_present is True
        got = [back.receive() for _ in range(3)]
        assert [(m.topic, m.payload, m.qos) for m in got] == [
            (f"{uniq}/q", f"m{i}".encode(), 1) for i in range(3)
        ]
        back.subscribe(f"{uniq}/r", 1)
        msg = back.receive()
        assert (msg.payload, msg.retain) == (b"retained", True)
    finally:
        back.disconnect()
