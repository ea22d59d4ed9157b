"""The uplink against the independent strict backend (npm ocpp-rpc): boot first, statuses, the outbox in order."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from ocpp.messages import CallResult
from websockets import Subprotocol
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from gateway.ocpp_link import OcppLink
from gateway.session import Transaction, TransactionStarted, TransactionStopped
from gateway.settings import BackendSettings, OcppSettings
from gateway.store import Store
from gateway.uplink import Uplink
from tests.certs import make_self_signed_cert
from tests.ocpp_rpc_peer import OcppRpcBackend
from tests.uplinks import CLOCK, INFO, drained, offline_session, running, statuses

pytestmark = pytest.mark.interop

async def test_offline_session_is_delivered_in_order_after_boot(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    await offline_session(store)
    async with OcppRpcBackend() as backend:
        uplink = Uplink(INFO, BackendSettings(url=backend.url), OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await drained(store, 20)
            await backend.wait_for_calls("StatusNotification", 3, timeout=10)
        calls = backend.calls(identity=INFO.identity)
        assert calls[0]["method"] == "BootNotification"
        assert calls[0]["params"]["chargePointSerialNumber"] == "SN-1"
        tx_calls = [c for c in calls if c["method"] in ("StartTransaction", "MeterValues", "StopTransaction")]
        assert [c["method"] for c in tx_calls] == ["StartTransaction", "MeterValues", "StopTransaction"]
        result = next(r for r in backend.of_type("result") if r["messageId"] == tx_calls[0]["messageId"])
        tx_id = result["result"]["transactionId"]
        assert tx_calls[1]["params"]["transactionId"] == tx_id == tx_calls[2]["params"]["transactionId"]
        assert tx_calls[0]["params"]["meterStart"] == 1000 and tx_calls[2]["params"]["meterStop"] == 2500
        status = {c["params"]["connectorId"]: c["params"]["status"] for c in calls if c["method"] == "StatusNotification"}
        assert status == {0: "Available", 1: "Available", 2: "Faulted"}
        assert backend.violations == []
    assert await store.pending() == 0
    await store.close()


async def test_nothing_but_boot_until_accepted_then_reconnect(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    await offline_session(store)
    async with OcppRpcBackend() as backend:
        await backend.configure(boot_status="Pending", heartbeat_interval=1)
        settings = BackendSettings(url=backend.url, reconnect_min_s=0.1, reconnect_max_s=0.5)
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await backend.wait_for_calls("BootNotification", 2, timeout=10)
            assert {c["method"] for c in backend.calls(identity=INFO.identity)} == {"BootNotification"}
            await backend.configure(boot_status="Accepted", heartbeat_interval=3600)
            await drained(store)
            # The backend drops us; the uplink comes back, boots again and reports statuses again.
            boots = len(backend.calls("BootNotification"))
            await backend.close_connection(INFO.identity)
            await backend.wait_for_calls("BootNotification", boots + 1, timeout=10)
            await asyncio.wait_for(uplink.connected.wait(), 10)
        assert len(backend.calls("StartTransaction")) == 1, "a delivered message was sent again"
        assert backend.violations == []
    await store.close()


async def test_wss_with_private_ca_and_basic_auth(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    password = tmp_path / "backend-password"
    password.write_text("correct horse battery staple\n")
    store = await Store.open(tmp_path / "gw.db")
    await offline_session(store)
    async with OcppRpcBackend(password="correct horse battery staple", tls_cert=cert, tls_key=key) as backend:
        assert backend.url.startswith("wss://")
        settings = BackendSettings(url=backend.url, password_file=password, ca_file=cert)
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await drained(store, 20)
        connect = backend.of_type("connect", INFO.identity)[0]
        assert connect["protocol"] == "ocpp1.6"
        assert backend.violations == []
    await store.close()


@pytest.mark.parametrize("fault", ["wrong password", "unknown CA"])
async def test_refused_or_untrusted_backend_never_connects(tmp_path: Path, fault: str) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    password = tmp_path / "backend-password"
    password.write_text("wrong" if fault == "wrong password" else "right")
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend(password="right", tls_cert=cert, tls_key=key) as backend:
        # "unknown CA": no ca_file, so the system CAs are used, and they do not know this certificate.
        settings = BackendSettings(url=backend.url, password_file=password, ca_file=cert if fault == "wrong password" else None,
                                   reconnect_min_s=0.2, reconnect_max_s=0.5)
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            if fault == "wrong password":
                await backend.wait_for(lambda r: r["type"] == "auth-rejected" and r["status"] == 401, 10)
            else:
                await asyncio.sleep(1.5)
            assert not uplink.connected.is_set()
            assert backend.calls(identity=INFO.identity) == []
    await store.close()


async def test_refused_meter_values_are_dropped_but_a_refused_stop_is_kept_identical(tmp_path: Path) -> None:
    """OCPP 1.6 §3.7.1 against CALLERRORs: n x interval waits, MeterValues dropped at the limit, Stop kept (field failure 9)."""
    store = await Store.open(tmp_path / "gw.db")
    await offline_session(store)
    ocpp = OcppSettings(transaction_message_attempts=2, transaction_message_retry_interval_s=1)
    async with OcppRpcBackend() as backend:
        await backend.configure(refuse={"MeterValues": 2, "StopTransaction": 3})
        uplink = Uplink(INFO, BackendSettings(url=backend.url), ocpp, store, CLOCK, statuses)
        async with running(uplink):
            await drained(store, 20)
        assert len(backend.calls("MeterValues")) == 2, "dropped after TransactionMessageAttempts refusals"
        stops = backend.calls("StopTransaction")
        assert len(stops) == 4, "three refusals, then accepted: never dropped"
        assert len({s["messageId"] for s in stops}) == 1 and all(s["params"] == stops[0]["params"] for s in stops)
        assert backend.violations == []
    async with store._db.execute("SELECT kind FROM events WHERE kind IN ('dropped', 'alarm') ORDER BY id") as cursor:
        assert [row[0] for row in await cursor.fetchall()] == ["dropped", "alarm"]
    await store.close()


async def test_queued_samples_drain_as_one_message(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    t0 = CLOCK.wall() - 3600
    tx = Transaction("long-outage", "TAG", 0, t0)
    await store.commit([TransactionStarted(1, tx)], CLOCK)
    for i in range(1, 8):
        entry = {"timestamp": CLOCK.utc_iso(t0 + 60 * i), "sampledValue": [{"value": str(100 * i), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}
        await store.queue_meter_values(1, tx.key, [entry], CLOCK)
    await store.commit([TransactionStopped(1, tx, 800, "EVDisconnected", t0 + 600)], CLOCK)
    async with OcppRpcBackend() as backend:
        uplink = Uplink(INFO, BackendSettings(url=backend.url), OcppSettings(meter_values_batch_max=5), store, CLOCK, statuses)
        async with running(uplink):
            await drained(store, 20)
        batches = [[e["sampledValue"][0]["value"] for e in c["params"]["meterValue"]] for c in backend.calls("MeterValues")]
        assert batches == [["100", "200", "300", "400", "500"], ["600", "700"]]
        assert backend.violations == []
    await store.close()


async def test_unrecorded_energy_reaches_the_strict_backend_in_order(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    await offline_session(store)  # ends at meterStop 2500 on connector 2
    await store.reconcile_energy(2, 4000, False, CLOCK)
    async with OcppRpcBackend() as backend:
        uplink = Uplink(INFO, BackendSettings(url=backend.url), OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await drained(store, 20)
        order = [c["method"] for c in backend.calls(identity=INFO.identity) if c["method"] not in ("BootNotification", "StatusNotification")]
        assert order == ["StartTransaction", "MeterValues", "StopTransaction", "DataTransfer"]
        record = backend.calls("DataTransfer")[0]["params"]
        assert record["vendorId"] == "charger-gateway" and record["messageId"] == "UnrecordedEnergy"
        assert json.loads(record["data"])["energyWh"] == 1500
        assert backend.violations == []
    await store.close()


@pytest.mark.parametrize("turns_between", [0, 1])
async def test_a_cancel_that_comes_with_the_answer_is_never_lost(turns_between: int) -> None:
    """CPython gh-86296: on 3.11, asyncio.wait_for could return the answer and drop a cancel that came
    with it. The uplink's status sender then waited forever and its TaskGroup never finished cancelling
    (field failure 2's test hung now and then). A call that was cancelled must end cancelled."""

    async def silent(connection: ServerConnection) -> None:
        await connection.wait_closed()

    async with serve(silent, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp1.6")]) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/CP", subprotocols=[Subprotocol("ocpp1.6")]) as ws:
            link = OcppLink("CP", ws, {}, response_timeout=5)
            call = asyncio.create_task(link.call_wire("Heartbeat", {}, "hb-1"))
            await asyncio.sleep(0.1)  # the CALL is out; the task waits for its answer
            link._response_queue.put_nowait(CallResult("hb-1", {"currentTime": "2026-11-21T10:00:00.000Z"}))
            for _ in range(turns_between):
                await asyncio.sleep(0)
            if call.cancel():  # requested while the call had not finished: it must end cancelled
                with pytest.raises(asyncio.CancelledError):
                    await call
            else:
                assert (await call)["currentTime"]


async def test_every_outage_is_warned_about_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each time the link goes down the journal says so at WARNING, not only the first time; further tries at DEBUG."""
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend() as backend:
        settings = BackendSettings(url=backend.url, insecure_lab_mode=True, reconnect_min_s=0.2, reconnect_max_s=0.5)
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses)
        with caplog.at_level(logging.WARNING, logger="gateway.uplink"):
            async with running(uplink):
                for outage in (1, 2):
                    await asyncio.wait_for(uplink.connected.wait(), 10)
                    await backend.close_connection(INFO.identity)
                    await backend.wait_for_calls("BootNotification", outage + 1, timeout=10)
        downs = [r for r in caplog.records if "down (" in r.getMessage()]
        assert len(downs) == 2, [r.getMessage() for r in caplog.records]
    await store.close()
