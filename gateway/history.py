"""The daemon's history, read straight from its SQLite file: sessions, daily totals per connector, the pending outbox.

For `charger-gateway sessions` and `queue`, and the alarms `status` shows. Everything here
only reads, through a read-only connection opened as Store.open_read_only opens one
(gateway.store.read_only_uri), so it works whether the daemon runs or not and never
changes the file.

Times are UTC, like every time the gateway keeps. A session counts on the UTC day it
started, with all its hours and energy (a session over midnight is not split).
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.clock import EARLIEST_VALID
from gateway.errors import StoreError
from gateway.store import read_only_uri

DAY_S = 86_400.0
_DAYS = re.compile(r"(\d+)d")


@dataclass(frozen=True)
class SessionRow:
    """One charging session as the store keeps it, with what of it is still queued for the backend."""

    key: str  # the local session key
    connector: int
    id_tag: str
    started: float  # wall
    stopped: float | None  # None: still open
    meter_start_wh: int
    meter_stop_wh: int | None
    stop_reason: str | None
    transaction_id: int | None  # the backend's, once it answered the StartTransaction
    queued: int  # messages of this session still in the outbox

    @property
    def energy_kwh(self) -> float | None:
        return None if self.meter_stop_wh is None else (self.meter_stop_wh - self.meter_start_wh) / 1000

    @property
    def reached_backend(self) -> bool:
        """Every message of the session was answered by the backend (an open session: so far)."""
        return self.transaction_id is not None and self.queued == 0

    def hours(self, now: float) -> float:
        return max(0.0, (now if self.stopped is None else self.stopped) - self.started) / 3600

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.key, "connector": self.connector, "id_tag": self.id_tag,
            "started": iso(self.started), "stopped": None if self.stopped is None else iso(self.stopped),
            "meter_start_wh": self.meter_start_wh, "meter_stop_wh": self.meter_stop_wh, "energy_kwh": self.energy_kwh,
            "stop_reason": self.stop_reason, "transaction_id": self.transaction_id,
            "queued": self.queued, "reached_backend": self.reached_backend,
        }


@dataclass(frozen=True)
class DayTotal:
    """One connector's use on one UTC day."""

    day: str  # YYYY-MM-DD
    connector: int
    sessions: int
    hours: float
    kwh: float  # of the sessions that have stopped; an open one adds its energy once it stops

    def to_json(self) -> dict[str, Any]:
        return {"day": self.day, "connector": self.connector, "sessions": self.sessions, "hours": round(self.hours, 3), "kwh": round(self.kwh, 3)}


@dataclass(frozen=True)
class QueuedRow:
    """One message waiting in the outbox, oldest first."""

    seq: int
    action: str
    connector: int | None
    session: str | None
    transaction_id: int | None
    stamp: float | None  # the message's own time (its timestamp, or its first sample's); None: it has none
    attempts: int
    sending: bool  # frozen: sent at least once, or about to be; its content no longer changes
    message_id: str

    def age_s(self, now: float) -> float | None:
        """How old the message is; None without a time, or with one taken while the clock was unset (1970)."""
        return None if self.stamp is None or self.stamp < EARLIEST_VALID else max(0.0, now - self.stamp)

    def to_json(self, now: float) -> dict[str, Any]:
        age = self.age_s(now)
        return {
            "id": self.seq, "action": self.action, "connector": self.connector, "session": self.session,
            "transaction_id": self.transaction_id, "time": None if self.stamp is None else iso(self.stamp),
            "age_s": None if age is None else round(age), "attempts": self.attempts, "sending": self.sending,
            "message_id": self.message_id,
        }


@dataclass(frozen=True)
class QueueSummary:
    pending: int
    bytes: int  # of the payloads
    by_action: dict[str, int]
    head: tuple[QueuedRow, ...]  # the first messages, in sending order


@dataclass(frozen=True)
class RecordedAlarm:
    """An alarm the daemon kept in its event log (Store.alarm): a replaced database, a data budget, a thinned outbox..."""

    time: float
    connector: int
    text: str


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def day_of(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).date().isoformat()


def parse_since(text: str, today: date) -> float:
    """`--since`: a UTC day (2026-05-01, from its midnight) or the last N days, today included (7d); the wall time it means."""
    if match := _DAYS.fullmatch(text.strip()):
        days = int(match.group(1))
        if not 1 <= days <= 3660:
            raise ValueError(f"a number of days 1..3660, not {days}")
        first = today - timedelta(days=days - 1)
    else:
        try:
            first = date.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"a day (YYYY-MM-DD) or a number of days (7d), not {text!r}") from None
    return datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()


