"""The ``cluster:`` section (docs/configuration.md, docs/cluster.md): contract keys
node_name, nats, replicas; every error names the key path, the value, what was expected
and the file:line, as for every other section; ``check-config`` validates it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iotbroker.config import ClusterConfig, load_config, parse_config
from iotbroker.errors import ConfigError


def test_absent_means_no_cluster() -> None:
    assert load_config(None).cluster is None
    assert parse_config({"cluster": None}).cluster is None


def test_contract_keys() -> None:
    config = parse_config({"cluster": {
        "node_name": "node-a",
        "nats": ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"],
        "replicas": 3,
    }})
    assert config.cluster == ClusterConfig(
        node_name="node-a", nats=("nats://127.0.0.1:4222", "nats://127.0.0.1:4223"),
        replicas=3, subject_prefix="iotb",
    )
    assert parse_config({"cluster": {"node_name": "b"}}).cluster == ClusterConfig(node_name="b")


@pytest.mark.parametrize(
    ("section", "key", "text"),
    [
        ({"nats": ["nats://h:1"]}, "cluster.node_name", "is missing; it is required"),
        ({"node_name": "a b"}, "cluster.node_name", "'a b' is not a node name"),
        ({"node_name": "a", "nats": ["http://h:1"]}, "cluster.nats[0]",
         "'http://h:1' is not a NATS server URL"),
        ({"node_name": "a", "nats": "nats://h:1"}, "cluster.nats", "is not a list"),
        ({"node_name": "a", "replicas": 0}, "cluster.replicas", "0 is not an integer in 1–5"),
        ({"node_name": "a", "replicas": "3"}, "cluster.replicas", "is not an integer"),
        ({"node_name": "a", "subject_prefix": "a.*"}, "cluster.subject_prefix",
         "is not a NATS subject prefix"),
        ({"node_name": "a", "replica": 3}, "cluster.replica", "did you mean 'replicas'"),
    ],
)
def test_bad_cluster_values_name_the_key(section: dict[str, object], key: str,
                                         text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"cluster": section})
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert text in str(info.value)


def test_check_config_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("cluster:\n  node_name: a\n  replicas: 7\n")
    result = subprocess.run(
        [sys.executable, "-m", "iotbroker", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    assert "cluster.replicas: 7 is not an integer in 1–5" in result.stderr
    assert f"{path}:3" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text("cluster:\n  node_name: a\n  nats: [nats://127.0.0.1:4222]\n  replicas: 1\n")
    ok = subprocess.run(
        [sys.executable, "-m", "iotbroker", "check-config", str(good)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert ok.returncode == 0, ok.stderr
