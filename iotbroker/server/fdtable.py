"""The process's descriptor table, grown once at start-up (issue 19, fleet connects).

Linux keeps a process's file descriptors in a table that starts small (64 entries) and
is doubled when a new descriptor does not fit. When the table is shared by several
threads (the broker always has some: libuv's worker pool, RocksDB's), each doubling
waits for an RCU grace period (``expand_fdtable`` calls ``synchronize_rcu`` when
``files->count > 1``) inside the ``accept4`` that needed the room: the event loop is
blocked, off the CPU, for that long. Measured in the 10,000-device fleet benchmark
(``devices-sim/bench_scale.py --probe --pcap``, kernel stack sampled from
``/proc/PID/stack``: ``synchronize_rcu_normal < expand_files < alloc_fd <
__sys_accept4``): 7-12 ms per doubling on this machine, at 512, 1,024, ... 8,192
connections, and every CONNECT that arrived meanwhile waited in the kernel's accept
queue — 1-2 % of a fleet connecting at 1,000/s, the whole of iotbroker's connect p99
above mosquitto's (single-threaded, so its table grows without the wait).

:func:`reserve` grows the table once, before the broker accepts anything (and before
its store starts threads, so without the wait at all), to the open-files limit capped
at :data:`RESERVE_MAX` descriptors. Its cost is kernel memory: 8 bytes a descriptor
(512 KiB at the cap). Past the cap the table still doubles as before.
"""

from __future__ import annotations

import contextlib
import os
import resource

#: The most descriptors reserved up front (the table's memory: 8 bytes each).
RESERVE_MAX = 65_536


def reserve(limit: int | None = None) -> int:
    """Grow this process's descriptor table to hold ``limit`` descriptors (default:
    the soft open-files limit, at most :data:`RESERVE_MAX`); returns the number
    reserved (0: nothing done). Opens and closes one descriptor: ``dup2`` to the
    highest slot makes the kernel size the table for it, and a table never shrinks."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = RESERVE_MAX if limit is None else limit
    if soft != resource.RLIM_INFINITY:
        wanted = min(wanted, soft)
    if wanted <= 64:
        return 0
    with contextlib.suppress(OSError):
        probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            high = os.dup2(probe, wanted - 1, inheritable=False)
            os.close(high)
        finally:
            os.close(probe)
        return wanted
    return 0
