"""Frame statistics of the benchmarks: the shared percentile, latency summaries, ratios, the warm-up cut."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from client.stats import percentile
from client.streaming import FrameResult
from load_tests import frame_stats as fs
from python_backends.context.report import ContextReport


def _result(
    sent_at_ms: int,
    latency_ms: float,
    *,
    stream_id: int = 1,
    server_ms: float | None = None,
    error: str | None = None,
    late: bool = False,
) -> FrameResult:
    context: dict[str, Any] = {}
    if server_ms is not None:
        context["latency_ms"] = {"preprocess": 0.5, "vision": 5.0, "generate": server_ms - 6.0, "total": server_ms}
    return FrameResult(
        stream_id=stream_id,
        frame_index=0,
        sent_at_ms=sent_at_ms,
        latency_ms=latency_ms,
        context=ContextReport.from_dict(context),
        error=error,
        late=late,
    )


def test_percentile_and_summary() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 100.0]
    assert percentile(values, 50, digits=2) == 30.0
    assert percentile(values, 99, digits=2) == pytest.approx(float(np.percentile(values, 99)), abs=0.01)
    assert percentile([], 50) is None
    summary = fs.latency_summary(values)
    assert summary == {"n": 5, "p50_ms": 30.0, "p90_ms": 76.0, "p99_ms": 97.6, "mean_ms": 40.0, "max_ms": 100.0}
    assert fs.latency_summary([])["p50_ms"] is None


def test_ratio() -> None:
    assert fs.ratio(60.0, 50.0) == 1.2
    assert fs.ratio(None, 50.0) is None
    assert fs.ratio(60.0, None) is None
    assert fs.ratio(60.0, 0.0) is None


def test_after_warmup_drops_frames_sent_in_the_first_seconds() -> None:
    start = 1_000_000.0
    results = [_result(int(start + t), 50.0) for t in (0, 500, 1999, 2000, 2500, 9000)]
    kept = fs.after_warmup(results, start, 2.0)
    assert [r.sent_at_ms - start for r in kept] == [2000, 2500, 9000]
    assert fs.after_warmup(results, start, 0.0) == results


def test_server_latency() -> None:
    assert fs.server_latency(_result(0, 60.0, server_ms=55.0)) == 55.0
    assert fs.server_latency(_result(0, 60.0, server_ms=55.0), "generate") == 49.0
    assert fs.server_latency(_result(0, 60.0)) is None
    odd = _result(0, 60.0)
    odd.context = ContextReport.from_dict({"latency_ms": {"total": "55"}})
    assert fs.server_latency(odd) is None


def test_phase_summary_excludes_warmup_and_counts() -> None:
    start = 0.0
    results = [
        _result(100, 500.0, server_ms=490.0),  # warm-up: a slow first frame, left out
        _result(2100, 50.0, server_ms=45.0),
        _result(2200, 60.0, server_ms=52.0, stream_id=2, late=True),
        _result(2300, 70.0, server_ms=66.0),
        _result(2400, 0.0, error="UNAVAILABLE: gone", stream_id=2),
    ]
    summary = fs.phase_summary(results, start, 2.0)
    assert summary["streams"] == 2
    assert summary["wall_s"] == 2.4  # the last reply: the error, sent at 2400 ms
    assert summary["achieved_fps_per_stream"] == round(5 / 2 / 2.4, 2)
    assert summary["frames_sent"] == 5
    assert summary["frames"] == 4
    assert summary["errors"] == 1
    assert summary["first_errors"] == ["UNAVAILABLE: gone"]
    assert summary["late_frames"] == 1
    assert summary["client"]["n"] == 3
    assert summary["client"]["p50_ms"] == 60.0
    assert summary["server_total"]["p50_ms"] == 52.0
    assert summary["outside_model_p50_ms"] == 5.0  # 50-45, 60-52, 70-66
    assert summary["server_breakdown_p50_ms"]["generate"] == 46.0
    assert summary["per_stream_p50_ms"] == {"1": 60.0, "2": 60.0}


def test_percentile_methods() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    # Nearest rank: the smallest value with at least q % of the values at or below it.
    assert percentile([1.0, 2.0, 3.0, 4.0], 50, method="inverted_cdf") == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 76, method="inverted_cdf") == 4.0
    assert percentile([1.0, 2.0], 99.999, digits=1) == 2.0
