"""The import boundaries of design.md, checked over the AST of every module.

Rooms by lifetime and by I/O: ``codec`` imports nothing of ours but ``errors``;
``message`` (the application message) and ``subscription`` (a subscription as the trie
holds it and the store keeps it) sit below both core and storage; ``protocol`` builds
on ``codec`` and ``message``; ``core`` on ``codec``, ``message``, ``subscription``,
``storage.base``, ``auth.base``, ``config``, ``metrics``; ``storage`` never imports
``core``, and inside it the record codec (``storage/records.py``) is pure: it imports
only ``codec``, ``errors``, ``message`` and the record types, and nothing outside the
standard library; only ``storage/rocksdb.py`` imports rocksdict; only ``server/``
and ``cluster/node.py``, ``cluster/ownership.py``, ``cluster/qos_stream.py``,
``cluster/wills.py``, ``cluster/sessions.py``, ``cluster/buckets.py``,
``cluster/orphans.py`` (the cluster room's NATS I/O, issue 14) import asyncio;
``cluster`` drives the engine and never imports ``server``. Inside ``server/`` imports
flow down from ``broker.py`` (the composition root) with no cycle, not even through
``if TYPE_CHECKING:`` imports: a module that needs the broker declares a narrow
``typing.Protocol`` of what it uses (issue 13).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "iotbroker"

#: room -> the iotbroker modules (prefixes) it may import
ALLOWED: dict[str, tuple[str, ...]] = {
    "codec": ("iotbroker.errors", "iotbroker.codec"),
    "protocol": ("iotbroker.errors", "iotbroker.codec", "iotbroker.protocol",
                 "iotbroker.message"),
    "core": ("iotbroker.errors", "iotbroker.codec", "iotbroker.message",
             "iotbroker.subscription", "iotbroker.core",
             "iotbroker.storage.base", "iotbroker.auth.base", "iotbroker.config",
             "iotbroker.metrics"),
    "storage": ("iotbroker.errors", "iotbroker.storage", "iotbroker.message",
                "iotbroker.subscription", "iotbroker.codec"),
    "auth": ("iotbroker.errors", "iotbroker.auth", "iotbroker.config",
             "iotbroker.file_modes",  # the shared check that a secret file is not exposed
             "iotbroker.codec.enums"),  # enhanced authentication answers with ReasonCode
    # the MQTT rules (issue 13): below server/, above protocol/ and core/; no I/O
    "engine": ("iotbroker.errors", "iotbroker.codec", "iotbroker.message",
               "iotbroker.subscription", "iotbroker.protocol", "iotbroker.core",
               "iotbroker.engine", "iotbroker.storage.base", "iotbroker.config",
               "iotbroker.metrics",
               "iotbroker.auth"),  # enhanced authentication's exchanges (SCRAM), sync
    # The MQTT-SN gateway room drives the engine through its public face; no server.
    "mqttsn": ("iotbroker.errors", "iotbroker.codec", "iotbroker.message",
               "iotbroker.protocol", "iotbroker.core.topics", "iotbroker.engine",
               "iotbroker.config", "iotbroker.mqttsn"),
    # the admin HTTP API and dashboard (issue 17): an I/O room beside server/ that reads
    # the engine's state and acts through its methods; never imports server/ (the
    # broker hands it a BrokerHost)
    "admin": ("iotbroker.errors", "iotbroker.codec", "iotbroker.message",
              "iotbroker.subscription", "iotbroker.core", "iotbroker.engine",
              "iotbroker.config", "iotbroker.metrics", "iotbroker.auth", "iotbroker.admin",
              "iotbroker.build"),
    # a room beside server/ (issue 15): drives the engine, talks to other brokers
    "bridge": ("iotbroker.errors", "iotbroker.codec", "iotbroker.message",
               "iotbroker.protocol", "iotbroker.core", "iotbroker.engine",
               "iotbroker.config", "iotbroker.bridge"),
    # the NATS fabric (issue 14): drives the engine's narrow face, never server/
    "cluster": ("iotbroker.errors", "iotbroker.codec", "iotbroker.message",
                "iotbroker.subscription", "iotbroker.core", "iotbroker.engine",
                "iotbroker.cluster", "iotbroker.config", "iotbroker.metrics",
                "iotbroker.storage.records",  # the message record is the wire format
                "iotbroker.storage.base"),  # the session record moves between nodes
}

#: rooms that may import the package root itself (``from iotbroker import __version__``)
ROOT_IMPORT = frozenset({"admin"})
#: rooms that do I/O on the event loop: they may import asyncio
IO_ROOMS = frozenset({"server", "admin", "bridge"})


#: single modules with a narrower rule than their room: module path -> allowed prefixes
ALLOWED_MODULES: dict[str, tuple[str, ...]] = {
    # Message/Delivery: below core and storage, so no import runs back up
    "message.py": ("iotbroker.errors", "iotbroker.codec"),
    # SubscriptionEntry: the trie's entry and the stored record, one type
    "subscription.py": (),
    # the record types and the change batch: below the stores, above nothing but data
    "storage/base.py": ("iotbroker.errors", "iotbroker.codec", "iotbroker.message",
                        "iotbroker.subscription"),
    # the on-disk format: pure functions over the record types
    "storage/records.py": ("iotbroker.errors", "iotbroker.codec", "iotbroker.message",
                           "iotbroker.storage.base"),
    # fail or move aside: no database, no records
    "storage/recovery.py": ("iotbroker.errors", "iotbroker.storage.base"),
    # The MQTT-SN codec is pure, like the MQTT one (devices-sim may reuse it).
    "mqttsn/codec.py": ("iotbroker.errors",),
}

#: modules that may import nothing outside the standard library and iotbroker (and
#: ``mypy_extensions``, whose ``mypyc_attr`` is a compiler hint, a no-op when run:
#: ``message.py``'s acyclic Message, issue 14)
PURE_MODULES = ("message.py", "subscription.py", "storage/base.py", "storage/records.py",
                "storage/recovery.py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_room_imports_only_what_design_allows(room: str) -> None:
    allowed = ALLOWED[room]
    bad: list[str] = []
    for path in sorted((PACKAGE / room).rglob("*.py")):
        for name in _imports(path):
            if name == "iotbroker" and room in ROOT_IMPORT:
                continue
            if name.startswith("iotbroker") and not name.startswith(allowed):
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(ALLOWED_MODULES))
def test_module_imports_only_what_design_allows(module: str) -> None:
    allowed = ALLOWED_MODULES[module]
    bad = sorted(
        name
        for name in _imports(PACKAGE / module)
        if name.startswith("iotbroker") and not name.startswith(allowed)
    )
    assert not bad, f"iotbroker/{module} imports {bad}"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_only_stdlib(module: str) -> None:
    bad = sorted(
        name
        for name in _imports(PACKAGE / module)
        if name.split(".")[0] not in sys.stdlib_module_names
        and name.split(".")[0] not in ("__future__", "iotbroker", "mypy_extensions")
    )
    assert not bad, f"iotbroker/{module} imports {bad}"


#: Rooms that do I/O on the event loop: server/, and cluster/'s link to NATS.
ASYNC_MODULES = ("cluster/node.py", "cluster/ownership.py", "cluster/wills.py",
                 "cluster/qos_stream.py", "cluster/sessions.py", "cluster/buckets.py",
                 "cluster/orphans.py",
                 # the node connection's reader (ChunkReader: an asyncio.StreamReader)
                 "cluster/natsread.py")


def test_only_server_imports_asyncio() -> None:
    """...and the I/O rooms beside it (admin/)."""
    bad = [
        str(path.relative_to(PACKAGE.parent))
        for path in _modules()
        if "asyncio" in _imports(path) and path.parent.name not in IO_ROOMS
        and str(path.relative_to(PACKAGE)) not in ASYNC_MODULES
    ]
    assert not bad, f"asyncio imported outside server/: {bad}"


def test_only_rocksdb_store_imports_rocksdict() -> None:
    bad = [
        str(path.relative_to(PACKAGE.parent))
        for path in _modules()
        if any(n.split(".")[0] == "rocksdict" for n in _imports(path))
        and path != PACKAGE / "storage" / "rocksdb.py"
    ]
    assert not bad, f"rocksdict imported outside storage/rocksdb.py: {bad}"


def test_only_config_reads_yaml() -> None:
    bad = [
        str(path.relative_to(PACKAGE.parent))
        for path in _modules()
        if any(n.split(".")[0] == "yaml" for n in _imports(path))
        and path != PACKAGE / "config.py"
    ]
    assert not bad, f"yaml imported outside config.py: {bad}"


def _runtime_imports(path: Path) -> set[str]:
    """Module-level imports that run (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # ``from iotbroker.server import packetlog`` imports a module too
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _all_imports(path: Path) -> set[str]:
    """Every import of a module, wherever it is: at module level, inside functions and
    in ``if TYPE_CHECKING:`` blocks (a typing-only import is a dependency too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _server_cycle(imports: Callable[[Path], set[str]]) -> list[str]:
    """A cycle among server/'s modules under ``imports``, or []."""
    server = {p.stem: p for p in (PACKAGE / "server").glob("*.py") if p.stem != "__init__"}
    edges = {
        name: {n.rsplit(".", 1)[-1] for n in imports(path)
               if n.startswith("iotbroker.server.") and n.rsplit(".", 1)[-1] in server}
        for name, path in server.items()
    }
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle.extend([*trail, node, nxt])
                return True
            if nxt not in state and visit(nxt, [*trail, node]):
                return True
        state[node] = 2
        return False

    for name in sorted(server):
        if name not in state and visit(name, []):
            break
    return cycle


def test_server_has_no_import_cycle() -> None:
    """server/ imports flow one way from broker.py (the composition root) down; a
    cycle would mean a module reaches back up into it (issue 13)."""
    cycle = _server_cycle(_runtime_imports)
    assert not cycle, " -> ".join(cycle)


def test_server_has_no_import_cycle_even_for_typing() -> None:
    """Not even through ``if TYPE_CHECKING:`` imports: a module that needs the broker
    declares a narrow ``typing.Protocol`` of what it uses (issue 13)."""
    cycle = _server_cycle(_all_imports)
    assert not cycle, " -> ".join(cycle)


def test_no_server_module_refers_back_to_the_broker() -> None:
    """broker.py is the composition root: no other server/ module imports it, not even
    for typing (transport.py's ``ConnectionHost``, listeners.py, mqttsn_udp.py's
    ``GatewayHost``, sys_topics.py's ``SysTopicsHost``, metrics_http.py's
    ``MetricsHost`` are protocols of what each uses) (issue 13)."""
    bad = sorted(
        str(path.relative_to(PACKAGE.parent))
        for path in (PACKAGE / "server").glob("*.py")
        if path.stem != "broker"
        and {"iotbroker.server.broker", "iotbroker.server.broker.Broker"} & _all_imports(path)
    )
    assert not bad, f"these server modules import server/broker.py: {bad}"
