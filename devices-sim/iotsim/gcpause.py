"""Keep the simulator's own garbage collections out of what it measures.

A fleet of 10,000 devices is a few hundred thousand long-lived Python objects (clients,
their connections and transports, lifecycle tasks). CPython's cyclic collector scans
them again in every full collection, and those come often while a fleet connects (the
long-lived heap keeps growing by more than a quarter): measured in the 10,000-device
fleet benchmark (``devices-sim/bench_scale.py --probe``), 7 full collections per run of
90-390 ms each, and every message in flight at that moment took that much longer,
whichever broker was measured.

So the fleet's long-lived objects are moved out of the collector's way once they are
built (``gc.freeze()``: later collections do not scan them) and, while the run goes on,
once a second after a collection of the youngest generation (``gc.collect(0)``, at
most a few hundred objects): a full collection then scans at most a second's worth of
new objects. (Collecting the middle generation there too cost 5-9 ms a second, itself a
stall in the measured latency.) Objects frozen are still freed by reference counting;
only a reference cycle among them that becomes garbage later stays until
:func:`release` (the end of the run), which unfreezes and collects everything once.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect the youngest generation and freeze the rest (call once a second)."""
    gc.collect(0)
    gc.freeze()


def start() -> None:
    """The fleet is built: one full collection, then freeze it."""
    gc.collect()
    gc.freeze()


def release() -> None:
    """The run is over: what was frozen is scanned (and collected) again."""
    gc.unfreeze()
    gc.collect()
