"""MQTT 5.0 enhanced authentication (§4.12, §4.12.1, §3.15) with SCRAM-SHA-256, on the wire.

The broker has a password file written with the Python API (PBKDF2 hash + SCRAM keys);
the client side of SCRAM (RFC 5802 / RFC 7677) is implemented here with hashlib/hmac.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from iotbroker.auth.passwords import hash_password, set_password
from iotbroker.codec.packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    Properties,
    Publish,
)
from iotbroker.codec.primitives import encode_varint
from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import RawClient

METHOD = "SCRAM-SHA-256"


class ScramClient:
    """Client side of one SCRAM-SHA-256 exchange (RFC 5802 §3), hashlib/hmac only."""

    def __init__(self, user: str, password: str) -> None:
        self.password = password.encode()
        self.nonce = secrets.token_urlsafe(18)
        self.bare = f"n={user},r={self.nonce}".encode()
        self.auth_message = b""
        self.server_key = b""

    def first(self) -> bytes:
        return b"n,," + self.bare

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(item.split(b"=", 1) for item in server_first.split(b","))
        assert attrs[b"r"].startswith(self.nonce.encode())
        assert len(attrs[b"r"]) > len(self.nonce)
        salted = hashlib.pbkdf2_hmac("sha256", self.password, base64.b64decode(attrs[b"s"]),
                                     int(attrs[b"i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        self.server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        without_proof = b"c=biws,r=" + attrs[b"r"]
        self.auth_message = self.bare + b"," + server_first + b"," + without_proof
        signature = hmac.new(stored_key, self.auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify(self, server_final: bytes | None) -> None:
        """The server proved it knows the user's ServerKey (RFC 5802 §3)."""
        expected = hmac.new(self.server_key, self.auth_message, hashlib.sha256).digest()
        assert server_final == b"v=" + base64.b64encode(expected)


@pytest.fixture
def scram_broker(make_broker: Callable[..., BrokerProcess], tmp_path: Path) -> BrokerProcess:
    pwfile = tmp_path / "passwd"
    set_password(str(pwfile), "alice", "wonderland", 1000)
    set_password(str(pwfile), "bob", "builder", 1000)
    # A line in the format of earlier versions: a password hash, no SCRAM keys.
    with open(pwfile, "a") as f:
        f.write(f"legacy:{hash_password(b'old-secret', 1000)}\n")
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite alice/#\n\nuser bob\ntopic readwrite bob/#\n")
    return make_broker(config_text=broker_config(extra=(
        f"auth:\n  allow_anonymous: false\n  password_file: {pwfile}\n  acl_file: {acl}\n"
        "mqtt:\n  connect_timeout: 1s\n"
    )))


def _client(broker: BrokerProcess) -> RawClient:
    return RawClient(broker.host, broker.port, version=5, timeout=3.0)


def _auth_props(data: bytes | None, method: str = METHOD) -> Properties:
    return Properties(authentication_method=method, authentication_data=data)


def _start(client: RawClient, scram: ScramClient, client_id: str, **kwargs: object) -> Auth:
    """CONNECT with client-first; return the server's AUTH 0x18 (server-first)."""
    client.send(Connect(client_id=client_id, protocol_version=5,
                        properties=_auth_props(scram.first()), **kwargs))  # type: ignore[arg-type]
    auth = client.expect(Auth)
    assert auth.reason_code == 0x18  # [MQTT-4.12.0-2]
    assert auth.properties.authentication_method == METHOD  # [MQTT-4.12.0-5]
    assert auth.properties.authentication_data is not None
    return auth


def _scram_connect(client: RawClient, user: str, password: str, client_id: str) -> ConnAck:
    scram = ScramClient(user, password)
    auth = _start(client, scram, client_id)
    assert auth.properties.authentication_data is not None
    client.send(Auth(0x18, _auth_props(scram.final(auth.properties.authentication_data))))
    ack = client.expect(ConnAck)
    if ack.reason_code == 0:
        scram.verify(ack.properties.authentication_data)
    return ack


def _ping(client: RawClient) -> None:
    client.send(PingReq())
    client.expect(PingResp)


# ------------------------------------------------------------------- CONNECT


