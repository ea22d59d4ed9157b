"""Site load sharing: the per-phase limit, min/max, fair shares, rotation, give-back, stability and snapshots."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.load_sharing import Allocation, Demand, LoadSharer, LoadSharingError, Reason, SharingPolicy, SnapshotError

L1, L2, L3, THREE = frozenset({1}), frozenset({2}), frozenset({3}), frozenset({1, 2, 3})
TOL = 1e-6  # amps are floats of whole 0.1 A steps; the sums are exact in steps

tenths = st.integers(0, 800).map(lambda t: t / 10)
phase_sets = st.sampled_from([L1, L2, L3, THREE, frozenset({1, 2})])
limits = st.tuples(tenths, tenths, tenths)
caps = st.none() | st.integers(-10, 800).map(lambda t: t / 10)


@st.composite
def demand_lists(draw: st.DrawFn, max_n: int = 16, tenth_bounds: bool = False) -> list[Demand]:
    """Random connectors; with tenth_bounds, min and max are whole 0.1 A (the chargers' resolution)."""
    out = []
    for cid in range(1, draw(st.integers(0, max_n)) + 1):
        if tenth_bounds:
            min_a = draw(st.integers(10, 160)) / 10
            max_a = draw(st.integers(0, 400)) / 10
        else:
            min_a = draw(st.floats(0.5, 16.0))
            max_a = draw(st.floats(0.0, 40.0))
        drawn = draw(st.none() | st.tuples(tenths, tenths, tenths))
        wants = draw(st.sampled_from([True, True, True, False]))
        out.append(Demand(cid, draw(phase_sets), min_a, max_a, wants, drawn, since=draw(st.floats(-1e4, 1e4))))
    return out


def phase_sums(alloc: Allocation, demands: list[Demand]) -> list[float]:
    sums = [0.0, 0.0, 0.0]
    for d in demands:
        for p in d.phases:
            sums[p - 1] += alloc.amps(d.connector_id)
    return sums


def policy(limit: float | tuple[float, float, float] = 63.0, **kw: float) -> SharingPolicy:
    phase_limit = limit if isinstance(limit, tuple) else (limit, limit, limit)
    return SharingPolicy(phase_limit, **kw)


# --- the hard invariants, for random demands over a sequence of calls -------------------------------


@settings(max_examples=120, deadline=None)
@given(limits, st.lists(st.tuples(st.floats(0.0, 400.0), demand_lists(), caps), min_size=1, max_size=10))
def test_phase_sums_never_exceed_the_capped_limit_and_grants_are_zero_or_within_min_max(
    limit: tuple[float, float, float], steps: list[tuple[float, list[Demand], float | None]]
) -> None:
    sharer = LoadSharer(SharingPolicy(limit, give_back_after_s=30.0))
    now = 0.0
    for dt, demands, cap in steps:
        now += dt
        alloc = sharer.allocate(now, demands, cap)
        effective = [min(a, max(0.0, cap)) if cap is not None else a for a in limit]
        assert alloc.limit_a == pytest.approx(effective)
        for p, total in enumerate(phase_sums(alloc, demands)):
            assert total <= effective[p] + TOL
            assert alloc.load_a[p] == pytest.approx(total, abs=TOL)
        assert set(alloc.grants) == {d.connector_id for d in demands}
        for d in demands:
            amps = alloc.amps(d.connector_id)
            assert amps == 0 or d.min_a - TOL <= amps <= d.max_a + TOL
            running_reasons = (Reason.SHARE, Reason.CAPPED_BY_MAX, Reason.GAVE_BACK)
            paused_reasons = (Reason.CAPPED_BY_MAX, Reason.MIN_NOT_AVAILABLE_PAUSED, Reason.ROTATION, Reason.IDLE, Reason.GAVE_BACK)  # a full car yields its place
            assert alloc.reason(d.connector_id) in (running_reasons if amps > 0 else paused_reasons)
            if not d.wants_current:
                assert alloc.grants[d.connector_id].reason is Reason.IDLE and amps == 0


@settings(max_examples=80, deadline=None)
@given(limits, st.lists(st.tuples(st.floats(0.0, 2000.0), demand_lists(tenth_bounds=True)), min_size=1, max_size=5))
def test_nobody_is_paused_when_the_limit_covers_every_minimum(
    limit: tuple[float, float, float], steps: list[tuple[float, list[Demand]]]
) -> None:
    sharer = LoadSharer(SharingPolicy(limit))
    now = 0.0
    for dt, demands in steps:
        now += dt
        alloc = sharer.allocate(now, demands)
        eligible = [d for d in demands if d.wants_current and d.max_a >= d.min_a]
        needed = [sum(d.min_a for d in eligible if p in d.phases) for p in (1, 2, 3)]
        if all(n <= lim + TOL for n, lim in zip(needed, limit, strict=True)):
            assert all(alloc.amps(d.connector_id) > 0 for d in eligible)
        for d in demands:
            if d.wants_current and d.max_a < d.min_a:
                assert alloc.reason(d.connector_id) is Reason.CAPPED_BY_MAX


# --- fair shares ---------------------------------------------------------------------------------------


def test_equal_split_then_what_capped_cars_cannot_use_goes_to_the_others() -> None:
    sharer = LoadSharer(policy(32.0))
    demands = [Demand(1, L1, max_a=6.0), Demand(2, L1, max_a=32.0), Demand(3, L1, max_a=32.0)]
    alloc = sharer.allocate(0.0, demands)
    assert [alloc.amps(c) for c in (1, 2, 3)] == [6.0, 13.0, 13.0]
    assert alloc.reason(1) is Reason.CAPPED_BY_MAX and alloc.reason(2) is Reason.SHARE


def test_a_phase_limit_constrains_only_the_connectors_on_that_phase() -> None:
    sharer = LoadSharer(policy((12.0, 63.0, 63.0)))
    demands = [Demand(1, L1), Demand(2, L1), Demand(3, L2), Demand(4, THREE)]
    alloc = sharer.allocate(0.0, demands)
    # L1 holds 12 A: two of the three cars on it at 6 A; the 1-phase car on L2 is untouched.
    assert alloc.amps(3) == 32.0
    assert sum(alloc.amps(c) for c in (1, 2, 4)) == 12.0
    assert sorted(alloc.amps(c) for c in (1, 2, 4)) == [0.0, 6.0, 6.0]


def test_max_min_fairness_on_phases_a_three_phase_car_is_held_by_its_busiest_phase() -> None:
    sharer = LoadSharer(policy((20.0, 40.0, 40.0)))
    alloc = sharer.allocate(0.0, [Demand(1, THREE), Demand(2, L1), Demand(3, L2)])
    assert (alloc.amps(1), alloc.amps(2), alloc.amps(3)) == (10.0, 10.0, 30.0)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 10), st.sampled_from([L1, THREE]), st.data())
