"""The SIGKILL harness: a busy simulated cluster, the strict backend, and the real daemon killed again and again.

Shared by tests/test_kill.py (30 kills in `make test`) and bench/kill_loop.py
(1000). One `charger-gateway simulate` process plays four Heidelberg slaves
(two on one pty RS-485 line, two on Modbus TCP) with EVs sped up so that a
session lasts seconds; npm ocpp-rpc in strict mode (tests/ocpp_rpc_peer.py) is
the backend and records every frame; the daemon (`charger-gateway run`) is
SIGKILLed at seeded random instants and restarted at once. Some kills are
aimed: right after the backend received a BootNotification, a Start- or
StopTransaction, or any transaction message, so that kills land with a
message in flight and not only while the daemon idles. In phases, restarts
find the backend down (connection refused), so sessions also start, stop
and get killed offline, and the queue drains after a reconnect.

After the last kill the daemon drains its outbox; everything is then judged
by tests/kill_judge.py (pure). The workdir keeps the daemon logs (one per
run), the database, the simulator's events, the backend's records and the
runs, for a post-mortem.

Known limitation respected by the scenario: a Heidelberg box has no plug
counter, so an EV leaving and another arriving while no daemon polls the box
look like one session. So EVs stay away 5 s or more (Scenario.idle_s), and a
run that follows a run killed before it polled every slave is not killed
before it has polled every slave itself: no slave goes unpolled for more than
about 3.5 s (one poll period, a short life, a restart up to the RTU line's
second slave). Should it happen anyway, the judge counts it as `merged`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.kill_judge import (
    CONNECTORS,
    IDENTITY,
    TX_ACTIONS,
    StoredSession,
    Verdict,
    call_action,
    down_windows,
    judge,
    landing,
    sim_sessions,
)
from tests.loopback import free_port
from tests.ocpp_rpc_peer import OcppRpcBackend, Record

REPO = Path(__file__).resolve().parents[1]
# What a kill aims at: a point in time, or the arrival of one of these CALLs at the backend.
AIMS: dict[str, frozenset[str]] = {
    "time": frozenset(),
    "boot": frozenset({"BootNotification"}),
    "start/stop": frozenset({"StartTransaction", "StopTransaction"}),
    "tx message": TX_ACTIONS,
}
AIM_WEIGHTS = (35, 15, 25, 25)
_ANSWERING = re.compile(rb"connector (\d+): slave .* answering")


class HarnessError(RuntimeError):
    """The scenario could not be played to its end (a process died, the cluster never settled)."""


@dataclass(frozen=True)
class Scenario:
    """What to play: how many kills, the seed of every random choice, and how busy the cluster is."""

    kills: int = 30
    seed: int = 1
    alive_s: tuple[float, float] = (0.3, 2.0)  # a daemon lives this long (aimed kills: at most the upper bound)
    speed: float = 120.0  # simulated seconds per real second: a session lasts seconds
    idle_s: tuple[float, float] = (600.0, 1200.0)  # simulated: 5 to 10 s, longer than a slave ever goes unpolled
    session_kwh: tuple[float, float] = (0.5, 1.5)
    sample_interval_s: int = 1  # MeterValueSampleInterval: a message is nearly always on its way
    # Each restart finds the backend unreachable (connection refused) with the first probability when
    # it was reachable, and reachable again with the second: about a third of the runs, in phases of
    # 8 runs on average, so sessions also start, stop and get killed offline (field failures 1, 3, 4).
    go_offline_p: float = 0.06
    come_online_p: float = 0.12
    settle_timeout_s: float = 60.0


@dataclass
class Run:
    """One daemon process, from spawn to its kill (or to the final SIGTERM)."""

    number: int
    aim: str
    started: float  # wall
    first_record: int  # index of the first backend record after the spawn
    log: Path
    in_control: dict[int, float] = field(default_factory=dict)  # connector -> wall of its first successful poll, seen in the log
    offline: bool = False  # the backend was unreachable for this run
    killed: float | None = None
    last_record: int | None = None
    _log_offset: int = 0

    def read_log(self, now: float) -> None:
        """Note the connectors whose first poll has appeared in the log since the last look."""
        with contextlib.suppress(FileNotFoundError), self.log.open("rb") as f:
            f.seek(self._log_offset)
            chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # whole lines only: the daemon may be mid-line
            self._log_offset += end
            for match in _ANSWERING.finditer(chunk[:end]):
                self.in_control.setdefault(int(match.group(1)), now)


@dataclass
class Report:
    """The outcome of one scenario, for the test's assertions and the bench's printout."""

    scenario: Scenario
    runs: list[Run]
    verdict: Verdict
    landed: dict[str, int]  # where the kills landed: offline, before connect, at boot, tx in flight, running
    aims: dict[str, int]
    watchdog_trips: int
    final_exit_code: int
    elapsed_s: float
    workdir: Path

    @property
    def problems(self) -> list[str]:
        extra = [] if self.final_exit_code == 0 else [f"the last daemon exited with {self.final_exit_code} on SIGTERM"]
        if self.watchdog_trips:
            extra.append(f"{self.watchdog_trips} watchdog trips: a slave went unpolled for 15 s")
        return self.verdict.problems + extra

    def summary(self) -> str:
        v = self.verdict
        lines = [
            f"kills                      {len(self.runs) - 1}  (aimed at: {_counts(self.aims)})",
            f"kills landed               {_counts(self.landed)}",
            f"sessions completed         {v.sessions_completed}",
            f"sessions at the backend    {v.sessions_at_backend}  ({v.transactions} transactions in all, {v.sessions_in_store} sessions in the store)",
            f"lost                       {v.lost}",
            f"duplicates identical       {v.duplicates_identical}  ({_counts(v.duplicates_by_action) or 'none'})",
            f"duplicates different       {v.duplicates_different}",
            f"started while daemon down  {v.started_while_down}",
            f"merged (no plug counter)   {v.merged}",
            f"connections                {v.connections}",
            f"elapsed                    {self.elapsed_s:.1f} s",
        ]
        lines += [f"PROBLEM: {p}" for p in self.problems[:50]]
        return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counts.items() if n)


def stored_sessions(db: Path) -> list[StoredSession]:
    """The daemon's sessions table (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        rows = conn.execute("SELECT key, connector_id, meter_start, meter_stop, transaction_id FROM sessions ORDER BY started").fetchall()
    return [StoredSession(*row) for row in rows]


