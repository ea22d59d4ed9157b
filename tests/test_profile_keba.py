"""The shipped KEBA KeContact P30 profile: literal register words from the reference, decoded and written.

Register facts: shared/reference/modbus-register-maps.md §5f (evcc charger/keba-modbus.go): unit
255; every read is FC03 of one uint32 (2 registers, high word first): charging state 1000
(0 start-up, 1 not ready, 2 ready, 3 charging, 4 error, 5 interrupted), cable state 1004
(bit 2 = EV connected: 5, 7), currents 1008/1010/1012 in mA, product type 1016 (6 digits
starting with 3 = P30), power 1020 in mW, energy 1036 in 0.1 Wh, voltages 1040/1042/1044 in V,
max charging current 1100 in mA. Writes are FC06 of one uint16: current 5004 (mA), enable 5014
(1/0), failsafe timeout 5018 (s), re-written every timeout / 2 as the heartbeat.
"""

from __future__ import annotations

import pytest

from gateway.devprofile import DataType, Framing, Profile, ReadBlock, Table
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

KEBA = load_profile(builtin_profile_dir() / "keba-p30.yaml")
H = Table.HOLDING

# A 3-phase session at 16 A; each uint32 as (high word, low word).
CHARGING = {
    1000: (0x0000, 0x0003),  # charging
    1004: (0x0000, 0x0007),  # cable at the box and the EV, locked
    1006: (0x0000, 0x0000),  # no error
    1008: (0x0000, 0x3E80),  # 16000 mA
    1010: (0x0000, 0x3E80),  # 16000 mA
    1012: (0x0000, 0x3E1C),  # 15900 mA
    1016: (0x0004, 0x944F),  # 300111: a P30 (6 digits, first 3) with meter and RFID by evcc's digits 5 and 6
    1020: (0x00A8, 0x7500),  # 11_040_000 mW
    1036: (0x00BC, 0x614E),  # 12_345_678 x 0.1 Wh
    1040: (0x0000, 0x00E6),  # 230 V
    1042: (0x0000, 0x00E7),  # 231 V
    1044: (0x0000, 0x00E5),  # 229 V
    1100: (0x0000, 0x3E80),  # 16000 mA
}


def blocks_of(profile: Profile, values: dict[int, tuple[int, int]]) -> dict[ReadBlock, list[int]]:
    """One poll's blocks: each block is one 2-register read, given by its address."""
    return {b: list(values.get(b.address, (0, 0))) for b in profile.blocks}


def raw(writes: list[RegisterWrite]) -> list[tuple[Table, int, tuple[int, ...], bool]]:
    return [(w.table, w.address, w.words, w.multiple) for w in writes]


def test_profile_shape() -> None:
    p = KEBA
    assert (p.name, p.kind, p.line.framing, p.line.unit) == ("keba-p30", "charger", Framing.TCP, 255)
    # evcc: "does not support reading across register boundaries": one uint32 per read, FC03.
    assert all((b.table, b.count) == (H, 2) for b in p.blocks)
    assert all(s.type is DataType.U32 for s in p.values.values())
    assert {s.address for s in p.values.values()} == {b.address for b in p.blocks}
    assert "id_tag" not in p.values and "charging_enabled" not in p.values  # RFID is hex; 5014 is write-only
    assert (p.min_current_a, p.max_current_a, p.phases) == (6, 32, 3)
    assert "UNCONFIRMED" in p.notes and "P40" in p.notes


def test_reading_from_literal_registers() -> None:
    reading = decode_reading(KEBA, blocks_of(KEBA, CHARGING))
    assert reading.state == PilotState(Pilot.C, True)
    assert reading.current_a == pytest.approx((16.0, 16.0, 15.9))  # mA
    assert reading.voltage_v == (230, 231, 229)
    assert reading.power_w == pytest.approx(11_040.0)  # mW
    assert reading.energy_wh == pytest.approx(1_234_567.8)  # 0.1 Wh
    assert reading.applied_limit_a == pytest.approx(16.0)
    assert reading.charging_enabled is None and reading.id_tag is None
    assert dict(reading.extra) == {"charging_state": 3, "ev_connected": 1, "error_code": 0, "product_type": 300111}


@pytest.mark.parametrize(
    ("charging", "cable", "state"),
    [
        (3, 7, PilotState(Pilot.C, True)),
        (3, 5, PilotState(Pilot.C, True)),
        (3, 0, PilotState(Pilot.C, True)),   # charging wins over a cable bit that says otherwise
        (4, 7, PilotState(Pilot.E, None)),   # error
        (4, 0, PilotState(Pilot.E, None)),   # an error box is faulted with or without an EV
        (2, 5, PilotState(Pilot.B, True)),   # ready, waits for the EV: the box offers current
        (1, 7, PilotState(Pilot.B, False)),  # not ready (authorization)
        (5, 7, PilotState(Pilot.B, False)),  # interrupted (heat, or disabled by 5014 = 0): SuspendedEVSE
        (0, 5, PilotState(Pilot.B, None)),   # start-up with an EV: no digit
        (1, 0, PilotState(Pilot.A, None)),   # no cable
        (1, 1, PilotState(Pilot.A, None)),   # cable at the box only
        (2, 3, PilotState(Pilot.A, None)),   # cable at the box, locked, no EV
        (5, 1, PilotState(Pilot.A, None)),
    ],
)
def test_state_rules(charging: int, cable: int, state: PilotState) -> None:
    image = CHARGING | {1000: (0x0000, charging), 1004: (0x0000, cable)}
    assert decode_reading(KEBA, blocks_of(KEBA, image)).state == state


def test_control_writes_enable_after_the_current() -> None:
    # 5004 in mA (evcc uint16(current * 1000)), then 5014 = 1; pausing is 5014 = 0 alone (P30).
    assert raw(control_writes(KEBA, 10)) == [(H, 5004, (0x2710,), False), (H, 5014, (0x0001,), False)]
    assert raw(control_writes(KEBA, 32)) == [(H, 5004, (0x7D00,), False), (H, 5014, (0x0001,), False)]
    assert raw(control_writes(KEBA, 0)) == [(H, 5014, (0x0000,), False)]
    assert raw(control_writes(KEBA, 5.9)) == [(H, 5014, (0x0000,), False)]


def test_failsafe_timeout_is_the_heartbeat() -> None:
    watchdog = KEBA.watchdog
    assert watchdog is not None
    assert (watchdog.timeout_s, watchdog.keepalive, watchdog.keepalive_period_s) == (60, "timeout_register", 30)
    assert raw(keepalive_writes(KEBA, 16)) == [(H, 5018, (0x003C,), False)]  # 60 s, FC06 uint16
    assert raw(setup_writes(KEBA, 6)) == [(H, 5018, (0x003C,), False)]  # the failsafe current is not written


def test_offered_current_is_unknown_without_an_enable_read_back() -> None:
    # 5014 cannot be read: the applied limit alone does not say whether the box may charge.
    assert offered_current(KEBA, decode_reading(KEBA, blocks_of(KEBA, CHARGING))) is None


def test_identify() -> None:
    assert identify_matches(KEBA, blocks_of(KEBA, CHARGING))
    p40 = CHARGING | {1016: (0x003E, 0x900F)}  # 4100111: 7 digits starting with 4, a P40
    assert not identify_matches(KEBA, blocks_of(KEBA, p40))
    zeros = CHARGING | {1016: (0x0000, 0x0000)}  # a device with nothing there
    assert not identify_matches(KEBA, blocks_of(KEBA, zeros))
