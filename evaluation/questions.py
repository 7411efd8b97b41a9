"""Questions with exact answers about one frame's ground truth, for the benchmark's tasks.

- recognition: "What colour is the square?" -> "red"; "What shape is the blue object?" -> "circle".
- localisation: "Where is the red circle?" -> a cell of a 3x3 grid over the frame ("top left" ... "bottom right").
- grounding (localisation answered with a box): "Locate the red circle ..." -> [x1, y1, x2, y2] in frame pixels.
- counting: "How many triangles are there?" -> "2" (0 when there are none).

A question is only asked when its answer is certain:
- the object it names is the only one that matches the description among all objects with a visible pixel, and it is
  present (at least half visible, scenes.PRESENT_FRACTION);
- a count is only asked when no matching object is partly hidden (it would be unclear whether to count it);
- a region is only asked when the object's centre is not within REGION_MARGIN of a grid line.

`frame_questions` draws each frame's questions afresh. `QuestionSchedule` (with `QuestionConfig.hold_s` > 0) asks
standing questions instead, as real-time video tasks do: a task's question is asked again on later frames, its
answer following the video, until it has stood for `hold_s` seconds or can no longer be answered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from evaluation.scenes import COLOURS, SHAPES, ObjectTruth
from python_backends.context.region_questions import REGIONS  # the cells, as the edge names them too

TASKS = ("recognition", "localisation", "grounding", "counting")
ANSWER_TYPES = {"recognition": "text", "localisation": "region", "grounding": "box", "counting": "number"}
# Centres this close to a grid line (as a fraction of the frame's side) are too close to call: no region question.
REGION_MARGIN = 0.03
DEFAULT_TASK_MIX = {"recognition": 1.0, "localisation": 1.0, "grounding": 1.0, "counting": 1.0}


@dataclass(frozen=True)
class Question:
    task: str
    question: str
    answer: str | tuple[int, int, int, int]  # a box for grounding, text otherwise
    target_ids: tuple[int, ...] = ()  # the objects the answer is about (for focus crops and analysis)

    @property
    def answer_type(self) -> str:
        return ANSWER_TYPES[self.task]


@dataclass(frozen=True)
class QuestionConfig:
    """Which frames get questions, how many, and in which task proportions; `hold_s` > 0 makes them standing
    questions (QuestionSchedule), 0 draws each frame's questions afresh (frame_questions)."""

    per_frame: int = 1
    every_k_frames: int = 1
    task_mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_MIX))
    hold_s: float = 0.0

    def __post_init__(self) -> None:
        if self.per_frame < 1:
            raise ValueError(f"per_frame must be >= 1, got {self.per_frame}")
        if self.every_k_frames < 1:
            raise ValueError(f"every_k_frames must be >= 1, got {self.every_k_frames}")
        unknown = set(self.task_mix) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)} in task_mix; tasks are {TASKS}")
        if any(w < 0 for w in self.task_mix.values()) or not any(w > 0 for w in self.task_mix.values()):
            raise ValueError(f"task_mix weights must be >= 0 with at least one > 0, got {dict(self.task_mix)}")
        if not (math.isfinite(self.hold_s) and self.hold_s >= 0):
            raise ValueError(f"hold_s must be a finite number of seconds >= 0, got {self.hold_s}")

    def identity(self) -> dict[str, Any]:
        """The settings as hashed into cache and checkpoint keys: `hold_s` only when set, so that keys from before
        it existed stay valid."""
        settings = asdict(self)
        if self.hold_s == 0:
            del settings["hold_s"]
        return settings


def plural(shape: str) -> str:
    return shape + "s"


# The question templates. The edge's default region pattern and grounding prompt read these words
# (python_backends.context.region_questions), and its watch list asks them (load_tests.eval_setup).
def region_question(label: str) -> str:
    return f"Where is the {label}?"


def grounding_question(label: str) -> str:
    return f"Locate the {label} and give its bbox_2d in JSON."


def colour_question(shape: str) -> str:
    return f"What colour is the {shape}?"


def shape_question(colour: str) -> str:
    return f"What shape is the {colour} object?"


def count_question(description: str) -> str:
    return f"How many {description} are there?"


