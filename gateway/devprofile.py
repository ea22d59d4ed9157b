"""Device profiles: the register map of one charger or meter model, as plain data.

Profiles are YAML files (gateway/profiles/*.yaml, or a directory given in the
config); this module holds the typed, validated form. The YAML schema is
documented in docs/profiles.md. A new model needs a YAML file, never code.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.yamlschema import (
    DictOf,
    Document,
    Field,
    KeyPath,
    ListOf,
    Map,
    load_document,
    validate,
)


class Table(enum.Enum):
    """Modbus register table. Addresses are 0-based wire (PDU) addresses."""

    INPUT = "input"  # FC04
    HOLDING = "holding"  # FC03 read, FC06/FC16 write


class DataType(enum.Enum):
    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    F32 = "f32"
    F64 = "f64"
    STRING = "string"  # ASCII, 2 characters per register, high byte first; its length is the value's `count`

    @property
    def words(self) -> int:
        """Registers of a number type; a string has no fixed size (ValueSpec.words has it)."""
        if self is DataType.STRING:
            raise ValueError("a string's register count is given by its value spec's count")
        return {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2, "f64": 4}[self.value]


# The types a number register can have: every type but string.
NUMBER_TYPES = tuple(t for t in DataType if t is not DataType.STRING)


class WordOrder(enum.Enum):
    """Order of the 16-bit words of a multi-register value; bytes inside a word are always big-endian."""

    HIGH_FIRST = "high_first"  # ABCD, Modbus convention
    LOW_FIRST = "low_first"  # CDAB, e.g. Carlo Gavazzi EM340


class Framing(enum.Enum):
    RTU = "rtu"
    ASCII = "ascii"
    TCP = "tcp"


# Semantic roles a profile's values can fill. The daemon knows these names;
# any other value name is read and shown but has no meaning to the session logic.
ROLES = (
    "state",
    "energy",
    "power",
    "current_l1",
    "current_l2",
    "current_l3",
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "applied_current_limit",
    "id_tag",
)

# IEC 61851-1 control-pilot states a vendor state can map to. The digit is the
# EVSE side: 1 = EVSE does not allow charging (no PWM), 2 = EVSE allows it.
# A bare letter means the device does not say.
PILOT_CODES = ("A", "A1", "A2", "B", "B1", "B2", "C", "C1", "C2", "D", "D1", "D2", "E", "F")


@dataclass(frozen=True)
class ReadBlock:
    """One read request: `count` registers from `address` in `table`."""

    table: Table
    address: int
    count: int

    def covers(self, table: Table, address: int, words: int) -> bool:
        return table is self.table and self.address <= address and address + words <= self.address + self.count


@dataclass(frozen=True)
class ValueSpec:
    """Where a value sits and how to turn its registers into a number in `unit`."""

    name: str
    table: Table
    address: int
    type: DataType = DataType.U16
    word_order: WordOrder = WordOrder.HIGH_FIRST
    scale: float = 1.0  # engineering value = raw * scale
    unit: str = ""
    enum: dict[int, str] = field(default_factory=dict)  # raw -> pilot code, for the "state" role
    count: int | None = None  # registers of a string value; None for a number
    invalid: int | None = None  # raw value by which the device says "not available" (e.g. 0xFFFFFFFF)

    def __post_init__(self) -> None:
        if (self.type is DataType.STRING) != (self.count is not None):
            raise ValueError(f"{self.name}: a string value needs a count, and only a string has one")

    @property
    def words(self) -> int:
        """How many registers the value occupies."""
        return self.count if self.count is not None else self.type.words


@dataclass(frozen=True)
class WriteSpec:
    """A holding register the gateway writes: raw = round(value / scale)."""

    address: int
    type: DataType = DataType.U16
    word_order: WordOrder = WordOrder.HIGH_FIRST
    scale: float = 1.0
    multiple: bool = False  # FC16 (write multiple) instead of FC06 (write single)


@dataclass(frozen=True)
class InitWrite:
    """A raw register write made once whenever the slave is (re)found, e.g. standby off."""

    address: int
    value: int
    multiple: bool = False
    note: str = ""


@dataclass(frozen=True)
class Watchdog:
    """The slave's communication watchdog: it fails safe if the master is silent for timeout_s.

    keepalive "poll" means any request resets it, so the poll period must stay
    below timeout_s / 4 (the margin evcc uses). Where the device has them, the
    gateway writes timeout_s to `timeout_register` (seconds after scale) and the
    site's fail-safe current to `failsafe_current` (amperes) whenever it
    (re)finds the slave, so that a dead master leaves the slave in a known state.
    """

    timeout_s: float
    keepalive: str = "poll"
    timeout_register: WriteSpec | None = None
    failsafe_current: WriteSpec | None = None


@dataclass(frozen=True)
class LineDefaults:
    """The line settings the device ships with; the config's bus settings win, with a warning on mismatch."""

    framing: Framing
    baudrate: int | None = None
    parity: str | None = None  # N, E, O
    stopbits: int | None = None
    bytesize: int | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    kind: str  # "charger" or "meter"
    description: str
    source: Path
    line: LineDefaults
    blocks: tuple[ReadBlock, ...]
    values: dict[str, ValueSpec]
    inter_frame_delay_s: float = 0.0  # silence kept on the line before each request to this device
    request_timeout_s: float = 0.5
    current_limit: WriteSpec | None = None  # chargers: amperes
    pause_current_a: float = 0.0  # value written to current_limit to pause charging
    min_current_a: float = 6.0
    max_current_a: float = 16.0
    phases: int = 3
    init_writes: tuple[InitWrite, ...] = ()
    watchdog: Watchdog | None = None
    notes: str = ""


