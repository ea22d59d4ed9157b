"""The shipped Mennekes AMTRON Compact profile: literal float32 registers, the release-based pause, the heartbeat.

Register facts: shared/reference/modbus-register-maps.md §5a (MENNEKES Modbus RTU
specification rev 2.5 as restated by memphi2/ha-mennekes-amtron; evcc
charger/mennekes-compact.go): RTU 57600 8N2, unit 50, holding registers, float32 high
word first; state 0x0100 (1 idle .. 5 charging, 6 error); 0x0302 charging current EMS
(0 = NO limitation); 0x0500.. currents, 0x0506.. voltages, 0x0512 power; 0x0D00
heartbeat 0x55AA; 0x0D05 charging release; 0x1000 total energy in kWh. The float32
words below are IEEE-754 worked out by hand (25.0 = 0x41C80000), never by the profile.
"""

from __future__ import annotations

import pytest

from gateway.devprofile import DataType, Framing, Profile, ReadBlock, Table
from gateway.errors import FrameError
from gateway.profile_loader import builtin_profile_dir, load_profile
from gateway.reading import Pilot, PilotState
from gateway.registers import (
    RegisterWrite,
    control_writes,
    decode_reading,
    identify_matches,
    keepalive_writes,
    offered_current,
    setup_writes,
)

MENNEKES = load_profile(builtin_profile_dir() / "mennekes-amtron-compact.yaml")
H = Table.HOLDING
FILLER = 0x7FC0  # as a float32 pair a NaN: a value at a wrong address cannot pass for a right one


def blocks_of(profile: Profile, registers: dict[int, int]) -> dict[ReadBlock, list[int]]:
    return {b: [registers.get(b.address + n, FILLER) for n in range(b.count)] for b in profile.blocks}


def f32(*pairs: tuple[int, int]) -> list[int]:
    return [w for pair in pairs for w in pair]


# A 3-phase session drawing about 16 A under a 25 A limit: literal IEEE-754 words, high word first.
CHARGING = {
    0x0000: 0x0103,  # layout v01.03
    0x0100: 5,  # charging
    0x0101: 1, 0x0102: 1, 0x0103: 0,
    **dict(zip(range(0x0302, 0x0304), (0x41C8, 0x0000), strict=True)),  # 25.0 A
    **dict(zip(range(0x0500, 0x0506), f32((0x4180, 0), (0x4180, 0), (0x4178, 0)), strict=True)),  # 16.0, 16.0, 15.5 A
    **dict(zip(range(0x0506, 0x050C), f32((0x4366, 0), (0x4367, 0x8000), (0x4365, 0)), strict=True)),  # 230, 231.5, 229 V
    **dict(zip(range(0x0512, 0x0514), (0x462C, 0x8000), strict=True)),  # 11040.0 W
    0x0D05: 1,  # charging release
    0x0E00: 0,  # no error
    **dict(zip(range(0x1000, 0x1002), (0x449A, 0x5000), strict=True)),  # 1234.5 kWh
}  # fmt: skip


def test_profile_shape() -> None:
    p = MENNEKES
    assert (p.name, p.kind, p.line.framing) == ("mennekes-amtron-compact", "charger", Framing.RTU)
    assert (p.line.baudrate, p.line.parity, p.line.stopbits, p.line.bytesize, p.line.unit) == (57600, "N", 2, 8, 50)
    assert all(b.table is H for b in p.blocks)
    assert all(p.values[n].type is DataType.F32 for n in ("energy", "power", "current_l1", "voltage_l3"))
    assert (p.min_current_a, p.max_current_a, p.phases, p.repeat) == (6, 16, 3, 1)
    assert p.pause_raw is None and p.init_writes == ()
    assert "UNCONFIRMED" in p.notes and "unlimited" in p.notes


