"""The slave-charger simulator: pure EV model and register image, then real ptys and loopback sockets.

Independent Modbus masters check that the simulator speaks Modbus, not just
"whatever pymodbus accepts": modbus-tk (PyPI, no code shared with pymodbus)
reads over the pty and over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import modbus_tk.defines as mbtk
import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st
from modbus_tk.modbus_rtu import RtuMaster
from modbus_tk.modbus_tcp import TcpMaster
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerAscii, FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.bit_message import ReadCoilsRequest
from pymodbus.pdu.register_message import (
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from gateway.devprofile import Framing, Profile, ReadBlock, Table, ValueSpec
from gateway.profile_loader import builtin_profile_dir, load_profile
from gateway.reading import Pilot, Reading
from gateway.registers import decode_reading
from gateway.settings import (
    BackendSettings,
    BusSettings,
    ChargePointInfo,
    Config,
    ConnectorSettings,
    SimulatorSettings,
    StorageSettings,
)
from gateway.simulator import SimulatorError, run_simulation
from gateway.simulator.dispatch import respond
from gateway.simulator.ev import Activity, EvModel, EvTiming
from gateway.simulator.serial_server import FrameAssembler
from gateway.simulator.slave import SimSlave, SlaveEvent, SlaveException, TimeScale
from gateway.wiretime import transaction_wire_s
from tests.loopback import free_port

HEIDELBERG = load_profile(builtin_profile_dir() / "heidelberg-energy-control.yaml")
BENDER = load_profile(builtin_profile_dir() / "bender-cc613.yaml")
INPUT_BLOCK = ReadBlock(Table.INPUT, 4, 15)
HOLDING_BLOCK = ReadBlock(Table.HOLDING, 257, 5)
STATE = {"A1": 2, "A2": 3, "B1": 4, "B2": 5, "C1": 6, "C2": 7, "F": 10}  # Heidelberg input 5

# --- the EV model (pure) -------------------------------------------------------------


def _kinds(events: list[Any]) -> list[str]:
    return [e.activity.value for e in events]


def test_ev_cycle_integrates_energy_and_stops_when_full() -> None:
    ev = EvModel(random.Random(1), timing=EvTiming(idle_s=(10, 10), session_kwh=(5, 5)), start_energy_wh=1000, offered_a=16)
    assert ev.advance(9.9) == [] and ev.activity is Activity.UNPLUGGED
    events = ev.advance(30)
    assert _kinds(events) == ["plug", "charging"]
    assert events[0].sim_time == 10 and 12 <= events[1].sim_time <= 20
    assert ev.ev is not None and ev.draw_a == min(16, ev.ev.max_current_a)
    assert ev.power_w == pytest.approx(ev.draw_a * 230 * ev.used_phases)
    before, power = ev.energy_wh, ev.power_w
    assert ev.advance(30 + 600) == []
    assert ev.energy_wh - before == pytest.approx(power * 600 / 3600)
    events = ev.advance(30 * 3600)
    assert _kinds(events)[:4] == ["suspended", "unplug", "plug", "charging"]  # and the next EV 10 s later
    suspended, unplug, plug = events[:3]
    assert plug.sim_time == unplug.sim_time + 10 and plug.energy_wh == unplug.energy_wh
    assert suspended.energy_wh == pytest.approx(1000 + 5000)  # exactly the wanted energy, no step error
    assert unplug.energy_wh == suspended.energy_wh  # nothing flows while the full EV waits
    assert 60 <= unplug.sim_time - suspended.sim_time <= 600


def test_ev_draws_nothing_while_paused() -> None:
    ev = EvModel(random.Random(2), timing=EvTiming(idle_s=(0, 0), session_kwh=(20, 20)), offered_a=0)
    assert _kinds(ev.advance(60)) == ["plug", "paused"]
    energy = ev.energy_wh
    assert ev.advance(3600) == [] and ev.energy_wh == energy and ev.power_w == 0
    assert _kinds(ev.set_offered(3600, 10)) == ["charging"]
    assert ev.power_w == pytest.approx(10 * 230 * ev.used_phases)
    assert _kinds(ev.set_offered(7200, 0)) == ["paused"]
    assert ev.energy_wh == pytest.approx(energy + 10 * 230 * ev.used_phases)


def test_ev_is_reproducible_with_a_seed() -> None:
    def run(seed: int) -> list[tuple[str, float, float]]:
        ev = EvModel(random.Random(seed), timing=EvTiming(idle_s=(60, 600), session_kwh=(1, 10)), offered_a=16)
        out = []
        for t in range(0, 48 * 3600, 997):
            out += [(e.activity.value, e.sim_time, e.energy_wh) for e in ev.set_offered(t, 0 if t % 7 == 0 else 16)]
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)
    assert {kind for kind, _, _ in run(5)} >= {"plug", "charging", "suspended", "unplug"}


def test_one_phase_outlet_carries_one_phase() -> None:
    ev = EvModel(random.Random(3), timing=EvTiming(idle_s=(0, 0)), outlet_phases=1, offered_a=16)
    ev.advance(60)
    assert ev.used_phases == 1 and ev.currents_a[1:] == (0, 0) and ev.currents_a[0] > 0


def test_ev_rejects_bad_input() -> None:
    ev = EvModel(random.Random(4))
    ev.advance(10)
    with pytest.raises(ValueError, match="time went back"):
        ev.advance(5)
    with pytest.raises(ValueError):
        EvModel(random.Random(4), outlet_phases=2)
    with pytest.raises(ValueError):
        EvModel(random.Random(4), timing=EvTiming(idle_s=(10, 5)))


def test_each_arriving_ev_presents_a_tag_drawn_with_the_outlets_seed() -> None:
    def tags(seed: int, id_tags: tuple[str, ...]) -> list[str | None]:
        ev = EvModel(random.Random(seed), timing=EvTiming(idle_s=(10, 60), session_kwh=(0.5, 1)), offered_a=16, id_tags=id_tags)
        seen = []
        for t in range(0, 24 * 3600, 30):
            if any(e.activity is Activity.PLUGGED for e in ev.advance(t)):
                assert ev.ev is not None
                seen.append(ev.ev.id_tag)
        return seen

    cards = ("04A5B3C9", "DEADBEEF", "TAG-3")
    first = tags(7, cards)
    assert len(first) > 20 and set(first) == set(cards)
    assert tags(7, cards) == first and tags(8, cards) != first
    assert set(tags(7, ())) == {None}


# Each activity may follow only these (the outlet's life cycle).
_NEXT = {
    "unplug": {"plug"},
    "plug": {"charging", "paused"},
    "charging": {"paused", "suspended"},
    "paused": {"charging"},
    "suspended": {"unplug"},
}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), steps=st.lists(st.tuples(st.floats(0, 7200), st.sampled_from([0, 6, 10, 16, 32])), max_size=40))
def test_ev_energy_never_falls_and_the_cycle_holds(seed: int, steps: list[tuple[float, float]]) -> None:
    ev = EvModel(random.Random(seed), timing=EvTiming(idle_s=(0, 3600), session_kwh=(0.5, 20)), start_energy_wh=500)
    now, energy, last, at_plug = 0.0, ev.energy_wh, "unplug", ev.energy_wh
    for dt, amps in steps:
        now += dt
        for event in ev.set_offered(now, amps):
            assert event.activity.value in _NEXT[last], f"{last} -> {event.activity.value}"
            last = event.activity.value
            if last == "plug":
                at_plug = event.energy_wh
            if last == "suspended":
                assert 500 - 1e-6 <= event.energy_wh - at_plug <= 20_000 + 1e-6  # the session_kwh range
        assert ev.energy_wh >= energy
        if ev.ev is not None:
            assert ev.energy_wh - at_plug <= ev.ev.wanted_wh + 1e-6  # an EV never takes more than it wants
        energy = ev.energy_wh


# --- the slave's register image (pure) ---------------------------------------------------


def _slave(
    profile: Profile = HEIDELBERG, seed: int = 1, events: list[SlaveEvent] | None = None, session_kwh: tuple[float, float] = (30, 30)
) -> SimSlave:
    ev = EvModel(random.Random(seed), timing=EvTiming(idle_s=(0, 0), session_kwh=session_kwh), start_energy_wh=123_456)
    sink = events if events is not None else []
    # EVs at ten times real speed: plugged in at 0, asking for energy within 1 s of real time.
    return SimSlave(connector=1, unit=1, profile=profile, ev=ev, clock=TimeScale(0.0, speed=10.0), now=0.0, emit=sink.append)


def _poll(slave: SimSlave, now: float) -> Reading:
    blocks = {b: slave.read(b.table, b.address, b.count, now) for b in HEIDELBERG.blocks}
    return decode_reading(HEIDELBERG, blocks)


def test_register_image_decodes_to_the_model() -> None:
    slave = _slave()
    reading = _poll(slave, 2.0)
    ev = slave.ev
    assert reading.state is not None and reading.state.pilot is Pilot.C and reading.state.evse_allows
    assert reading.vendor_state == STATE["C2"]
    assert reading.energy_wh == round(ev.energy_wh)
    assert reading.power_w == round(ev.power_w) > 0
    assert reading.current_a == pytest.approx(ev.currents_a)
    for line, volts in enumerate(reading.voltage_v, start=1):
        assert volts is not None
        used = line == 1 or ev.used_phases == 3
        assert (225 <= volts <= 235) if used else (0 < volts < 20)
    extra = dict(reading.extra)
    assert extra["layout_version"] == 0x0108 and extra["external_lock"] == 1
    temperature = extra["temperature"]
    assert isinstance(temperature, float) and 20 < temperature < 50


def test_an_empty_outlet_shows_a1_or_a2() -> None:
    ev = EvModel(random.Random(1), timing=EvTiming(idle_s=(600, 600)))
    slave = SimSlave(connector=1, unit=1, profile=HEIDELBERG, ev=ev, clock=TimeScale(0.0), now=0.0)
    assert slave.read(Table.INPUT, 5, 1, 1.0) == [STATE["A2"]]  # no vehicle, current allowed
    slave.write(261, [0], 2.0)
    assert slave.read(Table.INPUT, 5, 3, 3.0) == [STATE["A1"], 0, 0]


def test_holding_registers_start_as_a_previous_master_left_them() -> None:
    slave = _slave()
    watchdog_ms, standby, remote_lock, _reserved, limit = slave.read(Table.HOLDING, 257, 5, 0.0)
    assert (watchdog_ms, standby, remote_lock, limit) == (15000, 0, 1, 160)  # the daemon must pause it


def test_current_limit_write_changes_what_the_ev_draws() -> None:
    slave = _slave()
    assert _poll(slave, 2.0).power_w
    slave.write(261, [0], 3.0)
    reading = _poll(slave, 4.0)
    assert reading.vendor_state == STATE["C1"] and reading.power_w == 0 and reading.current_a == (0, 0, 0)
    slave.write(261, [30], 5.0)  # 3 A: below the IEC 61851-1 minimum, so still paused
    assert _poll(slave, 6.0).power_w == 0
    slave.write(261, [100], 7.0)
    reading = _poll(slave, 8.0)
    assert reading.vendor_state == STATE["C2"]
    assert reading.current_a[0] == pytest.approx(min(10, slave.ev.ev.max_current_a if slave.ev.ev else 0))
    assert slave.read(Table.HOLDING, 261, 1, 9.0) == [100]
    slave.write(258, [4], 10.0)  # the init write: standby off
    assert slave.read(Table.HOLDING, 258, 1, 10.0) == [4]


@pytest.mark.parametrize(
    ("table", "address", "count"),
    [(Table.INPUT, 19, 1), (Table.INPUT, 3, 2), (Table.INPUT, 100, 1), (Table.HOLDING, 263, 1), (Table.HOLDING, 256, 2)],
)
def test_reads_outside_the_blocks_are_illegal_addresses(table: Table, address: int, count: int) -> None:
    with pytest.raises(SlaveException) as info:
        _slave().read(table, address, count, 1.0)
    assert info.value.code == 2


@pytest.mark.parametrize(("address", "words"), [(260, [1]), (256, [0]), (5, [7]), (262, [60, 1]), (261, [])])
def test_writes_outside_the_writable_registers_are_illegal_addresses(address: int, words: list[int]) -> None:
    slave = _slave()
    with pytest.raises(SlaveException) as info:
        slave.write(address, words, 1.0)
    assert info.value.code == 2
    assert slave.read(Table.HOLDING, 257, 5, 1.0) == [15000, 0, 1, 0, 160]  # nothing changed


def test_watchdog_fails_safe_then_recovers_when_the_master_talks() -> None:
    events: list[SlaveEvent] = []
    slave = _slave(events=events)
    assert _poll(slave, 2.0).vendor_state == STATE["C2"]
    slave.tick(16.9)
    assert not slave.failsafe
    slave.tick(17.0)  # 15 s (the profile's watchdog) after the last request
    assert slave.failsafe and [e.kind for e in events[-2:]] == ["watchdog", "paused"]
    assert slave.ev.power_w == 0
    # The request that wakes the box still reads F; the box recovers after answering it.
    assert slave.read(Table.INPUT, 5, 1, 20.0) == [STATE["F"]]
    assert [e.kind for e in events[-2:]] == ["recovered", "charging"]
    reading = _poll(slave, 20.5)
    assert reading.vendor_state == STATE["C2"] and reading.power_w


def test_watchdog_registers_start_at_their_factory_values() -> None:
    slave = _slave()
    assert slave.read(Table.HOLDING, 262, 1, 0.0) == [0]  # fail-safe current 0: state F (reference §1)
    assert slave.read(Table.HOLDING, 257, 1, 0.0) == [15000]
    assert slave.watchdog_timeout_s == pytest.approx(15.0)


def test_a_failsafe_current_keeps_the_ev_charging_at_it() -> None:
    events: list[SlaveEvent] = []
    slave = _slave(events=events)
    slave.write(262, [60], 1.0)  # 6 A when the master goes silent
    assert _poll(slave, 2.0).vendor_state == STATE["C2"]
    slave.tick(17.0)
    assert slave.failsafe and events[-1].kind == "watchdog"
    assert slave.offered_a == 6.0 and slave.ev.draw_a == 6.0
    # The request that wakes the box still reads the failed-safe state: charging, at 6 A (input 6 in 0.1 A).
    assert slave.read(Table.INPUT, 5, 2, 20.0) == [STATE["C2"], 60]
    assert events[-1].kind == "recovered" and not slave.failsafe
    assert slave.offered_a == 16.0  # the current limit again


@pytest.mark.parametrize("raw", [0, 30])  # the pause value, and 3 A: below the minimum, also no current
def test_a_failsafe_current_below_the_minimum_is_state_f(raw: int) -> None:
    slave = _slave()
    slave.write(262, [raw], 1.0)
    slave.tick(16.5)
    assert slave.failsafe and slave.pilot_code() == "F" and slave.ev.power_w == 0


def test_the_timeout_register_sets_the_watchdog_in_use() -> None:
    slave = _slave()
    slave.write(257, [5000], 1.0)  # 5 s
    assert slave.watchdog_timeout_s == pytest.approx(5.0)
    slave.tick(5.9)
    assert not slave.failsafe
    slave.tick(6.0)
    assert slave.failsafe
    slave.write(257, [0], 7.0)  # 0 = watchdog off (reference §1, holding 257)
    assert not slave.failsafe
    slave.tick(10_000.0)
    assert not slave.failsafe


def test_a_write_also_feeds_the_watchdog() -> None:
    slave = _slave()
    for now in (10.0, 20.0, 30.0):
        slave.tick(now - 0.5)
        slave.write(258, [4], now)
    slave.tick(44.0)
    assert not slave.failsafe
    with pytest.raises(SlaveException):
        slave.write(1, [0], 44.0)  # an illegal request is traffic from the master too
    slave.tick(58.0)
    assert not slave.failsafe
    slave.tick(59.0)
    assert slave.failsafe


def test_a_request_stamped_before_the_last_tick_is_served_at_the_tick() -> None:
    slave = _slave()
    slave.tick(5.0)
    assert slave.read(Table.INPUT, 5, 1, 4.9) == [STATE["C2"]]  # no "time went back"


def test_state_falls_back_to_the_bare_letter() -> None:
    state = ValueSpec("state", Table.INPUT, 5, enum={1: "A", 2: "B", 3: "C", 4: "E", 5: "F"})
    coarse = replace(HEIDELBERG, values={**HEIDELBERG.values, "state": state})
    slave = _slave(coarse)
    assert slave.read(Table.INPUT, 5, 1, 2.0) == [3]
    no_f = _slave(replace(HEIDELBERG, values={**HEIDELBERG.values, "state": replace(state, enum={1: "A", 2: "B", 3: "C"})}))
    no_f.write(262, [0], 2.5)  # fail safe to no current; but this box has no state F...
    no_f.tick(18.0)
    assert no_f.failsafe and no_f.pilot_code() == "C1"  # ...so it shows the EV's letter, offering nothing
    no_b = replace(state, enum={1: "A", 3: "C", 5: "F"})
    with pytest.raises(ValueError, match="pilot B1"):
        _slave(replace(HEIDELBERG, values={**HEIDELBERG.values, "state": no_b}))


def test_plug_and_unplug_events_carry_the_register_value() -> None:
    events: list[SlaveEvent] = []
    ev = EvModel(random.Random(9), timing=EvTiming(idle_s=(100, 200), session_kwh=(1, 2)), start_energy_wh=777_000.4)
    slave = SimSlave(connector=3, unit=7, profile=HEIDELBERG, ev=ev, clock=TimeScale(0.0, speed=100.0), now=0.0, emit=events.append)
    checked = 0
    for step in range(1, 4000):
        now = step * 0.5
        reading = _poll(slave, now)  # a poll also keeps the watchdog quiet
        if events and events[-1].kind in ("plug", "unplug") and checked < len(events):
            # Nothing flows between these events and the next poll: the register still reads what the event said.
            assert reading.energy_wh == events[-1].energy_wh
            checked = len(events)
    assert [e.kind for e in events].count("unplug") >= 2 and checked
    assert all(e.connector == 3 and e.unit == 7 for e in events)
    plug: SlaveEvent | None = None
    for before, after in itertools.pairwise(events):
        if (before.kind, after.kind) in (("unplug", "plug"), ("suspended", "unplug")):
            assert before.energy_wh == after.energy_wh
        if after.kind == "plug":
            plug = after
        if after.kind == "unplug" and plug is not None and plug.energy_wh is not None and after.energy_wh is not None:
            assert 1000 - 1 <= after.energy_wh - plug.energy_wh <= 2000 + 1  # what meterStop - meterStart will say


# --- one request in, one reply (or none) out -------------------------------------------------


def test_dispatch_unknown_unit_broadcast_and_bad_requests() -> None:
    slaves = {1: _slave(seed=1), 2: _slave(seed=2)}
    read = ReadInputRegistersRequest(address=4, count=15, dev_id=9)
    assert respond(slaves, read, 1.0) is None  # nobody on the line is unit 9
    broadcast = WriteSingleRegisterRequest(address=261, registers=[0], dev_id=0)
    assert respond(slaves, broadcast, 1.0) is None
    assert all(s.read(Table.HOLDING, 261, 1, 1.0) == [0] for s in slaves.values())
    bad = WriteMultipleRegistersRequest(address=261, registers=[60, 60], dev_id=1)
    bad.count = 1
    reply = respond(slaves, bad, 1.0)
    assert reply is not None and reply.function_code == 0x90 and reply.exception_code == 3
    reply = respond(slaves, ReadCoilsRequest(address=0, count=1, dev_id=2), 1.0)
    assert reply is not None and reply.function_code == 0x81 and reply.exception_code == 1


def test_frame_assembler_drops_noise_after_a_silence() -> None:
    rtu = FramerRTU(DecodePDU(is_server=False))
    frame = rtu.buildFrame(ReadInputRegistersRequest(address=4, count=15, dev_id=1))
    assembler = FrameAssembler(FramerRTU(DecodePDU(is_server=True)), gap_s=0.02)
    assert assembler.feed(b"\x01\x03\x00", 0.0) == []  # a truncated frame...
    frames = assembler.feed(frame, 1.0)  # ...is forgotten after the silence
    assert [(f.unit, f.pdu, f.wire_size) for f in frames] == [(1, frame[1:-2], 8)]
    assert assembler.feed(frame[:3], 2.0) == []
    assert len(assembler.feed(frame[3:], 2.001)) == 1  # one frame in two pieces, no silence between
    assert assembler.feed(frame[:-1] + bytes([frame[-1] ^ 0xFF]), 3.0) == []  # bad CRC: no frame
    assert len(assembler.feed(frame, 4.0)) == 1
    ascii_frame = FramerAscii(DecodePDU(is_server=False)).buildFrame(ReadInputRegistersRequest(address=4, count=15, dev_id=2))
    ascii = FrameAssembler(FramerAscii(DecodePDU(is_server=True)), gap_s=1.0)
    frames = ascii.feed(b"noise" + ascii_frame, 0.0)
    assert [(f.unit, f.wire_size) for f in frames] == [(2, len(ascii_frame))]


# --- real lines and sockets -----------------------------------------------------------------------

# No EV waits: it plugs in at once and asks for energy within seconds of simulated time.
FAST = SimulatorSettings(speed=100.0, seed=11, wire_delay=False, idle_s=(0.0, 0.0), session_kwh=(40.0, 40.0))


def _config(tmp_path: Path, buses: tuple[BusSettings, ...], connectors: tuple[ConnectorSettings, ...], sim: SimulatorSettings = FAST) -> Config:
    return Config(
        source=tmp_path / "gateway.yaml",
        charge_point=ChargePointInfo("TEST-CP", "Test", "Cluster"),
        backend=BackendSettings(url="ws://127.0.0.1:9/ocpp"),
        buses=buses,
        connectors=connectors,
        storage=StorageSettings(tmp_path / "gateway.db"),
        simulator=sim,
        profiles={HEIDELBERG.name: HEIDELBERG},
    )


def _line(tmp_path: Path, kind: Framing = Framing.RTU, baudrate: int = 19200) -> BusSettings:
    # Parity N: Linux refuses PARENB on a pty (testing-notes.md).
    return BusSettings("rs485", kind, port=str(tmp_path / "dev" / "ttyRS485"), baudrate=baudrate, parity="N")


def _rtu_config(tmp_path: Path, units: tuple[int, ...] = (1, 2), **bus: Any) -> Config:
    connectors = tuple(ConnectorSettings(i + 1, "rs485", unit, HEIDELBERG.name) for i, unit in enumerate(units))
    return _config(tmp_path, (_line(tmp_path, **bus),), connectors)


@contextlib.asynccontextmanager
async def simulating(config: Config, **options: Any) -> AsyncIterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    ready = asyncio.Event()
    task = asyncio.create_task(run_simulation(config, on_event=events.append, ready=ready, **options))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raises the setup error
    try:
        yield events
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _serial_client(port: str, framer: FramerType = FramerType.RTU, timeout: float = 1.0, baudrate: int = 19200) -> AsyncModbusSerialClient:
    return AsyncModbusSerialClient(port, framer=framer, baudrate=baudrate, parity="N", timeout=timeout, retries=0)


async def _read(client: Any, unit: int) -> Reading:
    blocks = {}
    for block in HEIDELBERG.blocks:
        call = client.read_input_registers if block.table is Table.INPUT else client.read_holding_registers
        reply = await call(block.address, count=block.count, device_id=unit)
        assert not reply.isError(), reply
        blocks[block] = reply.registers
    return decode_reading(HEIDELBERG, blocks)


async def _until(client: Any, unit: int, state: str) -> Reading:
    async with asyncio.timeout(10):
        while (reading := await _read(client, unit)).vendor_state != STATE[state]:
            await asyncio.sleep(0.05)
    return reading


async def test_two_units_on_one_line_and_the_current_limit(tmp_path: Path) -> None:
    config = _rtu_config(tmp_path)
    async with simulating(config) as events:
        port = config.buses[0].port
        assert port is not None and os.path.islink(port) and os.readlink(port).startswith("/dev/pts/")
        client = _serial_client(port)
        assert await client.connect()
        try:
            for unit in (1, 2):
                reading = await _until(client, unit, "C2")
                assert reading.power_w and reading.power_w > 0 and reading.energy_wh
            assert (await client.write_register(261, 0, device_id=1)).registers == [0]
            reading = await _read(client, 1)
            assert reading.vendor_state == STATE["C1"] and reading.power_w == 0
            assert (await _read(client, 2)).power_w  # the other box still charges
            await client.write_registers(261, [160], device_id=1)  # FC16 works too (evcc writes so)
            assert (await _read(client, 1)).power_w
        finally:
            client.close()
    assert {(e["event"], e["connector"]) for e in events} >= {("plug", 1), ("plug", 2), ("charging", 1), ("paused", 1)}
    assert not os.path.lexists(port)  # the link is gone after the simulation


async def test_unknown_unit_gets_no_reply_and_noise_does_not_kill_the_line(tmp_path: Path) -> None:
    config = _rtu_config(tmp_path)
    async with simulating(config):
        port = config.buses[0].port
        assert port is not None
        client = _serial_client(port, timeout=0.3)
        assert await client.connect()
        try:
            with pytest.raises(ModbusIOException):
                await client.read_input_registers(4, count=15, device_id=9)
            assert (await _read(client, 1)).energy_wh
            fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
            try:
                os.write(fd, b"\xff\x00 line noise \x01\x04\x00")
                await asyncio.sleep(0.1)
                rtu = FramerRTU(DecodePDU(is_server=False))
                frame = rtu.buildFrame(ReadInputRegistersRequest(address=4, count=15, dev_id=2))
                os.write(fd, frame[:-1] + bytes([frame[-1] ^ 0x55]))  # bad CRC: no reply
                readable, _, _ = select.select([fd], [], [], 0.3)
                assert readable == []
            finally:
                os.close(fd)
            await asyncio.sleep(0.1)
            assert (await _read(client, 2)).energy_wh
        finally:
            client.close()


async def test_wire_delay_makes_a_read_take_its_wire_time(tmp_path: Path) -> None:
    config = _rtu_config(tmp_path, units=(1,), baudrate=9600)
    async with simulating(config, wire_delay=True):
        port = config.buses[0].port
        assert port is not None
        client = _serial_client(port, baudrate=9600)
        assert await client.connect()
        try:
            for _ in range(3):
                start = time.monotonic()
                reply = await client.read_input_registers(4, count=15, device_id=1)
                assert not reply.isError()
                assert time.monotonic() - start >= transaction_wire_s(9600, 8, 35)  # 57 ms at 9600 baud
        finally:
            client.close()


async def test_ascii_line(tmp_path: Path) -> None:
    config = _rtu_config(tmp_path, units=(3,), kind=Framing.ASCII)
    async with simulating(config, wire_delay=True):
        port = config.buses[0].port
        assert port is not None
        client = _serial_client(port, framer=FramerType.ASCII)
        assert await client.connect()
        try:
            assert (await _read(client, 3)).energy_wh
        finally:
            client.close()


def _modbus_tk_rtu(port: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    line = serial.Serial(port=port, baudrate=19200, bytesize=8, parity="N", stopbits=1, xonxoff=0)
    master = RtuMaster(line)
    master.set_timeout(2.0)
    try:
        inputs = master.execute(2, mbtk.READ_INPUT_REGISTERS, 4, 15)
        master.execute(2, mbtk.WRITE_SINGLE_REGISTER, 261, output_value=0)
        holding = master.execute(2, mbtk.READ_HOLDING_REGISTERS, 257, 5)
        return inputs, holding
    finally:
        master.close()


async def test_independent_master_modbus_tk_over_the_pty(tmp_path: Path) -> None:
    config = _rtu_config(tmp_path)
    async with simulating(config, wire_delay=True):
        port = config.buses[0].port
        assert port is not None
        inputs, holding = await asyncio.to_thread(_modbus_tk_rtu, port)
    assert inputs[0] == 0x0108 and inputs[1] in STATE.values() and (inputs[13] << 16 | inputs[14]) > 0
    assert holding == (15000, 0, 1, 0, 0)


async def test_tcp_server_with_pymodbus_and_modbus_tk(tmp_path: Path) -> None:
    port = free_port()
    lan = BusSettings("lan", Framing.TCP)
    connectors = (
        ConnectorSettings(1, "lan", 1, HEIDELBERG.name, host="127.0.0.1", port=port),
        ConnectorSettings(2, "lan", 2, HEIDELBERG.name, host="127.0.0.1", port=port),
    )
    async with simulating(_config(tmp_path, (lan,), connectors)) as events:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        assert await client.connect()
        try:
            reading = await _until(client, 2, "C2")
            assert reading.power_w
            reply = await client.read_input_registers(4, count=15, device_id=5)
            assert reply.isError() and reply.exception_code == 0x0B  # no such unit behind this address
            reply = await client.read_input_registers(4, count=16, device_id=1)
            assert reply.isError() and reply.exception_code == 2
        finally:
            client.close()

        def with_modbus_tk() -> tuple[int, ...]:
            master = TcpMaster("127.0.0.1", port, timeout_in_sec=2.0)
            try:
                return tuple(master.execute(1, mbtk.READ_INPUT_REGISTERS, 4, 15))
            finally:
                master.close()

        inputs = await asyncio.to_thread(with_modbus_tk)
        assert inputs[0] == 0x0108 and (inputs[13] << 16 | inputs[14]) > 0
    assert any(e["connector"] == 2 and e["event"] == "charging" for e in events)


async def test_tcp_bender_unit_255_shows_the_drivers_tag(tmp_path: Path) -> None:
    port = free_port()
    lan = BusSettings("lan", Framing.TCP)
    connector = ConnectorSettings(1, "lan", 255, BENDER.name, host="127.0.0.1", port=port)
    config = replace(_config(tmp_path, (lan,), (connector,)), profiles={BENDER.name: BENDER})
    async with simulating(config, id_tags=["04A5B3C9"]):
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        assert await client.connect()
        try:
            async with asyncio.timeout(10):
                while True:
                    blocks = {}
                    for block in BENDER.blocks:
                        reply = await client.read_holding_registers(block.address, count=block.count, device_id=255)
                        assert not reply.isError(), reply
                        blocks[block] = reply.registers
                    reading = decode_reading(BENDER, blocks)
                    if reading.state is not None and reading.state.pilot is Pilot.C and reading.power_w:
                        break
                    await asyncio.sleep(0.05)
            assert reading.id_tag == "04A5B3C9" and reading.energy_wh
        finally:
            client.close()


def test_a_tag_that_does_not_fit_the_register_is_refused(tmp_path: Path) -> None:
    lan = BusSettings("lan", Framing.TCP)
    connector = ConnectorSettings(1, "lan", 255, BENDER.name, host="127.0.0.1", port=free_port())
    config = replace(_config(tmp_path, (lan,), (connector,)), profiles={BENDER.name: BENDER})
    with pytest.raises(SimulatorError, match="connector 1: .*does not fit 10 registers"):
        asyncio.run(run_simulation(config, id_tags=["X" * 21]))


async def test_refuses_a_host_that_is_not_loopback(tmp_path: Path) -> None:
    lan = BusSettings("lan", Framing.TCP)
    connector = ConnectorSettings(1, "lan", 1, HEIDELBERG.name, host="192.0.2.10", port=502)
    with pytest.raises(SimulatorError, match="not a loopback address"):
        async with simulating(_config(tmp_path, (lan,), (connector,))):
            pass


async def test_port_link_replaces_a_symlink_but_never_a_file(tmp_path: Path) -> None:
    config = _rtu_config(tmp_path, units=(1,))
    port = Path(config.buses[0].port or "")
    port.parent.mkdir(parents=True)
    port.write_text("not a tty")
    with pytest.raises(SimulatorError, match="not a symlink"):
        async with simulating(config):
            pass
    assert port.read_text() == "not a tty"
    port.unlink()
    port.symlink_to("/dev/null")  # left over from a killed run
    async with simulating(config):
        assert os.readlink(port).startswith("/dev/pts/")
    assert not os.path.lexists(port)


def test_configs_the_simulator_cannot_play_are_refused(tmp_path: Path) -> None:
    config = _rtu_config(tmp_path, units=(4, 4))
    with pytest.raises(SimulatorError, match="unit 4 already answers"):
        asyncio.run(run_simulation(config))
    line = _line(tmp_path)
    twin = replace(line, name="twin")
    connectors = (ConnectorSettings(1, "rs485", 1, HEIDELBERG.name), ConnectorSettings(2, "twin", 1, HEIDELBERG.name))
    with pytest.raises(SimulatorError, match="also the port of bus rs485"):
        asyncio.run(run_simulation(_config(tmp_path, (line, twin), connectors)))
    state = replace(HEIDELBERG.values["state"], enum={1: "A", 3: "C", 5: "F"})
    no_b = replace(HEIDELBERG, values={**HEIDELBERG.values, "state": state})
    config = replace(_rtu_config(tmp_path), profiles={HEIDELBERG.name: no_b})
    with pytest.raises(SimulatorError, match="connector 1: .*no value for pilot B1"):
        asyncio.run(run_simulation(config))
    with pytest.raises(SimulatorError, match="speed"):
        asyncio.run(run_simulation(_rtu_config(tmp_path), speed=0))
    assert not os.path.lexists(line.port or "")


async def test_a_seed_makes_a_run_repeat(tmp_path: Path) -> None:
    async def first_plugs(seed: int) -> dict[int, int]:
        async with simulating(_rtu_config(tmp_path, units=(1, 2, 3)), seed=seed) as events:
            async with asyncio.timeout(10):
                while len({e["connector"] for e in events if e["event"] == "plug"}) < 3:
                    await asyncio.sleep(0.02)
        return {e["connector"]: e["energy_wh"] for e in events if e["event"] == "plug"}

    first = await first_plugs(21)
    assert await first_plugs(21) == first
    assert await first_plugs(22) != first
    assert len(set(first.values())) == 3  # each connector has its own random stream


_CLI_CONFIG = """
charge_point: {{identity: SIM-TEST, vendor: Test, model: Cluster}}
backend: {{url: "ws://127.0.0.1:9/ocpp", insecure_lab_mode: true}}
buses:
  - {{name: rs485, kind: rtu, port: {port}, baudrate: 19200, parity: N}}
