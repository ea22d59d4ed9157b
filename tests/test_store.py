"""The SQLite store on a real file: order, transactionId resolution, survival across reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.clock import Clock
from gateway.errors import LocalProtocolError
from gateway.session import StatusChanged, Transaction, TransactionStarted, TransactionStopped
from gateway.store import Store

CLOCK = Clock()
T0 = 1_790_000_000.0  # 2026-09


async def test_session_messages_in_order_with_transaction_id_resolved(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    store = await Store.open(db)
    tx = Transaction("s1", "TAG", 1000, T0)
    await store.commit([TransactionStarted(2, tx), StatusChanged(2, "SuspendedEVSE", "NoError", None, T0)], CLOCK)
    await store.queue_meter_values(2, "s1", [{"timestamp": CLOCK.utc_iso(T0 + 60), "sampledValue": [{"value": "1200"}]}])
    await store.commit([TransactionStopped(2, tx, 1500, "EVDisconnected", T0 + 120)], CLOCK)
    assert await store.pending() == 3
    assert (await store.open_sessions()) == {}

    head = await store.head()
    assert head is not None and head.action == "StartTransaction"
    assert head.payload == {"connectorId": 2, "idTag": "TAG", "meterStart": 1000, "timestamp": "2026-09-21T14:13:20.000Z"}
    first_id = head.message_id
    await store.close()

    # Reopen: the head is the same message with the same id (a resend is byte-identical).
    store = await Store.open(db)
    again = await store.head()
    assert again == head and again.message_id == first_id
    await store.acknowledge(again, {"transactionId": 77, "idTagInfo": {"status": "Accepted"}})

    mv = await store.head()
    assert mv is not None and mv.action == "MeterValues" and mv.payload["transactionId"] == 77
    await store.acknowledge(mv, {})
    stop = await store.head()
    assert stop is not None and stop.action == "StopTransaction"
    assert stop.payload["transactionId"] == 77 and stop.payload["meterStop"] == 1500
    await store.acknowledge(stop, {})
    assert await store.head() is None and await store.pending() == 0
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
    head = await store.head()
    assert head is not None
    # Deleting the Start without an answer breaks the FIFO invariant; head() refuses to invent an id.
    await store._write([("DELETE FROM outbox WHERE seq = ?", (head.seq,))])
    with pytest.raises(LocalProtocolError):
        await store.head()
    await store.close()


async def test_attempts_are_counted_and_kept(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    await store.commit([TransactionStarted(1, Transaction("s1", "T", 1, T0))], CLOCK)
    head = await store.head()
    assert head is not None
    assert await store.count_attempt(head) == 1
    again = await store.head()
    assert again is not None and again.attempts == 1
    await store.close()
