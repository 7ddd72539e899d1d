"""Topic Name / Topic Filter validation and $share parsing (MQTT 3.1.1 §4.7,
MQTT 5.0 §4.7, §4.8.2)."""

from __future__ import annotations

import pytest

from iotbroker.core.topics import (
    check_topic_limits,
    filter_matches,
    has_wildcard,
    is_broker_topic,
    parse_shared,
    validate_subscription_filter,
    validate_topic_filter,
    validate_topic_name,
)
from iotbroker.errors import ProtocolViolation

NAME_INVALID = 0x90
FILTER_INVALID = 0x8F


def _name_error(name: str, version: int = 5) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        validate_topic_name(name, version)
    assert info.value.reason_code == NAME_INVALID
    return info.value


def _filter_error(topic_filter: str, version: int = 5) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        validate_topic_filter(topic_filter, version)
    assert info.value.reason_code == FILTER_INVALID
    return info.value


def _shared_error(topic_filter: str) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        parse_shared(topic_filter)
    assert info.value.reason_code == FILTER_INVALID
    return info.value


# -- Topic Names ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "/",
        "//",
        "a/b/c",
        "/a",
        "a/",
        "a//b",
        "$SYS/broker",
        "$",
        " ",
        "sport/tennis/player1",
        "ünïcødé/温度",
        "a b/c",
    ],
)
def test_valid_topic_names(name: str) -> None:
    validate_topic_name(name)
    validate_topic_name(name, 4)


@pytest.mark.parametrize("version", [4, 5])
def test_mqtt_4_7_3_1_empty_topic_name_rejected(version: int) -> None:
    assert _name_error("", version).spec_ref == "MQTT-4.7.3-1"


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("name", ["+", "#", "a/+", "a/#", "a/+/b", "sport+", "a#b", "#/a"])
def test_mqtt_3_3_2_2_topic_name_has_no_wildcards(name: str, version: int) -> None:
    err = _name_error(name, version)
    assert err.spec_ref == "MQTT-3.3.2-2"
    assert "MQTT-3.3.2-2" in str(err)


def test_mqtt_4_7_3_2_topic_name_without_nul() -> None:
    assert _name_error("a\x00b").spec_ref == "MQTT-4.7.3-2"


# -- Topic Filters ----------------------------------------------------------------


@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",
        "+",
        "+/+",
        "/+",
        "+/",
        "a/#",
        "a/+/b",
        "a/+/#",
        "+/#",
        "/#",
        "//#",
        "a//+",
        "sport/tennis/player1/#",
        "$SYS/#",
        "$share",
        "$share/g/a",
        "a/b/c",
        "/",
        "$",
    ],
)
def test_valid_topic_filters(topic_filter: str) -> None:
    validate_topic_filter(topic_filter)
    validate_topic_filter(topic_filter, 4)


@pytest.mark.parametrize("version", [4, 5])
def test_mqtt_4_7_3_1_empty_topic_filter_rejected(version: int) -> None:
    assert _filter_error("", version).spec_ref == "MQTT-4.7.3-1"


def test_mqtt_4_7_3_2_topic_filter_without_nul() -> None:
    assert _filter_error("a/\x00").spec_ref == "MQTT-4.7.3-2"


@pytest.mark.parametrize(
    "topic_filter", ["a/#/b", "sport/tennis#", "#/", "##", "a#", "#a", "a/#/#", "#/+", "a/b#/c"]
)
def test_mqtt_4_7_1_2_v311_hash_must_be_last_and_alone(topic_filter: str) -> None:
    # MQTT 3.1.1 numbers the '#' rule MQTT-4.7.1-2 ...
    assert _filter_error(topic_filter, 4).spec_ref == "MQTT-4.7.1-2"


@pytest.mark.parametrize("topic_filter", ["a/#/b", "sport/tennis#", "#/", "a#"])
def test_mqtt_4_7_1_1_v5_hash_must_be_last_and_alone(topic_filter: str) -> None:
    # ... and MQTT 5.0 numbers it MQTT-4.7.1-1.
    assert _filter_error(topic_filter, 5).spec_ref == "MQTT-4.7.1-1"


@pytest.mark.parametrize("topic_filter", ["sport+", "+a", "a/+b/c", "a/b+", "++", "a/++/b", "+a/#"])
def test_mqtt_4_7_1_3_v311_plus_must_fill_a_level(topic_filter: str) -> None:
    assert _filter_error(topic_filter, 4).spec_ref == "MQTT-4.7.1-3"


@pytest.mark.parametrize("topic_filter", ["sport+", "a/+b/c"])
def test_mqtt_4_7_1_2_v5_plus_must_fill_a_level(topic_filter: str) -> None:
    assert _filter_error(topic_filter, 5).spec_ref == "MQTT-4.7.1-2"


