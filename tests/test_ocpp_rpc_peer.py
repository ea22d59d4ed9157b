"""The strict peer itself (npm ocpp-rpc 2.2.1, strictMode), spoken to in raw OCPP-J frames.

These tests pin what ocpp-rpc's strict mode really does, because the interop and
end-to-end tests rely on it: what comes back on a schema violation, which
records csms.js prints, and how backend-to-charge-point calls travel.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests import ocpp_rpc_peer
from tests.certs import make_self_signed_cert
from tests.ocpp_rpc_peer import InteropSetupError, OcppCallError, OcppRpcBackend

pytestmark = pytest.mark.interop

BOOT = {"chargePointVendor": "vendor", "chargePointModel": "model", "firmwareVersion": "0.1.0"}


@pytest.fixture
async def backend() -> AsyncIterator[OcppRpcBackend]:
    async with OcppRpcBackend() as peer:
        yield peer


def _connect(url: str, **kwargs: Any) -> connect:
    return connect(url, subprotocols=kwargs.pop("subprotocols", ["ocpp1.6"]), **kwargs)


async def _rpc(ws: ClientConnection, message_id: str, action: str, payload: dict[str, Any]) -> list[Any]:
    await ws.send(json.dumps([2, message_id, action, payload]))
    reply: list[Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
    return reply


async def test_a_valid_boot_notification_gets_a_result(backend: OcppRpcBackend) -> None:
    async with _connect(backend.url + "/CP-1") as ws:
        assert ws.subprotocol == "ocpp1.6"
        reply = await _rpc(ws, "b1", "BootNotification", BOOT)
    assert reply[:2] == [3, "b1"]
    assert reply[2]["status"] == "Accepted"
    assert reply[2]["interval"] == 300
    assert reply[2]["currentTime"].endswith("Z")
    connect_record = backend.of_type("connect")[0]
    assert connect_record["identity"] == "CP-1"
    assert connect_record["protocol"] == "ocpp1.6"
    assert connect_record["endpoint"] == "/ocpp"
    [boot] = backend.calls("BootNotification", "CP-1")
    assert boot["params"] == BOOT
    assert boot["messageId"] == "b1"
    [result] = backend.of_type("result", "CP-1")
    assert result["method"] == "BootNotification"
    assert result["result"] == reply[2]
    await backend.wait_for(lambda r: r["type"] == "disconnect" and r["identity"] == "CP-1")
    assert backend.violations == []
    backend.assert_clean()


async def test_a_schema_invalid_call_gets_a_callerror_and_a_violation_record(backend: OcppRpcBackend) -> None:
    async with _connect(backend.url + "/CP-1") as ws:
        # StartTransaction without meterStart, which the OCPP 1.6 schema requires
        bad = {"connectorId": 1, "idTag": "TAG", "timestamp": "2026-03-01T12:00:00Z"}
        reply = await _rpc(ws, "s1", "StartTransaction", bad)
        # ocpp-rpc answers in the OCPP 1.6 errata spelling, and the handler never ran...
        assert reply[:3] == [4, "s1", "OccurrenceConstraintViolation"]
        assert "meterStart" in reply[3]
        # ...so the first valid StartTransaction still gets transactionId 1.
        good = await _rpc(ws, "s2", "StartTransaction", {**bad, "meterStart": 0})
        assert good == [3, "s2", {"transactionId": 1, "idTagInfo": {"status": "Accepted"}}]
    [violation] = backend.violations
    assert violation["method"] == "StartTransaction"
    assert violation["messageId"] == "s1"
    assert violation["outbound"] is False and violation["isCall"] is True
    assert violation["error"]["code"] == "OccurenceConstraintViolation"  # ocpp-rpc's internal name
    assert violation["error"]["details"][0]["params"] == {"missingProperty": "meterStart"}
    # The invalid call is recorded as a call, and the CALLERROR we sent as an error.
    assert [c["messageId"] for c in backend.calls("StartTransaction")] == ["s1", "s2"]
    [error] = backend.of_type("error")
    assert error["messageId"] == "s1" and error["method"] == "StartTransaction"
    with pytest.raises(AssertionError, match="broke OCPP 1.6J"):
        backend.assert_clean()


async def test_a_frame_that_is_not_ocpp_j_is_a_bad_message(backend: OcppRpcBackend) -> None:
    async with _connect(backend.url + "/CP-1") as ws:
        await ws.send("not json")
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert reply[:3] == [4, "-1", "RpcFrameworkError"]
    [bad] = backend.bad_messages
    assert bad["message"] == "not json"
    assert backend.violations == []
    with pytest.raises(AssertionError, match="not json"):
        backend.assert_clean()


async def test_every_core_message_of_the_gateway_is_answered_validly(backend: OcppRpcBackend) -> None:
    now = "2026-03-01T12:00:00Z"
    messages: list[tuple[str, dict[str, Any]]] = [
        ("BootNotification", BOOT),
        ("Heartbeat", {}),
        ("StatusNotification", {"connectorId": 0, "errorCode": "NoError", "status": "Available"}),
        ("Authorize", {"idTag": "TAG"}),
        ("StartTransaction", {"connectorId": 2, "idTag": "TAG", "meterStart": 10, "timestamp": now}),
        (
            "MeterValues",
            {
                "connectorId": 2,
                "transactionId": 1,
                "meterValue": [{"timestamp": now, "sampledValue": [{"value": "20", "unit": "Wh"}]}],
            },
        ),
        ("StopTransaction", {"meterStop": 30, "timestamp": now, "transactionId": 1, "idTag": "TAG"}),
        ("StopTransaction", {"meterStop": 30, "timestamp": now, "transactionId": 1}),
        ("DataTransfer", {"vendorId": "gateway"}),
        ("DiagnosticsStatusNotification", {"status": "Idle"}),
        ("FirmwareStatusNotification", {"status": "Idle"}),
    ]
    async with _connect(backend.url + "/CP-1") as ws:
        replies = [await _rpc(ws, f"m{i}", action, payload) for i, (action, payload) in enumerate(messages)]
    assert [r[0] for r in replies] == [3] * len(messages), replies
    assert replies[6][2] == {"idTagInfo": {"status": "Accepted"}}
    assert replies[7][2] == {}  # no idTag in the request: no idTagInfo
    backend.assert_clean()


async def test_transaction_ids_go_on_across_reconnects(backend: OcppRpcBackend) -> None:
    start = {"connectorId": 1, "idTag": "TAG", "meterStart": 0, "timestamp": "2026-03-01T12:00:00Z"}
    ids = []
    for _ in range(2):
        async with _connect(backend.url + "/CP-1") as ws:
            ids.append((await _rpc(ws, "s", "StartTransaction", start))[2]["transactionId"])
    assert ids == [1, 2]


async def test_a_backend_call_reaches_the_charge_point_and_its_answer_comes_back(backend: OcppRpcBackend) -> None:
    async with _connect(backend.url + "/CP-1") as ws:
        await backend.wait_for(lambda r: r["type"] == "connect")
        pending = asyncio.create_task(
            backend.call("CP-1", "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "60"})
        )
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame[0] == 2 and frame[2:] == [
            "ChangeConfiguration",
            {"key": "MeterValueSampleInterval", "value": "60"},
        ]
        await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        assert await pending == {"status": "Accepted"}

        # A CALLERROR from the charge point raises with its code.
        pending = asyncio.create_task(backend.call("CP-1", "ClearCache", {}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.send(json.dumps([4, frame[1], "NotImplemented", "no cache here", {}]))
        with pytest.raises(OcppCallError) as failed:
            await pending
        assert (failed.value.code, failed.value.description) == ("NotImplemented", "no cache here")
    backend.assert_clean()


async def test_an_invalid_answer_from_the_charge_point_is_a_violation(backend: OcppRpcBackend) -> None:
    async with _connect(backend.url + "/CP-1") as ws:
        await backend.wait_for(lambda r: r["type"] == "connect")
        pending = asyncio.create_task(backend.call("CP-1", "ChangeConfiguration", {"key": "K", "value": "1"}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.send(json.dumps([3, frame[1], {"status": "Maybe"}]))
        with pytest.raises(OcppCallError) as failed:
            await pending
    assert failed.value.code == "FormatViolation"  # an enum mismatch
    [violation] = backend.violations
    assert violation["outbound"] is False and violation["isCall"] is False
    assert violation["result"] == {"status": "Maybe"}
    with pytest.raises(AssertionError):
        backend.assert_clean()


async def test_an_invalid_backend_call_is_refused_unless_validation_is_skipped(backend: OcppRpcBackend) -> None:
    async with _connect(backend.url + "/CP-1") as ws:
        await backend.wait_for(lambda r: r["type"] == "connect")
        # Strict mode stops our own invalid call before it leaves...
        with pytest.raises(OcppCallError) as refused:
            await backend.call("CP-1", "ChangeConfiguration", {"key": "K"})
        assert refused.value.code == "OccurenceConstraintViolation"
        [ours] = backend.violations
        assert ours["outbound"] is True and ours["isCall"] is True
        backend.assert_clean()  # our own mistake, not the charge point's

        # ...and skip_validation sends it as is; the answer is returned unvalidated too.
        pending = asyncio.create_task(
            backend.call("CP-1", "ChangeConfiguration", {"key": "K"}, skip_validation=True)
        )
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame[2:] == ["ChangeConfiguration", {"key": "K"}]
        await ws.send(json.dumps([4, frame[1], "FormationViolation", "value missing", {}]))
        with pytest.raises(OcppCallError) as answered:
            await pending
        assert answered.value.code == "FormationViolation"

        pending = asyncio.create_task(backend.call("CP-1", "Reset", {"type": "Whenever"}, skip_validation=True))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.send(json.dumps([3, frame[1], {"status": "Whatever"}]))
        assert await pending == {"status": "Whatever"}
    assert backend.bad_messages == []  # the raw answers were taken, not flagged as unrecognised


async def test_calls_to_an_absent_charge_point_fail_clearly(backend: OcppRpcBackend) -> None:
    with pytest.raises(OcppCallError) as failed:
        await backend.call("NOBODY", "Reset", {"type": "Soft"})
    assert failed.value.code == "NotConnected"


async def test_a_call_the_charge_point_never_answers_times_out(backend: OcppRpcBackend) -> None:
    async with _connect(backend.url + "/CP-1") as ws:
        await backend.wait_for(lambda r: r["type"] == "connect")
        with pytest.raises(OcppCallError) as failed:
            await backend.call("CP-1", "Reset", {"type": "Soft"}, timeout=0.3)
        assert failed.value.code == "Timeout"
        assert json.loads(await ws.recv())[2] == "Reset"  # it was sent, just never answered


async def test_close_connection_drops_the_charge_point(backend: OcppRpcBackend) -> None:
    async with _connect(backend.url + "/CP-1") as ws:
        await backend.wait_for(lambda r: r["type"] == "connect")
        await backend.close_connection("CP-1", 1012)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    await backend.wait_for(lambda r: r["type"] == "disconnect" and r["code"] == 1012)


async def test_configure_changes_the_boot_answer(backend: OcppRpcBackend) -> None:
    await backend.configure(boot_status="Pending", heartbeat_interval=7, id_tag_status="Blocked")
    async with _connect(backend.url + "/CP-1") as ws:
        boot = await _rpc(ws, "b", "BootNotification", BOOT)
        auth = await _rpc(ws, "a", "Authorize", {"idTag": "TAG"})
    assert boot[2]["status"] == "Pending" and boot[2]["interval"] == 7
    assert auth[2] == {"idTagInfo": {"status": "Blocked"}}


@pytest.mark.parametrize("offered", [["ocpp2.0.1"], None])
async def test_a_handshake_without_ocpp16_is_refused(backend: OcppRpcBackend, offered: list[str] | None) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with _connect(backend.url + "/CP-1", subprotocols=offered):
            pass
    assert refused.value.response.status_code == 400
    await backend.wait_for(lambda r: r["type"] == "auth-rejected" and r["status"] == 400)
    assert backend.of_type("connect") == []


async def test_basic_auth() -> None:
    async with OcppRpcBackend(password="0123456789abcdef") as peer:
        url = f"ws://CP-1:0123456789abcdef@127.0.0.1:{peer.port}/ocpp/CP-1"
        async with _connect(url) as ws:
            assert (await _rpc(ws, "h", "Heartbeat", {}))[0] == 3
        expected = "Basic " + base64.b64encode(b"CP-1:0123456789abcdef").decode()
        assert peer.of_type("connect")[0]["headers"]["authorization"] == expected

        for userinfo in ("CP-1:wrong-password-here@", "CP-2:0123456789abcdef@", ""):
            with pytest.raises(InvalidStatus) as refused:
                async with _connect(f"ws://{userinfo}127.0.0.1:{peer.port}/ocpp/CP-1"):
                    pass
            assert refused.value.response.status_code == 401
        rejected = peer.of_type("auth-rejected")
        assert [r["reason"] for r in rejected] == ["bad credentials", "bad credentials", "no credentials"]
        assert len(peer.of_type("connect")) == 1


async def test_tls(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    async with OcppRpcBackend(tls_cert=cert, tls_key=key) as peer:
        assert peer.url.startswith("wss://127.0.0.1:")
        client_tls = ssl.create_default_context(cafile=str(cert))
        async with _connect(peer.url + "/CP-1", ssl=client_tls) as ws:
            assert (await _rpc(ws, "b", "BootNotification", BOOT))[2]["status"] == "Accepted"
        assert peer.of_type("listening")[0]["tls"] is True


async def test_leaving_the_context_closes_charge_points_and_ends_node() -> None:
    async with OcppRpcBackend() as peer:
        ws = await _connect(peer.url + "/CP-1")
        await peer.wait_for(lambda r: r["type"] == "connect")
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert peer._proc is not None and peer._proc.returncode == 0


async def test_a_fixed_port_can_be_reused_by_a_restarted_backend() -> None:
    async with OcppRpcBackend() as first:
        port = first.port
    async with OcppRpcBackend(port) as second:
        assert second.port == port
        assert second.url == f"ws://127.0.0.1:{port}/ocpp"


async def test_missing_npm_packages_are_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ocpp_rpc_peer, "INTEROP_DIR", tmp_path)  # a tests/interop without node_modules
    with pytest.raises(InteropSetupError, match=r"npm ci --prefix tests/interop"):
        async with OcppRpcBackend():
            pass
