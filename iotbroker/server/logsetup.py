"""Log set-up from the ``logging`` section: text or JSON lines, a level per module.

Lines about single connections (connected, disconnected, lost) come at the rate
clients connect, so they have a fast path, :func:`log_connection`: when the broker's
own handler is the only one in play it formats the line itself (the same text or JSON
as the formatters below) without a ``LogRecord`` (a stdlib record costs ~10-16 µs here)
and writes them in batches, at most 0.1 s late (ordinary records, so every warning and
error, and exit write what is pending first; a ``kill -9`` can lose the last 0.1 s of
connection lines). Anything else (other handlers, filters, pytest's log capture) gets an
ordinary record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Protocol

from iotbroker.config import LoggingConfig
from iotbroker.server.turn import FLAGS, LogFlags

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: A worker of ``--workers`` (server/workers.py) says which one it is on every line.
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)-7s [w{worker}] %(name)s: %(message)s"

#: Connection lines wait at most this long (seconds) or for this many more before they
#: are written; any ordinary record (all warnings and errors) and exit write them first.
FAST_LINES_DELAY = 0.1
FAST_LINES_MAX = 256

#: Fields the broker attaches to records about one connection (``extra=``): who the
#: client is (issue 12: connect, disconnect, refusal and ACL-denial lines name the
#: username and the TLS client certificate's subject).
_CONNECTION_FIELDS = ("conn_id", "client_id", "peer", "username", "cert")


# The per-packet log switch is a native object of the compiled server/turn.py (issue
# 19: the connection path reads ``FLAGS.packets`` per read and per write; on an
# interpreted object that is a look-up by name each time). Set here, as before.
__all__ = ["FLAGS", "LogFlags"]


class _Clock:
    """Log time text, the date part formatted once per second (``time.strftime`` and
    ``localtime`` are a good part of a record's cost)."""

    __slots__ = ("_pattern", "_second", "_text")

    def __init__(self, pattern: str) -> None:
        self._pattern = pattern
        self._second = -1
        self._text = ""

    def text(self, second: int) -> str:
        if second != self._second:
            self._second = second
            self._text = time.strftime(self._pattern, time.localtime(second))
        return self._text


class _Worker:
    """Which worker of ``--workers`` this process is (None: not a worker); set by
    :func:`set_worker` before :func:`setup_logging`."""

    index: int | None = None


_WORKER = _Worker()


def set_worker(index: int | None) -> None:
    """This process is worker ``index`` of ``--workers``: every log line says so
    (text: ``[w3]`` before the logger name; JSON: a ``worker`` field), so the
    supervisor's output, which interleaves all workers, tells them apart."""
    _WORKER.index = index


_TEXT_CLOCK = _Clock("%Y-%m-%d %H:%M:%S")  # + ",mmm": logging.Formatter's default
_JSON_CLOCK = _Clock("%Y-%m-%dT%H:%M:%S")


_ZONE_CLOCK = _Clock("%z")  # +0000


def _utc_offset(second: int) -> str:
    """The local UTC offset at ``second`` as ISO 8601 writes it: ``+00:00``, ``-05:30``."""
    zone = _ZONE_CLOCK.text(second)
    return f"{zone[:3]}:{zone[3:]}"


def json_stamp(second: int, millis: int) -> str:
    """ISO 8601 local time with milliseconds and offset: ``2026-12-06T02:15:03.123+00:00``
    (issue 18: the same precision as the text format, and a timezone a log shipper can
    read without knowing the host's)."""
    return f"{_JSON_CLOCK.text(second)}.{millis:03d}{_utc_offset(second)}"


def _json_line(stamp: str, level: str, logger: str, message: str,
               fields: dict[str, object], exception: str | None = None) -> str:
    """One JSON log line; connection fields that are None are left out."""
    entry: dict[str, object] = {"time": stamp, "level": level, "logger": logger,
                                "message": message}
    if _WORKER.index is not None:
        entry["worker"] = _WORKER.index
    for key in _CONNECTION_FIELDS:
        value = fields.get(key)
        if value is not None:
            entry[key] = value
    if exception:
        entry["exception"] = exception
    return json.dumps(entry, ensure_ascii=False)


def connection_tag(fields: dict[str, object]) -> str:
    """`` [conn N]``, with ``username='alice'`` and ``cert='CN=dev-17,O=Fleet'`` when the
    client has them (``repr``: a username cannot forge a line break or a field)."""
    username = fields.get("username")
    cert = fields.get("cert")
    conn_id = fields.get("conn_id")
    if username is None and cert is None:
        return f" [conn {conn_id}]"
    parts = [] if conn_id is None else [f"conn {conn_id}"]
    if username is not None:
        parts.append(f"username={username!r}")
    if cert is not None:
        parts.append(f"cert={cert!r}")
    return f" [{' '.join(parts)}]"


class TextFormatter(logging.Formatter):
    """``time level logger: message`` plus ``[conn N username=... cert=...]`` for
    connection records (:func:`connection_tag`)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{_TEXT_CLOCK.text(int(record.created))},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = record.__dict__
        if fields.get("conn_id") is None and fields.get("username") is None \
                and fields.get("cert") is None:
            return text
        return text + connection_tag(fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        return _json_line(
            json_stamp(int(record.created), int(record.msecs)), record.levelname, record.name,
            record.getMessage(), record.__dict__,
            self.formatException(record.exc_info) if record.exc_info else None)


class BrokerHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The broker's stderr handler, with :meth:`write_connection_line` for the fast path."""

    def __init__(self, json_lines: bool) -> None:
        super().__init__(sys.stderr)
        self.json_lines = json_lines
        worker = _WORKER.index
        #: ``[wN] `` before the logger name of a worker's text lines (else empty).
        self.worker_tag = "" if worker is None else f"[w{worker}] "
        self.setFormatter(JsonFormatter() if json_lines else TextFormatter(
            TEXT_FORMAT if worker is None else WORKER_TEXT_FORMAT.format(worker=worker)))
        #: Fast-path lines not written yet: they go out together at most
        #: FAST_LINES_DELAY later (one write for a burst of connects, not one per line).
        self._pending: list[str] = []
        #: The broker's event loop (:func:`bind_loop`); without one, lines are written at once.
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Connection lines the stream refused (a full disk, a closed pipe): dropped.
        self.lines_lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        """An ordinary record: pending fast-path lines first, so the order holds."""
        if self._pending:
            self._write_pending()
        super().emit(record)

    def flush(self) -> None:
        """Also writes pending lines (``logging.shutdown`` calls this at exit)."""
        if self._pending:
            self._write_pending()
        super().flush()

    def _write_pending(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            pending, self._pending = self._pending, []
            if pending:
                try:
                    self.stream.write("".join(pending))
                    super().flush()
                except (OSError, ValueError):
                    # The log's file system is full (ENOSPC, EFBIG), its reader is gone
                    # (EPIPE), or the stream is closed: these lines are lost, as
                    # ``logging.Handler.handleError`` loses an ordinary record's. A log
                    # write never raises into the broker: the caller may be closing
                    # connections after a failed storage write (on the same full disk).
                    self.lines_lost += len(pending)

    def write_connection_line(self, level: int, logger: str, message: str,
                              fields: dict[str, object]) -> None:
        """Write what ``emit`` would for a record with these connection fields."""
        now = time.time_ns()
        second = now // 1_000_000_000
        if self.json_lines:
            line = _json_line(json_stamp(second, now % 1_000_000_000 // 1_000_000),
                              logging.getLevelName(level), logger, message, fields)
        else:
            tag = (f" [conn {fields['conn_id']}]"
                   if fields["username"] is None and fields["cert"] is None
                   else connection_tag(fields))
            line = (f"{_TEXT_CLOCK.text(second)},{now % 1_000_000_000 // 1_000_000:03d} "
                    f"{logging.getLevelName(level):<7} {self.worker_tag}{logger}: "
                    f"{message}{tag}")
        pending = self._pending
        pending.append(line + self.terminator)
        if len(pending) == 1:
            if self.loop is None:
                self._write_pending()
            else:
                self.loop.call_later(FAST_LINES_DELAY, self._write_pending)
        elif len(pending) >= FAST_LINES_MAX:
            self._write_pending()


def connection_fields(conn: ConnectionFields) -> dict[str, object]:
    """The ``extra=`` fields of a log record about ``conn``: ``conn_id``, ``client_id``,
    ``peer``, ``username`` (None: anonymous or not known yet) and ``cert`` (the TLS
    client certificate's subject, None without one)."""
    return {"conn_id": conn.conn_id, "client_id": conn.client_id or None, "peer": conn.peer,
            "username": conn.username, "cert": conn.cert_subject}


def identity_fields(client_id: str | None, username: str | None,
                    cert: str | None = None) -> dict[str, object]:
    """``extra=`` for a line about a client whose connection is not at hand (a will
    firing after the connection ended, a queued message delivered later): the same
    ``username``/``cert`` text and JSON fields as :func:`connection_fields`, without a
    ``conn_id``. With a connection, use ``proto.log_extra()`` or :func:`log_connection`."""
    return {"conn_id": None, "client_id": client_id or None, "peer": None,
            "username": username, "cert": cert}


class ConnectionFields(Protocol):
    """What a log line about one connection carries as fields (ClientProtocol has them)."""

    conn_id: int
    client_id: str

    @property
    def peer(self) -> str: ...

    @property
    def username(self) -> str | None: ...

    @property
    def cert_subject(self) -> str | None: ...


def log_connection(logger: logging.Logger, level: int, conn: ConnectionFields, message: str,
                   *args: object) -> None:
    """Log one line about a connection, with its ``conn_id``, ``client_id`` and ``peer``
    as fields; fast when only the broker's handler would see it."""
    if not logger.isEnabledFor(level):
        return
    handlers = logging.root.handlers
    handler = handlers[0] if len(handlers) == 1 else None
    fields = connection_fields(conn)
    if (not isinstance(handler, BrokerHandler) or logger.filters or handler.filters
            or level < handler.level or not _propagates_to_root(logger)):
        logger.log(level, message, *args, extra=fields)
        return
    handler.write_connection_line(level, logger.name, message % args if args else message,
                                  fields)


def bind_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Let the broker's handler delay connection lines on ``loop`` (call from its thread)."""
    for handler in logging.root.handlers:
        if isinstance(handler, BrokerHandler):
            handler.loop = loop


def _propagates_to_root(logger: logging.Logger) -> bool:
    """The line reaches the root's handler and no other (``logger`` and its ancestors
    below the root have no handlers and all propagate)."""
    current: logging.Logger | None = logger
    while current is not None and current is not logging.root:
        if current.handlers or not current.propagate:
            return False
        current = current.parent
    return True


def setup_logging(config: LoggingConfig) -> None:
    """Configure the root logger once (stderr)."""
    # Nothing here logs file names, line numbers, threads or processes: skip gathering them.
    logging._srcfile = None  # the logging HOWTO's "Optimization" section
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BrokerHandler(json_lines=config.format == "json")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    for name, level in config.levels.items():
        logging.getLogger(name).setLevel(level.upper())
    FLAGS.packets = logging.getLogger("iotbroker.packets").isEnabledFor(logging.DEBUG)
