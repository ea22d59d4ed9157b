"""The shipped meter profiles: Eastron SDM630/SDM72D/SDM120, ABB B23/B24, Carlo Gavazzi EM340.

Register facts: shared/reference/modbus-register-maps.md §6a-§6e. Every decoding test
feeds literal register words, worked out by hand from the reference's types and
scales (IEEE-754 float32 high word first for Eastron; scaled integers high word
first for ABB; signed int32 LOW word first for the EM340), so that a wrong address,
type, scale or word order in a profile shows up here and cannot hide behind
encoding code that the simulator shares with the decoder.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import load_config_with_warnings
from gateway.devprofile import DataType, Framing, Profile, ReadBlock, Table, WordOrder
from gateway.errors import ConfigError
from gateway.profile_loader import MAX_READ_COUNT, available_profiles, builtin_profile_dir, load_profile
from gateway.reading import Reading
from gateway.registers import decode_reading

METERS = ("eastron-sdm630", "eastron-sdm72d", "eastron-sdm120", "abb-b23", "carlo-gavazzi-em340")
PROFILES = {name: load_profile(builtin_profile_dir() / f"{name}.yaml") for name in METERS}

# Most registers the device answers in one read. Eastron: "do not read more than 40
# parameters (80 registers) in one request" (reference §6a, lamaplc.com). ABB and Carlo
# Gavazzi state no limit in the reference: the Modbus limit of 125 (MBAP V1.1b3 §6.3, §6.4).
MAX_PER_READ = {
    "eastron-sdm630": 80,
    "eastron-sdm72d": 80,
    "eastron-sdm120": 80,
    "abb-b23": MAX_READ_COUNT,
    "carlo-gavazzi-em340": MAX_READ_COUNT,
}

# Registers a profile does not name read as this: as a float32 pair it is a NaN, as an
# integer a large odd number, so a value at a wrong address cannot pass for a right one.
FILLER = 0x7FC0


def blocks_of(profile: Profile, registers: Mapping[int, int]) -> dict[ReadBlock, list[int]]:
    """One poll's blocks holding the given registers (of the profile's one table), FILLER elsewhere."""
    return {b: [registers.get(b.address + n, FILLER) for n in range(b.count)] for b in profile.blocks}


def poll(name: str, words: Mapping[int, tuple[int, ...]]) -> Reading:
    """Decode one poll of profile `name` whose values start at the given addresses."""
    registers = {address + n: word for address, value in words.items() for n, word in enumerate(value)}
    return decode_reading(PROFILES[name], blocks_of(PROFILES[name], registers))


# --- every profile -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METERS)
def test_profile_loads_as_a_meter(name: str) -> None:
    assert available_profiles()[name] == builtin_profile_dir() / f"{name}.yaml"
    p = PROFILES[name]
    assert (p.name, p.kind, p.line.framing) == (name, "meter", Framing.RTU)
    assert p.current_limit is None and p.watchdog is None and p.init_writes == ()
    assert p.values["energy"].unit == "Wh" and p.values["power"].unit == "W"
    assert p.notes and p.description


@pytest.mark.parametrize("name", METERS)
def test_blocks_cover_every_value_and_respect_the_read_limit(name: str) -> None:
    p = PROFILES[name]
    for spec in p.values.values():
        covering = [b for b in p.blocks if b.covers(spec.table, spec.address, spec.words)]
        assert len(covering) == 1, spec.name
    for block in p.blocks:
        assert block.count <= MAX_PER_READ[name], block
        assert any(block.covers(s.table, s.address, s.words) for s in p.values.values()), f"{block} reads nothing used"


@pytest.mark.parametrize(
    ("name", "reads", "roles"),
    [
        ("eastron-sdm630", 1, {"energy", "power", "voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "current_l2", "current_l3"}),
        ("eastron-sdm72d", 2, {"energy", "power"}),  # v1: no voltages or currents (reference §6b)
        ("eastron-sdm120", 2, {"energy", "power", "voltage_l1", "current_l1"}),
        ("abb-b23", 2, {"energy", "power", "voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "current_l2", "current_l3"}),
        ("carlo-gavazzi-em340", 2, {"energy", "power", "voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "current_l2", "current_l3"}),
    ],
)
def test_values_and_reads(name: str, reads: int, roles: set[str]) -> None:
    p = PROFILES[name]
    assert set(p.values) == roles
    assert len(p.blocks) == reads


def test_line_defaults_and_phases() -> None:
    line = {name: (p.line.baudrate, p.line.parity, p.line.stopbits, p.line.bytesize) for name, p in PROFILES.items()}
    assert line["eastron-sdm630"] == line["eastron-sdm72d"] == (9600, "N", 1, 8)  # reference §6a: configure explicitly
    assert line["eastron-sdm120"] == (2400, "N", 1, 8)  # factory 2400 8N1 (reference §6c)
    # Serial defaults UNCONFIRMED (reference §6d, §6e): the profile claims none.
    assert line["abb-b23"] == line["carlo-gavazzi-em340"] == (None, None, None, None)
    assert "UNCONFIRMED" in PROFILES["abb-b23"].notes and "UNCONFIRMED" in PROFILES["carlo-gavazzi-em340"].notes
    assert "CONFLICT" in PROFILES["eastron-sdm630"].notes
    assert PROFILES["abb-b23"].inter_frame_delay_s == pytest.approx(0.1)  # openWB waits 100 ms
    assert PROFILES["eastron-sdm120"].phases == 1
    assert all(p.phases == 3 for name, p in PROFILES.items() if name != "eastron-sdm120")


def test_register_types_and_word_orders() -> None:
    for name in ("eastron-sdm630", "eastron-sdm72d", "eastron-sdm120"):
        for spec in PROFILES[name].values.values():
            assert (spec.table, spec.type, spec.word_order) == (Table.INPUT, DataType.F32, WordOrder.HIGH_FIRST)
    for spec in PROFILES["abb-b23"].values.values():
        assert spec.table is Table.HOLDING and spec.word_order is WordOrder.HIGH_FIRST
    for spec in PROFILES["carlo-gavazzi-em340"].values.values():
        assert (spec.table, spec.type, spec.word_order) == (Table.INPUT, DataType.I32, WordOrder.LOW_FIRST)


# --- the config loads them like any profile ---------------------------------------------------------

CONFIG = """\
charge_point: {identity: CP-1, vendor: V, model: M}
backend: {url: "wss://csms.example.net/ocpp"}
buses:
  - {name: line1, kind: rtu, port: /dev/ttyS1, baudrate: 9600, parity: N, poll_interval_s: 2}
  - {name: line2, kind: rtu, port: /dev/ttyS2, baudrate: 2400, parity: N, poll_interval_s: 2}
  - {name: line3, kind: rtu, port: /dev/ttyS3, baudrate: 19200, parity: E, poll_interval_s: 2}
