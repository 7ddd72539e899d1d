"""The atheris harness stays runnable.

* Always: every committed corpus seed is replayed through the harness's ``TestOneInput``
  (plain Python, no atheris needed), and the corpus is small and in the layout the
  harness expects.
* When atheris is importable: a tiny real fuzzing run (a few thousand inputs) in a
  subprocess must finish cleanly.
* When atheris is NOT importable and ``IOTBROKER_FUZZ=1`` is set: a test fails saying so
  (a fuzzing job must not pass silently without its fuzzer). Without the variable that
  test is not defined at all: the default run has no fuzzer test to pass or fail.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.fuzz import atheris_codec, make_corpus

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None
FUZZ_JOB = os.environ.get("IOTBROKER_FUZZ") == "1"


def test_committed_corpus_is_small_and_current() -> None:
    files = sorted(p.name for p in CORPUS.iterdir() if p.is_file())
    assert 0 < len(files) < 100, f"{len(files)} files in {CORPUS}: commit only the seeds"
    expected = {f"seed-{name}-" for name, _ in make_corpus.seeds()}
    assert all(any(f.startswith(e) for e in expected) for f in files), (
        "corpus has files make_corpus.py does not write; run `python tests/fuzz/make_corpus.py`"
    )


def test_corpus_replays_through_the_harness() -> None:
    for path in sorted(CORPUS.iterdir()):
        atheris_codec.TestOneInput(path.read_bytes())


def test_harness_accepts_edge_inputs() -> None:
    for data in (b"", b"\x00", b"\x01", b"\x02\x30", b"\xff" * 300, b"\x03" + b"\x10" * 50):
        atheris_codec.TestOneInput(data)


if HAVE_ATHERIS:

    def test_atheris_smoke_run(tmp_path: Path) -> None:
        """A few thousand coverage-guided inputs from a copy of the seed corpus."""
        work = tmp_path / "corpus"
        shutil.copytree(CORPUS, work)
        proc = subprocess.run(
            [sys.executable, str(HERE / "atheris_codec.py"), "-atheris_runs=3000",
             f"-artifact_prefix={tmp_path}/", str(work)],
            capture_output=True,
            check=False,
            timeout=60,
            cwd=tmp_path,
        )
        tail = proc.stderr.decode("utf-8", "replace")[-3000:]
        assert proc.returncode == 0, tail
        assert "Done 3000" in tail, tail

elif FUZZ_JOB:

    def test_atheris_is_installed() -> None:
        raise AssertionError(
            "IOTBROKER_FUZZ=1 but atheris cannot be imported: `pip install atheris` "
            "(it needs a wheel for this Python, or clang with libFuzzer to build)"
        )
