#!/usr/bin/env python3
"""How long one poll cycle of N RTU slaves takes, against the wire-time limit of the baud rate.

Setup: `charger-gateway simulate` (a separate process) plays N Heidelberg
Energy Control slaves on one pseudo-terminal line and delays every reply by
its wire time (11 bits a character, t3.5 silences), so the pty behaves like
RS-485 at the configured baud rate. The gateway's own SerialLine (the owner
task the daemon uses) polls every block of every slave, one transaction at
a time, exactly as a ConnectorPoller does.

Printed per N:
  wire limit   sum of the transactions' wire times: no master can poll faster
  +gaps        the wire limit plus the inter-frame delay the profile asks for
  measured     median and worst cycle time of the real line
  overhead     measured / (wire limit + gaps): what our scheduling costs
  bus use      share of a 1 s poll period the cycle takes

Run: .venv/bin/python bench/poll_cycle.py [--slaves 1 2 4 8] [--baud 19200] [--cycles 30] [--gap profile|t35]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from gateway import wiretime
from gateway.config import load_config_with_warnings
from gateway.devprofile import Table
from gateway.modbus_line import Priority, SerialLine


def write_config(directory: Path, slaves: int, baud: int, gap_mode: str) -> Path:
    config = {
        "charge_point": {"identity": "BENCH", "vendor": "bench", "model": "bench"},
        "backend": {"url": "ws://127.0.0.1:9/ocpp", "insecure_lab_mode": True},
        "buses": [{"name": "rs485", "kind": "rtu", "port": str(directory / "tty"), "baudrate": baud, "parity": "N", "poll_interval_s": max(1.0, 0.45 * slaves)}],
        "connectors": [{"id": u, "bus": "rs485", "unit": u, "profile": "heidelberg-energy-control"} for u in range(1, slaves + 1)],
        "storage": {"path": str(directory / "bench.db")},
        # t35 mode measures our scheduling with the Modbus minimum gap, which real boxes do not hear.
        "simulator": {"speed": 1, "seed": 1, "wire_delay": True, "turnaround": gap_mode == "profile"},
    }
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def measure(slaves: int, baud: int, cycles: int, gap_mode: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_config(Path(tmp), slaves, baud, gap_mode)
        config, _ = load_config_with_warnings(path)  # parity N on a pty is expected (testing-notes.md)
        profile = config.profiles["heidelberg-energy-control"]
        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "simulate", "-c", str(path), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        tty = Path(tmp) / "tty"
        for _ in range(200):  # the simulator creates the pty link
            if tty.exists():
                break
            await asyncio.sleep(0.05)
        line = SerialLine(config.buses[0], reopen_min_s=0.1, reopen_max_s=0.2)
        owner = asyncio.create_task(line.run())
        gap = profile.inter_frame_delay_s if gap_mode == "profile" else 0.0
        try:
            await line.read(1, Table.INPUT, 4, 1, timeout_s=2.0, priority=Priority.POLL)  # warm-up, not timed
            times = []
            for _ in range(cycles):
                start = time.perf_counter()
                for unit in range(1, slaves + 1):
                    for block in profile.blocks:
                        await line.read(unit, block.table, block.address, block.count, timeout_s=profile.request_timeout_s, gap_s=gap)
                times.append(time.perf_counter() - start)
        finally:
            owner.cancel()
            await asyncio.gather(owner, return_exceptions=True)
            sim.send_signal(signal.SIGTERM)
            await sim.wait()
    fc = {Table.INPUT: 4, Table.HOLDING: 3}
    wire = slaves * sum(
        wiretime.transaction_wire_s(baud, wiretime.rtu_request_bytes(fc[b.table], b.count), wiretime.rtu_reply_bytes(fc[b.table], b.count))
        for b in profile.blocks
    )
    # The line keeps at least t3.5 of silence before each request; the profile's delay replaces it when longer.
    gaps = slaves * len(profile.blocks) * max(0.0, gap - wiretime.t35_s(baud))
    return {
        "wire": wire,
        "gaps": gaps,
        "median": statistics.median(times),
        "worst": max(times),
        "requests": slaves * len(profile.blocks),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slaves", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--gap", choices=["profile", "t35"], default="profile", help="profile: Heidelberg's 100 ms inter-frame delay; t35: the Modbus minimum (the simulated boxes then hear every request, which real ones do not)")
    args = parser.parse_args()
    print(f"Heidelberg Energy Control slaves, RTU {args.baud} baud on a pty with wire-time replies; gap = {args.gap}; {args.cycles} cycles each")
    print(f"{'slaves':>6} {'requests':>8} {'wire limit':>11} {'+gaps':>9} {'median':>9} {'worst':>9} {'overhead':>9} {'bus use @1s':>12}")
    for n in args.slaves:
        r = asyncio.run(measure(n, args.baud, args.cycles, args.gap))
        floor = r["wire"] + r["gaps"]
        print(
            f"{n:>6} {r['requests']:>8.0f} {r['wire'] * 1e3:>9.1f}ms {floor * 1e3:>7.1f}ms {r['median'] * 1e3:>7.1f}ms "
            f"{r['worst'] * 1e3:>7.1f}ms {r['median'] / floor:>8.2f}x {r['median'] / 1.0:>11.0%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
