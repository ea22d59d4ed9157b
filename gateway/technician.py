"""The technician's commands: `status`, `sessions`, `queue`, `events`, `modbus` and `trigger`.

`status`, `events`, `modbus` and `trigger` ask the running daemon over its control socket
(gateway.control_socket); `sessions` and `queue` read its database directly (gateway.history),
so they work while the daemon is stopped too. Every command takes `--json` and `-c FILE`
(default /etc/charger-gateway/gateway.yaml).

Exit codes (sysexits.h):
  0   all is well (status: no alarms)
  1   status: there are alarms; modbus: the slave answered with an exception, or not at all
  2   usage: bad arguments, an unknown bus, unit or connector, a write without --force
  66  sessions, queue: no database yet (the daemon never ran with this config)
  69  the daemon does not answer on its control socket, or the bus line cannot be used now
  78  the config is invalid

The status structure is built here from plain data (build_status, pure), in the daemon, and
rendered here (render_status) from its JSON, in the command.

Alarms `status` raises (each {"kind", "text"}): uplink_down (not connected to the backend),
modem (the modem's last poll failed, or it is not registered for packet data), data_budget
(an uplink used 80 % or more of its monthly budget), slave_offline (a slave stopped answering),
faulted (a connector reports Faulted), store (the database cannot be read, or refuses writes
and events are held in memory), clock (the system clock is not set) and recorded (an alarm the
daemon kept in its event log in the last 24 hours: a replaced database, a thinned outbox, an
energy register that went back, a budget threshold crossed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import gateway
from gateway import history
from gateway.data_usage import THRESHOLDS_PERCENT

if TYPE_CHECKING:
    from gateway.modbus_line import LineStats
    from gateway.modem_replies import ModemHealth
    from gateway.reading import Reading
    from gateway.session import StatusChanged, Transaction
    from gateway.settings import ChargePointInfo, Config, ConnectorSettings
    from gateway.uplink import UplinkStatus

DEFAULT_CONFIG = "/etc/charger-gateway/gateway.yaml"
EX_OK = 0
EX_ALARM = 1  # status: alarms; modbus: a device error
EX_USAGE = 2
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
# What the daemon's answer kinds (gateway.control_socket) mean for the exit code.
EXIT_OF_KIND = {"request": EX_USAGE, "device": EX_ALARM, "unavailable": EX_UNAVAILABLE, "internal": 1}


# --- the status structure (pure) ------------------------------------------------------------


@dataclass(frozen=True)
class ConnectorView:
    settings: ConnectorSettings
    line: str  # the key of its line in the daemon (modbus_line.line_key)
    status: StatusChanged | None
    online: bool | None  # None: not polled yet
    reading: Reading | None
    transaction: Transaction | None


@dataclass(frozen=True)
class LineView:
    name: str
    open: bool
    stats: LineStats


@dataclass(frozen=True)
class BudgetView:
    uplink: str
    month: str  # YYYY-MM, UTC
    used: int  # bytes this month
    budget: int  # bytes per month


@dataclass(frozen=True)
class StatusInput:
    """Everything `status` shows, as plain data taken from the daemon at one instant."""

    info: ChargePointInfo
    uptime_s: float
    wall: float
    clock_valid: bool
    uplink: UplinkStatus
    modems: Mapping[str, ModemHealth]  # by uplink name
    monotonic: float  # for the modems' ages
    budgets: Sequence[BudgetView]
    connectors: Sequence[ConnectorView]
    lines: Sequence[LineView]
    pending: int | None  # None: the store could not say
    uncommitted: int  # effects held in memory because the store refuses them
    store_problem: str | None
    recorded: Sequence[history.RecordedAlarm]


def _connector_json(c: ConnectorView) -> dict[str, Any]:
    s, r, tx = c.settings, c.reading, c.transaction
    session = None
    if tx is not None:
        energy = None if r is None or r.energy_wh is None else round(r.energy_wh - tx.meter_start_wh)
        session = {"session": tx.key, "id_tag": tx.id_tag, "started": history.iso(tx.started_wall),
                   "meter_start_wh": tx.meter_start_wh, "energy_wh": energy}
    meter = None if s.meter is None else {"bus": s.meter.bus, "unit": s.meter.unit, "profile": s.meter.profile}
    return {
        "id": s.id, "bus": s.bus, "unit": s.unit, "host": s.host, "port": s.port if s.host else None, "line": c.line,
        "profile": s.profile, "meter": meter,
        "status": None if c.status is None else c.status.status,
        "error_code": None if c.status is None else c.status.error_code,
        "info": None if c.status is None else c.status.info,
        "online": c.online,
        "power_w": None if r is None else r.power_w,
        "energy_register_wh": None if r is None else r.energy_wh,
        "session": session,
    }


def status_alarms(s: StatusInput) -> list[dict[str, Any]]:
    """What needs a technician's attention now, and what the daemon recorded in the last day. Each {kind, text}."""
    alarms: list[dict[str, Any]] = []

    def alarm(kind: str, text: str, **extra: Any) -> None:
        alarms.append({"kind": kind, "text": text} | extra)

    if not s.uplink.connected:
        alarm("uplink_down", f"uplink {s.uplink.uplink} not connected to the backend: {s.uplink.problem or 'connecting'}")
    for name, health in sorted(s.modems.items()):
        if health.problem is not None:
            alarm("modem", f"modem of uplink {name}: {health.problem}")
        elif health.ps is not None and not health.ps.status.registered:
            alarm("modem", f"modem of uplink {name}: {health.ps.status.label} (packet data)")
    for b in s.budgets:
        percent = 100 * b.used / b.budget
        if percent >= THRESHOLDS_PERCENT[0]:  # the recorder's first alarm
            alarm("data_budget", f"uplink {b.uplink} used {percent:.0f} % of its monthly data budget in {b.month}")
    open_lines = {line.name for line in s.lines if line.open}
    for c in s.connectors:
        st = c.settings
        if c.online is False:
            why = "" if c.line in open_lines else f" (line {c.line} is not open)"
            alarm("slave_offline", f"connector {st.id}: slave {st.bus} unit {st.unit} not answering{why}", connector=st.id)
        if c.status is not None and c.status.status == "Faulted":
            detail = ", ".join(x for x in (c.status.error_code, c.status.info) if x and x != "NoError")
            alarm("faulted", f"connector {st.id}: Faulted ({detail or 'no detail'})", connector=st.id)
    if s.store_problem is not None:
        alarm("store", f"database: {s.store_problem}")
    if s.uncommitted:
        alarm("store", f"{s.uncommitted} events held in memory: the database refuses writes (disk full?)")
    if not s.clock_valid:
        alarm("clock", "the system clock is not set: queued messages wait for NTP or the backend's time")
    for r in s.recorded:
        where = f"connector {r.connector}: " if r.connector else ""
        alarm("recorded", f"{history.iso(r.time)} {where}{r.text}", time=history.iso(r.time))
    return alarms


