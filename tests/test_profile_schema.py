"""Profile schema v2, pure: PWM duty, bit fields, 64-bit and UTF-16 values, state rules, pause and enable,
keepalives, outlets and identify checks; and the faults the loader reports for each."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.devprofile import (
    Conversion,
    DataType,
    EnableSpec,
    IdentifyCheck,
    InitWrite,
    ReadBlock,
    StateRule,
    Table,
    TextEncoding,
    ValueSpec,
    Watchdog,
    WriteSpec,
)
from gateway.errors import ConfigError, FrameError
from gateway.profile_loader import load_profile
from gateway.pwm import amps_to_duty, duty_to_amps
from gateway.reading import Pilot
from gateway.registers import (
    RegisterWrite,
    control_writes,
    decode_reading,
    decode_string,
    decode_value,
    encode_string,
    encode_value,
    field_range,
    identify_matches,
    insert_field,
    keepalive_writes,
    offered_current,
)
from tests.test_profiles import faults, write

# --- PWM duty (IEC 61851-1 Table A.8) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("amperes", "duty"), [(6, 10.0), (10, 16.666), (16, 26.666), (32, 53.333), (51, 85.0), (63, 89.2), (80, 96.0)]
)
def test_duty_cycle_of_a_current(amperes: float, duty: float) -> None:
    assert amps_to_duty(amperes) == pytest.approx(duty, abs=1e-3)


@pytest.mark.parametrize(("duty", "amperes"), [(5, 0), (7.9, 0), (8, 6), (9.9, 6), (10, 6), (50, 30), (90, 65), (97, 80), (100, 0)])
def test_current_of_a_duty_cycle(duty: float, amperes: float) -> None:
    assert duty_to_amps(duty) == pytest.approx(amperes)


@pytest.mark.parametrize("amperes", [0, 5.9, 80.1])
def test_no_duty_cycle_offers_it(amperes: float) -> None:
    with pytest.raises(ValueError, match="Table A.8"):
        amps_to_duty(amperes)


ABL_LIMIT = WriteSpec(0x14, scale=0.1, multiple=True, convert=Conversion.PWM_DUTY)
ABL_APPLIED = ValueSpec("applied_current_limit", Table.HOLDING, 0x12, bits=(0, 11), scale=0.1, unit="A", convert=Conversion.PWM_DUTY)


def test_abl_duty_words() -> None:
    # Reference §2: 6 A -> 100, 10 A -> 166, 16 A -> 266, 32 A -> 533 (evcc current / 0.06, truncated).
    assert [encode_value(ABL_LIMIT, a)[0] for a in (6, 10, 16, 32)] == [100, 166, 266, 533]
    # The evcc#32436 trace reads 0x0215 in 0x12 (high nibble: flags): duty 53.3 % = 31.98 A; 0x03E8 = no PWM.
    assert decode_value(ABL_APPLIED, [0x0215]) == pytest.approx(31.98)
    assert decode_value(ABL_APPLIED, [0x03E8]) == 0.0


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=6, max_value=80, allow_nan=False))
def test_a_written_duty_never_offers_more_than_asked(amperes: float) -> None:
    spec = ValueSpec("applied_current_limit", Table.HOLDING, 0, scale=0.1, unit="A", convert=Conversion.PWM_DUTY)
    offered = decode_value(spec, encode_value(ABL_LIMIT, amperes))
    # One 0.1 % step is 0.06 A up to 51 A and 0.25 A above; 51..52.75 A has no step of its own: 51 A.
    below = 0.06 if amperes <= 51 else 1.75 if amperes < 52.75 else 0.25
    assert offered is not None and amperes - below - 1e-9 <= offered <= amperes + 1e-9


# --- bit fields, 64-bit, UTF-16 -----------------------------------------------------------------


def test_bits_cut_a_field_out_of_a_register() -> None:
    low_byte = ValueSpec("status", Table.HOLDING, 4, bits=(0, 7))
    high_byte = ValueSpec("echo", Table.HOLDING, 4, bits=(8, 15))
    connected = ValueSpec("ev_connected", Table.HOLDING, 1004, DataType.U32, bits=(2, 2))
    assert decode_value(low_byte, [0x2EA1]) == 0xA1
    assert decode_value(high_byte, [0x2EA1]) == 0x2E
    assert [decode_value(connected, [0, v]) for v in (0, 1, 3, 5, 7)] == [0, 0, 0, 1, 1]  # KEBA cable state
    assert encode_value(high_byte, 0x43) == [0x4300]


def test_64_bit_values() -> None:
    energy = ValueSpec("energy", Table.HOLDING, 0x5000, DataType.U64, scale=10, unit="Wh")
    signed = ValueSpec("energy", Table.HOLDING, 250, DataType.I64, unit="Wh")
    assert decode_value(energy, [0, 0, 0x0001, 0x86A0]) == 1_000_000  # 100000 x 0.01 kWh
    assert decode_value(signed, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]) == -2
    assert encode_value(energy, 1_000_000) == [0, 0, 0x0001, 0x86A0]


def test_utf16_text_is_one_character_per_register() -> None:
    words = [0x0030, 0x0034, 0x0041, 0x0042, 0, 0]  # Vestel: UTF-16BE "04AB"
    assert decode_string(words, TextEncoding.UTF16) == "04AB"
    assert encode_string("04AB", 6, TextEncoding.UTF16) == words
    with pytest.raises(ValueError):
        decode_string([0x4F60, 0x597D], TextEncoding.UTF16)  # not ASCII: not an idTag we can pass on
    with pytest.raises(ValueError, match="does not fit"):
        encode_string("ABC", 2, TextEncoding.UTF16)


def test_several_invalid_values() -> None:
    current = ValueSpec("current_l1", Table.HOLDING, 0x30, scale=0.1, unit="A", invalid=(0x03E8, 1))
    assert [decode_value(current, [w]) for w in (0x03E8, 1, 160)] == [None, None, 16.0]


# --- whole profiles, loaded from YAML --------------------------------------------------------------

RULES = """\
name: box
kind: charger
description: a charger whose state is two registers
line: {framing: tcp, unit: 255}
blocks:
  - {table: input, address: 1000, count: 5}
  - {table: holding, address: 5004, count: 1}
  - {table: holding, address: 1100, count: 6, unit: 200}
