"""A CONNECT on a socket connection, from the engine's checks to its acceptance:
authentication (enhanced authentication, certificate identity or password, which may
wait for a worker thread) between :func:`~iotbroker.engine.connect.admit` and
:func:`~iotbroker.engine.connect.accept` (MQTT 3.1.1 §3.1, §3.2; MQTT 5.0 §3.1, §4.12).

Compiled with mypyc (issue 19: the per-connection path): ``server/broker.py``'s
``Broker.on_connect`` and ``Broker._accept`` call these functions, which call the
compiled engine natively. They read the broker through :class:`Connecting` (native
fields, built from a :class:`ConnectingHost`: what this module uses of it), so that
this module never refers back to the composition root; the rare waits (a password
hashed in a thread, a room's wait before the acceptance) stay the broker's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Final, Protocol

from iotbroker.codec.enums import ProtocolVersion
from iotbroker.codec.packets import Connect
from iotbroker.engine import connect as connect_rules
from iotbroker.engine.engine import Engine
from iotbroker.engine.enhanced_auth import EnhancedAuth
from iotbroker.errors import MqttError
from iotbroker.metrics import Metrics
from iotbroker.server.auth_service import AuthService
from iotbroker.server.logsetup import log_connection
from iotbroker.server.parking import Parking
from iotbroker.server.transport import NOT_CHECKED, ClientProtocol, FirstConnect, NotChecked

#: The broker's logger: the "connected" line is the broker's, as before.
log: Final = logging.getLogger("iotbroker.broker")

#: How log lines name a CONNECT's protocol level (MQTT 3.1 is "MQIsdp" version 3).
VERSION_NAMES: Final[dict[int, str]] = {
    ProtocolVersion.MQTT_5: "5.0", ProtocolVersion.MQTT_3_1: "3.1",
}

# ``Final`` and plain ints (issue 19): a C static in the compiled module, where a plain
# module name is a dict look-up per CONNECT, and an int comparison, where an IntEnum
# member is a rich comparison.
_MQTT_5: Final = int(ProtocolVersion.MQTT_5)
_INFO: Final = logging.INFO
#: ``time.time`` held in a C static (issue 19): ``time.time`` is a look-up by name on
#: the module per call.
_time: Final = time.time


class ConnectingHost(Protocol):
    """What a CONNECT's authentication and acceptance use of the broker
    (``server/broker.py`` ``Broker``)."""

    @property
    def engine(self) -> Engine: ...

    @property
    def enhanced_auth(self) -> EnhancedAuth: ...

    @property
    def auth(self) -> AuthService: ...

    @property
    def parking(self) -> Parking | None: ...

    @property
    def parkable_listeners(self) -> frozenset[str]:
        """Listeners whose connections may be parked (plain TCP)."""

    def check_password_off_loop(self, proto: ClientProtocol, packet: Connect,
                                client_id: str) -> None:
        """Hash the password in a worker thread; the CONNECT resumes when it is done."""

    def accept_after(self, wait: Awaitable[str | None], proto: ClientProtocol,
                     packet: Connect, admitted: connect_rules.Admitted,
                     username: str | None, auth_data: bytes | None) -> None:
        """Accept once a room's wait is done (or refuse when it ended with a reason)."""


