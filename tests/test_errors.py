"""errors.py spells its default reason codes as literals (the codec imports it, so it
cannot import ``codec.enums``); they must stay the ReasonCode members they name."""

from __future__ import annotations

from iotbroker import errors
from iotbroker.codec.enums import ReasonCode


def test_default_reason_codes_are_the_reason_codes_they_name() -> None:
    assert errors.MqttError.default_reason_code == ReasonCode.PROTOCOL_ERROR
    assert errors.MalformedPacket.default_reason_code == ReasonCode.MALFORMED_PACKET
    assert errors.ProtocolViolation.default_reason_code == ReasonCode.PROTOCOL_ERROR
    assert errors.PacketTooLarge.default_reason_code == ReasonCode.PACKET_TOO_LARGE
    assert (errors.UnsupportedProtocolVersion.default_reason_code
            == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)
