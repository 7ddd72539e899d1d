"""Broker configuration: one YAML schema, validated by pydantic into frozen dataclasses.

Rules of this room:

* This is the only module that reads YAML. It is synchronous and imports nothing of
  ours but :mod:`iotbroker.errors`.
* The schema *is* the dataclasses below (pydantic dataclasses: real, frozen, slotted
  :mod:`dataclasses`, so ``dataclasses.replace`` and ``==`` work as before). A field's
  annotation gives its type and its checks, its default the default. Numbers are written
  ``Annotated[int, Number(lo=..., hi=...)]`` (``unit="duration"`` or ``"size"`` for
  values with units), booleans ``StrictBool`` (``yes`` is not a boolean); a test keeps
  every key of the schema written that way. The defaults as YAML are the package data
  ``iotbroker/default.yaml`` (``configs/default.yaml`` is a symlink to it) and tests keep
  the file, the dataclass defaults and ``docs/configuration.md`` in agreement.
* Every value is checked before the broker starts, and *every* error is reported, in file
  order: unknown keys (with a did-you-mean), wrong types and out-of-range values raise
  :class:`ConfigErrors` (a :class:`~iotbroker.errors.ConfigError`) naming each key path
  (``listeners[1].port``), the value and what was expected, with the file and line when
  the value came from a YAML file. Rules across keys (a TLS listener needs a certificate,
  two listeners on one port) are checked once every single value is valid.
* ``${VAR}`` and ``${VAR:-default}`` are replaced in string values from the environment
  (``$${`` writes a literal ``${``). A value that is exactly an interpolation may stand
  for a number, a boolean or null: ``port: ${MQTT_PORT:-1883}``.
* Durations accept seconds (``10``, ``2.5``) or a number with a unit (``500ms``, ``30s``,
  ``5m``, ``12h``, ``7d``, ``2w``); sizes accept bytes or ``64KiB``, ``16MiB``, ``1GiB``
  (also ``kB``/``MB``/``GB``, powers of 1000).
* Relative paths are relative to the broker's working directory (as in mosquitto).

``docs/configuration.md`` documents every key and how to add one.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    ConfigDict,
    PlainValidator,
    StrictBool,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError, core_schema

from iotbroker.errors import ConfigError
from iotbroker.storage.base import Durability, OnCorruption

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import ErrorDetails

__all__ = [
    "DEFAULT_CONFIG_RESOURCE",
    "LOOPBACK_HOST",
    "AuthConfig",
    "BridgeConfig",
    "BridgeOutboxConfig",
    "BridgeTlsConfig",
    "BridgeTopicConfig",
    "BrokerConfig",
    "ClusterConfig",
    "ConfigError",
    "ConfigErrors",
    "LimitsConfig",
    "ListenerConfig",
    "LoggingConfig",
    "MetricsConfig",
    "MqttConfig",
    "Number",
    "QosStreamConfig",
    "StorageConfig",
    "SysTopicsConfig",
    "TlsConfig",
    "default_config_text",
    "load_config",
    "parse_config",
    "split_address",
]

#: Largest packet MQTT can encode: 268,435,455 bytes of body + 5 bytes of fixed header.
MQTT_MAX_PACKET_SIZE = 268_435_460
#: Largest Session Expiry Interval; in MQTT 5.0 it means "never expires" (§3.1.2.11.2).
SESSION_EXPIRY_NEVER = 0xFFFFFFFF

ListenerType = Literal["tcp", "tls", "ws", "wss", "mqtt-sn"]
TlsVersion = Literal["TLSv1.2", "TLSv1.3"]
QueueOverflow = Literal["drop-oldest", "drop-new"]
SharedStrategy = Literal["round-robin", "random", "sticky", "least-inflight"]
StorageBackend = Literal["rocksdb", "memory"]
LogFormat = Literal["text", "json"]
LoopKind = Literal["auto", "uvloop", "asyncio"]
QoSLevel = Literal[0, 1, 2]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType(
    {"tcp": 1883, "tls": 8883, "ws": 8080, "wss": 8443, "mqtt-sn": 1884}
)
#: Address of the built-in listener and of ``--listen PORT``: loopback only (secure by
#: default; ``0.0.0.0`` must be asked for).
LOOPBACK_HOST = "127.0.0.1"


class ConfigErrors(ConfigError):
    """Every error found in one configuration, in file order (at least one).

    ``key``, ``value`` and ``expected`` are those of the first, so code that handles one
    :class:`ConfigError` keeps working; ``str()`` gives one line per error.
    """

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.key, first.value, first.expected)
        self.errors = tuple(errors)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


# --------------------------------------------------------------------------------------
# Value types: what a key may hold, and the text of the error when it does not


def _fail(expected: str) -> PydanticCustomError:
    return PydanticCustomError("iotbroker_config", "{expected}", {"expected": expected})


class _Env(str):
    """A string written with ``${...}``: it may stand for a number, a boolean or null."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True)
