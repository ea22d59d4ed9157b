"""The SIGKILL harness: a busy simulated cluster, the strict backend, and the real daemon killed again and again.

Shared by tests/test_kill.py (30 kills in `make test`) and bench/kill_loop.py
(1000). One `charger-gateway simulate` process plays four Heidelberg slaves
(two on one pty RS-485 line, two on Modbus TCP) with EVs sped up so that a
session lasts seconds; npm ocpp-rpc in strict mode (tests/ocpp_rpc_peer.py) is
the backend and records every frame; the daemon (`charger-gateway run`) is
SIGKILLed at seeded random instants and restarted at once. Some kills are
aimed: right after the backend received a BootNotification, a Start- or
StopTransaction, or any transaction message, so that kills land with a
message in flight and not only while the daemon idles.

`judge()` is pure: the simulator's events, the backend's records and the
daemon's down windows in, a `Verdict` out. It checks the promise of the
store ("nothing lost"): every session the simulator completed reached the
backend exactly once with the right meter values; a message sent twice was
the one in flight at a kill, byte-identical (same messageId, same payload),
so the backend can spot it; per transaction Start < MeterValues < Stop;
every connection began with BootNotification; no schema violation.

Known limitation respected by the scenario: a Heidelberg box has no plug
counter, so an EV leaving and another arriving while no daemon polls the box
look like one session. So EVs stay away 5 s or more (Scenario.idle_s), and a
run that follows a run killed before it polled every slave is not killed
before it has polled every slave itself: no slave goes unpolled for more than
about 3.5 s (one poll period, a short life, a restart up to the RTU line's
second slave). Should it happen anyway, judge() counts it as `merged`.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.ocpp_rpc_peer import OcppRpcBackend, Record

REPO = Path(__file__).resolve().parents[1]
IDENTITY = "CP-KILL-01"
CONNECTORS = (1, 2, 3, 4)
TX_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "MeterValues"})
# The first poll of a run logs "answering" before it commits and writes the pause current:
# control is counted from one poll period later.
IN_CONTROL_MARGIN_S = 1.0
# A killed daemon last polled a slave up to one poll period (1 s) and one line cycle before the kill.
BLIND_BEFORE_KILL_S = 1.5
# A simulator event is stamped with the wall time it is reported at, up to one tick (0.1 s) late.
EVENT_SLACK_S = 0.2
# What a kill aims at: a point in time, or the arrival of one of these CALLs at the backend.
AIMS: dict[str, frozenset[str]] = {
    "time": frozenset(),
    "boot": frozenset({"BootNotification"}),
    "start/stop": frozenset({"StartTransaction", "StopTransaction"}),
    "tx message": TX_ACTIONS,
}
AIM_WEIGHTS = (35, 15, 25, 25)
_ANSWERING = re.compile(rb"connector (\d+): slave .* answering")

Window = tuple[float, float]


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
class Verdict:
    """What judge() found. `problems` empty means every invariant held."""

    sessions_completed: int = 0  # simulated plug..unplug sessions that were judged
    sessions_at_backend: int = 0  # of those, found at the backend exactly once
    sessions_in_store: int = 0  # rows of the daemon's sessions table, each checked against the backend
    lost: int = 0
    started_while_down: int = 0  # plug-in while the daemon was down: meterStart is the register at authorization
    merged: int = 0  # unplug and re-plug inside one downtime (the known limitation)
    transactions: int = 0  # distinct StartTransaction messages at the backend
    duplicates_identical: int = 0  # extra copies of a CALL, byte for byte the same
    duplicates_different: int = 0  # extra copies whose frame differs: must never happen
    duplicates_by_action: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Report:
    """The outcome of one scenario, for the test's assertions and the bench's printout."""

    scenario: Scenario
    runs: list[Run]
    verdict: Verdict
    landed: dict[str, int]  # where the kills landed: before connect, at boot, tx in flight, running
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


# --- judging: pure --------------------------------------------------------------------------


@dataclass(frozen=True)
class SimSession:
    connector: int
    plug_wall: float
    plug_wh: int
    unplug_wall: float | None = None
    unplug_wh: int | None = None


@dataclass(frozen=True)
class StoredSession:
    """A row of the daemon's sessions table."""

    key: str
    connector: int
    meter_start: int
    meter_stop: int | None
    transaction_id: int | None


