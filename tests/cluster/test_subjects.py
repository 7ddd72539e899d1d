"""The MQTT topic ↔ NATS subject mapping (iotbroker/cluster/subjects.py): reversible,
always a valid NATS subject, and NATS's matching of the mapped filter equals MQTT's
matching of the filter (MQTT 5.0 §4.7, [MQTT-4.7.1-2], [MQTT-4.7.2-1], [MQTT-4.7.3-4])."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotbroker.cluster.subjects import (
    decode_level,
    encode_level,
    filter_to_subjects,
    key_to_topic,
    subject_to_topic,
    topic_to_key,
    topic_to_subject,
    valid_prefix,
)
from iotbroker.core.topics import filter_matches

PREFIX = "iotb"

# Levels with the characters that matter: NATS separators and wildcards, spaces,
# the escape character, '$', non-ASCII, and plain text.
_chars = st.sampled_from([*"ab.*> ~$_-/\t", "é", "中", "\U0001f600", "\x7f", "%"])
level = st.text(alphabet=st.one_of(_chars, st.characters(blacklist_characters="\x00/+#",
                                                          blacklist_categories=("Cs",))),
                max_size=6)
topic = st.lists(level, min_size=1, max_size=5).map("/".join)


def nats_match(pattern: str, subject: str) -> bool:
    """NATS subject matching: '*' one token, '>' one or more trailing tokens."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def valid_subject(subject: str) -> bool:
    tokens = subject.split(".")
    return all(
        t and t.isascii() and t.isprintable() and " " not in t and t not in ("*", ">")
        for t in tokens
    )


@given(topic)
@settings(max_examples=300)
def test_topic_round_trips_and_is_a_valid_subject(t: str) -> None:
    subject = topic_to_subject(PREFIX, t)
    assert valid_subject(subject), subject
    assert subject_to_topic(PREFIX, subject) == t
    # one NATS token per MQTT level
    assert subject.count(".") == t.count("/") + 2


#: What nats-py accepts as a KV key (nats/js/kv.py VALID_KEY_RE).
KV_KEY = re.compile(r"^[-/_=\.a-zA-Z0-9]+$")


@given(topic)
@settings(max_examples=300)
def test_retained_key_round_trips_and_is_a_valid_kv_key(t: str) -> None:
    key = topic_to_key(t)
    assert KV_KEY.match(key) and not key.startswith(".") and not key.endswith("."), key
    assert ".." not in key
    assert key_to_topic(key) == t


@given(level)
def test_level_round_trips(lv: str) -> None:
    assert decode_level(encode_level(lv)) == lv


@st.composite
def filter_and_topic(draw: st.DrawFn) -> tuple[str, str]:
    t = draw(topic)
    levels = t.split("/")
    # a filter derived from the topic (so it often matches), or an unrelated one
    f_levels = [draw(st.sampled_from([lv, "+", lv, "x"])) for lv in levels]
    cut = draw(st.integers(0, len(f_levels)))
    f_levels = f_levels[:cut]
    if draw(st.booleans()) or not f_levels:
        f_levels.append("#")
    return "/".join(f_levels), t


@given(filter_and_topic())
@settings(max_examples=500)
def test_nats_matching_equals_mqtt_matching(ft: tuple[str, str]) -> None:
    """[MQTT-4.7.1-2] ('#' matches the parent), '+' one level (empty too), and the
    '$' rule [MQTT-4.7.2-1], all kept by NATS's own matching of the mapped subjects."""
    topic_filter, t = ft
    subjects = filter_to_subjects(PREFIX, topic_filter)
    subject = topic_to_subject(PREFIX, t)
    nats = any(nats_match(p, subject) for p in subjects)
    assert nats == filter_matches(topic_filter, t), (topic_filter, t, subjects, subject)


@pytest.mark.parametrize(
    ("t", "subject"),
    [
        ("sensors/temp", "iotb.m.sensors.temp"),
        ("a.b/c d", "iotb.m.a~2Eb.c~20d"),
        ("/a", "iotb.m.~.a"),
        ("a//b/", "iotb.m.a.~.b.~"),
        ("$SYS/x", "iotb.d.~24SYS.x"),
        ("*/>", "iotb.m.~2A.~3E"),
        ("~", "iotb.m.~7E"),
    ],
)
def test_examples(t: str, subject: str) -> None:
    assert topic_to_subject(PREFIX, t) == subject
    assert subject_to_topic(PREFIX, subject) == t


@pytest.mark.parametrize(
    ("topic_filter", "subjects"),
    [
        ("#", ["iotb.m.>"]),
        ("a/#", ["iotb.m.a", "iotb.m.a.>"]),
        ("+/b", ["iotb.m.*.b"]),
        ("$SYS/#", ["iotb.d.~24SYS", "iotb.d.~24SYS.>"]),
        ("a/+/c", ["iotb.m.a.*.c"]),
    ],
)
def test_filter_examples(topic_filter: str, subjects: list[str]) -> None:
    assert filter_to_subjects(PREFIX, topic_filter) == subjects


@pytest.mark.parametrize("bad", ["iotb.m", "iotb.x.a", "other.m.a", "iotb.m.a b", "iotb.m.~2",
                                 "iotb.m.~zz", "iotb.d.a", "iotb.m.~24a"])
def test_foreign_subjects_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        subject_to_topic(PREFIX, bad)


def test_prefix_rule() -> None:
    assert valid_prefix("iotb") and valid_prefix("site-1.mqtt")
    assert not valid_prefix("") and not valid_prefix("a..b") and not valid_prefix("a.*")
    assert not valid_prefix("a b") and not valid_prefix(".a")
