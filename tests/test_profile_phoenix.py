"""The shipped Phoenix Contact profiles: EM-CP-PP-ETH, EV-ETH, EV-SER and CHARX SEC.

Register facts: shared/reference/modbus-register-maps.md §3a-§3d (evcc charger/phoenix-em-eth.go,
phoenix-ev-eth.go, phoenix-ev-ser.go, phoenix-charx.go; Cargador_carro phoenixcontact.c for
EV-SER). The EM-CP-PP-ETH words are the ones evcc traces show the controller answering
(evcc #10248: power 022D 0000 = 5570 W, energy D702 0017 = 15623.7 kWh, status 0043 = C,
coil 400 = 1; evcc #20811: voltage 591C 0000 = 228.12 V). The other words are worked out by
hand from the reference's types, scales and word orders, never made by the profiles' encoders.
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
    offered_current,
    setup_writes,
)

EM = load_profile(builtin_profile_dir() / "phoenix-em-cp-pp-eth.yaml")
EV_ETH = load_profile(builtin_profile_dir() / "phoenix-ev-eth.yaml")
EV_SER = load_profile(builtin_profile_dir() / "phoenix-ev-ser.yaml")
CHARX = load_profile(builtin_profile_dir() / "phoenix-charx.yaml")
H, I, C = Table.HOLDING, Table.INPUT, Table.COIL
FILLER = 0x7FC0  # an odd, large integer: a value at a wrong address cannot pass for a right one


def blocks_of(profile: Profile, registers: dict[tuple[Table, int], int]) -> dict[ReadBlock, list[int]]:
    """One poll's blocks holding the given (table, address) words, FILLER elsewhere."""
    return {b: [registers.get((b.table, b.address + n), FILLER) for n in range(b.count)] for b in profile.blocks}


def at(table: Table, address: int, *words: int) -> dict[tuple[Table, int], int]:
    return {(table, address + n): w for n, w in enumerate(words)}


def raw(writes: list[RegisterWrite]) -> list[tuple[int, tuple[int, ...], bool, Table]]:
    return [(w.address, w.words, w.multiple, w.table) for w in writes]


def test_line_defaults() -> None:
    lines = {p.name: (p.line.framing, p.line.unit) for p in (EM, EV_ETH, EV_SER, CHARX)}
    assert lines == {
        "phoenix-em-cp-pp-eth": (Framing.TCP, 180),
        "phoenix-ev-eth": (Framing.TCP, 255),
        "phoenix-ev-ser": (Framing.RTU, 1),
        "phoenix-charx": (Framing.TCP, 255),  # UNCONFIRMED: 1 also possible
    }
    assert (EV_SER.line.baudrate, EV_SER.line.parity, EV_SER.line.stopbits, EV_SER.line.bytesize) == (19200, "N", 1, 8)
    assert "UNCONFIRMED" in CHARX.notes and "unit 1" in CHARX.notes
    assert "NOT supported" in EV_ETH.notes and "Wallbe" in EV_ETH.notes
    assert "NO METER" in EV_SER.notes and "meter of its own" in EV_SER.notes
    for p in (EM, EV_ETH, EV_SER, CHARX):
        assert (p.min_current_a, p.max_current_a, p.phases) == (6, 16, 3)
        assert p.watchdog is None and keepalive_writes(p, 16) == []


# --- EM-CP-PP-ETH -------------------------------------------------------------------------------

EM_CHARGING = (
    at(I, 100, 0x0043)  # 'C' (evcc #10248)
    | at(I, 108, 0x591C, 0, 0, 0, 0, 0)  # 228.12 V, 0, 0 (evcc #20811, one phase wired)
    | at(I, 114, 0x3E80, 0)  # 16000 mA = 16.0 A
    | at(I, 116, 0, 0)
    | at(I, 118, 0, 0)
    | at(I, 120, 0x022D, 0)  # 557 x 0.01 kW = 5570 W (evcc #10248)
    | at(I, 128, 0xD702, 0x0017)  # 0x0017D702 = 1562370 x 0.01 kWh (evcc #10248: 15623.7 kWh)
    | at(H, 300, 16)
    | at(C, 400, 1)
)


def test_em_eth_reading_from_the_evcc_traces() -> None:
    reading = decode_reading(EM, blocks_of(EM, EM_CHARGING))
    assert reading.state == PilotState(Pilot.C, None) and reading.vendor_state == 0x43
    assert reading.voltage_v == pytest.approx((228.12, 0.0, 0.0))
    assert reading.current_a == pytest.approx((16.0, 0.0, 0.0))
    assert reading.power_w == pytest.approx(5570)
    assert reading.energy_wh == pytest.approx(15_623_700)
    assert reading.applied_limit_a == 16 and reading.charging_enabled is True
    assert offered_current(EM, reading) == 16
    assert reading.extra == ()


def test_em_eth_signed_values_low_word_first() -> None:
    # -10 W (evcc #10927 "always shows -10 W"): int32 -1 = FFFF FFFF in 0.01 kW.
    reading = decode_reading(EM, blocks_of(EM, EM_CHARGING | at(I, 120, 0xFFFF, 0xFFFF)))
    assert reading.power_w == pytest.approx(-10)


