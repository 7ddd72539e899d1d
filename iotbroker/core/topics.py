"""Topic names, topic filters and shared-subscription filters.

Rules of this room (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7 and §4.8.2):

* A Topic Name or Topic Filter has at least one character [MQTT-4.7.3-1] and no
  U+0000 [MQTT-4.7.3-2]. The 65 535-byte limit [MQTT-4.7.3-3] is the codec's: a
  longer string cannot be encoded.
* ``/`` separates levels; empty levels are real levels (``a//b`` has three, ``/a``
  has two). Topics are compared exactly, never normalised [MQTT-4.7.3-4].
* A Topic Name carries no wildcard [MQTT-3.3.2-2] (both versions; also
  MQTT 3.1.1 [MQTT-4.7.1-1], MQTT 5.0 [MQTT-4.7.0-1]).
* In a Topic Filter ``#`` stands alone in the last level, ``+`` fills a whole
  level. The normative ids differ between versions: ``#`` is MQTT 3.1.1
  [MQTT-4.7.1-2] and MQTT 5.0 [MQTT-4.7.1-1]; ``+`` is MQTT 3.1.1 [MQTT-4.7.1-3]
  and MQTT 5.0 [MQTT-4.7.1-2]. Functions take ``version`` (the CONNECT protocol
  level, default 5) only to name the right id in the error.
* A shared subscription is ``$share/{ShareName}/{filter}`` with a non-empty
  ShareName [MQTT-4.8.2-1] free of ``/ + #`` and followed by ``/`` and a Topic
  Filter [MQTT-4.8.2-2] (MQTT 5.0 §4.8.2).
* Filters starting with a wildcard never match topics starting with ``$``
  [MQTT-4.7.2-1]; that rule lives in the tries (:mod:`iotbroker.core.subscriptions`,
  :mod:`iotbroker.core.retained`), see :func:`filter_matches` for the reference.

All failures raise :class:`~iotbroker.errors.ProtocolViolation` with MQTT 5.0
reason 0x90 Topic Name invalid or 0x8F Topic Filter invalid.
"""

from __future__ import annotations

from typing import Final

from iotbroker.codec.enums import ReasonCode
from iotbroker.errors import ProtocolViolation
from iotbroker.subscription import SHARE_PREFIX

__all__ = [
    "NO_TOPIC_LIMIT",
    "SHARE_PREFIX",
    "check_topic_limits",
    "filter_matches",
    "has_wildcard",
    "parse_shared",
    "validate_subscription_filter",
    "validate_topic_filter",
    "validate_topic_name",
]


_NAME_INVALID = int(ReasonCode.TOPIC_NAME_INVALID)  # 0x90
_FILTER_INVALID = int(ReasonCode.TOPIC_FILTER_INVALID)  # 0x8F


def _hash_ref(version: int) -> str:
    return "MQTT-4.7.1-2" if version < 5 else "MQTT-4.7.1-1"


def _plus_ref(version: int) -> str:
    return "MQTT-4.7.1-3" if version < 5 else "MQTT-4.7.1-2"


def is_broker_topic(topic: str) -> bool:
    """True for ``$SYS`` and the topics below it: the broker's own, which clients may
    read (as the ACL allows) but never publish to, nor set a will on (issue 12).
    MQTT 3.1.1 §4.7.2 / MQTT 5.0 §4.7.2 reserve ``$`` topics for server use."""
    # The first character natively first (compiled: no call for the usual topic).
    return (len(topic) >= 4 and ord(topic[0]) == 0x24 and topic.startswith("$SYS")
            and (len(topic) == 4 or topic[4] == "/"))


def has_wildcard(topic: str) -> bool:
    """True if ``topic`` contains ``+`` or ``#`` anywhere."""
    return "+" in topic or "#" in topic


