"""kstore.server.auth: SASL PLAIN and SCRAM-SHA-256/512 against RFC 7677's example and
kafka-python's client, hostile tokens, the users file, and the TLS context."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import pickle
import ssl
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kstore.errors import (
    IllegalSaslStateError,
    InvalidConfigError,
    SaslAuthenticationFailedError,
    UnsupportedSaslMechanismError,
)
from kstore.server.auth import (
    SUPPORTED_MECHANISMS,
    AuthenticationError,
    SaslAuthenticator,
    ScramCredential,
    Users,
    scram_credential_line,
    server_ssl_context,
)
from tests.server.tlsutil import make_ca_and_cert, make_client_cert, openssl_or_skip

# kafka-python's own SCRAM client is the oracle (3.x path; 2.1-2.3 kept it in kafka.sasl).
try:
    from kafka.net.sasl.plain import SaslMechanismPlain  # type: ignore[import-untyped]
    from kafka.net.sasl.scram import ScramClient  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover
    from kafka.sasl.plain import SaslMechanismPlain  # type: ignore[import-untyped,no-redef,unused-ignore]
    from kafka.sasl.scram import ScramClient  # type: ignore[import-untyped,no-redef,unused-ignore]

SCRAM = ("SCRAM-SHA-256", "SCRAM-SHA-512")
HASH = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}

# RFC 7677 section 3.
RFC_SALT = "W22ZaJ0SNY7soEsUEjb6gQ=="
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


@pytest.fixture(scope="module")
def users() -> Users:
    """Real-strength credentials (4096 iterations): alice, plus RFC 7677's user."""
    return Users.from_dict({"alice": "wonder:land", "user": "pencil"})


@pytest.fixture(scope="module")
def fast_users() -> Users:
    """Few iterations, for tests that derive keys many times (hypothesis)."""
    return Users.from_dict({"user": "pencil"}, iterations=16)


def _rfc_users(tmp_path: Path) -> Users:
    cred = ScramCredential.derive(
        "pencil", "SCRAM-SHA-256", salt=base64.b64decode(RFC_SALT), iterations=4096
    )
    path = tmp_path / "users"
    path.write_text(cred.line("user") + "\n")
    return Users.load(path)


def _client_final(
    password: str,
    mechanism: str,
    client_first: bytes,
    server_first: bytes,
    *,
    c: bytes | None = None,
    r: bytes | None = None,
) -> tuple[bytes, bytes]:
    """RFC 5802 client arithmetic (client-final, expected server-final) for hand-made
    exchanges kafka-python cannot send (authzid, lying clients). ``c`` and ``r`` replace the
    attribute values and the proof is computed over them, so only the server's c=/r= checks
    can catch them. Checked against RFC 7677's example in test_rfc7677_example_byte_for_byte."""
    h = HASH[mechanism]
    gs2_end = client_first.index(b",", client_first.index(b",") + 1) + 1
    gs2, bare = client_first[:gs2_end], client_first[gs2_end:]
    attrs = dict(a.split(b"=", 1) for a in server_first.split(b","))
    salted = hashlib.pbkdf2_hmac(
        h().name, password.encode(), base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
    )
    client_key = hmac.new(salted, b"Client Key", h).digest()
    c = base64.b64encode(gs2) if c is None else c
    r = attrs[b"r"] if r is None else r
    without_proof = b"c=" + c + b",r=" + r
    auth_message = bare + b"," + server_first + b"," + without_proof
    signature = hmac.new(h(client_key).digest(), auth_message, h).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server_key = hmac.new(salted, b"Server Key", h).digest()
    server_final = b"v=" + base64.b64encode(hmac.new(server_key, auth_message, h).digest())
    return without_proof + b",p=" + base64.b64encode(proof), server_final


def _kafka_python_exchange(users: Users, user: str, password: str, mechanism: str) -> str:
    """Run kafka-python's SCRAM client against SaslAuthenticator; return the principal."""
    client = ScramClient(user, password, mechanism)
    server = SaslAuthenticator(users, mechanism)
    server_first = server.step(client.first_message())
    assert not server.complete
    client.process_server_first_message(server_first)
    server_final = server.step(client.final_message())
    # kafka-python raises ValueError when v= is not the server signature it expects.
    client.process_server_final_message(server_final)
    assert server.complete
    assert server.principal is not None
    return server.principal


