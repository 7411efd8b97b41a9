"""The pure parts of `spotvlm bench` (load_tests/bench.py, bench_run.py, bench_config.py and bench_output.py): the
svlm session, the options, the cloud settle wait, the table and the plot. No server. The phases' statistics and the
store measurement have their own test files."""

from __future__ import annotations

import json
import threading
import time

import argparse
from typing import Any

import numpy as np
import pytest

from client.streaming import run_streams
from load_tests import bench, bench_config, bench_output, bench_phases, bench_run
from load_tests.interrupts import interruptible
from python_backends.context.report import ContextReport
from spotvlm import cli
from tests.unit.test_bench_phases import MADE_UP_PHASES

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
    session = bench_run.SvlmSession("unused:1", 7, "Where is the car?", 24, client=client)
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
    session = bench_run.SvlmSession("unused:1", 1, "q", 8, client=FakeClient(fail=RuntimeError("server gone")))
    result = session.send(np.zeros((8, 8, 3), dtype=np.uint8), start=True, end=True)
    assert not result.ok and "server gone" in result.error


def test_svlm_sessions_run_paced_like_spotvlm_streams():
    clients: dict[int, FakeClient] = {}

    def factory(stream_id: int) -> bench_run.SvlmSession:
        clients[stream_id] = FakeClient()
        return bench_run.SvlmSession("unused:1", stream_id, "q", 16, client=clients[stream_id])

    frames = [[np.full((8, 8, 3), k, dtype=np.uint8)] * 3 for k in range(2)]
    results = run_streams(
        frames, url="unused:1", fps=200.0, frames=3, progress=None, stream_ids=[5, 6], session_factory=factory
    )
    assert [(r.stream_id, r.frame_index) for r in results] == [(5, 0), (5, 1), (5, 2), (6, 0), (6, 1), (6, 2)]
    assert all(r.ok for r in results) and all(len(c.calls) == 3 for c in clients.values())


def test_wait_for_cloud_stops_once_the_cloud_has_answered(monkeypatch):
    counts = [3.0, 5.0, 8.0, 9.0]
    scrapes, sleeps = [], []

    def scrape(url: str) -> dict:
        scrapes.append(url)
        return {"lvlm": {"requests": counts[len(scrapes) - 1]}}

    monkeypatch.setattr(bench_run, "scrape_metrics", scrape)
    monkeypatch.setattr(bench_run.time, "sleep", sleeps.append)
    bench_run.wait_for_cloud("127.0.0.1:1", expected=8, timeout_s=600.0)
    assert len(scrapes) == 3 and len(sleeps) == 2  # it stopped at the scrape that saw 8 answers


# -- options, table, plot ----------------------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    return bench.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_quick_defaults_and_overrides():
    quick = bench.resolve_config(_args("--quick"))
    assert (quick.streams, quick.fps, quick.seconds, quick.warmup, quick.rounds) == (2, 5.0, 8.0, 2.0, 3)
    assert not quick.capacity and quick.latency_limit_ms == 200.0 and quick.capacity_limit == 64
    assert quick.quick and quick.max_tokens == 24 and quick.store_streams == 10_000
    shortened = bench.resolve_config(_args("--quick", "--seconds", "6", "--warmup", "1", "--max-tokens", "8"))
    assert (shortened.seconds, shortened.warmup, shortened.max_tokens, shortened.streams) == (6.0, 1.0, 8, 2)
    full = bench.resolve_config(_args())
    assert not full.quick and full.seconds == 20.0 and full.seconds > quick.seconds and full.rounds == 5
    capacity = bench.resolve_config(_args("--quick", "--capacity", "--rounds", "2", "--capacity-limit", "8"))
    assert capacity.capacity and capacity.rounds == 2 and capacity.capacity_limit == 8
    assert capacity.to_json()["capacity"] is True
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
        (["--rounds", "0"], "--rounds"),
        (["--capacity-limit", "0"], "--capacity-limit"),
        (["--capacity-limit", "1000"], "--capacity-limit"),
        (["--capacity-seconds", "0"], "--capacity-seconds"),
        (["--latency-limit-ms", "0"], "--latency-limit-ms"),
        (["--diy-threads", "0"], "--diy-threads"),
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
    assert bench_config.full_rate_inflight(5.0) == 20 and bench_config.full_rate_inflight(5.0, longest_rtt_s=0.1) == 1
    assert bench_config.full_rate_inflight(7.5, longest_rtt_s=4.0) == 30


def test_table_shows_each_ratio_range_the_capacity_and_memory():
    report = _report()
    report["ratios"] = {"overhead_ratio_p50": {"median": 1.02, "min": 0.98, "max": 1.3, "rounds": [0.98, 1.02, 1.3]}}
    report["capacity"] = {
        "capacity_streams": 6,
        "at_limit": False,
        "latency_limit_ms": 200.0,
        "fps": 5.0,
        "trials": [{"streams": 4, "passed": True}, {"streams": 8, "passed": False}],
    }
    report["edge_rss_bytes"] = {"idle": 300 * 2**20, "16_streams": 320 * 2**20}
    table = bench_output.format_table(report)
    assert "overhead_ratio_p50             median 1.020  range [0.980, 1.300] over 3 round(s)" in table
    assert "capacity_streams    6  (p99 <= 200.0 ms, none late, at 5.0 fps; tried 4 pass, 8 fail)" in table
    assert "edge RSS: idle 300 MiB, 16 streams 320 MiB" in table
    assert "what bounds it" not in table  # no trial recorded its CPU


