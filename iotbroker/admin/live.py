"""The dashboard's live figures: one sample a second, the last 15 minutes kept.

A sample reads the broker's counters (plain integers, :class:`~iotbroker.metrics.Metrics`)
and turns them into rates; nothing is added to the message path. The in-flight and
queued totals walk the sessions, so they are read only while a dashboard is watching
(and then at most every :data:`WALK_EVERY` seconds with many sessions).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from iotbroker.engine.engine import Engine

#: Seconds of history kept (15 minutes at one sample a second).
HISTORY = 900
#: With more sessions than this, the in-flight/queued walk runs every WALK_EVERY samples.
WALK_LIMIT = 10_000
WALK_EVERY = 5


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    connections: int
    msg_in: float
    msg_out: float
    dropped: float
    inflight: int
    queued: int

    def as_json(self) -> dict[str, float]:
        return {"t": self.t, "connections": self.connections, "msg_in": self.msg_in,
                "msg_out": self.msg_out, "dropped": self.dropped,
                "inflight": self.inflight, "queued": self.queued}


def _dropped(engine: Engine) -> int:
    m = engine.metrics
    return (m.messages_dropped_queue_full + m.messages_dropped_qos0_offline
            + m.messages_dropped_slow_consumer + m.messages_dropped_too_large)


class Sampler:
    """Rates from counter deltas; :meth:`take` is called once a second by the server."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.samples: deque[Sample] = deque(maxlen=HISTORY)
        self.watchers = 0
        self._last: tuple[float, int, int, int] | None = None
        self._walk = (0, 0)
        self._count = 0

    def take(self, now: float) -> Sample:
        engine = self.engine
        m = engine.metrics
        current = (now, m.publish_received, m.publish_sent, _dropped(engine))
        last = self._last or current
        dt = max(now - last[0], 1e-3)
        self._last = current
        self._count += 1
        registry = engine.registry
        if self.watchers and (len(registry) <= WALK_LIMIT or self._count % WALK_EVERY == 0):
            inflight = queued = 0
            for session in list(registry.sessions.values()):
                inflight += len(session.inflight)
                queued += session.queued_count
            self._walk = (inflight, queued)
        sample = Sample(
            t=round(now, 3),
            connections=m.clients_connected,
            msg_in=round((current[1] - last[1]) / dt, 1),
            msg_out=round((current[2] - last[2]) / dt, 1),
            dropped=round((current[3] - last[3]) / dt, 1),
            inflight=self._walk[0],
            queued=self._walk[1],
        )
        self.samples.append(sample)
        return sample
