"""Aggregating evaluation results (evaluation/report.py writes them out: markdown, CSVs, plots).

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

The comparisons (`differences`): context transfer against cloud_stale, edge_only and itself without tracking, per
task (and all pooled) and latency, as paired differences in accuracy with a 95% interval by bootstrap over videos
(evaluation.paired); they need records that name their video and question.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from client.stats import percentile
from evaluation.latency import LatencySetting
from evaluation.paired import Interval, PairedAnswer, bootstrap_mean_difference, paired_differences, pooled
from evaluation.policies import (
    CLOUD_REFERENCE,
    CLOUD_STALE,
    CONTEXT_TRANSFER,
    CONTEXT_TRANSFER_NO_CARRY,
    CONTEXT_TRANSFER_NO_TRACKING,
    EDGE_ONLY,
    POLICIES,
)
from evaluation.scoring import accuracy_with_ci
from evaluation.staleness import FRESH, NO_CONTEXT, STALE


Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
ALL_TASKS = "all"
PREFERRED_TASK_ORDER = ("recognition", "localisation", "grounding", "counting")  # questions.TASKS

# How the edge's accuracy depends on its cloud context (spotvlm policies, all latencies pooled): by the context's age,
# then by whether it was still right for the current question (evaluation.staleness).
AGE_BUCKETS_S = (
    (0.0, 1.0, "age < 1 s"),
    (1.0, 3.0, "age 1-3 s"),
    (3.0, 6.0, "age 3-6 s"),
    (6.0, math.inf, "age ≥ 6 s"),
)
CONTEXT_GROUPS = ("no context",) + tuple(label for *_, label in AGE_BUCKETS_S) + ("fresh context", "stale context")
# (policy, baseline): the paired comparisons the report leads with.
DIFFERENCE_PAIRS = (
    (CONTEXT_TRANSFER, CLOUD_STALE),
    (CONTEXT_TRANSFER, EDGE_ONLY),
    (CONTEXT_TRANSFER, CONTEXT_TRANSFER_NO_TRACKING),
    (CONTEXT_TRANSFER, CONTEXT_TRANSFER_NO_CARRY),
)


@dataclass(frozen=True)
class EvalRecord:
    task: str
    policy: str  # one of policies.POLICIES, or policies.CLOUD_REFERENCE
    latency: str  # a LatencySetting name: "0s", "2s", "trace"
    correct: bool
    edge_latency_ms: float | None = None  # the edge's answer time for this question; None when not measured
    context_age_ms: float | None = None  # age of the cloud context spotvlm used (None: none used, or not spotvlm)
    context_state: str | None = None  # staleness.CONTEXT_STATES for spotvlm policies, None otherwise
    video: str | None = None  # the question's video and id: what pairs two policies' answers (None: not paired)
    example_id: str | None = None


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


@dataclass(frozen=True)
class Difference:
    """acc(policy) − acc(baseline) on the questions both answered, at one latency, for a task or ALL_TASKS."""

    task: str
    latency: str
    policy: str
    baseline: str
    interval: Interval


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
    differences: list[Difference] = field(default_factory=list)  # DIFFERENCE_PAIRS present, tasks + ALL_TASKS

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
    # numpy's default linear interpolation; with under 100 samples p99 lies between the two largest.
    return percentile(values, 50), percentile(values, 99)


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
    differences = _differences(records, tasks, latencies)
    return Summary(
        tasks, policies, latencies, fluctuating, nominal, cells, reference, gaps, edge_latency, context, differences
    )


def _differences(records: Sequence[EvalRecord], tasks: Sequence[str], latencies: Sequence[str]) -> list[Difference]:
    by_policy: dict[str, list[PairedAnswer]] = defaultdict(list)
    for r in records:
        if r.video is not None and r.example_id is not None and r.policy != CLOUD_REFERENCE:
            by_policy[r.policy].append(PairedAnswer(r.video, r.example_id, r.task, r.latency, r.correct))
    out = []
    for policy, baseline in DIFFERENCE_PAIRS:
        if policy not in by_policy or baseline not in by_policy:
            continue
        pairs = paired_differences(by_policy[policy], by_policy[baseline])
        for latency in latencies:
            for task in [*tasks, ALL_TASKS]:
                videos = pooled(pairs, latency) if task == ALL_TASKS else pairs.get((task, latency), {})
                out.append(Difference(task, latency, policy, baseline, bootstrap_mean_difference(videos)))
    return out


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
