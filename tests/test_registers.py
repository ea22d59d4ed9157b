"""Register arithmetic (gateway/registers.py) against literal words from the Heidelberg register table.

Register values come from shared/reference/modbus-register-maps.md §1; the
profile under test is the shipped heidelberg-energy-control.yaml, so these
tests pin the profile's addresses and scales as well as the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.devprofile import NUMBER_TYPES, DataType, Profile, ReadBlock, Table, ValueSpec, Watchdog, WordOrder, WriteSpec
from gateway.errors import FrameError
from gateway.profile_loader import builtin_profile_dir, load_profile
from gateway.reading import Pilot, PilotState
from gateway.registers import (
    RegisterWrite,
    chargeable_current,
    control_writes,
    decode_raw,
    decode_reading,
    decode_string,
    decode_value,
    encode_raw,
    encode_string,
    encode_value,
    failsafe_writes,
    identify_matches,
    setup_writes,
    words_of,
)

HEIDELBERG = load_profile(builtin_profile_dir() / "heidelberg-energy-control.yaml")


@pytest.fixture(scope="module")
def heidelberg() -> Profile:
    return HEIDELBERG


def heidelberg_blocks(profile: Profile, registers: dict[tuple[Table, int], int]) -> dict[ReadBlock, list[int]]:
    """One poll's blocks (input 4..18, holding 257..261) holding the given registers, 0 elsewhere."""
    return {
        block: [registers.get((block.table, block.address + n), 0) for n in range(block.count)]
        for block in profile.blocks
    }


I, H = Table.INPUT, Table.HOLDING
# A box charging at 16 A on three phases: layout 0x0108, -14.5 °C, 100 kWh lifetime.
CHARGING = {
    (I, 4): 0x0108, (I, 5): 7, (I, 6): 160, (I, 7): 160, (I, 8): 159, (I, 9): 0xFF6F,
    (I, 10): 230, (I, 11): 231, (I, 12): 229, (I, 13): 1, (I, 14): 11040,
    (I, 15): 0x0000, (I, 16): 0x0BB8, (I, 17): 0x0001, (I, 18): 0x86A0,
    (H, 257): 0x3A98, (H, 258): 4, (H, 259): 1, (H, 261): 160,
}  # fmt: skip


def test_heidelberg_reading_from_literal_registers(heidelberg: Profile) -> None:
    reading = decode_reading(heidelberg, heidelberg_blocks(heidelberg, CHARGING))
    assert reading.state == PilotState(Pilot.C, True)  # 7 = C2
    assert reading.vendor_state == 7
    assert reading.energy_wh == 100_000  # regs 17-18 = 0x0001 0x86A0, high word first
    assert reading.power_w == 11040
    assert reading.current_a == pytest.approx((16.0, 16.0, 15.9))  # 0.1 A
    assert reading.voltage_v == (230, 231, 229)  # 1 V
    extra = dict(reading.extra)
    assert extra["temperature"] == pytest.approx(-14.5)  # int16 0xFF6F = -145, 0.1 °C
    assert extra["watchdog_timeout"] == pytest.approx(15.0)  # 0x3A98 = 15000 ms
    assert extra["layout_version"] == 0x0108
    assert reading.applied_limit_a == pytest.approx(16.0)  # holding 261 = 160, 0.1 A
    assert extra["standby_control"] == 4


@pytest.mark.parametrize(
    ("raw", "code"),
    [(2, "A1"), (3, "A2"), (4, "B1"), (5, "B2"), (6, "C1"), (7, "C2"), (8, "C2"), (9, "E"), (10, "F"), (11, "E")],
)
def test_heidelberg_states(heidelberg: Profile, raw: int, code: str) -> None:
    reading = decode_reading(heidelberg, heidelberg_blocks(heidelberg, CHARGING | {(I, 5): raw}))
    assert reading.state == PilotState.parse(code)


@pytest.mark.parametrize("raw", [0, 1, 12, 0xFFFF])
def test_unknown_state_raises_frame_error(heidelberg: Profile, raw: int) -> None:
    with pytest.raises(FrameError, match="unknown vendor state"):
        decode_reading(heidelberg, heidelberg_blocks(heidelberg, CHARGING | {(I, 5): raw}))


def test_short_block_raises_frame_error(heidelberg: Profile) -> None:
    blocks = heidelberg_blocks(heidelberg, CHARGING)
    first = heidelberg.blocks[0]
    blocks[first] = blocks[first][:-1]  # a reply one register short
    with pytest.raises(FrameError, match="returned 14 of 15"):
        decode_reading(heidelberg, blocks)


