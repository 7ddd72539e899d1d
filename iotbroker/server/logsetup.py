"""Log set-up from the ``logging`` section: text or JSON lines, a level per module."""

from __future__ import annotations

import json
import logging
import sys

from iotbroker.config import LoggingConfig

#: Fields the broker attaches to records about one connection (``extra=``).
_CONNECTION_FIELDS = ("conn_id", "client_id", "peer")


class TextFormatter(logging.Formatter):
    """``time level logger: message`` plus ``[conn N]`` for connection records."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        conn_id = getattr(record, "conn_id", None)
        return text if conn_id is None else f"{text} [conn {conn_id}]"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _CONNECTION_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(config: LoggingConfig) -> None:
    """Configure the root logger once (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    for name, level in config.levels.items():
        logging.getLogger(name).setLevel(level.upper())
