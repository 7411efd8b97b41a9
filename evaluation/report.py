"""Aggregating evaluation results and writing them out: a markdown report, CSVs and PNG plots.

Input: one `EvalRecord` per question answered (task, policy, latency setting, correct or not, the edge's latency).
Per (task, policy, latency) the report gives accuracy with a 95% Wilson interval and the edge's p50/p99 latency.
Records with policy `cloud` (policies.CLOUD_REFERENCE) are the cloud model answering each frame itself with no
delay; they are pooled per task into the reference accuracy acc(cloud at 0 delay), whatever latency they name.

The headline, at each latency L and per task (and over all questions pooled):

    gap closed(L) = (acc(context_transfer, L) - acc(edge_only, L)) / (acc(cloud at 0 delay) - acc(edge_only, L))

1 means context transfer is as accurate as the cloud answering the current frame at once, 0 no better than the edge
alone, below 0 worse; it is not clipped. It is undefined (None, with the reason) when a term has no records, or when
the denominator is <= 0: a cloud no better than the edge leaves no gap to close, and a ratio over a negative gap
would read backwards. A small positive denominator gives a noisy ratio: read it with the accuracy intervals.
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation.latency import LatencySetting
from evaluation.scoring import accuracy_with_ci
from evaluation.staleness import FRESH, NO_CONTEXT, STALE
from evaluation.policies import (
    CLOUD_REFERENCE,
    CONTEXT_TRANSFER,
    EDGE_ONLY,
    POLICIES,
    POLICY_DESCRIPTIONS,
)

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
ALL_TASKS = "all"
PREFERRED_TASK_ORDER = ("recognition", "localisation", "grounding", "counting")  # questions.TASKS

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
# How the edge's accuracy depends on its cloud context (spotvlm policies, all latencies pooled): by the context's age,
# then by whether it was still right for the current question (evaluation.staleness).
AGE_BUCKETS_S = (
    (0.0, 1.0, "age < 1 s"),
    (1.0, 3.0, "age 1-3 s"),
    (3.0, 6.0, "age 3-6 s"),
    (6.0, math.inf, "age ≥ 6 s"),
)
CONTEXT_GROUPS = ("no context",) + tuple(label for *_, label in AGE_BUCKETS_S) + ("fresh context", "stale context")
GAP_CSV_COLUMNS = ("task", "latency", "gap_closed", "edge_only", "context_transfer", "cloud_0_delay", "reason")


@dataclass(frozen=True)
class EvalRecord:
    task: str
    policy: str  # one of policies.POLICIES, or policies.CLOUD_REFERENCE
    latency: str  # a LatencySetting name: "0s", "2s", "trace"
    correct: bool
    edge_latency_ms: float | None = None  # the edge's answer time for this question; None when not measured
    context_age_ms: float | None = None  # age of the cloud context spotvlm used (None: none used, or not spotvlm)
    context_state: str | None = None  # staleness.CONTEXT_STATES for spotvlm policies, None otherwise


def _wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson 95% interval of `correct` out of `total` (scoring.accuracy_with_ci on counts, checked)."""
    if total <= 0:
        raise ValueError("the interval needs at least one trial")
    if not 0 <= correct <= total:
        raise ValueError(f"correct must be in [0, {total}], got {correct}")
    _, low, high = accuracy_with_ci([True] * correct + [False] * (total - correct), z)
    return low, high


@dataclass(frozen=True)
class Cell:
    task: str
    policy: str
    latency: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    edge_p50_ms: float | None
    edge_p99_ms: float | None


@dataclass(frozen=True)
class GapClosed:
    task: str  # a task, or ALL_TASKS for all questions pooled
    latency: str
    value: float | None
    edge_only: float | None
    context_transfer: float | None
    cloud: float | None
    reason: str | None = None  # why value is None


