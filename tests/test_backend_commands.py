"""Backend commands end to end: the strict independent backend (npm ocpp-rpc) sends, the daemon answers,
and the effect is read back at the simulated slave with an independent Modbus master (modbus-tk).

The cluster: two Heidelberg boxes on Modbus TCP (loopback), played in-process by the simulator; the
daemon runs in-process too, so that a Reset ends `Daemon.run` instead of re-executing the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import modbus_tk.defines as mbtk
import pytest
import yaml
from modbus_tk.modbus_tcp import TcpMaster

from gateway.clock import Clock
from gateway.config import load_config_with_warnings
from gateway.daemon import Daemon, ResetRequested
from gateway.session import Transaction, TransactionStarted
from gateway.settings import Config
from gateway.simulator import run_simulation
from gateway.store import Store
from tests.loopback import free_port
from tests.ocpp_rpc_peer import OcppCallError, OcppRpcBackend

pytestmark = pytest.mark.interop

IDENTITY = "CP-CMD-01"
LIMIT_REGISTER = 261  # Heidelberg holding register: the current limit in 0.1 A
UNITS = {"bender-cc613": 255}  # the unit id a profile's device answers to on Modbus TCP; 1 otherwise


def cluster_config(
    tmp_path: Path, backend_url: str, free_tag: bool, connectors: int = 2, profile: str = "heidelberg-energy-control", **extra: object
) -> Config:
    doc = {
        "charge_point": {"identity": IDENTITY, "vendor": "OpenGateway", "model": "Cluster"},
        "backend": {"url": backend_url, "insecure_lab_mode": True},
        "buses": [{"name": "lan", "kind": "tcp", "poll_interval_s": 0.5}],
        "connectors": [
            {"id": c, "bus": "lan", "host": "127.0.0.1", "port": free_port(), "unit": UNITS.get(profile, 1), "profile": profile}
            for c in range(1, connectors + 1)
        ],
        "storage": {"path": str(tmp_path / "gw.db")},
        "authorization": {"free_charging_id_tag": "FREE"} if free_tag else {},
        "ocpp": {"meter_value_sample_interval_s": 60},
        # EVs arrive within 3 s of the start (speed 60: 180 simulated seconds) and take hours to fill.
        "simulator": {"speed": 60, "seed": 2, "wire_delay": False, "idle_s": [60, 180], "session_kwh": [40, 40]},
    } | extra
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(doc))
    config, _ = load_config_with_warnings(tmp_path / "cluster.yaml")
    return config


@dataclass
class Running:
    config: Config
    backend: OcppRpcBackend
    daemon: Daemon
    task: asyncio.Task[None]

    def register(self, connector_id: int, address: int = LIMIT_REGISTER) -> int:
        """A holding register of a connector's slave, read by modbus-tk (shares no code with us or pymodbus)."""
        c = next(c for c in self.config.connectors if c.id == connector_id)
        master = TcpMaster(c.host, c.port, timeout_in_sec=2.0)
        try:
            return int(master.execute(c.unit, mbtk.READ_HOLDING_REGISTERS, address, 1)[0])
        finally:
            master.close()

    async def until(self, predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
        try:
            async with asyncio.timeout(timeout):
                while not await asyncio.to_thread(predicate):
                    if self.task.done():
                        self.task.result()
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"not within {timeout:g} s: {what or 'the condition'}") from None

    def status(self, connector_id: int) -> str | None:
        calls = [c for c in self.backend.calls("StatusNotification", IDENTITY) if c["params"]["connectorId"] == connector_id]
        return calls[-1]["params"]["status"] if calls else None

    async def call(self, method: str, params: dict) -> dict:
        return await self.backend.call(IDENTITY, method, params)


