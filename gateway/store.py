"""The SQLite store: sessions, the event log, the outbox of transaction messages and the uplinks' data usage.

An event counts as seen only once its commit returned. Durability choice:
WAL journal with synchronous=FULL, so that every commit is fsync'ed to the WAL
before it returns and survives a power cut (NORMAL would keep the database
consistent but could lose the last commits, i.e. a session's Stop). The write
rate is a few rows a minute per connector, so the fsync cost is irrelevant
next to the flash wear of a lost session.

The outbox holds the OCPP transaction messages (Start/StopTransaction,
MeterValues) in strict order (OCPP 1.6 §3.7). Each row carries the local
session key; the backend's transactionId is filled in when the row is read
for sending, so messages queued while offline never carry a made-up id.

Before its first send, a row is frozen: queued samples of the same
transaction are merged into it (one MeterValues message with several
meterValue entries, for a fast drain after an outage), and from then on its
content never changes. A resend after a crash or a lost answer is therefore
byte-identical, with the same message id, and the backend can spot the
duplicate (ocpp-gateway-notes.md, field failure 9). Merging pulls later
samples of one transaction ahead of other transactions' rows; the order
within each transaction, and Start before samples before Stop, is kept.

Data usage is one row per uplink and UTC day (gateway.data_usage), added to
in place; tools read it through `Store.open_read_only` while the daemon runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from gateway import ocpp_messages
from gateway.clock import EARLIEST_VALID, Clock, fix_unset_stamp, iso, parse_iso
from gateway.data_usage import UsageRow
from gateway.errors import ClockUnset, LocalProtocolError, StoreError
from gateway.session import Effect, StatusChanged, Transaction, TransactionStarted, TransactionStopped
from gateway.traffic import Traffic

log = logging.getLogger("gateway.store")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY,
    connector_id INTEGER NOT NULL,
    id_tag TEXT NOT NULL,
    meter_start INTEGER NOT NULL,
    started REAL NOT NULL,
    meter_stop INTEGER,
    stopped REAL,
    stop_reason TEXT,
    transaction_id INTEGER
);
CREATE INDEX IF NOT EXISTS sessions_open ON sessions (connector_id) WHERE stopped IS NULL;
CREATE TABLE IF NOT EXISTS energy_marks (
    connector_id INTEGER PRIMARY KEY,
    energy_wh INTEGER NOT NULL,  -- the slave's energy register when last accounted for
    wall REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    wall REAL NOT NULL,
    connector_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY,  -- what the backend set and the gateway must keep across restarts
    value TEXT NOT NULL     -- JSON: configuration changes, local list, reservations, charging profiles, availability
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,
    session_key TEXT REFERENCES sessions (key),
    payload TEXT NOT NULL,
    message_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    frozen INTEGER NOT NULL DEFAULT 0,
    boot TEXT,  -- set, with unset_offset, when the payload holds stamps taken while the clock was unset
    unset_offset REAL
);
CREATE TABLE IF NOT EXISTS uplink_usage (
    uplink TEXT NOT NULL,
    day TEXT NOT NULL,         -- UTC, YYYY-MM-DD
    sent INTEGER NOT NULL,     -- bytes on the wire (gateway.traffic)
    received INTEGER NOT NULL,
    PRIMARY KEY (uplink, day)
) WITHOUT ROWID;
"""

_ADDED_COLUMNS = {"frozen": "INTEGER NOT NULL DEFAULT 0", "boot": "TEXT", "unset_offset": "REAL"}

VENDOR_ID = "charger-gateway"  # DataTransfer vendorId of the records this gateway makes up
UNRECORDED_MIN_WH = 10  # below this, a register difference is rounding, not a charge

# Actions whose payload needs the transactionId of their session at send time.
_NEEDS_TX_ID = frozenset({"StopTransaction", "MeterValues"})


@dataclass(frozen=True)
class QueuedMessage:
    """The head of the outbox, ready to send: payload complete, message id fixed at queue time."""

    seq: int
    action: str
    payload: dict
    message_id: str
    session_key: str | None
    attempts: int


