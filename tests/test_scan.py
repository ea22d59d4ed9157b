"""`charger-gateway scan`: the pure plan and ranking, then real scans over a pty line and loopback TCP.

The slaves are the gateway's simulator (wire time and transceiver turnaround
on) on one end of a pty, the scan's SerialLine on the other, with parity N
(Linux refuses parity on a pty, testing-notes.md). What the simulator cannot
do on purpose (a garbled reply, a slow one) is played by `ScriptedUnits`, a
few lines that answer with pymodbus's server-side framer on a raw pty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse

from gateway.cli import main
from gateway.config import load_config_with_warnings
from gateway.devprofile import Framing, IdentifyCheck, LineDefaults, Profile, ReadBlock, Table, ValueSpec
from gateway.errors import ConfigError
from gateway.modbus_transport import SERIAL_UNITS, TCP_UNITS
from gateway.scan import (
    Match,
    Presence,
    candidates,
    load_candidates,
    parse_units,
    plan_scan,
    presence_probe,
    presence_timeout_s,
    rank,
    run_scan,
)
from gateway.scan_report import render_yaml, to_json
from gateway.settings import (
    BackendSettings,
    BusSettings,
    ChargePointInfo,
    Config,
    ConnectorSettings,
    SimulatorSettings,
    StorageSettings,
)
from gateway.simulator import run_simulation
from gateway.wiretime import char_time_s, t35_s
from tests.loopback import free_port

HEIDELBERG = "heidelberg-energy-control"
SDM630 = "eastron-sdm630"
EM340 = "carlo-gavazzi-em340"
BENDER = "bender-cc613"
ABL = "abl-emh"
CHARX = "phoenix-charx"
KEBA = "keba-p30"
PROFILES = load_candidates([], {})
ROOT = Path(__file__).resolve().parent.parent


def unit(number: int, profile: str, **where: Any) -> dict[str, Any]:
    return {"unit": number, "profile": profile, **where}


def serial_bus(port: str) -> BusSettings:
    return BusSettings(name="rs485", kind=Framing.RTU, port=port, baudrate=19200, parity="N")  # N: a pty (testing-notes.md)


def sim_config(tmp_path: Path, bus: BusSettings, slaves: list[dict[str, Any]]) -> Config:
    """A config for the simulator only: one connector per slave (unit, profile, host, port, outlet); meters too."""
    return Config(
        source=tmp_path / "sim.yaml",
        charge_point=ChargePointInfo("SIM", "sim", "sim"),
        backend=BackendSettings("ws://127.0.0.1:9/ocpp"),
        buses=(bus,),
        connectors=tuple(ConnectorSettings(id=i, bus=bus.name, **slave) for i, slave in enumerate(slaves, 1)),
        storage=StorageSettings(tmp_path / "sim.db"),
        # turnaround: a box does not hear a request sent sooner than its inter-frame delay after a reply
        simulator=SimulatorSettings(seed=1, wire_delay=True, turnaround=True),
        profiles={slave["profile"]: PROFILES[slave["profile"]] for slave in slaves},
    )


@contextlib.asynccontextmanager
async def simulated(config: Config) -> AsyncIterator[None]:
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        task = group.create_task(run_simulation(config, ready=ready))
        await ready.wait()
        try:
            yield
        finally:
            task.cancel()


def site_config(tmp_path: Path, bus_yaml: str, block: str) -> Path:
    """A site config with one bus and the scan's block pasted in as it was printed."""
    path = tmp_path / "site.yaml"
    path.write_text(
        "charge_point: {identity: SITE, vendor: v, model: m}\n"
        'backend: {url: "ws://127.0.0.1:9/ocpp", insecure_lab_mode: true}\n'
        f"buses:\n  - {bus_yaml}\n"
        f"storage: {{path: {tmp_path / 'gw.db'}}}\n" + block
    )
    return path




# --- the pure part ---------------------------------------------------------------------


def test_units_are_parsed_as_lists_and_ranges() -> None:
    assert parse_units("1-247", SERIAL_UNITS) == tuple(range(1, 248))
    assert parse_units("10-12, 1,3,11", SERIAL_UNITS) == (1, 3, 10, 11, 12)
    assert parse_units("0,255", TCP_UNITS) == (0, 255)
    for bad in ("0-3", "248", "5-3", "x", "1,,2", ""):
        with pytest.raises(ValueError):
            parse_units(bad, SERIAL_UNITS)


