"""Simulated devices: a :class:`~iotsim.client.Client`, a lifecycle and a behaviour.

Behaviours (``behaviour:`` of a group):

* ``telemetry``: publishes one accounted message every ``interval`` (± ``jitter``);
* ``gateway``: one connection publishing for ``children`` child devices each tick;
* ``actuator``: subscribes to its ``command_topic`` and answers every request on the
  request's MQTT 5 Response Topic with its Correlation Data (MQTT 5.0 §4.10);
* ``dashboard``: subscribes with wildcards (``subscribe``), accounts for what it
  receives like a monitor, and may send requests to an actuator group (``requests``);
* ``idle``: connects and keeps the connection alive;
* monitors (not a group): accounting subscribers, see :class:`Subscriber`.

Lifecycle: ``start()`` runs a coroutine that connects (retrying with backoff), runs
the behaviour while connected and reconnects after faults until ``stop()``. Timers
are ``loop.call_later`` handles, not tasks.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from dataclasses import dataclass, field

from iotbroker.codec import encode_properties
from iotbroker.codec.packets import Properties, Will
from iotsim.client import Client, Target
from iotsim.payloads import MAGIC_TELEMETRY, PayloadBuilder, parse_header, stream_key, will_payload
from iotsim.scenario import GroupSpec
from iotsim.snclient import SnClient
from iotsim.stats import Stats, SubscriberRec
from iotsim.topics import render

_CORRELATION = struct.Struct(">Q")


class Pacer:
    """Spaces events at a rate (a connect-rate limiter shared by many coroutines)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        """Return at this caller's turn."""
        if not self.interval:
            return
        now = time.monotonic()
        turn = max(now, self._next)
        self._next = turn + self.interval
        if turn - now > 0.001:
            await asyncio.sleep(turn - now)


@dataclass
class Context:
    """What every device of one process shares."""

    target: Target
    stats: Stats
    run_token: str
    run_id: int
    rng: random.Random
    reconnect_pacer: Pacer
    publishing: bool = False
    stopping: bool = False
    ack_timeout: float = 5.0
    builders: dict[str, PayloadBuilder] = field(default_factory=dict)
    groups: dict[str, GroupSpec] = field(default_factory=dict)


class Source:
    """One accounted publisher: a device, or one child of a gateway."""

    __slots__ = ("id", "keys", "seq", "topic")

    def __init__(self, source_id: int, topic: str) -> None:
        self.id = source_id
        self.topic = topic
        self.seq = [0, 0, 0]
        self.keys = (stream_key(source_id, 0), stream_key(source_id, 1), stream_key(source_id, 2))


class Device:
    """A simulated device of a group (base class: connect, stay connected, reconnect)."""

    def __init__(self, ctx: Context, group: GroupSpec, index: int, source_base: int,
                 source_address: str | None) -> None:
        self.ctx = ctx
        self.group = group
        self.index = index
        self.source_base = source_base
        self.values = {"id": index, "site": index % group.sites, "group": group.name,
                       "run": ctx.run_token}
        will: Will | None = None
        if group.will is not None:
            w = group.will
            topic = render(w.topic, **self.values)
            props = Properties()
            if group.version == 5 and w.delay:
                props.will_delay_interval = w.delay
            will = Will(topic, will_payload(ctx.run_id, source_base, w.qos, w.payload),
                        w.qos, w.retain, props)
            if not props.will_delay_interval:  # a delayed will may be cancelled by a reconnect
                ctx.stats.will_topics[source_base] = topic
        self.client: Client | SnClient
        if group.protocol == "mqtt-sn":
            self.client = SnClient(
                ctx.target, ctx.stats, render(group.client_id, **self.values), group.keepalive,
                group.clean_start, will, source_base if will is not None else None,
                group.max_inflight, source_address, group.qos_minus_one, ctx.ack_timeout,
            )
        else:
            self.client = Client(
                ctx.target, ctx.stats, render(group.client_id, **self.values), group.version,
                group.keepalive, group.clean_start, group.session_expiry, will,
                source_base if will is not None else None, group.username,
                group.password.encode() if group.password is not None else None,
                group.max_inflight, source_address,
            )
        self.wanted = False
        self.counted = True  # monitors are not devices
        self.ever_connected = False
        self.failed_connects = 0
        self.downtime = 0.0
        self.task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Connect (and keep reconnecting) until :meth:`stop`."""
        self.wanted = True
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._lifecycle())

    def stop(self) -> None:
        """Disconnect cleanly and stay disconnected."""
        self.wanted = False
        self.client.disconnect()

    def bounce(self, abrupt: bool, downtime: float = 0.0) -> bool:
        """Drop the connection (abruptly: the will fires) and reconnect after ``downtime``."""
        if not self.client.connected:
            return False
        self.downtime = downtime
        if abrupt:
            self.client.abort()
        else:
            self.client.disconnect()
        return True

    async def _lifecycle(self) -> None:
        ctx = self.ctx
        stats = ctx.stats
        backoff = 0.25
        reconnect = False
        while self.wanted and not ctx.stopping:
            if reconnect:
                await ctx.reconnect_pacer.wait()
            reconnect = True
            if not await self.client.connect():
                self.failed_connects += 1
                if not self.wanted or ctx.stopping:
                    break
                await asyncio.sleep(backoff * (0.5 + ctx.rng.random()))
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.25
            if not self.ever_connected:
                self.ever_connected = True
                if self.counted:
                    stats.devices_connected_ever += 1
            if not self.wanted or ctx.stopping:
                self.client.disconnect()
            else:
                try:
                    await self.on_connected()
                except (ConnectionError, TimeoutError):
                    stats.error("subscribe_failed")
                    self.client.abort()
            await self.client.wait_closed()
            self.on_disconnected()
            if self.downtime > 0:
                pause, self.downtime = self.downtime, 0.0
                await asyncio.sleep(pause)

    async def on_connected(self) -> None:
        """The behaviour starts (subscriptions, timers)."""

    def on_disconnected(self) -> None:
        """The behaviour stops until the next connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        """Periodic work of the behaviour (telemetry, requests)."""


