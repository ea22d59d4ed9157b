"""The twelve ways other OCPP gateways failed in the field (../shared/reference/ocpp-gateway-notes.md), one test each.

Each test is named after its failure and replays the situation that caused it,
against the strict independent backend (npm ocpp-rpc) where the backend is
part of it. Where another test goes deeper, the docstring says which.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from gateway.clock import EARLIEST_VALID, parse_iso
from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.devprofile import Table
from gateway.errors import DeviceError
from gateway.modbus_line import SerialLine
from gateway.session import Transaction, TransactionStarted, TransactionStopped
from gateway.settings import BackendSettings, OcppSettings
from gateway.simulator.runner import run_simulation
from gateway.store import Store
from gateway.uplink import Uplink
from tests.clocks import HandClock
from tests.fault_proxy import FaultProxy
from tests.kill_judge import IDENTITY as CLUSTER_IDENTITY
from tests.killing import Scenario, read_events, spawn_gateway, terminate, write_config
from tests.ocpp_rpc_peer import OcppRpcBackend
from tests.uplinks import CLOCK, INFO, drained, offline_session, running, statuses
from tests.virtual_cluster import IDENTITY as WEEK_IDENTITY
from tests.virtual_cluster import SimulatedSlaves, VirtualCluster, WeekScenario, judge
from tests.virtual_cluster import write_config as write_virtual_config

pytestmark = pytest.mark.interop

TX = ("StartTransaction", "MeterValues", "StopTransaction")


def sample(wh: int, at: float) -> dict:
    return {"timestamp": CLOCK.utc_iso(at), "sampledValue": [{"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}


def tx_calls(backend: OcppRpcBackend) -> list[dict]:
    return [c for c in backend.calls(identity=INFO.identity) if c["method"] in TX]


async def test_failure_01_stop_of_an_offline_session_carries_the_real_transaction_id_across_reboots(tmp_path: Path) -> None:
    """libocpp#495: StopTransaction with transactionId -1 for a session that started offline.

    The session key links the messages; it is resolved at send time, and the link survives two reboots.
    """
    db = tmp_path / "gw.db"
    t0 = CLOCK.wall() - 900
    tx = Transaction("offline-reboot", "TAG-1", 100, t0)
    store = await Store.open(db)
    await store.commit([TransactionStarted(1, tx)], CLOCK)
    await store.close()  # reboot, still offline
    store = await Store.open(db)
    await store.queue_meter_values(1, tx.key, [sample(400, t0 + 60)], CLOCK)
    await store.commit([TransactionStopped(1, tx, 700, "EVDisconnected", t0 + 120)], CLOCK)
    await store.close()  # reboot again
    store = await Store.open(db)
    async with OcppRpcBackend() as backend:
        async with running(Uplink(INFO, BackendSettings(url=backend.url), OcppSettings(), store, CLOCK, statuses)):
            await drained(store, 20)
        start, mv, stop = tx_calls(backend)
        tx_id = next(r["result"]["transactionId"] for r in backend.of_type("result") if r["messageId"] == start["messageId"])
        assert tx_id > 0 and mv["params"]["transactionId"] == tx_id == stop["params"]["transactionId"]
        assert backend.violations == []
    await store.close()


async def test_failure_02_a_delivered_stop_is_never_sent_again_after_a_reboot(tmp_path: Path) -> None:
    """libocpp#907, #239: unacknowledged transactions reloaded and resent after a reboot, in a race.

    A message leaves the outbox in the same commit that records its answer; the kill test
    (test_kill.py) SIGKILLs the daemon at random instants around this moment.
    """
    db = tmp_path / "gw.db"
    store = await Store.open(db)
    await offline_session(store)
    async with OcppRpcBackend() as backend:
        async with running(Uplink(INFO, BackendSettings(url=backend.url), OcppSettings(), store, CLOCK, statuses)):
            await drained(store, 20)
        await store.close()
        store = await Store.open(db)  # the reboot
        uplink = Uplink(INFO, BackendSettings(url=backend.url), OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await backend.wait_for_calls("BootNotification", 2, timeout=10)
            await backend.wait_for_calls("StatusNotification", 6, timeout=10)  # the second connection's status round
        assert [c["method"] for c in tx_calls(backend)] == list(TX), "each once, before the reboot only"
        assert backend.violations == []
    await store.close()


async def test_failure_03_a_session_started_and_stopped_offline_then_a_reset_offline_sends_its_start(tmp_path: Path) -> None:
    """MicroOcpp#454: after a reset while offline only the StopTransaction was resent; the Start was lost."""
    db = tmp_path / "gw.db"
    store = await Store.open(db)
    await offline_session(store)
    await store.close()  # the reset, before any uplink
    store = await Store.open(db)
    assert await store.open_sessions() == {}, "the stopped session is not resumed"
    async with OcppRpcBackend() as backend:
        async with running(Uplink(INFO, BackendSettings(url=backend.url), OcppSettings(), store, CLOCK, statuses)):
            await drained(store, 20)
        assert [c["method"] for c in tx_calls(backend)] == list(TX)
        assert backend.violations == []
    await store.close()


