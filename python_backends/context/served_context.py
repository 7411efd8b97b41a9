"""The SVLM's context input for one frame (history turns and focus plan), built one way for serving and training.

`spotvlm` calls `build_context_input` for every frame; training/examples.py builds its examples with it too, so what
the edge learned from is what it is served. With tracking on (`focus_tracking`), the cloud's answers are carried
forward from the frame the cloud saw to the frame being answered (`track_answers`, template matching on the
stream's small frames, tracking.py):
- in the history, a box answer is written where the object is now, in the SVLM input's pixels and on its coordinate
  bin grid, as the SVLM itself answers (`[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]`); after the age tag a note
  says whether the object was found again and how much its region (the whole frame for text answers) changed, in
  percent, a single token for the tiny checkpoints: `[tracked, change 4]`, `[lost, change 37]`, `[change 12]`;
- the focus crop centres on the tracked boxes; a lost box falls back to the cloud's box widened by the age margin;
- a region question ("Where is the red circle?") is answered from the box of its object, which the link asks the
  cloud for beside it (region_questions.py), tracked to this frame (`track_region`).
With tracking off, the answer is written as the cloud gave it and the crop is the cloud's box widened by the age
margin: the paper's method.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from python_backends.context.focus import FocusConfig, FocusMode, FocusPlan, focus_source, plan_focus
from python_backends.context.focus import relevant_detections
from python_backends.context.replacement import (
    DEFAULT_BUDGET,
    AnswerOverride,
    ReplacedHistory,
    ReplacementConfig,
    TokenBudget,
    build_history,
)
from python_backends.context.region_questions import RegionQuestions, carried_region
from python_backends.context.store import CloudResult, TurnRecord, question_key
from python_backends.context.tracking import Box, FrameHistory, region_change, track_box
from python_backends.detections import Detection, scale_box


@dataclass(frozen=True)
class ServedContextConfig:
    replacement: ReplacementConfig = ReplacementConfig()
    focus: FocusConfig = FocusConfig()
    tracking: bool = True  # carry the cloud's boxes to the current frame (False: the paper's method)
    svlm_size: tuple[int, int] = (448, 448)  # (height, width) of the SVLM's input: its boxes are in these pixels
    coordinate_bin: int = 2  # the SVLM writes box corners on multiples of this (training/tokens.py)
    # Boxes tracked per frame over the cloud answers in use (a region question tracks its object's box besides):
    # bounds the per-frame work.
    max_tracked_boxes: int = 4
    region_rules: RegionQuestions = RegionQuestions()  # region questions answered from their object's tracked box

    def __post_init__(self) -> None:
        if self.coordinate_bin < 1:
            raise ValueError(f"coordinate_bin must be >= 1, got {self.coordinate_bin}")
        if self.max_tracked_boxes < 0:
            raise ValueError(f"max_tracked_boxes must not be negative, got {self.max_tracked_boxes}")
        if min(self.svlm_size) < 1:
            raise ValueError(f"svlm_size must be positive, got {self.svlm_size}")


@dataclass(frozen=True)
class TrackedBox:
    detection: Detection  # the cloud's, in the pixels of the image it saw
    box: Box | None  # where it is in the current frame (its pixels); None when lost
    confidence: float


@dataclass(frozen=True)
class AnswerTracking:
    """One cloud answer carried to the current frame."""

    frame_id: int  # the frame the cloud answered
    boxes: tuple[TrackedBox, ...]  # its boxes the question is about, as far as the box budget went
    region_change: float  # in [0, 1]: under those boxes, or over the whole frame for an answer without boxes

    @property
    def tracked(self) -> bool | None:
        """True: every box tracked was found again; False: one was lost; None: no box was tracked."""
        if not self.boxes:
            return None
        return all(b.box is not None for b in self.boxes)

    @staticmethod
    def report_fields(tracking: AnswerTracking | None) -> dict:
        """CONTEXT's tracked, tracked_box (the union of the boxes found, in this frame's pixels, when all were) and
        region_change; all None for no tracking."""
        if tracking is None:
            return {"tracked": None, "tracked_box": None, "region_change": None}
        box = None
        if tracking.tracked:
            box = [round(v) for v in _union([b.box for b in tracking.boxes if b.box is not None])]
        return {"tracked": tracking.tracked, "tracked_box": box, "region_change": round(tracking.region_change, 3)}

    def note(self) -> str:
        change = f"change {int(round(self.region_change * 100))}"
        state = {True: "tracked, ", False: "lost, ", None: ""}[self.tracked]
        return f"[{state}{change}]"


# Where an answer came from (CONTEXT's answer_source): the SVLM, or the cloud's own answer carried to the frame.
SVLM = "svlm"
CLOUD_TEXT = "cloud"
CLOUD_TRACKED = "cloud_tracked"
CLOUD_REGION_TRACKED = "cloud_region_tracked"  # a region answer read off the object's box tracked to the frame


@dataclass(frozen=True)
class CarriedAnswer:
    text: str  # in the SVLM's answer format (boxes in its input's pixels)
    source: str  # CLOUD_TEXT, CLOUD_TRACKED or CLOUD_REGION_TRACKED


@dataclass(frozen=True)
class ContextInput:
    history: ReplacedHistory
    plan: FocusPlan
    focus_result: CloudResult | None = None  # the cloud answer whose boxes the focus crop used
    focus_tracked: bool = False  # the crop centred on tracked boxes
    context_tracking: AnswerTracking | None = None  # the tracking of the history's freshest cloud answer
    tracking: Mapping[int, AnswerTracking] = field(default_factory=dict)
    # The cloud's answer to this very question carried to this frame, in the SVLM's answer format (carried_answer).
    carried_answer: CarriedAnswer | None = None


def _newest_per_frame(results: Sequence[CloudResult], question: str | None = None) -> dict[int, CloudResult]:
    """One answer per frame: the answer to `question` where the cloud answered it on that frame (a frame sent with
    the stream's standing questions has one answer to each), else the later arrival (as context replacement
    chooses)."""
    asked = question_key(question) if question is not None else None
    by_frame: dict[int, CloudResult] = {}
    for result in results:
        kept = by_frame.get(result.frame_id)
        if kept is not None and asked is not None and _answers(kept, asked) and not _answers(result, asked):
            continue
        by_frame[result.frame_id] = result
    return by_frame


def _answers(result: CloudResult, asked: str) -> bool:
    return result.question is not None and question_key(result.question) == asked


def _union(boxes: Sequence[Sequence[float]]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def track_answers(
    frames: FrameHistory | None,
    results: Sequence[CloudResult],
    to_frame_id: int,
    question: str,
    max_boxes: int = ServedContextConfig.max_tracked_boxes,
) -> dict[int, AnswerTracking]:
    """Every cloud answer in `results` carried to frame `to_frame_id`, by the answer's frame id. The boxes the
    question is about are tracked, the focus answer's first, then the newest answers', at most `max_boxes` in all; an
    answer whose frame is no longer buffered is lost, and its change counts as full."""
    if frames is None:
        return {}
    by_frame = _newest_per_frame(results, question)
    source = focus_source(list(by_frame.values()), question)
    order = sorted(by_frame.values(), key=lambda r: r.frame_id, reverse=True)
    if source is not None:
        order = [source] + [r for r in order if r is not source]
    budget, tracked = max_boxes, {}
    for result in order:
        stored = frames.get(result.frame_id)
        relevant = relevant_detections(result.detections, question)
        if stored is None or result.frame_size[0] <= 0 or result.frame_size[1] <= 0:
            lost = tuple(TrackedBox(d, None, 0.0) for d in relevant[: max(0, budget)])
            budget -= len(lost)
            tracked[result.frame_id] = AnswerTracking(result.frame_id, lost, 1.0)
            continue
        # The cloud's boxes are in the pixels of the image it saw; the tracker's in the frame's as the edge got it.
        full = [scale_box(d.bbox, result.frame_size, stored.full_size) for d in relevant]
        boxes = []
        for detection, box in zip(relevant[: max(0, budget)], full, strict=False):
            found = track_box(frames, box, result.frame_id, to_frame_id)
            boxes.append(TrackedBox(detection, found.box, found.confidence))
        budget -= len(boxes)
        change = region_change(frames, _union(full) if full else None, result.frame_id, to_frame_id)
        tracked[result.frame_id] = AnswerTracking(result.frame_id, tuple(boxes), change)
    return tracked


@dataclass(frozen=True)
class RegionTrack:
    """The box of a region question's object, from the cloud's newest answer to the grounding question the link
    asked beside it, carried to the current frame."""

    grounding: CloudResult  # that answer
    cloud_box: Box  # the object's box in it, in the pixels of the image the cloud saw
    box: Box | None  # that box in the current frame's pixels; None when lost


def track_region(
    frames: FrameHistory | None,
    results: Sequence[CloudResult],
    to_frame_id: int,
    question: str,
    rules: RegionQuestions,
) -> RegionTrack | None:
    """For a region question, the cloud's newest answer to the grounding question about its object (asked beside it,
    or standing in the stream on its own), its box for the object tracked to frame `to_frame_id`; None for any other
    question, when no such answer is in `results` or the newest has no box (the object may be gone), or without
    frames to track in."""
    grounding = rules.grounding_question(question)
    if frames is None or grounding is None:
        return None
    asked = question_key(grounding)
    answers = [r for r in results if _answers(r, asked)]
    if not answers:
        return None
    newest = max(answers, key=lambda r: (r.frame_id, r.arrived_s))
    if not newest.detections:
        return None
    name = question_key(rules.object_of(question) or "")
    labelled = [d for d in newest.detections if question_key(d.label) == name]
    cloud_box = (labelled or list(newest.detections))[0].bbox
    stored = frames.get(newest.frame_id)
    if stored is None or min(newest.frame_size) <= 0:
        return RegionTrack(newest, cloud_box, None)
    box = scale_box(cloud_box, newest.frame_size, stored.full_size)
    return RegionTrack(newest, cloud_box, track_box(frames, box, newest.frame_id, to_frame_id).box)


def region_answer(
    track: RegionTrack | None, results: Sequence[CloudResult], question: str, frame_size: tuple[int, int]
) -> CarriedAnswer | None:
    """A region question's answer read off its object's tracked box (carried_region), checked against the cloud's
    own region answer on the box's frame where there is one; None when the object was not tracked here or the two
    disagreed."""
    if track is None or track.box is None:
        return None
    asked = question_key(question)
    named = [r for r in results if r.frame_id == track.grounding.frame_id and _answers(r, asked)]
    cloud_text = named[-1].text if named else None
    region = carried_region(track.cloud_box, track.grounding.frame_size, track.box, frame_size, cloud_text)
    return None if region is None else CarriedAnswer(region, CLOUD_REGION_TRACKED)


def _bin(value: float, coordinate_bin: int, limit: int) -> int:
    return int(min(limit, max(0, round(value / coordinate_bin) * coordinate_bin)))


def binned_box(box: Sequence[float], size: tuple[int, int], coordinate_bin: int) -> list[int]:
    """Corners on the bin grid of an image of `size` (height, width), never collapsing to zero width; the rule of
    training/tokens.py's binned_box, which the training targets use."""
    height, width = size
    x1, x2 = (_bin(v, coordinate_bin, width) for v in (box[0], box[2]))
    y1, y2 = (_bin(v, coordinate_bin, height) for v in (box[1], box[3]))
    if x2 <= x1:
        x1, x2 = (x1, x1 + coordinate_bin) if x1 + coordinate_bin <= width else (x2 - coordinate_bin, x2)
    if y2 <= y1:
        y1, y2 = (y1, y1 + coordinate_bin) if y1 + coordinate_bin <= height else (y2 - coordinate_bin, y2)
    return [x1, y1, x2, y2]


