"""The commissioning report: a well-formed, self-contained page that prints, shows what the selftest found,
carries a QR code per connector, and never lets text from the config or a device become markup.

Pure: the selftest result is built from the verdict functions of gateway.selftest_checks, the
config is loaded from a real file; nothing runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.clock import EARLIEST_VALID
from gateway.commissioning_report import qr_svg, render_report
from gateway.config import load_config_with_warnings
from gateway.errors import ConfigError, ConfigIssue
from gateway.selftest_checks import (
    BootOutcome,
    Check,
    Device,
    Handshake,
    Reach,
    Selftest,
    Status,
    boot_check,
    clock_check,
    config_check,
    skipped,
    slaves_check,
    tls_check,
    uplinks_check,
)

NOW = EARLIEST_VALID + 100 * 86400
SECRET = "s3cret-Passw0rd-never-printed"
HOSTILE = "<script>alert('site')</script>"
TEMPLATE = "https://pay.example.net/start/{identity}/{connector}?a=<b>&c=\"d\""
HEIDELBERG = "heidelberg-energy-control"
# What the page may contain: text, tables and inline SVG. No script, image, frame, link or form.
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "section", "footer", "h1", "h2", "h3", "p", "div", "span",
    "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "br", "svg", "path",
}
VOID = {"meta", "br"}


class Page(HTMLParser):
    """Every tag and text of a page (what a reader sees: not the style sheet), and whether its tags nest properly."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self.open: list[str] = []
        self.misnested: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.misnested.append(tag)

    def handle_data(self, data: str) -> None:
        if self.open[-1:] != ["style"]:
            self.texts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.texts)


def svgs(html: str) -> list[str]:
    """The inline SVG elements of a page, as written."""
    out, start = [], 0
    while (i := html.find("<svg", start)) >= 0:
        end = html.index("</svg>", i) + len("</svg>")
        out.append(html[i:end])
        start = end
    return out


