"""Small scenarios against iotbroker (the project's fixtures) and mosquitto (started here).

Each run is a few seconds with tens to hundreds of devices; the accounting must be exact:
without faults nothing is lost at QoS 1/2 and nothing is duplicated; with faults, losses
and duplicates stay within what each QoS allows, and wills fire on abrupt closes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from iotsim.runner import run
from iotsim.scenario import parse_scenario

from tests.helpers.broker_process import BrokerProcess
from tests.server.clients import config, listener, tls_block
from tests.server.pki import make_pki
from tests.sim.conftest import Mosquitto, free_port

BROKERS = ["iotbroker", "mosquitto"]


@pytest.fixture(params=BROKERS)
def target(request: pytest.FixtureRequest) -> tuple[str, int]:
    """(host, port) of the shared iotbroker or of the session's mosquitto."""
    if request.param == "iotbroker":
        b: BrokerProcess = request.getfixturevalue("broker")
        return b.host, b.port
    m: Mosquitto = request.getfixturevalue("mosquitto")
    return m.host, m.port


def _assert_exact(report: dict[str, Any]) -> None:
    m = report["messages"]
    assert report["devices"]["failed"] == 0, report["errors"]
    assert m["published"] > 0
    for q in ("1", "2"):
        b = m["by_qos"][q]
        assert b["lost"] == 0, (q, b)
        assert b["duplicated"] == 0, (q, b)
        assert b["out_of_order"] == 0, (q, b)
    assert m["by_qos"]["0"]["duplicated"] == 0
    assert report["ok"], report["violations"]


NO_FAULTS = {
    "name": "no-faults",
    "duration": "2.5s",
    "connect_rate": "400/s",
    "groups": [
        {"name": "v311", "count": 60, "version": "3.1.1", "interval": "200ms",
         "qos": {0: 1, 1: 1, 2: 1}, "payload": {"kind": "fixed", "size": 40}},
        {"name": "v5", "count": 60, "version": 5, "interval": "200ms", "qos": {1: 1, 2: 1},
         "payload": {"kind": "random", "size": 200}},
        {"name": "gw", "count": 3, "behaviour": "gateway", "children": 10, "interval": "500ms",
         "qos": 2, "topic": "iotsim/{run}/gw/{id}/child/{child}"},
    ],
    "monitors": {"count": 2, "qos": 2},
}


def test_no_faults_accounting_is_exact(target: tuple[str, int], tmp_path: Path) -> None:
    report = run(parse_scenario(NO_FAULTS), *target, report_dir=tmp_path)
    _assert_exact(report)
    m = report["messages"]
    assert m["subscribers"] == 2
    # every message reaches both monitors; QoS 1/2 are all acknowledged
    assert m["expected"] == 2 * m["published"] and m["unconfirmed"] == 0
    assert m["delivered"] == m["expected"] - m["by_qos"]["0"]["lost"]
    assert report["devices"]["connected"] == 123
    assert report["latency_ms"]["count"] == m["received"]
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] \
        <= report["latency_ms"]["max"]
    assert report["publish_ack_latency_ms"]["count"] == m["confirmed"]
    assert (tmp_path / "report.json").exists() and (tmp_path / "report.html").exists()
    # Issue 18: readable tables, a per-QoS breakdown saying what each QoS allows, one
    # timestamp format (ISO 8601, UTC, seconds).
    page = (tmp_path / "report.html").read_text()
    for heading in ("Verdict", "Delivery by QoS", "Violations", "Wills", "Connect errors"):
        assert f"<h2>{heading}</h2>" in page
    assert "exactly once: no loss of acknowledged messages, no duplicates" in page
    assert '{"' not in page  # no raw JSON
    run_meta = report["run"]
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")
    assert stamp.fullmatch(run_meta["started_at"]) and stamp.fullmatch(run_meta["finished_at"])
    assert f"{run_meta['started_at']} / {run_meta['finished_at']}" in page


FAULTS = {
    "name": "faults",
    "duration": "4s",
    "seed": 5,
    "connect_rate": "500/s",
    "groups": [
        {"name": "meters", "count": 40, "version": 5, "clean_start": False,
         "session_expiry": "5m", "interval": "100ms", "qos": {1: 1, 2: 1}, "max_inflight": 5,
         "will": {"topic": "iotsim/{run}/meters/{id}/will", "qos": 1}},
        {"name": "legacy", "count": 20, "version": "3.1.1", "clean_start": False,
         "interval": "100ms", "qos": {1: 1, 2: 1},
         "will": {"topic": "iotsim/{run}/legacy/{id}/will", "qos": 1}},
        {"name": "cheap", "count": 20, "version": 4, "interval": "100ms",
         "qos": {0: 1, 1: 1, 2: 1}},
    ],
    "monitors": {"count": 1, "qos": 2},
    "faults": [
        {"kind": "disconnect", "rate": "6/s", "start": "500ms", "end": "3s",
         "downtime": "100ms"},
        {"kind": "abrupt_close", "count": 8, "start": "500ms", "end": "3s",
         "downtime": "100ms"},
        {"kind": "stop_reading", "count": 4, "start": "500ms", "end": "3s",
         "duration": "700ms"},
    ],
}