def test_table_says_what_bounds_the_capacity():
    report = _report()
    report["capacity"] = {
        "capacity_streams": 4,
        "trials": [],
        "bound": {
            "streams": 8,
            "passed": False,
            "p99_ms": 310.0,
            "cpu_ms_per_frame": {"svlm_generate": 9.5, "tritonserver": 2.1, "total": 11.6},
            "client_cpu_ms_per_frame": 1.2,
            "busy_share_of_machine": 0.93,
        },
    }
    table = bench_output.format_table(report)
    assert (
        "what bounds it: at 8 streams (p99 310.0 ms) the edge spent 11.6 CPU ms a frame (svlm_generate 9.5,"
        " tritonserver 2.1), the load client 1.2 ms; the machine was 93% busy" in table
    )
    report["capacity"]["bound"].update(passed=True, busy_share_of_machine=None)
    table = bench_output.format_table(report)
    assert "CPU at the most streams tried, 8 streams (p99 310.0 ms)" in table and "busy" not in table


def test_the_report_names_the_served_checkpoint_and_build_options(tmp_path):
    from load_tests import bench_run

    generate = tmp_path / "edge" / "svlm_generate"
    generate.mkdir(parents=True)
    assert bench_run.served_edge_checkpoint(tmp_path) == bench_run.EDGE_CHECKPOINT  # nothing built
    (generate / "config.pbtxt").write_text(
        'name: "svlm_generate"\nparameters { key: "checkpoint", value: { string_value: "/ckpt/trained" } }\n'
    )
    assert str(bench_run.served_edge_checkpoint(tmp_path)) == "/ckpt/trained"
    record = tmp_path / "engines.json"
    values = {"batch_window_us": "30000", "spotvlm_instances": "16", "other": "x"}
    record.write_text(json.dumps({"values": values, "device": "cpu", "tensorrt": None}))
    build = bench_run.edge_build(record)
    assert build["batch_window_us"] == "30000" and build["spotvlm_instances"] == "16" and "other" not in build
    assert build["device"] == "cpu" and build["tensorrt"] is None
    assert set(bench_run.edge_build(tmp_path / "missing.json")) == {"checkpoint"}


def test_the_bench_is_interrupted_by_sigterm_and_a_background_sigint():
    import os
    import signal

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set from the main thread")
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell leaves it for a background job
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with pytest.raises(KeyboardInterrupt), interruptible():
                os.kill(os.getpid(), sig)
                time.sleep(2)  # the handler raises before this ends
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # restored
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def test_history_tokens_follow_each_streams_own_earlier_answers():
    from client.frame_result import FrameResult
    from python_backends.context.report import ContextReport

    def frame(stream, index, turns, text="ab", error=None):
        context = ContextReport(history_turns=turns)
        return FrameResult(stream, index, 1000 + 200 * index, 40.0, text=text, context=context, error=error)

    seen = []

    def count(question, turns):
        seen.append(list(turns))
        return 10 * len(turns)

    results = [frame(1, 0, 0, "a0"), frame(1, 1, 1, "a1"), frame(1, 2, 2, "x", error="boom"), frame(1, 3, 2, "a3")]
    results += [frame(2, 0, 0, "b0"), frame(2, 1, 1, "b1")]
    mean = bench_phases.mean_history_tokens(results, count, "Q?", warmup_ms=1100)  # frames 0 are in the warm-up
    assert mean == (10 + 20 + 10) / 3
    assert seen == [[("Q?", "a0")], [("Q?", "a0"), ("Q?", "a1")], [("Q?", "b0")]]  # an error adds no turn
    assert bench_phases.mean_history_tokens([], count, "Q?") is None


def test_history_cost_is_per_token_of_the_with_history_run():
    from load_tests import bench_run

    rounds = [
        {"spotvlm_cloud_off": {"p50_ms": 44.0, "history_tokens_mean": 200.0}, "spotvlm_no_history": {"p50_ms": 40.0}},
        {"spotvlm_cloud_off": {"p50_ms": 41.0, "history_tokens_mean": 0.0}, "spotvlm_no_history": {"p50_ms": 40.0}},
        {"spotvlm_cloud_off": {"p50_ms": 41.0}},
    ]
    assert bench_run.history_cost_per_token(rounds) == [0.02, None, None]


def test_history_tokens_are_counted_with_the_served_tokenizer_and_template():
    from pathlib import Path

    from load_tests import bench_run

    shipped = Path(__file__).resolve().parents[2] / "checkpoints" / "edge-05b0807279a77465"
    count = bench_run.history_token_counter(shipped)
    assert count("Where is the red circle?", []) == 0
    one = count("Where is the red circle?", [("Where is the red circle?", "top left")])
    two = count("Where is the red circle?", [("Where is the red circle?", "top left")] * 2)
    assert one > 4 and two == 2 * one  # each turn adds its own tokens, template included
    assert bench_run.history_token_counter(Path("/nonexistent/checkpoint")) is None
