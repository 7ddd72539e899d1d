"""The cluster's session record (cluster/sessions.py ``Record``): its QoS 2 entries
(docs/cluster.md, "QoS 2 across a move")."""

from __future__ import annotations

from iotbroker.cluster.sessions import COMPLETED, RELEASED, Record
from iotbroker.storage.base import SessionRecord


def test_session_record_keeps_its_qos2_entries_and_reads_version_1() -> None:
    """The cluster's session record (cluster/sessions.py): version 2 carries the QoS 2
    messages released after the position; without any it is written as version 1,
    as before (a node of the previous version reads it)."""
    session = SessionRecord("c1", 5, 3600)
    with_qos2 = Record(b"node/1", 41, session, [], {7: (40, RELEASED), 9: (0, COMPLETED)})
    back = Record.decode("c1", with_qos2.encode())
    assert back.qos2 == {7: (40, RELEASED), 9: (0, COMPLETED)} and back.position == 41
    plain = Record(b"node/1", 41, session, [])
    assert plain.encode()[0] == 1
    assert Record.decode("c1", plain.encode()).qos2 == {}


def test_a_handed_over_record_carries_the_inbound_qos2_ids() -> None:
    session = SessionRecord("c1", 5, 3600)
    rec = Record(b"node/1", None, session, [], {}, {7: "", 300: ""})
    back = Record.decode("c1", rec.encode())
    assert back.inbound == {7: "", 300: ""} and back.qos2 == {}
