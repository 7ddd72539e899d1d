"""Attach a profiler / tracer to one broker during one loadgen scenario (issue 19, measure).

Starts a fresh broker (iotbroker or mosquitto, configured as in ``e2e.py``), runs
``loadgen.py --scenario S`` against it with ``--broker-pid`` and attaches a tool to the
broker's PID for a bounded phase:

* ``--tool strace``: ``strace -c -f -p PID`` (system call counts);
* ``--tool pyspy``: ``py-spy record --native --format raw`` (collapsed stacks; iotbroker)
  for ``--attach-seconds`` (connect: the phase below, stopped with SIGINT);
* ``--tool perf``: ``perf record -p PID`` (samples by DSO/symbol: kernel, uvloop, libpython,
  the mypyc modules);
* ``--tool perfstat``: ``perf stat -p PID`` counting CPU time, context switches, system
  calls and epoll waits (:data:`PERFSTAT_EVENTS`; divide by ``--clients``);
* ``--tool none``: nothing (the loadgen JSON only).

Phase: connect -> from just before the loadgen's GO until the broker holds ``--clients``
sockets (``/proc/PID/fd``) or the loadgen ends (so the DISCONNECT/close tail is not in
it); other scenarios -> ``--attach-seconds`` starting ``--attach-delay`` s after start.

    .venv-c/bin/python benchmarks/attach_profile.py --broker iotbroker --scenario connect \
        --tool strace --out /tmp/x.strace --iotbroker-python .venv-c/bin/python

Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from e2e import PYTHON_ENV, make_iotbroker, make_mosquitto  # noqa: E402

LOADGEN = os.path.join(HERE, "loadgen.py")
#: ``--tool perfstat``: counted, not sampled (a tracepoint per system call costs far
#: less than strace): CPU time, sleeps and wake-ups (context switches), system calls,
#: epoll waits.
PERFSTAT_EVENTS = ("task-clock", "context-switches", "raw_syscalls:sys_enter",
                   "syscalls:sys_enter_epoll_pwait", "syscalls:sys_enter_epoll_wait")


def nfds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def tool_argv(tool: str, pid: int, out: str, seconds: float) -> list[str]:
    if tool == "strace":
        return ["strace", "-c", "-f", "-o", out, "-p", str(pid)]
    if tool == "pyspy":
        pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        return [pyspy, "record", "--native", "--rate", "997", "--format",
                "raw", "-o", out, "-d", str(max(1, int(seconds))), "-p", str(pid)]
    if tool == "perf":
        return ["perf", "record", "-q", "-F", "4999", "-o", out, "-p", str(pid)]
    if tool == "perfstat":
        return ["perf", "stat", "-e", ",".join(PERFSTAT_EVENTS), "-o", out, "-p", str(pid)]
    raise ValueError(tool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", choices=("iotbroker", "mosquitto"), required=True)
    ap.add_argument("--scenario", default="connect")
    ap.add_argument("--tool", choices=("strace", "pyspy", "perf", "perfstat", "none"),
                    default="none")
    ap.add_argument("--out", default="/tmp/attach.out")
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--attach-delay", type=float, default=1.5)
    ap.add_argument("--attach-seconds", type=float, default=3.0)
    ap.add_argument("--iotbroker-python", default=None)
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    args = ap.parse_args()
    if args.iotbroker_python:
        os.environ[PYTHON_ENV] = os.path.abspath(args.iotbroker_python)
    with tempfile.TemporaryDirectory(prefix="attach-") as wd:
        b = (make_iotbroker(wd, None) if args.broker == "iotbroker"
             else make_mosquitto(wd, args.mosquitto))
        b.start()
        tool: subprocess.Popen[bytes] | None = None
        try:
            time.sleep(0.5)
            argv = [sys.executable, LOADGEN, "run", "--port", str(b.port), "--scenario",
                    args.scenario, "--warmup", str(args.warmup), "--duration",
                    str(args.duration), "--broker-pid", str(b.pid)]
            if args.scenario == "connect":
                argv += ["--clients", str(args.clients), "--settle", str(args.settle)]
            fd0 = nfds(b.pid)
            if args.scenario == "connect" and args.tool != "none":
                tool = subprocess.Popen(tool_argv(args.tool, b.pid, args.out, 600))
                time.sleep(1.0)  # attached before the first connection
            lg = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            t0 = time.monotonic()
            if args.scenario == "connect":
                while lg.poll() is None and nfds(b.pid) - fd0 < args.clients:
                    time.sleep(0.01)
                print(f"phase: {time.monotonic() - t0:.2f} s, fds +{nfds(b.pid) - fd0}",
                      file=sys.stderr)
            elif args.tool != "none":
                time.sleep(args.attach_delay)
                tool = subprocess.Popen(tool_argv(args.tool, b.pid, args.out,
                                                  args.attach_seconds))
                time.sleep(args.attach_seconds)
            if tool is not None and (args.tool != "pyspy" or args.scenario == "connect"):
                tool.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            if tool is not None:
                tool.wait(timeout=60)
            out, _ = lg.communicate(timeout=300)
            res = json.loads(out)
            res.pop("latency_ms", None)
            print(json.dumps({k: v for k, v in res.items()
                              if not isinstance(v, (list, dict))}))
        finally:
            if tool is not None and tool.poll() is None:
                tool.kill()
            b.stop()


if __name__ == "__main__":
    main()
