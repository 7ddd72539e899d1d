"""NATS decentralised authentication for tests: an operator, its accounts and a user's
``.creds`` file, made with ``nats-jwt`` (PyPI; a port of nats-io's Go ``jwt`` library
— what ``nsc`` uses — on ``nkeys``), for a nats-server in operator mode.

The server trusts the operator JWT, knows the accounts from a memory resolver
(``resolver: MEMORY``, ``resolver_preload``), and checks each user JWT's signature
and claims at CONNECT, with the nonce signed by the user's NKey seed. The ``.creds``
file is the text layout ``nsc`` writes (``FormatUserConfig``): the user JWT, then the
seed, each between its ``-----BEGIN ...-----`` / ``------END ...------`` lines.
"""

from __future__ import annotations

from pathlib import Path

from nats_jwt.nkeys_ext import create_account_pair, create_operator_pair, create_user_pair
from nats_jwt.v2.account_claims import AccountClaims
from nats_jwt.v2.operator_claims import OperatorClaims
from nats_jwt.v2.user_claims import UserClaims
from nkeys import KeyPair

#: nats-jwt's "no limit"
NO_LIMIT = -1


class NatsOperator:
    """An operator with a system account and one account (``iotb``) that may use
    JetStream without limits."""

    def __init__(self) -> None:
        self.operator = create_operator_pair()
        claims = OperatorClaims(self.operator.public_key.decode(), "iotbroker-test")
        self.system = create_account_pair()
        claims.nats.system_account = self.system.public_key.decode()
        self.operator_jwt = claims.encode(self.operator)
        self.system_jwt = AccountClaims(self.system.public_key.decode(), "SYS").encode(
            self.operator)
        self.account = create_account_pair()
        account = AccountClaims(self.account.public_key.decode(), "iotb")
        limits = account.nats.limits
        limits.memory_storage = limits.disk_storage = NO_LIMIT  # JetStream on
        limits.streams = limits.consumer = NO_LIMIT
        self.account_jwt = account.encode(self.operator)

    def server_config(self) -> str:
        """nats-server configuration text: trust the operator, preload the accounts."""
        return (
            f"operator: {self.operator_jwt}\n"
            f"system_account: {self.system.public_key.decode()}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f"  {self.system.public_key.decode()}: {self.system_jwt}\n"
            f"  {self.account.public_key.decode()}: {self.account_jwt}\n"
            "}\n"
        )

    def user_creds(self, path: Path, name: str = "node",
                   account: KeyPair | None = None) -> Path:
        """Write a ``.creds`` file (mode 0600) for a new user of ``account`` (default:
        the operator's ``iotb`` account)."""
        user = create_user_pair()
        jwt = UserClaims(user.public_key.decode(), name).encode(account or self.account)
        path.write_text(
            "-----BEGIN NATS USER JWT-----\n"
            f"{jwt}\n"
            "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{user.seed.decode()}\n"
            "------END USER NKEY SEED------\n"
        )
        path.chmod(0o600)
        return path

    @staticmethod
    def foreign_account() -> KeyPair:
        """An account no server of this operator knows: its users are refused."""
        return create_account_pair()
