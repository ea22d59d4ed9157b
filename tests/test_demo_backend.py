"""The demo backend, driven by a real OCPP 1.6J client over a loopback websocket."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import ChargePoint, call
from ocpp.v16.datatypes import MeterValue, SampledValue
from ocpp.v16.enums import (
    AuthorizationStatus,
    ChargePointErrorCode,
    ChargePointStatus,
    Measurand,
    Reason,
    RegistrationStatus,
    UnitOfMeasure,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from gateway.demo_backend import (
    DemoSession,
    format_duration,
    identity_from_path,
    serve,
    summarize_meter_values,
)
from tests.certs import make_self_signed_cert

ROOT = Path(__file__).resolve().parent.parent
TIME = r"\d\d:\d\d:\d\d"


@dataclass
class Demo:
    """A running demo backend: where it listens, what it printed, what it recorded."""

    port: int
    lines: list[str]
    sessions: list[DemoSession] = field(default_factory=list)

    def url(self, identity: str, *, userinfo: str = "", scheme: str = "ws") -> str:
        return f"{scheme}://{userinfo}127.0.0.1:{self.port}/ocpp/{identity}"

    async def wait_line(self, pattern: str, timeout: float = 5.0) -> str:
        """The first printed line matching ``pattern`` (waits for it to appear)."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                await asyncio.sleep(0.01)


async def _start(**kwargs: Any) -> tuple[Demo, asyncio.Task[None]]:
    lines: list[str] = []
    sessions: list[DemoSession] = []
    ready = asyncio.Event()
    task = asyncio.create_task(serve("127.0.0.1", 0, out=lines.append, ready=ready, sessions=sessions, **kwargs))
    await asyncio.wait_for(ready.wait(), 5)
    match = re.search(r"listening on wss?://127\.0\.0\.1:(\d+)/", lines[0])
    assert match, lines
    return Demo(int(match.group(1)), lines, sessions), task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])
    assert task.cancelled()


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    backend, task = await _start()
    yield backend
    await _stop(task)


@pytest.fixture
async def demo_with_password() -> AsyncIterator[Demo]:
    backend, task = await _start(password="s3cret-s3cret-s3cret")
    yield backend
    await _stop(task)


class Station(ChargePoint):
    """The charge-point end, built from the same ocpp package (no handlers: it only calls)."""


async def _station(ws: ClientConnection, identity: str) -> tuple[Station, asyncio.Task[None]]:
    station = Station(identity, ws, response_timeout=5)
    return station, asyncio.create_task(station.start())


def _meter(timestamp: str, register_wh: int, power_kw: float) -> MeterValue:
    return MeterValue(
        timestamp=timestamp,
        sampled_value=[
            SampledValue(value=str(register_wh), measurand=Measurand.energy_active_import_register, unit=UnitOfMeasure.wh),
            SampledValue(value=str(power_kw), measurand=Measurand.power_active_import, unit=UnitOfMeasure.kw),
        ],
    )


