"""Unit tests of the simulator's pure parts: histogram, templates, payloads, scenario
validation, accounting arithmetic and the HTML charts."""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
from pathlib import Path

import pytest
from iotsim.accounting import analyse
from iotsim.histogram import Histogram, bucket_bounds, bucket_of
from iotsim.html import render_html
from iotsim.payloads import (
    MAGIC_TELEMETRY,
    MAGIC_WILL,
    PayloadBuilder,
    parse_header,
    stream_key,
    will_payload,
)
from iotsim.report import build_report
from iotsim.scenario import (
    HEADER_SIZE,
    PayloadSpec,
    ScenarioError,
    ScenarioErrors,
    load_scenario,
    parse_duration,
    parse_rate,
    parse_scenario,
)
from iotsim.stats import Stats, StreamRec, SubscriberRec
from iotsim.topics import derive_filter, matches

SCENARIOS = Path(__file__).resolve().parents[2] / "devices-sim" / "scenarios"


# ----------------------------------------------------------------------------- histogram


def test_histogram_buckets_are_contiguous_and_precise() -> None:
    prev_high = -1
    for index in range(0, 1500):
        low, high = bucket_bounds(index)
        assert low == prev_high + 1
        assert bucket_of(low) == index and bucket_of(high) == index
        assert (high - low + 1) <= max(1, low / 64)
        prev_high = high


def test_histogram_percentiles_within_two_percent() -> None:
    rng = random.Random(1)
    values = sorted(int(rng.lognormvariate(7, 1.5)) for _ in range(20_000))
    h = Histogram()
    for v in values:
        h.record(v)
    for p in (50, 90, 99, 99.9):
        exact = values[max(0, int(len(values) * p / 100 + 0.999999) - 1)]
        assert abs(h.percentile(p) - exact) <= max(1, exact * 0.02), p
    assert h.percentile(100) == h.max == values[-1]
    assert h.count == len(values) and h.min == values[0]


def test_histogram_merge_equals_recording_everything() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for v in range(0, 100_000, 7):
        (a if v % 2 else b).record(v)
        both.record(v)
    a.merge(Histogram.from_dict(json.loads(json.dumps(b.to_dict()))))
    assert a.counts == both.counts
    assert (a.count, a.min, a.max, a.total) == (both.count, both.min, both.max, both.total)
    assert a.summary_ms() == both.summary_ms()


# ----------------------------------------------------------------------------- topics


@pytest.mark.parametrize(("flt", "topic", "ok"), [
    ("a/+/c", "a/b/c", True), ("a/#", "a", True), ("a/#", "a/b/c", True),
    ("+/b", "a/b/c", False), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True), ("a/b", "a/b", True), ("a/b", "a/b/", False),
])
def test_filter_matching(flt: str, topic: str, ok: bool) -> None:
    assert matches(flt, topic) is ok


def test_derived_filter_replaces_per_device_levels() -> None:
    f = derive_filter("iotsim/{run}/site/{site}/device/{id:04d}/t", "r1", "g")
    assert f == "iotsim/r1/site/+/device/+/t"
    assert derive_filter("{group}/x-{id}", "r", "grp") == "grp/+"


# ----------------------------------------------------------------------------- payloads


@pytest.mark.parametrize("kind", ["fixed", "random"])
def test_binary_payload_header_round_trip(kind: str) -> None:
    builder = PayloadBuilder(PayloadSpec(kind=kind, size=100), random.Random(0))
    payload = builder.build(0xDEADBEEF, 4242, 2, 17)
    assert len(payload) == 100
    magic, run, source, qos, seq, ts = parse_header(payload)  # type: ignore[misc]
    assert (magic, run, source, qos, seq) == (MAGIC_TELEMETRY, 0xDEADBEEF, 4242, 2, 17)
    assert ts > 0


