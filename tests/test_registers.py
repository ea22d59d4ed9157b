"""Register arithmetic (gateway/registers.py) against literal words from the Heidelberg register table.

Register values come from shared/reference/modbus-register-maps.md §1; the
profile under test is the shipped heidelberg-energy-control.yaml, so these
tests pin the profile's addresses and scales as well as the arithmetic.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.devprofile import (
    DataType,
    Profile,
    ReadBlock,
    Table,
    ValueSpec,
    WordOrder,
    WriteSpec,
    builtin_profile_dir,
    load_profile,
)
from gateway.errors import FrameError
from gateway.reading import Pilot, PilotState
from gateway.registers import (
    current_limit_words,
    decode_raw,
    decode_reading,
    decode_value,
    encode_raw,
    encode_value,
    words_of,
)


@pytest.fixture(scope="module")
def heidelberg() -> Profile:
    return load_profile(builtin_profile_dir() / "heidelberg-energy-control.yaml")


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


def test_current_limit_words(heidelberg: Profile) -> None:
    assert current_limit_words(heidelberg, 16.0) == [160]  # holding 261, 0.1 A
    assert current_limit_words(heidelberg, 6.0) == [60]
    assert current_limit_words(heidelberg, 0.0) == [0]  # pause
    assert current_limit_words(heidelberg, 10.04) == [100]  # rounded to the register's 0.1 A


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


@pytest.mark.parametrize("type_", list(DataType))
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
    st.sampled_from(list(DataType)).flatmap(
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
