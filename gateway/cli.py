"""`charger-gateway`: the daemon and the tools installers and technicians run over SSH.

Exit codes: 0 ok, 1 runtime failure, 2 usage, 78 config error (EX_CONFIG);
`scan` also 1 when nothing answered and 69 (EX_UNAVAILABLE) when the line cannot be opened;
`data-usage` 66 (EX_NOINPUT) when the config's database does not exist (the daemon never ran).
The technician's commands (status, sessions, queue, events, modbus, trigger) are in
gateway.technician, with their exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gateway
from gateway.devprofile import Framing, Profile
from gateway.errors import ConfigError, ConfigIssue, GatewayError
from gateway.logs import setup_logging
from gateway.settings import BusSettings
from gateway.technician import DEFAULT_CONFIG
from gateway.technician import add_commands as add_technician_commands

if TYPE_CHECKING:
    from gateway.data_usage import UsageRow

EX_CONFIG = ConfigError.exit_code
EX_UNAVAILABLE = 69  # sysexits.h: a serial line or service cannot be opened
EX_NOINPUT = 66  # sysexits.h: an input file does not exist


def run_until_signalled(main: Coroutine[Any, Any, Any]) -> int:
    """Run `main` until it ends or SIGINT/SIGTERM arrives; a signal cancels it cleanly."""

    async def runner() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await main
        except asyncio.CancelledError:
            pass

    asyncio.run(runner())
    return 0


def _load(path: str) -> Any:
    from gateway.config import load_config

    return load_config(path)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import run_daemon

    config = _load(args.config)
    return run_until_signalled(run_daemon(config))


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.config import load_config_with_warnings

    config, warnings = load_config_with_warnings(args.file)
    for w in warnings:
        print(f"warning: {w}")
    print(
        f"{args.file}: OK - charge point {config.charge_point.identity}, "
        f"{len(config.connectors)} connectors on {len(config.buses)} buses, "
        f"profiles: {', '.join(sorted(config.profiles))}"
    )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from gateway.simulator.runner import main as simulate_main

    return simulate_main(args.config, speed=args.speed, seed=args.seed, wire_delay=args.wire_delay, events_file=args.events)


def cmd_demo_backend(args: argparse.Namespace) -> int:
    from gateway.demo_backend import main as backend_main

    password = Path(args.password_file).read_text().strip() if args.password_file else None
    return backend_main(args.host, args.port, password=password, certfile=args.cert, keyfile=args.key)


def cmd_selftest(args: argparse.Namespace) -> int:
    from gateway.selftest import main as selftest_main  # imported here: it is the heaviest of the commands

    return selftest_main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import main as demo_main

    return demo_main(args.config, duration=args.duration)


def cmd_profiles(args: argparse.Namespace) -> int:
    """`profiles list`: every device profile, one line each; `profiles show NAME`: one profile's file."""
    import json

    from gateway.profile_loader import available_profiles, load_profile, load_profiles

    dirs = [Path(d) for d in args.dir]
    if args.action == "list":
        loaded, broken = load_profiles(dirs)
        rows = [
            {"name": name, "file": str(path), "error": str(exc.issues[0])} for name, (path, exc) in broken.items()
        ] + [
            {
                "name": name, "kind": p.kind, "framing": p.line.framing.value,
                "description": p.description, "file": str(p.source),
            }
            for name, p in loaded.items()
        ]
        rows.sort(key=lambda row: row["name"])
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                what = f"error: {row['error']}" if "error" in row else f"{row['kind']:<8} {row['framing']:<6} {row['description']}"
                print(f"{row['name']:<32} {what}")
        return 1 if any("error" in row for row in rows) else 0
    known = available_profiles(dirs)
    if args.name not in known:
        print(f"error: unknown profile {args.name!r}; known: {', '.join(known)}", file=sys.stderr)
        return 1
    load_profile(known[args.name])  # a broken profile exits 78 with its faults, line by line
    print(f"# {known[args.name]}")
    print(known[args.name].read_text(), end="")
    return 0


def _scan_issue(option: str, message: str) -> ConfigError:
    return ConfigError([ConfigIssue("command line", None, option, message)])


