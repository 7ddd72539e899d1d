"""Issue 18: wills in the simulator's report say which were owed, which were excused
and why, and an owed will that never came is a violation. Runs against the real broker:
a ``kill -9`` mid-run (wills excused: the broker went away) and an ACL that stops the
broker from publishing wills (owed wills missing: a violation)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from iotsim.runner import run
from iotsim.scenario import parse_scenario

from tests.helpers.broker_process import BrokerProcess
from tests.server.clients import config, listener
from tests.sim.conftest import free_port


def _will_fleet(count: int, duration: str, faults: list[dict[str, object]]) -> dict[str, object]:
    return {
        "name": "wills", "duration": duration, "seed": 3, "connect_rate": "200/s",
        "groups": [{"name": "d", "count": count, "behaviour": "idle", "keepalive": 5,
                    "will": {"topic": "iotsim/{run}/status/{id}", "payload": "gone",
                             "qos": 1}}],
        "monitors": {"count": 1, "qos": 1},
        "faults": faults,
    }


def test_broker_crash_wills_are_excused_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    text = config(f"  - name: main\n    type: tcp\n    host: 127.0.0.1\n    port: {port}\n")
    text = text.replace("backend: memory", "backend: rocksdb\n  path: data")
    broker = BrokerProcess(tmp_path, text).start()
    crashed = threading.Event()

    def crash() -> None:
        broker.kill()  # kill -9 while every device is connected
        time.sleep(0.3)
        broker.start()
        crashed.set()

    timer = threading.Timer(1.5, crash)
    timer.start()
    try:
        report = run(parse_scenario(_will_fleet(12, "3.5s", [])), "127.0.0.1", port,
                     report_dir=tmp_path / "rep")
    finally:
        timer.join()
        broker.stop()
    assert crashed.is_set()
    w = report["wills"]
    # Every device lost its connection to the crash: 12 wills expected at the monitor,
    # none owed (the broker was gone), each excused as a broker outage and listed.
    assert w["expected"] >= 12, w
    assert w["excused"].get("broker_outage", 0) >= 12, w
    assert w["missing"] == 0 and w["unexpected"] == 0, w
    assert report["violations"]["wills_missing"] == 0
    listed = [e for e in w["excused_list"] if e["reason"] == "broker_outage"]
    assert len(listed) >= 12
    assert {e["connection_end"] for e in listed} <= {"connection_lost", "broker_closed"}
    assert all("/status/" in e["topic"] and e["subscriber"] == "monitor-0" for e in listed)
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Excused wills" in page and "broker_outage" in page
    assert "a crashed broker cannot have published it" in page


def test_owed_will_that_never_came_is_a_violation(
        make_broker: Callable[..., BrokerProcess], tmp_path: Path) -> None:
    """The broker's ACL lets nobody write the will topics, so (MQTT 3.1.1 devices: the
    connection is accepted without its will, docs/auth.md) it never publishes them: the
    wills of the abrupt closes are owed (the devices closed, the monitor was there) and
    missing."""
    acl = tmp_path / "acl"
    acl.write_text("topic read iotsim/#\n")
    b = make_broker(config(listener("tcp", "tcp"), f"auth:\n  acl_file: {acl}\n"))
    doc = _will_fleet(6, "2s", [{"kind": "abrupt_close", "count": 3, "start": "300ms",
                                 "end": "1s", "downtime": "100ms"}])
    report = run(parse_scenario(doc), b.host, b.port, report_dir=tmp_path / "rep")
    w = report["wills"]
    assert (w["expected"], w["owed"], w["received"], w["missing"]) == (3, 3, 0, 3), w
    assert w["missing_by_connection_end"] == {"client_abort": 3}
    assert report["violations"]["wills_missing"] == 3
    assert report["ok"] is False
    assert "wills_missing 3" in report["verdict"]["reasons"]
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "<td class='bad'>3</td>" in page
