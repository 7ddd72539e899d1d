"""Broker configuration: one YAML schema, loaded into frozen slotted dataclasses.

Rules of this room:

* This is the only module that reads YAML. It is synchronous and imports nothing of
  ours but :mod:`iotbroker.errors`.
* The schema *is* the dataclasses below: a field's annotation gives its type, its
  default the default, its metadata the allowed range. :data:`DEFAULT_CONFIG` is the
  same defaults written as YAML (``configs/default.yaml`` is a byte-for-byte copy) and
  a test keeps the three equal.
* Every value is checked before the broker starts. Unknown keys, wrong types and
  out-of-range values raise :class:`~iotbroker.errors.ConfigError` naming the key path
  (``listeners[1].port``), the value and what was expected; when the value came from a
  YAML file the file and line are added.
* ``${VAR}`` and ``${VAR:-default}`` are replaced in string values from the environment
  (``$${`` writes a literal ``${``). A value that is exactly an interpolation may stand
  for a number or a boolean: ``port: ${MQTT_PORT:-1883}``.
* Durations accept seconds (``10``, ``2.5``) or a number with a unit (``500ms``, ``30s``,
  ``5m``, ``12h``, ``7d``, ``2w``); sizes accept bytes or ``64KiB``, ``16MiB``, ``1GiB``
  (also ``kB``/``MB``/``GB``, powers of 1000).
* Relative paths are relative to the broker's working directory (as in mosquitto).

``docs/configuration.md`` documents every key.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import yaml

from iotbroker.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_RESOURCE",
    "LOOPBACK_HOST",
    "AuthConfig",
    "BrokerConfig",
    "ConfigError",
    "LimitsConfig",
    "ListenerConfig",
    "LoggingConfig",
    "MetricsConfig",
    "MqttConfig",
    "StorageConfig",
    "SysTopicsConfig",
    "TlsConfig",
    "default_config_text",
    "load_config",
    "parse_config",
]

_T = TypeVar("_T")

#: Largest packet MQTT can encode: 268,435,455 bytes of body + 5 bytes of fixed header.
MQTT_MAX_PACKET_SIZE = 268_435_460
#: Largest Session Expiry Interval; in MQTT 5.0 it means "never expires" (§3.1.2.11.2).
SESSION_EXPIRY_NEVER = 0xFFFFFFFF

ListenerType = Literal["tcp", "tls", "ws", "wss"]
TlsVersion = Literal["TLSv1.2", "TLSv1.3"]
QueueOverflow = Literal["drop-oldest", "drop-new"]
SharedStrategy = Literal["round-robin", "random", "sticky", "least-inflight"]
StorageBackend = Literal["rocksdb", "memory"]
Durability = Literal["os", "fsync"]
OnCorruption = Literal["fail", "move-aside"]
LogFormat = Literal["text", "json"]
LoopKind = Literal["auto", "uvloop", "asyncio"]
QoSLevel = Literal[0, 1, 2]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType(
    {"tcp": 1883, "tls": 8883, "ws": 8080, "wss": 8443}
)
#: Address of the built-in listener and of ``--listen PORT``: loopback only (secure by
#: default; ``0.0.0.0`` must be asked for).
LOOPBACK_HOST = "127.0.0.1"


def _opt(
    default: _T,
    *,
    lo: float | None = None,
    hi: float | None = None,
    what: str | None = None,
    duration: bool = False,
    size: bool = False,
    nonempty: bool = False,
) -> _T:
    """A dataclass field with its validation rules in the metadata."""
    meta = {"lo": lo, "hi": hi, "what": what, "duration": duration, "size": size,
            "nonempty": nonempty}
    result: _T = field(default=default, metadata=meta)
    return result


_PORT = "is not a port (0–65535; 0 picks a free port)"


# --------------------------------------------------------------------------------------
# The schema


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS settings of a ``tls`` or ``wss`` listener."""

    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = None
    cafile: str | None = None
    require_client_cert: bool = False
    use_identity_as_username: bool = False
    min_version: TlsVersion = "TLSv1.2"
    ciphers: str | None = None


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One socket the broker accepts MQTT connections on."""

    name: str = _opt("default", nonempty=True)
    type: ListenerType = "tcp"
    host: str = "0.0.0.0"
    port: int = _opt(1883, lo=0, hi=65535, what=_PORT)
    path: str = "/mqtt"
    tls: TlsConfig | None = None
    max_connections: int = _opt(0, lo=0)


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Protocol limits and features announced to clients (MQTT 5.0 CONNACK properties)."""

    max_packet_size: int = _opt(16 * 1024 * 1024, lo=64, hi=MQTT_MAX_PACKET_SIZE, size=True)
    max_keepalive: int = _opt(65535, lo=1, hi=65535, duration=True)
    receive_maximum: int = _opt(1024, lo=1, hi=65535)
    max_inflight: int = _opt(20, lo=1, hi=65535)
    max_queued_messages: int = _opt(10000, lo=1)
    max_queued_bytes: int = _opt(0, lo=0, size=True)
    queue_overflow: QueueOverflow = "drop-new"
    topic_alias_maximum: int = _opt(100, lo=0, hi=65535)
    outbound_topic_aliases: bool = True
    maximum_qos: QoSLevel = 2
    retain_available: bool = True
    wildcard_subscriptions: bool = True
    subscription_identifiers: bool = True
    shared_subscriptions: bool = True
    shared_subscription_strategy: SharedStrategy = "round-robin"
    max_session_expiry: int = _opt(SESSION_EXPIRY_NEVER, lo=0, hi=SESSION_EXPIRY_NEVER,
                                   duration=True)
    persistent_session_expiry_v311: int | None = _opt(None, lo=0, duration=True)
    connect_timeout: float = _opt(10.0, lo=0.001, duration=True)
    max_topic_levels: int = _opt(128, lo=1, hi=32767)
    max_topic_length: int = _opt(65535, lo=1, hi=65535)
    max_client_id_length: int = _opt(65535, lo=23, hi=65535)
    max_subscriptions_per_client: int = _opt(0, lo=0)
    max_retained_messages: int = _opt(0, lo=0)
    allow_zero_length_client_id: bool = True
    response_information_prefix: str | None = None
    server_reference: str | None = None


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where sessions, queued messages and retained messages are kept."""

    backend: StorageBackend = "rocksdb"
    path: str = _opt("./data", nonempty=True)
    durability: Durability = "os"
    on_corruption: OnCorruption = "fail"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Who may connect (password file) and what they may do (ACL file)."""

    allow_anonymous: bool = True
    password_file: str | None = _opt(None, nonempty=True)
    acl_file: str | None = _opt(None, nonempty=True)


