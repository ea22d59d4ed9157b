"""The shipped Vestel EVC04 / Webasto Unite profile: literal register words from the reference, decoded and written.

Register facts: shared/reference/modbus-register-maps.md §5d (evcc charger/vestel.go): unit 255,
big-endian; input registers: serial 100 (25 registers of UTF-16, one character each), charging
status 1001 (1 = charging), cable status 1004 (>= 2 = vehicle connected; 0..3 documented),
currents 1008/1010/1012 in mA and voltages 1014/1016/1018 in V (one register each, not
contiguous), power 1020-1021 (uint32 W), energy 1036-1037 (uint32, 0.1 kWh), RFID 1516
(15 registers of UTF-16); holding registers: failsafe timeout 2002 (s), charging current 5004
(A, FC06, 0 = pause), alive register 6000 (write 1).
"""

from __future__ import annotations

import pytest

from gateway.devprofile import Framing, Profile, ReadBlock, Table
from gateway.profile_loader import builtin_profile_dir, load_profile
from gateway.reading import Pilot, PilotState
from gateway.registers import (
    RegisterWrite,
    control_writes,
    decode_reading,
    identify_matches,
    keepalive_writes,
    setup_writes,
)

VESTEL = load_profile(builtin_profile_dir() / "vestel-evc04.yaml")
I, H = Table.INPUT, Table.HOLDING

# A 3-phase session at 16 A with a card presented.
CHARGING = {
    # serial "2204510123" in UTF-16: one character per register, high byte 0, then NUL
    (I, 100): 0x0032, (I, 101): 0x0032, (I, 102): 0x0030, (I, 103): 0x0034, (I, 104): 0x0035,
    (I, 105): 0x0031, (I, 106): 0x0030, (I, 107): 0x0031, (I, 108): 0x0032, (I, 109): 0x0033,
    (I, 1001): 0x0001,                      # charging
    (I, 1004): 0x0003,                      # vehicle connected, cable locked
    (I, 1008): 0x3E80,                      # 16000 mA
    (I, 1010): 0x3E80,                      # 16000 mA
    (I, 1012): 0x3E1C,                      # 15900 mA
    (I, 1014): 0x00E6,                      # 230 V
    (I, 1016): 0x00E7,                      # 231 V
    (I, 1018): 0x00E5,                      # 229 V
    (I, 1020): 0x0000, (I, 1021): 0x2B20,   # 11040 W
    (I, 1036): 0x0000, (I, 1037): 0x3039,   # 12345 x 0.1 kWh
    # RFID "04A5B3C9" in UTF-16, then NUL
    (I, 1516): 0x0030, (I, 1517): 0x0034, (I, 1518): 0x0041, (I, 1519): 0x0035,
    (I, 1520): 0x0042, (I, 1521): 0x0033, (I, 1522): 0x0043, (I, 1523): 0x0039,
    (H, 2002): 0x0000,                      # failsafe timeout: 0, evcc assumes 20 s
    (H, 5004): 0x0010,                      # 16 A
}  # fmt: skip


def blocks_of(profile: Profile, registers: dict[tuple[Table, int], int]) -> dict[ReadBlock, list[int]]:
    """One poll's blocks holding the given (table, address) registers, 0 elsewhere."""
    return {b: [registers.get((b.table, b.address + n), 0) for n in range(b.count)] for b in profile.blocks}


def raw(writes: list[RegisterWrite]) -> list[tuple[Table, int, tuple[int, ...], bool]]:
    return [(w.table, w.address, w.words, w.multiple) for w in writes]


def test_profile_shape() -> None:
    p = VESTEL
    assert (p.name, p.kind, p.line.framing, p.line.unit) == ("vestel-evc04", "charger", Framing.TCP, 255)
    # OpenEMS: no read across the gaps; every documented register is a read of its own.
    for address in (1008, 1010, 1012, 1014, 1016, 1018):
        assert ReadBlock(I, address, 1) in p.blocks
    assert "state" not in p.values and len(p.state_rules) == 4
    assert (p.min_current_a, p.max_current_a, p.phases, p.pause_current_a) == (6, 32, 3, 0)
    assert "UNCONFIRMED" in p.notes and "{2, 3}" in p.notes