async def test_failure_04_a_reboot_offline_after_an_offline_session_does_not_block_new_sessions(tmp_path: Path) -> None:
    """MicroOcpp#298: after a reboot while offline, following an offline session, no transaction could start.

    The daemon's own pollers, session machines and store in virtual time (tests/virtual_cluster.py):
    12 h with the backend unreachable, a reboot in the middle, then the backend comes back.
    """
    scenario = WeekScenario(connectors=2, idle_s=(600.0, 3600.0), seed=4)
    clock = HandClock(system=time.time() - 13 * 3600, mono=1000.0)
    async with OcppRpcBackend() as backend, FaultProxy("127.0.0.1", backend.port) as proxy:
        proxy.blackhole()  # a dead zone from the start
        config = load_config(write_virtual_config(tmp_path, proxy.url_for(backend.url), scenario))
        slaves = SimulatedSlaves(config, clock, scenario)
        samples = 0
        started_per_boot = []
        for boot in ("before", "after"):
            store = await Store.open(config.storage.path, clock)
            daemon = Daemon(config, store, clock)
            await daemon.recover()
            cluster = VirtualCluster(daemon, clock, slaves)
            uplink = asyncio.create_task(daemon.uplink.run())
            try:
                sessions_before = await _session_count(store)
                await cluster.play(6 * 3600, scenario.step_s)
                started_per_boot.append(await _session_count(store) - sessions_before)
                if boot == "after":
                    proxy.restore()
                    await cluster.until_drained(store, scenario.step_s, 60)
            finally:
                uplink.cancel()
                await asyncio.gather(uplink, return_exceptions=True)
                samples += cluster.samples
                await store.close()
        assert all(n >= 2 for n in started_per_boot), f"sessions started per boot: {started_per_boot}"
        assert judge(backend.of_type("call"), backend.of_type("result"), slaves.events, samples) == []
        assert backend.violations == []


async def _session_count(store: Store) -> int:
    async with store._db.execute("SELECT count(*) FROM sessions") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def test_failure_05_meter_values_taken_offline_survive_a_restart_and_all_arrive(tmp_path: Path) -> None:
    """MicroOcpp#193: MeterValues recorded offline were kept in memory only. Also the 1-week outage test."""
    db = tmp_path / "gw.db"
    t0 = CLOCK.wall() - 7200
    tx = Transaction("offline-samples", "TAG-5", 0, t0)
    store = await Store.open(db)
    await store.commit([TransactionStarted(1, tx)], CLOCK)
    for n in range(1, 121):
        await store.queue_meter_values(1, tx.key, [sample(10 * n, t0 + 60 * n)], CLOCK)
    await store.close()  # power cut
    store = await Store.open(db)
    await store.commit([TransactionStopped(1, tx, 1210, "EVDisconnected", t0 + 7300)], CLOCK)
    async with OcppRpcBackend() as backend:
        async with running(Uplink(INFO, BackendSettings(url=backend.url), OcppSettings(), store, CLOCK, statuses)):
            await drained(store, 20)
        values = [int(e["sampledValue"][0]["value"]) for c in backend.calls("MeterValues") for e in c["params"]["meterValue"]]
        assert values == [10 * n for n in range(1, 121)], "every sample, once, in order"
        assert len(backend.calls("MeterValues")) == 2, "batched 60 to a message"
        assert backend.violations == []
    await store.close()


