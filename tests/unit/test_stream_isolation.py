"""The pure parts of `load_tests.stream_isolation` (no server): config rewriting, statistics, warm-up, arguments."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.streaming import FrameResult
from load_tests import stream_isolation as si

SPOTVLM_CONFIG = """# The public edge model. An instance runs one batch at a time:
# instance_group [ { count: 99, kind: KIND_CPU } ] in a comment must not be touched.
backend: "python"
max_batch_size: 8
sequence_batching {
  oldest { max_candidate_sequences: 16, max_queue_delay_microseconds: 0 }
}
instance_group [ { count: 4, kind: KIND_CPU } ]
parameters { key: "default_max_tokens", value: { string_value: "24" } }
parameters { key: "note", value: { string_value: "a # inside a string" } }
"""


# -- config rewriting --------------------------------------------------------------------------------------------------


def test_set_instance_count_changes_only_the_count() -> None:
    rewritten = si.set_instance_count(SPOTVLM_CONFIG, 1)
    assert "instance_group [ { count: 1, kind: KIND_CPU } ]" in rewritten
    assert "count: 99" in rewritten  # the commented-out group stays as it was
    assert rewritten.replace("count: 1, kind", "count: 4, kind") == SPOTVLM_CONFIG
    assert si.instance_count(rewritten) == 1
    assert si.instance_count(SPOTVLM_CONFIG) == 4


def test_set_instance_count_multiline_group() -> None:
    text = 'backend: "python"\ninstance_group [\n  {\n    kind: KIND_CPU\n    count: 2\n  }\n]\n'
    assert si.set_instance_count(text, 3) == text.replace("count: 2", "count: 3")


def test_set_instance_count_needs_exactly_one_group() -> None:
    with pytest.raises(ValueError, match="no `instance_group"):
        si.set_instance_count('platform: "ensemble"\n# instance_group [ { count: 2 } ]\n', 2)
    two = "instance_group [ { count: 1, kind: KIND_CPU } ]\ninstance_group [ { count: 2, kind: KIND_GPU } ]\n"
    with pytest.raises(ValueError, match="2 instance_group"):
        si.set_instance_count(two, 3)
    with pytest.raises(ValueError, match=">= 1"):
        si.set_instance_count(SPOTVLM_CONFIG, 0)


def test_read_parameter() -> None:
    assert si.read_parameter(SPOTVLM_CONFIG, "default_max_tokens") == "24"
    assert si.read_parameter(SPOTVLM_CONFIG, "note") == "a # inside a string"
    assert si.read_parameter(SPOTVLM_CONFIG, "missing") is None


def _fake_repository(root: Path) -> Path:
    for model in ("spotvlm", "svlm_generate", "svlm"):
        (root / model / "1").mkdir(parents=True)
    (root / "spotvlm" / "config.pbtxt").write_text(SPOTVLM_CONFIG)
    (root / "spotvlm" / "config.pbtxt.template").write_text("instance_group [ { count: ${spotvlm_instances} } ]\n")
    (root / "spotvlm" / "1" / "model.py").write_text("# shim\n")
    (root / "spotvlm" / "1" / "__pycache__").mkdir()
    (root / "spotvlm" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    (root / "svlm_generate" / "config.pbtxt").write_text("instance_group [ { count: 1, kind: KIND_CPU } ]\n")
    (root / "svlm" / "config.pbtxt").write_text('platform: "ensemble"\n')
    return root


def test_prepare_repository_rewrites_the_copy_only(tmp_path: Path) -> None:
    source = _fake_repository(tmp_path / "edge")
    config = si.parse_config("2:3")
    dest = si.prepare_repository(source, tmp_path / "copy", config.counts())
    assert si.instance_count((dest / "spotvlm" / "config.pbtxt").read_text()) == 2
    assert si.instance_count((dest / "svlm_generate" / "config.pbtxt").read_text()) == 3
    assert (dest / "svlm" / "config.pbtxt").read_text() == 'platform: "ensemble"\n'
    assert (dest / "spotvlm" / "1" / "model.py").is_file()
    assert not (dest / "spotvlm" / "1" / "__pycache__").exists()
    # The source is untouched.
    assert (source / "spotvlm" / "config.pbtxt").read_text() == SPOTVLM_CONFIG
    assert si.instance_count((source / "svlm_generate" / "config.pbtxt").read_text()) == 1


def test_prepare_repository_without_rendered_config(tmp_path: Path) -> None:
    source = tmp_path / "edge"
    (source / "spotvlm").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="build_engines.sh"):
        si.prepare_repository(source, tmp_path / "copy", {"spotvlm": 1})
    assert not (tmp_path / "copy").exists()


def test_parse_config() -> None:
    assert si.parse_config("4") == si.IsolationConfig(4, None)
    assert si.parse_config("4:2") == si.IsolationConfig(4, 2)
    assert si.parse_config("4").counts() == {"spotvlm": 4}
    assert si.parse_config("4:2").counts() == {"spotvlm": 4, "svlm_generate": 2}
    assert si.parse_config("1").name == "spotvlm_instances=1"
    assert si.parse_config("4:2").name == "spotvlm_instances=4,svlm_generate_instances=2"
    for bad in ("", "0", "4:0", "a", "4:2:1", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            si.parse_config(bad)


# -- statistics and warm-up --------------------------------------------------------------------------------------------


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
        context=context,
        error=error,
        late=late,
    )


def test_percentile_and_summary() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 100.0]
    assert si.percentile(values, 50) == 30.0
    assert si.percentile(values, 99) == pytest.approx(float(np.percentile(values, 99)), abs=0.01)
    assert si.percentile([], 50) is None
    summary = si.latency_summary(values)
    assert summary == {"n": 5, "p50_ms": 30.0, "p90_ms": 76.0, "p99_ms": 97.6, "mean_ms": 40.0, "max_ms": 100.0}
    assert si.latency_summary([])["p50_ms"] is None


def test_ratio() -> None:
    assert si.ratio(60.0, 50.0) == 1.2
    assert si.ratio(None, 50.0) is None
    assert si.ratio(60.0, None) is None
    assert si.ratio(60.0, 0.0) is None


def test_after_warmup_drops_frames_sent_in_the_first_seconds() -> None:
    start = 1_000_000.0
    results = [_result(int(start + t), 50.0) for t in (0, 500, 1999, 2000, 2500, 9000)]
    kept = si.after_warmup(results, start, 2.0)
    assert [r.sent_at_ms - start for r in kept] == [2000, 2500, 9000]
    assert si.after_warmup(results, start, 0.0) == results


def test_server_latency() -> None:
    assert si.server_latency(_result(0, 60.0, server_ms=55.0)) == 55.0
    assert si.server_latency(_result(0, 60.0, server_ms=55.0), "generate") == 49.0
    assert si.server_latency(_result(0, 60.0)) is None
    odd = _result(0, 60.0)
    odd.context = {"latency_ms": {"total": "55"}}
    assert si.server_latency(odd) is None


def test_phase_summary_excludes_warmup_and_counts() -> None:
    start = 0.0
    results = [
        _result(100, 500.0, server_ms=490.0),  # warm-up: a slow first frame, left out
        _result(2100, 50.0, server_ms=45.0),
        _result(2200, 60.0, server_ms=52.0, stream_id=2, late=True),
        _result(2300, 70.0, server_ms=66.0),
        _result(2400, 0.0, error="UNAVAILABLE: gone", stream_id=2),
    ]
    summary = si.phase_summary(results, start, 2.0)
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


def test_config_summary_and_goal() -> None:
    phases = {
        "1_stream": {
            "frames": 180,
            "errors": 0,
            "late_frames": 0,
            "client": {"p50_ms": 50.0, "p99_ms": 70.0},
            "server_total": {"p50_ms": 47.0},
        },
        "4_streams": {
            "frames": 720,
            "errors": 1,
            "late_frames": 3,
            "client": {"p50_ms": 59.0, "p99_ms": 90.0},
            "server_total": {"p50_ms": 56.4},
        },
    }
    summary = si.config_summary(si.IsolationConfig(4), phases, 1.2)
    assert summary["ratio_p50"] == 1.18
    assert summary["meets_goal"] is True
    assert summary["server_ratio_p50"] == 1.2
    assert (summary["frames"], summary["errors"], summary["late_frames"]) == (900, 1, 3)
    assert summary["p99_4_streams_ms"] == 90.0
    phases["4_streams"]["client"]["p50_ms"] = 61.0
    assert si.config_summary(si.IsolationConfig(4), phases, 1.2)["meets_goal"] is False
    # A phase that measured nothing gives no ratio and does not meet the goal.
    empty = si.config_summary(si.IsolationConfig(1), {}, 1.2)
    assert empty["ratio_p50"] is None and empty["meets_goal"] is False and empty["frames"] == 0


def test_format_table() -> None:
    rows = [
        {"name": "spotvlm_instances=1", "p50_1_stream_ms": 50.0, "ratio_p50": 2.0, "meets_goal": False, "frames": 9},
        {"name": "spotvlm_instances=4", "error": "server failed to start"},
    ]
    table = si.format_table(rows).splitlines()
    assert table[0].startswith("config")
    assert "50.0" in table[1] and "2.000" in table[1] and "False" in table[1]
    assert "server failed to start" in table[2]


# -- Triton metrics ----------------------------------------------------------------------------------------------------

METRICS_BEFORE = """# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="svlm_generate",version="1"} 10
nv_inference_exec_count{model="svlm_generate",version="1"} 10
nv_inference_queue_duration_us{model="svlm_generate",version="1"} 1000
nv_inference_compute_infer_duration_us{model="svlm_generate",version="1"} 400000
nv_gpu_utilization{gpu_uuid="x"} 0.5
"""
METRICS_AFTER = """nv_inference_request_success{model="svlm_generate",version="1"} 50
nv_inference_exec_count{model="svlm_generate",version="1"} 30
nv_inference_queue_duration_us{model="svlm_generate",version="1"} 801000
nv_inference_compute_infer_duration_us{model="svlm_generate",version="1"} 2400000
nv_inference_request_success{model="spotvlm",version="1"} 40
nv_inference_exec_count{model="spotvlm",version="1"} 40
nv_inference_queue_duration_us{model="spotvlm",version="1"} 4000
nv_inference_compute_infer_duration_us{model="spotvlm",version="1"} 2000000
"""


def test_parse_metrics_and_delta() -> None:
    before, after = si.parse_metrics(METRICS_BEFORE), si.parse_metrics(METRICS_AFTER)
    assert before == {"svlm_generate": {"requests": 10, "executions": 10, "queue_us": 1000, "compute_us": 400000}}
    delta = si.metrics_delta(before, after)
    assert delta["svlm_generate"] == {
        "requests": 40,
        "mean_batch": 2.0,
        "queue_ms_per_request": 20.0,
        "compute_ms_per_request": 50.0,
    }
    assert delta["spotvlm"]["mean_batch"] == 1.0
    assert delta["spotvlm"]["queue_ms_per_request"] == 0.1
    assert "svlm_vision" not in delta
    assert si.metrics_delta({}, {}) == {}


# -- arguments ---------------------------------------------------------------------------------------------------------


def test_defaults() -> None:
    args = si.parse_args([])
    assert (args.fps, args.duration, args.warmup, args.max_tokens) == (10.0, 20.0, 2.0, None)
    assert args.configs == [si.IsolationConfig(1), si.IsolationConfig(4)]
    assert args.json is None
    assert args.plot == si.DEFAULT_PLOT
    assert args.repository == si.EDGE_REPOSITORY


def test_options() -> None:
    args = si.parse_args(
        ["--fps", "5", "--duration", "10", "--warmup", "0", "--max-tokens", "8", "--configs", "1", "4", "4:2"]
        + ["--json", "out.json", "--plot", "build/x.png"]
    )
    assert (args.fps, args.duration, args.warmup, args.max_tokens) == (5.0, 10.0, 0.0, 8)
    assert args.configs == [si.IsolationConfig(1), si.IsolationConfig(4), si.IsolationConfig(4, 2)]
    assert args.json == Path("out.json") and args.plot == Path("build/x.png")


@pytest.mark.parametrize(
    "argv",
    [
        ["--fps", "0"],
        ["--duration", "-1"],
        ["--warmup", "-1"],
        ["--warmup", "20", "--duration", "20"],
        ["--max-tokens", "0"],
        ["--configs", "0"],
        ["--configs"],
    ],
)
def test_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        si.parse_args(argv)
    assert exc.value.code == 2


def test_effective_max_tokens(tmp_path: Path) -> None:
    repository = _fake_repository(tmp_path / "edge")
    assert si.effective_max_tokens(si.parse_args(["--repository", str(repository)])) == (
        24,
        "server default (spotvlm default_max_tokens)",
    )
    assert si.effective_max_tokens(si.parse_args(["--repository", str(repository), "--max-tokens", "8"]))[0] == 8
    assert si.effective_max_tokens(si.parse_args(["--repository", str(tmp_path / "none")]))[0] is None


def test_write_plot_without_configs_or_matplotlib(tmp_path: Path) -> None:
    note = si.write_plot({"configs": [{"name": "x", "error": "boom"}], "fps": 10.0}, tmp_path / "p.png")
    assert note is not None and "no plot" in note
    assert not (tmp_path / "p.png").exists()


# -- CPU accounting ----------------------------------------------------------------------------------------------------


def test_system_busy_s() -> None:
    ticks = si._CLOCK_TICKS
    stat = f"cpu  {3 * ticks} 0 {ticks} {50 * ticks} {2 * ticks} 0 0 0 0 0\ncpu0 1 2 3 4\n"
    assert si.system_busy_s(stat) == pytest.approx(4.0)
    assert si.system_busy_s("intr 1 2 3\n") is None


def test_process_cpu_s_of_this_process_and_a_gone_one() -> None:
    import os

    assert si.process_cpu_s([os.getpid()]) > 0
    assert si.process_cpu_s([2**22 + 12345]) == 0  # no such pid


def test_cpu_usage() -> None:
    before = si.CpuSnapshot(system_busy_s=100.0, server_s=10.0, client_s=1.0)
    after = si.CpuSnapshot(system_busy_s=130.0, server_s=30.0, client_s=4.0)
    usage = si.cpu_usage(before, after, wall_s=20.0, cpus=2)
    assert usage == {
        "wall_s": 20.0,
        "server_cpu_s": 20.0,
        "client_cpu_s": 3.0,
        "other_cpu_s": 7.0,
        "busy_share_of_machine": 0.75,
    }
    unknown = si.cpu_usage(si.CpuSnapshot(None, 0.0, 0.0), si.CpuSnapshot(None, 1.0, 1.0), wall_s=2.0, cpus=None)
    assert unknown["other_cpu_s"] is None and unknown["busy_share_of_machine"] is None
