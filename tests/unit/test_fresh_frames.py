"""Fresh procedural training frames and the reading-first curriculum (training/fresh_frames.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from evaluation.dataset import TEST_SEED_START, TRAIN_SEED_START
from evaluation.questions import TASKS
from evaluation.scenes import SHAPES
from training import pipeline
from training.__main__ import main as training_main
from training.examples import MixConfig, quota_draw
from training.fresh_frames import (
    FRESH_SEED_START,
    SINGLE_OBJECT_SCENE,
    FreshCurriculum,
    FreshFrames,
    FreshQuestionStream,
    fresh_labelled_frames,
)
from training.number_loss import NumberLoss
from training.tower_pretraining import TowerPretrainConfig, pretrain_tower
from training.trainer import TrainConfig, build_model, train

from .test_training import MAX_NUMBER, TINY_SPEC, TINY_VIEW


@pytest.fixture(scope="module")
def tokenizer():
    return build_model(TINY_SPEC, MAX_NUMBER)[1]


def test_fresh_frames_are_deterministic_per_seed_and_never_from_the_test_range() -> None:
    first, again, other = FreshFrames(3), FreshFrames(3), FreshFrames(4)
    frames = [first.draw() for _ in range(4)]
    for (frame, truth), (frame_again, truth_again) in zip(frames, [again.draw() for _ in range(4)], strict=True):
        assert np.array_equal(frame, frame_again) and truth == truth_again
    assert not np.array_equal(frames[0][0], other.draw()[0])
    assert FRESH_SEED_START > TRAIN_SEED_START > TEST_SEED_START  # check_seeds("train") guards every draw


def test_single_object_scenes_show_one_object() -> None:
    frames = FreshFrames(0, SINGLE_OBJECT_SCENE)
    for _ in range(10):
        _, truth = frames.draw()
        assert len(truth) == 1 and truth[0].shape in SHAPES


def test_the_stream_reads_single_objects_first_then_asks_every_task_of_full_scenes(tokenizer) -> None:
    curriculum = FreshCurriculum(reading_fraction=0.5, reading_tasks=("grounding",), seed=0)
    stream = FreshQuestionStream(tokenizer, TINY_VIEW, MixConfig(), 6, curriculum)
    assert stream.phase(0.0) == stream.phase(0.49) == "reading" and stream.phase(0.5) == "scenes"
    for _ in range(5):
        reading = stream.example(0.1)
        assert reading.task == "grounding" and not reading.follow_ups  # one object: one grounding question
        box = json.loads(reading.target)[0]["bbox_2d"]
        assert len(box) == 4 and all(0 <= v <= TINY_VIEW.size for v in box)
    tasks = set()
    for _ in range(10):
        example = stream.example(0.9)
        asked = [example.question] + [turn.question for turn in example.follow_ups]
        assert len(asked) == len(set(asked)) <= 6
        tasks.add(example.task)
    assert len(tasks) > 1 and tasks <= set(TASKS)
    encoded = stream(3, 0.9)
    assert len(encoded) == 3 and all(e.answer_spans for e in encoded)


def test_fresh_frames_need_a_mix_without_context_and_a_known_task(tokenizer) -> None:
    with pytest.raises(ValueError, match="without history"):
        FreshQuestionStream(tokenizer, TINY_VIEW, MixConfig(history_fraction=0.5), 4, FreshCurriculum())
    with pytest.raises(ValueError, match="reading_tasks"):
        FreshCurriculum(reading_tasks=("naming",))
    with pytest.raises(ValueError, match="reading_fraction"):
        FreshCurriculum(reading_fraction=1.5)
    with pytest.raises(ValueError, match="fresh frames"):
        pipeline.recipe("edge", 10, fresh_reading_fraction=0.5)


def test_training_on_a_stream_lowers_the_loss() -> None:
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    stream = FreshQuestionStream(tokenizer, TINY_VIEW, MixConfig(), 4, FreshCurriculum(reading_fraction=1.0))
    config = TrainConfig(minutes=5, batch_size=4, peak_lr=5e-3, warmup_steps=1, max_steps=30, seed=0)
    result = train(model, tokenizer, [], config, stream=stream)
    assert result.steps == 30 and np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) * 0.8
    with pytest.raises(ValueError, match="a stream makes every batch"):
        train(model, tokenizer, [object()], config, stream=stream)


@pytest.mark.slow
def test_the_tower_pretrains_on_fresh_frames_with_weighted_empty_cells() -> None:
    model, _ = build_model(TINY_SPEC, MAX_NUMBER)
    draw = fresh_labelled_frames(FreshFrames(0), TINY_VIEW)
    images = draw(2)
    assert all(image.shape[:2] == (TINY_VIEW.size, TINY_VIEW.size) for image, _ in images)
    config = TowerPretrainConfig(steps=30, batch_size=8, lr=5e-3, empty_weight=0.1)
    losses = pretrain_tower(model, draw, config)
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])
    with pytest.raises(ValueError, match="empty_weight"):
        TowerPretrainConfig(empty_weight=0.0)


def test_the_fresh_frame_options_change_the_key() -> None:
    cloud = pipeline.recipe("cloud", 20)
    assert cloud.fresh == FreshCurriculum(reading_fraction=0.15) and cloud.train.attention_weight == 1.0
    assert cloud.tower.empty_weight == 0.1 and cloud.tower.fresh_frames
    # The default before fresh frames.
    before = dataclasses.replace(
        cloud, tower=TowerPretrainConfig(steps=300), fresh=None, vocabulary="generic",
        train=dataclasses.replace(cloud.train, precision="fp32", attention_weight=0.0, number_loss=NumberLoss()),
    )  # fmt: skip
    weighted = pipeline.recipe("cloud", 20, tower_empty_weight=0.5)
    fresh = pipeline.recipe("cloud", 20, fresh_reading_fraction=0.4)
    assert fresh.tower.fresh_frames and fresh.fresh == FreshCurriculum(reading_fraction=0.4)
    supervised = pipeline.recipe("cloud", 20, attention_weight=0.5)
    assert supervised.train.attention_weight == 0.5
    stepped = pipeline.recipe("cloud", 20, steps=5000)
    on_gpu = pipeline.recipe("cloud", 20, device="cuda")
    assert stepped.train.steps == 5000 and on_gpu.train.device == "cuda"
    assert pipeline.recipe("cloud", 20, device="cpu").key() == cloud.key()
    keys = {cloud.key(), before.key(), weighted.key(), fresh.key(), supervised.key(), stepped.key(), on_gpu.key()}
    assert len(keys) == 7
    with pytest.raises(ValueError, match="pretrained tower"):
        pipeline.recipe("cloud", 20, tower_steps=0, tower_empty_weight=0.1)
    with pytest.raises(ValueError, match="answers' cells"):
        pipeline.recipe("edge", 10, attention_weight=1.0)  # one question a cached frame: no cells


def test_the_training_command_takes_the_fresh_options(capsys) -> None:
    with pytest.raises(SystemExit):
        training_main(["--model", "edge", "--minutes", "1", "--fresh-reading-fraction", "0.5"])
    assert "fresh frames have no history" in capsys.readouterr().err


def test_the_training_command_rejects_an_empty_step_budget(capsys) -> None:
    with pytest.raises(SystemExit):
        training_main(["--model", "cloud", "--minutes", "1", "--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_a_quota_draw_asks_each_task_its_quota_first_then_lets_the_tasks_take_turns() -> None:
    by_task = {"grounding": [f"g{i}" for i in range(4)], "counting": [f"c{i}" for i in range(10)], "recognition": []}
    rng = np.random.default_rng(0)
    for _ in range(20):
        chosen = quota_draw(by_task, {"grounding": 3, "recognition": 2}, 6, rng)
        assert len(chosen) == len(set(chosen)) == 6
        assert sum(q.startswith("g") for q in chosen) >= 3  # the quota, then turns may add the fourth
    # A quota larger than what the frame has takes all of it; the count still caps the draw.
    assert sorted(quota_draw(by_task, {"grounding": 9}, 4, rng)) == ["g0", "g1", "g2", "g3"]
    assert quota_draw(by_task, {"grounding": 2}, 0, rng) == []


def test_the_stream_fills_a_scene_quota_in_full_scenes_but_not_while_reading(tokenizer) -> None:
    def grounding_share(curriculum: FreshCurriculum, fraction: float) -> float:
        stream = FreshQuestionStream(tokenizer, TINY_VIEW, MixConfig(), 8, curriculum)
        examples = [stream.example(fraction) for _ in range(40)]
        answers = [answer for e in examples for answer in [e.target] + [turn.answer for turn in e.follow_ups]]
        return sum("bbox_2d" in answer for answer in answers) / len(answers)

    plain = FreshCurriculum(reading_fraction=0.5, seed=3)
    quota = dataclasses.replace(plain, scene_quota=(("grounding", 8),))
    assert grounding_share(quota, 0.9) > grounding_share(plain, 0.9) + 0.05
    assert grounding_share(quota, 0.1) == grounding_share(plain, 0.1) == 1.0  # reading: grounding only
    with pytest.raises(ValueError, match="scene_quota"):
        FreshCurriculum(scene_quota=(("naming", 2),))
    with pytest.raises(ValueError, match="scene_quota"):
        FreshCurriculum(scene_quota=(("grounding", -1),))
    with pytest.raises(ValueError, match="asks more than 12"):
        pipeline.recipe("cloud", 20, scene_quota={"grounding": 8, "counting": 5})
    with pytest.raises(ValueError, match="needs fresh frames"):
        pipeline.recipe("edge", 10, scene_quota={"grounding": 2})


def test_a_scene_quota_enters_the_key_only_when_set_and_keeps_the_reading_fraction(capsys) -> None:
    cloud = pipeline.recipe("cloud", 24)
    assert pipeline.recipe("cloud", 24, scene_quota={}).key() == cloud.key()
    quota = pipeline.recipe("cloud", 24, scene_quota={"grounding": 6}, fresh_reading_fraction=0.2)
    assert quota.fresh == FreshCurriculum(reading_fraction=0.2, scene_quota=(("grounding", 6),))
    assert quota.key() != pipeline.recipe("cloud", 24, fresh_reading_fraction=0.2).key()
    with pytest.raises(SystemExit):
        training_main(["--model", "cloud", "--minutes", "1", "--scene-quota", "grounding=many"])
    assert "expected TASK=N" in capsys.readouterr().err


def test_a_reading_scene_share_mixes_full_scenes_into_the_reading_phase_only(tokenizer) -> None:
    def questions_per_example(curriculum: FreshCurriculum, fraction: float) -> list[int]:
        stream = FreshQuestionStream(tokenizer, TINY_VIEW, MixConfig(), 6, curriculum)
        return [1 + len(stream.example(fraction).follow_ups) for _ in range(60)]

    plain = FreshCurriculum(reading_fraction=0.5, seed=4)
    mixed = dataclasses.replace(plain, reading_scene_share=0.5)
    # Reading a single object asks one question; a full scene asks several.
    assert questions_per_example(plain, 0.1) == [1] * 60
    reading = questions_per_example(mixed, 0.1)
    assert 10 <= sum(count > 1 for count in reading) <= 50
    # Full scenes are drawn exactly as without the share.
    assert questions_per_example(mixed, 0.9) == questions_per_example(plain, 0.9)
    with pytest.raises(ValueError, match="reading_scene_share"):
        FreshCurriculum(reading_scene_share=1.5)


def test_a_reading_scene_share_enters_the_key_only_when_set(capsys) -> None:
    cloud = pipeline.recipe("cloud", 24)
    assert pipeline.recipe("cloud", 24, reading_scene_share=0).key() == cloud.key()
    shared = pipeline.recipe("cloud", 24, reading_scene_share=0.25)
    assert shared.fresh == dataclasses.replace(cloud.fresh, reading_scene_share=0.25)
    assert shared.key() != cloud.key()
    with pytest.raises(ValueError, match="needs fresh frames"):
        pipeline.recipe("edge", 10, reading_scene_share=0.25)
    with pytest.raises(SystemExit):
        training_main(["--model", "cloud", "--minutes", "1", "--reading-scene-share", "2"])
    assert "reading_scene_share must be in [0, 1]" in capsys.readouterr().err
