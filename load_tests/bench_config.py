"""`spotvlm bench`'s settings (load_tests/bench.py reads them from its options, bench_run.py runs them)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from client.streaming import DEFAULT_PROMPT
from load_tests.bench_phases import PHASES
from load_tests.bench_store import STORE_STREAMS

DEFAULT_MAX_TOKENS = 24  # spotvlm's and svlm_generate's default_max_tokens
# The longest round trip the delay2000 phase can take: its injected maximum plus the LVLM's own time.
LONGEST_RTT_S = 3.0 + 1.0
CAPACITY_DEFAULTS = {"capacity_seconds": 8.0, "capacity_limit": 64, "latency_limit_ms": 200.0, "diy_threads": 1}


@dataclass(frozen=True)
class BenchConfig:
    streams: int
    fps: float
    seconds: float
    warmup: float
    max_tokens: int
    quick: bool
    prompt: str = DEFAULT_PROMPT
    store_streams: int = STORE_STREAMS
    ready_timeout: float = 180.0
    cloud_max_inflight: int = 0  # the linked edge's per-stream cloud requests in flight; 0 = full_rate_inflight(fps)
    rounds: int = 1
    capacity: bool = False  # the DIY baseline, isolation, capacity search and memory too
    capacity_seconds: float = CAPACITY_DEFAULTS["capacity_seconds"]
    capacity_limit: int = CAPACITY_DEFAULTS["capacity_limit"]
    latency_limit_ms: float = CAPACITY_DEFAULTS["latency_limit_ms"]
    diy_threads: int = CAPACITY_DEFAULTS["diy_threads"]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cloud_max_inflight"] = self.linked_inflight
        out["cloud_delays"] = {p.name: p.cloud_delay for p in PHASES}
        out["protocol"] = "grpc"
        out["frames"] = "SyntheticSource 320x240 RGB, seed k for stream k, sent raw"
        return out

    @property
    def linked_inflight(self) -> int:
        return self.cloud_max_inflight or full_rate_inflight(self.fps)


def full_rate_inflight(fps: float, longest_rtt_s: float = LONGEST_RTT_S) -> int:
    """Cloud requests in flight per stream so that every frame can go to the cloud even at the longest round trip.
    With 1 (spotvlm's default) an answer is reused until the next one comes back a round trip later, so the median
    context age is about 1.5 round trips by construction; with every frame sent, the freshest answer is at most a
    frame interval older than its round trip, which is what the context-age goal asks."""
    return max(1, math.ceil(fps * longest_rtt_s))
