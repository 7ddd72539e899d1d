"""What translating the engine's output costs per message in the MQTT-SN gateway.

The gateway lets the engine write MQTT 5.0 bytes into a plain protocol Connection and
decodes them again (iotbroker/mqttsn/gateway.py ``write_client``). The alternative is a
Connection subclass that hands over packet objects; it cannot be built on the mypyc
build (``protocol/connection.py`` is compiled: no interpreted subclasses). This script
measures, for QoS 0 and QoS 1 deliveries to MQTT-SN subscribers, the whole gateway
path per message and the part of it that is "encode MQTT, frame, decode MQTT".

    .venv/bin/python benchmarks/mqttsn_translate.py
"""

from __future__ import annotations

import time
from typing import Any

from iotbroker.codec.decode import decode_packet
from iotbroker.codec.framer import Framer
from iotbroker.codec.packets import NO_PROPERTIES
from iotbroker.config import parse_config
from iotbroker.engine.engine import Engine
from iotbroker.message import Delivery, Message
from iotbroker.metrics import Metrics
from iotbroker.mqttsn import codec as c
from iotbroker.mqttsn.gateway import Gateway
from iotbroker.protocol.connection import Connection
from iotbroker.storage.memory import MemoryStore


class _Allow:
    def may_publish(self, *_: Any) -> bool:
        return True

    def may_subscribe(self, *_: Any) -> bool:
        return True

    def receive_check(self) -> None:
        return None

    def publish_check(self) -> None:
        return None


def gateway_path(n: int, qos: int, subscribers: int = 100) -> float:
    """Seconds per delivered message: one publisher, ``subscribers`` MQTT-SN clients."""
    config = parse_config({"listeners": [{"type": "mqtt-sn", "port": 0}],
                           "storage": {"backend": "memory"},
                           "mqttsn": {"advertise_interval": 0, "rate_per_address": 0},
                           "mqtt": {"max_inflight": 65535}})
    engine = Engine(config, MemoryStore(), _Allow(), Metrics())
    ready: list[Any] = []
    sent = [0]

    def send(data: bytes, key: Any) -> None:
        sent[0] += 1

    gw = Gateway(engine, config, config.listeners[0], ready, send, 0.0)

    def flush() -> None:
        for client in engine.take_closing():
            client.close()
        engine.send_ready(0.0)
        todo = ready[:]
        ready.clear()
        for client in todo:
            client.write_pending()

    for i in range(subscribers):
        gw.datagram_received(c.encode(c.Connect(f"s{i}", 0)), ("s", i), 0.0)
        gw.datagram_received(c.encode(c.Subscribe(1, c.TopicIdType.NORMAL, "t/x", qos=qos)),
                             ("s", i), 0.0)
    gw.datagram_received(c.encode(c.Connect("pub", 0)), ("p", 0), 0.0)
    gw.datagram_received(c.encode(c.Register(0, 1, "t/x")), ("p", 0), 0.0)
    flush()
    pub = c.encode(c.Publish(c.TopicIdType.NORMAL, 1, 0, b"x" * 20, qos=0))
    rounds = n // subscribers
    acks = [c.encode(c.PubAck(1, pid, 0)) for pid in range(1, rounds + 2)]
    started = time.perf_counter()
    for r in range(rounds):
        gw.datagram_received(pub, ("p", 0), 0.0)
        flush()
        if qos:
            for i in range(subscribers):
                gw.datagram_received(acks[r], ("s", i), 0.0)
            flush()
    took = time.perf_counter() - started
    return took / (rounds * subscribers)


def reencode_part(n: int, qos: int) -> float:
    """Seconds per message of encode (Connection.send_publish) + frame + decode."""
    conn = Connection(max_packet_size=65535, receive_maximum=65535, topic_alias_maximum=0,
                      now=0.0)
    conn.protocol_version = 5
    conn.accept(0, None, None, None, False, True)
    framer = Framer(1 << 20)
    message = Message("t/x", b"x" * 20, qos, False, NO_PROPERTIES, 0.0)
    delivery = Delivery(message, qos)
    frames: list[tuple[int, bytes]] = []
    started = time.perf_counter()
    for i in range(n):
        conn.send_publish(delivery, (i % 65535) + 1 if qos else None, False, 0.0)
        data = conn.data_to_send()
        framer.feed_into(data, frames)
        for first, body in frames:
            decode_packet(first, body, 5)
        frames.clear()
    return (time.perf_counter() - started) / n


if __name__ == "__main__":
    for qos in (0, 1):
        whole = gateway_path(200_000, qos)
        part = reencode_part(200_000, qos)
        print(f"QoS {qos}: gateway path {whole * 1e6:.2f} us/message; of which MQTT "
              f"encode+frame+decode {part * 1e6:.2f} us ({part / whole:.0%})")