def _scan_bus(args: argparse.Namespace) -> tuple[BusSettings, list[tuple[str, int]], dict[str, Profile]]:
    """The bus to scan (from -c CONFIG by name, or from the line options), its TCP endpoints, the config's profiles."""
    from gateway.profile_loader import BAUDRATES, BYTESIZES, PARITIES, STOPBITS
    from gateway.scan import parse_ports

    ports = set(args.tcp_port or ())
    if args.port_range:
        try:
            ports.update(parse_ports(args.port_range))
        except ValueError as exc:
            raise _scan_issue("--port-range", str(exc)) from None
    line_options = {"--port": args.port, "--baud": args.baud, "--parity": args.parity, "--stopbits": args.stopbits,
                    "--bytesize": args.bytesize, "--framing": args.framing}
    profiles: dict[str, Profile] = {}
    if args.config:
        if given := [option for option, value in line_options.items() if value is not None]:
            raise _scan_issue(given[0], "the line settings come from the config's bus; give either -c or line options")
        config = _load(args.config)
        names = [b.name for b in config.buses]
        name = args.bus or (names[0] if len(names) == 1 else None)
        if name not in names:
            what = f"no bus named {name!r}" if name else "name the bus to scan"
            raise _scan_issue("BUS", f"{what}; buses in {args.config}: {', '.join(names)}")
        bus = config.bus(name)
        on_bus = [c for c in config.connectors if c.bus == name and c.host]
        hosts = args.host or sorted({c.host for c in on_bus})
        ports = ports or {c.port for c in on_bus}
        profiles = dict(config.profiles)
    else:
        framing = Framing(args.framing) if args.framing else Framing.TCP if args.host else Framing.RTU
        serial = framing is not Framing.TCP
        bus = BusSettings(
            name=args.bus or ("rs485" if serial else "lan"), kind=framing, port=args.port if serial else None,
            baudrate=19200 if args.baud is None else args.baud,
            parity="E" if args.parity is None else args.parity.upper(),  # Modbus over serial line §2.5.1: even by default
            stopbits=1 if args.stopbits is None else args.stopbits,
            bytesize=8 if args.bytesize is None else args.bytesize,
        )
        hosts = args.host or []
    issues = [
        ConfigIssue("command line", None, option, f"{value} is not one of {', '.join(map(str, allowed))}")
        for option, value, allowed in (
            ("--baud", bus.baudrate, BAUDRATES), ("--parity", bus.parity, PARITIES),
            ("--stopbits", bus.stopbits, STOPBITS), ("--bytesize", bus.bytesize, BYTESIZES),
        )
        if value not in allowed
    ]
    if args.host and bus.kind is not Framing.TCP:
        issues.append(ConfigIssue("command line", None, "--host", f"bus {bus.name} is a {bus.kind.value} line, not tcp"))
    if args.first_id < 1:
        issues.append(ConfigIssue("command line", None, "--first-id", "connector ids start at 1 (OCPP 1.6 §3.7)"))
    if issues:
        raise ConfigError(issues)
    endpoints = [(h, p) for h in hosts for p in sorted(ports or {502})] if bus.kind is Framing.TCP else []
    return bus, endpoints, profiles


def cmd_scan(args: argparse.Namespace) -> int:
    """`scan`: 0 a device answered, 1 none did, 78 a config or option error, 69 the line cannot be opened."""
    import json

    from gateway.errors import LineUnavailable
    from gateway.modbus_transport import SERIAL_UNITS, TCP_UNITS
    from gateway.scan import load_candidates, parse_units, plan_scan, run_scan
    from gateway.scan_report import render_yaml, to_json

    bus, endpoints, configured = _scan_bus(args)
    units: tuple[int, ...] = ()
    if args.units:
        try:
            units = parse_units(args.units, TCP_UNITS if bus.kind is Framing.TCP else SERIAL_UNITS)
        except ValueError as exc:
            raise _scan_issue("--units", str(exc)) from None
    margin = None if args.margin_ms is None else args.margin_ms / 1000
    plan = plan_scan(bus, load_candidates(args.dir, configured).values(), units=units, endpoints=endpoints, margin_s=margin)
    try:
        result = asyncio.run(run_scan(plan))
    except LineUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    print(json.dumps(to_json(result, args.first_id), indent=2) if args.json else render_yaml(result, args.first_id), end="\n" if args.json else "")
    return 0 if result.devices else 1