class Connecting(FirstConnect):
    """What a CONNECT's authentication and acceptance read of the broker, in native
    fields (issue 19): the functions below took the interpreted ``Broker`` and read
    it by name, 2 to 4 look-ups each per connection. One per broker, built by
    ``Broker``; ``auth.allow_anonymous`` is updated in place by ``Broker.reload``
    (:meth:`reload`), so a reload takes effect for every CONNECT after it, as when it
    was read from the configuration each time. The rare paths (a password hashed in
    a thread, a room's wait, a peer's error, the engine's closes) call the broker."""

    def __init__(self, broker: FirstConnectHost) -> None:
        self.broker = broker
        self.engine: Engine = broker.engine
        self.metrics: Metrics = broker.metrics
        self.auth: AuthService = broker.auth
        self.enhanced_auth: EnhancedAuth = broker.enhanced_auth
        #: The compiled ``Parking`` (a native call per accepted connection, where a
        #: protocol type made it a call by name).
        self.parking: Parking | None = broker.parking
        self.parkable_listeners: frozenset[str] = broker.parkable_listeners
        #: ``auth.allow_anonymous`` (the auth service's configuration, reloadable).
        self.allow_anonymous: bool = broker.auth.config.allow_anonymous
        #: The broker logger's own cache of ``isEnabledFor`` answers (a dict it
        #: clears in place whenever a level changes: ``setLevel``, ``logging.disable``,
        #: any logger's): :func:`info_enabled` reads it natively, where
        #: ``log.isEnabledFor`` is an interpreted call per connection (issue 19).
        self.log_cache: dict[int, bool] = logger_cache(log)

    def reload(self) -> None:
        """The auth service's configuration was replaced (``Broker.reload``)."""
        self.allow_anonymous = self.auth.config.allow_anonymous

    def first_connect(self, proto: ClientProtocol, packet: Connect) -> None:
        """:func:`first_connect` with this broker's (``ClientProtocol.first_data``
        calls it through the connection's ``ConnectContext``, natively)."""
        first_connect(self, proto, packet)


class AnswerHost(Protocol):
    """What :func:`may_answer_now` reads of the broker."""

    @property
    def engine(self) -> Engine: ...

    @property
    def group_commit(self) -> object | None: ...

    @property
    def cluster(self) -> object | None: ...


def may_answer_now(broker: AnswerHost) -> bool:
    """Nothing of this turn so far waits for the flush: no storage change to commit
    before an acknowledgement may leave (design.md, "A QoS 1 PUBLISH"), no group
    commit (fsync), no sessions' output to route, no cluster forwarding: a connection
    whose read answered only itself may be written at once
    (``ClientProtocol.first_data``: the CONNACK of a socket accepted without a
    transport). ``Broker.may_answer_now`` is this, bound to the broker."""
    if broker.group_commit is not None or broker.cluster is not None:
        return False
    engine = broker.engine
    return (not engine.batch.changes and not engine.registry.ready
            and not engine.forwarding and not engine.held_acks)


class FirstConnectHost(ConnectingHost, Protocol):
    """What :func:`first_connect` uses of the broker besides :class:`ConnectingHost`."""

    @property
    def metrics(self) -> Metrics: ...

    def peer_error(self, proto: ClientProtocol, exc: MqttError) -> None: ...

    def apply_closes(self) -> None: ...


def first_connect(host: Connecting, proto: ClientProtocol, packet: Connect) -> None:
    """A connection's first read was one CONNECT (``ClientProtocol.first_data``, a
    socket accepted without a transport): what ``Broker.handle_packets`` does with it
    (counted, :func:`on_connect`, a peer's error closes with its reason code, the
    engine's closes applied), compiled; the caller writes the CONNACK at once or
    schedules the flush. ``Broker.first_connect`` is this, bound to the broker."""
    host.metrics.connects_received += 1
    try:
        on_connect(host, proto, packet)
    except MqttError as exc:
        host.broker.peer_error(proto, exc)
        return
    if host.engine.closing:
        host.broker.apply_closes()


