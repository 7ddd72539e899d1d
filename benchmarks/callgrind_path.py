"""Instructions per QoS 1 message, counted by valgrind (issue 19, i19-p99c): no clock.

Runs ``benchmarks/publish_path.py``'s in-process broker and clients (of the build in
the current directory, so one copy of this file measures any checkout): 1,000 warm-up
messages, then N more, each the publisher's QoS 1 PUBLISH, the flush (the forward and
the PUBACK), the subscriber's PUBACK and its flush; the PUBLISHes are 1,000 encoded
once and cycled, so nothing but the loop grows with N (a second argument K > 1: the
PUBLISHes alternate between K topics). Run it twice under callgrind
and divide the difference by the difference of N::

    cd /tmp/lead && for n in 1000 3000; do flock /tmp/bench.lock valgrind \\
        --tool=callgrind --callgrind-out-file=/tmp/cg-$n.out .venv-c/bin/python \\
        /path/to/benchmarks/callgrind_path.py $n; done
    # (Collected(3000) - Collected(1000)) / 2000 = instructions per message

``callgrind_annotate --tree=caller`` on the two outputs gives who calls the
allocators per message the same way (docs/performance.md, "third cut").

With ``COLD_SWEEP`` set to ``benchmarks/cold_sweep.c`` built as a shared library, the
simulated caches are emptied before the PUBLISH and before the subscriber's PUBACK
(``cold_footprint.py --mode path``); without it the run is as before.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
import sys

sys.path.insert(0, os.getcwd())

import uvloop

from benchmarks.inproc import cancel_timers, frozen_gc, make_broker
from benchmarks.publish_path import TOPIC, subscribed_pair
from iotbroker.codec import encode_packet
from iotbroker.codec.packets import Publish, Subscribe, Subscription
from iotbroker.server.broker import Broker
from iotbroker.server.transport import ClientProtocol


def alternating(broker: Broker, sub: ClientProtocol, topics: int) -> list[bytes]:
    """``topics`` > 1: the subscriber also subscribes to that many other topics (as long
    as TOPIC), and the 1,000 PUBLISHes cycle through them, so that no two consecutive
    messages have the same topic (per-topic one-entry caches miss)."""
    names = [f"{TOPIC[:-2]}{k:02d}" for k in range(topics)]
    sub.data_received(encode_packet(Subscribe(2, [Subscription(t, qos=1) for t in names]), 4))
    broker.flush()
    return [encode_packet(Publish(topic=names[i % topics],
                                  payload=struct.pack(">Q", i) + b"\xa5" * 56,
                                  qos=1, packet_id=i % 65535 + 1), 4) for i in range(1000)]


async def run(count: int, topics: int) -> None:
    broker = make_broker(asyncio.get_running_loop(), "callgrind_path.py")
    sub, sub_t, pub, publishes = subscribed_pair(broker, 1000)
    if topics > 1:
        publishes = alternating(broker, sub, topics)
    at = 2 + 2 + len(TOPIC)
    pubacks = [[bytes((0x40, 2, hi, lo)) for lo in range(256)] for hi in range(256)]
    sweep = ctypes.CDLL(os.environ["COLD_SWEEP"]).cold_sweep if "COLD_SWEEP" in os.environ else None
    with frozen_gc():
        for i in range(1000 + count):
            if sweep is not None:
                sweep()
            pub.data_received(publishes[i % 1000])
            broker.flush()
            out = sub_t.last
            if sweep is not None:
                sweep()
            sub.data_received(pubacks[out[at]][out[at + 1]])
            broker.flush()
    cancel_timers(broker, (sub, pub))


if __name__ == "__main__":
    uvloop.run(run(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1))
