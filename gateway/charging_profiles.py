"""OCPP 1.6 charging profiles as frozen data: wire parsing, wire output, and the checks made on install.

A profile arrives in SetChargingProfile.req (csChargingProfiles, OCPP 1.6 §5.16)
or RemoteStartTransaction.req (chargingProfile, §5.11) as a camelCase object
(types in §7.7 ChargingProfile, §7.8 ChargingSchedule, §7.9 ChargingSchedulePeriod).
`ChargingProfile.from_ocpp` turns it into typed data and `to_ocpp` gives the
same object back, which is also the form the profiles are persisted in.

`check_installable` holds every rule that decides SetChargingProfile.conf
Accepted or Rejected from the profile alone and the connector it targets; the
rule that depends on what is already installed (MaxChargingProfilesInstalled)
lives with the installed set in gateway.smart_charging. The arithmetic
(which profile wins, what the limit is) is in gateway.smart_charging too.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from gateway.clock import parse_wire_time, wire_time
from gateway.errors import GatewayError, RemoteProtocolError


class ProfileRejected(GatewayError):
    """The charge point must answer SetChargingProfile with Rejected; `reason` says why, for the log."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class MalformedProfile(ProfileRejected, RemoteProtocolError):
    """The profile object does not parse (missing field, wrong type, bad timestamp).

    It is a ProfileRejected so that one `except ProfileRejected` answers Rejected
    for both a malformed and a disallowed profile.
    """


class Purpose(enum.StrEnum):
    """ChargingProfilePurposeType (OCPP 1.6 §7.10)."""

    CHARGE_POINT_MAX = "ChargePointMaxProfile"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"


class Kind(enum.StrEnum):
    """ChargingProfileKindType (OCPP 1.6 §7.9)."""

    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"


class Recurrency(enum.StrEnum):
    """RecurrencyKindType (OCPP 1.6 §7.41)."""

    DAILY = "Daily"
    WEEKLY = "Weekly"


class RateUnit(enum.StrEnum):
    """ChargingRateUnitType (OCPP 1.6 §7.12): amperes per phase, or watts."""

    A = "A"
    W = "W"


# ChargingScheduleAllowedChargingRateUnit (OCPP 1.6 §9.4) names the units in words.
_UNIT_KEY_WORD = {RateUnit.A: "Current", RateUnit.W: "Power"}

# OCPP 1.6 §7.9: numberPhases, when absent, means 3.
DEFAULT_PHASES = 3


@dataclass(frozen=True)
class ChargingSchedulePeriod:
    """ChargingSchedulePeriodType (§7.9): from start_period_s after the schedule start, at most `limit`."""

    start_period_s: int
    limit: float
    number_phases: int | None = None


@dataclass(frozen=True)
class ChargingSchedule:
    """ChargingScheduleType (§7.8). Without duration_s its last period never ends (short of the transaction)."""

    unit: RateUnit
    periods: tuple[ChargingSchedulePeriod, ...]
    duration_s: int | None = None
    start_schedule: datetime | None = None
    min_charging_rate: float | None = None


