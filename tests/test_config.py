"""Config loading: the shipped configs load; every fault is reported at once with its line and key path."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import load_config, load_config_with_warnings
from gateway.devprofile import Framing
from gateway.errors import ConfigError, ConfigIssue
from gateway.profile_loader import builtin_profile_dir
from gateway.settings import Config

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "config" / "demo.yaml"
EXAMPLE = REPO / "config" / "gateway.example.yaml"
HEIDELBERG = "heidelberg-energy-control"
KNOWN = ", ".join(sorted(p.stem for p in builtin_profile_dir().glob("*.yaml")))  # the built-in profiles, as listed in faults

Fault = tuple["int | None", str, str]


def faults(path: Path) -> list[Fault]:
    """(line, key path, message) of every fault, in the order reported."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.exit_code == 78
    return [(i.line, i.path, i.message) for i in caught.value.issues]


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the shipped configs ---------------------------------------------------------------------


def test_demo_config() -> None:
    config, warnings = load_config_with_warnings(DEMO)
    assert config.source == DEMO
    assert config.backend.url == "ws://127.0.0.1:9000/ocpp"
    assert [c.id for c in config.connectors] == [1, 2, 3, 4]
    line = config.bus("rs485-1")
    assert line.kind is Framing.RTU and line.port == str(REPO / ".demo" / "ttyRS485-1")
    assert line.parity == "N"  # a pty refuses parity E
    assert [(c.bus, c.unit) for c in config.connectors[:2]] == [("rs485-1", 1), ("rs485-1", 2)]
    assert [(c.bus, c.host, c.port, c.unit) for c in config.connectors[2:]] == [
        ("lan", "127.0.0.1", 15023, 1),
        ("lan", "127.0.0.1", 15024, 1),
    ]
    assert config.bus("lan").kind is Framing.TCP
    assert config.storage.path == REPO / ".demo" / "gateway.db"
    assert config.authorization.free_charging_id_tag == "DEMO-FREE"
    assert config.ocpp.meter_value_sample_interval_s == 10
    assert config.simulator.speed == 60 and config.simulator.seed == 7 and config.simulator.wire_delay
    assert config.simulator.idle_s == (180, 300) and config.simulator.session_kwh == (1.5, 4.0)
    assert set(config.profiles) == {HEIDELBERG}
    assert all(config.profile_of(c).name == HEIDELBERG for c in config.connectors)
    # The expected warnings: the demo backend is plain ws; the demo line is declared N, the profile says E.
    lines = DEMO.read_text().splitlines()
    lab_line, parity_line = lines.index("  insecure_lab_mode: true         # plain ws is for a lab only; the daemon warns at every start") + 1, lines.index("    parity: N") + 1
    assert sorted((w.line, w.path) for w in warnings) == [(lab_line, "backend.insecure_lab_mode"), (parity_line, "buses[0].parity")]
    assert any("expects E" in w.message for w in warnings)


def test_example_config_documents_every_key_and_loads() -> None:
    config, warnings = load_config_with_warnings(EXAMPLE)
    assert config.charge_point.identity == "CP-CLUSTER-01"
    assert config.backend.password_file == EXAMPLE.parent / "backend-password"  # need not exist
    # Not here: /etc/charger-gateway/profiles and the backend's files.
    assert sorted(w.path for w in warnings) == ["backend.ca_file", "backend.password_file", "profile_dirs[0]"]
    text = EXAMPLE.read_text()
    for section in ("charge_point", "backend", "buses", "connectors", "storage", "authorization", "ocpp", "simulator", "uplinks", "failover"):
        obj = getattr(config, section)
        for item in obj if isinstance(obj, tuple) else (obj,):
            for key in vars(item):
                assert f"{key}:" in text, f"{section}.{key} is not shown in the example"
    assert "profile_dirs:" in text


def test_load_config_logs_the_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        load_config(DEMO)
    assert any("buses[0].parity" in r.getMessage() for r in caplog.records)


# --- many faults at once ------------------------------------------------------------------------