async def test_failure_06_a_master_that_believes_it_is_1970_never_sends_1970(tmp_path: Path) -> None:
    """MicroOcpp#311: a session recorded before the clock was set reaches the backend with real UTC times."""
    clock = HandClock()  # no RTC, no NTP: the system clock says 1970
    store = await Store.open(tmp_path / "gw.db", clock)
    tx = Transaction("boot-1970", "TAG", 100, clock.wall())
    await store.commit([TransactionStarted(1, tx)], clock)
    clock.advance(120)
    await store.queue_meter_values(1, tx.key, [{"timestamp": clock.utc_iso(), "sampledValue": [{"value": "150", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}], clock)
    clock.advance(120)
    await store.commit([TransactionStopped(1, tx, 200, "EVDisconnected", clock.wall())], clock)
    async with OcppRpcBackend() as backend:
        uplink = Uplink(INFO, BackendSettings(url=backend.url), OcppSettings(), store, clock, statuses)
        async with running(uplink):
            await drained(store, 20)  # the BootNotification's currentTime set the clock
        boot_time = parse_iso(backend.of_type("result")[0]["result"]["currentTime"])
        start, mv, stop = (backend.calls(m)[0]["params"] for m in TX)
        times = [parse_iso(start["timestamp"]), parse_iso(mv["meterValue"][0]["timestamp"]), parse_iso(stop["timestamp"])]
        assert all(t >= EARLIEST_VALID for t in times)
        assert times[1] - times[0] == 120 and times[2] - times[1] == 120, "spacing kept, by monotonic time"
        assert abs(times[2] - boot_time) < 5, "the stop happened just before the boot"
        assert all(s.endswith("Z") for s in (start["timestamp"], stop["timestamp"]))
        assert backend.violations == []
    await store.close()


# The library itself, preloaded into the daemon: the `faketime` wrapper forks, so a SIGTERM to it
# would leave the daemon running after the test.
LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)


@pytest.mark.skipif(LIBFAKETIME is None, reason="needs Debian's faketime (.ci/run installs it)")
async def test_failure_06_the_real_daemon_booted_in_1970_in_berlin_sends_utc_of_real_time(tmp_path: Path) -> None:
    """openWB/core#2272 and MicroOcpp#311 end to end: the daemon process runs under libfaketime in 1970, TZ Berlin.

    Sessions happen while the backend is unreachable; when it comes, its BootNotification time sets the
    clock, and every stamp reaches the backend as real UTC ("Z"), within seconds of the real events.
    """
    scenario = Scenario(kills=0, seed=5, speed=60.0, idle_s=(180.0, 300.0), session_kwh=(0.3, 0.6), sample_interval_s=2)
    async with OcppRpcBackend() as backend, FaultProxy("127.0.0.1", backend.port) as proxy:
        proxy.reset()  # unreachable: connections refused with a RST
        config = write_config(tmp_path, proxy.url_for(backend.url), scenario)
        doc = yaml.safe_load(config.read_text())
        doc["backend"]["reconnect_max_s"] = 2  # back within seconds of the backend coming, not minutes
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
        events_file = tmp_path / "sim-events.jsonl"
        sim = await spawn_gateway("simulate", "-c", str(config), "--events", str(events_file), log=tmp_path / "sim.log")
        async with asyncio.timeout(20):
            while not (tmp_path / "ttyRS485-1").exists():
                await asyncio.sleep(0.05)
        env = {"TZ": "Europe/Berlin", "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "@1970-01-01 12:00:00"}
        daemon = await spawn_gateway("run", "-c", str(config), log=tmp_path / "daemon.log", env=env)
        try:
            async with asyncio.timeout(90):
                while not [e for e in read_events(events_file) if e["event"] == "unplug"]:
                    assert daemon.returncode is None, (tmp_path / "daemon.log").read_text()[-3000:]
                    await asyncio.sleep(0.5)
            proxy.restore()
            async with asyncio.timeout(60):
                while not backend.calls("StopTransaction", CLUSTER_IDENTITY):
                    assert daemon.returncode is None, (tmp_path / "daemon.log").read_text()[-3000:]
                    await asyncio.sleep(0.2)
        finally:
            await terminate(daemon)
            await terminate(sim)
        unplug = next(e for e in read_events(events_file) if e["event"] == "unplug")
        stop = next(c for c in backend.calls("StopTransaction", CLUSTER_IDENTITY))["params"]
        assert stop["timestamp"].endswith("Z")
        assert abs(parse_iso(stop["timestamp"]) - unplug["wall"]) < 5, "the stop's stamp is the real UTC time of the unplug"
        stamps = [c["params"]["timestamp"] for c in backend.calls("StartTransaction", CLUSTER_IDENTITY)]
        assert stamps and all(parse_iso(s) >= EARLIEST_VALID for s in stamps)
        assert backend.violations == []
    # The daemon really lived in 1970: it recorded its first sessions with an unset clock.
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        first_start = db.execute("SELECT min(started) FROM sessions").fetchone()[0]
    assert first_start < EARLIEST_VALID


async def test_failure_07_websocket_pings_are_configurable_and_detect_a_dead_zone(tmp_path: Path) -> None:
    """steve#406, evcc#33317: SIM data burnt by pings. WebSocketPingInterval 0 sends none; N detects a silent link.

    With pings off, an idle link costs nothing (the proxy counts every byte). With pings on, a GPRS dead
    zone (packets swallowed, no RST) is noticed within about twice the interval, and the uplink reconnects
    with backoff instead of a storm.
    """
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend() as backend, FaultProxy("127.0.0.1", backend.port) as proxy:
        await backend.configure(heartbeat_interval=3600)
        quiet = BackendSettings(url=proxy.url_for(backend.url), ping_interval_s=0)
        async with running(Uplink(INFO, quiet, OcppSettings(), store, CLOCK, statuses)):
            await backend.wait_for_calls("StatusNotification", 3, timeout=10)
            await asyncio.sleep(0.5)
            before = proxy.bytes_up + proxy.bytes_down
            await asyncio.sleep(3)
            assert proxy.bytes_up + proxy.bytes_down == before, "no ping, no heartbeat: not one byte"

        pinging = BackendSettings(url=proxy.url_for(backend.url), ping_interval_s=1, ping_timeout_s=1, reconnect_min_s=0.5, reconnect_max_s=2)
        uplink = Uplink(INFO, pinging, OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await asyncio.wait_for(uplink.connected.wait(), 10)
            before = proxy.bytes_up
            await asyncio.sleep(2.5)
            assert proxy.bytes_up > before, "pings went up"
            accepted = proxy.connections_accepted
            proxy.blackhole()
            lost_at = time.monotonic()
            async with asyncio.timeout(5):
                while uplink.connected.is_set():
                    await asyncio.sleep(0.05)
            # A ping within 1 s, its pong overdue 1 s later, then the 2 s close_timeout for a close frame that never comes.
            assert time.monotonic() - lost_at <= 5.0, "the dead zone is noticed by the pings"
            await asyncio.sleep(6)
            attempts = proxy.connections_accepted - accepted
            assert 1 <= attempts <= 8, f"{attempts} connection attempts in 6 s of dead zone: a storm"
            proxy.restore()
            await asyncio.wait_for(uplink.connected.wait(), 10)
        assert backend.violations == []
    await store.close()


async def test_failure_08_commands_before_the_boot_is_accepted_are_answered_without_a_boot_loop(tmp_path: Path) -> None:
    """evcc PR #27309, lbbrhzn/ocpp#1503: a backend that sends commands before it has handled the boot.

    The charge point answers each on the same connection, keeps the Pending interval between boots, and
    carries on once Accepted. The daemon's own uplink and command handlers (its slaves are not needed).
    """
    async with OcppRpcBackend() as backend:
        await backend.configure(boot_status="Pending", heartbeat_interval=2)
        config = load_config(write_virtual_config(tmp_path, backend.url, WeekScenario(connectors=2)))
        store = await Store.open(config.storage.path)
        await offline_session(store)
        daemon = Daemon(config, store, CLOCK)
        await daemon.recover()
        async with running(daemon.uplink):
            await backend.wait_for_calls("BootNotification", 1, timeout=10)
            # Answered with a CALLRESULT, not a CALLERROR, on the connection that is waiting for its boot.
            assert (await backend.call(WEEK_IDENTITY, "GetConfiguration", {}, timeout=5))["configurationKey"]
            assert (await backend.call(WEEK_IDENTITY, "TriggerMessage", {"requestedMessage": "Heartbeat"}, timeout=5))["status"] == "Accepted"
            assert (await backend.call(WEEK_IDENTITY, "ClearCache", {}, timeout=5))["status"] == "Accepted"
            await backend.wait_for_calls("BootNotification", 2, timeout=10)
            await backend.configure(boot_status="Accepted", heartbeat_interval=3600)
            await drained(store, 20)
            await backend.wait_for_calls("Heartbeat", 1, timeout=5)  # the triggered one, after the boot
        boots = [c["received"] for c in backend.calls("BootNotification", WEEK_IDENTITY)]
        assert len(backend.of_type("connect", WEEK_IDENTITY)) == 1, "one connection: no reconnect loop"
        assert all(b - a >= 1.8 for a, b in zip(boots, boots[1:], strict=False)), "the Pending interval is kept"
        assert backend.violations == []
    await store.close()


async def test_failure_09_a_stop_resent_after_no_answer_is_byte_identical(tmp_path: Path) -> None:
    """citrineos-core#880: a retried StopTransaction double-counted. A resend carries the same messageId and payload."""
    store = await Store.open(tmp_path / "gw.db")
    t0 = CLOCK.wall() - 600
    tx = Transaction("retried-stop", "TAG-9", 1000, t0)
    await store.commit([TransactionStarted(2, tx)], CLOCK)
    async with OcppRpcBackend() as backend, FaultProxy("127.0.0.1", backend.port) as proxy:
        settings = BackendSettings(url=proxy.url_for(backend.url), response_timeout_s=1.0, reconnect_min_s=0.2, reconnect_max_s=0.5)
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await drained(store, 20)  # the Start is answered
            proxy.delay(4.0)  # the answer to what comes next arrives after our 1 s deadline
            await store.commit([TransactionStopped(2, tx, 2500, "Local", t0 + 300)], CLOCK)
            uplink.outbox_changed()
            await backend.wait_for_calls("StopTransaction", 1, timeout=10)
            proxy.delay(0.0)
            await drained(store, 30)
        stops = [f["message"] for f in backend.of_type("frame", INFO.identity) if f["direction"] == "in" and '"StopTransaction"' in f["message"]]
        assert len(stops) == 2 and stops[0] == stops[1], "the resend is the same frame, byte for byte"
        assert len({c["messageId"] for c in backend.calls("StopTransaction")}) == 1
        assert backend.violations == []
    await store.close()


async def test_failure_10_several_wallboxes_on_one_bus_need_the_profiles_inter_frame_delay(tmp_path: Path) -> None:
    """evcc#2227, wbec#5: RS-485 timeouts with several wallboxes on one bus, cured by an inter-frame delay.

    The simulated boxes, like real ones, do not hear a request sent sooner than the profile's delay after
    the last reply. Polled back to back with only the Modbus t3.5 silence, most requests time out; with the
    delay the profile gives (what the poller always uses), none do.
    """
    config = load_config(_four_boxes_on_one_line(tmp_path))
    profile = config.profiles["heidelberg-energy-control"]
    ready = asyncio.Event()
    outcome: dict[float, int] = {}
    async with asyncio.TaskGroup() as tg:
        sim = tg.create_task(run_simulation(config, ready=ready))
        await ready.wait()
        line = SerialLine(config.buses[0])
        owner = tg.create_task(line.run())
        for gap in (0.0, profile.inter_frame_delay_s):
            failed = 0
            for _ in range(3):
                for unit in (1, 2, 3, 4):
                    try:
                        await line.read(unit, Table.INPUT, 4, 1, timeout_s=0.3, gap_s=gap)
                    except DeviceError:
                        failed += 1
            outcome[gap] = failed
        owner.cancel()
        sim.cancel()
    assert outcome[0.0] >= 6, outcome
    assert outcome[profile.inter_frame_delay_s] == 0, outcome


def _four_boxes_on_one_line(directory: Path) -> Path:
    path = directory / "line.yaml"
    connectors = "\n".join(f"  - {{id: {u}, bus: rs485, unit: {u}, profile: heidelberg-energy-control}}" for u in (1, 2, 3, 4))
    path.write_text(
        "charge_point: {identity: CP-LINE, vendor: OpenGateway, model: Cluster}\n"
        "backend: {url: 'ws://127.0.0.1:9/ocpp', insecure_lab_mode: true}\n"
        f"buses:\n  - {{name: rs485, kind: rtu, port: {directory / 'tty'}, baudrate: 19200, parity: N, poll_interval_s: 2}}\n"
        f"connectors:\n{connectors}\n"
        f"storage: {{path: {directory / 'gw.db'}}}\n"
        "simulator: {speed: 1, seed: 1, wire_delay: true, turnaround: true}\n"
    )
    return path


async def test_failure_11_the_queue_has_no_message_cap_only_a_byte_budget(tmp_path: Path) -> None:
    """ocpp-rpc#69: a persistent queue capped at 100 messages dropped data. 150 sessions queued offline all arrive.

    The outbox is bounded in bytes (StorageSettings.outbox_budget_mb), by thinning samples, never by
    dropping Start/Stop (test_store.py); the 1-week outage queues over 10 000 rows.
    """
    store = await Store.open(tmp_path / "gw.db")
    t0 = CLOCK.wall() - 150 * 600
    for n in range(150):
        tx = Transaction(f"queued-{n}", "TAG-11", 1000 * n, t0 + 600 * n)
        await store.commit([TransactionStarted(1 + n % 4, tx)], CLOCK)
        await store.queue_meter_values(1 + n % 4, tx.key, [sample(1000 * n + 400, t0 + 600 * n + 60)], CLOCK)
        await store.commit([TransactionStopped(1 + n % 4, tx, 1000 * n + 800, "EVDisconnected", t0 + 600 * n + 300)], CLOCK)
    assert await store.pending() == 450
    async with OcppRpcBackend() as backend:
        async with running(Uplink(INFO, BackendSettings(url=backend.url), OcppSettings(), store, CLOCK, statuses)):
            await drained(store, 60)
        assert [c["params"]["meterStart"] for c in backend.calls("StartTransaction")] == [1000 * n for n in range(150)]
        assert len(backend.calls("StopTransaction")) == 150 and len(backend.calls("MeterValues")) == 150
        assert backend.violations == []
    await store.close()


async def test_failure_12_the_uplink_reconnects_and_replays_on_its_own(tmp_path: Path) -> None:
    """mobilityhouse/ocpp#10, #119, #616: the OCPP library has no reconnect and no offline queue; ours does.

    Connections are reset over and over while the outbox drains; every message still arrives once, in order.
    """
    store = await Store.open(tmp_path / "gw.db")
    t0 = CLOCK.wall() - 3600
    tx = Transaction("through-resets", "TAG-12", 0, t0)
    await store.commit([TransactionStarted(3, tx)], CLOCK)
    for n in range(1, 301):
        await store.queue_meter_values(3, tx.key, [sample(n, t0 + 10 * n)], CLOCK)
    await store.commit([TransactionStopped(3, tx, 300, "EVDisconnected", t0 + 3010)], CLOCK)
    async with OcppRpcBackend() as backend, FaultProxy("127.0.0.1", backend.port) as proxy:
        proxy.delay(0.2)
        settings = BackendSettings(url=proxy.url_for(backend.url), reconnect_min_s=0.1, reconnect_max_s=0.3)
        async with running(Uplink(INFO, settings, OcppSettings(meter_values_batch_max=20), store, CLOCK, statuses)):
            for _ in range(4):
                await backend.wait_for_calls("MeterValues", len(backend.calls("MeterValues")) + 1, timeout=20)
                proxy.reset()
                await asyncio.sleep(0.3)
                proxy.restore()
            await drained(store, 60)
        assert proxy.connections_accepted >= 5
        values = []
        seen: set[str] = set()
        for c in backend.calls("MeterValues"):
            if c["messageId"] not in seen:  # a resend of the message in flight at a reset
                seen.add(c["messageId"])
                values += [int(e["sampledValue"][0]["value"]) for e in c["params"]["meterValue"]]
        assert values == list(range(1, 301))
        assert len(backend.calls("StopTransaction")) == 1
        assert backend.violations == []
    await store.close()