def build_status(s: StatusInput) -> dict[str, Any]:
    """The whole status structure (`status --json`); the one-screen text is rendered from it."""
    u = s.uplink
    return {
        "charge_point": {"identity": s.info.identity, "vendor": s.info.vendor, "model": s.info.model,
                         "serial_number": s.info.serial_number, "firmware": gateway.__version__},
        "time": history.iso(s.wall),
        "clock_valid": s.clock_valid,
        "uptime_s": round(s.uptime_s),
        "uplink": {"name": u.uplink, "connected": u.connected, "security_profile": u.security_profile,
                   "compression": u.compression, "problem": u.problem},
        "modems": {name: health.to_json(s.monotonic) for name, health in sorted(s.modems.items())},
        "data_budgets": [{"uplink": b.uplink, "month": b.month, "used_bytes": b.used, "budget_bytes": b.budget,
                          "percent": round(100 * b.used / b.budget, 1)} for b in s.budgets],
        "connectors": [_connector_json(c) for c in s.connectors],
        "lines": [{"name": line.name, "open": line.open, "requests": line.stats.requests, "timeouts": line.stats.timeouts,
                   "frame_errors": line.stats.frame_errors, "exceptions": line.stats.exceptions,
                   "busy_s": round(line.stats.busy_s, 1)} for line in s.lines],
        "queue": {"pending": s.pending, "uncommitted": s.uncommitted},
        "alarms": status_alarms(s),
    }


