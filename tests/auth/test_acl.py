"""ACL file: parsing, MQTT-wildcard matching, filter coverage, patterns, deny."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotbroker.auth.acl import Acl, filter_covers
from iotbroker.auth.base import AllowAll, Authorizer
from iotbroker.auth.loader import load_auth
from iotbroker.config import AuthConfig
from iotbroker.errors import ConfigError

ACL = """\
# anonymous clients
topic read public/#
topic read $SYS/broker/uptime

user alice
topic readwrite home/alice/#
topic deny home/alice/secrets/#
topic write alerts/+

user bob
topic write sensors/bob/+
topic subscribe sub-only/#
topic cmd/bob

pattern readwrite devices/%c/#
pattern read users/%u/inbox
pattern deny devices/%c/locked
"""


@pytest.fixture
def acl() -> Acl:
    return Acl.from_text(ACL, "test.acl")


COVERS = [
    # (rule filter, subscription filter or topic, covered?)
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/+", "a/b", True),
    ("a/+", "a/+", True),
    ("a/+", "a/#", False),
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("a/#", "a", True),
    ("a/#", "a/b/c", True),
    ("a/#", "a/+/c", True),
    ("a/#", "a/#", True),
    ("a/#", "b", False),
    ("a/+/#", "a/#", False),
    ("a/+/#", "a/b/#", True),
    ("#", "anything/at/all", True),
    ("#", "$SYS/x", False),  # [MQTT-4.7.2-1]
    ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("#", "+/x", True),
    ("+", "", True),
    ("a/b", "a/+", False),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
]


@pytest.mark.parametrize(("rule", "sub", "covered"), COVERS)
def test_filter_covers(rule: str, sub: str, covered: bool) -> None:
    assert filter_covers(rule.split("/"), sub.split("/")) is covered


def test_is_an_authorizer(acl: Acl) -> None:
    assert isinstance(acl, Authorizer)
    assert isinstance(AllowAll(), Authorizer)


def test_anonymous_section(acl: Acl) -> None:
    assert acl.can_receive("c1", None, "public/news")
    assert acl.can_subscribe("c1", None, "public/#")
    assert not acl.can_subscribe("c1", None, "#")  # wider than the rule
    assert not acl.can_publish("c1", None, "public/news")
    assert acl.can_receive("c1", None, "$SYS/broker/uptime")
    assert not acl.can_receive("c1", None, "home/alice/x")
    assert not acl.can_receive("c1", None, "users/None/inbox")  # %u never for anonymous


def test_user_section_is_not_the_anonymous_one(acl: Acl) -> None:
    assert not acl.can_receive("c1", "alice", "public/news")
    assert not acl.can_receive("c1", "carol", "public/news")  # no section: patterns only


def test_readwrite_and_deny(acl: Acl) -> None:
    assert acl.can_publish("c1", "alice", "home/alice/lamp")
    assert acl.can_receive("c1", "alice", "home/alice/lamp")
    assert acl.can_subscribe("c1", "alice", "home/alice/+")
    assert not acl.can_publish("c1", "alice", "home/alice/secrets/pin")
    assert not acl.can_receive("c1", "alice", "home/alice/secrets/pin")
    assert not acl.can_subscribe("c1", "alice", "home/alice/secrets/#")
    assert not acl.can_subscribe("c1", "alice", "home/alice/secrets/+/x")
    # overlapping but not covered by the deny: granted; deliveries are filtered
    assert acl.can_subscribe("c1", "alice", "home/alice/#")
    assert not acl.can_publish("c1", "alice", "home/bob/lamp")


def test_write_only_and_subscribe_only(acl: Acl) -> None:
    assert acl.can_publish("c1", "alice", "alerts/fire")
    assert not acl.can_receive("c1", "alice", "alerts/fire")
    assert not acl.can_subscribe("c1", "alice", "alerts/fire")
    assert acl.can_publish("c1", "bob", "sensors/bob/t")
    assert not acl.can_publish("c1", "bob", "sensors/bob/t/x")
    assert acl.can_subscribe("c1", "bob", "sub-only/a")
    assert not acl.can_receive("c1", "bob", "sub-only/a")


def test_default_access_is_readwrite(acl: Acl) -> None:
    assert acl.can_publish("c1", "bob", "cmd/bob")
    assert acl.can_receive("c1", "bob", "cmd/bob")


def test_patterns(acl: Acl) -> None:
    assert acl.can_publish("dev42", "bob", "devices/dev42/temp")
    assert acl.can_publish("dev42", None, "devices/dev42/temp")
    assert not acl.can_publish("dev42", "bob", "devices/dev43/temp")
    assert not acl.can_publish("dev42", "bob", "devices/dev42/locked")
    assert acl.can_receive("c9", "bob", "users/bob/inbox")
    assert not acl.can_receive("c9", "alice", "users/bob/inbox")


@pytest.mark.parametrize("client_id", ["+", "#", "a/b", "x+", ""])
def test_unsafe_substitution_does_not_widen(acl: Acl, client_id: str) -> None:
    assert not acl.can_publish(client_id, "bob", "devices/anything/temp")
    assert not acl.can_publish(client_id, "bob", "devices/a/b/temp")
    assert not acl.can_subscribe(client_id, "bob", "devices/#")


def test_unsafe_substitution_widens_a_deny() -> None:
    acl = Acl.from_text("topic readwrite #\npattern deny private/%c/#\n")
    assert acl.can_publish("ok", None, "private/other/x")
    assert not acl.can_publish("ok", None, "private/ok/x")
    assert not acl.can_publish("a/b", None, "private/other/x")  # deny widened to +


def test_shared_subscriptions_check_the_filter(acl: Acl) -> None:
    assert acl.can_subscribe("c1", "alice", "$share/g/home/alice/#")
    assert not acl.can_subscribe("c1", "alice", "$share/g/home/bob/#")
    assert not acl.can_subscribe("c1", "alice", "$share/g")
    assert not acl.can_subscribe("c1", "alice", "$share//home/alice/x")


def test_sys_topics_need_explicit_rules() -> None:
    acl = Acl.from_text("topic readwrite #\n")
    assert acl.can_receive("c", None, "a/b")
    assert not acl.can_receive("c", None, "$SYS/broker/uptime")
    assert not acl.can_subscribe("c", None, "$SYS/#")


def test_empty_acl_denies_everything() -> None:
    acl = Acl.from_text("# nothing\n")
    assert not acl.can_publish("c", None, "a")
    assert not acl.can_subscribe("c", "u", "a")


def test_topics_with_spaces_and_merged_user_sections() -> None:
    acl = Acl.from_text("user u\ntopic read a b/c\nuser v\ntopic read x\nuser u\ntopic write w\n")
    assert acl.can_receive("c", "u", "a b/c")
    assert acl.can_publish("c", "u", "w")
    assert not acl.can_receive("c", "u", "x")


BAD = [
    ("unknown keyword", "topik read a"),
    ("user without name", "user"),
    ("topic without filter", "topic"),
    ("hash not last", "topic read a/#/b"),
    ("hash inside level", "topic read a/b#"),
    ("plus inside level", "pattern read a/x+/b"),
]


@pytest.mark.parametrize("line", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "acl"
    path.write_text(f"# header\ntopic read ok\n{line}\n")
    with pytest.raises(ConfigError) as info:
        Acl.load(str(path))
    assert str(info.value).startswith(f"{path}:3: ")


def test_load_auth(tmp_path: Path) -> None:
    open_setup = load_auth(AuthConfig())
    assert isinstance(open_setup.authorizer, AllowAll)
    assert open_setup.authenticator.authenticate("c", None, None)

    acl_path = tmp_path / "acl"
    acl_path.write_text(ACL)
    setup = load_auth(AuthConfig(allow_anonymous=True, acl_file=str(acl_path)))
    assert setup.acl is not None and setup.authorizer is setup.acl
    assert setup.authorizer.can_receive("c", None, "public/x")

    with pytest.raises(ConfigError, match=r"^auth\.acl_file: .*cannot be read"):
        load_auth(AuthConfig(acl_file=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match=r"^auth\.password_file: .*cannot be read"):
        load_auth(AuthConfig(password_file=str(tmp_path / "missing")))
