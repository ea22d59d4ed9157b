"""Device profiles: the shipped Heidelberg profile, and broken profile files reported fault by fault, with lines."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.devprofile import PILOT_CODES, ROLES, DataType, Framing, Table, ValueSpec, WordOrder, WriteSpec
from gateway.errors import ConfigError
from gateway.profile_loader import available_profiles, builtin_profile_dir, load_profile
from tests.test_config import JUNK, key_paths

HEIDELBERG = "heidelberg-energy-control"


def faults(path: Path) -> list[tuple[int | None, str, str]]:
    """(line, key path, message) of every fault load_profile reports."""
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    return [(i.line, i.path, i.message) for i in caught.value.issues]


def write(tmp_path: Path, text: str, name: str = "box") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_heidelberg_profile() -> None:
    p = load_profile(builtin_profile_dir() / "heidelberg-energy-control.yaml")
    assert (p.name, p.kind) == ("heidelberg-energy-control", "charger")
    assert p.line.framing is Framing.RTU
    assert (p.line.baudrate, p.line.parity, p.line.stopbits, p.line.bytesize) == (19200, "E", 1, 8)
    assert p.inter_frame_delay_s == pytest.approx(0.1)  # evcc's 100 ms
    assert p.request_timeout_s == pytest.approx(0.3)
    assert [(b.table, b.address, b.count) for b in p.blocks] == [(Table.INPUT, 4, 15), (Table.HOLDING, 257, 5)]
    assert set(ROLES) - {"id_tag", "charging_enabled"} <= set(p.values)  # no RFID over Modbus, no enable (reference §1)
    state = p.values["state"]
    assert (state.table, state.address) == (Table.INPUT, 5)
    assert state.enum == {2: "A1", 3: "A2", 4: "B1", 5: "B2", 6: "C1", 7: "C2", 8: "C2", 9: "E", 10: "F", 11: "E"}
    energy = p.values["energy"]
    assert (energy.address, energy.type, energy.word_order, energy.unit) == (
        17,
        DataType.U32,
        WordOrder.HIGH_FIRST,
        "Wh",
    )
    assert p.values["temperature"].type is DataType.I16
    assert p.values["current_l1"].scale == pytest.approx(0.1)
    limit = p.current_limit
    assert limit is not None and (limit.address, limit.type, limit.scale) == (261, DataType.U16, 0.1)
    assert (p.pause_current_a, p.min_current_a, p.max_current_a, p.phases) == (0, 6, 16, 3)
    assert [(w.address, w.value) for w in p.init_writes] == [(258, 4)]
    assert p.watchdog is not None and (p.watchdog.timeout_s, p.watchdog.keepalive) == (15, "poll")
    assert p.watchdog.timeout_register == WriteSpec(257, DataType.U16, scale=0.001)  # ms
    assert p.watchdog.failsafe_current == WriteSpec(262, DataType.U16, scale=0.1)  # 0.1 A, 0 = state F
    assert "V1.0.7" in p.notes


def test_every_builtin_profile_loads() -> None:
    found = available_profiles()
    assert "heidelberg-energy-control" in found
    for path in found.values():
        assert load_profile(path).name == path.stem


def test_extra_dirs_win_over_builtin_ones(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "heidelberg-energy-control.yaml").write_text("")
    (second / "heidelberg-energy-control.yaml").write_text("")
    (second / "site-meter.yaml").write_text("")
    (second / "readme.txt").write_text("")
    found = available_profiles([first, second, tmp_path / "missing"])
    assert found["heidelberg-energy-control"] == first / "heidelberg-energy-control.yaml"
    assert found["site-meter"] == second / "site-meter.yaml"
    assert "readme" not in found


# The lines of this file are asserted below: keep them where they are.
MANY_FAULTS = """\
name: other-name
kind: charger
description: Test box
line: {framing: rtu, baudrate: 19201, parity: E}
timing: {request_timeout_ms: 0}
blocks:
  - {table: input, address: 0, count: 10}
  - {table: holding, address: 100, count: 4}
  - {table: holding, address: 102, count: 4}
