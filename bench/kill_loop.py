#!/usr/bin/env python3
"""SIGKILL the real daemon N times during a busy simulated cluster, then check that nothing was lost.

Setup (tests/killing.py): `charger-gateway simulate` plays four Heidelberg
slaves (two on one pty RS-485 line, two on Modbus TCP) with EVs 120x faster
than life; npm ocpp-rpc in strict mode is the backend; the daemon is
SIGKILLed at seeded random instants (some aimed at a BootNotification or a
transaction message just received by the backend) and restarted at once; in
phases the restarted daemon finds the backend down, so sessions also start
and stop offline and the queue drains after the reconnect. After the last
kill the daemon drains its outbox, and every invariant of "nothing lost" is
checked.

Printed: kills (and where they landed), sessions completed, sessions at the
backend, lost, duplicates (identical / different), sessions started while the
daemon was down, merged sessions (the no-plug-counter limitation), elapsed
time, and every problem found. Exit code 1 when a problem was found.

Run: .venv/bin/python bench/kill_loop.py [--kills 1000] [--seed S] [--keep DIR]
(1000 kills take about 25 minutes on 2 cores.)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the harness lives in tests/

from tests.killing import HarnessError, Scenario, run_scenario  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=100, help="how many SIGKILLs (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the EVs and of the kill instants")
    parser.add_argument("--keep", metavar="DIR", help="play in DIR and keep the logs, database, events and backend records there")
    args = parser.parse_args()
    if args.kills < 0:
        parser.error("--kills must be >= 0")
    scenario = Scenario(kills=args.kills, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="kill-loop-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        try:
            report = asyncio.run(run_scenario(workdir, scenario, progress=lambda text: print(text, flush=True)))
        except HarnessError as exc:
            print(f"kill loop could not finish: {exc}", file=sys.stderr)
            return 2
        print(report.summary())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
