"""Frame sources for `spotvlm stream`: a video file, a folder of images, or a synthetic moving scene.

Every source is an iterable of UINT8 RGB frames [H, W, 3] (C-contiguous numpy arrays).

- `VideoSource` decodes video files with PyAV (`pip install av`). Its wheels bundle FFmpeg, so no system FFmpeg or
  OpenCV is needed, and it decodes anything FFmpeg does (mp4/H.264, mkv, webm, avi, ...).
- `ImageDirSource` plays the images of a folder in file-name order, as a slide show.
- `SyntheticSource` draws coloured shapes (a car, a ball, a tree) moving smoothly over a photo. It is deterministic per
  seed and endless, and it knows the ground-truth box of every object (`last_objects`), which makes it usable for
  evaluating focus boxes and answers without any data set.

`open_source(kind, arg, seed)` builds one from the CLI's choice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.frames import load_image_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoSource:
    """The frames of a video file, decoded with PyAV; with `loop=True` it starts over at the end (endless)."""

    def __init__(self, path: str | Path, loop: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such video file: {self.path}")
        self.loop = loop

    @property
    def fps(self) -> float | None:
        """The video's average frame rate, if the container states one."""
        import av

        with av.open(str(self.path)) as container:
            rate = container.streams.video[0].average_rate
        return float(rate) if rate else None

    def _decode_once(self) -> Iterator[np.ndarray]:
        import av

        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            # Threaded decoding: a stream's thread must keep up with its fps while other streams decode too.
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                yield np.ascontiguousarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            produced = 0
            for frame in self._decode_once():
                produced += 1
                yield frame
            # A file with no decodable frame would otherwise loop forever without yielding.
            if not self.loop or produced == 0:
                return


