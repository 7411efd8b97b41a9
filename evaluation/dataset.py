"""The benchmark's JSONL format: writing the generated splits, and reading (and checking) any dataset in the format.

One line per question (docs/dataset.md has the full description):

    {"id": "test-000001-0000-0", "split": "test", "video": "test/seed_000001", "frame_index": 0, "time_s": 0.0,
     "question": "What colour is the square?", "answer": "red", "task": "recognition", "answer_type": "text"}

`video` is a folder of frames (frame i is the i-th image in file-name order) or a video file, relative to the JSONL
file's folder or absolute. Grounding answers are boxes `[x1, y1, x2, y2]` in that frame's pixels.

`generate_split` writes a split of the synthetic benchmark: per video a folder of PNG frames, `truth.jsonl` (every
visible object per frame) and `scene.json` (seed, settings, events), plus `<split>.jsonl` next to the folders.
Command line: `python -m evaluation.dataset --split test --videos 10 --seconds 20 --out DIR`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.questions import ANSWER_TYPES, REGIONS, TASKS, QuestionConfig, QuestionSchedule
from evaluation.scenes import Scene, SceneConfig

SPLITS = ("train", "validation", "test")
# Disjoint seed ranges keep the held-out videos apart: test seeds 1..499, validation seeds 500..999 (recipes,
# thresholds and options are chosen on these; the test split only produces reported figures), train seeds 1000 up.
TEST_SEED_START = 1
VALIDATION_SEED_START = 500
TRAIN_SEED_START = 1000
SEED_RANGES = {
    "test": (TEST_SEED_START, VALIDATION_SEED_START),
    "validation": (VALIDATION_SEED_START, TRAIN_SEED_START),
}
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
REQUIRED_FIELDS = ("id", "split", "video", "frame_index", "time_s", "question", "answer", "task", "answer_type")
OPTIONAL_FIELDS = ("meta",)  # free-form JSON object: the generator puts target object ids and the scene seed there
MAX_REPORTED_ERRORS = 20

Progress = Callable[[int, int], None]  # (frames done, frames in total)


class DatasetError(ValueError):
    """A dataset file that does not follow the format; the message lists each problem with its line."""


@dataclass(frozen=True)
class Example:
    """One question about one frame."""

    id: str
    split: str
    video: str  # as loaded: an absolute path
    frame_index: int
    time_s: float
    question: str
    answer: str | tuple[float, float, float, float]  # a box for answer_type "box", text otherwise
    task: str
    answer_type: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The JSONL record; `video` is written relative to `relative_to` when it lies below it."""
        video = self.video
        if relative_to is not None:
            try:
                video = Path(video).resolve().relative_to(relative_to.resolve()).as_posix()
            except ValueError:
                pass
        record: dict[str, Any] = {
            "id": self.id,
            "split": self.split,
            "video": video,
            "frame_index": self.frame_index,
            "time_s": self.time_s,
            "question": self.question,
            "answer": list(self.answer) if isinstance(self.answer, tuple) else self.answer,
            "task": self.task,
            "answer_type": self.answer_type,
        }
        if self.meta:
            record["meta"] = self.meta
        return record


def default_seeds(split: str, count: int) -> list[int]:
    """The first `count` seeds of a split's range."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    start = SEED_RANGES[split][0] if split in SEED_RANGES else TRAIN_SEED_START
    if split in SEED_RANGES and start + count > SEED_RANGES[split][1]:
        raise ValueError(f"the {split} split has {SEED_RANGES[split][1] - start} seeds, not {count}")
    return list(range(start, start + count))


def check_seeds(split: str, seeds: Sequence[int]) -> None:
    """Refuse seeds from another split's range: a test video must never be a validation or training video."""
    if split in SEED_RANGES:
        first, end = SEED_RANGES[split]
        wrong = [s for s in seeds if not first <= s < end]
        allowed = f"{first}..{end - 1}"
    elif split == "train":
        wrong = [s for s in seeds if s < TRAIN_SEED_START]
        allowed = f">= {TRAIN_SEED_START}"
    else:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if wrong:
        raise ValueError(f"{split} seeds must be {allowed}; got {wrong[:5]}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{split} seeds repeat: {sorted(s for s, n in Counter(seeds).items() if n > 1)[:5]}")


