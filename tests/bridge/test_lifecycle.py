"""A bridge's life: $SYS state, reconnect with back-off, why a connect failed, the
reserved session id, SIGHUP changes."""

from __future__ import annotations

import getpass
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from iotbroker.codec.packets import Publish
from tests.bridge.conftest import (
    Mosquitto,
    bridge_yaml,
    collect,
    config_with_bridges,
    free_port,
    quiet,
    wait_for_log,
)
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import RawClient
from tests.server.clients import metrics_address

MakeBroker = Callable[..., BrokerProcess]
MakeMosquitto = Callable[..., Mosquitto]
STATE = "$SYS/broker/connection/cloud/state"


def _next_state(c: RawClient) -> bytes:
    pub = c.expect(Publish, 15)
    assert pub.topic == STATE
    return pub.payload


def test_state_topic_follows_the_link_and_reconnects(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto) -> None:
    """``$SYS/broker/connection/<name>/state``: 1 connected, 0 not (mosquitto's topic);
    the cause of each failed attempt is logged; the bridge comes back by itself."""
    mosq = make_mosquitto()
    gw = make_broker(config_with_bridges(bridge_yaml("cloud", mosq.port,
                                                     ['{pattern: "a/#", direction: out}'])))
    wait_for_log(gw, "bridge 'cloud': connected to")
    with RawClient(gw.host, gw.port, version=5) as c:
        c.connect("watcher")
        c.subscribe(STATE)
        assert _next_state(c) == b"1"  # retained
        mosq.stop()
        assert _next_state(c) == b"0"
        wait_for_log(gw, "bridge 'cloud': connection lost")
        wait_for_log(gw, f"127.0.0.1:{mosq.port}: TCP: connection refused")
        mosq.start()
        assert _next_state(c) == b"1"
    wait_for_log(gw, "bridge 'cloud': connected to", count=2)


def test_connack_refusal_is_logged_with_its_code(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto) -> None:
    mosq = make_mosquitto()
    mosq.stop()
    mosq.extra = "allow_anonymous false\n"
    mosq.start()  # no password file: every CONNECT is refused
    gw = make_broker(config_with_bridges(bridge_yaml("cloud", mosq.port,
                                                     ['{pattern: "a/#", direction: out}'])))
    wait_for_log(gw, "CONNACK refused: 0x87 not authorized")


def test_network_clients_cannot_take_the_bridge_session(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto) -> None:
    """``$bridge/<name>`` is reserved: CONNACK 0x85 (v5, [MQTT-3.1.3-8]) /
    0x02 (3.1.1, [MQTT-3.1.3-9])."""
    mosq = make_mosquitto()
    gw = make_broker(config_with_bridges(bridge_yaml("cloud", mosq.port,
                                                     ['{pattern: "a/#", direction: out}'])))
    with RawClient(gw.host, gw.port, version=5) as c:
        assert c.connect("$bridge/cloud").reason_code == 0x85
    with RawClient(gw.host, gw.port, version=4) as c:
        assert c.connect("$bridge/cloud").reason_code == 0x02


def test_sighup_adds_changes_and_removes_bridges(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto) -> None:
    """SIGHUP: a new bridge starts, a changed one reconnects with its new rules, a
    removed one stops; the unchanged one keeps its connection."""
    mosq = make_mosquitto()
    keep = bridge_yaml("keep", mosq.port, ['{pattern: "k/#", direction: out, qos: 1}'])
    one = bridge_yaml("one", mosq.port, ['{pattern: "x/#", direction: out, qos: 1, '
                                         'remote_prefix: "1/"}'])
    one_b = bridge_yaml("one", mosq.port, ['{pattern: "x/#", direction: out, qos: 1, '
                                           'remote_prefix: "1b/"}'])
    two = bridge_yaml("two", mosq.port, ['{pattern: "y/#", direction: out, qos: 1, '
                                         'remote_prefix: "2/"}'])
    gw = make_broker(config_with_bridges(keep + one))
    wait_for_log(gw, "bridge 'keep': connected to")
    wait_for_log(gw, "bridge 'one': connected to")

    def reload(text: str) -> None:
        gw.config_path.write_text(config_with_bridges(text))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)

    reload(keep + one_b + two)
    wait_for_log(gw, "bridge 'two': connected to")
    wait_for_log(gw, "bridge 'one': connected to", count=2)
    assert "bridge 'one' changed" in gw.log_text()
    with RawClient("127.0.0.1", mosq.port, version=5) as remote, \
            RawClient(gw.host, gw.port, version=5) as local:
        remote.connect("remote-sub")
        remote.subscribe("#", qos=1)
        local.connect("pub")
        for topic in ("x/a", "y/a", "k/a"):
            local.publish(topic, b"m", qos=1)
        got = sorted(p.topic for p in collect(remote, 3))
        assert got == ["1b/x/a", "2/y/a", "k/a"]
        reload(keep + one_b)
        wait_for_log(gw, "bridge 'two' removed")
        time.sleep(0.2)
        local.publish("y/b", b"m", qos=1)
        local.publish("k/b", b"m", qos=1)
        assert [p.topic for p in collect(remote, 1)] == ["k/b"]
        quiet(remote, 0.5)
    assert gw.log_text().count("bridge 'keep': connected to") == 1