# The lines of this file are asserted below: keep them where they are.
BROKEN = """\
charge_point:
  identity: "CP 01"
  vendor: ExampleVendorWithAVeryLongName
  model: M
backend:
  url: http://csms.example.net/ocpp
  reconect_max_s: 10
buses:
  - name: rs485-1
    kind: rtu
    port: /dev/ttyS1
    baudrat: 19200
    parity: X
  - name: rs485-2
    kind: rtu
    port: /dev/ttyS1
  - name: spare
    kind: ascii
    port: /dev/ttyS3
connectors:
  - {id: 1, bus: rs485-1, unit: 1, profile: heidelberg-energy-control}
  - {id: 1, bus: rs485-1, unit: 1, profile: heidelberg-energy-control}
  - {id: 3, bus: nowhere, unit: 300, profile: heidelberg}
  - {id: 0, bus: rs485-2, unit: 5, profile: heidelberg-energy-control}
storage: {}
"""


def test_a_broken_config_reports_every_fault_with_line_and_key_path(tmp_path: Path) -> None:
    found = faults(write(tmp_path, BROKEN))
    assert [(line, path) for line, path, _ in found] == [
        (2, "charge_point.identity"),
        (3, "charge_point.vendor"),
        (6, "backend.url"),
        (7, "backend.reconect_max_s"),
        (12, "buses[0].baudrat"),
        (13, "buses[0].parity"),
        (16, "buses[1].port"),
        (17, "buses[2].name"),
        (22, "connectors[1].id"),
        (22, "connectors[1].unit"),
        (23, "connectors[2].unit"),
        (23, "connectors[2].profile"),
        (23, "connectors[2].bus"),
        (24, "connectors[3].id"),
        (25, "storage.path"),
    ]
    messages = {(line, path): message for line, path, message in found}
    assert "letters, digits" in messages[(2, "charge_point.identity")]
    assert "at most 20" in messages[(3, "charge_point.vendor")]
    assert "wss://" in messages[(6, "backend.url")]
    assert "did you mean 'reconnect_max_s'?" in messages[(7, "backend.reconect_max_s")]
    assert "did you mean 'baudrate'?" in messages[(12, "buses[0].baudrat")]
    assert "one of N, E, O, got 'X'" in messages[(13, "buses[0].parity")]
    assert "already used by buses[0]" in messages[(16, "buses[1].port")]
    assert "no connector uses bus 'spare'" in messages[(17, "buses[2].name")]
    assert "connector id 1 is already used by connectors[0]" in messages[(22, "connectors[1].id")]
    assert "unit 1 on bus 'rs485-1' is already used by connectors[0]" in messages[(22, "connectors[1].unit")]
    assert "at most 255" in messages[(23, "connectors[2].unit")]
    assert f"did you mean {HEIDELBERG!r}? known: {KNOWN}" in messages[(23, "connectors[2].profile")]
    assert "unknown bus 'nowhere'; buses: rs485-1, rs485-2, spare" in messages[(23, "connectors[2].bus")]
    assert "at least 1" in messages[(24, "connectors[3].id")]
    assert messages[(25, "storage.path")] == "is required"
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "gateway.yaml")
    assert str(caught.value).splitlines()[0] == f"{tmp_path / 'gateway.yaml'}:2: charge_point.identity: " + found[0][2]


# --- cross-checks, one at a time -------------------------------------------------------------------

# A valid config; each case below changes one thing in it. Line numbers: buses[0] = 4,
# buses[1] = 5, connectors[0..2] = 7..9.
BASE = """\
charge_point: {identity: CP-1, vendor: V, model: M}
backend: {url: "wss://csms.example.net/ocpp"}
buses:
  - {name: line1, kind: rtu, port: /dev/ttyS1, parity: E, poll_interval_s: 2}
  - {name: lan, kind: tcp}
connectors:
  - {id: 1, bus: line1, unit: 1, profile: heidelberg-energy-control}
  - {id: 2, bus: line1, unit: 2, profile: heidelberg-energy-control}
  - {id: 3, bus: lan, host: gw-a.example, port: 502, unit: 1, profile: heidelberg-energy-control}
storage: {path: gateway.db}
"""
C0 = "  - {id: 1, bus: line1, unit: 1, profile: heidelberg-energy-control}\n"
M0 = "profile: heidelberg-energy-control"  # its first occurrence: connectors[0], line 7
C2 = "  - {id: 3, bus: lan, host: gw-a.example, port: 502, unit: 1, profile: heidelberg-energy-control}\n"
B1 = "  - {name: lan, kind: tcp}\n"


