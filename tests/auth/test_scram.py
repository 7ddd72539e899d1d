"""SCRAM-SHA-256 (RFC 7677 / RFC 5802): the server state machine, the password-file
field that stores the keys, ``iotbroker passwd``, and the enhanced-auth adapter."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from pathlib import Path

import pytest

from iotbroker.auth import scram
from iotbroker.auth.enhanced import StepKind, build_registry
from iotbroker.auth.passwords import PasswordFile, hash_password, scram_field, set_password
from iotbroker.auth.scram import (
    AuthFailed,
    ScramCredentials,
    ScramServer,
    saslprep,
    scram_credentials,
)
from iotbroker.cli import main as cli_main
from iotbroker.errors import ConfigError

# RFC 7677 §3.
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
RFC_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

PENCIL = scram_credentials("pencil", RFC_SALT, 4096)


def rfc_server(users: dict[str, ScramCredentials] | None = None,
               secret: bytes = b"k" * 32) -> ScramServer:
    table = {"user": PENCIL} if users is None else users
    return ScramServer(table.get, nonce=lambda: RFC_SERVER_NONCE, mock_secret=secret)


def client_final(server_first: bytes, password: str, gs2: bytes = b"n,,",
                 bare: bytes = b"n=user,r=" + RFC_CLIENT_NONCE.encode()) -> bytes:
    """The client side of RFC 5802, with hashlib/hmac only."""
    attrs = dict(item.split(b"=", 1) for item in server_first.split(b","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs[b"s"]),
                                 int(attrs[b"i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = b"c=" + base64.b64encode(gs2) + b",r=" + attrs[b"r"]
    auth_message = bare + b"," + server_first + b"," + without_proof
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return without_proof + b",p=" + base64.b64encode(proof)


# --------------------------------------------------------------------- RFC 7677


def test_rfc7677_credentials() -> None:
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert PENCIL.stored_key == hashlib.sha256(client_key).digest()
    assert PENCIL.server_key == hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    assert PENCIL.iterations == scram.DEFAULT_ITERATIONS == 4096


def test_rfc7677_exchange_exact_messages() -> None:
    server = rfc_server()
    assert server.start(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.username == "user"
    assert server.finish(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL


def test_test_client_matches_rfc() -> None:
    assert client_final(RFC_SERVER_FIRST, "pencil") == RFC_CLIENT_FINAL


def test_wrong_password_fails_with_invalid_proof() -> None:
    server = rfc_server()
    first = server.start(RFC_CLIENT_FIRST)
    with pytest.raises(AuthFailed) as info:
        server.finish(client_final(first, "pencil2"))
    assert info.value.reason == "invalid-proof"
    assert info.value.reason_detail == "wrong password"


def test_unknown_user_indistinguishable_until_finish() -> None:
    known = rfc_server({"user": scram_credentials("pencil", RFC_SALT)})
    unknown = rfc_server({})
    first_known = known.start(RFC_CLIENT_FIRST)
    first_unknown = unknown.start(RFC_CLIENT_FIRST)
    shape = re.compile(rb"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj\)hNlF\$k0,"
                       rb"s=[A-Za-z0-9+/]{22}==,i=4096")
    assert shape.fullmatch(first_known) and shape.fullmatch(first_unknown)
    # The fake salt is stable (asking twice does not give the game away) ...
    assert rfc_server({}).start(RFC_CLIENT_FIRST) == first_unknown
    # ... differs per username and per server secret.
    other = rfc_server({}).start(b"n,,n=someone,r=" + RFC_CLIENT_NONCE.encode())
    assert other.split(b",")[1] != first_unknown.split(b",")[1]
    assert rfc_server({}, secret=b"j" * 32).start(RFC_CLIENT_FIRST) != first_unknown
    # Failure comes at the end, with the same reason as a wrong password.
    with pytest.raises(AuthFailed) as info:
        unknown.finish(client_final(first_unknown, "pencil"))
    assert info.value.reason == "invalid-proof"
    assert info.value.reason_detail == "unknown user"


def test_proof_uses_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    server = rfc_server()
    server.start(RFC_CLIENT_FIRST)
    server.finish(RFC_CLIENT_FINAL)
    assert seen


def test_default_nonce_is_random_and_printable() -> None:
    a = ScramServer({"user": PENCIL}.get).start(RFC_CLIENT_FIRST)
    b = ScramServer({"user": PENCIL}.get).start(RFC_CLIENT_FIRST)
    nonce_a = a.split(b",")[0][2:]
    assert nonce_a.startswith(RFC_CLIENT_NONCE.encode())
    assert len(nonce_a) >= len(RFC_CLIENT_NONCE) + 32
    assert a != b
    assert all(0x21 <= c <= 0x7E and c != ord(",") for c in nonce_a)


# ------------------------------------------------------------------ GS2 and syntax


def test_gs2_y_flag_and_matching_authzid_are_accepted() -> None:
    server = rfc_server()
    gs2 = b"y,a=user,"
    bare = b"n=user,r=" + RFC_CLIENT_NONCE.encode()
    first = server.start(gs2 + bare)
    assert server.finish(client_final(first, "pencil", gs2=gs2, bare=bare)).startswith(b"v=")


def test_username_escapes() -> None:
    creds = scram_credentials("pw", iterations=4096)
    server = rfc_server({"a,b=c": creds})
    bare = b"n=a=2Cb=3Dc,r=" + RFC_CLIENT_NONCE.encode()
    first = server.start(b"n,," + bare)
    assert server.username == "a,b=c"
    assert server.finish(client_final(first, "pw", bare=bare)).startswith(b"v=")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"p=tls-unique,,n=user,r=abc", "channel-binding-not-supported"),
        (b"x,,n=user,r=abc", "other-error"),
        (b"n,n=user,r=abc", "other-error"),
        (b"n,,m=ext,n=user,r=abc", "extensions-not-supported"),
        (b"n,,r=abc,n=user", "other-error"),
        (b"n,,n=user", "other-error"),
        (b"n,,n=user,r=", "other-error"),
        (b"n,,n=us=2Xer,r=abc", "invalid-username-encoding"),
        (b"n,,n=us\x01er,r=abc", "invalid-username-encoding"),
        (b"n,,n=us\xc2\x85er,r=abc", "invalid-username-encoding"),  # U+0085, a C1 control
        (b"n,,n=,r=abc", "invalid-username-encoding"),
        (b"n,a=other,n=user,r=abc", "invalid-username-encoding"),
        (b"n,,n=user,r=ab\x7fc", "other-error"),
        (b"n,,n=\xff,r=abc", "invalid-encoding"),
    ],
)
def test_bad_client_first(message: bytes, reason: str) -> None:
    with pytest.raises(AuthFailed) as info:
        rfc_server().start(message)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("final", "reason"),
    [
        (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", "other-error"),
        (b"c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
         "channel-bindings-dont-match"),
        (b"c=biws,r=rOprNGfwEbeRWgbNEkqOXXX,p=AAAA", "other-error"),
        (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,c=biws,p=AAAA", "other-error"),
        (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!!!",
         "invalid-encoding"),
        (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
         "invalid-proof"),
    ],
)
def test_bad_client_final(final: bytes, reason: str) -> None:
    server = rfc_server()
    server.start(RFC_CLIENT_FIRST)
    with pytest.raises(AuthFailed) as info:
        server.finish(final)
    assert info.value.reason == reason


def test_messages_out_of_order() -> None:
    with pytest.raises(AuthFailed):
        rfc_server().finish(RFC_CLIENT_FINAL)
    server = rfc_server()
    server.start(RFC_CLIENT_FIRST)
    with pytest.raises(AuthFailed):
        server.start(RFC_CLIENT_FIRST)
    with pytest.raises(AuthFailed):  # the exchange is over after a failure
        server.finish(RFC_CLIENT_FINAL)
    server = rfc_server()
    server.start(RFC_CLIENT_FIRST)
    server.finish(RFC_CLIENT_FINAL)
    with pytest.raises(AuthFailed):  # and after a success
        server.finish(RFC_CLIENT_FINAL)


def test_extensions_in_client_final_are_ignored() -> None:
    server = rfc_server()
    first = server.start(RFC_CLIENT_FIRST)
    # Recompute the proof over a message carrying an extension attribute.
    attrs = dict(item.split(b"=", 1) for item in first.split(b","))
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    without_proof = b"c=biws,r=" + attrs[b"r"] + b",x=ext"
    auth_message = b"n=user,r=" + RFC_CLIENT_NONCE.encode() + b"," + first + b"," + without_proof
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message,
                         hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    assert server.finish(without_proof + b",p=" + base64.b64encode(proof)).startswith(b"v=")


# ------------------------------------------------------------------------ SASLprep


def test_saslprep_rfc4013_examples() -> None:
    assert saslprep("I\u00adX") == "IX"  # soft hyphen mapped to nothing
    assert saslprep("user") == "user"
    assert saslprep("USER") == "USER"
    assert saslprep("\u00aa") == "a"  # NFKC
    assert saslprep("\u2168") == "IX"
    assert saslprep("a\u00a0b") == "a b"  # non-ASCII space -> space
    for bad in ("\u0007", "a\tb", "\u0627\u0031"):  # control, control, bad bidi
        with pytest.raises(ValueError, match="SASLprep"):
            saslprep(bad)


def test_credentials_use_saslprep() -> None:
    assert scram_credentials("I\u00adX", RFC_SALT) == scram_credentials("IX", RFC_SALT)
    with pytest.raises(ValueError, match="SASLprep"):
        scram_credentials("bad\x07")
    with pytest.raises(ValueError, match="UTF-8"):
        scram_credentials(b"\xff")
    with pytest.raises(ValueError, match="iterations"):
        scram_credentials("pw", iterations=1000)


# ---------------------------------------------------------------- password file


def test_password_file_line_with_scram_keys(tmp_path: Path) -> None:
    path = str(tmp_path / "passwd")
    set_password(path, "alice", "s3cret", 1000)
    line = Path(path).read_text().strip()
    user, pbkdf2, scram_text = line.split(":")
    assert user == "alice" and pbkdf2.startswith("$pbkdf2-sha512$1000$")
    _, scheme, iterations, salt, stored, server = scram_text.split("$")
    assert scheme == "scram-sha-256" and iterations == "4096"
    expected = scram_credentials("s3cret", base64.b64decode(salt), 4096)
    assert base64.b64decode(stored) == expected.stored_key
    assert base64.b64decode(server) == expected.server_key
    pw = PasswordFile.load(path)
    assert pw.check("alice", b"s3cret")
    assert pw.scram_credentials("alice") == expected
    assert pw.scram_credentials("bob") is None


def test_old_lines_stay_valid_without_scram(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"alice:{hash_password(b'a', 1000)}\n")
    pw = PasswordFile.load(str(path))
    assert pw.check("alice", b"a")
    assert pw.scram_credentials("alice") is None
    set_password(str(path), "bob", "b", 1000, scram_iterations=None)
    assert ":" not in path.read_text().splitlines()[1].partition(":")[2]


def test_scram_field_round_trip_and_iterations() -> None:
    creds = scram_credentials("pw", iterations=5000)
    pw = PasswordFile.from_lines([f"u:{hash_password(b'pw', 1000)}:{scram_field(creds)}"])
    assert pw.scram_credentials("u") == creds


def test_set_password_refuses_a_password_saslprep_rejects(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    with pytest.raises(ValueError, match="--no-scram"):
        set_password(str(path), "alice", "tab\there", 1000)
    assert not path.exists()
    set_password(str(path), "alice", "tab\there", 1000, scram_iterations=None)
    assert PasswordFile.load(str(path)).check("alice", b"tab\there")


GOOD = hash_password(b"pw", 1000)
KEY = base64.b64encode(bytes(32)).decode()
MALFORMED_SCRAM = [
    ("three fields", f"u:{GOOD}:{GOOD}:{GOOD}"),
    ("wrong scheme", f"u:{GOOD}:$scram-sha-1$4096$AAAA${KEY}${KEY}"),
    ("too few parts", f"u:{GOOD}:$scram-sha-256$4096$AAAA${KEY}"),
    ("too few iterations", f"u:{GOOD}:$scram-sha-256$100$AAAA${KEY}${KEY}"),
    ("not base64", f"u:{GOOD}:$scram-sha-256$4096$!!!!${KEY}${KEY}"),
    ("short key", f"u:{GOOD}:$scram-sha-256$4096$AAAA$AAAA${KEY}"),
    ("empty salt", f"u:{GOOD}:$scram-sha-256$4096$${KEY}${KEY}"),
    ("empty field", f"u:{GOOD}:"),
]


@pytest.mark.parametrize("line", [m[1] for m in MALFORMED_SCRAM],
                         ids=[m[0] for m in MALFORMED_SCRAM])
def test_malformed_scram_field_names_file_and_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"# header\n{line}\n")
    with pytest.raises(ConfigError) as info:
        PasswordFile.load(str(path))
    assert str(info.value).startswith(f"{path}:2: ")


def test_mock_secret_depends_on_the_file() -> None:
    a = PasswordFile.from_lines([f"alice:{GOOD}"])
    b = PasswordFile.from_lines([f"alice:{GOOD}"])
    c = PasswordFile.from_lines([f"alice:{hash_password(b'pw', 1000)}"])
    assert a.scram_mock_secret == b.scram_mock_secret != c.scram_mock_secret


def test_cli_passwd_writes_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "passwd")
    assert cli_main(["passwd", path, "alice", "-b", "pw", "--iterations", "1000",
                     "--scram-iterations", "5000"]) == 0
    pw = PasswordFile.load(path)
    creds = pw.scram_credentials("alice")
    assert pw.check("alice", b"pw") and creds is not None and creds.iterations == 5000
    assert cli_main(["passwd", path, "bob", "-b", "pw", "--iterations", "1000",
                     "--no-scram"]) == 0
    assert PasswordFile.load(path).scram_credentials("bob") is None
    assert cli_main(["passwd", path, "carol", "-b", "a\x07b", "--iterations", "1000"]) == 2
    assert "--no-scram" in capsys.readouterr().err


# ------------------------------------------------------------ enhanced adapter


def _passwords() -> PasswordFile:
    return PasswordFile.from_lines(
        [f"user:{GOOD}:{scram_field(PENCIL)}", f"old:{GOOD}"])


def test_registry_offers_scram_only_with_a_password_file() -> None:
    assert build_registry(None).methods == []
    registry = build_registry(_passwords())
    assert registry.methods == ["SCRAM-SHA-256"]
    assert registry.create("PLAIN") is None


def test_adapter_success() -> None:
    registry = build_registry(_passwords(), nonce=lambda: RFC_SERVER_NONCE)
    auth = registry.create("SCRAM-SHA-256")
    assert auth is not None and auth.method == "SCRAM-SHA-256"
    step = auth.begin("c1", RFC_CLIENT_FIRST)
    assert step.kind is StepKind.CONTINUE and step.data == RFC_SERVER_FIRST
    assert step.reason_code == 0x18
    step = auth.step(RFC_CLIENT_FINAL)
    assert step.kind is StepKind.SUCCESS
    assert step.data == RFC_SERVER_FINAL and step.username == "user"
    assert auth.step(RFC_CLIENT_FINAL).kind is StepKind.FAILURE


def test_adapter_without_initial_response() -> None:
    auth = build_registry(_passwords(), nonce=lambda: RFC_SERVER_NONCE).create("SCRAM-SHA-256")
    assert auth is not None
    step = auth.begin("c1", None)
    assert step.kind is StepKind.CONTINUE and step.data == b""
    assert auth.step(RFC_CLIENT_FIRST).data == RFC_SERVER_FIRST
    assert auth.step(RFC_CLIENT_FINAL).kind is StepKind.SUCCESS


@pytest.mark.parametrize("user", ["user", "old", "nobody"])
def test_adapter_bad_credentials_are_0x86_at_the_end(user: str) -> None:
    auth = build_registry(_passwords()).create("SCRAM-SHA-256")
    assert auth is not None
    bare = f"n={user},r={RFC_CLIENT_NONCE}".encode()
    step = auth.begin("c1", b"n,," + bare)
    assert step.kind is StepKind.CONTINUE and step.data is not None
    step = auth.step(client_final(step.data, "wrong" if user == "user" else "pencil",
                                  bare=bare))
    assert step.kind is StepKind.FAILURE and step.reason_code == 0x86


def test_adapter_syntax_error_is_0x87() -> None:
    auth = build_registry(_passwords()).create("SCRAM-SHA-256")
    assert auth is not None
    step = auth.begin("c1", b"garbage")
    assert step.kind is StepKind.FAILURE and step.reason_code == 0x87
