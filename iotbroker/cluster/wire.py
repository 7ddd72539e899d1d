"""How messages travel between nodes (docs/cluster.md, "On the wire").

Live, on core NATS, a node sends one NATS message per destination node per turn on
that node's subject ``<prefix>.node.<process token>`` (:func:`encode_batch`): the
turn's messages for it, across topics, in order, as *parts* (batch version 4)::

    0x04 | len: u8 | sender: len bytes | part*
    part:   ITEMS part | NAMED part
    ITEMS:  0x00 | seq: u64 | count: u16 | item * count
    item:   size: u32 | message record | groups: u16 | group * groups
    group:  len: u16 | name | len: u16 | filter
    NAMED:  0x02 | count: u16 | created_at: f64 | generation: u32 | defs: u16
                 | id: u16 * defs | len: u16 * defs | name * defs
                 | topic: u16 * count | origin: u16 * count
                 | size: u32 * count | payload * count

A NAMED part carries *plain* QoS 0 messages (:func:`is_plain`: not retained, no
properties, no expiry, no shared groups; the common case) of one created time: per
message the *id* of its topic and of its origin and its payload's size (8 bytes per
message besides the payload). The ids are those of a **name dictionary that lasts
across batches**, one per (sender, destination) pair (:class:`NameTable` on the
sender, :class:`NameBook` on the receiver): a part *defines* (id, name) for each name
it uses that the receiver has not confirmed yet, and names a confirmed one by its id
alone. So a busy topic's name is encoded, sent and decoded once, not once per part
(an ITEMS part: 41 bytes, the topic and the origin per message, and a record to
decode). The receiver routes the part in one call. Other messages travel in ITEMS
parts.

The dictionary on a lossy fabric (core NATS is at most once; docs/cluster.md, "Routing
by announced interest"):

* The receiver confirms the ids it was given (a *known* control message, below); the
  sender names a topic by its id alone only once confirmed, and repeats the definition
  in every part until then. A lost batch loses its own messages, as core NATS would,
  and never the later ones.
* Ids are never reused within a *generation*; a sender's generations only grow (one
  counter for all its destinations), and a part names its generation. A table that is
  full (:data:`MAX_NAMES`) starts a new generation; so does one the receiver asks to
  reset. A receiver keeps one generation per sender: a part of another generation
  starts its table anew (one sender's parts arrive in the order sent).
* A receiver that meets an id it does not know (it lost its table) drops the message,
  counts it (``messages/unnamed``) and asks for a reset (a *reset* control message);
  a message is never delivered under a name it was not defined with. A restarted node
  is a new sender (and a new destination): its tables start empty.

Control messages go from the receiver to the sender's node subject::

    0x84 | len: u8 | sender: len bytes | op: u8 (1 known, 2 reset) | generation: u32
         | count: u16 | id: u16 * count

``groups`` are the shared subscription groups (name, filter without the ``$share``
prefix) that the sending node gave this message to on that node (MQTT 5.0 §4.8.2,
:mod:`iotbroker.cluster.shared`); a message record names its topic. ``seq`` is 0 for
a part of QoS 0 messages (any topics); a run of one topic's QoS 1/2 messages is a part
of its own and carries the sequence number of its copy in the QoS stream, whose
payload is the per-topic format below (:func:`encode`), so that a node routes
whichever copy comes first (:class:`Dedup`).

A node does not decode a batch of another version (version 3 named a PLAIN part's
topics in every part; version 2 had no part kinds and carried every message as an
item): it counts it in ``messages/undecodable`` and logs it. Nodes of both versions
in one cluster, as during a rolling upgrade, do not get each other's live messages
(QoS 1/2 ones still come through the QoS stream, whose format is unchanged):
docs/cluster.md, "Routing by announced interest".

In the QoS stream (:mod:`iotbroker.cluster.qos_stream`) the subject is the MQTT topic
(:mod:`iotbroker.cluster.subjects`); the messages one turn accepted on one topic
travel together, as one stream message::

    0x01 | seq: u64 big-endian | len: u8 | sender: len bytes
         | count: u16 | (size: u32 | message record) * count

``sender`` names the sending process (node name and a start-up nonce) and ``seq``
counts its batches: the pair (sender, seq) lets a node route the live and the stream
copy once (:class:`Dedup`). A message
record is the store's versioned RETAINED record
(:func:`iotbroker.storage.records.encode_retained`: QoS, retain, created/expiry times,
origin client id, MQTT 5.0 properties, payload), one encoding with golden bytes for
disk and wire. Batching per topic and turn is what makes a fan-in of one busy topic
cheap: NATS's per-message cost (parsing in nats-py, one callback) is paid once per
batch (benchmarks/cluster_routing.py); batching per destination node shares it
across topics too.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any, Final

from mypy_extensions import i64

from iotbroker.codec.packets import NO_PROPERTIES
from iotbroker.core.router import RemoteTargets, Router
from iotbroker.core.subscriptions import Matches, SubscriptionTrie
from iotbroker.message import Message
from iotbroker.storage.records import (
    decode_message_at,
    decode_retained,
    encode_retained,
    retained_pieces,
)

VERSION = 1
#: Records in one NATS message at most (and about this many bytes, below). Constants
#: used per message are ``Final``: mypyc inlines them (a plain module global is a
#: dict lookup each time it is read).
MAX_BATCH: Final = 1000
MAX_BATCH_BYTES: Final = 256 * 1024
_HEAD = struct.Struct(">BQB")
_COUNT = struct.Struct(">H")
_SIZE = struct.Struct(">I")
BATCH_VERSION = 4
_PART = struct.Struct(">BQH")  # ITEMS, seq, count
_NAMED = struct.Struct(">BHdIH")  # NAMED, count, created_at, generation, defs
_CONTROL = struct.Struct(">BIH")  # op, generation, count
_U16 = struct.Struct(">H")
_NO_GROUPS = b"\x00\x00"
#: The ordered command queue's "publish" kind (``node._PUB``), for :func:`send_qos0`.
PUB: Final = 0
#: Part kinds (:func:`encode_batch`).
ITEMS = 0
NAMED = 2
#: First byte of a name dictionary control message (:func:`encode_control`).
CONTROL = 0x84
#: Control operations: the receiver knows these ids; the receiver wants a new generation.
KNOWN = 1
RESET = 2
#: Names (topics and origins) in one generation of a :class:`NameTable` at most (u16 ids).
MAX_NAMES: Final = 65_535
#: A :class:`NameBook`'s slot of an id it was not given: never a name (MQTT strings
#: exclude U+0000, [MQTT-1.5.4-2]); compared by identity.
_UNKNOWN: Final = "\x00"

#: (share group, filter without the $share prefix)
Group = tuple[str, str]
#: The shared groups of a message given to none (a NAMED part's messages).
NO_GROUPS: tuple[Group, ...] = ()
#: One decoded part: (seq, messages, their shared groups; None for a NAMED part: none).
Part = tuple[int, list[Message], list[list[Group]] | None]


def item(rec: bytes, groups: list[Group]) -> bytes:
    """One message of an ITEMS part: its :func:`record` and the shared groups it is
    given to on the destination node."""
    if not groups:
        return b"".join([_SIZE.pack(len(rec)), rec, _NO_GROUPS])
    parts = [_SIZE.pack(len(rec)), rec, _U16.pack(len(groups))]
    for group, topic_filter in groups:
        g = group.encode()
        f = topic_filter.encode()
        parts += [_U16.pack(len(g)), g, _U16.pack(len(f)), f]
    return b"".join(parts)


def encode_part(seq: int, items: list[bytes]) -> bytes:
    """One ITEMS part of a batch (:func:`encode_batch`): :func:`item` results, at most
    :data:`MAX_BATCH`."""
    return b"".join([_PART.pack(ITEMS, seq, len(items)), *items])


def encode_named(created_at: float, generation: int, def_ids: list[int],
                 def_names: list[bytes], heads: list[int], payloads: list[bytes]) -> bytes:
    """One NAMED part (:func:`encode_batch`): the definitions (``def_ids[i]`` names
    ``def_names[i]`` in ``generation``), then ``heads``, (topic id, origin id, size)
    per message; at most :data:`MAX_BATCH` messages."""
    n = len(payloads)
    k = len(def_ids)
    return b"".join([
        _NAMED.pack(NAMED, n, created_at, generation, k),
        struct.pack(f">{k}H{k}H", *def_ids, *[len(name) for name in def_names]),
        *def_names,
        struct.pack(f">{n}H{n}H{n}I", *heads[0::3], *heads[1::3], *heads[2::3]),
        *payloads])


def encode_batch(sender: bytes, parts: list[bytes]) -> bytes:
    """One NATS message for one destination node: :func:`encode_part` and
    :func:`encode_named` results."""
    return b"".join([bytes([BATCH_VERSION, len(sender)]), sender, *parts])


def encode_control(sender: bytes, op: int, generation: int, ids: list[int]) -> bytes:
    """A name dictionary control message from a receiving node (``sender``) to the
    node whose batches it read: :data:`KNOWN` (it holds these ids of ``generation``)
    or :data:`RESET` (it met ids of ``generation`` it does not hold; no ids)."""
    ids = ids[:MAX_NAMES]
    n = len(ids)
    return b"".join([bytes([CONTROL, len(sender)]), sender,
                     _CONTROL.pack(op, generation, n), struct.pack(f">{n}H", *ids)])


def decode_control(data: bytes) -> tuple[bytes, int, int, list[int]]:
    """(sender, op, generation, ids) of :func:`encode_control`; ValueError else."""
    if len(data) < 2 or data[0] != CONTROL:
        raise ValueError("not a name dictionary control message")
    n = data[1]
    sender = data[2 : 2 + n]
    pos = 2 + n
    try:
        op, generation, count = _CONTROL.unpack_from(data, pos)
        pos += _CONTROL.size
        ids = list(struct.unpack_from(f">{count}H", data, pos))
    except struct.error as exc:
        raise ValueError(f"control message truncated: {exc}") from None
    if pos + 2 * count != len(data) or op not in (KNOWN, RESET):
        raise ValueError("control message malformed")
    return sender, op, generation, ids


def qos0_only(messages: list[Message]) -> bool:
    """No message of ``messages`` is QoS 1/2 or retained: then the sending node's
    per-message work for those (stream runs, the retained bucket, stream floors,
    ``ClusterNode.after_turn``) has nothing to do, and is skipped without a loop in
    interpreted code over every message."""
    return all(not (message.qos or message.retain) for message in messages)


def is_plain(message: Message) -> bool:
    """Does ``message`` travel in a NAMED part (given no shared groups)? QoS 0, not
    retained, no properties, no expiry: all a NAMED part does not carry."""
    return (not message.qos and not message.retain and message.expires_at is None
            and message.properties is NO_PROPERTIES)


class NameTables:
    """The sending node's name dictionaries, one :class:`NameTable` per destination
    node process (its token), and the one generation counter they share (a
    generation is never used twice by this process, even for a table made anew)."""

    __slots__ = ("_last", "epoch", "routes", "tables")

    def __init__(self) -> None:
        self._last = 0
        self.tables: dict[str, NameTable] = {}
        #: Counts every change of a table's confirmed ids (a confirmation, a new
        #: generation, a table made or forgotten): a :class:`Route`'s ids are current
        #: while it is the same.
        self.epoch = 0
        #: topic -> where :func:`add_qos0` sends it and by which ids (bounded).
        self.routes: dict[str, Route] = {}

    def next_generation(self) -> int:
        self._last += 1
        return self._last

    def of(self, token: str) -> NameTable:
        table = self.tables.get(token)
        if table is None:
            table = self.tables[token] = NameTable(self)
            self.epoch += 1
        return table

    def forget(self, token: str) -> None:
        """Drop ``token``'s table (a process silent for long: ``_forget_names``)."""
        if self.tables.pop(token, None) is not None:
            self.epoch += 1

    def outbox(self, token: str) -> Outbox:
        """A new Outbox for a turn's messages to ``token``, with its table."""
        return Outbox(self.of(token))


