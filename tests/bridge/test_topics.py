"""Topic rules: mosquitto's prefix semantics (mosquitto.conf(5), ``topic``), and the
validation of the ``bridges:`` section (errors name key path, value and line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iotbroker.bridge.connecting import address_order, backoff
from iotbroker.bridge.topics import Rule, map_in, map_out
from iotbroker.config import BridgeTopicConfig, ConfigError, load_config, parse_config


def _rule(pattern: str, direction: str = "both", local: str = "", remote: str = "") -> Rule:
    return Rule.from_config(BridgeTopicConfig(pattern=pattern, direction=direction,  # type: ignore[arg-type]
                                              local_prefix=local, remote_prefix=remote))


def test_prefixes_swap_on_the_way_out_and_in() -> None:
    rule = _rule("sensors/#", local="gw/", remote="site1/")
    assert rule.local_filter == "gw/sensors/#"
    assert rule.remote_filter == "site1/sensors/#"
    assert map_out((rule,), "gw/sensors/t") == "site1/sensors/t"
    assert map_in((rule,), "site1/sensors/t") == "gw/sensors/t"
    assert map_out((rule,), "sensors/t") is None  # not under the local prefix: no match


def test_no_prefixes_keep_the_topic() -> None:
    rule = _rule("#")
    assert map_out((rule,), "a/b") == "a/b"
    assert map_in((rule,), "a/b") == "a/b"


def test_empty_pattern_names_exactly_one_topic() -> None:
    """mosquitto.conf(5): ``topic "" out 0 local/topic remote/topic`` remaps one topic."""
    rule = _rule("", local="local/topic", remote="remote/topic")
    assert (rule.local_filter, rule.remote_filter) == ("local/topic", "remote/topic")
    assert map_out((rule,), "local/topic") == "remote/topic"
    assert map_in((rule,), "remote/topic") == "local/topic"
    assert map_out((rule,), "local/topic/x") is None


def test_parent_level_matched_by_hash_gets_the_other_prefix() -> None:
    """``a/#`` matches ``a`` (MQTT 5.0 §4.7.1.2); it does not start with ``a/``, so it
    is only prefixed (mosquitto strips a prefix only when present)."""
    rule = _rule("#", local="a/", remote="b/")
    assert map_out((rule,), "a") == "b/a"


def test_prefix_is_text_not_a_level() -> None:
    rule = _rule("sensors/#", remote="site1")
    assert map_out((rule,), "sensors/x") == "site1sensors/x"


def test_first_matching_rule_maps_and_directions_are_kept_apart() -> None:
    out_rule = _rule("s/#", "out", remote="first/")
    second = _rule("s/x", "out", remote="second/")
    in_rule = _rule("c/#", "in", remote="r/")
    rules = (out_rule, second, in_rule)
    assert map_out(rules, "s/x") == "first/s/x"
    assert map_out(rules, "c/1") is None  # an in rule does not forward out
    assert map_in(rules, "r/c/1") == "c/1"
    assert map_in(rules, "s/x") is None


def test_dollar_topics_are_not_matched_by_leading_wildcards() -> None:
    """[MQTT-4.7.2-1]: ``#`` does not forward ``$SYS/...`` out."""
    assert map_out((_rule("#"),), "$SYS/broker/uptime") is None


def test_contract_example_is_valid() -> None:
    config = parse_config({"bridges": [{
        "name": "cloud", "address": ["127.0.0.1:1883"], "protocol": 5, "client_id": "gw-site1",
        "username": None, "password": None, "tls": None, "clean_start": False,
        "session_expiry": "1h", "keepalive": "30s", "max_inflight": 100,
        "outbox": {"max_messages": 100000, "max_bytes": "64MiB", "policy": "drop-oldest"},
        "topics": [
            {"pattern": "sensors/#", "direction": "out", "qos": 1, "local_prefix": "",
             "remote_prefix": "site1/"},
            {"pattern": "cmd/#", "direction": "in", "qos": 1, "local_prefix": "",
             "remote_prefix": "site1/"}]}]})
    bridge = config.bridges[0]
    assert (bridge.session_expiry, bridge.keepalive, bridge.outbox.max_bytes) == (
        3600, 30, 64 * 1024 * 1024)
    assert parse_config({}).bridges == ()


