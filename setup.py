"""Build hook: compile the hot modules with mypyc (issue 8), from the same typed source.

Everything else about the package is in ``pyproject.toml``. The modules listed in
``iotbroker/build.py`` are compiled to C extensions when mypy (a build requirement) and a C
compiler with the Python headers are available; the extensions are *optional*, so
where compiling fails the install goes on and the same modules run as plain Python.

``IOTBROKER_PURE=1`` skips compiling (the pure-Python build; CI tests both builds) and
removes extensions an earlier editable build left in the source tree.
At run time ``iotbroker --version`` says which one is loaded.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import sys

from setuptools import setup


def _compiled_sources() -> list[str]:
    """``iotbroker.build.COMPILED_MODULES`` as paths, read without importing the package."""
    spec = importlib.util.spec_from_file_location(
        "_iotbroker_build", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         "iotbroker", "build.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [name.replace(".", "/") + ".py" for name in module.COMPILED_MODULES]


def _remove_inplace_extensions(sources: list[str]) -> None:
    """A pure build in a source tree: delete extensions an earlier editable (in-place)
    build left next to the sources, or they would still be imported instead of them."""
    root = os.path.dirname(os.path.abspath(__file__))
    stale = glob.glob(os.path.join(root, "*__mypyc.*.so"))
    for source in sources:
        stale += glob.glob(os.path.join(root, source[: -len(".py")] + ".*.so"))
    for path in stale:
        os.remove(path)
        print(f"iotbroker: removed {os.path.relpath(path, root)} (pure build)", file=sys.stderr)


def _write_manifest(sources: list[str]) -> None:
    """Record the SHA-256 of every compiled source in ``iotbroker/_compiled_sources.json``
    (package data): at run time ``iotbroker.build.stale_modules`` compares contents, so
    a fresh install, whose ``.py`` files are written after their extensions, is not
    reported as stale (issue 18)."""
    root = os.path.dirname(os.path.abspath(__file__))
    digests = {}
    for source in sources:
        with open(os.path.join(root, source), "rb") as handle:
            digests[source[: -len(".py")].replace("/", ".")] = hashlib.sha256(
                handle.read()).hexdigest()
    with open(os.path.join(root, "iotbroker", "_compiled_sources.json"), "w",
              encoding="utf-8") as handle:
        json.dump(digests, handle, indent=1, sort_keys=True)


def _remove_manifest() -> None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "iotbroker",
                        "_compiled_sources.json")
    if os.path.exists(path):
        os.remove(path)


def _ext_modules() -> list[object]:
    if os.environ.get("IOTBROKER_PURE", "") not in ("", "0"):
        _remove_inplace_extensions(_compiled_sources())
        _remove_manifest()
        return []
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 (a build requirement, optional here)
    except ImportError:
        print("iotbroker: mypy/mypyc not available, installing pure Python", file=sys.stderr)
        return []
    try:
        extensions = mypycify(_compiled_sources(), opt_level="3", debug_level="0")
    except Exception as exc:  # any failure: fall back to pure Python
        print(f"iotbroker: mypyc failed ({exc}), installing pure Python", file=sys.stderr)
        return []
    _write_manifest(_compiled_sources())
    # mypyc's error reporters declared cold (mypyc_cold.h): error paths leave the hot
    # bodies (issue 19, the cold footprint of a message).
    cold = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mypyc_cold.h")
    for ext in extensions:
        ext.optional = True  # a failed C build leaves the .py modules in charge
        if os.path.exists(cold):  # (a checkout; an sdist without it builds as before)
            ext.extra_compile_args = [*ext.extra_compile_args, "-include", cold]
    return list(extensions)


setup(ext_modules=_ext_modules())
