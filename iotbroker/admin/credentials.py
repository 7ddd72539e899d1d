"""Who is calling the admin API: password-file admins, hashed API keys, dashboard logins.

* HTTP Basic with a user of ``auth.password_file`` listed in ``admin.users`` (a user of
  the file who is not listed is refused with 403, an unknown user or a wrong password
  with 401). PBKDF2 runs in a worker thread; a verified password is remembered by the
  password file, as for MQTT logins.
* ``Authorization: Bearer NAME:KEY`` (or Basic ``NAME``/``KEY``) with a key of
  ``admin.api_keys_file``: lines ``NAME:$sha512$SALT$HASH`` (``iotbroker passwd FILE NAME
  --generate`` writes them); only the hash is stored.
* The dashboard's login form exchanges the same credentials for a random session token
  in an HttpOnly, SameSite=Strict cookie (8 hours). Requests that change something with
  that cookie must also carry ``X-Requested-With`` (a cross-site form cannot set it).
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

from iotbroker.auth.passwords import OK, PasswordFile

#: Name of the dashboard's session cookie.
COOKIE = "iotbroker_admin"
#: Lifetime of a dashboard session (seconds).
SESSION_SECONDS = 8 * 3600
#: At most this many dashboard sessions are kept (the oldest go first).
MAX_SESSIONS = 1000


class Limiter(Protocol):
    """Failed logins per key, an address or a username (the broker passes two
    ``FailureLimiter`` with the ``auth.failed_login_*`` settings): a blocked address or
    username gets 429 without a check."""

    def blocked(self, key: str, now: float) -> bool: ...

    def failed(self, key: str, now: float) -> bool: ...

    def succeeded(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: ``name`` for logs, ``kind`` user / api_key / open."""

    name: str
    kind: str


class Denied(Exception):
    """Authentication failed: ``status`` 401 (who are you) or 403 (not an admin)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_authorization(header: str) -> tuple[str, str] | None:
    """``(name, secret)`` of a Basic or Bearer ``NAME:KEY`` header; None if malformed."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
    elif scheme.lower() != "bearer":
        return None
    name, sep, secret = value.partition(":")
    if not sep or not name:
        return None
    return name, secret


class Credentials:
    """The rules above, over the password file the broker has loaded."""

    def __init__(self, users: tuple[str, ...], api_keys: PasswordFile | None) -> None:
        self.users = frozenset(users)
        self.api_keys = api_keys
        self._sessions: dict[str, tuple[Identity, float]] = {}

    @property
    def open(self) -> bool:
        """No credentials configured (allowed on loopback only, config.py checks)."""
        return not self.users and self.api_keys is None

    def needs_thread(self, passwords: PasswordFile | None, name: str, secret: str) -> bool:
        """True when :meth:`check` would run PBKDF2 (run it off the event loop)."""
        if self.api_keys is not None and name in self.api_keys:
            return False
        return passwords is not None and passwords.needs_hashing(name, secret.encode())

    def guessable(self, passwords: PasswordFile | None, name: str) -> bool:
        """False for an API key's name and a user with a generated (``$sha512$``)
        secret: nobody guesses those, so a per-username failed-login limit would only
        let anyone lock them out (MQTT logins exempt them too, auth_service.gate)."""
        if self.api_keys is not None and name in self.api_keys:
            return False
        return passwords is None or not passwords.is_cheap(name)

    def check(self, passwords: PasswordFile | None, name: str, secret: str) -> Identity:
        """The identity for ``name``/``secret``, or :class:`Denied`."""
        if self.api_keys is not None and name in self.api_keys:
            if self.api_keys.verify(name, secret.encode()) == OK:
                return Identity(name, "api_key")
            raise Denied(401, "wrong API key")
        if passwords is None or name not in passwords:
            if passwords is not None:
                passwords.verify(name, secret.encode())  # same time as a known user
            raise Denied(401, "unknown user or wrong password")
        if passwords.verify(name, secret.encode()) != OK:
            raise Denied(401, "unknown user or wrong password")
        if name not in self.users:
            raise Denied(403, f"user {name!r} is not an admin (admin.users)")
        return Identity(name, "user")

    # ---------------------------------------------------------- dashboard sessions
    def start_session(self, identity: Identity, now: float | None = None) -> str:
        now = time.time() if now is None else now
        token = secrets.token_urlsafe(32)
        sessions = self._sessions
        if len(sessions) >= MAX_SESSIONS:
            del sessions[next(iter(sessions))]
        sessions[token] = (identity, now + SESSION_SECONDS)
        return token

    def session(self, token: str, now: float | None = None) -> Identity | None:
        now = time.time() if now is None else now
        for known, (identity, until) in list(self._sessions.items()):
            if until <= now:
                del self._sessions[known]
            elif hmac.compare_digest(known, token):
                return identity
        return None

    def end_session(self, token: str) -> None:
        self._sessions.pop(token, None)
