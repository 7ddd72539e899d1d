"""The MQTT-SN 1.2 gateway over real UDP sockets against the real broker subprocess,
with MQTT clients (paho-mqtt, mosquitto_sub/pub) on the other side proving that both
kinds of client share topics, retained messages and sessions.

Section numbers are those of the MQTT-SN Protocol Specification Version 1.2.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as paho
import pytest

from iotbroker.mqttsn import codec as c
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.mqttsn.snclient import SnTestClient

TID = c.TopicIdType

LISTENERS = (
    "listeners:\n"
    "  - {name: default, type: tcp, host: 127.0.0.1, port: 0}\n"
    "  - {name: sn, type: mqtt-sn, host: 127.0.0.1, port: 0}\n"
)
EXTRA = (
    "mqttsn:\n"
    "  advertise_interval: 0\n"
    "  predefined_topics: {1: sensors/predefined, 2: cmd/predefined}\n"
    "  retry_interval: 0.4s\n"
    "  max_retries: 2\n"
    "  rate_per_address: 500\n"
    "mqtt:\n"
    "  max_topic_levels: 8\n"
)


@pytest.fixture(scope="module")
def sn_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("sn-broker"),
                         broker_config(listeners=LISTENERS, extra=EXTRA)).start()
    yield proc
    proc.stop()


@pytest.fixture
def sn(sn_broker: BrokerProcess) -> Iterator[Callable[[], SnTestClient]]:
    made: list[SnTestClient] = []

    def factory() -> SnTestClient:
        client = SnTestClient("127.0.0.1", sn_broker.ports["sn"])
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


class Mqtt:
    """A paho-mqtt client that collects what it receives."""

    def __init__(self, broker: BrokerProcess, client_id: str) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = lambda _c, _u, m: self.messages.put(m)
        self.client.connect("127.0.0.1", broker.ports["default"])
        self.client.loop_start()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done: queue.Queue[int] = queue.Queue()
        self.client.on_subscribe = lambda *_a: done.put(1)
        self.client.subscribe(topic, qos)
        done.get(timeout=5)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def get(self, timeout: float = 5.0) -> paho.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt(sn_broker: BrokerProcess) -> Iterator[Callable[[str], Mqtt]]:
    made: list[Mqtt] = []

    def factory(client_id: str) -> Mqtt:
        m = Mqtt(sn_broker, client_id)
        made.append(m)
        return m

    yield factory
    for m in made:
        m.close()


# ----------------------------------------------------------------- discovery, CONNECT
def test_6_1_searchgw_answered_with_gwinfo(sn: Callable[[], SnTestClient]) -> None:
    client = sn()
    client.send(c.SearchGw(1))
    assert client.expect(c.GwInfo) == c.GwInfo(1)


def test_6_2_connect_connack_and_5_4_21_disconnect(sn: Callable[[], SnTestClient]) -> None:
    client = sn()
    client.connect("sn-connect")
    client.send(c.PingReq())
    client.expect(c.PingResp)  # §6.11
    client.send(c.Disconnect())
    client.expect(c.Disconnect)  # §6.12: the gateway answers DISCONNECT
    client.send(c.PingReq())
    client.expect(c.Disconnect)  # no longer connected


def test_5_3_8_connect_with_wrong_protocol_id_refused(sn: Callable[[], SnTestClient]) -> None:
    client = sn()
    client.send(c.Connect("sn-badproto", 60, protocol_id=0x02))
    assert client.expect(c.ConnAck) == c.ConnAck(c.ReturnCode.NOT_SUPPORTED)


# ------------------------------------------------------ PUBLISH from the client (§6.7)
def test_6_5_register_then_publish_qos1_reaches_mosquitto_sub(
        sn: Callable[[], SnTestClient], sn_broker: BrokerProcess) -> None:
    """An MQTT-SN sensor's PUBLISH reaches a ``mosquitto_sub`` subscriber."""
    if shutil.which("mosquitto_sub") is None:
        pytest.fail("mosquitto_sub is not installed (scripts/test.sh installs it)")
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(sn_broker.ports["default"]),
         "-t", "sn/reg/temp", "-C", "1", "-v", "-q", "1", "-W", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        time.sleep(0.3)
        client = sn()
        client.connect("sn-reg")
        topic_id = client.register("sn/reg/temp", msg_id=7)
        assert topic_id != 0
        out = b""
        for msg_id in range(11, 21):  # again until mosquitto_sub (subscribing) has one
            client.send(c.Publish(TID.NORMAL, topic_id, msg_id, b"21.5", qos=1))
            assert client.expect(c.PubAck) == c.PubAck(topic_id, msg_id, 0)
            try:
                out, _ = sub.communicate(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if sub.poll() is None:
            sub.kill()
    assert out.decode().strip() == "sn/reg/temp 21.5"


def test_6_7_publish_qos0_and_qos2_short_and_predefined(
        sn: Callable[[], SnTestClient], mqtt: Callable[[str], Mqtt]) -> None:
    watcher = mqtt("sn-watch-1")
    watcher.subscribe("sensors/predefined")
    watcher.subscribe("ab")
    client = sn()
    client.connect("sn-pub")
    client.send(c.Publish(TID.PREDEFINED, 1, 0, b"zero", qos=0))
    msg = watcher.get()
    assert (msg.topic, msg.payload) == ("sensors/predefined", b"zero")
    # QoS 2 with a short topic name: PUBREC, PUBREL, PUBCOMP (§6.7, §5.4.14).
    client.send(c.Publish(TID.SHORT, c.encode_short_name("ab"), 5, b"two", qos=2))
    assert client.expect(c.PubRec) == c.PubRec(5)
    client.send(c.PubRel(5))
    assert client.expect(c.PubComp) == c.PubComp(5)
    msg = watcher.get()
    assert (msg.topic, msg.payload, msg.qos) == ("ab", b"two", 1)


def test_6_7_unknown_topic_id_gets_puback_invalid_topic_id(
        sn: Callable[[], SnTestClient]) -> None:
    client = sn()
    client.connect("sn-badtopic")
    client.send(c.Publish(TID.NORMAL, 999, 3, b"x", qos=1))
    assert client.expect(c.PubAck) == c.PubAck(999, 3, c.ReturnCode.INVALID_TOPIC_ID)
    client.send(c.Publish(TID.PREDEFINED, 77, 4, b"x", qos=1))
    assert client.expect(c.PubAck) == c.PubAck(77, 4, c.ReturnCode.INVALID_TOPIC_ID)
    # The client is still connected.
    client.send(c.PingReq())
    client.expect(c.PingResp)


def test_6_8_qos_minus_one_without_connection(
        sn: Callable[[], SnTestClient], mqtt: Callable[[str], Mqtt]) -> None:
    watcher = mqtt("sn-watch-m1")
    watcher.subscribe("sensors/predefined", qos=0)
    watcher.subscribe("m1", qos=0)
    client = sn()  # never connects
    client.send(c.Publish(TID.PREDEFINED, 1, 0, b"fire-and-forget", qos=-1))
    client.send(c.Publish(TID.SHORT, c.encode_short_name("m1"), 0, b"short", qos=-1))
    got = {(m.topic, m.payload) for m in (watcher.get(), watcher.get())}
    assert got == {("sensors/predefined", b"fire-and-forget"), ("m1", b"short")}
    client.nothing()  # QoS -1 is never answered


# ------------------------------------------------ SUBSCRIBE and delivery (§6.9, §6.10)
def test_6_9_subscribe_by_name_gets_topic_id_and_receives(
        sn: Callable[[], SnTestClient], mqtt: Callable[[str], Mqtt]) -> None:
    client = sn()
    client.connect("sn-sub")
    ack = client.subscribe("sn/sub/cmd", qos=1, msg_id=2)
    assert ack.return_code == 0 and ack.qos == 1 and ack.topic_id != 0
    mqtt("sn-pub-1").publish("sn/sub/cmd", b"on", qos=1)
    pub = client.expect(c.Publish)
    assert isinstance(pub, c.Publish)
    assert (pub.topic_id_type, pub.topic_id, pub.data, pub.qos) == (
        TID.NORMAL, ack.topic_id, b"on", 1)
    client.send(c.PubAck(pub.topic_id, pub.msg_id, 0))
    client.send(c.Unsubscribe(3, TID.NORMAL, "sn/sub/cmd"))
    assert client.expect(c.UnsubAck) == c.UnsubAck(3)
    mqtt("sn-pub-2").publish("sn/sub/cmd", b"off", qos=1)
    client.nothing()


def test_6_10_wildcard_match_is_registered_before_publish(
        sn: Callable[[], SnTestClient], mqtt: Callable[[str], Mqtt]) -> None:
    client = sn()
    client.connect("sn-wild")
    ack = client.subscribe("sn/wild/#", qos=0, msg_id=4)
    assert ack.topic_id == 0 and ack.return_code == 0
    mqtt("sn-pub-3").publish("sn/wild/a/b", b"1", qos=0)
    reg = client.expect(c.Register)
    assert isinstance(reg, c.Register) and reg.topic_name == "sn/wild/a/b"
    client.nothing(0.2)  # the PUBLISH waits for the REGACK
    client.send(c.RegAck(reg.topic_id, reg.msg_id, 0))
    pub = client.expect(c.Publish)
    assert isinstance(pub, c.Publish)
    assert (pub.topic_id_type, pub.topic_id, pub.data) == (TID.NORMAL, reg.topic_id, b"1")
    # Registered once: the next message to that topic comes straight away.
    mqtt("sn-pub-4").publish("sn/wild/a/b", b"2", qos=0)
    pub2 = client.expect(c.Publish)
    assert isinstance(pub2, c.Publish) and (pub2.topic_id, pub2.data) == (reg.topic_id, b"2")


def test_6_9_subscribe_predefined_and_short_and_retained(
        sn: Callable[[], SnTestClient], mqtt: Callable[[str], Mqtt]) -> None:
    mqtt("sn-ret").publish("cmd/predefined", b"kept", qos=1, retain=True)
    client = sn()
    client.connect("sn-sub-pre")
    ack = client.subscribe(tid_type=TID.PREDEFINED, topic_id=2, qos=1, msg_id=5)
    assert ack.topic_id == 2 and ack.return_code == 0
    pub = client.expect(c.Publish)  # the retained message, by its predefined id
    assert isinstance(pub, c.Publish)
    assert (pub.topic_id_type, pub.topic_id, pub.data, pub.retain) == (
        TID.PREDEFINED, 2, b"kept", True)
    client.send(c.PubAck(2, pub.msg_id, 0))
    ack = client.subscribe("zz", tid_type=TID.SHORT, msg_id=6)
    assert ack.return_code == 0
    mqtt("sn-pub-5").publish("zz", b"s", qos=0)
    pub = client.expect(c.Publish)
    assert isinstance(pub, c.Publish)
    assert (pub.topic_id_type, pub.topic_id, pub.data) == (
        TID.SHORT, c.encode_short_name("zz"), b"s")
    bad = client.subscribe(tid_type=TID.PREDEFINED, topic_id=99, msg_id=7)
    assert bad.return_code == c.ReturnCode.INVALID_TOPIC_ID
    mqtt("sn-ret").publish("cmd/predefined", b"", qos=1, retain=True)  # clean up


def test_qos2_delivery_to_client_5_4_14(
        sn: Callable[[], SnTestClient], mqtt: Callable[[str], Mqtt]) -> None:
    client = sn()
    client.connect("sn-q2")
    ack = client.subscribe("sn/q2", qos=2, msg_id=1)
    assert ack.qos == 2
    mqtt("sn-pub-6").publish("sn/q2", b"exactly", qos=2)
    pub = client.expect(c.Publish)
    assert isinstance(pub, c.Publish) and pub.qos == 2
    client.send(c.PubRec(pub.msg_id))
    assert client.expect(c.PubRel) == c.PubRel(pub.msg_id)
    client.send(c.PubComp(pub.msg_id))
    client.nothing()


# ---------------------------------------------------------- will (§6.2, §6.4, §6.11)
def test_6_2_will_dialogue_and_6_11_keepalive_loss_publishes_will(
        sn: Callable[[], SnTestClient], mqtt: Callable[[str], Mqtt]) -> None:
    watcher = mqtt("sn-watch-will")
    watcher.subscribe("sn/will/+")
    client = sn()
    assert client.connect_with_will("sn-will", "sn/will/a", b"gone", 1, qos=1) == c.ConnAck(0)
    # §6.4: the will is updated while connected.
    client.send(c.WillTopicUpd("sn/will/b", qos=1))
    assert client.expect(c.WillTopicResp) == c.WillTopicResp(0)
    client.send(c.WillMsgUpd(b"gone for good"))
    assert client.expect(c.WillMsgResp) == c.WillMsgResp(0)
    # Silent for more than 1.5 x 1 s: lost, the will goes out (and DISCONNECT to it).
    msg = watcher.get(timeout=6)
    assert (msg.topic, msg.payload) == ("sn/will/b", b"gone for good")
    client.expect(c.Disconnect, timeout=3)


def test_6_2_and_6_4_will_topic_over_the_topic_limits_is_refused(
        sn: Callable[[], SnTestClient], mqtt: Callable[[str], Mqtt]) -> None:
    """A will topic the broker's ``mqtt.max_topic_levels`` (8 here) refuses, as it
    refuses a PUBLISH to it: in the CONNECT's will dialogue (§6.2) the CONNACK is not
    accepted (the engine's MQTT 5.0 CONNACK 0x90, translated), and a WILLTOPICUPD (§6.4)
    gets WILLTOPICRESP "rejected: not supported" and leaves the will as it was; that
    will goes out when the client is lost."""
    too_deep = "sn/will/" + "/".join(["x"] * 7)  # 9 levels
    watcher = mqtt("sn-watch-will-limit")
    watcher.subscribe("sn/will/#")
    refused = sn()
    ack = refused.connect_with_will("sn-will-deep", too_deep, b"never", 60, qos=1)
    assert ack.return_code != 0, ack
    client = sn()
    assert client.connect_with_will("sn-will-upd", "sn/will/kept", b"kept", 1,
                                    qos=1) == c.ConnAck(0)
    client.send(c.WillTopicUpd(too_deep, qos=1))
    assert client.expect(c.WillTopicResp) == c.WillTopicResp(c.ReturnCode.NOT_SUPPORTED)
    msg = watcher.get(timeout=6)  # lost after 1.5 x 1 s: the will it kept
    assert (msg.topic, msg.payload) == ("sn/will/kept", b"kept")
    client.expect(c.Disconnect, timeout=3)


def test_6_2_empty_willtopic_means_no_will(sn: Callable[[], SnTestClient]) -> None:
    client = sn()
    client.send(c.Connect("sn-nowill", 60, will=True))
    client.expect(c.WillTopicReq)
    client.send(c.WillTopic("", empty=True))
    assert client.expect(c.ConnAck) == c.ConnAck(0)


# ---------------------------------------------------------------- sleeping (§6.14)
def test_6_14_sleeping_client_gets_mosquitto_pub_message_when_it_wakes(
        sn: Callable[[], SnTestClient], sn_broker: BrokerProcess) -> None:
    """A ``mosquitto_pub`` message reaches a sleeping MQTT-SN client when it wakes."""
    if shutil.which("mosquitto_pub") is None:
        pytest.fail("mosquitto_pub is not installed (scripts/test.sh installs it)")
    client = sn()
    client.connect("sn-sleeper", duration=30)
    ack = client.subscribe("sn/sleep/cmd", qos=1, msg_id=1)
    client.send(c.Disconnect(60))
    client.expect(c.Disconnect)
    for payload in ("one", "two"):
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(sn_broker.ports["default"]),
             "-t", "sn/sleep/cmd", "-m", payload, "-q", "1"], check=True, timeout=10)
    client.nothing(0.5)  # asleep: buffered at the gateway
    client.send(c.PingReq("sn-sleeper"))
    got = []
    for _ in range(2):
        pub = client.expect(c.Publish)
        assert isinstance(pub, c.Publish) and pub.topic_id == ack.topic_id
        got.append(pub.data)
        client.send(c.PubAck(pub.topic_id, pub.msg_id, 0))
    assert got == [b"one", b"two"]
    client.expect(c.PingResp)  # everything delivered: back to sleep
    client.send(c.PingReq("sn-sleeper"))
    client.expect(c.PingResp)  # nothing new