def test_the_base_config_is_clean(tmp_path: Path) -> None:
    config, warnings = load_config_with_warnings(write(tmp_path, BASE))
    assert warnings == []
    assert config.storage.path == tmp_path / "gateway.db"


ERRORS = [
    # (replace this, with this, line, key path, part of the message)
    ("{id: 2,", "{id: 1,", 8, "connectors[1].id", "connector id 1 is already used by connectors[0]"),
    ("unit: 2,", "unit: 1,", 8, "connectors[1].unit", "unit 1 on bus 'line1' is already used by connectors[0]"),
    (C2, C2 + C2.replace("id: 3", "id: 4").replace("gw-a", "GW-A"), 10, "connectors[3].unit", "GW-A.example:502 unit 1 is already used by connectors[2]"),
    (B1, B1 + "  - {name: line2, kind: rtu, port: /dev/ttyS1}\n", 6, "buses[2].port", "/dev/ttyS1 is already used by buses[0]"),
    ("bus: lan,", "bus: lam,", 9, "connectors[2].bus", "unknown bus 'lam'; buses: line1, lan"),
    (B1, B1 + "  - {name: spare, kind: tcp}\n", 6, "buses[2].name", "no connector uses bus 'spare'"),
    ("{id: 1, bus: line1, unit: 1, profile: heidelberg-energy-control}", "{id: 1, bus: line1, unit: 1, profile: nosuchbox}", 7, "connectors[0].profile", f"unknown profile 'nosuchbox'; known: {KNOWN}"),
    ("poll_interval_s: 2}", "poll_interval_s: 0.5}", 4, "buses[0].poll_interval_s", "a round over 2 dead device(s) takes 0.80 s"),
    ("poll_interval_s: 2}", "poll_interval_s: 2, request_timeout_s: 1}", 4, "buses[0].request_timeout_s", "takes 2.20 s"),
    ("kind: rtu", "kind: ascii", 7, "connectors[0].profile", "an ASCII line and an RTU line can never be mixed"),
    ("port: /dev/ttyS1, ", "", 4, "buses[0].port", "is required for a serial (rtu) bus"),
    ("{name: lan, kind: tcp}", "{name: lan, kind: tcp, port: /dev/ttyS2}", 5, "buses[1].port", "is for serial buses"),
    ("host: gw-a.example, ", "", 9, "connectors[2].host", "is required: bus 'lan' is tcp"),
    ("{id: 1, bus: line1,", "{id: 1, bus: line1, host: gw-b.example,", 7, "connectors[0].host", "only for tcp buses"),
    ("{id: 1, bus: line1, unit: 1", "{id: 1, bus: line1, unit: 0", 7, "connectors[0].unit", "must be 1..247 on a serial line"),
    ("{name: lan, kind: tcp}", "{name: line1, kind: tcp}", 5, "buses[1].name", "bus name 'line1' is already used by buses[0]"),
    ("poll_interval_s: 2}", "poll_interval_s: 20}", 4, "buses[0].poll_interval_s", "not below the 15 s watchdog"),
    ("profile: heidelberg-energy-control}\n  - {id: 2", "profile: heidelberg-energy-control, max_current_a: 4}\n  - {id: 2", 7, "connectors[0].max_current_a", "below the 6 A minimum"),
    ('"wss://csms.example.net/ocpp"}', '"wss://csms.example.net/ocpp", reconnect_min_s: 10, reconnect_max_s: 5}', 2, "backend.reconnect_min_s", "above reconnect_max_s"),
    ('"wss://csms.example.net/ocpp"', '"wss://csms.example.net/ocpp?x=1"', 2, "backend.url", "without ?query"),
    ('"wss://csms.example.net/ocpp"', '"wss://csms.example.net:99999/ocpp"', 2, "backend.url", "not a valid URL"),
    ("identity: CP-1", "identity: CP:1", 1, "charge_point.identity", "letters, digits and . _ ~ -"),
    ("storage: {path: gateway.db}", "storage: {path: gateway.db}\nsimulator: {idle_s: [300, 60]}", 11, "simulator.idle_s", "[low, high]"),
    ("storage: {path: gateway.db}", "storage: {path: gateway.db}\nocpp: {meter_values_sampled_data: [Power.Active.Imprt]}", 11, "ocpp.meter_values_sampled_data[0]", "did you mean 'Power.Active.Import'?"),
    ("storage: {path: gateway.db}", "storage: {path: gateway.db}\nsimulator: {speed: .nan}", 11, "simulator.speed", "finite"),
    ("parity: E", "parity: yes", 4, "buses[0].parity", "put it in quotes"),
    # A connector's meter: a meter profile, on a known bus, its unit counted on that bus.
    (M0, M0 + ", meter: {bus: line1, unit: 5, profile: heidelberg-energy-control}", 7, "connectors[0].meter.profile", "a connector's meter needs a meter profile"),
    (M0, M0 + ", meter: {bus: line1, unit: 2, profile: eastron-sdm630}", 8, "connectors[1].unit", "unit 2 on bus 'line1' is already used by connectors[0].meter"),
    (M0, M0 + ", meter: {bus: nowhere, unit: 5, profile: eastron-sdm630}", 7, "connectors[0].meter.bus", "unknown bus 'nowhere'"),
    (M0, M0 + ", meter: {bus: lan, unit: 5, profile: eastron-sdm630}", 7, "connectors[0].meter.host", "is required: bus 'lan' is tcp"),
    (M0, M0 + ", meter: {bus: line1, unit: 5, profile: eastron-sdm63}", 7, "connectors[0].meter.profile", "did you mean 'eastron-sdm630'?"),
    (M0, M0 + ", meter: {bus: line1, unit: 250, profile: eastron-sdm630}", 7, "connectors[0].meter.unit", "must be 1..247 on a serial line"),
    (B1 + "connectors:\n" + C0, B1 + "  - {name: asc, kind: ascii, port: /dev/ttyS4}\nconnectors:\n" + C0.replace("}\n", ", meter: {bus: asc, unit: 5, profile: eastron-sdm630}}\n"), 8, "connectors[0].meter.profile", "an ASCII line and an RTU line can never be mixed"),
    (M0, M0 + ", outlet: 2", 7, "connectors[0].outlet", "has one outlet (no outlet_stride): outlet 2 does not exist"),
    (M0, "profile: phoenix-ev-ser", 7, "connectors[0].profile", "connector 1: profile 'phoenix-ev-ser' has no energy register; give the connector a meter"),
    # The way to the backend: secure unless told otherwise, and only what the files given can serve.
    ('"wss://csms.example.net/ocpp"', '"ws://csms.example.net/ocpp"', 2, "backend.url", "plain ws:// is refused"),
    ('"wss://csms.example.net/ocpp"}', '"wss://csms.example.net/ocpp", security_profile: 3}', 2, "backend.security_profile", "needs a wss:// URL, client_cert and client_key"),
    ('"wss://csms.example.net/ocpp"}', '"wss://csms.example.net/ocpp", security_profile: 2}', 2, "backend.security_profile", "needs a wss:// URL and password_file"),
    ('"wss://csms.example.net/ocpp"}', '"ws://csms.example.net/ocpp", insecure_lab_mode: true, security_profile: 2}', 2, "backend.security_profile", "TLS with Basic auth"),
    ('"wss://csms.example.net/ocpp"}', '"wss://csms.example.net/ocpp", client_cert: /etc/hostname}', 2, "backend.client_key", "client_cert and client_key go together"),
    ("storage: {path: gateway.db}", "storage: {path: gateway.db}\nuplinks: [{name: wired, interface: eth0}, {name: wired, interface: ppp0}]", 11, "uplinks[1].name", "already the name of uplinks[0]"),
    ("storage: {path: gateway.db}", "storage: {path: gateway.db}\nuplinks: [{name: wired, interface: eth0}, {name: gprs}]", 11, "uplinks[1]", "each needs an interface or a source_address"),
    ("storage: {path: gateway.db}", "storage: {path: gateway.db}\nuplinks: [{name: wired, source_address: 192.168.1.300}]", 11, "uplinks[0].source_address", "not an IPv4 or IPv6 address"),
    ("storage: {path: gateway.db}", "storage: {path: gateway.db}\nuplinks: [{name: wired, interface: a/b}]", 11, "uplinks[0].interface", "not a network interface name"),
    ("storage: {path: gateway.db}", "storage: {path: gateway.db}\nfailover: {failback_after_s: 60, probe_interval_s: 120}", 11, "failover.probe_interval_s", "longer than failback_after_s"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "line", "path", "message"), ERRORS)
