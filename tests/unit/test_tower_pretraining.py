"""Dense pretraining of the vision tower and the frozen tower's cached features (training/tower_pretraining.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from evaluation.dataset import generate_split, load_dataset
from evaluation.questions import QuestionConfig
from evaluation.scenes import COLOURS, SHAPES, ObjectTruth, SceneConfig
from training import pipeline
from training.examples import MixConfig, build_examples
from training.tower_pretraining import (
    NO_OBJECT,
    TowerPretrainConfig,
    cache_features,
    cell_targets,
    freeze_tower,
    labelled_examples,
    pretrain_tower,
    serving_cached_features,
    tower_lr_factor,
)
from training.trainer import TrainConfig, build_model, collate, encode, train
from training.views import ModelView

from .test_training import MAX_NUMBER, TINY_SPEC, TINY_VIEW


def _object(object_id: int, shape: str, colour: str, box) -> ObjectTruth:
    return ObjectTruth(object_id, shape, colour, tuple(box), 1.0, False)


def test_each_object_labels_the_cell_of_its_centre_in_the_resized_image() -> None:
    # A 240x320 frame seen as 112x112: 4x4 merged cells of 28 px.
    red_square = _object(0, "square", "red", (0, 0, 40, 40))  # centre (20, 20) -> seen (7, 9.3): cell 0
    blue_star = _object(1, "star", "blue", (240, 180, 320, 240))  # centre (280, 210) -> seen (98, 98): cell 15
    targets = cell_targets([red_square, blue_star], (240, 320), (112, 112))
    assert targets.colour.shape == targets.shape.shape == (16,)
    assert targets.colour[0] == tuple(COLOURS).index("red") + 1 and targets.shape[0] == SHAPES.index("square") + 1
    assert targets.colour[15] == tuple(COLOURS).index("blue") + 1 and targets.shape[15] == SHAPES.index("star") + 1
    assert set(np.flatnonzero(targets.has_object)) == {0, 15}
    assert (targets.colour[1:15] == NO_OBJECT).all()
    np.testing.assert_allclose(targets.box[0], (0, 0, 40 / 320, 40 / 240), atol=1e-6)
    np.testing.assert_allclose(targets.box[15], (0.75, 0.75, 1.0, 1.0), atol=1e-6)


def test_the_larger_of_two_objects_centred_in_one_cell_is_its_label() -> None:
    small = _object(0, "circle", "green", (10, 10, 20, 20))
    large = _object(1, "triangle", "white", (0, 0, 30, 30))
    for order in ([small, large], [large, small]):
        targets = cell_targets(order, (112, 112), (112, 112))
        assert targets.shape[0] == SHAPES.index("triangle") + 1


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    path = generate_split("train", [1001], folder, SceneConfig(seconds=1.0), QuestionConfig(per_frame=4))
    return build_examples(load_dataset(path), TINY_VIEW, MixConfig(), seed=0)


def test_pretraining_lowers_the_tower_loss_and_freezing_keeps_only_the_language_model_trainable(examples) -> None:
    model, _ = build_model(TINY_SPEC, MAX_NUMBER)
    labelled = labelled_examples(examples)
    assert len(labelled) == len(examples) and any(t.has_object.any() for _, t in labelled)
    losses = pretrain_tower(model, labelled, TowerPretrainConfig(steps=40, batch_size=8, lr=5e-3))
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    freeze_tower(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(name.startswith("model.visual") for name in trainable)


def test_cached_features_give_the_same_loss_as_running_the_tower(examples) -> None:
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    freeze_tower(model)
    encoded = [encode(tokenizer, e) for e in examples[:6]]
    features = cache_features(model, [e.image for e in encoded], batch_size=4)
    assert [f.shape[0] for f in features] == [4] * 6  # 56 px: 2x2 merged cells
    model.eval()
    with torch.no_grad():
        full = model(**collate(encoded, tokenizer.pad_token_id, model.config.image_token_id)).loss
        with serving_cached_features(model, features) as select:
            select(range(6))
            tensors = collate(encoded, tokenizer.pad_token_id, model.config.image_token_id, with_pixels=False)
            cached = model(**tensors).loss
    assert float(cached) == pytest.approx(float(full), rel=1e-5)
    # Outside the block the model runs its tower again.
    assert "get_image_features" not in vars(model.model)


def test_training_on_cached_features_leaves_the_frozen_tower_untouched(examples) -> None:
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    freeze_tower(model)
    encoded = [encode(tokenizer, e) for e in examples[:8]]
    features = cache_features(model, [e.image for e in encoded])
    tower_before = [p.detach().clone() for p in model.model.visual.parameters()]
    head_before = model.lm_head.weight.detach().clone()
    config = TrainConfig(minutes=5, batch_size=4, warmup_steps=1, max_steps=3)
    result = train(model, tokenizer, encoded, config, image_features=features)
    assert result.steps == 3
    assert all(torch.equal(a, b) for a, b in zip(tower_before, model.model.visual.parameters(), strict=True))
    assert not torch.equal(head_before, model.lm_head.weight)
    with pytest.raises(ValueError, match="cached image features"):
        train(model, tokenizer, encoded, config, image_features=features[:3])


def test_tower_pretraining_is_part_of_the_cache_key_and_on_for_the_cloud_only() -> None:
    cloud = pipeline.recipe("cloud", 20)
    assert cloud.tower == TowerPretrainConfig(steps=600, empty_weight=0.1, fresh_frames=True, final_lr_fraction=0.1)
    assert pipeline.recipe("edge", 10).tower is None
    end_to_end = pipeline.recipe("cloud", 20, tower_steps=0)
    assert end_to_end.tower is None
    assert len({cloud.key(), end_to_end.key(), pipeline.recipe("cloud", 20, tower_steps=200).key()}) == 3
    assert ModelView(224, keep_aspect=True) == cloud.view
    # Another step count keeps the recipe's other tower settings (fresh frames: the recipe has no cached split).
    longer = pipeline.recipe("cloud", 20, tower_steps=900).tower
    assert longer == TowerPretrainConfig(steps=900, empty_weight=0.1, fresh_frames=True, final_lr_fraction=0.1)
    with pytest.raises(ValueError, match="no cached split"):
        dataclasses.replace(cloud, tower=TowerPretrainConfig(steps=10))


def test_the_tower_learning_rate_falls_along_a_cosine_only_when_asked(examples) -> None:
    assert tower_lr_factor(0, 100, 0.1) == 1.0 and tower_lr_factor(99, 100, 0.1) == pytest.approx(0.1)
    assert tower_lr_factor(50, 101, 0.1) == pytest.approx(0.55)
    assert {tower_lr_factor(step, 100, 1.0) for step in range(100)} == {1.0}  # the old default: constant
    cloud = pipeline.recipe("cloud", 24)  # the cloud's default since the tower's cosine
    assert cloud.tower.final_lr_fraction == 0.1
    constant = pipeline.recipe("cloud", 24, tower_final_lr_fraction=1)  # the cloud's default before the cosine
    assert constant.tower.final_lr_fraction == 1.0 and constant.key() != cloud.key()
    seen = []
    original = torch.optim.AdamW.step

    def record(optimizer, *args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return original(optimizer, *args, **kwargs)

    model, _ = build_model(TINY_SPEC, MAX_NUMBER)
    config = TowerPretrainConfig(steps=5, batch_size=2, lr=1e-3, final_lr_fraction=0.2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", record)
        pretrain_tower(model, labelled_examples(examples), config)
    assert seen == pytest.approx([1e-3 * tower_lr_factor(step, 5, 0.2) for step in range(5)])
    with pytest.raises(ValueError, match="final_lr_fraction"):
        TowerPretrainConfig(final_lr_fraction=1.5)
    with pytest.raises(ValueError, match="pretrained tower"):
        pipeline.recipe("cloud", 24, tower_steps=0, tower_final_lr_fraction=0.1)
