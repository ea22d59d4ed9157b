"""Load the daemon's YAML config into gateway.settings.Config, checking all of it at once.

Every fault is collected (schema, then cross-checks between buses, connectors
and profiles) and raised together as one ConfigError, each located by file,
line and key path; the daemon exits with EX_CONFIG (78). Settings an installer
may have chosen on purpose (a line parity that differs from the profile's)
are warnings, not faults. The YAML keys are the field names of the
gateway.settings dataclasses; docs/configuration.md and
config/gateway.example.yaml describe each one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any

from gateway import config_service, config_uplink
from gateway.devprofile import Framing, Profile
from gateway.errors import ConfigError, ConfigIssue
from gateway.ocpp_config import MEASURANDS
from gateway.profile_loader import BAUDRATES, BYTESIZES, PARITIES, STOPBITS, available_profiles, load_profile
from gateway.settings import (
    AuthorizationSettings,
    BusSettings,
    ChargePointInfo,
    Config,
    ConnectorSettings,
    MeterSettings,
    OcppSettings,
    SimulatorSettings,
    SiteSettings,
    StorageSettings,
)
from gateway.yamlschema import (
    Document,
    Field,
    KeyPath,
    ListOf,
    Map,
    close_match,
    dataclass_map,
    load_document,
    resolve_path,
    validate,
)

log = logging.getLogger("gateway.config")

SERIAL_KINDS = (Framing.RTU.value, Framing.ASCII.value)

# RFC 3986 "unreserved" characters: the identity goes into the URL path unescaped
# and is the HTTP Basic user-id, which must not contain ':' (RFC 7617 §2).
_IDENTITY = re.compile(r"[A-Za-z0-9._~-]+")


def _identity(value: str) -> str | None:
    if not _IDENTITY.fullmatch(value):
        return "may only contain letters, digits and . _ ~ - (it becomes part of the URL and the Basic-auth user)"
    return None


def _distinct(value: list[Any]) -> str | None:
    return "each phase may appear only once" if len(set(value)) != len(value) else None


def _tuple_or_none(value: list[Any] | None) -> Any:
    return None if value is None else tuple(value)


def _low_high(value: list[Any]) -> str | None:
    if len(value) != 2 or value[0] > value[1]:
        return "must be a pair [low, high] with low <= high"
    return None


_TIMEOUT = Field(float, above=0)

_CONFIG = Field(
    Map(
        {
            "charge_point": Field(
                dataclass_map(
                    ChargePointInfo,
                    {
                        # 48 characters: OCPP-J 2.0.1 Part 4 §3.2, so the same identity still fits after an upgrade.
                        "identity": Field(str, min=1, max=48, check=_identity),
                        # CiString20Type / CiString25Type of BootNotification.req (OCPP 1.6 §6.4)
                        "vendor": Field(str, min=1, max=20),
                        "model": Field(str, min=1, max=20),
                        "serial_number": Field(str, min=1, max=25),
                    },
                ),
                required=True,
            ),
            "backend": config_uplink.BACKEND,
            "uplinks": dataclasses.replace(config_uplink.UPLINKS, default=[]),
            "failover": config_uplink.FAILOVER,
            "buses": Field(
                ListOf(
                    Field(
                        dataclass_map(
                            BusSettings,
                            {
                                "name": Field(str, min=1),
                                "kind": Field(str, choices=tuple(f.value for f in Framing)),
                                "port": Field(str, min=1),
                                "baudrate": Field(int, choices=BAUDRATES),
                                "parity": Field(str, choices=PARITIES),
                                "stopbits": Field(int, choices=STOPBITS),
                                "bytesize": Field(int, choices=BYTESIZES),
                                "request_timeout_s": _TIMEOUT,
                                "poll_interval_s": _TIMEOUT,
                            },
                        )
                    )
                ),
                required=True,
                min=1,
            ),
            "connectors": Field(
                ListOf(
                    Field(
                        dataclass_map(
                            ConnectorSettings,
                            {
                                "id": Field(int, min=1),  # OCPP 1.6 §3.7: connectors are numbered from 1
                                "bus": Field(str, min=1),
                                # 1..247 on a serial line (checked below); a Modbus TCP device
                                # may answer to 0 or 255 (e.g. ABL eM4 uses 255)
                                "unit": Field(int, min=0, max=255),
                                "profile": Field(str, min=1),
                                "host": Field(str, min=1),
                                "port": Field(int, min=1, max=65535),
                                "id_tag": Field(str, min=1, max=20),  # IdToken is CiString20Type (OCPP 1.6 §7.28)
                                "max_current_a": Field(float, above=0),
                                "phases": Field(ListOf(Field(int, min=1, max=3)), min=1, max=3, check=_distinct),
                                # the outlet of a multi-outlet controller (profile outlet_stride)
                                "outlet": Field(int, min=1, max=255),
                                "meter": Field(
                                    dataclass_map(
                                        MeterSettings,
                                        {
                                            "bus": Field(str, min=1),
                                            "unit": Field(int, min=0, max=255),
                                            "profile": Field(str, min=1),
                                            "host": Field(str, min=1),
                                            "port": Field(int, min=1, max=65535),
                                        },
                                    )
                                ),
                            },
                        )
                    )
                ),
                required=True,
                min=1,
            ),
            "storage": Field(
                dataclass_map(StorageSettings, {"path": Field(str, min=1), "outbox_budget_mb": Field(float, above=0)}), required=True
            ),
            "authorization": Field(
                dataclass_map(AuthorizationSettings, {"free_charging_id_tag": Field(str, min=1, max=20)})
            ),
            "site": Field(
                dataclass_map(
                    SiteSettings,
                    {
                        "phase_limit_a": Field(ListOf(Field(float, above=0)), min=3, max=3),
                        "rotation_s": Field(float, min=60),
                        "failsafe_current_a": Field(float, min=0),
                    },
                )
            ),
            "ocpp": Field(
                dataclass_map(
                    OcppSettings,
                    {
                        "heartbeat_interval_s": Field(int, min=1),
                        "meter_value_sample_interval_s": Field(int, min=0),  # 0 = no sampled values
                        "meter_values_sampled_data": Field(
                            ListOf(Field(str, choices=MEASURANDS))  # what the slaves' readings can supply
                        ),
                        "transaction_message_attempts": Field(int, min=1),
                        "transaction_message_retry_interval_s": Field(int, min=1),
                        "meter_values_batch_max": Field(int, min=1, max=1000),
                        "hard_reset_command": Field(ListOf(Field(str, min=1))),
                    },
                )
            ),
            "simulator": Field(
                dataclass_map(
                    SimulatorSettings,
                    {
                        "speed": Field(float, above=0),
                        "seed": Field(int),
                        "wire_delay": Field(bool),
                        "turnaround": Field(bool),
                        "idle_s": Field(ListOf(Field(float, min=0)), check=_low_high),
                        "session_kwh": Field(ListOf(Field(float, above=0)), check=_low_high),
                        "id_tags": Field(ListOf(Field(str, min=1, max=20))),
                    },
                )
            ),
            "profile_dirs": Field(ListOf(Field(str, min=1)), default=[]),
            "control": config_service.CONTROL,
            "firmware": config_service.FIRMWARE,
            "commissioning": config_service.COMMISSIONING,
        }
    )
)


def load_config(path: str | Path) -> Config:
    """Load and check the config; raise ConfigError with every fault, log every warning."""
    config, warnings = load_config_with_warnings(path)
    for warning in warnings:
        log.warning("%s", warning)
    return config


def load_config_with_warnings(path: str | Path) -> tuple[Config, list[ConfigIssue]]:
    """Load and check the config; return it with the warnings (settings that are legal but suspicious)."""
    doc = load_document(path)
    data = validate(doc, _CONFIG)
    if not isinstance(data, dict):
        doc.raise_if_invalid()
    base = Path(os.path.abspath(path)).parent
    profiles = _load_profiles(doc, data, base)
    _Checks(doc, data, base, profiles).run()
    doc.raise_if_invalid()
    return _build(data, base, profiles, base / Path(path).name), doc.warnings


def _load_profiles(doc: Document, data: dict[str, Any], base: Path) -> dict[str, Profile]:
    """The profiles the connectors name. Faults inside a profile file join the config's issues."""
    dirs = []
    for i, name in enumerate(data.get("profile_dirs", [])):
        if isinstance(name, str):
            directory = resolve_path(base, name)
            if directory.is_dir():
                dirs.append(directory)
            else:
                # A warning: a profile that only lives there is reported as unknown anyway.
                doc.warn(("profile_dirs", i), f"{directory} is not a directory; no profiles are read from it")
    known = available_profiles(dirs)
    profiles: dict[str, Profile] = {}
    broken: set[str] = set()
    for path, device in _devices(data):
        name = device.get("profile")
        if name is None or name in profiles or name in broken:
            continue
        if name not in known:
            close = close_match(name, list(known))
            hint = f"did you mean {close!r}? " if close else ""
            doc.error((*path, "profile"), f"unknown profile {name!r}; {hint}known: {', '.join(known) or 'none'}")
            broken.add(name)
            continue
        try:
            profiles[name] = load_profile(known[name])
        except ConfigError as exc:
            doc.issues.extend(exc.issues)
            broken.add(name)
    return profiles