class NameTable:
    """One destination's name dictionary on the sending node, in the current
    generation: the names the destination confirmed -> their ids (``ids``: sent by id
    alone), the names given an id it has not confirmed yet (``pending``: defined in
    every part that uses them), and the names by id (``names``, encoded ``raw``)."""

    __slots__ = ("_tables", "codes", "generation", "ids", "names", "pending", "raw")

    def __init__(self, tables: NameTables) -> None:
        self._tables = tables
        self.generation = tables.next_generation()
        self.ids: dict[str, int] = {}
        self.pending: dict[str, int] = {}
        self.names: list[str] = []
        self.raw: list[bytes] = []
        #: each id as its 2 bytes on the wire (``_U16``), by id
        self.codes: list[bytes] = []

    def add(self, name: str) -> int:
        """A new id for ``name`` (the caller checked it has none and there is room)."""
        i = len(self.raw)
        self.pending[name] = i
        self.names.append(name)
        self.raw.append(name.encode())
        self.codes.append(_U16.pack(i))
        return i

    def renew(self) -> None:
        """A new generation: every name gets a new id, defined again when used."""
        self._tables.epoch += 1
        self.generation = self._tables.next_generation()
        self.ids = {}
        self.pending = {}
        self.names = []
        self.raw = []
        self.codes = []

    def confirmed(self, generation: int, ids: list[int]) -> int:
        """The destination holds ``ids`` of ``generation`` (a :data:`KNOWN` control
        message); one of an older generation is ignored. Returns the ids taken."""
        if generation != self.generation:
            return 0
        names = self.names
        pending = self.pending
        confirmed = self.ids
        n = len(names)
        taken = 0
        for i in ids:
            if i < n:
                name = names[i]
                if pending.pop(name, -1) == i:
                    confirmed[name] = i
                    taken += 1
        if taken:
            self._tables.epoch += 1
        return taken

    def reset(self, generation: int) -> bool:
        """The destination lost ``generation`` (a :data:`RESET` control message):
        start a new one, unless that was done already."""
        if generation != self.generation:
            return False
        self.renew()
        return True


