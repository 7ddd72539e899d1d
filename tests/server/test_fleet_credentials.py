"""Credentials for fleets (issue 12), with the real broker and real sockets.

Generated device secrets (``iotbroker passwd --generate``, ``$sha512$``) are accepted
and checked on the event loop without PBKDF2; people's passwords keep PBKDF2 210,000
in worker threads; every refusal is counted by kind
(``iotbroker_auth_failures_total{reason=...}``) and logged with it; failed logins are
rate-limited per address and per username; PBKDF2 checks pending at once are bounded;
a password file others can read is warned about at start-up and on reload. Performance
is measured by ``benchmarks/auth_storm.py``, not here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotbroker.auth.passwords import hash_password, hash_secret
from iotbroker.codec.packets import ConnAck, Connect, Properties
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import Closed, RawClient
from tests.server.clients import config, listener
from tests.server.test_metrics_http import scrape, value

METRICS = "metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n"
FAST = 1000  # iterations of the rate-limit tests' people's passwords (same code path)


def passwd(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iotbroker", "passwd", str(path), *args],
                          capture_output=True, text=True, check=True, timeout=60)


def auth_yaml(**keys: object) -> str:
    lines = "".join(f"  {k}: {v}\n" for k, v in keys.items())
    return f"auth:\n  allow_anonymous: false\n  password_file: passwd\n{lines}" + METRICS


def start(workdir: Path, **keys: object) -> BrokerProcess:
    return BrokerProcess(workdir, config(listener("tcp", "tcp"), auth_yaml(**keys))).start()


def connack(broker: BrokerProcess, username: str | None, password: str | None,
            version: int = 5, source: str | None = None, timeout: float = 10.0) -> int:
    with RawClient(broker.host, broker.port, version, timeout=timeout, source=source) as c:
        ack = c.connect(f"c-{time.monotonic_ns()}", username=username,
                        password=None if password is None else password.encode())
        if ack.reason_code:
            with pytest.raises(Closed):  # a refusal closes the connection
                c.recv(timeout)
        return ack.reason_code


def failures(broker: BrokerProcess) -> dict[str, float]:
    samples = scrape(broker)
    return {labels[0][1]: v for (name, labels), v in samples.items()
            if name == "iotbroker_auth_failures_total"}


def counter(broker: BrokerProcess, name: str) -> float:
    return value(scrape(broker), name)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, str]]:
    """A broker with one generated device secret and one person's password (210,000)."""
    workdir = tmp_path_factory.mktemp("fleet")
    secret = passwd(workdir / "passwd", "dev-1", "--generate").stdout.strip()
    passwd(workdir / "passwd", "alice", "-b", "correct horse battery", "--no-scram")
    broker = start(workdir, failed_login_limit=0)  # limits have their own tests below
    yield broker, secret
    broker.stop()
    assert "Traceback" not in broker.log_text()


def test_generated_secret_is_accepted_without_pbkdf2(fleet: tuple[BrokerProcess, str]) -> None:
    broker, secret = fleet
    before = (counter(broker, "iotbroker_password_checks_inline_total"),
              counter(broker, "iotbroker_password_checks_hashed_total"))
    for version in (4, 5):
        assert connack(broker, "dev-1", secret, version) == 0
    assert counter(broker, "iotbroker_password_checks_inline_total") == before[0] + 2
    assert counter(broker, "iotbroker_password_checks_hashed_total") == before[1]


def test_person_password_is_pbkdf2_210000_in_a_worker(fleet: tuple[BrokerProcess, str]) -> None:
    broker, _ = fleet
    line = next(x for x in (broker.workdir / "passwd").read_text().splitlines()
                if x.startswith("alice:"))
    assert line.startswith("alice:$pbkdf2-sha512$210000$")
    hashed = counter(broker, "iotbroker_password_checks_hashed_total")
    assert connack(broker, "alice", "correct horse battery") == 0
    assert counter(broker, "iotbroker_password_checks_hashed_total") == hashed + 1
    # Verified once: the next login is decided on the loop (remembered, HMAC-keyed).
    assert connack(broker, "alice", "correct horse battery", 4) == 0
    assert counter(broker, "iotbroker_password_checks_hashed_total") == hashed + 1


@pytest.mark.parametrize("version", [5, 4])
def test_refusals_say_their_kind(fleet: tuple[BrokerProcess, str], version: int) -> None:
    broker, secret = fleet
    v5 = version == 5
    before = failures(broker)
    assert connack(broker, "dev-1", secret + "x", version) == (0x86 if v5 else 0x04)
    assert connack(broker, "alice", "wrong", version) == (0x86 if v5 else 0x04)
    assert connack(broker, "mallory", "guess", version) == (0x86 if v5 else 0x04)
    assert connack(broker, None, None, version) == (0x87 if v5 else 0x05)
    after = failures(broker)
    assert after["wrong_password"] == before["wrong_password"] + 2
    assert after["unknown_user"] == before["unknown_user"] + 1
    assert after["anonymous"] == before["anonymous"] + 1
    assert sum(after.values()) == sum(before.values()) + 4
    log = broker.log_text()
    assert "authentication failed (wrong_password)" in log and "'alice'" in log
    assert "authentication failed (unknown_user)" in log and "'mallory'" in log
    assert "authentication failed (anonymous)" in log


