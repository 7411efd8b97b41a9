"""Frame sources of `spotvlm stream`: synthetic scene, image folder, video file (no server)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.frame_sources import ImageDirSource, SyntheticSource, VideoSource, open_source


def take(source, n: int) -> list[np.ndarray]:
    return list(itertools.islice(iter(source), n))


# -- synthetic ---------------------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed() -> None:
    a, b, c = SyntheticSource(seed=3), SyntheticSource(seed=3), SyntheticSource(seed=4)
    frames_a, frames_b, frames_c = take(a, 5), take(b, 5), take(c, 5)
    for fa, fb in zip(frames_a, frames_b):
        np.testing.assert_array_equal(fa, fb)
    assert a.last_objects == b.last_objects
    assert any(not np.array_equal(fa, fc) for fa, fc in zip(frames_a, frames_c))


def test_synthetic_frames_shape_dtype_and_motion() -> None:
    source = SyntheticSource(seed=0, size=(120, 160))
    frames = take(source, 4)
    for frame in frames:
        assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8 and frame.flags["C_CONTIGUOUS"]
    # The shapes move: consecutive frames differ, and so do the ground-truth boxes.
    assert not np.array_equal(frames[0], frames[1])
    assert source.objects_at(0) != source.objects_at(1)


def test_synthetic_is_endless_and_random_access_matches_iteration() -> None:
    source = SyntheticSource(seed=7)
    frames = take(source, 30)
    assert len(frames) == 30 and source.frame_index == 29
    frame, objects = source.frame_at(29)
    np.testing.assert_array_equal(frame, frames[-1])
    assert objects == source.last_objects


@pytest.mark.parametrize("n_objects", [1, 3, 5])
def test_synthetic_ground_truth_boxes_inside_frame(n_objects: int) -> None:
    height, width = 240, 320
    source = SyntheticSource(seed=11, size=(height, width), n_objects=n_objects)
    for index in range(0, 200, 7):
        objects = source.objects_at(index)
        assert len(objects) == n_objects
        for obj in objects:
            x1, y1, x2, y2 = obj["bbox_2d"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert obj["label"] in {"car", "ball", "tree"}
    assert [o["label"] for o in SyntheticSource(seed=0).objects_at(0)] == ["car", "ball", "tree"]


def test_synthetic_shapes_are_drawn_inside_their_boxes() -> None:
    source = SyntheticSource(seed=5, n_objects=1)  # one red car
    frame, objects = source.frame_at(0)
    x1, y1, x2, y2 = objects[0]["bbox_2d"]
    red = (frame[..., 0] == 220) & (frame[..., 1] == 30) & (frame[..., 2] == 30)
    ys, xs = np.nonzero(red)
    assert len(ys) > 0
    assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2


# -- image folder ------------------------------------------------------------------------------------------------------


def _write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        image = np.full((16, 24, 3), i * 40, dtype=np.uint8)
        Image.fromarray(image).save(folder / name)


def test_image_dir_order_and_loop(tmp_path: Path) -> None:
    _write_images(tmp_path, ["b.png", "a.png", "c.bmp"])
    (tmp_path / "notes.txt").write_text("not an image")
    source = ImageDirSource(tmp_path)
    assert [p.name for p in source.paths] == ["a.png", "b.png", "c.bmp"] and len(source) == 3
    frames = take(source, 7)  # loops by default
    values = [int(f[0, 0, 0]) for f in frames]
    # a.png was written second (value 40), b.png first (0), c.bmp third (80).
    assert values == [40, 0, 80, 40, 0, 80, 40]
    assert all(f.shape == (16, 24, 3) and f.dtype == np.uint8 for f in frames)


def test_image_dir_without_loop_ends(tmp_path: Path) -> None:
    _write_images(tmp_path, ["1.png", "2.png"])
    assert len(list(ImageDirSource(tmp_path, loop=False))) == 2


def test_image_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images"):
        ImageDirSource(tmp_path)
    with pytest.raises(FileNotFoundError):
        ImageDirSource(tmp_path / "missing")


# -- video -------------------------------------------------------------------------------------------------------------


def _write_video(path: Path, n_frames: int, size: tuple[int, int] = (48, 64), fps: int = 10) -> None:
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    height, width = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            image = np.zeros((height, width, 3), dtype=np.uint8)
            image[:, : (i + 1) * width // n_frames] = (200, 50, 50)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)


def test_video_source_reads_back_frames(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_video(path, 12)
    source = VideoSource(path)
    frames = list(source)
    assert len(frames) == 12
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    # The red bar grows across the clip, so decoding kept the order.
    red = [int((f[..., 0] > 128).sum()) for f in frames]
    assert red == sorted(red) and red[0] < red[-1]
    assert source.fps == pytest.approx(10)


def test_video_source_loop(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_video(path, 5)
    assert len(take(VideoSource(path, loop=True), 12)) == 12


def test_open_source(tmp_path: Path) -> None:
    assert isinstance(open_source("synthetic", None, seed=2), SyntheticSource)
    assert open_source("synthetic", seed=2).seed == 2
    _write_images(tmp_path / "imgs", ["x.png"])
    assert isinstance(open_source("images", str(tmp_path / "imgs")), ImageDirSource)
    with pytest.raises(FileNotFoundError):
        open_source("video", str(tmp_path / "none.mp4"))
    with pytest.raises(ValueError):
        open_source("webcam", None)
