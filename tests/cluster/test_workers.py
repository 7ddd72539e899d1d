"""``iotbroker --workers N`` (docs/cluster.md, "Workers"): N broker processes share
the listener (SO_REUSEPORT) under one supervisor, as nodes of an embedded nats-server;
a message published on one worker reaches subscribers on every worker; a worker killed
with -9 is restarted; SIGTERM stops them all and the nats-server; every worker's log
line says which worker wrote it; a worker that cannot start at all (a port in use, a
configuration only the worker can find wrong, one that dies at once again and again)
makes the supervisor stop everything and exit 1 instead of restarting it for ever."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.test_paho import Paho

CONFIG = """\
listeners:
  - name: default
    host: 127.0.0.1
    port: 0
storage:
  backend: memory
sys_topics:
  enabled: false
logging:
  level: INFO
"""


class Supervisor:
    def __init__(self, workdir: Path, workers: int, args: list[str] | None = None,
                 config: str = CONFIG) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "w.yaml").write_text(config)
        self.log_path = workdir / "supervisor.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 (the child's)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotbroker", "run", "--config", "w.yaml",
             "--workers", str(workers), *(args or [])],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        log.close()
        self.workers = workers

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.findall(pattern, self.log())
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} x{count} not in the log:\n{self.log()}")

    def ready(self) -> int:
        """Every worker listens and has its buckets open; returns the shared port."""
        found = self.wait_for(r"\[w(\d+)\] iotbroker\.\S+: listening on 127\.0\.0\.1:(\d+)",
                              self.workers)
        # each worker says so itself, on one port, shared
        assert sorted(int(w) for w, _ in found) == list(range(self.workers)), found
        ports = [p for _, p in found]
        assert len(set(ports)) == 1, ports
        self.wait_for(r"retained messages from bucket", self.workers)
        self.wait_for(r"session bucket .* open", self.workers)
        return int(ports[0])

    def worker_pids(self) -> dict[int, int]:
        pids: dict[int, int] = {}
        for index, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", self.log()):
            pids[int(index)] = int(pid)
        return pids

    def exited(self, timeout: float) -> int:
        """The supervisor's exit code; it must end by itself within ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the supervisor still runs after {timeout}s:\n"
                                 f"{self.log()}") from None

    def children(self) -> list[int]:
        """PIDs of every worker it started and of its nats-server."""
        return [*self.every_worker_pid(),
                *(int(p) for p in re.findall(r"nats-server pid (\d+)", self.log()))]

    def every_worker_pid(self) -> list[int]:
        return [int(pid) for _, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)",
                                                  self.log())]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                for pid in self.worker_pids().values():
                    _kill(pid)
                raise
        return self.proc.returncode


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[1].split()[0] == "Z")


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path / "workers", workers=2)
    yield sup
    sup.stop()


def test_workers_share_the_port_and_route_between_them(supervisor: Supervisor) -> None:
    port = supervisor.ready()
    subscribers = []
    try:
        for i in range(16):  # the kernel spreads them over both workers
            sub = Paho("127.0.0.1", port, f"sub{i}", 5)
            sub.connect()
            sub.subscribe("w/#", qos=1)
            subscribers.append(sub)
        pub = Paho("127.0.0.1", port, "pub", 5)
        pub.connect()
        subscribers.append(pub)
        # every subscriber gets probes once the other worker has its interest
        deadline = time.monotonic() + 15
        waiting = set(range(16))
        while waiting and time.monotonic() < deadline:
            pub.publish("w/probe", b"probe", qos=1)
            time.sleep(0.05)
            for i in list(waiting):
                if not subscribers[i].messages.empty():
                    waiting.discard(i)
        assert not waiting, f"subscribers {sorted(waiting)} got no probe"
        for i in range(10):
            pub.publish("w/data", f"{i}".encode(), qos=1)
        pub.publish("w/end", b"end", qos=1)
        for sub in subscribers[:16]:
            got = [m.payload for m in sub.receive_until("w/end") if m.topic == "w/data"]
            assert got == [f"{i}".encode() for i in range(10)]
    finally:
        for client in subscribers:
            client.disconnect()
    assert supervisor.stop() == 0
    log = supervisor.log()
    assert "all workers stopped" in log
    received = [int(n) for n in re.findall(r"left \(forwarded \d+, received (\d+)", log)]
    assert len(received) == 2 and sum(received) > 0, received  # it crossed workers