def test_each_error(tmp_path: Path, old: str, new: str, line: int, path: str, message: str) -> None:
    assert old in BASE
    found = faults(write(tmp_path, BASE.replace(old, new, 1)))
    assert any(f[:2] == (line, path) and message in f[2] for f in found), found


WARNINGS = [
    ("parity: E", "parity: N", 4, "buses[0].parity", f"is N, but profile '{HEIDELBERG}' (connectors[0]) expects E"),
    ("port: /dev/ttyS1,", "port: /dev/ttyS1, baudrate: 9600,", 4, "buses[0].baudrate", "expects 19200"),
    ("poll_interval_s: 2}", "poll_interval_s: 5}", 4, "buses[0].poll_interval_s", "above a quarter of the 15 s watchdog"),
    ("{id: 3,", "{id: 5,", 6, "connectors", "connector ids [1, 2, 5] are not 1..3"),
    ("profile: heidelberg-energy-control}\n  - {id: 2", "profile: heidelberg-energy-control, max_current_a: 32}\n  - {id: 2", 7, "connectors[0].max_current_a", "above the 16 A maximum"),
    ('{url: "wss://csms.example.net/ocpp"}', '{url: "ws://csms.example.net/ocpp", insecure_lab_mode: true}', 2, "backend.insecure_lab_mode", "never in the field"),
    ('{url: "wss://csms.example.net/ocpp"}', '{url: "wss://csms.example.net/ocpp", insecure_lab_mode: true}', 2, "backend.insecure_lab_mode", "has no effect with wss://"),
    ('{url: "wss://csms.example.net/ocpp"}', '{url: "wss://csms.example.net/ocpp", password_file: /nonexistent/pw}', 2, "backend.password_file", "/nonexistent/pw: no such file (yet)"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "line", "path", "message"), WARNINGS)
