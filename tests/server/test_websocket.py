"""WebSocket listeners (MQTT 3.1.1 §6, MQTT 5.0 §6): paho-mqtt over ``ws``/``wss`` and a
raw ``websockets`` client checking the handshake and the framing rules."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
)
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient
from tests.server.clients import (
    WAIT,
    Paho,
    client_context,
    config,
    listener,
    paho_factory,
    tls_block,
)
from tests.server.pki import Pki, make_pki

MQTT = [Subprotocol("mqtt")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def ws_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    listeners = (
        listener("tcp", "tcp")
        + listener("ws", "ws", path="/mqtt")
        + listener("wss", "wss", tls_block(pki), path="/secure")
        + listener("wss-id", "wss", tls_block(pki, cafile=pki.ca, require_client_cert=True,
                                              use_identity_as_username=True), path="/mqtt")
    )
    extra = "limits:\n  drain_timeout: 1s\n"
    proc = BrokerProcess(tmp_path_factory.mktemp("ws-broker"), config(listeners, extra)).start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log_text()


@pytest.fixture
def paho(ws_broker: BrokerProcess) -> Iterator[Callable[..., Paho]]:
    clients: list[Paho] = []
    yield paho_factory(clients)
    for client in clients:
        client.stop()


class WsMqtt:
    """A raw MQTT client over a ``websockets`` connection: bytes in, packets out."""

    def __init__(self, ws: ClientConnection, version: int = 4) -> None:
        self.ws = ws
        self.version = version
        self.framer = Framer(1 << 28)
        self.pending: list[Packet] = []

    def send(self, *packets: Packet) -> None:
        """All packets in one binary WebSocket message."""
        self.ws.send(b"".join(encode_packet(p, self.version) for p in packets))

    def recv(self, timeout: float = WAIT) -> Packet:
        deadline = time.monotonic() + timeout
        while not self.pending:
            data = self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
            assert isinstance(data, bytes), "the broker must send binary frames"
            for first, body in self.framer.feed(data):
                self.pending.append(decode_packet(first, body, self.version))
        return self.pending.pop(0)


def _ws_url(proc: BrokerProcess, name: str = "ws", path: str = "/mqtt",
            scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{proc.ports[name]}{path}"


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_paho_over_websocket(ws_broker: BrokerProcess, paho: Callable[..., Paho],
                             protocol: int) -> None:
    ws_port = ws_broker.ports["ws"]
    sub = paho("127.0.0.1", ws_port, f"ws-sub-{protocol}", protocol=protocol,
               transport="websockets", path="/mqtt").connect()
    sub.subscribe(f"ws/{protocol}/#", 2)
    # A TCP publisher reaches the WebSocket subscriber, and the other way round.
    tcp = paho("127.0.0.1", ws_broker.ports["tcp"], f"tcp-{protocol}", protocol=protocol)
    tcp.connect()
    tcp.subscribe(f"back/{protocol}", 1)
    for qos in (0, 1, 2):
        tcp.publish(f"ws/{protocol}/{qos}", f"payload {qos}".encode(), qos=qos)
        msg = sub.receive()
        assert (msg.topic, msg.payload, msg.qos) == (f"ws/{protocol}/{qos}",
                                                     f"payload {qos}".encode(), qos)
    big = bytes(range(256)) * 1024  # 256 KiB: many TCP segments, one message
    sub.publish(f"back/{protocol}", big, qos=1)
    msg = tcp.receive()
    assert msg.payload == big


def test_subprotocol_is_mqtt_and_packets_may_span_or_share_frames(
        ws_broker: BrokerProcess) -> None:
    """[MQTT-6.0.0-4]: the server selects "mqtt" as the subprotocol; [MQTT-6.0.0-2]:
    MQTT packets are not aligned with WebSocket frames (split and joined here).
    [MQTT-7.1.1-1] (3.1.1 §4.2): the transport is an ordered, lossless, two-way byte
    stream whatever the framing: a packet sent one byte per frame arrives whole."""
    with connect(_ws_url(ws_broker), subprotocols=MQTT, open_timeout=WAIT) as ws:
        assert ws.subprotocol == "mqtt"
        client = WsMqtt(ws)
        data = encode_packet(Connect(client_id="ws-raw", keepalive=30), 4)
        for i in range(len(data)):  # one byte per frame: a packet spans frames
            ws.send(data[i:i + 1])
        assert isinstance(client.recv(), ConnAck)
        # Several packets in one frame.
        client.send(Subscribe(1, [Subscription("raw/t", 0)]), PingReq(),
                    Publish("raw/t", b"hello", 0, False, False, None))
        got = [client.recv(), client.recv(), client.recv()]
        assert [type(p) for p in got] == [SubAck, PingResp, Publish]
        assert isinstance(got[2], Publish) and got[2].payload == b"hello"


def test_mqttv31_subprotocol_and_none_are_accepted(ws_broker: BrokerProcess) -> None:
    v31 = [Subprotocol("mqttv3.1")]
    with connect(_ws_url(ws_broker), subprotocols=v31, open_timeout=WAIT) as ws:
        assert ws.subprotocol == "mqttv3.1"
    with connect(_ws_url(ws_broker), open_timeout=WAIT) as ws:
        assert ws.subprotocol is None
        client = WsMqtt(ws)
        client.send(Connect(client_id="ws-noproto"))
        assert isinstance(client.recv(), ConnAck)


def test_wrong_path_and_wrong_subprotocol_are_refused(ws_broker: BrokerProcess) -> None:
    with pytest.raises(InvalidHandshake, match="404"):
        connect(_ws_url(ws_broker, path="/other"), subprotocols=MQTT,
                open_timeout=WAIT)
    with pytest.raises(InvalidHandshake, match="400"):
        connect(_ws_url(ws_broker), subprotocols=[Subprotocol("chat")],
                open_timeout=WAIT)


def test_text_frame_closes_the_connection(ws_broker: BrokerProcess) -> None:
    """[MQTT-6.0.0-1]: MQTT data is sent in binary frames; other frames close."""
    with connect(_ws_url(ws_broker), subprotocols=MQTT, open_timeout=WAIT) as ws:
        client = WsMqtt(ws)
        client.send(Connect(client_id="ws-text"))
        assert isinstance(client.recv(), ConnAck)
        ws.send("not binary")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=WAIT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1003


def test_wss_with_paho_and_raw_client(ws_broker: BrokerProcess, pki: Pki,
                                      paho: Callable[..., Paho]) -> None:
    port = ws_broker.ports["wss"]
    sub = paho("127.0.0.1", port, "wss-sub", protocol=mqtt.MQTTv5, transport="websockets",
               path="/secure", tls={"ca_certs": str(pki.ca)}).connect()
    sub.subscribe("wss/t", 1)
    ctx = client_context(pki)
    with connect(_ws_url(ws_broker, "wss", "/secure", "wss"), subprotocols=MQTT,
                 ssl=ctx, open_timeout=WAIT) as ws:
        assert ws.subprotocol == "mqtt"
        client = WsMqtt(ws, version=5)
        client.send(Connect(client_id="wss-raw", protocol_version=5),
                    Publish("wss/t", b"secure", 0, False, False, None))
        assert isinstance(client.recv(), ConnAck)
    msg = sub.receive()
    assert (msg.topic, msg.payload) == ("wss/t", b"secure")


def test_wss_certificate_identity_is_the_username(ws_broker: BrokerProcess, pki: Pki,
                                                  paho: Callable[..., Paho]) -> None:
    """``use_identity_as_username`` on ``wss``: the MQTT side sees the TLS transport
    under the WebSocket adapter, so the certificate's CN is the username; a
    certificate without a CN is refused."""
    port = ws_broker.ports["wss-id"]
    tls = {"ca_certs": str(pki.ca), "certfile": str(pki.client_cert),
           "keyfile": str(pki.client_key)}
    dev = paho("127.0.0.1", port, "wss-dev", protocol=mqtt.MQTTv5, transport="websockets",
               path="/mqtt", tls=tls)
    dev.connect(username="mallory", password="wrong")
    deadline = time.monotonic() + WAIT
    while "client 'wss-dev' connected from" not in ws_broker.log_text():
        assert time.monotonic() < deadline, ws_broker.log_text()[-2000:]
        time.sleep(0.05)
    [line] = [line for line in ws_broker.log_text().splitlines()
              if "client 'wss-dev' connected from 127.0.0.1:" in line]
    assert "username='device-42'" in line and "cert='CN=device-42" in line
    ctx = client_context(pki, pki.nocn_cert, pki.nocn_key)
    with connect(_ws_url(ws_broker, "wss-id", "/mqtt", "wss"), subprotocols=MQTT, ssl=ctx,
                 open_timeout=WAIT) as ws, pytest.raises(ConnectionClosed):
        ws.recv(timeout=WAIT)
    assert "has no subject CN" in ws_broker.log_text()


def test_stuck_websocket_consumer_is_disconnected(ws_broker: BrokerProcess) -> None:
    """A WebSocket subscriber that stops reading is paused (pause_writing via the
    adapter's high-water mark) and dropped after limits.drain_timeout (1 s here)."""
    url = _ws_url(ws_broker)
    with connect(url, subprotocols=MQTT, open_timeout=WAIT,
                 max_queue=1) as stuck:
        client = WsMqtt(stuck)
        client.send(Connect(client_id="ws-stuck"), Subscribe(1, [Subscription("flood/#", 0)]))
        assert isinstance(client.recv(), ConnAck)
        assert isinstance(client.recv(), SubAck)
        # From here on nobody reads ``stuck``: shrink its receive buffer and flood it.
        stuck.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        publisher = RawClient("127.0.0.1", ws_broker.ports["tcp"])
        try:
            publisher.connect("ws-flooder")
            payload = b"x" * 65536
            deadline = time.monotonic() + 10
            while "ws-stuck" not in _stuck_lines(ws_broker) and time.monotonic() < deadline:
                for _ in range(32):
                    publisher.publish("flood/x", payload)
                publisher.send(PingReq())
                publisher.expect(PingResp)
        finally:
            publisher.close()
        assert "ws-stuck" in _stuck_lines(ws_broker), ws_broker.log_text()[-3000:]


def _stuck_lines(proc: BrokerProcess) -> str:
    return "\n".join(line for line in proc.log_text().splitlines()
                     if "disconnecting a stuck consumer" in line)


def test_shutdown_sends_v5_disconnect_over_websocket(make_broker: Callable[..., BrokerProcess]
                                                      ) -> None:
    """Broker.stop(): the WebSocket client gets DISCONNECT 0x8B before the close frame."""
    proc = make_broker(config_text=config(listener("ws", "ws")))
    with connect(_ws_url(proc), subprotocols=MQTT, open_timeout=WAIT) as ws:
        client = WsMqtt(ws, version=5)
        client.send(Connect(client_id="ws-shutdown", protocol_version=5))
        assert isinstance(client.recv(), ConnAck)
        assert proc.stop() == 0
        packet = client.recv()
        assert isinstance(packet, Disconnect) and packet.reason_code == 0x8B
        with pytest.raises(ConnectionClosed):
            client.recv()
    assert "Traceback" not in proc.log_text()


def test_pings_are_answered_and_closing_is_clean(ws_broker: BrokerProcess) -> None:
    """The client's WebSocket pings get pongs (RFC 6455 §5.5.2); a client close frame
    ends the connection without an error (its session goes as after a lost socket)."""
    with connect(_ws_url(ws_broker), subprotocols=MQTT, open_timeout=WAIT) as ws:
        client = WsMqtt(ws)
        client.send(Connect(client_id="ws-ping"))
        assert isinstance(client.recv(), ConnAck)
        for _ in range(3):
            assert ws.ping(b"are you there").wait(WAIT)
        client.send(PingReq())
        assert isinstance(client.recv(), PingResp)
    line = next((line for line in ws_broker.log_text().splitlines()
                 if "'ws-ping'" in line and "connection lost" in line), "")
    deadline = time.monotonic() + WAIT
    while not line and time.monotonic() < deadline:
        time.sleep(0.05)
        line = next((line for line in ws_broker.log_text().splitlines()
                     if "'ws-ping'" in line and "connection lost" in line), "")
    assert line, ws_broker.log_text()[-2000:]
    assert "WebSocket code" not in line and "protocol error" not in line


def test_disconnect_reaches_a_websocket_client_that_keeps_sending(
        ws_broker: BrokerProcess) -> None:
    """Issue 18, MQTT 5.0 §4.13 [MQTT-4.13.1-1] over WebSocket: a protocol error (a
    second CONNECT [MQTT-3.1.0-2]) while the client goes on sending binary messages
    gets DISCONNECT 0x82, then the WebSocket closing handshake (code 1000) -- not a
    reset of the TCP connection under the client's feet."""
    with connect(_ws_url(ws_broker), subprotocols=MQTT, open_timeout=WAIT) as ws:
        client = WsMqtt(ws, version=5)
        client.send(Connect(client_id="ws-keeps-sending", protocol_version=5))
        assert isinstance(client.recv(), ConnAck)
        stop = threading.Event()
        errors: list[BaseException] = []
        filler = encode_packet(Publish("ws/keeps", b"x" * 300), 5)

        def keep_sending() -> None:
            deadline = time.monotonic() + 5.0
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    ws.send(filler)
                except ConnectionClosed:
                    return  # the closing handshake ended sending: expected
                except BaseException as exc:
                    errors.append(exc)
                    return
                time.sleep(0.005)

        writer = threading.Thread(target=keep_sending, daemon=True)
        writer.start()
        time.sleep(0.1)
        client.send(Connect(client_id="ws-keeps-sending", protocol_version=5))
        packet = client.recv()
        while isinstance(packet, Publish):
            packet = client.recv()
        assert isinstance(packet, Disconnect) and packet.reason_code == 0x82, packet
        got_disconnect = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            client.recv()
        # The closing handshake starts at once (the lingering close of the TCP
        # connection comes after it, server/linger.py), not after a linger.
        assert time.monotonic() - got_disconnect < 1.5
        stop.set()
        writer.join(2.0)
        assert errors == []
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000, closed.value