def test_6_14_sleep_duration_runs_out_session_ends(
        sn: Callable[[], SnTestClient], mqtt: Callable[[str], Mqtt]) -> None:
    watcher = mqtt("sn-watch-sleep")
    watcher.subscribe("sn/sleepwill")
    client = sn()
    ack = client.connect_with_will("sn-sleep-lost", "sn/sleepwill", b"overslept", 60)
    assert ack == c.ConnAck(0)
    client.send(c.Disconnect(1))
    client.expect(c.Disconnect)
    msg = watcher.get(timeout=6)  # 1.5 x 1 s of silence: lost
    assert msg.payload == b"overslept"


# ------------------------------------------------------ retransmission (§6.13)
def test_6_13_unacknowledged_publish_is_resent_with_dup(
        sn: Callable[[], SnTestClient], mqtt: Callable[[str], Mqtt]) -> None:
    client = sn()
    client.connect("sn-retry", duration=60)
    client.subscribe("sn/retry", qos=1)
    mqtt("sn-pub-7").publish("sn/retry", b"again", qos=1)
    first = client.expect(c.Publish)
    assert isinstance(first, c.Publish) and not first.dup
    again = client.expect(c.Publish, timeout=3)  # retry_interval 0.4 s
    assert isinstance(again, c.Publish)
    assert again.dup and (again.msg_id, again.data) == (first.msg_id, b"again")
    client.send(c.PubAck(again.topic_id, again.msg_id, 0))
    client.nothing(1.0)  # acknowledged: no more resends


