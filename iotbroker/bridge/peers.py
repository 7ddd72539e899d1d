"""Two brokers bridged both ways: each message crosses the pair once (issue 15).

When A has a bridge to B and B has one to A, and both carry the same topics (``# both``
on each side), a message published on A reaches B twice: A's bridge *pushes* it (its
``out`` rule: A's outbox, on disk, delivered after any outage) and B's bridge *pulls*
it (B's ``in`` rule: B is an ordinary subscriber on A). The bridge-origin mark
(:mod:`iotbroker.bridge.origin`) cannot tell the two copies apart: the pulled copy
leaves A unmarked, as A sends it to an ordinary subscriber.

So the two bridges of a pair say who they are when they connect (MQTT 5.0 only, with
``origin_marker`` on), and the pulled copy gives way to the pushed one:

* a bridge's CONNECT carries the User Properties ``iotbroker-bridged: <its broker id>``
  and ``iotbroker-bridge-out: <its out rules, JSON>`` (MQTT 5.0 §3.1.2.11.8: User
  Properties of CONNECT are for the server; any server ignores what it does not know);
* an iotbroker with bridges answers such a CONNECT with ``iotbroker-bridged: <its own
  id>`` in the CONNACK (§3.2.2.3.16), and remembers the peer's ``out`` rules
  (:class:`Peers`) while the peer's session on it exists;
* a bridge that learned from the CONNACK that its remote is broker P skips a message
  it pulls from P when P's own bridge pushes that message here under the same topic:
  P's ``out`` rules map P's topic to the very topic this bridge's ``in`` rules map it
  to (:meth:`Peers.pushes`). It is acknowledged to P and counted (``duplicates``),
  not routed: the pushed copy, from P's outbox, is the one delivered.

The pushed copy is the one kept because it is the durable one (P's outbox keeps it
through outages and restarts); the pulled copy exists only while the pull link is up.
A peer that removes its bridge ends its session here (DISCONNECT with Session Expiry
Interval 0), and from then on this broker pulls everything again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from iotbroker.bridge.origin import MARKER
from iotbroker.bridge.topics import Rule, map_out
from iotbroker.codec.packets import Properties

log = logging.getLogger("iotbroker.bridge")

#: User Property of a bridge's CONNECT: its ``out`` rules (JSON list of
#: ``[pattern, local_prefix, remote_prefix]``), the topics it pushes to this server.
OUT_RULES = "iotbroker-bridge-out"

UserProperties = tuple[tuple[str, str], ...]


def hello(broker_id: str, rules: tuple[Rule, ...]) -> UserProperties:
    """The User Properties of a bridge's CONNECT: who it is and what it pushes."""
    out = [[r.local_filter[len(r.local_prefix):], r.local_prefix, r.remote_prefix]
           for r in rules if r.out]
    return ((MARKER, broker_id), (OUT_RULES, json.dumps(out, separators=(",", ":"))))


def remote_id(props: Properties) -> str:
    """The broker id an iotbroker remote gave in its CONNACK ("" for other brokers)."""
    for name, value in props.user_properties:
        if name == MARKER:
            return value
    return ""


def _parse_rules(text: str) -> tuple[Rule, ...] | None:
    try:
        raw = json.loads(text)
        return tuple(
            Rule(qos=2, out=True, inbound=False, local_prefix=str(lp), remote_prefix=str(rp),
                 local_filter=str(lp) + str(pattern), remote_filter=str(rp) + str(pattern))
            for pattern, lp, rp in raw)
    except (ValueError, TypeError):
        return None


class Peers:
    """What the bridges of other iotbrokers told this broker they push to it: per peer
    broker id, per client id of its bridge here, its ``out`` rules."""

    def __init__(self) -> None:
        self.by_broker: dict[str, dict[str, tuple[Rule, ...]]] = {}
        #: The peer broker id of each client id that said hello (for counting).
        self.broker_of: dict[str, str] = {}

    def said_hello(self, client_id: str, props: Properties) -> bool:
        """A CONNECT's User Properties; True when it came from a peer's bridge."""
        broker = ""
        rules: tuple[Rule, ...] | None = ()
        for name, value in props.user_properties:
            if name == MARKER:
                broker = value
            elif name == OUT_RULES:
                rules = _parse_rules(value)
        if not broker:
            return False
        if rules is None:
            log.warning("bridges: client %r says it is the bridge of broker %s but its "
                        "out rules cannot be read: its messages may arrive twice",
                        client_id, broker)
            rules = ()
        old = self.broker_of.get(client_id)
        if old is not None and old != broker:
            self.by_broker.get(old, {}).pop(client_id, None)
        self.broker_of[client_id] = broker
        self.by_broker.setdefault(broker, {})[client_id] = rules
        return True

    def pushes(self, broker: str, remote_topic: str, local_topic: str,
               alive: Callable[[str], bool]) -> bool:
        """Broker ``broker``'s bridge pushes its topic ``remote_topic`` here as
        ``local_topic``: one of its bridges whose session here still exists
        (``alive(client_id)``) has an ``out`` rule that maps it so."""
        clients = self.by_broker.get(broker)
        if not clients:
            return False
        for client_id, rules in clients.items():
            if alive(client_id) and map_out(rules, remote_topic) == local_topic:
                return True
        return False
