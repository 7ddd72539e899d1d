"""Server side of SCRAM-SHA-256 (RFC 7677, the SHA-256 variant of RFC 5802 SCRAM).

Used for MQTT 5.0 enhanced authentication (§4.12) with Authentication Method
``SCRAM-SHA-256``. Pure and synchronous: no I/O, no clock; the server nonce comes
from :mod:`secrets` unless a generator is injected (tests).

The exchange, with the messages of RFC 7677 §3::

    client-first   n,,n=user,r=<client nonce>
    server-first   r=<client nonce><server nonce>,s=<base64 salt>,i=<iterations>
    client-final   c=biws,r=<client nonce><server nonce>,p=<base64 ClientProof>
    server-final   v=<base64 ServerSignature>

What the server stores per user (:class:`ScramCredentials`, RFC 5802 §3)::

    SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, iterations)
    StoredKey      = SHA-256(HMAC(SaltedPassword, "Client Key"))
    ServerKey      = HMAC(SaltedPassword, "Server Key")

The password itself cannot be recovered from these, and checking a proof costs a few
HMACs (the client pays for PBKDF2), so no thread pool is needed on the server.

Rules of this module:

* GS2 header: ``n,,`` (no channel binding) and ``y,,`` (the client could bind but we
  do not offer SCRAM-SHA-256-PLUS, so that is no downgrade) are accepted;
  ``p=...`` (channel binding requested) fails with ``channel-binding-not-supported``.
  An authorization identity (``a=``) is accepted only when it equals the username.
* The ``m=`` mandatory extension fails (``extensions-not-supported``); other
  extensions are ignored (RFC 5802 §5.1).
* Usernames: ``=2C``/``=3D`` decoded, any other ``=`` is invalid, and control
  characters (ASCII and Unicode Cc/C.2 of RFC 3454) are refused. The username is then
  looked up exactly as sent (as the CONNECT User Name is): no further SASLprep
  mapping, so a stored username that SASLprep would change cannot use SCRAM.
* Passwords are prepared with :func:`saslprep` (RFC 4013 via :mod:`stringprep`) when
  the credentials are made; a password SASLprep refuses (control characters,
  unassigned code points, bad bidirectional text) cannot be used with SCRAM.
* The proof is compared with :func:`hmac.compare_digest`.
* An unknown user (or one without SCRAM keys) gets a fake salt derived from a server
  secret and the username, and the default iteration count, so the server-first
  message looks like a real user's and is the same every time; the exchange then
  fails at :meth:`ScramServer.finish` exactly like a wrong password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_ITERATIONS",
    "MECHANISM",
    "AuthFailed",
    "ScramCredentials",
    "ScramServer",
    "saslprep",
    "scram_credentials",
]

MECHANISM = "SCRAM-SHA-256"
#: RFC 7677 §4: at least 4096 iterations.
DEFAULT_ITERATIONS = 4096
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 10_000_000
SALT_BYTES = 16
KEY_BYTES = 32  # SHA-256 output

#: Secret for fake salts when the caller passes none (per process: fake salts then
#: change on restart; :class:`~iotbroker.auth.passwords.PasswordFile` passes a stable one).
_PROCESS_SECRET = secrets.token_bytes(32)


class AuthFailed(Exception):
    """The exchange failed. ``reason`` is an RFC 5802 ``server-error-value``.

    ``invalid-proof`` covers both a wrong password and an unknown user (the caller
    must not tell them apart to the client); ``reason_detail`` says which, for logs.
    Any other reason means the client's message broke the SCRAM syntax or rules.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.reason_detail = detail or reason
        super().__init__(f"SCRAM: {self.reason_detail}")


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What the server stores for one user (RFC 5802 §3); never the password."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _is_prohibited(c: str) -> bool:
    """RFC 4013 §2.3 prohibited output (RFC 3454 C.1.2, C.2.1–C.9)."""
    return (stringprep.in_table_c12(c) or stringprep.in_table_c21_c22(c)
            or stringprep.in_table_c3(c) or stringprep.in_table_c4(c)
            or stringprep.in_table_c5(c) or stringprep.in_table_c6(c)
            or stringprep.in_table_c7(c) or stringprep.in_table_c8(c)
            or stringprep.in_table_c9(c))


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep for stored strings (unassigned code points refused).

    Non-ASCII spaces become U+0020, "commonly mapped to nothing" characters are
    removed, the result is NFKC-normalised (Unicode 3.2, as RFC 3454 requires), then
    prohibited characters (control characters, private use, surrogates, ...),
    unassigned code points and mixed-direction text raise :class:`ValueError`.
    For printable ASCII this is the identity.
    """
    if text.isascii() and text.isprintable():
        return text  # the common case, unchanged by every step below
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c
        for c in text
        if not stringprep.in_table_b1(c)
    )
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for c in prepared:
        if _is_prohibited(c):
            raise ValueError(f"SASLprep: prohibited character U+{ord(c):04X}")
        if stringprep.in_table_a1(c):
            raise ValueError(f"SASLprep: unassigned code point U+{ord(c):04X}")
    if any(stringprep.in_table_d1(c) for c in prepared) and (
        any(stringprep.in_table_d2(c) for c in prepared)
        or not stringprep.in_table_d1(prepared[0])
        or not stringprep.in_table_d1(prepared[-1])
    ):
        raise ValueError("SASLprep: invalid bidirectional text (RFC 3454 §6)")
    return prepared


def scram_credentials(password: str | bytes, salt: bytes | None = None,
                      iterations: int = DEFAULT_ITERATIONS) -> ScramCredentials:
    """The SCRAM-SHA-256 keys for ``password`` (a fresh 16-byte salt by default).

    ``bytes`` passwords must be UTF-8. Raises :class:`ValueError` for a password
    SASLprep refuses or an iteration count outside 4096–10,000,000.
    """
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"SCRAM iterations must be in {MIN_ITERATIONS}–{MAX_ITERATIONS}")
    if isinstance(password, bytes):
        try:
            password = password.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("a SCRAM password must be UTF-8 text") from None
    prepared = saslprep(password)
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", prepared.encode("utf-8"), salt, iterations)
    stored_key = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    return ScramCredentials(salt, iterations, stored_key, _hmac(salted, b"Server Key"))


def _default_nonce() -> str:
    return secrets.token_urlsafe(24)  # 192 bits; [A-Za-z0-9_-] is printable, no ','


def _printable(value: str) -> bool:
    """RFC 5802 ``printable``: %x21-2B / %x2D-7E (no comma)."""
    return bool(value) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in value)


def _saslname(value: str) -> str:
    """Decode RFC 5802 ``saslname`` (``=2C`` -> ``,``, ``=3D`` -> ``=``)."""
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "=":
            code = value[i + 1:i + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                raise AuthFailed("invalid-username-encoding", "bad '=' escape in username")
            i += 3
            continue
        if stringprep.in_table_c21_c22(c) or unicodedata.category(c) == "Cc":
            raise AuthFailed("invalid-username-encoding", "control character in username")
        out.append(c)
        i += 1
    name = "".join(out)
    if not name:
        raise AuthFailed("invalid-username-encoding", "empty username")
    return name


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthFailed("invalid-encoding", "message is not UTF-8") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AuthFailed("invalid-encoding", f"{what} is not base64") from None


class ScramServer:
    """One SCRAM-SHA-256 exchange, server side: :meth:`start`, then :meth:`finish`.

    ``lookup(username)`` returns the user's credentials or None (unknown user, or no
    SCRAM keys). ``nonce()`` returns the server nonce part (printable ASCII without
    ``,``); ``mock_secret`` keys the fake salts of unknown users.
    """

    __slots__ = ("_auth_first", "_creds", "_gs2_header", "_known", "_lookup", "_mock_secret",
                 "_nonce", "_server_first", "_state", "username")

    def __init__(self, lookup: Callable[[str], ScramCredentials | None], *,
                 nonce: Callable[[], str] | None = None,
                 mock_secret: bytes | None = None) -> None:
        self._lookup = lookup
        self._nonce = nonce or _default_nonce
        self._mock_secret = _PROCESS_SECRET if mock_secret is None else mock_secret
        self._state = 0  # 0 start, 1 wait for client-final, 2 done (success or failure)
        self._gs2_header = b""
        self._auth_first = ""  # client-first-message-bare "," server-first-message
        self._server_first = ""
        self._creds: ScramCredentials | None = None
        self._known = False
        #: The username of the client-first message (set by :meth:`start`).
        self.username: str | None = None

    def _mock(self, username: str) -> ScramCredentials:
        """Stable fake credentials for an unknown user (nobody can prove them)."""
        key = _hmac(self._mock_secret, b"scram-sha-256 mock\0" + username.encode("utf-8"))
        return ScramCredentials(key[:SALT_BYTES], DEFAULT_ITERATIONS,
                                secrets.token_bytes(KEY_BYTES), secrets.token_bytes(KEY_BYTES))

    def start(self, client_first: bytes) -> bytes:
        """Read client-first-message, return server-first-message (RFC 5802 §5.1)."""
        state, self._state = self._state, 2  # any failure ends the exchange
        if state != 0:
            raise AuthFailed("other-error", "client-first-message received twice")
        text = _text(client_first)
        # gs2-header = gs2-cbind-flag "," [ authzid ] ","
        flag, sep, rest = text.partition(",")
        if not sep:
            raise AuthFailed("other-error", "no GS2 header")
        if flag.startswith("p="):
            raise AuthFailed("channel-binding-not-supported", "client requires channel binding")
        if flag not in ("n", "y"):
            raise AuthFailed("other-error", f"bad GS2 channel binding flag {flag[:10]!r}")
        authzid_field, sep, bare = rest.partition(",")
        if not sep:
            raise AuthFailed("other-error", "incomplete GS2 header")
        if authzid_field and not authzid_field.startswith("a="):
            raise AuthFailed("other-error", "bad GS2 authzid")
        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            raise AuthFailed("extensions-not-supported", "mandatory extension m=")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise AuthFailed("other-error", "client-first-message is not n=USER,r=NONCE")
        username = _saslname(attrs[0][2:])
        if authzid_field and _saslname(authzid_field[2:]) != username:
            raise AuthFailed("invalid-username-encoding",
                             "authorization identity differs from the username")
        client_nonce = attrs[1][2:]
        if not _printable(client_nonce):
            raise AuthFailed("other-error", "client nonce is empty or not printable")
        server_nonce = self._nonce()
        if not _printable(server_nonce):
            raise ValueError("server nonce must be printable ASCII without ','")
        creds = self._lookup(username)
        self._known = creds is not None
        self._creds = creds if creds is not None else self._mock(username)
        self.username = username
        self._gs2_header = text[: len(text) - len(bare)].encode("utf-8")
        self._server_first = (f"r={client_nonce}{server_nonce},s={_b64(self._creds.salt)},"
                              f"i={self._creds.iterations}")
        self._auth_first = f"{bare},{self._server_first}"
        self._state = 1
        return self._server_first.encode("ascii")

    def finish(self, client_final: bytes) -> bytes:
        """Check client-final-message; return server-final-message (``v=...``).

        Raises :class:`AuthFailed` (``invalid-proof`` for a wrong password or an
        unknown user).
        """
        if self._state != 1:
            raise AuthFailed("other-error", "client-final-message out of order")
        self._state = 2
        creds = self._creds
        assert creds is not None
        text = _text(client_final)
        without_proof, sep, proof_text = text.rpartition(",p=")
        if not sep:
            raise AuthFailed("other-error", "client-final-message has no proof")
        attrs = without_proof.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise AuthFailed("other-error", "client-final-message is not c=...,r=...,p=...")
        if _unb64(attrs[0][2:], "channel binding") != self._gs2_header:
            raise AuthFailed("channel-bindings-dont-match", "channel binding differs")
        if attrs[1][2:] != self._server_first[2:].partition(",")[0]:
            raise AuthFailed("other-error", "nonce differs from the server's")
        proof = _unb64(proof_text, "proof")
        if len(proof) != KEY_BYTES:
            raise AuthFailed("invalid-proof", "proof has the wrong length")
        auth_message = f"{self._auth_first},{without_proof}".encode()
        client_signature = _hmac(creds.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        valid = hmac.compare_digest(hashlib.sha256(client_key).digest(), creds.stored_key)
        if not (valid and self._known):
            raise AuthFailed("invalid-proof",
                             "wrong password" if self._known else "unknown user")
        return f"v={_b64(_hmac(creds.server_key, auth_message))}".encode("ascii")
