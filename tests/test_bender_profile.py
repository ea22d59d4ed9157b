"""The shipped Bender CC612/CC613 profile: literal registers from the reference, and a simulator round trip.

Register facts: shared/reference/modbus-register-maps.md §4 (evcc charger/bender.go):
all holding, big-endian, uint32 high word first, 0xFFFFFFFF = not available;
state 122 (1 = A, 2 = B, 3 = C, 4 = D), currents 212-217 in mA, total energy
218-219 in Wh, power 220-221 in W, voltages 222-227 in V, user id / idTag
720-729 (20 ASCII bytes), HEMS current limit 1000 in A (0 = pause).
"""

from __future__ import annotations

import random

import pytest

from gateway.devprofile import DataType, Framing, Profile, ReadBlock, Table, WordOrder
from gateway.errors import FrameError
from gateway.profile_loader import builtin_profile_dir, load_profile
from gateway.reading import Pilot, PilotState
from gateway.registers import control_writes, decode_reading, failsafe_writes
from gateway.simulator.ev import EvModel, EvTiming
from gateway.simulator.slave import SimSlave, SlaveEvent, TimeScale

BENDER = load_profile(builtin_profile_dir() / "bender-cc613.yaml")
H = Table.HOLDING


def blocks_of(profile: Profile, registers: dict[int, int]) -> dict[ReadBlock, list[int]]:
    """One poll's blocks holding the given holding registers, 0 elsewhere."""
    return {b: [registers.get(b.address + n, 0) for n in range(b.count)] for b in profile.blocks}


def u32(value: int) -> tuple[int, int]:
    return value >> 16, value & 0xFFFF


def test_profile_shape() -> None:
    p = BENDER
    assert (p.name, p.kind, p.line.framing) == ("bender-cc613", "charger", Framing.TCP)
    assert all(b.table is H for b in p.blocks) and all(v.table is H for v in p.values.values())
    for name in ("energy", "power", "current_l1", "current_l2", "current_l3", "voltage_l1", "voltage_l2", "voltage_l3"):
        spec = p.values[name]
        assert (spec.type, spec.word_order, spec.invalid) == (DataType.U32, WordOrder.HIGH_FIRST, (0xFFFFFFFF,)), name
    assert p.values["id_tag"].type is DataType.STRING and (p.values["id_tag"].address, p.values["id_tag"].count) == (720, 10)
    limit = p.current_limit
    assert limit is not None and (limit.address, limit.scale, limit.multiple) == (1000, 1.0, True)
    assert (p.pause_current_a, p.min_current_a) == (0, 6)
    # Safe current and communication timeout are UNCONFIRMED (reference §4): nothing is written.
    assert p.watchdog is None and failsafe_writes(p, 16.0) == []
    assert "UNCONFIRMED" in p.notes and "Allow UID Disclose" in p.notes


@pytest.mark.parametrize("address", [730, 740])
def test_no_read_touches_the_registers_that_close_the_connection(address: int) -> None:
    # Reference §4: reading 730/740 closes the TCP connection on Mennekes 4You/4Business firmware.
    assert not any(b.covers(H, address, 1) for b in BENDER.blocks)


# A 3-phase session at 16 A with a card presented; the values are in the units of the
# reference table (mA, Wh, W, V), the idTag "04A5B3C9" in ASCII, high byte first.
CHARGING = {
    122: 3,
    **dict(zip(range(212, 218), (*u32(16_000), *u32(16_000), *u32(15_900)), strict=True)),
    **dict(zip((218, 219), u32(1_234_567), strict=True)),  # 0x0012 0xD687
    **dict(zip((220, 221), u32(11_040), strict=True)),
    **dict(zip(range(222, 228), (*u32(230), *u32(231), *u32(229)), strict=True)),
    720: 0x3034, 721: 0x4135, 722: 0x4233, 723: 0x4339,  # "04A5B3C9", then NUL
    1000: 16,
}  # fmt: skip


def test_reading_from_literal_registers() -> None:
    reading = decode_reading(BENDER, blocks_of(BENDER, CHARGING))
    assert reading.state == PilotState(Pilot.C, None)  # 3 = C; the controller does not give the x1/x2 digit
    assert reading.vendor_state == 3
    assert reading.energy_wh == 1_234_567
    assert reading.power_w == 11_040
    assert reading.current_a == pytest.approx((16.0, 16.0, 15.9))  # mA
    assert reading.voltage_v == (230, 231, 229)
    assert reading.id_tag == "04A5B3C9"
    assert reading.applied_limit_a == 16
    assert reading.extra == ()


@pytest.mark.parametrize(("raw", "pilot"), [(1, Pilot.A), (2, Pilot.B), (3, Pilot.C), (4, Pilot.D)])
def test_states(raw: int, pilot: Pilot) -> None:
    assert decode_reading(BENDER, blocks_of(BENDER, CHARGING | {122: raw})).state == PilotState(pilot, None)


