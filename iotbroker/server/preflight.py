"""Checks made before the broker touches its data directory (issue 18).

A broker that cannot serve (a TLS certificate or key missing or unusable, a port
already taken) must say so, naming the file and the configuration key, *before* it
creates or locks ``storage.path``: a failed start must not leave a data directory
behind or hold the lock another broker instance is waiting for.

``iotbroker check-config`` uses :func:`tls_file_errors` for the same file checks.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import ssl

from iotbroker.config import BridgeTlsConfig, BrokerConfig, TlsConfig
from iotbroker.errors import ConfigError
from iotbroker.server.listeners import make_ssl_context

__all__ = ["check_listeners", "tls_file_errors"]

_TLS_FILES = ("certfile", "keyfile", "cafile")


def tls_file_errors(config: BrokerConfig) -> list[ConfigError]:
    """One error per TLS file named by a listener or a bridge that does not exist or
    cannot be read, keyed ``listeners[i].tls.certfile`` / ``bridges[i].tls.certfile``
    (and ``keyfile``, ``cafile``); and the cluster's NATS credentials file
    (``cluster.credentials_file``: missing, unreadable, or not a .creds file)."""
    errors = []
    tls_configs: list[tuple[str, TlsConfig | BridgeTlsConfig | None]] = [
        (f"listeners[{i}]", listener.tls)
        for i, listener in enumerate(config.listeners)
    ]
    tls_configs += [(f"bridges[{i}]", bridge.tls) for i, bridge in enumerate(config.bridges)]
    for key, tls in tls_configs:
        if tls is None:
            continue
        for name in _TLS_FILES:
            file = getattr(tls, name)
            if file is not None and not os.access(file, os.R_OK):
                reason = "does not exist" if not os.path.exists(file) else "is not readable"
                errors.append(ConfigError(f"{key}.tls.{name}", file,
                                          f"cannot be used: the file {reason}"))
    creds = config.cluster.credentials_file if config.cluster is not None else None
    if creds is not None:
        error = _creds_error(creds)
        if error is not None:
            errors.append(error)
    return errors


def _creds_error(path: str) -> ConfigError | None:
    """``cluster.credentials_file`` must be a readable NATS .creds file: a user JWT and
    its NKey seed between their ``-----BEGIN ...-----`` lines (the layout ``nsc``
    writes). nats-py reads it at each connect and would fail there, less clearly."""
    key = "cluster.credentials_file"
    try:
        with open(path, "rb") as handle:
            text = handle.read(1 << 20)
    except FileNotFoundError:
        return ConfigError(key, path, "cannot be used: the file does not exist")
    except OSError as exc:
        return ConfigError(key, path, f"cannot be used: {exc.strerror or exc}")
    for marker, what in ((b"BEGIN NATS USER JWT", "user JWT"),
                         (b"BEGIN USER NKEY SEED", "NKey seed")):
        if marker not in text:
            return ConfigError(key, path, f"is not a NATS .creds file: no {what} "
                               f"(no '-----{marker.decode()}-----' line)")
    if importlib.util.find_spec("nkeys") is None:
        # nats-py imports it only when it signs: without it the connection would fail
        # at each try with an ImportError.
        return ConfigError(key, path, "cannot be used without the Python package nkeys "
                           "(pip install 'iotbroker[cluster]' brings it)")
    return None


def _tls_context_error(index: int, config: BrokerConfig) -> ConfigError | None:
    """The TLS context of listener ``index`` cannot be built: a certificate that is not
    PEM, a key that does not match it, a wrong key password."""
    listener = config.listeners[index]
    tls = listener.tls
    if tls is None:
        return None
    try:
        make_ssl_context(tls)
    except (OSError, ssl.SSLError) as exc:
        return ConfigError(f"listeners[{index}].tls", f"{tls.certfile}, {tls.keyfile}",
                           f"cannot set up TLS for listener {listener.name!r} "
                           f"(certfile, keyfile): {exc}")
    return None


def _bind_error(index: int, config: BrokerConfig,
                reuse_port: bool = False) -> ConfigError | None:
    """Bind the listener's address and let go at once (the real bind comes later, with
    the same SO_REUSEADDR as asyncio's): a port in use is reported before the store."""
    listener = config.listeners[index]
    kind = socket.SOCK_DGRAM if listener.type == "mqtt-sn" else socket.SOCK_STREAM  # UDP
    return _try_bind(f"listeners[{index}]", listener.host, listener.port,
                     f"listener {listener.name!r}", kind, reuse_port)


def _try_bind(key: str, host: str, port: int, what: str, kind: int = socket.SOCK_STREAM,
              reuse_port: bool = False) -> ConfigError | None:
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=kind, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return ConfigError(f"{key}.host", host, f"cannot be resolved: {exc}")
    for family, socktype, proto, _, address in infos:
        sock = socket.socket(family, socktype, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        except OSError as exc:
            return ConfigError(f"{key}.port", f"{host}:{port}",
                               f"cannot be listened on ({what}): {exc.strerror or exc}")
        finally:
            sock.close()
    return None


def check_listeners(config: BrokerConfig, reuse_port: bool = False) -> list[ConfigError]:
    """Every listener problem found before start-up: TLS files, TLS contexts, ports
    (the metrics endpoint's too). ``reuse_port``: a worker of ``--workers``, whose
    listener ports its siblings hold too (SO_REUSEPORT)."""
    errors = tls_file_errors(config)
    failed = {error.key.partition(".")[0] for error in errors}
    for i in range(len(config.listeners)):
        if f"listeners[{i}]" in failed:
            continue
        error = _tls_context_error(i, config) or _bind_error(i, config, reuse_port)
        if error is not None:
            errors.append(error)
    metrics = config.metrics
    if metrics.enabled:
        error = _try_bind("metrics", metrics.host, metrics.port, "the metrics endpoint")
        if error is not None:
            errors.append(error)
    return errors