@dataclass(frozen=True, kw_only=True)
class ChargingProfile:
    """ChargingProfileType (§7.7)."""

    id: int
    stack_level: int
    purpose: Purpose
    kind: Kind
    schedule: ChargingSchedule
    recurrency: Recurrency | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: int | None = None

    @classmethod
    def from_ocpp(cls, d: Mapping[str, Any]) -> ChargingProfile:
        """Parse csChargingProfiles / chargingProfile as it is on the wire; MalformedProfile says what is wrong."""
        s = _field(d, "chargingSchedule", Mapping, "")
        raw_periods = _field(s, "chargingSchedulePeriod", list, "chargingSchedule.")
        periods = []
        for i, p in enumerate(raw_periods):
            where = f"chargingSchedule.chargingSchedulePeriod[{i}]."
            if not isinstance(p, Mapping):
                raise MalformedProfile(f"{where[:-1]} is not an object")
            periods.append(
                ChargingSchedulePeriod(
                    start_period_s=_int(p, "startPeriod", where),
                    limit=_number(p, "limit", where),
                    number_phases=_opt_int(p, "numberPhases", where),
                )
            )
        schedule = ChargingSchedule(
            unit=_enum(RateUnit, s, "chargingRateUnit", "chargingSchedule."),
            periods=tuple(periods),
            duration_s=_opt_int(s, "duration", "chargingSchedule."),
            start_schedule=_opt_time(s, "startSchedule", "chargingSchedule."),
            min_charging_rate=_opt_number(s, "minChargingRate", "chargingSchedule."),
        )
        recurrency = d.get("recurrencyKind")
        return cls(
            id=_int(d, "chargingProfileId", ""),
            stack_level=_int(d, "stackLevel", ""),
            purpose=_enum(Purpose, d, "chargingProfilePurpose", ""),
            kind=_enum(Kind, d, "chargingProfileKind", ""),
            schedule=schedule,
            recurrency=None if recurrency is None else _enum(Recurrency, d, "recurrencyKind", ""),
            valid_from=_opt_time(d, "validFrom", ""),
            valid_to=_opt_time(d, "validTo", ""),
            transaction_id=_opt_int(d, "transactionId", ""),
        )

    def to_ocpp(self) -> dict[str, Any]:
        """The camelCase wire object; optional fields that are unset are left out, as OCPP-J does."""
        sched = self.schedule
        periods: list[dict[str, Any]] = []
        for p in sched.periods:
            period: dict[str, Any] = {"startPeriod": p.start_period_s, "limit": p.limit}
            if p.number_phases is not None:
                period["numberPhases"] = p.number_phases
            periods.append(period)
        schedule: dict[str, Any] = {"chargingRateUnit": str(sched.unit), "chargingSchedulePeriod": periods}
        if sched.duration_s is not None:
            schedule["duration"] = sched.duration_s
        if sched.start_schedule is not None:
            schedule["startSchedule"] = wire_time(sched.start_schedule)
        if sched.min_charging_rate is not None:
            schedule["minChargingRate"] = sched.min_charging_rate
        out: dict[str, Any] = {
            "chargingProfileId": self.id,
            "stackLevel": self.stack_level,
            "chargingProfilePurpose": str(self.purpose),
            "chargingProfileKind": str(self.kind),
            "chargingSchedule": schedule,
        }
        if self.transaction_id is not None:
            out["transactionId"] = self.transaction_id
        if self.recurrency is not None:
            out["recurrencyKind"] = str(self.recurrency)
        if self.valid_from is not None:
            out["validFrom"] = wire_time(self.valid_from)
        if self.valid_to is not None:
            out["validTo"] = wire_time(self.valid_to)
        return out


@dataclass(frozen=True)
class TxContext:
    """The transaction running on a connector, as smart charging needs it.

    transaction_id is None while the backend has not yet answered StartTransaction
    (a transaction started offline); started_at is the start of a Relative schedule.
    """

    started_at: datetime
    transaction_id: int | None = None


@dataclass(frozen=True)
class ProfileLimits:
    """What this charge point supports; the read-only Smart Charging keys of OCPP 1.6 §9.4 report it.

    The defaults allow a half-hourly day plan (48 periods) and a few profiles per connector.
    """

    number_of_connectors: int
    max_stack_level: int = 8  # ChargeProfileMaxStackLevel
    max_periods: int = 48  # ChargingScheduleMaxPeriods
    allowed_units: frozenset[RateUnit] = frozenset({RateUnit.A, RateUnit.W})  # ChargingScheduleAllowedChargingRateUnit
    max_installed: int = 64  # MaxChargingProfilesInstalled

    def config_keys(self) -> dict[str, str]:
        """The values GetConfiguration reports for these limits (all read-only, §9.4)."""
        return {
            "ChargeProfileMaxStackLevel": str(self.max_stack_level),
            "ChargingScheduleAllowedChargingRateUnit": ",".join(
                _UNIT_KEY_WORD[u] for u in RateUnit if u in self.allowed_units
            ),
            "ChargingScheduleMaxPeriods": str(self.max_periods),
            "MaxChargingProfilesInstalled": str(self.max_installed),
        }


