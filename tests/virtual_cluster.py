"""A cluster in virtual time, for weeks of operation in seconds: the 1-week outage.

What runs is the daemon's own code - `Daemon` with its pollers, session
machines, `Store` on a real SQLite file and `Uplink` on a real websocket -
fed by the simulator's slaves (the same `SimSlave`/`EvModel` the installer's
`charger-gateway simulate` plays). The clock is a `HandClock` moved in steps;
at every step each poller polls its slave once.

The one part left out is the wire: a `DirectLine` builds the same request PDUs
as the real line (`modbus_transport.read_request`/`write_request`), has the
simulator's dispatch answer them and checks the answer with the real line's
`check_reply`, without framing, bus queue or wire time. Those run in real time
in test_modbus_line, test_end_to_end and the kill test.

The uplink runs in real time alongside, through a `FaultProxy` that can
blackhole it, to the strict independent backend (npm ocpp-rpc).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pymodbus.pdu import ModbusPDU

from gateway.config import load_config
from gateway.daemon import Daemon
from gateway.devprofile import Table
from gateway.errors import DeviceTimeout
from gateway.modbus_line import Priority
from gateway.modbus_transport import check_reply, read_request, write_coil_request, write_request
from gateway.poller import MeterSink
from gateway.settings import Config
from gateway.simulator.dispatch import respond
from gateway.simulator.ev import EvModel, EvTiming
from gateway.simulator.slave import SimSlave, SlaveEvent, TimeScale
from gateway.store import Store
from tests.clocks import HandClock
from tests.fault_proxy import FaultProxy
from tests.ocpp_rpc_peer import OcppRpcBackend, Record

IDENTITY = "CP-WEEK-01"
UNITS = range(0, 248)
TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")
DAY_S = 86_400.0


class DirectLine:
    """Stands where a ModbusLine stands for one slave: same PDUs and reply checks, no wire, virtual time."""

    def __init__(self, slave: SimSlave, clock: HandClock) -> None:
        self.slave = slave
        self.clock = clock

    async def read(self, unit: int, table: Table, address: int, count: int, *, timeout_s: float, gap_s: float = 0.0,
                   priority: Priority = Priority.POLL, repeat: int = 1) -> list[int]:
        return self._serve(read_request(unit, table, address, count, UNITS), repeat)

    async def write(self, unit: int, address: int, values: Sequence[int], *, multiple: bool, timeout_s: float,
                    gap_s: float = 0.0, priority: Priority = Priority.COMMAND, repeat: int = 1) -> None:
        self._serve(write_request(unit, address, values, multiple, UNITS), repeat)

    async def write_coil(self, unit: int, address: int, on: bool, *, timeout_s: float, gap_s: float = 0.0,
                         priority: Priority = Priority.COMMAND, repeat: int = 1) -> None:
        self._serve(write_coil_request(unit, address, on, UNITS), repeat)

    def _serve(self, request: ModbusPDU, repeat: int) -> list[int]:
        """As ModbusLine does: the request `repeat` times, and the last answer counts."""
        for _ in range(repeat - 1):
            respond({self.slave.unit: self.slave}, request, self.clock.monotonic(), broadcast=False)
        reply = respond({self.slave.unit: self.slave}, request, self.clock.monotonic(), broadcast=False)
        if reply is None:
            raise DeviceTimeout(f"unit {self.slave.unit} did not answer")
        return check_reply(request, reply)


@dataclass(frozen=True)
class WeekScenario:
    connectors: int = 4
    outage_days: float = 7.0
    online_before_s: float = 8 * 3600.0  # charging with the uplink up, before the dead zone
    step_s: float = 12.0  # one poll round per step; the Heidelberg watchdog strikes after 15 s of silence
    sample_interval_s: int = 60
    idle_s: tuple[float, float] = (1800.0, 6 * 3600.0)  # each outlet sees about 4 to 6 sessions a day
    session_kwh: tuple[float, float] = (5.0, 40.0)
    seed: int = 7
    budget_mb: float = 128.0


@dataclass
class WeekReport:
    scenario: WeekScenario
    outbox_rows: int = 0  # queued at the end of the outage
    outbox_bytes: int = 0  # payload bytes of those rows
    db_bytes: int = 0  # the SQLite file and its WAL
    by_action: Counter[str] = field(default_factory=Counter)
    samples_queued: int = 0
    sessions_simulated: int = 0  # plug-ins the simulator played
    virtual_s: float = 0.0
    real_run_s: float = 0.0  # wall time to play the outage
    sent_live: int = 0  # transaction messages delivered before the dead zone
    drain_s: float = 0.0  # from the end of the dead zone until the outbox was empty
    messages_after: int = 0  # transaction messages the drain took
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = self.scenario
        return "\n".join([
            f"week outage: {s.connectors} connectors, {s.outage_days:g} days blackholed, sampling every {s.sample_interval_s} s",
            f"  played {self.virtual_s / DAY_S:.2f} virtual days ({self.real_run_s:.1f} s for the outage); {self.sessions_simulated} plug-ins,"
            f" {self.samples_queued} samples queued, {self.sent_live} transaction messages delivered live before the outage",
            f"  outbox at the end of the outage: {self.outbox_rows} rows ({', '.join(f'{a} {n}' for a, n in sorted(self.by_action.items()))}),"
            f" {self.outbox_bytes / 1e6:.2f} MB of payload, database {self.db_bytes / 1e6:.2f} MB (budget {s.budget_mb:g} MB)",
            f"  drain after the outage: {self.drain_s:.1f} s, {self.messages_after} transaction messages",
            f"  problems: {len(self.problems)}" + "".join(f"\n    - {p}" for p in self.problems[:20]),
        ])


def write_config(workdir: Path, backend_url: str, scenario: WeekScenario) -> Path:
    """N Heidelberg boxes on the LAN (the TCP endpoints are never opened: DirectLine stands in)."""
    config = {
        "charge_point": {"identity": IDENTITY, "vendor": "OpenGateway", "model": "Cluster", "serial_number": "WEEK-1"},
        "backend": {"url": backend_url, "insecure_lab_mode": True, "response_timeout_s": 2, "reconnect_min_s": 0.2, "reconnect_max_s": 2},
        "buses": [{"name": "lan", "kind": "tcp"}],  # polled by VirtualCluster.step, not by this period
        "connectors": [
            {"id": i, "bus": "lan", "host": "127.0.0.1", "port": 20000 + i, "unit": 1, "profile": "heidelberg-energy-control"}
            for i in range(1, scenario.connectors + 1)
        ],
        "storage": {"path": str(workdir / "gateway.db"), "outbox_budget_mb": scenario.budget_mb},
        "authorization": {"free_charging_id_tag": "WEEK-FREE"},
        "ocpp": {"meter_value_sample_interval_s": scenario.sample_interval_s},
    }
    path = workdir / "week.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class SimulatedSlaves:
    """The simulator's slaves of a config, one per connector, on the virtual clock; they outlive daemon restarts."""

    def __init__(self, config: Config, clock: HandClock, scenario: WeekScenario) -> None:
        self.events: list[SlaveEvent] = []
        self.by_connector: dict[int, SimSlave] = {}
        scale = TimeScale(clock.monotonic(), 1.0)
        timing = EvTiming(idle_s=scenario.idle_s, session_kwh=scenario.session_kwh)
        for c in config.connectors:
            profile = config.profile_of(c)
            rng = random.Random(f"week/{scenario.seed}/{c.id}")
            ev = EvModel(rng, timing=timing, outlet_phases=profile.phases, start_energy_wh=rng.uniform(0, 5e6), now=0.0)
            self.by_connector[c.id] = SimSlave(
                connector=c.id, unit=c.unit, profile=profile, ev=ev, clock=scale, now=clock.monotonic(), emit=self.events.append
            )


