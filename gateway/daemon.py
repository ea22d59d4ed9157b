"""The daemon: buses, pollers and the uplink, side by side in one TaskGroup.

Every task has an owner (the TaskGroup); the first task that dies unexpectedly
takes the daemon down, so systemd restarts it cleanly instead of it limping on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.authorizer import Authorizer
from gateway.charging_profiles import ChargingProfile, TxContext
from gateway.clock import Clock
from gateway.config import load_config_with_warnings
from gateway.control import Control
from gateway.control_socket import ControlServer
from gateway.errors import ConfigError, StoreError
from gateway.load_sharing import Demand, SnapshotError
from gateway.modbus_line import build_lines, line_key, meter_line_key
from gateway.modem import ModemMonitor
from gateway.poller import ConnectorPoller, MeterLink
from gateway.reading import Reading
from gateway.reload import plan_reload
from gateway.sd_notify import Notifier
from gateway.session import Connector, Effect, State, StatusChanged, TransactionStarted, TransactionStopped
from gateway.settings import Config, ConnectorSettings
from gateway.site_load import Outlet, SiteLoad
from gateway.store import QueuedMessage, Store
from gateway.uplink import Uplink
from gateway.usage_recorder import UsageRecorder

RESET_GRACE_S = 1.0  # the Reset.conf goes out before the transactions are stopped and the daemon restarts
RESET_DRAIN_S = 10.0  # how long the StopTransactions of a reset get to reach the backend before the restart
FIRST_MODEM_POLL_S = 10.0  # the first boot waits at most this long for the modems' ICCID and IMSI
SITE_SNAPSHOT_S = 60.0  # the load sharer's turns are kept this often (a restart loses at most this much)
STOP_LINES_S = 5.0  # SIGTERM: the longest a line's last transaction may take (systemd waits 90 s by default)
STATUS_EVERY_S = 10.0  # systemd's STATUS= line is refreshed this often (and the watchdog at half its period)


class StopRequested(Exception):
    """SIGTERM or SIGINT: the daemon has stopped its buses and flushed its store; run_daemon returns."""


class ResetRequested(Exception):
    """The backend asked for a Reset; run_daemon restarts the process (soft) or runs the reboot command (hard)."""

    def __init__(self, hard: bool) -> None:
        super().__init__("hard reset" if hard else "soft reset")
        self.hard = hard


@dataclasses.dataclass
class _RemoteStart:
    id_tag: str
    deadline: float  # monotonic: ConnectionTimeOut after the RemoteStartTransaction
    profile: ChargingProfile | None


log = logging.getLogger("gateway.daemon")


class _Tasks(asyncio.TaskGroup):
    """A TaskGroup that keeps its tasks: systemd's watchdog is fed only while every one of them runs."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[asyncio.Task[Any]] = []

    def create_task(self, coro: Any, **options: Any) -> asyncio.Task[Any]:
        task = super().create_task(coro, **options)
        self.tasks.append(task)
        return task


def _fields(effect: TransactionStarted | TransactionStopped) -> dict[str, object]:
    """A session's journald fields (TRANSACTION= is the gateway's session key: the backend's transactionId may come later)."""
    return {"connector": effect.connector_id, "transaction": effect.transaction.key}