def video_name(seed: int) -> str:
    return f"seed_{seed:06d}"


def generate_split(
    split: str,
    seeds: Sequence[int],
    out_dir: str | Path,
    scene_config: SceneConfig | None = None,
    question_config: QuestionConfig | None = None,
    progress: Progress | None = None,
) -> Path:
    """Render one video per seed under `out_dir/<split>/` and write `out_dir/<split>.jsonl`; returns its path.

    Re-running with the same arguments rewrites identical files. `progress(done, total)` is called after each frame.
    """
    check_seeds(split, seeds)
    from PIL import Image

    scene_config = scene_config or SceneConfig()
    question_config = question_config or QuestionConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = scene_config.num_frames * len(seeds)
    done = 0
    examples: list[Example] = []
    for seed in seeds:
        scene = Scene(seed, scene_config)
        folder = out_dir / split / video_name(seed)
        _clear_video_folder(folder)
        schedule = QuestionSchedule(
            question_config, seed, scene_config.width, scene_config.height, scene_config.shapes, scene_config.colours
        )
        truth_lines = []
        for index, frame, truth in scene:
            Image.fromarray(frame).save(folder / f"{index:06d}.png", compress_level=6)
            time_s = scene.time_s(index)
            truth_lines.append(
                json.dumps({"frame_index": index, "time_s": time_s, "objects": [o.to_json() for o in truth]})
            )
            questions = schedule.questions(truth, index, time_s)
            for number, question in enumerate(questions):
                examples.append(
                    Example(
                        id=f"{split}-{seed:06d}-{index:04d}-{number}",
                        split=split,
                        video=str(folder),
                        frame_index=index,
                        time_s=time_s,
                        question=question.question,
                        answer=question.answer,
                        task=question.task,
                        answer_type=question.answer_type,
                        meta={"seed": seed, "target_ids": list(question.target_ids)},
                    )
                )
            done += 1
            if progress is not None:
                progress(done, total)
        _write_text(folder / "truth.jsonl", "\n".join(truth_lines) + "\n")
        _write_text(folder / "scene.json", json.dumps(scene.describe(), indent=1) + "\n")
    path = out_dir / f"{split}.jsonl"
    write_dataset(examples, path)
    return path


def _clear_video_folder(folder: Path) -> None:
    """Remove what an earlier run wrote there: a shorter video must not keep the old run's extra frames."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.is_file() and (path.suffix == ".png" or path.name in ("truth.jsonl", "scene.json")):
            path.unlink()


def _write_text(path: Path, text: str) -> None:
    # Written beside and renamed into place, so a reader never sees half a file.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_dataset(examples: Iterable[Example], path: str | Path) -> Path:
    """Write examples as JSONL, videos relative to the file's folder where they lie below it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(e.to_json(relative_to=path.parent), ensure_ascii=False) for e in examples]
    _write_text(path, "".join(line + "\n" for line in lines))
    return path


# -- reading --------------------------------------------------------------------------------------------------------


