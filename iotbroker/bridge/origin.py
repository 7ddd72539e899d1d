"""Bridge-origin marking: which brokers a message has already been in (issue 15).

No Local (MQTT 5.0 §3.8.3.1) keeps a message from going back over the bridge it came
in on, but not around a cycle of several bridges (A bridged to B and B bridged to A,
or a broker in the middle): there the message enters each broker as an ordinary
client's PUBLISH. MQTT has no hop count, so the bridge carries its own marker in the
message, as a User Property (MQTT 5.0 §3.3.2.3.7: forwarded unaltered to every
subscriber, [MQTT-3.3.2-18], so it survives any MQTT 5.0 broker in the middle):

* name :data:`MARKER` (``iotbroker-bridged``), value one broker id; one pair per broker
  the message has been in (a User Property name may appear more than once,
  [MQTT-3.3.2-19]).
* A broker adds its id when a bridge brings a message in (``in`` rules) and when a
  bridge sends one out (``out`` rules), if not there yet.
* A broker refuses (acknowledges and drops) a message that arrives carrying its own
  id, whether over its bridge's ``in`` rule or from a client on a listener (a remote
  bridge's ``out``): the message has already been here, routing it again is the loop.

With RocksDB storage the broker id is derived from the host name and the absolute
storage path, so it is the same across restarts (a message waiting in a remote outbox
while this broker restarts is still recognised) and differs between brokers on one
host (two brokers cannot open one RocksDB directory). With the memory backend nothing
stops two brokers sharing a path, so the id is random per start.

MQTT 3.1.1 has no properties: nothing is marked on 3.1.1 links (see docs/bridge.md).
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import replace

from iotbroker.codec.packets import Properties

#: The User Property name of the marker (documented in docs/bridge.md).
MARKER = "iotbroker-bridged"


def broker_id(backend: str, storage_path: str) -> str:
    """A short id for this broker: distinct per data directory, stable across restarts
    when the data directory is RocksDB's."""
    if backend != "rocksdb":
        return uuid.uuid4().hex[:12]
    seed = f"{socket.gethostname()}\0{os.path.abspath(storage_path)}"
    return hashlib.sha256(seed.encode()).hexdigest()[:12]


def crossed(props: Properties, broker: str) -> bool:
    """The message carries ``broker``'s mark: it has been in that broker already."""
    return (MARKER, broker) in props.user_properties


def stamp(props: Properties, broker: str) -> Properties:
    """``props`` with ``broker``'s mark added (unchanged if it is there already)."""
    if crossed(props, broker):
        return props
    return replace(props, user_properties=(*props.user_properties, (MARKER, broker)))
