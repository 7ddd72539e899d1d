"""Golden packet catalogue: raw bytes <-> packet or documented error.

Plain data, shared by the codec, protocol and conformance tests (Mochi's tpackets.go
pattern). Each :class:`Golden` is one complete packet (fixed header included) on the
wire for protocol level ``version`` (4 = MQTT 3.1.1, 5 = MQTT 5.0), and either

* ``packet``: what it decodes to; when ``canonical`` is true, encoding ``packet`` for
  ``version`` gives back exactly ``raw`` (the form we send); or
* ``error`` / ``reason_code`` / ``spec_ref``: what :class:`~iotbroker.codec.Framer` +
  :func:`~iotbroker.codec.decode_packet` raise for it.

Bytes were written by hand from the specifications, not produced by our encoder.
Statement ids are those of /work/shared/spec/mqtt-normative-statements.csv; rules
without an id cite the section ("MQTT 5.0 §3.8.3.1").
"""

from __future__ import annotations

from dataclasses import dataclass

from iotbroker.codec.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from iotbroker.errors import (
    MalformedPacket,
    MqttError,
    ProtocolViolation,
    UnsupportedProtocolVersion,
)


@dataclass(frozen=True)
class Golden:
    name: str
    raw: bytes
    version: int
    packet: Packet | None = None
    canonical: bool = True
    error: type[MqttError] | None = None
    reason_code: int | None = None
    spec_ref: str = ""


def h(text: str) -> bytes:
    """Hex with spaces allowed."""
    return bytes.fromhex(text)


def ok(
    name: str,
    raw: str | bytes,
    version: int,
    packet: Packet,
    canonical: bool = True,
    spec_ref: str = "",
) -> Golden:
    return Golden(
        name, h(raw) if isinstance(raw, str) else raw, version, packet, canonical, spec_ref=spec_ref
    )


def bad(
    name: str, raw: str, version: int, error: type[MqttError], reason_code: int, spec_ref: str
) -> Golden:
    return Golden(name, h(raw), version, None, False, error, reason_code, spec_ref)


MQTT = "00 04 4d 51 54 54"  # protocol name "MQTT"
M, P, U = MalformedPacket, ProtocolViolation, UnsupportedProtocolVersion

# --------------------------------------------------------------------- MQTT 3.1.1, valid
V4_VALID = [
    ok("connect_v4_minimal", f"10 0d {MQTT} 04 02 00 3c 00 01 63", 4, Connect("c")),
    # MQTT 3.1 (MQTT 3.1 §3.1): protocol name "MQIsdp", version 3, read like 3.1.1.
    ok(
        "connect_mqtt31_mqisdp_level_3",
        "10 0f 00 06 4d 51 49 73 64 70 03 02 00 3c 00 01 63",
        4,
        Connect("c", 3, "MQIsdp"),
        spec_ref="MQTT 3.1 §3.1",
    ),
    ok(
        "connect_v4_will_user_password",
        f"10 1e {MQTT} 04 ec 00 0a 00 04 64 65 76 31 00 01 77 00 03 62 79 65 00 01 75 00 01 70",
        4,
        Connect(
            "dev1",
            4,
            clean_start=False,
            keepalive=10,
            will=Will("w", b"bye", 1, True),
            username="u",
            password=b"p",
        ),
    ),
    ok("connack_v4_accepted", "20 02 00 00", 4, ConnAck()),
    ok("connack_v4_session_present", "20 02 01 00", 4, ConnAck(True, 0)),
    ok("connack_v4_not_authorized", "20 02 00 05", 4, ConnAck(False, 5)),
    ok("publish_v4_qos0", "30 0a 00 03 61 2f 62 68 65 6c 6c 6f", 4, Publish("a/b", b"hello")),
    ok(
        "publish_v4_qos1_retain",
        "33 06 00 01 74 00 01 78",
        4,
        Publish("t", b"x", 1, retain=True, packet_id=1),
    ),
    ok(
        "publish_v4_qos2_dup_empty_payload",
        "3c 05 00 01 74 12 34",
        4,
        Publish("t", b"", 2, dup=True, packet_id=0x1234),
    ),
    ok(
        "publish_v4_two_byte_remaining_length",
        h("30 cb 01 00 01 74") + b"\xaa" * 200,
        4,
        Publish("t", b"\xaa" * 200),
    ),
    ok(
        "mqtt_1_5_3_3_publish_v4_bom_kept",
        "30 06 00 03 ef bb bf 78",
        4,
        Publish("\ufeff", b"x"),
        spec_ref="MQTT-1.5.3-3",
    ),
    ok("puback_v4", "40 02 00 01", 4, PubAck(1)),
    ok("pubrec_v4", "50 02 00 02", 4, PubRec(2)),
    ok("pubrel_v4", "62 02 00 03", 4, PubRel(3)),
    ok("pubcomp_v4", "70 02 00 04", 4, PubComp(4)),
    ok(
        "subscribe_v4",
        "82 0c 00 0a 00 03 61 2f 2b 01 00 01 23 02",
        4,
        Subscribe(10, [Subscription("a/+", 1), Subscription("#", 2)]),
    ),
    ok("suback_v4", "90 04 00 0a 01 80", 4, SubAck(10, [1, 0x80])),
    ok("unsubscribe_v4", "a2 07 00 0b 00 03 61 2f 2b", 4, Unsubscribe(11, ["a/+"])),
    ok("unsuback_v4", "b0 02 00 0b", 4, UnsubAck(11)),
    ok("pingreq_v4", "c0 00", 4, PingReq()),
    ok("pingresp_v4", "d0 00", 4, PingResp()),
    ok("disconnect_v4", "e0 00", 4, Disconnect()),
]

