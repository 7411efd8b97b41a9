"""Circuit breaker transitions on a fake clock."""

from __future__ import annotations

import pytest

from python_backends.cloud.breaker import CircuitBreaker, CloudState


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _open(breaker: CircuitBreaker, kind: str = "unavailable") -> None:
    for _ in range(breaker.failure_threshold):
        assert breaker.allow()
        breaker.record_failure(kind)


def test_closed_allows_and_is_ok(clock):
    breaker = CircuitBreaker(clock=clock)
    assert breaker.state is CloudState.OK
    assert all(breaker.allow() for _ in range(10))


def test_opens_after_threshold_consecutive_failures(clock):
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    breaker.record_failure("unavailable")
    breaker.record_failure("server")
    assert breaker.allow() and breaker.state is not CloudState.DOWN
    breaker.record_failure("unavailable")
    assert breaker.state is CloudState.DOWN
    assert not breaker.allow()


def test_success_resets_the_failure_count(clock):
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    breaker.record_failure("unavailable")
    breaker.record_failure("unavailable")
    breaker.record_success(100.0)
    breaker.record_failure("unavailable")
    breaker.record_failure("unavailable")
    assert breaker.state is CloudState.OK
    assert breaker.allow()


def test_half_open_allows_exactly_one_probe_then_closes_on_success(clock):
    breaker = CircuitBreaker(failure_threshold=3, backoff_s=1.0, clock=clock)
    _open(breaker)
    clock.advance(0.99)
    assert not breaker.allow()
    clock.advance(0.02)
    assert breaker.allow()  # the probe
    assert not breaker.allow()
    assert not breaker.allow()
    assert breaker.state is CloudState.DOWN
    breaker.record_success(200.0)
    assert breaker.state is CloudState.OK
    assert breaker.allow() and breaker.allow()
    assert breaker.backoff_s == 1.0


def test_failed_probe_reopens_with_doubled_backoff_capped(clock):
    breaker = CircuitBreaker(failure_threshold=2, backoff_s=1.0, max_backoff_s=5.0, clock=clock)
    _open(breaker)
    expected = [2.0, 4.0, 5.0, 5.0]
    waited = 1.0
    for backoff in expected:
        clock.advance(waited)
        assert breaker.allow()
        breaker.record_failure("unavailable")
        assert breaker.state is CloudState.DOWN
        assert breaker.backoff_s == backoff
        clock.advance(backoff - 0.01)
        assert not breaker.allow()
        waited = 0.01
    clock.advance(0.01)
    assert breaker.allow()
    breaker.record_success(10.0)
    assert breaker.backoff_s == 1.0  # reset on success
    assert breaker.state is CloudState.OK


def test_abandoned_probe_frees_the_probe_slot(clock):
    breaker = CircuitBreaker(failure_threshold=1, backoff_s=1.0, clock=clock)
    _open(breaker)
    clock.advance(1.0)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.record_abandoned()
    assert breaker.allow()
    assert breaker.state is CloudState.DOWN


def test_late_failure_while_open_does_not_double_backoff(clock):
    breaker = CircuitBreaker(failure_threshold=1, backoff_s=1.0, clock=clock)
    _open(breaker)
    breaker.record_failure("timeout")  # a request sent before the breaker opened
    assert breaker.backoff_s == 1.0
    clock.advance(1.0)
    assert breaker.allow()


def test_slow_on_slow_rtt(clock):
    breaker = CircuitBreaker(slow_ms=3000.0, clock=clock)
    breaker.record_success(3500.0)
    assert breaker.state is CloudState.SLOW
    breaker.record_success(3000.0)
    assert breaker.state is CloudState.OK


def test_slow_on_timeout_then_ok_after_fast_success(clock):
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    breaker.record_success(100.0)
    breaker.record_failure("timeout")
    assert breaker.state is CloudState.SLOW
    breaker.record_success(100.0)
    assert breaker.state is CloudState.OK


def test_other_failure_below_threshold_is_not_slow(clock):
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    breaker.record_success(100.0)
    breaker.record_failure("server")
    assert breaker.state is CloudState.OK


def test_timeouts_open_the_breaker_too(clock):
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    _open(breaker, kind="timeout")
    assert breaker.state is CloudState.DOWN


def test_state_values_are_strings():
    assert CloudState.OK == "ok" and CloudState.SLOW.value == "slow" and CloudState.DOWN.value == "down"


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"backoff_s": -1.0}, {"backoff_s": 5, "max_backoff_s": 1}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)