# --- SCRAM: RFC 7677 and kafka-python as oracles ---------------------------------------------


def test_rfc7677_example_byte_for_byte(tmp_path: Path) -> None:
    server = SaslAuthenticator(_rfc_users(tmp_path), "SCRAM-SHA-256", server_nonce=RFC_SERVER_NONCE)
    assert server.step(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert not server.complete and server.principal is None
    assert server.step(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.complete and server.principal == "user"
    # The hand-made client used below agrees with the RFC too.
    assert _client_final("pencil", "SCRAM-SHA-256", RFC_CLIENT_FIRST, RFC_SERVER_FIRST) == (
        RFC_CLIENT_FINAL,
        RFC_SERVER_FINAL,
    )


def test_rfc7677_credential_line_in_module_docstring() -> None:
    from kstore.server import auth

    line = ScramCredential.derive(
        "pencil", "SCRAM-SHA-256", salt=base64.b64decode(RFC_SALT), iterations=4096
    ).line("user")
    assert line in (auth.__doc__ or "")


@pytest.mark.parametrize("mechanism", SCRAM)
def test_kafka_python_client_authenticates(users: Users, mechanism: str) -> None:
    assert _kafka_python_exchange(users, "alice", "wonder:land", mechanism) == "alice"


@pytest.mark.parametrize("mechanism", SCRAM)
def test_kafka_python_wrong_password_fails_at_client_final(users: Users, mechanism: str) -> None:
    client = ScramClient("alice", "wonder:lnad", mechanism)
    server = SaslAuthenticator(users, mechanism)
    client.process_server_first_message(server.step(client.first_message()))
    with pytest.raises(SaslAuthenticationFailedError) as e:
        server.step(client.final_message())
    assert e.value.code == 58
    assert not server.complete and server.principal is None
    with pytest.raises(IllegalSaslStateError):
        server.step(client.final_message())


def test_server_nonce_extends_client_nonce_and_is_fresh(users: Users) -> None:
    nonces = []
    for _ in range(2):
        server_first = SaslAuthenticator(users, "SCRAM-SHA-256").step(b"n,,n=alice,r=abc")
        nonce = server_first.split(b",")[0].removeprefix(b"r=")
        assert nonce.startswith(b"abc") and len(nonce) >= 3 + 16
        assert b"," not in nonce and all(0x21 <= c <= 0x7E for c in nonce)
        nonces.append(nonce)
    assert nonces[0] != nonces[1]


def test_unknown_user_looks_like_a_real_one_until_client_final(users: Users) -> None:
    def server_first(user: str) -> dict[bytes, bytes]:
        msg = SaslAuthenticator(users, "SCRAM-SHA-256").step(b"n,,n=" + user.encode() + b",r=x")
        return dict(a.split(b"=", 1) for a in msg.split(b","))

    real, ghost = server_first("alice"), server_first("mallory")
    assert ghost[b"i"] == real[b"i"] == b"4096"
    assert len(base64.b64decode(ghost[b"s"])) == len(base64.b64decode(real[b"s"]))
    # The same unknown name gets the same salt each time; another name another salt.
    assert server_first("mallory")[b"s"] == ghost[b"s"] != server_first("eve")[b"s"]

    messages = {}
    for user, password in (("mallory", "wonder:land"), ("alice", "not it")):
        client = ScramClient(user, password, "SCRAM-SHA-256")
        server = SaslAuthenticator(users, "SCRAM-SHA-256")
        client.process_server_first_message(server.step(client.first_message()))
        with pytest.raises(SaslAuthenticationFailedError) as e:
            server.step(client.final_message())
        messages[user] = str(e.value)
    assert messages["mallory"] == messages["alice"]


def test_escaped_saslname_authenticates_the_unescaped_user() -> None:
    users = Users.from_dict({"a,b=c": "pw"}, iterations=16)
    # kafka-python does not escape names itself, so hand it the escaped form.
    client = ScramClient("a=2Cb=3Dc", "pw", "SCRAM-SHA-256")
    server = SaslAuthenticator(users, "SCRAM-SHA-256")
    client.process_server_first_message(server.step(client.first_message()))
    client.process_server_final_message(server.step(client.final_message()))
    assert server.principal == "a,b=c"


@pytest.mark.parametrize("mechanism", SCRAM)
def test_authzid_equal_to_user_is_accepted(users: Users, mechanism: str) -> None:
    first = b"n,a=alice,n=alice,r=nonce123"
    server = SaslAuthenticator(users, mechanism)
    server_first = server.step(first)
    final, expected = _client_final("wonder:land", mechanism, first, server_first)
    assert final.startswith(b"c=" + base64.b64encode(b"n,a=alice,"))
    assert server.step(final) == expected
    assert server.principal == "alice"


def test_unsupported_mechanism() -> None:
    with pytest.raises(UnsupportedSaslMechanismError) as e:
        SaslAuthenticator(Users.from_dict({}), "SCRAM-SHA-1")
    assert e.value.code == 33
    with pytest.raises(UnsupportedSaslMechanismError):
        SaslAuthenticator(Users.from_dict({}), "plain")  # Kafka compares names exactly


def test_error_codes_and_alias() -> None:
    assert AuthenticationError is SaslAuthenticationFailedError
    assert SaslAuthenticationFailedError.code == 58
    assert IllegalSaslStateError.code == 34
    assert UnsupportedSaslMechanismError.code == 33


# --- SCRAM: malformed messages ---------------------------------------------------------------

BAD_CLIENT_FIRST = {
    "empty": b"",
    "truncated-gs2": b"n,",
    "truncated-flag": b"n",
    "missing-r": b"n,,n=user",
    "missing-n": b"n,,r=abc",
    "swapped-n-r": b"n,,r=abc,n=user",
    "empty-nonce": b"n,,n=user,r=",
    "nonce-with-space": b"n,,n=user,r=ab c",
    "nonce-with-del": b"n,,n=user,r=ab\x7f",
    "nonce-non-ascii": "n,,n=user,r=ab\u00e9".encode(),
    "extension": b"n,,n=user,r=abc,tokenauth=true",
    "mandatory-extension": b"n,,m=x,n=user,r=abc",
    "channel-binding-y": b"y,,n=user,r=abc",
    "channel-binding-p": b"p=tls-unique,,n=user,r=abc",
    "unknown-gs2-flag": b"x,,n=user,r=abc",
    "authzid-other-user": b"n,a=alice,n=user,r=abc",
    "authzid-bad-attr": b"n,b=user,n=user,r=abc",
    "empty-authzid": b"n,a=,n=user,r=abc",
    "unescaped-equals": b"n,,n=us=er,r=abc",
    "lowercase-escape": b"n,,n=us=2cer,r=abc",
    "nul-in-name": b"n,,n=us\x00er,r=abc",
    "empty-name": b"n,,n=,r=abc",
    "invalid-utf8": b"n,,n=us\xffer,r=abc",
}


@pytest.mark.parametrize("mechanism", SCRAM)
@pytest.mark.parametrize("token", BAD_CLIENT_FIRST.values(), ids=BAD_CLIENT_FIRST.keys())
def test_malformed_client_first(users: Users, mechanism: str, token: bytes) -> None:
    server = SaslAuthenticator(users, mechanism)
    with pytest.raises(SaslAuthenticationFailedError) as e:
        server.step(token)
    assert type(e.value) is SaslAuthenticationFailedError and e.value.code == 58
    with pytest.raises(IllegalSaslStateError):
        server.step(b"c=biws,r=abc,p=AAAA")


def _bad_finals(mechanism: str, first: bytes, server_first: bytes) -> dict[str, bytes]:
    def make(c: bytes | None = None, r: bytes | None = None) -> bytes:
        return _client_final("wonder:land", mechanism, first, server_first, c=c, r=r)[0]

    final = make()
    c, r, p = final.split(b",")
    nonce, proof = r[2:], base64.b64decode(p[2:])
    flipped = bytes([proof[0] ^ 1]) + proof[1:]
    return {
        "empty": b"",
        "truncated": final[: len(final) // 2],
        "truncated-proof": final[:-6],
        "missing-r": c + b"," + p,
        "missing-p": c + b"," + r,
        "reordered": r + b"," + c + b"," + p,
        "extra-attribute": c + b"," + r + b",x=1," + p,
        # The lying-client cases carry a proof that is right for what they send.
        "wrong-gs2-y": make(c=base64.b64encode(b"y,,")),
        "wrong-gs2-authzid": make(c=base64.b64encode(b"n,a=alice,")),
        "empty-cbind": make(c=b""),
        "bad-base64-cbind": make(c=b"bi!ws"),
        "client-nonce-only": make(r=b"cnonce"),
        "nonce-plus-one": make(r=nonce + b"x"),
        "bad-base64-proof": c + b"," + r + b",p=" + p[2:10] + b"!" + p[10:],
        "bad-base64-padding": c + b"," + r + b"," + p.rstrip(b"="),
        "non-ascii-proof": c + b"," + r + b",p=" + "\u00e9".encode(),
        "short-proof": c + b"," + r + b",p=" + base64.b64encode(proof[:-1]),
        "long-proof": c + b"," + r + b",p=" + base64.b64encode(proof + b"\0"),
        "wrong-proof": c + b"," + r + b",p=" + base64.b64encode(flipped),
        "invalid-utf8": final + b"\xff",
    }


BAD_CLIENT_FINAL = [
    "empty", "truncated", "truncated-proof", "missing-r", "missing-p", "reordered",
    "extra-attribute", "wrong-gs2-y", "wrong-gs2-authzid", "empty-cbind", "bad-base64-cbind",
    "client-nonce-only", "nonce-plus-one", "bad-base64-proof", "bad-base64-padding",
    "non-ascii-proof", "short-proof", "long-proof", "wrong-proof", "invalid-utf8",
]  # fmt: skip


@pytest.mark.parametrize("mechanism", SCRAM)
@pytest.mark.parametrize("case", BAD_CLIENT_FINAL)
def test_malformed_client_final(users: Users, mechanism: str, case: str) -> None:
    first = b"n,,n=alice,r=cnonce"
    server = SaslAuthenticator(users, mechanism)
    server_first = server.step(first)
    cases = _bad_finals(mechanism, first, server_first)
    assert sorted(cases) == sorted(BAD_CLIENT_FINAL)
    with pytest.raises(SaslAuthenticationFailedError) as e:
        server.step(cases[case])
    assert type(e.value) is SaslAuthenticationFailedError and e.value.code == 58
    assert not server.complete and server.principal is None
    # After a failure even the correct message is out of sequence.
    with pytest.raises(IllegalSaslStateError) as e2:
        server.step(_client_final("wonder:land", mechanism, first, server_first)[0])
    assert e2.value.code == 34


@pytest.mark.parametrize("mechanism", SUPPORTED_MECHANISMS)
def test_step_after_success_is_illegal_state(users: Users, mechanism: str) -> None:
    server = SaslAuthenticator(users, mechanism)
    if mechanism == "PLAIN":
        assert server.step(b"\0alice\0wonder:land") == b""
    else:
        client = ScramClient("alice", "wonder:land", mechanism)
        client.process_server_first_message(server.step(client.first_message()))
        server.step(client.final_message())
    assert server.complete
    with pytest.raises(IllegalSaslStateError) as e:
        server.step(b"")
    assert e.value.code == 34
    assert server.complete and server.principal == "alice"


_FRAGMENTS = [
    "n", "y", "p=tls", "", "a=user", "a=", "n=user", "n=us=2Cer", "n=us=er", "r=abc", "r=",
    "m=x", "c=biws", "c=", "p=AAAA", "p=", "=3D", "=", "\u00e9", "\x00", "i=4096", "s=AA==",
]  # fmt: skip
_NONCE_CHARS = st.characters(min_codepoint=0x1F, max_codepoint=0x7F) | st.sampled_from("\u00e9,")


def _joined(parts: list[str]) -> bytes:
    return ",".join(parts).encode("utf-8", "surrogatepass")


def _first_tokens() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, shuffled attribute soup, and near-valid client-first messages."""
    near = st.builds(
        lambda gs2, user, nonce, extra, order: gs2.encode() + _joined(order([user, nonce, *extra])),
        st.sampled_from(["n,,", "n,a=user,", "n,a=ghost,", "y,,", "p=x,,", "n,", ""]),
        st.sampled_from(["n=user", "n=ghost", "n=us=2Cer", "n=us=er", "n=", "n=u\x00", "m=x"]),
        st.text(_NONCE_CHARS, max_size=8).map(lambda n: "r=" + n),
        st.lists(st.sampled_from(["x=1", "", "r=a"]), max_size=1),
        st.sampled_from([list, lambda xs: xs[::-1], lambda xs: xs[:-1], lambda xs: xs[1:]]),
    )
    soup = st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=8), max_size=6)
    return st.one_of(near, soup.map(_joined), st.binary(max_size=64))


def _final_tokens(nonce: str) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes and near-valid client-final messages around the real nonce."""
    proofs = [base64.b64encode(bytes(n)).decode() for n in (0, 31, 32, 33, 64, 65)]
    near = st.builds(
        lambda c, r, p, extra, order: _joined(order([c, r, *extra, p])),
        st.sampled_from(["c=biws", "c=", "c=bi!ws", "c=eSws", "c=biws=", "x"]),
        st.sampled_from([f"r={nonce}", f"r={nonce}x", f"r={nonce[:-1]}", "r=", ""]),
        st.sampled_from([*(f"p={p}" for p in proofs), "p=!!", "p=AAA", "p=\u00e9"]),
        st.lists(st.sampled_from(["x=1", ""]), max_size=1),
        st.sampled_from([list, lambda xs: xs[::-1], lambda xs: xs[:-1]]),
    )
    soup = st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=8), max_size=4)
    return st.one_of(near, soup.map(_joined), st.binary(max_size=128))


_HYPOTHESIS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_HYPOTHESIS
@given(mechanism=st.sampled_from(SUPPORTED_MECHANISMS), first=_first_tokens(), then=st.binary())
def test_arbitrary_first_token_raises_only_kstore_errors(
    fast_users: Users, mechanism: str, first: bytes, then: bytes
) -> None:
    server = SaslAuthenticator(fast_users, mechanism)
    try:
        server_first = server.step(first)
    except SaslAuthenticationFailedError:
        with pytest.raises(IllegalSaslStateError):
            server.step(then)
        return
    assert isinstance(server_first, bytes)
    # No drawn proof can be right, and after a PLAIN success any step is out of sequence.
    with pytest.raises((SaslAuthenticationFailedError, IllegalSaslStateError)):
        server.step(then)


@_HYPOTHESIS
@given(
    mechanism=st.sampled_from(SCRAM),
    user=st.sampled_from(["user", "ghost"]),
    client_nonce=st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","), min_size=1
    ),
    data=st.data(),
)
def test_arbitrary_client_final_raises_only_kstore_errors(
    fast_users: Users, mechanism: str, user: str, client_nonce: str, data: st.DataObject
) -> None:
    server = SaslAuthenticator(fast_users, mechanism)
    server_first = server.step(f"n,,n={user},r={client_nonce}".encode())
    nonce = server_first.split(b",")[0].removeprefix(b"r=").decode()
    final = data.draw(_final_tokens(nonce), label="client-final")
    with pytest.raises(SaslAuthenticationFailedError):
        server.step(final)
    assert not server.complete


