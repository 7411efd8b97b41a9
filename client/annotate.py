"""A stream's answers drawn on its frames and written as an MP4, so tracking can be judged by looking.

Each frame gets the boxes drawn on it: the edge's box (the first box of its answer), the cloud's late box (the focus
crop spotvlm cut around the cloud's boxes; CONTEXT counts those boxes but does not carry them), the tracked box (the
cloud's boxes found again in this frame) and the synthetic scene's true boxes. A panel under the frame holds the
legend, the context's frame and age, the cloud's state, how much the cloud's region changed since, whether the track
was lost, and the edge's answer, wrapped. A field CONTEXT does not carry draws nothing.

The edge writes its boxes in the pixels of the square it resized the frame to. The annotator does not redo that
mapping: it takes `edge_box(text, (height, width))`, e.g. evaluation.runner.box_in_frame bound to the edge's input
size (`spotvlm stream --annotate` passes that), and with focus crop_only maps into the crop the edge saw.
"""

from __future__ import annotations

import math
import textwrap
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from python_backends.context.report import ContextReport

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in the frame's pixels
EdgeBoxReader = Callable[[str, tuple[int, int]], Box | None]  # answer text, image (height, width) -> box in it

# RGB, as the frames are. Distinct hues, each named in the legend.
EDGE_COLOUR = (0, 220, 255)  # cyan
FOCUS_COLOUR = (255, 0, 255)  # magenta
TRACKED_COLOUR = (0, 255, 0)  # green
LOST_COLOUR = (255, 40, 40)  # red
TRUTH_COLOUR = (255, 255, 255)  # white
TEXT_COLOUR = (235, 235, 235)
PANEL_COLOUR = (24, 24, 24)
LEGEND = (
    ("edge answer", EDGE_COLOUR),
    ("cloud crop (late)", FOCUS_COLOUR),
    ("tracked", TRACKED_COLOUR),
    ("truth", TRUTH_COLOUR),
)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45
_LINE_HEIGHT = 18
_ANSWER_LINES = 3  # the panel's height is fixed (a video's frames share one size): longer answers are cut


@dataclass(frozen=True)
class LabelledBox:
    box: Box
    label: str = ""


@dataclass(frozen=True)
class Overlay:
    """What one frame gets drawn on it; None / empty draws nothing."""

    frame_index: int
    answer: str = ""
    error: str | None = None
    edge_box: Box | None = None
    focus_box: Box | None = None  # the crop spotvlm cut around the cloud's (tracked) boxes
    tracked_box: Box | None = None  # the cloud's boxes found again in this frame (their union)
    track_lost: bool | None = None  # None: tracking off, or no cloud box to track
    region_change: float | None = None  # how much the cloud's region changed since its frame, 0..1
    truth_boxes: tuple[LabelledBox, ...] = ()
    context_frame: int | None = None
    context_age_ms: float | None = None
    cloud_state: str | None = None
    focus_mode: str | None = None


def _box(value: Any) -> Box | None:
    """Four finite numbers as a box (corners put in order), else None."""
    if isinstance(value, Mapping):
        value = value.get("bbox_2d", value.get("bbox", value.get("box")))
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _labelled(items: Any) -> tuple[LabelledBox, ...]:
    if not isinstance(items, (list, tuple)):
        return ()
    found = []
    for item in items:
        box = _box(item)
        if box is not None:
            label = item.get("label", "") if isinstance(item, Mapping) else ""
            found.append(LabelledBox(box, str(label or "")))
    return tuple(found)


def _edge_box(text: str, context: ContextReport, frame_size: tuple[int, int], read: EdgeBoxReader) -> Box | None:
    """The edge's box in the frame's pixels. With focus crop_only the edge saw only the crop: its box is in the crop."""
    crop = _box(context.focus_box) if context.focus_mode == "crop_only" else None
    if crop is None:
        return read(text, frame_size)
    x1, y1, x2, y2 = crop
    inside = read(text, (max(1, round(y2 - y1)), max(1, round(x2 - x1))))
    if inside is None:
        return None
    return inside[0] + x1, inside[1] + y1, inside[2] + x1, inside[3] + y1