def daily_totals(sessions: Sequence[SessionRow], now: float) -> list[DayTotal]:
    """Per UTC day (of its start) and connector: sessions, hours in use (open ones up to `now`), kWh. Sorted by day, connector."""
    sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for s in sessions:
        total = sums[(day_of(s.started), s.connector)]
        total[0] += 1
        total[1] += s.hours(now)
        total[2] += s.energy_kwh or 0.0
    return [DayTotal(day, cid, int(n), hours, kwh) for (day, cid), (n, hours, kwh) in sorted(sums.items())]


def message_stamp(payload: dict[str, Any]) -> float | None:
    """The time a queued message carries: its timestamp, else its first sample's, else an UnrecordedEnergy record's end."""
    texts = [payload.get("timestamp")] + [e.get("timestamp") for e in payload.get("meterValue", ()) if isinstance(e, dict)]
    if payload.get("messageId") == "UnrecordedEnergy" and isinstance(payload.get("data"), str):
        with contextlib.suppress(ValueError):
            data = json.loads(payload["data"])
            texts.append(data.get("to") if isinstance(data, dict) else None)
    for text in texts:
        if isinstance(text, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return None


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the daemon's database; StoreError when there is none or it cannot be read."""
    uri = read_only_uri(path)
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}") from exc
    try:
        yield conn
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}") from exc
    finally:
        conn.close()


def sessions(conn: sqlite3.Connection, since: float, now: float, connector: int | None = None) -> list[SessionRow]:
    """Sessions that started on or after `since` (or were still open then), oldest first."""
    queued = dict(conn.execute("SELECT session_key, count(*) FROM outbox WHERE session_key IS NOT NULL GROUP BY session_key").fetchall())
    rows = conn.execute(
        "SELECT key, connector_id, id_tag, started, stopped, meter_start, meter_stop, stop_reason, transaction_id FROM sessions "
        "WHERE (started >= ? OR coalesce(stopped, ?) >= ?) AND (? IS NULL OR connector_id = ?) ORDER BY started, key",
        (since, now, since, connector, connector),
    ).fetchall()
    return [
        SessionRow(key, cid, tag, started, stopped, start, stop, reason, tx, int(queued.get(key, 0)))
        for key, cid, tag, started, stopped, start, stop, reason, tx in rows
    ]


def latest_time(conn: sqlite3.Connection) -> float:
    """The latest session start or stop the database holds; 0 when it holds none."""
    row = conn.execute("SELECT max(coalesce(max(started), 0), coalesce(max(stopped), 0)) FROM sessions").fetchone()
    return float(row[0])


def queue(conn: sqlite3.Connection, limit: int) -> QueueSummary:
    """The outbox: how many messages of which action, their bytes, and the first `limit` in sending order."""
    by_action = dict(conn.execute("SELECT action, count(*) FROM outbox GROUP BY action ORDER BY action").fetchall())
    size = conn.execute("SELECT coalesce(sum(length(payload)), 0) FROM outbox").fetchone()[0]
    rows = conn.execute(
        "SELECT o.seq, o.action, o.session_key, o.payload, o.attempts, o.frozen, o.message_id, s.connector_id, s.transaction_id "
        "FROM outbox o LEFT JOIN sessions s ON s.key = o.session_key ORDER BY o.seq LIMIT ?",
        (limit,),
    ).fetchall()
    head = []
    for seq, action, session, text, attempts, frozen, message_id, session_connector, tx_id in rows:
        try:
            payload = json.loads(text)
        except ValueError:
            payload = {}
        payload = payload if isinstance(payload, dict) else {}
        connector = payload.get("connectorId", session_connector)
        head.append(QueuedRow(
            seq, action, connector if isinstance(connector, int) else None, session, tx_id,
            message_stamp(payload), attempts, bool(frozen), message_id,
        ))
    return QueueSummary(sum(by_action.values()), int(size), by_action, tuple(head))


def recorded_alarms(conn: sqlite3.Connection, since: float, limit: int = 20) -> list[RecordedAlarm]:
    """The alarms kept in the event log since `since`, newest first."""
    rows = conn.execute(
        "SELECT wall, connector_id, data FROM events WHERE kind = 'alarm' AND wall >= ? ORDER BY id DESC LIMIT ?", (since, limit)
    ).fetchall()
    alarms = []
    for wall, connector, data in rows:
        try:
            text = json.loads(data).get("text")
        except (ValueError, AttributeError):
            text = None
        alarms.append(RecordedAlarm(wall, connector, text if isinstance(text, str) else str(data)))
    return alarms


def read_recorded_alarms(path: Path, since: float) -> list[RecordedAlarm]:
    """recorded_alarms on its own connection (the daemon's status runs it in a thread)."""
    with read_only(path) as conn:
        return recorded_alarms(conn, since)
