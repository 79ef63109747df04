"""The retry delays: exponential with equal jitter, never below Kling's suggestion, capped, counted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling_pipeline.contract.settings import MAX_VISIBILITY_SECONDS
from kling_pipeline.submit.retry_policy import RetryPolicy


def fixed(value: float) -> RetryPolicy:
    return RetryPolicy(base_seconds=10, cap_seconds=900, max_attempts=5, random=lambda: value)


@pytest.mark.parametrize(
    ("attempt", "low", "high"), [(1, 5, 10), (2, 10, 20), (3, 20, 40), (7, 320, 640), (8, 450, 900)]
)
def test_delays_double_per_attempt_between_half_and_all_of_the_ceiling(attempt: int, low: int, high: int) -> None:
    assert fixed(0.0).delay(attempt) == low
    assert fixed(1.0).delay(attempt) == high


def test_the_cap_holds_however_many_attempts() -> None:
    assert fixed(1.0).delay(10_000) == 900
    assert fixed(0.0).delay(10_000) == 450


def test_klings_suggested_minimum_raises_the_base_and_the_floor() -> None:
    policy = RetryPolicy(base_seconds=1, cap_seconds=60, random=lambda: 0.0)
    assert policy.delay(1, at_least=2.0) == 2  # ceiling max(1, 2) = 2, half of it 1 -> at least 2
    assert policy.delay(2, at_least=2.0) == 2
    assert policy.delay(3, at_least=2.0) == 4
    assert policy.delay(1, at_least=300) == 60  # never past the cap


@given(
    attempt=st.integers(min_value=1, max_value=50),
    at_least=st.floats(min_value=0, max_value=1000),
    first=st.floats(min_value=0, max_value=1),
    second=st.floats(min_value=0, max_value=1),
)
def test_below_the_cap_delays_never_shrink_from_one_attempt_to_the_next(
    attempt: int, at_least: float, first: float, second: float
) -> None:
    policy = RetryPolicy(base_seconds=10, cap_seconds=900, random=lambda: first)
    now = policy.delay(attempt, at_least=at_least)
    later = RetryPolicy(base_seconds=10, cap_seconds=900, random=lambda: second).delay(attempt + 1, at_least=at_least)
    assert min(at_least, 900) <= now <= 900
    if policy.ceiling(attempt + 1, at_least=at_least) < 900:
        assert later >= now
    else:  # at the cap the jitter still spreads retries: half the cap to the cap
        assert 450 <= later <= 900


def test_the_last_attempt_is_the_max_attempts_th() -> None:
    policy = RetryPolicy(max_attempts=5)
    assert not policy.is_last_attempt(4)
    assert policy.is_last_attempt(5)
    assert policy.is_last_attempt(6)  # redriven from the DLQ: still the last


@pytest.mark.parametrize(("lease_left", "expected"), [(0.0, 1), (0.4, 1), (1.5, 2), (30.0, 2)])
def test_a_busy_job_is_retried_soon_but_not_before_the_lease_ends(lease_left: float, expected: int) -> None:
    policy = RetryPolicy(busy_base_seconds=2, random=lambda: 1.0)
    assert policy.busy_delay(1, lease_left=lease_left) == expected


def test_busy_delays_grow_with_the_attempt() -> None:
    policy = RetryPolicy(busy_base_seconds=2, random=lambda: 1.0)
    assert [policy.busy_delay(a, lease_left=600) for a in (1, 2, 3, 4)] == [2, 4, 8, 16]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"base_seconds": 0}, "base_seconds: must be more than 0 (got 0)"),
        ({"base_seconds": 10, "cap_seconds": 9}, "cap_seconds: must be between base_seconds (10) and 43200 (got 9)"),
        ({"cap_seconds": MAX_VISIBILITY_SECONDS + 1}, "cap_seconds: must be between"),
        ({"max_attempts": 0}, "max_attempts: must be at least 1 (got 0)"),
    ],
)
def test_a_policy_that_makes_no_sense_is_refused(fields: dict[str, float], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match=r"attempt: must be at least 1 \(got 0\)"):
        RetryPolicy().delay(0)
