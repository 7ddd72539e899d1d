"""Scenario files (YAML) -> frozen dataclasses validated by pydantic, with errors naming the key.

A scenario says *who* connects (device groups with their MQTT options and behaviour),
*who counts* (monitor subscribers), *when* (stages) and *what goes wrong* (faults).
The full schema is documented in ``docs/simulator.md``; the dataclasses below are the
reference: a field's annotation says how its value is read (``Annotated[float,
_read(parse_duration)]``), unknown keys are errors, and every error names the key path,
what was wrong and, in a file, the line (``groups[1].interval: expected a duration like
'5s' or '250ms', got 'often' (at fleet.yaml:12)``). Every error of a file is reported
(:class:`ScenarioErrors`), in file order; rules across keys (a gateway needs children, a
stage names existing groups) are checked once every single value is valid. The broker's
configuration (``iotbroker/config.py``) is read the same way with the same library;
``iotsim`` does not import it (it may reuse ``iotbroker.codec`` only).

Values with units:

* durations: ``30s``, ``250ms``, ``2m``, ``1h`` or a number of seconds;
* rates: ``100/s``, ``30/m``, ``1/5s`` (one every 5 s) or a number per second.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import string
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

BEHAVIOURS = ("telemetry", "gateway", "actuator", "dashboard", "idle")
#: What a group speaks: MQTT over TCP/TLS, or MQTT-SN 1.2 over UDP (the broker's gateway).
PROTOCOLS = ("mqtt", "mqtt-sn")
STAGES = ("ramp_up", "steady", "reconnect_storm", "ramp_down")
FAULTS = ("disconnect", "abrupt_close", "stop_reading")
PAYLOAD_KINDS = ("fixed", "random", "json")
FIELD_KINDS = ("random", "choice", "const", "counter", "timestamp")
#: Placeholders a topic or client-id template may use (``{child}`` only for gateways).
PLACEHOLDERS = frozenset({"id", "site", "group", "run", "child"})
#: Bytes of the measurement header every simulated payload starts with.
HEADER_SIZE = 24


class ScenarioError(ValueError):
    """A scenario value is wrong; ``key`` is its path, e.g. ``groups[0].qos``."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


class ScenarioErrors(ScenarioError):
    """Every error of one scenario, in file order; ``key`` and ``message`` are the first's."""

    def __init__(self, errors: Sequence[ScenarioError]) -> None:
        super().__init__(errors[0].key, errors[0].message)
        self.errors = tuple(errors)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


# ----------------------------------------------------------------------------- value parsers

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h)?\s*$")
_RATE = re.compile(
    r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)?\s*(ms|s|sec|m|min|h)\s*$"
)
_UNIT = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(value: object, key: str = "duration") -> float:
    """``'30s'``, ``'250ms'``, ``'2m'``, ``'1h'`` or a number (seconds) -> seconds."""
    if isinstance(value, bool):
        raise ScenarioError(key, f"expected a duration like '5s' or '250ms', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ScenarioError(key, f"expected a duration >= 0, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2) or "s"]
    raise ScenarioError(key, f"expected a duration like '5s' or '250ms', got {value!r}")


def parse_rate(value: object, key: str = "rate") -> float:
    """``'100/s'``, ``'30/m'``, ``'1/5s'`` or a number (per second) -> events per second."""
    rate: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        rate = float(value)
    elif isinstance(value, str):
        m = _RATE.match(value)
        if m:
            per = float(m.group(2)) if m.group(2) else 1.0
            rate = float(m.group(1)) / (per * _UNIT[m.group(3)]) if per > 0 else None
        else:
            try:
                rate = float(value)
            except ValueError:
                rate = None
    if rate is None or rate <= 0:
        raise ScenarioError(key, f"expected a rate > 0 like '100/s' or '30/m', got {value!r}")
    return rate