def test_reading_from_literal_registers() -> None:
    reading = decode_reading(MENNEKES, blocks_of(MENNEKES, CHARGING))
    assert reading.state == PilotState(Pilot.C, True)
    assert reading.vendor_state == 5
    assert reading.applied_limit_a == 25.0  # 0x41C80000
    assert reading.current_a == (16.0, 16.0, 15.5)
    assert reading.voltage_v == (230.0, 231.5, 229.0)
    assert reading.power_w == 11040.0
    assert reading.energy_wh == pytest.approx(1_234_500)  # kWh -> Wh
    assert reading.charging_enabled is True
    assert reading.id_tag is None
    assert dict(reading.extra) == {"layout_version": 0x0103, "error_code": 0}
    assert offered_current(MENNEKES, reading) == 25.0


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        (0, PilotState(Pilot.F, None)),  # not initialized
        (1, PilotState(Pilot.A, None)),
        (2, PilotState(Pilot.B, False)),  # no charging current signalled
        (3, PilotState(Pilot.B, None)),  # preconditions valid: signal not said
        (4, PilotState(Pilot.B, True)),  # charging current signalled
        (5, PilotState(Pilot.C, True)),
        (6, PilotState(Pilot.F, None)),  # error (see 0x0E00)
        (7, PilotState(Pilot.F, None)),  # service mode
    ],
)
def test_states(raw: int, state: PilotState) -> None:
    assert decode_reading(MENNEKES, blocks_of(MENNEKES, CHARGING | {0x0100: raw})).state == state


def test_undocumented_state_is_a_read_error() -> None:
    with pytest.raises(FrameError, match="unknown vendor state"):
        decode_reading(MENNEKES, blocks_of(MENNEKES, CHARGING | {0x0100: 8}))


def test_heartbeat_lost_shows_its_error_code() -> None:
    reading = decode_reading(MENNEKES, blocks_of(MENNEKES, CHARGING | {0x0100: 6, 0x0E00: 200}))
    assert reading.state == PilotState(Pilot.F, None) and ("error_code", 200) in reading.extra


def test_release_off_reads_as_offering_nothing() -> None:
    reading = decode_reading(MENNEKES, blocks_of(MENNEKES, CHARGING | {0x0D05: 0}))
    assert reading.charging_enabled is False and offered_current(MENNEKES, reading) == 0.0


def raw(writes: list[RegisterWrite]) -> list[tuple[int, tuple[int, ...], bool, Table]]:
    return [(w.address, w.words, w.multiple, w.table) for w in writes]


def test_offering_writes_the_current_then_the_release() -> None:
    # 10.0 = 0x41200000 with FC16 (a 32-bit register), then 0x0D05 = 1 with FC06 (evcc).
    assert raw(control_writes(MENNEKES, 10)) == [(0x0302, (0x4120, 0x0000), True, H), (0x0D05, (1,), False, H)]
    assert raw(control_writes(MENNEKES, 6)) == [(0x0302, (0x40C0, 0x0000), True, H), (0x0D05, (1,), False, H)]
    assert raw(control_writes(MENNEKES, 40))[0] == (0x0302, (0x4180, 0x0000), True, H)  # capped at 16 A


@pytest.mark.parametrize("amperes", [0, 3, 5.99])
def test_pausing_writes_the_release_and_never_zero_current(amperes: float) -> None:
    writes = raw(control_writes(MENNEKES, amperes))
    assert writes == [(0x0D05, (0,), False, H)]
    assert not any(address in (0x0302, 0x0303) for address, *_ in writes)  # 0x0302 = 0 means UNLIMITED


def test_heartbeat() -> None:
    assert raw(keepalive_writes(MENNEKES, 16)) == [(0x0D00, (0x55AA,), False, H)]
    wd = MENNEKES.watchdog
    assert wd is not None and (wd.timeout_s, wd.keepalive, wd.keepalive_period_s) == (10, "heartbeat", 5)
    assert setup_writes(MENNEKES, 0) == []  # the EMS fallback 0x030E is read-only


def test_identify() -> None:
    assert identify_matches(MENNEKES, blocks_of(MENNEKES, CHARGING))
    assert identify_matches(MENNEKES, blocks_of(MENNEKES, CHARGING | {0x0000: 0x0100}))  # v01.00
    # A device that answers zeros everywhere: layout 0 is no Mennekes layout.
    assert not identify_matches(MENNEKES, blocks_of(MENNEKES, dict.fromkeys(range(0x1002), 0)))
    # A Phoenix EV-SER status word (0x4332, "C2") where the Mennekes state is: not this model.
    assert not identify_matches(MENNEKES, blocks_of(MENNEKES, CHARGING | {0x0100: 0x4332}))
    # A release register holding something other than 0/1.
    assert not identify_matches(MENNEKES, blocks_of(MENNEKES, CHARGING | {0x0D05: 0x55AA}))
