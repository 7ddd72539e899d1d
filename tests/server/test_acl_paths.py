"""Authorisation holds on every path a message takes to a client (issue 12).

The real broker with an ACL file, raw sockets, MQTT 3.1.1 and 5.0. Each delivery path
(live, retained on SUBSCRIBE, queued for an offline session and delivered on reconnect,
shared subscription, will) is tried for four receivers that all hold a granted
subscription to the same filter:

* ``reader``   ``topic read home/#``: allowed;
* ``nomatch``  subscribe rights on ``home/#`` but read rights only on ``home/other/#``:
  denied because no read rule matches;
* ``denied``   ``topic read home/#`` and ``topic deny home/+/secrets/#``: denied by the
  deny override;
* ``subonly``  ``topic subscribe home/#`` only: may subscribe, never receives.

Every test also has ``reader`` as a control that must receive the same message, so a
"nothing arrived" is never the result of a message that was not routed at all.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iotbroker.codec.packets import ConnAck, Properties, PubAck, PubComp, Publish, PubRec, Will
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.conformance import wait_log
from tests.helpers.rawclient import RawClient
from tests.server.clients import run_tool
from tests.server.test_metrics_http import scrape, value

ACL = """\
user admin
topic readwrite #
topic readwrite $SYS/#

user reader
topic read home/#

user nomatch
topic subscribe home/#
topic read home/other/#

user denied
topic read home/#
topic deny home/+/secrets/#

user subonly
topic subscribe home/#

