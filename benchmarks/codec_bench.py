"""Codec micro-benchmark: PUBLISH encode/decode rates, QoS 0/1, 64-byte payload, v4 and v5.

Run: ``.venv/bin/python benchmarks/codec_bench.py [seconds-per-case]`` (default 0.25 s).
Prints packets per second for each case; no pytest, no I/O beyond stdout.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from iotbroker.codec import Framer, decode_packet, encode_packet, encode_publish
from iotbroker.codec.packets import Properties, Publish
from iotbroker.codec.properties import encode_properties

TOPIC = "fleet/site-42/device-00017/telemetry"
PAYLOAD = bytes(range(64))
BATCH = 1000


def rate(fn: Callable[[], object], seconds: float, repeats: int = 3) -> float:
    """Packets per second of ``fn`` (each call handles ``BATCH`` packets): best of ``repeats``
    runs of ``seconds / repeats`` each, to damp noise from other processes."""
    fn()  # warm up
    best = 0.0
    for _ in range(repeats):
        calls = 0
        start = time.perf_counter()
        deadline = start + seconds / repeats
        while True:
            fn()
            calls += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, calls * BATCH / (now - start))
    return best


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 0.25
    print(f"PUBLISH, topic {len(TOPIC)} B, payload {len(PAYLOAD)} B; packets/s")
    print(f"{'case':34} {'rate':>12}")
    for version in (4, 5):
        for qos in (0, 1):
            pid = 1 if qos else None
            props_bytes = b"\x00" if version == 5 else None
            packet = Publish(TOPIC, PAYLOAD, qos, False, False, pid)
            raw = encode_packet(packet, version)
            stream = raw * BATCH
            frames = Framer().feed(raw)
            first, body = frames[0]

            def enc_fast(pb: bytes | None = props_bytes, q: int = qos, i: int | None = pid) -> None:
                for _ in range(BATCH):
                    encode_publish(TOPIC, PAYLOAD, q, False, False, i, pb)

            def enc_packet(p: Publish = packet, v: int = version) -> None:
                for _ in range(BATCH):
                    encode_packet(p, v)

            def dec(f: int = first, b: bytes = body, v: int = version) -> None:
                for _ in range(BATCH):
                    decode_packet(f, b, v)

            def frame_dec(s: bytes = stream, v: int = version) -> None:
                for f, b in Framer().feed(s):
                    decode_packet(f, b, v)

            tag = f"v{version} qos{qos}"
            for name, fn in (
                ("encode_publish", enc_fast),
                ("encode_packet", enc_packet),
                ("decode_packet", dec),
                ("framer+decode (1000/read)", frame_dec),
            ):
                print(f"{tag} {name:27} {rate(fn, seconds):>12,.0f}")
    props = Properties(message_expiry_interval=60, user_properties=(("k", "v"),))
    packet = Publish(TOPIC, PAYLOAD, 1, False, False, 7, props)
    raw = encode_packet(packet, 5)
    first, body = Framer().feed(raw)[0]

    def dec_props() -> None:
        for _ in range(BATCH):
            decode_packet(first, body, 5)

    def enc_props() -> None:
        for _ in range(BATCH):
            encode_properties(props, 3)

    print(f"v5 qos1 {'decode, 2 properties':27} {rate(dec_props, seconds):>12,.0f}")
    print(f"v5 {'encode_properties, 2 props':31} {rate(enc_props, seconds):>12,.0f}")


if __name__ == "__main__":
    main()
