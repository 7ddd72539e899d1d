"""kill -9 the broker (RocksDB storage) and check that nothing acknowledged is lost.

Persistent QoS 1 and QoS 2 subscribers connect, subscribe and leave. A publisher
sends numbered messages and records each one whose PUBACK (QoS 1) or PUBCOMP (QoS 2)
it received. The broker is SIGKILLed at a random moment while the publisher is
sending, restarted on the same data directory, and the subscribers come back:

* every acknowledged QoS 1 message arrives at least once, and QoS 2 exactly once;
* per publisher, first arrivals are in publish order [MQTT-4.6.0-2], [MQTT-4.6.0-3];
* subscriptions and retained messages are there after the restart;
* a message that was in flight to a subscriber when the broker died is re-sent with
  DUP=1 [MQTT-4.4.0-1].

Runs with both durability settings (``os``: WAL written, ``fsync``: WAL synced).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest

from iotbroker.codec.packets import Properties, PubAck, PubComp, Publish, PubRec, PubRel
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import Closed, RawClient

DURABILITY = pytest.mark.parametrize("durability", ["os", "fsync"])
V5_EXPIRY = Properties(session_expiry_interval=3600)


#: Room for every message a test publishes (at most 50,000) in an offline session's
#: queue: the default bound (10,000, drop-new) would drop acknowledged messages by
#: design once a fast run gets past it, and these tests are about the crash.
QUEUE_ROOM = "mqtt:\n  max_queued_messages: 60000\n"


def _rocks(make_broker: Callable[..., BrokerProcess], durability: str) -> BrokerProcess:
    return make_broker(broker_config(storage="rocksdb", durability=durability,
                                     extra=QUEUE_ROOM))


def _connect_subscribers(broker: BrokerProcess) -> tuple[RawClient, RawClient]:
    q1 = RawClient(broker.host, broker.port, version=4)
    assert q1.connect("crash-sub-q1", clean_start=False).reason_code == 0
    q2 = RawClient(broker.host, broker.port, version=5)
    assert q2.connect("crash-sub-q2", clean_start=False, properties=V5_EXPIRY).reason_code == 0
    return q1, q2


def _publish_until_killed(
    broker: BrokerProcess, count: int, kill_after: float
) -> tuple[list[int], list[int]]:
    """Publish ``count`` QoS 1 and QoS 2 messages alternately; SIGKILL the broker after
    ``kill_after`` seconds. Returns the sequence numbers acknowledged per QoS."""
    acked1: list[int] = []
    acked2: list[int] = []
    pub = RawClient(broker.host, broker.port, version=4, timeout=5.0)
    pub.connect("crash-pub", clean_start=True)
    killer = threading.Timer(kill_after, broker.kill)
    killer.start()
    try:
        for seq in range(count):
            payload = f"{seq:06d}".encode()
            pid = seq % 60000 + 1
            try:
                pub.send(Publish("crash/q1", payload, 1, False, False, pid))
                ack = pub.expect(PubAck)
                assert ack.packet_id == pid
                acked1.append(seq)
                pub.send(Publish("crash/q2", payload, 2, False, False, pid))
                rec = pub.expect(PubRec)
                assert rec.packet_id == pid
                pub.send(PubRel(pid))
                comp = pub.expect(PubComp)
                assert comp.packet_id == pid
                acked2.append(seq)
            except (Closed, OSError, TimeoutError):
                break
    finally:
        killer.join()
        pub.close()
    return acked1, acked2


def _drain(client: RawClient, quiet: float = 1.0) -> list[Publish]:
    """Receive (and acknowledge) everything until the broker is quiet."""
    got: list[Publish] = []
    while True:
        try:
            packet = client.recv(timeout=quiet)
        except TimeoutError:
            return got
        if isinstance(packet, Publish):
            got.append(packet)
            if packet.qos == 1:
                client.send(PubAck(packet.packet_id or 0))
            elif packet.qos == 2:
                client.send(PubRec(packet.packet_id or 0))
        elif isinstance(packet, PubRel):
            client.send(PubComp(packet.packet_id))


def _first_arrivals_in_order(seqs: list[int]) -> bool:
    seen: set[int] = set()
    firsts: list[int] = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            firsts.append(s)
    return firsts == sorted(firsts)


@DURABILITY
@pytest.mark.parametrize("round_", range(3))
def test_acknowledged_messages_survive_kill_9(
    make_broker: Callable[..., BrokerProcess], durability: str, round_: int
) -> None:
    broker = _rocks(make_broker, durability)
    q1, q2 = _connect_subscribers(broker)
    assert q1.subscribe("crash/q1", 1).reason_codes == [1]
    assert q2.subscribe("crash/q2", 2).reason_codes == [2]
    q1.close()
    q2.close()
    # A retained message and a subscription made before the crash must come back too.
    setup = RawClient(broker.host, broker.port)
    setup.connect("crash-setup")
    setup.publish("crash/retained", b"kept", 1, retain=True)
    setup.disconnect()

    rng = random.Random(1000 + round_)
    acked1, acked2 = _publish_until_killed(broker, 50_000, kill_after=rng.uniform(0.2, 1.2))
    assert not broker.alive
    assert acked1, "the broker died before anything was acknowledged; nothing was tested"
    assert len(acked2) < 50_000, "the publisher finished before the kill; not mid-stream"

    broker.start()
    q1, q2 = _connect_subscribers(broker)
    got1 = [int(p.payload) for p in _drain(q1)]
    got2 = [int(p.payload) for p in _drain(q2)]
    missing1 = sorted(set(acked1) - set(got1))
    missing2 = sorted(set(acked2) - set(got2))
    assert not missing1, f"QoS 1 acknowledged but lost: {missing1[:20]} (of {len(acked1)})"
    assert not missing2, f"QoS 2 acknowledged but lost: {missing2[:20]} (of {len(acked2)})"
    assert len(got2) == len(set(got2)), "QoS 2 delivered more than once"
    assert _first_arrivals_in_order(got1)
    assert _first_arrivals_in_order(got2)

    # Subscriptions survived: a new message still reaches both subscribers.
    pub = RawClient(broker.host, broker.port)
    pub.connect("crash-pub-after")
    pub.publish("crash/q1", b"999999", 1)
    pub.publish("crash/q2", b"999999", 2)
    assert q1.receive_publish().payload == b"999999"
    assert q2.receive_publish().payload == b"999999"
    # The retained message survived.
    check = RawClient(broker.host, broker.port)
    check.connect("crash-check")
    check.subscribe("crash/retained", 1)
    retained = check.receive_publish()
    assert (retained.payload, retained.retain) == (b"kept", True)
    for c in (q1, q2, pub, check):
        c.close()


@DURABILITY
def test_mqtt_4_4_0_1_in_flight_messages_resent_with_dup_after_kill_9(
    make_broker: Callable[..., BrokerProcess], durability: str
) -> None:
    """[MQTT-4.4.0-1]: unacknowledged PUBLISH packets are re-sent with DUP=1 when the
    session resumes -- also when the broker was killed in between."""
    broker = _rocks(make_broker, durability)
    sub = RawClient(broker.host, broker.port, version=5)
    sub.connect("inflight-sub", clean_start=False, properties=V5_EXPIRY)
    sub.subscribe("inflight/#", 2)
    pub = RawClient(broker.host, broker.port)
    pub.connect("inflight-pub")
    for i in range(5):
        pub.publish(f"inflight/{i % 2}", f"m{i}".encode(), 1 + i % 2)
    first = [sub.expect(Publish) for _ in range(5)]  # received, never acknowledged
    assert [p.dup for p in first] == [False] * 5
    time.sleep(0.3)  # let the broker commit the in-flight state (it acked the publisher)
    broker.kill()
    sub.close()
    pub.close()

    broker.start()
    sub = RawClient(broker.host, broker.port, version=5)
    ack = sub.connect("inflight-sub", clean_start=False, properties=V5_EXPIRY)
    assert ack.session_present is True
    again = [sub.expect(Publish) for _ in range(5)]
    assert [p.payload for p in again] == [p.payload for p in first]
    assert [p.packet_id for p in again] == [p.packet_id for p in first]
    assert all(p.dup for p in again)
    sub.nothing(0.5)
    sub.close()


@DURABILITY
def test_mqtt_4_3_2_3_puback_alone_is_committed_no_resend_after_kill_9(
    make_broker: Callable[..., BrokerProcess], durability: str
) -> None:
    """A subscriber's PUBACK completes a persistent QoS 1 delivery [MQTT-4.3.2-3]: the
    broker commits that in the same loop turn even though it sends nothing back, so a
    kill -9 afterwards does not bring the message back as a DUP re-send."""
    broker = _rocks(make_broker, durability)
    sub = RawClient(broker.host, broker.port, version=5)
    sub.connect("acked-sub", clean_start=False, properties=V5_EXPIRY)
    sub.subscribe("acked/#", 1)
    pub = RawClient(broker.host, broker.port)
    pub.connect("acked-pub")
    pub.publish("acked/x", b"once", 1)
    got = sub.receive_publish(timeout=3.0)  # acknowledged (PUBACK) by receive_publish
    assert got.payload == b"once"
    time.sleep(0.3)  # the broker reads the PUBACK; nothing else happens after it
    broker.kill()
    sub.close()
    pub.close()

    broker.start()
    sub = RawClient(broker.host, broker.port, version=5)
    ack = sub.connect("acked-sub", clean_start=False, properties=V5_EXPIRY)
    assert ack.session_present is True
    sub.nothing(0.5)
    sub.close()


@DURABILITY
def test_inbound_qos2_id_survives_kill_9(
    make_broker: Callable[..., BrokerProcess], durability: str
) -> None:
    """[MQTT-4.3.3-2] across a crash: a QoS 2 PUBLISH whose PUBREC was sent is not
    routed again when the publisher re-sends it (DUP=1) to the restarted broker."""
    broker = _rocks(make_broker, durability)
    sub = RawClient(broker.host, broker.port)
    sub.connect("q2in-sub", clean_start=False)
    sub.subscribe("q2in/t", 2)
    sub.close()
    pub = RawClient(broker.host, broker.port)
    pub.connect("q2in-pub", clean_start=False)
    pub.send(Publish("q2in/t", b"once", 2, False, False, 7))
    assert pub.expect(PubRec).packet_id == 7
    broker.kill()
    pub.close()

    broker.start()
    pub = RawClient(broker.host, broker.port)
    assert pub.connect("q2in-pub", clean_start=False).session_present is True
    pub.send(Publish("q2in/t", b"once", 2, False, True, 7))
    assert pub.expect(PubRec).packet_id == 7
    pub.send(PubRel(7))
    assert pub.expect(PubComp).packet_id == 7
    sub = RawClient(broker.host, broker.port)
    sub.connect("q2in-sub", clean_start=False)
    got = _drain(sub, quiet=0.7)
    assert [p.payload for p in got] == [b"once"]
    sub.close()
    pub.close()


def test_shared_subscription_survives_kill_9(make_broker: Callable[..., BrokerProcess]) -> None:
    """A persistent session's shared subscription comes back as a shared one (the store
    keeps the filter; restore reads the ShareName again): one copy per message to the
    group, and matched on the filter without the ``$share/{group}/`` prefix."""
    broker = _rocks(make_broker, "os")
    members = []
    for n in (1, 2):
        c = RawClient(broker.host, broker.port, version=5)
        assert c.connect(f"crash-share-{n}", clean_start=False,
                         properties=V5_EXPIRY).reason_code == 0
        assert c.subscribe("$share/g/crash/shared", 1).reason_codes == [1]
        members.append(c)
    for c in members:
        c.close()
    broker.kill()
    assert not broker.alive

    broker.start()
    members = []
    for n in (1, 2):
        c = RawClient(broker.host, broker.port, version=5)
        ack = c.connect(f"crash-share-{n}", clean_start=False, properties=V5_EXPIRY)
        assert ack.reason_code == 0 and ack.session_present
        members.append(c)
    pub = RawClient(broker.host, broker.port)
    pub.connect("crash-share-pub")
    for i in range(4):
        pub.publish("crash/shared", f"{i}".encode(), 1)
    got = sorted(int(p.payload) for c in members for p in _drain(c))
    assert got == [0, 1, 2, 3]
    for c in (*members, pub):
        c.close()


def test_group_commit_acks_of_concurrent_publishers_survive_kill_9(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """``durability: fsync`` with group commit (issue 19): several publishers share
    each sync, their PUBACKs wait for it. Every acknowledged message of every
    publisher is there after kill -9, in each publisher's order [MQTT-4.6.0-2]."""
    broker = _rocks(make_broker, "fsync")
    sub = RawClient(broker.host, broker.port, version=4)
    assert sub.connect("crash-sub-group", clean_start=False).reason_code == 0
    assert sub.subscribe("crash/group/+", 1).reason_codes == [1]
    sub.close()
    publishers = 4
    acked: list[list[int]] = [[] for _ in range(publishers)]

    def publish(n: int) -> None:
        pub = RawClient(broker.host, broker.port, version=4, timeout=5.0)
        pub.connect(f"crash-group-pub-{n}", clean_start=True)
        try:
            for seq in range(20_000):
                pid = seq % 60000 + 1
                pub.send(Publish(f"crash/group/{n}", f"{n}:{seq:06d}".encode(), 1, False,
                                 False, pid))
                assert pub.expect(PubAck).packet_id == pid
                acked[n].append(seq)
        except (Closed, OSError, TimeoutError):
            pass
        finally:
            pub.close()

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(publishers)]
    killer = threading.Timer(random.Random(7).uniform(0.4, 1.0), broker.kill)
    killer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    killer.join()
    assert not broker.alive
    assert all(acked), "a publisher got no acknowledgement; nothing was tested"

    broker.start()
    sub = RawClient(broker.host, broker.port, version=4)
    assert sub.connect("crash-sub-group", clean_start=False).reason_code == 0
    got: list[list[int]] = [[] for _ in range(publishers)]
    for p in _drain(sub):
        n, seq = p.payload.decode().split(":")
        got[int(n)].append(int(seq))
    sub.close()
    for n in range(publishers):
        missing = sorted(set(acked[n]) - set(got[n]))
        assert not missing, f"publisher {n}: acknowledged but lost {missing[:20]}"
        assert _first_arrivals_in_order(got[n])