user bob
topic write sensors/bob/+
topic read sensors/#
"""

RECEIVERS = {"reader": True, "nomatch": False, "denied": False, "subonly": False}
SILENCE = 0.6  # how long "nothing arrives" is watched for
VERSIONS = (4, 5)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    workdir = tmp_path_factory.mktemp("acl-paths")
    (workdir / "acl").write_text(ACL)
    proc = BrokerProcess(workdir, broker_config(extra="auth:\n  acl_file: acl\n")).start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log_text()


def _client(broker: BrokerProcess, version: int, client_id: str, user: str,
            clean: bool = True, will: Will | None = None) -> RawClient:
    client = RawClient(broker.host, broker.port, version=version, timeout=3.0)
    props = Properties(session_expiry_interval=300) if version == 5 and not clean else None
    ack = client.connect(client_id, clean_start=clean, username=user, will=will,
                         properties=props)
    assert ack.reason_code == 0, ack
    return client


def _topic(tag: str) -> str:
    return f"home/{tag}/secrets/r"


def _expect(client: RawClient, topic: str, payload: bytes) -> Publish:
    pub = client.receive_publish(timeout=3.0)
    assert (pub.topic, pub.payload) == (topic, payload)
    return pub


def _receives(client: RawClient, topic: str, payload: bytes, allowed: bool) -> None:
    if allowed:
        _expect(client, topic, payload)
    else:
        client.nothing(SILENCE)


def _tag(version: int, user: str, path: str) -> str:
    return f"{path}{version}{user}{time.monotonic_ns() % 1_000_000}"


# ------------------------------------------------------------------------------ live
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("user", list(RECEIVERS))
def test_live_delivery_follows_read_acl(broker: BrokerProcess, version: int, user: str) -> None:
    tag = _tag(version, user, "live")
    topic = _topic(tag)
    control = _client(broker, version, f"ctl-{tag}", "reader")
    subject = _client(broker, version, f"sub-{tag}", user)
    for c in (control, subject):
        assert c.subscribe(f"home/{tag}/#", 1).reason_codes == [1]
    admin = _client(broker, version, f"adm-{tag}", "admin")
    admin.publish(topic, b"live", 1)
    _expect(control, topic, b"live")
    _receives(subject, topic, b"live", RECEIVERS[user])
    for c in (control, subject, admin):
        c.disconnect()


# ------------------------------------------------------------------- retained on SUBSCRIBE
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("user", list(RECEIVERS))
def test_retained_on_subscribe_follows_read_acl(
    broker: BrokerProcess, version: int, user: str
) -> None:
    """The defect of issue 12: retained messages sent on SUBSCRIBE skipped the ACL."""
    tag = _tag(version, user, "ret")
    topic = _topic(tag)
    admin = _client(broker, version, f"adm-{tag}", "admin")
    admin.publish(topic, b"retained", 1, retain=True)
    control = _client(broker, version, f"ctl-{tag}", "reader")
    subject = _client(broker, version, f"sub-{tag}", user)
    for c in (control, subject):
        assert c.subscribe(f"home/{tag}/#", 1).reason_codes == [1]
    assert _expect(control, topic, b"retained").retain
    _receives(subject, topic, b"retained", RECEIVERS[user])
    admin.publish(topic, b"", 1, retain=True)  # clear it
    for c in (control, subject, admin):
        c.disconnect()


# ------------------------------------------------------------- queued while offline
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("user", list(RECEIVERS))
def test_queued_offline_delivery_follows_read_acl(
    broker: BrokerProcess, version: int, user: str
) -> None:
    tag = _tag(version, user, "q")
    topic = _topic(tag)
    control = _client(broker, version, f"ctl-{tag}", "reader", clean=False)
    subject = _client(broker, version, f"sub-{tag}", user, clean=False)
    for c in (control, subject):
        assert c.subscribe(f"home/{tag}/#", 1).reason_codes == [1]
        c.disconnect()
    admin = _client(broker, version, f"adm-{tag}", "admin")
    admin.publish(topic, b"queued", 1)
    admin.disconnect()
    control = _client(broker, version, f"ctl-{tag}", "reader", clean=False)
    subject = _client(broker, version, f"sub-{tag}", user, clean=False)
    _expect(control, topic, b"queued")
    _receives(subject, topic, b"queued", RECEIVERS[user])
    for c in (control, subject):
        c.disconnect()


# ------------------------------------------------------------------- shared group
@pytest.mark.parametrize("version", [5])
@pytest.mark.parametrize("user", list(RECEIVERS))
def test_shared_subscription_delivery_follows_read_acl(
    broker: BrokerProcess, version: int, user: str
) -> None:
    """A group whose only member may not read the topic gets nothing (MQTT 5.0 §4.8.2)."""
    tag = _tag(version, user, "sh")
    topic = _topic(tag)
    control = _client(broker, version, f"ctl-{tag}", "reader")
    subject = _client(broker, version, f"sub-{tag}", user)
    assert control.subscribe(f"home/{tag}/#", 1).reason_codes == [1]
    assert subject.subscribe(f"$share/g{tag}/home/{tag}/#", 1).reason_codes == [1]
    admin = _client(broker, version, f"adm-{tag}", "admin")
    admin.publish(topic, b"shared", 1)
    _expect(control, topic, b"shared")
    _receives(subject, topic, b"shared", RECEIVERS[user])
    for c in (control, subject, admin):
        c.disconnect()


def test_shared_group_member_that_may_read_gets_every_message(broker: BrokerProcess) -> None:
    """A denied member is skipped, so the group's messages all go to the allowed one."""
    tag = _tag(5, "mix", "sh")
    topic = _topic(tag)
    allowed = _client(broker, 5, f"ok-{tag}", "reader")
    refused = _client(broker, 5, f"no-{tag}", "denied")
    for c in (allowed, refused):
        assert c.subscribe(f"$share/g{tag}/home/{tag}/#", 1).reason_codes == [1]
    admin = _client(broker, 5, f"adm-{tag}", "admin")
    for i in range(4):
        admin.publish(topic, b"m%d" % i, 1)
    for i in range(4):
        _expect(allowed, topic, b"m%d" % i)
    refused.nothing(SILENCE)
    for c in (allowed, refused, admin):
        c.disconnect()


