"""100,000 idle MQTT connections on ``iotbroker --workers 6`` (issue 14, "What it must
reach", first bullet), and one message that reaches subscribers on every worker.

Each round:

1. starts the broker as a user does, through the console entry beside this Python:
   ``iotbroker --workers W --listen 127.0.0.1:PORT --data-dir DIR`` (defaults
   otherwise: RocksDB, INFO logs with a line per connect, ``$SYS`` topics; the
   supervisor starts the embedded nats-server), and waits until every worker listens
   and has its buckets open;
2. reads each process's RSS, CPU and socket count from /proc (the empty processes);
3. ``--procs`` generator processes (this file, ``gen`` mode: plain sockets + epoll, no
   asyncio) open ``--clients`` MQTT 3.1.1 connections together (each process
   < 19,000 descriptors), source addresses 127.0.0.2.. bound explicitly (``--src-addrs``;
   one address pair gives at most ~28,000 ephemeral ports), at most ``--rate``
   new connections per second in all and ``--concurrency`` handshakes in flight;
   every ``--sub-every``-th client also subscribes ``fleet/all`` (QoS 1). A handshake
   that takes longer than 60 s counts as an error; the phase ends after
   ``--connect-limit`` seconds at most;
4. reads /proc again: connections per worker (SO_REUSEPORT's spread), RSS per worker
   and KiB per connection net of the empty processes, CPU per connection (workers,
   nats-server, supervisor; the generators' own CPU is reported apart); which worker
   holds each subscriber (its socket's inode in /proc/net/tcp and /proc/PID/fd);
5. a publisher (a separate connection) publishes ``--messages`` QoS 1 messages to
   ``fleet/all``, one per second; the generators count, per subscriber, which arrived
   and when: delivered / expected per worker, and the time from the PUBLISH to the last
   subscriber's copy;
6. holds the connections ``--hold`` seconds (the broker's idle CPU), then the
   generators DISCONNECT and close them (connections lost while idle are counted);
7. stops the supervisor with SIGTERM and checks that every worker and the nats-server
   are gone (any left is killed by its PID; so is every generator, even on failure).

Each round first runs the same steps against a baseline: one plain broker process (no
``--workers``, no nats-server) with one worker's share of the clients
(``--no-baseline`` skips it). Connecting faster costs less CPU per connection (claims
and watches batch): compare ``--rate 1500`` with ``--rate 6000 --concurrency 1024``.

    .venv/bin/python benchmarks/workers_scale.py                       # 100,000, 2 rounds
    .venv/bin/python benchmarks/workers_scale.py --clients 20000 --rounds 1 --rate 2000
    .venv/bin/python benchmarks/workers_scale.py --json /tmp/workers_scale.json

Not a test: nothing is asserted; numbers are printed (and written as JSON), medians
over the rounds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import json
import os
import queue
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from iotbroker.codec import encode_packet  # noqa: E402
from iotbroker.codec.packets import Connect, Disconnect, Publish, Subscribe, Subscription  # noqa: E402

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
TOPIC = "fleet/all"
#: A handshake (TCP + CONNECT/CONNACK [+ SUBSCRIBE/SUBACK]) slower than this is an error.
HANDSHAKE_TIMEOUT = 60.0
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ /proc readings


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    """(CPU seconds user+system, RSS bytes); (nan, 0) when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan"), 0
    return (int(fields[11]) + int(fields[12])) / TICKS, int(fields[21]) * PAGE


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds (its descriptors that are sockets)."""
    out = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def tcp_mem_pages() -> int:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1])
    return 0


def server_side_inodes(port: int) -> dict[tuple[str, int], int]:
    """(client address, client port) -> inode of the broker's socket for it, from
    /proc/net/tcp (IPv4; the broker listens on 127.0.0.1:port)."""
    want = f":{port:04X}"
    out: dict[tuple[str, int], int] = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if not parts[1].endswith(want) or parts[3] != "01":  # ESTABLISHED
                continue
            raddr, rport = parts[2].split(":")
            ip = socket.inet_ntoa(int(raddr, 16).to_bytes(4, "little"))
            out[(ip, int(rport, 16))] = int(parts[9])
    return out


def snapshot(pids: dict[str, int]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, pid in pids.items():
        cpu, rss = proc_cpu_rss(pid)
        out[name] = {"cpu": cpu, "rss": rss, "sockets": len(socket_inodes(pid)),
                     "fds": fd_count(pid)}
    return out


# ------------------------------------------------------------------ generator process


def emit(obj: Any) -> None:
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    sys.stdout.flush()


class Frames:
    """MQTT frames out of a byte stream (fixed header + remaining length)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= 2:
            length, mult, i = 0, 1, 1
            while True:
                if i >= len(self.buf):
                    return out
                b = self.buf[i]
                length += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if b < 128:
                    break
            if len(self.buf) < i + length:
                return out
            out.append((self.buf[0], self.buf[i:i + length]))
            self.buf = self.buf[i + length:]
        return out


