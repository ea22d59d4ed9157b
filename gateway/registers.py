"""Register arithmetic, pure: raw 16-bit words <-> engineering values, and a profile's blocks -> Reading.

No I/O here: the Modbus layer hands in the words each read block returned,
and writes the words this module makes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.devprofile import (
    INT_RANGES,
    ROLES,
    Conversion,
    DataType,
    Profile,
    ReadBlock,
    Table,
    TextEncoding,
    ValueSpec,
    WordOrder,
    WriteSpec,
)
from gateway.errors import FrameError
from gateway.pwm import amps_to_duty, duty_to_amps
from gateway.reading import PilotState, Reading

_STRUCT = {
    DataType.U16: ">H",
    DataType.I16: ">h",
    DataType.U32: ">I",
    DataType.I32: ">i",
    DataType.U64: ">Q",
    DataType.I64: ">q",
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


def raw_value(spec: ValueSpec, words: Sequence[int]) -> int | float | None:
    """A number value's raw form: its bits where it has a bit range; None for "not available" (spec.invalid)."""
    raw = decode_raw(words, spec.type, spec.word_order)
    if spec.bits is not None:
        low, high = spec.bits
        raw = (int(raw) >> low) & ((1 << (high - low + 1)) - 1)
    # A float register of NaN says "not available" (Alfen: reserved or unavailable registers read 0xFFFF).
    if raw in spec.invalid or (isinstance(raw, float) and math.isnan(raw)):
        return None
    return raw


def decode_value(spec: ValueSpec, words: Sequence[int]) -> float | None:
    """A number value in its unit; None where the raw value is the device's "not available" (spec.invalid)."""
    raw = raw_value(spec, words)
    if raw is None:
        return None
    value = raw * spec.scale
    return duty_to_amps(value) if spec.convert is Conversion.PWM_DUTY else value


# A string register image that is entirely one of these says "no text" (no tag presented).
_EMPTY_WORDS = (0x0000, 0xFFFF)


def decode_string(words: Sequence[int], encoding: TextEncoding = TextEncoding.ASCII) -> str | None:
    """Text: ASCII 2 characters per register, high byte first, or UTF-16BE one per register; None for no text.

    Leading NULs go (a right-aligned UID, as evcc trims them), then the text
    ends at the first NUL and loses trailing spaces (fixed-size fields are
    padded with either). All 0x0000 or all 0xFFFF (an erased field) is no
    text, as is nothing left after trimming. A character outside printable
    ASCII raises ValueError: the device said something that is not text.
    """
    if not words or (words[0] in _EMPTY_WORDS and all(w == words[0] for w in words)):
        return None
    if encoding is TextEncoding.UTF16:
        # One character per register: a byte string of the low bytes, once each high byte is proven 0.
        if any(w > 0xFF for w in words):
            raise ValueError(f"not ASCII text in UTF-16: {[hex(w) for w in words]}")
        data = bytes(words)
    else:
        data = b"".join(w.to_bytes(2, "big") for w in words)
    data = data.lstrip(b"\0").split(b"\0", 1)[0].rstrip(b" ")
    if any(not 0x20 <= b <= 0x7E for b in data):
        raise ValueError(f"not printable ASCII: {data!r}")
    return data.decode("ascii") or None


