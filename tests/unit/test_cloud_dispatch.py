"""Dispatch policy: per-stream in-flight slots in front of the breaker."""

from __future__ import annotations

import threading

import pytest

from python_backends.cloud.breaker import CircuitBreaker
from python_backends.cloud.dispatch import DispatchPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_max_inflight_one_skips_busy_until_release():
    policy = DispatchPolicy(max_inflight=1, breaker=CircuitBreaker(clock=FakeClock()))
    assert policy.try_acquire(7) == "sent"
    assert policy.try_acquire(7) == "skipped_busy"
    assert policy.try_acquire(7) == "skipped_busy"
    assert policy.inflight(7) == 1
    policy.release(7)
    assert policy.inflight(7) == 0
    assert policy.try_acquire(7) == "sent"


def test_max_inflight_two():
    policy = DispatchPolicy(max_inflight=2, breaker=CircuitBreaker(clock=FakeClock()))
    assert policy.try_acquire(1) == "sent"
    assert policy.try_acquire(1) == "sent"
    assert policy.try_acquire(1) == "skipped_busy"
    assert policy.inflight(1) == 2
    policy.release(1)
    assert policy.try_acquire(1) == "sent"
    assert policy.try_acquire(1) == "skipped_busy"


def test_streams_are_independent():
    policy = DispatchPolicy(max_inflight=1, breaker=CircuitBreaker(clock=FakeClock()))
    assert policy.try_acquire(1) == "sent"
    assert policy.try_acquire(2) == "sent"
    assert policy.try_acquire(1) == "skipped_busy"
    assert policy.try_acquire(3) == "sent"
    assert policy.total_inflight == 3
    policy.release(2)
    assert policy.inflight(1) == 1 and policy.inflight(2) == 0
    assert policy.total_inflight == 2


def test_skipped_down_when_breaker_refuses_and_probe_not_wasted_by_busy_stream():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, backoff_s=1.0, clock=clock)
    policy = DispatchPolicy(max_inflight=1, breaker=breaker)
    assert policy.try_acquire(1) == "sent"
    breaker.record_failure("unavailable")
    policy.release(1)
    assert policy.try_acquire(1) == "skipped_down"
    assert policy.try_acquire(2) == "skipped_down"
    assert policy.total_inflight == 0
    clock.now = 1.0
    assert policy.try_acquire(2) == "sent"  # the single half-open probe
    assert policy.try_acquire(2) == "skipped_busy"  # busy is checked first: no trial request consumed
    assert policy.try_acquire(3) == "skipped_down"  # only one probe
    breaker.record_success(50.0)
    policy.release(2)
    assert policy.try_acquire(3) == "sent"


def test_release_without_acquire_is_ignored():
    policy = DispatchPolicy()
    policy.release(5)
    assert policy.inflight(5) == 0
    assert policy.total_inflight == 0


def test_default_breaker_and_bad_max_inflight():
    assert isinstance(DispatchPolicy().breaker, CircuitBreaker)
    with pytest.raises(ValueError):
        DispatchPolicy(max_inflight=0)


def test_thread_safe_accounting():
    policy = DispatchPolicy(max_inflight=3, breaker=CircuitBreaker(clock=FakeClock()))
    sent = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(200):
            if policy.try_acquire(1) == "sent":
                sent.append(1)
                policy.release(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert policy.inflight(1) == 0
    assert len(sent) > 0
