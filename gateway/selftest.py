"""`charger-gateway selftest`: the commissioning checks, in turn, and the report they feed (REQUIREMENTS 27).

Six checks, each ending in ok, warn, fail or skipped with one line of detail:

1. the config is valid (every fault with file, line and key; warnings listed);
2. every configured slave (and separate meter) answers and matches its profile's
   identify checks; one that answers but does not is compared with every known
   profile to say what it looks like;
3. the clock is sane: not before the gateway existed (uplink_security.clock_problem),
   and kept by NTP where the kernel says (adjtimex);
4. the backend's host and port take a TCP connection over each configured uplink;
5. TLS validates, with the days the backend's certificate has left;
6. the backend accepts a BootNotification on a real OCPP 1.6J connection.

A failed check stops nothing, except that nothing runs without a valid config,
and no BootNotification is tried where no uplink reached the backend or TLS failed.

While the daemon runs (its control socket accepts), the serial lines are its own and
a second connection with our identity would make the backend drop the daemon's: checks
2 and 6 then ask the daemon (`identify`, `status`) instead. Checks 4 and 5 still run:
a TCP connection and a TLS handshake never reach OCPP (as uplink_connect.probe does).

Pure: each check's verdict from what was found (`config_check`, `slaves_check`,
`clock_check`, `uplinks_check`, `tls_check`, `boot_check`, `daemon_*`). Thin I/O
around them: `probe_devices`, `reach_uplinks`, `tls_handshakes`, `boot_once`, and
gateway.control_socket's client; `run_selftest` runs them in turn. gateway.commissioning_report prints
the result.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import enum
import getpass
import json
import os
import re
import socket
import ssl
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import websockets
from ocpp.exceptions import OCPPError
from websockets.asyncio.client import connect

import gateway
from gateway import control_socket
from gateway.auth_key import AuthKeyStore
from gateway.clock import iso, parse_iso
from gateway.config import load_config_with_warnings
from gateway.devprofile import Framing, Profile, ReadBlock
from gateway.errors import ConfigError, ConfigIssue, DeviceError, DeviceException, DeviceTimeout, LineUnavailable
from gateway.modbus_line import ModbusLine, build_lines, line_key, meter_line_key
from gateway.ocpp_link import WEBSOCKET_LOG, OcppLink
from gateway.ocpp_messages import boot_notification, new_message_id
from gateway.registers import decode_values, identify_matches
from gateway.scan import Match, Target, candidates, load_candidates, rank
from gateway.settings import BusSettings, Config, UplinkSettings
from gateway.uplink import OCPP_SUBPROTOCOL, backend_url
from gateway.uplink_connect import host_and_port, interface_usable, open_socket
from gateway.uplink_security import basic_auth_header, clock_problem, describe_tls_failure, effective_profile, is_tls, tls_context

EX_CONFIG = ConfigError.exit_code
CONNECT_TIMEOUT_S = 10.0  # TCP and TLS to the backend; a GPRS link takes a few seconds, a dead one never answers
ATTEMPTS = 2  # reads of a slave before it counts as silent: one lost frame (a line just opened) is no verdict
EXPIRY_WARN_DAYS = 30  # a backend certificate closer than this to its end is a warning
DAEMON_TIMEOUT_S = 60.0  # the daemon's identify reads every slave, each within its timeout
# Modbus application protocol §7, codes 0x0A / 0x0B: a TCP gateway saying that nothing answered behind it.
_GATEWAY_CODES = frozenset({10, 11})
# Profile values that name the device rather than measure it: shown on the report as its ids.
_ID_NAMES = re.compile(r"serial|firmware|version|manufacturer|product|model|vendor")
_TIME_ERROR = 5  # adjtimex(2): the kernel's clock is not synchronised (STA_UNSYNC)

TITLES = {
    "config": "Config valid",
    "slaves": "Slaves answer and match their profiles",
    "clock": "Clock sane",
    "uplink": "Uplink reaches the backend",
    "tls": "TLS validates",
    "boot": "Backend accepts BootNotification",
}


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True)
class Check:
    """One check's verdict: a line for the screen, notes under it, and data for --json and the report."""

    name: str  # a key of TITLES
    status: Status
    detail: str
    notes: tuple[str, ...] = ()
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # JSON-able

    @property
    def title(self) -> str:
        return TITLES[self.name]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "status": self.status.value, "detail": self.detail,
                "notes": list(self.notes), "data": dict(self.data)}


