"""The evaluation plots (matplotlib, no pyplot): accuracy and the gap closed against cloud latency, accuracy against
the age of the cloud context."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation.policies import EDGE_ONLY
from evaluation.summary import AGE_BUCKETS_S, ALL_TASKS, Cell, Summary


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
