"""Helpers of the uplink tests: an uplink running for a block, a drained outbox, an offline session."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from gateway.clock import Clock
from gateway.session import StatusChanged, Transaction, TransactionStarted, TransactionStopped
from gateway.settings import ChargePointInfo
from gateway.store import Store
from gateway.uplink import Uplink

CLOCK = Clock()
INFO = ChargePointInfo("CP-UPLINK-1", "OpenGateway", "Cluster", "SN-1")


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[None]:
    """The uplink's task for the length of a block, cancelled and awaited after it."""
    task = asyncio.create_task(uplink.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def drained(store: Store, timeout: float = 10.0) -> None:
    """Wait until every queued message was answered and dropped."""
    async with asyncio.timeout(timeout):
        while await store.pending():
            await asyncio.sleep(0.05)


def statuses() -> list[StatusChanged]:
    return [StatusChanged(1, "Available", "NoError", None, CLOCK.wall()), StatusChanged(2, "Faulted", "OtherError", "slave not answering", CLOCK.wall())]


async def offline_session(store: Store) -> None:
    """A whole session recorded while the uplink was down: Start, a MeterValues, Stop."""
    t0 = CLOCK.wall() - 600
    tx = Transaction("offline-1", "TAG-1", 1000, t0)
    await store.commit([TransactionStarted(2, tx)], CLOCK)
    await store.queue_meter_values(2, tx.key, [{"timestamp": CLOCK.utc_iso(t0 + 60), "sampledValue": [{"value": "1500", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}], CLOCK)
    await store.commit([TransactionStopped(2, tx, 2500, "EVDisconnected", t0 + 300)], CLOCK)