class Outbox:
    """One destination node's messages of a turn, in order, cut into NATS payloads.

    Plain QoS 0 messages (:func:`is_plain`) of one created time (one read's) gather
    into a NAMED part, which names each topic and origin by its id in the
    destination's :class:`NameTable` (defined in the part unless the destination
    confirmed it); other QoS 0 messages into an ITEMS part; a QoS 1/2 run is an ITEMS
    part of its own. A message of another kind or time closes the open part: the
    order is kept (each topic's, [MQTT-4.6.0-5], and all others too), and each decoded
    message equals the one sent."""

    __slots__ = ("_at", "_count", "_defs", "_generation", "_oid_one", "_oids", "_origin",
                 "_origin_id", "_origin_ids", "_origin_raw", "_payloads", "_pieces", "_size",
                 "_size_one", "_sizes", "_tid_one", "_tids", "names", "parts")

    def __init__(self, names: NameTable | None = None) -> None:
        #: the destination's name dictionary (None: a private one, never confirmed,
        #: so that every part defines its names: tests, benchmarks/cluster_wire.py)
        self.names = NameTables().of("") if names is None else names
        self.parts: list[tuple[bytes, int]] = []
        self._pieces: list[bytes] = []  # the open ITEMS part's items
        self._count = 0
        self._size = 0
        # the open NAMED part: ids it defines, its columns (topic and origin ids as
        # their 2 bytes on the wire, sizes), payloads, created time, generation. A
        # column whose messages so far all have one value is that value alone
        # (``_tid_one``, ``_oid_one``, ``_size_one``; the list empty): one publisher's
        # messages, one topic's, payloads of one size need no item per message, and
        # the column is written as that value times the count (:meth:`_close`). The
        # list is made at the first other value.
        self._defs: dict[int, None] = {}
        self._tids: list[bytes] = []
        self._oids: list[bytes] = []
        self._sizes: list[int] = []
        self._tid_one = b""
        self._oid_one = b""
        self._size_one = -1
        self._payloads: list[bytes] = []
        self._at = 0.0
        self._generation = 0
        # the last confirmed origin (compared by identity: one client's messages share
        # its client id str), its id and that id's bytes, valid while the table's
        # ``ids`` is this dict (a new generation makes a new one; a confirmation only
        # adds ids)
        self._origin = ""
        self._origin_id = -1
        self._origin_raw = b""
        self._origin_ids: dict[str, int] = {}

    def add_plain(self, message: Message, topic_id: int = -1, topic_raw: bytes = b"") -> None:
        """A plain message (:func:`is_plain`) without shared groups. ``topic_id``,
        ``topic_raw``: its topic's confirmed id in this table and that id's 2 bytes
        (``_U16``), if the caller knows them (a :class:`Route`'s), else -1 (looked
        up here). Each id goes into the part as its bytes (``NameTable.codes``): no
        int is boxed per message, and the part is joined, not packed
        (:meth:`_close`)."""
        payloads = self._payloads
        if self._count or (payloads and message.created_at != self._at):
            self._close()
            payloads = self._payloads
        ids = self.names.ids
        topic = topic_id
        if topic < 0:
            topic = ids.get(message.topic, -1)
            topic_raw = b""
        name = message.origin
        if name is self._origin and ids is self._origin_ids:
            origin = self._origin_id
            origin_raw = self._origin_raw
        else:
            origin = ids.get(name, -1)
            origin_raw = b""
            if origin >= 0:
                origin_raw = self.names.codes[origin]
                self._origin = name
                self._origin_id = origin
                self._origin_raw = origin_raw
                self._origin_ids = ids
        if topic < 0 or origin < 0:  # not confirmed: defined in this part
            topic, origin = self._define(message.topic, message.origin)
            topic_raw = b""
            origin_raw = self.names.codes[origin]
            payloads = self._payloads
        if len(topic_raw) == 0:  # (native; ``not topic_raw`` is PyObject_IsTrue)
            topic_raw = self.names.codes[topic]
        if not payloads:
            self._at = message.created_at
            self._generation = self.names.generation
        payload = message.payload
        if type(payload) is not bytes:
            payload = bytes(payload)
        size = len(payload)
        # each column: a list once two values met, else one value (see __init__);
        # values compared by identity (one id's bytes are one object in a table)
        tids = self._tids
        if tids:
            tids.append(topic_raw)
        elif topic_raw is not self._tid_one:
            if payloads:
                self._tids = [self._tid_one] * len(payloads)
                self._tids.append(topic_raw)
            else:
                self._tid_one = topic_raw
        oids = self._oids
        if oids:
            oids.append(origin_raw)
        elif origin_raw is not self._oid_one:
            if payloads:
                self._oids = [self._oid_one] * len(payloads)
                self._oids.append(origin_raw)
            else:
                self._oid_one = origin_raw
        sizes = self._sizes
        if sizes:
            sizes.append(size)
        elif size != self._size_one:
            if payloads:
                self._sizes = [self._size_one] * len(payloads)
                self._sizes.append(size)
            else:
                self._size_one = size
        payloads.append(payload)
        self._size += size
        if len(payloads) >= MAX_BATCH or self._size >= MAX_BATCH_BYTES:
            self._close()

    def add_run(self, messages: list[Message], start: int, routes: dict[str, Route],
                version: int, epoch: int, token: str) -> int:
        """Cross-node, :func:`add_qos0`'s common case, right after an
        :meth:`add_plain` into this box: from ``messages[start]`` on, each message that
        continues the open NAMED part as :meth:`add_plain` would add it (plain, QoS 0,
        the part's created time, its last confirmed origin by identity, a ``routes``
        Route current at ``version`` and ``epoch``, not shared, with ``token`` as its one
        destination and a confirmed topic id) goes in, into the same columns, in one
        loop with the part's state in locals (no call, no attribute reads per
        message). Stops at the first other message, or when the part is full (closed
        as add_plain closes it); returns its index: the caller goes on from there, the
        order unchanged [MQTT-4.6.0-5]."""
        payloads = self._payloads
        count = len(payloads)
        if (self._count or count == 0 or count >= MAX_BATCH
                or self._origin_ids is not self.names.ids or self._origin_id < 0):
            return start
        n = len(messages)
        i = start
        at = self._at
        origin = self._origin
        origin_raw = self._origin_raw
        no_properties = NO_PROPERTIES  # (a module global is a dict lookup per read)
        tids = self._tids
        tid_one = self._tid_one
        oids = self._oids
        oid_one = self._oid_one
        sizes = self._sizes
        size_one = self._size_one
        total = self._size
        while i < n and count < MAX_BATCH and total < MAX_BATCH_BYTES:
            message = messages[i]
            if (message.qos or message.retain or message.expires_at is not None
                    or message.properties is not no_properties
                    or message.created_at != at or message.origin is not origin):
                break
            route = routes.get(message.topic)
            if (route is None or route.version != version or route.shared
                    or route.epoch != epoch or route.one_id < 0
                    or route.one_token != token):
                break
            payload = message.payload
            if type(payload) is not bytes:
                break
            raw = route.one_raw
            size = len(payload)
            # each column as add_plain keeps it: a list once two values met
            if tids:
                tids.append(raw)
            elif raw is not tid_one:
                tids = [tid_one] * count
                tids.append(raw)
            if oids:
                oids.append(origin_raw)
            elif origin_raw is not oid_one:
                oids = [oid_one] * count
                oids.append(origin_raw)
            if sizes:
                sizes.append(size)
            elif size != size_one:
                sizes = [size_one] * count
                sizes.append(size)
            payloads.append(payload)
            total += size
            count += 1
            i += 1
        self._tids = tids
        self._oids = oids
        self._sizes = sizes
        self._size = total
        if count >= MAX_BATCH or total >= MAX_BATCH_BYTES:
            self._close()
        return i

    def _define(self, topic: str, origin: str) -> tuple[int, int]:
        """The ids of names not all confirmed, each to be defined in the open part
        (a new generation, in a new part, when the table is full)."""
        table = self.names
        if len(table.raw) + 2 > MAX_NAMES and not (
                (topic in table.ids or topic in table.pending)
                and (origin in table.ids or origin in table.pending)):
            if self._payloads:
                self._close()
            table.renew()
        out: list[int] = []
        for name in (topic, origin):
            i = table.ids.get(name)
            if i is None:
                i = table.pending.get(name)
                if i is None:
                    i = table.add(name)
                self._defs[i] = None
            out.append(i)
        return out[0], out[1]

    def add_message(self, size: int, pieces: list[bytes]) -> None:
        """A QoS 0 message that is not plain, without shared groups, as
        :func:`record_pieces`: its record never joined on its own."""
        if self._payloads:
            self._close()
        self._pieces += (_SIZE.pack(size), *pieces, _NO_GROUPS)
        self._count += 1
        self._size += size
        if self._count >= MAX_BATCH or self._size >= MAX_BATCH_BYTES:
            self._close()

    def add(self, encoded_item: bytes) -> None:
        """A QoS 0 message as an :func:`item` (not plain, or with shared groups)."""
        if self._payloads:
            self._close()
        self._pieces.append(encoded_item)
        self._count += 1
        self._size += len(encoded_item)
        if self._count >= MAX_BATCH or self._size >= MAX_BATCH_BYTES:
            self._close()

    def part(self, seq: int, items: list[bytes]) -> None:
        """A run of QoS 1/2 messages (:func:`item` results) with its stream seq."""
        self._close()
        for start in range(0, len(items), MAX_BATCH):
            chunk = items[start : start + MAX_BATCH]
            self.parts.append((encode_part(seq, chunk), len(chunk)))

    def _close(self) -> None:
        if self._count:
            self.parts.append((b"".join([_PART.pack(ITEMS, 0, self._count), *self._pieces]),
                               self._count))
            self._pieces = []
            self._count = 0
        payloads = self._payloads
        if payloads:
            # encode_named's bytes, from the columns: each id's bytes joined, the
            # sizes packed once
            defs = list(self._defs)
            raw = self.names.raw
            n = len(payloads)
            k = len(defs)
            pieces = [_NAMED.pack(NAMED, n, self._at, self._generation, k),
                      struct.pack(f">{k}H{k}H", *defs, *[len(raw[i]) for i in defs]),
                      *[raw[i] for i in defs]]
            if self._tids:
                pieces += self._tids
                self._tids = []
            else:
                pieces.append(self._tid_one * n)
            if self._oids:
                pieces += self._oids
                self._oids = []
            else:
                pieces.append(self._oid_one * n)
            if self._sizes:
                pieces.append(struct.pack(f">{n}I", *self._sizes))
                self._sizes = []
            else:
                pieces.append(_SIZE.pack(self._size_one) * n)
            pieces += payloads
            self.parts.append((b"".join(pieces), n))
            self._defs = {}
            self._payloads = []
        self._size = 0

    def batches(self, sender: bytes) -> list[tuple[bytes, int]]:
        """(NATS payload, messages in it), each within :data:`MAX_BATCH_BYTES`
        (unless one part is larger)."""
        self._close()
        out: list[tuple[bytes, int]] = []
        batch: list[bytes] = []
        size = count = 0
        for part, n in self.parts:
            if batch and size + len(part) > MAX_BATCH_BYTES:
                out.append((encode_batch(sender, batch), count))
                batch, size, count = [], 0, 0
            batch.append(part)
            size += len(part)
            count += n
        if batch:
            out.append((encode_batch(sender, batch), count))
        return out


