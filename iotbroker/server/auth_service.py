"""The broker's view of authentication and authorisation.

Wraps :mod:`iotbroker.auth` (password file, ACL) into the questions the broker asks,
with per-session caching of ACL decisions (a session's username and client id do not
change while it is connected). ``None`` from :meth:`authenticate` means accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from iotbroker.auth.base import AllowAll
from iotbroker.auth.loader import AuthSetup, load_auth
from iotbroker.config import AuthConfig
from iotbroker.core.session import Session

_CACHE_LIMIT = 1024


class AuthService:
    """Authentication at CONNECT and ACL checks on publish, subscribe and delivery."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.setup: AuthSetup = load_auth(config)
        self._open = isinstance(self.setup.authorizer, AllowAll)
        self._cache: dict[tuple[str, str | None, str, str], bool] = {}
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="auth")

    def reload(self) -> None:
        """Re-read the password and ACL files (SIGHUP)."""
        self.setup = load_auth(self.config)
        self._open = isinstance(self.setup.authorizer, AllowAll)
        self._cache.clear()

    def authenticate(self, client_id: str, username: str | None,
                     password: bytes | None) -> int | None:
        """None when accepted, else the MQTT 5.0 reason code to refuse with."""
        if self.setup.authenticator.authenticate(client_id, username, password):
            return None
        if username is None and password is None:
            return 0x87  # not authorized: anonymous access is off
        return 0x86  # bad user name or password

    def is_slow(self, username: str | None) -> bool:
        """True when checking this login costs a password hash (run it off the loop)."""
        return username is not None and self.setup.passwords is not None

    def authenticate_in_thread(
        self, client_id: str, username: str | None, password: bytes | None
    ) -> Future[int | None]:
        """:meth:`authenticate` in a worker thread (PBKDF2 releases the GIL)."""
        return self._executor.submit(self.authenticate, client_id, username, password)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _decide(self, kind: str, client_id: str, username: str | None, target: str) -> bool:
        if self._open:
            return True
        key = (client_id, username, kind, target)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        authorizer = self.setup.authorizer
        if kind == "w":
            allowed = authorizer.can_publish(client_id, username, target)
        elif kind == "s":
            allowed = authorizer.can_subscribe(client_id, username, target)
        else:
            allowed = authorizer.can_receive(client_id, username, target)
        if len(self._cache) >= _CACHE_LIMIT * 64:
            self._cache.clear()
        self._cache[key] = allowed
        return allowed

    def may_publish(self, client_id: str, username: str | None, topic: str) -> bool:
        """PUBLISH, and a Will Message (at CONNECT and again when it fires)."""
        return self._decide("w", client_id, username, topic)

    def may_subscribe(self, session: Session, topic_filter: str) -> bool:
        return self._decide("s", session.client_id, session.username, topic_filter)

    def receive_check(self) -> Callable[[Session, str], bool] | None:
        """The sessions' delivery gate (:class:`~iotbroker.core.session.ReceiveGate`),
        or None when there is no ACL (fast path). Call again after :meth:`reload`."""
        if self._open:
            return None
        return lambda session, topic: self._decide(
            "r", session.client_id, session.username, topic
        )
