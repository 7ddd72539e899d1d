"""What happens when a store is corrupt or unreadable: fail loudly, or move it aside.

Rules of this room: one decision, one path. A store that finds corruption (a RocksDB
file it cannot read when opening, or a record it cannot decode while restoring)
calls :func:`recover` with the reason, and nothing else decides:

* ``storage.on_corruption: fail`` (the default): :class:`StorageError` naming the path,
  the reason and the remedies; the directory is left untouched.
* ``storage.on_corruption: move-aside``: the store is closed, the directory renamed to
  ``<path>.corrupt-<YYYYmmdd-HHMMSS>`` (``-<n>`` appended if that exists), a warning is
  logged on ``iotbroker.storage``, and the caller starts with an empty store there.

Corruption found later, while the broker runs (reading one session's queued messages
on resume, or a write), always raises: a running store is never moved away under the
broker. No database import here: the store passes its own ``close``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from iotbroker.errors import StorageError
from iotbroker.storage.base import OnCorruption

__all__ = ["corrupt_error", "move_aside", "recover"]

log = logging.getLogger("iotbroker.storage")


def corrupt_error(path: str, reason: str) -> StorageError:
    """The error for a corrupt store that is not (or cannot be) moved aside."""
    return StorageError(
        f"the store at {path} is corrupt or unreadable ({reason}). Restore it from "
        "a backup, move it aside to start empty, or set storage.on_corruption: "
        "move-aside to do that automatically."
    )


def move_aside(path: str, reason: str) -> str:
    """Rename the (closed) store directory to ``<path>.corrupt-<timestamp>``, log a
    warning, and return the new name. Raises :class:`StorageError` if it cannot."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.exists(target):
        target = f"{path}.corrupt-{stamp}-{n}"
        n += 1
    try:
        os.rename(path, target)
    except OSError as exc:
        raise StorageError(
            f"the store at {path} is corrupt ({reason}) and could not be moved "
            f"aside to {target}: {exc}"
        ) from None
    log.warning(
        "the store at %s is corrupt (%s); moved it to %s and starting with an empty store",
        path,
        reason,
        target,
    )
    return target


def recover(path: str, reason: str, on_corruption: OnCorruption, close: Callable[[], None]) -> str:
    """The one corruption path: raise (``fail``), or ``close()`` the store and move its
    directory aside (``move-aside``); returns where it went. The caller then opens an
    empty store at ``path``."""
    if on_corruption != "move-aside":
        raise corrupt_error(path, reason)
    close()
    return move_aside(path, reason)