def _items(data: dict[str, Any], key: str) -> list[tuple[int, dict[str, Any]]]:
    """The valid entries of a list section, with their original index (for locating faults)."""
    return [(i, item) for i, item in enumerate(data.get(key, [])) if isinstance(item, dict)]


def _devices(data: dict[str, Any]) -> list[tuple[KeyPath, dict[str, Any]]]:
    """Every Modbus device the config names, with its key path: each connector's charger, then its meter if any.

    A device has the keys bus, unit, profile, host and port (those that are valid).
    """
    out: list[tuple[KeyPath, dict[str, Any]]] = []
    for i, connector in _items(data, "connectors"):
        out.append((("connectors", i), connector))
        if isinstance(meter := connector.get("meter"), dict):
            out.append((("connectors", i, "meter"), meter))
    return out


def _where(path: KeyPath) -> str:
    """connectors[0] or connectors[0].meter: how a fault names a device."""
    return f"{path[0]}[{path[1]}]" + "".join(f".{key}" for key in path[2:])


class _Checks:
    """Cross-checks between sections. Each check skips entries whose own fields were already faulty."""

    def __init__(self, doc: Document, data: dict[str, Any], base: Path, profiles: dict[str, Profile]) -> None:
        self.doc = doc
        self.base = base
        self.data = data
        self.profiles = profiles
        self.buses = _items(data, "buses")
        self.connectors = _items(data, "connectors")
        self.devices = _devices(data)  # chargers and their meters
        self.bus_index: dict[str, int] = {}  # name -> index of its first definition

    def run(self) -> None:
        for check in (
            self.bus_names,
            self.connector_ids,
            self.connector_buses,
            self.addresses,
            self.timing,
            self.line_settings,
            self.backend,
            self.current_limits,
            self.wiring,
            self.meters,
        ):
            check()

    def error(self, path: KeyPath, message: str) -> None:
        self.doc.error(path, message)

    def bus_of(self, device: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        index = self.bus_index.get(device.get("bus", ""))
        return None if index is None else (index, self.data["buses"][index])

    def on_bus(self, index: int) -> list[tuple[KeyPath, dict[str, Any]]]:
        """The devices (chargers and meters) on a bus, with their key paths."""
        name = self.data["buses"][index].get("name")
        return [(path, d) for path, d in self.devices if d.get("bus") == name]

    def bus_names(self) -> None:
        ttys: dict[str, int] = {}
        for i, bus in self.buses:
            name, kind, port = bus.get("name"), bus.get("kind"), bus.get("port")
            if name is not None:
                if name in self.bus_index:
                    self.error(
                        ("buses", i, "name"), f"bus name {name!r} is already used by buses[{self.bus_index[name]}]"
                    )
                else:
                    self.bus_index[name] = i
            if kind in SERIAL_KINDS and "port" in bus and port is None:  # (not in bus: faulty, reported)
                self.error(("buses", i, "port"), f"is required for a serial ({kind}) bus, e.g. /dev/ttyS1")
            if kind == Framing.TCP.value and port is not None:
                self.error(
                    ("buses", i, "port"), "is for serial buses; a tcp device's host and port are set on its connector"
                )
            if kind in SERIAL_KINDS and port is not None:
                # One task owns each tty (STYLE 3): two buses on it would interleave frames.
                tty = os.path.realpath(resolve_path(self.base, port))
                if tty in ttys:
                    self.error(
                        ("buses", i, "port"),
                        f"{port} is already used by buses[{ttys[tty]}]: one serial port is one bus",
                    )
                else:
                    ttys[tty] = i

    def connector_ids(self) -> None:
        seen: dict[int, int] = {}
        for i, connector in self.connectors:
            cid = connector.get("id")
            if cid is None:
                continue
            if cid in seen:
                self.error(("connectors", i, "id"), f"connector id {cid} is already used by connectors[{seen[cid]}]")
            else:
                seen[cid] = i
        if seen and sorted(seen) != list(range(1, len(seen) + 1)):
            # OCPP 1.6 §3.7: the first connector is 1 and further ones "should be sequentially numbered".
            self.doc.warn(
                ("connectors",),
                f"connector ids {sorted(seen)} are not 1..{len(seen)}; backends expect them without gaps",
            )

    def connector_buses(self) -> None:
        used: set[str] = set()
        for path, device in self.devices:
            name = device.get("bus")
            if name is None:
                continue
            used.add(name)
            found = self.bus_of(device)
            if found is None:
                if self.buses and all("name" in b for _, b in self.buses):
                    self.error((*path, "bus"), f"unknown bus {name!r}; buses: {', '.join(self.bus_index)}")
                continue
            kind = found[1].get("kind")
            if kind == Framing.TCP.value and "host" in device and device["host"] is None:
                self.error((*path, "host"), f"is required: bus {name!r} is tcp")
            if kind in SERIAL_KINDS and device.get("host") is not None:
                self.error((*path, "host"), f"is only for tcp buses; bus {name!r} is a serial line")
            self.framing(path, device, found)
        if all("bus" in d for _, d in self.devices) and len(self.connectors) == len(self.data.get("connectors", [])):
            for name, index in self.bus_index.items():
                if name not in used:
                    self.error(("buses", index, "name"), f"no connector uses bus {name!r}")

    def framing(self, path: KeyPath, device: dict[str, Any], found: tuple[int, dict[str, Any]]) -> None:
        profile = self.profiles.get(device.get("profile", ""))
        kind = found[1].get("kind")
        if profile is None or kind is None:
            return
        framing = profile.line.framing.value
        # A tcp bus carries any device: a Modbus TCP gateway may front an RTU box.
        # On a serial line the framing must match: an ASCII line and an RTU line can never be mixed.
        if kind in SERIAL_KINDS and framing != kind:
            why = (
                "a Modbus TCP device cannot sit on a serial line"
                if framing == Framing.TCP.value
                else "an ASCII line and an RTU line can never be mixed"
            )
            self.error(
                (*path, "profile"),
                f"profile {profile.name!r} speaks {framing}, but bus {found[1].get('name')!r} is {kind}: {why}",
            )

    def addresses(self) -> None:
        """One device per unit on a line; the outlets of one multi-outlet controller share its unit."""
        seen: dict[tuple[Any, ...], tuple[KeyPath, dict[str, Any]]] = {}
        for path, device in self.devices:
            found, unit = self.bus_of(device), device.get("unit")
            if found is None or unit is None:
                continue
            kind = found[1].get("kind")
            if kind in SERIAL_KINDS:
                if not 1 <= unit <= 247:
                    # Modbus over serial line §2.2: 0 is broadcast, 248..255 reserved.
                    self.error((*path, "unit"), f"must be 1..247 on a serial line, got {unit}")
                key: tuple[Any, ...] = ("serial", device["bus"], unit)
                where = f"unit {unit} on bus {device['bus']!r}"
            elif kind == Framing.TCP.value and device.get("host") is not None and "port" in device:
                key = ("tcp", device["host"].lower(), device["port"], unit)
                where = f"{device['host']}:{device['port']} unit {unit}"
            else:
                continue
            first = seen.get(key)
            if first is None:
                seen[key] = (path, device)
            elif not self.outlets_of_one_controller((path, device), first):
                self.error((*path, "unit"), f"{where} is already used by {_where(first[0])}")

    def outlets_of_one_controller(self, a: tuple[KeyPath, dict[str, Any]], b: tuple[KeyPath, dict[str, Any]]) -> bool:
        """Two connectors on one unit are fine when they are other outlets of the same controller."""
        (path_a, device_a), (path_b, device_b) = a, b
        profile = self.profiles.get(device_a.get("profile", ""))
        return (
            len(path_a) == len(path_b) == 2  # chargers, not meters
            and profile is not None
            and profile.outlet_stride > 0
            and device_a.get("profile") == device_b.get("profile")
            and device_a.get("outlet") != device_b.get("outlet")
        )

    def timing(self) -> None:
        """Worst case, every device on a line is dead: each costs its inter-frame gap plus one
        request timeout per round, times its profile's `repeat` (the poller gives up on a device at its first failed read), and
        the devices of one line take turns. That round must fit in the poll period, or the live
        devices are polled late and their watchdogs may trip. A serial bus is one line; on a tcp
        bus each host:port is its own line, polled side by side with the others."""
        for index, bus in self.buses:
            poll, kind = bus.get("poll_interval_s"), bus.get("kind")
            if poll is None or kind is None or "request_timeout_s" not in bus:
                continue  # faulty, reported already
            connectors = [d for _, d in self.on_bus(index)]
            devices = [p for c in connectors if (p := self.profiles.get(c.get("profile", ""))) is not None]
            if not devices or len(devices) != len(connectors):
                continue  # an unknown or broken profile has its own fault, and its timing is unknown
            override = bus["request_timeout_s"]
            lines: dict[Any, list[Profile]] = {}
            for connector, profile in zip(connectors, devices, strict=True):
                endpoint = (
                    "serial" if kind in SERIAL_KINDS else (str(connector.get("host")).lower(), connector.get("port"))
                )
                lines.setdefault(endpoint, []).append(profile)
            for line in lines.values():
                # A device that wants every request sent `repeat` times (ABL) costs each send.
                worst = sum(p.repeat * (p.inter_frame_delay_s + (override or p.request_timeout_s)) for p in line)
                if worst > poll + 1e-9:
                    key = "request_timeout_s" if override is not None else "poll_interval_s"
                    self.error(
                        ("buses", index, key),
                        f"a round over {len(line)} dead device(s) takes {worst:.2f} s (gap + request timeout"
                        f" each, times repeat), longer than poll_interval_s {poll:g} s",
                    )
                    break
            for p in {p.name: p for p in devices}.values():
                if p.watchdog is None:
                    continue
                limit = p.watchdog.timeout_s
                if poll >= limit:
                    self.error(
                        ("buses", index, "poll_interval_s"),
                        f"{poll:g} s is not below the {limit:g} s watchdog of profile {p.name!r}:"
                        " the devices would fail safe and stop charging",
                    )
                elif poll > limit / 4:
                    self.doc.warn(
                        ("buses", index, "poll_interval_s"),
                        f"{poll:g} s is above a quarter of the {limit:g} s watchdog of profile {p.name!r};"
                        " a few slow polls would trip it",
                    )

    def line_settings(self) -> None:
        """A bus set differently from its devices' defaults: legal (the installer may know better,
        and a pty cannot do parity E), so a warning."""
        for index, bus in self.buses:
            if bus.get("kind") not in SERIAL_KINDS:
                continue
            warned: set[tuple[str, str]] = set()
            for path, device in self.on_bus(index):
                profile = self.profiles.get(device.get("profile", ""))
                if profile is None:
                    continue
                for key in ("baudrate", "parity", "stopbits", "bytesize"):
                    want, have = getattr(profile.line, key), bus.get(key)
                    if want is not None and have is not None and want != have and (profile.name, key) not in warned:
                        warned.add((profile.name, key))
                        self.doc.warn(
                            ("buses", index, key),
                            f"is {have}, but profile {profile.name!r} ({_where(path)}) expects {want}",
                        )

    def wiring(self) -> None:
        """A connector is a charger, and its site phases name one site phase for each phase of its device."""
        for i, connector in self.connectors:
            profile, phases = self.profiles.get(connector.get("profile", "")), connector.get("phases")
            if profile is not None and profile.kind != "charger":
                self.error(
                    ("connectors", i, "profile"),
                    f"{profile.name!r} is a {profile.kind} profile: a connector needs a charger, whose state drives its sessions",
                )
            if profile is not None and isinstance(phases, list) and len(phases) != profile.phases:
                self.error(
                    ("connectors", i, "phases"),
                    f"names {len(phases)} site phases, but {profile.name!r} has {profile.phases}",
                )
            outlet = connector.get("outlet")
            if profile is not None and outlet is not None and outlet > 1 and profile.outlet_stride == 0:
                self.error(
                    ("connectors", i, "outlet"),
                    f"{profile.name!r} has one outlet (no outlet_stride): outlet {outlet} does not exist",
                )

    def meters(self) -> None:
        """A connector's meter is a meter with an energy register; a charger without one needs a meter."""
        for i, connector in self.connectors:
            charger = self.profiles.get(connector.get("profile", ""))
            meter = connector.get("meter")
            if charger is not None and charger.kind == "charger" and "energy" not in charger.values and meter is None:
                if "meter" in connector:  # (absent: left out because it is faulty, and reported)
                    self.error(
                        ("connectors", i, "profile"),
                        f"connector {connector.get('id', i + 1)}: profile {charger.name!r} has no energy register;"
                        " give the connector a meter (meter: {bus, unit, profile}) to account its sessions",
                    )
            if not isinstance(meter, dict):
                continue
            profile = self.profiles.get(meter.get("profile", ""))
            if profile is None:
                continue
            if profile.kind != "meter":
                self.error(
                    ("connectors", i, "meter", "profile"),
                    f"{profile.name!r} is a {profile.kind} profile: a connector's meter needs a meter profile",
                )
            elif "energy" not in profile.values:
                self.error(
                    ("connectors", i, "meter", "profile"),
                    f"meter profile {profile.name!r} has no energy register: it cannot account sessions",
                )

    def backend(self) -> None:
        config_uplink.check(self.doc, self.data, self.base)

    def current_limits(self) -> None:
        for i, connector in self.connectors:
            profile, limit = self.profiles.get(connector.get("profile", "")), connector.get("max_current_a")
            if profile is None or limit is None:
                continue
            if limit < profile.min_current_a:
                self.error(
                    ("connectors", i, "max_current_a"),
                    f"{limit:g} A is below the {profile.min_current_a:g} A minimum of {profile.name!r}: it could never charge",
                )
            elif limit > profile.max_current_a:
                self.doc.warn(
                    ("connectors", i, "max_current_a"),
                    f"{limit:g} A is above the {profile.max_current_a:g} A maximum of {profile.name!r}, which applies",
                )


def _build(data: dict[str, Any], base: Path, profiles: dict[str, Profile], source: Path) -> Config:
    """Turn checked plain data into the frozen settings objects, resolving relative paths."""

    def bus(b: dict[str, Any]) -> BusSettings:
        port = None if b["port"] is None else str(resolve_path(base, b["port"]))
        return BusSettings(**(b | {"kind": Framing(b["kind"]), "port": port}))

    ocpp, simulator = data["ocpp"], data["simulator"]
    backend, uplinks, failover = config_uplink.build(data, base)
    control, firmware, commissioning = config_service.build(data, base)
    return Config(
        source=source,
        charge_point=ChargePointInfo(**data["charge_point"]),
        backend=backend,
        buses=tuple(bus(b) for b in data["buses"]),
        connectors=tuple(
            ConnectorSettings(
                **(c | {"phases": _tuple_or_none(c["phases"]), "meter": None if c["meter"] is None else MeterSettings(**c["meter"])})
            )
            for c in data["connectors"]
        ),
        storage=StorageSettings(path=resolve_path(base, data["storage"]["path"]), outbox_budget_mb=data["storage"]["outbox_budget_mb"]),
        authorization=AuthorizationSettings(**data["authorization"]),
        site=SiteSettings(**(data["site"] | {"phase_limit_a": _tuple_or_none(data["site"]["phase_limit_a"])})),
        ocpp=OcppSettings(
            **(ocpp | {"meter_values_sampled_data": tuple(ocpp["meter_values_sampled_data"]), "hard_reset_command": tuple(ocpp["hard_reset_command"])})
        ),
        simulator=SimulatorSettings(
            **(simulator | {key: tuple(simulator[key]) for key in ("idle_s", "session_kwh", "id_tags")})
        ),
        profiles=profiles,
        uplinks=uplinks,
        failover=failover,
        control=control,
        firmware=firmware,
        commissioning=commissioning,
    )