def gen_connect(spec: dict[str, Any]) -> tuple[list[socket.socket], list[socket.socket],
                                                 dict[str, int]]:
    """Open ``spec['clients']`` connections: paced at ``rate`` per second, at most
    ``concurrency`` handshakes in flight, every ``sub_every``-th also subscribes.
    Returns (idle sockets, subscriber sockets, error counts by kind)."""
    n, srcs = spec["clients"], spec["src_addrs"]
    conc, rate, sub_every = spec["concurrency"], spec["rate"], spec["sub_every"]
    limit_at = time.monotonic() + spec["connect_limit"]
    template = encode_packet(Connect(client_id=f"{spec['tag']}-000000",
                                     keepalive=spec["keepalive"]), 4)
    cut = template.rindex(b"000000")
    pre, post = template[:cut], template[cut + 6:]
    subscribe = encode_packet(Subscribe(1, [Subscription(TOPIC, 1)]), 4)
    addr = ("127.0.0.1", spec["port"])
    ep = select.epoll()
    # fd -> [sock, index, state (0 connecting, 1 CONNECT sent, 2 SUBSCRIBE sent), buf]
    pending: dict[int, list[Any]] = {}
    started: collections.deque[tuple[float, int, int]] = collections.deque()  # (t, fd, i)
    idle: list[socket.socket] = []
    subs: list[socket.socket] = []
    errors: collections.Counter[str] = collections.Counter()
    nxt = 0
    t0 = time.monotonic()

    def fail(fd: int, kind: str) -> None:
        sock = pending.pop(fd)[0]
        with contextlib.suppress(OSError):
            ep.unregister(fd)
        sock.close()
        errors[kind] += 1

    while nxt < n or pending:
        now = time.monotonic()
        if now > limit_at:
            for fd in list(pending):
                fail(fd, "phase_limit")
            errors["not_started"] += n - nxt
            break
        allowed = min(n, int((now - t0) * rate) + 1)
        while nxt < allowed and len(pending) < conc:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((srcs[nxt % len(srcs)], 0))
            sock.setblocking(False)
            rc = sock.connect_ex(addr)
            if rc not in (0, errno.EINPROGRESS):
                sock.close()
                errors[f"connect_{errno.errorcode.get(rc, rc)}"] += 1
            else:
                fd = sock.fileno()
                pending[fd] = [sock, nxt, 0, b""]
                started.append((now, fd, nxt))
                ep.register(fd, select.EPOLLOUT)
            nxt += 1
        while started and (started[0][1] not in pending
                           or pending[started[0][1]][1] != started[0][2]):
            started.popleft()  # done or failed (the fd may have been reused)
        while started and now - started[0][0] > HANDSHAKE_TIMEOUT:
            _t, fd, i = started.popleft()
            if fd in pending and pending[fd][1] == i:
                fail(fd, "timeout")
        for fd, ev in ep.poll(0.005):
            entry = pending.get(fd)
            if entry is None:
                continue
            sock, i, state, buf = entry
            if ev & (select.EPOLLERR | select.EPOLLHUP) and state == 0:
                fail(fd, "refused")
                continue
            if state == 0:
                try:
                    sock.send(pre + b"%06d" % i + post)
                except OSError:
                    fail(fd, "send")
                    continue
                entry[2] = 1
                ep.modify(fd, select.EPOLLIN)
                continue
            try:
                data = sock.recv(64)
            except OSError:
                fail(fd, "reset")
                continue
            if not data:
                fail(fd, "closed")
                continue
            buf += data
            entry[3] = buf
            if state == 1 and len(buf) >= 4:
                if buf[:2] != b"\x20\x02" or buf[3] != 0:
                    fail(fd, "refused_connack")
                    continue
                if i % sub_every == 0:
                    entry[2], entry[3] = 2, buf[4:]
                    sock.send(subscribe)
                    continue
                ep.unregister(fd)
                del pending[fd]
                idle.append(sock)
            elif state == 2 and len(buf) >= 5:
                if buf[0] != 0x90 or buf[4] not in (0, 1):
                    fail(fd, "refused_suback")
                    continue
                ep.unregister(fd)
                del pending[fd]
                subs.append(sock)
    ep.close()
    return idle, subs, dict(errors)