def encode_string(text: str | None, count: int, encoding: TextEncoding = TextEncoding.ASCII) -> list[int]:
    """The inverse of decode_string: `text` in `count` registers, padded with NUL; None or "" -> all zeros.

    Raises ValueError for text that is not printable ASCII or does not fit.
    """
    text = text or ""
    if not (text.isascii() and text.isprintable()):
        raise ValueError(f"{text!r} is not printable ASCII")
    data = text.encode("ascii")
    per_register = 1 if encoding is TextEncoding.UTF16 else 2
    if len(data) > per_register * count:
        raise ValueError(f"{text!r} does not fit {count} registers ({per_register * count} characters)")
    if encoding is TextEncoding.UTF16:
        return list(data.ljust(count, b"\0"))
    data = data.ljust(2 * count, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def encode_value(spec: ValueSpec | WriteSpec, value: float) -> list[int]:
    """Engineering value -> words; the inverse of decode_value (rounded to the register's resolution).

    A PWM-duty register gets the duty cycle that offers `value` amperes, rounded
    down, so that the charger never offers more than it was told (ValueError
    for a current no duty cycle offers: a pause is written otherwise).
    """
    raw: int | float
    if spec.convert is Conversion.PWM_DUTY:
        raw = math.floor(amps_to_duty(value) / spec.scale + 1e-9)
    else:
        raw = value / spec.scale
        if spec.type.integer:
            raw = round(raw)
    if isinstance(spec, ValueSpec) and spec.bits is not None:
        return insert_field(spec, [0] * spec.type.words, raw)
    return encode_raw(raw, spec.type, spec.word_order)


# The unsigned type of each register width: a bit field is cut from, and put into, the plain bits.
_UNSIGNED = {1: DataType.U16, 2: DataType.U32, 4: DataType.U64}


def field_range(spec: ValueSpec) -> tuple[int, int]:
    """The raw values an integer value can take: its bit field's, else its type's."""
    if spec.bits is not None:
        return 0, (1 << (spec.bits[1] - spec.bits[0] + 1)) - 1
    return INT_RANGES[spec.type]


def insert_field(spec: ValueSpec, words: Sequence[int], raw: int | float) -> list[int]:
    """`words` (the value's registers, wire order) with `raw` put into the value's bits; the other bits kept.

    A value without a bit range takes the whole registers. The inverse of raw_value's cut.
    """
    if spec.bits is None:
        return encode_raw(raw, spec.type, spec.word_order)
    unsigned = _UNSIGNED[spec.type.words]
    low, high = spec.bits
    mask = ((1 << (high - low + 1)) - 1) << low
    current = int(decode_raw(words, unsigned, spec.word_order))
    return encode_raw((current & ~mask) | ((int(raw) << low) & mask), unsigned, spec.word_order)


def words_of(spec: ValueSpec, blocks: Mapping[ReadBlock, Sequence[int]]) -> Sequence[int]:
    """The words of one value, cut out of whichever read block covers it."""
    for block, words in blocks.items():
        if block.covers(spec.table, spec.address, spec.words):
            if len(words) != block.count:
                raise FrameError(f"block {block.table.value}@{block.address} returned {len(words)} of {block.count} registers")
            start = spec.address - block.address
            return words[start : start + spec.words]
    raise KeyError(f"no read block covers {spec.name}")


def decode_values(profile: Profile, blocks: Mapping[ReadBlock, Sequence[int]]) -> dict[str, float | str | None]:
    """Every value of the profile by name, in its unit; None where the device says "not available".

    Text that is not text is a FrameError: the slave said something we cannot interpret.
    """
    out: dict[str, float | str | None] = {}
    for name, spec in profile.values.items():
        words = words_of(spec, blocks)
        if spec.type is DataType.STRING:
            try:
                out[name] = decode_string(words, spec.encoding)
            except ValueError as exc:
                raise FrameError(f"{profile.name}: {name}: {exc}") from exc
        else:
            out[name] = decode_value(spec, words)
    return out


def _state(profile: Profile, blocks: Mapping[ReadBlock, Sequence[int]]) -> tuple[PilotState | None, int | str | None]:
    """The pilot state and the vendor's raw state (or the raws its state rules tested)."""
    if profile.state_rules:
        raws = {}
        for rule in profile.state_rules:
            for name in rule.when:
                if name not in raws:
                    tested = profile.values[name]
                    raws[name] = raw_value(tested, words_of(tested, blocks))
            if all(raws[name] in allowed for name, allowed in rule.when.items()):
                return PilotState.parse(rule.code), " ".join(f"{name}={raw}" for name, raw in raws.items())
        raise FrameError(f"{profile.name}: no state rule matches {raws}")  # the loader requires a last catch-all rule
    spec = profile.values.get("state")
    if spec is None:
        return None, None
    words = words_of(spec, blocks)
    vendor: int | str | None
    if spec.type is DataType.STRING:
        try:
            vendor = decode_string(words, spec.encoding)
        except ValueError as exc:
            raise FrameError(f"{profile.name}: state: {exc}") from exc
    else:
        raw = raw_value(spec, words)
        vendor = None if raw is None else int(raw)
    if vendor is None:
        raise FrameError(f"{profile.name}: the device says its state is not available")
    code = spec.enum.get(vendor)
    if code is None:
        raise FrameError(f"{profile.name}: unknown vendor state {vendor!r}")
    return PilotState.parse(code), vendor


def decode_reading(profile: Profile, blocks: Mapping[ReadBlock, Sequence[int]]) -> Reading:
    """Every value of the profile, decoded from one poll's blocks.

    A state value outside the profile's enum is a FrameError: the slave said
    something we cannot interpret, which must not pass for a real state. So is
    a state the device calls "not available", and text that is not ASCII.
    A number the device calls "not available" (its `invalid` raw values) reads
    as None, as if the profile had no register for it, and is left out of extra.
    """
    values = decode_values(profile, blocks)
    state, vendor_state = _state(profile, blocks)

    def number(name: str) -> float | None:
        value = values.get(name)
        return value if isinstance(value, (int, float)) else None

    def phases(prefix: str) -> tuple[float | None, float | None, float | None]:
        return (number(f"{prefix}_l1"), number(f"{prefix}_l2"), number(f"{prefix}_l3"))

    enabled = number("charging_enabled")
    tag = values.get("id_tag")
    return Reading(
        state=state,
        vendor_state=vendor_state,
        energy_wh=number("energy"),
        power_w=number("power"),
        current_a=phases("current"),
        voltage_v=phases("voltage"),
        applied_limit_a=number("applied_current_limit"),
        charging_enabled=None if enabled is None else enabled != 0,
        id_tag=tag if isinstance(tag, str) else None,
        extra=tuple((k, v) for k, v in values.items() if k not in ROLES and v is not None),
    )


def identify_matches(profile: Profile, blocks: Mapping[ReadBlock, Sequence[int]]) -> bool:
    """Whether the words the device answered to the profile's blocks are this model's, by its identify checks.

    The reading must decode (a state in the enum, text that is text) and every
    check must hold; a profile without checks matches whatever decodes.
    """
    try:
        values = decode_values(profile, blocks)
        _state(profile, blocks)  # the rest of what decode_reading refuses: a state outside the enum or rules
    except FrameError:
        return False
    return all(check.holds(values.get(check.value)) for check in profile.identify)


def chargeable_current(profile: Profile, amperes: float) -> float:
    """The current a charger can be told to offer for `amperes`: below min_current_a it pauses
    (IEC 61851-1 Table A.8: no PWM duty cycle offers less than 6 A), above max_current_a it is capped."""
    if amperes < profile.min_current_a:
        return profile.pause_current_a
    return min(amperes, profile.max_current_a)


@dataclass(frozen=True)
class RegisterWrite:
    """One write the gateway makes: a holding register (FC16 if `multiple`, else FC06), or a coil (FC05, words (0|1,))."""

    address: int
    words: tuple[int, ...]
    multiple: bool
    note: str
    table: Table = Table.HOLDING


def control_writes(profile: Profile, amperes: float) -> list[RegisterWrite]:
    """The writes, in order, that make a charger offer `amperes`: below its minimum, what pausing means for it.

    Pausing writes the pause current (Heidelberg 261 = 0), or the pause raw
    value (ABL 0x0014 = 0x03E8, 100 % duty: no PWM), or the enable register or
    coil off (Phoenix coil 400, Mennekes 0x0D05; its current register is then
    left alone, as Mennekes reads 0 there as "unlimited"). Offering writes the
    current, then the enable on, so the device never charges at a stale limit.
    """
    spec = profile.current_limit
    if spec is None:
        raise ValueError(f"{profile.name} has no current-limit register")
    offer = chargeable_current(profile, amperes)
    enable = profile.enable
    if offer < profile.min_current_a:
        if enable is not None:
            return [RegisterWrite(enable.address, (enable.off,), enable.multiple, "pause (enable off)", enable.table)]
        if profile.pause_raw is not None:
            return [RegisterWrite(spec.address, (profile.pause_raw,), spec.multiple, "pause")]
        return [RegisterWrite(spec.address, tuple(encode_value(spec, offer)), spec.multiple, "pause")]
    writes = [RegisterWrite(spec.address, tuple(encode_value(spec, offer)), spec.multiple, f"current limit {offer:g} A")]
    if enable is not None:
        writes.append(RegisterWrite(enable.address, (enable.on,), enable.multiple, "enable", enable.table))
    return writes


def offer(profile: Profile, amperes: float) -> float:
    """The current a limit offers: below the minimum is a pause (IEC 61851-1 Table A.8: no duty cycle offers less)."""
    return amperes if amperes >= profile.min_current_a else 0.0


def offered_current(profile: Profile, reading: Reading) -> float | None:
    """What a charger offers by what it reads back: 0 when its enable is off or its limit is a pause; None: unknown."""
    if reading.charging_enabled is False:
        return 0.0
    applied = reading.applied_limit_a
    if applied is None or (profile.enable is not None and reading.charging_enabled is None):
        return None
    return offer(profile, applied)


def decode_written(spec: WriteSpec, words: Sequence[int]) -> float | None:
    """A written register's words read back as the value they stand for (scale and conversion applied)."""
    as_read = ValueSpec("written", Table.HOLDING, spec.address, spec.type, spec.word_order, spec.scale, convert=spec.convert)
    return decode_value(as_read, words)


def readback_offer(profile: Profile, amperes: float) -> float:
    """What a charger reads back as offered once told to offer `amperes`: 0 for a pause, else the current
    the written register stands for (ABL: 16 A is duty 26.6 %, raw 266, which offers 15.96 A)."""
    spec = profile.current_limit
    if spec is None or amperes < profile.min_current_a:
        return 0.0
    value = decode_written(spec, encode_value(spec, amperes))
    return 0.0 if value is None else offer(profile, value)


def keepalive_writes(profile: Profile, amperes: float) -> list[RegisterWrite]:
    """The writes that keep the slave's watchdog from striking, where a poll alone does not.

    heartbeat: the profile's heartbeat write (Mennekes 0x0D00 = 0x55AA, Vestel
    6000 = 1); timeout_register: the timeout again (KEBA 5018); current_limit:
    the current limit again, before its validity time runs out (Alfen 1210).
    """
    watchdog = profile.watchdog
    if watchdog is None or watchdog.keepalive == "poll":
        return []
    if watchdog.keepalive == "heartbeat" and (beat := watchdog.heartbeat) is not None:
        return [RegisterWrite(beat.address, (beat.value,), beat.multiple, beat.note or "heartbeat")]
    if watchdog.keepalive == "timeout_register" and (spec := watchdog.timeout_register) is not None:
        return [_timeout_write(spec, watchdog.timeout_s)]
    return control_writes(profile, amperes)


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
        writes.append(_timeout_write(spec, watchdog.timeout_s))
    return writes


def _timeout_write(spec: WriteSpec, timeout_s: float) -> RegisterWrite:
    return RegisterWrite(spec.address, tuple(encode_value(spec, timeout_s)), spec.multiple, f"watchdog timeout {timeout_s:g} s")
