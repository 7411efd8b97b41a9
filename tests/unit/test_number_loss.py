"""The answer loss's treatment of number tokens (training.number_loss): weights and the distance term,
on hand-made logits, through answer_loss on a tiny model, in the recipe's key and on the command line."""

from __future__ import annotations

import math

import pytest

from training import pipeline
from training.__main__ import main as training_main
from training.examples import MixConfig, build_examples
from training.number_loss import NumberLoss, NumberTokens, token_losses
from training.trainer import IGNORE, TrainConfig, answer_loss, build_model, collate, encode, train
from tests.unit.test_training import MAX_NUMBER, TINY_SPEC, TINY_VIEW, split  # noqa: F401 (fixture)


class _DigitTokenizer:
    """Tokens 0..3 are the numbers 0..3; token 4 is a word."""

    def convert_tokens_to_ids(self, tokens):
        return [int(t) for t in tokens]

    def __len__(self) -> int:
        return 5


def _numbers() -> NumberTokens:
    return NumberTokens(_DigitTokenizer(), max_number=3)


def test_plain_number_loss_is_cross_entropy_with_unit_weights() -> None:
    import torch

    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 3.0]])
    targets = torch.tensor([0, 4])
    losses, weights = token_losses(logits, targets, _numbers(), NumberLoss())
    assert torch.allclose(losses, torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
    assert weights.tolist() == [1.0, 1.0]
    assert NumberLoss().is_plain and not NumberLoss(weight=2.0).is_plain


def test_number_targets_get_their_weight_and_the_expected_distance() -> None:
    import torch

    # Row 0 targets the number 1; over the number tokens its softmax is (e^2, 1, 1, 1) / (e^2 + 3).
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0, 3.0]])
    targets = torch.tensor([1, 4])
    plain = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    losses, weights = token_losses(logits, targets, _numbers(), NumberLoss(weight=3.0, distance_weight=0.5))
    p0 = math.e**2 / (math.e**2 + 3)
    p_rest = 1 / (math.e**2 + 3)
    expected_distance = p0 * 1 + p_rest * (0 + 1 + 2)
    assert weights.tolist() == [3.0, 1.0]
    assert losses[0].item() == pytest.approx(plain[0].item() + 0.5 * expected_distance, rel=1e-5)
    assert losses[1].item() == pytest.approx(plain[1].item(), rel=1e-6)  # a word keeps plain cross-entropy


def test_number_loss_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="number weight"):
        NumberLoss(weight=0.0)
    with pytest.raises(ValueError, match="distance weight"):
        NumberLoss(distance_weight=-1.0)


def test_answer_loss_weighs_number_tokens_within_each_answer(split) -> None:  # noqa: F811
    import torch

    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    examples = build_examples(split[:8], TINY_VIEW, MixConfig(), seed=0)
    tensors = collate([encode(tokenizer, e) for e in examples], tokenizer.pad_token_id, model.config.image_token_id)
    labels = tensors.pop("labels")
    numbers = NumberTokens(tokenizer, MAX_NUMBER)
    assert bool((numbers.value_of[labels.clamp(min=0)][labels != IGNORE] >= 0).any())  # some answers hold numbers
    logits = model(**tensors).logits
    expected = []
    for row in range(labels.shape[0]):
        positions = [t for t in range(1, labels.shape[1]) if labels[row, t] != IGNORE]
        terms = [torch.nn.functional.cross_entropy(logits[row, t - 1 : t], labels[row, t : t + 1]) for t in positions]
        weights = [4.0 if numbers.value_of[labels[row, t]] >= 0 else 1.0 for t in positions]
        expected.append(sum(w * term for w, term in zip(weights, terms)) / sum(weights))
    weighted = answer_loss(model, tensors, labels, numbers, NumberLoss(weight=4.0))
    assert torch.allclose(weighted, torch.stack(expected).mean(), atol=1e-5)
    assert not torch.allclose(weighted, answer_loss(model, tensors, labels), atol=1e-5)


def test_training_with_a_number_loss_needs_the_number_tokens(split) -> None:  # noqa: F811
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    encoded = [encode(tokenizer, e) for e in build_examples(split[:4], TINY_VIEW, MixConfig(), seed=0)]
    config = TrainConfig(minutes=1, batch_size=2, max_steps=2, number_loss=NumberLoss(weight=2.0, distance_weight=0.1))
    with pytest.raises(ValueError, match="number tokens"):
        train(model, tokenizer, encoded, config)
    numbers = NumberTokens(tokenizer, MAX_NUMBER)
    result = train(model, tokenizer, encoded, config, numbers=numbers)
    assert result.steps == 2 and all(math.isfinite(loss) for loss in result.losses)


def test_number_loss_options_change_the_key(capsys) -> None:
    cloud = pipeline.recipe("cloud", 24)
    assert cloud.train.number_loss == NumberLoss(distance_weight=0.1)  # the cloud's default
    assert pipeline.recipe("cloud", 24, number_weight=1.0, number_distance_weight=0.1).key() == cloud.key()
    plain = pipeline.recipe("cloud", 24, number_distance_weight=0.0)
    assert plain.train.number_loss.is_plain and plain.key() != cloud.key()
    assert pipeline.recipe("edge", 6).train.number_loss.is_plain
    weighted = pipeline.recipe("cloud", 24, number_weight=6.0)
    assert weighted.train.number_loss == NumberLoss(weight=6.0, distance_weight=0.1) and weighted.key() != cloud.key()
    assert pipeline.recipe("cloud", 24, number_weight=6).key() == weighted.key()  # an int keys as its float
    both = pipeline.recipe("cloud", 24, number_weight=6.0, number_distance_weight=0.05)
    assert both.key() not in (cloud.key(), weighted.key())
    with pytest.raises(SystemExit):
        training_main(["--model", "cloud", "--minutes", "1", "--number-weight", "0"])
    assert "number weight must be > 0" in capsys.readouterr().err
