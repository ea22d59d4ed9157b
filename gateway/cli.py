"""`charger-gateway`: the daemon and the tools installers and technicians run over SSH.

Exit codes: 0 ok, 1 runtime failure, 2 usage, 78 config error (EX_CONFIG);
`scan` also 1 when nothing answered and 69 (EX_UNAVAILABLE) when the line cannot be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import gateway
from gateway.errors import ConfigError, GatewayError

EX_CONFIG = ConfigError.exit_code


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # pymodbus logs every timeout at ERROR; the line layer reports outages once instead.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if not verbose:  # the ocpp library logs every frame at INFO: a technician's -v, not the journal's default
        logging.getLogger("ocpp").setLevel(logging.WARNING)
        logging.getLogger("websockets").setLevel(logging.WARNING)


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


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import main as demo_main

    return demo_main(args.config, duration=args.duration)


def cmd_profiles(args: argparse.Namespace) -> int:
    """`profiles list`: every device profile, one line each; `profiles show NAME`: one profile's file."""
    import json

    from gateway.profile_loader import available_profiles, load_profile

    known = available_profiles([Path(d) for d in args.dir])
    if args.action == "list":
        rows = []
        for name, path in known.items():
            try:
                profile = load_profile(path)
            except ConfigError as exc:  # one broken site profile must not hide the others
                rows.append({"name": name, "file": str(path), "error": str(exc.issues[0])})
                continue
            rows.append({
                "name": name, "kind": profile.kind, "framing": profile.line.framing.value,
                "description": profile.description, "file": str(path),
            })
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                what = f"error: {row['error']}" if "error" in row else f"{row['kind']:<8} {row['framing']:<6} {row['description']}"
                print(f"{row['name']:<32} {what}")
        return 1 if any("error" in row for row in rows) else 0
    if args.name not in known:
        print(f"error: unknown profile {args.name!r}; known: {', '.join(known)}", file=sys.stderr)
        return 1
    load_profile(known[args.name])  # a broken profile exits 78 with its faults, line by line
    print(f"# {known[args.name]}")
    print(known[args.name].read_text(), end="")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from gateway.scan import main as scan_main

    return scan_main(args)


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

    p = sub.add_parser("demo", help="simulator, demo backend and daemon together, on the demo config")
    p.add_argument("-c", "--config", default="config/demo.yaml", metavar="FILE")
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: run until Ctrl-C)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
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
