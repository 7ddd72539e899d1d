"""Helpers for the robustness tests: broker configs, /proc readings, metrics, load clients.

Every loop here is bounded in count and in time; every socket is closed by its owner.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.packets import Connect, Packet, PingReq, PingResp, Publish
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.conformance import assert_broker_healthy
from tests.helpers.rawclient import Closed, RawClient

MiB = 1 << 20

_METRICS = re.compile(r"metrics listening on (\S+):(\d+)")


def config(mqtt: str = "", limits: str = "", extra: str = "") -> str:
    """Loopback broker, memory storage, the metrics endpoint on, INFO logging.

    ``mqtt`` / ``limits`` are YAML lines (no indentation) for those sections.
    """
    text = "metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n"
    if mqtt:
        text += "mqtt:\n" + "".join(f"  {line}\n" for line in mqtt.strip().splitlines())
    if limits:
        text += "limits:\n" + "".join(f"  {line}\n" for line in limits.strip().splitlines())
    # DEBUG logs every packet: far too slow for floods. INFO keeps the lines we look for.
    return broker_config(extra=text + extra).replace("level: DEBUG", "level: INFO")


# ------------------------------------------------------------------------- /proc
def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def rss(broker: BrokerProcess) -> int:
    """Resident set size of the broker process, bytes."""
    assert broker.proc is not None
    return int(_status(broker.proc.pid)["VmRSS"].split()[0]) * 1024


def peak_rss(broker: BrokerProcess) -> int:
    """Peak resident set size since the broker started (VmHWM), bytes."""
    assert broker.proc is not None
    return int(_status(broker.proc.pid)["VmHWM"].split()[0]) * 1024


def fd_count(broker: BrokerProcess) -> int:
    assert broker.proc is not None
    return len(list(Path(f"/proc/{broker.proc.pid}/fd").iterdir()))


def wait_fds(broker: BrokerProcess, at_most: int, timeout: float = 5.0) -> int:
    """Wait until the broker holds at most ``at_most`` fds; return the count."""
    deadline = time.monotonic() + timeout
    count = fd_count(broker)
    while count > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
        count = fd_count(broker)
    return count


# ----------------------------------------------------------------------- metrics
def metrics(broker: BrokerProcess, timeout: float = 5.0) -> dict[str, float]:
    """Prometheus samples: ``name`` or ``name{label=value,...}`` -> value."""
    found = None
    deadline = time.monotonic() + timeout
    while found is None and time.monotonic() < deadline:
        found = _METRICS.search(broker.log_text())
        if found is None:
            time.sleep(0.02)
    assert found is not None, "no 'metrics listening on' line in the broker log"
    url = f"http://{found.group(1)}:{found.group(2)}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def metric(broker: BrokerProcess, name: str) -> float:
    values = metrics(broker)
    assert name in values, f"{name} not among {sorted(values)}"
    return values[name]


# ----------------------------------------------------------------------- clients
def healthy(broker: BrokerProcess, version: int = 4) -> None:
    """A fresh client connects and pings (bounded by RawClient timeouts)."""
    assert_broker_healthy(broker, version)


def healthy_latency(broker: BrokerProcess, version: int = 4) -> float:
    started = time.monotonic()
    assert_broker_healthy(broker, version)
    return time.monotonic() - started


def small_rcvbuf_client(broker: BrokerProcess, version: int = 4, rcvbuf: int = 4096,
                        timeout: float = 5.0) -> RawClient:
    """A RawClient whose socket has a tiny receive buffer (set before connecting, so
    the TCP window stays small): it stops the broker's writes quickly once it stops
    reading."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((broker.host, broker.port))
    return RawClient.over(sock, version, timeout)


