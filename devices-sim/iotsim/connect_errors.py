"""Why devices could not connect: the connect errors of a run, by kind, explained.

The client counts each failed connect under an error name (``connect_econnrefused``,
``connect_timeout``, ``connect_tls_certificate_verify_failed``,
``connack_refused_0x86``, ...) and keeps the first detail the system gave (the TLS
verification message, the OS error text). This module groups them into the kinds the
report and the verdict name (refused, TLS, timeout, auth, refused by the broker, closed,
network) and says in words what to check. CONNACK codes: MQTT 3.1.1 §3.2.2.3 (4 bad
user name or password, 5 not authorized) and MQTT 5.0 §3.2.2.2 (0x86, 0x87, 0x8C).
"""

from __future__ import annotations

from typing import Any

#: CONNACK return/reason codes that mean "who you are was not accepted".
_AUTH_CODES = {
    0x04: "bad user name or password (MQTT 3.1.1 return code 4): check --username/--password",
    0x05: "not authorized (MQTT 3.1.1 return code 5): the broker needs credentials or "
          "refuses this user",
    0x86: "bad user name or password (MQTT 5.0 0x86): check --username/--password",
    0x87: "not authorized (MQTT 5.0 0x87): the broker needs credentials or refuses this user",
    0x8C: "bad authentication method (MQTT 5.0 0x8C)",
}
_OTHER_CONNACK = {
    0x01: "unacceptable protocol version (try --mqtt 5 or 3.1.1)",
    0x02: "client identifier rejected",
    0x03: "server unavailable (some brokers, iotbroker among them, answer so once a "
          "client has failed to log in too often)",
    0x84: "unsupported protocol version (try --mqtt 3.1.1)",
    0x85: "client identifier not valid",
    0x88: "server unavailable",
    0x89: "server busy (some brokers answer so once a client failed to log in too often)",
    0x8A: "banned",
    0x97: "quota exceeded",
    0x9F: "connection rate exceeded",
}
#: TLS failure reasons (OpenSSL's names, lower case) -> what they usually mean.
_TLS = {
    "certificate_verify_failed": "the broker's certificate was not accepted{detail}: give "
                                 "the CA that signed it with --cafile, or --tls-insecure "
                                 "to skip verification",
    "wrong_version_number": "the port does not speak TLS (a plain MQTT port?), or no TLS "
                            "version in common",
    "record_layer_failure": "the port does not speak TLS (a plain MQTT port?)",
    "closed_during_handshake": "the connection closed during the TLS handshake: the port "
                               "does not speak TLS (a plain MQTT port?), or the broker "
                               "refused the handshake",
    "tlsv13_alert_certificate_required": "the broker requires a client certificate: give "
                                         "--cert and --key",
    "sslv3_alert_handshake_failure": "the handshake failed: the broker may require a client "
                                     "certificate (--cert/--key) or share no cipher",
    "tlsv1_alert_unknown_ca": "the broker does not trust the client certificate's CA",
    "sslv3_alert_bad_certificate": "the broker refused the client certificate",
    "tlsv1_alert_protocol_version": "no TLS version in common with the broker",
}


def classify(name: str, detail: str = "") -> tuple[str, str] | None:
    """(kind, explanation) of an error name; None when it is not a connect error."""
    suffix = f" ({detail})" if detail else ""
    if name.startswith("connack_refused_0x"):
        code = int(name.rsplit("0x", 1)[1], 16)
        if code in _AUTH_CODES:
            return "auth", _AUTH_CODES[code]
        return "refused_by_broker", (f"CONNACK 0x{code:02x}: "
                                     f"{_OTHER_CONNACK.get(code, 'refused')}")
    if name.startswith("connect_tls_"):
        reason = name.removeprefix("connect_tls_")
        text = _TLS.get(reason)
        if text is None:
            return "tls", f"TLS handshake failed: {reason}{suffix}"
        return "tls", text.format(detail=f" ({detail})" if detail else "")
    if name == "connect_timeout":
        return "timeout", ("no CONNACK within connect_timeout: the broker is unreachable, "
                           "overloaded, or the port expects TLS (--tls)")
    if name == "connect_econnrefused":
        return "refused", "connection refused: nothing listens on that host and port"
    if name == "connect_closed_before_connack":
        return "closed", ("the broker closed the connection before CONNACK (a TLS port "
                          "spoken to without --tls? a connection limit? a client "
                          "certificate it refused?)")
    if name.startswith("connect_"):
        return "network", f"{name.removeprefix('connect_')}{suffix}"
    return None


def connect_errors(errors: dict[str, int], details: dict[str, str]) -> dict[str, Any]:
    """The report's ``connect_errors``: counts by kind and one row per error name."""
    by_kind: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for name, count in sorted(errors.items(), key=lambda item: -item[1]):
        found = classify(name, details.get(name, ""))
        if found is None or not count:
            continue
        kind, why = found
        by_kind[kind] = by_kind.get(kind, 0) + count
        rows.append({"error": name, "kind": kind, "count": count, "why": why})
    return {"total": sum(by_kind.values()), "by_kind": by_kind, "errors": rows}


def verdict(ok: bool, devices: dict[str, int], connect: dict[str, Any],
            violations: dict[str, int]) -> dict[str, Any]:
    """``ok`` and the reasons it is not: no device connected (naming the connect
    errors with counts), then each accounting violation."""
    reasons: list[str] = []
    if devices["target"] and not devices["connected"]:
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in connect["by_kind"].items())
        first = connect["errors"][0]["why"] if connect["errors"] else "no connect error seen"
        reasons.append(f"no device connected ({devices['target']:,} tried; connect errors: "
                       f"{kinds or 'none'}): {first}")
    reasons += [f"{name} {count:,}" for name, count in violations.items() if count]
    return {"ok": ok and not reasons, "reasons": reasons}