values:
  state: {table: input, address: 1}
  energy: {table: input, address: 8, type: u32, unit: kWh}
  power: {table: input, address: 9, type: u32, unit: W}
  curent_l1: {table: input, address: 2, scale: 0.1, unit: A}
  voltage_l1: {table: input, address: 3, type: u17, unit: V}
control:
  current_limit: {address: 100, scale: 0.1, multiple: yes}
  min_current_a: 20
  max_current_a: 16
  phasess: 3
watchdog: {keepalive: poll}
"""


def test_every_fault_of_a_profile_with_its_line(tmp_path: Path) -> None:
    found = faults(write(tmp_path, MANY_FAULTS))
    assert [(line, path) for line, path, _ in found] == [
        (1, "name"),
        (4, "line.baudrate"),
        (5, "timing.request_timeout_ms"),
        (9, "blocks[2]"),
        (11, "values.state"),
        (12, "values.energy.unit"),
        (13, "values.power.address"),
        (14, "values.curent_l1"),
        (15, "values.voltage_l1.type"),
        (18, "control.min_current_a"),
        (20, "control.phasess"),
        (21, "watchdog.timeout_s"),
    ]
    messages = {(line, path): message for line, path, message in found}
    assert "file name 'box'" in messages[(1, "name")]
    assert "19201" in messages[(4, "line.baudrate")]
    assert "greater than 0" in messages[(5, "timing.request_timeout_ms")]
    assert "overlaps blocks[1] (holding 100..103)" in messages[(9, "blocks[2]")]
    assert "needs an enum" in messages[(11, "values.state")]
    assert "must be in Wh" in messages[(12, "values.energy.unit")]
    assert "input 9..10 is not inside one read block" in messages[(13, "values.power.address")]
    assert "'current_l1'" in messages[(14, "values.curent_l1")]
    assert "u17" in messages[(15, "values.voltage_l1.type")]
    assert "above max_current_a (16 A)" in messages[(18, "control.min_current_a")]
    assert "did you mean 'phases'?" in messages[(20, "control.phasess")]
    assert "required" in messages[(21, "watchdog.timeout_s")]


VALID = """\
name: box
kind: charger
description: Test box
line: {framing: rtu}
blocks:
  - {table: input, address: 0, count: 10}
values:
  state: {table: input, address: 0, enum: {0: A, 1: B, 2: C2}}
control:
  current_limit: {address: 100}
