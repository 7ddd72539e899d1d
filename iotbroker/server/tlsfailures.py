"""Failed TLS handshakes, made visible (issue 12): a reason, a counter, a log line.

A client that never completes the TLS handshake never reaches MQTT, so nothing else
logs it: no client certificate where one is required, a certificate from an unknown CA,
plaintext MQTT on a TLS port, a TLS version below ``min_version``. The listener hands
each failure to :meth:`HandshakeFailures.report`, which

* classifies it (:func:`classify`: one of :data:`REASONS`),
* counts it in ``Metrics.tls_handshake_failures_<reason>`` (exported as
  ``iotbroker_tls_handshake_failures_total{reason=...}``),
* logs one line naming the peer, the listener and the reason, at most
  :data:`LINES_PER_WINDOW` lines per :data:`WINDOW` seconds per listener; the lines
  left out are counted and summed up in one line when the window ends.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from iotbroker.metrics import Metrics

log = logging.getLogger("iotbroker.tls")

#: Reasons a handshake fails, as counter labels.
REASONS = ("no_client_cert", "untrusted_cert", "not_tls", "protocol_version",
           "no_shared_cipher", "client_rejected_server_cert", "timeout", "closed", "other")

#: At most this many lines per window per listener; the rest are counted.
LINES_PER_WINDOW = 10
WINDOW = 10.0

# OpenSSL reason codes (``SSLError.reason``) -> our reason.
_SSL_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_cert",
    "CERTIFICATE_VERIFY_FAILED": "untrusted_cert",
    "WRONG_VERSION_NUMBER": "not_tls",
    "HTTP_REQUEST": "not_tls",
    "HTTPS_PROXY_REQUEST": "not_tls",
    "UNKNOWN_PROTOCOL": "not_tls",
    "PACKET_LENGTH_TOO_LONG": "not_tls",
    "RECORD_LAYER_FAILURE": "not_tls",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "TLSV1_ALERT_UNKNOWN_CA": "client_rejected_server_cert",
    "SSLV3_ALERT_BAD_CERTIFICATE": "client_rejected_server_cert",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "client_rejected_server_cert",
}

_TEXT = {
    "no_client_cert": "no client certificate (the listener requires one)",
    "untrusted_cert": "client certificate not trusted",
    "not_tls": "not TLS (plaintext on a TLS port?)",
    "protocol_version": "TLS version not allowed",
    "no_shared_cipher": "no cipher in common",
    "client_rejected_server_cert": "the client rejected the server's certificate",
    "timeout": "handshake timed out",
    "closed": "closed by the client during the handshake",
    "other": "handshake failed",
}


def classify(exc: BaseException) -> tuple[str, str]:
    """``(reason, detail)`` of a failed handshake: ``reason`` one of :data:`REASONS`,
    ``detail`` what OpenSSL said (its reason code, the verification message)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "untrusted_cert", (f"{getattr(exc, 'reason', None)}: "
                                  f"{getattr(exc, 'verify_message', None)}")
    if isinstance(exc, ssl.SSLError):
        code = getattr(exc, "reason", None) or ""  # set by OpenSSL errors only
        return _SSL_REASONS.get(code, "other"), code or str(exc)
    if isinstance(exc, (TimeoutError, ConnectionAbortedError)):
        return "timeout", str(exc) or type(exc).__name__
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, EOFError)):
        return "closed", str(exc) or type(exc).__name__
    return "other", f"{type(exc).__name__}: {exc}"


class HandshakeFailures:
    """Counts, and logs at a bounded rate, the failed handshakes of one listener."""

    def __init__(self, listener: str, metrics: Metrics,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.listener = listener
        self.metrics = metrics
        self.loop = loop
        self._window_end = 0.0
        self._lines = 0
        self._suppressed = 0
        self._summary: asyncio.TimerHandle | None = None

    def report(self, peer: str, exc: BaseException) -> str:
        """One failed handshake from ``peer``; returns its reason."""
        reason, detail = classify(exc)
        name = f"tls_handshake_failures_{reason}"
        setattr(self.metrics, name, getattr(self.metrics, name) + 1)
        now = self.loop.time()
        if now >= self._window_end:
            self._window_end = now + WINDOW
            self._lines = 0
        if self._lines >= LINES_PER_WINDOW:
            self._suppressed += 1
            if self._summary is None:
                self._summary = self.loop.call_at(self._window_end, self._log_suppressed)
            return reason
        self._lines += 1
        level = logging.INFO if reason in ("closed", "timeout") else logging.WARNING
        log.log(level, "TLS handshake from %s failed (listener %r): %s [%s] reason=%s",
                peer, self.listener, _TEXT[reason], detail, reason,
                extra={"peer": peer, "reason": reason})
        return reason

    def _log_suppressed(self) -> None:
        self._summary = None
        count, self._suppressed = self._suppressed, 0
        if count:
            log.warning("%d more failed TLS handshakes on listener %r not logged "
                        "(at most %d lines per %.0f s; see "
                        "iotbroker_tls_handshake_failures_total)",
                        count, self.listener, LINES_PER_WINDOW, WINDOW)

    def close(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._log_suppressed()
