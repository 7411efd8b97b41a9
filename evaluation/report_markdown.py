"""The evaluation report as markdown, leading with context transfer's paired differences against the baselines,
then the gap closed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from evaluation.policies import CLOUD_REFERENCE, EDGE_ONLY, POLICY_DESCRIPTIONS
from evaluation.questions import ANSWER_TYPES
from evaluation.summary import ALL_TASKS, CONTEXT_GROUPS, DIFFERENCE_PAIRS, Cell, Difference, Summary


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


def _task_label(task: str) -> str:
    """A task family's name, the box-answer family said so."""
    return f"{task} (boxes)" if ANSWER_TYPES.get(task) == "box" else task


def _difference_text(difference: Difference | None) -> str:
    if difference is None or difference.interval.estimate is None:
        return "–"
    interval = difference.interval
    text = f"{interval.estimate * 100:+.1f}"
    if interval.low is not None and interval.high is not None:
        text += f" [{interval.low * 100:+.1f}, {interval.high * 100:+.1f}]"
    return text


def _differences_section(summary: Summary) -> list[str]:
    found = {(d.policy, d.baseline, d.task, d.latency): d for d in summary.differences}
    pairs = [(p, b) for p, b in DIFFERENCE_PAIRS if any(k[:2] == (p, b) for k in found)]
    if not pairs:
        return []
    lines = ["## Context transfer against the baselines (paired, 95% bootstrap interval over videos)", ""]
    some = next(d.interval for d in summary.differences if d.task == ALL_TASKS)
    lines += [
        "acc(policy) − acc(baseline) in points, on the same questions (each question answered by both at that"
        " latency); [interval]: 2.5th and 97.5th percentiles of the difference over resampled videos (questions of"
        f" one video are not independent). All tasks: {some.questions} question(s) on {some.videos} video(s) at the"
        " first latency.",
        "",
    ]
    header = ["cloud latency"] + [f"{p} − {b}" for p, b in pairs]
    rows = [
        [summary.latency_label(latency)] + [_difference_text(found.get((p, b, ALL_TASKS, latency))) for p, b in pairs]
        for latency in summary.latencies
    ]
    lines += _table(header, rows)
    for policy, baseline in pairs:
        lines += ["", f"### {policy} − {baseline}, per task", ""]
        rows = [
            [summary.latency_label(latency)]
            + [_difference_text(found.get((policy, baseline, task, latency))) for task in summary.tasks]
            for latency in summary.latencies
        ]
        lines += _table(["cloud latency"] + [_task_label(t) for t in summary.tasks], rows)
    reasons = sorted({d.interval.reason for d in summary.differences if d.interval.reason})
    if reasons:
        lines += ["", "No interval or no difference where:"] + [f"- {reason}" for reason in reasons]
    return lines + [""]


def markdown_report(
    summary: Summary,
    title: str = "SpotVLM evaluation",
    plots: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The report as markdown, leading with the gap closed. `plots` maps a caption to an image path (relative)."""
    tasks_and_all = summary.tasks + [ALL_TASKS]
    lines = [f"# {title}", ""] + _differences_section(summary) + ["## Gap closed by context transfer", ""]
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
        lines += ["", f"### {_task_label(task)}", ""]
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