def stored_sessions(db: Path) -> list[StoredSession]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        rows = conn.execute("SELECT key, connector_id, meter_start, meter_stop, transaction_id FROM sessions ORDER BY started").fetchall()
    return [StoredSession(*row) for row in rows]


@dataclass
class _Tx:
    """One transaction at the backend, keyed by the messageId of its StartTransaction."""

    start_id: str
    connector: int
    meter_start: int
    tx_ids: set[int] = field(default_factory=set)
    stop_id: str | None = None
    meter_stop: int | None = None


def sim_sessions(events: Sequence[dict]) -> dict[int, list[SimSession]]:
    """Each connector's sessions in order, from the simulator's plug and unplug events."""
    out: dict[int, list[SimSession]] = {}
    for e in events:
        sessions = out.setdefault(e["connector"], [])
        if e["event"] == "plug":
            sessions.append(SimSession(e["connector"], e["wall"], e["energy_wh"]))
        elif e["event"] == "unplug" and sessions and sessions[-1].unplug_wall is None:
            s = sessions[-1]
            sessions[-1] = SimSession(s.connector, s.plug_wall, s.plug_wh, e["wall"], e["energy_wh"])
    return out


def down_windows(runs: Sequence[Run], since: float) -> dict[int, list[Window]]:
    """Per connector, when no daemon watched it: from its last poll before a kill (or `since`) to a later run's first poll."""
    windows: dict[int, list[Window]] = {c: [] for c in CONNECTORS}
    for c in CONNECTORS:
        down: float | None = since
        for run in runs:
            if down is not None and c in run.in_control:
                windows[c].append((down, run.in_control[c] + IN_CONTROL_MARGIN_S))
                down = None
            if run.killed is not None and down is None:
                down = run.killed - BLIND_BEFORE_KILL_S
        if down is not None:
            windows[c].append((down, float("inf")))
    return windows


def _inside(t: float, windows: Sequence[Window]) -> Window | None:
    return next((w for w in windows if w[0] - EVENT_SLACK_S <= t <= w[1]), None)


def _transactions(records: Sequence[dict], verdict: Verdict) -> dict[int, list[_Tx]]:
    """Backend records -> each connector's transactions, counting duplicates and order faults on the way."""
    seen: dict[str, tuple[str, int]] = {}  # messageId of a CALL -> (its frame, connection number)
    by_start: dict[str, _Tx] = {}
    by_id: dict[int, _Tx] = {}
    handled: set[str] = set()
    problems = verdict.problems
    connection, calls_here, tx_here = 0, 0, 0
    for r in records:
        kind = r["type"]
        if r.get("identity") not in (None, IDENTITY):
            continue
        if kind == "connect":
            connection, calls_here, tx_here = connection + 1, 0, 0
        elif kind == "frame" and r["direction"] == "in":
            frame = json.loads(r["message"])
            if not (isinstance(frame, list) and frame and frame[0] == 2):
                continue
            _, message_id, action = frame[:3]
            if calls_here == 0 and action != "BootNotification":
                problems.append(f"connection {connection} began with {action}, not BootNotification")
            calls_here += 1
            if message_id in seen:
                first, where = seen[message_id]
                if r["message"] == first:
                    verdict.duplicates_identical += 1
                else:
                    verdict.duplicates_different += 1
                    problems.append(f"{action} {message_id} sent again with other content:\n  {first}\n  {r['message']}")
                verdict.duplicates_by_action[action] = verdict.duplicates_by_action.get(action, 0) + 1
                if where == connection or (action in TX_ACTIONS and tx_here > 0):
                    problems.append(f"{action} {message_id} resent on connection {connection} but it was not the message in flight at a restart")
            else:
                seen[message_id] = (r["message"], connection)
            tx_here += action in TX_ACTIONS
        elif kind == "call" and r["messageId"] not in handled:
            handled.add(r["messageId"])
            _follow_call(r, by_start, by_id, problems)
        elif kind == "result" and r["method"] == "StartTransaction" and r["messageId"] in by_start:
            tx = by_start[r["messageId"]]
            tx.tx_ids.add(int(r["result"]["transactionId"]))
            by_id[int(r["result"]["transactionId"])] = tx
    verdict.connections = connection
    verdict.transactions = len(by_start)
    out: dict[int, list[_Tx]] = {}
    for tx in by_start.values():  # insertion order: order of arrival
        out.setdefault(tx.connector, []).append(tx)
    return out


