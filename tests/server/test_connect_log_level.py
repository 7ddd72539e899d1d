"""The "connected from" line's level check (server/connecting.py ``info_enabled``,
issue 19) answers as ``Logger.isEnabledFor(logging.INFO)`` on the broker's logger
whatever changed the level since the broker started: ``setLevel`` on it, on the root
(what pytest's ``caplog.set_level`` and the broker's logging set-up do),
``logging.disable`` and a logger disabled by a ``dictConfig``."""

from __future__ import annotations

import logging

from iotbroker.server.connecting import info_enabled, log, logger_cache


def test_info_enabled_follows_every_level_change() -> None:
    cache = logger_cache(log)  # taken once, as Connecting does at start
    root = logging.getLogger()
    saved = (log.level, root.level, log.disabled, logging.root.manager.disable)
    try:
        checks = []
        for change in (
            lambda: log.setLevel(logging.WARNING),
            lambda: log.setLevel(logging.INFO),
            lambda: log.setLevel(logging.NOTSET),
            lambda: root.setLevel(logging.WARNING),
            lambda: root.setLevel(logging.DEBUG),
            lambda: logging.disable(logging.INFO),
            lambda: logging.disable(logging.NOTSET),
            lambda: setattr(log, "disabled", True),
            lambda: setattr(log, "disabled", False),
        ):
            change()
            first = info_enabled(cache)  # before the logger has cached an answer
            checks.append((first, info_enabled(cache), log.isEnabledFor(logging.INFO)))
        assert all(a == b == c for a, b, c in checks), checks
        # Each value was seen at least once: the changes did change the answer.
        assert {c for _, _, c in checks} == {True, False}
    finally:
        log.setLevel(saved[0])
        root.setLevel(saved[1])
        log.disabled = saved[2]
        logging.disable(saved[3])
