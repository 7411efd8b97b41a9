"""Statistics of `spotvlm bench`'s interleaved rounds and its capacity search (pure: nothing is run here).

A shared machine's load drifts over minutes, so one sequential run per phase can put the drift into a ratio. The
bench runs its phases in rounds on the same server, the order reversed every other round, and computes each ratio
within a round (both parts measured a few seconds apart); the report gives each ratio's median and range over rounds.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from client.streaming import FrameResult
from load_tests.bench_phases import context_stats, summarize_phase
from load_tests.frame_stats import after_warmup, ratio

# What a round keeps of a phase's summary in the report.
ROUND_KEYS = ("p50_ms", "p99_ms", "frames", "errors_total", "late_frames", "achieved_fps_per_stream")


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """The phases of round `round_index` (0-based): as given in even rounds, reversed in odd ones, so no phase always
    runs first (right after a server start or another phase's cloud work)."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def round_ratios(
    rounds: Sequence[Mapping[str, Mapping[str, Any]]], numerator: str, denominator: str, key: str = "p50_ms"
) -> list[float | None]:
    """numerator's `key` over denominator's, within each round (None where a round lacks either)."""
    return [ratio((r.get(numerator) or {}).get(key), (r.get(denominator) or {}).get(key)) for r in rounds]


def spread(values: Sequence[float | None], digits: int = 3) -> dict[str, Any]:
    """Median, min and max of the rounds' values (None values left out), and the values in round order."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "rounds": list(values)}
    return {
        "median": round(statistics.median(present), digits),
        "min": round(min(present), digits),
        "max": round(max(present), digits),
        "rounds": list(values),
    }


def throughput_fps(results: Sequence[FrameResult], started_ms: float, warmup_s: float) -> float | None:
    """Frames answered per second after the warm-up: answered frames over the time from the warm-up's end to the
    last answer. With more streams than the server keeps up with, this is what it can serve."""
    cutoff = started_ms + warmup_s * 1000.0
    answered = [r for r in after_warmup(results, started_ms, warmup_s) if r.ok]
    if not answered:
        return None
    span_s = (max(r.sent_at_ms + r.latency_ms for r in answered) - cutoff) / 1000.0
    return round(len(answered) / span_s, 2) if span_s > 0 else None


def summarize_rounds(runs: Sequence[tuple[Sequence[FrameResult], float]], warmup_s: float) -> dict[str, Any]:
    """One phase over all its rounds: summarize_phase of the measured frames of every round put end to end (each
    round's warm-up left out), with `errors_total` and `frames_sent` over every frame sent, the context statistics
    knowing each round's warm-up frames, and `rounds`: each round's own p50, p99, frames, errors and late frames."""
    per_round = [summarize_phase(results, started, warmup_s) for results, started in runs]
    measured: list[FrameResult] = []
    warm: list[FrameResult] = []
    end_ms = 0.0
    for results, started in runs:
        kept = after_warmup(results, started, warmup_s)
        ids = {id(r) for r in kept}
        warm += [r for r in results if r.ok and id(r) not in ids]
        # Rounds end to end on one time line starting at 0, so the pooled wall time is the measured time alone.
        shift = end_ms - (started + warmup_s * 1000.0)
        moved = [dataclasses.replace(r, sent_at_ms=r.sent_at_ms + shift) for r in kept]
        measured += moved
        end_ms = max((r.sent_at_ms + r.latency_ms for r in moved), default=end_ms)
    summary = summarize_phase(measured, 0.0, 0.0)
    answered = [r for r in measured if r.ok]
    summary.update(context_stats(answered, warm))
    summary["errors_total"] = sum(p["errors_total"] for p in per_round)
    summary["frames_sent"] = sum(p["frames_sent"] for p in per_round)
    summary["streams"] = per_round[0]["streams"] if per_round else 0
    fps = [p["achieved_fps_per_stream"] for p in per_round if p["achieved_fps_per_stream"] is not None]
    summary["achieved_fps_per_stream"] = round(statistics.median(fps), 2) if fps else None
    summary["rounds"] = [{k: p.get(k) for k in ROUND_KEYS} for p in per_round]
    return summary


# -- capacity ----------------------------------------------------------------------------------------------------------


def meets_latency_goal(summary: Mapping[str, Any], limit_ms: float) -> bool:
    """Every frame answered (no error), none sent late because an earlier answer came late, and p99 within
    `limit_ms`."""
    p99 = summary.get("p99_ms")
    return (
        p99 is not None
        and p99 <= limit_ms
        and int(summary.get("errors_total", 0)) == 0
        and int(summary.get("late_frames", 0)) == 0
        and int(summary.get("frames", 0)) > 0
    )


@dataclass
class CapacitySearch:
    """The largest stream count that passed, every count tried in order with its verdict, and whether the search
    stopped at its upper limit (the capacity may be higher)."""

    capacity: int
    tried: list[tuple[int, bool]] = field(default_factory=list)
    at_limit: bool = False


def find_capacity(passes: Callable[[int], bool], limit: int, start: int = 1) -> CapacitySearch:
    """The largest n in [start, limit] with passes(n), assuming more streams never make it easier: double from
    `start` until a count fails (or `limit`), then bisect between the last pass and the first failure. capacity is
    start - 1 when `start` fails. Each count is measured once."""
    if start < 1 or limit < start:
        raise ValueError(f"need 1 <= start <= limit, got start {start}, limit {limit}")
    search = CapacitySearch(capacity=start - 1)

    def trial(n: int) -> bool:
        ok = bool(passes(n))
        search.tried.append((n, ok))
        return ok

    good, bad = start - 1, None
    n = start
    while True:
        if trial(n):
            good = n
            if n == limit:
                search.at_limit = True
                break
            n = min(2 * n, limit)
        else:
            bad = n
            break
    if bad is not None:
        while bad - good > 1:
            middle = (good + bad) // 2
            if trial(middle):
                good = middle
            else:
                bad = middle
    search.capacity = good
    return search


def capacity_bound(trials: Sequence[Mapping[str, Any]], capacity: int) -> dict[str, Any] | None:
    """The trial that shows what stops more streams: the fewest streams above `capacity` that failed (else the
    most that passed), with where its CPU went; None when no trial recorded its CPU."""
    measured = [t for t in trials if t.get("cpu_ms_per_frame")]
    failed = sorted(
        (t for t in measured if not t.get("passed") and t["streams"] > capacity), key=lambda t: t["streams"]
    )
    passed = sorted((t for t in measured if t.get("passed")), key=lambda t: t["streams"])
    chosen = failed[0] if failed else (passed[-1] if passed else None)
    if chosen is None:
        return None
    keys = (
        "streams",
        "passed",
        "p99_ms",
        "late_frames",
        "cpu_ms_per_frame",
        "client_cpu_ms_per_frame",
        "busy_share_of_machine",
    )
    return {k: chosen.get(k) for k in keys}