class Route:
    """Where the sending node sends a topic's QoS 0 messages (:func:`add_qos0`): the
    tokens of the nodes whose interest matches it (taken at the interest trie's
    ``version``), whether another node's shared group does (then
    ``ClusterNode._forward`` decides), and the topic's confirmed id in each token's
    table (-1: none; taken at :attr:`NameTables.epoch`). One dict lookup per
    message instead of a match of the interest trie and a lookup per table."""

    __slots__ = ("epoch", "ids", "one_id", "one_raw", "one_token", "raw", "shared", "tokens",
                 "version")

    def __init__(self, version: int, shared: bool, tokens: list[str]) -> None:
        self.version = version
        self.shared = shared
        self.tokens = tokens
        self.epoch = -1
        self.ids: list[int] = []
        #: each id's 2 bytes on the wire (b"": none)
        self.raw: list[bytes] = []
        #: one destination (the common case): its token ("": none or several), and
        #: its ``ids[0]``, ``raw[0]`` as attributes of their own (read per message
        #: without three lists, scattered in memory, and an int boxed and unboxed)
        self.one_token = tokens[0] if len(tokens) == 1 else ""
        self.one_id = -1
        self.one_raw = b""


#: Routes kept at most (then the dict starts anew, as the trie's match cache).
MAX_ROUTES: Final = 100_000