def _follow_call(r: dict, by_start: dict[str, _Tx], by_id: dict[int, _Tx], problems: list[str]) -> None:
    """The first copy of one transaction CALL: open, feed or close its transaction, in order."""
    params, method = r["params"], r["method"]
    if method == "StartTransaction":
        by_start[r["messageId"]] = _Tx(r["messageId"], params["connectorId"], params["meterStart"])
        return
    if method not in ("MeterValues", "StopTransaction") or (method == "MeterValues" and "transactionId" not in params):
        return
    tx = by_id.get(params["transactionId"])
    if tx is None:
        problems.append(f"{method} {r['messageId']} names transactionId {params['transactionId']}, which no StartTransaction got")
        return
    if tx.stop_id is not None:
        problems.append(f"{method} {r['messageId']} for transaction {params['transactionId']} after its StopTransaction {tx.stop_id}")
        return
    if method == "MeterValues":
        if params["connectorId"] != tx.connector:
            problems.append(f"MeterValues {r['messageId']}: connector {params['connectorId']}, its transaction is on {tx.connector}")
    else:
        tx.stop_id, tx.meter_stop = r["messageId"], params["meterStop"]


def judge(
    events: Sequence[dict], records: Sequence[dict], windows: dict[int, list[Window]], judged_until: float, stored: Sequence[StoredSession]
) -> Verdict:
    """Check every invariant; sessions that ended by `judged_until` (wall) must be complete at the backend.

    Sessions still running, or ended later, may be anywhere on their way, but
    whatever of them reached the backend must be right too. `stored` is the
    daemon's sessions table after the outbox drained: every committed start
    and stop must be at the backend, and nothing else.
    """
    verdict = Verdict()
    backend = _transactions(records, verdict)
    _check_store(stored, backend, verdict)
    sessions = sim_sessions(events)
    for c in sorted(set(sessions) | set(backend)):
        _judge_connector(sessions.get(c, []), backend.get(c, []), windows.get(c, []), judged_until, verdict)
    return verdict


def _judge_connector(mine: list[SimSession], txs: list[_Tx], windows: list[Window], judged_until: float, verdict: Verdict) -> None:
    """Pair one connector's simulated sessions with its transactions at the backend, by the meter at unplug."""
    by_stop = {tx.meter_stop: tx for tx in txs if tx.meter_stop is not None}
    matched: set[str] = set()
    carried: SimSession | None = None  # the first of sessions merged into one (see `merged`)
    for k, s in enumerate(mine):
        if s.unplug_wall is None or s.unplug_wh is None:
            continue
        tx = by_stop.get(s.unplug_wh)
        judged = s.unplug_wall <= judged_until
        verdict.sessions_completed += judged
        first = carried or s
        if tx is None:
            nxt = mine[k + 1] if k + 1 < len(mine) else None
            window = _inside(s.unplug_wall, windows)
            if nxt is not None and window is not None and _inside(nxt.plug_wall, [window]):
                verdict.merged += 1  # unplug and re-plug that no daemon saw: one long session at the backend
                carried = first
            elif judged:
                verdict.lost += 1
                verdict.problems.append(f"connector {s.connector}: session plugged at {s.plug_wh} Wh, unplugged at {s.unplug_wh} Wh never stopped at the backend")
            continue
        carried = None
        matched.add(tx.start_id)
        if tx.meter_start == first.plug_wh:
            verdict.sessions_at_backend += judged
        elif _inside(first.plug_wall, windows) and first.plug_wh <= tx.meter_start <= s.unplug_wh:
            verdict.sessions_at_backend += judged
            verdict.started_while_down += 1
        else:
            verdict.problems.append(f"connector {s.connector}: session {first.plug_wh}..{s.unplug_wh} Wh arrived with meterStart {tx.meter_start}")
    last_unjudged = bool(mine) and (mine[-1].unplug_wall is None or mine[-1].unplug_wall > judged_until)
    for tx in txs:
        if tx.start_id in matched:
            continue
        if tx is txs[-1] and tx.meter_stop is None and last_unjudged:
            continue  # the session still running at the end, or ended after the judging point
        verdict.problems.append(f"connector {tx.connector}: transaction {sorted(tx.tx_ids)} (meter {tx.meter_start}..{tx.meter_stop}) matches no simulated session")


