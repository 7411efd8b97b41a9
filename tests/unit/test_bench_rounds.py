"""`spotvlm bench`'s round statistics and capacity search (load_tests/bench_rounds.py, bench_run.round_statistics).
No server: made-up frame results and a fake measure function."""

from __future__ import annotations

import pytest

from client.frame_result import FrameResult
from load_tests import bench_rounds, bench_run


def test_rounds_alternate_their_order():
    names = ["a", "b", "c"]
    assert [bench_rounds.round_order(names, r) for r in range(3)] == [names, ["c", "b", "a"], names]


def test_each_ratio_is_taken_within_its_round():
    rounds = [
        {"svlm": {"p50_ms": 50.0}, "spotvlm": {"p50_ms": 55.0, "p99_ms": 90.0}},
        {"svlm": {"p50_ms": 80.0}, "spotvlm": {"p50_ms": 84.0}},  # a busier round: both slower
        {"svlm": {"p50_ms": 40.0}},  # spotvlm missing (interrupted)
    ]
    assert bench_rounds.round_ratios(rounds, "spotvlm", "svlm") == [1.1, 1.05, None]
    spread = bench_rounds.spread(bench_rounds.round_ratios(rounds, "spotvlm", "svlm"))
    assert spread == {"median": 1.075, "min": 1.05, "max": 1.1, "rounds": [1.1, 1.05, None]}
    # Pooled p50s would give 55/50 against 84/80 mixed up; the per-round ratios never compare across rounds.
    assert bench_rounds.spread([None, None]) == {"median": None, "min": None, "max": None, "rounds": [None, None]}
    assert bench_rounds.spread([3.0, 1.0, 2.0, 10.0])["median"] == 2.5


def test_round_statistics_names_every_ratio():
    rounds = [
        {
            "svlm": {"p50_ms": 50.0},
            "spotvlm_cloud_off": {"p50_ms": 60.0, "history_tokens_mean": 160.0},
            "spotvlm_no_history": {"p50_ms": 52.0},
            "spotvlm_delay0": {"p99_ms": 100.0},
            "spotvlm_delay2000": {"p99_ms": 110.0},
            "spotvlm_one_stream": {"p50_ms": 40.0},
            "spotvlm_four_streams": {"p50_ms": 60.0},
            "svlm_one_stream": {"p50_ms": 30.0},
            "diy_one_stream": {"p50_ms": 120.0},
            "svlm_16_streams": {"throughput_fps": 40.0},
            "diy_back_to_back": {"throughput_fps": 10.0},
        }
    ]
    stats = bench_run.round_statistics(rounds, {})
    medians = {name: s["median"] for name, s in stats.items()}
    assert medians == {
        "overhead_ratio_p50": 1.2,
        "overhead_ratio_no_history_p50": 1.04,
        "hiding_ratio_p99": 1.1,
        "history_ms_per_token_p50": 0.05,
        "isolation_ratio_p50": 1.5,
        "diy_ratio_p50": 0.25,
        "diy_throughput_ratio": 4.0,
    }
    without_capacity = bench_run.round_statistics([{k: v for k, v in rounds[0].items() if "stream" not in k}], {})
    assert set(without_capacity) == {
        "overhead_ratio_p50",
        "overhead_ratio_no_history_p50",
        "hiding_ratio_p99",
        "history_ms_per_token_p50",
    }


def _frames(stream: int, started_ms: float, latencies: list[float], error_at: int | None = None) -> list[FrameResult]:
    return [
        FrameResult(stream, i, started_ms + 200 * i, lat, text="a", error="boom" if i == error_at else None)
        for i, lat in enumerate(latencies)
    ]


def test_summarize_rounds_pools_measured_frames_and_keeps_each_round():
    # Round 1 starts at t=10 s, round 2 at t=100 s; 1 s warm-up: the first five frames (0..800 ms) of each are cut.
    first = _frames(1, 10_000.0, [900.0] * 5 + [40.0] * 5, error_at=0)
    second = _frames(1001, 100_000.0, [900.0] * 5 + [60.0] * 5)
    pooled = bench_rounds.summarize_rounds([(first, 10_000.0), (second, 100_000.0)], warmup_s=1.0)
    assert pooled["n"] == 10 and pooled["frames_sent"] == 20 and pooled["errors_total"] == 1
    assert pooled["p50_ms"] == pytest.approx(50.0) and pooled["p99_ms"] == pytest.approx(60.0, abs=0.5)
    assert [r["p50_ms"] for r in pooled["rounds"]] == [40.0, 60.0]
    assert [r["frames"] for r in pooled["rounds"]] == [5, 5]
    assert pooled["streams"] == 1
    # The pooled wall time is the measured time of both rounds, not the 90 s between them.
    assert pooled["wall_s"] < 5.0


def test_throughput_counts_answers_after_the_warmup():
    results = _frames(1, 0.0, [100.0] * 11, error_at=10)  # frames at 0, 200, ..., 2000 ms; the last failed
    # After a 1 s warm-up: frames 5..9 answered, the last answer at 1800 + 100 ms, 0.9 s after the cut.
    assert bench_rounds.throughput_fps(results, 0.0, 1.0) == pytest.approx(5 / 0.9, abs=0.01)
    assert bench_rounds.throughput_fps([], 0.0, 1.0) is None