class VirtualCluster:
    """A daemon and the simulated slaves, in lockstep on one HandClock."""

    def __init__(self, daemon: Daemon, clock: HandClock, slaves: SimulatedSlaves) -> None:
        self.daemon = daemon
        self.clock = clock
        self.slaves = slaves
        self.samples = 0
        for poller in daemon.pollers:
            poller.line = DirectLine(slaves.by_connector[poller.settings.id], clock)  # type: ignore[assignment]
            poller._on_meter_values = self._counting(poller._on_meter_values)

    def _counting(self, sink: MeterSink) -> MeterSink:
        async def counted(connector_id: int, key: str, entries: Sequence[dict]) -> None:
            self.samples += len(entries)
            await sink(connector_id, key, entries)
        return counted

    async def play(self, seconds: float, step_s: float, pace_s: float = 0.0) -> None:
        """Move the clock `seconds` forward in steps, every poller polling once per step, `pace_s` real time apart."""
        for _ in range(round(seconds / step_s)):
            await self.step(step_s)
            await asyncio.sleep(pace_s)  # 0: just let the uplink task run between rounds

    async def step(self, step_s: float) -> None:
        self.clock.advance(step_s)
        for poller in self.daemon.pollers:
            await poller.poll_once()

    async def until_drained(self, store: Store, step_s: float, timeout_s: float) -> None:
        """Keep the cluster running (one step per 50 ms of real time) until the outbox is empty."""
        async with asyncio.timeout(timeout_s):
            while await store.pending():
                await self.step(step_s)
                await asyncio.sleep(0.05)