def validate_topic_name(name: str, version: int = 5) -> None:
    """Check a PUBLISH (or Will) Topic Name; raise ``ProtocolViolation`` (0x90).

    MQTT 3.1.1 §4.7.3 / MQTT 5.0 §4.7.3: at least one character [MQTT-4.7.3-1],
    no U+0000 [MQTT-4.7.3-2]; MQTT 3.1.1 and 5.0 §3.3.2.1: no wildcard
    characters [MQTT-3.3.2-2]. ``version`` is accepted for symmetry with
    :func:`validate_topic_filter`; the ids are the same in both versions.

    A Topic Name starting with ``$`` is syntactically valid; whether a client may
    publish to it is broker policy, not decided here.
    """
    del version  # same ids in MQTT 3.1.1 and 5.0
    if not name:
        raise ProtocolViolation(
            "topic name is empty", reason_code=_NAME_INVALID, spec_ref="MQTT-4.7.3-1"
        )
    if "+" in name or "#" in name:
        raise ProtocolViolation(
            f"topic name {name!r} contains a wildcard character",
            reason_code=_NAME_INVALID,
            spec_ref="MQTT-3.3.2-2",
        )
    if "\x00" in name:
        raise ProtocolViolation(
            "topic name contains U+0000", reason_code=_NAME_INVALID, spec_ref="MQTT-4.7.3-2"
        )


def validate_topic_filter(topic_filter: str, version: int = 5) -> None:
    """Check a Topic Filter's wildcard syntax; raise ``ProtocolViolation`` (0x8F).

    MQTT 3.1.1 §4.7.1 / MQTT 5.0 §4.7.1: ``#`` only as the whole last level
    (3.1.1 [MQTT-4.7.1-2], 5.0 [MQTT-4.7.1-1]); ``+`` only as a whole level
    (3.1.1 [MQTT-4.7.1-3], 5.0 [MQTT-4.7.1-2]); §4.7.3: not empty
    [MQTT-4.7.3-1], no U+0000 [MQTT-4.7.3-2].

    A ``$share/...`` string is checked as a plain filter here (its ``$share`` and
    ShareName levels are literal levels); use :func:`validate_subscription_filter`
    for the SUBSCRIBE / UNSUBSCRIBE path.
    """
    if not topic_filter:
        raise ProtocolViolation(
            "topic filter is empty", reason_code=_FILTER_INVALID, spec_ref="MQTT-4.7.3-1"
        )
    if "\x00" in topic_filter:
        raise ProtocolViolation(
            "topic filter contains U+0000", reason_code=_FILTER_INVALID, spec_ref="MQTT-4.7.3-2"
        )
    hash_at = topic_filter.find("#")
    if hash_at >= 0 and (
        hash_at != len(topic_filter) - 1 or (hash_at > 0 and topic_filter[hash_at - 1] != "/")
    ):
        raise ProtocolViolation(
            f"topic filter {topic_filter!r}: '#' must be the whole last level",
            reason_code=_FILTER_INVALID,
            spec_ref=_hash_ref(version),
        )
    if "+" in topic_filter:
        for level in topic_filter.split("/"):
            if "+" in level and level != "+":
                raise ProtocolViolation(
                    f"topic filter {topic_filter!r}: '+' must fill a whole level",
                    reason_code=_FILTER_INVALID,
                    spec_ref=_plus_ref(version),
                )


