"""`spotvlm bench --capacity` as a user runs it: it starts its own cloud and edge servers, runs the five phases and the
capacity runs in two rounds, searches the capacity (up to 2 streams), reads the edge's memory, measures the context
store and writes the JSON report and the plot. Runs are shortened to keep CI time low; nothing here asserts a
timing, only that every number is there and consistent."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests.bench_phases import PHASE_NAMES
from client.model_repository import unrendered_templates

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SPOTVLM = str(Path(sys.executable).with_name("spotvlm"))
SECONDS, WARMUP, ROUNDS = 3, 1, 2


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    missing = unrendered_templates(PROJECT_ROOT / "model_repository")
    if missing:
        pytest.fail(f"model repositories not built ({missing[0]}); run ./build_engines.sh (make test does)")
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["bench", "--quick", "--seconds", str(SECONDS), "--warmup", str(WARMUP), "--rounds", str(ROUNDS)]
    argv += ["--store-streams", "500", "--capacity", "--capacity-limit", "2", "--capacity-seconds", "3"]
    result = subprocess.run([SPOTVLM, *argv, "--json", str(out)], capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result, json.loads(out.read_text()), out


def test_every_headline_key_is_a_positive_number(bench_run):
    _, report, _ = bench_run
    keys = [f"{phase}_{q}_ms" for phase in PHASE_NAMES for q in ("p50", "p99")]
    keys += ["overhead_ratio_p50", "overhead_ratio_no_history_p50", "hiding_ratio_p99"]
    keys += ["context_age_p50_ms", "cloud_rtt_p50_ms"]
    keys += ["store_bytes_per_stream", "store_memory_bytes_estimate_per_stream"]
    for key in keys:
        assert isinstance(report[key], (int, float)) and report[key] > 0, (key, report[key])
    assert report["frames"] > 0 and report["errors"] == 0
    assert report["complete"] is True


RATIOS = {  # ratio: (numerator phase, denominator phase, statistic)
    "overhead_ratio_p50": ("spotvlm_cloud_off", "svlm", "p50_ms"),
    "overhead_ratio_no_history_p50": ("spotvlm_no_history", "svlm", "p50_ms"),
    "hiding_ratio_p99": ("spotvlm_delay2000", "spotvlm_delay0", "p99_ms"),
    "isolation_ratio_p50": ("spotvlm_four_streams", "spotvlm_one_stream", "p50_ms"),
    "diy_ratio_p50": ("svlm_one_stream", "diy_one_stream", "p50_ms"),
}


def test_each_ratio_is_the_median_of_its_rounds_quotients(bench_run):
    _, report, _ = bench_run
    for name, (numerator, denominator, stat) in RATIOS.items():
        parts = report["phases"][numerator]["rounds"], report["phases"][denominator]["rounds"]
        assert len(parts[0]) == len(parts[1]) == ROUNDS, name
        per_round = [round(a[stat] / b[stat], 3) for a, b in zip(*parts)]
        assert report["ratios"][name]["rounds"] == pytest.approx(per_round, abs=1e-3), name
        assert report[name] == pytest.approx(statistics.median(per_round), abs=2e-3), name
        assert report[f"{name}_range"] == pytest.approx([min(per_round), max(per_round)], abs=1e-3), name
    throughput = report["ratios"]["diy_throughput_ratio"]
    assert len(throughput["rounds"]) == ROUNDS and throughput["median"] > 0
    assert (
        report["diy_throughput_ratio_range"][0]
        <= report["diy_throughput_ratio"]
        <= report["diy_throughput_ratio_range"][1]
    )
    assert isinstance(report["context_lag_p50_ms"], (int, float))


def test_capacity_and_memory(bench_run):
    _, report, _ = bench_run
    capacity = report["capacity"]
    assert report["capacity_streams"] == capacity["capacity_streams"] and 0 <= report["capacity_streams"] <= 2
    assert capacity["trials"] and capacity["trials"][0]["streams"] == 1
    passed = [t["streams"] for t in capacity["trials"] if t["passed"]]
    assert report["capacity_streams"] == max(passed, default=0)
    for trial in capacity["trials"]:  # a pass is exactly what the goal says
        ok = trial["p99_ms"] <= 200 and trial["late_frames"] == 0 and trial["errors_total"] == 0
        assert trial["passed"] is ok, trial
    rss = report["edge_rss_bytes"]
    assert set(rss) == {"idle", "16_streams", "64_streams"} and all(v > 10 * 2**20 for v in rss.values())
    assert report["diy"]["load_s"] > 0 and len(report["diy"]["back_to_back"]) == ROUNDS
    machine = report["machine"]
    assert machine["cpu_model"] and machine["physical_cores"] >= 1 and machine["torch_cpu_capability"]
    for trial in capacity["trials"]:  # where the edge's CPU went, by model, from the real server's processes
        cpu = trial["cpu_ms_per_frame"]
        assert cpu["total"] > 0 and {"svlm_generate", "spotvlm", "tritonserver"} <= set(cpu), cpu
        assert 0 < trial["busy_share_of_machine"] and trial["client_cpu_ms_per_frame"] > 0
    assert capacity["bound"]["streams"] in {t["streams"] for t in capacity["trials"]}
    assert report["edge_build"]["checkpoint"] and report["edge_build"]["spotvlm_instances"]


def test_the_history_cost_is_per_history_token(bench_run):
    _, report, _ = bench_run
    # The test build keeps 4 turns of the stream's own answers, so the with-history phase sends history.
    assert report["history_tokens_per_frame"] > 0
    per_round = report["ratios"]["history_ms_per_token_p50"]["rounds"]
    assert len(per_round) == ROUNDS and all(isinstance(v, float) for v in per_round)


def test_phases_config_goals_and_context(bench_run):
    _, report, _ = bench_run
    phases = report["phases"]
    assert set(PHASE_NAMES) <= set(phases)
    for name, phase in phases.items():
        assert phase["n"] > 0 and phase["mean_ms"] > 0 and phase["p99_ms"] >= phase["p50_ms"] > 0, name
        assert phase["errors_total"] == 0, (name, phase["first_errors"])
    assert report["frames"] == sum(phases[name]["frames"] for name in PHASE_NAMES)
    # Only the linked phases get cloud context; the delayed cloud's answers come after the injected 1-3 s.
    share = report["context_share"]
    assert share["svlm"] == 0 and share["spotvlm_cloud_off"] == 0
    assert share["spotvlm_delay0"] > 0 and share["spotvlm_delay2000"] > 0
    assert phases["spotvlm_cloud_off"]["cloud_states"] == {"off": phases["spotvlm_cloud_off"]["n"]}
    assert phases["spotvlm_cloud_off"]["frames"] == sum(r["frames"] for r in phases["spotvlm_cloud_off"]["rounds"])
    assert report["cloud_rtt_p50_ms"] >= 1000  # the injected delay is at least 1000 ms
    assert phases["spotvlm_delay2000"]["cloud_rtt"]["n"] <= phases["spotvlm_delay2000"]["context_age"]["n"]
    for goal in ("overhead_ratio_p50", "hiding_ratio_p99", "context_age_p50"):
        assert isinstance(report["goals"][goal]["met"], bool)
    config = report["config"]
    assert config["quick"] is True and config["seconds"] == SECONDS and config["warmup"] == WARMUP
    assert config["rounds"] == ROUNDS and config["capacity"] is True
    assert config["streams"] == 2 and config["fps"] == 5 and config["max_tokens"] == 24
    assert report["store"]["streams"] == 500
    assert report["machine"]["cpu_count"] >= 1


def test_table_and_plot(bench_run):
    result, report, out = bench_run
    assert "overhead_ratio_p50" in result.stdout and "spotvlm_delay2000" in result.stdout
    assert f"round {ROUNDS} spotvlm_delay2000" in result.stderr  # progress names the runs
    assert "capacity: 1 streams" in result.stderr
    assert report["plot"] == str(out.with_suffix(".png"))
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