@dataclass(frozen=True, slots=True)
class SysTopicsConfig:
    """``$SYS/broker/...`` statistics topics."""

    enabled: bool = True
    interval: float = _opt(10.0, lo=0.1, duration=True)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus exposition endpoint (plain HTTP)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = _opt(9883, lo=0, hi=65535, what=_PORT)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """Log level and format; ``levels`` sets levels per logger (``iotbroker.storage``)."""

    level: str = "INFO"
    format: LogFormat = "text"
    levels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Broker-wide admission limits; 0 means unlimited."""

    max_connections: int = _opt(0, lo=0)
    connect_rate: float = _opt(0.0, lo=0)
    publish_rate_per_client: float = _opt(0.0, lo=0)
    drain_timeout: float = _opt(10.0, lo=0, duration=True)


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """The whole configuration. ``source`` says where it came from (not compared)."""

    #: Without ``listeners`` (no configuration file, or one that names none) the broker
    #: listens on loopback only, as mosquitto 2.x does; a listener written without
    #: ``host`` binds every IPv4 address (mosquitto's ``listener 1883``).
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(host=LOOPBACK_HOST),)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    sys_topics: SysTopicsConfig = field(default_factory=SysTopicsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    loop: LoopKind = "auto"
    source: str = field(default="<defaults>", compare=False)


#: The package resource holding the defaults as YAML (``configs/default.yaml`` is a symlink
#: to it, for people reading the repository).
DEFAULT_CONFIG_RESOURCE = "default.yaml"


def default_config_text() -> str:
    """The shipped defaults as YAML: every key with its default value and a comment."""
    return (resources.files("iotbroker") / DEFAULT_CONFIG_RESOURCE).read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------
# Public API


def load_config(
    path: str | None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> BrokerConfig:
    """Read and validate a YAML configuration file; ``None`` gives the embedded defaults.

    ``overrides`` (for command-line flags) is merged into the file's data before
    validation: mappings are merged key by key, anything else (lists too) replaces.
    """
    if path is None:
        text, source = default_config_text(), "<defaults>"
    else:
        source = path
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(path, path, f"cannot be read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(path, path, f"is not UTF-8 text ({exc.reason})") from None
    data = _load_yaml(text, source)
    if overrides:
        if not isinstance(data, dict):
            data = _check_root(data, source)
        data = _merge(data, overrides)
    return parse_config(data, source, env)


def parse_config(
    data: object, source: str = "<dict>", env: Mapping[str, str] | None = None
) -> BrokerConfig:
    """Validate already-parsed configuration data (a mapping) into a :class:`BrokerConfig`.

    ``env`` replaces :data:`os.environ` for ``${VAR}`` interpolation (tests).
    """
    root = _check_root(data, source)
    builder = _Builder(source, os.environ if env is None else env)
    config = builder.build(BrokerConfig, root, "", None)
    config = dataclasses.replace(config, source=source)
    return _check_cross(config, root, builder)


# --------------------------------------------------------------------------------------
# YAML with line numbers and duplicate-key detection


class _Map(dict[Any, Any]):
    """A YAML mapping that remembers the line of each key and any duplicated keys."""

    lines: dict[Any, int]
    duplicates: list[tuple[Any, int, int]]


class _Seq(list[Any]):
    """A YAML sequence that remembers the line of each item."""

    lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.lines = {}
    result.duplicates = []
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise ConfigError(
                f"line {line}", key, "is not a valid key (keys are plain strings)"
            ) from None
        if key in result:
            result.duplicates.append((key, line, result.lines[key]))
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = line
    return result


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    result = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    result.lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _load_yaml(text: str, source: str) -> object:
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "syntax error"
        if mark is None:
            raise ConfigError(source, source, f"is not valid YAML: {problem}") from None
        lines = text.splitlines()
        snippet = lines[mark.line].strip() if mark.line < len(lines) else ""
        raise ConfigError(
            f"{source}:{mark.line + 1}:{mark.column + 1}",
            snippet,
            f"is not valid YAML: {problem} (line {mark.line + 1}, column {mark.column + 1})",
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, source, f"is not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _check_root(data: object, source: str) -> Mapping[Any, Any]:
    if data is None:  # an empty file: all defaults
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            "<root>", data, f"is not a mapping of sections (listeners, mqtt, ...) in {source}"
        )
    return data


def _merge(base: Mapping[Any, Any], overrides: Mapping[str, Any]) -> dict[Any, Any]:
    merged: dict[Any, Any] = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------------------
# Values


_INTERP = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?\s*\Z")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
                   "w": 604800.0}
_SIZE = re.compile(r"\s*(\d+)\s*([KMG]i?B|[kKMG]|B)?\s*\Z")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
               "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
               "k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _fmt_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"in {_fmt_number(lo)}–{_fmt_number(hi)}"
    if lo is not None:
        return f"≥ {_fmt_number(lo)}"
    if hi is not None:
        return f"≤ {_fmt_number(hi)}"
    return ""


class _Builder:
    """Walks raw data against the dataclass schema, building and checking as it goes."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self._hints: dict[type, dict[str, Any]] = {}

    # errors ---------------------------------------------------------------------------

    def error(self, key: str, value: object, expected: str, line: int | None) -> ConfigError:
        if line is not None:
            expected = f"{expected} (at {self.source}:{line})"
        return ConfigError(key, value, expected)

    # interpolation ---------------------------------------------------------------------

    def interpolate(self, text: str, key: str, line: int | None) -> str:
        def replace(match: re.Match[str]) -> str:
            token = match.group(0)
            if token == "$${":
                return "${"
            inner = match.group(1)
            if inner is None:
                raise self.error(key, text, "has an unterminated ${ (write $${ for a literal)",
                                 line)
            name, sep, default = inner.partition(":-")
            if not _ENV_NAME.match(name):
                raise self.error(
                    key, text, f"has a bad interpolation ${{{inner}}} "
                    "(expected ${NAME} or ${NAME:-default})", line)
            value = self.env.get(name)
            if value is None or (sep and value == ""):
                if sep:
                    return default
                raise self.error(
                    key, text,
                    f"uses ${{{name}}}, which is not set in the environment and has no "
                    f"default (write ${{{name}:-default}})", line)
            return value

        return _INTERP.sub(replace, text)

    # building -------------------------------------------------------------------------

    def hints(self, cls: type) -> dict[str, Any]:
        if cls not in self._hints:
            self._hints[cls] = typing.get_type_hints(cls)
        return self._hints[cls]

    def build(self, cls: type[_T], raw: object, key: str, line: int | None) -> _T:
        if not isinstance(raw, Mapping):
            raise self.error(key or "<root>", raw, f"is not a mapping ({_describe(cls)})", line)
        fields = {f.name: f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                  if f.name != "source"}
        lines: Mapping[Any, int] = getattr(raw, "lines", {})
        for dup, dup_line, first_line in getattr(raw, "duplicates", ()):
            raise self.error(_join(key, str(dup)), dup,
                             f"is a duplicate key (first at line {first_line})", dup_line)
        for name in raw:
            if name not in fields:
                hint = difflib.get_close_matches(str(name), list(fields), n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                raise self.error(
                    _join(key, str(name)), name,
                    f"is not a known key{suggestion} (known: {', '.join(fields)})",
                    lines.get(name, line))
        kwargs: dict[str, Any] = {}
        hints = self.hints(cls)
        for name, f in fields.items():
            if name not in raw:
                continue
            kwargs[name] = self.convert(hints[name], raw[name], _join(key, name),
                                        lines.get(name, line), f.metadata)
        if cls is ListenerConfig:
            if "port" not in raw:
                kwargs["port"] = DEFAULT_PORTS[kwargs.get("type", "tcp")]
            if "name" not in raw:
                host = kwargs.get("host", "0.0.0.0")
                host = f"[{host}]" if ":" in host else host
                kwargs["name"] = f"{kwargs.get('type', 'tcp')}://{host}:{kwargs['port']}"
        return cls(**kwargs)

    def convert(self, tp: Any, raw: object, key: str, line: int | None,
                meta: Mapping[str, Any], *, coerce: bool | None = None) -> Any:
        """``coerce`` is None until the value has been interpolated (exactly once)."""
        if coerce is None:
            coerce = False
            if isinstance(raw, str) and "$" in raw:
                coerce = "${" in raw
                raw = self.interpolate(raw, key, line)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)

        if origin in (types.UnionType, typing.Union):
            inner = [a for a in args if a is not type(None)]
            if raw is None or (coerce and raw in ("", "null", "~")):
                return None
            assert len(inner) == 1
            return self.convert(inner[0], raw, key, line, meta, coerce=coerce)

        if dataclasses.is_dataclass(tp):
            return self.build(tp, raw, key, line)  # type: ignore[arg-type]

        if origin is tuple:
            if not isinstance(raw, list):
                raise self.error(key, raw, "is not a list", line)
            item_lines: list[int] = getattr(raw, "lines", [])
            return tuple(
                self.convert(args[0], item, f"{key}[{i}]",
                             item_lines[i] if i < len(item_lines) else line, meta)
                for i, item in enumerate(raw)
            )

        if origin is Mapping or tp is Mapping:
            if not isinstance(raw, Mapping):
                raise self.error(key, raw, "is not a mapping", line)
            sub_lines: Mapping[Any, int] = getattr(raw, "lines", {})
            out: dict[str, str] = {}
            for k, v in raw.items():
                if not isinstance(k, str):
                    raise self.error(f"{key}.{k}", k, "is not a string key", line)
                out[k] = self.convert(args[1] if args else str, v, f"{key}.{k}",
                                      sub_lines.get(k, line), {})
            return MappingProxyType(out)

        if origin is Literal:
            if coerce and isinstance(raw, str) and all(isinstance(a, int) for a in args):
                raw = _parse_int(raw)
            if isinstance(raw, bool) or raw not in args:
                choices = ", ".join(str(a) for a in args)
                raise self.error(key, raw, f"is not one of: {choices}", line)
            return raw

        if tp is bool:
            if coerce and isinstance(raw, str) and raw.lower() in ("true", "false"):
                raw = raw.lower() == "true"
            if not isinstance(raw, bool):
                raise self.error(key, raw, "is not a boolean (true or false)", line)
            return raw

        if tp is str:
            if not isinstance(raw, str):
                raise self.error(key, raw, "is not a string", line)
            if meta.get("nonempty") and not raw.strip():
                raise self.error(key, raw, "must not be empty", line)
            return raw

        if tp is int or tp is float:
            return self.number(tp, raw, key, line, meta, coerce=coerce)

        raise TypeError(f"config schema: unsupported type {tp!r} for {key}")  # our bug

    def number(self, tp: type, raw: object, key: str, line: int | None,
               meta: Mapping[str, Any], *, coerce: bool) -> float:
        lo, hi = meta.get("lo"), meta.get("hi")
        duration, size = meta.get("duration", False), meta.get("size", False)
        kind = "a duration in seconds" if duration else (
            "a size in bytes" if size else ("an integer" if tp is int else "a number"))
        example = " (e.g. 10, 2.5, 30s, 5m, 12h, 7d)" if duration else (
            " (e.g. 65536, 64KiB, 16MiB)" if size else "")
        expected = meta.get("what") or " ".join(
            p for p in (f"is not {kind}", _range_text(lo, hi)) if p) + example
        value: float
        if isinstance(raw, bool):
            raise self.error(key, raw, expected, line)
        if isinstance(raw, int | float):
            value = raw
        elif isinstance(raw, str) and (duration or size or coerce):
            parsed = _parse_quantity(raw, duration=duration, size=size)
            if parsed is None:
                raise self.error(key, raw, expected, line)
            value = parsed
        else:
            raise self.error(key, raw, expected, line)
        if not math.isfinite(value):  # NaN, infinity
            raise self.error(key, raw, expected, line)
        if tp is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise self.error(key, raw, expected, line)
                value = int(value)
        else:
            value = float(value)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.error(key, raw, expected, line)
        return value


