"""The phases of `spotvlm bench` (load_tests/bench.py), their statistics, the headline keys and the goals.

Pure: per-phase summaries from client.streaming.FrameResults, nothing is run here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from client.streaming import FrameResult
from load_tests.frame_stats import after_warmup, latency_summary, phase_summary, ratio

DELAY2000_SPEC = "uniform:1000:3000"


GOAL_OVERHEAD_RATIO_P50 = 1.05
GOAL_HIDING_RATIO_P99 = 1.05


@dataclass(frozen=True)
class Phase:
    name: str
    title: str
    model: str  # "svlm" or "spotvlm"
    edge: str  # "cloud_off" or "linked"
    cloud_delay: str | None = None
    use_context: bool = True


PHASES = (
    Phase("svlm", "svlm ensemble alone (cloud-off edge)", "svlm", "cloud_off"),
    Phase("spotvlm_cloud_off", "spotvlm, cloud link off", "spotvlm", "cloud_off"),
    # The same without the stream's text history: splits the overhead into the plugin's own hops and the history's
    # extra prefill in the SVLM (its own last turns, which context replacement works on).
    Phase(
        "spotvlm_no_history",
        "spotvlm, cloud link off, use_context false (no history)",
        "spotvlm",
        "cloud_off",
        use_context=False,
    ),
    Phase("spotvlm_delay0", "spotvlm linked, cloud_delay 0", "spotvlm", "linked", "0"),
    Phase("spotvlm_delay2000", f"spotvlm linked, cloud_delay {DELAY2000_SPEC}", "spotvlm", "linked", DELAY2000_SPEC),
)
PHASE_NAMES = tuple(p.name for p in PHASES)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def first_uses(results: Iterable[FrameResult]) -> list[FrameResult]:
    """The first answered frame (by stream, then frame index) that used each distinct LVLM answer, an answer being
    (stream, context_frame): every frame until the next answer arrives reuses it."""
    seen: set[tuple[int, Any]] = set()
    out = []
    for result in sorted(results, key=lambda r: (r.stream_id, r.frame_index)):
        if not result.ok or not result.has_context:
            continue
        key = (result.stream_id, result.context.context_frame)
        if key not in seen:
            seen.add(key)
            out.append(result)
    return out


def distinct_context_rtts(results: Iterable[FrameResult]) -> list[float]:
    """CONTEXT.context_rtt_ms once per distinct LVLM answer (stream, context_frame), not once per frame using it."""
    return [v for r in first_uses(results) if (v := _number(r.context.context_rtt_ms)) is not None]


def context_lags(results: Iterable[FrameResult]) -> list[float]:
    """context_age_ms - context_rtt_ms of each frame that used cloud context."""
    lags = []
    for r in results:
        age, rtt = _number(r.context.context_age_ms), _number(r.context.context_rtt_ms)
        if age is not None and rtt is not None:
            lags.append(age - rtt)
    return lags


def context_stats(answered: Sequence[FrameResult], warmup: Sequence[FrameResult] = ()) -> dict[str, Any]:
    """Cloud context of a phase's answered (measured) frames: share with context, its age, and the LVLMs' round
    trips. `warmup`: the phase's answered warm-up frames, so an answer first used there has no later "first use"."""
    with_context = [r for r in answered if r.has_context]
    ages = [v for r in with_context if (v := _number(r.context.context_age_ms)) is not None]
    measured = {id(r) for r in answered}
    first = [r for r in first_uses([*warmup, *answered]) if id(r) in measured]
    states: dict[str, int] = {}
    for r in answered:
        state = r.context.cloud_state or "none"
        states[state] = states.get(state, 0) + 1
    return {
        "context_share": round(len(with_context) / len(answered), 3) if answered else None,
        "context_age": latency_summary(ages),
        # The age when an answer is first used: its round trip plus the wait for the next frame.
        "context_age_first_use": latency_summary(
            [v for r in first if (v := _number(r.context.context_age_ms)) is not None]
        ),
        # At each answer's first use: how much older it is than its round trip, i.e. how long the edge took to use
        # an answer after it arrived (the wait for the stream's next frame, plus the edge's own share). Later frames
        # reuse an answer until a fresher one arrives, which depends on the injected delays, not on the edge.
        "context_lag": latency_summary(context_lags(first)),
        "cloud_answers_used": len(first_uses(answered)),
        "cloud_rtt": latency_summary(distinct_context_rtts(answered)),
        "cloud_states": dict(sorted(states.items())),
    }


def summarize_phase(results: Sequence[FrameResult], started_ms: float, warmup_s: float) -> dict[str, Any]:
    """One phase's summary: stream_isolation's phase_summary (client and server latency, per stream, late frames),
    its client p50/p99/mean/n at the top, the cloud context, and `errors_total` over every frame sent."""
    summary = phase_summary(results, started_ms, warmup_s)
    client = summary["client"]
    answered = [r for r in after_warmup(results, started_ms, warmup_s) if r.ok]
    measured = {id(r) for r in answered}
    warmup = [r for r in results if r.ok and id(r) not in measured]
    return {
        "n": client["n"],
        "p50_ms": client["p50_ms"],
        "p99_ms": client["p99_ms"],
        "mean_ms": client["mean_ms"],
        # `errors` (phase_summary) counts measured frames only; a warm-up error is an error all the same.
        "errors_total": sum(1 for r in results if not r.ok),
        "cloud_requests_sent": cloud_requests_sent(results),
        **summary,
        **context_stats(answered, warmup),
    }


