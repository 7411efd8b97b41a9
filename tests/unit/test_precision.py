"""Fast training: bfloat16 autocast (training/precision.py) and packed window attention (packed_attention.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from python_backends.training import pipeline
from python_backends.training.examples import MixConfig
from python_backends.training.fresh_frames import (
    FreshCurriculum,
    FreshFrames,
    FreshQuestionStream,
    fresh_labelled_frames,
)
from python_backends.training.packed_attention import PACKED_ATTENTION
from python_backends.training.precision import autocast, training_attention
from python_backends.training.tower_pretraining import TowerPretrainConfig, pretrain_tower, tower_features
from python_backends.training.trainer import TrainConfig, batch_loss, build_model, collate, save_checkpoint, train

from .test_training import MAX_NUMBER, TINY_SPEC, TINY_VIEW

# Two window layers and a full one; 112 px is 8 x 8 patches, so 56-pixel windows are 4 x 4 patches.
WINDOWED_SPEC = replace(TINY_SPEC, vision_depth=3, fullatt_block_indexes=(1,), image_size=112)


def _implementations(model) -> tuple[str, str]:
    return model.config.text_config._attn_implementation, model.config.vision_config._attn_implementation


@pytest.mark.parametrize("shape", [(112, 112), (84, 140)], ids=["equal windows", "uneven windows"])
def test_packed_windows_give_the_towers_output_and_gradients(shape) -> None:
    """The packed call is the same arithmetic as transformers' one call per window, forward and backward; at 84x140
    (6 x 10 patches) the windows are of 16, 8 and 4 patches, which the packing pads and masks."""
    model, _ = build_model(WINDOWED_SPEC, MAX_NUMBER)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (*shape, 3), dtype=np.uint8) for _ in range(3)]

    def output_and_gradients():
        model.zero_grad()
        features = tower_features(model.model.visual, images)
        (features**2).sum().backward()
        return features.detach(), [p.grad.clone() for p in model.model.visual.parameters()]

    reference, reference_grads = output_and_gradients()
    with training_attention(model, "cpu", "fp32"):
        assert _implementations(model)[1] == PACKED_ATTENTION
        packed, packed_grads = output_and_gradients()
    torch.testing.assert_close(packed, reference, rtol=1e-4, atol=1e-5)
    for ours, theirs in zip(packed_grads, reference_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5)


def test_training_attention_is_restored_and_never_saved(tmp_path) -> None:
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    before = _implementations(model)
    with training_attention(model, "cpu", "bf16"):
        assert _implementations(model) == ("eager", PACKED_ATTENTION)
    with training_attention(model, "cpu", "fp32"):  # float32: the language model keeps its kernel
        assert _implementations(model) == (before[0], PACKED_ATTENTION)
    with pytest.raises(RuntimeError, match="inside"), training_attention(model, "cpu", "bf16"):
        raise RuntimeError("inside")
    assert _implementations(model) == before
    with training_attention(model, "cpu", "bf16"):
        folder = save_checkpoint(model, tokenizer, TINY_SPEC, tmp_path / "ckpt", "abc", {"steps": 0})
    assert PACKED_ATTENTION not in (folder / "config.json").read_text()
    assert "eager" not in json.dumps(json.loads((folder / "config.json").read_text()))


def test_precision_is_checked_and_float32_is_a_no_op() -> None:
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(minutes=1, precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        autocast("cpu", "half")
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_bf16_training_with_attention_supervision_learns_and_keeps_float32_weights() -> None:
    """The whole cloud path in bfloat16: fresh frames, many questions a frame, attention supervision (whose mass
    sums in float32), then a float32 evaluation."""
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    stream = FreshQuestionStream(tokenizer, TINY_VIEW, MixConfig(), 4, FreshCurriculum(seed=2))
    held = collate(stream(8, 0.5), tokenizer.pad_token_id, model.config.image_token_id)
    before = batch_loss(model, held)
    config = TrainConfig(
        minutes=5, batch_size=4, peak_lr=5e-3, warmup_steps=1, max_steps=40, attention_weight=1.0,
        supervised_layers=(0,), precision="bf16",
    )  # fmt: skip
    result = train(model, tokenizer, [], config, stream=stream)
    assert result.steps == 40 and all(np.isfinite(result.losses))
    assert batch_loss(model, held) < before * 0.8
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert _implementations(model) == ("sdpa", "sdpa")


def test_bf16_tower_pretraining_learns_as_float32_does() -> None:
    """From the same weights on the same fresh frames, the bfloat16 tower's loss falls as the float32 one's does."""
    config = TowerPretrainConfig(steps=60, batch_size=8, lr=5e-3)
    final = {}
    for precision in ("fp32", "bf16"):
        model, _ = build_model(WINDOWED_SPEC, MAX_NUMBER)
        losses = pretrain_tower(model, fresh_labelled_frames(FreshFrames(3), TINY_VIEW), config, precision=precision)
        assert len(losses) == 60 and np.mean(losses[-10:]) < 0.85 * np.mean(losses[:5])
        assert _implementations(model) == ("sdpa", "sdpa")
        final[precision] = np.mean(losses[-10:])
    assert final["bf16"] == pytest.approx(final["fp32"], rel=0.1)


def test_both_defaults_train_in_bf16_and_precision_enters_the_key_only_when_not_float32() -> None:
    for model in ("edge", "cloud"):
        default = pipeline.recipe(model, 20)
        assert default.train.precision == "bf16" and pipeline.recipe(model, 20, precision="bf16").key() == default.key()
        in_fp32 = pipeline.recipe(model, 20, precision="fp32")
        assert in_fp32.key() != default.key()
        assert in_fp32.key() == replace(default, train=replace(default.train, precision="fp32")).key()
    # float32 stays out of the key, so checkpoints from before the option keep theirs (test_fresh_frames pins one).
    stepped = pipeline.recipe("cloud", 20, steps=100)  # another option leaves the default's precision alone
    assert stepped.train.precision == "bf16" and stepped.train.steps == 100
