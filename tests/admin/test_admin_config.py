"""The ``admin:`` section: validated by ``check-config`` (errors name the key, the value,
what was expected and file:line), never open without credentials beyond loopback,
and nothing of the admin room loaded while it is off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iotbroker.config import AdminConfig, load_config, parse_config
from iotbroker.errors import ConfigError


def test_off_by_default() -> None:
    config = parse_config({})
    assert config.admin == AdminConfig()
    assert config.admin.enabled is False and config.admin.host == "127.0.0.1"
    assert config.admin.port == 8080 and config.admin.users == ()


@pytest.mark.parametrize(("admin", "needle"), [
    ({"enabled": True, "host": "0.0.0.0"},
     "admin.host: '0.0.0.0' is not a loopback address: set admin.users or "
     "admin.api_keys_file"),
    ({"enabled": True, "users": ["alice"]},
     "admin.users: ['alice'] needs auth.password_file"),
    ({"enabled": True, "port": 1883},
     "admin.port: 1883 is already used by listeners[0]"),
    ({"enabled": True, "tls": {"certfile": "c"}}, "admin.tls.keyfile: None is missing"),
    ({"enabled": True, "max_page_size": 0}, "admin.max_page_size"),
    ({"enabled": "yes"}, "admin.enabled"),
    ({"enabeld": True}, "admin.enabeld"),
])
def test_bad_admin_config_names_the_key(admin: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"admin": admin})
    assert needle in str(info.value)


def test_network_address_with_credentials_is_accepted(tmp_path: Path) -> None:
    config = parse_config({"auth": {"password_file": "pw"},
                           "admin": {"enabled": True, "host": "0.0.0.0", "users": ["a"]}})
    assert config.admin.users == ("a",)
    loopback_open = parse_config({"admin": {"enabled": True, "host": "::1"}})
    assert loopback_open.admin.host == "::1"


def test_check_config_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text("admin:\n  enabled: true\n  host: 192.0.2.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert f"{path}:3" in str(info.value)
    result = subprocess.run([sys.executable, "-m", "iotbroker", "check-config", str(path)],
                            check=False, capture_output=True, text=True)
    assert result.returncode != 0 and "admin.host" in result.stderr + result.stdout


def test_the_broker_does_not_load_the_admin_room_when_off() -> None:
    """Off by default costs nothing: neither aiohttp nor iotbroker.admin is imported."""
    code = ("import sys, iotbroker.server.broker, iotbroker.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('aiohttp', "
            "'iotbroker.admin'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