# --- rendering (pure) ---------------------------------------------------------------------------


def power_text(watts: float | None) -> str:
    if watts is None:
        return "-"
    return f"{watts:.0f} W" if abs(watts) < 1000 else f"{watts / 1000:.1f} kW"


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _slave(c: Mapping[str, Any]) -> str:
    where = f"{c['host']}:{c['port']}" if c.get("host") else c["bus"]
    return f"{where}/{c['unit']}"


def render_status(status: Mapping[str, Any]) -> str:
    """The one-screen status: identity, uplink, modems, budgets, queue, a line per connector and per bus line, alarms."""
    cp, up = status["charge_point"], status["uplink"]
    serial = f"  SN {cp['serial_number']}" if cp.get("serial_number") else ""
    uptime = int(status["uptime_s"])
    out = [f"{cp['identity']}  {cp['vendor']} {cp['model']}{serial}  gateway {cp['firmware']}  "
           f"up {uptime // 3600}:{uptime // 60 % 60:02d}:{uptime % 60:02d}  {status['time']}"]
    link = "connected" if up["connected"] else f"NOT CONNECTED ({up['problem'] or 'connecting'})"
    out.append(f"uplink    {up['name']}: {link}, security profile {up['security_profile']}, compression {'on' if up['compression'] else 'off'}")
    out += [f"modem     {name}: {modem['summary']}" for name, modem in status["modems"].items()]
    out += [f"budget    {b['uplink']}: {b['used_bytes'] / 1e6:.1f} of {b['budget_bytes'] / 1e6:g} MB in {b['month']} ({b['percent']:.0f} %)"
            for b in status["data_budgets"]]
    queue = status["queue"]
    pending = "unknown (database trouble)" if queue["pending"] is None else f"{queue['pending']} messages pending"
    out.append(f"queue     {pending}" + (f", {queue['uncommitted']} events not yet stored" if queue["uncommitted"] else ""))
    out.append(f"{'#':>3}  {'slave':<22} {'profile':<26} {'state':<14} {'power':>8} {'session':>10}  health")
    for c in status["connectors"]:
        state = c["status"] or "-"
        if c["error_code"] not in (None, "NoError"):
            state += f" ({c['error_code']})"
        session = c["session"]
        energy = "-" if session is None else "? kWh" if session["energy_wh"] is None else f"{session['energy_wh'] / 1000:.2f} kWh"
        health = {True: "online", False: "OFFLINE", None: "not polled yet"}[c["online"]]
        out.append(f"{c['id']:>3}  {_slave(c):<22} {c['profile']:<26} {state:<14} {power_text(c['power_w']):>8} {energy:>10}  {health}")
    # A line gets a row of its own only with something to see: the screen stays one screen on a big cluster.
    quiet = [line for line in status["lines"] if line["open"] and not (line["timeouts"] or line["frame_errors"] or line["exceptions"])]
    if quiet:
        out.append(f"lines     {len(quiet)} open, no errors")
    for line in status["lines"]:
        if line not in quiet:
            state = "open" if line["open"] else "NOT OPEN"
            out.append(f"line      {line['name']} {state}: {line['requests']} requests, {line['timeouts']} timeouts, "
                       f"{line['frame_errors']} garbled, {line['exceptions']} exceptions")
    alarms = status["alarms"]
    out.append("alarms    none" if not alarms else f"alarms    {len(alarms)}:")
    out += [f"  ! {a['text']}" for a in alarms]
    return "\n".join(out)


