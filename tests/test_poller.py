"""The connector poller on a real pty line against the simulator: control writes, sessions, a dead neighbour."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import yaml

from gateway.clock import Clock
from gateway.config import load_config_with_warnings
from gateway.devprofile import Table
from gateway.modbus_line import SerialLine
from gateway.poller import ConnectorPoller, MeterLink
from gateway.session import Connector, Effect, State, StatusChanged, TransactionStarted, TransactionStopped
from gateway.settings import Config, ConnectorSettings
from gateway.simulator import run_simulation

LIMIT_REGISTER = 261  # Heidelberg holding register: current limit, 0.1 A


def line_config(tmp_path: Path) -> Config:
    doc = {
        "charge_point": {"identity": "CP-POLL", "vendor": "t", "model": "t"},
        "backend": {"url": "ws://127.0.0.1:9/ocpp", "insecure_lab_mode": True},
        "buses": [{"name": "rs485", "kind": "rtu", "port": str(tmp_path / "tty"), "parity": "N", "poll_interval_s": 1.0}],
        "connectors": [{"id": 1, "bus": "rs485", "unit": 1, "profile": "heidelberg-energy-control"}],
        "storage": {"path": str(tmp_path / "gw.db")},
        "simulator": {"speed": 120, "seed": 3, "wire_delay": True, "idle_s": [120, 180], "session_kwh": [0.2, 0.4]},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    config, _ = load_config_with_warnings(tmp_path / "c.yaml")
    return config


class Recorder:
    """Collects what the poller hands to the daemon, in order."""

    def __init__(self, commits: bool = True) -> None:
        self.effects: list[Effect] = []
        self.meter_values: list[tuple[int, str, Sequence[dict]]] = []
        self.commits = commits  # False: a store whose disk is full

    async def on_effects(self, effects: Sequence[Effect]) -> bool:
        self.effects.extend(effects)
        return self.commits

    async def on_meter_values(self, connector_id: int, key: str, entries: Sequence[dict]) -> None:
        self.meter_values.append((connector_id, key, entries))


def poller(config: Config, line: SerialLine, settings: ConnectorSettings, rec: Recorder) -> ConnectorPoller:
    return ConnectorPoller(
        settings, config.buses[0], config.profiles["heidelberg-energy-control"], line, Connector(settings.id), Clock(),
        rec.on_effects, rec.on_meter_values, start_policy=lambda connector_id, reading: ("FREE", None), measurands=("Energy.Active.Import.Register", "Power.Active.Import"),
        sample_interval_s=0.5,
    )


@contextlib.asynccontextmanager
async def simulated_line(config: Config, sim_events: list[dict]) -> AsyncIterator[tuple[asyncio.TaskGroup, SerialLine]]:
    """The simulator's slaves on a pty and the line that owns it, in a TaskGroup; every task is cancelled after."""
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        sim = tg.create_task(run_simulation(config, on_event=sim_events.append, ready=ready))
        await ready.wait()
        line = SerialLine(config.buses[0])
        owner = tg.create_task(line.run())
        try:
            yield tg, line
        finally:
            owner.cancel()
            sim.cancel()


async def test_session_on_a_real_line_with_a_dead_neighbour(tmp_path: Path) -> None:
    config = line_config(tmp_path)
    sim_events: list[dict] = []
    limits: list[int] = []
    async with simulated_line(config, sim_events) as (tg, line):
        live, dead = Recorder(), Recorder()
        live_poller = poller(config, line, config.connectors[0], live)
        # Unit 9 is on the line in the config of this poller only: nobody answers it.
        dead_poller = poller(config, line, ConnectorSettings(id=2, bus="rs485", unit=9, profile="heidelberg-energy-control"), dead)
        pollers = [tg.create_task(live_poller.run()), tg.create_task(dead_poller.run())]
        async with asyncio.timeout(40):
            while live_poller.online is None:  # the first poll (and its pause write) has not happened yet
                await asyncio.sleep(0.02)
            while not any(isinstance(e, TransactionStopped) for e in live.effects):
                limits.append((await line.read(1, Table.HOLDING, LIMIT_REGISTER, 1, timeout_s=1.0))[0])
                await asyncio.sleep(0.2)
            while limits[-1] != 0:  # the pause follows the stop within the same poll
                limits.append((await line.read(1, Table.HOLDING, LIMIT_REGISTER, 1, timeout_s=1.0))[0])
        for task in pollers:
            task.cancel()

    # The box starts at its maximum (left so by a previous master) and is paused at once, before any EV.
    assert limits[0] == 0
    started = next(e for e in live.effects if isinstance(e, TransactionStarted))
    stopped = next(e for e in live.effects if isinstance(e, TransactionStopped))
    plug = next(e for e in sim_events if e["event"] == "plug" and e["unit"] == 1)
    unplug = next(e for e in sim_events if e["event"] == "unplug" and e["unit"] == 1)
    assert started.transaction.meter_start_wh == plug["energy_wh"]
    assert stopped.meter_stop_wh == unplug["energy_wh"] > plug["energy_wh"]
    # Current was offered (16 A) during the session and withdrawn after it.
    assert 160 in limits and limits[-1] == 0
    statuses = [e.status for e in live.effects if isinstance(e, StatusChanged)]
    assert statuses[:3] == ["Preparing", "SuspendedEVSE", "Charging"] and statuses[-1] == "Available"
    assert live.meter_values and all(key == started.transaction.key for _, key, _ in live.meter_values)
    # The dead unit is Faulted once, not once per poll, and the live one was followed through a whole session meanwhile.
    assert [e.status for e in dead.effects if isinstance(e, StatusChanged)] == ["Faulted"]
    assert dead_poller.connector.state is State.FAULTED and live_poller.online
    assert line.stats.timeouts >= 1