def test_when_a_car_leaves_its_share_goes_to_the_others(n: int, phases: frozenset[int], data: st.DataObject) -> None:
    # Everyone fits at the minimum, so no waiting car takes the leaver's place (that case is below).
    limit = data.draw(st.integers(60 * n, max(60 * n, 1000))) / 10
    maxes = data.draw(st.lists(st.integers(60, 320), min_size=n, max_size=n))
    demands = [Demand(i + 1, phases, max_a=m / 10) for i, m in enumerate(maxes)]
    sharer = LoadSharer(policy(limit, hysteresis_a=0.0))
    before = sharer.allocate(0.0, demands)
    leaver = data.draw(st.sampled_from(demands))
    rest = [d for d in demands if d is not leaver]
    after = sharer.allocate(10.0, rest)
    for d in rest:
        assert after.amps(d.connector_id) >= before.amps(d.connector_id) > 0
    # Nothing is left on the table: the phase is full, or every car is at its max.
    assert math.isclose(after.load_a[0], min(limit, sum(d.max_a for d in rest)), abs_tol=TOL)


# --- rotation --------------------------------------------------------------------------------------------


def simulate(
    sharer: LoadSharer, cars: list[tuple[frozenset[int], bool]], hours: float, step_s: float = 30.0
) -> dict[int, list[tuple[bool, float]]]:
    """Call allocate every step; a full car draws nothing, the others what they are allowed.

    Returns per connector its (charging, seconds) stretches.
    """
    stretches: dict[int, list[tuple[bool, float]]] = {cid: [] for cid in range(1, len(cars) + 1)}
    drawn = dict.fromkeys(stretches, 0.0)
    now = 0.0
    while now < hours * 3600:
        demands = [Demand(cid, phases, drawn_a=(drawn[cid],) * 3) for cid, (phases, _) in enumerate(cars, start=1)]
        alloc = sharer.allocate(now, demands)
        for cid, (_, full) in enumerate(cars, start=1):
            drawn[cid] = 0.0 if full else alloc.amps(cid)
            on = alloc.amps(cid) > 0
            runs = stretches[cid]
            if runs and runs[-1][0] == on:
                runs[-1] = (on, runs[-1][1] + step_s)
            else:
                runs.append((on, step_s))
        now += step_s
    return stretches


