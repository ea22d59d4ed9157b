"""Keeps each uplink's data usage in the store and raises its monthly budget alarms (rules in gateway.data_usage).

The uplinks hand in portions of traffic: at least once a minute while connected, and
once when each connection ends. A portion is held in memory until it can be written:
while the clock is unset (a box without RTC believes it is 1970, and no usage may
land on a 1970 day), and while the store refuses it (a full disk). A held portion is
added to the UTC day on which it is written. That day is right unless midnight passed
while the portion was held: the clock is set during the first connection (by NTP or
the backend's time), and a refused write is retried with the next portion. What is
held is lost if the daemon stops meanwhile, like the bytes of an open connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from gateway.clock import EARLIEST_VALID, Clock
from gateway.data_usage import alarm_text, budget_bytes, day_key, month_of, thresholds_crossed
from gateway.errors import StoreError
from gateway.settings import UplinkSettings
from gateway.store import Store, run_to_the_end
from gateway.traffic import Traffic

log = logging.getLogger("gateway.usage")


class UsageRecorder:
    """The one writer of data usage, shared by the uplinks."""

    def __init__(self, store: Store, clock: Clock, uplinks: Sequence[UplinkSettings]) -> None:
        self._store = store
        self._clock = clock
        self._budgets = {u.name: budget_bytes(u.monthly_budget_mb) for u in uplinks}
        self._held: dict[str, Traffic] = {}
        self._lock = asyncio.Lock()
        self._waiting_for_clock = False  # each outage is logged once when it starts and once when it ends
        self._store_failing = False

    @property
    def held(self) -> dict[str, Traffic]:
        """The traffic not yet written, by uplink."""
        return dict(self._held)

    async def record(self, uplink_name: str, portion: Traffic) -> None:
        """Count a portion of an uplink's traffic; a StoreError never comes out (the portion is held and retried)."""
        if portion.sent < 0 or portion.received < 0:
            raise ValueError(f"uplink {uplink_name}: traffic cannot be negative: {portion}")
        if portion.total:
            self._held[uplink_name] = self._held.get(uplink_name, Traffic()) + portion
        if self._held:
            # Even when the caller is cancelled (its connection ends, the daemon stops), a write that
            # began is finished and accounted for: a portion is never both written and still held.
            await run_to_the_end(self._write_held())

    async def _write_held(self) -> None:
        async with self._lock:
            wall = self._clock.wall()
            if wall < EARLIEST_VALID:
                if not self._waiting_for_clock:
                    log.info("the clock is not set yet: data usage is kept in memory until it is")
                self._waiting_for_clock = True
                return
            if self._waiting_for_clock:
                log.info("the clock is set: data usage counted meanwhile goes to %s (UTC)", day_key(wall))
                self._waiting_for_clock = False
            for name in list(self._held):
                if not await self._write(name, wall):
                    return

    async def _write(self, name: str, wall: float) -> bool:
        """Write what is held for one uplink, with the alarms it raises; False (and still held) if the store refused."""
        portion = self._held.pop(name)
        day = day_key(wall)
        month = month_of(day)
        budget = self._budgets.get(name)
        try:
            before = (await self._store.month_usage(name, month)).total
            after = before + portion.total
            alarms = [] if budget is None else [alarm_text(name, month, after, budget, p) for p in thresholds_crossed(before, after, budget)]
            await self._store.add_usage(name, day, portion, wall, alarms)
        except StoreError as exc:
            self._held[name] = self._held.get(name, Traffic()) + portion
            if not self._store_failing:
                log.error("cannot store data usage, keeping it in memory: %s", exc)
            self._store_failing = True
            return False
        if self._store_failing:
            log.info("data usage is stored again")
            self._store_failing = False
        for text in alarms:
            log.warning(text)
        return True