def render_sessions(rows: Sequence[history.SessionRow], totals: Sequence[history.DayTotal], since: float) -> str:
    out = [f"Sessions since {history.iso(since)} (times UTC)"]
    if rows:
        out.append(f"{'#':>3}  {'started':<16}  {'stopped':<16}  {'idTag':<20} {'kWh':>8}  {'stop reason':<16} {'txId':>8}  backend")
    for s in rows:
        stopped = "open" if s.stopped is None else history.iso(s.stopped)[:16].replace("T", " ")
        kwh = "-" if s.energy_kwh is None else f"{s.energy_kwh:.2f}"
        backend = "yes" if s.reached_backend else f"{s.queued} queued" if s.queued else "no"
        tx = "-" if s.transaction_id is None else str(s.transaction_id)
        out.append(f"{s.connector:>3}  {history.iso(s.started)[:16].replace('T', ' '):<16}  {stopped:<16}  {s.id_tag[:20]:<20} "
                   f"{kwh:>8}  {s.stop_reason or '-':<16} {tx:>8}  {backend}")
    if not rows:
        out.append("  none")
    out += ["", "Daily totals per connector (a session counts on the day it started)"]
    if totals:
        out.append(f"{'day':<10}  {'#':>3}  {'sessions':>8}  {'hours':>7}  {'kWh':>9}")
    out += [f"{t.day:<10}  {t.connector:>3}  {t.sessions:>8}  {t.hours:>7.2f}  {t.kwh:>9.2f}" for t in totals]
    return "\n".join(out)


def render_queue(summary: history.QueueSummary, now: float) -> str:
    actions = ", ".join(f"{action} {n}" for action, n in summary.by_action.items())
    out = [f"{summary.pending} messages pending" + (f" ({actions}), {summary.bytes / 1000:.1f} kB" if summary.pending else "")]
    if summary.head:
        out.append(f"{'id':>8}  {'action':<18} {'#':>3}  {'age':>7}  {'attempts':>8}  state")
    for m in summary.head:
        age = "clock unset" if m.stamp is not None and m.age_s(now) is None else age_text(m.age_s(now))
        conn = "-" if m.connector is None else str(m.connector)
        out.append(f"{m.seq:>8}  {m.action:<18} {conn:>3}  {age:>7}  {m.attempts:>8}  {'sending' if m.sending else 'waiting'}")
    if summary.pending > len(summary.head):
        out.append(f"... and {summary.pending - len(summary.head)} more (--limit)")
    return "\n".join(out)


def event_line(event: Mapping[str, Any]) -> str:
    """One event of the daemon's ring as a log line, its structured fields after it."""
    from gateway.event_log import Event

    known = ("time", "level", "logger", "message")
    fields = {k: v for k, v in event.items() if k not in known}
    line = Event(float(event["time"]), str(event["level"]), str(event["logger"]), str(event["message"])).line()
    return line + ("  [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]" if fields else "")


# --- the commands (thin I/O) ---------------------------------------------------------------------


def _load(path: str) -> Config:
    """The config; its warnings are for check-config, not for every look at the daemon."""
    from gateway.config import load_config_with_warnings

    return load_config_with_warnings(path)[0]


def _error(text: str, code: int) -> int:
    print(f"error: {text}", file=sys.stderr)
    return code


def _ask(args: argparse.Namespace, config: Config, request: dict[str, Any], timeout_s: float = 30.0) -> tuple[Any, int]:
    """The daemon's result, or None and the exit code after saying what went wrong."""
    from gateway.control_socket import DaemonUnavailable, RequestFailed, call

    try:
        return asyncio.run(call(config.control.socket, request, timeout_s)), EX_OK
    except DaemonUnavailable as exc:
        return None, _unavailable(exc, args)
    except RequestFailed as exc:
        return None, _error(str(exc), EXIT_OF_KIND.get(exc.kind, 1))


def _unavailable(exc: Exception, args: argparse.Namespace) -> int:
    print(
        f"error: the daemon does not answer: {exc}\n"
        "  Is it running? Check `systemctl status charger-gateway` and `journalctl -u charger-gateway -e`.\n"
        f"  The socket's path is control.socket in {args.config}.",
        file=sys.stderr,
    )
    return EX_UNAVAILABLE


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def cmd_status(args: argparse.Namespace) -> int:
    """0 all is well, 1 alarms, 69 no daemon."""
    status, code = _ask(args, _load(args.config), {"op": "status"}, 15.0)
    if status is None:
        return code
    if args.json:
        _print_json(status)
    else:
        print(render_status(status))
    return EX_ALARM if status["alarms"] else EX_OK


