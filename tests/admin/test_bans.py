"""Bans over the admin API: by client id, username and address (CIDR), with expiry,
effective at once (connected matches are disconnected, MQTT 5.0 DISCONNECT 0x98),
refused at CONNECT (MQTT 5.0 CONNACK 0x8A Banned, §3.2.2.2; MQTT 3.1.1 0x05 Not
authorized, §3.2.2.3), and kept across a restart (``<storage.path>/admin-bans.json``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.admin.helpers import BOB, WAIT, Http, Mqtt, admin_config, admin_url, make_passwords
from tests.helpers.broker_process import BrokerProcess

BANNED = 0x8A
#: paho reports the MQTT 3.1.1 CONNACK return code 0x05 Not authorized as 0x87
NOT_AUTHORIZED_V311 = 0x87
ADMINISTRATIVE_ACTION = 0x98


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    workdir = tmp_path_factory.mktemp("bans")
    make_passwords(workdir)
    proc = BrokerProcess(workdir, admin_config(workdir)).start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log_text()


@pytest.fixture
def env(broker: BrokerProcess) -> Iterator[tuple[BrokerProcess, Http]]:
    """The module's broker; every ban a test made is lifted after it."""
    yield broker, Http(admin_url(broker))
    http = Http(admin_url(broker))
    for item in http.ok("GET", "/api/v1/bans?limit=1000")["data"]:
        value = item["value"].replace("/", "%2F")
        http.ok("DELETE", f"/api/v1/bans/{item['kind']}/{value}", status=204)


@pytest.fixture
def clients() -> Iterator[list[Mqtt]]:
    made: list[Mqtt] = []
    yield made
    for client in made:
        client.close()


def connect(proc: BrokerProcess, made: list[Mqtt], client_id: str, v5: bool = True,
            **kw: object) -> tuple[Mqtt, int]:
    client = Mqtt(proc, client_id, v5=v5, **kw)  # type: ignore[arg-type]
    made.append(client)
    rc = client.connect(expect_ok=False)
    return client, rc.value if hasattr(rc, "value") else int(rc)


def test_clientid_ban_kicks_and_refuses_reconnect(env: tuple[BrokerProcess, Http],
                                                  clients: list[Mqtt]) -> None:
    proc, http = env
    victim, rc = connect(proc, clients, "ban-me")
    assert rc == 0
    body = http.ok("POST", "/api/v1/bans", {"kind": "clientid", "value": "ban-me",
                                             "reason": "misbehaving"}, status=201)
    assert body["disconnected"] == ["ban-me"] and body["by"] == "alice"
    assert victim.disconnects.get(timeout=WAIT).value == ADMINISTRATIVE_ACTION
    _, rc = connect(proc, clients, "ban-me")
    assert rc == BANNED
    _, rc = connect(proc, clients, "ban-me", v5=False)
    assert rc == NOT_AUTHORIZED_V311
    _, rc = connect(proc, clients, "not-banned")
    assert rc == 0
    listed = http.ok("GET", "/api/v1/bans")["data"]
    assert [(b["kind"], b["value"], b["reason"]) for b in listed] == [
        ("clientid", "ban-me", "misbehaving")]
    http.ok("DELETE", "/api/v1/bans/clientid/ban-me", status=204)
    _, rc = connect(proc, clients, "ban-me")
    assert rc == 0
    assert http.delete("/api/v1/bans/clientid/ban-me").status == 404


def test_username_ban(env: tuple[BrokerProcess, Http], clients: list[Mqtt]) -> None:
    proc, http = env
    http.ok("POST", "/api/v1/bans", {"kind": "username", "value": "bob"}, status=201)
    _, rc = connect(proc, clients, "as-bob", username=BOB[0], password=BOB[1])
    assert rc == BANNED
    _, rc = connect(proc, clients, "anonymous-one")
    assert rc == 0


def test_cidr_ban_and_expiry(env: tuple[BrokerProcess, Http], clients: list[Mqtt]) -> None:
    proc, http = env
    other, rc = connect(proc, clients, "cidr-old")
    assert rc == 0
    body = http.ok("POST", "/api/v1/bans", {"kind": "address", "value": "127.0.0.1/8",
                                             "duration": 1.5}, status=201)
    assert body["value"] == "127.0.0.0/8" and body["until"] is not None
    assert "cidr-old" in body["disconnected"]
    assert other.disconnects.get(timeout=WAIT).value == ADMINISTRATIVE_ACTION
    _, rc = connect(proc, clients, "cidr-new")
    assert rc == BANNED
    time.sleep(1.6)
    _, rc = connect(proc, clients, "cidr-later")
    assert rc == 0
    assert http.ok("GET", "/api/v1/bans")["data"] == []  # expired bans are dropped


@pytest.mark.parametrize(("body", "needle"), [
    ({"kind": "ip", "value": "x"}, "kind must be one of clientid, username, address"),
    ({"kind": "address", "value": "300.1.1.1"}, "is not an IP address or CIDR network"),
    ({"kind": "clientid", "value": ""}, "value must not be empty"),
    ({"kind": "clientid", "value": "x", "duration": -1}, "duration must be a positive"),
    ({"kind": "clientid", "value": "x", "until": 1}, "until must be a Unix time in the future"),
])
def test_bad_ban_is_400(env: tuple[BrokerProcess, Http], body: object, needle: str) -> None:
    reply = env[1].post("/api/v1/bans", body)
    assert reply.status == 400 and needle in reply.json()["message"], reply.body


def test_bans_survive_a_restart(env: tuple[BrokerProcess, Http], clients: list[Mqtt]) -> None:
    proc, http = env
    http.ok("POST", "/api/v1/bans", {"kind": "clientid", "value": "kept"}, status=201)
    http.ok("POST", "/api/v1/bans", {"kind": "address", "value": "10.0.0.0/8"}, status=201)
    stored = json.loads((proc.workdir / "data" / "admin-bans.json").read_text())
    assert stored["version"] == 1 and len(stored["bans"]) == 2
    proc.kill()  # kill -9: the file was written (fsync, rename) before the 201
    proc.start()
    http = Http(admin_url(proc))
    listed = http.ok("GET", "/api/v1/bans")["data"]
    assert sorted((b["kind"], b["value"]) for b in listed) == [
        ("address", "10.0.0.0/8"), ("clientid", "kept")]
    _, rc = connect(proc, clients, "kept")
    assert rc == BANNED


def test_damaged_bans_file_stops_the_start(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("bad-bans")
    make_passwords(workdir)
    (workdir / "data").mkdir()
    (workdir / "data" / "admin-bans.json").write_text("{not json")
    proc = BrokerProcess(workdir, admin_config(workdir))
    with pytest.raises(RuntimeError, match="cannot read the bans file"):
        proc.start(timeout=WAIT)