def load_dataset(path: str | Path, check_files: bool = True) -> list[Example]:
    """Read and check a JSONL dataset; raises DatasetError listing every problem found, with its line number.

    With `check_files`, each `video` must exist, and for a frame folder `frame_index` must name one of its frames.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no such dataset file: {path}")
    examples: list[Example] = []
    errors: list[str] = []
    first_line_of_id: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"{path}:{number}: not valid JSON ({exc})")
                continue
            problems, example = _parse_record(record, path.parent, check_files)
            if example is not None:
                if example.id in first_line_of_id:
                    problems.append(f"id {example.id!r} is already used on line {first_line_of_id[example.id]}")
                else:
                    first_line_of_id[example.id] = number
            errors.extend(f"{path}:{number}: {p}" for p in problems)
            if not problems and example is not None:
                examples.append(example)
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise DatasetError(f"{len(errors)} problem(s) in {path}:\n" + "\n".join(shown) + more)
    return examples


def _parse_record(record: Any, base: Path, check_files: bool) -> tuple[list[str], Example | None]:
    if not isinstance(record, dict):
        return [f"a line must be a JSON object, got {type(record).__name__}"], None
    problems = []
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        problems.append(f"missing field(s) {missing}")
    unknown = sorted(set(record) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        problems.append(f"unknown field(s) {unknown}; allowed: {list(REQUIRED_FIELDS + OPTIONAL_FIELDS)}")
    if problems:
        return problems, None

    def text_field(name: str) -> str:
        value = record[name]
        if not isinstance(value, str) or not value.strip():
            problems.append(f"field {name!r} must be a non-empty string, got {value!r}")
            return ""
        return value

    example_id, split, video, question = (text_field(n) for n in ("id", "split", "video", "question"))
    frame_index = record["frame_index"]
    if isinstance(frame_index, bool) or not isinstance(frame_index, int) or frame_index < 0:
        problems.append(f"field 'frame_index' must be an integer >= 0, got {frame_index!r}")
    time_s = record["time_s"]
    if isinstance(time_s, bool) or not isinstance(time_s, (int, float)) or not math.isfinite(time_s) or time_s < 0:
        problems.append(f"field 'time_s' must be a number >= 0 (seconds from the video's start), got {time_s!r}")
    task, answer_type = record["task"], record["answer_type"]
    if task not in TASKS:
        problems.append(f"field 'task' must be one of {list(TASKS)}, got {task!r}")
    elif answer_type != ANSWER_TYPES[task]:
        problems.append(f"field 'answer_type' must be {ANSWER_TYPES[task]!r} for task {task!r}, got {answer_type!r}")
    answer = _check_answer(record["answer"], answer_type, problems)
    meta = record.get("meta", {})
    if not isinstance(meta, dict):
        problems.append(f"field 'meta' must be a JSON object, got {type(meta).__name__}")
    if video:
        video_path = Path(video) if Path(video).is_absolute() else base / video
        video = str(video_path.resolve())
        if check_files and not problems:
            problem = _check_video(video, frame_index)
            if problem:
                problems.append(problem)
    if problems:
        return problems, None
    example = Example(
        id=example_id,
        split=split,
        video=video,
        frame_index=frame_index,
        time_s=float(time_s),
        question=question,
        answer=answer,
        task=task,
        answer_type=answer_type,
        meta=meta,
    )
    return problems, example


def _check_answer(answer: Any, answer_type: Any, problems: list[str]) -> Any:
    if answer_type == "box":
        if (
            not isinstance(answer, list)
            or len(answer) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in answer)
        ):
            problems.append(f"a box answer must be a list of 4 numbers [x1, y1, x2, y2], got {answer!r}")
            return None
        x1, y1, x2, y2 = answer
        if not (x1 < x2 and y1 < y2):
            problems.append(f"a box answer needs x1 < x2 and y1 < y2 (pixels, x2/y2 exclusive), got {answer!r}")
            return None
        return tuple(answer)
    if answer_type == "number":
        # Integers are accepted so that converted datasets need not quote their counts.
        if isinstance(answer, int) and not isinstance(answer, bool) and answer >= 0:
            return str(answer)
        if not isinstance(answer, str) or not answer.isdigit():
            problems.append(f"a number answer must be a string of digits (a count), got {answer!r}")
            return None
        return str(int(answer))
    if answer_type == "region":
        if answer not in REGIONS:
            problems.append(f"a region answer must be one of {list(REGIONS)}, got {answer!r}")
            return None
        return answer
    if answer_type == "text":
        if not isinstance(answer, str) or not answer.strip():
            problems.append(f"a text answer must be a non-empty string, got {answer!r}")
            return None
        return answer
    problems.append(f"field 'answer_type' must be one of {sorted(set(ANSWER_TYPES.values()))}, got {answer_type!r}")
    return None


def frame_files(folder: str) -> tuple[str, ...]:
    """A frame folder's images in file-name order: frame i is entry i."""
    # Keyed on the folder's mtime: a regenerated folder (frames added or removed) is listed afresh.
    return _frame_files(folder, Path(folder).stat().st_mtime_ns)