@settings(max_examples=20, deadline=None)
@given(st.lists(phase_sets, min_size=2, max_size=12), st.integers(60, 400))
def test_over_a_long_run_every_car_charges_and_nobody_flaps(cars: list[frozenset[int]], limit_d: int) -> None:
    rotation = 300.0
    sharer = LoadSharer(policy(limit_d / 10, rotation_s=rotation))
    stretches = simulate(sharer, [(phases, False) for phases in cars], hours=4 * len(cars) * rotation / 3600 + 1)
    for runs in stretches.values():
        assert any(on for on, _ in runs), "a car was starved"
        # Inner stretches are complete: a started car keeps its full turn, a paused car
        # waits for a boundary, and gets in within two periods per car that can be ahead of it.
        for on, seconds in runs[1:-1]:
            assert seconds >= rotation
            if not on:
                assert seconds <= 2 * len(cars) * rotation


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(phase_sets, st.booleans()), min_size=2, max_size=12), st.integers(60, 400))
def test_full_cars_give_their_places_to_cars_that_charge(cars: list[tuple[frozenset[int], bool]], limit_d: int) -> None:
    rotation = 300.0
    sharer = LoadSharer(policy(limit_d / 10, rotation_s=rotation, yielded_retry_s=1200.0))
    stretches = simulate(sharer, cars, hours=4 * len(cars) * rotation / 3600 + 1)
    for (_, full), runs in zip(cars, stretches.values(), strict=True):
        if not full:
            assert any(on for on, _ in runs), "a car that charges was starved"
            assert all(seconds >= rotation for on, seconds in runs[1:-1] if on)


def on(alloc: Allocation) -> list[int]:
    return [cid for cid, grant in alloc.grants.items() if grant.amps > 0]


def test_rotation_pauses_the_car_that_charged_longest_and_starts_the_one_paused_longest() -> None:
    sharer = LoadSharer(policy(12.0, rotation_s=900.0))  # room for two at 6 A
    one, two, three = (Demand(c, L1, since=float(c)) for c in (1, 2, 3))
    assert on(sharer.allocate(0.0, [one])) == [1]
    assert on(sharer.allocate(10.0, [one, two])) == [1, 2]
    waiting = sharer.allocate(20.0, [one, two, three])
    assert on(waiting) == [1, 2] and waiting.reason(3) is Reason.ROTATION
    assert on(sharer.allocate(899.0, [one, two, three])) == [1, 2]
    assert on(sharer.allocate(900.0, [one, two, three])) == [2, 3]  # 1's turn is over
    # 2 started 10 s after a boundary: its turn runs to the next one, so 1 is not back after 10 s.
    assert on(sharer.allocate(910.0, [one, two, three])) == [2, 3]
    assert on(sharer.allocate(1800.0, [one, two, three])) == [1, 3]  # 2 charged longest, 1 waited longest
    assert on(sharer.allocate(2700.0, [one, two, three])) == [1, 2]


def test_a_three_phase_car_is_not_starved_by_one_phase_cars_with_staggered_turns() -> None:
    sharer = LoadSharer(policy(6.0, rotation_s=900.0))  # one 6 A slot per phase
    a, b, c = Demand(1, L1, since=0.0), Demand(2, L2, since=450.0), Demand(3, L1, since=20.0)
    big = Demand(4, THREE, since=10.0)
    assert sharer.allocate(0.0, [a]).amps(1) == 6.0
    assert sharer.allocate(10.0, [a, big, c]).amps(4) == 0
    # L2 is free, but the 3-phase car queued first reserves it: b may not start a turn there.
    assert sharer.allocate(450.0, [a, big, c, b]).amps(2) == 0
    alloc = sharer.allocate(900.0, [a, big, c, b])
    assert alloc.amps(4) == 6.0 and alloc.amps(1) == 0


