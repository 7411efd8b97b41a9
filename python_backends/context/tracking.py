"""Carrying a box from the frame the cloud answered about to the frame the edge sees now.

The cloud's answer is seconds old; the edge keeps a small colour copy of each recent frame (FrameHistory, bounded)
and finds the answer's box again in the current frame by normalised cross-correlation of the box's patch in the
cloud's frame, with a rim of background around it (OpenCV's matchTemplate over the three colour channels). Two ways,
both on the small frames:
  - "direct": one match in the current frame, in a window around the old box that grows with the age (an object
    moves at most `max_speed` frame sides a second), up to the whole frame;
  - "chain": one match in every buffered frame in between, each in a small window around the previous position, so
    an object is followed through its path rather than looked for anywhere (a look-alike far away cannot win).
load_tests/tracking_bench.py measures both; DEFAULT_METHOD, the colour, the rim and the frames' side are what it
chose on the benchmark's validation scenes. A box whose best match is weaker than `min_confidence` (the object left,
was covered or changed) is reported lost, never guessed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in the pixels of the full frame

METHODS = ("direct", "chain")
# Chosen by load_tests/tracking_bench.py: as accurate as "chain" on a lone object, and its cost does not grow
# with the age; "chain" is kept for scenes with look-alikes near the object.
DEFAULT_METHOD = "direct"
# Below this correlation the box is lost: a textured background under a vanished object matched at most ~0.4
# in the generated clips, the object itself 0.9 and more.
MIN_CONFIDENCE = 0.6
# How fast an object may move, in frame sides per second (the search window of "direct" grows by this).
MAX_SPEED = 0.5
# A patch smaller than this (small-frame pixels) is widened around its centre, so there is something to match.
MIN_PATCH = 8
# The patch matched is the box widened by this fraction of its size on each side (at least RIM_MIN small-frame
# pixels): a flat-coloured object filling its box (a square) has no texture inside it to correlate, its outline does.
RIM = 0.15
RIM_MIN = 1.5
# The small copies' longer side: with colour, objects of 5% of the frame's side stay matchable at 96 px.
DEFAULT_SIDE = 96


@dataclass(frozen=True)
class StoredFrame:
    frame_id: int
    timestamp_ms: int
    pixels: np.ndarray  # uint8 RGB [h, w, 3] (or grey [h, w] for a grey stream), longer side at most max_side
    scale: float  # small-frame pixels per full-frame pixel
    full_size: tuple[int, int]  # (height, width) of the frame as added


@dataclass(frozen=True)
class TrackResult:
    box: Box | None  # in the full frame of `to_frame_id`; None when lost
    confidence: float  # the match's correlation, in [0, 1]
    lost: bool
    method: str


class FrameHistory:
    """The last `max_frames` frames of one stream as small colour images, oldest first; memory is bounded by
    3 * max_frames * max_side**2 bytes (`nbytes` is what it holds now)."""

    def __init__(self, max_frames: int = 100, max_side: int = DEFAULT_SIDE) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if max_side < MIN_PATCH * 2:
            raise ValueError(f"max_side must be >= {MIN_PATCH * 2}, got {max_side}")
        self.max_frames, self.max_side = max_frames, max_side
        self._frames: deque[StoredFrame] = deque(maxlen=max_frames)

    def add(self, frame_id: int, timestamp_ms: int, rgb: np.ndarray) -> StoredFrame:
        """Keeps a small copy of an RGB (or grey) uint8 frame; the oldest one goes when the buffer is full."""
        return self.append(small_frame(frame_id, timestamp_ms, rgb, self.max_side))

    def append(self, stored: StoredFrame) -> StoredFrame:
        """Keeps a frame already made small (`small_frame`), so a caller can shrink it outside its own lock."""
        self._frames.append(stored)
        return stored

    def get(self, frame_id: int) -> StoredFrame | None:
        for stored in reversed(self._frames):
            if stored.frame_id == frame_id:
                return stored
        return None

    def between(self, from_frame_id: int, to_frame_id: int) -> list[StoredFrame]:
        """The buffered frames after `from_frame_id` up to and including `to_frame_id`, in order of arrival."""
        ids = [f.frame_id for f in self._frames]
        if from_frame_id not in ids or to_frame_id not in ids:
            return []
        start, end = ids.index(from_frame_id), ids.index(to_frame_id)
        return list(self._frames)[start + 1 : end + 1]

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        return sum(f.pixels.nbytes for f in self._frames)


def small_frame(frame_id: int, timestamp_ms: int, rgb: np.ndarray, max_side: int) -> StoredFrame:
    """A small copy of an RGB (or grey) uint8 frame, its longer side at most `max_side` pixels. Colour is kept:
    objects of one shape and brightness differ by it."""
    if rgb.ndim == 3:
        pixels = np.ascontiguousarray(rgb[..., :3])
    elif rgb.ndim == 2:
        pixels = rgb
    else:
        raise ValueError(f"a frame must be [height, width(, channels)], got shape {list(rgb.shape)}")
    height, width = pixels.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return StoredFrame(int(frame_id), int(timestamp_ms), np.ascontiguousarray(pixels, dtype=np.uint8), scale,
                       (height, width))  # fmt: skip


def _to_small(box: Box, frame: StoredFrame) -> np.ndarray:
    return np.asarray(box, dtype=np.float64) * frame.scale


def _clip(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    return np.clip(box, 0, [width, height, width, height])


def _patch_region(box: np.ndarray, shape: tuple[int, ...], rim: float = 0.0) -> tuple[int, int, int, int]:
    """Integer x1, y1, x2, y2 of the patch to match: the box with a rim of `rim` times its size on each side (at
    least RIM_MIN pixels when `rim` > 0), widened to MIN_PATCH around its centre if smaller."""
    shape = shape[:2]
    if rim > 0:
        pad_x = max(RIM_MIN, rim * (box[2] - box[0]))
        pad_y = max(RIM_MIN, rim * (box[3] - box[1]))
        box = np.asarray(box, dtype=np.float64) + np.array([-pad_x, -pad_y, pad_x, pad_y])
    x1, y1, x2, y2 = _clip(box, shape)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = max(x2 - x1, MIN_PATCH) / 2, max(y2 - y1, MIN_PATCH) / 2
    height, width = shape
    left, top = int(round(max(0, cx - half_w))), int(round(max(0, cy - half_h)))
    right, bottom = int(round(min(width, cx + half_w))), int(round(min(height, cy + half_h)))
    return left, top, right, bottom


def _match(template: np.ndarray, image: np.ndarray, centre: tuple[float, float], margin: float):
    """Best (score, x, y) of `template`'s top-left corner in `image` within `margin` pixels of where it was
    (`centre` is that old top-left corner); None when the window cannot hold the template."""
    t_h, t_w = template.shape[:2]
    height, width = image.shape[:2]
    x0, y0 = centre
    left, top = int(max(0, np.floor(x0 - margin))), int(max(0, np.floor(y0 - margin)))
    right, bottom = int(min(width, np.ceil(x0 + margin) + t_w)), int(min(height, np.ceil(y0 + margin) + t_h))
    if right - left < t_w or bottom - top < t_h:
        return None
    scores = cv2.matchTemplate(image[top:bottom, left:right], template, cv2.TM_CCOEFF_NORMED)
    _, best, _, (bx, by) = cv2.minMaxLoc(scores)
    # A flat patch (no texture) correlates with nothing: OpenCV gives inf or nan there.
    best = float(best) if np.isfinite(best) else 0.0
    return best, left + bx, top + by


def track_box(
    history: FrameHistory,
    box: Box,
    from_frame_id: int,
    to_frame_id: int,
    method: str = DEFAULT_METHOD,
    min_confidence: float = MIN_CONFIDENCE,
    max_speed: float = MAX_SPEED,
    rim: float = RIM,
) -> TrackResult:
    """Where `box` (in `from_frame_id`'s full frame) is in `to_frame_id`'s full frame. Lost when either frame is no
    longer buffered or the best match is weaker than `min_confidence`. `rim`: the background matched around the box,
    as a fraction of its size."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    source, target = history.get(from_frame_id), history.get(to_frame_id)
    if source is None or target is None:
        return TrackResult(None, 0.0, True, method)
    small = _to_small(box, source)
    left, top, right, bottom = _patch_region(small, source.pixels.shape, rim)
    if right - left < 2 or bottom - top < 2:
        return TrackResult(None, 0.0, True, method)
    template = source.pixels[top:bottom, left:right]
    # Where the box sits inside its patch, so the found patch gives back the box of the same size.
    offset = small - np.array([left, top, left, top], dtype=np.float64)
    if from_frame_id == to_frame_id:
        return TrackResult(tuple(float(v) for v in box), 1.0, False, method)  # type: ignore[arg-type]
    if target.pixels.shape != source.pixels.shape:  # the stream changed resolution in between
        return TrackResult(None, 0.0, True, method)
    side = max(source.pixels.shape[:2])
    corner: tuple[float, float] = (float(left), float(top))
    if method == "direct":
        age_s = max(0.0, (target.timestamp_ms - source.timestamp_ms) / 1000)
        found = _match(template, target.pixels, corner, MIN_PATCH / 2 + max_speed * side * age_s)
    else:
        found, since_ms = None, source.timestamp_ms
        for frame in history.between(from_frame_id, to_frame_id):
            if frame.pixels.shape != source.pixels.shape:
                return TrackResult(None, 0.0, True, method)
            # The window covers the motion since the last good match, so a frame or two of occlusion is bridged.
            step_s = max(0.0, (frame.timestamp_ms - since_ms) / 1000)
            step = _match(template, frame.pixels, corner, MIN_PATCH / 2 + max_speed * side * step_s)
            found = step
            if step is not None and step[0] >= min_confidence:
                corner, since_ms = (float(step[1]), float(step[2])), frame.timestamp_ms
    if found is None:
        return TrackResult(None, 0.0, True, method)
    score, x, y = found
    confidence = float(np.clip(score, 0.0, 1.0))
    if confidence < min_confidence:
        return TrackResult(None, confidence, True, method)
    moved = (np.array([x, y, x, y], dtype=np.float64) + offset) / target.scale
    height, width = target.full_size
    moved = np.clip(moved, 0, [width, height, width, height])
    return TrackResult(tuple(float(v) for v in moved), confidence, False, method)  # type: ignore[arg-type]


def region_change(history: FrameHistory, box: Box | None, from_frame_id: int, to_frame_id: int) -> float:
    """How much the region under `box` (the whole frame when None) changed between two buffered frames: the mean
    absolute difference of its pixels, in [0, 1]. A frame no longer buffered counts as a full change (1.0)."""
    source, target = history.get(from_frame_id), history.get(to_frame_id)
    if source is None or target is None or source.pixels.shape != target.pixels.shape:
        return 1.0
    if box is None:
        before, after = source.pixels, target.pixels
    else:
        left, top, right, bottom = _patch_region(_to_small(box, source), source.pixels.shape)
        if right <= left or bottom <= top:
            return 1.0
        before, after = source.pixels[top:bottom, left:right], target.pixels[top:bottom, left:right]
    return float(cv2.absdiff(before, after).mean() / 255.0)