def test_json_payload_is_valid_json_with_header() -> None:
    sc = parse_scenario({"groups": [{"name": "g", "count": 1, "payload": {
        "kind": "json", "fields": {"t": {"random": [1.0, 2.0], "decimals": 1},
                                   "n": {"random": [1, 3]}, "s": {"choice": ["a", "b"]},
                                   "c": "counter", "ts": "timestamp", "unit": "C"}}}]})
    builder = PayloadBuilder(sc.groups[0].payload, random.Random(0))
    doc = json.loads(builder.build(7, 8, 1, 9))
    assert 1.0 <= doc["t"] <= 2.0 and doc["n"] in (1, 2, 3) and doc["s"] in ("a", "b")
    assert doc["c"] == 1 and doc["unit"] == "C"
    header = parse_header(json.dumps(doc, separators=(",", ":")).encode())
    assert header is not None and header[1:5] == (7, 8, 1, 9)


def test_will_payload_and_foreign_payloads() -> None:
    assert parse_header(will_payload(5, 6, 1, "bye"))[:3] == (MAGIC_WILL, 5, 6)  # type: ignore[index]
    assert parse_header(b"hello") is None
    assert parse_header(b'{"_sim":"zz"}') is None


# ----------------------------------------------------------------------------- scenarios


def test_shipped_scenarios_load() -> None:
    files = sorted(SCENARIOS.glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        sc = load_scenario(f)
        assert sc.groups and sc.duration > 0


def test_units() -> None:
    assert parse_duration("250ms") == 0.25 and parse_duration("2m") == 120
    assert parse_duration(3) == 3.0
    assert parse_rate("30/m") == 0.5 and parse_rate("100/s") == 100 and parse_rate(5) == 5
    assert parse_rate("1/5s") == 0.2 and parse_rate("2/500ms") == 4


@pytest.mark.parametrize(("doc", "key", "words"), [
    ({"groups": [{"name": "g", "count": 1, "intervall": "1s"}]}, "groups[0].intervall",
     "unknown key"),
    ({"groups": [{"name": "g", "count": "many"}]}, "groups[0].count", "integer"),
    ({"groups": [{"name": "g", "count": 1, "interval": "often"}]}, "groups[0].interval",
     "duration"),
    ({"groups": [{"name": "g", "count": 1, "qos": 3}]}, "groups[0].qos", "0..2"),
    ({"groups": [{"name": "g", "count": 1, "qos": {"1": 1, "x": 2}}]}, "groups[0].qos.x",
     "QoS mix"),
    ({"groups": [{"name": "g", "count": 1, "topic": "a/{nope}"}]}, "groups[0].topic",
     "unknown placeholder {nope}"),
    ({"groups": [{"name": "g", "count": 1, "version": 6}]}, "groups[0].version", "MQTT"),
    ({"groups": [{"name": "g", "count": 1, "behaviour": "gateway"}]}, "groups[0].children",
     "gateway"),
    ({"groups": [{"name": "g", "count": 1, "payload": {"kind": "json"}}]},
     "groups[0].payload.fields", "required"),
    ({"groups": [{"name": "g", "count": 1, "payload": {"size": 3}}]},
     "groups[0].payload.size", "24.."),
    ({"groups": [{"name": "g", "count": 1, "will": {"qos": 1}}]}, "groups[0].will.topic",
     "required"),
    ({"groups": [{"name": "g", "count": 1, "behaviour": "dashboard", "subscribe": "a/#/b"}]},
     "groups[0].subscribe[0]", "'#'"),
    ({"groups": [{"name": "g", "count": 1}], "stages": [{"stage": "warp"}]},
     "stages[0].stage", "ramp_up"),
    ({"groups": [{"name": "g", "count": 1}], "stages": [{"stage": "ramp_up", "rate": "fast"}]},
     "stages[0].rate", "rate"),
    ({"groups": [{"name": "g", "count": 1}], "faults": [{"kind": "disconnect"}]},
     "faults[0]", "rate"),
    ({"groups": [{"name": "g", "count": 1}], "faults": [{"kind": "disconnect", "count": 1,
                                                         "groups": ["h"]}]},
     "faults[0].groups", "no group named 'h'"),
    ({"groups": [{"name": "g", "count": 1}], "source_addresses": ["10.0.0.1"]},
     "source_addresses[0]", "loopback"),
    ({"groups": [{"name": "g", "count": 1, "version": 5, "clean_start": False}]},
     "groups[0].session_expiry", "session_expiry > 0"),
    ({"groups": []}, "groups", "non-empty"),
    ({"groups": [{"name": "g", "count": 1, "qos_mix": 1}]}, "groups[0].qos_mix", "write qos"),
    ({"groups": [{"name": "g", "count": 1}], "stages": [{"kind": "steady"}]},
     "stages[0].kind", "write stage"),
    ({"groups": [{"name": "g", "count": 1}], "duration": "-1s"}, "duration", "duration"),
])
def test_bad_scenarios_name_the_key(doc: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(doc)
    assert info.value.key == key
    assert words in str(info.value)
    assert str(info.value).startswith(f"{key}:")


def test_bad_yaml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups: [\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)


# ----------------------------------------------------------------------------- accounting


_MS = 1_000_000  # ns


def _stats_with(seen: dict[int, list[int]], sent: int, qos: int, sub_qos: int,
                unconfirmed: set[int], persistent: bool = False) -> Stats:
    """One stream ``t/3`` whose message ``seq`` was sent at ``seq`` ms, one subscriber
    subscribed at 0 ms (before it all)."""
    stats = Stats(1, 0.0)
    key = stream_key(3, qos)
    stream = stats.streams[key] = StreamRec("t/3", qos, sent, unconfirmed)
    for seq in range(1, sent + 1):
        stream.record_time(seq, seq * _MS)
    stats.published = sent
    sub = SubscriberRec("m", ("t/+",), sub_qos, 1, persistent)
    sub.on_subscribed(0, False)
    for k, seqs in seen.items():
        arr = bytearray(sent + 2)
        for s in seqs:
            arr[s] += 1
        sub.seen[k] = arr
    stats.subscribers.append(sub)
    return stats


def test_accounting_counts_loss_duplicates_and_judges_by_qos() -> None:
    key1 = stream_key(3, 1)
    # QoS 1: 10 sent, 8 confirmed; 4 and 9 missing (9 unconfirmed), 5 twice
    stats = _stats_with({key1: [1, 2, 3, 5, 5, 6, 7, 8, 10]}, 10, 1, 2, {9, 10})
    acc = analyse(stats)
    q1 = acc["messages"]["by_qos"]["1"]
    assert (q1["expected"], q1["delivered"], q1["lost"], q1["duplicated"]) == (10, 8, 2, 1)
    assert (q1["lost_unconfirmed"], q1["lost_confirmed"]) == (1, 1)
    assert acc["violations"]["lost_confirmed"] == 1 and acc["violations"][
        "duplicated_violation"] == 0
    assert not acc["ok"]
    # the same (clean session) subscriber, away from 3.5 ms to 4.5 ms: 4 is excused
    stats = _stats_with({key1: [1, 2, 3, 5, 6, 7, 8, 10]}, 10, 1, 2, {9})
    sub = stats.subscribers[0]
    sub.downs.append((3 * _MS + _MS // 2, {key1: 3}))
    sub.ups.append((4 * _MS + _MS // 2, False))
    acc = analyse(stats)
    assert acc["messages"]["by_qos"]["1"]["lost_excused"] == 1 and acc["ok"]


def _away(seen: list[int], persistent: bool, resumed: bool, went_ms: float,
          last: int, back_ms: float | None) -> dict[str, int]:
    """QoS 1 stream of 10 (seq sent at seq ms), QoS 1 subscriber away from ``went_ms``
    (having seen ``last`` in order) until ``back_ms`` (``None``: never back)."""
    key = stream_key(3, 1)
    stats = _stats_with({key: seen}, 10, 1, 1, set(), persistent)
    sub = stats.subscribers[0]
    sub.downs.append((int(went_ms * _MS), {key: last}))
    if back_ms is not None:
        sub.on_subscribed(int(back_ms * _MS), resumed)
    q1: dict[str, int] = analyse(stats)["messages"]["by_qos"]["1"]
    return q1


def test_clean_session_subscriber_is_excused_its_absence_only() -> None:
    # away 4.5..7.5 ms: 4 was in flight (last seen 3), 5-7 published while away
    q1 = _away([1, 2, 3, 8], False, False, 4.5, 3, 7.5)
    assert (q1["lost"], q1["lost_excused"], q1["lost_confirmed"]) == (6, 4, 2)  # 9, 10
    assert q1["backlog"] == 0
    # never back: everything from the first message it had not seen is excused
    q1 = _away([1, 2, 3], False, False, 4.5, 3, None)
    assert (q1["lost"], q1["lost_excused"], q1["lost_confirmed"]) == (7, 7, 0)


def test_persistent_subscriber_is_owed_its_backlog() -> None:
    # the session came back: 4-7 (in flight or published while away) must still arrive
    q1 = _away([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], True, True, 4.5, 3, 7.5)
    assert (q1["lost"], q1["lost_excused"], q1["backlog"]) == (0, 0, 3)  # 5, 6, 7
    q1 = _away([1, 2, 3, 8, 9, 10], True, True, 4.5, 3, 7.5)
    assert (q1["lost"], q1["lost_excused"], q1["lost_confirmed"]) == (4, 0, 4)
    # the broker had lost the session: like a clean one
    q1 = _away([1, 2, 3, 8, 9, 10], True, False, 4.5, 3, 7.5)
    assert (q1["lost"], q1["lost_excused"], q1["lost_confirmed"]) == (4, 4, 0)
    # not back by the end: it could not get them
    q1 = _away([1, 2, 3], True, False, 4.5, 3, None)
    assert (q1["lost"], q1["lost_excused"], q1["lost_confirmed"]) == (7, 7, 0)


def test_late_subscriber_expects_only_what_follows_its_suback() -> None:
    key = stream_key(3, 1)
    stats = _stats_with({key: [6, 7, 9, 10]}, 10, 1, 1, set())
    sub = stats.subscribers[0]
    sub.ups[0] = (5 * _MS + 1, False)  # 1-5 were sent before the SUBACK arrived
    q1 = analyse(stats)["messages"]["by_qos"]["1"]
    assert (q1["before_subscribe"], q1["expected"], q1["delivered"]) == (5, 5, 4)
    assert (q1["lost"], q1["lost_confirmed"]) == (1, 1)  # 8
    # never subscribed: nothing expected
    sub.ups.clear()
    acc = analyse(stats)
    assert acc["messages"]["expected"] == 0 and acc["messages"]["before_subscribe"] == 10
    assert acc["messages"]["unsubscribed_subscribers"] == 1


def test_send_times_are_conservative_and_survive_the_worker_merge() -> None:
    rec = StreamRec("t", 1)
    for seq, t in enumerate([1000, 1000 + 150_000, 1000 + 150_001, 1000 + 500_000], 1):
        rec.record_time(seq, t)
        rec.sent = seq
    assert rec.first_sent_at_or_after(0) == 1
    assert rec.first_sent_at_or_after(1000) == 1
    assert rec.first_sent_at_or_after(1001) == 2  # rounded: may count as sent before
    assert rec.first_sent_at_or_after(1000 + 150_000) == 4  # seq 2/3 only maybe after
    assert rec.first_sent_at_or_after(10**12) == 5  # none
    stats = Stats(7, 0.0)
    stats.streams[4] = rec
    sub = SubscriberRec("d", ("t",), 1, 7, persistent=True)
    sub.on_subscribed(5, False)
    sub.on_disconnected(9)
    stats.subscribers.append(sub)
    parent = Stats(7, 0.0)
    parent.merge_export(stats.export())
    back = parent.streams[4]
    assert (back.base_ns, list(back.times), back.sent) == (rec.base_ns, list(rec.times), 4)
    again = parent.subscribers[0]
    assert again.persistent and again.ups == [(5, False)] and again.downs == [(9, {})]


def test_accounting_qos2_duplicate_is_a_violation_and_qos0_loss_is_not() -> None:
    key2 = stream_key(3, 2)
    acc = analyse(_stats_with({key2: [1, 2, 2, 3]}, 3, 2, 2, set()))
    assert acc["violations"]["duplicated_violation"] == 1
    key0 = stream_key(3, 0)
    acc = analyse(_stats_with({key0: [1, 3]}, 3, 0, 2, set()))
    assert acc["messages"]["by_qos"]["0"]["lost_allowed_qos0"] == 1 and acc["ok"]
    # QoS 2 published, QoS 1 granted: delivered at QoS 1, duplicates allowed
    acc = analyse(_stats_with({key2: [1, 1, 2]}, 2, 2, 1, set()))
    assert acc["messages"]["by_qos"]["1"]["duplicated"] == 1 and acc["ok"]


def test_report_and_html_from_empty_and_small_runs() -> None:
    sc = parse_scenario({"groups": [{"name": "g", "count": 1}]})
    stats = _stats_with({stream_key(3, 1): [1, 2]}, 2, 1, 2, set())
    stats.wall_seconds = 1.0
    stats.on_delivered(1500)
    report = build_report(stats, sc, {"host": "h", "port": 1})
    assert report["schema"] == "iotsim-report/1"
    json.dumps(report)
    page = render_html(report)
    assert page.count("<svg") >= 3 and "messages per second" in page
    empty = build_report(Stats(1, 0.0), sc, {})
    assert empty["latency_ms"]["count"] == 0 and "<html>" in render_html(empty)


def test_header_size_constant() -> None:
    assert HEADER_SIZE == 24


def test_scenario_file_reports_every_error_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "groups:\n"
        "  - name: g\n"
        "    count: 1\n"
        "    intervall: 1s\n"      # line 4: unknown key, did you mean
        "    qos: 3\n"             # line 5: out of range (YAML key qos, field qos_mix)
        "stages:\n"
        "  - stage: warp\n"        # line 7: not a stage
        "duration: soon\n"         # line 8: not a duration
    )
    with pytest.raises(ScenarioErrors) as info:
        load_scenario(bad)
    errors = info.value.errors
    assert [e.key for e in errors] == [
        "groups[0].intervall", "groups[0].qos", "stages[0].stage", "duration"]
    assert "did you mean 'interval'" in errors[0].message
    for e, line in zip(errors, (4, 5, 7, 8), strict=True):
        assert e.message.endswith(f"(at {bad}:{line})"), e
    assert str(info.value).splitlines() == [str(e) for e in errors]


def test_scenario_rules_across_keys_are_all_reported() -> None:
    doc = {"groups": [{"name": "g", "count": 1, "behaviour": "actuator"},
                      {"name": "g", "count": 1, "behaviour": "dashboard"}]}
    with pytest.raises(ScenarioErrors) as info:
        parse_scenario(doc)
    assert [e.key for e in info.value.errors] == [
        "groups[0].version", "groups[1].name", "groups[1].subscribe"]


def test_scenario_values_from_code_and_copies() -> None:
    sc = parse_scenario({"name": "x", "defaults": {"keepalive": 30},
                         "groups": [{"name": "g", "count": 2, "qos": {0: 1, 2: 1}}],
                         "tls": True})
    assert sc.groups[0].keepalive == 30 and sc.groups[0].qos_mix == (0.5, 0.0, 0.5)
    assert sc.tls.enabled and sc.stages == ()
    again = sc.with_overrides(duration=5.0)
    assert again.duration == 5.0 and again.groups == sc.groups
    assert pickle.loads(pickle.dumps(again)) == again  # worker processes get a pickled copy
    with pytest.raises(dataclasses.FrozenInstanceError):
        sc.duration = 1.0  # type: ignore[misc]
