"""Start the real broker the way a user does: ``python -m iotbroker run ...``.

The broker listens on port 0 and the bound port is read from its log line
``listening on HOST:PORT``, so tests never race for a free port.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

#: DEBUG logs a line per packet (iotbroker.packets); tests keep the rest of DEBUG and
#: leave those out (load tests would write millions), unless they ask for them.
QUIET_PACKETS = "  levels:\n    iotbroker.packets: INFO\n"

_LISTENING = re.compile(r"listening on (\S+):(\d+) \((\w+), listener '([^']*)'\)")


class BrokerProcess:
    """A broker subprocess with its config file, data directory and log file."""

    def __init__(self, workdir: Path, config_text: str, name: str = "broker") -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(config_text)
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.ports: dict[str, int] = {}
        self._log_offset = 0

    def start(self, timeout: float = 15.0) -> BrokerProcess:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open by the child)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotbroker", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            found = _LISTENING.findall(text)
            if found:
                time.sleep(0.05)
                found = _LISTENING.findall(self.log_text())
                for _host, port, _kind, name in found:
                    self.ports[name] = int(port)
                self.host, self.port = found[0][0], int(found[0][1])
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"broker did not start within {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        """The log written since the last start."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait: a clean shutdown."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: the crash the persistence tests survive."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> BrokerProcess:
        self.stop()
        return self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def broker_config(
    storage: str = "memory",
    data_dir: str = "data",
    extra: str = "",
    listeners: str | None = None,
    durability: str = "os",
) -> str:
    """A YAML config for tests: loopback port 0, chosen storage, extra YAML appended."""
    listen = listeners or (
        "listeners:\n  - name: default\n    type: tcp\n    host: 127.0.0.1\n    port: 0\n"
    )
    sys_topics = "" if "sys_topics:" in extra else "sys_topics:\n  enabled: false\n"
    park = os.environ.get("IOTBROKER_TEST_PARK_IDLE_AFTER")
    if park and "limits:" not in extra:  # run a suite with idle connections parked
        extra = f"{extra}limits:\n  park_idle_after: {park}\n"
    return (
        f"{listen}"
        f"storage:\n  backend: {storage}\n  path: {data_dir}\n  durability: {durability}\n"
        f"logging:\n  level: DEBUG\n{QUIET_PACKETS}"
        f"{sys_topics}"
        f"{extra}"
    )
