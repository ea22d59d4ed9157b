"""Reservation, station availability and the hard reset, end to end against the strict backend (npm ocpp-rpc).

The reservation shows at the connector, only its tag starts there (with the reservationId in
StartTransaction), a reservation expires on its own; connector 0 follows the whole station;
a hard reset stops the sessions, runs the configured reboot command, and the daemon comes back.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.clock import wire_time
from gateway.simulator import run_simulation
from tests.ocpp_rpc_peer import OcppRpcBackend
from tests.test_backend_commands import IDENTITY, Running, cluster, cluster_config

pytestmark = pytest.mark.interop

# EVs arrive 10 s after the start (speed 60): a reservation is made and one expires before.
LATE_EVS = {"speed": 60, "seed": 2, "wire_delay": False, "idle_s": [600, 600], "session_kwh": [40, 40]}


def _in(seconds: float) -> str:
    return wire_time(datetime.now(UTC) + timedelta(seconds=seconds))


async def _reserve(c: Running, connector_id: int, reservation_id: int, id_tag: str, seconds: float) -> str:
    answer = await c.call("ReserveNow", {
        "connectorId": connector_id, "expiryDate": _in(seconds), "idTag": id_tag, "reservationId": reservation_id,
    })
    return str(answer["status"])


async def test_a_reserved_connector_waits_for_its_tag_and_a_reservation_expires(tmp_path: Path) -> None:
    async with cluster(tmp_path, simulator=LATE_EVS) as c:
        assert await _reserve(c, 1, 11, "RESV-TAG", 120) == "Accepted"
        assert await _reserve(c, 2, 12, "SOON-GONE", 2) == "Accepted"
        await c.until(lambda: c.status(1) == "Reserved" and c.status(2) == "Reserved", timeout=5)
        await c.until(lambda: c.status(2) == "Available", timeout=6, what="reservation 12 expired")
        assert (await c.call("CancelReservation", {"reservationId": 12}))["status"] == "Rejected"
        # The EVs come: free charging starts on 2; on 1 the free tag is not the reserved one.
        await c.until(lambda: c.status(1) == "Preparing" and c.daemon.connectors[2].transaction, timeout=20)
        await asyncio.sleep(1.0)
        assert {s["connectorId"] for s in c.backend.calls("StartTransaction", IDENTITY) for s in [s["params"]]} == {2}
        assert await _reserve(c, 2, 13, "LATE", 60) == "Occupied"
        assert (await c.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "RESV-TAG"}))["status"] == "Accepted"
        await c.until(lambda: len(c.backend.calls("StartTransaction", IDENTITY)) == 2, timeout=5)
        start = [r["params"] for r in c.backend.calls("StartTransaction", IDENTITY) if r["params"]["connectorId"] == 1][0]
        assert start["idTag"] == "RESV-TAG" and start["reservationId"] == 11
        await c.until(lambda: c.register(1) == 160, timeout=5)
        assert (await c.call("CancelReservation", {"reservationId": 11}))["status"] == "Rejected", "used up by the start"


async def test_connector_zero_follows_the_whole_station(tmp_path: Path) -> None:
    async with cluster(tmp_path, simulator=LATE_EVS) as c:
        assert (await c.call("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}))["status"] == "Accepted"
        await c.until(lambda: c.status(0) == "Unavailable" and c.status(1) == "Unavailable", timeout=5)
        assert (await c.call("ChangeAvailability", {"connectorId": 1, "type": "Operative"}))["status"] == "Accepted"
        await c.until(lambda: c.status(0) == "Available" and c.status(1) == "Available", timeout=5)
        assert c.status(2) == "Unavailable"


async def test_a_hard_reset_stops_the_sessions_runs_the_reboot_command_and_comes_back(tmp_path: Path) -> None:
    marker = tmp_path / "rebooted"
    async with OcppRpcBackend() as backend:
        config = cluster_config(tmp_path, backend.url, True, ocpp={"hard_reset_command": ["touch", str(marker)]})
        ready = asyncio.Event()
        sim = asyncio.create_task(run_simulation(config, ready=ready))
        await ready.wait()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "-c", str(tmp_path / "cluster.yaml"),
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await backend.wait_for_calls("StartTransaction", 2, timeout=30)
            boots = len(backend.calls("BootNotification", IDENTITY))
            assert (await backend.call(IDENTITY, "Reset", {"type": "Hard"}))["status"] == "Accepted"
            await backend.wait_for_calls("BootNotification", boots + 1, timeout=30)
            stops = [r["params"]["reason"] for r in backend.calls("StopTransaction", IDENTITY)]
            assert stops == ["HardReset", "HardReset"]
            assert marker.exists(), "the configured reboot command ran"
            assert daemon.returncode is None, "the same process went on (execv), as on a box whose reboot is slow"
        finally:
            daemon.terminate()
            await daemon.wait()
            sim.cancel()
            await asyncio.gather(sim, return_exceptions=True)
        assert backend.violations == [], backend.violations