@contextlib.asynccontextmanager
async def daemon_on_simulator(
    config: Config, on_event: Callable[[dict[str, Any]], None] | None = None
) -> AsyncIterator[tuple[Daemon, asyncio.Task[None]]]:
    """The simulated slaves of `config` (their events to `on_event`) and the daemon over them, both in this process.

    A config the simulator cannot play fails here with the simulator's error, not as a hang.
    """
    ready = asyncio.Event()
    sim = asyncio.create_task(run_simulation(config, ready=ready, on_event=on_event))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({sim, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if sim.done():
        sim.result()
    store = await Store.open(config.storage.path)
    daemon = Daemon(config, store, Clock())
    await daemon.recover()
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon, task
    finally:
        for t in (task, sim):
            t.cancel()
        await asyncio.gather(task, sim, return_exceptions=True)
        await store.close()


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path, free_tag: bool = True, connectors: int = 2, profile: str = "heidelberg-energy-control", **extra: object
) -> AsyncIterator[Running]:
    async with OcppRpcBackend() as backend:
        config = cluster_config(tmp_path, backend.url, free_tag, connectors, profile, **extra)
        async with daemon_on_simulator(config) as (daemon, task):
            await asyncio.wait_for(daemon.uplink.connected.wait(), 20)
            yield Running(config, backend, daemon, task)
            assert backend.violations == [], backend.violations


async def test_configuration_is_validated_answered_and_kept(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        keys = (await c.call("GetConfiguration", {"key": ["MeterValuesSampledData", "MeterValueSampleInterval", "NoSuchKey"]}))
        values = {k["key"]: k["value"] for k in keys["configurationKey"]}
        assert values == {"MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import", "MeterValueSampleInterval": "60"}
        assert keys["unknownKey"] == ["NoSuchKey"]
        assert (await c.call("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "30"}))["status"] == "Accepted"
        assert (await c.call("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "soon"}))["status"] == "Rejected"
        assert (await c.call("ChangeConfiguration", {"key": "SupportedFeatureProfiles", "value": "Core"}))["status"] == "Rejected"
        assert (await c.call("ChangeConfiguration", {"key": "NoSuchKey", "value": "1"}))["status"] == "NotSupported"
        assert all(p.sample_interval_s == 30 for p in c.daemon.pollers), "in effect at once"
        everything = await c.call("GetConfiguration", {})
        assert len(everything["configurationKey"]) > 25
    store = await Store.open(tmp_path / "gw.db")  # a restart keeps what the backend set
    config = cluster_config(tmp_path, "ws://127.0.0.1:9/ocpp", True)
    daemon = Daemon(config, store, Clock())
    await daemon.control.load()
    assert daemon.control.configuration.int_value("MeterValueSampleInterval") == 30
    await store.close()


async def test_a_charging_profile_reaches_the_slaves_current_register(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.until(lambda: c.daemon.connectors[1].transaction and c.register(1) == 160, what="the session offers the box maximum")
        profile = {
            "chargingProfileId": 7, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Relative",
            "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]},
        }
        assert (await c.call("SetChargingProfile", {"connectorId": 0, "csChargingProfiles": profile}))["status"] == "Accepted"
        await c.until(lambda: c.register(1) == 100, timeout=5, what="10 A within a poll cycle")
        composite = await c.call("GetCompositeSchedule", {"connectorId": 1, "duration": 3600, "chargingRateUnit": "A"})
        assert composite["status"] == "Accepted"
        assert composite["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 10.0
        cleared = await c.call("ClearChargingProfile", {"id": 7})
        assert cleared["status"] == "Accepted"
        await c.until(lambda: c.register(1) == 160, timeout=5)
        assert (await c.call("ClearChargingProfile", {"id": 7}))["status"] == "Unknown"
        bad = {**profile, "chargingProfilePurpose": "ChargePointMaxProfile"}
        assert (await c.call("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": bad}))["status"] == "Rejected"


async def test_availability_disables_the_slave_and_is_kept(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.until(lambda: c.daemon.connectors[2].transaction and c.register(2) == 160)
        answer = await c.call("ChangeAvailability", {"connectorId": 2, "type": "Inoperative"})
        assert answer["status"] == "Scheduled", "a transaction runs there"
        running = c.daemon.connectors[2].transaction
        assert running is not None
        tx_id = await c.daemon.store.transaction_id(running.key)
        assert (await c.call("RemoteStopTransaction", {"transactionId": tx_id}))["status"] == "Accepted"
        await c.until(lambda: c.status(2) == "Unavailable", what="applied when the transaction ended")
        await c.until(lambda: c.register(2) == 0, timeout=5, what="the box is paused")
        stop = c.backend.calls("StopTransaction", IDENTITY)[-1]["params"]
        assert stop["reason"] == "Remote" and stop["transactionId"] == tx_id
        assert (await c.call("RemoteStopTransaction", {"transactionId": 999999}))["status"] == "Rejected"
        # The whole station (connector 0): Scheduled while connector 1 charges; Operative again frees both.
        assert (await c.call("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}))["status"] == "Scheduled"
        assert (await c.call("ChangeAvailability", {"connectorId": 0, "type": "Operative"}))["status"] == "Scheduled"
        await c.until(lambda: c.status(2) != "Unavailable", timeout=5, what="connector 2 operative with the station")
        assert all(conn.operative for conn in c.daemon.connectors.values())
        assert (await c.call("ChangeAvailability", {"connectorId": 2, "type": "Inoperative"}))["status"] == "Accepted"
        await c.until(lambda: c.status(2) == "Unavailable", timeout=5)
    store = await Store.open(tmp_path / "gw.db")
    daemon = Daemon(cluster_config(tmp_path, "ws://127.0.0.1:9/ocpp", True), store, Clock())
    await daemon.recover()
    assert daemon.connectors[2].status == "Unavailable" and daemon.connectors[1].operative
    await store.close()


async def test_remote_start_waits_for_the_ev_and_uses_the_backends_tag(tmp_path: Path) -> None:
    async with cluster(tmp_path, free_tag=False) as c:
        await c.until(lambda: c.status(1) == "Preparing", what="an EV plugged in, nobody authorized it")
        assert await asyncio.to_thread(c.register, 1) == 0  # never in the loop's thread: the simulator runs there
        assert (await c.call("RemoteStartTransaction", {"idTag": "APP-USER-1"}))["status"] == "Accepted"
        await c.until(lambda: c.backend.calls("StartTransaction", IDENTITY), timeout=10)
        start = c.backend.calls("StartTransaction", IDENTITY)[0]["params"]
        assert start["idTag"] == "APP-USER-1"
        await c.until(lambda: c.register(start["connectorId"]) == 160, timeout=5)


async def test_trigger_and_the_small_core_commands(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        before = len(c.backend.calls("StatusNotification", IDENTITY))
        assert (await c.call("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}))["status"] == "Accepted"
        await c.backend.wait_for_calls("StatusNotification", before + 1, timeout=5)
        assert (await c.call("TriggerMessage", {"requestedMessage": "Heartbeat"}))["status"] == "Accepted"
        await c.backend.wait_for_calls("Heartbeat", 1, timeout=5)
        await c.until(lambda: all(p.last_reading for p in c.daemon.pollers), what="both slaves polled")
        assert (await c.call("TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 2}))["status"] == "Accepted"
        triggered = await c.backend.wait_for(
            lambda r: r["type"] == "call" and r["method"] == "MeterValues"
            and r["params"]["meterValue"][0]["sampledValue"][0].get("context") == "Trigger", timeout=5,
        )
        assert triggered["params"]["connectorId"] == 2
        for message in ("BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification"):
            before = len(c.backend.calls(message, IDENTITY))
            assert (await c.call("TriggerMessage", {"requestedMessage": message}))["status"] == "Accepted"
            await c.backend.wait_for_calls(message, before + 1, timeout=5)
        assert c.backend.calls("FirmwareStatusNotification", IDENTITY)[-1]["params"]["status"] == "Idle"
        assert (await c.call("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 9}))["status"] == "Rejected"
        assert (await c.call("DataTransfer", {"vendorId": "com.example"}))["status"] == "UnknownVendorId"
        assert (await c.call("ClearCache", {}))["status"] == "Accepted"
        assert (await c.call("UnlockConnector", {"connectorId": 1}))["status"] == "NotSupported"
        tags = [{"idTag": f"TAG{n:05d}", "idTagInfo": {"status": "Accepted"}} for n in range(1000)]
        sent = await c.call("SendLocalList", {"listVersion": 3, "updateType": "Full", "localAuthorizationList": tags})
        assert sent["status"] == "Accepted"
        assert (await c.call("GetLocalListVersion", {}))["listVersion"] == 3


async def test_malformed_and_unknown_commands_get_the_right_callerror(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        cases = [
            ("ChangeAvailability", {"connectorId": 1}, "ProtocolError"),  # OCPP-J §4.2.3: "payload for action is incomplete"
            ("ChangeAvailability", {"connectorId": 1, "type": "Sideways"}, "FormationViolation"),  # the ocpp library's choice for an enum
            ("ChangeAvailability", {"connectorId": "one", "type": "Operative"}, "TypeConstraintViolation"),
            ("UnlockConnector", {"connectorId": 7}, "PropertyConstraintViolation"),
            ("CertificateSigned", {"certificateChain": "x"}, "NotImplemented"),
        ]
        for method, params, code in cases:
            with pytest.raises(OcppCallError) as error:
                await c.backend.call(IDENTITY, method, params, skip_validation=True)
            assert error.value.code == code, (method, params)
        assert not c.task.done(), "the daemon carries on"


async def test_a_soft_reset_stops_transactions_and_restarts(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.until(lambda: all(conn.transaction for conn in c.daemon.connectors.values()))
        assert (await c.call("Reset", {"type": "Soft"}))["status"] == "Accepted"
        with pytest.raises(ExceptionGroup) as group:
            await asyncio.wait_for(c.task, 10)
        assert group.group_contains(ResetRequested)
        async with c.daemon.store._db.execute("SELECT stop_reason FROM sessions WHERE stopped IS NOT NULL") as cursor:
            assert [row[0] for row in await cursor.fetchall()] == ["SoftReset", "SoftReset"]


async def test_a_start_whose_reservation_expired_meanwhile_does_not_take_the_daemon_down(tmp_path: Path) -> None:
    """The poller chose the reservation's tag, then the reservation expired before the start was committed."""
    config = cluster_config(tmp_path, "ws://127.0.0.1:9/ocpp", free_tag=True)
    store = await Store.open(config.storage.path)
    daemon = Daemon(config, store, Clock())
    await daemon.recover()
    started = TransactionStarted(1, Transaction("late", "TAG", 100, Clock().wall(), reservation_id=3))
    assert await daemon.handle_effects([started])
    assert (await store.open_sessions())[1].key == "late"
    await store.close()
