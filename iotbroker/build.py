"""Which build is running: the hot modules compiled by mypyc, or pure Python.

``setup.py`` compiles :data:`COMPILED_MODULES` from the same typed source when it can
(issue 8); anything it could not compile runs as plain Python. The broker logs the
result at start-up and ``iotbroker --version`` prints it, with the interpreter
(:func:`interpreter`): the same build ran 7 % fewer instructions per message and 10 %
fewer per connection on Debian's optimised CPython than on an unoptimised build
(docs/performance.md, "Which Python runs the broker").
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import json
import os
import platform
import sys
from pathlib import Path

#: Written by ``setup.py`` next to this module when it compiles: ``{module: sha256 of the
#: source it compiled}``. The stale check compares contents, not modification times: an
#: install writes each ``.py`` a few microseconds after its extension, so an mtime
#: comparison cries wolf on every fresh install (issue 18).
MANIFEST_NAME = "_compiled_sources.json"


def source_digest(path: Path) -> str:
    """The SHA-256 of a source file, as recorded in the build manifest."""
    return hashlib.sha256(path.read_bytes()).hexdigest()

#: The hot path: codec (``codec/packets.py`` too since issue 19: ``TYPE`` is a
#: ``ClassVar``), protocol state machine, topic trie, routing, sessions and their
#: registry. Not compiled: ``core/placeholders.py``
#: (subclasses ``deque``, ``frozenset`` and ``dict``: the shared empty containers
#: ``core/session.py`` starts with, moved out of it so that it compiles), most of
#: ``server/`` and every cold module. Of ``server/``, the per-connection path is
#: compiled (issue 19): ``transport.py`` (``ClientProtocol``, a native class that is an
#: asyncio protocol by its methods, not by subclassing ``asyncio.Protocol``; the TLS
#: listeners' classes and tests subclass it), ``connecting.py`` (a CONNECT's
#: authentication and acceptance, from ``Broker.on_connect``), ``timerwheel.py`` and
#: ``parking.py`` (sockets accepted without a transport, and the plain-TCP listener's
#: accept loop), ``admission.py`` (a new socket's connection limits) and ``turn.py``
#: (the loop turn: a read's packets into the engine, the flush; ``Broker`` delegates
#: to it). The engine
#: (``engine/client.py``, ``engine.py``, ``connect.py``) is compiled too (issue 19): it
#: imports ``iotbroker.config``, so pydantic and types-PyYAML are build requirements
#: (mypyc type-checks what it imports); ``Client`` allows interpreted subclasses
#: (``server/transport.py``, ``bridge/``, ``mqttsn/``), and so do ``Connection`` and
#: ``Framer`` (the bridge's ``Outlet`` is a ``Connection``).
COMPILED_MODULES = (
    "iotbroker.codec.primitives",
    "iotbroker.codec.packets",
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
    "iotbroker.core.session",
    "iotbroker.core.sessions",
    "iotbroker.storage.records",
    "iotbroker.cluster.wire",
    "iotbroker.engine.client",
    "iotbroker.engine.engine",
    "iotbroker.engine.connect",
    "iotbroker.server.turn",
    "iotbroker.server.transport",
    "iotbroker.server.connecting",
    "iotbroker.server.timerwheel",
    "iotbroker.server.parking",
    "iotbroker.server.parked",
    "iotbroker.server.admission",
    "iotbroker.metrics",
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
    """Compiled modules whose ``.py`` source changed since the extension was built (an
    editable install edited after it was built: the old compiled code is what runs)."""
    manifest = Path(__file__).with_name(MANIFEST_NAME)
    sources = {}
    for name in compiled_modules():
        extension = Path(str(importlib.import_module(name).__file__))
        sources[name] = extension.with_name(name.rpartition(".")[2] + ".py")
    return stale_sources(sources, manifest)


def stale_sources(sources: dict[str, Path], manifest: Path) -> list[str]:
    """The modules of ``sources`` whose source digest differs from the one ``manifest``
    recorded at build time. Without a manifest (a build older than the manifest) nothing
    can be told, and nothing is reported: a warning that may be false is worse than none."""
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(recorded, dict):
        return []
    return [name for name, source in sources.items()
            if source.exists() and name in recorded
            and recorded[name] != source_digest(source)]


def describe() -> str:
    """``mypyc-compiled (13/13 hot modules)`` or ``pure Python``."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    return f"mypyc-compiled ({len(compiled)}/{len(COMPILED_MODULES)} hot modules)"


def interpreter() -> str:
    """``CPython 3.11.2 at /usr/bin/python3.11``: which interpreter runs the broker (its
    build - profile-guided and link-time optimised or not - moves every figure of
    docs/performance.md; the path, a virtual environment's link followed, tells an
    operator which one it is)."""
    where = os.path.realpath(sys.executable) if sys.executable else "?"
    return f"{platform.python_implementation()} {platform.python_version()} at {where}"
