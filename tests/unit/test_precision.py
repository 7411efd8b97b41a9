"""Fast training: bfloat16 autocast (training/precision.py) and packed window attention (packed_attention.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from training import pipeline
from training import precision as precision_module
from training.examples import MixConfig
from training.fresh_frames import (
    FreshCurriculum,
    FreshFrames,
    FreshQuestionStream,
    fresh_labelled_frames,
)
from training.packed_attention import PACKED_ATTENTION
from training.attention_supervision import attention_capture, attention_loss, target_pairs
from training.precision import TEXT_ATTENTION, Bf16Support, autocast, choose_precision, float32_scores
from training.precision import training_attention
from training.tower_pretraining import TowerPretrainConfig, pretrain_tower, tower_features
from training.trainer import STEP_BUDGET_GUARD, TrainConfig, batch_loss, build_model, collate, expectation, planned
from training.trainer import save_checkpoint, time_limit_s, train

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


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "bf16-fp32-scores"])
def test_bf16_training_with_attention_supervision_learns_and_keeps_float32_weights(precision) -> None:
    """The whole cloud path in bfloat16: fresh frames, many questions a frame, attention supervision (whose mass
    sums in float32), then a float32 evaluation."""
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    stream = FreshQuestionStream(tokenizer, TINY_VIEW, MixConfig(), 4, FreshCurriculum(seed=2))
    held = collate(stream(8, 0.5), tokenizer.pad_token_id, model.config.image_token_id)
    before = batch_loss(model, held)
    config = TrainConfig(
        minutes=5, batch_size=4, peak_lr=5e-3, warmup_steps=1, max_steps=40, attention_weight=1.0,
        supervised_layers=(0,), precision=precision,
    )  # fmt: skip
    result = train(model, tokenizer, [], config, stream=stream)
    assert result.steps == 40 and all(np.isfinite(result.losses))
    assert batch_loss(model, held) < before * 0.8
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert _implementations(model) == ("sdpa", "sdpa")


@pytest.mark.slow
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


def test_the_defaults_train_in_bf16_and_precision_enters_the_key_only_when_not_float32() -> None:
    """The edge trains in bfloat16, the cloud in bfloat16 with float32 attention scores; every precision is its own
    cache entry, and float32 stays out of the key (so checkpoints from before the option keep theirs: test_fresh_frames
    pins one)."""
    for model, expected in (("edge", "bf16"), ("cloud", "bf16-fp32-scores")):
        default = pipeline.recipe(model, 20)
        assert default.train.precision == expected
        assert pipeline.recipe(model, 20, precision=expected).key() == default.key()
        keys = {pipeline.recipe(model, 20, precision=p).key() for p in ("fp32", "bf16", "bf16-fp32-scores")}
        assert len(keys) == 3
        in_fp32 = pipeline.recipe(model, 20, precision="fp32")
        assert in_fp32.key() == replace(default, train=replace(default.train, precision="fp32")).key()
    stepped = pipeline.recipe("cloud", 20, steps=100)  # another option leaves the default's precision alone
    assert stepped.train.precision == "bf16-fp32-scores" and stepped.train.steps == 100


def test_float32_scores_are_eager_attention_with_exact_scores_under_autocast() -> None:
    """The float32-score attention is the model's eager attention (same language-model output in float32, same
    supervision loss); under bfloat16 autocast its weights stay those of float32 scores, where eager attention's
    scores are rounded to bfloat16."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import eager_attention_forward

    from training.precision import float32_score_attention

    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    model.eval()
    stream = FreshQuestionStream(tokenizer, TINY_VIEW, MixConfig(), 4, FreshCurriculum(seed=7))
    batch = stream(2, 0.5)
    tensors = collate(batch, tokenizer.pad_token_id, model.config.image_token_id)
    tensors.pop("labels")
    pairs = target_pairs(tensors["input_ids"], model.config.image_token_id, batch)

    def run(precision: str):
        with torch.no_grad(), training_attention(model, "cpu", precision), attention_capture(model, [0]) as captured:
            hidden = model.model(**tensors).last_hidden_state
            return hidden, float(attention_loss(captured, pairs, float32_scores=float32_scores(precision)))

    reference, reference_loss = run("fp32")
    with training_attention(model, "cpu", "bf16-fp32-scores"):
        assert _implementations(model)[0] == TEXT_ATTENTION
    exact, exact_loss = run("bf16-fp32-scores")  # no autocast: float32 throughout
    torch.testing.assert_close(exact, reference, rtol=1e-4, atol=1e-5)
    assert exact_loss == pytest.approx(reference_loss, rel=1e-5)

    # Scores near 40 (bfloat16 steps of 0.25 there) that differ by 0.05: rounded, they tie.
    module = model.model.language_model.layers[0].self_attn
    query = torch.zeros(1, module.config.num_attention_heads, 1, module.head_dim)
    query[..., 0] = 1.0
    key = torch.zeros(1, module.config.num_key_value_heads, 2, module.head_dim)
    key[..., 0, 0], key[..., 1, 0] = 40.0 / module.scaling, 40.05 / module.scaling
    value = torch.eye(2).expand(1, module.config.num_key_value_heads, 2, 2).contiguous()
    with autocast("cpu", "bf16"):
        ours, _ = float32_score_attention(module, query, key, value, None, module.scaling)
        theirs, _ = eager_attention_forward(module, query, key, value, None, module.scaling)
    expected = torch.softmax(torch.tensor([40.0, 40.05]), 0)
    torch.testing.assert_close(ours[0, 0, 0].float(), expected, atol=4e-3, rtol=0)
    assert float(theirs[0, 0, 0, 1] - theirs[0, 0, 0, 0]) == 0.0


