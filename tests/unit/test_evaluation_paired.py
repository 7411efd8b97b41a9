"""Paired differences and their bootstrap over videos (evaluation.paired), and how the summary and the report use
them (no server)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from evaluation.paired import Interval, PairedAnswer, bootstrap_mean_difference, paired_differences, pooled
from evaluation.policies import CLOUD_STALE, CONTEXT_TRANSFER, EDGE_ONLY
from evaluation.report import DIFFERENCE_CSV_COLUMNS, write_report
from evaluation.summary import ALL_TASKS, EvalRecord, summarize

# -- the bootstrap -----------------------------------------------------------------------------------------------------


def test_the_estimate_pools_every_question_not_every_video() -> None:
    # Video a: 3 questions, all +1; video b: 1 question, -1. Pooled: (3 - 1) / 4, not the videos' mean 0.
    interval = bootstrap_mean_difference({"a": [1, 1, 1], "b": [-1]}, resamples=500)
    assert interval.estimate == pytest.approx(0.5)
    assert (interval.questions, interval.videos, interval.reason) == (4, 2, None)
    assert interval.low is not None and interval.high is not None
    assert -1 <= interval.low <= interval.estimate <= interval.high <= 1


def test_the_interval_covers_the_true_difference_in_most_simulated_studies() -> None:
    """Known data: videos whose questions are correlated (a per-video ability shared by both policies), the policy
    right 0.15 more often than the baseline. The 95% interval should cover 0.15 in about 95% of studies."""
    rng = np.random.default_rng(7)
    true_difference, studies, covered = 0.15, 200, 0
    for _ in range(studies):
        by_video = {}
        for video in range(20):
            ability = rng.uniform(0.2, 0.7)  # questions of one video share it: not independent
            questions = rng.integers(5, 30)
            base = rng.random(questions) < ability
            better = rng.random(questions) < ability + true_difference
            by_video[str(video)] = better.astype(float) - base.astype(float)
        interval = bootstrap_mean_difference(by_video, resamples=1000, seed=int(rng.integers(1 << 30)))
        covered += interval.low <= true_difference <= interval.high
    assert 0.88 <= covered / studies <= 1.0, covered


def test_more_videos_narrow_the_interval() -> None:
    rng = np.random.default_rng(3)
    few = {str(v): rng.choice([-1.0, 0.0, 1.0], 10) for v in range(4)}
    many = {str(v): rng.choice([-1.0, 0.0, 1.0], 10) for v in range(64)}
    a, b = bootstrap_mean_difference(few), bootstrap_mean_difference(many)
    assert (b.high - b.low) < (a.high - a.low)


def test_the_same_seed_gives_the_same_interval() -> None:
    data = {"a": [1, 0, 0], "b": [0, -1], "c": [1, 1]}
    assert bootstrap_mean_difference(data, seed=5) == bootstrap_mean_difference(data, seed=5)


def test_degenerate_cases() -> None:
    assert bootstrap_mean_difference({}) == Interval(None, None, None, 0, 0, "no paired questions")
    assert bootstrap_mean_difference({"a": []}).reason == "no paired questions"
    one = bootstrap_mean_difference({"a": [1, 0, 1, 1]})
    assert one.estimate == pytest.approx(0.75) and one.low is None and one.high is None
    assert one.videos == 1 and "one video" in one.reason
    # Every difference the same: resampling cannot move the mean, the interval is that point.
    same = bootstrap_mean_difference({"a": [0.0, 0.0], "b": [0.0], "c": [0.0, 0.0, 0.0]})
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    all_right = bootstrap_mean_difference({"a": [1.0], "b": [1.0, 1.0]})
    assert (all_right.estimate, all_right.low, all_right.high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_mean_difference({"a": [1]}, resamples=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean_difference({"a": [1]}, level=1.0)


# -- pairing -----------------------------------------------------------------------------------------------------------


def answer(video: str, example_id: str, correct: bool, latency: str = "0s", task: str = "recognition"):
    return PairedAnswer(video, example_id, task, latency, correct)


def test_questions_pair_by_id_and_latency_only() -> None:
    policy = [
        answer("a", "q1", True),
        answer("a", "q2", False),
        answer("a", "q1", True, latency="2s"),
        answer("b", "q3", True, task="counting"),
        answer("b", "q4", True),  # the baseline never answered q4: left out
    ]
    baseline = [
        answer("a", "q1", False),
        answer("a", "q2", True),
        answer("a", "q1", True, latency="2s"),
        answer("b", "q3", False, task="counting"),
    ]
    pairs = paired_differences(policy, baseline)
    assert pairs == {
        ("recognition", "0s"): {"a": [1.0, -1.0]},
        ("recognition", "2s"): {"a": [0.0]},
        ("counting", "0s"): {"b": [1.0]},
    }
    assert pooled(pairs, "0s") == {"a": [1.0, -1.0], "b": [1.0]}
    assert pooled(pairs, "9s") == {}


def test_one_question_in_two_videos_is_refused() -> None:
    with pytest.raises(ValueError, match="q1"):
        paired_differences([answer("a", "q1", True)], [answer("b", "q1", True)])


# -- in the summary and the report ------------------------------------------------------------------------------------


def _records(policy: str, right: dict[str, list[bool]], latency: str = "0s", task: str = "recognition"):
    return [
        EvalRecord(task, policy, latency, flag, 30.0, video=video, example_id=f"{task}-{video}-{i}")
        for video, flags in right.items()
        for i, flag in enumerate(flags)
    ]


def paired_records() -> list[EvalRecord]:
    videos = ("v1", "v2", "v3")
    records = _records(CONTEXT_TRANSFER, {v: [True, True, False, True] for v in videos})
    records += _records(CLOUD_STALE, {v: [True, False, False, True] for v in videos})
    records += _records(EDGE_ONLY, {v: [False, False, False, True] for v in videos})
    records += _records(CONTEXT_TRANSFER, {"v1": [True]}, task="grounding")
    records += _records(EDGE_ONLY, {"v1": [False]}, task="grounding")
    return records


def test_the_summary_pairs_context_transfer_with_each_baseline_present() -> None:
    summary = summarize(paired_records())
    found = {(d.baseline, d.task, d.latency): d.interval for d in summary.differences}
    assert set(found) == {(b, t, "0s") for b in (CLOUD_STALE, EDGE_ONLY) for t in ("recognition", "grounding", "all")}
    assert found[(CLOUD_STALE, ALL_TASKS, "0s")].estimate == pytest.approx(3 / 12)  # grounding unpaired there
    assert found[(EDGE_ONLY, ALL_TASKS, "0s")].estimate == pytest.approx(7 / 13)
    assert found[(CLOUD_STALE, "grounding", "0s")].reason == "no paired questions"
    same = found[(CLOUD_STALE, "recognition", "0s")]  # every video the same: a point interval
    assert (same.low, same.high, same.videos) == (pytest.approx(0.25), pytest.approx(0.25), 3)
    # Records that name no question are not paired: no comparisons at all.
    assert summarize([EvalRecord("recognition", CONTEXT_TRANSFER, "0s", True)]).differences == []


def test_the_report_leads_with_the_differences_in_markdown_json_and_csv(tmp_path) -> None:
    files = write_report(paired_records(), tmp_path, title="Paired")
    lines = files.markdown.read_text().splitlines()
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[:2] == [
        "## Context transfer against the baselines (paired, 95% bootstrap interval over videos)",
        "## Gap closed by context transfer",
    ]
    table = [line for line in lines[: lines.index(headings[1])] if line.startswith("|")]
    assert table[0] == "| cloud latency | context_transfer − cloud_stale | context_transfer − edge_only |"
    assert table[2].startswith("| 0s | +25.0 [+25.0, +25.0] | +53.8 [+")
    assert "### context_transfer − edge_only, per task" in lines
    assert "| cloud latency | recognition | grounding (boxes) |" in lines
    assert "- no paired questions" in lines and "- one video: the interval resamples videos, it needs two" in lines
    document = json.loads(files.json.read_text())
    assert list(document)[:2] == ["title", "differences"] and document["title"] == "Paired"
    with files.difference_csv.open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == DIFFERENCE_CSV_COLUMNS
        rows = list(reader)
    assert [(r["baseline"], r["task"]) for r in rows] == [
        (b, t) for b in (CLOUD_STALE, EDGE_ONLY) for t in ("recognition", "grounding", "all")
    ]
    assert rows[0]["difference"] == "0.2500" and rows[1]["difference"] == "" and rows[1]["reason"]
    assert [d["difference"] for d in document["differences"]][0] == pytest.approx(0.25)
