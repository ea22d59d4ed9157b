"""`charger-gateway selftest`: the verdicts, pure; then whole runs against the simulator and the strict backend.

The standalone runs use the real parts: the simulator's slaves on a pty line (parity N,
testing-notes.md) and on loopback Modbus TCP, the independent npm ocpp-rpc backend in
strict mode, with TLS from certificates made at test time. The daemon-running path is
played by a small Unix-socket server in this file that answers `identify` and `status`
per the control-socket protocol of issue 7; what it proves is the client's side: that
selftest then asks the daemon, and neither opens the serial lines nor speaks OCPP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import selftest
from gateway.clock import EARLIEST_VALID
from gateway.config import load_config_with_warnings
from gateway.selftest import run_selftest
from gateway.selftest_checks import (
    BootOutcome,
    Device,
    Handshake,
    Reach,
    Selftest,
    Status,
    boot_check,
    clock_check,
    daemon_boot_check,
    daemon_devices,
    slaves_check,
    tls_check,
    uplinks_check,
)
from tests.certs import make_self_signed_cert
from tests.loopback import free_port
from tests.ocpp_rpc_peer import OcppRpcBackend
from tests.test_backend_commands import IDENTITY as CLUSTER_ID
from tests.test_backend_commands import cluster_config, daemon_on_simulator
from tests.test_simulator import simulating

IDENTITY = "CP-SELFTEST-1"
HEIDELBERG = "heidelberg-energy-control"
PASSWORD = "installer-password-of-16+-bytes"
NOW = EARLIEST_VALID + 300 * 86400


def device(connector: int, answered: bool = True, matches: bool | None = True, detail: str = "answers") -> Device:
    return Device(connector, "charger", "rs485", connector, f"unit {connector} on rs485", HEIDELBERG, answered, matches, detail)


# --- the verdicts, pure ---------------------------------------------------------------------------


def test_the_clock_fails_before_the_gateway_existed_and_warns_without_ntp() -> None:
    assert clock_check(0.0, None).status is Status.FAIL
    assert "1970-01-01" in clock_check(0.0, None).detail and "NTP" in clock_check(0.0, None).detail
    assert clock_check(NOW, False).status is Status.WARN
    assert clock_check(NOW, True).status is Status.OK and "kept by NTP" in clock_check(NOW, True).detail
    unknown = clock_check(NOW, None)
    assert unknown.status is Status.OK and "unknown" in unknown.detail and unknown.data["ntp_synchronised"] is None


def test_uplinks_fail_when_none_reaches_and_warn_when_a_spare_does_not() -> None:
    url = "wss://backend.example.net/ocpp"
    good, bad = Reach("wired", None, 3.0), Reach("gprs", "interface ppp0 is missing or down")
    assert uplinks_check(url, [good]).status is Status.OK
    some = uplinks_check(url, [good, bad])
    assert some.status is Status.WARN and "gprs: interface ppp0 is missing or down" in some.detail
    none = uplinks_check(url, [bad])
    assert none.status is Status.FAIL and "backend.example.net:443" in none.detail


def test_tls_warns_in_lab_mode_and_near_the_certificate_end() -> None:
    url = "wss://backend.example.net/ocpp"
    lab = tls_check("ws://127.0.0.1:9000/ocpp", [], NOW)
    assert lab.status is Status.WARN and "insecure_lab_mode" in lab.detail

    def shake(days: float) -> Handshake:
        return Handshake("wired", None, "TLSv1.3", "CN=backend", "CN=Operator CA", NOW + days * 86400)

    assert tls_check(url, [shake(200)], NOW).status is Status.OK
    near = tls_check(url, [shake(10)], NOW)
    assert near.status is Status.WARN and "10 day(s)" in near.detail and near.data["handshakes"][0]["days_left"] == 10
    refused = tls_check(url, [shake(200), Handshake("gprs", "the backend's certificate did not validate: self-signed")], NOW)
    assert refused.status is Status.FAIL and refused.detail.startswith("gprs: the backend's certificate did not validate")
    assert tls_check(url, [], NOW, "the system clock says 1970").status is Status.FAIL
    assert tls_check(url, [], NOW).status is Status.SKIPPED


def test_boot_verdicts_and_the_backends_clock() -> None:
    accepted = boot_check(BootOutcome("wired", "Accepted", 300, "2026-06-01T12:00:05.000Z", 1780315200.0), 2)
    assert accepted.status is Status.OK and "heartbeat interval 300 s" in accepted.detail
    assert accepted.data["clock_offset_s"] == 5.0 and "+5 s" in accepted.detail and "answered_wall" not in accepted.data
    assert boot_check(BootOutcome("wired", "Pending", 60), 2).status is Status.WARN
    rejected = boot_check(BootOutcome("wired", "Rejected", 60), 2)
    assert rejected.status is Status.FAIL and "identity registered" in rejected.detail
    refused = boot_check(BootOutcome("gprs", problem="the backend refused the credentials (HTTP 401)"), 1)
    assert refused.status is Status.FAIL and refused.detail.endswith("(over gprs, security profile 1)")


def test_slaves_fail_when_one_is_silent_or_another_model() -> None:
    assert slaves_check([device(1), device(2)]).status is Status.OK
    result = slaves_check([device(1), device(2, False, None, "no answer in 2 tries"), device(3, matches=False, detail="looks like keba-p30")])
    assert result.status is Status.FAIL
    assert result.detail.startswith("2 of 3 device(s) fail; first: connector 2 charger: no answer")
    assert [d["matches"] for d in result.data["devices"]] == [True, None, False]
    assert slaves_check([]).status is Status.FAIL


def test_the_daemons_answers_are_read_strictly() -> None:
    answer = [{"connector": 1, "bus": "rs485", "unit": 1, "profile": HEIDELBERG, "answered": True, "matches": True, "detail": "ok"},
              {"connector": 2, "bus": "rs485", "unit": 2, "profile": HEIDELBERG, "answered": False, "matches": None, "detail": "silent"}]
    devices = daemon_devices(answer)
    assert [(d.connector, d.ok) for d in devices] == [(1, True), (2, False)]
    for bad in ({"connector": 1}, [{"connector": 1}], [answer[0] | {"answered": "yes"}]):
        with pytest.raises(ValueError):
            daemon_devices(bad)
    up = daemon_boot_check({"uplink": {"name": "wired", "connected": True, "security_profile": 2}})
    assert up.status is Status.OK and "over wired, security profile 2" in up.detail and up.data["security_profile"] == 2
    down = daemon_boot_check({"uplink": {"name": "gprs", "connected": False, "problem": "gprs: HTTP 401"}})
    assert down.status is Status.FAIL and "HTTP 401" in down.detail
    assert daemon_boot_check({"queue": 3}).status is Status.FAIL


# --- whole runs -----------------------------------------------------------------------------------


def write_config(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def site_doc(tmp_path: Path, backend: dict[str, Any], connectors: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "charge_point": {"identity": IDENTITY, "vendor": "OpenGateway", "model": "Cluster", "serial_number": "SN-7"},
        "backend": backend,
        "buses": [
            {"name": "rs485", "kind": "rtu", "port": str(tmp_path / "ttyRS485"), "parity": "N", "baudrate": 19200, "poll_interval_s": 2},
            {"name": "lan", "kind": "tcp"},
        ],
        "connectors": connectors,
        "storage": {"path": str(tmp_path / "state" / "gw.db")},
        "control": {"socket": str(tmp_path / "control.sock")},
        "commissioning": {"site_name": "Parking Nord", "operator": "ACME Charge", "qr_url_template": "https://pay.example.net/{identity}/{connector}"},
        "simulator": {"seed": 3, "wire_delay": True, "turnaround": True},
    } | extra


@contextlib.asynccontextmanager
async def simulated(path: Path) -> AsyncIterator[None]:
    """The slaves of the config at `path`, played by the simulator until the block ends."""
    async with simulating(load_config_with_warnings(path)[0]):
        yield


def statuses(result: Selftest) -> dict[str, Status]:
    return {c.name: c.status for c in result.checks}


@pytest.mark.interop
async def test_a_sound_site_passes_over_tls_and_the_report_lands_next_to_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    (tmp_path / "backend-password").write_text(PASSWORD + "\n")
    async with OcppRpcBackend(password=PASSWORD, tls_cert=cert, tls_key=key) as backend:
        tcp = free_port()
        path = write_config(tmp_path, "site.yaml", site_doc(
            tmp_path,
            {"url": backend.url, "ca_file": str(cert), "password_file": str(tmp_path / "backend-password"), "response_timeout_s": 5},
            [
                {"id": 1, "bus": "rs485", "unit": 1, "profile": HEIDELBERG, "meter": {"bus": "rs485", "unit": 10, "profile": "eastron-sdm630"}},
                {"id": 2, "bus": "rs485", "unit": 2, "profile": HEIDELBERG},
                {"id": 3, "bus": "lan", "host": "127.0.0.1", "port": tcp, "unit": 1, "profile": HEIDELBERG},
            ],
            uplinks=[{"name": "wired", "source_address": "127.0.0.1"}, {"name": "loop", "interface": "lo"}],  # SO_BINDTODEVICE to lo reaches 127.0.0.1
        ))
        (tmp_path / "state").mkdir()
        async with simulated(path):
            args = argparse.Namespace(config=str(path), report=None, json=True)
            code = await asyncio.to_thread(selftest.main, args)
        out = json.loads(capsys.readouterr().out)
        backend.assert_clean()
        boots = backend.calls("BootNotification", IDENTITY)
        connects = backend.of_type("connect", IDENTITY)
    assert code == 0, json.dumps(out, indent=1)
    checks = {c["name"]: c for c in out["checks"]}
    assert checks["config"]["status"] == "warn" and "parity" in checks["config"]["notes"][0]  # a pty line has no parity
    assert checks["slaves"]["status"] == "ok"
    devices = checks["slaves"]["data"]["devices"]
    assert [(d["connector"], d["role"], d["matches"]) for d in devices] == [(1, "charger", True), (1, "meter", True), (2, "charger", True), (3, "charger", True)]
    assert devices[0]["ids"]["layout_version"].endswith("(0x0108)") and "; layout_version " in checks["slaves"]["notes"][0]
    assert checks["uplink"]["status"] == "ok" and [u["uplink"] for u in checks["uplink"]["data"]["uplinks"]] == ["wired", "loop"]
    assert checks["tls"]["status"] == "warn" and "ends in 2 day(s)" in checks["tls"]["detail"]  # test certificates live 2 days
    assert checks["tls"]["data"]["handshakes"][0]["subject"] == "CN=127.0.0.1"
    assert checks["boot"]["status"] == "ok" and checks["boot"]["detail"].startswith("Accepted (over wired, security profile 2)")
    assert checks["boot"]["data"]["credentials"] == f"password_file {tmp_path / 'backend-password'}"
    assert PASSWORD not in json.dumps(out)
    assert len(boots) == 1 and boots[0]["params"]["chargePointSerialNumber"] == "SN-7"
    assert "authorization" in {k.lower() for k in connects[0]["headers"]}
    report = tmp_path / "state" / f"commissioning-{IDENTITY}-{time.strftime('%Y-%m-%d', time.gmtime(time.time()))}.html"
    assert out["report"] == str(report) and report.read_text().count("<svg") == 3
    assert PASSWORD not in report.read_text()


@pytest.mark.interop
async def test_a_missing_slave_another_model_a_dead_port_and_a_wrong_password_each_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "backend-password").write_text("not-the-password")
    tcp = free_port()
    present = [
        {"id": 1, "bus": "rs485", "unit": 1, "profile": HEIDELBERG},
        {"id": 3, "bus": "lan", "host": "127.0.0.1", "port": tcp, "unit": 1, "profile": HEIDELBERG},
    ]
    async with OcppRpcBackend(password=PASSWORD) as backend:
        lab = {"url": backend.url, "insecure_lab_mode": True, "password_file": str(tmp_path / "backend-password"), "response_timeout_s": 5}
        reality = write_config(tmp_path, "reality.yaml", site_doc(tmp_path, lab, present))
        doc = site_doc(tmp_path, lab, [
            present[0],
            {"id": 2, "bus": "rs485", "unit": 2, "profile": HEIDELBERG},  # not there
            present[1] | {"profile": "keba-p30"},  # a Heidelberg configured as a KEBA
            {"id": 4, "bus": "dead", "unit": 1, "profile": HEIDELBERG},  # an adapter that is not plugged in
        ], uplinks=[{"name": "wired", "source_address": "127.0.0.1"}, {"name": "spare", "interface": "nosuch0"}])
        doc["buses"].append({"name": "dead", "kind": "rtu", "port": str(tmp_path / "ttyUSB-gone"), "parity": "N"})
        path = write_config(tmp_path, "site.yaml", doc)
        async with simulated(reality):
            started = time.monotonic()
            result = await run_selftest(path)
            elapsed = time.monotonic() - started
        assert backend.calls(identity=IDENTITY) == [] and backend.of_type("auth-rejected", IDENTITY)[0]["status"] == 401
    assert result.exit_code == 1 and elapsed < 10
    assert statuses(result) | {"clock": None} == {"config": Status.WARN, "slaves": Status.FAIL, "clock": None,
                                                  "uplink": Status.WARN, "tls": Status.WARN, "boot": Status.FAIL}
    found = {d.connector: d for d in selftest_devices(result)}
    assert found[1].ok
    assert not found[2].answered and found[2].detail.startswith("no answer in 2 tries")
    assert found[3].answered and found[3].matches is False and found[3].looks_like[0] == HEIDELBERG
    assert "it looks like heidelberg-energy-control" in found[3].detail
    assert not found[4].answered and "ttyUSB-gone" in found[4].detail
    assert "spare: interface nosuch0 is missing or down" in result.checks[3].detail
    boot = result.checks[5].detail
    assert "the backend refused the credentials (HTTP 401)" in boot and f"password_file {tmp_path / 'backend-password'}" in boot
    assert "not-the-password" not in json.dumps(result.to_json())


def selftest_devices(result: Selftest) -> list[Device]:
    """The slaves check's devices, back from their JSON form."""
    check = result.check("slaves")
    assert check is not None
    return [Device(**(d | {"looks_like": tuple(d["looks_like"])})) for d in check.data["devices"]]


