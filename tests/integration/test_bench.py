"""`spotvlm bench` as a user runs it: it starts its own cloud and edge servers, runs the four phases, measures the
context store and writes the JSON report and the plot. Phases are shortened to keep CI time low; nothing here
asserts a timing, only that every number is there and consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests.bench import PHASE_NAMES
from client.model_repository import unrendered_templates

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SPOTVLM = str(Path(sys.executable).with_name("spotvlm"))
SECONDS, WARMUP = 8, 1


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    missing = unrendered_templates(PROJECT_ROOT / "model_repository")
    if missing:
        pytest.fail(f"model repositories not built ({missing[0]}); run ./build_engines.sh (make test does)")
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["bench", "--quick", "--seconds", str(SECONDS), "--warmup", str(WARMUP), "--store-streams", "500"]
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


def test_ratios_are_the_quotients_of_their_parts(bench_run):
    _, report, _ = bench_run
    assert report["overhead_ratio_p50"] == pytest.approx(
        report["spotvlm_cloud_off_p50_ms"] / report["svlm_p50_ms"], abs=1e-3
    )
    assert report["overhead_ratio_no_history_p50"] == pytest.approx(
        report["spotvlm_no_history_p50_ms"] / report["svlm_p50_ms"], abs=1e-3
    )
    assert isinstance(report["context_lag_p50_ms"], (int, float))
    assert report["hiding_ratio_p99"] == pytest.approx(
        report["spotvlm_delay2000_p99_ms"] / report["spotvlm_delay0_p99_ms"], abs=1e-3
    )


def test_phases_config_goals_and_context(bench_run):
    _, report, _ = bench_run
    phases = report["phases"]
    assert set(phases) == set(PHASE_NAMES)
    for name, phase in phases.items():
        assert phase["n"] > 0 and phase["mean_ms"] > 0 and phase["p99_ms"] >= phase["p50_ms"] > 0, name
        assert phase["errors_total"] == 0, (name, phase["first_errors"])
    assert report["frames"] == sum(p["frames"] for p in phases.values())
    # Only the linked phases get cloud context; the delayed cloud's answers come after the injected 1-3 s.
    share = report["context_share"]
    assert share["svlm"] == 0 and share["spotvlm_cloud_off"] == 0
    assert share["spotvlm_delay0"] > 0 and share["spotvlm_delay2000"] > 0
    assert phases["spotvlm_cloud_off"]["cloud_states"] == {"off": phases["spotvlm_cloud_off"]["n"]}
    assert report["cloud_rtt_p50_ms"] >= 1000  # the injected delay is at least 1000 ms
    assert phases["spotvlm_delay2000"]["cloud_rtt"]["n"] <= phases["spotvlm_delay2000"]["context_age"]["n"]
    for goal in ("overhead_ratio_p50", "hiding_ratio_p99", "context_age_p50"):
        assert isinstance(report["goals"][goal]["met"], bool)
    config = report["config"]
    assert config["quick"] is True and config["seconds"] == SECONDS and config["warmup"] == WARMUP
    assert config["streams"] == 2 and config["fps"] == 5 and config["max_tokens"] == 24
    assert report["store"]["streams"] == 500
    assert report["machine"]["cpu_count"] >= 1


def test_table_and_plot(bench_run):
    result, report, out = bench_run
    assert "overhead_ratio_p50" in result.stdout and "spotvlm_delay2000" in result.stdout
    assert f"[{len(PHASE_NAMES)}/{len(PHASE_NAMES)}] spotvlm_delay2000" in result.stderr  # progress names the phases
    assert report["plot"] == str(out.with_suffix(".png"))
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
