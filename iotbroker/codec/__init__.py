"""Bytes <-> packets for MQTT 3.1.1 and 5.0; pure and synchronous.

Public API::

    Framer(max_packet_size).feed(data) -> list[(first_byte, body)]
    decode_packet(first_byte, body, protocol_version) -> Packet
    encode_packet(packet, protocol_version) -> bytes
    encode_publish(topic, payload, qos, retain, dup, packet_id, props_bytes[, topic_bytes])
    encode_properties(props, kind) -> bytes; decode_properties(buf, pos, kind)

``packets`` holds the dataclasses and ``enums`` the wire numbers.
"""

from iotbroker.codec import enums, packets
from iotbroker.codec.decode import decode_packet
from iotbroker.codec.encode import encode_packet, encode_publish
from iotbroker.codec.framer import PROTOCOL_MAX_PACKET_SIZE, Framer
from iotbroker.codec.properties import WILL, decode_properties, encode_properties

__all__ = [
    "PROTOCOL_MAX_PACKET_SIZE",
    "WILL",
    "Framer",
    "decode_packet",
    "decode_properties",
    "encode_packet",
    "encode_properties",
    "encode_publish",
    "enums",
    "packets",
]
