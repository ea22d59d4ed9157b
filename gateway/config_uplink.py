"""The config's way to the backend: the `backend`, `uplinks` and `failover` sections, their checks and settings.

Part of gateway.config (which owns the rest of the file). Secure unless told
otherwise: wss only, unless `insecure_lab_mode: true`; a security profile that
the files given cannot serve is a fault, not a surprise at the first connect.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.profile_loader import BAUDRATES
from gateway.settings import BackendSettings, FailoverSettings, ModemSettings, UplinkSettings
from gateway.yamlschema import Document, Field, ListOf, dataclass_map, resolve_path

_TIMEOUT = Field(float, above=0)
_FILES = ("password_file", "ca_file", "client_cert", "client_key")


def _ws_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme not in ("ws", "wss"):
        return f"must start with wss:// (or ws:// in a lab), got {parts.scheme or 'no'} scheme"
    if not parts.hostname:
        return "has no host name"
    if parts.query or parts.fragment or any(c.isspace() for c in value):
        return (
            "must be a plain URL without ?query, #fragment or spaces: the identity is appended as its last path segment"
        )
    return None


def _ip_address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "is not an IPv4 or IPv6 address"
    return None


def _interface(value: str) -> str | None:
    # IFNAMSIZ is 16 with the NUL; no '/' or spaces (net/core/dev.c dev_valid_name).
    if len(value) > 15 or "/" in value or any(c.isspace() for c in value) or value in (".", ".."):
        return "is not a network interface name (at most 15 characters, no '/' or spaces)"
    return None


BACKEND = Field(
    dataclass_map(
        BackendSettings,
        {
            "url": Field(str, check=_ws_url),
            "security_profile": Field(int, min=0, max=3),
            "password_file": Field(str, min=1),
            "ca_file": Field(str, min=1),
            "client_cert": Field(str, min=1),
            "client_key": Field(str, min=1),
            "insecure_lab_mode": Field(bool),
            "response_timeout_s": _TIMEOUT,
            "reconnect_min_s": _TIMEOUT,
            "reconnect_max_s": _TIMEOUT,
            "ping_interval_s": Field(int, min=0),
            "ping_timeout_s": _TIMEOUT,
            "compression": Field(bool),
        },
    ),
    required=True,
)

UPLINKS = Field(
    ListOf(
        Field(
            dataclass_map(
                UplinkSettings,
                {
                    "name": Field(str, min=1, max=32),
                    "interface": Field(str, min=1, check=_interface),
                    "source_address": Field(str, min=1, check=_ip_address),
                    "monthly_budget_mb": Field(float, above=0),
                    "modem": Field(
                        dataclass_map(
                            ModemSettings,
                            {
                                "at_port": Field(str, min=1),
                                "baudrate": Field(int, choices=BAUDRATES + (230400, 460800, 921600)),
                                "poll_interval_s": Field(float, min=10),
                                "command_timeout_s": _TIMEOUT,
                            },
                        )
                    ),
                },
            )
        )
    ),
    min=1,
)

FAILOVER = Field(
    dataclass_map(FailoverSettings, {"failback_after_s": Field(float, min=0), "probe_interval_s": Field(float, above=0)})
)


def check(doc: Document, data: dict[str, Any], base: Path) -> None:
    """Cross-checks of the three sections; each skips what its own fields already faulted."""
    _check_backend(doc, data.get("backend", {}), base)
    _check_uplinks(doc, data.get("uplinks"))
    failover = data.get("failover", {})
    if failover.get("probe_interval_s", 0) > failover.get("failback_after_s", float("inf")):
        doc.error(("failover", "probe_interval_s"), "is longer than failback_after_s: no probe could prove the uplink healthy in time")


def _check_backend(doc: Document, backend: dict[str, Any], base: Path) -> None:
    low, high = backend.get("reconnect_min_s"), backend.get("reconnect_max_s")
    if low is not None and high is not None and low > high:
        doc.error(("backend", "reconnect_min_s"), f"is above reconnect_max_s ({high:g} s)")
    for key in _FILES:
        # Warnings: the file may be provisioned later, and check-config may run as a user who may not read
        # the service's 0600 secrets. The uplink names the file again if it is still missing at the connect.
        if backend.get(key) is not None:
            path = resolve_path(base, backend[key])
            if not path.exists():
                doc.warn(("backend", key), f"{path}: no such file (yet): the uplink cannot connect without it")
            elif not os.access(path, os.R_OK):
                doc.warn(("backend", key), f"{path}: this user cannot read it (the service's user may)")
    if (backend.get("client_cert") is None) != (backend.get("client_key") is None):
        doc.error(("backend", "client_key" if backend.get("client_cert") else "client_cert"), "client_cert and client_key go together")
    if "url" not in backend:
        return  # missing or faulty: already reported
    tls = str(backend["url"]).startswith("wss://")
    lab = backend.get("insecure_lab_mode", False)
    if not tls and not lab:
        doc.error(
            ("backend", "url"),
            "plain ws:// is refused: backends require wss:// (TLS 1.2+); set insecure_lab_mode: true for a lab backend",
        )
    if tls and lab:
        doc.warn(("backend", "insecure_lab_mode"), "has no effect with wss://")
    if lab and not tls:
        doc.warn(("backend", "insecure_lab_mode"), "plain ws://: nothing on the link is encrypted; never in the field")
    if not tls and backend.get("ca_file") is not None:
        doc.warn(("backend", "ca_file"), "is not used with a plain ws:// URL")
    has_password, has_cert = backend.get("password_file") is not None, backend.get("client_cert") is not None
    needs: dict[int | None, tuple[bool, str]] = {  # what an explicit security_profile needs; absent, it is inferred
        1: (not tls and has_password, "profile 1 is Basic auth over ws:// (a lab): needs a ws:// URL and password_file"),
        2: (tls and has_password, "profile 2 is TLS with Basic auth: needs a wss:// URL and password_file"),
        3: (tls and has_cert, "profile 3 is mutual TLS: needs a wss:// URL, client_cert and client_key"),
    }
    ok, why = needs.get(backend.get("security_profile"), (True, ""))
    if not ok:
        doc.error(("backend", "security_profile"), why)


def _check_uplinks(doc: Document, uplinks: list[dict[str, Any]] | None) -> None:
    seen: dict[str, int] = {}
    for i, uplink in enumerate(uplinks or []):
        if not isinstance(uplink, dict):
            continue
        name = uplink.get("name")
        if name in seen:
            doc.error(("uplinks", i, "name"), f"{name!r} is already the name of uplinks[{seen[name]}]")
        elif name is not None:
            seen[name] = i
    if uplinks and len(uplinks) > 1:
        for i, uplink in enumerate(uplinks):
            if isinstance(uplink, dict) and uplink.get("interface") is None and uplink.get("source_address") is None:
                doc.error(("uplinks", i), "with several uplinks each needs an interface or a source_address, or they are the same way out")


def build(data: dict[str, Any], base: Path) -> tuple[BackendSettings, tuple[UplinkSettings, ...], FailoverSettings]:
    backend = data["backend"]
    paths = {key: None if backend[key] is None else resolve_path(base, backend[key]) for key in _FILES}
    def modem(m: dict[str, Any] | None) -> ModemSettings | None:
        return None if m is None else ModemSettings(**(m | {"at_port": str(resolve_path(base, m["at_port"]))}))

    uplinks = tuple(UplinkSettings(**(u | {"modem": modem(u["modem"])})) for u in data["uplinks"]) or (UplinkSettings("default"),)
    return BackendSettings(**(backend | paths)), uplinks, FailoverSettings(**data["failover"])
