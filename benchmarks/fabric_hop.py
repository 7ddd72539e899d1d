"""Issue 14: the cross-worker hop alone: what nats-server costs the two nodes against a
direct socket between two local workers, with the real batches.

The batches are the ones node *a* sends for ``--per-turn`` QoS 0 PUBLISHes of 64 B
cycling over ``--topics`` topics (as ``cluster_routing.py --topics``): built once, in
this process, by a real :class:`~iotbroker.cluster.node.ClusterNode` room on an
in-process broker (``cluster_path.py``'s wiring: a's interest index holds b's
``bench/#``, its name tables confirmed by an in-process b), ``--distinct`` turns of
them after 20 warm-up turns (whose batches define the topic names). They are then
**pre-built**: process A only sends them, cycling over them; the batch building of a
node is not part of the hop.

Process A sends, process B receives each batch and runs the node's receive path on it:
``ClusterNode._batch`` of a real node (``wire.scan_named`` + ``wire.route_named``) on a
broker with **no subscriber** (the routing's trie lookups are done, nothing is
delivered). Per transport, the same processes' code otherwise:

* ``nats``: A ``await nc.publish(subject, batch)`` on a client made by
  ``ClusterNode._connect`` (as ``ClusterNode._run`` does), through a real nats-server
  (the venv's, started here on a free loopback port) to B, subscribed as the node does
  (``ClusterNode._connect``: natsread.py's ``BatchParser`` hands each batch to the
  node's ``_batch``);
* ``nats-own``: the same with ``IOTBROKER_CLUSTER_NATS_READ=nats`` in B (nats-py's own
  path: ``Msg``, queue, the subscription's task, ``_on_batch``);
* ``unix`` / ``tcp``: a Unix stream socket / loopback TCP between A and B,
  length-prefixed frames (4 bytes, big-endian); A ``transport.writelines([header,
  batch])`` (pausing when the transport asks); B an :class:`asyncio.BufferedProtocol`
  (uvloop) that receives into one buffer and hands each complete frame to ``_batch``
  as ``bytes`` (the one copy).

Flow control, the same on every transport: B answers every 8 batches (and at the end
of a round) with the count received so far (NATS: a publish to a subject A is
subscribed to; direct: 8 bytes back on the socket); A keeps at most ``--window``
batches unanswered. Every transport's processes are started first and warmed (the
defining batches); then ``--reps`` rounds, the transports interleaved in each round.
Per message: CPU µs of A, B and nats-server (run time of all their threads from
/proc/<pid>/task/*/schedstat; user/system from /proc/<pid>/stat beside), each
transport's per-round differences to the first one, and b's ``_batch`` alone timed in
this process on the same batches (no transport).

``--callgrind DIR``: A and B of each transport under callgrind (PYTHONHASHSEED=0),
one round, at each of the two ``--cg-messages`` counts; prints the difference of their
instructions per message (the start-up, imports and warm-up cancel out).

    flock /tmp/bench.lock chrt -f 10 .venv-c/bin/python benchmarks/fabric_hop.py \
        [--messages 5000000 --reps 3 --transports nats,nats-own,unix,tcp]
    flock /tmp/bench.lock chrt -f 10 .venv-c/bin/python benchmarks/fabric_hop.py \
        --callgrind /tmp/cg --cg-messages 100000,300000 --transports unix

Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TICKS = os.sysconf("SC_CLK_TCK")
# (+ the transport: each pair of processes on the nats-server has its own subjects)
SUBJECT = "iotbroker.node.fabric_hop_"
ACK_SUBJECT = "iotbroker.fabric_hop.ack_"
ACK_EVERY = 8
WARM_TURNS = 20
TRANSPORTS = ("nats", "nats-own", "unix", "tcp")


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def run_ns(pid: int) -> int:
    """Nanoseconds on a CPU of every thread of ``pid`` so far (/proc/.../schedstat:
    finer than the 10 ms ticks of user/system time)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # (ended)
            total += int((task / "schedstat").read_text().split()[0])
    return total


