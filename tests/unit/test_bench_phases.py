"""`spotvlm bench`'s phases and their statistics (load_tests/bench_phases.py): the round-trip dedup, context
statistics, phase summaries, headline keys and goals. No server."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from client.streaming import FrameResult
from load_tests import bench_phases
from python_backends.context.report import ContextReport


def _result(
    stream: int,
    frame: int,
    sent_at_ms: int,
    latency_ms: float,
    context_frame: int | None = None,
    age: float | None = None,
    rtt: float | None = None,
    error: str | None = None,
    dispatch: str = "skipped_busy",
) -> FrameResult:
    context = {
        "context_frame": context_frame,
        "context_age_ms": age,
        "context_rtt_ms": rtt,
        "cloud_state": "ok",
        "cloud_dispatch": dispatch,
        "latency_ms": {"total": latency_ms - 2.0, "preprocess": 1.0, "vision": 5.0, "generate": 30.0},
    }
    return FrameResult(
        stream,
        frame,
        sent_at_ms,
        latency_ms,
        text="a",
        context=ContextReport.from_dict(context if not error else {}),
        error=error,
    )


def test_rtt_is_counted_once_per_lvlm_answer_not_per_frame():
    results = [
        # stream 1 uses the answer for frame 3 on three frames, then the answer for frame 7 on two
        _result(1, 5, 0, 50, context_frame=3, age=2200, rtt=2000.0),
        _result(1, 6, 0, 50, context_frame=3, age=2400, rtt=2000.0),
        _result(1, 7, 0, 50, context_frame=3, age=2600, rtt=2000.0),
        _result(1, 9, 0, 50, context_frame=7, age=2500, rtt=2400.0),
        _result(1, 8, 0, 50, context_frame=7, age=2300, rtt=2400.0),  # out of order: frame 8 is its first use
        # stream 2 has its own frame 3: a different answer
        _result(2, 4, 0, 50, context_frame=3, age=1700, rtt=1500.0),
        _result(2, 1, 0, 50),  # no context yet
        _result(2, 2, 0, 50, context_frame=1, age=900, rtt=None),  # an answer without a round trip is skipped
        _result(3, 5, 0, 50, context_frame=3, rtt=9999.0, error="UNAVAILABLE: boom"),  # failed frames never count
    ]
    assert bench_phases.distinct_context_rtts(results) == [2000.0, 2400.0, 1500.0]
    # the lag is per frame, age minus round trip, for every answered frame with both numbers
    assert sorted(bench_phases.context_lags(r for r in results if r.ok)) == [-100.0, 100.0, 200.0, 200.0, 400.0, 600.0]
    first = bench_phases.first_uses(results)
    assert [(r.stream_id, r.frame_index) for r in first] == [(1, 5), (1, 8), (2, 2), (2, 4)]
    stats = bench_phases.context_stats([r for r in results if r.ok])
    assert stats["cloud_rtt"]["n"] == 3 and stats["cloud_rtt"]["p50_ms"] == 2000.0
    assert stats["cloud_answers_used"] == 4
    assert stats["context_age"]["n"] == 7 and stats["context_age"]["p50_ms"] == 2300.0
    assert stats["context_age_first_use"]["p50_ms"] == pytest.approx(np.percentile([2200, 2300, 900, 1700], 50))
    assert stats["context_share"] == pytest.approx(7 / 8, abs=1e-3)
    assert stats["cloud_states"] == {"ok": 8}


def test_an_answer_first_used_in_the_warmup_has_no_first_use_age_later():
    warmup = [_result(1, 10, 0, 50, context_frame=3, age=2100, rtt=2000.0)]
    measured = [
        _result(1, 11, 1000, 50, context_frame=3, age=2300, rtt=2000.0),
        _result(1, 12, 1000, 50, context_frame=8, age=2050, rtt=1900.0),
    ]
    stats = bench_phases.context_stats(measured, warmup)
    assert stats["context_age_first_use"]["n"] == 1 and stats["context_age_first_use"]["p50_ms"] == 2050.0
    # The round trip of every answer used in the measured frames still counts, once each.
    assert stats["cloud_rtt"]["n"] == 2 and stats["cloud_answers_used"] == 2
    summary = bench_phases.summarize_phase([*warmup, *measured], started_ms=0.0, warmup_s=1.0)
    assert summary["context_age_first_use"]["n"] == 1


def test_context_stats_of_a_phase_without_cloud():
    stats = bench_phases.context_stats([FrameResult(1, i, 0, 40.0, text="a") for i in range(4)])
    assert stats["context_share"] == 0.0
    assert stats["context_age"]["n"] == 0 and stats["context_age"]["p50_ms"] is None
    assert stats["cloud_rtt"]["p50_ms"] is None
    assert stats["cloud_states"] == {"none": 4}


def test_phase_summary_leaves_out_warmup_but_counts_every_error():
    results = [_result(1, 0, 0, 900.0, error="UNAVAILABLE: warming up")]  # in the warm-up second
    results += [_result(1, i, 1000 + i, 40.0 + i, dispatch="sent" if i % 2 else "skipped_busy") for i in range(1, 6)]
    results += [_result(2, i, 2000 + i, 60.0, context_frame=1, age=1500.0 + i, rtt=1400.0) for i in range(5)]
    summary = bench_phases.summarize_phase(results, started_ms=0.0, warmup_s=1.0)
    assert summary["n"] == 10 and summary["frames"] == 10 and summary["frames_sent"] == 11
    assert summary["p50_ms"] == pytest.approx(np.percentile([41, 42, 43, 44, 45] + [60] * 5, 50))
    assert summary["p99_ms"] == pytest.approx(60.0) and summary["mean_ms"] == pytest.approx(51.5)
    assert summary["client"]["p50_ms"] == summary["p50_ms"]
    assert summary["errors"] == 0 and summary["errors_total"] == 1
    assert summary["cloud_requests_sent"] == 3  # frames 1, 3 and 5
    assert summary["context_share"] == 0.5
    assert summary["cloud_rtt"]["n"] == 1 and summary["cloud_rtt"]["p50_ms"] == 1400.0
    samples = bench_phases.phase_samples(results, 0.0, 1.0)
    assert len(samples["latency_ms"]) == 10 and len(samples["context_age_ms"]) == 5
    assert samples["cloud_rtt_ms"] == [1400.0]


def test_cloud_requests_sent_counts_answered_frames_the_edge_sent_up():
    results = [_result(1, 0, 0, 40, dispatch="sent"), _result(1, 1, 0, 40), _result(1, 2, 0, 40, dispatch="sent")]
    results.append(_result(1, 3, 0, 40, error="boom"))
    assert bench_phases.cloud_requests_sent(results) == 2


def _phase(p50: float, p99: float, frames: int = 100, errors: int = 0, share: float = 0.0, **extra: Any) -> dict:
    return {"p50_ms": p50, "p99_ms": p99, "frames": frames, "errors_total": errors, "context_share": share, **extra}


MADE_UP_PHASES = {
    "svlm": _phase(50.0, 80.0),
    "spotvlm_cloud_off": _phase(51.0, 82.0, frames=98),
    "spotvlm_no_history": _phase(50.5, 81.0, frames=99),
    "spotvlm_delay0": _phase(60.0, 100.0, errors=1, share=1.0),
    "spotvlm_delay2000": _phase(
        52.0,
        99.0,
        frames=97,
        share=0.8,
        context_age={"p50_ms": 2150.0},
        context_age_first_use={"p50_ms": 2090.0},
        cloud_rtt={"p50_ms": 2000.0},
        context_lag={"p50_ms": 110.0},
    ),
}


def test_headline_keys_from_phase_results():
    keys = bench_phases.headline_keys(MADE_UP_PHASES)
    assert keys["svlm_p50_ms"] == 50.0 and keys["svlm_p99_ms"] == 80.0
    assert keys["spotvlm_cloud_off_p50_ms"] == 51.0 and keys["spotvlm_cloud_off_p99_ms"] == 82.0
    assert keys["spotvlm_delay0_p50_ms"] == 60.0 and keys["spotvlm_delay0_p99_ms"] == 100.0
    assert keys["spotvlm_delay2000_p50_ms"] == 52.0 and keys["spotvlm_delay2000_p99_ms"] == 99.0
    assert keys["overhead_ratio_p50"] == pytest.approx(51.0 / 50.0)
    assert keys["overhead_ratio_no_history_p50"] == pytest.approx(50.5 / 50.0)
    assert keys["context_lag_p50_ms"] == 110.0
    assert keys["hiding_ratio_p99"] == pytest.approx(99.0 / 100.0)
    assert keys["context_age_p50_ms"] == 2150.0 and keys["cloud_rtt_p50_ms"] == 2000.0
    assert keys["context_age_first_use_p50_ms"] == 2090.0
    assert keys["frames"] == 494 and keys["errors"] == 1
    assert keys["context_share"] == {
        "svlm": 0.0,
        "spotvlm_cloud_off": 0.0,
        "spotvlm_no_history": 0.0,
        "spotvlm_delay0": 1.0,
        "spotvlm_delay2000": 0.8,
    }


def test_headline_keys_of_an_unfinished_run_are_none():
    keys = bench_phases.headline_keys({"svlm": MADE_UP_PHASES["svlm"]})
    assert keys["svlm_p50_ms"] == 50.0
    assert keys["spotvlm_cloud_off_p50_ms"] is None and keys["overhead_ratio_p50"] is None
    assert keys["hiding_ratio_p99"] is None and keys["cloud_rtt_p50_ms"] is None
    assert keys["frames"] == 100 and keys["errors"] == 0


def test_goals_met():
    goals = bench_phases.evaluate_goals(bench_phases.headline_keys(MADE_UP_PHASES), fps=5.0)
    assert goals["overhead_ratio_p50"] == {
        "goal": "spotvlm_cloud_off p50 / svlm p50 <= 1.05",
        "value": 1.02,
        "limit": 1.05,
        "met": True,
    }
    assert goals["hiding_ratio_p99"]["met"] is True and goals["hiding_ratio_p99"]["value"] == 0.99
    assert goals["context_age_p50"]["value"] == 150.0 and goals["context_age_p50"]["limit"] == 200.0
    assert goals["context_age_p50"]["met"] is True


@pytest.mark.parametrize(
    "keys, fps, goal, met",
    [
        ({"overhead_ratio_p50": 1.05}, 5.0, "overhead_ratio_p50", True),  # the limit itself meets the goal
        ({"overhead_ratio_p50": 1.051}, 5.0, "overhead_ratio_p50", False),
        ({"overhead_ratio_p50": None}, 5.0, "overhead_ratio_p50", False),  # not measured: not met
        ({"hiding_ratio_p99": 0.7}, 5.0, "hiding_ratio_p99", True),
        ({"hiding_ratio_p99": 1.3}, 5.0, "hiding_ratio_p99", False),
        ({"context_age_p50_ms": 2300.0, "cloud_rtt_p50_ms": 2000.0}, 5.0, "context_age_p50", False),  # 300 > 200
        ({"context_age_p50_ms": 2300.0, "cloud_rtt_p50_ms": 2000.0}, 2.0, "context_age_p50", True),  # 300 <= 500
        ({"context_age_p50_ms": 1900.0, "cloud_rtt_p50_ms": 2000.0}, 10.0, "context_age_p50", True),  # |-100| <= 100
        ({"context_age_p50_ms": None, "cloud_rtt_p50_ms": 2000.0}, 5.0, "context_age_p50", False),
    ],
)
def test_goal_cases(keys, fps, goal, met):
    assert bench_phases.evaluate_goals(keys, fps)[goal]["met"] is met


def test_phases_share_prompt_and_delays():
    assert bench_phases.PHASE_NAMES == (
        "svlm",
        "spotvlm_cloud_off",
        "spotvlm_no_history",
        "spotvlm_delay0",
        "spotvlm_delay2000",
    )
    assert [p.name for p in bench_phases.PHASES if not p.use_context] == ["spotvlm_no_history"]
    delays = {p.name: p.cloud_delay for p in bench_phases.PHASES}
    assert delays == {
        "svlm": None,
        "spotvlm_cloud_off": None,
        "spotvlm_no_history": None,
        "spotvlm_delay0": "0",
        "spotvlm_delay2000": "uniform:1000:3000",
    }
