"""The SQLite store on a real file: order, transactionId resolution, survival across reopen."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from gateway.clock import Clock
from gateway.errors import ClockUnset, LocalProtocolError, StoreError
from gateway.session import StatusChanged, Transaction, TransactionStarted, TransactionStopped
from gateway.store import Store
from tests.clocks import HandClock

CLOCK = Clock()
T0 = 1_790_000_000.0  # 2026-09
NTP_LIKE = 1_790_000_000.0  # what NTP sets the clock to in the clock tests


async def test_session_messages_in_order_with_transaction_id_resolved(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    store = await Store.open(db)
    tx = Transaction("s1", "TAG", 1000, T0)
    await store.commit([TransactionStarted(2, tx), StatusChanged(2, "SuspendedEVSE", "NoError", None, T0)], CLOCK)
    await store.queue_meter_values(2, "s1", [{"timestamp": CLOCK.utc_iso(T0 + 60), "sampledValue": [{"value": "1200"}]}], CLOCK)
    await store.commit([TransactionStopped(2, tx, 1500, "EVDisconnected", T0 + 120)], CLOCK)
    assert await store.pending() == 3
    assert (await store.open_sessions()) == {}

    head = await store.next_to_send()
    assert head is not None and head.action == "StartTransaction"
    assert head.payload == {"connectorId": 2, "idTag": "TAG", "meterStart": 1000, "timestamp": "2026-09-21T14:13:20.000Z"}
    first_id = head.message_id
    await store.close()

    # Reopen: the head is the same message with the same id (a resend is byte-identical).
    store = await Store.open(db)
    again = await store.next_to_send()
    assert again == head and again.message_id == first_id
    await store.acknowledge(again, {"transactionId": 77, "idTagInfo": {"status": "Accepted"}})

    mv = await store.next_to_send()
    assert mv is not None and mv.action == "MeterValues" and mv.payload["transactionId"] == 77
    await store.acknowledge(mv, {})
    stop = await store.next_to_send()
    assert stop is not None and stop.action == "StopTransaction"
    assert stop.payload["transactionId"] == 77 and stop.payload["meterStop"] == 1500
    await store.acknowledge(stop, {})
    assert await store.next_to_send() is None and await store.pending() == 0
    await store.close()


async def test_transaction_id_and_session_key_follow_the_answer_to_the_start(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    tx = Transaction("s5", "TAG", 10, T0)
    await store.commit([TransactionStarted(1, tx)], CLOCK)
    assert await store.transaction_id("s5") is None  # asked before the backend answered (offline)
    head = await store.next_to_send()
    assert head is not None
    await store.acknowledge(head, {"transactionId": 41, "idTagInfo": {"status": "Accepted"}})
    assert await store.transaction_id("s5") == 41 and await store.session_key(41) == "s5"
    await store.close()
    store = await Store.open(tmp_path / "gw.db")
    assert await store.transaction_id("s5") == 41, "kept in the file"
    assert await store.session_key(999) is None and await store.transaction_id("nobody") is None
    await store.close()


async def test_open_sessions_survive_reopen(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    tx = Transaction("s9", "TAG", 10, T0)
    await store.commit([TransactionStarted(4, tx)], CLOCK)
    await store.close()
    store = await Store.open(tmp_path / "gw.db")
    assert await store.open_sessions() == {4: tx}
    await store.close()


async def test_stop_before_start_answered_is_a_local_error(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    tx = Transaction("s1", "TAG", 1, T0)
    await store.commit([TransactionStarted(1, tx)], CLOCK)
    await store.commit([TransactionStopped(1, tx, 2, "Local", T0)], CLOCK)
    head = await store.next_to_send()
    assert head is not None
    # Deleting the Start without an answer breaks the FIFO invariant; head() refuses to invent an id.
    await store._write([("DELETE FROM outbox WHERE seq = ?", (head.seq,))])
    with pytest.raises(LocalProtocolError):
        await store.next_to_send()
    await store.close()


async def test_attempts_are_counted_and_kept(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    await store.commit([TransactionStarted(1, Transaction("s1", "T", 1, T0))], CLOCK)
    head = await store.next_to_send()
    assert head is not None
    assert await store.count_attempt(head) == 1
    again = await store.next_to_send()
    assert again is not None and again.attempts == 1
    await store.close()


async def started(store: Store, key: str = "s1", started_wall: float = T0) -> None:
    """A session on connector 1 whose StartTransaction the backend has answered (transactionId 1)."""
    await store.commit([TransactionStarted(1, Transaction(key, "T", 0, started_wall))], CLOCK)
    start = await store.next_to_send()
    assert start is not None and start.action == "StartTransaction"
    await store.acknowledge(start, {"transactionId": 1})


def sample(value: int) -> list[dict]:
    return [{"timestamp": CLOCK.utc_iso(T0 + value), "sampledValue": [{"value": str(value)}]}]


async def test_meter_values_of_one_transaction_are_batched_in_order(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    s1, s2 = Transaction("s1", "T", 0, T0), Transaction("s2", "T", 0, T0)
    await store.commit([TransactionStarted(1, s1)], CLOCK)
    for v in (1, 2, 3):
        await store.queue_meter_values(1, "s1", sample(v), CLOCK)
    await store.commit([TransactionStarted(2, s2)], CLOCK)
    for v in (101, 102):
        await store.queue_meter_values(2, "s2", sample(v), CLOCK)
    for v in (4, 5):
        await store.queue_meter_values(1, "s1", sample(v), CLOCK)
    await store.commit([TransactionStopped(1, s1, 5, "EVDisconnected", T0 + 9)], CLOCK)

    sent: list[tuple[str, list[str]]] = []
    tx_id = 10
    while (m := await store.next_to_send(batch_max=4)) is not None:
        values = [e["sampledValue"][0]["value"] for e in m.payload.get("meterValue", [])]
        sent.append((m.action, values))
        tx_id += 1
        await store.acknowledge(m, {"transactionId": tx_id})
    assert sent == [
        ("StartTransaction", []),
        ("MeterValues", ["1", "2", "3", "4"]),  # the later sample of s1 joins its batch, ahead of s2's rows
        ("StartTransaction", []),
        ("MeterValues", ["101", "102"]),
        ("MeterValues", ["5"]),
        ("StopTransaction", []),
    ]
    await store.close()


async def test_a_frozen_message_never_changes(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    store = await Store.open(db)
    await started(store)
    await store.queue_meter_values(1, "s1", sample(1), CLOCK)
    first = await store.next_to_send(batch_max=60)  # sent, then the daemon is killed before the answer
    await store.queue_meter_values(1, "s1", sample(2), CLOCK)  # the session goes on after the restart
    await store.close()
    store = await Store.open(db)
    again = await store.next_to_send(batch_max=60)
    assert again == first, "a resend must be the same message, byte for byte"
    await store.acknowledge(again, {})
    rest = await store.next_to_send(batch_max=60)
    assert rest is not None and [e["sampledValue"][0]["value"] for e in rest.payload["meterValue"]] == ["2"]
    await store.close()


async def test_dropped_meter_values_and_alarms_leave_a_trace(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    await started(store)
    await store.queue_meter_values(1, "s1", sample(1), CLOCK)
    mv = await store.next_to_send()
    assert mv is not None
    await store.drop(mv, "refused 3 times", T0)
    await store.alarm(1, "StopTransaction refused 3 times", T0)
    assert await store.pending() == 0
    async with store._db.execute("SELECT kind, data FROM events WHERE kind IN ('dropped', 'alarm') ORDER BY id") as cursor:
        kinds = [row[0] for row in await cursor.fetchall()]
    assert kinds == ["dropped", "alarm"]
    await store.close()


async def test_concurrent_writers_share_one_connection(tmp_path: Path) -> None:
    """Pollers commit while the uplink freezes and acknowledges: no interleaved transactions, nothing lost."""
    store = await Store.open(tmp_path / "gw.db")
    await started(store)

    async def poller() -> None:
        for v in range(200):
            await store.queue_meter_values(1, "s1", sample(v), CLOCK)
            await store.commit([StatusChanged(1, "Charging", "NoError", None, T0 + v)], CLOCK)

    delivered: list[str] = []

    async def uplink() -> None:
        while len(delivered) < 200:
            message = await store.next_to_send(batch_max=7)
            if message is None:
                await asyncio.sleep(0)
                continue
            delivered.extend(e["sampledValue"][0]["value"] for e in message.payload["meterValue"])
            await store.acknowledge(message, {})

    await asyncio.gather(poller(), uplink())
    assert delivered == [str(v) for v in range(200)]
    await store.close()


async def test_a_corrupt_database_is_moved_aside_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "gw.db"
    store = await Store.open(db)
    await store.commit([TransactionStarted(1, Transaction("s1", "T", 0, T0))], CLOCK)
    await store.close()
    raw = bytearray(db.read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)  # scribble over the schema page, as a torn flash write could
    db.write_bytes(bytes(raw))

    store = await Store.open(db)
    assert await store.pending() == 0, "a fresh, empty store"
    assert (tmp_path / "gw.db.corrupt-1").exists()
    assert any("corrupt" in r.message and r.levelname == "CRITICAL" for r in caplog.records)
    async with store._db.execute("SELECT data FROM events WHERE kind = 'alarm'") as cursor:
        assert "gw.db.corrupt-1" in (await cursor.fetchone())[0]
    await store.close()


async def test_not_a_database_at_all(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    db.write_text("this is not SQLite\n" * 100)
    store = await Store.open(db)
    assert (tmp_path / "gw.db.corrupt-1").read_text().startswith("this is not SQLite")
    await store.close()


async def test_a_full_disk_is_a_store_error_and_nothing_half_written(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    async with store._db.execute("PRAGMA page_count") as cursor:
        pages = (await cursor.fetchone())[0]
    await store._db.execute(f"PRAGMA max_page_count = {pages + 1}")  # SQLITE_FULL, as on a full flash
    big = [{"timestamp": CLOCK.utc_iso(T0), "sampledValue": [{"value": "x" * 2000}]}]
    await store.commit([TransactionStarted(1, Transaction("s1", "T", 0, T0))], CLOCK)
    with pytest.raises(StoreError, match="full"):
        for _ in range(100):
            await store.queue_meter_values(1, "s1", big, CLOCK)
    before = await store.pending()
    await store._db.execute("PRAGMA max_page_count = 1073741823")
    await store.queue_meter_values(1, "s1", big, CLOCK)  # space again: the store works on
    assert await store.pending() == before + 1
    await store.close()


def test_thinning_keeps_ends_and_every_kth() -> None:
    from gateway.store import _thinned

    rows = [(s, "a") for s in range(1, 11)] + [(s, "b") for s in (20, 21, 22)]
    assert _thinned(rows, 2) == [2, 4, 6, 8, 21]  # a keeps 1,3,5,7,9 and its last, 10; b keeps 20, 22
    assert _thinned([(5, "a")], 2) == [] and _thinned([(5, "a"), (6, "a")], 4) == []


async def test_over_budget_samples_are_thinned_never_start_or_stop(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db", budget_mb=0.02)  # 20 kB
    sessions = [Transaction(f"s{i}", "T", 0, T0) for i in (1, 2)]
    for i, tx in enumerate(sessions, start=1):
        await store.commit([TransactionStarted(i, tx)], CLOCK)
    for v in range(100):
        for i, tx in enumerate(sessions, start=1):
            entry = [{"timestamp": CLOCK.utc_iso(T0 + v), "sampledValue": [{"value": f"{v:05d}", "measurand": "Energy.Active.Import.Register"}] * 3}]
            await store.queue_meter_values(i, tx.key, entry, CLOCK)
    for i, tx in enumerate(sessions, start=1):
        await store.commit([TransactionStopped(i, tx, 99, "EVDisconnected", T0 + 100)], CLOCK)
    assert await store.outbox_bytes() <= 20_000 + 2_000  # the Stops came after the last thinning
    async with store._db.execute("SELECT action, session_key, payload FROM outbox ORDER BY seq") as cursor:
        rows = list(await cursor.fetchall())
    assert [a for a, _, _ in rows].count("StartTransaction") == 2 and [a for a, _, _ in rows].count("StopTransaction") == 2
    for key in ("s1", "s2"):
        values = [int(json.loads(p)["meterValue"][0]["sampledValue"][0]["value"]) for a, k, p in rows if a == "MeterValues" and k == key]
        assert values[0] == 0 and values[-1] == 99, "first and last sample of a session are kept"
        assert values == sorted(values) and 10 < len(values) < 100
    async with store._db.execute("SELECT count(*) FROM events WHERE kind = 'alarm'") as cursor:
        assert (await cursor.fetchone())[0] >= 1
    await store.close()


async def test_stamps_from_an_unset_clock_are_fixed_before_sending(tmp_path: Path) -> None:
    clock = HandClock()  # 1970: no RTC, no NTP yet
    store = await Store.open(tmp_path / "gw.db", clock)
    tx = Transaction("s1", "T", 0, clock.wall())
    await store.commit([TransactionStarted(1, tx)], clock)
    with pytest.raises(ClockUnset):
        await store.next_to_send(clock=clock)
    clock.advance(600)
    clock.system = 1_790_000_000.0  # NTP steps the clock, 600 s after the plug-in
    start = await store.next_to_send(clock=clock)
    assert start is not None and start.payload["timestamp"] == "2026-09-21T14:03:20.000Z"  # 10 min before now
    assert await store.next_to_send(clock=clock) == start, "fixed once, then frozen"
    await store.close()


async def test_unset_stamps_of_merged_samples_are_fixed_each(tmp_path: Path) -> None:
    clock = HandClock()
    store = await Store.open(tmp_path / "gw.db", clock)
    await started(store, started_wall=NTP_LIKE)
    for _ in range(3):
        await store.queue_meter_values(1, "s1", [{"timestamp": clock.utc_iso(clock.wall()), "sampledValue": [{"value": "1"}]}], clock)
        clock.advance(60)
    clock.system = NTP_LIKE  # set; monotonic went on
    mv = await store.next_to_send(batch_max=10, clock=clock)
    assert mv is not None
    assert [e["timestamp"] for e in mv.payload["meterValue"]] == ["2026-09-21T14:10:20.000Z", "2026-09-21T14:11:20.000Z", "2026-09-21T14:12:20.000Z"]
    await store.close()


async def test_energy_charged_while_the_master_was_down_is_reported(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    assert await store.reconcile_energy(1, 5000, False, CLOCK) == 0, "first contact ever: only a mark"
    tx = Transaction("s1", "T", 5000, T0)
    await store.commit([TransactionStarted(1, tx)], CLOCK)
    await store.commit([TransactionStopped(1, tx, 7000, "EVDisconnected", T0 + 600)], CLOCK)
    # The master was down; an EV came, charged 1.5 kWh and left. The register says so at the next contact.
    assert await store.reconcile_energy(1, 8500, False, CLOCK) == 1500
    # An open session owns what its EV took meanwhile: nothing to report.
    assert await store.reconcile_energy(1, 9000, True, CLOCK) == 0
    assert await store.reconcile_energy(1, 9005, False, CLOCK) == 0, "a few Wh are rounding"
    assert await store.reconcile_energy(1, 100, False, CLOCK) == 0, "a register that went back is an alarm, not energy"
    async with store._db.execute("SELECT action, payload FROM outbox WHERE action = 'DataTransfer'") as cursor:
        rows = list(await cursor.fetchall())
    assert len(rows) == 1
    data = json.loads(json.loads(rows[0][1])["data"])
    assert data["energyWh"] == 1500 and data["meterFrom"] == 7000 and data["meterTo"] == 8500
    assert data["from"] == "2026-09-21T14:23:20.000Z"
    async with store._db.execute("SELECT kind FROM events WHERE kind IN ('unrecorded-energy', 'alarm') ORDER BY id") as cursor:
        assert [r[0] for r in await cursor.fetchall()] == ["unrecorded-energy", "alarm"]
    await store.close()


async def test_a_locked_database_is_not_corrupt(tmp_path: Path) -> None:
    """A technician's sqlite3 shell holding the write lock must never get a healthy file moved aside."""
    db = tmp_path / "gw.db"
    store = await Store.open(db)
    await store.commit([TransactionStarted(1, Transaction("s1", "T", 0, T0))], CLOCK)
    await store.close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            await Store.open(db)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not (tmp_path / "gw.db.corrupt-1").exists()
    store = await Store.open(db)
    assert await store.pending() == 1, "the queued StartTransaction is still there"
    await store.close()


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_a_writer_cancelled_at_any_step_leaves_the_store_usable(tmp_path: Path, turns: int) -> None:
    """aiosqlite runs a statement on its thread even when the awaiting task is cancelled. A cancel that
    landed on BEGIN left the shared connection inside a transaction, and every later write failed with
    "cannot start a transaction within a transaction" until a restart (field failure 12's test, in CI)."""
    store = await Store.open(tmp_path / "gw.db")
    writer = asyncio.create_task(store.save_state("first", {"n": 1}))
    for _ in range(turns):  # cancel at BEGIN, at the statement, at COMMIT, or after
        await asyncio.sleep(0)
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await store.save_state("second", {"n": 2})
    assert await store.load_state("second") == {"n": 2}
    assert await store.load_state("first") in (None, {"n": 1}), "all of a write or nothing of it"
    await store.close()
