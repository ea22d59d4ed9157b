"""The §3.7.1 retry policy: growing waits, MeterValues dropped at the limit, Start/Stop never."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.retry import after_failure


def test_waits_grow_then_meter_values_are_dropped() -> None:
    assert [after_failure("MeterValues", n, 3, 30).delay_s for n in (1, 2)] == [30, 60]
    last = after_failure("MeterValues", 3, 3, 30)
    assert last.drop and not last.alarm


@pytest.mark.parametrize("action", ["StartTransaction", "StopTransaction"])
def test_billing_messages_are_kept_with_one_alarm(action: str) -> None:
    decisions = [after_failure(action, n, 3, 30) for n in range(1, 8)]
    assert not any(d.drop for d in decisions)
    assert [d.alarm for d in decisions] == [False, False, True, False, False, False, False]
    assert [d.delay_s for d in decisions] == [30, 60, 90, 90, 90, 90, 90]


@given(st.sampled_from(["StartTransaction", "StopTransaction", "MeterValues"]), st.integers(1, 10_000), st.integers(1, 100), st.integers(1, 3600))
def test_never_a_billing_message_dropped_and_waits_bounded(action: str, failures: int, attempts: int, interval: int) -> None:
    d = after_failure(action, failures, attempts, interval)
    assert not (d.drop and action != "MeterValues")
    assert 0 <= d.delay_s <= attempts * interval


def test_counts_start_at_one() -> None:
    with pytest.raises(ValueError):
        after_failure("MeterValues", 0, 3, 30)
