"""Injected extra cloud latency, for experiments on how the edge copes with a slow or jittery cloud.

The delay simulates the network, so the link sleeps it before sending: it counts against the request's deadline
and holds the stream's in-flight slot. Specs (all in milliseconds):

    "" / "0" / None          no delay
    "1500"                   constant
    "2000+-1000", "2000±1000"  uniform jitter, here 1000..3000
    "uniform:1000:3000"      uniform between the bounds
    "trace:/path/file.csv"   rows `time_s,latency_ms` replayed by time since first use, looping, step-wise
"""

from __future__ import annotations

import bisect
import math
import random
import threading
from abc import ABC, abstractmethod
from pathlib import Path

ACCEPTED_FORMS = (
    '"" or "0" (none), "1500" (constant ms), "2000+-1000" or "2000±1000" (uniform jitter), '
    '"uniform:LOW_MS:HIGH_MS", "trace:/path/file.csv" (rows time_s,latency_ms)'
)


class DelayInjector(ABC):
    """Gives the extra delay, in seconds, for a request sent at `now_s` (a monotonic clock reading)."""

    spec: str

    @abstractmethod
    def delay_s(self, now_s: float) -> float: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


class NoDelay(DelayInjector):
    def __init__(self, spec: str = "0") -> None:
        self.spec = spec

    def delay_s(self, now_s: float) -> float:
        return 0.0


class ConstantDelay(DelayInjector):
    def __init__(self, ms: float, spec: str | None = None) -> None:
        self.ms = ms
        self.spec = spec if spec is not None else f"{ms:g}"

    def delay_s(self, now_s: float) -> float:
        return self.ms / 1000.0


class UniformDelay(DelayInjector):
    def __init__(self, low_ms: float, high_ms: float, rng: random.Random | None = None, spec: str | None = None):
        self.low_ms = low_ms
        self.high_ms = high_ms
        self.spec = spec if spec is not None else f"uniform:{low_ms:g}:{high_ms:g}"
        self._rng = rng if rng is not None else random.Random()
        # random.Random is not documented as thread-safe for concurrent use of one instance.
        self._lock = threading.Lock()

    def delay_s(self, now_s: float) -> float:
        with self._lock:
            return self._rng.uniform(self.low_ms, self.high_ms) / 1000.0


class TraceDelay(DelayInjector):
    """Replays a latency trace step-wise: the latency of the last row whose time <= elapsed time since first use.

    The trace loops. Its period is the last row's time plus the last step (the gap between the last two rows), so the
    last row holds as long as the one before it rather than for an instant; a one-row trace is constant.
    """

    def __init__(self, rows: list[tuple[float, float]], spec: str) -> None:
        if not rows:
            raise ValueError(f"delay spec {spec!r}: the trace has no rows")
        self.spec = spec
        self.times = [t for t, _ in rows]
        self.latencies_ms = [ms for _, ms in rows]
        last_step = self.times[-1] - self.times[-2] if len(rows) > 1 else math.inf
        self.period_s = self.times[-1] + last_step
        self._start_s: float | None = None
        self._lock = threading.Lock()

    def delay_s(self, now_s: float) -> float:
        with self._lock:
            if self._start_s is None:
                self._start_s = now_s
            elapsed = max(0.0, now_s - self._start_s)
        position = elapsed % self.period_s if math.isfinite(self.period_s) else elapsed
        index = bisect.bisect_right(self.times, position) - 1
        # Before the first row's time, the first row applies: the trace says nothing earlier.
        return self.latencies_ms[max(index, 0)] / 1000.0


def _number(text: str, spec: str, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(
            f"delay spec {spec!r}: {what} {text.strip()!r} is not a number; accepted: {ACCEPTED_FORMS}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"delay spec {spec!r}: {what} must be a finite number >= 0, got {text.strip()!r}")
    return value


def _read_trace(path_text: str, spec: str) -> list[tuple[float, float]]:
    path = Path(path_text.strip())
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"delay spec {spec!r}: cannot read trace file: {exc}") from exc
    rows: list[tuple[float, float]] = []
    header_allowed = True
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2:
            raise ValueError(f"delay spec {spec!r}: {path}:{number}: expected 'time_s,latency_ms', got {raw!r}")
        try:
            time_s, latency_ms = float(fields[0]), float(fields[1])
        except ValueError:
            if header_allowed:  # only the first data line may be a header
                header_allowed = False
                continue
            raise ValueError(f"delay spec {spec!r}: {path}:{number}: not numbers: {raw!r}") from None
        header_allowed = False
        if not (math.isfinite(time_s) and math.isfinite(latency_ms)) or time_s < 0 or latency_ms < 0:
            raise ValueError(f"delay spec {spec!r}: {path}:{number}: values must be finite and >= 0: {raw!r}")
        if rows and time_s <= rows[-1][0]:
            raise ValueError(f"delay spec {spec!r}: {path}:{number}: times must increase strictly: {raw!r}")
        rows.append((time_s, latency_ms))
    if not rows:
        raise ValueError(f"delay spec {spec!r}: {path} has no rows 'time_s,latency_ms'")
    return rows


def parse_delay_spec(spec: str | None, rng: random.Random | None = None) -> DelayInjector:
    """Builds the injector for `spec`; raises ValueError naming the spec and the accepted forms."""
    if spec is None:
        return NoDelay("")
    if not isinstance(spec, str):
        raise ValueError(f"delay spec {spec!r} must be a string; accepted: {ACCEPTED_FORMS}")
    text = spec.strip()
    if text in ("", "0"):
        return NoDelay(spec)
    if text.startswith("trace:"):
        return TraceDelay(_read_trace(text[len("trace:") :], spec), spec)
    if text.startswith("uniform:"):
        parts = text[len("uniform:") :].split(":")
        if len(parts) != 2:
            raise ValueError(f"delay spec {spec!r}: expected uniform:LOW_MS:HIGH_MS; accepted: {ACCEPTED_FORMS}")
        low, high = (_number(p, spec, "bound") for p in parts)
        if low > high:
            raise ValueError(f"delay spec {spec!r}: low bound {low:g} is over the high bound {high:g}")
        return UniformDelay(low, high, rng, spec)
    for separator in ("+-", "±"):
        if separator in text:
            mean_text, _, jitter_text = text.partition(separator)
            mean, jitter = _number(mean_text, spec, "mean"), _number(jitter_text, spec, "jitter")
            if jitter > mean:
                raise ValueError(f"delay spec {spec!r}: jitter {jitter:g} is over the mean {mean:g}")
            return UniformDelay(mean - jitter, mean + jitter, rng, spec)
    value = _number(text, spec, "delay")
    return NoDelay(spec) if value == 0 else ConstantDelay(value, spec)
