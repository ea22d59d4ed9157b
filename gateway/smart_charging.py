"""OCPP 1.6 Smart Charging arithmetic, pure: the installed profiles and the limit they give.

`ProfileSet` is the charge point's store of charging profiles, one set per
connectorId (0 = the whole station, OCPP 1.6 §3.8). It answers the three
Smart Charging messages (SetChargingProfile §5.16, ClearChargingProfile §5.5,
GetCompositeSchedule §5.7) and says, at any instant, what current a connector
may draw:

- within one purpose, the valid profile with the highest stackLevel whose
  schedule covers the instant wins (§3.13.2); an expired or not yet started one
  does not count, and the next stack level down is tried;
- a TxProfile overrides the TxDefaultProfile while its transaction runs
  (§3.13.1), and a TxDefaultProfile on the connector overrides one on connector 0;
- the ChargePointMaxProfile caps the station (§3.13.3); for one connector the
  limit is the lower of the two. Sharing the station maximum across the
  cluster's connectors is not done here: `station_max_at` gives it alone.

Limits are in amperes per phase. A schedule in watts is converted with
A = W / (voltage × phases), phases being the period's numberPhases (3 when
absent, §7.9) capped by the phases the connector has. Time comes in as aware
UTC datetimes; recurrences are counted in plain 24 h / 7 d steps of UTC time.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.charging_profiles import (
    DEFAULT_PHASES,
    ChargingProfile,
    ChargingSchedulePeriod,
    Kind,
    ProfileLimits,
    ProfileRejected,
    Purpose,
    RateUnit,
    Recurrency,
    TxContext,
    check_installable,
)
from gateway.clock import wire_time

_RECURRENCE = {Recurrency.DAILY: timedelta(days=1), Recurrency.WEEKLY: timedelta(days=7)}


@dataclass(frozen=True)
class Limit:
    """A limit in force: amperes per phase, on at most `phases` phases."""

    amps: float
    phases: int


@dataclass(frozen=True)
class CompositePeriod:
    """One period of a composite schedule, from start_period_s after its start; limit None = no profile limits it."""

    start_period_s: int
    limit: float | None
    number_phases: int | None


class ProfileSet:
    """The charging profiles installed on the charge point, keyed by profile id (unique across connectors)."""

    def __init__(self) -> None:
        self._installed: dict[int, tuple[int, ChargingProfile]] = {}  # profile id -> (connector id, profile)

    def __len__(self) -> int:
        return len(self._installed)

    def installed(self, connector_id: int | None = None) -> list[tuple[int, ChargingProfile]]:
        """(connector id, profile) pairs, on one connector or on all, by connector then profile id."""
        return sorted(
            (entry for entry in self._installed.values() if connector_id is None or entry[0] == connector_id),
            key=lambda entry: (entry[0], entry[1].id),
        )

    # --- SetChargingProfile, ClearChargingProfile, end of transaction ------------

    def install(
        self, connector_id: int, profile: ChargingProfile, *, tx: TxContext | None, limits: ProfileLimits
    ) -> None:
        """Install a profile (SetChargingProfile Accepted), or raise ProfileRejected and change nothing.

        `tx` is the transaction active on `connector_id`. §5.16: a profile with the
        same chargingProfileId replaces the old one wherever it was; one with the
        same stackLevel and purpose on the same connector replaces that one too.
        """
        check_installable(connector_id, profile, tx, limits)
        replaced = {
            pid
            for pid, (conn, old) in self._installed.items()
            if pid == profile.id
            or (conn == connector_id and old.purpose is profile.purpose and old.stack_level == profile.stack_level)
        }
        if len(self._installed) - len(replaced) + 1 > limits.max_installed:
            raise ProfileRejected(
                f"{len(self._installed)} profiles installed, MaxChargingProfilesInstalled is {limits.max_installed}"
            )
        for pid in replaced:
            del self._installed[pid]
        self._installed[profile.id] = (connector_id, profile)

    def clear(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        purpose: Purpose | None = None,
        stack_level: int | None = None,
    ) -> int:
        """ClearChargingProfile (§5.5): remove the matching profiles and say how many went.

        An id names one profile and the other criteria are then not looked at;
        otherwise every given criterion must match, and no criterion matches all.
        The caller answers Accepted when the count is above 0, else Unknown.
        """
        if id is not None:
            return 1 if self._installed.pop(id, None) is not None else 0
        doomed = [
            pid
            for pid, (conn, p) in self._installed.items()
            if (connector_id is None or conn == connector_id)
            and (purpose is None or p.purpose is purpose)
            and (stack_level is None or p.stack_level == stack_level)
        ]
        for pid in doomed:
            del self._installed[pid]
        return len(doomed)

    def end_transaction(self, connector_id: int) -> int:
        """Drop the TxProfiles of a connector whose transaction ended: they live only as long as it (§3.13.1)."""
        return self.clear(connector_id=connector_id, purpose=Purpose.TX)

    # --- persistence ----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"profiles": [{"connectorId": conn, "profile": p.to_ocpp()} for conn, p in self.installed()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProfileSet:
        """Rebuild from to_json(); a profile that does not parse raises MalformedProfile."""
        profiles = cls()
        for entry in data["profiles"]:
            profile = ChargingProfile.from_ocpp(entry["profile"])
            profiles._installed[profile.id] = (int(entry["connectorId"]), profile)
        return profiles

    # --- the limit ------------------------------------------------------------------

    def effective_limit(
        self, connector_id: int, now: datetime, tx: TxContext | None, phases: int, voltage_v: float
    ) -> Limit | None:
        """The limit in force on a connector at `now`, or None when no profile limits it.

        `tx` is the transaction running on the connector. With none, a
        TxDefaultProfile still gives the limit a car would get if it started now
        (a Relative schedule starts at `now`). Connector 0 gets the station maximum.
        """
        _check_supply(phases, voltage_v)
        origin = tx.started_at if tx is not None else now
        return self._limit(connector_id, now, tx, origin, now, phases, voltage_v)

    def limit_at(
        self, connector_id: int, now: datetime, tx: TxContext | None, phases: int, voltage_v: float
    ) -> float | None:
        """effective_limit in amperes per phase; None = no profile limits the connector."""
        limit = self.effective_limit(connector_id, now, tx, phases, voltage_v)
        return None if limit is None else limit.amps

    def station_max_at(self, now: datetime, phases: int, voltage_v: float) -> float | None:
        """The ChargePointMaxProfile limit alone, in amperes per phase, for the whole station (§3.13.3)."""
        _check_supply(phases, voltage_v)
        limit = self._station_max(now, now, phases, voltage_v)
        return None if limit is None else limit.amps

    def composite_schedule(
        self,
        connector_id: int,
        start: datetime,
        duration_s: int,
        unit: RateUnit,
        tx: TxContext | None,
        phases: int,
        voltage_v: float,
    ) -> list[CompositePeriod]:
        """GetCompositeSchedule (§5.7): the limits from `start` for `duration_s`, in `unit`, equal neighbours merged.

        Without a transaction the schedule is the one a car starting at `start`
        would get, so Relative schedules start at `start`. Offsets are whole
        seconds, rounded down, as startPeriod is an integer.
        """
        _check_supply(phases, voltage_v)
        if duration_s <= 0:
            raise ValueError(f"duration must be positive, got {duration_s}")
        end = start + timedelta(seconds=duration_s)
        origin = tx.started_at if tx is not None else start
        # Every limit is constant between the edges of the profiles that can apply,
        # so evaluating at each edge gives the exact composite.
        edges = {start}
        for conn, profile in self._installed.values():
            if conn in (0, connector_id):
                profile_origin = start if profile.purpose is Purpose.CHARGE_POINT_MAX else origin
                edges.update(e for e in _edges(profile, profile_origin, start, end) if start < e < end)
        merged: list[tuple[int, Limit | None]] = []
        for instant in sorted(edges):
            offset = math.floor((instant - start).total_seconds())
            limit = self._limit(connector_id, instant, tx, origin, start, phases, voltage_v)
            if merged and merged[-1][0] == offset:
                merged.pop()
            if merged and merged[-1][1] == limit:
                continue
            merged.append((offset, limit))
        return [_in_unit(offset, limit, unit, voltage_v) for offset, limit in merged]

    def _limit(
        self,
        connector_id: int,
        t: datetime,
        tx: TxContext | None,
        tx_origin: datetime,
        station_origin: datetime,
        phases: int,
        voltage_v: float,
    ) -> Limit | None:
        station = self._station_max(t, station_origin, phases, voltage_v)
        if connector_id == 0:
            return station
        own = self._tx_level(connector_id, t, tx, tx_origin, phases, voltage_v)
        if own is None:
            return station
        if station is None:
            return own
        # A phase restriction from either level holds even when the other one sets the current.
        return Limit(min(own.amps, station.amps), min(own.phases, station.phases))

    def _tx_level(
        self, connector_id: int, t: datetime, tx: TxContext | None, origin: datetime, phases: int, voltage_v: float
    ) -> Limit | None:
        """TxProfile of the running transaction, else TxDefaultProfile of the connector, else of connector 0."""
        tiers: list[Iterable[ChargingProfile]] = []
        if tx is not None:
            tiers.append(
                p
                for _, p in self.installed(connector_id)
                if p.purpose is Purpose.TX and p.transaction_id in (None, tx.transaction_id)
            )
        tiers.append(p for _, p in self.installed(connector_id) if p.purpose is Purpose.TX_DEFAULT)
        tiers.append(p for _, p in self.installed(0) if p.purpose is Purpose.TX_DEFAULT)
        for tier in tiers:
            found = _winner(tier, t, origin)
            if found is not None:
                return _to_amps(*found, phases, voltage_v)
        return None

    def _station_max(self, t: datetime, origin: datetime, phases: int, voltage_v: float) -> Limit | None:
        found = _winner((p for _, p in self.installed(0) if p.purpose is Purpose.CHARGE_POINT_MAX), t, origin)
        return None if found is None else _to_amps(*found, phases, voltage_v)


def composite_to_ocpp(
    connector_id: int,
    start: datetime,
    duration_s: int,
    unit: RateUnit,
    periods: list[CompositePeriod],
    unlimited: float,
) -> dict[str, Any]:
    """The GetCompositeSchedule.conf payload (Accepted) for a composite schedule.

    `unlimited` (in `unit`: the connector's own maximum) stands in for stretches no
    profile limits. Limits are rounded down to 0.1, the precision the schema allows.
    """
    wire_periods: list[dict[str, Any]] = []
    for p in periods:
        limit = unlimited if p.limit is None else p.limit
        period: dict[str, Any] = {"startPeriod": p.start_period_s, "limit": math.floor(limit * 10 + 1e-9) / 10}
        if p.number_phases is not None:
            period["numberPhases"] = p.number_phases
        wire_periods.append(period)
    return {
        "status": "Accepted",
        "connectorId": connector_id,
        "scheduleStart": wire_time(start),
        "chargingSchedule": {
            "duration": duration_s,
            "startSchedule": wire_time(start),
            "chargingRateUnit": str(unit),
            "chargingSchedulePeriod": wire_periods,
        },
    }


def _check_supply(phases: int, voltage_v: float) -> None:
    if phases not in (1, 2, 3):
        raise ValueError(f"phases must be 1, 2 or 3, got {phases}")
    if not voltage_v > 0:
        raise ValueError(f"voltage must be positive, got {voltage_v}")


def _schedule_starts(profile: ChargingProfile, origin: datetime, lo: datetime, hi: datetime) -> list[datetime]:
    """Where the schedule starts, for every run of it that begins at or before `hi` and may reach past `lo`.

    Absolute: startSchedule. Relative, or Absolute without startSchedule (§7.8:
    then relative to the start of charging): `origin`. Recurring: startSchedule
    plus whole days or weeks, in both directions (validFrom bounds it).
    """
    s = profile.schedule
    if profile.kind is Kind.RECURRING and s.start_schedule is not None and profile.recurrency is not None:
        step = _RECURRENCE[profile.recurrency]
        first, last = (lo - s.start_schedule) // step, (hi - s.start_schedule) // step
        return [s.start_schedule + k * step for k in range(first, last + 1)]
    if profile.kind is Kind.ABSOLUTE and s.start_schedule is not None:
        return [s.start_schedule]
    return [origin]


def _period_at(profile: ChargingProfile, t: datetime, origin: datetime) -> ChargingSchedulePeriod | None:
    """The period of `profile` in force at `t`; None when the profile is not valid or its schedule misses `t`."""
    if (profile.valid_from is not None and t < profile.valid_from) or (
        profile.valid_to is not None and t >= profile.valid_to
    ):
        return None
    s = profile.schedule
    offset = (t - _schedule_starts(profile, origin, t, t)[-1]).total_seconds()
    if offset < 0 or (s.duration_s is not None and offset >= s.duration_s):
        return None
    index = bisect_right([p.start_period_s for p in s.periods], offset) - 1
    return s.periods[index] if index >= 0 else None


def _winner(
    profiles: Iterable[ChargingProfile], t: datetime, origin: datetime
) -> tuple[ChargingProfile, ChargingSchedulePeriod] | None:
    """The highest stack level that has a period in force at `t` (§3.13.2)."""
    for profile in sorted(profiles, key=lambda p: p.stack_level, reverse=True):
        period = _period_at(profile, t, origin)
        if period is not None:
            return profile, period
    return None


def _edges(profile: ChargingProfile, origin: datetime, lo: datetime, hi: datetime) -> Iterator[datetime]:
    """Every instant in or around [lo, hi] at which `profile` may start, stop or change its limit."""
    for bound in (profile.valid_from, profile.valid_to):
        if bound is not None:
            yield bound
    s = profile.schedule
    for begin in _schedule_starts(profile, origin, lo, hi):
        for p in s.periods:
            yield begin + timedelta(seconds=p.start_period_s)
        if s.duration_s is not None:
            yield begin + timedelta(seconds=s.duration_s)


def _to_amps(profile: ChargingProfile, period: ChargingSchedulePeriod, phases: int, voltage_v: float) -> Limit:
    """A period's limit in amperes per phase, on the phases it allows (§7.9: numberPhases defaults to 3)."""
    used = min(period.number_phases or DEFAULT_PHASES, phases)
    if profile.schedule.unit is RateUnit.A:
        return Limit(period.limit, used)
    return Limit(period.limit / (voltage_v * used), used)


def _in_unit(offset: int, limit: Limit | None, unit: RateUnit, voltage_v: float) -> CompositePeriod:
    if limit is None:
        return CompositePeriod(offset, None, None)
    value = limit.amps if unit is RateUnit.A else limit.amps * voltage_v * limit.phases
    return CompositePeriod(offset, value, limit.phases)