def test_each_warning_does_not_refuse_the_config(
    tmp_path: Path, old: str, new: str, line: int, path: str, message: str
) -> None:
    assert old in BASE
    _, warnings = load_config_with_warnings(write(tmp_path, BASE.replace(old, new, 1)))
    assert [(w.line, w.path) for w in warnings] == [(line, path)], warnings
    assert message in warnings[0].message


def test_an_rtu_profile_on_a_tcp_bus_and_unit_255_over_tcp_are_fine(tmp_path: Path) -> None:
    config, _ = load_config_with_warnings(write(tmp_path, BASE.replace("port: 502, unit: 1", "port: 502, unit: 255")))
    assert config.connectors[2].unit == 255 and config.bus("lan").kind is Framing.TCP


# --- YAML-level faults ---------------------------------------------------------------------------


def test_duplicate_keys_are_faults(tmp_path: Path) -> None:
    text = BASE.replace("storage: {path: gateway.db}", "storage:\n  path: gateway.db\n  path: other.db")
    found = faults(write(tmp_path, text.replace("backend:", "charge_point: {identity: X}\nbackend:")))
    assert found == [
        (
            2,
            "charge_point",
            "duplicate key 'charge_point' (first given at line 1); YAML would silently keep only the last",
        ),
        (13, "storage.path", "duplicate key 'path' (first given at line 12); YAML would silently keep only the last"),
    ]


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    found = faults(write(tmp_path, BASE.replace("  - {name: lan, kind: tcp}", "  - {name: lan, kind: tcp")))
    assert len(found) == 1
    line, path, message = found[0]
    assert line == 6 and path == "" and message.startswith("YAML syntax:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [(None, "", "the file is empty")]),
        ("# only a comment\n", [(None, "", "the file is empty")]),
        ("- a\n- b\n", [(1, "", "must be a mapping (key: value lines), got a list")]),
        ("a: 1\n---\nb: 2\n", None),
        ("key: !!python/object:os.system x\n", None),
        ("a: &a [*a]\n", None),
        ("a: 2024-13-45\n", None),
        ("a: \x07\n", None),
    ],
)
def test_odd_files_are_config_errors(tmp_path: Path, text: str, expected: list[Fault] | None) -> None:
    found = faults(write(tmp_path, text))
    if expected is not None:
        assert found == expected


