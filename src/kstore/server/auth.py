"""SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and TLS for ``kstore serve``.

This module is the mechanism logic only. The server core owns the framing (SaslHandshake,
SaslAuthenticate v0-2, raw v0 tokens) and feeds each client token to
:meth:`SaslAuthenticator.step`, sending back what it returns. The rules follow Kafka's broker
(``SaslServerAuthenticator``, ``PlainSaslServer``, ``ScramSaslServer``) and RFC 4616, 5802 and
7677; see ``kafka-protocol.md`` section 6 beside the style guide.

Users file
==========

A UTF-8 text file, one user per line. Blank lines and lines whose first non-blank character is
``#`` are ignored. A line is ``username:password``: the username is everything before the
first colon, the password everything after it, verbatim (it may contain colons and spaces; only
the line ending, ``\\n`` or ``\\r\\n``, is removed)::

    # kstore users
    alice:correct horse battery staple
    bob:p:a:s:s            <- bob's password is "p:a:s:s"

A plaintext password is turned into SCRAM credentials when the file is loaded, with a fresh
random salt per user and mechanism and 4096 PBKDF2 iterations, and then forgotten. Salts are
random per load, so a client cannot tell anything from them across restarts.

To keep plaintext out of the file, write the derived credentials instead, one line per
mechanism (``scram_credential_line`` makes them; the CLI will expose it)::

    carol:scram-sha-256:<b64 salt>:<iterations>:<b64 StoredKey>:<b64 ServerKey>
    carol:scram-sha-512:<b64 salt>:<iterations>:<b64 StoredKey>:<b64 ServerKey>

For example ``user:scram-sha-256:W22ZaJ0SNY7soEsUEjb6gQ==:4096:WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=``
is the user of RFC 7677's example (password ``pencil``). A user with only a SCRAM-SHA-512 line
can use SCRAM-SHA-512 and PLAIN, not SCRAM-SHA-256.

Rules, each reported as :class:`~kstore.errors.InvalidConfigError` naming the file and line
(never the password):

- the username is non-empty, has no leading or trailing blanks and no control characters;
- the password is non-empty and has no NUL (PLAIN could not carry it);
- a password may not begin with ``scram-sha-256:`` or ``scram-sha-512:`` (any case): such a line
  is a credential line and must be well formed;
- credential lines need 4096 <= iterations <= 1,000,000 (Kafka's Java client refuses fewer,
  librdkafka refuses more) and keys of the hash's size;
- a user appears once per mechanism: one plaintext line, or credential lines.

Passwords are used as their UTF-8 bytes without SASLprep, as Kafka, librdkafka and
kafka-python do.

PLAIN is checked against the user's SCRAM credential (SHA-256 if present, else SHA-512): the
password is run through the same PBKDF2 and must give the stored key. No separate PLAIN hash is
kept, and credential-only users can use PLAIN too.

Threads and cost
================

:class:`Users` is immutable after loading and may be shared by every connection.
:class:`SaslAuthenticator` belongs to one connection and is not thread-safe. A PLAIN step runs
PBKDF2 (about 2 ms at 4096 iterations), on purpose, since that is what makes a stolen users file
expensive to attack; SCRAM steps only run a few HMACs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Final, NoReturn

from kstore.errors import (
    IllegalSaslStateError,
    InvalidConfigError,
    KafkaStorageError,
    SaslAuthenticationFailedError,
    UnsupportedSaslMechanismError,
)
from kstore.log.checkpoint import atomic_write

log = logging.getLogger("kstore.server.auth")

__all__ = [
    "MAX_ITERATIONS",
    "MIN_ITERATIONS",
    "SUPPORTED_MECHANISMS",
    "AuthenticationError",
    "IllegalSaslStateError",
    "SaslAuthenticationFailedError",
    "SaslAuthenticator",
    "ScramCredential",
    "UnsupportedSaslMechanismError",
    "Users",
    "scram_credential_line",
    "server_ssl_context",
]

#: The server core's name for a failed authentication (Kafka error 58).
AuthenticationError = SaslAuthenticationFailedError

SUPPORTED_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_MECHANISMS: Final = ("SCRAM-SHA-256", "SCRAM-SHA-512")

#: Kafka's ScramMechanism minimum; the Java client refuses a server-first with fewer.
MIN_ITERATIONS: Final = 4096
#: librdkafka refuses a server-first with more (rdkafka_sasl_scram.c).
MAX_ITERATIONS: Final = 1_000_000
SALT_BYTES: Final = 16

_HASH_NAME: Final = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
_DIGEST_SIZE: Final = {"SCRAM-SHA-256": 32, "SCRAM-SHA-512": 64}

# Seeds the fake salts of unknown users. Per process, so the same unknown name gets the same
# salt on every attempt (a changing salt would give the user's absence away), while a restart
# changes it just as it changes the salts derived from plaintext lines.
_FAKE_SECRET: Final = secrets.token_bytes(32)

# RFC 5802 saslname: UTF-8 without NUL, "," or "=", except the escapes =2C and =3D.
_SASLNAME = re.compile(r"(?:[^\x00,=]|=2C|=3D)+")
_SASLNAME_ESCAPE = re.compile(r"=2C|=3D")
# RFC 5802 printable: %x21-2B / %x2D-7E (no comma).
_PRINTABLE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DECIMAL = re.compile(r"[0-9]{1,7}")


@dataclass(frozen=True, slots=True)
class ScramCredential:
    """What a SCRAM server stores for one user and mechanism (RFC 5802 section 3).

    Neither key lets a client log in: StoredKey is H(ClientKey), and the proof needs ClientKey.
    They are still left out of ``repr`` so that logs do not carry them.
    """

    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @classmethod
    def derive(
        cls,
        password: str,
        mechanism: str,
        *,
        salt: bytes | None = None,
        iterations: int = MIN_ITERATIONS,
    ) -> ScramCredential:
        """Derive the credential of ``password`` (a random salt unless one is given).

        Raises ``ValueError`` for a mechanism that is not SCRAM-SHA-256/512 or iterations < 1.
        """
        hash_name = _scram_hash(mechanism)
        if iterations < 1:
            raise ValueError(f"iterations must be positive, not {iterations}")
        if salt is None:
            salt = secrets.token_bytes(SALT_BYTES)
        salted = hashlib.pbkdf2_hmac(hash_name, password.encode("utf-8"), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", hash_name)
        return cls(
            mechanism=mechanism.upper(),
            salt=salt,
            iterations=iterations,
            stored_key=hashlib.new(hash_name, client_key).digest(),
            server_key=hmac.digest(salted, b"Server Key", hash_name),
        )

    def line(self, user: str) -> str:
        """This credential as a users-file line (no newline)."""
        b64 = _b64encode
        return (
            f"{user}:{self.mechanism.lower()}:{b64(self.salt)}:{self.iterations}:"
            f"{b64(self.stored_key)}:{b64(self.server_key)}"
        )

    def verify_password(self, password: bytes) -> bool:
        """Whether ``password`` (UTF-8 bytes) derives this credential; for PLAIN.

        Runs the full PBKDF2 and compares in constant time.
        """
        hash_name = _HASH_NAME[self.mechanism]
        salted = hashlib.pbkdf2_hmac(hash_name, password, self.salt, self.iterations)
        client_key = hmac.digest(salted, b"Client Key", hash_name)
        return hmac.compare_digest(hashlib.new(hash_name, client_key).digest(), self.stored_key)


def warn_if_exposed(path: str | PathLike[str], mode: int) -> bool:
    """Warn, as ssh does for a private key, when a users file is open to group or others
    (any of the 0o077 bits): it holds passwords or the keys that stand in for them. The
    warning goes to the ``kstore.server.auth`` logger (which reaches stderr by default).
    Returns whether it warned. The file is still used: refusing it would lock everyone out."""
    if not stat.S_ISREG(mode) or not mode & 0o077:
        return False
    perms = stat.S_IMODE(mode)
    log.warning(
        "WARNING: UNPROTECTED USERS FILE! Permissions %04o for '%s' are too open: other "
        "users of this machine can read the passwords or SCRAM keys in it. Run "
        "'chmod 600 %s' (the file should be readable by the server's user only).",
        perms, os.fspath(path), os.fspath(path))
    return True


def add_credential_line(path: str | PathLike[str], user: str, mechanism: str, line: str) -> None:
    """Put ``line`` (from :func:`scram_credential_line`) into the users file at ``path``,
    replacing ``user``'s earlier line for the same mechanism. A new file is created with mode
    0600; an existing file keeps its mode (never widened; a warning if group or others can
    read it) and its other lines. The file is replaced atomically. Raises :class:`~kstore.errors.InvalidConfigError` when ``user`` has a
    plaintext line (it claims both mechanisms: remove it first) or the file cannot be written.
    """
    path = os.fspath(path)
    mechanism = mechanism.upper()
    try:
        with open(path, "rb") as f:
            mode: int | None = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        mode, text = None, ""
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidConfigError(f"{path}: cannot read the users file: {e}") from e
    kept = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        name, colon, rest = raw.partition(":")
        if colon and name == user and not raw.lstrip().startswith("#"):
            if rest[:14].lower() not in ("scram-sha-256:", "scram-sha-512:"):
                raise InvalidConfigError(
                    f"{path}:{lineno}: user {user!r} has a plaintext password line, which "
                    f"covers every mechanism; remove it before adding a {mechanism} credential")
            if rest[:13].upper() == mechanism:
                continue  # replaced by the new line
        kept.append(raw)
    kept.append(line)
    data = ("\n".join(kept) + "\n").encode()
    try:
        # 0600 for a new file, from its creation on: never readable by others, not even briefly.
        atomic_write(path, data, mode=0o600 if mode is None else mode)
    except KafkaStorageError as e:
        raise InvalidConfigError(f"{path}: cannot write the users file: {e}") from e
    if mode is not None:
        warn_if_exposed(path, os.stat(path).st_mode)  # kept as it was: say it is too open


def scram_credential_line(
    user: str, password: str, mechanism: str, iterations: int = MIN_ITERATIONS
) -> str:
    """A users-file line holding ``user``'s SCRAM credential instead of the password.

    ``mechanism`` is ``SCRAM-SHA-256`` or ``SCRAM-SHA-512`` (any case). Raises ``ValueError``
    for another mechanism, iterations outside 4096..1,000,000, or a username or password the
    users file could not hold.
    """
    _scram_hash(mechanism)
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(
            f"iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}, not {iterations}"
        )
    problem = _username_problem(user) or _password_problem(password)
    if problem:
        raise ValueError(problem)
    return ScramCredential.derive(password, mechanism, iterations=iterations).line(user)


class Users:
    """Credentials loaded from a users file (format in the module docstring).

    Immutable; share one instance between connections. No plaintext password is kept.
    """

    __slots__ = ("_credentials", "_iterations")

    def __init__(
        self,
        credentials: Mapping[str, Mapping[str, ScramCredential]],
        iterations: int = MIN_ITERATIONS,
    ) -> None:
        """Prefer :meth:`load`, :meth:`parse` or :meth:`from_dict`.

        ``credentials`` maps user -> mechanism -> credential; ``iterations`` is the count shown
        for unknown users, which should match the real users' so it gives nothing away.
        """
        self._credentials = {user: dict(by_mech) for user, by_mech in credentials.items()}
        self._iterations = iterations

    @classmethod
    def load(cls, path: str | PathLike[str]) -> Users:
        """Read a users file.

        Raises :class:`~kstore.errors.InvalidConfigError` naming the file (and the line, for bad
        content) when it cannot be read, is not UTF-8, breaks a rule, or defines no user.
        """
        try:
            with open(path, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                data = f.read()
        except OSError as e:
            raise InvalidConfigError(
                f"{path}: cannot read the users file: {e.strerror or e}"
            ) from e
        warn_if_exposed(path, mode)
        data = data.removeprefix(b"\xef\xbb\xbf")  # a BOM left by a Windows editor
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise InvalidConfigError(f"{path}:{line}: not valid UTF-8") from None
        users = cls.parse(text, source=str(path))
        if not users._credentials:
            raise InvalidConfigError(f"{path}: the users file defines no users")
        return users

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> Users:
        """Users from the text of a users file; ``source`` names it in error messages.

        The whole text is checked before any PBKDF2 runs, so a typo on the last line is
        reported at once. Raises :class:`~kstore.errors.InvalidConfigError` (``source:line``).
        """
        plaintext: dict[str, str] = {}
        credentials: dict[str, dict[str, ScramCredential]] = {}
        seen: dict[tuple[str, str], int] = {}
        for lineno, raw in enumerate(text.split("\n"), 1):
            line = raw.removesuffix("\r")
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            where = f"{source}:{lineno}"
            user, colon, rest = line.partition(":")
            if not colon:
                raise InvalidConfigError(f"{where}: expected 'username:password', found no ':'")
            problem = _username_problem(user)
            if problem:
                raise InvalidConfigError(f"{where}: {problem}")
            if rest[:14].lower() in ("scram-sha-256:", "scram-sha-512:"):
                cred = _parse_credential(rest, where)
                _claim(seen, user, (cred.mechanism,), lineno, where)
                credentials.setdefault(user, {})[cred.mechanism] = cred
            else:
                problem = _password_problem(rest)
                if problem:
                    raise InvalidConfigError(f"{where}: {problem} (user {user!r})")
                _claim(seen, user, SCRAM_MECHANISMS, lineno, where)
                plaintext[user] = rest
        for user, password in plaintext.items():
            credentials[user] = {m: ScramCredential.derive(password, m) for m in SCRAM_MECHANISMS}
        return cls(credentials)

    @classmethod
    def from_dict(cls, users: dict[str, str], iterations: int = MIN_ITERATIONS) -> Users:
        """Users from ``{username: password}``, both mechanisms each.

        ``iterations`` may go below 4096 (down to 1) for tests that derive many credentials;
        Kafka's Java client refuses such a server, librdkafka and kafka-python do not. Raises
        :class:`~kstore.errors.InvalidConfigError` for a name or password a file could not hold.
        """
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise InvalidConfigError(
                f"iterations must be between 1 and {MAX_ITERATIONS}, not {iterations}"
            )
        credentials: dict[str, dict[str, ScramCredential]] = {}
        for user, password in users.items():
            problem = _username_problem(user) or _password_problem(password)
            if problem:
                raise InvalidConfigError(f"user {user!r}: {problem}")
            credentials[user] = {
                m: ScramCredential.derive(password, m, iterations=iterations)
                for m in SCRAM_MECHANISMS
            }
        return cls(credentials, iterations)

    def __contains__(self, user: object) -> bool:
        return user in self._credentials

    def __len__(self) -> int:
        return len(self._credentials)

    def __repr__(self) -> str:
        return f"<Users: {len(self._credentials)} users>"

    def credential(self, user: str, mechanism: str) -> ScramCredential | None:
        """``user``'s credential for a SCRAM mechanism, or None."""
        return self._credentials.get(user, {}).get(mechanism)

    def _fake_credential(self, user: str, mechanism: str) -> ScramCredential:
        """A credential for a user who does not exist, indistinguishable from outside.

        The salt is a keyed hash of the name, stable for the life of the process; the keys are
        random, so no proof can match (the caller refuses unknown users anyway).
        """
        label = f"{mechanism}\0{user}".encode("utf-8", "surrogatepass")
        size = _DIGEST_SIZE[mechanism]
        return ScramCredential(
            mechanism=mechanism,
            salt=hmac.digest(_FAKE_SECRET, label, "sha256")[:SALT_BYTES],
            iterations=self._iterations,
            stored_key=secrets.token_bytes(size),
            server_key=secrets.token_bytes(size),
        )


