"""Error types shared by every room of the broker.

Errors say who broke the rule: a peer's violation (:class:`MalformedPacket`,
:class:`ProtocolViolation`) closes that one connection with a reason code and one
log line; a bad configuration (:class:`ConfigError`) stops the start with a message
naming the key, the value and what was expected.
"""

from __future__ import annotations


class MqttError(Exception):
    """A peer broke an MQTT rule.

    ``reason_code`` is the MQTT 5.0 reason code to put on the DISCONNECT (or CONNACK)
    that closes the connection; ``spec_ref`` names the normative statement, for
    example ``"MQTT-1.5.4-1"``.
    """

    # Literals, not codec.enums.ReasonCode: the codec imports this module, not the reverse.
    default_reason_code = 0x82  # Protocol Error

    def __init__(self, message: str, reason_code: int | None = None, spec_ref: str = "") -> None:
        self.reason_code = self.default_reason_code if reason_code is None else reason_code
        self.spec_ref = spec_ref
        self.message = message
        text = f"{message} [{spec_ref}]" if spec_ref else message
        super().__init__(text)


class MalformedPacket(MqttError):
    """The bytes cannot be parsed as the packet they claim to be (MQTT 5.0 reason 0x81)."""

    default_reason_code = 0x81  # Malformed Packet


class ProtocolViolation(MqttError):
    """A well-formed packet that breaks a protocol rule (MQTT 5.0 reason 0x82 unless given)."""

    default_reason_code = 0x82  # Protocol Error


class PacketTooLarge(MalformedPacket):
    """A packet larger than the receiver's Maximum Packet Size (MQTT 5.0 reason 0x95)."""

    default_reason_code = 0x95  # Packet too large


class ConfigError(Exception):
    """A configuration value is wrong: names the key path, the value and what was expected."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        self.key = key
        self.value = value
        self.expected = expected
        super().__init__(f"{key}: {value!r} {expected}")


class StorageError(Exception):
    """The persistent store cannot be opened or written; the message says what to do."""


class UnsupportedProtocolVersion(MalformedPacket):
    """CONNECT asks for a protocol level this broker does not speak [MQTT-3.1.2-2].

    Raised by the codec for "MQIsdp" (MQTT 3.1) and for any level other than 4 or 5.
    The broker answers CONNACK 0x01 (MQTT 3.1.1 format) or 0x84 (MQTT 5.0 format)
    and closes. ``protocol_level`` and ``protocol_name`` say what the client asked for.
    """

    default_reason_code = 0x84  # Unsupported Protocol Version

    def __init__(
        self,
        message: str,
        protocol_level: int,
        protocol_name: str,
        reason_code: int | None = None,
        spec_ref: str = "MQTT-3.1.2-2",
    ) -> None:
        self.protocol_level = protocol_level
        self.protocol_name = protocol_name
        super().__init__(message, reason_code, spec_ref)