class Telemetry(Device):
    """Publishes accounted telemetry every ``interval`` with ``jitter`` (a fraction)."""

    def __init__(self, ctx: Context, group: GroupSpec, index: int, source_base: int,
                 source_address: str | None) -> None:
        super().__init__(ctx, group, index, source_base, source_address)
        if group.behaviour == "gateway":
            self.sources = [Source(source_base + c, render(group.topic, **self.values, child=c))
                            for c in range(group.children)]
        else:
            self.sources = [Source(source_base, render(group.topic, **self.values))]
        mix = group.qos_mix
        self._fixed_qos = next((q for q in range(3) if mix[q] == 1.0), -1)
        self._cum = (mix[0], mix[0] + mix[1])
        self._builder = ctx.builders[group.name]

    async def on_connected(self) -> None:
        self._schedule(self.ctx.rng.uniform(0, self.group.interval))
        if self.group.sleep and isinstance(self.client, SnClient):
            self.client.sleep(self.group.sleep)  # §6.14: asleep between ticks

    def _tick(self) -> None:
        self._timer = None
        client = self.client
        if not client.connected:
            return
        if isinstance(client, SnClient) and client.asleep:
            client.wake()  # PINGREQ with the client id: buffered messages come now
        if self.ctx.publishing:
            for src in self.sources:
                self._publish(src)
        g = self.group
        j = g.jitter
        delay = g.interval * (1.0 + self.ctx.rng.uniform(-j, j)) if j else g.interval
        self._schedule(delay)

    def _publish(self, src: Source) -> None:
        qos = self._fixed_qos
        if qos < 0:
            r = self.ctx.rng.random()
            qos = 0 if r < self._cum[0] else 1 if r < self._cum[1] else 2
        ctx = self.ctx
        if not self.client.can_publish(qos):
            ctx.stats.count("publish_skipped_window" if self.client.connected
                            else "publish_skipped_offline")
            return
        seq = src.seq[qos] + 1
        src.seq[qos] = seq
        sent_ns = time.monotonic_ns()  # before the write: see Subscriber.on_connected
        payload = self._builder.build(ctx.run_id, src.id, qos, seq)
        key = src.keys[qos]
        self.client.send_publish(src.topic, payload, qos, self.group.retain, key, seq)
        ctx.stats.on_published(key, src.topic, qos, seq, sent_ns)


class Actuator(Device):
    """Subscribes to its command topic and answers requests (MQTT 5 request/response)."""

    def __init__(self, ctx: Context, group: GroupSpec, index: int, source_base: int,
                 source_address: str | None) -> None:
        super().__init__(ctx, group, index, source_base, source_address)
        self.command_topic = render(group.command_topic, **self.values)
        self.client.want_properties = True
        self.client.on_message = self._on_message

    async def on_connected(self) -> None:
        codes = await self.client.subscribe([(self.command_topic, 1)])
        if any(c >= 0x80 for c in codes):
            self.ctx.stats.error("subscribe_refused")

    def _on_message(self, topic: bytes, payload: bytes, qos: int,
                    props: Properties | None) -> None:
        stats = self.ctx.stats
        stats.count("requests_received")
        if props is None or not props.response_topic:
            stats.error("request_without_response_topic")
            return
        if not self.client.can_publish(1):
            stats.error("response_skipped")
            return
        reply = encode_properties(Properties(correlation_data=props.correlation_data), 3)
        self.client.send_publish(props.response_topic, b"done:" + payload[:32], 1, False,
                                 properties=reply)
        stats.count("responses_sent")


