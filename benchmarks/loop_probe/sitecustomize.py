"""Loop-stall and GC probe, loaded into a Python process through ``PYTHONPATH``.

Not part of the broker: ``devices-sim/bench_scale.py --probe DIR`` puts this folder on
the ``PYTHONPATH`` of iotbroker and of the simulator, with ``LOOP_PROBE_OUT`` naming a
file per process. It records, with ``time.monotonic()`` stamps (one clock for every
process of the machine, the simulator's payload clock):

* every garbage collection (``gc.callbacks``): generation, start, duration;
* every stall of the event loop: a callback re-armed every ``LOOP_PROBE_TICK`` seconds
  (default 2 ms) notes how late it ran when that is more than ``LOOP_PROBE_MIN``
  (default 3 ms): the loop was busy (or the process off the CPU) that long; ``cpu_ms``
  is the process's CPU time over the same span (close to ``ms``: the loop was busy;
  much less: the process was waiting for a CPU);
* once a second the process's CPU time (user + system) so far;
* with ``LOOP_PROBE_PHASES=1``, in iotbroker (pure build: its classes can be wrapped),
  four moments of every connection: its protocol object created (in the accept
  callback), its transport made (``connection_made``, a loop turn later), its CONNECT
  handled (``Broker.on_connect``), its first output written (``write_pending``: the
  CONNACK), as ``{"k": "conn", "accepted", "made", "connect", "connack"}``; and every
  call of the flush, ``data_received``, the log line writer and the timer wheel that
  took more than 2 ms, as ``{"k": "slow", "what", "ms", "cpu_ms"}``.

The loop is found by wrapping ``uvloop.new_event_loop`` and ``asyncio.new_event_loop``
(both the broker and the simulator create theirs with one of them). The file is written
every second (JSON lines), so a process that ends with ``os._exit`` loses at most the
last second.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time

_OUT = os.environ.get("LOOP_PROBE_OUT")


def _install() -> None:
    assert _OUT is not None
    tick = float(os.environ.get("LOOP_PROBE_TICK", "0.002"))
    least = float(os.environ.get("LOOP_PROBE_MIN", "0.003"))
    pending: list[dict[str, object]] = []
    gc_start = [0.0]
    mono = time.monotonic
    pid = os.getpid()

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[0] = mono()
        else:
            now = mono()
            pending.append({"k": "gc", "gen": info["generation"], "t": gc_start[0],
                            "ms": round((now - gc_start[0]) * 1000, 3),
                            "collected": info.get("collected", 0)})

    gc.callbacks.append(on_gc)

    def flush() -> None:
        if not pending:
            return
        with open(f"{_OUT}.{pid}", "a") as f:
            for entry in pending:
                f.write(json.dumps(entry) + "\n")
        pending.clear()

    def phases() -> None:
        import sys  # noqa: PLC0415

        transport = sys.modules.get("iotbroker.server.transport")
        broker = sys.modules.get("iotbroker.server.broker")
        if transport is None or broker is None:
            return
        proto_cls = transport.ClientProtocol
        seen: dict[int, list[float]] = {}
        init_orig = proto_cls.__init__
        inits: dict[int, float] = {}
        made_orig = proto_cls.connection_made
        write_orig = proto_cls.write_pending
        connect_orig = broker.Broker.on_connect

        def init(self: object, *args: object) -> None:
            inits[id(self)] = mono()
            init_orig(self, *args)

        def made(self: object, tr: object) -> None:
            peer = tr.get_extra_info("peername")  # type: ignore[attr-defined]
            seen[id(self)] = [mono(), 0.0, inits.pop(id(self), 0.0),
                              peer[1] if isinstance(peer, tuple) else 0]
            made_orig(self, tr)

        def on_connect(self: object, proto: object, packet: object) -> None:
            entry = seen.get(id(proto))
            if entry is not None and not entry[1]:
                entry[1] = mono()
            connect_orig(self, proto, packet)

        def write_pending(self: object) -> None:
            entry = seen.pop(id(self), None)
            if entry is not None:
                if entry[1]:
                    pending.append({"k": "conn", "t": entry[0], "made": entry[0],
                                    "connect": entry[1], "connack": mono(),
                                    "accepted": entry[2], "port": entry[3]})
                else:
                    seen[id(self)] = entry
            write_orig(self)

        def timed(cls: type, name: str, label: str) -> None:
            orig = getattr(cls, name)
            cpu = time.process_time

            def wrapper(*args: object) -> object:
                t, c = mono(), cpu()
                try:
                    return orig(*args)
                finally:
                    took = mono() - t
                    if took > 0.002:
                        pending.append({"k": "slow", "what": label, "t": t,
                                        "ms": round(took * 1000, 3),
                                        "cpu_ms": round((cpu() - c) * 1000, 3)})

            setattr(cls, name, wrapper)

        logsetup = sys.modules.get("iotbroker.server.logsetup")
        wheel = sys.modules.get("iotbroker.server.timerwheel")
        timed(broker.Broker, "flush", "flush")
        timed(proto_cls, "data_received", "data_received")
        if logsetup is not None:
            timed(logsetup.BrokerHandler, "_write_pending", "log write")
        if wheel is not None:
            timed(wheel.TimerWheel, "_fire", "timer wheel")
        pending.append({"k": "clock", "t": mono(), "realtime": time.time()})
        proto_cls.__init__ = init
        proto_cls.connection_made = made
        proto_cls.write_pending = write_pending
        broker.Broker.on_connect = on_connect

    def attach(loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        if os.environ.get("LOOP_PROBE_PHASES"):
            phases()
        due = [0.0]
        cpu_then = [0.0]
        last_flush = [0.0]
        cpu = time.process_time

        def probe() -> None:
            now = mono()
            late = now - due[0]
            if due[0] and late > least:
                used = cpu() - cpu_then[0]
                pending.append({"k": "lag", "t": due[0], "ms": round(late * 1000, 3),
                                "cpu_ms": round(used * 1000, 3)})
            if now - last_flush[0] >= 1.0:
                last_flush[0] = now
                t = os.times()
                pending.append({"k": "cpu", "t": now, "s": t.user + t.system})
                flush()
            due[0] = mono() + tick
            cpu_then[0] = cpu()
            loop.call_later(tick, probe)

        loop.call_soon(probe)
        return loop

    try:
        import uvloop  # noqa: PLC0415 (optional)

        made = uvloop.new_event_loop

        def new_uvloop() -> asyncio.AbstractEventLoop:
            return attach(made())

        uvloop.new_event_loop = new_uvloop  # type: ignore[assignment]
    except ImportError:
        pass
    made_asyncio = asyncio.new_event_loop

    def new_asyncio_loop() -> asyncio.AbstractEventLoop:
        return attach(made_asyncio())

    asyncio.new_event_loop = new_asyncio_loop


if _OUT:
    _install()