# --- PLAIN -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token", [b"\0alice\0wonder:land", b"alice\0alice\0wonder:land"], ids=["empty", "same"]
)
def test_plain_accepts_both_authzid_forms(users: Users, token: bytes) -> None:
    server = SaslAuthenticator(users, "PLAIN")
    assert server.step(token) == b""
    assert server.complete and server.principal == "alice"


def test_plain_kafka_python_token(users: Users) -> None:
    client = SaslMechanismPlain(sasl_plain_username="alice", sasl_plain_password="wonder:land")
    server = SaslAuthenticator(users, "PLAIN")
    client.receive(server.step(client.auth_bytes()))
    assert client.is_authenticated() and server.principal == "alice"


BAD_PLAIN = {
    "wrong-password": b"\0alice\0wonder:lnad",
    "unknown-user": b"\0mallory\0wonder:land",
    "authzid-other-user": b"user\0alice\0wonder:land",
    "no-nul": b"alicewonder:land",
    "one-nul": b"alice\0wonder:land",
    "three-nuls": b"\0alice\0wonder\0land",
    "invalid-utf8-user": b"\0al\xffice\0wonder:land",
    "invalid-utf8-password": b"\0alice\0wonder:l\xffand",
    "empty-user": b"\0\0wonder:land",
    "empty-password": b"\0alice\0",
    "empty": b"",
}


