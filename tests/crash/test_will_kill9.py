"""Wills survive a crash of the broker (issue 18).

The will is session state (MQTT 5.0 §4.1; MQTT 3.1.1 §3.1.2.4 lists it with the
session's state) and a network connection that ends without DISCONNECT publishes it
(3.1.1 [MQTT-3.1.2-8], 5.0 §3.1.2.5). When the broker itself is SIGKILLed, every
connection ends that way: after the restart on the same data directory the broker
publishes the stored wills of the clients that were connected at the crash, exactly
once -- honouring the Will Delay Interval (counted from the restart) and not when the
client resumes its session within the delay [MQTT-3.1.3-9] (5.0).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from iotbroker.codec.packets import PingReq, PingResp, Properties, Publish, Will
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import Closed, RawClient

PERSISTENT = Properties(session_expiry_interval=3600)


def _collect(client: RawClient, quiet: float) -> list[Publish]:
    """Every PUBLISH until ``quiet`` seconds pass without one (acknowledged; bounded)."""
    got: list[Publish] = []
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        try:
            got.append(client.receive_publish(timeout=quiet))
        except (TimeoutError, Closed):
            return got
    return got


def _device(broker: BrokerProcess, name: str, version: int, *, clean: bool,
            delay: int | None = None, expiry: int = 0) -> RawClient:
    c = RawClient(broker.host, broker.port, version, timeout=3.0)
    props = Properties(will_delay_interval=delay) if delay is not None else Properties()
    connect_props = Properties(session_expiry_interval=expiry) if expiry else None
    ack = c.connect(name, clean_start=clean,
                    will=Will(f"wills/{name}", f"{name} gone".encode(), 1, False, props),
                    properties=connect_props)
    assert ack.reason_code == 0
    return c


def _settled(client: RawClient) -> None:
    """PINGREQ -> PINGRESP: the broker has handled (and committed, before writing the
    PINGRESP) everything the client sent before, e.g. its PUBACKs -- so a kill -9 after
    this does not bring an acknowledged message back as a DUP re-send [MQTT-4.4.0-1]."""
    client.send(PingReq())
    client.expect(PingResp)


def _watcher(broker: BrokerProcess, clean: bool) -> RawClient:
    w = RawClient(broker.host, broker.port, 5, timeout=3.0)
    assert w.connect("will-watcher", clean_start=clean, properties=PERSISTENT).reason_code == 0
    return w


def test_wills_of_connected_clients_are_published_once_after_kill_9(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """After kill -9 and a restart: the wills of 3.1.1 (Clean Session 0 and 1) and 5.0
    (Session Expiry 0 and 3600) clients connected at the crash are published; a client
    that had sent DISCONNECT before has none [MQTT-3.14.4-3]; a 5.0 will with Will Delay
    2 s whose client resumes within the delay is not published [MQTT-3.1.3-9], one with
    delay 1 s whose client stays away is, not before 1 s; and a second kill -9 and
    restart publishes none of them again (exactly once)."""
    broker = make_broker(broker_config(storage="rocksdb", durability="os"))
    watcher = _watcher(broker, clean=True)
    assert watcher.subscribe("wills/#", 1).reason_codes == [1]
    devices = [
        _device(broker, "v4-persistent", 4, clean=False),
        _device(broker, "v4-clean", 4, clean=True),
        _device(broker, "v5-expiry-0", 5, clean=True),
        _device(broker, "v5-persistent", 5, clean=True, expiry=3600),
        _device(broker, "v5-delay-1", 5, clean=True, delay=1, expiry=3600),
        _device(broker, "v5-delay-resumes", 5, clean=True, delay=2, expiry=3600),
    ]
    leaver = _device(broker, "v4-left-cleanly", 4, clean=False)
    leaver.disconnect()
    time.sleep(0.2)
    broker.kill()
    for c in (*devices, watcher):
        c.sock.close()

    broker.start()
    restarted = time.monotonic()
    again = RawClient(broker.host, broker.port, 5, timeout=3.0)
    ack = again.connect("v5-delay-resumes", clean_start=False, properties=PERSISTENT)
    assert ack.reason_code == 0 and ack.session_present
    watcher = _watcher(broker, clean=False)
    got = _collect(watcher, quiet=1.5)
    arrived = time.monotonic()
    topics = sorted(p.topic for p in got)
    assert topics == sorted(f"wills/{n}" for n in (
        "v4-persistent", "v4-clean", "v5-expiry-0", "v5-persistent", "v5-delay-1",
    )), [(p.topic, p.payload) for p in got]
    assert all(p.payload == p.topic.split("/", 1)[1].encode() + b" gone" for p in got)
    assert arrived - restarted >= 1.0  # the delayed one came after its delay
    _settled(watcher)
    _settled(again)
    again.disconnect()  # a normal DISCONNECT: its will is discarded [MQTT-3.14.4-3]
    watcher.disconnect()

    broker.kill()
    broker.start()
    watcher = _watcher(broker, clean=False)
    assert _collect(watcher, quiet=1.5) == []  # none published a second time
    watcher.close()


def test_delayed_will_fires_once_across_restarts(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """MQTT 5.0 §3.1.3.2.2: a will with a Will Delay Interval held for a session that
    outlives its connection is published when the delay ends; the stored session no
    longer holds it afterwards, so a later kill -9 and restart (the session has not
    expired) does not publish it again."""
    broker = make_broker(broker_config(storage="rocksdb", durability="os"))
    watcher = _watcher(broker, clean=True)
    assert watcher.subscribe("wills/#", 1).reason_codes == [1]
    device = _device(broker, "v5-delay-once", 5, clean=True, delay=1, expiry=3600)
    device.sock.close()  # connection lost: the will is due in 1 s
    got = _collect(watcher, quiet=2.0)
    assert [p.topic for p in got] == ["wills/v5-delay-once"]
    _settled(watcher)
    watcher.disconnect()
    broker.kill()
    broker.start()
    watcher = _watcher(broker, clean=False)
    assert _collect(watcher, quiet=1.5) == []
    watcher.close()


def test_clean_shutdown_publishes_no_will_after_restart(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """A clean shutdown (SIGTERM) is not the clients' fault: no will goes out then
    (v5 clients get DISCONNECT 0x8B), and the stored wills are cleared, so the restart
    does not publish them either -- only a crash does."""
    broker = make_broker(broker_config(storage="rocksdb", durability="os"))
    watcher = _watcher(broker, clean=True)
    assert watcher.subscribe("wills/#", 1).reason_codes == [1]
    devices = [_device(broker, "sd-v4", 4, clean=True),
               _device(broker, "sd-v5", 5, clean=True, expiry=3600)]
    assert broker.stop() == 0
    for c in (*devices, watcher):
        c.close()
    broker.start()
    watcher = _watcher(broker, clean=False)
    assert _collect(watcher, quiet=1.5) == []
    watcher.close()