def test_mqtt_4_12_0_2_and_4_12_0_5_scram_exchange_connack_carries_method_and_data(
    scram_broker: BrokerProcess,
) -> None:
    """[MQTT-4.12.0-2] the server continues with AUTH 0x18; [MQTT-4.12.0-5] the AUTH and
    the successful CONNACK carry the CONNECT's Authentication Method; the CONNACK's
    Authentication Data is SCRAM's server-final message, which proves the server."""
    with _client(scram_broker) as client:
        scram = ScramClient("alice", "wonderland")
        auth = _start(client, scram, "scram-ok")
        assert auth.properties.authentication_data is not None
        assert auth.properties.authentication_data.startswith(b"r=" + scram.nonce.encode())
        client.send(Auth(0x18, _auth_props(scram.final(auth.properties.authentication_data))))
        ack = client.expect(ConnAck)
        assert ack.reason_code == 0
        assert ack.properties.authentication_method == METHOD
        scram.verify(ack.properties.authentication_data)
        _ping(client)
        # The session's username is the SCRAM identity: alice's ACL applies.
        assert client.subscribe("alice/t", 1).reason_codes == [1]
        assert client.subscribe("bob/t", 1).reason_codes == [0x87]
        client.publish("alice/t", b"hello", 0)
        assert client.receive_publish().payload == b"hello"
        client.disconnect()


def test_mqtt_4_12_0_2_connect_without_initial_data(scram_broker: BrokerProcess) -> None:
    """[MQTT-4.12.0-2]: a CONNECT with the method but no data gets an empty AUTH 0x18
    challenge; client-first then travels in the client's first AUTH 0x18."""
    with _client(scram_broker) as client:
        scram = ScramClient("bob", "builder")
        client.send(Connect(client_id="scram-nodata", protocol_version=5,
                            properties=_auth_props(None)))
        auth = client.expect(Auth)
        assert auth.reason_code == 0x18
        assert auth.properties.authentication_method == METHOD
        assert not auth.properties.authentication_data
        client.send(Auth(0x18, _auth_props(scram.first())))
        auth = client.expect(Auth)
        assert auth.reason_code == 0x18 and auth.properties.authentication_data
        client.send(Auth(0x18, _auth_props(scram.final(auth.properties.authentication_data))))
        ack = client.expect(ConnAck)
        assert ack.reason_code == 0
        scram.verify(ack.properties.authentication_data)


def test_mqtt_4_12_0_6_password_connect_still_works(scram_broker: BrokerProcess) -> None:
    """[MQTT-4.12.0-6]: the same user can connect with a password and no method; then
    the server sends no AUTH and no Authentication Method in the CONNACK."""
    with _client(scram_broker) as client:
        ack = client.connect("pw-ok", username="alice", password=b"wonderland")
        assert ack.reason_code == 0
        assert ack.properties.authentication_method is None
        assert ack.properties.authentication_data is None
        _ping(client)


def test_mqtt_4_12_0_4_bad_proof_connack_0x86_and_close(scram_broker: BrokerProcess) -> None:
    """[MQTT-4.12.0-4]: a wrong password fails at the proof: CONNACK 0x86, then close."""
    with _client(scram_broker) as client:
        ack = _scram_connect(client, "alice", "not-the-password", "scram-bad")
        assert ack.reason_code == 0x86
        assert ack.properties.authentication_method is None
        assert client.expect_closed(3.0) == []


@pytest.mark.parametrize("user", ["nobody", "legacy"])
def test_mqtt_4_12_0_4_unknown_user_fails_like_a_wrong_password(
    scram_broker: BrokerProcess, user: str
) -> None:
    """[MQTT-4.12.0-4]: an unknown user (or one whose line has no SCRAM keys) gets a
    normal-looking server-first message and fails only at the proof, with 0x86."""
    with _client(scram_broker) as client:
        scram = ScramClient(user, "old-secret")
        auth = _start(client, scram, f"scram-{user}")
        data = auth.properties.authentication_data
        assert data is not None
        parts = data.split(b",")
        assert parts[0].startswith(b"r=") and parts[1].startswith(b"s=")
        assert parts[2] == b"i=4096"
        client.send(Auth(0x18, _auth_props(scram.final(data))))
        ack = client.expect(ConnAck)
        assert ack.reason_code == 0x86
        client.expect_closed(3.0)


