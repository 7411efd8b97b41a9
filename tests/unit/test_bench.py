"""The pure parts of `spotvlm bench` (load_tests/bench.py, bench_phases, bench_store, bench_output): phase
summaries, headline keys, goals, the round-trip dedup, the store measurement, the svlm session and the options.
No server."""

from __future__ import annotations

import argparse
import tracemalloc
from typing import Any

import numpy as np
import pytest

from spotvlm import cli
from client.streaming import FrameResult, run_streams
from load_tests import bench, bench_output, bench_phases, bench_store
from python_backends.context.report import ContextReport
from python_backends.context.store import ContextStore, StoreLimits


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


# -- round trips and context -------------------------------------------------------------------------------------------


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


# -- headline keys and goals -------------------------------------------------------------------------------------------


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


# -- store measurement -------------------------------------------------------------------------------------------------


def test_fill_store_puts_every_stream_at_its_limits():
    limits = StoreLimits(max_streams=16, max_turns=3, max_cloud_results=2, max_text_chars=50, max_detections=4)
    store = ContextStore(limits, clock=lambda: 0.0)
    bench_store.fill_store(store, 10)
    assert len(store) == 10
    for sid in (1, 10):
        snapshot = store.snapshot(sid)
        assert len(snapshot.turns) == 3 and len(snapshot.cloud_results) == 2
        assert all(len(t.question) == 50 and len(t.answer) == 50 for t in snapshot.turns)
        assert all(len(r.text) == 50 and len(r.detections) == 4 for r in snapshot.cloud_results)
    # Texts differ between streams, as real ones do (no shared string objects to flatter the measurement).
    assert store.snapshot(1).turns[0].answer != store.snapshot(2).turns[0].answer


def test_measure_store_on_a_small_count():
    report = bench_store.measure_store(50)
    assert report["streams"] == 50
    assert report["store_bytes_per_stream"] > 0 and report["store_memory_bytes_estimate_per_stream"] > 0
    # Default limits: 8 turns of two 1024-char texts and 4 answers of 1024 chars are over 20 kB of text alone.
    assert report["store_bytes_per_stream"] > 20_000
    # The store's own estimate and what tracemalloc saw agree to within a factor of two.
    assert 0.5 < report["store_memory_bytes_estimate_per_stream"] / report["store_bytes_per_stream"] < 2.0
    assert report["limits"]["max_streams"] >= 50
    assert not tracemalloc.is_tracing()


def test_measure_store_scales_past_the_default_stream_limit():
    limits = StoreLimits(max_streams=4, max_turns=1, max_cloud_results=1, max_text_chars=16, max_detections=1)
    report = bench_store.measure_store(20, limits)
    assert report["streams"] == 20 and report["limits"]["max_streams"] == 20


def test_measure_store_leaves_a_running_tracemalloc_running():
    tracemalloc.start()
    try:
        report = bench_store.measure_store(5)
        assert tracemalloc.is_tracing() and report["store_bytes_per_stream"] > 0
    finally:
        tracemalloc.stop()


def test_measure_store_rejects_no_streams():
    with pytest.raises(ValueError, match="streams must be >= 1"):
        bench_store.measure_store(0)


def test_store_measurement_in_a_child_process():
    report = bench_store.StoreMeasurement(10).result()
    assert report["streams"] == 10 and report["store_bytes_per_stream"] > 0


def test_store_measurement_failure_in_the_child_is_reported():
    measurement = bench_store.StoreMeasurement(0)
    with pytest.raises(RuntimeError, match="streams must be >= 1"):
        measurement.result()
    measurement.cancel()  # harmless once the child is gone


# -- the svlm session --------------------------------------------------------------------------------------------------


class FakeClient:
    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def infer(self, model, inputs, outputs, parameters=None, **kwargs):
        self.calls.append({"model": model, "inputs": inputs, "outputs": outputs, "parameters": parameters, **kwargs})
        if self.fail is not None:
            raise self.fail
        return {"TEXT": np.array([[b"a red car"]], dtype=np.object_)}

    def close(self) -> None:
        pass