@dataclasses.dataclass(frozen=True)
class Device:
    """What one configured slave (a connector's charger, or its separate meter) did when read."""

    connector: int
    role: str  # charger or meter
    bus: str
    unit: int
    where: str  # e.g. "unit 2 on rs485-1", "127.0.0.1:502 unit 1 on lan"
    profile: str
    answered: bool
    matches: bool | None  # None: it did not answer
    detail: str
    looks_like: tuple[str, ...] = ()  # profiles whose identify checks hold instead, best first
    ids: Mapping[str, str] = dataclasses.field(default_factory=dict)  # serial number, versions, ... as read

    @property
    def ok(self) -> bool:
        return self.answered and self.matches is True


@dataclasses.dataclass(frozen=True)
class Reach:
    """A TCP connection to the backend through one uplink."""

    uplink: str
    problem: str | None  # None: it connected
    elapsed_ms: float | None = None


@dataclasses.dataclass(frozen=True)
class Handshake:
    """A TLS handshake with the backend through one uplink."""

    uplink: str
    problem: str | None  # None: the certificate validated
    version: str | None = None
    subject: str | None = None
    issuer: str | None = None
    not_after: float | None = None  # wall time the backend's certificate ends


@dataclasses.dataclass(frozen=True)
class BootOutcome:
    uplink: str
    status: str | None = None  # Accepted, Pending, Rejected; None: no answer
    interval: int | None = None
    current_time: str | None = None  # the backend's clock
    answered_wall: float | None = None  # ours, when the answer came
    problem: str | None = None
    credentials: str | None = None  # where the Basic-auth password came from (never the password)


@dataclasses.dataclass(frozen=True)
class Selftest:
    """Everything a selftest found: what the report and --json show."""

    config_file: str
    config: Config | None  # None: it did not load
    checks: tuple[Check, ...]
    wall: float  # when it ran
    hostname: str
    user: str
    daemon: bool  # the daemon was running: checks 2 and 6 are its view

    @property
    def verdict(self) -> Status:
        statuses = {c.status for c in self.checks}
        return Status.FAIL if Status.FAIL in statuses else Status.WARN if Status.WARN in statuses else Status.OK

    @property
    def exit_code(self) -> int:
        """0 all ok (warnings allowed), 1 a check failed, 78 the config is invalid."""
        if self.config is None:
            return EX_CONFIG
        return 1 if self.verdict is Status.FAIL else 0

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "config_file": self.config_file,
            "identity": self.config.charge_point.identity if self.config else None,
            "time": iso(self.wall), "hostname": self.hostname, "user": self.user,
            "daemon_running": self.daemon, "version": gateway.__version__,
            "result": self.verdict.value, "exit_code": self.exit_code,
            "checks": [c.to_json() for c in self.checks],
        }


# --- the verdicts, pure ------------------------------------------------------------------------


def skipped(name: str, why: str) -> Check:
    return Check(name, Status.SKIPPED, why)


def config_check(path: str, config: Config | None, warnings: Sequence[ConfigIssue], error: ConfigError | None) -> Check:
    if error is not None or config is None:
        issues = error.issues if error is not None else []
        return Check("config", Status.FAIL, f"{path}: {len(issues)} error(s); nothing else can be checked",
                     tuple(str(i) for i in issues), {"errors": [str(i) for i in issues]})
    detail = (f"{path}: charge point {config.charge_point.identity}, {len(config.connectors)} connector(s) "
              f"on {len(config.buses)} bus(es)" + (f", {len(warnings)} warning(s)" if warnings else ""))
    return Check("config", Status.WARN if warnings else Status.OK, detail, tuple(f"warning: {w}" for w in warnings),
                 {"warnings": [str(w) for w in warnings]})


