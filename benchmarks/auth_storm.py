"""A fleet reconnecting after a restart: N devices with distinct credentials, all at once.

Issue 12, "credentials a fleet can reconnect with". For each repetition, each broker is
started fresh (a restart: nothing is cached), then N devices connect at once from
``--procs`` client processes (plain non-blocking sockets and epoll, at most
``--concurrency`` handshakes in flight per process, each process < 20,000 fds) and stay
connected until all are done. Printed per broker: seconds from the start until the last
CONNACK 0x00, devices connected, failures by kind, retries, the broker's CPU seconds;
medians over ``--reps``; and iotbroker/mosquitto in the same run.

* iotbroker: every device has a secret generated as ``iotbroker passwd --generate`` does
  (32 random bytes, URL-safe base64) stored as ``$sha512$SALT$HASH``; memory storage,
  WARNING logs, no $SYS; otherwise the defaults (connect timeout 10 s, one PBKDF2
  thread per core, 64 pending PBKDF2 checks at most).
* mosquitto: the same usernames and secrets in its own password file format,
  ``user:$7$101$SALT$HASH`` (PBKDF2-SHA512, 101 iterations, 12-byte salt: what
  ``mosquitto_passwd`` 2.x writes); ``persistence false``, ``log_type none``.
* ``--human N`` (default 100; 0 = skip): also N devices whose passwords are stored as
  people's passwords are, PBKDF2-SHA512 210,000 iterations (iotbroker) against the same
  passwords at mosquitto's 101 iterations; this is the figure that says what a fleet
  costs when its credentials are *not* generated secrets.

A device refused with CONNACK 0x89 / 3.1.1 0x03 (server busy: iotbroker's bound on
pending PBKDF2 checks) retries after 0.2–0.7 s, as a client library would; every
attempt is bounded by ``--deadline`` (default 60 s) after the start.

    .venv/bin/python benchmarks/auth_storm.py [--devices 10000 --reps 3 --human 100]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import hashlib
import json
import multiprocessing as mp
import os
import pwd
import random
import resource
import secrets
import select
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import e2e  # noqa: E402  (benchmarks/ is not a package)

from iotbroker.auth.passwords import hash_password, hash_secret  # noqa: E402
from iotbroker.codec.encode import encode_packet  # noqa: E402
from iotbroker.codec.packets import Connect  # noqa: E402

BUSY = {0x89, 0x03}  # MQTT 5.0 server busy, 3.1.1 server unavailable
FD_LIMIT = 20_000


# ------------------------------------------------------------------------ credentials


def make_credentials(n: int, prefix: str) -> list[tuple[str, str]]:
    return [(f"{prefix}-{i:05d}", secrets.token_urlsafe(32)) for i in range(n)]


def mosquitto_line(user: str, password: str) -> str:
    """mosquitto 2.x ``$7$``: PBKDF2-SHA512, 101 iterations, 12-byte salt, base64."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return (f"{user}:$7$101${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def write_files(workdir: str, creds: list[tuple[str, str]], human: bool) -> tuple[str, str]:
    ib = os.path.join(workdir, "iotbroker.passwd")
    mq = os.path.join(workdir, "mosquitto.passwd")
    with open(ib, "w") as f:
        for user, pw in creds:
            text = hash_password(pw.encode()) if human else hash_secret(pw.encode())
            f.write(f"{user}:{text}\n")
    with open(mq, "w") as f:
        f.writelines(mosquitto_line(user, pw) + "\n" for user, pw in creds)
    os.chmod(ib, 0o600)
    os.chmod(mq, 0o600)
    if os.geteuid() == 0:  # mosquitto started as root drops to its own user to read it
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam("mosquitto")
            os.chown(mq, entry.pw_uid, entry.pw_gid)
            os.chmod(workdir, 0o711)
    return ib, mq


def make_brokers(workdir: str, ib_passwd: str, mq_passwd: str,
                 mosquitto: str) -> tuple[e2e.Broker, e2e.Broker]:
    ib_port, mq_port = e2e.free_port(), e2e.free_port()
    cfg = os.path.join(workdir, "iotbroker.yaml")
    with open(cfg, "w") as f:
        f.write(f"""listeners:
  - name: bench
    type: tcp
    host: 127.0.0.1
    port: {ib_port}
storage: {{backend: memory}}
sys_topics: {{enabled: false}}
logging: {{level: WARNING}}
auth:
  allow_anonymous: false
  password_file: {ib_passwd}
""")
    mq_cfg = os.path.join(workdir, "mosquitto.conf")
    with open(mq_cfg, "w") as f:
        f.write(f"""listener {mq_port} 127.0.0.1
allow_anonymous false
password_file {mq_passwd}
persistence false
log_type none
""")
    ib = e2e.Broker("iotbroker", [e2e.iotbroker_python(), "-m", "iotbroker", "run",
                                  "--config", cfg], ib_port, workdir)
    mq = e2e.Broker("mosquitto", [mosquitto, "-c", mq_cfg], mq_port, workdir)
    return ib, mq


# ----------------------------------------------------------------------------- client


def storm(creds: list[tuple[str, str]], port: int, version: int, concurrency: int,
          t_go: float, deadline: float, conn: Connection) -> None:
    """One client process: connect every device, report, hold until told, close."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, FD_LIMIT), hard))
    packets = [encode_packet(Connect(client_id=user, protocol_version=version,
                                     clean_start=True, keepalive=600, username=user,
                                     password=pw.encode()), version)
               for user, pw in creds]
    time.sleep(max(0.0, t_go - time.monotonic()))
    start = time.monotonic()
    ep = select.epoll()
    todo = list(range(len(packets)))
    todo.reverse()  # pop() from the end: device 0 first
    retry_at: list[tuple[float, int]] = []
    pending: dict[int, tuple[socket.socket, int, bool]] = {}
    held: list[socket.socket] = []
    failures: Counter[str] = Counter()
    retries = 0
    last_ok = start
    rng = random.Random(os.getpid())

    def drop(fd: int, why: str | None) -> int:
        sock, i, _ = pending.pop(fd)
        ep.unregister(fd)
        sock.close()
        if why is not None:
            failures[why] += 1
        return i

    while (todo or pending or retry_at) and time.monotonic() < deadline:
        now = time.monotonic()
        if retry_at:
            due = [i for at, i in retry_at if at <= now]
            retry_at = [(at, i) for at, i in retry_at if at > now]
            todo.extend(due)
        while todo and len(pending) < concurrency:
            i = todo.pop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            rc = sock.connect_ex(("127.0.0.1", port))
            if rc not in (0, errno.EINPROGRESS):
                sock.close()
                failures[f"connect errno {rc}"] += 1
                continue
            pending[sock.fileno()] = (sock, i, False)
            ep.register(sock.fileno(), select.EPOLLOUT)
        for fd, ev in ep.poll(0.05):
            sock, i, sent = pending[fd]
            if ev & (select.EPOLLERR | select.EPOLLHUP) and not ev & select.EPOLLIN:
                drop(fd, "socket error")
            elif not sent:
                sock.send(packets[i])
                pending[fd] = (sock, i, True)
                ep.modify(fd, select.EPOLLIN)
            else:
                try:
                    data = sock.recv(64)
                except OSError:
                    data = b""
                if len(data) >= 4 and data[0] == 0x20:
                    code = data[3]
                    if code == 0:
                        ep.unregister(fd)
                        del pending[fd]
                        held.append(sock)
                        last_ok = time.monotonic()
                    elif code in BUSY:
                        drop(fd, None)
                        retries += 1
                        retry_at.append((time.monotonic() + 0.2 + 0.5 * rng.random(), i))
                    else:
                        drop(fd, f"CONNACK 0x{code:02x}")
                else:
                    drop(fd, "closed without CONNACK" if not data else "bad CONNACK")
    late = len(todo) + len(pending) + len(retry_at)
    if late:
        failures["not connected by the deadline"] += late
    for fd in list(pending):
        drop(fd, None)
    ep.close()
    conn.send({"connected": len(held), "failures": dict(failures), "retries": retries,
               "t_start": start, "t_last": last_ok})
    conn.recv()  # release
    for sock in held:
        sock.close()
    conn.send("closed")


def run_storm(broker: e2e.Broker, creds: list[tuple[str, str]], args: argparse.Namespace,
              version: int) -> dict[str, Any]:
    broker.start()  # a fresh process: nothing cached, as after a restart
    try:
        cpu0 = _cpu(broker.pid)
        ctx = mp.get_context("fork")
        t_go = time.monotonic() + 1.0
        deadline = t_go + args.deadline
        chunks = [creds[k::args.procs] for k in range(args.procs)]
        workers = []
        for chunk in chunks:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=storm, args=(chunk, broker.port, version,
                                                   args.concurrency, t_go, deadline, child))
            proc.start()
            workers.append((proc, parent))
        results = []
        for _proc, parent in workers:
            if not parent.poll(args.deadline + 30):
                raise RuntimeError("a client process did not report")
            results.append(parent.recv())
        cpu = _cpu(broker.pid) - cpu0
        alive = broker.proc is not None and broker.proc.poll() is None
        for _proc, parent in workers:
            parent.send("release")
        for proc, parent in workers:
            with contextlib.suppress(EOFError):
                if parent.poll(30):
                    parent.recv()
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    finally:
        broker.stop()
    failures: Counter[str] = Counter()
    for r in results:
        failures.update(r["failures"])
    connected = sum(r["connected"] for r in results)
    start = min(r["t_start"] for r in results)
    last = max(r["t_last"] for r in results)
    return {"connected": connected, "devices": len(creds), "seconds": last - start,
            "failures": dict(failures), "retries": sum(r["retries"] for r in results),
            "broker_cpu": cpu, "broker_alive": alive}


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------ thread pool


def pool_scaling(checks: int) -> str:
    """PBKDF2-SHA512 210,000 checks/s through the broker's own code path
    (``PasswordFile.verify`` in a ``ThreadPoolExecutor``) with 1 thread and with one per
    core: does ``hashlib`` release the GIL so the pool uses every core?"""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    from iotbroker.auth.passwords import PasswordFile  # noqa: PLC0415

    pw = PasswordFile.from_lines([f"u{i}:{hash_password(b'pw', salt=bytes(16))}"
                                  for i in range(checks)])
    out = []
    for threads in (1, os.cpu_count() or 2):
        with ThreadPoolExecutor(threads) as pool:
            c0, t0 = time.process_time(), time.perf_counter()
            # A wrong password: nothing is remembered between the two runs.
            assert not any(pool.map(lambda i: pw.check(f"u{i}", b"no"), range(checks)))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.append(f"{threads} thread(s): {checks / wall:.1f} checks/s, "
                   f"{1000 * cpu / checks:.0f} ms CPU each, CPU/wall {cpu / wall:.2f}")
    return "; ".join(out)


# ------------------------------------------------------------------------------ main


def fmt_run(r: dict[str, Any]) -> str:
    fails = sum(r["failures"].values())
    return (f"{r['seconds']:7.2f} s  {r['connected']:>6}/{r['devices']} connected  "
            f"{fails} failed {r['failures'] or ''}  {r['retries']} busy retries  "
            f"broker CPU {r['broker_cpu']:.1f} s")


def scenario(name: str, creds: list[tuple[str, str]], human: bool,
             args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"scenario": name, "devices": len(creds), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="auth-storm-") as workdir:
        t0 = time.monotonic()
        ib_file, mq_file = write_files(workdir, creds, human)
        print(f"# {name}: {len(creds)} devices; password files written in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        ib, mq = make_brokers(workdir, ib_file, mq_file, args.mosquitto)
        for rep in range(args.reps):
            for broker in (ib, mq):
                r = run_storm(broker, creds, args, 5 if args.v5 else 4)
                out["runs"].setdefault(broker.name, []).append(r)
                print(f"  rep {rep + 1} {broker.name:9} {fmt_run(r)}", flush=True)
    return out


def summary(results: list[dict[str, Any]]) -> str:
    rows = ["| scenario | devices | iotbroker s (median) | mosquitto s (median) | "
            "ratio ib/mq | iotbroker failed | mosquitto failed |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for res in results:
        ib = res["runs"]["iotbroker"]
        mq = res["runs"]["mosquitto"]
        s_ib = statistics.median(r["seconds"] for r in ib)
        s_mq = statistics.median(r["seconds"] for r in mq)
        f_ib = max(res["devices"] - r["connected"] for r in ib)
        f_mq = max(res["devices"] - r["connected"] for r in mq)
        rows.append(f"| {res['scenario']} | {res['devices']} | {s_ib:.2f} | {s_mq:.2f} | "
                    f"{s_ib / s_mq:.2f} | {f_ib} (worst rep) | {f_mq} (worst rep) |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--human", type=int, default=100,
                    help="devices with PBKDF2 210,000 passwords (0: skip that scenario)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--concurrency", type=int, default=500,
                    help="handshakes in flight per client process")
    ap.add_argument("--deadline", type=float, default=60.0,
                    help="seconds after the start when a storm gives up")
    ap.add_argument("--v5", action="store_true", help="MQTT 5.0 (default 3.1.1)")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--pool-checks", type=int, default=20,
                    help="PBKDF2 210,000 checks for the thread-pool scaling line (0: skip)")
    ap.add_argument("--json", metavar="FILE", help="write the raw results here")
    args = ap.parse_args()
    if args.pool_checks:
        print(f"# PBKDF2 210,000 in the broker's thread pool: {pool_scaling(args.pool_checks)}",
              flush=True)
    if args.devices // args.procs + 64 > FD_LIMIT:
        ap.error(f"more than {FD_LIMIT} sockets per client process: raise --procs")
    results = [scenario("generated secrets ($sha512$ / mosquitto $7$ 101)",
                        make_credentials(args.devices, "dev"), False, args)]
    if args.human:
        results.append(scenario("people's passwords (PBKDF2 210,000 / mosquitto $7$ 101)",
                                make_credentials(args.human, "person"), True, args))
    print()
    print(summary(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