@pytest.mark.parametrize("token", BAD_PLAIN.values(), ids=BAD_PLAIN.keys())
def test_plain_rejects(users: Users, token: bytes) -> None:
    server = SaslAuthenticator(users, "PLAIN")
    with pytest.raises(SaslAuthenticationFailedError) as e:
        server.step(token)
    assert type(e.value) is SaslAuthenticationFailedError and e.value.code == 58
    assert not server.complete and server.principal is None
    with pytest.raises(IllegalSaslStateError):
        server.step(b"\0alice\0wonder:land")


def test_plain_unknown_user_and_wrong_password_read_the_same(users: Users) -> None:
    messages = []
    for token in (BAD_PLAIN["wrong-password"], BAD_PLAIN["unknown-user"]):
        with pytest.raises(SaslAuthenticationFailedError) as e:
            SaslAuthenticator(users, "PLAIN").step(token)
        messages.append(str(e.value))
    assert messages[0] == messages[1]


def test_step_accepts_any_buffer(users: Users) -> None:
    for token in (bytearray(b"\0alice\0wonder:land"), memoryview(b"\0alice\0wonder:land")):
        assert SaslAuthenticator(users, "PLAIN").step(token) == b""


# --- Users file ------------------------------------------------------------------------------

GOOD_FILE = (
    "# kstore users\n"
    "\n"
    "alice:wonder:land\n"
    "   # indented comment\n"
    "bob:  spaces kept  \r\n"
    "carol:\u00fcnic\u00f8de\n"
    "dave:#not a comment\n"
)


