"""Latency-adaptive cloud dispatch: send a stream's frame only while that stream has a free in-flight slot.

A frame that finds its stream's slots taken is skipped for the cloud, never queued. So when the cloud is free it always
works on the newest frame, and no backlog builds however long the cloud takes. The circuit breaker has the last word.
"""

from __future__ import annotations

import threading

from python_backends.cloud.breaker import CircuitBreaker

SENT = "sent"
SKIPPED_BUSY = "skipped_busy"
SKIPPED_DOWN = "skipped_down"


class DispatchPolicy:
    """Thread-safe per-stream in-flight accounting in front of a circuit breaker."""

    def __init__(self, max_inflight: int = 1, breaker: CircuitBreaker | None = None) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.max_inflight = max_inflight
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}

    def try_acquire(self, stream_id: int) -> str:
        """ "sent" (a slot is taken: call `release` when the request ends), "skipped_busy" or "skipped_down"."""
        with self._lock:
            if self._inflight.get(stream_id, 0) >= self.max_inflight:
                # Checked before the breaker so that a busy stream never uses up the half-open probe.
                return SKIPPED_BUSY
            # The breaker is ours and never calls back into this policy, so nesting its lock here cannot deadlock; it
            # makes the slot check and the trial-request grant one atomic decision.
            if not self.breaker.allow():
                return SKIPPED_DOWN
            self._inflight[stream_id] = self._inflight.get(stream_id, 0) + 1
            return SENT

    def release(self, stream_id: int) -> None:
        """Frees one slot of the stream; a release without an acquire is ignored (it runs in `finally` blocks)."""
        with self._lock:
            count = self._inflight.get(stream_id, 0)
            if count <= 1:
                self._inflight.pop(stream_id, None)
            else:
                self._inflight[stream_id] = count - 1

    def inflight(self, stream_id: int) -> int:
        with self._lock:
            return self._inflight.get(stream_id, 0)

    @property
    def total_inflight(self) -> int:
        with self._lock:
            return sum(self._inflight.values())