def test_candidates_follow_the_framing_and_the_probe_is_read_by_the_most() -> None:
    rtu = candidates(PROFILES.values(), Framing.RTU)
    assert {HEIDELBERG, SDM630, EM340} <= {p.name for p in rtu} and BENDER not in {p.name for p in rtu}
    assert all(p.line.framing is Framing.RTU for p in rtu)
    assert len(candidates(PROFILES.values(), Framing.TCP)) == len(PROFILES), "a TCP gateway may front any device"
    probe = presence_probe(rtu)
    assert probe.count == 1

    def readers(table: Table, address: int) -> int:
        return sum(any(b.covers(table, address, 1) for b in p.blocks) for p in rtu)

    assert all(readers(probe.table, probe.address) >= readers(b.table, b.address) for p in rtu for b in p.blocks)


def test_presence_timeout_is_the_reply_wire_time_plus_the_margin() -> None:
    bus = serial_bus("/dev/null")
    # 7-byte reply of 10-bit characters (8N1) and the t3.5 the slave waits before answering.
    assert presence_timeout_s(bus, 0.05) == pytest.approx(7 * char_time_s(19200, 10) + t35_s(19200) + 0.05)
    slow = BusSettings(name="b", kind=Framing.RTU, port="/dev/null", baudrate=2400, parity="E")
    assert presence_timeout_s(slow, 0.05) > presence_timeout_s(bus, 0.05) + 0.03
    ascii_bus = BusSettings(name="a", kind=Framing.ASCII, port="/dev/null", baudrate=38400, parity="E")
    assert presence_timeout_s(ascii_bus, 0.05) == pytest.approx(15 * char_time_s(38400, 11) + 0.05)
    assert presence_timeout_s(BusSettings(name="t", kind=Framing.TCP), 0.5) == 0.5


def test_plan_of_a_serial_and_a_tcp_scan() -> None:
    plan = plan_scan(serial_bus("/dev/ttyUSB0"), PROFILES.values())
    assert plan.units == tuple(range(1, 248)) and plan.endpoints == ()
    assert plan.gap_s == max(p.inter_frame_delay_s for p in plan.profiles) > 0
    assert plan.slow_timeout_s >= max(p.request_timeout_s for p in plan.profiles)
    tcp = BusSettings(name="lan", kind=Framing.TCP)
    factory = {p.line.unit for p in PROFILES.values() if p.line.unit is not None}
    plan = plan_scan(tcp, PROFILES.values(), units=(7,), endpoints=[("127.0.0.1", 502)])
    assert set(plan.units) == factory | {7}
    with pytest.raises(ConfigError) as caught:
        plan_scan(tcp, PROFILES.values(), margin_s=0)
    assert {i.path for i in caught.value.issues} == {"--host", "--margin-ms"}
    with pytest.raises(ConfigError, match="needs a port"):
        plan_scan(BusSettings(name="rs485", kind=Framing.RTU), PROFILES.values())


def _profile(name: str, checks: int) -> Profile:
    block = ReadBlock(Table.INPUT, 0, 1)
    return Profile(
        name=name, kind="meter", description=name, source=Path(name), line=LineDefaults(Framing.RTU), blocks=(block,),
        values={"v": ValueSpec("v", Table.INPUT, 0)}, identify=tuple(IdentifyCheck("v", min=0) for _ in range(checks)),
    )


def test_more_checks_held_rank_first_then_more_registers_answered() -> None:
    loose_big, loose_small, strict = Match(_profile("a", 0), 0, 74), Match(_profile("b", 0), 0, 32), Match(_profile("c", 2), 2, 4)
    assert [m.profile.name for m in rank([loose_small, strict, loose_big])] == ["c", "a", "b"]
    assert strict.certain and not loose_big.certain


# --- a serial line ---------------------------------------------------------------------