def check_template(template: str, key: str, allowed: frozenset[str] = PLACEHOLDERS) -> str:
    """Check the ``{placeholders}`` of a topic or client-id template."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ScenarioError(key, f"bad template {template!r}: {exc}") from None
    for _lit, name, _spec, _conv in parts:
        if name is None:
            continue
        if name not in allowed:
            raise ScenarioError(
                key,
                f"unknown placeholder {{{name}}} in {template!r} "
                f"(known: {', '.join(sorted('{' + a + '}' for a in allowed))})",
            )
    return template


# ----------------------------------------------------------------------------- readers


def _int(lo: int, hi: int | None = None) -> Callable[[object, str], int]:
    def conv(value: object, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(key, f"expected an integer, got {value!r}")
        if value < lo or (hi is not None and value > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise ScenarioError(key, f"expected an integer {rng}, got {value}")
        return value

    return conv


def _float(lo: float, hi: float | None = None) -> Callable[[object, str], float]:
    def conv(value: object, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(key, f"expected a number, got {value!r}")
        if value < lo or (hi is not None and value > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise ScenarioError(key, f"expected a number {rng}, got {value}")
        return float(value)

    return conv


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(key, f"expected true or false, got {value!r}")
    return value


def _str(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ScenarioError(key, f"expected a non-empty string, got {value!r}")
    return value


def _choice(options: Sequence[str]) -> Callable[[object, str], str]:
    def conv(value: object, key: str) -> str:
        if value not in options:
            raise ScenarioError(key, f"expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    return conv


def _version(value: object, key: str) -> int:
    if value in (4, "4", "3.1.1", 3.11):
        return 4
    if value in (5, "5", "5.0", 5.0):
        return 5
    raise ScenarioError(key, f"expected an MQTT version 3.1.1 (4) or 5, got {value!r}")


def _qos(value: object, key: str) -> int:
    return _int(0, 2)(value, key)


def _str_list(value: object, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ScenarioError(key, f"expected a list of strings, got {value!r}")
    return tuple(value)


def _template(value: object, key: str) -> str:
    return check_template(_str(value, key), key)


def _template_no_child(value: object, key: str) -> str:
    return check_template(_str(value, key), key, PLACEHOLDERS - {"child"})


def _filters(value: object, key: str) -> tuple[str, ...]:
    filters = _str_list(value, key)
    for i, f in enumerate(filters):
        check_template(f, f"{key}[{i}]", PLACEHOLDERS - {"id", "child", "site"})
        check_filter(f, f"{key}[{i}]")
    return filters


def check_filter(topic_filter: str, key: str) -> None:
    """MQTT topic filter syntax (§4.7.1): ``#`` last and alone, ``+`` alone in its level."""
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ScenarioError(key, f"'#' must be the last level on its own in {topic_filter!r}")
        if "+" in level and level != "+":
            raise ScenarioError(key, f"'+' must fill a whole level in {topic_filter!r}")


def _qos_mix(value: object, key: str) -> tuple[float, float, float]:
    if isinstance(value, int) and not isinstance(value, bool):
        q = _qos(value, key)
        return tuple(1.0 if i == q else 0.0 for i in range(3))  # type: ignore[return-value]
    if isinstance(value, Mapping):
        weights = [0.0, 0.0, 0.0]
        for k, w in value.items():
            sub = f"{key}.{k}"
            try:
                q = int(k)
            except (TypeError, ValueError):
                raise ScenarioError(sub, "QoS mix keys are 0, 1 or 2") from None
            _qos(q, sub)
            weights[q] = _float(0.0)(w, sub)
        total = sum(weights)
        if total <= 0:
            raise ScenarioError(key, "the QoS mix weights add up to 0")
        return (weights[0] / total, weights[1] / total, weights[2] / total)
    raise ScenarioError(key, f"expected a QoS (0, 1, 2) or a mix like {{0: 0.2, 1: 0.8}}, "
                             f"got {value!r}")


def _positive_duration(value: object, key: str) -> float:
    d = parse_duration(value, key)
    if d <= 0:
        raise ScenarioError(key, f"expected a duration > 0, got {value!r}")
    return d


def _jitter(value: object, key: str) -> float:
    """Jitter as a fraction of the interval (0..1), e.g. ``0.1`` or ``'10%'``."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            value = float(value.strip()[:-1]) / 100
        except ValueError:
            raise ScenarioError(key, f"expected a fraction like 0.1 or '10%', got {value!r}")\
                from None
    return _float(0.0, 1.0)(value, key)


def _sources(value: object, key: str) -> tuple[str, ...]:
    """A list of loopback addresses, or a count N meaning 127.0.0.1 .. 127.0.0.N."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = _int(1, 254)(value, key)
        return tuple(f"127.0.0.{i}" for i in range(1, n + 1))
    addrs = _str_list(value, key)
    for i, a in enumerate(addrs):
        if not a.startswith("127."):
            raise ScenarioError(f"{key}[{i}]", f"only loopback (127.0.0.0/8) addresses, got {a!r}")
    return addrs


