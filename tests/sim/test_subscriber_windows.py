"""Late and faulted subscribers: what each may be expected to receive.

* A subscriber is expected to receive a stream from its first SUBACK on, not from the
  stream's first message (a dashboard started late is not "losing" what came before).
* A persistent-session subscriber that comes back to its session must get what was
  published at QoS 1/2 while it was away: nothing of that is excused.
* A clean-session subscriber is excused what was published (or still in flight towards
  it) while it was disconnected, until its next SUBACK.
"""

from __future__ import annotations

from typing import Any

from iotsim.runner import run
from iotsim.scenario import parse_scenario

from tests.helpers.broker_process import BrokerProcess

SENSORS = {"name": "s", "count": 10, "version": 5, "interval": "100ms", "qos": 1,
           "topic": "iotsim/{run}/s/{id}"}


def _dash(name: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "count": 1, "behaviour": "dashboard", "version": 5,
            "subscribe": ["iotsim/{run}/s/+"], "subscribe_qos": 1, **keys}


def _q1(report: dict[str, Any]) -> dict[str, Any]:
    """The QoS 1 bucket (monitor and dashboard; the monitor, never faulted, loses nothing)."""
    return dict(report["messages"]["by_qos"]["1"])


def test_late_dashboard_is_expected_only_what_follows_its_suback(
        broker: BrokerProcess) -> None:
    doc = {
        "name": "late-dashboard", "duration": "2.5s", "seed": 3, "connect_rate": "500/s",
        "groups": [SENSORS, _dash("dash")],
        "stages": [{"stage": "ramp_up", "groups": ["s"]},
                   {"stage": "steady", "duration": "1s"},
                   {"stage": "ramp_up", "groups": ["dash"]}],
    }
    report = run(parse_scenario(doc), broker.host, broker.port)
    m = report["messages"]
    q1 = m["by_qos"]["1"]
    assert report["devices"]["failed"] == 0, report["errors"]
    assert m["subscribers"] == 2
    assert m["lost"] == 0, q1
    assert q1["lost_excused"] == 0 and q1["lost_confirmed"] == 0
    # about a second of the 10 sensors' messages predates the dashboard's SUBACK
    assert q1["before_subscribe"] >= 50, q1
    # the monitor expects everything, the dashboard the rest
    assert m["published"] < m["expected"] < 2 * m["published"]
    assert m["expected"] + q1["before_subscribe"] == 2 * m["published"]
    assert report["ok"], report["violations"]


def test_persistent_subscriber_gets_its_backlog_after_a_fault(
        broker: BrokerProcess) -> None:
    doc = {
        "name": "persistent-dashboard", "duration": "3s", "seed": 4, "connect_rate": "500/s",
        "groups": [SENSORS, _dash("dash", clean_start=False, session_expiry="5m")],
        "stages": [{"stage": "ramp_up", "groups": ["s"]},
                   {"stage": "steady", "duration": "300ms"},
                   {"stage": "ramp_up", "groups": ["dash"]}],
        "faults": [{"kind": "disconnect", "count": 1, "start": "1200ms", "end": "1300ms",
                    "downtime": "700ms", "groups": ["dash"]}],
    }
    report = run(parse_scenario(doc), broker.host, broker.port)
    m = report["messages"]
    q1 = _q1(report)
    assert report["counters"]["fault_disconnect"] == 1
    assert m["faulted_subscribers"] == 1
    assert report["devices"]["failed"] == 0, report["errors"]
    # nothing lost, nothing excused ...
    assert q1["lost"] == 0, q1
    assert q1["lost_excused"] == 0, q1
    assert q1["lost_confirmed"] == 0 and q1["lost_unconfirmed"] == 0
    # ... although 0.7 s of messages were published while it was away: the session kept
    # them, they were expected, and they arrived after the reconnect
    assert q1["backlog"] >= 30, q1
    assert report["ok"], report["violations"]


def test_clean_session_subscriber_is_excused_only_its_absence(
        broker: BrokerProcess) -> None:
    doc = {
        "name": "clean-dashboard", "duration": "2.5s", "seed": 5, "connect_rate": "500/s",
        "groups": [SENSORS, _dash("dash")],
        "faults": [{"kind": "disconnect", "count": 1, "start": "800ms", "end": "900ms",
                    "downtime": "600ms", "groups": ["dash"]}],
    }
    report = run(parse_scenario(doc), broker.host, broker.port)
    m = report["messages"]
    q1 = _q1(report)
    assert report["counters"]["fault_disconnect"] == 1
    assert m["faulted_subscribers"] == 1
    assert report["devices"]["failed"] == 0, report["errors"]
    # the 0.6 s away are excused (the broker drops a clean session's subscriptions) ...
    assert q1["lost_excused"] >= 30, q1
    # ... and nothing else: before and after the gap every message arrived
    assert q1["lost_confirmed"] == 0 and q1["backlog"] == 0
    assert q1["lost_excused"] <= 10 * (0.6 + 0.3) / 0.1, q1
    assert report["ok"], report["violations"]