class Number:
    """``Annotated[int, Number(lo=1, hi=65535)]``: a number in a range, maybe with a unit.

    ``unit="duration"`` accepts ``10s``, ``500ms``, ``5m``..., ``unit="size"`` accepts
    ``64KiB``, ``16MiB``...; ``what`` replaces the whole "is not ..." text of the error.
    Booleans, NaN and infinities are refused; an ``int`` key refuses ``2.5``.
    """

    lo: float | None = None
    hi: float | None = None
    unit: Literal["duration", "size"] | None = None
    what: str | None = None

    def expected(self, integer: bool) -> str:
        if self.what is not None:
            return self.what
        kind = {"duration": "a duration in seconds", "size": "a size in bytes"}.get(
            self.unit or "", "an integer" if integer else "a number")
        example = {"duration": " (e.g. 10, 2.5, 30s, 5m, 12h, 7d)",
                   "size": " (e.g. 65536, 64KiB, 16MiB)"}.get(self.unit or "", "")
        return " ".join(p for p in (f"is not {kind}", _range_text(self.lo, self.hi)) if p) \
            + example

    def check(self, raw: object, integer: bool) -> float:
        expected = self.expected(integer)
        value: float
        if isinstance(raw, bool):
            raise _fail(expected)
        if isinstance(raw, int | float):
            value = raw
        elif isinstance(raw, str) and (self.unit is not None or isinstance(raw, _Env)):
            parsed = _parse_quantity(raw, self.unit)
            if parsed is None:
                raise _fail(expected)
            value = parsed
        else:
            raise _fail(expected)
        if not math.isfinite(value):
            raise _fail(expected)
        if integer:
            if isinstance(value, float):
                if not value.is_integer():
                    raise _fail(expected)
                value = int(value)
        else:
            value = float(value)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise _fail(expected)
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        integer = source is int

        def validate(raw: object) -> float:
            return self.check(raw, integer)

        return core_schema.no_info_plain_validator_function(validate)


def _nonempty(value: str) -> str:
    if not value.strip():
        raise _fail("must not be empty")
    return value


def _log_level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise _fail(f"is not one of: {', '.join(LOG_LEVELS)}")
    return value.upper()