def test_missing_or_unreadable_file_is_one_issue(tmp_path: Path) -> None:
    assert faults(tmp_path / "absent.yaml") == [(None, "", "cannot read the file: No such file or directory")]
    assert faults(tmp_path) == [(None, "", "cannot read the file: Is a directory")]
    (tmp_path / "bin.yaml").write_bytes(b"a: 1\n\xff\xfe\n")
    assert faults(tmp_path / "bin.yaml") == [(2, "", "the file is not UTF-8 text")]


def test_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 8)]
    found = faults(write(tmp_path, "\n".join(lines) + "\n"))
    assert found == [(None, "", "the document is too complex: more than 100000 values (an alias bomb?)")]


def test_merge_keys_work_and_may_be_overridden(tmp_path: Path) -> None:
    text = (
        BASE.replace("connectors:\n", "")
        .replace(C0, "")
        .replace(
            "  - {id: 2, bus: line1, unit: 2, profile: heidelberg-energy-control}\n",
            "connectors:\n  - &box {id: 1, bus: line1, unit: 1, profile: heidelberg-energy-control}\n"
            "  - {<<: *box, id: 2, unit: 2}\n",
        )
    )
    config = load_config(write(tmp_path, text))
    assert [(c.id, c.bus, c.unit) for c in config.connectors] == [(1, "line1", 1), (2, "line1", 2), (3, "lan", 1)]


def test_faults_inside_a_profile_are_reported_with_the_profile_file(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    broken = profiles / "my-box.yaml"
    broken.write_text(
        (builtin_profile_dir() / f"{HEIDELBERG}.yaml")
        .read_text()
        .replace(f"name: {HEIDELBERG}", "name: my-box")
        .replace("count: 15", "count: 150")
    )
    text = BASE.replace(C0, C0.replace(HEIDELBERG, "my-box")) + "profile_dirs: [profiles]\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    issues = caught.value.issues
    assert [(i.file, i.path) for i in issues] == [(str(broken), "blocks[0].count")]
    assert "at most 125" in issues[0].message


# --- paths -------------------------------------------------------------------------------------


def test_relative_paths_are_taken_from_the_config_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc" / "gw"
    (etc / "profiles").mkdir(parents=True)
    site = (builtin_profile_dir() / f"{HEIDELBERG}.yaml").read_text().replace(f"name: {HEIDELBERG}", "name: site-box")
    (etc / "profiles" / "site-box.yaml").write_text(site)
    text = (
        BASE.replace("port: /dev/ttyS1", "port: ../../dev/ttyX")
        .replace("storage: {path: gateway.db}", "storage: {path: data/gateway.db}")
        .replace('{url: "wss://csms.example.net/ocpp"}', f'{{url: "wss://csms.example.net/ocpp", password_file: secret, ca_file: {tmp_path}/ca.pem}}')
        .replace(C0, C0.replace(HEIDELBERG, "site-box"))
    ) + "profile_dirs: [profiles]\n"  # fmt: skip
    write(etc, text)
    (etc / "secret").write_text("a password of 16+ bytes")
    (tmp_path / "ca.pem").write_text("a CA bundle")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("..") / "etc" / "gw" / "gateway.yaml")
    assert config.source == etc / "gateway.yaml"
    assert config.bus("line1").port == str(tmp_path / "dev" / "ttyX")
    assert config.storage.path == etc / "data" / "gateway.db"
    assert config.backend.password_file == etc / "secret"
    assert config.backend.ca_file == tmp_path / "ca.pem"
    assert config.profiles["site-box"].source == etc / "profiles" / "site-box.yaml"
    assert set(config.profiles) == {"site-box", HEIDELBERG}