def _parse_int(text: str) -> object:
    try:
        return int(text.strip())
    except ValueError:
        return text


def _parse_quantity(text: str, *, duration: bool, size: bool) -> float | None:
    if duration:
        m = _DURATION.match(text)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    elif size:
        m = _SIZE.match(text)
        if m and m.group(2) in _SIZE_UNITS:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    else:
        try:
            return float(text.strip()) if "." in text else int(text.strip())
        except ValueError:
            return None
    return None


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _describe(cls: type) -> str:
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    return "keys: " + ", ".join(names)


# --------------------------------------------------------------------------------------
# Rules across keys


def _line_of(raw: object, *path: object) -> int | None:
    line: int | None = None
    node: Any = raw
    for step in path:
        lines = getattr(node, "lines", None)
        try:
            if lines is not None:
                line = lines[step]
            node = node[step]
        except (KeyError, IndexError, TypeError):
            break
    return line


def _check_cross(config: BrokerConfig, root: Mapping[Any, Any], b: _Builder) -> BrokerConfig:
    if not config.listeners:
        raise b.error("listeners", [], "is empty: at least one listener is needed",
                      _line_of(root, "listeners"))
    names: dict[str, int] = {}
    raw_listeners = root.get("listeners", [])
    if not isinstance(raw_listeners, list):
        raw_listeners = []
    listeners = list(config.listeners)
    for i, lst in enumerate(config.listeners):
        key = f"listeners[{i}]"
        def where(*path: object, i: int = i) -> int | None:
            return _line_of(root, "listeners", i, *path)

        secure = lst.type in ("tls", "wss")
        if secure:
            if lst.tls is None:
                raise b.error(f"{key}.tls", None,
                              f"is missing: a {lst.type} listener needs tls.certfile and "
                              "tls.keyfile", where())
            for req in ("certfile", "keyfile"):
                if getattr(lst.tls, req) is None:
                    raise b.error(f"{key}.tls.{req}", None,
                                  f"is missing: a {lst.type} listener needs it", where("tls"))
            if lst.tls.require_client_cert and lst.tls.cafile is None:
                raise b.error(f"{key}.tls.cafile", None,
                              "is missing: require_client_cert needs the CA that signs "
                              "client certificates", where("tls"))
            if lst.tls.use_identity_as_username and not lst.tls.require_client_cert:
                raise b.error(f"{key}.tls.use_identity_as_username", True,
                              "needs tls.require_client_cert: true",
                              where("tls", "use_identity_as_username"))
        elif lst.tls is not None:
            raise b.error(f"{key}.tls", "...",
                          f"only applies to tls and wss listeners, not {lst.type}", where("tls"))
        if lst.type in ("ws", "wss") and not lst.path.startswith("/"):
            raise b.error(f"{key}.path", lst.path, "is not a URL path (must start with /)",
                          where("path"))
        if not lst.host.strip():
            raise b.error(f"{key}.host", lst.host, "must not be empty", where("host"))
        for j in range(i):
            other = config.listeners[j]
            if lst.port and other.port == lst.port and _hosts_overlap(other.host, lst.host):
                raise b.error(f"{key}.port", lst.port,
                              f"is already used by listeners[{j}] ({other.name!r} on "
                              f"{other.host}:{other.port})", where("port"))
        raw = raw_listeners[i] if i < len(raw_listeners) else {}
        name = lst.name
        if name in names and isinstance(raw, Mapping) and "name" not in raw:
            # A generated name (two port-0 listeners on one host): number it.
            name = f"{name}#{i}"
            listeners[i] = dataclasses.replace(lst, name=name)
        if name in names:
            raise b.error(f"{key}.name", name,
                          f"is already the name of listeners[{names[name]}]", where("name"))
        names[name] = i
    config = dataclasses.replace(config, listeners=tuple(listeners))
    if config.metrics.enabled:
        for j, other in enumerate(config.listeners):
            if other.port and other.port == config.metrics.port and _hosts_overlap(other.host,
                                                                    config.metrics.host):
                raise b.error("metrics.port", config.metrics.port,
                              f"is already used by listeners[{j}] ({other.name!r})",
                              _line_of(root, "metrics", "port"))

    level = config.logging.level
    if level.upper() not in LOG_LEVELS:
        raise b.error("logging.level", level, f"is not one of: {', '.join(LOG_LEVELS)}",
                      _line_of(root, "logging", "level"))
    for logger_name, lvl in config.logging.levels.items():
        if lvl.upper() not in LOG_LEVELS:
            raise b.error(f"logging.levels.{logger_name}", lvl,
                          f"is not one of: {', '.join(LOG_LEVELS)}",
                          _line_of(root, "logging", "levels", logger_name))
    normalised = LoggingConfig(
        level=level.upper(), format=config.logging.format,
        levels=MappingProxyType({k: v.upper() for k, v in config.logging.levels.items()}))
    config = dataclasses.replace(config, logging=normalised)

    auth = config.auth
    if not auth.allow_anonymous and auth.password_file is None and not any(
        lst.tls is not None and lst.tls.use_identity_as_username for lst in config.listeners
    ):
        raise b.error("auth.allow_anonymous", False,
                      "leaves no way to connect: set auth.password_file or a listener's "
                      "tls.use_identity_as_username", _line_of(root, "auth", "allow_anonymous"))

    mqtt = config.mqtt
    if mqtt.response_information_prefix is not None and not mqtt.response_information_prefix:
        raise b.error("mqtt.response_information_prefix", "", "must not be empty (use null)",
                      _line_of(root, "mqtt", "response_information_prefix"))
    if mqtt.response_information_prefix is not None and any(
        c in mqtt.response_information_prefix for c in "+#\0"
    ):
        raise b.error("mqtt.response_information_prefix", mqtt.response_information_prefix,
                      "must not contain wildcards (+, #) or NUL",
                      _line_of(root, "mqtt", "response_information_prefix"))
    return config


def _hosts_overlap(a: str, b: str) -> bool:
    if a == b:
        return True
    fam_a, fam_b = _ip_family(a), _ip_family(b)
    wildcard = {"0.0.0.0": 4, "::": 6, "": 0}
    if a in wildcard or b in wildcard:
        wa, wb = wildcard.get(a), wildcard.get(b)
        if wa == 0 or wb == 0:
            return True
        return (wa is not None and wa == fam_b) or (wb is not None and wb == fam_a)
    return False


def _ip_family(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None
