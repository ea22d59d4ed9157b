#!/usr/bin/env python3
"""How long `charger-gateway scan` takes over units 1-247 of an RTU line, against a minute and the wire-time floor.

Setup: `charger-gateway simulate` (a separate process) plays 4 devices on one
pseudo-terminal line at the given baud rate: Heidelberg Energy Control at units
1 and 7, each with a separate meter (Eastron SDM630 at 20, Carlo Gavazzi EM340
at 21). Every reply is held back by its wire time (11 bits a character, t3.5
silences), and a box does not hear a request sent sooner than its profile's
inter-frame delay after a reply (simulator turnaround), so the pty behaves like
RS-485. The scan is the real one (gateway.scan.run_scan with every built-in RTU
profile as a candidate), over the gateway's own SerialLine.

Printed:
  elapsed          the whole scan: presence pass, second looks, identification
  vs 60 s          the requirement: well under a minute
  per absent unit  measured on a second scan of units 100-199, where nobody answers
                   (t3.5 + request on the wire + presence timeout)
  wire floor       247 x the wire time of one probe transaction (request + reply and
                   their t3.5 silences): no master asks every unit faster

Run: .venv/bin/python bench/scan.py [--baud 19200] [--units 1-247]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

from gateway import wiretime
from gateway.config import load_config_with_warnings
from gateway.devprofile import Table
from gateway.modbus_transport import SERIAL_UNITS
from gateway.scan import load_candidates, parse_units, plan_scan, run_scan

_FC = {Table.INPUT: 4, Table.HOLDING: 3}
_EMPTY = tuple(range(100, 200))


def write_config(directory: Path, baud: int) -> Path:
    meters = {1: (20, "eastron-sdm630"), 7: (21, "carlo-gavazzi-em340")}
    config = {
        "charge_point": {"identity": "BENCH", "vendor": "bench", "model": "bench"},
        "backend": {"url": "ws://127.0.0.1:9/ocpp", "insecure_lab_mode": True},
        "buses": [{"name": "rs485", "kind": "rtu", "port": str(directory / "tty"), "baudrate": baud, "parity": "N", "poll_interval_s": 3}],
        "connectors": [
            {"id": i, "bus": "rs485", "unit": unit, "profile": "heidelberg-energy-control",
             "meter": {"bus": "rs485", "unit": meters[unit][0], "profile": meters[unit][1]}}
            for i, unit in enumerate(meters, 1)
        ],
        "storage": {"path": str(directory / "bench.db")},
        "simulator": {"speed": 1, "seed": 1, "wire_delay": True, "turnaround": True},
    }
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def measure(baud: int, units: tuple[int, ...]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_config(Path(tmp), baud)
        config, _ = load_config_with_warnings(path)  # parity N on a pty is expected (testing-notes.md)
        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "simulate", "-c", str(path), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            tty = Path(tmp) / "tty"
            for _ in range(200):  # the simulator creates the pty link
                if tty.exists():
                    break
                await asyncio.sleep(0.05)
            candidates = load_candidates([], {}).values()
            plan = plan_scan(config.buses[0], candidates, units=units)
            started = time.perf_counter()
            result = await run_scan(plan)
            elapsed = time.perf_counter() - started
            # The cost of an absent unit, measured alone: a scan of units where nobody answers.
            empty = plan_scan(config.buses[0], candidates, units=_EMPTY)
            started = time.perf_counter()
            nobody = await run_scan(empty)
            per_absent = (time.perf_counter() - started) / len(_EMPTY)
        finally:
            sim.send_signal(signal.SIGTERM)
            await sim.wait()

    assert not nobody.devices, f"units {_EMPTY[0]}-{_EMPTY[-1]} hold no simulated device"
    probe_fc = _FC[plan.probe.table]
    request = wiretime.rtu_request_bytes(probe_fc, 1)
    one_probe = wiretime.transaction_wire_s(baud, request, wiretime.rtu_reply_bytes(probe_fc, 1))
    absent = len(units) - len(result.devices)
    print(f"RTU {baud} baud 8N1, units {units[0]}-{units[-1]} ({len(units)}), {len(plan.profiles)} candidate profiles, probe: {plan.probe.table.value} register {plan.probe.address}")
    for device in result.devices:
        best = device.best.profile.name if device.best else "-"
        also = ", ".join(m.profile.name for m in device.matches[1:])
        print(f"  {device.target}: {device.presence.value:<9} {best}" + (f" (also: {also})" if also else ""))
    margin = plan.timeout_s - 7 * wiretime.char_time_s(baud, 10) - wiretime.t35_s(baud)
    print(f"elapsed            {elapsed:7.2f} s   ({result.requests} requests on the wire, {result.timeouts} unanswered)")
    print(f"vs 60 s            {elapsed / 60:7.1%}  of a minute")
    print(f"presence timeout   {plan.timeout_s * 1e3:7.1f} ms  (7-byte reply wire time + t3.5 + {margin * 1e3:.0f} ms turnaround margin)")
    print(f"per absent unit    {per_absent * 1e3:7.1f} ms  (measured over units {_EMPTY[0]}-{_EMPTY[-1]}, nobody there)")
    print(f"  {absent} absent      {absent * per_absent:7.2f} s;  the {len(result.devices)} devices' identification is the rest: {elapsed - absent * per_absent:.2f} s")
    print(f"wire floor         {len(units) * one_probe:7.2f} s   ({len(units)} x {one_probe * 1e3:.1f} ms, one probe's request + reply + 2 t3.5); elapsed is {elapsed / (len(units) * one_probe):.1f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--units", default="1-247")
    args = parser.parse_args()
    asyncio.run(measure(args.baud, parse_units(args.units, SERIAL_UNITS)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