def add_qos0(messages: list[Message], start: int, interest: SubscriptionTrie,
             out: dict[str, Outbox], names: dict[str, bytes], tables: NameTables) -> int:
    """The sending node's common case (``ClusterNode._forward``), compiled: from
    ``messages[start]`` on, each QoS 0 message that no other node's shared group
    matches goes into the Outbox of every node whose announced interest
    (``interest``, :mod:`iotbroker.cluster.remote`) matches it, in order, plain ones
    into NAMED parts (``tables``: the destinations' name dictionaries). Stops at the
    first message it does not handle (QoS 1/2, a shared group) and returns its index
    (``len(messages)``: all handled).

    A topic's destinations and ids are kept in a :class:`Route` (``tables.routes``),
    current while the interest trie's ``version`` and the tables' ``epoch`` are those
    it was taken at: a change of either is seen at the next message."""
    n = len(messages)
    i = start
    routes = tables.routes
    version = interest.version
    no_properties = NO_PROPERTIES  # (a module global is a dict lookup per read)
    last_token = ""  # a route's token and its box, kept across messages
    last_box: Outbox | None = None
    while i < n:
        message = messages[i]
        if message.qos:
            return i
        topic = message.topic
        route = routes.get(topic)
        if route is None or route.version != version:
            matches = interest.match(topic)
            route = Route(version, bool(matches.shared), list(matches.direct))
            if len(routes) >= MAX_ROUTES:
                routes = tables.routes = {}
            routes[topic] = route
        if route.shared:
            return i
        tokens = route.tokens
        if tokens:
            if (not message.retain and message.expires_at is None
                    and message.properties is no_properties):  # is_plain
                if route.epoch != tables.epoch:  # (an add_plain may start a generation)
                    ids: list[int] = []
                    raws: list[bytes] = []
                    for token in tokens:
                        table = tables.of(token)
                        tid = table.ids.get(topic, -1)
                        ids.append(tid)
                        raws.append(table.codes[tid] if tid >= 0 else b"")
                    route.ids = ids
                    route.raw = raws
                    route.one_id = ids[0]
                    route.one_raw = raws[0]
                    route.epoch = tables.epoch
                token = route.one_token
                if token:  # the common case, one destination: the last box, by identity
                    if token is not last_token or last_box is None:
                        box = out.get(token)
                        if box is None:
                            box = out[token] = tables.outbox(token)
                        last_token = token
                        last_box = box
                    last_box.add_plain(message, route.one_id, route.one_raw)
                    # the messages after it that continue the same NAMED part (one
                    # read's: one created time, one origin) in one compiled loop
                    i = last_box.add_run(messages, i + 1, routes, version, tables.epoch,
                                         token)
                    continue
                ids = route.ids
                raws = route.raw
                for k, token in enumerate(tokens):  # (zip() is not compiled: slower)
                    box = out.get(token)
                    if box is None:
                        box = out[token] = tables.outbox(token)
                    box.add_plain(message, ids[k], raws[k])
            else:
                size, pieces = record_pieces(message, names)
                for token in tokens:
                    box = out.get(token)
                    if box is None:
                        box = out[token] = tables.outbox(token)
                    box.add_message(size, pieces)
        i += 1
    return n


def send_qos0(messages: list[Message], interest: SubscriptionTrie, tables: NameTables,
              sender: bytes, subject_prefix: str,
              commands: deque[tuple[int, str, bytes, int]]) -> int:
    """The sending node's turn of QoS 0 messages, none retained (:func:`qos0_only`),
    in one compiled call (``ClusterNode._forward``): :func:`add_qos0` groups them per
    destination node into that node's :class:`Outbox`, then each Outbox's batches
    are queued on ``commands`` as ``(PUB, subject_prefix + token, payload, count)``,
    destinations in the order first met, each one's messages in
    publication order [MQTT-4.6.0-5]. Returns the messages queued, or -1 before
    queuing anything when a message needs the general path (another node's shared
    group matches it): the caller then handles the whole turn (what this call did
    to ``tables`` is only kept routes and names defined again, which are harmless)."""
    out: dict[str, Outbox] = {}
    if add_qos0(messages, 0, interest, out, {}, tables) != len(messages):
        return -1
    queued = 0
    for token, box in out.items():
        subject = subject_prefix + token
        for payload, count in box.batches(sender):
            commands.append((PUB, subject, payload, count))
            queued += count
    return queued


class NameBook:
    """One sender's name dictionary on the receiving node (:class:`NameTable` on the
    sender): the names by id of its current generation, the ids defined since the node
    last confirmed them (``learned``), the messages dropped for an id it does not hold
    or a generation it no longer has (``unknown``), and when it last asked for a
    reset."""

    __slots__ = ("asked", "asked_at", "found", "generation", "learned", "matches",
                 "names", "raws", "targets", "unknown", "version")

    def __init__(self) -> None:
        self.generation = 0
        self.names: list[str] = []  # _UNKNOWN where not given
        #: each name's bytes as defined (b"" where not given), the same length as
        #: ``names`` and reset with it: a NAMED message's ``Message.topic_raw``, so
        #: that this node's forwards do not encode its topic again (one slice per
        #: definition, not an encode per message)
        self.raws: list[bytes] = []
        self.learned: list[int] = []
        self.unknown = 0
        self.asked = 0
        self.asked_at = 0.0
        #: With a trie given to :func:`decode_batch`: its match of each topic id of
        #: this generation (None: not taken yet), current while the trie's
        #: ``version`` is ``version``; and the matches of the last batch's NAMED
        #: parts' messages (``found``, one list per NAMED part, in order).
        self.matches: list[Matches | None] = []
        #: :func:`route_named`'s own per topic id: the match as the router's
        #: :class:`RemoteTargets` (None: not taken yet), current with ``version``
        #: too (both lists are reset together).
        self.targets: list[RemoteTargets | None] = []
        self.version = -1
        self.found: list[list[Matches]] = []


