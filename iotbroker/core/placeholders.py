"""Shared empty placeholders for a session's containers (issue 8, issue 19).

An idle connection's session must stay small: an empty deque is 760 bytes, an empty set
216, an empty dict 64. :class:`~iotbroker.core.session.Session` starts with these shared
empty objects and replaces one with a real container on first use; adding to a
placeholder is a bug and fails loudly.

They live here, not in ``core/session.py``, because they subclass builtins (``deque``,
``frozenset``, ``dict``), which mypyc cannot compile; ``core/session.py`` is compiled
(``iotbroker/build.py``) and this module stays interpreted.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class _Unused(deque[Any]):
    """A shared empty placeholder; adding to it is a bug (replace it first)."""

    def append(self, item: Any) -> None:
        raise AssertionError("shared empty placeholder: create a real container first")

    appendleft = extend = extendleft = append


class _NoIds(frozenset[int]):
    """A shared empty set placeholder (frozen: adding to it fails loudly)."""


class _NoEntries(dict[Any, Any]):
    """A shared empty mapping placeholder; writing to it is a bug (replace it first:
    an empty dict is 64 bytes, two per idle connection's session, issue 19)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        raise AssertionError("shared empty placeholder: create a real dict first")


#: The queue and the re-send list of a session that has none.
NO_QUEUE: deque[Any] = _Unused()
NO_RESEND: deque[Any] = _Unused()
#: The inbound QoS 2 ids of a session that holds none.
NO_IDS: frozenset[int] = _NoIds()
#: The subscriptions and the in-flight window of a session that has none.
NO_SUBSCRIPTIONS: dict[Any, Any] = _NoEntries()
NO_INFLIGHT: dict[Any, Any] = _NoEntries()
