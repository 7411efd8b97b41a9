"""The evaluation results as CSV: one row per (task, policy, latency), the gap closed per (task, latency), and the
paired differences per (comparison, task, latency)."""

from __future__ import annotations

import csv
from pathlib import Path

from evaluation.summary import Summary

CSV_COLUMNS = (
    "task",
    "policy",
    "latency",
    "n",
    "correct",
    "accuracy",
    "ci_low",
    "ci_high",
    "edge_p50_ms",
    "edge_p99_ms",
)
GAP_CSV_COLUMNS = ("task", "latency", "gap_closed", "edge_only", "context_transfer", "cloud_0_delay", "reason")
DIFFERENCE_CSV_COLUMNS = (
    "policy",
    "baseline",
    "task",
    "latency",
    "difference",
    "ci_low",
    "ci_high",
    "questions",
    "videos",
    "reason",
)


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def write_csv(summary: Summary, path: str | Path) -> Path:
    """One row per (task, policy, latency), then the cloud reference rows (policy `cloud`); empty cell = none."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        ordered = [
            summary.cell(task, policy, latency)
            for task in summary.tasks
            for policy in summary.policies
            for latency in summary.latencies
        ]
        ordered += [summary.reference[task] for task in summary.tasks if task in summary.reference]
        for cell in ordered:
            if cell is None:
                continue
            writer.writerow(
                [
                    cell.task,
                    cell.policy,
                    cell.latency,
                    cell.n,
                    cell.correct,
                    _number(cell.accuracy),
                    _number(cell.ci_low),
                    _number(cell.ci_high),
                    _number(cell.edge_p50_ms, 1),
                    _number(cell.edge_p99_ms, 1),
                ]
            )
    return path


def write_gap_csv(summary: Summary, path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(GAP_CSV_COLUMNS)
        for gap in summary.gaps:
            writer.writerow(
                [
                    gap.task,
                    gap.latency,
                    _number(gap.value),
                    _number(gap.edge_only),
                    _number(gap.context_transfer),
                    _number(gap.cloud),
                    gap.reason or "",
                ]
            )
    return path


def write_difference_csv(summary: Summary, path: str | Path) -> Path:
    """One row per paired comparison, task (or `all`) and latency: acc(policy) − acc(baseline) and its interval."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(DIFFERENCE_CSV_COLUMNS)
        for difference in summary.differences:
            interval = difference.interval
            writer.writerow(
                [
                    difference.policy,
                    difference.baseline,
                    difference.task,
                    difference.latency,
                    _number(interval.estimate),
                    _number(interval.low),
                    _number(interval.high),
                    interval.questions,
                    interval.videos,
                    interval.reason or "",
                ]
            )
    return path
