"""Mixed precision and fast attention for training: bfloat16 autocast, eager attention in the language model, packed
window attention in the vision tower.

Why (measured on 2 cores of an AMD EPYC with AVX512-BF16): a cloud step on fresh 12-question frames
(batch 8) took 0.33 s in float32 and 0.17 s under bfloat16 autocast with eager attention; autocast on the default
SDPA attention gave 0.21 s, as torch's CPU flash-attention backward does not speed up in bfloat16. In float32 the
two attentions cost the same. Weights, gradients and the optimiser stay float32 (autocast casts per operation), and
evaluation and serving run in float32, so a checkpoint trained either way serves the same way. On a CPU without
AVX512-BF16 or AMX a bfloat16 matmul is about 90 times slower than float32's, so `choose_precision` trains there in
float32 (a short measured matmul decides where torch reports neither).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass

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


# bfloat16 is kept on a CPU without AVX512-BF16 or AMX only if the probe's bfloat16 matmul is at most this many times
# as slow as float32's (an AVX2-only CPU measured about 90 times: a run in the same minutes did 36 steps, not 1,860).
BF16_SLOWDOWN_LIMIT = 1.5
PROBE_SHAPE = (256, 512, 512)  # an [m, k] @ [k, n] matmul about the size of a tiny model's projections


@dataclass(frozen=True)
class Bf16Support:
    """What this CPU offers bfloat16: torch's capability name, whether it has AVX512-BF16 or AMX, and, when it has
    neither, the probe's matmul times (milliseconds; None when not measured)."""

    capability: str
    native: bool
    fp32_ms: float | None = None
    bf16_ms: float | None = None

    @property
    def slowdown(self) -> float | None:
        return None if self.fp32_ms is None or self.bf16_ms is None else self.bf16_ms / max(self.fp32_ms, 1e-9)


@dataclass(frozen=True)
class PrecisionChoice:
    requested: str
    precision: str  # what runs
    reason: str


def _matmul_ms(dtype, repeats: int = 3) -> float:
    import torch

    m, k, n = PROBE_SHAPE
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # the first call pays for kernel selection
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, (time.perf_counter() - started) * 1000)
    return best


@functools.cache
def cpu_bf16_support() -> Bf16Support:
    """The one place that asks the CPU (tests fake it here): native bfloat16 per torch, else a measured probe."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if native:
        return Bf16Support(capability, True)
    return Bf16Support(capability, False, _matmul_ms(torch.float32), _matmul_ms(torch.bfloat16))


def choose_precision(requested: str, device: str = "cpu") -> PrecisionChoice:
    """The precision to train in: `requested`, except that bfloat16 on a CPU that computes it slowly (no AVX512-BF16
    nor AMX, and a bfloat16 matmul over BF16_SLOWDOWN_LIMIT times float32's) trains in float32 instead: weights,
    optimiser and serving are float32 either way, so only the speed and the rounding change."""
    check_precision(requested)
    if requested == "fp32":
        return PrecisionChoice(requested, "fp32", "float32 asked")
    if not device.startswith("cpu"):
        return PrecisionChoice(requested, requested, f"{requested} asked, on {device}")
    support = cpu_bf16_support()
    if support.native:
        return PrecisionChoice(requested, requested, f"this CPU ({support.capability}) has AVX512-BF16 or AMX")
    measured = f"a bf16 matmul {support.bf16_ms:.2f} ms against {support.fp32_ms:.2f} ms in fp32"
    if support.slowdown is not None and support.slowdown <= BF16_SLOWDOWN_LIMIT:
        return PrecisionChoice(requested, requested, f"no AVX512-BF16 nor AMX ({support.capability}), but {measured}")
    return PrecisionChoice(
        requested,
        "fp32",
        f"{requested} asked, but this CPU ({support.capability}) has no AVX512-BF16 nor AMX: {measured}",
    )


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