def _now(conn: sqlite3.Connection) -> float:
    """Now, or, while this box believes it is 1970, the last time the database knows (so --since means something)."""
    from gateway.clock import Clock

    clock = Clock()
    if clock.wall_is_valid():
        return clock.wall()
    now = max(history.latest_time(conn), clock.wall())
    print(f"warning: the system clock is not set; counting from {history.iso(now)}, the last time in the database", file=sys.stderr)
    return now


@contextlib.contextmanager
def _history(args: argparse.Namespace) -> Iterator[tuple[sqlite3.Connection, float] | None]:
    """The daemon's database read-only and `now` (see _now); None, said why, when there is no database yet."""
    path = _load(args.config).storage.path
    if not path.is_file():
        print(f"error: no database at {path}: the daemon has not run with this config yet", file=sys.stderr)
        yield None
        return
    with history.read_only(path) as conn:
        yield conn, _now(conn)


def cmd_sessions(args: argparse.Namespace) -> int:
    with _history(args) as opened:
        if opened is None:
            return EX_NOINPUT
        conn, now = opened
        try:
            since = history.parse_since(args.since, datetime.fromtimestamp(now, UTC).date())
        except ValueError as exc:
            return _error(f"--since: {exc}", EX_USAGE)
        rows = history.sessions(conn, since, now, args.connector)
    totals = history.daily_totals(rows, now)
    if args.json:
        _print_json({"since": history.iso(since), "sessions": [r.to_json() for r in rows], "daily_totals": [t.to_json() for t in totals]})
    else:
        print(render_sessions(rows, totals, since))
    return EX_OK


def cmd_queue(args: argparse.Namespace) -> int:
    with _history(args) as opened:
        if opened is None:
            return EX_NOINPUT
        conn, now = opened
        summary = history.queue(conn, args.limit)
    if args.json:
        _print_json({"pending": summary.pending, "bytes": summary.bytes, "by_action": summary.by_action,
                     "messages": [m.to_json(now) for m in summary.head]})
    else:
        print(render_queue(summary, now))
    return EX_OK


def cmd_events(args: argparse.Namespace) -> int:
    """The daemon's recent events; with --follow, each new one until Ctrl-C (or the reader goes: EPIPE)."""
    from gateway.control_socket import DaemonUnavailable, RequestFailed, follow

    config = _load(args.config)

    async def tail() -> None:
        async for event in follow(config.control.socket, {"op": "events", "last": args.last, "follow": args.follow}):
            print(json.dumps(event) if args.json else event_line(event), flush=True)

    try:
        asyncio.run(tail())
    except DaemonUnavailable as exc:
        return _unavailable(exc, args)
    except RequestFailed as exc:
        return _error(str(exc), EXIT_OF_KIND.get(exc.kind, 1))
    except KeyboardInterrupt:
        return EX_OK  # the technician's way to end a follow (a reader that goes, EPIPE, ends it in cli.main)
    return EX_OK


def cmd_modbus(args: argparse.Namespace) -> int:
    if args.action == "write" and not args.force:
        return _error(
            f"refusing to write {args.values} to holding {args.address} of {args.bus} unit {args.unit} without --force: "
            "a write changes what the charger does (and the daemon may write its own value back at its next poll)",
            EX_USAGE,
        )
    request: dict[str, Any] = {"op": "modbus", "action": args.action, "bus": args.bus, "unit": args.unit, "address": args.address}
    request |= {"count": args.count, "table": args.table} if args.action == "read" else {"values": args.values}
    result, code = _ask(args, _load(args.config), request)
    if result is None:
        return code
    if args.json:
        _print_json(result)
    elif args.action == "write":
        print(f"wrote holding {result['address']} = {' '.join(map(str, result['values']))} on {result['line']} unit {result['unit']}")
    else:
        print(f"{result['line']} unit {result['unit']}, {result['table']} registers:")
        for offset, value in enumerate(result["values"]):
            print(f"  {result['address'] + offset:>5}  {value:>5}  0x{value:04X}")
    return EX_OK


