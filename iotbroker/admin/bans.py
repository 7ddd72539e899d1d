"""Bans: client ids, usernames and addresses (CIDR) refused at CONNECT.

A ban is checked when a CONNECT is accepted (the engine's ``connect_gate``: MQTT 5.0
CONNACK 0x8A Banned, MQTT 3.1.1 0x05 Not authorized, MQTT 5.0 §3.2.2.2); creating one
also disconnects the connected clients it matches (the API does that, 0x98).

Persistence: a small JSON file beside the database (``<storage.path>/admin-bans.json``),
rewritten whole (temporary file, fsync, rename) on every change. Bans are operator
configuration, written a few times a day and read once at start-up: they do not belong
in the per-turn ``ChangeBatch`` of session state, and a file works the same with the
``memory`` storage backend, can be read and backed up by people, and adds no record
kind to the database's versioned format (docs/admin.md).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("iotbroker.admin")

BanKind = Literal["clientid", "username", "address"]
KINDS: tuple[BanKind, ...] = ("clientid", "username", "address")
#: Version of the file's layout.
FILE_VERSION = 1

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Ban:
    """One ban; ``until`` None never expires (Unix time otherwise)."""

    kind: BanKind
    value: str
    reason: str = ""
    by: str = ""
    at: float = 0.0
    until: float | None = None

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until


def normalise(kind: str, value: str) -> tuple[BanKind, str]:
    """The kind and the value as stored (an address as its network, ``10.0.0.0/8``);
    ValueError with a message for people."""
    found = next((k for k in KINDS if k == kind), None)
    if found is None:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not value:
        raise ValueError("value must not be empty")
    if kind == "address":
        try:
            value = str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"address {value!r} is not an IP address or CIDR network") from None
    return found, value


def peer_ip(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a ``host:port`` peer name (``[::1]:5`` and ``::1:5`` too)."""
    host = peer.rsplit(":", 1)[0] if ":" in peer else peer
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class BanList:
    """The bans, by kind, with their file; synchronous (called from the event loop)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._bans: dict[tuple[BanKind, str], Ban] = {}
        self._networks: dict[str, Network] = {}

    def __len__(self) -> int:
        return len(self._bans)

    def load(self) -> None:
        """Read the file (a missing file is no bans). A damaged file raises ValueError:
        starting without the bans an operator set would let banned clients in."""
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != FILE_VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            for item in data["bans"]:
                kind, value = normalise(item["kind"], item["value"])
                self._add(Ban(kind, value, str(item.get("reason", "")), str(item.get("by", "")),
                              float(item.get("at", 0.0)),
                              None if item.get("until") is None else float(item["until"])))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"cannot read the bans file {self.path}: {exc}") from exc

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        text = json.dumps({"version": FILE_VERSION,
                           "bans": [asdict(b) for b in self._bans.values()]}, indent=1)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _add(self, ban: Ban) -> None:
        self._bans[(ban.kind, ban.value)] = ban
        if ban.kind == "address":
            self._networks[ban.value] = ipaddress.ip_network(ban.value)

    def add(self, ban: Ban) -> None:
        """Add or replace a ban, and write the file."""
        self._add(ban)
        self.save()

    def remove(self, kind: str, value: str) -> bool:
        try:
            key = normalise(kind, value)
        except ValueError:
            return False
        if self._bans.pop(key, None) is None:
            return False
        self._networks.pop(key[1], None)
        self.save()
        return True

    def all(self, now: float) -> list[Ban]:
        """The bans still in force, after dropping (and forgetting) expired ones."""
        expired = [key for key, ban in self._bans.items() if not ban.active(now)]
        if expired:
            for key in expired:
                del self._bans[key]
                self._networks.pop(key[1], None)
            self.save()
        return list(self._bans.values())

    def matches(self, ban: Ban, client_id: str, username: str | None, peer: str) -> bool:
        if ban.kind == "clientid":
            return client_id == ban.value
        if ban.kind == "username":
            return username == ban.value
        address = peer_ip(peer)
        network = self._networks.get(ban.value)
        return address is not None and network is not None and address in network

    def refusal(self, client_id: str, username: str | None, peer: str,
                now: float) -> str | None:
        """Why this connection is banned, or None (the engine's ``connect_gate``)."""
        bans = self._bans
        if not bans:
            return None
        for found in (bans.get(("clientid", client_id)),
                      bans.get(("username", username)) if username else None):
            if found is not None and found.active(now):
                return f"banned ({found.kind} {found.value!r})"
        if self._networks:
            address = peer_ip(peer)
            if address is not None:
                for text, network in self._networks.items():
                    ban = bans[("address", text)]
                    if address in network and ban.active(now):
                        return f"banned (address {text})"
        return None
