"""The replay benchmark's generator, questions and JSONL format (evaluation; no server)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from evaluation import dataset as ds
from evaluation.dataset import DatasetError, Example, generate_split, load_dataset, write_dataset
from evaluation.questions import (
    REGIONS,
    QuestionConfig,
    candidate_questions,
    frame_questions,
    region_of,
)
from evaluation.scenes import COLOURS, EXIT_SPEED, SHAPES, ObjectTruth, Scene, SceneConfig
from evaluation.scoring import score

SHORT = SceneConfig(seconds=1.5)  # 15 frames at 10 fps
# Busy scenes: objects come and go within 3 s, so a short video shows every kind of event.
BUSY = SceneConfig(seconds=3.0, entries_per_10s=25.0, leave_probability=1.0, change_probability=1.0)
BUSY_LONG = SceneConfig(seconds=30.0, entries_per_10s=6.0, leave_probability=1.0, change_probability=1.0)


def all_frames(scene: Scene) -> list[tuple[np.ndarray, list[ObjectTruth]]]:
    return [scene.render(i) for i in range(scene.num_frames)]


# -- scenes ------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_frames_truth_and_questions() -> None:
    a, b = Scene(7, SHORT), Scene(7, SHORT)
    for index, ((frame_a, truth_a), (frame_b, truth_b)) in enumerate(zip(all_frames(a), all_frames(b))):
        assert frame_a.tobytes() == frame_b.tobytes()
        assert truth_a == truth_b
        questions_a = frame_questions(truth_a, 320, 240, 7, index, QuestionConfig(per_frame=3))
        assert questions_a == frame_questions(truth_b, 320, 240, 7, index, QuestionConfig(per_frame=3))
    assert a.events == b.events and a.describe() == b.describe()


def test_different_seeds_give_different_scenes() -> None:
    frames = {seed: Scene(seed, SHORT).render(0)[0].tobytes() for seed in (1, 2, 3)}
    assert len(set(frames.values())) == 3
    assert Scene(1, SHORT).truth(0) != Scene(2, SHORT).truth(0)


@pytest.mark.parametrize("background", ["plain", "noise"])
@pytest.mark.parametrize("size", [(224, 224), (320, 240), (448, 448)])
def test_frames_have_the_configured_size_and_fps(background: str, size: tuple[int, int]) -> None:
    width, height = size
    scene = Scene(3, SceneConfig(width=width, height=height, seconds=0.5, fps=10.0, background=background))
    frame, _ = scene.render(scene.num_frames - 1)
    assert scene.num_frames == 5 and scene.time_s(3) == 0.3
    assert frame.shape == (height, width, 3) and frame.dtype == np.uint8


def test_truth_matches_the_pixels_drawn() -> None:
    scene = Scene(11, BUSY)
    for frame, truth in all_frames(scene):
        for obj in truth:
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
            assert 0 < obj.visible_fraction <= 1
            colour_pixels = np.all(frame[y1:y2, x1:x2] == COLOURS[obj.colour], axis=-1)
            # Tight box: the object's colour touches all four sides of its box.
            assert colour_pixels[0].any() and colour_pixels[-1].any()
            assert colour_pixels[:, 0].any() and colour_pixels[:, -1].any()
        # Everything not in some box is background: no object is drawn without truth.
        covered = np.zeros(frame.shape[:2], dtype=bool)
        for obj in truth:
            x1, y1, x2, y2 = obj.box
            covered[y1:y2, x1:x2] = True
        np.testing.assert_array_equal(frame[~covered], scene.background[~covered])


def test_objects_enter_leave_and_change() -> None:
    scene = Scene(5, BUSY_LONG)
    kinds = {e.kind for e in scene.events}
    assert kinds >= {"enter", "leave", "colour", "shape"}
    visible = [{o.object_id for o in scene.truth(i)} for i in range(scene.num_frames)]
    frames = scene.num_frames
    # Fully out within (shorter side / 2 + largest object) / exit speed frames of starting to leave.
    exit_frames = math.ceil((0.5 + SceneConfig().normal_size[1]) / EXIT_SPEED)
    checked = {"enter": 0, "leave": 0, "change": 0}
    for event in scene.events:
        ident, at = event.object_id, event.frame_index
        if event.kind == "enter":
            assert not any(ident in v for v in visible[:at])
            # A sliver shows from the first frame; a star's tips may need a few more pixels to appear.
            assert any(ident in v for v in visible[at : at + 5])
            checked["enter"] += 1
        elif event.kind == "leave" and at + exit_frames < frames:
            assert ident in visible[at - 1]
            assert not any(ident in v for v in visible[at + exit_frames :])
            checked["leave"] += 1
        elif event.kind in ("colour", "shape"):
            before = {o.object_id: o for o in scene.truth(at - 1)}
            after = {o.object_id: o for o in scene.truth(at)}
            if ident in before and ident in after:
                assert getattr(before[ident], event.kind) == event.old
                assert getattr(after[ident], event.kind) == event.new
                checked["change"] += 1
    assert min(checked.values()) >= 1, checked


def test_default_scenes_have_all_kinds_of_events_and_small_objects() -> None:
    # No rendering: the tracks are simulated up front, so 20 s scenes are cheap to build.
    scenes = [Scene(seed) for seed in range(1, 11)]
    assert {e.kind for s in scenes for e in s.events} == {"enter", "leave", "colour", "shape"}
    assert any(t.small for s in scenes for t in s._tracks) and not all(t.small for s in scenes for t in s._tracks)
    assert all(s.num_frames == 200 for s in scenes)


def test_partly_visible_objects_show_in_truth_with_their_fraction() -> None:
    scene = Scene(5, BUSY)
    fractions = [o.visible_fraction for i in range(scene.num_frames) for o in scene.truth(i)]
    assert any(f < 0.5 for f in fractions) and any(f == 1.0 for f in fractions)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 50}, "width"),
        ({"height": 2000}, "height"),
        ({"fps": 0}, "fps"),
        ({"seconds": -1}, "seconds"),
        ({"shapes": ("hexagon",)}, "shapes"),
        ({"colours": ()}, "colours"),
        ({"background": "photo"}, "background"),
        ({"initial_objects": (3, 9)}, "initial_objects"),
    ],
)
def test_scene_config_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SceneConfig(**kwargs)


# -- questions ---------------------------------------------------------------------------------------------------------


def obj(object_id: int, shape: str, colour: str, box=(10, 10, 40, 40), fraction: float = 1.0) -> ObjectTruth:
    return ObjectTruth(object_id, shape, colour, tuple(box), fraction, small=False)


def questions_by_text(truth: list[ObjectTruth]) -> dict[str, object]:
    return {q.question: q.answer for qs in candidate_questions(truth, 300, 300).values() for q in qs}


def test_questions_are_only_asked_when_the_answer_is_unique() -> None:
    truth = [obj(0, "square", "red"), obj(1, "circle", "red", (200, 200, 230, 230)), obj(2, "circle", "blue")]
    asked = questions_by_text(truth)
    assert asked["What colour is the square?"] == "red"
    assert asked["What shape is the blue object?"] == "circle"
    assert "What colour is the circle?" not in asked  # two circles
    assert "What shape is the red object?" not in asked  # two red objects
    assert asked["Where is the red circle?"] == "bottom right"
    assert asked["Locate the red circle and give its bbox_2d in JSON."] == (200, 200, 230, 230)
    assert asked["How many circles are there?"] == "2"
    assert asked["How many triangles are there?"] == "0"
    assert asked["How many red objects are there?"] == "2"
    assert asked["How many objects are there?"] == "3"


def test_partly_visible_objects_make_their_questions_uncertain() -> None:
    hidden_square = obj(1, "square", "blue", fraction=0.3)
    asked = questions_by_text([obj(0, "square", "red"), hidden_square, obj(2, "star", "green")])
    assert "What colour is the square?" not in asked  # the second square may or may not count
    assert "How many squares are there?" not in asked and "How many objects are there?" not in asked
    assert "Where is the blue square?" not in asked  # not present enough to ask about
    assert asked["How many stars are there?"] == "1" and asked["What colour is the star?"] == "green"


@pytest.mark.parametrize(
    "box, region",
    [
        ((0, 0, 20, 20), "top left"),
        ((140, 0, 160, 20), "top center"),
        ((280, 0, 300, 20), "top right"),
        ((0, 140, 20, 160), "middle left"),
        ((140, 140, 160, 160), "center"),
        ((280, 280, 300, 300), "bottom right"),
        ((90, 140, 110, 160), None),  # centre x = 100: on the first grid line
        ((140, 195, 160, 205), None),  # centre y = 200: on the second
    ],
)
def test_region_of_box_centre(box, region) -> None:
    assert region_of(box, 300, 300) == region
    assert region is None or region in REGIONS


def test_frame_questions_follow_the_config() -> None:
    truth = [obj(0, "square", "red"), obj(1, "circle", "blue", (200, 200, 230, 230))]
    three = frame_questions(truth, 300, 300, seed=1, frame_index=4, config=QuestionConfig(per_frame=3))
    assert len(three) == 3 and len({q.question for q in three}) == 3
    assert frame_questions(truth, 300, 300, 1, 3, QuestionConfig(every_k_frames=2)) == []
    counting_only = QuestionConfig(per_frame=5, task_mix={"counting": 1.0})
    assert {q.task for q in frame_questions(truth, 300, 300, 1, 0, counting_only)} == {"counting"}
    # More questions asked than exist: all of them, once each.
    every = frame_questions(truth, 300, 300, 1, 0, QuestionConfig(per_frame=100))
    assert len(every) == sum(len(v) for v in candidate_questions(truth, 300, 300).values())


def test_question_mix_covers_every_task_and_count() -> None:
    scene = Scene(2, SHORT)
    asked = [q for i in range(scene.num_frames) for q in frame_questions(scene.truth(i), 320, 240, 2, i)]
    assert {q.task for q in asked} == {"recognition", "localisation", "grounding", "counting"}


@pytest.mark.parametrize(
    "kwargs",
    [{"per_frame": 0}, {"every_k_frames": 0}, {"task_mix": {"reading": 1.0}}, {"task_mix": {"counting": 0.0}}],
)
def test_question_config_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        QuestionConfig(**kwargs)


def check_answer_against_truth(question, truth: list[ObjectTruth], width: int, height: int) -> None:
    """Recompute the answer from the truth, independently of how questions.py words or picks it."""
    text = question.question
    by_id = {o.object_id: o for o in truth}
    if question.task == "counting":
        description = re.fullmatch(r"How many (.+) are there\?", text).group(1)
        if description == "objects":
            matches = truth
        elif description.endswith(" objects"):
            matches = [o for o in truth if o.colour == description.split()[0]]
        else:
            matches = [o for o in truth if o.shape + "s" == description]
        assert question.answer == str(len(matches)) and all(o.present for o in matches)
        return
    (target,) = (by_id[i] for i in question.target_ids)
    assert target.present
    if text.startswith("What colour is the "):
        assert question.answer == target.colour and [o.shape for o in truth].count(target.shape) == 1
    elif text.startswith("What shape is the "):
        assert question.answer == target.shape and [o.colour for o in truth].count(target.colour) == 1
    elif question.task == "localisation":
        assert target.label in text and question.answer == region_of(target.box, width, height)
    else:
        assert target.label in text and question.answer == target.box


def test_generated_answers_agree_with_the_truth() -> None:
    for seed in (3, 4):
        scene = Scene(seed, BUSY)
        for index in range(0, scene.num_frames, 2):
            truth = scene.truth(index)
            for question in frame_questions(truth, 320, 240, seed, index, QuestionConfig(per_frame=100)):
                check_answer_against_truth(question, truth, 320, 240)


# -- the JSONL format --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_split(tmp_path_factory) -> tuple[Path, list[tuple[int, int]]]:
    out = tmp_path_factory.mktemp("bench")
    calls: list[tuple[int, int]] = []
    config = SceneConfig(seconds=1.0)
    generate_split("test", [1, 2], out, config, QuestionConfig(per_frame=2), progress=lambda d, t: calls.append((d, t)))
    return out, calls


def test_generate_split_writes_frames_truth_and_jsonl(small_split) -> None:
    out, calls = small_split
    assert calls[-1] == (20, 20) and [d for d, _ in calls] == list(range(1, 21))
    folder = out / "test" / "seed_000001"
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:06d}.png" for i in range(10)]
    truth_lines = (folder / "truth.jsonl").read_text().splitlines()
    scene = Scene(1, SceneConfig(seconds=1.0))
    assert [json.loads(line)["objects"] for line in truth_lines] == [
        [o.to_json() for o in scene.truth(i)] for i in range(10)
    ]
    assert json.loads((folder / "scene.json").read_text())["seed"] == 1
    examples = load_dataset(out / "test.jsonl")
    assert len(examples) == 40 and {e.split for e in examples} == {"test"}
    first = examples[0]
    assert first.video == str(folder.resolve()) and first.frame_index == 0 and first.time_s == 0.0
    np.testing.assert_array_equal(ds.load_frame(first), scene.render(0)[0])


def test_generated_answers_score_as_correct(small_split) -> None:
    out, _ = small_split
    for example in load_dataset(out / "test.jsonl"):
        if example.answer_type == "box":
            predicted = json.dumps([{"bbox_2d": list(example.answer), "label": "x"}])
        else:
            predicted = example.answer
        assert score(example, predicted).correct, example


def test_regenerating_gives_identical_files(small_split, tmp_path: Path) -> None:
    out, _ = small_split
    generate_split("test", [1, 2], tmp_path, SceneConfig(seconds=1.0), QuestionConfig(per_frame=2))
    for name in ("test.jsonl", "test/seed_000002/000007.png", "test/seed_000002/truth.jsonl"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_a_shorter_rerun_leaves_no_stale_frames(tmp_path: Path) -> None:
    generate_split("test", [3], tmp_path, SceneConfig(seconds=1.0))
    generate_split("test", [3], tmp_path, SceneConfig(seconds=0.5))
    assert len(list((tmp_path / "test" / "seed_000003").glob("*.png"))) == 5
    assert max(e.frame_index for e in load_dataset(tmp_path / "test.jsonl")) <= 4


def test_round_trip_through_write_dataset(small_split, tmp_path: Path) -> None:
    out, _ = small_split
    examples = load_dataset(out / "test.jsonl")
    copy = write_dataset(examples, out / "copy.jsonl")
    assert copy.read_bytes() == (out / "test.jsonl").read_bytes()  # relative video paths survive
    elsewhere = write_dataset(examples, tmp_path / "elsewhere.jsonl")  # videos not below: absolute paths
    assert load_dataset(elsewhere) == examples


def test_splits_have_disjoint_seeds() -> None:
    train, test = set(ds.default_seeds("train", 500)), set(ds.default_seeds("test", 499))
    validation = set(ds.default_seeds("validation", 500))
    assert not train & test and not train & validation and not validation & test
    assert min(test) == 1 and max(test) == 499 and min(validation) == 500 and max(validation) == 999
    with pytest.raises(ValueError, match="test split has 499 seeds"):
        ds.default_seeds("test", 500)
    with pytest.raises(ValueError, match="test seeds"):
        ds.check_seeds("test", [5, 1000])
    with pytest.raises(ValueError, match="test seeds must be 1..499"):
        ds.check_seeds("test", [500])
    with pytest.raises(ValueError, match="validation seeds must be 500..999"):
        ds.check_seeds("validation", [499])
    ds.check_seeds("validation", [500, 999])
    with pytest.raises(ValueError, match="train seeds"):
        ds.check_seeds("train", [3])
    with pytest.raises(ValueError, match="repeat"):
        ds.check_seeds("train", [1000, 1000])


def test_command_line_writes_a_split(tmp_path: Path, capsys) -> None:
    assert ds.main(["--split", "train", "--videos", "1", "--seconds", "0.5", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "train.jsonl" in captured.out and "5/5" in captured.err
    assert all(e.video.endswith("seed_001000") for e in load_dataset(tmp_path / "train.jsonl"))


GOOD = {
    "id": "q1",
    "split": "test",
    "video": "frames",
    "frame_index": 0,
    "time_s": 0.0,
    "question": "How many stars are there?",
    "answer": "2",
    "task": "counting",
    "answer_type": "number",
}


@pytest.fixture
def frames_dir(tmp_path: Path) -> Path:
    from PIL import Image

    (tmp_path / "frames").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "frames" / f"{i:03d}.png")
    return tmp_path


def write_lines(folder: Path, records: list) -> Path:
    path = folder / "data.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_a_converted_dataset_loads(frames_dir: Path) -> None:
    grounding = {**GOOD, "id": "q2", "task": "grounding", "answer_type": "box", "answer": [1, 2, 5.5, 7]}
    region = {**GOOD, "id": "q3", "task": "localisation", "answer_type": "region", "answer": "top left"}
    as_int = {**GOOD, "id": "q4", "answer": 3, "meta": {"source": "mine"}}
    examples = load_dataset(write_lines(frames_dir, [GOOD, grounding, region, as_int]))
    assert [e.answer for e in examples] == ["2", (1, 2, 5.5, 7), "top left", "3"]
    assert examples[3].meta == {"source": "mine"}
    assert examples[0].video == str((frames_dir / "frames").resolve())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"question": None}, "missing field(s) ['question']"),
        ({"colour": "red"}, "unknown field(s) ['colour']"),
        ({"task": "reading"}, "field 'task' must be one of"),
        ({"answer_type": "text"}, "field 'answer_type' must be 'number' for task 'counting'"),
        ({"answer": "two"}, "a number answer must be a string of digits"),
        ({"answer": -1}, "a number answer must be a string of digits"),
        ({"task": "grounding", "answer_type": "box", "answer": [1, 2, 3]}, "a box answer must be a list of 4 numbers"),
        ({"task": "grounding", "answer_type": "box", "answer": [5, 2, 3, 7]}, "x1 < x2 and y1 < y2"),
        ({"task": "localisation", "answer_type": "region", "answer": "upper left"}, "a region answer must be one of"),
        ({"task": "recognition", "answer_type": "text", "answer": " "}, "a text answer must be a non-empty string"),
        ({"frame_index": -1}, "field 'frame_index' must be an integer >= 0"),
        ({"frame_index": True}, "field 'frame_index' must be an integer >= 0"),
        ({"frame_index": 3}, "frame_index 3 is past the 3 frame(s)"),
        ({"time_s": "0.1"}, "field 'time_s' must be a number >= 0"),
        ({"id": ""}, "field 'id' must be a non-empty string"),
        ({"video": "nowhere"}, "does not exist"),
        ({"meta": [1]}, "field 'meta' must be a JSON object"),
    ],
)
def test_validation_names_the_problem_and_its_line(frames_dir: Path, change: dict, message: str) -> None:
    bad = {k: v for k, v in {**GOOD, "id": "bad", **change}.items() if v is not None}
    path = write_lines(frames_dir, [GOOD, bad])
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    assert f"{path}:2: " in str(error.value) and message in str(error.value)
    assert f"{path}:1: " not in str(error.value)


def test_validation_reports_every_bad_line_and_file_level_problems(frames_dir: Path) -> None:
    path = write_lines(frames_dir, ["{not json", GOOD, GOOD, "[1, 2]"])
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    text = str(error.value)
    assert "3 problem(s)" in text and ":1: not valid JSON" in text
    assert ":3: id 'q1' is already used on line 2" in text and ":4: a line must be a JSON object" in text
    with pytest.raises(DatasetError, match="no such dataset file"):
        load_dataset(frames_dir / "missing.jsonl")


def test_file_checks_can_be_skipped(frames_dir: Path) -> None:
    path = write_lines(frames_dir, [{**GOOD, "video": "not/yet/there.mp4"}])
    assert load_dataset(path, check_files=False)[0].video.endswith("there.mp4")


def test_example_to_json_matches_the_documented_fields() -> None:
    example = Example("i", "test", "/v", 1, 0.1, "Q?", (1, 2, 3, 4), "grounding", "box")
    assert list(example.to_json()) == list(ds.REQUIRED_FIELDS)
    assert example.to_json()["answer"] == [1, 2, 3, 4]


def test_vocabulary_is_what_the_questions_use() -> None:
    truth = [obj(i, shape, colour) for i, (shape, colour) in enumerate(zip(SHAPES, COLOURS))]
    words = " ".join(questions_by_text(truth))
    assert all(shape in words for shape in SHAPES) and all(colour in words for colour in COLOURS)
