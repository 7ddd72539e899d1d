"""MQTT 5.0 enhanced authentication on the wire (§4.12, §4.12.1, §3.15).

Holds each connection's exchange state and turns :class:`~iotbroker.auth.enhanced.AuthStep`
answers into packets. The server's connect path calls it from ``on_connect`` (CONNECT with an
Authentication Method), from the AUTH branch of ``handle_packet``, for any other
packet that arrives before CONNACK, and from ``connection_lost``.

Rules enforced here:

* unsupported Authentication Method: CONNACK 0x8C, close [MQTT-4.12.0-1];
* the server asks for more data with AUTH 0x18 [MQTT-4.12.0-2]; the client must
  answer with AUTH 0x18 [MQTT-4.12.0-3]; every AUTH and the successful CONNACK carry
  the CONNECT's Authentication Method [MQTT-4.12.0-5] (an AUTH with another method
  closes the connection with 0x8C Bad authentication method);
* until CONNACK the client may send only AUTH or DISCONNECT [MQTT-3.1.2-30]; anything
  else closes the connection (CONNACK 0x82); DISCONNECT just closes it;
* failure: CONNACK 0x86/0x87, close [MQTT-4.12.0-4];
* AUTH from a client whose CONNECT had no Authentication Method is a protocol error
  [MQTT-4.12.0-7];
* re-authentication: AUTH 0x19 with the original method [MQTT-4.12.1-1] starts a
  new exchange; success is AUTH 0x00; failure (also proving a different username than
  the connection's) is DISCONNECT 0x87 and close [MQTT-4.12.1-2]. Other packets may
  flow meanwhile (§4.12.1).

The CONNECT stays pending here during the exchange; when it ends, :meth:`on_auth`
returns it and the broker runs ``on_connect`` again, which then gets the outcome from
:meth:`on_connect`. A client that never finishes is closed by the connect timeout
(``mqtt.connect_timeout``), as one that never sends CONNECT.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from iotbroker.auth.enhanced import (
    AuthStep,
    EnhancedAuthenticator,
    EnhancedAuthRegistry,
    StepKind,
    build_registry,
)
from iotbroker.auth.passwords import PasswordFile
from iotbroker.codec.enums import PacketType, ReasonCode
from iotbroker.codec.packets import Auth, Connect, Disconnect, Packet, Properties
from iotbroker.engine.client import Client
from iotbroker.errors import ProtocolViolation
from iotbroker.metrics import Metrics

log = logging.getLogger("iotbroker.auth")


@dataclass(slots=True)
class _Exchange:
    """One connection's enhanced authentication state."""

    method: str
    #: The authenticator of the exchange in progress (None between exchanges).
    authenticator: EnhancedAuthenticator | None
    #: The CONNECT waiting for the first exchange to end (None once connected).
    connect: Connect | None
    #: The first exchange's last step, waiting for ``on_connect`` to pick it up.
    outcome: AuthStep | None = None
    #: The identity proven at CONNECT; re-authentication must prove the same one.
    username: str | None = None