def _plain_ok(users: Users, user: str, password: str) -> bool:
    try:
        SaslAuthenticator(users, "PLAIN").step(f"\0{user}\0{password}".encode())
    except SaslAuthenticationFailedError:
        return False
    return True


def test_load_good_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_FILE.encode())
    users = Users.load(path)
    assert len(users) == 4
    assert "alice" in users and "bob" in users and "# kstore users" not in users
    assert _plain_ok(users, "alice", "wonder:land")
    assert _plain_ok(users, "bob", "  spaces kept  ")
    assert not _plain_ok(users, "bob", "spaces kept")
    assert _plain_ok(users, "carol", "\u00fcnic\u00f8de")
    assert _plain_ok(users, "dave", "#not a comment")
    for mechanism in SCRAM:
        cred = users.credential("alice", mechanism)
        assert cred is not None and cred.iterations == 4096 and len(cred.salt) >= 16
    # A fresh salt per user and mechanism.
    salts = {users.credential(u, m).salt for u in ("alice", "bob") for m in SCRAM}  # type: ignore[union-attr]
    assert len(salts) == 4


def test_load_keeps_no_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:SuperSecret-123\n")
    users = Users.load(path)
    blob = pickle.dumps(users)
    assert b"SuperSecret-123" not in blob and "SuperSecret-123".encode("utf-16-le") not in blob
    assert "SuperSecret" not in repr(users) + repr(users.credential("alice", "SCRAM-SHA-256"))


