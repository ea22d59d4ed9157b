"""The shipped Alfen Eve profile: literal register words from the reference, decoded and written.

Register facts: shared/reference/modbus-register-maps.md §5c (Alfen "Modbus Slave TCP/IP for
Alfen NG9xx platform" v2.3, evcc charger/alfen.go): all holding registers (FC03), big-endian,
float32/float64 high word first; socket on unit 1 (or 2): voltages 306, currents 320, power sum
344, energy delivered sum 374 (float64 Wh), Mode 3 state 1201-1205 as text, applied max current
1206, remaining validity 1208 (uint32 s), setpoint 1210 (float32 A, FC16, 0 pauses); station on
unit 200: manufacturer 117-121 ("Alfen NV"), active max current 1100, temperature 1102, OCPP
state 1104, number of sockets 1105. The float words are worked out by hand
(sign | exponent + 127 | mantissa), never by the encoder under test.
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
    setup_writes,
)

ALFEN = load_profile(builtin_profile_dir() / "alfen-eve.yaml")
STATION = 200

# float32, high word first:
#   230.0 = 1.796875 x 2^7:   0 | 134 = 0x86 | 0x660000 -> 0x4366 0x0000
#   231.0 = 1.8046875 x 2^7:  0 | 0x86 | 0x670000     -> 0x4367 0x0000
#   229.0 = 1.7890625 x 2^7:  0 | 0x86 | 0x650000     -> 0x4365 0x0000
#   16.0  = 1.0 x 2^4:        0 | 131 = 0x83 | 0      -> 0x4180 0x0000
#   15.5  = 1.9375 x 2^3:     0 | 130 = 0x82 | 0x780000 -> 0x4178 0x0000
#   11040.0 = 1.34765625 x 2^13: 0 | 140 = 0x8C | 0x2C8000 -> 0x462C 0x8000
#   6.0   = 1.5 x 2^2:        0 | 129 = 0x81 | 0x400000 -> 0x40C0 0x0000
#   32.0  = 1.0 x 2^5:        0 | 132 = 0x84 | 0      -> 0x4200 0x0000
#   41.5  = 1.296875 x 2^5:   0 | 0x84 | 0x260000     -> 0x4226 0x0000
#   10.0  = 1.25 x 2^3:       0 | 0x82 | 0x200000     -> 0x4120 0x0000
# float64 1_234_567.5 = 1.1773... x 2^20: 0 | 1043 = 0x413 | 0x2D6878 << 28 -> 0x4132 0xD687 0x8000 0x0000
SOCKET_CHARGING = {
    306: 0x4366, 307: 0x0000, 308: 0x4367, 309: 0x0000, 310: 0x4365, 311: 0x0000,  # 230 / 231 / 229 V
    320: 0x4180, 321: 0x0000, 322: 0x4180, 323: 0x0000, 324: 0x4178, 325: 0x0000,  # 16 / 16 / 15.5 A
    344: 0x462C, 345: 0x8000,                                                      # 11040 W
    374: 0x4132, 375: 0xD687, 376: 0x8000, 377: 0x0000,                            # 1_234_567.5 Wh
    1200: 0x0001,                                                                  # operative
    1201: 0x4332, 1202: 0x0000, 1203: 0x0000, 1204: 0x0000, 1205: 0x0000,          # "C2"
    1206: 0x4180, 1207: 0x0000,                                                    # applied 16 A
    1208: 0x0000, 1209: 0x002A,                                                    # 42 s of validity left
    1210: 0x4180, 1211: 0x0000,                                                    # setpoint 16 A
    1212: 0x40C0, 1213: 0x0000,                                                    # safe current 6 A
    1214: 0x0001,                                                                  # setpoint in force
    1215: 0x0003,                                                                  # 3 phases
}  # fmt: skip
STATION_IMAGE = {
    117: 0x416C, 118: 0x6665, 119: 0x6E20, 120: 0x4E56, 121: 0x0000,  # "Alfen NV", NUL-terminated
    1100: 0x4200, 1101: 0x0000,                                        # station max 32 A
    1102: 0x4226, 1103: 0x0000,                                        # 41.5 °C
    1104: 0x0001,                                                      # OCPP state
    1105: 0x0001,                                                      # one socket
}  # fmt: skip


def blocks_of(profile: Profile, socket: dict[int, int], station: dict[int, int]) -> dict[ReadBlock, list[int]]:
    """One poll's blocks: the socket's registers, and the station's for blocks read from unit 200.

    Registers not given read 0xFFFF, the NaN the doc says reserved registers answer with.
    """
    def image(block: ReadBlock) -> dict[int, int]:
        return station if block.unit == STATION else socket

    return {b: [image(b).get(b.address + n, 0xFFFF) for n in range(b.count)] for b in profile.blocks}


def raw(writes: list[RegisterWrite]) -> list[tuple[Table, int, tuple[int, ...], bool]]:
    return [(w.table, w.address, w.words, w.multiple) for w in writes]


def test_profile_shape() -> None:
    p = ALFEN
    assert (p.name, p.kind, p.line.framing, p.line.unit) == ("alfen-eve", "charger", Framing.TCP, 1)
    # Doc §1.1: reads are FC03 only.
    assert all(b.table is Table.HOLDING for b in p.blocks)
    # The station answers on unit 200; the socket's blocks follow the connector's unit (1 or 2).
    assert {(b.address, b.count, b.unit) for b in p.blocks} == {
        (306, 72, None), (1200, 16, None), (117, 5, STATION), (1100, 6, STATION)
    }
    assert p.values["energy"].type is DataType.F64 and p.values["state"].type is DataType.STRING
    assert (p.min_current_a, p.max_current_a, p.phases, p.pause_current_a) == (6, 32, 3, 0)
    assert "Active Load Balancing" in p.notes and "Energy Management System" in p.notes
    assert "safe current" in p.notes and "UNCONFIRMED" in p.notes


def test_sockets_are_units_not_an_address_stride() -> None:
    # Socket 2 is unit 2 at the same addresses: one profile per socket, the connector's unit picks it.
    assert ALFEN.outlet_stride == 0 and ALFEN.for_outlet(1) is ALFEN
    with pytest.raises(ValueError):
        ALFEN.for_outlet(2)


def test_reading_from_literal_registers() -> None:
    reading = decode_reading(ALFEN, blocks_of(ALFEN, SOCKET_CHARGING, STATION_IMAGE))
    assert reading.state == PilotState(Pilot.C, True)
    assert reading.vendor_state == "C2"
    assert reading.voltage_v == (230.0, 231.0, 229.0)
    assert reading.current_a == (16.0, 16.0, 15.5)
    assert reading.power_w == 11040.0
    assert reading.energy_wh == 1_234_567.5
    assert reading.applied_limit_a == 16.0
    assert reading.charging_enabled is None and reading.id_tag is None
    assert dict(reading.extra) == {
        "availability": 1,
        "setpoint_validity": 42,
        "setpoint": 16.0,
        "safe_current": 6.0,
        "setpoint_accounted": 1,
        "phases_in_use": 3,
        "manufacturer": "Alfen NV",
        "station_max_current": 32.0,
        "station_temperature": 41.5,
        "station_ocpp_state": 1,
        "station_sockets": 1,
    }


# Mode 3 states as the station writes them: ASCII, high byte first, then NUL (doc §1.2, §3.4.1).
@pytest.mark.parametrize(
    ("words", "state"),
    [
        ((0x4100, 0, 0, 0, 0), PilotState(Pilot.A, None)),   # "A"
        ((0x4231, 0, 0, 0, 0), PilotState(Pilot.B, False)),  # "B1"
        ((0x4232, 0, 0, 0, 0), PilotState(Pilot.B, True)),   # "B2"
        ((0x4331, 0, 0, 0, 0), PilotState(Pilot.C, False)),  # "C1"
        ((0x4332, 0, 0, 0, 0), PilotState(Pilot.C, True)),   # "C2"
        ((0x4431, 0, 0, 0, 0), PilotState(Pilot.D, False)),  # "D1"
        ((0x4432, 0, 0, 0, 0), PilotState(Pilot.D, True)),   # "D2"
        ((0x4500, 0, 0, 0, 0), PilotState(Pilot.E, None)),   # "E"
        ((0x4600, 0, 0, 0, 0), PilotState(Pilot.F, None)),   # "F"
    ],
)
def test_mode3_states(words: tuple[int, ...], state: PilotState) -> None:
    image = SOCKET_CHARGING | dict(zip(range(1201, 1206), words, strict=True))
    assert decode_reading(ALFEN, blocks_of(ALFEN, image, STATION_IMAGE)).state == state


@pytest.mark.parametrize("words", [(0x4233, 0, 0, 0, 0), (0xFFFF,) * 5])  # "B3"; all NaN (no text)
def test_other_state_text_is_a_read_error(words: tuple[int, ...]) -> None:
    image = SOCKET_CHARGING | dict(zip(range(1201, 1206), words, strict=True))
    with pytest.raises(FrameError):
        decode_reading(ALFEN, blocks_of(ALFEN, image, STATION_IMAGE))


def test_control_writes_are_one_fc16_float() -> None:
    # Doc §1.3: a float32 is written with both registers in one request; evcc writes 1210 with FC16.
    assert raw(control_writes(ALFEN, 10)) == [(Table.HOLDING, 1210, (0x4120, 0x0000), True)]
    assert raw(control_writes(ALFEN, 0)) == [(Table.HOLDING, 1210, (0x0000, 0x0000), True)]  # 0 pauses (evcc)
    assert raw(control_writes(ALFEN, 5)) == [(Table.HOLDING, 1210, (0x0000, 0x0000), True)]  # below 6 A: pause
    assert raw(control_writes(ALFEN, 40)) == [(Table.HOLDING, 1210, (0x4200, 0x0000), True)]  # capped at 32 A


def test_keepalive_rewrites_the_setpoint_before_it_expires() -> None:
    watchdog = ALFEN.watchdog
    assert watchdog is not None
    # Validity time: factory 60 s (doc §1.1); evcc re-writes every 25 s.
    assert (watchdog.timeout_s, watchdog.keepalive, watchdog.keepalive_period_s) == (60, "current_limit", 25)
    assert raw(keepalive_writes(ALFEN, 10)) == [(Table.HOLDING, 1210, (0x4120, 0x0000), True)]
    assert raw(keepalive_writes(ALFEN, 0)) == [(Table.HOLDING, 1210, (0x0000, 0x0000), True)]
    # Validity time and safe current are set in the ACE Service Installer only: nothing to write at setup.
    assert setup_writes(ALFEN, 6) == []


def test_identify() -> None:
    assert identify_matches(ALFEN, blocks_of(ALFEN, SOCKET_CHARGING, STATION_IMAGE))
    double = STATION_IMAGE | {1105: 0x0002}
    assert identify_matches(ALFEN, blocks_of(ALFEN, SOCKET_CHARGING, double))
    # A Bender controller answers any unit id (1..255) with its own map: zeros where Alfen keeps its
    # manufacturer is no text, so no match.
    other = STATION_IMAGE | dict.fromkeys(range(117, 122), 0x0000)
    assert not identify_matches(ALFEN, blocks_of(ALFEN, SOCKET_CHARGING, other))
    # Another maker's name in the same place ("ABB", ASCII) is no match either.
    abb = STATION_IMAGE | {117: 0x4142, 118: 0x4200, 119: 0, 120: 0, 121: 0}
    assert not identify_matches(ALFEN, blocks_of(ALFEN, SOCKET_CHARGING, abb))
    # Nor a socket count no Eve has.
    assert not identify_matches(ALFEN, blocks_of(ALFEN, SOCKET_CHARGING, STATION_IMAGE | {1105: 0x0000}))
