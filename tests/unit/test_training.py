"""Training the default checkpoints (training): examples, tokenizer, trainer, cache key, saved model.

Everything here is a tiny version: a 1 s video, a model of a few thousand parameters, a few steps.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from python_backends.detections import parse_detections
from engines.tiny_checkpoint import TinyVLMSpec, train_tokenizer
from evaluation.dataset import Example, generate_split, load_dataset
from evaluation.questions import QuestionConfig
from evaluation.scenes import COLOURS, SHAPES, SceneConfig
from training import pipeline
from training.evaluate import (
    Prediction,
    evaluate,
    score_answer,
    size_classes_legend,
    summarise,
    target_size_class,
)
from training.examples import EDGE_MIX, MixConfig, ModelExample, build_examples
from training.tokens import add_number_tokens, binned_box, grounding_answer
from training.trainer import (
    IGNORE,
    TrainConfig,
    answer_loss,
    batch_loss,
    build_model,
    collate,
    encode,
    lr_factor,
    number_code,
    save_checkpoint,
    train,
)
from training.views import ModelView

TINY_SPEC = TinyVLMSpec(
    name="test-tiny",
    text_hidden=32,
    text_layers=1,
    text_heads=2,
    text_kv_heads=1,
    text_intermediate=64,
    mrope_section=(2, 3, 3),
    vision_hidden=32,
    vision_depth=1,
    vision_heads=2,
    vision_intermediate=64,
    fullatt_block_indexes=(0,),
    image_size=56,
    vocab_size=512,
    seed=3,
)
TINY_VIEW = ModelView(56, keep_aspect=False)
MAX_NUMBER = 128


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> list:
    """One 1 s training video (10 frames), four questions per frame."""
    folder = tmp_path_factory.mktemp("split")
    path = generate_split("train", [1000], folder, SceneConfig(seconds=1.0), QuestionConfig(per_frame=4))
    return load_dataset(path)


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(TINY_SPEC, MAX_NUMBER)


def test_examples_are_well_formed_and_their_targets_score_as_correct(split) -> None:
    mix = MixConfig(history_fraction=0.5, focus_fraction=1.0, coordinate_bin=2, latencies_s=(0.3,))  # 1 s video
    examples = build_examples(split, ModelView(112, keep_aspect=False), mix, seed=1)
    assert len(examples) == len(split)
    assert {e.context for e in examples} == {"none", "history", "focus"}
    for example in examples:
        assert example.images[0].dtype == np.uint8
        if example.context == "focus":
            assert example.task == "recognition"
        else:
            assert example.images[0].shape == (112, 112, 3)
        for turn in example.history:
            assert turn.answer.startswith("[cloud answer, frame ")
        if example.task == "recognition":
            assert example.target in set(COLOURS) | set(SHAPES)
        if example.task == "grounding":
            (detection,) = parse_detections(example.target)
            assert all(0 <= v <= 112 and v % 2 == 0 for v in detection.bbox)
        # The target is an answer the benchmark's scorer accepts (boxes mapped back from the model's pixels).
        assert score_answer(example, example.target).correct, example
    again = build_examples(split, ModelView(112, keep_aspect=False), mix, seed=1)
    assert [(e.target, e.history, e.context) for e in again] == [(e.target, e.history, e.context) for e in examples]


@pytest.mark.slow
def test_cloud_view_keeps_the_aspect_ratio_of_the_image_processor(split) -> None:
    (example,) = build_examples(split[:1], ModelView(224, keep_aspect=True), MixConfig(), seed=0)
    height, width = example.images[0].shape[:2]
    assert (height, width) == example.seen_size == (168, 252)  # 240 x 320 frames, ~224^2 pixels, multiples of 28


def test_fixed_age_history_is_the_same_question_and_says_when_it_is_stale(split) -> None:
    examples = build_examples(split, TINY_VIEW, MixConfig(), seed=0, fixed_age_s=0.5)
    with_context = [e for e in examples if e.history]
    assert with_context
    for example in with_context:
        (turn,) = example.history
        assert turn.question == example.question
        assert "0.5 s old" in turn.answer
        assert isinstance(example.context_stale, bool)
        if example.task != "grounding":
            assert turn.answer.endswith(" " + example.target) != example.context_stale


def test_tokenizer_keeps_numbers_whole_and_round_trips_boxes() -> None:
    tokenizer = train_tokenizer(512, 0)
    assert add_number_tokens(tokenizer, 448) > 0
    for number in (0, 7, 12, 99, 100, 224, 448):
        assert len(tokenizer(str(number), add_special_tokens=False).input_ids) == 1
    answer = grounding_answer([0, 12, 448, 104], "red circle")
    ids = tokenizer(answer, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == answer
    (detection,) = parse_detections(tokenizer.decode(ids))
    assert detection.bbox == (0.0, 12.0, 448.0, 104.0) and detection.label == "red circle"
    for number in ("12", "448", "104"):
        assert tokenizer.convert_tokens_to_ids(number) in ids


def test_binned_boxes_stay_inside_the_image_and_never_collapse() -> None:
    assert binned_box([1, 1, 2, 2], (112, 112), 4) == [0, 0, 4, 4]
    assert binned_box([111, 50, 112, 51], (112, 112), 4) == [108, 48, 112, 52]
    assert binned_box([10.4, 20.6, 30, 41], (56, 112), 2) == [10, 20, 30, 40]


def test_lr_warms_up_then_falls_to_the_final_fraction_at_the_budget() -> None:
    assert lr_factor(0.0, 0, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(0.0, 9, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(0.5, 100, 10, 0.1) == pytest.approx(0.55)
    assert lr_factor(1.0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(2.0, 100, 10, 0.1) == pytest.approx(0.1)


def test_the_final_learning_rate_fraction_is_a_checked_option_that_keys_only_when_changed() -> None:
    cloud = pipeline.recipe("cloud", 24)
    assert cloud.train.final_lr_fraction == 0.1
    assert pipeline.recipe("cloud", 24, final_lr_fraction=0.1).key() == cloud.key()
    flatter = pipeline.recipe("cloud", 24, final_lr_fraction=0.4)
    assert flatter.train.final_lr_fraction == 0.4 and flatter.key() != cloud.key()
    assert flatter.train.precision == cloud.train.precision  # the other settings stay the recipe's
    with pytest.raises(ValueError, match="final_lr_fraction"):
        TrainConfig(minutes=1, final_lr_fraction=1.5)


def test_the_coordinate_bin_is_an_option_that_keys_only_when_changed(split, capsys) -> None:
    from training.__main__ import main as training_main

    cloud = pipeline.recipe("cloud", 24)
    assert cloud.mix.coordinate_bin == 4
    assert pipeline.recipe("cloud", 24, coordinate_bin=4).key() == cloud.key()
    finer = pipeline.recipe("cloud", 24, coordinate_bin=2)
    assert finer.mix == replace(cloud.mix, coordinate_bin=2) and finer.key() != cloud.key()
    grounding = [q for q in split if q.task == "grounding"]
    examples = build_examples(grounding, TINY_VIEW, finer.mix, seed=0)
    corners = [v for e in examples for v in parse_detections(e.target)[0].bbox]
    assert all(v % 2 == 0 for v in corners) and any(v % 4 for v in corners)  # targets on the finer grid
    with pytest.raises(SystemExit):
        training_main(["--model", "cloud", "--minutes", "1", "--coordinate-bin", "0"])
    assert "coordinate_bin must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_a_short_training_run_lowers_the_loss_on_a_fixed_batch(split, tiny_model) -> None:
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    examples = build_examples(split[:8], TINY_VIEW, MixConfig(), seed=0)
    encoded = [encode(tokenizer, e) for e in examples]
    batch = collate(encoded, tokenizer.pad_token_id, model.config.image_token_id)
    before = batch_loss(model, batch)
    config = TrainConfig(minutes=5, batch_size=8, peak_lr=5e-3, warmup_steps=1, max_steps=12, seed=0)
    result = train(model, tokenizer, encoded, config)
    assert result.steps == 12 and result.examples_seen == 96
    assert batch_loss(model, batch) < before * 0.8


def test_a_step_budget_drives_the_schedule_and_ends_the_run(split) -> None:
    """With `steps`, the stream and the learning rate see steps done / steps, whatever the wall time."""
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    encoded = [encode(tokenizer, e) for e in build_examples(split[:4], TINY_VIEW, MixConfig(), seed=0)]
    seen: list[float] = []

    def stream(batch_size: int, fraction: float) -> list:
        seen.append(fraction)
        return encoded[:batch_size]

    config = TrainConfig(minutes=5, batch_size=2, warmup_steps=1, steps=4, log_every_s=0.0)
    logged: list[str] = []
    result = train(model, tokenizer, [], config, progress=logged.append, stream=stream)
    assert result.steps == 4 and seen == [0.0, 0.25, 0.5, 0.75]
    assert logged and "/4" in logged[-1]
    assert train(model, tokenizer, encoded, replace(config, max_steps=2)).steps == 2  # the smaller cap wins
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(minutes=5, steps=0)


@pytest.mark.slow
def test_the_trainer_memorises_a_dozen_examples_of_every_task(split) -> None:
    """The whole path (targets, image rows, token alignment, loss mask, greedy decoding) can learn: a model that
    cannot even memorise 12 examples has a bug, whatever it scores on held-out frames. The full-size models do this
    for 64 examples in 300 steps, at every task, while staying at the majority answer on the test split."""
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    examples = build_examples(split[:12], TINY_VIEW, MixConfig(), seed=0)
    assert {e.task for e in examples} == {"recognition", "localisation", "grounding", "counting"}
    encoded = [encode(tokenizer, e) for e in examples]
    config = TrainConfig(minutes=5, batch_size=12, peak_lr=5e-3, warmup_steps=5, max_steps=150, seed=0)
    train(model, tokenizer, encoded, config)
    answers = [p.text for p in evaluate(model, tokenizer, examples)]
    memorised = [a == e.target for a, e in zip(answers, examples, strict=True)]
    assert sum(memorised) >= 11, list(zip(answers, (e.target for e in examples), strict=True))


def test_a_cached_run_reports_without_training(tmp_path, capsys) -> None:
    recipe = pipeline.recipe("edge", 0.01)
    folder = tmp_path / f"edge-{recipe.key()}"
    folder.mkdir()
    row = {"n": 3, "accuracy": 2 / 3, "low": 0.2, "high": 0.94}
    (folder / "training.json").write_text(json.dumps({"model": "edge", "test_zero_delay": {"counting": row}}))
    info = pipeline.run(recipe, tmp_path)
    assert info["test_zero_delay"]["counting"]["n"] == 3
    assert "counting" in capsys.readouterr().out


def test_saved_checkpoint_loads_with_transformers_and_generates(split, tiny_model, tmp_path: Path) -> None:
    from spotvlm.build import tiny_image_size
    from python_backends.generation import GenerationRequest, QwenVLGenerator

    model, tokenizer = tiny_model
    folder = save_checkpoint(model, tokenizer, TINY_SPEC, tmp_path / "ckpt", "abc", {"steps": 0})
    assert tiny_image_size(folder) == 56
    generator = QwenVLGenerator(folder)
    assert generator.tokenizer.decode(generator.tokenizer("[12, 40]").input_ids) == "[12, 40]"
    frame = np.zeros((240, 320, 3), dtype=np.uint8)
    (tokens,) = generator.generate_from_images([GenerationRequest("How many circles are there?", 4, images=[frame])])
    assert len(tokens) <= 4 and isinstance(generator.decode(tokens), str)
    examples = build_examples(split[:4], TINY_VIEW, EDGE_MIX, seed=0)
    summary = summarise(evaluate(generator.model, generator.tokenizer, examples))
    assert sum(row["n"] for row in summary.values()) == 4


def test_number_rows_of_nearby_values_are_more_alike_than_distant_ones() -> None:
    code = number_code(448, 32)
    assert code.shape == (449, 32)

    def cosine(a: int, b: int) -> float:
        return float((code[a] @ code[b]) / (code[a].norm() * code[b].norm()))

    for value in (0, 100, 300):
        assert cosine(value, value + 2) > cosine(value, value + 40) and cosine(value, value + 2) > 0.8


def test_built_models_start_number_tokens_from_their_code() -> None:
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    ids = tokenizer.convert_tokens_to_ids(["7", "8", "120"])
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        rows = weight[ids].detach()
        expected = number_code(MAX_NUMBER, rows.shape[1])[[7, 8, 120]]
        cosines = (rows * expected).sum(1) / (rows.norm(dim=1) * expected.norm(dim=1))
        assert bool((cosines > 0.999).all()), cosines


def test_answer_loss_weighs_each_answer_once_and_matches_the_full_logits(split) -> None:
    import torch

    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    examples = build_examples(split[:6], TINY_VIEW, MixConfig(), seed=0)
    tensors = collate([encode(tokenizer, e) for e in examples], tokenizer.pad_token_id, model.config.image_token_id)
    labels = tensors.pop("labels")
    labels[0, :] = IGNORE  # a row without answer tokens counts as zero
    logits = model(**tensors).logits
    expected = []
    for row in range(labels.shape[0]):
        positions = [t for t in range(1, labels.shape[1]) if labels[row, t] != IGNORE]
        terms = [torch.nn.functional.cross_entropy(logits[row, t - 1 : t], labels[row, t : t + 1]) for t in positions]
        expected.append(torch.stack(terms).mean() if terms else torch.tensor(0.0))
    assert len({len(e.target) for e in examples}) > 1  # answers of several lengths, each one term
    assert torch.allclose(answer_loss(model, tensors, labels), torch.stack(expected).mean(), atol=1e-6)


def test_trained_specs_rope_bases_and_default_digests_stay_put() -> None:
    # The edge (one question per image) learns faster with a small base, the cloud (12 per frame) with Qwen's.
    assert pipeline.EDGE_TRAINED_SPEC.rope_theta == 10.0 and pipeline.CLOUD_TRAINED_SPEC.rope_theta == 1e6
    model, _ = build_model(replace(TINY_SPEC, rope_theta=10.0), 64)
    assert model.config.text_config.rope_parameters["rope_theta"] == 10.0
    assert "rope_theta" not in TINY_SPEC.identity() and replace(TINY_SPEC, rope_theta=10.0).identity()["rope_theta"]
    assert TINY_SPEC.digest() != replace(TINY_SPEC, rope_theta=10.0).digest()


@pytest.mark.parametrize("text", ["10", "10,0", "a,b", "1,2,3", "-1,5", ""])
def test_train_minutes_must_be_two_positive_numbers(text: str) -> None:
    from spotvlm.build import parse_train_minutes

    with pytest.raises(ValueError, match="--train-minutes"):
        parse_train_minutes(text)
    assert parse_train_minutes("10,20") == (10.0, 20.0)


def test_grounding_is_summarised_by_the_targets_size_against_the_frames() -> None:
    def prediction(task: str, answer, correct: bool) -> Prediction:
        answer_type = "box" if task == "grounding" else "text"
        meta = {"_frame_size": (240, 320)}  # (height, width): no frame to read
        source = Example("q", "test", "/v", 0, 0.0, "?", answer, task, answer_type, meta)
        return Prediction(ModelExample("q", task, "?", "", [], source=source), "", correct)

    # Longest sides 16, 40 and 60 px of a 320 px frame: 5%, 12.5% and 19%.
    small, medium, large = ((10, 10, 26, 20), (0, 0, 40, 30), (100, 50, 130, 110))
    predictions = [
        prediction("grounding", small, False),
        prediction("grounding", small, True),
        prediction("grounding", medium, True),
        prediction("grounding", large, True),
        prediction("counting", "2", True),
    ]
    assert [target_size_class(p) for p in predictions] == [
        "grounding small", "grounding small", "grounding medium", "grounding large", "counting",
    ]  # fmt: skip
    summary = summarise(predictions[:4], target_size_class)
    assert list(summary) == ["grounding large", "grounding medium", "grounding small"]
    assert summary["grounding small"]["n"] == 2 and summary["grounding small"]["accuracy"] == 0.5
    assert size_classes_legend() == "small < 8% of the frame's longest side, medium < 14%"
