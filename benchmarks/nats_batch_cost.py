"""Issue 14: what the NATS client library (nats-py) itself costs per batch, apart from
iotbroker: one process publishes ``--count`` NATS messages of ``--size`` bytes
(``nc.publish``, as ``ClusterNode._run`` does), another subscribes with a callback (as
``ClusterNode._on_batch`` is called), on a lone nats-server; each reports its process
CPU per message (Python, the library's parse and buffers, and the kernel's socket
work). A cluster batch of N plain QoS 0 messages of 64 B is about 72·N bytes
(``benchmarks/cluster_routing.py`` prints N, "messages per NATS message").

``--trim`` leaves glibc's default heap trimming on (``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_TOP_PAD_`` unset): a small process then gives the top of its heap back after
each large buffer and page-faults it in again for the next one, which a broker's larger
heap does not (default: both set to 32 MiB / 16 MiB, as in a broker).

    .venv/bin/python benchmarks/nats_batch_cost.py [--sizes 30000,75000,150000]

Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def _subscriber(url: str, count: int) -> None:
    import nats  # noqa: PLC0415

    nc = await nats.connect(url)
    got = 0
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_message(_msg: object) -> None:
        nonlocal got
        got += 1
        if got == count:
            done.set_result(None)

    await nc.subscribe("bench.batch", cb=on_message)
    await nc.flush()
    print("ready", flush=True)
    started = time.process_time()
    await done
    print(f"{1e6 * (time.process_time() - started) / count:.1f}", flush=True)
    await nc.close()


async def _publisher(url: str, count: int, size: int) -> None:
    import nats  # noqa: PLC0415

    nc = await nats.connect(url)
    payload = b"x" * size
    started = time.process_time()
    for i in range(count):
        await nc.publish("bench.batch", payload)
        if i % 4 == 0:
            await asyncio.sleep(0)  # (a broker's loop turns between its batches)
    await nc.flush()
    print(f"{1e6 * (time.process_time() - started) / count:.1f}", flush=True)
    await nc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="30000,75000,150000")
    ap.add_argument("--count", type=int, default=4000)
    ap.add_argument("--trim", action="store_true", help="glibc's default heap trimming")
    ap.add_argument("--role", choices=("pub", "sub"), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import uvloop  # noqa: PLC0415

    if args.role == "sub":
        uvloop.run(_subscriber(args.url, args.count))
        return
    if args.role == "pub":
        uvloop.run(_publisher(args.url, args.count, args.size))
        return
    from tests.helpers.nats_cluster import NatsCluster  # noqa: PLC0415

    env = dict(os.environ)
    if not args.trim:
        env.update(MALLOC_TRIM_THRESHOLD_=str(32 << 20), MALLOC_TOP_PAD_=str(16 << 20))
    me = [sys.executable, __file__, "--count", str(args.count)]
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NatsCluster(Path(tmp), size=1).start()
        url = cluster.urls[0]
        try:
            print(f"nats-py CPU per NATS message, {args.count} messages each, "
                  f"heap trimming {'on' if args.trim else 'off'}:")
            for size in (int(s) for s in args.sizes.split(",")):
                sub = subprocess.Popen([*me, "--role", "sub", "--url", url], env=env,
                                       stdout=subprocess.PIPE, text=True)
                assert sub.stdout is not None
                if sub.stdout.readline().strip() != "ready":
                    raise SystemExit("subscriber did not start")
                pub = subprocess.run([*me, "--role", "pub", "--url", url, "--size",
                                      str(size)], env=env, capture_output=True, text=True,
                                     check=True)
                sub_us = float(sub.stdout.readline())
                sub.wait(30)
                pub_us = float(pub.stdout)
                print(f"  {size:>7} B: publish {pub_us:6.1f} us, receive {sub_us:6.1f} us "
                      f"({1e3 * (pub_us + sub_us) / size:.2f} us per KB; "
                      f"{72 * (pub_us + sub_us) / size:.3f} us per 72-B message)")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