@dataclass
class Summary:
    tasks: list[str]
    policies: list[str]  # without the cloud reference
    latencies: list[str]  # in report order: constants by delay, then fluctuating settings
    fluctuating: frozenset[str]
    nominal_s: dict[str, float | None]
    cells: dict[tuple[str, str, str], Cell]  # (task or ALL_TASKS, policy, latency)
    reference: dict[str, Cell]  # task or ALL_TASKS -> the cloud at 0 delay
    gaps: list[GapClosed]
    edge_latency: dict[tuple[str, str], tuple[float | None, float | None]] = field(default_factory=dict)
    # (task or ALL_TASKS, policy, context group) -> accuracy, over every latency: CONTEXT_GROUPS
    context: dict[tuple[str, str, str], Cell] = field(default_factory=dict)

    def cell(self, task: str, policy: str, latency: str) -> Cell | None:
        return self.cells.get((task, policy, latency))

    def gap(self, task: str, latency: str) -> GapClosed:
        return next(g for g in self.gaps if g.task == task and g.latency == latency)

    def latency_label(self, latency: str) -> str:
        nominal = self.nominal_s.get(latency)
        if latency in self.fluctuating and nominal is not None:
            return f"{latency} (mean {nominal:.1f} s)"
        return latency


def _percentiles(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    # numpy's default linear interpolation; with under 100 samples p99 lies between the two largest.
    p50, p99 = np.percentile(np.asarray(values, dtype=float), [50, 99])
    return float(p50), float(p99)


def _cell(task: str, policy: str, latency: str, records: Sequence[EvalRecord]) -> Cell:
    correct = sum(1 for r in records if r.correct)
    low, high = _wilson_interval(correct, len(records))
    p50, p99 = _percentiles([r.edge_latency_ms for r in records if r.edge_latency_ms is not None])
    return Cell(task, policy, latency, len(records), correct, correct / len(records), low, high, p50, p99)


def _ordered(seen: Iterable[str], preferred: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(seen))
    return [p for p in preferred if p in seen] + [s for s in seen if s not in preferred]


_SECONDS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*s?\s*$")


def _latency_order(
    seen: Sequence[str], settings: Sequence[LatencySetting] | None
) -> tuple[list[str], frozenset[str], dict[str, float | None]]:
    """Report order, the fluctuating settings and each setting's nominal seconds. Without settings, names that read
    as seconds ("2s", "0.5") are constants in order of delay; any other name is a fluctuating setting, last."""
    order: list[str] = []
    fluctuating: set[str] = set()
    nominal: dict[str, float | None] = {}
    for setting in settings or ():
        order.append(setting.name)
        nominal[setting.name] = setting.nominal_s
        if setting.fluctuating:
            fluctuating.add(setting.name)
    unknown = [name for name in dict.fromkeys(seen) if name not in nominal]
    constants = sorted((n for n in unknown if _SECONDS.match(n)), key=lambda n: float(_SECONDS.match(n).group(1)))
    for name in constants:
        nominal[name] = float(_SECONDS.match(name).group(1))
    others = [n for n in unknown if not _SECONDS.match(n)]
    for name in others:
        nominal[name] = None
        fluctuating.add(name)
    order += constants + others
    # Constants first, fluctuating settings after them, each group in its order so far.
    order = [n for n in order if n not in fluctuating] + [n for n in order if n in fluctuating]
    return order, frozenset(fluctuating), nominal


def _gap(task: str, latency: str, edge: Cell | None, transfer: Cell | None, cloud: Cell | None) -> GapClosed:
    missing = [
        name
        for name, cell in ((EDGE_ONLY, edge), (CONTEXT_TRANSFER, transfer), ("cloud at 0 delay", cloud))
        if cell is None
    ]
    values = {
        "edge_only": edge.accuracy if edge else None,
        "context_transfer": transfer.accuracy if transfer else None,
        "cloud": cloud.accuracy if cloud else None,
    }
    if missing:
        return GapClosed(task, latency, None, **values, reason=f"no {' or '.join(missing)} results")
    assert edge is not None and transfer is not None and cloud is not None
    denominator = cloud.accuracy - edge.accuracy
    if denominator <= 0:
        reason = (
            f"the cloud at 0 delay ({cloud.accuracy:.1%}) is not more accurate than edge_only ({edge.accuracy:.1%}):"
            " there is no gap to close"
        )
        return GapClosed(task, latency, None, **values, reason=reason)
    return GapClosed(task, latency, (transfer.accuracy - edge.accuracy) / denominator, **values)


def summarize(records: Iterable[EvalRecord], settings: Sequence[LatencySetting] | None = None) -> Summary:
    """Accuracy, intervals, edge latency percentiles and the gap closed, from per-question records."""
    records = list(records)
    if not records:
        raise ValueError("no evaluation records to summarize")
    tasks = _ordered((r.task for r in records), PREFERRED_TASK_ORDER)
    if ALL_TASKS in tasks:
        raise ValueError(f"{ALL_TASKS!r} is reserved for all tasks pooled; it cannot name a task")
    policies = _ordered((r.policy for r in records if r.policy != CLOUD_REFERENCE), POLICIES)
    # The reference's own latency name (its zero delay) is no column unless the settings make it one.
    seen_latencies = [r.latency for r in records if r.policy != CLOUD_REFERENCE]
    latencies, fluctuating, nominal = _latency_order(seen_latencies, settings)

    groups: dict[tuple[str, str, str], list[EvalRecord]] = defaultdict(list)
    reference_groups: dict[str, list[EvalRecord]] = defaultdict(list)
    edge_times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in records:
        if record.policy == CLOUD_REFERENCE:
            reference_groups[record.task].append(record)
            reference_groups[ALL_TASKS].append(record)
            continue
        groups[(record.task, record.policy, record.latency)].append(record)
        groups[(ALL_TASKS, record.policy, record.latency)].append(record)
        if record.edge_latency_ms is not None:
            edge_times[(record.policy, record.latency)].append(record.edge_latency_ms)

    cells = {key: _cell(*key, group) for key, group in groups.items()}
    reference = {
        task: _cell(task, CLOUD_REFERENCE, "+".join(dict.fromkeys(r.latency for r in group)), group)
        for task, group in reference_groups.items()
    }
    gaps = [
        _gap(
            task,
            latency,
            cells.get((task, EDGE_ONLY, latency)),
            cells.get((task, CONTEXT_TRANSFER, latency)),
            reference.get(task),
        )
        for task in tasks + [ALL_TASKS]
        for latency in latencies
    ]
    edge_latency = {key: _percentiles(values) for key, values in edge_times.items()}
    context_groups: dict[tuple[str, str, str], list[EvalRecord]] = defaultdict(list)
    for record in records:
        for group in _context_groups(record):
            context_groups[(record.task, record.policy, group)].append(record)
            context_groups[(ALL_TASKS, record.policy, group)].append(record)
    context = {key: _cell(key[0], key[1], key[2], group) for key, group in context_groups.items()}
    return Summary(tasks, policies, latencies, fluctuating, nominal, cells, reference, gaps, edge_latency, context)


def _context_groups(record: EvalRecord) -> list[str]:
    """The CONTEXT_GROUPS a spotvlm record falls in: its age bucket (or no context) and fresh/stale where known."""
    if record.context_state is None or record.policy in (CLOUD_REFERENCE, EDGE_ONLY):
        return []
    if record.context_state == NO_CONTEXT or record.context_age_ms is None:
        return ["no context"]
    age_s = record.context_age_ms / 1000
    groups = [label for low, high, label in AGE_BUCKETS_S if low <= age_s < high]
    if record.context_state in (FRESH, STALE):
        groups.append(f"{record.context_state} context")
    return groups


# -- markdown ----------------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> list[str]:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _accuracy_text(cell: Cell | None, with_n: bool) -> str:
    if cell is None:
        return "–"
    text = f"{cell.accuracy:.1%} [{cell.ci_low:.1%}, {cell.ci_high:.1%}]"
    return f"{text} (n={cell.n})" if with_n else text


def markdown_report(
    summary: Summary,
    title: str = "SpotVLM evaluation",
    plots: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The report as markdown, leading with the gap closed. `plots` maps a caption to an image path (relative)."""
    tasks_and_all = summary.tasks + [ALL_TASKS]
    lines = [f"# {title}", "", "## Gap closed by context transfer", ""]
    lines += [
        "gap closed = (acc(context_transfer) − acc(edge_only)) / (acc(cloud at 0 delay) − acc(edge_only)), at each"
        " cloud latency. 1: context transfer is as accurate as the cloud answering the current frame at once;"
        " 0: no better than the edge alone; below 0: worse. `all` pools every question.",
        "",
    ]
    rows = []
    for latency in summary.latencies:
        row = [summary.latency_label(latency)]
        for task in tasks_and_all:
            gap = summary.gap(task, latency)
            row.append("n/a" if gap.value is None else f"{gap.value:.2f}")
        rows.append(row)
    lines += _table(["cloud latency"] + tasks_and_all, rows)
    undefined = [g for g in summary.gaps if g.value is None]
    if undefined:
        lines += ["", "n/a:"]
        reasons: dict[tuple[str, str], list[str]] = defaultdict(list)
        for gap in undefined:
            reasons[(gap.task, gap.reason or "")].append(gap.latency)
        for (task, reason), latencies in reasons.items():
            at = "every latency" if len(latencies) == len(summary.latencies) else ", ".join(latencies)
            lines.append(f"- {task} at {at}: {reason}")

    first = summary.latencies[0] if summary.latencies else None
    lines += ["", "## The cloud and the edge alone", ""]
    rows = []
    for task in tasks_and_all:
        cloud = summary.reference.get(task)
        edge = summary.cell(task, EDGE_ONLY, first) if first is not None else None
        difference = f"{(cloud.accuracy - edge.accuracy) * 100:+.1f}" if cloud is not None and edge is not None else "–"
        rows.append([task, _accuracy_text(cloud, True), _accuracy_text(edge, True), difference])
    lines += _table(["task", "cloud at 0 delay", f"edge_only (at {first})", "cloud − edge (points)"], rows)

    lines += ["", "## Accuracy (95% Wilson interval)", ""]
    lines += [f"- `{p}`: {POLICY_DESCRIPTIONS.get(p, p)}" for p in summary.policies + [CLOUD_REFERENCE]]
    for task in summary.tasks:
        task_cells = [c for (t, _, _), c in summary.cells.items() if t == task]
        counts = {c.n for c in task_cells}
        same_n = len(counts) == 1
        lines += ["", f"### {task}", ""]
        if same_n:
            lines += [f"{counts.pop()} questions per cell.", ""]
        rows = [
            [p] + [_accuracy_text(summary.cell(task, p, latency), not same_n) for latency in summary.latencies]
            for p in summary.policies
        ]
        reference = summary.reference.get(task)
        rows.append(
            [f"{CLOUD_REFERENCE} (0 delay)", _accuracy_text(reference, True)] + [""] * (len(summary.latencies) - 1)
        )
        lines += _table(["policy"] + [summary.latency_label(latency) for latency in summary.latencies], rows)

    context_policies = [p for p in summary.policies if any(k[1] == p for k in summary.context)]
    if context_policies:
        lines += ["", "## Edge accuracy against the age of its cloud context", ""]
        lines += [
            "Every latency pooled. The age is CONTEXT's `context_age_ms` (since the cloud's frame was captured). A"
            " context is fresh when the current question's true answer at the cloud's frame is still its true answer"
            " now (boxes: IoU ≥ 0.5), stale otherwise (including when the question had no certain answer then)."
            " Cells: accuracy (questions).",
        ]
        for policy in context_policies:
            lines += ["", f"### {policy}", ""]
            rows = []
            for group in CONTEXT_GROUPS:
                cells = [summary.context.get((task, policy, group)) for task in tasks_and_all]
                if any(cells):
                    rows.append([group] + ["–" if c is None else f"{c.accuracy:.3f} ({c.n})" for c in cells])
            lines += _table(["context"] + tasks_and_all, rows)

    lines += ["", "## Edge latency (ms, p50 / p99, all tasks)", ""]
    rows = []
    for policy in summary.policies:
        row = [policy]
        for latency in summary.latencies:
            p50, p99 = summary.edge_latency.get((policy, latency), (None, None))
            row.append("–" if p50 is None else f"{_ms(p50)} / {_ms(p99)}")
        rows.append(row)
    lines += _table(["policy"] + [summary.latency_label(latency) for latency in summary.latencies], rows)

    if plots:
        lines += ["", "## Plots", ""]
        for caption, path in plots.items():
            lines += [f"![{caption}]({path})", ""]
        lines.pop()
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


# -- CSV -------------------------------------------------------------------------------------------------------------


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


# -- plots -----------------------------------------------------------------------------------------------------------


def _x_positions(summary: Summary) -> dict[str, float]:
    """Constants at 0, 1, 2, ... (evenly, so 0.5 s and 9 s are both readable); fluctuating settings after a gap."""
    constants = [n for n in summary.latencies if n not in summary.fluctuating]
    positions = {name: float(i) for i, name in enumerate(constants)}
    for j, name in enumerate(n for n in summary.latencies if n in summary.fluctuating):
        positions[name] = len(constants) + 0.5 + j
    return positions


def _new_figure(width: float, height: float):
    # Figure without pyplot: no global state and no GUI backend, so it works headless and in threads.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _style_latency_axis(ax, summary: Summary, positions: Mapping[str, float]) -> None:
    ax.set_xticks([positions[n] for n in summary.latencies])
    ax.set_xticklabels([summary.latency_label(n).replace(" (", "\n(") for n in summary.latencies], fontsize="small")
    ax.set_xlabel("cloud latency")
    ax.grid(True, alpha=0.3)


def _line_with_band(ax, line: Sequence[tuple[float, Cell]], colour: str, label: str) -> None:
    xs = [x for x, _ in line]
    ax.plot(xs, [c.accuracy for _, c in line], marker="o", color=colour, label=label)
    ax.fill_between(xs, [c.ci_low for _, c in line], [c.ci_high for _, c in line], color=colour, alpha=0.15)


def _point_with_interval(ax, x: float, cell: Cell, colour: str, label: str | None) -> None:
    interval = [[cell.accuracy - cell.ci_low], [cell.ci_high - cell.accuracy]]
    ax.errorbar(x, cell.accuracy, yerr=interval, fmt="s", color=colour, capsize=3, label=label)


def _figure_legend(figure, axes) -> None:
    """One entry per label over all panels: a panel may lack a policy or a reference line."""
    legend: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        figure.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(len(legend), 6))


def plot_accuracy(summary: Summary, path: str | Path) -> Path:
    """Accuracy against cloud latency: one panel per task, one line per policy with its 95% band; the cloud at
    0 delay as a dashed line; fluctuating settings as points with error bars (they have no place on a line)."""
    path = Path(path)
    positions = _x_positions(summary)
    figure = _new_figure(4.4 * len(summary.tasks) + 0.5, 4.6)
    axes = figure.subplots(1, len(summary.tasks), sharey=True, squeeze=False)[0]
    for ax, task in zip(axes, summary.tasks):
        for index, policy in enumerate(summary.policies):
            colour = f"C{index}"
            # Off a line, policies' points and error bars would hide each other: spread them a little.
            dodge = 0.06 * (index - (len(summary.policies) - 1) / 2)
            line = [
                (positions[n], c)
                for n in summary.latencies
                if n not in summary.fluctuating and (c := summary.cell(task, policy, n)) is not None
            ]
            if line:
                _line_with_band(ax, line, colour, policy)
            for name in summary.latencies:
                cell = summary.cell(task, policy, name)
                if name in summary.fluctuating and cell is not None:
                    _point_with_interval(ax, positions[name] + dodge, cell, colour, None if line else policy)
        reference = summary.reference.get(task)
        if reference is not None:
            ax.axhline(reference.accuracy, color="black", linestyle="--", linewidth=1, label="cloud, 0 delay")
            ax.axhspan(reference.ci_low, reference.ci_high, color="black", alpha=0.06)
        _style_latency_axis(ax, summary, positions)
        ax.set_title(task)
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("accuracy (95% Wilson interval)")
    _figure_legend(figure, axes)
    figure.savefig(path, dpi=110)
    return path


def plot_context_age(summary: Summary, path: str | Path) -> Path:
    """Accuracy against the age of the cloud context (spotvlm policies, latencies pooled): one panel per task, one
    line per policy with its 95% band; fresh and stale contexts as points at the right; edge_only as a dotted line."""
    path = Path(path)
    groups = [label for *_, label in AGE_BUCKETS_S]
    extra = ["no context", "fresh context", "stale context"]
    positions = {label: index for index, label in enumerate(["no context"] + groups + extra[1:])}
    figure = _new_figure(4.4 * len(summary.tasks) + 0.5, 4.6)
    axes = figure.subplots(1, len(summary.tasks), sharey=True, squeeze=False)[0]
    policies = [p for p in summary.policies if any(k[1] == p for k in summary.context)]
    for ax, task in zip(axes, summary.tasks):
        for index, policy in enumerate(summary.policies):
            if policy not in policies:
                continue
            colour = f"C{index}"
            line = [(positions[g], c) for g in groups if (c := summary.context.get((task, policy, g))) is not None]
            if line:
                _line_with_band(ax, line, colour, policy)
            dodge = 0.08 * (index - (len(summary.policies) - 1) / 2)
            for group in extra:
                cell = summary.context.get((task, policy, group))
                if cell is not None:
                    _point_with_interval(ax, positions[group] + dodge, cell, colour, None if line else policy)
        edge = [c for (t, p, _), c in summary.cells.items() if t == task and p == EDGE_ONLY]
        if edge:
            pooled = sum(c.correct for c in edge) / sum(c.n for c in edge)
            ax.axhline(pooled, color="grey", linestyle=":", linewidth=1.2, label="edge_only")
        ax.set_xticks(list(positions.values()), list(positions), rotation=35, ha="right", fontsize=8)
        ax.set_title(task)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (95% Wilson interval)")
    _figure_legend(figure, axes)
    figure.savefig(path, dpi=110)
    return path


def plot_gap_closed(summary: Summary, path: str | Path) -> Path:
    """The gap closed against cloud latency, one line per task and one for all tasks pooled; n/a values are gaps."""
    path = Path(path)
    positions = _x_positions(summary)
    figure = _new_figure(6.5, 4.0)
    ax = figure.subplots()
    for index, task in enumerate(summary.tasks + [ALL_TASKS]):
        pooled = task == ALL_TASKS
        colour = "black" if pooled else f"C{index}"
        constants = [n for n in summary.latencies if n not in summary.fluctuating]
        values = [summary.gap(task, n).value for n in constants]
        ax.plot(
            [positions[n] for n in constants],
            [math.nan if v is None else v for v in values],
            marker="o",
            color=colour,
            linewidth=2.2 if pooled else 1.4,
            label=task,
        )
        for name in summary.latencies:
            value = summary.gap(task, name).value
            if name in summary.fluctuating and value is not None:
                ax.plot(positions[name], value, marker="s", color=colour, linestyle="none")
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
    _style_latency_axis(ax, summary, positions)
    ax.set_ylabel("gap closed by context transfer")
    ax.set_title("(ct − edge) / (cloud at 0 delay − edge)")
    ax.legend(fontsize="small", loc="best")
    figure.savefig(path, dpi=110)
    return path


# -- everything at once ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    csv: Path
    gap_csv: Path
    accuracy_png: Path
    gap_png: Path
    context_png: Path | None = None  # only when spotvlm records carry context states


def write_report(
    records: Iterable[EvalRecord],
    out_dir: str | Path,
    settings: Sequence[LatencySetting] | None = None,
    title: str = "SpotVLM evaluation",
    notes: Sequence[str] = (),
) -> ReportFiles:
    """Writes report.md, results.csv, gap_closed.csv, accuracy.png and gap_closed.png into `out_dir`."""
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
    )
