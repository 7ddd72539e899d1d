"""One process's share of a fleet, and the run's timeline: stages, faults, the end.

A :class:`Fleet` holds the devices ``i`` of every group with ``i % workers == worker``
(and monitors ``m % workers == worker``). Times are ``time.monotonic()`` seconds from
the run's start ``t0``, which every worker shares, so all workers run the same
timeline. Rates (connect, faults) are split evenly between the workers.

The end of a run, in order: stop publishing; wait for the outstanding QoS 1/2
acknowledgements (``ack_timeout``); let the subscribers drain until nothing arrives for
0.75 s (at most ``drain_timeout``); then disconnect everybody cleanly.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable

from iotsim import gcpause
from iotsim.client import Target
from iotsim.devices import Context, Device, Pacer, Subscriber, make_device
from iotsim.payloads import PayloadBuilder
from iotsim.scenario import FaultSpec, GroupSpec, Scenario, StageSpec
from iotsim.stats import Stats
from iotsim.sysinfo import cpu_seconds, rss_bytes
from iotsim.topics import derive_filter

#: Called once a second with the process's stats (live view, worker snapshots).
Ticker = Callable[[Stats], None]


#: Failed connects of every monitor (none ever connected) after which the run starts
#: without waiting for them any longer.
MONITOR_GIVE_UP = 3


def monitor_filters(scenario: Scenario, run_token: str) -> tuple[str, ...]:
    """The monitors' filters: as configured, else derived from the groups' topics."""
    if scenario.monitors.subscribe:
        return tuple(f.format(run=run_token, group="") for f in scenario.monitors.subscribe)
    filters: list[str] = []
    for g in scenario.groups:
        templates = [g.topic] if g.publishes else []
        if g.will is not None:
            templates.append(g.will.topic)
        for t in templates:
            f = derive_filter(t, run_token, g.name)
            if f not in filters:
                filters.append(f)
    return tuple(filters)


class Fleet:
    """The devices and monitors of one process, and the timeline that drives them."""

    def __init__(self, scenario: Scenario, target: Target, stats: Stats, run_token: str,
                 run_id: int, worker: int = 0, workers: int = 1) -> None:
        self.scenario = scenario
        self.stats = stats
        self.worker = worker
        self.workers = workers
        seed = scenario.seed if scenario.seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(seed * 1000 + worker)
        self.ctx = Context(target, stats, run_token, run_id, self.rng,
                           Pacer(scenario.connect_rate / workers),
                           ack_timeout=scenario.ack_timeout,
                           groups={g.name: g for g in scenario.groups})
        for g in scenario.groups:
            self.ctx.builders[g.name] = PayloadBuilder(g.payload, self.rng)
        self.devices: list[Device] = []
        self.by_group: dict[str, list[Device]] = {}
        self.monitors: list[Subscriber] = []
        self.interrupted = asyncio.Event()
        self.ticker: Ticker | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._build()

    def _build(self) -> None:
        sc = self.scenario
        addrs = sc.source_addresses
        base = 0
        conn = 0
        for g in sc.groups:
            mine: list[Device] = []
            for i in range(g.count):
                if (i % self.workers) == self.worker:
                    addr = addrs[conn % len(addrs)] if len(addrs) > 1 else None
                    mine.append(make_device(self.ctx, g, i, base + i * g.sources_per_device,
                                            addr))
                conn += 1
            base += g.count * g.sources_per_device
            self.by_group[g.name] = mine
            self.devices.extend(mine)
        self.stats.devices_target = len(self.devices)
        mon = sc.monitors
        filters = monitor_filters(sc, self.ctx.run_token)
        spec = GroupSpec(name="monitor", count=max(1, mon.count), behaviour="idle",
                         version=mon.version, client_id="{run}-monitor-{id}", keepalive=60,
                         username=mon.username, password=mon.password)
        for m in range(mon.count):
            if m % self.workers == self.worker:
                monitor = Subscriber(self.ctx, spec, m, base + m, None, filters, mon.qos,
                                     f"monitor-{m}")
                monitor.counted = False
                monitor.client.counted = False
                self.monitors.append(monitor)

    # -------------------------------------------------------------- phases

    async def start_monitors(self, timeout: float = 15.0) -> bool:
        """Connect and subscribe the monitors; True when all are subscribed in time.

        Gives up early when every monitor failed :data:`MONITOR_GIVE_UP` connects and none
        ever connected (the broker refuses us: the run goes on and reports why)."""
        for m in self.monitors:
            m.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(m.ready for m in self.monitors):
                return True
            if all(m.failed_connects >= MONITOR_GIVE_UP and not m.ever_connected
                   for m in self.monitors):
                return False
            await asyncio.sleep(0.02)
        return False

    async def run(self, t0: float) -> None:
        """Run the timeline from ``t0`` to the end (or an interrupt), then wind down."""
        sc = self.scenario
        stats = self.stats
        stats.t0 = t0
        cpu0 = cpu_seconds()
        gcpause.start()  # the devices and monitors are built: out of the collector's way
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        self.ctx.publishing = True
        ticker = asyncio.get_running_loop().create_task(self._tick_loop())
        faults = [asyncio.get_running_loop().create_task(self._fault_loop(f, i))
                  for i, f in enumerate(sc.faults)]
        end = t0 + sc.duration
        timeline = asyncio.get_running_loop().create_task(self._stages())
        interrupt = asyncio.get_running_loop().create_task(self.interrupted.wait())
        try:
            await asyncio.wait({timeline, interrupt}, timeout=max(0.0, end - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
            if timeline.done() and not interrupt.done() and not self._ramped_down():
                await asyncio.wait({interrupt}, timeout=max(0.0, end - time.monotonic()))
        finally:
            for t in (timeline, interrupt, *faults):
                t.cancel()
            self.ctx.publishing = False
            stats.stage = "drain"
            await self._settle()
            await self._drain()
            stats.stage = "disconnect"
            await self._shutdown()
            ticker.cancel()
            gcpause.release()
            stats.sample()
            stats.cpu_seconds = cpu_seconds() - cpu0
            stats.wall_seconds = time.monotonic() - t0
            stats.rss_bytes = rss_bytes()

    def _ramped_down(self) -> bool:
        return bool(self.scenario.stages) and self.scenario.stages[-1].kind == "ramp_down" \
            and not self.scenario.stages[-1].groups

    async def _tick_loop(self) -> None:
        while True:
            gcpause.settle()  # a second's new long-lived objects (connections): frozen
            self.stats.sample()
            if self.ticker is not None:
                self.ticker(self.stats)
            await asyncio.sleep(1.0 - ((time.monotonic() - self.stats.t0) % 1.0) + 0.001)

    async def _settle(self) -> None:
        deadline = time.monotonic() + self.scenario.ack_timeout
        while time.monotonic() < deadline:
            if not any(d.client.inflight and d.client.connected for d in self.devices):
                return
            await asyncio.sleep(0.05)
        self.stats.count("acks_missing_at_end", sum(len(d.client.inflight) for d in self.devices))

    async def _drain(self) -> None:
        if not self.monitors and not any(isinstance(d, Subscriber) for d in self.devices):
            return
        deadline = time.monotonic() + self.scenario.drain_timeout
        quiet_since = time.monotonic()
        last = self.stats.delivered + sum(m.record.received for m in self.monitors)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            now_count = self.stats.delivered + sum(m.record.received for m in self.monitors)
            now = time.monotonic()
            if now_count != last:
                last = now_count
                quiet_since = now
            elif now - quiet_since >= 0.75:
                return
        self.stats.error("drain_timeout")

    async def _shutdown(self) -> None:
        self.ctx.stopping = True
        for d in self.devices:
            d.stop()
        for m in self.monitors:
            m.stop()
        tasks = [d.task for d in [*self.devices, *self.monitors] if d.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=5.0)
            for t in pending:
                t.cancel()
                self.stats.count("shutdown_cancelled")

    # -------------------------------------------------------------- stages

    def _select(self, groups: Iterable[str]) -> list[Device]:
        names = list(groups)
        if not names:
            return self.devices
        return [d for n in names for d in self.by_group[n]]

    async def _stages(self) -> None:
        stages = self.scenario.stages or (StageSpec("ramp_up"),)
        for i, stage in enumerate(stages):
            self.stats.stage = f"{i + 1}/{len(stages)} {stage.kind}"
            started = time.monotonic()
            rate = (stage.rate or self.scenario.connect_rate) / self.workers
            if stage.kind == "ramp_up":
                todo = [d for d in self._select(stage.groups) if not d.wanted]
                await self._paced(todo, rate, Device.start)
            elif stage.kind == "reconnect_storm":
                await self._storm(stage, rate)
            elif stage.kind == "ramp_down":
                todo = [d for d in self._select(stage.groups) if d.wanted]
                await self._paced(todo, rate, Device.stop)
            if stage.duration is not None:
                await asyncio.sleep(max(0.0, started + stage.duration - time.monotonic()))
            elif stage.kind == "steady":
                await asyncio.sleep(self.scenario.duration)  # until the end of the run
        self.stats.stage = "steady"

    async def _paced(self, devices: list[Device], rate: float,
                     action: Callable[[Device], None]) -> None:
        start = time.monotonic()
        for k, d in enumerate(devices):
            due = start + k / rate
            delay = due - time.monotonic()
            if delay > 0.002:
                await asyncio.sleep(delay)
            action(d)

    async def _storm(self, stage: StageSpec, rate: float) -> None:
        """Drop a fraction of the connected devices at once; they reconnect at ``rate``."""
        connected = [d for d in self._select(stage.groups) if d.client.connected]
        chosen = self.rng.sample(connected, round(len(connected) * stage.fraction))
        self.ctx.reconnect_pacer = Pacer(rate)
        for d in chosen:
            d.bounce(stage.abrupt)
            self._mark_faulted(d)
        self.stats.count("storm_dropped", len(chosen))
        deadline = time.monotonic() + len(chosen) / rate + 10.0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if all(d.client.connected or not d.wanted for d in chosen):
                break
        self.ctx.reconnect_pacer = Pacer(self.scenario.connect_rate / self.workers)

    # -------------------------------------------------------------- faults

    def _mark_faulted(self, device: Device) -> None:
        if isinstance(device, Subscriber):
            device.record.faulted = True

    def _fault_times(self, fault: FaultSpec, index: int) -> list[float]:
        end = fault.end if fault.end is not None else self.scenario.duration
        span = end - fault.start
        if fault.count is not None:
            n = fault.count
            mine = [k for k in range(n) if (k + index) % self.workers == self.worker]
            return [fault.start + (k + 0.5) * span / n for k in mine]
        assert fault.rate is not None
        rate = fault.rate / self.workers
        times: list[float] = []
        t = fault.start
        while len(times) < 1_000_000:
            t += self.rng.expovariate(rate)
            if t >= end:
                break
            times.append(t)
        return times

    async def _fault_loop(self, fault: FaultSpec, index: int) -> None:
        t0 = self.stats.t0
        pool = self._select(fault.groups)
        for at in self._fault_times(fault, index):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            candidates = [d for d in pool if d.client.connected]
            if not candidates:
                self.stats.count(f"fault_{fault.kind}_skipped")
                continue
            d = self.rng.choice(candidates)
            if fault.kind == "stop_reading":
                d.client.stop_reading(fault.duration)
            else:
                d.bounce(fault.kind == "abrupt_close", fault.downtime)
            self._mark_faulted(d)
            self.stats.count(f"fault_{fault.kind}")
