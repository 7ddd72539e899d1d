"""The "compiled modules older than their source" warning (issue 18): it compares the
source's contents with the digest ``setup.py`` recorded when it compiled, so a fresh
install (each ``.py`` written a few microseconds after its extension) is not reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

from iotbroker import build
from tests.helpers.broker_process import BrokerProcess, broker_config


def _module(tmp_path: Path, text: str) -> tuple[Path, Path]:
    source = tmp_path / "router.py"
    source.write_text(text)
    extension = tmp_path / "router.cpython-311-x86_64-linux-gnu.so"
    extension.write_bytes(b"\x7fELF")
    manifest = tmp_path / build.MANIFEST_NAME
    manifest.write_text(json.dumps({"pkg.router": build.source_digest(source)}))
    return source, extension


def test_source_newer_than_extension_but_unchanged_is_not_stale(tmp_path: Path) -> None:
    source, extension = _module(tmp_path, "X = 1\n")
    ext_time = extension.stat().st_mtime
    os.utime(source, (ext_time + 0.000005, ext_time + 0.000005))  # the fresh-install case
    os.utime(source, (ext_time + 3600, ext_time + 3600))  # even an hour later
    assert build.stale_sources({"pkg.router": source}, tmp_path / build.MANIFEST_NAME) == []


def test_edited_source_is_stale_whatever_its_mtime(tmp_path: Path) -> None:
    source, extension = _module(tmp_path, "X = 1\n")
    source.write_text("X = 2\n")
    ext_time = extension.stat().st_mtime
    os.utime(source, (ext_time - 3600, ext_time - 3600))  # older, yet edited
    assert build.stale_sources({"pkg.router": source}, tmp_path / build.MANIFEST_NAME) == [
        "pkg.router"]


def test_no_manifest_reports_nothing(tmp_path: Path) -> None:
    source, _ = _module(tmp_path, "X = 1\n")
    (tmp_path / build.MANIFEST_NAME).unlink()
    assert build.stale_sources({"pkg.router": source}, tmp_path / build.MANIFEST_NAME) == []


def test_broker_start_on_this_install_does_not_warn_of_stale_modules(tmp_path: Path) -> None:
    """Run under both builds by scripts/test.sh: the compiled build was just installed,
    so its sources match the manifest and the start-up log has no stale warning."""
    proc = BrokerProcess(tmp_path, broker_config()).start()
    try:
        text = proc.log_text()
        assert "running" in text
        assert "older than their source" not in text
        assert "changed since" not in text
    finally:
        proc.stop()