BAD_LINES = {
    "no-colon": ("alice\n", 1),
    "empty-user": ("# c\n:pw\n", 2),
    "empty-password": ("\nalice:\n", 2),
    "leading-blank": (" alice:pw\n", 1),
    "control-char-in-user": ("al\tice:pw\n", 1),
    "duplicate-user": ("alice:pw\nbob:x\nalice:pw2\n", 3),
    "plaintext-and-scram": (
        "alice:pw\n" + scram_credential_line("alice", "pw", "SCRAM-SHA-512") + "\n",
        2,
    ),
    "duplicate-scram": (
        "\n".join([scram_credential_line("a", "pw", "SCRAM-SHA-256")] * 2) + "\n",
        2,
    ),
    "scram-too-few-fields": ("alice:scram-sha-256:AAAA:4096:AAAA\n", 1),
    "scram-too-many-fields": ("alice:SCRAM-SHA-512:AA==:4096:AA==:AA==:AA==\n", 1),
    "scram-bad-salt": ("alice:scram-sha-256:!!:4096:" + "A" * 44 + ":" + "A" * 44 + "\n", 1),
    "scram-empty-salt": ("alice:scram-sha-256::4096:" + "A" * 43 + "=:" + "A" * 43 + "=\n", 1),
    "scram-low-iterations": ("alice:scram-sha-256:AAAA:4095:" + "A" * 43 + "=:" + "A" * 43 + "=\n", 1),
    "scram-high-iterations": ("alice:scram-sha-256:AAAA:1000001:" + "A" * 43 + "=:" + "A" * 43 + "=\n", 1),
    "scram-iterations-not-decimal": ("alice:scram-sha-256:AAAA:4e3:" + "A" * 43 + "=:" + "A" * 43 + "=\n", 1),
    "scram-key-too-short": ("alice:scram-sha-512:AAAA:4096:" + "A" * 43 + "=:" + "A" * 43 + "=\n", 1),
}  # fmt: skip


