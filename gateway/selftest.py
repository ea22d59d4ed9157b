"""`charger-gateway selftest`: the commissioning checks run in turn, and the command that prints and files them (REQUIREMENTS 27).

The thin I/O side: `probe_devices` reads every configured slave and meter over the config's
own lines, `connect_uplinks` connects to the backend over each uplink (TCP, then TLS on it),
`boot_once` sends one BootNotification on a real OCPP 1.6J connection, and
gateway.control_socket's client asks a running daemon. `run_selftest` runs them in turn and
hands what they found to the pure verdicts of gateway.selftest_checks; `main` prints the
result and writes the commissioning report (gateway.commissioning_report).

A failed check stops nothing, except that nothing runs without a valid config,
and no BootNotification is tried where no uplink reached the backend or TLS failed.

While the daemon runs (its control socket accepts), the serial lines are its own and
a second connection with our identity would make the backend drop the daemon's: checks
2 and 6 then ask the daemon (`identify`, `status`) instead. Checks 4 and 5 still run:
a TCP connection and a TLS handshake never reach OCPP (as uplink_connect.probe does).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import getpass
import json
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import websockets
from ocpp.exceptions import OCPPError

from gateway import control_socket, device_probe
from gateway.auth_key import AuthKeyStore
from gateway.commissioning_report import render_report
from gateway.config import load_config_with_warnings
from gateway.devprofile import Framing
from gateway.errors import ConfigError
from gateway.modbus_line import build_lines, line_key, meter_line_key
from gateway.ocpp_link import OcppLink
from gateway.ocpp_messages import boot_notification, new_message_id
from gateway.scan import Target
from gateway.selftest_checks import (
    TITLES,
    BootOutcome,
    Check,
    Device,
    Handshake,
    Reach,
    Selftest,
    Status,
    boot_check,
    cert_name,
    clock_check,
    config_check,
    daemon_boot_check,
    daemon_devices,
    default_report_path,
    file_problem,
    render_text,
    skipped,
    slaves_check,
    summary_line,
    tls_check,
    uplinks_check,
)
from gateway.settings import Config, UplinkSettings
from gateway.uplink import backend_url
from gateway.uplink_connect import OCPP_SUBPROTOCOL, connect_websocket, host_and_port, interface_usable, open_socket
from gateway.uplink_security import basic_auth_header, clock_problem, describe_failure, describe_tls_failure, effective_profile, is_tls, tls_context

CONNECT_TIMEOUT_S = 10.0  # TCP and TLS to the backend; a GPRS link takes a few seconds, a dead one never answers
DAEMON_TIMEOUT_S = 60.0  # the daemon's identify reads every slave, each within its timeout
_TIME_ERROR = 5  # adjtimex(2): the kernel's clock is not synchronised (STA_UNSYNC)


async def probe_devices(config: Config) -> list[Device]:
    """Read every connector's slave and meter over the config's own lines, the daemon's way (one owner task a line)."""
    lines = build_lines(config)
    known = device_probe.known_profiles(config.profiles)

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
                v = await device_probe.probe(lines[key], bus, profile, unit, known)
                devices.append(Device(cid, role, bus_name, unit, where, profile.name, v.answered, v.matches, v.detail, v.looks_like, v.ids))
        finally:
            for owner in owners:
                owner.cancel()
    return devices


async def connect_uplinks(
    url: str, uplinks: Sequence[UplinkSettings], tls: ssl.SSLContext | None, timeout_s: float = CONNECT_TIMEOUT_S
) -> list[tuple[Reach, Handshake | None]]:
    """Checks 4 and 5 on one connection per uplink: TCP to the backend, then over it the TLS handshake
    when `tls` is given (the backend checked as the link checks it); no websocket, no OCPP."""
    host, port = host_and_port(url)
    loop = asyncio.get_running_loop()
    out: list[tuple[Reach, Handshake | None]] = []
    for uplink in uplinks:
        if not interface_usable(uplink):
            out.append((Reach(uplink.name, f"interface {uplink.interface} is missing or down"), None))
            continue
        started = loop.time()
        try:
            sock = await open_socket(host, port, uplink, timeout_s)
        except (OSError, TimeoutError) as exc:
            out.append((Reach(uplink.name, describe_failure(exc)), None))
            continue
        reach = Reach(uplink.name, None, (loop.time() - started) * 1e3)
        if tls is None:
            sock.close()
            out.append((reach, None))
        else:
            out.append((reach, await _handshake(sock, host, uplink.name, tls, timeout_s)))
    return out