def site(tmp_path: Path, **commissioning: Any) -> Path:
    (tmp_path / "backend-password").write_text(SECRET)
    doc = {
        "charge_point": {"identity": "CP-REPORT-1", "vendor": "<b>Evil</b> & Co", "model": "M<1>", "serial_number": "SN\"'<"},
        "backend": {"url": "wss://backend.example.net/ocpp", "password_file": str(tmp_path / "backend-password")},
        "buses": [
            {"name": "rs485", "kind": "rtu", "port": str(tmp_path / "tty<USB>0"), "parity": "E", "poll_interval_s": 2},
            {"name": "lan", "kind": "tcp"},
        ],
        "connectors": [
            {"id": 1, "bus": "rs485", "unit": 1, "profile": HEIDELBERG, "max_current_a": 10, "phases": [2, 3, 1],
             "meter": {"bus": "rs485", "unit": 10, "profile": "eastron-sdm630"}},
            {"id": 2, "bus": "rs485", "unit": 2, "profile": HEIDELBERG},
            {"id": 3, "bus": "lan", "host": "127.0.0.1", "port": 1502, "unit": 1, "profile": HEIDELBERG},
        ],
        "storage": {"path": str(tmp_path / "gw.db")},
        "uplinks": [{"name": "wired", "interface": "eth0"}, {"name": "gprs", "interface": "ppp0", "monthly_budget_mb": 50}],
        "commissioning": commissioning,
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def selftest(path: Path) -> Selftest:
    config, warnings = load_config_with_warnings(path)
    devices = [
        Device(1, "charger", "rs485", 1, "unit 1 on rs485", HEIDELBERG, True, True, "answers as heidelberg-energy-control",
               ids={"serial": "<img src=x onerror=alert(1)>", "layout_version": "264 (0x0108)"}),
        Device(1, "meter", "rs485", 10, "unit 10 on rs485", "eastron-sdm630", True, False,
               "answered, but eastron-sdm630's identify checks do not hold", looks_like=("carlo-gavazzi-em340",)),
        Device(2, "charger", "rs485", 2, "unit 2 on rs485", HEIDELBERG, False, None, "no answer in 2 tries (<timeout>)"),
        Device(3, "charger", "lan", 1, "127.0.0.1:1502 unit 1 on lan", HEIDELBERG, True, True, "answers as heidelberg-energy-control"),
    ]
    url = config.backend.url
    checks = (
        config_check(str(path), config, warnings, None),
        slaves_check(devices),
        clock_check(NOW, True),
        uplinks_check(url, [Reach("wired", None, 12.0), Reach("gprs", "interface ppp0 is missing or down")]),
        tls_check(url, [Handshake("wired", None, "TLSv1.3", "CN=backend.example.net", "CN=<Operator> CA", NOW + 90 * 86400)], NOW),
        boot_check(BootOutcome("wired", "Accepted", 300, credentials=f"password_file {path.parent / 'backend-password'}"), 2),
    )
    return Selftest(str(path), config, checks, NOW, "master-<01>", "tech & co", False)


def test_the_report_is_well_formed_self_contained_and_escapes_every_hostile_text(tmp_path: Path) -> None:
    path = site(tmp_path, site_name=HOSTILE, site_address="Rue de l'Église 3 & <4>", operator="<iframe src=//evil>", qr_url_template=TEMPLATE)
    html = render_report(selftest(path))
    page = Page(html)
    assert page.misnested == [] and page.open == []
    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS
    attributes = {name for _, attrs in page.tags for name in attrs}
    assert attributes <= {"lang", "charset", "class", "id", "viewbox", "stroke", "d"}, attributes  # no src, href, on*, style
    css = html[html.index("<style>"):html.index("</style>")]
    assert "url(" not in css and "@import" not in css
    for hostile in (HOSTILE, "<iframe src=//evil>", "<b>Evil</b> & Co", "<img src=x onerror=alert(1)>", "tty<USB>0", "CN=<Operator> CA",
                    "master-<01>", "tech & co", "Rue de l'Église 3 & <4>"):
        assert hostile in page.text, hostile  # shown as text, never as markup
    assert "<script" not in html and "<img" not in html and "<iframe" not in html and "<b>" not in html


def test_each_connector_gets_a_label_with_the_qr_code_of_its_url(tmp_path: Path) -> None:
    path = site(tmp_path, operator="ACME Charge, hotline +32 2 555 01 23", qr_url_template=TEMPLATE)
    html = render_report(selftest(path))
    urls = [TEMPLATE.format(identity="CP-REPORT-1", connector=c) for c in (1, 2, 3)]
    assert svgs(html) == [qr_svg(url) for url in urls]
    assert len({qr_svg(url) for url in urls}) == 3, "three different codes"
    text = Page(html).text
    assert all(url in text for url in urls) and text.count("ACME Charge, hotline +32 2 555 01 23") == 4  # site table + 3 labels
    assert 'id="labels"' in html


def modules(svg: str) -> list[list[bool]]:
    """The dark modules an inline SVG of segno's draws: its path is rows of `h` strokes, one unit high,
    centred on y + 0.5, between relative moves; anything else in it fails the reading."""
    size = re.fullmatch(r'<svg viewBox="0 0 (\d+) (\d+)" class="qr"><path stroke="#000" d="([^"]+)"/></svg>', svg)
    assert size is not None and size[1] == size[2], svg[:120]
    grid = [[False] * int(size[1]) for _ in range(int(size[1]))]
    x = y = 0.0
    for op, a, b in re.findall(r"([Mmh])(-?[\d.]+)(?: (-?[\d.]+))?", size[3]):
        if op == "h":
            for column in range(int(x), int(x + float(a))):
                grid[int(y)][column] = True
            x += float(a)
        else:
            x, y = (float(a), float(b)) if op == "M" else (x + float(a), y + float(b))
    assert re.sub(r"[Mmh]-?[\d.]+(?: -?[\d.]+)?", "", size[3]) == "", "a path command this reading does not know"
    return grid


def decode(svg: str) -> str:
    """What an independent decoder (zbar, as a phone's scanner would) reads from the drawn code."""
    grid, scale = modules(svg), 4
    rows = [bytes(0 if grid[r // scale][c // scale] else 255 for c in range(len(grid) * scale)) for r in range(len(grid) * scale)]
    image = f"P5 {len(grid) * scale} {len(grid) * scale} 255\n".encode() + b"".join(rows)  # PGM: dark modules black on white
    read = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", "-"], input=image, capture_output=True, timeout=30)
    assert read.returncode == 0, read.stderr.decode()
    return read.stdout.decode().removesuffix("\n")


@pytest.mark.skipif(shutil.which("zbarimg") is None, reason="zbarimg (Debian zbar-tools) is not installed")
def test_each_label_scans_to_its_connectors_url(tmp_path: Path) -> None:
    """The codes decoded, not compared with segno's own output: what a phone reads off the sticker."""
    path = site(tmp_path, qr_url_template=TEMPLATE)
    codes = svgs(render_report(selftest(path)))
    assert [decode(svg) for svg in codes] == [TEMPLATE.format(identity="CP-REPORT-1", connector=c) for c in (1, 2, 3)]


def test_a_qr_url_template_takes_only_identity_and_connector(tmp_path: Path) -> None:
    """str.format takes {identity.upper} (garbage on the sticker) and raises on {connector[0]}: both are config faults (exit 78)."""
    for template in ("https://x/{identity.upper}/{connector}", "https://x/{connector[0]}", "https://x/{site}/{connector}",
                     "https://x/{}", "https://x/{identity", "https://x/{identity:d}", "https://x/{connector:{identity}}"):
        with pytest.raises(ConfigError) as caught:
            load_config_with_warnings(site(tmp_path, qr_url_template=template))
        assert [i.path for i in caught.value.issues] == ["commissioning.qr_url_template"], template
    path = site(tmp_path, qr_url_template="https://x/{identity}/{connector:02d}?{{literal}}")
    assert "https://x/CP-REPORT-1/03?{literal}" in render_report(selftest(path))


def test_the_report_shows_site_connectors_checks_and_signature_and_prints_on_a4(tmp_path: Path) -> None:
    path = site(tmp_path, site_name="Parking Nord", operator="ACME")
    html = render_report(selftest(path))
    text = Page(html).text
    assert "<svg" not in html and 'id="labels"' not in html, "no template, no QR codes"
    for section in ("site", "connectors", "checks", "signature"):
        assert f'<section id="{section}">' in html
    assert "@page { size: A4" in html and "section + section { break-before: page; }" in html
    assert "PASSED WITH WARNINGS" not in text and "FAILED" in text  # a slave did not answer
    assert "wss://backend.example.net/ocpp/CP-REPORT-1" in text and "2: TLS and HTTP Basic auth" in text
    assert f"set, from password_file {tmp_path / 'backend-password'} (never printed)" in text
    assert SECRET not in html
    assert "10 A" in text and "3 (L2 L3 L1)" in text and "16 A" in text and "3 (L1 L2 L3)" in text
    assert "does not match; looks like carlo-gavazzi-em340" in text and "no answer" in text
    assert "layout_version: 264 (0x0108)" in text
    assert "valid until" in text and "90 days" in text
    assert "interface ppp0 is missing or down" in text and "budget 50 MB a month" in text
    for field in ("Installer (name)", "Company", "Place and date", "Signature"):
        assert field in text


def test_a_config_that_did_not_load_still_gives_a_report_of_why(tmp_path: Path) -> None:
    issue = ConfigIssue(str(tmp_path / "site.yaml"), 4, "backend.url", "must start with <wss://>")
    checks = (config_check("site.yaml", None, [], ConfigError([issue])),) + tuple(
        skipped(name, "the config is invalid") for name in ("slaves", "clock", "uplink", "tls", "boot")
    )
    result = Selftest("site.yaml", None, checks, NOW, "master", "root", False)
    html = render_report(result)
    page = Page(html)
    assert page.misnested == [] and "must start with <wss://>" in page.text and "The config did not load" in page.text
    assert result.exit_code == 78 and "FAILED" in page.text and 'id="signature"' in html


def test_a_check_result_is_rendered_with_its_notes() -> None:
    check = Check("uplink", Status.WARN, "reached over wired", ("wired: connected in 3 ms", "gprs: <down>"))
    result = Selftest("site.yaml", None, (check,), NOW, "h", "u", False)
    html = render_report(result)
    text = Page(html).text
    assert "Uplink reaches the backend" in text and "gprs: <down>" in text and "warn" in text
    assert '<span class="status warn">warn</span>' in html and "wired: connected in 3 ms" in text
