"""The command line, run as `python -m iotbroker` in a subprocess."""

from __future__ import annotations

import base64
import os
import platform
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from iotbroker import __version__
from iotbroker import build as iotbroker_build
from iotbroker.auth.passwords import PasswordFile
from iotbroker.cli import build_config, build_parser, parse_listen
from iotbroker.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def iotbroker(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotbroker", *args],
        cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )


def test_check_config_good(tmp_path: Path) -> None:
    path = ROOT / "configs" / "default.yaml"
    result = iotbroker("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"OK: {path}"
    assert result.stderr == ""


def test_check_config_bad(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listeners:\n  - port: 1883\n  - port: 70000\n")
    result = iotbroker("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(
        "iotbroker: config error: listeners[1].port: 70000 is not a port (0–65535")
    assert "Traceback" not in result.stderr


def test_check_config_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("mqtt:\n  max_inflight: [1\n")
    result = iotbroker("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{path}:3" in result.stderr or f"{path}:2" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_opens_the_files_it_names(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"auth:\n  acl_file: {tmp_path / 'missing.acl'}\n")
    result = iotbroker("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "auth.acl_file" in result.stderr
    assert iotbroker("check-config", "--no-files", str(path), cwd=tmp_path).returncode == 0


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = iotbroker("check-config", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "iotbroker: config error: nope.yaml" in result.stderr


def test_run_with_bad_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("loop: trio\n")
    result = iotbroker("--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("iotbroker: config error: loop: 'trio'")
    result = iotbroker("run", "--listen", "127.0.0.1:99999", cwd=tmp_path)
    assert result.returncode == 2
    assert "--listen" in result.stderr


def test_passwd_add_change_delete(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "passwd"
    path.parent.mkdir()
    args = ("--iterations", "1000")
    result = iotbroker("passwd", str(path), "alice", "-b", "one", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert PasswordFile.load(str(path)).check("alice", b"one")

    result = iotbroker("passwd", str(path), "bob", "-b", "two", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = iotbroker("passwd", str(path), "alice", "-b", "three", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pw = PasswordFile.load(str(path))
    assert len(pw) == 2 and "alice" in pw and "bob" in pw
    assert [line.partition(":")[0] for line in path.read_text().splitlines()] == ["alice", "bob"]
    assert pw.check("alice", b"three") and not pw.check("alice", b"one")

    result = iotbroker("passwd", str(path), "alice", "--delete", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pw = PasswordFile.load(str(path))
    assert len(pw) == 1 and "bob" in pw
    assert [line.partition(":")[0] for line in path.read_text().splitlines()] == ["bob"]

    result = iotbroker("passwd", str(path), "alice", "--delete", cwd=tmp_path)
    assert result.returncode == 1
    assert "no user 'alice'" in result.stderr


def test_passwd_prompts_twice(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    # Without a terminal getpass reads the lines from stdin.
    result = iotbroker("passwd", str(path), "carol", "--iterations", "1000",
                       cwd=tmp_path, stdin="pw\npw\n")
    assert result.returncode == 0, result.stderr
    assert PasswordFile.load(str(path)).check("carol", b"pw")
    result = iotbroker("passwd", str(path), "carol", cwd=tmp_path, stdin="pw\nother\n")
    assert result.returncode == 1
    assert "do not match" in result.stderr


def test_passwd_generate_prints_a_secret_once_and_stores_a_cheap_hash(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    result = iotbroker("passwd", str(path), "dev-0001", "--generate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip()
    assert result.stdout == secret + "\n"  # the secret alone on stdout
    assert len(secret) == 43 and len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert "dev-0001" in result.stderr and secret not in result.stderr
    text = path.read_text()
    assert secret not in text and text.startswith("dev-0001:$sha512$")
    pw = PasswordFile.load(str(path))
    assert pw.check("dev-0001", secret.encode()) and pw.is_cheap("dev-0001")
    again = iotbroker("passwd", str(path), "dev-0001", "-g", "--no-scram", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.strip() != secret
    assert not PasswordFile.load(str(path)).check("dev-0001", secret.encode())
    bad = iotbroker("passwd", str(path), "dev-2", "-g", "--iterations", "5", cwd=tmp_path)
    assert bad.returncode == 2 and "--iterations" in bad.stderr
    assert iotbroker("passwd", str(path), "d", "-g", "-b", "x", cwd=tmp_path).returncode == 2


def test_passwd_human_password_keeps_pbkdf2_210000(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    result = iotbroker("passwd", str(path), "alice", "-b", "correct horse", "--no-scram",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert path.read_text().startswith("alice:$pbkdf2-sha512$210000$")
    pw = PasswordFile.load(str(path))
    assert not pw.is_cheap("alice") and pw.needs_hashing("alice", b"correct horse")


def test_passwd_files_are_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    for i, extra in enumerate((("-b", "pw", "--iterations", "1000"), ("--generate",))):
        path = tmp_path / f"passwd{i}"
        old = os.umask(0)  # the child inherits a umask that would allow 0666
        try:
            result = iotbroker("passwd", str(path), "u", *extra, cwd=tmp_path)
        finally:
            os.umask(old)
        assert result.returncode == 0, result.stderr
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # A rewrite (another user added) keeps it so.
        iotbroker("passwd", str(path), "v", "--generate", cwd=tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_passwd_usage_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "passwd")
    assert iotbroker("passwd", path, "a", "-b", "x", "--delete", cwd=tmp_path).returncode == 2
    assert iotbroker("passwd", path, "a:b", "-b", "x", cwd=tmp_path).returncode == 2


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:1883", ("127.0.0.1", 1883)),
    ("[::1]:1884", ("::1", 1884)),
    (":1885", ("127.0.0.1", 1885)),  # no host: loopback only (as mosquitto -p)
    ("1886", ("127.0.0.1", 1886)),
    ("0.0.0.0:1888", ("0.0.0.0", 1888)),
    ("localhost:1887", ("localhost", 1887)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
])
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["host:", "host:x", "::1:1883", "[::1]1883", "h:-1", "h:65536"])
def test_parse_listen_bad(text: str) -> None:
    with pytest.raises(ConfigError, match="--listen"):
        parse_listen(text)


def test_run_overrides(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "--listen", "127.0.0.1:2883", "--listen", "[::1]:2884",
                                 "--data-dir", str(tmp_path), "--log-level", "debug"])
    config = build_config(args)
    assert [(lst.type, lst.host, lst.port) for lst in config.listeners] == [
        ("tcp", "127.0.0.1", 2883), ("tcp", "::1", 2884)]
    assert config.storage.path == str(tmp_path)
    assert config.logging.level == "DEBUG"


def test_version_names_the_build_that_is_loaded(tmp_path: Path) -> None:
    """`--version` says whether the mypyc-compiled hot modules or their pure-Python
    source are loaded, as the interpreter itself sees it (scripts/test.sh runs this
    under both builds), and which interpreter runs them."""
    result = iotbroker("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    compiled = iotbroker_build.compiled_modules()
    total = len(iotbroker_build.COMPILED_MODULES)
    expected = ("pure Python" if not compiled else
                f"mypyc-compiled ({len(compiled)}/{total} hot modules)")
    python = f"{platform.python_implementation()} {platform.python_version()}"
    where = os.path.realpath(sys.executable)  # the base interpreter, not the venv's link
    assert result.stdout == f"iotbroker {__version__} ({expected}; {python} at {where})\n"
    # Every compiled module must come from an extension, every other from source.
    for name in iotbroker_build.COMPILED_MODULES:
        module = __import__(name, fromlist=["_"])
        assert str(module.__file__).endswith(".py") == (name not in compiled)


def test_check_config_reports_every_error_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("loop: trio\nmqtt:\n  max_inflite: 5\nlisteners:\n  - port: 70000\n")
    result = iotbroker("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert [line.split(":")[2].strip() for line in lines] == [
        "loop", "mqtt.max_inflite", "listeners[0].port"], result.stderr
    assert all(line.startswith("iotbroker: config error: ") for line in lines)
