"""Register arithmetic, pure: raw 16-bit words <-> engineering values, and a profile's blocks -> Reading.

No I/O here: the Modbus layer hands in the words each read block returned,
and writes the words this module makes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.devprofile import ROLES, DataType, Profile, ReadBlock, ValueSpec, WordOrder, WriteSpec
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
    if type_ is DataType.STRING:
        raise ValueError("a string register is not a number: use decode_string")
    if len(words) != type_.words:
        raise ValueError(f"{type_.value} needs {type_.words} registers, got {len(words)}")
    data = b"".join(w.to_bytes(2, "big") for w in _ordered(words, order))
    value: int | float = struct.unpack(_STRUCT[type_], data)[0]
    return value


def encode_raw(value: int | float, type_: DataType, order: WordOrder) -> list[int]:
    """The raw number -> words in wire order. Raises ValueError when it does not fit the type."""
    if type_ is DataType.STRING:
        raise ValueError("a string register is not a number: use encode_string")
    if type_ in (DataType.F32, DataType.F64):
        data = struct.pack(_STRUCT[type_], float(value))
    else:
        try:
            data = struct.pack(_STRUCT[type_], int(value))
        except struct.error as exc:
            raise ValueError(f"{value} does not fit {type_.value}") from exc
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return list(_ordered(words, order))


def decode_value(spec: ValueSpec, words: Sequence[int]) -> float | None:
    """A number value in its unit; None where the raw value is the device's "not available" (spec.invalid)."""
    raw = decode_raw(words, spec.type, spec.word_order)
    if spec.invalid is not None and raw == spec.invalid:
        return None
    return raw * spec.scale


# A string register image that is entirely one of these says "no text" (no tag presented).
_EMPTY_WORDS = (0x0000, 0xFFFF)


def decode_string(words: Sequence[int]) -> str | None:
    """ASCII text, 2 characters per register with the high byte first; None for no text.

    The text ends at the first NUL and loses trailing spaces (fixed-size fields
    are padded with either). All 0x0000 or all 0xFFFF (an erased field) is no
    text, as is nothing left after trimming. A byte outside printable ASCII
    raises ValueError: the device said something that is not text.
    """
    if not words or (words[0] in _EMPTY_WORDS and all(w == words[0] for w in words)):
        return None
    data = b"".join(w.to_bytes(2, "big") for w in words).split(b"\0", 1)[0].rstrip(b" ")
    if any(not 0x20 <= b <= 0x7E for b in data):
        raise ValueError(f"not printable ASCII: {data!r}")
    return data.decode("ascii") or None


