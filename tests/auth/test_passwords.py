"""Password file: format, checks, rewriting, errors with file:line."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from iotbroker.auth import passwords
from iotbroker.auth.base import Authenticator
from iotbroker.auth.passwords import (
    PasswordFile,
    PasswordFileAuthenticator,
    delete_user,
    hash_password,
    set_password,
)
from iotbroker.errors import ConfigError

FAST = 1000  # iterations for tests; the format is the same


def users_in_file(path: str | Path) -> list[str]:
    """The usernames of a password file's lines, in file order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.partition(":")[0] for line in lines if line.strip() and not line.startswith("#")]


def test_hash_format_is_documented_pbkdf2_sha512() -> None:
    salt = bytes(range(16))
    text = hash_password(b"pw", FAST, salt)
    _, scheme, iterations, salt_b64, hash_b64 = text.split("$")
    assert scheme == "pbkdf2-sha512"
    assert iterations == "1000"
    assert base64.b64decode(salt_b64) == salt
    assert base64.b64decode(hash_b64) == hashlib.pbkdf2_hmac("sha512", b"pw", salt, 1000)


def test_defaults() -> None:
    text = hash_password(b"pw")
    _, _, iterations, salt_b64, hash_b64 = text.split("$")
    assert int(iterations) == passwords.DEFAULT_ITERATIONS == 210_000
    assert len(base64.b64decode(salt_b64)) == 16
    assert len(base64.b64decode(hash_b64)) == 64
    assert hash_password(b"pw") != text  # fresh salt each time


def test_set_check_change_delete(tmp_path: Path) -> None:
    path = str(tmp_path / "passwd")
    assert set_password(path, "alice", "s3cret", FAST) is True
    assert set_password(path, "bob", b"hunter2", FAST) is True
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    pw = PasswordFile.load(path)
    assert len(pw) == 2 and "alice" in pw and "bob" in pw
    assert users_in_file(path) == ["alice", "bob"]
    assert pw.check("alice", b"s3cret")
    assert pw.check("alice", b"s3cret")  # the remembered path
    assert not pw.check("alice", b"S3cret")
    assert not pw.check("alice", b"")
    assert pw.check("bob", b"hunter2")
    assert not pw.check("carol", b"s3cret")

    assert set_password(path, "alice", "new", FAST) is False
    pw = PasswordFile.load(path)
    assert not pw.check("alice", b"s3cret")
    assert pw.check("alice", b"new")
    assert len(pw) == 2 and users_in_file(path) == ["alice", "bob"]  # order kept

    delete_user(path, "alice")
    pw = PasswordFile.load(path)
    assert len(pw) == 1 and "bob" in pw and users_in_file(path) == ["bob"]
    with pytest.raises(KeyError):
        delete_user(path, "alice")


def test_utf8_password_and_username(tmp_path: Path) -> None:
    path = str(tmp_path / "passwd")
    set_password(path, "jürgen", "pässwörd", FAST)
    assert PasswordFile.load(path).check("jürgen", "pässwörd".encode())


def test_comments_and_blank_lines_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"# devices\n\nalice:{hash_password(b'a', FAST)}\n")
    set_password(str(path), "bob", "b", FAST)
    lines = path.read_text().splitlines()
    assert lines[0] == "# devices" and lines[1] == ""
    assert PasswordFile.load(str(path)).check("bob", b"b")