def slaves_check(devices: Sequence[Device], daemon: bool = False) -> Check:
    """Fail unless every device answered and matched its profile."""
    source = " (as the daemon reads them)" if daemon else ""
    notes = tuple(
        f"connector {d.connector} {d.role} ({d.where}, {d.profile}): {d.detail}" + "".join(f"; {k} {v}" for k, v in d.ids.items())
        for d in devices
    )
    data = {"devices": [dataclasses.asdict(d) | {"ids": dict(d.ids), "looks_like": list(d.looks_like)} for d in devices]}
    bad = [d for d in devices if not d.ok]
    if not devices:
        return Check("slaves", Status.FAIL, "no slave to check", notes, data)
    if not bad:
        return Check("slaves", Status.OK, f"all {len(devices)} device(s) answer and match their profiles{source}", notes, data)
    first = bad[0]
    return Check(
        "slaves", Status.FAIL,
        f"{len(bad)} of {len(devices)} device(s) fail{source}; first: connector {first.connector} {first.role}: {first.detail}",
        notes, data,
    )


def clock_check(system_wall: float, ntp_synchronised: bool | None) -> Check:
    said = iso(system_wall)
    data = {"wall": said, "ntp_synchronised": ntp_synchronised}
    if (problem := clock_problem(system_wall)) is not None:
        return Check("clock", Status.FAIL, problem, data=data)
    if ntp_synchronised is False:
        return Check("clock", Status.WARN, f"{said}, but NTP does not keep it (systemd-timesyncd or chrony): "
                     "it drifts, and TLS and session times rely on it", data=data)
    ntp = "kept by NTP" if ntp_synchronised else "whether NTP keeps it is unknown"
    return Check("clock", Status.OK, f"{said}, {ntp}", data=data)


def uplinks_check(url: str, reaches: Sequence[Reach]) -> Check:
    """Fail when no uplink reaches the backend; warn when some do not (the site runs, without its spare)."""
    host, port = host_and_port(url)
    notes = tuple(f"{r.uplink}: " + (r.problem or f"connected in {r.elapsed_ms:.0f} ms") for r in reaches)
    data = {"host": host, "port": port, "uplinks": [dataclasses.asdict(r) for r in reaches]}
    good = [r.uplink for r in reaches if r.problem is None]
    bad = "; ".join(f"{r.uplink}: {r.problem}" for r in reaches if r.problem is not None)
    target = f"{host}:{port}"
    if not good:
        return Check("uplink", Status.FAIL, f"{target} cannot be reached over any uplink; {bad}", notes, data)
    if bad:
        return Check("uplink", Status.WARN, f"{target} reached over {', '.join(good)}; not over {bad}", notes, data)
    return Check("uplink", Status.OK, f"{target} reached over {', '.join(good)}", notes, data)


def tls_check(url: str, handshakes: Sequence[Handshake], now: float, problem: str | None = None) -> Check:
    """`problem`: why no handshake could be tried (the clock, the CA file)."""
    if not is_tls(url):
        return Check("tls", Status.WARN, "plain ws:// (insecure_lab_mode): nothing is encrypted or checked; never in the field")
    if problem is not None:
        return Check("tls", Status.FAIL, problem)
    if not handshakes:
        return skipped("tls", "no uplink reached the backend")
    notes, rows, days_left = [], [], []
    for h in handshakes:
        row = dataclasses.asdict(h) | {"not_after": None if h.not_after is None else iso(h.not_after), "days_left": None}
        if h.problem is not None:
            notes.append(f"{h.uplink}: {h.problem}")
        else:
            assert h.not_after is not None
            days = (h.not_after - now) / 86400
            row["days_left"] = round(days, 1)
            days_left.append(days)
            notes.append(f"{h.uplink}: {h.version}, {h.subject} issued by {h.issuer}, valid until {iso(h.not_after)[:10]}")
        rows.append(row)
    data = {"handshakes": rows}
    failed = [h for h in handshakes if h.problem is not None]
    if failed:
        return Check("tls", Status.FAIL, f"{failed[0].uplink}: {failed[0].problem}", tuple(notes), data)
    least = min(days_left)
    if least < EXPIRY_WARN_DAYS:
        return Check("tls", Status.WARN, f"the backend's certificate validates but ends in {least:.0f} day(s)", tuple(notes), data)
    return Check("tls", Status.OK, f"the backend's certificate validates, {least:.0f} days left", tuple(notes), data)