def decode_batch(data: bytes, books: dict[bytes, NameBook] | None = None,
                 trie: SubscriptionTrie | None = None) -> tuple[bytes, list[Part]]:
    """(sender, parts); ValueError (or CorruptData) for what we did not write (a batch
    of another version included: ``messages_undecodable``; the sender's book is then
    dropped: it may hold what the batch defined before the fault).

    ``books``: the receiving node's :class:`NameBook` per sender (None: a new one for
    this batch only). A NAMED part's messages whose topic or origin id the book does
    not hold are left out and counted in the book's ``unknown``.

    ``trie``: the receiving node's subscriptions; then the book's ``found`` holds,
    for each NAMED part, ``trie.match`` of each of its messages' topics, kept per
    topic id (``NameBook.matches``) while the trie's version is the same: a topic
    named by id needs no lookup by its string."""
    if len(data) < 2 or data[0] != BATCH_VERSION:
        raise ValueError("not a cluster batch (of this version)")
    n = data[1]
    sender = data[2 : 2 + n]
    pos = 2 + n
    end_all = len(data)
    out: list[Part] = []
    size_of = _SIZE.unpack_from
    u16 = _U16.unpack_from
    no_groups: list[Group] = []
    no_properties = NO_PROPERTIES  # (a module global is a dict lookup per read)
    names: dict[bytes, str] = {}  # one str per topic (and origin) of an ITEMS part
    if books is None:
        books = {}
    book = books.get(sender)
    if book is None:
        book = books[sender] = NameBook()
    book.found = []
    try:
        while pos < end_all:
            kind = data[pos]
            if kind == NAMED:
                # Every number typed (int, float): mypyc then does the per-message
                # arithmetic, slicing and bounds checks natively; an Any from
                # struct.unpack in an expression makes each a generic Python operation
                # (PyNumber_Add, a slice object, a PyLong per offset).
                head = _NAMED.unpack_from(data, pos)
                count: int = head[1]
                created_at: float = head[2]
                generation: int = head[3]
                ndefs: int = head[4]
                pos += _NAMED.size
                if generation != book.generation:  # the sender started a new one
                    book.generation = generation
                    book.names = []
                    book.raws = []
                    book.learned = []
                    book.matches = []
                    book.targets = []
                strs = book.names
                raws = book.raws
                defs = struct.unpack_from(f">{2 * ndefs}H", data, pos)
                pos += 4 * ndefs
                have = len(strs)
                for d in range(ndefs):
                    ln: int = defs[ndefs + d]
                    _learn(strs, raws, defs[d], data[pos : pos + ln])
                    pos += ln
                have = len(strs)
                book.learned += defs[:ndefs]
                heads = struct.unpack_from(f">{count}H{count}H{count}I", data, pos)
                pos += 8 * count
                c2 = 2 * count
                messages: list[Message] = []
                append = messages.append
                found: list[Matches] = []
                if trie is not None and (book.version != trie.version
                                         or len(book.matches) < have):
                    if book.version != trie.version:  # subscriptions changed
                        book.matches = []
                        book.targets = []
                        book.version = trie.version
                    book.matches += [None] * (have - len(book.matches))
                cache = book.matches
                for k in range(count):  # (zip() is not compiled: generic, slower)
                    t: int = heads[k]
                    o: int = heads[count + k]
                    size: int = heads[c2 + k]
                    end = pos + size
                    if end > end_all:
                        raise ValueError("cluster batch truncated")
                    # an id it was not given (or was, as _UNKNOWN): never another
                    # name, left out and counted
                    topic = strs[t] if t < have else _UNKNOWN
                    origin = strs[o] if o < have else _UNKNOWN
                    if topic is _UNKNOWN or origin is _UNKNOWN:
                        book.unknown += 1
                    else:
                        append(Message(topic, data[pos:end], 0, False, no_properties,
                                       created_at, None, origin, 0, 0, raws[t]))
                        if trie is not None:
                            m = cache[t]
                            if m is None:
                                m = cache[t] = trie.match(topic)
                            found.append(m)
                    pos = end
                if trie is not None:
                    book.found.append(found)
                out.append((0, messages, None))
                continue
            if kind != ITEMS:
                raise ValueError(f"cluster batch part of kind {kind}")
            _, seq, count = _PART.unpack_from(data, pos)
            pos += _PART.size
            messages = []
            groups_of: list[list[Group]] = []
            for _ in range(count):
                (size,) = size_of(data, pos)
                pos += 4
                end = pos + size
                if end + 2 > end_all:
                    raise ValueError("cluster batch truncated")
                messages.append(decode_message_at(data, pos, end, names))
                (ngroups,) = u16(data, end)
                pos = end + 2
                if not ngroups:
                    groups_of.append(no_groups)
                    continue
                groups: list[Group] = []
                for _ in range(ngroups):
                    (lg,) = u16(data, pos)
                    pos += 2
                    group = data[pos : pos + lg].decode()
                    pos += lg
                    (lf,) = u16(data, pos)
                    pos += 2
                    groups.append((group, data[pos : pos + lf].decode()))
                    pos += lf
                groups_of.append(groups)
            out.append((seq, messages, groups_of))
        if pos != end_all:
            raise ValueError("cluster batch truncated")
    except Exception as exc:
        books.pop(sender, None)
        if isinstance(exc, (struct.error, IndexError)):
            raise ValueError(f"cluster batch truncated or corrupt: {exc}") from None
        raise
    return sender, out


class NamedBatch:
    """A batch whose parts are all NAMED, of one generation, checked and its
    definitions taken into the sender's book (:func:`scan_named`): routed by
    :func:`route_named`."""

    __slots__ = ("book", "counts", "data", "heads", "sender", "times")

    def __init__(self, data: bytes, sender: bytes, book: NameBook) -> None:
        self.data = data
        self.sender = sender
        self.book = book
        #: per part: where its heads start, its message count, its created time
        self.heads: list[int] = []
        self.counts: list[int] = []
        self.times: list[float] = []


def _learn(strs: list[str], raws: list[bytes], i: int, raw: bytes) -> None:
    """Name ``i`` of a sender's book is ``raw`` decoded (a NAMED part's definitions;
    UnicodeDecodeError, a ValueError, if it is not UTF-8), kept as ``raw`` too
    (``NameBook.raws``): ids skipped so far stay ``_UNKNOWN`` (``b""``); another name
    for an id already known is an error (the sender never redefines an id within a
    generation)."""
    if i >= len(strs):
        strs += [_UNKNOWN] * (i + 1 - len(strs))
        raws += [b""] * (i + 1 - len(raws))
    if strs[i] is _UNKNOWN:
        strs[i] = raw.decode()
        raws[i] = raw
    elif raws[i] != raw:  # (the same bytes decode to the same name)
        raise ValueError(f"cluster batch redefines name {i}")


def _u16(data: bytes, pos: i64) -> i64:
    return (i64(data[pos]) << 8) | i64(data[pos + 1])


def _u32(data: bytes, pos: i64) -> i64:
    return ((i64(data[pos]) << 24) | (i64(data[pos + 1]) << 16) | (i64(data[pos + 2]) << 8)
            | i64(data[pos + 3]))


#: Bytes of a NAMED part's head (:data:`_NAMED`).
_NAMED_SIZE: Final = 17