@pytest.mark.parametrize(
    "summary, ok",
    [
        ({"p99_ms": 150.0, "errors_total": 0, "late_frames": 0, "frames": 40}, True),
        ({"p99_ms": 250.0, "errors_total": 0, "late_frames": 0, "frames": 40}, False),
        ({"p99_ms": 150.0, "errors_total": 1, "late_frames": 0, "frames": 40}, False),
        ({"p99_ms": 150.0, "errors_total": 0, "late_frames": 2, "frames": 40}, False),
        ({"p99_ms": None, "errors_total": 0, "late_frames": 0, "frames": 0}, False),
    ],
)
def test_latency_goal(summary, ok):
    assert bench_rounds.meets_latency_goal(summary, 200.0) is ok


@pytest.mark.parametrize("true_capacity", [0, 1, 2, 3, 5, 12, 16, 17, 31, 63, 64])
def test_capacity_search_finds_the_edge(true_capacity):
    calls: list[int] = []

    def passes(streams: int) -> bool:
        calls.append(streams)
        return streams <= true_capacity

    search = bench_rounds.find_capacity(passes, limit=64)
    assert search.capacity == true_capacity
    assert search.tried == [(n, n <= true_capacity) for n in calls]
    assert len(set(calls)) == len(calls)  # no count measured twice
    assert len(calls) <= 2 * 7  # doubling to 64 and bisecting: logarithmic in the limit
    assert search.at_limit is (true_capacity == 64)


def test_capacity_search_doubles_then_bisects():
    search = bench_rounds.find_capacity(lambda n: n <= 10, limit=64)
    assert [n for n, _ in search.tried] == [1, 2, 4, 8, 16, 12, 10, 11]
    assert search.capacity == 10


def test_capacity_search_stops_at_its_limit_and_checks_its_bounds():
    search = bench_rounds.find_capacity(lambda n: True, limit=5, start=2)
    assert search.capacity == 5 and search.at_limit and [n for n, _ in search.tried] == [2, 4, 5]
    with pytest.raises(ValueError):
        bench_rounds.find_capacity(lambda n: True, limit=4, start=5)
    with pytest.raises(ValueError):
        bench_rounds.find_capacity(lambda n: True, limit=4, start=0)


def test_stream_ids_are_distinct_per_run_and_round():
    ids = [bench_run.stream_ids_for(slot, r, 64) for slot in (0, 1, 50) for r in range(3)]
    flat = [i for run in ids for i in run]
    assert len(flat) == len(set(flat)) and all(i > 0 for i in flat)
    with pytest.raises(ValueError):
        bench_run.stream_ids_for(0, 0, 1000)


def _trial(streams, passed, total=None):
    trial = {"streams": streams, "passed": passed, "p99_ms": 100.0 + streams, "late_frames": 0}
    if total is not None:
        trial["cpu_ms_per_frame"] = {"svlm_generate": total - 2.0, "tritonserver": 2.0, "total": total}
        trial["busy_share_of_machine"] = 0.5
    return trial


def test_capacity_bound_is_the_smallest_failure_above_the_capacity():
    trials = [_trial(1, True, 30.0), _trial(2, True, 25.0), _trial(4, False, 20.0), _trial(3, False, 21.0)]
    bound = bench_rounds.capacity_bound(trials, 2)
    assert bound["streams"] == 3 and not bound["passed"] and bound["cpu_ms_per_frame"]["total"] == 21.0
    assert bound["busy_share_of_machine"] == 0.5


def test_capacity_bound_falls_back_to_the_largest_pass_and_needs_cpu_records():
    assert bench_rounds.capacity_bound([_trial(1, True, 30.0), _trial(2, True, 25.0)], 2)["streams"] == 2
    assert bench_rounds.capacity_bound([_trial(1, True), _trial(2, False)], 1) is None


def test_capacity_search_records_each_trials_cpu_and_what_bounds_it(monkeypatch):
    import os
    import threading

    from load_tests.bench_config import BenchConfig

    def fake_run_load(load, url, config, stream_ids, stop, seconds):
        # Every stream answers 20 frames, at 60 ms up to 4 streams and at 300 ms beyond, burning some CPU here.
        sum(i * i for i in range(100_000))
        latency = 60.0 if load.streams <= 4 else 300.0
        started = 1_000_000.0
        results = [
            FrameResult(stream, i, int(started + 5000 + i * 200), latency) for stream in stream_ids for i in range(20)
        ]
        return results, started

    monkeypatch.setattr(bench_run, "run_load", fake_run_load)
    config = BenchConfig(streams=1, fps=5.0, seconds=8, warmup=1, max_tokens=24, quick=True, capacity_limit=8)
    bar = bench_run.tqdm(disable=True)
    capacity = bench_run.search_capacity(config, "unused:1", threading.Event(), bar, server_pid=os.getpid())
    assert capacity["capacity_streams"] == 4
    assert all("cpu_ms_per_frame" in t and "busy_share_of_machine" in t for t in capacity["trials"])
    bound = capacity["bound"]
    assert bound["streams"] == 5 and not bound["passed"] and bound["cpu_ms_per_frame"]["total"] >= 0