# Authenticator states.
_START: Final = 0
_SENT_SERVER_FIRST: Final = 1
_COMPLETE: Final = 2
_FAILED: Final = 3


class SaslAuthenticator:
    """One authentication exchange on one connection.

    PLAIN takes one step (the token ``authzid\\0user\\0password``; success returns ``b""``).
    SCRAM takes two: client-first -> server-first, then client-final -> server-final
    (``v=...``), after which ``complete`` is True and ``principal`` is the user name.

    :meth:`step` raises :class:`~kstore.errors.SaslAuthenticationFailedError` (58) for bad
    credentials or a malformed token, and :class:`~kstore.errors.IllegalSaslStateError` (34)
    for any step after success or failure. Nothing else escapes for any input bytes. Not
    thread-safe.
    """

    complete: bool
    principal: str | None

    def __init__(self, users: Users, mechanism: str, *, server_nonce: str | None = None) -> None:
        """Start an exchange for ``mechanism`` (case-sensitive, as Kafka compares it).

        ``server_nonce`` fixes SCRAM's server half of the nonce, for RFC test vectors only; by
        default it is 24 random URL-safe characters. Raises
        :class:`~kstore.errors.UnsupportedSaslMechanismError` (33) for a mechanism outside
        ``SUPPORTED_MECHANISMS``.
        """
        if mechanism not in SUPPORTED_MECHANISMS:
            raise UnsupportedSaslMechanismError(
                f"SASL mechanism {mechanism[:64]!r} is not enabled; this server supports "
                + ", ".join(SUPPORTED_MECHANISMS)
            )
        if server_nonce is not None and not _PRINTABLE.fullmatch(server_nonce):
            raise ValueError("server_nonce must be printable ASCII without commas")
        self.users = users
        self.mechanism = mechanism
        self.complete = False
        self.principal = None
        self._state = _START
        self._server_nonce = server_nonce if server_nonce is not None else secrets.token_urlsafe(18)
        # Set by the SCRAM client-first step, read by client-final.
        self._user = ""
        self._known = False
        self._credential: ScramCredential | None = None
        self._gs2_header = b""
        self._nonce = ""
        self._client_nonce = ""
        self._auth_message_prefix = ""

    def step(self, token: bytes | bytearray | memoryview) -> bytes:
        """Consume one client token and return the server's token (see the class docstring)."""
        if self._state in (_COMPLETE, _FAILED):
            raise IllegalSaslStateError(
                f"unexpected SASL token: the {self.mechanism} exchange has already "
                + ("succeeded" if self._state == _COMPLETE else "failed")
            )
        data = bytes(token)
        try:
            if self.mechanism == "PLAIN":
                return self._plain(data)
            if self._state == _START:
                return self._client_first(data)
            return self._client_final(data)
        except BaseException:
            self._state = _FAILED
            raise

    def _succeed(self, user: str) -> None:
        self._state = _COMPLETE
        self.complete = True
        self.principal = user

    def _bad_credentials(self) -> NoReturn:
        # The same words for an unknown user and a wrong password (Kafka does the same).
        raise SaslAuthenticationFailedError(
            f"invalid credentials with SASL mechanism {self.mechanism}"
        )

    def _plain(self, data: bytes) -> bytes:
        parts = data.split(b"\0")
        if len(parts) != 3:
            _fail("malformed PLAIN token: expected 'authzid NUL username NUL password'")
        authzid_b, user_b, password = parts
        try:
            authzid = authzid_b.decode("utf-8")
            user = user_b.decode("utf-8")
            password.decode("utf-8")
        except UnicodeDecodeError:
            _fail("malformed PLAIN token: not valid UTF-8")
        if not user or not password:
            _fail("malformed PLAIN token: empty username or password")
        if authzid and authzid != user:
            _fail("the authorization id differs from the username")
        cred = self.users.credential(user, "SCRAM-SHA-256") or self.users.credential(
            user, "SCRAM-SHA-512"
        )
        known = cred is not None
        if cred is None:
            # Do the same PBKDF2 as for a real user, so timing does not reveal who exists.
            cred = self.users._fake_credential(user, "SCRAM-SHA-256")
        if not (cred.verify_password(password) and known):
            self._bad_credentials()
        self._succeed(user)
        return b""

    def _client_first(self, data: bytes) -> bytes:
        text = _decode(data, "client-first")
        if text.startswith(("y,", "p=")):
            _fail("SCRAM channel binding is not supported; the gs2 header must start with 'n,'")
        if not text.startswith("n,"):
            _fail("malformed SCRAM client-first message: bad gs2 header")
        end = text.find(",", 2)
        if end < 0:
            _fail("malformed SCRAM client-first message: truncated gs2 header")
        authzid_attr = text[2:end]
        authzid = None
        if authzid_attr:
            if not authzid_attr.startswith("a="):
                _fail("malformed SCRAM client-first message: bad authzid in gs2 header")
            authzid = _saslname(authzid_attr[2:], "authzid")
        bare = text[end + 1 :]
        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            _fail("SCRAM mandatory extensions (m=) are not supported")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            _fail("malformed SCRAM client-first message: expected n=<user>,r=<nonce>")
        if len(attrs) > 2:
            _fail("SCRAM extensions (such as tokenauth) are not supported")
        user = _saslname(attrs[0][2:], "username")
        client_nonce = attrs[1][2:]
        if not _PRINTABLE.fullmatch(client_nonce):
            _fail("malformed SCRAM client-first message: the nonce must be printable ASCII")
        if authzid is not None and authzid != user:
            _fail("the authorization id differs from the username")

        cred = self.users.credential(user, self.mechanism)
        self._known = cred is not None
        if cred is None:
            # Answer as for a real user and fail only at client-final: refusing here would
            # tell anyone which names exist.
            cred = self.users._fake_credential(user, self.mechanism)
        self._user = user
        self._credential = cred
        self._gs2_header = text[: end + 1].encode("utf-8")
        self._client_nonce = client_nonce
        self._nonce = client_nonce + self._server_nonce
        server_first = f"r={self._nonce},s={_b64encode(cred.salt)},i={cred.iterations}"
        self._auth_message_prefix = f"{bare},{server_first}"
        self._state = _SENT_SERVER_FIRST
        return server_first.encode("ascii")

    def _client_final(self, data: bytes) -> bytes:
        cred = self._credential
        assert cred is not None  # set by _client_first, which ran before this state
        text = _decode(data, "client-final")
        attrs = text.split(",")
        if (
            len(attrs) != 3
            or not attrs[0].startswith("c=")
            or not attrs[1].startswith("r=")
            or not attrs[2].startswith("p=")
        ):
            _fail("malformed SCRAM client-final message: expected c=<gs2>,r=<nonce>,p=<proof>")
        if _b64decode(attrs[0][2:], "channel binding") != self._gs2_header:
            _fail("malformed SCRAM client-final message: c= does not match the gs2 header")
        nonce = attrs[1][2:]
        # librdkafka <= 2.0 (Debian's kcat 1.7.1) repeats its own nonce in front of the
        # combined one (r=<cnonce><cnonce+snonce>); Kafka accepted that by checking that the
        # nonce ends with the server's. Accept exactly that form, nothing looser.
        if nonce != self._nonce and nonce != self._client_nonce + self._nonce:
            _fail("malformed SCRAM client-final message: the nonce does not match")
        proof = _b64decode(attrs[2][2:], "proof")
        hash_name = _HASH_NAME[self.mechanism]
        if len(proof) != _DIGEST_SIZE[self.mechanism]:
            _fail("malformed SCRAM client-final message: the proof has the wrong length")

        auth_message = f"{self._auth_message_prefix},{attrs[0]},{attrs[1]}".encode()
        signature = hmac.digest(cred.stored_key, auth_message, hash_name)
        client_key = bytes(p ^ s for p, s in zip(proof, signature))
        matches = hmac.compare_digest(hashlib.new(hash_name, client_key).digest(), cred.stored_key)
        if not (matches and self._known):
            self._bad_credentials()
        self._succeed(self._user)
        server_signature = hmac.digest(cred.server_key, auth_message, hash_name)
        return b"v=" + base64.b64encode(server_signature)


