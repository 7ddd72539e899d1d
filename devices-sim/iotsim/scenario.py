"""Scenario files (YAML) -> frozen dataclasses, with errors that name the key.

A scenario says *who* connects (device groups with their MQTT options and behaviour),
*who counts* (monitor subscribers), *when* (stages) and *what goes wrong* (faults).
The full schema is documented in ``docs/simulator.md``; the loader is the reference:
every key is read here, unknown keys are errors, and every error names the key path
(``groups[1].interval: expected a duration like '5s' or '250ms', got 'often'``).

Values with units:

* durations: ``30s``, ``250ms``, ``2m``, ``1h`` or a number of seconds;
* rates: ``100/s``, ``30/m``, ``1/5s`` (one every 5 s) or a number per second.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

BEHAVIOURS = ("telemetry", "gateway", "actuator", "dashboard", "idle")
STAGES = ("ramp_up", "steady", "reconnect_storm", "ramp_down")
FAULTS = ("disconnect", "abrupt_close", "stop_reading")
PAYLOAD_KINDS = ("fixed", "random", "json")
FIELD_KINDS = ("random", "choice", "const", "counter", "timestamp")
#: Placeholders a topic or client-id template may use (``{child}`` only for gateways).
PLACEHOLDERS = frozenset({"id", "site", "group", "run", "child"})
#: Bytes of the measurement header every simulated payload starts with.
HEADER_SIZE = 24

T = TypeVar("T")


class ScenarioError(ValueError):
    """A scenario value is wrong; ``key`` is its path, e.g. ``groups[0].qos``."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


# ----------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class FieldSpec:
    """One generated field of a JSON payload."""

    name: str
    kind: str  # random | choice | const | counter | timestamp
    low: float = 0.0
    high: float = 1.0
    integer: bool = False
    decimals: int = 2
    choices: tuple[Any, ...] = ()
    value: Any = None


@dataclass(frozen=True)
class PayloadSpec:
    """How a payload is built: ``fixed`` (zeros), ``random`` bytes or ``json`` fields.

    ``size`` is the total payload size for ``fixed`` and ``random`` (at least the
    24-byte measurement header).
    """

    kind: str = "fixed"
    size: int = 64
    fields: tuple[FieldSpec, ...] = ()


@dataclass(frozen=True)
class WillSpec:
    """The will message of a device (published by the broker on an abrupt close)."""

    topic: str
    payload: str = "offline"
    qos: int = 1
    retain: bool = False
    delay: int = 0


@dataclass(frozen=True)
class RequestSpec:
    """Dashboards sending MQTT 5 requests to a group of actuators."""

    target: str
    interval: float = 1.0
    qos: int = 1
    timeout: float = 5.0


@dataclass(frozen=True)
class GroupSpec:
    """A group of identical simulated devices."""

    name: str
    count: int
    behaviour: str = "telemetry"
    version: int = 4
    client_id: str = "{run}-{group}-{id}"
    topic: str = "iotsim/{run}/{group}/{id}"
    interval: float = 1.0
    jitter: float = 0.1
    qos_mix: tuple[float, float, float] = (0.0, 1.0, 0.0)
    retain: bool = False
    keepalive: int = 60
    clean_start: bool = True
    session_expiry: int = 0
    payload: PayloadSpec = field(default_factory=PayloadSpec)
    will: WillSpec | None = None
    children: int = 0
    command_topic: str = "iotsim/{run}/{group}/{id}/cmd"
    subscribe: tuple[str, ...] = ()
    subscribe_qos: int = 1
    requests: RequestSpec | None = None
    max_inflight: int = 20
    sites: int = 1
    username: str | None = None
    password: str | None = None

    @property
    def publishes(self) -> bool:
        """Whether this group sends accounted telemetry."""
        return self.behaviour in ("telemetry", "gateway")

    @property
    def sources_per_device(self) -> int:
        """Accounting sources per device: one per gateway child, else one."""
        return max(1, self.children) if self.behaviour == "gateway" else 1


@dataclass(frozen=True)
class MonitorSpec:
    """Accounting subscribers. Empty ``subscribe``: filters derived from the topics."""

    count: int = 1
    subscribe: tuple[str, ...] = ()
    qos: int = 2
    version: int = 5


@dataclass(frozen=True)
class StageSpec:
    """One stage of the run's timeline."""

    kind: str
    rate: float | None = None
    duration: float | None = None
    fraction: float = 1.0
    abrupt: bool = False
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class FaultSpec:
    """Injected faults: ``rate`` events/s (Poisson) or ``count`` events spread evenly."""

    kind: str
    groups: tuple[str, ...] = ()
    rate: float | None = None
    count: int | None = None
    start: float = 0.0
    end: float | None = None
    downtime: float = 0.5
    duration: float = 2.0