def gen_watch(subs: list[socket.socket], count: int, deadline: float) -> dict[str, Any]:
    """Read the subscribers until each has ``count`` messages (or ``deadline``);
    QoS 1 deliveries are acknowledged. Returns when each message reached each one."""
    ep = select.epoll()
    frames = {s.fileno(): Frames() for s in subs}
    arrivals: dict[int, dict[int, float]] = {s.fileno(): {} for s in subs}
    by_fd = {s.fileno(): s for s in subs}
    for s in subs:
        ep.register(s.fileno(), select.EPOLLIN)
    done = 0
    while done < len(subs) and time.monotonic() < deadline:
        for fd, _ev in ep.poll(0.05):
            try:
                data = by_fd[fd].recv(65536)
            except OSError:
                data = b""
            now = time.monotonic()
            if not data:
                ep.unregister(fd)
                continue
            for first, body in frames[fd].feed(data):
                if first & 0xF0 != 0x30:
                    continue
                qos = (first >> 1) & 3
                tl = body[0] << 8 | body[1]
                payload_at = 2 + tl + (2 if qos else 0)
                if qos:
                    by_fd[fd].send(b"\x40\x02" + body[2 + tl:4 + tl])
                payload = body[payload_at:]
                if payload.startswith(b"m"):
                    got = arrivals[fd]
                    index = int(payload[1:].split(b" ")[0])
                    if index not in got:
                        got[index] = now
                        if len(got) == count:
                            done += 1
    ep.close()
    out = []
    for s in subs:
        ip, port = s.getsockname()
        out.append([ip, port, arrivals[s.fileno()]])
    return {"subscribers": out}


def gen_main(spec: dict[str, Any]) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    emit("READY")
    t_go = float(sys.stdin.readline().split()[1])
    time.sleep(max(0.0, t_go - time.monotonic()))
    t_start, c0 = time.monotonic(), time.process_time()
    idle, subs, errors = gen_connect(spec)
    emit({"t_start": t_start, "t_end": time.monotonic(), "cpu": time.process_time() - c0,
          "connected": len(idle) + len(subs), "subscribers": len(subs), "errors": errors,
          "fds": fd_count(os.getpid())})
    for line in sys.stdin:
        words = line.split()
        if words[0] == "WATCH":
            emit("WATCHING")
            emit(gen_watch(subs, int(words[1]), float(words[2])))
        elif words[0] == "RELEASE":
            lost = 0
            disconnect = encode_packet(Disconnect(), 4)
            for s in (*idle, *subs):
                s.setblocking(False)
                try:
                    while True:  # what is left of the deliveries, then b"" if closed
                        data = s.recv(65536)
                        if not data:
                            lost += 1
                            break
                except BlockingIOError:
                    pass
                except OSError:
                    lost += 1
                with contextlib.suppress(OSError):
                    s.send(disconnect)
                s.close()
            emit({"lost_while_idle": lost})
            return


# ------------------------------------------------------------------ coordinator