def test_mqtt_4_12_0_4_malformed_scram_message_refused(scram_broker: BrokerProcess) -> None:
    """[MQTT-4.12.0-4]: a client-first message that is not SCRAM: CONNACK 0x87, close."""
    with _client(scram_broker) as client:
        client.send(Connect(client_id="scram-garbage", protocol_version=5,
                            properties=_auth_props(b"p=tls-unique,,n=alice,r=x")))
        ack = client.expect(ConnAck)
        assert ack.reason_code == 0x87
        client.expect_closed(3.0)


def test_mqtt_4_12_0_4_connect_username_must_match(scram_broker: BrokerProcess) -> None:
    """[MQTT-4.12.0-4]: a CONNECT User Name other than the SCRAM identity is refused (0x86)."""
    with _client(scram_broker) as client:
        scram = ScramClient("alice", "wonderland")
        auth = _start(client, scram, "scram-mismatch", username="bob")
        assert auth.properties.authentication_data is not None
        client.send(Auth(0x18, _auth_props(scram.final(auth.properties.authentication_data))))
        assert client.expect(ConnAck).reason_code == 0x86
        client.expect_closed(3.0)


@pytest.mark.parametrize("method", ["PLAIN", "SCRAM-SHA-1", "scram-sha-256"])
def test_mqtt_4_12_0_1_unsupported_method_connack_0x8c(
    scram_broker: BrokerProcess, method: str
) -> None:
    """[MQTT-4.12.0-1]: an Authentication Method the server does not support: CONNACK
    0x8C Bad authentication method, then close (names are case-sensitive)."""
    with _client(scram_broker) as client:
        client.send(Connect(client_id="m", protocol_version=5,
                            properties=_auth_props(b"n,,n=alice,r=abc", method)))
        ack = client.expect(ConnAck)
        assert ack.reason_code == 0x8C
        client.expect_closed(3.0)


def test_mqtt_4_12_0_1_no_password_file_no_scram(
    make_broker: Callable[..., BrokerProcess],
) -> None:
    """[MQTT-4.12.0-1]: without a password file SCRAM-SHA-256 is not offered: 0x8C."""
    broker = make_broker(config_text=broker_config(), name="nopw")
    with _client(broker) as client:
        client.send(Connect(client_id="m", protocol_version=5,
                            properties=_auth_props(ScramClient("a", "b").first())))
        assert client.expect(ConnAck).reason_code == 0x8C
        client.expect_closed(3.0)


# ----------------------------------------------- packet order during the exchange


@pytest.mark.parametrize(
    "packet",
    [PingReq(), Publish(topic="alice/t", payload=b"sneaky")],
    ids=["PINGREQ", "PUBLISH"],
)
def test_mqtt_3_1_2_30_only_auth_before_connack(
    scram_broker: BrokerProcess, packet: PingReq | Publish
) -> None:
    """[MQTT-3.1.2-30]: after a CONNECT with an Authentication Method the client may send
    only AUTH or DISCONNECT until CONNACK; anything else is a protocol error (CONNACK
    0x82, close) and is not acted on."""
    with _client(scram_broker) as watcher:
        assert watcher.connect("w", username="alice", password=b"wonderland").reason_code == 0
        watcher.subscribe("alice/t", 0)
        with _client(scram_broker) as client:
            _start(client, ScramClient("alice", "wonderland"), "scram-order")
            client.send(packet)
            packets = client.expect_closed(3.0)
            assert len(packets) == 1 and isinstance(packets[0], ConnAck), packets
            assert packets[0].reason_code == 0x82
        watcher.nothing(0.3)


def test_mqtt_3_1_2_30_disconnect_during_exchange_closes(scram_broker: BrokerProcess) -> None:
    """[MQTT-3.1.2-30]: DISCONNECT is allowed during the exchange: the server closes
    without a CONNACK."""
    with _client(scram_broker) as client:
        _start(client, ScramClient("alice", "wonderland"), "scram-bye")
        client.send(Disconnect())
        assert client.expect_closed(3.0) == []


