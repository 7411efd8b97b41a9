"""Scoring a model's answer against a benchmark example, and accuracy with a 95 % confidence interval.

The rules (docs/dataset.md states them for users):
- Text is normalised first: Unicode NFKC, lower case, punctuation to spaces, the articles a/an/the dropped, spaces
  collapsed. "The Square." -> "square".
- text (recognition): correct when the normalised answer and prediction are equal. When the expected answer is one
  of the benchmark's colours (shapes), a longer prediction also counts if it contains the answer as a whole word and
  names no other colour (shape): "The square is red." is right for red, "red or blue" is wrong.
- number (counting): number words zero..twenty become digits, and "no"/"none" mean 0. Correct when the prediction
  holds at least one number and all of its numbers equal the answer ("2", "two", "There are 2 triangles.").
- region (localisation): the prediction must be a grid cell and nothing else, after normalisation and dropping
  filler words ("in the upper-left corner" is "top left"). Synonyms: upper/top, lower/bottom, centre/center/middle,
  either word order; "top" alone is "top center", "left" alone is "middle left".
- box (grounding): the first box of Qwen2.5-VL grounding JSON (`[{"bbox_2d": [x1, y1, x2, y2], ...}]`, parsed by
  python_backends.detections), else a text holding exactly four numbers, or a list of four numbers. Correct when its
  IoU with the expected box is >= 0.5; the IoU is returned either way (0 for an unparseable answer).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from python_backends.context.region_questions import REGIONS, parse_region
from python_backends.detections import parse_detections
from python_backends.text import normalise
from evaluation.scenes import COLOURS, SHAPES

IOU_THRESHOLD = 0.5
Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile

_NUMBER_WORDS = {
    word: index
    for index, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_ZERO_WORDS = frozenset({"no", "none"})
# An answer from one of these word groups may come inside a sentence, as long as no other word of its group is there.
_ANSWER_GROUPS = (frozenset(COLOURS), frozenset(SHAPES) | frozenset(s + "s" for s in SHAPES))
_NUMBER_TOKEN = re.compile(r"[a-z]+|\d+(?:\.\d+)?")
# A number standing alone: not the "1" of "x1", while "70." ending a sentence still counts.
_FREE_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w|\.\d)")


@dataclass(frozen=True)
class Score:
    correct: bool
    iou: float | None = None  # box answers only
    parsed: Any = None  # what the prediction was read as: text, a region, a count or a box; None if unreadable


def parse_count(text: str) -> int | None:
    """The count a prediction states: all its numbers must agree; None when it states none or several."""
    values = set()
    for token in _NUMBER_TOKEN.findall(unicodedata.normalize("NFKC", text).lower()):
        if token[0].isdigit():
            number = float(token)
            if number != int(number):
                return None
            values.add(int(number))
        elif token in _NUMBER_WORDS:
            values.add(_NUMBER_WORDS[token])
        elif token in _ZERO_WORDS:
            values.add(0)
    return values.pop() if len(values) == 1 else None


def parse_box(predicted: str | Sequence[float]) -> tuple[float, float, float, float] | None:
    """The box a prediction gives (corners put in order), or None."""
    if isinstance(predicted, (list, tuple)):
        if len(predicted) != 4:
            return None
        try:
            x1, y1, x2, y2 = (float(v) for v in predicted)
        except (TypeError, ValueError):
            return None
    elif isinstance(predicted, str):
        detections = parse_detections(predicted)
        if detections:
            return detections[0].bbox
        numbers = _FREE_NUMBER.findall(predicted)
        if len(numbers) != 4:
            return None
        x1, y1, x2, y2 = (float(v) for v in numbers)
    else:
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes; 0 when either has no area."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def _text_correct(expected: str, predicted: str) -> bool:
    want, got = normalise(expected), normalise(predicted)
    if want == got:
        return True
    group = next((g for g in _ANSWER_GROUPS if want in g), None)
    if group is None:
        return False
    words = got.split()
    return want in words and not any(w in group and w != want for w in words)


def score(example: Any, predicted: str | Sequence[float]) -> Score:
    """Score one prediction against an example (anything with `answer_type` and `answer`, e.g. dataset.Example)."""
    answer_type, answer = example.answer_type, example.answer
    if answer_type == "box":
        box = parse_box(predicted)
        if box is None:
            return Score(correct=False, iou=0.0)
        iou = box_iou(box, answer)
        return Score(correct=iou >= IOU_THRESHOLD, iou=iou, parsed=box)
    if not isinstance(predicted, str):
        return Score(correct=False)
    if answer_type == "number":
        count = parse_count(predicted)
        return Score(correct=count is not None and count == int(answer), parsed=count)
    if answer_type == "region":
        region = parse_region(predicted)
        return Score(correct=region is not None and region == parse_region(answer), parsed=region)
    if answer_type == "text":
        return Score(correct=_text_correct(answer, predicted), parsed=normalise(predicted))
    raise ValueError(f"unknown answer_type {answer_type!r}")


def accuracy_with_ci(correct_flags: Iterable[bool], z: float = Z_95) -> tuple[float, float, float]:
    """(accuracy, low, high): the share of correct answers and its Wilson score interval (95 % by default).

    Wilson rather than the normal approximation: it stays inside [0, 1] and is sound at 0 % or 100 % and for small n.
    With no answers the accuracy is NaN and the interval is [0, 1].
    """
    flags = [bool(f) for f in correct_flags]
    n = len(flags)
    if n == 0:
        return math.nan, 0.0, 1.0
    p = sum(flags) / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # The interval always holds p; clamping keeps float error (a low of 2.8e-17 at p = 0) from putting it outside.
    return p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


__all__ = [
    "IOU_THRESHOLD",
    "REGIONS",
    "Score",
    "accuracy_with_ci",
    "box_iou",
    "normalise",
    "parse_box",
    "parse_count",
    "parse_region",
    "score",
]
