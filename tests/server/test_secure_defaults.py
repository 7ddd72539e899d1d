"""Secure by default (issue 12): loopback without a configuration, a warning for open
anonymous listeners, a warning for TLS private keys others can read.

The broker runs as a user runs it (``python -m iotbroker ...`` in a subprocess, with
or without a configuration file) and is reached over real sockets.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotbroker.config import BrokerConfig, ListenerConfig, load_config, parse_config
from iotbroker.file_modes import exposed_mode, warn_if_exposed
from iotbroker.server.exposure import is_loopback, listening_note, open_anonymous_listeners
from tests.helpers.rawclient import RawClient
from tests.server.pki import make_pki

ROOT = Path(__file__).resolve().parent.parent.parent
_LISTENING = re.compile(r"listening on (\S+):(\d+) \((\w+), listener '([^']*)'\)(.*)")
#: The start-up warning about anonymous listeners on the network (one per start).
ANON_WARNING = "accept anonymous clients from the network and no ACL"
ANON_WARNING_ONE = "accepts anonymous clients from the network and no ACL"


# ------------------------------------------------------------------- broker process
class Run:
    """``python -m iotbroker ARGS`` in ``cwd``, its output in a file."""

    def __init__(self, cwd: Path, *args: str) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.log_path = cwd / "broker.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "iotbroker", *args], stdout=log,
                stderr=subprocess.STDOUT, cwd=cwd, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + 15
        while " running (storage" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"broker did not start:\n{self.log()}")
            time.sleep(0.05)
        #: (host, port, type, name, what follows the line's closing parenthesis)
        self.listening = [(h, int(p), t, n, rest) for h, p, t, n, rest
                          in _LISTENING.findall(self.log())]

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    close = stop  # for contextlib.closing


@contextlib.contextmanager
def running(cwd: Path, *args: str) -> Iterator[Run]:
    run = Run(cwd, *args)
    try:
        yield run
    finally:
        run.stop()


def _mqtt_works(host: str, port: int) -> bool:
    with RawClient(host, port) as client:
        return client.connect(client_id="secure-defaults").reason_code == 0


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _is_local_address(host: str) -> bool:
    """Whether this machine can bind ``host`` (on Linux all of 127.0.0.0/8 is)."""
    try:
        with socket.socket() as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


OTHER_LOOPBACK = "127.0.0.2"  # reaches a 0.0.0.0 listener, never a 127.0.0.1 one
needs_other_loopback = pytest.mark.skipif(not _is_local_address(OTHER_LOOPBACK),
                                          reason=f"{OTHER_LOOPBACK} is not local here")


# ------------------------------------------------------------------ the defaults
def test_without_listeners_the_broker_listens_on_loopback_only(tmp_path: Path) -> None:
    builtin = ListenerConfig(name="default", type="tcp", host="127.0.0.1", port=1883)
    assert load_config(None).listeners == (builtin,)
    assert BrokerConfig().listeners == (builtin,)
    no_listeners = tmp_path / "c.yaml"  # as mosquitto 2: no listener configured = local only
    no_listeners.write_text("storage:\n  backend: memory\n")
    assert load_config(str(no_listeners)).listeners == (builtin,)
    # A listener written without a host is on the network (mosquitto's `listener 1883`).
    assert parse_config({"listeners": [{"port": 1883}]}).listeners[0].host == "0.0.0.0"


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("127.255.255.254", True), ("::1", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("", False),
    ("192.168.1.10", False), ("fe80::1%eth0", False), ("localhost", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_listening_note() -> None:
    builtin = BrokerConfig().listeners[0]
    assert listening_note(builtin, "127.0.0.1", 1883) == (
        " — loopback only: pass --listen 0.0.0.0:1883 or a config file to accept devices "
        "on the network")
    other = ListenerConfig(name="backend", host="127.0.0.1", port=0)
    assert listening_note(other, "127.0.0.1", 40000) == " — loopback only"
    assert listening_note(ListenerConfig(host="0.0.0.0"), "0.0.0.0", 1883) == ""


Bound = list[tuple[ListenerConfig, list[tuple[str, int]]]]


def _bound_as_configured(config: BrokerConfig) -> Bound:
    return [(lst, [(lst.host, lst.port)]) for lst in config.listeners]


@pytest.mark.parametrize("name", ["production.yaml", "iot-fleet.yaml"])
def test_shipped_network_configs_do_not_trigger_the_warning(name: str) -> None:
    config = load_config(str(ROOT / "configs" / name))
    assert any(not is_loopback(lst.host) for lst in config.listeners)  # they are on the network
    assert not config.auth.allow_anonymous
    assert open_anonymous_listeners(config, _bound_as_configured(config)) == []


def test_which_listeners_are_open_to_anonymous_clients() -> None:
    def open_ones(data: dict[str, object]) -> list[str]:
        config = parse_config(data)
        return open_anonymous_listeners(config, _bound_as_configured(config))

    listeners = [{"name": "lan", "host": "0.0.0.0", "port": 1883},
                 {"name": "local", "host": "127.0.0.1", "port": 1884},
                 {"name": "v6", "host": "::", "port": 1885}]
    assert open_ones({"listeners": listeners}) == [
        "'lan' (0.0.0.0:1883)", "'v6' ([::]:1885)"]
    assert open_ones({}) == []  # the built-in listener is loopback
    assert open_ones({"listeners": listeners, "auth": {"acl_file": "acl"}}) == []
    assert open_ones({"listeners": listeners, "auth": {
        "allow_anonymous": False, "password_file": "passwd"}}) == []
    mutual = {"name": "mtls", "type": "tls", "host": "0.0.0.0", "tls": {
        "certfile": "c", "keyfile": "k", "cafile": "ca", "require_client_cert": True}}
    assert open_ones({"listeners": [mutual]}) == []  # every client shows a certificate


# ------------------------------------------------------------ the real broker
def test_no_configuration_binds_127_0_0_1_1883_only(tmp_path: Path) -> None:
    """Exactly what `iotbroker` with no argument does (needs port 1883 free)."""
    if not _refused("127.0.0.1", 1883) or not _is_local_address("127.0.0.1"):
        pytest.skip("port 1883 is in use on this machine")
    try:
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", 1883))
    except OSError:
        pytest.skip("port 1883 is in use on this machine")
    try:
        broker = Run(tmp_path, "--data-dir", str(tmp_path / "data"))
    except RuntimeError as exc:  # taken between the probe and the start
        if "cannot listen" in str(exc):
            pytest.skip(f"port 1883 is in use on this machine: {exc}")
        raise
    with contextlib.closing(broker):
        assert broker.listening == [(
            "127.0.0.1", 1883, "tcp", "default",
            " — loopback only: pass --listen 0.0.0.0:1883 or a config file to accept "
            "devices on the network")]
        assert _mqtt_works("127.0.0.1", 1883)
        if _is_local_address(OTHER_LOOPBACK):
            assert _refused(OTHER_LOOPBACK, 1883)
        assert ANON_WARNING_ONE not in broker.log()


@needs_other_loopback
def test_listen_without_host_is_loopback_only(tmp_path: Path) -> None:
    with running(tmp_path, "--listen", "0", "--data-dir", str(tmp_path / "data")) as broker:
        [(host, port, _, _, note)] = broker.listening
        assert (host, note) == ("127.0.0.1", " — loopback only")
        assert _mqtt_works("127.0.0.1", port)
        assert _refused(OTHER_LOOPBACK, port)  # not bound to 0.0.0.0
        assert ANON_WARNING_ONE not in broker.log()


@needs_other_loopback
def test_listen_on_0_0_0_0_with_anonymous_and_no_acl_warns_once(tmp_path: Path) -> None:
    with running(tmp_path, "--listen", "0.0.0.0:0", "--listen", "127.0.0.1:0",
                 "--data-dir", str(tmp_path / "data")) as broker:
        (host, port, _, name, note), (_, _, _, _, local_note) = broker.listening
        assert (host, note, local_note) == ("0.0.0.0", "", " — loopback only")
        assert _mqtt_works(OTHER_LOOPBACK, port)  # open to more than 127.0.0.1
        log = broker.log()
        warnings = [line for line in log.splitlines() if ANON_WARNING_ONE in line]
        assert len(warnings) == 1, log
        assert "WARNING" in warnings[0]
        assert f"listener {name!r} (0.0.0.0:{port})" in warnings[0]
        assert "127.0.0.1:0" not in warnings[0]  # the loopback listener is not named
        assert "allow_anonymous: false" in warnings[0] and "acl_file" in warnings[0]


def _network_config(tmp_path: Path, auth: str) -> Path:
    path = tmp_path / "broker.yaml"
    path.write_text(
        "listeners:\n  - name: lan\n    host: 0.0.0.0\n    port: 0\n"
        f"storage:\n  backend: memory\nsys_topics:\n  enabled: false\n{auth}")
    return path


def test_password_file_without_anonymous_does_not_warn(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run([sys.executable, "-m", "iotbroker", "passwd", str(passwd), "dev", "-b", "pw",
                    "--iterations", "1000", "--no-scram"], check=True, capture_output=True)
    passwd.chmod(0o600)
    config = _network_config(tmp_path, f"auth:\n  allow_anonymous: false\n"
                                       f"  password_file: {passwd}\n")
    with running(tmp_path, "--config", str(config)) as broker:
        [(_, port, _, _, _)] = broker.listening
        with RawClient("127.0.0.1", port) as client:
            assert client.connect(client_id="d", username="dev", password=b"pw").reason_code == 0
        assert ANON_WARNING_ONE not in broker.log() and ANON_WARNING not in broker.log()


def test_anonymous_with_an_acl_does_not_warn(tmp_path: Path) -> None:
    (tmp_path / "acl").write_text("topic readwrite public/#\n")
    config = _network_config(tmp_path, f"auth:\n  acl_file: {tmp_path / 'acl'}\n")
    with running(tmp_path, "--config", str(config)) as broker:
        [(_, port, _, _, _)] = broker.listening
        assert _mqtt_works("127.0.0.1", port)
        assert ANON_WARNING_ONE not in broker.log() and ANON_WARNING not in broker.log()


# ------------------------------------------------------------ TLS private key modes
@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
@pytest.mark.parametrize(("mode", "exposed"), [
    (0o644, True), (0o640, True), (0o604, True), (0o660, True), (0o600, False), (0o400, False),
])
def test_exposed_mode(tmp_path: Path, mode: int, exposed: bool) -> None:
    path = tmp_path / "key.pem"
    path.write_text("secret")
    path.chmod(mode)
    assert exposed_mode(str(path)) == (mode if exposed else None)
    assert exposed_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_warn_if_exposed_names_the_file_and_its_mode(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "passwd"
    path.write_text("secret")
    path.chmod(0o644)
    assert warn_if_exposed(str(path), "password file") is True
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage() == (
        f"password file {str(path)!r} is readable by group and others (mode 0644); only the "
        f"broker's user should read it: run chmod 600 {str(path)!r}")
    path.chmod(0o600)
    caplog.clear()
    assert warn_if_exposed(str(path), "password file") is False
    assert caplog.records == []


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_tls_key_readable_by_others_warns_and_0600_does_not(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    open_key, closed_key = tmp_path / "open.key", tmp_path / "closed.key"
    shutil.copyfile(pki.server_key, open_key)
    shutil.copyfile(pki.server_key, closed_key)
    open_key.chmod(0o644)
    closed_key.chmod(0o600)

    def tls_listener(name: str, key: Path) -> str:
        return (f"  - name: {name}\n    type: tls\n    host: 127.0.0.1\n    port: 0\n"
                f"    tls:\n      certfile: {pki.server_cert}\n      keyfile: {key}\n")

    config = tmp_path / "broker.yaml"
    config.write_text("listeners:\n" + tls_listener("open", open_key)
                      + tls_listener("closed", closed_key)
                      + "storage:\n  backend: memory\nsys_topics:\n  enabled: false\n")
    with running(tmp_path, "--config", str(config)) as broker:
        assert [name for _, _, _, name, _ in broker.listening] == ["open", "closed"]
        key_warnings = [line for line in broker.log().splitlines()
                        if "TLS private key" in line]
    assert len(key_warnings) == 1, broker.log()
    assert "WARNING" in key_warnings[0]
    assert f"TLS private key of listener 'open' {str(open_key)!r}" in key_warnings[0]
    assert "mode 0644" in key_warnings[0] and "chmod 600" in key_warnings[0]
    assert str(closed_key) not in broker.log()
