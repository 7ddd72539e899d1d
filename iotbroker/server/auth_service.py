"""The broker's view of authentication and authorisation.

Wraps :mod:`iotbroker.auth` (password file, ACL) into the questions the broker asks,
with per-session caching of ACL decisions (a session's username and client id do not
change while it is connected). ``None`` from :meth:`authenticate` means accepted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from iotbroker.auth.base import AllowAll
from iotbroker.auth.loader import AuthSetup, load_auth
from iotbroker.auth.passwords import OK, UNKNOWN_USER
from iotbroker.codec.enums import ReasonCode
from iotbroker.config import AuthConfig
from iotbroker.core.session import Session
from iotbroker.file_modes import warn_if_exposed
from iotbroker.metrics import Metrics
from iotbroker.server.ratelimit import FailureLimiter

__all__ = ["AuthService", "Refusal"]

log = logging.getLogger("iotbroker.auth")

_CACHE_LIMIT = 1024
_ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused login: the MQTT 5.0 CONNACK reason code (3.1.1 maps it), the kind
    (``reason`` label of ``iotbroker_auth_failures_total``) and a text for the log only."""

    code: int
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"authentication failed ({self.kind}): {self.detail}"


#: The client's ``HOST:PORT``, or a call that formats it: only a refused or rate-limited
#: login needs it, so an accepted CONNECT does not format it (issue 19: a string per
#: connection, and a transport lookup per CONNECT).
PeerName = str | Callable[[], str]


def _host(peer: PeerName) -> str:
    """The address part of ``HOST:PORT`` (the per-address failure limit's key)."""
    if not isinstance(peer, str):
        peer = peer()
    host, sep, _port = peer.rpartition(":")
    return host if sep else peer