connectors:
  - {id: 1, bus: line1, unit: 1, profile: eastron-sdm630}
  - {id: 2, bus: line1, unit: 2, profile: eastron-sdm72d}
  - {id: 3, bus: line2, unit: 1, profile: eastron-sdm120, phases: [2]}
  - {id: 4, bus: line3, unit: 1, profile: abb-b23}
  - {id: 5, bus: line3, unit: 2, profile: carlo-gavazzi-em340}
storage: {path: gateway.db}
"""


def test_a_meter_named_as_a_connector_is_a_config_fault(tmp_path: Path) -> None:
    """A meter reads no pilot state: it cannot drive a connector's sessions on its own."""
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    with pytest.raises(ConfigError) as error:
        load_config_with_warnings(path)
    faults = {(issue.path, issue.line) for issue in error.value.issues}
    assert faults == {(f"connectors[{i}].profile", 8 + i) for i in range(5)}, error.value.issues
    assert all("a connector needs a charger" in issue.message for issue in error.value.issues)


# --- Eastron: IEEE-754 float32, high word first ----------------------------------------------------
# Each pair is sign | exponent + 127 | 23-bit mantissa, split into two 16-bit words:
#   230.1 = 1.7977 x 2^7:  0 | 134 = 0x86 | 0x66199A -> 0x4366 0x199A (230.100006...)
#   231.4 = 1.8078 x 2^7:  0 | 0x86 | 0x676666       -> 0x4367 0x6666 (231.399993...)
#   229.8 = 1.7953 x 2^7:  0 | 0x86 | 0x65CCCD       -> 0x4365 0xCCCD (229.800003...)
#   16.0  = 1.0 x 2^4:     0 | 131 = 0x83 | 0        -> 0x4180 0x0000
#   16.05 = 1.0031 x 2^4:  0 | 0x83 | 0x006666       -> 0x4180 0x6666 (16.049999...)
#   15.9  = 1.9875 x 2^3:  0 | 130 = 0x82 | 0x7E6666 -> 0x417E 0x6666 (15.899999...)
#   11040.5 = 1.3477 x 2^13: 0 | 140 = 0x8C | 0x2C8200 -> 0x462C 0x8200 (exact)
#   1234.5 = 1.2056 x 2^10: 0 | 137 = 0x89 | 0x1A5000 -> 0x449A 0x5000 (exact)
V_230_1, V_231_4, V_229_8 = (0x4366, 0x199A), (0x4367, 0x6666), (0x4365, 0xCCCD)
A_16_0, A_16_05, A_15_9 = (0x4180, 0x0000), (0x4180, 0x6666), (0x417E, 0x6666)
W_11040_5 = (0x462C, 0x8200)
KWH_1234_5 = (0x449A, 0x5000)


