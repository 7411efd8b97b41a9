"""The stream isolation results as a text table and a bar chart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from load_tests.isolation import GOAL_RATIO_P50

_TABLE = (
    ("config", "name", "{}"),
    ("p50 1 ms", "p50_1_stream_ms", "{:.1f}"),
    ("p99 1 ms", "p99_1_stream_ms", "{:.1f}"),
    ("p50 4 ms", "p50_4_streams_ms", "{:.1f}"),
    ("p99 4 ms", "p99_4_streams_ms", "{:.1f}"),
    ("ratio p50", "ratio_p50", "{:.3f}"),
    ("server ratio", "server_ratio_p50", "{:.3f}"),
    ("goal", "meets_goal", "{}"),
    ("frames", "frames", "{}"),
    ("errors", "errors", "{}"),
    ("late", "late_frames", "{}"),
)


def format_table(configs: Sequence[dict[str, Any]]) -> str:
    """The headline numbers of each config as an aligned text table."""
    rows = [[title for title, _, _ in _TABLE]]
    for entry in configs:
        row = []
        for _, key, fmt in _TABLE:
            value = entry.get(key) if key != "name" else entry.get("name", "?")
            row.append("-" if value is None else fmt.format(value))
        if "error" in entry:
            row[1:] = [entry["error"]] + [""] * (len(row) - 2)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    )


def write_plot(report: dict[str, Any], path: Path) -> str | None:
    """A bar chart of client p50/p99 for 1 and 4 streams per config; None when written, else why it was not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed; no plot written"
    configs = [c for c in report["configs"] if "error" not in c]
    if not configs:
        return "no configuration was measured; no plot written"
    x = np.arange(len(configs))
    fig, ax = plt.subplots(figsize=(max(6, 2.5 * len(configs)), 4.5))
    bars = (
        ("p50_1_stream_ms", "p50, 1 stream"),
        ("p50_4_streams_ms", "p50, 4 streams"),
        ("p99_1_stream_ms", "p99, 1 stream"),
        ("p99_4_streams_ms", "p99, 4 streams"),
    )
    width = 0.2
    for i, (key, label) in enumerate(bars):
        ax.bar(x + (i - 1.5) * width, [c.get(key) or 0 for c in configs], width, label=label)
    for xi, config in zip(x, configs):
        if config.get("p50_1_stream_ms"):
            ax.hlines(GOAL_RATIO_P50 * config["p50_1_stream_ms"], xi - 2 * width, xi, colors="black", linestyles=":")
    ax.set_xticks(x, [c["name"].replace(",", "\n") for c in configs])
    ax.set_ylabel("client latency (ms)")
    ax.set_title(
        f"Edge latency, 1 vs 4 streams at {report['fps']:g} fps\n(dotted: the goal, {GOAL_RATIO_P50}x p50 of 1 stream)",
        fontsize=10,
    )
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
