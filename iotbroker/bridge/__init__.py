"""Bridges: connections to other brokers as an MQTT client (issue 15, docs/bridge.md).

The local side of a bridge is an internal persistent session of the engine
(``$bridge/<name>``, never reachable from the network), subscribed to the ``out``
patterns with No Local: what it must forward is queued by the session machinery, in
RocksDB in the same commit as the rest of the broker's state, bounded by the bridge's
outbox limits. The remote side (:mod:`iotbroker.bridge.link`) speaks MQTT over our own
codec. Messages coming ``in`` are published into the engine with the bridge's session
as origin, so No Local keeps them from going back out.
"""
