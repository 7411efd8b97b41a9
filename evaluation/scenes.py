"""Deterministic synthetic videos with per-frame ground truth: the scenes of the replay benchmark.

A scene is a short video (10 fps by default) of coloured shapes over a plain or noisy background. Objects move and
bounce off the frame's edges, some are small, some change colour or shape mid-video, and some enter or leave the frame,
so an answer that was right a second ago can be wrong now: what context transfer has to cope with.

Everything is drawn from one `numpy.random.Generator` seeded with the scene's seed, and drawn without anti-aliasing, so
the same seed gives bit-identical frames and ground truth on every run.

Ground truth (`ObjectTruth`) is computed from the pixels actually drawn: an object's box is the tight box of its
visible pixels (clipped by the frame, minus what other objects cover), x2/y2 exclusive, and `visible_fraction` is the
share of its pixels that can be seen. An object counts as present when at least half of it is visible.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

# Bumped whenever the same seed and config would give different frames or truth: caches key on it.
GENERATOR_VERSION = 1

SHAPES = ("circle", "square", "triangle", "star")
# Saturated colours, far apart from each other and from the grey backgrounds, so that a colour is never ambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 200),
    "white": (245, 245, 245),
}
BACKGROUNDS = ("plain", "noise")
# An object at least this visible is present: questions are only asked about present objects.
PRESENT_FRACTION = 0.5
MIN_SIDE, MAX_SIDE = 96, 1024
# A leaving object moves out at least this fast (fraction of the shorter side per frame).
EXIT_SPEED = 0.015


def object_labels(shapes: tuple[str, ...] = SHAPES, colours: tuple[str, ...] = tuple(COLOURS)) -> list[str]:
    """Every label an object of the generated scenes can have ("red circle", ...), colour by colour."""
    return [f"{colour} {shape}" for colour in colours for shape in shapes]


@dataclass(frozen=True)
class SceneConfig:
    """How a scene looks and moves. Sizes and speeds scale with the frame's shorter side."""

    width: int = 320
    height: int = 240
    fps: float = 10.0
    seconds: float = 20.0
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    background: str = "plain"  # "plain" or "noise" (a static texture)
    initial_objects: tuple[int, int] = (2, 5)  # inclusive range of objects in frame 0
    max_objects: int = 6  # at once; an object due to enter when the frame is full never appears
    entries_per_10s: float = 2.0  # mean number of objects entering during 10 s
    leave_probability: float = 0.35  # chance that an object leaves the frame before the video ends
    change_probability: float = 0.3  # chance that an object changes colour or shape once
    small_probability: float = 0.3
    static_probability: float = 0.15  # objects that do not move (until they leave)
    normal_size: tuple[float, float] = (0.12, 0.22)  # side of an object's square, as a fraction of the shorter side
    small_size: tuple[float, float] = (0.05, 0.08)
    speed: tuple[float, float] = (0.004, 0.02)  # per frame, as a fraction of the shorter side

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or not MIN_SIDE <= value <= MAX_SIDE:
                raise ValueError(f"{name} must be an integer from {MIN_SIDE} to {MAX_SIDE}, got {value!r}")
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if not self.seconds > 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")
        if not self.shapes or any(s not in SHAPES for s in self.shapes):
            raise ValueError(f"shapes must be a non-empty subset of {SHAPES}, got {self.shapes}")
        if not self.colours or any(c not in COLOURS for c in self.colours):
            raise ValueError(f"colours must be a non-empty subset of {tuple(COLOURS)}, got {self.colours}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        low, high = self.initial_objects
        if not 0 <= low <= high <= self.max_objects:
            raise ValueError(
                f"initial_objects {self.initial_objects} must lie within 0..max_objects ({self.max_objects})"
            )

    @property
    def num_frames(self) -> int:
        return max(1, int(round(self.seconds * self.fps)))


@dataclass(frozen=True)
class ObjectTruth:
    """One visible object in one frame."""

    object_id: int
    shape: str
    colour: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels, x2/y2 exclusive: the visible pixels' tight box
    visible_fraction: float  # visible pixels / pixels of the whole shape (clipping and occlusion both hide pixels)
    small: bool

    @property
    def label(self) -> str:
        """What a grounded model calls it: "red circle"."""
        return f"{self.colour} {self.shape}"

    @property
    def present(self) -> bool:
        return self.visible_fraction >= PRESENT_FRACTION

    def to_json(self) -> dict:
        return {
            "id": self.object_id,
            "shape": self.shape,
            "colour": self.colour,
            "box": list(self.box),
            "visible_fraction": self.visible_fraction,
            "small": self.small,
        }


@dataclass(frozen=True)
class SceneEvent:
    """Something that changes the answers: an object entering, leaving, or changing colour or shape."""

    frame_index: int
    object_id: int
    kind: str  # "enter" | "leave" | "colour" | "shape"
    old: str | None = None
    new: str | None = None

    def to_json(self) -> dict:
        return {"frame_index": self.frame_index, "object_id": self.object_id, "kind": self.kind, "old": self.old,
                "new": self.new}  # fmt: skip


@dataclass
class _Track:
    """One object's whole life: its top-left corner, shape and colour in every frame (None where it is absent)."""

    object_id: int
    side: int
    small: bool
    start: int
    positions: list[tuple[float, float] | None]
    shapes: list[str]
    colours: list[str]


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


class Scene:
    """A deterministic synthetic video: `render(i)` gives frame i (UINT8 [H, W, 3]) and its ground truth."""

    def __init__(self, seed: int, config: SceneConfig | None = None) -> None:
        self.seed = int(seed)
        self.config = config or SceneConfig()
        rng = np.random.default_rng(self.seed)
        self.background = _background(self.config, rng)
        self._tracks, self.events = _simulate(self.config, rng)

    @property
    def num_frames(self) -> int:
        return self.config.num_frames

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.config.width, self.config.height

    def time_s(self, index: int) -> float:
        return round(index / self.config.fps, 6)

    def render(self, index: int) -> tuple[np.ndarray, list[ObjectTruth]]:
        """Frame `index` and every object with at least one visible pixel in it, ordered by object id."""
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} is outside 0..{self.num_frames - 1}")
        height, width = self.config.height, self.config.width
        # Which object owns each pixel (0: background); later objects are drawn on top of earlier ones.
        owner = np.zeros((height, width), dtype=np.int16)
        drawn: list[tuple[_Track, str, str, int, tuple[int, int]]] = []
        for track in self._tracks:
            position = track.positions[index]
            if position is None:
                continue
            shape, colour = track.shapes[index], track.colours[index]
            mask = _mask(shape, track.side)
            x0, y0 = (int(math.floor(v + 0.5)) for v in position)
            fx1, fy1 = max(0, x0), max(0, y0)
            fx2, fy2 = min(width, x0 + track.side), min(height, y0 + track.side)
            if fx1 < fx2 and fy1 < fy2:
                part = mask[fy1 - y0 : fy2 - y0, fx1 - x0 : fx2 - x0]
                owner[fy1:fy2, fx1:fx2][part] = track.object_id + 1
            drawn.append((track, shape, colour, int(mask.sum()), (x0, y0)))
        frame = self.background.copy()
        truth = []
        for track, shape, colour, area, (x0, y0) in drawn:
            # Only the object's own square can hold its pixels: search there, not the whole frame.
            fx1, fy1 = max(0, x0), max(0, y0)
            fx2, fy2 = min(width, x0 + track.side), min(height, y0 + track.side)
            if fx1 >= fx2 or fy1 >= fy2:
                continue
            mine = owner[fy1:fy2, fx1:fx2] == track.object_id + 1
            visible = int(mine.sum())
            if visible == 0:
                continue
            frame[fy1:fy2, fx1:fx2][mine] = COLOURS[colour]
            rows, cols = np.nonzero(mine)
            box = (fx1 + int(cols.min()), fy1 + int(rows.min()), fx1 + int(cols.max()) + 1, fy1 + int(rows.max()) + 1)
            truth.append(
                ObjectTruth(
                    object_id=track.object_id,
                    shape=shape,
                    colour=colour,
                    box=box,
                    visible_fraction=round(visible / area, 4),
                    small=track.small,
                )
            )
        return frame, truth

    def truth(self, index: int) -> list[ObjectTruth]:
        return self.render(index)[1]

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, list[ObjectTruth]]]:
        for index in range(self.num_frames):
            frame, truth = self.render(index)
            yield index, frame, truth

    def describe(self) -> dict:
        """The scene's seed, settings and events, as JSON-ready data."""
        config = self.config
        return {
            "generator_version": GENERATOR_VERSION,
            "seed": self.seed,
            "width": config.width,
            "height": config.height,
            "fps": config.fps,
            "num_frames": self.num_frames,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
            "events": [e.to_json() for e in self.events],
        }


