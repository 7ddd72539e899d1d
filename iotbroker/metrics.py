"""Counters and gauges of one broker, passed to whoever updates them (never a global).

Plain integer attributes on a slotted object: an increment on the hot path is one
attribute store. ``$SYS`` topics and the Prometheus endpoint read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


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
    publish_received_qos: list[int] = field(default_factory=lambda: [0, 0, 0])
    publish_sent_qos: list[int] = field(default_factory=lambda: [0, 0, 0])
    messages_dropped_queue_full: int = 0
    messages_dropped_qos0_offline: int = 0
    messages_dropped_slow_consumer: int = 0
    messages_dropped_too_large: int = 0
    slow_consumers_disconnected: int = 0
    limit_hits: int = 0
    retained_dropped: int = 0
    connect_timeouts: int = 0
    topic_limit_refusals: int = 0
    subscription_limit_refusals: int = 0
    messages_expired: int = 0
    malformed_packets: int = 0
    protocol_errors: int = 0
    keepalive_timeouts: int = 0
    session_takeovers: int = 0
    sessions_expired: int = 0
    wills_published: int = 0
    auth_failures: int = 0
    acl_denials: int = 0
    storage_batches: int = 0
    storage_changes: int = 0
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

    def as_dict(self) -> dict[str, int]:
        """Scalar counters by name (the per-QoS lists are flattened as ``name_qosN``)."""
        out: dict[str, int] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                for qos, count in enumerate(value):
                    out[f"{f.name}{qos}"] = count
            else:
                out[f.name] = value
        return out
