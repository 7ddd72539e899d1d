"""``--log-level DEBUG``: one line per MQTT packet, with its direction (issue 12).

``< PUBLISH`` is a packet the client sent, ``> PUBACK`` one the broker sent; each line
names the client and the packet's id, QoS, topic, reason code and sizes, e.g.::

    < PUBLISH client 'dev-1' id=7 qos=1 retain=0 topic='a/b' payload=5 size=14 [conn 3]
    > PUBACK client 'dev-1' id=7 rc=0x00 size=4 [conn 3]

The logger is ``iotbroker.packets`` (``logging.levels: {iotbroker.packets: INFO}`` turns
it off while the rest stays at DEBUG). Nothing here runs unless it is enabled:
``ClientProtocol`` tests :data:`iotbroker.server.logsetup.FLAGS` ``.packets`` (set by
``setup_logging``, so also on SIGHUP) once per read and once per write, and only then
calls :func:`log_inbound` / :func:`log_outbound`. Outbound bytes are framed and decoded
again here (the connection encodes PUBLISH and acks straight to bytes); inbound sizes
are those of the packet encoded again (the same, but for a topic alias resolved).
"""

from __future__ import annotations

import logging

from iotbroker.codec.decode import decode_packet
from iotbroker.codec.encode import encode_packet
from iotbroker.codec.enums import ProtocolVersion
from iotbroker.codec.framer import Framer
from iotbroker.codec.packets import (
    ConnAck,
    Connect,
    Packet,
    Publish,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
)
from iotbroker.engine.client import Client
from iotbroker.errors import MqttError

log = logging.getLogger("iotbroker.packets")

#: Packet type names by the high nibble of the first byte.
_NAMES = ("RESERVED", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL",
          "PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ",
          "PINGRESP", "DISCONNECT", "AUTH")


def describe(packet: Packet) -> str:
    """``PUBLISH id=7 qos=1 retain=0 topic='a/b' payload=5``: the packet's type and what
    an operator looks for in it (never a password or a payload's content)."""
    parts = [packet.TYPE.name]
    packet_id = getattr(packet, "packet_id", None)
    if packet_id is not None:
        parts.append(f"id={packet_id}")
    if isinstance(packet, Publish):
        parts += [f"qos={packet.qos}", f"retain={int(packet.retain)}"]
        if packet.dup:
            parts.append("dup=1")
        parts += [f"topic={packet.topic!r}", f"payload={len(packet.payload)}"]
    elif isinstance(packet, Connect):
        v5 = packet.protocol_version == ProtocolVersion.MQTT_5
        parts += [f"version={'5.0' if v5 else '3.1.1'}",
                  f"clean_start={int(packet.clean_start)}", f"keepalive={packet.keepalive}"]
        if packet.username is not None:
            parts.append(f"username={packet.username!r}")
        if packet.will is not None:
            parts.append(f"will_topic={packet.will.topic!r}")
    elif isinstance(packet, ConnAck):
        parts.append(f"session_present={int(packet.session_present)}")
    elif isinstance(packet, Subscribe):
        parts.append("filters=" + ",".join(f"{s.topic_filter!r}:{s.qos}"
                                           for s in packet.subscriptions))
    elif isinstance(packet, Unsubscribe):
        parts.append("filters=" + ",".join(repr(f) for f in packet.topic_filters))
    if isinstance(packet, (SubAck, UnsubAck)):
        parts.append("rc=" + ",".join(f"0x{code:02x}" for code in packet.reason_codes))
    else:
        code = getattr(packet, "reason_code", None)
        if code is not None:
            parts.append(f"rc=0x{code:02x}")
    return " ".join(parts)


def _who(proto: Client, packet: Packet | None = None) -> str:
    client_id = proto.client_id
    if not client_id and isinstance(packet, Connect):
        client_id = packet.client_id
    return f"client {client_id!r}" if client_id else f"peer {proto.peer}"


def log_inbound(proto: Client, packets: list[Packet]) -> None:
    """``< TYPE ...`` for each packet read from ``proto`` (DEBUG)."""
    extra = proto.log_extra()
    version = proto.conn.protocol_version
    for packet in packets:
        try:
            size = f" size={len(encode_packet(packet, version))}"
        except Exception:  # a size is a nicety; the line is what matters
            size = ""
        name, _, details = describe(packet).partition(" ")
        log.debug("< %s %s %s%s", name, _who(proto, packet), details, size, extra=extra)


def log_outbound(proto: Client, data: bytes) -> None:
    """``> TYPE ...`` for each packet in ``data``, the bytes about to be written (DEBUG)."""
    extra = proto.log_extra()
    version = proto.conn.protocol_version
    try:
        frames = Framer().feed(data)
    except MqttError as exc:  # our own output: should not happen, but never raise here
        log.debug("> %d bytes that do not frame: %s", len(data), exc, extra=extra)
        return
    who = _who(proto)
    for first_byte, body in frames:
        length = len(body)
        size = 2 + (length >= 128) + (length >= 16384) + (length >= 2097152) + length
        try:
            text = describe(decode_packet(first_byte, body, version))
        except MqttError:
            text = _NAMES[first_byte >> 4]
        name, _, details = text.partition(" ")
        log.debug("> %s %s %s size=%d", name, who, details, size, extra=extra)