async def test_an_invalid_config_exits_78_and_skips_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("charge_point: {identity: CP, vendor: v, model: m}\nbackend: {url: ftp://x}\nbuses: []\nstorage: {path: gw.db}\n")
    result = await run_selftest(path)
    assert result.exit_code == 78 and result.config is None
    assert result.checks[0].status is Status.FAIL and any(f"{path}:2" in note and "backend.url" in note for note in result.checks[0].notes)
    assert [c.status for c in result.checks[1:]] == [Status.SKIPPED] * 5
    report = tmp_path / "broken.html"
    code = await asyncio.to_thread(selftest.main, argparse.Namespace(config=str(path), report=str(report), json=False))
    out = capsys.readouterr().out
    assert code == 78 and "FAIL     Config valid" in out and f"report: {report}" in out and "backend.url" in report.read_text()


# --- while the daemon runs ----------------------------------------------------------------------------


class FakeDaemon:
    """The daemon's control socket as issue 7 specifies it: one JSON request line in, one answer line out."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line:
            request = json.loads(line)
            self.requests.append(request)
            writer.write(json.dumps(self.answers[request["op"]]).encode() + b"\n")
            await writer.drain()
        writer.close()


async def test_while_the_daemon_runs_selftest_asks_it_and_leaves_lines_and_identity_alone(tmp_path: Path) -> None:
    identify = [{"connector": 1, "bus": "rs485", "unit": 1, "profile": HEIDELBERG, "answered": True, "matches": True, "detail": "answers"}]
    daemon = FakeDaemon({"identify": {"ok": True, "result": identify},
                         "status": {"ok": True, "result": {"uplink": {"name": "default", "connected": True, "security_profile": 1}}}})
    seen: list[bytes] = []

    async def backend_port(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read())  # selftest only connects and closes: no bytes, no websocket, no OCPP
        writer.close()

    backend = await asyncio.start_server(backend_port, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    # The serial port does not exist: had selftest opened the line itself, the slaves check would fail.
    path = write_config(tmp_path, "site.yaml", site_doc(
        tmp_path, {"url": f"ws://127.0.0.1:{port}/ocpp", "insecure_lab_mode": True}, [{"id": 1, "bus": "rs485", "unit": 1, "profile": HEIDELBERG}],
        buses=[{"name": "rs485", "kind": "rtu", "port": str(tmp_path / "ttyRS485"), "parity": "N"}],
    ))
    server = await asyncio.start_unix_server(daemon.serve, str(tmp_path / "control.sock"))
    async with server, backend:
        result = await run_selftest(path)
        async with asyncio.timeout(5):
            while not seen:  # the backend's side sees the close a moment after selftest's
                await asyncio.sleep(0.01)
    assert result.daemon and result.exit_code == 0, result.to_json()
    assert [r["op"] for r in daemon.requests] == ["identify", "status"]
    assert statuses(result)["slaves"] is Status.OK and "(as the daemon reads them)" in result.checks[1].detail
    assert statuses(result)["boot"] is Status.OK and "BootNotification accepted" in result.checks[5].detail
    assert seen == [b""]

    daemon.answers["identify"] = {"ok": False, "error": "shutting down", "kind": "unavailable"}
    daemon.answers["status"] = {"ok": True, "result": {"uplink": {"name": "default", "connected": False, "problem": "default: HTTP 401"}}}
    server = await asyncio.start_unix_server(daemon.serve, str(tmp_path / "control.sock"))
    async with server:
        result = await run_selftest(path)
    assert result.exit_code == 1
    assert result.checks[1].detail == "the daemon could not say: shutting down"
    assert result.checks[5].detail.startswith("the daemon's link is down: default: HTTP 401")


@pytest.mark.interop
async def test_with_the_real_daemon_running_its_link_stays_the_only_one(tmp_path: Path) -> None:
    """The daemon on the simulator with its control socket: selftest reads its view; the backend sees one connection."""
    sock = tmp_path / "control.sock"
    async with OcppRpcBackend() as backend:
        config = cluster_config(tmp_path, backend.url, False, control={"socket": str(sock)})
        async with daemon_on_simulator(config) as (daemon, _):
            await asyncio.wait_for(daemon.uplink.connected.wait(), 20)
            async with asyncio.timeout(10):
                while not sock.exists():
                    await asyncio.sleep(0.05)
            result = await run_selftest(config.source)
            assert daemon.uplink.connected.is_set()
        assert len(backend.of_type("connect", CLUSTER_ID)) == 1 and len(backend.calls("BootNotification", CLUSTER_ID)) == 1
    assert result.daemon and result.exit_code == 0, result.to_json()
    slaves, boot = result.check("slaves"), result.check("boot")
    assert slaves is not None and slaves.status is Status.OK and "(as the daemon reads them)" in slaves.detail
    assert [(d["connector"], d["role"], d["matches"]) for d in slaves.data["devices"]] == [(1, "charger", True), (2, "charger", True)]
    assert boot is not None and boot.status is Status.OK and "BootNotification accepted" in boot.detail


async def test_each_uplink_is_reached_and_tls_checked_on_one_connection(tmp_path: Path) -> None:
    """Check 5's handshake rides on check 4's TCP connection: over GPRS each connection costs seconds and bytes."""
    cert, key = make_self_signed_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    connections: list[str] = []  # what each TCP connection to the backend carried
    handshakes: set[asyncio.Task[None]] = set()

    class Backend(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()  # the ClientHello stays in the socket for the TLS layer
            handshakes.add(asyncio.create_task(self.handshake(transport)))

        async def handshake(self, transport: asyncio.Transport) -> None:
            try:
                tls = await loop.start_tls(transport, self, server_tls, server_side=True)
            except (OSError, ssl.SSLError):
                connections.append("plain")  # closed without a handshake
                transport.close()
                return
            connections.append("tls")
            if tls is not None:
                tls.close()

    backend = await loop.create_server(Backend, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    identify = [{"connector": 1, "bus": "rs485", "unit": 1, "profile": HEIDELBERG, "answered": True, "matches": True, "detail": "answers"}]
    daemon = FakeDaemon({"identify": {"ok": True, "result": identify},  # the daemon runs: no BootNotification of our own
                         "status": {"ok": True, "result": {"uplink": {"name": "wired", "connected": True, "security_profile": 0}}}})
    path = write_config(tmp_path, "site.yaml", site_doc(
        tmp_path, {"url": f"wss://127.0.0.1:{port}/ocpp", "ca_file": str(cert)}, [{"id": 1, "bus": "rs485", "unit": 1, "profile": HEIDELBERG}],
        uplinks=[{"name": "wired", "source_address": "127.0.0.1"}, {"name": "loop", "interface": "lo"}],
        buses=[{"name": "rs485", "kind": "rtu", "port": str(tmp_path / "ttyRS485"), "parity": "N"}],
    ))
    async with await asyncio.start_unix_server(daemon.serve, str(tmp_path / "control.sock")), backend:
        result = await run_selftest(path)
        async with asyncio.timeout(5):
            await asyncio.gather(*handshakes)
    assert statuses(result)["uplink"] is Status.OK and statuses(result)["tls"] is Status.WARN, result.to_json()  # the test certificate ends in 2 days
    tls = result.check("tls")
    assert tls is not None and [h["uplink"] for h in tls.data["handshakes"]] == ["wired", "loop"]
    assert connections == ["tls", "tls"]