def check_installable(connector_id: int, profile: ChargingProfile, tx: TxContext | None, limits: ProfileLimits) -> None:
    """Raise ProfileRejected unless `profile` may be installed on `connector_id`.

    `tx` is the transaction active on that connector (None when there is none);
    OCPP 1.6 §3.13.1 and §5.16 give the rules on purposes and connectors.
    """
    if not 0 <= connector_id <= limits.number_of_connectors:
        raise ProfileRejected(f"connector {connector_id} does not exist (0..{limits.number_of_connectors})")
    if profile.purpose is Purpose.CHARGE_POINT_MAX and connector_id != 0:
        raise ProfileRejected("ChargePointMaxProfile can only be set on connector 0 (§3.13.1)")
    if profile.purpose is Purpose.TX:
        if connector_id == 0:
            raise ProfileRejected("TxProfile needs a connector > 0 (§3.13.1)")
        if tx is None:
            raise ProfileRejected(f"TxProfile on connector {connector_id} without an active transaction (§5.16)")
        if profile.transaction_id is not None and profile.transaction_id != tx.transaction_id:
            raise ProfileRejected(
                f"TxProfile for transaction {profile.transaction_id}, connector {connector_id} runs {tx.transaction_id}"
            )
    elif profile.transaction_id is not None:
        raise ProfileRejected(f"transactionId is only valid in a TxProfile, not a {profile.purpose} (§7.7)")
    if not 0 <= profile.stack_level <= limits.max_stack_level:
        raise ProfileRejected(
            f"stackLevel {profile.stack_level} outside 0..{limits.max_stack_level} (ChargeProfileMaxStackLevel)"
        )
    if profile.kind is Kind.RECURRING and (profile.recurrency is None or profile.schedule.start_schedule is None):
        raise ProfileRejected("a Recurring profile needs recurrencyKind and startSchedule")
    if profile.valid_from is not None and profile.valid_to is not None and profile.valid_to <= profile.valid_from:
        raise ProfileRejected("validTo is not after validFrom")
    _check_schedule(profile.schedule, limits)


def _check_schedule(s: ChargingSchedule, limits: ProfileLimits) -> None:
    if s.unit not in limits.allowed_units:
        raise ProfileRejected(f"chargingRateUnit {s.unit} not allowed (ChargingScheduleAllowedChargingRateUnit)")
    if not s.periods:
        raise ProfileRejected("chargingSchedulePeriod is empty")
    if len(s.periods) > limits.max_periods:
        raise ProfileRejected(f"{len(s.periods)} periods, more than ChargingScheduleMaxPeriods = {limits.max_periods}")
    # §7.8: the first period starts the schedule, and periods follow each other in time.
    if s.periods[0].start_period_s != 0:
        raise ProfileRejected("the first period must have startPeriod 0")
    starts = [p.start_period_s for p in s.periods]
    if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
        raise ProfileRejected(f"startPeriod values not strictly increasing: {starts}")
    for p in s.periods:
        if p.limit < 0:
            raise ProfileRejected(f"negative limit {p.limit} at startPeriod {p.start_period_s}")
        if p.number_phases is not None and p.number_phases not in (1, 2, 3):
            raise ProfileRejected(f"numberPhases {p.number_phases} is not 1, 2 or 3")
    if s.duration_s is not None and s.duration_s <= 0:
        raise ProfileRejected(f"duration {s.duration_s} is not positive")
    if s.min_charging_rate is not None and s.min_charging_rate < 0:
        raise ProfileRejected(f"negative minChargingRate {s.min_charging_rate}")


# --- field readers: each names the field in its error ---------------------------

_E = TypeVar("_E", bound=enum.StrEnum)


def _field(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise MalformedProfile(f"{where}{key} is missing")
    value = d[key]
    if not isinstance(value, kind):
        raise MalformedProfile(f"{where}{key} has the wrong type: {value!r}")
    return value


def _int(d: Mapping[str, Any], key: str, where: str) -> int:
    value = _field(d, key, int, where)
    if isinstance(value, bool):
        raise MalformedProfile(f"{where}{key} is not an integer: {value!r}")
    return int(value)


def _opt_int(d: Mapping[str, Any], key: str, where: str) -> int | None:
    return None if d.get(key) is None else _int(d, key, where)


def _number(d: Mapping[str, Any], key: str, where: str) -> float:
    value = _field(d, key, (int, float), where)
    if isinstance(value, bool):
        raise MalformedProfile(f"{where}{key} is not a number: {value!r}")
    return float(value)


def _opt_number(d: Mapping[str, Any], key: str, where: str) -> float | None:
    return None if d.get(key) is None else _number(d, key, where)


def _opt_time(d: Mapping[str, Any], key: str, where: str) -> datetime | None:
    if d.get(key) is None:
        return None
    text = _field(d, key, str, where)
    try:
        return parse_wire_time(text)
    except ValueError:
        raise MalformedProfile(f"{where}{key} is not an ISO 8601 timestamp: {text!r}") from None


def _enum(kind: type[_E], d: Mapping[str, Any], key: str, where: str) -> _E:
    text = _field(d, key, str, where)
    try:
        return kind(text)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise MalformedProfile(f"{where}{key} is {text!r}, not one of {allowed}") from None
