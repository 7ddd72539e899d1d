"""Password file: who may connect with a username and password.

Format (one user per line; blank lines and lines starting with ``#`` are ignored)::

    USERNAME:$pbkdf2-sha512$ITERATIONS$SALT$HASH
    USERNAME:$pbkdf2-sha512$ITERATIONS$SALT$HASH:$scram-sha-256$ITERATIONS$SALT$STOREDKEY$SERVERKEY

* ``USERNAME`` is any non-empty UTF-8 text without ``:``, NUL or line breaks.
* ``ITERATIONS`` is the PBKDF2 iteration count (decimal, 1000–10,000,000; new
  passwords get :data:`DEFAULT_ITERATIONS`, 210,000, OWASP's 2023 figure for
  PBKDF2-HMAC-SHA512).
* ``SALT`` is the salt (16 random bytes for new passwords), standard base64 with padding.
* ``HASH`` is PBKDF2-HMAC-SHA512(password, salt, iterations), 64 bytes, standard base64.
* The optional second field holds the user's SCRAM-SHA-256 keys (RFC 5802 §3, for
  MQTT 5.0 enhanced authentication, :mod:`iotbroker.auth.scram`): its own iteration
  count (4096–10,000,000; new entries get 4096, RFC 7677's minimum), its own salt,
  StoredKey and ServerKey (32 bytes each), all base64. A line without it is valid
  (the file format of earlier versions): that user can connect with a password but
  not with SCRAM. Base64 has no ``:``, so the fields split unambiguously.

The file is written with ``iotbroker passwd FILE USER`` (see :func:`set_password`,
:func:`delete_user`), which writes both fields; rewrites are atomic (temporary file +
rename) and new files are created mode 0600.

Checking a password costs one PBKDF2 run (about 0.1–0.2 s at 210,000 iterations), also
for an unknown user, so that response time does not tell whether a username exists.
``hashlib.pbkdf2_hmac`` releases the GIL: the server should run :meth:`PasswordFile.check`
in a thread pool rather than on the event loop. Successful checks are remembered (keyed
by an HMAC under a per-process random key, never the password itself) so a device that
reconnects with the same password pays the PBKDF2 cost only once per loaded file.
SCRAM needs no PBKDF2 on the server (the client computes it).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable

from iotbroker.auth import scram
from iotbroker.auth.scram import ScramCredentials
from iotbroker.errors import ConfigError

__all__ = [
    "DEFAULT_ITERATIONS",
    "PasswordFile",
    "PasswordFileAuthenticator",
    "delete_user",
    "hash_password",
    "scram_field",
    "set_password",
]

SCHEME = "pbkdf2-sha512"
SCRAM_SCHEME = "scram-sha-256"
DEFAULT_ITERATIONS = 210_000
MIN_ITERATIONS = 1_000
MAX_ITERATIONS = 10_000_000
SALT_BYTES = 16
HASH_BYTES = 64
#: Successful checks remembered per loaded file (least recently used dropped first).
CACHE_SIZE = 100_000


_FORMAT = "is not USERNAME:$pbkdf2-sha512$ITERATIONS$SALT$HASH[:$scram-sha-256$...]"


class _Entry:
    __slots__ = ("digest", "iterations", "line", "salt", "scram")

    def __init__(self, iterations: int, salt: bytes, digest: bytes, line: str,
                 scram_keys: ScramCredentials | None = None) -> None:
        self.iterations = iterations
        self.salt = salt
        self.digest = digest
        self.line = line
        self.scram = scram_keys


def hash_password(password: bytes, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> str:
    """The ``$pbkdf2-sha512$...`` text for ``password`` (a fresh random salt by default)."""
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be in {MIN_ITERATIONS}–{MAX_ITERATIONS}")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password, salt, iterations)
    return (f"${SCHEME}${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def scram_field(credentials: ScramCredentials) -> str:
    """The ``$scram-sha-256$ITERATIONS$SALT$STOREDKEY$SERVERKEY`` text of a line."""
    b64 = base64.b64encode
    return (f"${SCRAM_SCHEME}${credentials.iterations}${b64(credentials.salt).decode()}"
            f"${b64(credentials.stored_key).decode()}${b64(credentials.server_key).decode()}")


def _check_username(username: str) -> None:
    if not username or any(c in username for c in ":\0\r\n"):
        raise ValueError(f"bad username {username!r}: must be non-empty, without ':', NUL "
                         "or line breaks")


def _parse_line(text: str, where: str) -> tuple[str, _Entry]:
    username, sep, encoded = text.partition(":")
    if not sep or not username:
        raise ConfigError(where, text, _FORMAT)
    fields = encoded.split(":")
    if len(fields) > 2:
        raise ConfigError(where, text, _FORMAT)
    parts = fields[0].split("$")
    if len(parts) != 5 or parts[0] != "":
        raise ConfigError(where, text, _FORMAT)
    _, scheme, iterations_text, salt_text, digest_text = parts
    if scheme != SCHEME:
        raise ConfigError(where, scheme, f"is not a supported hash scheme (only {SCHEME})")
    if not iterations_text.isdigit() or not (
        MIN_ITERATIONS <= int(iterations_text) <= MAX_ITERATIONS
    ):
        raise ConfigError(where, iterations_text,
                          f"is not an iteration count in {MIN_ITERATIONS}–{MAX_ITERATIONS}")
    try:
        salt = base64.b64decode(salt_text, validate=True)
        digest = base64.b64decode(digest_text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(where, text, "has a salt or hash that is not base64") from None
    if not salt:
        raise ConfigError(where, salt_text, "is an empty salt")
    if len(digest) != HASH_BYTES:
        raise ConfigError(where, digest_text,
                          f"is not a {HASH_BYTES}-byte PBKDF2-SHA512 hash")
    scram_keys = _parse_scram(fields[1], where) if len(fields) == 2 else None
    return username, _Entry(int(iterations_text), salt, digest, text, scram_keys)


def _parse_scram(field: str, where: str) -> ScramCredentials:
    parts = field.split("$")
    if len(parts) != 6 or parts[0] != "" or parts[1] != SCRAM_SCHEME:
        raise ConfigError(where, field,
                          "is not $scram-sha-256$ITERATIONS$SALT$STOREDKEY$SERVERKEY")
    _, _, iterations_text, *encoded = parts
    if not iterations_text.isdigit() or not (
        scram.MIN_ITERATIONS <= int(iterations_text) <= scram.MAX_ITERATIONS
    ):
        raise ConfigError(where, iterations_text, "is not a SCRAM iteration count in "
                          f"{scram.MIN_ITERATIONS}–{scram.MAX_ITERATIONS}")
    try:
        salt, stored_key, server_key = (base64.b64decode(v, validate=True) for v in encoded)
    except (binascii.Error, ValueError):
        raise ConfigError(where, field, "has a SCRAM salt or key that is not base64") from None
    if not salt:
        raise ConfigError(where, encoded[0], "is an empty SCRAM salt")
    if len(stored_key) != scram.KEY_BYTES or len(server_key) != scram.KEY_BYTES:
        raise ConfigError(where, field, f"has SCRAM keys that are not {scram.KEY_BYTES} bytes")
    return ScramCredentials(salt, int(iterations_text), stored_key, server_key)


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(path, path, f"is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(path, path, f"cannot be read: {exc.strerror or exc}") from None


def _is_blank_or_comment(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


class PasswordFile:
    """A loaded password file. Immutable: reload by calling :meth:`load` again."""

    def __init__(self, entries: dict[str, _Entry], source: str = "<memory>") -> None:
        self._entries = entries
        self.source = source
        self._cache_key = secrets.token_bytes(32)
        self._verified: OrderedDict[str, bytes] = OrderedDict()
        # check() may run in worker threads (the broker keeps PBKDF2 off its event loop).
        self._lock = threading.Lock()
        # An unknown user is checked against this, so it costs the same PBKDF2 time.
        self._dummy = _Entry(DEFAULT_ITERATIONS, secrets.token_bytes(SALT_BYTES),
                             secrets.token_bytes(HASH_BYTES), "")
        # Keys the fake SCRAM salts of unknown users: stable while the file's entries
        # are, unguessable without reading the file (it hashes every salt and key).
        digest = hashlib.sha256(b"iotbroker scram mock salts\0")
        for entry in entries.values():
            digest.update(entry.line.encode() + b"\n")
        self.scram_mock_secret = digest.digest()

    @classmethod
    def load(cls, path: str) -> PasswordFile:
        """Read ``path``; a malformed line raises :class:`ConfigError` naming ``file:line``."""
        entries: dict[str, _Entry] = {}
        for number, line in enumerate(_read_lines(path), start=1):
            if _is_blank_or_comment(line):
                continue
            where = f"{path}:{number}"
            username, entry = _parse_line(line.strip(), where)
            if username in entries:
                raise ConfigError(where, username, "is listed twice")
            entries[username] = entry
        return cls(entries, path)

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "<memory>") -> PasswordFile:
        """Parse password lines held in memory (tests, embedding)."""
        entries: dict[str, _Entry] = {}
        for number, line in enumerate(lines, start=1):
            if not _is_blank_or_comment(line):
                username, entry = _parse_line(line.strip(), f"{source}:{number}")
                entries[username] = entry
        return cls(entries, source)

    def __contains__(self, username: object) -> bool:
        return username in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def usernames(self) -> list[str]:
        return list(self._entries)

    def scram_credentials(self, username: str) -> ScramCredentials | None:
        """The user's SCRAM-SHA-256 keys; None for an unknown user or a line without them."""
        entry = self._entries.get(username)
        return entry.scram if entry is not None else None

    def check(self, username: str, password: bytes) -> bool:
        """True if ``password`` is ``username``'s password. Timing-safe; see module notes."""
        entry = self._entries.get(username)
        memo = hmac.new(self._cache_key, password, hashlib.sha256)
        memo.update(b"\0" + (entry.line if entry else "").encode())
        memo_digest = memo.digest()
        if entry is not None:
            with self._lock:
                cached = self._verified.get(username)
                if cached is not None and hmac.compare_digest(cached, memo_digest):
                    self._verified.move_to_end(username)
                    return True
        target = entry if entry is not None else self._dummy
        computed = hashlib.pbkdf2_hmac("sha512", password, target.salt, target.iterations)
        ok = hmac.compare_digest(computed, target.digest) and entry is not None
        if ok:
            with self._lock:
                self._verified[username] = memo_digest
                self._verified.move_to_end(username)
                while len(self._verified) > CACHE_SIZE:
                    self._verified.popitem(last=False)
        return ok