def boot_check(outcome: BootOutcome, profile: int) -> Check:
    data: dict[str, Any] = dataclasses.asdict(outcome) | {"security_profile": profile}
    if outcome.current_time is not None and outcome.answered_wall is not None:
        try:
            data["clock_offset_s"] = round(parse_iso(outcome.current_time) - outcome.answered_wall, 1)
        except ValueError:
            pass  # the backend's currentTime is its own trouble; the status below is what counts
    data.pop("answered_wall")
    via = f"over {outcome.uplink}, security profile {profile}"
    if outcome.problem is not None:
        return Check("boot", Status.FAIL, f"{outcome.problem} ({via})", data=data)
    interval = f", heartbeat interval {outcome.interval} s" if outcome.interval is not None else ""
    offset = ""
    if "clock_offset_s" in data:
        off = data["clock_offset_s"]
        offset = "; the backend's clock agrees with ours" if abs(off) < 1 else f"; the backend's clock is {off:+.0f} s from ours"
    status = {"Accepted": Status.OK, "Pending": Status.WARN}.get(outcome.status or "", Status.FAIL)
    what = {
        "Accepted": "Accepted",
        "Pending": "Pending: the backend knows the charge point but has not accepted it yet",
        "Rejected": "Rejected: the backend does not accept this charge point (is the identity registered?)",
    }.get(outcome.status or "", f"answered {outcome.status!r}")
    return Check("boot", status, f"{what} ({via}){interval}{offset}", data=data)


def daemon_devices(answer: object) -> list[Device]:
    """The daemon's `identify` result as Devices; ValueError when it is not the documented shape."""
    if not isinstance(answer, list):
        raise ValueError(f"identify answered {type(answer).__name__}, not a list")
    devices = []
    for item in answer:
        try:
            bus, unit = str(item["bus"]), int(item["unit"])
            answered, matches = item["answered"], item["matches"]
            if not isinstance(answered, bool) or not (matches is None or isinstance(matches, bool)):
                raise TypeError("answered and matches must be true/false")
            where = f"unit {unit} on {item.get('line') or bus}"
            devices.append(Device(int(item["connector"]), str(item.get("role", "charger")), bus, unit, where,
                                  str(item["profile"]), answered, matches, str(item.get("detail", ""))))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"identify entry {item!r}: {exc}") from None
    return devices


def daemon_boot_check(status: object) -> Check:
    """The daemon's `status`: its link counts as connected only once BootNotification was accepted (gateway.uplink)."""
    uplink = status.get("uplink") if isinstance(status, Mapping) else None
    if not isinstance(uplink, Mapping) or not isinstance(uplink.get("connected"), bool):
        return Check("boot", Status.FAIL, f"the daemon's status is not understood: {json.dumps(status)[:200]}")
    data = {"daemon": True, **{k: v for k, v in uplink.items() if isinstance(v, str | int | float | bool) or v is None}}
    profile = f", security profile {uplink['security_profile']}" if uplink.get("security_profile") is not None else ""
    if uplink["connected"]:
        return Check("boot", Status.OK, f"the daemon's link is up over {uplink.get('name')}{profile}: BootNotification accepted", data=data)
    return Check("boot", Status.FAIL, f"the daemon's link is down: {uplink.get('problem') or 'no reason given'}", data=data)


def ids_of(profile: Profile, words: Mapping[ReadBlock, Sequence[int]]) -> dict[str, str]:
    """The values that name the device (serial number, firmware or layout version), as text."""
    out = {}
    for name, value in decode_values(profile, words).items():
        if value is None or not _ID_NAMES.search(name):
            continue
        if isinstance(value, float) and value.is_integer():
            out[name] = f"{int(value)} (0x{int(value):04X})"  # versions are often hex-coded (0x0108 = 1.0.8)
        else:
            out[name] = str(value)
    return out


# --- the I/O ---------------------------------------------------------------------------------


async def _read_blocks(line: ModbusLine, profile: Profile, unit: int, timeout_s: float, gap_s: float) -> dict[ReadBlock, list[int]]:
    """Every block of a profile, each from its own unit where it names one (as the poller reads them)."""
    return {
        block: await line.read(unit if block.unit is None else block.unit, block.table, block.address, block.count,
                               timeout_s=timeout_s, gap_s=gap_s, repeat=profile.repeat)
        for block in profile.blocks
    }


