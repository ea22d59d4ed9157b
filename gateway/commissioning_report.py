"""The commissioning report: one printable HTML file from a selftest and its config (REQUIREMENTS 24, 27).

Pure: `render_report` turns a gateway.selftest_checks.Selftest into a self-contained page: the
site, the charge point, the backend and its uplinks, each connector with its slave,
profile, what identified it and the ids it read, a label with a QR code per connector
where `commissioning.qr_url_template` is set (segno, inline SVG), every check with its
result, and a block for the installer's signature.

Nothing is loaded from elsewhere (no scripts, fonts, images or links: the file is printed
on site, often offline), every text from the config or a device is HTML-escaped, and no
secret appears: the password only as where it comes from. Print CSS: A4, each section on
its own page, rows and labels never split.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import segno

import gateway
from gateway.clock import iso
from gateway.devprofile import Framing
from gateway.selftest_checks import Check, Selftest, Status
from gateway.settings import Config, UplinkSettings
from gateway.uplink import backend_url
from gateway.uplink_security import effective_profile, is_tls

# OCPP 1.6 security whitepaper ed. 2 §2; 0 is ours: wss with neither (or plain ws in a lab).
SECURITY_PROFILES = {
    0: "TLS, the charge point not authenticated",
    1: "HTTP Basic auth over plain ws (a lab only)",
    2: "TLS and HTTP Basic auth",
    3: "TLS with a client certificate",
}
LAB = "plain ws: nothing encrypted or checked (insecure_lab_mode, a lab only)"
VERDICTS = {Status.OK: "PASSED", Status.WARN: "PASSED WITH WARNINGS", Status.FAIL: "FAILED"}

_CSS = """
@page { size: A4; margin: 15mm 14mm 16mm; }
* { box-sizing: border-box; }
body { font: 10pt/1.35 "DejaVu Sans", "Liberation Sans", Arial, Helvetica, sans-serif; color: #111;
       margin: 0 auto; max-width: 182mm; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
h1 { font-size: 19pt; margin: 0 0 1mm; }
h2 { font-size: 13.5pt; border-bottom: 0.5mm solid #222; padding-bottom: 1mm; margin: 0 0 3mm; }
h3 { font-size: 11pt; margin: 5mm 0 2mm; }
section { margin: 0 0 9mm; }
@media print { section + section { break-before: page; } }
table { border-collapse: collapse; width: 100%; margin: 0 0 2mm; }
th, td { border: 0.25mm solid #999; padding: 1mm 1.6mm; text-align: left; vertical-align: top; }
thead { display: table-header-group; }
thead th { background: #e8e8e8; }
tr, .label, .sign { break-inside: avoid; }
table.kv th { width: 48mm; background: #f3f3f3; font-weight: normal; }
.status { font-weight: bold; text-transform: uppercase; white-space: nowrap; }
.ok { color: #0a6b2e; } .warn { color: #8a5300; } .fail { color: #b00020; } .skipped { color: #555; }
.verdict { font-size: 13pt; font-weight: bold; border: 0.6mm solid currentColor; padding: 1.5mm 3mm; display: inline-block; margin: 2mm 0 4mm; }
.sub { color: #444; font-size: 9pt; }
ul.notes { margin: 1mm 0 0; padding-left: 4.5mm; font-size: 8.5pt; color: #333; }
.mono, .url { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 8.5pt; }
.url { word-break: break-all; }
.labels { display: flex; flex-wrap: wrap; gap: 6mm; }
.label { width: 86mm; border: 0.4mm dashed #333; padding: 4mm; text-align: center; }
td .number { font-size: 14pt; font-weight: bold; }
.label .number { font-size: 24pt; font-weight: bold; line-height: 1.1; }
.label svg { width: 42mm; height: 42mm; display: block; margin: 2mm auto; }
.sign th { width: 48mm; font-weight: normal; background: #f3f3f3; }
.sign td { height: 13mm; }
.remarks { height: 45mm; }
footer { margin-top: 6mm; font-size: 8pt; color: #555; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _status(status: Status) -> str:
    return f'<span class="status {status.value}">{_e(status.value)}</span>'


def _kv(rows: Iterable[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in rows)
    return f'<table class="kv">{body}</table>'


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Cells are HTML already (escaped by the caller)."""
    thead = "".join(f"<th>{_e(h)}</th>" for h in head)
    tbody = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{thead}</tr></thead><tbody>{tbody}</tbody></table>"


def _notes(notes: Iterable[str]) -> str:
    items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return f'<ul class="notes">{items}</ul>' if items else ""


def _data(result: Selftest, check: str) -> Mapping[str, Any]:
    found = result.check(check)
    return found.data if found is not None else {}


def qr_svg(text: str) -> str:
    """A QR code (error correction M: a label survives some scratches) as inline SVG sized by CSS; ValueError when too long."""
    return str(segno.make(text, error="m", boost_error=False).svg_inline(omitsize=True, svgclass="qr", lineclass=None))


# --- the sections ------------------------------------------------------------------------------------


def _site(result: Selftest, config: Config | None) -> str:
    verdict = result.verdict
    made = [
        ("Report made", f"{iso(result.wall)[:16].replace('T', ' ')} UTC"),
        ("Made by", f"{result.user} on {result.hostname}"),
        ("Software", f"charger-gateway {gateway.__version__}"),
        ("Config file", result.config_file),
        ("Mode", result.mode),
    ]
    head = (
        f"<h1>Commissioning report</h1>"
        f'<div class="verdict {verdict.value}">{_e(VERDICTS[verdict])}: {_e(result.tally)}</div>'
    )
    if config is None:
        return f'<section id="site">{head}<h2>Site and charge point</h2><p>The config did not load: see the self-test.</p>{_kv(made)}</section>'
    site, cp = config.commissioning, config.charge_point
    rows = [
        ("Site", site.site_name or "(not configured)"),
        ("Address", site.site_address or "(not configured)"),
        ("Operator", site.operator or "(not configured)"),
        ("Charge-point identity", cp.identity),
        ("Vendor / model", f"{cp.vendor} / {cp.model}"),
        ("Serial number", cp.serial_number or "(none)"),
        ("Connectors", str(len(config.connectors))),
    ]
    return f'<section id="site">{head}<h2>Site and charge point</h2>{_kv(rows + made)}{_backend(result, config)}{_uplinks(result, config)}</section>'


def _backend(result: Selftest, config: Config) -> str:
    backend, boot = config.backend, _data(result, "boot")
    profile = boot.get("security_profile", effective_profile(backend))
    rows: list[tuple[str, object]] = [
        ("URL", backend_url(backend, config.charge_point.identity)),
        ("Security profile", f"{profile}: {SECURITY_PROFILES.get(profile, '?') if is_tls(backend.url) or profile else LAB}"),
    ]
    if profile == 3:
        rows.append(("Client certificate", backend.client_cert or "(none)"))
    elif boot.get("credentials"):
        rows.append(("Basic-auth password", f"set, from {boot['credentials']} (never printed)"))
    elif backend.password_file is not None:
        rows.append(("Basic-auth password", f"password_file {backend.password_file} (never printed)"))
    if is_tls(backend.url):
        rows.append(("CA file", backend.ca_file or "the system's CAs"))
    for h in _data(result, "tls").get("handshakes", []):
        if h.get("problem") is None:
            rows.append((f"Backend certificate ({h['uplink']})",
                         f"{h['subject']}, issued by {h['issuer']}, valid until {str(h['not_after'])[:10]} ({h['days_left']:.0f} days), {h['version']}"))
    if (status := boot.get("status")) is not None:
        rows.append(("BootNotification", f"{status}" + (f", heartbeat interval {boot['interval']} s" if boot.get("interval") else "")))
    return f"<h3>Backend</h3>{_kv(rows)}"


def _uplink_where(uplink: UplinkSettings) -> str:
    parts = [f"interface {uplink.interface}" if uplink.interface else "", f"from {uplink.source_address}" if uplink.source_address else ""]
    if uplink.modem is not None:
        parts.append(f"modem AT port {uplink.modem.at_port}")
    if uplink.monthly_budget_mb is not None:
        parts.append(f"budget {uplink.monthly_budget_mb:g} MB a month")
    return ", ".join(p for p in parts if p) or "the default route"


def _uplinks(result: Selftest, config: Config) -> str:
    reached = {r["uplink"]: r for r in _data(result, "uplink").get("uplinks", [])}

    def outcome(name: str) -> str:
        r = reached.get(name)
        if r is None:
            return '<span class="sub">not checked</span>'
        if r.get("problem"):
            return f'{_status(Status.FAIL)} {_e(r["problem"])}'
        return f"{_status(Status.OK)} connected in {r['elapsed_ms']:.0f} ms"

    rows = [(_e(f"{i}. {u.name}"), _e(_uplink_where(u)), outcome(u.name)) for i, u in enumerate(config.uplinks, 1)]
    return "<h3>Uplinks (in order of preference)</h3>" + _table(("Uplink", "Way", "Reaches the backend"), rows)


def _slave(config: Config, bus_name: str, unit: int, host: str | None, port: int) -> str:
    bus = config.bus(bus_name)
    if bus.kind is Framing.TCP:
        return f"{bus.name}: Modbus TCP {host}:{port}, unit {unit}"
    return f"{bus.name}: Modbus {bus.kind.value.upper()} {bus.port}, {bus.baudrate} {bus.bytesize}{bus.parity}{bus.stopbits}, unit {unit}"


def _identified(device: Mapping[str, Any] | None) -> str:
    if device is None:
        return '<span class="sub">not checked</span>'
    if not device["answered"]:
        verdict = f"{_status(Status.FAIL)} no answer"
    elif device["matches"]:
        verdict = f"{_status(Status.OK)} matches"
    else:
        looks = device.get("looks_like") or []
        verdict = f"{_status(Status.FAIL)} does not match" + (f"; looks like {_e(', '.join(looks))}" if looks else "")
    ids = "".join(f"<br>{_e(k)}: <span class=\"mono\">{_e(v)}</span>" for k, v in (device.get("ids") or {}).items())
    return f'{verdict}<div class="sub">{_e(device.get("detail", ""))}</div>{ids}'


def _connectors(result: Selftest, config: Config) -> str:
    devices = {(d["connector"], d["role"]): d for d in _data(result, "slaves").get("devices", [])}
    rows = []
    for c in config.connectors:
        profile = config.profile_of(c)
        phases = " ".join(f"L{p}" for p in config.site_phases(c))
        outlet = f", outlet {c.outlet}" if c.outlet > 1 else ""
        rows.append((
            f'<span class="number">{c.id}</span>', _e(_slave(config, c.bus, c.unit, c.host, c.port) + outlet),
            _e(profile.name) + f'<div class="sub">{_e(profile.description)}</div>',
            _identified(devices.get((c.id, "charger"))),
            _e(f"{config.max_current_a(c):g} A"), _e(f"{profile.phases} ({phases})"),
        ))
        if (m := c.meter) is not None:
            rows.append((
                _e(f"{c.id} meter"), _e(_slave(config, m.bus, m.unit, m.host, m.port)), _e(m.profile),
                _identified(devices.get((c.id, "meter"))), "", "",
            ))
    head = ("Connector", "Slave (bus, unit)", "Profile", "Identified", "Max current", "Phases (site)")
    return f'<section id="connectors"><h2>Connectors</h2>{_table(head, rows)}</section>'


def _labels(config: Config) -> str:
    """A label per connector: its number, the charge point, the operator, and the QR code (REQUIREMENTS 24)."""
    template = config.commissioning.qr_url_template
    if template is None:
        return ""
    cards = []
    for c in config.connectors:
        url = template.format(identity=config.charge_point.identity, connector=c.id)  # checked at load (config_service)
        try:
            code = qr_svg(url)
        except ValueError as exc:  # segno's DataOverflowError: no QR code holds it
            code = f'<p class="fail">no QR code: {_e(exc)}</p>'
        operator = f"<div>{_e(config.commissioning.operator)}</div>" if config.commissioning.operator else ""
        cards.append(
            f'<div class="label"><div class="number">Connector {c.id}</div><div>{_e(config.charge_point.identity)}</div>'
            f'{code}<div class="url">{_e(url)}</div>{operator}</div>'
        )
    return f'<section id="labels"><h2>Connector labels</h2><div class="labels">{"".join(cards)}</div></section>'


def _checks(checks: Sequence[Check]) -> str:
    rows = [
        (_e(i), _e(c.title), _status(c.status), _e(c.detail) + _notes(c.notes))
        for i, c in enumerate(checks, 1)
    ]
    return f'<section id="checks"><h2>Self-test</h2>{_table(("#", "Check", "Result", "Detail"), rows)}</section>'


def _signature() -> str:
    fields = ("Installer (name)", "Company", "Place and date", "Signature")
    rows = "".join(f"<tr><th>{_e(f)}</th><td></td></tr>" for f in fields)
    return (
        '<section id="signature"><h2>Installer\'s sign-off</h2>'
        "<p>I installed and commissioned this charge point as described in this report, and checked the results above.</p>"
        f'<table class="sign">{rows}</table><h3>Remarks</h3><table><tr><td class="remarks"></td></tr></table></section>'
    )


def render_report(result: Selftest) -> str:
    """The whole report as one HTML document (UTF-8)."""
    config = result.config
    identity = config.charge_point.identity if config else "unknown charge point"
    parts = [_site(result, config)]
    if config is not None:
        parts += [_connectors(result, config), _labels(config)]
    parts += [_checks(result.checks), _signature()]
    footer = f"<footer>charger-gateway {_e(gateway.__version__)} selftest, {_e(iso(result.wall))}, {_e(identity)}</footer>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Commissioning report {_e(identity)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(parts)}{footer}</body></html>\n"
    )
