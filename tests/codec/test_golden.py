"""Golden packets both ways: decode raw -> packet or error, encode packet -> raw.

Each case of :mod:`tests.codec.golden` names the statement it checks (spec id in the
case name and ``spec_ref``).
"""

from __future__ import annotations

import pytest

from iotbroker.codec import Framer, decode_packet, encode_packet
from iotbroker.codec.decode import decode_whole
from iotbroker.codec.packets import Packet
from iotbroker.errors import UnsupportedProtocolVersion
from tests.codec import golden
from tests.codec.golden import Golden


def _decode_stream(raw: bytes, version: int) -> list[Packet]:
    framer = Framer()
    return [decode_packet(first, body, version) for first, body in framer.feed(raw)]


@pytest.mark.parametrize("case", golden.VALID, ids=lambda c: c.name)
def test_golden_decodes_to_expected_packet(case: Golden) -> None:
    assert _decode_stream(case.raw, case.version) == [case.packet]


@pytest.mark.parametrize("case", [c for c in golden.VALID if c.canonical], ids=lambda c: c.name)
def test_golden_encodes_to_raw_bytes(case: Golden) -> None:
    assert case.packet is not None
    assert encode_packet(case.packet, case.version) == case.raw


@pytest.mark.parametrize("case", golden.ERRORS, ids=lambda c: c.name)
def test_golden_error_is_raised_with_reason_and_spec_ref(case: Golden) -> None:
    assert case.error is not None
    with pytest.raises(case.error) as info:
        _decode_stream(case.raw, case.version)
    assert type(info.value) is case.error
    assert info.value.reason_code == case.reason_code
    assert info.value.spec_ref == case.spec_ref


def test_golden_catalogue_covers_every_packet_type_in_both_versions() -> None:
    seen = {(type(c.packet).__name__, c.version) for c in golden.VALID}
    names = {
        "Connect",
        "ConnAck",
        "Publish",
        "PubAck",
        "PubRec",
        "PubRel",
        "PubComp",
        "Subscribe",
        "SubAck",
        "Unsubscribe",
        "UnsubAck",
        "PingReq",
        "PingResp",
        "Disconnect",
    }
    expected = {(n, v) for n in names for v in (4, 5)} | {("Auth", 5)}
    assert expected <= seen


def test_golden_names_are_unique() -> None:
    names = [c.name for c in golden.ALL]
    assert len(names) == len(set(names))


def test_mqtt_3_1_2_2_unsupported_version_carries_the_requested_level() -> None:
    """[MQTT-3.1.2-2]: the broker needs the level to pick CONNACK 0x01 or 0x84."""
    case = next(c for c in golden.ERRORS if c.name == "mqtt_3_1_2_2_connect_mqisdp_level_4")
    with pytest.raises(UnsupportedProtocolVersion) as info:
        _decode_stream(case.raw, case.version)
    assert info.value.protocol_level == 4
    assert info.value.protocol_name == "MQIsdp"


def _decode_whole(raw: bytes, version: int) -> Packet:
    """The one-packet read's path (``Connection.receive_data``): the frame found in the
    read itself, the packet decoded in place."""
    header = Framer().whole_frame(raw)
    assert header, "a golden case is one whole packet"
    return decode_whole(raw, header, version)


@pytest.mark.parametrize("case", golden.VALID, ids=lambda c: c.name)
def test_golden_decodes_in_place_to_expected_packet(case: Golden) -> None:
    """A read that is exactly one packet decodes as the framed path does."""
    assert _decode_whole(case.raw, case.version) == case.packet


@pytest.mark.parametrize(
    "case",
    [c for c in golden.ERRORS if Framer().whole_frame(c.raw)],
    ids=lambda c: c.name,
)
def test_golden_error_in_place_is_the_same_error(case: Golden) -> None:
    """Same error class, reason code and spec reference as the framed path."""
    assert case.error is not None
    with pytest.raises(case.error) as info:
        _decode_whole(case.raw, case.version)
    assert type(info.value) is case.error
    assert info.value.reason_code == case.reason_code
    assert info.value.spec_ref == case.spec_ref