def test_sdm630_reading() -> None:
    # doc 30001/3/5 voltages, 30007/9/11 currents, 30053 total power, 30073 import kWh.
    reading = poll(
        "eastron-sdm630",
        {0: V_230_1, 2: V_231_4, 4: V_229_8, 6: A_16_0, 8: A_16_05, 10: A_15_9, 52: W_11040_5, 72: KWH_1234_5},
    )
    assert reading.voltage_v == pytest.approx((230.1, 231.4, 229.8))
    assert reading.current_a == pytest.approx((16.0, 16.05, 15.9))
    assert reading.power_w == 11040.5
    assert reading.energy_wh == 1_234_500  # kWh x 1000
    assert reading.state is None and reading.id_tag is None and reading.extra == ()


def test_sdm72d_reading() -> None:
    # -850.0 = -1.6602 x 2^9: 1 | 136 = 0x88 | 0x548000 -> 0xC454 0x8000 (export shows as negative power).
    # 98765.43 = 1.5070 x 2^16: 0 | 143 = 0x8F | 0x40E6B7 -> 0x47C0 0xE6B7 = 98765.4296875 (float32 steps are 1/128 kWh here).
    reading = poll("eastron-sdm72d", {52: (0xC454, 0x8000), 72: (0x47C0, 0xE6B7)})
    assert reading.power_w == -850.0
    assert reading.energy_wh == pytest.approx(98_765_429.6875)
    assert reading.voltage_v == (None, None, None) and reading.current_a == (None, None, None)


def test_sdm120_reading() -> None:
    # 3680.0 = 1.7969 x 2^11: 0 | 138 = 0x8A | 0x660000 -> 0x4566 0x0000; 7.5 = 1.875 x 2^2: 0x40F0 0x0000.
    reading = poll("eastron-sdm120", {0: V_230_1, 6: A_16_0, 12: (0x4566, 0x0000), 72: (0x40F0, 0x0000)})
    assert reading.voltage_v == pytest.approx((230.1, None, None))
    assert reading.current_a == (16.0, None, None)
    assert reading.power_w == 3680.0
    assert reading.energy_wh == 7_500


# --- ABB B23/B24: holding registers, integers high word first -------------------------------------

ABB_CHARGING = {
    0x5000: (0x0000, 0x0000, 0x0012, 0xD687),  # uint64 1_234_567 x 0.01 kWh = 12_345.67 kWh
    0x5B00: (0x0000, 0x08FD),  # uint32 2301 x 0.1 V
    0x5B02: (0x0000, 0x0906),  # 2310
    0x5B04: (0x0000, 0x08F8),  # 2296
    0x5B0C: (0x0000, 0x0645),  # uint32 1605 x 0.01 A
    0x5B0E: (0x0000, 0x0640),  # 1600
    0x5B10: (0x0000, 0x063A),  # 1594
    0x5B14: (0x0010, 0xD8B2),  # int32 0x0010D8B2 = 1_104_050 x 0.01 W
}


def test_abb_reading() -> None:
    reading = poll("abb-b23", ABB_CHARGING)
    assert reading.energy_wh == pytest.approx(12_345_670)  # 0.01 kWh = 10 Wh
    assert reading.voltage_v == pytest.approx((230.1, 231.0, 229.6))
    assert reading.current_a == pytest.approx((16.05, 16.0, 15.94))
    assert reading.power_w == pytest.approx(11_040.5)
    assert reading.extra == ()


def test_abb_power_is_signed() -> None:
    # 0xFFFE1DC0 = -123_456 as int32: 1234.56 W exported.
    assert poll("abb-b23", ABB_CHARGING | {0x5B14: (0xFFFE, 0x1DC0)}).power_w == pytest.approx(-1234.56)


