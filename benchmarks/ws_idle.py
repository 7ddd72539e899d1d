"""Memory per idle WebSocket connection (issue 19): broker RSS before and after N idle
MQTT-over-WebSocket clients.

Starts iotbroker (memory storage, WARNING logs, no ``$SYS``) on free ports of
127.0.0.1 with a ``ws`` and a ``tcp`` listener, then a generator subprocess (this
script, ``worker``) opens ``--warmup`` connections (not counted: first-use
allocations), waits until the broker's RSS settles, then opens ``--clients`` more
idle connections and holds them: each one an HTTP upgrade with subprotocol ``mqtt``, a
masked binary frame holding an MQTT 3.1.1 CONNECT (keepalive 600) and the CONNACK
read back (``--transport tcp``: the same CONNECT over plain TCP, for comparison;
``wss`` and ``tls``: the same over TLS, with a throwaway CA and server certificate
made by ``tests/server/pki.py``).
Every loop is bounded; the worker exits when its stdin closes.

Reported: RSS after the warm-up and after the clients, KiB per connection.

    .venv/bin/python benchmarks/ws_idle.py                      # 2,000 WebSocket clients
    .venv/bin/python benchmarks/ws_idle.py --clients 5000 --transport tcp
    .venv/bin/python benchmarks/ws_idle.py --transport wss         # or tls

Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from e2e import Broker, free_port, iotbroker_python  # noqa: E402
from loadgen import proc_stat, raise_nofile  # noqa: E402

from iotbroker.codec import encode_packet  # noqa: E402
from iotbroker.codec.packets import Connect  # noqa: E402


def _ws_frame(payload: bytes) -> bytes:
    """A masked (client-to-server) binary frame, FIN set."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x82])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def _recv_until(sock: socket.socket, end: bytes, limit: int = 4096) -> bytes:
    data = b""
    while end not in data and len(data) < limit:
        chunk = sock.recv(limit)
        if not chunk:
            raise ConnectionError("closed by the broker")
        data += chunk
    return data


def _open(port: int, transport: str, index: int, source: str,
          ctx: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0))
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    connect = encode_packet(Connect(client_id=f"idle-{os.getpid()}-{index}", keepalive=600), 4)
    if transport in ("ws", "wss"):
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Protocol: mqtt\r\n\r\n").encode())
        head = _recv_until(sock, b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        rest = head.split(b"\r\n\r\n", 1)[1]
        sock.sendall(_ws_frame(connect))
        while len(rest) < 6:  # 2-byte frame header + 4-byte CONNACK
            chunk = sock.recv(64)
            if not chunk:
                raise ConnectionError("closed before CONNACK")
            rest += chunk
        if rest[0] != 0x82 or rest[2] != 0x20:
            raise ConnectionError(f"unexpected reply {rest[:8]!r}")
    else:
        sock.sendall(connect)
        reply = b""
        while len(reply) < 4:
            chunk = sock.recv(4 - len(reply))
            if not chunk:
                raise ConnectionError("closed before CONNACK")
            reply += chunk
    return sock


def worker(args: argparse.Namespace) -> None:
    raise_nofile()
    held: list[socket.socket] = []
    ctx = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    sources = [f"127.0.0.{2 + i % 8}" for i in range(8)]
    for batch in (args.warmup, args.clients):
        for i in range(batch):
            held.append(_open(args.port, args.transport, len(held), sources[i % 8], ctx))
        print(f"opened {len(held)}", flush=True)
        sys.stdin.readline()  # the parent measured: go on (or, at EOF, close)
    for sock in held:
        sock.close()


def _settled_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS once it stops growing (at most 10 samples)."""
    last = proc_stat(pid)[1]
    for _ in range(10):
        time.sleep(seconds)
        now = proc_stat(pid)[1]
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--transport", choices=("ws", "tcp", "wss", "tls"), default="ws")
    ap.add_argument("--cafile", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("mode", nargs="?", default="run", choices=("run", "worker"))
    args = ap.parse_args()
    if args.mode == "worker":
        worker(args)
        return
    workdir = tempfile.mkdtemp(prefix="ws-idle-")
    tcp_port, ws_port, tls_port = free_port(), free_port(), free_port()
    ports = {"tcp": tcp_port, "ws": ws_port, "wss": tls_port, "tls": tls_port}
    secure, cafile = "", None
    if args.transport in ("wss", "tls"):
        from tests.server.pki import make_pki  # noqa: PLC0415 (only for TLS runs)

        pki = make_pki(Path(workdir) / "pki")
        cafile = str(pki.ca)
        path = ", path: /mqtt" if args.transport == "wss" else ""
        secure = (f"  - {{name: secure, type: {args.transport}, host: 127.0.0.1, "
                  f"port: {tls_port}{path}, tls: {{certfile: {pki.server_cert}, "
                  f"keyfile: {pki.server_key}}}}}\n")
    cfg = os.path.join(workdir, "iotbroker.yaml")
    with open(cfg, "w") as f:
        f.write(f"""listeners:
  - {{name: tcp, type: tcp, host: 127.0.0.1, port: {tcp_port}}}
  - {{name: ws, type: ws, host: 127.0.0.1, port: {ws_port}, path: /mqtt}}
{secure}storage: {{backend: memory}}
sys_topics: {{enabled: false}}
logging: {{level: WARNING}}
""")
    broker = Broker("iotbroker", [iotbroker_python(), "-m", "iotbroker", "run", "--config", cfg],
                    tcp_port, workdir)
    broker.start()
    port = ports[args.transport]
    gen = subprocess.Popen(
        [sys.executable, __file__, "worker", "--port", str(port), "--transport",
         args.transport, "--clients", str(args.clients), "--warmup", str(args.warmup),
         *(["--cafile", cafile] if cafile else [])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert gen.stdin is not None and gen.stdout is not None
        print(gen.stdout.readline().strip())
        before = _settled_rss(broker.pid)
        gen.stdin.write("\n")
        gen.stdin.flush()
        started = time.monotonic()
        print(gen.stdout.readline().strip(), f"in {time.monotonic() - started:.1f} s")
        after = _settled_rss(broker.pid)
        result = {
            "transport": args.transport, "clients": args.clients,
            "rss_before_mib": round(before / 2**20, 1), "rss_after_mib": round(after / 2**20, 1),
            "kib_per_connection": round((after - before) / 1024 / args.clients, 2),
        }
        print(json.dumps(result))
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(result, f)
    finally:
        if gen.stdin is not None:
            gen.stdin.close()
        try:
            gen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait()
        broker.stop()


if __name__ == "__main__":
    main()
