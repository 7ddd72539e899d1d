"""A small blocking MQTT-SN test client over a real UDP socket (our codec on the wire)."""

from __future__ import annotations

import socket
import time

from iotbroker.mqttsn import codec as c


class SnTestClient:
    """Sends MQTT-SN messages and receives them, with a timeout; raw datagrams too."""

    def __init__(self, host: str, port: int, timeout: float = 3.0) -> None:
        self.addr = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.node: bytes | None = None  # set: everything goes through §5.5 encapsulation

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.addr)

    def send(self, msg: c.SnMessage) -> None:
        data = c.encode(msg)
        if self.node is not None:
            data = c.encode(c.Encapsulated(0, self.node, data))
        self.send_raw(data)

    def recv_raw(self, timeout: float | None = None) -> bytes:
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        data, _ = self.sock.recvfrom(70000)
        return data

    def recv(self, timeout: float | None = None) -> c.SnMessage:
        msg = c.decode(self.recv_raw(timeout))
        if self.node is not None:
            assert isinstance(msg, c.Encapsulated), msg
            assert msg.node_id == self.node
            msg = c.decode(msg.message)
        return msg

    def expect(self, kind: type, timeout: float | None = None) -> c.SnMessage:
        """The next message, which must be of ``kind``."""
        msg = self.recv(timeout)
        assert isinstance(msg, kind), f"expected {kind.__name__}, got {msg!r}"
        return msg

    def nothing(self, within: float = 0.3) -> None:
        """Assert no datagram arrives within ``within`` seconds."""
        try:
            data = self.recv_raw(within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected datagram {c.decode(data)!r}")

    def connect(self, client_id: str, duration: int = 60, clean: bool = True) -> None:
        self.send(c.Connect(client_id, duration, clean_session=clean))
        ack = self.expect(c.ConnAck)
        assert ack == c.ConnAck(0), ack

    def connect_with_will(self, client_id: str, topic: str, message: bytes,
                          duration: int = 60, qos: int = 0) -> c.ConnAck:
        """§6.2's will dialogue: CONNECT with the Will flag, WILLTOPICREQ → WILLTOPIC,
        WILLMSGREQ → WILLMSG; returns the CONNACK, whatever its return code."""
        self.send(c.Connect(client_id, duration, will=True))
        self.expect(c.WillTopicReq)
        self.send(c.WillTopic(topic, qos=qos))
        self.expect(c.WillMsgReq)
        self.send(c.WillMsg(message))
        ack = self.expect(c.ConnAck)
        assert isinstance(ack, c.ConnAck)
        return ack

    def register(self, topic: str, msg_id: int = 1) -> int:
        self.send(c.Register(0, msg_id, topic))
        ack = self.expect(c.RegAck)
        assert isinstance(ack, c.RegAck)
        assert ack.msg_id == msg_id and ack.return_code == 0, ack
        return ack.topic_id

    def subscribe(self, name: str = "", qos: int = 0, msg_id: int = 1,
                  tid_type: int = c.TopicIdType.NORMAL, topic_id: int = 0) -> c.SubAck:
        self.send(c.Subscribe(msg_id, tid_type, name, topic_id, qos=qos))
        ack = self.expect(c.SubAck)
        assert isinstance(ack, c.SubAck) and ack.msg_id == msg_id, ack
        return ack


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")
