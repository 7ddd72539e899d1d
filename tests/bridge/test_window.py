"""The outbox towards the remote: at most ``max_inflight`` unacknowledged (the client's
side of [MQTT-3.3.4-7] / [MQTT-4.9.0-2]), in order [MQTT-4.6.0-5], and after a reconnect
to a session the remote kept, only what was not acknowledged is sent again, with DUP=1
and its packet id [MQTT-4.4.0-1] (no re-send storm). When the remote lost the session
the same messages are sent as new ones (DUP=0).

The remote here is a scripted MQTT server on a real loopback socket, so the test
decides when acknowledgements come and when the connection drops.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable

from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
)
from tests.bridge.conftest import bridge_yaml, config_with_bridges, wait_for_log
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient

MakeBroker = Callable[..., BrokerProcess]


class ScriptedRemote:
    """Accepts one bridge connection at a time and lets the test drive it."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.conn: socket.socket | None = None
        self.framer = Framer()
        self.pending: list[Packet] = []

    def accept(self, session_present: bool) -> Connect:
        self.server.settimeout(10)
        self.conn, _ = self.server.accept()
        self.framer = Framer()
        self.pending = []
        connect = self.recv()
        assert isinstance(connect, Connect)
        self.send(ConnAck(session_present, 0))
        return connect

    def send(self, packet: Packet) -> None:
        assert self.conn is not None
        self.conn.sendall(encode_packet(packet, 5))

    def recv(self, timeout: float = 5.0) -> Packet:
        assert self.conn is not None
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.conn.settimeout(left)
            data = self.conn.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.pending.extend(decode_packet(f, b, 5) for f, b in self.framer.feed(data))
        return self.pending.pop(0)

    def publishes(self, count: int) -> list[Publish]:
        got: list[Publish] = []
        while len(got) < count:
            packet = self.recv()
            if isinstance(packet, PingReq):
                self.send(PingResp())
            else:
                assert isinstance(packet, Publish), packet
                got.append(packet)
        return got

    def silent(self, wait: float = 0.5) -> None:
        try:
            packet = self.recv(wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {packet!r}")

    def drop(self) -> None:
        assert self.conn is not None
        self.conn.close()
        self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


def test_window_order_and_resend_of_only_the_unacknowledged(make_broker: MakeBroker) -> None:
    remote = ScriptedRemote()
    try:
        gw = make_broker(config_with_bridges(bridge_yaml(
            "cloud", remote.port, ['{pattern: "m/#", direction: out, qos: 1}'],
            extra="    max_inflight: 5\n"), storage="rocksdb"))
        assert remote.accept(session_present=False).client_id == "gw-cloud"
        wait_for_log(gw, "bridge 'cloud': connected to")
        with RawClient(gw.host, gw.port, version=5) as c:
            c.connect("pub")
            for i in range(20):
                c.publish("m/x", str(i).encode(), qos=1)
        first = remote.publishes(5)
        remote.silent()  # the window is full: nothing more until an acknowledgement
        assert [int(p.payload) for p in first] == [0, 1, 2, 3, 4]
        assert not any(p.dup for p in first)
        remote.send(PubAck(first[0].packet_id or 0))
        remote.send(PubAck(first[1].packet_id or 0))
        more = remote.publishes(2)
        remote.silent()
        assert [int(p.payload) for p in more] == [5, 6]
        remote.drop()  # 2, 3, 4, 5, 6 were never acknowledged

        remote.accept(session_present=True)
        again = remote.publishes(5)
        remote.silent()
        assert [(int(p.payload), p.dup) for p in again] == [
            (2, True), (3, True), (4, True), (5, True), (6, True)]
        assert [p.packet_id for p in again] == [p.packet_id for p in first[2:] + more]
        remote.send(PubAck(again[0].packet_id or 0))
        assert [int(p.payload) for p in remote.publishes(1)] == [7]
        remote.drop()  # 3, 4, 5, 6, 7 unacknowledged; the remote now forgets the session

        remote.accept(session_present=False)
        fresh = remote.publishes(5)
        remote.silent()
        assert [(int(p.payload), p.dup) for p in fresh] == [
            (3, False), (4, False), (5, False), (6, False), (7, False)]
        again = fresh
        rest: list[Publish] = []
        window = again
        while len(rest) < 12:
            for p in window:
                remote.send(PubAck(p.packet_id or 0))
            window = remote.publishes(min(len(window), 12 - len(rest)))
            rest.extend(window)
        for p in window:
            remote.send(PubAck(p.packet_id or 0))
        remote.silent()
        assert [int(p.payload) for p in rest] == list(range(8, 20))
        assert not any(p.dup for p in rest)
    finally:
        remote.close()


def test_keepalive_pings_and_a_silent_remote_is_dropped(make_broker: MakeBroker) -> None:
    """The bridge sends PINGREQ within Keep Alive (5.0 [MQTT-3.1.2-20]) and closes a remote
    that answers nothing for 1.5 × Keep Alive, then connects again."""
    remote = ScriptedRemote()
    try:
        gw = make_broker(config_with_bridges(bridge_yaml(
            "cloud", remote.port, ['{pattern: "m/#", direction: out, qos: 1}'],
            extra="    keepalive: 1s\n")))
        assert remote.accept(session_present=False).keepalive == 1
        started = time.monotonic()
        assert isinstance(remote.recv(timeout=3), PingReq)  # not answered
        assert time.monotonic() - started <= 1.3  # within Keep Alive (+ timer slack)
        remote.accept(session_present=False)  # the bridge gave up on the silent link
        assert 1.5 <= time.monotonic() - started <= 5.0
        wait_for_log(gw, "bridge 'cloud': connection lost: no packet from the remote")
    finally:
        remote.close()


def test_remote_maximum_qos_is_respected(make_broker: MakeBroker) -> None:
    """A remote with Maximum QoS 1 (MQTT 5.0 §3.2.2.3.4, e.g. AWS IoT Core) gets QoS 2
    messages at QoS 1 [MQTT-3.2.2-11]; its PUBACK completes them and the window moves."""
    remote = ScriptedRemote()
    try:
        gw = make_broker(config_with_bridges(bridge_yaml(
            "cloud", remote.port, ['{pattern: "m/#", direction: out, qos: 2}'],
            extra="    max_inflight: 1\n")))
        remote.server.settimeout(10)
        remote.conn, _ = remote.server.accept()
        assert isinstance(remote.recv(), Connect)
        remote.send(ConnAck(False, 0, Properties(maximum_qos=1)))
        wait_for_log(gw, "bridge 'cloud': connected to")
        with RawClient(gw.host, gw.port, version=5) as c:
            c.connect("pub")
            for i in range(3):
                c.publish("m/x", str(i).encode(), qos=2)
        for i in range(3):
            (p,) = remote.publishes(1)
            assert (int(p.payload), p.qos) == (i, 1)
            remote.silent(0.3)  # max_inflight 1: the next waits for this PUBACK
            remote.send(PubAck(p.packet_id or 0))
        remote.silent(0.3)
    finally:
        remote.close()


def test_a_remote_that_never_subacks_is_abandoned_and_a_changed_bridge_disconnects(
        make_broker: MakeBroker) -> None:
    """No SUBACK within connect_timeout: that connection is closed before the next
    attempt (none lingers); SIGHUP changing the bridge closes its old connection with
    DISCONNECT (MQTT 5.0 §3.14: normal disconnection)."""
    remote = ScriptedRemote()
    try:
        rules = ['{pattern: "c/#", direction: in, qos: 1}']
        gw = make_broker(config_with_bridges(bridge_yaml(
            "cloud", remote.port, rules, extra="    connect_timeout: 1s\n")))
        remote.accept(session_present=False)
        assert isinstance(remote.recv(), Subscribe)  # never answered
        first = remote.conn
        remote.accept(session_present=False)  # the next attempt
        assert first is not None
        first.settimeout(2)
        assert first.recv(1) == b""  # the abandoned connection was closed
        sub = remote.recv()
        assert isinstance(sub, Subscribe)
        remote.send(SubAck(sub.packet_id, [1]))
        wait_for_log(gw, "bridge 'cloud': connected to")
        gw.config_path.write_text(config_with_bridges(bridge_yaml(
            "cloud", remote.port, rules, extra="    connect_timeout: 2s\n")))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        assert isinstance(remote.recv(), Disconnect)
    finally:
        remote.close()


def test_kill9_with_messages_in_flight_resends_them_after_restart(
        make_broker: MakeBroker) -> None:
    """SIGKILL while messages are sent and not yet acknowledged by the remote: after the
    restart they go again (DUP=1, same packet ids) before the queue [MQTT-4.4.0-1]."""
    remote = ScriptedRemote()
    try:
        gw = make_broker(config_with_bridges(bridge_yaml(
            "cloud", remote.port, ['{pattern: "m/#", direction: out, qos: 1}'],
            extra="    max_inflight: 3\n"), storage="rocksdb"))
        remote.accept(session_present=False)
        wait_for_log(gw, "bridge 'cloud': connected to")
        with RawClient(gw.host, gw.port, version=5) as c:
            c.connect("pub")
            for i in range(6):
                c.publish("m/x", str(i).encode(), qos=1)
        first = remote.publishes(3)
        gw.kill()
        remote.drop()
        gw.start()
        remote.accept(session_present=True)
        again = remote.publishes(3)
        assert [(int(p.payload), p.dup, p.packet_id) for p in again] == [
            (int(p.payload), True, p.packet_id) for p in first]
        for p in again:
            remote.send(PubAck(p.packet_id or 0))
        rest = remote.publishes(3)
        assert [int(p.payload) for p in rest] == [3, 4, 5]
    finally:
        remote.close()


def test_remote_maximum_packet_size_is_respected(make_broker: MakeBroker) -> None:
    """A message larger than the remote's Maximum Packet Size (MQTT 5.0 CONNACK) is not
    sent (the rule of [MQTT-3.1.2-24]); it is logged and the window moves on."""
    remote = ScriptedRemote()
    try:
        gw = make_broker(config_with_bridges(bridge_yaml(
            "cloud", remote.port, ['{pattern: "m/#", direction: out, qos: 1}'],
            extra="    max_inflight: 1\n")))
        remote.server.settimeout(10)
        remote.conn, _ = remote.server.accept()
        connect = remote.recv()
        assert isinstance(connect, Connect)
        assert connect.properties.maximum_packet_size  # ours, told to the remote
        remote.send(ConnAck(False, 0, Properties(maximum_packet_size=100)))
        wait_for_log(gw, "bridge 'cloud': connected to")
        with RawClient(gw.host, gw.port, version=5) as c:
            c.connect("pub")
            c.publish("m/x", b"small-1", qos=1)
            c.publish("m/x", b"x" * 200, qos=1)
            c.publish("m/x", b"small-2", qos=1)
        for expected in (b"small-1", b"small-2"):
            (p,) = remote.publishes(1)
            assert p.payload == expected
            remote.send(PubAck(p.packet_id or 0))
        remote.silent(0.3)
        wait_for_log(gw, "larger than the remote's Maximum Packet Size 100: dropped")
    finally:
        remote.close()
