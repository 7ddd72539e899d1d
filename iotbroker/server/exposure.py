"""Start-up checks of what the broker exposes to the network (issue 12, secure by default).

* :func:`listening_note` is appended to a listener's ``listening on HOST:PORT (TYPE,
  listener 'NAME')`` line: a loopback-only listener says so, and the built-in one says
  how to open the broker to devices.
* :func:`warn_open_anonymous` logs one WARNING when listeners bound to a non-loopback
  address accept anonymous clients and no ACL limits what they do.
* TLS private keys readable by others: :func:`iotbroker.file_modes.warn_if_exposed`.

Loopback means 127.0.0.0/8 and ::1 (IPv4-mapped ``::ffff:127.x.x.x`` too); everything
else, including the wildcards ``0.0.0.0`` and ``::``, is the network. The checks look at
the addresses the sockets are actually bound to, so a host name such as ``localhost``
is judged by what it resolved to.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence

from iotbroker.config import BrokerConfig, ListenerConfig

__all__ = ["is_loopback", "listening_note", "open_anonymous_listeners", "warn_open_anonymous"]

log = logging.getLogger("iotbroker.security")

#: The listener used when the configuration names none (loopback only).
BUILTIN_LISTENER = BrokerConfig().listeners[0]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped forms; False for anything else
    (wildcards, interface addresses, names that are not IP addresses)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def listening_note(listener: ListenerConfig, host: str, port: int) -> str:
    """What follows ``listening on HOST:PORT (TYPE, listener 'NAME')``: empty for a
    network address; for loopback, say so (and, for the built-in listener, how to open
    it to devices)."""
    if not is_loopback(host):
        return ""
    if listener == BUILTIN_LISTENER:
        return (f" — loopback only: pass --listen 0.0.0.0:{port} or a config file to "
                f"accept devices on the network")
    return " — loopback only"


def _authenticates_every_client(listener: ListenerConfig) -> bool:
    """A listener that requires a verified client certificate has no anonymous clients."""
    return listener.tls is not None and listener.tls.require_client_cert


def open_anonymous_listeners(
    config: BrokerConfig,
    bound: Iterable[tuple[ListenerConfig, Sequence[tuple[str, int]]]],
) -> list[str]:
    """``NAME (HOST:PORT, ...)`` of each listener on a non-loopback address where
    anonymous clients may connect with no ACL to limit them; empty when there is none."""
    if not config.auth.allow_anonymous or config.auth.acl_file is not None:
        return []
    found: list[str] = []
    for listener, addresses in bound:
        if _authenticates_every_client(listener):
            continue
        public = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
                  for h, p in addresses if not is_loopback(h)]
        if public:
            found.append(f"{listener.name!r} ({', '.join(public)})")
    return found


def warn_open_anonymous(
    config: BrokerConfig,
    bound: Iterable[tuple[ListenerConfig, Sequence[tuple[str, int]]]],
) -> bool:
    """Log the one start-up WARNING about open anonymous listeners; True if it did."""
    found = open_anonymous_listeners(config, bound)
    if not found:
        return False
    plural = "s" if len(found) > 1 else ""
    log.warning(
        "listener%s %s accept%s anonymous clients from the network and no ACL limits "
        "them: anyone who can reach %s may publish and subscribe to every topic. Set "
        "auth.allow_anonymous: false with an auth.password_file (iotbroker passwd FILE "
        "USER), or an auth.acl_file (see configs/production.yaml, docs/auth.md); to "
        "serve this machine only, listen on 127.0.0.1",
        plural, ", ".join(found), "" if plural else "s", "them" if plural else "it")
    return True
