"""Slow and stuck consumers, and publishers faster than their subscribers (issue 7).

The broker's rules (design.md, server/transport.py, server/broker.py):

* a transport whose write buffer passes ``WRITE_BUFFER_HIGH`` (1 MiB) is a slow
  consumer: QoS 0 messages for it are dropped and counted (``slow_consumer``), QoS 1/2
  wait in its session (bounded by ``mqtt.max_queued_messages``, drops counted
  ``queue_full``), and whoever publishes while it is congested stops being read;
* a consumer that does not drain within ``limits.drain_timeout`` is disconnected
  (``slow_consumers_disconnected``).

Each test checks that a healthy client is served DURING and AFTER the abuse.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from iotbroker.codec.packets import PubAck, Publish, Will
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.conformance import connected, ping
from tests.robustness.helpers import (
    MiB,
    Pinger,
    Reader,
    closed_within,
    config,
    flood,
    healthy,
    healthy_latency,
    metric,
    metrics,
    peak_rss,
    probe,
    publish_frame,
    rss,
    small_rcvbuf_client,
)

Factory = Callable[..., BrokerProcess]

PAYLOAD = 64 * 1024


def test_stuck_qos0_subscriber_is_disconnected_and_memory_stays_bounded(
    make_broker: Factory,
) -> None:
    """A QoS 0 subscriber that stops reading while a publisher floods 200 MB: the
    other subscriber keeps receiving, broker RSS grows < 100 MiB, the stuck client is
    disconnected after drain_timeout (1 s) and counted."""
    broker = make_broker(config_text=config(limits="drain_timeout: 1s"))
    topic = "flood/qos0"
    stuck = small_rcvbuf_client(broker)
    assert stuck.connect("stuck").reason_code == 0
    stuck.subscribe(topic, 0)
    good = connected(broker.host, broker.port, 4, "good")
    good.subscribe(topic, 0)
    reader = Reader(good)
    reader.start()
    publisher = connected(broker.host, broker.port, 4, "publisher")
    base_rss = rss(broker)
    base_peak = peak_rss(broker)
    frame = publish_frame(topic, b"\xab" * PAYLOAD)
    try:
        total = 200 * 1000 * 1000
        sent = 0
        started = time.monotonic()
        latencies: list[float] = []
        # Flood in slices, checking health between them (DURING the abuse).
        while sent < total and time.monotonic() - started < 10.0:
            n, _ = flood(publisher.sock, frame, min(20 * 1000 * 1000, total - sent), 2.0)
            sent += n
            latencies.append(healthy_latency(broker))
        assert sent >= total * 0.9, f"only {sent / MiB:.0f} MiB of the flood went out in 10 s"
        # The other subscriber kept receiving, during and after the stuck client's stall.
        deadline = time.monotonic() + 5.0
        expected = sent // len(frame)
        while reader.publishes < expected * 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reader.error is None, reader.error
        assert reader.publishes >= expected * 0.5, (reader.publishes, expected)
        assert max(latencies) < 2.0, latencies
        # The stuck client was disconnected after drain_timeout and counted.
        assert "disconnecting a stuck consumer" in broker.log_text()
        assert metric(broker, "iotbroker_slow_consumers_disconnected_total") >= 1
        assert closed_within(stuck.sock, 5.0), "the stuck client's socket is open"
        # Memory bounded: the flood did not pile up in the broker.
        growth = peak_rss(broker) - max(base_peak, base_rss)
        print(f"flood {sent / MiB:.0f} MiB, good subscriber got {reader.publishes} of "
              f"{expected}, peak RSS growth {growth / MiB:.1f} MiB, probe latencies "
              f"{[round(x, 3) for x in latencies]}, drops {_drops(broker)}")
        assert growth < 100 * MiB, f"broker peak RSS grew {growth / MiB:.0f} MiB"
        healthy(broker)
    finally:
        reader.stop()
        stuck.close()
        good.close()
        publisher.close()


def test_stuck_qos1_subscriber_queue_is_bounded_and_drops_counted(
    make_broker: Factory,
) -> None:
    """A QoS 1 subscriber that never reads nor acks: max_inflight (10) in flight,
    max_queued_messages (100) queued, every further message dropped and counted."""
    broker = make_broker(config_text=config(
        mqtt="max_inflight: 10\nmax_queued_messages: 100\nreceive_maximum: 65535",
        limits="drain_timeout: 30s",
    ))
    topic = "stuck/qos1"
    stuck = connected(broker.host, broker.port, 4, "stuck-q1", clean_start=False)
    stuck.subscribe(topic, 1)
    publisher = connected(broker.host, broker.port, 4, "pub-q1")
    n = 2000
    try:
        # Pipelined QoS 1 publishes, acks read as they come (bounded).
        for start in range(0, n, 250):
            batch = b"".join(
                publish_frame(topic, b"m%05d" % i, qos=1, packet_id=i + 1)
                for i in range(start, min(n, start + 250))
            )
            publisher.send_raw(batch)
            for _ in range(min(250, n - start)):
                publisher.expect(PubAck, timeout=5.0)
            healthy(broker)  # DURING
        values_dropped = metric(broker, 'iotbroker_messages_dropped_total{reason=queue_full}')
        queued = metric(broker, "iotbroker_queued_messages")
        inflight = metric(broker, "iotbroker_inflight_messages")
        assert inflight == 10, inflight
        assert queued == 100, queued
        assert values_dropped == n - 10 - 100, values_dropped
        # The stuck client wakes up: exactly the window and the queue, in order.
        got: list[Publish] = []
        deadline = time.monotonic() + 8.0
        while len(got) < 110 and time.monotonic() < deadline:
            pub = stuck.expect(Publish, timeout=3.0)
            got.append(pub)
            stuck.send(PubAck(pub.packet_id or 0))
        stuck.nothing(0.3)
        payloads = [p.payload for p in got]
        assert payloads == [b"m%05d" % i for i in range(110)]
        healthy(broker)  # AFTER
    finally:
        stuck.close()
        publisher.close()


def test_fast_publisher_is_slowed_not_buffered(make_broker: Factory) -> None:
    """A publisher much faster than its only subscriber (which reads slowly) is
    throttled: the broker stops reading its socket, so what it manages to send stays
    near what the subscriber consumed, and broker memory does not grow with the flood.

    Bystanders must not pay for it: a client connected before the flood (keep alive
    2 s, pinging every 0.5 s) gets its PINGRESPs promptly and is not disconnected, and
    fresh clients connect and ping promptly, while the publisher is throttled.
    """
    broker = make_broker(config_text=config(limits="drain_timeout: 60s"))
    topic = "bp/flood"
    slow = small_rcvbuf_client(broker, rcvbuf=16384)
    assert slow.connect("slow-reader").reason_code == 0
    slow.subscribe(topic, 0)
    reader = Reader(slow, delay=0.01, chunk=16384)
    reader.start()
    publisher = connected(broker.host, broker.port, 4, "fast-pub")
    bystander = connected(broker.host, broker.port, 4, "bystander", keepalive=2)
    pinger = Pinger(bystander, every=0.5, limit=5.0)
    pinger.start()
    base_peak = max(peak_rss(broker), rss(broker))
    frame = publish_frame(topic, b"\xcd" * PAYLOAD)
    try:
        probes = []
        sent = 0
        started = time.monotonic()
        for _ in range(3):
            n, _ = flood(publisher.sock, frame, 500 * 1000 * 1000, 1.5)
            sent += n
            probes.append(probe(broker))
        elapsed = time.monotonic() - started
        consumed = reader.bytes
        pinger.stop()
        # Throttled: kernel buffers on loopback (publisher send + broker receive) hold
        # some MiB, the rest waited in the publisher.
        slack = 48 * MiB
        assert sent <= consumed + slack, (
            f"publisher pushed {sent / MiB:.0f} MiB in {elapsed:.1f}s while the subscriber "
            f"read {consumed / MiB:.1f} MiB: it was not slowed down"
        )
        assert reader.publishes > 0, "the slow subscriber received nothing"
        growth = peak_rss(broker) - base_peak
        print(f"publisher sent {sent / MiB:.1f} MiB in {elapsed:.1f}s, subscriber read "
              f"{consumed / MiB:.1f} MiB, peak RSS growth {growth / MiB:.1f} MiB, "
              f"bystander pings {[round(x, 2) for x in pinger.latencies]}, "
              f"fresh probes {[round(x, 2) for x in probes]}, drops {_drops(broker)}")
        assert growth < 64 * MiB, f"broker peak RSS grew {growth / MiB:.0f} MiB"
        # The slow reader is not stuck (it reads), so it was not disconnected.
        assert not reader.closed
        assert metric(broker, "iotbroker_slow_consumers_disconnected_total") == 0
        # Bystanders are served DURING the throttling.
        assert pinger.closed is None, (
            f"bystander (keep alive 2 s, pinging every 0.5 s) was disconnected during the "
            f"flood: {pinger.closed}; ping latencies {pinger.latencies}"
        )
        assert pinger.latencies and max(pinger.latencies) < 1.5, (
            f"bystander PINGRESP latencies {[round(x, 2) for x in pinger.latencies]}: an "
            "unrelated client was paused along with the throttled publisher"
        )
        assert max(probes) < 2.0, f"fresh client connect+ping took {probes}"
        healthy(broker)  # AFTER
    finally:
        pinger.stop()
        reader.stop()
        slow.close()
        publisher.close()
        bystander.close()


def _drops(broker: BrokerProcess) -> dict[str, float]:
    return {k: v for k, v in metrics(broker).items() if k.startswith("iotbroker_messages_dropped")}



def test_throttled_publisher_is_not_disconnected_by_its_keepalive(make_broker: Factory) -> None:
    """While the broker deliberately stops reading a publisher (backpressure from a
    stuck subscriber, up to drain_timeout = 4 s), the publisher keeps sending; its keep
    alive (1 s -> 1.5 s) must not expire for bytes the broker chose not to read. When the
    stuck subscriber is dropped, the publisher is read again and stays connected (its
    will is not published)."""
    broker = make_broker(config_text=config(limits="drain_timeout: 4s"))
    topic = "ka/flood"
    stuck = small_rcvbuf_client(broker)
    assert stuck.connect("ka-stuck").reason_code == 0
    stuck.subscribe(topic, 0)
    watcher = connected(broker.host, broker.port, 4, "ka-will-watcher")
    watcher.subscribe("ka/will", 0)
    publisher = connected(broker.host, broker.port, 4, "ka-pub", keepalive=1,
                          will=Will("ka/will", b"publisher died", 0, False))
    frame = publish_frame(topic, b"\xee" * PAYLOAD)
    try:
        sent = 0
        started = time.monotonic()
        while time.monotonic() - started < 6.0:
            n, _ = flood(publisher.sock, frame, 8 * MiB, 0.5)
            sent += n
        assert "disconnecting a stuck consumer" in broker.log_text()
        killed = [line for line in broker.log_text().splitlines()
                  if "'ka-pub'" in line and "keepalive timeout" in line]
        assert not killed, (
            "the throttled publisher was disconnected for keep alive while the broker "
            f"itself was not reading it (its will went out): {killed}"
        )
        # The publisher is read again: a PINGREQ gets its PINGRESP.
        ping(publisher, timeout=3.0)
        watcher.nothing(0.3)  # no will
    finally:
        stuck.close()
        watcher.close()
        publisher.close()
    healthy(broker)
