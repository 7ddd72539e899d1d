"""The gateway driven without sockets, with a fake clock: timers (keep alive, sleep,
retransmission, ADVERTISE), bounds and counters. A tiny stand-in for the server does
what ``server/mqttsn_udp.py`` and the broker's flush do: apply closes, move session
output into connections, then write each ready client."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from iotbroker.config import parse_config
from iotbroker.engine.engine import Engine
from iotbroker.metrics import Metrics
from iotbroker.mqttsn import codec as c
from iotbroker.mqttsn.gateway import BROADCAST, Gateway, Key
from iotbroker.storage.memory import MemoryStore
from tests.engine.test_engine import AclAuthorization

TID = c.TopicIdType
A: Any = ("10.0.0.1", 5000)
B: Any = ("10.0.0.2", 5000)


class Harness:
    def __init__(self, extra: dict[str, Any] | None = None,
                 mqtt: dict[str, Any] | None = None) -> None:
        data: dict[str, Any] = {
            "listeners": [{"name": "sn", "type": "mqtt-sn", "host": "127.0.0.1", "port": 0}],
            "storage": {"backend": "memory"},
            "mqtt": mqtt or {},
            "mqttsn": {"advertise_interval": 0, "retry_interval": 5, "max_retries": 2,
                       "predefined_topics": {1: "p/one"}, **(extra or {})},
        }
        self.config = parse_config(data)
        self.metrics = Metrics()
        self.engine = Engine(self.config, MemoryStore(), AclAuthorization(), self.metrics)
        self.ready: list[Any] = []
        self.sent: list[tuple[c.SnMessage, Key]] = []
        self.now = 1000.0
        self.gw = Gateway(self.engine, self.config, self.config.listeners[0], self.ready,
                          lambda data, key: self.sent.append((c.decode(data), key)), self.now)

    def flush(self) -> None:
        for client in self.engine.take_closing():
            client.close()
        self.engine.send_ready(self.now)
        ready = self.ready[:]
        self.ready.clear()
        for client in ready:
            client.write_pending()

    def recv(self, msg: c.SnMessage, addr: Any = A) -> list[c.SnMessage]:
        self.sent.clear()
        self.gw.datagram_received(c.encode(msg), addr, self.now)
        self.flush()
        return [m for m, _ in self.sent]

    def tick(self, seconds: float) -> list[tuple[c.SnMessage, Key]]:
        self.sent.clear()
        self.now += seconds
        self.gw.run_timers(self.now)
        self.flush()
        return list(self.sent)


def test_6_1_advertise_is_broadcast_every_interval() -> None:
    h = Harness({"advertise_interval": 60, "gateway_id": 9})
    assert h.tick(0) == [(c.Advertise(9, 60), BROADCAST)]
    assert h.tick(30) == []
    assert h.tick(31) == [(c.Advertise(9, 60), BROADCAST)]


def test_6_13_retries_run_out_client_lost_and_will_published() -> None:
    h = Harness()
    assert h.recv(c.Connect("w", 0), B) == [c.ConnAck(0)]
    assert h.recv(c.Subscribe(1, TID.NORMAL, "will/t", qos=1), B)[0].return_code == 0
    h.recv(c.Connect("dev", 0, will=True))
    h.recv(c.WillTopic("will/t", qos=1))
    assert h.recv(c.WillMsg(b"bye")) == [c.ConnAck(0)]
    h.recv(c.Subscribe(2, TID.PREDEFINED, topic_id=1, qos=1))
    h.recv(c.Publish(TID.PREDEFINED, 1, 7, b"y", qos=1), B)
    first = [m for m, k in h.sent if k[0] == A]
    assert len(first) == 1 and isinstance(first[0], c.Publish) and not first[0].dup
    for _ in range(2):  # max_retries: 2 resends with DUP
        resent = [m for m, k in h.tick(5) if k[0] == A]
        assert len(resent) == 1 and isinstance(resent[0], c.Publish) and resent[0].dup
    assert h.metrics.mqttsn_retransmissions == 2
    out = h.tick(5)  # no answer after the retries: lost, its will goes to "w"
    to_b = [m for m, k in out if k[0] == B]
    assert any(isinstance(m, c.Publish) and m.data == b"bye" for m in to_b)
    assert c.Disconnect() in [m for m, k in out if k[0] == A]


def test_6_11_keepalive_supervision() -> None:
    h = Harness()
    h.recv(c.Connect("ka", 10))
    assert h.tick(14) == []
    assert h.recv(c.PingReq()) == [c.PingResp()]  # resets the timer
    assert h.tick(14) == []
    out = h.tick(2)  # 16 s of silence > 1.5 x 10
    assert (c.Disconnect(), (A, None)) in out
    assert h.metrics.keepalive_timeouts == 1
    assert h.recv(c.PingReq()) == [c.Disconnect()]


def test_6_14_qos0_buffer_of_a_sleeping_client_is_bounded() -> None:
    h = Harness()  # mqtt.max_queued_messages is the bound (default 10000)
    h.recv(c.Connect("sleepy", 0))
    h.recv(c.Subscribe(1, TID.SHORT, "zz", qos=0))
    h.recv(c.Disconnect(600))
    h.recv(c.Connect("pub", 0), B)
    bound = h.config.mqtt.max_queued_messages
    for i in range(bound + 5):
        h.gw.datagram_received(c.encode(c.Publish(TID.SHORT, c.encode_short_name("zz"), 0,
                                                  str(i).encode(), qos=0)), B, h.now)
        h.now += 0.01  # within the per-address rate
        if i % 100 == 0:
            h.flush()
    h.flush()
    assert h.metrics.mqttsn_dropped["sleep_buffer_full"] >= 5
    out = h.recv(c.PingReq("sleepy"))
    pubs = [m for m in out if isinstance(m, c.Publish)]
    assert len(pubs) == bound and out[-1] == c.PingResp()


def test_malformed_and_unknown_are_counted_and_rate_limited() -> None:
    h = Harness({"rate_per_address": 10})
    h.gw.datagram_received(b"\x03\x0c", A, h.now)
    h.gw.datagram_received(b"\x02\x03", A, h.now)
    assert h.metrics.mqttsn_dropped["malformed"] == 2
    assert h.recv(c.PubAck(1, 1, 0)) == [c.Disconnect()]  # not connected: told so
    assert h.metrics.mqttsn_dropped["unknown_client"] == 1
    for _ in range(20):
        h.gw.datagram_received(c.encode(c.SearchGw(0)), B, h.now)
    assert h.metrics.mqttsn_dropped["rate_limited"] == 10
    h.now += 1.0  # the bucket refills
    assert h.recv(c.SearchGw(0), B) == [c.GwInfo(1)]


def test_6_10_register_refused_drops_held_messages_and_frees_the_window() -> None:
    h = Harness()
    h.recv(c.Connect("r", 0))
    h.recv(c.Subscribe(1, TID.NORMAL, "a/+", qos=1))
    h.recv(c.Connect("p", 0), B)
    h.recv(c.Register(0, 1, "a/b"), B)
    out = h.recv(c.Publish(TID.NORMAL, 1, 2, b"1", qos=1), B)
    reg = next(m for m in out if isinstance(m, c.Register))
    assert h.recv(c.RegAck(reg.topic_id, reg.msg_id, c.ReturnCode.NOT_SUPPORTED)) == []
    session = h.engine.clients["r"].session
    assert session is not None and not session.inflight  # acknowledged for the client


def test_5_3_10_publish_over_the_rate_gets_puback_congestion() -> None:
    h = Harness({"rate_per_address": 5})
    h.recv(c.Connect("busy", 0))
    h.recv(c.Register(0, 1, "t/busy"))
    h.sent.clear()
    for msg_id in range(1, 11):
        h.gw.datagram_received(c.encode(c.Publish(TID.NORMAL, 1, msg_id, b"x", qos=1)), A,
                               h.now)
    h.flush()
    acks = [m for m, _ in h.sent if isinstance(m, c.PubAck)]
    codes = sorted(a.return_code for a in acks)
    # 5 tokens at first: 3 left after CONNECT and REGISTER; the rest is congestion.
    assert codes.count(c.ReturnCode.ACCEPTED) == 3
    assert codes.count(c.ReturnCode.CONGESTION) == 7


def test_6_14_sleeping_client_wakes_on_another_address() -> None:
    h = Harness()
    h.recv(c.Connect("roamer", 0))
    h.recv(c.Subscribe(1, TID.SHORT, "rm", qos=1))
    h.recv(c.Disconnect(60))
    h.recv(c.Connect("src", 0), B)
    h.recv(c.Publish(TID.SHORT, c.encode_short_name("rm"), 1, b"kept", qos=1), B)
    assert [m for m, k in h.sent if k[0] == A] == []  # asleep: buffered
    c_addr: Any = ("10.0.0.3", 7000)
    out = h.recv(c.PingReq("roamer"), c_addr)
    pub = out[0]
    assert isinstance(pub, c.Publish) and pub.data == b"kept"
    assert all(k[0] == c_addr for _, k in h.sent)  # everything goes to the new address
    assert h.recv(c.PubAck(pub.topic_id, pub.msg_id, 0), c_addr) == [c.PingResp()]


def test_publish_above_maximum_qos_is_not_supported() -> None:
    h = Harness(mqtt={"maximum_qos": 1})
    h.recv(c.Connect("q", 0))
    out = h.recv(c.Publish(TID.SHORT, c.encode_short_name("qq"), 4, b"x", qos=2))
    assert out == [c.PubAck(c.encode_short_name("qq"), 4, c.ReturnCode.NOT_SUPPORTED)]
    assert h.recv(c.PingReq()) == [c.PingResp()]  # still connected


# ----------------------------------------------------------------- any order, no crash
_ids = st.integers(0, 4)
_names = st.sampled_from(["a/b", "a/+", "#", "ab", "p/one", "", "x/y/z"])
_qos = st.sampled_from([0, 1, 2])
_tid = st.sampled_from(list(TID))
_messages = st.one_of(
    st.builds(c.Connect, st.sampled_from(["d1", "d2", ""]), st.integers(0, 3),
              will=st.booleans(), clean_session=st.booleans()),
    st.builds(c.WillTopic, _names, qos=_qos, empty=st.booleans()),
    st.builds(c.WillMsg, st.binary(max_size=4)),
    st.builds(c.Register, _ids, _ids, _names),
    st.builds(c.RegAck, _ids, _ids, st.integers(0, 3)),
    st.builds(c.Publish, _tid, _ids, _ids, st.binary(max_size=4),
              qos=st.sampled_from([-1, 0, 1, 2]), retain=st.booleans(), dup=st.booleans()),
    st.builds(c.PubAck, _ids, _ids, st.integers(0, 3)),
    st.builds(c.PubRec, _ids), st.builds(c.PubRel, _ids), st.builds(c.PubComp, _ids),
    st.builds(c.Subscribe, _ids, _tid, _names, _ids, qos=_qos),
    st.builds(c.Unsubscribe, _ids, _tid, _names, _ids),
    st.builds(c.PingReq, st.sampled_from(["", "d1", "d2"])),
    st.builds(c.Disconnect, st.sampled_from([None, 0, 1, 30])),
    st.builds(c.WillTopicUpd, _names, qos=_qos, empty=st.booleans()),
    st.builds(c.WillMsgUpd, st.binary(max_size=4)),
    st.builds(c.SearchGw, st.integers(0, 3)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B]), _messages, st.floats(0, 20)),
                max_size=40))
def test_any_sequence_of_messages_never_breaks_the_gateway(
        steps: list[tuple[Any, c.SnMessage, float]]) -> None:
    """Whatever well-formed messages arrive, in whatever order and timing, the gateway
    answers or drops them; it never raises (short topic names must be two octets, so
    such messages are skipped when they cannot be encoded)."""
    h = Harness({"rate_per_address": 0})
    for addr, msg, wait in steps:
        try:
            data = c.encode(msg)
        except ValueError:
            continue
        h.gw.datagram_received(data, addr, h.now)
        h.flush()
        h.tick(wait)
    h.tick(1000)  # every timer runs out


def test_topic_rules_of_mqtt_apply_4_7() -> None:
    """MQTT's topic rules hold for MQTT-SN names too: a filter with a misplaced '#'
    is refused in SUBACK, a name with U+0000 in REGISTER, a short name with U+0000 is
    an invalid topic id [MQTT-4.7.1-1], [MQTT-4.7.3-2]."""
    h = Harness()
    h.recv(c.Connect("rules", 0))
    ack = h.recv(c.Subscribe(1, TID.NORMAL, "a/b#", qos=1))
    assert ack == [c.SubAck(0, 0, 1, c.ReturnCode.NOT_SUPPORTED)]
    assert h.recv(c.Register(0, 2, "a\x00b")) == [c.RegAck(0, 2, c.ReturnCode.NOT_SUPPORTED)]
    out = h.recv(c.Publish(TID.SHORT, 0x0061, 3, b"x", qos=1))  # "\x00a"
    assert out == [c.PubAck(0x0061, 3, c.ReturnCode.INVALID_TOPIC_ID)]