def test_reading_from_literal_registers() -> None:
    reading = decode_reading(VESTEL, blocks_of(VESTEL, CHARGING))
    assert reading.state == PilotState(Pilot.C, None)  # the box gives no x1/x2 digit
    assert reading.vendor_state == "charging_status=1 cable_status=3"
    assert reading.current_a == pytest.approx((16.0, 16.0, 15.9))
    assert reading.voltage_v == (230, 231, 229)
    assert reading.power_w == 11040
    assert reading.energy_wh == 1_234_500  # 0.1 kWh = 100 Wh
    assert reading.id_tag == "04A5B3C9"
    assert reading.applied_limit_a == 16
    assert dict(reading.extra) == {"serial": "2204510123", "charging_status": 1, "cable_status": 3, "failsafe_timeout": 0}


@pytest.mark.parametrize(
    ("charging", "cable", "pilot"),
    [
        (1, 3, Pilot.C),
        (1, 2, Pilot.C),
        (0, 2, Pilot.B),
        (0, 3, Pilot.B),
        (0, 0, Pilot.A),
        (0, 1, Pilot.A),  # cable at the box only
        (1, 1, Pilot.A),  # evcc: no vehicle is A, whatever the charging status says
        (1, 0, Pilot.A),
        (2, 2, Pilot.B),  # a charging status other than 1 with a vehicle: B, as in evcc
        (0, 4, Pilot.E),  # undocumented cable status: a fault, never an unplug
        (1, 0xFFFF, Pilot.E),
    ],
)
def test_state_from_two_registers(charging: int, cable: int, pilot: Pilot) -> None:
    image = CHARGING | {(I, 1001): charging, (I, 1004): cable}
    assert decode_reading(VESTEL, blocks_of(VESTEL, image)).state == PilotState(pilot, None)


def test_no_card_reads_no_tag() -> None:
    image = CHARGING | {(I, a): 0 for a in range(1516, 1531)}
    assert decode_reading(VESTEL, blocks_of(VESTEL, image)).id_tag is None


def test_control_writes() -> None:
    # Holding 5004, whole amperes, FC06 (evcc WriteSingleRegister); 0 pauses.
    assert raw(control_writes(VESTEL, 10)) == [(H, 5004, (0x000A,), False)]
    assert raw(control_writes(VESTEL, 0)) == [(H, 5004, (0x0000,), False)]
    assert raw(control_writes(VESTEL, 5.5)) == [(H, 5004, (0x0000,), False)]  # below 6 A: pause
    assert raw(control_writes(VESTEL, 40)) == [(H, 5004, (0x0020,), False)]  # capped at 32 A


def test_heartbeat() -> None:
    watchdog = VESTEL.watchdog
    assert watchdog is not None
    # evcc: 2002 = 0 means 20 s; the alive register 6000 = 1 every timeout / 4.
    assert (watchdog.timeout_s, watchdog.keepalive, watchdog.keepalive_period_s) == (20, "heartbeat", 5)
    assert raw(keepalive_writes(VESTEL, 16)) == [(H, 6000, (0x0001,), False)]
    # 2000/2002 are not known to be writable on every firmware: nothing is written at setup.
    assert setup_writes(VESTEL, 6) == []


def test_identify() -> None:
    assert identify_matches(VESTEL, blocks_of(VESTEL, CHARGING))
    # ASCII packed two characters per register (as Alfen or Bender keep their text) is not UTF-16.
    packed = CHARGING | {(I, 100): 0x3232, (I, 101): 0x3034, (I, 102): 0x3531}
    assert not identify_matches(VESTEL, blocks_of(VESTEL, packed))
    # A device that answers zeros everywhere has no serial.
    assert not identify_matches(VESTEL, {b: [0] * b.count for b in VESTEL.blocks})
