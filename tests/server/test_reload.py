"""SIGHUP reloads the password file and ACL without dropping connected clients."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import RawClient


def _passwd(path: Path, user: str, password: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "iotbroker", "passwd", str(path), user, "-b", password,
         "--iterations", "1000"],
        check=True, capture_output=True,
    )


def _reload(broker: BrokerProcess,
            line: str = "configuration reloaded") -> None:
    """SIGHUP, then wait (at most 5 s) for the broker's log ``line`` (by default the
    "configuration reloaded" one; a failed reload logs another)."""
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while line not in broker.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in broker.log_text()


def test_sighup_picks_up_new_password_and_keeps_clients(
    make_broker: Callable[..., BrokerProcess], tmp_path: Path
) -> None:
    pwfile = tmp_path / "passwd"
    _passwd(pwfile, "alice", "a-secret")
    broker = make_broker(broker_config(
        extra=f"auth:\n  allow_anonymous: false\n  password_file: {pwfile}\n"
    ))
    alice = RawClient(broker.host, broker.port)
    assert alice.connect("alice-1", username="alice", password=b"a-secret").reason_code == 0
    bob = RawClient(broker.host, broker.port)
    assert bob.connect("bob-1", username="bob", password=b"b-secret").reason_code == 0x04
    bob.close()

    _passwd(pwfile, "bob", "b-secret")
    _reload(broker)

    bob = RawClient(broker.host, broker.port)
    assert bob.connect("bob-2", username="bob", password=b"b-secret").reason_code == 0
    # alice's connection survived the reload and still works
    alice.subscribe("reload/t", 1)
    bob.publish("reload/t", b"after reload", 1)
    assert alice.receive_publish().payload == b"after reload"
    alice.close()
    bob.close()


def test_sighup_with_a_broken_file_keeps_running_config(
    make_broker: Callable[..., BrokerProcess], tmp_path: Path
) -> None:
    pwfile = tmp_path / "passwd"
    _passwd(pwfile, "alice", "a-secret")
    broker = make_broker(broker_config(
        extra=f"auth:\n  allow_anonymous: false\n  password_file: {pwfile}\n"
    ))
    pwfile.write_text("this is not a password line\n")
    _reload(broker, "reload failed, keeping the running configuration")
    alice = RawClient(broker.host, broker.port)
    assert alice.connect("alice", username="alice", password=b"a-secret").reason_code == 0
    alice.close()


def test_sighup_turning_anonymous_off_refuses_the_next_anonymous_connect(
    make_broker: Callable[..., BrokerProcess], tmp_path: Path
) -> None:
    """``auth.allow_anonymous`` is held natively by the connect path
    (server/connecting.py ``Connecting``, issue 19); a reload still changes it for the
    next CONNECT: anonymous accepted before, refused after with CONNACK 5 (Not
    authorized) and closed [MQTT-3.2.2-5]; the anonymous client connected before the
    reload stays connected."""
    pwfile = tmp_path / "passwd"
    _passwd(pwfile, "alice", "a-secret")
    broker = make_broker(broker_config(
        extra=f"auth:\n  allow_anonymous: true\n  password_file: {pwfile}\n"
    ))
    early = RawClient(broker.host, broker.port)
    assert early.connect("anon-1").reason_code == 0

    broker.config_path.write_text(
        broker.config_path.read_text().replace("allow_anonymous: true",
                                               "allow_anonymous: false"))
    _reload(broker)

    late = RawClient(broker.host, broker.port)
    assert late.connect("anon-2").reason_code == 0x05
    assert late.expect_closed() == []
    alice = RawClient(broker.host, broker.port)
    assert alice.connect("alice-1", username="alice", password=b"a-secret").reason_code == 0
    # the anonymous connection from before the reload still works
    early.subscribe("reload/anon", 1)
    alice.publish("reload/anon", b"after reload", 1)
    assert early.receive_publish().payload == b"after reload"
    early.close()
    alice.close()
