"""Resource limits under abuse (issue 7): subscriptions per client, topic depth and
length, retained floods, 65,535 in-flight packet ids, huge declared packets, and the
admission limits of configuration.md (``limits.*``, ``listeners[].max_connections``).

Each test checks that a healthy client is served during and after, and a counter where
the broker exposes one (Prometheus endpoint).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable

from iotbroker.codec import Framer, decode_packet
from iotbroker.codec.packets import (
    ConnAck,
    Connect,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    Will,
)
from iotbroker.codec.primitives import encode_varint
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.conformance import (
    closed_with,
    connected,
    disconnect_reason,
    drain,
)
from tests.helpers.rawclient import RawClient
from tests.robustness.helpers import (
    MiB,
    Reader,
    closed_within,
    config,
    healthy,
    metric,
    peak_rss,
    probe,
    publish_frame,
    raw_connect_bytes,
    read_packets,
    rss,
    sockets,
)

Factory = Callable[..., BrokerProcess]


# ---------------------------------------------------------------- subscriptions
def _subscribe_many(client: RawClient, filters: list[str], per_packet: int = 50) -> list[int]:
    codes: list[int] = []
    for start in range(0, len(filters), per_packet):
        pid = client.packet_id()
        subs = [Subscription(f, 0) for f in filters[start : start + per_packet]]
        client.send(Subscribe(pid, subs))
        ack = client.expect(SubAck, timeout=5.0)
        assert ack.packet_id == pid
        codes.extend(ack.reason_codes)
    return codes


def test_subscriptions_per_client_are_capped(make_broker: Factory) -> None:
    """mqtt.max_subscriptions_per_client: 100; 1,000 filters asked -> 100 granted,
    the rest SUBACK 0x97 (v5) / 0x80 (3.1.1); re-subscribing a held filter is fine."""
    broker = make_broker(config_text=config(mqtt="max_subscriptions_per_client: 100"))
    for version, refused in ((5, 0x97), (4, 0x80)):
        client = connected(broker.host, broker.port, version, f"subs-{version}")
        try:
            filters = [f"cap/{version}/{i}/+" for i in range(1000)]
            codes = _subscribe_many(client, filters)
            assert codes[:100] == [0] * 100
            assert codes[100:] == [refused] * 900, sorted(set(codes[100:]))
            assert probe(broker) < 1.0  # DURING
            assert _subscribe_many(client, filters[:5]) == [0] * 5  # already held
            client.unsubscribe(filters[0])
            assert _subscribe_many(client, [f"cap/{version}/new"]) == [0]
            assert _subscribe_many(client, [f"cap/{version}/newer"]) == [refused]
        finally:
            client.close()
    assert metric(broker, "iotbroker_subscriptions") == 0  # clean sessions gone
    healthy(broker)


def test_thousands_of_subscriptions_without_a_cap(make_broker: Factory) -> None:
    """Default (no cap): one client takes 10,000 subscriptions; the broker stays
    responsive and routing still works (there is no default limit: reported)."""
    broker = make_broker(config_text=config())
    client = connected(broker.host, broker.port, 5, "subs-many")
    try:
        filters = [f"many/{i}/+/#" for i in range(10_000)]
        codes = _subscribe_many(client, filters, per_packet=500)
        assert codes == [0] * len(filters)
        assert probe(broker) < 1.0
        assert metric(broker, "iotbroker_subscriptions") == 10_000
        with connected(broker.host, broker.port, 4, "many-pub") as pub:
            pub.publish("many/9999/x/y", b"hit")
        assert client.expect(Publish, timeout=3.0).payload == b"hit"
    finally:
        client.close()
    healthy(broker)


# ------------------------------------------------------------------------ topics
def test_topic_depth_and_length_limits(make_broker: Factory) -> None:
    """mqtt.max_topic_levels: 8, max_topic_length: 64: exactly the limit is accepted,
    one more is refused (PUBACK 0x90 / SUBACK 0x8F; 3.1.1: SUBACK 0x80, PUBLISH not
    routed)."""
    broker = make_broker(config_text=config(mqtt="max_topic_levels: 8\nmax_topic_length: 64"))
    sub = connected(broker.host, broker.port, 5, "topic-sub")
    sub.subscribe("#", 0)
    v5 = connected(broker.host, broker.port, 5, "topic-v5")
    v4 = connected(broker.host, broker.port, 4, "topic-v4")
    try:
        deep_ok = "/".join(["l"] * 8)
        deep_bad = "/".join(["l"] * 9)
        long_ok = "x" * 64
        long_bad = "x" * 65
        for topic, code in ((deep_ok, 0), (deep_bad, 0x90), (long_ok, 0), (long_bad, 0x90)):
            ack = v5.publish(topic, b"p", qos=1)
            assert isinstance(ack, PubAck) and ack.reason_code == code, (topic, ack)
        got = [p.topic for p in drain(sub, wait=0.3) if isinstance(p, Publish)]
        assert got == [deep_ok, long_ok], got
        # 3.1.1: acknowledged (no reason codes) but not routed.
        v4.publish(deep_bad, b"p", qos=1)
        v4.publish(long_bad, b"p", qos=1)
        sub.nothing(0.3)
        assert v5.subscribe(deep_bad + "/#").reason_codes == [0x8F]
        assert v5.subscribe("+/" * 8 + "#").reason_codes == [0x8F]
        assert v5.subscribe("y" * 65).reason_codes == [0x8F]
        assert v5.subscribe("/".join(["+"] * 8)).reason_codes == [0]
        assert v4.subscribe(deep_bad).reason_codes == [0x80]
        assert v4.subscribe("y" * 65).reason_codes == [0x80]
    finally:
        for c in (sub, v5, v4):
            c.close()
    healthy(broker)


def _mosquitto_pub_with_will(broker: BrokerProcess, version: str, will_topic: str,
                             topic: str) -> subprocess.CompletedProcess[str]:
    """One real ``mosquitto_pub`` that connects with a will and publishes once."""
    binary = shutil.which("mosquitto_pub")
    assert binary, "mosquitto_pub (Debian mosquitto-clients) is needed; .ci/run installs it"
    return subprocess.run(
        [binary, "-h", broker.host, "-p", str(broker.port), "-V", version, "-q", "1",
         "-t", topic, "-m", "sent", "--will-topic", will_topic, "--will-payload", "gone"],
        check=False, capture_output=True, text=True, timeout=10,
    )


def test_will_topic_over_the_topic_limits_refused_at_connect(make_broker: Factory) -> None:
    """A will whose topic breaks ``mqtt.max_topic_levels`` / ``max_topic_length`` (the
    limits a PUBLISH to it would meet) is refused at CONNECT, not accepted and then
    never published: MQTT 5.0 CONNACK 0x90 Topic Name invalid (§3.2.2.2: "The Will
    Topic Name is not malformed, but is not accepted by this Server"); MQTT 3.1.1 has
    no return code for it, so the connection closes without CONNACK [MQTT-3.2.2-6].
    Real clients (``mosquitto_pub``), and our raw client for the bytes; a will exactly
    at the limits is accepted and published when its client dies."""
    broker = make_broker(config_text=config(mqtt="max_topic_levels: 3\nmax_topic_length: 16"))
    watcher = connected(broker.host, broker.port, 5, "will-watcher")
    watcher.subscribe("#", 0)
    try:
        too_deep, too_long = "w/x/y/z", "w/" + "x" * 15
        for will_topic in (too_deep, too_long):
            v5 = _mosquitto_pub_with_will(broker, "mqttv5", will_topic, "sent/v5")
            assert v5.returncode == 0x90, (will_topic, v5.returncode, v5.stderr)
            assert "Topic Name invalid" in v5.stderr, v5.stderr
            v4 = _mosquitto_pub_with_will(broker, "mqttv311", will_topic, "sent/v4")
            assert v4.returncode != 0 and "connection was lost" in v4.stderr, (
                will_topic, v4.returncode, v4.stderr)
            for version in (4, 5):
                raw = RawClient(broker.host, broker.port, version=version, timeout=3.0)
                raw.send(Connect(client_id=f"raw-will-{version}", protocol_version=version,
                                 will=Will(will_topic, b"gone", qos=1)))
                got = closed_with(raw)
                if version == 5:
                    assert [type(p) for p in got] == [ConnAck], got
                    assert got[0].reason_code == 0x90, got  # type: ignore[attr-defined]
                else:
                    assert got == [], got  # no CONNACK: no 3.1.1 code fits
        # Exactly at the limits: accepted, and the will is published on a broken link.
        at_limit = "w/" + "x" * 14
        dying = RawClient(broker.host, broker.port, version=4, timeout=3.0)
        assert dying.connect("will-at-limit", will=Will(at_limit, b"gone")).reason_code == 0
        dying.sock.close()
        got = [(p.topic, p.payload) for p in drain(watcher, wait=1.0) if isinstance(p, Publish)]
        # Nothing of the refused clients reached the subscriber: neither their PUBLISH
        # (they never connected) nor a will.
        assert got == [(at_limit, b"gone")], got
        assert metric(broker, "iotbroker_topic_limit_refusals_total") == 8
    finally:
        watcher.close()
    healthy(broker)


def test_topic_length_limit_counts_utf8_bytes(make_broker: Factory) -> None:
    """configuration.md: max_topic_length is the "Longest topic name or filter in
    bytes". 33 x "é" is 33 characters but 66 UTF-8 bytes > 64: refused."""
    broker = make_broker(config_text=config(mqtt="max_topic_length: 64"))
    client = connected(broker.host, broker.port, 5, "utf8-len")
    try:
        ok = "é" * 32  # 64 bytes
        bad = "é" * 33  # 66 bytes
        assert client.publish(ok, b"p", qos=1).reason_code == 0x10  # type: ignore[union-attr]
        ack = client.publish(bad, b"p", qos=1)
        assert isinstance(ack, PubAck)
        assert ack.reason_code == 0x90, (
            f"a 66-byte topic passed max_topic_length 64 (PUBACK 0x{ack.reason_code:02x}): "
            "the limit counts characters, not UTF-8 bytes"
        )
        assert client.subscribe(bad).reason_codes == [0x8F]
    finally:
        client.close()


def test_huge_and_deep_topics_with_default_limits(make_broker: Factory) -> None:
    """Defaults (128 levels, 65,535 bytes): a 65,535-byte topic is routed; a
    20,000-level topic / filter is refused; the broker stays responsive."""
    broker = make_broker(config_text=config())
    sub = connected(broker.host, broker.port, 5, "huge-sub")
    pub = connected(broker.host, broker.port, 5, "huge-pub")
    try:
        sub.subscribe("#", 0)
        longest = "a" * 65_535
        assert pub.publish(longest, b"p", qos=1).reason_code == 0  # type: ignore[union-attr]
        assert sub.expect(Publish, timeout=3.0).topic == longest
        deepest = "/".join(["d"] * 20_000)
        assert pub.publish(deepest, b"p", qos=1).reason_code == 0x90  # type: ignore[union-attr]
        assert sub.subscribe(deepest).reason_codes == [0x8F]
        assert sub.subscribe("+/" * 20_000 + "#").reason_codes == [0x8F]
        assert probe(broker) < 1.0
    finally:
        sub.close()
        pub.close()
    healthy(broker)


# ---------------------------------------------------------------------- retained
def test_retained_flood_on_distinct_topics(make_broker: Factory) -> None:
    """30,000 retained messages on distinct topics from one client. There is no
    retained count limit in the broker (reported as missing): all are kept. Memory
    per retained message stays modest, the broker stays responsive, and a new '#'
    subscriber receives them all."""
    broker = make_broker(config_text=config())
    n = 30_000
    base = max(rss(broker), peak_rss(broker))
    pub = connected(broker.host, broker.port, 4, "retained-flood")
    try:
        for start in range(0, n, 5000):
            batch = b"".join(
                _retained_frame(f"rf/{i // 100}/{i}", b"v" * 100)
                for i in range(start, min(n, start + 5000))
            )
            pub.send_raw(batch)
            assert probe(broker) < 1.5  # DURING
        deadline = time.monotonic() + 10.0
        count = 0.0
        while time.monotonic() < deadline:
            count = metric(broker, "iotbroker_retained_messages")
            if count >= n:
                break
            time.sleep(0.1)
        assert count == n, count
        growth = rss(broker) - base
        print(f"{n} retained messages: RSS growth {growth / MiB:.1f} MiB")
        assert growth < 100 * MiB, f"{n} retained messages of 100 B cost {growth / MiB:.0f} MiB"
        sub = connected(broker.host, broker.port, 4, "retained-reader", timeout=10.0)
        reader = Reader(sub)
        sub.send(Subscribe(1, [Subscription("rf/#", 0)]))
        reader.start()
        deadline = time.monotonic() + 10.0
        while reader.publishes < n and time.monotonic() < deadline:
            time.sleep(0.05)
        reader.stop()
        sub.close()
        assert reader.publishes == n, reader.publishes
        assert metric(broker, 'iotbroker_messages_dropped_total{reason=slow_consumer}') == 0
    finally:
        pub.close()
    healthy(broker)


def _retained_frame(topic: str, payload: bytes) -> bytes:
    from iotbroker.codec import encode_packet  # noqa: PLC0415

    return encode_packet(Publish(topic, payload, 0, True), 4)


# ------------------------------------------------------------- in-flight ids
def test_65535_packet_ids_in_flight_are_never_reused(make_broker: Factory) -> None:
    """max_inflight 65535, a QoS 1 subscriber that never acks: the broker sends 65,535
    PUBLISHes with 65,535 distinct ids, then holds the next message (no id reuse while
    in flight [MQTT-2.3.1-2]); one PUBACK frees exactly that id for the next one."""
    broker = make_broker(config_text=config(
        mqtt="max_inflight: 65535\nreceive_maximum: 65535\nmax_queued_messages: 100"
    ))
    topic = "ids/flood"
    sub = connected(broker.host, broker.port, 4, "ids-sub", timeout=10.0)
    sub.subscribe(topic, 1)
    pub = connected(broker.host, broker.port, 4, "ids-pub", timeout=10.0)
    total = 65_535 + 3
    try:
        ids: list[int] = []
        got_frames = 0
        # Publish in pipelined batches; read what the subscriber got as we go.
        for start in range(0, total, 5000):
            end = min(total, start + 5000)
            pub.send_raw(b"".join(
                publish_frame(topic, b"%d" % i, qos=1, packet_id=(i % 65535) + 1)
                for i in range(start, end)
            ))
            for _ in range(end - start):
                pub.expect(PubAck, timeout=10.0)
        deadline = time.monotonic() + 10.0
        while len(ids) < 65_535 and time.monotonic() < deadline:
            packet = sub.expect(Publish, timeout=5.0)
            ids.append(packet.packet_id or 0)
            got_frames += 1
        assert len(ids) == 65_535
        assert len(set(ids)) == 65_535, "a packet id was reused while in flight"
        assert 0 not in ids
        sub.nothing(0.5)  # the window is full: the 3 others wait
        assert metric(broker, "iotbroker_inflight_messages") == 65_535
        assert metric(broker, "iotbroker_queued_messages") == 3
        assert probe(broker) < 1.5
        sub.send(PubAck(777))
        nxt = sub.expect(Publish, timeout=3.0)
        assert nxt.packet_id == 777, nxt
        assert nxt.payload == b"65535"
        sub.nothing(0.3)
    finally:
        sub.close()
        pub.close()
    healthy(broker)


def test_inflight_window_is_max_inflight(make_broker: Factory) -> None:
    broker = make_broker(config_text=config(mqtt="max_inflight: 20"))
    sub = connected(broker.host, broker.port, 5, "win-sub")
    sub.subscribe("win", 1)
    pub = connected(broker.host, broker.port, 4, "win-pub")
    try:
        for i in range(30):
            pub.publish("win", b"%d" % i, qos=1)
        first = [sub.expect(Publish, timeout=3.0) for _ in range(20)]
        sub.nothing(0.3)
        sub.send(PubAck(first[0].packet_id or 0))
        assert sub.expect(Publish, timeout=3.0).payload == b"20"
        sub.nothing(0.3)
    finally:
        sub.close()
        pub.close()


# -------------------------------------------------------------- packet size
def test_declared_256mb_packet_is_refused_from_its_header(make_broker: Factory) -> None:
    """A PUBLISH declaring 268,435,455 body bytes (default max 16 MiB): v5 gets
    DISCONNECT 0x95 and 3.1.1 is closed as soon as the header is read, while the
    client is still sending; nothing is buffered (peak RSS unchanged)."""
    broker = make_broker(config_text=config())
    base = max(rss(broker), peak_rss(broker))
    header = b"\x30" + encode_varint(268_435_455)
    for version in (5, 4):
        client = connected(broker.host, broker.port, version, f"huge-{version}")
        sent = 0
        try:
            client.send_raw(header + b"\x00\x01t")
            client.sock.settimeout(0.2)
            chunk = b"\x00" * 65536
            deadline = time.monotonic() + 3.0
            while sent < 64 * MiB and time.monotonic() < deadline:
                try:
                    sent += client.sock.send(chunk)
                except TimeoutError:
                    continue
                except OSError:
                    break
            got = read_packets(client.sock, version, timeout=2.0)
            if version == 5:
                assert disconnect_reason(got) == 0x95, got
            else:
                assert not got, got
            assert sent < 32 * MiB, f"the broker read {sent / MiB:.0f} MiB of a refused packet"
        finally:
            client.close()
    growth = peak_rss(broker) - base
    assert growth < 16 * MiB, f"peak RSS grew {growth / MiB:.1f} MiB"
    assert metric(broker, "iotbroker_malformed_packets_total") == 2  # PacketTooLarge
    healthy(broker)


def test_huge_connect_is_refused_before_it_is_buffered(make_broker: Factory) -> None:
    broker = make_broker(config_text=config(mqtt="max_packet_size: 1KiB"))
    base = max(rss(broker), peak_rss(broker))
    with sockets() as held:
        for _ in range(20):
            s = socket.create_connection((broker.host, broker.port), timeout=3.0)
            held.append(s)
            s.sendall(b"\x10" + encode_varint(268_435_455) + b"\x00\x04MQTT\x05")
        for s in held:
            assert closed_within(s, 2.0), "a CONNECT declaring 256 MiB kept its socket open"
    assert peak_rss(broker) - base < 8 * MiB
    healthy(broker)


def test_packet_over_max_packet_size_v5_property_announced(make_broker: Factory) -> None:
    """The v5 CONNACK announces the limit; one byte over it is DISCONNECT 0x95."""
    broker = make_broker(config_text=config(mqtt="max_packet_size: 1KiB"))
    client = RawClient(broker.host, broker.port, version=5, timeout=3.0)
    try:
        ack = client.connect("mps")
        assert ack.properties.maximum_packet_size == 1024
        payload_ok = b"x" * (1024 - len(publish_frame("t", b"", 5)))
        client.send_raw(publish_frame("t", payload_ok, 5))
        healthy(broker)
        client.send_raw(publish_frame("t", payload_ok + b"x", 5))
        assert disconnect_reason(closed_with(client)) == 0x95
    finally:
        client.close()


# ---------------------------------------------------------- admission limits
def _connack(sock: socket.socket, version: int, timeout: float) -> ConnAck | None:
    """The CONNACK on ``sock``, or None if it is closed (or silent) first."""
    framer = Framer(1 << 20)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except (TimeoutError, OSError):
            return None
        if not data:
            return None
        for first, body in framer.feed(data):
            packet = decode_packet(first, body, version)
            if isinstance(packet, ConnAck):
                return packet
    return None


def _connack_count(broker: BrokerProcess, n: int, version: int = 5,
                   prefix: str = "adm") -> tuple[int, list[socket.socket]]:
    """Open ``n`` sockets at once, CONNECT on each; how many got CONNACK 0 (the
    sockets are returned open)."""
    held: list[socket.socket] = []
    for i in range(n):
        try:
            s = socket.create_connection((broker.host, broker.port), timeout=3.0)
        except OSError:
            continue
        held.append(s)
        with contextlib.suppress(OSError):
            s.sendall(raw_connect_bytes(f"{prefix}-{i}", version))
    ok = 0
    for s in held:
        ack = _connack(s, version, timeout=2.0)
        if ack is not None and ack.reason_code == 0:
            ok += 1
    return ok, held


def test_limits_max_connections(make_broker: Factory) -> None:
    """configuration.md: limits.max_connections: "Connections open at once over all
    listeners; further ones are closed right after accept"."""
    broker = make_broker(config_text=config(limits="max_connections: 20"))
    ok, held = _connack_count(broker, 30)
    try:
        assert ok <= 20, f"{ok} of 30 clients connected with limits.max_connections 20"
        assert ok == 20, ok
        assert probe(broker) == float("inf")  # full: a 31st client is refused too
        assert metric(broker, "iotbroker_connections_rejected_total") >= 11
        assert metric(broker, "iotbroker_limit_hits_total") >= 11
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    healthy(broker)  # AFTER: room again


def test_listener_max_connections(make_broker: Factory) -> None:
    """configuration.md: listeners[].max_connections: "Connections this listener
    accepts at once; further ones are closed right after accept"."""
    listeners = ("listeners:\n  - name: default\n    type: tcp\n    host: 127.0.0.1\n"
                 "    port: 0\n    max_connections: 5\n")
    text = config().replace(
        "listeners:\n  - name: default\n    type: tcp\n    host: 127.0.0.1\n    port: 0\n",
        listeners,
    )
    broker = make_broker(config_text=text)
    ok, held = _connack_count(broker, 10)
    try:
        assert ok <= 5, f"{ok} of 10 clients connected with listener max_connections 5"
        assert ok == 5, ok
    finally:
        for s in held:
            s.close()


def test_limits_connect_rate(make_broker: Factory) -> None:
    """configuration.md: limits.connect_rate: "New connections accepted per second ...
    (token bucket; burst = one second's worth); excess connections are closed"."""
    broker = make_broker(config_text=config(limits="connect_rate: 10"))
    started = time.monotonic()
    ok, held = _connack_count(broker, 60)
    elapsed = time.monotonic() - started
    try:
        allowed = 10 + 10 * elapsed + 2
        assert ok <= allowed, (
            f"{ok} of 60 connections accepted in {elapsed:.1f}s with connect_rate 10/s"
        )
        assert ok >= 5, ok
        assert metric(broker, "iotbroker_connections_rejected_total") >= 60 - ok
    finally:
        for s in held:
            s.close()


def test_limits_publish_rate_per_client(make_broker: Factory) -> None:
    """configuration.md: limits.publish_rate_per_client: "PUBLISH packets per second
    one client may send (token bucket); beyond it the broker stops reading from that
    client" (no loss). 600 QoS 0 PUBLISHes sent in one burst at 200/s: about 200 (the
    burst) + 100 are routed in the first half second, and all 600 within ~3 s."""
    broker = make_broker(config_text=config(limits="publish_rate_per_client: 200"))
    sub = connected(broker.host, broker.port, 4, "rate-sub")
    sub.subscribe("rate", 0)
    reader = Reader(sub)
    reader.start()
    pub = connected(broker.host, broker.port, 4, "rate-pub")
    try:
        pub.send_raw(b"".join(publish_frame("rate", b"%d" % i) for i in range(600)))
        time.sleep(0.5)
        first = reader.publishes
        deadline = time.monotonic() + 5.0
        while reader.publishes < 600 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reader.publishes == 600, f"{reader.publishes} of 600 arrived: messages lost"
        assert first <= 350, (
            f"{first} PUBLISHes routed in the first 0.5 s with publish_rate_per_client 200: "
            "a burst that arrives in one read is not limited"
        )
        assert metric(broker, "iotbroker_limit_hits_total") >= 1
    finally:
        reader.stop()
        sub.close()
        pub.close()
    healthy(broker)
