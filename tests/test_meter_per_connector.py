"""A connector whose energy comes from its own meter on another RS-485 bus: the daemon bills the meter, and a
meter that stops answering takes the connector down like a charger that stops answering.

Two pty lines: a Heidelberg box on one, an Eastron SDM630 measuring the same EV on the other. To tell the
two sources apart, the box is a site profile (profile_dirs) whose energy register reads ten times too much:
the sessions must carry the meter's figures. Unplugging the meter is the end of its simulated line.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from gateway.clock import Clock
from gateway.config import load_config_with_warnings
from gateway.daemon import Daemon
from gateway.profile_loader import builtin_profile_dir
from gateway.settings import Config
from gateway.simulator.ev import EvModel, EvTiming
from gateway.simulator.serial_server import PtyLink, serve_line
from gateway.simulator.slave import SimSlave, SlaveEvent, TimeScale
from gateway.store import Store

BOX = "heidelberg-tenfold"  # Heidelberg with an energy register that reads ten times the energy
METER_UNIT = 3


def meter_config(tmp_path: Path) -> Config:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    text = (builtin_profile_dir() / "heidelberg-energy-control.yaml").read_text()
    energy = "energy: {table: input, address: 17, type: u32, word_order: high_first, unit: Wh}"
    assert energy in text
    text = text.replace("name: heidelberg-energy-control", f"name: {BOX}").replace(energy, energy.replace("unit: Wh", "scale: 10, unit: Wh"))
    (profiles / f"{BOX}.yaml").write_text(text)
    doc: dict[str, Any] = {
        "charge_point": {"identity": "CP-METER", "vendor": "OpenGateway", "model": "Cluster"},
        "backend": {"url": "ws://127.0.0.1:9/ocpp", "insecure_lab_mode": True},  # nobody there: sessions are committed offline
        "buses": [
            {"name": "boxes", "kind": "rtu", "port": str(tmp_path / "ttyBoxes"), "parity": "N", "poll_interval_s": 0.5},
            {"name": "meters", "kind": "rtu", "port": str(tmp_path / "ttyMeters"), "parity": "N", "baudrate": 9600},
        ],
        "connectors": [
            {"id": 1, "bus": "boxes", "unit": 1, "profile": BOX, "meter": {"bus": "meters", "unit": METER_UNIT, "profile": "eastron-sdm630"}}
        ],
        "storage": {"path": str(tmp_path / "gw.db")},
        "authorization": {"free_charging_id_tag": "FREE"},
        "profile_dirs": [str(profiles)],
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(doc))
    config, _ = load_config_with_warnings(tmp_path / "gateway.yaml")
    return config


@contextlib.asynccontextmanager
async def two_lines(config: Config, events: list[SlaveEvent]) -> AsyncIterator[dict[str, asyncio.Task[None]]]:
    """The box and its meter on their own simulated lines, one serving task per line (cancel one: its line goes silent)."""
    now = time.monotonic()
    clock = TimeScale(now, speed=120.0)
    # This seed's first EV: 3-phase, 16 A, arriving 1 s in (the daemon has paused the box by then), full 1.4 s
    # later, gone 0.5 s after that.
    rng = random.Random("meter-test/6")
    ev = EvModel(rng, timing=EvTiming(idle_s=(120, 180), session_kwh=(0.5, 0.5)), start_energy_wh=250_000, now=clock.sim(now))
    connector = config.connectors[0]
    assert connector.meter is not None
    box = SimSlave(connector=1, unit=1, profile=config.profile_of(connector), ev=ev, clock=clock, now=now, emit=events.append)
    meter_profile = config.meter_profile_of(connector)
    assert meter_profile is not None
    meter = SimSlave(connector=1, unit=METER_UNIT, profile=meter_profile, ev=ev, clock=clock, now=now, measures=box)
    box.energy_spec = meter_profile.values["energy"]  # the events say what the meter reads
    links = {bus.name: PtyLink(str(bus.port)) for bus in config.buses}
    try:
        tasks = {
            "boxes": asyncio.create_task(serve_line(config.bus("boxes"), links["boxes"], {1: box}, wire_delay=False)),
            "meters": asyncio.create_task(serve_line(config.bus("meters"), links["meters"], {METER_UNIT: meter}, wire_delay=False)),
        }

        async def tick() -> None:
            while True:
                box.tick(time.monotonic())
                await asyncio.sleep(0.1)

        ticking = asyncio.create_task(tick())
        try:
            yield tasks
        finally:
            for task in (*tasks.values(), ticking):
                task.cancel()
            await asyncio.gather(*tasks.values(), ticking, return_exceptions=True)
    finally:
        for link in links.values():
            link.close()


def closed_sessions(db: Path) -> list[tuple[int, int]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        return [tuple(r) for r in con.execute("SELECT meter_start, meter_stop FROM sessions WHERE stopped IS NOT NULL")]


async def test_the_meter_bills_the_session_and_a_silent_meter_is_a_lost_slave(tmp_path: Path) -> None:
    config = meter_config(tmp_path)
    events: list[SlaveEvent] = []
    async with two_lines(config, events) as lines:
        store = await Store.open(config.storage.path)
        daemon = Daemon(config, store, Clock())
        await daemon.recover()
        running = asyncio.create_task(daemon.run())
        poller = daemon.pollers[0]
        try:
            async with asyncio.timeout(30):
                while not (config.storage.path.exists() and closed_sessions(config.storage.path)):
                    assert not running.done()
                    await asyncio.sleep(0.2)
            lines["meters"].cancel()  # the meter is unplugged from its bus
            async with asyncio.timeout(10):
                while daemon.statuses[1].status != "Faulted":
                    assert not running.done()
                    await asyncio.sleep(0.1)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await store.close()

    plug = next(e for e in events if e.kind == "plug")
    unplug = next(e for e in events if e.kind == "unplug")
    (meter_start, meter_stop), = closed_sessions(config.storage.path)
    # The SDM630's import register (float32 kWh) at plug-in and unplug, not the box's, which reads 2.5 MWh.
    assert (meter_start, meter_stop) == (plug.energy_wh, unplug.energy_wh)
    assert 250_000 <= meter_start < meter_stop < 260_000
    # A silent meter is a lost slave: Faulted, with what the poll could not get.
    status = daemon.statuses[1]
    assert status.error_code == "OtherError" and status.info is not None and "not answering" in status.info
    assert poller.online is False