def test_faults_stay_within_what_qos_allows(target: tuple[str, int]) -> None:
    report = run(parse_scenario(FAULTS), *target)
    c = report["counters"]
    assert c["fault_disconnect"] >= 5 and c["fault_abrupt_close"] == 8
    assert c["fault_stop_reading"] == 4
    v = report["violations"]
    assert v == {k: 0 for k in v}, (v, report["messages"]["by_qos"])
    m = report["messages"]
    assert m["by_qos"]["2"]["duplicated"] == 0  # exactly once, even across reconnects
    assert m["by_qos"]["1"]["lost_confirmed"] == 0 and m["by_qos"]["2"]["lost_confirmed"] == 0
    # wills: one per abrupt close of a will-bearing device, none for clean disconnects
    w = report["wills"]
    assert w["received"] == w["expected"] > 0
    assert w["unexpected"] == 0
    assert report["devices"]["failed"] == 0


def test_wills_fire_on_abrupt_close_only(target: tuple[str, int]) -> None:
    doc = {
        "name": "wills", "duration": "2.5s", "seed": 1,
        "groups": [{"name": "d", "count": 20, "behaviour": "idle", "version": v,
                    "client_id": f"{{run}}-v{v}-{{id}}",
                    "will": {"topic": f"iotsim/{{run}}/status/v{v}/{{id}}", "payload": "lost",
                             "qos": 1}} for v in (4, 5)],
        "faults": [{"kind": "abrupt_close", "count": 6, "start": "300ms", "end": "1500ms",
                    "downtime": "100ms"},
                   {"kind": "disconnect", "count": 6, "start": "300ms", "end": "1500ms",
                    "downtime": "100ms"}],
    }
    doc["groups"][1]["name"] = "d5"
    report = run(parse_scenario(doc), *target)
    assert report["counters"]["fault_abrupt_close"] == 6
    w = report["wills"]
    assert (w["expected"], w["owed"], w["received"], w["missing"], w["unexpected"]) == (
        6, 6, 6, 0, 0), w
    assert w["excused"] == {} and w["excused_list"] == []


def test_gateways_actuators_dashboards(broker: BrokerProcess, tmp_path: Path) -> None:
    doc = {
        "name": "building", "duration": "3s", "seed": 2,
        "defaults": {"sites": 2},
        "groups": [
            {"name": "temp", "count": 30, "version": 5, "interval": "250ms", "qos": 1,
             "topic": "iotsim/{run}/site/{site}/device/{id}/temp",
             "payload": {"kind": "json", "fields": {"c": {"random": [20.0, 25.0]}}}},
            {"name": "gw", "count": 2, "behaviour": "gateway", "children": 25,
             "interval": "500ms", "qos": 1,
             "topic": "iotsim/{run}/site/{site}/gw/{id}/tag/{child}"},
            {"name": "valves", "count": 5, "behaviour": "actuator", "version": 5},
            {"name": "dash", "count": 2, "behaviour": "dashboard", "version": 5,
             "subscribe": ["iotsim/{run}/site/+/device/#"], "subscribe_qos": 1,
             "requests": {"target": "valves", "interval": "200ms"}},
        ],
    }
    report = run(parse_scenario(doc), broker.host, broker.port, report_dir=tmp_path)
    _assert_exact(report)
    m = report["messages"]
    assert m["subscribers"] == 3  # the monitor and both dashboards
    # the monitor sees sensors and gateway children, the dashboards the sensors only
    assert m["published"] < m["expected"] < 3 * m["published"]
    assert m["published_by_qos"]["1"] == m["published"]
    rr = report["request_response"]
    assert rr["sent"] >= 10
    assert rr["responses_received"] == rr["sent"] == rr["received_by_actuators"]
    assert rr["latency_ms"]["count"] == rr["sent"]


def test_workers_merge_statistics(broker: BrokerProcess) -> None:
    doc = dict(NO_FAULTS, duration="2s")
    report = run(parse_scenario(doc), broker.host, broker.port, workers=2)
    _assert_exact(report)
    assert report["run"]["processes"] == 3  # two workers and the coordinator
    assert report["devices"]["connected"] == 123
    assert report["messages"]["expected"] == 2 * report["messages"]["published"]


def test_source_address_spreading(make_broker: Callable[..., BrokerProcess]) -> None:
    b = make_broker()
    doc = dict(NO_FAULTS, duration="1.5s", source_addresses=3)
    report = run(parse_scenario(doc), b.host, b.port)
    _assert_exact(report)
    log = b.log_text()
    for addr in ("127.0.0.2", "127.0.0.3"):
        assert addr in log


def test_tls(make_broker: Callable[..., BrokerProcess], tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    b = make_broker(config(listener("tls", "tls", tls_block(pki))))
    doc = {"name": "tls", "duration": "1.5s",
           "tls": {"ca_file": str(pki.ca)},
           "groups": [{"name": "s", "count": 30, "version": 5, "interval": "200ms",
                       "qos": {1: 1, 2: 1}}]}
    report = run(parse_scenario(doc), "127.0.0.1", b.port)
    _assert_exact(report)
    assert report["devices"]["connected"] == 30


def test_unreachable_broker_counts_failures() -> None:
    doc = {"name": "down", "duration": "1s", "connect_timeout": "1s",
           "groups": [{"name": "s", "count": 5}], "monitors": {"count": 0}}
    report = run(parse_scenario(doc), "127.0.0.1", free_port())
    assert report["devices"]["connected"] == 0 and report["devices"]["failed"] == 5
    assert report["errors"].get("connect_econnrefused", 0) >= 5
    assert report["ok"] is False  # issue 18: nothing connected is not "OK"
    assert report["connect_errors"]["by_kind"] == {
        "refused": report["errors"]["connect_econnrefused"]}