# --- loading profiles from YAML (schema: docs/profiles.md) ----------------------------

# Standard serial rates; anything else is almost always a typo (19020).
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
PARITIES = ("N", "E", "O")
STOPBITS = (1, 2)
BYTESIZES = (7, 8)
MAX_READ_COUNT = 125  # registers per FC03/FC04 request (Modbus Application Protocol V1.1b3 §6.3, §6.4)

# The unit each role must be in after `scale`, so the session logic never guesses.
ROLE_UNITS = {"energy": "Wh", "power": "W", "applied_current_limit": "A"} | {
    f"{q}_l{i}": u for q, u in (("current", "A"), ("voltage", "V")) for i in (1, 2, 3)
}

_BLOCK_KEYS = {"table", "address", "count"}

# Largest raw value an integer register type holds, to check current_limit can be written.
_INT_RANGES = {
    DataType.U16: (0, 0xFFFF),
    DataType.I16: (-0x8000, 0x7FFF),
    DataType.U32: (0, 0xFFFFFFFF),
    DataType.I32: (-0x80000000, 0x7FFFFFFF),
}


def _values_of(enum_type: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(str(member.value) for member in enum_type)


def _nonzero(value: float) -> str | None:
    return "must not be 0 (a raw value is multiplied by it)" if value == 0 else None


def _value_name(name: str) -> str | None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        return "a value name must be lower-case letters, digits and _ (e.g. current_l1)"
    return None


_ADDRESS = Field(int, required=True, min=0, max=0xFFFF, description="0-based wire (PDU) address")
_TYPE = Field(str, default=DataType.U16.value, choices=_values_of(DataType))
_NUMBER_TYPE = Field(str, default=DataType.U16.value, choices=tuple(t.value for t in NUMBER_TYPES))
_WORD_ORDER = Field(str, default=WordOrder.HIGH_FIRST.value, choices=_values_of(WordOrder))
_SCALE = Field(float, default=1.0, check=_nonzero, description="engineering value = raw * scale")
# A holding register the gateway writes a number to (control.current_limit, watchdog registers).
_WRITE = Map(
    {
        "address": _ADDRESS,
        "type": _NUMBER_TYPE,
        "word_order": _WORD_ORDER,
        "scale": _SCALE,
        "multiple": Field(bool, default=False, description="FC16 instead of FC06"),
    }
)

_PROFILE = Field(
    Map(
        {
            "name": Field(str, required=True, min=1, description="must equal the file name without .yaml"),
            "kind": Field(str, required=True, choices=("charger", "meter")),
            "description": Field(str, required=True, min=1),
            "notes": Field(str, default=""),
            "line": Field(
                Map(
                    {
                        "framing": Field(str, required=True, choices=_values_of(Framing)),
                        "baudrate": Field(int, choices=BAUDRATES),
                        "parity": Field(str, choices=PARITIES),
                        "stopbits": Field(int, choices=STOPBITS),
                        "bytesize": Field(int, choices=BYTESIZES),
                    }
                ),
                required=True,
            ),
            "timing": Field(
                Map(
                    {
                        "inter_frame_delay_ms": Field(float, default=0.0, min=0, max=10_000),
                        "request_timeout_ms": Field(float, default=500.0, above=0, max=60_000),
                    }
                )
            ),
            "blocks": Field(
                ListOf(
                    Field(
                        Map(
                            {
                                "table": Field(str, required=True, choices=_values_of(Table)),
                                "address": _ADDRESS,
                                "count": Field(int, required=True, min=1, max=MAX_READ_COUNT),
                            }
                        )
                    )
                ),
                required=True,
                min=1,
            ),
            "values": Field(
                DictOf(
                    Field(str, check=_value_name),
                    Field(
                        Map(
                            {
                                "table": Field(str, required=True, choices=_values_of(Table)),
                                "address": _ADDRESS,
                                "type": _TYPE,
                                "word_order": _WORD_ORDER,
                                "scale": _SCALE,
                                "unit": Field(str, default=""),
                                "enum": Field(DictOf(Field(int), Field(str, choices=PILOT_CODES)), min=1),
                                "count": Field(int, min=1, max=MAX_READ_COUNT, description="registers of a string"),
                                "invalid": Field(int, description="raw value meaning 'not available'"),
                            }
                        )
                    ),
                ),
                required=True,
                min=1,
            ),
            "control": Field(
                Map(
                    {
                        "current_limit": Field(_WRITE),
                        "pause_current_a": Field(float, default=0.0, min=0),
                        "min_current_a": Field(float, default=6.0, above=0),
                        "max_current_a": Field(float, default=16.0, above=0),
                        "phases": Field(int, default=3, choices=(1, 3)),
                    }
                )
            ),
            "init_writes": Field(
                ListOf(
                    Field(
                        Map(
                            {
                                "address": _ADDRESS,
                                "value": Field(int, required=True, min=0, max=0xFFFF, description="raw register value"),
                                "multiple": Field(bool, default=False),
                                "note": Field(str, default=""),
                            }
                        )
                    )
                ),
                default=[],
            ),
            "watchdog": Field(
                Map(
                    {
                        "timeout_s": Field(float, required=True, above=0),
                        "keepalive": Field(str, default="poll", choices=("poll",)),
                        "timeout_register": Field(_WRITE, description="written with timeout_s, in seconds"),
                        "failsafe_current": Field(_WRITE, description="written with the fail-safe current, in A"),
                    }
                )
            ),
        }
    )
)


def builtin_profile_dir() -> Path:
    """The profiles shipped with the gateway (package data gateway/profiles/*.yaml)."""
    return Path(__file__).resolve().parent / "profiles"


def available_profiles(extra_dirs: Sequence[Path] = ()) -> dict[str, Path]:
    """Every profile that can be named in a config: name (file stem) -> file.

    A profile in an extra directory wins over a built-in one of the same name,
    and an earlier extra directory over a later one, so a site can patch a
    shipped profile without touching the package.
    """
    found: dict[str, Path] = {}
    for directory in (builtin_profile_dir(), *reversed(list(extra_dirs))):
        if directory.is_dir():
            found.update({p.stem: p for p in sorted(directory.glob("*.yaml")) if p.is_file()})
    return dict(sorted(found.items()))


def load_profile(path: Path) -> Profile:
    """Read and check one profile file. Raises ConfigError listing every fault with its line."""
    doc = load_document(path)
    data = validate(doc, _PROFILE)
    if isinstance(data, dict):
        _check_profile(doc, data, Path(path).stem)
    doc.raise_if_invalid()
    return _build_profile(data, Path(path))


def _check_profile(doc: Document, data: dict[str, Any], stem: str) -> None:
    """The rules a schema cannot say: names, block layout, units of roles, what a charger needs."""
    if data.get("name", stem) != stem:
        doc.error(("name",), f"must equal the file name {stem!r}: configs name a profile by its file name")
    raw_blocks = doc.data.get("blocks") if isinstance(doc.data, dict) else None
    blocks = [(i, b) for i, b in enumerate(data.get("blocks", [])) if isinstance(b, dict) and _BLOCK_KEYS <= b.keys()]
    for n, (i, block) in enumerate(blocks):
        if block["address"] + block["count"] > 0x10000:
            doc.error(("blocks", i, "count"), "the block runs past the last register address 65535")
        for j, other in blocks[:n]:
            if other["table"] == block["table"] and _overlap(block, other):
                doc.error(("blocks", i), f"overlaps blocks[{j}] ({_span(other)}); each register is read once per poll")
    # Which value lies in which block is only worth checking when every block is valid;
    # otherwise a broken block would drag false faults in with it.
    all_blocks = isinstance(raw_blocks, list) and len(blocks) == len(raw_blocks)
    for name, value in data.get("values", {}).items():
        _check_value(doc, name, value, [b for _, b in blocks] if all_blocks else None)
    if data.get("kind") == "charger":
        if not _has(doc.data, "values", "state"):
            doc.error(("values",), "a charger needs a 'state' value (with an enum of pilot codes)")
        elif not _has(doc.data, "values", "state", "enum"):
            doc.error(("values", "state"), "the state value of a charger needs an enum: raw value -> pilot code")
        if not _has(doc.data, "control", "current_limit"):
            doc.error(("control",), "a charger needs control.current_limit: the register that sets its current")
    control = data.get("control", {})
    low, high, pause = control.get("min_current_a"), control.get("max_current_a"), control.get("pause_current_a")
    if low is not None and high is not None and low > high:
        doc.error(("control", "min_current_a"), f"is above max_current_a ({high:g} A)")
    if pause is not None and low is not None and pause >= low:
        doc.error(
            ("control", "pause_current_a"), f"must be below min_current_a ({low:g} A): writing it must stop charging"
        )
    if high is not None:
        _check_write(doc, ("control", "current_limit"), control.get("current_limit"), high, f"max_current_a {high:g} A")
    watchdog = data.get("watchdog", {})
    timeout = watchdog.get("timeout_s")
    if timeout is not None:
        register = watchdog.get("timeout_register")
        _check_write(doc, ("watchdog", "timeout_register"), register, timeout, f"timeout_s {timeout:g} s")
    if "failsafe_current" in watchdog:
        if data.get("kind") == "meter":
            doc.error(("watchdog", "failsafe_current"), "is for chargers: a meter offers no current")
        elif high is not None:
            register = watchdog["failsafe_current"]
            _check_write(doc, ("watchdog", "failsafe_current"), register, high, f"max_current_a {high:g} A")


def _check_write(doc: Document, path: KeyPath, spec: dict[str, Any] | None, largest: float, what: str) -> None:
    """A written register must hold the largest value written to it, and FC06 writes only one register."""
    if spec is None or not {"type", "scale"} <= spec.keys():
        return
    type_ = DataType(spec["type"])
    if type_.words > 1 and spec.get("multiple") is False:
        doc.error((*path, "multiple"), f"a {type_.value} register needs multiple: true (FC06 writes one register)")
    bounds = _INT_RANGES.get(type_)
    raw = round(largest / spec["scale"])
    if bounds is not None and not bounds[0] <= raw <= bounds[1]:
        doc.error((*path, "scale"), f"{what} is raw {raw}, which does not fit {type_.value}")


def _check_value(doc: Document, name: str, value: dict[str, Any], blocks: list[dict[str, Any]] | None) -> None:
    path: KeyPath = ("values", name)
    role = difflib.get_close_matches(name, ROLES, n=1, cutoff=0.85)
    if name not in ROLES and role:
        doc.error(path, f"looks like a typo of the role {role[0]!r}; a misspelt role would be silently ignored")
    type_ = DataType(value["type"]) if "type" in value else None
    if type_ is DataType.STRING and "count" not in value:
        doc.error((*path, "type"), "a string needs count: the number of registers (2 characters each)")
    if type_ is not None and type_ is not DataType.STRING and "count" in value:
        doc.error((*path, "count"), "is only for type: string; a number's register count follows from its type")
    if name == "id_tag" and type_ is not None and type_ is not DataType.STRING:
        doc.error((*path, "type"), "the id_tag role must be type: string")
    if name in ROLES and name != "id_tag" and type_ is DataType.STRING:
        doc.error((*path, "type"), f"the {name} role is a number, not a string")
    if "invalid" in value and type_ is not None:
        bounds = _INT_RANGES.get(type_)
        if bounds is None:
            doc.error((*path, "invalid"), f"is only for integer types, not {type_.value}")
        elif not bounds[0] <= value["invalid"] <= bounds[1]:
            doc.error((*path, "invalid"), f"{value['invalid']} does not fit {type_.value}")
    sized = type_ is not DataType.STRING or "count" in value
    if blocks is not None and {"table", "address", "type"} <= value.keys() and sized:
        table, first = value["table"], value["address"]
        words = value["count"] if type_ is DataType.STRING else DataType(value["type"]).words
        if not any(
            b["table"] == table and b["address"] <= first and first + words <= b["address"] + b["count"] for b in blocks
        ):
            where = ", ".join(_span(b) for b in blocks)
            doc.error(
                (*path, "address"), f"{table} {first}..{first + words - 1} is not inside one read block ({where})"
            )
    unit = ROLE_UNITS.get(name)
    if unit is not None and value.get("unit", unit) != unit:
        doc.error(
            (*path, "unit"), f"{name} must be in {unit}; use scale to convert (e.g. scale: 1000 for a kWh register)"
        )
    if name != "state" and "enum" in value:
        doc.error((*path, "enum"), "an enum is only for the state value")


def _has(data: Any, *keys: str) -> bool:
    """Whether the raw data has this key path with a value (a faulty one is reported elsewhere)."""
    for key in keys:
        if not isinstance(data, dict) or data.get(key) is None:
            return False
        data = data[key]
    return True


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["address"] < b["address"] + b["count"] and b["address"] < a["address"] + a["count"])


