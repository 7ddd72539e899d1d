"""Shared fixtures: the real broker as a subprocess, and raw clients for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.broker_process import BrokerProcess, broker_config
from tests.helpers.rawclient import RawClient


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker (in-memory storage) shared by the tests that need no special config.

    Tests sharing it use unique client ids and topics (see ``uniq``).
    """
    proc = BrokerProcess(tmp_path_factory.mktemp("shared-broker"), broker_config()).start()
    yield proc
    proc.stop()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Factory for a broker of the test's own, with the given config (killed at the end)."""
    started: list[BrokerProcess] = []

    def factory(
        config_text: str | None = None, name: str = "broker", **kwargs: str
    ) -> BrokerProcess:
        text = config_text if config_text is not None else broker_config(**kwargs)
        proc = BrokerProcess(tmp_path, text, name=name).start()
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop()


@pytest.fixture
def uniq(request: pytest.FixtureRequest) -> str:
    """A name unique to this test, for client ids and topics on the shared broker."""
    name = request.node.name
    for ch in "[]/+# ":
        name = name.replace(ch, "_")
    return name


@pytest.fixture
def raw(broker: BrokerProcess) -> Iterator[Callable[..., RawClient]]:
    """Factory of raw clients to the shared broker; closed at the end of the test."""
    clients: list[RawClient] = []

    def factory(version: int = 4, timeout: float = 5.0) -> RawClient:
        client = RawClient(broker.host, broker.port, version=version, timeout=timeout)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()
