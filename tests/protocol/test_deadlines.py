"""protocol.deadlines: per-link exchange deadlines from measured rate and RTT."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.deadlines import MIN_RATE, Budget, DeadlinePolicy, LinkEstimate

POLICY = DeadlinePolicy()
MB = 1 << 20

sizes = st.integers(min_value=0, max_value=1 << 31)
durations = st.floats(min_value=1e-4, max_value=1e3, allow_nan=False)
samples = st.lists(st.tuples(sizes, durations), max_size=30)


@settings(max_examples=300, deadline=None)
@given(samples, sizes)
def test_budgets_stay_within_floor_and_ceiling_and_are_ordered(history: list[tuple[int, float]], nbytes: int) -> None:
    estimate = LinkEstimate()
    for sent, seconds in history:
        estimate.observe(sent, seconds)
    b = estimate.budget(POLICY, nbytes)
    assert POLICY.floor <= b.total <= POLICY.ceiling
    assert min(POLICY.idle_floor, b.total) <= b.idle <= b.total
    assert b.idle <= b.answer <= b.total


@settings(max_examples=200, deadline=None)
@given(samples, sizes, sizes)
def test_more_bytes_never_get_less_time(history: list[tuple[int, float]], a: int, b: int) -> None:
    estimate = LinkEstimate()
    for sent, seconds in history:
        estimate.observe(sent, seconds)
    small, large = sorted((a, b))
    assert estimate.budget(POLICY, small).total <= estimate.budget(POLICY, large).total


@settings(max_examples=200, deadline=None)
@given(samples, sizes)
def test_a_missed_deadline_never_shortens_the_next(history: list[tuple[int, float]], nbytes: int) -> None:
    estimate = LinkEstimate()
    for sent, seconds in history:
        estimate.observe(sent, seconds)
    before = estimate.budget(POLICY, nbytes)
    estimate.missed(POLICY)
    after = estimate.budget(POLICY, nbytes)
    assert after.total >= before.total and after.idle >= before.idle
    assert estimate.rate is not None and estimate.rate >= MIN_RATE


def test_a_slow_link_gets_the_time_its_bytes_take() -> None:
    # 20 MB each way at 10 Mbit/s (1.25 MB/s): 32 s, which the old fixed 10 s would cut.
    estimate = LinkEstimate()
    estimate.observe(40 * 10**6, 32.0)
    b = estimate.budget(POLICY, 40 * 10**6)
    assert b.total >= 2 * 32.0
    # ... and one frame at that rate is under a second: a silent partner costs a few seconds, not the deadline.
    assert b.idle < 5.0


def test_a_fast_link_gives_up_a_silent_partner_at_the_idle_floor() -> None:
    estimate = LinkEstimate()
    for _ in range(5):
        estimate.observe(2 * 20 * MB, 0.2)  # loopback: 200 MB/s
    b = estimate.budget(POLICY, 40 * MB)
    assert b.idle == POLICY.idle_floor
    assert b.total == POLICY.floor  # 3 x 0.2 s + 1 s idle < the 2 s floor


def test_an_unmeasured_link_is_sized_at_the_assumed_rate() -> None:
    b = LinkEstimate().budget(POLICY, 4 * MB)
    assert b.total == pytest.approx(POLICY.safety * 4 * MB / POLICY.assumed_rate + b.idle)
    assert b.idle == pytest.approx(POLICY.safety * POLICY.frame_bytes / POLICY.assumed_rate)
    # A packet smaller than a frame is waited for as long as it takes, not a frame's time.
    small = LinkEstimate().budget(POLICY, 64 << 10)
    assert small.idle == pytest.approx(max(POLICY.idle_floor, POLICY.safety * (64 << 10) / POLICY.assumed_rate))
    assert small.idle < b.idle


def test_the_rtt_falls_at_once_and_rises_slowly() -> None:
    estimate = LinkEstimate()
    estimate.observe(0, 0.5)
    estimate.observe(0, 0.1)
    assert estimate.rtt == pytest.approx(0.1)
    estimate.observe(0, 1.1)
    assert estimate.rtt is not None and 0.1 < estimate.rtt < 0.3


def test_fixed_policy_is_the_old_timeout() -> None:
    b = LinkEstimate().budget(DeadlinePolicy.fixed(10.0), 1 << 30)
    assert b == Budget(total=10.0, idle=10.0, answer=10.0)
    assert Budget.of(7.0) == Budget(7.0, 7.0, 7.0)


@pytest.mark.parametrize("kwargs", [{"floor": 0}, {"floor": 5, "ceiling": 4}, {"idle_floor": 0}, {"safety": 0.5},
                                    {"assumed_rate": 0}, {"idle_rtts": 0}])
def test_bad_policies_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DeadlinePolicy(**kwargs)