@lru_cache(maxsize=256)
def _mask(shape: str, side: int) -> np.ndarray:
    """The shape's pixels inside a side x side square (bool, read-only: it is shared through the cache)."""
    image = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(image)
    last = side - 1
    if shape == "circle":
        draw.ellipse((0, 0, last, last), fill=255)
    elif shape == "square":
        draw.rectangle((0, 0, last, last), fill=255)
    elif shape == "triangle":
        draw.polygon([(last // 2, 0), (last, last), (0, last)], fill=255)
    elif shape == "star":
        centre, outer = last / 2, last / 2
        points = []
        for k in range(10):
            radius = outer if k % 2 == 0 else outer * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append(
                (int(round(centre + radius * math.cos(angle))), int(round(centre + radius * math.sin(angle))))
            )
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask = np.asarray(image) > 0
    mask.flags.writeable = False
    return mask


def _background(config: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    # A muted grey with a slight tint: every object colour stands out against it.
    grey = rng.uniform(80, 140)
    tint = rng.uniform(-12, 12, size=3)
    base = np.broadcast_to(grey + tint, (config.height, config.width, 3)).astype(np.float64)
    if config.background == "noise":
        # Static texture: smooth blotches (coarse noise, bilinearly upsampled) plus fine grain.
        coarse = rng.normal(0, 14, size=(config.height // 16 + 2, config.width // 16 + 2)).astype(np.float32)
        blotches = Image.fromarray(coarse).resize((config.width, config.height), Image.Resampling.BILINEAR)
        base = base + np.asarray(blotches, dtype=np.float64)[..., None]
        base = base + rng.normal(0, 5, size=(config.height, config.width, 1))
    return np.ascontiguousarray(np.clip(np.rint(base), 0, 255).astype(np.uint8))


def _simulate(config: SceneConfig, rng: np.random.Generator) -> tuple[list[_Track], tuple[SceneEvent, ...]]:
    """Every object's track, decided up front; objects do not interact, so each track is simulated on its own."""
    frames = config.num_frames
    width, height = config.width, config.height
    unit = min(width, height)
    initial = int(rng.integers(config.initial_objects[0], config.initial_objects[1] + 1))
    entering = int(rng.poisson(config.entries_per_10s * config.seconds / 10.0)) if frames > 1 else 0
    starts = [0] * initial + sorted(int(rng.integers(1, frames)) for _ in range(entering))

    tracks: list[_Track] = []
    events: list[SceneEvent] = []
    for start in starts:
        small = bool(rng.random() < config.small_probability)
        side = max(6, int(round(_uniform(rng, config.small_size if small else config.normal_size) * unit)))
        shape = str(rng.choice(config.shapes))
        colour = str(rng.choice(config.colours))
        static = start == 0 and bool(rng.random() < config.static_probability)
        speed = 0.0 if static else _uniform(rng, config.speed) * unit
        angle = _uniform(rng, (0.0, 2 * math.pi))
        leave_from = max(start + 1, frames // 4)
        leave = None
        if leave_from < frames and rng.random() < config.leave_probability:
            leave = int(rng.integers(leave_from, frames))
        change = None
        if rng.random() < config.change_probability and (leave or frames) - start >= 3:
            change = (int(rng.integers(start + 1, leave or frames)), "colour" if rng.random() < 0.5 else "shape")
        if start == 0:
            x, y = _uniform(rng, (0, width - side)), _uniform(rng, (0, height - side))
            vx, vy = speed * math.cos(angle), speed * math.sin(angle)
            phase = "resident"
        else:
            x, y, vx, vy = _entry(rng, side, width, height, max(speed, 0.01 * unit))
            phase = "entering"
        # A frame that is already full turns the newcomer away; see SceneConfig.max_objects.
        active_at_start = sum(1 for t in tracks if t.positions[start] is not None)
        if active_at_start >= config.max_objects:
            continue
        object_id = len(tracks)
        positions: list[tuple[float, float] | None] = [None] * frames
        # Fast enough to be out within about 4 s from anywhere (see _exit_velocity).
        min_exit_speed = EXIT_SPEED * unit
        for index in range(start, frames):
            positions[index] = (x, y)
            if leave is not None and index + 1 == leave and phase == "resident":
                phase = "leaving"
                vx, vy = _exit_velocity(x, y, vx, vy, side, width, height, min_exit_speed)
                events.append(SceneEvent(leave, object_id, "leave"))
            x, y = x + vx, y + vy
            if phase == "leaving":
                if x >= width or y >= height or x + side <= 0 or y + side <= 0:
                    break
                continue
            if phase == "entering" and 0 <= x <= width - side and 0 <= y <= height - side:
                phase = "resident"
            if phase == "resident":
                x, vx = _reflect(x, vx, width - side)
                y, vy = _reflect(y, vy, height - side)
            else:
                # Still sliding in: keep it from escaping sideways along the edge it enters by.
                if 0 <= x <= width - side:
                    x, vx = _reflect(x, vx, width - side)
                if 0 <= y <= height - side:
                    y, vy = _reflect(y, vy, height - side)
        shapes = [shape] * frames
        colours = [colour] * frames
        if change is not None and positions[change[0]] is not None:
            at, kind = change
            if kind == "colour" and len(config.colours) > 1:
                new = str(rng.choice([c for c in config.colours if c != colour]))
                colours[at:] = [new] * (frames - at)
                events.append(SceneEvent(at, object_id, "colour", colour, new))
            elif kind == "shape" and len(config.shapes) > 1:
                new = str(rng.choice([s for s in config.shapes if s != shape]))
                shapes[at:] = [new] * (frames - at)
                events.append(SceneEvent(at, object_id, "shape", shape, new))
        if start > 0:
            events.append(SceneEvent(start, object_id, "enter"))
        tracks.append(_Track(object_id, side, small, start, positions, shapes, colours))
    events.sort(key=lambda e: (e.frame_index, e.object_id, e.kind))
    return tracks, tuple(events)


def _reflect(position: float, velocity: float, span: float) -> tuple[float, float]:
    """Bounce off the walls at 0 and span."""
    if span <= 0:
        return 0.0, 0.0
    if position < 0:
        return min(-position, span), -velocity
    if position > span:
        return max(2 * span - position, 0.0), -velocity
    return position, velocity


def _entry(
    rng: np.random.Generator, side: int, width: int, height: int, speed: float
) -> tuple[float, float, float, float]:
    """Start just outside a random edge, a sliver already showing, heading in."""
    edge = int(rng.integers(0, 4))
    inward = max(speed * _uniform(rng, (0.6, 1.0)), 1.0)
    along = speed * _uniform(rng, (-0.5, 0.5))
    if edge == 0:  # left
        return -side + inward, _uniform(rng, (0, height - side)), inward, along
    if edge == 1:  # right
        return width - inward, _uniform(rng, (0, height - side)), -inward, along
    if edge == 2:  # top
        return _uniform(rng, (0, width - side)), -side + inward, along, inward
    return _uniform(rng, (0, width - side)), height - inward, along, -inward  # bottom


def _exit_velocity(
    x: float, y: float, vx: float, vy: float, side: int, width: int, height: int, min_speed: float
) -> tuple[float, float]:
    """Head out through the nearest edge at min_speed or faster. The nearest edge is at most half the shorter side
    away, so an object is gone within (shorter side / 2 + its side) / min_speed frames."""
    distances = {"left": x, "right": width - side - x, "top": y, "bottom": height - side - y}
    edge = min(distances, key=lambda k: (distances[k], k))
    if edge == "left":
        return -max(abs(vx), min_speed), vy
    if edge == "right":
        return max(abs(vx), min_speed), vy
    if edge == "top":
        return vx, -max(abs(vy), min_speed)
    return vx, max(abs(vy), min_speed)
