"""The judge of the SIGKILL harness (tests/killing.py), pure: what happened in, a Verdict out.

Inputs: the simulator's events (plug and unplug, with the energy register at
that instant), the strict backend's records (every frame, CALL and answer),
when no daemon watched each slave, and the daemon's sessions table after
its outbox drained. What is checked is the promise of the store, "nothing
lost":

- every session the simulator completed reached the backend exactly once:
  one StartTransaction on its connector with meterStart = the register at
  plug-in (or, had the EV plugged in while no daemon watched, the register
  when a daemon authorized it: counted as `started_while_down`), one
  StopTransaction with meterStop = the register at unplug;
- every committed session is one transaction at the backend, and every
  transaction at the backend is a committed session;
- a CALL sent twice is the message that was in flight at a kill: resent
  first on the next connection, byte-identical (same messageId, same
  payload), so the backend can spot it; counted, never a second transaction;
- per transaction, Start < MeterValues < Stop, and one Stop only;
- every connection begins with BootNotification.

Known limitation: a Heidelberg box has no plug counter, so an EV leaving and
another arriving while no daemon polls the box look like one long session;
such a pair is counted as `merged`, not as a loss.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

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
Window = tuple[float, float]  # wall-time interval


class RunLike(Protocol):
    """What the judge needs of one daemon run (tests.killing.Run)."""

    in_control: dict[int, float]  # connector -> wall time of its first poll in this run
    killed: float | None
    offline: bool
    first_record: int
    last_record: int | None


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


def down_windows(runs: Sequence[RunLike], since: float) -> dict[int, list[Window]]:
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


def landing(runs: Sequence[RunLike], records: Sequence[dict]) -> dict[str, int]:
    """Where each kill landed, from what the backend saw of the killed run and of the next one.

    "tx in flight": the next run's first transaction CALL repeats a messageId,
    i.e. the killed run had sent it and not yet committed its answer.
    """
    out = {"offline": 0, "before connect": 0, "at boot": 0, "tx in flight": 0, "running": 0}
    seen: set[str] = set()
    at: list[int] = []  # record index of every transaction CALL frame
    resend: list[bool] = []  # whether its messageId was seen before
    for i, r in enumerate(records):
        if r["type"] == "frame" and r["direction"] == "in" and call_action(r) in TX_ACTIONS:
            message_id = json.loads(r["message"])[1]
            at.append(i)
            resend.append(message_id in seen)
            seen.add(message_id)
    for run, after in itertools.pairwise(runs):
        mine = records[run.first_record:run.last_record]
        k = bisect.bisect_left(at, after.first_record)
        first_after = k < len(at) and resend[k]
        if run.offline:
            out["offline"] += 1
        elif not any(r["type"] == "connect" for r in mine):
            out["before connect"] += 1
        elif not any(r["type"] == "call" and r["method"] != "BootNotification" for r in mine):
            out["at boot"] += 1  # it had sent nothing after its BootNotification
        elif first_after:
            out["tx in flight"] += 1
        else:
            out["running"] += 1
    return out


def call_action(record: dict) -> str | None:
    """The action of a frame record when it is a CALL, else None."""
    frame = json.loads(record["message"])
    return frame[2] if isinstance(frame, list) and len(frame) > 2 and frame[0] == 2 else None
