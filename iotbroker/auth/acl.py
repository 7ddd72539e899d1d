"""ACL file: what each client may publish, subscribe to and receive (mosquitto-like).

Format (``#`` starts a comment line; blank lines are ignored)::

    # rules before the first "user" line apply to anonymous clients (no username)
    topic read public/#

    user alice
    topic readwrite home/alice/#
    topic deny home/alice/secrets/#

    user bob
    topic write sensors/bob/+

    # "pattern" rules apply to every client, wherever they appear in the file;
    # %c is replaced by the client id, %u by the username
    pattern readwrite devices/%c/#
    pattern read users/%u/inbox

``topic [ACCESS] FILTER`` / ``pattern [ACCESS] FILTER``; ``FILTER`` is the rest of the
line and may use the MQTT wildcards ``+`` and ``#``. ``ACCESS`` (default
``readwrite``):

=============  ===================================================================
``read``       receive messages on matching topics and subscribe to covered filters
``write``      publish to matching topics
``readwrite``  both
``subscribe``  subscribe to covered filters only (receiving still needs ``read``)
``deny``       none of the above, whatever other rules say
=============  ===================================================================

``user NAME`` (the rest of the line) starts the rules of that username; sections of the
same name are merged.

Decisions, in order:

1. The rules that apply to a client are its ``user`` section (or the anonymous section
   when it has no username) plus every ``pattern`` rule. A username without a section
   gets only the patterns. Patterns using ``%u`` do not apply to anonymous clients.
2. A ``deny`` rule that matches (publish, receive) or covers (subscribe) wins.
3. Otherwise the action is allowed if some rule with that access matches/covers it;
   if none does, it is denied.

Matching follows MQTT (§4.7): ``+`` is one level, ``#`` the rest including the parent
level, and a wildcard in the first level does not match topics beginning with ``$``
[MQTT-4.7.2-1]. A subscription filter is *covered* by a rule filter when every topic
the subscription can match is matched by the rule (``sensors/#`` covers
``sensors/+/temp``; ``sensors/+`` does not cover ``sensors/#``). For ``$share/GROUP/F``
the check is made on ``F``. A subscription that is allowed but overlaps a ``deny`` rule
is granted; the messages the deny rule matches are then withheld by :meth:`Acl.can_receive`.

Substitution safety: a client id or username that is empty or contains ``/``, ``+``
or ``#`` could widen a pattern, so such a value makes an allowing pattern not apply,
and makes a denying pattern deny the whole level (``+``).

No ACL file configured: everything is allowed (:class:`~iotbroker.auth.base.AllowAll`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from iotbroker.errors import ConfigError

__all__ = ["Acl", "acl_warnings", "filter_covers"]

READ, WRITE, SUBSCRIBE = "read", "write", "subscribe"
_ACCESS: dict[str, frozenset[str]] = {
    "read": frozenset({READ, SUBSCRIBE}),
    "write": frozenset({WRITE}),
    "readwrite": frozenset({READ, WRITE, SUBSCRIBE}),
    "subscribe": frozenset({SUBSCRIBE}),
    "deny": frozenset(),
}
#: Substituted rule lists remembered per (client id, username).
CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class _Rule:
    access: frozenset[str]
    deny: bool
    levels: tuple[str, ...]
    is_pattern: bool
    line: int

    @property
    def uses_username(self) -> bool:
        return any("%u" in level for level in self.levels)


def filter_covers(rule: Sequence[str], sub: Sequence[str]) -> bool:
    """True if every topic matched by filter ``sub`` is matched by filter ``rule``.

    Both are lists of levels (``"a/+/#".split("/")``). A topic name has no wildcards, so
    ``filter_covers(filter, topic)`` is also the plain "does the filter match the topic".
    """
    dollar = bool(sub) and sub[0].startswith("$")
    for i, level in enumerate(rule):
        if level == "#":
            # "a/#" also matches "a" [MQTT-4.7.1-2]; no first-level wildcard on $ topics.
            return not (i == 0 and dollar)
        if i == len(sub):
            return False
        s = sub[i]
        if s == "#":
            return False
        if level == "+":
            if i == 0 and dollar:  # [MQTT-4.7.2-1]
                return False
        elif level != s:
            return False
    return len(rule) == len(sub)


def _check_filter(levels: Sequence[str], where: str, text: str) -> None:
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ConfigError(where, text, "has '#' that is not a whole last level [MQTT-4.7.1-2]")
        if "+" in level and level != "+":
            raise ConfigError(where, text, "has '+' that is not a whole level [MQTT-4.7.1-3]")
    if not "/".join(levels):
        raise ConfigError(where, text, "has an empty topic")


def acl_warnings(lines: Iterable[str], source: str = "<memory>") -> list[str]:
    """Lines that parse but look like typos (``iotbroker check-config`` prints them).

    A filter is the rest of the line and may contain spaces, so ``topic rw home/#`` is a
    valid rule for the filter ``rw home/#`` with the default ``readwrite`` access: almost
    certainly a misspelt access word. Warned: a filter whose first word is a single
    level without wildcards followed by a space (the shape ``ACCESS FILTER`` with an
    unknown ACCESS), and a rule whose whole filter is an access word (``topic read``: the
    filter was forgotten).
    """
    warnings = []
    known = ", ".join(_ACCESS)
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        keyword, _, rest = line.partition(" ")
        if keyword not in ("topic", "pattern"):
            continue
        rest = rest.strip()
        first, _, after = rest.partition(" ")
        after = after.strip()
        where = f"{source}:{number}"
        if first in _ACCESS and not after:
            warnings.append(
                f"{where}: {line!r} is a readwrite rule for the topic {first!r}; if "
                f"{first!r} was meant as the access, the filter is missing")
        elif (after and first not in _ACCESS and "/" not in first
              and "+" not in first and "#" not in first):
            warnings.append(
                f"{where}: {line!r} is a readwrite rule for the filter {rest!r} "
                f"(a filter may contain spaces); {first!r} is not an access word "
                f"({known}): did you mean '{keyword} ACCESS {after}'?")
    return warnings


def _safe(value: str | None) -> bool:
    if not value:
        return False
    return not any(c in value for c in "/+#\0")


class Acl:
    """A loaded ACL file; implements :class:`~iotbroker.auth.base.Authorizer`."""

    def __init__(self, anonymous: list[_Rule], users: dict[str, list[_Rule]],
                 patterns: list[_Rule], source: str = "<memory>") -> None:
        self._anonymous = anonymous
        self._users = users
        self._patterns = patterns
        self.source = source
        self._cache: dict[tuple[str, str | None], tuple[_Rule, ...]] = {}

    # loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str) -> Acl:
        """Read ``path``; a malformed line raises :class:`ConfigError` naming ``file:line``."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as exc:
            raise ConfigError(path, path, f"is not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise ConfigError(path, path, f"cannot be read: {exc.strerror or exc}") from None
        return cls.from_lines(text.splitlines(), path)

    @classmethod
    def from_text(cls, text: str, source: str = "<memory>") -> Acl:
        """Parse a whole ACL file's text held in memory (tests, embedding)."""
        return cls.from_lines(text.splitlines(), source)

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "<memory>") -> Acl:
        anonymous: list[_Rule] = []
        users: dict[str, list[_Rule]] = {}
        patterns: list[_Rule] = []
        current = anonymous
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{source}:{number}"
            keyword, _, rest = line.partition(" ")
            rest = rest.strip()
            if keyword == "user":
                if not rest:
                    raise ConfigError(where, line, "needs a username: user NAME")
                current = users.setdefault(rest, [])
                continue
            if keyword not in ("topic", "pattern"):
                raise ConfigError(where, line,
                                  "is not a rule (expected user NAME, topic [ACCESS] FILTER "
                                  "or pattern [ACCESS] FILTER)")
            first, _, after = rest.partition(" ")
            after = after.strip()
            if first in _ACCESS and after:
                access_name, topic = first, after
            else:
                access_name, topic = "readwrite", rest
            if not topic:
                raise ConfigError(where, line, f"needs a topic filter: {keyword} [ACCESS] FILTER")
            levels = tuple(topic.split("/"))
            _check_filter(levels, where, line)
            rule = _Rule(_ACCESS[access_name], access_name == "deny", levels,
                         keyword == "pattern", number)
            if rule.is_pattern:
                patterns.append(rule)
            else:
                current.append(rule)
        return cls(anonymous, users, patterns, source)

    # checks ----------------------------------------------------------------------------

    def _rules(self, client_id: str, username: str | None) -> tuple[_Rule, ...]:
        key = (client_id, username)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        base = self._anonymous if username is None else self._users.get(username, [])
        rules = list(base)
        for pattern in self._patterns:
            substituted = self._substitute(pattern, client_id, username)
            if substituted is not None:
                rules.append(substituted)
        result = tuple(rules)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = result
        return result

    @staticmethod
    def _substitute(rule: _Rule, client_id: str, username: str | None) -> _Rule | None:
        if username is None and rule.uses_username:
            return None
        levels: list[str] = []
        for level in rule.levels:
            if "%c" not in level and "%u" not in level:
                levels.append(level)
                continue
            values = ([client_id] if "%c" in level else []) + (
                [username] if "%u" in level else [])
            if all(_safe(v) for v in values):
                levels.append(level.replace("%c", client_id).replace("%u", username or ""))
            elif rule.deny:
                levels.append("+")
            else:
                return None
        return _Rule(rule.access, rule.deny, tuple(levels), True, rule.line)

    def _decide(self, client_id: str, username: str | None, target: str, access: str) -> bool:
        levels = target.split("/")
        allowed = False
        for rule in self._rules(client_id, username):
            if rule.deny:
                if filter_covers(rule.levels, levels):
                    return False
            elif not allowed and access in rule.access and filter_covers(rule.levels, levels):
                allowed = True
        return allowed

    def can_publish(self, client_id: str, username: str | None, topic: str) -> bool:
        return self._decide(client_id, username, topic, WRITE)

    def can_receive(self, client_id: str, username: str | None, topic: str) -> bool:
        return self._decide(client_id, username, topic, READ)

    def can_subscribe(self, client_id: str, username: str | None, topic_filter: str) -> bool:
        if topic_filter.startswith("$share/"):
            _, _, rest = topic_filter.partition("/")
            group, sep, topic_filter = rest.partition("/")
            if not group or not sep or not topic_filter:
                return False
        return self._decide(client_id, username, topic_filter, SUBSCRIBE)
