"""Configuration: shipped files load, defaults agree, bad configs name the key path."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import pytest
import yaml

from iotbroker.config import (
    BrokerConfig,
    ClusterConfig,
    ConfigErrors,
    ListenerConfig,
    Number,
    TlsConfig,
    default_config_text,
    load_config,
    parse_config,
)
from iotbroker.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


# --- shipped files ----------------------------------------------------------------------


def test_there_are_shipped_configs() -> None:
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "production.yaml", "iot-fleet.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_shipped_config_loads(path: Path) -> None:
    config = load_config(str(path), env={})
    assert isinstance(config, BrokerConfig)
    assert config.listeners
    assert config.source == str(path)


def test_configs_default_yaml_is_the_shipped_package_data() -> None:
    # configs/default.yaml is a symlink to iotbroker/default.yaml (the package data that
    # load_config(None) reads); a checkout without symlinks, or a copy that drifted, fails.
    shipped = ROOT / "iotbroker" / "default.yaml"
    assert (ROOT / "configs" / "default.yaml").read_bytes() == shipped.read_bytes()
    assert default_config_text() == shipped.read_text(encoding="utf-8")


def test_defaults_equal_default_yaml_and_dataclass_defaults() -> None:
    from_file = load_config(str(ROOT / "configs" / "default.yaml"))
    assert load_config(None) == from_file == BrokerConfig() == parse_config({})


def _schema_keys(cls: type, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        path = f"{prefix}{f.name}"
        keys.add(path)
        inner = {"listeners": ListenerConfig, "tls": TlsConfig,
                 "cluster": ClusterConfig}.get(f.name)
        if inner is None and isinstance(f.default_factory, type):  # nested section
            inner = f.default_factory
        if inner is not None and dataclasses.is_dataclass(inner):
            keys |= _schema_keys(inner, f"{path}.")
    return keys


def _yaml_keys(data: Any, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(data, dict):
        for k, v in data.items():
            if prefix == "logging.levels.":
                continue
            keys.add(f"{prefix}{k}")
            keys |= _yaml_keys(v, f"{prefix}{k}.")
    elif isinstance(data, list):
        for item in data:
            keys |= _yaml_keys(item, prefix)
    return keys


def test_default_yaml_lists_every_key() -> None:
    schema = _schema_keys(BrokerConfig)
    # optional sections written as null, with their keys in comments
    tls_keys = {k for k in schema if k.startswith(("listeners.tls.", "admin.tls.", "cluster."))}
    assert _yaml_keys(yaml.safe_load(default_config_text())) == schema - tls_keys


def test_docs_document_every_key() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = sorted(k for k in _schema_keys(BrokerConfig) if f"`{k}`" not in docs)
    assert not missing, f"docs/configuration.md does not document {missing}"


# --- values -----------------------------------------------------------------------------


def test_listener_defaults_by_type() -> None:
    config = parse_config({"listeners": [
        {"type": "tcp"},
        {"type": "ws", "host": "::1"},
        {"type": "tls", "tls": {"certfile": "c.pem", "keyfile": "k.pem"}},
    ]})
    assert [(lst.name, lst.port) for lst in config.listeners] == [
        ("tcp://0.0.0.0:1883", 1883), ("ws://[::1]:8080", 8080), ("tls://0.0.0.0:8883", 8883)]


def test_port_zero_picks_a_free_port_and_never_conflicts() -> None:
    config = parse_config({
        "listeners": [{"host": "127.0.0.1", "port": 0}, {"host": "127.0.0.1", "port": 0},
                      {"name": "ws", "type": "ws", "host": "127.0.0.1", "port": 0}],
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": 0},
    })
    assert [lst.name for lst in config.listeners] == [
        "tcp://127.0.0.1:0", "tcp://127.0.0.1:0#1", "ws"]


def test_units_and_interpolation() -> None:
    config = parse_config(
        {
            "listeners": [{"port": "${PORT}", "host": "${HOST:-127.0.0.1}"}],
            "mqtt": {"max_packet_size": "64KiB", "max_session_expiry": "7d",
                     "connect_timeout": "500ms", "max_queued_bytes": "2MB",
                     "retain_available": "${RETAIN:-false}", "server_reference": "$${literal}"},
            "storage": {"path": "${DATA}/db"},
            "logging": {"level": "debug", "levels": {"iotbroker.core": "warning"}},
        },
        env={"PORT": "1999", "DATA": "/srv", "HOST": ""},
    )
    assert config.listeners[0].port == 1999
    assert config.listeners[0].host == "127.0.0.1"  # ":-" also replaces an empty value
    assert config.mqtt.max_packet_size == 65536
    assert config.mqtt.max_session_expiry == 7 * 86400
    assert config.mqtt.connect_timeout == 0.5
    assert config.mqtt.max_queued_bytes == 2_000_000
    assert config.mqtt.retain_available is False
    assert config.mqtt.server_reference == "${literal}"
    assert config.storage.path == "/srv/db"
    assert config.logging.level == "DEBUG"
    assert dict(config.logging.levels) == {"iotbroker.core": "WARNING"}


def test_config_is_frozen() -> None:
    config = BrokerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.loop = "asyncio"  # type: ignore[misc]


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(str(path)) == BrokerConfig()


def test_overrides_replace_listeners_and_merge_sections(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("storage:\n  backend: memory\nlisteners:\n  - port: 1999\n")
    config = load_config(str(path), overrides={
        "listeners": [{"host": "127.0.0.1", "port": 2000}], "storage": {"path": "/x"}})
    assert [(lst.host, lst.port) for lst in config.listeners] == [("127.0.0.1", 2000)]
    assert config.storage.backend == "memory"
    assert config.storage.path == "/x"


# --- bad configs ------------------------------------------------------------------------

TLS_OK = {"certfile": "c.pem", "keyfile": "k.pem"}

BAD: list[tuple[str, object, str, str]] = [
    # (id, data, key path that must appear, other text that must appear)
    ("unknown top key", {"mqttt": {}}, "mqttt", "did you mean 'mqtt'"),
    ("unknown nested key", {"mqtt": {"max_inflite": 5}}, "mqtt.max_inflite", "did you mean"),
    ("unknown listener key", {"listeners": [{}, {"prot": 1884}]}, "listeners[1].prot",
     "not a known key"),
    ("unknown tls key", {"listeners": [{"type": "tls", "tls": {**TLS_OK, "ca": "x"}}]},
     "listeners[0].tls.ca", "not a known key"),
    ("port too big", {"listeners": [{}, {"port": 70000}]}, "listeners[1].port",
     "70000 is not a port (0–65535; 0 picks a free port)"),
    ("port negative", {"listeners": [{"port": -1}]}, "listeners[0].port", "is not a port"),
    ("port is a string", {"listeners": [{"port": "1883"}]}, "listeners[0].port",
     "is not a port"),
    ("port is a bool", {"listeners": [{"port": True}]}, "listeners[0].port", "is not a port"),
    ("listeners not a list", {"listeners": {"port": 1}}, "listeners", "is not a list"),
    ("listener not a mapping", {"listeners": ["tcp"]}, "listeners[0]", "is not a mapping"),
    ("no listeners", {"listeners": []}, "listeners", "at least one listener"),
    ("bad listener type", {"listeners": [{"type": "udp"}]}, "listeners[0].type",
     "is not one of: tcp, tls, ws, wss"),
    ("tls listener without tls", {"listeners": [{"type": "tls"}]}, "listeners[0].tls",
     "needs tls.certfile"),
    ("tls without keyfile", {"listeners": [{"type": "wss", "tls": {"certfile": "c"}}]},
     "listeners[0].tls.keyfile", "is missing"),
    ("tls on tcp", {"listeners": [{"type": "tcp", "tls": TLS_OK}]}, "listeners[0].tls",
     "only applies to tls and wss"),
    ("client cert without ca", {"listeners": [{"type": "tls", "tls": {
        **TLS_OK, "require_client_cert": True}}]}, "listeners[0].tls.cafile", "is missing"),
    ("identity without client cert", {"listeners": [{"type": "tls", "tls": {
        **TLS_OK, "use_identity_as_username": True}}]},
     "listeners[0].tls.use_identity_as_username", "require_client_cert"),
    ("bad tls version", {"listeners": [{"type": "tls", "tls": {
        **TLS_OK, "min_version": "TLSv1.0"}}]}, "listeners[0].tls.min_version", "TLSv1.2"),
    ("ws path", {"listeners": [{"type": "ws", "path": "mqtt"}]}, "listeners[0].path",
     "must start with /"),
    ("duplicate port", {"listeners": [{"port": 1883}, {"host": "127.0.0.1", "port": 1883}]},
     "listeners[1].port", "already used by listeners[0]"),
    ("duplicate name", {"listeners": [{"name": "a"}, {"name": "a", "port": 1884}]},
     "listeners[1].name", "already the name"),
    ("negative max_connections", {"listeners": [{"max_connections": -1}]},
     "listeners[0].max_connections", "≥ 0"),
    ("negative queued messages", {"mqtt": {"max_queued_messages": -5}},
     "mqtt.max_queued_messages", "≥ 1"),
    ("negative rate", {"limits": {"connect_rate": -1}}, "limits.connect_rate", "≥ 0"),
    ("negative duration", {"limits": {"drain_timeout": "-3s"}}, "limits.drain_timeout",
     "duration"),
    ("bad duration unit", {"sys_topics": {"interval": "10 parsecs"}}, "sys_topics.interval",
     "duration"),
    ("bad size", {"mqtt": {"max_packet_size": "lots"}}, "mqtt.max_packet_size",
     "size in bytes"),
    ("packet size too big", {"mqtt": {"max_packet_size": "1GiB"}}, "mqtt.max_packet_size",
     "64–268435460"),
    ("float for int", {"mqtt": {"max_inflight": 2.5}}, "mqtt.max_inflight", "integer"),
    ("wrong type bool", {"auth": {"allow_anonymous": "yes please"}}, "auth.allow_anonymous",
     "is not a boolean"),
    ("wrong type string", {"storage": {"path": 5}}, "storage.path", "is not a string"),
    ("empty path", {"storage": {"path": ""}}, "storage.path", "must not be empty"),
    ("section not mapping", {"mqtt": [1, 2]}, "mqtt", "is not a mapping"),
    ("bad enum overflow", {"mqtt": {"queue_overflow": "drop-all"}}, "mqtt.queue_overflow",
     "drop-oldest, drop-new"),
    ("bad enum strategy", {"mqtt": {"shared_subscription_strategy": "fair"}},
     "mqtt.shared_subscription_strategy", "round-robin"),
    ("bad enum backend", {"storage": {"backend": "sqlite"}}, "storage.backend", "rocksdb"),
    ("bad enum loop", {"loop": "trio"}, "loop", "auto, uvloop, asyncio"),
    ("qos 3", {"mqtt": {"maximum_qos": 3}}, "mqtt.maximum_qos", "0, 1, 2"),
    ("client id limit below spec", {"mqtt": {"max_client_id_length": 10}},
     "mqtt.max_client_id_length", "23–65535"),
    ("session expiry too big", {"mqtt": {"max_session_expiry": 2**32}},
     "mqtt.max_session_expiry", "0–4294967295"),
    ("bad log level", {"logging": {"level": "LOUD"}}, "logging.level", "DEBUG"),
    ("bad module log level", {"logging": {"levels": {"iotbroker.core": "LOUD"}}},
     "logging.levels.iotbroker.core", "DEBUG"),
    ("bad log format", {"logging": {"format": "xml"}}, "logging.format", "text, json"),
    ("metrics on a listener port", {"metrics": {"enabled": True, "host": "0.0.0.0",
                                                "port": 1883}}, "metrics.port", "already used"),
    ("metrics port range", {"metrics": {"port": 65536}}, "metrics.port", "is not a port"),
    ("no way in", {"auth": {"allow_anonymous": False}}, "auth.allow_anonymous",
     "password_file"),
    ("missing env", {"storage": {"path": "${IOTB_TEST_MISSING}/x"}}, "storage.path",
     "IOTB_TEST_MISSING"),
    ("missing env in list", {"listeners": [{}, {"host": "${IOTB_TEST_MISSING}", "port": 2}]},
     "listeners[1].host", "not set in the environment"),
    ("unterminated env", {"auth": {"password_file": "${OOPS"}}, "auth.password_file",
     "unterminated"),
    ("bad env name", {"auth": {"acl_file": "${1BAD}"}}, "auth.acl_file", "bad interpolation"),
    ("no pending checks", {"auth": {"max_pending_password_checks": 0}},
     "auth.max_pending_password_checks", "≥ 1"),
    ("negative login limit", {"auth": {"failed_login_limit": -1}}, "auth.failed_login_limit",
     "≥ 0"),
    ("bad login backoff", {"auth": {"failed_login_backoff": "soon"}},
     "auth.failed_login_backoff", "duration"),
    ("too many hash threads", {"auth": {"password_check_threads": 1000}},
     "auth.password_check_threads", "0–256"),
    ("env is not a number", {"listeners": [{"port": "${IOTB_TEST_PORT}"}]},
     "listeners[0].port", "is not a port"),
    ("mqtt-sn gateway id", {"mqttsn": {"gateway_id": 300}}, "mqttsn.gateway_id", "0–255"),
    ("mqtt-sn predefined wildcard", {"mqttsn": {"predefined_topics": {2: "a/+"}}},
     "mqttsn.predefined_topics", "without wildcards"),
    ("mqtt-sn predefined id 0", {"mqttsn": {"predefined_topics": {0: "a"}}},
     "mqttsn.predefined_topics", "1-65534"),
    ("mqttsn_username on tcp", {"listeners": [{"port": 0, "mqttsn_username": "x"}]},
     "listeners[0].mqttsn_username", "only applies to mqtt-sn"),
    ("udp and tcp share a port number", {"listeners": [
        {"port": 1884}, {"type": "mqtt-sn", "port": 1884}, {"type": "mqtt-sn", "port": 1884}]},
     "listeners[2].port", "already used by listeners[1]"),
    ("non-mapping root", [1, 2, 3], "<root>", "is not a mapping"),
    ("scalar root", "listeners", "<root>", "is not a mapping"),
]


@pytest.mark.parametrize(("data", "key", "text"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_names_the_key(data: object, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={"IOTB_TEST_PORT": "eighty"})
    message = str(info.value)
    assert message.startswith(f"{key}: "), message
    assert info.value.key == key
    assert text in message, message


BAD_FILES: list[tuple[str, str, str, str]] = [
    # (id, YAML text, text that must appear, second text)
    ("syntax error", "mqtt:\n  max_inflight: [1, 2\nloop: auto\n", "bad.yaml:3", "line 3"),
    ("bad indentation", "mqtt:\n  max_inflight: 1\n    receive_maximum: 2\n",
     "bad.yaml:3", "not valid YAML"),
    ("tab indentation", "mqtt:\n\tmax_inflight: 1\n", "bad.yaml:2", "not valid YAML"),
    ("duplicate key", "mqtt:\n  max_inflight: 1\n  max_inflight: 2\n", "mqtt.max_inflight",
     "duplicate key (first at line 2)"),
    ("duplicate key line", "mqtt:\n  max_inflight: 1\n  max_inflight: 2\n",
     "mqtt.max_inflight", "bad.yaml:3)"),
    ("value error has the line", "listeners:\n  - port: 1883\n  - port: 70000\n",
     "listeners[1].port: 70000 is not a port (0–65535", "bad.yaml:3"),
    ("non-mapping root", "- 1\n- 2\n", "<root>", "is not a mapping"),
]


@pytest.mark.parametrize(("text", "needle", "needle2"), [b[1:] for b in BAD_FILES],
                         ids=[b[0] for b in BAD_FILES])
def test_bad_config_file(tmp_path: Path, text: str, needle: str, needle2: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert needle in message, message
    assert needle2 in message, message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=re.escape(path) + ".*cannot be read"):
        load_config(path)


def test_every_error_of_a_file_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "three.yaml"
    path.write_text(
        "listeners:\n"
        "  - port: 70000\n"            # line 2: out of range
        "mqtt:\n"
        "  max_inflite: 5\n"           # line 4: unknown key
        "  queue_overflow: drop-all\n"  # line 5: not a choice
    )
    with pytest.raises(ConfigErrors) as info:
        load_config(str(path))
    errors = info.value.errors
    assert [e.key for e in errors] == [
        "listeners[0].port", "mqtt.max_inflite", "mqtt.queue_overflow"]
    assert all(f"three.yaml:{n})" in e.expected
               for e, n in zip(errors, (2, 4, 5), strict=True)), errors
    assert "did you mean 'max_inflight'" in str(errors[1])
    assert str(info.value).splitlines() == [str(e) for e in errors]
    # The first error is also the exception's own key, for code that reads one.
    assert info.value.key == "listeners[0].port"


def test_strict_values_are_not_coerced() -> None:
    for data, key in [({"auth": {"allow_anonymous": "yes"}}, "auth.allow_anonymous"),
                      ({"mqtt": {"retain_available": 1}}, "mqtt.retain_available"),
                      ({"mqtt": {"max_inflight": "20"}}, "mqtt.max_inflight"),
                      ({"mqtt": {"maximum_qos": "1"}}, "mqtt.maximum_qos"),
                      ({"storage": {"path": 5}}, "storage.path")]:
        with pytest.raises(ConfigError) as info:
            parse_config(data)
        assert info.value.key == key


def _leaf_types(cls: type) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, hint in get_type_hints(cls, include_extras=True).items():
        args = [a for a in (get_args(hint) if get_origin(hint) is not Annotated else (hint,))
                if a is not type(None)] or [hint]
        for tp in args:
            inner = get_args(tp)[0] if get_origin(tp) is Annotated else tp
            if get_origin(inner) is tuple:
                inner = get_args(inner)[0]
            if dataclasses.is_dataclass(inner):
                out += [(f"{name}.{k}", t) for k, t in _leaf_types(inner)]  # type: ignore[arg-type]
            elif get_origin(inner) is not Literal:
                out.append((name, tp))
    return out


def test_every_scalar_key_is_strict() -> None:
    """A key is written ``StrictBool`` or ``Annotated[int|float, Number(...)]``, never bare
    ``bool``/``int``/``float`` (pydantic would accept ``"yes"`` or ``"20"`` for those)."""
    loose = []
    for name, tp in _leaf_types(BrokerConfig):
        if get_origin(tp) is Annotated:
            base, *meta = get_args(tp)
            if base in (int, float) and not any(isinstance(m, Number) for m in meta):
                loose.append(name)
        elif tp in (bool, int, float):
            loose.append(name)
    assert not loose, f"write these keys StrictBool or Annotated[..., Number(...)]: {loose}"
