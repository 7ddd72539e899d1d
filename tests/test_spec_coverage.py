"""tests/spec_coverage.py counts a statement as covered only when a test against the
running broker over a socket cites it (issue 18); unit-level citations and MQTT 3.1
sections are counted apart. Checked on a small tests tree written here."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from tests import spec_coverage

CONFTEST = '''
import pytest
from tests.helpers.broker_process import BrokerProcess

@pytest.fixture
def broker(tmp_path):
    return BrokerProcess(tmp_path, "")

@pytest.fixture
def clock():
    return 0.0
'''

HELPERS = '''
from tests.helpers.rawclient import RawClient

def closed_by_server(client):
    """DISCONNECT was the last packet [MQTT-3.14.4-1]."""
    return client

def connected(host, port):
    return RawClient(host, port)
'''

WIRE = '''
"""Module docstring: [MQTT-9.9.9-9] (every test here is a wire test)."""
import pytest
from tests.fake.helpers import closed_by_server, connected

CASES = [("a", "[MQTT-4.4.4-4]")]

def test_mqtt_1_1_1_1_by_name(broker):
    pass

def test_via_helper_chain(broker):
    closed_by_server(connected("h", 1))

def test_docstring_only_fixture_free():
    """[MQTT-2.2.2-2] but no broker: unit level."""

@pytest.mark.parametrize("case", CASES)
def test_table(broker, case):
    pass

def test_mqtt31(broker):
    """MQTT 3.1 §3.1 client identifier 1-23 characters (not MQTT 3.1.1 §3.1.3)."""
'''

UNIT = '''
import pytest

@pytest.mark.parametrize(("name", "broker"), [("x", 1)])
def test_parameter_named_like_a_fixture_is_not_one(name, broker, clock):
    """[MQTT-4.7.3-1] checked on the topic validator only; MQTT 3.1 §3.2 too."""

def test_mqtt_1_1_1_1_also_unit(clock):
    pass
'''


def _tree(tmp_path: Path) -> Path:
    tests = tmp_path / "tests"
    for rel, text in {
        "conftest.py": CONFTEST, "fake/helpers.py": HELPERS, "fake/test_wire.py": WIRE,
        "fake/test_unit.py": UNIT, "helpers/broker_process.py": "class BrokerProcess: ...\n",
        "helpers/rawclient.py": "import socket\nclass RawClient:\n    sock = socket\n",
    }.items():
        path = tests / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tests


def test_wire_and_unit_citations_are_told_apart(tmp_path: Path) -> None:
    cited = spec_coverage.analyse(_tree(tmp_path))
    wire = {ident for ident, c in cited.items() if c.wire}
    unit = {ident for ident, c in cited.items() if c.unit}
    assert wire == {"MQTT-1.1.1-1", "MQTT-3.14.4-1", "MQTT-4.4.4-4", "MQTT 3.1 §3.1"}
    assert unit == {"MQTT-2.2.2-2", "MQTT-4.7.3-1", "MQTT-1.1.1-1", "MQTT-9.9.9-9",
                    "MQTT 3.1 §3.2"}
    assert cited["MQTT-4.7.3-1"].wire == set()  # the issue-18 case: unit only


def test_summary_counts_wire_coverage_and_3_1_sections(tmp_path: Path) -> None:
    tests = _tree(tmp_path)
    statements = tmp_path / "statements.csv"
    with open(statements, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "version", "section", "binds", "summary"])
        for ident in ("MQTT-1.1.1-1", "MQTT-4.7.3-1", "MQTT-3.14.4-1", "MQTT-5.5.5-5"):
            writer.writerow([ident, "5.0", "x", "Server", "s"])
        writer.writerow(["MQTT-4.4.4-4", "5.0", "x", "Client", "client only"])
    result = subprocess.run(
        [sys.executable, str(Path(spec_coverage.__file__)), "--csv", str(statements),
         "--tests", str(tests), "--json"],
        capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout)
    v5 = figures["5.0"]
    assert (v5["statements"], v5["wire"], v5["unit_only"], v5["uncited"]) == (4, 2, 1, 1)
    assert v5["unit_only_ids"] == ["MQTT-4.7.3-1"]
    assert figures["3.1"] == {"sections_cited": 2, "wire": ["§3.1"], "unit_only": ["§3.2"]}
    text = subprocess.run(
        [sys.executable, str(Path(spec_coverage.__file__)), "--csv", str(statements),
         "--tests", str(tests), "--missing"],
        capture_output=True, text=True, check=True).stdout
    assert "MQTT 5.0: 2/4 server-side statements checked by a test against the running " \
           "broker over a socket (50%); 1 more cited by unit-level tests only" in text
    assert "unit only MQTT-4.7.3-1" in text and "uncited   MQTT-5.5.5-5" in text
    assert 'MQTT 3.1: 2 sections cited ("MQTT 3.1 §x.y"): 1 by wire tests (§3.1), ' \
           "1 by unit-level tests only (§3.2)" in text
