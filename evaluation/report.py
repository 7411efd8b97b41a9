"""Aggregating evaluation results and writing them out: a markdown report, CSVs and PNG plots.

Input: one `EvalRecord` per question answered (task, policy, latency setting, correct or not, the edge's latency).
Per (task, policy, latency) the report gives accuracy with a 95% Wilson interval and the edge's p50/p99 latency.
Records with policy `cloud` (policies.CLOUD_REFERENCE) are the cloud model answering each frame itself with no
delay; they are pooled per task into the reference accuracy acc(cloud at 0 delay), whatever latency they name.

The report leads with the paired differences: acc(context_transfer) − acc(baseline) for cloud_stale, edge_only and
context transfer without tracking, per latency (all tasks, then per task), with a 95% interval by bootstrap over
videos (evaluation.paired). Then, at each latency L and per task (and over all questions pooled):

    gap closed(L) = (acc(context_transfer, L) - acc(edge_only, L)) / (acc(cloud at 0 delay) - acc(edge_only, L))

1 means context transfer is as accurate as the cloud answering the current frame at once, 0 no better than the edge
alone, below 0 worse; it is not clipped. It is undefined (None, with the reason) when a term has no records, or when
the denominator is <= 0: a cloud no better than the edge leaves no gap to close, and a ratio over a negative gap
would read backwards. A small positive denominator gives a noisy ratio: read it with the accuracy intervals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from evaluation.latency import LatencySetting
from evaluation.report_csv import (
    CSV_COLUMNS,
    DIFFERENCE_CSV_COLUMNS,
    GAP_CSV_COLUMNS,
    write_csv,
    write_difference_csv,
    write_gap_csv,
)
from evaluation.report_json import write_json
from evaluation.report_markdown import markdown_report
from evaluation.report_plots import plot_accuracy, plot_context_age, plot_gap_closed
from evaluation.summary import (
    AGE_BUCKETS_S,
    ALL_TASKS,
    CONTEXT_GROUPS,
    DIFFERENCE_PAIRS,
    Cell,
    Difference,
    EvalRecord,
    GapClosed,
    Summary,
    summarize,
)

# The names callers import from here; each lives in the module of its part (summary, markdown, CSV, plots).
__all__ = [
    "AGE_BUCKETS_S",
    "ALL_TASKS",
    "CONTEXT_GROUPS",
    "CSV_COLUMNS",
    "DIFFERENCE_CSV_COLUMNS",
    "DIFFERENCE_PAIRS",
    "Difference",
    "GAP_CSV_COLUMNS",
    "Cell",
    "EvalRecord",
    "GapClosed",
    "ReportFiles",
    "Summary",
    "markdown_report",
    "plot_accuracy",
    "plot_context_age",
    "plot_gap_closed",
    "summarize",
    "write_csv",
    "write_gap_csv",
    "write_report",
]


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    csv: Path
    gap_csv: Path
    accuracy_png: Path
    gap_png: Path
    context_png: Path | None = None  # only when spotvlm records carry context states
    difference_csv: Path | None = None
    json: Path | None = None


def write_report(
    records: Iterable[EvalRecord],
    out_dir: str | Path,
    settings: Sequence[LatencySetting] | None = None,
    title: str = "SpotVLM evaluation",
    notes: Sequence[str] = (),
) -> ReportFiles:
    """Writes report.md, results.json, differences.csv, results.csv, gap_closed.csv, accuracy.png and gap_closed.png
    (and context_age.png when the records carry context states) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records, settings)
    accuracy_png = plot_accuracy(summary, out / "accuracy.png")
    gap_png = plot_gap_closed(summary, out / "gap_closed.png")
    plots = {"accuracy against cloud latency": accuracy_png.name, "gap closed against cloud latency": gap_png.name}
    context_png = None
    if summary.context:
        context_png = plot_context_age(summary, out / "context_age.png")
        plots["accuracy against the age of the cloud context"] = context_png.name
    markdown = out / "report.md"
    markdown.write_text(markdown_report(summary, title, plots, notes))
    return ReportFiles(
        markdown,
        write_csv(summary, out / "results.csv"),
        write_gap_csv(summary, out / "gap_closed.csv"),
        accuracy_png,
        gap_png,
        context_png,
        write_difference_csv(summary, out / "differences.csv"),
        write_json(summary, out / "results.json", title, notes),
    )
