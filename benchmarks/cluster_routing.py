"""Issue 14: cross-node routing cost. QoS 0 messages from a publisher on one node to a
subscriber on another (two iotbroker processes on a 1- or 3-server NATS cluster),
against the same with publisher and subscriber on one broker without a cluster.

Reports delivered messages/s, and messages per broker CPU-second (both brokers' CPU
added up in the cluster case; nats-server's and the generator's CPU reported apart),
and each broker's CPU per message (the two nodes: a + b).

    .venv/bin/python benchmarks/cluster_routing.py [--messages 200000 --nats 1 --reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.nats_cluster import NatsCluster

TICKS = os.sysconf("SC_CLK_TCK")
SLOWDOWN = [1]  # --callgrind: the brokers run ~50x slower, the timeouts are longer


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` so far (/proc/<pid>/stat utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def cpu_seconds(pid: int) -> float:
    user, system = cpu_split(pid)
    return user + system


# --syscalls: system calls counted per broker by perf's tracepoints (the socket reads
# and writes, the event loop's waits, all of them together)
SYSCALLS = ["raw_syscalls:sys_enter", "syscalls:sys_enter_recvfrom",
            "syscalls:sys_enter_sendto", "syscalls:sys_enter_read",
            "syscalls:sys_enter_write", "syscalls:sys_enter_writev",
            "syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_epoll_pwait",
            "syscalls:sys_enter_futex",
            "context-switches"]


def _str(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def _frame(first: int, body: bytes) -> bytes:
    n = len(body)
    out = bytearray([first])
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + body


def connect_packet(client_id: str) -> bytes:
    return _frame(0x10, _str("MQTT") + bytes([4, 2, 0, 60]) + _str(client_id))


async def open_client(port: int, client_id: str) -> tuple[asyncio.StreamReader,
                                                            asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect_packet(client_id))
    await reader.readexactly(4)  # CONNACK
    return reader, writer


async def count_publishes(reader: asyncio.StreamReader, total: int,
                          progress: list[int]) -> None:
    buf = bytearray()
    seen = 0
    while seen < total:
        chunk = await reader.read(1 << 16)
        if not chunk:
            raise RuntimeError("subscriber closed")
        buf += chunk
        pos = 0
        n = len(buf)
        while pos < n:
            first = buf[pos]
            length = 0
            mult = 1
            i = pos + 1
            while i < n:
                b = buf[i]
                length += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
            else:
                break
            if i + length > n:
                break
            if first >> 4 == 3:
                seen += 1
            pos = i + length
        del buf[:pos]
        progress[0] = seen


async def run_once(pub_port: int, sub_port: int, messages: int, window: int,
                   wait_routed: bool, topics: int) -> float:
    sreader, swriter = await open_client(sub_port, f"bsub{time.monotonic_ns()}")
    swriter.write(_frame(0x82, (1).to_bytes(2, "big") + _str("bench/#") + b"\x00"))
    await sreader.readexactly(5)  # SUBACK
    _preader, pwriter = await open_client(pub_port, f"bpub{time.monotonic_ns()}")
    packet = _frame(0x30, _str("bench/t") + b"x" * 64)
    # --topics N: the publisher cycles over N topics (a fan-in of N devices), so a
    # turn's messages are spread over topics (the cluster batches per topic and turn)
    packets = [_frame(0x30, _str(f"bench/t{i}") + b"x" * 64) for i in range(topics)]
    if wait_routed:  # NATS has the subscriber's interest when a probe comes through
        while True:
            pwriter.write(packet)
            try:
                await asyncio.wait_for(sreader.read(1 << 16), 0.1)
                break
            except TimeoutError:
                continue
        await asyncio.sleep(0.3)
        while True:
            try:
                await asyncio.wait_for(sreader.read(1 << 16), 0.2)
            except TimeoutError:
                break
    progress = [0]
    counter = asyncio.get_running_loop().create_task(
        count_publishes(sreader, messages, progress))
    started = time.perf_counter()
    sent = 0
    while sent < messages:
        room = min(window - (sent - progress[0]), messages - sent, 500)
        if room <= 0:
            await asyncio.sleep(0.0005)
            continue
        if topics == 1:
            pwriter.write(packet * room)
        else:
            pwriter.write(b"".join(packets[(sent + i) % topics] for i in range(room)))
        sent += room
        await pwriter.drain()
    await asyncio.wait_for(counter, 60 * SLOWDOWN[0])
    took = time.perf_counter() - started
    pwriter.close()
    swriter.close()
    return took


def measure(pids: list[int], nats_pids: list[int], pub_port: int, sub_port: int,
            args: argparse.Namespace, wait_routed: bool) -> dict[str, Any]:
    rates, per_cpu, nats_cpu, gen_cpu = [], [], [], []
    us_each: list[list[float]] = [[] for _ in pids]  # broker CPU us per message, per pid
    us_user: list[list[float]] = [[] for _ in pids]  # of it user time
    us_sys: list[list[float]] = [[] for _ in pids]  # and system time
    for _ in range(args.reps):
        split_before = [cpu_split(p) for p in pids]
        before = [u + s for u, s in split_before]
        nats_before = sum(cpu_seconds(p) for p in nats_pids)
        gen_before = resource.getrusage(resource.RUSAGE_SELF)
        took = asyncio.run(run_once(pub_port, sub_port, args.messages, args.window,
                                    wait_routed, args.topics))
        split_after = [cpu_split(p) for p in pids]
        after = [u + s for u, s in split_after]
        broker_cpu = sum(after) - sum(before)
        for k in range(len(pids)):
            us_each[k].append(1e6 * (after[k] - before[k]) / args.messages)
            us_user[k].append(1e6 * (split_after[k][0] - split_before[k][0]) / args.messages)
            us_sys[k].append(1e6 * (split_after[k][1] - split_before[k][1]) / args.messages)
        gen_after = resource.getrusage(resource.RUSAGE_SELF)
        rates.append(args.messages / took)
        per_cpu.append(args.messages / broker_cpu)
        nats_cpu.append((sum(cpu_seconds(p) for p in nats_pids) - nats_before) / took)
        gen_cpu.append((gen_after.ru_utime + gen_after.ru_stime - gen_before.ru_utime
                        - gen_before.ru_stime) / took)
    return {
        "msgs_per_s": statistics.median(rates),
        "msgs_per_broker_cpu_s": statistics.median(per_cpu),
        "nats_cpu_pct": 100 * statistics.median(nats_cpu),
        "generator_cpu_pct": 100 * statistics.median(gen_cpu),
        "us_each": [statistics.median(u) for u in us_each],
        "us_user": [statistics.median(u) for u in us_user],
        "us_sys": [statistics.median(u) for u in us_sys],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--window", type=int, default=2000)
    parser.add_argument("--nats", type=int, default=1, help="nats-servers (1 or 3)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--topics", type=int, default=1,
                        help="topics the publisher cycles over (default 1)")
    parser.add_argument("--profile", metavar="DIR",
                        help="py-spy record both nodes (collapsed stacks in DIR)")
    parser.add_argument("--perf", metavar="DIR",
                        help="perf record each broker (DIR/single.data, a.data, b.data; "
                             "`perf report -i DIR/b.data --sort dso,sym`)")
    parser.add_argument("--perf-stat", metavar="DIR",
                        help="perf stat each broker (instructions, cycles, context "
                             "switches: DIR/single.txt, a.txt, b.txt)")
    parser.add_argument("--syscalls", metavar="DIR",
                        help="perf stat the system calls of each broker (tracepoints: "
                             "all, recvfrom, sendto, read, write, writev, epoll_wait, "
                             "epoll_pwait, futex; context switches), DIR/single.txt, "
                             "a.txt, b.txt; printed per message")
    parser.add_argument("--callgrind", metavar="DIR",
                        help="run each broker under valgrind --tool=callgrind "
                             "(DIR/callgrind.<role>.<pid>; user-space instructions of the "
                             "real processes, nats-py and the event loop included): run "
                             "it at two --messages and take the difference per message; "
                             "more valgrind options in $CALLGRIND_ARGS, e.g. "
                             "--cache-sim=yes)")
    parser.add_argument("--pin", action="store_true",
                        help="pin the single broker and node a to CPU 0, node b to CPU 1 "
                             "(taskset; the generator and nats-server float): what "
                             "sharing cores among four busy processes costs")
    parser.add_argument("--single-only", action="store_true",
                        help="measure the single broker only (no cluster)")
    parser.add_argument("--cluster-only", action="store_true",
                        help="measure the two nodes only (no single broker)")
    args = parser.parse_args()
    if args.callgrind:
        wrap_in_callgrind(Path(args.callgrind))
    quiet = "logging:\n  level: INFO\n"
    results: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.cluster_only:
            single = BrokerProcess(work / "single", broker_config().replace(
                "logging:\n  level: DEBUG\n", quiet), name="single").start(15 * SLOWDOWN[0])
            assert single.proc is not None
            try:
                if args.pin:
                    pin(single.proc.pid, 0)
                spies = start_profilers(args, {"single": single.proc.pid})
                results.append(("one broker, no cluster", measure(
                    [single.proc.pid], [], single.port, single.port, args, False)))
                stop_profilers(spies)
            finally:
                single.stop(10 * SLOWDOWN[0])
        if not args.single_only:
            results.append(("two nodes, pub a -> sub b", measure_cluster(work, args)))
    print(f"{args.messages} QoS 0 messages of 64 B on {args.topics} topic(s), "
          f"window {args.window}, "
          f"median of {args.reps}, {args.nats} nats-server(s)")
    for label, r in results:
        each = " + ".join(f"{u:.3f}" for u in r["us_each"])
        split = " + ".join(f"{u:.3f}/{s:.3f}" for u, s in zip(r["us_user"], r["us_sys"],
                                                             strict=True))
        print(f"  {label:28s} {r['msgs_per_s']:>9,.0f} msg/s  "
              f"{r['msgs_per_broker_cpu_s']:>9,.0f} msg per broker CPU-s  "
              f"nats {r['nats_cpu_pct']:.0f}% CPU  generator {r['generator_cpu_pct']:.0f}% CPU"
              f"  (broker CPU us/msg: {each}; user/sys: {split})")
        if "per_batch" in r:
            print(f"  {'':28s} messages per NATS message from a: {r['per_batch']:.0f}, "
                  f"NATS bytes per message: a -> nats {r['bytes_in']:.1f}, "
                  f"nats -> b {r['bytes_out']:.1f}; NATS messages to b: {r['msgs_out']:,}")
    if args.syscalls:
        total = args.messages * args.reps
        for name in ("single", "a", "b"):
            path = Path(args.syscalls) / f"{name}.txt"
            if path.exists():
                counts = perf_counts(path)
                print(f"  syscalls per message, {name:6s}: " + ", ".join(
                    f"{event.split('sys_enter_')[-1].replace('raw_syscalls:sys_enter', 'all')}"
                    f" {n / total:.4f}" for event, n in counts.items()))
    if len(results) == 2:
        one, two = results[0][1], results[1][1]
        print(f"  ratio msg per broker CPU-s (cluster / single): "
              f"{two['msgs_per_broker_cpu_s'] / one['msgs_per_broker_cpu_s']:.2f}")


def start_profilers(args: argparse.Namespace,
                    pids: dict[str, int]) -> list[subprocess.Popen[bytes]]:
    """py-spy (``--profile``) or perf (``--perf``, flat: mypyc's C has no frame
    pointers to unwind) on each broker, named by its role."""
    spies = []
    for name, pid in pids.items():
        if args.profile:
            cmd = ["py-spy", "record", "-r", "200", "-f", "raw", "-o",
                   f"{args.profile}/{name}.txt", "--pid", str(pid)]
        elif args.perf:
            cmd = ["perf", "record", "-F", "999", "-o", f"{args.perf}/{name}.data",
                   "-p", str(pid)]
        elif args.syscalls:
            cmd = ["perf", "stat", "-e", ",".join(SYSCALLS), "-o",
                   f"{args.syscalls}/{name}.txt", "-p", str(pid)]
        elif args.perf_stat:
            cmd = ["perf", "stat", "-e", "instructions,cycles,context-switches,"
                   "cpu-migrations,task-clock,page-faults", "-o", f"{args.perf_stat}/{name}.txt",
                   "-p", str(pid)]
        else:
            continue
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    if spies:
        time.sleep(1)
    return spies


def stop_profilers(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(2)
        spy.wait(30)


def perf_counts(path: Path) -> dict[str, int]:
    """The counts of a ``perf stat -o`` file, by event."""
    counts = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].replace(",", "").isdigit():
            counts[parts[1]] = int(parts[0].replace(",", ""))
    return counts


def wrap_in_callgrind(out: Path) -> None:
    """Brokers started from here on (``sys.executable -m iotbroker run --config
    ROLE.yaml``) run under callgrind, each into ``out/callgrind.ROLE.PID``."""
    SLOWDOWN[0] = 40
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    wrapper = out / "python-under-callgrind"
    wrapper.write_text(
        "#!/bin/sh\n"
        "role=broker\n"
        'for arg in "$@"; do case "$arg" in *.yaml) role=$(basename "$arg" .yaml);; '
        "esac; done\n"
        "exec valgrind --tool=callgrind $CALLGRIND_ARGS "
        f"--callgrind-out-file={out}/callgrind.$role.%p "
        f'{sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    # nats-server beside the interpreter (nats_server_binary) is still found on PATH
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    sys.executable = str(wrapper)


def pin(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` on ``cpu`` only."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def nats_in_msgs(cluster: NatsCluster, name: str) -> int:
    """NATS messages the connection(s) named ``name`` published so far."""
    return nats_counts(cluster, name)["in_msgs"]


def nats_counts(cluster: NatsCluster, name: str) -> dict[str, int]:
    """in_msgs, in_bytes, out_msgs, out_bytes of the connection(s) named ``name``
    (nats-server's connz; bytes are payload bytes)."""
    conns = [c for server in cluster.servers
             for c in server.monitor("connz").get("connections", [])
             if c.get("name") == name]
    return {k: sum(c.get(k, 0) for c in conns)
            for k in ("in_msgs", "in_bytes", "out_msgs", "out_bytes")}


def measure_cluster(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Two nodes a and b on a NATS cluster: the publisher on a, the subscriber on b."""
    cluster = NatsCluster(work / "nats", size=args.nats).start()
    nodes = []
    try:
        for name in ("a", "b"):
            text = broker_config(extra=(
                f"cluster:\n  node_name: {name}\n  nats: [{', '.join(cluster.urls)}]\n"
                f"  replicas: {min(3, args.nats)}\n"
            )).replace("logging:\n  level: DEBUG\n", "logging:\n  level: INFO\n")
            nodes.append(BrokerProcess(work / name, text, name=name).start(15 * SLOWDOWN[0]))
        for node in nodes:
            deadline = time.monotonic() + 10 * SLOWDOWN[0]
            while "connected to NATS" not in node.log_text():
                if time.monotonic() > deadline:
                    raise RuntimeError(node.log_text())
                time.sleep(0.05)
        pids = [n.proc.pid for n in nodes if n.proc is not None]
        nats_pids = [s.proc.pid for s in cluster.servers if s.proc is not None]
        if args.pin:
            for cpu, pid in enumerate(pids):
                pin(pid, cpu)
        spies = start_profilers(args, dict(zip("ab", pids, strict=True)))
        a_before = nats_counts(cluster, "iotbroker a")
        b_before = nats_counts(cluster, "iotbroker b")
        two = measure(pids, nats_pids, nodes[0].port, nodes[1].port, args, True)
        a_after = nats_counts(cluster, "iotbroker a")
        b_after = nats_counts(cluster, "iotbroker b")
        batches = a_after["in_msgs"] - a_before["in_msgs"]
        stop_profilers(spies)
        # (the probes of wait_routed, heartbeats and announcements included: a bound)
        total = args.messages * args.reps
        two["per_batch"] = total / max(1, batches)
        two["bytes_in"] = (a_after["in_bytes"] - a_before["in_bytes"]) / total
        two["bytes_out"] = (b_after["out_bytes"] - b_before["out_bytes"]) / total
        two["msgs_out"] = b_after["out_msgs"] - b_before["out_msgs"]
        return two
    finally:
        for node in nodes:
            node.stop(10 * SLOWDOWN[0])
        cluster.stop()


if __name__ == "__main__":
    main()
