"""Latency-adaptive cloud dispatch: send a stream's frame only while that stream has a free in-flight slot.

A frame that finds its stream's slots taken is skipped for the cloud, never queued. So when the cloud is free it always
works on the newest frame, and no backlog builds however long the cloud takes. The circuit breaker has the last word.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from python_backends.cloud.breaker import CircuitBreaker

T = TypeVar("T")

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
        decision, _ = self.try_acquire_from(stream_id, lambda: True if self.breaker.allow() else None)
        return decision

    def try_acquire_from(self, stream_id: int, grant: Callable[[], T | None]) -> tuple[str, T | None]:
        """As `try_acquire`, with `grant()` in the breaker's place (an endpoint pool's `acquire`): (decision, what
        `grant` gave, None unless sent)."""
        with self._lock:
            if self._inflight.get(stream_id, 0) >= self.max_inflight:
                # Checked before the breaker so that a busy stream never uses up the half-open probe.
                return SKIPPED_BUSY, None
            # The breakers are ours and never call back into this policy, so nesting their locks here cannot deadlock;
            # it makes the slot check and the trial-request grant one atomic decision.
            granted = grant()
            if granted is None:
                return SKIPPED_DOWN, None
            self._inflight[stream_id] = self._inflight.get(stream_id, 0) + 1
            return SENT, granted

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