@pytest.mark.parametrize("reason", [0x00, 0x19])
def test_mqtt_4_12_0_3_client_auth_must_be_continue(
    scram_broker: BrokerProcess, reason: int
) -> None:
    """[MQTT-4.12.0-3]: the client's AUTH during authentication must use reason 0x18;
    anything else is a protocol error: CONNACK 0x82, close."""
    with _client(scram_broker) as client:
        scram = ScramClient("alice", "wonderland")
        auth = _start(client, scram, "scram-reason")
        assert auth.properties.authentication_data is not None
        client.send(Auth(reason, _auth_props(scram.final(auth.properties.authentication_data))))
        assert client.expect(ConnAck).reason_code == 0x82
        client.expect_closed(3.0)


def test_mqtt_4_12_0_5_auth_with_another_method_refused(scram_broker: BrokerProcess) -> None:
    """[MQTT-4.12.0-5]: every AUTH repeats the CONNECT's method; another one is refused
    with CONNACK 0x8C Bad authentication method, then close."""
    with _client(scram_broker) as client:
        scram = ScramClient("alice", "wonderland")
        auth = _start(client, scram, "scram-other")
        assert auth.properties.authentication_data is not None
        final = scram.final(auth.properties.authentication_data)
        client.send(Auth(0x18, _auth_props(final, "SCRAM-SHA-512")))
        assert client.expect(ConnAck).reason_code == 0x8C
        client.expect_closed(3.0)


def test_stalled_exchange_closed_by_connect_timeout(scram_broker: BrokerProcess) -> None:
    """A client that never finishes the exchange is closed after mqtt.connect_timeout."""
    with _client(scram_broker) as client:
        _start(client, ScramClient("alice", "wonderland"), "scram-stall")
        assert client.expect_closed(4.0) == []


def test_mqtt_4_12_0_7_auth_without_method_in_connect(scram_broker: BrokerProcess) -> None:
    """[MQTT-4.12.0-7]: a client whose CONNECT had no Authentication Method must not send
    AUTH; the server closes with DISCONNECT 0x82 Protocol Error."""
    with _client(scram_broker) as client:
        assert client.connect("pw-auth", username="alice", password=b"wonderland").reason_code == 0
        client.send(Auth(0x19, _auth_props(b"n,,n=alice,r=abc")))
        packets = client.expect_closed(3.0)
        assert [type(p) for p in packets] == [Disconnect]
        assert packets[0].reason_code == 0x82  # type: ignore[union-attr]


# ---------------------------------------------------------- re-authentication


def _reauth(client: RawClient, user: str, password: str, method: str = METHOD) -> Auth:
    """AUTH 0x19 with client-first ... the server's last AUTH (0x00) is returned."""
    scram = ScramClient(user, password)
    client.send(Auth(0x19, _auth_props(scram.first(), method)))
    auth = client.expect(Auth)
    assert auth.reason_code == 0x18  # [MQTT-4.12.0-2]
    assert auth.properties.authentication_method == METHOD  # [MQTT-4.12.0-5]
    assert auth.properties.authentication_data is not None
    _ping(client)  # other packets may flow during re-authentication (§4.12.1)
    client.send(Auth(0x18, _auth_props(scram.final(auth.properties.authentication_data))))
    done = client.expect(Auth)
    if done.reason_code == 0:
        assert done.properties.authentication_method == METHOD
        scram.verify(done.properties.authentication_data)
    return done


def test_mqtt_4_12_1_1_reauthentication_success(scram_broker: BrokerProcess) -> None:
    """[MQTT-4.12.1-1]: AUTH 0x19 with the original method starts re-authentication; it
    ends with AUTH 0x00 Success carrying the method and server-final; the connection
    and its session carry on."""
    with _client(scram_broker) as client:
        assert _scram_connect(client, "alice", "wonderland", "reauth-ok").reason_code == 0
        client.subscribe("alice/r", 1)
        assert _reauth(client, "alice", "wonderland").reason_code == 0
        assert _reauth(client, "alice", "wonderland").reason_code == 0  # and again
        client.publish("alice/r", b"still here", 0)
        assert client.receive_publish().payload == b"still here"


