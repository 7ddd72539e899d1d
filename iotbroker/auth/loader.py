"""Build the broker's authenticator and authorizer from :class:`~iotbroker.config.AuthConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from iotbroker.auth.acl import Acl
from iotbroker.auth.base import AllowAll, Authenticator, Authorizer
from iotbroker.auth.passwords import PasswordFile, PasswordFileAuthenticator
from iotbroker.config import AuthConfig
from iotbroker.errors import ConfigError

__all__ = ["AuthSetup", "load_auth"]


@dataclass(frozen=True, slots=True)
class AuthSetup:
    """What the server needs; ``passwords``/``acl`` are None when not configured."""

    authenticator: Authenticator
    authorizer: Authorizer
    passwords: PasswordFile | None
    acl: Acl | None


def load_auth(config: AuthConfig) -> AuthSetup:
    """Load the configured password and ACL files (raises ConfigError naming file:line).

    Call again to reload (for example on SIGHUP); the returned objects never change.
    """
    passwords = acl = None
    try:
        if config.password_file:
            passwords = PasswordFile.load(config.password_file)
        if config.acl_file:
            acl = Acl.load(config.acl_file)
    except ConfigError as exc:
        # "cannot be read" errors name the file; say which setting pointed at it.
        for key in ("password_file", "acl_file"):
            if exc.key == getattr(config, key):
                raise ConfigError(f"auth.{key}", exc.value, exc.expected) from None
        raise
    authenticator: Authenticator
    if passwords is None and config.allow_anonymous:
        authenticator = AllowAll()
    else:
        authenticator = PasswordFileAuthenticator(passwords, config.allow_anonymous)
    authorizer: Authorizer = acl if acl is not None else AllowAll()
    return AuthSetup(authenticator, authorizer, passwords, acl)