async def _looks_like(line: ModbusLine, bus: BusSettings, unit: int, known: Sequence[Profile]) -> tuple[str, ...]:
    """The profiles whose identify checks hold on the device, best first (gateway.scan's ranking)."""
    chosen = candidates(known, bus.kind)
    gap = max((p.inter_frame_delay_s for p in chosen), default=0.0)  # whichever model it is, give it time to turn round
    matches = []
    for profile in chosen:
        try:
            words = await _read_blocks(line, profile, unit, bus.request_timeout_s or profile.request_timeout_s, gap)
        except DeviceError:
            continue
        if identify_matches(profile, words):
            matches.append(Match(profile, len(profile.identify), sum(len(w) for w in words.values())))
    ranked = rank(matches)
    certain = [m for m in ranked if m.certain]
    return tuple(m.profile.name for m in (certain or ranked)[:3])


async def _read_device(line: ModbusLine, profile: Profile, unit: int, timeout_s: float) -> dict[ReadBlock, list[int]] | DeviceError:
    """The profile's blocks from the device, or the error that ended the reading; a silent device is asked twice."""
    error: DeviceError | None = None
    for _ in range(ATTEMPTS):
        try:
            return await _read_blocks(line, profile, unit, timeout_s, profile.inter_frame_delay_s)
        except DeviceTimeout as exc:
            error = exc  # one lost frame (a line just opened) is no verdict
        except DeviceError as exc:
            return exc
    assert error is not None
    return error


async def _probe(line: ModbusLine, bus: BusSettings, profile: Profile, found: Device, known: Callable[[], Sequence[Profile]]) -> Device:
    """`found` (where the device is) with what it did: answered, matched its profile, or looks like another."""
    got = await _read_device(line, profile, found.unit, bus.request_timeout_s or profile.request_timeout_s)
    if isinstance(got, LineUnavailable):
        return dataclasses.replace(found, detail=str(got))
    if isinstance(got, DeviceTimeout):
        return dataclasses.replace(found, detail=f"no answer in {ATTEMPTS} tries ({got})")
    if isinstance(got, DeviceException) and line.framing is Framing.TCP and got.code in _GATEWAY_CODES:
        return dataclasses.replace(found, detail=f"the TCP gateway says nothing answers behind it ({got})")
    if isinstance(got, DeviceException):
        refused = f"answered, but refused {profile.name}'s registers ({got})"
    elif isinstance(got, DeviceError):  # garbled replies: something is there
        refused = f"answered, but garbled ({got})"
    elif identify_matches(profile, got):
        how = f"{len(profile.identify)} identify check(s) hold" if profile.identify else "its reading decodes (the profile has no identify checks)"
        return dataclasses.replace(found, answered=True, matches=True, detail=f"answers as {profile.name}: {how}", ids=ids_of(profile, got))
    else:
        refused = f"answered, but {profile.name}'s identify checks do not hold"
    looks = await _looks_like(line, bus, found.unit, known())
    detail = refused + (f"; it looks like {', '.join(looks)}" if looks else "; no known profile matches it")
    return dataclasses.replace(found, answered=True, matches=False, detail=detail, looks_like=looks)


async def probe_devices(config: Config) -> list[Device]:
    """Read every connector's slave and meter over the config's own lines, the daemon's way (one owner task a line)."""
    lines = build_lines(config)
    known: list[Profile] = []

    def all_profiles() -> list[Profile]:
        if not known:  # loaded only when a device does not match its own
            known.extend(load_candidates([], config.profiles).values())
        return known

    targets = []
    for c in config.connectors:
        targets.append((c.id, "charger", c.bus, c.unit, c.host, c.port, config.profile_of(c), line_key(config, c)))
        if (m := c.meter) is not None and (key := meter_line_key(config, c)) is not None:
            targets.append((c.id, "meter", m.bus, m.unit, m.host, m.port, config.profiles[m.profile], key))
    devices = []
    async with asyncio.TaskGroup() as group:
        owners = [group.create_task(line.run(), name=f"line {line.name}") for line in lines.values()]
        try:
            for cid, role, bus_name, unit, host, port, profile, key in targets:
                bus = config.bus(bus_name)
                tcp = bus.kind is Framing.TCP
                where = f"{Target(unit, host if tcp else None, port if tcp else None)} on {bus_name}"
                found = Device(cid, role, bus_name, unit, where, profile.name, answered=False, matches=None, detail="")
                devices.append(await _probe(lines[key], bus, profile, found, all_profiles))
        finally:
            for owner in owners:
                owner.cancel()
    return devices


