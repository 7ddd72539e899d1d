"""Operator details of issue 18: start-up checks before the data directory, check-config
warnings, an unknown command, and a prompt exit after "stopped". All run the real
``python -m iotbroker`` as a subprocess."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.server.pki import make_pki


def iotbroker(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iotbroker", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def _rocksdb_config(listeners: str, extra: str = "") -> str:
    return broker_config(storage="rocksdb", data_dir="data", listeners=listeners, extra=extra)


# ------------------------------------------------------------------- unknown command
def test_unknown_command_is_named_and_the_commands_listed(tmp_path: Path) -> None:
    result = iotbroker("frobnicate", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr
    for command in ("run", "check-config", "passwd"):
        assert command in result.stderr
    assert "unrecognized arguments" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_options_without_a_command_still_run_the_broker(tmp_path: Path) -> None:
    """`iotbroker --listen ...` (no command) is still `run`: only a bare word that is no
    command is refused. Checked by asking for a port that is in use (exits at once)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = iotbroker("--listen", f"127.0.0.1:{port}", "--data-dir", "d", cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown command" not in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr


# ------------------------------------------------- listeners before the data directory
def test_missing_tls_certificate_names_file_and_key_before_the_data_dir(
        tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    missing = tmp_path / "nowhere" / "server.crt"
    listeners = ("listeners:\n  - name: plain\n    host: 127.0.0.1\n    port: 0\n"
                 "  - name: secure\n    type: tls\n    host: 127.0.0.1\n    port: 0\n"
                 f"    tls:\n      certfile: {missing}\n      keyfile: {pki.server_key}\n")
    (tmp_path / "b.yaml").write_text(_rocksdb_config(listeners))
    result = iotbroker("run", "--config", "b.yaml", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "listeners[1].tls.certfile" in result.stderr
    assert str(missing) in result.stderr
    assert "does not exist" in result.stderr
    assert not (tmp_path / "data").exists(), "data directory created before the check"


def test_unloadable_tls_key_names_the_listener_keys(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    listeners = ("listeners:\n  - name: secure\n    type: tls\n    host: 127.0.0.1\n"
                 f"    port: 0\n    tls:\n      certfile: {pki.server_cert}\n"
                 f"      keyfile: {pki.client_key}\n")  # the wrong key for the certificate
    (tmp_path / "b.yaml").write_text(_rocksdb_config(listeners))
    result = iotbroker("run", "--config", "b.yaml", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "listeners[0].tls" in result.stderr
    assert str(pki.client_key) in result.stderr
    assert not (tmp_path / "data").exists()


def test_port_in_use_is_reported_before_the_data_dir(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listeners = f"listeners:\n  - name: main\n    host: 127.0.0.1\n    port: {port}\n"
        (tmp_path / "b.yaml").write_text(_rocksdb_config(listeners))
        result = iotbroker("run", "--config", "b.yaml", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "listeners[0].port" in result.stderr and "'main'" in result.stderr
    assert not (tmp_path / "data").exists()


def test_metrics_port_in_use_is_reported_before_the_data_dir(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listeners = "listeners:\n  - name: main\n    host: 127.0.0.1\n    port: 0\n"
        extra = f"metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: {port}\n"
        (tmp_path / "b.yaml").write_text(_rocksdb_config(listeners, extra))
        result = iotbroker("run", "--config", "b.yaml", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "metrics.port" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- check-config warnings
def test_check_config_warns_on_acl_typos_and_open_password_file(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic rw home/#\ntopic read\ntopic readwrite ok/#\n"
                   "pattern wirte devices/%c/#\ntopic read with space/ok\n")
    passwd = tmp_path / "passwd"
    assert iotbroker("passwd", str(passwd), "alice", "-b", "pw", "--iterations", "1000",
                     cwd=tmp_path).returncode == 0
    passwd.chmod(0o644)
    config = tmp_path / "c.yaml"
    config.write_text(broker_config(extra=f"auth:\n  password_file: {passwd}\n"
                                          f"  acl_file: {acl}\n"))
    result = iotbroker("check-config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # warnings, not errors
    assert result.stdout.strip() == f"OK: {config}"
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert any(f"{acl}:2:" in w and "'rw home/#'" in w and "'rw'" in w for w in warnings)
    assert any(f"{acl}:3:" in w and "filter is missing" in w for w in warnings)
    assert any(f"{acl}:5:" in w and "'wirte'" in w for w in warnings)
    assert not any(f"{acl}:4:" in w or f"{acl}:6:" in w for w in warnings), warnings
    assert any("auth.password_file" in w and "others" in w and "chmod 600" in w
               for w in warnings), warnings
    passwd.chmod(0o600)
    acl.write_text("user alice\ntopic readwrite home/#\n")
    clean = iotbroker("check-config", str(config), cwd=tmp_path)
    assert clean.returncode == 0 and clean.stderr == "", clean.stderr


# ------------------------------------------------------------------------ prompt exit
def test_process_exits_promptly_after_stopped_with_a_password_check_running(
        tmp_path: Path) -> None:
    """A PBKDF2 check still running in a worker thread (about 1.5 s here) must not hold
    the process after "stopped": interpreter teardown would join the thread."""
    passwd = tmp_path / "passwd"
    salt = base64.b64encode(b"s" * 16).decode()
    digest = base64.b64encode(bytes(64)).decode()
    passwd.write_text(f"slow:$pbkdf2-sha512$2000000${salt}${digest}\n")
    passwd.chmod(0o600)
    broker = BrokerProcess(tmp_path, broker_config(
        extra=f"auth:\n  password_file: {passwd}\n  allow_anonymous: false\n")).start()
    assert broker.proc is not None
    sock = socket.create_connection((broker.host, broker.port))
    user, password = b"slow", b"wrong"
    body = (b"\x00\x04MQTT\x04\xc2\x00\x3c" + b"\x00\x01c"
            + len(user).to_bytes(2, "big") + user + len(password).to_bytes(2, "big") + password)
    sock.sendall(bytes([0x10, len(body)]) + body)
    time.sleep(0.3)  # the check is running in the auth thread
    broker.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "stopped" not in broker.log_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped_at = time.monotonic()
    assert "stopped" in broker.log_text()
    broker.proc.wait(timeout=10)
    took = time.monotonic() - stopped_at
    sock.close()
    assert broker.proc.returncode == 0
    assert took < 0.5, f"exited {took:.2f} s after 'stopped'"