def grounding_text(boxes: Sequence[tuple[Sequence[int], str]]) -> str:
    """Qwen2.5-VL grounding JSON, as the SVLM answers a grounding question (training/tokens.py grounding_answer)."""
    return json.dumps([{"bbox_2d": [int(v) for v in box], "label": label} for box, label in boxes])


def answer_override(
    result: CloudResult, tracking: AnswerTracking, frame_size: tuple[int, int], config: ServedContextConfig
) -> AnswerOverride:
    """How `result` reads in the history of a frame of `frame_size` (height, width): its boxes in the SVLM's pixels,
    each where it was tracked to (a lost or untracked one where the cloud saw it), and the tracking note."""
    if not result.detections:
        return AnswerOverride(text=result.text, note=tracking.note())
    now = {b.detection: b.box for b in tracking.boxes if b.box is not None}
    boxes = []
    for detection in result.detections:
        box = now.get(detection)
        seen = (
            scale_box(box, frame_size, config.svlm_size)
            if box is not None
            else scale_box(detection.bbox, result.frame_size, config.svlm_size)
        )
        boxes.append((binned_box(seen, config.svlm_size, config.coordinate_bin), detection.label))
    return AnswerOverride(text=grounding_text(boxes), note=tracking.note())


def carried_answer(
    result: CloudResult | None,
    tracking: AnswerTracking | None,
    override: AnswerOverride | None,
    question: str,
) -> CarriedAnswer | None:
    """The cloud's answer carried to the current frame, to answer with in place of the SVLM, when `result` answered
    `question` itself (case and spacing aside): a text answer as the cloud gave it; a box answer in the SVLM's pixels
    and answer format (the history's text), written where the objects are now when every box was tracked here
    (CLOUD_TRACKED), else where the cloud saw them (CLOUD_TEXT: the tiny SVLM cannot draw a box, a stale one may
    still overlap). None otherwise, and for an answer that was not tracked at all (tracking off)."""
    if result is None or tracking is None or override is None:
        return None
    if not _answers(result, question_key(question)):
        return None
    if not result.detections:
        return CarriedAnswer(result.text, CLOUD_TEXT)
    if not tracking.tracked or len(tracking.boxes) != len(result.detections):
        return CarriedAnswer(override.text, CLOUD_TEXT)
    return CarriedAnswer(override.text, CLOUD_TRACKED)


