"""Visual focus: spend the SVLM's few visual tokens where the LVLM found the objects.

The LVLM's grounded detections for an earlier frame are filtered to those the question is about, mapped to the current
frame's pixels and widened by a margin that grows with the context's age (the objects have moved since). The SVLM then
sees a full-resolution crop of that region, alone or beside a downscaled full frame.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, TypeVar

import numpy as np
from PIL import Image

from python_backends.context.store import question_key
from python_backends.detections import Detection
from python_backends.errors import InputError


class FocusMode(str, Enum):
    OFF = "off"
    CROP_ONLY = "crop_only"
    CROP_AND_FRAME = "crop_and_frame"


_AUTO = ("", "auto")


def parse_focus_mode(value: str | None, default: FocusMode) -> FocusMode:
    """The `focus` request parameter: None, "" and "auto" mean the model's configured default."""
    if value is None:
        return default
    text = str(value).strip().lower()
    if text in _AUTO:
        return default
    for mode in FocusMode:
        if text == mode.value:
            return mode
    allowed = ", ".join(["auto"] + [m.value for m in FocusMode])
    raise InputError(f"focus must be one of {allowed}; got {value!r}")


@dataclass(frozen=True)
class FocusConfig:
    margin: float = 0.10  # base margin, as a fraction of the box's size on each side
    margin_per_s: float = 0.15  # extra margin fraction per second of context age (objects move)
    max_margin: float = 1.0
    min_size: int = 32  # the crop is at least this many pixels on each side (clipped to the image)
    frame_side: int = 448  # in crop_and_frame, the full frame is downscaled so its longer side is at most this
    # Focus only questions this regular expression finds (case aside; empty: every question). A model that learned
    # crops for some kinds of question only (the trained tiny edge: recognition) answers others worse with one, and
    # a crop cannot tell where in the frame something is or how many there are in all.
    question_pattern: str = ""

    def __post_init__(self) -> None:
        if self.margin < 0 or self.margin_per_s < 0:
            raise ValueError("margin and margin_per_s must not be negative")
        if self.max_margin < self.margin:
            raise ValueError(f"max_margin ({self.max_margin}) must be at least margin ({self.margin})")
        if self.min_size < 1 or self.frame_side < 1:
            raise ValueError("min_size and frame_side must be at least 1")
        try:
            re.compile(self.question_pattern)
        except re.error as exc:
            raise ValueError(f"question_pattern {self.question_pattern!r} is not a regular expression: {exc}") from None

    def focuses_on(self, question: str) -> bool:
        return not self.question_pattern or re.search(self.question_pattern, question, re.IGNORECASE) is not None


@dataclass(frozen=True)
class FocusPlan:
    mode: FocusMode  # the mode actually applied (OFF when there is nothing to focus on)
    box: tuple[int, int, int, int] | None  # x1, y1, x2, y2 in current-frame pixels, x2/y2 exclusive
    labels: list[str] = field(default_factory=list)  # labels of the detections used
    images: list[np.ndarray] = field(default_factory=list)  # [frame] | [crop] | [downscaled frame, crop]


# Words that say nothing about which object a label names ("cup of coffee" must not match every "of").
_STOPWORDS = frozenset({"a", "an", "the", "of", "on", "in", "at", "with", "and", "or", "to", "for"})
_WORD = re.compile(r"[a-z0-9]+")
_EPS = 1e-6