async def run_week(workdir: Path, scenario: WeekScenario, drain_timeout_s: float = 300.0) -> WeekReport:
    """Charge with the uplink up, blackhole it for the outage, restore it, drain; then judge what arrived."""
    report = WeekReport(scenario)
    clock = HandClock(system=time.time() - scenario.outage_days * DAY_S - scenario.online_before_s - 3600, mono=1000.0)
    async with OcppRpcBackend() as backend, FaultProxy("127.0.0.1", backend.port) as proxy:
        config = load_config(write_config(workdir, proxy.url_for(backend.url), scenario))
        store = await Store.open(config.storage.path, clock, config.storage.outbox_budget_mb)
        try:
            daemon = Daemon(config, store, clock)
            await daemon.recover()
            cluster = VirtualCluster(daemon, clock, SimulatedSlaves(config, clock, scenario))
            uplink = asyncio.create_task(daemon.uplink.run())
            try:
                await asyncio.wait_for(daemon.uplink.connected.wait(), 20)
                await cluster.play(scenario.online_before_s, scenario.step_s, pace_s=0.002)  # live: delivered as it happens
                report.sent_live = len([c for c in backend.calls(identity=IDENTITY) if c["method"] in TX_ACTIONS])
                proxy.blackhole()
                started = time.monotonic()
                await cluster.play(scenario.outage_days * DAY_S, scenario.step_s)
                report.real_run_s = time.monotonic() - started
                report.virtual_s = scenario.online_before_s + scenario.outage_days * DAY_S
                report.outbox_rows = await store.pending()
                report.outbox_bytes = await store.outbox_bytes()
                report.by_action = await _outbox_actions(store)
                report.db_bytes = sum(p.stat().st_size for p in workdir.glob("gateway.db*"))
                sent_before = len([c for c in backend.calls(identity=IDENTITY) if c["method"] in TX_ACTIONS])
                proxy.restore()
                started = time.monotonic()
                await cluster.until_drained(store, scenario.step_s, drain_timeout_s)
                report.drain_s = time.monotonic() - started
                report.messages_after = len([c for c in backend.calls(identity=IDENTITY) if c["method"] in TX_ACTIONS]) - sent_before
            finally:
                uplink.cancel()
                await asyncio.gather(uplink, return_exceptions=True)
            report.samples_queued = cluster.samples
            events = cluster.slaves.events
            report.sessions_simulated = sum(1 for e in events if e.kind == "plug")
            report.problems = judge(backend.of_type("call"), backend.of_type("result"), events, cluster.samples)
            report.problems += [f"schema violation: {v}" for v in backend.violations]
        finally:
            await store.close()
    return report