# ---------------------------------------------------------------------------- wills
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("user", list(RECEIVERS))
def test_will_delivery_follows_read_acl(broker: BrokerProcess, version: int, user: str) -> None:
    tag = _tag(version, user, "will")
    topic = _topic(tag)
    control = _client(broker, version, f"ctl-{tag}", "reader")
    subject = _client(broker, version, f"sub-{tag}", user)
    for c in (control, subject):
        assert c.subscribe(f"home/{tag}/#", 1).reason_codes == [1]
    owner = _client(broker, version, f"own-{tag}", "admin", will=Will(topic, b"gone", 1))
    owner.close()  # no DISCONNECT: the will is due
    _expect(control, topic, b"gone")
    _receives(subject, topic, b"gone", RECEIVERS[user])
    for c in (control, subject):
        c.disconnect()


def _forbidden_will(tag: str) -> Will:
    """bob may write only sensors/bob/+; this will targets alice's door, retained."""
    return Will(f"home/{tag}/door", b"open", 1, retain=True)


def test_mqtt5_forbidden_will_refused_at_connect_with_0x87(broker: BrokerProcess) -> None:
    """MQTT 5.0 §3.2.2.2: CONNACK 0x87 Not authorized; the will is never published."""
    tag = _tag(5, "bob", "fw")
    control = _client(broker, 5, f"ctl-{tag}", "admin")
    assert control.subscribe(f"home/{tag}/#", 1).reason_codes == [1]
    bob = RawClient(broker.host, broker.port, version=5, timeout=3.0)
    ack = bob.connect(f"bob-{tag}", username="bob", will=_forbidden_will(tag))
    assert isinstance(ack, ConnAck) and ack.reason_code == 0x87
    bob.expect_closed(3.0)
    control.nothing(SILENCE)
    late = _client(broker, 5, f"late-{tag}", "admin")
    assert late.subscribe(f"home/{tag}/#", 1).reason_codes == [1]
    late.nothing(SILENCE)  # nothing retained
    for c in (control, late):
        c.disconnect()


def test_mqtt311_forbidden_will_accepted_but_never_published(broker: BrokerProcess) -> None:
    """MQTT 3.1.1 has no CONNACK code for "your will is refused": the connection is
    accepted without its will (docs/auth.md). Neither delivered nor retained."""
    tag = _tag(4, "bob", "fw")
    control = _client(broker, 4, f"ctl-{tag}", "admin")
    assert control.subscribe(f"home/{tag}/#", 1).reason_codes == [1]
    bob = _client(broker, 4, f"bob-{tag}", "bob", will=_forbidden_will(tag))
    bob.close()  # dropped socket: a permitted will would be published now
    control.nothing(SILENCE)
    late = _client(broker, 4, f"late-{tag}", "admin")
    assert late.subscribe(f"home/{tag}/#", 1).reason_codes == [1]
    late.nothing(SILENCE)
    assert wait_log(broker, f"will topic 'home/{tag}/door' not authorised")
    for c in (control, late):
        c.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_allowed_will_is_published_and_retained(broker: BrokerProcess, version: int) -> None:
    """The control: bob's will to a topic he may write is published and retained."""
    tag = _tag(version, "bob", "aw")
    will_topic = f"sensors/bob/{tag}"
    control = _client(broker, version, f"ctl-{tag}", "admin")
    assert control.subscribe(will_topic, 1).reason_codes == [1]
    bob = _client(broker, version, f"bob-{tag}", "bob", will=Will(will_topic, b"bye", 1,
                                                                     retain=True))
    bob.close()
    _expect(control, will_topic, b"bye")
    late = _client(broker, version, f"late-{tag}", "admin")
    late.subscribe(will_topic, 1)
    assert _expect(late, will_topic, b"bye").retain
    late.unsubscribe(will_topic)
    control.unsubscribe(will_topic)
    late.publish(will_topic, b"", 1, retain=True)  # clear it
    for c in (control, late):
        c.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_will_to_sys_refused_even_when_acl_allows(broker: BrokerProcess, version: int) -> None:
    """admin may write ``$SYS/#`` in the ACL; a will there is still refused."""
    tag = _tag(version, "adm", "sysw")
    topic = f"$SYS/broker/{tag}"
    control = _client(broker, version, f"ctl-{tag}", "admin")
    assert control.subscribe(topic, 1).reason_codes == [1]
    owner = RawClient(broker.host, broker.port, version=version, timeout=3.0)
    ack = owner.connect(f"own-{tag}", username="admin", will=Will(topic, b"fake", 1, True))
    assert ack.reason_code == (0x87 if version == 5 else 0)
    owner.close()
    control.nothing(SILENCE)
    control.disconnect()


