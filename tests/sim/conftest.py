"""Fixtures of the simulator tests: mosquitto (Debian package) on a free loopback port.

iotbroker comes from the project's ``make_broker`` / ``broker`` fixtures.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@dataclass
class Mosquitto:
    """A mosquitto process started by a test."""

    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bind port 0, read it, close)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path, extra: str = "") -> Mosquitto:
    """``mosquitto -c conf`` with ``listener PORT 127.0.0.1`` and anonymous access."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    for _attempt in range(5):
        port = free_port()
        conf = workdir / f"mosquitto-{port}.conf"
        log = workdir / f"mosquitto-{port}.log"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        f"max_queued_messages 100000\n{extra}")
        with open(log, "wb") as out:
            proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=out,
                                    stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return Mosquitto("127.0.0.1", port, proc, log)
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise RuntimeError(f"mosquitto did not start:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One mosquitto for the session."""
    m = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield m
    m.proc.terminate()
    try:
        m.proc.wait(10)
    except subprocess.TimeoutExpired:
        m.proc.kill()
        m.proc.wait()


@pytest.fixture
def make_mosquitto(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """A mosquitto of the test's own (with extra config lines)."""
    started: list[Mosquitto] = []

    def factory(extra: str = "") -> Mosquitto:
        m = start_mosquitto(tmp_path, extra)
        started.append(m)
        return m

    yield factory
    for m in started:
        m.proc.terminate()
        m.proc.wait(10)