class Daemon:
    def __init__(self, config: Config, store: Store, clock: Clock, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier(None, None)
        self.store = store
        self.clock = clock
        self.connectors: dict[int, Connector] = {}
        self.statuses: dict[int, StatusChanged] = {}
        self._pending: list[Effect] = []  # effects not yet committed (the disk refused them)
        self._commit_lock = asyncio.Lock()
        self.control = Control(config, store, clock, cluster=self)
        self.modems = {u.name: ModemMonitor(u.modem) for u in config.uplinks if u.modem is not None}
        self.data_usage = UsageRecorder(store, clock, config.uplinks)
        self.uplink = Uplink(
            config.charge_point, config.backend, config.ocpp, store, clock,
            statuses=lambda: [self.statuses[c] for c in sorted(self.statuses)],
            handlers=self.control.handlers(),
            readings=self._readings,
            on_answer=self._answered,
            uplinks=config.uplinks,
            failover=config.failover,
            security_profile=lambda: self.control.configuration.int_value("SecurityProfile"),
            auth_keys=self.control.auth_keys,
            boot_fields=self._sim_ids,
            record_traffic=self.data_usage.record,
        )
        self.authorizer = Authorizer(self.control, clock, self.uplink.authorize, self.uplink.connected.is_set)
        self._deauthorized: set[str] = set()  # sessions the backend refused the idTag of, kept without current
        # Connectors whose session was stopped with the EV still plugged: after a restart they wait for
        # the EV to leave, so free charging does not open a session the user ended (remote stop, reset).
        self._finishing: set[int] = set()
        self.lines = build_lines(config)
        self.pollers: list[ConnectorPoller] = []
        self.site = SiteLoad(
            [
                Outlet(c.id, config.site_phases(c), config.profile_of(c).min_current_a, config.max_current_a(c))
                for c in config.connectors
            ],
            config.site.phase_limit_a, config.site.rotation_s,
        )
        self._shared: dict[int, tuple[float, str]] = {}  # the last share logged per connector, and why
        self._own_limit_a: dict[int, float] = {}  # each connector's max with its own charging profiles, at its last poll
        self._remote_starts: dict[int, _RemoteStart] = {}
        # Free charging: every plug-in starts a session with this idTag (the connector's own, else the site's).
        self._free_tags = {c.id: c.id_tag or config.authorization.free_charging_id_tag for c in config.connectors}
        self._reset = asyncio.Event()
        self._reset_hard = False
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._tasks: _Tasks | None = None
        self._queued = 0  # outbox depth at the last status line

    async def recover(self) -> None:
        """Rebuild connectors; sessions still open in the store are resumed, and the next poll reconciles them."""
        await self.control.load()
        if (snapshot := await self.store.load_state("load_sharing")) is not None:
            try:
                self.site.restore(snapshot, self.clock.monotonic())
            except SnapshotError as exc:
                log.error("kept load-sharing turns could not be restored, starting afresh: %s", exc)
        self.uplink.station_status = self.control.station_status()
        self._deauthorized = {str(k) for k in await self._kept_list("deauthorized")}
        self._finishing = {int(c) for c in await self._kept_list("finishing")}
        open_tx = await self.store.open_sessions()
        wall = self.clock.wall()
        now = datetime.fromtimestamp(wall, UTC)
        for c in self.config.connectors:
            tx = open_tx.get(c.id)
            state = State.SUSPENDED_EVSE if tx else State.FINISHING if c.id in self._finishing else State.AVAILABLE
            connector = Connector(
                c.id, state, tx,
                operative=self.control.operative(c.id), reserved=self.control.reservations.is_reserved(c.id, now),
                stop_on_unplug=self.control.configuration.bool_value("StopTransactionOnEVSideDisconnect"),
            )
            if tx:
                log.info("connector %d: resuming session %s", c.id, tx.key, extra={"connector": c.id, "transaction": tx.key})
            self.connectors[c.id] = connector
            self.statuses[c.id] = StatusChanged(c.id, connector.status, "NoError", None, wall)
            self.pollers.append(ConnectorPoller(
                c, self.config.bus(c.bus), self.config.profile_of(c), self.lines[line_key(self.config, c)],
                connector, self.clock, self.handle_effects, self.queue_meter_values,
                start_policy=self._start_policy,
                measurands=self.config.ocpp.meter_values_sampled_data,
                sample_interval_s=self.config.ocpp.meter_value_sample_interval_s,
                on_first_contact=self.reconcile_energy,
                limit_source=self.current_limit_a,
                failsafe_a=self.site.failsafe_a(c.id, self.config.site.failsafe_current_a),
                meter=self._meter_link(c),
            ))

    def _meter_link(self, c: ConnectorSettings) -> MeterLink | None:
        profile, meter, key = self.config.meter_profile_of(c), c.meter, meter_line_key(self.config, c)
        if profile is None or meter is None or key is None:
            return None
        bus = self.config.bus(meter.bus)
        return MeterLink(profile, self.lines[key], meter.unit, bus.request_timeout_s or profile.request_timeout_s)

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
            if isinstance(effect, TransactionStarted) or (isinstance(effect, StatusChanged) and effect.status == "Available"):
                self.authorizer.forget(effect.connector_id)
            if isinstance(effect, StatusChanged):
                self.statuses[effect.connector_id] = effect
                self.uplink.status_changed(effect)
                log.info("connector %d: %s%s", effect.connector_id, effect.status, f" ({effect.info})" if effect.info else "", extra={"connector": effect.connector_id})
            elif isinstance(effect, TransactionStarted):
                log.info(
                    "connector %d: session %s started, idTag %s, meter %d Wh", effect.connector_id, effect.transaction.key,
                    effect.transaction.id_tag, effect.transaction.meter_start_wh, extra=_fields(effect),
                )
            elif isinstance(effect, TransactionStopped):
                used = effect.meter_stop_wh - effect.transaction.meter_start_wh
                log.info(
                    "connector %d: session %s stopped (%s), %d Wh", effect.connector_id, effect.transaction.key, effect.reason, used,
                    extra=_fields(effect),
                )
        if any(isinstance(e, (TransactionStarted, TransactionStopped)) for e in batch):
            self.uplink.outbox_changed()
        await self._keep_finishing()
        for effect in batch:
            if isinstance(effect, TransactionStarted):
                await self._started(effect)
            elif isinstance(effect, TransactionStopped):
                await self.control.transaction_ended(effect.connector_id)
        return True

    async def _started(self, effect: TransactionStarted) -> None:
        remote = self._remote_starts.pop(effect.connector_id, None)
        held = self.control.reservations.reservation_for(effect.connector_id)
        # The reservation may have expired between the poll that chose its tag and this commit.
        if held is not None and held.reservation_id == effect.transaction.reservation_id:
            self.control.reservations.consume(effect.connector_id)
            await self.control.apply_reservations()
        if remote is not None and remote.profile is not None and remote.id_tag == effect.transaction.id_tag:
            await self.control.install_tx_profile(effect.connector_id, remote.profile)

    # --- what the backend's commands need (gateway.control.Cluster) -----------------------

    def _start_policy(self, connector_id: int, reading: Reading) -> tuple[str, int | None] | None:
        """The idTag that opens a transaction on a plugged EV, or None (nobody yet).

        A pending remote start first (authorized again if AuthorizeRemoteTxRequests), then
        the tag the slave's reader shows once it is authorized, then free charging, which
        applies only where no tag is shown. On a reserved connector only a tag the
        reservation admits may start, and the transaction carries the reservationId (§5.13).
        """
        remote = self._remote_starts.get(connector_id)
        if remote is not None and self.clock.monotonic() > remote.deadline:
            del self._remote_starts[connector_id]  # ConnectionTimeOut: no EV came
            remote = None
        if remote is not None:
            tag: str | None = remote.id_tag
            if self.control.configuration.bool_value("AuthorizeRemoteTxRequests"):
                tag = self.authorizer.verdict(connector_id, remote.id_tag)
        elif reading.id_tag is not None:
            tag = self.authorizer.verdict(connector_id, reading.id_tag)
        else:
            self.authorizer.forget(connector_id)  # the card went: a card shown again is judged afresh
            tag = self._free_tags.get(connector_id)
        if tag is None:
            return None
        reservations, now = self.control.reservations, datetime.fromtimestamp(self.clock.wall(), UTC)
        if not reservations.may_start(connector_id, tag, self.authorizer.parent_of(tag), now):
            return None
        held = reservations.reservation_for(connector_id) if reservations.is_reserved(connector_id, now) else None
        return tag, held.reservation_id if held else None

    async def _answered(self, message: QueuedMessage, result: dict) -> None:
        """The idTagInfo of a Start/StopTransaction answer: into the cache; a refused tag ends its session (§5.20)."""
        info, tag = result.get("idTagInfo"), message.payload.get("idTag")
        if info is None or tag is None:
            return
        await self.authorizer.learn(tag, info)
        if message.action != "StartTransaction" or info.get("status") == "Accepted":
            return
        connector = next((c for c in self.connectors.values() if c.transaction and c.transaction.key == message.session_key), None)
        if connector is None:
            return  # answered after the session ended (a drain after an outage)
        log.warning(
            "connector %d: the backend refused idTag %s (%s)", connector.id, tag, info.get("status"),
            extra={"connector": connector.id, "transaction": message.session_key},
        )
        if self.control.configuration.bool_value("StopTransactionOnInvalidId"):
            await self.handle_effects(connector.stop("DeAuthorized", self.clock.wall()))
        elif message.session_key is not None:
            self._deauthorized.add(message.session_key)  # the session stays open, without current
            await self._keep_deauthorized()

    async def _keep_finishing(self) -> None:
        finishing = {cid for cid, c in self.connectors.items() if c.state is State.FINISHING}
        if finishing != self._finishing and await self._keep("finishing", sorted(finishing)):
            self._finishing = finishing

    async def _keep_deauthorized(self) -> None:
        self._deauthorized &= {c.transaction.key for c in self.connectors.values() if c.transaction}
        await self._keep("deauthorized", sorted(self._deauthorized))

    async def _keep(self, name: str, data: object) -> bool:
        """Keep a piece of the daemon's state across restarts; a full disk loses it, never the daemon."""
        try:
            await self.store.save_state(name, data)
        except StoreError as exc:
            log.warning("%s not kept: %s", name, exc)
            return False
        return True

    async def _kept_list(self, name: str) -> list[Any]:
        kept = await self.store.load_state(name)
        return kept if isinstance(kept, list) else []

    # --- site load management -----------------------------------------------------------

    async def current_limit_a(self, connector_id: int) -> float:
        """What a connector in a transaction may offer: its own limits, then its share of the site limit."""
        tx = self.connectors[connector_id].transaction
        if tx is not None and tx.key in self._deauthorized:
            return 0.0  # StopTransactionOnInvalidId false: SuspendedEVSE until the session ends
        own, outlet_max = await self.control.limit_a(connector_id), self.site.outlets[connector_id].max_a
        self._own_limit_a[connector_id] = outlet_max if own is None else min(outlet_max, own)
        now = self.clock.monotonic()
        station = self.control.station_limit_a()
        offered = {p.settings.id: p.offered_a for p in self.pollers}
        allowed = self.site.allowed_a(connector_id, now, self._demands(now), offered, station)
        why = self.site.why(connector_id, allowed)
        if self._shared.get(connector_id) != (allowed, why):
            self._shared[connector_id] = (allowed, why)
            log.info("connector %d: site share %.1f A (%s)", connector_id, allowed, why, extra={"connector": connector_id})
        return allowed

    def _demands(self, now: float) -> list[Demand]:
        wall = self.clock.wall()
        out = []
        for p in self.pollers:
            cid, outlet, tx = p.settings.id, self.site.outlets[p.settings.id], p.connector.transaction
            reading = p.last_reading
            out.append(Demand(
                cid, frozenset(outlet.phases), min_a=outlet.min_a,
                max_a=self._own_limit_a.get(cid, outlet.max_a),
                wants_current=tx is not None and tx.key not in self._deauthorized and p.online is True and p.session_committed,
                drawn_a=self.site.drawn(cid, reading.current_a) if reading is not None else None,
                since=now - max(0.0, wall - tx.started_wall) if tx is not None else now,
            ))
        return out

    async def _first_modem_polls(self) -> None:
        """The first BootNotification should carry the SIM's ids: the modems get a few seconds to tell them."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_MODEM_POLL_S):
                for monitor in self.modems.values():
                    await monitor.polled.wait()

    def _sim_ids(self) -> dict[str, str]:
        """BootNotification iccid and imsi: the SIM of the first modem that has told them."""
        for monitor in self.modems.values():
            if fields := monitor.health.boot_notification_fields():
                return fields
        return {}

    def _readings(self) -> dict[int, Reading]:
        return {p.settings.id: p.last_reading for p in self.pollers if p.last_reading is not None}

    async def transaction_context(self, connector_id: int) -> TxContext | None:
        tx = self.connectors[connector_id].transaction
        if tx is None:
            return None
        return TxContext(datetime.fromtimestamp(tx.started_wall, UTC), await self.store.transaction_id(tx.key))

    def request_remote_start(self, connector_id: int, id_tag: str, profile: ChargingProfile | None) -> None:
        timeout = self.control.configuration.int_value("ConnectionTimeOut")
        self._remote_starts[connector_id] = _RemoteStart(id_tag, self.clock.monotonic() + timeout, profile)

    async def stop_transaction(self, transaction_id: int, reason: str) -> bool:
        key = await self.store.session_key(transaction_id)
        for connector in self.connectors.values():
            if key is not None and connector.transaction is not None and connector.transaction.key == key:
                return await self.handle_effects(connector.stop(reason, self.clock.wall()))
        return False  # unknown, or already stopped

    def set_station_status(self, status: str) -> None:
        if self.uplink.station_status != status:
            self.uplink.station_status = status
            self.uplink.status_changed(StatusChanged(0, status, "NoError", None, self.clock.wall()))

    def request_reset(self, hard: bool) -> None:
        self._reset_hard = hard
        self._reset.set()

    @property
    def uncommitted(self) -> int:
        """Effects held in memory because the store refused them (a full disk): an alarm on the technician's status."""
        return len(self._pending)

    def trigger(self, message: str, connector_id: int | None) -> None:
        self.uplink.trigger(message, connector_id)

    def notify(self, action: str, payload: dict[str, Any]) -> asyncio.Future[None]:
        return self.uplink.notify(action, payload)

    def reconnect_after_answer(self, why: str) -> None:
        self.uplink.reconnect_after_answer(why)

    def settings_changed(self) -> None:
        """Configuration keys the backend changed take effect now (ping interval: at the next connection)."""
        cfg = self.control.configuration
        self.uplink.heartbeat_interval_s = cfg.int_value("HeartbeatInterval") or self.uplink.heartbeat_interval_s
        self.uplink.ocpp = dataclasses.replace(
            self.uplink.ocpp,
            transaction_message_attempts=cfg.int_value("TransactionMessageAttempts"),
            transaction_message_retry_interval_s=cfg.int_value("TransactionMessageRetryInterval"),
            meter_values_sampled_data=tuple(cfg.csl_value("MeterValuesSampledData")),
        )
        self.uplink.backend = dataclasses.replace(self.uplink.backend, ping_interval_s=cfg.int_value("WebSocketPingInterval"))
        for connector in self.connectors.values():
            connector.stop_on_unplug = cfg.bool_value("StopTransactionOnEVSideDisconnect")
        for poller in self.pollers:
            poller.sample_interval_s = cfg.int_value("MeterValueSampleInterval")
            poller.measurands = tuple(cfg.csl_value("MeterValuesSampledData"))

    async def _reset_when_asked(self) -> None:
        """Reset.req (OCPP 1.6 §5.12): stop every transaction with reason Soft/HardReset, then restart."""
        await self._reset.wait()
        await asyncio.sleep(RESET_GRACE_S)
        reason = "HardReset" if self._reset_hard else "SoftReset"
        wall = self.clock.wall()
        effects: list[Effect] = []
        for connector in self.connectors.values():
            if connector.transaction is not None:
                effects += connector.stop(reason, wall)
        await self.handle_effects(effects)
        # The backend should see the sessions end before the charge point goes (§5.12); whatever is
        # still queued after this is sent after the restart, as after any outage.
        with contextlib.suppress(TimeoutError, StoreError):
            async with asyncio.timeout(RESET_DRAIN_S):
                while self.uplink.connected.is_set() and await self.store.pending():
                    await asyncio.sleep(0.2)
        await self._wind_down()
        raise ResetRequested(self._reset_hard)

    async def _update_firmware(self) -> None:
        """UpdateFirmware (§5.19): once a new image is installed and reported, restart to run it.
        Not a Reset: the transactions go on, and the restarted daemon resumes them."""
        await self.control.firmware.run()
        await self._wind_down()
        raise ResetRequested(hard=False)

    async def _housekeeping(self) -> None:
        """Once a second: reservations that expired go (§5.13); now and then the load sharer's turns are kept."""
        kept_at = self.clock.monotonic()
        while True:
            await asyncio.sleep(1.0)
            await self.control.apply_reservations()
            if self.clock.monotonic() - kept_at >= SITE_SNAPSHOT_S:
                kept_at = self.clock.monotonic()
                await self._keep("load_sharing", self.site.snapshot(kept_at))

    async def reconcile_energy(self, connector_id: int, energy_wh: int, in_transaction: bool) -> None:
        try:
            if await self.store.reconcile_energy(connector_id, energy_wh, in_transaction, self.clock):
                self.uplink.outbox_changed()
        except StoreError as exc:
            log.error("connector %d: energy reconciliation not stored: %s", connector_id, exc, extra={"connector": connector_id})

    async def queue_meter_values(self, connector_id: int, session_key: str, entries: Sequence[dict]) -> None:
        try:
            await self.store.queue_meter_values(connector_id, session_key, entries, self.clock)
        except StoreError as exc:
            log.error("connector %d: meter values not stored: %s", connector_id, exc, extra={"connector": connector_id, "transaction": session_key})
            return
        self.uplink.outbox_changed()

    # --- the service: systemd, signals --------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def summary(self) -> str:
        """systemd's STATUS= line: what `systemctl status` shows at a glance."""
        up = self.uplink.status()
        link = f"uplink {up.uplink} " + ("connected" if up.connected else f"down ({up.problem or 'connecting'})")
        online = sum(1 for p in self.pollers if p.online)
        return f"{link}; {online}/{len(self.pollers)} slaves online; {self._queued} queued"

    async def _supervise(self) -> None:
        """STATUS= every few seconds, WATCHDOG=1 at half the watchdog period, only while every task runs."""
        if not self.notifier.enabled:
            return  # not under systemd: nobody to tell (the one task allowed to end)
        every = min(STATUS_EVERY_S, self.notifier.watchdog_s / 2) if self.notifier.watchdog_s else STATUS_EVERY_S
        while True:
            try:
                self._queued = await self.store.pending()
            except StoreError:
                pass  # the last count stays; the store's trouble is reported where it happens
            dead = [t.get_name() for t in self._tasks.tasks if t.done()] if self._tasks else []
            if dead:
                log.error("task %s ended: withholding the watchdog so that systemd restarts the daemon", ", ".join(dead))
                self.notifier.notify(STATUS=f"task {', '.join(dead)} ended")
            elif self.notifier.watchdog_s:
                self.notifier.notify(WATCHDOG=1, STATUS=self.summary())
            else:
                self.notifier.notify(STATUS=self.summary())
            await asyncio.sleep(every)

    async def _stop_when_asked(self) -> None:
        """SIGTERM: wind down, then the daemon ends (the store closes after)."""
        await self._stop.wait()
        log.info("stopping")
        self.notifier.notify(STOPPING=1, STATUS="stopping")
        await self._wind_down()
        raise StopRequested

    async def _wind_down(self) -> None:
        """Before every way out (stop, reset, a new firmware): the pollers stop between two commits, each
        line ends the transaction on the wire, and what the disk refused before is tried once more."""
        pollers = [t for t in self._tasks.tasks if t.get_name().startswith("connector ")] if self._tasks else []
        async with self._commit_lock:  # no commit is half done while the pollers go
            for task in pollers:
                task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_LINES_S):
                await asyncio.gather(*(line.finish() for line in self.lines.values()))
        if self._pending and not await self.handle_effects([]):
            log.error("%d events could not be stored before stopping: the next start reconciles from the slaves", len(self._pending))

    async def _reload_when_asked(self) -> None:
        """SIGHUP: read the config file again and take what can be taken while running (gateway.reload)."""
        while True:
            await self._reload.wait()
            self._reload.clear()
            self.notifier.notify(RELOADING=1, MONOTONIC_USEC=int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6))
            try:
                new, warnings = await asyncio.to_thread(load_config_with_warnings, self.config.source)
            except ConfigError as exc:
                log.error("reload refused, running on with the config as it was:\n%s", exc)
            else:
                for warning in warnings:
                    log.warning("%s", warning)
                self._apply(new)
            self.notifier.notify(READY=1, STATUS=self.summary())

    def _apply(self, new: Config) -> None:
        plan = plan_reload(self.config, new)
        self.config = plan.config
        self.control.reload(plan.config)
        self._free_tags = {c.id: c.id_tag or plan.config.authorization.free_charging_id_tag for c in plan.config.connectors}
        self.store.budget_bytes = int(plan.config.storage.outbox_budget_mb * 1e6)
        self.uplink.backend = dataclasses.replace(plan.config.backend, ping_interval_s=self.uplink.backend.ping_interval_s)
        if plan.reconnect:
            self.uplink.reconnect("the backend settings were reloaded")
        log.info("reloaded %s: %s", self.config.source, ", ".join(plan.applied) or "nothing changed that a reload takes")
        if plan.need_restart:
            log.warning("changed but kept until a restart (systemctl restart charger-gateway): %s", ", ".join(plan.need_restart))

    async def run(self) -> None:
        async with _Tasks() as tg:
            self._tasks = tg
            tg.create_task(ControlServer(self).run(), name="control socket")
            for line in self.lines.values():
                tg.create_task(line.run(), name=f"line {line.name}")
            for poller in self.pollers:
                tg.create_task(poller.run(), name=f"connector {poller.settings.id}")
            for name, monitor in self.modems.items():
                tg.create_task(monitor.run(), name=f"modem {name}")
            await self._first_modem_polls()
            tg.create_task(self.uplink.run(), name="uplink")
            tg.create_task(self._reset_when_asked(), name="reset")
            tg.create_task(self._housekeeping(), name="housekeeping")
            tg.create_task(self.authorizer.run(), name="authorizer")
            tg.create_task(self._update_firmware(), name="firmware")
            tg.create_task(self.control.diagnostics.run(), name="diagnostics")
            tg.create_task(self._supervise(), name="supervisor")
            tg.create_task(self._stop_when_asked(), name="stop")
            tg.create_task(self._reload_when_asked(), name="reload")