@pytest.mark.parametrize("content,lineno", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_load_bad_line_names_file_and_line(tmp_path: Path, content: str, lineno: int) -> None:
    path = tmp_path / "users"
    path.write_text(content)
    with pytest.raises(InvalidConfigError) as e:
        Users.load(path)
    assert f"{path}:{lineno}:" in str(e.value)
    assert "pw2" not in str(e.value)


def test_load_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"alice:pw\n# ok\nbob:caf\xe9\n")
    with pytest.raises(InvalidConfigError, match=rf"{path}:3: not valid UTF-8"):
        Users.load(path)


def test_load_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="cannot read"):
        Users.load(tmp_path / "absent")
    (tmp_path / "empty").write_text("# nobody yet\n\n")
    with pytest.raises(InvalidConfigError, match="no users"):
        Users.load(tmp_path / "empty")


def test_scram_lines_round_trip_through_load(tmp_path: Path) -> None:
    lines = [
        scram_credential_line("carol", "c:a:r:o:l", "SCRAM-SHA-256"),
        scram_credential_line("carol", "c:a:r:o:l", "scram-sha-512", iterations=8192),
        scram_credential_line("dan", "d4n", "SCRAM-SHA-512"),
    ]
    assert lines[0].startswith("carol:scram-sha-256:") and ":4096:" in lines[0]
    assert "c:a:r:o:l" not in "".join(lines)
    path = tmp_path / "users"
    path.write_text("\n".join(lines) + "\n")
    users = Users.load(path)
    assert _kafka_python_exchange(users, "carol", "c:a:r:o:l", "SCRAM-SHA-256") == "carol"
    assert _kafka_python_exchange(users, "carol", "c:a:r:o:l", "SCRAM-SHA-512") == "carol"
    assert _kafka_python_exchange(users, "dan", "d4n", "SCRAM-SHA-512") == "dan"
    assert _plain_ok(users, "dan", "d4n") and not _plain_ok(users, "dan", "d4N")
    # dan has no SHA-256 credential: treated as unknown for that mechanism.
    with pytest.raises(SaslAuthenticationFailedError):
        _kafka_python_exchange(users, "dan", "d4n", "SCRAM-SHA-256")


@pytest.mark.parametrize(
    "args",
    [
        ("alice", "pw", "SCRAM-SHA-256", 4095),
        ("alice", "pw", "SCRAM-SHA-1", 4096),
        ("al:ice", "pw", "SCRAM-SHA-256", 4096),
        ("alice", "", "SCRAM-SHA-256", 4096),
        ("alice", "scram-sha-256:x", "SCRAM-SHA-256", 4096),
    ],
    ids=["low-iterations", "sha1", "colon-in-user", "empty-password", "ambiguous-password"],
)
def test_scram_credential_line_refuses(args: tuple[str, str, str, int]) -> None:
    with pytest.raises(ValueError):
        scram_credential_line(*args)


def test_password_that_looks_like_a_credential_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:SCRAM-SHA-256:not:a:credential\n")
    with pytest.raises(InvalidConfigError, match=rf"{path}:1:"):
        Users.load(path)