def test_a_car_that_left_frees_its_place_before_the_turn_ends() -> None:
    sharer = LoadSharer(policy(12.0))
    demands = [Demand(c, L1, since=float(c)) for c in (1, 2, 3)]
    sharer.allocate(0.0, demands)
    alloc = sharer.allocate(60.0, [demands[1], demands[2], Demand(1, L1, wants_current=False)])
    assert alloc.amps(3) == 6.0 and alloc.reason(1) is Reason.IDLE


# --- limits from outside -------------------------------------------------------------------------------


def test_a_lower_station_cap_sheds_cars_at_once_even_within_their_turn() -> None:
    sharer = LoadSharer(policy(63.0))
    demands = [Demand(c, L1, since=float(c)) for c in (1, 2, 3)]
    assert all(a.amps > 0 for a in sharer.allocate(0.0, demands).grants.values())
    alloc = sharer.allocate(10.0, demands, station_cap_a=13.0)
    assert alloc.load_a[0] <= 13.0 and [alloc.amps(c) for c in (1, 2, 3)].count(0.0) == 1
    assert Reason.MIN_NOT_AVAILABLE_PAUSED in {alloc.reason(c) for c in (1, 2, 3)}
    zero = sharer.allocate(20.0, demands, station_cap_a=0.0)
    assert {g.reason for g in zero.grants.values()} == {Reason.MIN_NOT_AVAILABLE_PAUSED} and zero.load_a == (
        0.0,
        0.0,
        0.0,
    )


def test_a_max_below_the_minimum_pauses_the_connector() -> None:
    alloc = LoadSharer(policy(63.0)).allocate(0.0, [Demand(1, L1, max_a=4.0), Demand(2, L1, max_a=16.0)])
    assert alloc.grants[1].amps == 0 and alloc.reason(1) is Reason.CAPPED_BY_MAX
    assert alloc.amps(2) == 16.0 and alloc.reason(2) is Reason.CAPPED_BY_MAX


# --- give-back -----------------------------------------------------------------------------------------------


def drawing(d: Demand, amps: float) -> Demand:
    return Demand(d.connector_id, d.phases, d.min_a, d.max_a, d.wants_current, (amps, amps, amps), d.since)


def test_a_car_drawing_less_gives_the_rest_back_and_ramps_up_again() -> None:
    sharer = LoadSharer(policy(32.0))
    a, b = Demand(1, L1, max_a=32.0), Demand(2, L1, max_a=32.0)
    assert sharer.allocate(0.0, [a, b]).amps(1) == 16.0
    sharer.allocate(10.0, [drawing(a, 8.0), drawing(b, 16.0)])  # low from now on
    assert sharer.allocate(69.0, [drawing(a, 8.0), drawing(b, 16.0)]).amps(1) == 16.0  # not long enough yet
    alloc = sharer.allocate(70.0, [drawing(a, 8.0), drawing(b, 16.0)])
    assert (alloc.amps(1), alloc.amps(2)) == (10.0, 22.0) and alloc.reason(1) is Reason.GAVE_BACK
    up = sharer.allocate(80.0, [drawing(a, 9.5), drawing(b, 22.0)])  # draws near its cap: +4 A
    assert (up.amps(1), up.amps(2)) == (14.0, 18.0)
    back = sharer.allocate(90.0, [drawing(a, 13.5), drawing(b, 18.0)])
    assert (back.amps(1), back.amps(2)) == (16.0, 16.0) and back.reason(1) is Reason.SHARE


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(60, 320), min_size=2, max_size=8), st.integers(0, 200), st.integers(200, 900))
def test_give_back_redistributes_to_the_others(maxes: list[int], low_d: int, limit_d: int) -> None:
    limit, low = limit_d / 10, low_d / 10
    demands = [Demand(i + 1, THREE, max_a=m / 10) for i, m in enumerate(maxes)]
    sharer = LoadSharer(policy(limit, hysteresis_a=0.0))
    before = sharer.allocate(0.0, demands)
    taper = demands[0]
    assume(before.amps(1) - low > 3.0)  # otherwise it draws about what it got: nothing to give back
    with_low = [drawing(taper, low), *demands[1:]]
    sharer.allocate(1.0, with_low)
    after = sharer.allocate(100.0, with_low)
    assert after.amps(1) <= max(taper.min_a, low + 2.0) + TOL
    others_before = sum(before.amps(d.connector_id) for d in demands[1:])
    others_after = sum(after.amps(d.connector_id) for d in demands[1:])
    freed = before.amps(1) - after.amps(1)
    room = sum(d.max_a for d in demands[1:] if after.amps(d.connector_id) > 0) - others_before
    assert others_after >= others_before + min(freed, room) - 0.1 * len(demands)


