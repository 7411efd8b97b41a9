"""`spotvlm bench`'s report as a short text table and a plot of the per-phase latency distributions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from client.stats import percentile
from load_tests.bench_phases import DELAY2000_SPEC, PHASE_NAMES


def _fmt(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def format_table(report: Mapping[str, Any]) -> str:
    """A short human summary: one line per phase, then the goals and the store."""
    header = ("phase", "frames", "errors", "p50 ms", "p99 ms", "mean ms", "context")
    rows = [header]
    for name in PHASE_NAMES:
        s = (report.get("phases") or {}).get(name)
        if s is None:
            rows.append((name, "-", "-", "-", "-", "-", "-"))
            continue
        rows.append(
            (
                name,
                str(s.get("frames")),
                str(s.get("errors_total")),
                _fmt(s.get("p50_ms"), "{:.1f}"),
                _fmt(s.get("p99_ms"), "{:.1f}"),
                _fmt(s.get("mean_ms"), "{:.1f}"),
                _fmt(s.get("context_share"), "{:.0%}"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    ]
    goals = report.get("goals") or {}

    def met(name: str) -> str:
        goal = goals.get(name) or {}
        return f"goal <= {goal.get('limit')}: {'met' if goal.get('met') else 'not met'}"

    lines.append("")
    lines.append(
        f"overhead_ratio_p50  {_fmt(report.get('overhead_ratio_p50'), '{:.3f}')}  ({met('overhead_ratio_p50')})"
    )
    lines.append(
        f"  without history   {_fmt(report.get('overhead_ratio_no_history_p50'), '{:.3f}')}  (the plugin's own hops)"
    )
    lines.append(f"hiding_ratio_p99    {_fmt(report.get('hiding_ratio_p99'), '{:.3f}')}  ({met('hiding_ratio_p99')})")
    age = goals.get("context_age_p50") or {}
    lines.append(
        f"context age p50 {_fmt(report.get('context_age_p50_ms'), '{:.0f}')} ms, cloud rtt p50"
        f" {_fmt(report.get('cloud_rtt_p50_ms'), '{:.0f}')} ms: gap {_fmt(age.get('value'), '{:.0f}')} ms"
        f" (goal gap <= {age.get('limit')} ms: {'met' if age.get('met') else 'not met'});"
        f" answers used {_fmt(report.get('context_lag_p50_ms'), '{:.0f}')} ms after arrival (p50)"
    )
    lines.extend(_ratio_lines(report))
    store = report.get("store")
    if store and "store_bytes_per_stream" in store:
        lines.append(
            f"context store: {store['store_bytes_per_stream']:.0f} bytes per stream (tracemalloc, {store['streams']}"
            f" streams at full history); memory_bytes() estimate {store['store_memory_bytes_estimate_per_stream']:.0f}"
        )
    elif store and "error" in store:
        lines.append(f"context store: not measured ({store['error']})")
    lines.append(f"{report.get('frames')} frames, {report.get('errors')} errors, {report.get('wall_s')} s")
    return "\n".join(lines)


def _ratio_lines(report: Mapping[str, Any]) -> list[str]:
    """Every ratio's median and range over rounds, then the capacity, the edge's memory and the machine."""
    lines = []
    for name, values in (report.get("ratios") or {}).items():
        rounds = len([v for v in values.get("rounds", ()) if v is not None])
        lines.append(
            f"  {name:<30} median {_fmt(values.get('median'), '{:.3f}')}  range"
            f" [{_fmt(values.get('min'), '{:.3f}')}, {_fmt(values.get('max'), '{:.3f}')}] over {rounds} round(s)"
        )
    capacity = report.get("capacity")
    if capacity:
        tried = ", ".join(f"{t['streams']} {'pass' if t['passed'] else 'fail'}" for t in capacity.get("trials", ()))
        limit = " (the search limit)" if capacity.get("at_limit") else ""
        lines.append(
            f"capacity_streams    {capacity.get('capacity_streams')}{limit}  (p99 <= {capacity.get('latency_limit_ms')}"
            f" ms, none late, at {capacity.get('fps')} fps; tried {tried})"
        )
        bound = capacity.get("bound")
        if bound:
            parts = ", ".join(f"{k} {v}" for k, v in bound["cpu_ms_per_frame"].items() if k != "total")
            busy = bound.get("busy_share_of_machine")
            busy_text = f"; the machine was {busy:.0%} busy" if isinstance(busy, (int, float)) else ""
            head = "what bounds it: at" if not bound["passed"] else "CPU at the most streams tried,"
            lines.append(
                f"  {head} {bound['streams']} streams (p99 {bound['p99_ms']} ms) the edge spent"
                f" {bound['cpu_ms_per_frame'].get('total')} CPU ms a frame ({parts}), the load client"
                f" {bound.get('client_cpu_ms_per_frame')} ms{busy_text}"
            )
    rss = report.get("edge_rss_bytes")
    if rss:
        lines.append("edge RSS: " + ", ".join(f"{k.replace('_', ' ')} {v / 2**20:.0f} MiB" for k, v in rss.items()))
    machine = report.get("machine")
    if machine and "cpu_model" in machine:
        lines.append(
            f"machine: {machine.get('cpu_model')}, {machine.get('usable_cpus')} usable CPUs, torch CPU capability"
            f" {machine.get('torch_cpu_capability')}, load average {machine.get('load_average')}"
        )
    return lines


def write_plot(
    report: Mapping[str, Any], samples: Mapping[str, Mapping[str, Sequence[float]]], path: Path
) -> str | None:
    """Per-phase latency distributions (box plot and cumulative distribution) and, for the delay2000 phase, the
    context ages against the LVLM round trips. None when written, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed; no plot written"
    names = [n for n in PHASE_NAMES if len((samples.get(n) or {}).get("latency_ms", ())) > 0]
    if not names:
        return "no phase has latencies; no plot written"
    fig, (box_ax, cdf_ax, age_ax) = plt.subplots(1, 3, figsize=(16, 5))
    data = [np.asarray(samples[n]["latency_ms"], dtype=float) for n in names]
    box_ax.boxplot(data, whis=(1, 99), showfliers=True, flierprops={"markersize": 3})
    box_ax.set_xticks(range(1, len(names) + 1), [n.replace("_", "\n", 1) for n in names], fontsize=8)
    for i, values in enumerate(data, start=1):
        p50, p99 = percentile(values, 50), percentile(values, 99)
        box_ax.annotate(
            f"p50 {p50:.0f}\np99 {p99:.0f}", (i, p99), textcoords="offset points", xytext=(8, 4), fontsize=7
        )
    box_ax.set_ylabel("client latency (ms)")
    box_ax.set_title("latency per phase (whiskers: p1-p99)", fontsize=10)
    for name, values in zip(names, data):
        ordered = np.sort(values)
        cdf_ax.step(ordered, np.arange(1, len(ordered) + 1) / len(ordered), where="post", label=name)
    cdf_ax.axhline(0.5, color="grey", linewidth=0.5)
    cdf_ax.axhline(0.99, color="grey", linewidth=0.5, linestyle=":")
    cdf_ax.set_xlabel("client latency (ms)")
    cdf_ax.set_ylabel("share of frames")
    cdf_ax.set_title("cumulative distribution", fontsize=10)
    cdf_ax.legend(fontsize=8)
    delayed = samples.get("spotvlm_delay2000") or {}
    ages, rtts = delayed.get("context_age_ms") or [], delayed.get("cloud_rtt_ms") or []
    if ages or rtts:
        bins = np.linspace(0, (max([*ages, *rtts]) or 1.0) * 1.05, 30)
        for values, what in ((ages, "context age per frame"), (rtts, "LVLM round trip per answer")):
            if values:
                age_ax.hist(
                    values,
                    bins=bins,
                    weights=np.full(len(values), 1 / len(values)),
                    alpha=0.6,
                    label=f"{what} (p50 {percentile(values, 50):.0f})",
                )
        age_ax.legend(fontsize=8)
    else:
        age_ax.text(0.5, 0.5, "no cloud context", ha="center", va="center", transform=age_ax.transAxes)
    age_ax.set_xlabel("ms")
    age_ax.set_ylabel("share")
    age_ax.set_title(f"cloud context, cloud_delay {DELAY2000_SPEC}", fontsize=10)
    config = report.get("config") or {}
    fig.suptitle(
        f"spotvlm bench: {config.get('streams')} streams at {config.get('fps')} fps,"
        f" {config.get('seconds')} s per phase, max_tokens {config.get('max_tokens')}",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
