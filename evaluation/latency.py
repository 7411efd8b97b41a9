"""The cloud latency settings of the evaluation, and the fluctuating trace with spikes.

Settings: the cloud answers with an extra delay of 0, 0.5, 1, 2, 4 or 9 s (constant), or along a fluctuating trace.
Each setting has the delay spec string of `python_backends.cloud.delay` ("0", "500", ..., "trace:/path.csv"), so the
same setting drives the real cloud link (`spotvlm`'s `cloud_delay`) and the client-side replay of `cloud_stale`.
A constant setting may go as the request parameter `cloud_delay`; a trace names a server file, which `spotvlm` accepts
only from its config or `SPOTVLM_CLOUD_DELAY`, so a trace run needs an edge server started with it.

How the trace is made (`generate_trace`, deterministic by seed; `write_trace_csv` writes it):
- one row every `step_s` (0.25 s) for `duration_s` (60 s); the link replays it step-wise and loops;
- a base level (400 ms) plus jitter that wanders like a shared network link: an AR(1) process
  x <- 0.8 x + N(0, sigma), scaled so its standard deviation is `jitter_ms` (120 ms), clipped at `min_ms` (50 ms);
- spikes: the gaps between spike starts are uniform in `spike_gap_s` (8..16 s; the first spike comes after one
  gap), each lasts uniform `spike_duration_s` (1.5..4 s) and adds uniform `spike_ms` (2..6 s) that drains linearly
  to nothing over its duration, as a congested queue empties. Spikes may overlap; their extra latencies add up, and
  every value is capped at `max_ms` (8 s) so a spike stays under `spotvlm`'s 10 s cloud deadline plus inference.
The seed-0 trace is the benchmark's fluctuating setting: `python -m evaluation.latency OUT.csv`
writes it (the file is the same on every machine, byte for byte).
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from python_backends.cloud.delay import DelayInjector, TraceDelay, parse_delay_spec

CONSTANT_DELAYS_S: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 9.0)
DEFAULT_TRACE_NAME = "spiky_seed0.csv"
TRACE_SETTING_NAME = "trace"


@dataclass(frozen=True)
class LatencySetting:
    """One cloud latency setting. `nominal_s` is the delay (constant) or the trace's time-weighted mean."""

    name: str  # how reports call it: "0s", "0.5s", ..., "trace"
    spec: str  # a python_backends.cloud.delay spec: "0", "500", "trace:/abs/path.csv"
    nominal_s: float
    fluctuating: bool = False

    @property
    def per_request(self) -> bool:
        """Whether the spec may go as spotvlm's `cloud_delay` request parameter (a trace must be server config)."""
        return not self.spec.strip().startswith("trace:")


def constant_setting(seconds: float) -> LatencySetting:
    return LatencySetting(name=f"{seconds:g}s", spec=f"{seconds * 1000:g}", nominal_s=seconds)


def trace_setting(path: str | Path, name: str = TRACE_SETTING_NAME) -> LatencySetting:
    """The setting that replays the trace file at `path`; raises ValueError if delay.py cannot read it."""
    spec = f"trace:{Path(path).resolve()}"
    injector = parse_delay_spec(spec)
    assert isinstance(injector, TraceDelay)
    return LatencySetting(name=name, spec=spec, nominal_s=trace_mean_s(injector), fluctuating=True)


def latency_settings(trace_path: str | Path | None = None) -> list[LatencySetting]:
    """The evaluation's settings in report order: the constants, then the trace when a file is given."""
    settings = [constant_setting(s) for s in CONSTANT_DELAYS_S]
    if trace_path is not None:
        settings.append(trace_setting(trace_path))
    return settings


def trace_mean_s(trace: TraceDelay) -> float:
    """The time-weighted mean of one loop of the step-wise trace, as the link replays it."""
    ends = list(trace.times[1:]) + [trace.period_s]
    if not math.isfinite(trace.period_s):  # a one-row trace is constant
        return trace.latencies_ms[0] / 1000.0
    # Before the first row's time the first row applies (delay.py), so the first step starts at 0.
    starts = [0.0] + list(trace.times[1:])
    total_ms_s = sum((end - start) * ms for start, end, ms in zip(starts, ends, trace.latencies_ms))
    return total_ms_s / trace.period_s / 1000.0