class ImageDirSource:
    """The images of a folder (jpg/jpeg/png/bmp/webp) in file-name order; with `loop=True` (default) endless."""

    def __init__(self, directory: str | Path, loop: bool = True) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"no such image folder: {self.directory}")
        self.paths = sorted(p for p in self.directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise ValueError(f"{self.directory} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.loop = loop

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            for path in self.paths:
                yield load_image_file(str(path))
            if not self.loop:
                return


@dataclass(frozen=True)
class _Shape:
    label: str
    kind: str  # "car" | "ball" | "tree": how it is drawn
    color: tuple[int, int, int]
    width: int  # bounding box size in pixels
    height: int
    x0: float  # start position of the box's top-left corner
    y0: float
    vx: float  # pixels per frame
    vy: float


# Kinds cycle in this order when n_objects > 3; labels are what a grounded LVLM would call them.
_KINDS = (
    ("car", "car", (220, 30, 30)),
    ("ball", "ball", (30, 70, 230)),
    ("tree", "tree", (30, 160, 50)),
)


def _bounce(start: float, velocity: float, frame: int, span: float) -> float:
    """Position after `frame` steps of motion reflected between 0 and span (a triangle wave): smooth, deterministic,
    and computable for any frame without replaying the ones before."""
    if span <= 0:
        return 0.0
    period = 2 * span
    pos = (start + velocity * frame) % period
    return pos if pos <= span else period - pos


class SyntheticSource:
    """A synthetic scene: coloured shapes moving smoothly over a photo background, deterministic per seed, endless.

    `last_objects` holds the ground truth of the frame most recently yielded:
    `[{"label": "car", "bbox_2d": [x1, y1, x2, y2]}, ...]` in pixel coordinates (x2/y2 exclusive), the format a
    grounded LVLM such as Qwen2.5-VL answers in. `frame_at(i)` gives frame i and its objects directly.
    """

    def __init__(self, seed: int = 0, size: tuple[int, int] = (240, 320), n_objects: int = 3) -> None:
        height, width = size
        if height < 32 or width < 32:
            raise ValueError(f"size must be at least 32x32, got {size}")
        if n_objects < 0:
            raise ValueError("n_objects must be >= 0")
        self.seed = seed
        self.size = (height, width)
        rng = np.random.default_rng(seed)
        self.background = _background(height, width, rng)
        shapes = []
        for i in range(n_objects):
            label, kind, color = _KINDS[i % len(_KINDS)]
            if kind == "car":
                w, h = int(width * 0.24), int(height * 0.14)
            elif kind == "ball":
                w = h = int(min(width, height) * 0.14)
            else:
                w, h = int(width * 0.14), int(height * 0.30)
            # 1-4 % of the frame's width per frame: visible motion at 10 fps without jumping across the frame.
            speed = rng.uniform(0.01, 0.04) * width
            angle = rng.uniform(0, 2 * math.pi)
            shapes.append(
                _Shape(
                    label=label,
                    kind=kind,
                    color=color,
                    width=w,
                    height=h,
                    x0=float(rng.uniform(0, width - w)),
                    y0=float(rng.uniform(0, height - h)),
                    vx=speed * math.cos(angle),
                    vy=speed * math.sin(angle) * 0.6,  # mostly horizontal motion, as in street scenes
                )
            )
        self.shapes = tuple(shapes)
        self.last_objects: list[dict[str, Any]] = []
        self.frame_index = -1

    def objects_at(self, index: int) -> list[dict[str, Any]]:
        height, width = self.size
        objects = []
        for shape in self.shapes:
            x = int(round(_bounce(shape.x0, shape.vx, index, width - shape.width)))
            y = int(round(_bounce(shape.y0, shape.vy, index, height - shape.height)))
            objects.append({"label": shape.label, "bbox_2d": [x, y, x + shape.width, y + shape.height]})
        return objects

    def frame_at(self, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        from skimage import draw

        frame = self.background.copy()
        objects = self.objects_at(index)
        shape_hw = frame.shape[:2]
        for shape, obj in zip(self.shapes, objects):
            x1, y1, x2, y2 = obj["bbox_2d"]
            if shape.kind == "car":
                body_bottom = y1 + int((y2 - y1) * 0.75)
                rr, cc = draw.rectangle((y1 + (y2 - y1) // 4, x1), (body_bottom - 1, x2 - 1), shape=shape_hw)
                frame[rr, cc] = shape.color
                # A cabin on top and two wheels: enough for "car-like" without any text in the image.
                rr, cc = draw.rectangle((y1, x1 + (x2 - x1) // 4), (y1 + (y2 - y1) // 4, x2 - 1 - (x2 - x1) // 4))
                frame[rr, cc] = shape.color
                radius = max(2, (y2 - y1) // 4)
                for cx in (x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4):
                    rr, cc = draw.disk((y2 - radius, cx), radius, shape=shape_hw)
                    frame[rr, cc] = (25, 25, 25)
            elif shape.kind == "ball":
                radius = (x2 - x1) / 2
                rr, cc = draw.disk((y1 + radius, x1 + radius), radius, shape=shape_hw)
                frame[rr, cc] = shape.color
            else:
                trunk_top = y1 + int((y2 - y1) * 0.75)
                rr, cc = draw.polygon([trunk_top, trunk_top, y1], [x1, x2 - 1, (x1 + x2) / 2], shape=shape_hw)
                frame[rr, cc] = shape.color
                trunk_w = max(2, (x2 - x1) // 5)
                mid = (x1 + x2) // 2
                rr, cc = draw.rectangle((trunk_top, mid - trunk_w // 2), (y2 - 1, mid + trunk_w // 2), shape=shape_hw)
                frame[rr, cc] = (110, 70, 30)
        return frame, objects

    def __iter__(self) -> Iterator[np.ndarray]:
        index = 0
        while True:
            frame, objects = self.frame_at(index)
            self.last_objects = objects
            self.frame_index = index
            yield frame
            index += 1


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """scikit-image's coffee photo resized to the frame, or a gradient if scikit-image's data is unavailable."""
    try:
        from PIL import Image
        from skimage import data

        photo = Image.fromarray(data.coffee())
        # Dimmed and desaturated a little so the shapes stand out the way objects do in a real scene.
        image = np.asarray(photo.resize((width, height), resample=Image.Resampling.BILINEAR), dtype=np.float32)
        image = 0.6 * image + 0.4 * image.mean(axis=-1, keepdims=True)
        return np.ascontiguousarray(np.clip(image * 0.85, 0, 255).astype(np.uint8))
    except Exception:  # a missing sample photo must not stop the stream; fall back to a gradient
        ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
        xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
        tint = rng.uniform(0.3, 0.7, size=3).astype(np.float32)
        image = np.stack([(ys * tint[0] + xs * (1 - tint[0])) * 200 + 30 for _ in range(3)], axis=-1) * tint
        return np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))


def open_source(kind: str, arg: str | None = None, seed: int = 0) -> VideoSource | ImageDirSource | SyntheticSource:
    """`kind` is "video" (arg: file), "images" (arg: folder) or "synthetic" (arg unused; `seed` picks the scene)."""
    if kind == "video":
        if not arg:
            raise ValueError("a video source needs a file path")
        return VideoSource(arg)
    if kind == "images":
        if not arg:
            raise ValueError("an image source needs a folder path")
        return ImageDirSource(arg)
    if kind == "synthetic":
        return SyntheticSource(seed)
    raise ValueError(f"unknown source kind {kind!r} (video, images or synthetic)")
