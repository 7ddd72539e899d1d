"""Topic aliases of one connection (MQTT 5.0 §3.3.2.3.4): the inbound map and errors,
the outbound least-recently-used choice and its maximum."""

from __future__ import annotations

import pytest

from iotbroker.errors import ProtocolViolation
from iotbroker.protocol.topic_alias import InboundAliases, OutboundAliases

# ------------------------------------------------------------------ inbound


def test_no_alias_returns_the_topic_unchanged() -> None:
    aliases = InboundAliases(maximum=4)
    assert aliases.resolve("a/b", None) == "a/b"


def test_alias_with_topic_sets_the_mapping_then_alias_alone_resolves_it() -> None:
    aliases = InboundAliases(maximum=4)
    assert aliases.resolve("a/b", 3) == "a/b"
    assert aliases.resolve("", 3) == "a/b"


def test_alias_with_a_new_topic_replaces_the_mapping() -> None:
    aliases = InboundAliases(maximum=4)
    aliases.resolve("a/b", 1)
    assert aliases.resolve("c/d", 1) == "c/d"
    assert aliases.resolve("", 1) == "c/d"


def test_aliases_are_independent_of_each_other() -> None:
    aliases = InboundAliases(maximum=4)
    aliases.resolve("one", 1)
    aliases.resolve("two", 2)
    assert aliases.resolve("", 1) == "one"
    assert aliases.resolve("", 2) == "two"


def test_mqtt_3_3_2_8_alias_zero_is_a_protocol_error_0x94() -> None:
    """[MQTT-3.3.2-8]: a Topic Alias of 0 is a protocol error (Topic Alias invalid)."""
    aliases = InboundAliases(maximum=4)
    with pytest.raises(ProtocolViolation) as err:
        aliases.resolve("a", 0)
    assert err.value.reason_code == 0x94
    assert err.value.spec_ref == "MQTT-3.3.2-8"


def test_mqtt_3_3_2_9_alias_above_maximum_is_a_protocol_error_0x94() -> None:
    """[MQTT-3.3.2-9]: an alias greater than our Topic Alias Maximum is refused."""
    aliases = InboundAliases(maximum=4)
    assert aliases.resolve("a", 4) == "a"  # the maximum itself is allowed
    with pytest.raises(ProtocolViolation) as err:
        aliases.resolve("a", 5)
    assert err.value.reason_code == 0x94
    assert err.value.spec_ref == "MQTT-3.3.2-9"


def test_mqtt_3_3_2_9_any_alias_is_refused_when_maximum_is_zero() -> None:
    """[MQTT-3.3.2-9] with Topic Alias Maximum 0: the client may send no alias."""
    aliases = InboundAliases(maximum=0)
    with pytest.raises(ProtocolViolation) as err:
        aliases.resolve("a", 1)
    assert err.value.reason_code == 0x94


def test_mqtt_3_3_2_7_alias_never_set_on_this_connection_is_a_protocol_error_0x82() -> None:
    """Aliases start empty for each connection [MQTT-3.3.2-7]: an alias alone that was
    never mapped is a protocol error (0x82, §3.3.2.3.4)."""
    first = InboundAliases(maximum=4)
    first.resolve("a/b", 1)
    second = InboundAliases(maximum=4)  # a new connection
    with pytest.raises(ProtocolViolation) as err:
        second.resolve("", 1)
    assert err.value.reason_code == 0x82


def test_refused_alias_leaves_the_map_unchanged() -> None:
    aliases = InboundAliases(maximum=2)
    aliases.resolve("a", 1)
    with pytest.raises(ProtocolViolation):
        aliases.resolve("b", 3)
    assert aliases.resolve("", 1) == "a"
    with pytest.raises(ProtocolViolation):
        aliases.resolve("", 2)


# ----------------------------------------------------------------- outbound


def test_mqtt_3_1_2_27_no_aliases_when_the_client_allows_none() -> None:
    """[MQTT-3.1.2-27]: Topic Alias Maximum absent or 0: the server sends no alias."""
    aliases = OutboundAliases(maximum=0)
    assert aliases.choose("a") == (0, True)
    assert aliases.choose("a") == (0, True)


def test_new_topic_takes_the_next_free_alias_and_is_sent_with_it() -> None:
    aliases = OutboundAliases(maximum=3)
    assert aliases.choose("a") == (1, True)
    aliases.commit("a", 1)
    assert aliases.choose("b") == (2, True)
    aliases.commit("b", 2)
    assert aliases.choose("c") == (3, True)


def test_known_topic_is_sent_as_the_alias_alone() -> None:
    aliases = OutboundAliases(maximum=3)
    alias, _ = aliases.choose("a")
    aliases.commit("a", alias)
    assert aliases.choose("a") == (alias, False)


def test_choice_is_not_recorded_until_committed() -> None:
    """A PUBLISH dropped for its size must not leave the client an unknown alias
    [MQTT-3.1.2-25]: choose() alone records nothing."""
    aliases = OutboundAliases(maximum=3)
    assert aliases.choose("a") == (1, True)
    assert aliases.choose("a") == (1, True)  # still new: not committed
    assert aliases.choose("b") == (1, True)


def test_mqtt_3_3_2_11_never_more_aliases_than_the_client_maximum() -> None:
    """[MQTT-3.3.2-11], [MQTT-3.1.2-26]: aliases stay within 1..Topic Alias Maximum;
    a new topic reuses the alias of the least recently used one."""
    aliases = OutboundAliases(maximum=2)
    for topic in ("a", "b"):
        alias, _ = aliases.choose(topic)
        aliases.commit(topic, alias)
    assert aliases.choose("a") == (1, False)  # "a" used: "b" is now least recent
    alias, with_topic = aliases.choose("c")
    assert (alias, with_topic) == (2, True)
    aliases.commit("c", alias)
    assert aliases.choose("c") == (2, False)
    assert aliases.choose("a") == (1, False)
    assert aliases.choose("b") == (2, True)  # evicted: must be sent with its topic again
    seen = set()
    for i in range(20):
        topic = f"t/{i}"
        alias, _ = aliases.choose(topic)
        aliases.commit(topic, alias)
        seen.add(alias)
    assert seen <= {1, 2}


def test_commit_without_eviction_keeps_earlier_mappings() -> None:
    aliases = OutboundAliases(maximum=3)
    aliases.commit("a", 1)
    aliases.commit("b", 2)
    assert aliases.choose("a") == (1, False)
    assert aliases.choose("b") == (2, False)
