"""The descriptor table is grown once at start-up (server/fdtable.py, issue 19): a
multi-threaded process's accept that needs a bigger table waits for an RCU grace
period, blocking the loop while a fleet connects. Linux only (``FDSize`` in
``/proc/PID/status`` is the table's size)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iotbroker.server.fdtable import RESERVE_MAX
from tests.helpers.broker_process import BrokerProcess, broker_config

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="needs Linux /proc")


def _fd_size(pid: int | str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^FDSize:\s+(\d+)", text, re.M)
    assert match is not None
    return int(match.group(1))


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files limit")


def test_reserve_grows_the_table_to_the_limit_and_leaves_no_descriptor_open() -> None:
    """In a fresh process with a soft limit of 3,000: the table holds 3,000 after
    ``reserve()`` (64 before), the open descriptors are the same, and a 2,000th
    descriptor does not grow it again."""
    code = textwrap.dedent("""
        import os, re, resource
        from iotbroker.server import fdtable
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (3000, hard))
        status = lambda: open("/proc/self/status").read()
        size = lambda: int(re.search(r"FDSize:\\s+(\\d+)", status()).group(1))
        before, fds = size(), sorted(os.listdir("/proc/self/fd"))
        reserved = fdtable.reserve()
        after, fds_after = size(), sorted(os.listdir("/proc/self/fd"))
        high = os.dup2(0, 1999)
        os.close(high)
        print(before, reserved, after, size(), fds == fds_after)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    before, reserved, after, later, same = int(out[0]), int(out[1]), int(out[2]), \
        int(out[3]), out[4]
    assert before < 3000
    assert reserved == 3000
    assert after >= 3000
    assert later == after
    assert same == "True"


def test_reserve_is_capped() -> None:
    """Never more than RESERVE_MAX (the table's kernel memory), whatever the limit."""
    code = ("from iotbroker.server import fdtable; "
            f"print(fdtable.reserve({RESERVE_MAX * 4}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert int(out) <= RESERVE_MAX


def test_the_running_broker_has_its_table_before_the_first_accept(tmp_path: Path) -> None:
    """The broker process's table already holds its open-files limit (capped) when it
    listens, and an MQTT client connects as before."""
    broker = BrokerProcess(tmp_path, broker_config()).start()
    try:
        assert broker.proc is not None
        pid = broker.proc.pid
        wanted = min(_soft_nofile(pid), RESERVE_MAX)
        assert _fd_size(pid) >= wanted
        with socket.create_connection((broker.host, broker.port), timeout=5) as s:
            s.sendall(bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 0]))
            assert s.recv(4) == b"\x20\x02\x00\x00"  # CONNACK accepted [MQTT-3.2.2-1]
    finally:
        broker.stop()
