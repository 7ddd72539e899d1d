"""MQTT-SN clients under the broker's ACL (the listener's ``mqttsn_username``), the
``allowed_clients`` list, the bound on clients, and persistent sessions that survive a
broker restart (RocksDB), over real UDP against the real broker."""

from __future__ import annotations

from pathlib import Path

from iotbroker.mqttsn import codec as c
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.mqttsn.snclient import SnTestClient

TID = c.TopicIdType
LISTENERS = (
    "listeners:\n"
    "  - {name: default, type: tcp, host: 127.0.0.1, port: 0}\n"
    "  - {name: sn, type: mqtt-sn, host: 127.0.0.1, port: 0, mqttsn_username: sensors}\n"
)
ACL = "user sensors\ntopic write sensors/#\ntopic read cmd/#\n"


def test_acl_applies_to_the_listener_username_and_allowed_clients(tmp_path: Path) -> None:
    (tmp_path / "acl").write_text(ACL)
    extra = (f"auth:\n  acl_file: {tmp_path / 'acl'}\n"
             "mqttsn:\n  advertise_interval: 0\n  allowed_clients: [s1, s2]\n"
             "  max_clients: 2\n  predefined_topics: {1: sensors/a, 2: other/a}\n")
    proc = BrokerProcess(tmp_path, broker_config(listeners=LISTENERS, extra=extra)).start()
    clients: list[SnTestClient] = []
    try:
        def new() -> SnTestClient:
            clients.append(SnTestClient("127.0.0.1", proc.ports["sn"]))
            return clients[-1]

        stranger = new()
        stranger.send(c.Connect("intruder", 60))
        assert stranger.expect(c.ConnAck) == c.ConnAck(c.ReturnCode.NOT_SUPPORTED)
        s1 = new()
        s1.connect("s1")
        s1.send(c.Publish(TID.PREDEFINED, 1, 1, b"ok", qos=1))
        assert s1.expect(c.PubAck) == c.PubAck(1, 1, c.ReturnCode.ACCEPTED)
        # Not authorised by the ACL: PUBACK "rejected: not supported" (§5.3.10).
        s1.send(c.Publish(TID.PREDEFINED, 2, 2, b"no", qos=1))
        assert s1.expect(c.PubAck) == c.PubAck(2, 2, c.ReturnCode.NOT_SUPPORTED)
        ack = s1.subscribe("other/#", qos=1, msg_id=3)
        assert ack.return_code == c.ReturnCode.NOT_SUPPORTED
        assert s1.subscribe("cmd/#", qos=1, msg_id=4).return_code == 0
        s2 = new()
        s2.connect("s2")
        # max_clients: 2 -> "rejected: congestion" for a third (allowed ids aside).
        third = new()
        third.send(c.Connect("s2", 60))  # same id, other address: would be a third client
        assert third.expect(c.ConnAck) == c.ConnAck(c.ReturnCode.CONGESTION)
    finally:
        for client in clients:
            client.close()
        proc.stop()


def test_persistent_session_survives_restart(tmp_path: Path) -> None:
    """CleanSession false (§6.3): the subscription and the QoS 1 message queued while
    the client was away survive a broker restart (RocksDB)."""
    extra = "mqttsn:\n  advertise_interval: 0\n"
    config = broker_config(storage="rocksdb", listeners=LISTENERS, extra=extra)
    proc = BrokerProcess(tmp_path, config).start()
    client = SnTestClient("127.0.0.1", proc.ports["sn"])
    try:
        client.connect("persist-1", clean=False)
        ack = client.subscribe("cmd/persist", qos=1)
        assert ack.return_code == 0
        client.send(c.Disconnect())
        client.expect(c.Disconnect)
        import paho.mqtt.publish as publish  # noqa: PLC0415
        publish.single("cmd/persist", b"while-away", qos=1, hostname="127.0.0.1",
                       port=proc.ports["default"])
        proc.stop()
        proc.start()
        client.addr = ("127.0.0.1", proc.ports["sn"])
        client.connect("persist-1", clean=False)
        reg = client.expect(c.Register)  # a new connection: the topic id is registered
        assert isinstance(reg, c.Register) and reg.topic_name == "cmd/persist"
        client.send(c.RegAck(reg.topic_id, reg.msg_id, 0))
        pub = client.expect(c.Publish)
        assert isinstance(pub, c.Publish) and pub.data == b"while-away" and pub.qos == 1
        client.send(c.PubAck(pub.topic_id, pub.msg_id, 0))
    finally:
        client.close()
        proc.stop()
