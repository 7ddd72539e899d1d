"""Performance regression guard for CI: codec and routing speed as *ratios*.

Machines are shared and noisy, so absolute packets/s mean little. Each measurement
here is divided by a plain-Python reference loop timed in the same run, on the same
machine, right next to it (interleaved, best of several rounds). A slow change to
the codec or the trie shows up as a ratio far below the recorded baseline
(``guard_baseline.json``); noise moves both sides together.

    .venv/bin/python benchmarks/guard.py            # check against the baseline
    .venv/bin/python benchmarks/guard.py --record   # write a new baseline

Exits 1 when any ratio is below ``baseline * TOLERANCE``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iotbroker.codec import Framer, decode_packet, encode_packet, encode_publish  # noqa: E402
from iotbroker.codec.packets import Publish  # noqa: E402
from iotbroker.core.subscriptions import SubscriptionEntry, SubscriptionTrie  # noqa: E402

BASELINE = Path(__file__).with_name("guard_baseline.json")
#: A ratio may fall to this fraction of its baseline before the guard fails.
TOLERANCE = 0.5
N = 20_000
PAYLOAD = b"x" * 64


def _reference() -> None:
    """A naive loop doing comparable work: slice, int.from_bytes, decode, join."""
    body = b"\x00\x07bench/t\x00\x01" + PAYLOAD
    for _ in range(N):
        tl = int.from_bytes(body[0:2], "big")
        topic = body[2 : 2 + tl].decode()
        pid = int.from_bytes(body[2 + tl : 4 + tl], "big")
        out = b"".join((bytes((0x32, len(body))), topic.encode(), pid.to_bytes(2, "big")))
        del out


def _decode() -> None:
    data = encode_packet(Publish("bench/t", PAYLOAD, 1, packet_id=1), 4) * 100
    framer = Framer(1 << 20)
    for _ in range(N // 100):
        for first, body in framer.feed(data):
            decode_packet(first, body, 4)


def _encode() -> None:
    for i in range(N):
        encode_publish("bench/t", PAYLOAD, 1, False, False, (i & 0x7FFF) + 1, None)


def _trie() -> Callable[[], None]:
    trie = SubscriptionTrie()
    for s in range(100):
        for d in range(100):
            trie.add(SubscriptionEntry(f"c{s}-{d}", f"site/{s}/device/{d}/#", 1))
    topics = [f"site/{i % 100}/device/{i % 97}/temp" for i in range(N)]

    def run() -> None:
        trie.clear_cache()
        for topic in topics:
            trie.match(topic)

    return run


def _best(fn: Callable[[], None], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure(rounds: int = 7) -> dict[str, float]:
    cases: dict[str, Callable[[], None]] = {
        "decode_publish": _decode,
        "encode_publish": _encode,
        "trie_match_10k_subs": _trie(),
    }
    ratios: dict[str, float] = {}
    for name, fn in cases.items():
        ours = ref = float("inf")
        for _ in range(rounds):  # interleaved, so both see the same machine load
            ref = min(ref, _best(_reference, 1))
            ours = min(ours, _best(fn, 1))
        ratios[name] = ref / ours
        print(f"{name:<22} {N / ours:>12,.0f}/s   reference {N / ref:>12,.0f}/s   "
              f"ratio {ratios[name]:.3f}")
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help="write a new baseline")
    args = parser.parse_args()
    ratios = measure()
    if args.record:
        BASELINE.write_text(json.dumps(ratios, indent=2, sort_keys=True) + "\n")
        print(f"baseline written to {BASELINE}")
        return 0
    baseline = json.loads(BASELINE.read_text())
    failed = []
    for name, ratio in ratios.items():
        floor = baseline[name] * TOLERANCE
        verdict = "ok" if ratio >= floor else "SLOWER"
        print(f"{name:<22} ratio {ratio:.3f} baseline {baseline[name]:.3f} floor {floor:.3f} "
              f"{verdict}")
        if ratio < floor:
            failed.append(name)
    if failed:
        print(f"performance guard failed: {', '.join(failed)} fell below "
              f"{TOLERANCE:.0%} of the recorded ratio")
        return 1
    print("performance guard: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
