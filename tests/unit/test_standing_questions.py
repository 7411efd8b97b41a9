"""Standing questions (QuestionConfig.hold_s > 0): the benchmark asks a task's question again while its answer
changes, as real-time video tasks do (evaluation.questions.QuestionSchedule; no server)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from pathlib import Path

import pytest

from evaluation import dataset as ds
from evaluation.dataset import generate_split, load_dataset
from evaluation.questions import (
    TASKS,
    QuestionConfig,
    QuestionSchedule,
    candidate_questions,
    frame_questions,
)
from evaluation.runner import dataset_cache_dir
from evaluation.scenes import ObjectTruth, Scene, SceneConfig

SIZE = 300
FPS = 10.0
BUSY = SceneConfig(seconds=3.0, entries_per_10s=25.0, leave_probability=1.0, change_probability=1.0)


def obj(object_id: int, shape: str, colour: str, box=(10, 10, 40, 40), fraction: float = 1.0) -> ObjectTruth:
    return ObjectTruth(object_id, shape, colour, tuple(box), fraction, small=False)


def time_of(frame_index: int) -> float:
    return round(frame_index / FPS, 6)  # as Scene.time_s gives it


def schedule(seed: int = 1, **config) -> QuestionSchedule:
    return QuestionSchedule(QuestionConfig(**config), seed, SIZE, SIZE)


# Two objects: every task has a question on this frame.
TWO = [obj(0, "square", "red"), obj(1, "circle", "blue", (200, 200, 230, 230))]
# Six objects at distinct places: six grounding questions to draw from.
SIX = [
    obj(i, shape, colour, (20 + 45 * i, 20 + 40 * i, 50 + 45 * i, 50 + 40 * i))
    for i, (shape, colour) in enumerate(
        [("square", "red"), ("circle", "blue"), ("triangle", "green"), ("star", "yellow"), ("square", "blue"),
         ("circle", "red")]
    )
]  # fmt: skip


def test_tasks_take_turns() -> None:
    one = schedule(hold_s=1.0)
    assert [[q.task for q in one.questions(TWO, i, time_of(i))] for i in range(6)] == [[TASKS[i % 4]] for i in range(6)]
    # Three per questioned frame, every second frame: frame 2k asks turns 3k, 3k + 1 and 3k + 2.
    three = schedule(hold_s=1.0, per_frame=3, every_k_frames=2)
    asked = [[q.task for q in three.questions(TWO, i, time_of(i))] for i in range(5)]
    assert asked == [list(TASKS[:3]), [], [TASKS[3], TASKS[0], TASKS[1]], [], [TASKS[2], TASKS[3], TASKS[0]]]
    # Tasks weighted 0 get no turn.
    mixed = schedule(hold_s=1.0, task_mix={"recognition": 1.0, "grounding": 2.0, "counting": 0.5})
    assert [q.task for i in range(6) for q in mixed.questions(TWO, i, time_of(i))] == [
        "recognition", "grounding", "counting"
    ] * 2  # fmt: skip


def test_a_task_with_nothing_to_ask_is_skipped_without_a_substitute() -> None:
    on_a_grid_line = [obj(0, "square", "red", (90, 140, 110, 160))]  # no region question for it
    assert candidate_questions(on_a_grid_line, SIZE, SIZE)["localisation"] == []
    one = schedule(hold_s=1.0)
    assert [[q.task for q in one.questions(on_a_grid_line, i, time_of(i))] for i in range(4)] == [
        ["recognition"], [], ["grounding"], ["counting"]
    ]  # fmt: skip
    # With more turns than tasks, a task's second turn asks another of its questions, never the same twice.
    every = schedule(hold_s=1.0, per_frame=8, task_mix={"grounding": 1.0})
    assert sorted(q.question for q in every.questions(TWO, 0, 0.0)) == sorted(
        q.question for q in candidate_questions(TWO, SIZE, SIZE)["grounding"]
    )


def one_more_matching(question: str, object_id: int) -> ObjectTruth:
    """An object that a counting question counts."""
    description = re.fullmatch(r"How many (.+) are there\?", question).group(1)
    if description == "objects":
        return obj(object_id, "star", "green", (250, 20, 280, 50))
    if description.endswith(" objects"):
        return obj(object_id, "star", description.split()[0], (250, 20, 280, 50))
    return obj(object_id, description.removesuffix("s"), "green", (250, 20, 280, 50))


def test_a_held_question_is_asked_again_with_the_new_frames_answer() -> None:
    counting = schedule(hold_s=3.0, task_mix={"counting": 1.0})
    (first,) = counting.questions(TWO, 0, 0.0)
    later_truth = [*TWO, one_more_matching(first.question, 7)]
    (again,) = counting.questions(later_truth, 1, 0.1)
    assert again.question == first.question and int(again.answer) == int(first.answer) + 1
    assert again in candidate_questions(later_truth, SIZE, SIZE)["counting"]  # answer and target ids of this frame
    # A grounding question follows its object as it moves (the blue circle stays put).
    grounding = schedule(hold_s=3.0, task_mix={"grounding": 1.0})
    boxes = [(10 + 5 * i, 10, 40 + 5 * i, 40) for i in range(20)]
    asked = [
        grounding.questions([obj(0, "square", "red", box), TWO[1]], i, time_of(i))[0] for i, box in enumerate(boxes)
    ]
    assert len({q.question for q in asked}) == 1
    assert [q.answer for q in asked] == (boxes if asked[0].target_ids == (0,) else [TWO[1].box] * 20)


@pytest.mark.parametrize("hold_s, window", [(0.3, 3), (0.5, 5), (1.0, 10)])
def test_a_question_is_drawn_anew_once_it_has_stood_hold_s(hold_s: float, window: int) -> None:
    running = schedule(seed=5, hold_s=hold_s, task_mix={"grounding": 1.0})
    asked = [running.questions(SIX, i, time_of(i))[0].question for i in range(40)]
    for start in range(0, 40, window):
        assert set(asked[start : start + window]) == {asked[start]}, (start, asked)
        # The new draw depends only on (seed, frame, task): a schedule that starts here draws the same.
        fresh = schedule(seed=5, hold_s=hold_s, task_mix={"grounding": 1.0})
        assert fresh.questions(SIX, start, time_of(start))[0].question == asked[start]
    assert len(set(asked)) > 1


def test_a_question_that_can_no_longer_be_answered_is_replaced() -> None:
    grounding = schedule(hold_s=3.0, task_mix={"grounding": 1.0})
    (first,) = grounding.questions(TWO, 0, 0.0)
    (asked_about,) = first.target_ids
    others = [o for o in TWO if o.object_id != asked_about]
    (replaced,) = grounding.questions(others, 1, 0.1)  # its object has left
    assert replaced.question != first.question and replaced.target_ids == (others[0].object_id,)
    (kept,) = grounding.questions(TWO, 2, 0.2)  # back again: the replacement keeps standing
    assert kept.question == replaced.question
    half_hidden = [
        o if o.object_id != kept.target_ids[0] else dataclasses.replace(o, visible_fraction=0.3) for o in TWO
    ]
    (replaced_again,) = grounding.questions(half_hidden, 3, 0.3)  # not present enough to ask about
    assert replaced_again.question == first.question
    # A frame where the task has nothing to ask ends its standing question too.
    assert grounding.questions([], 4, 0.4) == []
    (after_gap,) = grounding.questions(TWO, 5, 0.5)
    fresh = schedule(hold_s=3.0, task_mix={"grounding": 1.0})
    assert fresh.questions(TWO, 5, 0.5) == [after_gap]


@pytest.mark.parametrize(
    "config",
    [QuestionConfig(), QuestionConfig(per_frame=3, every_k_frames=2), QuestionConfig(task_mix={"counting": 1.0})],
)
def test_hold_zero_is_frame_questions(config: QuestionConfig) -> None:
    scene = Scene(4, BUSY)
    zero = QuestionSchedule(config, 4, 320, 240, BUSY.shapes, BUSY.colours)
    for index in range(scene.num_frames):
        truth = scene.truth(index)
        assert zero.questions(truth, index, scene.time_s(index)) == frame_questions(
            truth, 320, 240, 4, index, config, BUSY.shapes, BUSY.colours
        )


def test_same_seed_and_config_ask_the_same_questions() -> None:
    config = QuestionConfig(per_frame=2, hold_s=0.7)

    def run(seed: int) -> list:
        scene = Scene(seed, BUSY)
        standing = QuestionSchedule(config, seed, 320, 240)
        return [standing.questions(scene.truth(i), i, scene.time_s(i)) for i in range(scene.num_frames)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_frames_must_come_in_order() -> None:
    standing = schedule(hold_s=1.0)
    standing.questions(TWO, 3, 0.3)
    with pytest.raises(ValueError, match="in order"):
        standing.questions(TWO, 2, 0.2)


def test_generate_split_repeats_standing_questions(tmp_path: Path) -> None:
    config = SceneConfig(seconds=2.0)
    path = generate_split("test", [1, 2], tmp_path, config, QuestionConfig(hold_s=1.0))
    examples = load_dataset(path)
    frames_per_question: dict[tuple[str, str], list[int]] = defaultdict(list)
    asked = {(e.video, e.frame_index): e.question for e in examples}
    for example in examples:
        frames_per_question[(example.video, example.question)].append(example.frame_index)
        # Each answer is that frame's own.
        truth = Scene(example.meta["seed"], config).truth(example.frame_index)
        expected = {q.question: q.answer for q in candidate_questions(truth, 320, 240)[example.task]}
        answer = tuple(int(v) for v in example.answer) if example.answer_type == "box" else example.answer
        assert expected[example.question] == answer, example
        assert example.task == TASKS[example.frame_index % len(TASKS)]  # the tasks take turns
    # Held for a second, a task's question comes back on its next two turns (4 and 8 frames later at 10 fps).
    assert max(len(frames) for frames in frames_per_question.values()) >= 3
    repeats = [asked.get((e.video, e.frame_index - len(TASKS))) == e.question for e in examples if e.frame_index >= 4]
    assert sum(repeats) > len(repeats) / 2


def test_command_line_takes_hold_s(tmp_path: Path) -> None:
    argv = ["--split", "test", "--videos", "1", "--seconds", "1", "--hold-s", "0.5", "--out", str(tmp_path)]
    assert ds.main(argv) == 0
    questions = [e.question for e in load_dataset(tmp_path / "test.jsonl")]
    assert len(set(questions)) < len(questions)


@pytest.mark.parametrize("hold_s", [-0.1, math.nan, math.inf])
def test_hold_s_must_be_finite_and_not_negative(hold_s: float) -> None:
    with pytest.raises(ValueError, match="hold_s"):
        QuestionConfig(hold_s=hold_s)


def test_keys_leave_hold_s_out_at_zero(tmp_path: Path) -> None:
    """Dataset cache folders from before hold_s existed stay valid; a recipe's key changes with hold_s."""
    default = QuestionConfig()
    assert "hold_s" not in default.identity()
    assert default.identity() == {k: v for k, v in dataclasses.asdict(default).items() if k != "hold_s"}
    assert QuestionConfig(hold_s=3).identity() == {**default.identity(), "hold_s": 3}
    scene = SceneConfig(seconds=5)
    base = dataset_cache_dir(tmp_path, "test", [1, 2], scene, default)
    assert base == dataset_cache_dir(tmp_path, "test", [1, 2], scene, QuestionConfig(hold_s=0.0))
    assert base != dataset_cache_dir(tmp_path, "test", [1, 2], scene, QuestionConfig(hold_s=3.0))

    from training.pipeline import recipe

    edge = recipe("edge", 10)
    held = dataclasses.replace(edge.data, test_questions=dataclasses.replace(edge.data.test_questions, hold_s=3.0))
    assert dataclasses.replace(edge, data=held).key() != edge.key()
