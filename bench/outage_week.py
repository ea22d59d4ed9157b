#!/usr/bin/env python3
"""A week's uplink outage with sessions running: what the outbox holds at its end, and the drain after it.

The daemon's own pollers, session machines, SQLite store and uplink play the
week in accelerated time against the simulator's slaves (tests/virtual_cluster.py
says what is real and what is skipped: only the Modbus wire). The uplink is
cut by a blackholing loopback proxy (no RST, packets swallowed: a GPRS dead
zone) and keeps trying; at the end the zone lifts and the outbox drains to
the strict independent backend (npm ocpp-rpc), which checks every message
against the OCPP 1.6 schemas. The judge then compares what arrived with what
the simulator played: every session once, in order, every sample.

Printed: outbox rows and bytes at the end of the outage against the disk
budget, the database size, the drain time and message count. Exit status 1
if anything was lost or out of order.

Run: .venv/bin/python bench/outage_week.py [--connectors 16] [--days 7] [--seed 7]
Needs the strict peer: npm ci --prefix tests/interop
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ holds the harness, proxy and strict peer

from tests.virtual_cluster import WeekScenario, run_week  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connectors", type=int, default=16)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--budget-mb", type=float, default=128.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    scenario = WeekScenario(connectors=args.connectors, outage_days=args.days, seed=args.seed, budget_mb=args.budget_mb)
    with tempfile.TemporaryDirectory() as workdir:
        report = asyncio.run(run_week(Path(workdir), scenario, drain_timeout_s=900.0))
    print(report.summary())
    rows_per_day = report.outbox_rows / args.days / args.connectors
    print(f"  per connector and day of outage: {rows_per_day:.0f} rows, {report.outbox_bytes / args.days / args.connectors / 1e3:.0f} kB of payload")
    print(f"  verdict: {'nothing lost, order kept' if not report.problems else 'FAILED'}")
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
