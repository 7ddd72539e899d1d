"""The engine driven without sockets, with a fake clock (issue 13).

Each test builds an :class:`~iotbroker.engine.engine.Engine` on a memory store, feeds
it CONNECT/PUBLISH/... bytes through the protocol state machine of plain
:class:`~iotbroker.engine.client.Client` objects, and reads back the bytes the
engine queued for each client and the effects it recorded (connections to close,
storage changes, the next deadline). Nothing awaits and nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from iotbroker.auth.acl import Acl
from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    Properties,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    Will,
)
from iotbroker.config import parse_config
from iotbroker.core.session import ReceiveCheck, Session
from iotbroker.engine.client import Client
from iotbroker.engine.connect import accept, admit
from iotbroker.engine.engine import Engine
from iotbroker.errors import MqttError
from iotbroker.metrics import Metrics
from iotbroker.protocol.connection import Connection
from iotbroker.storage.memory import MemoryStore


class AclAuthorization:
    """The engine's Authorization over an ACL text (None: everything allowed)."""

    def __init__(self, acl_text: str | None = None) -> None:
        self.acl = None if acl_text is None else Acl.from_text(acl_text)

    def may_publish(self, client_id: str, username: str | None, topic: str) -> bool:
        return self.acl is None or self.acl.can_publish(client_id, username, topic)

    def publish_check(self) -> Callable[[str, str | None, str], bool] | None:
        return None if self.acl is None else self.may_publish

    def may_subscribe(self, session: Session, topic_filter: str) -> bool:
        return self.acl is None or self.acl.can_subscribe(
            session.client_id, session.username, topic_filter)

    def receive_check(self) -> ReceiveCheck | None:
        acl = self.acl
        if acl is None:
            return None
        return lambda session, topic: acl.can_receive(session.client_id, session.username,
                                                      topic)


@dataclass
class World:
    """An engine, a fake clock and helpers to speak MQTT to it through clients."""

    engine: Engine
    now: float = 1_000.0
    framers: dict[int, Framer] = field(default_factory=dict)
    #: Packets read off a client's output and not yet looked at by the test.
    unread: dict[int, list[Packet]] = field(default_factory=dict)

    @classmethod
    def make(cls, acl: str | None = None, **mqtt: object) -> World:
        config = parse_config({"storage": {"backend": "memory"}, "mqtt": dict(mqtt)}, "test")
        engine = Engine(config, MemoryStore(), AclAuthorization(acl), Metrics())
        return cls(engine)

    def client(self) -> Client:
        cfg = self.engine.config.mqtt
        conn = Connection(max_packet_size=cfg.max_packet_size,
                          receive_maximum=cfg.receive_maximum,
                          topic_alias_maximum=cfg.topic_alias_maximum, now=self.now)
        return Client(conn)

    def connect(self, client_id: str, version: int = 5, username: str | None = None,
                **kwargs: object) -> tuple[Client, ConnAck]:
        client = self.client()
        packet = Connect(client_id=client_id, protocol_version=version, username=username,
                         **kwargs)  # type: ignore[arg-type]
        (decoded,) = client.conn.receive_data(encode_packet(packet, version), self.now)
        assert isinstance(decoded, Connect)
        admitted = admit(self.engine, client, decoded)
        assert admitted is not None
        accept(self.engine, client, decoded, admitted, username, self.now)
        ack, *rest = self.received(client)
        assert isinstance(ack, ConnAck)
        self.unread[id(client)] = rest  # what followed the CONNACK (a resumed session's)
        return client, ack

    def send(self, client: Client, packet: Packet) -> None:
        data = encode_packet(packet, client.conn.protocol_version)
        for decoded in client.conn.receive_data(data, self.now):
            self.engine.handle(client, decoded, self.now)
        if client.conn.failure is not None:  # as the server does: after the packets
            self.engine.fail(client, client.conn.failure)

    def received(self, client: Client) -> list[Packet]:
        self.engine.send_ready(self.now)  # as the server's flush does, before it writes
        framer = self.framers.setdefault(id(client), Framer(1 << 24))
        data = client.conn.data_to_send()
        unread = self.unread.pop(id(client), [])
        return unread + [decode_packet(first, body, client.conn.protocol_version)
                         for first, body in framer.feed(data)]

    def drop(self, client: Client) -> None:
        """The network connection is gone without DISCONNECT."""
        self.engine.connection_closed(client, "connection reset", self.now)