values:
  charging_status: {table: input, address: 1001}
  cable_status: {table: input, address: 1004}
  station_name: {table: holding, address: 1100, type: string, count: 6}
  model: {table: input, address: 1002, bits: [8, 15]}
  applied_current_limit: {table: holding, address: 5004, unit: A}
state_rules:
  - {when: {charging_status: 1}, state: C2}
  - {when: {cable_status: [2, 3]}, state: B}
  - {state: A}
control:
  current_limit: {address: 5004}
identify:
  - {value: model, one_of: [3, 4]}
  - {value: station_name, pattern: "ALF"}
"""


def _image(charging: int, cable: int, model: int = 3, name: str = "ALF_1") -> dict[ReadBlock, list[int]]:
    return {
        ReadBlock(Table.INPUT, 1000, 5): [0, charging, model << 8, 0, cable],
        ReadBlock(Table.HOLDING, 5004, 1): [16],
        ReadBlock(Table.HOLDING, 1100, 6, 200): encode_string(name, 6),
    }


def test_state_rules_first_match_wins(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, RULES))
    assert p.state_rules == (
        StateRule({"charging_status": frozenset({1})}, "C2"),
        StateRule({"cable_status": frozenset({2, 3})}, "B"),
        StateRule({}, "A"),
    )
    assert p.blocks[2].unit == 200 and p.line.unit == 255
    cases = {(1, 3): Pilot.C, (0, 2): Pilot.B, (0, 3): Pilot.B, (0, 0): Pilot.A, (0, 1): Pilot.A, (1, 0): Pilot.C}
    for (charging, cable), pilot in cases.items():
        reading = decode_reading(p, _image(charging, cable))
        assert reading.state is not None and reading.state.pilot is pilot, (charging, cable)
    assert decode_reading(p, _image(1, 3)).vendor_state == "charging_status=1"
    assert decode_reading(p, _image(0, 0)).vendor_state == "charging_status=0 cable_status=0"


def test_identify_checks(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, RULES))
    assert p.identify == (IdentifyCheck("model", one_of=(3.0, 4.0)), IdentifyCheck("station_name", pattern="ALF"))
    assert identify_matches(p, _image(0, 0))
    assert not identify_matches(p, _image(0, 0, model=5))
    assert not identify_matches(p, _image(0, 0, name="KEBA"))
    garbled = _image(0, 0)
    garbled[ReadBlock(Table.HOLDING, 1100, 6, 200)] = [0x0141, 0, 0, 0, 0, 0]
    assert not identify_matches(p, garbled)  # text that is not text does not decode


def test_string_state_enum(tmp_path: Path) -> None:
    text = RULES.replace("state_rules:\n  - {when: {charging_status: 1}, state: C2}\n  - {when: {cable_status: [2, 3]}, state: B}\n  - {state: A}\n", "")
    text = text.replace("  station_name: {table: holding, address: 1100, type: string, count: 6}\n", "  state: {table: holding, address: 1100, type: string, count: 5, enum: {A: A, B1: B1, C2: C2}}\n")
    text = text.replace('  - {value: station_name, pattern: "ALF"}\n', "")
    p = load_profile(write(tmp_path, text))
    image = _image(0, 0)
    image[ReadBlock(Table.HOLDING, 1100, 6, 200)] = encode_string("C2", 6)
    reading = decode_reading(p, image)
    assert reading.state is not None and reading.state.pilot is Pilot.C and reading.vendor_state == "C2"
    image[ReadBlock(Table.HOLDING, 1100, 6, 200)] = encode_string("X9", 6)
    with pytest.raises(FrameError, match="unknown vendor state 'X9'"):
        decode_reading(p, image)


HEIDELBERG_LIKE = """\
name: box
kind: charger
description: d
line: {framing: rtu}
blocks:
  - {table: input, address: 5, count: 1}
  - {table: holding, address: 1300, count: 3}
