"""The connections' timer wheel (server/timerwheel.py): never early, at most one
resolution late, one entry per connection, cancel on close."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from iotbroker.server.timerwheel import TimerWheel
from tests.helpers.broker_process import BrokerProcess, broker_config

RES = 0.02


class Item:
    def __init__(self, name: str, fired: list[tuple[str, float]]) -> None:
        self.name = name
        self.wheel_slot = 0
        self.fired = fired

    def on_deadline(self, now: float) -> None:
        self.fired.append((self.name, now))


def run(scenario) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    fired: list[tuple[str, float]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(loop, RES)
        await scenario(loop, wheel, fired)
        wheel.close()

    asyncio.run(main())
    return fired


def test_deadlines_fire_in_order_never_early_at_most_one_slot_late() -> None:
    deadlines: dict[str, float] = {}

    async def scenario(loop, wheel, fired):  # type: ignore[no-untyped-def]
        start = loop.time()
        for name, delay in (("c", 0.15), ("a", 0.05), ("b", 0.10)):
            deadlines[name] = start + delay
            wheel.schedule(deadlines[name], Item(name, fired))
        await asyncio.sleep(0.3)

    fired = run(scenario)
    assert [name for name, _ in fired] == ["a", "b", "c"]
    for name, when in fired:
        assert deadlines[name] <= when < deadlines[name] + RES + 0.05


def test_an_earlier_deadline_moves_the_entry_a_later_one_keeps_it() -> None:
    async def scenario(loop, wheel, fired):  # type: ignore[no-untyped-def]
        item = Item("x", fired)
        start = loop.time()
        wheel.schedule(start + 0.2, item)
        wheel.schedule(start + 0.05, item)  # earlier: moved
        wheel.schedule(start + 0.3, item)   # later: the earlier slot is kept
        assert len(wheel) == 1
        await asyncio.sleep(0.12)
        assert len(fired) == 1 and fired[0][1] - start < 0.15
        await asyncio.sleep(0.3)

    fired = run(scenario)
    assert len(fired) == 1  # one entry per item: it fired once


def test_cancel_forgets_the_item_and_an_item_may_schedule_itself_again() -> None:
    class Again(Item):
        def on_deadline(self, now: float) -> None:
            super().on_deadline(now)
            if len(self.fired) < 3:
                self.wheel.schedule(now + 0.03, self)

    async def scenario(loop, wheel, fired):  # type: ignore[no-untyped-def]
        gone = Item("gone", fired)
        wheel.schedule(loop.time() + 0.05, gone)
        wheel.cancel(gone)
        again = Again("again", fired)
        again.wheel = wheel  # type: ignore[attr-defined]
        wheel.schedule(loop.time() + 0.03, again)
        await asyncio.sleep(0.4)
        assert len(wheel) == 0

    fired = run(scenario)
    assert [name for name, _ in fired] == ["again"] * 3


class Rescheduling(Item):
    """Schedules itself again from ``on_deadline`` until it has fired ``times``, as a
    connection's keep-alive does when its slot ends before the deadline."""

    def __init__(self, name: str, fired: list[tuple[str, float]], wheel: TimerWheel,
                 times: int) -> None:
        super().__init__(name, fired)
        self.wheel = wheel
        self.times = times

    def on_deadline(self, now: float) -> None:
        super().on_deadline(now)
        if len(self.fired) < self.times:
            self.wheel.schedule(now + 0.03, self)


def test_a_deadline_scheduled_again_from_its_own_call_fires_again_without_an_error() -> None:
    """The compiled wheel raised a TypeError in ``_fire`` (an ERROR with a traceback in
    the broker's log, once per keep-alive period of every connection) when an
    ``on_deadline`` armed the wheel again; the loop's exception handler sees none now,
    and each scheduled deadline fires."""
    errors: list[dict[str, object]] = []

    async def scenario(loop, wheel, fired):  # type: ignore[no-untyped-def]
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        wheel.schedule(loop.time() + 0.03, Rescheduling("k", fired, wheel, 4))
        await asyncio.sleep(0.4)

    fired = run(scenario)
    assert errors == []
    assert [name for name, _ in fired] == ["k"] * 4


def test_a_client_with_keep_alive_leaves_no_error_in_the_broker_log(tmp_path: Path) -> None:
    """A real broker and a paho client with a 2 s Keep Alive, pinging through three
    periods: the client stays connected ([MQTT-3.1.2-24]: the Server closes it only
    after 1.5 × Keep Alive without a packet), and the broker's log has no ERROR and no
    traceback (the compiled timer wheel logged one per keep-alive period)."""
    broker = BrokerProcess(tmp_path, broker_config()).start()
    try:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="keepalive-client",
                             protocol=mqtt.MQTTv311)
        client.connect(broker.host, broker.port, keepalive=2)
        client.loop_start()
        try:
            time.sleep(6.5)
            assert client.is_connected()
        finally:
            client.disconnect()
            client.loop_stop()
        log = broker.log_text()
        assert "keepalive-client" in log
        assert "Traceback" not in log and " ERROR " not in log, log
    finally:
        broker.stop()
