"""The learning-rate schedule shared by the language model's training and the tower's pretraining."""

from __future__ import annotations

import math


def lr_factor(elapsed_fraction: float, step: int, warmup_steps: int, final_fraction: float) -> float:
    """Multiplier of the peak LR: linear warm-up over the first steps, then cosine to `final_fraction` at the end of
    the wall-time budget."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    progress = min(1.0, max(0.0, elapsed_fraction))
    cosine = final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    return warm * cosine
