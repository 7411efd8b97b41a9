"""Paired differences between two policies, with a 95% interval by bootstrap over videos.

Two policies answer the same questions (the same example at the same latency setting), so their difference is read
question by question: d = correct(policy) − correct(baseline), in {-1, 0, 1}, and the estimate is the mean of d over
the paired questions. Questions of one video are not independent (a standing question is asked again and again,
a cloud answer serves many frames), so the interval resamples whole videos: each of `resamples` draws takes as many
videos as there are, with replacement, and pools their questions' d (a ratio: the sum of d over the drawn videos'
questions by their count). The interval is the 2.5th and 97.5th percentiles of those draws.

It is undefined (None, with the reason) with no paired questions, or with a single video: one video's resamples are
all that video, which says nothing about another.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float | None  # mean paired difference over every question (None: no pairs)
    low: float | None
    high: float | None
    questions: int
    videos: int
    reason: str | None = None  # why the estimate or the interval is None


def bootstrap_mean_difference(
    by_video: Mapping[str, Sequence[float]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> Interval:
    """The mean of the paired differences pooled over every video, and its percentile interval by resampling videos
    (module docstring). Videos with no differences are left out."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    videos = [values for values in by_video.values() if len(values)]
    sums = np.array([float(np.sum(values)) for values in videos])
    counts = np.array([len(values) for values in videos], dtype=float)
    questions = int(counts.sum())
    if not videos:
        return Interval(None, None, None, 0, 0, "no paired questions")
    estimate = float(sums.sum() / counts.sum())
    if len(videos) < 2:
        return Interval(estimate, None, None, questions, 1, "one video: the interval resamples videos, it needs two")
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(videos), size=(resamples, len(videos)))
    estimates = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    # A resampled mean of values that are all equal can differ from them in the last bit; keep low <= est <= high.
    return Interval(estimate, min(float(low), estimate), max(float(high), estimate), questions, len(videos))


@dataclass(frozen=True)
class PairedAnswer:
    """One policy's result on one question: what pairing needs of an evaluation record."""

    video: str
    example_id: str
    task: str
    latency: str
    correct: bool


def paired_differences(
    policy: Iterable[PairedAnswer], baseline: Iterable[PairedAnswer]
) -> dict[tuple[str, str], dict[str, list[float]]]:
    """(task, latency) -> video -> the differences of the questions both answered. A question is the same when its
    example id and latency setting are; a question only one policy has is left out."""
    base = {(a.example_id, a.latency): a for a in baseline}
    out: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for answer in policy:
        other = base.get((answer.example_id, answer.latency))
        if other is None:
            continue
        if other.video != answer.video or other.task != answer.task:
            raise ValueError(f"question {answer.example_id} has two videos or tasks: records of different datasets?")
        out[(answer.task, answer.latency)][answer.video].append(float(answer.correct) - float(other.correct))
    return {key: dict(videos) for key, videos in out.items()}


def pooled(by_task: Mapping[tuple[str, str], Mapping[str, Sequence[float]]], latency: str) -> dict[str, list[float]]:
    """Every task's differences at `latency`, by video: the all-tasks comparison."""
    out: dict[str, list[float]] = defaultdict(list)
    for (_, at), videos in by_task.items():
        if at == latency:
            for video, values in videos.items():
                out[video].extend(values)
    return dict(out)