@lru_cache(maxsize=1024)
def _frame_files(folder: str, _mtime_ns: int) -> tuple[str, ...]:
    directory = Path(folder)
    return tuple(str(p) for p in sorted(directory.iterdir()) if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)


def _check_video(video: str, frame_index: int) -> str | None:
    path = Path(video)
    if path.is_dir():
        frames = frame_files(video)
        if frame_index >= len(frames):
            return f"frame_index {frame_index} is past the {len(frames)} frame(s) of folder {video}"
        return None
    if path.is_file():
        return None  # counting a video file's frames means decoding it: left to the reader
    return f"video {video} does not exist (a frame folder or a video file, relative to the dataset's folder)"


def load_frame(example: Example) -> np.ndarray:
    """The example's frame as UINT8 RGB [H, W, 3]: an image of a frame folder, or decoded from a video file."""
    from PIL import Image

    if Path(example.video).is_dir():
        frames = frame_files(example.video)
        if example.frame_index >= len(frames):
            raise IndexError(f"frame_index {example.frame_index} is past the {len(frames)} frame(s) of {example.video}")
        with Image.open(frames[example.frame_index]) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    import av  # only video files need PyAV

    with av.open(example.video) as container:
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            if index == example.frame_index:
                return np.ascontiguousarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
    raise IndexError(f"frame_index {example.frame_index} is past the end of video {example.video}")


# -- command line ---------------------------------------------------------------------------------------------------


def _progress_printer(label: str, stream=None) -> Progress:
    """A tqdm bar of the frames written, closed at the last one."""
    from tqdm import tqdm

    bars: list[tqdm] = []  # made at the first call, when the total is known

    def show(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc=label, unit="frame", file=stream or sys.stderr))
        bar = bars[0]
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.dataset",
        description="Generate a split of the synthetic replay benchmark (PNG frames + <split>.jsonl).",
    )
    parser.add_argument("--split", choices=SPLITS, required=True)
    parser.add_argument("--videos", type=int, default=10, help="number of videos (one seed each)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each video")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--first-seed", type=int, help="default: 1 for test, 1000 for train")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--background", choices=("plain", "noise"), default="plain")
    parser.add_argument("--questions-per-frame", type=int, default=1)
    parser.add_argument("--every", type=int, default=1, help="ask questions on every k-th frame")
    parser.add_argument(
        "--hold-s",
        type=float,
        default=0.0,
        help="standing questions: the tasks take turns, each asking its question again for this many seconds"
        " (0, the default: fresh questions on every frame)",
    )
    args = parser.parse_args(argv)
    if args.videos < 1:
        parser.error("--videos must be >= 1")
    try:
        seeds = (
            default_seeds(args.split, args.videos)
            if args.first_seed is None
            else list(range(args.first_seed, args.first_seed + args.videos))
        )
        scene_config = SceneConfig(
            width=args.width, height=args.height, fps=args.fps, seconds=args.seconds, background=args.background
        )
        question_config = QuestionConfig(
            per_frame=args.questions_per_frame, every_k_frames=args.every, hold_s=args.hold_s
        )
        path = generate_split(
            args.split, seeds, args.out, scene_config, question_config, progress=_progress_printer(args.split)
        )
    except ValueError as exc:
        parser.error(str(exc))
    examples = load_dataset(path)
    per_task = Counter(e.task for e in examples)
    print(f"wrote {path}: {len(examples)} questions on {len(seeds)} video(s) (seeds {seeds[0]}..{seeds[-1]})")
    print("  " + ", ".join(f"{task} {per_task.get(task, 0)}" for task in TASKS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