def _add_scan(sub: Any) -> None:
    p = sub.add_parser(
        "scan",
        help="find the slaves on a bus and print their connectors: block",
        description="Probe unit ids on a serial line (or units behind TCP hosts and ports), identify each device by its "
        "profile's signature, and print a connectors: block to paste into the config.",
    )
    p.add_argument("bus", nargs="?", metavar="BUS", help="the bus: by name with -c, else the name given it in the output")
    p.add_argument("-c", "--config", metavar="FILE", help="take the bus settings (and TCP hosts) from this config")
    p.add_argument("--port", help="serial device, e.g. /dev/ttyUSB0")
    p.add_argument("--baud", type=int, help="baud rate (default 19200)")
    p.add_argument("--parity", help="N, E or O (default E)")
    p.add_argument("--stopbits", type=int, help="1 or 2 (default 1)")
    p.add_argument("--bytesize", type=int, help="7 or 8 (default 8)")
    p.add_argument("--framing", choices=("rtu", "ascii", "tcp"), help="default rtu, or tcp with --host")
    p.add_argument("--units", help="unit ids, e.g. 1-247 (serial default) or 1,3,10-20; on TCP added to the profiles' factory ids")
    p.add_argument("--host", action="append", metavar="HOST", help="a Modbus TCP host to scan (repeatable)")
    p.add_argument("--tcp-port", action="append", type=int, metavar="PORT", help="a TCP port to scan (repeatable, default 502)")
    p.add_argument("--port-range", metavar="A-B", help="TCP ports A..B to scan")
    p.add_argument("--margin-ms", type=float, help="device turnaround allowed on top of the wire time (default 50; TCP 500)")
    p.add_argument("--first-id", type=int, default=1, metavar="N", help="connector id of the first charger found (default 1)")
    p.add_argument("--dir", action="append", default=[], metavar="DIR", help="also a site's profile directory (profile_dirs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_scan)


def cmd_data_usage(args: argparse.Namespace) -> int:
    """`data-usage`: the bytes each uplink moved, per UTC day and month, read from the daemon's database.

    The database is only read, never created or migrated, so this is safe while the daemon runs.
    """
    import json

    from gateway.clock import EARLIEST_VALID, Clock
    from gateway.data_usage import day_key, first_day_needed, render_text, summarize, to_json

    config = _load(args.config)
    path = config.storage.path
    if not path.is_file():
        print(f"error: no database at {path}: the daemon has not run with this config yet", file=sys.stderr)
        return EX_NOINPUT
    clock = Clock()
    today = day_key(clock.wall()) if clock.wall_is_valid() else None
    rows = asyncio.run(_read_usage(path, None if today is None else first_day_needed(today, args.days)))
    if today is None:  # this box believes it is 1970: show the days up to the last one counted
        today = max((row.day for row in rows), default=day_key(EARLIEST_VALID))
        print(f"warning: the system clock is not set; showing the days up to {today}, the last one with data", file=sys.stderr)
    usages = summarize(rows, config.uplinks, today, args.days)
    print(json.dumps(to_json(usages, today), indent=2) if args.json else render_text(usages), end="\n" if args.json else "")
    return 0


async def _read_usage(path: Path, since_day: str | None) -> list[UsageRow]:
    from gateway.store import Store

    store = await Store.open_read_only(path)
    try:
        return await store.usage(since_day=since_day)
    finally:
        await store.close()


def _report_days(text: str) -> int:
    from gateway.data_usage import MAX_REPORT_DAYS

    try:
        days = int(text)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_REPORT_DAYS:
        raise argparse.ArgumentTypeError(f"a whole number of days, 1..{MAX_REPORT_DAYS}, not {text!r}")
    return days


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="charger-gateway", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {gateway.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the gateway daemon")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file and its device profiles")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("simulate", help="play the slave chargers of a config (pty RTU lines, loopback TCP)")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("--speed", type=float, help="simulated seconds per real second for EV behaviour")
    p.add_argument("--seed", type=int, help="random seed (reproducible EV arrivals)")
    p.add_argument("--wire-delay", action=argparse.BooleanOptionalAction, default=None, help="delay RTU replies by their wire time")
    p.add_argument("--events", metavar="FILE", help="also write every EV event as a JSON line to FILE")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo-backend", help="a small OCPP 1.6J backend that prints the sessions it receives")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--password-file", help="require HTTP Basic auth with this password (user = charge-point identity)")
    p.add_argument("--cert", help="TLS certificate (PEM): serve wss")
    p.add_argument("--key", help="TLS private key (PEM)")
    p.set_defaults(func=cmd_demo_backend)

    dirs = argparse.ArgumentParser(add_help=False)
    dirs.add_argument("--dir", action="append", default=[], metavar="DIR", help="also a site's profile directory (profile_dirs)")
    p = sub.add_parser("profiles", help="the device profiles: list them, or show one")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("list", parents=[dirs], help="every profile, one line each")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_profiles)
    q = actions.add_parser("show", parents=[dirs], help="one profile's file")
    q.add_argument("name", metavar="NAME")
    q.set_defaults(func=cmd_profiles)

    _add_scan(sub)

    p = sub.add_parser("data-usage", help="bytes each uplink moved, per UTC day and month, against its monthly budget")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("--days", type=_report_days, default=7, metavar="N", help="the last N days, today included (default 7)")
    p.add_argument("--json", action="store_true", help="machine-readable output (bytes)")
    p.set_defaults(func=cmd_data_usage)

    add_technician_commands(sub)

    p = sub.add_parser("selftest", help="commissioning: config, slaves, clock, uplink, TLS, BootNotification; writes the HTML report")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE", help=f"default {DEFAULT_CONFIG}")
    p.add_argument(
        "--report", metavar="PATH", help="where to write the HTML commissioning report (default: commissioning-<identity>-<date>.html next to the database)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_selftest)

    p = sub.add_parser("demo", help="simulator, demo backend and daemon together, on the demo config")
    p.add_argument("-c", "--config", default="config/demo.yaml", metavar="FILE")
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: run until Ctrl-C)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        print(f"{len(exc.issues)} error(s); nothing started.", file=sys.stderr)
        return EX_CONFIG
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `charger-gateway sessions | head`: the reader has what it wanted. Python's flush at exit must not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