def test_addresses_are_tried_in_order_and_each_failure_says_why(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto) -> None:
    """Fail-over: a name that does not resolve (DNS), a closed port (TCP), then the
    broker that answers; one log line per failed address, naming the cause."""
    mosq = make_mosquitto()
    closed = free_port()
    text = bridge_yaml("cloud", mosq.port, ['{pattern: "a/#", direction: out}']).replace(
        f"address: [127.0.0.1:{mosq.port}]",
        f"address: [bridge-test.invalid:1883, 127.0.0.1:{closed}, 127.0.0.1:{mosq.port}]")
    gw = make_broker(config_with_bridges(text))
    wait_for_log(gw, f"bridge 'cloud': connected to 127.0.0.1:{mosq.port}")
    log = gw.log_text()
    assert "bridge-test.invalid:1883: DNS: cannot resolve the remote address" in log
    assert f"127.0.0.1:{closed}: TCP: connection refused" in log


def test_acl_decides_what_the_bridge_reads(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto, tmp_path: Path) -> None:
    """With an ACL file the bridge reads as user ``$bridge/<name>``: a ``#`` out rule
    forwards only what its section grants (issue 12's one delivery path)."""
    mosq = make_mosquitto()
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\n\nuser $bridge/cloud\ntopic read s/#\n")
    acl.chmod(0o600)
    text = config_with_bridges(bridge_yaml("cloud", mosq.port,
                                           ['{pattern: "#", direction: out, qos: 1}']))
    gw = make_broker(text + f"auth:\n  acl_file: {acl}\n")
    wait_for_log(gw, "bridge 'cloud': connected to")
    with RawClient("127.0.0.1", mosq.port, version=5) as remote, \
            RawClient(gw.host, gw.port, version=5) as local:
        remote.connect("remote-sub")
        remote.subscribe("#", qos=1)
        local.connect("pub")
        local.publish("x/1", b"not granted", qos=1)
        local.publish("s/1", b"granted", qos=1)
        assert [(p.topic, p.payload) for p in collect(remote, 1)] == [("s/1", b"granted")]
        quiet(remote, 0.5)


def test_a_bridge_gone_from_the_config_at_restart_has_its_outbox_deleted(
        make_broker: MakeBroker) -> None:
    closed = free_port()
    gw = make_broker(config_with_bridges(bridge_yaml(
        "old", closed, ['{pattern: "a/#", direction: out, qos: 1}']), storage="rocksdb"))
    with RawClient(gw.host, gw.port, version=5) as c:
        c.connect("pub")
        for i in range(10):
            c.publish("a/x", str(i).encode(), qos=1)
    gw.stop()
    gw.config_path.write_text(config_with_bridges("[]\n", storage="rocksdb").replace(
        "bridges:\n[]", "bridges: []"))
    gw.start()
    wait_for_log(gw, "bridge 'old' is no longer configured: its outbox (10 messages) is "
                     "dropped")
    gw.restart()
    assert "restored 0 sessions" in gw.log_text()


def test_prometheus_figures_per_bridge(make_broker: MakeBroker,
                                       make_mosquitto: MakeMosquitto) -> None:
    """``iotbroker_bridge_*{bridge="<name>"}`` on the metrics endpoint."""
    mosq = make_mosquitto()
    text = config_with_bridges(bridge_yaml("cloud", mosq.port,
                                           ['{pattern: "a/#", direction: out, qos: 1}']))
    gw = make_broker(text + "metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n")
    wait_for_log(gw, "bridge 'cloud': connected to")
    with RawClient("127.0.0.1", mosq.port, version=5) as remote, \
            RawClient(gw.host, gw.port, version=5) as local:
        remote.connect("remote-sub")
        remote.subscribe("#", qos=1)
        local.connect("pub")
        for i in range(3):
            local.publish("a/x", str(i).encode(), qos=1)
        collect(remote, 3)
    host, port = metrics_address(gw)
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            samples = {(s.name, s.labels.get("bridge")): s.value
                       for f in text_string_to_metric_families(resp.read().decode())
                       for s in f.samples}
        if samples.get(("iotbroker_bridge_forwarded_out_total", "cloud")) == 3:
            break
        assert time.monotonic() < deadline, samples
        time.sleep(0.1)
    assert samples[("iotbroker_bridge_connected", "cloud")] == 1
    assert samples[("iotbroker_bridge_queued_messages", "cloud")] == 0
    assert samples[("iotbroker_bridge_dropped_total", "cloud")] == 0
    assert samples[("iotbroker_bridge_connects_total", "cloud")] == 1
    assert samples[("iotbroker_bridge_looped_total", "cloud")] == 0
    assert samples[("iotbroker_bridge_duplicates_total", "cloud")] == 0
    assert samples[("iotbroker_bridges_looped_total", None)] == 0


def test_username_and_password_on_the_remote(
        make_broker: MakeBroker, make_mosquitto: MakeMosquitto, tmp_path: Path) -> None:
    """``username`` / ``password`` reach the remote (mosquitto with a password file);
    a wrong password is refused with its CONNACK code in the log."""
    pwfile = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "gw", "s3cret"], check=True,
                   capture_output=True)
    pwfile.chmod(0o644)
    mosq = make_mosquitto(f"allow_anonymous false\npassword_file {pwfile}\n"
                          f"user {getpass.getuser()}\n")
    rules = ['{pattern: "a/#", direction: out, qos: 1}']
    good = make_broker(config_with_bridges(bridge_yaml(
        "cloud", mosq.port, rules, extra="    username: gw\n    password: s3cret\n")),
        name="good")
    wait_for_log(good, "bridge 'cloud': connected to")
    bad = make_broker(config_with_bridges(bridge_yaml(
        "cloud", mosq.port, rules, client_id="gw-bad",
        extra="    username: gw\n    password: wrong\n")), name="bad")
    wait_for_log(bad, "CONNACK refused: 0x87 not authorized")  # mosquitto 2.0's code for it
