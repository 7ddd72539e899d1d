"""Password file and ACL with the real command-line clients, over TLS.

``mosquitto_pub``/``mosquitto_sub`` connect with ``--cafile`` and ``-u``/``-P`` to a TLS
listener of a broker with ``allow_anonymous: false``, a password file written by
``iotbroker passwd`` and an ACL file; each ACL rule kind (read, write, readwrite,
deny, pattern with %c / %u) is checked by what the clients see.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from iotbroker.codec.packets import Properties, PubAck, Publish
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient
from tests.server.clients import config, listener, run_tool, tls_block
from tests.server.pki import Pki, make_pki

ACL = """\
user alice
topic readwrite sensors/#
topic read alerts/#
topic deny sensors/secret

user bob
topic write sensors/bob/#
topic write alerts/#

pattern readwrite clients/%c/#
pattern read users/%u/inbox
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def auth_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    workdir = tmp_path_factory.mktemp("auth-broker")
    (workdir / "acl").write_text(ACL)
    for user, password in (("alice", "alice-pw"), ("bob", "bob-pw")):
        subprocess.run(
            [sys.executable, "-m", "iotbroker", "passwd", str(workdir / "passwd"), user,
             "-b", password, "--iterations", "1000"],
            check=True, capture_output=True,
        )
    listeners = listener("tls", "tls", tls_block(pki)) + listener("plain", "tcp")
    extra = "auth:\n  allow_anonymous: false\n  password_file: passwd\n  acl_file: acl\n"
    proc = BrokerProcess(workdir, config(listeners, extra)).start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log_text()


def _tls(broker: BrokerProcess, pki: Pki, user: str, password: str) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(broker.ports["tls"]), "--cafile", str(pki.ca),
            "-u", user, "-P", password]


def _sub(broker: BrokerProcess, pki: Pki, user: str, password: str, topic: str,
         count: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["mosquitto_sub", *_tls(broker, pki, user, password), "-t", topic, "-C", str(count),
         "-W", "8", "-v", "-q", "1", "-i", f"sub-{user}-{time.monotonic_ns()}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(0.6)  # let it subscribe
    return proc


def _pub(broker: BrokerProcess, pki: Pki, user: str, password: str, topic: str,
         message: str) -> subprocess.CompletedProcess[str]:
    return run_tool(["mosquitto_pub", *_tls(broker, pki, user, password), "-t", topic,
                     "-m", message, "-q", "1"])


def test_password_login_and_write_rule(auth_broker: BrokerProcess, pki: Pki) -> None:
    """bob may write sensors/bob/#; alice (readwrite sensors/#) receives it."""
    sub = _sub(auth_broker, pki, "alice", "alice-pw", "sensors/#", 1)
    assert _pub(auth_broker, pki, "bob", "bob-pw", "sensors/bob/t", "21.5").returncode == 0
    out, err = sub.communicate(timeout=10)
    assert sub.returncode == 0, err
    assert out.strip() == "sensors/bob/t 21.5"


def test_wrong_password_is_refused(auth_broker: BrokerProcess, pki: Pki) -> None:
    result = _pub(auth_broker, pki, "bob", "not-bobs", "sensors/bob/t", "x")
    assert result.returncode != 0
    assert "not authorised" in result.stderr.lower() or "bad user" in result.stderr.lower(), \
        result.stderr
    anonymous = run_tool(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(auth_broker.ports["tls"]),
                          "--cafile", str(pki.ca), "-t", "open/t", "-m", "x"])
    assert anonymous.returncode != 0


def test_write_denied_outside_rules_v5_gets_0x87(auth_broker: BrokerProcess) -> None:
    """bob has no write rule for sensors/alice/...: MQTT 5.0 PUBACK 0x87."""
    bob = RawClient("127.0.0.1", auth_broker.ports["plain"], version=5)
    assert bob.connect("bob-raw", username="bob", password=b"bob-pw",
                       properties=Properties()).reason_code == 0
    ack = bob.publish("sensors/alice/t", b"x", 1)
    assert ack is not None and ack.reason_code == 0x87  # type: ignore[attr-defined]
    ok = bob.publish("sensors/bob/t", b"x", 1)
    assert ok is not None and ok.reason_code in (0x00, 0x10)  # type: ignore[attr-defined]
    bob.close()


def test_read_rule_subscribe_allowed_but_deny_wins(auth_broker: BrokerProcess) -> None:
    """alice: read alerts/# (subscribe allowed, publish not); deny sensors/secret."""
    alice = RawClient("127.0.0.1", auth_broker.ports["plain"], version=5)
    alice.connect("alice-raw", username="alice", password=b"alice-pw", properties=Properties())
    assert alice.subscribe("alerts/#", 1).reason_codes == [1]
    assert alice.subscribe("sensors/secret", 1).reason_codes == [0x87]
    denied = alice.publish("alerts/fire", b"x", 1)
    assert denied is not None and denied.reason_code == 0x87  # type: ignore[attr-defined]
    bob = RawClient("127.0.0.1", auth_broker.ports["plain"], version=5)
    bob.connect("bob-raw2", username="bob", password=b"bob-pw", properties=Properties())
    bob.publish("alerts/fire", b"smoke", 1)
    got = alice.receive_publish()
    assert (got.topic, got.payload) == ("alerts/fire", b"smoke")
    alice.close()
    bob.close()


def test_pattern_rules_substitute_client_id_and_username(auth_broker: BrokerProcess) -> None:
    """pattern readwrite clients/%c/#; pattern read users/%u/inbox."""
    c = RawClient("127.0.0.1", auth_broker.ports["plain"], version=5)
    c.connect("dev-7", username="alice", password=b"alice-pw", properties=Properties())
    assert c.subscribe("clients/dev-7/#", 1).reason_codes == [1]
    assert c.subscribe("clients/dev-8/#", 1).reason_codes == [0x87]
    assert c.subscribe("users/alice/inbox", 1).reason_codes == [1]
    assert c.subscribe("users/bob/inbox", 1).reason_codes == [0x87]
    c.send(Publish("clients/dev-7/state", b"on", 1, packet_id=9))
    # Its own message (subscribed) and the PUBACK may come in either order.
    got = [c.recv(), c.recv()]
    acks = [p for p in got if isinstance(p, PubAck)]
    pubs = [p for p in got if isinstance(p, Publish)]
    assert [a.reason_code for a in acks] == [0] and [p.payload for p in pubs] == [b"on"]
    c.close()


def test_v311_denied_subscription_gets_0x80(auth_broker: BrokerProcess) -> None:
    """MQTT 3.1.1: a refused filter gets SUBACK return code 0x80 (Failure, §3.9.3)."""
    c = RawClient("127.0.0.1", auth_broker.ports["plain"], version=4)
    c.connect("v3-alice", username="alice", password=b"alice-pw")
    assert c.subscribe("sensors/secret", 1).reason_codes == [0x80]
    assert c.subscribe("sensors/room1", 1).reason_codes == [1]
    c.close()
