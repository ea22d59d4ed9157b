"""Charging profiles as data (gateway.charging_profiles): wire parsing and output, install rules (OCPP 1.6 §5.16)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.charging_profiles import (
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    Kind,
    MalformedProfile,
    ProfileLimits,
    ProfileRejected,
    Purpose,
    RateUnit,
    Recurrency,
    TxContext,
    check_installable,
)
from gateway.clock import parse_wire_time, wire_time
from gateway.errors import GatewayError, RemoteProtocolError

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
LIMITS = ProfileLimits(number_of_connectors=4, max_stack_level=5, max_periods=3, max_installed=10)
TX = TxContext(started_at=T0, transaction_id=42)

WIRE: dict[str, Any] = {
    "chargingProfileId": 12,
    "transactionId": 42,
    "stackLevel": 2,
    "chargingProfilePurpose": "TxProfile",
    "chargingProfileKind": "Recurring",
    "recurrencyKind": "Daily",
    "validFrom": "2026-03-01T00:00:00.000Z",
    "validTo": "2026-04-01T00:00:00.250Z",
    "chargingSchedule": {
        "duration": 86400,
        "startSchedule": "2026-03-01T22:00:00.000Z",
        "chargingRateUnit": "W",
        "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 11000.0, "numberPhases": 3},
            {"startPeriod": 28800, "limit": 3680.0, "numberPhases": 1},
        ],
        "minChargingRate": 1380.0,
    },
}


def profile(
    purpose: Purpose = Purpose.TX_DEFAULT,
    kind: Kind = Kind.ABSOLUTE,
    periods: tuple[ChargingSchedulePeriod, ...] = (ChargingSchedulePeriod(0, 16.0),),
    **changes: Any,
) -> ChargingProfile:
    schedule = ChargingSchedule(RateUnit.A, periods, start_schedule=T0)
    return replace(ChargingProfile(id=1, stack_level=0, purpose=purpose, kind=kind, schedule=schedule), **changes)


def rejected(connector_id: int, p: ChargingProfile, tx: TxContext | None = None) -> str:
    with pytest.raises(ProfileRejected) as caught:
        check_installable(connector_id, p, tx, LIMITS)
    return caught.value.reason


# --- parsing and output -----------------------------------------------------------


def test_wire_object_parses_to_typed_fields() -> None:
    p = ChargingProfile.from_ocpp(WIRE)
    assert (p.id, p.transaction_id, p.stack_level) == (12, 42, 2)
    assert (p.purpose, p.kind, p.recurrency) == (Purpose.TX, Kind.RECURRING, Recurrency.DAILY)
    assert p.valid_to == datetime(2026, 4, 1, 0, 0, 0, 250000, tzinfo=UTC)
    assert p.schedule.unit is RateUnit.W
    assert p.schedule.start_schedule == datetime(2026, 3, 1, 22, tzinfo=UTC)
    assert p.schedule.periods == (ChargingSchedulePeriod(0, 11000.0, 3), ChargingSchedulePeriod(28800, 3680.0, 1))
    assert (p.schedule.duration_s, p.schedule.min_charging_rate) == (86400, 1380.0)


def test_wire_object_round_trips() -> None:
    assert ChargingProfile.from_ocpp(WIRE).to_ocpp() == WIRE


def test_minimal_wire_object_leaves_optional_fields_out() -> None:
    wire = {
        "chargingProfileId": 1,
        "stackLevel": 0,
        "chargingProfilePurpose": "ChargePointMaxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 32}]},
    }
    p = ChargingProfile.from_ocpp(wire)
    assert p.schedule.periods[0].limit == 32.0 and isinstance(p.schedule.periods[0].limit, float)
    assert p.recurrency is None and p.valid_from is None and p.schedule.duration_s is None
    assert ChargingProfile.from_ocpp(p.to_ocpp()) == p
    assert set(p.to_ocpp()) == set(wire)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("chargingProfileId",), None, "chargingProfileId is missing"),
        (("stackLevel",), "1", "stackLevel has the wrong type"),
        (("stackLevel",), True, "stackLevel is not an integer"),
        (("chargingProfilePurpose",), "TxMaxProfile", "chargingProfilePurpose is 'TxMaxProfile', not one of"),
        (("recurrencyKind",), "Monthly", "recurrencyKind is 'Monthly'"),
        (("validFrom",), "yesterday", "validFrom is not an ISO 8601 timestamp"),
        (("chargingSchedule",), [], "chargingSchedule has the wrong type"),
        (("chargingSchedule", "chargingRateUnit"), "kW", "chargingSchedule.chargingRateUnit is 'kW'"),
        (("chargingSchedule", "chargingSchedulePeriod"), None, "chargingSchedule.chargingSchedulePeriod is missing"),
        (("chargingSchedule", "chargingSchedulePeriod"), [7], "chargingSchedulePeriod[0] is not an object"),
        (("chargingSchedule", "duration"), 1.5, "chargingSchedule.duration has the wrong type"),
    ],
)
def test_malformed_fields_are_named(path: tuple[str, ...], value: Any, message: str) -> None:
    wire = copy.deepcopy(WIRE)
    target = wire
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    with pytest.raises(MalformedProfile, match=message.replace("[", r"\[").replace("(", r"\(")):
        ChargingProfile.from_ocpp(wire)


def test_bad_period_fields_are_named() -> None:
    wire = copy.deepcopy(WIRE)
    wire["chargingSchedule"]["chargingSchedulePeriod"][1]["limit"] = "16"
    with pytest.raises(MalformedProfile, match=r"chargingSchedulePeriod\[1\]\.limit has the wrong type"):
        ChargingProfile.from_ocpp(wire)


def test_malformed_profile_is_a_rejection_and_a_remote_error() -> None:
    # One `except ProfileRejected` answers Rejected for every bad profile.
    assert issubclass(MalformedProfile, ProfileRejected)
    assert issubclass(MalformedProfile, RemoteProtocolError)
    assert issubclass(ProfileRejected, GatewayError)


def test_timestamps_without_offset_are_utc_and_offsets_are_normalised() -> None:
    assert parse_wire_time("2026-03-02T06:00:00") == T0
    assert parse_wire_time("2026-03-02T08:00:00+02:00") == T0
    assert parse_wire_time("2026-03-02T06:00:00.000Z").tzinfo is UTC
    assert wire_time(datetime(2026, 3, 2, 8, 0, 0, 123000, tzinfo=UTC) + timedelta(0)) == "2026-03-02T08:00:00.123Z"


_json_scalar = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8)
)
_json = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _paths(v, (*prefix, i))
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_wire_objects_parse_or_raise_malformed(data: st.DataObject) -> None:
    # Anything the backend sends either parses or raises MalformedProfile: never a KeyError or TypeError.
    wire = copy.deepcopy(WIRE)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(wire)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        target: Any = wire
        for key in path[:-1]:
            target = target[key]
        if data.draw(st.booleans()):
            del target[path[-1]]
        else:
            target[path[-1]] = data.draw(_json)
    try:
        p = ChargingProfile.from_ocpp(wire)
    except MalformedProfile as e:
        assert e.reason
    else:
        assert ChargingProfile.from_ocpp(json.loads(json.dumps(p.to_ocpp()))) == p


_times = st.integers(-(10**7), 10**7).map(lambda ms: T0 + timedelta(milliseconds=ms * 7))
_periods = st.lists(
    st.tuples(st.integers(1, 10**6), st.integers(0, 10**5).map(lambda d: d / 10), st.sampled_from([None, 1, 2, 3])),
    max_size=4,
    unique_by=lambda t: t[0],
).map(lambda ps: tuple(ChargingSchedulePeriod(s, lim, ph) for s, lim, ph in sorted([(0, 16.0, None), *ps])))
wire_profiles = st.builds(
    lambda id, stack, purpose, kind, rec, vf, vt, txid, unit, periods, dur, start, minr: ChargingProfile(
        id=id,
        stack_level=stack,
        purpose=purpose,
        kind=kind,
        recurrency=rec,
        valid_from=vf,
        valid_to=vt,
        transaction_id=txid,
        schedule=ChargingSchedule(unit, periods, dur, start, minr),
    ),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 100),
    st.sampled_from(Purpose),
    st.sampled_from(Kind),
    st.none() | st.sampled_from(Recurrency),
    st.none() | _times,
    st.none() | _times,
    st.none() | st.integers(0, 2**31 - 1),
    st.sampled_from(RateUnit),
    _periods,
    st.none() | st.integers(1, 10**7),
    st.none() | _times,
    st.none() | st.integers(0, 1000).map(lambda d: d / 10),
)


@settings(max_examples=200, deadline=None)
@given(wire_profiles)
def test_to_ocpp_then_from_ocpp_is_identity(p: ChargingProfile) -> None:
    assert ChargingProfile.from_ocpp(json.loads(json.dumps(p.to_ocpp()))) == p


# --- install rules ----------------------------------------------------------------


def test_a_plain_profile_is_accepted() -> None:
    check_installable(0, profile(), None, LIMITS)
    check_installable(3, profile(), None, LIMITS)
    check_installable(0, profile(Purpose.CHARGE_POINT_MAX), None, LIMITS)


def test_connector_must_exist() -> None:
    assert "connector 5 does not exist" in rejected(5, profile())
    assert "connector -1 does not exist" in rejected(-1, profile())


def test_charge_point_max_only_on_connector_0() -> None:
    assert "only be set on connector 0" in rejected(1, profile(Purpose.CHARGE_POINT_MAX))


def test_tx_profile_needs_a_connector_and_its_transaction() -> None:
    assert "connector > 0" in rejected(0, profile(Purpose.TX), TX)
    assert "without an active transaction" in rejected(1, profile(Purpose.TX), None)
    assert "transaction 7, connector 1 runs 42" in rejected(1, profile(Purpose.TX, transaction_id=7), TX)
    # A transaction started offline has no id yet: a profile naming one cannot be for it.
    offline = TxContext(started_at=T0)
    assert "runs None" in rejected(1, profile(Purpose.TX, transaction_id=42), offline)
    check_installable(1, profile(Purpose.TX, transaction_id=42), TX, LIMITS)
    check_installable(1, profile(Purpose.TX), TX, LIMITS)
    check_installable(1, profile(Purpose.TX), offline, LIMITS)


def test_transaction_id_only_in_a_tx_profile() -> None:
    assert "only valid in a TxProfile" in rejected(1, profile(Purpose.TX_DEFAULT, transaction_id=42), TX)


def test_stack_level_within_the_configured_maximum() -> None:
    check_installable(1, profile(stack_level=5), None, LIMITS)
    assert "stackLevel 6 outside 0..5" in rejected(1, profile(stack_level=6))
    assert "stackLevel -1" in rejected(1, profile(stack_level=-1))


def test_number_of_periods_within_the_configured_maximum() -> None:
    three = tuple(ChargingSchedulePeriod(s, 10.0) for s in (0, 60, 120))
    check_installable(1, profile(periods=three), None, LIMITS)
    four = (*three, ChargingSchedulePeriod(180, 10.0))
    assert "4 periods, more than ChargingScheduleMaxPeriods = 3" in rejected(1, profile(periods=four))
    assert "chargingSchedulePeriod is empty" in rejected(1, profile(periods=()))


def test_unit_must_be_allowed() -> None:
    watts = profile()
    watts = replace(watts, schedule=replace(watts.schedule, unit=RateUnit.W))
    check_installable(1, watts, None, LIMITS)
    amps_only = replace(LIMITS, allowed_units=frozenset({RateUnit.A}))
    with pytest.raises(ProfileRejected, match="chargingRateUnit W not allowed"):
        check_installable(1, watts, None, amps_only)


def test_periods_start_at_0_and_increase() -> None:
    late = (ChargingSchedulePeriod(10, 16.0),)
    assert "first period must have startPeriod 0" in rejected(1, profile(periods=late))
    unsorted = (ChargingSchedulePeriod(0, 16.0), ChargingSchedulePeriod(600, 8.0), ChargingSchedulePeriod(300, 6.0))
    assert "not strictly increasing" in rejected(1, profile(periods=unsorted))
    twice = (ChargingSchedulePeriod(0, 16.0), ChargingSchedulePeriod(0, 8.0))
    assert "not strictly increasing" in rejected(1, profile(periods=twice))


def test_limits_and_phases_in_range() -> None:
    assert "negative limit -1.0" in rejected(1, profile(periods=(ChargingSchedulePeriod(0, -1.0),)))
    check_installable(1, profile(periods=(ChargingSchedulePeriod(0, 0.0),)), None, LIMITS)  # 0 A = pause charging
    assert "numberPhases 4" in rejected(1, profile(periods=(ChargingSchedulePeriod(0, 6.0, 4),)))
    p = profile()
    assert "duration 0 is not positive" in rejected(1, replace(p, schedule=replace(p.schedule, duration_s=0)))
    assert "negative minChargingRate" in rejected(1, replace(p, schedule=replace(p.schedule, min_charging_rate=-6.0)))


def test_recurring_needs_recurrency_kind_and_start_schedule() -> None:
    check_installable(1, profile(kind=Kind.RECURRING, recurrency=Recurrency.WEEKLY), None, LIMITS)
    assert "needs recurrencyKind and startSchedule" in rejected(1, profile(kind=Kind.RECURRING))
    p = profile(kind=Kind.RECURRING, recurrency=Recurrency.DAILY)
    no_start = replace(p, schedule=replace(p.schedule, start_schedule=None))
    assert "needs recurrencyKind and startSchedule" in rejected(1, no_start)


def test_validity_window_must_not_be_empty() -> None:
    assert "validTo is not after validFrom" in rejected(1, profile(valid_from=T0, valid_to=T0))
    check_installable(1, profile(valid_from=T0, valid_to=T0 + timedelta(seconds=1)), None, LIMITS)


def test_config_keys_report_the_limits() -> None:
    assert LIMITS.config_keys() == {
        "ChargeProfileMaxStackLevel": "5",
        "ChargingScheduleAllowedChargingRateUnit": "Current,Power",
        "ChargingScheduleMaxPeriods": "3",
        "MaxChargingProfilesInstalled": "10",
    }
    power_only = ProfileLimits(number_of_connectors=1, allowed_units=frozenset({RateUnit.W}))
    assert power_only.config_keys()["ChargingScheduleAllowedChargingRateUnit"] == "Power"