def test_mqtt_4_12_1_1_reauthentication_with_another_method(scram_broker: BrokerProcess) -> None:
    """[MQTT-4.12.1-1]: re-authentication must use the method used at CONNECT; another
    one closes the connection with DISCONNECT 0x8C Bad authentication method."""
    with _client(scram_broker) as client:
        assert _scram_connect(client, "alice", "wonderland", "reauth-m").reason_code == 0
        client.send(Auth(0x19, _auth_props(b"n,,n=alice,r=abc", "PLAIN")))
        packets = client.expect_closed(3.0)
        assert [type(p) for p in packets] == [Disconnect]
        assert packets[0].reason_code == 0x8C  # type: ignore[union-attr]


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("bob", "builder")],
                         ids=["bad-proof", "other-user"])
def test_mqtt_4_12_1_2_failed_reauthentication_disconnects(
    scram_broker: BrokerProcess, user: str, password: str
) -> None:
    """[MQTT-4.12.1-2]: failed re-authentication (a wrong password, or proving another
    user than the connection's) ends with DISCONNECT 0x87 Not authorized and a close."""
    with _client(scram_broker) as client:
        assert _scram_connect(client, "alice", "wonderland", "reauth-bad").reason_code == 0
        scram = ScramClient(user, password)
        client.send(Auth(0x19, _auth_props(scram.first())))
        auth = client.expect(Auth)
        assert auth.properties.authentication_data is not None
        client.send(Auth(0x18, _auth_props(scram.final(auth.properties.authentication_data))))
        packets = client.expect_closed(3.0)
        assert [type(p) for p in packets] == [Disconnect]
        assert packets[0].reason_code == 0x87  # type: ignore[union-attr]


def test_mqtt_4_12_0_3_reauth_continue_without_start_is_protocol_error(
    scram_broker: BrokerProcess,
) -> None:
    """[MQTT-4.12.0-3] area: an AUTH 0x18 with no re-authentication in progress is a
    protocol error: DISCONNECT 0x82."""
    with _client(scram_broker) as client:
        assert _scram_connect(client, "alice", "wonderland", "reauth-18").reason_code == 0
        client.send(Auth(0x18, _auth_props(b"c=biws,r=x,p=AAAA")))
        packets = client.expect_closed(3.0)
        assert [type(p) for p in packets] == [Disconnect]
        assert packets[0].reason_code == 0x82  # type: ignore[union-attr]


def test_mqtt_3_15_2_1_to_3_every_auth_the_broker_sends(scram_broker: BrokerProcess) -> None:
    """[MQTT-3.15.2-1]: every AUTH the broker sends uses a defined Authenticate Reason
    Code (0x00 Success, 0x18 Continue authentication; 0x19 is the client's).
    [MQTT-3.15.2-2] / [MQTT-3.15.2-3]: a Reason String or User Property that would take
    an AUTH past the client's Maximum Packet Size is left out: the client announces 256
    bytes; over a SCRAM CONNECT and two re-authentications no packet from the broker is
    larger, and its AUTH packets carry neither."""
    with _client(scram_broker) as client:
        scram = ScramClient("alice", "wonderland")
        client.send(Connect(client_id="auth-codes", protocol_version=5,
                            properties=Properties(authentication_method=METHOD,
                                                  authentication_data=scram.first(),
                                                  maximum_packet_size=256)))
        auths = [client.expect(Auth)]
        assert auths[0].properties.authentication_data is not None
        client.send(Auth(0x18, _auth_props(scram.final(auths[0].properties.authentication_data))))
        assert client.expect(ConnAck).reason_code == 0
        for _ in range(2):
            scram = ScramClient("alice", "wonderland")
            client.send(Auth(0x19, _auth_props(scram.first())))
            auths.append(client.expect(Auth))
            data = auths[-1].properties.authentication_data
            assert data is not None
            client.send(Auth(0x18, _auth_props(scram.final(data))))
            auths.append(client.expect(Auth))
        assert [a.reason_code for a in auths] == [0x18, 0x18, 0x00, 0x18, 0x00]
        for auth in auths:
            assert auth.properties.reason_string is None, auth
            assert not auth.properties.user_properties, auth
        sizes = [(first, 1 + len(encode_varint(len(body))) + len(body))
                 for first, body in client.frames]
        assert len([first for first, _ in sizes if first == 0xF0]) == 5, sizes
        assert max(size for _, size in sizes) <= 256, sizes
        _ping(client)
