"""RSS per idle TCP connection over time, broker on its defaults (issue 19, parking).

Starts iotbroker (memory storage, WARNING logs, no ``$SYS``; ``limits.park_idle_after``
at its default of 30 s unless ``--park-idle-after``), has a generator subprocess
(``ws_idle.py worker --transport tcp``) open ``--warmup`` then N idle MQTT 3.1.1
connections (keepalive 600), and prints the broker's RSS growth per connection at
fixed times after the last CONNACK, so that one sees what parking does to the RSS of a
fleet that connected at once.

    .venv/bin/python benchmarks/park_rss.py 10000
    .venv/bin/python benchmarks/park_rss.py 10000 --park-idle-after 0.2

Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from e2e import Broker, free_port, iotbroker_python  # noqa: E402
from loadgen import proc_stat, raise_nofile  # noqa: E402

SAMPLES = (1, 5, 20, 32, 36, 39, 42, 45, 50, 60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("clients", type=int)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--park-idle-after", default=None, metavar="SECONDS")
    args = ap.parse_args()
    raise_nofile()
    work = tempfile.mkdtemp(prefix="park-rss-")
    port = free_port()
    cfg = os.path.join(work, "iotbroker.yaml")
    limits = (f"limits: {{park_idle_after: {args.park_idle_after}}}\n"
              if args.park_idle_after is not None else "")
    with open(cfg, "w") as f:
        f.write(f"listeners:\n  - {{name: t, type: tcp, host: 127.0.0.1, port: {port}}}\n"
                "storage: {backend: memory}\nsys_topics: {enabled: false}\n"
                f"logging: {{level: WARNING}}\n{limits}")
    broker = Broker("iotbroker", [iotbroker_python(), "-m", "iotbroker", "run", "--config", cfg],
                    port, work)
    broker.start()
    gen = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "ws_idle.py"), "worker", "--port", str(port),
         "--transport", "tcp", "--clients", str(args.clients), "--warmup", str(args.warmup)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert gen.stdin is not None and gen.stdout is not None
    try:
        gen.stdout.readline()
        time.sleep(2)
        rss0 = proc_stat(broker.pid)[1]
        gen.stdin.write("\n")
        gen.stdin.flush()
        t0 = time.monotonic()
        gen.stdout.readline()
        print(f"{args.clients} connected in {time.monotonic() - t0:.1f} s", flush=True)
        t1 = time.monotonic()
        for t in SAMPLES:
            time.sleep(max(0.0, t1 + t - time.monotonic()))
            per = (proc_stat(broker.pid)[1] - rss0) / 1024 / args.clients
            print(f"+{t:2d} s: {per:.2f} KiB per connection", flush=True)
    finally:
        gen.stdin.close()
        gen.wait(timeout=60)
        broker.stop()


if __name__ == "__main__":
    main()