@dataclass(frozen=True)
class TlsSpec:
    """TLS towards the broker."""

    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    server_hostname: str | None = None


@dataclass(frozen=True)
class Scenario:
    """A whole scenario, validated."""

    name: str
    groups: tuple[GroupSpec, ...]
    description: str = ""
    duration: float = 30.0
    seed: int | None = None
    connect_rate: float = 1000.0
    connect_timeout: float = 10.0
    ack_timeout: float = 5.0
    drain_timeout: float = 10.0
    source_addresses: tuple[str, ...] = ("127.0.0.1",)
    tls: TlsSpec = field(default_factory=TlsSpec)
    monitors: MonitorSpec = field(default_factory=MonitorSpec)
    stages: tuple[StageSpec, ...] = ()
    faults: tuple[FaultSpec, ...] = ()

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


# ----------------------------------------------------------------------------- reader


class _Section:
    """A mapping being read, with its key path; unknown keys are reported by ``done``."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ScenarioError(path, f"expected a mapping, got {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data and self.data[name] is not None

    def get(self, name: str, conv: Callable[[object, str], T], default: T) -> T:
        self.used.add(name)
        if not self.has(name):
            return default
        return conv(self.data[name], self.key(name))

    def need(self, name: str, conv: Callable[[object, str], T]) -> T:
        self.used.add(name)
        if not self.has(name):
            raise ScenarioError(self.key(name), "is required")
        return conv(self.data[name], self.key(name))

    def raw(self, name: str) -> object:
        self.used.add(name)
        return self.data.get(name)

    def done(self) -> None:
        for name in self.data:
            if name not in self.used:
                known = ", ".join(sorted(self.used))
                raise ScenarioError(self.key(str(name)), f"unknown key (known keys: {known})")


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


def _payload(value: object, key: str) -> PayloadSpec:
    s = _Section(value, key)
    kind = s.get("kind", _choice(PAYLOAD_KINDS), "fixed")
    size = s.get("size", _int(HEADER_SIZE, 256 * 1024 * 1024), 64)
    fields: list[FieldSpec] = []
    if kind == "json":
        raw = s.need("fields", _Section)
        for name in raw.data:
            fields.append(_field(str(name), raw.raw(str(name)), raw.key(str(name))))
        raw.done()
    elif s.has("fields"):
        raise ScenarioError(s.key("fields"), "only allowed with kind: json")
    s.done()
    return PayloadSpec(kind=kind, size=size, fields=tuple(fields))


def _field(name: str, value: object, key: str) -> FieldSpec:
    if value in ("counter", "timestamp"):
        return FieldSpec(name=name, kind=str(value))
    if not isinstance(value, Mapping):
        return FieldSpec(name=name, kind="const", value=value)
    s = _Section(value, key)
    found = [k for k in ("random", "choice", "const") if k in s.data]
    if len(found) != 1:
        raise ScenarioError(key, "expected 'counter', 'timestamp', a constant, or a mapping "
                                 "with one of random: [low, high], choice: [...], const: value")
    kind = found[0]
    spec = FieldSpec(name=name, kind=kind)
    if kind == "random":
        bounds = s.raw("random")
        if (not isinstance(bounds, list) or len(bounds) != 2
                or not all(isinstance(b, int | float) and not isinstance(b, bool)
                           for b in bounds) or bounds[0] > bounds[1]):
            raise ScenarioError(s.key("random"), f"expected [low, high], got {bounds!r}")
        spec = replace(spec, low=float(bounds[0]), high=float(bounds[1]),
                       integer=all(isinstance(b, int) for b in bounds),
                       decimals=s.get("decimals", _int(0, 12), 2))
    elif kind == "choice":
        options = s.raw("choice")
        if not isinstance(options, list) or not options:
            raise ScenarioError(s.key("choice"), f"expected a non-empty list, got {options!r}")
        spec = replace(spec, choices=tuple(options))
    else:
        spec = replace(spec, value=s.raw("const"))
    s.done()
    return spec


def _will(value: object, key: str) -> WillSpec:
    s = _Section(value, key)
    will = WillSpec(
        topic=s.need("topic", _template),
        payload=s.get("payload", lambda v, k: str(v), "offline"),
        qos=s.get("qos", _qos, 1),
        retain=s.get("retain", _bool, False),
        delay=s.get("delay", lambda v, k: int(parse_duration(v, k)), 0),
    )
    s.done()
    return will


def _requests(value: object, key: str) -> RequestSpec:
    s = _Section(value, key)
    spec = RequestSpec(
        target=s.need("target", _str),
        interval=s.get("interval", _positive_duration, 1.0),
        qos=s.get("qos", _qos, 1),
        timeout=s.get("timeout", _positive_duration, 5.0),
    )
    s.done()
    return spec


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


def _group(value: object, key: str, defaults: Mapping[str, Any]) -> GroupSpec:
    merged = dict(defaults)
    if not isinstance(value, Mapping):
        raise ScenarioError(key, f"expected a mapping, got {type(value).__name__}")
    merged.update(value)
    s = _Section(merged, key)
    name = s.need("name", _str)
    behaviour = s.get("behaviour", _choice(BEHAVIOURS), "telemetry")
    topic_conv = _template if behaviour == "gateway" else _template_no_child
    g = GroupSpec(
        name=name,
        count=s.need("count", _int(1, 1_000_000)),
        behaviour=behaviour,
        version=s.get("version", _version, 4),
        client_id=s.get("client_id", _template_no_child, "{run}-{group}-{id}"),
        topic=s.get("topic", topic_conv,
                    "iotsim/{run}/{group}/{id}/{child}" if behaviour == "gateway"
                    else "iotsim/{run}/{group}/{id}"),
        interval=s.get("interval", _positive_duration, 1.0),
        jitter=s.get("jitter", _jitter, 0.1),
        qos_mix=s.get("qos", _qos_mix, (0.0, 1.0, 0.0)),
        retain=s.get("retain", _bool, False),
        keepalive=s.get("keepalive", lambda v, k: int(parse_duration(v, k)), 60),
        clean_start=s.get("clean_start", _bool, True),
        session_expiry=s.get("session_expiry", lambda v, k: int(parse_duration(v, k)), 0),
        payload=s.get("payload", _payload, PayloadSpec()),
        will=s.get("will", _will, None),
        children=s.get("children", _int(1, 100_000), 0),
        command_topic=s.get("command_topic", _template_no_child, "iotsim/{run}/{group}/{id}/cmd"),
        subscribe=s.get("subscribe", _filters, ()),
        subscribe_qos=s.get("subscribe_qos", _qos, 1),
        requests=s.get("requests", _requests, None),
        max_inflight=s.get("max_inflight", _int(1, 65535), 20),
        sites=s.get("sites", _int(1), 1),
        username=s.get("username", _str, None),
        password=s.get("password", lambda v, k: str(v), None),
    )
    s.done()
    if g.keepalive > 65535:
        raise ScenarioError(s.key("keepalive"), f"at most 65535 s, got {g.keepalive}")
    if g.behaviour == "gateway" and g.children < 1:
        raise ScenarioError(s.key("children"), "a gateway needs children: N (N >= 1)")
    if g.behaviour != "gateway" and s.has("children"):
        raise ScenarioError(s.key("children"), "only gateways have children")
    if g.behaviour == "gateway" and "{child}" not in g.topic:
        raise ScenarioError(s.key("topic"), "a gateway's topic needs {child}")
    if g.behaviour == "dashboard" and not g.subscribe:
        raise ScenarioError(s.key("subscribe"), "a dashboard needs subscribe: [filters]")
    if g.behaviour == "actuator" and g.version != 5:
        raise ScenarioError(s.key("version"), "actuators answer with MQTT 5 request/response: "
                                              "version must be 5")
    if g.requests is not None and (g.behaviour != "dashboard" or g.version != 5):
        raise ScenarioError(s.key("requests"), "only MQTT 5 dashboards send requests")
    if not g.clean_start and g.version == 5 and g.session_expiry == 0:
        raise ScenarioError(s.key("session_expiry"),
                            "a persistent MQTT 5 session (clean_start: false) needs "
                            "session_expiry > 0")
    return g


def _stage(value: object, key: str) -> StageSpec:
    s = _Section(value, key)
    kind = s.need("stage", _choice(STAGES))
    spec = StageSpec(
        kind=kind,
        rate=s.get("rate", parse_rate, None),
        duration=s.get("duration", parse_duration, None),
        fraction=s.get("fraction", _float(0.0, 1.0), 1.0),
        abrupt=s.get("abrupt", _bool, False),
        groups=s.get("groups", _str_list, ()),
    )
    s.done()
    if kind == "steady" and (s.has("rate") or s.has("fraction")):
        raise ScenarioError(s.key("rate" if s.has("rate") else "fraction"),
                            "a steady stage has only duration")
    if kind != "reconnect_storm" and (s.has("fraction") or s.has("abrupt")):
        bad = "fraction" if s.has("fraction") else "abrupt"
        raise ScenarioError(s.key(bad), "only for stage: reconnect_storm")
    return spec


def _fault(value: object, key: str) -> FaultSpec:
    s = _Section(value, key)
    spec = FaultSpec(
        kind=s.need("kind", _choice(FAULTS)),
        groups=s.get("groups", _str_list, ()),
        rate=s.get("rate", parse_rate, None),
        count=s.get("count", _int(1), None),
        start=s.get("start", parse_duration, 0.0),
        end=s.get("end", parse_duration, None),
        downtime=s.get("downtime", parse_duration, 0.5),
        duration=s.get("duration", _positive_duration, 2.0),
    )
    s.done()
    if (spec.rate is None) == (spec.count is None):
        raise ScenarioError(key, "a fault needs exactly one of rate: N/s or count: N")
    if spec.end is not None and spec.end <= spec.start:
        raise ScenarioError(s.key("end"), "must be after start")
    return spec


def _tls(value: object, key: str) -> TlsSpec:
    if isinstance(value, bool):
        return TlsSpec(enabled=value)
    s = _Section(value, key)
    spec = TlsSpec(
        enabled=s.get("enabled", _bool, True),
        ca_file=s.get("ca_file", _str, None),
        cert_file=s.get("cert_file", _str, None),
        key_file=s.get("key_file", _str, None),
        insecure=s.get("insecure", _bool, False),
        server_hostname=s.get("server_hostname", _str, None),
    )
    s.done()
    return spec


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


def _monitors(value: object, key: str) -> MonitorSpec:
    s = _Section(value, key)
    spec = MonitorSpec(
        count=s.get("count", _int(0, 1000), 1),
        subscribe=s.get("subscribe", _filters, ()),
        qos=s.get("qos", _qos, 2),
        version=s.get("version", _version, 5),
    )
    s.done()
    return spec


def parse_scenario(data: object, source: str = "scenario") -> Scenario:
    """Validate a loaded YAML document; raises :class:`ScenarioError` naming the key."""
    if not isinstance(data, Mapping):
        raise ScenarioError("", f"{source}: expected a mapping at the top level")
    s = _Section(data, "")
    defaults_raw = s.raw("defaults")
    defaults: Mapping[str, Any] = {}
    if defaults_raw is not None:
        if not isinstance(defaults_raw, Mapping):
            raise ScenarioError("defaults", "expected a mapping of group keys")
        defaults = defaults_raw
    groups_raw = s.raw("groups")
    if not isinstance(groups_raw, list) or not groups_raw:
        raise ScenarioError("groups", "expected a non-empty list of device groups")
    groups = tuple(_group(g, f"groups[{i}]", defaults) for i, g in enumerate(groups_raw))
    names = [g.name for g in groups]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise ScenarioError(f"groups[{i}].name", f"duplicate group name {n!r}")
    stages_raw = s.raw("stages") or []
    if not isinstance(stages_raw, list):
        raise ScenarioError("stages", "expected a list of stages")
    stages = tuple(_stage(st, f"stages[{i}]") for i, st in enumerate(stages_raw))
    faults_raw = s.raw("faults") or []
    if not isinstance(faults_raw, list):
        raise ScenarioError("faults", "expected a list of faults")
    faults = tuple(_fault(f, f"faults[{i}]") for i, f in enumerate(faults_raw))
    for where, refs in [(f"stages[{i}].groups", st.groups) for i, st in enumerate(stages)] + [
        (f"faults[{i}].groups", f.groups) for i, f in enumerate(faults)
    ] + [(f"groups[{i}].requests.target", (g.requests.target,))
         for i, g in enumerate(groups) if g.requests is not None]:
        for ref in refs:
            if ref not in names:
                raise ScenarioError(where, f"no group named {ref!r} (groups: {', '.join(names)})")
    for i, g in enumerate(groups):
        if g.requests is not None and next(
            x for x in groups if x.name == g.requests.target
        ).behaviour != "actuator":
            raise ScenarioError(f"groups[{i}].requests.target",
                                f"group {g.requests.target!r} is not an actuator group")
    scenario = Scenario(
        name=s.get("name", _str, Path(source).stem),
        description=s.get("description", lambda v, k: str(v), ""),
        duration=s.get("duration", _positive_duration, 30.0),
        seed=s.get("seed", _int(0), None),
        connect_rate=s.get("connect_rate", parse_rate, 1000.0),
        connect_timeout=s.get("connect_timeout", _positive_duration, 10.0),
        ack_timeout=s.get("ack_timeout", _positive_duration, 5.0),
        drain_timeout=s.get("drain_timeout", _positive_duration, 10.0),
        source_addresses=s.get("source_addresses", _sources, ("127.0.0.1",)),
        tls=s.get("tls", _tls, TlsSpec()),
        monitors=s.get("monitors", _monitors, MonitorSpec()),
        groups=groups,
        stages=stages,
        faults=faults,
    )
    s.done()
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; errors name the file and the key."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ScenarioError("", f"cannot read scenario {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError("", f"{p}: not valid YAML: {exc}") from None
    return parse_scenario(data, str(p))


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
