"""The engine's side of QoS 2 exactly once in a cluster (docs/cluster.md, "QoS 2
exactly once"; issue 14), driven without sockets as in ``test_engine.py``.

With the cluster hooks set (``held_acks``, ``qos2_write_id``) an inbound QoS 2 id is
*pending* until the cluster room releases its ack: stored with the stream write's id,
a PUBLISH with that id again is not routed and gets no PUBREC until then
(MQTT 5.0 [MQTT-4.3.3-8]: PUBREC once the receiver owns the message;
[MQTT-4.3.3-10]: until PUBREL, the same id is acknowledged with PUBREC and not
delivered onward again; MQTT 3.1.1 [MQTT-4.3.3-2]); after a restart the pending id
comes back from the store with its write id.
"""

from __future__ import annotations

import itertools

from iotbroker.codec.packets import (
    Properties,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
)
from iotbroker.engine.engine import Engine, HeldAck
from iotbroker.metrics import Metrics
from iotbroker.storage.base import Op
from tests.engine.test_engine import AclAuthorization, World

PERSISTENT = Properties(session_expiry_interval=3600)


def _clustered(engine: Engine) -> itertools.count[int]:
    """The hooks the cluster room sets (qos_stream.py), with write ids w1, w2, ..."""
    counter = itertools.count(1)
    engine.forwarding = []
    engine.held_acks = []
    engine.qos2_write_id = lambda: f"w{next(counter)}"
    return counter


def _publish(pid: int, dup: bool = False) -> Publish:
    return Publish("t/x", b"once", 2, False, dup, pid)


def test_mqtt_4_3_3_10_resend_while_the_stream_write_is_pending_waits_for_its_ack() -> None:
    world = World.make()
    engine = world.engine
    _clustered(engine)
    sub, _ = world.connect("sub", clean_start=False, properties=PERSISTENT)
    world.send(sub, Subscribe(1, [Subscription("t/#", 2)]))
    assert world.received(sub) == [SubAck(1, [2])]
    pub, _ = world.connect("pub", clean_start=False, properties=PERSISTENT)

    world.send(pub, _publish(5))
    assert world.received(pub) == []  # no PUBREC before the stream has it
    (got,) = world.received(sub)  # local subscribers have it at once
    assert isinstance(got, Publish) and got.payload == b"once"
    (first,) = engine.take_held_acks()
    assert (first.packet_id, first.write_id, first.resend) == (5, "w1", False)
    pending = [c for c in engine.batch if c[0] == Op.PUT_INBOUND_PENDING]
    assert pending == [(Op.PUT_INBOUND_PENDING, "pub", (5, "w1"))]
    engine.commit()
    assert engine.store.load().inbound_pending == {"pub": {5: "w1"}}

    world.send(pub, _publish(5, dup=True))  # resent while the write is pending
    assert world.received(pub) == []
    assert world.received(sub) == []  # not routed again
    (again,) = engine.take_held_acks()
    assert (again.packet_id, again.write_id, again.resend) == (5, "w1", True)
    assert again.message.payload == b"once"

    # the stream acknowledged the write: a PUBREC for each PUBLISH, the id held
    assert engine.release_ack(first) and engine.release_ack(again)
    assert world.received(pub) == [PubRec(5), PubRec(5)]
    assert [c for c in engine.batch if c[0] == Op.PUT_INBOUND_QOS2] == [
        (Op.PUT_INBOUND_QOS2, "pub", 5)]
    engine.commit()
    snap = engine.store.load()
    assert snap.inbound_pending == {} and snap.inbound_qos2 == {"pub": {5}}

    world.send(pub, _publish(5, dup=True))  # held now: PUBREC at once, not routed
    assert world.received(pub) == [PubRec(5)]
    assert engine.take_held_acks() == [] and world.received(sub) == []
    world.send(pub, PubRel(5))
    assert world.received(pub) == [PubComp(5)]


def test_a_pending_id_comes_back_after_a_restart_and_the_resend_is_written_again() -> None:
    """kill -9 before the stream's ack: the restarted node finds the id pending with
    its write id; the client's resend is handed to the cluster room under that id (to
    be written again, JetStream drops a duplicate), not routed to local subscribers
    again, and gets no PUBREC before the room releases it."""
    world = World.make()
    store = world.engine.store
    _clustered(world.engine)
    sub, _ = world.connect("sub", clean_start=False, properties=PERSISTENT)
    world.send(sub, Subscribe(1, [Subscription("t/#", 2)]))
    world.received(sub)
    pub, _ = world.connect("pub", clean_start=False, properties=PERSISTENT)
    world.send(pub, _publish(9))
    world.engine.commit()  # the turn's commit; then the crash, before the stream ack

    restarted = Engine(world.engine.config, store, AclAuthorization(), Metrics())
    restarted.restore(world.now)
    assert restarted.qos2_unreplicated == {("pub", 9): "w1"}
    after = World(restarted, now=world.now)
    counter = _clustered(restarted)
    next(counter)  # a new process: ids of its own
    sub2, _ = after.connect("sub", clean_start=False, properties=PERSISTENT)
    (queued,) = after.received(sub2)  # the local copy, stored before the crash
    assert isinstance(queued, Publish) and queued.payload == b"once"
    after.send(sub2, PubRec(queued.packet_id or 0))
    after.received(sub2)
    pub2, ack = after.connect("pub", clean_start=False, properties=PERSISTENT)
    assert ack.session_present
    after.send(pub2, _publish(9, dup=True))
    assert after.received(pub2) == []
    assert after.received(sub2) == []
    (held,) = restarted.take_held_acks()
    assert isinstance(held, HeldAck)
    assert (held.write_id, held.resend, held.message.payload) == ("w1", True, b"once")
    assert restarted.release_ack(held)
    assert after.received(pub2) == [PubRec(9)]


def test_without_a_cluster_a_stored_pending_id_is_a_held_one() -> None:
    """A node restarted without its cluster section: nothing waits for a stream, the
    duplicate is acknowledged at once [MQTT-4.3.3-10] (the behaviour of one broker)."""
    world = World.make()
    store = world.engine.store
    _clustered(world.engine)
    pub, _ = world.connect("pub", clean_start=False, properties=PERSISTENT)
    world.send(pub, _publish(3))
    world.engine.commit()
    alone = Engine(world.engine.config, store, AclAuthorization(), Metrics())
    alone.restore(world.now)
    after = World(alone, now=world.now)
    pub2, _ = after.connect("pub", clean_start=False, properties=PERSISTENT)
    after.send(pub2, _publish(3, dup=True))
    assert after.received(pub2) == [PubRec(3)]