def scan_named(data: bytes, books: dict[bytes, NameBook]) -> NamedBatch | None:
    """The receiving node's common case (``ClusterNode._on_batch``), compiled: a
    batch (:func:`encode_batch`) of NAMED parts only, all of one generation. First
    checked whole, without side effects (every part NAMED, within the batch, the
    parts ending where the batch does): None when it is not such a batch, or is
    malformed (:func:`decode_batch` then handles it, or says what is wrong). Then
    each part's definitions go into the sender's :class:`NameBook`, as
    :func:`decode_batch` takes them: a part of another generation than the book's
    starts it anew; ValueError when a part gives a held id another name (the book is
    dropped, as :func:`decode_batch` does). Every number is read from ``data`` by
    index (native in the compiled build: no tuple of PyLongs from ``struct``)."""
    end_all = len(data)
    if end_all < 2 or data[0] != BATCH_VERSION:
        return None
    n = data[1]
    pos = 2 + n
    first = pos
    generation = -1
    ends: list[int] = []  # where each part ends (the next one starts)
    while pos < end_all:
        if data[pos] != NAMED or pos + _NAMED_SIZE > end_all:
            return None
        count = _u16(data, pos + 1)
        part_generation = _u32(data, pos + 11)
        ndefs = _u16(data, pos + 15)
        if generation < 0:
            generation = part_generation
        elif part_generation != generation:
            return None  # (a table renewed mid-batch: rare)
        p = pos + _NAMED_SIZE + 2 * ndefs  # the definitions' lengths
        if p + 2 * ndefs > end_all:
            return None
        total = 0
        for d in range(ndefs):
            total += _u16(data, p + 2 * d)
        p += 2 * ndefs + total  # the topics' ids
        sizes = p + 4 * count
        if sizes + 4 * count > end_all:
            return None
        # the payloads' sizes summed on native 64-bit ints (i64; _u32 inlined, no
        # call each): no tagged-int shift/or/add checks per message
        sum64: i64 = 0
        sp: i64 = sizes
        stop: i64 = sizes + 4 * count
        while sp < stop:
            sum64 += ((i64(data[sp]) << 24) | (i64(data[sp + 1]) << 16)
                      | (i64(data[sp + 2]) << 8) | i64(data[sp + 3]))
            sp += 4
        pos = stop + sum64
        ends.append(pos)
    if pos != end_all or generation < 0:
        return None
    sender = data[2:first]
    book = books.get(sender)
    if book is None:
        book = books[sender] = NameBook()
    if generation != book.generation:  # the sender started a new one
        book.generation = generation
        book.names = []
        book.raws = []
        book.learned = []
        book.matches = []
        book.targets = []
    batch = NamedBatch(data, sender, book)
    strs = book.names
    raws = book.raws
    learned = book.learned
    pos = first
    for end in ends:
        count = _u16(data, pos + 1)
        ndefs = _u16(data, pos + 15)
        created_at: float = _NAMED.unpack_from(data, pos)[2]
        ids = pos + _NAMED_SIZE
        lens = ids + 2 * ndefs
        p = lens + 2 * ndefs
        for d in range(ndefs):
            i = _u16(data, ids + 2 * d)
            ln = _u16(data, lens + 2 * d)
            try:
                _learn(strs, raws, i, data[p : p + ln])
            except ValueError:
                books.pop(sender, None)
                raise
            p += ln
            learned.append(i)
        batch.heads.append(p)
        batch.counts.append(count)
        batch.times.append(created_at)
        pos = end
    return batch


def route_named(batch: NamedBatch, trie: SubscriptionTrie, router: Router,
                now: float) -> int:
    """Route a :func:`scan_named` batch's messages, in order, each as it is decoded:
    ``router.publish_remote`` (what ``router.publish`` with no shared groups does for
    a plain message: a NAMED part's are QoS 0, RETAIN 0, without expiry or
    properties, and take no shared group here; every delivery through
    ``Session.deliver``) given the receiving node's ``trie`` match of its topic as
    :class:`RemoteTargets`, kept per name id in the book (``targets``) while
    ``trie.version`` is the same (checked before each message: a delivery may end a
    session). A message no direct subscriber here matches is counted as routed,
    without building its ``Message``; one that is built carries its topic's bytes as
    the part defined them (``NameBook.raws``) as ``Message.topic_raw``, so that no
    connection encodes the topic again per message. A message whose topic or origin id the book
    does not hold is left out and counted in the book's ``unknown``, as
    :func:`decode_batch` does. Returns the messages routed."""
    data = batch.data
    book = batch.book
    strs = book.names
    raws = book.raws
    have = len(strs)
    no_properties = NO_PROPERTIES  # (a module global is a dict lookup per read)
    version = trie.version
    if book.version != version:  # subscriptions changed
        book.matches = []
        book.targets = []
        book.version = version
    cache = book.targets
    if len(cache) < have:
        cache += [None] * (have - len(cache))
    routed: i64 = 0  # (native counters)
    unknown: i64 = 0
    heads = batch.heads
    counts = batch.counts
    times = batch.times
    have64: i64 = have
    for part in range(len(heads)):
        # native 64-bit positions and ids (i64): no tagged-int checks per operation
        count: i64 = counts[part]
        created_at = times[part]
        tp: i64 = heads[part]
        op: i64 = tp + 2 * count
        sp: i64 = op + 2 * count
        pos: i64 = sp + 4 * count
        # A column of one value is read once for the part, not per message: the
        # origin (a part is one created time, i.e. one MQTT read: one client's) and
        # often the payload size. Checked per part, one comparison of its bytes.
        origin = _UNKNOWN
        one_origin = False
        size_one: i64 = -1
        if count > 0:
            if data[op:sp] == data[op : op + 2] * count:
                one_origin = True
                o = _u16(data, op)
                origin = strs[o] if o < have64 else _UNKNOWN
            if data[sp:pos] == data[sp : sp + 4] * count:
                size_one = _u32(data, sp)
        left: i64 = count
        # (a ``while``: mypyc boxes the variable of ``for _ in range(count)`` with an
        # i64 count each round, a new int object per message above 256)
        while left > 0:
            left -= 1
            t = _u16(data, tp)
            tp += 2
            # an id it was not given (or was, as _UNKNOWN): never another name,
            # left out and counted
            if not one_origin:
                o = _u16(data, op)
                op += 2
                origin = strs[o] if o < have64 else _UNKNOWN
            if size_one < 0:
                end = pos + _u32(data, sp)
                sp += 4
            else:
                end = pos + size_one
            topic = strs[t] if t < have64 else _UNKNOWN
            if topic is _UNKNOWN or origin is _UNKNOWN:
                unknown += 1
            else:
                if trie.version != version:  # a delivery ended a session
                    version = trie.version
                    cache = book.targets = [None] * have
                    book.matches = []
                    book.version = version
                m = cache[t]
                if m is None:
                    m = cache[t] = RemoteTargets(trie.match(topic))
                # (no direct subscriber here: nothing to build; a NAMED part's
                # messages go to no shared group on this node)
                if m.client_ids:
                    router.publish_remote(
                        Message(topic, data[pos:end], 0, False, no_properties,
                                created_at, None, origin, 0, 0, raws[t]), now, m)
                routed += 1
            pos = end
    book.unknown += unknown
    return routed


def encode(sender: bytes, seq: int, records: list[bytes]) -> bytes:
    """One NATS payload; ``records`` are :func:`record` bytes of one topic."""
    parts = [_HEAD.pack(VERSION, seq, len(sender)), sender, _COUNT.pack(len(records))]
    for rec in records:
        parts.append(_SIZE.pack(len(rec)))
        parts.append(rec)
    return b"".join(parts)