class Reader(threading.Thread):
    """Reads a connected client's socket in the background, counting PUBLISHes
    (QoS 0 only: it never acknowledges). ``delay`` seconds between reads makes a slow
    reader; ``chunk`` bytes per read."""

    def __init__(self, client: RawClient, delay: float = 0.0, chunk: int = 1 << 16) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.delay = delay
        self.chunk = chunk
        self.publishes = 0
        self.bytes = 0
        self.closed = False
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self.first_at: float | None = None
        self.last_at: float | None = None

    def run(self) -> None:
        sock = self.client.sock
        framer = self.client.framer
        sock.settimeout(0.2)
        try:
            while not self._halt.is_set():
                try:
                    data = sock.recv(self.chunk)
                except TimeoutError:
                    continue
                except OSError:
                    self.closed = True
                    return
                if not data:
                    self.closed = True
                    return
                self.bytes += len(data)
                for first, body in framer.feed(data):
                    packet = decode_packet(first, body, self.client.version)
                    if isinstance(packet, Publish):
                        self.publishes += 1
                        now = time.monotonic()
                        self.last_at = now
                        if self.first_at is None:
                            self.first_at = now
                if self.delay:
                    time.sleep(self.delay)
        except BaseException as exc:
            self.error = exc

    def stop(self, timeout: float = 3.0) -> None:
        self._halt.set()
        self.join(timeout)


def publish_frame(topic: str, payload: bytes, version: int = 4, qos: int = 0,
                  packet_id: int | None = None) -> bytes:
    return encode_packet(Publish(topic, payload, qos, False, False, packet_id), version)


def flood(sock: socket.socket, frame: bytes, total_bytes: int, seconds: float) -> tuple[int, float]:
    """Send ``frame`` repeatedly until ``total_bytes`` are sent or ``seconds`` pass.

    Returns (bytes the kernel accepted, seconds spent). A send that blocks longer than
    the time left ends the flood (the broker stopped reading: backpressure).
    """
    sent = 0
    started = time.monotonic()
    deadline = started + seconds
    view = memoryview(frame)
    batch = bytes(frame) * max(1, (256 * 1024) // len(frame))
    while sent < total_bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(min(left, 0.5))
        try:
            n = sock.send(batch)
        except TimeoutError:
            continue
        except OSError:
            break
        sent += n
        if n < len(batch):
            # Finish the partial batch so the stream stays framed.
            rest = batch[n:]
            while rest and time.monotonic() < deadline:
                try:
                    m = sock.send(rest)
                except TimeoutError:
                    continue
                except OSError:
                    return sent, time.monotonic() - started
                sent += m
                rest = rest[m:]
            if rest:
                break
    del view
    return sent, time.monotonic() - started


def raw_connect_bytes(client_id: str, version: int = 4, keepalive: int = 60) -> bytes:
    return encode_packet(Connect(client_id=client_id, protocol_version=version,
                                 keepalive=keepalive), version)


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    """A list whose sockets are all closed at the end."""
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for s in held:
            with contextlib.suppress(OSError):
                s.close()


def read_packets(sock: socket.socket, version: int, timeout: float) -> list[Packet]:
    """Whatever complete packets arrive within ``timeout`` (stops at EOF)."""
    framer = Framer(1 << 28)
    out: list[Packet] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            break
        except OSError:
            break
        if not data:
            break
        out.extend(decode_packet(f, b, version) for f, b in framer.feed(data))
    return out


def u16(value: int) -> bytes:
    return struct.pack(">H", value)


def probe(broker: BrokerProcess, version: int = 4) -> float:
    """Seconds a fresh client needs to connect and get a PINGRESP; ``inf`` when it
    does not within the RawClient timeouts (the test asserts on the value)."""
    started = time.monotonic()
    try:
        assert_broker_healthy(broker, version)
    except (AssertionError, OSError, Closed):
        return float("inf")
    return time.monotonic() - started


class Pinger(threading.Thread):
    """An already connected bystander that sends PINGREQ every ``every`` seconds and
    records how long each PINGRESP takes (``inf``: none within ``limit``); stops when
    the broker closes it (``closed``)."""

    def __init__(self, client: RawClient, every: float = 0.5, limit: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.every = every
        self.limit = limit
        self.latencies: list[float] = []
        self.closed: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            try:
                self.client.send(PingReq())
                self.client.expect(PingResp, timeout=self.limit)
                self.latencies.append(time.monotonic() - started)
            except TimeoutError:
                self.latencies.append(float("inf"))
            except (Closed, OSError, AssertionError) as exc:
                self.closed = repr(exc)
                return
            self._halt.wait(self.every)

    def stop(self, timeout: float = 6.0) -> None:
        self._halt.set()
        self.join(timeout)


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """Read and discard until the peer closes (EOF or reset): True, or False when the
    socket is still open after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(1 << 16):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False