# -- the fluctuating trace -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceConfig:
    seed: int = 0
    duration_s: float = 60.0
    step_s: float = 0.25
    base_ms: float = 400.0
    jitter_ms: float = 120.0  # standard deviation of the wandering jitter
    jitter_memory: float = 0.8  # AR(1) coefficient: how much of the last step's jitter carries over
    min_ms: float = 50.0
    max_ms: float = 8000.0
    spike_gap_s: tuple[float, float] = (8.0, 16.0)
    spike_duration_s: tuple[float, float] = (1.5, 4.0)
    spike_ms: tuple[float, float] = (2000.0, 6000.0)

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.step_s <= 0:
            raise ValueError("duration_s and step_s must be > 0")
        if not 0 <= self.jitter_memory < 1:
            raise ValueError("jitter_memory must be in [0, 1)")
        for name in ("spike_gap_s", "spike_duration_s", "spike_ms"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be 0 < low <= high, got {(low, high)}")
        if not 0 <= self.min_ms <= self.max_ms:
            raise ValueError("min_ms must be in [0, max_ms]")


@dataclass(frozen=True)
class Spike:
    start_s: float
    duration_s: float
    extra_ms: float

    def extra_at(self, time_s: float) -> float:
        if not self.start_s <= time_s < self.start_s + self.duration_s:
            return 0.0
        return self.extra_ms * (1.0 - (time_s - self.start_s) / self.duration_s)


def _spikes(config: TraceConfig, rng: random.Random) -> list[Spike]:
    spikes: list[Spike] = []
    start = rng.uniform(*config.spike_gap_s)
    while start < config.duration_s:
        spikes.append(Spike(start, rng.uniform(*config.spike_duration_s), rng.uniform(*config.spike_ms)))
        start += rng.uniform(*config.spike_gap_s)
    return spikes


def generate_trace(config: TraceConfig = TraceConfig()) -> list[tuple[float, float]]:
    """Rows (time_s, latency_ms), one per step; the same config gives the same rows."""
    rng = random.Random(config.seed)
    spikes = _spikes(config, rng)
    # Innovation scale for a stationary AR(1) with the configured standard deviation.
    innovation = config.jitter_ms * math.sqrt(1.0 - config.jitter_memory**2)
    jitter = rng.gauss(0.0, config.jitter_ms)
    rows: list[tuple[float, float]] = []
    for index in range(int(round(config.duration_s / config.step_s))):
        time_s = round(index * config.step_s, 6)
        if index:
            jitter = config.jitter_memory * jitter + rng.gauss(0.0, innovation)
        latency = config.base_ms + jitter + sum(s.extra_at(time_s) for s in spikes)
        rows.append((time_s, float(round(min(max(latency, config.min_ms), config.max_ms)))))
    return rows


def trace_csv_text(rows: Sequence[tuple[float, float]], config: TraceConfig | None = None) -> str:
    header = []
    if config is not None:
        header.append(f"# fluctuating cloud latency trace, evaluation.latency, {config}")
    header.append("time_s,latency_ms")
    return "\n".join(header + [f"{t:.2f},{ms:.0f}" for t, ms in rows]) + "\n"


def write_trace_csv(path: str | Path, config: TraceConfig = TraceConfig()) -> Path:
    """Writes the trace for `config` to `path` in delay.py's `time_s,latency_ms` format and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(trace_csv_text(generate_trace(config), config))
    return path


def ensure_default_trace(directory: str | Path) -> Path:
    """The seed-0 trace in `directory`, written if missing (it is deterministic, so an existing file is the same)."""
    path = Path(directory) / DEFAULT_TRACE_NAME
    if not path.is_file():
        write_trace_csv(path)
    return path


# -- latency models for the client-side replay -----------------------------------------------------------------------


class LatencyModel(Protocol):
    """How long after `sent_s` the cloud's answer to a frame sent then arrives, in seconds."""

    def latency_s(self, sent_s: float) -> float: ...


class DelaySpecLatency:
    """A delay spec (the one the real link injects) plus the cloud's own service time.

    The spec's injector is delay.py's, so a trace is replayed exactly as the link does: step-wise, looping, with its
    time origin at the first frame asked about. Ask in send order, as the link would.
    """

    def __init__(self, spec: str, service_s: float = 0.0, rng: random.Random | None = None) -> None:
        if service_s < 0:
            raise ValueError(f"service_s must be >= 0, got {service_s}")
        self.injector: DelayInjector = parse_delay_spec(spec, rng if rng is not None else random.Random(0))
        self.service_s = service_s

    def latency_s(self, sent_s: float) -> float:
        return self.injector.delay_s(sent_s) + self.service_s


def latency_model(setting: LatencySetting, service_s: float = 0.0, seed: int = 0) -> DelaySpecLatency:
    """A fresh model for one replay of `setting` (a trace model remembers its origin: use one per video)."""
    return DelaySpecLatency(setting.spec, service_s, random.Random(seed))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the fluctuating cloud latency trace (time_s,latency_ms).")
    parser.add_argument("out", type=Path, help="CSV file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration-s", type=float, default=TraceConfig.duration_s)
    args = parser.parse_args(argv)
    path = write_trace_csv(args.out, TraceConfig(seed=args.seed, duration_s=args.duration_s))
    setting = trace_setting(path)
    print(f"wrote {path}: mean latency {setting.nominal_s:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