# ---------------------------------------------------------- sessions shared with MQTT
def test_takeover_across_mqtt_sn_and_mqtt(
        sn: Callable[[], SnTestClient], sn_broker: BrokerProcess) -> None:
    """One client id namespace: an MQTT client with the id of a connected MQTT-SN
    client takes its session over; the MQTT-SN client is told DISCONNECT."""
    client = sn()
    client.connect("sn-shared-id", clean=False)
    client.subscribe("sn/shared", qos=1)
    present: queue.Queue[bool] = queue.Queue()
    other = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="sn-shared-id",
                        clean_session=False)
    other.on_connect = lambda _c, _u, flags, _rc, _p: present.put(flags.session_present)
    other.connect("127.0.0.1", sn_broker.ports["default"])
    other.loop_start()
    try:
        assert present.get(timeout=5) is True  # the MQTT-SN client's session
        client.expect(c.Disconnect)
    finally:
        other.loop_stop()
        other.disconnect()


def test_takeover_of_an_mqtt_client_by_an_mqtt_sn_client(
        sn: Callable[[], SnTestClient], sn_broker: BrokerProcess) -> None:
    """An MQTT-SN CONNECT with the id of a connected MQTT client takes over its
    (persistent) session; the MQTT connection is closed."""
    closed: queue.Queue[int] = queue.Queue()
    other = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="sn-shared-2",
                        clean_session=False, reconnect_on_failure=False)
    connected: queue.Queue[int] = queue.Queue()
    other.on_connect = lambda *_a: connected.put(1)
    other.on_disconnect = lambda *_a: closed.put(1)
    other.connect("127.0.0.1", sn_broker.ports["default"])
    other.loop_start()
    try:
        connected.get(timeout=5)
        other.subscribe("sn/shared2", 1)
        time.sleep(0.3)
        client = sn()
        client.connect("sn-shared-2", clean=False)
        closed.get(timeout=5)  # the MQTT connection was taken over
    finally:
        other.loop_stop()