def test_a_killed_worker_is_restarted_and_sigterm_stops_everything(
    supervisor: Supervisor,
) -> None:
    port = supervisor.ready()
    pids = supervisor.worker_pids()
    os.kill(pids[1], signal.SIGKILL)
    supervisor.wait_for(rf"worker 1 \(pid {pids[1]}\) exited with -9; restarting")
    supervisor.wait_for(r"worker 1 started", 2)
    new_pid = supervisor.worker_pids()[1]
    assert new_pid != pids[1]
    supervisor.wait_for(r"session bucket .* open", 3)
    client = Paho("127.0.0.1", port, "after", 5)
    client.connect()
    client.disconnect()
    nats_pids = [int(p) for p in re.findall(r"nats-server pid (\d+)", supervisor.log())]
    assert len(nats_pids) == 1
    assert supervisor.stop() == 0
    for pid in [pids[0], new_pid, *nats_pids]:
        assert not _alive(pid), pid


def test_listen_and_data_dir_work_with_workers(tmp_path: Path) -> None:
    """The contract: ``--listen`` and ``--data-dir`` work with ``--workers`` as
    without; each worker keeps its RocksDB in DATA/w<N>, the embedded nats-server
    its JetStream in DATA/nats."""
    data = tmp_path / "data"
    sup = Supervisor(tmp_path / "w", workers=2, args=[
        "--listen", "127.0.0.1:0", "--data-dir", str(data)],
        config=CONFIG.replace("backend: memory", "backend: rocksdb"))
    try:
        port = sup.ready()
        client = Paho("127.0.0.1", port, "c", 5)
        client.connect()
        client.disconnect()
        assert {p.name for p in data.iterdir()} >= {"w0", "w1", "nats"}
    finally:
        assert sup.stop() == 0


def test_a_port_in_use_makes_the_supervisor_give_up(tmp_path: Path) -> None:
    """The listener's port is held by another program (without SO_REUSEPORT): each
    worker says it cannot listen, and the supervisor stops and exits 1 instead of
    restarting them for ever."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sup = Supervisor(tmp_path / "w", workers=2, args=["--listen", f"127.0.0.1:{port}"])
        assert sup.exited(30) == 1
    log = sup.log()
    assert re.search(rf"\[w\d\] iotbroker\.\S+: cannot start: listeners\[0\]\.port: "
                     rf"'127\.0\.0\.1:{port}'", log), log
    assert re.search(r"worker \d \(pid \d+\) cannot start .*: giving up, stopping all "
                     r"workers", log), log
    assert "restarting" not in log
    assert "all workers stopped" in log
    assert sup.children() and not any(_alive(pid) for pid in sup.children())


def test_a_configuration_error_only_a_worker_finds_makes_the_supervisor_give_up(
    tmp_path: Path,
) -> None:
    """A password file that does not exist passes the supervisor's reading of the
    configuration (it is opened when a broker starts): the worker refuses to start,
    the supervisor exits 1 naming it."""
    config = CONFIG + f"auth:\n  password_file: {tmp_path / 'missing.passwd'}\n"
    sup = Supervisor(tmp_path / "w", workers=2, config=config)
    assert sup.exited(30) == 1
    log = sup.log()
    assert "missing.passwd" in log
    assert re.search(r"worker \d \(pid \d+\) (cannot start|has a configuration error)"
                     r".*: giving up", log), log
    assert "restarting" not in log
    assert not any(_alive(pid) for pid in sup.children())


def test_a_worker_that_keeps_dying_at_once_is_given_up_on(supervisor: Supervisor) -> None:
    """A worker killed within seconds of each start, GIVE_UP_AFTER (5) times in a row:
    restarted four times (0.2 s, 0.4 s, ... pauses), then the supervisor gives up."""
    supervisor.ready()
    for attempt in range(1, 6):
        pid = supervisor.every_worker_pid()[-1] if attempt > 1 else supervisor.worker_pids()[1]
        os.kill(pid, signal.SIGKILL)
        if attempt < 5:
            supervisor.wait_for(r"worker 1 started", attempt + 1)
    assert supervisor.exited(30) == 1
    log = supervisor.log()
    assert len(re.findall(r"worker 1 \(pid \d+\) exited with -9; restarting", log)) == 4
    assert re.search(r"worker 1 \(pid \d+\) died within 5s of its start 5 times in a row "
                     r"\(last exit code -9\): giving up", log), log
    assert not any(_alive(pid) for pid in supervisor.children())
