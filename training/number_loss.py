"""How the answer loss treats number tokens (box corners and counts): a weight, and a distance term.

Why: the answer loss averages over an example's answer tokens. In the cloud's 12-question frames a box's
four corners are about 12 of some 90 answer tokens, and most of the rest (the JSON around them, the label) are
learned early. `weight` > 1 lets a number token count as that many tokens in that mean, so the layers all tasks share
learn more from the corners (and counts). Cross-entropy also scores a corner one bin off as wrong as one across the
frame; `distance_weight` > 0 adds the expected distance between the predicted number and the target (after the
number-token loss of Zausinger et al., 2024, "Regress, Don't Guess"), in the numbers' own units, over the model's
distribution restricted to number tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.tokens import number_tokens


@dataclass(frozen=True)
class NumberLoss:
    weight: float = 1.0
    distance_weight: float = 0.0

    def __post_init__(self) -> None:
        # Floats whatever was passed, so 3 and 3.0 give one recipe key (the command line passes floats).
        for name in ("weight", "distance_weight"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.weight <= 0:
            raise ValueError(f"number weight must be > 0, got {self.weight}")
        if self.distance_weight < 0:
            raise ValueError(f"number distance weight must be >= 0, got {self.distance_weight}")

    @property
    def is_plain(self) -> bool:
        """Plain cross-entropy: number tokens are like any other."""
        return self.weight == 1.0 and self.distance_weight == 0.0


class NumberTokens:
    """The vocabulary's number tokens: `value_of[token id]` is its number, or -1 for any other token."""

    def __init__(self, tokenizer, max_number: int) -> None:
        import torch

        self.ids = torch.tensor(tokenizer.convert_tokens_to_ids(number_tokens(max_number)), dtype=torch.long)
        self.values = torch.arange(max_number + 1, dtype=torch.float32)
        self.value_of = torch.full((len(tokenizer),), -1.0)
        self.value_of[self.ids] = self.values

    def to(self, device) -> NumberTokens:
        self.ids, self.values, self.value_of = (t.to(device) for t in (self.ids, self.values, self.value_of))
        return self


def token_losses(logits, targets, numbers: NumberTokens | None, config: NumberLoss):
    """(per-token loss, per-token weight) of answer tokens: cross-entropy, plus for number targets
    `distance_weight` times the expected |predicted - target| under the softmax over number tokens only."""
    import torch

    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    weights = torch.ones_like(losses)
    if numbers is None or config.is_plain:
        return losses, weights
    target_values = numbers.value_of[targets]
    is_number = target_values >= 0
    weights = torch.where(is_number, torch.full_like(losses, config.weight), weights)
    if config.distance_weight > 0 and bool(is_number.any()):
        probabilities = logits[is_number][:, numbers.ids].softmax(-1)
        distance = (numbers.values[None, :] - target_values[is_number][:, None]).abs()
        expected = (probabilities * distance).sum(-1)
        rows = torch.nonzero(is_number)[:, 0]
        losses = losses.index_put((rows,), losses[is_number] + config.distance_weight * expected)
    return losses, weights