def _text(value: object, key: str) -> str:
    return str(value)


def _seconds(value: object, key: str) -> int:
    return int(parse_duration(value, key))


def _keepalive(value: object, key: str) -> int:
    seconds = _seconds(value, key)
    if seconds > 65535:
        raise ScenarioError(key, f"at most 65535 s, got {seconds}")
    return seconds


def _groups(value: object, key: str) -> object:
    if not isinstance(value, list | tuple) or not value:
        raise ScenarioError(key, "expected a non-empty list of device groups")
    return value


def _list_of(what: str) -> Callable[[object, str], object]:
    def conv(value: object, key: str) -> object:
        if not isinstance(value, list | tuple):
            raise ScenarioError(key, f"expected a list of {what}")
        return value

    return conv


def _tls(value: object, key: str) -> object:
    return {"enabled": value} if isinstance(value, bool) else value


def _fields(value: object, key: str) -> tuple[FieldSpec, ...]:
    if not isinstance(value, Mapping):
        raise ScenarioError(key, f"expected a mapping, got {type(value).__name__}")
    return tuple(_field(str(name), v, f"{key}.{name}") for name, v in value.items())


def _field(name: str, value: object, key: str) -> FieldSpec:
    if value in ("counter", "timestamp"):
        return FieldSpec(name=name, kind=str(value))
    if not isinstance(value, Mapping):
        return FieldSpec(name=name, kind="const", value=value)
    found = [k for k in ("random", "choice", "const") if k in value]
    if len(found) != 1:
        raise ScenarioError(key, "expected 'counter', 'timestamp', a constant, or a mapping "
                                 "with one of random: [low, high], choice: [...], const: value")
    kind = found[0]
    known = {kind, "decimals"} if kind == "random" else {kind}
    for extra in value:
        if extra not in known:
            raise ScenarioError(f"{key}.{extra}",
                                f"unknown key (known keys: {', '.join(sorted(known))})")
    if kind == "random":
        bounds = value["random"]
        if (not isinstance(bounds, list) or len(bounds) != 2
                or not all(isinstance(b, int | float) and not isinstance(b, bool)
                           for b in bounds) or bounds[0] > bounds[1]):
            raise ScenarioError(f"{key}.random", f"expected [low, high], got {bounds!r}")
        decimals = _int(0, 12)(value["decimals"], f"{key}.decimals") \
            if value.get("decimals") is not None else 2
        return FieldSpec(name=name, kind=kind, low=float(bounds[0]), high=float(bounds[1]),
                         integer=all(isinstance(b, int) for b in bounds), decimals=decimals)
    if kind == "choice":
        options = value["choice"]
        if not isinstance(options, list) or not options:
            raise ScenarioError(f"{key}.choice", f"expected a non-empty list, got {options!r}")
        return FieldSpec(name=name, kind=kind, choices=tuple(options))
    return FieldSpec(name=name, kind=kind, value=value["const"])


# ----------------------------------------------------------------------------- value types

_CONTEXT = "iotsim.scenario"  # validation context key: the document's source
_SUB = "@"  # the key a reader is given; what it appends (``@[2]``, ``@.x``) is kept


def _fail(exc: ScenarioError) -> PydanticCustomError:
    sub = exc.key[len(_SUB):] if exc.key.startswith(_SUB) else ""
    return PydanticCustomError("iotsim", "{message}", {"message": exc.message, "sub": sub})


def _read(conv: Callable[[object, str], Any]) -> PlainValidator:
    """A key read by ``conv(value, key)``, which returns the value or raises ScenarioError."""

    def validate(value: object, info: ValidationInfo) -> Any:
        if not _reading(info):
            return value  # built by code (replace, presets): typed values, checked by mypy
        try:
            return conv(value, _SUB)
        except ScenarioError as exc:
            raise _fail(exc) from None

    return PlainValidator(validate)


def _before(conv: Callable[[object, str], Any]) -> BeforeValidator:
    """Like :func:`_read`, then pydantic checks the result against the annotation."""

    def validate(value: object, info: ValidationInfo) -> Any:
        if not _reading(info):
            return value
        try:
            return conv(value, _SUB)
        except ScenarioError as exc:
            raise _fail(exc) from None

    return BeforeValidator(validate)


def _reading(info: ValidationInfo) -> bool:
    """Whether the value comes from a scenario document (not from code)."""
    return isinstance(info.context, dict) and _CONTEXT in info.context


