"""The backend in control: every command OCPP 1.6 lets the backend send, answered and carried down.

Thin layer over the pure cores: gateway.ocpp_config (configuration keys),
gateway.local_auth (local list, cache), gateway.reservations,
gateway.smart_charging (charging profiles). What the backend sets is kept in
SQLite (Store.save_state) before the answer goes out, so it survives restarts.

Each handler takes the CALL payload in wire form (camelCase) and returns the
CALLRESULT payload; it must be quick, because the ocpp library runs it inside
its reader loop. Work that must follow the answer (a reset, a triggered
message) is handed to the daemon's tasks through `Cluster`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from ocpp.exceptions import OccurenceConstraintViolationError, PropertyConstraintViolationError

from gateway.auth_key import AuthKeyStore
from gateway.charging_profiles import ChargingProfile, ProfileLimits, ProfileRejected, Purpose, RateUnit, TxContext
from gateway.clock import Clock
from gateway.diagnostics import Diagnostics
from gateway.firmware_update import FirmwareUpdater
from gateway.local_auth import AuthCache, LocalList, UpdateStatus
from gateway.ocpp_config import ChangeStatus, OcppConfiguration, TooManyKeys, canonical_key, seed_from_settings
from gateway.reservations import Reservation, Reservations, ReservationStatus
from gateway.session import Connector, Effect
from gateway.settings import Config
from gateway.smart_charging import ProfileSet, composite_to_ocpp
from gateway.store import VENDOR_ID, Store
from gateway.uplink import TRIGGERABLE
from gateway.uplink_security import effective_profile, highest_profile

log = logging.getLogger("gateway.control")

NOMINAL_VOLTAGE_V = 230.0  # W -> A conversion of charging profiles (IEC 60038 phase to neutral)

Payload = dict[str, Any]
Handler = Callable[[Payload], Awaitable[Payload]]


class Cluster(Protocol):
    """What the commands need of the daemon."""

    connectors: dict[int, Connector]

    async def handle_effects(self, effects: Sequence[Effect]) -> bool: ...

    async def transaction_context(self, connector_id: int) -> TxContext | None: ...

    def request_remote_start(self, connector_id: int, id_tag: str, profile: ChargingProfile | None) -> None: ...

    async def stop_transaction(self, transaction_id: int, reason: str) -> bool: ...

    def request_reset(self, hard: bool) -> None: ...

    def trigger(self, message: str, connector_id: int | None) -> None: ...

    def reconnect_after_answer(self, why: str) -> None: ...

    def settings_changed(self) -> None: ...

    def set_station_status(self, status: str) -> None: ...

    def notify(self, action: str, payload: Payload) -> asyncio.Future[None]: ...


def _utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, UTC)


class Control:
    """What the backend set (kept across restarts) and the handlers of its commands."""

    def __init__(self, config: Config, store: Store, clock: Clock, cluster: Cluster) -> None:
        self.config = config
        self.cluster = cluster
        self.store = store
        self.clock = clock
        ids = [c.id for c in config.connectors]
        self.connector_ids = ids
        self.auth_keys = AuthKeyStore(config.storage.path.parent)
        self.configuration = self._fresh_configuration()
        self.limits = ProfileLimits(len(ids))
        self.local_list = LocalList()
        self.cache = AuthCache()
        self.reservations = Reservations()
        self.profiles = ProfileSet()
        self._phases = {c.id: config.profile_of(c).phases for c in config.connectors}
        self.inoperative: set[int] = set()  # connectors the backend made Inoperative
        self.scheduled: dict[int, bool] = {}  # availability changes waiting for a transaction to end
        # UpdateFirmware and GetDiagnostics for the gateway itself; the daemon runs their tasks.
        state_dir = config.storage.path.parent
        self.firmware = FirmwareUpdater(config.firmware, state_dir / "firmware", store, clock, cluster.notify)
        self.diagnostics = Diagnostics(config, store, clock, cluster.notify)

    def reload(self, config: Config) -> None:
        """A reloaded config (gateway.reload): the commands and the firmware and diagnostics tasks use it from now on."""
        self.config = self.diagnostics.config = config
        self.firmware.settings = config.firmware

    # --- persistence ---------------------------------------------------------------

    def _seed(self) -> dict[str, str]:
        backend = self.config.backend
        return seed_from_settings(self.config.ocpp, backend.ping_interval_s, effective_profile(backend))

    def _fresh_configuration(self) -> OcppConfiguration:
        return OcppConfiguration(len(self.connector_ids), self._seed(), max_security_profile=highest_profile(self.config.backend))

    def _restore_configuration(self, data: Mapping[str, Any]) -> None:
        self.configuration = OcppConfiguration.from_json(
            data, len(self.connector_ids), self._seed(), max_security_profile=highest_profile(self.config.backend)
        )

    async def load(self) -> None:
        """Restore what the backend set before the restart; a piece that cannot be read is logged and reset."""
        loaders: dict[str, Callable[[Any], None]] = {
            "configuration": self._restore_configuration,
            "local_list": lambda d: setattr(self, "local_list", LocalList.from_json(d)),
            "auth_cache": lambda d: setattr(self, "cache", AuthCache.from_json(d)),
            "reservations": lambda d: setattr(self, "reservations", Reservations.from_json(d)),
            "charging_profiles": lambda d: setattr(self, "profiles", ProfileSet.from_json(d)),
            "availability": lambda d: self._load_availability(d),
        }
        for name, load in loaders.items():
            data = await self.store.load_state(name)
            if data is None:
                continue
            try:
                load(data)
            except Exception as exc:  # a snapshot of an older release, or damaged: start that piece afresh
                log.error("kept %s could not be restored, starting without it: %s", name, exc)
        for dropped in self.configuration.dropped:
            log.warning("configuration key %s kept from before is no longer valid and was dropped", dropped)
        if (key := self.configuration.authorization_key()) is not None:
            # Kept in the database by releases before the key had its own 0600 file: move it there.
            if self.auth_keys.current() is None:
                self.auth_keys.replace(key)
            await self._save("configuration")
            log.info("AuthorizationKey moved out of the database into %s", self.auth_keys.path)

    def _load_availability(self, data: Mapping[str, Any]) -> None:
        self.inoperative = {int(c) for c in data.get("inoperative", [])}
        self.scheduled = {int(c): bool(v) for c, v in data.get("scheduled", {}).items()}

    async def _save(self, name: str) -> None:
        snapshots: dict[str, Callable[[], object]] = {
            "availability": lambda: {"inoperative": sorted(self.inoperative), "scheduled": {str(c): v for c, v in self.scheduled.items()}},
            "configuration": self.configuration.to_json,
            "local_list": self.local_list.to_json,
            "auth_cache": self.cache.to_json,
            "reservations": self.reservations.to_json,
            "charging_profiles": self.profiles.to_json,
        }
        await self.store.save_state(name, snapshots[name]())

    # --- what the rest of the daemon asks ----------------------------------------------

    def operative(self, connector_id: int) -> bool:
        return connector_id not in self.inoperative

    def _set_operative(self, connector_id: int, operative: bool) -> None:
        (self.inoperative.discard if operative else self.inoperative.add)(connector_id)

    async def limit_a(self, connector_id: int) -> float | None:
        """The smart-charging limit of a connector now, in A; None: no profile limits it."""
        tx = await self.cluster.transaction_context(connector_id)
        return self.profiles.limit_at(connector_id, _utc(self.clock.wall()), tx, self._phases[connector_id], NOMINAL_VOLTAGE_V)

    def station_limit_a(self) -> float | None:
        """The ChargePointMaxProfile limit now, in A per phase, for the whole cluster (§3.13.1); None: none."""
        return self.profiles.station_max_at(_utc(self.clock.wall()), 3, NOMINAL_VOLTAGE_V)

    def handlers(self) -> dict[str, Handler]:
        return {
            "ChangeConfiguration": self.change_configuration,
            "GetConfiguration": self.get_configuration,
            "ClearCache": self.clear_cache,
            "DataTransfer": self.data_transfer,
            "UnlockConnector": self.unlock_connector,
            "ChangeAvailability": self.change_availability,
            "RemoteStartTransaction": self.remote_start,
            "RemoteStopTransaction": self.remote_stop,
            "Reset": self.reset,
            "TriggerMessage": self.trigger_message,
            "SendLocalList": self.send_local_list,
            "GetLocalListVersion": self.get_local_list_version,
            "ReserveNow": self.reserve_now,
            "CancelReservation": self.cancel_reservation,
            "SetChargingProfile": self.set_charging_profile,
            "ClearChargingProfile": self.clear_charging_profile,
            "GetCompositeSchedule": self.get_composite_schedule,
            "UpdateFirmware": self.update_firmware,
            "GetDiagnostics": self.get_diagnostics,
        }

    # --- Core ----------------------------------------------------------------------------

    async def change_configuration(self, p: Payload) -> Payload:
        if self._needs_password(p["key"], p["value"]):
            log.warning("SecurityProfile %s refused: there is no Basic-auth password yet (set AuthorizationKey first)", p["value"])
            return {"status": ChangeStatus.REJECTED.value}
        result = self.configuration.change(p["key"], p["value"])
        if result.status is not ChangeStatus.ACCEPTED:
            return {"status": result.status.value}
        if result.key == "AuthorizationKey":
            key = self.configuration.authorization_key()
            assert key is not None  # just accepted
            try:
                self.auth_keys.replace(key)
            except OSError as exc:  # a key that would not survive a restart is refused, not half taken
                log.error("the new AuthorizationKey could not be stored (%s): refused", exc.strerror)
                return {"status": ChangeStatus.REJECTED.value}
        await self._save("configuration")
        self.cluster.settings_changed()
        log.info("configuration %s changed by the backend", result.key)  # never the value: it may be a key
        if result.reconnect:
            self.cluster.reconnect_after_answer(f"{result.key} changed")
        return {"status": result.status.value}

    def _needs_password(self, key: str, value: str) -> bool:
        """Basic auth (profiles 1 and 2) without any password would lock the charge point out."""
        if canonical_key(key) != "SecurityProfile" or value.strip() not in ("1", "2"):
            return False
        return self.auth_keys.current() is None and self.config.backend.password_file is None

    async def get_configuration(self, p: Payload) -> Payload:
        try:
            known, unknown = self.configuration.get(p.get("key"))
        except TooManyKeys as exc:  # the OCPP-J 1.6 spelling of the code, as strict 1.6 backends expect
            raise OccurenceConstraintViolationError(description=str(exc)) from None
        out: Payload = {"configurationKey": known}
        if unknown:
            out["unknownKey"] = unknown
        return out

    async def clear_cache(self, p: Payload) -> Payload:
        self.cache.clear()
        await self.save_cache()
        return {"status": "Accepted"}

    async def save_cache(self) -> None:
        await self._save("auth_cache")

    async def data_transfer(self, p: Payload) -> Payload:
        # No vendor extension is understood here (OCPP 1.6 §5.6); our own vendorId has no incoming messages.
        return {"status": "UnknownMessageId" if p["vendorId"] == VENDOR_ID else "UnknownVendorId"}

    async def unlock_connector(self, p: Payload) -> Payload:
        self._connector(p["connectorId"])
        # The supported slave profiles lock their own socket or have a fixed cable: no unlock register.
        return {"status": "NotSupported"}

    async def change_availability(self, p: Payload) -> Payload:
        cid, operative = p["connectorId"], p["type"] == "Operative"
        targets = self.connector_ids if cid == 0 else [self._connector(cid)]  # §5.2: 0 is every connector
        busy = {c for c in targets if self.cluster.connectors[c].transaction is not None}
        for c in targets:
            if c in busy:
                self.scheduled[c] = operative  # applied when the transaction ends
            else:
                self.scheduled.pop(c, None)
                self._set_operative(c, operative)
        await self._save("availability")
        await self.apply_availability([c for c in targets if c not in busy])
        return {"status": "Scheduled" if busy else "Accepted"}

    async def apply_availability(self, connector_ids: Sequence[int]) -> None:
        """Carry availability to the connectors (the pollers pause an inoperative slave at the next poll)."""
        wall = self.clock.wall()
        effects: list[Effect] = []
        for c in connector_ids:
            effects += self.cluster.connectors[c].set_operative(self.operative(c), wall)
        await self.cluster.handle_effects(effects)
        self.cluster.set_station_status(self.station_status())

    def station_status(self) -> str:
        """Connector 0, the cluster's main controller: Unavailable once every connector is Inoperative (§5.2)."""
        return "Available" if any(self.operative(c) for c in self.connector_ids) else "Unavailable"

    async def transaction_ended(self, connector_id: int) -> None:
        """A transaction stopped: its TxProfiles go (§3.13.2), a scheduled availability change applies."""
        if self.profiles.end_transaction(connector_id):
            await self._save("charging_profiles")
        if connector_id in self.scheduled:
            self._set_operative(connector_id, self.scheduled.pop(connector_id))
            await self._save("availability")
            await self.apply_availability([connector_id])

    async def remote_start(self, p: Payload) -> Payload:
        profile = None
        if "chargingProfile" in p:
            try:
                profile = ChargingProfile.from_ocpp(p["chargingProfile"])
            except ProfileRejected:
                return {"status": "Rejected"}
            if profile.purpose is not Purpose.TX:
                return {"status": "Rejected"}  # §5.11: only a TxProfile may come with a remote start
        cid = p.get("connectorId")
        if cid is None:
            cid = self._free_connector(p["idTag"])
        elif cid not in self.cluster.connectors:
            return {"status": "Rejected"}
        if cid is None or not self._may_take(cid, p["idTag"]):
            return {"status": "Rejected"}
        self.cluster.request_remote_start(cid, p["idTag"], profile)
        return {"status": "Accepted"}

    def _free_connector(self, id_tag: str) -> int | None:
        """For a remote start without connectorId: a plugged EV waiting first, else any free connector."""
        candidates = [c for c in self.connector_ids if self._may_take(c, id_tag)]
        waiting = [c for c in candidates if self.cluster.connectors[c].status == "Preparing"]
        return (waiting or candidates)[0] if candidates else None

    def _may_take(self, cid: int, id_tag: str) -> bool:
        connector = self.cluster.connectors[cid]
        if connector.transaction is not None or not self.operative(cid) or connector.status in ("Faulted", "Finishing"):
            return False
        return self.reservations.may_start(cid, id_tag, None, _utc(self.clock.wall()))

    async def remote_stop(self, p: Payload) -> Payload:
        stopped = await self.cluster.stop_transaction(p["transactionId"], "Remote")
        return {"status": "Accepted" if stopped else "Rejected"}

    async def reset(self, p: Payload) -> Payload:
        self.cluster.request_reset(hard=p["type"] == "Hard")
        return {"status": "Accepted"}

    # --- Remote Trigger ------------------------------------------------------------------

    async def trigger_message(self, p: Payload) -> Payload:
        message, cid = p["requestedMessage"], p.get("connectorId")
        if cid is not None and cid != 0 and cid not in self.cluster.connectors:
            return {"status": "Rejected"}
        if message not in TRIGGERABLE:
            return {"status": "NotImplemented"}
        if message == "FirmwareStatusNotification":
            self.firmware.report()  # the status under way, or Idle (§4.5)
        elif message == "DiagnosticsStatusNotification":
            self.diagnostics.report()
        else:
            self.cluster.trigger(message, cid)
        return {"status": "Accepted"}

    # --- Firmware Management ---------------------------------------------------------------

    async def update_firmware(self, p: Payload) -> Payload:
        """§5.19: kept and answered; the download starts at retrieveDate, in the firmware task."""
        try:
            await self.firmware.request(p)
        except ValueError as exc:  # a location we cannot fetch or a checksum fragment we cannot read
            raise PropertyConstraintViolationError(description=str(exc)) from None
        return {}

    async def get_diagnostics(self, p: Payload) -> Payload:
        """§5.9: answered with the bundle's name; it is built and uploaded in the diagnostics task."""
        try:
            return {"fileName": await self.diagnostics.request(p)}
        except ValueError as exc:
            raise PropertyConstraintViolationError(description=str(exc)) from None

    # --- Local Auth List Management ------------------------------------------------------

    async def send_local_list(self, p: Payload) -> Payload:
        if not self.configuration.bool_value("LocalAuthListEnabled"):
            return {"status": "NotSupported"}
        status = self.local_list.apply(
            p["updateType"], p["listVersion"], p.get("localAuthorizationList"),
            self.configuration.int_value("LocalAuthListMaxLength"),
            send_max_length=self.configuration.int_value("SendLocalListMaxLength"),
        )
        if status is UpdateStatus.ACCEPTED:
            await self._save("local_list")
        return {"status": status.value}

    async def get_local_list_version(self, p: Payload) -> Payload:
        enabled = self.configuration.bool_value("LocalAuthListEnabled")
        return {"listVersion": self.local_list.version if enabled else -1}

    # --- Reservation ---------------------------------------------------------------------

    async def reserve_now(self, p: Payload) -> Payload:
        try:
            reservation = Reservation.from_wire(p)
        except Exception as exc:
            raise PropertyConstraintViolationError(description=str(exc)) from None
        statuses = {c: conn.status for c, conn in self.cluster.connectors.items()}
        result = self.reservations.reserve(reservation, statuses, _utc(self.clock.wall()))
        if result.status is ReservationStatus.ACCEPTED:
            await self._save("reservations")
            await self.apply_reservations()
        return {"status": result.status.value}

    async def cancel_reservation(self, p: Payload) -> Payload:
        result = self.reservations.cancel(p["reservationId"])
        if result.cancelled is not None:
            await self._save("reservations")
            await self.apply_reservations()
        return {"status": result.status.value}

    async def apply_reservations(self) -> None:
        """Expire what is due and show Reserved exactly on the connectors held now."""
        now = _utc(self.clock.wall())
        if self.reservations.expired(now):
            await self._save("reservations")
        wall = self.clock.wall()
        effects: list[Effect] = []
        for c, connector in self.cluster.connectors.items():
            effects += connector.set_reserved(self.reservations.is_reserved(c, now), wall)
        await self.cluster.handle_effects(effects)

    # --- Smart Charging ------------------------------------------------------------------

    async def set_charging_profile(self, p: Payload) -> Payload:
        cid = p["connectorId"]
        if cid != 0:
            self._connector(cid)
        try:
            profile = ChargingProfile.from_ocpp(p["csChargingProfiles"])
            tx = await self.cluster.transaction_context(cid) if cid else None
            self.profiles.install(cid, profile, tx=tx, limits=self.limits)
        except ProfileRejected as exc:
            log.warning("charging profile refused: %s", exc)
            return {"status": "Rejected"}
        await self._save("charging_profiles")
        return {"status": "Accepted"}

    async def install_tx_profile(self, connector_id: int, profile: ChargingProfile) -> None:
        """The TxProfile of a RemoteStartTransaction, once its transaction has started."""
        try:
            tx = await self.cluster.transaction_context(connector_id)
            self.profiles.install(connector_id, profile, tx=tx, limits=self.limits)
        except ProfileRejected as exc:
            log.warning("connector %d: charging profile of the remote start refused: %s", connector_id, exc)
            return
        await self._save("charging_profiles")

    async def clear_charging_profile(self, p: Payload) -> Payload:
        purpose = Purpose(p["chargingProfilePurpose"]) if "chargingProfilePurpose" in p else None
        removed = self.profiles.clear(p.get("id"), p.get("connectorId"), purpose, p.get("stackLevel"))
        if removed:
            await self._save("charging_profiles")
        return {"status": "Accepted" if removed else "Unknown"}

    async def get_composite_schedule(self, p: Payload) -> Payload:
        cid, duration = p["connectorId"], p["duration"]
        if cid != 0 and cid not in self.cluster.connectors:
            return {"status": "Rejected"}
        unit = RateUnit(p.get("chargingRateUnit", "A"))
        phases, max_a = self._electrical(cid)
        start = _utc(self.clock.wall())
        tx = await self.cluster.transaction_context(cid) if cid else None
        periods = self.profiles.composite_schedule(cid, start, duration, unit, tx, phases, NOMINAL_VOLTAGE_V)
        unlimited = max_a if unit is RateUnit.A else max_a * phases * NOMINAL_VOLTAGE_V
        return composite_to_ocpp(cid, start, duration, unit, periods, unlimited)

    def _electrical(self, cid: int) -> tuple[int, float]:
        """Phases and maximum current of a connector, or of the whole station (connector 0)."""
        settings = [c for c in self.config.connectors if cid in (0, c.id)]
        profiles = [self.config.profile_of(c) for c in settings]
        phases = max(p.phases for p in profiles)
        max_a = sum(self.config.max_current_a(c) for c in settings)
        return phases, max_a

    def _connector(self, cid: int) -> int:
        if cid not in self.connector_ids:
            raise PropertyConstraintViolationError(description=f"connectorId {cid} does not exist (1..{len(self.connector_ids)})")
        return cid
