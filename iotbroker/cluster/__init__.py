"""The cluster room: this broker as one node of a cluster on NATS (docs/cluster.md).

It drives the engine through its narrow face (design.md, "new rooms"): after each turn
it drains :attr:`Engine.forwarding <iotbroker.engine.engine.Engine.forwarding>` and
:attr:`Engine.interest_touched`, publishes to / subscribes on NATS, and hands messages
from other nodes to :meth:`Engine.route_remote`. ``subjects``, ``interest`` and
``wire`` are pure; ``node`` does the I/O (nats-py, the ``cluster`` extra).
"""
