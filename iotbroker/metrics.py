"""Counters and gauges of one broker, passed to whoever updates them (never a global).

Plain integer attributes on a slotted object: an increment on the hot path is one
attribute store. ``$SYS`` topics and the Prometheus endpoint read them. Compiled with
mypyc (issue 19): compiled code (the engine, server/transport.py) then increments a
counter as a native field, not through a generic attribute lookup (which is slower
than the interpreter's specialised one).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

#: Why a login was refused: the ``reason`` label of ``iotbroker_auth_failures_total``.
AUTH_FAILURE_REASONS = (
    "anonymous",       # no username and auth.allow_anonymous is false
    "unknown_user",    # a username the password file does not have
    "wrong_password",  # a known username, a wrong password
    "certificate",     # a client certificate that does not give an identity
    "enhanced_auth",   # an MQTT 5.0 enhanced authentication (SCRAM) exchange failed
    "rate_limited",    # refused unhashed: too many failures from the address / for the user
    "busy",            # refused: auth.max_pending_password_checks checks already pending
)

#: Why the MQTT-SN gateway dropped a datagram: the suffix of ``mqttsn_dropped_REASON``.
MQTTSN_DROP_REASONS = (
    "malformed",          # not an MQTT-SN 1.2 message (length, type, fields)
    "rate_limited",       # over mqttsn.rate_per_address
    "unknown_client",     # a request from an address with no connected client
    "unexpected",         # a message a gateway does not take there (or unknown topic, QoS -1)
    "sleep_buffer_full",  # QoS 0 beyond mqtt.max_queued_messages for a sleeping client
                          # (or one that has not answered the REGISTER of its topic)
    "not_connected",      # a request before the CONNACK
)


@dataclass(slots=True)
class Metrics:
    """Everything the broker counts since it started."""

    connections_accepted: int = 0
    connections_rejected: int = 0
    clients_connected: int = 0
    clients_maximum: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    publish_received: int = 0
    publish_sent: int = 0
    #: Payload bytes of the PUBLISH packets received (mosquitto's publish/bytes/received).
    publish_bytes_received: int = 0
    #: Payload bytes of the PUBLISH packets sent (mosquitto's publish/bytes/sent).
    publish_bytes_sent: int = 0
    #: CONNECT packets received (the rate is $SYS load/connections, as mosquitto's).
    connects_received: int = 0
    #: PUBLISH packets received and sent, by QoS: one native field each (issue 19: an
    #: item of a list is a boxed int, a new object per increment once past 256; a
    #: field of this compiled class is not). :attr:`publish_received_qos` and
    #: :attr:`publish_sent_qos` read them as ``(qos0, qos1, qos2)``.
    publish_received_qos0: int = 0
    publish_received_qos1: int = 0
    publish_received_qos2: int = 0
    publish_sent_qos0: int = 0
    publish_sent_qos1: int = 0
    publish_sent_qos2: int = 0
    messages_dropped_queue_full: int = 0
    messages_dropped_qos0_offline: int = 0
    messages_dropped_slow_consumer: int = 0
    messages_dropped_too_large: int = 0
    slow_consumers_disconnected: int = 0
    limit_hits: int = 0
    retained_dropped: int = 0
    connect_timeouts: int = 0
    topic_limit_refusals: int = 0
    payload_format_refusals: int = 0
    subscription_limit_refusals: int = 0
    messages_expired: int = 0
    malformed_packets: int = 0
    protocol_errors: int = 0
    keepalive_timeouts: int = 0
    session_takeovers: int = 0
    sessions_expired: int = 0
    wills_published: int = 0
    wills_denied: int = 0
    sys_publish_refused: int = 0
    auth_failures: int = 0
    #: ``auth_failures`` (all refused logins) by reason; the values sum to it.
    auth_failures_reason: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(AUTH_FAILURE_REASONS, 0))
    #: Password checks decided on the event loop (generated secrets, remembered
    #: passwords) and checks that ran PBKDF2 in a worker thread.
    password_checks_inline: int = 0
    password_checks_hashed: int = 0
    acl_denials: int = 0
    storage_batches: int = 0
    storage_changes: int = 0
    # The MQTT-SN gateway (iotbroker/mqttsn): datagrams in and out, drops by reason.
    mqttsn_datagrams_received: int = 0
    mqttsn_datagrams_sent: int = 0
    mqttsn_dropped: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(MQTTSN_DROP_REASONS, 0))
    mqttsn_qos_minus_one_published: int = 0
    mqttsn_retransmissions: int = 0
    mqttsn_registrations_sent: int = 0
    # Failed TLS handshakes by reason (server/tlsfailures.py REASONS).
    tls_handshake_failures_no_client_cert: int = 0
    tls_handshake_failures_untrusted_cert: int = 0
    tls_handshake_failures_not_tls: int = 0
    tls_handshake_failures_protocol_version: int = 0
    tls_handshake_failures_no_shared_cipher: int = 0
    tls_handshake_failures_client_rejected_server_cert: int = 0
    tls_handshake_failures_timeout: int = 0
    tls_handshake_failures_closed: int = 0
    tls_handshake_failures_other: int = 0

    @property
    def publish_received_qos(self) -> tuple[int, int, int]:
        """PUBLISH packets received, by QoS (read-only: count with
        :meth:`count_received`)."""
        return (self.publish_received_qos0, self.publish_received_qos1,
                self.publish_received_qos2)

    @property
    def publish_sent_qos(self) -> tuple[int, int, int]:
        """PUBLISH packets sent, by QoS (read-only: count with :meth:`count_sent`)."""
        return (self.publish_sent_qos0, self.publish_sent_qos1, self.publish_sent_qos2)

    def count_received(self, qos: int) -> None:
        """One PUBLISH received at ``qos``: ``publish_received`` and its QoS's count."""
        self.publish_received += 1
        if qos == 1:
            self.publish_received_qos1 += 1
        elif qos == 0:
            self.publish_received_qos0 += 1
        else:
            self.publish_received_qos2 += 1

    def count_sent(self, qos: int, delta: int = 1) -> None:
        """``delta`` PUBLISH packets sent at ``qos`` (-1: one taken back):
        ``publish_sent`` and its QoS's count."""
        self.publish_sent += delta
        if qos == 1:
            self.publish_sent_qos1 += delta
        elif qos == 0:
            self.publish_sent_qos0 += delta
        else:
            self.publish_sent_qos2 += delta

    def count_auth_failure(self, reason: str) -> None:
        """One refused login, by reason (one of :data:`AUTH_FAILURE_REASONS`)."""
        self.auth_failures += 1
        self.auth_failures_reason[reason] = self.auth_failures_reason.get(reason, 0) + 1

    def as_dict(self) -> dict[str, int]:
        """Scalar counters by name (the per-QoS counts are ``publish_received_qosN``
        and ``publish_sent_qosN``, the per-reason dicts flattened as ``name_REASON``)."""
        out: dict[str, int] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                for key, count in value.items():
                    out[f"{f.name}_{key}"] = count
            else:
                out[f.name] = value
        return out