def test_a_site_profile_replaces_a_builtin_one(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    shutil.copy(builtin_profile_dir() / f"{HEIDELBERG}.yaml", tmp_path / "profiles")
    config = load_config(write(tmp_path, BASE + "profile_dirs: [profiles]\n"))
    assert config.profiles[HEIDELBERG].source == tmp_path / "profiles" / f"{HEIDELBERG}.yaml"


def test_two_bus_ports_that_are_one_tty_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "ttyREAL").touch()
    (tmp_path / "by-id").symlink_to(tmp_path / "ttyREAL")
    text = BASE.replace("port: /dev/ttyS1", "port: ttyREAL").replace(
        B1, B1 + "  - {name: line2, kind: rtu, port: by-id}\n"
    )
    text = text.replace("storage:", "  - {id: 4, bus: line2, unit: 1, profile: heidelberg-energy-control}\nstorage:")
    found = faults(write(tmp_path, text))
    assert found == [(6, "buses[2].port", "by-id is already used by buses[0]: one serial port is one bus")]


# --- fuzzing: anything at all must give a Config or a ConfigError ----------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "gateway.yaml"


def load_anything(path: Path, text: str) -> Config | list[ConfigIssue]:
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        return load_config(path)
    except ConfigError as exc:
        assert exc.issues and all(isinstance(i, ConfigIssue) and i.message for i in exc.issues)
        return exc.issues


@FUZZ
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_fuzz_arbitrary_text(fuzz_file: Path, text: str) -> None:
    load_anything(fuzz_file, text)


YAML_SYMBOLS = st.sampled_from(
    list(":-[]{},&*!|>'\"%@`#?\n ") + ["<<", "---", "...", "!!int", "&a", "*a", "~", "0x", "1e9"]
)
WORDS = st.sampled_from(
    ["id", "bus", "unit", "buses", "connectors", "kind", "rtu", "tcp", "port", "yes", "1", "-1", "3.5", "null"]
)


@FUZZ
@given(st.lists(st.one_of(YAML_SYMBOLS, WORDS), max_size=60).map("".join))
def test_fuzz_yaml_shaped_text(fuzz_file: Path, text: str) -> None:
    load_anything(fuzz_file, text)


JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