async def _handshake(sock: socket.socket, host: str, uplink: str, tls: ssl.SSLContext, timeout_s: float) -> Handshake:
    """The TLS handshake on a connected socket, then closed; the loop's transport owns the socket from here
    and closes it, also when the handshake fails."""
    try:
        async with asyncio.timeout(timeout_s):
            transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=sock, ssl=tls, server_hostname=host)
    except ssl.SSLError as exc:
        return Handshake(uplink, describe_tls_failure(exc))
    except (OSError, TimeoutError) as exc:
        return Handshake(uplink, f"TLS handshake: {describe_failure(exc)}")
    cert, tls_object = transport.get_extra_info("peercert") or {}, transport.get_extra_info("ssl_object")
    transport.close()
    return Handshake(
        uplink, None, tls_object.version() if tls_object else None, cert_name(cert.get("subject")), cert_name(cert.get("issuer")),
        ssl.cert_time_to_seconds(cert["notAfter"]) if "notAfter" in cert else None,
    )


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


async def boot_once(
    config: Config, uplink: UplinkSettings, profile: int, tls: ssl.SSLContext | None, wall: Callable[[], float] = time.time
) -> BootOutcome:
    """Open the OCPP connection as the daemon does, send one BootNotification, close; never raises for the backend's doing.

    `tls`: the context of check 5 (gateway.uplink_security.tls_context), None for plain ws.
    """
    backend, identity = config.backend, config.charge_point.identity
    try:
        password, credentials = (None, None) if profile == 3 else _password(config)  # profile 3: the certificate proves us
    except OSError as exc:
        return BootOutcome(uplink.name, problem=file_problem(exc))
    host, port = host_and_port(backend.url)
    headers = basic_auth_header(identity, password) if password is not None else {}
    try:
        sock = await open_socket(host, port, uplink, backend.response_timeout_s)
        ws = await connect_websocket(backend_url(backend, identity), sock, tls, headers,
                                     compression=backend.compression, timeout_s=backend.response_timeout_s)
    except websockets.exceptions.InvalidStatus as exc:
        code = exc.response.status_code
        why = {401: f"the backend refused the credentials (HTTP 401): user {identity}, password from {credentials or 'nowhere: none is configured'}",
               403: "the backend forbids this charge point (HTTP 403)",
               404: f"the backend knows no charge point at {backend_url(backend, identity)} (HTTP 404)"}
        return BootOutcome(uplink.name, problem=why.get(code, f"the backend answered HTTP {code}"), credentials=credentials)
    except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
        return BootOutcome(uplink.name, problem=describe_failure(exc), credentials=credentials)
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
            return BootOutcome(uplink.name, problem=f"BootNotification: {describe_failure(exc)}", credentials=credentials)
        return BootOutcome(uplink.name, result["status"], result.get("interval"), result.get("currentTime"), wall(), credentials=credentials)


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
        return True, f"{path}: {describe_failure(exc)}"
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
    url, profile = config.backend.url, effective_profile(config.backend)
    tls, tls_problem = _tls_context(config, profile, wall())
    connected = await connect_uplinks(url, config.uplinks, tls)
    checks.append(uplinks_check(url, [reach for reach, _ in connected]))
    tls_verdict = tls_check(url, [shake for _, shake in connected if shake is not None], wall(), tls_problem)
    checks.append(tls_verdict)
    reachable = [u for u, (reach, _) in zip(config.uplinks, connected, strict=True) if reach.problem is None]
    if running:
        checks.append(await _from_daemon(config, "boot", unusable))
    elif not reachable:
        checks.append(skipped("boot", "no uplink reached the backend"))
    elif tls_verdict.status is Status.FAIL:
        checks.append(skipped("boot", "TLS does not validate"))
    else:
        checks.append(boot_check(await boot_once(config, reachable[0], profile, tls, wall), profile))
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


def _tls_context(config: Config, profile: int, now: float) -> tuple[ssl.SSLContext | None, str | None]:
    """The TLS context of checks 5 and 6, or why no handshake can be tried (the clock, the TLS files); (None, None): plain ws."""
    if not is_tls(config.backend.url):
        return None, None
    if (problem := clock_problem(now)) is not None:
        return None, problem
    try:
        return tls_context(config.backend, profile), None
    except OSError as exc:  # ssl.SSLError too: a key that does not fit its certificate
        return None, f"TLS files: {file_problem(exc)}"


# --- the command ------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    """0 every check ok (warnings allowed), 1 a check failed (or the report could not be written), 78 the config is invalid."""
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
        print(summary_line(result))
    if result.exit_code == 0 and report is not None and written is None:
        return 1
    return result.exit_code
