"""The ``cluster:`` section (docs/configuration.md, docs/cluster.md): contract keys
node_name, nats, replicas; every error names the key path, the value, what was expected
and the file:line, as for every other section; ``check-config`` validates it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iotbroker.config import ClusterConfig, QosStreamConfig, load_config, parse_config
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


def test_qos_stream_limits_are_keys_with_units() -> None:
    """``cluster.qos_stream`` (issue 14): the stream's limits and the ack patience."""
    default = parse_config({"cluster": {"node_name": "a"}}).cluster
    assert default is not None
    limits = default.qos_stream
    assert (limits.max_age, limits.max_bytes, limits.duplicate_window, limits.patience) == (
        86400.0, 1 << 30, 120.0, 10.0)
    config = parse_config({"cluster": {"node_name": "a", "qos_stream": {
        "max_age": "7d", "max_bytes": "10GiB", "duplicate_window": "5m", "patience": "30s"}}})
    assert config.cluster is not None
    assert config.cluster.qos_stream == QosStreamConfig(
        max_age=7 * 86400.0, max_bytes=10 << 30, duplicate_window=300.0, patience=30.0)
    unlimited = parse_config({"cluster": {"node_name": "a", "qos_stream": {
        "max_age": 0, "max_bytes": 0}}}).cluster
    assert unlimited is not None and unlimited.qos_stream.max_age == 0


@pytest.mark.parametrize(
    ("qos_stream", "key", "text"),
    [
        ({"max_age": "forever"}, "cluster.qos_stream.max_age", "is not a duration"),
        ({"max_bytes": "-1"}, "cluster.qos_stream.max_bytes", "is not a size"),
        ({"patience": 0}, "cluster.qos_stream.patience", "0 is not a duration"),
        ({"duplicate_window": "0.5s"}, "cluster.qos_stream.duplicate_window",
         "is not a duration"),
        ({"max_age": "1m", "duplicate_window": "2m"}, "cluster.qos_stream.duplicate_window",
         "is longer than cluster.qos_stream.max_age (60s)"),
        ({"max_ages": "1d"}, "cluster.qos_stream.max_ages", "did you mean 'max_age'"),
    ],
)
def test_bad_qos_stream_values_name_the_key(qos_stream: dict[str, object], key: str,
                                            text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"cluster": {"node_name": "a", "qos_stream": qos_stream}})
    assert info.value.key == key
    assert text in str(info.value)


def test_check_config_reports_qos_stream_errors_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("cluster:\n  node_name: a\n  qos_stream:\n    max_bytes: lots\n")
    result = subprocess.run(
        [sys.executable, "-m", "iotbroker", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    assert "cluster.qos_stream.max_bytes: 'lots' is not a size in bytes" in result.stderr
    assert f"{path}:4" in result.stderr
