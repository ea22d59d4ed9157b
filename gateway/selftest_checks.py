"""The selftest's results and verdicts, pure: what each commissioning check concludes from what was found.

gateway.selftest does the looking (serial lines, sockets, TLS, the daemon's control socket)
and hands what it found to the functions here; gateway.commissioning_report and the
command's text and --json output render the `Selftest` they build. Nothing here does I/O,
so every verdict is tested without a slave, a socket or a backend.

The six checks (REQUIREMENTS 27), each ending in ok, warn, fail or skipped with one line of detail:

1. `config_check`: the config is valid (every fault with file, line and key; warnings listed);
2. `slaves_check`: every configured slave (and separate meter) answers and matches its
   profile's identify checks, or what it looks like instead (`daemon_devices` while the daemon runs);
3. `clock_check`: the clock is not before the gateway existed and NTP keeps it;
4. `uplinks_check`: the backend's host and port take a TCP connection over each uplink;
5. `tls_check`: TLS validates, with the days the backend's certificate has left;
6. `boot_check`: the backend accepts a BootNotification (`daemon_boot_check` while the daemon runs).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gateway
from gateway.clock import iso, parse_iso
from gateway.errors import ConfigError, ConfigIssue
from gateway.settings import Config
from gateway.uplink_connect import host_and_port
from gateway.uplink_security import clock_problem, is_tls

EX_CONFIG = ConfigError.exit_code
EXPIRY_WARN_DAYS = 30  # a backend certificate closer than this to its end is a warning
# Profile values that name the device rather than measure it: shown on the report as its ids.

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

    @property
    def mode(self) -> str:
        return "asked the running daemon for the slaves and its link" if self.daemon else "standalone (the daemon was not running)"

    @property
    def tally(self) -> str:
        """The checks counted, as the screen's summary and the report's verdict say it."""
        counts = {s: sum(c.status is s for c in self.checks) for s in Status}
        return f"{counts[Status.FAIL]} failed, {counts[Status.WARN]} warning(s), {counts[Status.SKIPPED]} skipped"

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


# --- the verdicts -----------------------------------------------------------------------------------


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
            looks, ids = item.get("looks_like", []), item.get("ids", {})
            if not isinstance(looks, list) or not isinstance(ids, dict):
                raise TypeError("looks_like must be a list and ids an object")
            devices.append(Device(int(item["connector"]), str(item.get("role", "charger")), bus, unit, where,
                                  str(item["profile"]), answered, matches, str(item.get("detail", "")),
                                  tuple(map(str, looks)), {str(k): str(v) for k, v in ids.items()}))
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


# --- formatting, for the screen and the report ----------------------------------------------


def cert_name(parts: object) -> str:
    """A certificate's subject or issuer (the ssl module's nested tuples) as CN=..., O=..."""
    short = {"commonName": "CN", "organizationName": "O", "countryName": "C"}
    pairs = [pair for rdn in parts for pair in rdn] if isinstance(parts, tuple) else []
    return ", ".join(f"{short.get(k, k)}={v}" for k, v in pairs) or "?"


def file_problem(exc: OSError) -> str:
    """A secret or certificate file that cannot be read, for the technician."""
    where = f"{exc.filename}: " if exc.filename else ""
    hint = " (run selftest as root or as the gateway's user)" if isinstance(exc, PermissionError) else ""
    return f"{where}{exc.strerror or exc}{hint}"


def default_report_path(config: Config, wall: float) -> Path:
    day = datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%d")
    return config.storage.path.parent / f"commissioning-{config.charge_point.identity}-{day}.html"


def render_text(result: Selftest) -> str:
    who = result.config.charge_point.identity if result.config else "?"
    lines = [f"selftest of {who} ({result.config_file}), {result.mode}"]
    for c in result.checks:
        lines.append(f"  {c.status.value.upper() if c.status is Status.FAIL else c.status.value:<9}{c.title}: {c.detail}")
        lines += [f"             {note}" for note in c.notes]
    return "\n".join(lines) + "\n"


def summary_line(result: Selftest) -> str:
    return f"result: {result.verdict.value.upper()} ({result.tally})"