class Publisher:
    """A blocking MQTT 3.1.1 client that publishes QoS 1 and waits for the PUBACK."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames = Frames()
        self.queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self.sock.sendall(encode_packet(Connect(client_id=f"ws-pub-{os.getpid()}",
                                                keepalive=600), 4))
        first, body = self._packet()
        if first != 0x20 or body[1] != 0:
            raise RuntimeError(f"publisher refused: {first:#x} {body!r}")

    def _packet(self) -> tuple[int, bytes]:
        while not self.queue:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("publisher: the broker closed the connection")
            self.queue.extend(self.frames.feed(data))
        return self.queue.popleft()

    def publish(self, index: int, packet_id: int) -> float:
        """Seconds until the PUBACK."""
        t0 = time.monotonic()
        self.sock.sendall(encode_packet(Publish(TOPIC, b"m%d %d" % (index, time.time_ns()),
                                                1, packet_id=packet_id), 4))
        while time.monotonic() - t0 < 60:  # each recv also times out after 30 s
            first, body = self._packet()
            if first & 0xF0 == 0x40 and body[:2] == packet_id.to_bytes(2, "big"):
                return time.monotonic() - t0
        raise RuntimeError(f"no PUBACK for message {index} within 60 s")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(encode_packet(Disconnect(), 4))
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pump(gen: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert gen.stdout is not None
    for line in gen.stdout:
        lines.put(line)
    lines.put(None)


class Round:
    """One round: the supervisor, its workers and nats-server, the generators."""

    def __init__(self, args: argparse.Namespace, index: int, workers: int,
                 clients: int) -> None:
        self.args = args
        self.index = index
        self.workers = workers  # 1: the baseline, one plain broker process
        self.clients = clients
        self.workdir = tempfile.mkdtemp(prefix="iotbroker-wscale-")
        self.port = free_port()
        self.log_path = os.path.join(self.workdir, "supervisor.log")
        self.sup: subprocess.Popen[bytes] | None = None
        self.gens: list[subprocess.Popen[str]] = []
        self.pids: dict[str, int] = {}
        self.lines: dict[int, queue.Queue[str | None]] = {}

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def start_broker(self) -> None:
        entry = os.path.join(os.path.dirname(sys.executable), "iotbroker")
        cmd = [entry, *(["--workers", str(self.workers)] if self.workers > 1 else []),
               "--listen", f"127.0.0.1:{self.port}",
               "--data-dir", os.path.join(self.workdir, "data")]
        print(f"round {self.index}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        with open(self.log_path, "wb") as log:
            self.sup = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=self.workdir)
        self.pids["supervisor" if self.workers > 1 else "w0"] = self.sup.pid
        deadline = time.monotonic() + 180
        w = self.workers
        clustered = w > 1
        while time.monotonic() < deadline:
            text = self.log()
            if (len(re.findall(rf"listening on 127\.0\.0\.1:{self.port}", text)) >= w
                    and (not clustered or (
                        len(re.findall(r"session bucket .* open", text)) >= w
                        and len(re.findall(r"retained messages from bucket", text)) >= w))):
                break
            if self.sup.poll() is not None:
                raise RuntimeError(f"supervisor exited {self.sup.returncode}:\n{text[-3000:]}")
            time.sleep(0.2)
        else:
            raise RuntimeError(f"workers not ready in 180 s:\n{self.log()[-3000:]}")
        text = self.log()
        for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", text):
            self.pids[f"w{i}"] = int(pid)
        nats = re.findall(r"nats-server pid (\d+)", text)
        if nats:
            self.pids["nats"] = int(nats[-1])

    def worker_names(self) -> list[str]:
        return [f"w{i}" for i in range(self.workers)]

    def start_gens(self) -> None:
        a = self.args
        srcs = [f"127.0.0.{2 + k}" for k in range(a.src_addrs)]
        for p in range(a.procs):
            n = self.clients // a.procs + (1 if p < self.clients % a.procs else 0)
            spec = {"port": self.port, "clients": n, "src_addrs": srcs[p::a.procs] or srcs,
                    "concurrency": max(1, a.concurrency // a.procs),
                    "rate": a.rate / a.procs, "sub_every": a.sub_every,
                    "keepalive": a.keepalive, "connect_limit": a.connect_limit,
                    "tag": f"ws{self.index}-{p:02d}"}
            gen = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "gen", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.gens.append(gen)
            self.lines[gen.pid] = queue.Queue()
            threading.Thread(target=_pump, args=(gen, self.lines[gen.pid]),
                             daemon=True).start()
        for g in self.gens:
            line = self._read(g, 30)
            if line != "READY":
                raise RuntimeError(f"generator failed to start: {line!r}")

    def _read(self, gen: subprocess.Popen[str], timeout: float) -> str:
        """The generator's next line, within ``timeout`` seconds (a thread per
        generator reads its output into a queue)."""
        try:
            line = self.lines[gen.pid].get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"generator {gen.pid}: nothing within {timeout:.0f}s") from None
        if line is None:
            raise RuntimeError(f"generator {gen.pid} exited ({gen.poll()})")
        return line.strip()

    def _tell(self, text: str) -> None:
        for g in self.gens:
            assert g.stdin is not None
            g.stdin.write(text + "\n")
            g.stdin.flush()

    def run(self) -> dict[str, Any]:
        a = self.args
        self.start_broker()
        time.sleep(a.settle)
        base = snapshot(self.pids)
        mem0 = tcp_mem_pages()
        self.start_gens()
        t_go = time.monotonic() + 0.2
        self._tell(f"GO {t_go}")
        res = [json.loads(self._read(g, a.connect_limit + HANDSHAKE_TIMEOUT + 60))
               for g in self.gens]
        connect_end = snapshot(self.pids)
        connected = sum(r["connected"] for r in res)
        span = max(r["t_end"] for r in res) - min(r["t_start"] for r in res)
        # Let the workers finish what connecting left (claims, their watches), then
        # read memory.
        time.sleep(a.settle)
        after = snapshot(self.pids)
        mem1 = tcp_mem_pages()
        inode_of = server_side_inodes(self.port)
        worker_of_inode = {}
        for name in self.worker_names():
            for inode in socket_inodes(self.pids[name]):
                worker_of_inode[inode] = name
        # Publish: every subscriber should get every message.
        deadline = time.monotonic() + a.messages * a.publish_gap + 60
        self._tell(f"WATCH {a.messages} {deadline}")
        for g in self.gens:
            if self._read(g, 30) != "WATCHING":
                raise RuntimeError("generator did not start watching")
        pub = Publisher(self.port)
        time.sleep(1.0)
        sent_at, acks = [], []
        for i in range(a.messages):
            sent_at.append(time.monotonic())
            acks.append(pub.publish(i, i + 1) * 1000)
            time.sleep(a.publish_gap)
        watched = [json.loads(self._read(g, max(5.0, deadline - time.monotonic() + 10)))
                   for g in self.gens]
        pub.close()
        per_worker: dict[str, dict[str, int]] = {
            n: {"subscribers": 0, "complete": 0} for n in (*self.worker_names(), "?")}
        reach_ms: list[list[float]] = [[] for _ in range(a.messages)]
        delivered = [0] * a.messages
        subscribers = 0
        for w in watched:
            for ip, port, got in w["subscribers"]:
                subscribers += 1
                worker = worker_of_inode.get(inode_of.get((ip, port), -1), "?")
                per_worker[worker]["subscribers"] += 1
                if len(got) == a.messages:
                    per_worker[worker]["complete"] += 1
                for k, t in got.items():
                    delivered[int(k)] += 1
                    reach_ms[int(k)].append((t - sent_at[int(k)]) * 1000)
        killed = self.kill_worker() if a.kill_worker and self.workers > 1 else {}
        # Hold: idle CPU.
        hold0 = snapshot(self.pids)
        t_hold = time.monotonic()
        time.sleep(a.hold)
        hold1 = snapshot(self.pids)
        hold_s = time.monotonic() - t_hold
        # Release.
        t_rel = time.monotonic()
        self._tell("RELEASE")
        tail = [json.loads(self._read(g, 120)) for g in self.gens]
        worker_pids = [self.pids[n] for n in self.worker_names()]
        base_socks = sum(base[n]["sockets"] for n in self.worker_names())
        while (sum(len(socket_inodes(p)) for p in worker_pids) > base_socks + 2
               and time.monotonic() - t_rel < 120):
            time.sleep(0.2)
        close_s = time.monotonic() - t_rel

        def delta(name: str, key: str, s0: dict[str, Any], s1: dict[str, Any]) -> float:
            if name not in s0:
                return 0.0  # the baseline has no supervisor and no nats-server
            return float(s1[name][key] - s0[name][key])

        workers = self.worker_names()
        conns = {n: after[n]["sockets"] - base[n]["sockets"] for n in workers}
        mean = statistics.mean(conns.values())
        rss_workers = sum(delta(n, "rss", base, after) for n in workers)
        rss_nats = delta("nats", "rss", base, after) if "nats" in self.pids else 0.0
        cpu_workers = sum(delta(n, "cpu", base, after) for n in workers)
        cpu_nats = delta("nats", "cpu", base, after) if "nats" in self.pids else 0.0
        cpu_sup = delta("supervisor", "cpu", base, after)
        per_conn = max(1, connected)
        reach_all = [max(r) if len(r) == subscribers and r else float("nan")
                     for r in reach_ms]
        return {
            "round": self.index,
            "clients": self.clients, "workers": self.workers, "gen_procs": a.procs,
            "connected": connected,
            "errors": _sum_counters(r["errors"] for r in res),
            "gen_fds_max": max(r["fds"] for r in res),
            "connect_seconds": span,
            "connect_rate": connected / span,
            "gen_cpu_s": sum(r["cpu"] for r in res),
            "cpu_s_connecting": {"workers": sum(delta(n, "cpu", base, connect_end)
                                                for n in workers),
                                 "nats": delta("nats", "cpu", base, connect_end)
                                 if "nats" in self.pids else 0.0,
                                 "supervisor": delta("supervisor", "cpu", base, connect_end)},
            "us_per_conn": {"workers": cpu_workers / per_conn * 1e6,
                            "nats": cpu_nats / per_conn * 1e6,
                            "supervisor": cpu_sup / per_conn * 1e6,
                            "generators": sum(r["cpu"] for r in res) / per_conn * 1e6},
            "conns_per_worker": conns,
            "spread": {"min": min(conns.values()), "max": max(conns.values()),
                       "max_over_mean": max(conns.values()) / mean if mean else 0.0,
                       "cv_pct": statistics.pstdev(conns.values()) / mean * 100
                       if mean else 0.0},
            "sockets_per_worker": {n: after[n]["sockets"] for n in workers},
            "fds_per_worker": {n: after[n]["fds"] for n in workers},
            "rss_mib_empty": {n: base[n]["rss"] / 2**20 for n in self.pids},
            "rss_mib_connected": {n: after[n]["rss"] / 2**20 for n in self.pids},
            "kib_per_conn_workers": rss_workers / 1024 / per_conn,
            "kib_per_conn_nats": rss_nats / 1024 / per_conn,
            "kib_per_conn_all": (rss_workers + rss_nats
                                 + delta("supervisor", "rss", base, after)) / 1024 / per_conn,
            "kernel_tcp_kib_per_conn": (mem1 - mem0) * PAGE / 1024 / per_conn,
            "subscribers": subscribers,
            "subscribers_per_worker": per_worker,
            "delivered": delivered,
            "reach_all_ms": reach_all,
            "reach_p50_ms": [statistics.median(r) if r else float("nan") for r in reach_ms],
            "puback_ms": acks,
            "idle_cpu_pct": {"workers": sum(delta(n, "cpu", hold0, hold1) for n in workers)
                             / hold_s * 100,
                             "nats": (delta("nats", "cpu", hold0, hold1) / hold_s * 100)
                             if "nats" in self.pids else 0.0},
            "lost_while_idle": sum(t["lost_while_idle"] for t in tail),
            "close_seconds": close_s,
            "kill_worker": killed,
        }

    def kill_worker(self) -> dict[str, Any]:
        """``--kill-worker``: kill -9 worker 1 while every connection is held; time until
        the supervisor has restarted it and it listens and has its session bucket open
        again (its start replays every client id's claim from the bucket's watch), its
        CPU and RSS over the next 20 s, and whether the other workers kept their
        connections. Its own clients are gone (counted as lost at the release)."""
        text = self.log()
        starts = len(re.findall(r"worker 1 started", text))
        opens = len(re.findall(r"\[w1\] \S+: cluster: session bucket", text))
        listens = len(re.findall(r"\[w1\] \S+: listening on", text))
        others = [n for n in self.worker_names() if n != "w1"]
        before = snapshot({n: self.pids[n] for n in others})
        victim = self.pids["w1"]
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        new_pid = None
        ready = None
        while time.monotonic() - t0 < 120:
            text = self.log()
            found = re.findall(r"worker 1 started \(pid (\d+)\)", text)
            if len(found) > starts:
                new_pid = int(found[-1])
            if (new_pid is not None
                    and len(re.findall(r"\[w1\] \S+: listening on", text)) > listens
                    and len(re.findall(r"\[w1\] \S+: cluster: session bucket", text)) > opens):
                ready = time.monotonic() - t0
                break
            time.sleep(0.05)
        samples = []
        if new_pid is not None:
            self.pids["w1"] = new_pid
            for _ in range(20):
                cpu, rss = proc_cpu_rss(new_pid)
                samples.append([round(time.monotonic() - t0, 2), cpu, round(rss / 2**20, 1)])
                time.sleep(1.0)
        after = snapshot({n: self.pids[n] for n in others})
        return {"killed_pid": victim, "new_pid": new_pid, "ready_seconds": ready,
                "new_worker_cpu_rss": samples,
                "others_alive": all(alive(self.pids[n]) for n in others),
                "others_sockets_before": {n: before[n]["sockets"] for n in others},
                "others_sockets_after": {n: after[n]["sockets"] for n in others}}

    def stop(self) -> dict[str, Any]:
        """Stop everything this round started, by PID; say what had to be killed."""
        killed = []
        for g in self.gens:
            with contextlib.suppress(Exception):
                assert g.stdin is not None
                g.stdin.close()
        for g in self.gens:
            try:
                g.wait(timeout=30)
            except subprocess.TimeoutExpired:
                g.kill()
                g.wait()
                killed.append(f"generator {g.pid}")
        code = None
        t0 = time.monotonic()
        if self.sup is not None:
            if self.sup.poll() is None:
                self.sup.send_signal(signal.SIGTERM)
            try:
                code = self.sup.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.sup.kill()
                code = self.sup.wait()
                killed.append(f"supervisor {self.sup.pid}")
        stop_s = time.monotonic() - t0
        with contextlib.suppress(OSError):  # workers started after our last read
            text = self.log()
            for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", text):
                self.pids.setdefault(f"w{i}-{pid}", int(pid))
        for name, pid in self.pids.items():
            if name != "supervisor" and alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.append(f"{name} {pid}")
        with contextlib.suppress(OSError):
            import shutil  # noqa: PLC0415

            shutil.rmtree(self.workdir, ignore_errors=True)
        return {"supervisor_exit": code, "stop_seconds": stop_s, "killed_after_stop": killed}


def _sum_counters(items: Any) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for item in items:
        total.update(item)
    return dict(total)


def med(results: list[dict[str, Any]], key: str, *sub: str) -> float:
    values = []
    for r in results:
        v: Any = r[key]
        for s in sub:
            v = v[s]
        values.append(v)
    return statistics.median(values)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds that completed."""
    ok = [r for r in results if "failed" not in r]
    if not ok:
        return {}
    return {
        "rounds_ok": len(ok),
        "connected": med(ok, "connected"),
        "connect_seconds": med(ok, "connect_seconds"),
        "connect_rate": med(ok, "connect_rate"),
        "max_sockets_per_worker": max(max(r["sockets_per_worker"].values()) for r in ok),
        "spread_max_over_mean": med(ok, "spread", "max_over_mean"),
        "spread_cv_pct": med(ok, "spread", "cv_pct"),
        "kib_per_conn_workers": med(ok, "kib_per_conn_workers"),
        "kib_per_conn_nats": med(ok, "kib_per_conn_nats"),
        "kib_per_conn_all": med(ok, "kib_per_conn_all"),
        "us_per_conn_workers": med(ok, "us_per_conn", "workers"),
        "us_per_conn_nats": med(ok, "us_per_conn", "nats"),
        "us_per_conn_generators": med(ok, "us_per_conn", "generators"),
        "subscribers": med(ok, "subscribers"),
        "all_delivered": all(d == r["subscribers"] for r in ok for d in r["delivered"]),
        "reach_all_ms_median": statistics.median([x for r in ok for x in r["reach_all_ms"]]),
        "puback_ms_median": statistics.median([x for r in ok for x in r["puback_ms"]]),
        "idle_cpu_pct_workers": med(ok, "idle_cpu_pct", "workers"),
        "lost_while_idle": sum(r["lost_while_idle"] for r in ok),
        "errors": _sum_counters(r["errors"] for r in ok),
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "gen":
        gen_main(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--procs", type=int, default=8, help="generator processes")
    ap.add_argument("--src-addrs", type=int, default=16, help="127.0.0.2.. source addresses")
    ap.add_argument("--rate", type=float, default=1500, help="new connections/s in all")
    ap.add_argument("--concurrency", type=int, default=256, help="handshakes in flight")
    ap.add_argument("--sub-every", type=int, default=200,
                    help="every N-th client subscribes fleet/all")
    ap.add_argument("--keepalive", type=int, default=3600)
    ap.add_argument("--connect-limit", type=float, default=600.0,
                    help="seconds the connect phase may take at most")
    ap.add_argument("--messages", type=int, default=5)
    ap.add_argument("--publish-gap", type=float, default=1.0)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--hold", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip the baseline: one plain broker process (no --workers) with "
                         "clients/workers connections, run before the workers each round")
    ap.add_argument("--kill-worker", action="store_true",
                    help="after the publishes, kill -9 worker 1 and time its restart "
                         "(its clients are lost)")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    per_proc = -(-args.clients // args.procs)
    if per_proc >= 19_000:
        ap.error(f"{per_proc} connections per generator process: use more --procs")
    if args.clients / args.src_addrs > 25_000:
        ap.error("more than 25,000 connections per source address: use more --src-addrs")
    runs: list[tuple[str, int, int]] = [("workers", args.workers, args.clients)]
    if args.baseline:
        # one plain broker process with one worker's share of the clients, first
        runs.insert(0, ("baseline", 1, args.clients // args.workers))
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in runs}
    for k in range(args.rounds):
        for label, workers, clients in runs:
            rnd = Round(args, k, workers, clients)
            result: dict[str, Any] = {"round": k}
            try:
                result = rnd.run()
            except Exception as exc:  # a failed round is reported, the next one runs
                result["failed"] = f"{type(exc).__name__}: {exc}"
            finally:
                result.update(rnd.stop())
            result["label"] = label
            print(json.dumps(result, indent=1), flush=True)
            results[label].append(result)
    summaries = {label: summarize(rs) for label, rs in results.items()}
    print(json.dumps({"summary": summaries}, indent=1), flush=True)
    print("\n| run | rounds | connected | conn/s | max sockets/worker | spread max/mean "
          "| KiB/conn workers / +nats | µs CPU/conn workers / nats / generators "
          "| subscribers | all delivered | reach all ms | PUBACK ms |")
    print("|---|---:|---:|---:|---:|---:|---|---|---:|---|---:|---:|")
    for label, m in summaries.items():
        if not m:
            print(f"| {label} | 0 ok |")
            continue
        print(f"| {label} | {m['rounds_ok']} | {m['connected']:,.0f} | {m['connect_rate']:,.0f} "
              f"| {m['max_sockets_per_worker']:,} | {m['spread_max_over_mean']:.3f} "
              f"| {m['kib_per_conn_workers']:.2f} / {m['kib_per_conn_all']:.2f} "
              f"| {m['us_per_conn_workers']:.0f} / {m['us_per_conn_nats']:.0f} / "
              f"{m['us_per_conn_generators']:.0f} | {m['subscribers']:.0f} "
              f"| {m['all_delivered']} | {m['reach_all_ms_median']:.1f} "
              f"| {m['puback_ms_median']:.1f} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
