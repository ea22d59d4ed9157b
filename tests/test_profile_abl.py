"""The shipped ABL eMH profile: literal Modbus ASCII replies from evcc traces, and the writes it makes.

Register facts: shared/reference/modbus-register-maps.md §2 (evcc charger/abl.go): Modbus
ASCII 38400 8E1 with ">" replies, every request sent twice; holding 0x2E low byte = state
code, high byte = 0x2E; 0x30..0x32 phase currents in 0.1 A with 0x03E8 = no measurement,
evcc phase order L1 = 0x32; 0x0012 & 0x0FFF = applied Icmax as PWM duty in 0.1 %;
0x0014 = Icmax to write (I / 0.06), 0x03E8 = charging not permitted. The words below are
cut by hand out of the traces, never made by the profile's own encoder.
"""

from __future__ import annotations

import pytest

from gateway.devprofile import Framing, Profile, ReadBlock, Table
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

ABL = load_profile(builtin_profile_dir() / "abl-emh.yaml")
H = Table.HOLDING


def ascii_reply_words(frame: str) -> list[int]:
    """The registers of an FC03 reply in Modbus ASCII as the controller sends it (">" start, LRC last).

    Parsed here by hand so the test does not lean on the gateway's framer: unit 1, FC03,
    byte count, data, and an LRC that makes all bytes sum to 0 (Modbus over serial line §2.5.2.2).
    """
    assert frame[0] == ">"
    data = bytes.fromhex(frame[1:])
    assert sum(data) & 0xFF == 0, "LRC"
    unit, function, count, payload = data[0], data[1], data[2], data[3:-1]
    assert (unit, function, count, len(payload)) == (1, 3, len(payload), count)
    return [int.from_bytes(payload[i : i + 2], "big") for i in range(0, count, 2)]


def blocks_of(profile: Profile, registers: dict[int, int]) -> dict[ReadBlock, list[int]]:
    return {b: [registers[b.address + n] for n in range(b.count)] for b in profile.blocks}


# evcc #32436: request ":0103002E0005C9", reply below; the same trace reads 0x0F..0x13 as 0F3F 0215 0215 03E8 0215.
IDLE_REPLY = ">01030A2EA1121503E803E803E83B"
CONFIG_BLOCK = dict(zip(range(0x0F, 0x14), (0x0F3F, 0x0215, 0x0215, 0x03E8, 0x0215), strict=True))
# evcc #526: ">01030A 2E B291 0B 03E8 03E8 03E8 B5": B2, current sensor without a measurement.
B2_REPLY = ">01030A2EB2910B03E803E803E8B5"


def poll(long_status: list[int], config: dict[int, int] = CONFIG_BLOCK) -> dict[ReadBlock, list[int]]:
    return blocks_of(ABL, config | dict(zip(range(0x2E, 0x33), long_status, strict=True)))


def test_profile_shape() -> None:
    p = ABL
    assert (p.name, p.kind, p.line.framing) == ("abl-emh", "charger", Framing.ASCII)
    assert (p.line.baudrate, p.line.parity, p.line.stopbits, p.line.bytesize, p.line.unit) == (38400, "E", 1, 8, 1)
    assert p.line.ascii_reply_start == ">"
    assert p.repeat == 2  # evcc get()/set(): every request twice, the second answer counts
    assert [(b.table, b.address, b.count) for b in p.blocks] == [(H, 0x0F, 5), (H, 0x2E, 5)]
    assert "energy" not in p.values and "power" not in p.values  # no meter in the controller
    assert p.watchdog is None and p.init_writes == ()
    assert (p.min_current_a, p.max_current_a, p.phases) == (6, 16, 3)
    for word in ("CONFLICT", "UNCONFIRMED", "NO ENERGY REGISTER", "meter of its own"):
        assert word in p.notes


def test_the_idle_reply_of_the_evcc_trace() -> None:
    words = ascii_reply_words(IDLE_REPLY)
    assert words == [0x2EA1, 0x1215, 0x03E8, 0x03E8, 0x03E8]
    reading = decode_reading(ABL, poll(words))
    assert reading.state == PilotState(Pilot.A, False)  # 0xA1: waiting for EV
    assert reading.vendor_state == 0xA1
    assert reading.current_a == (None, None, None)  # 0x03E8: no measurement
    assert reading.applied_limit_a == 0.0  # 0x0012 = 0x03E8: 100 % duty, no PWM (evcc: disabled)
    assert (reading.energy_wh, reading.power_w, reading.voltage_v) == (None, None, (None, None, None))
    assert reading.charging_enabled is None and reading.id_tag is None
    assert reading.extra == (("status_echo", 0x2E),)
    assert offered_current(ABL, reading) == 0.0


def test_the_b2_reply_of_the_evcc_trace() -> None:
    reading = decode_reading(ABL, poll(ascii_reply_words(B2_REPLY)))
    assert reading.state == PilotState(Pilot.B, True)  # 0xB2: EV has the permission to charge
    assert reading.current_a == (None, None, None)