def test_from_dict_iterations_reach_the_client(fast_users: Users) -> None:
    server_first = SaslAuthenticator(fast_users, "SCRAM-SHA-512").step(b"n,,n=user,r=x")
    assert server_first.endswith(b",i=16")
    # Unknown users are shown the same count.
    server_first = SaslAuthenticator(fast_users, "SCRAM-SHA-512").step(b"n,,n=ghost,r=x")
    assert server_first.endswith(b",i=16")
    with pytest.raises(InvalidConfigError):
        Users.from_dict({"alice": "pw"}, iterations=0)
    with pytest.raises(InvalidConfigError):
        Users.from_dict({"": "pw"})


# --- TLS -------------------------------------------------------------------------------------

PAYLOAD = b"kstore over tls\n"


def _echo(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> bytes | None:
    """One line through a TLS echo server on 127.0.0.1; None if TLS refused it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await reader.readline())
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def run() -> bytes | None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname
                )
            except (ssl.SSLError, ConnectionError):
                return None
            try:
                writer.write(PAYLOAD)
                await writer.drain()
                return await reader.readline() or None
            except (ssl.SSLError, ConnectionError):
                return None
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    return asyncio.run(asyncio.wait_for(run(), 10))


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    openssl_or_skip()
    return make_ca_and_cert(tmp_path)


def _client_ctx(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


@pytest.mark.parametrize("server_hostname", ["127.0.0.1", "localhost"])
def test_tls_echo_round_trip(pki: tuple[Path, Path, Path], server_hostname: str) -> None:
    ca, cert, key = pki
    server_ctx = server_ssl_context(str(cert), str(key))
    assert server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_ctx.verify_mode == ssl.CERT_NONE
    assert _echo(server_ctx, _client_ctx(ca), server_hostname) == PAYLOAD


def test_tls_with_cafile_requires_a_client_certificate(
    pki: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    ca, cert, key = pki
    server_ctx = server_ssl_context(cert, key, cafile=ca)
    assert server_ctx.verify_mode == ssl.CERT_REQUIRED
    assert _echo(server_ctx, _client_ctx(ca), "localhost") is None
    client_cert, client_key = make_client_cert(tmp_path)
    client_ctx = _client_ctx(ca)
    client_ctx.load_cert_chain(client_cert, client_key)
    assert _echo(server_ctx, client_ctx, "localhost") == PAYLOAD


def test_tls_bad_files_raise_invalid_config(pki: tuple[Path, Path, Path], tmp_path: Path) -> None:
    ca, cert, key = pki
    with pytest.raises(InvalidConfigError, match="absent.pem"):
        server_ssl_context(tmp_path / "absent.pem", key)
    with pytest.raises(InvalidConfigError):
        server_ssl_context(cert, ca)  # the CA certificate is not the key
    with pytest.raises(InvalidConfigError, match="CA file"):
        server_ssl_context(cert, key, cafile=key)
    # An encrypted key must fail, not wait for a password on the terminal.
    protected = tmp_path / "protected.key"
    subprocess.run(
        [openssl_or_skip(), "pkey", "-in", str(key), "-out", str(protected),
         "-aes256", "-passout", "pass:secret"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    with pytest.raises(InvalidConfigError, match="key is encrypted"):
        server_ssl_context(cert, protected)


@pytest.mark.parametrize("mechanism", SCRAM)
def test_librdkafka_2_0_doubled_nonce_is_accepted_and_nothing_looser(users: Users, mechanism: str) -> None:
    """librdkafka <= 2.0 (Debian's kcat 1.7.1) sends r=<client nonce><client+server nonce> in
    client-final (captured from kcat against kstore serve); Kafka let it in. Exactly that form is
    accepted; other prefixes are not."""
    first = b"n,,n=alice,r=kcatnonce"
    for prefix, ok in ((b"kcatnonce", True), (b"x", False), (b"kcatnoncekcatnonce", False)):
        server = SaslAuthenticator(users, mechanism)
        server_first = server.step(first)
        combined = server_first.split(b",")[0][2:]
        final, expected = _client_final("wonder:land", mechanism, first, server_first,
                                        r=prefix + combined)
        if ok:
            assert server.step(final) == expected and server.complete
        else:
            with pytest.raises(SaslAuthenticationFailedError):
                server.step(final)
