"""Password file: who may connect with a username and password.

Format (one user per line; blank lines and lines starting with ``#`` are ignored)::

    USERNAME:$pbkdf2-sha512$ITERATIONS$SALT$HASH
    USERNAME:$pbkdf2-sha512$ITERATIONS$SALT$HASH:$scram-sha-256$ITERATIONS$SALT$STOREDKEY$SERVERKEY
    USERNAME:$sha512$SALT$HASH[:$scram-sha-256$...]

* ``$sha512$`` entries hold *generated device secrets* (``iotbroker passwd --generate``:
  32 random bytes, URL-safe base64): ``HASH`` is SHA-512(SALT || secret), one hash
  (about a microsecond). The secret's 256 bits of entropy, not an iteration count,
  protect it against a stolen file; a person-chosen password must never be stored so
  (:func:`set_password` always writes PBKDF2). These entries are checked on the
  event loop; PBKDF2 entries in a thread pool.

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

Checking a PBKDF2 password costs one PBKDF2 run (about 0.1–0.2 s at 210,000 iterations),
also for an unknown user (checked against a dummy entry with the iteration count most
PBKDF2 entries of the file have), so that response time does not tell whether a
person's username exists. A ``$sha512$`` entry answers in microseconds, so its
username's existence can be told by timing; what guards it is the secret.
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
from collections import Counter, OrderedDict
from collections.abc import Iterable

from iotbroker.auth import scram
from iotbroker.auth.scram import ScramCredentials
from iotbroker.errors import ConfigError

__all__ = [
    "DEFAULT_ITERATIONS",
    "FAST_SCHEME",
    "OK",
    "UNKNOWN_USER",
    "WRONG_PASSWORD",
    "PasswordFile",
    "PasswordFileAuthenticator",
    "delete_user",
    "generate_secret",
    "hash_password",
    "hash_secret",
    "scram_field",
    "set_password",
    "set_secret",
]

SCHEME = "pbkdf2-sha512"
#: Generated device secrets: one salted SHA-512 (the secret's entropy protects it).
FAST_SCHEME = "sha512"
#: Random bytes in a generated secret (256 bits; 43 characters of URL-safe base64).
SECRET_BYTES = 32
SCRAM_SCHEME = "scram-sha-256"
DEFAULT_ITERATIONS = 210_000
MIN_ITERATIONS = 1_000
MAX_ITERATIONS = 10_000_000
SALT_BYTES = 16
HASH_BYTES = 64
#: Successful checks remembered per loaded file (least recently used dropped first).
CACHE_SIZE = 100_000


_FORMAT = ("is not USERNAME:$pbkdf2-sha512$ITERATIONS$SALT$HASH[:$scram-sha-256$...] "
           "or USERNAME:$sha512$SALT$HASH[:$scram-sha-256$...]")

#: What :meth:`PasswordFile.verify` answers.
OK = "ok"
UNKNOWN_USER = "unknown_user"
WRONG_PASSWORD = "wrong_password"


class _Entry:
    """One user's hash; ``iterations == 0`` marks a ``$sha512$`` (generated secret) entry."""

    __slots__ = ("digest", "iterations", "line", "salt", "scram")

    def __init__(self, iterations: int, salt: bytes, digest: bytes, line: str,
                 scram_keys: ScramCredentials | None = None) -> None:
        self.iterations = iterations
        self.salt = salt
        self.digest = digest
        self.line = line
        self.scram = scram_keys

    @property
    def cheap(self) -> bool:
        return self.iterations == 0

    def compute(self, password: bytes) -> bytes:
        if self.iterations == 0:
            return hashlib.sha512(self.salt + password).digest()
        return hashlib.pbkdf2_hmac("sha512", password, self.salt, self.iterations)