# --------------------------------------------------------------------- MQTT 5.0, valid
_CONNECT_V5_PROPS = (
    "19"  # property length 25
    " 11 00 00 0e 10"  # session expiry interval 3600
    " 17 00"  # request problem information 0
    " 21 00 14"  # receive maximum 20
    " 22 00 0a"  # topic alias maximum 10
    " 26 00 01 6b 00 01 76"  # user property k=v
    " 27 00 00 04 00"  # maximum packet size 1024
)
_WILL_V5_PROPS = (
    "10"  # property length 16
    " 01 01"  # payload format indicator 1
    " 02 00 00 00 3c"  # message expiry interval 60
    " 03 00 01 74"  # content type "t"
    " 18 00 00 00 05"  # will delay interval 5
)
_PUBLISH_V5_PROPS = (
    "2d"  # property length 45
    " 01 01"
    " 02 00 00 00 0a"
    " 03 00 04 6a 73 6f 6e"  # content type "json"
    " 08 00 01 72"  # response topic "r"
    " 09 00 02 01 02"  # correlation data
    " 0b 01 0b c8 01"  # subscription identifiers 1, 200
    " 23 00 03"  # topic alias 3
    " 26 00 01 61 00 01 31 26 00 01 61 00 01 32"  # user properties a=1, a=2 (order kept)
)
_CONNACK_V5_PROPS = (
    "19"
    " 12 00 06 61 75 74 6f 2d 31"  # assigned client identifier "auto-1"
    " 13 00 1e"  # server keep alive 30
    " 22 00 0a"  # topic alias maximum 10
    " 24 01 25 01 28 01 29 00 2a 01"  # max qos 1, retain, wildcard, sub ids 0, shared
)