def count_groups(
    shapes: Sequence[str] = SHAPES, colours: Sequence[str] = tuple(COLOURS)
) -> list[tuple[str, Callable[[ObjectTruth], bool]]]:
    """What counting questions count: each shape, each colour, every object; each with the test of what it counts."""
    return (
        [(plural(shape), lambda o, shape=shape: o.shape == shape) for shape in shapes]
        + [(f"{colour} objects", lambda o, colour=colour: o.colour == colour) for colour in colours]
        + [("objects", lambda o: True)]
    )


def text_questions(shapes: Sequence[str] = SHAPES, colours: Sequence[str] = tuple(COLOURS)) -> list[str]:
    """Every recognition and counting question the templates can ask about scenes of this vocabulary."""
    return (
        [colour_question(shape) for shape in shapes]
        + [shape_question(colour) for colour in colours]
        + [count_question(description) for description, _ in count_groups(shapes, colours)]
    )


def region_of(box: Sequence[float], width: int, height: int, margin: float = REGION_MARGIN) -> str | None:
    """The 3x3 grid cell holding the box's centre; None when the centre is within `margin` of a grid line."""
    x1, y1, x2, y2 = box
    column = _third((x1 + x2) / 2 / width, margin)
    row = _third((y1 + y2) / 2 / height, margin)
    if column is None or row is None:
        return None
    return REGIONS[row * 3 + column]


def _third(position: float, margin: float) -> int | None:
    for line in (1 / 3, 2 / 3):
        if abs(position - line) < margin:
            return None
    return min(2, max(0, int(position * 3)))


def candidate_questions(
    truth: Sequence[ObjectTruth],
    width: int,
    height: int,
    shapes: Sequence[str] = SHAPES,
    colours: Sequence[str] = tuple(COLOURS),
) -> dict[str, list[Question]]:
    """Every question with a certain answer about this frame, per task, in a fixed order.

    `shapes` and `colours` are the vocabulary counting questions range over (a shape absent from the frame gives a
    count of 0).
    """
    by_task: dict[str, list[Question]] = {task: [] for task in TASKS}

    def only(matches: list[ObjectTruth]) -> ObjectTruth | None:
        return matches[0] if len(matches) == 1 and matches[0].present else None

    for shape in shapes:
        target = only([o for o in truth if o.shape == shape])
        if target:
            by_task["recognition"].append(
                Question("recognition", colour_question(shape), target.colour, (target.object_id,))
            )
    for colour in colours:
        target = only([o for o in truth if o.colour == colour])
        if target:
            by_task["recognition"].append(
                Question("recognition", shape_question(colour), target.shape, (target.object_id,))
            )
    for colour in colours:
        for shape in shapes:
            target = only([o for o in truth if o.colour == colour and o.shape == shape])
            if not target:
                continue
            ids = (target.object_id,)
            region = region_of(target.box, width, height)
            if region:
                by_task["localisation"].append(Question("localisation", region_question(target.label), region, ids))
            by_task["grounding"].append(Question("grounding", grounding_question(target.label), target.box, ids))

    def count(description: str, matches: list[ObjectTruth]) -> None:
        if all(o.present for o in matches):
            ids = tuple(o.object_id for o in matches)
            by_task["counting"].append(Question("counting", count_question(description), str(len(ids)), ids))

    for description, counts in count_groups(shapes, colours):
        count(description, [o for o in truth if counts(o)])
    return by_task


def frame_questions(
    truth: Sequence[ObjectTruth],
    width: int,
    height: int,
    seed: int,
    frame_index: int,
    config: QuestionConfig | None = None,
    shapes: Sequence[str] = SHAPES,
    colours: Sequence[str] = tuple(COLOURS),
) -> list[Question]:
    """The questions asked about one frame: `config.per_frame` of them (fewer when fewer exist), none on frames that
    are not a multiple of `every_k_frames`.

    Each pick draws a task by the mix's weights among the tasks that still have candidates, then a question of that
    task; counting questions are drawn answer first, so that the many zero counts do not crowd out the others. The
    draw depends only on (seed, frame_index), never on other frames.
    """
    config = config or QuestionConfig()
    if frame_index % config.every_k_frames:
        return []
    rng = np.random.default_rng([seed, frame_index])
    pool = candidate_questions(truth, width, height, shapes, colours)
    chosen: list[Question] = []
    for _ in range(config.per_frame):
        tasks = [t for t in TASKS if config.task_mix.get(t, 0.0) > 0 and pool[t]]
        if not tasks:
            break
        weights = np.array([config.task_mix[t] for t in tasks], dtype=np.float64)
        task = tasks[int(rng.choice(len(tasks), p=weights / weights.sum()))]
        question = _draw(pool[task], rng)
        pool[task].remove(question)
        chosen.append(question)
    return chosen


