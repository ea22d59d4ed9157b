"""What `charger-gateway scan` prints: a `connectors:` block to paste into the config, or JSON.

Pure: it renders the ScanResult that gateway.scan's probing returns.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.devprofile import Framing, Profile
from gateway.scan import Device, ScanResult
from gateway.settings import BusSettings

# Text YAML reads back as the same string (or a dotted IPv4 address), so it needs no quotes.
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*|[0-9]+(\.[0-9]+){3}")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def line_mismatches(bus: BusSettings, profile: Profile) -> list[str]:
    """Where the bus differs from the profile's factory line settings: a hint, not a fault (testing-notes.md)."""
    if bus.kind is Framing.TCP:
        framing = profile.line.framing
        return [] if framing is Framing.TCP else [f"a {framing.value} device: behind a TCP gateway"]
    out = []
    for key in ("baudrate", "parity", "stopbits", "bytesize"):
        want, have = getattr(profile.line, key), getattr(bus, key)
        if want is not None and want != have:
            out.append(f"bus {key} {have}, profile expects {want}")
    return out


def _entry(device: Device, bus: str) -> dict[str, Any]:
    """Where the device is and what it is: the keys a connector and a meter have alike."""
    best = device.best
    assert best is not None
    entry: dict[str, Any] = {"bus": bus, "unit": device.target.unit, "profile": best.profile.name}
    if device.target.host is not None:
        entry |= {"host": device.target.host, "port": device.target.port}
    return entry


def _connectors(result: ScanResult, first_id: int) -> list[tuple[Device, dict[str, Any]]]:
    """A connector entry per charger outlet found, numbered from first_id."""
    out: list[tuple[Device, dict[str, Any]]] = []
    for device in _chargers(result):
        for outlet in range(1, device.outlets + 1):
            entry = {"id": first_id + len(out)} | _entry(device, result.plan.bus.name)
            out.append((device, entry | ({"outlet": outlet} if device.outlets > 1 else {})))
    return out


def _chargers(result: ScanResult) -> list[Device]:
    return [d for d in result.devices if (b := d.best) is not None and b.profile.kind == "charger"]


def _meters(result: ScanResult) -> list[Device]:
    return [d for d in result.devices if (b := d.best) is not None and b.profile.kind == "meter"]


def to_json(result: ScanResult, first_id: int = 1) -> dict[str, Any]:
    """The scan as plain data: the devices with every match, and the connector entries to configure."""
    plan, bus = result.plan, result.plan.bus
    return {
        "bus": {
            "name": bus.name, "kind": bus.kind.value, "port": bus.port, "baudrate": bus.baudrate,
            "parity": bus.parity, "stopbits": bus.stopbits, "bytesize": bus.bytesize,
        },
        "units": list(plan.units),
        "endpoints": [{"host": h, "port": p} for h, p in plan.endpoints],
        "probe": {"table": plan.probe.table.value, "address": plan.probe.address, "timeout_s": round(plan.timeout_s, 4)},
        "elapsed_s": round(result.elapsed_s, 3),
        "requests": result.requests,
        "timeouts": result.timeouts,
        "devices": [
            {
                "unit": d.target.unit, "host": d.target.host, "port": d.target.port,
                "presence": d.presence.value, "detail": d.detail, "status": d.status,
                "profile": d.best.profile.name if d.best else None,
                "kind": d.best.profile.kind if d.best else None,
                "matches": [{"profile": m.profile.name, "checks": m.checks, "words": m.words} for m in d.matches],
                "outlets": d.outlets,
                "line_mismatches": line_mismatches(bus, d.best.profile) if d.best else [],
            }
            for d in result.devices
        ],
        "unreachable": [{"host": h, "port": p, "error": why} for h, p, why in result.unreachable],
        "connectors": [entry for _, entry in _connectors(result, first_id)],
        "meters": [_entry(d, bus.name) for d in _meters(result)],
    }


def _scalar(value: object) -> str:
    """A YAML scalar: plain where YAML reads it back as the same string or number, else double-quoted (JSON is YAML)."""
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)


def _about(device: Device, bus: BusSettings) -> list[str]:
    """The comment lines over a device: its model, the alternatives, line settings that differ."""
    best = device.best
    assert best is not None
    how = f"identified by {best.checks} check(s)" if best.certain else "possible (its profile has no identify checks)"
    lines = [f"{device.target}: {best.profile.name}, {best.profile.description}; {how}"]
    if len(device.matches) > 1:
        lines.append("  also matches: " + ", ".join(m.profile.name + ("" if m.certain else " (possible)") for m in device.matches[1:]))
    if device.outlets > 1:
        lines.append(f"  {device.outlets} outlets answer (profile outlet_stride {best.profile.outlet_stride})")
    lines += [f"  line: {m}" for m in line_mismatches(bus, best.profile)]
    return lines


def render_yaml(result: ScanResult, first_id: int = 1) -> str:
    """A `connectors:` block ready to paste into the config, with a comment per device.

    Meters are listed in comments only (a meter is configured on a connector, not
    as one); so are units that answered but match no profile, and TCP endpoints
    that refused.
    """
    plan, bus = result.plan, result.plan.bus
    where = f"{bus.kind.value} {bus.baudrate} {bus.bytesize}{bus.parity}{bus.stopbits} on {bus.port}" if bus.port else bus.kind.value
    out = [
        f"# charger-gateway scan of bus {bus.name} ({where}): {len(result.devices)} device(s) answered,"
        f" {len(plan.units) * max(1, len(plan.endpoints))} address(es) probed in {result.elapsed_s:.1f} s",
    ]
    connectors = _connectors(result, first_id)
    if connectors:
        out.append("connectors:")
        for i, (device, entry) in enumerate(connectors):
            if i == 0 or connectors[i - 1][0] is not device:
                out += [f"  # {line}" for line in _about(device, bus)]
            keys = list(entry)
            out.append(f"  - {keys[0]}: {_scalar(entry[keys[0]])}")
            out += [f"    {key}: {_scalar(entry[key])}" for key in keys[1:]]
    else:
        out.append("# no charger found: nothing to configure as a connector")
    meters = _meters(result)
    if meters:
        out.append("# meters found; to have one measure a connector, add its meter: line to that connector:")
        for device in meters:
            out += [f"#   {line}" for line in _about(device, bus)]
            fields = ", ".join(f"{key}: {_scalar(value)}" for key, value in _entry(device, bus.name).items())
            out.append(f"#     meter: {{{fields}}}")
    unknown = [d for d in result.devices if d.best is None]
    if unknown:
        out.append("# answered, but no profile matches:")
        out += [f"#   {d.target}: {d.presence.value}: {d.detail}" for d in unknown]
    if result.unreachable:
        out.append("# unreachable:")
        out += [f"#   {host}:{port}: {why}" for host, port, why in result.unreachable]
    return "\n".join(out) + "\n"