def _check_store(stored: Sequence[StoredSession], backend: dict[int, list[_Tx]], verdict: Verdict) -> None:
    """Each committed session is one transaction at the backend with the same meters, and vice versa."""
    by_id = {i: tx for txs in backend.values() for tx in txs for i in tx.tx_ids}
    found: set[str] = set()
    for row in stored:
        tx = by_id.get(row.transaction_id) if row.transaction_id is not None else None
        if tx is None:
            verdict.problems.append(f"stored session {row.key} (connector {row.connector}) has no transaction at the backend")
            continue
        found.add(tx.start_id)
        if (tx.connector, tx.meter_start) != (row.connector, row.meter_start):
            verdict.problems.append(f"stored session {row.key}: connector {row.connector} meterStart {row.meter_start}, the backend got {tx.connector} {tx.meter_start}")
        if tx.meter_stop != row.meter_stop:
            verdict.problems.append(f"stored session {row.key}: meterStop {row.meter_stop}, the backend got {tx.meter_stop}")
    verdict.sessions_in_store = len(stored)
    for tx in (tx for txs in backend.values() for tx in txs if tx.start_id not in found):
        verdict.problems.append(f"transaction {sorted(tx.tx_ids)} at the backend is no session in the store")


def landing(runs: Sequence[Run], records: Sequence[dict]) -> dict[str, int]:
    """Where each kill landed, from what the backend saw of the killed run and of the next one.

    "tx in flight": the next run's first transaction CALL repeats a messageId,
    i.e. the killed run had sent it and not yet committed its answer.
    """
    out = {"before connect": 0, "at boot": 0, "tx in flight": 0, "running": 0}
    seen: set[str] = set()
    tx_calls: list[tuple[int, bool]] = []  # (record index, is a resend) of every transaction CALL frame
    for i, r in enumerate(records):
        if r["type"] == "frame" and r["direction"] == "in" and _call_action(r) in TX_ACTIONS:
            message_id = json.loads(r["message"])[1]
            tx_calls.append((i, message_id in seen))
            seen.add(message_id)
    for run, after in itertools.pairwise(runs):
        mine = records[run.first_record:run.last_record]
        first_after = next((resend for i, resend in tx_calls if i >= after.first_record), False)
        if not any(r["type"] == "connect" for r in mine):
            out["before connect"] += 1
        elif not any(r["type"] == "call" and r["method"] != "BootNotification" for r in mine):
            out["at boot"] += 1  # it had sent nothing after its BootNotification
        elif first_after:
            out["tx in flight"] += 1
        else:
            out["running"] += 1
    return out


# --- playing: processes -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(workdir: Path, backend_url: str, scenario: Scenario) -> Path:
    """The busy cluster: 2 RTU slaves on one pty line, 2 Modbus TCP slaves, fast EVs, 1 s samples."""
    config = {
        "charge_point": {"identity": IDENTITY, "vendor": "OpenGateway", "model": "Cluster", "serial_number": "KILL-1"},
        "backend": {"url": backend_url},
        "buses": [
            {"name": "rs485-1", "kind": "rtu", "port": str(workdir / "ttyRS485-1"), "baudrate": 19200, "parity": "N", "stopbits": 1, "poll_interval_s": 1.0},
            {"name": "lan", "kind": "tcp", "poll_interval_s": 1.0},
        ],
        "connectors": [
            {"id": 1, "bus": "rs485-1", "unit": 1, "profile": "heidelberg-energy-control"},
            {"id": 2, "bus": "rs485-1", "unit": 2, "profile": "heidelberg-energy-control"},
            {"id": 3, "bus": "lan", "host": "127.0.0.1", "port": _free_port(), "unit": 1, "profile": "heidelberg-energy-control"},
            {"id": 4, "bus": "lan", "host": "127.0.0.1", "port": _free_port(), "unit": 1, "profile": "heidelberg-energy-control"},
        ],
        "storage": {"path": str(workdir / "gateway.db")},
        "authorization": {"free_charging_id_tag": "KILL-FREE"},
        "ocpp": {"meter_value_sample_interval_s": scenario.sample_interval_s},
        "simulator": {
            "speed": scenario.speed, "seed": scenario.seed, "wire_delay": True,
            "idle_s": list(scenario.idle_s), "session_kwh": list(scenario.session_kwh),
        },
    }
    path = workdir / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def _spawn(*args: str, log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *args, cwd=REPO,
            stdout=out, stderr=asyncio.subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )


async def _terminate(proc: asyncio.subprocess.Process) -> int:
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
        self.events_file = workdir / "sim-events.jsonl"
        self.runs: list[Run] = []
        self.daemon: asyncio.subprocess.Process | None = None

    async def spawn_daemon(self, aim: str) -> Run:
        run = Run(len(self.runs), aim, time.time(), len(self.backend.records), self.workdir / "logs" / f"daemon-{len(self.runs):04d}.log")
        self.daemon = await _spawn("run", "-c", str(self.config), log=run.log)
        self.runs.append(run)
        return run

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
                return next(position) >= fresh and r["type"] == "frame" and r["direction"] == "in" and _call_action(r) in actions

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


def _call_action(record: Record) -> str | None:
    frame = json.loads(record["message"])
    return frame[2] if isinstance(frame, list) and len(frame) > 2 and frame[0] == 2 else None


async def run_scenario(workdir: Path, scenario: Scenario, progress: Callable[[str], None] = lambda text: None) -> Report:
    """Play `scenario` in `workdir` (which keeps the logs, the database and the events) and judge it."""
    began = time.monotonic()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    async with OcppRpcBackend() as backend:
        cluster = _Cluster(workdir, scenario, backend, progress)
        sim_started = time.time()
        sim = await _spawn("simulate", "-c", str(cluster.config), "--events", str(cluster.events_file), log=workdir / "sim.log")
        final_rc = -1
        try:
            # The daemon starts as soon as the simulated line exists: it must pause every box before the first EV.
            async with asyncio.timeout(20):
                while not (workdir / "ttyRS485-1").exists():
                    cluster.check_alive(sim)
                    await asyncio.sleep(0.02)
            await cluster.spawn_daemon(cluster.rng.choices(list(AIMS), AIM_WEIGHTS)[0] if scenario.kills else "none")
            await cluster.in_control(sim)
            for k in range(scenario.kills):
                await cluster.kill_at_aim(sim)
                await cluster.spawn_daemon(cluster.rng.choices(list(AIMS), AIM_WEIGHTS)[0] if k + 1 < scenario.kills else "none")
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
                final_rc = await _terminate(cluster.daemon)
            await _terminate(sim)
    events = read_events(cluster.events_file)
    records = list(backend.records)
    with (workdir / "backend-records.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    with (workdir / "runs.jsonl").open("w") as f:
        f.writelines(json.dumps({"run": r.number, "aim": r.aim, "started": r.started, "in_control": r.in_control, "killed": r.killed}) + "\n" for r in cluster.runs)
    verdict = judge(events, records, down_windows(cluster.runs, sim_started), judged_until, stored_sessions(workdir / "gateway.db"))
    if not drained:
        verdict.problems.append(f"the outbox still held {outbox_count(workdir / 'gateway.db')} messages {scenario.settle_timeout_s:.0f} s after the last kill")
    verdict.problems += [f"strict-schema violation: {json.dumps(v)[:400]}" for v in backend.violations]
    verdict.problems += [f"not OCPP-J: {json.dumps(b)[:400]}" for b in backend.bad_messages]
    aims: dict[str, int] = {}
    for run in cluster.runs[:-1]:
        aims[run.aim] = aims.get(run.aim, 0) + 1
    return Report(
        scenario, cluster.runs, verdict, landing(cluster.runs, records), aims,
        sum(e["event"] == "watchdog" for e in events), final_rc, time.monotonic() - began, workdir,
    )
