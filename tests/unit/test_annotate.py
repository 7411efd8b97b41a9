"""client.annotate: boxes land where CONTEXT and the answer put them, missing fields draw nothing, MP4s read back."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from client.annotate import (
    EDGE_COLOUR,
    FOCUS_COLOUR,
    LOST_COLOUR,
    PANEL_COLOUR,
    TRACKED_COLOUR,
    TRUTH_COLOUR,
    AnnotatedVideoWriter,
    FrameAnnotator,
    StreamVideos,
    overlay_for,
    stream_video_path,
)
from client.streaming import FrameResult
from evaluation.runner import box_in_frame
from python_backends.context.report import ContextReport

GREY = (90, 90, 90)
EDGE_INPUT = (100, 100)  # the edge's square input in these tests


def _frame(height: int = 200, width: int = 400) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def _edge_box(text: str, size: tuple[int, int]):
    return box_in_frame(text, EDGE_INPUT, size)


def _result(text: str = "", context: ContextReport | None = None, **fields) -> FrameResult:
    return FrameResult(
        stream_id=fields.pop("stream_id", 1),
        frame_index=fields.pop("frame_index", 3),
        sent_at_ms=0,
        latency_ms=12.0,
        text=text,
        context=context or ContextReport(),
        **fields,
    )


def _answer(box: list[float], label: str = "car") -> str:
    return json.dumps([{"bbox_2d": box, "label": label}])


def _is(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return tuple(int(v) for v in pixel) == colour


def _edges_have(image: np.ndarray, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    """Each side of the box is drawn in `colour` (checked at the middle of each side)."""
    x1, y1, x2, y2 = box
    mid_x, mid_y = (x1 + x2) // 2, (y1 + y2) // 2
    for x, y in ((mid_x, y1), (mid_x, y2), (x1, mid_y), (x2, mid_y)):
        assert _is(image[y, x], colour), f"({x}, {y}) is {image[y, x]}, expected {colour}"


def test_edge_box_is_mapped_from_the_square_input_to_the_frame():
    annotator = FrameAnnotator(_edge_box, min_width=0)
    # (10, 20, 50, 60) in the 100x100 input is (40, 40, 200, 120) in a 400x200 frame.
    image = annotator.annotate(_frame(), _result(_answer([10, 20, 50, 60])))
    _edges_have(image, (40, 40, 200, 120), EDGE_COLOUR)
    assert _is(image[80, 120], GREY)  # inside the box: untouched


def test_cloud_focus_and_tracked_boxes_are_drawn_from_context():
    context = ContextReport(
        context_frame=1,
        context_age_ms=1500.0,
        cloud_state="ok",
        focus_mode="crop_and_frame",
        focus_box=[20, 30, 380, 190],
        focus_frame=1,
        tracked=True,
        tracked_box=[200, 50, 300, 150],
        region_change=0.2,
    )
    image = FrameAnnotator(min_width=0).annotate(_frame(), _result("a car", context))
    _edges_have(image, (200, 50, 300, 150), TRACKED_COLOUR)
    _edges_have(image, (20, 30, 380, 190), FOCUS_COLOUR)
    overlay = overlay_for(_result("a car", context), (200, 400))
    assert overlay.track_lost is False and overlay.region_change == 0.2 and overlay.context_age_ms == 1500.0


def test_a_small_frame_is_scaled_up_with_its_boxes():
    annotator = FrameAnnotator(_edge_box, min_width=640)
    image = annotator.annotate(_frame(100, 160), _result(_answer([0, 0, 50, 50])))
    # 160 wide -> 4x: 640 x 400 picture, the box (0, 0, 80, 50) in frame pixels drawn at (0, 0, 320, 200).
    assert image.shape == (400 + annotator.panel_height(), 640, 3)
    _edges_have(image, (0, 0, 320, 200), EDGE_COLOUR)


def test_crop_only_maps_the_edge_box_into_the_crop_the_edge_saw():
    context = ContextReport(focus_mode="crop_only", focus_box=[100, 50, 300, 150], focus_frame=0, context_frame=0)
    overlay = overlay_for(_result(_answer([0, 0, 50, 50]), context), (200, 400), _edge_box)
    # The crop is 200 x 100: half of the 100x100 input is (0, 0, 100, 50) in it, offset by the crop's corner.
    assert overlay.edge_box == pytest.approx((100, 50, 200, 100))


def test_missing_fields_draw_nothing_and_do_not_fail():
    annotator = FrameAnnotator(_edge_box, min_width=0)
    frame = _frame()
    for result in (
        _result(),  # no answer, no context
        _result("no box in this answer"),
        _result(_answer([1, 2, 3])),  # a malformed box
        _result("x", ContextReport.from_dict({"tracked_box": "nowhere", "tracked": "yes", "focus_box": [1, 2]})),
        _result("x", ContextReport(tracked_box=[1, 2, float("nan"), 4])),
        _result("x", ContextReport(extra={"raw": "not json"})),
        _result("", error="timeout"),
    ):
        image = annotator.annotate(frame, result)
        assert np.array_equal(image[: frame.shape[0]], frame), result
        overlay = overlay_for(result, frame.shape[:2], _edge_box)
        assert overlay.edge_box is None and overlay.tracked_box is None and overlay.track_lost is None
    assert np.array_equal(frame, _frame())  # the source frame is never drawn on


def test_no_edge_box_reader_draws_no_edge_box():
    image = FrameAnnotator(None, min_width=0).annotate(_frame(), _result(_answer([10, 20, 50, 60])))
    assert np.array_equal(image[:200], _frame())


def test_a_lost_track_is_said_in_red_and_no_tracked_box_is_drawn():
    context = ContextReport(context_frame=2, focus_frame=2, tracked=False, tracked_box=None)
    overlay = overlay_for(_result("a car", context), (200, 400))
    assert overlay.track_lost is True and overlay.tracked_box is None
    image = FrameAnnotator(min_width=0).annotate(_frame(), _result("a car", context))
    unknown = FrameAnnotator(min_width=0).annotate(_frame(), _result("a car", ContextReport(context_frame=2)))

    def red(picture: np.ndarray) -> int:
        # Anti-aliased text blends the lost colour into the panel's: red well above green and blue.
        rgb = picture[200:].astype(int)
        return int(((rgb[..., 0] - rgb[..., 1] > 100) & (rgb[..., 0] - rgb[..., 2] > 100)).sum())

    assert LOST_COLOUR[0] - max(LOST_COLOUR[1:]) > 200
    assert red(unknown) == 0 and red(image) > 0
    assert not (image[:200] == TRACKED_COLOUR).all(axis=2).any()


def test_truth_boxes_of_a_synthetic_scene_are_drawn():
    result = _result("x", objects=[{"label": "ball", "bbox_2d": [10, 10, 90, 90]}])
    image = FrameAnnotator(min_width=0).annotate(_frame(), result)
    _edges_have(image, (10, 10, 90, 90), TRUTH_COLOUR)


def test_panel_has_a_fixed_height_whatever_the_answer():
    annotator = FrameAnnotator(min_width=0)
    short = annotator.annotate(_frame(), _result("ok"))
    long = annotator.annotate(_frame(), _result("word " * 500))
    assert short.shape == long.shape
    assert _is(short[-1, -1], PANEL_COLOUR)


def _read_back(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


def test_writer_writes_a_readable_mp4_with_every_frame(tmp_path):
    path = tmp_path / "out" / "clip.mp4"
    with AnnotatedVideoWriter(path, fps=10) as writer:
        for i in range(7):
            frame = _frame(61, 81)  # odd sides: cut to even
            frame[:, : 10 * (i + 1)] = (200, 30, 30)
            writer.write(frame)
        writer.write(_frame(120, 160))  # another size: resized to the first's
    assert writer.frames_written == 8
    frames = _read_back(path)
    assert len(frames) == 8 and frames[0].shape == (60, 80, 3)
    with av.open(str(path)) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(10)
    # The colours survive encoding (lossy, so approximately): red on the left of frame 6, grey on its right.
    assert abs(frames[6][30, 5].astype(int) - (200, 30, 30)).max() < 40
    assert abs(frames[6][30, 78].astype(int) - GREY).max() < 40


def test_writer_refuses_what_is_not_an_rgb_frame(tmp_path):
    with AnnotatedVideoWriter(tmp_path / "x.mp4", fps=5) as writer:
        with pytest.raises(ValueError, match="RGB"):
            writer.write(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="fps"):
        AnnotatedVideoWriter(tmp_path / "y.mp4", fps=0)


def test_stream_videos_writes_one_video_per_stream(tmp_path):
    path = tmp_path / "run.mp4"
    with StreamVideos(path, fps=5, annotator=FrameAnnotator(_edge_box)) as videos:
        for index in range(3):
            for stream_id in (1, 2):
                videos(_frame(), _result(_answer([10, 20, 50, 60]), stream_id=stream_id, frame_index=index))
    assert videos.paths == [path, tmp_path / "run.stream2.mp4"]
    for written in videos.paths:
        frames = _read_back(written)
        assert len(frames) == 3 and frames[0].shape == (400 + FrameAnnotator.panel_height(), 800, 3)
    assert stream_video_path("a/b.mp4", 3) == stream_video_path("a/b.mp4", 1).with_name("b.stream3.mp4")