V5_VALID = [
    ok("connect_v5_minimal", f"10 0e {MQTT} 05 02 00 3c 00 00 01 63", 5, Connect("c", 5)),
    ok(
        "connect_v5_properties_will_user_password",
        f"10 4c {MQTT} 05 d4 00 00 {_CONNECT_V5_PROPS} 00 00 {_WILL_V5_PROPS}"
        " 00 03 77 2f 78 00 04 67 6f 6e 65 00 04 75 73 65 72 00 02 70 77",
        5,
        Connect(
            "",
            5,
            clean_start=False,
            keepalive=0,
            will=Will(
                "w/x",
                b"gone",
                2,
                False,
                Properties(
                    payload_format_indicator=1,
                    message_expiry_interval=60,
                    content_type="t",
                    will_delay_interval=5,
                ),
            ),
            username="user",
            password=b"pw",
            properties=Properties(
                session_expiry_interval=3600,
                request_problem_information=0,
                receive_maximum=20,
                topic_alias_maximum=10,
                user_properties=(("k", "v"),),
                maximum_packet_size=1024,
            ),
        ),
    ),
    ok(
        "connect_v5_password_without_username",
        f"10 12 {MQTT} 05 42 00 3c 00 00 01 63 00 02 70 77",
        5,
        Connect("c", 5, password=b"pw"),
    ),
    ok("connack_v5_minimal", "20 03 00 00 00", 5, ConnAck()),
    ok(
        "connack_v5_properties",
        f"20 1c 00 00 {_CONNACK_V5_PROPS}",
        5,
        ConnAck(
            False,
            0,
            Properties(
                assigned_client_identifier="auto-1",
                server_keep_alive=30,
                topic_alias_maximum=10,
                maximum_qos=1,
                retain_available=1,
                wildcard_subscription_available=1,
                subscription_identifier_available=0,
                shared_subscription_available=1,
            ),
        ),
    ),
    ok("connack_v5_not_authorized", "20 03 00 87 00", 5, ConnAck(False, 0x87)),
    ok("publish_v5_qos0", "30 0b 00 03 61 2f 62 00 68 65 6c 6c 6f", 5, Publish("a/b", b"hello")),
    ok(
        "publish_v5_qos1_all_publish_properties",
        f"32 34 00 01 74 00 05 {_PUBLISH_V5_PROPS} 78",
        5,
        Publish(
            "t",
            b"x",
            1,
            packet_id=5,
            properties=Properties(
                payload_format_indicator=1,
                message_expiry_interval=10,
                content_type="json",
                response_topic="r",
                correlation_data=b"\x01\x02",
                subscription_identifiers=(1, 200),
                topic_alias=3,
                user_properties=(("a", "1"), ("a", "2")),
            ),
        ),
    ),
    ok(
        "publish_v5_empty_topic_with_alias",
        "30 07 00 00 03 23 00 07 70",
        5,
        Publish("", b"p", properties=Properties(topic_alias=7)),
    ),
    ok(
        "mqtt_1_5_4_3_publish_v5_bom_kept",
        "30 07 00 03 ef bb bf 00 78",
        5,
        Publish("\ufeff", b"x"),
        spec_ref="MQTT-1.5.4-3",
    ),
    ok("puback_v5_short_form", "40 02 00 01", 5, PubAck(1)),
    ok("puback_v5_reason_only", "40 03 00 01 10", 5, PubAck(1, 0x10)),
    ok(
        "puback_v5_explicit_success_no_properties",
        "40 04 00 01 00 00",
        5,
        PubAck(1),
        canonical=False,
    ),
    ok(
        "puback_v5_reason_string",
        "40 09 00 01 87 05 1f 00 02 6e 6f",
        5,
        PubAck(1, 0x87, Properties(reason_string="no")),
    ),
    ok("pubrec_v5", "50 02 00 02", 5, PubRec(2)),
    ok("pubrel_v5_packet_id_not_found", "62 03 00 03 92", 5, PubRel(3, 0x92)),
    ok("pubcomp_v5", "70 02 00 04", 5, PubComp(4)),
    ok(
        "subscribe_v5_options_and_subscription_id",
        "82 18 00 01 02 0b 05 00 03 61 2f 62 2d 00 0a 24 73 68 61 72 65 2f 67 2f 78 00",
        5,
        Subscribe(
            1,
            [Subscription("a/b", 1, True, True, 2), Subscription("$share/g/x")],
            Properties(subscription_identifiers=(5,)),
        ),
    ),
    ok("suback_v5", "90 06 00 01 00 01 00 8f", 5, SubAck(1, [1, 0, 0x8F])),
    ok("unsubscribe_v5", "a2 08 00 02 00 00 03 61 2f 62", 5, Unsubscribe(2, ["a/b"])),
    ok("unsuback_v5", "b0 05 00 02 00 00 11", 5, UnsubAck(2, [0, 0x11])),
    ok("pingreq_v5", "c0 00", 5, PingReq()),
    ok("pingresp_v5", "d0 00", 5, PingResp()),
    ok("disconnect_v5_short_form", "e0 00", 5, Disconnect()),
    ok("disconnect_v5_reason_only", "e0 01 04", 5, Disconnect(4)),
    ok(
        "disconnect_v5_explicit_success_no_properties",
        "e0 02 00 00",
        5,
        Disconnect(),
        canonical=False,
    ),
    ok(
        "disconnect_v5_server_reference",
        "e0 0c 9c 0a 1c 00 01 73 1f 00 03 62 79 65",
        5,
        Disconnect(0x9C, Properties(server_reference="s", reason_string="bye")),
    ),
    ok("auth_v5_short_form", "f0 00", 5, Auth()),
    ok(
        "auth_v5_continue",
        "f0 0e 18 0c 15 00 05 53 43 52 41 4d 16 00 01 01",
        5,
        Auth(0x18, Properties(authentication_method="SCRAM", authentication_data=b"\x01")),
    ),
]

