"""Plain stand-ins for what core/ is given by the server: the connection a session
is attached to (:class:`FakeOutlet`, the ``Outlet`` protocol of core/session.py) and
helpers to build messages and read a :class:`ChangeBatch`."""

from __future__ import annotations

from iotbroker.codec.packets import NO_PROPERTIES, Packet, Properties, PubRel
from iotbroker.core.session import Session
from iotbroker.message import Delivery, Message, Sending
from iotbroker.storage.base import ChangeBatch, Op


class FakeOutlet:
    """The connection a session is attached to, as the engine drives it: what the
    session put in its outbox is sent when the test looks (any of the recording
    properties), PUBLISHes whose payload is longer than ``max_payload`` are refused
    (too large for the client) and handed back to the session, as
    ``Connection.send_outbox`` and ``Engine.send_ready`` do. ``writable`` is the
    connection's write buffer state, passed to the session.

    Attach with :func:`attach` (it tells the fake which session is attached)."""

    def __init__(self, writable: bool = True, max_payload: int | None = None) -> None:
        self._writable = writable
        self.max_payload = max_payload
        #: the engine's clock when it sends (QoS 0 entries carry no time of their own)
        self.now = 0.0
        self.session: Session | None = None
        #: every send_publish call: (delivery, packet id, dup, now), also refused ones
        self._calls: list[tuple[Delivery, int | None, bool, float]] = []
        #: the PUBLISHes really sent
        self._published: list[tuple[Delivery, int | None, bool, float]] = []
        self._packets: list[Packet] = []
        #: both kinds in order: ("PUBLISH", payload, packet id, dup) or ("PUBREL", id)
        self._log: list[tuple[object, ...]] = []

    @property
    def writable(self) -> bool:
        return self._writable

    @writable.setter
    def writable(self, value: bool) -> None:
        self._writable = value
        if self.session is not None and self.session.attached_to is self:
            self.session.writable = value

    def drain(self) -> None:
        """Send what the attached session has in its outbox."""
        session = self.session
        while session is not None and session.attached_to is self and session.outbox:
            for entry in session.take_outbox():
                if isinstance(entry, Delivery):  # QoS 0: sent when the engine sends
                    if not self.send_publish(entry, None, False, self.now):
                        session.refused(0, entry, False, self.now)
                    continue
                if isinstance(entry, Sending):  # a new QoS 1/2 PUBLISH
                    if not self.send_publish(entry.delivery, entry.packet_id, False,
                                             entry.sent_at):
                        session.refused(entry.packet_id, entry.delivery, False, entry.sent_at)
                    continue
                delivery, packet_id, dup, now = entry
                if delivery is None:
                    self.send_packet(PubRel(packet_id))
                elif not self.send_publish(delivery, packet_id or None, dup, now):
                    session.refused(packet_id, delivery, dup, now)

    def send_publish(
        self, delivery: Delivery, packet_id: int | None, dup: bool, now: float
    ) -> bool:
        call = (delivery, packet_id, dup, now)
        self._calls.append(call)
        if self.max_payload is not None and len(delivery.message.payload) > self.max_payload:
            return False
        self._published.append(call)
        self._log.append(("PUBLISH", delivery.message.payload, packet_id, dup))
        return True

    def send_packet(self, packet: Packet) -> None:
        self._packets.append(packet)
        self._log.append((type(packet).__name__.upper(), getattr(packet, "packet_id", None)))

    @property
    def calls(self) -> list[tuple[Delivery, int | None, bool, float]]:
        self.drain()
        return self._calls

    @property
    def published(self) -> list[tuple[Delivery, int | None, bool, float]]:
        self.drain()
        return self._published

    @property
    def packets(self) -> list[Packet]:
        self.drain()
        return self._packets

    @property
    def log(self) -> list[tuple[object, ...]]:
        self.drain()
        return self._log

    @property
    def payloads(self) -> list[bytes]:
        return [d.message.payload for d, _, _, _ in self.published]

    @property
    def packet_ids(self) -> list[int | None]:
        return [pid for _, pid, _, _ in self.published]


def attach(session: Session, outlet: FakeOutlet, receive_maximum: int, now: float) -> None:
    """``session.attach`` to the fake connection, which then sends its outbox."""
    outlet.session = session
    session.attach(outlet, receive_maximum, now)
    session.writable = outlet.writable


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
