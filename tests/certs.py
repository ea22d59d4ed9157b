"""Throw-away certificates made at test time with the openssl command line (no `cryptography` dependency)."""

from __future__ import annotations

import subprocess
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_self_signed_cert(directory: Path, common_name: str = "127.0.0.1") -> tuple[Path, Path]:
    """A TLS server certificate for 127.0.0.1 and localhost (also usable as its own CA file): (cert, key)."""
    cert, key = directory / "server-cert.pem", directory / "server-key.pem"
    _openssl(
        "req", "-x509", *_EC, "-days", "2", "-subj", f"/CN={common_name}",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert),
    )
    return cert, key


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A CA certificate and its key: (cert, key)."""
    cert, key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
    _openssl("req", "-x509", *_EC, "-days", "2", "-subj", f"/CN={name} test CA", "-keyout", str(key), "-out", str(cert))
    return cert, key


def make_client_cert(directory: Path, ca: tuple[Path, Path], common_name: str) -> tuple[Path, Path]:
    """A client certificate for `common_name` signed by `ca`: (cert, key). The key is 0600, as installers keep it."""
    cert, key, request = directory / f"{common_name}.pem", directory / f"{common_name}.key", directory / f"{common_name}.csr"
    _openssl("req", *_EC, "-subj", f"/CN={common_name}", "-keyout", str(key), "-out", str(request))
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-days", "2", "-out", str(cert),
    )
    key.chmod(0o600)
    return cert, key