def _read_only(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


_PORT = "is not a port (0–65535; 0 picks a free port)"

#: A string that must not be empty (or blank).
NonEmptyStr = Annotated[str, AfterValidator(_nonempty)]
#: A TCP port; 0 picks a free one.
Port = Annotated[int, Number(lo=0, hi=65535, what=_PORT)]
#: A count or limit where 0 means unlimited.
Limit = Annotated[int, Number(lo=0)]
#: A log level name, any case; stored in upper case.
LogLevel = Annotated[str, AfterValidator(_log_level)]


# --------------------------------------------------------------------------------------
# The schema

#: Unknown keys are errors (a did-you-mean is added when the error is reported).
_SCHEMA = ConfigDict(extra="forbid")
#: Validation context of :func:`parse_config`: values come from a file or a dict, not code.
_FROM_DATA = "iotbroker.config"


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class _Section:
    """Base of every section: lets an interpolated ``${...}`` stand for a bool or null."""

    @model_validator(mode="before")
    @classmethod
    def _from_data(cls, data: Any, info: ValidationInfo) -> Any:
        if info.context != _FROM_DATA or not isinstance(data, Mapping):
            return data  # built by code (dataclasses.replace, tests): plain keyword args
        hints = _hints(cls)
        out = {k: _coerce_env(hints[k], v) if isinstance(v, _Env) and k in hints else v
               for k, v in data.items()}
        return cls._fill_in(out)

    @classmethod
    def _fill_in(cls, data: dict[Any, Any]) -> dict[Any, Any]:
        """Defaults that depend on other keys of the same section (read from data only)."""
        return data


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class TlsConfig(_Section):
    """TLS settings of a ``tls`` or ``wss`` listener."""

    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = None
    cafile: str | None = None
    require_client_cert: StrictBool = False
    use_identity_as_username: StrictBool = False
    min_version: TlsVersion = "TLSv1.2"
    ciphers: str | None = None


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class ListenerConfig(_Section):
    """One socket the broker accepts MQTT connections on."""

    name: NonEmptyStr = "default"
    type: ListenerType = "tcp"
    host: str = "0.0.0.0"
    port: Port = 1883
    path: str = "/mqtt"
    tls: TlsConfig | None = None
    max_connections: Limit = 0
    #: ``mqtt-sn`` listeners: the username its clients have for the ACL (MQTT-SN 1.2
    #: CONNECT carries no credentials); None = anonymous.
    mqttsn_username: str | None = None

    @classmethod
    def _fill_in(cls, data: dict[Any, Any]) -> dict[Any, Any]:
        # Written without a port: the usual port of its type. Without a name: its URL.
        kind = data.get("type", "tcp")
        if "port" not in data:
            data["port"] = DEFAULT_PORTS.get(kind, 1883) if isinstance(kind, str) else 1883
        if "name" not in data:
            host = data.get("host", "0.0.0.0")
            host = f"[{host}]" if ":" in str(host) else host
            data["name"] = f"{kind}://{host}:{data['port']}"
        return data


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class MqttConfig(_Section):
    """Protocol limits and features announced to clients (MQTT 5.0 CONNACK properties)."""

    max_packet_size: Annotated[int, Number(lo=64, hi=MQTT_MAX_PACKET_SIZE, unit="size")] = (
        16 * 1024 * 1024)
    max_keepalive: Annotated[int, Number(lo=1, hi=65535, unit="duration")] = 65535
    receive_maximum: Annotated[int, Number(lo=1, hi=65535)] = 1024
    max_inflight: Annotated[int, Number(lo=1, hi=65535)] = 20
    max_queued_messages: Annotated[int, Number(lo=1)] = 10000
    max_queued_bytes: Annotated[int, Number(lo=0, unit="size")] = 0
    queue_overflow: QueueOverflow = "drop-new"
    topic_alias_maximum: Annotated[int, Number(lo=0, hi=65535)] = 100
    outbound_topic_aliases: StrictBool = True
    maximum_qos: QoSLevel = 2
    retain_available: StrictBool = True
    wildcard_subscriptions: StrictBool = True
    subscription_identifiers: StrictBool = True
    shared_subscriptions: StrictBool = True
    shared_subscription_strategy: SharedStrategy = "round-robin"
    max_session_expiry: Annotated[
        int, Number(lo=0, hi=SESSION_EXPIRY_NEVER, unit="duration")] = SESSION_EXPIRY_NEVER
    persistent_session_expiry_v311: Annotated[int, Number(lo=0, unit="duration")] | None = None
    connect_timeout: Annotated[float, Number(lo=0.001, unit="duration")] = 10.0
    max_topic_levels: Annotated[int, Number(lo=1, hi=32767)] = 128
    max_topic_length: Annotated[int, Number(lo=1, hi=65535)] = 65535
    max_client_id_length: Annotated[int, Number(lo=23, hi=65535)] = 65535
    max_subscriptions_per_client: Limit = 0
    max_retained_messages: Limit = 0
    allow_zero_length_client_id: StrictBool = True
    response_information_prefix: str | None = None
    server_reference: str | None = None


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class StorageConfig(_Section):
    """Where sessions, queued messages and retained messages are kept."""

    backend: StorageBackend = "rocksdb"
    path: NonEmptyStr = "./data"
    durability: Durability = "os"
    on_corruption: OnCorruption = "fail"


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class AuthConfig(_Section):
    """Who may connect (password file) and what they may do (ACL file)."""

    allow_anonymous: StrictBool = True
    password_file: NonEmptyStr | None = None
    acl_file: NonEmptyStr | None = None
    #: Worker threads hashing PBKDF2 passwords; 0 = one per CPU core.
    password_check_threads: Annotated[int, Number(lo=0, hi=256)] = 0
    #: PBKDF2 checks queued or running at once; more CONNECTs get 0x89 (3.1.1: 0x03).
    max_pending_password_checks: Annotated[int, Number(lo=1)] = 64
    #: Failed logins per address / per username within failed_login_window before
    #: further attempts are refused unhashed for failed_login_backoff; 0 = no limit.
    failed_login_limit: Limit = 10
    failed_login_window: Annotated[float, Number(lo=0.001, unit="duration")] = 60.0
    failed_login_backoff: Annotated[float, Number(lo=0.001, unit="duration")] = 60.0


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class SysTopicsConfig(_Section):
    """``$SYS/broker/...`` statistics topics."""

    enabled: StrictBool = True
    interval: Annotated[float, Number(lo=0.1, unit="duration")] = 10.0


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class MetricsConfig(_Section):
    """Prometheus exposition endpoint (plain HTTP)."""

    enabled: StrictBool = False
    host: str = "127.0.0.1"
    port: Port = 9883


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class AdminConfig(_Section):
    """The admin HTTP API and dashboard (``docs/admin.md``): off by default."""

    enabled: StrictBool = False
    host: str = "127.0.0.1"
    port: Port = 8080
    #: Users of ``auth.password_file`` who may use the API and the dashboard.
    users: tuple[NonEmptyStr, ...] = ()
    #: Hashed API keys (``NAME:$sha512$...`` lines, as ``iotbroker passwd`` writes).
    api_keys_file: NonEmptyStr | None = None
    tls: TlsConfig | None = None
    #: Largest ``limit`` a paged list accepts.
    max_page_size: Annotated[int, Number(lo=1, hi=100_000)] = 1000


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class LoggingConfig(_Section):
    """Log level and format; ``levels`` sets levels per logger (``iotbroker.storage``)."""

    level: LogLevel = "INFO"
    format: LogFormat = "text"
    levels: Annotated[Mapping[str, LogLevel], AfterValidator(_read_only)] = field(
        default_factory=lambda: MappingProxyType({}))


def _topic_table(value: Mapping[int, str]) -> Mapping[int, str]:
    for topic_id, topic in value.items():
        if not 1 <= topic_id <= 0xFFFE:
            raise _fail(f"has topic id {topic_id}: ids are 1-65534")
        if not topic or "+" in topic or "#" in topic:
            raise _fail(f"maps {topic_id} to {topic!r}: a topic name without wildcards")
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class MqttSnConfig(_Section):
    """The MQTT-SN 1.2 gateway of ``mqtt-sn`` listeners (docs/mqtt-sn.md)."""

    gateway_id: Annotated[int, Number(lo=0, hi=255)] = 1
    #: ADVERTISE period (§6.1); 0 = do not advertise.
    advertise_interval: Annotated[float, Number(lo=0, hi=65535, unit="duration")] = 900.0
    #: Predefined topic ids (§3, §6.7), known to the devices in advance.
    predefined_topics: Annotated[Mapping[int, str], AfterValidator(_topic_table)] = field(
        default_factory=lambda: MappingProxyType({}))
    #: Client ids allowed to connect; None = any.
    allowed_clients: tuple[str, ...] | None = None
    #: Bound on MQTT-SN clients (connected, asleep or waiting in the will dialogue).
    max_clients: Annotated[int, Number(lo=1)] = 100000
    #: Datagrams per second accepted from one address; more are dropped (0 = no limit).
    rate_per_address: Annotated[float, Number(lo=0)] = 200.0
    #: Retransmission of the gateway's requests (REGISTER, PUBLISH QoS 1/2): T_retry
    #: and N_retry of §6.13.
    retry_interval: Annotated[float, Number(lo=0.01, unit="duration")] = 10.0
    max_retries: Annotated[int, Number(lo=0, hi=100)] = 3


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class LimitsConfig(_Section):
    """Broker-wide admission limits; 0 means unlimited."""

    max_connections: Limit = 0
    connect_rate: Annotated[float, Number(lo=0)] = 0.0
    publish_rate_per_client: Annotated[float, Number(lo=0)] = 0.0
    drain_timeout: Annotated[float, Number(lo=0, unit="duration")] = 10.0
    park_idle_after: Annotated[float, Number(lo=0, unit="duration")] = 30.0
    park_on_accept: StrictBool = True


BridgeDirection = Literal["out", "in", "both"]
BridgePolicy = Literal["drop-oldest", "drop-new"]
BridgeProtocol = Literal[4, 5]


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class BridgeTopicConfig(_Section):
    """One topic rule of a bridge (mosquitto's ``topic pattern dir qos lprefix rprefix``)."""

    pattern: str = "#"
    direction: BridgeDirection = "out"
    qos: QoSLevel = 0
    local_prefix: str = ""
    remote_prefix: str = ""


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class BridgeOutboxConfig(_Section):
    """Bounds of a bridge's disk-backed outbox (messages waiting for the remote)."""

    max_messages: Annotated[int, Number(lo=1)] = 100_000
    max_bytes: Annotated[int, Number(lo=0, unit="size")] = 64 * 1024 * 1024
    policy: BridgePolicy = "drop-oldest"
    queue_qos0: StrictBool = False


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class BridgeTlsConfig(_Section):
    """TLS towards the remote broker (the client side of a handshake). The keys of
    ``listeners[].tls`` are accepted, and so are ``ca_file``, ``cert_file``, ``key_file``."""

    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = None
    verify: StrictBool = True
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    min_version: TlsVersion = "TLSv1.2"
    ciphers: str | None = None

    @classmethod
    def _fill_in(cls, data: dict[Any, Any]) -> dict[Any, Any]:
        for alias, key in (("ca_file", "cafile"), ("cert_file", "certfile"),
                           ("key_file", "keyfile")):
            if alias in data and key not in data:
                data[key] = data.pop(alias)
        return data


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class BridgeConfig(_Section):
    """One connection to a remote broker (mosquitto's ``connection`` block)."""

    name: NonEmptyStr = "bridge"
    address: tuple[str, ...] = ()
    protocol: BridgeProtocol = 5
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    tls: BridgeTlsConfig | None = None
    clean_start: StrictBool = False
    session_expiry: Annotated[int, Number(lo=0, hi=SESSION_EXPIRY_NEVER, unit="duration")] = 3600
    keepalive: Annotated[int, Number(lo=1, hi=65535, unit="duration")] = 60
    max_inflight: Annotated[int, Number(lo=1, hi=65535)] = 100
    outbox: BridgeOutboxConfig = field(default_factory=BridgeOutboxConfig)
    topics: tuple[BridgeTopicConfig, ...] = ()
    try_private: StrictBool = True
    origin_marker: StrictBool = True
    round_robin: StrictBool = False
    reconnect_delay: Annotated[float, Number(lo=0.01, unit="duration")] = 1.0
    reconnect_delay_max: Annotated[float, Number(lo=0.01, unit="duration")] = 60.0
    connect_timeout: Annotated[float, Number(lo=0.1, unit="duration")] = 10.0

    @classmethod
    def _fill_in(cls, data: dict[Any, Any]) -> dict[Any, Any]:
        if isinstance(data.get("address"), str):  # one address may be written alone
            data["address"] = [data["address"]]
        return data


def split_address(text: str, default_port: int = 1883) -> tuple[str, int] | None:
    """``host:port``, ``host`` or ``[v6]:port`` -> (host, port); None when malformed."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            return None
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        return None  # a bare IPv6 address needs brackets to carry a port
    else:
        host, port_text = text, ""
    if port_text is None or not host:
        return None
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        return None
    return host, int(port_text)


def _filter_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid MQTT topic filter (MQTT 5.0 §4.7.1), or None."""
    if "\0" in pattern:
        return "must not contain NUL"
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole last level [MQTT-4.7.1-1]"
        if "+" in level and level != "+":
            return "'+' must be a whole level [MQTT-4.7.1-2]"
    return None


def _check_bridges(config: BrokerConfig, err: Callable[..., None]) -> None:
    names: dict[str, int] = {}
    for i, bridge in enumerate(config.bridges):
        key = f"bridges[{i}]"
        at: tuple[object, ...] = ("bridges", i)
        if any(c in bridge.name for c in "/+#\0"):
            err(f"{key}.name", bridge.name, "must not contain '/', '+', '#' or NUL (it is a "
                "topic level of $SYS/broker/connection/<name>/state)", *at, "name")
        if bridge.name in names:
            err(f"{key}.name", bridge.name, f"is already the name of bridges[{names[bridge.name]}]",
                *at, "name")
        names.setdefault(bridge.name, i)
        if not bridge.address:
            err(f"{key}.address", [], "is empty: give one or more host:port", *at)
        for j, address in enumerate(bridge.address):
            if split_address(address) is None:
                err(f"{key}.address[{j}]", address, "is not host:port (IPv6: [addr]:port)",
                    *at, "address", j)
        if bridge.client_id is not None and not bridge.client_id:
            err(f"{key}.client_id", "", "must not be empty (use null for <hostname>.<name>)",
                *at, "client_id")
        if bridge.reconnect_delay_max < bridge.reconnect_delay:
            err(f"{key}.reconnect_delay_max", bridge.reconnect_delay_max,
                f"is below reconnect_delay ({bridge.reconnect_delay})", *at,
                "reconnect_delay_max")
        tls = bridge.tls
        if tls is not None and (tls.certfile is None) != (tls.keyfile is None):
            missing = "keyfile" if tls.keyfile is None else "certfile"
            err(f"{key}.tls.{missing}", None, "is missing: a client certificate needs both "
                "certfile and keyfile", *at, "tls")
        if not bridge.topics:
            err(f"{key}.topics", [], "is empty: a bridge needs at least one topic rule", *at)
        for j, rule in enumerate(bridge.topics):
            rkey = f"{key}.topics[{j}]"
            rat = (*at, "topics", j)
            problem = _filter_problem(rule.pattern)
            if problem is not None:
                err(f"{rkey}.pattern", rule.pattern, problem, *rat, "pattern")
            if any((p + rule.pattern).startswith("$share/")
                   for p in (rule.local_prefix, rule.remote_prefix)):
                err(f"{rkey}.pattern", rule.pattern, "must not make a shared subscription "
                    "($share/... with its prefix): a bridge forwards every message",
                    *rat, "pattern")
            if not rule.pattern and not (rule.local_prefix or rule.remote_prefix):
                err(f"{rkey}.pattern", "", "is empty: an empty pattern needs a local_prefix "
                    "or remote_prefix (it then names one topic)", *rat, "pattern")
            for name in ("local_prefix", "remote_prefix"):
                value = getattr(rule, name)
                if any(c in value for c in "+#\0"):
                    err(f"{rkey}.{name}", value, "must not contain wildcards (+, #) or NUL",
                        *rat, name)
def _nats_url(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in NATS_SCHEMES or not rest:
        raise _fail(f"is not a NATS server URL ({', '.join(NATS_SCHEMES)}://host:port)")
    return value


def _subject_prefix(value: str) -> str:
    if not _SUBJECT_PREFIX.fullmatch(value):
        raise _fail("is not a NATS subject prefix (tokens of A-Z a-z 0-9 _ - joined by '.')")
    return value


def _node_name(value: str) -> str:
    if not _NODE_NAME.fullmatch(value):
        raise _fail("is not a node name (1-64 of A-Z a-z 0-9 _ -)")
    return value


_WORKERS = Number(lo=1, hi=256)


def _workers(value: object) -> int | str:
    """``workers``: 1–256 or ``auto``."""
    if value == "auto":
        return "auto"
    try:
        return int(_WORKERS.check(value, integer=True))
    except PydanticCustomError:
        raise _fail("is not an integer in 1–256 or 'auto' (the CPU count)") from None


#: NATS URL schemes nats-py connects with.
NATS_SCHEMES = ("nats", "tls", "ws", "wss")
_SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_NODE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
NatsUrl = Annotated[str, AfterValidator(_nats_url)]


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class NatsTlsConfig(_Section):
    """TLS towards the NATS servers (``tls://`` URLs, or a server that requires it)."""

    cafile: NonEmptyStr | None = None
    certfile: NonEmptyStr | None = None
    keyfile: NonEmptyStr | None = None


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class QosStreamConfig(_Section):
    """The cluster's replicated stream of QoS 1/2 messages (docs/cluster.md)."""

    #: Messages older than this leave the stream (0: no age limit).
    max_age: Annotated[float, Number(lo=0, unit="duration")] = 24 * 3600.0
    #: The stream keeps at most this many bytes, dropping its oldest (0: no limit).
    max_bytes: Annotated[int, Number(lo=0, unit="size")] = 1 << 30
    #: A write again under the same id within this time is stored once (a retry; a
    #: QoS 2 PUBLISH resent after a crash of the node that accepted it).
    duplicate_window: Annotated[float, Number(lo=1, unit="duration")] = 120.0
    #: How long a PUBACK / PUBREC waits for the stream while it is unavailable
    #: (then it goes, the message counted as unreplicated).
    patience: Annotated[float, Number(lo=1, hi=3600, unit="duration")] = 10.0


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class ClusterConfig(_Section):
    """This node's place in a cluster on NATS (docs/cluster.md). Absent: one broker."""

    node_name: Annotated[str, AfterValidator(_node_name)]
    nats: tuple[NatsUrl, ...] = ("nats://127.0.0.1:4222",)
    replicas: Annotated[int, Number(lo=1, hi=5)] = 3
    subject_prefix: Annotated[str, AfterValidator(_subject_prefix)] = "iotb"
    user: NonEmptyStr | None = None
    password: str | None = None
    token: NonEmptyStr | None = None
    credentials_file: NonEmptyStr | None = None
    nats_tls: NatsTlsConfig | None = None
    qos_stream: QosStreamConfig = field(default_factory=QosStreamConfig)


@dataclass(frozen=True, slots=True, config=_SCHEMA)
class BrokerConfig(_Section):
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
    admin: AdminConfig = field(default_factory=AdminConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    mqttsn: MqttSnConfig = field(default_factory=MqttSnConfig)
    loop: LoopKind = "auto"
    bridges: tuple[BridgeConfig, ...] = ()
    #: Broker processes sharing the listeners (SO_REUSEPORT) under one supervisor,
    #: nodes of one fabric (docs/cluster.md, "Workers"); "auto" = CPU count.
    workers: Annotated[int | str, PlainValidator(_workers)] = 1
    cluster: ClusterConfig | None = None
    source: str = field(default="<defaults>", compare=False)


#: Keys of the schema that are not configuration keys (set by the loader).
_NOT_KEYS = frozenset({"source"})


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
    """Read and validate a YAML configuration file; ``None`` gives the shipped defaults.

    ``overrides`` (for command-line flags) is merged into the file's data before
    validation: mappings are merged key by key, anything else (lists too) replaces.
    Raises :class:`ConfigErrors` listing every error, in file order.
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
    errors = _Errors(source)
    prepared = _prepare(root, "", None, os.environ if env is None else env, errors)
    assert isinstance(prepared, Mapping)
    for name in _NOT_KEYS & set(prepared):
        errors.unknown_key((name,), prepared)
        prepared = {k: v for k, v in prepared.items() if k != name}
    try:
        config = _adapter().validate_python(prepared, context=_FROM_DATA)
    except ValidationError as exc:
        for detail in exc.errors(include_url=False):
            errors.from_pydantic(detail, prepared)
        errors.raise_if_any()
        raise AssertionError("unreachable") from None  # pragma: no cover
    errors.raise_if_any()  # interpolation or duplicate keys: reported with the rest
    config = dataclasses.replace(config, source=source)
    config = _check_cross(config, prepared, errors)
    errors.raise_if_any()
    return config


@cache
def _adapter() -> TypeAdapter[BrokerConfig]:
    return TypeAdapter(BrokerConfig)


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
    merged = _Map(base)
    merged.lines = dict(getattr(base, "lines", {}))
    merged.duplicates = list(getattr(base, "duplicates", []))
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
            merged.lines.pop(key, None)  # from the command line, not the file
    return merged


# --------------------------------------------------------------------------------------
# Before validation: ${VAR} interpolation and duplicate keys, on a copy that keeps lines


def _prepare(node: object, key: str, line: int | None, env: Mapping[str, str],
             errors: _Errors) -> object:
    if isinstance(node, Mapping):
        out = _Map()
        out.lines = dict(getattr(node, "lines", {}))
        out.duplicates = []
        for dup, dup_line, first_line in getattr(node, "duplicates", ()):
            errors.add(_join(key, str(dup)), dup,
                       f"is a duplicate key (first at line {first_line})", dup_line)
        for k, v in node.items():
            out[k] = _prepare(v, _join(key, str(k)), out.lines.get(k, line), env, errors)
        return out
    if isinstance(node, list):
        item_lines: list[int] = list(getattr(node, "lines", []))
        seq = _Seq(
            _prepare(item, f"{key}[{i}]", item_lines[i] if i < len(item_lines) else line,
                     env, errors)
            for i, item in enumerate(node))
        seq.lines = item_lines
        return seq
    if isinstance(node, str) and "$" in node:
        try:
            text = _interpolate(node, env)
        except _Fault as fault:
            errors.add(key, node, fault.expected, line, skip_others=True)
            return node
        return _Env(text) if "${" in node else text
    return node


class _Fault(Exception):
    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _interpolate(text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        inner = match.group(1)
        if inner is None:
            raise _Fault("has an unterminated ${ (write $${ for a literal)")
        name, sep, default = inner.partition(":-")
        if not _ENV_NAME.match(name):
            raise _Fault(f"has a bad interpolation ${{{inner}}} "
                         "(expected ${NAME} or ${NAME:-default})")
        value = env.get(name)
        if value is None or (sep and value == ""):
            if sep:
                return default
            raise _Fault(f"uses ${{{name}}}, which is not set in the environment and has no "
                         f"default (write ${{{name}:-default}})")
        return value

    return _INTERP.sub(replace, text)


def _coerce_env(hint: Any, value: _Env) -> object:
    """``${...}`` written for a boolean, null or an integer choice (numbers: :class:`Number`)."""
    tp, optional = _strip(hint)
    text = value.strip()
    if optional and text in ("", "null", "~"):
        return None
    if tp is bool and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if typing.get_origin(tp) is Literal and all(isinstance(a, int) for a in typing.get_args(tp)):
        try:
            return int(text)
        except ValueError:
            return value
    return value


# --------------------------------------------------------------------------------------
# The schema as data: the type at a key path (for messages and did-you-mean)


_HINTS: dict[type, Mapping[str, Any]] = {}


def _hints(cls: type) -> Mapping[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = MappingProxyType(typing.get_type_hints(cls, include_extras=True))
    return _HINTS[cls]


def _strip(tp: Any) -> tuple[Any, bool]:
    """The type under ``Annotated[...]`` and ``X | None``, and whether None is allowed."""
    optional = False
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (types.UnionType, typing.Union):
            inner = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = optional or len(inner) < len(typing.get_args(tp))
            if len(inner) != 1:
                return tp, optional
            tp = inner[0]
        else:
            return tp, optional


def _type_at(root: type, loc: Sequence[int | str]) -> Any:
    tp: Any = root
    for step in loc:
        tp, _ = _strip(tp)
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp) and isinstance(step, str):
            tp = _hints(tp).get(step)  # type: ignore[arg-type]
        elif origin is tuple:
            tp = typing.get_args(tp)[0]
        elif origin in (Mapping, dict):
            tp = typing.get_args(tp)[1]
        else:
            return None
    return _strip(tp)[0]


def _keys_of(tp: Any) -> list[str]:
    if not dataclasses.is_dataclass(tp):
        return []
    return [f.name for f in dataclasses.fields(tp) if f.name not in _NOT_KEYS]


# --------------------------------------------------------------------------------------
# Errors: every one, in file order


class _Errors:
    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[tuple[int | None, ConfigError]] = []
        self.skip: set[str] = set()  # keys already reported (a bad ${...})

    def add(self, key: str, value: object, expected: str, line: int | None, *,
            skip_others: bool = False) -> None:
        if key in self.skip:
            return
        if skip_others:
            self.skip.add(key)
        if line is not None:
            expected = f"{expected} (at {self.source}:{line})"
        self.found.append((line, ConfigError(key, value, expected)))

    def raise_if_any(self) -> None:
        if self.found:
            order = sorted(range(len(self.found)), key=lambda i: (
                self.found[i][0] is None, self.found[i][0] or 0, i))
            raise ConfigErrors([self.found[i][1] for i in order])

    def unknown_key(self, loc: Sequence[int | str], root: Mapping[Any, Any]) -> None:
        names = _keys_of(_type_at(BrokerConfig, loc[:-1]))
        name = loc[-1]
        hint = difflib.get_close_matches(str(name), names, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        self.add(_key(loc), name,
                 f"is not a known key{suggestion} (known: {', '.join(names)})",
                 _line_of(root, *loc))

    def from_pydantic(self, detail: ErrorDetails, root: Mapping[Any, Any]) -> None:
        loc, kind, value = detail["loc"], detail["type"], detail.get("input")
        if kind in ("unexpected_keyword_argument", "extra_forbidden", "invalid_key"):
            self.unknown_key(loc, root)
            return
        if kind in ("missing", "missing_keyword_argument"):
            self.add(_key(loc), None, "is missing; it is required", _line_of(root, *loc[:-1]))
            return
        tp = _type_at(BrokerConfig, loc)
        if kind == "iotbroker_config":
            expected = str((detail.get("ctx") or {}).get("expected", detail["msg"]))
        elif kind.startswith("dataclass"):
            expected = f"is not a mapping (keys: {', '.join(_keys_of(tp))})"
        elif kind in ("tuple_type", "list_type", "iterable_type"):
            expected = "is not a list"
        elif kind in ("dict_type", "mapping_type"):
            expected = "is not a mapping"
        elif kind in ("bool_type", "bool_parsing"):
            expected = "is not a boolean (true or false)"
        elif kind in ("string_type", "string_unicode"):
            expected = "is not a string"
        elif kind == "literal_error" and typing.get_origin(tp) is Literal:
            expected = f"is not one of: {', '.join(str(a) for a in typing.get_args(tp))}"
        else:  # a type of error this table does not know yet: pydantic's own words
            expected = f"is not valid: {detail['msg']}"
        self.add(_key(loc), value, expected, _line_of(root, *loc))


def _key(loc: Sequence[int | str]) -> str:
    key = ""
    for step in loc:
        key = f"{key}[{step}]" if isinstance(step, int) else _join(key, str(step))
    return key or "<root>"


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


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


# --------------------------------------------------------------------------------------
# Values with units


_INTERP = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?\s*\Z")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
                   "w": 604800.0}
_SIZE = re.compile(r"\s*(\d+)\s*([KMG]i?B|[kKMG]|B)?\s*\Z")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
               "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
               "k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _parse_quantity(text: str, unit: str | None) -> float | None:
    if unit == "duration":
        m = _DURATION.match(text)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    elif unit == "size":
        m = _SIZE.match(text)
        if m and m.group(2) in _SIZE_UNITS:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    else:
        try:
            return float(text.strip()) if "." in text else int(text.strip())
        except ValueError:
            return None
    return None


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


# --------------------------------------------------------------------------------------
# Rules across keys (run once every single value is valid; all errors are collected)


def _check_cross(config: BrokerConfig, root: Mapping[Any, Any], errors: _Errors) -> BrokerConfig:
    def err(key: str, value: object, expected: str, *path: object) -> None:
        errors.add(key, value, expected, _line_of(root, *path))

    if not config.listeners:
        err("listeners", [], "is empty: at least one listener is needed", "listeners")
    names: dict[str, int] = {}
    raw_listeners = root.get("listeners", [])
    if not isinstance(raw_listeners, list):
        raw_listeners = []
    listeners = list(config.listeners)
    for i, lst in enumerate(config.listeners):
        key = f"listeners[{i}]"
        at: tuple[object, ...] = ("listeners", i)
        secure = lst.type in ("tls", "wss")
        if secure and lst.tls is None:
            err(f"{key}.tls", None,
                f"is missing: a {lst.type} listener needs tls.certfile and tls.keyfile", *at)
        elif secure and lst.tls is not None:
            for req in ("certfile", "keyfile"):
                if getattr(lst.tls, req) is None:
                    err(f"{key}.tls.{req}", None, f"is missing: a {lst.type} listener needs it",
                        *at, "tls")
            if lst.tls.require_client_cert and lst.tls.cafile is None:
                err(f"{key}.tls.cafile", None, "is missing: require_client_cert needs the CA "
                    "that signs client certificates", *at, "tls")
            if lst.tls.use_identity_as_username and not lst.tls.require_client_cert:
                err(f"{key}.tls.use_identity_as_username", True,
                    "needs tls.require_client_cert: true", *at, "tls", "use_identity_as_username")
        elif lst.tls is not None:
            err(f"{key}.tls", "...", f"only applies to tls and wss listeners, not {lst.type}",
                *at, "tls")
        if lst.mqttsn_username is not None and lst.type != "mqtt-sn":
            err(f"{key}.mqttsn_username", lst.mqttsn_username,
                f"only applies to mqtt-sn listeners, not {lst.type}", *at, "mqttsn_username")
        if lst.type in ("ws", "wss") and not lst.path.startswith("/"):
            err(f"{key}.path", lst.path, "is not a URL path (must start with /)", *at, "path")
        if not lst.host.strip():
            err(f"{key}.host", lst.host, "must not be empty", *at, "host")
        for j in range(i):
            other = config.listeners[j]
            same_transport = (lst.type == "mqtt-sn") == (other.type == "mqtt-sn")  # UDP / TCP
            if (lst.port and other.port == lst.port and same_transport
                    and _hosts_overlap(other.host, lst.host)):
                err(f"{key}.port", lst.port, f"is already used by listeners[{j}] "
                    f"({other.name!r} on {other.host}:{other.port})", *at, "port")
                break
        raw = raw_listeners[i] if i < len(raw_listeners) else {}
        name = lst.name
        if name in names and isinstance(raw, Mapping) and "name" not in raw:
            # A generated name (two port-0 listeners on one host): number it.
            name = f"{name}#{i}"
            listeners[i] = dataclasses.replace(lst, name=name)
        if name in names:
            err(f"{key}.name", name, f"is already the name of listeners[{names[name]}]",
                *at, "name")
        names.setdefault(name, i)
    config = dataclasses.replace(config, listeners=tuple(listeners))
    if config.metrics.enabled:
        for j, other in enumerate(config.listeners):
            if other.port and other.port == config.metrics.port and _hosts_overlap(
                    other.host, config.metrics.host):
                err("metrics.port", config.metrics.port,
                    f"is already used by listeners[{j}] ({other.name!r})", "metrics", "port")
                break

    _check_admin(config, err)

    auth = config.auth
    if not auth.allow_anonymous and auth.password_file is None and not any(
        (lst.tls is not None and lst.tls.use_identity_as_username)
        or lst.mqttsn_username is not None  # MQTT-SN clients get the listener's username
        for lst in config.listeners
    ):
        err("auth.allow_anonymous", False, "leaves no way to connect: set auth.password_file, "
            "a listener's tls.use_identity_as_username or an mqtt-sn listener's "
            "mqttsn_username", "auth", "allow_anonymous")

    prefix = config.mqtt.response_information_prefix
    if prefix is not None and not prefix:
        err("mqtt.response_information_prefix", "", "must not be empty (use null)",
            "mqtt", "response_information_prefix")
    elif prefix is not None and any(c in prefix for c in "+#\0"):
        err("mqtt.response_information_prefix", prefix,
            "must not contain wildcards (+, #) or NUL", "mqtt", "response_information_prefix")
    _check_bridges(config, err)
    cluster = config.cluster
    if cluster is not None:
        qs = cluster.qos_stream
        if qs.max_age and qs.duplicate_window > qs.max_age:
            err("cluster.qos_stream.duplicate_window", qs.duplicate_window,
                f"is longer than cluster.qos_stream.max_age ({qs.max_age:g}s)",
                "cluster", "qos_stream", "duplicate_window")
        if cluster.token is not None and cluster.user is not None:
            # nats-py would send the user and password and drop the token silently.
            err("cluster.user", cluster.user, "is given with cluster.token: NATS "
                "authenticates a client with one of them (a token, or a user and "
                "password); remove one", "cluster", "user")
    return config


def _check_admin(config: BrokerConfig, err: Callable[..., None]) -> None:
    """The admin API never listens unauthenticated beyond loopback (docs/admin.md)."""
    admin = config.admin
    if not admin.enabled:
        return
    if admin.users and config.auth.password_file is None:
        err("admin.users", list(admin.users), "needs auth.password_file (the admins' "
            "passwords are read from it)", "admin", "users")
    if not admin.users and admin.api_keys_file is None and not _is_loopback(admin.host):
        err("admin.host", admin.host, "is not a loopback address: set admin.users or "
            "admin.api_keys_file (the admin API is never open without credentials "
            "on a network address)", "admin", "host")
    if not admin.host.strip():
        err("admin.host", admin.host, "must not be empty", "admin", "host")
    tls = admin.tls
    if tls is not None:
        for req in ("certfile", "keyfile"):
            if getattr(tls, req) is None:
                err(f"admin.tls.{req}", None, "is missing: TLS needs it", "admin", "tls")
    for j, other in enumerate(config.listeners):
        if other.port and other.port == admin.port and _hosts_overlap(other.host, admin.host):
            err("admin.port", admin.port, f"is already used by listeners[{j}] "
                f"({other.name!r})", "admin", "port")
            break
    if (config.metrics.enabled and admin.port and config.metrics.port == admin.port
            and _hosts_overlap(config.metrics.host, admin.host)):
        err("admin.port", admin.port, "is already used by metrics.port", "admin", "port")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
