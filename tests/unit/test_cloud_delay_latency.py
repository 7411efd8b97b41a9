"""The pure part of load_tests/cloud_delay_latency.py: summarising a run's frame results."""

from __future__ import annotations

from client.streaming import FrameResult
from python_backends.context.report import ContextReport
from load_tests.cloud_delay_latency import summarize


def _result(sent_at_ms: int, latency_ms: float, context_frame=None, age=None, error=None) -> FrameResult:
    context = {
        "context_frame": context_frame,
        "context_age_ms": age,
        "cloud_state": "ok",
        "latency_ms": {"total": latency_ms - 2.0},
    }
    return FrameResult(1, 0, sent_at_ms, latency_ms, text="a", context=ContextReport.from_dict(context), error=error)


def test_summary_leaves_out_warmup_and_counts_context():
    results = [_result(0, 500.0)]  # in the warm-up second: left out
    results += [_result(1000 + i, 40.0 + i) for i in range(5)]
    results += [_result(2000 + i, 50.0, context_frame=3, age=1600 + i) for i in range(5)]
    results.append(_result(3000, 10.0, error="boom"))
    summary = summarize(results, warmup_s=1.0)
    assert summary["client"]["n"] == 10 and summary["client"]["max_ms"] == 50.0
    assert summary["server_total"]["max_ms"] == 48.0
    assert summary["errors"] == 1
    assert summary["context_share"] == 0.5
    assert summary["context_age"]["p50_ms"] == 1602.0
    assert summary["cloud_states"] == ["ok"]