async def reach_uplinks(config: Config, timeout_s: float = CONNECT_TIMEOUT_S) -> list[Reach]:
    host, port = host_and_port(config.backend.url)
    loop = asyncio.get_running_loop()
    out = []
    for uplink in config.uplinks:
        if not interface_usable(uplink):
            out.append(Reach(uplink.name, f"interface {uplink.interface} is missing or down"))
            continue
        started = loop.time()
        try:
            sock = await open_socket(host, port, uplink, timeout_s)
        except (OSError, TimeoutError) as exc:
            out.append(Reach(uplink.name, _describe(exc)))
            continue
        sock.close()
        out.append(Reach(uplink.name, None, (loop.time() - started) * 1e3))
    return out


def _name(parts: object) -> str:
    """A certificate's subject or issuer (the ssl module's nested tuples) as CN=..., O=..."""
    short = {"commonName": "CN", "organizationName": "O", "countryName": "C"}
    pairs = [pair for rdn in parts for pair in rdn] if isinstance(parts, tuple) else []
    return ", ".join(f"{short.get(k, k)}={v}" for k, v in pairs) or "?"


async def tls_handshakes(url: str, uplinks: Sequence[UplinkSettings], tls: ssl.SSLContext, timeout_s: float = CONNECT_TIMEOUT_S) -> list[Handshake]:
    """The handshake over each uplink, the backend checked as the link checks it; no websocket, no OCPP."""
    host, port = host_and_port(url)
    loop = asyncio.get_running_loop()
    out = []
    for uplink in uplinks:
        try:
            sock = await open_socket(host, port, uplink, timeout_s)
        except (OSError, TimeoutError) as exc:
            out.append(Handshake(uplink.name, _describe(exc)))
            continue
        try:  # the loop's transport owns the socket from here and closes it, also when the handshake fails
            async with asyncio.timeout(timeout_s):
                transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock, ssl=tls, server_hostname=host)
        except ssl.SSLError as exc:
            out.append(Handshake(uplink.name, describe_tls_failure(exc)))
            continue
        except (OSError, TimeoutError) as exc:
            out.append(Handshake(uplink.name, f"TLS handshake: {_describe(exc)}"))
            continue
        cert, tls_object = transport.get_extra_info("peercert") or {}, transport.get_extra_info("ssl_object")
        transport.close()
        out.append(Handshake(
            uplink.name, None, tls_object.version() if tls_object else None, _name(cert.get("subject")), _name(cert.get("issuer")),
            ssl.cert_time_to_seconds(cert["notAfter"]) if "notAfter" in cert else None,
        ))
    return out


def _password(config: Config) -> tuple[bytes | None, str | None]:
    """The Basic-auth password the daemon would send, and where it comes from; OSError when it cannot be read.

    The backend's AuthorizationKey wins over the installer's password_file, as in gateway.uplink.
    """
    keys = AuthKeyStore(config.storage.path.parent)
    if (key := keys.current()) is not None:
        return key, f"the AuthorizationKey the backend set ({keys.path})"
    if (path := config.backend.password_file) is not None:
        return path.read_text().strip().encode(), f"password_file {path}"
    return None, None