# ---------------------------------------------------------------- the batches


def build_batches(topics: int, per_turn: int, distinct: int, decode_messages: int
                  ) -> dict[str, Any]:
    """Node a's batches: the warm-up turns' (names defined) and ``distinct`` turns'
    after them (names by id), each as (payload, messages in it); and ``decode_us``:
    CPU µs per message of b's ``_batch`` on the steady ones here (no transport), over
    about ``decode_messages``."""
    import uvloop  # noqa: PLC0415

    from benchmarks.cluster_path import client, cluster_node, packets_of  # noqa: PLC0415
    from benchmarks.inproc import make_broker  # noqa: PLC0415
    from iotbroker.cluster.remote import encode_value, interest_key  # noqa: PLC0415

    async def build() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        nodes = []
        for name in ("a", "b"):
            broker = make_broker(loop, "fabric_hop.py", cluster={
                "node_name": name, "nats": ["nats://127.0.0.1:1"], "replicas": 1})
            nodes.append((broker, cluster_node(broker)))
        (a, node_a), (b, node_b) = nodes
        pub, _ = client(a, "hop-pub")
        node_a.remote.put(interest_key(node_b.token, "bench/#"),
                          encode_value("bench/#", 1), time.monotonic())
        for node in (node_a, node_b):
            node.sessions.after_turn([], [], [], [])
            node._commands.clear()
        out: dict[str, list[tuple[bytes, int]]] = {"warm": [], "steady": []}
        for t, data in enumerate(packets_of(topics, per_turn, WARM_TURNS + distinct)):
            pub.data_received(data)
            a.flush()
            commands = node_a._commands
            while commands:
                _, subject, payload, count = commands.popleft()
                node_a._pending_pubs -= count
                out["warm" if t < WARM_TURNS else "steady"].append((payload, count))
                node_b._batch(payload, subject)
            b.flush()
            back = node_b._commands
            while back:
                node_a._on_control(back.popleft()[2])
        if any(count == 0 for _, count in out["steady"]):
            raise SystemExit("a control message among the steady batches")
        # the receive path alone, in this process: b's _batch on the steady batches
        steady = out["steady"]
        rounds = max(1, decode_messages // sum(c for _, c in steady))
        batch = node_b._batch
        gc.collect()
        t0 = time.process_time()
        for _ in range(rounds):
            for payload, _count in steady:
                batch(payload, "decode")
        took = time.process_time() - t0
        out["decode_us"] = 1e6 * took / (rounds * sum(c for _, c in steady))
        b.flush()
        return out

    return uvloop.run(build())


# ---------------------------------------------------------------- process B


def receiver(args: argparse.Namespace) -> None:
    import uvloop  # noqa: PLC0415

    uvloop.run(_receiver(args))


async def _receiver(args: argparse.Namespace) -> None:
    from benchmarks.cluster_path import cluster_node  # noqa: PLC0415
    from benchmarks.inproc import make_broker  # noqa: PLC0415
    from iotbroker.cluster.natsread import BatchParser  # noqa: PLC0415
    from iotbroker.server.broker import GC_THRESHOLDS  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    broker = make_broker(loop, "fabric_hop.py", cluster={
        "node_name": "b", "nats": [args.url or "nats://127.0.0.1:1"], "replicas": 1})
    node = cluster_node(broker)
    batch = node._batch
    rounds = [int(n) for n in args.rounds.split(",")]
    ends = [args.warm]
    for n in rounds:
        ends.append(ends[-1] + n)
    state = {"got": 0, "next": 0}
    finished = loop.create_future()
    send_ack: list[Any] = [None]

    def got(data: bytes, subject: bytes | str) -> None:
        batch(data, subject)
        n = state["got"] = state["got"] + 1
        at_end = n == ends[state["next"]]
        if n % ACK_EVERY == 0 or at_end:
            send_ack[0](n)
        if at_end:
            print("warm" if state["next"] == 0 else f"done {n}", flush=True)
            state["next"] += 1
            if state["next"] == len(ends):
                finished.set_result(None)

    if args.transport.startswith("nats"):
        if args.transport == "nats-own":
            os.environ["IOTBROKER_CLUSTER_NATS_READ"] = "nats"
        nc = await node._connect()  # natsread.py's parser, or nats-py's own path
        node.nc = nc

        async def on_batch(msg: Any) -> None:  # as ClusterNode._on_batch
            got(msg.data, msg.subject)

        sub = await nc.subscribe(SUBJECT + args.transport, cb=on_batch)
        parser = nc._ps
        if isinstance(parser, BatchParser):  # as ClusterNode._run
            parser.sid = sub._id
            parser.deliver = got
        if (args.transport == "nats") != isinstance(parser, BatchParser):
            raise SystemExit(f"{args.transport}: parser {type(parser).__name__}")

        acks: set[asyncio.Task[None]] = set()

        def nats_ack(n: int) -> None:
            task = loop.create_task(nc.publish(ACK_SUBJECT + args.transport,
                                               n.to_bytes(8, "big")))
            acks.add(task)
            task.add_done_callback(acks.discard)

        send_ack[0] = nats_ack
        await nc.flush()
        where = "-"
    else:
        receiving = FrameReceiver(got, send_ack)
        if args.transport == "unix":
            server = await loop.create_unix_server(lambda: receiving, args.path)
            where = args.path
        else:
            server = await loop.create_server(lambda: receiving, "127.0.0.1", 0)
            where = str(server.sockets[0].getsockname()[1])
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    print(f"ready {where}", flush=True)
    await finished
    print(f"stats received={node.received} unnamed={node.unnamed} "
          f"undecodable={node.undecodable}", flush=True)
    await asyncio.sleep(0.2)  # (the last answers out)
    logging.getLogger("iotbroker.cluster").setLevel(logging.ERROR)  # ("lost NATS")
    if args.transport.startswith("nats"):
        await nc.close()
    else:
        server.close()


class FrameReceiver(asyncio.BufferedProtocol):
    """Length-prefixed frames read into one buffer; each complete frame handed on as
    ``bytes`` (one copy); a frame's start left at the buffer's end moves to its start
    before the next read (a copy of the partial frame only)."""

    def __init__(self, deliver: Any, send_ack: list[Any]) -> None:
        self.deliver = deliver
        self.buf = bytearray(1 << 22)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.transport: asyncio.Transport | None = None
        send_ack[0] = self.ack

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def ack(self, n: int) -> None:
        assert self.transport is not None
        self.transport.write(n.to_bytes(8, "big"))

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.buf) - self.end < 1 << 18:
            start, end = self.start, self.end
            if start:
                self.view[: end - start] = self.view[start:end]
                self.start, self.end = 0, end - start
            if len(self.buf) - self.end < 1 << 18:  # (a frame larger than the buffer)
                self.view.release()
                self.buf.extend(bytes(len(self.buf)))
                self.view = memoryview(self.buf)
        return self.view[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        end = self.end = self.end + nbytes
        buf, view, pos = self.buf, self.view, self.start
        while end - pos >= 4:
            size = int.from_bytes(buf[pos : pos + 4], "big")
            if end - pos - 4 < size:
                break
            frame = bytes(view[pos + 4 : pos + 4 + size])
            pos += 4 + size
            self.deliver(frame, SUBJECT)
        if pos == end:
            self.start = self.end = 0
        else:
            self.start = pos

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


# ---------------------------------------------------------------- process A


def sender(args: argparse.Namespace) -> None:
    import uvloop  # noqa: PLC0415

    uvloop.run(_sender(args))


class AckReader(asyncio.Protocol):
    """A's side of a direct connection: B's answers (cumulative counts, 8 bytes)."""

    def __init__(self, acked: list[int], wake: asyncio.Event) -> None:
        self.acked = acked
        self.wake = wake
        self.pending = b""
        self.paused: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        whole = len(data) - len(data) % 8
        if whole:
            self.acked[0] = int.from_bytes(data[whole - 8 : whole], "big")
            self.wake.set()
        self.pending = data[whole:]

    def pause_writing(self) -> None:
        self.paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.paused is not None:
            self.paused.set_result(None)
            self.paused = None


async def _sender(args: argparse.Namespace) -> None:
    from benchmarks.inproc import make_broker  # noqa: PLC0415
    from iotbroker.cluster.node import ClusterNode  # noqa: PLC0415
    from iotbroker.server.broker import GC_THRESHOLDS  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    with open(args.batches, "rb") as f:
        built = pickle.load(f)
    warm = [payload for payload, _ in built["warm"]]
    steady = [payload for payload, _ in built["steady"]]
    rounds = [int(n) for n in args.rounds.split(",")]
    acked = [0]
    wake = asyncio.Event()
    window = args.window
    sent = 0
    told = (await stdin.readline()).split()  # connect <where>
    if told[:1] != [b"connect"]:
        raise SystemExit(f"A: {told!r}")
    where = told[1].decode()
    if args.transport.startswith("nats"):
        broker = make_broker(loop, "fabric_hop.py", cluster={
            "node_name": "a", "nats": [args.url], "replicas": 1})
        assert broker.config.cluster is not None
        node = ClusterNode(broker.config.cluster, broker.engine, broker._after_remote)
        nc = await node._connect()

        async def on_ack(msg: Any) -> None:
            acked[0] = int.from_bytes(msg.data, "big")
            wake.set()

        await nc.subscribe(ACK_SUBJECT + args.transport, cb=on_ack)
        await nc.flush()
        publish = nc.publish
        subject = SUBJECT + args.transport

        async def send(batches: list[bytes], count: int) -> None:
            nonlocal sent
            n = len(batches)
            for i in range(count):
                while sent - acked[0] >= window:
                    wake.clear()
                    await wake.wait()
                await publish(subject, batches[i % n])  # as ClusterNode._run
                sent += 1
    else:
        proto = AckReader(acked, wake)
        if args.transport == "unix":
            transport, _ = await loop.create_unix_connection(lambda: proto, where)
        else:
            transport, _ = await loop.create_connection(lambda: proto, "127.0.0.1",
                                                        int(where))
        writelines = transport.writelines

        async def send(batches: list[bytes], count: int) -> None:
            nonlocal sent
            n = len(batches)
            for i in range(count):
                while sent - acked[0] >= window:
                    wake.clear()
                    await wake.wait()
                if proto.paused is not None:
                    await proto.paused
                payload = batches[i % n]
                writelines([len(payload).to_bytes(4, "big"), payload])
                sent += 1

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    await send(warm, len(warm))
    offset = 0
    for count in rounds:
        line = await stdin.readline()
        if line.strip() != b"go":
            raise SystemExit(f"A: {line!r}")
        # each round goes on through the cycle where the last one stopped
        await send(steady[offset:] + steady[:offset], count)
        offset = (offset + count) % len(steady)
    await stdin.readline()  # quit
    if args.transport.startswith("nats"):
        await nc.flush()
        await nc.close()
    else:
        transport.close()
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- the orchestration


class Pair:
    """One transport's A and B processes."""

    def __init__(self, transport: str, me: list[str], common: list[str], work: Path,
                 url: str, env: dict[str, str], wrap: list[str] | None) -> None:
        self.transport = transport
        path = str(work / f"{transport}.sock")
        b_cmd = [*me, "--role", "b", "--transport", transport, "--url", url, "--path", path,
                 *common]
        a_wrap = b_wrap = []
        if wrap is not None:
            b_wrap = [*wrap, f"--callgrind-out-file={work}/callgrind.{transport}.b.%p"]
            a_wrap = [*wrap, f"--callgrind-out-file={work}/callgrind.{transport}.a.%p"]
        self.b = subprocess.Popen([*b_wrap, *b_cmd], stdout=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True, env=env)
        # A starts beside B (imports, batches) and connects when told where
        a_cmd = [*me, "--role", "a", "--transport", transport, "--url", url, *common]
        self.a = subprocess.Popen([*a_wrap, *a_cmd], stdin=subprocess.PIPE, text=True,
                                  env=env)
        self.path = path

    def connect(self) -> None:
        ready = self.line(self.b.stdout).split()
        if ready[:1] != ["ready"]:
            raise SystemExit(f"{self.transport}: B said {ready}")
        where = ready[1] if self.transport == "tcp" else self.path
        assert self.a.stdin is not None
        self.a.stdin.write(f"connect {where}\n")
        self.a.stdin.flush()
        if self.line(self.b.stdout) != "warm":
            raise SystemExit(f"{self.transport}: B not warmed")

    @staticmethod
    def line(stream: IO[str] | None) -> str:
        assert stream is not None
        return stream.readline().strip()

    def round(self, nats_pid: int | None) -> dict[str, float]:
        """One round: CPU seconds of A, B (user, system) and nats-server."""
        pids = {"a": self.a.pid, "b": self.b.pid}
        if nats_pid is not None and self.transport.startswith("nats"):
            pids["nats"] = nats_pid
        before = {k: cpu_split(p) for k, p in pids.items()}
        ns_before = {k: run_ns(p) for k, p in pids.items()}
        assert self.a.stdin is not None
        self.a.stdin.write("go\n")
        self.a.stdin.flush()
        done = self.line(self.b.stdout)
        if not done.startswith("done"):
            raise SystemExit(f"{self.transport}: B said {done!r}")
        ns_after = {k: run_ns(p) for k, p in pids.items()}
        after = {k: cpu_split(p) for k, p in pids.items()}
        out = {}
        for k in pids:
            out[k] = (ns_after[k] - ns_before[k]) / 1e9
            out[f"{k}_user"] = after[k][0] - before[k][0]
            out[f"{k}_sys"] = after[k][1] - before[k][1]
        return out

    def finish(self) -> str:
        assert self.a.stdin is not None
        self.a.stdin.write("quit\n")
        self.a.stdin.flush()
        stats = self.line(self.b.stdout)
        self.a.wait(120)
        self.b.wait(120)
        return stats


def rounds_of(steady: list[tuple[bytes, int]], messages: int) -> tuple[int, int]:
    """Batches (cycling over ``steady``) for at least ``messages``: (batches, messages)."""
    batches = got = 0
    while got < messages:
        got += steady[batches % len(steady)][1]
        batches += 1
    return batches, got


def run_all(args: argparse.Namespace, built: dict[str, Any], batch_file: Path,
            work: Path, messages: int, reps: int, wrap: list[str] | None
            ) -> dict[str, list[dict[str, float]]]:
    from tests.helpers.nats_cluster import NatsCluster  # noqa: PLC0415

    transports = args.transports.split(",")
    nb, exact = rounds_of(built["steady"], messages)
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_=str(32 << 20),
               MALLOC_TOP_PAD_=str(16 << 20), PYTHONHASHSEED="0")
    env.pop("IOTBROKER_CLUSTER_NATS_READ", None)
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--batches", str(batch_file), "--warm", str(len(built["warm"])),
              "--rounds", ",".join([str(nb)] * reps), "--window", str(args.window)]
    cluster = None
    nats_pid = None
    url = "nats://127.0.0.1:1"
    if any(t.startswith("nats") for t in transports):
        cluster = NatsCluster(work / "nats", size=1).start()
        url = cluster.urls[0]
        proc = cluster.servers[0].proc
        nats_pid = proc.pid if proc is not None else None
    pairs: list[Pair] = []
    results: dict[str, list[dict[str, float]]] = {t: [] for t in transports}
    try:
        for t in transports:
            pairs.append(Pair(t, me, common, work, url, env, wrap))
        for pair in pairs:
            pair.connect()
        for _ in range(reps):
            for pair in pairs:
                r = pair.round(nats_pid)
                r["messages"] = exact
                r["batches"] = nb
                results[pair.transport].append(r)
        for pair in pairs:
            stats = pair.finish()
            warm = sum(c for _, c in built["warm"])
            print(f"  {pair.transport}: B {stats} (sent: warm-up {warm} + {reps} x {exact})",
                  flush=True)
    finally:
        for pair in pairs:
            for proc in (pair.a, pair.b):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        if cluster is not None:
            cluster.stop()
    return results


