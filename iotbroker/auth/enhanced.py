"""MQTT 5.0 enhanced authentication (§4.12): the authenticator interface and registry.

An :class:`EnhancedAuthenticator` is one exchange with one client (it keeps the
exchange's state); the :class:`EnhancedAuthRegistry` makes a fresh one per CONNECT
(or re-authentication) for a supported Authentication Method. Synchronous and free of
I/O like the rest of ``auth``; the server (``server/enhanced_auth.py``) turns each
:class:`AuthStep` into AUTH / CONNACK / DISCONNECT packets:

* ``CONTINUE`` -> AUTH 0x18 Continue authentication carrying ``data`` [MQTT-4.12.0-2];
* ``SUCCESS`` -> CONNACK 0x00 (or AUTH 0x00 after re-authentication) carrying ``data``
  as Authentication Data; ``username`` is the identity that was proven;
* ``FAILURE`` -> CONNACK ``reason_code`` (0x86 bad credentials, 0x87 not authorised,
  0x8C bad method) and close [MQTT-4.12.0-4], or DISCONNECT after a failed
  re-authentication [MQTT-4.12.1-2]. ``reason`` is for the log only.

Methods: ``SCRAM-SHA-256`` (RFC 7677) when a password file is configured; users whose
line has no SCRAM keys fail like unknown users.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from iotbroker.auth.passwords import PasswordFile
from iotbroker.auth.scram import MECHANISM, AuthFailed, ScramServer
from iotbroker.codec.enums import ReasonCode

__all__ = [
    "AuthStep",
    "EnhancedAuthRegistry",
    "EnhancedAuthenticator",
    "ScramSha256Authenticator",
    "StepKind",
    "build_registry",
]


class StepKind(Enum):
    CONTINUE = 1
    SUCCESS = 2
    FAILURE = 3


@dataclass(frozen=True, slots=True)
class AuthStep:
    """What the authenticator says after reading the client's data.

    ``reason_code`` is 0x18 for CONTINUE, 0 for SUCCESS and the refusal's code (>= 0x80)
    for FAILURE, so a non-zero code on a final step means "refuse".
    """

    kind: StepKind
    data: bytes | None = None
    username: str | None = None
    reason_code: int = 0
    reason: str = ""

    @classmethod
    def proceed(cls, data: bytes) -> AuthStep:
        """Send ``data`` to the client in AUTH 0x18 and wait for its answer."""
        return cls(StepKind.CONTINUE, data, reason_code=ReasonCode.CONTINUE_AUTHENTICATION)

    @classmethod
    def succeed(cls, data: bytes | None, username: str) -> AuthStep:
        return cls(StepKind.SUCCESS, data, username)

    @classmethod
    def fail(cls, reason_code: int, reason: str) -> AuthStep:
        return cls(StepKind.FAILURE, reason_code=reason_code, reason=reason)


class EnhancedAuthenticator(Protocol):
    """One authentication exchange for one Authentication Method."""

    method: str

    def begin(self, client_id: str, auth_data: bytes | None) -> AuthStep:
        """The CONNECT's (or re-authenticating AUTH 0x19's) Authentication Data."""
        ...

    def step(self, auth_data: bytes | None) -> AuthStep:
        """The Authentication Data of the client's next AUTH 0x18."""
        ...


class ScramSha256Authenticator:
    """SCRAM-SHA-256 over MQTT: CONNECT carries client-first, AUTH client-final.

    A client that sends CONNECT without Authentication Data gets an empty AUTH 0x18
    challenge and sends client-first in its first AUTH (SASL without initial response).
    A wrong password and an unknown user both end in 0x86 at the last step; a message
    that breaks SCRAM's syntax ends in 0x87.
    """

    method = MECHANISM

    def __init__(self, server: ScramServer) -> None:
        self._server = server
        self._stage = 0  # 0 not begun, 1 wait for client-first, 2 for client-final, 3 done

    def begin(self, client_id: str, auth_data: bytes | None) -> AuthStep:
        if self._stage != 0:
            return self._failed(ReasonCode.NOT_AUTHORIZED, "SCRAM exchange begun twice")
        if not auth_data:
            self._stage = 1
            return AuthStep.proceed(b"")
        return self._first(auth_data)

    def step(self, auth_data: bytes | None) -> AuthStep:
        data = auth_data or b""
        if self._stage == 1:
            return self._first(data)
        if self._stage != 2:
            return self._failed(ReasonCode.NOT_AUTHORIZED,
                                "SCRAM message after the exchange ended")
        self._stage = 3
        try:
            final = self._server.finish(data)
        except AuthFailed as exc:
            return self._failure(exc)
        assert self._server.username is not None
        return AuthStep.succeed(final, self._server.username)

    def _first(self, data: bytes) -> AuthStep:
        try:
            server_first = self._server.start(data)
        except AuthFailed as exc:
            self._stage = 3
            return self._failure(exc)
        self._stage = 2
        return AuthStep.proceed(server_first)

    def _failed(self, code: int, reason: str) -> AuthStep:
        self._stage = 3
        return AuthStep.fail(code, reason)

    @staticmethod
    def _failure(exc: AuthFailed) -> AuthStep:
        code = (ReasonCode.BAD_USER_NAME_OR_PASSWORD if exc.reason == "invalid-proof"
                else ReasonCode.NOT_AUTHORIZED)
        return AuthStep.fail(code, str(exc))


class EnhancedAuthRegistry:
    """Authentication Method name -> a factory of fresh authenticators."""

    def __init__(self, factories: Mapping[str, Callable[[], EnhancedAuthenticator]]) -> None:
        self._factories = dict(factories)

    @property
    def methods(self) -> list[str]:
        return list(self._factories)

    def create(self, method: str) -> EnhancedAuthenticator | None:
        """A new authenticator for ``method``, or None if the method is not supported."""
        factory = self._factories.get(method)
        return factory() if factory is not None else None


def build_registry(passwords: PasswordFile | None, *,
                   nonce: Callable[[], str] | None = None) -> EnhancedAuthRegistry:
    """The methods the configuration supports: SCRAM-SHA-256 iff there is a password file.

    ``passwords`` is the file :func:`~iotbroker.auth.loader.load_auth` loaded from
    ``auth.password_file``; ``nonce`` overrides the server nonce (tests).
    """
    if passwords is None:
        return EnhancedAuthRegistry({})
    lookup = passwords.scram_credentials
    secret = passwords.scram_mock_secret

    def scram() -> EnhancedAuthenticator:
        return ScramSha256Authenticator(ScramServer(lookup, nonce=nonce, mock_secret=secret))

    return EnhancedAuthRegistry({MECHANISM: scram})