def phase_samples(results: Sequence[FrameResult], started_ms: float, warmup_s: float) -> dict[str, list[float]]:
    """The raw numbers the plot draws: measured client latencies, context ages and distinct round trips."""
    answered = [r for r in after_warmup(results, started_ms, warmup_s) if r.ok]
    return {
        "latency_ms": [r.latency_ms for r in answered],
        "context_age_ms": [
            v for r in answered if r.has_context and (v := _number(r.context.context_age_ms)) is not None
        ],
        "cloud_rtt_ms": distinct_context_rtts(answered),
    }


def headline_keys(phases: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The report's top-level numbers from the per-phase summaries (a missing phase gives None values)."""
    keys: dict[str, Any] = {}
    for name in PHASE_NAMES:
        summary = phases.get(name) or {}
        keys[f"{name}_p50_ms"] = summary.get("p50_ms")
        keys[f"{name}_p99_ms"] = summary.get("p99_ms")
    keys["overhead_ratio_p50"] = ratio(keys["spotvlm_cloud_off_p50_ms"], keys["svlm_p50_ms"])
    keys["overhead_ratio_no_history_p50"] = ratio(keys["spotvlm_no_history_p50_ms"], keys["svlm_p50_ms"])
    keys["hiding_ratio_p99"] = ratio(keys["spotvlm_delay2000_p99_ms"], keys["spotvlm_delay0_p99_ms"])
    delayed = phases.get("spotvlm_delay2000") or {}
    keys["context_age_p50_ms"] = (delayed.get("context_age") or {}).get("p50_ms")
    keys["context_age_first_use_p50_ms"] = (delayed.get("context_age_first_use") or {}).get("p50_ms")
    keys["cloud_rtt_p50_ms"] = (delayed.get("cloud_rtt") or {}).get("p50_ms")
    keys["context_lag_p50_ms"] = (delayed.get("context_lag") or {}).get("p50_ms")
    keys["frames"] = sum(int((phases.get(name) or {}).get("frames", 0)) for name in PHASE_NAMES)
    keys["errors"] = sum(int((phases.get(name) or {}).get("errors_total", 0)) for name in PHASE_NAMES)
    keys["context_share"] = {name: (phases.get(name) or {}).get("context_share") for name in PHASE_NAMES}
    return keys


def evaluate_goals(keys: Mapping[str, Any], fps: float) -> dict[str, dict[str, Any]]:
    """Each goal with its value, limit and `met` (False when a value is missing). Reported, never asserted."""
    interval_ms = round(1000.0 / fps, 2)
    age, rtt = keys.get("context_age_p50_ms"), keys.get("cloud_rtt_p50_ms")
    gap = round(abs(age - rtt), 2) if age is not None and rtt is not None else None

    def goal(text: str, value: float | None, limit: float) -> dict[str, Any]:
        return {"goal": text, "value": value, "limit": limit, "met": value is not None and value <= limit}

    return {
        "overhead_ratio_p50": goal(
            "spotvlm_cloud_off p50 / svlm p50 <= 1.05", keys.get("overhead_ratio_p50"), GOAL_OVERHEAD_RATIO_P50
        ),
        "hiding_ratio_p99": goal(
            "spotvlm_delay2000 p99 / spotvlm_delay0 p99 <= 1.05", keys.get("hiding_ratio_p99"), GOAL_HIDING_RATIO_P99
        ),
        "context_age_p50": goal(
            "|context_age_p50 - cloud_rtt_p50| <= one frame interval (1000/fps ms), delay2000 phase", gap, interval_ms
        ),
    }


def cloud_requests_sent(results: Iterable[FrameResult]) -> int:
    """Frames the edge says it sent to the cloud (CONTEXT.cloud_dispatch == "sent")."""
    return sum(1 for r in results if r.ok and r.context.cloud_dispatch == "sent")


def mean_history_tokens(
    results: Iterable[FrameResult],
    history_tokens: Callable[[str, list[tuple[str, str]]], int],
    prompt: str,
    warmup_ms: float = 0.0,
) -> float | None:
    """The mean number of prompt tokens that the text history added to the answered frames after `warmup_ms` (sent
    time, ms), None when none was answered. A frame's history is the CONTEXT's `history_turns` last turns of its
    stream, each an earlier frame's question and answer (what `spotvlm` keeps with the cloud off);
    `history_tokens(question, turns)` counts their tokens as the served model's tokenizer and prompt template do."""
    by_stream: dict[int, list[FrameResult]] = {}
    for result in sorted(results, key=lambda r: (r.stream_id, r.frame_index)):
        by_stream.setdefault(result.stream_id, []).append(result)
    counts = []
    for frames in by_stream.values():
        earlier: list[tuple[str, str]] = []
        for result in frames:
            if result.ok:
                if result.sent_at_ms >= warmup_ms:
                    turns = int(result.context.history_turns or 0)
                    counts.append(history_tokens(prompt, earlier[-turns:]) if turns else 0)
                earlier.append((prompt, result.text))
    return sum(counts) / len(counts) if counts else None