def build_context_input(
    image: np.ndarray,
    question: str,
    now_ms: int,
    turns: Sequence[TurnRecord],
    cloud_results: Sequence[CloudResult],
    tracking: Mapping[int, AnswerTracking] | None,
    focus_mode: FocusMode,
    config: ServedContextConfig = ServedContextConfig(),
    budget: TokenBudget = DEFAULT_BUDGET,
    text_context: bool = True,
    region_track: RegionTrack | None = None,
) -> ContextInput:
    """The history turns and focus plan the SVLM gets for `image`, asked `question` at `now_ms`, given the stream's
    turns, the cloud answers in use and their tracking (track_answers and, for a region question, track_region; both
    ignored when config.tracking is off)."""
    tracking = (tracking or {}) if config.tracking else {}
    region_track = region_track if config.tracking else None
    frame_size = image.shape[:2]
    overrides = {
        frame_id: answer_override(result, tracking[frame_id], frame_size, config)
        for frame_id, result in _newest_per_frame(cloud_results, question).items()
        if frame_id in tracking
    }
    history = build_history(
        turns, cloud_results, now_ms, config.replacement, budget, question=question, overrides=overrides
    )
    context_tracking = tracking.get(history.context_frame) if history.context_frame is not None else None
    carried = None
    if history.context_frame is not None:
        override = overrides.get(history.context_frame)
        carried = carried_answer(history.context_result, context_tracking, override, question)
    carried = region_answer(region_track, cloud_results, question, frame_size) or carried
    if not text_context:
        # Focus alone: the history's freshest answer is still named (CONTEXT), but no turn goes to the SVLM.
        history = replace(history, turns=[], replaced_turns=0)

    source = focus_source(cloud_results, question)
    plain = FocusPlan(mode=FocusMode.OFF, box=None, labels=[], images=[image])
    if source is None or focus_mode is FocusMode.OFF:
        return ContextInput(history, plain, None, False, context_tracking, tracking, carried)
    # Centre on the tracked boxes only when every box the question is about was found again.
    track = tracking.get(source.frame_id)
    relevant = relevant_detections(source.detections, question)
    tracked = None
    if track is not None and track.tracked and len(track.boxes) == len(relevant):
        tracked = [Detection(b.detection.label, b.box) for b in track.boxes]
    age_ms = max(0, now_ms - source.frame_timestamp_ms)
    plan = plan_focus(
        image, source.detections, source.frame_size, question, age_ms, focus_mode, config.focus, tracked=tracked
    )
    used = source if plan.mode is not FocusMode.OFF else None
    focus_tracked = used is not None and tracked is not None
    return ContextInput(history, plan, used, focus_tracked, context_tracking, tracking, carried)