# --------------------------------------------------------------------- errors, both versions
_MIN_CONNECT_TAIL = "00 3c 00 01 63"  # keep alive 60, client id "c" (3.1.1 layout)

ERRORS = [
    # Fixed header and framing
    bad(
        "mqtt_1_5_5_1_remaining_length_five_bytes", "30 80 80 80 80 01", 4, M, 0x81, "MQTT-1.5.5-1"
    ),
    bad("mqtt_1_5_5_1_remaining_length_overlong", "c0 80 00", 5, M, 0x81, "MQTT-1.5.5-1"),
    bad("reserved_packet_type_0_v4", "00 00", 4, M, 0x81, "MQTT 3.1.1 §2.2.1"),
    bad("auth_is_reserved_in_v4", "f0 00", 4, M, 0x81, "MQTT 3.1.1 §2.2.1"),
    bad("mqtt_2_2_2_2_puback_flags_v4", "41 02 00 01", 4, M, 0x81, "MQTT-2.2.2-2"),
    bad("mqtt_2_1_3_1_puback_flags_v5", "41 02 00 01", 5, M, 0x81, "MQTT-2.1.3-1"),
    bad("mqtt_2_2_2_2_pingreq_flags_v4", "c1 00", 4, M, 0x81, "MQTT-2.2.2-2"),
    bad("mqtt_3_6_1_1_pubrel_flags_v4", "60 02 00 01", 4, M, 0x81, "MQTT-3.6.1-1"),
    bad("mqtt_3_6_1_1_pubrel_flags_v5", "60 02 00 01", 5, M, 0x81, "MQTT-3.6.1-1"),
    bad("mqtt_3_8_1_1_subscribe_flags_v4", "80 06 00 01 00 01 61 00", 4, M, 0x81, "MQTT-3.8.1-1"),
    bad("mqtt_3_10_1_1_unsubscribe_flags_v4", "a0 05 00 01 00 01 61", 4, M, 0x81, "MQTT-3.10.1-1"),
    bad("mqtt_3_14_1_1_disconnect_flags_v5", "e1 00", 5, M, 0x81, "MQTT-3.14.1-1"),
    bad("mqtt_3_15_1_1_auth_flags_v5", "f1 00", 5, M, 0x81, "MQTT-3.15.1-1"),
    # PUBLISH
    bad("mqtt_3_3_1_4_publish_qos_3_v4", "36 06 00 01 74 00 01 78", 4, M, 0x81, "MQTT-3.3.1-4"),
    bad("mqtt_3_3_1_4_publish_qos_3_v5", "36 07 00 01 74 00 01 00 78", 5, M, 0x81, "MQTT-3.3.1-4"),
    bad("mqtt_3_3_1_2_publish_dup_qos_0_v4", "38 04 00 01 74 78", 4, P, 0x82, "MQTT-3.3.1-2"),
    bad("mqtt_3_3_1_2_publish_dup_qos_0_v5", "38 05 00 01 74 00 78", 5, P, 0x82, "MQTT-3.3.1-2"),
    bad("mqtt_2_3_1_1_publish_packet_id_0_v4", "32 05 00 01 74 00 00", 4, P, 0x82, "MQTT-2.3.1-1"),
    bad(
        "mqtt_2_2_1_3_publish_packet_id_0_v5", "32 06 00 01 74 00 00 00", 5, P, 0x82, "MQTT-2.2.1-3"
    ),
    bad(
        "mqtt_1_5_3_1_publish_topic_ill_formed_utf8_v4",
        "30 04 00 02 c3 28",
        4,
        M,
        0x81,
        "MQTT-1.5.3-1",
    ),
    bad(
        "mqtt_1_5_3_1_publish_topic_surrogate_v4",
        "30 05 00 03 ed a0 80",
        4,
        M,
        0x81,
        "MQTT-1.5.3-1",
    ),
    bad(
        "mqtt_1_5_4_1_publish_topic_ill_formed_utf8_v5",
        "30 05 00 02 c3 28 00",
        5,
        M,
        0x81,
        "MQTT-1.5.4-1",
    ),
    bad("mqtt_1_5_3_2_publish_topic_nul_v4", "30 05 00 03 61 00 62", 4, M, 0x81, "MQTT-1.5.3-2"),
    bad("mqtt_1_5_4_2_publish_topic_nul_v5", "30 06 00 03 61 00 62 00", 5, M, 0x81, "MQTT-1.5.4-2"),
    bad("publish_topic_runs_past_body_v4", "30 03 00 05 61", 4, M, 0x81, "MQTT-3.3.2-1"),
    bad("publish_v5_missing_property_length", "30 03 00 01 74", 5, M, 0x81, ""),
    # CONNECT
    bad(
        "mqtt_3_1_2_1_connect_bad_protocol_name",
        "10 0d 00 04 4d 51 54 58 04 02 00 3c 00 01 63",
        4,
        M,
        0x81,
        "MQTT-3.1.2-1",
    ),
    bad(
        "mqtt_3_1_2_2_connect_mqisdp_level_4",
        "10 0f 00 06 4d 51 49 73 64 70 04 02 00 3c 00 01 63",
        4,
        U,
        0x84,
        "MQTT-3.1.2-2",
    ),
    bad(
        "mqtt_3_1_2_2_connect_level_3_with_mqtt_name",
        f"10 0d {MQTT} 03 02 {_MIN_CONNECT_TAIL}",
        4,
        U,
        0x84,
        "MQTT-3.1.2-2",
    ),
    bad(
        "mqtt_3_1_2_2_connect_level_6",
        f"10 0d {MQTT} 06 02 {_MIN_CONNECT_TAIL}",
        5,
        U,
        0x84,
        "MQTT-3.1.2-2",
    ),
    bad(
        "mqtt_3_1_2_3_connect_reserved_flag_v4",
        f"10 0d {MQTT} 04 03 {_MIN_CONNECT_TAIL}",
        4,
        M,
        0x81,
        "MQTT-3.1.2-3",
    ),
    bad(
        "mqtt_3_1_2_3_connect_reserved_flag_v5",
        f"10 0e {MQTT} 05 03 00 3c 00 00 01 63",
        5,
        M,
        0x81,
        "MQTT-3.1.2-3",
    ),
    bad(
        "mqtt_3_1_2_13_connect_will_qos_without_will_v4",
        f"10 0d {MQTT} 04 0a {_MIN_CONNECT_TAIL}",
        4,
        M,
        0x81,
        "MQTT-3.1.2-13",
    ),
    bad(
        "mqtt_3_1_2_11_connect_will_qos_without_will_v5",
        f"10 0e {MQTT} 05 0a 00 3c 00 00 01 63",
        5,
        M,
        0x81,
        "MQTT-3.1.2-11",
    ),
    bad(
        "mqtt_3_1_2_15_connect_will_retain_without_will_v4",
        f"10 0d {MQTT} 04 22 {_MIN_CONNECT_TAIL}",
        4,
        M,
        0x81,
        "MQTT-3.1.2-15",
    ),
    bad(
        "mqtt_3_1_2_13_connect_will_retain_without_will_v5",
        f"10 0e {MQTT} 05 22 00 3c 00 00 01 63",
        5,
        M,
        0x81,
        "MQTT-3.1.2-13",
    ),
    bad(
        "mqtt_3_1_2_14_connect_will_qos_3_v4",
        f"10 0d {MQTT} 04 1e {_MIN_CONNECT_TAIL}",
        4,
        M,
        0x81,
        "MQTT-3.1.2-14",
    ),
    bad(
        "mqtt_3_1_2_12_connect_will_qos_3_v5",
        f"10 0e {MQTT} 05 1e 00 3c 00 00 01 63",
        5,
        M,
        0x81,
        "MQTT-3.1.2-12",
    ),
    bad(
        "mqtt_3_1_2_22_connect_password_without_username_v4",
        f"10 11 {MQTT} 04 42 {_MIN_CONNECT_TAIL} 00 02 70 77",
        4,
        M,
        0x81,
        "MQTT-3.1.2-22",
    ),
    bad(
        "mqtt_1_5_3_1_connect_client_id_ill_formed_v4",
        f"10 0d {MQTT} 04 02 00 3c 00 01 ff",
        4,
        M,
        0x81,
        "MQTT-1.5.3-1",
    ),
    bad(
        "mqtt_1_5_4_2_connect_username_nul_v5",
        f"10 12 {MQTT} 05 82 00 3c 00 00 01 63 00 02 61 00",
        5,
        M,
        0x81,
        "MQTT-1.5.4-2",
    ),
    bad(
        "connect_v4_trailing_byte",
        f"10 0e {MQTT} 04 02 {_MIN_CONNECT_TAIL} 00",
        4,
        M,
        0x81,
        "MQTT 3.1.1 §2.2.3",
    ),
    bad("connect_v4_username_missing", f"10 0d {MQTT} 04 82 {_MIN_CONNECT_TAIL}", 4, M, 0x81, ""),
    bad(
        "connect_v5_receive_maximum_0",
        f"10 11 {MQTT} 05 02 00 3c 03 21 00 00 00 01 63",
        5,
        P,
        0x82,
        "MQTT 5.0 §3.1.2.11.3",
    ),
    bad(
        "connect_v5_maximum_packet_size_0",
        f"10 13 {MQTT} 05 02 00 3c 05 27 00 00 00 00 00 01 63",
        5,
        P,
        0x82,
        "MQTT 5.0 §3.1.2.11.4",
    ),
    bad(
        "connect_v5_request_problem_information_2",
        f"10 10 {MQTT} 05 02 00 3c 02 17 02 00 01 63",
        5,
        P,
        0x82,
        "MQTT 5.0 §3.1.2.11.7",
    ),
    bad(
        "connect_v5_session_expiry_in_will_properties",
        f"10 19 {MQTT} 05 06 00 3c 00 00 01 63 05 11 00 00 00 01 00 01 77 00 00",
        5,
        M,
        0x81,
        "MQTT 5.0 §2.2.2.2",
    ),
    # CONNACK
    bad("mqtt_3_2_2_1_connack_v5_reserved_flags", "20 03 02 00 00", 5, M, 0x81, "MQTT-3.2.2-1"),
    bad("connack_v4_trailing_byte", "20 03 00 00 00", 4, M, 0x81, "MQTT 3.1.1 §2.2.3"),
    # acks
    bad("mqtt_2_2_1_3_puback_packet_id_0_v5", "40 02 00 00", 5, P, 0x82, "MQTT-2.2.1-3"),
    bad("puback_v4_trailing_byte", "40 03 00 01 00", 4, M, 0x81, "MQTT 3.1.1 §2.2.3"),
    bad("puback_too_short", "40 01 00", 5, M, 0x81, ""),
    bad("puback_v5_unknown_property", "40 06 00 01 00 02 7f 00", 5, M, 0x81, "MQTT 5.0 §2.2.2.2"),
    bad(
        "puback_v5_property_not_allowed",
        "40 07 00 01 00 03 23 00 01",
        5,
        M,
        0x81,
        "MQTT 5.0 §2.2.2.2",
    ),
    bad(
        "puback_v5_property_length_past_end",
        "40 05 00 01 00 05 1f",
        5,
        M,
        0x81,
        "MQTT 5.0 §2.2.2.1",
    ),
    bad(
        "puback_v5_duplicate_reason_string",
        "40 0c 00 01 80 08 1f 00 01 61 1f 00 01 62",
        5,
        P,
        0x82,
        "MQTT 5.0 §3.2.2.3.9",
    ),
    # properties (PUBLISH)
    bad(
        "publish_v5_duplicate_message_expiry",
        "30 0e 00 01 74 0a 02 00 00 00 01 02 00 00 00 02",
        5,
        P,
        0x82,
        "MQTT 5.0 §3.3.2.3.3",
    ),
    bad(
        "publish_v5_payload_format_indicator_2",
        "30 06 00 01 74 02 01 02",
        5,
        P,
        0x82,
        "MQTT 5.0 §3.3.2.3.2",
    ),
    bad(
        "mqtt_3_3_2_8_publish_v5_topic_alias_0",
        "30 07 00 01 74 03 23 00 00",
        5,
        P,
        0x94,
        "MQTT-3.3.2-8",
    ),
    bad(
        "publish_v5_property_value_past_property_length",
        "30 0a 00 01 74 02 02 00 00 00 00 00",
        5,
        M,
        0x81,
        "MQTT 5.0 §2.2.2.1",
    ),
    bad(
        "mqtt_1_5_5_1_publish_v5_property_length_overlong",
        "30 06 00 01 74 80 00 78",
        5,
        M,
        0x81,
        "MQTT-1.5.5-1",
    ),
    bad(
        "mqtt_1_5_4_1_publish_v5_user_property_ill_formed",
        "30 0c 00 01 74 07 26 00 01 61 00 01 ff 78",
        5,
        M,
        0x81,
        "MQTT-1.5.4-1",
    ),
    bad(
        "publish_v5_subscription_identifier_0",
        "30 06 00 01 74 02 0b 00",
        5,
        P,
        0x82,
        "MQTT 5.0 §3.8.2.1.2",
    ),
    # SUBSCRIBE / SUBACK
    bad("mqtt_3_8_3_3_subscribe_no_filters_v4", "82 02 00 01", 4, P, 0x82, "MQTT-3.8.3-3"),
    bad("mqtt_3_8_3_2_subscribe_no_filters_v5", "82 03 00 01 00", 5, P, 0x82, "MQTT-3.8.3-2"),
    bad(
        "mqtt_2_3_1_1_subscribe_packet_id_0_v4",
        "82 06 00 00 00 01 61 00",
        4,
        P,
        0x82,
        "MQTT-2.3.1-1",
    ),
    bad(
        "mqtt_3_8_3_4_subscribe_reserved_bits_v4",
        "82 06 00 01 00 01 61 04",
        4,
        M,
        0x81,
        "MQTT-3.8.3-4",
    ),
    bad("mqtt_3_8_3_4_subscribe_qos_3_v4", "82 06 00 01 00 01 61 03", 4, M, 0x81, "MQTT-3.8.3-4"),
    bad(
        "mqtt_3_8_3_5_subscribe_reserved_bits_v5",
        "82 07 00 01 00 00 01 61 40",
        5,
        M,
        0x81,
        "MQTT-3.8.3-5",
    ),
    bad(
        "subscribe_v5_retain_handling_3",
        "82 07 00 01 00 00 01 61 30",
        5,
        P,
        0x82,
        "MQTT 5.0 §3.8.3.1",
    ),
    bad("subscribe_v5_qos_3", "82 07 00 01 00 00 01 61 03", 5, P, 0x82, "MQTT 5.0 §3.8.3.1"),
    bad(
        "subscribe_v5_two_subscription_identifiers",
        "82 0b 00 01 04 0b 01 0b 02 00 01 61 00",
        5,
        P,
        0x82,
        "MQTT 5.0 §3.8.2.1.2",
    ),
    bad(
        "subscribe_v5_subscription_identifier_0",
        "82 09 00 01 02 0b 00 00 01 61 00",
        5,
        P,
        0x82,
        "MQTT 5.0 §3.8.2.1.2",
    ),
    bad("subscribe_v4_options_byte_missing", "82 05 00 01 00 01 61", 4, M, 0x81, ""),
    bad(
        "mqtt_3_9_3_2_suback_v4_reserved_return_code", "90 03 00 01 03", 4, M, 0x81, "MQTT-3.9.3-2"
    ),
    # UNSUBSCRIBE / UNSUBACK
    bad("mqtt_3_10_3_2_unsubscribe_no_filters_v4", "a2 02 00 01", 4, P, 0x82, "MQTT-3.10.3-2"),
    bad("mqtt_3_10_3_2_unsubscribe_no_filters_v5", "a2 03 00 01 00", 5, P, 0x82, "MQTT-3.10.3-2"),
    bad("unsuback_v4_trailing_byte", "b0 03 00 01 00", 4, M, 0x81, "MQTT 3.1.1 §2.2.3"),
    # PINGREQ / DISCONNECT
    bad("pingreq_with_body", "c0 01 00", 4, M, 0x81, "MQTT 3.1.1 §2.2.3"),
    bad("disconnect_v4_with_body", "e0 01 00", 4, M, 0x81, "MQTT 3.1.1 §2.2.3"),
    bad("disconnect_v5_trailing_after_properties", "e0 03 00 00 00", 5, M, 0x81, "MQTT 5.0 §2.1.4"),
]

VALID = V4_VALID + V5_VALID
ALL = VALID + ERRORS