def key_paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in plain data, () first: where a fuzzer may put junk."""
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += key_paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += key_paths(value, (*prefix, i))
    return out


@FUZZ
@given(st.data())
def test_fuzz_demo_config_with_one_value_replaced_by_junk(fuzz_file: Path, data: st.DataObject) -> None:
    config = yaml.safe_load(DEMO.read_text())
    path = data.draw(st.sampled_from(key_paths(config)[1:]))
    target = config
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(JUNK)
    load_anything(fuzz_file, yaml.safe_dump(config))


@FUZZ
@given(st.data())
def test_fuzz_demo_config_with_lines_cut_or_repeated(fuzz_file: Path, data: st.DataObject) -> None:
    lines = DEMO.read_text().splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["cut", "repeat", "indent", "dedent"]))
        if action == "cut":
            del lines[i]
        elif action == "repeat":
            lines.insert(i, lines[i])
        elif action == "indent":
            lines[i] = "  " + lines[i]
        else:
            lines[i] = lines[i].lstrip()
        if not lines:
            break
    load_anything(fuzz_file, "\n".join(lines))


def test_tcp_devices_share_a_poll_round_only_behind_one_endpoint(tmp_path: Path) -> None:
    fast = BASE.replace(B1, "  - {name: lan, kind: tcp, poll_interval_s: 0.5}\n")
    same_gateway = C2.replace("id: 3", "id: 4").replace("unit: 1", "unit: 2")
    found = faults(write(tmp_path, fast.replace(C2, C2 + same_gateway)))
    assert found == [
        (
            5,
            "buses[1].poll_interval_s",
            "a round over 2 dead device(s) takes 0.80 s (gap + request timeout each, times repeat), longer than poll_interval_s 0.5 s",
        )
    ]
    other_gateway = C2.replace("id: 3", "id: 4").replace("gw-a", "gw-b")
    config, warnings = load_config_with_warnings(write(tmp_path, fast.replace(C2, C2 + other_gateway)))
    assert len(config.connectors) == 4 and warnings == []


def test_a_device_that_repeats_its_requests_costs_each_send(tmp_path: Path) -> None:
    """ABL (repeat 2, 500 ms timeout): a dead box costs 1 s of the round, so two do not fit in 1.5 s."""
    abl = BASE.replace("  - {name: line1, kind: rtu, port: /dev/ttyS1, parity: E, poll_interval_s: 2}", "  - {name: line1, kind: ascii, port: /dev/ttyS1, baudrate: 38400, parity: E, poll_interval_s: 1.5}")
    abl = abl.replace("unit: 1, profile: heidelberg-energy-control}\n  - {id: 2, bus: line1, unit: 2, profile: heidelberg-energy-control}", "unit: 1, profile: abl-emh, meter: {bus: meters, unit: 1, profile: eastron-sdm630}}\n  - {id: 2, bus: line1, unit: 2, profile: abl-emh, meter: {bus: meters, unit: 2, profile: eastron-sdm630}}")
    abl = abl.replace(B1, B1 + "  - {name: meters, kind: rtu, port: /dev/ttyS2, baudrate: 9600, parity: N, poll_interval_s: 2}\n")
    found = [(path, message) for _, path, message in faults(write(tmp_path, abl))]
    assert found == [("buses[0].poll_interval_s", "a round over 2 dead device(s) takes 2.00 s (gap + request timeout each, times repeat), longer than poll_interval_s 1.5 s")]
    config, _ = load_config_with_warnings(write(tmp_path, abl.replace("poll_interval_s: 1.5", "poll_interval_s: 2")))
    assert [c.meter.unit for c in config.connectors if c.meter] == [1, 2]


def test_a_meter_on_another_bus_and_the_outlets_of_one_controller(tmp_path: Path) -> None:
    """A connector's meter is built with its defaults; outlets of a controller with an outlet_stride share its unit."""
    (tmp_path / "profiles").mkdir()
    twin = (builtin_profile_dir() / f"{HEIDELBERG}.yaml").read_text().replace(f"name: {HEIDELBERG}", "name: twin-box")
    (tmp_path / "profiles" / "twin-box.yaml").write_text(twin + "outlet_stride: 100\n")
    meters = "  - {name: meters, kind: rtu, port: /dev/ttyS2, parity: N, baudrate: 9600}\n"
    with_meter = C0.replace("}\n", ", meter: {bus: meters, unit: 1, profile: eastron-sdm630}}\n")
    text = BASE.replace(B1, B1 + meters).replace(C0, with_meter) + "profile_dirs: [profiles]\n"
    config, warnings = load_config_with_warnings(write(tmp_path, text))
    assert warnings == []
    meter = config.connectors[0].meter
    assert meter is not None and (meter.bus, meter.unit, meter.profile, meter.host, meter.port) == ("meters", 1, "eastron-sdm630", None, 502)
    assert config.meter_profile_of(config.connectors[0]) is config.profiles["eastron-sdm630"]
    assert config.connectors[1].meter is None and config.connectors[1].outlet == 1

    outlets = C0.replace(HEIDELBERG, "twin-box") + C0.replace("id: 1", "id: 2").replace(HEIDELBERG, "twin-box, outlet: 2")
    second = "  - {id: 2, bus: line1, unit: 2, profile: heidelberg-energy-control}\n"
    text = BASE.replace(C0 + second, outlets) + "profile_dirs: [profiles]\n"
    config, _ = load_config_with_warnings(write(tmp_path, text))
    first, other = config.connectors[:2]
    assert (first.unit, first.outlet, other.unit, other.outlet) == (1, 1, 1, 2)
    limits = config.profile_of(first).current_limit, config.profile_of(other).current_limit
    assert limits[0] is not None and limits[1] is not None and limits[1].address == limits[0].address + 100 == 361
    same_outlet = outlets.replace(", outlet: 2", "")
    found = faults(write(tmp_path, BASE.replace(C0 + second, same_outlet) + "profile_dirs: [profiles]\n"))
    assert (8, "connectors[1].unit", "unit 1 on bus 'line1' is already used by connectors[0]") in found