async def _outbox_actions(store: Store) -> Counter[str]:
    async with store._db.execute("SELECT action, count(*) FROM outbox GROUP BY action") as cursor:
        return Counter({action: n for action, n in await cursor.fetchall()})


@dataclass
class _Arrived:
    """One transaction as the backend received it."""

    start: int  # meterStart
    stop: int | None  # meterStop, None while no StopTransaction came
    stamps: list[str]  # every timestamp of its messages, in arrival order


def judge(calls: list[Record], results: list[Record], events: list[SlaveEvent], samples: int) -> list[str]:
    """What the backend got against what the simulator played: every session once, in order, every sample."""
    problems: list[str] = []
    calls = [c for c in calls if c.get("identity") == IDENTITY and c["method"] in TX_ACTIONS]
    by_id: dict[str, Record] = {}
    for c in calls:  # an in-flight message resent after the dead zone: identical, counted once
        if c["messageId"] in by_id:
            if by_id[c["messageId"]]["params"] != c["params"]:
                problems.append(f"message {c['messageId']} resent with different content")
            continue
        by_id[c["messageId"]] = c
    tx_of = {r["messageId"]: r["result"]["transactionId"] for r in results if "transactionId" in r.get("result", {})}
    sessions: dict[int, _Arrived] = {}  # by transactionId
    per_connector: dict[int, list[_Arrived]] = defaultdict(list)
    entries = 0
    last_stamp = ""
    for c in by_id.values():
        p = c["params"]
        if c["method"] in ("StartTransaction", "StopTransaction"):
            if p["timestamp"] < last_stamp:
                problems.append(f"{c['method']} at {p['timestamp']} sent after one at {last_stamp}")
            last_stamp = p["timestamp"]
        if c["method"] == "StartTransaction":
            tx = tx_of.get(c["messageId"])
            if tx is None:
                problems.append(f"StartTransaction {c['messageId']} never answered")
                continue
            sessions[tx] = _Arrived(p["meterStart"], None, [p["timestamp"]])
            per_connector[p["connectorId"]].append(sessions[tx])
            continue
        arrived = sessions.get(p["transactionId"])
        if arrived is None:
            problems.append(f"{c['method']} for unknown transaction {p['transactionId']}")
            continue
        if arrived.stop is not None:
            problems.append(f"{c['method']} for transaction {p['transactionId']} after its StopTransaction")
        if c["method"] == "MeterValues":
            stamps = [e["timestamp"] for e in p["meterValue"]]
            entries += len(stamps)
        else:
            stamps = [p["timestamp"]]
            arrived.stop = p["meterStop"]
        if stamps != sorted(stamps) or stamps[0] < arrived.stamps[-1]:
            problems.append(f"transaction {p['transactionId']}: {c['method']} out of time order")
        arrived.stamps += stamps
    if entries != samples:
        problems.append(f"{samples} samples queued, {entries} meterValue entries arrived")
    # Every plug-in -> unplug the simulator played is one session at the backend, with the meter at those instants.
    played: dict[int, list[tuple[int | None, int | None]]] = defaultdict(list)
    for e in events:
        if e.kind == "plug":
            played[e.connector].append((e.energy_wh, None))
        elif e.kind == "unplug" and played[e.connector]:
            played[e.connector][-1] = (played[e.connector][-1][0], e.energy_wh)
    for connector, plays in sorted(played.items()):
        got = per_connector.get(connector, [])
        if len(got) != len(plays):
            problems.append(f"connector {connector}: {len(plays)} plug-ins played, {len(got)} sessions at the backend")
        for n, ((plug, unplug), arrived) in enumerate(zip(plays, got, strict=False)):
            if (plug, unplug) != (arrived.start, arrived.stop):
                problems.append(f"connector {connector} session {n}: played {plug}..{unplug} Wh, backend got {arrived.start}..{arrived.stop}")
    return problems