def test_phase_currents_follow_evcc_phase_order() -> None:
    # 0x30 = 16.0 A, 0x31 = 15.9 A, 0x32 = 15.0 A; evcc: L1 = 0x32, L2 = 0x31, L3 = 0x30 (CONFLICT noted).
    reading = decode_reading(ABL, poll([0x2EC2, 0x1215, 0x00A0, 0x009F, 0x0096]))
    assert reading.state == PilotState(Pilot.C, True)
    assert reading.current_a == pytest.approx((15.0, 15.9, 16.0))
    assert decode_reading(ABL, poll([0x2EC2, 0x1215, 0x00A0, 0x0001, 0x0096])).current_a[1] is None  # 1 = none


def test_applied_limit_is_read_back_as_the_current_its_duty_offers() -> None:
    # 0x0012 = 0x0215 = 533: 53.3 % duty, 0.6 A per % (IEC 61851-1 Table A.8) = 31.98 A.
    reading = decode_reading(ABL, poll(ascii_reply_words(B2_REPLY), CONFIG_BLOCK | {0x12: 0x0215}))
    assert reading.applied_limit_a == pytest.approx(31.98)
    # The high bits of 0x0012 are not part of the duty (evcc: & 0x0FFF).
    reading = decode_reading(ABL, poll(ascii_reply_words(B2_REPLY), CONFIG_BLOCK | {0x12: 0xF0A6}))
    assert reading.applied_limit_a == pytest.approx(9.96)  # 0x0A6 = 166: 16.6 %


@pytest.mark.parametrize(
    ("code", "state"),
    [
        (0xA1, PilotState(Pilot.A, False)),
        (0xB1, PilotState(Pilot.B, False)),
        (0xB2, PilotState(Pilot.B, True)),
        (0xC2, PilotState(Pilot.C, True)),
        (0xC3, PilotState(Pilot.C, True)),  # C2 with reduced current: still charging
        (0xC4, PilotState(Pilot.C, True)),
        (0xE0, PilotState(Pilot.F, None)),  # outlet disabled
        (0xE2, PilotState(Pilot.F, None)),  # setup mode
        (0xF1, PilotState(Pilot.F, None)),  # welded contact
        (0xF7, PilotState(Pilot.F, None)),  # state D requested, refused
        (0xFB, PilotState(Pilot.F, None)),
    ],
)
def test_state_codes(code: int, state: PilotState) -> None:
    reading = decode_reading(ABL, poll([0x2E00 | code, 0x1215, 0x03E8, 0x03E8, 0x03E8]))
    assert (reading.state, reading.vendor_state) == (state, code)


@pytest.mark.parametrize("code", [0xE3, 0x00, 0xA2, 0xFC])  # bus idle (UNCONFIRMED meaning), undocumented
def test_codes_outside_the_table_are_read_errors(code: int) -> None:
    with pytest.raises(FrameError, match="unknown vendor state"):
        decode_reading(ABL, poll([0x2E00 | code, 0x1215, 0x03E8, 0x03E8, 0x03E8]))


def raw(writes: list[RegisterWrite]) -> list[tuple[int, tuple[int, ...], bool, Table]]:
    return [(w.address, w.words, w.multiple, w.table) for w in writes]


@pytest.mark.parametrize(
    ("amperes", "words"),
    [
        (10, (166,)),  # reference §2: 10 A -> 166
        (6, (100,)),  # 6 A -> 100
        (16, (266,)),  # 16 A -> 266 (26.67 % rounded down: never more than told)
        (32, (266,)),  # capped at max_current_a 16 A
        (0, (0x03E8,)),  # pause: 100 % duty = no PWM
        (5.9, (0x03E8,)),  # below 6 A no duty cycle offers current: pause
    ],
)
def test_control_writes(amperes: float, words: tuple[int, ...]) -> None:
    # 0x0014 with FC16, quantity 1, as evcc set(); the line sends it twice (repeat).
    assert raw(control_writes(ABL, amperes)) == [(0x0014, words, True, H)]


def test_no_keepalive_and_no_setup_writes() -> None:
    assert keepalive_writes(ABL, 16) == []  # no master watchdog documented (UNCONFIRMED)
    assert setup_writes(ABL, 0) == []


def test_identify_tells_the_abl_long_status_from_other_answers() -> None:
    assert identify_matches(ABL, poll(ascii_reply_words(IDLE_REPLY)))
    assert identify_matches(ABL, poll(ascii_reply_words(B2_REPLY)))
    # A device that holds 0x00A1 at 0x2E: a valid-looking state byte but no 0x2E echo.
    assert not identify_matches(ABL, poll([0x00A1, 0x1215, 0x03E8, 0x03E8, 0x03E8]))
    # A device that answers zeros everywhere (common for unmapped registers).
    assert not identify_matches(ABL, blocks_of(ABL, dict.fromkeys(range(0x0F, 0x33), 0)))