def write_config(workdir: Path, backend_url: str, scenario: Scenario) -> Path:
    """The busy cluster: 2 RTU slaves on one pty line, 2 Modbus TCP slaves, fast EVs, 1 s samples."""
    config = {
        "charge_point": {"identity": IDENTITY, "vendor": "OpenGateway", "model": "Cluster", "serial_number": "KILL-1"},
        "backend": {"url": backend_url, "insecure_lab_mode": True},
        "buses": [
            {"name": "rs485-1", "kind": "rtu", "port": str(workdir / "ttyRS485-1"), "baudrate": 19200, "parity": "N", "stopbits": 1, "poll_interval_s": 1.0},
            {"name": "lan", "kind": "tcp", "poll_interval_s": 1.0},
        ],
        "connectors": [
            {"id": 1, "bus": "rs485-1", "unit": 1, "profile": "heidelberg-energy-control"},
            {"id": 2, "bus": "rs485-1", "unit": 2, "profile": "heidelberg-energy-control"},
            {"id": 3, "bus": "lan", "host": "127.0.0.1", "port": free_port(), "unit": 1, "profile": "heidelberg-energy-control"},
            {"id": 4, "bus": "lan", "host": "127.0.0.1", "port": free_port(), "unit": 1, "profile": "heidelberg-energy-control"},
        ],
        "storage": {"path": str(workdir / "gateway.db")},
        "control": {"socket": str(workdir / "control.sock")},  # each run's, never /run's
        "authorization": {"free_charging_id_tag": "KILL-FREE"},
        "ocpp": {"meter_value_sample_interval_s": scenario.sample_interval_s},
        "simulator": {
            "speed": scenario.speed, "seed": scenario.seed, "wire_delay": True, "turnaround": True,
            "idle_s": list(scenario.idle_s), "session_kwh": list(scenario.session_kwh),
        },
    }
    path = workdir / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def spawn_gateway(
    *args: str, log: Path, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """`python -m gateway ARGS` as a real process, its output to `log`, with `env` added to the environment."""
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *args, cwd=REPO,
            stdout=out, stderr=asyncio.subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        )