def _draw(candidates: Sequence[Question], rng: np.random.Generator) -> Question:
    """One of a task's questions; counting questions answer first, so that the many zero counts do not crowd out
    the others."""
    if candidates[0].task == "counting":
        answers = sorted({q.answer for q in candidates}, key=lambda a: int(a))
        answer = answers[int(rng.integers(len(answers)))]
        candidates = [q for q in candidates if q.answer == answer]
    return candidates[int(rng.integers(len(candidates)))]


@dataclass
class _Standing:
    question: str
    since_s: float  # time_s of the frame it was first asked on


class QuestionSchedule:
    """The questions of one video, asked frame after frame (call `questions` in frame order).

    With `config.hold_s` == 0 it is frame_questions. With `hold_s` > 0 the tasks take turns, `per_frame` turns per
    questioned frame, and each task asks a standing question: the one it asked last time, answered from the current
    frame's truth, while it has stood less than `hold_s` seconds and is still answerable; otherwise a new one, drawn
    from (seed, frame_index, task). A task with nothing to ask on a frame is skipped there.
    """

    def __init__(
        self,
        config: QuestionConfig | None,
        seed: int,
        width: int,
        height: int,
        shapes: Sequence[str] = SHAPES,
        colours: Sequence[str] = tuple(COLOURS),
    ) -> None:
        self.config = config or QuestionConfig()
        self.seed = seed
        self.width, self.height = width, height
        self.shapes, self.colours = tuple(shapes), tuple(colours)
        self.active_tasks = tuple(t for t in TASKS if self.config.task_mix.get(t, 0.0) > 0)
        # (task, k): the standing question of the task's k-th turn on a frame (k > 0 only when per_frame exceeds the
        # number of tasks).
        self._standing: dict[tuple[str, int], _Standing] = {}
        self._last_frame_index = -1

    def questions(self, truth: Sequence[ObjectTruth], frame_index: int, time_s: float) -> list[Question]:
        """The questions asked about frame `frame_index`, shown at `time_s` seconds into the video."""
        config = self.config
        if config.hold_s == 0:
            return frame_questions(
                truth, self.width, self.height, self.seed, frame_index, config, self.shapes, self.colours
            )
        if frame_index <= self._last_frame_index:
            raise ValueError(f"frames must come in order: frame {frame_index} after {self._last_frame_index}")
        self._last_frame_index = frame_index
        if frame_index % config.every_k_frames:
            return []
        pool = candidate_questions(truth, self.width, self.height, self.shapes, self.colours)
        rngs: dict[str, np.random.Generator] = {}
        turns_taken: dict[str, int] = {}
        first_turn = frame_index // config.every_k_frames * config.per_frame
        chosen: list[Question] = []
        for turn in range(first_turn, first_turn + config.per_frame):
            task = self.active_tasks[turn % len(self.active_tasks)]
            slot = (task, turns_taken.get(task, 0))
            turns_taken[task] = slot[1] + 1
            question = self._held_question(slot, pool[task], time_s)
            if question is None:
                self._standing.pop(slot, None)
                if not pool[task]:
                    continue
                if task not in rngs:
                    rngs[task] = np.random.default_rng([self.seed, frame_index, TASKS.index(task)])
                question = _draw(pool[task], rngs[task])
                self._standing[slot] = _Standing(question.question, time_s)
            pool[task].remove(question)  # a task's second turn on this frame asks something else
            chosen.append(question)
        return chosen

    def _held_question(self, slot: tuple[str, int], candidates: list[Question], time_s: float) -> Question | None:
        """This frame's version of the slot's standing question, or None when it has expired or cannot be asked."""
        standing = self._standing.get(slot)
        # Frame times are rounded to the microsecond (Scene.time_s), so is their difference: 0.7 - 0.4 is 0.29999...,
        # which would keep a 0.3 s hold one frame too long.
        if standing is None or round(time_s - standing.since_s, 6) >= self.config.hold_s:
            return None
        return next((q for q in candidates if q.question == standing.question), None)