def overlay_for(result: Any, frame_size: tuple[int, int], edge_box: EdgeBoxReader | None = None) -> Overlay:
    """The overlay of one client.streaming.FrameResult (anything with its fields) on a frame of `frame_size` (h, w)."""
    context = result.context if isinstance(getattr(result, "context", None), ContextReport) else ContextReport()
    text = result.text or ""
    return Overlay(
        frame_index=result.frame_index,
        answer=text,
        error=result.error,
        edge_box=_edge_box(text, context, frame_size, edge_box) if edge_box is not None and text else None,
        focus_box=_box(context.focus_box),
        tracked_box=_box(context.tracked_box),
        track_lost=(not context.tracked) if isinstance(context.tracked, bool) else None,
        region_change=context.region_change,
        truth_boxes=_labelled(getattr(result, "objects", None)),
        context_frame=context.context_frame,
        context_age_ms=context.context_age_ms,
        cloud_state=context.cloud_state,
        focus_mode=context.focus_mode,
    )


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only."""
    return text.encode("ascii", errors="replace").decode("ascii")


def _put(image: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int]) -> int:
    """Draws one line with its baseline at y; returns its width."""
    text = _ascii(text)
    cv2.putText(image, text, (x, y), _FONT, _FONT_SCALE, colour, 1, cv2.LINE_AA)
    return cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0][0]


def _rectangle(image: np.ndarray, box: Box, colour: tuple[int, int, int], label: str, thickness: int) -> None:
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, x2 = max(0, min(x1, width - 1)), max(0, min(x2, width - 1))
    y1, y2 = max(0, min(y1, height - 1)), max(0, min(y2, height - 1))
    cv2.rectangle(image, (x1, y1), (x2, y2), colour, thickness)
    if label:
        _put(image, label, x1 + 2, y1 - 4 if y1 >= 14 else y1 + 14, colour)


def _status(overlay: Overlay) -> str:
    """The panel's status line: the frame, the context's frame and age, the cloud's state, the focus."""
    if overlay.context_frame is None:
        context = "context none"
    else:
        age = f"{overlay.context_age_ms:.0f} ms" if overlay.context_age_ms is not None else "?"
        context = f"context frame {overlay.context_frame}, age {age}"
    parts = [f"frame {overlay.frame_index}", context, f"cloud {overlay.cloud_state or '-'}"]
    if overlay.region_change is not None:
        parts.append(f"change {overlay.region_change:.2f}")
    if overlay.focus_mode and overlay.focus_mode != "off":
        parts.append(f"focus {overlay.focus_mode}")
    return "  |  ".join(parts)


class FrameAnnotator:
    """Draws an Overlay on a frame: boxes on the frame (scaled up to at least `min_width` pixels wide, so the text
    is readable on small frames), the legend, status and answer in a panel of fixed height below it."""

    def __init__(self, edge_box: EdgeBoxReader | None = None, min_width: int = 640) -> None:
        self.edge_box = edge_box
        self.min_width = min_width

    def scale_for(self, width: int) -> int:
        return max(1, math.ceil(self.min_width / width)) if width > 0 else 1

    @staticmethod
    def panel_height() -> int:
        return _LINE_HEIGHT * (3 + _ANSWER_LINES) + 6

    def annotate(self, frame: np.ndarray, result: Any) -> np.ndarray:
        """`frame` (RGB [H, W, 3], not changed) with `result`'s overlay drawn on it; a new, larger image."""
        return self.draw(frame, overlay_for(result, frame.shape[:2], self.edge_box))

    def draw(self, frame: np.ndarray, overlay: Overlay) -> np.ndarray:
        height, width = frame.shape[:2]
        scale = self.scale_for(width)
        picture = np.ascontiguousarray(frame, dtype=np.uint8)
        if scale > 1:
            picture = cv2.resize(picture, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)
        else:
            picture = picture.copy()

        def scaled(box: Box) -> Box:
            return tuple(v * scale for v in box)  # type: ignore[return-value]

        for truth in overlay.truth_boxes:
            _rectangle(picture, scaled(truth.box), TRUTH_COLOUR, "", 1)
        if overlay.focus_box is not None:
            _rectangle(picture, scaled(overlay.focus_box), FOCUS_COLOUR, "cloud crop", 2)
        if overlay.tracked_box is not None:
            _rectangle(picture, scaled(overlay.tracked_box), TRACKED_COLOUR, "tracked", 2)
        if overlay.edge_box is not None:
            _rectangle(picture, scaled(overlay.edge_box), EDGE_COLOUR, "edge", 2)
        return np.vstack([picture, self._panel(picture.shape[1], overlay)])

    def _panel(self, width: int, overlay: Overlay) -> np.ndarray:
        panel = np.full((self.panel_height(), width, 3), PANEL_COLOUR, dtype=np.uint8)
        x, y = 6, _LINE_HEIGHT
        for name, colour in LEGEND:
            cv2.rectangle(panel, (x, y - 10), (x + 14, y), colour, -1)
            x += 20 + _put(panel, name, x + 20, y, TEXT_COLOUR) + 12
        y += _LINE_HEIGHT
        x = 6 + _put(panel, _status(overlay), 6, y, TEXT_COLOUR)
        if overlay.track_lost is not None:
            word, colour = ("track lost", LOST_COLOUR) if overlay.track_lost else ("tracked", TRACKED_COLOUR)
            _put(panel, f"  |  {word}", x, y, colour)
        y += _LINE_HEIGHT
        if overlay.error is not None:
            lines, colour = [f"error: {overlay.error}"], LOST_COLOUR
        else:
            lines, colour = [f"edge: {' '.join(overlay.answer.split()) or '-'}"], TEXT_COLOUR
        for line in self._wrap(lines[0], width - 12):
            _put(panel, line, 6, y, colour)
            y += _LINE_HEIGHT
        return panel

    @staticmethod
    def _wrap(text: str, width_px: int) -> list[str]:
        sample = "abcdefghijklmnopqrstuvwxyz0123456789 "
        char_px = cv2.getTextSize(sample, _FONT, _FONT_SCALE, 1)[0][0] / len(sample)
        lines = textwrap.wrap(_ascii(text), width=max(8, int(width_px / char_px)), max_lines=_ANSWER_LINES)
        return lines or [""]


