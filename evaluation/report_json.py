"""The evaluation results as one JSON document, the paired differences first (report.write_report writes it)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.summary import Cell, Summary


def _cell(cell: Cell) -> dict[str, Any]:
    return dataclasses.asdict(cell)


def summary_json(summary: Summary, title: str = "", notes: Sequence[str] = ()) -> dict[str, Any]:
    """differences, accuracy (per task, policy and latency; tasks are the families, grounding the box questions),
    the cloud reference, the gap closed and the notes."""
    return {
        "title": title,
        "differences": [
            {
                "policy": d.policy,
                "baseline": d.baseline,
                "task": d.task,
                "latency": d.latency,
                "difference": d.interval.estimate,
                "ci_low": d.interval.low,
                "ci_high": d.interval.high,
                "questions": d.interval.questions,
                "videos": d.interval.videos,
                "reason": d.interval.reason,
            }
            for d in summary.differences
        ],
        "latencies": [
            {"name": name, "nominal_s": summary.nominal_s.get(name), "fluctuating": name in summary.fluctuating}
            for name in summary.latencies
        ],
        "accuracy": [_cell(cell) for cell in summary.cells.values()],
        "cloud_reference": {task: _cell(cell) for task, cell in summary.reference.items()},
        "gap_closed": [dataclasses.asdict(gap) for gap in summary.gaps],
        "notes": list(notes),
    }


def write_json(summary: Summary, path: str | Path, title: str = "", notes: Sequence[str] = ()) -> Path:
    path = Path(path)
    path.write_text(json.dumps(summary_json(summary, title, notes), indent=1, ensure_ascii=False) + "\n")
    return path
