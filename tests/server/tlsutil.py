"""Throwaway TLS material for tests, made with the ``openssl`` command-line tool.

The server certificate carries SAN ``IP:127.0.0.1`` and ``DNS:localhost`` because librdkafka
>= 2.0 verifies the hostname by default, so the same files serve kcat and Python clients. Keys
are EC P-256 (fast to generate) and unencrypted; certificates are valid for two days. Tests
that call these helpers are skipped when ``openssl`` is not installed.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

_CA_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = kstore test CA
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""

_LEAF_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
"""

_LEAF_EXTENSIONS = """\
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl_or_skip() -> str:
    """The path of the ``openssl`` CLI, or skip the calling test."""
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("the openssl CLI is not installed; TLS tests use it to make certificates")
    return exe


def _openssl(*args: str, cwd: Path) -> None:
    exe = openssl_or_skip()
    done = subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _new_key_and_csr(directory: Path, name: str, cn: str) -> tuple[Path, Path]:
    config = directory / f"{name}.cnf"
    config.write_text(_LEAF_CONFIG.format(cn=cn))
    key, csr = directory / f"{name}.key", directory / f"{name}.csr"
    _openssl(
        "req", "-new", "-config", str(config),
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr),
        cwd=directory,
    )  # fmt: skip
    return key, csr


def _sign(directory: Path, name: str, csr: Path, extensions: str) -> Path:
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    cert = directory / f"{name}.pem"
    _openssl(
        "x509", "-req", "-in", str(csr),
        "-CA", str(directory / "ca.pem"), "-CAkey", str(directory / "ca.key"),
        "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2",
        "-extfile", str(ext), "-out", str(cert),
        cwd=directory,
    )  # fmt: skip
    return cert


def make_ca_and_cert(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Write a CA and a server certificate into ``tmp_path``; return (ca_pem, cert_pem, key_pem).

    The CA key stays in ``tmp_path/ca.key`` so :func:`make_client_cert` can sign with it.
    """
    tmp_path = Path(tmp_path)
    (tmp_path / "ca.cnf").write_text(_CA_CONFIG)
    _openssl(
        "req", "-x509", "-config", str(tmp_path / "ca.cnf"),
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(tmp_path / "ca.key"), "-out", str(tmp_path / "ca.pem"), "-days", "2",
        cwd=tmp_path,
    )  # fmt: skip
    key, csr = _new_key_and_csr(tmp_path, "server", "localhost")
    cert = _sign(
        tmp_path,
        "server",
        csr,
        _LEAF_EXTENSIONS.format(usage="serverAuth")
        + "subjectAltName = IP:127.0.0.1,DNS:localhost\n",
    )
    return tmp_path / "ca.pem", cert, key


def make_client_cert(tmp_path: Path, cn: str = "kstore-test-client") -> tuple[Path, Path]:
    """A client certificate signed by the CA of :func:`make_ca_and_cert` in the same
    ``tmp_path`` (call that first); returns (cert_pem, key_pem)."""
    tmp_path = Path(tmp_path)
    key, csr = _new_key_and_csr(tmp_path, "client", cn)
    cert = _sign(tmp_path, "client", csr, _LEAF_EXTENSIONS.format(usage="clientAuth"))
    return cert, key
