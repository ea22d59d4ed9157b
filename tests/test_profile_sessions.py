"""Every built-in charger profile, end to end: the simulator plays it, the daemon runs one session on it.

For each charger profile shipped in gateway/profiles (picked up by name, so a
new profile is tested as soon as its file exists) the simulator plays the box
on the kind of line its profile speaks: a loopback TCP server, a pty RTU line
(parity N: a pty refuses parity E, testing-notes.md) or a pty ASCII line. The
real daemon polls it; the test waits until the session it commits to SQLite
is closed, then checks it against the simulator's own events: plug-in,
charging, unplug, and meterStart / meterStop equal to the energy register at
plug-in and unplug. A box without an energy register is paired with an
Eastron SDM630 as the connector's meter, on a line of the same kind (an ASCII
box gets its meter on an RTU line of its own: the SDM630 speaks RTU only).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_config_with_warnings
from gateway.devprofile import Framing, Profile
from gateway.profile_loader import available_profiles, load_profile
from gateway.settings import Config
from tests.loopback import free_port
from tests.test_backend_commands import daemon_on_simulator

PROFILES = {name: load_profile(path) for name, path in available_profiles().items()}
CHARGERS = sorted(name for name, p in PROFILES.items() if p.kind == "charger")
METER = "eastron-sdm630"
SPEED = 120.0  # simulated seconds per real second
FREE_TAG = "FREE"


def _unit(profile: Profile) -> int:
    """The unit the device answers to: its factory unit where a serial line allows it, else 1."""
    unit = profile.line.unit
    if unit is None or (profile.line.framing is not Framing.TCP and not 1 <= unit <= 247):
        return 1
    return unit


def _poll_interval(*devices: Profile) -> float:
    """Long enough for a round over the line's devices all dead (the config check), and at least 0.5 s."""
    return round(max(0.5, sum(p.repeat * (p.inter_frame_delay_s + p.request_timeout_s) for p in devices) + 0.05), 2)


def session_config(tmp_path: Path, name: str, with_meter: bool = False) -> Config:
    """One connector with the profile `name` on its own kind of line, and a meter where the box has no energy register."""
    profile = PROFILES[name]
    needs_meter = with_meter or "energy" not in profile.values
    meter_profile = PROFILES[METER]
    unit = _unit(profile)
    connector: dict[str, Any] = {"id": 1, "unit": unit, "profile": name}
    buses: list[dict[str, Any]] = []
    if profile.line.framing is Framing.TCP:
        buses.append({"name": "lan", "kind": "tcp", "poll_interval_s": _poll_interval(profile)})
        connector |= {"bus": "lan", "host": "127.0.0.1", "port": free_port()}
        meter = {"bus": "lan", "host": "127.0.0.1", "port": free_port(), "unit": 1, "profile": METER}
    else:
        kind = profile.line.framing.value
        same_line = profile.line.framing is Framing.RTU
        line_devices = (profile, meter_profile) if needs_meter and same_line else (profile,)
        buses.append(
            {"name": "line", "kind": kind, "port": str(tmp_path / "ttyLine"), "parity": "N", "poll_interval_s": _poll_interval(*line_devices)}
        )
        connector["bus"] = "line"
        if same_line:
            meter = {"bus": "line", "unit": unit % 247 + 1, "profile": METER}
        else:
            buses.append({"name": "meters", "kind": "rtu", "port": str(tmp_path / "ttyMeters"), "parity": "N", "poll_interval_s": 1.0})
            meter = {"bus": "meters", "unit": 1, "profile": METER}
    if needs_meter:
        connector["meter"] = meter
    doc = {
        "charge_point": {"identity": "CP-PROFILES", "vendor": "OpenGateway", "model": "Cluster"},
        "backend": {"url": "ws://127.0.0.1:9/ocpp", "insecure_lab_mode": True},  # nobody there: sessions are committed offline
        "buses": buses,
        "connectors": [connector],
        "storage": {"path": str(tmp_path / "gw.db")},
        "authorization": {"free_charging_id_tag": FREE_TAG},
        # Seed 6: a 3-phase 16 A EV arrives 1 s after the start, once the daemon has paused the box, charges
        # 0.5 kWh in about 1.4 s (11 kW: several polls see it charging) and leaves 0.7 s after it is full.
        "simulator": {"speed": SPEED, "seed": 6, "wire_delay": False, "idle_s": [120, 180], "session_kwh": [0.5, 0.5]},
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(doc))
    config, _ = load_config_with_warnings(tmp_path / "gateway.yaml")
    return config


def closed_sessions(db: Path) -> list[tuple[int, str, int, int]]:
    """(connector, idTag, meterStart, meterStop) of every closed session in the daemon's store, read directly."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        rows = con.execute(
            "SELECT connector_id, id_tag, meter_start, meter_stop FROM sessions WHERE stopped IS NOT NULL ORDER BY started"
        ).fetchall()
    return [tuple(r) for r in rows]


def statuses(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        rows = con.execute("SELECT data FROM events WHERE kind = 'status' AND connector_id = 1 ORDER BY id").fetchall()
    return [yaml.safe_load(data)["status"] for (data,) in rows]


def test_every_charger_profile_is_covered() -> None:
    assert {"heidelberg-energy-control", "bender-cc613"} <= set(CHARGERS)
    assert METER in PROFILES and PROFILES[METER].kind == "meter"


@pytest.mark.parametrize(
    ("name", "with_meter"),
    # and a box on Modbus TCP with its meter behind a TCP gateway of its own (a line only the meter uses)
    [(name, False) for name in CHARGERS] + [("bender-cc613", True)],
)
async def test_a_session_on_the_simulated_box_is_committed_with_its_energy(tmp_path: Path, name: str, with_meter: bool) -> None:
    config = session_config(tmp_path, name, with_meter)
    assert (config.connectors[0].meter is not None) == (with_meter or "energy" not in PROFILES[name].values)
    db = config.storage.path
    events: list[dict[str, Any]] = []
    async with daemon_on_simulator(config, on_event=events.append) as (_, daemon):
        async with asyncio.timeout(30):
            while not (db.exists() and closed_sessions(db)):
                if daemon.done():
                    daemon.result()  # the daemon died: its error
                await asyncio.sleep(0.2)
    kinds = [e["event"] for e in events]
    # Plugged in (paused until the session starts, where the EV asks that early), charged, left.
    assert kinds[0] == "plug" and "charging" in kinds and "unplug" in kinds, kinds
    assert kinds.index("charging") < kinds.index("unplug"), kinds
    plug = next(e for e in events if e["event"] == "plug")
    charging = next(e for e in events if e["event"] == "charging")
    unplug = next(e for e in events if e["event"] == "unplug")
    (connector, tag, meter_start, meter_stop), *_ = closed_sessions(db)
    assert (connector, tag) == (1, FREE_TAG)
    # The energy register at plug-in and unplug (the meter's, where the box has none): nothing flowed
    # before the session started (the box was paused) nor after the EV left.
    assert meter_start == plug["energy_wh"] == charging["energy_wh"]
    assert meter_stop == unplug["energy_wh"] > meter_start
    seen = statuses(db)
    assert "Preparing" in seen and "Charging" in seen and seen[-1] == "Available", seen
    assert seen.index("Preparing") < seen.index("Charging") < len(seen) - 1
