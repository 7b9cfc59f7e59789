"""The SASL users file holds passwords or the SCRAM keys that stand in for them: `kstore serve`
warns (as ssh does for a private key) when group or others may read it, and `kstore
scram-credential --sasl-users FILE` creates it 0600 and never widens an existing file's mode."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from kstore.cli import main
from kstore.errors import InvalidConfigError
from kstore.server.auth import Users
from tests.server.conftest import kcat

LINE_WARNING = "UNPROTECTED USERS FILE"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _users(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "users.txt"
    path.write_text("alice:alice-secret\n")
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o666, 0o620], ids=oct)
def test_users_file_open_to_others_is_loaded_with_a_warning(tmp_path, caplog, mode):
    path = _users(tmp_path, mode)
    with caplog.at_level(logging.WARNING, logger="kstore.server.auth"):
        users = Users.load(path)
    assert "alice" in users  # still used: a warning, not a lock-out
    warnings = [r for r in caplog.records if LINE_WARNING in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    msg = warnings[0].getMessage()
    assert str(path) in msg and f"{mode:04o}" in msg and "chmod 600" in msg
    assert warnings[0].levelno == logging.WARNING


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=oct)
def test_private_users_file_loads_silently(tmp_path, caplog, mode):
    path = _users(tmp_path, mode)
    with caplog.at_level(logging.DEBUG, logger="kstore.server.auth"):
        Users.load(path)
    assert LINE_WARNING not in caplog.text


def test_serve_warns_on_stderr_about_a_readable_users_file(kserver, tmp_path):
    path = _users(tmp_path, 0o644)
    srv = kserver("--sasl-users", str(path))
    lines = [ln for ln in srv.log.splitlines() if LINE_WARNING in ln]
    assert len(lines) == 1, srv.log[-3000:]
    assert "WARNING" in lines[0] and str(path) in lines[0] and "0644" in lines[0]
    # and it serves: the users in the file authenticate
    auth = ["-X", "security.protocol=sasl_plaintext", "-X", "sasl.mechanisms=PLAIN",
            "-X", "sasl.username=alice", "-X", "sasl.password=alice-secret"]
    kcat(srv, *auth, "-L", "-m", "5")


def _scram_credential(*args: str) -> None:
    r = CliRunner().invoke(main, ["scram-credential", *args])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077], ids=oct)
def test_scram_credential_creates_the_users_file_0600(tmp_path, umask):
    path = tmp_path / "users.txt"
    old = os.umask(umask)
    try:
        _scram_credential("carol", "--password", "carol-secret", "--sasl-users", str(path))
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert "carol" in Users.load(path)
    assert not (tmp_path / "users.txt.tmp").exists()


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400], ids=oct)
def test_scram_credential_keeps_an_existing_files_mode(tmp_path, mode, caplog):
    path = tmp_path / "users.txt"
    path.write_text("# team\nalice:alice-secret\n")
    os.chmod(path, mode)
    old = os.umask(0)  # the process umask must not matter either
    try:
        _scram_credential("carol", "--mechanism", "SCRAM-SHA-512", "--password", "c1",
                          "--sasl-users", str(path))
        # Again for the same user and mechanism: the line is replaced, not duplicated (the
        # loader refuses a user with two lines for one mechanism).
        _scram_credential("carol", "--mechanism", "SCRAM-SHA-512", "--password", "c2",
                          "--sasl-users", str(path))
        _scram_credential("carol", "--mechanism", "SCRAM-SHA-256", "--password", "c2",
                          "--sasl-users", str(path))
    finally:
        os.umask(old)
    assert _mode(path) == mode
    assert (LINE_WARNING in caplog.text) == bool(mode & 0o077)  # kept, but said to be too open
    text = path.read_text()
    assert text.startswith("# team\nalice:alice-secret\n")
    assert text.count("carol:scram-sha-512:") == 1 and text.count("carol:scram-sha-256:") == 1
    os.chmod(path, 0o600)
    users = Users.load(path)
    assert "alice" in users and "carol" in users
    cred = users.credential("carol", "SCRAM-SHA-512")
    assert cred is not None and cred.verify_password(b"c2")


def test_scram_credential_refuses_to_shadow_a_plaintext_line(tmp_path):
    path = tmp_path / "users.txt"
    path.write_text("carol:plain\n")
    os.chmod(path, 0o600)
    r = CliRunner().invoke(main, ["scram-credential", "carol", "--password", "x",
                                  "--sasl-users", str(path)])
    assert r.exit_code != 0
    assert "plaintext" in r.output and "carol" in r.output
    assert path.read_text() == "carol:plain\n"


def test_users_file_warning_helper_ignores_non_regular_files():
    from kstore.server.auth import warn_if_exposed

    assert not warn_if_exposed("/dev/null", os.stat("/dev/null").st_mode)
    with pytest.raises(InvalidConfigError):
        Users.load("/nonexistent/users.txt")