connectors:
  - {{id: 1, bus: rs485, unit: 1, profile: heidelberg-energy-control}}
storage: {{path: gateway.db}}
simulator: {{speed: 1000, seed: 3, wire_delay: true, idle_s: [0, 0], session_kwh: [0.01, 0.01]}}
"""


def _wait_for(path: Path, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s")


@pytest.fixture
def cli_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    port = tmp_path / "ttySIM"
    config = tmp_path / "sim.yaml"
    config.write_text(_CLI_CONFIG.format(port=port))
    events = tmp_path / "events.jsonl"
    argv = [sys.executable, "-m", "gateway", "simulate", "-c", str(config), "--events", str(events)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc, port, events
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_prints_events_writes_json_lines_and_stops_on_sigterm(cli_process: tuple[subprocess.Popen[str], Path, Path]) -> None:
    proc, port, events = cli_process
    # 10 Wh at 16 A takes seconds of simulated time: a whole session passes quickly.
    content = _wait_for(events, '"unplug"')
    assert os.path.islink(port)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert not os.path.lexists(port)
    lines = [json.loads(line) for line in content.splitlines()]
    plug = next(e for e in lines if e["event"] == "plug")
    unplug = next(e for e in lines if e["event"] == "unplug")
    assert plug["connector"] == 1 and isinstance(plug["energy_wh"], int)
    assert unplug["energy_wh"] - plug["energy_wh"] == pytest.approx(10, abs=1)
    assert {"event", "connector", "energy_wh", "sim_time", "wall"} <= plug.keys()
    assert f"connector 1 plug      energy {plug['energy_wh']} Wh" in out