def _forms(word: str) -> set[str]:
    """The word and its candidate singulars. Matching on overlapping forms handles "horses"/"horse" as well as
    "boxes"/"box" and "berries"/"berry" without a stemmer."""
    forms = {word}
    if word.endswith("ies") and len(word) > 4:
        forms.add(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        forms.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        forms.add(word[:-1])
    return forms


def mentioned_detections(detections: Sequence[Detection], question: str) -> list[Detection]:
    """The detections whose label the question mentions (possibly none)."""
    question_forms: set[str] = set()
    for word in _WORD.findall(question.lower()):
        question_forms |= _forms(word)
    matched = []
    for detection in detections:
        words = [w for w in _WORD.findall(detection.label.lower()) if w not in _STOPWORDS]
        if any(_forms(w) & question_forms for w in words):
            matched.append(detection)
    return matched


def relevant_detections(detections: Sequence[Detection], question: str) -> list[Detection]:
    """The detections whose label the question mentions; all of them when it mentions none (a generic question such
    as "what is happening?" is about the whole scene the LVLM grounded)."""
    return mentioned_detections(detections, question) or list(detections)


class _Boxed(Protocol):
    frame_id: int
    arrived_s: float
    detections: Sequence[Detection]
    question: str | None


B = TypeVar("B", bound=_Boxed)


def focus_source(results: Sequence[B], question: str) -> B | None:
    """The cloud answer whose boxes visual focus uses: the newest whose boxes the question names, else the newest with
    any boxes (None when none has boxes). Boxes answer any later question about their object, whatever question
    brought them, so unlike context replacement this looks past the question asked."""
    named = [r for r in results if mentioned_detections(r.detections, question)]
    pool = named or [r for r in results if r.detections]
    key = question_key(question)

    def rank(result: B) -> tuple[int, bool, float]:
        # The newest frame; of one frame's answers (the cloud answers every standing question of a frame), the one to
        # the question asked now, then the later arrival (as context replacement chooses).
        asked_now = result.question is not None and question_key(result.question) == key
        return (result.frame_id, asked_now, result.arrived_s)

    return max(pool, key=rank) if pool else None


def focus_margin(age_ms: float, config: FocusConfig = FocusConfig()) -> float:
    """Margin fraction for a context `age_ms` old; non-decreasing in age, capped at max_margin."""
    age_s = max(0.0, float(age_ms)) / 1000.0
    return min(config.max_margin, config.margin + config.margin_per_s * age_s)


def _grow(lo: float, hi: float, size: int, limit: int) -> tuple[float, float]:
    """Widen [lo, hi) around its centre to `size` (at most `limit`), shifted inward rather than cut at an edge."""
    size = min(size, limit)
    if hi - lo >= size:
        return lo, hi
    centre = (lo + hi) / 2.0
    lo, hi = centre - size / 2.0, centre + size / 2.0
    if lo < 0:
        lo, hi = 0.0, float(size)
    elif hi > limit:
        lo, hi = float(limit - size), float(limit)
    return lo, hi


def focus_box(
    detections: Sequence[Detection],
    source_size: tuple[int, int],
    target_size: tuple[int, int],
    age_ms: float,
    config: FocusConfig = FocusConfig(),
) -> tuple[int, int, int, int] | None:
    """The region of the current frame to look at: x1, y1, x2, y2 ints, x2/y2 exclusive; None when there is none.

    `source_size` is the (height, width) of the image the LVLM's boxes refer to, `target_size` that of the current
    frame; the union box is scaled between them, widened by `focus_margin(age_ms)` of its size on each side, grown to
    `min_size` and clipped to the frame.
    """
    if not detections:
        return None
    source_h, source_w = source_size
    target_h, target_w = target_size
    if min(source_h, source_w, target_h, target_w) <= 0:
        return None
    # Multiply before dividing: 56 * 640 / 224 is exactly 160, 56 * (640 / 224) is not.
    x1 = min(d.bbox[0] for d in detections) * target_w / source_w
    y1 = min(d.bbox[1] for d in detections) * target_h / source_h
    x2 = max(d.bbox[2] for d in detections) * target_w / source_w
    y2 = max(d.bbox[3] for d in detections) * target_h / source_h
    # Clip first: the margin is a fraction of what is visible, and a box wholly outside the frame points nowhere.
    x1, x2 = max(0.0, x1), min(float(target_w), x2)
    y1, y2 = max(0.0, y1), min(float(target_h), y2)
    if x2 <= x1 or y2 <= y1:
        return None

    margin = focus_margin(age_ms, config)
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    x1, x2 = max(0.0, x1 - mx), min(float(target_w), x2 + mx)
    y1, y2 = max(0.0, y1 - my), min(float(target_h), y2 + my)
    x1, x2 = _grow(x1, x2, config.min_size, target_w)
    y1, y2 = _grow(y1, y2, config.min_size, target_h)
    # Outward rounding, so the crop never loses a pixel of the box; the epsilon keeps float noise (143.99999999999997)
    # from adding one.
    ix1, iy1 = max(0, math.floor(x1 + _EPS)), max(0, math.floor(y1 + _EPS))
    ix2, iy2 = min(target_w, math.ceil(x2 - _EPS)), min(target_h, math.ceil(y2 - _EPS))
    if ix2 <= ix1 or iy2 <= iy1:
        return None
    return ix1, iy1, ix2, iy2


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """`image` shrunk (bilinear) so its longer side is at most `max_side`; returned as is when it already fits."""
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def plan_focus(
    image: np.ndarray,
    detections: Sequence[Detection],
    source_size: tuple[int, int],
    question: str,
    age_ms: float,
    mode: FocusMode,
    config: FocusConfig = FocusConfig(),
    tracked: Sequence[Detection] | None = None,
) -> FocusPlan:
    """What the SVLM sees for this frame. Falls back to the plain frame (mode OFF) when there is nothing to focus on.
    `tracked`: the cloud's boxes found again in this frame (its pixels); the crop centres on them with the base
    margin only, since they say where the objects are now, not where they were `age_ms` ago."""
    if tracked:
        detections, source_size, age_ms = tracked, image.shape[:2], 0.0
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"image must be a non-empty H x W (x C) array, got shape {tuple(image.shape)}")
    plain = FocusPlan(mode=FocusMode.OFF, box=None, labels=[], images=[image])
    if mode == FocusMode.OFF or not detections or not config.focuses_on(question):
        return plain
    used = relevant_detections(detections, question)
    box = focus_box(used, source_size, image.shape[:2], age_ms, config)
    if box is None:
        return plain
    x1, y1, x2, y2 = box
    # Full resolution, and a copy: the crop must not keep the whole frame alive or change if the frame buffer does.
    crop = np.ascontiguousarray(image[y1:y2, x1:x2]).copy()
    labels = [d.label for d in used]
    if mode == FocusMode.CROP_ONLY:
        return FocusPlan(mode=mode, box=box, labels=labels, images=[crop])
    return FocusPlan(mode=mode, box=box, labels=labels, images=[downscale(image, config.frame_side), crop])