def _span(block: dict[str, Any]) -> str:
    return f"{block['table']} {block['address']}..{block['address'] + block['count'] - 1}"


def _build_profile(data: dict[str, Any], source: Path) -> Profile:
    line, timing, control = data["line"], data["timing"], data["control"]
    limit = control.get("current_limit")
    watchdog = data.get("watchdog")
    return Profile(
        name=data["name"],
        kind=data["kind"],
        description=data["description"],
        source=source,
        line=LineDefaults(
            framing=Framing(line["framing"]),
            baudrate=line.get("baudrate"),
            parity=line.get("parity"),
            stopbits=line.get("stopbits"),
            bytesize=line.get("bytesize"),
        ),
        blocks=tuple(ReadBlock(Table(b["table"]), b["address"], b["count"]) for b in data["blocks"]),
        values={
            name: ValueSpec(
                name=name,
                table=Table(v["table"]),
                address=v["address"],
                type=DataType(v["type"]),
                word_order=WordOrder(v["word_order"]),
                scale=v["scale"],
                unit=v["unit"],
                enum=dict(v.get("enum", {})),
                count=v.get("count"),
                invalid=v.get("invalid"),
            )
            for name, v in data["values"].items()
        },
        inter_frame_delay_s=timing["inter_frame_delay_ms"] / 1000,
        request_timeout_s=timing["request_timeout_ms"] / 1000,
        current_limit=_write_spec(limit),
        pause_current_a=control["pause_current_a"],
        min_current_a=control["min_current_a"],
        max_current_a=control["max_current_a"],
        phases=control["phases"],
        init_writes=tuple(InitWrite(w["address"], w["value"], w["multiple"], w["note"]) for w in data["init_writes"]),
        watchdog=(
            Watchdog(
                watchdog["timeout_s"],
                watchdog["keepalive"],
                _write_spec(watchdog.get("timeout_register")),
                _write_spec(watchdog.get("failsafe_current")),
            )
            if watchdog is not None
            else None
        ),
        notes=data["notes"],
    )


def _write_spec(data: dict[str, Any] | None) -> WriteSpec | None:
    if data is None:
        return None
    type_, order = DataType(data["type"]), WordOrder(data["word_order"])
    return WriteSpec(data["address"], type_, order, data["scale"], data["multiple"])
