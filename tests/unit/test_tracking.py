"""Carrying a cloud box forward to the current frame (python_backends/context/tracking.py) on generated clips."""

import cv2
import numpy as np
import pytest

from load_tests.tracking_bench import history_of, iou, measure_benchmark_scenes, synthetic_clip
from python_backends.context.tracking import METHODS, FrameHistory, region_change, track_box


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", ["square", "disc"])
def test_a_moving_object_keeps_its_box(method, shape):
    clip = synthetic_clip(21, shape=shape, seed=3)  # 2 s at 10 fps, about 130 px of travel
    history = history_of(clip, 30)
    for newest in (5, 20):
        result = track_box(history, clip.boxes[0], 0, newest, method=method)
        assert not result.lost and result.method == method and result.confidence >= 0.6
        assert iou(result.box, clip.boxes[newest]) >= 0.5, (result, clip.boxes[newest])
        assert iou(clip.boxes[0], clip.boxes[newest]) < 0.5  # it did move off its old box


@pytest.mark.parametrize("method", METHODS)
def test_a_vanished_object_is_reported_lost(method):
    clip = synthetic_clip(21, seed=4, vanish_at=15)
    history = history_of(clip, 30)
    assert not track_box(history, clip.boxes[0], 0, 10, method=method).lost
    gone = track_box(history, clip.boxes[0], 0, 20, method=method)
    assert gone.lost and gone.box is None and gone.confidence < 0.6


@pytest.mark.parametrize("method", METHODS)
def test_a_static_object_stays_put(method):
    clip = synthetic_clip(30, velocity=(0.0, 0.0), seed=5)
    history = history_of(clip, 30)
    result = track_box(history, clip.boxes[0], 0, 29, method=method)
    assert not result.lost and result.confidence > 0.95
    np.testing.assert_allclose(result.box, clip.boxes[0], atol=1.5)  # within a small-frame pixel (2 px here)


def test_boxes_are_in_full_frame_pixels_at_any_frame_size():
    clip = synthetic_clip(11, size=(480, 640), side=96, velocity=(12.0, 6.0), seed=6)
    history = history_of(clip, 20, max_side=160)
    assert history.get(0).pixels.shape == (120, 160, 3) and history.get(0).scale == 0.25
    result = track_box(history, clip.boxes[0], 0, 10)
    assert not result.lost and iou(result.box, clip.boxes[10]) >= 0.7
    assert all(0 <= v <= 640 for v in result.box)


def test_a_frame_no_longer_buffered_or_unknown_is_lost():
    clip = synthetic_clip(12, seed=7)
    history = history_of(clip, 5)  # frames 7..11 kept
    assert len(history) == 5 and history.get(6) is None and history.get(7) is not None
    for from_id, to_id in ((0, 11), (7, 99)):
        result = track_box(history, clip.boxes[0], from_id, to_id)
        assert result.lost and result.box is None and result.confidence == 0.0
    same = track_box(history, clip.boxes[8], 8, 8)
    assert not same.lost and same.box == clip.boxes[8]
    with pytest.raises(ValueError, match="method must be one of"):
        track_box(history, clip.boxes[8], 8, 9, method="kcf")


def test_memory_is_bounded_by_frames_and_side():
    history = FrameHistory(max_frames=10, max_side=160)
    frame = np.zeros((720, 1280, 3), dtype=np.uint8)
    for index in range(25):
        history.add(index, index * 100, frame)
    assert len(history) == 10 and history.nbytes == 10 * 160 * 90 * 3
    assert history.nbytes <= 3 * history.max_frames * history.max_side**2
    assert [history.get(i) is None for i in (14, 15)] == [True, False]
    with pytest.raises(ValueError, match="max_frames"):
        FrameHistory(max_frames=0)


def test_region_change_tells_a_still_region_from_a_changed_one():
    clip = synthetic_clip(11, seed=8)
    history = history_of(clip, 20)
    still = synthetic_clip(11, velocity=(0.0, 0.0), seed=8)
    still_history = history_of(still, 20)
    assert region_change(still_history, still.boxes[0], 0, 10) == 0.0
    assert region_change(still_history, None, 0, 10) == 0.0
    moved = region_change(history, clip.boxes[0], 0, 10)  # the object left the region: background under it now
    whole = region_change(history, None, 0, 10)
    assert 0.05 < moved <= 1.0 and 0.0 < whole < moved
    assert region_change(history, None, 0, 99) == 1.0


def _flat_squares(frames: int, colours) -> tuple[FrameHistory, list[tuple[float, float, float, float]]]:
    """Flat-coloured squares on a plain grey background, as the benchmark draws them: the first moves right, the
    others stand still. Returns the history and the first square's box per frame."""
    history, boxes = FrameHistory(frames), []
    for index in range(frames):
        frame = np.full((240, 320, 3), 128, dtype=np.uint8)
        x = 20 + 8 * index
        for number, colour in enumerate(colours):
            left, top = (x, 40) if number == 0 else (40 + 90 * number, 150)
            frame[top : top + 40, left : left + 40] = colour
        history.add(index, index * 100, frame)
        boxes.append((float(x), 40.0, float(x + 40), 80.0))
    return history, boxes


def test_a_flat_square_is_followed_by_its_outline_and_told_from_one_of_another_colour():
    """A square filling its box has nothing inside to correlate: the rim of background around it gives the outline.
    Its look-alikes in other colours, as bright as it in grey, are not taken for it."""
    red, green, blue = (200, 40, 40), (40, 130, 40), (60, 60, 255)
    grey = cv2.cvtColor(np.array([[red, green, blue]], dtype=np.uint8), cv2.COLOR_RGB2GRAY)[0]
    assert int(grey.max()) - int(grey.min()) <= 12, "as bright as one another: alike in grey"
    history, boxes = _flat_squares(11, [red, green, blue])
    found = track_box(history, boxes[0], 0, 10)
    assert not found.lost and iou(found.box, boxes[10]) >= 0.8
    flat = track_box(history, boxes[0], 0, 10, rim=0.0)
    assert flat.lost or iou(flat.box, boxes[10]) < 0.5, "without the rim the flat square is not found"


def test_on_the_benchmarks_scenes_a_tracked_region_is_right_more_often_than_one_left_where_it_was():
    """Two validation scenes, objects tracked 2 s (deterministic: generated frames, no timing)."""
    rows = measure_benchmark_scenes([500, 501], [2.0])
    assert {row["method"] for row in rows} == set(METHODS) and all(row["age_s"] == 2.0 for row in rows)
    for row in rows:
        assert row["tracks"] >= 50
        assert set(row) == {"age_s", "method", "tracks", "on_object", "region_right", "lost", "region_unchanged"}
        assert row["on_object"] + row["lost"] <= 1.0
        # Half the objects changed cell in 2 s; the tracker finds the new one for most of them.
        assert row["region_right"] >= row["region_unchanged"] + 0.15, row