class Subscriber(Device):
    """Accounts for every message it receives (monitors and dashboards)."""

    def __init__(self, ctx: Context, group: GroupSpec, index: int, source_base: int,
                 source_address: str | None, filters: tuple[str, ...], qos: int,
                 name: str) -> None:
        super().__init__(ctx, group, index, source_base, source_address)
        self.filters = filters
        self.sub_qos = qos
        self.record = SubscriberRec(name, filters, qos, ctx.run_id, self.client.persistent)
        ctx.stats.subscribers.append(self.record)
        self.client.accounting = True
        self.client.on_message = self._on_message
        self.response_topic = b""
        self.ready = False
        self._session_kept = True  # the session was present on every connection since
        #                            the last SUBACK

    async def on_connected(self) -> None:
        """Subscribe; the SUBACK's arrival starts (or restarts) what it is expected to get.

        Messages sent after the SUBACK was read reach the broker after it subscribed us,
        so they must arrive (per QoS); earlier ones may or may not (accounting module).
        """
        client = self.client
        if not (client.persistent and client.session_present):
            self._session_kept = False
        codes = await client.subscribe([(f, self.sub_qos) for f in self.filters])
        granted = [c for c in codes if c < 0x80]
        if len(granted) != len(codes):
            # not (fully) subscribed: no new expectation; a clean session's stays excused
            self.ctx.stats.error("subscribe_refused")
            self.record.faulted = True
        else:
            if granted:
                self.record.qos = min(self.record.qos, max(granted))
            self.record.on_subscribed(client.suback_ns,
                                      bool(self.record.ups) and self._session_kept)
            self._session_kept = True
        self.ready = True

    def on_disconnected(self) -> None:
        super().on_disconnected()
        if not self.ctx.stopping:
            self.record.faulted = True
            self.record.on_disconnected(time.monotonic_ns())

    def _on_message(self, topic: bytes, payload: bytes, qos: int,
                    props: Properties | None) -> None:
        if topic == self.response_topic:
            self._on_response(props)
            return
        header = parse_header(payload)
        latency = self.record.account(payload, header, time.monotonic_ns())
        if latency >= 0:
            self.ctx.stats.on_delivered(latency)
        elif header is not None and header[0] == MAGIC_TELEMETRY:
            self.ctx.stats.count("foreign_messages")

    def _on_response(self, props: Properties | None) -> None:
        stats = self.ctx.stats
        if props is None or props.correlation_data is None or len(props.correlation_data) != 8:
            stats.error("response_without_correlation_data")
            return
        (sent_ns,) = _CORRELATION.unpack(props.correlation_data)
        stats.rr_latency.record((time.monotonic_ns() - sent_ns) // 1000)
        stats.count("responses_received")


class Dashboard(Subscriber):
    """A wildcard subscriber that may also send requests to actuators."""

    def __init__(self, ctx: Context, group: GroupSpec, index: int, source_base: int,
                 source_address: str | None) -> None:
        filters = tuple(render(f, run=ctx.run_token, group=group.name) for f in group.subscribe)
        super().__init__(ctx, group, index, source_base, source_address, filters,
                         group.subscribe_qos, f"{group.name}-{index}")
        req = group.requests
        if req is not None:
            self.client.want_properties = True
            self.response_topic = f"iotsim/{ctx.run_token}/response/{group.name}/{index}".encode()
            self._target = ctx.groups[req.target]

    async def on_connected(self) -> None:
        await super().on_connected()
        req = self.group.requests
        if req is not None:
            await self.client.subscribe([(self.response_topic.decode(), 1)])
            self._schedule(self.ctx.rng.uniform(0, req.interval))

    def _tick(self) -> None:
        self._timer = None
        req = self.group.requests
        if req is None or not self.client.connected:
            return
        ctx = self.ctx
        if ctx.publishing:
            if self.client.can_publish(req.qos):
                i = ctx.rng.randrange(self._target.count)
                values = {"id": i, "site": i % self._target.sites, "group": self._target.name,
                          "run": ctx.run_token}
                topic = render(self._target.command_topic, **values)
                props = Properties(response_topic=self.response_topic.decode(),
                                   correlation_data=_CORRELATION.pack(time.monotonic_ns()))
                self.client.send_publish(topic, b"set", req.qos, False,
                                         properties=encode_properties(props, 3))
                ctx.stats.count("requests_sent")
            else:
                ctx.stats.count("requests_skipped")
        self._schedule(req.interval)


def make_device(ctx: Context, group: GroupSpec, index: int, source_base: int,
                source_address: str | None) -> Device:
    """The device class for the group's behaviour."""
    if group.behaviour in ("telemetry", "gateway"):
        return Telemetry(ctx, group, index, source_base, source_address)
    if group.behaviour == "actuator":
        return Actuator(ctx, group, index, source_base, source_address)
    if group.behaviour == "dashboard":
        return Dashboard(ctx, group, index, source_base, source_address)
    return Device(ctx, group, index, source_base, source_address)
