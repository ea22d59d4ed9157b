"""Frugal with a SIM's bytes: permessage-deflate where the backend takes it, a Heartbeat only on a
quiet link, compact frames; and the modem's SIM ids in BootNotification."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from gateway.demo_backend import serve
from gateway.settings import BackendSettings, OcppSettings
from gateway.simulator.modem import SimModem
from gateway.store import Store
from gateway.uplink import Uplink
from tests.ocpp_rpc_peer import OcppRpcBackend
from tests.test_backend_commands import IDENTITY, cluster_config, daemon_on_simulator
from tests.uplinks import CLOCK, INFO, running, statuses

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("offered", [True, False])
async def test_permessage_deflate_is_used_where_the_backend_accepts_it(tmp_path: Path, offered: bool) -> None:
    """The demo backend (websockets) accepts permessage-deflate; npm ocpp-rpc does not, and works without."""
    ready, said = asyncio.Event(), []
    demo = asyncio.create_task(serve("127.0.0.1", 0, out=said.append, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    port = re.search(r"ws://127\.0\.0\.1:(\d+)/", said[0]).group(1)  # type: ignore[union-attr]
    store = await Store.open(tmp_path / "gw.db")
    try:
        settings = BackendSettings(url=f"ws://127.0.0.1:{port}/ocpp", insecure_lab_mode=True, compression=offered)
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await asyncio.wait_for(uplink.connected.wait(), 10)
            assert uplink.status().compression is offered
        async with OcppRpcBackend() as backend:
            uplink = Uplink(INFO, BackendSettings(url=backend.url, insecure_lab_mode=True), OcppSettings(), store, CLOCK, statuses)
            async with running(uplink):
                await asyncio.wait_for(uplink.connected.wait(), 10)
                assert uplink.status().compression is False
            assert backend.violations == []
    finally:
        demo.cancel()
        await asyncio.gather(demo, return_exceptions=True)
        await store.close()


async def test_a_heartbeat_only_when_nothing_else_went_out_and_frames_are_compact(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend() as backend:
        await backend.configure(heartbeat_interval=1)
        uplink = Uplink(INFO, BackendSettings(url=backend.url, insecure_lab_mode=True), OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await asyncio.wait_for(uplink.connected.wait(), 10)
            await backend.wait_for_calls("StatusNotification", 3, timeout=10)
            # Busy: a status every 0.3 s for 3 s. Each tells the backend we are alive: no Heartbeat.
            beats = len(backend.calls("Heartbeat"))
            for _ in range(10):
                uplink.trigger("StatusNotification", 1)
                await asyncio.sleep(0.3)
            assert len(backend.calls("Heartbeat")) == beats, "a Heartbeat while other CALLs were going out"
            # Quiet: now they come, about one a second.
            await asyncio.sleep(2.6)
            assert len(backend.calls("Heartbeat")) >= beats + 2
        frames = [r["message"] for r in backend.of_type("frame", INFO.identity) if r["direction"] == "in"]
        assert frames and all(f == json.dumps(json.loads(f), separators=(",", ":"), ensure_ascii=False) for f in frames), "compact JSON"
        assert backend.violations == []
    await store.close()


async def test_the_first_boot_carries_the_sim_ids_the_modem_tells(tmp_path: Path) -> None:
    """The simulator plays a modem on a pty at the uplink's at_port; the daemon's first BootNotification has its ids."""
    async with OcppRpcBackend() as backend:
        modem = {"at_port": str(tmp_path / "ttyModemAT"), "command_timeout_s": 0.5, "poll_interval_s": 60}
        config = cluster_config(tmp_path, backend.url, True, connectors=1, uplinks=[{"name": "gprs", "modem": modem}])
        async with daemon_on_simulator(config) as (daemon, _):
            await asyncio.wait_for(daemon.uplink.connected.wait(), 15)
            assert daemon.modems["gprs"].health.iccid == SimModem.iccid
        boot = backend.calls("BootNotification", IDENTITY)[0]["params"]
        assert boot["iccid"] == SimModem.iccid and boot["imsi"] == SimModem.imsi
        assert backend.violations == []
    # The bytes of that link were counted at its socket and kept, under the uplink's name.
    store = await Store.open(config.storage.path)
    rows = await store.usage("gprs")
    await store.close()
    assert rows and rows[0].traffic.sent > 500 and rows[0].traffic.received > 300  # boot and statuses, headers estimated
