"""Mixed precision and fast attention for training: bfloat16 autocast, eager attention in the language model, packed
window attention in the vision tower.

Why (measured on 2 cores of an AMD EPYC with AVX512-BF16): a cloud step on fresh 12-question frames
(batch 8) took 0.33 s in float32 and 0.17 s under bfloat16 autocast with eager attention; autocast on the default
SDPA attention gave 0.21 s, as torch's CPU flash-attention backward does not speed up in bfloat16. In float32 the
two attentions cost the same. Weights, gradients and the optimiser stay float32 (autocast casts per operation), and
evaluation and serving run in float32, so a checkpoint trained either way serves the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# "bf16-fp32-scores": bfloat16 autocast with the language model's attention scores in float32 (float32_scores).
PRECISIONS = ("fp32", "bf16", "bf16-fp32-scores")


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


TEXT_ATTENTION = "eager_float32_scores"


def float32_scores(precision: str) -> bool:
    """Whether `precision` computes attention scores in float32 under autocast."""
    check_precision(precision)
    return precision == "bf16-fp32-scores"


def float32_score_attention(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs):
    """Eager attention whose scores (query . key) are computed in float32 under autocast as well. Why: M-RoPE turns
    the image grid's width section by 2e-6 to 2e-4 rad a column at Qwen's base of 1e6, far below bfloat16's 4e-3
    resolution, so bfloat16 scores may lose where in the grid a token is. Returns ([batch, length, heads, dim],
    None), as transformers' attention functions do."""
    import torch

    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import repeat_kv

    if dropout:
        raise ValueError("float32-score attention has no dropout (Qwen2.5-VL's text model uses none)")
    groups = module.num_key_value_groups
    with torch.autocast(device_type=query.device.type, enabled=False):
        scores = (query.float() @ repeat_kv(key, groups).float().transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        weights = scores.softmax(-1)
    output = weights.to(value.dtype) @ repeat_kv(value, groups)
    return output.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def training_attention(model, device: str, precision: str) -> Iterator[None]:
    """Within the block, on a CPU, the vision tower attends in packed windows (packed_attention.py) and, in
    bfloat16, the language model attends eagerly (faster there: see the module's docstring); on any device,
    "bf16-fp32-scores" makes it attend through float32_score_attention. The model's own
    implementations are restored afterwards, and the saved config never records the change."""
    import torch

    from training.packed_attention import register

    check_precision(precision)
    before = {name: getattr(model.config, name)._attn_implementation for name in ("text_config", "vision_config")}
    during = dict(before)
    if torch.device(device).type == "cpu":
        during["vision_config"] = register()
        if precision == "bf16":
            during["text_config"] = "eager"
    if float32_scores(precision):
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask

        AttentionInterface.register(TEXT_ATTENTION, float32_score_attention)
        # Without a mask function of its own, transformers would hand a custom attention no causal mask at all.
        AttentionMaskInterface.register(TEXT_ATTENTION, eager_mask)
        during["text_config"] = TEXT_ATTENTION
    if during != before:
        model.set_attn_implementation(during)
    try:
        yield
    finally:
        if during != before:
            model.set_attn_implementation(before)