async def run_daemon(config: Config, clock: Clock | None = None, notifier: Notifier | None = None) -> None:
    """Open the store, resume, and run until SIGTERM/SIGINT (a clean stop) or cancelled.

    systemd hears READY=1 once the config is valid (it was loaded before) and the store is open
    and read back; SIGHUP reloads the config file.
    """
    clock = clock or Clock()
    notifier = notifier or Notifier.from_environment()
    store = await Store.open(config.storage.path, clock, config.storage.outbox_budget_mb)
    loop = asyncio.get_running_loop()
    try:
        daemon = Daemon(config, store, clock, notifier)
        await daemon.recover()
        log.info(
            "charge point %s: %d connectors on %d lines, %d queued messages",
            config.charge_point.identity, len(daemon.connectors), len(daemon.lines), await store.pending(),
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.request_stop)
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
        notifier.notify(READY=1, STATUS=daemon.summary())
        await daemon.run()
    except* StopRequested:
        log.info("stopped")
        hard = None
    except* ResetRequested as group:
        reset = group.exceptions[0]
        assert isinstance(reset, ResetRequested)
        hard = reset.hard
    else:
        return
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await store.close()
        notifier.close()
    if hard is not None:
        _restart(daemon.config, hard)


def _restart(config: Config, hard: bool) -> None:
    """After a Reset: the hard one runs the configured reboot command; both then start this process afresh."""
    if hard and config.ocpp.hard_reset_command:
        log.warning("hard reset: running %s", " ".join(config.ocpp.hard_reset_command))
        try:
            done = subprocess.run(config.ocpp.hard_reset_command, check=False, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("hard reset command failed (%s): restarting the daemon only", exc)
        else:
            if done.returncode != 0:  # e.g. polkit refused the reboot: say so, rather than pass for a reboot
                log.error("hard reset command exited %d (%s): restarting the daemon only", done.returncode, done.stderr.strip()[-200:])
    log.warning("%s reset: restarting", "hard" if hard else "soft")
    os.execv(sys.executable, [sys.executable, "-m", "gateway", *sys.argv[1:]])
