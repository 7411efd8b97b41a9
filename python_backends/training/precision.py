"""Mixed precision and fast attention for training: bfloat16 autocast, eager attention in the language model, packed
window attention in the vision tower.

Why (issue 5, measured on 2 cores of an AMD EPYC with AVX512-BF16): a cloud step on fresh 12-question frames
(batch 8) took 0.33 s in float32 and 0.17 s under bfloat16 autocast with eager attention; autocast on the default
SDPA attention gave 0.21 s, as torch's CPU flash-attention backward does not speed up in bfloat16. In float32 the
two attentions cost the same. Weights, gradients and the optimiser stay float32 (autocast casts per operation), and
evaluation and serving run in float32, so a checkpoint trained either way serves the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def autocast(device: str, precision: str):
    """The autocast context of one forward and loss, or a no-op in float32."""
    import torch

    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def training_attention(model, device: str, precision: str) -> Iterator[None]:
    """Within the block, on a CPU, the vision tower attends in packed windows (packed_attention.py) and, in
    bfloat16, the language model attends eagerly (faster there: see the module's docstring). The model's own
    implementations are restored afterwards, and the saved config never records the change."""
    import torch

    from python_backends.training.packed_attention import register

    check_precision(precision)
    before = {name: getattr(model.config, name)._attn_implementation for name in ("text_config", "vision_config")}
    during = dict(before)
    if torch.device(device).type == "cpu":
        during["vision_config"] = register()
        if precision == "bf16":
            during["text_config"] = "eager"
    if during != before:
        model.set_attn_implementation(during)
    try:
        yield
    finally:
        if during != before:
            model.set_attn_implementation(before)