def parse_shared(topic_filter: str) -> tuple[str | None, str]:
    """Split ``$share/{ShareName}/{filter}`` into ``(ShareName, filter)``.

    A filter that does not start with ``$share/`` is returned as ``(None, filter)``
    unchanged (``$share`` alone is an ordinary filter). Raises
    ``ProtocolViolation`` (0x8F) if the ShareName is empty [MQTT-4.8.2-1], contains
    ``+`` or ``#`` or is not followed by ``/`` and a non-empty Topic Filter
    [MQTT-4.8.2-2] (MQTT 5.0 §4.8.2). The inner filter's wildcard syntax is not
    checked here: see :func:`validate_subscription_filter`.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    rest = topic_filter[len(SHARE_PREFIX) :]
    slash = rest.find("/")
    group = rest if slash < 0 else rest[:slash]
    if not group:
        raise ProtocolViolation(
            f"shared subscription {topic_filter!r} has an empty ShareName",
            reason_code=_FILTER_INVALID,
            spec_ref="MQTT-4.8.2-1",
        )
    if "+" in group or "#" in group:
        raise ProtocolViolation(
            f"shared subscription {topic_filter!r}: ShareName must not contain '+' or '#'",
            reason_code=_FILTER_INVALID,
            spec_ref="MQTT-4.8.2-2",
        )
    inner = "" if slash < 0 else rest[slash + 1 :]
    if not inner:
        raise ProtocolViolation(
            f"shared subscription {topic_filter!r}: ShareName must be followed by "
            "'/' and a Topic Filter",
            reason_code=_FILTER_INVALID,
            spec_ref="MQTT-4.8.2-2",
        )
    return group, inner


def validate_subscription_filter(topic_filter: str, version: int = 5) -> tuple[str | None, str]:
    """Validate a SUBSCRIBE / UNSUBSCRIBE Topic Filter and split off any share group.

    :func:`parse_shared` then :func:`validate_topic_filter` on the inner filter.
    Returns ``(share_group, filter)``; ``share_group`` is ``None`` for an ordinary
    subscription. Whether shared subscriptions are offered at all (MQTT 5.0
    Shared Subscription Available, or an MQTT 3.1.1 client) is the caller's choice.
    """
    group, inner = parse_shared(topic_filter)
    validate_topic_filter(inner, version)
    return group, inner


#: No limit, for :func:`topic_limit_problem` (a topic has fewer levels and bytes).
NO_TOPIC_LIMIT: Final = 1 << 30


def topic_limit_problem(topic: str, max_levels: int, max_length: int) -> str | None:
    """What breaks the broker-configured limits on levels and UTF-8 length, or None.

    MQTT 5.0 §4.7.3 leaves room for a Server to restrict topics; these limits are
    ours, not normative. :data:`NO_TOPIC_LIMIT` means no limit. ``max_length`` counts
    UTF-8 bytes (the encoded length the spec measures). The limits are plain ``int``
    (not ``int | None``): compiled, the engine's configured values stay native and are
    not boxed anew per PUBLISH (issue 19).
    """
    n = len(topic)
    # Each character is 1..4 UTF-8 bytes: only encode when it can matter.
    if n * 4 > max_length and (n > max_length or len(topic.encode()) > max_length):
        return f"longer than the configured {max_length} bytes"
    # n characters hold at most n separators: counted only when that can reach the
    # limit (issue 19: the usual topic is shorter than the 128-level default).
    if n >= max_levels and topic.count("/") >= max_levels:
        return f"has more than the configured {max_levels} levels"
    return None


def check_topic_limits(
    topic: str,
    max_levels: int | None = None,
    max_length: int | None = None,
    *,
    is_filter: bool = False,
) -> None:
    """:func:`topic_limit_problem` as an exception: ``ProtocolViolation`` with 0x8F
    (``is_filter``) or 0x90; the error carries no spec id (the limits are ours)."""
    problem = topic_limit_problem(
        topic, NO_TOPIC_LIMIT if max_levels is None else max_levels,
        NO_TOPIC_LIMIT if max_length is None else max_length)
    if problem is not None:
        kind = "topic filter" if is_filter else "topic name"
        raise ProtocolViolation(
            f"{kind} {problem}", reason_code=_FILTER_INVALID if is_filter else _NAME_INVALID
        )


def filter_matches(topic_filter: str, topic: str) -> bool:
    """Reference matcher for one (valid, non-shared) filter and one topic name.

    MQTT 3.1.1 / 5.0 §4.7: ``+`` matches exactly one level (an empty one too),
    ``#`` matches its parent level and any number of levels below (``sport/#``
    matches ``sport``), and a filter whose first level is a wildcard does not match
    a topic starting with ``$`` [MQTT-4.7.2-1]. Exact comparison, no normalisation
    [MQTT-4.7.3-4]. Linear in the number of levels; the tries are the fast path.
    """
    f_levels = topic_filter.split("/")
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        return False
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