def _pick_codec() -> str:
    import av

    for name in ("h264", "libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # this PyAV build cannot encode it
            continue
        return name
    raise RuntimeError("PyAV can encode neither H.264 nor MPEG-4 here")


class AnnotatedVideoWriter:
    """RGB frames to an MP4 with PyAV (H.264 where the wheel encodes it, else MPEG-4), at `fps`.

    The first frame fixes the video's size (cut to even sides, as yuv420p needs); a later frame of another size is
    resized to it. Use as a context manager, or call close(): the encoder is flushed there.
    """

    def __init__(self, path: str | Path, fps: float, codec: str | None = None) -> None:
        import av

        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.codec = codec or _pick_codec()
        self.rate = Fraction(fps).limit_denominator(1000)
        self.frames_written = 0
        self._container = av.open(str(self.path), mode="w")
        self._stream: Any = None
        self._size: tuple[int, int] | None = None  # (width, height)

    def write(self, frame: np.ndarray) -> None:
        import av

        image = np.ascontiguousarray(frame, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a frame must be RGB [H, W, 3], got shape {image.shape}")
        if self._stream is None:
            width, height = image.shape[1] - image.shape[1] % 2, image.shape[0] - image.shape[0] % 2
            if width < 2 or height < 2:
                raise ValueError(f"a frame of {image.shape[1]}x{image.shape[0]} is too small to encode")
            self._size = (width, height)
            self._stream = self._container.add_stream(self.codec, rate=self.rate)
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
        assert self._size is not None
        # Odd sides lose their last row or column; a frame of another size is resized.
        image = np.ascontiguousarray(
            image[: image.shape[0] - image.shape[0] % 2, : image.shape[1] - image.shape[1] % 2]
        )
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            if self._stream is not None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> AnnotatedVideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream_video_path(path: str | Path, stream_id: int, first_stream_id: int = 1) -> Path:
    """The first stream's video is `path`; stream k's is `<stem>.stream<k><suffix>` beside it."""
    path = Path(path)
    if stream_id == first_stream_id:
        return path
    return path.with_name(f"{path.stem}.stream{stream_id}{path.suffix or '.mp4'}")


@dataclass
class StreamVideos:
    """The frame sink of `run_streams(frame_sink=...)`: each stream's annotated frames to its own MP4
    (stream_video_path). Each stream's thread writes only its own video."""

    path: str | Path
    fps: float
    annotator: FrameAnnotator = field(default_factory=FrameAnnotator)
    first_stream_id: int = 1
    writers: dict[int, AnnotatedVideoWriter] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, frame: np.ndarray, result: Any) -> None:
        with self._lock:
            writer = self.writers.get(result.stream_id)
            if writer is None:
                writer = self.writers[result.stream_id] = AnnotatedVideoWriter(
                    stream_video_path(self.path, result.stream_id, self.first_stream_id), self.fps
                )
        writer.write(self.annotator.annotate(frame, result))

    @property
    def paths(self) -> list[Path]:
        return [self.writers[sid].path for sid in sorted(self.writers)]

    def close(self) -> None:
        with self._lock:
            for writer in self.writers.values():
                writer.close()

    def __enter__(self) -> StreamVideos:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