def test_a_full_car_yields_its_turn_to_a_waiting_car() -> None:
    sharer = LoadSharer(policy(6.0))
    full, waiting = Demand(1, L1, since=0.0), Demand(2, L1, since=1.0)
    sharer.allocate(0.0, [full, waiting])
    sharer.allocate(10.0, [drawing(full, 0.0), waiting])
    alloc = sharer.allocate(70.0, [drawing(full, 0.0), waiting])
    assert alloc.amps(2) == 6.0 and alloc.amps(1) == 0


# --- stability ---------------------------------------------------------------------------------------------


def test_small_changes_are_suppressed_unless_the_limit_needs_them() -> None:
    sharer = LoadSharer(policy(40.0))
    demands = [Demand(1, L1), Demand(2, L1)]
    assert sharer.allocate(0.0, demands, station_cap_a=32.0).amps(1) == 16.0
    assert sharer.allocate(1.0, demands, station_cap_a=32.6).amps(1) == 16.0  # +0.3 A each: kept
    assert sharer.allocate(2.0, demands, station_cap_a=34.0).amps(1) == 17.0
    squeezed = sharer.allocate(3.0, demands, station_cap_a=33.6)  # -0.2 A each would overflow: follows
    assert squeezed.load_a[0] <= 33.6 and squeezed.amps(1) == 16.8


# --- persistence and errors -------------------------------------------------------------------------------------


def test_a_snapshot_survives_a_reboot_of_the_monotonic_clock() -> None:
    pol = policy(12.0)
    demands = [Demand(c, L1, since=float(c)) for c in (1, 2, 3)]
    original = LoadSharer(pol)
    original.allocate(1000.0, demands)
    original.allocate(1100.0, [drawing(demands[0], 1.0), *demands[1:]])
    data = json.loads(json.dumps(original.to_json(1500.0)))
    restored = LoadSharer.from_json(data, 7.0, pol)  # the clock restarted near 0
    for dt in (0.0, 399.0, 400.0, 1300.0, 2200.0):
        assert original.allocate(1500.0 + dt, demands) == restored.allocate(7.0 + dt, demands)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"version": 2, "connectors": {}},
        {"version": 1, "connectors": []},
        {"version": 1, "connectors": {"x": {}}},
        {"version": 1, "connectors": {"1": {"running": True}}},
    ],
)
def test_a_malformed_snapshot_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(SnapshotError):
        LoadSharer.from_json(data, 0.0, policy())


def test_bad_inputs_raise_gateway_errors() -> None:
    with pytest.raises(LoadSharingError):
        Demand(1, frozenset({4}))
    with pytest.raises(LoadSharingError):
        Demand(1, L1, min_a=0.0)
    with pytest.raises(LoadSharingError):
        Demand(1, L1, drawn_a=(1.0, math.nan, 0.0))
    with pytest.raises(LoadSharingError):
        policy(63.0, give_back_headroom_a=5.0)
    with pytest.raises(LoadSharingError):
        SharingPolicy((63.0, -1.0, 63.0))
    with pytest.raises(LoadSharingError):
        LoadSharer(policy()).allocate(0.0, [Demand(1, L1), Demand(1, L2)])
    with pytest.raises(LoadSharingError):
        LoadSharer(policy()).allocate(0.0, [], station_cap_a=math.nan)
    assert issubclass(LoadSharingError, GatewayError) and issubclass(SnapshotError, LoadSharingError)