def encode_string(text: str | None, count: int) -> list[int]:
    """The inverse of decode_string: `text` in `count` registers, padded with NUL; None or "" -> all zeros.

    Raises ValueError for text that is not printable ASCII or does not fit.
    """
    text = text or ""
    if not (text.isascii() and text.isprintable()):
        raise ValueError(f"{text!r} is not printable ASCII")
    data = text.encode("ascii")
    if len(data) > 2 * count:
        raise ValueError(f"{text!r} does not fit {count} registers ({2 * count} characters)")
    data = data.ljust(2 * count, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def encode_value(spec: ValueSpec | WriteSpec, value: float) -> list[int]:
    """Engineering value -> words; the inverse of decode_value (rounded to the register's resolution)."""
    raw = value / spec.scale
    if spec.type not in (DataType.F32, DataType.F64):
        raw = round(raw)
    return encode_raw(raw, spec.type, spec.word_order)


def words_of(spec: ValueSpec, blocks: Mapping[ReadBlock, Sequence[int]]) -> Sequence[int]:
    """The words of one value, cut out of whichever read block covers it."""
    for block, words in blocks.items():
        if block.covers(spec.table, spec.address, spec.words):
            if len(words) != block.count:
                raise FrameError(f"block {block.table.value}@{block.address} returned {len(words)} of {block.count} registers")
            start = spec.address - block.address
            return words[start : start + spec.words]
    raise KeyError(f"no read block covers {spec.name}")


def decode_reading(profile: Profile, blocks: Mapping[ReadBlock, Sequence[int]]) -> Reading:
    """Every value of the profile, decoded from one poll's blocks.

    A state value outside the profile's enum is a FrameError: the slave said
    something we cannot interpret, which must not pass for a real state. So is
    a state the device calls "not available", and text that is not ASCII.
    A number the device calls "not available" (its `invalid` raw value) reads
    as None, as if the profile had no register for it, and is left out of extra.
    """
    values: dict[str, float | None] = {}
    texts: dict[str, str | None] = {}
    for name, value_spec in profile.values.items():
        words = words_of(value_spec, blocks)
        if value_spec.type is DataType.STRING:
            try:
                texts[name] = decode_string(words)
            except ValueError as exc:
                raise FrameError(f"{profile.name}: {name}: {exc}") from exc
        else:
            values[name] = decode_value(value_spec, words)
    state: PilotState | None = None
    vendor_state: int | None = None
    if (spec := profile.values.get("state")) is not None:
        raw_state = values["state"]
        if raw_state is None:
            raise FrameError(f"{profile.name}: the device says its state is not available")
        vendor_state = int(raw_state)
        code = spec.enum.get(vendor_state)
        if code is None:
            raise FrameError(f"{profile.name}: unknown vendor state {vendor_state}")
        state = PilotState.parse(code)

    def phases(prefix: str) -> tuple[float | None, float | None, float | None]:
        return (values.get(f"{prefix}_l1"), values.get(f"{prefix}_l2"), values.get(f"{prefix}_l3"))

    extra: list[tuple[str, float | str]] = [(k, v) for k, v in values.items() if k not in ROLES and v is not None]
    extra += [(k, t) for k, t in texts.items() if k not in ROLES and t is not None]
    return Reading(
        state=state,
        vendor_state=vendor_state,
        energy_wh=values.get("energy"),
        power_w=values.get("power"),
        current_a=phases("current"),
        voltage_v=phases("voltage"),
        applied_limit_a=values.get("applied_current_limit"),
        id_tag=texts.get("id_tag"),
        extra=tuple(extra),
    )


def current_limit_words(profile: Profile, amperes: float) -> list[int]:
    """Words to write to the profile's current-limit register for `amperes` (0 or the pause value = pause)."""
    if profile.current_limit is None:
        raise ValueError(f"{profile.name} has no current-limit register")
    return encode_value(profile.current_limit, amperes)


def chargeable_current(profile: Profile, amperes: float) -> float:
    """The current a charger can be told to offer for `amperes`: below min_current_a it pauses
    (IEC 61851-1 Table A.8: no PWM duty cycle offers less than 6 A), above max_current_a it is capped."""
    if amperes < profile.min_current_a:
        return profile.pause_current_a
    return min(amperes, profile.max_current_a)


@dataclass(frozen=True)
class RegisterWrite:
    """One holding-register write the gateway makes: FC16 if `multiple`, else FC06 (one word)."""

    address: int
    words: tuple[int, ...]
    multiple: bool
    note: str


def setup_writes(profile: Profile, failsafe_a: float) -> list[RegisterWrite]:
    """Whenever the gateway (re)finds a slave: the profile's init writes, then its fail-safe writes."""
    init = [RegisterWrite(w.address, (w.value,), w.multiple, w.note) for w in profile.init_writes]
    return init + failsafe_writes(profile, failsafe_a)


def failsafe_writes(profile: Profile, failsafe_a: float) -> list[RegisterWrite]:
    """The writes that make the slave fail safe on its own when the master goes silent.

    Made whenever the gateway (re)finds the slave, as a box may have been reset
    or set by someone else. The fail-safe current comes first: the watchdog
    timeout may switch the watchdog on (0 = off on Heidelberg holding 257), and
    it must not strike with a fallback nobody chose. `failsafe_a` below the
    minimum becomes the pause value (Heidelberg 262 = 0: state F, no charging).
    Empty when the profile has neither register.
    """
    watchdog = profile.watchdog
    if watchdog is None:
        return []
    writes: list[RegisterWrite] = []
    if (spec := watchdog.failsafe_current) is not None:
        amperes = chargeable_current(profile, failsafe_a)
        note = f"fail-safe current {amperes:g} A" + (" (pause)" if amperes < profile.min_current_a else "")
        writes.append(RegisterWrite(spec.address, tuple(encode_value(spec, amperes)), spec.multiple, note))
    if (spec := watchdog.timeout_register) is not None:
        words = tuple(encode_value(spec, watchdog.timeout_s))
        writes.append(RegisterWrite(spec.address, words, spec.multiple, f"watchdog timeout {watchdog.timeout_s:g} s"))
    return writes