def test_svlm_session_sends_image_prompt_and_max_tokens_without_a_sequence():
    client = FakeClient()
    session = bench.SvlmSession("unused:1", 7, "Where is the car?", 24, client=client)
    frame = np.zeros((24, 32, 3), dtype=np.uint8)
    result = session.send(frame, start=True, end=False)
    assert result.ok and result.text == "a red car" and result.context == ContextReport() and result.latency_ms > 0
    call = client.calls[0]
    assert call["model"] == "svlm" and call["outputs"] == ["TEXT"]
    assert set(call["inputs"]) == {"IMAGE", "PROMPT", "MAX_TOKENS"}
    assert call["inputs"]["IMAGE"].shape == (1, 24, 32, 3) and call["inputs"]["IMAGE"].dtype == np.uint8
    assert call["inputs"]["PROMPT"].tolist() == [[b"Where is the car?"]]
    assert call["inputs"]["MAX_TOKENS"].dtype == np.int32 and call["inputs"]["MAX_TOKENS"].tolist() == [[24]]
    assert "sequence_id" not in call and call["parameters"] is None


def test_svlm_session_records_errors():
    session = bench.SvlmSession("unused:1", 1, "q", 8, client=FakeClient(fail=RuntimeError("server gone")))
    result = session.send(np.zeros((8, 8, 3), dtype=np.uint8), start=True, end=True)
    assert not result.ok and "server gone" in result.error


def test_svlm_sessions_run_paced_like_spotvlm_streams():
    clients: dict[int, FakeClient] = {}

    def factory(stream_id: int) -> bench.SvlmSession:
        clients[stream_id] = FakeClient()
        return bench.SvlmSession("unused:1", stream_id, "q", 16, client=clients[stream_id])

    frames = [[np.full((8, 8, 3), k, dtype=np.uint8)] * 3 for k in range(2)]
    results = run_streams(
        frames, url="unused:1", fps=200.0, frames=3, progress=None, stream_ids=[5, 6], session_factory=factory
    )
    assert [(r.stream_id, r.frame_index) for r in results] == [(5, 0), (5, 1), (5, 2), (6, 0), (6, 1), (6, 2)]
    assert all(r.ok for r in results) and all(len(c.calls) == 3 for c in clients.values())


def test_phase_stream_ids_differ_between_phases():
    ids = [bench_phases.phase_stream_ids(i, 4) for i in range(len(bench_phases.PHASES))]
    assert ids[0] == [1, 2, 3, 4]
    assert len({sid for phase in ids for sid in phase}) == 4 * len(bench_phases.PHASES)
    assert all(sid > 0 for phase in ids for sid in phase)


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


def test_wait_for_cloud_stops_once_the_cloud_has_answered(monkeypatch):
    counts = [3.0, 5.0, 8.0, 9.0]
    scrapes, sleeps = [], []

    def scrape(url: str) -> dict:
        scrapes.append(url)
        return {"lvlm": {"requests": counts[len(scrapes) - 1]}}

    monkeypatch.setattr(bench, "scrape_metrics", scrape)
    monkeypatch.setattr(bench.time, "sleep", sleeps.append)
    bench.wait_for_cloud("127.0.0.1:1", expected=8, timeout_s=600.0)
    assert len(scrapes) == 3 and len(sleeps) == 2  # it stopped at the scrape that saw 8 answers