Name = Annotated[str, _read(_str)]
Text = Annotated[str, _read(_text)]
Flag = Annotated[bool, _read(_bool)]
QoS = Annotated[int, _read(_qos)]
Version = Annotated[int, _read(_version)]
Duration = Annotated[float, _read(parse_duration)]
PositiveDuration = Annotated[float, _read(_positive_duration)]
Seconds = Annotated[int, _read(_seconds)]
Rate = Annotated[float, _read(parse_rate)]
Fraction = Annotated[float, _read(_float(0.0, 1.0))]
Template = Annotated[str, _read(_template_no_child)]
Filters = Annotated[tuple[str, ...], _read(_filters)]
GroupNames = Annotated[tuple[str, ...], _read(_str_list)]

#: Unknown keys are errors; reported with a did-you-mean.
_SCHEMA = ConfigDict(extra="forbid")


@dataclass(frozen=True, config=_SCHEMA)
class _Spec:
    """Base of every section: ``key: null`` means "the default"; YAML names -> fields."""

    #: YAML key -> field name, where they differ.
    _YAML_KEYS: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _from_data(cls, data: Any, info: ValidationInfo) -> Any:
        if not _reading(info) or not isinstance(data, Mapping):
            return data  # built by code: plain keyword arguments
        for yaml_key, name in cls._YAML_KEYS.items():
            if name in data:  # the field's Python name is not a YAML key
                raise _fail(ScenarioError(f"{_SUB}.{name}", f"unknown key (write {yaml_key})"))
        out = {cls._YAML_KEYS.get(k, k) if isinstance(k, str) else k: v
               for k, v in data.items() if v is not None}
        return cls._fill_in(out, str(info.context[_CONTEXT]))  # type: ignore[index]

    @classmethod
    def _fill_in(cls, data: dict[Any, Any], source: str) -> dict[Any, Any]:
        """Defaults that depend on other keys (only when read from data)."""
        return data


# ----------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, config=_SCHEMA)
class FieldSpec(_Spec):
    """One generated field of a JSON payload."""

    name: str
    kind: str  # random | choice | const | counter | timestamp
    low: float = 0.0
    high: float = 1.0
    integer: bool = False
    decimals: int = 2
    choices: tuple[Any, ...] = ()
    value: Any = None


@dataclass(frozen=True, config=_SCHEMA)
class PayloadSpec(_Spec):
    """How a payload is built: ``fixed`` (zeros), ``random`` bytes or ``json`` fields.

    ``size`` is the total payload size for ``fixed`` and ``random`` (at least the
    24-byte measurement header).
    """

    kind: Annotated[str, _read(_choice(PAYLOAD_KINDS))] = "fixed"
    size: Annotated[int, _read(_int(HEADER_SIZE, 256 * 1024 * 1024))] = 64
    fields: Annotated[tuple[FieldSpec, ...], _read(_fields)] = ()


@dataclass(frozen=True, config=_SCHEMA)
class WillSpec(_Spec):
    """The will message of a device (published by the broker on an abrupt close)."""

    topic: Template
    payload: Text = "offline"
    qos: QoS = 1
    retain: Flag = False
    delay: Seconds = 0


@dataclass(frozen=True, config=_SCHEMA)
class RequestSpec(_Spec):
    """Dashboards sending MQTT 5 requests to a group of actuators."""

    target: Name
    interval: PositiveDuration = 1.0
    qos: QoS = 1
    timeout: PositiveDuration = 5.0


