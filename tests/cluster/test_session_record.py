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


def test_the_second_mark_is_version_3_and_only_while_there_is_one() -> None:
    """The inbound ids whose stream write was acknowledged (``Record.marks``, with the
    write's stream sequence) make the record version 3; without any it is written as
    version 2 (or 1) as before, so a node of the previous version still reads it
    (docs/cluster.md, "Mixed versions"). Versions 1 and 2 are still read."""
    session = SessionRecord("c1", 5, 3600)
    marked = Record(b"node/1", 41, session, [], {7: (40, RELEASED)},
                    {7: "node/1q:3", 8: "node/1q:4"}, {7: 1234567890123})
    raw = marked.encode()
    assert raw[0] == 3
    back = Record.decode("c1", raw)
    assert (back.inbound, back.marks, back.qos2) == (
        {7: "node/1q:3", 8: "node/1q:4"}, {7: 1234567890123}, {7: (40, RELEASED)})
    unmarked = Record(b"node/1", 41, session, [], {}, {8: "node/1q:4"})
    assert unmarked.encode()[0] == 2
    assert Record.decode("c1", unmarked.encode()).marks == {}
    assert Record.decode("c1", Record(b"node/1", 41, session, []).encode()).marks == {}
