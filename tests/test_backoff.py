"""The reconnect backoff: bounds, growth and reset, for both jitter strategies."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.backoff import Backoff, Jitter

min_delays = st.floats(min_value=0.001, max_value=1000.0, allow_nan=False, allow_infinity=False)
spans = st.floats(min_value=1.0, max_value=1e6, allow_nan=False, allow_infinity=False)
factors = st.floats(min_value=1.01, max_value=10.0, allow_nan=False, allow_infinity=False)
jitters = st.sampled_from(list(Jitter))


@given(min_delays, spans, factors, jitters, st.randoms(use_true_random=False), st.integers(1, 200))
def test_every_delay_is_within_min_and_max(
    lo: float, span: float, factor: float, jitter: Jitter, rng: random.Random, count: int
) -> None:
    hi = lo * span
    backoff = Backoff(lo, hi, factor, jitter=jitter, rng=rng)
    for delay in itertools.islice(backoff, count):
        assert lo <= delay <= hi


@given(min_delays, spans, factors, st.randoms(use_true_random=False))
def test_full_jitter_ceiling_grows_to_max_and_bounds_each_draw(
    lo: float, span: float, factor: float, rng: random.Random
) -> None:
    hi = lo * span
    backoff = Backoff(lo, hi, factor, jitter=Jitter.FULL, rng=rng)
    previous_ceiling = lo
    for _ in range(2000):
        ceiling = backoff.ceiling()
        assert ceiling >= previous_ceiling
        assert next(backoff) <= ceiling
        previous_ceiling = ceiling
        if ceiling == hi:
            break
    assert previous_ceiling == hi


@given(min_delays, spans, st.randoms(use_true_random=False))
def test_decorrelated_draw_is_at_most_three_times_the_previous(
    lo: float, span: float, rng: random.Random
) -> None:
    backoff = Backoff(lo, lo * span, jitter=Jitter.DECORRELATED, rng=rng)
    previous = lo
    for _ in range(100):
        delay = next(backoff)
        assert delay <= max(lo, 3 * previous) * (1 + 1e-12)
        previous = delay


@pytest.mark.parametrize("jitter", list(Jitter))
def test_delays_grow_over_a_fleet(jitter: Jitter) -> None:
    # A fleet of 300 masters, each with its own generator (seeded: deterministic).
    # The typical wait at the 8th attempt is several times longer than at the 1st.
    rng = random.Random(2026)
    fleet = [Backoff(1.0, 300.0, jitter=jitter, rng=random.Random(rng.random())) for _ in range(300)]
    waits = [list(itertools.islice(b, 8)) for b in fleet]
    first = statistics.median(w[0] for w in waits)
    eighth = statistics.median(w[7] for w in waits)
    assert eighth > 5 * first


def test_first_attempts_of_a_fleet_are_spread_not_simultaneous() -> None:
    # The reconnect storm this module exists to avoid: after a backend restart
    # the first retries of many masters must not all land at the same instant.
    rng = random.Random(7)
    firsts = [next(Backoff(2.0, 300.0, rng=random.Random(rng.random()))) for _ in range(200)]
    assert min(firsts) >= 2.0
    assert max(firsts) <= 4.0
    assert len({round(f, 3) for f in firsts}) > 150


@given(jitters, st.randoms(use_true_random=False), st.integers(1, 50))
def test_reset_starts_again_from_the_shortest_delays(jitter: Jitter, rng: random.Random, spent: int) -> None:
    backoff = Backoff(1.0, 300.0, jitter=jitter, rng=rng)
    first_ceiling = backoff.ceiling()
    for _ in range(spent):
        next(backoff)
    assert backoff.attempts == spent
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.ceiling() == first_ceiling
    assert 1.0 <= next(backoff) <= first_ceiling


def test_full_jitter_ceilings_follow_the_exponent() -> None:
    backoff = Backoff(1.0, 20.0, 2.0, rng=random.Random(1))
    ceilings = []
    for _ in range(6):
        ceilings.append(backoff.ceiling())
        next(backoff)
    assert ceilings == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]


def test_huge_attempt_counts_do_not_overflow() -> None:
    backoff = Backoff(1.0, 300.0, 10.0, rng=random.Random(3))
    for _ in range(5000):
        assert next(backoff) <= 300.0
    assert backoff.ceiling() == 300.0


def test_equal_min_and_max_is_a_fixed_delay() -> None:
    assert list(itertools.islice(Backoff(5.0, 5.0, rng=random.Random(0)), 3)) == [5.0, 5.0, 5.0]


@pytest.mark.parametrize(
    ("lo", "hi", "factor", "message"),
    [
        (0.0, 300.0, 2.0, "min_delay must be > 0"),
        (-1.0, 300.0, 2.0, "min_delay must be > 0"),
        (10.0, 5.0, 2.0, "must be >= min_delay"),
        (1.0, 300.0, 1.0, "factor must be > 1"),
        (1.0, float("inf"), 2.0, "must be a finite number"),
        (float("nan"), 300.0, 2.0, "must be a finite number"),
    ],
)
def test_bad_parameters_are_refused_clearly(lo: float, hi: float, factor: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(lo, hi, factor)
