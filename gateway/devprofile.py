"""Device profiles: the register map of one charger or meter model, as plain data.

Profiles are YAML files (gateway/profiles/*.yaml, or a directory given in the
config); gateway.profile_loader reads and checks them into the typed form
held here. The YAML schema is documented in docs/profiles.md. A new model
needs a YAML file, never code.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from pathlib import Path


class Table(enum.Enum):
    """Modbus data table. Addresses are 0-based wire (PDU) addresses."""

    INPUT = "input"  # FC04
    HOLDING = "holding"  # FC03 read, FC06/FC16 write
    COIL = "coil"  # FC01 read (one 0/1 per coil), FC05 write single coil


class DataType(enum.Enum):
    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    U64 = "u64"
    I64 = "i64"
    F32 = "f32"
    F64 = "f64"
    STRING = "string"  # text; its register count is the value's `count`, its encoding the value's `encoding`

    @property
    def words(self) -> int:
        """Registers of a number type; a string has no fixed size (ValueSpec.words has it)."""
        if self is DataType.STRING:
            raise ValueError("a string's register count is given by its value spec's count")
        return {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "u64": 4, "i64": 4, "f32": 2, "f64": 4}[self.value]

    @property
    def integer(self) -> bool:
        return self not in (DataType.F32, DataType.F64, DataType.STRING)


# The types a number register can have: every type but string.
NUMBER_TYPES = tuple(t for t in DataType if t is not DataType.STRING)

# Smallest and largest raw value of each integer type.
INT_RANGES: dict[DataType, tuple[int, int]] = {
    t: ((-(1 << (16 * t.words - 1)), (1 << (16 * t.words - 1)) - 1) if t.value.startswith("i") else (0, (1 << (16 * t.words)) - 1))
    for t in NUMBER_TYPES
    if t.integer
}


class WordOrder(enum.Enum):
    """Order of the 16-bit words of a multi-register value; bytes inside a word are always big-endian."""

    HIGH_FIRST = "high_first"  # ABCD, Modbus convention
    LOW_FIRST = "low_first"  # CDAB, e.g. Carlo Gavazzi EM340


class TextEncoding(enum.Enum):
    ASCII = "ascii"  # 2 characters per register, high byte first
    UTF16 = "utf16"  # 1 UTF-16BE code unit per register (Vestel)


class Conversion(enum.Enum):
    """How an engineering value relates to the register beyond its scale."""

    # raw * scale is the control-pilot PWM duty cycle in %, standing for the current it
    # offers (IEC 61851-1 Table A.8); ABL sets its current this way.
    PWM_DUTY = "pwm_duty"


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
    "charging_enabled",
    "id_tag",
)

# The roles a meter fills for a connector whose charger has a separate meter.
METER_ROLES = tuple(r for r in ROLES if r == "energy" or r == "power" or r[:-1] in ("current_l", "voltage_l"))

# IEC 61851-1 control-pilot states a vendor state can map to. The digit is the
# EVSE side: 1 = EVSE does not allow charging (no PWM), 2 = EVSE allows it.
# A bare letter means the device does not say.
PILOT_CODES = ("A", "A1", "A2", "B", "B1", "B2", "C", "C1", "C2", "D", "D1", "D2", "E", "F")


@dataclass(frozen=True)
class ReadBlock:
    """One read request: `count` registers (or coils) from `address` in `table`.

    `unit` set: read from that unit rather than the connector's (Alfen: the
    station's registers answer on unit 200, each socket on its own unit).
    """

    table: Table
    address: int
    count: int
    unit: int | None = None

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
    enum: dict[int | str, str] = field(default_factory=dict)  # raw (text for a string) -> pilot code, "state" role
    count: int | None = None  # registers of a string value; None for a number
    invalid: tuple[int, ...] = ()  # raw values by which the device says "not available" (e.g. 0xFFFFFFFF)
    bits: tuple[int, int] | None = None  # (lowest, highest) bit of the integer that hold the value
    encoding: TextEncoding = TextEncoding.ASCII
    convert: Conversion | None = None

    def __post_init__(self) -> None:
        if (self.type is DataType.STRING) != (self.count is not None):
            raise ValueError(f"{self.name}: a string value needs a count, and only a string has one")

    @property
    def words(self) -> int:
        """How many registers the value occupies."""
        return self.count if self.count is not None else self.type.words


@dataclass(frozen=True)
class WriteSpec:
    """A holding register the gateway writes a number to: raw = value / scale (after `convert`)."""

    address: int
    type: DataType = DataType.U16
    word_order: WordOrder = WordOrder.HIGH_FIRST
    scale: float = 1.0
    multiple: bool = False  # FC16 (write multiple) instead of FC06 (write single)
    convert: Conversion | None = None


@dataclass(frozen=True)
class InitWrite:
    """A raw register write: made once whenever the slave is (re)found (standby off), or as a heartbeat."""

    address: int
    value: int
    multiple: bool = False
    note: str = ""


@dataclass(frozen=True)
class EnableSpec:
    """A register or coil that allows charging (`on`) or not (`off`), apart from the current limit.

    Where a profile has one, pausing writes `off` and the current-limit register
    only ever holds a current the device can offer (Mennekes: 0 there means
    "unlimited", so it must never be written to pause).
    """

    table: Table  # HOLDING or COIL
    address: int
    on: int = 1
    off: int = 0
    multiple: bool = False


@dataclass(frozen=True)
class Watchdog:
    """The slave's communication watchdog: it fails safe if the master is silent for timeout_s.

    keepalive says what resets it: "poll" (any request; the poll period must stay
    below timeout_s / 4, the margin evcc uses), "heartbeat" (writing `heartbeat`),
    "timeout_register" (writing the timeout again, KEBA) or "current_limit"
    (writing the current limit again before its validity time runs out, Alfen).
    Where the device has them, the gateway writes timeout_s to `timeout_register`
    (seconds after scale) and the site's fail-safe current to `failsafe_current`
    (amperes) whenever it (re)finds the slave, so that a dead master leaves the
    slave in a known state.
    """

    timeout_s: float
    keepalive: str = "poll"
    timeout_register: WriteSpec | None = None
    failsafe_current: WriteSpec | None = None
    heartbeat: InitWrite | None = None
    keepalive_every_s: float | None = None  # None: timeout_s / 4

    @property
    def keepalive_period_s(self) -> float:
        return self.keepalive_every_s if self.keepalive_every_s is not None else self.timeout_s / 4


@dataclass(frozen=True)
class StateRule:
    """One rule of a state made of several registers: when every named value's raw is in its set, the state is `code`."""

    when: dict[str, frozenset[int]]
    code: str


