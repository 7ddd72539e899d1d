#!/usr/bin/env python
"""Write the atheris seed corpus ``tests/fuzz/corpus/`` from the golden packet catalogue.

Each seed is ``control byte + packet bytes`` (layout in ``atheris_codec.py``). Valid
golden packets are written for a fresh and for a connected :class:`Connection`; error
packets once. The set stays under 100 files (it is committed); what the fuzzer adds to
the directory while it runs is not meant to be committed (see README.md).

    python tests/fuzz/make_corpus.py [DIR]
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.codec import golden  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"
LIMIT = 99


def seeds() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for g in golden.VALID:
        v_bit = 1 if g.version == 5 else 0
        out.append((f"{g.name}", bytes((v_bit | 2,)) + g.raw))  # connected, whole
    for g in golden.ERRORS:
        v_bit = 1 if g.version == 5 else 0
        out.append((g.name, bytes((v_bit | 2,)) + g.raw))
    # A few streams: CONNECT first on a fresh connection, cut in 3-byte pieces.
    connects = [g for g in golden.VALID if g.name.startswith("connect_")]
    publishes = [g for g in golden.VALID if g.name.startswith("publish_")]
    for c in connects:
        same = [p for p in publishes if p.version == c.version]
        v_bit = 1 if c.version == 5 else 0
        stream = c.raw + b"".join(p.raw for p in same)
        out.insert(0, (f"stream_{c.name}", bytes((v_bit | (3 << 2),)) + stream))
    return out


def write(directory: Path = CORPUS) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("seed-*"):
        old.unlink()
    items = seeds()[:LIMIT]
    for name, data in items:
        digest = hashlib.sha1(data).hexdigest()[:8]
        (directory / f"seed-{name}-{digest}").write_bytes(data)
    return len(items)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS
    print(f"wrote {write(target)} seeds to {target}")
