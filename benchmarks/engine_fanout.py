"""The engine alone, no sockets: deliveries per CPU-second of a QoS 0 fan-out.

One publisher, ``--subscribers`` MQTT 3.1.1 subscribers of one topic, batches of
``--batch`` PUBLISH packets fed to the publisher's connection, then the engine's
``send_ready`` (what the server's flush does) and every subscriber's
``data_to_send``. Measures process CPU time (``time.process_time``), so a busy
machine changes it less than wall-clock throughput. Issue 13: the pure-Python
build's fan-out regressed when sessions began to send through an outbox (each
subscriber re-encoded the PUBLISH); the encoded bytes now live on the shared
Delivery.

    .venv/bin/python benchmarks/engine_fanout.py [--subscribers 100 --batch 200 --rounds 50]

Prints the median of ``--reps`` runs. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iotbroker import build
from iotbroker.codec import encode_packet
from iotbroker.codec.packets import Publish, Subscribe, Subscription
from tests.engine.test_engine import World


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    world = World.make()
    subscribers = []
    for i in range(args.subscribers):
        client, _ = world.connect(f"s{i}", version=4)
        world.send(client, Subscribe(1, [Subscription("fleet/t", 0)]))
        world.received(client)
        subscribers.append(client)
    publisher, _ = world.connect("pub", version=4)
    data = encode_packet(Publish("fleet/t", b"x" * 64, 0, False, False, None), 4) * args.batch

    def run(rounds: int) -> None:
        for _ in range(rounds):
            for packet in publisher.conn.receive_data(data, world.now):
                world.engine.handle(publisher, packet, world.now)
            world.engine.send_ready(world.now)
            for client in subscribers:
                client.conn.data_to_send()

    run(3)  # warm-up
    rates = []
    for _ in range(args.reps):
        start = time.process_time()
        run(args.rounds)
        rates.append(args.rounds * args.batch * args.subscribers / (time.process_time() - start))
    print(f"{build.describe()}: {statistics.median(rates):,.0f} deliveries per CPU-second "
          f"(median of {args.reps}; 1 -> {args.subscribers}, QoS 0, 64-byte payload)")


if __name__ == "__main__":
    main()
