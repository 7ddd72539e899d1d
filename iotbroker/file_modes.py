"""Warn when a secret file (TLS private key, password file) is open to other local users.

Like ssh refusing a private key that is "too open", but a warning: the broker still
starts (refusing would turn a permissions slip into an outage). A file is *exposed*
when its mode grants anything to group or others (``mode & 0o077``; ssh's rule for
private keys); the fix is ``chmod 600 FILE``.

Synchronous, standard library only, imports nothing of ours, so that every room that
reads a secret file (``server/`` for TLS keys, ``auth/`` for the password file) can
share it. On Windows (no POSIX modes) it never warns.
"""

from __future__ import annotations

import logging
import os
import stat

__all__ = ["exposed_mode", "exposure_message", "warn_if_exposed"]

log = logging.getLogger("iotbroker.security")

#: Permission bits a secret file must not have: anything for group or others.
EXPOSED_BITS = 0o077


def exposed_mode(path: str) -> int | None:
    """The permission bits of ``path`` if group or others have any access, else None.

    None too when the file cannot be stat'ed (whoever opens it reports that) and on
    Windows. Follows symbolic links: the target's mode is what protects the secret.
    """
    if os.name == "nt":
        return None
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & EXPOSED_BITS else None


def exposure_message(path: str, what: str, mode: int) -> str:
    """``what`` 'PATH' is readable by group and others (mode 0644): run chmod 600 'PATH'."""
    who = [name for name, bits in (("group", 0o070), ("others", 0o007)) if mode & bits]
    access = "readable" if mode & 0o044 else "accessible"
    return (f"{what} {path!r} is {access} by {' and '.join(who)} (mode {mode:04o}); "
            f"only the broker's user should read it: run chmod 600 {path!r}")


def warn_if_exposed(path: str, what: str, logger: logging.Logger | None = None) -> bool:
    """Log one WARNING if ``path`` is open to group or others; True if it warned.

    ``what`` names the file for the operator, e.g. ``"TLS private key of listener
    'tls'"`` or ``"password file"``.
    """
    mode = exposed_mode(path)
    if mode is None:
        return False
    (logger or log).warning("%s", exposure_message(path, what, mode))
    return True
