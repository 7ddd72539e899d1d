"""The admin API over real HTTP against the real broker, with real MQTT clients.

One broker (module scope) with alice (admin), bob (password-file user, not an admin)
and the API key ``ci``; each test uses client ids and topics of its own.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from iotbroker.admin.server import ROUTES
from tests.admin.helpers import (
    ALICE,
    BOB,
    WAIT,
    Http,
    Mqtt,
    admin_config,
    admin_url,
    make_passwords,
)
from tests.helpers.broker_process import BrokerProcess

ADMINISTRATIVE_ACTION = 0x98
BANNED = 0x8A


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, Http, str]]:
    workdir = tmp_path_factory.mktemp("admin")
    key = make_passwords(workdir)
    (workdir / "acl").write_text(
        "user alice\ntopic readwrite #\ntopic deny admin-denied/#\n"
        "pattern readwrite #\n"
    )
    proc = BrokerProcess(workdir, admin_config(workdir, acl=workdir / "acl")).start()
    yield proc, Http(admin_url(proc)), key
    proc.stop()
    assert "Traceback" not in proc.log_text()


@pytest.fixture
def clients() -> Iterator[list[Mqtt]]:
    made: list[Mqtt] = []
    yield made
    for client in made:
        client.close()


def mqtt(env: tuple[BrokerProcess, Http, str], made: list[Mqtt], client_id: str,
         **kw: object) -> Mqtt:
    client = Mqtt(env[0], client_id, **kw)  # type: ignore[arg-type]
    made.append(client)
    client.connect()
    return client


def q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# --------------------------------------------------------------------- access
def test_health_and_readiness_need_no_credentials(env: tuple[BrokerProcess, Http, str]) -> None:
    anonymous = Http(env[1].base, auth=None)
    assert anonymous.ok("GET", "/api/v1/health") == {"status": "ok"}
    assert anonymous.ok("GET", "/api/v1/health/ready") == {"status": "ready"}


def test_no_credentials_is_401_with_a_json_error(env: tuple[BrokerProcess, Http, str]) -> None:
    reply = Http(env[1].base, auth=None).get("/api/v1/clients")
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"].startswith("Basic")
    body = reply.json()
    assert body["code"] == "UNAUTHORIZED" and "credentials" in body["message"]


@pytest.mark.parametrize("auth", [("alice", "wrong"), ("nobody", "x")])
def test_wrong_password_or_unknown_user_is_401(env: tuple[BrokerProcess, Http, str],
                                               auth: tuple[str, str]) -> None:
    reply = Http(env[1].base, auth=auth).get("/api/v1/broker")
    assert reply.status == 401 and reply.json()["code"] == "UNAUTHORIZED"


def test_password_file_user_who_is_not_an_admin_is_403(
        env: tuple[BrokerProcess, Http, str]) -> None:
    reply = Http(env[1].base, auth=BOB).get("/api/v1/clients")
    assert reply.status == 403
    assert reply.json() == {"code": "FORBIDDEN",
                            "message": "user 'bob' is not an admin (admin.users)"}


def test_api_key_as_bearer_and_as_basic(env: tuple[BrokerProcess, Http, str]) -> None:
    base, key = env[1].base, env[2]
    assert Http(base, bearer=f"ci:{key}").get("/api/v1/broker").status == 200
    assert Http(base, auth=("ci", key)).get("/api/v1/broker").status == 200
    assert Http(base, bearer=f"ci:{key}x").get("/api/v1/broker").status == 401
    assert Http(base, bearer="no-colon").get("/api/v1/broker").status == 401


def test_api_keys_are_stored_hashed(env: tuple[BrokerProcess, Http, str]) -> None:
    text = (env[0].workdir / "api-keys").read_text()
    assert env[2] not in text and text.startswith("ci:$sha512$")


# --------------------------------------------------------------------- broker
def test_broker_info(env: tuple[BrokerProcess, Http, str]) -> None:
    info = env[1].ok("GET", "/api/v1/broker")
    assert info["version"] and info["uptime"] >= 0
    assert info["bound"] == [{"host": "127.0.0.1", "port": env[0].port}]
    assert info["config"]["admin"]["users"] == ["alice"]
    assert "publish_received" in info["metrics"]
    assert info["bridges"] == [] and info["cluster"] is None  # none configured here


def test_broker_info_shows_each_bridge(tmp_path: Path) -> None:
    """"bridges/cluster state when those exist" (issue 17): a bridge whose remote is
    down is listed, disconnected, by its name."""
    make_passwords(tmp_path)
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    extra = (f"bridges:\n  - name: cloud\n    address: [127.0.0.1:{port}]\n"
             f"    topics: [{{pattern: 'up/#', direction: out, qos: 1}}]\n")
    proc = BrokerProcess(tmp_path, admin_config(tmp_path, extra=extra)).start()
    try:
        info = Http(admin_url(proc)).ok("GET", "/api/v1/broker")
        (bridge,) = info["bridges"]
        assert (bridge["name"], bridge["state"], bridge["forwarded_out"]) == ("cloud", 0, 0)
    finally:
        proc.stop()


def test_config_secrets_are_redacted() -> None:
    from iotbroker.admin.api import redact  # noqa: PLC0415
    from iotbroker.config import parse_config  # noqa: PLC0415

    config = parse_config({"listeners": [{"type": "tls", "port": 0, "tls": {
        "certfile": "c", "keyfile": "k", "keyfile_password": "hunter2"}}]})
    text = json.dumps(redact(config))
    assert "hunter2" not in text and '"keyfile_password": "******"' in text


# -------------------------------------------------------------------- clients
def test_clients_paging_and_filters(env: tuple[BrokerProcess, Http, str],
                                    clients: list[Mqtt]) -> None:
    http = env[1]
    for i in range(5):
        mqtt(env, clients, f"page-{i}", username=BOB[0] if i % 2 else None,
             password=BOB[1] if i % 2 else None)
    seen = []
    for page in (1, 2, 3):
        body = http.ok("GET", f"/api/v1/clients?like_clientid=page-&limit=2&page={page}")
        assert body["meta"] == {"page": page, "limit": 2, "count": 5, "hasnext": page < 3}
        seen += [c["clientid"] for c in body["data"]]
    assert sorted(seen) == [f"page-{i}" for i in range(5)]
    bobs = http.ok("GET", "/api/v1/clients?like_clientid=page-&username=bob")["data"]
    assert sorted(c["clientid"] for c in bobs) == ["page-1", "page-3"]
    one = http.ok("GET", "/api/v1/clients?clientid=page-4")["data"]
    assert [c["clientid"] for c in one] == ["page-4"]
    assert one[0]["ip_address"] == "127.0.0.1" and one[0]["connected"] is True
    by_ip = http.ok("GET", "/api/v1/clients?like_clientid=page-&ip_address=127.0.0.1")
    assert by_ip["meta"]["count"] == 5
    assert http.ok("GET", "/api/v1/clients?like_clientid=page-&connected=false")["data"] == []


@pytest.mark.parametrize(("query", "needle"), [
    ("limit=0", "limit must be between 1 and 1000, not 0"),
    ("limit=1001", "limit must be between 1 and 1000, not 1001"),
    ("page=x", "page must be an integer, not 'x'"),
    ("connected=maybe", "connected must be true or false, not 'maybe'"),
])
def test_bad_query_is_400_with_a_clear_message(env: tuple[BrokerProcess, Http, str],
                                               query: str, needle: str) -> None:
    reply = env[1].get(f"/api/v1/clients?{query}")
    assert reply.status == 400
    assert reply.json() == {"code": "BAD_REQUEST", "message": needle}


def test_client_details(env: tuple[BrokerProcess, Http, str], clients: list[Mqtt]) -> None:
    sub = mqtt(env, clients, "detail-sub", username=BOB[0], password=BOB[1])
    sub.subscribe("detail/+/t", qos=1)
    d = env[1].ok("GET", "/api/v1/clients/detail-sub")
    assert d["clientid"] == "detail-sub" and d["username"] == "bob"
    assert d["proto_ver"] == 5 and d["keepalive"] == 30 and d["connected"] is True
    assert d["connected_at"].endswith("Z") and d["cert_subject"] is None
    assert d["inflight_cnt"] == 0 and d["mqueue_len"] == 0 and d["subscriptions_cnt"] == 1
    assert d["subscriptions"] == [{"clientid": "detail-sub", "topic": "detail/+/t", "qos": 1,
                                   "nl": 0, "rap": 0, "rh": 0, "share_group": None,
                                   "subscription_identifier": None}]
    reply = env[1].get("/api/v1/clients/no-such-client")
    assert reply.status == 404 and reply.json()["code"] == "NOT_FOUND"


def test_offline_session_counts_queued_messages(env: tuple[BrokerProcess, Http, str],
                                                clients: list[Mqtt]) -> None:
    sub = mqtt(env, clients, "queued-sub", session_expiry=300, clean=True)
    sub.subscribe("queued/t", qos=1)
    sub.close()
    pub = mqtt(env, clients, "queued-pub")
    for i in range(3):
        pub.client.publish("queued/t", f"m{i}", qos=1).wait_for_publish(WAIT)
    d = env[1].ok("GET", "/api/v1/clients/queued-sub")
    assert d["connected"] is False and d["disconnected_at"] is not None
    assert d["mqueue_len"] + d["inflight_cnt"] == 3 and d["expiry_interval"] == 300
    offline = env[1].ok("GET", "/api/v1/clients?like_clientid=queued-&connected=false")
    assert [c["clientid"] for c in offline["data"]] == ["queued-sub"]


def test_kick_sends_disconnect_0x98_and_the_will(env: tuple[BrokerProcess, Http, str],
                                                 clients: list[Mqtt]) -> None:
    """MQTT 5.0 §3.14.2.1: the server's DISCONNECT 0x98 Administrative action; the
    will goes out (the client did not disconnect normally, [MQTT-3.1.2-8])."""
    watcher = mqtt(env, clients, "kick-watch")
    watcher.subscribe("kick/will")
    victim = mqtt(env, clients, "kick-victim", will=("kick/will", b"gone"))
    env[1].ok("DELETE", "/api/v1/clients/kick-victim", status=204)
    rc = victim.disconnects.get(timeout=WAIT)
    assert rc.value == ADMINISTRATIVE_ACTION
    assert watcher.messages.get(timeout=WAIT).payload == b"gone"
    reply = env[1].get("/api/v1/clients/kick-victim")
    assert reply.status == 404  # its session (expiry 0) ended with the connection
    assert "admin alice (user) from 127.0.0.1: kick 'kick-victim'" in env[0].log_text()
    assert env[1].ok("GET", "/api/v1/broker")["admin_actions"]["kick"] >= 1  # counted


def test_kick_mosquitto_sub_v311(env: tuple[BrokerProcess, Http, str]) -> None:
    """An MQTT 3.1.1 client has no DISCONNECT from the server: its connection closes."""
    proc = env[0]
    sub = subprocess.Popen(["mosquitto_sub", "-h", proc.host, "-p", str(proc.port), "-i",
                            "kick-mosq", "-t", "kick/mosq", "-V", "mqttv311"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + WAIT
        while env[1].get("/api/v1/clients/kick-mosq").status != 200:
            assert time.monotonic() < deadline, "mosquitto_sub did not connect"
            time.sleep(0.05)
        env[1].ok("DELETE", "/api/v1/clients/kick-mosq", status=204)
        deadline = time.monotonic() + WAIT
        while env[1].get("/api/v1/clients/kick-mosq").status == 200:
            assert time.monotonic() < deadline, "still connected"
            time.sleep(0.05)
    finally:
        sub.kill()
        sub.wait()


def test_kick_unknown_client_is_404(env: tuple[BrokerProcess, Http, str]) -> None:
    reply = env[1].delete("/api/v1/clients/nobody-here")
    assert reply.status == 404
    assert reply.json() == {"code": "NOT_FOUND",
                            "message": "no connected client with client id 'nobody-here'"}


def test_delete_offline_session(env: tuple[BrokerProcess, Http, str],
                                clients: list[Mqtt]) -> None:
    sub = mqtt(env, clients, "del-offline", session_expiry=600)
    sub.subscribe("del/offline")
    sub.close()
    assert env[1].ok("GET", "/api/v1/clients/del-offline")["connected"] is False
    assert env[1].delete("/api/v1/clients/del-offline").status == 404  # not connected
    env[1].ok("DELETE", "/api/v1/clients/del-offline?session=true", status=204)
    assert env[1].get("/api/v1/clients/del-offline").status == 404
    again = Mqtt(env[0], "del-offline", session_expiry=600, clean=False)
    clients.append(again)
    again.connect()
    assert again.client.subscribe("x")  # connected; the old session is gone:
    d = env[1].ok("GET", "/api/v1/clients/del-offline")
    assert all(s["topic"] != "del/offline" for s in d["subscriptions"])


def test_delete_connected_session(env: tuple[BrokerProcess, Http, str],
                                  clients: list[Mqtt]) -> None:
    victim = mqtt(env, clients, "del-online", session_expiry=600)
    victim.subscribe("del/online")
    env[1].ok("DELETE", "/api/v1/clients/del-online?session=true", status=204)
    assert victim.disconnects.get(timeout=WAIT).value == ADMINISTRATIVE_ACTION
    deadline = time.monotonic() + WAIT
    while env[1].get("/api/v1/clients/del-online").status != 404:
        assert time.monotonic() < deadline, "session still there"
        time.sleep(0.05)


# -------------------------------------------------------------- subscriptions
def test_subscriptions_list_and_filters(env: tuple[BrokerProcess, Http, str],
                                        clients: list[Mqtt]) -> None:
    a = mqtt(env, clients, "subs-a")
    a.subscribe("subs/one", qos=1)
    a.subscribe("$share/g1/subs/shared", qos=0)
    b = mqtt(env, clients, "subs-b")
    b.subscribe("subs/one", qos=2)
    http = env[1]
    by_topic = http.ok("GET", "/api/v1/subscriptions?topic=subs/one")
    assert sorted((s["clientid"], s["qos"]) for s in by_topic["data"]) == [
        ("subs-a", 1), ("subs-b", 2)]
    by_client = http.ok("GET", "/api/v1/subscriptions?clientid=subs-a")["data"]
    assert sorted(s["topic"] for s in by_client) == ["$share/g1/subs/shared", "subs/one"]
    shared = http.ok("GET", "/api/v1/subscriptions?share_group=g1")["data"]
    assert [(s["clientid"], s["share_group"]) for s in shared] == [("subs-a", "g1")]
    qos2 = http.ok("GET", "/api/v1/subscriptions?topic=subs/one&qos=2")["data"]
    assert [s["clientid"] for s in qos2] == ["subs-b"]
    assert http.ok("GET", "/api/v1/clients/subs-b/subscriptions")[0]["topic"] == "subs/one"


# ------------------------------------------------------------------- retained
def test_retained_list_read_delete(env: tuple[BrokerProcess, Http, str],
                                   clients: list[Mqtt]) -> None:
    pub = mqtt(env, clients, "ret-pub")
    for i in range(5):
        pub.client.publish(f"ret/dev{i}/state", f"s{i}", qos=1, retain=True).wait_for_publish(WAIT)
    pub.client.publish("ret/bin", b"\xff\x00", qos=1, retain=True).wait_for_publish(WAIT)
    http = env[1]
    page1 = http.ok("GET", f"/api/v1/retained?topic={q('ret/+/state')}&limit=3")
    assert page1["meta"] == {"page": 1, "limit": 3, "count": 5, "hasnext": True}
    assert [m["topic"] for m in page1["data"]] == [f"ret/dev{i}/state" for i in range(3)]
    one = http.ok("GET", f"/api/v1/retained/{q('ret/dev1/state')}")
    assert one["payload"] == "s1" and one["payload_encoding"] == "plain" and one["qos"] == 1
    assert one["from_clientid"] == "ret-pub"
    binary = http.ok("GET", "/api/v1/retained/ret/bin")  # '/' unencoded works too
    assert binary == {**binary, "payload": "/wA=", "payload_encoding": "base64"}
    http.ok("DELETE", f"/api/v1/retained/{q('ret/dev1/state')}", status=204)
    assert http.get(f"/api/v1/retained/{q('ret/dev1/state')}").status == 404
    assert http.delete(f"/api/v1/retained/{q('ret/dev1/state')}").status == 404
    # a new subscriber sees the others, not the deleted one
    sub = mqtt(env, clients, "ret-sub")
    sub.subscribe("ret/+/state")
    got = sorted(sub.messages.get(timeout=WAIT).topic for _ in range(4))
    assert got == [f"ret/dev{i}/state" for i in (0, 2, 3, 4)]
    bad = http.get(f"/api/v1/retained?topic={q('ret/#/x')}")
    assert bad.status == 400 and "not a topic filter" in bad.json()["message"]


# -------------------------------------------------------------------- publish
def test_publish_reaches_subscribers_with_properties(env: tuple[BrokerProcess, Http, str],
                                                     clients: list[Mqtt]) -> None:
    sub = mqtt(env, clients, "apub-sub")
    sub.subscribe("apub/t", qos=1)
    body = env[1].ok("POST", "/api/v1/publish", {
        "topic": "apub/t", "payload": "aGVsbG8=", "payload_encoding": "base64", "qos": 1,
        "properties": {"content_type": "text/plain", "user_properties": {"k": "v"},
                       "message_expiry_interval": 60}})
    assert body == {"reason_code": 0, "matched": True}
    msg = sub.messages.get(timeout=WAIT)
    assert msg.payload == b"hello" and msg.qos == 1
    assert msg.properties.ContentType == "text/plain"
    assert msg.properties.UserProperty == [("k", "v")]
    nobody = env[1].ok("POST", "/api/v1/publish", {"topic": "apub/nobody"})
    assert nobody == {"reason_code": 0x10, "matched": False}


def test_publish_retained_then_read(env: tuple[BrokerProcess, Http, str]) -> None:
    env[1].ok("POST", "/api/v1/publish", {"topic": "apub/ret", "payload": "r", "retain": True})
    assert env[1].ok("GET", "/api/v1/retained/apub%2Fret")["from_clientid"] == "$admin/alice"


@pytest.mark.parametrize("topic", ["admin-denied/x", "$SYS/broker/x"])
def test_publish_is_subject_to_the_acl(env: tuple[BrokerProcess, Http, str],
                                       topic: str) -> None:
    reply = env[1].post("/api/v1/publish", {"topic": topic, "payload": "x"})
    assert reply.status == 403
    assert reply.json() == {"code": "NOT_AUTHORIZED",
                            "message": f"'alice' may not publish to {topic!r}"}


@pytest.mark.parametrize(("body", "needle"), [
    ({"payload": "x"}, "topic must be a non-empty string"),
    ({"topic": "a/+"}, "is not a topic name"),
    ({"topic": "a", "qos": 3}, "qos must be 0, 1 or 2, not 3"),
    ({"topic": "a", "retain": "yes"}, "retain must be true or false"),
    ({"topic": "a", "payload": "%%", "payload_encoding": "base64"}, "not valid base64"),
    ({"topic": "a", "colour": 1}, "unknown field(s) colour"),
    ({"topic": "a", "properties": {"message_expiry_interval": -1}},
     "properties.message_expiry_interval must be an integer"),
    ([1, 2], "body must be a JSON object"),
    # MQTT 5.0 §3.3.2.3.2: the rule an MQTT PUBLISH meets (0x99) holds for this way in
    ({"topic": "a", "payload": "/w==", "payload_encoding": "base64",
      "properties": {"payload_format_indicator": 1}}, "payload_format_indicator 1"),
])
def test_publish_bad_input_is_400(env: tuple[BrokerProcess, Http, str], body: object,
                                  needle: str) -> None:
    reply = env[1].post("/api/v1/publish", body)
    assert reply.status == 400, reply.body
    assert reply.json()["code"] == "BAD_REQUEST" and needle in reply.json()["message"]


def test_not_json_is_400(env: tuple[BrokerProcess, Http, str]) -> None:
    reply = env[1].request("POST", "/api/v1/publish", raw=b"{nope")
    assert reply.status == 400 and "not JSON" in reply.json()["message"]


def test_unknown_path_and_method_are_json(env: tuple[BrokerProcess, Http, str]) -> None:
    reply = env[1].get("/api/v1/nothing")
    assert reply.status == 404 and reply.json()["code"] == "NOT_FOUND"
    reply = env[1].request("PUT", "/api/v1/clients")
    assert reply.status == 405 and reply.json()["code"] == "METHOD_NOT_ALLOWED"


# ------------------------------------------------------------------- OpenAPI
def test_openapi_document_is_valid_and_matches_the_routes(
        env: tuple[BrokerProcess, Http, str]) -> None:
    doc = Http(env[1].base, auth=None).ok("GET", "/api/v1/openapi.json")
    validate(doc)
    documented = {(path, method.upper()) for path, ops in doc["paths"].items()
                  for method in ops}
    served = {(re.sub(r":[^}]*}", "}", path), method) for method, path, _ in ROUTES}
    assert served == documented


def test_dashboard_page_is_served(env: tuple[BrokerProcess, Http, str]) -> None:
    reply = Http(env[1].base, auth=None).get("/")
    assert reply.status == 200 and b"<html" in reply.body.lower()
    assert reply.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert reply.headers["X-Frame-Options"] == "DENY" and "Server" not in reply.headers
    for name in ("app.js", "app.css"):
        assert Http(env[1].base, auth=None).get(f"/static/{name}").status == 200


def test_admin_off_by_default_listens_nowhere(tmp_path: Path) -> None:
    from tests.helpers.broker_process import broker_config  # noqa: PLC0415

    proc = BrokerProcess(tmp_path, broker_config()).start()
    try:
        assert "admin listening" not in proc.log_text()
        assert "iotbroker.admin" not in proc.log_text()
    finally:
        proc.stop()
    assert ALICE  # the module's credentials are not needed here


def test_https_with_admin_tls(tmp_path: Path) -> None:
    """admin.tls: the API over HTTPS (the test CA verifies the server certificate)."""
    import ssl  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    from tests.server.pki import make_pki  # noqa: PLC0415

    pki = make_pki(tmp_path / "pki")
    make_passwords(tmp_path)
    proc = BrokerProcess(tmp_path, admin_config(tmp_path, admin_extra=(
        f"  tls:\n    certfile: {pki.server_cert}\n    keyfile: {pki.server_key}\n"))).start()
    try:
        url = admin_url(proc)
        assert url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        request = urllib.request.Request(url + "/api/v1/health/ready")
        with urllib.request.urlopen(request, context=ctx, timeout=WAIT) as resp:
            assert json.loads(resp.read()) == {"status": "ready"}
    finally:
        proc.stop()


def test_repeated_failed_logins_are_refused_with_429(tmp_path: Path) -> None:
    """auth.failed_login_limit applies to the admin API per address: after the limit,
    even the right password is refused without a check until the backoff ends."""
    make_passwords(tmp_path)
    text = admin_config(tmp_path).replace(
        "  allow_anonymous: true\n",
        "  allow_anonymous: true\n  failed_login_limit: 3\n  failed_login_backoff: 60s\n")
    proc = BrokerProcess(tmp_path, text).start()
    try:
        base = admin_url(proc)
        for _ in range(3):
            assert Http(base, auth=("alice", "wrong")).get("/api/v1/broker").status == 401
        reply = Http(base, auth=ALICE).get("/api/v1/broker")
        assert reply.status == 429 and reply.json()["code"] == "TOO_MANY_REQUESTS"
        login = Http(base, auth=None).post("/api/v1/login", {"username": "alice",
                                                             "password": ALICE[1]})
        assert login.status == 429
        assert "blocked after repeated failed logins" in proc.log_text()
    finally:
        proc.stop()


def test_failed_logins_are_limited_per_username_across_addresses(tmp_path: Path) -> None:
    """auth.failed_login_limit applies to the admin API per username too (issue 17):
    guesses for alice spread over three client addresses (one failure each, no address
    over the limit) block alice, from any address, with 429 and without a check; other
    users from the same addresses go on; the backoff ends it. An API key's name has no
    such limit (a generated key cannot be guessed; the limit would only lock it out)."""
    key = make_passwords(tmp_path)
    text = admin_config(tmp_path).replace(
        "  allow_anonymous: true\n",
        "  allow_anonymous: true\n  failed_login_limit: 3\n  failed_login_window: 60s\n"
        "  failed_login_backoff: 2s\n")
    proc = BrokerProcess(tmp_path, text).start()
    try:
        base = admin_url(proc)
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            reply = Http(base, auth=("alice", "wrong"), source=source).get("/api/v1/broker")
            assert reply.status == 401, (source, reply.status, reply.body)
        # a fourth address, the right password: alice is blocked
        reply = Http(base, auth=ALICE, source="127.0.0.5").get("/api/v1/broker")
        assert reply.status == 429 and reply.json()["code"] == "TOO_MANY_REQUESTS"
        assert "for this user" in reply.json()["message"]
        login = Http(base, auth=None, source="127.0.0.5").post(
            "/api/v1/login", {"username": "alice", "password": ALICE[1]})
        assert login.status == 429
        assert "user 'alice' blocked after repeated failed logins" in proc.log_text()
        # the addresses themselves are not blocked: another user is checked as usual
        assert Http(base, auth=BOB, source="127.0.0.2").get("/api/v1/broker").status == 403
        # wrong keys for the API key ci from three addresses: ci still works
        for source in ("127.0.0.7", "127.0.0.8", "127.0.0.9"):
            assert Http(base, bearer="ci:wrong", source=source).get(
                "/api/v1/broker").status == 401
        assert Http(base, bearer=f"ci:{key}", source="127.0.0.10").get(
            "/api/v1/broker").status == 200
        # after the backoff alice logs in again (and her count starts over)
        deadline = time.monotonic() + 10
        while True:
            reply = Http(base, auth=ALICE, source="127.0.0.5").get("/api/v1/broker")
            if reply.status != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert reply.status == 200, (reply.status, reply.body)
        for _ in range(2):
            assert Http(base, auth=("alice", "x"), source="127.0.0.6").get(
                "/api/v1/broker").status == 401
        assert Http(base, auth=ALICE, source="127.0.0.6").get("/api/v1/broker").status == 200
    finally:
        proc.stop()


def test_sighup_reloads_the_api_keys(tmp_path: Path) -> None:
    """A key added to admin.api_keys_file works after SIGHUP; a removed one does not."""
    import signal  # noqa: PLC0415
    import sys  # noqa: PLC0415

    old_key = make_passwords(tmp_path)
    proc = BrokerProcess(tmp_path, admin_config(tmp_path)).start()
    try:
        base = admin_url(proc)
        assert Http(base, bearer=f"ci:{old_key}").get("/api/v1/broker").status == 200
        keys = tmp_path / "api-keys"
        keys.unlink()
        new_key = subprocess.run(
            [sys.executable, "-m", "iotbroker", "passwd", str(keys), "deploy", "--generate"],
            check=True, capture_output=True, text=True).stdout.strip()
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT
        while "admin API keys" not in proc.log_text():
            assert time.monotonic() < deadline, proc.log_text()
            time.sleep(0.05)
        assert Http(base, bearer=f"deploy:{new_key}").get("/api/v1/broker").status == 200
        assert Http(base, bearer=f"ci:{old_key}").get("/api/v1/broker").status == 401
    finally:
        proc.stop()


def test_live_stream_sends_history_then_samples_and_does_not_hold_shutdown(
        tmp_path: Path) -> None:
    """GET /api/v1/stream (Server-Sent Events): a ``history`` event, then one ``sample``
    a second; an open stream does not delay the broker's shutdown."""
    import base64  # noqa: PLC0415
    import http.client  # noqa: PLC0415

    make_passwords(tmp_path)
    proc = BrokerProcess(tmp_path, admin_config(tmp_path)).start()
    try:
        host, port = admin_url(proc).removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=WAIT)
        token = base64.b64encode(f"{ALICE[0]}:{ALICE[1]}".encode()).decode()
        conn.request("GET", "/api/v1/stream", headers={"Authorization": f"Basic {token}"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type", "").startswith("text/event-stream")
        events: list[tuple[str, object]] = []
        while len(events) < 3:
            name = resp.readline().decode().strip()
            if not name:
                continue
            data = resp.readline().decode().strip()
            assert name.startswith("event: ") and data.startswith("data: ")
            events.append((name[7:], json.loads(data[6:])))
        assert [e[0] for e in events] == ["history", "sample", "sample"]
        sample = events[2][1]
        assert isinstance(sample, dict)
        assert set(sample) == {"t", "connections", "msg_in", "msg_out", "dropped", "inflight",
                               "queued"}
        started = time.monotonic()
        assert proc.stop() == 0
        assert time.monotonic() - started < 5
        conn.close()
    finally:
        proc.stop()
