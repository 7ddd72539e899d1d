"""Memory probe for ``benchmarks/idle_anatomy.py`` (issue 19): put this directory on the
broker's ``PYTHONPATH``; every SIGUSR1 writes one JSON snapshot of the process's memory
to ``$IDLEPROBE_OUT.<n>``: RSS, glibc ``mallinfo2``, pymalloc's arena statistics
(``sys._debugmallocstats``), gc-tracked objects per type (count, ``sys.getsizeof``
sum) and, with ``IDLEPROBE_TRACE=1`` (tracemalloc from start-up, 1 frame), the Python
allocations per source line; with ``IDLEPROBE_TRIM=1`` also the RSS after a
``malloc_trim(0)`` (taken after the rest). Not loaded unless ``IDLEPROBE_OUT`` is set.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import signal
import sys
import tempfile
import tracemalloc
from collections import Counter

_OUT = os.environ.get("IDLEPROBE_OUT")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


def _mallinfo() -> dict[str, int]:
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _MallInfo2
    info = fn()
    return {name: int(getattr(info, name)) for name, _ in _MallInfo2._fields_}


def _pymalloc() -> dict[str, int]:
    with tempfile.TemporaryFile("w+") as tmp:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read()
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("#") and "=" in line:
            key, _, val = line[1:].partition("=")
            with contextlib.suppress(ValueError):
                out[key.strip()] = int(val.strip().replace(",", ""))
        elif "unused pools *" in line:  # "N unused pools * 16384 bytes = B"
            with contextlib.suppress(ValueError):
                out["bytes in unused pools"] = int(
                    line.rpartition("=")[2].strip().replace(",", ""))
        elif line.lstrip().startswith(("bytes in allocated", "bytes in available",
                                         "bytes lost to")):
            key, _, val = line.partition("=")
            with contextlib.suppress(ValueError):
                out[key.strip()] = int(val.strip().replace(",", ""))
    return out


def _types() -> dict[str, list[int]]:
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] += 1
        with contextlib.suppress(TypeError):
            sizes[name] += sys.getsizeof(obj)
    return {name: [counts[name], sizes[name]] for name in counts}


_taken = [0]


def _dump(_signum: int, _frame: object) -> None:
    _taken[0] += 1
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    data: dict[str, object] = {"rss": rss, "mallinfo": _mallinfo(), "pymalloc": _pymalloc(),
                               "types": _types()}
    if os.environ.get("IDLEPROBE_TRIM") == "1":
        # What a glibc malloc_trim(0) now would give back (the RSS after it).
        ctypes.CDLL(None).malloc_trim(0)
        with open("/proc/self/statm") as f:
            data["rss_trimmed"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot()
        data["traced"] = {f"{s.traceback[0].filename}:{s.traceback[0].lineno}": [s.count, s.size]
                          for s in snap.statistics("lineno")}
    with open(f"{_OUT}.{_taken[0]}", "w") as f:
        json.dump(data, f)


if _OUT:
    if os.environ.get("IDLEPROBE_TRACE") == "1":
        tracemalloc.start(1)
    signal.signal(signal.SIGUSR1, _dump)