async def test_a_whole_session_is_printed_and_recorded(demo: Demo) -> None:
    async with connect(demo.url("CP-CLUSTER-01"), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "ocpp1.6"
        station, reader = await _station(ws, "CP-CLUSTER-01")
        boot = await station.call(
            call.BootNotification(charge_point_vendor="vendor", charge_point_model="model", firmware_version="0.1.0")
        )
        assert boot.status == RegistrationStatus.accepted
        assert boot.interval == 300
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", boot.current_time)

        await station.call(
            call.StatusNotification(
                connector_id=3, error_code=ChargePointErrorCode.no_error, status=ChargePointStatus.preparing
            )
        )
        auth = await station.call(call.Authorize(id_tag="DEMO-FREE"))
        assert auth.id_tag_info["status"] == AuthorizationStatus.accepted
        start = await station.call(
            call.StartTransaction(connector_id=3, id_tag="DEMO-FREE", meter_start=12345, timestamp="2026-03-01T12:00:06Z")
        )
        assert start.transaction_id == 1
        assert start.id_tag_info["status"] == AuthorizationStatus.accepted
        await station.call(
            call.MeterValues(
                connector_id=3,
                transaction_id=1,
                meter_value=[_meter("2026-03-01T12:00:10Z", 12400, 7.0), _meter("2026-03-01T12:00:20Z", 12500, 7.2)],
            )
        )
        stop = await station.call(
            call.StopTransaction(
                meter_stop=16555,
                timestamp="2026-03-01T12:00:44Z",
                transaction_id=1,
                reason=Reason.ev_disconnected,
                id_tag="DEMO-FREE",
            )
        )
        assert stop.id_tag_info["status"] == AuthorizationStatus.accepted
        heartbeat = await station.call(call.Heartbeat())
        assert heartbeat.current_time.endswith("Z")
        reader.cancel()

    await demo.wait_line("disconnected")
    body = demo.lines[2:-1]  # between "connected from" and "disconnected"
    assert all(re.match(TIME + " ", line) for line in demo.lines)
    assert [line[9:] for line in body] == [
        "CP-CLUSTER-01 boot  vendor/model fw 0.1.0",
        "CP-CLUSTER-01 #3 Preparing",
        "CP-CLUSTER-01 authorize DEMO-FREE: Accepted",
        "CP-CLUSTER-01 #3 session 1 started  idTag DEMO-FREE  meter 12345 Wh",
        "CP-CLUSTER-01 #3 meter  12.50 kWh  7.20 kW  (session 1: 0.15 kWh)",
        "CP-CLUSTER-01 #3 session 1 stopped  4.21 kWh in 0:38  (EVDisconnected)",
        "CP-CLUSTER-01 heartbeat",
    ]
    assert re.fullmatch(TIME + r" CP-CLUSTER-01 connected from 127\.0\.0\.1:\d+", demo.lines[1])
    assert re.fullmatch(TIME + r" CP-CLUSTER-01 disconnected \(1000\)", demo.lines[-1])
    assert demo.sessions == [
        DemoSession(
            identity="CP-CLUSTER-01",
            connector_id=3,
            transaction_id=1,
            id_tag="DEMO-FREE",
            meter_start_wh=12345,
            start_time="2026-03-01T12:00:06Z",
            meter_stop_wh=16555,
            stop_time="2026-03-01T12:00:44Z",
            stop_reason="EVDisconnected",
            last_register_wh=12500.0,
            last_power_w=7200.0,
        )
    ]
    assert demo.sessions[0].energy_wh == 4210


async def test_transaction_ids_go_on_across_connections_and_paths(demo: Demo) -> None:
    ids = []
    for path in ("/ocpp/CP-A", "/CP-B"):  # both /<anything>/<identity> and /<identity>
        async with connect(f"ws://127.0.0.1:{demo.port}{path}", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            station, reader = await _station(ws, path.rsplit("/", 1)[1])
            start = await station.call(
                call.StartTransaction(connector_id=1, id_tag="T", meter_start=0, timestamp="2026-03-01T12:00:00Z")
            )
            ids.append(start.transaction_id)
            reader.cancel()
    assert ids == [1, 2]
    assert [(s.identity, s.transaction_id) for s in demo.sessions] == [("CP-A", 1), ("CP-B", 2)]


async def test_stop_of_an_unknown_transaction_is_answered_and_said(demo: Demo) -> None:
    async with connect(demo.url("CP-1"), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        station, reader = await _station(ws, "CP-1")
        stop = await station.call(call.StopTransaction(meter_stop=100, timestamp="2026-03-01T12:00:00Z", transaction_id=77))
        assert stop.id_tag_info is None  # no idTag sent, so no idTagInfo (OCPP 1.6 §6.50)
        reader.cancel()
    assert await demo.wait_line(r"CP-1 session 77 stopped  meter 100 Wh  \(Local; unknown to this backend\)")


async def test_a_schema_invalid_call_gets_a_callerror_and_the_connection_stays(demo: Demo) -> None:
    async with connect(demo.url("CP-1"), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        # StartTransaction without meterStart (required by the OCPP 1.6 schema)
        await ws.send(json.dumps([2, "m1", "StartTransaction", {"connectorId": 1, "idTag": "X", "timestamp": "2026-03-01T12:00:00Z"}]))
        reply = json.loads(await ws.recv())
        assert reply[:2] == [4, "m1"]
        assert reply[2] == "ProtocolError"  # what the ocpp package answers for a missing required field
        await ws.send(json.dumps([2, "m2", "Heartbeat", {}]))
        assert json.loads(await ws.recv())[:2] == [3, "m2"]
    assert demo.sessions == []


@pytest.mark.parametrize("offered", [["ocpp2.0.1"], []])
async def test_a_handshake_without_ocpp16_is_refused(demo: Demo, offered: list[str]) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(demo.url("CP-1"), subprotocols=offered or None):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 400
    assert await demo.wait_line(r"CP-1 refused: subprotocol ocpp1\.6 not offered")


async def test_a_path_without_identity_is_refused(demo: Demo) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://127.0.0.1:{demo.port}/", subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
            pass
    assert refused.value.response.status_code == 404


async def test_basic_auth_with_the_identity_and_password_is_accepted(demo_with_password: Demo) -> None:
    url = demo_with_password.url("CP-1", userinfo="CP-1:s3cret-s3cret-s3cret@")
    async with connect(url, subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        station, reader = await _station(ws, "CP-1")
        boot = await station.call(call.BootNotification(charge_point_vendor="v", charge_point_model="m"))
        assert boot.status == RegistrationStatus.accepted
        reader.cancel()


@pytest.mark.parametrize(
    ("userinfo", "said"),
    [
        ("CP-1:wrong-password-wrong@", "bad credentials"),
        ("CP-2:s3cret-s3cret-s3cret@", "bad credentials"),  # right password, user is not the identity
        ("", "no credentials"),
    ],
)
async def test_basic_auth_refuses_wrong_credentials(demo_with_password: Demo, userinfo: str, said: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(demo_with_password.url("CP-1", userinfo=userinfo), subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
            pass
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Basic")
    assert await demo_with_password.wait_line(f"CP-1 refused: {said}")


async def test_tls(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    backend, task = await _start(certfile=str(cert), keyfile=str(key))
    try:
        assert "listening on wss://" in backend.lines[0]
        client_tls = ssl.create_default_context(cafile=str(cert))
        async with connect(backend.url("CP-1", scheme="wss"), subprotocols=["ocpp1.6"], ssl=client_tls) as ws:  # type: ignore[list-item]
            station, reader = await _station(ws, "CP-1")
            assert (await station.call(call.Heartbeat())).current_time.endswith("Z")
            reader.cancel()
    finally:
        await _stop(task)


async def test_a_key_without_a_certificate_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="key file was given without a certificate"):
        await serve("127.0.0.1", 0, keyfile="key.pem", out=lambda line: None)


# --- main(): the process `make demo` runs --------------------------------------------------


async def _demo_process(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.demo_backend", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_main_stops_cleanly_on_a_signal(signum: signal.Signals) -> None:
    proc = await _demo_process("--port", "0")
    assert proc.stdout is not None
    first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    assert re.search(r"listening on ws://127\.0\.0\.1:\d+/ocpp/<identity>", first)
    proc.send_signal(signum)
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip().endswith("demo backend stopped")


async def test_main_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = await _demo_process("--port", str(taken.getsockname()[1]))
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert "demo backend: cannot start on 127.0.0.1:" in err.decode()


# --- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "identity"),
    [("/CP-1", "CP-1"), ("/ocpp/CP-1", "CP-1"), ("/a/b/CP%201/", "CP 1"), ("/ocpp/CP-1?x=1", "CP-1")],
)
def test_identity_is_the_last_path_segment(path: str, identity: str) -> None:
    assert identity_from_path(path) == identity


@pytest.mark.parametrize("path", ["/", "", "//", "/?x=1"])
def test_a_path_without_identity_is_an_error(path: str) -> None:
    with pytest.raises(ValueError, match="no charge-point identity"):
        identity_from_path(path)


def test_meter_values_summary_reads_units_phases_and_defaults() -> None:
    assert summarize_meter_values([]) == (None, None)
    assert summarize_meter_values([{"timestamp": "t", "sampled_value": [{"value": "1500"}]}]) == (1500.0, None)
    phased = [
        {"value": "2.3", "measurand": "Power.Active.Import", "unit": "kW", "phase": "L1"},
        {"value": "2.3", "measurand": "Power.Active.Import", "unit": "kW", "phase": "L2"},
        {"value": "2.4", "measurand": "Power.Active.Import", "unit": "kW", "phase": "L3"},
        {"value": "230", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
        {"value": "1.25", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
    ]
    energy, power = summarize_meter_values([{"timestamp": "t", "sampled_value": phased}])
    assert energy == 1250.0
    assert power == pytest.approx(7000.0)
    garbage = [
        {"value": "abc"},
        {"value": "12", "unit": "furlong"},
        {"value": "A1B2", "format": "SignedData"},
    ]
    assert summarize_meter_values([{"timestamp": "t", "sampled_value": garbage}]) == (None, None)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00"), (38, "0:38"), (600, "10:00"), (3723, "1:02:03"), (-5, "0:00")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