# -- options, table, plot ----------------------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    return bench.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_quick_defaults_and_overrides():
    quick = bench.resolve_config(_args("--quick"))
    assert (quick.streams, quick.fps, quick.seconds, quick.warmup) == (2, 5.0, 20.0, 3.0)
    assert quick.quick and quick.max_tokens == 24 and quick.store_streams == 10_000
    shortened = bench.resolve_config(_args("--quick", "--seconds", "6", "--warmup", "1", "--max-tokens", "8"))
    assert (shortened.seconds, shortened.warmup, shortened.max_tokens, shortened.streams) == (6.0, 1.0, 8, 2)
    full = bench.resolve_config(_args())
    assert not full.quick and full.seconds == 60.0 and full.seconds > quick.seconds
    assert quick.linked_inflight == 20 and quick.to_json()["cloud_max_inflight"] == 20
    assert bench.resolve_config(_args("--quick", "--cloud-max-inflight", "1")).linked_inflight == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--streams", "0"], "--streams"),
        (["--fps", "0"], "--fps"),
        (["--seconds", "5", "--warmup", "5"], "--warmup"),
        (["--warmup", "-1"], "--warmup"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--store-streams", "0"], "--store-streams"),
        (["--prompt", "  "], "--prompt"),
        (["--cloud-max-inflight", "0"], "--cloud-max-inflight"),
    ],
)
def test_bad_options(argv, message):
    with pytest.raises(ValueError, match=message):
        bench.resolve_config(_args(*argv))


def test_spotvlm_bench_rejects_bad_options_before_starting_anything(capsys):
    assert cli.main(["bench", "--seconds", "5", "--warmup", "9"]) == 2
    assert "--warmup" in capsys.readouterr().err


def test_plot_goes_next_to_the_json(tmp_path):
    assert bench.plot_path(_args("--json", str(tmp_path / "out.json"))) == tmp_path / "out.png"
    assert bench.plot_path(_args("--json", "a.json", "--plot", "b.png")) == bench.Path("b.png")
    assert bench.plot_path(_args()) == bench.DEFAULT_PLOT


def _report() -> dict[str, Any]:
    keys = bench_phases.headline_keys(MADE_UP_PHASES)
    config = bench.resolve_config(_args("--quick"))
    store = {"streams": 10, "store_bytes_per_stream": 68000.0, "store_memory_bytes_estimate_per_stream": 75000.0}
    return {
        **keys,
        "goals": bench_phases.evaluate_goals(keys, config.fps),
        "config": config.to_json(),
        "phases": {name: {**p, "mean_ms": p["p50_ms"]} for name, p in MADE_UP_PHASES.items()},
        "store": store,
        "wall_s": 100.0,
    }


def test_table_shows_phases_goals_and_store():
    table = bench_output.format_table(_report())
    for name in bench_phases.PHASE_NAMES:
        assert name in table
    assert "overhead_ratio_p50  1.020  (goal <= 1.05: met)" in table
    assert "gap 150 ms (goal gap <= 200.0 ms: met)" in table
    assert "68000 bytes per stream" in table and "494 frames, 1 errors" in table


def test_table_of_an_unfinished_run():
    store = {"streams": 10, "error": "RuntimeError: the store measurement process died (exit code -9)"}
    table = bench_output.format_table({"phases": {}, "goals": bench_phases.evaluate_goals({}, 5.0), "store": store})
    assert "svlm" in table and "not met" in table
    assert "context store: not measured (RuntimeError: the store measurement process died" in table


def test_plot_is_written(tmp_path):
    rng = np.random.default_rng(0)
    samples = {
        name: {"latency_ms": list(rng.normal(60, 10, 50)), "context_age_ms": [], "cloud_rtt_ms": []}
        for name in bench_phases.PHASE_NAMES
    }
    samples["spotvlm_delay2000"].update(context_age_ms=[2100.0, 2600.0, 3100.0], cloud_rtt_ms=[2000.0, 2500.0])
    path = tmp_path / "plots" / "bench.png"
    assert bench_output.write_plot(_report(), samples, path) is None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_plot_without_latencies(tmp_path):
    assert "no phase" in bench_output.write_plot(_report(), {}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_full_rate_inflight_sends_every_frame_at_the_longest_round_trip():
    assert bench.full_rate_inflight(5.0) == 20 and bench.full_rate_inflight(5.0, longest_rtt_s=0.1) == 1
    assert bench.full_rate_inflight(7.5, longest_rtt_s=4.0) == 30