def server_ssl_context(
    certfile: str | PathLike[str],
    keyfile: str | PathLike[str],
    cafile: str | PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A server-side TLS context for ``asyncio.start_server(ssl=...)``.

    TLS 1.2 or newer, no renegotiation. With ``cafile``, clients must present a certificate
    signed by one of its CAs (mutual TLS); only those CAs are trusted, not the system's. The
    key must be unencrypted: an encrypted key is refused instead of prompting on the terminal.
    Raises :class:`~kstore.errors.InvalidConfigError` naming the file that cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION

    def no_password() -> bytes:
        raise InvalidConfigError(
            f"{keyfile}: the TLS key is encrypted; kstore needs an unencrypted key file"
        )

    try:
        ctx.load_cert_chain(certfile, keyfile, password=no_password)
    except OSError as e:  # ssl.SSLError is an OSError
        raise InvalidConfigError(
            f"cannot load the TLS certificate {certfile} with key {keyfile}: {e}"
        ) from e
    if cafile is not None:
        try:
            ctx.load_verify_locations(cafile=cafile)
        except OSError as e:
            raise InvalidConfigError(f"cannot load the TLS CA file {cafile}: {e}") from e
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _fail(message: str) -> NoReturn:
    raise SaslAuthenticationFailedError(message)


def _scram_hash(mechanism: str) -> str:
    try:
        return _HASH_NAME[mechanism.upper()]
    except KeyError:
        raise ValueError(
            f"{mechanism!r} is not a SCRAM mechanism; use one of {', '.join(SCRAM_MECHANISMS)}"
        ) from None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        _fail(f"malformed SCRAM client-final message: {what} is not valid base64")


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        _fail(f"malformed SCRAM {what} message: not valid UTF-8")


def _saslname(text: str, what: str) -> str:
    if not _SASLNAME.fullmatch(text):
        _fail(f"malformed SCRAM client-first message: bad {what} (',' and '=' must be escaped)")
    return _SASLNAME_ESCAPE.sub(lambda m: "," if m.group() == "=2C" else "=", text)


def _username_problem(user: str) -> str | None:
    if not user:
        return "empty username"
    if ":" in user:
        return "a username cannot contain ':'"
    if user != user.strip() or _CONTROL.search(user):
        return f"username {user!r} has leading or trailing blanks or control characters"
    return None


def _password_problem(password: str) -> str | None:
    if not password:
        return "empty password"
    if "\0" in password:
        return "a password cannot contain NUL"
    if password[:14].lower() in ("scram-sha-256:", "scram-sha-512:"):
        return "a password cannot begin with 'scram-sha-256:' or 'scram-sha-512:'"
    return None


def _claim(
    seen: dict[tuple[str, str], int],
    user: str,
    mechanisms: tuple[str, ...],
    lineno: int,
    where: str,
) -> None:
    for mech in mechanisms:
        if (user, mech) in seen:
            raise InvalidConfigError(
                f"{where}: user {user!r} already has {mech} credentials "
                f"(line {seen[user, mech]}); give each user one line per mechanism"
            )
        seen[user, mech] = lineno


def _parse_credential(rest: str, where: str) -> ScramCredential:
    fields = rest.split(":")
    if len(fields) != 5:
        raise InvalidConfigError(
            f"{where}: expected 'username:{fields[0].lower()}:<b64 salt>:<iterations>:"
            f"<b64 stored key>:<b64 server key>', found {len(fields) + 1} fields"
        )
    mechanism = fields[0].upper()
    salt_b64, iterations_s, stored_b64, server_b64 = fields[1:]
    if not _DECIMAL.fullmatch(iterations_s):
        raise InvalidConfigError(f"{where}: iterations must be a decimal number")
    iterations = int(iterations_s)
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise InvalidConfigError(
            f"{where}: iterations must be between {MIN_ITERATIONS} (Kafka's minimum) and "
            f"{MAX_ITERATIONS} (librdkafka's maximum), not {iterations}"
        )
    decoded: list[bytes] = []
    for name, text in (("salt", salt_b64), ("stored key", stored_b64), ("server key", server_b64)):
        try:
            decoded.append(base64.b64decode(text, validate=True))
        except ValueError:
            raise InvalidConfigError(f"{where}: the {name} is not valid base64") from None
    salt, stored_key, server_key = decoded
    size = _DIGEST_SIZE[mechanism]
    if not salt:
        raise InvalidConfigError(f"{where}: empty salt")
    if len(stored_key) != size or len(server_key) != size:
        raise InvalidConfigError(f"{where}: {mechanism} keys must be {size} bytes")
    return ScramCredential(mechanism, salt, iterations, stored_key, server_key)
