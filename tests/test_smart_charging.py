"""Smart Charging arithmetic (gateway.smart_charging): installed profiles, the limit in force, composite schedules."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.charging_profiles import (
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    Kind,
    ProfileLimits,
    ProfileRejected,
    Purpose,
    RateUnit,
    Recurrency,
    TxContext,
)
from gateway.smart_charging import CompositePeriod, Limit, ProfileSet, composite_to_ocpp

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)  # a Monday
H = timedelta(hours=1)
V = 230.0
LIMITS = ProfileLimits(number_of_connectors=4)
TX = TxContext(started_at=T0, transaction_id=42)

A_, W_ = RateUnit.A, RateUnit.W


def periods(*pairs: tuple[int, float] | tuple[int, float, int]) -> tuple[ChargingSchedulePeriod, ...]:
    return tuple(ChargingSchedulePeriod(*p) for p in pairs)


def prof(
    id: int,
    *parts: Purpose | Kind | tuple[int, float] | tuple[int, float, int],
    stack: int = 0,
    unit: RateUnit = A_,
    start: datetime | None = T0,
    duration: int | None = None,
    **changes: Any,
) -> ChargingProfile:
    """A profile from a purpose (TxDefaultProfile), a kind (Absolute) and (startPeriod, limit[, phases]) periods."""
    purpose = next((x for x in parts if isinstance(x, Purpose)), Purpose.TX_DEFAULT)
    kind = next((x for x in parts if isinstance(x, Kind)), Kind.ABSOLUTE)
    pairs = [x for x in parts if isinstance(x, tuple)] or [(0, 16.0)]
    schedule = ChargingSchedule(unit, periods(*pairs), duration, start)
    return replace(ChargingProfile(id=id, stack_level=stack, purpose=purpose, kind=kind, schedule=schedule), **changes)


def with_profiles(*entries: tuple[int, ChargingProfile], tx: TxContext | None = TX) -> ProfileSet:
    s = ProfileSet()
    for connector_id, p in entries:
        s.install(connector_id, p, tx=tx if p.purpose is Purpose.TX else None, limits=LIMITS)
    return s


def limit(
    s: ProfileSet, t: datetime, connector_id: int = 1, tx: TxContext | None = TX, phases: int = 3
) -> float | None:
    return s.limit_at(connector_id, t, tx, phases, V)


# --- install, replace, clear ------------------------------------------------------------


def test_same_id_replaces_the_profile_on_any_connector() -> None:
    s = with_profiles((1, prof(7)), (2, prof(8)))
    s.install(3, prof(7, stack=1), tx=None, limits=LIMITS)
    assert [(c, p.id) for c, p in s.installed()] == [(2, 8), (3, 7)]


def test_same_stack_level_and_purpose_on_the_connector_replaces() -> None:
    s = with_profiles((1, prof(1)), (2, prof(2)), (1, prof(3, stack=1)), (1, prof(4, Purpose.TX)))
    s.install(1, prof(5), tx=None, limits=LIMITS)
    assert [(c, p.id) for c, p in s.installed()] == [(1, 3), (1, 4), (1, 5), (2, 2)]


def test_rejected_install_changes_nothing() -> None:
    s = with_profiles((1, prof(1)))
    with pytest.raises(ProfileRejected):
        s.install(1, prof(1, Purpose.CHARGE_POINT_MAX), tx=None, limits=LIMITS)
    assert s.installed() == [(1, prof(1))]


def test_max_installed_counts_what_a_replacement_frees() -> None:
    two = replace(LIMITS, max_installed=2)
    s = ProfileSet()
    s.install(1, prof(1), tx=None, limits=two)
    s.install(2, prof(2), tx=None, limits=two)
    with pytest.raises(ProfileRejected, match="2 profiles installed, MaxChargingProfilesInstalled is 2"):
        s.install(3, prof(3), tx=None, limits=two)
    s.install(2, prof(4), tx=None, limits=two)  # replaces id 2: same stack level and purpose on connector 2
    s.install(3, prof(1), tx=None, limits=two)  # replaces id 1
    assert [(c, p.id) for c, p in s.installed()] == [(2, 4), (3, 1)]


def test_clear_by_id_ignores_the_other_criteria() -> None:
    s = with_profiles((1, prof(1)), (2, prof(2)))
    assert s.clear(id=1, connector_id=2, purpose=Purpose.TX, stack_level=9) == 1
    assert s.clear(id=1) == 0
    assert [p.id for _, p in s.installed()] == [2]


def test_clear_by_criteria() -> None:
    entries = [
        (0, prof(1, Purpose.CHARGE_POINT_MAX)),
        (0, prof(2, stack=1)),
        (1, prof(3)),
        (1, prof(4, Purpose.TX, stack=1)),
        (2, prof(5, stack=1)),
    ]
    assert with_profiles(*entries).clear(connector_id=1) == 2
    assert with_profiles(*entries).clear(connector_id=0, purpose=Purpose.TX_DEFAULT) == 1
    assert with_profiles(*entries).clear(stack_level=1) == 3
    assert with_profiles(*entries).clear(purpose=Purpose.TX_DEFAULT, stack_level=1) == 2
    assert with_profiles(*entries).clear(connector_id=3) == 0
    everything = with_profiles(*entries)
    assert everything.clear() == 5 and len(everything) == 0


def test_end_of_transaction_drops_only_its_tx_profiles() -> None:
    s = with_profiles((1, prof(1, Purpose.TX)), (1, prof(2)), (2, prof(3, Purpose.TX)))
    assert s.end_transaction(1) == 1
    assert [(c, p.id) for c, p in s.installed()] == [(1, 2), (2, 3)]
    assert s.end_transaction(1) == 0


def test_snapshot_round_trips_through_json() -> None:
    s = with_profiles((0, prof(1, Purpose.CHARGE_POINT_MAX, unit=W_)), (1, prof(2, Purpose.TX, transaction_id=42)))
    data = json.loads(json.dumps(s.to_json()))
    again = ProfileSet.from_json(data)
    assert again.installed() == s.installed()
    assert again.to_json() == s.to_json()


# --- which profile gives the limit ----------------------------------------------------------


def test_absolute_schedule_runs_from_start_schedule_for_its_duration() -> None:
    s = with_profiles((1, prof(1, Purpose.TX_DEFAULT, Kind.ABSOLUTE, (0, 16.0), (3600, 10.0), duration=7200)))
    assert limit(s, T0 - timedelta(seconds=1)) is None
    assert limit(s, T0) == 16.0
    assert limit(s, T0 + timedelta(seconds=3599)) == 16.0
    assert limit(s, T0 + H) == 10.0
    assert limit(s, T0 + 2 * H - timedelta(seconds=1)) == 10.0
    assert limit(s, T0 + 2 * H) is None


def test_validity_window_bounds_the_profile() -> None:
    s = with_profiles((1, prof(1, valid_from=T0 + H, valid_to=T0 + 2 * H)))
    assert [limit(s, T0 + k * H) for k in (0, 1, 2)] == [None, 16.0, None]


def test_relative_schedule_runs_from_the_transaction_start() -> None:
    s = with_profiles((1, prof(1, Purpose.TX_DEFAULT, Kind.RELATIVE, (0, 6.0), (1800, 32.0), start=None)))
    started = TxContext(started_at=T0 + 5 * H, transaction_id=42)
    assert limit(s, T0 + 5 * H, tx=started) == 6.0
    assert limit(s, T0 + 5 * H + timedelta(minutes=30), tx=started) == 32.0
    # With no transaction it is the limit a car would get if it started now: the first period.
    assert limit(s, T0 + 9 * H, tx=None) == 6.0


def test_absolute_without_start_schedule_runs_from_the_transaction_start() -> None:
    # §7.8 startSchedule: when absent, the schedule is relative to the start of charging.
    s = with_profiles((1, prof(1, Purpose.TX, Kind.ABSOLUTE, (0, 6.0), (600, 20.0), start=None)))
    started = TxContext(started_at=T0 + H, transaction_id=42)
    assert limit(s, T0 + H, tx=started) == 6.0
    assert limit(s, T0 + H + timedelta(minutes=10), tx=started) == 20.0


def test_daily_recurring_schedule() -> None:
    # Night charging: 32 A from 22:00 for 8 h, 10 A for the rest of the day.
    night = datetime(2026, 3, 1, 22, tzinfo=UTC)
    s = with_profiles(
        (
            0,
            prof(
                1,
                Purpose.TX_DEFAULT,
                Kind.RECURRING,
                (0, 32.0),
                (8 * 3600, 10.0),
                start=night,
                recurrency=Recurrency.DAILY,
            ),
        )
    )
    assert limit(s, night - timedelta(days=3) + H) == 32.0  # the pattern also holds before startSchedule
    for day in range(5):
        base = night + timedelta(days=day)
        assert limit(s, base) == 32.0
        assert limit(s, base + 7 * H) == 32.0
        assert limit(s, base + 8 * H) == 10.0
        assert limit(s, base + 23 * H) == 10.0


def test_weekly_recurring_schedule_with_a_duration() -> None:
    # Mondays 06:00-08:00 only; the rest of the week this profile does not apply.
    s = with_profiles(
        (
            1,
            prof(
                1, Purpose.TX_DEFAULT, Kind.RECURRING, (0, 8.0), start=T0, duration=7200, recurrency=Recurrency.WEEKLY
            ),
        )
    )
    assert limit(s, T0 + timedelta(days=14, hours=1)) == 8.0
    assert limit(s, T0 + timedelta(days=14, hours=2)) is None
    assert limit(s, T0 + timedelta(days=1)) is None


def test_higher_stack_level_wins_and_falls_through_when_it_ends() -> None:
    s = with_profiles(
        (1, prof(1, (0, 32.0), stack=0)),
        (1, prof(2, (0, 10.0), stack=3, duration=3600)),
        (1, prof(3, (0, 20.0), stack=2, valid_to=T0 + 2 * H)),
    )
    assert limit(s, T0) == 10.0
    assert limit(s, T0 + H) == 20.0
    assert limit(s, T0 + 2 * H) == 32.0


def test_tx_profile_overrides_the_default_for_its_transaction_only() -> None:
    s = with_profiles((1, prof(1, (0, 32.0), stack=5)), (1, prof(2, Purpose.TX, (0, 8.0), transaction_id=42)))
    assert limit(s, T0) == 8.0
    assert limit(s, T0, tx=None) == 32.0
    assert limit(s, T0, tx=TxContext(started_at=T0, transaction_id=43)) == 32.0


def test_connector_default_overrides_the_station_default() -> None:
    s = with_profiles((0, prof(1, (0, 20.0), stack=5)), (2, prof(2, (0, 12.0), duration=3600)))
    assert limit(s, T0, connector_id=2) == 12.0
    assert limit(s, T0, connector_id=1) == 20.0  # connector 0's default applies to every connector
    assert limit(s, T0 + H, connector_id=2) == 20.0  # the connector's own one has ended


def test_charge_point_max_caps_every_connector() -> None:
    s = with_profiles((0, prof(1, Purpose.CHARGE_POINT_MAX, (0, 25.0), (3600, 12.0))), (1, prof(2, (0, 16.0))))
    assert limit(s, T0) == 16.0
    assert limit(s, T0 + H) == 12.0
    assert limit(s, T0, connector_id=2) == 25.0
    assert s.station_max_at(T0, 3, V) == 25.0
    assert limit(s, T0, connector_id=0) == 25.0
    assert ProfileSet().station_max_at(T0, 3, V) is None


def test_watts_become_amperes_per_phase() -> None:
    three = with_profiles((1, prof(1, (0, 11040.0), unit=W_)))
    assert limit(three, T0) == pytest.approx(16.0)
    assert limit(three, T0, phases=1) == pytest.approx(48.0)  # the connector's phases cap numberPhases
    one = with_profiles((1, prof(1, (0, 3680.0, 1), unit=W_)))
    assert limit(one, T0) == pytest.approx(16.0)
    assert one.effective_limit(1, T0, TX, 3, V) == Limit(pytest.approx(16.0), 1)  # type: ignore[arg-type]


def test_phase_restriction_of_either_level_holds() -> None:
    s = with_profiles((0, prof(1, Purpose.CHARGE_POINT_MAX, (0, 10.0))), (1, prof(2, (0, 16.0, 1))))
    assert s.effective_limit(1, T0, TX, 3, V) == Limit(10.0, 1)
    s = with_profiles((0, prof(1, Purpose.CHARGE_POINT_MAX, (0, 32.0, 1))), (1, prof(2, (0, 16.0))))
    assert s.effective_limit(1, T0, TX, 3, V) == Limit(16.0, 1)


def test_bad_supply_figures_are_refused() -> None:
    with pytest.raises(ValueError, match="phases"):
        ProfileSet().limit_at(1, T0, None, 4, V)
    with pytest.raises(ValueError, match="voltage"):
        ProfileSet().station_max_at(T0, 3, 0.0)


# --- composite schedule -----------------------------------------------------------------


def test_composite_merges_levels_and_equal_neighbours() -> None:
    s = with_profiles(
        (0, prof(1, Purpose.CHARGE_POINT_MAX, (0, 20.0), (3600, 10.0), (7200, 32.0))),
        (1, prof(2, Purpose.TX_DEFAULT, Kind.ABSOLUTE, (0, 16.0), (1800, 10.0), start=T0 + timedelta(minutes=30))),
    )
    got = s.composite_schedule(1, T0, 4 * 3600, A_, TX, 3, V)
    assert got == [
        CompositePeriod(0, 20.0, 3),
        CompositePeriod(1800, 16.0, 3),
        CompositePeriod(3600, 10.0, 3),
    ]


def test_composite_shows_unlimited_stretches_as_none() -> None:
    s = with_profiles((1, prof(1, start=T0 + H, duration=1800)))
    assert s.composite_schedule(1, T0, 3 * 3600, A_, TX, 3, V) == [
        CompositePeriod(0, None, None),
        CompositePeriod(3600, 16.0, 3),
        CompositePeriod(5400, None, None),
    ]
    assert ProfileSet().composite_schedule(1, T0, 60, A_, None, 3, V) == [CompositePeriod(0, None, None)]


def test_composite_in_watts_and_for_the_station() -> None:
    s = with_profiles((0, prof(1, Purpose.CHARGE_POINT_MAX, (0, 32.0))), (1, prof(2, (0, 16.0, 1))))
    assert s.composite_schedule(1, T0, 60, W_, TX, 3, V) == [CompositePeriod(0, 3680.0, 1)]
    assert s.composite_schedule(0, T0, 60, W_, None, 3, V) == [CompositePeriod(0, 32 * 230 * 3, 3)]


def test_composite_without_transaction_starts_relative_schedules_at_its_start() -> None:
    s = with_profiles((1, prof(1, Purpose.TX_DEFAULT, Kind.RELATIVE, (0, 6.0), (600, 16.0), start=None)))
    got = s.composite_schedule(1, T0 + 3 * H, 3600, A_, None, 3, V)
    assert got == [CompositePeriod(0, 6.0, 3), CompositePeriod(600, 16.0, 3)]


def test_composite_needs_a_positive_duration() -> None:
    with pytest.raises(ValueError, match="duration"):
        ProfileSet().composite_schedule(1, T0, 0, A_, None, 3, V)


def test_composite_payload_for_the_wire() -> None:
    periods_ = [CompositePeriod(0, 15.94202898, 3), CompositePeriod(600, None, None), CompositePeriod(900, 6.0, 1)]
    assert composite_to_ocpp(1, T0, 1200, A_, periods_, unlimited=32.0) == {
        "status": "Accepted",
        "connectorId": 1,
        "scheduleStart": "2026-03-02T06:00:00.000Z",
        "chargingSchedule": {
            "duration": 1200,
            "startSchedule": "2026-03-02T06:00:00.000Z",
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [
                {"startPeriod": 0, "limit": 15.9, "numberPhases": 3},  # rounded down to the schema's 0.1
                {"startPeriod": 600, "limit": 32.0},
                {"startPeriod": 900, "limit": 6.0, "numberPhases": 1},
            ],
        },
    }


# --- properties ----------------------------------------------------------------------------

DAY = 86400
_offsets = st.integers(-2 * DAY, 2 * DAY)
_limits = st.integers(0, 640).map(lambda d: d / 10)
_schedule_periods = st.lists(
    st.tuples(st.integers(1, DAY), _limits, st.sampled_from([None, 1, 2, 3])), max_size=3, unique_by=lambda t: t[0]
).flatmap(
    lambda rest: _limits.map(lambda first: tuple(ChargingSchedulePeriod(*p) for p in sorted([(0, first, None), *rest])))
)


@st.composite
def installed_profile(draw: st.DrawFn, id: int) -> tuple[int, ChargingProfile]:
    purpose = draw(st.sampled_from(Purpose))
    connector_id = {Purpose.CHARGE_POINT_MAX: 0, Purpose.TX: 1, Purpose.TX_DEFAULT: draw(st.sampled_from([0, 1]))}[
        purpose
    ]
    # A station has no transaction to start a Relative schedule from; keep its maximum absolute or recurring.
    kinds = [Kind.ABSOLUTE, Kind.RECURRING] if purpose is Purpose.CHARGE_POINT_MAX else list(Kind)
    kind = draw(st.sampled_from(kinds))
    start = T0 + timedelta(seconds=draw(_offsets))
    has_start = kind is Kind.RECURRING or purpose is Purpose.CHARGE_POINT_MAX or draw(st.booleans())
    valid_from = draw(st.none() | _offsets.map(lambda o: T0 + timedelta(seconds=o)))
    valid_to = draw(st.none() | st.integers(1, 2 * DAY).map(lambda d: (valid_from or T0) + timedelta(seconds=d)))
    schedule = ChargingSchedule(
        draw(st.sampled_from(RateUnit)),
        draw(_schedule_periods),
        draw(st.none() | st.integers(1, 2 * DAY)),
        start if has_start else None,
    )
    profile = ChargingProfile(
        id=id,
        stack_level=draw(st.integers(0, 3)),
        purpose=purpose,
        kind=kind,
        recurrency=draw(st.sampled_from(Recurrency)) if kind is Kind.RECURRING else None,
        valid_from=valid_from,
        valid_to=valid_to,
        transaction_id=draw(st.sampled_from([None, 42])) if purpose is Purpose.TX else None,
        schedule=schedule,
    )
    return connector_id, profile


@st.composite
def profile_sets(draw: st.DrawFn) -> ProfileSet:
    s = ProfileSet()
    for id in range(draw(st.integers(0, 6))):
        connector_id, profile = draw(installed_profile(id))
        s.install(connector_id, profile, tx=TX, limits=LIMITS)
    return s


_txs = st.none() | _offsets.map(lambda o: TxContext(started_at=T0 + timedelta(seconds=o), transaction_id=42))


@settings(max_examples=150, deadline=None)
@given(
    s=profile_sets(),
    tx=_txs,
    start=_offsets,
    duration=st.integers(1, 3 * DAY),
    phases=st.sampled_from([1, 3]),
    data=st.data(),
)
def test_composite_agrees_with_limit_at_everywhere(
    s: ProfileSet, tx: TxContext | None, start: int, duration: int, phases: int, data: st.DataObject
) -> None:
    begin = T0 + timedelta(seconds=start)
    composite = s.composite_schedule(1, begin, duration, A_, tx, phases, V)
    # Without a transaction the composite is what a car starting at `begin` would get, TxProfiles aside.
    reference = ProfileSet.from_json(s.to_json())
    if tx is None:
        reference.end_transaction(1)
    as_tx = tx or TxContext(started_at=begin)
    assert composite[0].start_period_s == 0
    assert all(a.start_period_s < b.start_period_s for a, b in zip(composite, composite[1:], strict=False))
    assert all(
        (a.limit, a.number_phases) != (b.limit, b.number_phases) for a, b in zip(composite, composite[1:], strict=False)
    )
    samples = data.draw(st.lists(st.integers(0, duration - 1), min_size=1, max_size=20))
    for offset in [*samples, *(p.start_period_s for p in composite)]:
        period = [p for p in composite if p.start_period_s <= offset][-1]
        expected = reference.effective_limit(1, begin + timedelta(seconds=offset), as_tx, phases, V)
        if expected is None:
            assert period.limit is None
        else:
            assert period.limit == pytest.approx(expected.amps) and period.number_phases == expected.phases


@settings(max_examples=100, deadline=None)
@given(s=profile_sets(), base=_limits, tx=_txs, at=_offsets, phases=st.sampled_from([1, 2, 3]))
def test_station_max_is_never_exceeded(s: ProfileSet, base: float, tx: TxContext | None, at: int, phases: int) -> None:
    # A station maximum that always applies, under whatever the generated set stacks on top of it.
    always = prof(99, Purpose.CHARGE_POINT_MAX, (0, base), start=T0 - timedelta(days=9))
    s.install(0, always, tx=None, limits=LIMITS)
    now = T0 + timedelta(seconds=at)
    station = s.station_max_at(now, phases, V)
    assert station is not None
    for connector_id in (0, 1, 2):
        got = s.limit_at(connector_id, now, tx, phases, V)
        assert got is not None and got <= station


@settings(max_examples=100, deadline=None)
@given(s=profile_sets(), tx=_txs, at=_offsets)
def test_clearing_everything_leaves_no_limit(s: ProfileSet, tx: TxContext | None, at: int) -> None:
    s.clear()
    now = T0 + timedelta(seconds=at)
    assert [s.limit_at(c, now, tx, 3, V) for c in (0, 1, 2)] == [None, None, None]
    assert s.station_max_at(now, 3, V) is None


@settings(max_examples=100, deadline=None)
@given(s=profile_sets(), tx=_txs, at=_offsets)
def test_snapshot_keeps_every_limit(s: ProfileSet, tx: TxContext | None, at: int) -> None:
    again = ProfileSet.from_json(json.loads(json.dumps(s.to_json())))
    now = T0 + timedelta(seconds=at)
    assert [again.effective_limit(c, now, tx, 3, V) for c in (0, 1, 2)] == [
        s.effective_limit(c, now, tx, 3, V) for c in (0, 1, 2)
    ]


@settings(max_examples=100, deadline=None)
@given(low=_limits, high=_limits, stack=st.integers(1, 8), window=st.tuples(_offsets, st.integers(1, DAY)), at=_offsets)
def test_higher_stack_level_wins_while_valid(
    low: float, high: float, stack: int, window: tuple[int, int], at: int
) -> None:
    valid_from = T0 + timedelta(seconds=window[0])
    valid_to = valid_from + timedelta(seconds=window[1])
    s = with_profiles(
        (1, prof(1, (0, low), start=T0 - timedelta(days=3), stack=stack - 1)),
        (1, prof(2, (0, high), start=T0 - timedelta(days=3), stack=stack, valid_from=valid_from, valid_to=valid_to)),
    )
    now = T0 + timedelta(seconds=at)
    assert limit(s, now) == (high if valid_from <= now < valid_to else low)


@settings(max_examples=100, deadline=None)
@given(
    watts=st.integers(0, 50000).map(float),
    number_phases=st.sampled_from([None, 1, 2, 3]),
    connector_phases=st.sampled_from([1, 2, 3]),
    volts=st.sampled_from([110.0, 230.0, 240.0]),
)
def test_watts_and_amperes_round_trip(
    watts: float, number_phases: int | None, connector_phases: int, volts: float
) -> None:
    s = ProfileSet()
    s.install(1, prof(1, (0, watts, number_phases) if number_phases else (0, watts), unit=W_), tx=None, limits=LIMITS)
    used = min(number_phases or 3, connector_phases)
    amps = s.limit_at(1, T0, None, connector_phases, volts)
    assert amps is not None and amps * volts * used == pytest.approx(watts)
    [period] = s.composite_schedule(1, T0, 60, W_, None, connector_phases, volts)
    assert period.limit == pytest.approx(watts) and period.number_phases == used


@settings(max_examples=100, deadline=None)
@given(
    pattern=_schedule_periods,
    kind=st.sampled_from(Recurrency),
    anchor=_offsets,
    at=st.integers(0, 30 * DAY),
    repeats=st.integers(1, 5),
)
def test_recurring_profile_repeats(
    pattern: tuple[ChargingSchedulePeriod, ...], kind: Recurrency, anchor: int, at: int, repeats: int
) -> None:
    start = T0 + timedelta(seconds=anchor)
    p = replace(
        prof(1, Purpose.TX_DEFAULT, Kind.RECURRING, start=start, recurrency=kind),
        schedule=ChargingSchedule(A_, pattern, None, start),
    )
    s = with_profiles((0, p))
    step = timedelta(days=1 if kind is Recurrency.DAILY else 7)
    now = start + timedelta(seconds=at)
    assert limit(s, now) is not None
    assert limit(s, now + repeats * step) == limit(s, now) == limit(s, now - step)
