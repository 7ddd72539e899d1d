"""Connecting to the remote broker: which address next, how long to wait, the CONNECT
bytes, and why an attempt failed, as one log-ready text (MQTT 3.1.1 §3.1 / §3.2, MQTT 5.0
§3.1 / §3.2; mosquitto.conf(5) ``address``, ``round_robin``, ``try_private``)."""

from __future__ import annotations

import random
import socket
from collections.abc import Callable

from iotbroker.codec import encode_packet
from iotbroker.codec.enums import ReasonCode
from iotbroker.codec.packets import Connect
from iotbroker.config import split_address


def address_order(addresses: tuple[str, ...], round_robin: bool,
                  attempt: int) -> list[tuple[str, int]]:
    """The addresses to try, in order, for connection attempt number ``attempt``:
    always from the first (fail-over, mosquitto's default) or, with ``round_robin``,
    from the next one each time."""
    parsed = [split_address(a) for a in addresses]
    addrs = [a for a in parsed if a is not None]
    if round_robin and addrs:
        start = attempt % len(addrs)
        return addrs[start:] + addrs[:start]
    return addrs


def backoff(failures: int, base: float, cap: float,
            uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: exponential back-off
    with jitter, drawn in [d/2, d] with d = min(cap, base * 2^(failures - 1)); 0 after
    a connection that was lost (no failure yet)."""
    if failures <= 0:
        return 0.0
    delay = min(cap, base * 2 ** min(failures - 1, 32))
    return uniform(delay / 2, delay)


def encode_connect(packet: Connect, private: bool) -> bytes:
    """CONNECT bytes; with ``private`` the protocol level has mosquitto's bridge bit
    (0x80: "try_private", the remote then treats us as a bridge and does not send our
    own messages back)."""
    data = bytearray(encode_packet(packet, packet.protocol_version))
    if private:
        pos = 1
        while data[pos] & 0x80:
            pos += 1
        pos += 1  # variable header: protocol name (2 + 4 bytes), then the level
        data[pos + 6] |= 0x80
    return bytes(data)


def os_error_text(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"DNS: cannot resolve the remote address: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"TCP: connection refused ({exc.strerror or exc})"
    return f"TCP: {exc.strerror or exc}"


_V3_CONNACK = {1: "unacceptable protocol version", 2: "identifier rejected",
               3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}


def connack_text(code: int, version: int) -> str:
    if version == 5:
        try:
            name = ReasonCode(code).name.replace("_", " ").lower()
        except ValueError:
            name = "unknown"
        return f"0x{code:02x} {name}"
    return f"{code} {_V3_CONNACK.get(code, 'unknown')}"
