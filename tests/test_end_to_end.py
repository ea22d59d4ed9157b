"""End to end: the simulator's slaves, the real daemon process, and npm ocpp-rpc in strict mode as the backend.

Every simulated session must reach the backend exactly once, on the right
connectorId, with meterStart/meterStop equal to the simulated energy register,
and ocpp-rpc must report zero schema violations in either direction.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
import yaml

from tests.killing import read_events, spawn_gateway, terminate
from tests.ocpp_rpc_peer import OcppRpcBackend

pytestmark = pytest.mark.interop

IDENTITY = "CP-E2E-01"
SESSIONS_WANTED = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_config(tmp_path: Path, backend_url: str) -> Path:
    tcp_ports = [free_port(), free_port()]
    config = {
        "charge_point": {"identity": IDENTITY, "vendor": "OpenGateway", "model": "Cluster", "serial_number": "E2E-1"},
        "backend": {"url": backend_url},
        "buses": [
            {"name": "rs485-1", "kind": "rtu", "port": str(tmp_path / "ttyRS485-1"), "baudrate": 19200, "parity": "N", "stopbits": 1, "poll_interval_s": 1.0},
            {"name": "lan", "kind": "tcp", "poll_interval_s": 1.0},
        ],
        "connectors": [
            {"id": 1, "bus": "rs485-1", "unit": 1, "profile": "heidelberg-energy-control"},
            {"id": 2, "bus": "rs485-1", "unit": 2, "profile": "heidelberg-energy-control"},
            {"id": 3, "bus": "lan", "host": "127.0.0.1", "port": tcp_ports[0], "unit": 1, "profile": "heidelberg-energy-control"},
            {"id": 4, "bus": "lan", "host": "127.0.0.1", "port": tcp_ports[1], "unit": 1, "profile": "heidelberg-energy-control"},
        ],
        "storage": {"path": str(tmp_path / "gateway.db")},
        "authorization": {"free_charging_id_tag": "E2E-FREE"},
        "ocpp": {"meter_value_sample_interval_s": 2},
        "simulator": {"speed": 60, "seed": 11, "wire_delay": True, "idle_s": [180, 400], "session_kwh": [0.5, 1.5]},
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def test_every_simulated_session_reaches_the_strict_backend_once(tmp_path: Path) -> None:
    async with OcppRpcBackend() as backend:
        config = cluster_config(tmp_path, backend.url)
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