@dataclass(frozen=True, config=_SCHEMA)
class GroupSpec(_Spec):
    """A group of identical simulated devices."""

    _YAML_KEYS: ClassVar[Mapping[str, str]] = {"qos": "qos_mix"}

    name: Name
    count: Annotated[int, _read(_int(1, 1_000_000))]
    behaviour: Annotated[str, _read(_choice(BEHAVIOURS))] = "telemetry"
    version: Version = 4
    client_id: Template = "{run}-{group}-{id}"
    #: Gateways may also use ``{child}`` (checked with the rules across keys).
    topic: Annotated[str, _read(_template)] = "iotsim/{run}/{group}/{id}"
    interval: PositiveDuration = 1.0
    jitter: Annotated[float, _read(_jitter)] = 0.1
    qos_mix: Annotated[tuple[float, float, float], _read(_qos_mix)] = (0.0, 1.0, 0.0)
    retain: Flag = False
    keepalive: Annotated[int, _read(_keepalive)] = 60
    clean_start: Flag = True
    session_expiry: Seconds = 0
    payload: PayloadSpec = field(default_factory=PayloadSpec)
    will: WillSpec | None = None
    children: Annotated[int, _read(_int(1, 100_000))] = 0
    command_topic: Template = "iotsim/{run}/{group}/{id}/cmd"
    subscribe: Filters = ()
    subscribe_qos: QoS = 1
    requests: RequestSpec | None = None
    max_inflight: Annotated[int, _read(_int(1, 65535))] = 20
    sites: Annotated[int, _read(_int(1))] = 1
    username: Name | None = None
    password: Text | None = None
    #: ``mqtt-sn``: the devices speak MQTT-SN 1.2 over UDP to ``mqttsn_port``.
    protocol: Annotated[str, _read(_choice(PROTOCOLS))] = "mqtt"
    #: ``mqtt-sn`` only: QoS 0 messages go as QoS -1 (§6.8).
    qos_minus_one: Flag = False
    #: ``mqtt-sn`` only: sleep between ticks (DISCONNECT with this duration, woken by
    #: PINGREQ at each tick, §6.14); 0 = stay awake.
    sleep: Seconds = 0

    @classmethod
    def _fill_in(cls, data: dict[Any, Any], source: str) -> dict[Any, Any]:
        if data.get("behaviour") == "gateway":
            data.setdefault("topic", "iotsim/{run}/{group}/{id}/{child}")
        return data

    @property
    def publishes(self) -> bool:
        """Whether this group sends accounted telemetry."""
        return self.behaviour in ("telemetry", "gateway")

    @property
    def sources_per_device(self) -> int:
        """Accounting sources per device: one per gateway child, else one."""
        return max(1, self.children) if self.behaviour == "gateway" else 1


@dataclass(frozen=True, config=_SCHEMA)
class MonitorSpec(_Spec):
    """Accounting subscribers. Empty ``subscribe``: filters derived from the topics."""

    count: Annotated[int, _read(_int(0, 1000))] = 1
    subscribe: Filters = ()
    qos: QoS = 2
    version: Version = 5
    username: Name | None = None
    password: Text | None = None


@dataclass(frozen=True, config=_SCHEMA)
class StageSpec(_Spec):
    """One stage of the run's timeline."""

    _YAML_KEYS: ClassVar[Mapping[str, str]] = {"stage": "kind"}

    kind: Annotated[str, _read(_choice(STAGES))]
    rate: Rate | None = None
    duration: Duration | None = None
    fraction: Fraction = 1.0
    abrupt: Flag = False
    groups: GroupNames = ()


@dataclass(frozen=True, config=_SCHEMA)
class FaultSpec(_Spec):
    """Injected faults: ``rate`` events/s (Poisson) or ``count`` events spread evenly."""

    kind: Annotated[str, _read(_choice(FAULTS))]
    groups: GroupNames = ()
    rate: Rate | None = None
    count: Annotated[int, _read(_int(1))] | None = None
    start: Duration = 0.0
    end: Duration | None = None
    downtime: Duration = 0.5
    duration: PositiveDuration = 2.0


@dataclass(frozen=True, config=_SCHEMA)
class TlsSpec(_Spec):
    """TLS towards the broker (``tls: true``, or a mapping: then ``enabled`` is true)."""

    enabled: Flag = False
    ca_file: Name | None = None
    cert_file: Name | None = None
    key_file: Name | None = None
    insecure: Flag = False
    server_hostname: Name | None = None

    @classmethod
    def _fill_in(cls, data: dict[Any, Any], source: str) -> dict[Any, Any]:
        data.setdefault("enabled", True)
        return data