@dataclass(frozen=True)
class IdentifyCheck:
    """One thing the bus scan checks on a decoded value to tell this model from others."""

    value: str
    min: float | None = None
    max: float | None = None
    one_of: tuple[float, ...] | None = None
    pattern: str | None = None  # a regular expression a text value must match from its start

    def holds(self, got: float | str | None) -> bool:
        if got is None:
            return False
        if isinstance(got, str):
            return self.pattern is not None and re.match(self.pattern, got) is not None
        if self.pattern is not None:
            return False
        return (
            (self.min is None or got >= self.min)
            and (self.max is None or got <= self.max)
            and (self.one_of is None or any(abs(got - v) < 1e-9 for v in self.one_of))
        )


@dataclass(frozen=True)
class LineDefaults:
    """The line settings the device ships with; the config's bus settings win, with a warning on mismatch."""

    framing: Framing
    baudrate: int | None = None
    parity: str | None = None  # N, E, O
    stopbits: int | None = None
    bytesize: int | None = None
    unit: int | None = None  # the factory unit id, tried first by the bus scan
    ascii_reply_start: str = ":"  # ABL starts its ASCII replies with ">" (the gateway accepts both)


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
    repeat: int = 1  # every request is sent this many times and the last answer counts (ABL: 2)
    current_limit: WriteSpec | None = None  # chargers: amperes
    pause_current_a: float = 0.0  # value written to current_limit to pause charging
    pause_raw: int | None = None  # or: this raw value written to current_limit pauses (ABL 0x03E8: 100 % duty)
    enable: EnableSpec | None = None  # or: this register or coil pauses (off) and allows (on) charging
    min_current_a: float = 6.0
    max_current_a: float = 16.0
    phases: int = 3
    init_writes: tuple[InitWrite, ...] = ()
    watchdog: Watchdog | None = None
    state_rules: tuple[StateRule, ...] = ()  # a state made of several values, instead of one state register
    identify: tuple[IdentifyCheck, ...] = ()
    outlet_stride: int = 0  # address distance between the outlets of a multi-outlet controller
    notes: str = ""

    @property
    def has_state(self) -> bool:
        return "state" in self.values or bool(self.state_rules)

    def for_outlet(self, outlet: int) -> Profile:
        """The profile of outlet `outlet` (1-based): every address moved by outlet_stride * (outlet - 1).

        Blocks read from a fixed unit (the station's) stay where they are, and so
        do the values inside them.
        """
        shift = self.outlet_stride * (outlet - 1)
        if outlet < 1 or (outlet > 1 and self.outlet_stride == 0):
            raise ValueError(f"profile {self.name} has one outlet; outlet {outlet} does not exist")
        if shift == 0:
            return self
        fixed = [b for b in self.blocks if b.unit is not None]

        def moved(spec: ValueSpec) -> ValueSpec:
            if any(b.covers(spec.table, spec.address, spec.words) for b in fixed):
                return spec
            return dataclasses.replace(spec, address=spec.address + shift)

        def write(spec: WriteSpec | None) -> WriteSpec | None:
            return None if spec is None else dataclasses.replace(spec, address=spec.address + shift)

        watchdog = self.watchdog
        if watchdog is not None:
            watchdog = dataclasses.replace(
                watchdog,
                timeout_register=write(watchdog.timeout_register),
                failsafe_current=write(watchdog.failsafe_current),
                heartbeat=None if watchdog.heartbeat is None
                else dataclasses.replace(watchdog.heartbeat, address=watchdog.heartbeat.address + shift),
            )
        return dataclasses.replace(
            self,
            blocks=tuple(b if b.unit is not None else dataclasses.replace(b, address=b.address + shift) for b in self.blocks),
            values={name: moved(spec) for name, spec in self.values.items()},
            current_limit=write(self.current_limit),
            enable=None if self.enable is None else dataclasses.replace(self.enable, address=self.enable.address + shift),
            init_writes=tuple(dataclasses.replace(w, address=w.address + shift) for w in self.init_writes),
            watchdog=watchdog,
        )