def test_the_tower_precision_defaults_to_the_language_models_and_enters_the_key_only_when_set(monkeypatch) -> None:
    cloud = pipeline.recipe("cloud", 20)
    assert cloud.tower.precision is None
    assert pipeline.recipe("cloud", 20, tower_precision="bf16").tower.precision == "bf16"
    mixed = pipeline.recipe("cloud", 20, precision="fp32", tower_precision="bf16")
    assert mixed.train.precision == "fp32" and mixed.tower.precision == "bf16"
    assert mixed.key() != pipeline.recipe("cloud", 20, precision="fp32").key()
    with pytest.raises(ValueError, match="precision must be one of"):
        TowerPretrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="pretrained tower"):
        pipeline.recipe("edge", 10, tower_precision="bf16")
    # The tower pretrains in its own precision, the language model's when it has none.
    seen = []
    monkeypatch.setattr(
        "training.tower_pretraining.pretrain_tower",
        lambda model, labelled, config, progress=None, precision="fp32": seen.append(precision) or [1.0],
    )
    model, _ = build_model(WINDOWED_SPEC, MAX_NUMBER)
    _fake_cpu(monkeypatch, NATIVE)
    for chosen in (mixed, pipeline.recipe("cloud", 20, precision="fp32")):
        pipeline.pretrain_and_cache(model, [], [], chosen)
    assert seen == ["bf16", "fp32"]
    _fake_cpu(monkeypatch, AVX2_ONLY)  # a CPU without fast bfloat16 pretrains the tower in float32
    pipeline.pretrain_and_cache(model, [], [], mixed)
    assert seen[-1] == "fp32"


# -- the precision this CPU trains in, and the step budget --------------------------------------------------------

NATIVE = Bf16Support("AVX512", True)
AVX2_ONLY = Bf16Support("AVX2", False, fp32_ms=0.5, bf16_ms=45.0)  # about what an AVX2-only CPU measures
FAST_ELSEWHERE = Bf16Support("DEFAULT", False, fp32_ms=1.0, bf16_ms=0.6)  # e.g. a CPU torch has no flag for


def _fake_cpu(monkeypatch, support: Bf16Support) -> list:
    asked = []
    monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: asked.append(1) or support)
    return asked


@pytest.mark.parametrize("requested", ["bf16", "bf16-fp32-scores"])
def test_a_cpu_without_fast_bf16_trains_in_float32(monkeypatch, requested) -> None:
    _fake_cpu(monkeypatch, AVX2_ONLY)
    choice = choose_precision(requested, "cpu")
    assert choice.requested == requested and choice.precision == "fp32"
    assert "AVX2" in choice.reason and "45.00 ms against 0.50 ms" in choice.reason


