"""A delivery larger than the sockets hold to a subscriber that starts reading late
(the "stall at 4,161,536 bytes" report, fix-stall): the transport buffers what the
kernel does not take, the subscriber is a slow consumer (``limits.drain_timeout``,
server/broker.py ``writer_paused`` / ``writer_resumed``) and the publishers that feed it
are paused until it drains (docs/configuration.md ``limits.drain_timeout``).

The clients here never wait for a PUBACK before reading the subscriber: with the
publishers paused, a client that does (one thread, publisher then subscriber) waits for
a PUBACK that the broker will only read the PUBLISH for once the subscriber drains,
and nothing moves until ``drain_timeout`` disconnects the subscriber. That is what
the report saw (``test_paused_publisher_is_resumed_when_the_subscriber_reads``).

MQTT 3.1.1 §4.6 / MQTT 5.0 §4.6: messages to one subscriber are delivered in order
[MQTT-4.6.0-6]; a QoS 1 message is delivered at least once [MQTT-4.3.2-1].
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from iotbroker.codec import Framer, decode_packet
from iotbroker.codec.encode import encode_packet
from iotbroker.codec.packets import PubAck, Publish
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import RawClient

#: More than a loopback socket pair holds while the reader does not read (the send
#: buffer autotunes up to tcp_wmem's 4 MiB; the reader's window stays small).
BIG = bytes(range(256)) * (12 * 4096)  # 12 MiB


def _send_publish(client: RawClient, payload: bytes, qos: int, pid: int) -> None:
    """Send a PUBLISH without waiting for its PUBACK (see the module docstring)."""
    client.send(Publish("big/t", payload, qos, False, False, pid if qos else None))


def _read_exactly(sock: socket.socket, size: int, timeout: float = 20.0) -> bytes:
    data = bytearray()
    sock.settimeout(timeout)
    while len(data) < size:
        chunk = sock.recv(1 << 20)
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def _publishes(data: bytes) -> list[Publish]:
    packets = [decode_packet(first, body, 4) for first, body in Framer(1 << 28).feed(data)]
    assert all(isinstance(p, Publish) for p in packets), packets
    return packets  # type: ignore[return-value]


def _wire_size(payload: bytes, qos: int, pid: int) -> int:
    return len(encode_packet(Publish("big/t", payload, qos, False, False,
                                     pid if qos else None), 4))


@pytest.mark.parametrize("park_on_accept", [True, False], ids=["park_on_accept", "no_park"])
@pytest.mark.parametrize("qos", [0, 1])
def test_large_delivery_to_a_late_reader_arrives_whole(
    make_broker: Callable[..., BrokerProcess], qos: int, park_on_accept: bool,
) -> None:
    """A 12 MiB PUBLISH (QoS 0 and 1 [MQTT-4.3.2-1]) to a subscriber that starts
    reading 50 ms later arrives whole, and the small message published after it
    arrives after it [MQTT-4.6.0-6]; the publisher gets its PUBACKs once the
    subscriber has drained. With ``park_on_accept`` on (the default: the subscriber's
    socket has no transport until its SUBSCRIBE) and off."""
    extra = "" if park_on_accept else "limits:\n  park_on_accept: false\n"
    broker = make_broker(broker_config(extra=extra))
    with RawClient(broker.host, broker.port, timeout=20) as sub, \
            RawClient(broker.host, broker.port, timeout=20) as pub:
        assert sub.connect("big-sub").reason_code == 0
        sub.subscribe("big/t", qos=1)
        assert pub.connect("big-pub").reason_code == 0
        _send_publish(pub, BIG, qos, 1)
        # QoS 1: waits in the subscriber's session while it is congested. QoS 0 after
        # the big one would be dropped as a slow consumer's: only the big one then.
        if qos:
            _send_publish(pub, b"after", qos, 2)
        time.sleep(0.05)
        expected = _wire_size(BIG, qos, 1) + (_wire_size(b"after", qos, 2) if qos else 0)
        got = _publishes(_read_exactly(sub.sock, expected))
        assert got[0].payload == BIG
        assert [p.payload for p in got[1:]] == ([b"after"] if qos else [])
        if qos:
            assert [pub.expect(PubAck).packet_id for _ in range(2)] == [1, 2]
    assert "disconnecting a stuck consumer" not in broker.log_text()


def test_output_that_does_not_fit_is_written_after_adoption(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """A delivery to an idle-parked subscriber larger than its socket takes at once
    (server/parking.py ``Parking.write``): one send writes what fits, the socket gets a
    transport and the rest is written first (``ClientProtocol._readopted``), then what
    was queued meanwhile; nothing lost, in order [MQTT-4.6.0-6], QoS 1 [MQTT-4.3.2-1]."""
    broker = make_broker(broker_config(extra="limits:\n  park_idle_after: 0.1\n"))
    with RawClient(broker.host, broker.port, timeout=20) as sub, \
            RawClient(broker.host, broker.port, timeout=20) as pub:
        assert sub.connect("big-parked").reason_code == 0
        sub.subscribe("big/t", qos=1)
        assert pub.connect("big-pub").reason_code == 0
        deadline = time.monotonic() + 5
        while "parked idle connection 'big-parked'" not in broker.log_text():
            assert time.monotonic() < deadline, "the subscriber was not parked"
            time.sleep(0.02)
        woken = "re-adopting parked connection 'big-parked'"
        wakes = broker.log_text().count(woken)
        _send_publish(pub, BIG, 1, 1)
        _send_publish(pub, b"after-1", 1, 2)
        _send_publish(pub, b"after-2", 1, 3)
        deadline = time.monotonic() + 5  # adopted for the rest, before it reads
        while broker.log_text().count(woken) == wakes:
            assert time.monotonic() < deadline, "not adopted for the rest of the output"
            time.sleep(0.02)
        time.sleep(0.05)
        expected = (_wire_size(BIG, 1, 1) + _wire_size(b"after-1", 1, 2)
                    + _wire_size(b"after-2", 1, 3))
        got = _publishes(_read_exactly(sub.sock, expected))
        assert got[0].payload == BIG
        assert [p.payload for p in got[1:]] == [b"after-1", b"after-2"]
        assert [pub.expect(PubAck).packet_id for _ in range(3)] == [1, 2, 3]
    log = broker.log_text()
    assert "disconnecting a stuck consumer" not in log


def test_paused_publisher_is_resumed_when_the_subscriber_reads(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """The "stall" of the report: while the subscriber does not read, the publisher
    that feeds it is paused (its socket is not read, so a PUBLISH sent after the big one
    gets no PUBACK); a client that waits for that PUBACK before reading the subscriber
    waits until ``drain_timeout``. As soon as the subscriber reads, everything flows:
    the rest of the big message, the next one [MQTT-4.6.0-6] and the PUBACK
    [MQTT-4.3.2-4]."""
    broker = make_broker(broker_config(extra="limits:\n  park_on_accept: false\n"))
    with RawClient(broker.host, broker.port, timeout=20) as sub, \
            RawClient(broker.host, broker.port, timeout=20) as pub:
        assert sub.connect("big-sub").reason_code == 0
        sub.subscribe("big/t", qos=1)
        assert pub.connect("big-pub").reason_code == 0
        _send_publish(pub, BIG, 1, 1)
        assert pub.expect(PubAck).packet_id == 1  # answered in the turn of the forward
        _send_publish(pub, b"after", 1, 2)
        with pytest.raises(TimeoutError):
            pub.expect(PubAck, timeout=0.5)  # paused: the subscriber is congested
        expected = _wire_size(BIG, 1, 1) + _wire_size(b"after", 1, 2)
        got = _publishes(_read_exactly(sub.sock, expected))
        assert [len(p.payload) for p in got] == [len(BIG), 5]
        assert pub.expect(PubAck, timeout=5).packet_id == 2
    assert "disconnecting a stuck consumer" not in broker.log_text()


def test_a_slow_reader_is_not_disconnected_as_stuck(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """``limits.drain_timeout`` disconnects a consumer that does not read, not one that
    reads slower than a large delivery is sent to it: a subscriber that reads a 12 MiB
    message at ~3 MB/s (about 4 s, through a small receive buffer) with
    ``drain_timeout: 1s`` gets all of it (its write buffer shrank in every period),
    then the message published after it [MQTT-4.6.0-6]. The publisher it paused is
    read again after one period: its PUBACK [MQTT-4.3.2-4] comes while the
    subscriber is still reading."""
    broker = make_broker(broker_config(
        extra="limits:\n  drain_timeout: 1s\n  park_on_accept: false\n"))
    with RawClient(broker.host, broker.port, timeout=20) as sub, \
            RawClient(broker.host, broker.port, timeout=20) as pub:
        sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # no autotuning
        assert sub.connect("slow-sub").reason_code == 0
        sub.subscribe("big/t", qos=1)
        assert pub.connect("slow-pub").reason_code == 0
        _send_publish(pub, BIG, 1, 1)
        assert pub.expect(PubAck).packet_id == 1
        _send_publish(pub, b"after", 1, 2)
        expected = _wire_size(BIG, 1, 1) + _wire_size(b"after", 1, 2)
        data = bytearray()
        failure: list[str] = []

        def read_slowly() -> None:
            sub.sock.settimeout(20)
            while len(data) < expected:
                chunk = sub.sock.recv(64 << 10)
                if not chunk:
                    failure.append(f"EOF after {len(data)} of {expected} bytes")
                    return
                data.extend(chunk)
                time.sleep(0.02)

        reader = threading.Thread(target=read_slowly)
        start = time.monotonic()
        reader.start()
        assert pub.expect(PubAck, timeout=10).packet_id == 2
        acked = time.monotonic() - start
        reader.join(30)
        took = time.monotonic() - start
        assert not failure, failure[0]
        assert took > 2  # slower than drain_timeout, by far
        print(f"PUBACK after {acked:.2f}s, read in {took:.2f}s")
        assert acked < took - 0.5, (acked, took)  # released before the reader caught up
        got = _publishes(bytes(data))
        assert got[0].payload == BIG
        assert [p.payload for p in got[1:]] == [b"after"]
    assert "disconnecting a stuck consumer" not in broker.log_text()