def test_has_wildcard() -> None:
    assert has_wildcard("a/+")
    assert has_wildcard("#")
    assert not has_wildcard("a/b")


# -- $share -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/group-1/#", ("group-1", "#")),
        ("$share/g/+/x", ("g", "+/x")),
        ("$share/g//", ("g", "/")),
        ("$share/g/$SYS/#", ("g", "$SYS/#")),
        ("a/b", (None, "a/b")),
        ("$share", (None, "$share")),  # no trailing '/': an ordinary filter
        ("$SHARE/g/a", (None, "$SHARE/g/a")),  # case-sensitive
        ("#", (None, "#")),
    ],
)
def test_parse_shared(topic_filter: str, expected: tuple[str | None, str]) -> None:
    assert parse_shared(topic_filter) == expected


@pytest.mark.parametrize("topic_filter", ["$share/", "$share//a", "$share//#"])
def test_mqtt_4_8_2_1_share_name_not_empty(topic_filter: str) -> None:
    assert _shared_error(topic_filter).spec_ref == "MQTT-4.8.2-1"


@pytest.mark.parametrize(
    "topic_filter",
    ["$share/g+/a", "$share/+/a", "$share/#/a", "$share/g#", "$share/g", "$share/g/"],
)
def test_mqtt_4_8_2_2_share_name_without_wildcards_and_followed_by_filter(
    topic_filter: str,
) -> None:
    assert _shared_error(topic_filter).spec_ref == "MQTT-4.8.2-2"


def test_validate_subscription_filter_checks_inner_filter() -> None:
    assert validate_subscription_filter("$share/g/a/+") == ("g", "a/+")
    assert validate_subscription_filter("a/#") == (None, "a/#")
    with pytest.raises(ProtocolViolation) as info:
        validate_subscription_filter("$share/g/a/#/b", 5)
    assert info.value.spec_ref == "MQTT-4.7.1-1"
    assert info.value.reason_code == FILTER_INVALID
    with pytest.raises(ProtocolViolation):
        validate_subscription_filter("$share/g/a+", 4)


# -- limits -------------------------------------------------------------------------


def test_check_topic_limits() -> None:
    check_topic_limits("a/b/c", max_levels=3, max_length=5)
    check_topic_limits("a/b/c")
    with pytest.raises(ProtocolViolation) as info:
        check_topic_limits("a/b/c/d", max_levels=3)
    assert info.value.reason_code == NAME_INVALID
    with pytest.raises(ProtocolViolation) as info:
        check_topic_limits("a/b/#", max_levels=2, is_filter=True)
    assert info.value.reason_code == FILTER_INVALID
    with pytest.raises(ProtocolViolation):
        check_topic_limits("abcdef", max_length=5)
    # Length is counted in UTF-8 bytes: 3 characters, 6 bytes.
    check_topic_limits("ééé", max_length=6)
    with pytest.raises(ProtocolViolation):
        check_topic_limits("ééé", max_length=5)


def test_level_limit_at_the_boundary_of_the_topic_length() -> None:
    """Levels are separators + 1 whatever the topic's length (the separators are only
    counted when the length can reach the limit); empty levels count (MQTT 5.0 §4.7.1.1)."""
    check_topic_limits("//", max_levels=3)  # 3 levels in 2 characters
    for topic in ("///", "a///", "////"):  # 4 or 5 levels in 3 or more characters
        with pytest.raises(ProtocolViolation):
            check_topic_limits(topic, max_levels=3)
    check_topic_limits("abc", max_levels=3)
    check_topic_limits("a/b", max_levels=2)
    with pytest.raises(ProtocolViolation):
        check_topic_limits("a//", max_levels=2)


# -- reference matcher ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        # MQTT 5.0 §4.7.1.2 examples
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("#", "anything/at/all", True),
        # §4.7.1.3 examples
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        # §4.7.2
        ("#", "$SYS/x", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/monitor/Clients", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        # exact comparison [MQTT-4.7.3-4]
        ("a/b", "a/b/", False),
        ("a//b", "a/b", False),
        ("A", "a", False),
    ],
)
def test_filter_matches_reference(topic_filter: str, topic: str, expected: bool) -> None:
    assert filter_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("topic", "expected"),
    [("$SYS", True), ("$SYS/broker/uptime", True), ("$SYSx", False), ("$SY", False),
     ("$", False), ("", False), ("a/$SYS", False), ("$share/g/t", False), ("SYS/a", False),
     ("$sys/a", False), ("€SYS/a", False)],
)
def test_broker_topics_are_sys_and_below(topic: str, expected: bool) -> None:
    """``$SYS`` and the topics below it are the broker's (MQTT 5.0 §4.7.2: ``$`` topics
    are the Server's; issue 12): other ``$`` topics and look-alikes are not."""
    assert is_broker_topic(topic) is expected
