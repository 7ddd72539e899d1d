"""The gateway's CONNECT goes through the engine's connect gate (engine/connect.py
``wait_before_accept``, the hook a room such as the cluster sets as
``Engine.accept_wait``), driven without sockets: the CONNACK waits for the gate,
a wait that ends with a reason is a refusal ("congestion", MQTT-SN 1.2 §5.3.10), and
a CONNECT retried while the first waits is not a second one. The cluster's use of it
with real nodes: tests/cluster/test_mqttsn_gate.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from iotbroker.mqttsn import codec as c
from iotbroker.mqttsn.gateway import Gateway
from tests.mqttsn.test_gateway_sansio import A, Harness


class _Wait:
    """An awaitable the test ends by hand (the gateway only passes it to ``defer``)."""

    def __await__(self) -> Any:
        raise AssertionError("not awaited in these tests")
        yield


class GateHarness(Harness):
    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, bool]] = []
        self.deferred: list[tuple[Awaitable[str | None], Callable[[str | None], None]]] = []

        def hook(client_id: str, clean_start: bool) -> Awaitable[str | None] | None:
            self.asked.append((client_id, clean_start))
            return None if clean_start else _Wait()

        self.engine.accept_wait = hook
        self.gw = Gateway(self.engine, self.config, self.config.listeners[0], self.ready,
                          lambda data, key: self.sent.append((c.decode(data), key)),
                          self.now, defer=lambda wait, then: self.deferred.append((wait, then)))

    def end_wait(self, why: str | None) -> list[c.SnMessage]:
        self.sent.clear()
        _, then = self.deferred.pop(0)
        then(why)
        self.flush()
        return [m for m, _ in self.sent]


def test_the_connack_waits_for_the_connect_gate() -> None:
    """CleanSession 0 (§6.3): the gate is asked with the client id and Clean Start 0;
    no CONNACK, and requests are not served, until it is done; then CONNACK accepted
    and the client is connected (PINGREQ answered, §6.11)."""
    h = GateHarness()
    assert h.recv(c.Connect("dev", 60, clean_session=False)) == []
    assert h.asked == [("dev", False)]
    assert len(h.deferred) == 1
    assert h.recv(c.PingReq()) == []  # before the CONNACK: dropped
    assert h.metrics.mqttsn_dropped["not_connected"] == 1
    assert "dev" not in h.engine.clients
    assert h.end_wait(None) == [c.ConnAck(c.ReturnCode.ACCEPTED)]
    assert "dev" in h.engine.clients
    assert h.recv(c.PingReq()) == [c.PingResp()]


def test_clean_session_is_asked_too_and_accepted_when_the_gate_says_now() -> None:
    h = GateHarness()
    assert h.recv(c.Connect("dev", 60, clean_session=True)) == [c.ConnAck(0)]
    assert h.asked == [("dev", True)] and h.deferred == []


def test_a_wait_that_ends_with_a_reason_refuses_with_congestion() -> None:
    """The session could not be made ready in time (the cluster: MQTT 5.0 CONNACK
    0x89 Server busy): CONNACK "rejected: congestion" (§5.3.10), the client retries;
    nothing of it is kept."""
    h = GateHarness()
    h.recv(c.Connect("dev", 60, clean_session=False))
    assert h.end_wait("session not resumed within 8s") == [
        c.ConnAck(c.ReturnCode.CONGESTION)]
    assert "dev" not in h.engine.clients and not h.gw.clients
    assert h.metrics.connections_rejected == 1


def test_a_connect_retried_while_the_first_waits_is_answered_once() -> None:
    """A device that repeats its CONNECT (§6.13 retry) while the first one waits: the
    repeat is dropped, the first one's CONNACK answers both."""
    h = GateHarness()
    h.recv(c.Connect("dev", 60, clean_session=False))
    assert h.recv(c.Connect("dev", 60, clean_session=False)) == []
    assert len(h.asked) == 1 and len(h.deferred) == 1
    assert h.end_wait(None) == [c.ConnAck(0)]


def test_a_client_gone_while_its_connect_waits_is_not_accepted() -> None:
    """Its address connected again with another client id (or the wait outlasted
    ``mqtt.connect_timeout``): the first wait's end accepts nothing."""
    h = GateHarness()
    h.recv(c.Connect("dev", 60, clean_session=False))
    h.recv(c.Connect("other", 60, clean_session=False), A)
    assert len(h.deferred) == 2
    assert h.end_wait(None) == []
    assert "dev" not in h.engine.clients
    assert h.end_wait(None) == [c.ConnAck(0)]
    assert "other" in h.engine.clients