async def test_scan_finds_chargers_and_meters_on_a_pty_line_and_prints_a_config_that_loads(tmp_path: Path) -> None:
    bus = serial_bus(str(tmp_path / "ttyS0"))
    config = sim_config(tmp_path, bus, [unit(1, HEIDELBERG), unit(7, HEIDELBERG), unit(20, SDM630), unit(21, EM340)])
    plan = plan_scan(bus, PROFILES.values(), units=range(1, 26))
    async with simulated(config):
        result = await run_scan(plan)
    found = {d.target.unit: d for d in result.devices}
    assert sorted(found) == [1, 7, 20, 21]
    assert {u: d.best.profile.name for u, d in found.items() if d.best} == {1: HEIDELBERG, 7: HEIDELBERG, 20: SDM630, 21: EM340}
    assert all(d.presence is Presence.DATA for d in found.values())
    assert EM340 in {m.profile.name for m in found[20].matches}, "an SDM630 answers the EM340's reads too: an alternative"
    # Each absent unit costs one probe that times out; the inter-frame delays were kept, so the
    # turnaround-keeping simulator heard every request to a present unit.
    assert result.timeouts == len(plan.units) - 4

    block = render_yaml(result, first_id=3)
    assert "# meters found" in block and "eastron-sdm630" in block and "bus parity N, profile expects E" in block
    # The meter hint goes under a connector as it is printed, uncommented.
    meter = "    " + next(line for line in block.splitlines() if "meter: {" in line and "unit: 20" in line).lstrip("# ")
    block = block.replace("    profile: heidelberg-energy-control\n", f"    profile: heidelberg-energy-control\n{meter}\n", 1)
    path = site_config(tmp_path, f"{{name: rs485, kind: rtu, port: {bus.port}, baudrate: 19200, parity: N, poll_interval_s: 2}}", block)
    site, warnings = load_config_with_warnings(path)
    assert [(c.id, c.unit, c.profile) for c in site.connectors] == [(3, 1, HEIDELBERG), (4, 7, HEIDELBERG)]
    assert site.connectors[0].meter is not None and (site.connectors[0].meter.unit, site.connectors[0].meter.profile) == (20, SDM630)
    assert any("parity" in str(w) for w in warnings)
    data = to_json(result, first_id=3)
    assert [m["unit"] for m in data["meters"]] == [20, 21] and data["connectors"][0]["id"] == 3
    assert json.loads(json.dumps(data)) == data


class ScriptedUnits:
    """Slaves on the master end of a raw pty: every request is answered with exception 02, some late, some garbled."""

    def __init__(self, fd: int, units: set[int], late_s: dict[int, float], garbled: set[int]) -> None:
        self.fd = fd
        self.units, self.late_s, self.garbled = units, late_s, garbled
        self.framer = FramerRTU(DecodePDU(is_server=True))
        self.loop = asyncio.get_running_loop()
        self.buffer = b""
        self.loop.add_reader(fd, self._on_readable)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)

    def _on_readable(self) -> None:
        self.buffer += os.read(self.fd, 1024)
        while True:
            used, unit, _tid, pdu = self.framer.decode(self.buffer)
            if not used:
                return
            self.buffer = self.buffer[used:]
            if pdu and unit in self.units:
                frame = self.framer.buildFrame(ExceptionResponse(pdu[0], 2, device_id=unit))
                if unit in self.garbled:
                    frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])  # CRC high byte
                self.loop.call_later(self.late_s.get(unit, 0.002), os.write, self.fd, frame)


async def test_garbled_slow_and_unknown_units_are_told_from_absent_ones(pty_pair: tuple[int, str]) -> None:
    master, path = pty_pair
    # Unit 5 answers after the presence timeout (~56 ms): its reply lands in unit 6's wait.
    slaves = ScriptedUnits(master, units={3, 5, 8}, late_s={5: 0.09}, garbled={3})
    try:
        result = await run_scan(plan_scan(serial_bus(path), [PROFILES[HEIDELBERG]], units=range(3, 10)))
    finally:
        slaves.close()
    found = {d.target.unit: d for d in result.devices}
    assert sorted(found) == [3, 5, 8]
    assert found[3].presence is Presence.GARBLED and "garbled" in found[3].detail
    assert found[5].presence is Presence.EXCEPTION and found[8].presence is Presence.EXCEPTION
    assert all(d.best is None for d in found.values())
    text = render_yaml(result)
    assert "# no charger found" in text and "#   unit 3: garbled" in text and "#   unit 8: exception" in text


# --- Modbus TCP ----------------------------------------------------------------------------


async def test_ascii_scan_wakes_abl_boxes_by_sending_each_request_twice(tmp_path: Path) -> None:
    bus = BusSettings(name="abl", kind=Framing.ASCII, port=str(tmp_path / "ttyS1"), baudrate=38400, parity="N")
    config = sim_config(tmp_path, bus, [unit(1, ABL), unit(3, ABL)])
    plan = plan_scan(bus, PROFILES.values(), units=range(1, 5))
    assert plan.repeat == 2 and {p.name for p in plan.profiles} == {ABL}
    async with simulated(config):  # the simulated ABL drops the first frame after a second of silence, and replies with '>'
        result = await run_scan(plan)
    assert [(d.target.unit, d.best.profile.name if d.best else None, d.presence) for d in result.devices] == [
        (1, ABL, Presence.DATA), (3, ABL, Presence.DATA)
    ]
    assert all(d.best and d.best.certain for d in result.devices), "the ABL profile has identify checks"
    assert "identified by 1 check(s)" in render_yaml(result)