class PasswordFileAuthenticator:
    """:class:`~iotbroker.auth.base.Authenticator` over an optional password file.

    * No username: allowed iff ``allow_anonymous``.
    * A username and a password file: allowed iff the password matches.
    * A username and no password file: allowed iff ``allow_anonymous`` (the username
      is then *not* verified; ACL ``user`` sections should not be trusted).
    """

    def __init__(self, passwords: PasswordFile | None, allow_anonymous: bool) -> None:
        self.passwords = passwords
        self.allow_anonymous = allow_anonymous

    def authenticate(self, client_id: str, username: str | None,
                     password: bytes | None) -> bool:
        if username is None:
            return self.allow_anonymous
        if self.passwords is None:
            return self.allow_anonymous
        return self.passwords.check(username, password if password is not None else b"")


def _rewrite(path: str, lines: list[str]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    fd, tmp = tempfile.mkstemp(prefix=".passwd-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(line + "\n" for line in lines)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _existing_lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    lines = _read_lines(path)
    for number, line in enumerate(lines, start=1):  # refuse to rewrite a broken file
        if not _is_blank_or_comment(line):
            _parse_line(line.strip(), f"{path}:{number}")
    return lines


def set_password(path: str, username: str, password: bytes | str,
                 iterations: int = DEFAULT_ITERATIONS,
                 scram_iterations: int | None = scram.DEFAULT_ITERATIONS) -> bool:
    """Add ``username`` or change its password; creates the file (mode 0600) if missing.

    The line gets the PBKDF2 hash and, unless ``scram_iterations`` is None, the
    SCRAM-SHA-256 keys (raises :class:`ValueError` for a password SCRAM cannot use:
    not UTF-8, or refused by SASLprep, such as one with control characters).
    Returns True if the user was added, False if an existing password was changed.
    Comments and the order of other users are kept.
    """
    _check_username(username)
    if isinstance(password, str):
        password = password.encode("utf-8")
    new_line = f"{username}:{hash_password(password, iterations)}"
    if scram_iterations is not None:
        try:
            keys = scram.scram_credentials(password, iterations=scram_iterations)
        except ValueError as exc:
            raise ValueError(
                f"cannot make SCRAM-SHA-256 keys: {exc} "
                "(iotbroker passwd --no-scram stores the password without them)"
            ) from None
        new_line += f":{scram_field(keys)}"
    lines = _existing_lines(path)
    added = True
    for i, line in enumerate(lines):
        if not _is_blank_or_comment(line) and line.strip().partition(":")[0] == username:
            lines[i] = new_line
            added = False
            break
    if added:
        lines.append(new_line)
    _rewrite(path, lines)
    return added


def delete_user(path: str, username: str) -> None:
    """Remove ``username``; raises :class:`KeyError` if it is not in the file."""
    if not os.path.exists(path):
        raise KeyError(username)
    lines = _existing_lines(path)
    kept = [line for line in lines
            if _is_blank_or_comment(line) or line.strip().partition(":")[0] != username]
    if len(kept) == len(lines):
        raise KeyError(username)
    _rewrite(path, kept)
