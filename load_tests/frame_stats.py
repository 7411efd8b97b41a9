"""Statistics of a benchmark run's frames (client.streaming.FrameResult): warm-up cut, latency summaries, ratios."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from client.stats import percentile
from client.streaming import FrameResult

# Benchmark reports give milliseconds to two decimals.
DIGITS = 2


def latency_summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50, digits=DIGITS),
        "p90_ms": percentile(values, 90, digits=DIGITS),
        "p99_ms": percentile(values, 99, digits=DIGITS),
        "mean_ms": round(float(np.mean(values)), DIGITS) if len(values) else None,
        "max_ms": round(float(np.max(values)), DIGITS) if len(values) else None,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def after_warmup(results: Sequence[FrameResult], run_start_ms: float, warmup_s: float) -> list[FrameResult]:
    """The results of frames sent at least `warmup_s` after the run began (wall clock, ms since the epoch)."""
    cutoff = run_start_ms + warmup_s * 1000.0
    return [r for r in results if r.sent_at_ms >= cutoff]


def server_latency(result: FrameResult, part: str = "total") -> float | None:
    """`CONTEXT.latency_ms[part]` of an answered frame, or None."""
    latency = result.context.latency_ms
    value = getattr(latency, part, None) if latency is not None else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def phase_summary(results: Sequence[FrameResult], run_start_ms: float, warmup_s: float) -> dict[str, Any]:
    """What one run measured, over the frames after the warm-up (`frames_sent` counts every frame)."""
    measured = after_warmup(results, run_start_ms, warmup_s)
    answered = [r for r in measured if r.ok]
    client = [r.latency_ms for r in answered]
    server_total = [v for r in answered if (v := server_latency(r)) is not None]
    # Client round trip minus the model's own time: gRPC, Triton's queue for a free instance, the response.
    outside = [r.latency_ms - v for r in answered if (v := server_latency(r)) is not None]
    by_stream: dict[int, list[float]] = {}
    for r in answered:
        by_stream.setdefault(r.stream_id, []).append(r.latency_ms)
    errors = [r.error for r in measured if not r.ok]
    streams = len({r.stream_id for r in results})
    # A fixed number of frames per stream (duration x fps); a late reply sends the next frame at once, so an
    # overloaded server stretches the run and each stream gets fewer frames per second than asked.
    wall_s = max((r.sent_at_ms + r.latency_ms for r in results), default=run_start_ms) / 1000.0 - run_start_ms / 1000.0
    return {
        "streams": streams,
        "wall_s": round(wall_s, 2),
        "achieved_fps_per_stream": round(len(results) / streams / wall_s, 2) if streams and wall_s > 0 else None,
        "frames_sent": len(results),
        "frames": len(measured),
        "errors": len(errors),
        "first_errors": sorted(set(str(e) for e in errors))[:3],
        "late_frames": sum(r.late for r in measured),
        "restarts": sum(r.restarted for r in measured),
        "client": latency_summary(client),
        "server_total": latency_summary(server_total),
        "outside_model_p50_ms": percentile(outside, 50, digits=DIGITS),
        "server_breakdown_p50_ms": {
            part: percentile([v for r in answered if (v := server_latency(r, part)) is not None], 50, digits=DIGITS)
            for part in ("preprocess", "vision", "generate")
        },
        "per_stream_p50_ms": {str(sid): percentile(v, 50, digits=DIGITS) for sid, v in sorted(by_stream.items())},
    }