def _count_pbkdf2(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
        calls.append(iterations)
        return real(name, password, salt, iterations)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    return calls


def test_unknown_user_still_pays_for_the_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    pw = PasswordFile.from_lines([f"alice:{hash_password(b'a', FAST)}",
                                  f"bob:{hash_password(b'b', FAST)}",
                                  f"carol:{hash_password(b'c', 2000)}",
                                  f"dev1:{passwords.hash_secret(b'x')}"])
    calls = _count_pbkdf2(monkeypatch)
    assert pw.verify("nobody", b"a") == passwords.UNKNOWN_USER
    assert pw.verify("alice", b"x") == passwords.WRONG_PASSWORD
    # The count most PBKDF2 entries have: an unknown user costs what alice and bob cost.
    assert calls == [FAST, FAST]
    assert pw.needs_hashing("nobody", b"a")


def test_generated_secret_is_one_salted_sha512(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = passwords.generate_secret()
    assert len(secret) == 43 and len(base64.urlsafe_b64decode(secret + "=")) == 32
    salt = bytes(range(16))
    text = passwords.hash_secret(secret.encode(), salt)
    _, scheme, salt_b64, hash_b64 = text.split("$")
    assert scheme == "sha512"
    assert base64.b64decode(salt_b64) == salt
    assert base64.b64decode(hash_b64) == hashlib.sha512(salt + secret.encode()).digest()
    pw = PasswordFile.from_lines([f"dev1:{text}", f"alice:{hash_password(b'a', FAST)}"])
    calls = _count_pbkdf2(monkeypatch)
    assert not pw.needs_hashing("dev1", b"anything")
    assert pw.is_cheap("dev1") and not pw.is_cheap("alice") and not pw.is_cheap("nobody")
    assert pw.verify("dev1", secret.encode()) == passwords.OK
    assert pw.verify("dev1", b"wrong") == passwords.WRONG_PASSWORD
    assert calls == []  # no key stretching for a generated secret
    # PBKDF2 entries still need it, until the password was verified once.
    assert pw.needs_hashing("alice", b"a")
    assert pw.check("alice", b"a")
    assert not pw.needs_hashing("alice", b"a")
    assert pw.needs_hashing("alice", b"other")
    assert calls == [FAST]


def test_file_of_secrets_only_has_a_cheap_dummy() -> None:
    pw = PasswordFile.from_lines([f"dev1:{passwords.hash_secret(b'x')}"])
    assert not pw.needs_hashing("nobody", b"x")
    assert pw.verify("nobody", b"x") == passwords.UNKNOWN_USER


def test_set_secret(tmp_path: Path) -> None:
    path = str(tmp_path / "passwd")
    added, secret = passwords.set_secret(path, "dev1")
    assert added
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    line = Path(path).read_text().strip()
    assert line.startswith("dev1:$sha512$") and secret not in line
    assert ":$scram-sha-256$" in line
    pw = PasswordFile.load(path)
    assert pw.check("dev1", secret.encode())
    assert pw.scram_credentials("dev1") is not None
    added, again = passwords.set_secret(path, "dev1", scram_iterations=None)
    assert not added and again != secret
    pw = PasswordFile.load(path)
    assert pw.check("dev1", again.encode()) and not pw.check("dev1", secret.encode())
    assert pw.scram_credentials("dev1") is None


def test_rewrite_keeps_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    set_password(str(path), "alice", "a", FAST)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o640)
    set_password(str(path), "bob", "b", FAST)  # a rewrite keeps the mode it found
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_uses_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    pw = PasswordFile.from_lines([f"alice:{hash_password(b'a', FAST)}"])
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert pw.check("alice", b"a")
    assert seen


MALFORMED = [
    ("no colon", "alice"),
    ("empty user", ":$pbkdf2-sha512$1000$AAAA$AAAA"),
    ("wrong scheme", "alice:$sha1$1000$AAAA$AAAA"),
    ("too few fields", "alice:$pbkdf2-sha512$1000$AAAA"),
    ("iterations not a number", "alice:$pbkdf2-sha512$many$AAAA$AAAA"),
    ("too few iterations", "alice:$pbkdf2-sha512$10$AAAA$AAAA"),
    ("sha512 with iterations", "alice:$sha512$1000$AAAA$AAAA"),
    ("sha512 hash too short", "alice:$sha512$AAAA$AAAA"),
    ("salt not base64", "alice:$pbkdf2-sha512$1000$!!!!$AAAA"),
    ("hash too short", "alice:$pbkdf2-sha512$1000$AAAA$AAAA"),
    ("plain text password", "alice:secret"),
]


@pytest.mark.parametrize("line", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"# header\nbob:{hash_password(b'b', FAST)}\n{line}\n")
    with pytest.raises(ConfigError) as info:
        PasswordFile.load(str(path))
    assert str(info.value).startswith(f"{path}:3: ")


def test_duplicate_user_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    entry = f"bob:{hash_password(b'b', FAST)}"
    path.write_text(f"{entry}\n{entry}\n")
    with pytest.raises(ConfigError, match=":2: 'bob' is listed twice"):
        PasswordFile.load(str(path))


def test_set_password_refuses_to_rewrite_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("garbage\n")
    with pytest.raises(ConfigError, match=":1: "):
        set_password(str(path), "bob", "b", FAST)
    assert path.read_text() == "garbage\n"


@pytest.mark.parametrize("username", ["", "a:b", "a\nb"])
def test_bad_usernames_are_refused(tmp_path: Path, username: str) -> None:
    with pytest.raises(ValueError, match="bad username"):
        set_password(str(tmp_path / "p"), username, "x", FAST)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        PasswordFile.load(str(tmp_path / "nope"))


def test_authenticator_rules() -> None:
    pw = PasswordFile.from_lines([f"alice:{hash_password(b'a', FAST)}"])
    strict = PasswordFileAuthenticator(pw, allow_anonymous=False)
    assert isinstance(strict, Authenticator)
    assert strict.authenticate("c", "alice", b"a")
    assert not strict.authenticate("c", "alice", b"b")
    assert not strict.authenticate("c", "alice", None)
    assert not strict.authenticate("c", None, None)
    assert not strict.authenticate("c", "mallory", b"a")
    lenient = PasswordFileAuthenticator(pw, allow_anonymous=True)
    assert lenient.authenticate("c", None, None)
    assert not lenient.authenticate("c", "alice", b"wrong")  # a wrong password is wrong
    no_file = PasswordFileAuthenticator(None, allow_anonymous=True)
    assert no_file.authenticate("c", "anyone", b"x")
    assert not PasswordFileAuthenticator(None, allow_anonymous=False).authenticate("c", "a", b"")
