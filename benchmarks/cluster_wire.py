"""Issue 14: the cluster's batch format alone (iotbroker/cluster/wire.py), per message:
building a destination node's batch (``Outbox``) and decoding it (``decode_batch``),
for plain QoS 0 messages of 64 B on N topics (NAMED parts) and, with ``--items``, for
the same messages as ITEMS parts (retained, so not plain). NAMED parts in the steady
state: the destination confirmed every name (ids alone); ``--unconfirmed``: every
part defines its names (a destination just met, or one whose confirmations are lost).
Best of 5 rounds of process CPU time (the machine is shared).

    .venv/bin/python benchmarks/cluster_wire.py [--topics 1] [--messages 800] [--items]
        [--unconfirmed]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iotbroker.cluster import wire
from iotbroker.codec.packets import NO_PROPERTIES
from iotbroker.message import Message


def best_us_per_message(fn: Callable[[], object], messages: int, rounds: int = 5,
                        calls: int = 200) -> float:
    results = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            fn()
        results.append((time.process_time() - started) / calls / messages * 1e6)
    return min(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topics", type=int, default=1)
    parser.add_argument("--messages", type=int, default=800,
                        help="messages per batch (about one read's worth at load)")
    parser.add_argument("--items", action="store_true", help="retained: ITEMS parts")
    parser.add_argument("--unconfirmed", action="store_true",
                        help="NAMED parts that define their names (no confirmation)")
    args = parser.parse_args()
    msgs = [Message(f"bench/t{i % args.topics}", b"x" * 64, 0, args.items, NO_PROPERTIES,
                    1.0, None, "bench-publisher") for i in range(args.messages)]

    tables = wire.NameTables()
    books: dict[bytes, wire.NameBook] = {}

    def encode() -> list[tuple[bytes, int]]:
        box = tables.outbox("node-b_1") if not args.unconfirmed else wire.Outbox()
        names: dict[str, bytes] = {}
        for m in msgs:  # as ClusterNode._forward does
            if wire.is_plain(m):
                box.add_plain(m)
            else:
                box.add_message(*wire.record_pieces(m, names))
        return box.batches(b"node-a/1")

    batches = encode()
    if not args.unconfirmed:  # the destination confirms every name: ids alone
        for data, _ in batches:
            wire.decode_batch(data, books)
        book = books[b"node-a/1"]
        tables.of("node-b_1").confirmed(book.generation, book.learned)
        book.learned = []
        batches = encode()
    size = sum(len(b) for b, _ in batches)

    def decode() -> None:
        for data, _ in batches:
            wire.decode_batch(data, books if not args.unconfirmed else None)

    print(f"{args.messages} messages of 64 B on {args.topics} topic(s), "
          f"{'ITEMS' if args.items else 'NAMED'} parts: {size / args.messages:.1f} B per "
          f"message on the wire, encode {best_us_per_message(encode, args.messages):.3f} "
          f"us, decode {best_us_per_message(decode, args.messages):.3f} us per message")


if __name__ == "__main__":
    main()
