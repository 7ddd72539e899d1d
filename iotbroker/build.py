"""Which build is running: the hot modules compiled by mypyc, or pure Python.

``setup.py`` compiles :data:`COMPILED_MODULES` from the same typed source when it can
(issue 8); anything it could not compile runs as plain Python. The broker logs the
result at start-up and ``iotbroker --version`` prints it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
from pathlib import Path

#: The hot path: codec, protocol state machine, topic trie, routing, session registry.
#: Not compiled: ``codec/packets.py`` (mypyc's dataclass support rejects the ``TYPE``
#: class attribute before fields without defaults), ``core/session.py`` (subclasses
#: ``deque`` and ``frozenset``), ``server/`` (asyncio.Protocol subclasses) and every
#: cold module.
COMPILED_MODULES = (
    "iotbroker.codec.primitives",
    "iotbroker.codec.framer",
    "iotbroker.codec.properties",
    "iotbroker.codec.decode",
    "iotbroker.codec.encode",
    "iotbroker.protocol.topic_alias",
    "iotbroker.protocol.connection",
    "iotbroker.message",
    "iotbroker.subscription",
    "iotbroker.core.topics",
    "iotbroker.core.subscriptions",
    "iotbroker.core.retained",
    "iotbroker.core.router",
    "iotbroker.core.sessions",
)


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED_MODULES` loaded from a C extension."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [
        name
        for name in COMPILED_MODULES
        if str(getattr(importlib.import_module(name), "__file__", "")).endswith(suffixes)
    ]


def stale_modules() -> list[str]:
    """Compiled modules whose ``.py`` source is newer than the extension (an editable
    install edited after it was built: the old compiled code is what runs)."""
    stale = []
    for name in compiled_modules():
        extension = Path(str(importlib.import_module(name).__file__))
        source = extension.with_name(name.rpartition(".")[2] + ".py")
        if source.exists() and source.stat().st_mtime > extension.stat().st_mtime:
            stale.append(name)
    return stale


def describe() -> str:
    """``mypyc-compiled (13/13 hot modules)`` or ``pure Python``."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    return f"mypyc-compiled ({len(compiled)}/{len(COMPILED_MODULES)} hot modules)"
