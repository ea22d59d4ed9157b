"""Device profiles: the register map of one charger or meter model, as plain data.

Profiles are YAML files (gateway/profiles/*.yaml, or a directory given in the
config); this module holds the typed, validated form. The YAML schema is
documented in docs/profiles.md. A new model needs a YAML file, never code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


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

    @property
    def words(self) -> int:
        return {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2, "f64": 4}[self.value]


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
    below timeout_s / 4 (the margin evcc uses).
    """

    timeout_s: float
    keepalive: str = "poll"


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