@pytest.mark.parametrize(("word", "pilot"), [(0x41, Pilot.A), (0x42, Pilot.B), (0x44, Pilot.D), (0x45, Pilot.E), (0x46, Pilot.F)])
def test_em_eth_states(word: int, pilot: Pilot) -> None:
    assert decode_reading(EM, blocks_of(EM, EM_CHARGING | at(I, 100, word))).state == PilotState(pilot, None)


def test_em_eth_control_writes() -> None:
    assert raw(control_writes(EM, 10)) == [(300, (10,), False, H), (400, (1,), False, C)]
    assert raw(control_writes(EM, 0)) == [(400, (0,), False, C)]  # coil 400 off; 300 left alone
    assert setup_writes(EM, 0) == []
    reading = decode_reading(EM, blocks_of(EM, EM_CHARGING | at(C, 400, 0)))
    assert reading.charging_enabled is False and offered_current(EM, reading) == 0.0


def test_em_eth_identify() -> None:
    assert identify_matches(EM, blocks_of(EM, EM_CHARGING))
    # An EV-SER status word (letter in the HIGH byte, 0x4332 "C2") is not this controller's.
    assert not identify_matches(EM, blocks_of(EM, EM_CHARGING | at(I, 100, 0x4332)))
    # A Wallbe-firmware style limit in 0.1 A (160 = 16.0 A) does not fit whole amperes 0..80.
    assert not identify_matches(EM, blocks_of(EM, EM_CHARGING | at(H, 300, 160)))


# --- EV-ETH ---------------------------------------------------------------------------------------

EV_ETH_CHARGING = (
    at(I, 100, 0x0043)  # 'C'
    | at(I, 108, 230, 0, 231, 0, 229, 0)  # V, int32 low word first
    | at(I, 114, 16, 0, 16, 0, 15, 0)  # A
    | at(I, 120, 0x2B20, 0)  # 11040 W
    | at(H, 528, 16)  # Phoenix firmware: whole amperes
    | at(H, 606, 0x3034, 0x4135, 0x4233, 0x4339, *[0] * 12)  # "04A5B3C9", NUL padded
    | at(H, 904, 0xD687, 0x0012)  # 0x0012D687 = 1234567 Wh, low word first
    | at(C, 400, 1)
)


def test_ev_eth_reading() -> None:
    reading = decode_reading(EV_ETH, blocks_of(EV_ETH, EV_ETH_CHARGING))
    assert reading.state == PilotState(Pilot.C, None)
    assert reading.voltage_v == (230, 231, 229)
    assert reading.current_a == (16, 16, 15)
    assert reading.power_w == 11040
    assert reading.energy_wh == 1_234_567
    assert reading.id_tag == "04A5B3C9"
    assert reading.applied_limit_a == 16 and reading.charging_enabled is True
    assert decode_reading(EV_ETH, blocks_of(EV_ETH, EV_ETH_CHARGING | at(H, 606, *[0] * 16))).id_tag is None


def test_ev_eth_control_writes() -> None:
    assert raw(control_writes(EV_ETH, 10)) == [(528, (10,), False, H), (400, (1,), False, C)]
    assert raw(control_writes(EV_ETH, 0)) == [(400, (0,), False, C)]


def test_ev_eth_identify_refuses_the_wallbe_firmware() -> None:
    assert identify_matches(EV_ETH, blocks_of(EV_ETH, EV_ETH_CHARGING))
    # Wallbe firmware: 528 in 0.1 A, 160 = 16.0 A (evcc: >= 60 means Wallbe). Not supported.
    assert not identify_matches(EV_ETH, blocks_of(EV_ETH, EV_ETH_CHARGING | at(H, 528, 160)))
    assert not identify_matches(EV_ETH, blocks_of(EV_ETH, EV_ETH_CHARGING | at(H, 528, 60)))


# --- EV-SER ---------------------------------------------------------------------------------------

EV_SER_CHARGING = at(I, 24000, 0x4332) | at(H, 22000, 16) | at(H, 4000, 3) | at(C, 20000, 1)


@pytest.mark.parametrize(
    ("word", "state"),
    [
        (0x4131, PilotState(Pilot.A, False)),  # "A1" (Cargador)
        (0x4132, PilotState(Pilot.A, True)),
        (0x4231, PilotState(Pilot.B, False)),  # "B1"
        (0x4232, PilotState(Pilot.B, True)),  # "B2"
        (0x4331, PilotState(Pilot.C, False)),  # "C1"
        (0x4332, PilotState(Pilot.C, True)),  # "C2"
        (0x4431, PilotState(Pilot.D, False)),
        (0x4432, PilotState(Pilot.D, True)),
        (0x4520, PilotState(Pilot.E, None)),  # 'E' with any second character
        (0x4600, PilotState(Pilot.F, None)),
        (0x4633, PilotState(Pilot.F, None)),  # undocumented: not available, never a guessed vehicle state
        (0x0000, PilotState(Pilot.F, None)),
    ],
)
def test_ev_ser_status_word(word: int, state: PilotState) -> None:
    reading = decode_reading(EV_SER, blocks_of(EV_SER, EV_SER_CHARGING | at(I, 24000, word)))
    assert reading.state == state


