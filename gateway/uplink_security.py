"""How the uplink proves itself and checks the backend: the security profiles of the OCPP 1.6 security whitepaper.

Profiles (whitepaper ed. 2, §2): 1 = HTTP Basic auth over plain ws (a lab only),
2 = TLS + Basic auth, 3 = TLS with a client certificate (mutual TLS), no Basic auth.
0 here is wss with neither: the backend cannot tell who connects, but the link is
still encrypted and the backend checked. Plain ws:// needs `insecure_lab_mode`.

Pure but for `tls_context`, which reads the certificate files.
"""

from __future__ import annotations

import base64
import ssl
from datetime import UTC, datetime

from gateway.clock import EARLIEST_VALID
from gateway.errors import UplinkError
from gateway.settings import BackendSettings

LAB_WARNING = "insecure_lab_mode: plain ws://, nothing on the link is encrypted, nor is the backend checked; never use it in the field"


def inferred_profile(tls: bool, has_password: bool, has_client_cert: bool) -> int:
    """The profile a backend section amounts to when it does not name one."""
    if not tls:
        return 1 if has_password else 0
    if has_client_cert:
        return 3
    return 2 if has_password else 0


def effective_profile(backend: BackendSettings) -> int:
    if backend.security_profile is not None:
        return backend.security_profile
    return inferred_profile(is_tls(backend.url), backend.password_file is not None, backend.client_cert is not None)


def highest_profile(backend: BackendSettings) -> int:
    """The highest profile this installation can take when the backend raises SecurityProfile.

    2 needs wss (the Basic-auth key may come later by ChangeConfiguration), 3 a client certificate.
    """
    if not is_tls(backend.url):
        return 1
    return 3 if backend.client_cert is not None else 2


def is_tls(url: str) -> bool:
    return url.startswith("wss://")


def basic_auth_header(identity: str, password: bytes) -> dict[str, str]:
    """RFC 7617; the AuthorizationKey is binary, so the password is bytes (whitepaper ed. 2: hex-decoded)."""
    token = base64.b64encode(identity.encode() + b":" + password).decode()
    return {"Authorization": f"Basic {token}"}


def tls_context(backend: BackendSettings, profile: int) -> ssl.SSLContext:
    """TLS 1.2 or later only (REQUIREMENTS 11), the backend checked against the CA file or the system CAs."""
    ctx = ssl.create_default_context(cafile=str(backend.ca_file) if backend.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if profile == 3 and backend.client_cert is not None:
        ctx.load_cert_chain(str(backend.client_cert), str(backend.client_key) if backend.client_key else None)
    return ctx


def clock_problem(system_wall: float) -> str | None:
    """Why TLS cannot work yet: a box that believes it is 1970 finds every certificate not yet valid."""
    if system_wall >= EARLIEST_VALID:
        return None
    said = datetime.fromtimestamp(max(system_wall, 0), UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"the system clock says {said}: no certificate can be validated before the clock is set "
        "(is NTP reachable? systemd-timesyncd or chrony)"
    )


# OpenSSL reasons (ssl.SSLError.reason) and what they tell the technician.
_PEER_REFUSED_OUR_CERT = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the backend wants a client certificate (security profile 3) and got none",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the backend refused our client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the backend does not trust the CA of our client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the backend says our client certificate has expired",
    "TLSV1_ALERT_DECRYPT_ERROR": "the backend refused our client certificate",
}
_OLD_TLS = ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "WRONG_VERSION_NUMBER", "NO_PROTOCOLS_AVAILABLE")


def describe_tls_failure(exc: ssl.SSLError) -> str:
    """One line a technician can act on, for a failed TLS handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the backend's certificate did not validate: {exc.verify_message} (check ca_file and the clock)"
    reason = exc.reason or ""
    if reason in _PEER_REFUSED_OUR_CERT:
        return _PEER_REFUSED_OUR_CERT[reason]
    if reason in _OLD_TLS:
        return f"the backend offers no TLS 1.2 or later; refused ({reason})"
    return f"TLS handshake failed: {reason or exc}"


def describe_failure(exc: BaseException) -> str:
    """A failed connection, handshake or call in one line; a TLS failure anywhere in its chain is named as such.

    With TLS 1.3 the backend checks our certificate after our side of the handshake is done: its
    refusal arrives while the websocket handshake waits for its answer, as that error's cause.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return describe_tls_failure(cause)
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, UplinkError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else f"{type(exc).__name__}: no answer in time"