def _stamps(payload: dict) -> list[float]:
    """The times in a transaction message: its own timestamp and those of its meterValue entries."""
    texts = [payload["timestamp"]] if "timestamp" in payload else []
    texts += [entry["timestamp"] for entry in payload.get("meterValue", ())]
    return [parse_iso(t) for t in texts]


def _map_stamps(payload: dict, fn: Callable[[str], str]) -> dict:
    out = dict(payload)
    if "timestamp" in out:
        out["timestamp"] = fn(out["timestamp"])
    if "meterValue" in out:
        out["meterValue"] = [{**entry, "timestamp": fn(entry["timestamp"])} for entry in out["meterValue"]]
    return out


def _thinned(rows: Sequence[tuple[int, str]], k: int) -> list[int]:
    """Rows (seq, session) sorted by session then seq -> the seqs to delete: all but each session's
    first, last and every k-th sample. Pure, so the rule is tested on its own."""
    doomed: list[int] = []
    for _, group in itertools.groupby(rows, key=lambda r: r[1]):
        seqs = [seq for seq, _ in group]
        doomed += [seq for i, seq in enumerate(seqs[:-1]) if i % k != 0]
    return doomed


async def run_to_the_end(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` to its end even if the caller is cancelled meanwhile; that cancel is raised after it."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


class _CorruptFile(sqlite3.DatabaseError):
    """PRAGMA quick_check found damage."""


_CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


async def _open_checked(path: Path) -> aiosqlite.Connection:
    """Connect, check the file is a sound database, set durability, create or migrate the schema."""
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        async with db.execute("PRAGMA quick_check") as cursor:
            verdict = [row[0] for row in await cursor.fetchall()]
        if verdict != ["ok"]:
            raise _CorruptFile(f"quick_check: {'; '.join(verdict[:3])}")
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.executescript(_SCHEMA)
        async with db.execute("SELECT name FROM pragma_table_info('outbox')") as cursor:
            columns = {row[0] for row in await cursor.fetchall()}
        for column, decl in _ADDED_COLUMNS.items():  # files made before these columns existed
            if column not in columns:
                await db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {decl}")
        await db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    except BaseException:
        await db.close()
        raise
    return db


def read_only_uri(path: Path) -> str:
    """The URI that opens an existing store for reading only (see Store.open_read_only); StoreError if there is none."""
    if not path.is_file():
        raise StoreError(f"{path}: no such database")
    flags = "mode=ro" if Path(f"{path}-wal").exists() else "mode=ro&immutable=1"
    return f"{path.resolve().as_uri()}?{flags}"


class Store:
    """Thin async layer over one SQLite file; every public method is one atomic commit."""

    def __init__(self, db: aiosqlite.Connection, path: Path, budget_bytes: int) -> None:
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()
        self.budget_bytes = budget_bytes
        self._bytes_estimate = budget_bytes  # unknown until measured: the first sample queued measures it
        # transactionId by session key, for open sessions: smart charging asks at every poll, and only
        # acknowledge() ever sets it, so the copy stays true; None until the StartTransaction is answered.
        self._tx_ids: dict[str, int | None] = {}
        self._has_usage = True  # False only in a read-only view of a file made before usage was counted

    @classmethod
    async def open(cls, path: Path, clock: Clock | None = None, budget_mb: float = 128.0) -> Store:
        """Open (or create) the store. A corrupt file is moved aside and replaced by a fresh one.

        A gateway that refuses to start over a corrupt file stops charging sessions
        from being recorded at all; a fresh file loses what was in the old one, which
        stays on disk for a technician (and a later recovery) and is reported loudly.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return cls(await _open_checked(path), path, int(budget_mb * 1e6))
        except sqlite3.DatabaseError as exc:
            # Only a damaged file is moved aside. "Database is locked" (a technician's sqlite3
            # shell, a backup) or an I/O error is not corruption: fail, and let systemd retry.
            if not (isinstance(exc, _CorruptFile) or getattr(exc, "sqlite_errorcode", None) in _CORRUPT_CODES):
                raise StoreError(f"{path}: {exc}") from exc
            aside = next(p for n in itertools.count(1) if not (p := path.with_name(f"{path.name}.corrupt-{n}")).exists())
            for suffix in ("", "-wal", "-shm"):
                part = Path(f"{path}{suffix}")
                if part.exists():
                    part.rename(Path(f"{aside}{suffix}"))
            log.critical("database %s is corrupt (%s): moved aside to %s, starting a fresh one", path, exc, aside)
        try:
            store = cls(await _open_checked(path), path, int(budget_mb * 1e6))
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from exc
        await store.alarm(0, f"database was corrupt and was replaced; the old file is {aside.name}", (clock or Clock()).wall())
        return store

    @classmethod
    async def open_read_only(cls, path: Path) -> Store:
        """A view of an existing store for tools, safe while the daemon writes to it; StoreError if it cannot be read.

        It never creates, checks or migrates anything (the daemon does that on open). In WAL mode
        a reader shares the daemon's -wal and -shm files. When there is no -wal file, the daemon
        is not running and closed the file cleanly, so everything is in the main file, and the
        view is opened immutable: a reader would otherwise leave -wal and -shm files behind,
        owned by whoever ran the tool, which the daemon might then be unable to open.
        """
        try:
            db = await aiosqlite.connect(read_only_uri(path), uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from exc
        try:
            async with db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'uplink_usage'") as cursor:
                row = await cursor.fetchone()
        except BaseException as exc:
            await db.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{path}: {exc}") from exc
            raise
        store = cls(db, path, 0)
        store._has_usage = bool(row and row[0])
        return store

    async def close(self) -> None:
        await self._db.close()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction at a time on the shared connection: the pollers and the
        uplink commit from different tasks, and their awaits must not interleave a BEGIN.

        A writer may be cancelled at any await (the uplink reconnects, the daemon stops), and
        aiosqlite still runs the statement it had handed to its thread: a BEGIN or a COMMIT may
        happen after the cancel. Whatever ended the block, the transaction is closed before the
        lock is released, so the next writer never finds one left open.
        """
        async with self._lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException as exc:
                await run_to_the_end(self._close_open_transaction())
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{self.path}: {exc}") from exc
                raise

    async def _close_open_transaction(self) -> None:
        await self._db.execute("SELECT 1")  # runs after whatever the cancelled writer had queued
        if self._db.in_transaction:
            await self._db.execute("ROLLBACK")

    async def _write(self, statements: Sequence[tuple[str, tuple]]) -> None:
        """Run statements in one transaction: all of them are committed, or none."""
        async with self._transaction() as db:
            for sql, args in statements:
                await db.execute(sql, args)

    async def save_state(self, name: str, value: object) -> None:
        """Keep one piece of backend-set state (a JSON-able snapshot), replacing what was kept under `name`."""
        await self._write([("INSERT OR REPLACE INTO state VALUES (?, ?)", (name, json.dumps(value, separators=(",", ":"))))])

    async def load_state(self, name: str) -> object | None:
        """The snapshot kept under `name`; None if nothing was kept."""
        rows = await self._read("SELECT value FROM state WHERE name = ?", (name,))
        return json.loads(rows[0][0]) if rows else None

    async def commit(self, effects: Sequence[Effect], clock: Clock) -> None:
        """Persist the effects of one poll, atomically, before anything else acts on them."""
        rows: list[tuple[str, tuple]] = []
        for effect in effects:
            if isinstance(effect, TransactionStarted):
                tx = effect.transaction
                rows.append((
                    "INSERT INTO sessions (key, connector_id, id_tag, meter_start, started) VALUES (?, ?, ?, ?, ?)",
                    (tx.key, effect.connector_id, tx.id_tag, tx.meter_start_wh, tx.started_wall),
                ))
                rows += self._queue_rows("StartTransaction", tx.key, ocpp_messages.start_transaction(effect, clock), clock)
                rows.append(self._mark_row(effect.connector_id, tx.meter_start_wh, tx.started_wall))
                rows.append(self._event_row(tx.started_wall, effect.connector_id, "start", {"session": tx.key, "idTag": tx.id_tag, "meterStart": tx.meter_start_wh}))
            elif isinstance(effect, TransactionStopped):
                key = effect.transaction.key
                rows.append((
                    "UPDATE sessions SET meter_stop = ?, stopped = ?, stop_reason = ? WHERE key = ?",
                    (effect.meter_stop_wh, effect.wall, effect.reason, key),
                ))
                rows += self._queue_rows("StopTransaction", key, ocpp_messages.stop_transaction(effect, clock), clock)
                rows.append(self._mark_row(effect.connector_id, effect.meter_stop_wh, effect.wall))
                rows.append(self._event_row(effect.wall, effect.connector_id, "stop", {"session": key, "meterStop": effect.meter_stop_wh, "reason": effect.reason}))
            elif isinstance(effect, StatusChanged):
                rows.append(self._event_row(effect.wall, effect.connector_id, "status", {"status": effect.status, "errorCode": effect.error_code, "info": effect.info}))
        if rows:
            await self._write(rows)
        for effect in effects:
            if isinstance(effect, TransactionStopped):
                self._tx_ids.pop(effect.transaction.key, None)

    async def reconcile_energy(self, connector_id: int, energy_wh: int, in_transaction: bool, clock: Clock) -> int:
        """First contact with a slave after a start or an outage: account for energy charged meanwhile.

        A session that is still open owns what its EV took meanwhile (its meterStop will
        show it). Otherwise a register above the last mark is energy that belongs to no
        recorded session: an EV charged while the master was down (or before it paused
        the box). Its bounds are unknown (no idTag, no start or stop time), so it cannot
        be a transaction; it goes to the backend as a DataTransfer record, queued in
        order with the transaction messages so it is never lost. Returns the Wh reported.
        """
        wall = clock.wall()
        async with self._db.execute("SELECT energy_wh, wall FROM energy_marks WHERE connector_id = ?", (connector_id,)) as cursor:
            mark = await cursor.fetchone()
        rows = [self._mark_row(connector_id, energy_wh, wall)]
        gap = 0
        if mark is not None and not in_transaction:
            last_wh, last_wall = int(mark[0]), float(mark[1])
            if energy_wh - last_wh >= UNRECORDED_MIN_WH:
                gap = energy_wh - last_wh
                data = {"connectorId": connector_id, "energyWh": gap, "meterFrom": last_wh, "meterTo": energy_wh, "from": iso(last_wall)}
                if clock.wall_is_valid():
                    data["to"] = iso(wall)
                payload = {"vendorId": VENDOR_ID, "messageId": "UnrecordedEnergy", "data": json.dumps(data, separators=(",", ":"))}
                rows += self._queue_rows("DataTransfer", None, payload, clock)
                rows.append(self._event_row(wall, connector_id, "unrecorded-energy", data))
                log.warning("connector %d: %d Wh charged outside any recorded session; reported to the backend", connector_id, gap)
            elif energy_wh < last_wh:
                rows.append(self._event_row(wall, connector_id, "alarm", {"text": f"energy register went back from {last_wh} to {energy_wh} Wh (meter replaced or reset?)"}))
                log.error("connector %d: energy register went back from %d to %d Wh", connector_id, last_wh, energy_wh)
        await self._write(rows)
        return gap

    @staticmethod
    def _mark_row(connector_id: int, energy_wh: int, wall: float) -> tuple[str, tuple]:
        return ("INSERT OR REPLACE INTO energy_marks VALUES (?, ?, ?)", (connector_id, energy_wh, wall))

    async def queue_meter_values(self, connector_id: int, session_key: str, entries: Sequence[dict], clock: Clock) -> None:
        payload = ocpp_messages.meter_values(connector_id, entries)
        rows = self._queue_rows("MeterValues", session_key, payload, clock)
        await self._write(rows)
        # A running estimate, so that the common case costs no scan of the outbox;
        # the exact sum is taken only when the estimate says the budget may be passed.
        self._bytes_estimate += len(rows[0][1][2])
        if self._bytes_estimate > self.budget_bytes:
            self._bytes_estimate = await self.outbox_bytes()
            if self._bytes_estimate > self.budget_bytes:
                await self._thin(clock.wall())
                self._bytes_estimate = await self.outbox_bytes()

    async def outbox_bytes(self) -> int:
        async with self._db.execute("SELECT coalesce(sum(length(payload)), 0) FROM outbox") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _thin(self, wall: float) -> None:
        """Over budget: thin queued samples, every session alike, until the outbox fits again.

        Each session keeps its first and last queued sample and every k-th between
        them (k = 2, then 4, ...), so its energy curve keeps its ends and its shape.
        Start/StopTransaction and frozen (possibly in-flight) messages are never touched.
        """
        before = await self.outbox_bytes()
        k = 2
        while await self.outbox_bytes() > self.budget_bytes:
            async with self._transaction() as db:
                async with db.execute(
                    "SELECT seq, session_key FROM outbox WHERE action = 'MeterValues' AND frozen = 0 ORDER BY session_key, seq"
                ) as cursor:
                    rows = [(int(seq), str(key)) for seq, key in await cursor.fetchall()]
                doomed = _thinned(rows, k)
                for i in range(0, len(doomed), 500):
                    chunk = doomed[i : i + 500]
                    await db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})", tuple(chunk))
            if not doomed:
                break  # nothing left to thin: Start/Stop and ends of sessions only
            k *= 2
        after = await self.outbox_bytes()
        text = f"outbox over its {self.budget_bytes / 1e6:.0f} MB budget: meter samples thinned, {before / 1e6:.1f} -> {after / 1e6:.1f} MB"
        log.error(text)
        await self.alarm(0, text, wall)

    @staticmethod
    def _queue_rows(action: str, session_key: str | None, payload: dict, clock: Clock) -> list[tuple[str, tuple]]:
        """The insert of one outbox row; a row holding stamps from an unset clock also records
        its boot and the clock's unset offset, and the boot's latest such stamp (for fix_unset_stamp)."""
        text = json.dumps(payload, separators=(",", ":"))
        unset = [t for t in _stamps(payload) if t < EARLIEST_VALID]
        if not unset or clock.unset_offset is None:
            return [("INSERT INTO outbox (action, session_key, payload, message_id) VALUES (?, ?, ?, ?)", (action, session_key, text, ocpp_messages.new_message_id()))]
        boot = clock.boot_id()
        return [
            (
                "INSERT INTO outbox (action, session_key, payload, message_id, boot, unset_offset) VALUES (?, ?, ?, ?, ?, ?)",
                (action, session_key, text, ocpp_messages.new_message_id(), boot, clock.unset_offset),
            ),
            (
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = max(CAST(value AS REAL), CAST(excluded.value AS REAL))",
                (f"last_unset_stamp:{boot}", str(max(unset))),
            ),
        ]

    @staticmethod
    def _event_row(wall: float, connector_id: int, kind: str, data: dict) -> tuple[str, tuple]:
        return ("INSERT INTO events (wall, connector_id, kind, data) VALUES (?, ?, ?, ?)", (wall, connector_id, kind, json.dumps(data)))

    async def next_to_send(self, batch_max: int = 1, clock: Clock | None = None) -> QueuedMessage | None:
        """The oldest queued message, frozen for sending, transactionId resolved; None when the outbox is empty.

        A MeterValues row not yet frozen first takes in up to batch_max - 1 later
        samples of its transaction, and stamps taken while the clock was unset are
        turned into real time; merge, fix and freeze are one commit. Raises
        ClockUnset while such stamps cannot be fixed yet: nothing from 1970 is sent.
        """
        clock = clock or Clock()
        async with self._db.execute(
            "SELECT o.seq, o.action, o.payload, o.message_id, o.session_key, o.attempts, o.frozen, s.transaction_id "
            "FROM outbox o LEFT JOIN sessions s ON s.key = o.session_key ORDER BY o.seq LIMIT 1"
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        seq, action, payload_text, message_id, session_key, attempts, frozen, transaction_id = row
        payload = json.loads(payload_text)
        if not frozen:
            payload = await self._freeze(seq, action, session_key, batch_max, clock)
        if action in _NEEDS_TX_ID:
            if transaction_id is None:
                # Strict FIFO means the session's StartTransaction was answered before this row came up.
                raise LocalProtocolError(f"outbox #{seq} {action}: session {session_key} has no transactionId")
            payload["transactionId"] = transaction_id
        return QueuedMessage(seq, action, payload, message_id, session_key, attempts)

    async def _freeze(self, seq: int, action: str, session_key: str | None, batch_max: int, clock: Clock) -> dict:
        async with self._transaction() as db:
            columns = "seq, payload, boot, unset_offset"
            async with db.execute(f"SELECT {columns} FROM outbox WHERE seq = ?", (seq,)) as cursor:
                rows = list(await cursor.fetchall())
            if action == "MeterValues" and batch_max > 1:
                async with db.execute(
                    f"SELECT {columns} FROM outbox WHERE action = 'MeterValues' AND session_key = ? AND seq > ? AND frozen = 0 "
                    "ORDER BY seq LIMIT ?",
                    (session_key, seq, batch_max - 1),
                ) as cursor:
                    rows += list(await cursor.fetchall())
            parts = [await self._with_real_times(json.loads(text), boot, offset, clock) for _, text, boot, offset in rows]
            payload = parts[0]
            if len(parts) > 1:
                payload["meterValue"] = [e for part in parts for e in part["meterValue"]]
                later = [row[0] for row in rows[1:]]
                await db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(later))})", tuple(later))
            await db.execute("UPDATE outbox SET frozen = 1, payload = ? WHERE seq = ?", (json.dumps(payload, separators=(",", ":")), seq))
        return payload

    async def _with_real_times(self, payload: dict, boot: str | None, unset_offset: float | None, clock: Clock) -> dict:
        """The payload with every stamp from an unset clock replaced by real time (see gateway.clock)."""
        if boot is None or unset_offset is None:
            return payload
        if not clock.wall_is_valid():
            raise ClockUnset("queued messages carry times from before the clock was set; waiting for NTP or the backend's time")
        async with self._db.execute("SELECT value FROM meta WHERE key = ?", (f"last_unset_stamp:{boot}",)) as cursor:
            row = await cursor.fetchone()
        now_wall, now_mono, now_boot = clock.wall(), clock.monotonic(), clock.boot_id()

        def fix(text: str) -> str:
            stamp = parse_iso(text)
            if stamp >= EARLIEST_VALID:
                return text
            return iso(fix_unset_stamp(
                stamp, stamp_boot=boot, unset_offset=unset_offset, boot_last_stamp=float(row[0]) if row else stamp,
                now_wall=now_wall, now_mono=now_mono, now_boot=now_boot,
            ))

        return _map_stamps(payload, fix)

    async def drop(self, message: QueuedMessage, why: str, wall: float) -> None:
        """Give up on a message (MeterValues past TransactionMessageAttempts), leaving a trace in the event log."""
        connector = int(message.payload.get("connectorId", 0))
        await self._write([
            ("DELETE FROM outbox WHERE seq = ?", (message.seq,)),
            self._event_row(wall, connector, "dropped", {"action": message.action, "messageId": message.message_id, "why": why}),
        ])

    async def alarm(self, connector_id: int, text: str, wall: float) -> None:
        """An alarm for the operator: kept in the event log (the technician's `status` shows them)."""
        await self._write([self._event_row(wall, connector_id, "alarm", {"text": text})])

    async def add_usage(self, uplink: str, day: str, traffic: Traffic, wall: float, alarms: Sequence[str] = ()) -> None:
        """Add an uplink's traffic to its UTC day, with the budget alarms it raised (stamped `wall`), in one commit.

        The alarms go in the same commit as the traffic that crossed the threshold: a
        threshold is detected only by the month's total passing it, so an alarm committed
        apart from its traffic could be lost for good.
        """
        rows: list[tuple[str, tuple]] = [(
            "INSERT INTO uplink_usage VALUES (?, ?, ?, ?) ON CONFLICT (uplink, day) "
            "DO UPDATE SET sent = sent + excluded.sent, received = received + excluded.received",
            (uplink, day, traffic.sent, traffic.received),
        )]
        rows += [self._event_row(wall, 0, "alarm", {"text": text}) for text in alarms]
        await self._write(rows)

    async def usage(self, uplink: str | None = None, since_day: str | None = None) -> list[UsageRow]:
        """The recorded usage, per uplink and UTC day (sorted so), of one uplink or all, from `since_day` on."""
        if not self._has_usage:
            return []
        sql = "SELECT uplink, day, sent, received FROM uplink_usage WHERE (? IS NULL OR uplink = ?) AND (? IS NULL OR day >= ?) ORDER BY uplink, day"
        rows = await self._read(sql, (uplink, uplink, since_day, since_day))
        return [UsageRow(str(name), str(day), Traffic(int(sent), int(received))) for name, day, sent, received in rows]

    async def month_usage(self, uplink: str, month: str) -> Traffic:
        """An uplink's total in a UTC month (YYYY-MM)."""
        if not self._has_usage:
            return Traffic()
        rows = await self._read(
            # A range of the primary key (uplink, day), not a scan: day keys sort as text.
            "SELECT coalesce(sum(sent), 0), coalesce(sum(received), 0) FROM uplink_usage WHERE uplink = ? AND day >= ? AND day < ?",
            (uplink, f"{month}-01", f"{month}-32"),
        )
        return Traffic(int(rows[0][0]), int(rows[0][1]))

    async def _read(self, sql: str, args: tuple) -> list[Any]:
        try:
            async with self._db.execute(sql, args) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    async def acknowledge(self, message: QueuedMessage, result: dict) -> None:
        """The backend answered `message`: drop it, and keep the transactionId a StartTransaction got."""
        rows: list[tuple[str, tuple]] = [("DELETE FROM outbox WHERE seq = ?", (message.seq,))]
        if message.action == "StartTransaction":
            rows.append(("UPDATE sessions SET transaction_id = ? WHERE key = ?", (int(result["transactionId"]), message.session_key)))
        await self._write(rows)
        if message.action == "StartTransaction" and message.session_key in self._tx_ids:
            self._tx_ids[message.session_key] = int(result["transactionId"])

    async def count_attempt(self, message: QueuedMessage) -> int:
        await self._write([("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", (message.seq,))])
        return message.attempts + 1

    async def pending(self) -> int:
        async with self._db.execute("SELECT count(*) FROM outbox") as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def transaction_id(self, session_key: str) -> int | None:
        """The backend's transactionId of a session; None until its StartTransaction is answered."""
        if session_key not in self._tx_ids:
            async with self._db.execute("SELECT transaction_id FROM sessions WHERE key = ?", (session_key,)) as cursor:
                row = await cursor.fetchone()
            self._tx_ids[session_key] = None if row is None or row[0] is None else int(row[0])
        return self._tx_ids[session_key]

    async def session_key(self, transaction_id: int) -> str | None:
        """The local session key of a backend transactionId (RemoteStopTransaction)."""
        async with self._db.execute("SELECT key FROM sessions WHERE transaction_id = ?", (transaction_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def open_sessions(self) -> dict[int, Transaction]:
        """Sessions not yet stopped, by connector: what a restarted daemon resumes."""
        async with self._db.execute(
            "SELECT connector_id, key, id_tag, meter_start, started FROM sessions WHERE stopped IS NULL ORDER BY started"
        ) as cursor:
            rows = await cursor.fetchall()
        return {cid: Transaction(key, tag, start, started) for cid, key, tag, start, started in rows}