class AuthService:
    """Authentication at CONNECT and ACL checks on publish, subscribe and delivery.

    A CONNECT's password is decided on the event loop when that costs microseconds
    (generated ``$sha512$`` secrets, passwords verified before) and in a thread pool
    when it costs PBKDF2 (:meth:`is_slow`). :meth:`gate` runs first: it refuses, without
    hashing, logins that are rate-limited or would exceed the bound on pending checks.
    All bookkeeping (counters, failure limits) happens on the event loop.
    """

    def __init__(self, config: AuthConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.setup: AuthSetup = load_auth(config)
        self._open = isinstance(self.setup.authorizer, AllowAll)
        self._cache: dict[tuple[str, str | None, str, str], bool] = {}
        threads = config.password_check_threads or max(2, os.cpu_count() or 2)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="auth")
        self._lock = threading.Lock()
        #: PBKDF2 checks submitted and not finished (queued or running).
        self.pending = 0
        self._by_address = FailureLimiter(config.failed_login_limit, config.failed_login_window,
                                          config.failed_login_backoff)
        self._by_user = FailureLimiter(config.failed_login_limit, config.failed_login_window,
                                       config.failed_login_backoff)
        self._warn_file_mode()

    def reload(self) -> None:
        """Re-read the password and ACL files (SIGHUP)."""
        self.setup = load_auth(self.config)
        self._open = isinstance(self.setup.authorizer, AllowAll)
        self._cache.clear()
        for limiter in (self._by_address, self._by_user):
            limiter.limit = self.config.failed_login_limit
            limiter.window = self.config.failed_login_window
            limiter.backoff = self.config.failed_login_backoff
        self._warn_file_mode()

    def _warn_file_mode(self) -> None:
        path = self.config.password_file
        if path:
            warn_if_exposed(path, "password file", log)

    # --------------------------------------------------------------- logins
    def _verdict(self, client_id: str, username: str | None, password: bytes | None) -> str:
        """OK, "anonymous", UNKNOWN_USER or WRONG_PASSWORD; may run in a worker thread."""
        setup = self.setup
        if username is None:
            return OK if self.config.allow_anonymous else _ANONYMOUS
        if setup.passwords is None:
            ok = setup.authenticator.authenticate(client_id, username, password)
            return OK if ok else UNKNOWN_USER
        return setup.passwords.verify(username, password if password is not None else b"")

    def gate(self, username: str | None, password: bytes | None,
             peer: PeerName) -> Refusal | None:
        """Before a login that could need PBKDF2 (a person's password or an unknown
        user): refuse it (counted, nothing hashed) when the peer address or the username
        is over ``auth.failed_login_limit``, or when it needs a PBKDF2 check and
        ``auth.max_pending_password_checks`` are pending. Generated secrets always pass:
        they cost microseconds and cannot be guessed."""
        passwords = self.setup.passwords
        if username is None or passwords is None or passwords.is_cheap(username):
            return None
        now = time.monotonic()
        host = _host(peer)
        if self._by_address.blocked(host, now):
            return self._refused(Refusal(ReasonCode.SERVER_BUSY, "rate_limited",
                                         f"too many failed logins from {host}"))
        if self._by_user.blocked(username, now):
            return self._refused(Refusal(ReasonCode.SERVER_BUSY, "rate_limited",
                                         f"too many failed logins for {username!r}"))
        if self.pending >= self.config.max_pending_password_checks and \
                passwords.needs_hashing(username, password if password is not None else b""):
            return self._refused(Refusal(
                ReasonCode.SERVER_BUSY, "busy", f"{self.pending} password checks pending "
                "(auth.max_pending_password_checks)"))
        return None

    def is_slow(self, username: str | None, password: bytes | None = None) -> bool:
        """True when checking this login costs PBKDF2 (run it off the loop)."""
        passwords = self.setup.passwords
        return (username is not None and passwords is not None
                and passwords.needs_hashing(username, password if password is not None
                                            else b""))

    def authenticate(self, client_id: str, username: str | None, password: bytes | None,
                     peer: PeerName = "") -> Refusal | None:
        """Decide on the loop a login that :meth:`is_slow` says is cheap; None = accepted."""
        verdict = self._verdict(client_id, username, password)
        if username is not None and self.setup.passwords is not None:
            self.metrics.password_checks_inline += 1
        return self.conclude(verdict, username, password, peer)

    def authenticate_in_thread(
        self, client_id: str, username: str | None, password: bytes | None
    ) -> Future[str]:
        """The PBKDF2 check in a worker thread (``hashlib`` releases the GIL, so the
        threads use every core). The future's result goes to :meth:`conclude`."""
        with self._lock:
            self.pending += 1
        try:
            return self._executor.submit(self._in_thread, client_id, username, password)
        except RuntimeError:  # shut down
            with self._lock:
                self.pending -= 1
            raise

    def _in_thread(self, client_id: str, username: str | None, password: bytes | None) -> str:
        try:
            return self._verdict(client_id, username, password)
        finally:
            with self._lock:
                self.pending -= 1

    def conclude(self, verdict: str, username: str | None, password: bytes | None,
                 peer: PeerName, hashed: bool = False) -> Refusal | None:
        """Turn a verdict into the decision, on the loop: count failures by kind and
        feed the failed-login limits. None = accepted."""
        if hashed:
            self.metrics.password_checks_hashed += 1
        if verdict == OK:
            if username is not None:
                self._by_user.succeeded(username)
            return None
        if verdict == _ANONYMOUS:
            code = (ReasonCode.NOT_AUTHORIZED if password is None
                    else ReasonCode.BAD_USER_NAME_OR_PASSWORD)
            return self._refused(Refusal(code, _ANONYMOUS, "no username and "
                                         "auth.allow_anonymous is false"))
        now = time.monotonic()
        host = _host(peer)
        if self._by_address.failed(host, now):
            log.warning("failed logins from %s: %d within %gs; refusing PBKDF2 logins from "
                        "it for %gs", host, self.config.failed_login_limit,
                        self.config.failed_login_window, self.config.failed_login_backoff)
        if username is not None and self._by_user.failed(username, now):
            log.warning("failed logins for user %r: %d within %gs; refusing its PBKDF2 "
                        "logins for %gs", username, self.config.failed_login_limit,
                        self.config.failed_login_window, self.config.failed_login_backoff)
        detail = ("no such user in the password file" if verdict == UNKNOWN_USER
                  else "wrong password")
        return self._refused(Refusal(ReasonCode.BAD_USER_NAME_OR_PASSWORD, verdict, detail))

    def _refused(self, refusal: Refusal) -> Refusal:
        self.metrics.count_auth_failure(refusal.kind)
        return refusal

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

    def publish_check(self) -> Callable[[str, str | None, str], bool] | None:
        """:meth:`may_publish`, or None when there is no ACL (the engine's PUBLISH path
        then makes no call, issue 19). Call again after :meth:`reload`."""
        return None if self._open else self.may_publish

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