@pytest.mark.parametrize("raw", [0, 5, 6, 0xFFFF])  # E/F numbering is UNCONFIRMED: never guessed
def test_undocumented_states_are_read_errors(raw: int) -> None:
    with pytest.raises(FrameError, match="unknown vendor state"):
        decode_reading(BENDER, blocks_of(BENDER, CHARGING | {122: raw}))


def test_not_available_reads_as_no_value() -> None:
    # evcc: "some Bender chargers temporarily return 0xffffffff" (power), and phase values likewise.
    gone = {220: 0xFFFF, 221: 0xFFFF, 218: 0xFFFF, 219: 0xFFFF, 214: 0xFFFF, 215: 0xFFFF}
    reading = decode_reading(BENDER, blocks_of(BENDER, CHARGING | gone))
    assert reading.power_w is None and reading.energy_wh is None
    assert reading.current_a[1] is None and reading.current_a[0] == pytest.approx(16.0)
    assert reading.state == PilotState(Pilot.C, None)  # the rest of the poll stands


@pytest.mark.parametrize("tag_words", [[0] * 10, [0xFFFF] * 10])
def test_no_card_reads_no_tag(tag_words: list[int]) -> None:
    reading = decode_reading(BENDER, blocks_of(BENDER, CHARGING | dict(zip(range(720, 730), tag_words, strict=True))))
    assert reading.id_tag is None


def test_control_writes() -> None:
    assert [(w.address, w.words, w.multiple) for w in control_writes(BENDER, 16)] == [(1000, (16,), True)]  # whole A, FC16
    assert [(w.address, w.words) for w in control_writes(BENDER, 0)] == [(1000, (0,))]  # pause


# --- the simulator plays the profile -----------------------------------------------------------


def _poll(slave: SimSlave, now: float) -> dict[ReadBlock, list[int]]:
    return {b: slave.read(b.table, b.address, b.count, now) for b in BENDER.blocks}


def test_simulator_round_trip_with_a_tag() -> None:
    events: list[SlaveEvent] = []
    ev = EvModel(
        random.Random(5), timing=EvTiming(idle_s=(20, 20), session_kwh=(1, 1)), start_energy_wh=4_000_000, id_tags=["04A5B3C9"]
    )
    slave = SimSlave(connector=1, unit=255, profile=BENDER, ev=ev, clock=TimeScale(0.0, speed=10.0), now=0.0, emit=events.append)
    empty = decode_reading(BENDER, _poll(slave, 1.0))  # 10 s simulated: nobody there yet
    assert empty.state == PilotState(Pilot.A, None) and empty.id_tag is None and empty.energy_wh == 4_000_000
    plugged = decode_reading(BENDER, _poll(slave, 2.05))  # 20.5 s: plugged in, not yet asking
    assert plugged.state == PilotState(Pilot.B, None) and plugged.id_tag == "04A5B3C9"
    charging = decode_reading(BENDER, _poll(slave, 3.5))  # 35 s: the EV asks within 2..10 s of plug-in
    assert charging.state == PilotState(Pilot.C, None) and charging.id_tag == "04A5B3C9"
    assert charging.power_w and charging.power_w > 0 and charging.applied_limit_a == 16
    assert charging.energy_wh is not None and charging.energy_wh > 4_000_000
    assert charging.current_a[0] == pytest.approx(slave.ev.draw_a)
    slave.write(1000, [0], 4.0)  # pause: still C, no current
    paused = decode_reading(BENDER, _poll(slave, 4.5))
    assert paused.state is not None and paused.state.pilot is Pilot.C and paused.power_w == 0 and paused.applied_limit_a == 0
    slave.write(1000, [16], 5.0)
    for step in range(1, 2000):  # 1 kWh at >= 3.7 kW, then the driver comes back within 10 min
        reading = decode_reading(BENDER, _poll(slave, 5.0 + step))
        if reading.state is not None and reading.state.pilot is Pilot.A:
            break
    assert reading.id_tag is None  # unplugged: the tag is gone
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["plug", "charging"] and "unplug" in kinds
    plug, unplug = events[0], next(e for e in events if e.kind == "unplug")
    assert plug.energy_wh is not None and unplug.energy_wh is not None
    assert unplug.energy_wh - plug.energy_wh == pytest.approx(1000, abs=1)
    assert reading.energy_wh == unplug.energy_wh


def test_a_meter_beyond_the_register_never_reads_as_not_available() -> None:
    ev = EvModel(random.Random(1), timing=EvTiming(idle_s=(600, 600)), start_energy_wh=5e9)  # past 2**32 Wh
    slave = SimSlave(connector=1, unit=255, profile=BENDER, ev=ev, clock=TimeScale(0.0), now=0.0)
    assert decode_reading(BENDER, _poll(slave, 1.0)).energy_wh == 0xFFFFFFFE  # the largest value, not "none"