# ----------------------------------------------------------------------------- $SYS
@pytest.mark.parametrize("version", VERSIONS)
def test_sys_publish_refused_even_when_acl_allows(broker: BrokerProcess, version: int) -> None:
    """``$SYS`` is the broker's own: MQTT 5.0 PUBACK/PUBREC 0x87; MQTT 3.1.1 acknowledged
    and dropped [MQTT-3.3.5-2]; nothing is delivered or retained."""
    tag = _tag(version, "adm", "sys")
    topic = f"$SYS/broker/{tag}"
    watcher = _client(broker, version, f"w-{tag}", "admin")
    assert watcher.subscribe(topic, 1).reason_codes == [1]
    admin = _client(broker, version, f"adm-{tag}", "admin")
    ack = admin.publish(topic, b"FAKE", 1, retain=True)
    assert isinstance(ack, PubAck)
    assert ack.reason_code == (0x87 if version == 5 else 0)
    final = admin.publish(topic, b"FAKE2", 2, retain=True)
    if version == 5:
        assert isinstance(final, PubRec) and final.reason_code == 0x87
    else:
        assert isinstance(final, PubComp)  # the whole QoS 2 exchange, then dropped
    watcher.nothing(SILENCE)
    late = _client(broker, version, f"late-{tag}", "admin")
    late.subscribe(topic, 1)
    late.nothing(SILENCE)
    for c in (watcher, admin, late):
        c.disconnect()


# --------------------------------------------------------------------------- reload
RELOADED_ACL = ACL.replace("user reader\ntopic read home/#\n",
                           "user reader\ntopic read home/#\ntopic deny home/+/secrets/#\n")
RELOADED_ACL = RELOADED_ACL.replace(
    "user bob\ntopic write sensors/bob/+\n", "user bob\ntopic write sensors/bob/other\n"
)


def _reload(broker: BrokerProcess, acl: Path, text: str) -> None:
    acl.write_text(text)
    assert broker.proc is not None
    before = broker.log_text().count("configuration reloaded")
    broker.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while broker.log_text().count("configuration reloaded") == before:
        assert time.monotonic() < deadline, broker.log_text()[-2000:]
        time.sleep(0.05)


@pytest.mark.parametrize("version", VERSIONS)
def test_reload_applies_to_queued_retained_and_wills(tmp_path: Path, version: int) -> None:
    """After SIGHUP narrows the ACL, messages queued under the old rules, retained
    messages and a will armed under the old rules follow the new rules (issue 12 item 4).
    The controls (a topic still readable, a will still allowed) still arrive."""
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    broker = BrokerProcess(tmp_path, broker_config(extra=f"auth:\n  acl_file: {acl}\n")).start()
    try:
        secret, open_topic = "home/x/secrets/r", "home/x/open"
        reader = _client(broker, version, "reader-1", "reader", clean=False)
        assert reader.subscribe("home/#", 1).reason_codes == [1]
        reader.disconnect()
        admin = _client(broker, version, "admin-1", "admin")
        admin.publish(secret, b"queued-secret", 1)
        admin.publish(open_topic, b"queued-open", 1)
        admin.publish(secret, b"retained-secret", 1, retain=True)
        watcher = _client(broker, version, "watcher-1", "admin")
        assert watcher.subscribe("sensors/#", 1).reason_codes == [1]
        bob = _client(broker, version, "bob-1", "bob", will=Will("sensors/bob/state", b"x", 1))
        bob_ok = _client(broker, version, "bob-2", "bob",
                         will=Will("sensors/bob/other", b"still-allowed", 1))

        _reload(broker, acl, RELOADED_ACL)

        reader = _client(broker, version, "reader-1", "reader", clean=False)
        _expect(reader, open_topic, b"queued-open")  # the control arrives...
        reader.nothing(SILENCE)  # ...the secret queued before the reload does not
        fresh = _client(broker, version, "reader-2", "reader")
        assert fresh.subscribe("home/x/#", 1).reason_codes == [1]
        fresh.nothing(SILENCE)  # retained secret withheld under the new rules
        bob.close()
        bob_ok.close()
        _expect(watcher, "sensors/bob/other", b"still-allowed")
        watcher.nothing(SILENCE)  # bob's other will: allowed at CONNECT, refused now
        assert wait_log(broker, "will of 'bob-1' (user 'bob') to 'sensors/bob/state' not "
                                "published")
        for c in (reader, fresh, watcher, admin):
            c.disconnect()
    finally:
        broker.stop()
    assert "Traceback" not in broker.log_text()