def test_qos1_publish_reaches_subscriber_and_is_acknowledged() -> None:
    """[MQTT-4.3.2-2] PUBACK to the publisher; [MQTT-3.3.4-1] the subscriber gets it."""
    world = World.make()
    sub, _ = world.connect("sub")
    world.send(sub, Subscribe(1, [Subscription("a/+", 1)]))
    assert world.received(sub) == [SubAck(1, [1])]
    pub, _ = world.connect("pub")
    world.send(pub, Publish("a/b", b"hello", 1, False, False, 7))
    (ack,) = world.received(pub)
    assert isinstance(ack, PubAck) and ack.packet_id == 7 and ack.reason_code == 0
    (got,) = world.received(sub)
    assert isinstance(got, Publish) and (got.topic, got.payload, got.qos) == ("a/b", b"hello", 1)


def test_mqtt5_puback_says_no_matching_subscribers() -> None:
    """MQTT 5.0 §3.4.2.1: 0x10 No matching subscribers, as a return value of routing."""
    world = World.make()
    pub, _ = world.connect("pub")
    world.send(pub, Publish("nobody/here", b"x", 1, False, False, 3))
    (ack,) = world.received(pub)
    assert isinstance(ack, PubAck) and ack.reason_code == 0x10


def test_takeover_is_an_effect_disconnect_0x8e_and_close() -> None:
    """[MQTT-3.1.4-3]: the old connection gets DISCONNECT 0x8E and is closed."""
    world = World.make()
    old, _ = world.connect("dev")
    new, ack = world.connect("dev")
    assert ack.reason_code == 0
    (bye,) = world.received(old)
    assert isinstance(bye, Disconnect) and bye.reason_code == 0x8E
    assert old.close_requested and old in world.engine.take_closing()
    assert world.engine.clients["dev"] is new


def test_will_published_on_loss_and_refused_by_acl_when_it_fires() -> None:
    """The will goes out when the connection is lost [MQTT-3.1.2-8]; the ACL is asked
    again at that time (issue 12)."""
    acl = "user w\ntopic write wills/#\ntopic read wills/#\n"
    world = World.make(acl=acl)
    watcher, _ = world.connect("watcher", username="w")
    world.send(watcher, Subscribe(1, [Subscription("wills/#", 1)]))
    world.received(watcher)
    owner, _ = world.connect("owner", username="w", will=Will("wills/owner", b"gone", 1))
    world.drop(owner)
    (got,) = world.received(watcher)
    assert isinstance(got, Publish) and got.payload == b"gone"

    second, _ = world.connect("second", username="w", will=Will("wills/second", b"x", 1))
    world.engine.auth = AclAuthorization("user w\ntopic read wills/#\n")  # reloaded
    world.engine.auth_changed()
    world.drop(second)
    assert world.received(watcher) == []
    assert world.engine.metrics.wills_denied == 1


def test_persistent_session_expires_on_the_fake_clock() -> None:
    """[MQTT-3.1.2-23]: the session ends Session Expiry Interval after the close; the
    engine reports that deadline and ends it when the server runs the timers then."""
    world = World.make()
    client, _ = world.connect("p", properties=Properties(session_expiry_interval=30))
    world.send(client, Subscribe(1, [Subscription("t", 1)]))
    world.drop(client)
    assert world.engine.next_deadline() == world.now + 30
    world.engine.run_timers(world.now + 29)
    assert "p" in world.engine.registry.sessions
    world.engine.run_timers(world.now + 30)
    assert "p" not in world.engine.registry.sessions
    assert len(world.engine.trie) == 0