async def terminate(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, then SIGKILL after 15 s; the exit code."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1


def read_events(path: Path) -> list[dict]:
    """The simulator's events so far; a line still being written is left for later."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def outbox_count(db: Path) -> int:
    """Rows still queued in the daemon's store (read-only: the daemon keeps writing)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class _Cluster:
    """The simulator, the backend and the current daemon of one scenario."""

    def __init__(self, workdir: Path, scenario: Scenario, backend: OcppRpcBackend, progress: Callable[[str], None]) -> None:
        self.workdir = workdir
        self.scenario = scenario
        self.backend = backend
        self.progress = progress
        self.rng = random.Random(f"kill-loop/{scenario.seed}")
        self.config = write_config(workdir, backend.url, scenario)
        # A port bound but not listening: connecting to it is refused, as to a backend that is down.
        self._dead = socket.socket()
        self._dead.bind(("127.0.0.1", 0))
        dead_url = f"ws://127.0.0.1:{self._dead.getsockname()[1]}/ocpp"
        self.offline_config = workdir / "cluster-offline.yaml"
        self.offline_config.write_text(self.config.read_text().replace(backend.url, dead_url))
        self.offline = False
        self.events_file = workdir / "sim-events.jsonl"
        self.runs: list[Run] = []
        self.daemon: asyncio.subprocess.Process | None = None

    async def spawn_daemon(self, last: bool = False) -> Run:
        """Start the next daemon; unless it is the last, draw whether the backend is reachable and what its kill aims at."""
        flip = self.rng.random() < (self.scenario.come_online_p if self.offline else self.scenario.go_offline_p)
        self.offline = (self.offline != flip) and not last
        aim = "none" if last else "time" if self.offline else self.rng.choices(list(AIMS), AIM_WEIGHTS)[0]
        run = Run(len(self.runs), aim, time.time(), len(self.backend.records), self.workdir / "logs" / f"daemon-{len(self.runs):04d}.log", offline=self.offline)
        self.daemon = await spawn_gateway("run", "-c", str(self.offline_config if self.offline else self.config), log=run.log)
        self.runs.append(run)
        return run

    def close(self) -> None:
        self._dead.close()

    def check_alive(self, sim: asyncio.subprocess.Process) -> None:
        if sim.returncode is not None:
            raise HarnessError(f"the simulator exited with {sim.returncode}:\n{_tail(self.workdir / 'sim.log')}")
        if self.daemon is not None and self.daemon.returncode is not None:
            run = self.runs[-1]
            raise HarnessError(f"daemon run {run.number} exited by itself with {self.daemon.returncode}:\n{_tail(run.log)}")

    async def live(self, sim: asyncio.subprocess.Process, until: Callable[[], bool], timeout: float, what: str) -> None:
        """Watch the current daemon's log until `until()` holds; HarnessError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not until():
            self.check_alive(sim)
            self.runs[-1].read_log(time.time())
            if time.monotonic() > deadline:
                raise HarnessError(f"{what} within {timeout:.0f} s\n{_tail(self.runs[-1].log)}")
            await asyncio.sleep(0.02)

    async def kill_at_aim(self, sim: asyncio.subprocess.Process) -> None:
        """Let the current daemon live, then SIGKILL it: at a random time, or as soon as its aimed CALL arrives."""
        run, proc = self.runs[-1], self.daemon
        assert proc is not None
        low, high = self.scenario.alive_s
        if len(self.runs) > 1 and len(self.runs[-2].in_control) < len(CONNECTORS):
            # Its predecessor died before it polled every slave: this one polls them all before its kill
            # may come, so that no slave goes unpolled for longer than an EV stays away.
            await self.in_control(sim)
        if run.aim == "time":
            deadline = time.monotonic() + self.rng.uniform(low, high)
            await self.live(sim, lambda: time.monotonic() >= deadline, high + 1, "a timed kill")
            proc.send_signal(signal.SIGKILL)
        else:
            actions, position, fresh = AIMS[run.aim], itertools.count(), len(self.backend.records)

            def aimed(r: Record) -> bool:
                # wait_for checks every record exactly once, in order: the counter is the record's index.
                return next(position) >= fresh and r["type"] == "frame" and r["direction"] == "in" and call_action(r) in actions

            # Two tasks: the aimed kill must follow the frame at once, not at the log watcher's next look.
            watcher = asyncio.create_task(self.backend.wait_for(aimed, high))
            looker = asyncio.create_task(self.live(sim, lambda: False, high + 5, "an aimed kill"))
            try:
                await asyncio.wait({watcher, looker}, return_when=asyncio.FIRST_COMPLETED)
                if looker.done():
                    looker.result()  # the daemon or the simulator died: raise that
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGKILL)
                for task in (watcher, looker):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                        await task
        if await proc.wait() != -signal.SIGKILL:  # it had ended before the kill
            raise HarnessError(f"daemon run {run.number} exited by itself with {proc.returncode}:\n{_tail(run.log)}")
        run.killed = time.time()
        run.read_log(run.killed)
        run.last_record = len(self.backend.records)

    async def in_control(self, sim: asyncio.subprocess.Process, timeout: float = 30.0) -> None:
        run = self.runs[-1]
        await self.live(sim, lambda: len(run.in_control) == len(CONNECTORS), timeout, f"daemon run {run.number} did not poll every slave")

    def stopped_at_backend(self) -> set[tuple[int, int]]:
        """(connectorId, meterStop) of every StopTransaction the backend got."""
        results = {r["messageId"]: r["result"] for r in self.backend.of_type("result", IDENTITY) if r["method"] == "StartTransaction"}
        connector = {results[s["messageId"]]["transactionId"]: s["params"]["connectorId"] for s in self.backend.calls("StartTransaction", IDENTITY) if s["messageId"] in results}
        return {(connector.get(s["params"]["transactionId"], 0), s["params"]["meterStop"]) for s in self.backend.calls("StopTransaction", IDENTITY)}


async def run_scenario(workdir: Path, scenario: Scenario, progress: Callable[[str], None] = lambda text: None) -> Report:
    """Play `scenario` in `workdir` (which keeps the logs, the database and the events) and judge it."""
    began = time.monotonic()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    async with OcppRpcBackend() as backend:
        cluster = _Cluster(workdir, scenario, backend, progress)
        sim_started = time.time()
        sim = await spawn_gateway("simulate", "-c", str(cluster.config), "--events", str(cluster.events_file), log=workdir / "sim.log")
        final_rc = -1
        try:
            # The daemon starts as soon as the simulated line exists: it must pause every box before the first EV.
            async with asyncio.timeout(20):
                while not (workdir / "ttyRS485-1").exists():
                    cluster.check_alive(sim)
                    await asyncio.sleep(0.02)
            await cluster.spawn_daemon(last=scenario.kills == 0)
            await cluster.in_control(sim)
            for k in range(scenario.kills):
                await cluster.kill_at_aim(sim)
                await cluster.spawn_daemon(last=k + 1 == scenario.kills)
                if (k + 1) % 50 == 0:
                    progress(f"{k + 1} kills, {len(cluster.stopped_at_backend())} sessions stopped at the backend, {time.monotonic() - began:.0f} s")
            await cluster.in_control(sim)
            judged_until = time.time()
            judged = [s for ss in sim_sessions(read_events(cluster.events_file)).values() for s in ss if s.unplug_wall is not None and s.unplug_wall <= judged_until]
            wanted = {(s.connector, s.unplug_wh) for s in judged}
            settle_by = time.monotonic() + scenario.settle_timeout_s
            while not (drained := wanted <= cluster.stopped_at_backend() and outbox_count(workdir / "gateway.db") == 0):
                if time.monotonic() > settle_by:
                    break
                await cluster.live(sim, lambda: True, 1, "")
                await asyncio.sleep(0.1)
            cluster.runs[-1].last_record = len(backend.records)
        finally:
            if cluster.daemon is not None:
                final_rc = await terminate(cluster.daemon)
            await terminate(sim)
            cluster.close()
    events = read_events(cluster.events_file)
    records = list(backend.records)
    with (workdir / "backend-records.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    with (workdir / "runs.jsonl").open("w") as f:
        f.writelines(json.dumps({"run": r.number, "aim": r.aim, "offline": r.offline, "started": r.started, "in_control": r.in_control, "killed": r.killed}) + "\n" for r in cluster.runs)
    verdict = judge(events, records, down_windows(cluster.runs, sim_started), judged_until, stored_sessions(workdir / "gateway.db"))
    if not drained:
        verdict.problems.append(f"the outbox still held {outbox_count(workdir / 'gateway.db')} messages {scenario.settle_timeout_s:.0f} s after the last kill")
    verdict.problems += [f"strict-schema violation: {json.dumps(v)[:400]}" for v in backend.violations]
    verdict.problems += [f"not OCPP-J: {json.dumps(b)[:400]}" for b in backend.bad_messages]
    aims: dict[str, int] = {}
    for run in cluster.runs[:-1]:
        aim = "time, offline" if run.offline else run.aim
        aims[aim] = aims.get(aim, 0) + 1
    return Report(
        scenario, cluster.runs, verdict, landing(cluster.runs, records), aims,
        sum(e["event"] == "watchdog" for e in events), final_rc, time.monotonic() - began, workdir,
    )