def callgrind_total(work: Path, transport: str, side: str) -> int:
    files = list(work.glob(f"callgrind.{transport}.{side}.*"))
    if len(files) != 1:
        raise SystemExit(f"callgrind files of {transport} {side}: {files}")
    for line in files[0].read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {files[0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5_000_000, help="per round")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--transports", default="nats,nats-own,unix,tcp")
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--per-turn", type=int, default=750,
                    help="PUBLISHes per turn of node a (one read of the publisher); "
                         "cluster_routing.py --topics 1000 measures 720-790 messages "
                         "per NATS message")
    ap.add_argument("--distinct", type=int, default=30,
                    help="turns of steady batches built (A cycles over them)")
    ap.add_argument("--window", type=int, default=32, help="batches unanswered, at most")
    ap.add_argument("--callgrind", metavar="DIR")
    ap.add_argument("--cg-messages", default="100000,300000")
    ap.add_argument("--role", choices=("a", "b"), help=argparse.SUPPRESS)
    ap.add_argument("--transport", choices=TRANSPORTS, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--batches", help=argparse.SUPPRESS)
    ap.add_argument("--warm", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "a":
        sender(args)
        return
    if args.role == "b":
        receiver(args)
        return
    for t in args.transports.split(","):
        if t not in TRANSPORTS:
            raise SystemExit(f"unknown transport {t!r}")
    from iotbroker import build  # noqa: PLC0415

    built = build_batches(args.topics, args.per_turn, args.distinct,
                          0 if args.callgrind else args.messages)
    steady = built["steady"]
    sizes = [len(p) for p, _ in steady]
    counts = [c for _, c in steady]
    print(f"{build.describe()}; load {os.getloadavg()[0]:.2f}; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC")
    print(f"batches of node a: {len(built['warm'])} warm-up, {len(steady)} steady "
          f"(cycled): {statistics.mean(counts):.0f} messages, "
          f"{statistics.mean(sizes) / 1000:.1f} KB each ({min(sizes)}-{max(sizes)} B), "
          f"{sum(sizes) / sum(counts):.1f} B per message", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        batch_file = work / "batches.pickle"
        with open(batch_file, "wb") as f:
            pickle.dump(built, f)
        if args.callgrind:
            out = Path(args.callgrind).resolve()
            out.mkdir(parents=True, exist_ok=True)
            wrap = ["valgrind", "--tool=callgrind", *os.environ.get(
                "CALLGRIND_ARGS", "").split()]
            counts_cg = [int(n) for n in args.cg_messages.split(",")]
            # totals kept in DIR/totals.json: the two counts may come from two runs
            saved = out / "totals.json"
            totals = json.loads(saved.read_text()) if saved.exists() else {}
            transports = args.transports.split(",")
            for m in counts_cg:
                sub = out / f"m{m}"
                sub.mkdir(exist_ok=True)
                for old in sub.glob("callgrind.*"):
                    old.unlink()
                run_all(args, built, batch_file, sub, m, 1, wrap)
                exact = rounds_of(steady, m)[1]
                for t in transports:
                    totals.setdefault(t, {})[str(exact)] = {
                        side: callgrind_total(sub, t, side) for side in "ab"}
                saved.write_text(json.dumps(totals, indent=1))
            print("callgrind instructions per message ((N2 - N1) / (M2 - M1)):")
            for t in transports:
                have = sorted(totals.get(t, {}), key=int)
                if len(have) < 2:
                    print(f"  {t:9s} one count so far ({have})")
                    continue
                lo, hi = have[0], have[-1]
                dm = int(hi) - int(lo)
                a = (totals[t][hi]["a"] - totals[t][lo]["a"]) / dm
                b = (totals[t][hi]["b"] - totals[t][lo]["b"]) / dm
                print(f"  {t:9s} A {a:8.1f}  B {b:8.1f}  A+B {a + b:8.1f}   (M {lo} / {hi}; "
                      f"A {totals[t][lo]['a']:,} / {totals[t][hi]['a']:,}; "
                      f"B {totals[t][lo]['b']:,} / {totals[t][hi]['b']:,})")
            return
        results = run_all(args, built, batch_file, work, args.messages, args.reps, None)
    report(results, args.reps, built["decode_us"])


def report(results: dict[str, list[dict[str, float]]], reps: int, decode_us: float
           ) -> None:
    med = statistics.median
    first = results[next(iter(results))][0]
    print(f"CPU µs per message, median of {reps} interleaved rounds of "
          f"{first['messages']:,} messages in {first['batches']:,} batches "
          f"(run time of all threads, /proc/<pid>/task/*/schedstat; user+system from "
          f"/proc/<pid>/stat, 10 ms ticks); load {os.getloadavg()[0]:.2f}; "
          f"{time.strftime('%H:%M:%S', time.gmtime())} UTC")
    print(f"  b's _batch alone, in process (no transport): {decode_us:.3f}")
    print(f"  {'transport':9s} {'A':>6s} {'B':>6s} {'A+B':>6s} {'nats':>6s} {'all':>6s}"
          f"   user+sys: A / B / nats")
    base: tuple[str, list[float], list[float], list[float]] | None = None
    for t, runs in results.items():
        def us(key: str, rs: list[dict[str, float]] = runs) -> list[float]:
            return [1e6 * r.get(key, 0.0) / r["messages"] for r in rs]

        a, b, n = us("a"), us("b"), us("nats")
        ab = [x + y for x, y in zip(a, b, strict=True)]
        every = [x + y for x, y in zip(ab, n, strict=True)]
        split = " / ".join(f"{med(us(k + '_user')):.3f}+{med(us(k + '_sys')):.3f}"
                           for k in ("a", "b", "nats"))
        print(f"  {t:9s} {med(a):6.3f} {med(b):6.3f} {med(ab):6.3f} {med(n):6.3f} "
              f"{med(every):6.3f}   {split}")
        print(f"  {'':9s} rounds: A {'/'.join(f'{v:.3f}' for v in a)}  "
              f"B {'/'.join(f'{v:.3f}' for v in b)}  "
              f"nats {'/'.join(f'{v:.3f}' for v in n)}")
        if base is None:
            base = (t, a, b, n)
            continue
        # the pairs of one round (interleaved): this transport minus the first one
        da = [x - y for x, y in zip(a, base[1], strict=True)]
        db = [x - y for x, y in zip(b, base[2], strict=True)]
        dn = [x - y for x, y in zip(n, base[3], strict=True)]
        dab = [x + y for x, y in zip(da, db, strict=True)]
        dall = [x + y for x, y in zip(dab, dn, strict=True)]
        print(f"  {'':9s} minus {base[0]}, per round (median): A {med(da):+.3f} "
              f"B {med(db):+.3f} A+B {med(dab):+.3f} "
              f"({'/'.join(f'{v:+.3f}' for v in dab)}) all {med(dall):+.3f}")


if __name__ == "__main__":
    main()