async def boot_once(config: Config, uplink: UplinkSettings, profile: int, wall: Callable[[], float] = time.time) -> BootOutcome:
    """Open the OCPP connection as the daemon does, send one BootNotification, close; never raises for the backend's doing."""
    backend, identity = config.backend, config.charge_point.identity
    try:
        password, credentials = (None, None) if profile == 3 else _password(config)  # profile 3: the certificate proves us
        tls = tls_context(backend, profile) if is_tls(backend.url) else None
    except OSError as exc:
        return BootOutcome(uplink.name, problem=_file_problem(exc))
    host, port = host_and_port(backend.url)
    headers = basic_auth_header(identity, password) if password is not None else {}
    try:
        sock = await open_socket(host, port, uplink, backend.response_timeout_s)
        ws = await connect(
            backend_url(backend, identity), sock=sock, ssl=tls, server_hostname=host if tls is not None else None,
            subprotocols=[websockets.Subprotocol(OCPP_SUBPROTOCOL)], additional_headers=headers,
            compression="deflate" if backend.compression else None, ping_interval=None,
            open_timeout=backend.response_timeout_s, close_timeout=2, logger=WEBSOCKET_LOG,
        )
    except websockets.exceptions.InvalidStatus as exc:
        code = exc.response.status_code
        why = {401: f"the backend refused the credentials (HTTP 401): user {identity}, password from {credentials or 'nowhere: none is configured'}",
               403: "the backend forbids this charge point (HTTP 403)",
               404: f"the backend knows no charge point at {backend_url(backend, identity)} (HTTP 404)"}
        return BootOutcome(uplink.name, problem=why.get(code, f"the backend answered HTTP {code}"), credentials=credentials)
    except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
        return BootOutcome(uplink.name, problem=_describe(exc), credentials=credentials)
    async with ws:
        if ws.subprotocol != OCPP_SUBPROTOCOL:
            return BootOutcome(uplink.name, problem=f"the backend did not agree to subprotocol {OCPP_SUBPROTOCOL}", credentials=credentials)
        link = OcppLink(identity, ws, {}, response_timeout=backend.response_timeout_s)
        reader = asyncio.create_task(link.start(), name="selftest reader")
        call = asyncio.create_task(link.call_wire("BootNotification", boot_notification(config.charge_point), new_message_id()))
        try:
            await asyncio.wait({reader, call}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, call):
                task.cancel()
            await asyncio.gather(reader, call, return_exceptions=True)
        if call.cancelled():
            return BootOutcome(uplink.name, problem="the backend closed the connection before answering BootNotification", credentials=credentials)
        try:
            result = call.result()
        except (OCPPError, TimeoutError, websockets.exceptions.ConnectionClosed) as exc:
            return BootOutcome(uplink.name, problem=f"BootNotification: {_describe(exc)}", credentials=credentials)
        return BootOutcome(uplink.name, result["status"], result.get("interval"), result.get("currentTime"), wall(), credentials=credentials)


def _file_problem(exc: OSError) -> str:
    """A secret or certificate file that cannot be read, for the technician."""
    where = f"{exc.filename}: " if exc.filename else ""
    hint = " (run selftest as root or as the gateway's user)" if isinstance(exc, PermissionError) else ""
    return f"{where}{exc.strerror or exc}{hint}"


