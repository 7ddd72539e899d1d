"""What the admin room needs from the broker that runs it (``server/broker.py``).

The admin room reads the engine's state and acts through the engine's methods; after
an action the broker applies the engine's effects (closes, the storage batch, writes)
as after any other event, through :meth:`BrokerHost.engine_changed`.
"""

from __future__ import annotations

from typing import Protocol

from iotbroker.auth.passwords import PasswordFile
from iotbroker.config import BrokerConfig
from iotbroker.engine.engine import Engine


class BrokerHost(Protocol):
    """The broker as the admin room sees it."""

    @property
    def engine(self) -> Engine: ...

    @property
    def config(self) -> BrokerConfig: ...

    @property
    def started_at(self) -> float: ...

    @property
    def bound(self) -> list[tuple[str, int]]: ...

    def password_file(self) -> PasswordFile | None:
        """The password file in force (reloaded on SIGHUP)."""

    def bridges_status(self) -> list[dict[str, object]]:
        """Each configured bridge's state (docs/bridge.md); empty without bridges."""

    def cluster_status(self) -> dict[str, int] | None:
        """This node's link to the cluster (docs/cluster.md); None without a cluster."""

    def engine_changed(self) -> None:
        """Apply what an admin action left in the engine: closes, storage, writes."""