async def test_no_current_for_a_session_the_store_refused(tmp_path: Path) -> None:
    """A full disk: the Start exists only in memory, so the box must stay as the last committed state left it."""
    config = line_config(tmp_path)
    limits: list[int] = []
    async with simulated_line(config, []) as (tg, line):
        refused = Recorder(commits=False)
        polling = tg.create_task(poller(config, line, config.connectors[0], refused).run())
        async with asyncio.timeout(30):
            while not any(isinstance(e, TransactionStarted) for e in refused.effects):
                await asyncio.sleep(0.1)
            for _ in range(10):  # a few more polls with the session only in memory
                limits.append((await line.read(1, Table.HOLDING, LIMIT_REGISTER, 1, timeout_s=1.0))[0])
                await asyncio.sleep(0.2)
        polling.cancel()
    assert set(limits) == {0}, "paused: no current for a session that exists only in memory"


def profile_config(tmp_path: Path, profile: str, *, meter: bool = False, kind: str = "rtu", **simulator: object) -> Config:
    """One connector with `profile` on a pty line of its kind, optionally with an SDM630 on a second (RTU) line."""
    connector: dict = {"id": 1, "bus": "line", "unit": 1, "profile": profile}
    # An ASCII (ABL) box gets every request twice: dead, it costs 2 x its 500 ms timeout of a round (config check).
    poll = 1.05 if kind == "ascii" else 0.5
    buses = [{"name": "line", "kind": kind, "port": str(tmp_path / "tty"), "parity": "N", "baudrate": 38400, "poll_interval_s": poll}]
    if meter:
        buses.append({"name": "meters", "kind": "rtu", "port": str(tmp_path / "ttyM"), "parity": "N", "baudrate": 9600})
        connector["meter"] = {"bus": "meters", "unit": 1, "profile": "eastron-sdm630"}
    doc = {
        "charge_point": {"identity": "CP-POLL", "vendor": "t", "model": "t"},
        "backend": {"url": "ws://127.0.0.1:9/ocpp", "insecure_lab_mode": True},
        "buses": buses,
        "connectors": [connector],
        "storage": {"path": str(tmp_path / "gw.db")},
        "simulator": {"speed": 60, "seed": 3, "wire_delay": False, "idle_s": [30, 60], "session_kwh": [40, 40]} | simulator,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    config, _ = load_config_with_warnings(tmp_path / "c.yaml")
    return config


@contextlib.asynccontextmanager
async def polling(config: Config, sim_events: list[dict]) -> AsyncIterator[tuple[ConnectorPoller, dict[str, SerialLine], Recorder]]:
    """The simulator, a line per bus, and the connector's poller (as the daemon wires it) running; all cancelled after."""
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(run_simulation(config, on_event=sim_events.append, ready=ready))]
        await ready.wait()
        lines = {bus.name: SerialLine(bus) for bus in config.buses}
        tasks += [tg.create_task(line.run()) for line in lines.values()]
        c, rec = config.connectors[0], Recorder()
        meter_profile = config.meter_profile_of(c)
        meter = None
        if c.meter is not None and meter_profile is not None:
            meter = MeterLink(meter_profile, lines[c.meter.bus], c.meter.unit, meter_profile.request_timeout_s)
        p = ConnectorPoller(
            c, config.bus(c.bus), config.profile_of(c), lines[c.bus], Connector(c.id), Clock(), rec.on_effects, rec.on_meter_values,
            start_policy=lambda connector_id, reading: ("FREE", None), measurands=(), sample_interval_s=0, meter=meter,
        )
        tasks.append(tg.create_task(p.run()))
        try:
            yield p, lines, rec
        finally:
            for task in tasks:
                task.cancel()


async def test_a_pwm_duty_limit_is_written_once_not_at_every_poll(tmp_path: Path) -> None:
    """ABL: 16 A is duty raw 266, which reads back as 15.96 A; the poller must take that for 16 A (evcc abl.go)."""
    config = profile_config(tmp_path, "abl-emh", meter=True, kind="ascii")
    async with polling(config, []) as (p, lines, rec):
        async with asyncio.timeout(20):
            while not (p.last_reading and p.last_reading.power_w):  # a session runs at 16 A, metered
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            line = lines["line"]
            before, reads = line.stats.requests, 2 * len(p.profile.blocks)  # every request goes twice (repeat 2)
            await asyncio.sleep(4.2)  # four polls, 1.05 s apart
            polls = (line.stats.requests - before) / reads
            assert 3 <= polls <= 5 and (line.stats.requests - before) % reads == 0, "nothing but the reads"
    assert p.offered_a == pytest.approx(15.96)
    assert any(isinstance(e, TransactionStarted) for e in rec.effects)


async def test_a_heartbeat_keeps_the_watchdog_from_striking(tmp_path: Path) -> None:
    """Mennekes: only the heartbeat feeds its watchdog; the poller writes it every keepalive period while the box answers."""
    config = profile_config(tmp_path, "mennekes-amtron-compact")
    profile = config.profiles["mennekes-amtron-compact"]
    assert profile.watchdog is not None
    quick = dataclasses.replace(profile, watchdog=dataclasses.replace(profile.watchdog, timeout_s=1.5, keepalive_every_s=0.4))
    config = dataclasses.replace(config, profiles={profile.name: quick})
    sim_events: list[dict] = []
    async with polling(config, sim_events) as (p, _, _):
        await asyncio.sleep(4.0)  # more than twice the watchdog; polls alone would not feed it
        assert p.online
    assert "watchdog" not in [e["event"] for e in sim_events]
