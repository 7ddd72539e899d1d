"""Fixtures of the bridge tests: mosquitto (Debian package) and iotbroker processes on
free loopback ports, and a YAML builder for ``bridges:``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotbroker.codec.packets import PubAck, PubComp, Publish, PubRec, PubRel
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mosquitto:
    """A mosquitto process started by a test (restartable on the same port)."""

    workdir: Path
    port: int
    extra: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"mosquitto-{self.port}.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> Mosquitto:
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        f"max_queued_messages 100000\nmax_inflight_messages 100\n{self.extra}")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf), "-v"], stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited:\n{self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def make_mosquitto(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed (scripts/test.sh installs it)")
    started: list[Mosquitto] = []

    def factory(extra: str = "", port: int | None = None, start: bool = True) -> Mosquitto:
        m = Mosquitto(tmp_path, port or free_port(), extra)
        started.append(m)
        return m.start() if start else m

    yield factory
    for m in started:
        m.stop()


def bridge_yaml(name: str, port: int, topics: list[str], *, protocol: int = 5,
                extra: str = "", client_id: str | None = None) -> str:
    """One entry of ``bridges:`` (topics written as YAML flow mappings)."""
    rules = "".join(f"      - {t}\n" for t in topics)
    return (
        f"  - name: {name}\n"
        f"    address: [127.0.0.1:{port}]\n"
        f"    protocol: {protocol}\n"
        f"    client_id: {client_id or 'gw-' + name}\n"
        f"    reconnect_delay: 100ms\n"
        f"    reconnect_delay_max: 500ms\n"
        f"{extra}"
        f"    topics:\n{rules}"
    )


def config_with_bridges(bridges: str, storage: str = "memory", sys_interval: str = "") -> str:
    sys_topics = (f"sys_topics:\n  enabled: true\n  interval: {sys_interval}\n" if sys_interval
                  else "sys_topics:\n  enabled: false\n")
    return (
        "listeners:\n  - name: default\n    host: 127.0.0.1\n    port: 0\n"
        f"storage:\n  backend: {storage}\n  path: data\n"
        "logging:\n  level: INFO\n"
        f"{sys_topics}"
        f"bridges:\n{bridges}"
    )


def wait_for_log(proc: BrokerProcess | Mosquitto, text: str, timeout: float = 10.0,
                 count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.log_text().count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged {count}x within {timeout}s:\n{proc.log_text()}")


def collect(client: RawClient, count: int, timeout: float = 10.0) -> list[Publish]:
    """Receive ``count`` PUBLISH packets, answering every QoS handshake as it comes
    (PUBRELs may interleave with later PUBLISHes)."""
    got: list[Publish] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"received {len(got)} of {count} messages: {got[-3:]}")
        packet = client.recv(left)
        if isinstance(packet, Publish):
            got.append(packet)
            if packet.qos == 1:
                client.send(PubAck(packet.packet_id or 0))
            elif packet.qos == 2:
                client.send(PubRec(packet.packet_id or 0))
        elif isinstance(packet, PubRel):
            client.send(PubComp(packet.packet_id))
    return got


def quiet(client: RawClient, wait: float = 0.5) -> None:
    """No PUBLISH arrives within ``wait`` seconds (handshakes still pending are answered)."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            packet = client.recv(left)
        except TimeoutError:
            return
        if isinstance(packet, PubRel):
            client.send(PubComp(packet.packet_id))
            continue
        raise AssertionError(f"unexpected packet {packet!r}")
