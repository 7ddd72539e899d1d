"""The data directory of the upgrade test: what it holds and how it was made.

``tests/storage/data/v0.1-store/`` is a RocksDB store written by iotbroker 0.1 (the
code on main before the storage split of issue 13, commit e665bdb) by running::

    .venv/bin/python -m tests.storage.upgrade_fixture tests/storage/data/v0.1-store

against that code. It is committed as written; never regenerate it with newer code
(that would test nothing). :func:`expected` is what a newer iotbroker must read back
from it, record by record (``tests/storage/test_upgrade.py``).

The batches cover every record kind and variant: sessions of both protocol versions,
with and without username, will (with Will Properties) and disconnect time;
subscriptions with every option, including a shared one; outbound messages in both
states (PUBREL_SENT with and without the message); queued deliveries with
subscription identifiers, several recipients sharing one message; inbound QoS 2 ids;
retained messages with MQTT 5 properties and an expiry. Some records are overwritten
or deleted on the way (a session deleted with all its records, a subscription
replaced, an outbound record moved from PUBLISH_SENT to PUBREL_SENT). The first batch
is flushed to SST files; the later ones are in the WAL only (the writer ended without
closing, as after ``kill -9``), so opening it also replays an old WAL.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from iotbroker.codec.packets import NO_PROPERTIES, Properties
from iotbroker.storage.base import (
    ChangeBatch,
    OutboundRecord,
    OutboundState,
    QueuedRecord,
    SessionRecord,
    StoreSnapshot,
    WillRecord,
)

try:  # since issue 13
    from iotbroker.message import NEVER_EXPIRES, Delivery, Message
    from iotbroker.subscription import SubscriptionEntry as SubscriptionRecord
except ImportError:  # iotbroker 0.1, which wrote the data directory
    from iotbroker.core.message import (  # type: ignore[no-redef]
        NEVER_EXPIRES,
        Delivery,
        Message,
    )

    from iotbroker.storage.base import SubscriptionRecord  # type: ignore[no-redef]

T0 = 1_760_000_000.25  # wall-clock time of the writes (a float with a fraction)

MSG_PROPS = Properties(
    payload_format_indicator=1,
    content_type="application/json; charset=utf-8",
    response_topic="replies/sensor-α",
    correlation_data=b"\x00\x01corr\xff",
    user_properties=(("site", "Zürich"), ("site", "Basel"), ("", "empty name")),
)
WILL_PROPS = Properties(
    payload_format_indicator=0,
    message_expiry_interval=600,
    content_type="text/plain",
    response_topic="wills/replies",
    correlation_data=b"will-corr",
    user_properties=(("reason", "power loss"),),
)


def messages() -> dict[str, Message]:
    """The application messages of the fixture, by a short name."""
    return {
        # shared by three deliveries (two sessions queue it, one has it in flight)
        "shared": Message("plant/α/temp", b'{"t": 21.5}', 1, False, MSG_PROPS, T0,
                          T0 + 3600.0, origin="sensor-α"),
        "qos2": Message("plant/β/alarm", bytes(range(256)) * 4, 2, False, NO_PROPERTIES,
                        T0 + 1.0, None, origin="sensor-β"),
        "empty": Message("plant/β/heartbeat", b"", 1, False, NO_PROPERTIES, T0 + 2.0),
        "retained_v5": Message("status/gateway-1", b"online", 1, True, MSG_PROPS, T0 - 10.0,
                               T0 + 86_400.0, origin="gateway-1"),
        "retained_plain": Message("status/gateway-2", b"offline", 0, True, NO_PROPERTIES,
                                  T0 - 20.0, None, origin="gateway-2"),
        "retained_unicode": Message("статус/€/🚀", "μήνυμα".encode(), 2, True,
                                    Properties(user_properties=(("k", "v"),)), T0 - 30.0),
        "gone": Message("plant/tmp", b"x", 1, False, NO_PROPERTIES, T0),
    }


def _sessions() -> list[SessionRecord]:
    return [
        # MQTT 5 session, disconnected, will pending (Will Delay Interval running)
        SessionRecord("dev-v5", 5, 3600, T0 + 5.5,
                      WillRecord("wills/dev-v5", b"\x00gone\xff", 1, True, WILL_PROPS, 30),
                      next_packet_id=4, next_seq=9, username="alice"),
        # MQTT 3.1.1 session, connected (no disconnect time), no will, no username
        SessionRecord("dev-311", 4, NEVER_EXPIRES, None, None, next_packet_id=65535,
                      next_seq=2**40 + 3),
        # connected MQTT 5 session with a will without properties and username ""
        SessionRecord("dashboard", 5, 0, None,
                      WillRecord("wills/dashboard", b"", 0, False, NO_PROPERTIES, 0),
                      next_packet_id=1, next_seq=0, username=""),
        # a client id with non-ASCII characters and a prefix of another ("dev-v5")
        SessionRecord("dev", 5, 120, T0, None, next_packet_id=2, next_seq=1,
                      username="bob ü"),
    ]


def batches() -> list[ChangeBatch]:
    """The changes written, batch by batch (one ``apply`` each)."""
    m = messages()
    s = {rec.client_id: rec for rec in _sessions()}
    out: list[ChangeBatch] = []

    b = ChangeBatch()
    for rec in s.values():
        b.put_session(rec)
    b.put_session(SessionRecord("doomed", 5, 60, T0))
    b.put_subscription(SubscriptionRecord("dev-v5", "plant/+/temp", 1))
    b.put_subscription(SubscriptionRecord("dev-v5", "plant/#", 2, True, True, 2, 268_435_455))
    b.put_subscription(SubscriptionRecord("dev-v5", "$share/grp/plant/β/#", 1, False, False,
                                          1, 7))
    b.put_subscription(SubscriptionRecord("dev-311", "plant/+/temp", 1))
    b.put_subscription(SubscriptionRecord("dev-311", "plant/β/heartbeat", 0))
    b.put_subscription(SubscriptionRecord("dashboard", "#", 0, retain_as_published=True))
    b.put_subscription(SubscriptionRecord("dev", "a/b", 1, no_local=True))
    b.put_subscription(SubscriptionRecord("doomed", "x/#", 1))
    b.put_retained(m["retained_v5"])
    b.put_retained(m["retained_plain"])
    b.put_retained(m["retained_unicode"])
    b.put_retained(m["gone"])
    out.append(b)

    b = ChangeBatch()
    # dev-v5: three in flight (one of them later released), two queued
    b.put_outbound(OutboundRecord("dev-v5", 1, OutboundState.PUBLISH_SENT,
                                  Delivery(m["shared"], 1, False, (7, 268_435_455)), 3))
    b.put_outbound(OutboundRecord("dev-v5", 2, OutboundState.PUBLISH_SENT,
                                  Delivery(m["qos2"], 2, False, ()), 4))
    b.put_outbound(OutboundRecord("dev-v5", 3, OutboundState.PUBLISH_SENT,
                                  Delivery(m["empty"], 1, True, (1,)), 5))
    b.put_queued(QueuedRecord("dev-v5", 6, Delivery(m["shared"], 1, False, (7,))))
    b.put_queued(QueuedRecord("dev-v5", 7, Delivery(m["qos2"], 1, False, ())))
    # dev-311: packet ids wrapped: 65534 was sent after 2 (seq order != key order)
    b.put_outbound(OutboundRecord("dev-311", 65534, OutboundState.PUBLISH_SENT,
                                  Delivery(m["qos2"], 2, False, ()), 2**40 + 1))
    b.put_outbound(OutboundRecord("dev-311", 2, OutboundState.PUBLISH_SENT,
                                  Delivery(m["shared"], 1, False, ()), 2**40))
    b.put_queued(QueuedRecord("dev-311", 2**40 + 2, Delivery(m["shared"], 0, False, ())))
    b.put_inbound_qos2("dev-v5", 1)
    b.put_inbound_qos2("dev-v5", 65535)
    b.put_inbound_qos2("dev", 300)
    b.put_outbound(OutboundRecord("doomed", 1, OutboundState.PUBLISH_SENT,
                                  Delivery(m["gone"], 1), 0))
    b.put_queued(QueuedRecord("doomed", 1, Delivery(m["gone"], 1)))
    b.put_inbound_qos2("doomed", 9)
    out.append(b)

    b = ChangeBatch()
    # PUBREC received for dev-v5/2: PUBREL_SENT without the message; dev-311/65534
    # keeps its message in PUBREL_SENT
    b.put_outbound(OutboundRecord("dev-v5", 2, OutboundState.PUBREL_SENT, None, 4))
    b.put_outbound(OutboundRecord("dev-311", 65534, OutboundState.PUBREL_SENT,
                                  Delivery(m["qos2"], 2, False, ()), 2**40 + 1))
    b.delete_session("doomed")
    b.delete_retained("plant/tmp")
    b.delete_subscription("dev-311", "plant/β/heartbeat")
    b.put_subscription(SubscriptionRecord("dev-311", "plant/+/temp", 0))  # replaced
    b.delete_inbound_qos2("dev", 300)
    b.put_inbound_qos2("dev", 301)
    out.append(b)
    return out


def expected() -> StoreSnapshot:
    """What ``load()`` returns from the data directory."""
    m = messages()
    snap = StoreSnapshot()
    for rec in sorted(_sessions(), key=lambda r: r.client_id.encode()):
        snap.sessions[rec.client_id] = rec
    snap.subscriptions = {
        "dashboard": [SubscriptionRecord("dashboard", "#", 0, retain_as_published=True)],
        "dev": [SubscriptionRecord("dev", "a/b", 1, no_local=True)],
        "dev-311": [SubscriptionRecord("dev-311", "plant/+/temp", 0)],
        "dev-v5": [
            SubscriptionRecord("dev-v5", "$share/grp/plant/β/#", 1, False, False, 1, 7),
            SubscriptionRecord("dev-v5", "plant/#", 2, True, True, 2, 268_435_455),
            SubscriptionRecord("dev-v5", "plant/+/temp", 1),
        ],
    }
    snap.outbound = {
        "dev-311": [
            OutboundRecord("dev-311", 2, OutboundState.PUBLISH_SENT,
                           Delivery(m["shared"], 1, False, ()), 2**40),
            OutboundRecord("dev-311", 65534, OutboundState.PUBREL_SENT,
                           Delivery(m["qos2"], 2, False, ()), 2**40 + 1),
        ],
        "dev-v5": [
            OutboundRecord("dev-v5", 1, OutboundState.PUBLISH_SENT,
                           Delivery(m["shared"], 1, False, (7, 268_435_455)), 3),
            OutboundRecord("dev-v5", 2, OutboundState.PUBREL_SENT, None, 4),
            OutboundRecord("dev-v5", 3, OutboundState.PUBLISH_SENT,
                           Delivery(m["empty"], 1, True, (1,)), 5),
        ],
    }
    snap.queued = {
        "dev-311": [QueuedRecord("dev-311", 2**40 + 2, Delivery(m["shared"], 0, False, ()))],
        "dev-v5": [
            QueuedRecord("dev-v5", 6, Delivery(m["shared"], 1, False, (7,))),
            QueuedRecord("dev-v5", 7, Delivery(m["qos2"], 1, False, ())),
        ],
    }
    snap.inbound_qos2 = {"dev": {301}, "dev-v5": {1, 65535}}
    snap.retained = sorted(
        (m["retained_v5"], m["retained_plain"], m["retained_unicode"]),
        key=lambda msg: msg.topic.encode(),
    )
    return snap


def write(path: Path) -> None:
    """Write the fixture's batches to a new store at ``path``."""
    from iotbroker.storage.rocksdb import RocksDBStore  # noqa: PLC0415 (imports rocksdict)

    if path.exists():
        raise SystemExit(f"{path} exists; the fixture is written once, by the old release")
    store = RocksDBStore(str(path))
    for i, batch in enumerate(batches()):
        store.apply(batch)
        if i == 0:
            store.flush()  # the first batch in SST files
    # The later batches stay in the WAL only: end as a crash would, without close()
    # (which flushes), so opening the directory replays the WAL. The info LOG is
    # removed afterwards (RocksDB does not need it; it is most of the size).
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    write(Path(sys.argv[1]))