def test_failed_logins_are_rate_limited_per_address(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"alice:{hash_password(b'pw-a', FAST)}\n"
                    f"bob:{hash_password(b'pw-b', FAST)}\n"
                    f"dev-1:{hash_secret(b'device-secret')}\n")
    os.chmod(path, 0o600)
    broker = start(tmp_path, failed_login_limit=3, failed_login_window="60s",
                   failed_login_backoff="60s")
    try:
        for i in range(3):
            assert connack(broker, "alice" if i % 2 else "bob", "wrong") == 0x86
        # The address is over the limit: refused unhashed, even with the right password,
        # whatever the user, MQTT 5 0x89 server busy / 3.1.1 0x03 server unavailable.
        hashed = counter(broker, "iotbroker_password_checks_hashed_total")
        assert connack(broker, "alice", "pw-a") == 0x89
        assert connack(broker, "bob", "pw-b", 4) == 0x03
        assert connack(broker, "nobody", "x") == 0x89
        assert counter(broker, "iotbroker_password_checks_hashed_total") == hashed
        assert failures(broker)["rate_limited"] == 3
        # Generated secrets are still checked (they cannot be guessed and cost nothing).
        assert connack(broker, "dev-1", "device-secret") == 0
        # Another address is not limited.
        assert connack(broker, "alice", "pw-a", source="127.0.0.2") == 0
        log = broker.log_text()
        assert "failed logins from 127.0.0.1: 3 within 60s" in log
        assert "authentication failed (rate_limited)" in log
    finally:
        broker.stop()
    assert "Traceback" not in broker.log_text()


def test_failed_logins_are_rate_limited_per_username(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"alice:{hash_password(b'pw-a', FAST)}\n"
                    f"bob:{hash_password(b'pw-b', FAST)}\n")
    os.chmod(path, 0o600)
    broker = start(tmp_path, failed_login_limit=3)
    try:
        sources = ["127.0.0.3", "127.0.0.4", "127.0.0.5"]  # a distributed guesser
        for source in sources:
            assert connack(broker, "alice", "wrong", source=source) == 0x86
        assert connack(broker, "alice", "pw-a", source="127.0.0.6") == 0x89
        assert connack(broker, "bob", "pw-b", source="127.0.0.6") == 0  # bob is not
        assert failures(broker)["rate_limited"] == 1
        assert "failed logins for user 'alice': 3 within 60s" in broker.log_text()
    finally:
        broker.stop()


def test_pending_pbkdf2_checks_are_bounded(tmp_path: Path) -> None:
    """One thread, one pending check: a second PBKDF2 login is refused at once with
    0x89 (counted "busy") while the first is hashed; a generated secret does not wait
    behind it; the first is then accepted."""
    path = tmp_path / "passwd"
    slow = hash_password(b"slow-pw", 5_000_000)  # seconds of PBKDF2
    path.write_text(f"alice:{slow}\nbob:{slow}\ndev-1:{hash_secret(b'device-secret')}\n")
    os.chmod(path, 0o600)
    broker = start(tmp_path, password_check_threads=1, max_pending_password_checks=1)
    try:
        first = RawClient(broker.host, broker.port, 5, timeout=60)
        first.send(Connect(client_id="first", protocol_version=5, clean_start=True,
                           keepalive=60, will=None, username="alice", password=b"slow-pw",
                           properties=Properties()))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and value(
                scrape(broker), "iotbroker_password_checks_pending") < 1:
            time.sleep(0.01)
        assert value(scrape(broker), "iotbroker_password_checks_pending") == 1
        assert connack(broker, "bob", "slow-pw") == 0x89
        assert connack(broker, "bob", "slow-pw", 4) == 0x03
        assert connack(broker, "dev-1", "device-secret") == 0  # not queued behind alice
        assert value(scrape(broker), "iotbroker_password_checks_pending") == 1
        assert first.expect(ConnAck, timeout=60).reason_code == 0
        first.close()
        assert failures(broker)["busy"] == 2
        assert "authentication failed (busy)" in broker.log_text()
    finally:
        broker.stop()
    assert "Traceback" not in broker.log_text()


def _wait_for(broker: BrokerProcess, pattern: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(re.findall(pattern, broker.log_text())) < count:
        time.sleep(0.05)
    assert len(re.findall(pattern, broker.log_text())) >= count, broker.log_text()


def test_password_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    passwd(path, "dev-1", "--generate")
    os.chmod(path, 0o644)
    broker = start(tmp_path)
    try:
        warning = re.escape(f"password file {path.name!r} is readable by group and others "
                            "(mode 0644)")
        _wait_for(broker, warning, 1)
        assert "WARNING" in next(x for x in broker.log_text().splitlines()
                                 if "(mode 0644)" in x)
        os.chmod(path, 0o600)
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)
        _wait_for(broker, "configuration reloaded", 1)
        assert "(mode 0600)" not in broker.log_text()
        assert len(re.findall(warning, broker.log_text())) == 1
        os.chmod(path, 0o660)  # group-writable
        broker.proc.send_signal(signal.SIGHUP)
        _wait_for(broker, "configuration reloaded", 2)
        _wait_for(broker, re.escape(f"password file {path.name!r} is readable by group "
                                    "(mode 0660)"), 1)
    finally:
        broker.stop()
