"""What the in-process broker benchmarks share (``connect_path.py``,
``connect_stages.py``, ``publish_path.py``): a real
:class:`~iotbroker.server.broker.Broker` on the running loop with the config of
``e2e.py``, a stand-in transport, the GC set up as ``run_broker`` does around the timed
part, and the runs repeated on a fresh uvloop loop with their median reported.

The benchmarks run as scripts (``python benchmarks/x.py``): each puts the repository
root on ``sys.path`` and imports this module as ``benchmarks.inproc``.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import uvloop

from iotbroker.config import parse_config
from iotbroker.server.broker import GC_THRESHOLDS, Broker, open_store
from iotbroker.server.logsetup import bind_loop, setup_logging
from iotbroker.server.transport import ClientProtocol
from iotbroker.storage.memory import MemoryStore

T = TypeVar("T")

CONFIG: dict[str, Any] = {
    "listeners": [{"name": "bench", "type": "tcp", "host": "127.0.0.1", "port": 1883}],
    "storage": {"backend": "memory"},
    "sys_topics": {"enabled": False},
    "logging": {"level": "WARNING"},
    "mqtt": {"max_inflight": 20, "max_queued_messages": 10000},
}


class StandInTransport:
    """What ClientProtocol and the broker call on a transport; writes are counted."""

    __slots__ = ("writes",)

    def __init__(self) -> None:
        self.writes = 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def make_broker(loop: Any, source: str, **sections: Any) -> Broker:
    """A broker on ``loop`` with :data:`CONFIG` (``sections`` replace its top-level
    sections, e.g. ``logging``, ``storage``): a memory store, or the configured one."""
    config = parse_config({**CONFIG, **sections}, source)
    setup_logging(config.logging)
    bind_loop(loop)
    memory = config.storage.backend == "memory"
    return Broker(config, MemoryStore() if memory else open_store(config), loop)


@contextmanager
def frozen_gc() -> Iterator[None]:
    """Around the timed part: what exists is frozen out of the collector, whose
    thresholds are the broker's (``run_broker``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.unfreeze()


def check_connacks(protos: Iterable[ClientProtocol], clients: int) -> None:
    """Every CONNECT was answered (one write per stand-in transport)."""
    answered = sum(p.transport.writes for p in protos if p.transport)  # type: ignore[attr-defined]
    if answered != clients:
        raise SystemExit(f"{answered} CONNACKs written for {clients} CONNECTs")


def cancel_timers(broker: Broker, protos: Iterable[ClientProtocol]) -> None:
    """The connections' keep-alive entries off the broker's timer wheel."""
    for proto in protos:
        broker.timers.cancel(proto)


def repeat(reps: int, run: Callable[[], Coroutine[Any, Any, T]]) -> list[T]:
    """``reps`` runs of ``run()``, each on a fresh uvloop loop."""
    return [uvloop.run(run()) for _ in range(reps)]


def median_and_runs(values: Sequence[float], sep: str) -> tuple[float, str]:
    """The median of ``values`` and every value (two decimals), joined by ``sep``."""
    return statistics.median(values), sep.join(f"{v:.2f}" for v in values)
