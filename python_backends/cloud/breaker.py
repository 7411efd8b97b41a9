"""Circuit breaker for the cloud link: stop sending to a cloud that keeps failing, try it again after a back-off.

Closed: every request is allowed. After `failure_threshold` consecutive failures it opens: nothing is sent until the
back-off has passed. Then it is half-open: exactly one trial request is allowed. The trial's success closes it and
resets the back-off; its failure reopens it with the back-off doubled, up to `max_backoff_s`.

The state the edge reports (`cloud_state` in CONTEXT) is derived from it: DOWN while open or half-open, SLOW while
closed but the last round trip was over `slow_ms` or the last outcome was a timeout, OK otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum


class CloudState(str, Enum):
    OK = "ok"
    SLOW = "slow"
    DOWN = "down"


class CircuitBreaker:
    """Thread-safe: `allow()` runs on the model's execute thread, outcomes are recorded on the link's loop thread."""

    def __init__(
        self,
        failure_threshold: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 10.0,
        slow_ms: float = 3000.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if backoff_s < 0 or max_backoff_s < backoff_s:
            raise ValueError(f"need 0 <= backoff_s <= max_backoff_s, got {backoff_s} and {max_backoff_s}")
        self.failure_threshold = failure_threshold
        self.initial_backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.slow_ms = slow_ms
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0  # consecutive
        self._opened_at: float | None = None  # None = closed
        self._half_open = False
        self._probe_inflight = False
        self._backoff_s = backoff_s
        self._last_rtt_ms: float | None = None
        self._last_failure_kind: str | None = None  # of the last outcome; None when it was a success

    # The clock is read before taking the lock: it is caller-supplied code.

    def allow(self) -> bool:
        """May a request be sent now? In half-open, True for exactly one trial request until its outcome is recorded."""
        now = self._clock()
        with self._lock:
            if self._opened_at is None:
                return True
            if not self._half_open:
                if now - self._opened_at < self._backoff_s:
                    return False
                self._half_open = True
            if self._probe_inflight:
                return False
            self._probe_inflight = True
            return True

    def record_success(self, rtt_ms: float) -> None:
        """Any success proves the cloud answers, so it closes the breaker (a late reply while open too)."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._half_open = False
            self._probe_inflight = False
            self._backoff_s = self.initial_backoff_s
            self._last_rtt_ms = float(rtt_ms)
            self._last_failure_kind = None

    def record_failure(self, kind: str) -> None:
        now = self._clock()
        with self._lock:
            self._last_failure_kind = kind
            if self._opened_at is None:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._opened_at = now
                return
            if self._half_open:
                # The trial failed: wait longer before the next one.
                self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
                self._opened_at = now
                self._half_open = False
                self._probe_inflight = False
            # Open, not probing: a late failure of a request sent before opening changes nothing.

    def record_abandoned(self) -> None:
        """A request ended without saying anything about the cloud (cancelled, or failed locally before sending).

        Frees the half-open trial slot so another trial can go; otherwise a lost trial would keep the link DOWN forever.
        """
        with self._lock:
            self._probe_inflight = False

    @property
    def state(self) -> CloudState:
        with self._lock:
            if self._opened_at is not None:
                return CloudState.DOWN
            slow_rtt = self._last_rtt_ms is not None and self._last_rtt_ms > self.slow_ms
            if slow_rtt or self._last_failure_kind == "timeout":
                return CloudState.SLOW
            return CloudState.OK

    @property
    def backoff_s(self) -> float:
        with self._lock:
            return self._backoff_s

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    @property
    def last_rtt_ms(self) -> float | None:
        with self._lock:
            return self._last_rtt_ms