async def test_tcp_scan_finds_each_model_and_the_outlets_and_reports_a_closed_port(tmp_path: Path) -> None:
    # Alfen and Vestel are told by text (manufacturer, serial), which the simulator does not show yet.
    ports = {name: free_port() for name in (BENDER, CHARX, KEBA, "closed")}
    bus = BusSettings(name="lan", kind=Framing.TCP)

    def at(name: str, number: int, **more: Any) -> dict[str, Any]:
        return unit(number, name, host="127.0.0.1", port=ports[name], **more)

    slaves = [at(BENDER, 255), at(CHARX, 255, outlet=1), at(CHARX, 255, outlet=2), at(KEBA, 255)]
    config = sim_config(tmp_path, bus, slaves)
    plan = plan_scan(bus, PROFILES.values(), units=(255,), endpoints=[("127.0.0.1", p) for p in ports.values()])
    async with simulated(config):
        result = await run_scan(plan)
    found = {(d.target.port, d.target.unit): d for d in result.devices}
    assert {key: d.best.profile.name for key, d in found.items() if d.best} == {
        (ports[name], 255): name for name in (BENDER, CHARX, KEBA)
    }
    assert found[(ports[CHARX], 255)].outlets == 2
    assert [(h, p) for h, p, _ in result.unreachable] == [("127.0.0.1", ports["closed"])]
    block = render_yaml(result)
    assert f"#   127.0.0.1:{ports['closed']}: " in block
    site, _ = load_config_with_warnings(site_config(tmp_path, "{name: lan, kind: tcp, poll_interval_s: 3}", block))
    got = [(c.id, c.port, c.unit, c.profile, c.outlet) for c in site.connectors]
    assert got == [(i, port, number, name, outlet) for i, (port, number, name, outlet) in enumerate(sorted(
        (s["port"], s["unit"], s["profile"], s.get("outlet", 1)) for s in slaves), 1)]


# --- the command line ------------------------------------------------------------------------


def test_exit_codes_of_an_empty_range_a_bad_line_and_bad_options(pty_pair: tuple[int, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, path = pty_pair
    assert main(["scan", "--port", path, "--parity", "N", "--units", "1-3"]) == 1  # nobody on the line
    assert "no charger found" in capsys.readouterr().out
    assert main(["scan", "--port", path, "--units", "1"]) == 69, "a pty refuses parity E: the line cannot be opened"
    assert main(["scan", "--port", str(tmp_path / "nothing"), "--parity", "N", "--units", "1"]) == 69
    for argv in (
        ["scan", "--port", path, "--units", "0-3"],
        ["scan", "--port", path, "--baud", "12345"],
        ["scan", "--framing", "rtu", "--port", path, "--host", "127.0.0.1"],
        ["scan", "--host", "127.0.0.1", "--port-range", "503-502"],
        ["scan", "-c", str(tmp_path / "missing.yaml")],
    ):
        assert main(argv) == 78, argv
    assert "error: command line: --units" in capsys.readouterr().err
    site = site_config(tmp_path, f"{{name: rs485, kind: rtu, port: {path}, parity: N}}", "connectors:\n  - {id: 1, bus: rs485, unit: 1, profile: heidelberg-energy-control}\n")
    assert main(["scan", "-c", str(site), "--port", path]) == 78
    assert main(["scan", "-c", str(site), "nosuchbus"]) == 78
    err = capsys.readouterr().err
    assert "give either -c or line options" in err and "no bus named 'nosuchbus'; buses in" in err


async def test_cli_scans_the_bus_of_a_config_and_prints_json(tmp_path: Path) -> None:
    bus = serial_bus(str(tmp_path / "ttyS0"))
    config = sim_config(tmp_path, bus, [unit(1, HEIDELBERG), unit(20, SDM630)])
    site = site_config(
        tmp_path, f"{{name: rs485, kind: rtu, port: {bus.port}, parity: N}}", "connectors:\n  - {id: 1, bus: rs485, unit: 1, profile: heidelberg-energy-control}\n"
    )
    async with simulated(config):
        scan = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "scan", "-c", str(site), "rs485", "--units", "1,2,20", "--json", "--first-id", "2",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await scan.communicate()
    assert scan.returncode == 0, err.decode()
    data = json.loads(out)
    assert [(d["unit"], d["profile"]) for d in data["devices"]] == [(1, HEIDELBERG), (20, SDM630)]
    assert {d["status"] for d in data["devices"]} <= {"identified", "possible"}
    assert data["connectors"] == [{"id": 2, "bus": "rs485", "unit": 1, "profile": HEIDELBERG}]
    assert data["meters"] == [{"bus": "rs485", "unit": 20, "profile": SDM630}]


def test_cli_tcp_scan_of_a_closed_port_finds_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    closed = free_port()
    assert main(["scan", "--host", "127.0.0.1", "--tcp-port", str(closed), "--units", "3"]) == 1
    out = capsys.readouterr().out
    assert "bus lan (tcp)" in out and f"#   127.0.0.1:{closed}: " in out
