"""The uplink choice, pure: fail over at once, fail back after a healthy hold, never flap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.failover import FAILURES_TO_SWITCH, MAX_DOUBLINGS, Failover

BOTH = [True, True]


def wired_gprs() -> Failover:
    return Failover(["wired", "gprs"], failback_after_s=600, probe_interval_s=60)


def test_one_failure_is_retried_on_the_same_uplink_then_the_next_takes_over() -> None:
    f = wired_gprs()
    assert not f.failed(0, BOTH) and f.active_name == "wired"
    assert f.failed(1, BOTH) and f.active_name == "gprs"
    assert FAILURES_TO_SWITCH == 2


def test_a_missing_or_down_interface_is_left_at_once_and_skipped() -> None:
    f = Failover(["wired", "wifi", "gprs"], 600, 60)
    assert f.failed(0, [False, False, True])
    assert f.active_name == "gprs", "the down wifi is skipped"


def test_a_single_uplink_never_switches() -> None:
    f = Failover(["only"], 600, 60)
    assert not any(f.failed(t, [True]) for t in range(10))


def test_failback_only_after_the_preferred_uplink_was_healthy_for_the_hold_time() -> None:
    f = wired_gprs()
    f.failed(0, BOTH)
    f.failed(1, BOTH)
    f.up(2)
    assert f.probe_due(2) == [], "the first probe waits a probe interval"
    t = 61.0
    assert f.probe_due(t) == [0]
    f.probed(0, True, t)
    assert f.failback_target(t + 599) is None
    f.probed(0, False, t + 300)  # one bad probe starts the hold afresh
    f.probed(0, True, t + 360)
    assert f.failback_target(t + 600) is None
    assert f.failback_target(t + 960) == 0
    f.fail_back(0, t + 960)
    assert f.active_name == "wired" and f.probe_due(t + 2000) == [], "the preferred uplink is never probed"


def test_an_uplink_that_fails_again_soon_after_failback_must_wait_twice_as_long_next_time() -> None:
    f = wired_gprs()
    now = 0.0
    holds = []
    for _ in range(MAX_DOUBLINGS + 2):
        f.failed(now, BOTH)
        f.failed(now + 1, BOTH)
        assert f.active_name == "gprs"
        holds.append(f.hold_s(0))
        now += 1 + f.probe_interval_s
        f.probed(0, True, now)
        now += f.hold_s(0)
        assert f.failback_target(now) == 0
        f.fail_back(0, now)
        now += 30  # and it dies again half a minute later: a flapping cable
    assert holds == [600 * 2**k for k in range(MAX_DOUBLINGS + 1)] + [600 * 2**MAX_DOUBLINGS]


def test_the_doubling_is_forgiven_once_the_uplink_carried_the_link_long_enough() -> None:
    f = wired_gprs()
    f.failed(0, BOTH)
    f.failed(1, BOTH)
    f.probed(0, True, 100)
    f.fail_back(0, 700)
    f.failed(710, BOTH)  # flapped
    f.failed(711, BOTH)
    assert f.hold_s(0) == 1200
    f.probed(0, True, 800)
    f.fail_back(0, 2000)
    f.up(2001)
    f.still_up(2001 + 4 * 1200 - 1)
    assert f.hold_s(0) == 1200
    f.still_up(2001 + 4 * 1200)
    assert f.hold_s(0) == 600


@given(st.lists(st.tuples(st.sampled_from(["fail", "up", "probe_ok", "probe_bad", "tick"]), st.floats(0, 120)), max_size=200))
def test_never_two_switches_closer_than_a_hold_time_apart_by_failback(events: list[tuple[str, float]]) -> None:
    """Whatever happens, a failback never comes sooner than failback_after_s after the switch away."""
    f = wired_gprs()
    now, left_at = 0.0, None
    for kind, dt in events:
        now += dt
        if kind == "fail":
            before = f.active
            if f.failed(now, BOTH) and before == 0:
                left_at = now
        elif kind == "up":
            f.up(now)
        elif kind.startswith("probe"):
            for i in f.probe_due(now):
                f.probed(i, kind == "probe_ok", now)
        target = f.failback_target(now)
        if target is not None:
            assert left_at is not None and now - left_at >= f.failback_after_s
            f.fail_back(target, now)