def test_words_of_cuts_the_value_out_of_its_block(heidelberg: Profile) -> None:
    blocks = heidelberg_blocks(heidelberg, CHARGING)
    assert list(words_of(heidelberg.values["energy"], blocks)) == [0x0001, 0x86A0]
    assert list(words_of(heidelberg.values["temperature"], blocks)) == [0xFF6F]


def test_control_writes(heidelberg: Profile) -> None:
    def words(amperes: float) -> list[tuple[int, tuple[int, ...]]]:
        return [(w.address, w.words) for w in control_writes(heidelberg, amperes)]

    assert words(16.0) == [(261, (160,))]  # holding 261, 0.1 A
    assert words(6.0) == [(261, (60,))]
    assert words(0.0) == [(261, (0,))]  # pause
    assert words(5.9) == [(261, (0,))]  # 1..59 are invalid on the box: below 6 A is a pause
    assert words(10.04) == [(261, (100,))]  # rounded to the register's 0.1 A
    assert words(32.0) == [(261, (160,))]  # capped at the box's 16 A


def test_heidelberg_identify(heidelberg: Profile) -> None:
    assert identify_matches(heidelberg, heidelberg_blocks(heidelberg, CHARGING))  # layout 0x0108
    assert not identify_matches(heidelberg, heidelberg_blocks(heidelberg, CHARGING | {(I, 4): 0x0200}))
    assert not identify_matches(heidelberg, heidelberg_blocks(heidelberg, CHARGING | {(I, 5): 0x41}))  # not a state


# --- every DataType, both word orders, literal words ------------------------------------

LITERALS = [
    (DataType.U16, WordOrder.HIGH_FIRST, [0xFFFF], 65535),
    (DataType.I16, WordOrder.HIGH_FIRST, [0xFF6F], -145),
    (DataType.I16, WordOrder.LOW_FIRST, [0x8000], -32768),  # one word: order does not matter
    (DataType.U32, WordOrder.HIGH_FIRST, [0x0001, 0x86A0], 100_000),
    (DataType.U32, WordOrder.LOW_FIRST, [0x86A0, 0x0001], 100_000),
    (DataType.I32, WordOrder.HIGH_FIRST, [0xFFFF, 0xFFFE], -2),
    (DataType.I32, WordOrder.LOW_FIRST, [0xFFFE, 0xFFFF], -2),
    (DataType.F32, WordOrder.HIGH_FIRST, [0x4366, 0x0000], 230.0),  # 0x43660000 = 230.0
    (DataType.F32, WordOrder.LOW_FIRST, [0x0000, 0x4366], 230.0),
    (DataType.F64, WordOrder.HIGH_FIRST, [0x40F8, 0x6A00, 0x0000, 0x0000], 100_000.0),  # 0x40F86A0000000000
    (DataType.F64, WordOrder.LOW_FIRST, [0x0000, 0x0000, 0x6A00, 0x40F8], 100_000.0),
]


@pytest.mark.parametrize(("type_", "order", "words", "value"), LITERALS)
def test_decode_literal(type_: DataType, order: WordOrder, words: list[int], value: float) -> None:
    assert decode_raw(words, type_, order) == value
    assert encode_raw(value, type_, order) == words


@pytest.mark.parametrize("type_", NUMBER_TYPES)
def test_wrong_word_count_is_refused(type_: DataType) -> None:
    with pytest.raises(ValueError, match="registers"):
        decode_raw([0] * (type_.words + 1), type_, WordOrder.HIGH_FIRST)


@pytest.mark.parametrize(
    ("type_", "value"), [(DataType.U16, 65536), (DataType.U16, -1), (DataType.I16, 32768), (DataType.U32, 2**32)]
)
def test_encode_out_of_range_is_refused(type_: DataType, value: int) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_raw(value, type_, WordOrder.HIGH_FIRST)


def test_decode_value_applies_scale() -> None:
    spec = ValueSpec("energy", Table.INPUT, 0, DataType.U32, WordOrder.LOW_FIRST, scale=1000.0, unit="Wh")
    assert decode_value(spec, [0x0002, 0x0000]) == 2000.0  # 2 kWh register read as Wh


# --- round trips -------------------------------------------------------------------------

INT_RANGES = {
    DataType.U16: (0, 2**16 - 1),
    DataType.I16: (-(2**15), 2**15 - 1),
    DataType.U32: (0, 2**32 - 1),
    DataType.I32: (-(2**31), 2**31 - 1),
}
orders = st.sampled_from(list(WordOrder))


