"""The benchmark's scorer on hand-made cases: normalisation, each answer type, box IoU, Wilson intervals."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest

from evaluation.scoring import (
    IOU_THRESHOLD,
    accuracy_with_ci,
    box_iou,
    normalise,
    parse_box,
    parse_count,
    parse_region,
    score,
)


@dataclass
class Ex:
    answer_type: str
    answer: object


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Red", "red"),
        ("  The   RED square. ", "red square"),
        ("an apple, a pear!", "apple pear"),
        ("upper-left", "upper left"),
        ("top_left", "top left"),
        ("ＲＥＤ", "red"),  # full-width letters (NFKC)
        ("", ""),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(
    "answer, predicted, correct",
    [
        ("red", "red", True),
        ("red", "Red.", True),
        ("red", "The square is red.", True),  # names the answer and no other colour
        ("circle", "It is a circle", True),
        ("circle", "a red circle", True),  # a colour besides a shape answer is description, not a second answer
        ("circle", "a circle or a star", False),
        ("red", "red or blue", False),
        ("red", "reddish", False),
        ("red", "", False),
        ("circle", "circles", False),
        ("traffic light", "The traffic light", True),  # not benchmark vocabulary: exact after normalisation
        ("traffic light", "it is a traffic light", False),
    ],
)
def test_text_answers(answer: str, predicted: str, correct: bool) -> None:
    assert score(Ex("text", answer), predicted).correct is correct


@pytest.mark.parametrize(
    "predicted, count",
    [
        ("2", 2),
        ("two", 2),
        ("Two.", 2),
        ("There are 2 triangles.", 2),
        ("2 triangles, 2 in all", 2),
        ("none", 0),
        ("There are no stars", 0),
        ("zero", 0),
        ("12", 12),
        ("2.0", 2),
        ("2 or 3", None),
        ("no, three", None),
        ("2.5", None),
        ("several", None),
        ("", None),
    ],
)
def test_parse_count(predicted: str, count: int | None) -> None:
    assert parse_count(predicted) == count


@pytest.mark.parametrize(
    "answer, predicted, correct",
    [("2", "two", True), ("2", "3", False), ("0", "None.", True), ("0", "", False), ("3", "three stars", True)],
)
def test_number_answers(answer: str, predicted: str, correct: bool) -> None:
    assert score(Ex("number", answer), predicted).correct is correct


@pytest.mark.parametrize(
    "predicted, region",
    [
        ("top left", "top left"),
        ("Upper left", "top left"),
        ("upper-left corner", "top left"),
        ("left top", "top left"),
        ("In the top left corner of the image.", "top left"),
        ("top", "top center"),
        ("top middle", "top center"),
        ("upper centre", "top center"),
        ("center", "center"),
        ("centre", "center"),
        ("middle", "center"),
        ("middle center", "center"),
        ("the center of the frame", "center"),
        ("left", "middle left"),
        ("center left", "middle left"),
        ("middle right", "middle right"),
        ("lower right", "bottom right"),
        ("bottom", "bottom center"),
        ("top bottom", None),
        ("left right", None),
        ("the red circle is top left", None),
        ("top left center", None),
        ("", None),
        ("nowhere", None),
    ],
)
def test_parse_region(predicted: str, region: str | None) -> None:
    assert parse_region(predicted) == region


def test_region_answers_are_exact_after_normalisation() -> None:
    assert score(Ex("region", "top left"), "Upper-left.").correct
    assert not score(Ex("region", "top left"), "top center").correct
    assert score(Ex("region", "center"), "middle").correct
    assert score(Ex("region", "middle left"), "left").parsed == "middle left"


@pytest.mark.parametrize(
    "a, b, iou",
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (0, 0, 10, 5), 0.5),
        ((0, 0, 10, 10), (2, 2, 8, 8), 36 / 100),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges share no pixel (x2 exclusive)
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 0, 10), (0, 0, 0, 10), 0.0),  # no area
    ],
)
def test_box_iou(a, b, iou: float) -> None:
    assert box_iou(a, b) == pytest.approx(iou)
    assert box_iou(b, a) == pytest.approx(iou)


BOX = [100, 50, 140, 90]


@pytest.mark.parametrize(
    "predicted, iou",
    [
        (json.dumps([{"bbox_2d": BOX, "label": "red circle"}]), 1.0),
        ('```json\n[{"bbox_2d": [100, 50, 140, 70], "label": "red circle"}]\n```', 0.5),
        ('[{"bbox_2d": [140, 90, 100, 50], "label": "red circle"}]', 1.0),  # corners swapped
        ('{"bbox_2d": [100, 50, 140, 90], "label": "red circle"}', 1.0),  # no list brackets
        ('[{"bbox_2d": [120, 50, 160, 90]}, {"bbox_2d": [100, 50, 140, 90]}]', 1 / 3),  # the first box counts
        ("[100, 50, 140, 90]", 1.0),
        ("The box is (100, 50) to (140, 90).", 1.0),
        ("x1=100 y1=50 x2=140 y2=90", 1.0),
        (BOX, 1.0),
        ((100.0, 50.0, 120.0, 90.0), 0.5),
        ("[100, 50, 140]", 0.0),
        ('[{"bbox_2d": [100, 50, 140], "label": "x"}]', 0.0),  # malformed (3 numbers), as the prototype emitted
        ("I cannot see it.", 0.0),
        ("", 0.0),
    ],
)
def test_box_answers_give_iou(predicted, iou: float) -> None:
    result = score(Ex("box", (100, 50, 140, 90)), predicted)
    assert result.iou == pytest.approx(iou)
    assert result.correct is (iou >= IOU_THRESHOLD)


def test_box_parse_and_threshold_edges() -> None:
    assert parse_box("nothing here") is None and parse_box([1, 2, 3]) is None and parse_box(["a", 1, 2, 3]) is None
    assert parse_box([1, 2, float("nan"), 4]) is None
    just_below = score(Ex("box", (0, 0, 100, 100)), [0, 0, 100, 49.9])
    assert not just_below.correct and just_below.iou == pytest.approx(0.499)


def test_non_text_prediction_for_text_answer_and_unknown_type() -> None:
    assert not score(Ex("text", "red"), [1, 2, 3, 4]).correct
    with pytest.raises(ValueError, match="answer_type"):
        score(Ex("colour", "red"), "red")


@pytest.mark.parametrize(
    "correct, n, acc, low, high",
    [
        (8, 10, 0.8, 0.4901625, 0.9433178),
        (0, 10, 0.0, 0.0, 0.2775328),
        (10, 10, 1.0, 0.7224672, 1.0),
        (50, 100, 0.5, 0.4038315, 0.5961685),
        (1, 1, 1.0, 0.2065493, 1.0),
    ],
)
def test_wilson_interval(correct: int, n: int, acc: float, low: float, high: float) -> None:
    flags = [True] * correct + [False] * (n - correct)
    result = accuracy_with_ci(flags)
    assert result == pytest.approx((acc, low, high), abs=1e-6)


def test_wilson_interval_with_no_answers_and_narrowing() -> None:
    acc, low, high = accuracy_with_ci([])
    assert math.isnan(acc) and (low, high) == (0.0, 1.0)
    _, low_small, high_small = accuracy_with_ci([True, False] * 10)
    _, low_large, high_large = accuracy_with_ci([True, False] * 1000)
    assert high_large - low_large < high_small - low_small
    assert accuracy_with_ci(iter([1, 0, 0, 0]))[0] == 0.25  # any iterable of truthy values


@pytest.mark.parametrize("n", [1, 6, 7, 100, 1000])
def test_the_interval_always_holds_the_accuracy(n):
    for correct in (0, n):
        acc, low, high = accuracy_with_ci([True] * correct + [False] * (n - correct))
        assert low <= acc <= high