@dataclass(frozen=True, config=_SCHEMA)
class Scenario(_Spec):
    """A whole scenario, validated."""

    name: Name
    groups: Annotated[tuple[GroupSpec, ...], _before(_groups)]
    description: Text = ""
    duration: PositiveDuration = 30.0
    seed: Annotated[int, _read(_int(0))] | None = None
    connect_rate: Rate = 1000.0
    connect_timeout: PositiveDuration = 10.0
    ack_timeout: PositiveDuration = 5.0
    drain_timeout: PositiveDuration = 10.0
    source_addresses: Annotated[tuple[str, ...], _read(_sources)] = ("127.0.0.1",)
    #: UDP port of the broker's MQTT-SN gateway, for ``protocol: mqtt-sn`` groups.
    mqttsn_port: Annotated[int, _read(_int(1, 65535))] = 1884
    tls: Annotated[TlsSpec, _before(_tls)] = field(default_factory=TlsSpec)
    monitors: MonitorSpec = field(default_factory=MonitorSpec)
    stages: Annotated[tuple[StageSpec, ...], _before(_list_of("stages"))] = ()
    faults: Annotated[tuple[FaultSpec, ...], _before(_list_of("faults"))] = ()

    @classmethod
    def _fill_in(cls, data: dict[Any, Any], source: str) -> dict[Any, Any]:
        defaults = data.pop("defaults", {})
        if not isinstance(defaults, Mapping):
            raise _fail(ScenarioError(_SUB + ".defaults", "expected a mapping of group keys"))
        groups = data.setdefault("groups", [])
        if defaults and isinstance(groups, list):  # a group's own keys win
            data["groups"] = [{**defaults, **g} if isinstance(g, Mapping) else g
                              for g in groups]
        data.setdefault("name", Path(source).stem)
        return data

    def group(self, name: str) -> GroupSpec:
        """The group called ``name``."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def device_count(self) -> int:
        """Simulated devices (connections), monitors not included."""
        return sum(g.count for g in self.groups)

    def with_overrides(self, **changes: Any) -> Scenario:
        """A copy with top-level fields changed (CLI flags such as ``--duration``)."""
        return replace(self, **changes)


# ----------------------------------------------------------------------------- reading


def parse_scenario(data: object, source: str = "scenario") -> Scenario:
    """Validate a loaded YAML document; raises :class:`ScenarioErrors` naming every key."""
    if not isinstance(data, Mapping):
        raise ScenarioError("", f"{source}: expected a mapping at the top level")
    errors = _Errors(source)
    for key, dup, line, first in _duplicates(data, ""):
        errors.add(key, f"duplicate key {dup!r} (first at line {first})", line)
    try:
        scenario = TypeAdapter(Scenario).validate_python(data, context={_CONTEXT: source})
    except ValidationError as exc:
        for detail in exc.errors(include_url=False):
            errors.from_pydantic(detail, data)
        errors.raise_if_any()
        raise AssertionError("unreachable") from None  # pragma: no cover
    errors.raise_if_any()
    _check_across(scenario, data, errors)
    errors.raise_if_any()
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; errors name the file, the key and the line."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ScenarioError("", f"cannot read scenario {p}: {exc.strerror}") from None
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ScenarioError("", f"{p}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return parse_scenario(data, str(p))


def _check_across(sc: Scenario, raw: Mapping[str, Any], errors: _Errors) -> None:
    """Rules across keys; every broken one is reported."""

    def err(key: str, message: str, *loc: str | int) -> None:
        errors.add(key, message, _line_of(raw, *loc))

    names = [g.name for g in sc.groups]
    for i, g in enumerate(sc.groups):
        key = f"groups[{i}]"

        def at(name: str, i: int = i) -> tuple[str | int, ...]:
            return ("groups", i, name)

        if names.index(g.name) != i:
            err(f"{key}.name", f"duplicate group name {g.name!r}", *at("name"))
        if g.behaviour != "gateway" and "{child}" in g.topic:
            try:
                check_template(g.topic, f"{key}.topic", PLACEHOLDERS - {"child"})
            except ScenarioError as exc:
                err(exc.key, exc.message, *at("topic"))
        if g.behaviour == "gateway" and g.children < 1:
            err(f"{key}.children", "a gateway needs children: N (N >= 1)", *at("children"))
        if g.behaviour != "gateway" and g.children:
            err(f"{key}.children", "only gateways have children", *at("children"))
        if g.behaviour == "gateway" and "{child}" not in g.topic:
            err(f"{key}.topic", "a gateway's topic needs {child}", *at("topic"))
        if g.behaviour == "dashboard" and not g.subscribe:
            err(f"{key}.subscribe", "a dashboard needs subscribe: [filters]", *at("subscribe"))
        if g.behaviour == "actuator" and g.version != 5:
            err(f"{key}.version", "actuators answer with MQTT 5 request/response: "
                                  "version must be 5", *at("version"))
        if g.requests is not None and (g.behaviour != "dashboard" or g.version != 5):
            err(f"{key}.requests", "only MQTT 5 dashboards send requests", *at("requests"))
        if not g.clean_start and g.version == 5 and g.session_expiry == 0:
            err(f"{key}.session_expiry", "a persistent MQTT 5 session (clean_start: false) "
                                         "needs session_expiry > 0", *at("session_expiry"))
        if g.protocol == "mqtt-sn":
            if g.behaviour not in ("telemetry", "idle", "dashboard") or g.requests is not None:
                err(f"{key}.behaviour", "mqtt-sn groups are telemetry, idle or dashboard "
                                        "(without requests)", *at("behaviour"))
            if g.username is not None or g.password is not None:
                err(f"{key}.username", "MQTT-SN 1.2 CONNECT has no credentials "
                                       "(the broker maps the listener to a username)",
                    *at("username"))
            if g.sleep and g.sleep < g.interval:
                err(f"{key}.sleep", "must be at least the interval (the device wakes at "
                                    "each tick)", *at("sleep"))
        elif g.qos_minus_one or g.sleep:
            bad = "qos_minus_one" if g.qos_minus_one else "sleep"
            err(f"{key}.{bad}", "only for protocol: mqtt-sn", *at(bad))
        if g.payload.kind == "json" and not g.payload.fields:
            err(f"{key}.payload.fields", "is required", "groups", i, "payload")
        if g.payload.kind != "json" and g.payload.fields:
            err(f"{key}.payload.fields", "only allowed with kind: json",
                "groups", i, "payload", "fields")
    for i, st in enumerate(sc.stages):
        key, at_stage = f"stages[{i}]", ("stages", i)
        given = raw["stages"][i] if isinstance(raw.get("stages"), list) else {}

        def has(name: str, given: Any = given) -> bool:
            return given.get(name) is not None

        if st.kind == "steady" and (has("rate") or has("fraction")):
            bad = "rate" if has("rate") else "fraction"
            err(f"{key}.{bad}", "a steady stage has only duration", *at_stage, bad)
        elif st.kind != "reconnect_storm" and (has("fraction") or has("abrupt")):
            bad = "fraction" if has("fraction") else "abrupt"
            err(f"{key}.{bad}", "only for stage: reconnect_storm", *at_stage, bad)
    for i, f in enumerate(sc.faults):
        if (f.rate is None) == (f.count is None):
            err(f"faults[{i}]", "a fault needs exactly one of rate: N/s or count: N",
                "faults", i)
        if f.end is not None and f.end <= f.start:
            err(f"faults[{i}].end", "must be after start", "faults", i, "end")
    refs: list[tuple[str, tuple[str | int, ...], tuple[str, ...]]] = [
        (f"stages[{i}].groups", ("stages", i, "groups"), st.groups)
        for i, st in enumerate(sc.stages)]
    refs += [(f"faults[{i}].groups", ("faults", i, "groups"), f.groups)
             for i, f in enumerate(sc.faults)]
    refs += [(f"groups[{i}].requests.target", ("groups", i, "requests", "target"),
              (g.requests.target,)) for i, g in enumerate(sc.groups) if g.requests is not None]
    for where, loc, targets in refs:
        for ref in targets:
            if ref not in names:
                err(where, f"no group named {ref!r} (groups: {', '.join(names)})", *loc)
            elif where.endswith("requests.target") and sc.group(ref).behaviour != "actuator":
                err(where, f"group {ref!r} is not an actuator group", *loc)


# ----------------------------------------------------------------------------- errors


class _Errors:
    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[tuple[int | None, ScenarioError]] = []

    def add(self, key: str, message: str, line: int | None) -> None:
        if line is not None:
            message = f"{message} (at {self.source}:{line})"
        self.found.append((line, ScenarioError(key, message)))

    def raise_if_any(self) -> None:
        if self.found:
            order = sorted(range(len(self.found)), key=lambda i: (
                self.found[i][0] is None, self.found[i][0] or 0, i))
            raise ScenarioErrors([self.found[i][1] for i in order])

    def from_pydantic(self, detail: ErrorDetails, raw: Mapping[str, Any]) -> None:
        loc, kind, value = _yaml_loc(detail["loc"]), detail["type"], detail.get("input")
        ctx = detail.get("ctx") or {}
        key = _key(loc)
        if kind == "iotsim":  # a reader's ScenarioError; its key may go deeper (``.x``, ``[2]``)
            key = (key + str(ctx.get("sub", ""))).lstrip(".")
            message = str(ctx.get("message", detail["msg"]))
        elif kind in ("unexpected_keyword_argument", "extra_forbidden"):
            known = _yaml_keys(_type_at(detail["loc"][:-1]))
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            message = f"unknown key{suggestion} (known keys: {', '.join(sorted(known))})"
        elif kind.startswith("missing"):
            message = "is required"
        elif kind.startswith("dataclass"):
            message = f"expected a mapping, got {type(value).__name__}"
        elif kind in ("tuple_type", "list_type", "iterable_type"):
            message = f"expected a list, got {value!r}"
        else:  # a type of error this table does not know yet: pydantic's own words
            message = f"{detail['msg']}, got {value!r}"
        self.add(key, message, _line_of(raw, *loc))


def _yaml_loc(loc: Sequence[int | str]) -> tuple[int | str, ...]:
    """A pydantic location with field names turned back into the YAML keys."""
    out: list[int | str] = []
    for i, step in enumerate(loc):
        if isinstance(step, str):
            cls = _type_at(loc[:i])
            renamed = {v: k for k, v in getattr(cls, "_YAML_KEYS", {}).items()}
            out.append(renamed.get(step, step))
        else:
            out.append(step)
    return tuple(out)


def _type_at(loc: Sequence[int | str]) -> Any:
    tp: Any = Scenario
    for step in loc:
        tp = _strip(tp)
        if dataclasses.is_dataclass(tp) and isinstance(step, str):
            tp = typing.get_type_hints(tp, include_extras=True).get(step)
        elif typing.get_origin(tp) is tuple:
            tp = typing.get_args(tp)[0]
        else:
            return None
    return _strip(tp)


def _strip(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (types.UnionType, typing.Union):
            inner = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(inner) != 1:
                return tp
            tp = inner[0]
        else:
            return tp


def _yaml_keys(cls: Any) -> list[str]:
    if not dataclasses.is_dataclass(cls):
        return []
    renamed = {v: k for k, v in getattr(cls, "_YAML_KEYS", {}).items()}
    keys = [renamed.get(f.name, f.name) for f in dataclasses.fields(cls)]
    return [*keys, "defaults"] if cls is Scenario else keys


def _key(loc: Sequence[int | str]) -> str:
    key = ""
    for step in loc:
        key = f"{key}[{step}]" if isinstance(step, int) else (f"{key}.{step}" if key else step)
    return key


# ----------------------------------------------------------------------------- YAML with lines


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
    result.lines, result.duplicates = {}, []
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str | int | float | bool) and key is not None:
            key = str(key)  # an unhashable key: reported as unknown
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


def _line_of(raw: object, *loc: object) -> int | None:
    line: int | None = None
    node: Any = raw
    for step in loc:
        lines = getattr(node, "lines", None)
        try:
            if lines is not None:
                line = lines[step]
            node = node[step]
        except (KeyError, IndexError, TypeError):
            break
    return line


def _duplicates(node: object, key: str) -> list[tuple[str, Any, int, int]]:
    found: list[tuple[str, Any, int, int]] = []
    if isinstance(node, Mapping):
        for dup, line, first in getattr(node, "duplicates", ()):
            found.append((f"{key}.{dup}" if key else str(dup), dup, line, first))
        for k, v in node.items():
            found += _duplicates(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += _duplicates(item, f"{key}[{i}]")
    return found


def sensors_preset(
    devices: int,
    rate: float,
    qos: int = 1,
    version: int = 4,
    payload_size: int = 64,
    duration: float = 30.0,
    connect_rate: float = 1000.0,
    monitors: int = 1,
    keepalive: int = 60,
    sites: int = 10,
) -> Scenario:
    """The ``iotsim sensors`` preset: N sensors publishing telemetry at ``rate`` each."""
    group = GroupSpec(
        name="sensors",
        count=devices,
        behaviour="telemetry",
        version=version,
        client_id="{run}-sensor-{id}",
        topic="iotsim/{run}/site/{site}/device/{id}/temperature",
        interval=1.0 / rate,
        jitter=0.1,
        qos_mix=tuple(1.0 if i == qos else 0.0 for i in range(3)),  # type: ignore[arg-type]
        keepalive=keepalive,
        payload=PayloadSpec(kind="fixed", size=max(HEADER_SIZE, payload_size)),
        sites=sites,
    )
    return Scenario(
        name="sensors",
        description=f"{devices} sensors, {rate:g} msg/s each, QoS {qos}",
        groups=(group,),
        duration=duration,
        connect_rate=connect_rate,
        monitors=MonitorSpec(count=monitors, qos=2, version=5),
    )