@given(st.sampled_from(list(INT_RANGES)).flatmap(lambda t: st.tuples(st.just(t), st.integers(*INT_RANGES[t]))), orders)
def test_integer_round_trip(case: tuple[DataType, int], order: WordOrder) -> None:
    type_, value = case
    words = encode_raw(value, type_, order)
    assert len(words) == type_.words and all(0 <= w <= 0xFFFF for w in words)
    assert decode_raw(words, type_, order) == value


@given(st.floats(width=32, allow_nan=False), orders)
def test_f32_round_trip(value: float, order: WordOrder) -> None:
    assert decode_raw(encode_raw(value, DataType.F32, order), DataType.F32, order) == value


@given(st.floats(allow_nan=False), orders)
def test_f64_round_trip(value: float, order: WordOrder) -> None:
    assert decode_raw(encode_raw(value, DataType.F64, order), DataType.F64, order) == value


@given(
    st.sampled_from(NUMBER_TYPES).flatmap(
        lambda t: st.lists(st.integers(0, 0xFFFF), min_size=t.words, max_size=t.words).map(lambda w: (t, w))
    ),
    orders,
)
def test_any_words_decode_and_encode_back(case: tuple[DataType, list[int]], order: WordOrder) -> None:
    """Every register pattern decodes to a number that encodes to the same words (NaN payloads aside)."""
    type_, words = case
    value = decode_raw(words, type_, order)
    if isinstance(value, float) and math.isnan(value):
        return
    assert encode_raw(value, type_, order) == words


@given(st.integers(0, 1600).map(lambda n: n / 10))
def test_current_limit_round_trip_at_register_resolution(amperes: float) -> None:
    spec = WriteSpec(address=261, type=DataType.U16, scale=0.1)
    words = encode_value(spec, amperes)
    assert words == [round(amperes * 10)]
    assert decode_raw(words, spec.type, spec.word_order) * spec.scale == pytest.approx(amperes)


# --- fail-safe current and watchdog timeout writes -------------------------------------------


def test_heidelberg_failsafe_writes(heidelberg: Profile) -> None:
    """Reference §1: holding 262 in 0.1 A (0 = state F, 60..160 = 6..16 A), holding 257 in ms (factory 15000)."""
    assert failsafe_writes(heidelberg, 16.0) == [
        RegisterWrite(262, (160,), False, "fail-safe current 16 A"),
        RegisterWrite(257, (15000,), False, "watchdog timeout 15 s"),
    ]
    assert failsafe_writes(heidelberg, 6.0)[0].words == (60,)
    assert failsafe_writes(heidelberg, 10.04)[0].words == (100,)  # the register's 0.1 A resolution
    assert failsafe_writes(heidelberg, 32.0)[0].words == (160,)  # capped at max_current_a
    paused = failsafe_writes(heidelberg, 5.9)[0]  # below 6 A: the pause value, state F on expiry
    assert paused.words == (0,) and "pause" in paused.note
    assert failsafe_writes(heidelberg, 0.0)[0].words == (0,)


def test_failsafe_writes_only_for_the_registers_a_profile_has(heidelberg: Profile) -> None:
    assert failsafe_writes(replace(heidelberg, watchdog=None), 16.0) == []
    assert failsafe_writes(replace(heidelberg, watchdog=Watchdog(15.0)), 16.0) == []
    only_timeout = replace(heidelberg, watchdog=Watchdog(60.0, timeout_register=WriteSpec(300, DataType.U32, multiple=True)))
    assert failsafe_writes(only_timeout, 16.0) == [RegisterWrite(300, (0, 60), True, "watchdog timeout 60 s")]


@settings(max_examples=200, deadline=None)
@given(st.floats(-10, 100, allow_nan=False))
def test_failsafe_current_is_always_a_current_the_box_accepts(amperes: float) -> None:
    (write, _) = failsafe_writes(HEIDELBERG, amperes)
    raw = write.words[0]
    assert raw == 0 or 60 <= raw <= 160  # 1..59 are invalid on the box (reference §1, holding 261/262)
    assert chargeable_current(HEIDELBERG, amperes) == pytest.approx(raw / 10, abs=0.05)


# --- strings (RFID idTag) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "text"),
    [
        ([0x3034, 0x4135, 0x4233, 0x4339, 0x0000], "04A5B3C9"),  # high byte first: 0x30 '0', 0x34 '4'
        ([0x4142, 0x4300], "ABC"),  # odd length: NUL-padded low byte
        ([0x4142, 0x2020], "AB"),  # space-padded
        ([0x4142, 0x0043], "AB"),  # the text ends at the first NUL
        ([0x0000] * 10, None),  # no tag
        ([0xFFFF] * 10, None),  # an erased field: no tag
        ([0x2020, 0x0000], None),  # nothing left after trimming
        ([], None),
    ],
)
def test_decode_string_literals(words: list[int], text: str | None) -> None:
    assert decode_string(words) == text