def _describe(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:  # TLS 1.3: the backend's refusal of our certificate arrives as the cause of a later error
        if isinstance(cause, ssl.SSLError):
            return describe_tls_failure(cause)
        cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {exc}" if str(exc) else f"{type(exc).__name__}: no answer in time"


async def find_daemon(path: Path) -> tuple[bool, str | None]:
    """(is the daemon running, why its socket cannot be used). Absent or refused: not running (a stale socket file)."""
    try:
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_unix_connection(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        return False, None
    except PermissionError:
        return True, f"{path}: permission denied (run selftest as root or as a member of the daemon's group)"
    except (OSError, TimeoutError) as exc:
        return True, f"{path}: {_describe(exc)}"
    writer.close()
    return True, None


def ntp_synchronised() -> bool | None:
    """Whether the kernel's clock is kept by NTP: adjtimex(2) read-only, what timedatectl's NTPSynchronized shows; None: unknown."""
    try:
        adjtimex = ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None
    timex = ctypes.create_string_buffer(512)  # struct timex, modes 0 (read only); larger than any ABI's
    state = int(adjtimex(timex))
    return None if state < 0 else state != _TIME_ERROR


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no name for this uid (a container)
        return f"uid {os.getuid()}"


async def run_selftest(
    config_file: str | Path, *, wall: Callable[[], float] = time.time, ntp: Callable[[], bool | None] = ntp_synchronised
) -> Selftest:
    """Every check in turn; a failure stops only the checks that cannot run without what failed."""
    path = str(config_file)
    started = wall()

    def result(config: Config | None, checks: list[Check], daemon: bool = False) -> Selftest:
        return Selftest(path, config, tuple(checks), started, socket.gethostname(), _user(), daemon)

    try:
        config, warnings = load_config_with_warnings(path)
    except ConfigError as exc:
        return result(None, [config_check(path, None, [], exc)] + [skipped(n, "the config is invalid") for n in list(TITLES)[1:]])
    checks = [config_check(path, config, warnings, None)]
    running, unusable = await find_daemon(config.control.socket)
    checks.append(await _from_daemon(config, "slaves", unusable) if running else slaves_check(await probe_devices(config)))
    checks.append(clock_check(wall(), ntp()))
    reaches = await reach_uplinks(config)
    checks.append(uplinks_check(config.backend.url, reaches))
    reachable = [u for u, r in zip(config.uplinks, reaches, strict=True) if r.problem is None]
    profile = effective_profile(config.backend)
    tls = await _tls(config, reachable, profile, wall)
    checks.append(tls)
    if running:
        checks.append(await _from_daemon(config, "boot", unusable))
    elif not reachable:
        checks.append(skipped("boot", "no uplink reached the backend"))
    elif tls.status is Status.FAIL:
        checks.append(skipped("boot", "TLS does not validate"))
    else:
        checks.append(boot_check(await boot_once(config, reachable[0], profile, wall), profile))
    return result(config, checks, running)


async def _from_daemon(config: Config, name: str, unusable: str | None) -> Check:
    """Check 2 (slaves) or 6 (boot) as the running daemon sees them: `identify` or `status` over its control socket."""
    if unusable is not None:
        return Check(name, Status.FAIL, f"the daemon seems to run, but its control socket cannot be used: {unusable}")
    try:
        answer = await control_socket.call(config.control.socket, {"op": "identify" if name == "slaves" else "status"}, DAEMON_TIMEOUT_S)
        return slaves_check(daemon_devices(answer), daemon=True) if name == "slaves" else daemon_boot_check(answer)
    except (control_socket.DaemonUnavailable, control_socket.RequestFailed, ValueError) as exc:
        return Check(name, Status.FAIL, f"the daemon could not say: {exc}")


async def _tls(config: Config, reachable: Sequence[UplinkSettings], profile: int, wall: Callable[[], float]) -> Check:
    url = config.backend.url
    if not is_tls(url) or not reachable:
        return tls_check(url, [], wall())
    if (problem := clock_problem(wall())) is not None:
        return tls_check(url, [], wall(), problem)
    try:
        tls = tls_context(config.backend, profile)
    except OSError as exc:  # ssl.SSLError too: a key that does not fit its certificate
        return tls_check(url, [], wall(), f"TLS files: {_file_problem(exc)}")
    return tls_check(url, await tls_handshakes(url, reachable, tls), wall())


# --- the command ------------------------------------------------------------------------------------


def default_report_path(config: Config, wall: float) -> Path:
    day = datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%d")
    return config.storage.path.parent / f"commissioning-{config.charge_point.identity}-{day}.html"


def render_text(result: Selftest) -> str:
    mode = "asked the running daemon for the slaves and its link" if result.daemon else "standalone"
    who = result.config.charge_point.identity if result.config else "?"
    lines = [f"selftest of {who} ({result.config_file}), {mode}"]
    for c in result.checks:
        lines.append(f"  {c.status.value.upper() if c.status is Status.FAIL else c.status.value:<9}{c.title}: {c.detail}")
        lines += [f"             {note}" for note in c.notes]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    """0 every check ok (warnings allowed), 1 a check failed (or the report could not be written), 78 the config is invalid."""
    from gateway.commissioning_report import render_report  # it imports this module's types

    result = asyncio.run(run_selftest(args.config))
    report: Path | None = Path(args.report) if args.report else None
    if report is None and result.config is not None:
        report = default_report_path(result.config, result.wall)
    written: str | None = None
    if report is not None:
        try:
            report.write_text(render_report(result), encoding="utf-8")
            written = str(report)
        except OSError as exc:
            print(f"error: cannot write the report {report}: {exc.strerror or exc}; give another path with --report", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json() | {"report": written}, indent=2))
    else:
        print(render_text(result), end="")
        print(f"report: {written or 'not written'}")
        counts = {s: sum(c.status is s for c in result.checks) for s in Status}
        print(f"result: {result.verdict.value.upper()} ({counts[Status.FAIL]} failed, {counts[Status.WARN]} warning(s), "
              f"{counts[Status.SKIPPED]} skipped)")
    if result.exit_code == 0 and report is not None and written is None:
        return 1
    return result.exit_code
