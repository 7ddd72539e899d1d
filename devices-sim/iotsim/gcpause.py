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
once a second after a young collection (``gc.collect(1)``, which only sees what the
last second allocated and kept): a full collection then scans at most a second's
worth of new objects. Objects frozen are still freed by reference counting; only a
reference cycle among them that becomes garbage later stays until :func:`release`
(the end of the run), which unfreezes and collects everything once.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect the young generations and freeze what survived (call once a second)."""
    gc.collect(1)
    gc.freeze()


def start() -> None:
    """The fleet is built: one full collection, then freeze it."""
    gc.collect()
    gc.freeze()


def release() -> None:
    """The run is over: what was frozen is scanned (and collected) again."""
    gc.unfreeze()
    gc.collect()
