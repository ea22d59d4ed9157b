"""The daemon: buses, pollers and the uplink, side by side in one TaskGroup.

Every task has an owner (the TaskGroup); the first task that dies unexpectedly
takes the daemon down, so systemd restarts it cleanly instead of it limping on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from gateway.clock import Clock
from gateway.errors import StoreError
from gateway.modbus_line import build_lines, line_key
from gateway.poller import ConnectorPoller
from gateway.session import Connector, Effect, State, StatusChanged, TransactionStarted, TransactionStopped
from gateway.settings import Config
from gateway.store import Store
from gateway.uplink import Uplink

log = logging.getLogger("gateway.daemon")


class Daemon:
    def __init__(self, config: Config, store: Store, clock: Clock) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.connectors: dict[int, Connector] = {}
        self.statuses: dict[int, StatusChanged] = {}
        self._pending: list[Effect] = []  # effects not yet committed (the disk refused them)
        self._commit_lock = asyncio.Lock()
        self.uplink = Uplink(
            config.charge_point, config.backend, config.ocpp, store, clock,
            statuses=lambda: [self.statuses[c] for c in sorted(self.statuses)],
        )
        self.lines = build_lines(config)
        self.pollers: list[ConnectorPoller] = []

    async def recover(self) -> None:
        """Rebuild connectors; sessions still open in the store are resumed, and the next poll reconciles them."""
        open_tx = await self.store.open_sessions()
        wall = self.clock.wall()
        for c in self.config.connectors:
            tx = open_tx.get(c.id)
            connector = Connector(c.id, State.SUSPENDED_EVSE if tx else State.AVAILABLE, tx)
            if tx:
                log.info("connector %d: resuming session %s", c.id, tx.key)
            self.connectors[c.id] = connector
            self.statuses[c.id] = StatusChanged(c.id, connector.state.ocpp_status, "NoError", None, wall)
            self.pollers.append(ConnectorPoller(
                c, self.config.bus(c.bus), self.config.profile_of(c), self.lines[line_key(self.config, c)],
                connector, self.clock, self.handle_effects, self.queue_meter_values,
                id_tag=c.id_tag or self.config.authorization.free_charging_id_tag,
                measurands=self.config.ocpp.meter_values_sampled_data,
                sample_interval_s=self.config.ocpp.meter_value_sample_interval_s,
                on_first_contact=self.reconcile_energy,
            ))

    async def handle_effects(self, effects: Sequence[Effect]) -> bool:
        """Commit first; only a committed effect is reported to the backend (or acted on): False while the store refuses."""
        if not effects and not self._pending:
            return True
        async with self._commit_lock:
            batch = self._pending + list(effects)
            try:
                await self.store.commit(batch, self.clock)
            except StoreError as exc:
                if not self._pending:
                    log.error("cannot store events, keeping them in memory: %s", exc)
                self._pending = batch
                return False
            self._pending = []
        for effect in batch:
            if isinstance(effect, StatusChanged):
                self.statuses[effect.connector_id] = effect
                self.uplink.status_changed(effect)
                log.info("connector %d: %s%s", effect.connector_id, effect.status, f" ({effect.info})" if effect.info else "")
            elif isinstance(effect, TransactionStarted):
                log.info("connector %d: session %s started, idTag %s, meter %d Wh", effect.connector_id, effect.transaction.key, effect.transaction.id_tag, effect.transaction.meter_start_wh)
            elif isinstance(effect, TransactionStopped):
                used = effect.meter_stop_wh - effect.transaction.meter_start_wh
                log.info("connector %d: session %s stopped (%s), %d Wh", effect.connector_id, effect.transaction.key, effect.reason, used)
        if any(isinstance(e, (TransactionStarted, TransactionStopped)) for e in batch):
            self.uplink.outbox_changed()
        return True

    async def reconcile_energy(self, connector_id: int, energy_wh: int, in_transaction: bool) -> None:
        try:
            if await self.store.reconcile_energy(connector_id, energy_wh, in_transaction, self.clock):
                self.uplink.outbox_changed()
        except StoreError as exc:
            log.error("connector %d: energy reconciliation not stored: %s", connector_id, exc)

    async def queue_meter_values(self, connector_id: int, session_key: str, entries: Sequence[dict]) -> None:
        try:
            await self.store.queue_meter_values(connector_id, session_key, entries, self.clock)
        except StoreError as exc:
            log.error("connector %d: meter values not stored: %s", connector_id, exc)
            return
        self.uplink.outbox_changed()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for line in self.lines.values():
                tg.create_task(line.run(), name=f"line {line.name}")
            for poller in self.pollers:
                tg.create_task(poller.run(), name=f"connector {poller.settings.id}")
            tg.create_task(self.uplink.run(), name="uplink")


async def run_daemon(config: Config, clock: Clock | None = None) -> None:
    """Open the store, resume, and run until cancelled."""
    clock = clock or Clock()
    store = await Store.open(config.storage.path, clock, config.storage.outbox_budget_mb)
    try:
        daemon = Daemon(config, store, clock)
        await daemon.recover()
        log.info(
            "charge point %s: %d connectors on %d lines, %d queued messages",
            config.charge_point.identity, len(daemon.connectors), len(daemon.lines), await store.pending(),
        )
        await daemon.run()
    finally:
        await store.close()
