"""Site load management end to end: three slaves behind one fuse, the backend's station limit on top.

The slaves' current registers are read with modbus-tk, an independent Modbus master, while the cluster runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.test_backend_commands import Running, cluster

pytestmark = pytest.mark.interop

UNITS_PER_A = 10  # Heidelberg holding 261 counts 0.1 A
FAILSAFE, WATCHDOG = 262, 257  # Heidelberg holding: fail-safe current (0.1 A), watchdog timeout (ms)


async def _watch_sums(c: Running, limit_a: list[float], seen: list[int], stop: asyncio.Event) -> None:
    """Sample the three registers again and again; every sum must stay within the limit in force."""
    while not stop.is_set():
        # Read 1, 2, 3 and back 3, 2, 1: the registers are read one at a time, so only a sample in which
        # nothing changed meanwhile shows values that were in force together (a loaded machine stretches it).
        there = await asyncio.to_thread(lambda: [c.register(cid) for cid in (1, 2, 3)])
        back = await asyncio.to_thread(lambda: [c.register(cid) for cid in (3, 2, 1)])
        if there == back[::-1]:
            total = sum(there)
            seen.append(total)
            assert total <= limit_a[0] * UNITS_PER_A, f"{there} above {limit_a[0]} A"
        await asyncio.sleep(0.05)


async def test_three_cars_share_the_site_fuse_and_the_backends_station_limit(tmp_path: Path) -> None:
    async with cluster(tmp_path, connectors=3, site={"phase_limit_a": [20, 20, 20]}) as c:
        # A simulated box starts as a previous master left it, at its maximum; the daemon takes it over first.
        await c.until(lambda: sum(c.register(i) for i in (1, 2, 3)) <= 200, timeout=10, what="the boxes taken over")
        # Each box's fallback for a dead master: 20 A shared by three, with the watchdog armed (15 s).
        assert await asyncio.to_thread(lambda: [(c.register(i, FAILSAFE), c.register(i, WATCHDOG)) for i in (1, 2, 3)]) == [(66, 15000)] * 3
        limit = [20.0]
        seen: list[int] = []
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch_sums(c, limit, seen, stop))
        try:
            await c.until(
                lambda: all(c.daemon.connectors[i].transaction for i in (1, 2, 3))
                and sorted(c.register(i) for i in (1, 2, 3)) == [66, 67, 67],
                timeout=30, what="three sessions sharing 20 A fairly, to the 0.1 A step: 6.7 + 6.7 + 6.6",
            )
            profile = {
                "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "ChargePointMaxProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 12.0}]},
            }
            answer = await c.call("SetChargingProfile", {"connectorId": 0, "csChargingProfiles": profile})
            assert answer["status"] == "Accepted"
            await c.until(
                lambda: sorted(c.register(i) for i in (1, 2, 3)) == [0, 60, 60],
                timeout=10, what="12 A for the station: two cars at their 6 A minimum, the third paused",
            )
            limit[0] = 12.0  # from here on, only after the pause came first
            await c.until(lambda: "SuspendedEVSE" in [c.status(i) for i in (1, 2, 3)], timeout=5)
            assert (await c.call("ClearChargingProfile", {"id": 1}))["status"] == "Accepted"
            limit[0] = 20.0
            await c.until(lambda: sorted(c.register(i) for i in (1, 2, 3)) == [66, 67, 67], timeout=10)
        finally:
            stop.set()
            await watcher
        assert len(seen) > 20
