"""A session starts with shared empty placeholders (core/placeholders.py, interpreted
in both builds) and replaces each with a real container on first use; writing to a
placeholder fails loudly, in the compiled build of core/session.py too (issue 19)."""

from __future__ import annotations

import pytest

from iotbroker.core import placeholders
from iotbroker.core.session import Session, SessionContext, SessionLimits
from iotbroker.metrics import Metrics
from iotbroker.storage.base import ChangeBatch


def _session() -> Session:
    return Session("dev-1", 5, 0, SessionContext(ChangeBatch(), SessionLimits(), Metrics()))


def test_writing_to_a_placeholder_fails_loudly() -> None:
    with pytest.raises(AssertionError):
        placeholders.NO_QUEUE.append(1)
    with pytest.raises(AssertionError):
        placeholders.NO_RESEND.extend([1])
    with pytest.raises(AssertionError):
        placeholders.NO_INFLIGHT[1] = object()
    with pytest.raises(AssertionError):
        placeholders.NO_SUBSCRIPTIONS["a/b"] = object()
    assert not hasattr(placeholders.NO_IDS, "add")


def test_a_fresh_session_shares_the_placeholders_and_replaces_them_on_use() -> None:
    """Inbound QoS 2 ids [MQTT-4.3.3-2]: the held set is created on the first id, the
    placeholder stays empty, and a PUBREL for an id never held is refused."""
    session, other = _session(), _session()
    assert session.inbound_qos2 is placeholders.NO_IDS is other.inbound_qos2
    assert session.queue is placeholders.NO_QUEUE and session.inflight is placeholders.NO_INFLIGHT
    assert not session.release_inbound_qos2(7)
    assert session.hold_inbound_qos2(7)
    assert not session.hold_inbound_qos2(7)  # a duplicate is not delivered again
    assert session.inbound_qos2 == {7} and isinstance(session.inbound_qos2, set)
    assert other.inbound_qos2 is placeholders.NO_IDS and len(placeholders.NO_IDS) == 0
    assert session.release_inbound_qos2(7) and not session.release_inbound_qos2(7)
    session.clear_state()
    assert session.inbound_qos2 is placeholders.NO_IDS