def test_ev_ser_reading() -> None:
    reading = decode_reading(EV_SER, blocks_of(EV_SER, EV_SER_CHARGING))
    assert reading.state == PilotState(Pilot.C, True)
    assert reading.applied_limit_a == 16 and reading.charging_enabled is True
    assert (reading.energy_wh, reading.power_w, reading.current_a) == (None, None, (None, None, None))  # no meter
    assert dict(reading.extra) == {"state_letter": 0x43, "state_digit": 0x32, "enable_config": 3}


def test_ev_ser_writes() -> None:
    assert raw(setup_writes(EV_SER, 0)) == [(4000, (3,), False, H)]  # enable via Modbus coil 20000
    assert raw(control_writes(EV_SER, 10)) == [(22000, (10,), False, H), (20000, (1,), False, C)]
    assert raw(control_writes(EV_SER, 0)) == [(20000, (0,), False, C)]


def test_ev_ser_identify() -> None:
    assert identify_matches(EV_SER, blocks_of(EV_SER, EV_SER_CHARGING))
    # An EM-CP-PP-ETH style status (letter in the LOW byte, 0x0043) is not this controller's.
    assert not identify_matches(EV_SER, blocks_of(EV_SER, EV_SER_CHARGING | at(I, 24000, 0x0043)))
    assert not identify_matches(EV_SER, blocks_of(EV_SER, EV_SER_CHARGING | at(H, 4000, 7)))


# --- CHARX SEC ------------------------------------------------------------------------------------


def charx_image(outlet: int) -> dict[tuple[Table, int], int]:
    """Charge point `outlet` charging: its registers at outlet x 1000 + reg (evcc charxOffset)."""
    base = 1000 * outlet
    return (
        at(H, base + 232, 0x0003, 0x8270, 0x0003, 0x884C, 0x0003, 0x8270)  # 230000, 231500, 230000 mV
        | at(H, base + 238, 0, 0x3E80, 0, 0x3E80, 0, 0x3E1C)  # 16000, 16000, 15900 mA
        | at(H, base + 244, 0x00A8, 0x7500)  # 11040000 mW
        | at(H, base + 250, 0, 0, 0x0012, 0xD687)  # int64 1234567 Wh, high word first
        | at(H, base + 275, 0x3034, 0x4135, 0x4233, 0x4339, 0, 0, 0, 0, 0, 0)  # "04A5B3C9"
        | at(H, base + 299, 0x4332, 1, 16)  # 'C' in the high byte, released, 16 A
    )


def test_charx_reading() -> None:
    reading = decode_reading(CHARX, blocks_of(CHARX, charx_image(1)))
    assert reading.state == PilotState(Pilot.C, None) and reading.vendor_state == 0x43
    assert reading.voltage_v == pytest.approx((230.0, 231.5, 230.0))
    assert reading.current_a == pytest.approx((16.0, 16.0, 15.9))
    assert reading.power_w == pytest.approx(11040)
    assert reading.energy_wh == 1_234_567
    assert reading.id_tag == "04A5B3C9"
    assert reading.applied_limit_a == 16
    assert dict(reading.extra) == {"charging_release": 1}


def test_charx_second_charge_point_reads_its_own_registers() -> None:
    second = CHARX.for_outlet(2)
    image = charx_image(2) | charx_image(1) | at(H, 1299, 0x4132, 1, 32)  # charge point 1: A, 32 A
    reading = decode_reading(second, blocks_of(second, image))
    assert reading.state == PilotState(Pilot.C, None) and reading.applied_limit_a == 16
    assert decode_reading(CHARX, blocks_of(CHARX, image)).state == PilotState(Pilot.A, None)


def test_charx_pause_is_current_zero() -> None:
    assert raw(control_writes(CHARX, 10)) == [(1301, (10,), True, H)]
    assert raw(control_writes(CHARX, 0)) == [(1301, (0,), True, H)]
    assert raw(control_writes(CHARX.for_outlet(3), 0)) == [(3301, (0,), True, H)]
    reading = decode_reading(CHARX, blocks_of(CHARX, charx_image(1) | at(H, 1301, 0)))
    assert offered_current(CHARX, reading) == 0.0


def test_charx_identify() -> None:
    assert identify_matches(CHARX, blocks_of(CHARX, charx_image(1)))
    # An EV-ETH style status (letter in the LOW byte) where CHARX keeps it in the high byte.
    assert not identify_matches(CHARX, blocks_of(CHARX, charx_image(1) | at(H, 1299, 0x0043)))
    # A Wallbe-style 0.1 A limit (160) is outside the documented 6..80 A.
    assert not identify_matches(CHARX, blocks_of(CHARX, charx_image(1) | at(H, 1301, 160)))