def on_connect(host: Connecting, proto: ClientProtocol, packet: Connect) -> None:
    """Authenticate the CONNECT (enhanced authentication, certificate identity or
    password, which may wait for a worker thread), between the engine's checks
    before (:func:`~iotbroker.engine.connect.admit`) and its acceptance."""
    engine = host.engine
    cert_username = proto.cert_username
    # A refusal line names who tried: the certificate identity or the username.
    proto.note_username(packet.username if cert_username is None else cert_username)
    admitted = connect_rules.admit(engine, proto, packet)
    if admitted is None:
        return
    enhanced = None
    if (packet.protocol_version == _MQTT_5
            and packet.properties.authentication_method is not None):
        enhanced = host.enhanced_auth.on_connect(proto, packet, admitted.client_id)  # §4.12
        if enhanced is None:
            return  # AUTH 0x18 sent; on_auth resumes this CONNECT when it ends
        if enhanced.reason_code:
            connect_rules.refuse(engine, proto, packet, enhanced.reason_code,
                                 enhanced.reason)
            return
    if cert_username is not None or enhanced is not None:
        decision = None
    else:
        pending = proto.password_decision
        if not isinstance(pending, NotChecked):
            decision = pending
            proto.password_decision = NOT_CHECKED
        else:
            auth = host.auth
            if packet.username is None and host.allow_anonymous:
                # What AuthService.authenticate decides for an anonymous login that is
                # allowed (no gate, no hashing, no counter, no plugin: they all need a
                # username), without its three interpreted calls (issue 19).
                decision = None
            else:
                # Rate-limited or too many PBKDF2 checks pending: refused unhashed (0x89).
                decision = auth.gate(packet.username, packet.password, proto.peer_name)
                if decision is None:
                    if auth.is_slow(packet.username, packet.password):
                        host.broker.check_password_off_loop(proto, packet,
                                                            admitted.client_id)
                        return
                    decision = auth.authenticate(
                        admitted.client_id, packet.username, packet.password,
                        proto.peer_name
                    )
    if decision is not None:  # counted by reason in the auth service
        connect_rules.refuse(engine, proto, packet, decision.code,
                             f"{decision} (user {packet.username!r})")
        return
    if enhanced is not None:
        username = enhanced.username
    else:
        username = packet.username if cert_username is None else cert_username
    auth_data = enhanced.data if enhanced is not None else None
    wait = connect_rules.wait_before_accept(engine, admitted, packet)
    if wait is not None:  # a room's (the cluster's session read, docs/cluster.md)
        host.broker.accept_after(wait, proto, packet, admitted, username, auth_data)
        return
    accept(host, proto, packet, admitted, username, auth_data)


def accept(host: Connecting, proto: ClientProtocol, packet: Connect,
           admitted: connect_rules.Admitted, username: str | None,
           auth_data: bytes | None) -> None:
    """Accept the authenticated CONNECT (the engine's CONNACK, session and will),
    arm the keep-alive, make the connection a parking candidate, log it."""
    accepted = connect_rules.accept(
        host.engine, proto, packet, admitted, username, _time(), auth_data,
    )
    if accepted is None:
        return
    proto.start_keepalive()
    parking = host.parking
    if parking is not None and proto.listener in host.parkable_listeners:
        parking.watch(proto, connected=True)
    if not info_enabled(host.log_cache):
        return  # the arguments below cost a peer-name lookup per connect
    log_connection(
        log,
        _INFO,
        proto,
        "client %r connected from %s (MQTT %s, clean_start=%s, keepalive=%s, "
        "session_present=%s, expiry=%s, listener %r)",
        proto.client_id,
        proto.peer,
        VERSION_NAMES.get(packet.protocol_version, "3.1.1"),
        packet.clean_start,
        accepted.keepalive,
        accepted.session_present,
        accepted.session_expiry,
        proto.listener,
    )


def logger_cache(logger: logging.Logger) -> dict[int, bool]:
    """``logger``'s cache of ``isEnabledFor`` answers by level (CPython's
    ``Logger._cache``, cleared in place by ``Manager._clear_cache``), or a new empty
    dict where there is none (then :func:`info_enabled` always asks the logger)."""
    cache = getattr(logger, "_cache", None)
    return cache if isinstance(cache, dict) else {}


def info_enabled(cache: dict[int, bool]) -> bool:
    """``log.isEnabledFor(logging.INFO)``, as ``Logger.isEnabledFor`` decides it
    (``cache``: :func:`logger_cache` of ``log``): a disabled logger says no; else
    the answer cached since the last level change, if there is one; else the logger
    is asked (which caches it)."""
    if log.disabled:
        return False
    cached = cache.get(_INFO)
    if cached is not None:
        return cached
    return log.isEnabledFor(_INFO)