def test_tls_accepts_listener_keys_and_contract_spellings() -> None:
    config = parse_config({"bridges": [{
        "name": "c", "address": "h:8883", "topics": [{"pattern": "#"}],
        "tls": {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem"}}]})
    tls = config.bridges[0].tls
    assert tls is not None
    assert (tls.cafile, tls.certfile, tls.keyfile, tls.verify) == (
        "ca.pem", "c.pem", "k.pem", True)
    assert config.bridges[0].address == ("h:8883",)


def test_every_bad_value_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "bridges:\n"
        "  - name: a/b\n"
        "    address: ['host:99999', '::1']\n"
        "    protocol: 3\n"
        "    outbox: {policy: drop-all}\n"
        "    topics:\n"
        "      - {pattern: 'a/#/b', direction: sideways, local_prefix: 'x/+'}\n"
        "      - {pattern: '', qos: 3}\n"
        "  - name: dup\n"
        "    address: h\n"
        "    topics: [{pattern: '#'}]\n"
        "  - name: dup\n"
        "    address: h\n"
        "    topics: []\n"
        "    tls: {certfile: c.pem}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    text = str(info.value)
    for expected in ("bridges[0].protocol", "bridges[0].outbox.policy",
                     "bridges[0].topics[0].direction", "bridges[0].topics[1].qos"):
        assert expected in text, text
    assert "bad.yaml:4" in text  # the line of protocol: 3


def test_cross_key_rules() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"bridges": [
            {"name": "a/b", "address": ["host:99999", "::1"],
             "topics": [{"pattern": "a/#/b", "local_prefix": "x/+"}, {"pattern": ""}]},
            {"name": "dup", "address": "h", "topics": [{"pattern": "#"},
                                                        {"pattern": "$share/g/x"}]},
            {"name": "dup", "address": [], "topics": [], "tls": {"certfile": "c.pem"},
             "reconnect_delay": "10s", "reconnect_delay_max": "1s"},
        ]})
    text = str(info.value)
    for expected in (
        "bridges[0].name: 'a/b' must not contain '/'",
        "bridges[0].address[0]: 'host:99999' is not host:port",
        "bridges[0].address[1]: '::1' is not host:port",
        "bridges[0].topics[0].pattern: 'a/#/b' '#' must be a whole last level",
        "bridges[0].topics[0].local_prefix: 'x/+' must not contain wildcards",
        "bridges[0].topics[1].pattern: '' is empty",
        "bridges[1].topics[1].pattern: '$share/g/x' must not make a shared subscription",
        "bridges[2].name: 'dup' is already the name of bridges[1]",
        "bridges[2].address: [] is empty",
        "bridges[2].topics: [] is empty",
        "bridges[2].tls.keyfile",
        "bridges[2].reconnect_delay_max",
    ):
        assert expected in text, text


def test_reconnect_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    def upper(lo: float, hi: float) -> float:
        return hi

    assert [backoff(n, 1.0, 60.0, upper) for n in range(9)] == [
        0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff(1000, 1.0, 60.0, upper) == 60.0
    draws = [backoff(3, 1.0, 60.0) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in draws) and len(set(draws)) > 100


def test_check_config_checks_bridge_tls_files(tmp_path: Path) -> None:
    """``iotbroker check-config`` validates the section, and the TLS files exist."""
    path = tmp_path / "gw.yaml"
    path.write_text("bridges:\n  - name: c\n    address: h:8883\n"
                    "    tls: {cafile: /nonexistent/ca.pem}\n    topics: [{pattern: '#'}]\n")
    out = subprocess.run([sys.executable, "-m", "iotbroker", "check-config", str(path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode != 0
    assert "bridges[0].tls.cafile" in out.stderr and "does not exist" in out.stderr


def test_address_order_fail_over_and_round_robin() -> None:
    addrs = ("a:1", "b", "[::1]:3")
    assert [address_order(addrs, False, n) for n in range(2)] == [
        [("a", 1), ("b", 1883), ("::1", 3)]] * 2
    assert [address_order(addrs, True, n)[0] for n in range(4)] == [
        ("a", 1), ("b", 1883), ("::1", 3), ("a", 1)]