class EnhancedAuth:
    """Per-connection enhanced authentication exchanges."""

    def __init__(self, passwords: Callable[[], PasswordFile | None], metrics: Metrics,
                 close: Callable[[Client], None]) -> None:
        """``passwords`` gives the password file in force (it follows reloads);
        ``close`` closes a connection (the engine's close effect)."""
        self._passwords = passwords
        self._close = close
        self._metrics = metrics
        self._exchanges: dict[Client, _Exchange] = {}
        self._registry: EnhancedAuthRegistry | None = None
        self._registry_of: PasswordFile | None = None

    def registry(self) -> EnhancedAuthRegistry:
        """The methods of the current configuration (follows ``AuthService.reload``)."""
        passwords = self._passwords()
        if self._registry is None or self._registry_of is not passwords:
            self._registry = build_registry(passwords)
            self._registry_of = passwords
        return self._registry

    # -------------------------------------------------------------- CONNECT
    def on_connect(self, proto: Client, packet: Connect, client_id: str) -> AuthStep | None:
        """A v5 CONNECT with an Authentication Method.

        Returns None while the exchange goes on (AUTH 0x18 queued), else its last step:
        SUCCESS (the broker accepts the CONNECT, putting ``data`` in the CONNACK) or
        FAILURE (the broker refuses with ``reason_code``).
        """
        exchange = self._exchanges.get(proto)
        if exchange is not None and exchange.outcome is not None:  # resumed by on_auth
            outcome, exchange.outcome, exchange.connect = exchange.outcome, None, None
            return self._final(proto, packet, exchange, outcome)
        method = packet.properties.authentication_method
        assert method is not None
        authenticator = self.registry().create(method)
        if authenticator is None:
            # [MQTT-4.12.0-1]
            return AuthStep.fail(ReasonCode.BAD_AUTHENTICATION_METHOD,
                                 f"authentication method {method!r} not supported")
        step = authenticator.begin(client_id, packet.properties.authentication_data)
        exchange = _Exchange(method, authenticator, packet)
        self._exchanges[proto] = exchange
        if step.kind is StepKind.CONTINUE:
            self._send_auth(proto, exchange, ReasonCode.CONTINUE_AUTHENTICATION, step.data)
            return None
        exchange.authenticator = exchange.connect = None
        return self._final(proto, packet, exchange, step)

    def _final(self, proto: Client, packet: Connect, exchange: _Exchange,
               step: AuthStep) -> AuthStep:
        if step.kind is StepKind.SUCCESS:
            if packet.username is not None and packet.username != step.username:
                step = AuthStep.fail(ReasonCode.BAD_USER_NAME_OR_PASSWORD,
                                     f"CONNECT User Name {packet.username!r} is not "
                                     f"the authenticated user {step.username!r}")
            elif proto.cert_username is not None and proto.cert_username != step.username:
                step = AuthStep.fail(ReasonCode.NOT_AUTHORIZED,
                                     f"certificate identity {proto.cert_username!r} is "
                                     f"not the authenticated user {step.username!r}")
        if step.kind is StepKind.SUCCESS:
            exchange.username = step.username
            log.info("client %r (%s) authenticated as %r with %s", packet.client_id,
                     proto.peer, step.username, exchange.method)
        else:
            self._metrics.count_auth_failure("enhanced_auth")
            self._exchanges.pop(proto, None)
        return step

    # ----------------------------------------------------------------- AUTH
    def on_auth(self, proto: Client, packet: Auth) -> Connect | None:
        """An AUTH from the client. Returns the pending CONNECT when its exchange ended.

        Raises :class:`ProtocolViolation` for an AUTH that breaks §4.12's rules.
        """
        exchange = self._exchanges.get(proto)
        if exchange is None:
            raise ProtocolViolation("AUTH without an Authentication Method in CONNECT",
                                    spec_ref="MQTT-4.12.0-7")
        method = packet.properties.authentication_method
        data = packet.properties.authentication_data
        code = packet.reason_code
        if exchange.connect is not None:  # the first exchange, before CONNACK
            if method != exchange.method:
                raise ProtocolViolation(
                    f"AUTH method {method!r} is not the CONNECT's {exchange.method!r}",
                    reason_code=ReasonCode.BAD_AUTHENTICATION_METHOD, spec_ref="MQTT-4.12.0-5")
            if code != ReasonCode.CONTINUE_AUTHENTICATION or exchange.authenticator is None:
                raise ProtocolViolation(f"AUTH reason 0x{code:02x} during authentication",
                                        spec_ref="MQTT-4.12.0-3")
            step = exchange.authenticator.step(data)
            if step.kind is StepKind.CONTINUE:
                self._send_auth(proto, exchange, ReasonCode.CONTINUE_AUTHENTICATION, step.data)
                return None
            exchange.outcome, exchange.authenticator = step, None
            return exchange.connect
        # Connected: re-authentication (§4.12.1).
        if method != exchange.method:
            raise ProtocolViolation(
                f"re-authentication with {method!r}, not the original {exchange.method!r}",
                reason_code=ReasonCode.BAD_AUTHENTICATION_METHOD, spec_ref="MQTT-4.12.1-1")
        if code == ReasonCode.RE_AUTHENTICATE and exchange.authenticator is None:
            authenticator = self.registry().create(exchange.method)
            if authenticator is None:  # the method went away on reload
                step = AuthStep.fail(ReasonCode.NOT_AUTHORIZED,
                                     f"{exchange.method} is no longer configured")
            else:
                exchange.authenticator = authenticator
                step = authenticator.begin(proto.client_id, data)
        elif code == ReasonCode.CONTINUE_AUTHENTICATION and exchange.authenticator is not None:
            step = exchange.authenticator.step(data)
        else:
            raise ProtocolViolation(f"AUTH reason 0x{code:02x} out of order in "
                                    "re-authentication", spec_ref="MQTT-4.12.0-3")
        self._reauth_step(proto, exchange, step)
        return None

    def _reauth_step(self, proto: Client, exchange: _Exchange, step: AuthStep) -> None:
        if step.kind is StepKind.CONTINUE:
            self._send_auth(proto, exchange, ReasonCode.CONTINUE_AUTHENTICATION, step.data)
            return
        exchange.authenticator = None
        if step.kind is StepKind.SUCCESS and step.username != exchange.username:
            step = AuthStep.fail(ReasonCode.NOT_AUTHORIZED,
                                 f"re-authenticated as {step.username!r}, "
                                 f"not {exchange.username!r}")
        if step.kind is StepKind.SUCCESS:
            log.info("client %r (%s) re-authenticated as %r", proto.client_id, proto.peer,
                     step.username)
            self._send_auth(proto, exchange, ReasonCode.SUCCESS, step.data)
            return
        # [MQTT-4.12.1-2]: DISCONNECT (0x86 is not a DISCONNECT reason code) and close.
        self._metrics.count_auth_failure("enhanced_auth")
        log.info("client %r (%s) failed re-authentication: %s", proto.client_id, proto.peer,
                 step.reason)
        self._exchanges.pop(proto, None)
        code = step.reason_code
        if code == ReasonCode.BAD_USER_NAME_OR_PASSWORD:
            code = ReasonCode.NOT_AUTHORIZED
        proto.conn.send_packet(Disconnect(code))
        self._close(proto)

    def _send_auth(self, proto: Client, exchange: _Exchange, code: int,
                   data: bytes | None) -> None:
        # [MQTT-4.12.0-2] 0x18 asks for more; [MQTT-4.12.0-5] the method is repeated.
        props = Properties(authentication_method=exchange.method, authentication_data=data)
        proto.conn.send_packet(Auth(code, props))

    # ------------------------------------------------------ other packets
    def before_connack(self, proto: Client, packet: Packet) -> None:
        """A packet other than CONNECT or AUTH before CONNACK [MQTT-3.1.2-30]."""
        if packet.TYPE is PacketType.DISCONNECT and proto in self._exchanges:
            log.info("%s (client id %r) disconnected during authentication", proto.peer,
                     self._pending_client_id(proto))
            self._exchanges.pop(proto, None)
            self._close(proto)
            return
        raise ProtocolViolation(
            f"{packet.TYPE.name} before CONNACK: only AUTH or DISCONNECT may follow a "
            "CONNECT with an Authentication Method",
            spec_ref="MQTT-3.1.2-30" if proto in self._exchanges else "MQTT-3.1.0-1")

    def _pending_client_id(self, proto: Client) -> str:
        exchange = self._exchanges.get(proto)
        return exchange.connect.client_id if exchange and exchange.connect else ""

    def forget(self, proto: Client) -> None:
        """The connection is gone."""
        self._exchanges.pop(proto, None)
