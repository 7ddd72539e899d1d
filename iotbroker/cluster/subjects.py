"""MQTT topic names and filters as NATS subjects, reversibly.

Rules of this room:

* MQTT (3.1.1 §4.7, 5.0 §4.7): ``/`` separates levels; a level may be empty
  (``a//b``, ``/a``, ``a/``) and may hold any UTF-8 character but U+0000 — ``.``,
  spaces, ``$``, ``*``, ``>`` included; topics are compared exactly [MQTT-4.7.3-4].
  In a filter ``+`` is a whole level and ``#`` the whole last level.
* NATS: a subject is tokens separated by ``.``; a token is never empty and has no
  whitespace; ``*`` (one token) and ``>`` (one or more trailing tokens) are
  wildcards when they are a whole token.

The mapping (one token per MQTT level, so MQTT levels and NATS tokens line up and
NATS's own matching does the routing):

* ``SUBJECT = PREFIX "." ROOT "." token ("." token)*``. ``PREFIX`` is
  ``cluster.subject_prefix``. ``ROOT`` is ``m`` for ordinary topics and ``d`` for
  topics whose first character is ``$``: a filter starting with a wildcard never
  matches a ``$`` topic [MQTT-4.7.2-1], and with two roots ``#`` → ``PREFIX.m.>``
  keeps that rule inside NATS too.
* A level's token: characters ``A-Z a-z 0-9 _ -`` stand for themselves; every other
  character is written ``~HH`` per byte of its UTF-8 encoding (upper-case hex), so a
  token is printable ASCII without ``.``, whitespace, ``*`` or ``>``. An empty level
  is the token ``~`` alone (a literal ``~`` is ``~7E``, so the two never meet).
* A filter: ``+`` → ``*``; a final ``#`` → ``>`` *and* the parent subject (MQTT's
  ``a/#`` also matches ``a`` [MQTT-4.7.1-2]), so :func:`filter_to_subjects` returns
  one or two subjects. A filter whose first level is a wildcard subscribes under the
  ``m`` root only.

Trade-off: an escaped character costs three bytes (``~2F``); topics made of
letters, digits, ``_`` and ``-`` — most IoT topics — are unchanged and readable in
``nats sub``. NATS keeps a subject inside the control line (4 KiB by default,
``max_control_line``): :func:`topic_to_subject` is not limited here, the cluster
room counts and refuses to forward what the server would reject.
"""

from __future__ import annotations

import re

__all__ = [
    "ROOT_DOLLAR",
    "ROOT_PLAIN",
    "decode_level",
    "encode_level",
    "filter_to_subjects",
    "key_to_topic",
    "subject_to_topic",
    "topic_to_key",
    "topic_to_subject",
    "valid_prefix",
]

ROOT_PLAIN = "m"
ROOT_DOLLAR = "d"
EMPTY_LEVEL = "~"
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_HEX = frozenset("0123456789ABCDEF")


def valid_prefix(prefix: str) -> bool:
    """A subject prefix: NATS tokens of ``A-Z a-z 0-9 _ -`` joined by ``.``."""
    return _PREFIX.fullmatch(prefix) is not None


def encode_level(level: str) -> str:
    """One MQTT topic level as one NATS token (never empty, never a wildcard)."""
    if not level:
        return EMPTY_LEVEL
    safe = _SAFE
    if all(c in safe for c in level):
        return level
    out: list[str] = []
    for c in level:
        if c in safe:
            out.append(c)
        else:
            out.extend(f"~{b:02X}" for b in c.encode())
    return "".join(out)


def decode_level(token: str) -> str:
    """The inverse of :func:`encode_level`; ValueError for a token it cannot produce."""
    if token == EMPTY_LEVEL:
        return ""
    if "~" not in token:
        if not token or any(c not in _SAFE for c in token):
            raise ValueError(f"not an encoded MQTT level: {token!r}")
        return token
    raw = bytearray()
    i = 0
    n = len(token)
    while i < n:
        c = token[i]
        if c == "~":
            hex2 = token[i + 1 : i + 3]
            if len(hex2) != 2 or not set(hex2) <= _HEX:
                raise ValueError(f"bad escape in {token!r}")
            raw.append(int(hex2, 16))
            i += 3
        elif c in _SAFE:
            raw.append(ord(c))
            i += 1
        else:
            raise ValueError(f"not an encoded MQTT level: {token!r}")
    return raw.decode()  # UnicodeDecodeError is a ValueError


def _root(first_char: str) -> str:
    return ROOT_DOLLAR if first_char == "$" else ROOT_PLAIN


def topic_to_subject(prefix: str, topic: str) -> str:
    """The subject a message on MQTT topic name ``topic`` is published to."""
    return ".".join([prefix, _root(topic[:1]), *map(encode_level, topic.split("/"))])


def subject_to_topic(prefix: str, subject: str) -> str:
    """The MQTT topic name of a subject made by :func:`topic_to_subject`."""
    head = prefix + "."
    if not subject.startswith(head):
        raise ValueError(f"subject {subject!r} is not under {prefix!r}")
    root, _, rest = subject[len(head):].partition(".")
    if root not in (ROOT_PLAIN, ROOT_DOLLAR) or not rest:
        raise ValueError(f"subject {subject!r} has no MQTT topic")
    topic = "/".join(decode_level(t) for t in rest.split("."))
    if (root == ROOT_DOLLAR) != topic.startswith("$"):
        raise ValueError(f"subject {subject!r} is under the wrong root")
    return topic


def filter_to_subjects(prefix: str, topic_filter: str) -> list[str]:
    """The NATS subjects whose union matches exactly the topics ``topic_filter``
    matches (a valid, non-shared MQTT filter)."""
    levels = topic_filter.split("/")
    first = levels[0]
    root = ROOT_PLAIN if first in ("+", "#") else _root(first[:1])
    tokens: list[str] = []
    for level in levels:
        if level == "+":
            tokens.append("*")
        elif level == "#":
            break
        else:
            tokens.append(encode_level(level))
    base = [prefix, root, *tokens]
    if levels[-1] != "#":
        return [".".join(base)]
    # "#" matches its parent level too [MQTT-4.7.1-2]; "#" alone has no parent level
    # (every topic has at least one level, so "PREFIX.m.>" is all of them).
    if tokens:
        return [".".join(base), ".".join([*base, ">"])]
    return [".".join([*base, ">"])]


def topic_to_key(topic: str) -> str:
    """The JetStream KV key of a topic (the retained bucket): its subject without the
    prefix, ``~`` written ``=`` (KV keys allow ``- / _ = . A-Z a-z 0-9``; ``=`` is
    itself escaped in a level, ``~3D``, so this is one-to-one)."""
    return topic_to_subject("", topic)[1:].replace("~", "=")


def key_to_topic(key: str) -> str:
    """The inverse of :func:`topic_to_key`."""
    if "~" in key:
        raise ValueError(f"not a retained key: {key!r}")
    return subject_to_topic("", "." + key.replace("=", "~"))
