"""Which does a broker put on the wire first for a QoS 1 PUBLISH: the copy it routes to
the subscriber, or the PUBACK to the publisher? (issue 19, latency tail)

Runs loadgen's ``latency`` scenario (1 publisher at 1,000 msg/s QoS 1 -> 1 subscriber)
for 3 s under ``tcpdump`` on ``lo`` and, per message, compares the first segment
carrying its copy to the subscriber with the segment carrying its PUBACK. Broker and
generator run under SCHED_FIFO (``chrt -f 10``; root). Needs ``tcpdump``. Not a test.

    .venv/bin/python benchmarks/write_order.py mosquitto
    .venv/bin/python benchmarks/write_order.py iotbroker [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from e2e import LOADGEN, make_iotbroker, make_mosquitto  # noqa: E402

PAD = b"\xa5" * 56  # loadgen's payload: 8-byte timestamp + 56 bytes of 0xa5


def segments(path: str) -> list[tuple[int, int, int, bytes]]:
    """(time ns, source port, destination port, TCP payload) of a pcap's segments."""
    with open(path, "rb") as f:
        data = f.read()
    l2 = {1: 14, 113: 16, 276: 20}[struct.unpack_from("<I", data, 20)[0]]
    out = []
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from("<IIII", data, pos)
        pkt = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        ip = pkt[l2:]
        tcp = ip[(ip[0] & 15) * 4:]
        sport, dport = struct.unpack_from(">HH", tcp, 0)
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            out.append((sec * 1_000_000_000 + frac, sport, dport, payload))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("broker", choices=("iotbroker", "mosquitto"))
    ap.add_argument("--baseline", default=None, help="iotbroker from this source tree")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="write-order-")
    broker = (make_iotbroker(workdir, None) if args.broker == "iotbroker"
              else make_mosquitto(workdir, shutil.which("mosquitto") or "/usr/sbin/mosquitto"))
    env = ["env", f"PYTHONPATH={args.baseline}"] if args.baseline else []
    broker.argv = ["chrt", "-f", "10", *env, *broker.argv]
    broker.start()
    cap = os.path.join(workdir, "order.pcap")
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-s", "256", "-U", "-w", cap,
                             "--time-stamp-precision", "nano", f"tcp port {broker.port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        subprocess.run(["chrt", "-f", "10", sys.executable, LOADGEN, "run", "--port",
                        str(broker.port), "--scenario", "latency", "--warmup", "0.5",
                        "--duration", "3", "--broker-pid", str(broker.pid)],
                       capture_output=True, check=True, timeout=60)
        time.sleep(0.3)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
        broker.stop()
    routed: dict[int, int] = {}  # message timestamp -> first copy out
    acked: dict[tuple[int, int], int] = {}  # (publisher port, packet id) -> PUBACK out
    published: dict[tuple[int, int], int] = {}  # (publisher port, packet id) -> message
    for t, sport, dport, payload in segments(cap):
        i = payload.find(PAD)
        if dport == broker.port:
            if payload[:1] == b"\x32" and i >= 8:  # the publisher's QoS 1 PUBLISH
                tl = (payload[2] << 8) | payload[3]
                pid = (payload[4 + tl] << 8) | payload[5 + tl]
                published[(sport, pid)] = struct.unpack_from(">Q", payload, i - 8)[0]
            continue
        while i >= 8:
            routed.setdefault(struct.unpack_from(">Q", payload, i - 8)[0], t)
            i = payload.find(PAD, i + 56)
        j = 0
        while j + 4 <= len(payload) and payload[j] == 0x40 and payload[j + 1] == 2:
            acked.setdefault((dport, (payload[j + 2] << 8) | payload[j + 3]), t)
            j += 4
    gaps = sorted(acked[k] - routed[ts] for k, ts in published.items()
                  if k in acked and ts in routed)
    first = sum(1 for g in gaps if g > 0)
    print(f"{args.broker}: copy to the subscriber first {first}, PUBACK first "
          f"{len(gaps) - first}; PUBACK minus copy, median "
          f"{gaps[len(gaps) // 2] / 1000 if gaps else float('nan'):.1f} µs")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
