"""Register arithmetic, pure: raw 16-bit words <-> engineering values, and a profile's blocks -> Reading.

No I/O here: the Modbus layer hands in the words each read block returned.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from gateway.devprofile import DataType, Profile, ReadBlock, ValueSpec, WordOrder, WriteSpec
from gateway.errors import FrameError
from gateway.reading import PilotState, Reading

_STRUCT = {
    DataType.U16: ">H",
    DataType.I16: ">h",
    DataType.U32: ">I",
    DataType.I32: ">i",
    DataType.F32: ">f",
    DataType.F64: ">d",
}


def _ordered(words: Sequence[int], order: WordOrder) -> Sequence[int]:
    return list(reversed(words)) if order is WordOrder.LOW_FIRST else words


def decode_raw(words: Sequence[int], type_: DataType, order: WordOrder) -> int | float:
    """Words as read (in wire order) -> the raw number, before scale."""
    if len(words) != type_.words:
        raise ValueError(f"{type_.value} needs {type_.words} registers, got {len(words)}")
    data = b"".join(w.to_bytes(2, "big") for w in _ordered(words, order))
    value: int | float = struct.unpack(_STRUCT[type_], data)[0]
    return value


def encode_raw(value: int | float, type_: DataType, order: WordOrder) -> list[int]:
    """The raw number -> words in wire order. Raises ValueError when it does not fit the type."""
    if type_ in (DataType.F32, DataType.F64):
        data = struct.pack(_STRUCT[type_], float(value))
    else:
        try:
            data = struct.pack(_STRUCT[type_], int(value))
        except struct.error as exc:
            raise ValueError(f"{value} does not fit {type_.value}") from exc
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return list(_ordered(words, order))


def decode_value(spec: ValueSpec, words: Sequence[int]) -> float:
    return decode_raw(words, spec.type, spec.word_order) * spec.scale


def encode_value(spec: ValueSpec | WriteSpec, value: float) -> list[int]:
    """Engineering value -> words; the inverse of decode_value (rounded to the register's resolution)."""
    raw = value / spec.scale
    if spec.type not in (DataType.F32, DataType.F64):
        raw = round(raw)
    return encode_raw(raw, spec.type, spec.word_order)


def words_of(spec: ValueSpec, blocks: Mapping[ReadBlock, Sequence[int]]) -> Sequence[int]:
    """The words of one value, cut out of whichever read block covers it."""
    for block, words in blocks.items():
        if block.covers(spec.table, spec.address, spec.type.words):
            if len(words) != block.count:
                raise FrameError(f"block {block.table.value}@{block.address} returned {len(words)} of {block.count} registers")
            start = spec.address - block.address
            return words[start : start + spec.type.words]
    raise KeyError(f"no read block covers {spec.name}")


def decode_reading(profile: Profile, blocks: Mapping[ReadBlock, Sequence[int]]) -> Reading:
    """Every value of the profile, decoded from one poll's blocks.

    A state value outside the profile's enum is a FrameError: the slave said
    something we cannot interpret, which must not pass for a real state.
    """
    values = {name: decode_value(spec, words_of(spec, blocks)) for name, spec in profile.values.items()}
    state: PilotState | None = None
    vendor_state: int | None = None
    if (spec := profile.values.get("state")) is not None:
        vendor_state = int(values["state"])
        code = spec.enum.get(vendor_state)
        if code is None:
            raise FrameError(f"{profile.name}: unknown vendor state {vendor_state}")
        state = PilotState.parse(code)

    def phases(prefix: str) -> tuple[float | None, float | None, float | None]:
        return (values.get(f"{prefix}_l1"), values.get(f"{prefix}_l2"), values.get(f"{prefix}_l3"))

    known = {"state", "energy", "power", "applied_current_limit"} | {f"{p}_l{i}" for p in ("current", "voltage") for i in (1, 2, 3)}
    return Reading(
        state=state,
        vendor_state=vendor_state,
        energy_wh=values.get("energy"),
        power_w=values.get("power"),
        current_a=phases("current"),
        voltage_v=phases("voltage"),
        applied_limit_a=values.get("applied_current_limit"),
        extra=tuple((k, v) for k, v in values.items() if k not in known),
    )


def current_limit_words(profile: Profile, amperes: float) -> list[int]:
    """Words to write to the profile's current-limit register for `amperes` (0 or the pause value = pause)."""
    if profile.current_limit is None:
        raise ValueError(f"{profile.name} has no current-limit register")
    return encode_value(profile.current_limit, amperes)
