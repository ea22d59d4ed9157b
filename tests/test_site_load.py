"""The site share applied slave by slave: the offered currents never sum above the limit, even mid-change."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.load_sharing import Demand, SnapshotError
from gateway.site_load import Outlet, SiteLoad

THREE = (1, 2, 3)


def _demand(o: Outlet, since: float = 0.0, wants: bool = True) -> Demand:
    return Demand(o.connector_id, frozenset(o.phases), min_a=o.min_a, max_a=o.max_a, wants_current=wants, since=since)


def _phase_sums(site: SiteLoad, offered: dict[int, float]) -> list[float]:
    return [sum(a for c, a in offered.items() if p in site.outlets[c].phases) for p in THREE]


outlets_st = st.lists(
    st.tuples(st.sampled_from([(1,), (2,), (3,), (1, 2, 3), (2, 3, 1)]), st.sampled_from([16.0, 32.0])),
    min_size=1, max_size=8,
).map(lambda xs: [Outlet(i + 1, phases, 6.0, max_a) for i, (phases, max_a) in enumerate(xs)])


@settings(max_examples=60, deadline=None)
@given(
    outlets=outlets_st,
    limit=st.floats(min_value=6.0, max_value=80.0),
    cap=st.one_of(st.none(), st.floats(min_value=0.0, max_value=64.0)),
    script=st.lists(st.tuples(st.integers(0, 7), st.booleans(), st.floats(0, 400)), min_size=1, max_size=60),
)
def test_polling_the_slaves_one_by_one_never_offers_above_the_limit(
    outlets: list[Outlet], limit: float, cap: float | None, script: list[tuple[int, bool, float]]
) -> None:
    """Cars come and go; each step one slave is polled and written. The limit holds after every write."""
    site = SiteLoad(outlets, (limit, limit, limit), rotation_s=900.0)
    offered = {o.connector_id: 0.0 for o in outlets}  # every slave paused at the start
    wanting: set[int] = set()
    now = 0.0
    for index, toggle, dt in script:
        now += dt
        cid = outlets[index % len(outlets)].connector_id
        if toggle:
            wanting ^= {cid}
        demands = [_demand(o, wants=o.connector_id in wanting) for o in outlets]
        allowed = site.allowed_a(cid, now, demands, offered, cap)
        offered[cid] = allowed if cid in wanting else 0.0
        effective = min(limit, cap) if cap is not None else limit
        for total in _phase_sums(site, offered):
            assert total <= effective + 1e-6
        assert allowed == 0.0 or 6.0 <= allowed <= site.outlets[cid].max_a


def test_an_increase_waits_until_the_others_have_come_down() -> None:
    a, b = Outlet(1, THREE, 6.0, 32.0), Outlet(2, THREE, 6.0, 32.0)
    site = SiteLoad([a, b], (40.0, 40.0, 40.0), rotation_s=900.0)
    # a charges alone at 32 A; then b's car arrives: the fair share is 20 A each.
    assert site.allowed_a(1, 0.0, [_demand(a), _demand(b, wants=False)], {1: 0.0, 2: 0.0}, None) == 32.0
    demands = [_demand(a), _demand(b, since=10.0)]
    assert site.allowed_a(2, 10.0, demands, {1: 32.0, 2: 0.0}, None) == 8.0  # only what a's 32 A leave
    assert site.why(2, 8.0) == "share; 20.0 A once the others have come down"
    assert site.allowed_a(1, 11.0, demands, {1: 32.0, 2: 8.0}, None) == 20.0  # a comes down at its poll
    assert site.allowed_a(2, 12.0, demands, {1: 20.0, 2: 8.0}, None) == 20.0  # and b goes up at its next
    assert site.why(2, 20.0) == "share"


def test_less_room_than_the_minimum_pauses() -> None:
    a, b = Outlet(1, THREE, 6.0, 32.0), Outlet(2, THREE, 6.0, 32.0)
    site = SiteLoad([a, b], (40.0, 40.0, 40.0), rotation_s=900.0)
    assert site.allowed_a(2, 0.0, [_demand(a), _demand(b)], {1: 36.0, 2: 0.0}, None) == 0.0


def test_a_charge_point_max_profile_caps_the_whole_cluster() -> None:
    outlets = [Outlet(c, THREE, 6.0, 16.0) for c in (1, 2, 3)]
    site = SiteLoad(outlets, None, rotation_s=900.0)  # no site fuse configured
    demands = [_demand(o) for o in outlets]
    idle = {1: 0.0, 2: 0.0, 3: 0.0}
    assert site.allowed_a(1, 0.0, demands, idle, None) == 16.0  # without a profile: every outlet at its max
    assert site.allowed_a(1, 1.0, demands, idle, 30.0) == 10.0  # the backend's 30 A shared by three


def test_a_one_phase_outlet_counts_only_on_its_phase() -> None:
    l1, l2 = Outlet(1, (1,), 6.0, 32.0), Outlet(2, (2,), 6.0, 32.0)
    site = SiteLoad([l1, l2], (20.0, 20.0, 20.0), rotation_s=900.0)
    assert site.allowed_a(2, 0.0, [_demand(l1), _demand(l2)], {1: 20.0, 2: 0.0}, None) == 20.0
    assert site.drawn(2, (13.5, None, None)) == (0.0, 13.5, 0.0)
    assert site.drawn(2, (None, None, None)) is None


@settings(max_examples=60, deadline=None)
@given(outlets=outlets_st, limit=st.floats(min_value=1.0, max_value=80.0), configured=st.one_of(st.none(), st.floats(0, 40)))
def test_every_slave_failing_safe_at_once_stays_within_the_limit(
    outlets: list[Outlet], limit: float, configured: float | None
) -> None:
    site = SiteLoad(outlets, (limit, limit, limit), rotation_s=900.0)
    failsafe = {o.connector_id: site.failsafe_a(o.connector_id, configured) for o in outlets}
    for total in _phase_sums(site, failsafe):
        assert total <= limit + 1e-6
    for o in outlets:
        amps = failsafe[o.connector_id]
        assert amps == 0.0 or o.min_a <= amps <= o.max_a
        assert configured is None or amps <= configured


def test_fail_safe_share_per_phase() -> None:
    outlets = [Outlet(1, THREE, 6.0, 16.0), Outlet(2, THREE, 6.0, 16.0), Outlet(3, (1,), 6.0, 16.0)]
    site = SiteLoad(outlets, (32.0, 32.0, 32.0), rotation_s=900.0)
    assert site.failsafe_a(1, None) == 10.6  # L1 carries three outlets: 32 / 3, to 0.1 A below
    assert site.failsafe_a(3, None) == 10.6
    assert site.failsafe_a(1, 8.0) == 8.0
    assert site.failsafe_a(1, 5.0) == 0.0  # below the minimum: pause rather than an invalid setpoint


def test_turns_survive_a_restart_and_a_bad_snapshot_is_refused() -> None:
    outlets = [Outlet(c, THREE, 6.0, 16.0) for c in (1, 2, 3)]
    site = SiteLoad(outlets, (12.0, 12.0, 12.0), rotation_s=900.0)  # room for the minimum of two
    demands = [_demand(o, since=float(o.connector_id)) for o in outlets]
    idle = {1: 0.0, 2: 0.0, 3: 0.0}

    def running(s: SiteLoad, now: float) -> list[int]:
        return [c for c in (1, 2, 3) if s.allowed_a(c, now, demands, idle, None)]

    assert running(site, 100.0) == [1, 2]  # first come, first served
    turned = running(site, 1800.0)  # a full turn later, at the next boundary, the waiting car gets in
    assert 3 in turned and len(turned) == 2
    again = SiteLoad(outlets, (12.0, 12.0, 12.0), rotation_s=900.0)
    again.restore(site.snapshot(1800.0), 5.0)  # the monotonic clock restarted at boot
    assert running(again, 6.0) == turned
    assert running(SiteLoad(outlets, (12.0, 12.0, 12.0), rotation_s=900.0), 6.0) == [1, 2], "without the snapshot: car 3 waits again"
    with pytest.raises(SnapshotError):
        again.restore(["not", "a", "snapshot"], 5.0)


def test_the_site_is_decided_again_when_a_car_comes_not_at_every_poll() -> None:
    a, b = Outlet(1, THREE, 6.0, 32.0), Outlet(2, THREE, 6.0, 32.0)
    site = SiteLoad([a, b], (40.0, 40.0, 40.0), rotation_s=900.0)
    alone = [_demand(a), _demand(b, wants=False)]
    assert site.allowed_a(1, 0.0, alone, {1: 0.0, 2: 0.0}, None) == 32.0
    first = site.allocation
    site.allowed_a(2, 0.3, alone, {1: 32.0, 2: 0.0}, None)
    assert site.allocation is first, "the other connector's poll reuses the decision"
    site.allowed_a(2, 0.5, [_demand(a), _demand(b)], {1: 32.0, 2: 0.0}, None)
    assert site.allocation is not first and site.allocation is not None and site.allocation.amps(2) == 20.0, "a car came"
    second = site.allocation
    site.allowed_a(1, 0.6, [_demand(a), _demand(b)], {1: 32.0, 2: 0.0}, 30.0)
    assert site.allocation is not second and site.allocation.amps(1) == 15.0, "the station cap moved"
    third = site.allocation
    site.allowed_a(1, 1.7, [_demand(a), _demand(b)], {1: 15.0, 2: 0.0}, 30.0)
    assert site.allocation is not third, "a second later the site is decided again (turns, give-back)"