"""


def test_a_minimal_profile_gets_the_documented_defaults(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, VALID))
    assert (p.inter_frame_delay_s, p.request_timeout_s) == (0.0, 0.5)
    assert (p.pause_current_a, p.min_current_a, p.max_current_a, p.phases) == (0.0, 6.0, 16.0, 3)
    assert p.values["state"].type is DataType.U16 and p.values["state"].word_order is WordOrder.HIGH_FIRST
    assert p.current_limit is not None and not p.current_limit.multiple
    assert p.init_writes == () and p.watchdog is None and p.notes == ""


@pytest.mark.parametrize(
    ("old", "new", "line", "path", "message"),
    [
        ("kind: charger", "kind: charger\nkind: meter", 3, "kind", "duplicate key 'kind' (first given at line 2)"),
        ("count: 10}", "count: 126}", 6, "blocks[0].count", "at most 125"),
        ("address: 0, count: 10}", "address: 65530, count: 10}", 6, "blocks[0].count", "past the last register"),
        ("{0: A, 1: B, 2: C2}", "{0: A, 1: X, 2: C2}", 8, "values.state.enum[1]", "must be one of"),
        ("{0: A, 1: B, 2: C2}", "{}", 8, "values.state.enum", "must not be empty"),
        (
            "values:\n",
            "values:\n  power: {table: input, address: 1, unit: W, enum: {1: A}}\n",
            8,
            "values.power.enum",
            "only for the state",
        ),
        ("values:\n", "values:\n  Power: {table: input, address: 1}\n", 8, "values.Power", "lower-case"),
        (
            "values:\n",
            "values:\n  power: {table: holding, address: 1, unit: W}\n",
            8,
            "values.power.address",
            "holding 1..1",
        ),
        ("control:\n  current_limit: {address: 100}", "control: {}", 9, "control", "needs control.current_limit"),
        (
            "  state: {table: input, address: 0, enum: {0: A, 1: B, 2: C2}}",
            "  power: {table: input, address: 0, unit: W}",
            7,
            "values",
            "needs a 'state' value",
        ),
        (
            "{address: 100}",
            "{address: 100}\n  pause_current_a: 6",
            11,
            "control.pause_current_a",
            "below min_current_a",
        ),
        ("{address: 100}", "{address: 100, scale: 0.0001}", 10, "control.current_limit.scale", "does not fit u16"),
        ("{address: 100}", "{address: 100, scale: 0}", 10, "control.current_limit.scale", "must not be 0"),
        (
            "{address: 100}",
            "{address: 100, multiple: maybe}",
            10,
            "control.current_limit.multiple",
            "must be true or false",
        ),
        ("line: {framing: rtu}", "line: {framing: rtu, parity: e}", 4, "line.parity", "did you mean 'E'?"),
        ("blocks:", "block:", 5, "block", "did you mean 'blocks'?"),
        ("description: Test box", "description: [Test box]", 3, "description", "must be text, got a list"),
        ("name: box", "name: 42", 1, "name", "put it in quotes"),
        (
            "line: {framing: rtu}",
            "line: {framing: rtu}\nwatchdog: {timeout_s: 15, keepalive: write}",
            5,
            "watchdog.keepalive",
            "must be one of poll",
        ),
        # strings, "not available" values and the watchdog's registers
        ("values:\n", "values:\n  model: {table: input, address: 1, type: string}\n", 8, "values.model.type", "needs count"),
        ("values:\n", "values:\n  model: {table: input, address: 1, count: 2}\n", 8, "values.model.count", "only for type: string"),
        (
            "values:\n",
            "values:\n  model: {table: input, address: 5, type: string, count: 6}\n",
            8,
            "values.model.address",
            "input 5..10 is not inside one read block",
        ),
        ("values:\n", "values:\n  id_tag: {table: input, address: 1, type: u32}\n", 8, "values.id_tag.type", "must be type: string"),
        (
            "values:\n",
            "values:\n  power: {table: input, address: 1, type: string, count: 2, unit: W}\n",
            8,
            "values.power.type",
            "is a number, not a string",
        ),
        (
            "values:\n",
            "values:\n  power: {table: input, address: 1, type: f32, unit: W, invalid: 0}\n",
            8,
            "values.power.invalid",
            "only for integer types",
        ),
        (
            "values:\n",
            "values:\n  power: {table: input, address: 1, unit: W, invalid: 0x10000}\n",
            8,
            "values.power.invalid",
            "65536 does not fit u16",
        ),
        (
            "line: {framing: rtu}",
            "line: {framing: rtu}\nwatchdog: {timeout_s: 100, timeout_register: {address: 257, scale: 0.001}}",
            5,
            "watchdog.timeout_register.scale",
            "timeout_s 100 s is raw 100000, which does not fit u16",
        ),
        (
            "line: {framing: rtu}",
            "line: {framing: rtu}\nwatchdog: {timeout_s: 15, failsafe_current: {address: 262, type: u32}}",
            5,
            "watchdog.failsafe_current.multiple",
            "needs multiple: true",
        ),
        (
            "line: {framing: rtu}",
            "line: {framing: rtu}\nwatchdog: {timeout_s: 15, failsafe_current: {address: 262, type: string}}",
            5,
            "watchdog.failsafe_current.type",
            "must be one of",
        ),
        (
            "line: {framing: rtu}",
            "line: {framing: rtu}\nwatchdog: {timeout_s: 15, failsafe_current: {address: 262, scale: 0.0001}}",
            5,
            "watchdog.failsafe_current.scale",
            "max_current_a 16 A is raw 160000",
        ),
        (
            "line: {framing: rtu}",
            "line: {framing: rtu}\nwatchdog: {timeout_s: 15, timeout_register: {adress: 257}}",
            5,
            "watchdog.timeout_register.adress",
            "did you mean 'address'?",
        ),
    ],
)
def test_each_fault_with_its_line(tmp_path: Path, old: str, new: str, line: int, path: str, message: str) -> None:
    assert old in VALID
    found = faults(write(tmp_path, VALID.replace(old, new, 1)))
    assert any(f == (line, path, f[2]) and message in f[2] for f in found), found


def test_string_invalid_and_watchdog_registers_are_loaded(tmp_path: Path) -> None:
    text = VALID.replace(
        "values:\n",
        "values:\n  id_tag: {table: input, address: 2, type: string, count: 8}\n"
        "  energy: {table: input, address: 0, type: u32, unit: Wh, invalid: 0xFFFFFFFF}\n",
    ).replace(
        "line: {framing: rtu}",
        "line: {framing: rtu}\nwatchdog:\n  timeout_s: 30\n"
        "  timeout_register: {address: 300, type: u32, multiple: true}\n  failsafe_current: {address: 302, scale: 0.1}",
    )
    p = load_profile(write(tmp_path, text))
    assert p.values["id_tag"] == ValueSpec("id_tag", Table.INPUT, 2, DataType.STRING, count=8)
    assert p.values["id_tag"].words == 8
    assert p.values["energy"].invalid == (0xFFFFFFFF,) and p.values["energy"].words == 2
    assert p.watchdog is not None and p.watchdog.timeout_s == 30
    assert p.watchdog.timeout_register == WriteSpec(300, DataType.U32, multiple=True)
    assert p.watchdog.failsafe_current == WriteSpec(302, scale=0.1)


def test_a_meter_has_no_failsafe_current(tmp_path: Path) -> None:
    text = VALID.replace("kind: charger", "kind: meter").replace(
        "line: {framing: rtu}", "line: {framing: rtu}\nwatchdog: {timeout_s: 15, failsafe_current: {address: 262}}"
    )
    assert (5, "watchdog.failsafe_current", "is for chargers: a meter offers no current") in faults(write(tmp_path, text))


def test_a_string_value_spec_needs_its_count() -> None:
    with pytest.raises(ValueError, match="needs a count"):
        ValueSpec("id_tag", Table.HOLDING, 720, DataType.STRING)
    with pytest.raises(ValueError, match="only a string"):
        ValueSpec("power", Table.HOLDING, 720, DataType.U16, count=2)
    with pytest.raises(ValueError, match="count"):
        _ = DataType.STRING.words


def test_missing_block_key_gives_the_required_fault_without_false_followers(tmp_path: Path) -> None:
    """A broken block must not also make every value 'outside any block'."""
    found = faults(write(tmp_path, VALID.replace("address: 0, count: 10}", "address: 0}")))
    assert found == [(6, "blocks[0].count", "is required")]


def test_a_meter_needs_no_state_or_control(tmp_path: Path) -> None:
    text = VALID.replace("kind: charger", "kind: meter").replace("control:\n  current_limit: {address: 100}\n", "")
    text = text.replace(
        "state: {table: input, address: 0, enum: {0: A, 1: B, 2: C2}}",
        "energy: {table: input, address: 0, type: f32, unit: Wh}",
    )
    p = load_profile(write(tmp_path, text))
    assert p.kind == "meter" and p.current_limit is None


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    found = faults(write(tmp_path, VALID.replace("values:\n", "values:\n  state: {table: input\n")))
    assert len(found) == 1 and found[0][0] in (8, 9) and "YAML syntax" in found[0][2]


def test_missing_profile_file(tmp_path: Path) -> None:
    assert faults(tmp_path / "nothing.yaml") == [(None, "", "cannot read the file: No such file or directory")]


def test_pilot_codes_of_the_reading_model_are_the_ones_allowed() -> None:
    from gateway.reading import PilotState

    for code in PILOT_CODES:
        PilotState.parse(code)  # every code a profile may use must be understood downstream


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("name", [HEIDELBERG, "bender-cc613"])
@settings(max_examples=100, deadline=None)
@given(st.data())
def test_fuzz_builtin_profile_with_one_value_replaced_by_junk(fuzz_dir: Path, name: str, data: st.DataObject) -> None:
    fuzz_file = fuzz_dir / f"{name}.yaml"
    profile = yaml.safe_load((builtin_profile_dir() / f"{name}.yaml").read_text())
    path = data.draw(st.sampled_from(key_paths(profile)[1:]))
    target = profile
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(JUNK)
    fuzz_file.write_text(yaml.safe_dump(profile))
    try:
        load_profile(fuzz_file)
    except ConfigError as exc:
        assert exc.issues and all(i.message for i in exc.issues)
