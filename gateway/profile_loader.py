"""Reading device profiles from YAML: the schema, the checks a schema cannot say, and the typed result.

Profiles are checked by the same machinery as the config (gateway.yamlschema):
every fault at once, each with file, line and key path. The schema is
documented in docs/profiles.md; the typed form is gateway.devprofile.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.devprofile import (
    INT_RANGES,
    NUMBER_TYPES,
    PILOT_CODES,
    ROLES,
    Conversion,
    DataType,
    EnableSpec,
    Framing,
    IdentifyCheck,
    InitWrite,
    LineDefaults,
    Profile,
    ReadBlock,
    StateRule,
    Table,
    TextEncoding,
    ValueSpec,
    Watchdog,
    WordOrder,
    WriteSpec,
)
from gateway.errors import ConfigError
from gateway.pwm import amps_to_duty
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

# Standard serial rates; anything else is almost always a typo (19020).
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
PARITIES = ("N", "E", "O")
STOPBITS = (1, 2)
BYTESIZES = (7, 8)
MAX_READ_COUNT = 125  # registers per FC03/FC04 request (Modbus Application Protocol V1.1b3 §6.3, §6.4)
MAX_COIL_COUNT = 2000  # coils per FC01 request (§6.1)
KEEPALIVES = ("poll", "heartbeat", "timeout_register", "current_limit")

# The unit each role must be in after `scale`, so the session logic never guesses.
ROLE_UNITS = {"energy": "Wh", "power": "W", "applied_current_limit": "A", "charging_enabled": ""} | {
    f"{q}_l{i}": u for q, u in (("current", "A"), ("voltage", "V")) for i in (1, 2, 3)
}

_BLOCK_KEYS = {"table", "address", "count"}

def _values_of(enum_type: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(str(member.value) for member in enum_type)


def _nonzero(value: float) -> str | None:
    return "must not be 0 (a raw value is multiplied by it)" if value == 0 else None


def _regex(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"is not a regular expression: {exc}"
    return None


def _value_name(name: str) -> str | None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        return "a value name must be lower-case letters, digits and _ (e.g. current_l1)"
    return None


_ADDRESS = Field(int, required=True, min=0, max=0xFFFF, description="0-based wire (PDU) address")
_TYPE = Field(str, default=DataType.U16.value, choices=_values_of(DataType))
_NUMBER_TYPE = Field(str, default=DataType.U16.value, choices=tuple(t.value for t in NUMBER_TYPES))
_WORD_ORDER = Field(str, default=WordOrder.HIGH_FIRST.value, choices=_values_of(WordOrder))
_SCALE = Field(float, default=1.0, check=_nonzero, description="engineering value = raw * scale")
_CONVERT = Field(str, choices=_values_of(Conversion), description="pwm_duty: raw * scale is a duty cycle in %")
_RAW = Field(int, min=0, max=0xFFFF, description="raw register value")
# A holding register the gateway writes a number to (control.current_limit, watchdog registers).
_WRITE = Map(
    {
        "address": _ADDRESS,
        "type": _NUMBER_TYPE,
        "word_order": _WORD_ORDER,
        "scale": _SCALE,
        "multiple": Field(bool, default=False, description="FC16 instead of FC06"),
        "convert": _CONVERT,
    }
)
# A raw value written as it is: an init write, a heartbeat.
_RAW_WRITE = Map(
    {
        "address": _ADDRESS,
        "value": Field(int, required=True, min=0, max=0xFFFF, description="raw register value"),
        "multiple": Field(bool, default=False),
        "note": Field(str, default=""),
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
                        "unit": Field(int, min=0, max=255, description="factory unit id, tried first by the scan"),
                        "ascii_reply_start": Field(str, default=":", choices=(":", ">")),
                    }
                ),
                required=True,
            ),
            "timing": Field(
                Map(
                    {
                        "inter_frame_delay_ms": Field(float, default=0.0, min=0, max=10_000),
                        "request_timeout_ms": Field(float, default=500.0, above=0, max=60_000),
                        "repeat": Field(int, default=1, min=1, max=5, description="sends of every request"),
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
                                "count": Field(int, required=True, min=1, max=MAX_COIL_COUNT),
                                "unit": Field(int, min=0, max=255, description="read from this unit, not the connector's"),
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
                                "enum": Field(DictOf(Field((int, str)), Field(str, choices=PILOT_CODES)), min=1),
                                "count": Field(int, min=1, max=MAX_READ_COUNT, description="registers of a string"),
                                "invalid": Field(ListOf(Field(int), single=True), description="raw values: 'not available'"),
                                "bits": Field(ListOf(Field(int, min=0, max=63)), min=2, max=2, description="[lowest, highest]"),
                                "encoding": Field(str, default=TextEncoding.ASCII.value, choices=_values_of(TextEncoding)),
                                "convert": _CONVERT,
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
                        "pause_raw": _RAW,
                        "enable": Field(
                            Map(
                                {
                                    "table": Field(str, required=True, choices=(Table.HOLDING.value, Table.COIL.value)),
                                    "address": _ADDRESS,
                                    # Not on/off: YAML 1.1 reads those keys as true/false.
                                    "on_value": Field(int, default=1, min=0, max=0xFFFF),
                                    "off_value": Field(int, default=0, min=0, max=0xFFFF),
                                    "multiple": Field(bool, default=False),
                                }
                            )
                        ),
                        "min_current_a": Field(float, default=6.0, above=0),
                        "max_current_a": Field(float, default=16.0, above=0),
                        "phases": Field(int, default=3, choices=(1, 3)),
                    }
                )
            ),
            "init_writes": Field(ListOf(Field(_RAW_WRITE)), default=[]),
            "watchdog": Field(
                Map(
                    {
                        "timeout_s": Field(float, required=True, above=0),
                        "keepalive": Field(str, default="poll", choices=KEEPALIVES),
                        "keepalive_every_s": Field(float, above=0, description="default: timeout_s / 4"),
                        "heartbeat": Field(_RAW_WRITE, description="written at every keepalive: heartbeat"),
                        "timeout_register": Field(_WRITE, description="written with timeout_s, in seconds"),
                        "failsafe_current": Field(_WRITE, description="written with the fail-safe current, in A"),
                    }
                )
            ),
            "state_rules": Field(
                ListOf(
                    Field(
                        Map(
                            {
                                "when": Field(DictOf(Field(str), Field(ListOf(Field(int), single=True), min=1)), default={}),
                                "state": Field(str, required=True, choices=PILOT_CODES),
                            }
                        )
                    )
                ),
                min=1,
            ),
            "identify": Field(
                ListOf(
                    Field(
                        Map(
                            {
                                "value": Field(str, required=True),
                                "min": Field(float),
                                "max": Field(float),
                                "one_of": Field(ListOf(Field(float), single=True), min=1),
                                "pattern": Field(str, min=1, check=_regex),
                            }
                        )
                    )
                ),
                default=[],
            ),
            "outlet_stride": Field(int, default=0, min=0, max=0xFFFF, description="address distance between outlets"),
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


def load_profiles(extra_dirs: Sequence[Path] = ()) -> tuple[dict[str, Profile], dict[str, tuple[Path, ConfigError]]]:
    """Every available profile, loaded: (name -> profile, name -> (file, its faults) for those that do not load).

    One broken site profile must not hide the others (profiles list, the bus scan).
    """
    loaded: dict[str, Profile] = {}
    broken: dict[str, tuple[Path, ConfigError]] = {}
    for name, path in available_profiles(extra_dirs).items():
        try:
            loaded[name] = load_profile(path)
        except ConfigError as exc:
            broken[name] = (path, exc)
    return loaded, broken


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
        if block["table"] != Table.COIL.value and block["count"] > MAX_READ_COUNT:
            doc.error(("blocks", i, "count"), f"a register read carries at most {MAX_READ_COUNT} registers")
        for j, other in blocks[:n]:
            if other["table"] == block["table"] and other.get("unit") == block.get("unit") and _overlap(block, other):
                doc.error(("blocks", i), f"overlaps blocks[{j}] ({_span(other)}); each register is read once per poll")
    # Which value lies in which block is only worth checking when every block is valid;
    # otherwise a broken block would drag false faults in with it.
    all_blocks = isinstance(raw_blocks, list) and len(blocks) == len(raw_blocks)
    values = data.get("values", {})
    for name, value in values.items():
        _check_value(doc, name, value, [b for _, b in blocks] if all_blocks else None)
    _check_state(doc, data)
    _check_control(doc, data)
    _check_watchdog(doc, data)
    for i, check in enumerate(data.get("identify", [])):
        if not isinstance(check, dict) or "value" not in check:
            continue
        spec = values.get(check["value"])
        if spec is None:
            if _has(doc.data, "values"):
                doc.error(("identify", i, "value"), f"no value named {check['value']!r} in values")
            continue
        text = spec.get("type") == DataType.STRING.value
        if text != ("pattern" in check) or (text and check.keys() & {"min", "max", "one_of"}):
            what = "a text value is checked by pattern only" if text else "pattern is for text values only"
            doc.error(("identify", i), what)


def _check_state(doc: Document, data: dict[str, Any]) -> None:
    values = data.get("values", {})
    rules = data.get("state_rules")
    if rules is not None:
        if "state" in values:
            doc.error(("state_rules",), "give the state either as the value 'state' or as state_rules, not both")
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict):  # already reported
                continue
            for name in rule.get("when", {}):
                spec = values.get(name)
                if spec is None and _has(doc.data, "values"):
                    doc.error(("state_rules", i, "when", name), f"no value named {name!r} in values")
                elif spec is not None and not DataType(spec.get("type", "u16")).integer:
                    doc.error(("state_rules", i, "when", name), "a state rule tests integer values only")
        if rules and isinstance(rules[-1], dict) and rules[-1].get("when"):
            doc.error(("state_rules", len(rules) - 1), "the last rule needs no 'when': it says what every other case is")
    if data.get("kind") != "charger":
        return
    if rules is None:
        if not _has(doc.data, "values", "state"):
            doc.error(("values",), "a charger needs a 'state' value (with an enum of pilot codes) or state_rules")
        elif not _has(doc.data, "values", "state", "enum"):
            doc.error(("values", "state"), "the state value of a charger needs an enum: raw value -> pilot code")
    if not _has(doc.data, "control", "current_limit"):
        doc.error(("control",), "a charger needs control.current_limit: the register that sets its current")


def _check_control(doc: Document, data: dict[str, Any]) -> None:
    control = data.get("control", {})
    low, high, pause = control.get("min_current_a"), control.get("max_current_a"), control.get("pause_current_a")
    if low is not None and high is not None and low > high:
        doc.error(("control", "min_current_a"), f"is above max_current_a ({high:g} A)")
    if pause is not None and low is not None and pause >= low:
        doc.error(
            ("control", "pause_current_a"), f"must be below min_current_a ({low:g} A): writing it must stop charging"
        )
    limit = control.get("current_limit")
    if high is not None:
        _check_write(doc, ("control", "current_limit"), limit, high, f"max_current_a {high:g} A")
    if "pause_raw" in control:
        if "enable" in control:
            doc.error(("control", "pause_raw"), "give either pause_raw or enable: each says what pausing is")
        if limit is not None and DataType(limit.get("type", "u16")).words != 1:
            doc.error(("control", "pause_raw"), "is a raw value for a one-register current_limit")
    if limit is not None and limit.get("convert") == Conversion.PWM_DUTY.value and "pause_raw" not in control:
        if "enable" not in control:
            doc.error(("control", "current_limit", "convert"), "a PWM duty register pauses by pause_raw or enable")
    enable = control.get("enable")
    if enable is not None and enable.get("table") == Table.COIL.value:
        for key in ("on_value", "off_value"):
            if enable.get(key) not in (0, 1):
                doc.error(("control", "enable", key), "a coil is 0 or 1")
        if enable.get("multiple"):
            doc.error(("control", "enable", "multiple"), "a coil is written with FC05 only")


def _check_watchdog(doc: Document, data: dict[str, Any]) -> None:
    watchdog = data.get("watchdog", {})
    high = data.get("control", {}).get("max_current_a")
    timeout = watchdog.get("timeout_s")
    if timeout is not None:
        register = watchdog.get("timeout_register")
        _check_write(doc, ("watchdog", "timeout_register"), register, timeout, f"timeout_s {timeout:g} s")
        every = watchdog.get("keepalive_every_s")
        if every is not None and every >= timeout:
            doc.error(("watchdog", "keepalive_every_s"), f"must be below timeout_s ({timeout:g} s)")
    if "failsafe_current" in watchdog:
        if data.get("kind") == "meter":
            doc.error(("watchdog", "failsafe_current"), "is for chargers: a meter offers no current")
        elif high is not None:
            register = watchdog["failsafe_current"]
            _check_write(doc, ("watchdog", "failsafe_current"), register, high, f"max_current_a {high:g} A")
    needs = {"heartbeat": "heartbeat", "timeout_register": "timeout_register"}
    keepalive = watchdog.get("keepalive")
    if keepalive in needs and needs[keepalive] not in watchdog:
        doc.error(("watchdog", "keepalive"), f"keepalive {keepalive} needs watchdog.{needs[keepalive]}")
    if keepalive == "current_limit" and not _has(doc.data, "control", "current_limit"):
        doc.error(("watchdog", "keepalive"), "keepalive current_limit needs control.current_limit")
    if "heartbeat" in watchdog and keepalive != "heartbeat":
        doc.error(("watchdog", "heartbeat"), "is written only with keepalive: heartbeat")


def _check_write(doc: Document, path: KeyPath, spec: dict[str, Any] | None, largest: float, what: str) -> None:
    """A written register must hold the largest value written to it, and FC06 writes only one register."""
    if spec is None or not {"type", "scale"} <= spec.keys():
        return
    type_ = DataType(spec["type"])
    if type_.words > 1 and spec.get("multiple") is False:
        doc.error((*path, "multiple"), f"a {type_.value} register needs multiple: true (FC06 writes one register)")
    value = largest
    if spec.get("convert") == Conversion.PWM_DUTY.value:
        try:
            value = amps_to_duty(largest)
        except ValueError as exc:
            doc.error((*path, "convert"), f"{what}: {exc}")
            return
    bounds = INT_RANGES.get(type_)
    raw = round(value / spec["scale"])
    if bounds is not None and not bounds[0] <= raw <= bounds[1]:
        doc.error((*path, "scale"), f"{what} is raw {raw}, which does not fit {type_.value}")


def _check_value(doc: Document, name: str, value: dict[str, Any], blocks: list[dict[str, Any]] | None) -> None:
    path: KeyPath = ("values", name)
    role = difflib.get_close_matches(name, ROLES, n=1, cutoff=0.85)
    if name not in ROLES and role:
        doc.error(path, f"looks like a typo of the role {role[0]!r}; a misspelt role would be silently ignored")
    type_ = DataType(value["type"]) if "type" in value else None
    text = type_ is DataType.STRING
    if text and "count" not in value:
        doc.error((*path, "type"), "a string needs count: the number of registers")
    if type_ is not None and not text and "count" in value:
        doc.error((*path, "count"), "is only for type: string; a number's register count follows from its type")
    if name == "id_tag" and type_ is not None and not text:
        doc.error((*path, "type"), "the id_tag role must be type: string")
    if name in ROLES and name not in ("id_tag", "state") and text:
        doc.error((*path, "type"), f"the {name} role is a number, not a string")
    if not text and value.get("encoding", TextEncoding.ASCII.value) != TextEncoding.ASCII.value:
        doc.error((*path, "encoding"), "is only for type: string")
    bounds = INT_RANGES.get(type_) if type_ is not None else None
    if "invalid" in value and type_ is not None:
        if bounds is None:
            doc.error((*path, "invalid"), f"is only for integer types, not {type_.value}")
        elif bad := [v for v in value["invalid"] if isinstance(v, int) and not bounds[0] <= v <= bounds[1]]:
            doc.error((*path, "invalid"), f"{bad[0]} does not fit {type_.value}")
    if "bits" in value and type_ is not None:
        low, high = value["bits"]
        if bounds is None:
            doc.error((*path, "bits"), f"is only for integer types, not {type_.value}")
        elif not low <= high < 16 * type_.words:
            doc.error((*path, "bits"), f"must be [lowest, highest] inside the {16 * type_.words} bits of {type_.value}")
    if "convert" in value and (text or name != "applied_current_limit"):
        doc.error((*path, "convert"), "pwm_duty reads back a current: only for applied_current_limit")
    if value.get("table") == Table.COIL.value and type_ is not DataType.U16:
        doc.error((*path, "type"), "a coil is one bit: type u16 (0 or 1)")
    sized = not text or "count" in value
    if blocks is not None and {"table", "address", "type"} <= value.keys() and sized:
        table, first = value["table"], value["address"]
        words = value["count"] if text else DataType(value["type"]).words
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
    if "enum" in value:
        if name != "state":
            doc.error((*path, "enum"), "an enum is only for the state value")
        elif any(isinstance(k, str) != text for k in value["enum"]):
            doc.error((*path, "enum"), "keys are text for a string state and integers for a number")


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
    unit = f" of unit {block['unit']}" if block.get("unit") is not None else ""
    return f"{block['table']} {block['address']}..{block['address'] + block['count'] - 1}{unit}"


def _build_profile(data: dict[str, Any], source: Path) -> Profile:
    line, timing, control = data["line"], data["timing"], data["control"]
    watchdog = data.get("watchdog")
    enable = control.get("enable")
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
            unit=line.get("unit"),
            ascii_reply_start=line["ascii_reply_start"],
        ),
        blocks=tuple(ReadBlock(Table(b["table"]), b["address"], b["count"], b.get("unit")) for b in data["blocks"]),
        values={name: _value_spec(name, v) for name, v in data["values"].items()},
        inter_frame_delay_s=timing["inter_frame_delay_ms"] / 1000,
        request_timeout_s=timing["request_timeout_ms"] / 1000,
        repeat=timing["repeat"],
        current_limit=_write_spec(control.get("current_limit")),
        pause_current_a=control["pause_current_a"],
        pause_raw=control.get("pause_raw"),
        enable=(
            EnableSpec(Table(enable["table"]), enable["address"], enable["on_value"], enable["off_value"], enable["multiple"])
            if enable is not None
            else None
        ),
        min_current_a=control["min_current_a"],
        max_current_a=control["max_current_a"],
        phases=control["phases"],
        init_writes=tuple(_raw_write(w) for w in data["init_writes"]),
        watchdog=(
            Watchdog(
                watchdog["timeout_s"],
                watchdog["keepalive"],
                _write_spec(watchdog.get("timeout_register")),
                _write_spec(watchdog.get("failsafe_current")),
                _raw_write(watchdog["heartbeat"]) if "heartbeat" in watchdog else None,
                watchdog.get("keepalive_every_s"),
            )
            if watchdog is not None
            else None
        ),
        state_rules=tuple(
            StateRule({name: frozenset(raws) for name, raws in rule["when"].items()}, rule["state"])
            for rule in data.get("state_rules", [])
        ),
        identify=tuple(
            IdentifyCheck(
                c["value"], c.get("min"), c.get("max"),
                tuple(c["one_of"]) if "one_of" in c else None, c.get("pattern"),
            )
            for c in data["identify"]
        ),
        outlet_stride=data["outlet_stride"],
        notes=data["notes"],
    )


def _value_spec(name: str, v: dict[str, Any]) -> ValueSpec:
    return ValueSpec(
        name=name,
        table=Table(v["table"]),
        address=v["address"],
        type=DataType(v["type"]),
        word_order=WordOrder(v["word_order"]),
        scale=v["scale"],
        unit=v["unit"],
        enum=dict(v.get("enum", {})),
        count=v.get("count"),
        invalid=tuple(v.get("invalid", ())),
        bits=(v["bits"][0], v["bits"][1]) if "bits" in v else None,
        encoding=TextEncoding(v["encoding"]),
        convert=Conversion(v["convert"]) if "convert" in v else None,
    )


def _raw_write(w: dict[str, Any]) -> InitWrite:
    return InitWrite(w["address"], w["value"], w["multiple"], w["note"])


def _write_spec(data: dict[str, Any] | None) -> WriteSpec | None:
    if data is None:
        return None
    type_, order = DataType(data["type"]), WordOrder(data["word_order"])
    convert = Conversion(data["convert"]) if "convert" in data else None
    return WriteSpec(data["address"], type_, order, data["scale"], data["multiple"], convert)