def record(message: Message) -> bytes:
    return encode_retained(message)


def record_pieces(message: Message, names: dict[str, bytes]) -> tuple[int, list[bytes]]:
    """:func:`record` as (length, pieces), for :meth:`Outbox.add_message`; ``names``
    caches encoded topics and origins (one turn's: a busy topic or client is encoded
    once)."""
    topic = names.get(message.topic)
    if topic is None:
        topic = names[message.topic] = message.topic.encode()
    origin = names.get(message.origin)
    if origin is None:
        origin = names[message.origin] = message.origin.encode()
    return retained_pieces(message, topic, origin)


def decode(topic: str, data: bytes) -> tuple[bytes, int, list[Message]]:
    """(sender, seq, messages); ValueError (or CorruptData) for what we did not write."""
    if len(data) < _HEAD.size:
        raise ValueError("cluster message too short")
    version, seq, n = _HEAD.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"cluster message version {version}")
    pos = _HEAD.size
    sender = data[pos : pos + n]
    pos += n
    (count,) = _COUNT.unpack_from(data, pos)
    pos += _COUNT.size
    key = topic.encode()
    messages = []
    for _ in range(count):
        (size,) = _SIZE.unpack_from(data, pos)
        pos += _SIZE.size
        end = pos + size
        if end > len(data):
            raise ValueError("cluster message truncated")
        messages.append(decode_retained(key, data[pos:end]))
        pos = end
    if pos != len(data):
        raise ValueError("cluster message has trailing bytes")
    return sender, seq, messages


class Dedup:
    """Recently seen (sender, seq) pairs, ``window`` per sender: a set for the
    question, a deque for the order they leave in (O(1) each; a dict emptied from its
    front would slow down as its deleted slots pile up)."""

    __slots__ = ("_seen", "window")

    def __init__(self, window: int = 65_536) -> None:
        self.window = window
        self._seen: dict[bytes, tuple[set[int], deque[int]]] = {}

    def seen(self, sender: bytes, seq: int) -> bool:
        """Has (sender, seq) been seen within the window?"""
        seen = self._seen.get(sender)
        return seen is not None and seq in seen[0]

    def first(self, sender: bytes, seq: int) -> bool:
        """True the first time (sender, seq) is seen within the window."""
        seen = self._seen.get(sender)
        if seen is None:
            seen = self._seen[sender] = (set(), deque())
        members, order = seen
        if seq in members:
            return False
        members.add(seq)
        order.append(seq)
        if len(order) > self.window:
            members.discard(order.popleft())
        return True

    def senders(self) -> list[bytes]:
        """The senders with a window here."""
        return list(self._seen)

    def forget(self, sender: bytes) -> int:
        """Drop ``sender``'s window (a process gone for good: node.py,
        ``_forget_senders``); returns how many seqs it held. A (sender, seq) seen
        before is then new again: the caller makes sure none comes again."""
        seen = self._seen.pop(sender, None)
        return 0 if seen is None else len(seen[1])


#: :attr:`LiveOrder.contig` of a sender whose first live parts wait for this node's
#: stream reader (below every sequence number: each part is held).
UNSYNCED: Final = -(1 << 62)


class LiveOrder:
    """Keeps one sender's live QoS 1 parts in sequence order on a receiving node.

    A sender numbers its QoS stream writes 1, 2, 3… and sends each live as well, to
    every live node, with the same number (:class:`Dedup` routes the first copy). A
    live copy lost in transit (a nats-server failover) leaves a gap: the parts after it
    are held here until the stream's copy of the missing one has been routed (it marks
    the Dedup), or until ``wait`` seconds passed (the write never reached the stream),
    and then routed in order — MQTT 5.0 §4.6 [MQTT-4.6.0-5]: a topic's QoS 1 messages
    reach a subscriber in the order they were published.

    The first live part seen from a sender (:meth:`first`) need not be its first write:
    what it wrote before it saw this node's heartbeat (this node had just started, or
    was down) reaches this node through the stream only, and the stream reader may not
    have routed those yet. Unless the part is the sender's first (seq 1) or the reader
    routed the write below it already, the order starts *unsynced* (``contig`` is
    :data:`UNSYNCED`): every part is held until :meth:`synced` says that the reader has
    passed the sender's writes below the first part, or the wait is over.
    """

    __slots__ = ("asked", "contig", "held", "since", "start", "target")

    def __init__(self, contig: int) -> None:
        #: every seq up to here has been routed (or given up on)
        self.contig = contig
        #: seq -> the part's items, waiting for the gap below it
        self.held: dict[int, Any] = {}
        #: when the oldest held part arrived (0: none held)
        self.since = 0.0
        #: unsynced: the first part's seq; the stream position the reader must pass
        #: (-1: not known, -2: being asked; 0: nothing was left to route) and when it
        #: was last asked for (:meth:`synced`)
        self.start = 0
        self.target = -1
        self.asked = 0.0

    @staticmethod
    def first(dedup: Dedup, sender: bytes, seq: int) -> LiveOrder:
        """The order of a sender whose first live part seen here is ``seq``."""
        if seq <= 1 or dedup.seen(sender, seq - 1):
            return LiveOrder(seq - 1)
        order = LiveOrder(UNSYNCED)
        order.start = seq
        return order

    def synced(self, dedup: Dedup, sender: bytes, reader_next: int | None) -> bool:
        """Unsynced: may the held parts go now? Yes once the stream reader (which routes
        in stream order, where a sender's writes are in their order) has routed the
        sender's write just below the first part or that part's own stream copy, or has
        passed ``target`` (the last stream message this node's consumer had to deliver
        when asked, after the writes below the first part had time to be stored; for
        writes that never reached the stream). ``reader_next``: the next stream
        sequence the reader routes (None: it has routed nothing yet)."""
        start = self.start
        target = self.target
        if not (dedup.seen(sender, start - 1) or dedup.seen(sender, start) or target == 0
                or (target > 0 and reader_next is not None and reader_next > target)):
            return False
        self.contig = start - 1
        return True

    def advance(self, dedup: Dedup, sender: bytes) -> int:
        """Move ``contig`` over the seqs routed meanwhile (by the stream reader)."""
        contig = self.contig
        while dedup.seen(sender, contig + 1):
            contig += 1
        self.contig = contig
        return contig

    def ready(self, dedup: Dedup, sender: bytes, force: bool) -> list[tuple[int, Any]]:
        """The held parts that may be routed now, in order (``force``: the gap is older
        than the wait, route them all)."""
        out: list[tuple[int, Any]] = []
        held = self.held
        while held:
            contig = self.advance(dedup, sender)
            low = min(held)
            if low > contig + 1 and not force:
                break
            out.append((low, held.pop(low)))
            self.contig = max(contig, low)
        if not held:
            self.since = 0.0
        return out
