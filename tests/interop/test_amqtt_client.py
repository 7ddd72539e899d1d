"""Interop: amqtt's asyncio MQTT 3.1.1 client against the real broker.

amqtt pins dependency versions of its own, so it is installed in a separate venv,
``.venv-amqtt`` at the repository root (``scripts/test.sh`` creates it when missing).
Each test runs ``amqtt_scenarios.py`` there as a subprocess and checks the JSON it
prints. Cross-client tests pair it with paho-mqtt from the main venv.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[2]
AMQTT_PYTHON = ROOT / ".venv-amqtt" / "bin" / "python"
SCRIPT = Path(__file__).with_name("amqtt_scenarios.py")
WAIT = 5.0


@pytest.fixture(scope="module")
def amqtt_python() -> Path:
    assert AMQTT_PYTHON.exists(), (
        f"{AMQTT_PYTHON} is missing: run scripts/test.sh, or "
        "`python -m venv .venv-amqtt && .venv-amqtt/bin/pip install amqtt`"
    )
    return AMQTT_PYTHON


def run_scenario(python: Path, broker, scenario: str, prefix: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(python), str(SCRIPT), scenario, broker.host, str(broker.port), prefix],
        capture_output=True,
        check=False,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    out = result.stdout.decode()
    err = result.stderr.decode()
    assert result.returncode == 0, f"amqtt scenario {scenario} failed:\n{out}\n{err}"
    return json.loads(out.strip().splitlines()[-1])


def test_amqtt_publish_subscribe_each_qos(amqtt_python: Path, broker, uniq: str) -> None:
    got = run_scenario(amqtt_python, broker, "pub_sub", uniq)
    assert got["suback"] == [2]
    assert got["messages"] == [
        {"topic": f"{uniq}/q{q}", "payload": f"qos {q}", "qos": q, "retain": False}
        for q in (0, 1, 2)
    ]


def test_amqtt_suback_return_codes(amqtt_python: Path, broker, uniq: str) -> None:
    assert run_scenario(amqtt_python, broker, "suback_codes", uniq) == {"suback": [0, 1, 2]}


def test_amqtt_retained_set_received_cleared(amqtt_python: Path, broker, uniq: str) -> None:
    got = run_scenario(amqtt_python, broker, "retained", uniq)
    assert got["first"] == [{"topic": f"{uniq}/r", "payload": "kept", "qos": 1, "retain": True}]
    # after the clear, the first thing a new subscriber gets is the marker, not "kept"
    assert got["after_clear"] == [
        {"topic": f"{uniq}/marker", "payload": "m", "qos": 1, "retain": False}
    ]


def test_amqtt_persistent_session(amqtt_python: Path, broker, uniq: str) -> None:
    got = run_scenario(amqtt_python, broker, "persistent", uniq)
    assert got["messages"] == [
        {"topic": f"{uniq}/q", "payload": f"offline-{i}", "qos": 1, "retain": False}
        for i in range(3)
    ]


def _paho(broker, client_id: str) -> tuple[mqtt.Client, queue.Queue[mqtt.MQTTMessage]]:
    messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subacks: queue.Queue[Any] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_message = lambda c, u, msg: messages.put(msg)
    client.on_subscribe = lambda c, u, mid, rcs, props: subacks.put(rcs)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(WAIT)
    client.subacks = subacks  # type: ignore[attr-defined]
    return client, messages


def test_amqtt_publisher_to_paho_subscriber(amqtt_python: Path, broker, uniq: str) -> None:
    client, messages = _paho(broker, f"{uniq}-paho")
    try:
        client.subscribe(f"{uniq}/from-amqtt", 2)
        client.subacks.get(timeout=WAIT)  # type: ignore[attr-defined]
        run_scenario(amqtt_python, broker, "publish_only", uniq)
        got = [messages.get(timeout=WAIT) for _ in range(3)]
        assert sorted((m.payload, m.qos) for m in got) == [
            (b"amqtt 0", 0),
            (b"amqtt 1", 1),
            (b"amqtt 2", 2),
        ]
    finally:
        client.disconnect()
        client.loop_stop()


def test_paho_publisher_to_amqtt_subscriber(amqtt_python: Path, broker, uniq: str) -> None:
    proc = subprocess.Popen(
        [str(amqtt_python), str(SCRIPT), "receive_from_others", broker.host, str(broker.port),
         uniq],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    client, _messages = _paho(broker, f"{uniq}-paho")
    try:
        assert lines.get(timeout=15).strip() == b"ready"
        for q in (0, 1, 2):
            client.publish(f"{uniq}/to-amqtt", f"paho {q}".encode(), q).wait_for_publish(WAIT)
        assert proc.wait(timeout=15) == 0, proc.stderr.read().decode() if proc.stderr else ""
        got = json.loads(lines.get(timeout=1))
        assert got["suback"] == [2]
        assert sorted((m["payload"], m["qos"]) for m in got["messages"]) == [
            ("paho 0", 0),
            ("paho 1", 1),
            ("paho 2", 2),
        ]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.disconnect()
        client.loop_stop()
