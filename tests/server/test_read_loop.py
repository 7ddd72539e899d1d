"""Several packets in one read of a connected client (server/broker.py
``handle_packets``, engine/engine.py ``Engine.handle_read``; issue 19).

The engine's compiled loop takes a connected client's packets until one needs the
server: it stops after a packet that closes the connection and before an AUTH. What
comes after must then be treated exactly as the per-packet loop treated it: nothing
after a DISCONNECT or a violation is handled. Each test sends its packets with one
``sendall`` so that they arrive in one read.
"""

from __future__ import annotations

from collections.abc import Callable

from iotbroker.codec.encode import encode_packet
from iotbroker.codec.enums import ReasonCode
from iotbroker.codec.packets import Auth, Disconnect, PubAck, Publish
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import RawClient


def _subscriber(broker: BrokerProcess, version: int) -> RawClient:
    sub = RawClient(broker.host, broker.port, version=version)
    assert sub.connect("rl-sub").reason_code == 0
    sub.subscribe("rl/#", qos=1)
    return sub


def test_nothing_after_disconnect_in_the_same_read_is_handled(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """Two QoS 1 PUBLISHes, DISCONNECT, a third PUBLISH in one read: the first two are
    acknowledged and forwarded, the connection closes and the third is not routed
    (the server closes the connection on DISCONNECT [MQTT-3.14.4-1 client side; the
    server discards the Will, MQTT-3.14.4-3] and reads nothing after it)."""
    broker = make_broker(broker_config())
    with _subscriber(broker, 4) as sub, RawClient(broker.host, broker.port) as pub:
        assert pub.connect("rl-pub").reason_code == 0
        pub.send_raw(b"".join((
            encode_packet(Publish("rl/1", b"a", 1, packet_id=1), 4),
            encode_packet(Publish("rl/2", b"b", 1, packet_id=2), 4),
            encode_packet(Disconnect(), 4),
            encode_packet(Publish("rl/3", b"c", 1, packet_id=3), 4),
        )))
        got = pub.expect_closed()
        assert [p.packet_id for p in got if isinstance(p, PubAck)] == [1, 2]
        assert [sub.receive_publish().topic for _ in range(2)] == ["rl/1", "rl/2"]
        sub.nothing(0.5)


def test_auth_in_the_same_read_stops_the_engine_loop(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """MQTT 5.0: PUBLISH, AUTH, PUBLISH in one read from a client that connected
    without an Authentication Method: the first PUBLISH is handled (acknowledged and
    forwarded), the AUTH is a Protocol Error [MQTT-4.12.0-7] (DISCONNECT 0x82, close)
    and the PUBLISH after it is not routed."""
    broker = make_broker(broker_config())
    with _subscriber(broker, 5) as sub, RawClient(broker.host, broker.port, version=5) as pub:
        assert pub.connect("rl-pub5").reason_code == 0
        pub.send_raw(b"".join((
            encode_packet(Publish("rl/a", b"a", 1, packet_id=1), 5),
            encode_packet(Auth(ReasonCode.RE_AUTHENTICATE), 5),
            encode_packet(Publish("rl/b", b"b", 1, packet_id=2), 5),
        )))
        got = pub.expect_closed()
        assert [p.packet_id for p in got if isinstance(p, PubAck)] == [1]
        disconnects = [p for p in got if isinstance(p, Disconnect)]
        assert [d.reason_code for d in disconnects] == [ReasonCode.PROTOCOL_ERROR]
        assert sub.receive_publish().topic == "rl/a"
        sub.nothing(0.5)