def cmd_trigger(args: argparse.Namespace) -> int:
    request = {"op": "trigger", "message": "StatusNotification", "connector": args.connector}
    result, code = _ask(args, _load(args.config), request)
    if result is None:
        return code
    if args.json:
        _print_json(result)
    else:
        which = "every connector" if result["connector"] is None else f"connector {result['connector']}"
        when = "now" if result["connected"] else "once the uplink is connected (it is not now)"
        print(f"StatusNotification of {which}: sent to the backend {when}")
    return EX_OK


def _number(text: str) -> int:
    """A register number or value: decimal, or 0x hex."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number (decimal or 0x hex), not {text!r}") from None


def _positive(text: str) -> int:
    value = _number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {value}")
    return value


def add_commands(sub: Any) -> None:
    """The technician's subcommands, on `charger-gateway`'s subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE", help=f"the daemon's config (default {DEFAULT_CONFIG})")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("status", parents=[common], help="the running daemon at a glance: uplink, connectors, queue, alarms",
                       description="The running daemon on one screen. Exit 0 all is well, 1 there are alarms, 69 no daemon.")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("sessions", parents=[common], help="charging sessions and daily totals per connector (from the database)")
    p.add_argument("--since", default="7d", metavar="DATE|Nd", help="a UTC day (2026-05-01) or the last N days, today included (default 7d)")
    p.add_argument("--connector", type=_positive, metavar="N", help="one connector only")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("queue", parents=[common], help="the messages waiting for the backend (from the database)")
    p.add_argument("--limit", type=_positive, default=20, metavar="N", help="show the first N (default 20)")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("events", parents=[common], help="the daemon's recent events; --follow for a live tail",
                       description="The daemon's recent log events (--json: one JSON object per line).")
    p.add_argument("--last", type=_number, default=20, metavar="N", help="the last N events (default 20)")
    p.add_argument("--follow", "-f", action="store_true", help="then each new event, until Ctrl-C")
    p.set_defaults(func=cmd_events)

    about = (
        "Register access through the daemon's own line, before its routine polls, so it never collides with polling. "
        "BUS is a bus of the config. On a Modbus TCP bus the host and port come from the config: UNIT is the unit of "
        "the connector (or meter) configured on that bus; where several devices there share that unit, give the line as "
        "`status` shows it (BUS/HOST:PORT) instead of the bus. Exit 0 ok, 1 the slave answered an exception or nothing, "
        "2 bad request or a write without --force, 69 no daemon or the line cannot be used."
    )
    p = sub.add_parser("modbus", help="read or write registers of a slave through the daemon's line (diagnostics)", description=about)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action in ("read", "write"):
        q = actions.add_parser(action, parents=[common], help=f"{action} registers", description=about)
        q.add_argument("bus", metavar="BUS", help="a bus of the config (or, on Modbus TCP, a line BUS/HOST:PORT)")
        q.add_argument("unit", type=_number, metavar="UNIT", help="the slave's unit; on a TCP bus, that of a configured connector or meter")
        q.add_argument("address", type=_number, metavar="ADDR", help="0-based register address (as in the profiles)")
        if action == "read":
            q.add_argument("count", type=_positive, nargs="?", default=1, metavar="COUNT", help="registers to read (default 1)")
            q.add_argument("--table", choices=("holding", "input"), default="holding", help="FC03 holding (default) or FC04 input")
        else:
            q.add_argument("values", type=_number, nargs="+", metavar="VALUE", help="one value: FC06; several: FC16")
            q.add_argument("--force", action="store_true", help="really write")
        q.set_defaults(func=cmd_modbus)

    p = sub.add_parser("trigger", parents=[common], help="resend StatusNotification to the backend")
    p.add_argument("--connector", type=_number, metavar="N", help="only this connector (0: the charge point); default all")
    p.set_defaults(func=cmd_trigger)