def hash_password(password: bytes, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> str:
    """The ``$pbkdf2-sha512$...`` text for ``password`` (a fresh random salt by default)."""
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be in {MIN_ITERATIONS}–{MAX_ITERATIONS}")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password, salt, iterations)
    return (f"${SCHEME}${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def hash_secret(secret: bytes, salt: bytes | None = None) -> str:
    """The ``$sha512$SALT$HASH`` text for a *generated* secret (never a chosen password)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.sha512(salt + secret).digest()
    return (f"${FAST_SCHEME}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def generate_secret() -> str:
    """A new device secret: :data:`SECRET_BYTES` random bytes, URL-safe base64, no padding."""
    return secrets.token_urlsafe(SECRET_BYTES)


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
    if len(parts) >= 2 and parts[1] == FAST_SCHEME:
        if len(parts) != 4 or parts[0] != "":
            raise ConfigError(where, text, _FORMAT)
        parts.insert(2, "0")  # iterations 0 marks the cheap scheme
    if len(parts) != 5 or parts[0] != "":
        raise ConfigError(where, text, _FORMAT)
    _, scheme, iterations_text, salt_text, digest_text = parts
    if scheme not in (SCHEME, FAST_SCHEME):
        raise ConfigError(where, scheme,
                          f"is not a supported hash scheme ({SCHEME} or {FAST_SCHEME})")
    if scheme == SCHEME and (not iterations_text.isdigit() or not (
        MIN_ITERATIONS <= int(iterations_text) <= MAX_ITERATIONS
    )):
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
                          f"is not a {HASH_BYTES}-byte {scheme.upper()} hash")
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
        # An unknown user is checked against this, so it costs what a person's password
        # costs: the iteration count most PBKDF2 entries have (ties: the larger). A file
        # of generated secrets only has nothing to hide that way: a cheap dummy.
        counts = Counter(e.iterations for e in entries.values() if not e.cheap)
        dummy_iterations = max(counts, key=lambda n: (counts[n], n)) if counts else 0
        self._dummy = _Entry(dummy_iterations, secrets.token_bytes(SALT_BYTES),
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

    def scram_credentials(self, username: str) -> ScramCredentials | None:
        """The user's SCRAM-SHA-256 keys; None for an unknown user or a line without them."""
        entry = self._entries.get(username)
        return entry.scram if entry is not None else None

    def _memo(self, entry: _Entry | None, password: bytes) -> bytes:
        memo = hmac.new(self._cache_key, password, hashlib.sha256)
        memo.update(b"\0" + (entry.line if entry else "").encode())
        return memo.digest()

    def needs_hashing(self, username: str, password: bytes) -> bool:
        """True when :meth:`verify` would run PBKDF2 (a PBKDF2 entry, or an unknown user
        when the file has PBKDF2 entries, not already verified): run it off the event
        loop. False: :meth:`verify` answers in microseconds."""
        entry = self._entries.get(username)
        target = entry if entry is not None else self._dummy
        if target.cheap:
            return False
        if entry is None:
            return True
        with self._lock:
            cached = self._verified.get(username)
        return cached is None or not hmac.compare_digest(cached, self._memo(entry, password))

    def is_cheap(self, username: str) -> bool:
        """True for a ``$sha512$`` (generated secret) entry."""
        entry = self._entries.get(username)
        return entry is not None and entry.cheap

    def verify(self, username: str, password: bytes) -> str:
        """:data:`OK`, :data:`UNKNOWN_USER` or :data:`WRONG_PASSWORD`. Timing-safe for
        PBKDF2 entries (see module notes); may run in worker threads."""
        entry = self._entries.get(username)
        if entry is not None and entry.cheap:
            ok = hmac.compare_digest(entry.compute(password), entry.digest)
            return OK if ok else WRONG_PASSWORD
        memo_digest = self._memo(entry, password)
        if entry is not None:
            with self._lock:
                cached = self._verified.get(username)
                if cached is not None and hmac.compare_digest(cached, memo_digest):
                    self._verified.move_to_end(username)
                    return OK
        target = entry if entry is not None else self._dummy
        ok = hmac.compare_digest(target.compute(password), target.digest)
        if entry is None:
            return UNKNOWN_USER
        if not ok:
            return WRONG_PASSWORD
        with self._lock:
            self._verified[username] = memo_digest
            self._verified.move_to_end(username)
            while len(self._verified) > CACHE_SIZE:
                self._verified.popitem(last=False)
        return OK

    def check(self, username: str, password: bytes) -> bool:
        """True if ``password`` is ``username``'s password. Timing-safe; see module notes."""
        return self.verify(username, password) == OK


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
    return _put_line(path, username, new_line)


def _put_line(path: str, username: str, new_line: str) -> bool:
    lines = _existing_lines(path)
    for i, line in enumerate(lines):
        if not _is_blank_or_comment(line) and line.strip().partition(":")[0] == username:
            lines[i] = new_line
            _rewrite(path, lines)
            return False
    lines.append(new_line)
    _rewrite(path, lines)
    return True


def set_secret(path: str, username: str,
               scram_iterations: int | None = scram.DEFAULT_ITERATIONS) -> tuple[bool, str]:
    """Give ``username`` a new generated secret stored as ``$sha512$`` (one cheap salted
    hash: :data:`SECRET_BYTES` random bytes need no key stretching). Creates the file
    (mode 0600) if missing. Returns (added, secret); the secret is not stored anywhere.
    """
    _check_username(username)
    secret = generate_secret()
    new_line = f"{username}:{hash_secret(secret.encode())}"
    if scram_iterations is not None:
        keys = scram.scram_credentials(secret.encode(), iterations=scram_iterations)
        new_line += f":{scram_field(keys)}"
    return _put_line(path, username, new_line), secret


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
