"""Plain stand-ins for what core/ is given by the server: the connection a session
is attached to (:class:`FakeOutlet`, the ``Outlet`` protocol of core/session.py) and
helpers to build messages and read a :class:`ChangeBatch`."""

from __future__ import annotations

from iotbroker.codec.packets import NO_PROPERTIES, Packet, Properties
from iotbroker.message import Delivery, Message
from iotbroker.storage.base import ChangeBatch, Op


class FakeOutlet:
    """Records what a session sends. ``writable`` can be flipped; PUBLISHes whose
    payload is longer than ``max_payload`` are refused (too large for the client)."""

    def __init__(self, writable: bool = True, max_payload: int | None = None) -> None:
        self.writable = writable
        self.max_payload = max_payload
        #: every send_publish call: (delivery, packet id, dup, now), also refused ones
        self.calls: list[tuple[Delivery, int | None, bool, float]] = []
        #: the PUBLISHes really sent
        self.published: list[tuple[Delivery, int | None, bool, float]] = []
        self.packets: list[Packet] = []
        #: both kinds in order: ("PUBLISH", payload, packet id, dup) or ("PUBREL", id)
        self.log: list[tuple[object, ...]] = []

    def send_publish(
        self, delivery: Delivery, packet_id: int | None, dup: bool, now: float
    ) -> bool:
        call = (delivery, packet_id, dup, now)
        self.calls.append(call)
        if self.max_payload is not None and len(delivery.message.payload) > self.max_payload:
            return False
        self.published.append(call)
        self.log.append(("PUBLISH", delivery.message.payload, packet_id, dup))
        return True

    def send_packet(self, packet: Packet) -> None:
        self.packets.append(packet)
        self.log.append((type(packet).__name__.upper(), getattr(packet, "packet_id", None)))

    @property
    def payloads(self) -> list[bytes]:
        return [d.message.payload for d, _, _, _ in self.published]

    @property
    def packet_ids(self) -> list[int | None]:
        return [pid for _, pid, _, _ in self.published]


def message(
    topic: str = "t",
    payload: bytes = b"m",
    qos: int = 1,
    retain: bool = False,
    *,
    origin: str = "",
    created_at: float = 0.0,
    expires_at: float | None = None,
    properties: Properties = NO_PROPERTIES,
) -> Message:
    return Message(topic, payload, qos, retain, properties, created_at, expires_at, origin)


def delivery(payload: bytes = b"m", qos: int = 1, topic: str = "t", **kw: object) -> Delivery:
    return Delivery(message(topic, payload, qos, **kw), qos)  # type: ignore[arg-type]


def ops(batch: ChangeBatch) -> list[Op]:
    return [op for op, _, _ in batch]


def changes(batch: ChangeBatch, op: Op) -> list[tuple[object, object]]:
    return [(a, b) for o, a, b in batch if o is op]