def test_abb_not_supported_patterns_read_as_no_value() -> None:
    # openWB b23.py: uint32 0xFFFFFFFF, int32 0x7FFFFFFF, uint64 all-F mean "not available".
    gone = {0x5000: (0xFFFF,) * 4, 0x5B02: (0xFFFF, 0xFFFF), 0x5B0E: (0xFFFF, 0xFFFF), 0x5B14: (0x7FFF, 0xFFFF)}
    reading = poll("abb-b23", ABB_CHARGING | gone)
    assert reading.energy_wh is None and reading.power_w is None
    assert reading.voltage_v == pytest.approx((230.1, None, 229.6))
    assert reading.current_a == pytest.approx((16.05, None, 15.94))


def test_abb_energy_is_the_whole_uint64() -> None:
    # Reference §6d: uint64 at 0x5000..0x5003, high word first; only all four words 0xFFFF is "not available".
    p = PROFILES["abb-b23"]
    assert (p.values["energy"].address, p.values["energy"].type) == (0x5000, DataType.U64)
    assert p.values["energy"].invalid == (0xFFFFFFFFFFFFFFFF,)
    # 0x0000_0001_0000_0000 = 2^32 x 0.01 kWh: past what the low half alone could count.
    assert poll("abb-b23", ABB_CHARGING | {0x5000: (0x0000, 0x0001, 0x0000, 0x0000)}).energy_wh == 42_949_672_960
    # Low half all 0xFFFF is a real count here (4_294_967_295 x 10 Wh), not the uint32 NaN.
    assert poll("abb-b23", ABB_CHARGING | {0x5000: (0x0000, 0x0000, 0xFFFF, 0xFFFF)}).energy_wh == 42_949_672_950


# --- Carlo Gavazzi EM340: signed int32, LOW word first ---------------------------------------------

EM340_CHARGING = {
    0x00: (0x08FD, 0x0000),  # 2301 x 0.1 V
    0x02: (0x0906, 0x0000),  # 2310
    0x04: (0x08F8, 0x0000),  # 2296
    0x0C: (0x3EFB, 0x0000),  # 16_123 x 0.001 A
    0x0E: (0x3E80, 0x0000),  # 16_000
    0x10: (0x1170, 0x0001),  # 0x0001_1170 = 70_000: the high word comes second
    0x28: (0xAF45, 0x0001),  # 0x0001_AF45 = 110_405 x 0.1 W
    0x34: (0x1206, 0x000F),  # 0x000F_1206 = 987_654 x 0.1 kWh
}


def test_em340_reading() -> None:
    reading = poll("carlo-gavazzi-em340", EM340_CHARGING)
    assert reading.voltage_v == pytest.approx((230.1, 231.0, 229.6))
    assert reading.current_a == pytest.approx((16.123, 16.0, 70.0))
    assert reading.power_w == pytest.approx(11_040.5)
    assert reading.energy_wh == pytest.approx(98_765_400)  # 0.1 kWh = 100 Wh
    assert reading.extra == ()


def test_em340_power_is_signed() -> None:
    # 0xFFFF_C568 = -15_000 as int32, low word 0xC568 first: 1500.0 W exported.
    assert poll("carlo-gavazzi-em340", EM340_CHARGING | {0x28: (0xC568, 0xFFFF)}).power_w == pytest.approx(-1500.0)


# --- energy, every representable raw value ------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(raw=st.integers(min_value=0, max_value=0x7FFFFFFF))
def test_em340_energy_any_raw(raw: int) -> None:
    words = (raw & 0xFFFF, raw >> 16)  # low word first, by hand
    assert poll("carlo-gavazzi-em340", EM340_CHARGING | {0x34: words}).energy_wh == pytest.approx(raw * 100)


@settings(max_examples=60, deadline=None)
@given(raw=st.integers(min_value=0, max_value=0xFFFFFFFFFFFFFFFE))
def test_abb_energy_any_raw(raw: int) -> None:
    words = (raw >> 48, (raw >> 32) & 0xFFFF, (raw >> 16) & 0xFFFF, raw & 0xFFFF)  # high word first, by hand
    assert poll("abb-b23", ABB_CHARGING | {0x5000: words}).energy_wh == pytest.approx(raw * 10)


@settings(max_examples=60, deadline=None)
@given(kwh=st.floats(min_value=0, max_value=1e7, allow_nan=False, width=32))
@pytest.mark.parametrize("name", ["eastron-sdm630", "eastron-sdm72d", "eastron-sdm120"])
def test_eastron_energy_any_float(name: str, kwh: float) -> None:
    bits = struct.unpack(">I", struct.pack(">f", kwh))[0]
    reading = poll(name, {72: (bits >> 16, bits & 0xFFFF)})
    assert reading.energy_wh == pytest.approx(kwh * 1000)
