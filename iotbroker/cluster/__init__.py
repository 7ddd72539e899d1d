"""The cluster room: this broker as one node of a cluster on NATS (docs/cluster.md).

It drives the engine through its narrow face (design.md, "new rooms"): after each turn
it drains :attr:`Engine.forwarding <iotbroker.engine.engine.Engine.forwarding>` and
:attr:`Engine.interest_touched`, announces its interest and sends each turn's
messages to the nodes that want them (one NATS message per node), and hands messages
from other nodes to :meth:`Engine.route_remote`. ``subjects``, ``interest``,
``remote``, ``shared`` and ``wire`` are pure; ``node`` does the I/O (nats-py, the
``cluster`` extra).
"""
