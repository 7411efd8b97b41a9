"""Whether context from an earlier frame is still right: the ground truth of the generated videos, frame by frame.

A context (a cloud answer in the history, or boxes for a focus crop) about frame k is *fresh* for the current
question when the question's true answer at frame k is still its true answer now (boxes: IoU >= 0.5), and *stale*
when it is not, including when the question had no certain answer at frame k (the object was absent or ambiguous).
Datasets without `truth.jsonl` next to their frames (a user's own) have no such truth: their contexts are `unknown`.
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.questions import Question, candidate_questions
from evaluation.scenes import ObjectTruth
from evaluation.scoring import box_iou

NO_CONTEXT, FRESH, STALE, UNKNOWN = "none", "fresh", "stale", "unknown"
CONTEXT_STATES = (NO_CONTEXT, FRESH, STALE, UNKNOWN)


class TruthIndex:
    """truth.jsonl of each video: the objects of every frame, loaded once per video."""

    def __init__(self) -> None:
        self._videos: dict[str, list[list[ObjectTruth]] | None] = {}

    def frames(self, video: str) -> list[list[ObjectTruth]]:
        """Every frame's objects; FileNotFoundError when the video has no truth.jsonl."""
        rows = self._load(video)
        if rows is None:
            raise FileNotFoundError(f"{video} has no truth.jsonl")
        return rows

    def has_truth(self, video: str) -> bool:
        return self._load(video) is not None

    def _load(self, video: str) -> list[list[ObjectTruth]] | None:
        if video not in self._videos:
            path = Path(video) / "truth.jsonl"
            if not path.is_file():
                self._videos[video] = None
            else:
                self._videos[video] = [_objects(json.loads(line)) for line in path.read_text().splitlines()]
        return self._videos[video]


def _objects(record: dict) -> list[ObjectTruth]:
    return [
        ObjectTruth(o["id"], o["shape"], o["colour"], tuple(o["box"]), o["visible_fraction"], o["small"])
        for o in record["objects"]
    ]


def answer_at(question: str, truth: list[ObjectTruth], width: int, height: int) -> Question | None:
    """The question as asked about a frame with these objects, with its answer; None when it had no certain answer."""
    for task_questions in candidate_questions(truth, width, height).values():
        for candidate in task_questions:
            if candidate.question == question:
                return candidate
    return None


def is_stale(task: str, earlier, now) -> bool:
    if task == "grounding":
        return box_iou(earlier, now) < 0.5
    return earlier != now


def context_state(
    truth: TruthIndex, video: str, question: str, task: str, answer, context_frame_index: int | None, size
) -> str:
    """NO_CONTEXT, FRESH, STALE or UNKNOWN for a question whose context came from `context_frame_index`.
    `size` is the frame's (height, width)."""
    if context_frame_index is None:
        return NO_CONTEXT
    if not truth.has_truth(video):
        return UNKNOWN
    frames = truth.frames(video)
    if not 0 <= context_frame_index < len(frames):
        return UNKNOWN
    height, width = size
    earlier = answer_at(question, frames[context_frame_index], width, height)
    if earlier is None:
        return STALE
    return STALE if is_stale(task, earlier.answer, answer) else FRESH