def test_queued_message_delivered_on_resume_and_stored_before_acked() -> None:
    """Offline QoS 1 messages are queued in the session [MQTT-3.1.2-5] and the change
    is in the storage batch the server commits before writing the PUBACK."""
    world = World.make()
    sub, _ = world.connect("sub", properties=Properties(session_expiry_interval=300),
                           clean_start=False)
    world.send(sub, Subscribe(1, [Subscription("q", 1)]))
    world.drop(sub)
    world.engine.commit()
    pub, _ = world.connect("pub")
    world.send(pub, Publish("q", b"later", 1, False, False, 1))
    assert world.engine.batch, "the queued message is a storage change of this turn"
    world.engine.commit()
    sub, ack = world.connect("sub", properties=Properties(session_expiry_interval=300),
                             clean_start=False)
    assert ack.session_present
    (got,) = world.received(sub)
    assert isinstance(got, Publish) and got.payload == b"later"


def test_peer_violation_becomes_reason_code_and_close() -> None:
    """A client must not send a Subscription Identifier [MQTT-3.3.4-6]: the protocol
    layer records it as the connection's failure (a value, not an exception), the engine
    turns it into DISCONNECT 0x82 and a close."""
    world = World.make()
    client, _ = world.connect("bad")
    data = encode_packet(Publish("t", b"", 0, False, False, None,
                                 Properties(subscription_identifiers=(3,))), 5)
    assert client.conn.receive_data(data, world.now) == []
    violation = client.conn.failure
    assert isinstance(violation, MqttError) and violation.spec_ref == "MQTT-3.3.4-6"
    world.engine.fail(client, violation)
    (bye,) = world.received(client)
    assert isinstance(bye, Disconnect) and bye.reason_code == 0x82
    assert client.close_requested


def test_publish_byte_counters_count_payloads_in_and_out_and_not_refused_ones() -> None:
    """$SYS publish/bytes/received and /sent (mosquitto's meaning): payload bytes of
    the PUBLISH packets received and sent; one the client's Maximum Packet Size
    [MQTT-3.1.2-25] kept from being sent is not counted as sent."""
    world = World.make()
    metrics = world.engine.metrics
    small, _ = world.connect("small", properties=Properties(maximum_packet_size=64))
    world.send(small, Subscribe(1, [Subscription("t/#", 1)]))
    big, _ = world.connect("big")
    world.send(big, Subscribe(1, [Subscription("t/#", 0)]))
    world.received(small), world.received(big)
    pub, _ = world.connect("pub")
    world.send(pub, Publish("t/a", b"x" * 10, 1, False, False, 1))
    world.send(pub, Publish("t/b", b"y" * 100, 0, False, False, None))
    world.received(pub), world.received(small), world.received(big)
    assert metrics.publish_bytes_received == 110
    # "small" gets the 10-byte one only (the 100-byte one is over its 64-byte limit);
    # "big" gets both.
    assert metrics.publish_bytes_sent == 10 + 10 + 100


def test_wait_before_accept_asks_the_room_hook_with_client_id_and_clean_start() -> None:
    """The engine's connect gate before acceptance (engine/connect.py): None without a
    hook (accept now); with one, the hook's answer for (client id, Clean Start) — the
    cluster makes a Clean Start 0 CONNECT wait until its session is here, so that
    Session Present is true cluster-wide [MQTT-3.2.2-2]."""
    from iotbroker.engine.connect import wait_before_accept  # noqa: PLC0415

    world = World.make()
    client = world.client()
    packet = Connect(client_id="dev", protocol_version=5, clean_start=False)
    admitted = admit(world.engine, client, packet)
    assert admitted is not None
    assert wait_before_accept(world.engine, admitted, packet) is None
    asked: list[tuple[str, bool]] = []
    sentinel = object()

    def hook(client_id: str, clean_start: bool) -> object:
        asked.append((client_id, clean_start))
        return sentinel if not clean_start else None

    world.engine.accept_wait = hook  # type: ignore[assignment]
    assert wait_before_accept(world.engine, admitted, packet) is sentinel
    clean = Connect(client_id="dev", protocol_version=5, clean_start=True)
    assert wait_before_accept(world.engine, admitted, clean) is None
    assert asked == [("dev", False), ("dev", True)]
