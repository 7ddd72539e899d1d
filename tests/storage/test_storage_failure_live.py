"""A storage write that fails while the broker serves (docs/reliability.md, "Storage
failures at run time"): what clients see, and that nothing acknowledged is lost.

The failure is real: the running broker's file-size limit (``RLIMIT_FSIZE``, lowered
with ``prlimit`` on its PID) makes the kernel refuse every write past the first byte of
any file, as a full disk refuses them — RocksDB's WAL append fails ("File too large")
and so does the broker's own log file, which sits beside the data here as it often
does on a device. MQTT 3.1.1 §4.8 [MQTT-4.8.0-2]: a Transient Error while processing an
inbound packet closes that connection; the publisher gets no acknowledgement for what
was not stored and sends it again.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from iotbroker.codec.packets import PingReq, PingResp, PubAck, Publish
from tests.admin.helpers import admin_config, admin_url, make_passwords
from tests.helpers.broker_process import BrokerProcess
from tests.helpers.conformance import connected
from tests.helpers.rawclient import Closed
from tests.robustness.helpers import metric

Factory = Callable[..., BrokerProcess]


def _mosquitto_sub(broker: BrokerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("mosquitto_sub")
    assert binary, "mosquitto_sub (Debian mosquitto-clients) is needed; .ci/run installs it"
    return subprocess.run(
        [binary, "-h", broker.host, "-p", str(broker.port), "-V", "mqttv311", *args],
        check=False, capture_output=True, text=True, timeout=15,
    )


def _health(broker: BrokerProcess) -> tuple[int, str]:
    found = re.search(r"metrics listening on (\S+):(\d+)", broker.log_text())
    assert found, "no 'metrics listening on' line in the broker log"
    try:
        with urllib.request.urlopen(f"http://{found[1]}:{found[2]}/health", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _ready(broker: BrokerProcess) -> tuple[int, dict[str, str]]:
    """The admin API's readiness (docs/admin.md), public."""
    try:
        with urllib.request.urlopen(admin_url(broker) + "/api/v1/health/ready", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_mqtt_4_8_0_2_failed_storage_write_closes_the_publisher_and_recovers(
    make_broker: Factory, tmp_path: Path,
) -> None:
    """[MQTT-4.8.0-2]: with RocksDB's writes refused by the kernel, a QoS 1 PUBLISH for
    an offline persistent session closes the publisher's connection without PUBACK —
    promptly, although the broker's log file cannot be written either — and the broker
    keeps serving (QoS 0 between clean sessions, PINGREQ); the metrics endpoint's
    ``/health`` answers 503 with the store's error,
    ``iotbroker_storage_write_failures_total`` counts it and the admin API's readiness
    is 503 ``STORAGE_FAILING``. Once the medium takes writes again (the limit lifted)
    the next PUBLISH is acknowledged without a restart and /health is 200 again; the
    refused write was kept and went with it, so after a ``kill -9`` the offline
    ``mosquitto_sub -c`` session gets what memory held: all three messages, in order."""
    make_passwords(tmp_path)  # the admin API's users (its readiness is checked too)
    broker = make_broker(config_text=admin_config(
        tmp_path, storage="rocksdb",
        extra="metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n"))
    assert _health(broker) == (200, "ok\n")
    assert _ready(broker) == (200, {"status": "ready"})
    assert metric(broker, "iotbroker_storage_write_failures_total") == 0
    assert broker.proc is not None
    # A persistent 3.1.1 session (real client) subscribes, then goes offline.
    sub = _mosquitto_sub(broker, "-i", "disk-sub", "-c", "-q", "1", "-t", "disk/#", "-E")
    assert sub.returncode == 0, sub.stderr
    pub = connected(broker.host, broker.port, 5, "disk-pub")
    ack = pub.publish("disk/1", b"stored", qos=1)
    assert isinstance(ack, PubAck) and ack.reason_code == 0, ack  # the offline session matches
    watcher = connected(broker.host, broker.port, 5, "disk-watch")
    watcher.subscribe("live/#", 0)

    hard = resource.prlimit(broker.proc.pid, resource.RLIMIT_FSIZE)[1]
    resource.prlimit(broker.proc.pid, resource.RLIMIT_FSIZE, (1, hard))
    try:
        pub.send(Publish("disk/2", b"refused", 1, False, False, 77))
        started = time.monotonic()
        assert pub.expect_closed(5.0) == []  # no PUBACK, then the close
        assert time.monotonic() - started < 3.0
        # The broker serves what needs no store: QoS 0 between clean sessions, pings.
        live = connected(broker.host, broker.port, 5, "disk-live")
        live.publish("live/x", b"q0", qos=0)
        assert watcher.expect(Publish, timeout=3.0).payload == b"q0"
        live.send(PingReq())
        live.expect(PingResp)
        live.close()
        assert broker.alive
        # Operators see it where a full disk cannot hide it: /health and the metric.
        status, body = _health(broker)
        assert status == 503 and body.startswith("failing: storage: "), (status, body)
        assert "File too large" in body and str(broker.workdir) in body, body
        assert metric(broker, "iotbroker_storage_write_failures_total") >= 1
        status, ready = _ready(broker)
        assert status == 503 and ready["code"] == "STORAGE_FAILING", (status, ready)
        assert "File too large" in ready["message"], ready
    finally:
        resource.prlimit(broker.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
        watcher.close()

    # The medium takes writes again: within REOPEN_INTERVAL (1 s) the store reopens.
    again = connected(broker.host, broker.port, 5, "disk-pub-2")
    deadline = time.monotonic() + 10.0
    acked = False
    while not acked and time.monotonic() < deadline:
        again.send(Publish("disk/3", b"after", 1, False, False, 5))
        try:
            acked = again.expect(PubAck, timeout=3.0).reason_code == 0
        except Closed:  # refused within the interval: closed, try again
            time.sleep(0.3)
            again = connected(broker.host, broker.port, 5, "disk-pub-2")
    assert acked, "no PUBACK within 10 s of the limit lifted"
    again.close()
    assert _health(broker) == (200, "ok\n")
    assert _ready(broker) == (200, {"status": "ready"})

    broker.kill()  # what the store holds now is what a restart finds
    broker.start()
    # -C 4 -W 3: a fourth message would be printed; the timeout ends it (exit 27).
    got = _mosquitto_sub(broker, "-i", "disk-sub", "-c", "-q", "1", "-t", "disk/#",
                         "-C", "4", "-W", "3", "-F", "%t %p")
    lines = got.stdout.splitlines()
    # disk/3 may have been sent (and refused) more than once: each refused try was
    # kept too; QoS 1 allows the duplicates [MQTT-4.3.2], the order holds.
    assert lines[:2] == ["disk/1 stored", "disk/2 refused"], (lines, got.stderr)
    assert set(lines[2:]) == {"disk/3 after"}, (lines, got.stderr)
