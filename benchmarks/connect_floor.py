"""How much of the connect rate is the event loop and the kernel, not the broker?

Runs loadgen's ``connect`` scenario (10,000 idle clients) against three servers, fresh
for every repetition, in turn:

* ``floor``: a bare uvloop server (``--floor-server``, this file) that answers every
  CONNECT with a fixed CONNACK and does nothing else: the cost of accepting a socket,
  one read and one write on this machine's loop and kernel;
* ``iotbroker`` and ``mosquitto``, configured as in ``e2e.py``.

It prints conn/s, the server's CPU% over the connect phase and the CPU microseconds
per connection (CPU-seconds / connections): iotbroker's figure minus the floor's is
what the broker itself spends per connection.

    .venv/bin/python benchmarks/connect_floor.py [--reps 3] [--clients 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import select
import shutil
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable
from typing import Any, cast

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import e2e  # noqa: E402  (benchmarks/ is not a package)


class _ConnAckOnly(asyncio.Protocol):
    """Answers CONNECT with CONNACK (session present 0, accepted); closes on
    DISCONNECT. Assumes one packet per read, true for loadgen's idle clients."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass; it has write().
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if data[0] == 0x10:
            self.transport.write(b"\x20\x02\x00\x00")
        elif data[0] == 0xE0:
            self.transport.close()


async def _serve_floor(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_ConnAckOnly, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def _serve_raw_floor(port: int) -> None:
    """The same answers without a transport per connection: the loop watches the
    listening socket and one epoll set; sockets are accepted, read and written with
    plain calls (what a transport-less connect path for idle devices would cost)."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    listener.setblocking(False)
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}

    def accept() -> None:
        for _ in range(64):
            try:
                sock, _addr = listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks[sock.fileno()] = sock
            ep.register(sock.fileno(), select.EPOLLIN)

    def ready() -> None:
        for fd, _events in ep.poll(0):
            sock = socks[fd]
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            if data[:1] == b"\x10":
                sock.send(b"\x20\x02\x00\x00")
            elif not data or data[:1] == b"\xe0":
                ep.unregister(fd)
                del socks[fd]
                sock.close()

    loop.add_reader(listener.fileno(), accept)
    loop.add_reader(ep.fileno(), ready)
    await asyncio.Event().wait()


def _accept4() -> Callable[[int], int] | None:
    """libc ``accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)`` through ctypes:
    a non-blocking descriptor in one system call, no address tuple (Linux)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).accept4
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
    fn.restype = ctypes.c_int
    flags = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC

    def accept4(fd: int) -> int:
        return int(fn(fd, None, None, flags))

    return accept4


