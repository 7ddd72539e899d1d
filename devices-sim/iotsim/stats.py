"""What one simulator process measures; merged across worker processes.

Publisher side: one :class:`StreamRec` per (source, QoS) stream: its topic, the last
sequence number sent, the sequence numbers the broker has not acknowledged (yet) and
when each sequence number was sent (4 bytes a message). Subscriber side: one
:class:`SubscriberRec` per accounting subscriber (monitors and dashboards): how many
times each sequence number of each stream arrived, and when it was subscribed (SUBACK)
and disconnected. The final cross-check (:mod:`iotsim.accounting`) needs both, so both
travel from the workers to the parent with :meth:`Stats.export` /
:meth:`Stats.merge_export`. Times are ``time.monotonic_ns()``, one clock for every
process of the machine.
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from iotsim.histogram import Histogram
from iotsim.payloads import MAGIC_TELEMETRY, MAGIC_WILL, stream_key

#: Resolution of the recorded send times (100 µs; 4 bytes cover 4.9 days per stream).
TIME_QUANTUM_NS = 100_000
_TIME_MAX = 0xFFFFFFFF


def _times() -> array[int]:
    return array("I")


@dataclass(slots=True)
class StreamRec:
    """One (source, QoS) stream of accounted messages, publisher side.

    ``times[seq - 1]`` is when ``seq`` was sent, in :data:`TIME_QUANTUM_NS` units after
    ``base_ns`` (the first message's send time), rounded down.
    """

    topic: str
    qos: int
    sent: int = 0
    unconfirmed: set[int] = field(default_factory=set)
    base_ns: int = 0
    times: array[int] = field(default_factory=_times)

    def record_time(self, seq: int, ts_ns: int) -> None:
        """Note that ``seq`` was sent at ``ts_ns`` (sequence numbers come in order)."""
        times = self.times
        if not times:
            self.base_ns = ts_ns
        q = min(_TIME_MAX, max(0, ts_ns - self.base_ns) // TIME_QUANTUM_NS)
        if times and q < times[-1]:
            q = times[-1]  # keep the array sorted whatever the clock did
        while len(times) < seq - 1:  # a gap (not produced by the simulator): same time
            times.append(q)
        if len(times) == seq - 1:
            times.append(q)

    def first_sent_at_or_after(self, t_ns: int) -> int:
        """The first sequence number surely sent at or after ``t_ns`` (``sent + 1``: none).

        Conservative: a message sent less than :data:`TIME_QUANTUM_NS` after ``t_ns``
        may count as sent before it. Sequence numbers without a recorded time count as
        sent after any ``t_ns``.
        """
        times = self.times
        if not times or t_ns <= self.base_ns:
            return 1
        q = -(-(t_ns - self.base_ns) // TIME_QUANTUM_NS)  # ceil
        return bisect_left(times, q) + 1


class ConnectPhases:
    """Where a TCP connect's time went (µs histograms), so that what the simulator's
    own loop adds shows apart from what the broker takes:

    * ``tcp``: ``connect()`` called -> the connection made (the TCP handshake, a TLS
      handshake, and the simulator's loop getting to the new socket);
    * ``connack``: CONNECT written -> CONNACK read (the broker's accept and CONNECT
      handling, the network, and the simulator's loop getting to the answer);
    * ``resume``: CONNACK read -> the device's coroutine running again (the
      simulator's loop only).
    """

    __slots__ = ("connack", "resume", "tcp")

    def __init__(self) -> None:
        self.tcp = Histogram()
        self.connack = Histogram()
        self.resume = Histogram()

    def record(self, started: float, made: float, connack: float, resumed: float) -> None:
        """One connect's ``time.monotonic()`` stamps."""
        self.tcp.record(int((made - started) * 1e6))
        self.connack.record(int((connack - made) * 1e6))
        self.resume.record(int((resumed - connack) * 1e6))

    def to_dict(self) -> dict[str, Any]:
        return {"tcp": self.tcp.to_dict(), "connack": self.connack.to_dict(),
                "resume": self.resume.to_dict()}

    def merge_dict(self, data: dict[str, Any]) -> None:
        self.tcp.merge(Histogram.from_dict(data["tcp"]))
        self.connack.merge(Histogram.from_dict(data["connack"]))
        self.resume.merge(Histogram.from_dict(data["resume"]))

    def summary_ms(self) -> dict[str, Any]:
        return {"tcp": self.tcp.summary_ms(), "connack": self.connack.summary_ms(),
                "resume": self.resume.summary_ms()}


@dataclass(slots=True)
class Second:
    """Counters of one second of the run (for the time series and the live view)."""

    published: int = 0
    delivered: int = 0
    acked: int = 0
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    errors: int = 0
    connected: int = 0
    latency: Histogram = field(default_factory=Histogram)

    def merge(self, other: Second) -> None:
        """Add another worker's second (``connected`` is a gauge: summed over workers)."""
        self.published += other.published
        self.delivered += other.delivered
        self.acked += other.acked
        self.connects += other.connects
        self.connect_failures += other.connect_failures
        self.disconnects += other.disconnects
        self.errors += other.errors
        self.connected += other.connected
        self.latency.merge(other.latency)


class SubscriberRec:
    """One accounting subscriber: which (stream, seq) arrived how often, wills, latency."""

    __slots__ = ("downs", "faulted", "filters", "foreign", "last", "name", "ooo", "persistent",
                 "qos", "received", "run", "seen", "ups", "wills")

    def __init__(self, name: str, filters: tuple[str, ...], qos: int, run: int,
                 persistent: bool = False) -> None:
        self.name = name
        self.filters = filters
        self.qos = qos
        self.run = run
        self.persistent = persistent  # Clean Session 0 / Session Expiry > 0
        self.faulted = False  # hit by a fault or disconnected during the run (informative)
        #: (SUBACK arrival, the session and its subscriptions were kept since the last one)
        self.ups: list[tuple[int, bool]] = []
        #: (connection lost, highest in-order sequence number seen per stream by then)
        self.downs: list[tuple[int, dict[int, int]]] = []
        self.seen: dict[int, bytearray] = {}
        self.last: dict[int, int] = {}
        self.ooo: Counter[int] = Counter()
        self.wills: Counter[int] = Counter()
        self.foreign = 0
        self.received = 0

    def on_subscribed(self, suback_ns: int, resumed: bool) -> None:
        """Its SUBACK arrived at ``suback_ns``; ``resumed``: a persistent session, present
        on every connection since the previous SUBACK, kept its subscriptions meanwhile."""
        self.ups.append((suback_ns, resumed))

    def on_disconnected(self, now_ns: int) -> None:
        """Its connection ended during the run (not the final disconnect)."""
        self.downs.append((now_ns, dict(self.last)))

    def account(self, payload: bytes, header: tuple[bytes, int, int, int, int, int] | None,
                now_ns: int) -> int:
        """Count one delivered payload; its latency in µs for telemetry of this run, else -1."""
        self.received += 1
        if header is None or header[1] != self.run:
            self.foreign += 1
            return -1
        magic, _run, source, qos, seq, ts = header
        if magic == MAGIC_WILL:
            self.wills[source] += 1
            return -1
        if magic != MAGIC_TELEMETRY:
            self.foreign += 1
            return -1
        key = stream_key(source, qos)
        arr = self.seen.get(key)
        if arr is None:
            arr = self.seen[key] = bytearray(max(64, seq + 1))
        elif seq >= len(arr):
            arr.extend(bytes(max(seq + 1, 2 * len(arr)) - len(arr)))
        count = arr[seq]
        if count == 0:
            last = self.last.get(key, 0)
            if seq < last:
                self.ooo[key] += 1
            else:
                self.last[key] = seq
        if count < 255:
            arr[seq] = count + 1
        return max(0, (now_ns - ts) // 1000)

    def export(self) -> dict[str, Any]:
        """A picklable form."""
        return {"name": self.name, "filters": list(self.filters), "qos": self.qos,
                "faulted": self.faulted, "persistent": self.persistent,
                "ups": list(self.ups), "downs": list(self.downs),
                "seen": {k: bytes(v) for k, v in self.seen.items()},
                "ooo": dict(self.ooo), "wills": dict(self.wills), "foreign": self.foreign,
                "received": self.received}

    @classmethod
    def from_export(cls, data: dict[str, Any], run: int) -> SubscriberRec:
        """The inverse of :meth:`export`."""
        rec = cls(data["name"], tuple(data["filters"]), data["qos"], run,
                  data.get("persistent", False))
        rec.faulted = data["faulted"]
        rec.ups = [(int(t), bool(r)) for t, r in data.get("ups", ())]
        rec.downs = [(int(t), {int(k): v for k, v in last.items()})
                     for t, last in data.get("downs", ())]
        rec.seen = {int(k): bytearray(v) for k, v in data["seen"].items()}
        rec.ooo = Counter({int(k): v for k, v in data["ooo"].items()})
        rec.wills = Counter({int(k): v for k, v in data["wills"].items()})
        rec.foreign = data["foreign"]
        rec.received = data["received"]
        return rec


_COUNTER_SECOND = {"connect_ok": "connects", "connect_failed": "connect_failures",
                   "disconnects": "disconnects"}


class Stats:
    """Everything one process measures during a run."""

    def __init__(self, run: int, t0: float) -> None:
        self.run = run
        self.t0 = t0  # time.monotonic() of the run's start (shared by all workers)
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.connect_latency = Histogram()
        self.connect_phases = ConnectPhases()
        self.ack_latency = Histogram()
        self.latency = Histogram()
        self.rr_latency = Histogram()
        self.series: dict[int, Second] = {}
        self.streams: dict[int, StreamRec] = {}
        self.subscribers: list[SubscriberRec] = []
        self.will_topics: dict[int, str] = {}
        self.wills_expected: Counter[int] = Counter()
        #: Each end of a will-bearing connection without DISCONNECT: (source, when
        #: (monotonic ns), cause): ``client_abort`` (we closed the socket),
        #: ``broker_closed`` (the broker closed it), ``connection_lost`` (reset, error).
        self.will_ends: list[tuple[int, int, str]] = []
        #: When an accounting subscriber lost its connection without our doing (not
        #: a fault, not stuck): with device connections lost at the same moment, the
        #: sign that the broker itself went away.
        self.subscriber_drops: list[int] = []
        #: The first detail seen per error name (e.g. why a TLS handshake failed).
        self.details: dict[str, str] = {}
        self.devices_target = 0
        self.devices_connected_ever = 0
        self.connected = 0
        self.peak_connected = 0
        self.stage = ""
        self.published = 0
        self.delivered = 0
        self.cpu_seconds = 0.0
        self.wall_seconds = 0.0
        self.rss_bytes = 0
        self.rss_baseline = 0
        self.processes = 1

    # -------------------------------------------------------------- hot path

    def second(self) -> Second:
        """The bucket of the current second."""
        idx = int(time.monotonic() - self.t0)
        sec = self.series.get(idx)
        if sec is None:
            sec = self.series[idx] = Second()
        return sec

    def on_published(self, key: int, topic: str, qos: int, seq: int, ts_ns: int = -1) -> None:
        """An accounted PUBLISH left for the broker; ``ts_ns`` taken before it was written."""
        rec = self.streams.get(key)
        if rec is None:
            rec = self.streams[key] = StreamRec(topic, qos)
        rec.record_time(seq, ts_ns if ts_ns >= 0 else time.monotonic_ns())
        rec.sent = max(rec.sent, seq)
        if qos:
            rec.unconfirmed.add(seq)
        self.published += 1
        self.second().published += 1

    def on_confirmed(self, key: int, seq: int, latency_us: int) -> None:
        """The broker took ownership (PUBACK, or PUBREC for QoS 2)."""
        rec = self.streams.get(key)
        if rec is not None:
            rec.unconfirmed.discard(seq)
        self.ack_latency.record(latency_us)
        self.second().acked += 1

    def on_delivered(self, latency_us: int) -> None:
        """A subscriber received an accounted message that took ``latency_us``."""
        self.delivered += 1
        sec = self.second()
        sec.delivered += 1
        self.latency.record(latency_us)
        sec.latency.record(latency_us)

    def count(self, name: str, n: int = 1) -> None:
        """A plain event counter."""
        self.counters[name] += n
        attr = _COUNTER_SECOND.get(name)
        if attr is not None:
            sec = self.second()
            setattr(sec, attr, getattr(sec, attr) + n)

    def error(self, name: str, n: int = 1) -> None:
        """An error counter (shown live and in the report)."""
        self.errors[name] += n
        self.second().errors += n

    def error_detail(self, name: str, detail: str) -> None:
        """Keep the first explanation of an error (the report prints it with the error)."""
        if detail and name not in self.details:
            self.details[name] = detail

    def set_connected(self, delta: int) -> None:
        """A connection came up (+1) or went down (-1)."""
        self.connected += delta
        self.peak_connected = max(self.peak_connected, self.connected)

    def sample(self) -> None:
        """Record the connected gauge into the current second (called every second)."""
        self.second().connected = self.connected

    # -------------------------------------------------------------- live snapshot

    def snapshot(self) -> dict[str, Any]:
        """A small summary for the live view (sent by workers every second)."""
        idx = int(time.monotonic() - self.t0) - 1
        last = self.series.get(idx, Second())
        return {"connected": self.connected, "target": self.devices_target,
                "ever": self.devices_connected_ever,
                "failed": self.counters["connect_failed"], "published": self.published,
                "delivered": self.delivered, "errors": sum(self.errors.values()),
                "stage": self.stage, "last": {"published": last.published,
                                              "delivered": last.delivered,
                                              "latency": last.latency.to_dict()}}

    # -------------------------------------------------------------- workers

    def export(self) -> dict[str, Any]:
        """Everything, in a picklable form."""
        return {
            "counters": dict(self.counters), "errors": dict(self.errors),
            "connect_latency": self.connect_latency.to_dict(),
            "connect_phases": self.connect_phases.to_dict(),
            "ack_latency": self.ack_latency.to_dict(), "latency": self.latency.to_dict(),
            "rr_latency": self.rr_latency.to_dict(),
            "series": {i: {"published": s.published, "delivered": s.delivered,
                           "acked": s.acked, "connects": s.connects,
                           "connect_failures": s.connect_failures,
                           "disconnects": s.disconnects, "errors": s.errors,
                           "connected": s.connected, "latency": s.latency.to_dict()}
                       for i, s in self.series.items()},
            "streams": {k: (s.topic, s.qos, s.sent, sorted(s.unconfirmed), s.base_ns,
                            s.times.tobytes())
                        for k, s in self.streams.items()},
            "subscribers": [s.export() for s in self.subscribers],
            "will_topics": dict(self.will_topics), "wills_expected": dict(self.wills_expected),
            "will_ends": list(self.will_ends), "subscriber_drops": list(self.subscriber_drops),
            "details": dict(self.details),
            "devices_target": self.devices_target,
            "devices_connected_ever": self.devices_connected_ever,
            "peak_connected": self.peak_connected, "published": self.published,
            "delivered": self.delivered, "cpu_seconds": self.cpu_seconds,
            "wall_seconds": self.wall_seconds, "rss_bytes": self.rss_bytes,
            "rss_baseline": self.rss_baseline,
        }

    def merge_export(self, data: dict[str, Any]) -> None:
        """Add a worker's :meth:`export` into this (parent) object."""
        self.counters.update(data["counters"])
        self.errors.update(data["errors"])
        self.connect_latency.merge(Histogram.from_dict(data["connect_latency"]))
        self.connect_phases.merge_dict(data["connect_phases"])
        self.ack_latency.merge(Histogram.from_dict(data["ack_latency"]))
        self.latency.merge(Histogram.from_dict(data["latency"]))
        self.rr_latency.merge(Histogram.from_dict(data["rr_latency"]))
        for i, s in data["series"].items():
            sec = Second(s["published"], s["delivered"], s["acked"], s["connects"],
                         s["connect_failures"], s["disconnects"], s["errors"], s["connected"],
                         Histogram.from_dict(s["latency"]))
            mine = self.series.setdefault(int(i), Second())
            mine.merge(sec)
        for k, (topic, qos, sent, unconfirmed, base_ns, raw) in data["streams"].items():
            times = _times()
            times.frombytes(raw)
            self.streams[int(k)] = StreamRec(topic, qos, sent, set(unconfirmed), base_ns, times)
        self.subscribers.extend(SubscriberRec.from_export(s, self.run)
                                for s in data["subscribers"])
        self.will_topics.update({int(k): v for k, v in data["will_topics"].items()})
        self.wills_expected.update({int(k): v for k, v in data["wills_expected"].items()})
        self.will_ends.extend((int(a), int(b), str(c)) for a, b, c in data["will_ends"])
        self.subscriber_drops.extend(int(t) for t in data["subscriber_drops"])
        for name, detail in data["details"].items():
            self.error_detail(name, detail)
        self.devices_target += data["devices_target"]
        self.devices_connected_ever += data["devices_connected_ever"]
        self.peak_connected += data["peak_connected"]
        self.published += data["published"]
        self.delivered += data["delivered"]
        self.cpu_seconds += data["cpu_seconds"]
        self.wall_seconds = max(self.wall_seconds, data["wall_seconds"])
        self.rss_bytes += data["rss_bytes"]
        self.rss_baseline += data["rss_baseline"]
