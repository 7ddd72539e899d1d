"""Topic and client-id templates, and MQTT topic-filter matching (MQTT 5.0 §4.7).

Templates use ``str.format`` placeholders: ``{id}`` (device number in its group),
``{site}`` (``id % sites``), ``{group}``, ``{run}`` (a token unique to the run) and, for
gateways, ``{child}``. Format specs work too: ``sensor-{id:05d}``.
"""

from __future__ import annotations

import string

_FORMATTER = string.Formatter()


def render(template: str, **values: object) -> str:
    """Fill a template's placeholders."""
    return template.format(**values)


def derive_filter(template: str, run: str, group: str) -> str:
    """A filter matching every topic of ``template``: per-device levels become ``+``.

    ``site/{site}/device/{id}/temperature`` -> ``site/+/device/+/temperature``; levels
    holding only ``{run}`` or ``{group}`` are filled in.
    """
    levels = []
    for level in template.split("/"):
        names = {n for _lit, n, _s, _c in _FORMATTER.parse(level) if n is not None}
        if names - {"run", "group"}:
            levels.append("+")
        else:
            levels.append(level.format(run=run, group=group))
    return "/".join(levels)


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (``+``, ``#``, and the ``$`` rule)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    f = topic_filter.split("/")
    t = topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


def matches_any(filters: tuple[str, ...] | list[str], topic: str) -> bool:
    """Whether any of ``filters`` matches ``topic``."""
    return any(matches(f, topic) for f in filters)