# ------------------------------------------------------------ forwarder (§5.5)
def test_5_5_forwarder_encapsulation(sn: Callable[[], SnTestClient],
                                     mqtt: Callable[[str], Mqtt]) -> None:
    watcher = mqtt("sn-watch-fw")
    watcher.subscribe("fw")
    forwarder = sn()
    forwarder.node = b"\x00\x13\xa2\x00"  # e.g. a ZigBee address
    forwarder.connect("sn-behind-forwarder")
    forwarder.send(c.Publish(TID.SHORT, c.encode_short_name("fw"), 1, b"relayed", qos=1))
    ack = forwarder.expect(c.PubAck)  # wrapped for the same node (checked by recv)
    assert isinstance(ack, c.PubAck) and ack.return_code == 0
    assert watcher.get().payload == b"relayed"


# ---------------------------------------------------------------- bad input
def test_malformed_datagrams_dropped_without_affecting_others(
        sn: Callable[[], SnTestClient], sn_broker: BrokerProcess) -> None:
    good = sn()
    good.connect("sn-good")
    bad = sn()
    for data in (b"", b"\x05", b"\x05\x0c\x00", b"\x02\x03", b"\xff" * 40,
                 bytes.fromhex("07 0c 03 00 01 00 01"), bytes.fromhex("01 00 05 16 00")):
        bad.send_raw(data)
    bad.nothing(0.2)  # dropped, not answered
    good.send(c.PingReq())
    good.expect(c.PingResp)
    assert "dropped datagram" in sn_broker.log_text()


def test_flood_from_one_address_is_rate_limited(
        sn: Callable[[], SnTestClient]) -> None:
    good = sn()
    good.connect("sn-calm")
    flood = sn()
    started = time.monotonic()
    for _ in range(2000):  # rate_per_address is 500/s, burst 500
        flood.send(c.SearchGw(0))
    took = time.monotonic() - started
    answers = 0
    try:
        while True:
            flood.recv(0.3)
            answers += 1
    except TimeoutError:
        pass
    assert 0 < answers <= 500 + 500 * (took + 0.5) and answers < 2000
    good.send(c.PingReq())
    good.expect(c.PingResp)