values:
  state: {table: input, address: 5, enum: {2: A1, 7: C2}}
  applied_current_limit: {table: holding, address: 1301, unit: A}
control:
  current_limit: {address: 1301}
"""


def test_pause_by_current_by_raw_value_and_by_enable(tmp_path: Path) -> None:
    plain = load_profile(write(tmp_path, HEIDELBERG_LIKE))
    assert control_writes(plain, 10) == [RegisterWrite(1301, (10,), False, "current limit 10 A")]
    assert control_writes(plain, 3) == [RegisterWrite(1301, (0,), False, "pause")]

    raw = load_profile(write(tmp_path, HEIDELBERG_LIKE.replace("{address: 1301}", "{address: 1301, convert: pwm_duty, scale: 0.1}\n  pause_raw: 0x03E8")))
    assert raw.pause_raw == 1000 and raw.current_limit is not None and raw.current_limit.convert is Conversion.PWM_DUTY
    assert control_writes(raw, 10) == [RegisterWrite(1301, (166,), False, "current limit 10 A")]
    assert control_writes(raw, 0) == [RegisterWrite(1301, (1000,), False, "pause")]

    coil = HEIDELBERG_LIKE.replace("{address: 1301}", "{address: 1301}\n  enable: {table: coil, address: 400}")
    coil = coil.replace("count: 3}\n", "count: 3}\n  - {table: coil, address: 400, count: 1}\n")
    enabled = load_profile(write(tmp_path, coil.replace("values:\n", "values:\n  charging_enabled: {table: coil, address: 400}\n")))
    assert enabled.enable == EnableSpec(Table.COIL, 400)
    # Offering: the current first, then enable on; pausing: enable off only, the current is left alone.
    assert control_writes(enabled, 10) == [
        RegisterWrite(1301, (10,), False, "current limit 10 A"),
        RegisterWrite(400, (1,), False, "enable", Table.COIL),
    ]
    assert control_writes(enabled, 0) == [RegisterWrite(400, (0,), False, "pause (enable off)", Table.COIL)]
    image = {ReadBlock(Table.INPUT, 5, 1): [7], ReadBlock(Table.HOLDING, 1300, 3): [0, 16, 0], ReadBlock(Table.COIL, 400, 1): [0]}
    assert offered_current(enabled, decode_reading(enabled, image)) == 0.0
    image[ReadBlock(Table.COIL, 400, 1)] = [1]
    assert offered_current(enabled, decode_reading(enabled, image)) == 16.0
    assert offered_current(plain, decode_reading(plain, {k: v for k, v in image.items() if k.table is not Table.COIL})) == 16.0


def test_keepalive_writes(tmp_path: Path) -> None:
    heartbeat = HEIDELBERG_LIKE + "watchdog:\n  timeout_s: 10\n  keepalive: heartbeat\n  keepalive_every_s: 5\n  heartbeat: {address: 0x0D00, value: 0x55AA}\n"
    p = load_profile(write(tmp_path, heartbeat))
    assert p.watchdog == Watchdog(10, "heartbeat", heartbeat=InitWrite(0x0D00, 0x55AA), keepalive_every_s=5)
    assert p.watchdog.keepalive_period_s == 5
    assert keepalive_writes(p, 10) == [RegisterWrite(0x0D00, (0x55AA,), False, "heartbeat")]
    timeout = HEIDELBERG_LIKE + "watchdog:\n  timeout_s: 60\n  keepalive: timeout_register\n  timeout_register: {address: 5018}\n"
    p = load_profile(write(tmp_path, timeout))
    assert p.watchdog is not None and p.watchdog.keepalive_period_s == 15
    assert keepalive_writes(p, 10) == [RegisterWrite(5018, (60,), False, "watchdog timeout 60 s")]
    limit = HEIDELBERG_LIKE + "watchdog:\n  timeout_s: 60\n  keepalive: current_limit\n  keepalive_every_s: 25\n"
    p = load_profile(write(tmp_path, limit))
    assert keepalive_writes(p, 10) == [RegisterWrite(1301, (10,), False, "current limit 10 A")]
    assert keepalive_writes(load_profile(write(tmp_path, HEIDELBERG_LIKE)), 10) == []


def test_outlets_move_every_address_but_the_stations(tmp_path: Path) -> None:
    text = HEIDELBERG_LIKE.replace("line: {framing: rtu}", "line: {framing: tcp}\noutlet_stride: 1000")
    text = text.replace("count: 3}\n", "count: 3}\n  - {table: holding, address: 114, count: 1, unit: 255}\n")
    p = load_profile(write(tmp_path, text))
    second = p.for_outlet(2)
    assert [(b.address, b.unit) for b in second.blocks] == [(1005, None), (2300, None), (114, 255)]
    assert second.values["state"].address == 1005 and second.current_limit is not None
    assert second.current_limit.address == 2301
    assert p.for_outlet(1) is p
    with pytest.raises(ValueError, match="outlet 2 does not exist"):
        load_profile(write(tmp_path, HEIDELBERG_LIKE)).for_outlet(2)


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        (("values:\n", "values:\n  echo: {table: input, address: 5, type: f32, bits: [0, 3]}\n"), "values.echo.bits", "integer types"),
        (("values:\n", "values:\n  echo: {table: input, address: 5, bits: [8, 16]}\n"), "values.echo.bits", "16 bits"),
        (("values:\n", "values:\n  echo: {table: input, address: 5, encoding: utf16}\n"), "values.echo.encoding", "string"),
        (("values:\n", "values:\n  power: {table: input, address: 5, unit: W, convert: pwm_duty}\n"), "values.power.convert", "applied_current_limit"),
        (("{address: 1301}", "{address: 1301, convert: pwm_duty, scale: 0.1}"), "control.current_limit.convert", "pause_raw or enable"),
        (("{address: 1301}", "{address: 1301}\n  enable: {table: coil, address: 4, on_value: 2}"), "control.enable.on_value", "0 or 1"),
        (("{address: 1301}", "{address: 1301}\n  pause_raw: 3\n  enable: {table: holding, address: 4}"), "control.pause_raw", "either"),
        (("{2: A1, 7: C2}", "{A: A1, 7: C2}"), "values.state.enum", "integers for a number"),
        (("line: {framing: rtu}", "line: {framing: rtu}\nidentify:\n  - {value: nothing, min: 1}"), "identify[0].value", "no value named"),
        (("line: {framing: rtu}", "line: {framing: rtu}\nidentify:\n  - {value: state, pattern: 'x'}"), "identify[0]", "pattern is for text"),
        (("line: {framing: rtu}", "line: {framing: rtu}\nidentify:\n  - {value: state, pattern: '('}"), "identify[0].pattern", "regular expression"),
        (("{address: 1301}", "{address: 1301}\n  enable: {table: coil, address: 4, on: 1}"), "control.enable[True]", "unknown key True"),
        (("line: {framing: rtu}", "line: {framing: rtu}\nstate_rules:\n  - {when: {nothing: 1}, state: A}"), "state_rules", "not both"),
        (("line: {framing: rtu}", "line: {framing: rtu}\ntiming: {repeat: 9}"), "timing.repeat", "at most 5"),
        (("count: 3}", "count: 200}"), "blocks[1].count", "at most 125 registers"),
        (("{address: 1301}", "{address: 1301}\nwatchdog: {timeout_s: 10, keepalive: heartbeat}"), "watchdog.keepalive", "needs watchdog.heartbeat"),
        (("{address: 1301}", "{address: 1301}\nwatchdog: {timeout_s: 10, keepalive_every_s: 12}"), "watchdog.keepalive_every_s", "below timeout_s"),
    ],
)
def test_schema_v2_faults(tmp_path: Path, change: tuple[str, str], where: str, says: str) -> None:
    text = HEIDELBERG_LIKE.replace(*change)
    assert text != HEIDELBERG_LIKE
    found = faults(write(tmp_path, text))
    assert any(path == where and says in message for _, path, message in found), found


def test_state_rules_faults(tmp_path: Path) -> None:
    text = RULES.replace("  - {state: A}\n", "  - {when: {station_name: 1}, state: A}\n")
    found = faults(write(tmp_path, text))
    assert {path for _, path, _ in found} >= {"state_rules[2].when.station_name", "state_rules[2]"}, found
    with pytest.raises(ConfigError):
        load_profile(write(tmp_path, RULES.replace("charging_status: 1}", "nothing: 1}")))


def test_a_right_aligned_tag_keeps_its_text() -> None:
    assert decode_string([0x0000, 0x0000, 0x4142, 0x4344]) == "ABCD"  # leading NULs go, as evcc trims them
    assert decode_string([0x4142, 0x4300, 0x4400]) == "ABC"  # the text still ends at its first NUL


def test_a_float_of_nan_is_not_available() -> None:
    current = ValueSpec("current_l2", Table.HOLDING, 322, DataType.F32, unit="A")
    assert decode_value(current, [0xFFFF, 0xFFFF]) is None  # Alfen: an unused phase of a 1-phase socket
    assert decode_value(current, [0x4166, 0x6666]) == pytest.approx(14.4)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 15), st.integers(0, 15), st.integers(0, 0xFFFF))
def test_a_field_goes_into_its_bits_and_leaves_the_others(word: int, a: int, b: int, raw: int) -> None:
    spec = ValueSpec("field", Table.HOLDING, 0, bits=(min(a, b), max(a, b)))
    low, high = field_range(spec)
    raw = min(raw, high)
    words = insert_field(spec, [word], raw)
    assert decode_value(spec, words) == raw  # raw_value cuts out what insert_field put in
    mask = ((1 << (spec.bits[1] - spec.bits[0] + 1)) - 1) << spec.bits[0]  # type: ignore[index]
    assert words[0] & ~mask == word & ~mask and low == 0