@pytest.mark.parametrize("support", [NATIVE, FAST_ELSEWHERE], ids=["AVX512-BF16 or AMX", "measured fast"])
def test_a_cpu_with_fast_bf16_keeps_what_was_asked(monkeypatch, support) -> None:
    _fake_cpu(monkeypatch, support)
    for requested in ("bf16", "bf16-fp32-scores"):
        assert choose_precision(requested, "cpu").precision == requested


def test_float32_and_gpus_never_ask_the_cpu(monkeypatch) -> None:
    asked = _fake_cpu(monkeypatch, AVX2_ONLY)
    assert choose_precision("fp32", "cpu").precision == "fp32"
    assert choose_precision("bf16-fp32-scores", "cuda").precision == "bf16-fp32-scores"
    assert asked == []
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("fp16", "cpu")


def test_the_real_cpu_gives_a_consistent_answer() -> None:
    """Whatever this machine is: native support is never measured, a measurement has both times, the choice follows
    them."""
    support = precision_module.cpu_bf16_support()
    if support.native:
        assert support.slowdown is None and choose_precision("bf16").precision == "bf16"
    else:
        assert support.fp32_ms > 0 and support.bf16_ms > 0
        expected = "bf16" if support.slowdown <= precision_module.BF16_SLOWDOWN_LIMIT else "fp32"
        assert choose_precision("bf16").precision == expected


def test_a_default_run_plans_the_reference_steps_in_the_precision_the_cpu_affords(monkeypatch) -> None:
    """The edge's 6 minutes are the 1,860 steps they gave on the reference machine, whatever this one's speed; the
    cloud's tower minutes come off first; an explicit step budget stays."""
    _fake_cpu(monkeypatch, AVX2_ONLY)
    edge, choice = planned(pipeline.recipe("edge", 6).train, "edge")
    assert edge.steps == 1860 and edge.precision == "fp32" and choice.requested == "bf16"
    cloud, _ = planned(pipeline.recipe("cloud", 24).train, "cloud", tower_steps=600)
    assert cloud.steps == 6530 and cloud.precision == "fp32"
    stepped, _ = planned(pipeline.recipe("edge", 6, steps=100).train, "edge")
    assert stepped.steps == 100 and stepped.minutes == 6
    _fake_cpu(monkeypatch, NATIVE)
    assert planned(pipeline.recipe("cloud", 24).train, "cloud", 600)[0].precision == "bf16-fp32-scores"


def test_the_minutes_estimate_a_step_budget_and_guard_it() -> None:
    stepped = TrainConfig(minutes=2, steps=600)
    assert time_limit_s(stepped) == 2 * 60 * STEP_BUDGET_GUARD and time_limit_s(TrainConfig(minutes=2)) == 120
    expected_s, line = expectation(stepped, 0.1)
    assert expected_s == pytest.approx(60) and line.startswith("expects 600 steps to take about 1.0 min")
    slow_s, slow = expectation(stepped, 2.0)  # 20 min expected, stopped at 6
    assert slow_s == pytest.approx(1200) and "it will stop after about 180 steps" in slow
    assert expectation(TrainConfig(minutes=1), 0.5)[1].startswith("expects about 120 steps in its 1.0 min")


def test_max_minutes_replace_the_guard() -> None:
    assert time_limit_s(TrainConfig(minutes=2, steps=600, max_minutes=30)) == 30 * 60
    slow_s, slow = expectation(TrainConfig(minutes=2, steps=600, max_minutes=30), 2.0)
    assert slow_s == pytest.approx(1200) and "guard" not in slow  # 20 min expected, under the 30-minute cap


def test_a_run_reports_what_it_expects_after_its_first_steps() -> None:
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    stream = FreshQuestionStream(tokenizer, TINY_VIEW, MixConfig(), 2, FreshCurriculum(seed=3))
    said = []
    config = TrainConfig(minutes=5, batch_size=2, steps=8, warmup_steps=1)
    result = train(model, tokenizer, [], config, progress=said.append, stream=stream)
    assert result.steps == 8 and not result.stopped_by_guard and result.expected_seconds > 0
    (line,) = [s for s in said if "expects" in s]
    assert line.startswith("fp32: expects 8 steps to take about")