@pytest.mark.parametrize("version", VERSIONS)
def test_reload_adding_an_acl_applies_to_publish(tmp_path: Path, version: int) -> None:
    """A broker started without an ACL skips the publish check (issue 19, latency);
    a SIGHUP that adds ``auth.acl_file`` must bring it back: a PUBLISH the new ACL does
    not allow is refused (MQTT 5.0: PUBACK 0x87 Not authorized, §3.4.2.1; 3.1.1:
    acknowledged and dropped) and not delivered, an allowed one still is."""
    broker = BrokerProcess(tmp_path, broker_config()).start()
    try:
        watcher = _client(broker, version, "watcher-1", "admin")
        assert watcher.subscribe("sensors/#", 1).reason_codes == [1]
        bob = _client(broker, version, "bob-1", "bob")
        assert isinstance(bob.publish("sensors/alice/t", b"open", 1), PubAck)
        _expect(watcher, "sensors/alice/t", b"open")  # no ACL yet: anything goes

        acl = tmp_path / "acl"
        acl.write_text(ACL)
        broker.config_path.write_text(broker_config(extra=f"auth:\n  acl_file: {acl}\n"))
        _reload(broker, acl, ACL)

        ack = bob.publish("sensors/alice/t", b"refused", 1)
        assert isinstance(ack, PubAck)
        assert ack.reason_code == (0x87 if version == 5 else 0)
        assert bob.publish("sensors/bob/t", b"allowed", 1).reason_code == 0
        _expect(watcher, "sensors/bob/t", b"allowed")  # the control; the refused one
        watcher.nothing(SILENCE)                        # never arrived before it
        for c in (watcher, bob):
            c.disconnect()
    finally:
        broker.stop()
    assert "Traceback" not in broker.log_text()


# -------------------------------------------------- $SYS on a broker with no ACL at all
def test_sys_version_cannot_be_forged_with_mosquitto_pub(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """Anonymous clients, no ACL, $SYS on (as the defaults): ``mosquitto_pub -r`` to
    ``$SYS/broker/version`` is refused and counted; subscribers still see the broker's
    own value, live and retained."""
    broker = make_broker(broker_config(extra=(
        "sys_topics:\n  enabled: true\n  interval: 0.2s\n"
        "metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n")))
    port = str(broker.port)
    forged = run_tool(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-t",
                       "$SYS/broker/version", "-m", "FAKE", "-r", "-q", "1"])
    assert forged.returncode == 0, forged.stderr  # 3.1.1: acknowledged, dropped
    forged5 = run_tool(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-V", "mqttv5",
                        "-t", "$SYS/broker/version", "-m", "FAKE5", "-r", "-q", "1"])
    assert "Not authorized" in forged5.stderr, forged5.stderr  # PUBACK 0x87
    seen = run_tool(["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-t",
                     "$SYS/broker/version", "-C", "1", "-W", "5"])
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.strip().startswith("iotbroker version "), seen.stdout
    assert wait_log(broker, "may not publish to the broker's topic '$SYS/broker/version'")
    with RawClient(broker.host, broker.port, version=5) as raw:
        raw.connect("forger-raw")
        ack = raw.publish("$SYS/broker/uptime", b"0 seconds", 1, retain=True)
        assert isinstance(ack, PubAck) and ack.reason_code == 0x87
        raw.disconnect()
    samples = scrape(broker)
    assert value(samples, "iotbroker_sys_publish_refused_total") == 3