@pytest.mark.parametrize("words", [[0x41FF, 0x0000], [0x0141], [0xFFFF, 0x0000]])
def test_decode_string_refuses_what_is_not_text(words: list[int]) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        decode_string(words)


def test_encode_string() -> None:
    assert encode_string("04A5B3C9", 5) == [0x3034, 0x4135, 0x4233, 0x4339, 0x0000]
    assert encode_string(None, 3) == encode_string("", 3) == [0, 0, 0]
    with pytest.raises(ValueError, match="does not fit 2 registers"):
        encode_string("ABCDE", 2)
    with pytest.raises(ValueError, match="printable ASCII"):
        encode_string("Müller", 10)


_TAG_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20).filter(lambda t: not t.endswith(" "))


@given(_TAG_TEXT, st.integers(10, 20))
def test_string_round_trip(text: str, count: int) -> None:
    words = encode_string(text, count)
    assert len(words) == count and all(0 <= w <= 0xFFFF for w in words)
    assert decode_string(words) == text


def test_string_is_not_a_number() -> None:
    with pytest.raises(ValueError, match="decode_string"):
        decode_raw([0x4142], DataType.STRING, WordOrder.HIGH_FIRST)
    with pytest.raises(ValueError, match="encode_string"):
        encode_raw(1, DataType.STRING, WordOrder.HIGH_FIRST)


# --- "not available" values -------------------------------------------------------------------


def test_invalid_raw_value_decodes_to_none() -> None:
    spec = ValueSpec("power", Table.HOLDING, 220, DataType.U32, unit="W", invalid=(0xFFFFFFFF,))
    assert decode_value(spec, [0xFFFF, 0xFFFF]) is None
    assert decode_value(spec, [0xFFFF, 0xFFFE]) == 0xFFFFFFFE
    assert decode_value(replace(spec, invalid=()), [0xFFFF, 0xFFFF]) == 0xFFFFFFFF


def test_reading_leaves_out_what_is_not_available(heidelberg: Profile) -> None:
    values = dict(heidelberg.values)
    values["energy"] = replace(values["energy"], invalid=(0xFFFFFFFF,))
    values["temperature"] = replace(values["temperature"], invalid=(-1,))
    values["id_tag"] = ValueSpec("id_tag", Table.INPUT, 102, DataType.STRING, count=2)
    values["logistic"] = ValueSpec("logistic", Table.INPUT, 104, DataType.STRING, count=2)
    profile = replace(heidelberg, values=values, blocks=(*heidelberg.blocks, ReadBlock(Table.INPUT, 102, 4)))
    registers = CHARGING | {(I, 17): 0xFFFF, (I, 18): 0xFFFF, (I, 9): 0xFFFF, (I, 102): 0x3132, (I, 103): 0x3300}
    reading = decode_reading(profile, heidelberg_blocks(profile, registers))
    assert reading.energy_wh is None and reading.power_w == 11040
    assert reading.id_tag == "123"
    extra = dict(reading.extra)
    assert "temperature" not in extra and "logistic" not in extra and "id_tag" not in extra
    reading = decode_reading(profile, heidelberg_blocks(profile, registers | {(I, 104): 0x5858}))
    assert dict(reading.extra)["logistic"] == "XX"
    with pytest.raises(FrameError, match="id_tag: not printable ASCII"):
        decode_reading(profile, heidelberg_blocks(profile, registers | {(I, 102): 0x3180}))
    state = replace(values["state"], invalid=(0xFFFF,))
    with pytest.raises(FrameError, match="state is not available"):
        decode_reading(replace(profile, values={**values, "state": state}), heidelberg_blocks(profile, registers | {(I, 5): 0xFFFF}))


def test_a_profile_without_an_id_tag_register_reads_no_tag(heidelberg: Profile) -> None:
    assert decode_reading(heidelberg, heidelberg_blocks(heidelberg, CHARGING)).id_tag is None


def test_setup_writes_are_the_init_writes_then_the_failsafe_ones(heidelberg: Profile) -> None:
    writes = setup_writes(heidelberg, 10.0)
    assert [(w.address, w.words) for w in writes] == [(258, (4,)), (262, (100,)), (257, (15000,))]
    assert "standby off" in writes[0].note
