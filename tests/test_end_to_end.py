"""End to end: the simulator's slaves, the real daemon process, and npm ocpp-rpc in strict mode as the backend.

Every simulated session must reach the backend exactly once, on the right
connectorId, with meterStart/meterStop equal to the simulated energy register,
and ocpp-rpc must report zero schema violations in either direction.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.kill_judge import IDENTITY
from tests.killing import Scenario, read_events, spawn_gateway, terminate, write_config
from tests.ocpp_rpc_peer import OcppRpcBackend

pytestmark = pytest.mark.interop

SESSIONS_WANTED = 8
# The kill harness's busy cluster (2 RTU slaves on one pty line, 2 TCP slaves), with no kills:
# EVs arrive 3 to 7 s after the simulator starts, and meter values go every 2 s.
CLUSTER = Scenario(kills=0, seed=11, speed=60.0, idle_s=(180.0, 400.0), session_kwh=(0.5, 1.5), sample_interval_s=2)


async def test_every_simulated_session_reaches_the_strict_backend_once(tmp_path: Path) -> None:
    async with OcppRpcBackend() as backend:
        config = write_config(tmp_path, backend.url, CLUSTER)
        events_file = tmp_path / "sim-events.jsonl"
        # The daemon must pause every slave before the first EV arrives (3 s or more after the simulator
        # starts), or that EV would charge before authorization and meterStart would differ from the
        # plug-in reading. So it starts as soon as the simulated line exists, not before: a daemon
        # waiting for a missing port backs off, and could miss that window.
        sim = await spawn_gateway("simulate", "-c", str(config), "--events", str(events_file), log=tmp_path / "sim.log")
        async with asyncio.timeout(20):
            while not (tmp_path / "ttyRS485-1").exists():
                await asyncio.sleep(0.05)
        daemon = await spawn_gateway("run", "-c", str(config), log=tmp_path / "daemon.log")
        try:
            deadline = asyncio.get_running_loop().time() + 150
            while True:
                await asyncio.sleep(0.5)
                assert daemon.returncode is None, (tmp_path / "daemon.log").read_text()[-3000:]
                assert sim.returncode is None, (tmp_path / "sim.log").read_text()[-3000:]
                unplugs = [e for e in read_events(events_file) if e["event"] == "unplug"]
                stops = backend.calls("StopTransaction", IDENTITY)
                if len(unplugs) >= SESSIONS_WANTED and len(stops) >= len(unplugs):
                    # Judge what had happened by now; sessions still running at shutdown are not counted.
                    events, stops = read_events(events_file), list(stops)
                    break
                if asyncio.get_running_loop().time() > deadline:
                    pytest.fail(
                        f"{len(unplugs)} sessions simulated, {len(stops)} stops at the backend\n"
                        + (tmp_path / "daemon.log").read_text()[-4000:]
                    )
        finally:
            daemon_rc = await terminate(daemon)
            sim_rc = await terminate(sim)

        starts = backend.calls("StartTransaction", IDENTITY)
        all_stops = backend.calls("StopTransaction", IDENTITY)
        results = {r["messageId"]: r["result"] for r in backend.of_type("result", IDENTITY)}
        tx_connector = {results[s["messageId"]]["transactionId"]: s["params"] for s in starts}

        # Pair each simulated session (plug .. unplug on one connector) with the backend's transaction.
        sessions: list[tuple[int, int, int]] = []
        open_plug: dict[int, int] = {}
        for e in events:
            if e["event"] == "plug":
                open_plug[e["connector"]] = e["energy_wh"]
            elif e["event"] == "unplug" and e["connector"] in open_plug:
                sessions.append((e["connector"], open_plug.pop(e["connector"]), e["energy_wh"]))
        backend_sessions = sorted(
            (tx_connector[s["params"]["transactionId"]]["connectorId"], tx_connector[s["params"]["transactionId"]]["meterStart"], s["params"]["meterStop"])
            for s in stops
        )
        assert len(all_stops) == len({s["params"]["transactionId"] for s in all_stops}), "a session was stopped twice"
        assert sorted(sessions) == backend_sessions
        assert {c for c, _, _ in backend_sessions} == {1, 2, 3, 4}, "every connector, RTU and TCP, completed a session"
        assert all(stop_ > start for _, start, stop_ in backend_sessions), "energy was charged in every session"
        assert backend.calls("MeterValues", IDENTITY), "periodic meter values were sent"
        boots = backend.calls("BootNotification", IDENTITY)
        assert boots and boots[0]["params"]["firmwareVersion"]
        status_connectors = {c["params"]["connectorId"] for c in backend.calls("StatusNotification", IDENTITY)}
        assert status_connectors == {0, 1, 2, 3, 4}
        assert backend.violations == [], backend.violations
        assert backend.bad_messages == []
        assert daemon_rc == 0 and sim_rc == 0
