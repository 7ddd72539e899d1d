"""The ``iotsim`` command: presets, scenario files, report files, errors and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from iotsim.cli import main

from tests.helpers.broker_process import BrokerProcess
from tests.sim.conftest import Mosquitto

SCENARIOS = Path(__file__).resolve().parents[2] / "devices-sim" / "scenarios"
REQUIRED = ["devices.connected", "devices.failed", "messages.published",
            "messages.delivered", "messages.lost", "messages.duplicated", "latency_ms.p50",
            "latency_ms.p99", "latency_ms.max", "cpu_percent", "rss_mb"]


def _get(doc: dict[str, object], dotted: str) -> object:
    value: object = doc
    for part in dotted.split("."):
        assert isinstance(value, dict), dotted
        value = value[part]
    return value


def _iotsim(*args: str) -> list[str]:
    return [sys.executable, "-m", "iotsim", *args]


def test_sensors_preset_writes_reports(mosquitto: Mosquitto, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    proc = subprocess.run(
        _iotsim("sensors", "--devices", "50", "--rate", "5/s", "--qos", "1", "--host",
                mosquitto.host, "--port", str(mosquitto.port), "--duration", "2s",
                "--report", str(out)),
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "iotsim: sensors" in proc.stdout and "OK" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    for key in REQUIRED:
        assert isinstance(_get(report, key), int | float), key
    assert report["devices"]["connected"] == 50 and report["devices"]["failed"] == 0
    assert report["messages"]["lost"] == 0 and report["messages"]["published"] > 300
    assert report["cpu_percent"] > 0 and report["rss_mb"] > 10
    assert len(report["timeseries"]) >= 2
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 4


def test_run_scenario_file(broker: BrokerProcess, tmp_path: Path) -> None:
    code = main(["run", str(SCENARIOS / "sensors-qos-mix.yaml"), "--host", broker.host,
                 "--port", str(broker.port), "--duration", "2s", "--report", str(tmp_path),
                 "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scenario"]["name"] == "sensors-qos-mix"
    assert report["devices"]["connected"] == 300 and report["ok"]
    assert report["messages"]["by_qos"]["1"]["lost"] == 0
    assert report["messages"]["by_qos"]["2"]["lost"] == 0


def test_bad_scenario_exit_code_and_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - name: s\n    count: 10\n    interval: sometimes\n")
    proc = subprocess.run(_iotsim("run", str(bad), "--port", "1"), capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert "groups[0].interval" in proc.stderr and "sometimes" in proc.stderr
    proc = subprocess.run(_iotsim("check", str(SCENARIOS / "smart-building.yaml")),
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0 and "232 devices" in proc.stdout


def test_ctrl_c_prints_the_report_so_far(broker: BrokerProcess, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    proc = subprocess.Popen(
        _iotsim("sensors", "--devices", "20", "--rate", "10/s", "--host", broker.host,
                "--port", str(broker.port), "--duration", "60s", "--report", str(out)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, COLUMNS="200"))
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stdout + stderr
    assert "interrupted" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["interrupted"] is True
    assert report["run"]["wall_s"] < 20 and report["messages"]["published"] > 0
    assert report["ok"]


def test_without_rich_the_command_names_the_sim_extra() -> None:
    code = ("import sys; sys.modules['rich'] = None\n"  # as if rich were not installed
            "from iotsim.launcher import main\n"
            "raise SystemExit(main(['check', 'x.yaml']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 2
    assert "pip install 'iotbroker[sim]'" in proc.stderr and "Traceback" not in proc.stderr
    # The broker itself does not import rich.
    code = ("import sys; sys.modules['rich'] = None\n"
            "from iotbroker.cli import main\n"
            "raise SystemExit(main(['check-config', '--no-files', sys.argv[1]]))\n")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code, str(root / "configs" / "default.yaml")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


def test_readme_and_simulator_doc_give_the_same_install_command() -> None:
    """Issue 18: a newcomer copying either gets the same environment."""
    root = SCENARIOS.parents[1]

    def commands(path: Path) -> set[str]:
        return {line.split("#")[0].strip() for line in path.read_text().splitlines()
                if "pip install -e '.[sim]'" in line and "venv" in line}

    readme, doc = commands(root / "README.md"), commands(root / "docs" / "simulator.md")
    assert readme and readme == doc, (readme, doc)
