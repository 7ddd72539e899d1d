"""The engine's operator actions (issue 17), driven without sockets on a fake clock:
``kick`` (MQTT 5.0 DISCONNECT 0x98 Administrative action, §3.14.2.1), ``end_session``,
``delete_retained`` and the ``connect_gate`` that refuses a banned CONNECT (MQTT 5.0
CONNACK 0x8A Banned, §3.2.2.2; MQTT 3.1.1 0x05 Not authorized, §3.2.2.3)."""

from __future__ import annotations

from iotbroker.codec.packets import (
    Disconnect,
    Properties,
    Publish,
    Subscribe,
    Subscription,
    Will,
)
from tests.engine.test_engine import World


def test_kick_sends_0x98_and_closes_and_the_will_goes_out() -> None:
    world = World.make()
    watcher, _ = world.connect("watcher")
    world.send(watcher, Subscribe(1, [Subscription("w/#", 0)]))
    world.received(watcher)
    victim, _ = world.connect("victim", will=Will("w/victim", b"gone", 0))
    assert world.engine.kick("victim", reason="maintenance")
    (bye,) = world.received(victim)
    assert isinstance(bye, Disconnect) and bye.reason_code == 0x98
    assert bye.properties.reason_string == "maintenance"
    assert victim in world.engine.take_closing()
    world.drop(victim)  # the server closes it; the engine hears the loss
    (will,) = world.received(watcher)
    assert isinstance(will, Publish) and will.payload == b"gone"
    assert not world.engine.kick("victim")  # gone
    assert not world.engine.kick("never-here")


def test_kick_v311_closes_without_a_packet() -> None:
    world = World.make()
    client, _ = world.connect("old", version=4)
    assert world.engine.kick("old")
    assert world.received(client) == [] and client.close_requested


def test_end_session_of_a_connected_client_ends_it_with_the_connection() -> None:
    world = World.make()
    client, _ = world.connect("p", properties=Properties(session_expiry_interval=600))
    world.send(client, Subscribe(1, [Subscription("t", 1)]))
    world.received(client)
    assert world.engine.end_session("p", world.now)
    world.drop(client)
    assert "p" not in world.engine.registry.sessions and len(world.engine.trie) == 0


def test_end_session_of_an_offline_session_sends_its_delayed_will() -> None:
    """A session's end sends a will still held by its Will Delay (MQTT 5.0 §3.1.3.2.2)."""
    world = World.make()
    watcher, _ = world.connect("watcher")
    world.send(watcher, Subscribe(1, [Subscription("w/#", 0)]))
    world.received(watcher)
    owner, _ = world.connect("owner", properties=Properties(session_expiry_interval=600),
                             will=Will("w/owner", b"late", 0,
                                       properties=Properties(will_delay_interval=300)))
    world.drop(owner)
    assert world.received(watcher) == []  # delayed
    assert world.engine.end_session("owner", world.now)
    assert "owner" not in world.engine.registry.sessions
    (will,) = world.received(watcher)
    assert isinstance(will, Publish) and will.payload == b"late"
    assert not world.engine.end_session("owner", world.now)


def test_delete_retained_is_stored_and_publishes_nothing() -> None:
    world = World.make()
    pub, _ = world.connect("pub")
    world.send(pub, Publish("r/t", b"v", 0, True, False, None))
    world.engine.commit()
    sub, _ = world.connect("sub")
    world.send(sub, Subscribe(1, [Subscription("r/#", 0)]))
    world.received(sub)
    assert world.engine.delete_retained("r/t")
    assert world.engine.batch  # the delete goes to the store with this turn
    assert world.received(sub) == []
    assert world.engine.retained.get("r/t") is None
    assert not world.engine.delete_retained("r/t")


def test_connect_gate_refuses_with_0x8a_and_0x05() -> None:
    world = World.make()
    seen: list[tuple[str, str | None, str]] = []

    def gate(client_id: str, username: str | None, peer: str) -> str | None:
        seen.append((client_id, username, peer))
        return "banned" if client_id.startswith("bad") else None

    world.engine.connect_gate = gate
    _, ack = world.connect("bad-5")
    assert ack.reason_code == 0x8A
    _, ack = world.connect("bad-4", version=4)
    assert ack.reason_code == 0x05
    _, ack = world.connect("good", username="u")
    assert ack.reason_code == 0
    assert ("good", "u", "?") in seen
    assert "bad-5" not in world.engine.clients and "bad-5" not in world.engine.registry.sessions
