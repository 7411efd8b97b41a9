"""Cost and accuracy of carrying a cloud box forward (python_backends/context/tracking.py), as JSON.

    .venv/bin/python -m load_tests.tracking_bench [--fps 10] [--ages 0.5,2,9] [--clips 6] [--repeat 20]
        [--side 96] [--rim 0.15] [--scene-seeds 500-507]

On generated clips (a textured background and a moving textured square or disc, numpy drawing) it tracks the
object's true box from an old frame to the newest one at each age, with each method, and reports the mean and 95th
percentile cost of one call, the share of tracks that stay on the object (IoU >= 0.5 with the true box), the share of
vanished objects reported lost, and the history's memory per stream. Scenes: "lone" (one object), "look-alike" (a
copy of the object moving the other way) and "vanished" (the object leaves before the newest frame).

Then, under "benchmark", the replay benchmark's own scenes (evaluation/scenes.py; by default validation seeds, where
tracking options are chosen): flat-coloured shapes that move, enter, leave and change, several at once. Every present
object's true box is tracked from every 7th frame to the frame `age` later where it is still present, and the share
on the object, the share whose region (3x3 cell of the centre) is right, the share lost, and the share whose region
had not changed (what an untracked answer would score) are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import cv2
import numpy as np

from client.stats import percentile
from evaluation.scenes import Scene, SceneConfig
from python_backends.context.region_questions import region_of_box
from python_backends.context.tracking import DEFAULT_SIDE, METHODS, RIM, FrameHistory, track_box


@dataclass
class Clip:
    frames: list[np.ndarray]  # RGB uint8
    boxes: list[tuple[float, float, float, float] | None]  # the object's true box per frame; None once gone
    timestamps_ms: list[int]


def _texture(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Blocky RGB noise: cells of `cell` pixels, so a patch has structure at the small frames' scale."""
    coarse = rng.integers(0, 256, (height // cell + 1, width // cell + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:height, :width]


def synthetic_clip(
    frames: int,
    size: tuple[int, int] = (240, 320),
    side: int = 48,
    velocity: tuple[float, float] = (6.0, 3.0),
    fps: float = 10.0,
    seed: int = 0,
    shape: str = "square",
    vanish_at: int | None = None,
    look_alike: bool = False,
) -> Clip:
    """A textured background and a textured object of `side` pixels moving `velocity` pixels a frame (bouncing off
    the edges); `vanish_at`: the frame from which the object is gone; `look_alike`: a copy moves the other way."""
    if shape not in ("square", "disc"):
        raise ValueError(f"shape must be square or disc, got {shape!r}")
    rng = np.random.default_rng(seed)
    height, width = size
    background = _texture(rng, height, width, 8) // 2 + 64  # duller than the object
    look = _texture(rng, side, side, 6)
    look[..., int(rng.integers(0, 3))] = 230  # one strong colour channel
    mask = np.ones((side, side), dtype=bool)
    if shape == "disc":
        yy, xx = np.mgrid[:side, :side]
        mask = (yy - side / 2 + 0.5) ** 2 + (xx - side / 2 + 0.5) ** 2 <= (side / 2) ** 2
    position = np.array([rng.uniform(0, width - side), rng.uniform(0, height - side)])
    step = np.array(velocity, dtype=np.float64)
    other, other_step = np.array([width - side, height - side]) - position, -step
    clip = Clip([], [], [])
    for index in range(frames):
        frame = background.copy()
        present = vanish_at is None or index < vanish_at
        for where, shown in ((position, present), (other, look_alike)):
            if shown:
                x, y = int(round(where[0])), int(round(where[1]))
                frame[y : y + side, x : x + side][mask] = look[mask]
        clip.frames.append(frame)
        x, y = float(round(position[0])), float(round(position[1]))
        clip.boxes.append((x, y, x + side, y + side) if present else None)
        clip.timestamps_ms.append(int(round(index * 1000 / fps)))
        for where, moving in ((position, step), (other, other_step)):
            where += moving
            for axis, limit in ((0, width - side), (1, height - side)):
                if not 0 <= where[axis] <= limit:
                    moving[axis] = -moving[axis]
                    where[axis] = np.clip(where[axis], 0, limit)
    return clip


def iou(a, b) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def history_of(clip: Clip, max_frames: int, max_side: int = DEFAULT_SIDE) -> FrameHistory:
    history = FrameHistory(max_frames, max_side)
    for index, frame in enumerate(clip.frames):
        history.add(index, clip.timestamps_ms[index], frame)
    return history


def measure(
    fps: float, ages_s: list[float], clips: int, repeat: int, side: int = DEFAULT_SIDE, rim: float = RIM
) -> dict:
    longest = int(round(max(ages_s) * fps)) + 1
    scenes = {"lone": {}, "look-alike": {"look_alike": True}, "vanished": {}}
    rows = []
    for age_s in ages_s:
        frames = int(round(age_s * fps)) + 1
        for scene, options in scenes.items():
            for method in METHODS:
                costs, on_object, lost = [], [], []
                for seed in range(clips):
                    vanish = {"vanish_at": frames - max(1, frames // 3)} if scene == "vanished" else {}
                    shape = "disc" if seed % 2 else "square"
                    clip = synthetic_clip(frames, fps=fps, seed=seed, shape=shape, **options, **vanish)
                    history = history_of(clip, longest, side)
                    truth, newest = clip.boxes[0], len(clip.frames) - 1
                    for _ in range(repeat):
                        started = time.perf_counter()
                        result = track_box(history, truth, 0, newest, method=method, rim=rim)
                        costs.append((time.perf_counter() - started) * 1000)
                    lost.append(result.lost)
                    if clip.boxes[newest] is not None:
                        on_object.append(not result.lost and iou(result.box, clip.boxes[newest]) >= 0.5)
                row = {
                    "age_s": age_s,
                    "scene": scene,
                    "method": method,
                    "mean_ms": round(float(np.mean(costs)), 3),
                    "p95_ms": percentile(costs, 95, digits=3),
                }
                if scene == "vanished":
                    row["reported_lost"] = round(float(np.mean(lost)), 3)
                else:
                    row["on_object"] = round(float(np.mean(on_object)), 3)
                rows.append(row)
    clip = synthetic_clip(1, size=(480, 640))
    history = FrameHistory(longest, side)
    for index in range(longest + 5):
        history.add(index, index * 100, clip.frames[0])
    return {
        "fps": fps,
        "clips_per_cell": clips,
        "calls_per_clip": repeat,
        "opencv_threads": cv2.getNumThreads(),
        "frame_size": [240, 320],
        "rim": rim,
        "history": {"max_frames": longest, "max_side": side, "nbytes_at_640x480": history.nbytes},
        "results": rows,
    }


# Tracks on the benchmark's scenes start on every START_EVERY-th frame: starts a moment apart see new motion.
START_EVERY = 7


def measure_benchmark_scenes(
    seeds: list[int], ages_s: list[float], side: int = DEFAULT_SIDE, rim: float = RIM, seconds: float = 10.0
) -> list[dict]:
    """Tracking on the replay benchmark's scenes (see the module's doc), one row per age and method."""
    counts: dict[tuple[float, str], dict[str, float]] = {}
    for seed in seeds:
        scene = Scene(seed, SceneConfig(seconds=seconds))
        fps = scene.config.fps
        history = FrameHistory(int(round(max(ages_s) * fps)) + 1 + START_EVERY, side)
        present: list[dict] = []
        tracks: list[tuple[int, int, tuple, tuple]] = []  # (from, to, box then, box now)
        for index, frame, truth in scene:
            history.add(index, int(round(index * 1000 / fps)), frame)
            present.append({o.object_id: o.box for o in truth if o.present})
            for age_s in ages_s:
                start = index - int(round(age_s * fps))
                if start >= 0 and start % START_EVERY == 0:
                    for object_id, then in present[start].items():
                        if object_id in present[index]:
                            tracks.append((start, index, then, present[index][object_id]))
            for start, end, then, now in tracks:
                age = round((end - start) / fps, 3)
                region_now = region_of_box(now, scene.size)
                unchanged = region_of_box(then, scene.size) == region_now
                for method in METHODS:
                    tally = counts.setdefault((age, method), {"tracks": 0, "on_object": 0, "region_right": 0,
                                                             "lost": 0, "region_unchanged": 0})  # fmt: skip
                    result = track_box(history, then, start, end, method=method, rim=rim)
                    tally["tracks"] += 1
                    tally["lost"] += result.lost
                    tally["region_unchanged"] += unchanged
                    if not result.lost:
                        tally["on_object"] += iou(result.box, now) >= 0.5
                        tally["region_right"] += region_of_box(result.box, scene.size) == region_now
            tracks.clear()
    rows = []
    for (age, method), tally in sorted(counts.items()):
        total = tally.pop("tracks")
        rows.append({"age_s": age, "method": method, "tracks": int(total),
                     **{key: round(value / total, 3) for key, value in tally.items()}})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.tracking_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--ages", default="0.5,2,9", help="ages in seconds, comma-separated")
    parser.add_argument("--clips", type=int, default=6, help="generated clips per age, scene and method")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per clip")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (one: a serving step's share)")
    parser.add_argument("--side", type=int, default=DEFAULT_SIDE, help="the small frames' longer side")
    parser.add_argument("--rim", type=float, default=RIM, help="background matched around a box, a fraction of it")
    parser.add_argument(
        "--scene-seeds", default="500-507", help="the benchmark scenes' seeds, FIRST-LAST (validation: 500-999)"
    )
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)
    ages = [float(a) for a in args.ages.split(",")]
    first, _, last = args.scene_seeds.partition("-")
    seeds = list(range(int(first), int(last or first) + 1))
    report = measure(args.fps, ages, args.clips, args.repeat, args.side, args.rim)
    report["benchmark"] = {
        "seeds": [seeds[0], seeds[-1]],
        "rows": measure_benchmark_scenes(seeds, ages, args.side, args.rim),
    }
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