async def _serve_park_floor(port: int, variant: str) -> None:
    """The transport-less connect path of the brief (issue 19): the loop watches the
    listening socket; every readiness accepts until EAGAIN; each new descriptor goes
    straight into one epoll set (what server/parking.py keeps idle sockets in), watched
    by a single loop reader; its CONNECT is read with one ``os.read``, the CONNACK
    written with one ``os.write``, and the descriptor stays there (no transport, no
    socket object). TCP_NODELAY is set once on the listener (Linux copies it to the
    accepted sockets). ``variant``: ``blocking`` (``_accept``: a blocking descriptor,
    read only when readable), ``nonblock`` (the same plus ``os.set_blocking``: two
    fcntl calls), ``accept4`` (ctypes ``accept4`` with SOCK_NONBLOCK: one call)."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.setblocking(False)
    lfd = listener.fileno()
    ep = select.epoll()
    register, unregister, poll = ep.register, ep.unregister, ep.poll
    read, write, close = os.read, os.write, os.close
    set_blocking = os.set_blocking
    epollin = select.EPOLLIN
    connack = b"\x20\x02\x00\x00"
    raw_accept = listener._accept  # type: ignore[attr-defined]
    accept4 = _accept4()
    if variant in ("accept4", "readnow") and accept4 is None:
        raise SystemExit("no accept4")

    def answer(fd: int, data: bytes) -> None:
        if data[:1] == b"\x10":
            write(fd, connack)
        elif not data or data[:1] == b"\xe0":
            unregister(fd)
            close(fd)

    def on_accept() -> None:
        if variant == "accept4":
            while (fd := accept4(lfd)) >= 0:  # type: ignore[misc]
                register(fd, epollin)
            return
        if variant == "readnow":  # read at once: the CONNECT may be there already
            while (fd := accept4(lfd)) >= 0:  # type: ignore[misc]
                register(fd, epollin)
                try:
                    data = read(fd, 4096)
                except BlockingIOError:
                    continue
                answer(fd, data)
            return
        nonblock = variant == "nonblock"
        while True:
            try:
                fd, _addr = raw_accept()
            except BlockingIOError:
                return
            if nonblock:
                set_blocking(fd, False)
            register(fd, epollin)

    def ready() -> None:
        for fd, _events in poll(0):
            try:
                data = read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            answer(fd, data)

    loop.add_reader(lfd, on_accept)
    loop.add_reader(ep.fileno(), ready)
    await asyncio.Event().wait()


FLOOR_KINDS = {"floor": "--floor-server", "floor-raw": "--raw-floor-server"}


def make_floor(workdir: str, raw: bool = False, park: str | None = None) -> e2e.Broker:
    port = e2e.free_port()
    if park is not None:
        argv = [sys.executable, os.path.abspath(__file__), "--park-floor-server", str(port),
                park]
        return e2e.Broker(f"floor-park-{park}", argv, port, workdir)
    argv = [sys.executable, os.path.abspath(__file__),
            "--raw-floor-server" if raw else "--floor-server", str(port)]
    return e2e.Broker("floor-raw" if raw else "floor", argv, port, workdir)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--floor-server":
        import uvloop  # noqa: PLC0415

        uvloop.run(_serve_floor(int(sys.argv[2])))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--raw-floor-server":
        import uvloop  # noqa: PLC0415

        uvloop.run(_serve_raw_floor(int(sys.argv[2])))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--park-floor-server":
        import uvloop  # noqa: PLC0415

        uvloop.run(_serve_park_floor(int(sys.argv[2]), sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--raw", action="store_true",
                    help="also floor-raw: accept/read/write without a transport per socket")
    ap.add_argument("--park", default="", metavar="VARIANTS",
                    help="also floor-park-V for each comma-separated V of blocking, nonblock, "
                         "accept4, readnow (accept4 and a read at once): an own accept "
                         "loop, sockets straight into one epoll set, CONNECT read and "
                         "CONNACK written with os.read/os.write")
    ap.add_argument("--default-parking", action="store_true",
                    help="also iotbroker-parkdefault: iotbroker on its default parking (30 s; "
                         "a connection silent after its CONNACK is parked 0.2 s later)")
    ap.add_argument("--accept-compare", action="store_true",
                    help="also ib-park-on-accept and ib-transport: iotbroker on its default "
                         "parking with limits.park_on_accept on (its default) and off")
    ap.add_argument("--no-iotbroker", action="store_true",
                    help="floors and mosquitto only")
    ap.add_argument("--park-idle-after", type=float, default=0.0, metavar="SECONDS",
                    help="iotbroker's limits.park_idle_after (0 = off)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds idle before the RSS sample (KiB/conn)")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    args = ap.parse_args()
    # What e2e.run_loadgen reads from its own arguments.
    gen = argparse.Namespace(gen_cpus=None, warmup=1.0, duration=5.0, procs=1, settle=args.settle,
                             clients=args.clients, mqtt5=False, persistent_subscribers=False,
                             window=0, keep_latency=False)
    results: dict[str, list[dict[str, Any]]] = {"floor": [], "iotbroker": [], "mosquitto": []}
    if args.raw:
        results = {"floor-raw": [], **results}
    for variant in filter(None, args.park.split(",")):
        results = {f"floor-park-{variant}": [], **results}
    if args.default_parking:
        results["iotbroker-parkdefault"] = []
    if args.accept_compare:
        results["ib-park-on-accept"] = []
        results["ib-transport"] = []
    if args.no_iotbroker:
        del results["iotbroker"]
    with tempfile.TemporaryDirectory(prefix="connect-floor-") as workdir:
        for rep in range(args.reps):
            for name, runs in results.items():
                if name.startswith("floor-park-"):
                    server = make_floor(workdir, park=name.removeprefix("floor-park-"))
                elif name.startswith("floor"):
                    server = make_floor(workdir, raw=name == "floor-raw")
                elif name == "iotbroker":
                    server = e2e.make_iotbroker(workdir, None, args.park_idle_after)
                elif name in ("iotbroker-parkdefault", "ib-park-on-accept"):
                    server = e2e.make_iotbroker(workdir, None, None)
                elif name == "ib-transport":
                    server = e2e.make_iotbroker(workdir, None, None, park_on_accept=False)
                else:
                    server = e2e.make_mosquitto(workdir, args.mosquitto)
                server.start()
                try:
                    res = e2e.run_loadgen(server, "connect", gen)
                finally:
                    server.stop()
                cpu = res["broker_cpu_pct"] or 0.0
                res["us_per_conn"] = cpu / 100 * 1e6 / res["rate"] if res["rate"] else 0.0
                runs.append(res)
                print(f"rep {rep + 1}/{args.reps} {name:19s} {res['rate']:9,.0f} conn/s  "
                      f"CPU {cpu:3.0f}%  {res['us_per_conn']:5.2f} µs CPU/conn  "
                      f"generator {res['gen_cpu_pct']:3.0f}%  "
                      f"{res['kib_per_conn'] or 0:5.2f} KiB/conn after {gen.settle:.0f} s",
                      flush=True)
    print(f"\nmedians of {args.reps} reps, {args.clients} clients:")
    med = {name: {key: statistics.median(r[key] for r in rs)
                  for key in ("rate", "broker_cpu_pct", "us_per_conn", "kib_per_conn")}
           for name, rs in results.items()}
    for name, m in med.items():
        print(f"  {name:19s} {m['rate']:9,.0f} conn/s  CPU {m['broker_cpu_pct']:3.0f}%  "
              f"{m['us_per_conn']:5.2f} µs CPU/conn  {m['kib_per_conn'] or 0:5.2f} KiB/conn")
    floor = med["floor"]["us_per_conn"]
    print("  above the floor: " + ", ".join(
        f"{name} {m['us_per_conn'] - floor:+.2f} µs/conn"
        for name, m in med.items() if name != "floor"))


if __name__ == "__main__":
    main()
